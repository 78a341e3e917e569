"""TLS reports arriving by mail (rfc8460:5.3; docs/tls-reports.md).

``[reports] tlsrpt_address`` is the address our ``_smtp._tls`` records
name in ``rua=``. Like the DMARC intake (estafeta.delivery.reports), it is
an account or an alias the MX accepts mail for; ``LocalDelivery`` hands a
message whose RCPT was that address to ``TLSReportIntake.take`` before any
filter runs:

1. the report part is found and parsed (estafeta.reports.tlsrpt: the
   application/tlsrpt+gzip or +json part, decompressed and validated with
   hard bounds), in a worker thread, one message at a time;
2. a valid report is stored (estafeta.reports.tlsrpt_store: one
   transaction, deduplicated by organisation and report id) and the message
   is consumed; a duplicate, or one past the retention, too;
3. anything else is delivered as ordinary mail, and the log and /metrics
   say why (``tlsrpt_report`` events: result accepted, duplicate, expired,
   rejected; reason).

Crash ordering as for DMARC: the store commits before the message gets its
250. Reports are not authenticated (rfc8460:5.3 asks receivers to ignore
reports without a valid DKIM signature; we store them all, and show them
per reporting organisation, so that a forged one stands out).

``report_sender`` puts together the sender of our own daily reports
(estafeta.reports.tlsrpt_send) for the server and ``estafeta tlsrpt
send``: as the ``[reports]`` identity (estafeta.config_reports, shared
with the DMARC reports), signed by the ``from_address`` domain's DKIM keys, into the
outbound queue, and POSTed with the queue's verified TLS.

When both intakes are configured, ``Intakes`` stands for them in
``LocalDelivery``, and the address decides: a message to ``dmarc_address``
is the DMARC intake's, one to ``tlsrpt_address`` the TLS intake's, each
judging it alone (what is not its kind of report stays as mail, counted by
that intake: a TLS report sent to the DMARC address is a rejected DMARC
report). Only a message addressed to both (one address serving both, or
both addresses) is judged by its content: the TLS intake takes it if it has
a TLS report part, else the DMARC intake does, which also counts a message
that is neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from estafeta.config import Config
from estafeta.delivery.reports import INTERNAL, STORE_FAILED, AddressIntake, ReportIntake
from estafeta.dns import Resolver
from estafeta.log import log_event
from estafeta.policy.signer import Signer
from estafeta.queue.delivery import verifying_context
from estafeta.queue.store import QueueBackend
from estafeta.queue.tlsrpt_post import post_report
from estafeta.reports import tlsrpt, unpack
from estafeta.reports.store import ReportStoreError
from estafeta.reports.tlsrpt import ReportError
from estafeta.reports.tlsrpt_send import Identity, TLSReportSender
from estafeta.reports.tlsrpt_sessions import SessionStore
from estafeta.reports.tlsrpt_store import TLSReportStore

log = logging.getLogger("estafeta.delivery")


class TLSReportIntake(AddressIntake):
    """The ``[reports] tlsrpt_address`` intake; ``LocalDelivery`` asks it."""

    def __init__(
        self, address: str, store: TLSReportStore, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(address, clock)
        self.store = store

    async def take(self, message: bytes, queue_id: str = "", to: Sequence[str] = ()) -> bool:
        """True when the message was a report and is dealt with (stored or
        known already); False: deliver it. (``to``: as for the DMARC intake.)"""
        return await self.offer(message, queue_id, quiet=False) is True

    async def offer(self, message: bytes, queue_id: str = "", quiet: bool = True) -> bool | None:
        """As ``take``, but None (and no log) for a message without a TLS
        report part when ``quiet``: someone else's to judge."""
        async with self._busy:
            try:
                report = await asyncio.to_thread(tlsrpt.parse_message, message)
            except ReportError as exc:
                if quiet and exc.reason == unpack.NO_REPORT:
                    return None
                _event(logging.WARNING, queue_id, "rejected", reason=exc.reason, error=str(exc))
                return False
            except Exception as exc:  # a bug: the message is delivered all the same
                log.exception("tls report parse failed")
                _event(logging.ERROR, queue_id, "rejected", reason=INTERNAL, error=repr(exc))
                return False
            try:
                result = await asyncio.to_thread(self.store.add, report, self.clock())
            except Exception as exc:
                if not isinstance(exc, ReportStoreError):
                    log.exception("tls report store failed")
                reason = STORE_FAILED if isinstance(exc, ReportStoreError) else INTERNAL
                fields = report.describe()
                _event(logging.ERROR, queue_id, "rejected", reason=reason, error=str(exc), **fields)
                return False
        fields = report.describe()
        if result == "accepted":
            fields["failures"] = dict(tlsrpt.summary_counts(report))
        _event(logging.INFO, queue_id, result, **fields)
        return True


def _event(level: int, queue_id: str, result: str, **fields: Any) -> None:
    log_event(log, "tlsrpt_report", level, qid=queue_id, result=result, **fields)


class Intakes:
    """The DMARC and the TLS intake as one (see the module docstring)."""

    def __init__(self, dmarc: ReportIntake, tls: TLSReportIntake) -> None:
        self.dmarc = dmarc
        self.tls = tls

    def wants(self, recipient: str) -> bool:
        return self.dmarc.wants(recipient) or self.tls.wants(recipient)

    async def take(self, message: bytes, queue_id: str = "", to: Sequence[str] = ()) -> bool:
        dmarc = any(self.dmarc.wants(address) for address in to)
        tls = any(self.tls.wants(address) for address in to)
        if tls and not dmarc:
            return await self.tls.take(message, queue_id)
        if dmarc and not tls:
            return await self.dmarc.take(message, queue_id)
        # Both (or, called without the addresses, either): the content decides.
        verdict = await self.tls.offer(message, queue_id)
        if verdict is not None:
            return verdict
        return await self.dmarc.take(message, queue_id)


def combine(
    dmarc: ReportIntake | None, tls: TLSReportIntake | None
) -> ReportIntake | TLSReportIntake | Intakes | None:
    """What ``LocalDelivery`` gets as its ``intake``: one, both, or none."""
    if dmarc is not None and tls is not None:
        return Intakes(dmarc, tls)
    return dmarc or tls


def report_sender(
    config: Config,
    resolver: Resolver,
    queue: QueueBackend,
    signer: Signer,
    wake: Callable[[], None] = lambda: None,
) -> TLSReportSender:
    """Our daily TLS reports, as ``config`` says (see the module docstring)."""
    identity = config.reports.identity
    ca_file = config.queue.ca_file
    verify = verifying_context(str(ca_file) if ca_file else None)

    def enqueue(sender: str, recipients: Sequence[str], data: bytes) -> None:
        queue.enqueue(sender, list(recipients), data)

    async def post(url: str, body: bytes) -> None:
        await post_report(url, body, resolver=resolver, ssl_context=verify)

    return TLSReportSender(
        store=SessionStore(config.tls_sessions_db),
        resolver=resolver,
        identity=Identity(
            org_name=identity.org_name,
            from_address=identity.from_address,
            hostname=config.hostname,
            contact_info=identity.contact_info,
        ),
        enqueue=enqueue,
        sign=signer.sign,
        post=post,
        wake=wake,
    )
