"""Both sides of ``estafeta migrate`` (estafeta.cluster_migrate): the
cluster's scopes in PostgreSQL, read and written from the command's thread
(the pool lives on the IoLoop), and the local store's files, read in one
snapshot per account (SQLite's read transaction) with the bytes of messages
whose file was not durable yet taken from ``pending`` (estafeta.store.ingest).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from estafeta.address import AddressError
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.replica import PULL_BATCH, Table, describe
from estafeta.cluster_migrate_check import (
    ClusterRows,
    Row,
    cluster_stem,
)
from estafeta.sieve.scripts import ScriptError, ScriptStore
from estafeta.sieve.scripts import unescape as sieve_unescape
from estafeta.store import index, maildir, shared
from estafeta.store.account import Store
from estafeta.store.cluster import INDEX_TABLES

T = TypeVar("T")

BODY_BATCH = 200
"""Messages whose bodies are read and stored (or fetched and written) per step."""
BODY_BATCH_OCTETS = 32 << 20
"""Octets of bodies held per step at most (one message may be larger)."""
SAMPLE = 50
"""Bodies checked per account by ``--verify-bodies sample``."""
PARALLEL = 8
"""Bodies fetched at once by the checks and ``--to local``."""
REPIN_AFTER = 600.0
"""Seconds after which the bodies of an account still being copied are
claimed again: the collector spares what was claimed within its grace."""
IN_FLIGHT = 2
"""Batches of bodies being stored at once (each puts Blobs' PARALLEL at a time)."""
PROGRESS_EVERY = 10.0
"""Seconds between two progress lines within one account."""
TMP_PREFIX = ".migrating-"

SCOPE_VERSION = "SELECT version FROM mail_scopes WHERE scope = $1"
SCOPE_ROWS = "SELECT tbl, key, row::text FROM mail_rows WHERE scope = $1 AND row IS NOT NULL"


class MigrationError(Exception):
    """The migration failed (exit 1); the message says where and why."""


class Refused(MigrationError):
    """The migration will not start or go on (exit 2); the message says
    what to do. Nothing was overwritten."""


class InTarget(Exception):
    """The scope appeared in the target while it was being copied."""


class Tx:
    """A connection in a transaction, driven statement by statement from
    this thread (as estafeta.cluster.replica drives its writes)."""

    def __init__(self, io: IoLoop, conn: Any) -> None:
        self.io = io
        self.conn = conn

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.io.run(coro)

    def rows(self, query: str, *args: Any) -> Iterator[Any]:
        async def open_cursor() -> Any:
            return await self.conn.cursor(query, *args)

        cursor = self.io.run(open_cursor())
        while batch := self.io.run(cursor.fetch(PULL_BATCH)):
            yield from batch

    def scope_rows(self, scope: str) -> ClusterRows:
        return lambda: ((r[0], r[1], r[2]) for r in self.rows(SCOPE_ROWS, scope))


@contextlib.contextmanager
def transaction(io: IoLoop, db: Database, *, readonly: bool = False) -> Iterator[Tx]:
    """A pooled connection in a transaction (repeatable read when
    ``readonly``: one snapshot for every read), committed if the block ends
    normally."""

    async def begin() -> tuple[Any, Any]:
        conn = await db.pool.acquire()
        try:
            if readonly:
                tx = conn.transaction(isolation="repeatable_read", readonly=True)
            else:
                tx = conn.transaction()
            await tx.start()
        except BaseException:
            await db.pool.release(conn)
            raise
        return conn, tx

    async def end(conn: Any, tx: Any, commit: bool) -> None:
        try:
            if commit:
                await tx.commit()
            else:
                try:
                    await tx.rollback()
                except Exception:  # the connection is broken: the pool drops it
                    conn.terminate()
        finally:
            with contextlib.suppress(Exception):
                await db.pool.release(conn)

    conn, tx = io.run(begin())
    try:
        yield Tx(io, conn)
    except BaseException:
        io.run(end(conn, tx, False))
        raise
    io.run(end(conn, tx, True))


class Sqlite:
    """Replicated tables of a local SQLite file, read in one snapshot."""

    def __init__(self, conn: sqlite3.Connection, names: Sequence[str]) -> None:
        self.conn = conn
        self.tables = describe(conn, names)
        conn.execute("BEGIN")

    def rows(self) -> Iterator[tuple[str, str, Row]]:
        for table in self.tables:
            yield from self.table_rows(table)

    def table_rows(self, table: Table) -> Iterator[tuple[str, str, Row]]:
        keys = ", ".join(table.key)
        columns = ", ".join(table.columns)
        query = f"SELECT json_array({keys}), {columns} FROM main.{table.name}"  # noqa: S608
        for key, *values in self.conn.execute(query):
            yield table.name, key, dict(zip(table.columns, values, strict=True))

    def key(self, *values: Any) -> str:
        """A key as SQLite's json_array() writes it (mail_rows.key)."""
        marks = ", ".join("?" * len(values))
        return str(self.conn.execute(f"SELECT json_array({marks})", values).fetchone()[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        self.conn.close()


class Mail(Sqlite):
    """An account's local index and its message files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            conn = index.connect(path / "index.db")
        except (RuntimeError, sqlite3.Error) as exc:
            raise MigrationError(f"{path / 'index.db'}: cannot open the index: {exc}") from None
        super().__init__(conn, INDEX_TABLES)
        self.pending = {str(row[0]) for row in self.conn.execute("SELECT file FROM pending")}
        self.unfinished = int(self.conn.execute("SELECT count(*) FROM journal").fetchone()[0])

    def messages(self) -> list[tuple[int, int, str]]:
        """(mailbox id, UID, file) of every message, in mailbox and UID order."""
        return [
            (int(box), int(uid), str(file))
            for box, uid, file in self.conn.execute(
                "SELECT mailbox_id, uid, file FROM messages ORDER BY mailbox_id, uid"
            )
        ]

    def has(self, file: str) -> bool:
        if file in self.pending:
            return True
        path = self.path / file
        if os.path.lexists(path):
            return True
        # Delivered but not settled: still in tmp/ (maildir.open_message).
        return path.parent.name == "new" and os.path.lexists(path.parent.parent / "tmp" / path.name)

    def body(self, file: str) -> bytes | None:
        """The message's bytes (from ``pending`` while its file is not
        durable: estafeta.store.ingest); None if it is gone."""
        if file in self.pending:
            row = self.conn.execute("SELECT data FROM pending WHERE file = ?", (file,)).fetchone()
            if row is not None:
                return bytes(row[0])
        try:
            return maildir.read_message(self.path / file)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MigrationError(f"{self.path / file}: cannot read: {exc.strerror}") from None


def mail_rows(
    mail: Mail,
    missing: Mapping[int, set[int]],
    digests: Mapping[str, str] | None,
    files: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, Row]]:
    """The account's rows as the cluster holds them: files in cluster form
    (with their body's digest if ``digests`` is given, else the stem), the
    ``missing`` messages (mailbox id -> UIDs, ``--skip-missing``) left out
    as expunged: a new modseq each mailbox, so a client that resynchronises
    hears of them (rfc7162:3.2.10 VANISHED). ``files``: messages key -> the
    local file, filled as the rows go by."""
    highest: dict[int, int] = {}
    for table in mail.tables:
        for name, key, row in mail.table_rows(table):
            if name == "mailboxes":
                box = int(row["id"])
                highest[box] = int(row["highestmodseq"])
                if box in missing:
                    row["highestmodseq"] = highest[box] + 1
            elif name in ("messages", "private_seen") and row["uid"] in missing.get(
                int(row["mailbox_id"]), ()
            ):
                continue
            if name == "messages":
                local = str(row["file"])
                if files is not None:
                    files[key] = local
                stem = cluster_stem(local)
                row["file"] = stem if digests is None else stem + ",B=" + digests[local]
            yield name, key, row
        if table.name == "expunged":
            for box, uids in sorted(missing.items()):
                for uid in sorted(uids):
                    gone: Row = dict.fromkeys(table.columns)
                    gone.update(mailbox_id=box, uid=uid, modseq=highest.get(box, 0) + 1)
                    yield "expunged", mail.key(box, uid), gone


def local_accounts(paths: Store) -> tuple[list[tuple[str, Path]], list[str]]:
    """(scope, directory) of every account with an index under the mail
    directory, the shared store last; and the directories passed over."""
    found: list[tuple[str, Path]] = []
    passed: list[str] = []
    mail_dir = paths.mail_dir
    if not mail_dir.is_dir():
        return found, passed
    for domain in sorted(os.scandir(mail_dir), key=lambda e: e.name):
        if domain.name.startswith(".") or not domain.is_dir(follow_symlinks=False):
            continue
        for local in sorted(os.scandir(domain.path), key=lambda e: e.name):
            path = Path(local.path)
            if local.name.startswith(".") or not (path / "index.db").is_file():
                continue
            address = f"{maildir.unescape(local.name)}@{domain.name}"
            try:
                same = paths.account_dir(address) == path
            except AddressError:
                same = False
            if same:
                found.append((address, path))
            else:
                passed.append(str(path))
    shared_dir = paths.account_dir(shared.OWNER)
    if (shared_dir / "index.db").is_file():
        found.append((shared.OWNER, shared_dir))
    return found, passed


def sieve_accounts(scripts: ScriptStore) -> list[str]:
    """The accounts with a directory of Sieve scripts."""
    found: list[str] = []
    if not scripts.root.is_dir():
        return found
    for domain in sorted(os.scandir(scripts.root), key=lambda e: e.name):
        if domain.name.startswith(".") or not domain.is_dir(follow_symlinks=False):
            continue
        for local in sorted(os.scandir(domain.path), key=lambda e: e.name):
            if local.name.startswith(".") or not local.is_dir(follow_symlinks=False):
                continue
            address = f"{sieve_unescape(local.name)}@{sieve_unescape(domain.name)}"
            with contextlib.suppress(ScriptError):
                if scripts.account_dir(address) == Path(local.path):
                    found.append(address)
    return found


def local_file(stem: str, folder: str) -> str | None:
    """The local file of a cluster stem in mailbox folder ``folder``, or
    None if the stem is not a plain Maildir name there (a row that would
    write outside the account is refused, whoever wrote it)."""
    prefix = f"{folder}/new/" if folder else "new/"
    name = stem[len(prefix) :] if stem.startswith(prefix) else ""
    if not name or "/" in name or "\x00" in name or name.startswith("."):
        return None
    return prefix + name


def safe_folder(folder: Any) -> bool:
    return isinstance(folder, str) and (
        folder == ""
        or (
            folder.startswith(".")
            and folder not in (".", "..")
            and "/" not in folder
            and "\x00" not in folder
        )
    )


def empty_tables(conn: sqlite3.Connection, tables: Iterable[Table]) -> None:
    for table in reversed(list(tables)):
        conn.execute(f"DELETE FROM main.{table.name}")  # noqa: S608 - known names


def insert_local(
    conn: sqlite3.Connection, tables: Mapping[str, Table], scope: str, name: str, row: Row
) -> None:
    """A cluster row into the local table it belongs to; a table this
    estafeta does not know is refused (its rows would be lost)."""
    table = tables.get(name)
    if table is None:
        raise MigrationError(
            f"{scope}: the cluster has rows of table {name!r}, which this estafeta does"
            " not know: migrate with the estafeta version that wrote them"
        )
    unknown = set(row) - set(table.columns)
    if unknown:
        raise MigrationError(
            f"{scope}: rows of {name!r} in the cluster have columns this estafeta does not"
            f" know ({', '.join(sorted(unknown))}): migrate with the version that wrote them"
        )
    columns = list(row)
    try:
        conn.execute(
            f"INSERT INTO main.{name} ({', '.join(columns)})"  # noqa: S608 - checked names
            f" VALUES ({', '.join('?' * len(columns))})",
            [row[c] for c in columns],
        )
    except sqlite3.IntegrityError as exc:
        # The key only: an accounts row holds password hashes.
        key = {c: row.get(c) for c in table.key}
        raise MigrationError(f"{scope}: the row {key} of {name!r} cannot go in: {exc}") from None


def mib(octets: int) -> str:
    return f"{octets / (1 << 20):.1f} MiB"


@dataclass
class Totals:
    """What a run did, for its last line (and the tests)."""

    copied: int = 0
    skipped: int = 0
    messages: int = 0
    octets: int = 0
    rows: int = 0
    bodies: int = 0
    missing: int = 0
    seconds: float = 0.0
