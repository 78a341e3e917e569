"""Accounts and aliases in SQLite (``data_dir/accounts.db``), argon2id hashes.

Every write is one ``BEGIN IMMEDIATE`` transaction, so a command that fails
half-way leaves nothing behind. Reads that take several queries (``resolve``)
run in one read transaction, so they see one snapshot.

Threads: an ``Accounts`` may be shared between threads. Each thread gets its
own SQLite connection (``threading.local``), opened on first use; SQLite's
locking (WAL, busy_timeout) serialises writers across threads and across
processes (the CLI and the server may use the file at once). ``close()``
closes every thread's connection, so call it only once no other thread is
using the object.

Passwords never appear in exception messages or logs. Hashing is argon2id
(``argon2.PasswordHasher``, RFC 9106 defaults unless a hasher is passed);
hashes made with other parameters are replaced at the next good login.

New passwords follow the policy of ``estafeta.auth.passwords`` (at least 12
characters, not guessable, not built from the address) unless the
``Accounts`` is made with ``password_policy=False``.

Second factors. An account may have a TOTP secret (RFC 6238, see
``estafeta.auth.totp``) and up to MAX_APP_PASSWORDS app passwords, each
limited to some of the protocols (imap, pop3, smtp, sieve: ManageSieve) and
optionally expiring. ``authenticate`` is what the IMAP, POP3, SMTP and
ManageSieve sessions call: mail clients cannot ask for a one-time code, so
once an account has TOTP its own password no longer opens any of them and
only its app passwords do. Without TOTP the
account password and the app passwords both work. The TOTP code itself is
checked where a person is present (``estafeta app-password create``).

App passwords are made here (``secrets``, 80 bits) and stored as argon2id
hashes, with a 16-bit tag (the start of their SHA-256) so that a login
verifies about one hash, not one per app password; the ~64 bits the tag does
not reveal are still behind argon2id. TOTP secrets must be readable to check
a code, so they are stored as they are: the file is its owner's only (0600).

Successful logins may be remembered for a few minutes by a
``estafeta.auth.logincache.LoginCache`` (the server passes one; other users
of ``Accounts`` do not): a repeat login with the same secret then costs one
SQLite read instead of argon2, and any change to the credential (password,
TOTP, app password, the account itself) is seen at that read, whichever
process made it.

Schema (``PRAGMA user_version``): 1 = accounts and aliases; 2 = adds
``accounts.quota`` (bytes, 0 = the global ``[limits] quota``); 3 = adds the
tables ``totp`` and ``app_passwords``; 4 = adds ``logins`` (the login
history) and ``retention`` (an account's own retention per mailbox), see
``estafeta.auth.logins``; 5 = adds SCRAM-SHA-256 keys (tables ``scram``,
``scram_secret``, columns ``scram_keys``), see ``estafeta.auth.scramkeys``;
6 = adds ``urlauth_keys`` (URLAUTH mailbox access keys, rfc4467), see
``estafeta.auth.urlauthkeys``; 7 = adds ``metadata`` (IMAP METADATA
entries, rfc5464), see ``estafeta.auth.metadata``; 8 = adds
``shared_addresses`` (the delivery addresses of shared mailboxes), see
``estafeta.auth.sharedaddresses``.

Accounts, alias sources and shared-mailbox addresses are one name space:
each write that adds one checks, in its transaction, that the address is
none of the others.

SCRAM (rfc5802, rfc7677). Setting a password (``add_user``,
``set_password``, ``app_password_create``) stores its SCRAM salt, iteration
count, StoredKey and ServerKey next to its argon2id hash (PBKDF2 runs
outside the transaction, like argon2: call these off the event loop). A
credential made before schema 5 gets keys at its next successful plaintext
login (``authenticate``). ``scram_salt`` and ``scram_authenticate`` are
what a SCRAM login asks (estafeta.auth.guard.Authenticator.scram_login).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import argon2

from estafeta.address import AddressError, normalize_address, normalize_domain, split_address
from estafeta.auth import logins, metadata, scram, scramkeys, sharedaddresses, urlauthkeys
from estafeta.auth.logincache import APP_PASSWORD, PASSWORD, LoginCache
from estafeta.auth.logins import LoginRecord

MAX_ALIAS_DEPTH = 10  # aliases expanded along one path, the first included
BUSY_TIMEOUT_MS = 30_000
# Remembered recipient lookups (resolve, quota) per thread; see Accounts._lookup.
LOOKUP_CACHE = 4096
# Seconds a remembered lookup is trusted without asking SQLite whether
# another process changed the database (this process's writes count at once).
LOOKUP_CHECK = 0.05

T = TypeVar("T")

PROTOCOLS = ("imap", "pop3", "smtp", "sieve")  # what authenticate() and app passwords know
MAX_APP_PASSWORDS = 20  # per account
MAX_APP_PASSWORD_NAME = 64  # characters
MAX_EXPIRES_DAYS = 36_500
# App passwords: 4 groups of 4 characters from 32 (no 0, o, 1, l), 80 bits.
APP_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105 (not a password)
APP_PASSWORD_GROUPS = 4
APP_PASSWORD_GROUP_LENGTH = 4
LAST_USED_RESOLUTION = 60  # seconds: a login within this of the last one writes nothing

_QUOTED_PAIR = re.compile(r"\\(.)")

Migration = Callable[[sqlite3.Connection], None]


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE accounts (
            address TEXT PRIMARY KEY,       -- normalised (estafeta.address)
            password_hash TEXT NOT NULL,    -- argon2id, PHC string
            created INTEGER NOT NULL        -- Unix time
        )"""
    )
    conn.execute(
        """CREATE TABLE aliases (
            source TEXT NOT NULL,           -- normalised address, or '@domain' (catch-all)
            target TEXT NOT NULL,           -- an account or another alias
            position INTEGER NOT NULL,      -- order of the targets as given
            PRIMARY KEY (source, target)
        )"""
    )
    conn.execute("CREATE INDEX aliases_by_target ON aliases (target)")


def _add_quota_v2(conn: sqlite3.Connection) -> None:
    # Existing accounts get 0: they keep following the global [limits] quota.
    conn.execute("ALTER TABLE accounts ADD COLUMN quota INTEGER NOT NULL DEFAULT 0")


def _add_second_factors_v3(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE totp (
            address TEXT PRIMARY KEY,       -- an account
            secret TEXT NOT NULL,           -- base32; not hashed: needed to check codes
            last_step INTEGER NOT NULL,     -- last accepted time step (no replay); -1 = none
            created INTEGER NOT NULL        -- Unix time
        )"""
    )
    conn.execute(
        """CREATE TABLE app_passwords (
            address TEXT NOT NULL,          -- an account
            name TEXT NOT NULL,             -- unique per account, chosen by the admin
            password_hash TEXT NOT NULL,    -- argon2id of the password without '-'
            tag TEXT NOT NULL,              -- 4 hex digits of its SHA-256: which hash to try
            protocols TEXT NOT NULL,        -- comma-separated, in PROTOCOLS order
            created INTEGER NOT NULL,       -- Unix time
            expires INTEGER,                -- Unix time; NULL = never
            last_used INTEGER,              -- Unix time; NULL = never
            PRIMARY KEY (address, name)
        )"""
    )


# The migration hook: _MIGRATIONS[n] takes the schema from version n to n + 1
# (PRAGMA user_version). Append, never edit: databases in the field are at
# every version. Each runs inside the transaction that bumps user_version.
_MIGRATIONS: list[Migration] = [
    _create_v1,
    _add_quota_v2,
    _add_second_factors_v3,
    logins.create_v4,  # login history, per-account retention
    scramkeys.create_v5,  # SCRAM-SHA-256 keys
    urlauthkeys.create_v6,  # URLAUTH mailbox access keys
    metadata.create_v7,  # IMAP METADATA entries
    sharedaddresses.create_v8,  # delivery addresses of shared mailboxes
]


def schema_version() -> int:
    """The schema version this code writes."""
    return len(_MIGRATIONS)


class AccountError(Exception):
    """An account operation that cannot be done; the message says why."""


def new_app_password() -> str:
    """A random app password: ``abcd-efgh-jkmn-pqrs`` (80 bits from ``secrets``)."""
    groups = (
        "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(APP_PASSWORD_GROUP_LENGTH))
        for _ in range(APP_PASSWORD_GROUPS)
    )
    return "-".join(groups)


def _app_password_key(secret: str) -> str | None:
    """What is hashed for an app password: lowercase, without '-' and spaces.

    None if ``secret`` cannot be an app password (wrong length or characters),
    so an ordinary password costs no app-password verification at all.
    """
    key = "".join(secret.replace("-", " ").split()).lower()
    length = APP_PASSWORD_GROUPS * APP_PASSWORD_GROUP_LENGTH
    if len(key) != length or not all(c in APP_PASSWORD_ALPHABET for c in key):
        return None
    return key


def looks_like_app_password(secret: str) -> bool:
    """Could ``secret`` be an app password (length and alphabet)? Cheap: no hash."""
    return _app_password_key(secret) is not None


def _shown_app_password(key: str) -> str:
    """An app password as it was shown (``abcd-efgh-jkmn-pqrs``): what SCRAM
    clients are given, so what its SCRAM keys are derived from."""
    size = APP_PASSWORD_GROUP_LENGTH
    return "-".join(key[i : i + size] for i in range(0, len(key), size))


def _app_password_tag(key: str) -> str:
    """16 bits of SHA-256: picks the hash to verify, reveals little of 80 bits."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:4]


def _protocol_list(protocols: Iterable[str] | str) -> list[str]:
    """Protocols as a list in PROTOCOLS order; a string may list them with commas."""
    if isinstance(protocols, str):
        protocols = protocols.split(",")
    wanted: set[str] = set()
    for protocol in protocols:
        name = protocol.strip().lower()
        if name not in PROTOCOLS:
            raise AccountError(f"protocol {protocol!r}: use {', '.join(PROTOCOLS)}")
        wanted.add(name)
    if not wanted:
        raise AccountError(f"no protocol given: use one or more of {', '.join(PROTOCOLS)}")
    return [p for p in PROTOCOLS if p in wanted]


def _app_password_name(name: str) -> str:
    stripped = name.strip()
    if not stripped:
        raise AccountError("an app password needs a name (e.g. the device it is for)")
    if len(stripped) > MAX_APP_PASSWORD_NAME or not stripped.isprintable():
        raise AccountError(
            f"app password name {name!r}: use at most {MAX_APP_PASSWORD_NAME} printable characters"
        )
    return stripped


# A cached login is used only while what it depends on reads the same as when
# it was verified; the login cache keeps a keyed hash of these, never them.


def _password_state(password_hash: str, totp_secret: str | None) -> tuple[str, ...]:
    """What a cached password login depends on: the hash, and TOTP enrolment."""
    return (PASSWORD, password_hash, "" if totp_secret is None else "totp:" + totp_secret)


def _app_password_state(
    name: str, password_hash: str, protocols: str, expires: int | None, totp_secret: str | None
) -> tuple[str, ...]:
    """What a cached app-password login depends on: its row, and TOTP enrolment."""
    return (
        APP_PASSWORD,
        name,
        password_hash,
        protocols,
        "" if expires is None else str(expires),
        "" if totp_secret is None else "totp:" + totp_secret,
    )


class Accounts:
    def __init__(
        self,
        path: Path,
        domains: Iterable[str],
        *,
        hasher: argon2.PasswordHasher | None = None,
        subaddress_separator: str | None = "+",
        password_policy: bool = True,
        clock: Callable[[], float] = time.time,
        login_cache: LoginCache | None = None,
        scram_iterations: int = scram.DEFAULT_ITERATIONS,
    ) -> None:
        """``password_policy=False`` accepts any non-empty new password (for
        tests and tools that must); ``clock`` gives Unix time (tests move it);
        ``login_cache`` remembers successful logins of ``authenticate``;
        ``scram_iterations``: PBKDF2 iterations of new SCRAM keys."""
        if scram_iterations < scram.MIN_ITERATIONS:
            raise AccountError(f"scram_iterations must be at least {scram.MIN_ITERATIONS}")
        self.scram_iterations = scram_iterations
        self.path = Path(path)
        self.password_policy = password_policy
        self.clock = clock
        self.login_cache = login_cache if login_cache is not None and login_cache.enabled else None
        try:
            normalized = [normalize_domain(d) for d in domains]
        except AddressError as exc:
            raise AccountError(f"configured domain: {exc}") from None
        self.domains: tuple[str, ...] = tuple(dict.fromkeys(normalized))
        if subaddress_separator is not None and (
            not subaddress_separator or "@" in subaddress_separator
        ):
            raise AccountError("the subaddress separator must be non-empty and not contain '@'")
        self.separator = subaddress_separator
        self.hasher = hasher or argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory profile
        # Unknown users are checked against this, so they cost the same time.
        self._dummy_hash = self.hasher.hash(secrets.token_bytes(16))
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards _connections only
        # Bumped by every write through this object: its own commits do not
        # change its connections' data_version (see _lookup).
        self._generation = 0
        self._conn()  # open and migrate now, so a bad path shows at start

    # -- connections -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        self._create_file()
        try:
            # check_same_thread=False only so close() may close connections
            # opened by other threads; each is otherwise used by its own thread.
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise AccountError(f"cannot open {self.path}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise AccountError(f"cannot use {self.path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _create_file(self) -> None:
        """Create the database file readable by its owner only (it holds hashes)."""
        if self.path.exists():
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another thread or process was first
        except OSError as exc:
            raise AccountError(f"cannot create {self.path}: {exc.strerror}") from None
        os.close(fd)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        target = schema_version()
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == target:
            return
        if version > target:
            raise AccountError(
                f"{self.path}: schema version {version} is newer than this estafeta "
                f"understands ({target}); upgrade estafeta"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another connection may have migrated.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version < target:
                _MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self, *, lookups: bool = True, shared: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block ends normally, else
        rolled back. ``lookups=False``: it changes nothing ``_lookup``
        remembers (the login history), so this object's lookups stay.
        ``shared=False``: it writes only this node's own tables (the login
        history), which the cluster backend does not replicate."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already
                conn.execute("ROLLBACK")
            raise
        finally:
            if lookups:
                self._generation += 1
        conn.execute("COMMIT")

    def _lookup(self, key: tuple[str, str], compute: Callable[[], T]) -> T:
        """``compute()``, remembered until the database changes: every RCPT
        and every delivery asks where an address leads and what its quota
        is, which is three to five queries each time. A commit by this
        object bumps ``_generation``: seen at once. A commit by another
        connection (``estafeta user`` in another process) changes this
        thread's ``PRAGMA data_version``
        (https://sqlite.org/pragma.html#pragma_data_version), which is
        looked at once per LOOKUP_CHECK seconds: every SQLite call lets the
        event loop's thread lose the GIL to the store's threads, which is
        what a lookup is meant to save. Per thread, at most LOOKUP_CACHE
        entries."""
        local = self._local
        cache: dict[tuple[str, str], Any] | None = getattr(local, "lookups", None)
        now = time.monotonic()
        generation = self._generation
        if (
            cache is None
            or local.generation != generation
            or now - local.checked >= LOOKUP_CHECK
            or len(cache) >= LOOKUP_CACHE
        ):
            version = self._conn().execute("PRAGMA data_version").fetchone()[0]
            if cache is None or local.stamp != (version, generation) or len(cache) >= LOOKUP_CACHE:
                cache = local.lookups = {}
                local.stamp = (version, generation)
            local.generation = generation
            local.checked = now
        try:
            return cast(T, cache[key])
        except KeyError:
            pass
        value = compute()
        # Kept only if nothing was committed meanwhile (by this object: the
        # other connections' commits show in the next stamp anyway).
        if self._generation == generation:
            cache[key] = value
        return value

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the queries in the block see one snapshot."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; a later call opens new ones."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for conn in connections:
            conn.close()

    def __enter__(self) -> Accounts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------

    def is_local_domain(self, domain: str) -> bool:
        try:
            return normalize_domain(domain) in self.domains
        except AddressError:
            return False

    def _not_local(self, domain: str) -> AccountError:
        configured = ", ".join(self.domains) or "none configured"
        return AccountError(f"domain {domain} is not one of the configured domains ({configured})")

    def _local_address(self, address: str, what: str = "address") -> str:
        try:
            normalized = normalize_address(address)
        except AddressError as exc:
            raise AccountError(f"{what} {address!r}: {exc}") from None
        domain = split_address(normalized)[1]
        if domain not in self.domains:
            raise self._not_local(domain)
        return normalized

    def _alias_source(self, source: str) -> str:
        """A normalised alias source: a local address, or ``@domain`` for a catch-all."""
        if source.startswith("@"):
            try:
                domain = normalize_domain(source[1:])
            except AddressError as exc:
                raise AccountError(f"catch-all {source!r}: {exc}") from None
            if domain not in self.domains:
                raise self._not_local(domain)
            return f"@{domain}"
        return self._local_address(source, "alias")

    def _password_bytes(self, password: str, address: str) -> bytes:
        """Check a new password for ``address`` (normalised); the message never contains it."""
        if not password:
            raise AccountError("empty password")
        try:
            secret = password.encode("utf-8")
        except UnicodeEncodeError:
            raise AccountError("password is not valid Unicode text") from None
        if self.password_policy:
            # Imported here: passwords imports AccountError from this module.
            from estafeta.auth.passwords import check_password

            local, domain = split_address(address)
            check_password(password, user_inputs=(local.strip('"'), domain, address))
        return secret

    @staticmethod
    def _is_account(conn: sqlite3.Connection, address: str) -> bool:
        row = conn.execute("SELECT 1 FROM accounts WHERE address = ?", (address,)).fetchone()
        return row is not None

    @staticmethod
    def _is_alias(conn: sqlite3.Connection, source: str) -> bool:
        row = conn.execute("SELECT 1 FROM aliases WHERE source = ? LIMIT 1", (source,)).fetchone()
        return row is not None

    @staticmethod
    def _shared_clash(conn: sqlite3.Connection, address: str) -> AccountError | None:
        """The error for making ``address`` an account or an alias while it
        is a shared mailbox's delivery address; None if it is not one."""
        mailbox = sharedaddresses.mailbox_of(conn, address)
        if mailbox is None:
            return None
        return AccountError(
            f"{address} is the delivery address of the shared mailbox Shared/{mailbox}; "
            f"take it away first (estafeta shared set {mailbox} --remove-address {address})"
        )

    # -- accounts ------------------------------------------------------------

    def add_user(self, address: str, password: str) -> str:
        """Create an account; returns its normalised address."""
        normalized = self._local_address(address)
        secret = self._password_bytes(password, normalized)
        password_hash = self.hasher.hash(secret)  # slow: outside the transaction
        salt, iterations = self._scram_params(normalized, renew=True)
        keys = scram.derive_keys(password, salt, iterations)  # slow too
        with self._write() as conn:
            if self._is_account(conn, normalized):
                raise AccountError(f"account {normalized} already exists")
            if self._is_alias(conn, normalized):
                raise AccountError(
                    f"{normalized} is an alias; delete the alias first to make it an account"
                )
            if clash := self._shared_clash(conn, normalized):
                raise clash
            conn.execute(
                "INSERT INTO accounts (address, password_hash, created, scram_keys) "
                "VALUES (?, ?, ?, ?)",
                (normalized, password_hash, int(self.clock()), keys),
            )
            scramkeys.set_salt(conn, normalized, salt, iterations)
        return normalized

    def set_password(self, address: str, password: str) -> None:
        """Change the account's password (its TOTP and app passwords stay as they are)."""
        normalized = self._local_address(address)
        secret = self._password_bytes(password, normalized)
        password_hash = self.hasher.hash(secret)
        salt, iterations = self._scram_params(normalized, renew=True)
        keys = scram.derive_keys(password, salt, iterations)
        with self._write() as conn:
            self._account_or_error(conn, normalized)
            # A new salt (the iteration count changed) drops the app
            # passwords' keys: they come back at their next plaintext login.
            scramkeys.set_salt(conn, normalized, salt, iterations)
            conn.execute(
                "UPDATE accounts SET password_hash = ?, scram_keys = ? WHERE address = ?",
                (password_hash, keys, normalized),
            )

    def delete_user(self, address: str) -> list[str]:
        """Delete an account, its TOTP secret, app passwords, login history and
        retention settings, and take it out of every alias.

        Returns the sources of the aliases that pointed to it, sorted. An
        alias left with no target at all disappears (an alias needs one).
        """
        normalized = self._local_address(address)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM accounts WHERE address = ?", (normalized,))
            if cursor.rowcount == 0:
                raise AccountError(f"no account {normalized}")
            conn.execute("DELETE FROM totp WHERE address = ?", (normalized,))
            conn.execute("DELETE FROM app_passwords WHERE address = ?", (normalized,))
            scramkeys.forget(conn, normalized)
            urlauthkeys.forget(conn, normalized)
            metadata.forget(conn, normalized)
            logins.forget_account(conn, normalized)
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

    def list_quotas(self) -> dict[str, int]:
        """Every account and its own quota in bytes (0: the global quota); addresses sorted."""
        rows = self._conn().execute("SELECT address, quota FROM accounts ORDER BY address")
        return {address: int(quota) for address, quota in rows}

    def created(self, address: str) -> int | None:
        """When the account was made (Unix time); None if there is no such account."""
        row = (
            self._conn()
            .execute(
                "SELECT created FROM accounts WHERE address = ?", (self._local_address(address),)
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    # -- URLAUTH mailbox access keys (rfc4467:2.4, estafeta.auth.urlauthkeys) --

    def urlauth_key(
        self, address: str, mailbox_id: int, uidvalidity: int, *, create: bool = False
    ) -> bytes | None:
        """The mailbox's access key; ``create``: made when it has none
        (rfc4467 GENURLAUTH: "one is automatically generated")."""
        normalized = self._local_address(address)
        if not create:
            with self._read() as conn:
                return urlauthkeys.key_of(conn, normalized, mailbox_id, uidvalidity)
        with self._write(lookups=False) as conn:
            key = urlauthkeys.key_of(conn, normalized, mailbox_id, uidvalidity)
            return (
                key
                if key is not None
                else urlauthkeys.new_key(conn, normalized, mailbox_id, uidvalidity)
            )

    def urlauth_reset(self, address: str, mailbox: tuple[int, int] | None = None) -> None:
        """rfc4467 RESETKEY: a new key for ``mailbox`` ((id, UIDVALIDITY)),
        revoking the URLs made with the old one; None: drop every key of the
        account (every URL it authorized)."""
        normalized = self._local_address(address)
        with self._write(lookups=False) as conn:
            if mailbox is None:
                urlauthkeys.forget(conn, normalized)
            else:
                urlauthkeys.new_key(conn, normalized, *mailbox)

    # -- IMAP METADATA entries (rfc5464, estafeta.auth.metadata) --------------

    def metadata(self, address: str, mailbox: tuple[int, int]) -> dict[str, bytes]:
        """Every entry of a mailbox ((id, UIDVALIDITY); (0, 0): the account's
        server entries), by lower-case name."""
        normalized = self._local_address(address)
        with self._read() as conn:
            return metadata.entries(conn, normalized, *mailbox)

    def set_metadata(
        self,
        address: str,
        mailbox: tuple[int, int],
        changes: Sequence[tuple[str, bytes | None]],
        *,
        max_entries: int,
    ) -> bool:
        """Set (None: remove) entries in one transaction; False, and nothing
        changed, when the mailbox would hold more than ``max_entries``
        (rfc5464:4.3 METADATA TOOMANY)."""
        normalized = self._local_address(address)
        with self._write(lookups=False) as conn:
            current = metadata.entries(conn, normalized, *mailbox)
            after = set(current)
            for entry, value in changes:
                if value is None:
                    after.discard(entry)
                else:
                    after.add(entry)
            if len(after) > max_entries and len(after) > len(current):
                return False
            metadata.write(conn, normalized, *mailbox, changes)
        return True

    def forget_metadata(self, address: str, mailbox_id: int) -> None:
        """rfc5464:4.1 a deleted mailbox's entries go with it."""
        normalized = self._local_address(address)
        with self._write(lookups=False) as conn:
            metadata.forget(conn, normalized, mailbox_id)

    def get_quota(self, address: str) -> int:
        """The account's own storage quota in bytes; 0 means the global ``[limits] quota``."""
        normalized = self._local_address(address)

        def read() -> int | None:
            row = (
                self._conn()
                .execute("SELECT quota FROM accounts WHERE address = ?", (normalized,))
                .fetchone()
            )
            return None if row is None else int(row[0])

        quota = self._lookup(("quota", normalized), read)
        if quota is None:
            raise AccountError(f"no account {normalized}")
        return quota

    def set_quota(self, address: str, quota: int) -> None:
        """Set the account's storage quota in bytes; 0 goes back to the global quota."""
        normalized = self._local_address(address)
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
            raise AccountError(f"quota {quota!r}: use a number of bytes, or 0 for the global quota")
        if quota >= 2**63:
            raise AccountError(f"quota {quota}: too large (at most {2**63 - 1} bytes)")
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE accounts SET quota = ? WHERE address = ?", (quota, normalized)
            )
            if cursor.rowcount == 0:
                raise AccountError(f"no account {normalized}")

    def exists(self, address: str) -> bool:
        """Whether ``address`` is an account (aliases are not accounts)."""
        try:
            normalized = normalize_address(address)
        except AddressError:
            return False
        return self._is_account(self._conn(), normalized)

    def _matches(self, stored: str, secret: bytes) -> bool:
        """One argon2 verification; False for a wrong secret or an unreadable hash."""
        try:
            return self.hasher.verify(stored, secret)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    def _dummy_verification(self, secret: bytes) -> None:
        """Spend the time of one verification, to look like a real one."""
        self._matches(self._dummy_hash, secret)

    def verify_password(self, address: str, password: str, *, rehash: bool = True) -> bool:
        """Check the account's own password. Slow on purpose (argon2): call it off the event loop.

        Unknown or malformed addresses cost one argon2 verification too, so
        the time taken does not tell whether an account exists. A good
        password stored with old hash parameters is re-hashed unless
        ``rehash`` is false (``estafeta user verify`` only looks). TOTP and
        app passwords play no part here: logins go through ``authenticate``.
        """
        # surrogatepass: any str encodes; one that is not valid text simply
        # does not match (add_user and set_password refuse such passwords).
        secret = password.encode("utf-8", "surrogatepass")
        stored: str | None = None
        normalized: str | None
        try:
            normalized = normalize_address(address)
        except AddressError:
            normalized = None
        if normalized is not None:
            row = (
                self._conn()
                .execute("SELECT password_hash FROM accounts WHERE address = ?", (normalized,))
                .fetchone()
            )
            stored = row[0] if row is not None else None
        if normalized is None or stored is None:
            self._dummy_verification(secret)
            return False
        if not self._matches(stored, secret):
            return False
        if rehash and self.hasher.check_needs_rehash(stored):
            self._rehash(normalized, stored, secret)
        return True

    def authenticate(
        self, address: str, secret: str, protocol: str, *, allow_password: bool = True
    ) -> str | None:
        """Check a login for PROTOCOL (one of PROTOCOLS); the normalised address or None.

        The one entry point the IMAP, POP3, SMTP and ManageSieve sessions use. Slow on
        purpose (argon2): call it off the event loop.

        Accepted: an app password of the account that allows PROTOCOL and
        has not expired; or, only if the account has no TOTP and
        ``allow_password`` is true, the account's own password (the login
        guard passes False while the account is locked for this client:
        estafeta.auth.guard). A login costs one argon2 verification whatever
        the outcome and whether or not the account exists (rarely two: a
        password shaped like an app password whose tag matches one), unless
        the login cache vouches for this very secret: see ``_cached_login``.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        secret_bytes = secret.encode("utf-8", "surrogatepass")
        try:
            normalized: str | None = normalize_address(address)
        except AddressError:
            normalized = None
        # The password hash and the TOTP secret (None: no TOTP).
        account: tuple[str, str | None] | None = None
        apps: list[tuple[str, str, str, str, int | None, int | None]] = []
        if normalized is not None:
            with self._read() as conn:
                row = conn.execute(
                    "SELECT password_hash, (SELECT secret FROM totp WHERE address = ?) "
                    "FROM accounts WHERE address = ?",
                    (normalized, normalized),
                ).fetchone()
                if row is not None:
                    account = (row[0], row[1])
                    apps = conn.execute(
                        "SELECT name, password_hash, tag, protocols, expires, last_used "
                        "FROM app_passwords WHERE address = ? ORDER BY created, name",
                        (normalized,),
                    ).fetchall()
        verifications = 0
        if normalized is not None and account is not None:
            stored, totp_secret = account
            has_totp = totp_secret is not None
            cache = self.login_cache
            cache_key = None
            if cache is not None:
                cache_key = cache.key(normalized, protocol, secret_bytes)
                if self._cached_login(
                    cache, cache_key, normalized, protocol, secret, account, apps, allow_password
                ):
                    return normalized
            key = _app_password_key(secret)
            if key is not None:
                now = self.clock()
                tag = _app_password_tag(key)
                for name, app_hash, app_tag, protocols, expires, last_used in apps:
                    if app_tag != tag or protocol not in protocols.split(","):
                        continue
                    if expires is not None and now >= expires:
                        continue
                    verifications += 1
                    if self._matches(app_hash, key.encode("ascii")):
                        current = self._app_password_used(
                            normalized, name, app_hash, key, last_used, now
                        )
                        if cache is not None and cache_key is not None and current is not None:
                            state = _app_password_state(
                                name, current, protocols, expires, totp_secret
                            )
                            cache.put(
                                cache_key, normalized, APP_PASSWORD, name, cache.fingerprint(*state)
                            )
                        if current is not None:
                            self._scram_upgrade(normalized, name, current, _shown_app_password(key))
                        return normalized
            if allow_password and not has_totp:
                verifications += 1
                if self._matches(stored, secret_bytes):
                    current_hash: str | None = stored
                    if self.hasher.check_needs_rehash(stored):
                        current_hash = self._rehash(normalized, stored, secret_bytes)
                    # A failed re-hash is not cached: the next login tries again.
                    if cache is not None and cache_key is not None and current_hash is not None:
                        state = _password_state(current_hash, totp_secret)
                        cache.put(cache_key, normalized, PASSWORD, "", cache.fingerprint(*state))
                    if current_hash is not None:
                        self._scram_upgrade(normalized, None, current_hash, secret)
                    return normalized
        if verifications == 0:
            self._dummy_verification(secret_bytes)
        return None

    def _cached_login(
        self,
        cache: LoginCache,
        cache_key: bytes,
        address: str,
        protocol: str,
        secret: str,
        account: tuple[str, str | None],
        apps: list[tuple[str, str, str, str, int | None, int | None]],
        allow_password: bool,
    ) -> bool:
        """A login the cache vouches for: verified earlier with this very
        secret, and the credential unchanged in the database since (as read
        by ``authenticate`` just now). An entry that no longer holds is dropped.

        Never a login the slow path would refuse: the account password only
        without TOTP and when ``allow_password``; an app password only for
        the protocols it allows and until it expires. (Logins never consume
        a TOTP code: mail clients cannot ask for one.)
        """
        entry = cache.get(cache_key)
        if entry is None:
            return False
        stored, totp_secret = account
        if entry.address == address and entry.kind == PASSWORD:
            if not allow_password:
                # The guard locks this account's password for this client:
                # the slow path refuses it without a check. The entry stays
                # good for clients the lockout does not concern.
                return False
            if totp_secret is None and cache.matches(
                entry, cache.fingerprint(*_password_state(stored, totp_secret))
            ):
                return True
        elif entry.address == address and entry.kind == APP_PASSWORD:
            now = self.clock()
            for name, app_hash, _tag, protocols, expires, last_used in apps:
                if name != entry.app_name:
                    continue
                state = _app_password_state(name, app_hash, protocols, expires, totp_secret)
                key = _app_password_key(secret)
                if (
                    key is not None
                    and protocol in protocols.split(",")
                    and (expires is None or now < expires)
                    and cache.matches(entry, cache.fingerprint(*state))
                ):
                    current = self._app_password_used(address, name, app_hash, key, last_used, now)
                    if current != app_hash:
                        cache.discard(cache_key)  # re-hashed or changed meanwhile
                    return True
                break
        cache.discard(cache_key)
        return False

    def _rehash(self, address: str, stored: str, secret: bytes) -> str | None:
        """Store a hash with the current parameters, unless the password changed
        meanwhile; the new hash, or None if it was not stored."""
        new_hash = self.hasher.hash(secret)
        # A failure here (database busy or read-only) must not fail the
        # login: the old hash still works and the next login tries again.
        with suppress(sqlite3.Error, AccountError), self._write() as conn:
            cursor = conn.execute(
                "UPDATE accounts SET password_hash = ? WHERE address = ? AND password_hash = ?",
                (new_hash, address, stored),
            )
            return new_hash if cursor.rowcount == 1 else None
        return None

    def _app_password_used(
        self,
        address: str,
        name: str,
        stored: str,
        key: str,
        last_used: int | None,
        now: float,
    ) -> str | None:
        """Record a login with an app password (and re-hash it if needed); best effort.

        The app password's hash as stored now (``stored``, or the new one),
        or None if the row changed meanwhile or a re-hash could not be stored.
        """
        rehash = self.hasher.check_needs_rehash(stored)
        if not rehash and last_used is not None and now - last_used < LAST_USED_RESOLUTION:
            return stored  # mail clients log in often: no write for each login
        new_hash = self.hasher.hash(key.encode("ascii")) if rehash else stored
        # Like _rehash: a busy or read-only database must not fail the login.
        with suppress(sqlite3.Error, AccountError), self._write() as conn:
            cursor = conn.execute(
                "UPDATE app_passwords SET last_used = ?, password_hash = ? "
                "WHERE address = ? AND name = ? AND password_hash = ?",
                (int(now), new_hash, address, name, stored),
            )
            return new_hash if cursor.rowcount == 1 else None
        return None if rehash else stored

    # -- SCRAM (SQL: estafeta.auth.scramkeys) -----------------------------------------

    def _scram_params(self, address: str, *, renew: bool) -> tuple[bytes, int]:
        """The salt and iteration count to derive a new key of ``address``
        with: the account's own; its fake salt if it has none yet (so its
        salt does not change when it gets keys); with ``renew`` (its password
        changes) a new random salt if its iteration count is not the
        configured one any more."""
        with self._read() as conn:
            current = scramkeys.salt_of(conn, address)
            secret = scramkeys.secret(conn)
        if current is None:
            return scram.fake_salt(secret, address), self.scram_iterations
        if renew and current[1] != self.scram_iterations:
            return secrets.token_bytes(scram.SALT_LENGTH), self.scram_iterations
        return current

    def _scram_upgrade(self, address: str, app_name: str | None, stored: str, secret: str) -> None:
        """Give a credential that has just been verified in plaintext its
        SCRAM keys, if it has none (made before schema 5); best effort, like
        a re-hash: a busy database leaves it for the next login."""
        with suppress(sqlite3.Error, AccountError):
            with self._read() as conn:
                if app_name is None:
                    row = scramkeys.password_keys(conn, address)
                else:
                    row = scramkeys.app_keys(conn, address, app_name)
            if row is None or row[1] is not None or row[0] != stored:
                return
            salt, iterations = self._scram_params(address, renew=False)
            keys = scram.derive_keys(secret, salt, iterations)  # PBKDF2: this thread
            with self._write() as conn:
                current = scramkeys.salt_of(conn, address)
                if current is None:
                    scramkeys.set_salt(conn, address, salt, iterations)
                elif current != (salt, iterations):
                    return  # changed meanwhile: the next login tries again
                if app_name is None:
                    scramkeys.store_password_keys(conn, address, stored, keys)
                else:
                    scramkeys.store_app_keys(conn, address, app_name, stored, keys)

    def scram_salt(self, user: str) -> tuple[bytes, int]:
        """The salt and iteration count of the server-first message for
        ``user``: the account's, or, for an address that has none or is no
        account, a fake salt (the same each time) and the configured count."""
        try:
            normalized = normalize_address(user)
        except AddressError:
            normalized = user.strip().lower()
        with self._read() as conn:
            current = scramkeys.salt_of(conn, normalized)
            secret = scramkeys.secret(conn)
        if current is not None:
            return current
        return scram.fake_salt(secret, normalized), self.scram_iterations

    def scram_authenticate(
        self, exchange: scram.ScramServer, protocol: str, *, allow_password: bool = True
    ) -> tuple[str, scram.Credential] | None:
        """Check a SCRAM proof (``exchange`` has had the client-final message)
        against the credentials of its user that may open PROTOCOL, by the
        rules of ``authenticate``: an app password allowing PROTOCOL and not
        expired; the account password only without TOTP and with
        ``allow_password``. The account and the credential that matched, or
        None. No PBKDF2 or argon2 here: a few HMACs and one SQLite read."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        try:
            normalized = normalize_address(exchange.user)
        except AddressError:
            exchange.verify([])
            return None
        with self._read() as conn:
            current = scramkeys.salt_of(conn, normalized)
            password_keys, has_totp, apps = scramkeys.credentials(conn, normalized)
        candidates: list[scram.Credential] = []
        if current == (exchange.salt, exchange.iterations):
            if password_keys is not None and allow_password and not has_totp:
                candidates.append(scram.Credential(*scram.split_keys(password_keys)))
            now = self.clock()
            for name, protocols, expires, keys in apps:
                if protocol in protocols.split(",") and (expires is None or now < expires):
                    candidates.append(scram.Credential(*scram.split_keys(keys), "app", name))
        index = exchange.verify(candidates)
        if index is None:
            return None
        credential = candidates[index]
        if credential.kind == "app":
            now = int(self.clock())
            with suppress(sqlite3.Error, AccountError), self._write() as conn:
                conn.execute(
                    "UPDATE app_passwords SET last_used = ? WHERE address = ? AND name = ? "
                    "AND (last_used IS NULL OR last_used <= ?)",
                    (now, normalized, credential.name, now - LAST_USED_RESOLUTION),
                )
        return normalized, credential

    # -- TOTP ------------------------------------------------------------------------

    def _account_or_error(self, conn: sqlite3.Connection, address: str) -> None:
        if not self._is_account(conn, address):
            raise AccountError(f"no account {address}")

    def totp_enroll(
        self, address: str, *, issuer: str | None = None, secret: str | None = None
    ) -> tuple[str, str]:
        """Give the account a new TOTP secret; returns it and its ``otpauth://`` URI.

        Active at once: from now on the account password no longer opens
        IMAP, POP3 or SMTP (create app passwords for the mail clients). The
        issuer shown by authenticator apps is the account's domain unless
        given. An account that has TOTP already is refused: disable it first.
        ``secret``: one the user has confirmed with a code already (the
        account page shows it first and enrols it only then).
        """
        from estafeta.auth import totp

        normalized = self._local_address(address)
        if secret is None:
            secret = totp.new_secret()
        elif len(secret) != totp.SECRET_LENGTH or not set(secret) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
        ):
            raise AccountError("a TOTP secret is 32 base32 characters")
        with self._write() as conn:
            self._account_or_error(conn, normalized)
            if conn.execute("SELECT 1 FROM totp WHERE address = ?", (normalized,)).fetchone():
                raise AccountError(
                    f"{normalized} has TOTP already; disable it first to enrol a new device"
                )
            conn.execute(
                "INSERT INTO totp (address, secret, last_step, created) VALUES (?, ?, -1, ?)",
                (normalized, secret, int(self.clock())),
            )
        uri = totp.provisioning_uri(secret, normalized, issuer or split_address(normalized)[1])
        return secret, uri

    def totp_disable(self, address: str) -> None:
        """Remove the account's TOTP secret: its password opens the mail protocols again."""
        normalized = self._local_address(address)
        with self._write() as conn:
            self._account_or_error(conn, normalized)
            cursor = conn.execute("DELETE FROM totp WHERE address = ?", (normalized,))
            if cursor.rowcount == 0:
                raise AccountError(f"{normalized} has no TOTP to disable")

    def totp_enrolled(self, address: str) -> bool:
        """Whether the account has TOTP (AccountError if there is no such account)."""
        normalized = self._local_address(address)
        with self._read() as conn:
            self._account_or_error(conn, normalized)
            row = conn.execute("SELECT 1 FROM totp WHERE address = ?", (normalized,)).fetchone()
        return row is not None

    def totp_verify(self, address: str, code: str) -> bool:
        """Check a TOTP code: the current one, or the one before or after (clock drift).

        A code is accepted once: its time step is remembered, and that step
        and earlier ones are refused from then on. False for an account
        without TOTP, a malformed address or an unknown account.
        """
        from estafeta.auth import totp

        try:
            normalized = normalize_address(address)
        except AddressError:
            return False
        row = (
            self._conn()
            .execute("SELECT secret, last_step FROM totp WHERE address = ?", (normalized,))
            .fetchone()
        )
        if row is None:
            return False
        secret, last_step = row
        step = totp.matching_step(secret, code, self.clock(), after=last_step)
        if step is None:
            return False
        try:
            with self._write() as conn:
                # Only if no one accepted this step (or a later one) meanwhile.
                cursor = conn.execute(
                    "UPDATE totp SET last_step = ? "
                    "WHERE address = ? AND secret = ? AND last_step < ?",
                    (step, normalized, secret, step),
                )
        except sqlite3.Error as exc:
            # Unrecorded, the code could be used again: refuse it.
            raise AccountError(f"cannot record the TOTP code in {self.path}: {exc}") from None
        return cursor.rowcount == 1

    # -- app passwords -----------------------------------------------------------------

    def app_password_create(
        self,
        address: str,
        name: str,
        protocols: Iterable[str] | str = PROTOCOLS,
        expires_days: int | None = None,
    ) -> str:
        """Make an app password for the account; returns it (it is stored hashed only).

        ``name`` (e.g. the device) is unique per account; ``protocols`` are
        those it opens (a list, or a comma-separated string); it expires
        after ``expires_days`` days, or never. At most MAX_APP_PASSWORDS each.
        """
        normalized = self._local_address(address)
        label = _app_password_name(name)
        allowed = _protocol_list(protocols)
        if expires_days is not None and (
            isinstance(expires_days, bool)
            or not isinstance(expires_days, int)
            or not 0 < expires_days <= MAX_EXPIRES_DAYS
        ):
            raise AccountError(
                f"expiry {expires_days!r}: use a number of days from 1 to {MAX_EXPIRES_DAYS}"
            )
        password = new_app_password()
        key = _app_password_key(password)
        assert key is not None  # new_app_password makes well-formed ones
        password_hash = self.hasher.hash(key.encode("ascii"))  # slow: outside the transaction
        # SCRAM keys of the form shown to the user, under the account's salt.
        salt, iterations = self._scram_params(normalized, renew=False)
        keys: bytes | None = scram.derive_keys(password, salt, iterations)
        created = int(self.clock())
        expires = None if expires_days is None else created + expires_days * 86_400
        with self._write() as conn:
            self._account_or_error(conn, normalized)
            current_salt = scramkeys.salt_of(conn, normalized)
            if current_salt is None:
                scramkeys.set_salt(conn, normalized, salt, iterations)
            elif current_salt != (salt, iterations):
                keys = None  # the salt changed meanwhile: keyed at its first login
            if conn.execute(
                "SELECT 1 FROM app_passwords WHERE address = ? AND name = ?", (normalized, label)
            ).fetchone():
                raise AccountError(
                    f"{normalized} has an app password named {label!r} already; "
                    "choose another name or revoke that one first"
                )
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM app_passwords WHERE address = ?", (normalized,)
            ).fetchone()
            if count >= MAX_APP_PASSWORDS:
                raise AccountError(
                    f"{normalized} has {count} app passwords, the most allowed; "
                    "revoke one that is no longer used first"
                )
            conn.execute(
                "INSERT INTO app_passwords (address, name, password_hash, tag, protocols, "
                "created, expires, last_used, scram_keys) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    normalized,
                    label,
                    password_hash,
                    _app_password_tag(key),
                    ",".join(allowed),
                    created,
                    expires,
                    keys,
                ),
            )
        return password

    def app_password_list(self, address: str) -> list[dict[str, Any]]:
        """The account's app passwords, oldest first, without their hashes.

        Each: ``name``, ``protocols`` (list), ``created``, ``expires`` (None =
        never) and ``last_used`` (None = never); times are Unix seconds.
        """
        normalized = self._local_address(address)
        with self._read() as conn:
            self._account_or_error(conn, normalized)
            rows = conn.execute(
                "SELECT name, protocols, created, expires, last_used FROM app_passwords "
                "WHERE address = ? ORDER BY created, name",
                (normalized,),
            ).fetchall()
        return [
            {
                "name": name,
                "protocols": protocols.split(","),
                "created": created,
                "expires": expires,
                "last_used": last_used,
            }
            for name, protocols, created, expires, last_used in rows
        ]

    def app_password_revoke(self, address: str, name: str) -> None:
        """Delete one app password of the account: it stops working at once."""
        normalized = self._local_address(address)
        with self._write() as conn:
            self._account_or_error(conn, normalized)
            cursor = conn.execute(
                "DELETE FROM app_passwords WHERE address = ? AND name = ?",
                (normalized, name.strip()),
            )
            if cursor.rowcount == 0:
                raise AccountError(f"{normalized} has no app password named {name.strip()!r}")

    # -- login history and retention (SQL: estafeta.auth.logins) -----------------

    def record_logins(self, records: Sequence[tuple[str, int, str, str, bool]]) -> int:
        """Add (address, at, protocol, client, ok) login records in one
        transaction, those of addresses that are not accounts left out, and
        keep each account's newest ``logins.KEEP_PER_ACCOUNT``; rows added.
        For ``logins.LoginRecorder``, which calls it at most once a second."""
        with self._write(lookups=False, shared=False) as conn:
            return logins.insert(conn, records, logins.KEEP_PER_ACCOUNT)

    def login_history(self, address: str) -> list[LoginRecord]:
        """The account's recorded login attempts, newest first (empty for
        an address that is not an account)."""
        normalized = self._local_address(address)
        with self._read() as conn:
            return logins.history(conn, normalized)

    def forget_logins(self, address: str) -> int:
        """Delete the login history of ``address`` (an account or one that
        was); how many rows went."""
        try:
            normalized = normalize_address(address)
        except AddressError as exc:
            raise AccountError(f"address {address!r}: {exc}") from None
        with self._write(lookups=False, shared=False) as conn:
            return logins.forget(conn, normalized)

    def prune_logins(self, before: int, *, dry_run: bool = False) -> int:
        """Delete login rows older than ``before`` (Unix time), in
        transactions of ``logins.BATCH`` rows; how many went (or would)."""
        if dry_run:
            with self._read() as conn:
                return logins.count_before(conn, before)
        return self._batches(lambda conn: logins.delete_before(conn, before, logins.BATCH))

    def truncate_login_clients(self, before: int, *, dry_run: bool = False) -> int:
        """Cut the client address of login rows older than ``before`` to its
        network (IPv4 /24, IPv6 /48), ``logins.BATCH`` rows per transaction;
        how many rows were (or would be) changed."""
        if dry_run:
            with self._read() as conn:
                return logins.count_untruncated(conn, before)
        return self._batches(lambda conn: logins.truncate_before(conn, before, logins.BATCH))

    def _batches(self, step: Callable[[sqlite3.Connection], int]) -> int:
        total = 0
        while True:
            with self._write(lookups=False, shared=False) as conn:
                done = step(conn)
            total += done
            if done < logins.BATCH:
                return total

    def retention_overrides(self, address: str | None = None) -> dict[str, dict[str, int]]:
        """Accounts' own retention: address -> {mailbox key: seconds, 0 =
        keep}, of one account (AccountError if there is none) or of all."""
        with self._read() as conn:
            if address is None:
                return logins.overrides(conn)
            normalized = self._local_address(address)
            self._account_or_error(conn, normalized)
            return logins.overrides(conn, normalized)

    def set_retention(self, address: str, mailbox: str, seconds: int | None) -> None:
        """Set the account's retention for a mailbox key (a special-use role
        like "Trash", or a mailbox name): seconds, 0 = keep forever; None
        goes back to the configuration's."""
        normalized = self._local_address(address)
        key = mailbox.strip()
        if not key or not key.isprintable():
            raise AccountError(f"mailbox {mailbox!r}: give a mailbox name or a role like Trash")
        if seconds is not None and (isinstance(seconds, bool) or not 0 <= seconds < 2**63):
            raise AccountError(f"retention {seconds!r}: use a number of seconds, 0 = keep")
        with self._write() as conn:
            self._account_or_error(conn, normalized)
            logins.set_override(conn, normalized, key, seconds)

    # -- aliases ---------------------------------------------------------------

    def add_alias(self, source: str, targets: list[str]) -> None:
        """Create an alias (``user@domain``, or ``@domain`` for a domain's catch-all).

        Targets are local accounts, aliases or delivery addresses of shared
        mailboxes, or addresses in other domains (mail is forwarded there,
        with SRS and an ARC seal). An existing alias is not changed: delete
        it first.
        """
        if not targets:
            raise AccountError("an alias needs at least one target")
        normalized_source = self._alias_source(source)
        normalized_targets: list[str] = []
        for target in targets:
            if target.startswith("@"):
                raise AccountError(f"target {target!r}: a catch-all cannot be a target")
            try:
                normalized = normalize_address(target)
            except AddressError as exc:
                raise AccountError(f"target {target!r}: {exc}") from None
            if normalized == normalized_source:
                raise AccountError(f"alias {normalized_source} cannot point to itself")
            if normalized not in normalized_targets:
                normalized_targets.append(normalized)
        with self._write() as conn:
            if self._is_alias(conn, normalized_source):
                raise AccountError(f"alias {normalized_source} exists, delete it first")
            if self._is_account(conn, normalized_source):
                raise AccountError(
                    f"{normalized_source} is an account; an alias cannot have the same address"
                )
            if clash := self._shared_clash(conn, normalized_source):
                raise clash
            for position, target in enumerate(normalized_targets):
                # Insert as we go: a bad later target rolls back the earlier rows.
                remote = split_address(target)[1] not in self.domains
                if not (
                    remote
                    or self._is_account(conn, target)
                    or self._is_alias(conn, target)
                    or sharedaddresses.mailbox_of(conn, target) is not None
                ):
                    raise AccountError(
                        f"target {target} is neither an account, an alias nor the address "
                        "of a shared mailbox; create it first (no alias was added)"
                    )
                conn.execute(
                    "INSERT INTO aliases (source, target, position) VALUES (?, ?, ?)",
                    (normalized_source, target, position),
                )

    def delete_alias(self, source: str) -> None:
        """Delete an alias. Aliases that point to it keep the name as a target;
        it is skipped when resolving until an alias or account of that name exists again."""
        normalized = self._alias_source(source)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM aliases WHERE source = ?", (normalized,))
            if cursor.rowcount == 0:
                raise AccountError(f"no alias {normalized}")

    def list_aliases(self) -> dict[str, list[str]]:
        """Every alias and its targets, in the order given; sources sorted."""
        result: dict[str, list[str]] = {}
        for source, target in self._conn().execute(
            "SELECT source, target FROM aliases ORDER BY source, position"
        ):
            result.setdefault(source, []).append(target)
        return result

    # -- delivery addresses of shared mailboxes (estafeta.auth.sharedaddresses) --

    def shared_addresses(self, mailbox: str | None = None) -> dict[str, list[str]]:
        """Shared mailbox name -> its delivery addresses, sorted; of one
        mailbox (an empty dict if it has none) or of all."""
        with self._read() as conn:
            return sharedaddresses.addresses(conn, mailbox)

    def set_shared_addresses(
        self,
        mailbox: str,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        *,
        exclusive: bool = False,
        dry_run: bool = False,
    ) -> tuple[bool, list[str]]:
        """Give the top-level shared mailbox ``mailbox`` the addresses ``add``
        and take ``remove`` away (an address it does not have is no change)
        or, ``exclusive``, every address not in ``add``; in one transaction.
        (Whether anything changed, its addresses after.) ``dry_run``: check
        and say, write nothing. AccountError, naming the address, for one
        that is not in a configured domain, is an account or an alias, or
        is another shared mailbox's already.
        """
        if not mailbox or "/" in mailbox:
            raise AccountError(f"shared mailbox {mailbox!r}: only a top-level one has addresses")
        wanted = [self._shared_address(address) for address in add]
        dropped = [self._shared_address(address) for address in remove]
        for address in wanted:
            if address in dropped:
                raise AccountError(f"address {address}: both added and removed")
        context = self._read() if dry_run else self._write()
        with context as conn:
            before = sharedaddresses.addresses(conn, mailbox).get(mailbox, [])
            after = set(before)
            if exclusive:
                dropped = [address for address in before if address not in wanted]
            for address in dict.fromkeys(wanted):
                if address in after:
                    continue
                if self._is_account(conn, address):
                    raise AccountError(
                        f"address {address} is an account; a shared mailbox cannot have it"
                    )
                if self._is_alias(conn, address):
                    raise AccountError(
                        f"address {address} is an alias; delete the alias first "
                        f"to give the address to Shared/{mailbox}"
                    )
                other = sharedaddresses.mailbox_of(conn, address)
                if other is not None:
                    raise AccountError(
                        f"address {address} is the delivery address of Shared/{other} already"
                    )
                if not dry_run:
                    sharedaddresses.add(conn, address, mailbox)
                after.add(address)
            for address in dropped:
                if address in after:
                    if not dry_run:
                        sharedaddresses.remove(conn, address, mailbox)
                    after.discard(address)
        return after != set(before), sorted(after)

    def forget_shared_addresses(self, mailbox: str, *, dry_run: bool = False) -> list[str]:
        """Take every address away from ``mailbox`` (before ``estafeta shared
        remove`` deletes it); which it had."""
        if dry_run:
            with self._read() as conn:
                return sharedaddresses.addresses(conn, mailbox).get(mailbox, [])
        with self._write() as conn:
            return sharedaddresses.forget(conn, mailbox)

    def _shared_address(self, address: str) -> str:
        """A shared mailbox's address, normalised; AccountError naming it
        when it cannot be one (rfc5321:4.1.2 syntax, a configured domain)."""
        try:
            normalized = normalize_address(address)
        except AddressError as exc:
            raise AccountError(f"address {address!r}: {exc}") from None
        domain = split_address(normalized)[1]
        if domain not in self.domains:
            raise AccountError(f"address {normalized}: {self._not_local(domain)}")
        return normalized

    # -- delivery ----------------------------------------------------------------

    def resolve(self, address: str) -> list[str] | None:
        """Where mail to ``address`` goes: local accounts, and remote addresses
        that aliases forward to (tell them apart with ``is_local_domain``).

        De-duplicated, in a stable order (depth first, targets in the order
        given); None if the domain is not local or nothing matches. The first
        of these that yields an account wins:

        1. the account itself, or the shared mailbox whose delivery address
           it is (a target ``#shared:NAME``, estafeta.auth.sharedaddresses);
        2. an alias of that name, expanded recursively (aliases of aliases,
           at most MAX_ALIAS_DEPTH deep; cycles and dangling targets skipped;
           a target that is a shared mailbox's address gives its target);
        3. subaddressing: ``user+tag@domain`` looked up as ``user@domain``
           (steps 1 and 2);
        4. the domain's catch-all alias ``@domain``.
        """
        try:
            normalized = normalize_address(address)
        except AddressError:
            return None
        local, domain = split_address(normalized)
        if domain not in self.domains:
            return None
        candidates = [normalized]
        base = self._base_address(local, domain)
        if base is not None and base != normalized:
            candidates.append(base)
        candidates.append(f"@{domain}")

        def read() -> tuple[str, ...] | None:
            with self._read() as conn:
                for name in candidates:
                    found = self._expand(conn, name)
                    if found:
                        return tuple(found)
            return None

        found = self._lookup(("resolve", normalized), read)
        return None if found is None else list(found)

    def _base_address(self, local: str, domain: str) -> str | None:
        """``user@domain`` for ``user+tag@domain``; None without a separator."""
        if self.separator is None:
            return None
        content = local
        if local.startswith('"'):
            # Canonical quoted form: only backslash and quote are escaped.
            content = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        base, sep, _ = content.partition(self.separator)
        if not sep or not base:
            return None
        quoted = base.replace("\\", "\\\\").replace('"', '\\"')
        try:
            return normalize_address(f'"{quoted}"@{domain}')
        except AddressError:
            return None

    def _expand(self, conn: sqlite3.Connection, name: str) -> list[str]:
        """The accounts behind a name (account, shared mailbox address or
        alias); empty if none."""
        if self._is_account(conn, name):
            return [name]
        if (mailbox := sharedaddresses.mailbox_of(conn, name)) is not None:
            return [sharedaddresses.target(mailbox)]
        result: list[str] = []
        seen = {name}

        def walk(source: str, depth: int) -> None:
            if depth > MAX_ALIAS_DEPTH:
                return
            rows = conn.execute(
                "SELECT target FROM aliases WHERE source = ? ORDER BY position", (source,)
            ).fetchall()
            for (target,) in rows:
                if target in seen:
                    continue  # a cycle, or a target reached twice
                seen.add(target)
                if self._is_account(conn, target):
                    result.append(target)
                elif (mailbox := sharedaddresses.mailbox_of(conn, target)) is not None:
                    if sharedaddresses.target(mailbox) not in result:
                        result.append(sharedaddresses.target(mailbox))
                elif split_address(target)[1] not in self.domains:
                    result.append(target)  # forwarded to another domain
                else:
                    walk(target, depth + 1)

        walk(name, 1)
        return result
