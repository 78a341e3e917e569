"""IMAP METADATA (rfc5464) entries in ``accounts.db`` (the SQL of
``Accounts``' metadata methods).

Schema version 7 of ``estafeta.auth.accounts`` adds::

    metadata(address, mailbox_id, uidvalidity, entry, value)
        PRIMARY KEY (address, mailbox_id, entry)

``mailbox_id`` 0 (UIDVALIDITY 0) holds an account's server entries
(rfc5464:3.2.1.1, the "" mailbox); other rows belong to one incarnation of
a mailbox of the account, as the URLAUTH keys do (estafeta.auth.urlauthkeys):
a row whose UIDVALIDITY is not the mailbox's is not read, and DELETE drops
the mailbox's rows (rfc5464:4.1). Entry names are stored in lower case
(rfc5464:3.2: case-insensitive). The session checks names, sizes and counts
(estafeta.imap.metadata); a SETMETADATA is one transaction (rfc5464:4.3:
all or nothing).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


def create_v7(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE metadata (
            address TEXT NOT NULL,          -- the account
            mailbox_id INTEGER NOT NULL,    -- 0: the account's server entries
            uidvalidity INTEGER NOT NULL,   -- of the mailbox the entry was set on
            entry TEXT NOT NULL,            -- rfc5464:3.2 entry name, lower case
            value BLOB NOT NULL,
            PRIMARY KEY (address, mailbox_id, entry)
        )"""
    )


def entries(
    conn: sqlite3.Connection, address: str, mailbox_id: int, uidvalidity: int
) -> dict[str, bytes]:
    rows = conn.execute(
        "SELECT entry, value FROM metadata"
        " WHERE address = ? AND mailbox_id = ? AND uidvalidity = ?",
        (address, mailbox_id, uidvalidity),
    ).fetchall()
    return {entry: bytes(value) for entry, value in rows}


def write(
    conn: sqlite3.Connection,
    address: str,
    mailbox_id: int,
    uidvalidity: int,
    changes: Sequence[tuple[str, bytes | None]],
) -> None:
    # Rows of an older incarnation of the mailbox go first.
    conn.execute(
        "DELETE FROM metadata WHERE address = ? AND mailbox_id = ? AND uidvalidity != ?",
        (address, mailbox_id, uidvalidity),
    )
    for entry, value in changes:
        if value is None:
            conn.execute(
                "DELETE FROM metadata WHERE address = ? AND mailbox_id = ? AND entry = ?",
                (address, mailbox_id, entry),
            )
        else:
            conn.execute(
                "INSERT OR REPLACE INTO metadata (address, mailbox_id, uidvalidity, entry, value)"
                " VALUES (?, ?, ?, ?, ?)",
                (address, mailbox_id, uidvalidity, entry, value),
            )


def forget(conn: sqlite3.Connection, address: str, mailbox_id: int | None = None) -> None:
    """Drop a mailbox's entries (DELETE), or all of an account's."""
    if mailbox_id is None:
        conn.execute("DELETE FROM metadata WHERE address = ?", (address,))
    else:
        conn.execute(
            "DELETE FROM metadata WHERE address = ? AND mailbox_id = ?", (address, mailbox_id)
        )
