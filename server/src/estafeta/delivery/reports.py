"""DMARC aggregate reports arriving by mail (rfc7489:7.2; docs/dmarc-reports.md).

``[reports] dmarc_address`` is the address our DMARC records name in
``rua=``. It is an account (or an alias of one, or a shared mailbox's
address) like any other, so the MX accepts mail for it the usual way; what
changes is what ``LocalDelivery`` does with a message whose RCPT was that
address, before any filter runs:

1. ``ReportIntake.take`` parses it (estafeta.reports.dmarc: the attachment
   found, decompressed and validated with hard bounds), in a worker thread,
   one message at a time;
2. a valid report is written to the report store (estafeta.reports.store:
   one transaction, deduplicated by reporter and report id) and the message
   is consumed: no copy goes into the mailbox, the database is the record.
   A report already stored (a retry) or past the retention is consumed too;
3. anything else (not a report, an invalid one, the store failing) is
   delivered as ordinary mail through the filter chain, so nothing is ever
   lost; the log says why and /metrics counts it by reason.

Crash ordering: the store commits before the message gets its 250 (this
runs inside ``deliver``), so a crash before the commit makes the sender
retry, and a crash after it turns the retry into a duplicate, consumed.
Reports are not authenticated: anyone can send one to the address, which
is why the figures are shown per reporting organisation and why every bound
holds for hostile input. An alias that also forwards the address elsewhere
still forwards: only the local copies are consumed.

Every report that reaches the intake is one ``dmarc_report`` event: result
(accepted, duplicate, expired, rejected), reason, and the counts the
metrics take (estafeta.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from estafeta.address import AddressError, normalize_address
from estafeta.log import log_event
from estafeta.reports.dmarc import Report, ReportError, parse_message
from estafeta.reports.store import ReportStore, ReportStoreError

log = logging.getLogger("estafeta.delivery")

# Reasons besides the parser's (estafeta.reports.unpack): a report that
# parsed but could not be stored; a failure of ours.
STORE_FAILED = "store"
INTERNAL = "internal"


class ReportIntake:
    """The ``[reports] dmarc_address`` intake; ``LocalDelivery`` asks it."""

    def __init__(
        self, address: str, store: ReportStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.address = normalize_address(address)
        self.store = store
        self.clock = clock
        # One report parsed at a time: each may take 20 MiB of XML.
        self._busy = asyncio.Lock()

    def wants(self, recipient: str) -> bool:
        """Whether mail to ``recipient`` (an RCPT address) is for the intake."""
        try:
            return normalize_address(recipient) == self.address
        except AddressError:
            return False

    async def take(self, message: bytes, queue_id: str = "") -> bool:
        """True when the message was a report and is dealt with (stored,
        or known already): it is not to be delivered. False: deliver it."""
        async with self._busy:
            try:
                report = await asyncio.to_thread(parse_message, message)
            except ReportError as exc:
                log_event(
                    log,
                    "dmarc_report",
                    logging.WARNING,
                    qid=queue_id,
                    result="rejected",
                    reason=exc.reason,
                    error=str(exc),
                )
                return False
            except Exception as exc:  # a bug: the message is delivered all the same
                log.exception("dmarc report parse failed")
                log_event(
                    log,
                    "dmarc_report",
                    logging.ERROR,
                    qid=queue_id,
                    result="rejected",
                    reason=INTERNAL,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return False
            try:
                result = await asyncio.to_thread(self.store.add, report, self.clock())
            except Exception as exc:  # the store's error, or a bug: delivered all the same
                if not isinstance(exc, ReportStoreError):
                    log.exception("dmarc report store failed")
                log_event(
                    log,
                    "dmarc_report",
                    logging.ERROR,
                    qid=queue_id,
                    result="rejected",
                    reason=STORE_FAILED if isinstance(exc, ReportStoreError) else INTERNAL,
                    error=str(exc) or type(exc).__name__,
                    **_identity(report),
                )
                return False
        fields = _identity(report)
        fields.update(records=len(report.records), messages=report.messages)
        if result == "accepted":
            fields.update(report.counts())
        log_event(log, "dmarc_report", qid=queue_id, result=result, **fields)
        return True


def _identity(report: Report) -> dict[str, Any]:
    return {
        "org": report.org_name,
        "report_id": report.report_id,
        "domain": report.policy_published.domain,
    }
