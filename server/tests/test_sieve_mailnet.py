"""Mail rules end to end (issue 15, acceptance 2-4), between real servers.

- example.test: estafeta "A" on 127.0.0.2 with ManageSieve on 4190 (alice);
- example.net:  estafeta "B" on 127.0.0.3 (bob), the sending peer;
- example.org:  Debian's Postfix on 127.0.0.4 (carol), a redirect target;
- Knot serves the three zones (MX, SPF, DKIM, DMARC).

Scripts are uploaded the way a user's client does it: sievelib's
ManageSieve client over STARTTLS, checked against A's test CA. What the
rules did is read back with imaplib, from B's and Postfix's mailboxes and
from B's queue.
"""

from __future__ import annotations

import email
import imaplib
import json
import re
import shutil
import smtplib
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
import trustme
from sievelib.managesieve import Client

from _mailnet import Knot, MailHost, Postfix, mail_zone, peer_host
from conftest import PASSWORD

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

ALICE = "alice@example.test"
DAVE = "dave@example.test"
BOB = "bob@example.net"
CAROL = "carol@example.org"


@dataclass
class Net:
    knot: Knot
    a: MailHost
    b: MailHost
    postfix: Postfix
    tls: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("sievenet")
    ca = trustme.CA()
    knot = Knot(root / "dns", {})
    a = MailHost(
        root / "a",
        "example.test",
        "127.0.0.2",
        ca,
        knot.address,
        extra_listen='managesieve = ["127.0.0.2:4190"]\n',
        # Vacation windows in seconds (rfc6131) so a test can see one pass.
        extra_config='[sieve]\nvacation_min_period = "1s"\n',
    )
    b = peer_host(root / "b", ca, knot.address)
    for host, users in ((a, (ALICE, DAVE)), (b, (BOB,))):
        host.write_config()
        for user in users:
            host.add_user(user)
    knot.zones = {
        "example.test": mail_zone("127.0.0.2", dkim=a.dkim_records()),
        "example.net": mail_zone("127.0.0.3", dkim=b.dkim_records()),
        "example.org": mail_zone("127.0.0.4", dmarc="v=DMARC1; p=none"),
    }
    postfix_root = Path(tempfile.mkdtemp(prefix="estafeta-postfix-"))
    postfix_root.chmod(0o755)
    postfix = Postfix(
        postfix_root,
        "example.org",
        "127.0.0.4",
        mailboxes=(CAROL,),
        transport={"example.test": "[127.0.0.2]:25", "example.net": "[127.0.0.3]:25"},
    )
    started: list[Knot | MailHost | Postfix] = []
    try:
        for service in (knot, a, b, postfix):
            service.start()
            started.append(service)
        tls = ssl.create_default_context()
        ca.configure_trust(tls)
        yield Net(knot, a, b, postfix, tls, a.root / "ca.pem")
    finally:
        for service in reversed(started):
            service.stop()
        for host in (a, b):
            host.kill()
        shutil.rmtree(postfix_root, ignore_errors=True)


# -- helpers ------------------------------------------------------------------


def upload(net: Net, monkeypatch: pytest.MonkeyPatch, user: str, name: str, script: str) -> None:
    """PUTSCRIPT + SETACTIVE over ManageSieve with STARTTLS, as a client does."""
    # sievelib verifies the server with the default trust store.
    monkeypatch.setenv("SSL_CERT_FILE", str(net.ca_file))
    client = Client(net.a.ip, 4190)
    assert client.connect(user, PASSWORD, starttls=True, authmech="PLAIN"), client.errmsg
    try:
        assert client.putscript(name, script), client.errmsg
        assert client.setactive(name), client.errmsg
    finally:
        client.logout()


def submit(net: Net, host: MailHost, user: str, to: list[str], message: bytes) -> None:
    with smtplib.SMTP(host.ip, 587, timeout=30) as client:
        client.starttls(context=net.tls)
        client.login(user, PASSWORD)
        assert client.sendmail(user, to, message) == {}


def compose(sender: str, to: str, subject: str, extra: str = "", body: str = "Hello.") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <{time.monotonic_ns()}@test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
    ).encode()


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def subjects(raws: list[bytes]) -> list[str]:
    return [str(parse(raw)["Subject"]) for raw in raws]


def wait_until(condition: object, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def imap_mailbox(net: Net, user: str, mailbox: str) -> list[tuple[str, bytes]]:
    """(flags, message) of every message in ``mailbox``, read with imaplib."""
    with imaplib.IMAP4(net.a.ip, 143, timeout=30) as client:
        client.starttls(ssl_context=net.tls)
        client.login(user, PASSWORD)
        status, _ = client.select(f'"{mailbox}"', readonly=True)
        assert status == "OK", mailbox
        status, data = client.fetch("1:*", "(FLAGS BODY.PEEK[])")
        found = []
        if status == "OK" and data and data[0] is not None:
            for part in data:
                if isinstance(part, tuple):
                    flags = re.search(rb"FLAGS \(([^)]*)\)", part[0])
                    found.append(((flags.group(1) if flags else b"").decode(), part[1]))
        client.logout()
    return found


# -- acceptance 2 ---------------------------------------------------------------


LIST_SCRIPT = """require ["fileinto", "imap4flags", "mailbox"];
# File the dev list, flagged, into a folder made on first use.
if header :contains "List-Id" "<dev.lists.example.net>" {
    fileinto :create :flags "\\\\Flagged" "Lists/dev";
    stop;
}
"""


def test_list_mail_is_filed_with_a_flag_and_seen_over_imap(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(net, monkeypatch, DAVE, "lists", LIST_SCRIPT)
    submit(
        net,
        net.b,
        BOB,
        [DAVE],
        compose(BOB, DAVE, "dev digest", "List-Id: Dev list <dev.lists.example.net>\r\n"),
    )
    submit(net, net.b, BOB, [DAVE], compose(BOB, DAVE, "personal"))
    wait_until(lambda: net.a.messages(DAVE), what="the personal message in INBOX")
    wait_until(lambda: imap_mailbox(net, DAVE, "Lists/dev"), what="the list message")
    [(flags, filed)] = imap_mailbox(net, DAVE, "Lists/dev")
    assert parse(filed)["Subject"] == "dev digest"
    assert "\\Flagged" in flags.split()
    inbox = imap_mailbox(net, DAVE, "INBOX")
    assert [str(parse(m)["Subject"]) for _, m in inbox] == ["personal"]


VACATION_SCRIPT = """require ["vacation", "vacation-seconds"];
vacation :seconds 4 :subject "Away" :addresses ["alice@example.test"]
  "I am away until Monday.";
"""


def test_vacation_answers_once_per_window_never_lists_or_null_senders(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(net, monkeypatch, ALICE, "away", VACATION_SCRIPT)

    def replies() -> list[EmailMessage]:
        return [parse(m) for m in net.b.messages(BOB) if parse(m)["Subject"] == "Away"]

    submit(net, net.b, BOB, [ALICE], compose(BOB, ALICE, "first"))
    wait_until(lambda: len(replies()) == 1, what="the vacation reply")
    reply = replies()[0]
    assert reply["Auto-Submitted"].startswith("auto-replied")
    assert reply["From"].addresses[0].addr_spec == ALICE
    assert reply["In-Reply-To"]
    assert "dkim=pass" in str(reply["Authentication-Results"])
    # The same sender within the window: delivered, not answered again.
    submit(net, net.b, BOB, [ALICE], compose(BOB, ALICE, "second"))
    # List mail and a null sender are never answered (rfc5230:4.5, rfc3834:2).
    submit(net, net.b, BOB, [ALICE], compose(BOB, ALICE, "list", "List-Id: <x.example.net>\r\n"))
    # (From example.org, whose DMARC policy is p=none: this bounce is unsigned.)
    with smtplib.SMTP(net.a.ip, 25, timeout=30, source_address=("127.0.0.4", 0)) as client:
        client.sendmail("", [ALICE], compose("MAILER-DAEMON@example.org", ALICE, "null sender"))
    wait_until(
        lambda: {"second", "list", "null sender"} <= set(subjects(net.a.messages(ALICE))),
        what="all messages delivered",
    )
    time.sleep(2)  # room for a wrong reply to arrive
    assert len(replies()) == 1
    # After the window the sender is answered again, once.
    time.sleep(4)
    submit(net, net.b, BOB, [ALICE], compose(BOB, ALICE, "third"))
    wait_until(lambda: len(replies()) == 2, what="the second vacation reply")
    upload(net, monkeypatch, ALICE, "nothing", "keep;\n")


REDIRECT_SCRIPT = """require ["copy"];
redirect :copy "carol@example.org";
"""


def test_redirect_reaches_postfix_with_an_srs_sender(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload(net, monkeypatch, ALICE, "forward", REDIRECT_SCRIPT)
    try:
        submit(net, net.b, BOB, [ALICE], compose(BOB, ALICE, "pass it on"))

        def arrived() -> list[bytes]:
            return [m for m in net.postfix.messages(CAROL) if b"pass it on" in m]

        wait_until(arrived, timeout=60, what="the redirect at Postfix")
        forwarded = parse(arrived()[0])
        return_path = str(forwarded["Return-Path"]).strip("<>")
        assert return_path.startswith("SRS0=") and return_path.endswith("@example.test")
        assert forwarded["ARC-Seal"]
        # :copy — alice keeps hers too.
        assert "pass it on" in subjects(net.a.messages(ALICE))
    finally:
        upload(net, monkeypatch, ALICE, "nothing", "keep;\n")


# -- acceptance 3 ---------------------------------------------------------------


def test_syntax_error_refused_and_missing_mailbox_keeps_in_inbox(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(net.ca_file))
    client = Client(net.a.ip, 4190)
    assert client.connect(DAVE, PASSWORD, starttls=True, authmech="PLAIN")
    try:
        assert not client.putscript("broken", 'require "fileinto";\nfileinto "x"\nkeep;\n')
        assert re.search(rb"\b3:1\b", client.errmsg), client.errmsg
        _active, scripts = client.listscripts()
        assert "broken" not in scripts
    finally:
        client.logout()

    upload(net, monkeypatch, DAVE, "nowhere", 'require "fileinto";\nfileinto "Nowhere";\n')
    submit(net, net.b, BOB, [DAVE], compose(BOB, DAVE, "lost?"))
    wait_until(lambda: "lost?" in subjects(net.a.messages(DAVE)), what="the message kept in INBOX")
    assert not (net.a.root / "data" / "mail" / "example.test" / "dave" / ".Nowhere").exists()
    upload(net, monkeypatch, DAVE, "nothing", "keep;\n")


# -- acceptance 4 ---------------------------------------------------------------


def test_over_quota_defers_at_the_peer_until_space_is_freed(net: Net) -> None:
    account = net.a.root / "data" / "mail" / "example.test" / "alice"
    before = {p for p in account.rglob("*") if p.is_file() and "/tmp/" not in str(p)}
    used = sum(len(m) for m in net.a.messages(ALICE))
    net.a.cli("user", "quota", ALICE, str(used + 2000))
    big = compose(BOB, ALICE, "too big for now", body=("x" * 70 + "\r\n") * 70)
    submit(net, net.b, BOB, [ALICE], big)

    def deferred() -> list[dict[str, object]]:
        entries: list[dict[str, object]] = json.loads(net.b.cli("queue", "list", "--json").stdout)
        return [e for e in entries if "4.2.2" in str(e.get("last_error"))]

    wait_until(deferred, what="B's queue to hold the message with 452 4.2.2")
    assert "452" in str(deferred()[0]["last_error"])
    assert "too big for now" not in subjects(net.a.messages(ALICE))
    # Nothing half-written: no new file under the account, tmp/ included.
    after = {p for p in account.rglob("*") if p.is_file() and "/tmp/" not in str(p)}
    new_files = {p for p in after - before if not p.name.startswith("index.db")}
    assert not any(p.parent.name in ("new", "cur") for p in new_files), new_files
    assert not any((account / "tmp").iterdir())

    net.a.cli("user", "quota", ALICE, "0")  # space freed: back to "no quota"
    wait_until(
        lambda: "too big for now" in subjects(net.a.messages(ALICE)),
        timeout=60,
        what="B's retry to be delivered",
    )
    wait_until(
        lambda: not json.loads(net.b.cli("queue", "list", "--json").stdout), what="B's queue"
    )
