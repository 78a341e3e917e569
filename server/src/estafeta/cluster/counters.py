"""Sending-limit counters every node shares (the ``send_counts`` table).

One row per (address, POSIX minute) with the messages accepted in that
minute: ``record`` adds one (an upsert, ``count = count + 1``), ``count``
sums the minutes since a time. A window is counted in whole minutes: the
minute ``since`` falls in counts whole, so a message leaves an hour's count
between 60 and 61 minutes after it was sent (never early). Rows older than
``KEEP`` are pruned now and then (at most once per ``prune_every`` seconds,
by whichever call comes next), so the table holds about an hour of minutes
per address that sent mail.

Times are wall-clock seconds (``time.time()``): the nodes' clocks agree to
within NTP's error, far below a minute.

``Breaker`` keeps an outage cheap: after a failure, calls fail at once for a
few seconds instead of each waiting for its timeout, so a node whose
database is away does not make every message wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.leases import run_query

log = logging.getLogger("estafeta.cluster")

T = TypeVar("T")

KEEP = 3600.0 + 120.0  # seconds of minutes kept: an hour, and a margin
MAX_ADDRESS = 320  # rfc5321:4.5.3.1.3


class Breaker:
    """After a failure, refuse at once for ``pause`` seconds (then one call
    tries the database again)."""

    def __init__(self, pause: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.pause = pause
        self.clock = clock
        self._open_until = 0.0
        self._error = ""

    def check(self) -> None:
        if self.clock() < self._open_until:
            raise DatabaseError(f"{self._error} (not retried for {self.pause:.0f} s)")

    def failed(self, error: DatabaseError) -> None:
        self._open_until = self.clock() + self.pause
        self._error = str(error)

    def succeeded(self) -> None:
        self._open_until = 0.0

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        self.check()
        try:
            result = await call()
        except DatabaseError as exc:
            self.failed(exc)
            raise
        self.succeeded()
        return result


def minute(when: float) -> int:
    """The POSIX minute ``when`` (seconds) falls in."""
    return int(when // 60)


class SendCounts:
    """Messages sent per address and minute, counted by every node."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        *,
        timeout: float = 2.0,
        pause: float = 5.0,
        prune_every: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.io = io
        self.db = db
        self.timeout = timeout
        self.breaker = Breaker(pause, clock)
        self.prune_every = prune_every
        self.clock = clock
        self._pruned = clock()  # the first prune comes after prune_every

    async def _query(self, what: str, work: Callable[[Any], Awaitable[T]]) -> T:
        return await self.breaker.run(lambda: run_query(self.io, self.db, self.timeout, what, work))

    async def record(self, address: str, when: float) -> None:
        """One more message sent by ``address`` at ``when`` (wall clock)."""
        _check(address)
        prune_before = None
        if self.clock() - self._pruned >= self.prune_every:
            self._pruned = self.clock()
            prune_before = minute(when - KEEP)

        async def work(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO send_counts (address, minute, count) VALUES ($1, $2, 1)"
                " ON CONFLICT (address, minute) DO UPDATE SET count = send_counts.count + 1",
                address, minute(when),
            )  # fmt: skip
            if prune_before is not None:
                await conn.execute("DELETE FROM send_counts WHERE minute < $1", prune_before)

        await self._query("count a message sent", work)

    async def count(self, address: str, since: float) -> int:
        """Messages ``address`` sent from the minute of ``since`` on."""
        _check(address)

        async def work(conn: Any) -> int:
            value = await conn.fetchval(
                "SELECT coalesce(sum(count), 0) FROM send_counts"
                " WHERE address = $1 AND minute >= $2",
                address, minute(since),
            )  # fmt: skip
            return int(value)

        return await self._query("read the messages sent", work)

    async def prune(self, now: float) -> int:
        """Delete the minutes no window needs any more: how many rows."""

        async def work(conn: Any) -> int:
            status = await conn.execute(
                "DELETE FROM send_counts WHERE minute < $1", minute(now - KEEP)
            )
            return int(status.split()[-1])

        return await self._query("prune the sending counts", work)


def _check(address: str) -> None:
    if not address or len(address) > MAX_ADDRESS:
        raise ValueError(f"an address of {len(address)} characters (1 to {MAX_ADDRESS})")
