"""The MX's DMARC evaluations, recorded for the aggregate reports we send
(rfc7489:7.2; docs/dmarc-reports.md "Sending").

``evaluation(analysis, ...)`` turns the verdict of policy/analyze.py into
one report row (estafeta.reports.evaluations.Evaluation), or None when
there is nothing to report: no DMARC record (result none), a record we
could not use or fetch (permerror, temperror: no policy to report
against), or a record without ``rua=`` (nobody asked for reports; mox
does the same). The SMTP session (smtp/inbound.py) hands each message's
analysis to the ``Recorder`` once its fate is final: delivered, or refused
with a 5xx (DMARC reject among them). A 4xx is not recorded: the client
tries again, and that try is.

Not recorded either: a message whose every recipient is one of our report
addresses (``[reports] dmarc_address``). Those are reports about other
mail; reporting them back would start a daily exchange of reports about
reports between two servers that both send them.

Recording never holds up or fails a delivery: ``Recorder.record`` only
appends to a bounded list in memory (``MAX_PENDING``; beyond it the
evaluation is dropped and counted as ``busy``); a task writes what is
there in batches, in a worker thread, one transaction per batch. A
database error drops the batch (logged, counted as ``error``); the mail
goes on. At server stop the list is written out; a crash loses what was
not written yet (at most the last batch's worth of counts).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import Counter

from estafeta import metrics
from estafeta.log import log_event
from estafeta.policy.analyze import Analysis
from estafeta.policy.dmarc import aligned
from estafeta.reports.aggregate import day_start
from estafeta.reports.dmarc import (
    DKIM_RESULTS,
    AuthResults,
    DkimAuth,
    PolicyEvaluated,
    PolicyOverride,
    PolicyPublished,
    Record,
    SpfAuth,
)
from estafeta.reports.evaluations import Evaluation, EvaluationStore

log = logging.getLogger("estafeta.delivery")

MAX_PENDING = 10_000  # evaluations waiting to be written
BATCH = 1_000  # evaluations per transaction
STOP_GRACE = 10.0  # seconds the server's stop waits for the last batches

RECORDED = Counter(
    "estafeta_dmarc_evaluations_recorded_total",
    "DMARC evaluations of the MX added to the aggregate reports we send ([reports] dmarc_send).",
    registry=metrics.REGISTRY,
)
DROPPED = Counter(
    "estafeta_dmarc_evaluations_dropped_total",
    "DMARC evaluations not recorded for the reports we send, by reason (rows: the day's rows "
    "of that domain are full; domains: the day's domains are full; late: the day was sent "
    "already; busy: too many waiting to be written; error: the database failed).",
    ["reason"],
    registry=metrics.REGISTRY,
)


def _ip(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)  # an IPv4 client on a dual-stack socket
    return str(address)


def _name(text: str) -> str | None:
    """A domain as the report parser takes it (no white space, 253 octets),
    lower case, or None."""
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > 253 or any(c.isspace() for c in name) or not name.isprintable():
        return None
    return name


def evaluation(analysis: Analysis, *, ip: str, mail_from: str, now: float) -> Evaluation | None:
    """The report row of one message (rfc7489:C RecordType), or None."""
    result = analysis.dmarc
    if result is None or result.record is None or result.result not in ("pass", "fail"):
        return None
    record = result.record
    source_ip = _ip(ip)
    if not record.rua or not result.policy_domain or source_ip is None:
        return None
    header_from = result.from_domain
    spf = analysis.spf
    # rfc7489:6.6.2 — both results, for the report, though one pass is enough.
    spf_aligned = str(spf.result) == "pass" and aligned(spf.domain, header_from, record.aspf)
    dkim_aligned = any(
        d.result == "pass" and aligned(d.domain, header_from, record.adkim) for d in analysis.dkim
    )
    disposition = "reject" if analysis.reject else "quarantine" if analysis.junk else "none"
    reasons: list[PolicyOverride] = []
    if result.result == "fail" and result.sampled_out:
        reasons.append(PolicyOverride("sampled_out", f"pct={record.pct}"))
    if result.result == "fail" and result.policy == "reject" and disposition != "reject":
        # rfc7489:10.1 local exceptions: a valid ARC chain (analyze.py), or
        # [inbound] dmarc_reject = false; both quarantine instead.
        comment = "arc=pass" if analysis.arc.result == "pass" else "quarantined, not rejected"
        reasons.append(PolicyOverride("local_policy", comment))
    dkim = []
    for signature in analysis.dkim:
        domain = _name(signature.domain)
        if domain is None or signature.result not in DKIM_RESULTS:
            continue
        dkim.append(DkimAuth(domain, signature.result, _name(signature.selector)))
    spf_domain = _name(spf.domain)
    spf_auth = (
        (SpfAuth(spf_domain, str(spf.result), "helo" if spf.identity == "helo" else "mfrom"),)
        if spf_domain
        else ()
    )
    envelope_from = _name(mail_from.rpartition("@")[2]) if "@" in mail_from else None
    return Evaluation(
        day=day_start(now),
        policy=PolicyPublished(
            domain=result.policy_domain,
            p=record.policy,
            adkim=record.adkim,
            aspf=record.aspf,
            sp=record.subdomain_policy,
            pct=record.pct,
            fo=record.fo,
        ),
        rua=record.rua,
        record=Record(
            source_ip=source_ip,
            count=1,
            policy_evaluated=PolicyEvaluated(
                disposition=disposition,
                dkim="pass" if dkim_aligned else "fail",
                spf="pass" if spf_aligned else "fail",
                reasons=tuple(reasons),
            ),
            header_from=header_from,
            envelope_from=envelope_from,
            auth_results=AuthResults(dkim=tuple(dkim), spf=spf_auth),
        ),
    )


class Recorder:
    """Buffers evaluations and writes them in batches (see the module)."""

    def __init__(
        self,
        store: EvaluationStore,
        *,
        report_address: Callable[[str], bool] = lambda address: False,
        clock: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.store = store
        self.report_address = report_address
        self.clock = clock
        self.max_pending = max_pending
        self._pending: list[Evaluation] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def record(
        self, analysis: Analysis, *, ip: str, mail_from: str, recipients: Sequence[str]
    ) -> None:
        """Note one message's evaluation; never raises, never waits."""
        try:
            if recipients and all(self.report_address(r) for r in recipients):
                return  # a report to our intake: no report about it
            row = evaluation(analysis, ip=ip, mail_from=mail_from, now=self.clock())
        except Exception:  # a bug: the delivery goes on
            log.exception("dmarc evaluation not recorded")
            DROPPED.labels("error").inc()
            return
        if row is None:
            return
        if len(self._pending) >= self.max_pending:
            DROPPED.labels("busy").inc()
            return
        self._pending.append(row)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Write what is waiting (up to STOP_GRACE seconds), then end."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, STOP_GRACE)
            except TimeoutError:
                DROPPED.labels("busy").inc(len(self._pending))
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:BATCH]
                del self._pending[:BATCH]
                await self._write(batch)
            if self._stopping:
                return

    async def _write(self, batch: list[Evaluation]) -> None:
        try:
            outcomes = await asyncio.to_thread(self.store.add, batch)
        except Exception as exc:  # ReportStoreError, or a bug: mail goes on
            DROPPED.labels("error").inc(len(batch))
            log_event(
                log,
                "dmarc_evaluations_lost",
                logging.ERROR,
                evaluations=len(batch),
                error=str(exc) or type(exc).__name__,
            )
            return
        for outcome, count in outcomes.items():
            if outcome == "recorded":
                RECORDED.inc(count)
            else:
                DROPPED.labels(outcome).inc(count)
        if outcomes["domains"] or outcomes["rows"]:
            # An attack, or a very busy day: one line per batch, not per message.
            log_event(
                log,
                "dmarc_evaluations_dropped",
                logging.WARNING,
                rows=outcomes["rows"],
                domains=outcomes["domains"],
            )
