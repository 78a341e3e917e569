"""What Sieve remembers between deliveries: vacation replies and duplicates.

Two rules need a memory that survives restarts:

* vacation (rfc5230:4.2): one reply per sender per ``:days`` (or
  ``:seconds``, rfc6131:2) window; the delivery layer asks ``seen`` before
  it answers and ``remember``\\s after it queued the reply;
* duplicate (rfc7352:3): "has a message with this ID been seen in the last
  ``:seconds``"; the interpreter asks through ``Context.seen`` and the
  delivery layer records the marks once the message is delivered.

On disk: one SQLite file (``config.sieve_dir / "memory.db"``), WAL mode::

    records(account TEXT, key BLOB, at REAL, expires REAL)
        PRIMARY KEY (account, key)      key = SHA-256 of the caller's key
        INDEX (account, at)             the per-account cap drops the oldest
        INDEX (expires)                 prune

A record says "``key`` was remembered for ``account`` at ``at``; forget it
at ``expires``". ``seen(account, key, seconds)`` is true when the record
exists, has not expired, and was made within the last ``seconds``: a
shorter window set later (a user who changes ``:days 7`` to ``:days 1``)
applies at once, and an expired record never counts, whether ``prune``
has removed it yet or not.

Crash safety: every write is one transaction (synchronous=NORMAL: a power
loss may forget the last records, which costs at worst a second vacation
reply, never a message). A file that is not a database is moved aside
(``memory.db.broken-TIMESTAMP``) and a new one started, with an error in
the log: the memory is a convenience, mail must flow without it. For the
same reason ``seen`` and ``remember`` log database errors and carry on
(``seen`` then answers False: the message is kept and a reply may be
sent twice).

Limits an attacker cannot grow: keys are hashed (a 10 MB Message-ID takes
32 octets), and an account holds at most ``max_records`` (10,000) records,
the oldest dropped first, so a flood of distinct senders costs a bounded
row count per account. Records expire; ``prune`` removes them, and
``remember`` prunes every ``PRUNE_EVERY`` writes.

Thread-safe: one connection, one lock (the delivery layer calls from
worker threads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

from estafeta.log import log_event

log = logging.getLogger("estafeta.sieve")

MAX_RECORDS = 10_000  # per account
PRUNE_EVERY = 1_000  # remember() calls between two automatic prunes
BUSY_TIMEOUT_MS = 10_000
# Longest window honoured: 10 years (vacation_max_period is far below).
MAX_SECONDS = 10 * 366 * 86400.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records ("
    " account TEXT NOT NULL,"
    " key BLOB NOT NULL,"  # sha256 of the caller's key
    " at REAL NOT NULL,"  # Unix time it was remembered
    " expires REAL NOT NULL,"  # Unix time it is forgotten
    " PRIMARY KEY (account, key)"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS records_by_age ON records (account, at)",
    "CREATE INDEX IF NOT EXISTS records_by_expiry ON records (expires)",
)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _window(seconds: float) -> float:
    """``seconds`` as a usable window: NaN and negatives are 0, at most MAX_SECONDS."""
    if not seconds > 0:  # NaN too
        return 0.0
    return min(float(seconds), MAX_SECONDS)


class Memory:
    """Vacation and duplicate records of every account, in one SQLite file."""

    def __init__(self, path: Path, *, max_records: int = MAX_RECORDS) -> None:
        self.path = path
        self.max_records = max_records
        self._lock = threading.Lock()
        self._writes = 0
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            # Not a database (or a broken one): keep it for a post-mortem,
            # start afresh. Losing the memory costs duplicate replies only.
            broken = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
            log_event(log, "sieve_memory_reset", logging.ERROR, path=str(self.path), error=str(exc))
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, Path(f"{broken}{suffix}"))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            for statement in _SCHEMA:
                conn.execute(statement)
            os.chmod(self.path, 0o600)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- queries -------------------------------------------------------------

    def seen(self, account: str, key: str, seconds: float, now: float | None = None) -> bool:
        """Was ``key`` remembered for ``account`` in the last ``seconds``
        (and not expired since)? False on a database error (logged)."""
        now = time.time() if now is None else now
        since = now - _window(seconds)
        try:
            with self._lock:
                row = self._conn.execute(
                    "SELECT 1 FROM records WHERE account = ? AND key = ? AND at > ? "
                    "AND expires > ?",
                    (account, _digest(key), since, now),
                ).fetchone()
        except sqlite3.Error as exc:
            log_event(log, "sieve_memory_error", logging.ERROR, op="seen", error=str(exc))
            return False
        return row is not None

    def remember(self, account: str, key: str, seconds: float, now: float | None = None) -> None:
        """Record ``key`` for ``account`` now, forgotten after ``seconds``.
        Remembering it again starts a new window. Errors are logged."""
        now = time.time() if now is None else now
        try:
            with self._lock:
                self._remember(account, _digest(key), now, now + _window(seconds))
                self._writes += 1
                if self._writes % PRUNE_EVERY == 0:
                    self._prune(now)
        except sqlite3.Error as exc:
            log_event(log, "sieve_memory_error", logging.ERROR, op="remember", error=str(exc))

    def _remember(self, account: str, digest: bytes, now: float, expires: float) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO records (account, key, at, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (account, key) DO UPDATE SET at = excluded.at, "
                "expires = excluded.expires",
                (account, digest, now, expires),
            )
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM records WHERE account = ?", (account,)
            ).fetchone()
            if count > self.max_records:
                # The oldest go first; the one just written is the newest.
                conn.execute(
                    "DELETE FROM records WHERE account = ? AND key IN ("
                    " SELECT key FROM records WHERE account = ? ORDER BY at, key LIMIT ?)",
                    (account, account, count - self.max_records),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def prune(self, now: float | None = None) -> int:
        """Remove expired records; how many."""
        now = time.time() if now is None else now
        with self._lock:
            return self._prune(now)

    def _prune(self, now: float) -> int:
        cursor = self._conn.execute("DELETE FROM records WHERE expires <= ?", (now,))
        return max(0, cursor.rowcount)

    def forget(self, account: str) -> int:
        """Remove every record of ``account`` (``estafeta user erase``), so
        that the file no longer names it; how many went. The rows are deleted
        with ``secure_delete`` (their octets overwritten), the file is
        rebuilt (VACUUM: rows pruned earlier left copies in free space), and
        the WAL is checkpointed and truncated: sqlite3.OperationalError if a
        reader kept it busy past the busy timeout (call it again). Records
        of other accounts that concern ``account`` (their vacation replies
        to it) are keyed by hashes and stay until they expire."""
        with self._lock:
            conn = self._conn
            conn.execute("PRAGMA secure_delete = ON")
            try:
                cursor = conn.execute("DELETE FROM records WHERE account = ?", (account,))
                removed = max(0, cursor.rowcount)
                conn.execute("VACUUM")
                (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute("PRAGMA secure_delete = OFF")
        if busy:
            raise sqlite3.OperationalError(f"{self.path}: the WAL is in use; run again")
        return removed

    def count(self, account: str | None = None) -> int:
        """Records held (for one account, or all): tests and metrics."""
        with self._lock:
            if account is None:
                row = self._conn.execute("SELECT COUNT(*) FROM records").fetchone()
            else:
                row = self._conn.execute(
                    "SELECT COUNT(*) FROM records WHERE account = ?", (account,)
                ).fetchone()
        return int(row[0])
