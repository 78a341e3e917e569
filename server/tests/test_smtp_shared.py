"""SMTP delivery into shared mailboxes, over real sockets.

info@example.test is the delivery address of Shared/info (docs/
shared-mailboxes.md): mail to it is stored once in the shared store and
both readers see it over IMAP, each with its own \\Seen; an IDLE session
hears it; one transaction to an account and the address reaches both; the
MX still refuses unknown addresses and relaying; submission needs the
"p" right (rfc4314:2.1); DMARC-quarantined mail goes to the mailbox's Junk
(or gets $Junk); the administrator's CLI refuses clashing addresses naming
them. Address bookkeeping without a server: test_shared_addresses.py.
"""

from __future__ import annotations

import imaplib
import json
import re
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, InProcess, Instance, estafeta, free_port, make_tls
from conftest import imap_raw as raw
from estafeta.dns import MockResolver
from estafeta.server import Server
from estafeta.smtp import replies

ALICE = f"alice@{DOMAIN}"  # lrswipkxtea on Shared/info
BOB = f"bob@{DOMAIN}"  # lrs: a reader, no "p"
CAROL = f"carol@{DOMAIN}"  # no rights
INFO = f"info@{DOMAIN}"


def message(subject: str, sender: str = "sender@remote.test", to: str = INFO) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@remote.test>\r\n"
        "\r\nHello team.\r\n"
    ).encode()


def send(inst: Instance, rcpts: list[str], subject: str, sender: str = "sender@remote.test") -> str:
    """The reply after DATA on the MX; every RCPT must be accepted."""
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
        client.ehlo("client.remote.test")
        code, text = client.mail(sender)
        assert code == 250, text
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        code, text = client.data(message(subject, sender))
    return f"{code} {text.decode()}"


def rcpt_reply(inst: Instance, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        code, text = client.rcpt(rcpt)
    return f"{code} {text.decode()}"


def imap(inst: Instance, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", inst.imap_port, timeout=10)
    client.login(user, PASSWORD)
    return client


def select(client: imaplib.IMAP4, mailbox: str = "Shared/info") -> list[bytes]:
    """SELECT over raw (imaplib refuses a reader's READ-ONLY, rfc4314:5.2)."""
    lines = raw(client, "sel", f"SELECT {mailbox}")
    assert lines[-1].startswith(b"sel OK"), lines
    client.state = "SELECTED"
    return lines


def messages(client: imaplib.IMAP4) -> dict[int, tuple[str, set[str]]]:
    """UID -> (Subject, flags without \\Recent) of the selected mailbox."""
    found: dict[int, tuple[str, set[str]]] = {}
    uid = 0
    for line in raw(client, "f", "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"):
        has_uid = re.search(rb"\bUID (\d+)", line)
        has_flags = re.search(rb"\bFLAGS \(([^)]*)\)", line)
        if line.startswith(b"* ") and has_uid is not None and has_flags is not None:
            uid = int(has_uid[1])
            found[uid] = ("", set(has_flags[1].decode().split()) - {"\\Recent"})
        elif line.startswith(b"Subject: "):
            found[uid] = (line[9:].decode(), found[uid][1])
    return found


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[tuple[Instance, ssl.SSLContext]]:
    tls_section, ca = make_tls(tmp_path)
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        submission_port=free_port(),
        auth_config="allow_plaintext = true\n",
        extra_config=tls_section,
    )
    inst.write_config()
    for user in (ALICE, BOB, CAROL):
        inst.add_user(user)
    made = inst.cli(
        "shared", "set", "info", "--acl", f"{ALICE}=lrswipkxtea", "--acl", f"{BOB}=lrs",
        "--address", INFO, "--json",
    )  # fmt: skip
    assert json.loads(made.stdout) == {
        "changed": True,
        "created": True,
        "acl": {ALICE: "lrswipkxtea", BOB: "lrs"},
        "addresses": [INFO],
    }
    inst.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield inst, context
    if inst.process is not None:
        inst.kill()


def test_both_readers_see_the_message_each_with_its_own_seen(
    mx: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, _ = mx
    assert send(inst, [INFO], "question one").startswith("250 2.0.0")
    alice, bob = imap(inst, ALICE), imap(inst, BOB)
    assert select(bob)[-1].startswith(b"sel OK [READ-ONLY]")
    select(alice)
    assert messages(alice) == {1: ("question one", set())}
    assert messages(bob) == {1: ("question one", set())}
    stored = b"".join(
        part[1] for part in alice.uid("FETCH", "1", "(BODY.PEEK[])")[1] if isinstance(part, tuple)
    )
    assert stored.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: ")
    assert f"for <{INFO}>".encode() in stored
    # The message-level spam step ran for the mailbox (not junk: no $Junk above).
    assert re.search(rb"\r\nX-Spam-Status: No\b", stored), stored[:600]
    # Bob reads it: his \Seen only.
    assert raw(bob, "r", "FETCH 1 (BODY[TEXT])")[-1].startswith(b"r OK")
    assert messages(bob)[1][1] == {"\\Seen"}
    assert messages(alice)[1][1] == set()
    assert raw(alice, "u", "SEARCH UNSEEN")[0] == b"* SEARCH 1"
    alice.logout()
    bob.logout()


def test_idle_sessions_of_both_accounts_hear_the_delivery(
    mx: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, _ = mx
    alice, bob = imap(inst, ALICE), imap(inst, BOB)
    idlers = (alice, bob)
    for client in idlers:
        select(client)
        client.send(b"i1 IDLE\r\n")
        assert client.readline().startswith(b"+ ")
    time.sleep(0.2)
    assert send(inst, [INFO], "while both idle").startswith("250")
    for client in idlers:
        assert client.readline().rstrip() == b"* 1 EXISTS"
        client.send(b"DONE\r\n")
        while not client.readline().startswith(b"i1 OK"):
            pass
        assert messages(client) == {1: ("while both idle", set())}
        client.logout()


def test_one_transaction_reaches_the_account_and_the_mailbox_once(
    mx: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, _ = mx
    inst.cli("alias", "add", f"team@{DOMAIN}", BOB, INFO)  # an alias may lead to the mailbox
    inst.cli("alias", "add", f"@{DOMAIN}", CAROL)  # a catch-all does not take info@
    rcpts = [ALICE, INFO, f"info+orders@{DOMAIN}", f"team@{DOMAIN}"]
    assert send(inst, rcpts, "to everyone").startswith("250")
    alice = imap(inst, ALICE)
    select(alice)
    assert messages(alice) == {1: ("to everyone", set())}  # three routes, one copy
    select(alice, "INBOX")
    assert messages(alice) == {1: ("to everyone", set())}
    bob = imap(inst, BOB)
    select(bob, "INBOX")
    assert messages(bob) == {1: ("to everyone", set())}
    carol = imap(inst, CAROL)
    select(carol, "INBOX")
    assert messages(carol) == {}
    for client in (alice, bob, carol):
        client.logout()


def test_unknown_addresses_and_relaying_are_still_refused(
    mx: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, _ = mx
    assert rcpt_reply(inst, f"infos@{DOMAIN}").startswith("550 5.1.1")
    assert rcpt_reply(inst, "info@other.test").startswith("550 5.1.1")  # another of our domains
    assert rcpt_reply(inst, "info@elsewhere.test").startswith(replies.RELAY_DENIED)
    assert rcpt_reply(inst, INFO).startswith("250")
    gone = inst.cli("shared", "remove", "info", "--json")
    assert json.loads(gone.stdout) == {"changed": True}
    assert json.loads(inst.cli("shared", "list", "--json").stdout) == []
    time.sleep(0.2)  # the server's lookup cache looks at the database every 50 ms
    assert rcpt_reply(inst, INFO).startswith("550 5.1.1")


def test_submission_needs_the_post_right(mx: tuple[Instance, ssl.SSLContext]) -> None:
    inst, context = mx

    def submit(user: str, subject: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10) as client:
            client.ehlo("client.example")
            client.starttls(context=context)
            client.ehlo("client.example")
            client.login(user, PASSWORD)
            client.mail(user)
            code, text = client.rcpt(INFO)
            if code == 250:
                client.data(message(subject, sender=user))
            return code, text

    for user in (CAROL, BOB):  # no rights at all; a reader without "p"
        code, text = submit(user, "refused")
        assert (code, text.split()[0]) == (550, b"5.7.1"), text
    inst.cli("shared", "set", "info", "--acl", "anyone=p")
    assert submit(CAROL, "from carol")[0] == 250
    alice = imap(inst, ALICE)
    select(alice)
    assert messages(alice) == {1: ("from carol", set())}
    alice.logout()
    assert "may not post to Shared/info" in inst.log_text()


def test_the_250_comes_after_the_commit(mx: tuple[Instance, ssl.SSLContext]) -> None:
    inst, _ = mx
    assert send(inst, [INFO], "durable").startswith("250")
    inst.kill()  # SIGKILL right after the 250: nothing is flushed later
    inst.start()
    alice = imap(inst, ALICE)
    select(alice)
    assert messages(alice) == {1: ("durable", set())}
    alice.logout()


def test_a_top_level_shared_mailbox_is_not_renamed_over_imap(
    mx: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, _ = mx
    inst.cli("shared", "set", "other", "--acl", f"{ALICE}=lrswipkxtea")
    alice = imap(inst, ALICE)
    refused = raw(alice, "r1", "RENAME Shared/info Shared/other/info")
    assert refused[-1].startswith(b"r1 NO [NOPERM]"), refused
    # Its children are the users' to rename.
    assert raw(alice, "c1", "CREATE Shared/info/2026")[-1].startswith(b"c1 OK")
    assert raw(alice, "r2", "RENAME Shared/info/2026 Shared/info/2027")[-1].startswith(b"r2 OK")
    assert send(inst, [INFO], "still here").startswith("250")
    select(alice)
    assert messages(alice) == {1: ("still here", set())}
    alice.logout()


def test_sieve_does_not_run_for_the_shared_mailbox(instance: Instance, tmp_path: Path) -> None:
    everything = tmp_path / "discard.sieve"
    everything.write_text("discard;\n")
    instance.imap_port = free_port()
    instance.auth_config = "allow_plaintext = true\n"
    instance.extra_config = f'[sieve]\nglobal_before = ["{everything}"]\n'
    instance.write_config()
    instance.add_user(ALICE)
    instance.cli("shared", "set", "info", "--acl", f"{ALICE}=lrswipkxtea", "--address", INFO)
    instance.start()
    assert send(instance, [ALICE, INFO], "kept for the team").startswith("250")
    alice = imap(instance, ALICE)
    select(alice, "INBOX")
    assert messages(alice) == {}  # the operator's global script ran for Alice
    select(alice)
    assert messages(alice) == {1: ("kept for the team", set())}
    alice.logout()


# -- junk: DMARC quarantine ([inbound] authenticate) with a mock resolver ----------

SPOOF = "spoof.test"
QUARANTINE = MockResolver(
    {
        (SPOOF, "TXT"): ["v=spf1 -all"],
        (f"_dmarc.{SPOOF}", "TXT"): ["v=DMARC1; p=quarantine"],
    }
)


def test_quarantined_mail_goes_to_junk_with_the_junk_keyword(instance: Instance) -> None:
    instance.imap_port = free_port()
    instance.auth_config = "allow_plaintext = true\n"
    instance.extra_config = "[inbound]\nauthenticate = true\n"
    instance.write_config()
    instance.add_user(ALICE)
    instance.cli("shared", "set", "info", "--acl", f"{ALICE}=lrswipkxtea", "--address", INFO)

    def prepare(server: Server) -> None:
        server.resolver = QUARANTINE

    with InProcess(instance.config, prepare):
        sender = f"someone@{SPOOF}"
        assert send(instance, [INFO], "forged one", sender=sender).startswith("250")
        assert send(instance, [INFO], "honest", sender="sender@remote.test").startswith("250")
        alice = imap(instance, ALICE)
        select(alice)
        # No Junk child: into the mailbox itself, flagged $Junk.
        assert messages(alice) == {1: ("forged one", {"$Junk"}), 2: ("honest", set())}
        assert raw(alice, "c1", "CREATE Shared/info/Junk")[-1].startswith(b"c1 OK")
        assert send(instance, [INFO], "forged two", sender=sender).startswith("250")
        select(alice, "Shared/info/Junk")
        assert messages(alice) == {1: ("forged two", {"$Junk"})}
        select(alice)
        assert [subject for subject, _ in messages(alice).values()] == ["forged one", "honest"]
        alice.logout()


# -- the administrator's CLI ---------------------------------------------------------


def refused(instance: Instance, *args: str) -> str:
    result = estafeta(instance.config, *args, check=False)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    return result.stderr


def test_cli_refuses_clashing_addresses_naming_them(instance: Instance) -> None:
    instance.add_user(ALICE)
    instance.cli("alias", "add", f"sales@{DOMAIN}", ALICE)
    said = refused(instance, "shared", "set", "info", "--address", ALICE)
    assert f"address {ALICE} is an account" in said
    assert "Traceback" not in said
    said = refused(instance, "shared", "set", "info", "--address", f"sales@{DOMAIN}")
    assert f"address sales@{DOMAIN} is an alias" in said
    said = refused(instance, "shared", "set", "info", "--address", "info@elsewhere.test")
    assert "address info@elsewhere.test: domain elsewhere.test is not one" in said
    said = refused(instance, "shared", "set", "info/2026", "--address", INFO)
    assert "Shared/info/2026 is not top-level" in said
    # Refused before anything was written: no mailbox was made either.
    assert json.loads(instance.cli("shared", "list", "--json").stdout) == []
    instance.cli("shared", "set", "info", "--address", INFO)
    said = refused(instance, "shared", "set", "team", "--address", INFO)
    assert f"address {INFO} is the delivery address of Shared/info already" in said
    # The other way round: no account or alias may take the address now.
    taken = estafeta(
        instance.config, "user", "add", INFO, "--password-stdin", stdin=PASSWORD, check=False
    )
    assert taken.returncode == 1 and f"{INFO} is the delivery address" in taken.stderr
    taken = estafeta(instance.config, "alias", "add", INFO, ALICE, check=False)
    assert taken.returncode == 1 and f"{INFO} is the delivery address" in taken.stderr


def test_cli_addresses_are_idempotent_and_check_writes_nothing(instance: Instance) -> None:
    def run(*args: str) -> dict[str, object]:
        out = instance.cli("shared", "set", "info", *args, "--json").stdout
        result: dict[str, object] = json.loads(out)
        return result

    def listed() -> list[dict[str, object]]:
        result: list[dict[str, object]] = json.loads(
            instance.cli("shared", "list", "--json").stdout
        )
        return result

    checked = run("--address", INFO, "--check")
    assert (checked["changed"], checked["addresses"]) == (True, [INFO])
    assert listed() == []
    assert run("--address", INFO)["changed"] is True
    assert run("--address", INFO)["changed"] is False
    assert run("--address", "Info@Example.TEST", "--check")["changed"] is False
    contact = f"contact@{DOMAIN}"
    assert run("--address", contact, "--check")["changed"] is True
    assert listed() == [{"name": "info", "acl": {}, "addresses": [INFO]}]
    assert run("--address", contact)["addresses"] == [contact, INFO]
    assert f"Shared/info  (mail to {contact}, {INFO})\n" in instance.cli("shared", "list").stdout
    assert run("--remove-address", contact)["addresses"] == [INFO]
    assert run("--remove-address", contact)["changed"] is False
    assert run("--address", contact, "--exclusive-addresses")["addresses"] == [contact]
    assert run("--exclusive-addresses", "--check")["addresses"] == []
    assert run("--address", INFO, "--exclusive-addresses")["addresses"] == [INFO]
    # remove takes the addresses away with the mailbox; --check first.
    check = instance.cli("shared", "remove", "info", "--check", "--json")
    assert json.loads(check.stdout) == {"changed": True}
    assert listed() == [{"name": "info", "acl": {}, "addresses": [INFO]}]
    instance.cli("shared", "remove", "info")
    assert listed() == []
    assert run("--address", INFO)["created"] is True
