"""The outbound queue on disk.

Layout under ``data_dir/queue/``::

    queue.db              SQLite (WAL, synchronous=FULL): messages, entries, MTA-STS cache
    messages/<ID>.eml     the message as it will be sent (signed, trace headers added)

A message accepted for remote delivery has one row in ``messages`` and one
row in ``entries`` per destination domain, listing that domain's recipients.
``enqueue`` writes and fsyncs the file and its directory, then commits the
rows: once it returns, a crash loses nothing (the SMTP ``250`` is sent after
it). A file without a row (crash between the two) is removed on open; a row
never exists without its file.

Entries are delivered, rescheduled or removed by the queue runner
(``queue.runner``); the CLI (``estafeta queue list/flush/delete``) works on
the same database from another process, which WAL makes safe.
"""

from __future__ import annotations

import contextlib
import email.policy
import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from estafeta.address import split_address

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    envelope_id TEXT
);
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id),
    domain TEXT NOT NULL,
    recipients TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    warned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_due ON entries(next_attempt);
CREATE TABLE IF NOT EXISTS mta_sts (
    domain TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
"""

# Octets of a queued message's header read to see whose it is (forget_address).
HEADER_PEEK = 64 * 1024
# A message file without a row this old is left by a crash, not an enqueue
# in progress (forget_address removes it; the server does at start).
ORPHAN_AGE = 3600.0

_ID_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


@dataclass(frozen=True)
class Entry:
    id: str
    message_id: str
    sender: str  # "" for the null reverse-path (DSNs)
    domain: str
    recipients: tuple[str, ...]
    created: float
    size: int
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    warned: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "message": self.message_id,
            "sender": self.sender,
            "domain": self.domain,
            "recipients": list(self.recipients),
            "created": self.created,
            "size": self.size,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "warned": self.warned,
        }


@dataclass(frozen=True)
class Bounce:
    """A DSN (rfc3464) to queue with the settlement of the entry it is
    about: from the null reverse-path (rfc5321:4.5.5) to ``to``."""

    to: str
    data: bytes


class QueueUnavailable(Exception):
    """The queue's storage cannot be reached now (a cluster's database is
    down): try again later. The local store never raises it."""


class QueueBackend(Protocol):
    """What the runner, the CLI and delivery need of a queue: the local
    ``QueueStore`` or a cluster's (``estafeta.queue.cluster``).

    ``due`` may claim what it returns (a cluster's does, for ``lease``
    seconds); ``settle``, ``reschedule`` and ``remove`` of a claimed entry
    then write only while the claim holds and say whether they did;
    ``renew`` extends the claims of attempts still running and names those
    lost to another node; ``release`` gives claims up. The local store has
    no claims (``lease`` is infinite). ``settle`` queues an attempt's DSNs
    with the entry's new state: in one transaction in a cluster, so that a
    DSN is queued exactly once whichever node settles."""

    lease: float

    def close(self) -> None: ...
    def depth(self) -> tuple[int, float | None]: ...
    def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        envelope_id: str | None = None,
        now: float | None = None,
    ) -> list[Entry]: ...
    def settle(
        self,
        entry_id: str,
        *,
        recipients: Sequence[str],
        next_attempt: float,
        error: str,
        warned: bool | None = None,
        bounces: Sequence[Bounce] = (),
    ) -> bool: ...
    def reschedule(
        self,
        entry_id: str,
        *,
        recipients: Sequence[str],
        next_attempt: float,
        error: str,
        warned: bool | None = None,
    ) -> bool: ...
    def remove(self, entry_id: str) -> bool: ...
    def renew(self, entry_ids: Collection[str]) -> set[str]: ...
    def release(self, entry_ids: Collection[str]) -> None: ...
    def flush(self, entry_id: str | None = None, now: float | None = None) -> int: ...
    def forget_address(
        self, address: str, separator: str | None = "+", now: float | None = None
    ) -> tuple[int, int]: ...
    def entries(self) -> list[Entry]: ...
    def get(self, entry_id: str) -> Entry | None: ...
    def due(self, now: float, exclude: set[str], limit: int) -> list[Entry]: ...
    def next_due(self) -> float | None: ...
    def read_message(self, message_id: str) -> bytes: ...
    def envelope_id(self, message_id: str) -> str | None: ...
    def sts_get(self, domain: str) -> str | None: ...
    def sts_put(self, domain: str, policy: str) -> None: ...


def plan_entries(
    message_id: str, sender: str, recipients: Sequence[str], size: int, now: float
) -> list[Entry]:
    """The entries of a new message: one per recipient domain, recipients
    in their order without repeats."""
    if not recipients:
        raise ValueError("no recipients")
    by_domain: dict[str, list[str]] = {}
    for rcpt in recipients:
        by_domain.setdefault(split_address(rcpt)[1], []).append(rcpt)
    return [
        Entry(
            id=new_id(),
            message_id=message_id,
            sender=sender,
            domain=domain,
            recipients=tuple(dict.fromkeys(rcpts)),
            created=now,
            size=size,
            next_attempt=now,
        )
        for domain, rcpts in by_domain.items()
    ]


class QueueStore:
    # No claims: one process runs the queue (QueueBackend).
    lease = math.inf

    def __init__(self, directory: Path, *, recover: bool = True) -> None:
        """Open (and create) the queue in DIRECTORY.

        ``recover`` removes what a crash inside ``enqueue`` left (files
        without committed rows): only the server may do that, at start.
        Tools that open the queue while the server runs (``estafeta
        queue ...``) pass ``recover=False``: a file without a row there
        may be a message the server is committing right now.
        """
        self.directory = directory
        self.messages = directory / "messages"
        self.messages.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            directory / "queue.db", isolation_level=None, check_same_thread=False, timeout=10
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)
        if recover:
            self._remove_orphans()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _file(self, message_id: str) -> Path:
        return self.messages / f"{message_id}.eml"

    def _remove_orphans(self) -> None:
        """Files whose rows never committed (a crash inside enqueue)."""
        with self._lock:
            known = {row[0] for row in self._conn.execute("SELECT id FROM messages")}
            # Messages whose last entry went away in a crash before the file did.
            for (message_id,) in self._conn.execute(
                "SELECT id FROM messages WHERE id NOT IN (SELECT message_id FROM entries)"
            ).fetchall():
                self._conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                known.discard(message_id)
        for path in self.messages.iterdir():
            if (path.suffix == ".eml" and path.stem not in known) or path.suffix == ".tmp":
                path.unlink(missing_ok=True)

    def depth(self) -> tuple[int, float | None]:
        """Entries waiting, and the creation time of the oldest message (metrics)."""
        with self._lock:
            count, oldest = self._conn.execute(
                "SELECT COUNT(*), MIN(m.created) FROM entries e JOIN messages m"
                " ON m.id = e.message_id"
            ).fetchone()
        return int(count), (float(oldest) if oldest is not None else None)

    # -- writing ----------------------------------------------------------

    def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        envelope_id: str | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        """Store a message for remote delivery, one entry per recipient domain.

        Blocking (fsync): call it from a thread.
        """
        if not recipients:
            raise ValueError("no recipients")
        now = time.time() if now is None else now
        message_id = new_id()
        path = self._file(message_id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dir_fd = os.open(self.messages, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        entries = plan_entries(message_id, sender, recipients, len(data), now)
        try:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO messages (id, sender, size, created, envelope_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (message_id, sender, len(data), now, envelope_id),
                )
                conn.executemany(
                    "INSERT INTO entries (id, message_id, domain, recipients, next_attempt)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(e.id, message_id, e.domain, json.dumps(e.recipients), now) for e in entries],
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return entries

    def reschedule(
        self,
        entry_id: str,
        *,
        recipients: Sequence[str],
        next_attempt: float,
        error: str,
        warned: bool | None = None,
    ) -> bool:
        """After an attempt: the recipients still to try, and when; whether
        the entry was there."""
        if not recipients:
            return self.remove(entry_id)
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE entries SET recipients = ?, attempts = attempts + 1,"
                " next_attempt = ?, last_error = ?, warned = COALESCE(?, warned) WHERE id = ?",
                (
                    json.dumps(list(recipients)),
                    next_attempt,
                    error,
                    None if warned is None else int(warned),
                    entry_id,
                ),
            )
            return cursor.rowcount > 0

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
        """After an attempt: queue its DSNs, then ``reschedule``. One
        process runs this queue, so nobody else settles the entry; a crash
        between the two steps sends a DSN again after the restart. Always
        True (QueueBackend: nothing was refused)."""
        for bounce in bounces:
            self.enqueue("", [bounce.to], bounce.data)
        self.reschedule(
            entry_id,
            recipients=recipients,
            next_attempt=next_attempt,
            error=error,
            warned=warned,
        )
        return True

    def renew(self, entry_ids: Collection[str]) -> set[str]:
        """No claims to extend, none lost to another node."""
        return set()

    def release(self, entry_ids: Collection[str]) -> None:
        """No claims to give up."""

    def remove(self, entry_id: str) -> bool:
        """Drop an entry; the message file goes with its last entry."""
        orphan: str | None = None
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT message_id FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
            left = conn.execute(
                "SELECT COUNT(*) FROM entries WHERE message_id = ?", (row[0],)
            ).fetchone()[0]
            if not left:
                conn.execute("DELETE FROM messages WHERE id = ?", (row[0],))
                orphan = row[0]
        if orphan:
            self._file(orphan).unlink(missing_ok=True)
        return True

    def flush(self, entry_id: str | None = None, now: float | None = None) -> int:
        """Make entries due now; returns how many."""
        now = time.time() if now is None else now
        with self._transaction() as conn:
            if entry_id is None:
                cursor = conn.execute("UPDATE entries SET next_attempt = ?", (now,))
            else:
                cursor = conn.execute(
                    "UPDATE entries SET next_attempt = ? WHERE id = ?", (now, entry_id)
                )
            return cursor.rowcount

    # -- erasure ----------------------------------------------------------

    def forget_address(
        self, address: str, separator: str | None = "+", now: float | None = None
    ) -> tuple[int, int]:
        """Take ``address`` (normalised) out of the queue (``estafeta user
        erase``): (messages deleted, entries it was taken out of).

        Deleted: the messages it sent, i.e. whose envelope sender is it (or
        a ``local+tag`` of it), and those whose header says it sent them or
        they are its: ``From``/``Sender`` of a null-sender message (its
        vacation replies), ``Delivered-To`` (what its Sieve redirect
        forwards). Of the other entries it is taken out as a recipient (an
        entry left with none goes), and a last error naming it is cleared.
        Rows go with ``secure_delete``, then the files; the file is rebuilt
        (VACUUM: rows of messages sent long ago left copies in free space)
        and its WAL truncated. A crash between the commit and the unlinks
        leaves files without rows: removed here once they are ORPHAN_AGE
        old (younger ones may be an enqueue in progress), and by the
        server's next start. An attempt in flight meanwhile may write its
        old recipient list back: erase again once it is done."""
        now = time.time() if now is None else now
        wanted = address.lower()
        is_address = address_matcher(address, separator)
        with self._lock:
            rows = self._conn.execute(
                "SELECT e.id, e.message_id, m.sender, e.recipients, e.last_error"
                " FROM entries e JOIN messages m ON m.id = e.message_id"
            ).fetchall()
        doomed: set[str] = set()
        for _eid, message_id, sender, _rcpts, _error in rows:
            if message_id in doomed:
                continue
            if is_address(sender) or _header_names(self._file(message_id), not sender, is_address):
                doomed.add(message_id)
        changes: list[tuple[str, list[str], str]] = []
        for eid, message_id, _sender, rcpts, error in rows:
            if message_id in doomed:
                continue
            recipients = json.loads(rcpts)
            kept = [r for r in recipients if not is_address(r)]
            if len(kept) != len(recipients):
                changes.append((eid, kept, "" if wanted in error.lower() else error))
        with self._lock:
            self._conn.execute("PRAGMA secure_delete = ON")
            try:
                emptied = self._forget(doomed, changes)
                self._conn.execute("VACUUM")
                (busy, _, _) = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._conn.execute("PRAGMA secure_delete = OFF")
        for message_id in doomed.union(emptied):
            self._file(message_id).unlink(missing_ok=True)
        self._remove_orphans_of(now, is_address)
        if busy:
            raise sqlite3.OperationalError(f"{self.directory}: the WAL is in use; run again")
        return len(doomed), len(changes)

    def _forget(self, doomed: set[str], changes: list[tuple[str, list[str], str]]) -> list[str]:
        """The rows of forget_address, in one transaction; the other messages
        it left without an entry (their files go too)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for message_id in doomed:
                conn.execute("DELETE FROM entries WHERE message_id = ?", (message_id,))
                conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            for eid, kept, error in changes:
                if kept:
                    conn.execute(
                        "UPDATE entries SET recipients = ?, last_error = ? WHERE id = ?",
                        (json.dumps(kept), error, eid),
                    )
                    continue
                conn.execute("DELETE FROM entries WHERE id = ?", (eid,))
            # Messages whose last entry went (it was their only recipient).
            emptied = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM messages WHERE id NOT IN (SELECT message_id FROM entries)"
                )
            ]
            for message_id in emptied:
                conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return emptied

    def _remove_orphans_of(self, now: float, is_address: Callable[[str], bool]) -> None:
        """Message files without a row left by a crash: those ORPHAN_AGE old,
        and younger ones whose header names the address (an erasure that
        crashed after its commit, run again at once)."""
        with self._lock:
            known = {row[0] for row in self._conn.execute("SELECT id FROM messages")}
        for path in self.messages.iterdir():
            if path.suffix not in (".eml", ".tmp") or path.stem in known:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= ORPHAN_AGE or _header_names(
                    path, True, is_address
                ):
                    path.unlink()

    # -- reading ----------------------------------------------------------

    _SELECT = (
        "SELECT e.id, e.message_id, m.sender, e.domain, e.recipients, m.created, m.size,"
        " e.attempts, e.next_attempt, e.last_error, e.warned"
        " FROM entries e JOIN messages m ON m.id = e.message_id"
    )

    @staticmethod
    def _entry(row: tuple[object, ...]) -> Entry:
        (eid, mid, sender, domain, rcpts, created, size, attempts, nxt, error, warned) = row
        return Entry(
            id=str(eid),
            message_id=str(mid),
            sender=str(sender),
            domain=str(domain),
            recipients=tuple(json.loads(str(rcpts))),
            created=float(created),  # type: ignore[arg-type]
            size=int(size),  # type: ignore[call-overload]
            attempts=int(attempts),  # type: ignore[call-overload]
            next_attempt=float(nxt),  # type: ignore[arg-type]
            last_error=str(error),
            warned=bool(warned),
        )

    def entries(self) -> list[Entry]:
        with self._lock:
            rows = self._conn.execute(self._SELECT + " ORDER BY m.created, e.domain").fetchall()
        return [self._entry(row) for row in rows]

    def get(self, entry_id: str) -> Entry | None:
        with self._lock:
            row = self._conn.execute(self._SELECT + " WHERE e.id = ?", (entry_id,)).fetchone()
        return self._entry(row) if row else None

    def due(self, now: float, exclude: set[str], limit: int) -> list[Entry]:
        with self._lock:
            rows = self._conn.execute(
                self._SELECT + " WHERE e.next_attempt <= ? ORDER BY e.next_attempt LIMIT ?",
                (now, limit + len(exclude)),
            ).fetchall()
        entries = [self._entry(row) for row in rows]
        return [e for e in entries if e.id not in exclude][:limit]

    def next_due(self) -> float | None:
        with self._lock:
            row = self._conn.execute("SELECT MIN(next_attempt) FROM entries").fetchone()
        return None if row[0] is None else float(row[0])

    def read_message(self, message_id: str) -> bytes:
        return self._file(message_id).read_bytes()

    def envelope_id(self, message_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT envelope_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        return row[0] if row else None

    # -- MTA-STS policy cache (rfc8461:5.1: survives restarts) -------------

    def sts_get(self, domain: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT policy FROM mta_sts WHERE domain = ?", (domain,)
            ).fetchone()
        return row[0] if row else None

    def sts_put(self, domain: str, policy: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO mta_sts (domain, policy) VALUES (?, ?)"
                " ON CONFLICT(domain) DO UPDATE SET policy = excluded.policy",
                (domain, policy),
            )


def address_matcher(address: str, separator: str | None = "+") -> Callable[[str], bool]:
    """Whether a text names ``address`` (normalised) or a ``local+tag`` of
    it (forget_address)."""
    wanted = address.lower()
    local, _, domain = wanted.rpartition("@")

    def is_address(text: str) -> bool:
        text = text.strip().strip("<>").lower()
        if text == wanted:
            return True
        head, _, tail = text.rpartition("@")
        return bool(separator) and tail == domain and head.split(separator, 1)[0] == local

    return is_address


def _header_names(path: Path, null_sender: bool, is_address: Callable[[str], bool]) -> bool:
    try:
        with path.open("rb") as stream:
            head = stream.read(HEADER_PEEK)
    except FileNotFoundError:
        return False
    return header_names(head, null_sender, is_address)


def header_names(head: bytes, null_sender: bool, is_address: Callable[[str], bool]) -> bool:
    """Whether a queued message's header (its first HEADER_PEEK octets)
    says it is the address's: its ``Delivered-To``, and for a null-sender
    message its ``From``/``Sender`` (see QueueStore.forget_address)."""
    end = head.find(b"\r\n\r\n")
    header = BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        head[: end + 2] if end >= 0 else head
    )
    names = ["Delivered-To"] + (["From", "Sender"] if null_sender else [])
    for name in names:
        for value in header.get_all(name, []):
            if any(is_address(found) for _, found in getaddresses([str(value)])):
                return True
    return False


if TYPE_CHECKING:
    _backend: type[QueueBackend] = QueueStore
