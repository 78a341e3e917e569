"""Accounts and aliases in SQLite (``data_dir/accounts.db``), argon2id hashes.

Every write is one transaction, so a failed command leaves nothing behind.
Connections are per thread (``threading.local``): the SMTP event loop, the
CLI and worker threads each get their own; SQLite's locking (WAL,
busy_timeout) serialises writers across threads and processes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import argon2

from estafeta.address import AddressError, normalize_address, normalize_domain, split_address

SCHEMA_VERSION = 1
MIN_PASSWORD_LENGTH = 8
MAX_ALIAS_DEPTH = 10

_SCHEMA = """
CREATE TABLE accounts (
    address TEXT PRIMARY KEY,          -- normalised (estafeta.address)
    password_hash TEXT NOT NULL,       -- argon2id, PHC string
    created INTEGER NOT NULL
);
CREATE TABLE aliases (
    source TEXT NOT NULL,              -- normalised address, or '@domain' (catch-all)
    target TEXT NOT NULL,              -- an account or another alias
    position INTEGER NOT NULL,
    PRIMARY KEY (source, target)
);
"""


class AccountError(Exception):
    """An account operation that cannot be done; the message says why."""


class Accounts:
    def __init__(
        self,
        path: Path,
        domains: Iterable[str],
        *,
        hasher: argon2.PasswordHasher | None = None,
        subaddress_separator: str | None = "+",
    ) -> None:
        self.path = path
        self.domains = tuple(normalize_domain(d) for d in domains)
        self.hasher = hasher or argon2.PasswordHasher()  # argon2id, RFC 9106 defaults
        self.separator = subaddress_separator
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._dummy_hash = self.hasher.hash("not a real password")
        self._conn()  # create the schema now, so errors show at start

    # -- connections -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            except sqlite3.OperationalError as exc:
                raise AccountError(f"cannot open {self.path}: {exc}") from None
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._migrate(conn)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise AccountError(f"{self.path}: schema {version} is newer than this estafeta")
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                # executescript() would COMMIT first: run the statements one by one.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- helpers -------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        try:
            return normalize_domain(domain) in self.domains
        except AddressError:
            return False

    def _local_address(self, address: str) -> str:
        try:
            normalized = normalize_address(address)
        except AddressError as exc:
            raise AccountError(str(exc)) from None
        domain = split_address(normalized)[1]
        if domain not in self.domains:
            raise AccountError(
                f"domain {domain} is not one of the configured domains ({', '.join(self.domains)})"
            )
        return normalized

    def _alias_source(self, source: str) -> str:
        if source.startswith("@"):
            try:
                domain = normalize_domain(source[1:])
            except AddressError as exc:
                raise AccountError(str(exc)) from None
            if domain not in self.domains:
                raise AccountError(
                    f"domain {domain} is not one of the configured domains "
                    f"({', '.join(self.domains)})"
                )
            return f"@{domain}"
        return self._local_address(source)

    def _check_password(self, password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"password too short: use at least {MIN_PASSWORD_LENGTH} characters")

    # -- accounts ------------------------------------------------------------

    def add_user(self, address: str, password: str) -> str:
        normalized = self._local_address(address)
        self._check_password(password)
        password_hash = self.hasher.hash(password)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE address = ?", (normalized,)).fetchone():
                raise AccountError(f"account {normalized} already exists")
            if conn.execute("SELECT 1 FROM aliases WHERE source = ?", (normalized,)).fetchone():
                raise AccountError(f"{normalized} is an alias; delete the alias first")
            conn.execute(
                "INSERT INTO accounts (address, password_hash, created) VALUES (?, ?, ?)",
                (normalized, password_hash, int(time.time())),
            )
        return normalized

    def set_password(self, address: str, password: str) -> None:
        normalized = self._local_address(address)
        self._check_password(password)
        password_hash = self.hasher.hash(password)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE accounts SET password_hash = ? WHERE address = ?",
                (password_hash, normalized),
            )
            if cursor.rowcount == 0:
                raise AccountError(f"no account {normalized}")

    def delete_user(self, address: str) -> list[str]:
        """Delete an account; returns the aliases it was removed from."""
        normalized = self._local_address(address)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM accounts WHERE address = ?", (normalized,))
            if cursor.rowcount == 0:
                raise AccountError(f"no account {normalized}")
            sources = [
                row[0]
                for row in conn.execute(
                    "SELECT source FROM aliases WHERE target = ? ORDER BY source", (normalized,)
                )
            ]
            conn.execute("DELETE FROM aliases WHERE target = ?", (normalized,))
        return sources

    def list_users(self) -> list[str]:
        rows = self._conn().execute("SELECT address FROM accounts ORDER BY address")
        return [row[0] for row in rows]

    def exists(self, address: str) -> bool:
        try:
            normalized = normalize_address(address)
        except AddressError:
            return False
        row = self._conn().execute("SELECT 1 FROM accounts WHERE address = ?", (normalized,))
        return row.fetchone() is not None

    def verify_password(self, address: str, password: str) -> bool:
        """Check a password. Slow on purpose (argon2): call it off the event loop."""
        try:
            normalized = normalize_address(address)
        except AddressError:
            normalized = ""
        row = (
            self._conn()
            .execute("SELECT password_hash FROM accounts WHERE address = ?", (normalized,))
            .fetchone()
        )
        if row is None:
            # Same work for unknown users, so timing does not reveal who exists.
            with suppress(argon2.exceptions.VerificationError):
                self.hasher.verify(self._dummy_hash, password)
            return False
        stored: str = row[0]
        try:
            self.hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        if self.hasher.check_needs_rehash(stored):
            new_hash = self.hasher.hash(password)
            with self._write() as conn:
                conn.execute(
                    "UPDATE accounts SET password_hash = ? WHERE address = ? AND password_hash = ?",
                    (new_hash, normalized, stored),
                )
        return True

    # -- aliases ---------------------------------------------------------------

    def add_alias(self, source: str, targets: list[str]) -> None:
        if not targets:
            raise AccountError("an alias needs at least one target")
        normalized_source = self._alias_source(source)
        normalized_targets: list[str] = []
        for target in targets:
            try:
                normalized = normalize_address(target)
            except AddressError as exc:
                raise AccountError(f"target {target!r}: {exc}") from None
            if split_address(normalized)[1] not in self.domains:
                raise AccountError(
                    f"target {normalized} is not local: forwarding to remote addresses "
                    "needs the outbound queue, which this version does not have yet"
                )
            if normalized == normalized_source:
                raise AccountError(f"alias {normalized_source} cannot point to itself")
            if normalized not in normalized_targets:
                normalized_targets.append(normalized)
        with self._write() as conn:
            if conn.execute(
                "SELECT 1 FROM aliases WHERE source = ?", (normalized_source,)
            ).fetchone():
                raise AccountError(f"alias {normalized_source} exists; delete it first")
            if conn.execute(
                "SELECT 1 FROM accounts WHERE address = ?", (normalized_source,)
            ).fetchone():
                raise AccountError(f"{normalized_source} is an account, not an alias")
            for position, target in enumerate(normalized_targets):
                known = conn.execute(
                    "SELECT 1 FROM accounts WHERE address = ?"
                    " UNION SELECT 1 FROM aliases WHERE source = ?",
                    (target, target),
                ).fetchone()
                if not known:
                    raise AccountError(f"target {target} is neither an account nor an alias")
                conn.execute(
                    "INSERT INTO aliases (source, target, position) VALUES (?, ?, ?)",
                    (normalized_source, target, position),
                )

    def delete_alias(self, source: str) -> None:
        normalized = self._alias_source(source)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM aliases WHERE source = ?", (normalized,))
            if cursor.rowcount == 0:
                raise AccountError(f"no alias {normalized}")

    def list_aliases(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for source, target in self._conn().execute(
            "SELECT source, target FROM aliases ORDER BY source, position"
        ):
            result.setdefault(source, []).append(target)
        return result

    # -- delivery ----------------------------------------------------------------

    def resolve(self, address: str) -> list[str] | None:
        """The local accounts mail to ``address`` goes to; None if nobody.

        Order: the account itself; an alias (recursively); ``user+tag`` as
        ``user``; the domain's catch-all alias ``@domain``.
        """
        try:
            normalized = normalize_address(address)
        except AddressError:
            return None
        local, domain = split_address(normalized)
        if domain not in self.domains:
            return None
        conn = self._conn()
        found = self._expand(conn, normalized)
        if found is None and self.separator and self.separator in local.strip('"'):
            base = local.split(self.separator, 1)[0]
            if base and not base.startswith('"'):
                found = self._expand(conn, f"{base}@{domain}")
        if found is None:
            found = self._expand(conn, f"@{domain}")
        return found or None

    def _expand(self, conn: sqlite3.Connection, name: str) -> list[str] | None:
        """Accounts behind a name (account or alias), or None if the name is unknown."""
        if conn.execute("SELECT 1 FROM accounts WHERE address = ?", (name,)).fetchone():
            return [name]
        result: list[str] = []
        seen = {name}
        known = False

        def walk(source: str, depth: int) -> None:
            nonlocal known
            if depth > MAX_ALIAS_DEPTH:
                return
            for (target,) in conn.execute(
                "SELECT target FROM aliases WHERE source = ? ORDER BY position", (source,)
            ).fetchall():
                known = True
                if target in seen:
                    continue  # a cycle, or a target reached twice
                seen.add(target)
                if conn.execute("SELECT 1 FROM accounts WHERE address = ?", (target,)).fetchone():
                    result.append(target)
                else:
                    walk(target, depth + 1)

        walk(name, 0)
        return result if known else None
