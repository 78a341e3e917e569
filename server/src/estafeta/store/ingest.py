"""One flush per acknowledged delivery: the index commit (issue 17, "Ingest").

RFC 5321 6.1: a 250 to DATA accepts responsibility for the message, which
must not be lost "because the host later crashes"; so a delivery is
acknowledged only once it is durable. Until version 7 of the index that
took three flushes in a row (file fsync, ``new/`` fsync, index commit).
Now a message up to ``Store.inline_max`` octets takes one:

1. its file is written to ``tmp/NAME``, not fsync'd (the page cache);
2. one transaction adds its ``messages`` row (file ``new/NAME``) and its
   bytes to the ``pending`` table, and commits: WAL, synchronous=FULL, so
   the commit is on disk when COMMIT returns. Acknowledged here;
3. later, for many messages at once and off the critical path (``settle``):
   the ``tmp/`` files are made durable (one syncfs(2) of the file system
   where it reports errors, Linux 5.8 and later; else an fsync of each),
   renamed to ``new/NAME``, each ``new/`` is fsync'd; only then are their
   ``pending`` rows deleted (a commit that need not be durable: losing it
   only makes step 4 do needless work).
4. Opening an account (``recover``) writes every file still in ``pending``
   whose ``new/NAME`` is missing from its bytes (fsync'd, then linked into
   ``new/``, ``new/`` fsync'd), then deletes those rows.

Why nothing acknowledged is lost, duplicated or seen half-written, even on
power loss (the file system may lose any write or rename not fsync'd):

* Acknowledged means the commit of step 2 returned: SQLite's documentation
  for ``PRAGMA synchronous`` (https://sqlite.org/pragma.html#pragma_synchronous)
  says that with FULL in WAL mode the WAL is synced after each commit, and
  that commits are atomic (a torn WAL tail is ignored on recovery,
  https://sqlite.org/wal.html). So the row and the bytes are durable
  together, and step 4 can always make the file.
* A file reaches ``new/`` only by a rename after its data was fsync'd (step
  3) or by a link of a file written and fsync'd from the committed bytes
  (step 4): ``new/`` and ``cur/`` never hold a partial file, as before.
  What is in ``tmp/`` is never read as mail after a crash (Maildir rules;
  ``maildir.clean_tmp`` takes it away after 36 hours).
* A crash before step 2's commit leaves at most a file in ``tmp/``: not
  acknowledged, never indexed. The orphan scan of ``new/`` (``Store._recover``)
  can no longer meet a file of an uncommitted delivery at all.
* No duplicates: a ``pending`` row names the one file of its ``messages``
  row; step 4 writes it only if ``new/NAME`` is missing, and uses link(2),
  which never replaces a file another process published meanwhile.
* Rows deleted by an expunge, a move or a mailbox rename never point at a
  file still in ``tmp/``: the store settles an account's files (step 3, at
  once) before any operation that links, unlinks or renames message files.
  Step 4 also skips ``pending`` rows whose ``messages`` row is gone.

Could ``synchronous=NORMAL`` plus one flush of our own do? Only if that
flush covered the WAL: the same documentation says a commit with NORMAL
"might roll back following a power loss", and FULL is exactly NORMAL plus
one sync of the WAL per commit, the one flush kept here. So FULL stays for
deliveries; the deletions of step 3 commit with NORMAL (their loss is
harmless, see above; WAL mode is "always consistent" with NORMAL).

Readers: between steps 2 and 3 a message's row says ``new/NAME`` while the
file is ``tmp/NAME`` (complete in the page cache: written before the commit
made the row visible). ``maildir.open_message`` looks there.

Messages larger than ``inline_max`` keep the three flushes (their bytes
would double the WAL traffic and the flushes cost little next to the data).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from estafeta.log import log_event
from estafeta.store import maildir

log = logging.getLogger("estafeta.store")

# Messages up to this many octets are acknowledged on the index commit alone.
INLINE_MAX = 256 * 1024


@dataclass(frozen=True)
class Unsynced:
    """A delivered message whose file is still in ``tmp/``, not fsync'd."""

    address: str
    account_path: Path
    file: str  # messages.file: relative to the account, '<folder>/new/NAME'
    tmp_path: Path

    @property
    def final_path(self) -> Path:
        return self.account_path / self.file


# -- the pending table (inside the caller's transaction) -------------------------


def add_pending(conn: sqlite3.Connection, rows: Iterable[tuple[str, bytes]]) -> None:
    conn.executemany("INSERT OR REPLACE INTO pending (file, data) VALUES (?, ?)", rows)


def forget_pending(conn: sqlite3.Connection, files: Sequence[str]) -> None:
    conn.executemany("DELETE FROM pending WHERE file = ?", ((file,) for file in files))


def pending_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM pending").fetchone()[0])


def forget_settled(conn: sqlite3.Connection, files: Sequence[str]) -> None:
    """Delete the ``pending`` rows of files now durable in ``new/``, in a
    transaction of its own committed with synchronous=NORMAL: no flush
    (lost on power failure, the rows are found again by ``recover``, whose
    work is then only a check that the file is there)."""
    if not files:
        return
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            forget_pending(conn, files)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA synchronous=FULL")


# -- making files durable ------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """syncfs(2) from the C library, or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


_SYNCFS = _load_syncfs() if sys.platform == "linux" else None


def syncfs_reports_errors() -> bool:
    """Whether syncfs(2) is here and returns writeback errors (Linux 5.8,
    commit 735e4ae5ba28; before, it returned 0 after an I/O error)."""
    if _SYNCFS is None:
        return False
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def syncfs(path: Path) -> None:
    """Flush the whole file system that holds ``path``: every file's data
    and metadata written so far (one journal commit for all of them).
    Reports writeback errors since Linux 5.8. OSError if it fails or is
    not available."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


def settle(
    entries: Sequence[Unsynced],
    parallel_map: Callable[..., Iterable[OSError | None]] = map,
    whole_fs: bool = False,
) -> tuple[list[Unsynced], list[Unsynced]]:
    """Step 3 for ``entries``: fsync each ``tmp/`` file (in parallel with
    ``parallel_map``: the file system's journal merges concurrent fsyncs),
    rename it into ``new/``, fsync each ``new/`` once. Returns (durable in
    ``new/``, failed); a failed one may be in ``tmp/`` or in ``new/`` and is
    left to ``materialise``. Never raises OSError.

    ``whole_fs``: one syncfs(2) per file system instead of one fsync per
    file (much fewer syscalls and journal commits, but it also flushes
    whatever else is dirty on that file system); where it fails or is
    missing, every file is fsync'd as without it."""

    def sync(entry: Unsynced) -> OSError | None:
        try:
            _fsync_file(entry.tmp_path)
        except OSError as exc:
            return exc
        return None

    errors: Iterable[OSError | None] | None = None
    if whole_fs and entries:
        try:
            for device_path in {
                entry.account_path.stat().st_dev: entry.account_path for entry in entries
            }.values():
                syncfs(device_path)
            errors = [None] * len(entries)
        except OSError:
            errors = None  # fsync them one by one: that tells which failed
    if errors is None:
        errors = parallel_map(sync, entries)
    failed: list[Unsynced] = []
    moved: list[Unsynced] = []
    for entry, error in zip(entries, errors, strict=True):
        if error is not None:
            failed.append(entry)
            continue
        try:
            os.rename(entry.tmp_path, entry.final_path)
        except OSError:
            failed.append(entry)
            continue
        moved.append(entry)
    directories: dict[Path, OSError | None] = {}
    for entry in moved:
        directory = entry.final_path.parent
        if directory not in directories:
            try:
                maildir.fsync_dir(directory)
                directories[directory] = None
            except OSError as exc:
                directories[directory] = exc
    durable = [entry for entry in moved if directories[entry.final_path.parent] is None]
    failed += [entry for entry in moved if directories[entry.final_path.parent] is not None]
    return durable, failed


def materialise(account_path: Path, file: str, data: bytes, mtime: float | None) -> None:
    """Make ``file`` (relative to the account) durable in ``new/`` from its
    committed bytes, whatever a crash left: if it is there, it came by a
    rename after its fsync (``settle``) or by this function, so it is whole
    and only its directory is fsync'd again; otherwise the bytes are written
    to a fresh name in ``tmp/``, fsync'd, linked to ``file`` (link(2) never
    replaces a file published meanwhile by another process) and ``new/``
    fsync'd. The stale ``tmp/NAME`` the delivery wrote is removed. Raises
    OSError if the file system refuses."""
    final = account_path / file
    folder = final.parent.parent
    if not os.path.lexists(final):
        staged = maildir.write_tmp(
            folder, f"{final.name}.recover{secrets.token_hex(4)}", data, mtime
        )
        try:
            os.link(staged.tmp_path, final)
        except FileExistsError:
            pass
        finally:
            staged.tmp_path.unlink(missing_ok=True)
    maildir.fsync_dir(final.parent)
    with contextlib.suppress(OSError):
        (folder / "tmp" / final.name).unlink(missing_ok=True)


def recover(conn: sqlite3.Connection, account_path: Path, address: str) -> int:
    """Step 4, when an account is opened (before anything reads it): every
    ``pending`` message gets its durable file, then its row goes (see
    ``write_out``). Returns the files written or checked."""
    if conn.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is None:
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = write_out(conn, account_path, address)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log_event(log, "pending_recovered", logging.INFO, account=address, files=len(done))
    return len(done)


def write_out(conn: sqlite3.Connection, account_path: Path, address: str) -> list[str]:
    """Inside the caller's transaction (which keeps other processes' commits
    out): write every ``pending`` message's durable file and delete its
    row. A row whose message was expunged meanwhile is just deleted. A file
    that cannot be written is logged and its row kept (tried again at the
    next open; its bytes stay safe in the index). Returns the files done."""
    rows = conn.execute(
        "SELECT p.file, p.data, m.internal_date FROM pending AS p"
        " LEFT JOIN messages AS m ON m.file = p.file"
    ).fetchall()
    done: list[str] = []
    for file, data, internal_date in rows:
        if internal_date is None:
            done.append(file)  # expunged (or moved) after it was settled
            continue
        try:
            materialise(account_path, file, data, internal_date)
        except OSError as exc:
            log_event(
                log, "pending_not_written", logging.ERROR, account=address, file=file,
                error=exc.strerror,
            )  # fmt: skip
            continue
        done.append(file)
    forget_pending(conn, done)
    return done


def data_of(conn: sqlite3.Connection, files: Sequence[str]) -> dict[str, tuple[bytes, int | None]]:
    """file -> (bytes, internal date) of ``pending`` rows."""
    found: dict[str, tuple[bytes, int | None]] = {}
    for file in files:
        row = conn.execute(
            "SELECT p.data, m.internal_date FROM pending AS p"
            " LEFT JOIN messages AS m ON m.file = p.file WHERE p.file = ?",
            (file,),
        ).fetchone()
        if row is not None:
            found[file] = (row[0], row[1])
    return found
