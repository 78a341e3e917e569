"""Greylisting every cluster node shares, in PostgreSQL (issue 23).

The same list as ``policy.greylist`` (its docstring says what a triplet,
a pass, an auto-allowed network and a known sender are), kept in the
``greylist_*`` tables of the cluster's database (``cluster.schema``,
migration 3) instead of one node's SQLite file. With a file per node a
sender that retries through the other MX record would be greylisted again
there, and a node that takes over would greylist everyone who passed on
the other: with the tables shared, one retry passes on every node.

Same interface as ``Greylist`` (``check``, ``known_sender``,
``remember_sender``, ``forget``, ``prune``, ``stats``, ``now``,
``settings``, ``close``): synchronous methods for worker threads
(``smtp.gate`` calls them through ``asyncio.to_thread``), each running its
queries on the node's IoLoop (``cluster.leases.run_query``), bounded by
``timeout`` seconds. The gate's in-memory cache answers the steady state
(triplets and networks that passed) without calling here at all.

Round trips, uncached: ``check`` reads the network's, the triplet's
passed and its pending row in one statement; a new triplet adds one
insert, a retry that passes one transaction of 2-3 statements, a "last
seen" refresh (at most hourly per row) one update. ``known_sender`` is one
read; ``remember_sender`` one upsert.

Races between nodes cost at most one more 451, never a message: two nodes
that see a new triplet at once both insert it (``ON CONFLICT DO NOTHING``:
the first sighting stays) and both greylist; two that promote one retry
both pass it.

Failures: a database error is logged and counted, and the RCPT passes
(``ERROR``), as with the local file: mail must flow without the list. After
a failure the ``Breaker`` answers at once for a few seconds, so an outage
does not make every RCPT wait for its timeout.

Bounds: ``max_pending`` and ``max_passed`` as in the local list. Expiry and
the caps run in the background on the IoLoop every ``PRUNE_INTERVAL``
seconds or ``PRUNE_EVERY`` checks of this node (the RCPT that triggers it
does not wait): expired rows in batches of ``PRUNE_BATCH`` through the time
indexes, then each table counted (an index-only scan) and its oldest
excess removed. Every node prunes; deleting what another node deleted
first deletes nothing. The ``*_entries`` of ``stats`` are the counts of
this node's last prune.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from estafeta.address import AddressError, normalize_domain
from estafeta.cluster.counters import Breaker
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.leases import run_query
from estafeta.log import log_event
from estafeta.policy.greylist import (
    ADD_PENDING,
    ERROR,
    PROMOTE,
    PRUNE_BATCH,
    PRUNE_EVERY,
    PRUNE_INTERVAL,
    REFRESH_AFTER,
    REFRESH_CLIENT,
    REFRESH_PASSED,
    RESTART_PENDING,
    Counters,
    Decision,
    Settings,
    client_network,
    decide,
    erasure_keys,
    normalize_recipient,
    normalize_sender,
    sender_is_known,
    triplet_key,
)

log = logging.getLogger("estafeta.greylist")

T = TypeVar("T")

PRUNE_TIMEOUT = 60.0  # seconds one background expiry run may take

# Table -> (key column, time column ordering expiry and eviction). The SQL
# built with f-strings below takes identifiers from here only, never from
# input (hence "noqa: S608").
_TABLES = {
    "greylist_pending": ("key", "first"),
    "greylist_passed": ("key", "last"),
    "greylist_clients": ("network", "last"),
    "greylist_senders": ("domain", "last"),
}
_SHORT = {table: table.removeprefix("greylist_") for table in _TABLES}

# rfc6647:2.2: one statement for the three lookups of a decision.
_READ = """
SELECT
    (SELECT last FROM greylist_clients WHERE network = $1),
    (SELECT last FROM greylist_passed WHERE key = $2),
    (SELECT first FROM greylist_pending WHERE key = $2)
"""


class SharedGreylist(Counters):
    """Greylisting state in the cluster's database; see the module docstring."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        pause: float = 5.0,
    ) -> None:
        super().__init__()
        self.io = io
        self.db = db
        self.settings = settings or Settings()
        self._clock = clock
        self.timeout = timeout
        self.breaker = Breaker(pause)
        self._calls = 0
        self._pruned_at = -math.inf
        self._pruning = False
        self._rows = {_SHORT[table]: 0 for table in _TABLES}

    def now(self) -> float:
        return self._clock()

    def close(self) -> None:
        """Nothing of its own to close: the node owns the pool."""

    def __enter__(self) -> SharedGreylist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(connection)`` on the IoLoop, waited for from this thread."""
        query = self.breaker.run(lambda: run_query(self.io, self.db, self.timeout, what, work))
        return self.io.run(query)

    def _error(self, op: str, exc: DatabaseError) -> None:
        self.errors += 1
        log_event(log, "greylist_error", logging.ERROR, op=op, error=str(exc))

    # -- greylisting ------------------------------------------------------------

    def check(self, client_ip: str, sender: str, recipient: str) -> Decision:
        """Decide one RCPT (as ``Greylist.check``). ValueError if
        ``client_ip`` is not an address; a database error passes it."""
        s = self.settings
        network = client_network(client_ip, s.ipv4_prefix, s.ipv6_prefix)
        key = triplet_key(network, normalize_sender(sender), normalize_recipient(recipient))
        now = self._clock()
        try:
            decision = self._run(
                "greylist a triplet", lambda conn: self._check(conn, network, key, now)
            )
        except DatabaseError as exc:
            self._error("check", exc)
            return Decision(False, ERROR, 0.0, "", network)
        self.count(decision)
        self._maybe_prune(now)
        log_event(log, "greylist", logging.DEBUG, result=decision.reason, network=network)
        return decision

    async def _check(self, conn: Any, network: str, key: bytes, now: float) -> Decision:
        row = await conn.fetchrow(_READ, network, key)
        decision, write = decide(self.settings, network, now, *row)
        if write == REFRESH_CLIENT:
            await conn.execute(
                "UPDATE greylist_clients SET last = $2 WHERE network = $1", network, now
            )
        elif write == REFRESH_PASSED:
            await conn.execute("UPDATE greylist_passed SET last = $2 WHERE key = $1", key, now)
        elif write == ADD_PENDING:
            await conn.execute(
                "INSERT INTO greylist_pending (key, first) VALUES ($1, $2)"
                " ON CONFLICT (key) DO NOTHING",
                key, now,
            )  # fmt: skip
        elif write == RESTART_PENDING:
            await conn.execute("UPDATE greylist_pending SET first = $2 WHERE key = $1", key, now)
        elif write == PROMOTE:
            async with conn.transaction():
                await self._promote(conn, network, key, now)
        return decision

    async def _promote(self, conn: Any, network: str, key: bytes, now: float) -> None:
        s = self.settings
        await conn.execute("DELETE FROM greylist_pending WHERE key = $1", key)
        await conn.execute(
            "INSERT INTO greylist_passed (key, network, last) VALUES ($1, $2, $3)"
            " ON CONFLICT (key) DO UPDATE SET network = EXCLUDED.network, last = EXCLUDED.last",
            key, network, now,
        )  # fmt: skip
        if s.auto_allow == 0:
            return
        alive = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM greylist_passed"
            " WHERE network = $1 AND last > $2 LIMIT $3) AS live",
            network, now - s.expire, s.auto_allow,
        )  # fmt: skip
        if alive >= s.auto_allow:
            await conn.execute(
                "INSERT INTO greylist_clients (network, last) VALUES ($1, $2)"
                " ON CONFLICT (network) DO UPDATE SET last = EXCLUDED.last",
                network, now,
            )  # fmt: skip
            log_event(log, "greylist_auto_allow", logging.INFO, network=network)

    # -- known senders ------------------------------------------------------------

    def remember_sender(self, domain: str) -> None:
        """As ``Greylist.remember_sender``: an expired entry starts over (its
        age counts from now again); database errors are logged."""
        name = normalize_domain(domain)
        now = self._clock()
        expired_before = now - self.settings.expire

        async def work(conn: Any) -> None:
            # One upsert: a new or expired row gets first = now; a live one
            # only its "last seen", at most hourly (or if the clock went back).
            await conn.execute(
                "INSERT INTO greylist_senders (domain, first, last) VALUES ($1, $2, $2)"
                " ON CONFLICT (domain) DO UPDATE SET"
                " first = CASE WHEN greylist_senders.last <= $3 THEN $2"
                " ELSE greylist_senders.first END, last = $2"
                " WHERE greylist_senders.last <= $3 OR greylist_senders.last <= $4"
                " OR greylist_senders.last > $2",
                name, now, expired_before, now - REFRESH_AFTER,
            )  # fmt: skip

        try:
            self._run("remember a sender", work)
        except DatabaseError as exc:
            self._error("remember", exc)

    def known_sender(self, domain: str) -> bool:
        """As ``Greylist.known_sender``; False on a database error."""
        try:
            name = normalize_domain(domain)
        except AddressError:
            return False
        now = self._clock()

        async def work(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT first, last FROM greylist_senders WHERE domain = $1", name
            )

        try:
            row = self._run("read a sender", work)
        except DatabaseError as exc:
            self._error("known", exc)
            return False
        known = sender_is_known(self.settings, row, now)
        if known:
            self.known += 1
        return known

    # -- erasure --------------------------------------------------------------------

    def forget(self, triplets: Iterable[tuple[str, str, str]]) -> int:
        """Remove the pending and passed entries of these (client IP, sender,
        recipient) triplets; how many went (``Greylist.forget``)."""
        wanted = sorted(erasure_keys(self.settings, triplets))

        async def work(conn: Any) -> int:
            removed = 0
            async with conn.transaction():
                for table in ("greylist_pending", "greylist_passed"):
                    status = await conn.execute(
                        f"DELETE FROM {table} WHERE key = ANY($1::bytea[])",  # noqa: S608
                        wanted,
                    )
                    removed += int(status.split()[-1])
            return removed

        return self._run("forget triplets", work) if wanted else 0

    # -- maintenance --------------------------------------------------------------

    def _maybe_prune(self, now: float) -> None:
        self._calls += 1
        since = now - self._pruned_at
        if self._pruning or not (
            self._calls >= PRUNE_EVERY or since >= PRUNE_INTERVAL or since < 0
        ):
            return
        self._calls = 0
        self._pruned_at = now
        self._pruning = True
        self.io.submit(self._background_prune(now))

    async def _background_prune(self, now: float) -> None:
        try:
            await self._prune(now)
        except DatabaseError as exc:
            self._error("prune", exc)
        finally:
            self._pruning = False

    async def _prune(self, now: float) -> int:
        s = self.settings
        cutoffs = {
            "greylist_pending": now - s.retry_window,
            "greylist_passed": now - s.expire,
            "greylist_clients": now - s.expire,
            "greylist_senders": now - s.expire,
        }

        async def work(conn: Any) -> tuple[int, dict[str, int], int, int]:
            removed, rows, evicted, evicted_passed = 0, {}, 0, 0
            for table, cutoff in cutoffs.items():
                key_column, time_column = _TABLES[table]
                status = await conn.execute(
                    f"DELETE FROM {table} WHERE {key_column} IN (SELECT {key_column}"  # noqa: S608
                    f" FROM {table} WHERE {time_column} <= $1 ORDER BY {time_column} LIMIT $2)",
                    cutoff, PRUNE_BATCH,
                )  # fmt: skip
                removed += int(status.split()[-1])
                count = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
                limit = s.max_pending if table == "greylist_pending" else s.max_passed
                if count > limit:
                    status = await conn.execute(
                        f"DELETE FROM {table} WHERE {key_column} IN (SELECT {key_column}"  # noqa: S608
                        f" FROM {table} ORDER BY {time_column}, {key_column} LIMIT $1)",
                        count - limit,
                    )
                    gone = int(status.split()[-1])
                    count -= gone
                    if table == "greylist_pending":
                        evicted += gone
                    else:
                        evicted_passed += gone
                rows[_SHORT[table]] = count
            return removed, rows, evicted, evicted_passed

        removed, rows, evicted, evicted_passed = await run_query(
            self.io, self.db, PRUNE_TIMEOUT, "expire greylisting entries", work
        )
        self._rows = rows
        self.evicted += evicted
        self.evicted_passed += evicted_passed
        if evicted:
            # Once per run, not once per evicted row: a flood must not flood the log.
            log_event(log, "greylist_full", logging.WARNING, evicted=evicted, limit=s.max_pending)
        return removed

    def prune(self) -> int:
        """Remove one batch of expired entries now and count the tables; how
        many went (CLI, tests)."""
        now = self._clock()
        self._calls = 0
        self._pruned_at = now
        return self.io.run(self._prune(now))

    def stats(self) -> dict[str, int]:
        """The counters, and each table's entries as of the last prune."""
        return self.counters() | {f"{table}_entries": n for table, n in self._rows.items()}
