"""The delivery layer against a real server: quota at RCPT and after DATA,
accounts that are full while others are not, the INBOX fallback of a rule
whose mailbox is missing, rejects and discards, and the queue's local
deliveries (issue 15, section 1)."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest

from conftest import DOMAIN, Instance, estafeta
from estafeta.message import summarize
from estafeta.smtp import replies
from estafeta.store import index

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject: str, size: int = 0, extra: str = "") -> bytes:
    body = ("x" * 70 + "\r\n") * (size // 72) if size else "Hello."
    return (
        f"From: <sender@remote.test>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <{subject.replace(' ', '.')}.{time.monotonic_ns()}@remote.test>\r\n"
        f"\r\n{body}\r\n"
    ).encode()


def send(server: Instance, to: list[str], data: bytes, sender: str = "sender@remote.test") -> str:
    """The reply after DATA, whatever it is ('250 ...', '452 ...')."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.remote.test")
        code, text = client.mail(sender)
        assert code == 250, text
        for rcpt in to:
            code, text = client.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        code, text = client.data(data)
    return f"{code} {text.decode()}"


def rcpt_reply(server: Instance, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        code, text = client.rcpt(rcpt)
    return f"{code} {text.decode()}"


def subjects(server: Instance, address: str, mailbox: str = "INBOX") -> list[str]:
    found = []
    for body in server.message_bodies(address, mailbox):
        for line in body.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                found.append(line[9:].decode())
                break
    return found


def put_script(server: Instance, address: str, script: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.sieve"
    path.write_text(script)
    server.cli("sieve", "put", address, "rules", str(path), "--activate")


def wait_until(condition: object, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def no_stray_files(server: Instance, address: str) -> None:
    """Nothing half-written: every indexed message has its body (on a cluster
    message_bodies asserts it), and on the local store tmp/ is empty and every
    file is in the index."""
    rows = server.index_rows(address)
    assert len(server.message_bodies(address)) == len(rows)
    if server.cluster:
        return
    account = server.account_dir(address)
    assert not list((account / "tmp").glob("*"))
    indexed = {r.file for r in rows}
    on_disk = {f"{p.parent.name}/{p.name}" for p in server.files(address)}
    assert on_disk == indexed


def nothing_stored(server: Instance, address: str) -> None:
    """No message in the account's INBOX: no index row, no body, and on the
    local store no file in new/, cur/ or tmp/ either."""
    assert server.message_count(address) == 0
    assert server.message_bodies(address) == []
    if not server.cluster:
        account = server.account_dir(address)
        assert [p for sub in ("new", "cur", "tmp") for p in (account / sub).glob("*")] == []


def stored_rows_and_bodies(server: Instance, address: str) -> list[tuple[index.MessageRow, bytes]]:
    """Each index row of the INBOX with the message it points to: the row's
    file on the local store, its body in the object store on a cluster
    (message_bodies reads them in UID order, as index_rows does)."""
    rows = server.index_rows(address)
    if server.cluster:
        return list(zip(rows, server.message_bodies(address), strict=True))
    folder = server.account_dir(address)
    return [(row, (folder / row.file).read_bytes()) for row in rows]


# -- quota ----------------------------------------------------------------------


def test_message_over_quota_gets_452_and_nothing_is_written(server: Instance) -> None:
    assert send(server, [ALICE], message("small")).startswith("250")
    used = sum(len(body) for body in server.message_bodies(ALICE))
    server.cli("user", "quota", ALICE, str(used + 1000))
    reply = send(server, [ALICE], message("too big", size=3000))
    assert reply.startswith("452 4.2.2"), reply
    assert subjects(server, ALICE) == ["small"]
    no_stray_files(server, ALICE)
    # A message that fits still goes in.
    assert send(server, [ALICE], message("fits")).startswith("250")
    assert sorted(subjects(server, ALICE)) == ["fits", "small"]


def test_account_already_over_quota_is_refused_at_rcpt(server: Instance) -> None:
    assert send(server, [ALICE], message("fill", size=2000)).startswith("250")
    server.cli("user", "quota", ALICE, "1000")
    reply = rcpt_reply(server, ALICE)
    assert reply.startswith("452 4.2.2"), reply
    assert replies.MAILBOX_FULL.split(";")[0][4:] in reply
    assert rcpt_reply(server, BOB).startswith("250")  # others are not affected


def test_over_quota_reject_mode_answers_552(instance: Instance) -> None:
    instance.extra_config += '[delivery]\nover_quota = "reject"\n'
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    instance.cli("user", "quota", ALICE, "500")
    reply = send(instance, [ALICE], message("way too big", size=3000))
    assert reply.startswith("552 5.2.2"), reply
    nothing_stored(instance, ALICE)


def test_full_account_among_others_is_deferred_then_delivered(server: Instance) -> None:
    server.cli("user", "quota", ALICE, "100")  # room for nothing, but not yet over
    reply = send(server, [ALICE, BOB], message("to both", size=500))
    # Bob took it, so the transaction succeeds; alice's copy waits in the queue.
    assert reply.startswith("250"), reply
    assert subjects(server, BOB) == ["to both"]
    assert subjects(server, ALICE) == []
    entries = json.loads(server.cli("queue", "list", "--json").stdout)
    assert [e["recipients"] for e in entries] == [[ALICE]]
    server.cli("user", "quota", ALICE, "0")
    server.cli("queue", "flush")  # as an operator would, rather than wait for the retry
    wait_until(lambda: subjects(server, ALICE) == ["to both"], what="the deferred copy")
    wait_until(lambda: json.loads(server.cli("queue", "list", "--json").stdout) == [])
    no_stray_files(server, ALICE)


# -- rules ----------------------------------------------------------------------


def test_fileinto_a_missing_mailbox_falls_back_to_inbox(server: Instance, tmp_path: Path) -> None:
    put_script(server, ALICE, 'require "fileinto";\nfileinto "Nowhere";\n', tmp_path)
    assert send(server, [ALICE], message("where to?")).startswith("250")
    assert subjects(server, ALICE) == ["where to?"]
    # No mailbox Nowhere was made (nor, on the local store, its folder).
    nowhere = estafeta(server.config, "mail", "ls", ALICE, "--mailbox", "Nowhere", check=False)
    assert nowhere.returncode == 2 and "has no mailbox 'Nowhere'" in nowhere.stderr
    if not server.cluster:
        assert not (server.account_dir(ALICE) / ".Nowhere").exists()
    assert "fileinto_failed" in server.log_text()


def test_fileinto_create_makes_the_mailbox(server: Instance, tmp_path: Path) -> None:
    script = 'require ["fileinto", "mailbox"];\nfileinto :create "Lists/dev";\n'
    put_script(server, ALICE, script, tmp_path)
    assert send(server, [ALICE], message("filed")).startswith("250")
    assert subjects(server, ALICE, "Lists/dev") == ["filed"]
    assert subjects(server, ALICE) == []


def test_reject_of_the_only_recipient_is_the_smtp_reply(server: Instance, tmp_path: Path) -> None:
    script = 'require "reject";\nif header :contains "subject" "buy" { reject "Not here."; }\n'
    put_script(server, ALICE, script, tmp_path)
    reply = send(server, [ALICE], message("buy now"))
    assert reply.startswith("550 5.7.1") and "Not here." in reply, reply
    assert subjects(server, ALICE) == []
    assert send(server, [ALICE], message("hello")).startswith("250")


def test_reject_with_another_recipient_becomes_a_notice(server: Instance, tmp_path: Path) -> None:
    script = 'require "reject";\nreject "No thanks.";\n'
    put_script(server, ALICE, script, tmp_path)
    # The sender is local, so the rejection notice lands in bob's INBOX.
    reply = send(server, [ALICE, BOB], message("both of you"), sender=BOB)
    assert reply.startswith("250"), reply
    wait_until(lambda: server.message_count(BOB) == 2, what="bob's copy and the notice")
    assert subjects(server, ALICE) == []
    notice = next(body for body in server.message_bodies(BOB) if b"multipart/report" in body)
    assert b"Status: 5.7.1" in notice and b"No thanks." in notice


def test_discard_stores_nothing_and_answers_250(server: Instance, tmp_path: Path) -> None:
    put_script(server, ALICE, "discard;\n", tmp_path)
    assert send(server, [ALICE], message("gone")).startswith("250")
    nothing_stored(server, ALICE)
    assert "discarded" in server.log_text()


@pytest.mark.parametrize("script", ['require "fileinto";\nfileinto "INBOX";\nkeep;\n'])
def test_keep_and_fileinto_inbox_store_one_copy(
    server: Instance, tmp_path: Path, script: str
) -> None:
    put_script(server, ALICE, script, tmp_path)
    assert send(server, [ALICE], message("once")).startswith("250")
    assert subjects(server, ALICE) == ["once"]  # rfc5228:2.10.3


def test_redirect_loop_keeps_the_message(server: Instance, tmp_path: Path) -> None:
    put_script(server, ALICE, 'redirect "friend@remote.test";\n', tmp_path)
    # A copy this account redirected before comes back: not again, and kept.
    looped = message("came back", extra=f"Delivered-To: <{ALICE}>\r\n")
    assert send(server, [ALICE], looped).startswith("250")
    assert subjects(server, ALICE) == ["came back"]
    assert json.loads(server.cli("queue", "list", "--json").stdout) == []
    assert "redirect_loop" in server.log_text()
    # A fresh message is redirected through the queue with an SRS sender,
    # not kept (remote.test does not exist here: the bounce to the SRS
    # address then goes back to the original sender through our MX).
    assert send(server, [ALICE], message("go on")).startswith("250")
    wait_until(lambda: "to=<friend@remote.test>" in server.log_text(), what="the redirect")
    line = next(x for x in server.log_text().splitlines() if "to=<friend@remote.test>" in x)
    assert 'from="<SRS0=' in line and "@example.test>" in line
    assert subjects(server, ALICE) == ["came back"]


def test_the_stored_summary_is_the_parse_of_the_stored_file(server: Instance) -> None:
    # On the MX the spam filter's parse of the message is handed to the store
    # (only offsets move past the fields put on top): what IMAP serves from
    # the index must be exactly what parsing the file gives.
    multipart = (
        f"From: Ann <ann@remote.test>\r\nTo: <{ALICE}>\r\nSubject: parts\r\n"
        "X-Spam-Status: Yes, forged\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--b1--\r\n"
    ).encode()
    for data in (message("plain"), multipart, b"no header at all\r\n"):
        assert send(server, [ALICE], data).startswith("250")
    stored_messages = stored_rows_and_bodies(server, ALICE)
    assert len(stored_messages) == 3
    for row, stored in stored_messages:
        assert b"X-Spam-Status: " in stored and b"forged" not in stored
        assert row.summary == summarize(stored), stored[:300]
