"""The junk filter's per-account token statistics, shared by every cluster
node in PostgreSQL (issue 23).

``spam.store.TokenStore``'s statistics and semantics (its docstring: 64-bit
token ids, training made idempotent by the message's digest, counts never
below zero, the caps and what pruning keeps, the allowlist) in the tables
of ``cluster.schema`` migration 3: ``spam_stats`` (an account's totals),
``spam_tokens``, ``spam_trained`` and ``spam_allow``, which reference it ON
DELETE CASCADE (a writer makes the account's row first; ``remove`` deletes
all by deleting it). The bounds are spam.store's.

Every write (learn, unlearn, a batch, reset, allow) is one transaction that
first locks the account's spam_stats row (SELECT ... FOR UPDATE): one
account's writers take turns, on every node, and each next statement sees
what the one before committed (READ COMMITTED), so a message trained on two
nodes at once counts once and no count is lost. Token counts change by
upserts of whole arrays (``unnest``): a statement per batch, not per token.

Statements (round trips, BEGIN and COMMIT included) per operation:
``counts`` (JunkFilter.classify) 1, the totals with the asked tokens (the
delivery path asks ``any_allowed`` first: 1 more); ``learn`` of a message
or a batch 5 (BEGIN, lock, read the trained records, write tokens, records
and totals in one, COMMIT), +1 to subtract messages trained the other way,
+2 for an account's first training, and the caps' now and then; ``unlearn``
5; ``allow``, ``reset`` 4; ``remove`` 3; the rest 1. ``has_no_file`` and
``read_nowait`` (JunkFilter.check_nowait, on the event loop) none, ever:
they answer "untrained" from memory for an account that a read here found
without statistics less than ``absent_for`` seconds ago, else "not now",
and the caller takes the blocking path in a worker thread.

The caps need the account's row counts. The schema has no counter column,
and counting on every learn would scan up to 500,000 index entries (40 ms
in the tests' PostgreSQL, half the time of a 3,000-token learn). So each
node keeps an estimate per account, counted exactly at its first write
here, when it passes a cap and at the first write after ``RECOUNT_AFTER``
seconds, and moved in between by what this node's writes inserted and
deleted. Other nodes' inserts show at the next recount: an account can pass
a cap by what all nodes insert in ``RECOUNT_AFTER`` seconds; then it is
pruned to ``PRUNE_TO`` of it (which sorts its rows: once per tenth of the
cap inserted).

Failures raise ``DatabaseError`` (an OSError): a failed query, or one past
its timeout. After one the ``Breaker`` refuses at once for ``pause``
seconds, so an outage does not make every delivery wait for a timeout;
JunkFilter logs it and answers "untrained" or "error".
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from estafeta.cluster.counters import Breaker
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop, IoLoopError
from estafeta.cluster.leases import run_query
from estafeta.log import log_event
from estafeta.spam.store import (
    ABSENT_FOR,
    ABSENT_MAX,
    MAX_ALLOW,
    MAX_ALLOW_LENGTH,
    MAX_TOKENS,
    MAX_TRAINED,
    PRUNE_TO,
    Counts,
    Outcome,
    Status,
)

log = logging.getLogger("estafeta.spam")

T = TypeVar("T")

_MAX_ENTRIES = 500  # allowlist entries looked up at once (spam.store._CHUNK)

RECOUNT_AFTER = 60.0  # seconds an account's row estimate is trusted
MAX_ESTIMATES = 4_096  # accounts whose row estimate is kept (least recently written dropped)


_CREATE = "INSERT INTO spam_stats (account) VALUES ($1) ON CONFLICT (account) DO NOTHING"
_LOCK = "SELECT nspam, nham FROM spam_stats WHERE account = $1 FOR UPDATE"
_COUNTS = """
SELECT s.nspam, s.nham, t.ids, t.spams, t.hams FROM spam_stats s, LATERAL (
    SELECT array_agg(id) AS ids, array_agg(spam) AS spams, array_agg(ham) AS hams
    FROM spam_tokens WHERE account = $1 AND id = ANY($2::bigint[])
) t WHERE s.account = $1
"""

_TRAINED = "SELECT digest, spam FROM spam_trained WHERE account = $1 AND digest = ANY($2::bytea[])"
# A learn's writes. ``old`` counts which of the ids had a row, from the
# statement's snapshot (before the upsert): the rows inserted are the rest.
_WRITE = """
WITH old AS (
    SELECT count(*) AS n FROM spam_tokens WHERE account = $1 AND id = ANY($2::bigint[])
), tokens AS (
    INSERT INTO spam_tokens AS t (account, id, spam, ham, day)
    SELECT $1, d.id, CASE WHEN $4 THEN d.n ELSE 0 END, CASE WHEN $4 THEN 0 ELSE d.n END, $5
    FROM unnest($2::bigint[], $3::integer[]) AS d (id, n)
    ON CONFLICT (account, id) DO UPDATE
    SET spam = t.spam + EXCLUDED.spam, ham = t.ham + EXCLUDED.ham, day = EXCLUDED.day
), trained AS (
    INSERT INTO spam_trained (account, digest, spam, at)
    SELECT $1, d, $4, $6 FROM unnest($7::bytea[]) AS d
    ON CONFLICT (account, digest) DO UPDATE SET spam = EXCLUDED.spam, at = EXCLUDED.at
), totals AS (
    UPDATE spam_stats SET nspam = $8, nham = $9 WHERE account = $1
)
SELECT n FROM old
"""


def _subtract_sql(column: str, other: str) -> str:
    """Take ``n`` off ``column`` of each (id, n), never below zero; a row
    left at zero in both columns is deleted (as spam.store does). The two
    parts' conditions exclude each other, so no row is changed twice in the
    one statement. Sets the totals to $4, $5 too unless they are -1.
    The column names are constants, never input."""
    empty = f"t.{column} <= d.n AND t.{other} = 0"
    return f"""
WITH d AS (SELECT * FROM unnest($2::bigint[], $3::integer[]) AS u (id, n)), gone AS (
    DELETE FROM spam_tokens t USING d WHERE t.account = $1 AND t.id = d.id AND {empty}
    RETURNING 1
), kept AS (
    UPDATE spam_tokens t SET {column} = greatest(0, t.{column} - d.n) FROM d
    WHERE t.account = $1 AND t.id = d.id AND t.{column} > 0 AND NOT ({empty})
), totals AS (
    UPDATE spam_stats SET nspam = $4, nham = $5 WHERE account = $1 AND $4 >= 0
)
SELECT count(*) FROM gone
"""  # noqa: S608


_SUBTRACT = {True: _subtract_sql("spam", "ham"), False: _subtract_sql("ham", "spam")}

_COUNT_ROWS = """SELECT (SELECT count(*) FROM spam_tokens WHERE account = $1),
    (SELECT count(*) FROM spam_trained WHERE account = $1)"""
# The least useful first: fewest messages, then oldest training (spam.store).
_PRUNE_TOKENS = """
DELETE FROM spam_tokens WHERE account = $1 AND id IN (
    SELECT id FROM spam_tokens WHERE account = $1 ORDER BY spam + ham, day, id LIMIT $2)
"""
_PRUNE_TRAINED = """
DELETE FROM spam_trained WHERE account = $1 AND digest IN (
    SELECT digest FROM spam_trained WHERE account = $1 ORDER BY at, digest LIMIT $2)
"""
_RESET = """
WITH tokens AS (DELETE FROM spam_tokens WHERE account = $1),
trained AS (DELETE FROM spam_trained WHERE account = $1)
UPDATE spam_stats SET nspam = 0, nham = 0 WHERE account = $1
"""
_STATUS = """
SELECT nspam, nham, (SELECT count(*) FROM spam_tokens t WHERE t.account = $1),
    (SELECT count(*) FROM spam_trained t WHERE t.account = $1),
    (SELECT count(*) FROM spam_allow t WHERE t.account = $1),
    (SELECT coalesce(sum(octet_length(entry)), 0) FROM spam_allow t WHERE t.account = $1)
FROM spam_stats WHERE account = $1
"""
_ALLOW = """
INSERT INTO spam_allow (account, entry, at) SELECT $1, $2, $3
WHERE EXISTS (SELECT 1 FROM spam_allow WHERE account = $1 AND entry = $2)
   OR (SELECT count(*) FROM spam_allow WHERE account = $1) < $4
ON CONFLICT (account, entry) DO UPDATE SET at = EXCLUDED.at
"""
_ANY_ALLOWED = """SELECT EXISTS (
    SELECT 1 FROM spam_allow WHERE account = $1 AND entry = ANY($2::text[])
) FROM spam_stats WHERE account = $1"""


def _rows(status: str) -> int:
    """The row count of a command tag ("DELETE 3", "INSERT 0 1")."""
    return int(status.split()[-1])


def _row(text: int, heap: int, *keys: int) -> int:
    """Octets of a row starting with the account's text (``text`` octets),
    ``heap`` more, and an entry in an index per key size: tuple headers (24,
    8), 8-alignment, line pointers (4). Index pages filled in random key
    order are about 70 % full (65 octets per spam_tokens entry, measured)."""
    size = (24 + text + heap + 7) // 8 * 8 + 4
    return size + sum(((8 + text + key + 7) // 8 * 8 + 4) * 10 // 7 for key in keys)


@dataclass
class _Estimate:
    tokens: int
    trained: int
    counted: float  # monotonic time of the exact count


class SharedTokenStore:
    """Token statistics of every account in the cluster's database; the
    same methods as ``spam.store.TokenStore`` for ``JunkFilter``."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        *,
        max_tokens: int = MAX_TOKENS,
        max_trained: int = MAX_TRAINED,
        timeout: float = 2.0,
        write_timeout: float = 30.0,
        pause: float = 5.0,
        absent_for: float = ABSENT_FOR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.io = io
        self.db = db
        self.max_tokens = max(1, max_tokens)
        self.max_trained = max(1, max_trained)
        self.timeout = timeout  # reads, on the delivery path
        self.write_timeout = write_timeout  # a batch of 50 messages, a prune
        self.breaker = Breaker(pause)
        self.absent_for = absent_for
        self.clock = clock
        # Accounts a read found without statistics (monotonic time), for
        # has_no_file. A write here bumps _writes before and after, and a
        # read notes an absence only if none ran meanwhile (no stale entry).
        self._absent: dict[str, float] = {}
        self._writes = 0
        # Row estimates (module docstring); touched on the IoLoop only.
        self._estimates: OrderedDict[str, _Estimate] = OrderedDict()

    def close(self) -> None:
        """Nothing of its own to close: the node owns the pool."""
        self._absent.clear()

    # -- plumbing ------------------------------------------------------------

    def _run(self, what: str, work: Callable[[Any], Awaitable[T]], *, write: bool = False) -> T:
        """``work(connection)`` on the IoLoop, waited for from this thread."""
        limit = self.write_timeout if write else self.timeout
        query = self.breaker.run(lambda: run_query(self.io, self.db, limit, what, work))
        try:
            return self.io.run(query)
        except IoLoopError as exc:  # stopped: the node is shutting down
            query.close()
            raise DatabaseError(f"{self.db.describe()}: cannot {what}: {exc}") from None

    def _fetch(self, what: str, method: str, sql: str, *args: Any, write: bool = False) -> Any:
        """One statement: ``conn.<method>(sql, *args)`` (fetchrow, fetch, execute)."""
        return self._run(what, lambda conn: getattr(conn, method)(sql, *args), write=write)

    def _write(self, account: str, what: str, work: Callable[[Any], Awaitable[T]]) -> T:
        """A write in one transaction; the account is no longer absent."""
        self._writes += 1
        self._absent.pop(account, None)

        async def transaction(conn: Any) -> T:
            try:
                async with conn.transaction():
                    return await work(conn)
            except BaseException:
                self._estimates.pop(account, None)  # unknown now: counted next time
                raise

        try:
            return self._run(what, transaction, write=True)
        finally:
            self._writes += 1
            self._absent.pop(account, None)

    @staticmethod
    async def _lock(conn: Any, account: str, *, create: bool = False) -> Any:
        """Lock the account's row (its writers take turns): its totals, or
        None if it has none and ``create`` is false."""
        row = await conn.fetchrow(_LOCK, account)
        if row is None and create:
            await conn.execute(_CREATE, account)
            row = await conn.fetchrow(_LOCK, account)
        return row

    def _note_absent(self, account: str, writes: int) -> None:
        if writes != self._writes:
            return  # a write here ran meanwhile: the read may be older than it
        if len(self._absent) >= ABSENT_MAX:
            self._absent.clear()
        self._absent[account] = time.monotonic()

    # -- reading -------------------------------------------------------------

    def has_no_file(self, account: str) -> bool:
        """Whether the account is known to have no statistics: from memory
        only (never a query, this is asked on the event loop). True for
        ``absent_for`` seconds after a read found none; otherwise False."""
        seen = self._absent.get(account)
        return seen is not None and time.monotonic() - seen < self.absent_for

    def read_nowait(
        self, account: str, ids: Sequence[int], entries: Sequence[str]
    ) -> tuple[bool, tuple[bool, Counts | None]]:
        """As ``TokenStore.read_nowait``, without any query: "done, no
        statistics" for an account known absent, else "not now"."""
        return self.has_no_file(account), (False, None)

    def counts(self, account: str, ids: Sequence[int]) -> Counts | None:
        """Counts for scoring; None if the account has no statistics. One
        statement; JunkFilter asks at most max_message_tokens ids."""
        writes = self._writes
        unique = list(dict.fromkeys(ids))
        row = self._fetch("read the junk-filter statistics", "fetchrow", _COUNTS, account, unique)
        if row is None:
            self._note_absent(account, writes)
            return None
        nspam, nham, found, spams, hams = row
        tokens = dict(zip(found or (), zip(spams or (), hams or (), strict=True), strict=True))
        return Counts(int(nspam), int(nham), tokens)

    def status(self, account: str) -> Status:
        """Training figures of ``account`` (zeros if it has none). ``size``
        is an estimate from the row counts (the tables are shared)."""
        path = f"postgresql:spam_stats/{account}"
        row = self._fetch("read the junk-filter status", "fetchrow", _STATUS, account)
        if row is None:
            return Status(account, 0, 0, 0, 0, 0, path)
        nspam, nham, tokens, trained, allowed, octets = (int(v) for v in row)
        # The live rows' share of tables and indexes (not dead rows, free space).
        text = 1 + len(account.encode("utf-8", "surrogatepass"))
        entry = octets // max(allowed, 1) + 1
        size = (
            _row(text, 20, 0) + tokens * _row(text, 24, 12) + trained * _row(text, 48, 33, 12)
            + allowed * _row(text, entry + 8, entry)
        )  # fmt: skip
        return Status(account, nspam, nham, tokens, trained, size, path)

    # -- the account's allowlist ---------------------------------------------

    def allow(self, account: str, entry: str) -> bool:
        """Add ``entry`` (normalised by the caller); False when the list is
        full (``MAX_ALLOW``) and the entry is not on it already."""
        if not entry or len(entry) > MAX_ALLOW_LENGTH:
            raise ValueError(f"an allowlist entry of {len(entry)} characters")
        now = self.clock()

        async def work(conn: Any) -> bool:
            await self._lock(conn, account, create=True)  # one at a time: the cap holds
            return _rows(await conn.execute(_ALLOW, account, entry, now, MAX_ALLOW)) > 0

        return self._write(account, "add to the junk-filter allowlist", work)

    def disallow(self, account: str, entry: str) -> bool:
        """Take ``entry`` off the list; False if it was not on it."""
        sql = "DELETE FROM spam_allow WHERE account = $1 AND entry = $2"
        tag = self._fetch("remove from the allowlist", "execute", sql, account, entry, write=True)
        return _rows(tag) > 0

    def allowed(self, account: str) -> list[str]:
        # COLLATE "C": byte order, as SQLite sorts (not the database's locale).
        sql = 'SELECT entry FROM spam_allow WHERE account = $1 ORDER BY entry COLLATE "C"'
        return [r[0] for r in self._fetch("read the allowlist", "fetch", sql, account)]

    def any_allowed(self, account: str, entries: Sequence[str]) -> bool:
        """Whether one of ``entries`` (one message's senders) is on the list."""
        wanted = list(dict.fromkeys(entries))[:_MAX_ENTRIES]
        if not wanted:
            return False
        writes = self._writes
        row = self._fetch("read the allowlist", "fetchrow", _ANY_ALLOWED, account, wanted)
        if row is None:
            self._note_absent(account, writes)
            return False
        return bool(row[0])

    # -- training ------------------------------------------------------------

    def learn(
        self, account: str, items: Sequence[tuple[bytes, Sequence[int]]], spam: bool
    ) -> list[Outcome]:
        """Train each (digest, token ids) as ``spam`` (or ham), all in one
        transaction: "learned", "relearned" or "unchanged" per item."""
        if not items:
            return []
        day, now = int(self.clock() // 86400), self.clock()
        digests = list(dict.fromkeys(digest for digest, _ in items))

        async def work(conn: Any) -> list[Outcome]:
            totals = list(await self._lock(conn, account, create=True))  # nspam, nham
            known = {bytes(r[0]): bool(r[1]) for r in await conn.fetch(_TRAINED, account, digests)}
            outcomes: list[Outcome] = []
            added: Counter[int] = Counter()
            taken: Counter[int] = Counter()  # off the other column: trained that way before
            written: list[bytes] = []
            for digest, ids in items:
                was = known.get(digest)
                if was == spam:
                    outcomes.append("unchanged")
                    continue
                unique = list(dict.fromkeys(ids))
                outcomes.append("learned" if was is None else "relearned")
                if was is not None:
                    taken.update(unique)
                added.update(unique)
                known[digest] = spam
                written.append(digest)
            if not written:
                return outcomes
            mine, other = (0, 1) if spam else (1, 0)
            totals[mine] += len(written)
            totals[other] -= outcomes.count("relearned")
            deleted = 0
            if taken:
                args = (list(taken), list(taken.values()), -1, -1)
                deleted = await conn.fetchval(_SUBTRACT[not spam], account, *args)
            existed = await conn.fetchval(
                _WRITE, account, list(added), list(added.values()), spam, day, now, written,
                max(totals[0], 0), max(totals[1], 0),
            )  # fmt: skip
            rows = len(added) - existed - deleted  # token rows inserted, less those emptied
            await self._bound(conn, account, rows, outcomes.count("learned"))
            return outcomes

        return self._write(account, "train the junk filter", work)

    def unlearn(self, account: str, digest: bytes, ids: Sequence[int]) -> Outcome:
        """Take back the training of one message: "unlearned", or "absent"
        if it is not remembered as trained."""
        unique = list(dict.fromkeys(ids))

        async def work(conn: Any) -> Outcome:
            row = await self._lock(conn, account)
            if row is None:
                return "absent"
            was = await conn.fetchval(
                "DELETE FROM spam_trained WHERE account = $1 AND digest = $2 RETURNING spam",
                account, digest,
            )  # fmt: skip
            if was is None:
                return "absent"
            nspam, nham = row
            nspam, nham = (max(nspam - 1, 0), nham) if was else (nspam, max(nham - 1, 0))
            deleted = await conn.fetchval(
                _SUBTRACT[bool(was)], account, unique, [1] * len(unique), nspam, nham
            )
            await self._bound(conn, account, -int(deleted), -1)
            return "unlearned"

        return self._write(account, "untrain the junk filter", work)

    def reset(self, account: str) -> None:
        """Forget all training of ``account``: its token counts and trained
        records; the account's row (zeroed) and its allowlist stay, as in
        ``TokenStore.reset``. Nothing is made for an account without any."""

        async def work(conn: Any) -> None:
            if await self._lock(conn, account) is None:
                return
            await conn.execute(_RESET, account)
            self._estimates.pop(account, None)  # counted (nothing) at the next write

        self._write(account, "reset the junk filter", work)

    def remove(self, account: str) -> list[Path]:
        """Delete everything of ``account`` (``estafeta user erase``): its
        row, and with it (ON DELETE CASCADE) tokens, trained records and
        allowlist. No files: always []."""

        async def work(conn: Any) -> None:
            await conn.execute("DELETE FROM spam_stats WHERE account = $1", account)
            self._estimates.pop(account, None)

        self._write(account, "remove the junk-filter statistics", work)
        return []

    async def _bound(self, conn: Any, account: str, tokens: int, trained: int) -> None:
        """Keep the account under both caps (in the caller's transaction,
        under the account's lock), given the rows its write added."""
        estimate = self._estimates.pop(account, None)
        now = time.monotonic()
        if estimate is not None:
            estimate.tokens += tokens
            estimate.trained += trained
        if (
            estimate is None
            or now - estimate.counted >= RECOUNT_AFTER
            or estimate.tokens > self.max_tokens
            or estimate.trained > self.max_trained
        ):
            counted_tokens, counted_trained = await conn.fetchrow(_COUNT_ROWS, account)
            estimate = _Estimate(int(counted_tokens), int(counted_trained), now)
        if estimate.tokens > self.max_tokens:
            excess = estimate.tokens - int(self.max_tokens * PRUNE_TO)
            removed = _rows(await conn.execute(_PRUNE_TOKENS, account, excess))
            estimate.tokens -= removed
            log_event(log, "spam_tokens_pruned", account=account, removed=removed)
        if estimate.trained > self.max_trained:
            excess = estimate.trained - int(self.max_trained * PRUNE_TO)
            removed = _rows(await conn.execute(_PRUNE_TRAINED, account, excess))
            estimate.trained -= removed
            log_event(log, "spam_trained_pruned", account=account, removed=removed)
        self._estimates[account] = estimate  # the most recently written last
        while len(self._estimates) > MAX_ESTIMATES:
            self._estimates.popitem(last=False)
