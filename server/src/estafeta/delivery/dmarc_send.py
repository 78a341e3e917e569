"""DMARC aggregate reports we send (rfc7489:7.2; docs/dmarc-reports.md "Sending").

Once a UTC day is over, each policy domain whose mail our MX evaluated that
day (estafeta.reports.evaluations, recorded by delivery/dmarc_evaluations.py)
gets one report, ``ReportSender.run``:

1. the domain's DMARC record is looked up again, now, through the server's
   resolver: its *current* ``rua=`` decides where the report goes (a
   record gone or without rua=: the report is skipped; a DNS failure: it
   waits for the next run);
2. each ``mailto:`` URI (at most ``MAX_RUA``; other schemes are skipped)
   whose domain is not in the policy domain's organizational domain must
   be authorised by its owner (rfc7489:7.1): a TXT record starting
   ``v=DMARC1`` at ``<policy-domain>._report._dmarc.<destination>``, whose
   own ``rua=`` may name other addresses at that destination instead
   (step 8); a DNS failure of that check waits for the next run too. A
   report about one of our domains to an address in one of them is
   skipped unless ``[reports] dmarc_send_local``;
3. the report (estafeta.reports.aggregate) is a message of its own to each
   address, From and envelope sender ``[reports] from_address`` (so that
   bounces come back to us and are seen; RFC 7489 says nothing of the
   envelope), DKIM-signed with that domain's keys like every message we
   make (policy/signer.py), and put into the outbound queue; an address
   whose ``!size`` limit (rfc7489:6.4, units of 2**10) the signed message
   exceeds is skipped;
4. the (day, domain) is marked ``sent`` (or ``skipped``, with why) in the
   evaluations database.

Crash ordering: the mark is written after every message of the report is
in the queue (each enqueue is durable when it returns). A crash between
the two sends the report again at the next run: the same report id and
Message-IDs, so the domain owner's intake sees a duplicate (ours does:
reports/store.py). Nothing is lost and, short of that window, nothing is
sent twice: a marked day is never sent again, across restarts. The server's
daily job and ``estafeta dmarc send`` take a lock file
(``reports/dmarc-send.lock``) for a run, so they never send the same day
at once.

A day that could not be sent within ``STALE_DAYS`` (DNS down for a week,
the server off) is marked ``stale`` and left out: a report that late is
noise. Evaluations past ``[reports] retention`` are deleted by each run.

The server runs it daily after UTC midnight plus a random delay of up to
``SPREAD`` seconds, as large receivers do, so that not every reporter mails
a domain at midnight; once a few minutes after start (a restart after
midnight catches up); and again an hour after a run that had to leave a
report for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from estafeta import metrics
from estafeta.address import AddressError, normalize_address, normalize_domain, split_address
from estafeta.config_reports import ReportsConfig
from estafeta.delivery.dmarc_evaluations import Recorder
from estafeta.dns import DNSTempError, Resolver
from estafeta.log import log_event
from estafeta.policy import dmarc
from estafeta.policy.signer import Signer
from estafeta.queue.store import QueueBackend
from estafeta.reports import aggregate
from estafeta.reports.dmarc import DateRange, Report
from estafeta.reports.evaluations import DAY, Aggregate, EvaluationStore, State
from estafeta.reports.store import ReportStoreError

log = logging.getLogger("estafeta.delivery")

MAX_RUA = 5  # rfc7489:6.2 — receivers "MAY impose a limit" (at least two)
STALE_DAYS = 7
SPREAD = 3600.0  # seconds of random delay after UTC midnight
CATCH_UP = (60.0, 600.0)  # the run after the server starts, seconds
RETRY = 3600.0  # after a run that left reports for later
LOCK_WAIT = 60.0

SENT = Counter(
    "estafeta_dmarc_reports_sent_total",
    "DMARC aggregate reports we queued for others' rua= addresses (one per address).",
    registry=metrics.REGISTRY,
)
SKIPPED = Counter(
    "estafeta_dmarc_report_recipients_skipped_total",
    "rua= addresses a DMARC aggregate report of ours was not sent to, by reason (size: over "
    "its !size limit; external: not authorised by rfc7489 7.1; local: one of our "
    "domains; scheme: not mailto; invalid: no address; limit: more URIs than we send to).",
    ["reason"],
    registry=metrics.REGISTRY,
)

# rfc7489:6.4 dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ]
_MAILTO = re.compile(r"mailto:([^!]+)(?:!([0-9]+)([kmgt]?))?", re.IGNORECASE)
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
# The outcomes that mark a (day, domain) done, never to be sent again.
_DONE: dict[str, State] = {"sent": "sent", "skipped": "skipped", "stale": "stale"}


class SendBusy(Exception):
    """Another run holds the lock (the server's job, or the CLI)."""


@dataclass(frozen=True)
class Destination:
    """One ``mailto:`` rua URI."""

    uri: str
    address: str
    domain: str
    limit: int | None  # octets; None: no limit


def destination(uri: str) -> Destination | str:
    """The mailto: URI as a destination, or why not: "scheme" or "invalid"."""
    match = _MAILTO.fullmatch(uri.strip())
    if match is None:
        return "invalid" if uri.lower().startswith("mailto:") else "scheme"
    target, digits, unit = match.groups()
    # rfc6068:2 — hfields after "?" (subject=, body=) mean nothing for a report.
    target = urllib.parse.unquote(target.partition("?")[0])
    try:
        address = normalize_address(target)
    except AddressError:
        return "invalid"
    limit = None
    if digits is not None and len(digits) <= 15:  # more: larger than anything we send
        limit = int(digits) << _UNITS[unit.lower()]
    return Destination(uri, address, split_address(address)[1], limit)


@dataclass
class Outcome:
    """What one run did with one (day, policy domain)."""

    day: int
    domain: str
    state: str  # sent | skipped | stale | deferred | failed
    report_id: str = ""
    records: int = 0
    messages: int = 0
    recipients: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"uri", "reason", ...}
    error: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)  # aggregate.sources

    def to_json(self) -> dict[str, Any]:
        return {
            "day": aggregate.day_name(self.day),
            "begin": self.day,
            "end": self.day + DAY - 1,
            "domain": self.domain,
            "state": self.state,
            "report_id": self.report_id,
            "records": self.records,
            "messages": self.messages,
            "recipients": self.recipients,
            "skipped": self.skipped,
            "error": self.error,
            "sources": self.sources,
        }


@dataclass(frozen=True)
class Settings:
    hostname: str  # the receiver in file names; the report ids' right side
    org_name: str
    from_address: str
    contact_info: str
    local_domains: frozenset[str]
    send_local: bool
    retention: int  # seconds

    @classmethod
    def of(cls, hostname: str, domains: tuple[str, ...], reports: ReportsConfig) -> Settings:
        identity = reports.identity
        return cls(
            hostname=hostname,
            org_name=identity.org_name,
            from_address=identity.from_address,
            contact_info=identity.contact_info,
            local_domains=frozenset(domains),
            send_local=reports.dmarc_send_local,
            retention=reports.retention,
        )

    @property
    def submitter(self) -> str:
        """rfc7489:7.2.1.1 — Submitter: is a domain-name: org_name when it
        is one (the default, the hostname), else the hostname."""
        try:
            return normalize_domain(self.org_name)
        except (AddressError, ValueError):
            return self.hostname


class ReportSender:
    def __init__(
        self,
        *,
        store: EvaluationStore,
        queue: QueueBackend,
        signer: Signer,
        resolver: Resolver,
        settings: Settings,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.signer = signer
        self.resolver = resolver
        self.settings = settings
        self.wake = wake
        self.lock_path = store.path.with_name("dmarc-send.lock")

    async def run(self, now: float, *, dry_run: bool = False) -> list[Outcome]:
        """Send every complete UTC day (as of ``now``) not sent yet.

        ``dry_run``: look everything up and build the messages, but queue
        and mark nothing. Raises SendBusy, ReportStoreError."""
        if dry_run:
            return await self._run(now, dry_run=True)
        with await asyncio.to_thread(_lock, self.lock_path):
            outcomes = await self._run(now, dry_run=False)
            cutoff = aggregate.day_start(now - self.settings.retention)
            await asyncio.to_thread(self.store.prune, cutoff)
        return outcomes

    async def _run(self, now: float, *, dry_run: bool) -> list[Outcome]:
        due = await asyncio.to_thread(self.store.unsent, int(now))
        oldest = aggregate.day_start(now) - STALE_DAYS * DAY
        outcomes = []
        for day, domain in due:
            if day < oldest:
                report_id = aggregate.report_id(day, domain, self.settings.hostname)
                outcome = Outcome(day, domain, "stale", report_id)
            else:
                try:
                    outcome = await self._one(day, domain, now, dry_run)
                except Exception as exc:  # the queue or database failed, or a bug
                    if not isinstance(exc, (OSError, ReportStoreError)):
                        log.exception("dmarc report for %s failed", domain)
                    outcome = Outcome(day, domain, "failed", error=str(exc) or type(exc).__name__)
            done = _DONE.get(outcome.state)  # deferred and failed: next run
            if not dry_run and done is not None:
                detail = {"recipients": outcome.recipients, "skipped": outcome.skipped}
                await asyncio.to_thread(
                    self.store.mark, day, domain, done, outcome.report_id, now, detail
                )
                for skip in outcome.skipped:
                    SKIPPED.labels(skip["reason"]).inc()
            self._log(outcome, dry_run)
            outcomes.append(outcome)
        return outcomes

    async def _one(self, day: int, domain: str, now: float, dry_run: bool) -> Outcome:
        found = await asyncio.to_thread(self.store.aggregate, day, domain)
        if found is None:  # pruned since unsent() listed it (a dry run has no lock)
            return Outcome(day, domain, "deferred", error="its evaluations are gone")
        report = self._report(found)
        outcome = Outcome(
            day,
            domain,
            "skipped",
            report.report_id,
            records=len(report.records),
            messages=report.messages,
            sources=aggregate.sources(report),
        )
        try:
            rua = await self._current_rua(domain)
            if isinstance(rua, str):
                outcome.error = rua
                return outcome
            destinations: list[Destination] = []
            for uri in rua[:MAX_RUA]:
                destinations += await self._authorised(outcome, domain, uri)
        except DNSTempError as exc:
            return Outcome(day, domain, "deferred", report.report_id, error=str(exc))
        for uri in rua[MAX_RUA:]:
            self._skip(outcome, uri, "limit")
        for target in {d.address: d for d in destinations}.values():
            data = await self._message(report, target.address, now)
            if target.limit is not None and len(data) > target.limit:
                self._skip(outcome, target.uri, "size", size=len(data), limit=target.limit)
                continue
            if not dry_run:
                sender = self.settings.from_address
                await asyncio.to_thread(self.queue.enqueue, sender, [target.address], data)
                self.wake()
                SENT.inc()
            outcome.recipients.append(target.address)
        if outcome.recipients:
            outcome.state = "sent"
        elif not outcome.error:
            outcome.error = "no address to send it to"
        return outcome

    def _report(self, found: Aggregate) -> Report:
        settings = self.settings
        errors: tuple[str, ...] = ()
        if found.dropped:
            errors = (
                f"{found.dropped} messages left out: more distinct rows than"
                f" {len(found.records)} in one day",
            )
        return Report(
            org_name=settings.org_name,
            email=settings.from_address,
            report_id=aggregate.report_id(found.day, found.domain, settings.hostname),
            date_range=DateRange(found.day, found.day + DAY - 1),
            policy_published=found.policy,
            records=found.records,
            extra_contact_info=settings.contact_info or None,
            errors=errors,
            version=aggregate.VERSION,
        )

    async def _current_rua(self, domain: str) -> tuple[str, ...] | str:
        """The rua= URIs of the domain's DMARC record now, or why there are
        none. DNSTempError goes to the caller."""
        answer = await self.resolver.lookup(f"_dmarc.{domain}", "TXT")
        records = [str(txt) for txt in answer.records if dmarc.is_record(str(txt))]
        if len(records) != 1:
            # rfc7489:6.6.3 — none, or several: no DMARC policy to honour.
            return "no DMARC record now" if not records else "several DMARC records now"
        try:
            record = dmarc.parse_record(records[0])
        except dmarc.DMARCSyntaxError as exc:
            return f"DMARC record unusable now: {exc}"
        return record.rua or "no rua= in the DMARC record now"

    async def _authorised(self, outcome: Outcome, domain: str, uri: str) -> list[Destination]:
        """The destinations ``uri`` stands for: itself, those its rfc7489:7.1
        record names instead, or none (skipped, with the reason noted)."""
        target = destination(uri)
        if isinstance(target, str):
            self._skip(outcome, uri, target)
            return []
        local = self.settings.local_domains
        if target.domain in local and domain in local and not self.settings.send_local:
            self._skip(outcome, uri, "local")
            return []
        if dmarc.organizational_domain(target.domain) == dmarc.organizational_domain(domain):
            return [target]
        # rfc7489:7.1 steps 1-4: <policy domain>._report._dmarc.<destination host>;
        # a temporary failure defers the whole report, to try the test again
        # later (step 4's choice), rather than lose that address's copy.
        answer = await self.resolver.lookup(f"{domain}._report._dmarc.{target.domain}", "TXT")
        # Steps 5-7: at least one record starting v=DMARC1 authorises it.
        records = [str(txt) for txt in answer.records if dmarc.is_record(str(txt))]
        if not records:
            self._skip(outcome, uri, "external")
            return []
        # Step 8: its rua= may replace the URI, with the same destination host.
        instead = []
        for txt in records:
            with contextlib.suppress(dmarc.DMARCSyntaxError):
                for other in dmarc.parse_record(txt).rua:
                    found = destination(other)
                    if isinstance(found, Destination) and found.domain == target.domain:
                        instead.append(found)
        return instead or [target]

    async def _message(self, report: Report, recipient: str, now: float) -> bytes:
        settings = self.settings
        digest = hashlib.sha256(recipient.encode()).hexdigest()[:10]
        message = aggregate.report_message(
            report,
            sender=settings.from_address,
            recipient=recipient,
            submitter=settings.submitter,
            receiver=settings.hostname,
            message_id=f"{digest}.{report.report_id}",
            now=now,
        )
        from_domain = split_address(settings.from_address)[1]
        signature = await asyncio.to_thread(self.signer.sign, from_domain, message)
        if not signature:
            log_event(log, "dmarc_report_unsigned", logging.WARNING, domain=from_domain)
        return signature + message

    @staticmethod
    def _skip(outcome: Outcome, uri: str, reason: str, **detail: Any) -> None:
        outcome.skipped.append({"uri": uri, "reason": reason, **detail})

    @staticmethod
    def _log(outcome: Outcome, dry_run: bool) -> None:
        level = logging.WARNING if outcome.state in ("deferred", "failed") else logging.INFO
        log_event(
            log,
            "dmarc_aggregate",
            level,
            day=aggregate.day_name(outcome.day),
            domain=outcome.domain,
            result=outcome.state,
            report_id=outcome.report_id,
            records=outcome.records,
            messages=outcome.messages,
            to=outcome.recipients,
            skipped=[f"{s['uri']} ({s['reason']})" for s in outcome.skipped],
            **({"error": outcome.error} if outcome.error else {}),
            **({"dry_run": True} if dry_run else {}),
        )


@contextlib.contextmanager
def _held(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """flock(2) the lock file, waiting up to LOCK_WAIT seconds (call it in
    a thread); leaving the returned context releases it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return _held(fd)
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise SendBusy(f"{path}: another DMARC report run holds it") from None
        except BaseException:
            os.close(fd)
            raise
        time.sleep(0.5)


def next_run(now: float, spread: float) -> float:
    """The next daily run: the coming UTC midnight plus ``spread`` seconds."""
    return aggregate.day_start(now) + DAY + spread


class DmarcReports:
    """The server's part: the recorder for the MX, and the daily run."""

    def __init__(
        self,
        recorder: Recorder,
        sender: ReportSender,
        *,
        clock: Callable[[], float] = time.time,
        spread: Callable[[], float] = lambda: random.uniform(0, SPREAD),
        catch_up: Callable[[], float] = lambda: random.uniform(*CATCH_UP),
    ) -> None:
        self.recorder = recorder
        self.sender = sender
        self.clock = clock
        self.spread = spread
        self.catch_up = catch_up
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        *,
        hostname: str,
        domains: tuple[str, ...],
        reports: ReportsConfig,
        path: Path,
        queue: QueueBackend,
        signer: Signer,
        resolver: Resolver,
        wake: Callable[[], None],
        report_address: Callable[[str], bool],
    ) -> DmarcReports:
        store = EvaluationStore(path)
        sender = ReportSender(
            store=store,
            queue=queue,
            signer=signer,
            resolver=resolver,
            settings=Settings.of(hostname, domains, reports),
            wake=wake,
        )
        return cls(Recorder(store, report_address=report_address), sender)

    def start(self) -> None:
        self.recorder.start()
        self._task = asyncio.create_task(self._daily())

    async def stop(self) -> None:
        """A run in progress finishes (its reports are queued and marked)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.recorder.stop()

    async def _daily(self) -> None:
        wait = self.catch_up()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, wait))
                return  # stopped
            now = self.clock()
            wait = next_run(now, self.spread()) - now
            try:
                outcomes = await self.sender.run(now)
            except Exception as exc:  # SendBusy (the CLI runs), the database: later
                log_event(log, "dmarc_aggregate_failed", logging.ERROR, error=str(exc))
                wait = min(wait, RETRY)
                continue
            if any(o.state in ("deferred", "failed") for o in outcomes):
                wait = min(wait, RETRY)
