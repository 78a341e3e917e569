"""The SQLite files of the report stores (``data_dir/reports/*.db``): one
way to open them, for every store in this package.

``connect(path, schema, error, create)`` yields a connection in autocommit
mode (callers run ``BEGIN IMMEDIATE ... COMMIT`` themselves), WAL,
``synchronous=FULL``, a busy timeout (the server and the CLI may write at
the same time); a new file gets ``schema`` and ``PRAGMA user_version``,
mode 0600 in a 0700 directory. A file of another schema version, and every
OS or SQLite error, comes out as ``error`` naming the file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 10_000


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextmanager
def connect(
    path: Path,
    schema: Sequence[str],
    version: int,
    error: type[Exception],
    create: bool,
) -> Iterator[sqlite3.Connection]:
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"{path}: {detail(exc)}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found not in (0, version):
            raise error(f"{path}: schema version {found}, this estafeta knows {version}")
        if found == 0:
            for statement in schema:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            os.chmod(path, 0o600)
        yield conn
    except (OSError, sqlite3.Error) as exc:
        raise error(f"{path}: {detail(exc)}") from None
    finally:
        conn.close()


def detail(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
