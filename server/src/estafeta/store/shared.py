"""Shared mailboxes: access control lists (rfc4314) and private \\Seen.

Every shared mailbox is a mailbox of one pseudo-account, the shared store
(owner ``OWNER``, directory ``DATA/mail/.shared/``), written and recovered
like any account (estafeta.store.account). What makes it shared is in its
``index.db`` (schema 13, estafeta.store.index):

* ``acl``: per mailbox, identifier (an account address or ``anyone``) ->
  rights, canonical (``RIGHTS`` order, no virtual ``c``/``d``);
* ``viewers`` and ``private_seen``: \\Seen is kept per account, one row per
  (mailbox, uid, viewer); ``messages.flags`` never holds \\Seen here. A
  reader opened for a viewer (``SqliteReader(viewer=...)``) folds the row
  into the flags it returns.

A viewer's \\Seen change gives the message a new modseq (modseqs are
common), in the same transaction: every session of the mailbox pulls the
message again and finds its own flags. Design: docs/shared-mailboxes.md.

Rights are pure functions of strings here (used by the IMAP session, the
config and the CLI); the SQL is in the functions taking a connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from estafeta.store import index
from estafeta.store.flags import canonical_flags
from estafeta.store.names import MailboxError
from estafeta.store.operations import FlagChange, StoreResult, box_modseq, transaction

OWNER = "#shared"
"""The shared store's address: it has no "@", so no account can have it."""
DIRECTORY = ".shared"
"""Its directory under the mail directory (a domain never starts with ".")."""
ANYONE = "anyone"  # rfc4314:2 the special identifier: every authenticated user
RIGHTS = "lrswipkxtea"  # rfc4314:2.1, in the order we show them
VIRTUAL = {"c": "k", "d": "xte"}  # rfc4314:2.1.1 with "c = k", "d = xte"
ALL_RIGHTS = RIGHTS
MAX_ACL_ENTRIES = 64
"""Identifiers per mailbox ACL; SETACL beyond: NO [LIMIT]."""
MAX_IDENTIFIER = 255
"""Octets of an identifier (the parser refuses longer ones)."""


class RightsError(ValueError):
    """A rights string with a character that is no right (rfc4314:3.1: BAD)."""


def canonical(rights: Iterable[str]) -> str:
    """The rights among ``rights`` in ``RIGHTS`` order, virtual ones expanded."""
    have: set[str] = set()
    for right in rights:
        have.update(VIRTUAL.get(right, right))
    return "".join(right for right in RIGHTS if right in have)


def parse_rights(text: str) -> str:
    """rfc4314:3.1 the rights of a rights string (no +/-), canonical;
    RightsError for anything that is not a right (upper case included)."""
    for char in text:
        if char not in RIGHTS and char not in VIRTUAL:
            raise RightsError(f"{char!r} is not a right (rfc4314:2.1: {RIGHTS}cd)")
    return canonical(text)


def modify(current: str, change: str) -> str:
    """rfc4314:3.1 mod-rights: "+r" adds, "-r" takes away, "r" replaces."""
    if change.startswith("+"):
        return canonical(current + parse_rights(change[1:]))
    if change.startswith("-"):
        gone = set(parse_rights(change[1:]))
        return "".join(right for right in current if right not in gone)
    return parse_rights(change)


def show(rights: str) -> str:
    """Rights as ACL and MYRIGHTS responses give them: with "c" when "k" is
    there and "d" when any of "xte" is (rfc4314:2.1.1, for RFC 2086 clients)."""
    shown = canonical(rights)
    if "k" in shown:
        shown += "c"
    if any(right in shown for right in VIRTUAL["d"]):
        shown += "d"
    return shown


def identifier(text: str) -> str:
    """An identifier as stored: "anyone" in lower case, an address as given
    (the caller normalises addresses). ValueError for what cannot be one."""
    if not text or len(text.encode("utf-8")) > MAX_IDENTIFIER:
        raise ValueError("an identifier is 1 to 255 octets")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError("control characters in an identifier")
    if text.lower() == ANYONE:
        return ANYONE
    if text.startswith("-"):
        raise ValueError("negative rights are not supported (rfc4314:2)")
    return text


def flag_right(flag: str) -> str:
    """rfc4314:4 the right that changing ``flag`` takes: s, t or w."""
    return {"\\Seen": "s", "\\Deleted": "t"}.get(flag, "w")


def within_rights(old: Sequence[str], new: Sequence[str], rights: str) -> tuple[str, ...]:
    """``new`` flags where ``rights`` allow the change, ``old`` where not
    (rfc4314:4: STORE changes what it may and keeps the rest); \\Seen last,
    as a viewer's reader gives it."""
    kept = [f for f in new if flag_right(f) in rights]
    kept += [f for f in old if flag_right(f) not in rights]
    result = canonical_flags(kept)
    return (*(f for f in result if f != "\\Seen"), *(f for f in result if f == "\\Seen"))


# -- the ACL in the shared store's index ---------------------------------------


def acl(conn: sqlite3.Connection, mailbox_id: int) -> list[tuple[str, str]]:
    """(identifier, rights) of one mailbox, by identifier."""
    rows = conn.execute(
        "SELECT identifier, rights FROM acl WHERE mailbox_id = ? ORDER BY identifier",
        (mailbox_id,),
    )
    return [(str(ident), str(rights)) for ident, rights in rows]


def rights_of(conn: sqlite3.Connection, mailbox_id: int, address: str) -> str:
    """What ``address`` may do in one mailbox: its entry and anyone's."""
    rows = conn.execute(
        "SELECT rights FROM acl WHERE mailbox_id = ? AND identifier IN (?, ?)",
        (mailbox_id, address, ANYONE),
    )
    return canonical("".join(row[0] for row in rows))


def visible(conn: sqlite3.Connection, address: str) -> dict[str, str]:
    """Mailbox name -> rights of ``address``, for every mailbox where it has any."""
    rows = conn.execute(
        "SELECT m.name, a.rights FROM acl a JOIN mailboxes m ON m.id = a.mailbox_id"
        " WHERE a.identifier IN (?, ?)",
        (address, ANYONE),
    )
    found: dict[str, str] = {}
    for name, rights in rows:
        found[name] = canonical(found.get(name, "") + rights)
    return {name: rights for name, rights in found.items() if rights}


def all_acls(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """Mailbox name -> {identifier: rights} for every mailbox with an ACL."""
    result: dict[str, dict[str, str]] = {}
    for name, ident, rights in conn.execute(
        "SELECT m.name, a.identifier, a.rights FROM acl a JOIN mailboxes m"
        " ON m.id = a.mailbox_id ORDER BY m.name, a.identifier"
    ):
        result.setdefault(name, {})[ident] = rights
    return result


def set_rights(conn: sqlite3.Connection, mailbox: str, ident: str, rights: str | None) -> bool:
    """rfc4314:3.1 SETACL (``rights`` canonical; "" keeps an empty entry)
    or, with None, rfc4314:3.2 DELETEACL; whether anything changed.
    NONEXISTENT without the mailbox, LIMIT past MAX_ACL_ENTRIES."""
    with transaction(conn):
        box = index.mailbox(conn, mailbox)
        if box is None:
            raise MailboxError(f"no mailbox {mailbox!r}", "NONEXISTENT")
        row = conn.execute(
            "SELECT rights FROM acl WHERE mailbox_id = ? AND identifier = ?", (box.id, ident)
        ).fetchone()
        if rights is None:
            if row is None:
                return False
            conn.execute("DELETE FROM acl WHERE mailbox_id = ? AND identifier = ?", (box.id, ident))
            return True
        if row is not None and row[0] == rights:
            return False
        if row is None:
            (count,) = conn.execute(
                "SELECT count(*) FROM acl WHERE mailbox_id = ?", (box.id,)
            ).fetchone()
            if count >= MAX_ACL_ENTRIES:
                raise MailboxError(f"at most {MAX_ACL_ENTRIES} ACL entries per mailbox", "LIMIT")
        conn.execute(
            "INSERT INTO acl (mailbox_id, identifier, rights) VALUES (?, ?, ?)"
            " ON CONFLICT (mailbox_id, identifier) DO UPDATE SET rights = excluded.rights",
            (box.id, ident, rights),
        )
        return True


def inherit(conn: sqlite3.Connection, name: str) -> None:
    """rfc4314:4 CREATE: a new mailbox (and the superiors made with it)
    takes the ACL of its nearest superior that has one, if it has none."""
    parts = name.split("/")
    with transaction(conn):
        source: list[tuple[str, str]] = []
        for depth in range(len(parts) - 1, 0, -1):
            parent = index.mailbox(conn, "/".join(parts[:depth]))
            if parent is not None and (source := acl(conn, parent.id)):
                break
        if not source:
            return
        for depth in range(1, len(parts) + 1):
            box = index.mailbox(conn, "/".join(parts[:depth]))
            if box is None or acl(conn, box.id):
                continue
            conn.executemany(
                "INSERT INTO acl (mailbox_id, identifier, rights) VALUES (?, ?, ?)",
                ((box.id, ident, rights) for ident, rights in source),
            )


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    """Every ACL by mailbox name (kept over a reindex, which makes new ids)."""
    return {name: list(entries.items()) for name, entries in all_acls(conn).items()}


def restore(conn: sqlite3.Connection, acls: dict[str, list[tuple[str, str]]]) -> None:
    """Put back what ``dump`` gave, in the caller's transaction."""
    for name, entries in acls.items():
        box = index.mailbox(conn, name)
        if box is not None:
            conn.executemany(
                "INSERT OR REPLACE INTO acl (mailbox_id, identifier, rights) VALUES (?, ?, ?)",
                ((box.id, ident, rights) for ident, rights in entries),
            )


# -- private \Seen ---------------------------------------------------------------


def viewer_id(conn: sqlite3.Connection, address: str) -> int:
    """The number of ``address`` in ``viewers``, made if missing (writer thread)."""
    row = conn.execute("SELECT id FROM viewers WHERE address = ?", (address,)).fetchone()
    if row is not None:
        return int(row[0])
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO viewers (address) VALUES (?)", (address,))
        row = conn.execute("SELECT id FROM viewers WHERE address = ?", (address,)).fetchone()
    return int(row[0])


def seen_sql(viewer: int) -> str:
    """SQL true when the viewer has seen the row of ``messages`` at hand
    (``viewer`` is a number from ``viewer_id``, never client text)."""
    where = "p.mailbox_id = messages.mailbox_id AND p.uid = messages.uid"
    return f"EXISTS (SELECT 1 FROM private_seen p WHERE {where} AND p.viewer = {int(viewer)})"  # noqa: S608 - an int


def flags_sql(viewer: int) -> str:
    """The flags text as the viewer sees it: the common flags, \\Seen last."""
    return f"(CASE WHEN {seen_sql(viewer)} THEN ltrim(flags || ' \\Seen') ELSE flags END)"


def _apply(old: Sequence[str], mode: str, wanted: Sequence[str]) -> list[str]:
    if mode == "":
        return list(wanted)
    lowered = {flag.lower() for flag in old}
    if mode == "+":
        return [*old, *(flag for flag in wanted if flag.lower() not in lowered)]
    gone = {flag.lower() for flag in wanted}
    return [flag for flag in old if flag.lower() not in gone]


def store_flags(
    conn: sqlite3.Connection,
    mailbox: str,
    uids: Sequence[int],
    mode: str,
    flags: Sequence[str],
    viewer: str,
    rights: str,
    unchangedsince: int | None = None,
) -> StoreResult:
    """rfc9051:6.4.6 STORE in a shared mailbox for ``viewer``: \\Seen goes to
    its private rows, the other flags to the common ones; only the flags
    ``rights`` allow change (rfc4314:4), the others stay. One modseq for the
    command, given to every message whose flags (as the viewer sees them)
    change. Message by message: shared mailboxes are team-sized."""
    if mode not in ("", "+", "-"):
        raise ValueError(mode)
    wanted = canonical_flags(flags)
    vid = viewer_id(conn, viewer)
    changed: list[FlagChange] = []
    failed: list[int] = []
    with transaction(conn):
        box = index.mailbox(conn, mailbox)
        if box is None:
            raise MailboxError(f"no mailbox {mailbox!r}", "NONEXISTENT")
        modseq = box_modseq(conn, box) + 1
        ordered = sorted(set(uids))
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND uid IN ({marks})"  # noqa: S608
                " ORDER BY uid",
                (box.id, *chunk),
            ).fetchall()
            seen = {
                row[0]
                for row in conn.execute(
                    f"SELECT uid FROM private_seen WHERE mailbox_id = ? AND viewer = ? AND uid IN ({marks})",  # noqa: S608, E501
                    (box.id, vid, *chunk),
                )
            }
            for uid, text, old_modseq in rows:
                if unchangedsince is not None and old_modseq > unchangedsince:
                    failed.append(uid)  # rfc7162:3.1.3
                    continue
                old = (*text.split(), *(("\\Seen",) if uid in seen else ()))
                new = within_rights(old, _apply(old, mode, wanted), rights)
                if set(new) == set(old):
                    continue
                common = " ".join(flag for flag in new if flag != "\\Seen")
                conn.execute(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                    (common, modseq, box.id, uid),
                )
                if "\\Seen" in new and uid not in seen:
                    conn.execute(
                        "INSERT OR IGNORE INTO private_seen (mailbox_id, uid, viewer)"
                        " VALUES (?, ?, ?)",
                        (box.id, uid, vid),
                    )
                elif "\\Seen" not in new and uid in seen:
                    conn.execute(
                        "DELETE FROM private_seen WHERE mailbox_id = ? AND uid = ? AND viewer = ?",
                        (box.id, uid, vid),
                    )
                changed.append(FlagChange(uid, new, modseq))
        if changed:
            conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, box.id))
        highest = box_modseq(conn, box)
    return StoreResult(changed, failed, highest)
