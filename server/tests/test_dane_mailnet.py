"""DANE (rfc7672) end to end: Knot signs, unbound validates, estafeta sends.

- dane-sender.example: estafeta on 127.0.0.41, the sender; its resolver is
  unbound on loopback (so it believes the AD bit);
- dane.example:        signed; estafeta on 127.0.0.42 with ``_25._tcp.mx``
  TLSA 3 1 1 of its certificate;
- bad-dane.example:    signed; its MX is the same host, its TLSA matches nothing;
- plain-dane.example:  unsigned; the same MX and the same bad TLSA.

The issue's acceptance 2 in miniature: delivery to dane.example is logged as
DANE-verified; bad-dane.example defers (4.7.5) before MAIL FROM; the TLSA of
the unsigned zone is ignored.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme
from _dane import association
from cryptography import x509

from _mailnet import Knot, MailHost, Unbound, mail_zone

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

SENDER_IP = "127.0.0.41"
RECEIVER_IP = "127.0.0.42"
ALICE = "alice@dane-sender.example"
BOB = "bob@dane.example"
WRONG = "3 1 1 " + "00" * 32


@dataclass
class Net:
    sender: MailHost
    receiver: MailHost
    client_tls: ssl.SSLContext


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("dane")
    ca = trustme.CA()
    knot = Knot(root / "knot", {}, signed=("dane.example", "bad-dane.example"))
    unbound = Unbound(root / "unbound", knot)
    sender = MailHost(
        root / "sender",
        "dane-sender.example",
        SENDER_IP,
        ca,
        unbound.address,
        extra_config=(
            "[queue]\n"
            f'source_address = "{SENDER_IP}"\n'
            'retry_min = "1s"\n'
            'retry_max = "2s"\n'
            'connect_timeout = "5s"\n'
        ),
    )
    receiver = MailHost(root / "receiver", "dane.example", RECEIVER_IP, ca, knot.address)
    for host, user in ((sender, ALICE), (receiver, BOB)):
        host.write_config()
        host.add_user(user)
    leaf = x509.load_pem_x509_certificate((receiver.root / "cert.pem").read_bytes())
    good = "3 1 1 " + association(leaf, 1, 1).hex()
    elsewhere = ["@ MX 10 mx", f"mx A {RECEIVER_IP}", f"_25._tcp.mx TLSA {WRONG}"]
    knot.zones = {
        "dane-sender.example": mail_zone(SENDER_IP),
        "dane.example": [*mail_zone(RECEIVER_IP), f"_25._tcp.mx TLSA {good}"],
        "bad-dane.example": elsewhere,
        "plain-dane.example": elsewhere,
    }
    started: list[Knot | Unbound | MailHost] = []
    try:
        for service in (knot, unbound, sender, receiver):
            service.start()
            started.append(service)
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        yield Net(sender, receiver, client_tls)
    finally:
        for service in reversed(started):
            service.stop()


def test_delivery_is_dane_verified(net: Net) -> None:
    net.sender.submit(ALICE, BOB, "dane ok", net.client_tls)
    [message] = net.receiver.wait_messages(BOB)
    assert b"Subject: dane ok" in message
    assert net.sender.logged("dane_verified", "host=mx.dane.example", "usage=3", "selector=1")
    assert net.sender.logged("outbound", f"to=<{BOB}>", "tls=dane", "result=sent")
    assert not net.sender.log_lines("dane_unavailable")


def test_mismatching_tlsa_defers(net: Net) -> None:
    net.sender.submit(ALICE, "dave@bad-dane.example", "dane bad", net.client_tls)
    entry = net.sender.wait_attempted("bad-dane.example")
    assert "DANE authentication failed" in entry["last_error"], entry
    assert net.sender.logged("outbound", "to=<dave@bad-dane.example>", "tls=dane", "status=4.7.5")
    assert net.sender.logged("dane_failed", "host=mx.bad-dane.example", "result=validation-failure")
    # The receiver never heard of the message: no MAIL FROM went out.
    assert "dave@bad-dane.example" not in net.receiver.log_text()
    net.sender.cli("queue", "delete", entry["id"])


def test_tlsa_of_an_unsigned_zone_is_ignored(net: Net) -> None:
    net.sender.submit(ALICE, "erin@plain-dane.example", "dane unsigned", net.client_tls)
    # The receiver refuses the recipient (not its domain): what matters is
    # that the sender got that far, with opportunistic TLS.
    [line] = net.sender.logged("outbound", "to=<erin@plain-dane.example>", timeout=30)
    assert "tls=opportunistic" in line and "status=4.7.5" not in line, line
    assert not net.sender.log_lines("dane_failed", "host=mx.plain-dane.example")
    assert "erin@plain-dane.example" in net.receiver.log_text()
