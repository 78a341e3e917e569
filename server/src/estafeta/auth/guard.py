"""Brute-force protection shared by IMAP, POP3 and SMTP AUTH.

One ``LoginGuard`` per server process sees every login attempt of every
protocol. It is pure bookkeeping with an injectable clock (no I/O):

- **per-client failures** over a sliding window (``window`` seconds). Each
  failure delays the answer a little longer: ``delay_base * 2**(n-1)``, at
  most ``max_delay``. After ``ip_max_failures`` failures the client is
  locked out for ``lockout`` seconds: every attempt from it is refused
  without looking at the password. Other clients are never affected.
- **per-account failures** (from any client) over the same window. After
  ``account_max_failures`` the account is locked for ``lockout`` seconds,
  but only for clients that have not logged in to it successfully during
  the last ``known_for`` seconds: the owner on a known address keeps working
  while a distributed guesser is shut out.
- a successful login forgets that client's failures for that account (and
  only for that account: logging in to your own account does not wipe the
  record of guessing at others).

IPv4 clients are counted per address, IPv6 clients per /64 (one customer
line usually gets a whole /64). Addresses in ``exempt`` networks (a webmail
on the same host, say) are never locked out nor slowed down beyond
``delay_base``; their failures still count for the account.

Memory is bounded: at most ``max_entries`` clients, accounts and
known (account, client) pairs are tracked each; the oldest are forgotten
first. Everything lives in memory: a restart forgets it.

``Authenticator`` is the one async entry point the sessions call: it
consults the guard, runs the (slow, argon2) password check in a thread,
records the outcome, logs each lockout once and sleeps on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from estafeta import metrics
from estafeta.address import AddressError, normalize_address
from estafeta.log import log_event

log = logging.getLogger("estafeta.auth")

K = TypeVar("K")
V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = "ip"
ACCOUNT = "account"
# Longest user name we keep as a key: anything longer is not an address
# (rfc5321:4.5.3.1.3 path limit) and must not let a client grow our memory.
_MAX_KEY = 320


def client_key(ip: str) -> str:
    """What the guard counts for a client address: the IPv4 address (also
    when written as ::ffff:a.b.c.d) or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:_MAX_KEY]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(user: str) -> str:
    """The account a login names, normalised like the accounts database does."""
    try:
        return normalize_address(user)[:_MAX_KEY]
    except AddressError:
        return user.strip().lower()[:_MAX_KEY]


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass(frozen=True)
class GuardPolicy:
    ip_max_failures: int = 10
    account_max_failures: int = 50
    window: float = 15 * 60.0
    lockout: float = 15 * 60.0
    delay_base: float = 1.0
    max_delay: float = 8.0
    exempt: tuple[Network, ...] = ()
    # How long a successful login makes a client "known" for that account.
    known_for: float = 30 * 86400.0
    max_entries: int = 100_000


@dataclass(frozen=True)
class Decision:
    """May this client try a password for this account now?"""

    allowed: bool
    scope: str = ""  # IP or ACCOUNT when refused
    until: float = 0.0  # guard clock


@dataclass(frozen=True)
class Lockout:
    """A lockout that just started (to be logged once)."""

    scope: str
    client: str
    account: str
    until: float  # guard clock
    failures: int


@dataclass(frozen=True)
class Failure:
    delay: float
    lockouts: tuple[Lockout, ...] = ()


@dataclass
class _Client:
    # (time, account) of each failure inside the window.
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    locked_until: float = 0.0


@dataclass
class _Account:
    # (time, client key) of each failure inside the window.
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    locked_until: float = 0.0


def _trim(entries: deque[tuple[float, str]], since: float) -> None:
    while entries and entries[0][0] <= since:
        entries.popleft()


class LoginGuard:
    def __init__(self, policy: GuardPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        # (account, client key) -> time of the last successful login.
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- queries -------------------------------------------------------------

    def exempt(self, ip: str) -> bool:
        return in_networks(ip, self.policy.exempt)

    def check(self, ip: str, account: str) -> Decision:
        """Refuse a client that is locked out, or an account that is locked
        for clients it does not know."""
        now = self.clock()
        key = client_key(ip)
        if not self.exempt(ip):
            client = self._clients.get(key)
            if client is not None and client.locked_until > now:
                return Decision(False, IP, client.locked_until)
        entry = self._accounts.get(account)
        if entry is not None and entry.locked_until > now and not self.known(ip, account):
            return Decision(False, ACCOUNT, entry.locked_until)
        return Decision(True)

    def known(self, ip: str, account: str) -> bool:
        """Did this client log in to this account recently?"""
        last = self._known.get((account, client_key(ip)))
        return last is not None and last > self.clock() - self.policy.known_for

    def failures(self, ip: str) -> int:
        """Failures of a client inside the window."""
        client = self._clients.get(client_key(ip))
        if client is None:
            return 0
        _trim(client.failures, self.clock() - self.policy.window)
        return len(client.failures)

    def account_failures(self, account: str) -> int:
        entry = self._accounts.get(account)
        if entry is None:
            return 0
        _trim(entry.failures, self.clock() - self.policy.window)
        return len(entry.failures)

    @property
    def tracked(self) -> int:
        """Entries held (clients + accounts + known pairs), for tests and metrics."""
        return len(self._clients) + len(self._accounts) + len(self._known)

    # -- outcomes ------------------------------------------------------------

    def failure(self, ip: str, account: str) -> Failure:
        """Record a wrong password; the delay to apply and any new lockouts."""
        policy = self.policy
        now = self.clock()
        since = now - policy.window
        key = client_key(ip)
        lockouts: list[Lockout] = []

        entry = self._touch(self._accounts, account, _Account)
        _trim(entry.failures, since)
        entry.failures.append((now, key))
        if len(entry.failures) >= policy.account_max_failures and entry.locked_until <= now:
            entry.locked_until = now + policy.lockout
            lockouts.append(Lockout(ACCOUNT, ip, account, entry.locked_until, len(entry.failures)))
            entry.failures.clear()

        if self.exempt(ip):
            return Failure(policy.delay_base, tuple(lockouts))
        client = self._touch(self._clients, key, _Client)
        _trim(client.failures, since)
        client.failures.append((now, account))
        count = len(client.failures)
        delay = min(policy.delay_base * 2 ** min(count - 1, 64), policy.max_delay)
        if count >= policy.ip_max_failures and client.locked_until <= now:
            client.locked_until = now + policy.lockout
            lockouts.append(Lockout(IP, ip, account, client.locked_until, count))
            # After the lockout the client starts again from nothing.
            client.failures.clear()
        return Failure(delay, tuple(lockouts))

    def success(self, ip: str, account: str) -> None:
        """A good login: remember the client for the account and forget its
        failures for that account."""
        key = client_key(ip)
        client = self._clients.get(key)
        if client is not None:
            client.failures = deque(f for f in client.failures if f[1] != account)
            if not client.failures and client.locked_until <= self.clock():
                del self._clients[key]
        entry = self._accounts.get(account)
        if entry is not None:
            entry.failures = deque(f for f in entry.failures if f[1] != key)
        self._known[(account, key)] = self.clock()
        self._known.move_to_end((account, key))
        self._evict(self._known)

    # -- memory ----------------------------------------------------------------

    def _touch(self, table: OrderedDict[K, V], key: K, factory: Callable[[], V]) -> V:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = factory()
            self._evict(table)
        else:
            table.move_to_end(key)
        return entry

    def _evict(self, table: OrderedDict[K, V]) -> None:
        while len(table) > self.policy.max_entries:
            table.popitem(last=False)


# -- the entry point the sessions use ----------------------------------------


class PasswordChecker(Protocol):
    def authenticate(self, address: str, secret: str, protocol: str) -> str | None: ...


@dataclass(frozen=True)
class LoginResult:
    """The outcome of one login attempt."""

    address: str | None  # the account, normalised; None when refused
    locked: bool = False  # refused without a password check: try again later
    reason: str = ""  # "ip" or "account" when locked

    @property
    def ok(self) -> bool:
        return self.address is not None


class Authenticator:
    """Checks logins for every protocol through one ``LoginGuard``."""

    def __init__(
        self,
        accounts: PasswordChecker,
        guard: LoginGuard,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.guard = guard
        self._sleep = sleep
        self._wall_clock = wall_clock
        # One password check at a time per client (exempt ones excepted), so
        # that parallel connections cannot slip past ip_max_failures.
        self._serial: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def login(self, user: str, secret: str, protocol: str, peer_ip: str) -> LoginResult:
        account = account_key(user)
        async with self._one_at_a_time(peer_ip):
            decision = self.guard.check(peer_ip, account)
            if not decision.allowed:
                metrics.AUTH_ATTEMPTS.labels(protocol, "locked").inc()
                return LoginResult(None, locked=True, reason=decision.scope)
            address = await asyncio.to_thread(self.accounts.authenticate, user, secret, protocol)
            metrics.AUTH_ATTEMPTS.labels(protocol, "ok" if address else "failed").inc()
            if address is not None:
                self.guard.success(peer_ip, account)
                if address != account:
                    self.guard.success(peer_ip, address)
                return LoginResult(address)
            failure = self.guard.failure(peer_ip, account)
        for lockout in failure.lockouts:
            self._log(lockout, protocol)
        if failure.delay > 0:
            await self._sleep(failure.delay)  # slow down guessing
        return LoginResult(None)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, peer_ip: str) -> AsyncIterator[None]:
        if self.guard.exempt(peer_ip):
            yield
            return
        key = client_key(peer_ip)
        lock, users = self._serial.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._serial[key]

    def _log(self, lockout: Lockout, protocol: str) -> None:
        seconds = max(0.0, lockout.until - self.guard.clock())
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_clock() + seconds))
        log_event(
            log,
            "auth_lockout",
            logging.WARNING,
            client=lockout.client,
            account=lockout.account[:100],
            scope=lockout.scope,
            until=until,
            failures=lockout.failures,
            protocol=protocol,
        )


# -- connections per client ----------------------------------------------------


class ConnectionsPerIP:
    """Open connections per client (IPv4 address or IPv6 /64) over all
    listeners, and their cap (``[limits] max_connections_per_ip``)."""

    def __init__(self, limit: int, exempt: Iterable[Network] = ()) -> None:
        self.limit = limit
        self.exempt = tuple(exempt)
        self.open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        """Count a new connection; False (and nothing counted) if over the cap."""
        if in_networks(ip, self.exempt):
            return True
        key = client_key(ip)
        count = self.open.get(key, 0)
        if count >= self.limit:
            return False
        self.open[key] = count + 1
        return True

    def release(self, ip: str) -> None:
        if in_networks(ip, self.exempt):
            return
        key = client_key(ip)
        count = self.open.get(key, 0) - 1
        if count > 0:
            self.open[key] = count
        else:
            self.open.pop(key, None)
