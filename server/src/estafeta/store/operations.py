"""What IMAP changes in a store: flags, expunge, copy, move, mailboxes.

Each function runs in the store's writer thread on one account. The order
is always: prepare files that must exist (hard links, fsync'd directories),
commit the index, then do the file-system work the commit decided (unlink,
rename, remove), recorded in the ``journal`` table inside the commit so
that ``replay_journal`` finishes it after a crash. So an acknowledged
change is never undone, and an expunged message never comes back.

Mailboxes (rfc9051:6.3.4-6.3.6). Every check comes before the first write:
the name (estafeta.store.names: characters, canonical form, folder size on
disk for every name the operation gives), clashes, the mailbox count.

* CREATE: 1. make the folder of each new level (fsync'd); 2. commit their
  rows. A crash between leaves empty folders the index does not know:
  harmless, never mail.
* DELETE: 1. commit (rows gone, an 'rmtree' journal entry); 2. remove the
  folder. A crash between: the open replays the entry.
* RENAME (not INBOX): the folders move before the index says so, and the
  index moves only if every folder did.
  1. commit one 'renaming' journal entry per folder (old a, new b): the intent;
  2. rename each folder a -> b and make the new superiors' folders (fsync'd);
  3. commit the rows (names, folders, message paths) and delete the intents.
  A failure in 2 or 3 renames the folders back and deletes the intents, and
  the client gets NO with nothing changed. A crash after 1 and before 3
  leaves intents whose index was not committed: the open renames b back to
  a first (``replay_journal``), so the index and the folders agree again.
  A crash after 3 leaves nothing to do. Versions before 4 committed the rows
  first and journaled 'rename' (a -> b) to do after; the open still does
  those, and undoes in the index one that cannot be done (a name too long
  for the disk), so such an account opens with the mailbox's old name.
* RENAME INBOX: a CREATE, then a MOVE of every message (``copy``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from estafeta.log import log_event
from estafeta.message import Summary
from estafeta.store import index, maildir, names
from estafeta.store.flags import BITS
from estafeta.store.flags import SYSTEM_FLAGS as SYSTEM_FLAGS
from estafeta.store.flags import canonical_flags as canonical_flags
from estafeta.store.index import Mailbox
from estafeta.store.names import MailboxError as MailboxError
from estafeta.store.names import check_name as check_name

# MailboxError and check_name are re-exported: sessions and the store use them from here.
log = logging.getLogger("estafeta.store")


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

    Only messages whose flags really change get a new modseq, one for the
    whole command (rfc7162:3.1.1 only asks it to be larger than any
    before). With ``unchangedsince`` (rfc7162:3.1.3), messages modified
    after it fail. Set-based: one UPDATE per flag over the messages named
    (system flags tested in the indexed ``sysflags``), not one per message;
    taking away keywords, which match case-insensitively, goes message by
    message.
    """
    if mode not in ("", "+", "-"):
        raise ValueError(mode)
    wanted = canonical_flags(flags)
    with transaction(conn):
        box = _need(conn, mailbox)
        target, params = _targets(conn, sorted(set(uids)))
        failed: list[int] = []
        if unchangedsince is not None:
            failed = [
                row[0]
                for row in conn.execute(
                    f"SELECT uid FROM messages WHERE mailbox_id = ? AND {target}"  # noqa: S608
                    " AND modseq > ? ORDER BY uid",
                    (box.id, *params, unchangedsince),
                )
            ]
        modseq = box_modseq(conn, box) + 1
        if _set_based(mode, wanted):
            changed = _store_set(conn, box, target, params, mode, wanted, modseq, unchangedsince)
        else:
            changed = _store_each(conn, box, target, params, mode, wanted, modseq, unchangedsince)
        if changed:
            conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, box.id))
        highest = box_modseq(conn, box)
    return StoreResult(changed, failed, highest)


def box_modseq(conn: sqlite3.Connection, box: Mailbox) -> int:
    row = conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?", (box.id,)).fetchone()
    return int(row[0])


def _set_based(mode: str, wanted: Sequence[str]) -> bool:
    """Whether SQL can make the change exactly: replacing, adding system
    flags or ASCII keywords (SQLite's lower() folds ASCII only), taking
    away system flags (always stored in canonical case)."""
    if mode == "":
        return True
    if mode == "+":
        return all(flag in BITS or flag.isascii() for flag in wanted)
    return all(flag in BITS for flag in wanted)


_MANY_RUNS = 32


def _targets(conn: sqlite3.Connection, uids: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """A WHERE clause naming exactly the messages ``uids`` (sorted, unique):
    a few ``uid BETWEEN`` ranges when they are runs of consecutive UIDs (the
    usual 1:*), else a temporary table of them."""
    runs: list[tuple[int, int]] = []
    for uid in uids:
        if runs and runs[-1][1] == uid - 1:
            runs[-1] = (runs[-1][0], uid)
        else:
            runs.append((uid, uid))
            if len(runs) > _MANY_RUNS:
                break
    if not runs:
        return "0", ()
    if len(runs) <= _MANY_RUNS:
        clause = " OR ".join("uid BETWEEN ? AND ?" for _ in runs)
        return f"({clause})", tuple(value for run in runs for value in run)
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS store_targets (uid INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM store_targets")
    conn.executemany("INSERT INTO store_targets (uid) VALUES (?)", ((uid,) for uid in uids))
    return "uid IN (SELECT uid FROM store_targets)", ()


def _store_set(
    conn: sqlite3.Connection,
    box: Mailbox,
    target: str,
    params: tuple[int, ...],
    mode: str,
    wanted: Sequence[str],
    modseq: int,
    unchangedsince: int | None,
) -> list[FlagChange]:
    # A message changed by an earlier flag of this command already has
    # ``modseq``: it is still "unchanged since" for the next one.
    guard = "" if unchangedsince is None else " AND (modseq <= ? OR modseq = ?)"
    guard_params: tuple[int, ...] = () if unchangedsince is None else (unchangedsince, modseq)
    where = f"mailbox_id = ? AND {target}{guard}"
    if mode == "":
        text = " ".join(wanted)
        conn.execute(
            f"UPDATE messages SET flags = ?, modseq = ? WHERE {where} AND flags != ?",  # noqa: S608
            (text, modseq, box.id, *params, *guard_params, text),
        )
    for flag in wanted if mode else ():
        if flag in BITS:
            test = f"(sysflags & {BITS[flag]}) " + ("= 0" if mode == "+" else "!= 0")
            flag_params: tuple[str, ...] = ()
        else:  # mode "+": an ASCII keyword the message does not have in any case
            test = "instr(' ' || lower(flags) || ' ', ?) = 0"
            flag_params = (f" {flag.lower()} ",)
        if mode == "+":
            update, update_params = "ltrim(flags || ' ' || ?)", (flag,)
        else:
            update, update_params = "trim(replace(' ' || flags || ' ', ?, ' '))", (f" {flag} ",)
        conn.execute(
            f"UPDATE messages SET flags = {update}, modseq = ? WHERE {where} AND {test}",  # noqa: S608
            (*update_params, modseq, box.id, *params, *guard_params, *flag_params),
        )
    return [
        FlagChange(uid, tuple(text.split()), modseq)
        for uid, text in conn.execute(
            "SELECT uid, flags FROM messages WHERE mailbox_id = ? AND modseq = ? ORDER BY uid",
            (box.id, modseq),
        )
    ]


def _store_each(
    conn: sqlite3.Connection,
    box: Mailbox,
    target: str,
    params: tuple[int, ...],
    mode: str,
    wanted: Sequence[str],
    modseq: int,
    unchangedsince: int | None,
) -> list[FlagChange]:
    lowered = {flag.lower() for flag in wanted}
    rows = conn.execute(
        f"SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND {target}"  # noqa: S608
        " ORDER BY uid",
        (box.id, *params),
    ).fetchall()
    changed: list[FlagChange] = []
    for uid, flag_text, old_modseq in rows:
        if unchangedsince is not None and old_modseq > unchangedsince:
            continue
        current = flag_text.split()
        if mode == "+":
            have = {c.lower() for c in current}
            new = current + [f for f in wanted if f.lower() not in have]
        elif mode == "-":
            new = [f for f in current if f.lower() not in lowered]
        else:
            new = list(wanted)
        if new == current:
            continue
        conn.execute(
            "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
            (" ".join(new), modseq, box.id, uid),
        )
        changed.append(FlagChange(uid, tuple(new), modseq))
    return changed


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


def expire(
    conn: sqlite3.Connection, account_path: Path, mailbox: str, saved_before: int, limit: int
) -> list[int]:
    """Retention: expunge up to ``limit`` messages saved into ``mailbox``
    before ``saved_before``, whatever their flags, as EXPUNGE does (one
    transaction, VANISHED records, files unlinked after the commit). A
    server may expunge at any time; sessions report it where an untagged
    EXPUNGE is allowed (rfc9051:7.5.1), or VANISHED (rfc7162:3.2.10)."""
    with transaction(conn):
        box = _need(conn, mailbox)
        removed = _remove(conn, box, index.saved_before(conn, box.id, saved_before, limit))
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
    quota: int | None = None,
    link_name: Callable[[str, int], str] | None = None,
) -> CopyResult:
    """rfc9051:6.4.7 COPY / rfc6851 MOVE, with rfc4315 COPYUID data.

    ``link_name`` (the cluster backend, whose bodies are not files of the
    account): the name of a copy of ``file`` of ``size`` octets, made
    instead of a hard link; nothing is written to the folder.

    Copies are hard links (same file system, no extra space); flags are
    copied, \\Recent is not (rfc9051 has none). With ``quota`` (octets the
    account may hold), a COPY that would go over it is refused with
    OVERQUOTA (rfc9208:4.3.1) before anything is linked, and checked again
    inside the transaction that adds the rows, so that two COPYs (or a COPY
    and an APPEND) cannot both pass on the same room: the writer thread runs
    one at a time, and BEGIN IMMEDIATE keeps out other processes. Quota is
    counted as IMAP reports it (the sum of RFC822.SIZE, ``used_octets``),
    although the copy is a hard link. A MOVE within the account changes
    nothing to that sum, and is never refused for quota.
    """
    src = _need(conn, source)
    dst = index.mailbox(conn, destination)
    if dst is None:
        raise MailboxError(f"no mailbox {destination!r}", "TRYCREATE")  # rfc9051:6.4.7
    rows = [
        row
        for uid_chunk in _chunks(sorted(set(uids)), 500)
        for row in conn.execute(
            "SELECT uid, file, size, internal_date, flags, summary, email_oid, thread_oid"  # noqa: S608
            " FROM messages"
            f" WHERE mailbox_id = ? AND uid IN ({','.join('?' * len(uid_chunk))}) ORDER BY uid",
            (src.id, *uid_chunk),
        ).fetchall()
    ]
    added = sum(row[2] for row in rows)
    if quota is not None and not move:
        check_quota(conn, quota, added)
    dest_folder = account_path / dst.dir if dst.dir else account_path
    if link_name is None:
        maildir.make_maildir(dest_folder)
    linked: list[tuple[str, index.NewMessage]] = []
    try:
        for _uid, file, size, internal_date, flags, summary, email_oid, thread_oid in rows:
            if link_name is None:
                target = dest_folder / "new" / maildir.unique_name(hostname, size)
                os.link(account_path / file, target)
            else:
                target = dest_folder / "new" / link_name(file, size)
            linked.append(
                (
                    str(target.relative_to(account_path)),
                    index.NewMessage(
                        file=str(target.relative_to(account_path)),
                        size=size,
                        internal_date=internal_date,
                        flags=flags.split(),
                        summary=Summary.from_json(summary),
                        # rfc8474:5.1: the copy is the same EMAILID (and so THREADID).
                        email_oid=email_oid,
                        thread_oid=thread_oid,
                    ),
                )
            )
        if linked and link_name is None:
            maildir.fsync_dir(dest_folder / "new")
        with transaction(conn):
            if quota is not None and not move:
                check_quota(conn, quota, added)  # again, under the write lock
            new_uids = index.add_messages(conn, dst.name, [message for _, message in linked])
            _carry_private_seen(conn, src, dst, [row[0] for row in rows], new_uids)
            expunged = _remove(conn, src, [row[0] for row in rows]) if move else []
    except BaseException:
        if link_name is None:
            for file, _ in linked:
                (account_path / file).unlink(missing_ok=True)
        raise
    if move:
        replay_journal(conn, account_path)
    return CopyResult(dst.uidvalidity, [row[0] for row in rows], new_uids, expunged)


def _carry_private_seen(
    conn: sqlite3.Connection, src: Mailbox, dst: Mailbox, old: Sequence[int], new: Sequence[int]
) -> None:
    """In the shared store (estafeta.store.shared), COPY and MOVE carry each
    viewer's private \\Seen to the new UIDs, as the common flags go with
    the message: the same message, read or not by each. Elsewhere the table
    is empty and this is one lookup."""
    if not new or conn.execute("SELECT 1 FROM private_seen LIMIT 1").fetchone() is None:
        return
    conn.executemany(
        "INSERT OR IGNORE INTO private_seen (mailbox_id, uid, viewer)"
        " SELECT ?, ?, viewer FROM private_seen WHERE mailbox_id = ? AND uid = ?",
        [(dst.id, to, src.id, was) for was, to in zip(old, new, strict=True) if to],
    )


def used_octets(conn: sqlite3.Connection) -> int:
    """What the account holds, for quota: the sum of its messages' RFC822.SIZE
    (rfc9208:3.1.1 STORAGE counts in units of 1024 of these)."""
    return int(conn.execute("SELECT coalesce(sum(size), 0) FROM messages").fetchone()[0])


def check_quota(conn: sqlite3.Connection, quota: int, added: int) -> None:
    if added > 0 and used_octets(conn) + added > quota:
        raise MailboxError("Quota exceeded", "OVERQUOTA")  # rfc9208:4.3.1, rfc5530:3


@dataclass(frozen=True)
class Appended:
    """One message of an APPEND: its octets, what the index keeps of it."""

    data: bytes
    summary: Summary
    flags: Sequence[str]
    internal_date: float


def append(
    conn: sqlite3.Connection,
    account_path: Path,
    hostname: str,
    mailbox: str,
    data: bytes,
    summary: Summary,
    flags: Sequence[str],
    internal_date: float,
    quota: int | None,
) -> tuple[int, int, str]:
    """rfc9051:6.3.12 APPEND of one message (``append_many``):
    (uid, uidvalidity, file)."""
    [(uid, file)], uidvalidity = append_many(
        conn, account_path, hostname, mailbox,
        [Appended(data, summary, flags, internal_date)], quota,
    )  # fmt: skip
    return uid, uidvalidity, file


def append_many(
    conn: sqlite3.Connection,
    account_path: Path,
    hostname: str,
    mailbox: str,
    messages: Sequence[Appended],
    quota: int | None,
) -> tuple[list[tuple[int, str]], int]:
    """rfc9051:6.3.12 APPEND, rfc3502 MULTIAPPEND: all of ``messages`` or
    none of them, within ``quota`` octets (None: no quota):
    ([(uid, file), ...], uidvalidity). OVERQUOTA (rfc9208:4.3.1) when they
    do not fit.

    The durable order of ``estafeta.store.account`` (files fsync'd in tmp/,
    renamed into new/, new/ fsync'd, then one commit), with the quota
    checked inside the transaction (the writer thread runs one operation at
    a time; BEGIN IMMEDIATE keeps out other processes). A refused or failed
    append leaves no file. (The IMAP session checks first too, so that a
    message that cannot fit is not written for nothing.)
    """
    box = _need(conn, mailbox)
    folder = account_path / box.dir if box.dir else account_path
    maildir.make_maildir(folder)
    published: list[maildir.Staged] = []
    try:
        for message in messages:
            staged = maildir.write_tmp(
                folder,
                maildir.unique_name(hostname, len(message.data)),
                message.data,
                message.internal_date,
            )
            try:
                maildir.publish(staged)
            except BaseException:
                staged.tmp_path.unlink(missing_ok=True)
                raise
            published.append(staged)
        for directory in {s.final_path.parent for s in published}:
            maildir.fsync_dir(directory)
        files = [str(s.final_path.relative_to(account_path)) for s in published]
        rows = [
            index.NewMessage(
                file=file,
                size=len(message.data),
                internal_date=int(message.internal_date),
                flags=list(message.flags),
                summary=message.summary,
            )
            for file, message in zip(files, messages, strict=True)
        ]
        with transaction(conn):
            if quota is not None:
                check_quota(conn, quota, sum(len(m.data) for m in messages))
            uids = index.add_messages(conn, box.name, rows)
    except BaseException:
        for staged in published:
            staged.final_path.unlink(missing_ok=True)
        raise
    return list(zip(uids, files, strict=True)), box.uidvalidity


# -- mailboxes ---------------------------------------------------------------


def _check_count(conn: sqlite3.Connection, adding: int, max_mailboxes: int | None) -> None:
    """rfc5530:3 LIMIT when ``adding`` more mailboxes would pass ``max_mailboxes``."""
    if max_mailboxes is None or adding == 0:
        return
    count = index.mailbox_count(conn)
    if count + adding > max_mailboxes:
        more = f" (this would add {adding})" if adding > 1 else ""
        raise MailboxError(
            f"too many mailboxes: this account has {count}, at most {max_mailboxes}{more}",
            "LIMIT",
        )


def _superiors(name: str) -> list[str]:
    parts = name.split(maildir.DELIMITER)
    return [maildir.DELIMITER.join(parts[:depth]) for depth in range(1, len(parts))]


def _insert_mailbox(
    conn: sqlite3.Connection, name: str, uidvalidity: int, special_use: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO mailboxes (id, name, dir, uidvalidity, uidnext, highestmodseq,"
        " special_use, subscribed) VALUES (?, ?, ?, ?, 1, 1, ?, 0)",
        (index.next_mailbox_id(conn), name, maildir.mailbox_dir(name), uidvalidity, special_use),
    )


def create_mailbox(
    conn: sqlite3.Connection,
    account_path: Path,
    name: str,
    special_use: str | None = None,
    max_mailboxes: int | None = None,
) -> Mailbox:
    """rfc9051:6.3.4 CREATE (superiors created as needed), rfc6154:3 USE.

    Refused before anything is written: a name that cannot be (CANNOT), one
    whose folder would not fit on disk, or more than ``max_mailboxes``
    mailboxes counting the superiors it adds (LIMIT). The work does not
    grow with the number of mailboxes: a few index lookups per level.
    """
    name = check_name(name)
    if name == maildir.INBOX:
        raise MailboxError("INBOX always exists", "ALREADYEXISTS")
    # The folder of each superior is a prefix of this one's: one check for all.
    names.check_fits(account_path, name)
    with transaction(conn):
        if index.mailbox(conn, name) is not None:
            raise MailboxError(f"mailbox {name!r} already exists", "ALREADYEXISTS")
        if special_use is not None:
            taken = conn.execute(
                "SELECT name FROM mailboxes WHERE special_use = ?", (special_use,)
            ).fetchone()
            if taken:
                raise MailboxError(f"{special_use} is already used by {taken[0]!r}", "USEATTR")
        missing = [
            each
            for each in [*_superiors(name), name]
            if each != maildir.INBOX and index.mailbox(conn, each) is None
        ]
        _check_count(conn, len(missing), max_mailboxes)
        uidvalidity = index.new_uidvalidity(conn)
        for each in missing:
            maildir.make_maildir(account_path / maildir.mailbox_dir(each))
            _insert_mailbox(conn, each, uidvalidity, special_use if each == name else None)
        box = index.mailbox(conn, name)
    assert box is not None
    return box


def delete_mailbox(conn: sqlite3.Connection, account_path: Path, name: str) -> None:
    """rfc9051:6.3.5 DELETE: the mailbox and its messages; inferiors stay."""
    with transaction(conn):
        box = _need(conn, name)
        if box.name == maildir.INBOX:
            raise MailboxError("INBOX cannot be deleted", "CANNOT")
        conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (box.id,))
        conn.execute("DELETE FROM expunged WHERE mailbox_id = ?", (box.id,))
        conn.execute("DELETE FROM mailboxes WHERE id = ?", (box.id,))
        conn.execute("INSERT INTO journal (op, a) VALUES ('rmtree', ?)", (box.dir,))
    replay_journal(conn, account_path)


def rename_mailbox(
    conn: sqlite3.Connection,
    account_path: Path,
    hostname: str,
    old: str,
    new: str,
    max_mailboxes: int | None = None,
    link_name: Callable[[str, int], str] | None = None,
) -> None:
    """rfc9051:6.3.6 RENAME, inferiors included; renaming INBOX moves its
    messages to the new mailbox and leaves INBOX empty.

    Every name the rename gives (the mailbox's and each inferior's) is
    checked first: no clash (ALREADYEXISTS), folders that fit on disk and
    the count of superiors it adds (LIMIT). Then the folders are renamed and
    only then the index committed; see the module docstring for the order.
    """
    new = check_name(new)
    if new == maildir.INBOX:
        raise MailboxError("cannot rename to INBOX", "ALREADYEXISTS")
    source = _need(conn, old)
    if index.mailbox(conn, new) is not None:
        raise MailboxError(f"mailbox {new!r} already exists", "ALREADYEXISTS")
    if source.name == maildir.INBOX:
        _rename_inbox(conn, account_path, hostname, new, max_mailboxes, link_name)
        return
    if new.startswith(source.name + maildir.DELIMITER):
        raise MailboxError("cannot rename a mailbox into itself", "CANNOT")

    moves = [
        (box, new + box.name[len(source.name) :])
        for box in [source, *index.inferiors(conn, source.name)]
    ]
    fs_limits = names.limits(account_path)
    for box, name in moves:
        names.check_fits(account_path, name, fs_limits)
        if box is not source and index.mailbox(conn, name) is not None:
            raise MailboxError(
                f"cannot rename {box.name!r}: mailbox {name!r} already exists", "ALREADYEXISTS"
            )
    superiors = [each for each in _superiors(new) if index.mailbox(conn, each) is None]
    _check_count(conn, len(superiors), max_mailboxes)
    plan = [(box, name, maildir.mailbox_dir(name)) for box, name in moves]
    for _box, name, directory in plan:
        taken = conn.execute("SELECT name FROM mailboxes WHERE dir = ?", (directory,)).fetchone()
        if taken is not None:  # a row an older version wrote otherwise
            raise MailboxError(f"mailbox {taken[0]!r} already has the folder of {name!r}", "CANNOT")
        if not maildir.remove_if_empty(account_path / directory):
            log_event(log, "rename_target_on_disk", logging.WARNING, folder=directory)
            raise MailboxError(
                f"a folder {directory!r} the index does not know is in the way"
                " (the administrator can run estafeta reindex)",
                "CANNOT",
            )

    # 1. The intent: the folder renames about to be done, undone at open
    #    unless step 3 commits.
    with transaction(conn):
        intents = [
            int(
                conn.execute(
                    "INSERT INTO journal (op, a, b) VALUES ('renaming', ?, ?)",
                    (box.dir, directory),
                ).lastrowid
                or 0
            )
            for box, _name, directory in plan
        ]
    done: list[tuple[Path, Path]] = []
    try:
        # 2. The folders, then the superiors' (fsync'd: make_maildir).
        for box, _name, directory in plan:
            here, there = account_path / box.dir, account_path / directory
            if os.path.lexists(here):
                os.rename(here, there)
                done.append((here, there))
            maildir.make_maildir(there)
        for each in superiors:
            maildir.make_maildir(account_path / maildir.mailbox_dir(each))
        maildir.fsync_dir(account_path)
        # 3. The index, and the intent is spent.
        with transaction(conn):
            for box, name, directory in plan:
                conn.execute(
                    "UPDATE mailboxes SET name = ?, dir = ? WHERE id = ?", (name, directory, box.id)
                )
                # A subscribed mailbox stays subscribed under its new name.
                moved = conn.execute("DELETE FROM subscriptions WHERE name = ?", (box.name,))
                if moved.rowcount:
                    conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (name,))
                conn.execute(
                    "UPDATE messages SET file = ? || substr(file, ?) WHERE mailbox_id = ?",
                    (directory, len(box.dir) + 1, box.id),
                )
            if superiors:
                uidvalidity = index.new_uidvalidity(conn)
                for each in superiors:
                    _insert_mailbox(conn, each, uidvalidity)
            _forget(conn, intents)
    except BaseException:
        # Nothing was committed: put the folders back. If that fails too,
        # the intents stay and the next open puts them back.
        for here, there in reversed(done):
            with contextlib.suppress(OSError):
                os.rename(there, here)
        with contextlib.suppress(Exception):
            maildir.fsync_dir(account_path)
            with transaction(conn):
                _forget(conn, intents)
        raise


def _rename_inbox(
    conn: sqlite3.Connection,
    account_path: Path,
    hostname: str,
    new: str,
    max_mailboxes: int | None,
    link_name: Callable[[str, int], str] | None = None,
) -> None:
    """rfc9051:6.3.6: a new mailbox gets INBOX's messages (a MOVE)."""
    create_mailbox(conn, account_path, new, max_mailboxes=max_mailboxes)
    try:
        inbox = _need(conn, maildir.INBOX)
        uids = [
            r[0] for r in conn.execute("SELECT uid FROM messages WHERE mailbox_id = ?", (inbox.id,))
        ]
        copy(conn, account_path, hostname, maildir.INBOX, uids, new, move=True, link_name=link_name)
    except BaseException:
        # The move failed as a whole (copy links, then commits once): the new
        # mailbox is empty, take it away again so that NO means nothing changed.
        with contextlib.suppress(Exception):
            delete_mailbox(conn, account_path, new)
        raise


def subscribe(
    conn: sqlite3.Connection, name: str, subscribed: bool, *, max_subscriptions: int
) -> None:
    """rfc9051:6.3.7/6.3.8: a subscription is a name; it needs no mailbox
    (one may be created later, or was deleted: the name stays subscribed).
    The name must be one a mailbox could have; at most ``max_subscriptions``
    names (LIMIT). UNSUBSCRIBE of a name not subscribed does nothing."""
    name = names.canonical(name)
    with transaction(conn):
        if not subscribed:
            conn.execute("DELETE FROM subscriptions WHERE name = ?", (name,))
            return
        if index.mailbox(conn, name) is None:
            name = names.check_name(name)  # CANNOT / LIMIT for a name never possible
        count = conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0]
        known = conn.execute("SELECT 1 FROM subscriptions WHERE name = ?", (name,)).fetchone()
        if known is None and count >= max_subscriptions:
            raise MailboxError(f"too many subscriptions (at most {max_subscriptions})", "LIMIT")
        conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (name,))


def claim_recent(conn: sqlite3.Connection, mailbox_id: int, uid: int) -> None:
    """rfc3501:2.3.2: the UIDs up to ``uid`` were given out as \\Recent
    (see index._SCHEMA_V10); never lowers what is there."""
    with transaction(conn):
        conn.execute(
            "UPDATE mailboxes SET recent_uid = max(recent_uid, ?) WHERE id = ?", (uid, mailbox_id)
        )


# -- the journal --------------------------------------------------------------


def _forget(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    for chunk in _chunks(list(ids), 500):
        conn.execute(
            f"DELETE FROM journal WHERE id IN ({','.join('?' * len(chunk))})",  # noqa: S608
            tuple(chunk),
        )


def replay_journal(conn: sqlite3.Connection, account_path: Path) -> int:
    """Do the file-system work committed transactions asked for. Idempotent.

    It never raises for the file system, so an account always opens: work
    that fails stays in the journal for the next time and is logged, except
    a 'rename' committed by a version before 4 whose folder cannot be
    renamed (a name too long for the disk, issue 14 item 3), which is
    undone in the index: the mailbox keeps its old name and folder, and its
    messages stay readable. Returns the number of entries finished.
    """
    entries = conn.execute("SELECT id, op, a, b FROM journal ORDER BY id").fetchall()
    if not entries:
        return 0
    touched: set[Path] = set()
    finished: list[int] = []
    undo: list[tuple[str, str, str]] = []
    fs_limits = names.limits(account_path)
    for id_, op, a, b in entries:
        try:
            if op == "unlink":
                path = account_path / a
                try:
                    path.unlink()
                    touched.add(path.parent)
                except FileNotFoundError:
                    pass
            elif op == "rename":  # the index already says b: move the folder there
                if not names.fits(account_path, b, fs_limits):
                    undo.append((a, b, f"folder name of {len(b.encode())} octets"))
                elif maildir.move_folder(account_path / a, account_path / b):
                    touched.add(account_path)
            elif op == "renaming":  # the index still says a: put the folder back
                if maildir.move_folder(account_path / b, account_path / a):
                    touched.add(account_path)
            elif op == "rmtree" and a:  # never the account itself (INBOX)
                shutil.rmtree(account_path / a, ignore_errors=True)
                touched.add(account_path)
        except OSError as exc:
            if op != "rename":
                log_event(log, "journal_retry", logging.WARNING, op=op, path=a, error=exc)
                continue
            undo.append((a, b, str(exc)))
        finished.append(id_)
    for directory in touched:
        with contextlib.suppress(OSError):
            if directory.exists():
                maildir.fsync_dir(directory)
    with transaction(conn):
        for a, b, reason in undo:
            _undo_rename(conn, a, b, reason)
        _forget(conn, finished)
    return len(finished)


def _undo_rename(conn: sqlite3.Connection, a: str, b: str, reason: str) -> None:
    """The mailbox the index moved to folder ``b`` goes back to ``a``, its
    name with it (inside the caller's transaction)."""
    row = conn.execute("SELECT id, name FROM mailboxes WHERE dir = ?", (b,)).fetchone()
    if row is None or not a:
        return
    box_id, name = int(row[0]), str(row[1])
    old_name = maildir.mailbox_name(a)
    clash = conn.execute(
        "SELECT name FROM mailboxes WHERE (name = ? OR dir = ?) AND id != ?", (old_name, a, box_id)
    ).fetchone()
    if clash is not None:
        log_event(
            log, "rename_not_undone", logging.ERROR, mailbox=name, folder=a, taken_by=clash[0],
            hint="estafeta reindex",
        )  # fmt: skip
        return
    conn.execute("UPDATE mailboxes SET name = ?, dir = ? WHERE id = ?", (old_name, a, box_id))
    conn.execute(
        "UPDATE messages SET file = ? || substr(file, ?) WHERE mailbox_id = ?",
        (a, len(b) + 1, box_id),
    )
    log_event(log, "rename_undone", logging.WARNING, mailbox=name, restored=old_name, reason=reason)
