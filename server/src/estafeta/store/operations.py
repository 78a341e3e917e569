"""What IMAP changes in a store: flags, expunge, copy, move, mailboxes.

Each function runs in the store's writer thread on one account. The order
is always: prepare files that must exist (hard links, fsync'd directories),
commit the index, then do the file-system work the commit decided (unlink,
rename, remove), recorded in the ``journal`` table inside the commit so
that ``replay_journal`` finishes it after a crash. So an acknowledged
change is never undone, and an expunged message never comes back.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from estafeta.message import Summary
from estafeta.store import index, maildir
from estafeta.store.index import Mailbox

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MAX_MAILBOX_NAME = 1000  # octets; far above what clients use, far below path limits


class MailboxError(Exception):
    """A mailbox operation refused; ``code`` is an rfc5530 response code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class FlagChange:
    uid: int
    flags: tuple[str, ...]
    modseq: int


@dataclass(frozen=True)
class StoreResult:
    changed: list[FlagChange]
    failed: list[int]  # rfc7162:3.1.3 UIDs that failed UNCHANGEDSINCE
    highestmodseq: int


@dataclass(frozen=True)
class CopyResult:
    uidvalidity: int  # of the destination, for rfc4315 COPYUID
    source_uids: list[int]
    dest_uids: list[int]
    expunged: list[int]  # MOVE only


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _need(conn: sqlite3.Connection, name: str) -> Mailbox:
    box = index.mailbox(conn, name)
    if box is None:
        raise MailboxError(f"no mailbox {name!r}", "NONEXISTENT")
    return box


def _bump(conn: sqlite3.Connection, box: Mailbox) -> int:
    """Take the mailbox's next modseq (rfc7162:3.1.1: strictly increasing)."""
    row = conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?", (box.id,)).fetchone()
    modseq = int(row[0]) + 1
    conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, box.id))
    return modseq


def canonical_flags(flags: Iterable[str]) -> list[str]:
    """System flags in canonical case (rfc9051:2.3.2: flags are case-insensitive),
    keywords as given; duplicates removed, order kept."""
    by_lower = {flag.lower(): flag for flag in SYSTEM_FLAGS}
    result: list[str] = []
    seen: set[str] = set()
    for flag in flags:
        canonical = by_lower.get(flag.lower(), flag)
        if canonical.lower() not in seen:
            seen.add(canonical.lower())
            result.append(canonical)
    return result


# -- flags ---------------------------------------------------------------------


def store_flags(
    conn: sqlite3.Connection,
    mailbox: str,
    uids: Sequence[int],
    mode: str,
    flags: Sequence[str],
    unchangedsince: int | None = None,
) -> StoreResult:
    """rfc9051:6.4.6 STORE FLAGS / +FLAGS / -FLAGS on ``uids``.

    Only messages whose flags really change get a new modseq. With
    ``unchangedsince`` (rfc7162:3.1.3), messages modified after it fail.
    """
    if mode not in ("", "+", "-"):
        raise ValueError(mode)
    wanted = canonical_flags(flags)
    lowered = {flag.lower() for flag in wanted}
    with transaction(conn):
        box = _need(conn, mailbox)
        changed: list[FlagChange] = []
        failed: list[int] = []
        modseq: int | None = None
        for uid_chunk in _chunks(sorted(set(uids)), 500):
            placeholders = ",".join("?" * len(uid_chunk))
            rows = conn.execute(
                f"SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? "  # noqa: S608
                f"AND uid IN ({placeholders}) ORDER BY uid",
                (box.id, *uid_chunk),
            ).fetchall()
            for uid, flag_text, old_modseq in rows:
                if unchangedsince is not None and old_modseq > unchangedsince:
                    failed.append(uid)
                    continue
                current = flag_text.split()
                if mode == "+":
                    new = current + [
                        f for f in wanted if f.lower() not in {c.lower() for c in current}
                    ]
                elif mode == "-":
                    new = [f for f in current if f.lower() not in lowered]
                else:
                    new = list(wanted)
                if new == current:
                    continue
                if modseq is None:
                    modseq = _bump(conn, box)
                conn.execute(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                    (" ".join(new), modseq, box.id, uid),
                )
                changed.append(FlagChange(uid, tuple(new), modseq))
        highest = conn.execute(
            "SELECT highestmodseq FROM mailboxes WHERE id = ?", (box.id,)
        ).fetchone()[0]
    return StoreResult(changed, failed, int(highest))


def _chunks(values: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# -- expunge, copy, move ---------------------------------------------------------


def _remove(conn: sqlite3.Connection, box: Mailbox, uids: Sequence[int]) -> list[int]:
    """Delete index rows inside a transaction; journal their files for unlinking."""
    if not uids:
        return []
    modseq = _bump(conn, box)
    removed = []
    for uid_chunk in _chunks(sorted(set(uids)), 500):
        placeholders = ",".join("?" * len(uid_chunk))
        rows = conn.execute(
            f"SELECT uid, file FROM messages WHERE mailbox_id = ? AND uid IN ({placeholders})"  # noqa: S608
            " ORDER BY uid",
            (box.id, *uid_chunk),
        ).fetchall()
        for uid, file in rows:
            conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", (box.id, uid))
            conn.execute(
                "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                (box.id, uid, modseq),
            )
            conn.execute("INSERT INTO journal (op, a) VALUES ('unlink', ?)", (file,))
            removed.append(uid)
    return removed


def expunge(
    conn: sqlite3.Connection,
    account_path: Path,
    mailbox: str,
    uids: Sequence[int] | None = None,
    only_deleted: bool = True,
) -> list[int]:
    """rfc9051:6.4.3 EXPUNGE (all \\Deleted) or rfc4315:2.1 UID EXPUNGE (those of
    ``uids``); with ``only_deleted=False`` (POP3 UPDATE) ``uids`` go whatever their flags."""
    with transaction(conn):
        box = _need(conn, mailbox)
        if only_deleted:
            doomed = [
                row[0]
                for row in conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ? AND (' ' || flags || ' ')"
                    " LIKE '% \\Deleted %' ORDER BY uid",
                    (box.id,),
                )
            ]
            if uids is not None:
                wanted = set(uids)
                doomed = [uid for uid in doomed if uid in wanted]
        else:
            doomed = list(uids or ())
        removed = _remove(conn, box, doomed)
    replay_journal(conn, account_path)
    return removed


def copy(
    conn: sqlite3.Connection,
    account_path: Path,
    hostname: str,
    source: str,
    uids: Sequence[int],
    destination: str,
    move: bool = False,
) -> CopyResult:
    """rfc9051:6.4.7 COPY / rfc6851 MOVE, with rfc4315 COPYUID data.

    Copies are hard links (same file system, no extra space); flags are
    copied, \\Recent is not (rfc9051 has none).
    """
    src = _need(conn, source)
    dst = index.mailbox(conn, destination)
    if dst is None:
        raise MailboxError(f"no mailbox {destination!r}", "TRYCREATE")  # rfc9051:6.4.7
    rows = [
        row
        for uid_chunk in _chunks(sorted(set(uids)), 500)
        for row in conn.execute(
            "SELECT uid, file, size, internal_date, flags, summary FROM messages"  # noqa: S608
            f" WHERE mailbox_id = ? AND uid IN ({','.join('?' * len(uid_chunk))}) ORDER BY uid",
            (src.id, *uid_chunk),
        ).fetchall()
    ]
    dest_folder = account_path / dst.dir if dst.dir else account_path
    maildir.make_maildir(dest_folder)
    linked: list[tuple[str, index.NewMessage]] = []
    try:
        for _uid, file, size, internal_date, flags, summary in rows:
            name = maildir.unique_name(hostname, size)
            target = dest_folder / "new" / name
            os.link(account_path / file, target)
            linked.append(
                (
                    str(target.relative_to(account_path)),
                    index.NewMessage(
                        file=str(target.relative_to(account_path)),
                        size=size,
                        internal_date=internal_date,
                        flags=flags.split(),
                        summary=Summary.from_json(summary),
                    ),
                )
            )
        if linked:
            maildir.fsync_dir(dest_folder / "new")
        with transaction(conn):
            new_uids = index.add_messages(conn, dst.name, [message for _, message in linked])
            expunged = _remove(conn, src, [row[0] for row in rows]) if move else []
    except BaseException:
        for file, _ in linked:
            (account_path / file).unlink(missing_ok=True)
        raise
    if move:
        replay_journal(conn, account_path)
    return CopyResult(dst.uidvalidity, [row[0] for row in rows], new_uids, expunged)


# -- mailboxes ---------------------------------------------------------------


def check_name(name: str) -> str:
    """A mailbox name we can store, or MailboxError (rfc9051:5.1)."""
    if name.upper() == maildir.INBOX:
        return maildir.INBOX
    if not name or name.startswith(maildir.DELIMITER) or name.endswith(maildir.DELIMITER):
        raise MailboxError(f"invalid mailbox name {name!r}", "CANNOT")
    if maildir.DELIMITER * 2 in name:
        raise MailboxError(f"empty level in mailbox name {name!r}", "CANNOT")
    if any(ord(c) < 0x20 or c in "\x7f*%" for c in name):
        raise MailboxError("mailbox names cannot contain *, % or control characters", "CANNOT")
    if len(name.encode("utf-8")) > MAX_MAILBOX_NAME:
        raise MailboxError("mailbox name too long", "CANNOT")
    if name.split(maildir.DELIMITER)[0].upper() == maildir.INBOX and not name.startswith("INBOX"):
        name = maildir.INBOX + name[len(maildir.INBOX) :]
    return name


def create_mailbox(
    conn: sqlite3.Connection, account_path: Path, name: str, special_use: str | None = None
) -> Mailbox:
    """rfc9051:6.3.4 CREATE (superiors created as needed), rfc6154:3 USE."""
    name = check_name(name)
    if name == maildir.INBOX:
        raise MailboxError("INBOX always exists", "ALREADYEXISTS")
    parts = name.split(maildir.DELIMITER)
    with transaction(conn):
        if index.mailbox(conn, name) is not None:
            raise MailboxError(f"mailbox {name!r} already exists", "ALREADYEXISTS")
        if special_use is not None:
            taken = conn.execute(
                "SELECT name FROM mailboxes WHERE special_use = ?", (special_use,)
            ).fetchone()
            if taken:
                raise MailboxError(f"{special_use} is already used by {taken[0]!r}", "USEATTR")
        uidvalidity = max(
            int(time.time()),
            int(conn.execute("SELECT coalesce(max(uidvalidity), 0) FROM mailboxes").fetchone()[0])
            + 1,
        )
        for depth in range(1, len(parts) + 1):
            each = maildir.DELIMITER.join(parts[:depth])
            if each.upper() == maildir.INBOX or index.mailbox(conn, each) is not None:
                continue
            directory = maildir.mailbox_dir(each)
            maildir.make_maildir(account_path / directory)
            conn.execute(
                "INSERT INTO mailboxes (name, dir, uidvalidity, uidnext, highestmodseq,"
                " special_use, subscribed) VALUES (?, ?, ?, 1, 1, ?, 0)",
                (each, directory, uidvalidity, special_use if each == name else None),
            )
        box = index.mailbox(conn, name)
    assert box is not None
    return box


def delete_mailbox(conn: sqlite3.Connection, account_path: Path, name: str) -> None:
    """rfc9051:6.3.5 DELETE: the mailbox and its messages; inferiors stay."""
    name = check_name(name)
    if name == maildir.INBOX:
        raise MailboxError("INBOX cannot be deleted", "CANNOT")
    with transaction(conn):
        box = _need(conn, name)
        conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (box.id,))
        conn.execute("DELETE FROM expunged WHERE mailbox_id = ?", (box.id,))
        conn.execute("DELETE FROM mailboxes WHERE id = ?", (box.id,))
        conn.execute("INSERT INTO journal (op, a) VALUES ('rmtree', ?)", (box.dir,))
    replay_journal(conn, account_path)


def rename_mailbox(
    conn: sqlite3.Connection, account_path: Path, hostname: str, old: str, new: str
) -> None:
    """rfc9051:6.3.6 RENAME, inferiors included; renaming INBOX moves its
    messages to the new mailbox and leaves INBOX empty."""
    old, new = check_name(old), check_name(new)
    if new == maildir.INBOX:
        raise MailboxError("cannot rename to INBOX", "ALREADYEXISTS")
    if index.mailbox(conn, new) is not None:
        raise MailboxError(f"mailbox {new!r} already exists", "ALREADYEXISTS")
    if old == maildir.INBOX:
        create_mailbox(conn, account_path, new)
        inbox = _need(conn, maildir.INBOX)
        uids = [
            r[0] for r in conn.execute("SELECT uid FROM messages WHERE mailbox_id = ?", (inbox.id,))
        ]
        copy(conn, account_path, hostname, maildir.INBOX, uids, new, move=True)
        return
    if new.startswith(old + maildir.DELIMITER):
        raise MailboxError("cannot rename a mailbox into itself", "CANNOT")
    with transaction(conn):
        _need(conn, old)
        boxes = [
            box
            for box in index.mailboxes(conn)
            if box.name == old or box.name.startswith(old + maildir.DELIMITER)
        ]
        for box in boxes:
            name = new + box.name[len(old) :]
            directory = maildir.mailbox_dir(name)
            conn.execute(
                "UPDATE mailboxes SET name = ?, dir = ? WHERE id = ?", (name, directory, box.id)
            )
            conn.execute(
                "UPDATE messages SET file = ? || substr(file, ?) WHERE mailbox_id = ?",
                (directory, len(box.dir) + 1, box.id),
            )
            conn.execute(
                "INSERT INTO journal (op, a, b) VALUES ('rename', ?, ?)", (box.dir, directory)
            )
        # Superiors of the new name (rfc9051:6.3.6: created as needed).
        parts = new.split(maildir.DELIMITER)
        for depth in range(1, len(parts)):
            each = maildir.DELIMITER.join(parts[:depth])
            if index.mailbox(conn, each) is None:
                directory = maildir.mailbox_dir(each)
                conn.execute(
                    "INSERT INTO mailboxes (name, dir, uidvalidity, uidnext, highestmodseq,"
                    " special_use, subscribed) VALUES (?, ?, ?, 1, 1, NULL, 0)",
                    (each, directory, int(time.time())),
                )
                maildir.make_maildir(account_path / directory)
    replay_journal(conn, account_path)


def subscribe(conn: sqlite3.Connection, name: str, subscribed: bool) -> None:
    """rfc9051:6.3.7/6.3.8; subscribing to a name that does not exist is allowed."""
    name = check_name(name)
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE mailboxes SET subscribed = ? WHERE name = ?", (int(subscribed), name)
        )
        if cursor.rowcount == 0 and subscribed:
            raise MailboxError(f"no mailbox {name!r}", "NONEXISTENT")


# -- the journal --------------------------------------------------------------


def replay_journal(conn: sqlite3.Connection, account_path: Path) -> int:
    """Do the file-system work committed transactions asked for. Idempotent."""
    entries = conn.execute("SELECT id, op, a, b FROM journal ORDER BY id").fetchall()
    if not entries:
        return 0
    touched: set[Path] = set()
    for _id, op, a, b in entries:
        if op == "unlink":
            path = account_path / a
            try:
                path.unlink()
                touched.add(path.parent)
            except FileNotFoundError:
                pass
        elif op == "rename":
            source, target = account_path / a, account_path / b
            if source.exists() and not target.exists():
                os.rename(source, target)
                touched.add(account_path)
        elif op == "rmtree" and a:  # never the account itself (INBOX)
            shutil.rmtree(account_path / a, ignore_errors=True)
            touched.add(account_path)
    for directory in touched:
        if directory.exists():
            maildir.fsync_dir(directory)
    with transaction(conn):
        conn.execute("DELETE FROM journal WHERE id <= ?", (entries[-1][0],))
    return len(entries)
