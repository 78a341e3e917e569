"""The queue runner: picks due entries, attempts them, retries, bounces.

Retry schedule: after attempt n (1, 2, ...) the next try comes
``min(retry_max, retry_min * 2**(n-1))`` later, with up to 10% jitter so that
a backlog does not retry in lock-step. An entry older than ``lifetime``
fails; the sender gets a DSN (rfc3464) — one listing every failed recipient
of the entry — and, once, a "delayed" DSN after ``delay_warning``. Messages
with the null reverse-path (DSNs themselves) never cause a DSN
(rfc5321:4.5.5).

The runner wakes when something is enqueued, when the next entry is due, and
once a second to notice ``estafeta queue flush`` run from another process.

The store is the local one or a cluster's (``QueueBackend``). A cluster's
``due`` claims the entries for ``store.lease`` seconds: the runner renews
the claims of attempts still running every third of that, settles an
attempt (its DSNs and the entry's new state) in one ``settle`` that is
refused once another node has taken the entry, and gives back the claims of
attempts it cancels at stop. A store that cannot be reached now
(``QueueUnavailable``) is tried again: the loop waits, an attempt's
settlement is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from estafeta.config import QueueConfig
from estafeta.log import log_event
from estafeta.queue.delivery import Deliverer, Result
from estafeta.queue.dsn import RecipientStatus, build_dsn
from estafeta.queue.store import Bounce, Entry, QueueBackend, QueueUnavailable

log = logging.getLogger("estafeta.queue")

POLL = 1.0
# Backoff of a settlement the store could not take (QueueUnavailable).
SETTLE_RETRY_MIN = 1.0
SETTLE_RETRY_MAX = 30.0


class Local(Protocol):
    """Delivery to our own domains (estafeta.delivery.LocalDelivery): entries
    for them (DSNs to local senders, deliveries deferred for quota,
    redirects and replies to local addresses) never go out over SMTP."""

    def handles(self, domain: str) -> bool: ...

    async def deliver_queued(
        self, sender: str, recipients: Sequence[str], data: bytes, queue_id: str = ""
    ) -> list[Result]: ...


class QueueRunner:
    def __init__(
        self,
        *,
        store: QueueBackend,
        deliverer: Deliverer,
        config: QueueConfig,
        hostname: str,
        local: Local,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deliverer = deliverer
        self.config = config
        self.hostname = hostname
        self.local = local
        self.clock = clock
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._stopping = False
        self._renewed = time.monotonic()
        self._unavailable = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._renew()
                await self._start_due()
                if self._unavailable:
                    self._unavailable = False
                    log_event(log, "queue_available")
            except QueueUnavailable as exc:
                if not self._unavailable:  # once an outage, not once a second
                    self._unavailable = True
                    log_event(log, "queue_unavailable", logging.WARNING, error=str(exc))
            except Exception:
                log.exception("queue runner error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)
            self._wake.clear()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking entries; wait for attempts in progress (then cancel them)."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            cancelled = [key for key, task in self._in_flight.items() if task in pending]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                # Their claims: due at once for another node (a cluster's).
                with contextlib.suppress(QueueUnavailable):
                    await asyncio.to_thread(self.store.release, cancelled)

    async def _renew(self) -> None:
        """Extend the claims of attempts still running, every third of the
        store's lease (never for the local store, whose lease is infinite)."""
        every = self.store.lease / 3
        if not self._in_flight or math.isinf(every):
            return
        if time.monotonic() - self._renewed < every:
            return
        self._renewed = time.monotonic()
        lost = await asyncio.to_thread(self.store.renew, set(self._in_flight))
        for key in sorted(lost):
            # The attempt goes on; its settlement will be refused.
            log_event(log, "queue_claim_lost", logging.WARNING, id=key)

    async def _start_due(self) -> None:
        free = self.config.concurrency - len(self._in_flight)
        if free <= 0 or self._stopping:
            return
        due = await asyncio.to_thread(self.store.due, self.clock(), set(self._in_flight), free)
        for entry in due:
            task = asyncio.create_task(self._attempt(entry))
            self._in_flight[entry.id] = task
            task.add_done_callback(functools.partial(self._done, entry.id))

    def _done(self, key: str, _: object = None) -> None:
        self._in_flight.pop(key, None)
        if not self._stopping:
            self._wake.set()

    async def _attempt(self, entry: Entry) -> None:
        async with self._slots:
            try:
                await self._attempt_entry(entry)
            except QueueUnavailable as exc:
                # A claim left lapses: this node or another tries again.
                log_event(log, "queue_unavailable", logging.WARNING, id=entry.id, error=str(exc))

    async def _attempt_entry(self, entry: Entry) -> None:
        try:
            data = await asyncio.to_thread(self.store.read_message, entry.message_id)
        except FileNotFoundError:
            log_event(log, "queue_missing_file", logging.ERROR, id=entry.id)
            await asyncio.to_thread(self.store.remove, entry.id)
            return
        started = time.monotonic()
        if self.local.handles(entry.domain):
            results = await self.local.deliver_queued(
                entry.sender, entry.recipients, data, entry.id
            )
        else:
            results = await self.deliverer.deliver(
                entry.domain, entry.sender, entry.recipients, data
            )
        for result in results:
            fields: dict[str, Any] = {"id": entry.id, "from": f"<{entry.sender}>"}
            log_event(
                log,
                "outbound",
                logging.INFO,
                **fields,
                to=f"<{result.recipient}>",
                relay=result.remote_mta or "none",
                # The TLS policy of the last session: dane, mta-sts, opportunistic, ...
                tls=result.tls[-1].policy if result.tls else "none",
                result=result.state,
                status=result.status,
                reply=result.reply,
                attempt=entry.attempts + 1,
                ms=round((time.monotonic() - started) * 1000, 1),
            )
        await self._settle(entry, data, results)

    async def _settle(self, entry: Entry, data: bytes, results: Sequence[Result]) -> None:
        now = self.clock()
        failed = [r for r in results if r.state == "permanent"]
        retry = [r for r in results if r.state == "temporary"]
        expired = bool(retry) and now - entry.created >= self.config.lifetime
        if expired:
            # rfc3464:2.3.3 — the last error explains the failure; 4.4.7 = expired.
            failed += [
                Result(
                    r.recipient,
                    "permanent",
                    r.status,
                    f"{r.reply} (gave up after {_human(self.config.lifetime)})",
                    r.remote_mta,
                )
                for r in retry
            ]
            retry = []
        notices: list[tuple[Bounce, str, Sequence[Result]]] = []
        if failed:
            notices += await self._dsn(entry, data, failed, "failed")
        warned: bool | None = None
        if retry and not entry.warned and now - entry.created >= self.config.delay_warning:
            notices += await self._dsn(entry, data, retry, "delayed")
            warned = True
        delay = min(self.config.retry_max, self.config.retry_min * 2**entry.attempts)
        delay *= 1 + random.uniform(0, 0.1)
        error = retry[0].reply if retry else ""
        # The DSNs and the entry's new state in one step: under a cluster's
        # claim, so that the DSN is queued once whichever node settles.
        settled = await self._record(
            entry,
            recipients=[r.recipient for r in retry],
            next_attempt=now + delay,
            error=error,
            warned=warned,
            bounces=[bounce for bounce, _, _ in notices],
        )
        if not settled:
            return  # another node took the entry over (the store logged it)
        if notices:
            # Local senders too: the queue hands their DSN to local delivery.
            self.wake()
        for _bounce, action, reported in notices:
            log_event(
                log,
                "dsn",
                id=entry.id,
                action=action,
                to=f"<{entry.sender}>",
                recipients=[r.recipient for r in reported],
                result="queued",
            )

    async def _record(
        self,
        entry: Entry,
        *,
        recipients: Sequence[str],
        next_attempt: float,
        error: str,
        warned: bool | None,
        bounces: Sequence[Bounce],
    ) -> bool:
        """``store.settle``, again with backoff while the store cannot be
        reached: the attempt happened, and recording it is what keeps it
        from being made again (a cluster refuses once another node took the
        entry, so waiting is safe)."""
        pause = SETTLE_RETRY_MIN
        while True:
            try:
                return await asyncio.to_thread(
                    functools.partial(
                        self.store.settle,
                        entry.id,
                        recipients=recipients,
                        next_attempt=next_attempt,
                        error=error,
                        warned=warned,
                        bounces=bounces,
                    )
                )
            except QueueUnavailable as exc:
                log_event(
                    log,
                    "queue_unavailable",
                    logging.WARNING,
                    id=entry.id,
                    error=str(exc),
                    retry=pause,
                )
                await asyncio.sleep(pause)
                pause = min(SETTLE_RETRY_MAX, pause * 2)

    async def _dsn(
        self, entry: Entry, data: bytes, results: Sequence[Result], action: str
    ) -> list[tuple[Bounce, str, Sequence[Result]]]:
        """The DSN of ``results`` to the entry's sender, to queue with its
        settlement (none for the null sender)."""
        if not entry.sender:
            # rfc5321:4.5.5 / rfc3464:2 — never a DSN about a DSN.
            log_event(log, "dsn_suppressed", id=entry.id, reason="null sender", action=action)
            return []
        now = self.clock()
        statuses = [
            RecipientStatus(
                final_recipient=r.recipient,
                action=action,
                # An expired message keeps the class of its last error (4.x.x)
                # with action "failed", as Postfix reports it.
                status=r.status,
                remote_mta=r.remote_mta,
                diagnostic=r.reply,
                last_attempt=now,
                will_retry_until=entry.created + self.config.lifetime
                if action == "delayed"
                else None,
            )
            for r in results
        ]
        envelope_id = await asyncio.to_thread(self.store.envelope_id, entry.message_id)
        dsn = build_dsn(
            reporting_mta=self.hostname,
            sender=entry.sender,
            recipients=statuses,
            original=data,
            arrival_date=entry.created,
            envelope_id=envelope_id,
            queue_id=entry.id,
            now=now,
        )
        return [(Bounce(entry.sender, dsn), action, results)]


def _human(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"
