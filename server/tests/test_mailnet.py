"""Mail between real servers on loopback, with a real DNS server.

- example.test: estafeta on 127.0.0.2 ("A"), short queue lifetime for the retry test;
- example.net:  estafeta on 127.0.0.3 ("B");
- example.org:  Debian's Postfix on 127.0.0.4, delivering to a Maildir;
- dead.example: an MX at 127.0.0.9, where nothing listens;
- Knot (knotd) on 127.0.0.1 serves all four zones: MX, SPF, DKIM, DMARC.

Acceptance of issue 5: submission on 587 at A arrives at B with spf, dkim and
dmarc all "pass"; a forged From fails DMARC; an unreachable destination is
retried (across a crash) and ends in a DSN; Postfix interoperates both ways.
"""

from __future__ import annotations

import asyncio
import email
import json
import shutil
import smtplib
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from pathlib import Path

import pytest
import trustme

from _mailnet import Knot, MailHost, Postfix, mail_zone, txt
from conftest import PASSWORD
from estafeta.dns import DNSPythonResolver
from estafeta.policy.dkim import arc_verify

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

ALICE = "alice@example.test"
BOB = "bob@example.net"
CAROL = "carol@example.org"
FORWARD = "fwd@example.net"


@dataclass
class Net:
    knot: Knot
    a: MailHost
    b: MailHost
    postfix: Postfix
    client_tls: ssl.SSLContext


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("mailnet")
    ca = trustme.CA()
    knot = Knot(root / "dns", {})
    nameserver = knot.address
    a = MailHost(
        root / "a",
        "example.test",
        "127.0.0.2",
        ca,
        nameserver,
        extra_config=(
            "[queue]\n"
            'source_address = "127.0.0.2"\n'
            'retry_min = "1s"\n'
            'retry_max = "2s"\n'
            'delay_warning = "3s"\n'
            'lifetime = "8s"\n'
            'connect_timeout = "3s"\n'
        ),
    )
    b = MailHost(
        root / "b",
        "example.net",
        "127.0.0.3",
        ca,
        nameserver,
        extra_config='[queue]\nsource_address = "127.0.0.3"\nretry_min = "1s"\n',
    )
    for host, user in ((a, ALICE), (b, BOB)):
        host.write_config()
        host.add_user(user)
    b.cli("alias", "add", FORWARD, CAROL)  # example.net forwards to Postfix's domain
    knot.zones = {
        "example.test": mail_zone("127.0.0.2", dkim=a.dkim_records()),
        "example.net": mail_zone("127.0.0.3", dkim=b.dkim_records()),
        "example.org": mail_zone("127.0.0.4", dmarc="v=DMARC1; p=none"),
        "dead.example": ["@ MX 10 mx", "mx A 127.0.0.9", f"@ TXT {txt('v=spf1 -all')}"],
    }
    # Postfix's unprivileged daemons must reach their files: pytest's temp
    # directories are private to root, so Postfix gets its own.
    postfix_root = Path(tempfile.mkdtemp(prefix="estafeta-postfix-"))
    postfix_root.chmod(0o755)
    postfix = Postfix(
        postfix_root,
        "example.org",
        "127.0.0.4",
        mailboxes=(CAROL,),
        transport={"example.test": "[127.0.0.2]:25"},
    )
    started: list[Knot | MailHost | Postfix] = []
    try:
        for service in (knot, a, b, postfix):
            service.start()
            started.append(service)
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        yield Net(knot, a, b, postfix, client_tls)
    finally:
        for service in reversed(started):
            service.stop()
        for host in (a, b):
            host.kill()
        shutil.rmtree(postfix_root, ignore_errors=True)


def submit(host: MailHost, context: ssl.SSLContext, user: str, to: list[str], msg: bytes) -> None:
    with smtplib.SMTP(host.ip, 587, timeout=30) as client:
        client.starttls(context=context)
        client.login(user, PASSWORD)
        assert client.sendmail(user, to, msg) == {}


def compose(sender: str, to: str, subject: str, extra: str = "") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"
    ).encode()


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def with_subject(messages: list[bytes], subject: str) -> EmailMessage:
    for raw in messages:
        message = parse(raw)
        if message["Subject"] == subject:
            return message
    raise AssertionError(f"no message with subject {subject!r}")


def wait_for(host: MailHost, user: str, subject: str, timeout: float = 30) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in host.messages(user):
            message = parse(raw)
            if message["Subject"] == subject:
                return message
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} did not reach {user}\n{host.log_text()[-3000:]}")


def our_results(message: Message, authserv_id: str) -> str:
    headers = [
        str(value)
        for value in message.get_all("Authentication-Results", [])
        if str(value).split(";")[0].strip().lower() == authserv_id
    ]
    assert len(headers) == 1, headers
    return " ".join(headers[0].split())


def test_submission_arrives_with_spf_dkim_dmarc_pass_both_ways(net: Net) -> None:
    # An A-R header claiming B's authserv-id must not survive (rfc8601:5).
    forged_ar = "Authentication-Results: mx.example.net; dmarc=pass header.from=evil.test\r\n"
    submit(net.a, net.client_tls, ALICE, [BOB], compose(ALICE, BOB, "a to b", forged_ar))
    received = wait_for(net.b, BOB, "a to b")
    results = our_results(received, "mx.example.net")
    assert "spf=pass smtp.mailfrom=example.test" in results
    assert results.count("dkim=pass") == 2  # RSA and Ed25519 (rfc8463)
    assert "header.a=rsa-sha256" in results and "header.a=ed25519-sha256" in results
    assert "dmarc=pass" in results and "header.from=example.test" in results
    assert "evil.test" not in str(received)
    assert len(received.get_all("DKIM-Signature", [])) == 2

    submit(net.b, net.client_tls, BOB, [ALICE], compose(BOB, ALICE, "b to a"))
    results = our_results(wait_for(net.a, ALICE, "b to a"), "mx.example.test")
    assert "spf=pass" in results and "dkim=pass" in results and "dmarc=pass" in results


def test_forged_from_fails_dmarc_and_is_refused(net: Net) -> None:
    # Straight to B's MX from an address example.test's SPF does not list,
    # without a DKIM signature: DMARC fails, and example.test says p=reject.
    with smtplib.SMTP(net.b.ip, 25, timeout=30, source_address=("127.0.0.1", 0)) as client:
        client.ehlo("forger.example")
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(ALICE, [BOB], compose(ALICE, BOB, "forged"))
    assert caught.value.smtp_code == 550
    assert caught.value.smtp_error.startswith(b"5.7.1")
    assert b"DMARC" in caught.value.smtp_error
    # The same forgery with a sender domain whose SPF passes still fails:
    # DMARC needs the From: domain aligned (rfc7489:3.1).
    with (
        smtplib.SMTP(net.b.ip, 25, timeout=30, source_address=("127.0.0.4", 0)) as client,
        pytest.raises(smtplib.SMTPDataError) as caught,
    ):
        client.sendmail(CAROL, [BOB], compose(ALICE, BOB, "forged aligned?"))
    assert caught.value.smtp_code == 550
    assert all(
        parse(m)["Subject"] not in ("forged", "forged aligned?") for m in net.b.messages(BOB)
    )


def test_unreachable_destination_retries_then_bounces(net: Net) -> None:
    submit(net.a, net.client_tls, ALICE, ["nobody@dead.example"], compose(ALICE, "x", "doomed"))
    deadline = time.monotonic() + 20
    entries: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        entries = json.loads(net.a.cli("queue", "list", "--json").stdout)
        if entries and int(entries[0]["attempts"]) >= 1:  # type: ignore[call-overload]
            break
        time.sleep(0.2)
    assert entries and entries[0]["domain"] == "dead.example", entries
    assert "refused" in str(entries[0]["last_error"]).lower()
    # A crash while the message waits loses nothing: it is still queued after.
    net.a.kill()
    assert json.loads(net.a.cli("queue", "list", "--json").stdout)[0]["id"] == entries[0]["id"]
    net.a.start()

    failed = wait_for(net.a, ALICE, "Undelivered Mail Returned to Sender", timeout=40)
    delayed = with_subject(net.a.messages(ALICE), "Delayed Mail (still being retried)")
    for dsn, action in ((failed, "failed"), (delayed, "delayed")):
        assert dsn.get_content_type() == "multipart/report"
        assert dsn.get_param("report-type") == "delivery-status"
        text = dsn.as_string()
        assert "Final-Recipient: rfc822; nobody@dead.example" in text
        assert f"Action: {action}" in text
    assert "doomed" in failed.as_string()  # the original comes back
    assert json.loads(net.a.cli("queue", "list", "--json").stdout) == []


def test_postfix_interop_both_ways(net: Net) -> None:
    # estafeta -> Postfix, found through example.org's MX record.
    submit(net.a, net.client_tls, ALICE, [CAROL], compose(ALICE, CAROL, "to postfix"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not net.postfix.messages(CAROL):
        time.sleep(0.2)
    [delivered] = net.postfix.messages(CAROL)
    assert parse(delivered)["Subject"] == "to postfix"
    assert b"DKIM-Signature:" in delivered
    # Postfix logs the delivery after the file is in place, through postlogd.
    deadline = time.monotonic() + 10
    while "status=sent" not in net.postfix.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status=sent" in net.postfix.log()

    # Postfix -> estafeta: Postfix relays to A's MX on port 25.
    with smtplib.SMTP(net.postfix.ip, 25, timeout=30) as client:
        client.sendmail(CAROL, [ALICE], compose(CAROL, ALICE, "from postfix"))
    received = wait_for(net.a, ALICE, "from postfix", timeout=60)
    assert "mx.example.org" in str(received["Received"])
    assert "spf=pass smtp.mailfrom=example.org" in our_results(received, "mx.example.test")


def test_queue_cli_on_a_live_server(net: Net, tmp_path: Path) -> None:
    out = net.a.cli("queue", "list").stdout
    assert "queue is empty" in out
    assert "0 entries due now" in net.a.cli("queue", "flush").stdout


def test_forwarding_rewrites_the_sender_and_seals_arc(net: Net) -> None:
    submit(net.a, net.client_tls, ALICE, [FORWARD], compose(ALICE, FORWARD, "forward me"))
    deadline = time.monotonic() + 30
    forwarded: EmailMessage | None = None
    while time.monotonic() < deadline and forwarded is None:
        for raw in net.postfix.messages(CAROL):
            if parse(raw)["Subject"] == "forward me":
                forwarded, forwarded_raw = parse(raw), raw
        time.sleep(0.2)
    assert forwarded is not None, net.b.log_text()[-3000:]
    # SRS: the envelope sender Postfix saw is B's, and reverses to alice.
    return_path = str(forwarded["Return-Path"]).strip("<>")
    assert return_path.startswith("SRS0=") and return_path.endswith("@example.net")
    # ARC (rfc8617): B sealed what it verified; the chain validates against the DNS.
    assert forwarded["ARC-Seal"] and forwarded["ARC-Message-Signature"]
    assert "i=1" in str(forwarded["ARC-Authentication-Results"])
    assert "dmarc=pass" in str(forwarded["ARC-Authentication-Results"])
    resolver = DNSPythonResolver([("127.0.0.1", net.knot.port)])
    arc = asyncio.run(arc_verify(resolver, forwarded_raw.replace(b"\n", b"\r\n")))
    assert arc.result == "pass", arc

    # A bounce to the SRS address goes back through B to alice.
    with smtplib.SMTP(net.b.ip, 25, timeout=30, source_address=("127.0.0.4", 0)) as client:
        client.sendmail(
            "", [return_path], compose("MAILER-DAEMON@example.org", return_path, "bounce back")
        )
        # An SRS address we did not make is refused: no relaying through forged SRS.
        code, reply = client.docmd("MAIL", "FROM:<>")
        code, reply = client.docmd("RCPT", "TO:<SRS0=abcd=AB=evil.test=x@example.net>")
        assert code == 550, reply
    wait_for(net.a, ALICE, "bounce back")
