"""Login failures and lockouts every node shares (the login guard's state).

estafeta.auth.guard decides (its GuardPolicy); this module counts and
remembers for all nodes, in two tables:

- ``login_failures`` (kind, subject, at): one row per failed login and
  level. ``('ip', client)`` counts a client's failures (not for exempt
  networks); ``('account:' + account, client)`` counts an account's
  failures *with their client*: the kind names the account so that one
  range of the index (kind, subject, at) holds every failure for it, from
  which come the account's count, its distinct clients and (subject =
  client) the pair's count. An exempt proxy's failures get a subject of
  their own each (``proxy:`` and a token): each counts as another client.
- ``lockouts`` (kind, subject, until): ``('ip', client)``, ``('pair',
  client + ' ' + account)`` (a client key has no space) and ``('account',
  account)``. A lockout outlives a restart and every node honours it.

A window's failures are those since the window's start, or since the end of
the last ip or pair lockout (the client starts again from nothing, as the
local guard does), or since the start of the last account lockout.

Per login attempt: ``remaining`` answers from a local cache of the active
lockouts (no database: a locked-out client's flood costs nothing);
``failure`` is one statement (insert the failure, read the counts),
``lock`` one more when a limit is reached, ``forget`` one on success. The
cache is brought up to date by ``refresh`` (the server calls it every few
seconds): the lockouts set since the last one, all of them once a minute;
it also prunes old rows now and then. Each call is bounded by
``timeout``; after a failure the ``Breaker`` refuses at once for a few
seconds, and the guard falls back to its local state.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from estafeta.cluster.counters import Breaker
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.leases import run_query
from estafeta.log import log_event

log = logging.getLogger("estafeta.cluster")

T = TypeVar("T")

PRUNE_TIMEOUT = 30.0

IP = "ip"
PAIR = "pair"
ACCOUNT = "account"
KINDS = (IP, PAIR, ACCOUNT)
_MAX_KEY = 400  # the guard keeps its keys to 320 characters


@dataclass(frozen=True)
class FailureCounts:
    """Failures inside the window, the one just recorded included."""

    ip: int  # of the client
    pair: int  # of the client for the account
    account: int  # for the account, from every client
    clients: int  # different clients among ``account``


def failure_kind(account: str) -> str:
    return "account:" + account


def _client(client: str) -> str:
    """A client key as stored: never empty, no space (the pair separator)."""
    return client.replace(" ", "_")[:_MAX_KEY] or "-"


def subject(kind: str, client: str, account: str) -> str:
    """The ``lockouts`` subject of a lockout of ``kind``."""
    client, account = _client(client), account[:_MAX_KEY]
    if kind == IP:
        return client
    if kind == PAIR:
        return f"{client} {account}"
    if kind == ACCOUNT:
        return account
    raise ValueError(f"unknown lockout kind {kind!r}")


_FAILURE = """
WITH bounds AS (
    SELECT
        greatest(now() - make_interval(secs => $4),
                 (SELECT until FROM lockouts WHERE kind = 'ip' AND subject = $2)) AS ip_since,
        greatest(now() - make_interval(secs => $4),
                 (SELECT until FROM lockouts
                  WHERE kind = 'pair' AND subject = $2 || ' ' || $3)) AS pair_since,
        greatest(now() - make_interval(secs => $4),
                 (SELECT until - make_interval(secs => $5) FROM lockouts
                  WHERE kind = 'account' AND subject = $3)) AS account_since
), added AS (
    INSERT INTO login_failures (kind, subject)
    SELECT k, s FROM unnest($6::text[], $7::text[]) AS new(k, s)
), old AS (
    SELECT f.subject FROM login_failures f, bounds
    WHERE f.kind = $1 AND f.at > bounds.account_since
    LIMIT $8
)
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM login_failures f
        WHERE f.kind = 'ip' AND f.subject = $2 AND f.at > bounds.ip_since LIMIT $8) x)
        + (now() > bounds.ip_since)::int,
    (SELECT count(*) FROM (SELECT 1 FROM login_failures f
        WHERE f.kind = $1 AND f.subject = $2 AND f.at > bounds.pair_since LIMIT $8) x)
        + (now() > bounds.pair_since)::int,
    (SELECT count(*) FROM old) + (now() > bounds.account_since)::int,
    (SELECT count(DISTINCT subject) FROM old)
        + (now() > bounds.account_since AND NOT EXISTS (SELECT 1 FROM old WHERE subject = $9))::int
FROM bounds
"""

_LOCK = """
WITH wanted AS (
    SELECT k, s FROM unnest($1::text[], $2::text[]) AS l(k, s)
), started AS (
    INSERT INTO lockouts (kind, subject, until)
    SELECT k, s, now() + make_interval(secs => $3) FROM wanted
    ON CONFLICT (kind, subject) DO UPDATE SET until = EXCLUDED.until
    WHERE lockouts.until <= now()
    RETURNING kind, subject, until
)
SELECT kind, subject, extract(epoch FROM until - now())::float8, true FROM started
UNION ALL
SELECT l.kind, l.subject, extract(epoch FROM l.until - now())::float8, false
FROM lockouts l JOIN wanted ON l.kind = wanted.k AND l.subject = wanted.s
WHERE l.until > now()
"""

# A success forgets the client's failures for the account(s), and as many
# of its 'ip' failures (the newest), as the local guard does.
_FORGET = """
WITH gone AS (
    DELETE FROM login_failures WHERE kind = ANY($1::text[]) AND subject = $2 RETURNING 1
)
DELETE FROM login_failures WHERE ctid IN (
    SELECT ctid FROM login_failures WHERE kind = 'ip' AND subject = $2
    ORDER BY at DESC LIMIT (SELECT count(*) FROM gone)
)
"""


class SharedLockouts:
    """The login guard's shared counts and lockouts, with a local cache."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        *,
        timeout: float = 1.0,
        pause: float = 5.0,
        cap: int = 1000,
        max_cached: int = 100_000,
        prune_every: float = 60.0,
        full_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.io = io
        self.db = db
        self.timeout = timeout
        self.breaker = Breaker(pause, clock)
        self.cap = cap  # rows a count reads at most
        self.max_cached = max_cached
        self.prune_every = prune_every
        self.clock = clock
        # (kind, subject) -> (until, when cached), both self.clock() times.
        self._cache: dict[tuple[str, str], tuple[float, float]] = {}
        self._keep = 900.0  # seconds of failures a count may need (the longest window)
        self._pruned = clock()
        self.full_every = full_every
        self._full = clock()
        self._newest: datetime | None = None  # the latest lockout end read (database clock)

    async def _query(self, what: str, work: Callable[[Any], Awaitable[T]]) -> T:
        return await self.breaker.run(lambda: run_query(self.io, self.db, self.timeout, what, work))

    # -- the cache -----------------------------------------------------------

    def remaining(self, kind: str, client: str, account: str) -> float:
        """Seconds left of an active lockout (0: none), from the cache."""
        key = (kind, subject(kind, client, account))
        entry = self._cache.get(key)
        if entry is None:
            return 0.0
        left = entry[0] - self.clock()
        if left <= 0:
            self._cache.pop(key, None)
            return 0.0
        return left

    def _remember(self, rows: Iterable[tuple[str, str, float]]) -> None:
        now = self.clock()
        for kind, name, left in rows:
            self._cache.pop((kind, name), None)  # newest last
            self._cache[(kind, name)] = (now + left, now)
        while len(self._cache) > self.max_cached:
            del self._cache[next(iter(self._cache))]

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def refresh(self) -> int:
        """Bring the cache up to date: how many lockouts it holds.

        Mostly reads only the lockouts set since the last refresh (those
        whose end is later than any seen, less a margin for transactions
        that committed late); every ``full_every`` seconds reads them all,
        so that a lockout lifted by hand (``DELETE FROM lockouts``) ends
        here too. Now and then prunes old rows first."""
        started = self.clock()
        if started - self._pruned >= self.prune_every:
            self._pruned = started
            await self.prune()
        full = self._newest is None or started - self._full >= self.full_every
        newest = None if full else self._newest

        async def work(conn: Any) -> list[tuple[str, str, float, datetime]]:
            rows = await conn.fetch(
                "SELECT kind, subject, extract(epoch FROM until - now())::float8, until"
                " FROM lockouts WHERE until > now()"
                " AND ($2::timestamptz IS NULL OR until > $2 - interval '10 seconds')"
                " ORDER BY until DESC LIMIT $1",
                self.max_cached, newest,
            )  # fmt: skip
            return [(r[0], r[1], float(r[2]), r[3]) for r in rows]

        rows = await self._query("read the lockouts", work)
        if rows and (self._newest is None or rows[0][3] > self._newest):
            self._newest = rows[0][3]
        if not full:
            self._remember(row[:3] for row in rows)
            return len(self._cache)
        self._full = started
        # Lockouts this node cached while the query ran stay (the query may
        # not have seen them); the rest is the database's word.
        kept = {k: v for k, v in self._cache.items() if v[1] >= started}
        self._cache = {}
        self._remember(row[:3] for row in rows)
        for key, value in kept.items():
            self._cache.setdefault(key, value)
        return len(self._cache)

    async def prune(self) -> None:
        """Delete failures and lockouts no count needs any more (older than
        the longest window seen). Never raises: a failure is logged."""
        keep = self._keep + 60.0

        async def work(conn: Any) -> None:
            await conn.execute(
                "DELETE FROM login_failures WHERE at < now() - make_interval(secs => $1)", keep
            )
            await conn.execute(
                "DELETE FROM lockouts WHERE until < now() - make_interval(secs => $1)", keep
            )

        try:
            await run_query(self.io, self.db, PRUNE_TIMEOUT, "prune the login failures", work)
        except DatabaseError as exc:
            log_event(log, "lockouts_prune_failed", logging.WARNING, error=str(exc))

    # -- per attempt ---------------------------------------------------------

    async def failure(
        self, client: str, account: str, *, exempt: bool, window: float, lockout: float
    ) -> FailureCounts:
        """Record a failed login of ``client`` for ``account``; the counts."""
        client, account = _client(client), account[:_MAX_KEY]
        self._keep = max(self._keep, window)
        kind = failure_kind(account)
        who = f"proxy:{secrets.token_hex(8)}" if exempt else client
        kinds, subjects = ([kind], [who]) if exempt else ([IP, kind], [client, who])

        async def work(conn: Any) -> FailureCounts:
            row = await conn.fetchrow(
                _FAILURE, kind, client, account, float(window), float(lockout),
                kinds, subjects, self.cap, who,
            )  # fmt: skip
            return FailureCounts(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

        return await self._query("count a login failure", work)

    async def lock(
        self, kinds: Sequence[str], client: str, account: str, seconds: float
    ) -> dict[str, float]:
        """Lock (client, account) out at the levels ``kinds`` for
        ``seconds``, unless such a lockout is active already: the kinds this
        call started, with their seconds left (to be logged once)."""
        names = [subject(kind, client, account) for kind in kinds]

        async def work(conn: Any) -> list[tuple[str, str, float, bool]]:
            rows = await conn.fetch(_LOCK, list(kinds), names, float(seconds))
            return [(r[0], r[1], float(r[2]), bool(r[3])) for r in rows]

        rows = await self._query("lock out", work)
        self._remember((kind, name, left) for kind, name, left, _ in rows)
        return {kind: left for kind, _, left, new in rows if new}

    async def forget(self, client: str, accounts: Sequence[str]) -> None:
        """A good login: forget the client's failures for ``accounts``."""
        client = _client(client)
        kinds = [failure_kind(account[:_MAX_KEY]) for account in accounts]

        async def work(conn: Any) -> None:
            await conn.execute(_FORGET, kinds, client)

        await self._query("forget login failures", work)
