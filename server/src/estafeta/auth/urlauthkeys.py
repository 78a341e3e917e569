"""Mailbox access keys of URLAUTH (rfc4467:2.4) in ``accounts.db`` (the SQL
of ``Accounts``' URLAUTH methods).

Schema version 6 of ``estafeta.auth.accounts`` adds::

    urlauth_keys(address, mailbox_id, uidvalidity, key)   PRIMARY KEY (address, mailbox_id)

One key per mailbox of an account: 32 random bytes, the secret of the
INTERNAL mechanism (estafeta.auth.urlauth). A key belongs to one
incarnation of the mailbox: its row remembers the mailbox's UIDVALIDITY,
and a mailbox deleted and created again (a new UIDVALIDITY, rfc9051:2.3.1.1)
does not find the old key, so URLs made for the old one stay invalid.
RESETKEY replaces a mailbox's key or, without a mailbox, drops them all
(rfc4467 RESETKEY); deleting the account drops them too.
"""

from __future__ import annotations

import secrets
import sqlite3

KEY_BYTES = 32  # rfc4467:10: at least 128 bits of entropy


def create_v6(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE urlauth_keys (
            address TEXT NOT NULL,          -- the account (the mailbox's owner)
            mailbox_id INTEGER NOT NULL,    -- the mailbox's id in the account's index
            uidvalidity INTEGER NOT NULL,   -- of the mailbox the key was made for
            key BLOB NOT NULL,              -- rfc4467:2.4 mailbox access key
            PRIMARY KEY (address, mailbox_id)
        )"""
    )


def key_of(
    conn: sqlite3.Connection, address: str, mailbox_id: int, uidvalidity: int
) -> bytes | None:
    row = conn.execute(
        "SELECT key FROM urlauth_keys WHERE address = ? AND mailbox_id = ? AND uidvalidity = ?",
        (address, mailbox_id, uidvalidity),
    ).fetchone()
    return None if row is None else bytes(row[0])


def new_key(conn: sqlite3.Connection, address: str, mailbox_id: int, uidvalidity: int) -> bytes:
    """A fresh key for the mailbox, in place of any it had."""
    key = secrets.token_bytes(KEY_BYTES)
    conn.execute(
        "INSERT OR REPLACE INTO urlauth_keys (address, mailbox_id, uidvalidity, key)"
        " VALUES (?, ?, ?, ?)",
        (address, mailbox_id, uidvalidity, key),
    )
    return key


def forget(conn: sqlite3.Connection, address: str) -> int:
    """Drop every key of ``address``; how many there were."""
    return conn.execute("DELETE FROM urlauth_keys WHERE address = ?", (address,)).rowcount
