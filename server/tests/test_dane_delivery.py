"""DANE (rfc7672) in the deliverer: real STARTTLS over loopback, DNS from a MockResolver.

The MX hosts are aiosmtpd listeners on 127.0.0.31 and 127.0.0.32 (one port,
``[queue] port``), with certificates from a test CA the deliverer does not
trust: only DANE (or nothing) can authenticate them. ``dane.example`` is the
signed zone; what is secure is the MockResolver's ``signed`` list.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from _dane import association, rdata
from aiosmtpd.controller import Controller
from cryptography import x509

from conftest import Instance, free_port
from estafeta.config import QueueConfig
from estafeta.dns import MockResolver
from estafeta.queue.dane import TLSA
from estafeta.queue.delivery import Deliverer, Result
from estafeta.queue.mtasts import MTASTS, MemoryCache
from estafeta.reports.tlsrpt import Policy
from estafeta.reports.tlsrpt_recorder import SessionRecorder, Tally

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = pytest.mark.xdist_group("mailnet")

DOMAIN = "dane.example"
MX1, MX2 = "mx1.dane.example", "mx2.dane.example"
IP1, IP2 = "127.0.0.31", "127.0.0.32"
SENDER, RCPT = "alice@sender.example", "bob@dane.example"
MESSAGE = b"From: alice@sender.example\r\nSubject: dane\r\n\r\nHello.\r\n"


@dataclass
class Sink:
    """What an MX host saw: every MAIL FROM (and over TLS or not), messages, SNI."""

    mails: list[tuple[str, bool]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        tls = server.transport.get_extra_info("ssl_object") is not None
        with self.lock:
            self.mails.append((address, tls))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(bytes(envelope.content))
        return "250 2.0.0 Ok: queued"


@dataclass
class MX:
    ip: str
    leaf: trustme.LeafCert
    sink: Sink
    controller: Controller

    @property
    def certs(self) -> list[x509.Certificate]:
        return [x509.load_pem_x509_certificate(pem.bytes()) for pem in self.leaf.cert_chain_pems]


@dataclass
class Net:
    port: int
    root: trustme.CA
    intermediate: trustme.CA
    started: list[Controller] = field(default_factory=list)

    def mx(self, ip: str, leaf: trustme.LeafCert | None = None, starttls: bool = True) -> MX:
        """An MX host on ``ip``; its certificate ``leaf`` (default: for both MX
        names, from the intermediate, sent with the intermediate)."""
        leaf = leaf or self.intermediate.issue_cert(MX1, MX2)
        sink = Sink()
        kwargs: dict[str, Any] = {"hostname": ip, "port": self.port, "server_hostname": "mx"}
        if starttls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            leaf.configure_cert(context)

            def sni(ssl_object: Any, name: str | None, _: Any) -> None:
                sink.sni.append(name)

            context.sni_callback = sni
            kwargs["tls_context"] = context
        controller = Controller(sink, **kwargs)
        controller.start()
        self.started.append(controller)
        return MX(ip, leaf, sink, controller)


@pytest.fixture
def net() -> Iterator[Net]:
    root = trustme.CA()
    net = Net(free_port(), root, root.create_child_ca())
    try:
        yield net
    finally:
        for controller in net.started:
            controller.stop()


def zone(
    *mx: str, signed: bool = True, tlsa: dict[str, list[TLSA]] | None = None, port: int
) -> MockResolver:
    """dane.example with MX records for ``mx`` (mx1 -> IP1, mx2 -> IP2)."""
    resolver = MockResolver(
        {
            (DOMAIN, "MX"): [(10 * (i + 1), name) for i, name in enumerate(mx)],
            (MX1, "A"): [IP1],
            (MX2, "A"): [IP2],
        },
        signed=["dane.example"] if signed else [],
    )
    for host, records in (tlsa or {}).items():
        resolver.add(f"_{port}._tcp.{host}", "TLSA", *map(rdata, records))
    return resolver


def deliver(
    net: Net,
    resolver: MockResolver,
    mta_sts: MTASTS | None = None,
    recorder: SessionRecorder | None = None,
    message: bytes = MESSAGE,
    **config: Any,
) -> list[Result]:
    queue = QueueConfig(port=net.port, connect_timeout=10.0, **config)
    deliverer = Deliverer(
        hostname="mx.sender.example",
        resolver=resolver,
        config=queue,
        mta_sts=mta_sts,
        tls_reporter=recorder,
    )
    return asyncio.run(deliverer.deliver(DOMAIN, SENDER, [RCPT], message))


def counted(
    net: Net, resolver: MockResolver, mta_sts: MTASTS | None = None, message: bytes = MESSAGE
) -> tuple[Result, dict[Policy, Tally]]:
    """One delivery; its result and what the TLS report recorder counted,
    by policy (one UTC day)."""
    recorder = SessionRecorder()
    [result] = deliver(net, resolver, mta_sts, recorder, message)
    return result, {policy: tally for (_, policy), tally in recorder.drain().items()}


def tlsa_policy(host: str, *records: TLSA) -> Policy:
    """rfc8460:4.4 — DANE: the recipient domain, the TLSA records, the MX host."""
    return Policy("tlsa", DOMAIN, tuple(map(str, records)), (host,))


def ee(mx: MX) -> TLSA:
    """DANE-EE SPKI SHA2-256 of the host's leaf: "3 1 1", the usual record."""
    return TLSA(3, 1, 1, association(mx.certs[0], 1, 1))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        dict(getattr(r, "estafeta_fields", {}))
        for r in caplog.records
        if r.name == "estafeta.queue" and r.getMessage() == name
    ]


@pytest.fixture(autouse=True)
def _queue_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="estafeta.queue")


# -- DANE-EE ---------------------------------------------------------------------


def test_dane_ee_match_delivers_and_logs_verified(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    mx = net.mx(IP1)
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: [ee(mx)]}))
    assert (result.state, result.remote_mta) == ("sent", MX1), result
    assert mx.sink.mails == [(SENDER, True)]
    assert mx.sink.sni == [MX1]  # rfc7672:8.1 — SNI is the TLSA base domain
    [verified] = events(caplog, "dane_verified")
    assert verified["host"] == MX1 and verified["base"] == MX1
    assert (verified["usage"], verified["selector"], verified["mtype"]) == (3, 1, 1)
    [tls] = result.tls
    assert (tls.policy, tls.policy_type, tls.success, tls.mx_host) == ("dane", "tlsa", True, MX1)
    assert tls.policy_strings == (str(ee(mx)),)


def test_dane_ee_mismatch_defers_without_plaintext(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    mx = net.mx(IP1)
    wrong = TLSA(3, 1, 1, bytes(32))
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: [wrong]}))
    assert (result.state, result.status) == ("temporary", "4.7.5"), result
    assert "DANE authentication failed" in result.reply
    # Not delivered, not even over TLS, and no plain-text retry.
    assert mx.sink.mails == [] and mx.sink.messages == []
    assert mx.sink.sni == [MX1]  # one handshake, then QUIT
    assert events(caplog, "tls_fallback") == []
    [failed] = events(caplog, "dane_failed")
    assert failed["result"] == "validation-failure"
    assert [(t.success, t.result_type) for t in result.tls] == [(False, "validation-failure")]


def test_expired_leaf_with_dane_ee_still_delivers(net: Net) -> None:
    # rfc7672:3.1.1 — DANE-EE ignores the validity period.
    now = datetime.datetime.now(datetime.UTC)
    expired = net.intermediate.issue_cert(
        MX1, not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(1)
    )
    mx = net.mx(IP1, expired)
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: [ee(mx)]}))
    assert result.state == "sent", result
    assert mx.sink.messages


# -- DANE-TA ---------------------------------------------------------------------


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1)])
def test_dane_ta_with_the_right_name_delivers(
    net: Net, caplog: pytest.LogCaptureFixture, selector: int, mtype: int
) -> None:
    mx = net.mx(IP1)
    ta = TLSA(2, selector, mtype, association(mx.certs[1], selector, mtype))
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: [ta]}))
    assert result.state == "sent", result
    [verified] = events(caplog, "dane_verified")
    assert (verified["usage"], verified["selector"], verified["mtype"]) == (2, selector, mtype)


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1)])
def test_dane_ta_with_a_wrong_name_defers(
    net: Net, caplog: pytest.LogCaptureFixture, selector: int, mtype: int
) -> None:
    mx = net.mx(IP1, net.intermediate.issue_cert("mail.elsewhere.example"))
    ta = TLSA(2, selector, mtype, association(mx.certs[1], selector, mtype))
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: [ta]}))
    assert (result.state, result.status) == ("temporary", "4.7.5"), result
    assert mx.sink.mails == []
    [failed] = events(caplog, "dane_failed")
    assert failed["result"] == "certificate-host-mismatch"
    assert result.tls[-1].result_type == "certificate-host-mismatch"


# -- discovery -------------------------------------------------------------------


def test_insecure_mx_means_no_tlsa_lookup(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    mx = net.mx(IP1)
    # The TLSA record does not match; it is never asked for, so it does not matter.
    resolver = zone(MX1, signed=False, port=net.port, tlsa={MX1: [TLSA(3, 1, 1, bytes(32))]})
    resolver.signed = {"mx1.dane.example"}  # the host's own records are signed, the MX is not
    [result] = deliver(net, resolver)
    assert result.state == "sent", result
    assert not [q for q in resolver.queries if q[1] == "TLSA"]
    assert result.tls[-1].policy == "opportunistic"
    assert mx.sink.mails == [(SENDER, True)]
    assert events(caplog, "dane_verified") == []


def test_insecure_addresses_mean_no_tlsa_lookup(net: Net) -> None:
    net.mx(IP1)
    resolver = zone(MX1, port=net.port, tlsa={MX1: [TLSA(3, 1, 1, bytes(32))]})
    resolver.insecure = {(MX1, "A"), (MX1, "AAAA")}
    [result] = deliver(net, resolver)
    assert result.state == "sent", result
    assert not [q for q in resolver.queries if q[1] == "TLSA"]


def test_dane_off_means_no_tlsa_lookup(net: Net) -> None:
    net.mx(IP1)
    resolver = zone(MX1, port=net.port, tlsa={MX1: [TLSA(3, 1, 1, bytes(32))]})
    [result] = deliver(net, resolver, dane=False)
    assert result.state == "sent", result
    assert not [q for q in resolver.queries if q[1] == "TLSA"]


def test_tlsa_lookup_failure_skips_the_host(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    first, second = net.mx(IP1), net.mx(IP2)
    resolver = zone(MX1, MX2, port=net.port)
    resolver.temperror.add((f"_{net.port}._tcp.{MX1}", "TLSA"))
    [result] = deliver(net, resolver)
    # mx1 is not contacted (not even in plain text); mx2 has no TLSA and takes it.
    assert (result.state, result.remote_mta) == ("sent", MX2), result
    assert first.sink.mails == [] and first.sink.sni == []
    assert second.sink.mails == [(SENDER, True)]
    [failed] = events(caplog, "dane_failed")
    assert failed["host"] == MX1 and failed["result"] == "dnssec-invalid"
    assert failed["reason"].startswith(f"{MX1}: TLSA lookup failed")
    assert [(t.mx_host, t.success, t.result_type) for t in result.tls] == [
        (MX1, False, "dnssec-invalid"),
        (MX2, True, ""),
    ]
    assert result.tls[-1].policy == "opportunistic"


def test_bogus_tlsa_with_one_host_defers(net: Net) -> None:
    mx = net.mx(IP1)
    resolver = zone(MX1, port=net.port)
    resolver.bogus.add((f"_{net.port}._tcp.{MX1}", "TLSA"))
    [result] = deliver(net, resolver)
    assert (result.state, result.status) == ("temporary", "4.7.5"), result
    assert "TLSA lookup failed" in result.reply
    assert mx.sink.sni == [] and mx.sink.mails == []
    assert result.tls[0].reason.startswith("bogus: ")


def test_secure_empty_tlsa_is_opportunistic(net: Net) -> None:
    mx = net.mx(IP1)
    resolver = zone(MX1, port=net.port)
    [result] = deliver(net, resolver)
    assert result.state == "sent", result
    assert (f"_{net.port}._tcp.{MX1}", "TLSA") in resolver.queries
    assert result.tls[-1].policy == "opportunistic"
    assert result.tls[-1].policy_type == "no-policy-found"
    assert mx.sink.mails == [(SENDER, True)]


def test_only_pkix_records_mean_tls_without_authentication(net: Net) -> None:
    mx = net.mx(IP1)
    pkix = [TLSA(1, 1, 1, bytes(32)), TLSA(0, 0, 1, bytes(32))]
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: pkix}))
    assert result.state == "sent", result
    assert mx.sink.mails == [(SENDER, True)]
    assert (result.tls[-1].policy, result.tls[-1].result_type) == ("dane-encrypt", "tlsa-invalid")


def test_only_pkix_records_still_require_starttls(net: Net) -> None:
    mx = net.mx(IP1, starttls=False)
    pkix = [TLSA(1, 1, 1, bytes(32))]
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: pkix}))
    assert (result.state, result.status) == ("temporary", "4.7.5"), result
    assert mx.sink.mails == []


def test_starttls_not_offered_with_tlsa_defers(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    mx = net.mx(IP1, starttls=False)
    [result] = deliver(net, zone(MX1, port=net.port, tlsa={MX1: [ee(mx)]}))
    assert (result.state, result.status) == ("temporary", "4.7.5"), result
    assert "STARTTLS not offered (dane requires TLS)" in result.reply
    assert mx.sink.mails == []
    assert result.tls[-1].result_type == "starttls-not-supported"
    [failed] = events(caplog, "dane_failed")
    assert (failed["host"], failed["result"]) == (MX1, "starttls-not-supported")


def test_cname_host_uses_the_expanded_name(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    # rfc7672:2.2.3 — MX -> alias, alias CNAME target: TLSA and SNI at the target.
    target = "smtp.provider.example"
    mx = net.mx(IP1, net.intermediate.issue_cert(target))
    resolver = MockResolver(
        {
            (DOMAIN, "MX"): [(10, "alias.dane.example")],
            ("alias.dane.example", "CNAME"): [target],
            (target, "A"): [IP1],
            (f"_{net.port}._tcp.{target}", "TLSA"): [rdata(ee(mx))],
        },
        signed=["example"],
    )
    [result] = deliver(net, resolver)
    assert result.state == "sent", result
    assert mx.sink.sni == [target]
    assert events(caplog, "dane_verified")[0]["base"] == target


# -- DANE and MTA-STS (rfc8461:2) ------------------------------------------------


def mta_sts(resolver: MockResolver) -> MTASTS:
    resolver.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1")

    async def fetch(domain: str) -> str:
        return f"version: STSv1\nmode: enforce\nmx: {MX1}\nmax_age: 86400\n"

    return MTASTS(resolver, MemoryCache(), fetcher=fetch)


def test_dane_beats_mta_sts(net: Net) -> None:
    # The certificate is not one the system trusts: MTA-STS alone would defer.
    mx = net.mx(IP1)
    resolver = zone(MX1, port=net.port, tlsa={MX1: [ee(mx)]})
    [result] = deliver(net, resolver, mta_sts=mta_sts(resolver))
    assert result.state == "sent", result
    assert result.tls[-1].policy == "dane"


def test_mta_sts_applies_without_dane(net: Net) -> None:
    mx = net.mx(IP1)
    resolver = zone(MX1, port=net.port)
    [result] = deliver(net, resolver, mta_sts=mta_sts(resolver))
    assert (result.state, result.status) == ("temporary", "4.7.5"), result
    assert mx.sink.mails == []
    assert (result.tls[-1].policy_type, result.tls[-1].result_type) == (
        "sts",
        "certificate-not-trusted",
    )


# -- the resolver must be trusted (rfc4033:4.9.3) --------------------------------


@pytest.mark.parametrize(("nameserver", "warned"), [("192.0.2.53", True), ("127.0.0.1", False)])
def test_startup_warns_when_dnssec_cannot_be_trusted(
    tmp_path: Path, nameserver: str, warned: bool
) -> None:
    instance = Instance(
        tmp_path, free_port(), extra_config=f'[dns]\nnameservers = ["{nameserver}"]\n'
    )
    instance.write_config()
    instance.start()
    try:
        deadline = time.monotonic() + 30
        while " ready " not in instance.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert " ready " in instance.log_text()
        assert ("dane_unavailable" in instance.log_text()) is warned
    finally:
        instance.stop()


# -- the TLS report recorder (rfc8460:4.4 policy-type "tlsa") ------------------------


def test_dane_verified_session_is_a_tlsa_success(net: Net) -> None:
    mx = net.mx(IP1)
    resolver = zone(MX1, port=net.port, tlsa={MX1: [ee(mx)]})
    result, tallies = counted(net, resolver, mta_sts(resolver))
    assert result.state == "sent", result
    # DANE beats MTA-STS (rfc8461:2): counted under the TLSA policy alone.
    assert list(tallies) == [tlsa_policy(MX1, ee(mx))]
    tally = tallies[tlsa_policy(MX1, ee(mx))]
    assert (tally.successful, tally.failed, tally.details) == (1, 0, {})


def test_dane_mismatch_is_a_tlsa_failure_with_details(net: Net) -> None:
    net.mx(IP1)
    wrong = TLSA(3, 1, 1, bytes(32))
    result, tallies = counted(net, zone(MX1, port=net.port, tlsa={MX1: [wrong]}))
    assert result.status == "4.7.5", result
    tally = tallies[tlsa_policy(MX1, wrong)]
    assert (tally.successful, tally.failed) == (0, 1)
    [(key, count)] = tally.details.items()
    # result-type, sending-mta-ip, receiving-mx-hostname, -ip, -helo, reason code
    assert key[:5] == ("validation-failure", "127.0.0.1", MX1, IP1, "mx") and count == 1
    assert key[5] == result.tls[-1].reason


def test_tlsa_lookup_failure_and_the_next_mx(net: Net) -> None:
    net.mx(IP1)
    net.mx(IP2)
    resolver = zone(MX1, MX2, port=net.port)
    resolver.bogus.add((f"_{net.port}._tcp.{MX1}", "TLSA"))
    result, tallies = counted(net, resolver)
    assert (result.state, result.remote_mta) == ("sent", MX2), result
    failed = tallies[Policy("tlsa", DOMAIN, (), (MX1,))]
    assert (failed.successful, failed.failed) == (0, 1)
    [key] = failed.details
    assert key[:4] == ("dnssec-invalid", "", MX1, "") and key[5].startswith("bogus: ")
    # mx2 publishes no TLSA: its session is one of no policy, a success.
    none = tallies[Policy("no-policy-found", DOMAIN)]
    assert (none.successful, none.failed) == (1, 0)


def test_unusable_tlsa_records_are_tlsa_invalid(net: Net) -> None:
    net.mx(IP1)
    pkix = TLSA(1, 1, 1, bytes(32))
    result, tallies = counted(net, zone(MX1, port=net.port, tlsa={MX1: [pkix]}))
    assert result.state == "sent", result  # rfc7672:2.2 — encrypted, unauthenticated
    tally = tallies[tlsa_policy(MX1, pkix)]
    assert (tally.successful, tally.failed) == (0, 1)
    assert [key[0] for key in tally.details] == ["tlsa-invalid"]


def test_no_starttls_under_dane_is_counted(net: Net) -> None:
    mx = net.mx(IP1, starttls=False)
    result, tallies = counted(net, zone(MX1, port=net.port, tlsa={MX1: [ee(mx)]}))
    assert result.status == "4.7.5", result
    tally = tallies[tlsa_policy(MX1, ee(mx))]
    assert (tally.successful, tally.failed) == (0, 1)
    [key] = tally.details
    assert key[0] == "starttls-not-supported" and key[5] == "STARTTLS not offered"


# -- TLS-Required: No (rfc8689:4.2.2): DANE failures do not block the message --------

OPTIONAL = b"TLS-Required: No\r\n" + MESSAGE


def test_tls_required_no_goes_on_after_a_dane_mismatch(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    mx = net.mx(IP1)
    wrong = TLSA(3, 1, 1, bytes(32))
    result, tallies = counted(net, zone(MX1, port=net.port, tlsa={MX1: [wrong]}), message=OPTIONAL)
    assert result.state == "sent", result
    assert mx.sink.mails == [(SENDER, True)]  # over the TLS it had
    tally = tallies[tlsa_policy(MX1, wrong)]
    assert (tally.successful, tally.failed) == (0, 1)
    assert [key[0] for key in tally.details] == ["validation-failure"]
    [failed] = events(caplog, "dane_failed")
    assert failed["ignored"] == "tls-required-no"


def test_tls_required_no_uses_a_host_whose_tlsa_lookup_failed(net: Net) -> None:
    mx = net.mx(IP1)
    resolver = zone(MX1, port=net.port)
    resolver.bogus.add((f"_{net.port}._tcp.{MX1}", "TLSA"))
    result, tallies = counted(net, resolver, message=OPTIONAL)
    assert (result.state, result.remote_mta) == ("sent", MX1), result
    assert mx.sink.mails == [(SENDER, True)]
    failed = tallies[Policy("tlsa", DOMAIN, (), (MX1,))]
    assert [key[0] for key in failed.details] == ["dnssec-invalid"]
    # The session itself was one of no policy (rfc8460:4.4), a success.
    assert tallies[Policy("no-policy-found", DOMAIN)].successful == 1


def test_tls_required_no_goes_in_plain_text_without_starttls(net: Net) -> None:
    mx = net.mx(IP1, starttls=False)
    result, tallies = counted(
        net, zone(MX1, port=net.port, tlsa={MX1: [TLSA(3, 1, 1, bytes(32))]}), message=OPTIONAL
    )
    assert result.state == "sent", result
    assert mx.sink.mails == [(SENDER, False)]
    [tally] = tallies.values()
    assert [key[0] for key in tally.details] == ["starttls-not-supported"]
