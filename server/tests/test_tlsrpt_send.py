"""Sending our daily TLS reports (estafeta.reports.tlsrpt_send): sessions
counted by the recorder go through the session database into the report
of rfc8460:4.4, sent to the rua of ``_smtp._tls`` as it is at send time:
a message in the format of rfc8460:5.3 (read back with ``email`` and our
own parser, its DKIM signature verified) or an HTTPS POST to a real TLS
server (rfc8460:5.4). A day goes out once; a domain without a valid
record gets nothing; DNS and HTTPS failures are tried again, until the
send window closes."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from conftest import free_port
from estafeta.dns import MockResolver
from estafeta.policy import dkim
from estafeta.policy.signer import Signer
from estafeta.queue.requiretls import tls_optional
from estafeta.queue.tlsrpt_post import PostError, post_report
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import FailureDetail, Policy, PolicyResult
from estafeta.reports.tlsrpt_recorder import MAX_DETAILS, SessionRecorder
from estafeta.reports.tlsrpt_send import (
    Identity,
    TLSReportRunner,
    TLSReportSender,
    build_report,
    report_id,
)
from estafeta.reports.tlsrpt_sessions import SessionStore

NOON = 1767268800.0  # 2026-01-01 12:00 UTC
NEXT_DAY = NOON + 86_400  # 2026-01-02 12:00
DAY = "2026-01-01"
START = 1767225600
PEER = "peer.test"
MX = "mx.peer.test"
STS = Policy("sts", PEER, ("version: STSv1", "mode: enforce", f"mx: {MX}", "max_age: 86400"), (MX,))
IDENTITY = Identity("Sender Org", "reports@sender.test", "mx.sender.test")
RUA = "tls-reports@peer.test"


@dataclass
class Queue:
    """The outbound queue as the sender sees it: what was enqueued."""

    entries: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    def enqueue(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        self.entries.append((sender, list(recipients), data))


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    result = Signer(tmp_path_factory.mktemp("dkim"))
    result.keygen("sender.test", "s1", "rsa")
    return result


def record_day(store: SessionStore, clock: float = NOON, domain: str = PEER) -> None:
    """A day of sessions with ``domain``: 3 good, 2 failed under its MTA-STS policy."""
    recorder = SessionRecorder(clock=lambda: clock)
    policy = Policy(STS.type, domain, STS.strings, STS.mx_hosts)
    for _ in range(3):
        recorder.success(policy, MX, "192.0.2.25")
    recorder.failure(
        policy,
        "certificate-expired",
        MX,
        "192.0.2.25",
        "X509_V_ERR_CERT_HAS_EXPIRED",
        sending_ip="198.51.100.1",
        helo=MX,
    )
    recorder.failure(policy, "starttls-not-supported", MX, "192.0.2.26", "STARTTLS not offered")
    store.add(recorder.drain())


def make_sender(
    tmp_path: Path,
    resolver: MockResolver,
    signer: Signer,
    queue: Queue,
    post: Any = None,
) -> TLSReportSender:
    return TLSReportSender(
        store=SessionStore(tmp_path / "tls-sessions.db"),
        resolver=resolver,
        identity=IDENTITY,
        enqueue=queue.enqueue,
        sign=signer.sign,
        post=post,
    )


def run(sender: TLSReportSender, now: float = NEXT_DAY, dry_run: bool = False) -> list[Any]:
    return asyncio.run(sender.run(now, dry_run=dry_run))


def rua_record(*uris: str) -> MockResolver:
    return MockResolver({(f"_smtp._tls.{PEER}", "TXT"): [f"v=TLSRPTv1; rua={','.join(uris)}"]})


def test_a_day_of_sessions_becomes_one_signed_report(tmp_path: Path, signer: Signer) -> None:
    queue = Queue()
    resolver = rua_record(f"mailto:{RUA}")
    sender = make_sender(tmp_path, resolver, signer, queue)
    record_day(sender.store)
    # The day is not over at noon: nothing yet.
    assert run(sender, NOON) == []
    (entry,) = run(sender)
    assert entry["result"] == "sent"
    assert (entry["day"], entry["domain"], entry["successful"], entry["failed"]) == (
        DAY,
        PEER,
        3,
        2,
    )
    assert entry["rua"] == [{"uri": f"mailto:{RUA}", "result": "queued", "signed": True}]
    ((envelope_from, recipients, data),) = queue.entries
    assert (envelope_from, recipients) == ("reports@sender.test", [RUA])

    # rfc8460:5.3, read with the standard library.
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    rid = report_id(DAY, PEER, "sender.test")
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "tlsrpt"
    assert parsed["TLS-Report-Domain"] == PEER
    assert parsed["TLS-Report-Submitter"] == "sender.test"
    # rfc8460:5.3 — delivered despite TLS failures: our queue reads this too.
    assert parsed["TLS-Required"] == "No" and tls_optional(data)
    assert " ".join(str(parsed["Subject"]).split()) == (
        f"Report Domain: {PEER} Submitter: sender.test Report-ID: <{rid}>"
    )
    assert parsed["From"].addresses[0].addr_spec == "reports@sender.test"
    text, report_part = parsed.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert report_part.get_content_type() == "application/tlsrpt+gzip"
    # rfc8460:5.1 sender!policy-domain!begin!end.json.gz
    assert report_part.get_filename() == f"sender.test!{PEER}!{START}!{START + 86_399}.json.gz"
    report = tlsrpt.parse_report(report_part.get_content())
    assert report == tlsrpt.parse_message(data)
    assert (report.org_name, report.contact_info, report.report_id) == (
        "Sender Org",
        "reports@sender.test",
        rid,
    )
    assert (report.start, report.end) == (START, START + 86_399)
    (result,) = report.policies
    assert result.policy == STS
    assert (result.successful, result.failed) == (3, 2)
    assert set(result.details) == {
        FailureDetail(
            "certificate-expired",
            1,
            "198.51.100.1",
            MX,
            MX,
            "192.0.2.25",
            reason_code="X509_V_ERR_CERT_HAS_EXPIRED",
        ),
        FailureDetail(
            "starttls-not-supported",
            1,
            receiving_mx=MX,
            receiving_ip="192.0.2.26",
            reason_code="STARTTLS not offered",
        ),
    }

    # rfc8460:5.3 — DKIM-signed by the submitter, the report's fields signed too.
    key = signer.keys_for("sender.test")[0]
    verifier = MockResolver({("s1._domainkey.sender.test", "TXT"): [dkim.txt_record(key)]})
    (verdict,) = asyncio.run(dkim.verify(verifier, data))
    assert (verdict.result, verdict.domain) == ("pass", "sender.test")
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    signed = "".join(header.split("h=", 1)[1].split(";", 1)[0].split())
    assert {"tls-report-domain", "tls-report-submitter", "subject"} <= set(
        signed.lower().split(":")
    )


def test_a_day_is_sent_once(tmp_path: Path, signer: Signer) -> None:
    queue = Queue()
    sender = make_sender(tmp_path, rua_record(f"mailto:{RUA}"), signer, queue)
    record_day(sender.store)
    assert [e["result"] for e in run(sender)] == ["sent"]
    assert run(sender) == []
    assert run(sender, NEXT_DAY + 3600) == []
    # More sessions of that day counted late do not send it again.
    record_day(sender.store)
    assert run(sender) == []
    assert len(queue.entries) == 1
    assert sender.store.outcome(DAY, PEER) == "sent"


def test_a_crash_between_queue_and_mark_resends_the_same_report(
    tmp_path: Path, signer: Signer
) -> None:
    queue = Queue()
    sender = make_sender(tmp_path, rua_record(f"mailto:{RUA}"), signer, queue)
    record_day(sender.store)

    def crash(*args: Any) -> bool:
        raise RuntimeError("power cut")

    real_mark = sender.store.mark
    sender.store.mark = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        run(sender)
    sender.store.mark = real_mark  # type: ignore[method-assign]
    (entry,) = run(sender)
    assert entry["result"] == "sent"
    first, second = (tlsrpt.parse_message(data) for _, _, data in queue.entries)
    # The same Report-ID: the receiver may drop the second (rfc8460:5.3).
    assert first.report_id == second.report_id


@pytest.mark.parametrize(
    "records",
    [
        [],
        ["v=spf1 -all"],
        ["v=TLSRPTv1; rua=mailto:a@peer.test", "v=TLSRPTv1; rua=mailto:b@peer.test"],
        ["v=TLSRPTv1 rua=mailto:a@peer.test"],
    ],
    ids=["none", "other", "two", "invalid"],
)
def test_no_valid_record_no_report(tmp_path: Path, signer: Signer, records: list[str]) -> None:
    queue = Queue()
    resolver = MockResolver({(f"_smtp._tls.{PEER}", "TXT"): records} if records else {})
    sender = make_sender(tmp_path, resolver, signer, queue)
    record_day(sender.store)
    assert [e["result"] for e in run(sender)] == ["no-record"]
    assert queue.entries == []
    assert run(sender) == []  # asked once, at send time


def dns_failing(tmp_path: Path, signer: Signer) -> tuple[TLSReportSender, MockResolver, Queue]:
    """A day recorded; the lookup of the peer's _smtp._tls fails for now."""
    queue = Queue()
    resolver = rua_record(f"mailto:{RUA}")
    resolver.temperror.add(f"_smtp._tls.{PEER}")
    sender = make_sender(tmp_path, resolver, signer, queue)
    record_day(sender.store)
    return sender, resolver, queue


def test_a_dns_failure_is_tried_again(tmp_path: Path, signer: Signer) -> None:
    sender, resolver, _ = dns_failing(tmp_path, signer)
    (entry,) = run(sender)
    assert entry["result"] == "deferred" and "simulated timeout" in entry["error"]
    resolver.temperror.clear()
    assert [e["result"] for e in run(sender)] == ["sent"]


def test_the_send_window_closes(tmp_path: Path, signer: Signer) -> None:
    sender, resolver, queue = dns_failing(tmp_path, signer)
    assert [e["result"] for e in run(sender, NOON + 3 * 86_400)] == ["deferred"]
    # Four days on, the day is out of the window: marked expired, never sent.
    resolver.temperror.clear()
    assert run(sender, NOON + 4 * 86_400) == []
    assert sender.store.outcome(DAY, PEER) == "expired"
    assert queue.entries == []


def test_dry_run_sends_and_marks_nothing(tmp_path: Path, signer: Signer) -> None:
    queue = Queue()
    sender = make_sender(
        tmp_path, rua_record(f"mailto:{RUA}", "https://r.peer.test/tls"), signer, queue
    )
    record_day(sender.store)
    (entry,) = run(sender, dry_run=True)
    assert entry["result"] == "would-send"
    assert {r["result"] for r in entry["rua"]} == {"unsupported", "would-queue"}
    assert queue.entries == [] and sender.store.outcome(DAY, PEER) is None
    assert [e["result"] for e in run(sender)] == ["sent"]


def test_each_domain_its_own_report(tmp_path: Path, signer: Signer) -> None:
    queue = Queue()
    resolver = rua_record(f"mailto:{RUA}")
    resolver.add("_smtp._tls.other.test", "TXT", "v=TLSRPTv1; rua=mailto:tls@other.test")
    sender = make_sender(tmp_path, resolver, signer, queue)
    record_day(sender.store)
    record_day(sender.store, domain="other.test")
    assert sorted((e["domain"], e["result"]) for e in run(sender)) == [
        ("other.test", "sent"),
        (PEER, "sent"),
    ]
    assert sorted(r[0] for _, r, _ in queue.entries) == ["tls-reports@peer.test", "tls@other.test"]


def test_the_session_database_bounds_details(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.db")
    policy = Policy("no-policy-found", PEER)
    for batch in range(3):
        recorder = SessionRecorder(clock=lambda: NOON)
        for i in range(MAX_DETAILS):
            recorder.failure(policy, "validation-failure", f"mx{batch}-{i}.peer.test")
        store.add(recorder.drain())
    (result,) = store.policies(DAY, PEER)
    assert result.failed == 3 * MAX_DETAILS
    assert len(result.details) == MAX_DETAILS + 1
    assert sum(d.count for d in result.details) == 3 * MAX_DETAILS
    (collapsed,) = [d for d in result.details if not d.receiving_mx]
    assert collapsed.count == 2 * MAX_DETAILS


# -- HTTPS (rfc8460:5.4) ---------------------------------------------------------------


class ReportServer(ThreadingHTTPServer):
    daemon_threads = False

    def __init__(self, context: ssl.SSLContext, status: int) -> None:
        super().__init__(("127.0.0.1", free_port()), ReportHandler)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.status = status
        self.posts: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()


class ReportHandler(BaseHTTPRequestHandler):
    server: ReportServer
    timeout = 10

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.posts.append((self.path, self.headers["Content-Type"], body))
        self.send_response(self.server.status)
        if 300 <= self.server.status < 400:
            self.send_header("Location", "https://elsewhere.test/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class HTTPS:
    server: ReportServer
    client: ssl.SSLContext
    url: str


@pytest.fixture
def https(request: pytest.FixtureRequest) -> Iterator[HTTPS]:
    """``request.param``: the HTTP status the report server answers."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("reports.peer.test").configure_cert(context)
    server = ReportServer(context, request.param)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        yield HTTPS(server, client, f"https://reports.peer.test:{server.server_port}/v1/tls?x=1")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def poster(https: HTTPS) -> Any:
    resolver = MockResolver({("reports.peer.test", "A"): ["127.0.0.1"]})

    async def post(url: str, body: bytes) -> None:
        await post_report(url, body, resolver=resolver, ssl_context=https.client, timeout=10)

    return post


@pytest.mark.parametrize("https", [200], indirect=True)
def test_a_report_is_posted_over_https(tmp_path: Path, signer: Signer, https: HTTPS) -> None:
    queue = Queue()
    sender = make_sender(tmp_path, rua_record(https.url), signer, queue, poster(https))
    record_day(sender.store)
    (entry,) = run(sender)
    assert entry["result"] == "sent"
    assert entry["rua"] == [{"uri": https.url, "result": "posted"}]
    ((path, content_type, body),) = https.server.posts
    assert (path, content_type) == ("/v1/tls?x=1", "application/tlsrpt+gzip")
    report = tlsrpt.parse_report(body)
    assert report.policies[0].policy == STS and report.successful == 3
    assert queue.entries == []


@pytest.mark.parametrize("https", [500, 302], indirect=True)
def test_a_refused_post_is_tried_again(tmp_path: Path, signer: Signer, https: HTTPS) -> None:
    queue = Queue()
    sender = make_sender(tmp_path, rua_record(https.url), signer, queue, poster(https))
    record_day(sender.store)
    (entry,) = run(sender)
    assert entry["result"] == "deferred"
    assert f"HTTP status {https.server.status}" in entry["rua"][0]["error"]
    # rfc8460:5.4 — no redirect is followed.
    assert len(https.server.posts) == 1
    https.server.status = 201
    assert [e["result"] for e in run(sender)] == ["sent"]


@pytest.mark.parametrize("https", [200], indirect=True)
def test_the_post_needs_a_trusted_certificate(https: HTTPS) -> None:
    resolver = MockResolver({("reports.peer.test", "A"): ["127.0.0.1"]})
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(post_report(https.url, b"x", resolver=resolver, timeout=10))
    with pytest.raises(PostError):
        asyncio.run(post_report("http://reports.peer.test/", b"x", resolver=resolver))
    assert https.server.posts == []


def test_mailto_and_https_together_one_accepting_is_enough(tmp_path: Path, signer: Signer) -> None:
    queue = Queue()

    async def failing(url: str, body: bytes) -> None:
        raise OSError("connection refused")

    sender = make_sender(
        tmp_path, rua_record(f"mailto:{RUA}", "https://r.peer.test/"), signer, queue, failing
    )
    record_day(sender.store)
    (entry,) = run(sender)
    assert entry["result"] == "sent"
    assert {r["result"] for r in entry["rua"]} == {"queued", "failed"}


def test_contact_info_is_the_shared_one_else_the_from_address() -> None:
    # rfc8460:4.4 contact-info; [reports] contact_info, as in DMARC reports.
    policies = [PolicyResult(STS, 1, 0)]
    assert build_report(IDENTITY, DAY, PEER, policies).contact_info == "reports@sender.test"
    url = "https://sender.test/postmaster"
    ours = replace(IDENTITY, contact_info=url)
    assert build_report(ours, DAY, PEER, policies).contact_info == url


def test_the_report_id_is_stable() -> None:
    assert report_id(DAY, PEER, "sender.test") == report_id(DAY, PEER, "sender.test")
    assert report_id(DAY, PEER, "sender.test") != report_id("2026-01-02", PEER, "sender.test")
    assert report_id(DAY, PEER, "sender.test").endswith("@sender.test")
    assert PolicyResult(STS, 1, 0).failed == 0


# -- the server's part -----------------------------------------------------------------


def test_the_runner_writes_counts_and_keeps_them_when_the_database_fails(
    tmp_path: Path, signer: Signer
) -> None:
    (tmp_path / "blocked").write_text("a file where the directory should be")
    recorder = SessionRecorder(clock=lambda: NOON)
    broken = SessionStore(tmp_path / "blocked" / "s.db")
    queue = Queue()
    sender = make_sender(tmp_path, rua_record(f"mailto:{RUA}"), signer, queue)
    runner = TLSReportRunner(recorder, broken, sender)
    recorder.success(STS, MX, "192.0.2.25")
    asyncio.run(runner.flush())  # the database fails: the counts stay in memory
    recorder.success(STS, MX, "192.0.2.25")
    runner.store = sender.store
    asyncio.run(runner.flush())
    (result,) = sender.store.policies(DAY, PEER)
    assert result.successful == 2


def test_the_runner_sends_after_start_and_flushes_at_stop(tmp_path: Path, signer: Signer) -> None:
    queue = Queue()
    sender = make_sender(tmp_path, rua_record(f"mailto:{RUA}"), signer, queue)
    sender.clock = lambda: NEXT_DAY
    recorder = SessionRecorder(clock=lambda: NOON)
    runner = TLSReportRunner(
        recorder, sender.store, sender, clock=lambda: NEXT_DAY, first_run=lambda: 0.0
    )
    woken: list[int] = []
    sender.wake = lambda: woken.append(1)

    async def scenario() -> None:
        recorder.success(STS, MX, "192.0.2.25")  # counted yesterday, not yet written
        runner.start()
        for _ in range(200):
            if queue.entries:
                break
            await asyncio.sleep(0.01)
        recorder.failure(STS, "certificate-expired", MX, "192.0.2.25")
        await runner.stop()

    asyncio.run(scenario())
    # The first run wrote the counts, then sent the day; the queue was woken.
    (data,) = [entry[2] for entry in queue.entries]
    assert tlsrpt.parse_message(data).successful == 1 and woken == [1]
    # The stop wrote what came after (the day is reported already: not again).
    (result,) = sender.store.policies(DAY, PEER)
    assert (result.successful, result.failed) == (1, 1)
