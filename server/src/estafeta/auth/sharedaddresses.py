"""Delivery addresses of shared mailboxes in ``accounts.db`` (the SQL of
``Accounts``' shared-address methods).

Schema version 8 of ``estafeta.auth.accounts`` adds::

    shared_addresses(address PRIMARY KEY, mailbox)   -- WITHOUT ROWID
    INDEX shared_addresses_by_mailbox (mailbox)

An address here (``info@example.org``, normalised as accounts are) takes
mail for the top-level shared mailbox ``mailbox`` of the shared store
(estafeta.store.shared, ``Shared/info`` in IMAP). It lives next to the
accounts and aliases, not in the shared store's index, because an address
is one name space with them: the administrator's write checks in one
transaction that it is no account, no alias and no other mailbox's address,
and ``Accounts.resolve`` finds it with one primary-key lookup in the read
it already makes, before the domain's catch-all. Design:
docs/shared-mailboxes.md.

What ``resolve`` gives for such an address is a *target* of its own form,
``TARGET + mailbox`` (``#shared:info``): it has no "@", so nothing that
expects an account or a remote address can take it for one;
``estafeta.delivery.route.Router`` tells it apart.
"""

from __future__ import annotations

import sqlite3

TARGET = "#shared:"
"""The prefix of a resolved target that is a shared mailbox (``#shared:info``);
the part before ":" is estafeta.store.shared.OWNER."""


def create_v8(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE shared_addresses (
            address TEXT PRIMARY KEY,       -- normalised, in a configured domain
            mailbox TEXT NOT NULL           -- a top-level mailbox of the shared store
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX shared_addresses_by_mailbox ON shared_addresses (mailbox)")


def target(mailbox: str) -> str:
    """The resolved target of a shared mailbox."""
    return TARGET + mailbox


def mailbox_of_target(found: str) -> str | None:
    """The shared mailbox a resolved target names; None for an account or
    a remote address."""
    return found[len(TARGET) :] if found.startswith(TARGET) else None


def mailbox_of(conn: sqlite3.Connection, address: str) -> str | None:
    """The shared mailbox ``address`` delivers to: one primary-key lookup."""
    row = conn.execute(
        "SELECT mailbox FROM shared_addresses WHERE address = ?", (address,)
    ).fetchone()
    return None if row is None else str(row[0])


def addresses(conn: sqlite3.Connection, mailbox: str | None = None) -> dict[str, list[str]]:
    """Mailbox -> its addresses, sorted; of one mailbox or of all."""
    if mailbox is None:
        rows = conn.execute("SELECT mailbox, address FROM shared_addresses ORDER BY 1, 2")
    else:
        rows = conn.execute(
            "SELECT mailbox, address FROM shared_addresses WHERE mailbox = ? ORDER BY 2",
            (mailbox,),
        )
    found: dict[str, list[str]] = {}
    for name, address in rows:
        found.setdefault(name, []).append(address)
    return found


def add(conn: sqlite3.Connection, address: str, mailbox: str) -> None:
    conn.execute(
        "INSERT INTO shared_addresses (address, mailbox) VALUES (?, ?)", (address, mailbox)
    )


def remove(conn: sqlite3.Connection, address: str, mailbox: str) -> bool:
    """Whether ``address`` was ``mailbox``'s and is gone."""
    cursor = conn.execute(
        "DELETE FROM shared_addresses WHERE address = ? AND mailbox = ?", (address, mailbox)
    )
    return cursor.rowcount > 0


def forget(conn: sqlite3.Connection, mailbox: str) -> list[str]:
    """Drop every address of ``mailbox`` (``estafeta shared remove``); which went."""
    gone = addresses(conn, mailbox).get(mailbox, [])
    conn.execute("DELETE FROM shared_addresses WHERE mailbox = ?", (mailbox,))
    return gone
