"""The per-account SQLite index (``index.db``, WAL mode).

The index is the source of truth for everything IMAP needs that is not the
message bytes themselves: mailboxes with UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ,
and per message its UID, file, size, internal date, flags, modseq and the
summary computed at delivery (envelope, bodystructure, common headers),
and when it was saved into its mailbox (``saved``, for retention).
The files can always rebuild it (``reindex``); it cannot rebuild the files.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from estafeta.message import Summary, imap_envelope
from estafeta.message.searchtext import search_columns
from estafeta.message.sortkeys import sort_columns
from estafeta.store import flags as flags_module
from estafeta.store import fulltext
from estafeta.store.maildir import mailbox_dir, sort_key
from estafeta.store.names import canonical

SCHEMA_VERSION = 13

# rfc6154:2 special-use attributes of the mailboxes every account starts with.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Archive", "\\Archive"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
)

_SCHEMA = """
CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,           -- IMAP name, '/'-separated, UTF-8
    dir TEXT NOT NULL UNIQUE,            -- folder relative to the account ('' = INBOX)
    uidvalidity INTEGER NOT NULL,        -- rfc9051:2.3.1.1
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,      -- rfc7162:3.1.1
    special_use TEXT,                    -- rfc6154:2, e.g. '\\Sent'
    subscribed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE messages (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    file TEXT NOT NULL UNIQUE,           -- relative to the account: '.Sent/cur/NAME'
    size INTEGER NOT NULL,               -- rfc9051:7.5.2 RFC822.SIZE
    internal_date INTEGER NOT NULL,      -- POSIX seconds, rfc9051:2.3.3
    flags TEXT NOT NULL DEFAULT '',      -- space-separated system flags and keywords
    modseq INTEGER NOT NULL,             -- rfc7162:3.1.1
    subject TEXT NOT NULL DEFAULT '',    -- decoded, for SEARCH and SORT
    from_addr TEXT NOT NULL DEFAULT '',
    sent_date INTEGER,                   -- Date: header, POSIX seconds
    message_id TEXT,
    summary TEXT NOT NULL,               -- estafeta.message.Summary as JSON
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
CREATE TABLE expunged (                  -- rfc7162:3.2.10 VANISHED needs these
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
"""

# Version 2: file-system work decided by a committed transaction and done
# after it (unlink expunged files, rename or remove mailbox folders). Replayed
# when the account is opened, so a crash in between loses nothing and
# resurrects nothing.
_SCHEMA_V2 = """
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    op TEXT NOT NULL,                    -- 'unlink' | 'rename' | 'rmtree' | 'renaming'
    a TEXT NOT NULL,                     -- file or folder, relative to the account
    b TEXT NOT NULL DEFAULT ''           -- rename target
);
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
"""

# Version 3: the IMAP ENVELOPE rendered at delivery (rfc9051:7.5.2), so a
# FETCH of envelopes for a whole mailbox reads one column per message.
_SCHEMA_V3 = """
ALTER TABLE messages ADD COLUMN envelope BLOB
"""

# Version 4: mailbox operations that do not grow with the number of
# mailboxes (issue 14 item 8): the last UIDVALIDITY given out, kept even when
# its mailbox is deleted (rfc9051:2.3.1.1: a name must not get an old
# UIDVALIDITY again), and indexes for the queries CREATE makes. Since
# version 4 'rename' is no longer written: RENAME journals 'renaming' (the
# folder renames it is about to do, undone at open if the index was not
# committed); see estafeta.store.operations.
_SCHEMA_V4 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,                -- 'uidvalidity': the last one given out
    value INTEGER NOT NULL
);
CREATE INDEX mailboxes_uidvalidity ON mailboxes (uidvalidity);
CREATE INDEX mailboxes_special_use ON mailboxes (special_use)
"""

# Version 5: what SEARCH and STATUS ask of every message, in forms the
# database can index (issue 17). ``sysflags`` is the bit set of the system
# flags (estafeta.store.flags), generated from the flags text so the two
# never disagree; the search columns hold the folded text SEARCH's SUBJECT,
# HEADER SUBJECT, FROM, TO, CC and BCC keys compare against
# (estafeta.message.searchtext), computed at delivery; NULL where a row
# written before version 5 was not filled yet ("unknown": a lookup keeps
# the row and the search checks it). Filled when the index is upgraded.
_SCHEMA_V5 = f"""
ALTER TABLE messages ADD COLUMN sysflags INTEGER
    GENERATED ALWAYS AS ({flags_module.sysflags_sql()}) VIRTUAL;
CREATE INDEX messages_sysflags ON messages (mailbox_id, sysflags);
ALTER TABLE messages ADD COLUMN s_subject TEXT;
ALTER TABLE messages ADD COLUMN s_hsubject TEXT;
ALTER TABLE messages ADD COLUMN s_from TEXT;
ALTER TABLE messages ADD COLUMN s_to TEXT;
ALTER TABLE messages ADD COLUMN s_cc TEXT;
ALTER TABLE messages ADD COLUMN s_bcc TEXT
"""

# Version 6: the full-text index of SEARCH BODY and TEXT
# (estafeta.store.fulltext), filled in the background after delivery; and
# mailbox ids that are never given out twice (its keys hold the id).
_SCHEMA_V6 = ";".join(fulltext.SCHEMA)

# Version 7: messages acknowledged before their file is durable (issue 17,
# "Ingest"). The row in ``messages`` and the bytes here are committed in one
# transaction, which is the one flush a delivery waits for; the file is made
# durable afterwards, several at a time, and then its row here is deleted.
# Opening the account writes out every file still listed here
# (estafeta.store.ingest).
_SCHEMA_V7 = """
CREATE TABLE IF NOT EXISTS pending (
    file TEXT PRIMARY KEY,               -- messages.file: 'new/NAME', '.Sent/new/NAME'
    data BLOB NOT NULL                   -- the whole message
)
"""

# Version 8: when each message was saved into its mailbox (delivery,
# APPEND, COPY, MOVE: POSIX seconds), which ``[retention]`` counts from.
# Not the internal date: COPY and MOVE keep that (rfc9051:6.4.7, rfc9051:6.4.8),
# so a year-old message moved to Trash today would go at the next run.
# Rows written before version 8 get the time in their file's Maildir name
# (``saved_from_name``): estafeta names every file it makes in a folder
# (delivery, APPEND, and the link of a COPY or MOVE) with the time it made
# it, so that is when the message came into this mailbox; a name without a
# time (another tool's) falls back to the internal date. NULL (never
# written by this version) means "not known": retention keeps such a row.
_SCHEMA_V8 = """
ALTER TABLE messages ADD COLUMN saved INTEGER
"""

# Version 9: subscriptions are names, not a property of a mailbox
# (rfc9051:6.3.7-6.3.9): a name may be subscribed without a mailbox (a
# deleted one stays subscribed; SUBSCRIBE needs none). The mailboxes'
# ``subscribed`` column is no longer read: Mailbox.subscribed comes from here.
_SCHEMA_V9 = """
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY
)
"""

# Version 10: \Recent for IMAP4rev1 sessions (rfc3501:2.3.2): the highest UID
# of each mailbox a read-write session has been told is recent; a message
# above it is recent to the next session that selects the mailbox
# (estafeta.imap.recent). Mailboxes of an older index start with every
# message they hold already claimed, so an upgrade makes nothing recent.
_SCHEMA_V10 = """
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0
"""

# Version 11: what SORT and THREAD order messages by (rfc5256, rfc5957), as
# prepared keys computed at delivery (estafeta.message.sortkeys), so that a
# SORT or THREAD of a whole mailbox reads these columns in one query and
# parses nothing: the base subject (rfc5256:2.1) and whether the subject
# marks a reply or forward, the first From / To / Cc mailbox (rfc5256:3),
# the first From / To display name (rfc5957:3), the Message-ID and the
# references THREAD=REFERENCES links by (rfc5256:3). The sent date is
# ``sent_date`` (version 1). Filled for existing rows when the index is
# upgraded. ``messages_sort`` holds every column SORT and THREAD read, in
# mailbox order: they read this index alone (a scan of compact entries, not
# of rows that carry the summary JSON), and SORT orders by it in SQL.
_SCHEMA_V11 = """
ALTER TABLE messages ADD COLUMN sort_subject TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN subject_reply INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN sort_from TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN sort_to TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN sort_cc TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN sort_dfrom TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN sort_dto TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN thread_id TEXT;
ALTER TABLE messages ADD COLUMN thread_refs TEXT NOT NULL DEFAULT ''
"""
_SCHEMA_V11_INDEX = """
CREATE INDEX IF NOT EXISTS messages_sort ON messages (
    mailbox_id, uid, internal_date, sent_date, size, sort_subject, subject_reply, sort_from,
    sort_to, sort_cc, sort_dfrom, sort_dto, thread_id, thread_refs
)
"""

# Version 12: object identifiers (rfc8474). ``email_oid`` is the EMAILID
# (rfc8474:5.1): made at delivery and APPEND from the file's unique Maildir
# name (``email_oid_of``), and handed on, not made again, by COPY and MOVE
# and kept by ``reindex``, so every copy of a message has the id of the one
# it was copied from. ``thread_oid`` is the THREADID (rfc8474:5.2), fixed
# when the message is saved and never changed after: the THREADID of a
# message of the account it refers to (References, else In-Reply-To) or
# that has its Message-ID, else one of its own made from its EMAILID
# (rfc8474 appendix A: "derive from EMAILID of first seen message in the
# thread"). A reply saved before the message it answers starts a thread of
# its own. ``messages_thread`` finds those ids by Message-ID (the sort
# column ``thread_id``, version 11) across the account. Rows of an older
# index are given both when it is upgraded, oldest saved first. MAILBOXID
# needs no column (``mailbox_oid``).
_SCHEMA_V12 = """
ALTER TABLE messages ADD COLUMN email_oid TEXT;
ALTER TABLE messages ADD COLUMN thread_oid TEXT
"""
_SCHEMA_V12_INDEX = """
CREATE INDEX IF NOT EXISTS messages_thread ON messages (thread_id, thread_oid)
    WHERE thread_id IS NOT NULL
"""

# Version 13: shared mailboxes (docs/shared-mailboxes.md). Used only in the
# shared store (estafeta.store.shared), empty elsewhere: each mailbox's
# access control list (rfc4314:2, rights canonical "lrswipkxtea"), and the
# private \Seen of each account that reads it (``viewers`` numbers the
# accounts, ``private_seen`` holds one row per seen message and viewer;
# ``messages.flags`` of the shared store never holds \Seen). A message's
# rows go with it (the trigger), a mailbox's with the mailbox (cascade).
_SCHEMA_V13 = """
CREATE TABLE IF NOT EXISTS acl (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    identifier TEXT NOT NULL,            -- an account address or 'anyone'
    rights TEXT NOT NULL,
    PRIMARY KEY (mailbox_id, identifier)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS viewers (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS private_seen (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    viewer INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid, viewer)
) WITHOUT ROWID
"""
# One statement with a ";" inside: not for _run_script, which splits at them.
_SCHEMA_V13_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS messages_private_seen AFTER DELETE ON messages
BEGIN
    DELETE FROM private_seen WHERE mailbox_id = old.mailbox_id AND uid = old.uid;
END
"""

# The search columns, in the order of searchtext.search_columns.
SEARCH_COLUMNS = ("s_subject", "s_hsubject", "s_from", "s_to", "s_cc", "s_bcc")
# The sort columns, in the order of sortkeys.sort_columns.
SORT_COLUMNS = (
    "sort_subject", "subject_reply", "sort_from", "sort_to", "sort_cc", "sort_dfrom", "sort_dto",
    "thread_id", "thread_refs",
)  # fmt: skip


@dataclass(frozen=True)
class Mailbox:
    id: int
    name: str
    dir: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None
    subscribed: bool
    recent_uid: int = 0  # rfc3501:2.3.2, see _SCHEMA_V10

    @property
    def objectid(self) -> str:
        """rfc8474:4 MAILBOXID, from the id and UIDVALIDITY: RENAME keeps
        both (rfc8474:4: same name and UIDVALIDITY, same MAILBOXID); a
        mailbox made again (DELETE then CREATE, RENAME INBOX, ``reindex``)
        gets an id no mailbox of the account had (``next_mailbox_id``) and
        a new UIDVALIDITY, so an id is never given to another mailbox, even
        if the index is lost and made anew. rfc8474:8.1: letters, digits
        and "_", starting with a letter."""
        return f"F{self.uidvalidity}_{self.id}"


@dataclass(frozen=True)
class NewMessage:
    """A message whose file is already in place, to be recorded."""

    file: str
    size: int
    internal_date: int
    flags: Sequence[str]
    summary: Summary
    saved: int | None = None  # into its mailbox; None: now (``add_messages``)
    # rfc8474 EMAILID and THREADID (see _SCHEMA_V12); None: made here.
    email_oid: str | None = None
    thread_oid: str | None = None


@dataclass(frozen=True)
class MessageRow:
    mailbox_id: int
    uid: int
    file: str
    size: int
    internal_date: int
    flags: tuple[str, ...]
    modseq: int
    summary: Summary


def connect(path: Path) -> sqlite3.Connection:
    """Open (and if needed create) an index. Autocommit mode: transactions
    are explicit (``BEGIN IMMEDIATE``), so a reader never holds a write lock."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk (WAL fsync'd) before COMMIT returns. NORMAL
    # would lose the last transactions on power failure.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        _create(conn)
    elif version > SCHEMA_VERSION:
        conn.close()
        raise RuntimeError(
            f"{path}: index schema {version} is newer than this estafeta ({SCHEMA_VERSION})"
        )
    return conn


def _create(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            _run_script(conn, _SCHEMA)
            uidvalidity = int(time.time())
            for name, special in DEFAULT_MAILBOXES:
                conn.execute(
                    "INSERT INTO mailboxes (name, dir, uidvalidity, uidnext, highestmodseq,"
                    " special_use, subscribed) VALUES (?, ?, ?, 1, 1, ?, 1)",
                    (name, mailbox_dir(name), uidvalidity, special),
                )  # ids 1-6: a fresh index, nothing given out before
            version = 1
        if version <= 1:
            _run_script(conn, _SCHEMA_V2)
        if version <= 2:
            _run_script(conn, _SCHEMA_V3)
        if version <= 3:
            _run_script(conn, _SCHEMA_V4)
        if version <= 4:
            _run_script(conn, _SCHEMA_V5)
            _fill_v5(conn)
        if version <= 5:
            _run_script(conn, _SCHEMA_V6)
        if version <= 6:
            _run_script(conn, _SCHEMA_V7)
        if version <= 7:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            if "saved" not in columns:  # a version 8 file marked older (tests do)
                _run_script(conn, _SCHEMA_V8)
            _fill_v8(conn)
        if version <= 8:
            _run_script(conn, _SCHEMA_V9)
            conn.execute(
                "INSERT OR IGNORE INTO subscriptions (name)"
                " SELECT name FROM mailboxes WHERE subscribed = 1"
            )
        if version <= 9:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(mailboxes)")}
            if "recent_uid" not in columns:  # a version 10 file marked older (tests do)
                _run_script(conn, _SCHEMA_V10)
                conn.execute("UPDATE mailboxes SET recent_uid = uidnext - 1")
        if version <= 10:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            if "thread_refs" not in columns:  # a version 11 file marked older (tests do)
                _run_script(conn, _SCHEMA_V11)
            _fill_v11(conn)
            _run_script(conn, _SCHEMA_V11_INDEX)  # built once, after the fill
        if version <= 11:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
            if "email_oid" not in columns:  # a version 12 file marked older (tests do)
                _run_script(conn, _SCHEMA_V12)
            _run_script(conn, _SCHEMA_V12_INDEX)
            _fill_v12(conn)
        if version <= 12:
            _run_script(conn, _SCHEMA_V13)
            conn.execute(_SCHEMA_V13_TRIGGER)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _fill_v5(conn: sqlite3.Connection) -> None:
    """Upgrade to version 5 in the caller's transaction: flags in canonical
    form (older versions stored what a Sieve script gave), search columns
    from each summary."""
    rows = conn.execute("SELECT rowid, flags, summary FROM messages").fetchall()
    for rowid, flag_text, summary_json in rows:
        try:
            columns = search_columns(Summary.from_json(summary_json))
        except (ValueError, KeyError, TypeError):
            continue  # left NULL: searches check such a row themselves
        conn.execute(
            "UPDATE messages SET flags = ?, s_subject = ?, s_hsubject = ?, s_from = ?,"
            " s_to = ?, s_cc = ?, s_bcc = ? WHERE rowid = ?",
            (" ".join(flags_module.canonical_flags(flag_text.split())), *columns, rowid),
        )


def _fill_v11(conn: sqlite3.Connection) -> None:
    """Upgrade to version 11 in the caller's transaction: the sort and
    thread columns from each summary (see _SCHEMA_V11)."""
    rows = conn.execute("SELECT rowid, summary FROM messages").fetchall()
    assignments = ", ".join(f"{column} = ?" for column in SORT_COLUMNS)
    for rowid, summary_json in rows:
        try:
            columns = sort_columns(Summary.from_json(summary_json))
        except (ValueError, KeyError, TypeError):
            continue  # the defaults: sorts as empty, threads alone
        conn.execute(
            f"UPDATE messages SET {assignments} WHERE rowid = ?",  # noqa: S608 - fixed names
            (*columns, rowid),
        )


def _fill_v12(conn: sqlite3.Connection) -> None:
    """Upgrade to version 12 in the caller's transaction: EMAILID and
    THREADID of each row (see _SCHEMA_V12), the rows taken in the order
    they were saved, so a reply joins the thread of what it answers."""
    rows = conn.execute(
        "SELECT rowid, file, thread_id, thread_refs FROM messages WHERE email_oid IS NULL"
        " ORDER BY coalesce(saved, internal_date), rowid"
    ).fetchall()
    for rowid, file, own, refs in rows:
        email = email_oid_of(file)
        conn.execute(
            "UPDATE messages SET email_oid = ?, thread_oid = ? WHERE rowid = ?",
            (email, thread_oid_for(conn, email, own, refs), rowid),
        )


def email_oid_of(file: str) -> str:
    """rfc8474:5.1 EMAILID of a message saved as ``file``: "M" and a digest
    of its Maildir name without the info part (unique in the account:
    estafeta.store.maildir.unique_name), the same whenever the same file is
    indexed again. rfc8474:11: SHA-256, cut to 96 bits; lower case only
    (rfc8474:8.1: no two ids that differ only by case)."""
    name = file.rsplit("/", 1)[-1].split(":", 1)[0]
    return "M" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:24]


_THREAD_LOOKUP = 32  # Message-IDs looked up per message: its own and the last references


def thread_oid_for(conn: sqlite3.Connection, email_oid: str, own: str | None, refs: str) -> str:
    """rfc8474:5.2 THREADID for a message being saved (see _SCHEMA_V12):
    one lookup of the ``messages_thread`` index."""
    ids = refs.split()[-_THREAD_LOOKUP:]
    if own:
        ids.append(own)
    if ids:
        marks = ",".join("?" * len(ids))
        found = conn.execute(
            "SELECT thread_oid FROM messages INDEXED BY messages_thread"  # noqa: S608 - marks
            f" WHERE thread_id IS NOT NULL AND thread_id IN ({marks})"
            " AND thread_oid IS NOT NULL LIMIT 1",
            ids,
        ).fetchone()
        if found is not None:
            return str(found[0])
    return "T" + email_oid[1:]  # rfc8474:5.2: never the same value as an EMAILID


def saved_from_name(file: str, internal_date: int) -> int:
    """When a message file was made in its folder, from its Maildir name
    (``SECONDS.M...``); the internal date for a name without a time, or with
    one that cannot be (before 1990, or in the future)."""
    seconds = sort_key(file.rsplit("/", 1)[-1])[0]
    return seconds if _PLAUSIBLE <= seconds <= time.time() + 86_400 else internal_date


_PLAUSIBLE = 631_152_000  # 1990-01-01: older "times" are not from a Maildir name


def _fill_v8(conn: sqlite3.Connection) -> None:
    """Upgrade to version 8 in the caller's transaction: ``saved`` from each
    file's name (see _SCHEMA_V8)."""
    rows = conn.execute(
        "SELECT rowid, file, internal_date FROM messages WHERE saved IS NULL"
    ).fetchall()
    conn.executemany(
        "UPDATE messages SET saved = ? WHERE rowid = ?",
        ((saved_from_name(file, int(date)), rowid) for rowid, file, date in rows),
    )


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT first: run the statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _mailbox(row: tuple[Any, ...]) -> Mailbox:
    id_, name, dir_, uidvalidity, uidnext, highestmodseq, special, subscribed, recent = row
    return Mailbox(
        id=int(id_),
        name=str(name),
        dir=str(dir_),
        uidvalidity=int(uidvalidity),
        uidnext=int(uidnext),
        highestmodseq=int(highestmodseq),
        special_use=None if special is None else str(special),
        subscribed=bool(subscribed),
        recent_uid=int(recent),
    )


_MAILBOX_COLUMNS = (
    "id, name, dir, uidvalidity, uidnext, highestmodseq, special_use,"
    " EXISTS (SELECT 1 FROM subscriptions WHERE subscriptions.name = mailboxes.name),"
    " recent_uid"
)


def subscriptions(conn: sqlite3.Connection) -> list[str]:
    """The subscribed names, whether or not a mailbox has them."""
    return [str(row[0]) for row in conn.execute("SELECT name FROM subscriptions ORDER BY name")]


def mailboxes(conn: sqlite3.Connection) -> list[Mailbox]:
    # The f-strings below only splice in the constant column list.
    rows = conn.execute(f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes ORDER BY name")  # noqa: S608
    return [_mailbox(row) for row in rows.fetchall()]


def mailbox(conn: sqlite3.Connection, name: str) -> Mailbox | None:
    """The mailbox a client means by ``name``: the name as given, else its
    canonical form ("inbox/x" is "INBOX/x", NFC: estafeta.store.names). The
    exact name first, so that a name an older version stored unnormalised
    stays reachable, and is never taken for another one."""
    sql = f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE name = ?"  # noqa: S608
    found = conn.execute(sql, (name,)).fetchone()
    if found is None:
        wanted = canonical(name)
        if wanted != name:
            found = conn.execute(sql, (wanted,)).fetchone()
    return None if found is None else _mailbox(found)


def inferiors(conn: sqlite3.Connection, name: str) -> list[Mailbox]:
    """Mailboxes below ``name`` ("A/B", "A/B/C" for "A"), from the name
    index: "0" is the character after the delimiter "/"."""
    sql = (
        f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes"  # noqa: S608
        " WHERE name > ? AND name < ? ORDER BY name"
    )
    rows = conn.execute(sql, (name + "/", name + "0")).fetchall()
    return [_mailbox(row) for row in rows]


def mailbox_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM mailboxes").fetchone()[0])


def next_mailbox_id(conn: sqlite3.Connection) -> int:
    """An id no mailbox of the account ever had, inside the caller's
    transaction (the full-text index keys messages by mailbox id and UID:
    a deleted mailbox's id must not come back)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'mailbox_id'").fetchone()
    highest = conn.execute("SELECT max(id) FROM mailboxes").fetchone()[0]
    value = max(int(row[0] if row else 0), int(highest or 0)) + 1
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('mailbox_id', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (value,),
    )
    return value


def new_uidvalidity(conn: sqlite3.Connection, at_least: int = 0) -> int:
    """A UIDVALIDITY no mailbox of the account ever had (rfc9051:2.3.1.1),
    inside the caller's transaction: the current time, or one more than the
    last one given out if that is later."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
    highest = conn.execute("SELECT max(uidvalidity) FROM mailboxes").fetchone()[0]
    value = max(int(time.time()), at_least, int(row[0] if row else 0) + 1, int(highest or 0) + 1)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('uidvalidity', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (value,),
    )
    return value


def add_messages(
    conn: sqlite3.Connection, mailbox_name: str, messages: Iterable[NewMessage]
) -> list[int]:
    """Record messages in a mailbox inside the caller's transaction.

    Returns the UIDs given, in order (0 for a file that was already indexed,
    which happens when ``reindex`` picked it up first).
    """
    box = mailbox(conn, mailbox_name)
    if box is None:
        raise KeyError(mailbox_name)
    uid = box.uidnext
    modseq = box.highestmodseq + 1
    now = int(time.time())  # saved into the mailbox: delivery, APPEND, COPY, MOVE
    uids = []
    for message in messages:
        summary = message.summary
        sort = sort_columns(summary)
        email = message.email_oid or email_oid_of(message.file)
        thread = message.thread_oid or thread_oid_for(conn, email, sort[7], sort[8])
        cursor = conn.execute(
            "INSERT INTO messages (mailbox_id, uid, file, size, internal_date, flags, modseq,"
            " subject, from_addr, sent_date, message_id, summary, envelope,"
            " s_subject, s_hsubject, s_from, s_to, s_cc, s_bcc, saved,"
            " sort_subject, subject_reply, sort_from, sort_to, sort_cc, sort_dfrom, sort_dto,"
            " thread_id, thread_refs, email_oid, thread_oid)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (file) DO NOTHING",
            (
                box.id,
                uid,
                message.file,
                message.size,
                message.internal_date,
                " ".join(flags_module.canonical_flags(message.flags)),
                modseq,
                summary.subject,
                summary.from_addr,
                None if summary.date is None else int(summary.date),
                summary.message_id,
                summary.to_json(),
                imap_envelope(summary.envelope),
                *search_columns(summary),
                now if message.saved is None else message.saved,
                *sort,
                email,
                thread,
            ),
        )
        if cursor.rowcount:
            uids.append(uid)
            uid += 1
        else:
            uids.append(0)
    conn.execute(
        "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
        (uid, modseq, box.id),
    )
    return uids


# The aggregates STATUS may ask for (rfc9051:6.3.11), as SQL over one
# mailbox; all but SIZE are read from the (mailbox_id, sysflags) index.
_STATUS_SQL = {
    "MESSAGES": "count(*)",
    "UNSEEN": f"coalesce(sum((sysflags & {flags_module.SEEN}) = 0), 0)",
    "DELETED": f"coalesce(sum((sysflags & {flags_module.DELETED}) != 0), 0)",
    "SIZE": "coalesce(sum(size), 0)",
}


def status_counts(
    conn: sqlite3.Connection, mailbox_id: int, items: Iterable[str]
) -> dict[str, int]:
    """The counts among ``items`` (MESSAGES, UNSEEN, DELETED, SIZE; others
    are ignored) of one mailbox, in one statement that computes only those."""
    wanted = [item for item in dict.fromkeys(i.upper() for i in items) if item in _STATUS_SQL]
    if not wanted:
        return {}
    columns = ", ".join(_STATUS_SQL[item] for item in wanted)
    row = conn.execute(
        f"SELECT {columns} FROM messages WHERE mailbox_id = ?",  # noqa: S608 - fixed texts
        (mailbox_id,),
    ).fetchone()
    return {item: int(value) for item, value in zip(wanted, row, strict=True)}


def files_of(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]) -> list[str]:
    """The files of the messages ``uids`` of a mailbox that exist now, in
    UID order (a UID expunged meanwhile is left out)."""
    wanted = sorted(set(uids))
    files: list[str] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT file FROM messages WHERE mailbox_id = ? AND uid IN ({marks})"  # noqa: S608
            " ORDER BY uid",
            (mailbox_id, *chunk),
        )
        files += [row[0] for row in rows]
    return files


def messages(conn: sqlite3.Connection, mailbox_id: int) -> list[MessageRow]:
    rows = conn.execute(
        "SELECT mailbox_id, uid, file, size, internal_date, flags, modseq, summary"
        " FROM messages WHERE mailbox_id = ? ORDER BY uid",
        (mailbox_id,),
    )
    return [
        MessageRow(
            mailbox_id=row[0],
            uid=row[1],
            file=row[2],
            size=row[3],
            internal_date=row[4],
            flags=tuple(row[5].split()),
            modseq=row[6],
            summary=Summary.from_json(row[7]),
        )
        for row in rows
    ]


def count(conn: sqlite3.Connection, mailbox_id: int | None = None) -> int:
    if mailbox_id is None:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    row = conn.execute("SELECT count(*) FROM messages WHERE mailbox_id = ?", (mailbox_id,))
    return int(row.fetchone()[0])


def files(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT file FROM messages")}


# (flags, internal date, saved, EMAILID, THREADID): what ``reindex`` keeps.
Carried = tuple[tuple[str, ...], int, int | None, str | None, str | None]


def old_flags(conn: sqlite3.Connection) -> dict[str, Carried]:
    """file -> what ``reindex`` carries over (``Carried``)."""
    return {
        row[0]: (tuple(row[1].split()), row[2], row[3], row[4], row[5])
        for row in conn.execute(
            "SELECT file, flags, internal_date, saved, email_oid, thread_oid FROM messages"
        )
    }


def saved_before(
    conn: sqlite3.Connection, mailbox_id: int, before: int, limit: int | None = None
) -> list[int]:
    """UIDs of the mailbox's messages saved into it before ``before`` (POSIX
    seconds), lowest first, at most ``limit``. Rows of unknown ``saved``
    (NULL) never match. It walks the mailbox's rows in UID order, which is
    nearly the order they were saved in: the old ones come first."""
    rows = conn.execute(
        "SELECT uid FROM messages WHERE mailbox_id = ? AND saved < ? ORDER BY uid LIMIT ?",
        (mailbox_id, before, -1 if limit is None else limit),
    )
    return [int(row[0]) for row in rows]


def dump_mailbox_settings(conn: sqlite3.Connection) -> dict[str, tuple[str | None, bool, int, int]]:
    """name -> (special_use, subscribed, uidvalidity, highestmodseq)."""
    return {
        box.name: (box.special_use, box.subscribed, box.uidvalidity, box.highestmodseq)
        for box in mailboxes(conn)
    }
