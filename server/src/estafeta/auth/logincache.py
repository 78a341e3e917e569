"""A short-lived cache of successful logins, so repeat logins skip argon2 (issue 17).

Mail clients reconnect every few minutes, each time with the same secret;
without a cache every reconnection costs one argon2id verification (64 MiB,
tens of milliseconds of a core). ``Accounts.authenticate`` asks this cache
before verifying and fills it after a successful verification.

What is kept, per entry: the account, which credential matched (the
account's password, or the app password of that name) and a *fingerprint*
of that credential's state in the accounts database when it matched. Entries
are found by HMAC-SHA256 (with a random key made at start, never written
anywhere) of (account, protocol, secret); fingerprints are HMACs with the
same key. Neither the secret nor any hash of it that can be tested offline
is kept: without the process's key the HMACs say nothing.

An entry is used only if the credential's state read from the database at
this login (one SQLite read, no argon2) gives the same fingerprint. A new
password (``estafeta user passwd``, and the re-hash of an upgrade), TOTP
enrolled or removed, an app password revoked, changed or expired, an
account deleted: each changes what is read, so the entry is dropped and the
login takes the slow path, also when the change was made by another process
(the CLI). Only successes are cached: a wrong secret always costs argon2 and
counts as a failure, and the login guard's lockouts apply before the cache
is asked (``estafeta.auth.guard.Authenticator`` consults the guard first).

Entries expire ``lifetime`` seconds after the verification that made them
(using them does not extend that); at most ``max_entries`` are kept, the
least recently used go first. A lifetime of 0 turns the cache off. Thread
safe: the login executor's threads share one cache.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_LIFETIME = 300.0  # seconds ([auth] login_cache_lifetime)
MAX_LIFETIME = 3600.0  # short-lived: at most an hour
DEFAULT_MAX_ENTRIES = 10_000

# What an entry's credential is (names, not passwords).
PASSWORD = "password"  # noqa: S105 (the account's own password)
APP_PASSWORD = "app"  # noqa: S105 (one of its app passwords)


@dataclass(frozen=True, slots=True)
class Entry:
    address: str  # the account, normalised
    kind: str  # PASSWORD or APP_PASSWORD
    app_name: str  # the app password's name; "" for PASSWORD
    fingerprint: bytes  # HMAC of the credential's state when it was verified
    expires: float  # cache clock


class LoginCache:
    def __init__(
        self,
        lifetime: float = DEFAULT_LIFETIME,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = max(0.0, lifetime)
        self.max_entries = max(0, max_entries)
        self.clock = clock
        self._key = secrets.token_bytes(32)  # this process's only: never stored
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.lifetime > 0 and self.max_entries > 0

    def _mac(self, *parts: str | bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
            # Length-prefixed: two different tuples never give the same input.
            mac.update(len(data).to_bytes(8, "big"))
            mac.update(data)
        return mac.digest()

    def key(self, address: str, protocol: str, secret: bytes) -> bytes:
        """Where a login's entry is: a keyed hash of (account, protocol, secret)."""
        return self._mac(b"login", address, protocol, secret)

    def fingerprint(self, *state: str) -> bytes:
        """A keyed hash of a credential's state in the database (hash, TOTP, app password row)."""
        return self._mac(b"state", *state)

    def get(self, key: bytes) -> Entry | None:
        """The live entry at ``key`` (and mark it recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self.clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, address: str, kind: str, app_name: str, fingerprint: bytes) -> None:
        """Remember a successful verification for ``lifetime`` seconds."""
        if not self.enabled:
            return
        entry = Entry(address, kind, app_name, fingerprint, self.clock() + self.lifetime)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: bytes) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @staticmethod
    def matches(entry: Entry, fingerprint: bytes) -> bool:
        """Is the credential still as it was when verified? (Constant time.)"""
        return hmac.compare_digest(entry.fingerprint, fingerprint)

    def __len__(self) -> int:
        return len(self._entries)
