"""Smarthost mode (``[queue.relay]``): every remote message goes to one host.

The smarthost is aiosmtpd in this process on 127.0.0.20, requiring AUTH over
TLS (STARTTLS on 587 or implicit TLS on 465) with a certificate from a test
CA. The estafeta under test has a DNS server that is not there: the relay is
an IP address and must be reached without any lookup.
"""

from __future__ import annotations

import asyncio
import email
import json
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls
from estafeta.dns import MockResolver
from estafeta.policy import dkim

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

RELAY_IP = "127.0.0.20"
RELAY_USER = "estafeta-out"
RELAY_PASSWORD = "relay secret 42"
ALICE = f"alice@{DOMAIN}"
CAROL = "carol@remote.example"
DAVE = "dave@elsewhere.example"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    login: str | None
    tls: bool


@dataclass
class Smarthost:
    """Records what arrives and every AUTH attempt (user, accepted?)."""

    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        user = auth_data.login.decode()
        ok = mechanism == "PLAIN" and (user, auth_data.password.decode()) == (
            RELAY_USER,
            RELAY_PASSWORD,
        )
        with self.lock:
            self.logins.append((user, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        transport = server.transport
        received = Received(
            sender=envelope.mail_from,
            recipients=list(envelope.rcpt_tos),
            content=bytes(envelope.original_content or envelope.content),
            login=session.auth_data.login.decode() if session.auth_data else None,
            tls=transport is not None and transport.get_extra_info("ssl_object") is not None,
        )
        with self.lock:
            self.messages.append(received)
        return "250 2.0.0 Ok: relayed"

    def wait(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"the smarthost got {len(self.messages)} messages, expected {count}")


@dataclass
class Net:
    inst: Instance
    relay: Smarthost
    client_tls: ssl.SSLContext


class ImplicitTLSSMTP(SMTP):
    """aiosmtpd counts only STARTTLS as TLS for AUTH; on an implicit-TLS
    listener every connection is encrypted (handle_DATA checks it)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._auth_require_tls = False


class ImplicitTLSController(Controller):
    def factory(self) -> SMTP:
        return ImplicitTLSSMTP(self.handler, **self.SMTP_kwargs)


def relay_context(ca: trustme.CA) -> ssl.SSLContext:
    cert = ca.issue_cert(RELAY_IP, "smarthost.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def start_relay(ca: trustme.CA, security: str, port: int) -> tuple[Controller, Smarthost]:
    relay = Smarthost()
    context = relay_context(ca)
    kwargs: dict[str, Any] = {
        "hostname": RELAY_IP,
        "port": port,
        "server_hostname": "smarthost.test",
        "authenticator": relay.authenticate,
        "auth_required": True,
    }
    controller: Controller
    if security == "tls":
        controller = ImplicitTLSController(relay, ssl_context=context, **kwargs)
    else:
        controller = Controller(relay, tls_context=context, require_starttls=True, **kwargs)
    controller.start()
    return controller, relay


@pytest.fixture
def smarthost_net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    """``request.param``: (security, relay password, trust the relay's CA?)."""
    security, password, trust = request.param
    tls_section, ca = make_tls(tmp_path)
    port = 587 if security == "starttls" else 465
    controller, relay = start_relay(ca, security, port)
    (tmp_path / "relay-password").write_text(password + "\n")
    inst = Instance(
        tmp_path,
        free_port(),
        submission_port=free_port(),
        extra_config=tls_section
        # Nothing answers there: any DNS lookup fails (temporarily).
        + f'[dns]\nnameservers = ["127.0.0.1:{free_port()}"]\n'
        + '[queue]\nretry_min = "1h"\nretry_max = "2h"\n'
        + (f'ca_file = "{tmp_path / "ca.pem"}"\n' if trust else "")
        + "[queue.relay]\n"
        # With implicit TLS, leave the port out: 465 is the default.
        + (f'host = "{RELAY_IP}:{port}"\n' if security == "starttls" else f'host = "{RELAY_IP}"\n')
        + f'security = "{security}"\n'
        + f'username = "{RELAY_USER}"\n'
        + 'password_file = "relay-password"\n',
    )
    try:
        inst.write_config()
        inst.add_user(ALICE)
        inst.start()
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        yield Net(inst, relay, client_tls)
    finally:
        if inst.process is not None:
            inst.stop()
        controller.stop()


def submit(net: Net, to: list[str], subject: str) -> None:
    msg = (
        f"From: Alice <{ALICE}>\r\nTo: {', '.join(f'<{r}>' for r in to)}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '-')}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello over the smarthost.\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", net.inst.submission_port, timeout=30) as client:
        client.starttls(context=net.client_tls)
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, to, msg) == {}


def queue(inst: Instance) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(inst.cli("queue", "list", "--json").stdout)
    return entries


def wait_queue(inst: Instance, done: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    entries = queue(inst)
    while not done(entries):
        if time.monotonic() > deadline:
            raise AssertionError(f"queue: {entries}\n{inst.log_text()[-3000:]}")
        time.sleep(0.2)
        entries = queue(inst)
    return entries


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def check_relayed(got: Received, recipients: list[str], subject: str) -> EmailMessage:
    assert got.sender == ALICE
    assert sorted(got.recipients) == sorted(recipients)
    assert got.login == RELAY_USER
    assert got.tls
    message = parse(got.content)
    assert message["Subject"] == subject
    received = " ".join(str(message["Received"]).split())
    # Our submission server's trace header: AUTH over TLS (rfc3848 ESMTPSA).
    assert f"by mx.{DOMAIN} (estafeta) with ESMTPSA" in received
    assert "(using TLS" in received
    return message


@pytest.mark.parametrize(
    "smarthost_net", [("starttls", RELAY_PASSWORD, True)], indirect=True, ids=["starttls"]
)
def test_relay_with_starttls_and_auth(smarthost_net: Net) -> None:
    net = smarthost_net
    # Two remote domains: two queue entries, both for the smarthost.
    submit(net, [CAROL, DAVE], "no key yet")
    got = net.relay.wait(2)
    for item in got:
        assert len(item.recipients) == 1  # one transaction per queue entry
        message = check_relayed(item, item.recipients, "no key yet")
        assert message["DKIM-Signature"] is None  # no key for example.test yet
    assert sorted(r for item in got for r in item.recipients) == [CAROL, DAVE]
    assert all(user == RELAY_USER and ok for user, ok in net.relay.logins)
    wait_queue(net.inst, lambda entries: entries == [])

    # A key written while the server runs signs the next message.
    record = net.inst.cli("dkim", "keygen", DOMAIN, "--selector", "relay").stdout
    submit(net, [CAROL], "signed")
    signed = net.relay.wait(3)[2]
    message = check_relayed(signed, [CAROL], "signed")
    signature = " ".join(str(message["DKIM-Signature"]).split())
    assert f"d={DOMAIN};" in signature and "s=relay;" in signature
    # What the smarthost got verifies against the published key.
    key = "".join(re.findall(r'"([^"]*)"', record.partition(" IN TXT ")[2]))
    resolver = MockResolver({(f"relay._domainkey.{DOMAIN}", "TXT"): [key]})
    [result] = asyncio.run(dkim.verify(resolver, signed.content))
    assert result.result == "pass", result
    wait_queue(net.inst, lambda entries: entries == [])
    log = net.inst.log_text()
    assert "address lookup" not in log and "MX lookup" not in log
    assert log.count("result=sent") == 3
    assert f"relay={RELAY_IP}" in log


@pytest.mark.parametrize(
    "smarthost_net", [("tls", RELAY_PASSWORD, True)], indirect=True, ids=["tls"]
)
def test_relay_with_implicit_tls_and_auth(smarthost_net: Net) -> None:
    net = smarthost_net
    submit(net, [CAROL], "implicit tls")
    [got] = net.relay.wait(1)
    check_relayed(got, [CAROL], "implicit tls")
    assert net.relay.logins == [(RELAY_USER, True)]
    wait_queue(net.inst, lambda entries: entries == [])


@pytest.mark.parametrize(
    "smarthost_net",
    [("starttls", "wrong", True), ("tls", "wrong", True)],
    indirect=True,
    ids=["starttls", "tls"],
)
def test_wrong_relay_password_defers(smarthost_net: Net) -> None:
    net = smarthost_net
    submit(net, [CAROL], "bad password")
    [entry] = wait_queue(net.inst, lambda entries: entries and entries[0]["attempts"] >= 1)
    assert entry["recipients"] == [CAROL]
    assert "AUTH" in entry["last_error"] and "535" in entry["last_error"], entry
    assert net.relay.logins == [(RELAY_USER, False)]
    assert net.relay.messages == []
    # Our credentials are wrong, not the message: no bounce to the sender
    # (Postfix's smtp_sasl_auth_soft_bounce).
    assert net.inst.message_bodies(ALICE) == []
    assert "result=temporary status=4.7.8" in net.inst.log_text()


@pytest.mark.parametrize(
    "smarthost_net",
    [("starttls", RELAY_PASSWORD, False), ("tls", RELAY_PASSWORD, False)],
    indirect=True,
    ids=["starttls", "tls"],
)
def test_unverified_relay_certificate_defers(smarthost_net: Net) -> None:
    net = smarthost_net
    submit(net, [CAROL], "untrusted relay")
    [entry] = wait_queue(net.inst, lambda entries: entries and entries[0]["attempts"] >= 1)
    assert "TLS failed" in entry["last_error"], entry
    assert "CERTIFICATE_VERIFY_FAILED" in entry["last_error"], entry
    # No password was sent to a host we could not authenticate.
    assert net.relay.logins == []
    assert net.relay.messages == []
    assert net.inst.message_bodies(ALICE) == []
