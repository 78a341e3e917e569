"""SQLite replicas of scopes held in PostgreSQL (docs/scale.md, "Replicas").

A node keeps, for each account it serves, a SQLite database with the local
backend's schema: the same index the local store has, so every IMAP, POP3
and Sieve read runs the local backend's queries unchanged. PostgreSQL holds
the truth: each replicated row is a row of ``mail_rows`` (its primary key
as a JSON array, its columns as JSON), and each scope has a version that
goes up by one per committed write.

A write (``Replica.write``) runs the local backend's own operation on the
replica, under the scope's row lock in PostgreSQL:

1. one round trip takes the lock (an upsert of the scope row) and returns
   the version; rows newer than the replica's are pulled first, inside the
   same transaction, so the operation sees every earlier write of any node;
2. the replica is marked dirty (a local commit), then the operation runs;
   temporary triggers note the key of every row it inserts, updates or
   deletes (``replica_changes``);
3. those rows are read back (one join per table) and shipped with the next
   version in one statement, the scope's version is raised and
   ``pg_notify`` tells the other nodes; then PostgreSQL commits;
4. the replica takes the new version and is clean again.

UIDs, modseqs and quota are decided in step 2, under the lock, so they are
atomic per account across nodes. If PostgreSQL fails before its commit the
replica is rebuilt from PostgreSQL (a whole pull); a crash between 2 and 4
leaves the dirty mark, and the next use rebuilds it the same way, so a
replica never keeps a change PostgreSQL does not have.

Pulls (``Replica.sync``) read the rows above the replica's version in one
snapshot. Deleted rows stay as tombstones (``row`` NULL) until ``prune``
removes old ones and raises the scope's ``pruned`` mark; a replica below
that mark, new, or dirty, pulls the whole scope, in batches.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.schema import CHANNEL

T = TypeVar("T")

log = logging.getLogger("estafeta.cluster")

PULL_BATCH = 2000
"""Rows read from PostgreSQL per round trip when a replica pulls."""
SHIP_BATCH = 5000
"""Rows sent to PostgreSQL per statement when a write ships its changes."""
KEEP_TOMBSTONES = 10_000
"""Versions of tombstones ``prune`` keeps per scope: a replica fewer than
this many writes behind catches up row by row; one further behind pulls
the whole scope."""


Change = tuple[str, str, str | None]
"""(table, key as a JSON array, row as JSON or None: deleted)."""


def notice(origin: str, scope: str) -> str:
    """The NOTIFY payload of a write: who wrote (``Database.origin``) and what."""
    return f"{origin}:{scope}"


def _columns(chunk: Sequence[Change]) -> tuple[list[str], list[str], list[str | None]]:
    return [c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk]


class ReplicaError(Exception):
    """PostgreSQL could not take or give a scope's rows."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]  # the stored columns (generated ones are left out)
    key: tuple[str, ...]  # the primary key


def describe(conn: sqlite3.Connection, names: Sequence[str]) -> list[Table]:
    """The replicated tables as the SQLite schema has them now, so a new
    column of the local schema is carried without a change here."""
    tables = []
    for name in names:
        info = conn.execute(f"PRAGMA main.table_xinfo({name})").fetchall()
        if not info:
            raise ReplicaError(f"no table {name!r} in the replica")
        columns = tuple(row[1] for row in info if row[6] == 0)  # hidden 0: stored
        key = tuple(row[1] for row in sorted(info, key=lambda r: r[5]) if row[5] > 0)
        if not key:
            raise ReplicaError(f"table {name!r} has no primary key to replicate by")
        tables.append(Table(name, columns, key))
    return tables


def encode_row(columns: Sequence[str], values: Sequence[Any]) -> str:
    """A row as the JSON of ``mail_rows.row``: bytes as {"$b": base64}."""
    row = {}
    for column, value in zip(columns, values, strict=True):
        if isinstance(value, bytes):
            value = {"$b": base64.b64encode(value).decode()}
        row[column] = value
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def decode_row(text: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(text)
    for column, value in row.items():
        if isinstance(value, dict):
            row[column] = base64.b64decode(value["$b"])
    return row


_SCOPE = "SELECT version, pruned FROM mail_scopes WHERE scope = $1"

_STATE = """
CREATE TABLE IF NOT EXISTS replica_state (
    scope TEXT PRIMARY KEY,
    version INTEGER NOT NULL,             -- the last version of PostgreSQL's applied
    dirty INTEGER NOT NULL                -- 1: a write may hold changes PostgreSQL lacks
)
"""


class Replica:
    """One scope's SQLite replica. Not thread-safe: one thread at a time
    (the store's writer thread) writes and pulls; readers use their own
    connections to the same file (WAL)."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        scope: str,
        conn: sqlite3.Connection,
        tables: Sequence[str],
    ) -> None:
        self.io = io
        self.db = db
        self.scope = scope
        self.conn = conn
        self.tables = describe(conn, tables)
        self._by_name = {table.name: table for table in self.tables}
        self._recording = False
        self.pulled_whole = 0  # whole pulls done (for tests and metrics)
        # The replica is a copy: a commit lost to a power failure is pulled
        # again (the WAL keeps commits in order, so the dirty mark of a
        # write is never lost while its changes survive).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_STATE)
        conn.create_function("replica_recording", 0, lambda: self._recording)
        # No unique key: an outer upsert's conflict handling would override
        # the triggers' OR IGNORE (sqlite.org/lang_createtrigger.html); the
        # read-back takes each key once.
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS replica_changes (tbl TEXT NOT NULL, key TEXT NOT NULL)"
        )
        conn.execute(
            "CREATE INDEX IF NOT EXISTS temp.replica_changes_key ON replica_changes (tbl, key)"
        )
        for table in self.tables:
            self._triggers(table)
        conn.execute(
            "INSERT OR IGNORE INTO replica_state (scope, version, dirty) VALUES (?, 0, 1)",
            (scope,),
        )
        # A replica made now (dirty, version 0) pulls everything on first use.

    # -- state -------------------------------------------------------------------

    def _triggers(self, table: Table) -> None:
        def key(row: str) -> str:
            return "json_array(" + ", ".join(f"{row}.{column}" for column in table.key) + ")"

        note = "INSERT INTO replica_changes (tbl, key) VALUES ('{tbl}', {key});"
        for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("OLD", "NEW")), ("DELETE", ("OLD",))):
            body = " ".join(note.format(tbl=table.name, key=key(row)) for row in rows)
            self.conn.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS replica_{table.name}_{event.lower()}"
                f" AFTER {event} ON main.{table.name} WHEN replica_recording()"
                f" BEGIN {body} END"
            )

    def state(self) -> tuple[int, bool]:
        """(version, dirty) of the replica."""
        row = self.conn.execute(
            "SELECT version, dirty FROM replica_state WHERE scope = ?", (self.scope,)
        ).fetchone()
        return int(row[0]), bool(row[1])

    @property
    def version(self) -> int:
        return self.state()[0]

    def _set_state(self, version: int, dirty: bool) -> None:
        self.conn.execute(
            "UPDATE replica_state SET version = ?, dirty = ? WHERE scope = ?",
            (version, int(dirty), self.scope),
        )

    @contextmanager
    def _local(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("PRAGMA defer_foreign_keys = ON")
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # -- pulling -----------------------------------------------------------------
    # SQLite work runs in the caller's thread; only PostgreSQL's round trips
    # go to the IoLoop, so a large pull never holds up other accounts' I/O.

    def sync(self) -> bool:
        """Bring the replica up to PostgreSQL's version; whether it changed."""
        version, dirty = self.state()
        row = self._run(self.db.pool.fetchrow(_SCOPE, self.scope))
        remote = 0 if row is None else int(row[0])
        if (not dirty and version == remote) or remote == 0:
            return False  # up to date, or nothing in PostgreSQL yet (see write)
        conn, transaction = self._run(self._begin_read())
        try:
            row = self._run(
                conn.fetchrow(
                    "SELECT version, pruned FROM mail_scopes WHERE scope = $1", self.scope
                )
            )
            remote, pruned = (0, 0) if row is None else (int(row[0]), int(row[1]))
            self._pull(conn, version, dirty, remote, pruned)
        finally:
            self._run(self._end(conn, transaction))
        return True

    async def _begin_read(self) -> tuple[Any, Any]:
        conn = await self.db.pool.acquire()
        try:
            transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            await transaction.start()
        except BaseException:
            await self.db.pool.release(conn)
            raise
        return conn, transaction

    def _pull(self, conn: Any, version: int, dirty: bool, remote: int, pruned: int) -> None:
        """Bring the replica from ``version`` to ``remote`` over ``conn``
        (in a transaction that sees ``remote``)."""
        if not dirty and version == remote:
            return
        if dirty or version < pruned or version > remote:
            self._whole(conn, remote)
            return
        rows = self._run(
            conn.fetch(
                "SELECT tbl, key, row::text FROM mail_rows"
                " WHERE scope = $1 AND version > $2 ORDER BY version",
                self.scope,
                version,
            )
        )
        try:
            self._apply(rows, remote)
        except sqlite3.IntegrityError as exc:
            # Rows in version order may still clash on a unique column for a
            # moment (a name given up and taken again in between): rebuild.
            log.info("replica %s: rebuilding after %s", self.scope, exc)
            self._whole(conn, remote)

    def _apply(self, rows: Sequence[Any], remote: int) -> None:
        with self._local():
            for tbl, key, text in rows:
                table = self._by_name.get(tbl)
                if table is None:
                    continue  # a table a newer node replicates and this one lacks
                if text is None:
                    values = json.loads(key)
                    where = " AND ".join(f"{column} = ?" for column in table.key)
                    self.conn.execute(f"DELETE FROM {tbl} WHERE {where}", values)  # noqa: S608
                else:
                    self._upsert(table, decode_row(text))
            self._set_state(remote, False)

    def _upsert(self, table: Table, row: dict[str, Any]) -> None:
        columns = [column for column in table.columns if column in row]
        updates = [column for column in columns if column not in table.key]
        action = (
            "UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in updates)
            if updates
            else "NOTHING"
        )
        self.conn.execute(
            f"INSERT INTO {table.name} ({', '.join(columns)})"  # noqa: S608
            f" VALUES ({', '.join('?' * len(columns))})"
            f" ON CONFLICT ({', '.join(table.key)}) DO {action}",
            [row[column] for column in columns],
        )

    def _whole(self, conn: Any, remote: int) -> None:
        """Every row of the scope, PULL_BATCH at a time, replacing the replica's."""

        async def open_cursor() -> Any:
            return await conn.cursor(
                "SELECT tbl, row::text FROM mail_rows WHERE scope = $1 AND row IS NOT NULL",
                self.scope,
            )

        cursor = self._run(open_cursor())
        with self._local():
            for table in reversed(self.tables):
                self.conn.execute(f"DELETE FROM {table.name}")  # noqa: S608
            while batch := self._run(cursor.fetch(PULL_BATCH)):
                for tbl, text in batch:
                    known = self._by_name.get(tbl)
                    if known is not None:
                        self._upsert(known, decode_row(text))
            self._set_state(remote, False)
        self.pulled_whole += 1

    # -- writing -----------------------------------------------------------------

    def write(
        self,
        function: Callable[[], T],
        before_commit: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
    ) -> T:
        """Run ``function`` (local SQLite work on ``conn``) as one write of
        the scope (``writing``)."""
        with self.writing(before_commit):
            result = function()
        return result

    @contextmanager
    def writing(
        self, before_commit: Callable[[Any], Coroutine[Any, Any, None]] | None = None
    ) -> Iterator[None]:
        """The block's local SQLite work on ``conn`` as one write of the
        scope: under its lock, after a pull, shipped before the block is
        left. ``before_commit(conn)`` runs in the same PostgreSQL
        transaction after the rows are shipped, when there were any
        (pinning their bodies). An exception of the block is raised after
        what it committed locally before failing is shipped (the local
        backend would keep that too)."""
        conn, transaction, remote, pruned = self._run(self._begin())
        shipped = ending = False
        failed: Exception | None = None
        try:
            version, dirty = self.state()
            if remote == 0 and dirty:
                # PostgreSQL has nothing of this scope: what the replica
                # holds (a new index's mailboxes) is its first version.
                self._mark_all()
            else:
                self._pull(conn, version, dirty, remote, pruned)
            self._set_state(remote, True)
            self._recording = True
            try:
                yield
            except Exception as exc:
                failed = exc
            finally:
                self._recording = False
            changes = self._changes()
            if changes:
                self._run(self._ship(conn, changes, remote + 1))
                shipped = True
                if before_commit is not None:
                    self._run(before_commit(conn))
            ending = True  # _end gives the connection back whatever happens
            self._run(self._end(conn, transaction, commit=True))
        except BaseException:
            self._recording = False
            if not ending:
                self._run(self._end(conn, transaction))
            self._recover()
            raise
        with self._local():
            self._set_state(remote + 1 if shipped else remote, False)
            self.conn.execute("DELETE FROM temp.replica_changes")
        if failed is not None:
            raise failed

    def _mark_all(self) -> None:
        for table in self.tables:
            key = ", ".join(table.key)
            self.conn.execute(
                "INSERT INTO temp.replica_changes (tbl, key)"  # noqa: S608
                f" SELECT ?, json_array({key}) FROM main.{table.name}",
                (table.name,),
            )

    async def _begin(self) -> tuple[Any, Any, int, int]:
        conn = await self.db.pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
            # The upsert takes the scope row's lock, as FOR UPDATE would.
            row = await conn.fetchrow(
                "INSERT INTO mail_scopes AS s (scope) VALUES ($1)"
                " ON CONFLICT (scope) DO UPDATE SET version = s.version"
                " RETURNING version, pruned",
                self.scope,
            )
        except BaseException:
            await self.db.pool.release(conn)
            raise
        return conn, transaction, int(row[0]), int(row[1])

    async def _end(self, conn: Any, transaction: Any, commit: bool = False) -> None:
        """Commit (or roll back) and give the connection back. A failed
        commit raises; a failed rollback does not (the connection goes)."""
        try:
            if commit:
                await transaction.commit()
            else:
                try:
                    await transaction.rollback()
                except Exception:  # the connection is broken: the pool drops it
                    with contextlib.suppress(Exception):
                        conn.terminate()
        finally:
            with contextlib.suppress(Exception):  # released already when it broke
                await self.db.pool.release(conn)

    def _changes(self) -> list[Change]:
        """(table, key, row JSON or None for a deleted row) of every row the
        operation touched: one join per table."""
        result: list[Change] = []
        for table in self.tables:
            on = " AND ".join(
                f"t.{column} = json_extract(c.key, '$[{i}]')" for i, column in enumerate(table.key)
            )
            select = ", ".join(f"t.{column}" for column in table.columns)
            rows = self.conn.execute(
                f"SELECT c.key, t.{table.key[0]} IS NOT NULL, {select}"  # noqa: S608
                " FROM (SELECT DISTINCT key FROM temp.replica_changes WHERE tbl = ?) c"
                f" LEFT JOIN main.{table.name} t ON {on}",
                (table.name,),
            ).fetchall()
            for key, present, *values in rows:
                result.append(
                    (table.name, key, encode_row(table.columns, values) if present else None)
                )
        return result

    async def _ship(
        self, conn: Any, changes: Sequence[tuple[str, str, str | None]], new: int
    ) -> None:
        """The rows, the scope's new version and the notice: one statement
        (one round trip) for up to SHIP_BATCH rows."""
        upsert = (
            "INSERT INTO mail_rows (scope, tbl, key, row, version)"
            " SELECT $1, u.tbl, u.key, u.row, $2"
            " FROM unnest($3::text[], $4::text[], $5::jsonb[]) AS u(tbl, key, row)"
            " ON CONFLICT (scope, tbl, key)"
            " DO UPDATE SET row = excluded.row, version = excluded.version"
        )
        chunks = [changes[i : i + SHIP_BATCH] for i in range(0, len(changes), SHIP_BATCH)]
        for chunk in chunks[:-1]:
            await conn.execute(upsert, self.scope, new, *_columns(chunk))
        await conn.execute(
            f"WITH shipped AS ({upsert} RETURNING 1),"  # noqa: S608 - constant text
            " raised AS (UPDATE mail_scopes SET version = $2 WHERE scope = $1 RETURNING 1)"
            " SELECT pg_notify($6, $7)",
            self.scope,
            new,
            *_columns(chunks[-1]),
            CHANNEL,
            notice(self.db.origin, self.scope),
        )

    def _recover(self) -> None:
        """After a failed write: the replica may hold changes PostgreSQL
        never took. It stays dirty (the next use rebuilds it); try now."""
        try:
            self.conn.execute("DELETE FROM temp.replica_changes")
            self.sync()
        except Exception as exc:  # the database is away: the next write pulls
            log.warning("replica %s: left dirty until the database answers: %s", self.scope, exc)

    def _run(self, coro: Any) -> Any:
        return self.io.run(coro)


async def prune(db: Database, keep: int = KEEP_TOMBSTONES, limit: int = 100_000) -> int:
    """Remove tombstones more than ``keep`` versions old in each scope and
    raise its ``pruned`` mark; the number removed (at most ``limit``)."""
    removed = 0
    async with db.pool.acquire() as conn:
        scopes = await conn.fetch(
            "SELECT scope, version FROM mail_scopes WHERE version - pruned > $1", keep
        )
        for scope, version in scopes:
            below = int(version) - keep
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM mail_scopes WHERE scope = $1 FOR UPDATE", scope)
                status = await conn.execute(
                    "DELETE FROM mail_rows WHERE scope = $1 AND row IS NULL AND version <= $2",
                    scope,
                    below,
                )
                await conn.execute(
                    "UPDATE mail_scopes SET pruned = greatest(pruned, $2) WHERE scope = $1",
                    scope,
                    below,
                )
            removed += int(status.split()[-1])
            if removed >= limit:
                break
    return removed
