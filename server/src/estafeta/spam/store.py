"""Per-account token statistics of the junk filter, in SQLite.

On disk: one SQLite file per account, ``DIRECTORY/<account>.db`` (the
caller gives the directory, e.g. ``data_dir/spam``; the account is
%-escaped into the name, see ``file_name``), WAL mode::

    stats(id = 1, nspam, nham, tokenizer)   messages trained as spam / ham
    tokens(id INTEGER PRIMARY KEY,          first 8 octets of BLAKE2b(token)
           spam, ham,                       messages of each kind it was in
           day)                             day number it was last trained
    trained(digest BLOB PRIMARY KEY,        message_digest of a trained message
            spam, at)                       how it was trained, when
        INDEX trained_by_age (at)
    allow(entry PRIMARY KEY, at)            the account's allowlist: "user@domain"
                                            or "@domain", lower case, at most MAX_ALLOW

Why one file per account, not one for all: an account's statistics are
read and written together and never with another's, so separate files
mean no lock shared between accounts (a bulk ``train`` of one account does
not stall delivery to the others), ``reset`` and account removal are
cheap, ``status`` can report a true size, and a corrupt file costs one
account its training, not everyone's. The price, an open connection per
busy account, is bounded by ``max_open`` (least recently used closed).

Tokens are stored as 64-bit hashes, not text: a row is ~20 octets whatever
the token, and the text is known anyway when a message is scored (the
Verdict shows the message's own tokens). A collision merges two tokens'
counts; at 500,000 tokens the chance of any is about 1 in 10^8.

Idempotent training: ``trained`` remembers how each message (by digest)
was trained. Training it the same way again changes nothing; training it
the other way moves its tokens from one column to the other; ``unlearn``
takes them out. So "moved into Junk, then out again" leaves the message
counted once, as ham. Subtraction never goes below zero: if the
tokenizer changed between training and unlearning, the counts stay sane.

Crash ordering: each learn, unlearn or batch of them is one transaction
(the ``trained`` record, the token counts and ``stats`` change together or
not at all). synchronous=NORMAL: a power loss may forget the last
trainings, never leave them half applied.

Bounds, per account (an attacker can mail a million distinct words, and a
user can train a huge mbox):

* at most ``max_tokens`` tokens (500,000, ~10 MB). Past it the least
  useful are deleted down to 90 %: those seen in the fewest messages,
  oldest training first (rare and old);
* at most ``max_trained`` trained-message records (200,000, ~12 MB); the
  oldest are forgotten (their counts stay; only a later reversal of such an
  old training can no longer subtract it);
* at most ``max_open`` connections, each with a 2 MiB page cache.

A file that is not a database, or is corrupt, is moved aside
(``NAME.db.broken-TIMESTAMP``) and the account starts afresh, with an
ERROR event: the filter is a convenience, mail flows without it. Other
database errors (disk full, a lock held past the busy timeout) are raised
to the caller (``JunkFilter`` logs them and carries on).

Thread-safe: one lock per account file, one for the table of open files;
the callers run the methods in worker threads (asyncio.to_thread).
Another process (the ``estafeta spam train`` CLI) may use the same files
at the same time: SQLite's own locking and the busy timeout cover that.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Literal, TypeVar

from estafeta.log import log_event

# What opening or writing the statistics can raise, for callers that report
# it (the CLI) without importing sqlite3 themselves.
STATS_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

log = logging.getLogger("estafeta.spam")

MAX_TOKENS = 500_000
MAX_TRAINED = 200_000
MAX_OPEN = 16
MAX_ALLOW = 1_000  # allowlist entries per account
MAX_ALLOW_LENGTH = 320  # octets of one entry (an address: 64 + 1 + 255)
BUSY_TIMEOUT_MS = 10_000
# How long an account found without a file is taken to have none (TokenStore._absent).
ABSENT_FOR = 1.0
ABSENT_MAX = 10_000
PRUNE_TO = 0.9  # fraction of a cap kept when pruning
_CHUNK = 500  # ids per "IN (...)" query
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

Outcome = Literal["learned", "relearned", "unchanged", "unlearned", "absent", "error"]
T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stats ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " nspam INTEGER NOT NULL, nham INTEGER NOT NULL, tokenizer INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO stats (id, nspam, nham, tokenizer) VALUES (1, 0, 0, 1)",
    "CREATE TABLE IF NOT EXISTS tokens ("
    " id INTEGER PRIMARY KEY, spam INTEGER NOT NULL, ham INTEGER NOT NULL, day INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS trained ("
    " digest BLOB PRIMARY KEY, spam INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS trained_by_age ON trained (at)",
    "CREATE TABLE IF NOT EXISTS allow (entry TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID",
)
# The two count columns; the names are constants, never input.
_COLUMN = {True: "spam", False: "ham"}


def token_id(token: str) -> int:
    """The 64-bit signed integer a token is stored under."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def file_name(account: str) -> str:
    """The account's file name: readable (``alice@example.org.db``), with
    every character but letters, digits and ``@-_+.`` %-escaped, so two
    accounts never share a file and no name leaves the directory. Very long
    names (or ones starting with a dot) use a hash instead."""
    name = urllib.parse.quote(account, safe="@-_+.")
    if not name or name.startswith(".") or len(name) > 200:
        name = "h-" + hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()
    return name + ".db"


def is_corrupt(exc: BaseException) -> bool:
    """A database error that means the file is damaged, not busy or full."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


@dataclass(frozen=True)
class Counts:
    """What the classifier needs: trained message numbers and the counts
    of the tokens asked about that have any (token id -> (spam, ham))."""

    nspam: int
    nham: int
    tokens: dict[int, tuple[int, int]]


@dataclass(frozen=True)
class Status:
    account: str
    spam: int  # messages trained as spam
    ham: int
    tokens: int
    trained: int  # messages whose training is remembered (can be reversed)
    size: int  # octets on disk (database and its WAL)
    path: str


class _Db:
    def __init__(self, path: Path, conn: sqlite3.Connection, tokens: int, trained: int) -> None:
        self.path = path
        self.conn = conn
        self.lock = threading.Lock()
        self.closed = False
        self.tokens = tokens  # row counts as this process last knew them
        self.trained = trained
        # A second, read-only connection that never waits (no busy handler),
        # for reads on the event loop (TokenStore.run_nowait), guarded by its
        # own lock: in WAL mode it reads while a training holds ``conn``.
        self.reader: sqlite3.Connection | None = None
        self.read_lock = threading.Lock()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close()
            with self.read_lock:
                if self.reader is not None:
                    self.reader.close()
                    self.reader = None


def _connect_reader(path: Path) -> sqlite3.Connection:
    reader = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        reader.execute("PRAGMA query_only=1")
        reader.execute("PRAGMA cache_size=-512")
    except BaseException:
        reader.close()
        raise
    return reader


def _read_counts(conn: sqlite3.Connection, ids: Sequence[int]) -> Counts:
    conn.execute("BEGIN")  # one snapshot for all the reads
    try:
        nspam, nham = conn.execute("SELECT nspam, nham FROM stats").fetchone()
        return _read_tokens(conn, ids, int(nspam), int(nham))
    finally:
        conn.execute("COMMIT")


def _read_tokens(conn: sqlite3.Connection, ids: Sequence[int], nspam: int, nham: int) -> Counts:
    found: dict[int, tuple[int, int]] = {}
    for chunk in _chunks(list(dict.fromkeys(ids))):
        marks = ",".join("?" * len(chunk))
        # One row for all: Python's sqlite3 lets go of the GIL at every row
        # it steps to, and on a busy server taking it back is what costs
        # (bench/spam.py), not the query. "id spam ham id spam ham ...".
        (packed,) = conn.execute(
            "SELECT group_concat(id || ' ' || spam || ' ' || ham, ' ')"  # noqa: S608
            f" FROM tokens WHERE id IN ({marks})",
            chunk,
        ).fetchone()
        found.update(_unpack(packed))
    return Counts(nspam, nham, found)


def _unpack(packed: str | None) -> dict[int, tuple[int, int]]:
    """ "id spam ham id spam ham ..." (group_concat's one row) as a dict."""
    if not packed:
        return {}
    numbers = list(map(int, packed.split(" ")))
    return {numbers[i]: (numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers) - 2, 3)}


def _any_allowed(conn: sqlite3.Connection, wanted: Sequence[str]) -> bool:
    if not wanted:
        return False
    marks = ",".join("?" * len(wanted))
    query = f"SELECT 1 FROM allow WHERE entry IN ({marks}) LIMIT 1"  # noqa: S608
    return conn.execute(query, wanted).fetchone() is not None


def _chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class TokenStore:
    """Token statistics of every account, one SQLite file each."""

    def __init__(
        self,
        directory: Path,
        *,
        max_tokens: int = MAX_TOKENS,
        max_trained: int = MAX_TRAINED,
        max_open: int = MAX_OPEN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_tokens = max(1, max_tokens)
        self.max_trained = max(1, max_trained)
        self.max_open = max(1, max_open)
        self.clock = clock
        self._lock = threading.Lock()
        self._dbs: OrderedDict[str, _Db] = OrderedDict()
        # Accounts seen without a file (never trained), with when (monotonic):
        # run_nowait answers "absent" from here for ABSENT_FOR seconds
        # instead of a stat(2) per message, which let the event loop's
        # thread lose the GIL. A file this process creates clears it at
        # once (_get); one 'estafeta spam train' writes is seen that late.
        self._absent: dict[str, float] = {}

    def path_for(self, account: str) -> Path:
        return self.directory / file_name(account)

    # -- connections ------------------------------------------------------------

    def _connect(self, path: Path) -> _Db:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA cache_size=-2048")
            for statement in _SCHEMA:
                conn.execute(statement)
            os.chmod(path, 0o600)
            # Reading every row of both tables also finds most damage now.
            (tokens,) = conn.execute("SELECT COUNT(*) FROM tokens").fetchone()
            (trained,) = conn.execute("SELECT COUNT(*) FROM trained").fetchone()
        except BaseException:
            conn.close()
            raise
        return _Db(path, conn, int(tokens), int(trained))

    def _open(self, path: Path) -> _Db:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._move_aside(path, exc)
            return self._connect(path)

    def _move_aside(self, path: Path, exc: BaseException) -> None:
        broken = path.with_name(f"{path.name}.broken-{int(time.time())}")
        log_event(
            log, "spam_store_reset", logging.ERROR, path=str(path), moved_to=str(broken),
            error=str(exc),
        )  # fmt: skip
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{broken}{suffix}"))

    def _get(self, account: str, create: bool) -> _Db | None:
        evicted: list[_Db] = []
        with self._lock:
            db = self._dbs.get(account)
            if db is not None:
                self._dbs.move_to_end(account)
                return db
            path = self.path_for(account)
            if not create and not path.exists():
                return None
            db = self._open(path)
            self._absent.pop(account, None)
            self._dbs[account] = db
            while len(self._dbs) > self.max_open:
                evicted.append(self._dbs.popitem(last=False)[1])
        for old in evicted:
            with old.lock:
                old.close()
        return db

    def _run(self, account: str, create: bool, work: Callable[[_Db], T], absent: T) -> T:
        """``work(db)`` under the account's lock; ``absent`` if the account
        has no file and ``create`` is false. A corrupt file found on the way
        is moved aside and the work done once more on a fresh one."""
        corrupt_retry = True
        while True:
            db = self._get(account, create)
            if db is None:
                return absent
            with db.lock:
                if db.closed:  # evicted meanwhile: open it again
                    continue
                try:
                    return work(db)
                except sqlite3.DatabaseError as exc:
                    if not (corrupt_retry and is_corrupt(exc)):
                        raise
                    corrupt_retry = False
                    with self._lock:
                        if self._dbs.get(account) is db:
                            del self._dbs[account]
                    db.close()
                    self._move_aside(db.path, exc)

    def has_no_file(self, account: str) -> bool:
        """Whether the account has no statistics (never trained), without
        waiting: from memory while an earlier answer is younger than
        ABSENT_FOR, else one stat(2). False for an account whose file is open."""
        if account in self._dbs:
            return False
        now = time.monotonic()
        seen = self._absent.get(account)
        if seen is not None and now - seen < ABSENT_FOR:
            return True
        if self.path_for(account).exists():
            return False
        if len(self._absent) >= ABSENT_MAX:
            self._absent.clear()
        self._absent[account] = now
        return True

    def run_nowait(
        self, account: str, work: Callable[[sqlite3.Connection], T], absent: T
    ) -> tuple[bool, T]:
        """``(True, work(reader))`` now, on the caller's thread, only if nothing
        would wait for it: the account's file is open already, its reader free,
        and SQLite answers at once (the reader has no busy handler);
        ``(True, absent)`` if the account has no file (one stat).
        ``(False, absent)`` means "not now": run the blocking method in a
        worker thread. Meant for reads on the event loop: a few index
        lookups; any SQLite error is "not now" (the thread's path logs it,
        and repairs a corrupt file)."""
        if not self._lock.acquire(blocking=False):
            return False, absent
        try:
            db = self._dbs.get(account)
            if db is not None:
                self._dbs.move_to_end(account)
        finally:
            self._lock.release()
        if db is None:
            return self.has_no_file(account), absent
        if not db.read_lock.acquire(blocking=False):
            return False, absent
        try:
            if db.closed:
                return False, absent
            try:
                if db.reader is None:
                    db.reader = _connect_reader(db.path)
                return True, work(db.reader)
            except sqlite3.Error:
                if db.reader is not None and db.reader.in_transaction:
                    db.reader.execute("ROLLBACK")
                return False, absent
        finally:
            db.read_lock.release()

    def close(self) -> None:
        with self._lock:
            dbs = list(self._dbs.values())
            self._dbs.clear()
        for db in dbs:
            with db.lock:
                db.close()

    # -- reading ----------------------------------------------------------------

    def counts(self, account: str, ids: Sequence[int]) -> Counts | None:
        """Counts for scoring; None if the account has never trained (no file
        is created for it)."""
        return self._run(account, False, lambda db: _read_counts(db.conn, ids), None)

    def read_nowait(
        self, account: str, ids: Sequence[int], entries: Sequence[str]
    ) -> tuple[bool, tuple[bool, Counts | None]]:
        """In one snapshot, without waiting (see ``run_nowait``): whether one
        of ``entries`` is on the allowlist, else the counts of ``ids``."""

        def work(conn: sqlite3.Connection) -> tuple[bool, Counts | None]:
            # One statement for the usual message (at most _CHUNK tokens): the
            # totals, the allowlist and the token counts together. Every step
            # of a statement lets go of the GIL, and on a busy server taking
            # it back costs the loop more than the query (bench/spam.py). No
            # BEGIN/COMMIT either: a training committed between two chunks
            # of a very large message may show in some counts and not in the
            # totals, one message's worth of skew in a score, harmless.
            wanted = list(dict.fromkeys(entries))[:_CHUNK]
            allow_marks = ",".join("?" * len(wanted)) or "NULL"
            unique = list(dict.fromkeys(ids))
            first, rest = unique[:_CHUNK], unique[_CHUNK:]
            token_marks = ",".join("?" * len(first)) or "NULL"
            nspam, nham, allowed, packed = conn.execute(
                "SELECT nspam, nham,"  # noqa: S608
                f" EXISTS (SELECT 1 FROM allow WHERE entry IN ({allow_marks})),"
                " (SELECT group_concat(id || ' ' || spam || ' ' || ham, ' ') FROM tokens"
                f" WHERE id IN ({token_marks})) FROM stats",
                [*wanted, *first],
            ).fetchone()
            if allowed:
                return True, None
            counts = _read_tokens(conn, rest, int(nspam), int(nham))
            counts.tokens.update(_unpack(packed))
            return False, counts

        return self.run_nowait(account, work, (False, None))

    def status(self, account: str) -> Status:
        """Training figures of ``account`` (zeros, size 0 if it has no file)."""
        path = self.path_for(account)

        def work(db: _Db) -> Status:
            conn = db.conn
            nspam, nham = conn.execute("SELECT nspam, nham FROM stats").fetchone()
            (tokens,) = conn.execute("SELECT COUNT(*) FROM tokens").fetchone()
            (trained,) = conn.execute("SELECT COUNT(*) FROM trained").fetchone()
            db.tokens, db.trained = int(tokens), int(trained)
            size = sum(
                Path(f"{path}{s}").stat().st_size
                for s in ("", "-wal")
                if Path(f"{path}{s}").exists()
            )
            return Status(account, int(nspam), int(nham), db.tokens, db.trained, size, str(path))

        return self._run(account, False, work, Status(account, 0, 0, 0, 0, 0, str(path)))

    # -- the account's allowlist ---------------------------------------------------

    def allow(self, account: str, entry: str) -> bool:
        """Add ``entry`` (normalised by the caller); False when the list is
        full (``MAX_ALLOW``) and the entry is not on it already."""

        def work(db: _Db) -> bool:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                (count,) = conn.execute("SELECT COUNT(*) FROM allow").fetchone()
                known = conn.execute("SELECT 1 FROM allow WHERE entry = ?", (entry,)).fetchone()
                if known is None and count >= MAX_ALLOW:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO allow (entry, at) VALUES (?, ?)", (entry, self.clock())
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return True

        return self._run(account, True, work, False)

    def disallow(self, account: str, entry: str) -> bool:
        """Take ``entry`` off the list; False if it was not on it."""

        def work(db: _Db) -> bool:
            return db.conn.execute("DELETE FROM allow WHERE entry = ?", (entry,)).rowcount > 0

        return self._run(account, False, work, False)

    def allowed(self, account: str) -> list[str]:
        def work(db: _Db) -> list[str]:
            return [r[0] for r in db.conn.execute("SELECT entry FROM allow ORDER BY entry")]

        return self._run(account, False, work, [])

    def any_allowed(self, account: str, entries: Sequence[str]) -> bool:
        """Whether one of ``entries`` (at most a few: addresses and "@domain"s
        of one message's senders) is on the list."""
        wanted = list(dict.fromkeys(entries))[:_CHUNK]
        return self._run(account, False, lambda db: _any_allowed(db.conn, wanted), False)

    # -- training ---------------------------------------------------------------

    def learn(
        self, account: str, items: Sequence[tuple[bytes, Sequence[int]]], spam: bool
    ) -> list[Outcome]:
        """Train each (digest, token ids) as ``spam`` (or ham), all in one
        transaction: "learned", "relearned" (it was trained the other way;
        moved) or "unchanged" (already trained this way) per item."""

        def work(db: _Db) -> list[Outcome]:
            return self._transaction(db, account, lambda: self._learn(db, items, spam))

        return self._run(account, True, work, [])

    def unlearn(self, account: str, digest: bytes, ids: Sequence[int]) -> Outcome:
        """Take back the training of one message: "unlearned", or "absent"
        if it is not remembered as trained."""

        def work(db: _Db) -> Outcome:
            return self._transaction(db, account, lambda: self._unlearn(db, digest, ids))

        return self._run(account, False, work, "absent")

    def reset(self, account: str) -> None:
        """Forget all training of ``account`` (the file stays, emptied)."""

        def work(db: _Db) -> None:
            conn = db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM tokens")
                conn.execute("DELETE FROM trained")
                conn.execute("UPDATE stats SET nspam = 0, nham = 0")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            db.tokens = db.trained = 0
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        self._run(account, False, work, None)

    def remove(self, account: str) -> list[Path]:
        """Delete ``account``'s statistics outright (``estafeta user erase``):
        its open connection closed, then its file, WAL, shared memory and any
        copies moved aside as broken. The paths removed; none if it never
        trained. Another process that has the file open (the server) keeps
        an unlinked copy until it closes it: nothing under the directory
        names the account any more."""
        with self._lock:
            db = self._dbs.pop(account, None)
            self._absent.pop(account, None)
        if db is not None:
            with db.lock:
                db.close()
        path = self.path_for(account)
        removed: list[Path] = []
        candidates = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
        if self.directory.is_dir():
            candidates += sorted(self.directory.glob(f"{glob_escape(path.name)}.broken-*"))
        for candidate in candidates:
            try:
                candidate.unlink()
            except FileNotFoundError:
                continue
            removed.append(candidate)
        return removed

    def _transaction(self, db: _Db, account: str, body: Callable[[], T]) -> T:
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            self._prune(db, account)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            db.tokens = db.trained = -1  # unknown now: recounted when next needed
            raise
        return result

    def _learn(
        self, db: _Db, items: Sequence[tuple[bytes, Sequence[int]]], spam: bool
    ) -> list[Outcome]:
        conn = db.conn
        day = int(self.clock() // 86400)
        now = self.clock()
        nspam, nham = conn.execute("SELECT nspam, nham FROM stats").fetchone()
        outcomes: list[Outcome] = []
        for digest, ids in items:
            row = conn.execute("SELECT spam FROM trained WHERE digest = ?", (digest,)).fetchone()
            unique = list(dict.fromkeys(ids))
            if row is not None and bool(row[0]) == spam:
                outcomes.append("unchanged")
                continue
            if row is not None:
                self._subtract(db, unique, not spam)
                nspam, nham = (nspam - 1, nham) if not spam else (nspam, nham - 1)
                outcomes.append("relearned")
            else:
                outcomes.append("learned")
                db.trained += 1
            self._add(db, unique, spam, day)
            nspam, nham = (nspam + 1, nham) if spam else (nspam, nham + 1)
            conn.execute(
                "INSERT OR REPLACE INTO trained (digest, spam, at) VALUES (?, ?, ?)",
                (digest, int(spam), now),
            )
        conn.execute("UPDATE stats SET nspam = ?, nham = ?", (max(nspam, 0), max(nham, 0)))
        return outcomes

    def _unlearn(self, db: _Db, digest: bytes, ids: Sequence[int]) -> Outcome:
        conn = db.conn
        row = conn.execute("SELECT spam FROM trained WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return "absent"
        spam = bool(row[0])
        self._subtract(db, list(dict.fromkeys(ids)), spam)
        conn.execute("DELETE FROM trained WHERE digest = ?", (digest,))
        db.trained -= 1
        column = _COLUMN[spam]
        conn.execute(f"UPDATE stats SET n{column} = MAX(n{column} - 1, 0)")  # noqa: S608
        return "unlearned"

    def _add(self, db: _Db, ids: list[int], spam: bool, day: int) -> None:
        conn = db.conn
        column = _COLUMN[spam]
        existing: set[int] = set()
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT id FROM tokens WHERE id IN ({marks})", chunk)  # noqa: S608
            existing.update(int(r[0]) for r in rows)
        conn.executemany(
            f"UPDATE tokens SET {column} = {column} + 1, day = ? WHERE id = ?",  # noqa: S608
            [(day, i) for i in existing],
        )
        new = [i for i in ids if i not in existing]
        conn.executemany(
            "INSERT INTO tokens (id, spam, ham, day) VALUES (?, ?, ?, ?)",
            [(i, int(spam), int(not spam), day) for i in new],
        )
        if db.tokens >= 0:
            db.tokens += len(new)

    def _subtract(self, db: _Db, ids: list[int], spam: bool) -> None:
        conn = db.conn
        column = _COLUMN[spam]
        conn.executemany(
            f"UPDATE tokens SET {column} = {column} - 1 WHERE id = ? AND {column} > 0",  # noqa: S608
            [(i,) for i in ids],
        )
        gone = conn.executemany(
            "DELETE FROM tokens WHERE id = ? AND spam = 0 AND ham = 0", [(i,) for i in ids]
        ).rowcount
        if db.tokens >= 0:
            db.tokens -= max(0, gone)

    def _prune(self, db: _Db, account: str) -> None:
        """Keep both tables under their caps (inside the caller's transaction)."""
        conn = db.conn
        if db.tokens < 0 or db.tokens > self.max_tokens:
            (db.tokens,) = conn.execute("SELECT COUNT(*) FROM tokens").fetchone()
            if db.tokens > self.max_tokens:
                excess = db.tokens - int(self.max_tokens * PRUNE_TO)
                # The least useful first: fewest messages, then oldest training.
                removed = conn.execute(
                    "DELETE FROM tokens WHERE id IN ("
                    " SELECT id FROM tokens ORDER BY spam + ham, day, id LIMIT ?)",
                    (excess,),
                ).rowcount
                db.tokens -= removed
                log_event(log, "spam_tokens_pruned", account=account, removed=removed)
        if db.trained < 0 or db.trained > self.max_trained:
            (db.trained,) = conn.execute("SELECT COUNT(*) FROM trained").fetchone()
            if db.trained > self.max_trained:
                excess = db.trained - int(self.max_trained * PRUNE_TO)
                removed = conn.execute(
                    "DELETE FROM trained WHERE digest IN ("
                    " SELECT digest FROM trained ORDER BY at, digest LIMIT ?)",
                    (excess,),
                ).rowcount
                db.trained -= removed
                log_event(log, "spam_trained_pruned", account=account, removed=removed)
