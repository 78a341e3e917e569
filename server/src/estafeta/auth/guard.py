"""Brute-force protection shared by IMAP, POP3 and SMTP AUTH.

One ``LoginGuard`` per server process sees every login attempt of every
protocol. It is pure bookkeeping with an injectable clock (no I/O). A
"client" is an IPv4 address or an IPv6 /64 (one customer line usually gets
a whole /64).

- **per-client failures** over a sliding window (``window`` seconds). Each
  failure delays the answer a little longer: ``delay_base * 2**(n-1)``, at
  most ``max_delay``. After ``ip_max_failures`` failures the client is
  locked out for ``lockout`` seconds: every attempt from it is refused
  without looking at the password. Other clients are never affected.
- **per (client, account) pair**: after ``pair_max_failures`` failures of
  one client for one account within the window, that pair is locked for
  ``lockout`` seconds (refused without a password check); the client may
  still log in to other accounts and the account from other clients.
  Refused attempts are not counted again, so one client contributes at most
  ``pair_max_failures`` failures to an account per lockout.
- **per-account failures**, only against *distributed* guessing: after
  ``account_max_failures`` failures for one account from at least
  ``account_min_clients`` different clients (by default as many as it takes
  when each client stops at its pair lockout: a few addresses cannot
  trigger it), the account's *password* is refused for ``lockout`` seconds
  to clients that are not known for it. A client is known when it, or
  another in the same IPv4 /24 or IPv6 /48 (a phone roaming within its
  carrier), logged in to the account during the last ``known_for`` seconds.
  App passwords (80 random bits: not guessable) keep working from anywhere:
  the owner is never locked out of his own account. ``check`` answers
  ``ACCOUNT`` for such a client; ``Authenticator`` then checks app
  passwords only, and refuses anything else without argon2 work.
- a successful login forgets that client's failures for that account (and
  only for that account: logging in to your own account does not wipe the
  record of guessing at others) and makes the client known for it.

Addresses in ``exempt`` networks (a webmail on the same host, say) are never
locked out nor slowed down beyond ``delay_base``; their failures still count
for the account, each as if from a client of its own (such a proxy speaks
for many users).

Memory is bounded: at most ``max_entries`` clients (each with at most
``MAX_PAIR_LOCKS`` pair lockouts and ``ip_max_failures`` failures), accounts
(each with at most ``account_max_failures`` failures) and known (account,
client or network) entries are tracked; the oldest are forgotten first.
Everything lives in memory: a restart forgets it. On a cluster the guard
gets a ``shared`` backend (``SharedGuardState``: estafeta.cluster.lockouts)
and then failures are counted by all nodes together and the ip, pair and
account lockouts (same GuardPolicy) are shared: every node honours them and
a restart keeps them. ``check`` reads the backend's cache of active
lockouts (no database round trip), ``record_failure`` and
``record_success`` send one short query each (two when a lockout starts;
only the node that starts a lockout reports it). The node keeps its own
counts as well and honours its own lockouts too; the delays and the "known"
clients stay its own. When the backend fails (the database away or slow),
the guard decides on its own counts alone and logs the outage once: never
is everybody refused because the database cannot answer.

``Authenticator`` is the one async entry point the sessions call: it
consults the guard, runs the (slow, argon2) password check on an executor of
its own (``Authenticator.workers`` threads, at most ``max_queued`` checks
waiting: beyond, the login gets the temporary-failure answer), records the
outcome, logs each lockout once and sleeps on failure. The check may be
answered by the accounts' login cache (``estafeta.auth.logincache``, no
argon2 for a repeat login with the same secret): only ever after ``check``
let the attempt through, and only for a success; failures are counted here
exactly as before. Every decided attempt (a success, a failure, a refusal of
a locked-out client; not BUSY, where nothing was decided) goes to the login
history (``history``, estafeta.auth.logins.LoginRecorder): buffered in
memory, written by a thread of its own, never an fsync per login.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

from estafeta import metrics
from estafeta.address import AddressError, normalize_address
from estafeta.auth.accounts import looks_like_app_password
from estafeta.auth.scram import Credential, ScramServer
from estafeta.log import log_event

log = logging.getLogger("estafeta.auth")

K = TypeVar("K")
V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = "ip"
PAIR = "pair"
ACCOUNT = "account"
BUSY = "busy"
# Longest user name we keep as a key: anything longer is not an address
# (rfc5321:4.5.3.1.3 path limit) and must not let a client grow our memory.
_MAX_KEY = 320
# Pair lockouts one client may hold at once; beyond, the oldest is forgotten.
MAX_PAIR_LOCKS = 64
# "Known" widens to the network a roaming client moves around in.
KNOWN_PREFIX_V4 = 24
KNOWN_PREFIX_V6 = 48


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(ip: str) -> str:
    """What the guard counts for a client address: the IPv4 address (also
    when written as ::ffff:a.b.c.d) or the IPv6 /64."""
    address = _address(ip)
    if address is None:
        return ip[:_MAX_KEY]
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def network_key(ip: str) -> str:
    """The wider network a client is "known" in: its IPv4 /24 or IPv6 /48."""
    address = _address(ip)
    if address is None:
        return "net:" + ip[:_MAX_KEY]
    prefix = KNOWN_PREFIX_V6 if isinstance(address, ipaddress.IPv6Address) else KNOWN_PREFIX_V4
    return "net:" + str(ipaddress.ip_network((address, prefix), strict=False))


def account_key(user: str) -> str:
    """The account a login names, normalised like the accounts database does."""
    try:
        return normalize_address(user)[:_MAX_KEY]
    except AddressError:
        return user.strip().lower()[:_MAX_KEY]


def in_networks(ip: str, networks: Iterable[Network]) -> bool:
    address = _address(ip)
    return address is not None and any(address in network for network in networks)


@dataclass(frozen=True)
class GuardPolicy:
    ip_max_failures: int = 10
    account_max_failures: int = 50
    window: float = 15 * 60.0
    lockout: float = 15 * 60.0
    delay_base: float = 1.0
    max_delay: float = 8.0
    exempt: tuple[Network, ...] = ()
    # Failures of one client for one account that lock that pair.
    pair_max_failures: int = 5
    # Different clients the account's failures must come from before the
    # account lockout; 0: as many as needed when each stops at its pair (or
    # client) lockout, at least 2.
    account_min_clients: int = 0
    # How long a successful login makes a client (and its /24 or /48) "known"
    # for that account.
    known_for: float = 30 * 86400.0
    max_entries: int = 100_000

    @property
    def min_clients(self) -> int:
        if self.account_min_clients:
            return self.account_min_clients
        per_client = min(self.pair_max_failures, self.ip_max_failures)
        return max(2, math.ceil(self.account_max_failures / per_client))


@dataclass(frozen=True)
class Decision:
    """May this client try a password for this account now?

    ``scope`` says why not: IP or PAIR (nothing is checked), or ACCOUNT (the
    account's own password is refused; its app passwords may be tried)."""

    allowed: bool
    scope: str = ""
    until: float = 0.0  # guard clock


@dataclass(frozen=True)
class Lockout:
    """A lockout that just started (to be logged once)."""

    scope: str
    client: str
    account: str
    until: float  # guard clock
    failures: int


class SharedCounts(Protocol):
    """Failures in the window, the one just recorded included."""

    @property
    def ip(self) -> int: ...
    @property
    def pair(self) -> int: ...
    @property
    def account(self) -> int: ...
    @property
    def clients(self) -> int: ...


class SharedGuardState(Protocol):
    """Failures and lockouts shared by the nodes of a cluster
    (estafeta.cluster.lockouts.SharedLockouts); ``client`` is a client key."""

    def remaining(self, kind: str, client: str, account: str) -> float: ...

    def failure(
        self, client: str, account: str, *, exempt: bool, window: float, lockout: float
    ) -> Awaitable[SharedCounts]: ...

    def lock(
        self, kinds: Sequence[str], client: str, account: str, seconds: float
    ) -> Awaitable[dict[str, float]]: ...

    def forget(self, client: str, accounts: Sequence[str]) -> Awaitable[None]: ...

    def refresh(self) -> Awaitable[int]: ...


@dataclass(frozen=True)
class Failure:
    delay: float
    lockouts: tuple[Lockout, ...] = ()


@dataclass
class _Client:
    # (time, account) of each failure inside the window.
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    locked_until: float = 0.0
    # account -> end of that pair's (last) lockout, oldest first; kept while
    # failures from before that end may still be in the window.
    pairs: dict[str, float] = field(default_factory=dict)


@dataclass
class _Account:
    # (time, client key, exempt) of each failure inside the window.
    failures: deque[tuple[float, str, bool]] = field(default_factory=deque)
    locked_until: float = 0.0


def _trim(entries: deque[tuple[float, str]] | deque[tuple[float, str, bool]], since: float) -> None:
    while entries and entries[0][0] <= since:
        entries.popleft()


def _clients_among(failures: Iterable[tuple[float, str, bool]]) -> int:
    """Different clients behind failures; each failure of an exempt proxy
    counts as one of its own."""
    keys: set[str] = set()
    proxied = 0
    for _, key, exempt in failures:
        if exempt:
            proxied += 1
        else:
            keys.add(key)
    return len(keys) + proxied


class LoginGuard:
    def __init__(
        self,
        policy: GuardPolicy,
        clock: Callable[[], float] = time.monotonic,
        *,
        shared: SharedGuardState | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.shared = shared
        self.shared_outage = False  # the backend failed last time it was asked
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        # (account, client key or network key) -> time of the last good login.
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- queries -------------------------------------------------------------

    def exempt(self, ip: str) -> bool:
        return in_networks(ip, self.policy.exempt)

    def check(self, ip: str, account: str) -> Decision:
        """Refuse a locked-out client or (client, account) pair, or say that
        the account's password is locked for a client it does not know."""
        now = self.clock()
        key = client_key(ip)
        # This node's own lockouts, and the shared ones (a cluster).
        if not self.exempt(ip):
            client = self._clients.get(key)
            until = max(client.locked_until if client else 0.0, self._shared(IP, key, account))
            if until > now:
                return Decision(False, IP, until)
            until = max(client.pairs.get(account, 0.0) if client else 0.0,
                        self._shared(PAIR, key, account))  # fmt: skip
            if until > now:
                return Decision(False, PAIR, until)
        entry = self._accounts.get(account)
        until = max(entry.locked_until if entry else 0.0, self._shared(ACCOUNT, key, account))
        if until > now and not self.known(ip, account):
            return Decision(False, ACCOUNT, until)
        return Decision(True)

    def _shared(self, kind: str, key: str, account: str) -> float:
        """The end (guard clock) of a shared lockout of ``kind``, or 0."""
        if self.shared is None:
            return 0.0
        left = self.shared.remaining(kind, key, account)
        return self.clock() + left if left > 0 else 0.0

    def known(self, ip: str, account: str) -> bool:
        """Did this client, or one in its /24 (IPv6: /48), log in to this account recently?"""
        since = self.clock() - self.policy.known_for
        return any(
            self._known.get((account, key), since) > since
            for key in (client_key(ip), network_key(ip))
        )

    def failures(self, ip: str) -> int:
        """Failures of a client inside the window."""
        client = self._clients.get(client_key(ip))
        if client is None:
            return 0
        _trim(client.failures, self.clock() - self.policy.window)
        return len(client.failures)

    def pair_failures(self, ip: str, account: str) -> int:
        """Failures of a client for one account inside the window, since its last pair lockout."""
        client = self._clients.get(client_key(ip))
        if client is None:
            return 0
        _trim(client.failures, self.clock() - self.policy.window)
        after = client.pairs.get(account, 0.0)
        return sum(1 for t, name in client.failures if name == account and t >= after)

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
        exempt = self.exempt(ip)
        lockouts: list[Lockout] = []

        entry = self._touch(self._accounts, account, _Account)
        _trim(entry.failures, since)
        entry.failures.append((now, key, exempt))
        while len(entry.failures) > policy.account_max_failures:
            entry.failures.popleft()
        if (
            len(entry.failures) >= policy.account_max_failures
            and entry.locked_until <= now
            and _clients_among(entry.failures) >= policy.min_clients
        ):
            entry.locked_until = now + policy.lockout
            lockouts.append(Lockout(ACCOUNT, ip, account, entry.locked_until, len(entry.failures)))
            entry.failures.clear()

        if exempt:
            return Failure(policy.delay_base, tuple(lockouts))
        client = self._touch(self._clients, key, _Client)
        _trim(client.failures, since)
        client.failures.append((now, account))
        count = len(client.failures)
        delay = min(policy.delay_base * 2 ** min(count - 1, 64), policy.max_delay)
        for name, until in list(client.pairs.items()):
            if until <= since:  # what it locked has left the window too
                del client.pairs[name]
        # After a pair lockout the pair starts again from nothing.
        after = client.pairs.get(account, 0.0)
        pair_count = sum(1 for t, name in client.failures if name == account and t >= after)
        pair_locked = False
        if pair_count >= policy.pair_max_failures and after <= now:
            client.pairs[account] = now + policy.lockout
            while len(client.pairs) > MAX_PAIR_LOCKS:
                del client.pairs[next(iter(client.pairs))]
            pair_locked = True
        if count >= policy.ip_max_failures and client.locked_until <= now:
            client.locked_until = now + policy.lockout
            # The client lockout covers the pair's: one lockout to report.
            lockouts.append(Lockout(IP, ip, account, client.locked_until, count))
            # After the lockout the client starts again from nothing.
            client.failures.clear()
        elif pair_locked:
            lockouts.append(Lockout(PAIR, ip, account, client.pairs[account], pair_count))
        return Failure(delay, tuple(lockouts))

    def success(self, ip: str, account: str) -> None:
        """A good login: remember the client (and its network) for the
        account and forget its failures for that account."""
        now = self.clock()
        key = client_key(ip)
        client = self._clients.get(key)
        if client is not None:
            client.failures = deque(f for f in client.failures if f[1] != account)
            client.pairs.pop(account, None)  # an expired one: a good login was allowed
            if not client.failures and client.locked_until <= now and not client.pairs:
                del self._clients[key]
        entry = self._accounts.get(account)
        if entry is not None:
            entry.failures = deque(f for f in entry.failures if f[1] != key)
        for known in ((account, network_key(ip)), (account, key)):
            self._known[known] = now
            self._known.move_to_end(known)
        self._evict(self._known)

    # -- with a shared backend (a cluster) ----------------------------------

    async def record_failure(self, ip: str, account: str) -> Failure:
        """``failure``, and with a shared backend the lockouts it decides."""
        failure = self.failure(ip, account)
        if self.shared is None:
            return failure
        try:
            lockouts = await self._shared_failure(ip, account)
        except Exception as exc:
            self._shared_down(exc)
            return failure  # our own lockouts, logged as before
        self._shared_up()
        # Ours are reported only where no shared one covers them (rare: a
        # good login elsewhere made the shared count forget).
        key = client_key(ip)
        now = self.clock()
        mine = [lo for lo in failure.lockouts if self._shared(lo.scope, key, account) <= now]
        return Failure(failure.delay, lockouts + tuple(mine))

    async def _shared_failure(self, ip: str, account: str) -> tuple[Lockout, ...]:
        assert self.shared is not None
        policy = self.policy
        key = client_key(ip)
        exempt = self.exempt(ip)
        counts = await self.shared.failure(
            key, account, exempt=exempt, window=policy.window, lockout=policy.lockout
        )
        now = self.clock()
        wanted = []
        if (
            counts.account >= policy.account_max_failures
            and counts.clients >= policy.min_clients
            and self._shared(ACCOUNT, key, account) <= now
        ):
            wanted.append(ACCOUNT)
        if not exempt:
            if counts.pair >= policy.pair_max_failures and self._shared(PAIR, key, account) <= now:
                wanted.append(PAIR)
            if counts.ip >= policy.ip_max_failures and self._shared(IP, key, account) <= now:
                wanted.append(IP)
        if not wanted:
            return ()
        started = await self.shared.lock(wanted, key, account, policy.lockout)
        lockouts = []
        if ACCOUNT in started:
            lockouts.append(Lockout(ACCOUNT, ip, account, now + started[ACCOUNT], counts.account))
        # The client lockout covers the pair's: one lockout to report.
        if IP in started:
            lockouts.append(Lockout(IP, ip, account, now + started[IP], counts.ip))
        elif PAIR in started:
            lockouts.append(Lockout(PAIR, ip, account, now + started[PAIR], counts.pair))
        return tuple(lockouts)

    async def record_success(self, ip: str, *accounts: str) -> None:
        """``success`` for each account, and the shared backend forgets too."""
        for account in dict.fromkeys(accounts):
            self.success(ip, account)
        if self.shared is None:
            return
        try:
            await self.shared.forget(client_key(ip), list(dict.fromkeys(accounts)))
        except Exception as exc:
            self._shared_down(exc)
        else:
            self._shared_up()

    async def refresh(self) -> None:
        """Reload the shared lockouts (the server calls this every few seconds)."""
        if self.shared is None:
            return
        try:
            await self.shared.refresh()
        except Exception as exc:
            self._shared_down(exc)
        else:
            self._shared_up()

    def _shared_down(self, exc: Exception) -> None:
        if not self.shared_outage:
            self.shared_outage = True
            log_event(log, "auth_shared_unavailable", logging.WARNING,
                      error=str(exc)[:300] or type(exc).__name__,
                      fallback="this node's own counts")  # fmt: skip

    def _shared_up(self) -> None:
        if self.shared_outage:
            self.shared_outage = False
            log_event(log, "auth_shared_restored", logging.INFO)

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


class LoginHistory(Protocol):
    """Where decided login attempts go (estafeta.auth.logins.LoginRecorder)."""

    def record(self, address: str, protocol: str, client: str, ok: bool) -> None: ...

    def close(self) -> None: ...


class PasswordChecker(Protocol):
    def authenticate(
        self, address: str, secret: str, protocol: str, *, allow_password: bool = True
    ) -> str | None: ...


class ScramChecker(Protocol):
    """What a SCRAM login needs of the accounts (estafeta.auth.accounts.Accounts)."""

    def scram_salt(self, user: str) -> tuple[bytes, int]: ...

    def scram_authenticate(
        self, exchange: ScramServer, protocol: str, *, allow_password: bool = True
    ) -> tuple[str, Credential] | None: ...


@dataclass(frozen=True)
class LoginResult:
    """The outcome of one login attempt."""

    address: str | None  # the account, normalised; None when refused
    locked: bool = False  # refused without a password check: try again later
    reason: str = ""  # IP, PAIR, ACCOUNT or BUSY when locked

    @property
    def ok(self) -> bool:
        return self.address is not None


def default_workers() -> int:
    """Password checks at once: argon2 is CPU- and memory-bound (64 MiB each
    by default) and releases the GIL; more threads than cores only queue."""
    return max(1, min(4, os.cpu_count() or 1))


class Authenticator:
    """Checks logins for every protocol through one ``LoginGuard``.

    Password checks run on an executor of their own (``workers`` threads),
    never on asyncio's default one where searches and message parsing could
    keep a login waiting. At most ``max_queued`` checks wait or run at once:
    beyond, the login is refused at once with the temporary failure
    (``LoginResult.reason == BUSY``), so a flood cannot queue unbounded work.
    """

    def __init__(
        self,
        accounts: PasswordChecker,
        guard: LoginGuard,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        workers: int | None = None,
        max_queued: int | None = None,
        history: LoginHistory | None = None,
    ) -> None:
        self.accounts = accounts
        self.guard = guard
        self.history = history
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.workers = workers or default_workers()
        self.max_queued = max_queued or 8 * self.workers
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="estafeta-auth")
        self._queued = 0
        self._saturated = False  # logged once per episode
        self._closed = False  # server stopping: no new checks
        # One password check at a time per client (exempt ones excepted), so
        # that parallel connections cannot slip past ip_max_failures.
        self._serial: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def login(self, user: str, secret: str, protocol: str, peer_ip: str) -> LoginResult:
        def check(allow_password: bool) -> str | None:
            if allow_password:
                return self.accounts.authenticate(user, secret, protocol)
            return self.accounts.authenticate(user, secret, protocol, allow_password=False)

        return await self._attempt(user, protocol, peer_ip, check, looks_like_app_password(secret))

    async def scram_salt(self, user: str) -> tuple[bytes, int]:
        """The salt and iteration count for a SCRAM server-first message
        (``Accounts.scram_salt``: a fake one for unknown users), read off the
        event loop."""
        accounts = cast(ScramChecker, self.accounts)
        if self._closed:  # stopping: the executor takes no more work
            return await asyncio.to_thread(accounts.scram_salt, user)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, accounts.scram_salt, user
        )

    async def scram_login(
        self, exchange: ScramServer, protocol: str, peer_ip: str
    ) -> tuple[LoginResult, Credential | None]:
        """Check a SCRAM proof (``exchange`` has parsed the client-final
        message) through the same guard as ``login``: lockouts, delays,
        history. During an account lockout only app passwords are tried.
        The result, and the credential that matched (for server-final)."""
        accounts = cast(ScramChecker, self.accounts)
        matched: list[Credential] = []

        def check(allow_password: bool) -> str | None:
            found = accounts.scram_authenticate(exchange, protocol, allow_password=allow_password)
            if found is None:
                return None
            matched.append(found[1])
            return found[0]

        result = await self._attempt(exchange.user, protocol, peer_ip, check, True)
        return result, (matched[0] if result.ok and matched else None)

    async def _attempt(
        self,
        user: str,
        protocol: str,
        peer_ip: str,
        check: Callable[[bool], str | None],
        maybe_app_password: bool,
    ) -> LoginResult:
        """One login through the guard; ``check(allow_password)`` (run on
        the executor) says which account the secret opens, or None."""
        account = account_key(user)
        async with self._one_at_a_time(peer_ip):
            decision = self.guard.check(peer_ip, account)
            allow_password = True
            if not decision.allowed:
                # During an account lockout an unknown client may still use
                # an app password; anything else costs no argon2 work.
                if decision.scope != ACCOUNT or not maybe_app_password:
                    metrics.AUTH_ATTEMPTS.labels(protocol, "locked").inc()
                    self._remember(account, protocol, peer_ip, False)
                    return LoginResult(None, locked=True, reason=decision.scope)
                allow_password = False
            if self._queued >= self.max_queued or self._closed:
                metrics.AUTH_ATTEMPTS.labels(protocol, BUSY).inc()
                if not self._saturated:
                    self._saturated = True
                    log_event(log, "auth_busy", logging.WARNING, queued=self._queued)
                return LoginResult(None, locked=True, reason=BUSY)
            address = await self._check(check, allow_password)
            metrics.AUTH_ATTEMPTS.labels(protocol, "ok" if address else "failed").inc()
            self._remember(address or account, protocol, peer_ip, address is not None)
            if address is not None:
                await self.guard.record_success(peer_ip, account, address)
                return LoginResult(address)
            failure = await self.guard.record_failure(peer_ip, account)
        for lockout in failure.lockouts:
            self._log(lockout, protocol)
        if failure.delay > 0:
            await self._sleep(failure.delay)  # slow down guessing
        return LoginResult(None)

    async def _check(self, check: Callable[[bool], str | None], allow_password: bool) -> str | None:
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(check, allow_password)
            )
        finally:
            self._queued -= 1
            if self._queued <= self.max_queued // 2:
                self._saturated = False

    def _remember(self, account: str, protocol: str, peer_ip: str, ok: bool) -> None:
        if self.history is not None:
            self.history.record(account, protocol, peer_ip, ok)

    async def close(self) -> None:
        """Stop the executor once the running checks are done, then write the
        login history that waits (server stop: before the accounts close)."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self.history is not None:
            await asyncio.to_thread(self.history.close)

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
