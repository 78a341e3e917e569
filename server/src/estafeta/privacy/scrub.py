"""Rebuild a SQLite file so that rows deleted from it leave no octets behind.

A DELETE only unlinks a row from its b-tree page: the octets stay in the
page's free space, in free pages, and in the WAL until it is reset. Owners
of a database delete with ``PRAGMA secure_delete`` where they can; for
``accounts.db``, whose owner (estafeta.auth.accounts) offers no such call,
``estafeta user erase`` rebuilds the whole file afterwards: VACUUM writes
every live row into fresh pages, and a TRUNCATE checkpoint copies them over
the old file, cuts it to size and empties the WAL. This is the one SQL
statement of the privacy package, and it names no table.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT = 30.0  # seconds the rebuild waits for the server's transactions


class ScrubError(Exception):
    """The file could not be rebuilt now (busy, or not a database)."""


def scrub_database(path: Path, timeout: float = BUSY_TIMEOUT) -> None:
    """VACUUM ``path`` and truncate its WAL; ScrubError if a reader kept
    the WAL in use past ``timeout`` (run it again) or on a database error.
    Other processes may use the file meanwhile (WAL mode): they wait for
    the rebuild as for any write."""
    try:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise ScrubError(f"{path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("VACUUM")
        (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        raise ScrubError(f"{path}: {exc}") from None
    finally:
        conn.close()
    if busy:
        raise ScrubError(f"{path}: a reader kept the WAL in use; run again")
