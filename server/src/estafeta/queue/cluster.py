"""The outbound queue of a cluster: one queue in PostgreSQL for every node.

Tables (``estafeta.cluster.schema``, migration 2)::

    queue_messages   a queued message: envelope, and the message itself (bytea)
    queue_entries    one per message and destination domain: recipients,
                     retry state, and the claim of the node attempting it
    queue_mta_sts    the MTA-STS policy cache (rfc8461:5.1), shared by the nodes

``ClusterQueueStore`` has the local ``QueueStore``'s interface
(``QueueBackend``), with synchronous methods that run their queries on the
cluster's IoLoop, each bounded by ``timeout``. A database that cannot be
reached raises ``QueueDatabaseError`` (a ``DatabaseError`` naming the URL,
and a ``QueueUnavailable``: the runner tries again later).

Claims. ``due`` claims what it returns, in one statement: ``UPDATE ... WHERE
id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` sets ``claimed_by`` (this node),
``claim`` (a token new for each call) and ``lease_until`` (``lease`` seconds
on). Nodes asking at once skip each other's locked rows, so each entry goes
to one of them; an entry whose lease has not run out is not offered. Every
write of a node about an entry (``settle``, ``reschedule``, ``remove``,
``renew``, ``release``) needs its claim and carries the token in its WHERE
clause: once another node has claimed the entry, the token no longer matches
and the write does nothing and says so (False), so a slow node never
records, removes or bounces an entry another node is attempting. A lapsed
claim that nobody has taken again still writes: no other node attempted the
entry, and recording the attempt is what keeps it from being delivered
twice. (The row lock orders such a write against another node's ``due``:
whichever comes second sees the first's result.) A command-line tool's store
(``tool=True``, ``estafeta queue delete``) claims nothing and removes an
entry whoever is attempting it: the operator's word wins, as with the local
queue, and the attempt's settlement is then refused. ``flush`` leaves claims
alone.

Clocks. ``next_attempt`` is the runner's clock in POSIX seconds (as in the
local store); leases are the database's clock (``clock_timestamp()``), so
nodes whose clocks disagree still agree on who holds what.

Crash ordering. ``enqueue`` writes the message and its entries in one
transaction, committed before it returns (the SMTP ``250`` follows it).
``settle`` writes the entry's new state (or deletes it) and queues the DSNs
of the attempt in one transaction, conditional on the claim: the DSN is
queued exactly once, by the node whose record of the attempt counts. A node
that dies holding claims leaves them to lapse; after ``lease_until``
another node's ``due`` claims them. What the dead node delivered but had
not recorded is delivered again (the duplicate of rfc1047, which SMTP
accepts over a loss; ``renew`` keeps live attempts' leases from lapsing).
The last entry of a message takes the message with it, under the message
row's lock (``FOR UPDATE``), so two nodes removing its last two entries at
once cannot both leave it behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from estafeta.cluster.database import UNREACHABLE, Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.log import log_event
from estafeta.queue.store import (
    HEADER_PEEK,
    Bounce,
    Entry,
    QueueBackend,
    QueueUnavailable,
    address_matcher,
    header_names,
    new_id,
    plan_entries,
)

log = logging.getLogger("estafeta.queue")

T = TypeVar("T")

# SQLSTATE classes that mean "not now": connection exception, insufficient
# resources, operator intervention (a restart), system error; and a
# transaction rollback (serialization failure, deadlock). Others are bugs.
TRANSIENT = ("08", "40", "53", "57", "58")
# Messages whose header forget_address reads per query (HEADER_PEEK each).
PEEK_BATCH = 100

_SELECT = (
    "SELECT e.id, e.message_id, m.sender, e.domain, e.recipients, m.created, m.size,"
    " e.attempts, e.next_attempt, e.last_error, e.warned"
    " FROM queue_entries e JOIN queue_messages m ON m.id = e.message_id"
)


class QueueDatabaseError(DatabaseError, QueueUnavailable):
    """The queue's database cannot be reached; the message names its URL."""


def _entry(row: Any) -> Entry:
    return Entry(
        id=row["id"],
        message_id=row["message_id"],
        sender=row["sender"],
        domain=row["domain"],
        recipients=tuple(row["recipients"]),
        created=float(row["created"]),
        size=int(row["size"]),
        attempts=int(row["attempts"]),
        next_attempt=float(row["next_attempt"]),
        last_error=row["last_error"],
        warned=bool(row["warned"]),
    )


class ClusterQueueStore:
    """The queue in the cluster's database, seen from node ``node``.

    ``db`` is opened on ``io`` (asyncpg pools belong to their loop); the
    methods block, so call them from a thread (``asyncio.to_thread``), never
    from ``io``'s own. ``lease``: how long a claim of ``due`` lasts unless
    renewed. ``tool``: the store of a command-line tool, whose ``remove``
    needs no claim. ``close`` leaves ``db`` and ``io`` open: their owner
    closes them."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        node: str,
        lease: float = 300.0,
        *,
        timeout: float = 60.0,
        tool: bool = False,
    ) -> None:
        if not node:
            raise ValueError("a node needs a name")
        if not lease > 0:
            raise ValueError("the lease must be positive")
        self.io = io
        self.db = db
        self.node = node
        self.lease = lease
        self.timeout = timeout
        self.tool = tool
        # Entry id -> the token of this store's claim of it (due ... settle).
        self._claims: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------

    def _run(self, what: str, make: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """``make(pool)`` awaited on the IoLoop, bounded by ``timeout``;
        QueueDatabaseError if the database cannot do it now."""
        return self.io.run(self._bounded(what, make))

    async def _bounded(self, what: str, make: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await make(self.db.pool)
        except QueueDatabaseError:
            raise
        except DatabaseError as exc:
            raise QueueDatabaseError(str(exc)) from None
        except UNREACHABLE as exc:
            raise QueueDatabaseError(str(self.db.error(what, exc))) from None
        except asyncpg.PostgresError as exc:
            if str(exc.sqlstate or "")[:2] in TRANSIENT:
                raise QueueDatabaseError(str(self.db.error(what, exc))) from None
            raise

    def _token(self, entry_id: str) -> str | None:
        with self._lock:
            return self._claims.get(entry_id)

    def _drop(self, entry_ids: Iterable[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                self._claims.pop(entry_id, None)

    def close(self) -> None:
        """Give up the claims still held (attempts abandoned), best effort."""
        with self._lock:
            held = list(self._claims)
        if held:
            with contextlib.suppress(QueueUnavailable):
                self.release(held)

    # -- writing --------------------------------------------------------------

    async def _insert(
        self,
        conn: Any,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        envelope_id: str | None,
        now: float,
    ) -> list[Entry]:
        message_id = new_id()
        entries = plan_entries(message_id, sender, recipients, len(data), now)
        await conn.execute(
            "INSERT INTO queue_messages (id, sender, size, created, envelope_id, data)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            message_id,
            sender,
            len(data),
            now,
            envelope_id,
            data,
        )
        await conn.executemany(
            "INSERT INTO queue_entries (id, message_id, domain, recipients, next_attempt)"
            " VALUES ($1, $2, $3, $4, $5)",
            [(e.id, message_id, e.domain, list(e.recipients), now) for e in entries],
        )
        return entries

    def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        envelope_id: str | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        """Store a message for remote delivery, one entry per recipient
        domain, committed when this returns."""
        if not recipients:
            raise ValueError("no recipients")
        at = time.time() if now is None else now

        async def run(_: asyncpg.Pool) -> list[Entry]:
            async with self.db.transaction() as conn:
                return await self._insert(conn, sender, recipients, data, envelope_id, at)

        return self._run("queue a message", run)

    async def _delete(self, conn: Any, entry_id: str, token: str | None) -> bool:
        """Delete an entry (only under ``token``'s claim, when given), and
        its message with its last entry. Locks the message row first."""
        message_id = await conn.fetchval(
            "SELECT message_id FROM queue_entries WHERE id = $1", entry_id
        )
        if message_id is None:
            return False
        await conn.execute("SELECT 1 FROM queue_messages WHERE id = $1 FOR UPDATE", message_id)
        if token is None:
            deleted = await conn.fetchval(
                "DELETE FROM queue_entries WHERE id = $1 RETURNING id", entry_id
            )
        else:
            deleted = await conn.fetchval(
                "DELETE FROM queue_entries WHERE id = $1 AND claimed_by = $2 AND claim = $3"
                " RETURNING id",
                entry_id,
                self.node,
                token,
            )
        if deleted is None:
            return False
        await conn.execute(
            "DELETE FROM queue_messages WHERE id = $1"
            " AND NOT EXISTS (SELECT 1 FROM queue_entries WHERE message_id = $1)",
            message_id,
        )
        return True

    def settle(
        self,
        entry_id: str,
        *,
        recipients: Sequence[str],
        next_attempt: float,
        error: str,
        warned: bool | None = None,
        bounces: Sequence[Bounce] = (),
    ) -> bool:
        """After an attempt of a claimed entry: the recipients still to try
        and when (none: the entry goes), and its DSNs, in one transaction
        under the claim, which it releases. False, and nothing written, when
        the claim is not this store's (lost to another node, or never had)."""
        token = self._token(entry_id)
        if token is None:
            log_event(log, "queue_not_claimed", logging.WARNING, id=entry_id, node=self.node)
            return False
        now = time.time()

        async def run(_: asyncpg.Pool) -> bool:
            async with self.db.transaction() as conn:
                if recipients:
                    status = await conn.execute(
                        "UPDATE queue_entries SET recipients = $4, attempts = attempts + 1,"
                        " next_attempt = $5, last_error = $6, warned = coalesce($7, warned),"
                        " claimed_by = NULL, claim = NULL, lease_until = NULL"
                        " WHERE id = $1 AND claimed_by = $2 AND claim = $3",
                        entry_id,
                        self.node,
                        token,
                        list(recipients),
                        next_attempt,
                        error,
                        warned,
                    )
                    done = status == "UPDATE 1"
                else:
                    done = await self._delete(conn, entry_id, token)
                if not done:
                    return False
                for bounce in bounces:
                    await self._insert(conn, "", [bounce.to], bounce.data, None, now)
                return True

        settled = self._run("settle a queue entry", run)
        self._drop([entry_id])
        if not settled:
            log_event(log, "queue_claim_lost", logging.WARNING, id=entry_id, node=self.node)
        return settled

    def reschedule(
        self,
        entry_id: str,
        *,
        recipients: Sequence[str],
        next_attempt: float,
        error: str,
        warned: bool | None = None,
    ) -> bool:
        """``settle`` without DSNs."""
        return self.settle(
            entry_id, recipients=recipients, next_attempt=next_attempt, error=error, warned=warned
        )

    def remove(self, entry_id: str) -> bool:
        """Drop an entry (its message goes with its last entry): a node's
        under its claim, a tool's whoever attempts it."""
        token = self._token(entry_id)
        if token is None and not self.tool:
            log_event(log, "queue_not_claimed", logging.WARNING, id=entry_id, node=self.node)
            return False

        async def run(_: asyncpg.Pool) -> bool:
            async with self.db.transaction() as conn:
                return await self._delete(conn, entry_id, token)

        removed = self._run("remove a queue entry", run)
        if token is not None:
            self._drop([entry_id])
            if not removed:
                log_event(log, "queue_claim_lost", logging.WARNING, id=entry_id, node=self.node)
        return removed

    def renew(self, entry_ids: Collection[str]) -> set[str]:
        """Extend the leases of this store's claims among ``entry_ids``
        (attempts still running); the ids whose claim another node has taken
        (their settlement will be refused). Ids it holds no claim of (never,
        or settled meanwhile) are left alone."""
        with self._lock:
            held = [(i, self._claims[i]) for i in entry_ids if i in self._claims]
        if not held:
            return set()
        rows = self._run(
            "renew queue claims",
            lambda pool: pool.fetch(
                "UPDATE queue_entries e"
                " SET lease_until = clock_timestamp() + make_interval(secs => $4)"
                " FROM unnest($1::text[], $2::text[]) AS c(id, claim)"
                " WHERE e.id = c.id AND e.claim = c.claim AND e.claimed_by = $3"
                " RETURNING e.id",
                [i for i, _ in held],
                [t for _, t in held],
                self.node,
                self.lease,
            ),
        )
        renewed = {row["id"] for row in rows}
        with self._lock:  # not those settled while this ran
            return {i for i, token in held if i not in renewed and self._claims.get(i) == token}

    def release(self, entry_ids: Collection[str]) -> None:
        """Give up claims (attempts not made): the entries are due again for
        any node at once."""
        with self._lock:
            held = [(i, self._claims[i]) for i in entry_ids if i in self._claims]
        if not held:
            return
        self._run(
            "release queue claims",
            lambda pool: pool.execute(
                "UPDATE queue_entries e SET claimed_by = NULL, claim = NULL, lease_until = NULL"
                " FROM unnest($1::text[], $2::text[]) AS c(id, claim)"
                " WHERE e.id = c.id AND e.claim = c.claim AND e.claimed_by = $3",
                [i for i, _ in held],
                [t for _, t in held],
                self.node,
            ),
        )
        self._drop(i for i, _ in held)

    def flush(self, entry_id: str | None = None, now: float | None = None) -> int:
        """Make entries due now (claims stay: an attempt running goes on);
        returns how many."""
        at = time.time() if now is None else now
        if entry_id is None:
            status = self._run(
                "flush the queue",
                lambda pool: pool.execute("UPDATE queue_entries SET next_attempt = $1", at),
            )
        else:
            status = self._run(
                "flush the queue",
                lambda pool: pool.execute(
                    "UPDATE queue_entries SET next_attempt = $1 WHERE id = $2", at, entry_id
                ),
            )
        return int(status.split()[-1])

    # -- erasure ------------------------------------------------------------

    def forget_address(
        self, address: str, separator: str | None = "+", now: float | None = None
    ) -> tuple[int, int]:
        """Take ``address`` out of the queue, as ``QueueStore.forget_address``
        does: (messages deleted, entries it was taken out of). The rows go in
        one transaction, then a VACUUM makes their space reusable; copies
        stay in PostgreSQL's WAL and backups until those are recycled. An
        attempt in flight meanwhile may write its old recipient list back:
        erase again once it is done."""
        del now  # no files, so no crash leftovers to age
        wanted = address.lower()
        is_address = address_matcher(address, separator)
        return self._run(
            "erase an address from the queue", lambda pool: self._forget(pool, wanted, is_address)
        )

    async def _forget(
        self, pool: asyncpg.Pool, wanted: str, is_address: Callable[[str], bool]
    ) -> tuple[int, int]:
        rows = await pool.fetch(
            "SELECT e.id, e.message_id, m.sender, e.recipients, e.last_error"
            " FROM queue_entries e JOIN queue_messages m ON m.id = e.message_id"
        )
        doomed = {r["message_id"] for r in rows if is_address(r["sender"])}
        unread = sorted({r["message_id"] for r in rows} - doomed)
        for start in range(0, len(unread), PEEK_BATCH):
            heads = await pool.fetch(
                "SELECT id, sender, substring(data FROM 1 FOR $2) AS head"
                " FROM queue_messages WHERE id = ANY($1::text[])",
                unread[start : start + PEEK_BATCH],
                HEADER_PEEK,
            )
            for head in heads:
                if header_names(bytes(head["head"]), not head["sender"], is_address):
                    doomed.add(head["id"])
        changes: list[tuple[str, str, list[str], str]] = []
        for row in rows:
            if row["message_id"] in doomed:
                continue
            recipients = list(row["recipients"])
            kept = [r for r in recipients if not is_address(r)]
            if len(kept) != len(recipients):
                error = "" if wanted in row["last_error"].lower() else row["last_error"]
                changes.append((row["id"], row["message_id"], kept, error))
        if not doomed and not changes:
            return 0, 0
        touched = sorted(doomed | {message_id for _, message_id, _, _ in changes})
        async with self.db.transaction() as conn:
            # Message rows first, in one order: as _delete does.
            await conn.execute(
                "SELECT 1 FROM queue_messages WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                touched,
            )
            await conn.execute(
                "DELETE FROM queue_messages WHERE id = ANY($1::text[])", sorted(doomed)
            )
            for entry_id, _, kept, error in changes:
                if kept:
                    await conn.execute(
                        "UPDATE queue_entries SET recipients = $2, last_error = $3 WHERE id = $1",
                        entry_id,
                        kept,
                        error,
                    )
                else:
                    await conn.execute("DELETE FROM queue_entries WHERE id = $1", entry_id)
            await conn.execute(
                "DELETE FROM queue_messages m WHERE m.id = ANY($1::text[])"
                " AND NOT EXISTS (SELECT 1 FROM queue_entries e WHERE e.message_id = m.id)",
                touched,
            )
        try:
            await pool.execute("VACUUM queue_messages, queue_entries")
        except asyncpg.PostgresError as exc:  # not the tables' owner: the rows are gone anyway
            log_event(log, "queue_vacuum_failed", logging.WARNING, error=str(exc))
        return len(doomed), len(changes)

    # -- reading --------------------------------------------------------------

    def depth(self) -> tuple[int, float | None]:
        """Entries waiting, and the creation time of the oldest message."""
        row = self._run(
            "count the queue",
            lambda pool: pool.fetchrow(
                "SELECT count(*) AS n, min(m.created) AS oldest"
                " FROM queue_entries e JOIN queue_messages m ON m.id = e.message_id"
            ),
        )
        oldest = row["oldest"]
        return int(row["n"]), (float(oldest) if oldest is not None else None)

    def entries(self) -> list[Entry]:
        rows = self._run(
            "list the queue", lambda pool: pool.fetch(_SELECT + " ORDER BY m.created, e.domain")
        )
        return [_entry(row) for row in rows]

    def get(self, entry_id: str) -> Entry | None:
        row = self._run(
            "read a queue entry", lambda pool: pool.fetchrow(_SELECT + " WHERE e.id = $1", entry_id)
        )
        return _entry(row) if row else None

    def due(self, now: float, exclude: set[str], limit: int) -> list[Entry]:
        """Claim up to ``limit`` entries due at ``now`` that nobody holds
        (or whose lease ran out), but those in ``exclude``; earliest first."""
        if limit <= 0:
            return []
        token = secrets.token_hex(16)
        rows = self._run(
            "claim queue entries",
            lambda pool: pool.fetch(
                "WITH picked AS ("
                " SELECT id FROM queue_entries"
                " WHERE next_attempt <= $1"
                " AND (lease_until IS NULL OR lease_until < clock_timestamp())"
                " AND NOT (id = ANY($2::text[]))"
                " ORDER BY next_attempt LIMIT $3"
                " FOR UPDATE SKIP LOCKED)"
                " UPDATE queue_entries e SET claimed_by = $4, claim = $5,"
                " lease_until = clock_timestamp() + make_interval(secs => $6)"
                " FROM picked, queue_messages m"
                " WHERE e.id = picked.id AND m.id = e.message_id"
                " RETURNING e.id, e.message_id, m.sender, e.domain, e.recipients, m.created,"
                " m.size, e.attempts, e.next_attempt, e.last_error, e.warned",
                now,
                sorted(exclude),
                limit,
                self.node,
                token,
                self.lease,
            ),
        )
        entries = sorted((_entry(row) for row in rows), key=lambda e: (e.next_attempt, e.id))
        with self._lock:
            for entry in entries:
                self._claims[entry.id] = token
        return entries

    def next_due(self) -> float | None:
        value = self._run(
            "read the queue",
            lambda pool: pool.fetchval("SELECT min(next_attempt) FROM queue_entries"),
        )
        return None if value is None else float(value)

    def read_message(self, message_id: str) -> bytes:
        """The message; FileNotFoundError if it is gone (as the local store's
        file would be)."""
        data = self._run(
            "read a queued message",
            lambda pool: pool.fetchval("SELECT data FROM queue_messages WHERE id = $1", message_id),
        )
        if data is None:
            raise FileNotFoundError(f"queued message {message_id} is gone")
        return bytes(data)

    def envelope_id(self, message_id: str) -> str | None:
        value = self._run(
            "read a queued message",
            lambda pool: pool.fetchval(
                "SELECT envelope_id FROM queue_messages WHERE id = $1", message_id
            ),
        )
        return None if value is None else str(value)

    # -- MTA-STS policy cache (rfc8461:5.1: survives restarts) -------------

    def sts_get(self, domain: str) -> str | None:
        value = self._run(
            "read the MTA-STS cache",
            lambda pool: pool.fetchval(
                "SELECT policy FROM queue_mta_sts WHERE domain = $1", domain
            ),
        )
        return None if value is None else str(value)

    def sts_put(self, domain: str, policy: str) -> None:
        self._run(
            "write the MTA-STS cache",
            lambda pool: pool.execute(
                "INSERT INTO queue_mta_sts (domain, policy) VALUES ($1, $2)"
                " ON CONFLICT (domain) DO UPDATE SET policy = excluded.policy",
                domain,
                policy,
            ),
        )


if TYPE_CHECKING:
    _backend: type[QueueBackend] = ClusterQueueStore
