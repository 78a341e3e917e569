"""Sending our daily TLS reports (rfc8460:3, 4 and 5; docs/tls-reports.md).

For each complete UTC day and each policy domain we had sessions with
(estafeta.reports.tlsrpt_sessions ``pending``), ``TLSReportSender.run``:

1. looks up ``_smtp._tls.<domain>`` TXT *now* (rfc8460:3): no valid record
   (none, several, a syntax error) marks the day ``no-record``, nothing is
   sent; a DNS failure leaves it for the next run;
2. writes the report of rfc8460:4.4 (organization-name ``[reports]
   org_name``, contact-info ``contact_info`` or else ``from_address``, the day 00:00:00 to
   23:59:59 UTC, one ``policies`` entry per policy applied that day), as
   JSON, gzip'd (rfc8460:5.2);
3. delivers it to each ``rua`` URI it can use: ``mailto:`` as one message
   (rfc8460:5.3: ``multipart/report; report-type="tlsrpt"``, a text part
   and the ``application/tlsrpt+gzip`` part named as rfc8460:5.1 says, the
   ``TLS-Report-Domain`` and ``TLS-Report-Submitter`` fields, the Subject
   of rfc8460:5.3), DKIM-signed by the ``from_address`` domain, which is
   the submitter, and put in the outbound queue (which retries); ``https:``
   POSTed (rfc8460:5.4) when a poster is given;
4. marks the day: ``sent`` once one URI took it (rfc8460:3: delivered to
   one is delivered), ``unsupported`` when no URI was usable. An HTTPS
   failure with nothing else accepted leaves the day for the next run,
   until ``SEND_WINDOW_DAYS`` after the day (rfc8460:5.5 asks retries for
   24 hours), then it is ``expired``.

The report id is derived from (day, domain, submitter), so a report sent
twice (a crash between the queue and the mark) carries the same id, and
the receiver may drop the second (rfc8460:5.3 Report-ID).

``TLSReportRunner`` is the server's part: it drains the session recorder
into the database every ``FLUSH_INTERVAL`` seconds and at stop, and runs
the sender shortly after start and daily after UTC midnight plus a random
delay (rfc8460:4.1: "after some delay, perhaps several hours").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import format_datetime, formataddr
from typing import Any

from estafeta.address import split_address
from estafeta.dns import DNSTempError, Resolver
from estafeta.log import log_event
from estafeta.reports import tlsrpt, tlsrpt_record
from estafeta.reports.tlsrpt import PolicyResult, Report
from estafeta.reports.tlsrpt_recorder import FLUSH_INTERVAL, SessionRecorder, utc_day
from estafeta.reports.tlsrpt_sessions import Outcome, SessionStore, SessionStoreError

log = logging.getLogger("estafeta.tlsrpt")

DAY = 86_400
FIRST_RUN = (60.0, 600.0)  # seconds after start
DAILY_SPREAD = (15 * 60.0, 3 * 3600.0)  # seconds after 00:00 UTC

# (envelope sender, recipients, message) into the outbound queue; blocking.
Enqueue = Callable[[str, Sequence[str], bytes], None]
# (domain, message) -> DKIM-Signature fields, b"" without a key; blocking.
Sign = Callable[[str, bytes], bytes]
# (https URL, gzip'd report) -> None once the server answered 2xx; raises.
Post = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True)
class Identity:
    """Who sends our reports: ``[reports] org_name``, ``from_address`` and
    ``contact_info`` (the identity the DMARC reports have too)."""

    org_name: str
    from_address: str
    hostname: str
    contact_info: str = ""  # "" : from_address

    @property
    def submitter(self) -> str:
        """rfc8460:5.3 TLS-Report-Submitter: the domain that signs the report."""
        return split_address(self.from_address)[1]


def report_id(day: str, domain: str, submitter: str) -> str:
    """``<day>.<hash>@<submitter>``: a Report-ID (rfc8460:5.3, an rfc5322
    msg-id without the brackets), the same for the same report."""
    digest = hashlib.sha256(f"{day}\0{domain}\0{submitter}".encode()).hexdigest()[:20]
    return f"{day.replace('-', '')}.{digest}@{submitter}"


def day_start(day: str) -> int:
    moment = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def build_report(
    identity: Identity, day: str, domain: str, policies: Sequence[PolicyResult]
) -> Report:
    """rfc8460:4.4 — the report of ``day`` (rfc8460:4.1: one UTC day) about ``domain``."""
    start = day_start(day)
    return Report(
        org_name=identity.org_name,
        start=start,
        end=start + DAY - 1,
        # rfc8460:4.4 contact-info: "Contact information for the party
        # responsible for the report".
        contact_info=identity.contact_info or identity.from_address,
        report_id=report_id(day, domain, identity.submitter),
        policies=tuple(policies),
    )


def build_message(
    identity: Identity, report: Report, recipients: Sequence[str], compressed: bytes, now: float
) -> bytes:
    """rfc8460:5.3 — the report as a message (unsigned; CRLF line ends)."""
    domain = report.domains[0] if report.domains else ""
    submitter = identity.submitter
    name = tlsrpt.filename(submitter, domain, report.start, report.end)
    boundary = f"=_estafeta_tlsrpt_{secrets.token_hex(12)}"
    day = datetime.datetime.fromtimestamp(report.start, datetime.UTC).strftime("%Y-%m-%d")
    text = (
        f"This is an aggregate TLS report (RFC 8460) from {submitter} about {domain},\r\n"
        f"for {day} (UTC): {report.successful} successful and {report.failed} failed"
        " sessions.\r\n"
    )
    encoded = base64.encodebytes(compressed).replace(b"\n", b"\r\n")
    organisation = " ".join(identity.org_name.split())  # rfc2047-encoded if not ASCII
    headers = [
        f"From: {formataddr((organisation, identity.from_address))}",
        f"To: {', '.join(f'<{r}>' for r in recipients)}",
        # rfc8460:5.3 tlsrpt-subject
        f"Subject: Report Domain: {domain}\r\n Submitter: {submitter}\r\n"
        f" Report-ID: <{report.report_id}>",
        f"Date: {format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))}",
        f"Message-ID: <{secrets.token_hex(12)}@{identity.hostname}>",
        f"TLS-Report-Domain: {domain}",
        f"TLS-Report-Submitter: {submitter}",
        "Auto-Submitted: auto-generated",  # rfc3834:5
        # rfc8460:5.3 — a report is delivered despite TLS failures: the
        # relaying MTAs (our queue first) do not let MTA-STS or DANE stop it
        # (rfc8689:3, 4.2.2; estafeta.queue.requiretls).
        "TLS-Required: No",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt";\r\n boundary="{boundary}"',
    ]
    return (
        "\r\n".join(headers).encode("utf-8")
        + b"\r\n\r\nThis is a multipart message in MIME format.\r\n"
        + f"\r\n--{boundary}\r\n".encode()
        + b'Content-Type: text/plain; charset="us-ascii"\r\n'
        + b"Content-Transfer-Encoding: 7bit\r\n\r\n"
        + text.encode("ascii", "replace")
        + f"\r\n--{boundary}\r\n".encode()
        + f"Content-Type: {tlsrpt.GZIP_TYPE}\r\n".encode()
        + b"Content-Transfer-Encoding: base64\r\n"
        + f'Content-Disposition: attachment;\r\n filename="{name}"\r\n\r\n'.encode()
        + encoded
        + f"\r\n--{boundary}--\r\n".encode()
    )


class TLSReportSender:
    def __init__(
        self,
        *,
        store: SessionStore,
        resolver: Resolver,
        identity: Identity,
        enqueue: Enqueue,
        sign: Sign,
        post: Post | None = None,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.identity = identity
        self.enqueue = enqueue
        self.sign = sign
        self.post = post
        self.wake = wake  # the queue runner, in the event loop, after an enqueue
        self.clock = clock

    async def run(self, now: float | None = None, dry_run: bool = False) -> list[dict[str, Any]]:
        """Report every complete day not reported yet; one entry per (day,
        domain): "day", "domain", "result" (sent, no-record, unsupported,
        deferred, would-send), "report_id", "successful", "failed", "rua"
        ([{"uri", "result", "error"}]), "error". SessionStoreError when the
        database fails."""
        now = self.clock() if now is None else now
        today = utc_day(now)
        if not dry_run:
            expired = await asyncio.to_thread(self.store.expire, today, now)
            if expired:
                log_event(log, "tlsrpt_expired", logging.WARNING, reports=expired)
        pending = await asyncio.to_thread(self.store.pending, today)
        return [await self._one(day, domain, now, dry_run) for day, domain in pending]

    async def _one(self, day: str, domain: str, now: float, dry_run: bool) -> dict[str, Any]:
        policies = await asyncio.to_thread(self.store.policies, day, domain)
        report = build_report(self.identity, day, domain, policies)
        entry: dict[str, Any] = {
            "day": day,
            "domain": domain,
            "report_id": report.report_id,
            "successful": report.successful,
            "failed": report.failed,
            "rua": [],
        }
        try:
            answer = await self.resolver.lookup(f"_smtp._tls.{domain}", "TXT")
        except DNSTempError as exc:
            return self._done(entry, "deferred", error=f"_smtp._tls.{domain}: {exc}")
        ruas = tlsrpt_record.select_record(answer.records)
        if ruas is None:
            # rfc8460:3 — no (single, valid) record: the domain wants no reports.
            return await self._mark(entry, "no-record", now, dry_run)
        compressed = tlsrpt.compress(tlsrpt.report_json(report))
        mailto: list[str] = []
        for uri in ruas:
            addresses = tlsrpt_record.mailto_addresses(uri)
            if addresses:
                mailto.extend(a for a in addresses if a not in mailto)
                continue
            url = tlsrpt_record.https_url(uri)
            if url is None or self.post is None:
                entry["rua"].append({"uri": uri, "result": "unsupported"})
            elif dry_run:
                entry["rua"].append({"uri": uri, "result": "would-post"})
            else:
                entry["rua"].append(await self._post(url, compressed))
        if mailto:
            entry["rua"].append(await self._mail(report, mailto, compressed, now, dry_run))
        results = {r["result"] for r in entry["rua"]}
        if dry_run:
            return self._done(entry, "would-send" if results - {"unsupported"} else "unsupported")
        if results & {"queued", "posted"}:
            return await self._mark(entry, "sent", now, dry_run)
        if "failed" in results:
            return self._done(entry, "deferred")  # rfc8460:5.5: again at the next run
        return await self._mark(entry, "unsupported", now, dry_run)

    async def _mail(
        self, report: Report, recipients: list[str], compressed: bytes, now: float, dry_run: bool
    ) -> dict[str, Any]:
        uri = "mailto:" + ",".join(recipients)
        if dry_run:
            return {"uri": uri, "result": "would-queue"}
        message = build_message(self.identity, report, recipients, compressed, now)
        signature = await asyncio.to_thread(self.sign, self.identity.submitter, message)
        if not signature:
            # rfc8460:5.3 — receivers MUST ignore an unsigned report.
            log_event(
                log,
                "tlsrpt_unsigned",
                logging.WARNING,
                domain=self.identity.submitter,
                hint="estafeta dkim keygen: reports without a DKIM signature are ignored",
            )
        await asyncio.to_thread(
            self.enqueue, self.identity.from_address, recipients, signature + message
        )
        self.wake()
        return {"uri": uri, "result": "queued", "signed": bool(signature)}

    async def _post(self, url: str, compressed: bytes) -> dict[str, Any]:
        assert self.post is not None
        try:
            await self.post(url, compressed)
        except Exception as exc:  # the network's or the server's: next run
            return {"uri": url, "result": "failed", "error": str(exc)[:200] or type(exc).__name__}
        return {"uri": url, "result": "posted"}

    async def _mark(
        self, entry: dict[str, Any], result: Outcome, now: float, dry_run: bool
    ) -> dict[str, Any]:
        if dry_run:
            return self._done(entry, result)
        marked = await asyncio.to_thread(
            self.store.mark, entry["day"], entry["domain"], result, entry["report_id"], now
        )
        return self._done(entry, result if marked else "already-marked")

    @staticmethod
    def _done(entry: dict[str, Any], result: str, error: str = "") -> dict[str, Any]:
        entry["result"] = result
        if error:
            entry["error"] = error
        log_event(
            log,
            "tlsrpt_send",
            logging.WARNING if result == "deferred" else logging.INFO,
            day=entry["day"],
            domain=entry["domain"],
            result=result,
            report_id=entry["report_id"],
            successful=entry["successful"],
            failed=entry["failed"],
            rua=[f"{r['uri']}={r['result']}" for r in entry["rua"]],
            **({"error": error} if error else {}),
        )
        return entry


class TLSReportRunner:
    """The server's part (see the module docstring): ``start`` in the
    server's loop, ``stop`` before the server exits."""

    def __init__(
        self,
        recorder: SessionRecorder,
        store: SessionStore,
        sender: TLSReportSender,
        *,
        clock: Callable[[], float] = time.time,
        first_run: Callable[[], float] = lambda: random.uniform(*FIRST_RUN),
        spread: Callable[[], float] = lambda: random.uniform(*DAILY_SPREAD),
    ) -> None:
        self.recorder = recorder
        self.store = store
        self.sender = sender
        self.clock = clock
        self.first_run = first_run
        self.spread = spread
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._current: asyncio.Future[list[dict[str, Any]]] | None = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flushing()),
            asyncio.create_task(self._daily()),
        ]

    async def stop(self) -> None:
        """Stop the loops; a send in progress finishes (it may be enqueuing)."""
        current = self._current
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if current is not None:
            with contextlib.suppress(Exception):
                await current
        await self.flush()

    async def flush(self) -> None:
        """The recorder's counts into the database; kept for the next try
        if the database fails."""
        async with self._lock:
            if self.recorder.dropped:
                dropped, self.recorder.dropped = self.recorder.dropped, 0
                log_event(log, "tlsrpt_sessions_dropped", logging.WARNING, sessions=dropped)
            pending = self.recorder.drain()
            if not pending:
                return
            try:
                await asyncio.to_thread(self.store.add, pending)
            except SessionStoreError as exc:
                self.recorder.restore(pending)
                log_event(log, "tlsrpt_flush_failed", logging.ERROR, error=str(exc))

    async def run_now(self) -> list[dict[str, Any]]:
        await self.flush()
        return await self.sender.run()

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def _daily(self) -> None:
        delay = self.first_run()
        while True:
            await asyncio.sleep(delay)
            self._current = asyncio.ensure_future(self.run_now())
            try:
                await asyncio.shield(self._current)
            except Exception as exc:  # SessionStoreError, a bug: try again tomorrow
                log.exception("tlsrpt send failed")
                log_event(log, "tlsrpt_send_failed", logging.ERROR, error=str(exc))
            finally:
                self._current = None
            now = self.clock()
            midnight = (int(now) // DAY + 1) * DAY
            delay = max(0.0, midnight + self.spread() - now)
