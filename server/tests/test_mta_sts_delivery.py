"""MTA-STS (rfc8461) end to end: real DNS, a real HTTPS policy host, real MX hosts.

- sts-sender.test:       estafeta on 127.0.0.21, the sender;
- sts.example:           estafeta on 127.0.0.22, policy ``enforce`` naming its MX;
- bad-sts.example:       MX mx.sts.example, but its ``enforce`` policy names another host;
- untrusted-sts.example: estafeta on 127.0.0.24 whose certificate comes from a CA the
  sender does not trust, policy ``enforce`` naming its MX;
- mta-sts.<each>:        one HTTPS server in this process on 127.0.0.23:443;
- Knot on 127.0.0.1 serves all zones; the sender trusts the test CA (``[queue] ca_file``).
"""

from __future__ import annotations

import email
import json
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
import trustme

from _mailnet import Knot, MailHost, mail_zone, txt
from conftest import PASSWORD

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

SENDER_IP = "127.0.0.21"
RECEIVER_IP = "127.0.0.22"
POLICY_IP = "127.0.0.23"
UNTRUSTED_IP = "127.0.0.24"
ALICE = "alice@sts-sender.test"
BOB = "bob@sts.example"
CAROL = "carol@untrusted-sts.example"


def policy(mode: str, *mx: str) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), "max_age: 86400"]
    return "\r\n".join(lines) + "\r\n"


def sts_records(policy_id: str) -> list[str]:
    return [f"_mta-sts TXT {txt(f'v=STSv1; id={policy_id}')}", f"mta-sts A {POLICY_IP}"]


class PolicyServer(ThreadingHTTPServer):
    """``https://mta-sts.<domain>/.well-known/mta-sts.txt`` for several domains."""

    daemon_threads = False  # server_close() waits for every request

    def __init__(self, context: ssl.SSLContext, policies: dict[str, str]) -> None:
        super().__init__((POLICY_IP, 443), PolicyHandler)
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )
        self.policies = policies
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()


class PolicyHandler(BaseHTTPRequestHandler):
    server: PolicyServer
    timeout = 10

    def do_GET(self) -> None:
        host = self.headers.get("Host", "").lower()
        with self.server.lock:
            self.server.requests.append((host, self.path))
            text = self.server.policies.get(host)
        if self.path != "/.well-known/mta-sts.txt" or text is None:
            self.send_error(404)
            return
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Net:
    knot: Knot
    sender: MailHost
    receiver: MailHost
    untrusted: MailHost
    https: PolicyServer
    client_tls: ssl.SSLContext
    policies: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("mtasts")
    ca = trustme.CA()
    knot = Knot(root / "dns", {})
    sender = MailHost(
        root / "sender",
        "sts-sender.test",
        SENDER_IP,
        ca,
        knot.address,
        extra_config=(
            "[queue]\n"
            f'source_address = "{SENDER_IP}"\n'
            f'ca_file = "{root / "sender" / "ca.pem"}"\n'
            'retry_min = "1s"\n'
            'retry_max = "2s"\n'
            'connect_timeout = "5s"\n'
        ),
    )
    receiver = MailHost(root / "receiver", "sts.example", RECEIVER_IP, ca, knot.address)
    # Its certificate is fine for opportunistic TLS but not verifiable by the sender.
    untrusted = MailHost(
        root / "untrusted", "untrusted-sts.example", UNTRUSTED_IP, trustme.CA(), knot.address
    )
    for host, user in ((sender, ALICE), (receiver, BOB), (untrusted, CAROL)):
        host.write_config()
        host.add_user(user)
    knot.zones = {
        "sts-sender.test": mail_zone(SENDER_IP),
        "sts.example": mail_zone(RECEIVER_IP) + sts_records("20261129"),
        "bad-sts.example": ["@ MX 10 mx.sts.example.", *sts_records("20261129")],
        "untrusted-sts.example": mail_zone(UNTRUSTED_IP) + sts_records("20261129"),
    }
    policies = {
        "mta-sts.sts.example": policy("enforce", "mx.sts.example"),
        "mta-sts.bad-sts.example": policy("enforce", "other.bad-sts.example"),
        "mta-sts.untrusted-sts.example": policy("enforce", "mx.untrusted-sts.example"),
    }
    https_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*policies).configure_cert(https_context)
    https = PolicyServer(https_context, policies)
    serving = threading.Thread(target=https.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    started: list[Knot | MailHost] = []
    try:
        for service in (knot, sender, receiver, untrusted):
            service.start()
            started.append(service)
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        yield Net(knot, sender, receiver, untrusted, https, client_tls, policies)
    finally:
        for service in reversed(started):
            service.stop()
        for host in (sender, receiver, untrusted):
            host.kill()
        https.shutdown()
        serving.join()
        https.server_close()


def submit(net: Net, to: str, subject: str) -> None:
    msg = (
        f"From: <{ALICE}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"
    ).encode()
    with smtplib.SMTP(net.sender.ip, 587, timeout=30) as client:
        client.starttls(context=net.client_tls)
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, [to], msg) == {}


def queued(net: Net, domain: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(net.sender.cli("queue", "list", "--json").stdout)
    return [entry for entry in entries if entry["domain"] == domain]


def wait_attempted(net: Net, domain: str, attempts: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entries = queued(net, domain)
        if entries and entries[0]["attempts"] >= attempts:
            return entries[0]
        time.sleep(0.2)
    raise AssertionError(f"no attempt for {domain}: {net.sender.log_text()[-3000:]}")


def wait_for(host: MailHost, user: str, subject: str, timeout: float = 30) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in host.messages(user):
            message = email.message_from_bytes(raw, policy=default_policy)
            assert isinstance(message, EmailMessage)
            if message["Subject"] == subject:
                return message
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} did not reach {user}\n{host.log_text()[-3000:]}")


def log_lines(host: MailHost, *needles: str) -> list[str]:
    return [line for line in host.log_text().splitlines() if all(n in line for n in needles)]


def logged(host: MailHost, *needles: str, timeout: float = 10.0) -> list[str]:
    """The matching log lines, waiting for them: the receiver may store a
    message before the sender has written its own log line about it."""
    deadline = time.monotonic() + timeout
    while not (lines := log_lines(host, *needles)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return lines


def test_enforced_policy_delivers_over_verified_tls(net: Net) -> None:
    submit(net, BOB, "sts enforce")
    message = wait_for(net.receiver, BOB, "sts enforce")
    received = " ".join(str(message["Received"]).split())
    assert f"from mx.sts-sender.test ([{SENDER_IP}])" in received
    assert "with ESMTPS" in received and "(using TLS" in received
    # The policy was fetched over HTTPS and applied.
    assert ("mta-sts.sts.example", "/.well-known/mta-sts.txt") in net.https.requests
    assert logged(net.sender, "mta_sts_policy", "domain=sts.example", "mode=enforce")
    assert logged(net.sender, "outbound", f"to=<{BOB}>", "relay=mx.sts.example", "result=sent")
    assert not log_lines(net.sender, "tls_fallback")
    assert queued(net, "sts.example") == []


def test_mx_not_in_the_policy_is_not_used(net: Net) -> None:
    submit(net, "dave@bad-sts.example", "sts mismatch")
    entry = wait_attempted(net, "bad-sts.example", attempts=2)
    assert "MTA-STS" in entry["last_error"], entry
    assert "no MX of bad-sts.example matches" in entry["last_error"], entry
    assert logged(net.sender, "outbound", "to=<dave@bad-sts.example>", "status=4.7.5")
    assert not log_lines(net.sender, "to=<dave@bad-sts.example>", "result=sent")
    # mx.sts.example was never even contacted for it.
    assert "dave@bad-sts.example" not in net.receiver.log_text()
    assert logged(net.sender, "mta_sts_policy", "domain=bad-sts.example", "mode=enforce")
    net.sender.cli("queue", "delete", entry["id"])


def test_unverifiable_certificate_defers_until_the_policy_relaxes(net: Net) -> None:
    submit(net, CAROL, "sts untrusted")
    entry = wait_attempted(net, "untrusted-sts.example")
    assert "mx.untrusted-sts.example[127.0.0.24]: TLS failed" in entry["last_error"], entry
    assert "CERTIFICATE_VERIFY_FAILED" in entry["last_error"], entry
    assert logged(net.sender, "outbound", f"to=<{CAROL}>", "result=temporary", "status=4.7.5")
    # Required TLS never falls back to plain text.
    assert not log_lines(net.sender, "tls_fallback", "untrusted-sts.example")
    assert net.untrusted.messages(CAROL) == []

    # The domain moves to "testing" under a new id (rfc8461:3.1): the sender
    # fetches the new policy and delivers with opportunistic TLS.
    with net.https.lock:
        net.policies["mta-sts.untrusted-sts.example"] = policy(
            "testing", "mx.untrusted-sts.example"
        )
    update = dns.update.UpdateMessage(
        "untrusted-sts.example",
        keyring=dns.tsigkeyring.from_text({"estafeta-test": net.knot.tsig_secret}),
        keyalgorithm=dns.tsig.HMAC_SHA256,
    )
    update.replace("_mta-sts", 60, "TXT", txt("v=STSv1; id=20261130"))
    answer = dns.query.tcp(update, "127.0.0.1", port=net.knot.port, timeout=5)
    assert answer.rcode() == dns.rcode.NOERROR
    message = wait_for(net.untrusted, CAROL, "sts untrusted")
    assert "(using TLS" in str(message["Received"])
    assert logged(net.sender, "mta_sts_policy", "id=20261130", "mode=testing")
    assert queued(net, "untrusted-sts.example") == []
