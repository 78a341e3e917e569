"""Our outbound sessions as TLS reports count them (rfc8460:4): the real
deliverer (estafeta.queue.delivery) delivers to test MX hosts over real
sockets, aiosmtpd on loopback, with good, expired, misnamed and untrusted
certificates or no STARTTLS at all, under no policy and under an enforced
MTA-STS policy; the recorder (estafeta.reports.tlsrpt_recorder) gets a
success or the right rfc8460:4.3 result type, with the session's
addresses, the MX name and its EHLO name. A policy that cannot be fetched
is one failure of its own type, and a recording problem never fails a
delivery."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from conftest import free_port
from estafeta.config import QueueConfig
from estafeta.dns import MockResolver
from estafeta.queue import pkix
from estafeta.queue.delivery import Deliverer, Result
from estafeta.queue.mtasts import MTASTS, MemoryCache
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import Policy
from estafeta.reports.tlsrpt_recorder import MAX_DETAILS, SessionRecorder, Tally
from estafeta.reports.tlsrpt_send import Identity, build_message, build_report
from estafeta.tlsclose import SHUTDOWN_SECONDS

DOMAIN = "peer.test"
MX = "mx.peer.test"
NOW = 1767268800.0  # 2026-01-01 12:00 UTC
DAY = "2026-01-01"
POLICY_TEXT = f"version: STSv1\r\nmode: enforce\r\nmx: {MX}\r\nmax_age: 86400\r\n"
STS = Policy(
    "sts", DOMAIN, ("version: STSv1", "mode: enforce", f"mx: {MX}", "max_age: 86400"), (MX,)
)
NONE = Policy("no-policy-found", DOMAIN)
MESSAGE = b"From: a@sender.test\r\nTo: b@peer.test\r\nSubject: hi\r\n\r\nHello.\r\n"

TRUSTED = trustme.CA()
UNTRUSTED = trustme.CA()


@dataclass
class Sink:
    messages: list[bytes] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)  # each message came over TLS
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(bytes(envelope.original_content or envelope.content))
            self.tls.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 2.0.0 Ok"


def server_context(ca: trustme.CA, *names: str, expired: bool = False) -> ssl.SSLContext:
    now = datetime.datetime.now(datetime.UTC)
    window: dict[str, Any] = {}
    if expired:
        window = {
            "not_before": now - datetime.timedelta(days=30),
            "not_after": now - datetime.timedelta(days=1),
        }
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **window).configure_cert(context)
    return context


CERTIFICATES = {
    "good": lambda: server_context(TRUSTED, MX),
    "expired": lambda: server_context(TRUSTED, MX, expired=True),
    "misnamed": lambda: server_context(TRUSTED, "other.test"),
    "untrusted": lambda: server_context(UNTRUSTED, MX),
    "no-starttls": lambda: None,
}


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module's deliveries: a TLS connection's socket
    closes after the close_notify exchange (estafeta.tlsclose), which a loop
    closed at once would cut short; at the end the loop waits that long."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.run_until_complete(asyncio.sleep(SHUTDOWN_SECONDS + 0.5))
    event_loop.close()


@dataclass
class MXHost:
    port: int
    sink: Sink


@pytest.fixture
def mx(request: pytest.FixtureRequest) -> Iterator[MXHost]:
    """``request.param``: a key of CERTIFICATES."""
    sink = Sink()
    port = free_port()
    context = CERTIFICATES[request.param]()
    kwargs: dict[str, Any] = {"tls_context": context} if context is not None else {}
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, server_hostname=MX, require_starttls=False, **kwargs
    )
    controller.start()
    try:
        yield MXHost(port, sink)
    finally:
        controller.stop()


def deliver(
    loop: asyncio.AbstractEventLoop,
    tmp_path: Path,
    port: int,
    *,
    policy: str | None = None,
    fetch_error: BaseException | None = None,
    mx_name: str = MX,
    message: bytes = MESSAGE,
) -> tuple[list[Result], dict[tuple[str, Policy], Tally]]:
    """One delivery attempt to peer.test through the real deliverer; its
    results and what the recorder counted."""
    ca_file = tmp_path / "ca.pem"
    TRUSTED.cert_pem.write_to_path(str(ca_file))
    resolver = MockResolver(
        {(DOMAIN, "MX"): [(10, mx_name)], (mx_name, "A"): ["127.0.0.1"]},
    )
    if policy is not None or fetch_error is not None:
        resolver.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=20260101")

    async def fetcher(domain: str) -> str:
        if fetch_error is not None:
            raise fetch_error
        assert policy is not None
        return policy

    recorder = SessionRecorder(clock=lambda: NOW)
    deliverer = Deliverer(
        hostname="mx.sender.test",
        resolver=resolver,
        config=QueueConfig(port=port, ca_file=ca_file, connect_timeout=10.0),
        mta_sts=MTASTS(resolver, MemoryCache(), fetcher=fetcher, clock=lambda: NOW),
        tls_reporter=recorder,
    )
    results = loop.run_until_complete(
        deliverer.deliver(DOMAIN, "a@sender.test", ["b@peer.test"], message)
    )
    return results, recorder.drain()


def only(pending: dict[tuple[str, Policy], Tally], policy: Policy) -> Tally:
    assert list(pending) == [(DAY, policy)]
    return pending[(DAY, policy)]


@pytest.mark.parametrize("mx", ["good", "untrusted"], indirect=True)
def test_opportunistic_tls_is_a_success_under_no_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port)
    assert [r.state for r in results] == ["sent"]
    tally = only(pending, NONE)
    # No policy asks for a verified certificate: any TLS is a successful session.
    assert (tally.successful, tally.failed, tally.details) == (1, 0, {})


@pytest.mark.parametrize("mx", ["no-starttls"], indirect=True)
def test_no_starttls_is_a_failure_even_without_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port)
    assert [r.state for r in results] == ["sent"]  # in plain text, as before
    assert len(mx.sink.messages) == 1
    tally = only(pending, NONE)
    assert (tally.successful, tally.failed) == (0, 1)
    assert tally.details == {
        ("starttls-not-supported", "127.0.0.1", MX, "127.0.0.1", MX, "STARTTLS not offered"): 1
    }


@pytest.mark.parametrize("mx", ["good"], indirect=True)
def test_verified_tls_is_a_success_under_the_sts_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port, policy=POLICY_TEXT)
    assert [r.state for r in results] == ["sent"]
    tally = only(pending, STS)  # the policy's lines and mx patterns (rfc8460:4.4)
    assert (tally.successful, tally.failed) == (1, 0)


@pytest.mark.parametrize(
    ("mx", "result_type", "reason"),
    [
        ("expired", "certificate-expired", "X509_V_ERR_CERT_HAS_EXPIRED"),
        ("misnamed", "certificate-host-mismatch", "X509_V_ERR_HOSTNAME_MISMATCH"),
        ("untrusted", "certificate-not-trusted", "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"),
        ("no-starttls", "starttls-not-supported", "STARTTLS not offered"),
    ],
    indirect=["mx"],
)
def test_failures_under_an_enforced_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost, result_type: str, reason: str
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port, policy=POLICY_TEXT)
    assert [(r.state, r.status) for r in results] == [("temporary", "4.7.5")]
    assert mx.sink.messages == []
    tally = only(pending, STS)
    assert (tally.successful, tally.failed) == (0, 1)
    ((key, count),) = tally.details.items()
    assert count == 1
    assert key[:4] == (result_type, "127.0.0.1", MX, "127.0.0.1")
    assert key[5] == reason


@pytest.mark.parametrize("mx", ["good"], indirect=True)
def test_an_mx_outside_the_enforced_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(
        loop, tmp_path, mx.port, policy=POLICY_TEXT, mx_name="mx.elsewhere.test"
    )
    assert [r.status for r in results] == ["4.7.5"]
    tally = only(pending, STS)
    assert tally.details == {
        (
            "validation-failure",
            "",
            "mx.elsewhere.test",
            "",
            "",
            "MX host not in the MTA-STS policy",
        ): 1
    }


@pytest.mark.parametrize(
    ("mx", "error", "policy", "result_type"),
    [
        ("good", OSError("connection refused"), None, "sts-policy-fetch-error"),
        ("good", None, "version: STSv2\n", "sts-policy-invalid"),
        (
            "good",
            ssl.SSLCertVerificationError(1, "certificate verify failed"),
            None,
            "sts-webpki-invalid",
        ),
    ],
    indirect=["mx"],
)
def test_a_policy_that_cannot_be_had_is_one_failure(
    loop: asyncio.AbstractEventLoop,
    tmp_path: Path,
    mx: MXHost,
    error: BaseException | None,
    policy: str | None,
    result_type: str,
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port, policy=policy, fetch_error=error)
    # rfc8461:5.1 — no policy: delivered opportunistically.
    assert [r.state for r in results] == ["sent"]
    tally = only(pending, Policy("sts", DOMAIN))
    assert (tally.successful, tally.failed) == (0, 1)
    ((key, count),) = tally.details.items()
    assert key[0] == result_type and count == 1


@pytest.mark.parametrize("mx", ["good"], indirect=True)
def test_a_broken_recorder_never_fails_a_delivery(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_clock() -> float:
        raise RuntimeError("no clock")

    recorder = SessionRecorder(clock=broken_clock)
    resolver = MockResolver({(DOMAIN, "MX"): [(10, MX)], (MX, "A"): ["127.0.0.1"]})
    deliverer = Deliverer(
        hostname="mx.sender.test",
        resolver=resolver,
        config=QueueConfig(port=mx.port, connect_timeout=10.0),
        tls_reporter=recorder,
    )
    results = loop.run_until_complete(
        deliverer.deliver(DOMAIN, "a@sender.test", ["b@peer.test"], MESSAGE)
    )
    assert [r.state for r in results] == ["sent"]
    assert len(mx.sink.messages) == 1
    assert "tls session not counted" in caplog.text


def test_the_recorder_is_bounded() -> None:
    recorder = SessionRecorder(clock=lambda: NOW)
    for i in range(MAX_DETAILS + 50):
        recorder.failure(NONE, "certificate-expired", f"mx{i}.peer.test", "192.0.2.1", "x")
    # Not an rfc8460 result type: a validation-failure that says what it was.
    recorder.failure(NONE, "not-a-type", "mx.peer.test", detail="what")
    recorder.success(Policy("no-policy-found", "PEER.TEST."), MX, "192.0.2.1")
    tally = only(recorder.drain(), NONE)  # the domain canonical: one policy
    assert (tally.successful, tally.failed) == (1, MAX_DETAILS + 51)
    # Past the bound, failures still count, under their result type alone.
    assert len(tally.details) == MAX_DETAILS + 2
    assert tally.details[("certificate-expired", "", "", "", "", "")] == 50
    assert tally.details[("validation-failure", "", "", "", "", "")] == 1
    assert recorder.drain() == {}
    recorder.failure(NONE, "not-a-type", "mx.peer.test", detail="what")
    ((key, _),) = only(recorder.drain(), NONE).details.items()
    assert key == ("validation-failure", "", "mx.peer.test", "", "", "not-a-type: what")


def test_network_text_is_cut_and_printable() -> None:
    recorder = SessionRecorder(clock=lambda: NOW)
    recorder.failure(NONE, "validation-failure", "MX.Peer.Test.", helo="evil\x1b[2J" + "x" * 500)
    ((key, _),) = only(recorder.drain(), NONE).details.items()
    assert key[2] == "mx.peer.test"
    assert key[4].isprintable() and len(key[4]) <= 200


def test_a_day_is_a_utc_day() -> None:
    days = iter([NOW, NOW + 12 * 3600])  # 12:00 and 24:00 UTC: two days
    recorder = SessionRecorder(clock=lambda: next(days))
    recorder.success(NONE, MX, "192.0.2.1")
    recorder.success(NONE, MX, "192.0.2.1")
    assert sorted(day for day, _ in recorder.drain()) == [DAY, "2026-01-02"]
    assert tlsrpt.NO_POLICY == "no-policy-found"


# -- MTA-STS testing mode: certificates checked after the fact (rfc8461:5) ----------

TESTING_TEXT = POLICY_TEXT.replace("mode: enforce", "mode: testing")
TESTING = Policy(
    "sts", DOMAIN, ("version: STSv1", "mode: testing", f"mx: {MX}", "max_age: 86400"), (MX,)
)


@pytest.mark.parametrize(
    ("mx", "result_type", "reason"),
    [
        ("good", "", ""),
        ("expired", "certificate-expired", "X509_V_ERR_CERT_HAS_EXPIRED"),
        ("misnamed", "certificate-host-mismatch", "X509_V_ERR_HOSTNAME_MISMATCH"),
        ("untrusted", "certificate-not-trusted", ""),
        ("no-starttls", "starttls-not-supported", "STARTTLS not offered"),
    ],
    indirect=["mx"],
)
def test_a_testing_policy_reports_what_enforcing_would_have_found(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost, result_type: str, reason: str
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port, policy=TESTING_TEXT)
    # Delivered as without a policy, whatever the certificate.
    assert [r.state for r in results] == ["sent"]
    assert len(mx.sink.messages) == 1
    tally = only(pending, TESTING)
    if not result_type:
        assert (tally.successful, tally.failed) == (1, 0)
        return
    assert (tally.successful, tally.failed) == (0, 1)
    [key] = tally.details
    assert key[:5] == (result_type, "127.0.0.1", MX, "127.0.0.1", MX)
    assert reason in key[5] and key[5]
    # The delivery result carries the same outcome the report counts.
    assert (results[0].tls[-1].result_type, results[0].tls[-1].policy_type) == (result_type, "sts")


@pytest.mark.parametrize("mx", ["good"], indirect=True)
def test_an_mx_outside_a_testing_policy_is_reported_and_used(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(
        loop, tmp_path, mx.port, policy=TESTING_TEXT, mx_name="mx.elsewhere.test"
    )
    assert [r.state for r in results] == ["sent"]
    [key] = only(pending, TESTING).details
    assert key[0] == "validation-failure" and key[2] == "mx.elsewhere.test"
    assert key[5] == "MX host not in the MTA-STS policy"


def test_the_after_the_fact_check_itself() -> None:
    now = datetime.datetime.now(datetime.UTC)
    later = TRUSTED.issue_cert(
        MX,
        not_before=now + datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=30),
    )
    ders = [pem_der(pem.bytes()) for pem in later.cert_chain_pems]
    store = pkix.trust_store([pem_der(TRUSTED.cert_pem.bytes())])
    assert pkix.check(ders, store, MX, now) == (
        "certificate-not-trusted",
        "X509_V_ERR_CERT_NOT_YET_VALID",
    )
    assert pkix.check(ders, store, MX, now + datetime.timedelta(days=2)) is None
    assert pkix.check(ders, None, MX, now + datetime.timedelta(days=2)) == (
        "certificate-not-trusted",
        "no trust anchors",
    )
    assert pkix.check([b"not DER"], store, MX, now) == ("validation-failure", "no certificate")
    assert pkix.trust_store([b"not DER"]) is None


def pem_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


# -- TLS-Required: No (rfc8689:3, 4.2.2): delivery over the policy, failures counted ----

OPTIONAL = b"TLS-Required: No\r\n" + MESSAGE


@pytest.mark.parametrize(
    ("mx", "result_type"),
    [
        ("expired", "certificate-expired"),
        ("misnamed", "certificate-host-mismatch"),
        ("untrusted", "certificate-not-trusted"),
        ("no-starttls", "starttls-not-supported"),
    ],
    indirect=["mx"],
)
def test_tls_required_no_is_delivered_despite_an_enforced_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost, result_type: str
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port, policy=POLICY_TEXT, message=OPTIONAL)
    assert [r.state for r in results] == ["sent"]
    assert mx.sink.messages == [OPTIONAL]
    # Opportunistic STARTTLS all the same, where the MX offers it.
    assert mx.sink.tls == [result_type != "starttls-not-supported"]
    # Still the failure it was, for the policy's owner to see.
    tally = only(pending, STS)
    assert (tally.successful, tally.failed) == (0, 1)
    [key] = tally.details
    assert key[:4] == (result_type, "127.0.0.1", MX, "127.0.0.1")
    # The delivery result carries the same outcome.
    assert results[0].tls[-1].result_type == result_type


@pytest.mark.parametrize("mx", ["good"], indirect=True)
def test_tls_required_no_uses_an_mx_outside_the_enforced_policy(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(
        loop, tmp_path, mx.port, policy=POLICY_TEXT, mx_name="mx.elsewhere.test", message=OPTIONAL
    )
    assert [r.state for r in results] == ["sent"]
    [key] = only(pending, STS).details
    assert (key[0], key[2], key[5]) == (
        "validation-failure",
        "mx.elsewhere.test",
        "MX host not in the MTA-STS policy",
    )


@pytest.mark.parametrize("mx", ["good"], indirect=True)
def test_tls_required_no_with_a_good_certificate_is_a_success(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    results, pending = deliver(loop, tmp_path, mx.port, policy=POLICY_TEXT, message=OPTIONAL)
    assert [r.state for r in results] == ["sent"]
    tally = only(pending, STS)
    assert (tally.successful, tally.failed) == (1, 0)


@pytest.mark.parametrize("mx", ["untrusted"], indirect=True)
def test_the_session_of_a_tls_report_is_not_counted(
    loop: asyncio.AbstractEventLoop, tmp_path: Path, mx: MXHost
) -> None:
    """rfc8460:5.3 — a report is delivered despite the TLS failure (it says
    TLS-Required: No) and its session stays out of the next report."""
    identity = Identity("Sender Org", "reports@sender.test", "mx.sender.test")
    report = build_report(identity, DAY, DOMAIN, [])
    message = build_message(identity, report, ["b@peer.test"], b"{}", NOW)
    results, pending = deliver(loop, tmp_path, mx.port, policy=POLICY_TEXT, message=message)
    assert [r.state for r in results] == ["sent"] and mx.sink.messages == [message]
    assert results[0].tls[-1].result_type == "certificate-not-trusted"  # seen, not counted
    assert pending == {}
    # The same failure in any other message is counted.
    results, pending = deliver(loop, tmp_path, mx.port, policy=POLICY_TEXT, message=OPTIONAL)
    assert (only(pending, STS).successful, only(pending, STS).failed) == (0, 1)
