"""SCRAM-SHA-256 keys in ``accounts.db`` (the SQL of ``Accounts``' SCRAM methods).

Schema version 5 of ``estafeta.auth.accounts`` adds::

    scram(address PRIMARY KEY, salt, iterations)   one row per account that has keys
    scram_secret(id = 1, secret)                   32 random bytes, made by the migration
    accounts.scram_keys, app_passwords.scram_keys  StoredKey || ServerKey, or NULL

Never a password: only what rfc5802:3 lets a server keep (salt, iteration
count, StoredKey, ServerKey), next to the argon2 hash of the same secret.
All credentials of one account (its password, its app passwords) use the
account's one salt and iteration count, so that the server-first message
does not depend on which of them the client is about to use. App passwords
are keyed in the form they are shown in (``abcd-efgh-jkmn-pqrs``).

An account's first salt is its "fake salt" (``scram.fake_salt`` with
``scram_secret``): the salt the server answers with for an address that has
no keys, or is no account. So an account getting keys does not change what
a SCRAM client sees. When the configured iteration count changes, the next
password change starts a new (random) salt; the app passwords' keys are
then dropped and come back at their next plaintext login.

Accounts created before schema 5 have no keys: the next successful
plaintext login (IMAP LOGIN / AUTHENTICATE PLAIN, POP3 USER/PASS or AUTH
PLAIN, SMTP AUTH PLAIN, ManageSieve PLAIN) derives them from the secret it
has just verified (``Accounts.authenticate``), for that credential.

Crash ordering: keys are written in the transaction that writes the hash
they belong to (new account, new password, new app password), or, at the
upgrade, in one transaction that checks the hash and the salt are still
those the keys were derived for. A crash leaves either the old state or the
new one; a credential without keys only cannot be used with SCRAM yet.
"""

from __future__ import annotations

import secrets
import sqlite3


def create_v5(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE scram (
            address TEXT PRIMARY KEY,       -- an account
            salt BLOB NOT NULL,             -- shared by all its credentials
            iterations INTEGER NOT NULL     -- PBKDF2 iterations (rfc7677: >= 4096)
        )"""
    )
    conn.execute(
        """CREATE TABLE scram_secret (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            secret BLOB NOT NULL            -- key of the salts of addresses without keys
        )"""
    )
    conn.execute("INSERT INTO scram_secret (id, secret) VALUES (1, ?)", (secrets.token_bytes(32),))
    # StoredKey || ServerKey (32 + 32 bytes) under scram.salt; NULL = none yet.
    conn.execute("ALTER TABLE accounts ADD COLUMN scram_keys BLOB")
    conn.execute("ALTER TABLE app_passwords ADD COLUMN scram_keys BLOB")


def secret(conn: sqlite3.Connection) -> bytes:
    (value,) = conn.execute("SELECT secret FROM scram_secret WHERE id = 1").fetchone()
    return bytes(value)


def salt_of(conn: sqlite3.Connection, address: str) -> tuple[bytes, int] | None:
    """The account's salt and iteration count, or None if it has none."""
    row = conn.execute(
        "SELECT salt, iterations FROM scram WHERE address = ?", (address,)
    ).fetchone()
    return None if row is None else (bytes(row[0]), int(row[1]))


def set_salt(conn: sqlite3.Connection, address: str, salt: bytes, iterations: int) -> bool:
    """Make (salt, iterations) the account's; True if that replaced a
    different one (the keys of its other credentials are then dropped)."""
    current = salt_of(conn, address)
    if current == (salt, iterations):
        return False
    conn.execute(
        "INSERT OR REPLACE INTO scram (address, salt, iterations) VALUES (?, ?, ?)",
        (address, salt, iterations),
    )
    if current is None:
        return False
    conn.execute("UPDATE accounts SET scram_keys = NULL WHERE address = ?", (address,))
    conn.execute("UPDATE app_passwords SET scram_keys = NULL WHERE address = ?", (address,))
    return True


def password_keys(conn: sqlite3.Connection, address: str) -> tuple[str, bytes | None] | None:
    """(password hash, keys) of the account, or None if it is no account."""
    row = conn.execute(
        "SELECT password_hash, scram_keys FROM accounts WHERE address = ?", (address,)
    ).fetchone()
    return None if row is None else (row[0], None if row[1] is None else bytes(row[1]))


def app_keys(conn: sqlite3.Connection, address: str, name: str) -> tuple[str, bytes | None] | None:
    """(hash, keys) of one app password, or None if there is no such one."""
    row = conn.execute(
        "SELECT password_hash, scram_keys FROM app_passwords WHERE address = ? AND name = ?",
        (address, name),
    ).fetchone()
    return None if row is None else (row[0], None if row[1] is None else bytes(row[1]))


def store_password_keys(conn: sqlite3.Connection, address: str, stored: str, keys: bytes) -> bool:
    """Keys for the account password, if its hash is still ``stored``."""
    cursor = conn.execute(
        "UPDATE accounts SET scram_keys = ? WHERE address = ? AND password_hash = ?",
        (keys, address, stored),
    )
    return cursor.rowcount == 1


def store_app_keys(
    conn: sqlite3.Connection, address: str, name: str, stored: str, keys: bytes
) -> bool:
    """Keys for one app password, if its hash is still ``stored``."""
    cursor = conn.execute(
        "UPDATE app_passwords SET scram_keys = ? "
        "WHERE address = ? AND name = ? AND password_hash = ?",
        (keys, address, name, stored),
    )
    return cursor.rowcount == 1


def credentials(
    conn: sqlite3.Connection, address: str
) -> tuple[bytes | None, bool, list[tuple[str, str, int | None, bytes]]]:
    """What a SCRAM login may match: (the account password's keys or None,
    whether the account has TOTP, [(app name, protocols, expires, keys)] of
    the app passwords that have keys)."""
    row = conn.execute(
        "SELECT scram_keys, EXISTS (SELECT 1 FROM totp WHERE address = ?) "
        "FROM accounts WHERE address = ?",
        (address, address),
    ).fetchone()
    if row is None:
        return None, False, []
    apps = [
        (name, protocols, expires, bytes(keys))
        for name, protocols, expires, keys in conn.execute(
            "SELECT name, protocols, expires, scram_keys FROM app_passwords "
            "WHERE address = ? AND scram_keys IS NOT NULL ORDER BY created, name",
            (address,),
        )
    ]
    return (None if row[0] is None else bytes(row[0])), bool(row[1]), apps


def forget(conn: sqlite3.Connection, address: str) -> None:
    """The account's salt (its keys go with its rows)."""
    conn.execute("DELETE FROM scram WHERE address = ?", (address,))
