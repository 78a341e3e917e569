"""Reading an account's index: the one way sessions and the CLI see it.

IMAP, POP3 and the CLI never run SQL or open index files themselves (an
import contract in ``make lint`` keeps sqlite3 out of them): they call an
``IndexReader``. ``SqliteReader`` is the implementation over the per-account
SQLite index (estafeta.store.index); a second backend (PostgreSQL) provides
the same methods. Rows come back as plain tuples, not objects: a FETCH or
SEARCH over 100,000 messages makes one tuple per message and nothing else.

Every method is a read that runs to completion without awaiting; with
SQLite in WAL mode it sees the last committed state and never blocks a
writer.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from estafeta.store import fulltext, index, maildir, shared
from estafeta.store.flags import BITS
from estafeta.store.index import Mailbox, MessageRow

# (uid, flags text, modseq): flags are space-separated, system flags in
# canonical case (estafeta.store.flags).
FlagRow = tuple[int, str, int]
# (uid, file, size, internal_date, flags text, modseq, summary JSON or None,
# ENVELOPE or None); ``file`` is relative to the account directory.
FetchRow = tuple[int, str, int, int, str, int, str | None, bytes | None]
# (uid, file, size, internal_date, flags text, modseq, summary JSON or None)
SearchRow = tuple[int, str, int, int, str, int, str | None]
# (uid, EMAILID, THREADID, saved): rfc8474:5 object ids and the rfc8514:3
# save date (POSIX seconds), None where the index does not know it.
ObjectRow = tuple[int, str | None, str | None, int | None]
# (uid, size, file)
ListingRow = tuple[int, int, str]
# (uid, then the SORT_FIELDS asked for, in that order)
SortRow = tuple[Any, ...]

# What SORT and THREAD read of a message (``sort_rows``), by name: the keys
# estafeta.message.sortkeys prepared at delivery (index schema 11), the
# sent date falling back to the internal date (rfc5256:2.2: a missing or
# unparsable Date: header; the peer takes a date of 0 as missing too).
SORT_FIELDS = {
    "arrival": "internal_date",
    "date": "coalesce(nullif(sent_date, 0), internal_date)",
    "size": "size",
    "subject": "sort_subject",
    "reply": "subject_reply",
    "from": "sort_from",
    "to": "sort_to",
    "cc": "sort_cc",
    "displayfrom": "sort_dfrom",
    "displayto": "sort_dto",
    "message_id": "thread_id",
    "references": "thread_refs",
}
# rfc5256:3 sort keys, rfc5957:3 DISPLAYFROM / DISPLAYTO: what ``sorted_uids``
# orders by. The strings are prepared collation keys (estafeta.message
# .sortkeys): SQLite's BINARY comparison of their UTF-8 is code point order.
SORT_KEYS = {
    "ARRIVAL": SORT_FIELDS["arrival"],
    "CC": SORT_FIELDS["cc"],
    "DATE": SORT_FIELDS["date"],
    "FROM": SORT_FIELDS["from"],
    "SIZE": SORT_FIELDS["size"],
    "SUBJECT": SORT_FIELDS["subject"],
    "TO": SORT_FIELDS["to"],
    "DISPLAYFROM": SORT_FIELDS["displayfrom"],
    "DISPLAYTO": SORT_FIELDS["displayto"],
}


@dataclass(frozen=True)
class Condition:
    """One test a search asks of every message, in terms of stored columns.

    The reader returns every message that passes (a superset is allowed: the
    caller checks each row it gets against the whole search). ``kind``:

    * ``"flag"``: ``value`` (a system flag) is set, or not if ``negate``;
    * ``"text"``: ``column`` (one of index.SEARCH_COLUMNS) contains ``value``,
      already folded by the caller the way estafeta.message.searchtext folds;
    * ``"larger"`` / ``"smaller"``: RFC822.SIZE, ``number``;
    * ``"since"`` / ``"before"``: internal date >= / < ``number``;
    * ``"modseq"``: modseq >= ``number``;
    * ``"uids"``: UID between ``number`` and ``high`` (inclusive);
    * ``"uid_in"``: UID in ``value``, a JSON array of UIDs;
    * ``"email_oid"`` / ``"thread_oid"``: the EMAILID / THREADID is
      ``value`` (rfc8474:6);
    * ``"saved_since"`` / ``"saved_before"``: the save date (rfc8514:4.3;
      the internal date where it is not known) >= / < ``number``.
    """

    kind: str
    value: str = ""
    column: str = ""
    number: int = 0
    high: int = 0
    negate: bool = False


class IndexReader(Protocol):
    """Read access to one account's mailboxes and messages."""

    def mailboxes(self) -> list[Mailbox]: ...

    def mailbox(self, name: str) -> Mailbox | None: ...

    def subscriptions(self) -> list[str]: ...

    def highestmodseq(self, mailbox_id: int) -> int | None: ...

    def flag_rows(self, mailbox_id: int, since: int | None = None) -> list[FlagRow]: ...

    def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]: ...

    def status_counts(self, mailbox_id: int, items: Iterable[str]) -> dict[str, int]: ...

    def used_octets(self) -> int: ...

    def count_above(self, mailbox_id: int, uid: int) -> int:
        """How many messages of the mailbox have a UID above ``uid``."""
        ...

    def fetch_rows(
        self, mailbox_id: int, uids: Sequence[int], *, summary: bool
    ) -> list[FetchRow]: ...

    def search_rows(
        self, mailbox_id: int, conditions: Sequence[Condition], *, summary: bool
    ) -> list[SearchRow]: ...

    def fulltext(
        self,
        mailbox_id: int,
        field: Literal["BODY", "TEXT"],
        needle: str,
        charge: Callable[[int], object] | None = None,
    ) -> set[int] | None: ...

    def object_rows(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[ObjectRow]:
        """``ObjectRow``s of messages ``uids`` (ascending; None: all) that
        exist, in UID order: what FETCH EMAILID, THREADID and SAVEDATE
        and the SEARCH keys of those read, asked for only then."""
        ...

    def listing(self, mailbox_id: int) -> list[ListingRow]: ...

    def sort_rows(self, mailbox_id: int, fields: Sequence[str]) -> list[SortRow]:
        """(uid, *fields) of every message of the mailbox, in UID order;
        ``fields`` are SORT_FIELDS names."""
        ...

    def sorted_uids(self, mailbox_id: int, criteria: Sequence[tuple[str, bool]]) -> list[int]:
        """The UIDs of every message of the mailbox in the order of
        ``criteria`` ((SORT_KEYS name, reversed), first one first), equal
        ones in UID order (rfc5256:3: mailbox order)."""
        ...

    def message_file(self, mailbox_id: int, uid: int) -> str | None: ...

    def messages(self, mailbox_id: int) -> list[MessageRow]: ...

    def content(self, file: str) -> bytes:
        """A message's bytes, by the ``file`` its row names; FileNotFoundError
        once it is expunged. Blocking (a file read): call it from a thread
        for large messages."""
        ...

    def acl(self, mailbox_id: int) -> list[tuple[str, str]]:
        """rfc4314 (identifier, rights) of a mailbox of the shared store."""
        ...

    def rights(self, mailbox_id: int, address: str) -> str:
        """What ``address`` may do in a mailbox of the shared store (its ACL)."""
        ...

    def visible(self, address: str) -> dict[str, str]:
        """Mailbox name -> rights of ``address``, where it has any (shared store)."""
        ...

    def close(self) -> None: ...


_FETCH_COLUMNS = "uid, file, size, internal_date, {flags}, modseq, {summary}, envelope"
_SEARCH_COLUMNS = "uid, file, size, internal_date, {flags}, modseq, {summary}"


class SqliteReader:
    """``IndexReader`` over one connection to an account's ``index.db``.

    With ``viewer`` (a number from estafeta.store.shared.viewer_id) it reads
    the shared store as that account sees it: its private \\Seen folded into
    every flags text, SEARCH SEEN/UNSEEN and STATUS UNSEEN.
    """

    # Whether ``content`` may be called on an event loop: a read of a local
    # file from the page cache. False for a reader whose bodies may be a
    # network read away (the cluster backend): sessions read them in a thread.
    inline_content = True

    def __init__(
        self, conn: sqlite3.Connection, account_dir: Path, viewer: int | None = None
    ) -> None:
        self.conn = conn
        self.account_dir = str(account_dir)
        self.viewer = viewer
        self._flags = "flags" if viewer is None else shared.flags_sql(viewer)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SqliteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- mailboxes ---------------------------------------------------------

    def mailboxes(self) -> list[Mailbox]:
        return index.mailboxes(self.conn)

    def mailbox(self, name: str) -> Mailbox | None:
        return index.mailbox(self.conn, name)

    def subscriptions(self) -> list[str]:
        return index.subscriptions(self.conn)

    def highestmodseq(self, mailbox_id: int) -> int | None:
        row = self.conn.execute(
            "SELECT highestmodseq FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def status_counts(self, mailbox_id: int, items: Iterable[str]) -> dict[str, int]:
        counts = index.status_counts(self.conn, mailbox_id, items)
        if self.viewer is not None and "UNSEEN" in counts:
            # The viewer's own \Seen (the trigger keeps only rows of messages that exist).
            (seen,) = self.conn.execute(
                "SELECT count(*) FROM private_seen WHERE mailbox_id = ? AND viewer = ?",
                (mailbox_id, self.viewer),
            ).fetchone()
            (total,) = self.conn.execute(
                "SELECT count(*) FROM messages WHERE mailbox_id = ?", (mailbox_id,)
            ).fetchone()
            counts["UNSEEN"] = int(total) - int(seen)
        return counts

    def acl(self, mailbox_id: int) -> list[tuple[str, str]]:
        return shared.acl(self.conn, mailbox_id)

    def rights(self, mailbox_id: int, address: str) -> str:
        return shared.rights_of(self.conn, mailbox_id, address)

    def visible(self, address: str) -> dict[str, str]:
        return shared.visible(self.conn, address)

    def used_octets(self) -> int:
        row = self.conn.execute("SELECT coalesce(sum(size), 0) FROM messages").fetchone()
        return int(row[0])

    def count_above(self, mailbox_id: int, uid: int) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid > ?", (mailbox_id, uid)
        ).fetchone()
        return int(row[0])

    # -- messages ----------------------------------------------------------

    def flag_rows(self, mailbox_id: int, since: int | None = None) -> list[FlagRow]:
        """(uid, flags, modseq) of the messages changed after modseq
        ``since`` (None: all of them), in UID order."""
        flags = self._flags
        if since is None:
            sql = f"SELECT uid, {flags}, modseq FROM messages WHERE mailbox_id = ? ORDER BY uid"  # noqa: S608
            return self.conn.execute(sql, (mailbox_id,)).fetchall()
        return self.conn.execute(
            f"SELECT uid, {flags}, modseq FROM messages WHERE mailbox_id = ? AND modseq > ?"  # noqa: S608
            " ORDER BY uid",
            (mailbox_id, since),
        ).fetchall()

    def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]:
        """UIDs expunged after ``modseq`` (rfc7162:3.2.10), ascending."""
        rows = self.conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq),
        )
        return [row[0] for row in rows]

    def fetch_rows(self, mailbox_id: int, uids: Sequence[int], *, summary: bool) -> list[FetchRow]:
        """The rows of messages ``uids`` (ascending, a few hundred at a time)
        that exist, in UID order; the summary JSON only if asked for."""
        if not uids:
            return []
        columns = _FETCH_COLUMNS.format(flags=self._flags, summary="summary" if summary else "NULL")
        if uids[-1] - uids[0] + 1 == len(uids):
            # A contiguous run (the common 1:*): a range scan of the primary key.
            sql = f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"  # noqa: S608
            params: tuple[int, ...] = (mailbox_id, uids[0], uids[-1])
        else:
            marks = ",".join("?" * len(uids))
            sql = f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid IN ({marks})"  # noqa: S608
            params = (mailbox_id, *uids)
        rows: list[FetchRow] = self.conn.execute(sql + " ORDER BY uid", params).fetchall()
        return rows

    def search_rows(
        self, mailbox_id: int, conditions: Sequence[Condition], *, summary: bool
    ) -> list[SearchRow]:
        """The messages that pass every condition (or may: see Condition),
        in UID order; the summary JSON only if asked for."""
        where = ["mailbox_id = ?"]
        params: list[object] = [mailbox_id]
        for condition in conditions:
            if self.viewer is not None and condition.kind == "flag" and condition.value == "\\Seen":
                # Private \Seen (estafeta.store.shared): not in sysflags here.
                seen = shared.seen_sql(self.viewer)
                where.append(f"NOT {seen}" if condition.negate else seen)
                continue
            clause, values = _condition_sql(condition)
            where.append(clause)
            params += values
        columns = _SEARCH_COLUMNS.format(
            flags=self._flags, summary="summary" if summary else "NULL"
        )
        sql = f"SELECT {columns} FROM messages WHERE {' AND '.join(where)} ORDER BY uid"  # noqa: S608
        rows: list[SearchRow] = self.conn.execute(sql, params).fetchall()
        return rows

    def fulltext(
        self,
        mailbox_id: int,
        field: Literal["BODY", "TEXT"],
        needle: str,
        charge: Callable[[int], object] | None = None,
    ) -> set[int] | None:
        """The UIDs of the mailbox's messages that may match SEARCH BODY or
        TEXT ``needle`` (rfc9051:6.4.4): those the full-text index says
        contain it or cannot tell about (texts cut at its size bounds), and
        every message it does not hold yet. None when the index cannot
        answer for this needle (under 3 characters): every message may.
        ``charge`` is called with the octets of text each check reads; it
        may raise to stop the search. Can take a while: run it in a search
        thread, on a reader of its own."""
        low, high = fulltext.mailbox_range(mailbox_id)
        # One snapshot: a message the writer indexes between the search and
        # the list of what is indexed would be "held" but not in the answer.
        self.conn.execute("BEGIN")
        try:
            answer = fulltext.search(self.conn, field, needle, low, high, charge=charge)
            if answer is None:
                return None
            mask = (1 << fulltext.UID_BITS) - 1
            held = {key & mask for key in fulltext.indexed(self.conn, low, high)}
            uids = {
                uid
                for (uid,) in self.conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ?", (mailbox_id,)
                )
            }
        finally:
            self.conn.execute("COMMIT")
        maybe = {key & mask for key in answer.found | answer.unsure}
        return (maybe & uids) | (uids - held)

    def object_rows(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[ObjectRow]:
        sql = "SELECT uid, email_oid, thread_oid, saved FROM messages WHERE mailbox_id = ?"
        if uids is None:
            return self.conn.execute(sql + " ORDER BY uid", (mailbox_id,)).fetchall()
        rows: list[ObjectRow] = []
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            params: tuple[int, ...]
            if chunk[-1] - chunk[0] + 1 == len(chunk):  # a run: a range of the primary key
                where, params = " AND uid BETWEEN ? AND ?", (mailbox_id, chunk[0], chunk[-1])
            else:
                where = f" AND uid IN ({','.join('?' * len(chunk))})"
                params = (mailbox_id, *chunk)
            rows += self.conn.execute(sql + where + " ORDER BY uid", params).fetchall()
        return rows

    def listing(self, mailbox_id: int) -> list[ListingRow]:
        """(uid, size, file) of every message, in UID order (a POP3 maildrop)."""
        rows: list[ListingRow] = self.conn.execute(
            "SELECT uid, size, file FROM messages WHERE mailbox_id = ? ORDER BY uid",
            (mailbox_id,),
        ).fetchall()
        return rows

    def sort_rows(self, mailbox_id: int, fields: Sequence[str]) -> list[SortRow]:
        """(uid, *fields) of every message of the mailbox, in UID order, in
        one query (a range scan of the primary key); ``fields`` are
        SORT_FIELDS names (KeyError for others)."""
        columns = ", ".join(["uid", *(SORT_FIELDS[f] for f in fields)])
        sql = f"SELECT {columns} FROM messages WHERE mailbox_id = ? ORDER BY uid"  # noqa: S608
        rows: list[SortRow] = self.conn.execute(sql, (mailbox_id,)).fetchall()
        return rows

    def sorted_uids(self, mailbox_id: int, criteria: Sequence[tuple[str, bool]]) -> list[int]:
        """The UIDs of every message of the mailbox in the order of
        ``criteria`` ((SORT_KEYS name, reversed), first one first), equal
        ones in UID order (rfc5256:3: mailbox order). The sort runs in
        SQLite over the ``messages_sort`` index (index schema 11), which
        holds every key: no row of the table is read."""
        order = [f"{SORT_KEYS[name]}{' DESC' if reverse else ''}" for name, reverse in criteria]
        sql = f"SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY {', '.join(order)}, uid"  # noqa: S608
        return [row[0] for row in self.conn.execute(sql, (mailbox_id,))]

    def message_file(self, mailbox_id: int, uid: int) -> str | None:
        row = self.conn.execute(
            "SELECT file FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
        ).fetchone()
        return None if row is None else str(row[0])

    def messages(self, mailbox_id: int) -> list[MessageRow]:
        return index.messages(self.conn, mailbox_id)

    def content(self, file: str) -> bytes:
        # os.open/fstat/read: about half the syscalls and time of open().read()
        # for the small files that FETCH and RETR read one after another.
        path = f"{self.account_dir}/{file}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # A file read, no SQL: a message acknowledged but not settled
            # yet is still in tmp/ (estafeta.store.ingest); read_message
            # looks there.
            return maildir.read_message(path)
        try:
            size = os.fstat(fd).st_size
            chunks: list[bytes] = []
            while True:
                chunk = os.read(fd, max(size, 65536))
                if not chunk:
                    return b"".join(chunks) if len(chunks) != 1 else chunks[0]
                chunks.append(chunk)
                size = 65536  # the file grew (it never should): read on
        finally:
            os.close(fd)


def _condition_sql(condition: Condition) -> tuple[str, list[object]]:
    kind = condition.kind
    if kind == "flag":
        bit = BITS[condition.value]
        return f"(sysflags & {bit}) {'=' if condition.negate else '!='} 0", []
    if kind == "text":
        if condition.column not in index.SEARCH_COLUMNS:
            raise ValueError(condition.column)
        # NULL: a row from before the column existed; the caller checks it.
        column = condition.column
        return f"({column} IS NULL OR instr({column}, ?) > 0)", [condition.value]
    comparisons = {
        "larger": "size > ?",
        "smaller": "size < ?",
        "since": "internal_date >= ?",
        "before": "internal_date < ?",
        "modseq": "modseq >= ?",
        "saved_since": "coalesce(saved, internal_date) >= ?",
        "saved_before": "coalesce(saved, internal_date) < ?",
    }
    if kind in comparisons:
        return comparisons[kind], [condition.number]
    if kind in ("email_oid", "thread_oid"):
        return f"{kind} = ?", [condition.value]
    if kind == "uids":
        return "uid BETWEEN ? AND ?", [condition.number, condition.high]
    if kind == "uid_in":
        return "uid IN (SELECT value FROM json_each(?))", [condition.value]
    raise ValueError(f"unknown search condition {kind!r}")
