"""Connections that have not logged in yet: per-address budgets with a share
kept for everybody else (``[limits] max_preauth_connections`` and
``max_preauth_per_ip``).

A connection is *pre-auth* from its accept (before any TLS handshake on
465/993/995) until it logs in (IMAP LOGIN/AUTHENTICATE, POP3 PASS/AUTH,
SMTP AUTH on submission). A port-25 session never logs in: it stays pre-auth
for its whole life. Every listener shares one ``PreauthPool``:

- one client address (IPv4 address or IPv6 /64, as the login guard counts
  them) holds at most ``per_ip`` pre-auth connections; one more is refused;
- when the pool holds ``limit`` connections, a newcomer from an address that
  holds fewer than the largest holder takes the place of the *oldest idle*
  pre-auth connection of the address holding the most (if that one has none
  idle, of the next largest that holds more than the newcomer); otherwise it
  is refused. A flood from a few addresses therefore ends up with equal
  shares, and an address with nothing in the pool always gets in;
- "idle": not busy by its owner's account (``Ticket.busy``: an SMTP session
  inside a mail transaction). A login being checked does not protect a
  connection: a guesser could otherwise make its places unevictable by
  keeping logins in flight (they wait for each other and for the failure
  delays of the login guard);
- ``crowded`` (more than half full): the sessions shorten the login deadline
  and TLS handshake timeout of the connections they admit now, so a flood
  cannot renew its places for free.

Addresses in ``exempt`` networks (``[auth] exempt``) are not counted.

Pure bookkeeping with an injectable clock: the pool chooses; the listener
that admitted a connection says goodbye to the one chosen for eviction
(``Ticket.evict``, set by whoever owns the connection at that moment) and
tells the pool when a connection logs in or ends (``Ticket.leave``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from estafeta.auth.guard import Network, client_key, in_networks
from estafeta.log import log_event

log = logging.getLogger("estafeta.auth")

# Refusal reasons.
ADDRESS = "address"  # this address holds max_preauth_per_ip already
FULL = "full"  # the pool is full and nothing could be evicted for it
# Login deadline and TLS handshake timeout (at most) of a connection admitted
# while the pool is crowded (Postfix's stress mode shortens smtpd_timeout to 10 s).
CROWDED_TIMEOUT = 10.0
# What an evicted connection hears before the close.
EVICTED_IMAP = b"* BYE Too many connections not logged in; try again later\r\n"
EVICTED_POP3 = b"-ERR [SYS/TEMP] Too many connections not logged in; try again later\r\n"
EVICTED_SMTP = b"421 4.7.0 Too many connections not logged in; try again later\r\n"


def _nothing() -> None:
    return None


def _never() -> bool:
    return False


@dataclass(eq=False)
class Ticket:
    """One connection's place in the pool (or an exempt connection's non-place)."""

    key: str
    since: float
    # Said by the pool at admission: the pool was more than half full.
    crowded: bool = False
    # Set by the owner of the connection: say goodbye and close.
    evict: Callable[[], None] = _nothing
    # Set by the owner: True while the connection must not be evicted.
    busy: Callable[[], bool] = _never
    _pool: PreauthPool | None = field(default=None, repr=False)

    @property
    def counted(self) -> bool:
        """Still holding a place in the pool."""
        return self._pool is not None

    def leave(self) -> None:
        """Logged in, or closed: give the place back (idempotent)."""
        if self._pool is not None:
            self._pool._remove(self)


@dataclass(frozen=True)
class Admission:
    ticket: Ticket | None  # None: refused
    refusal: str = ""  # ADDRESS or FULL when refused
    victim: Ticket | None = None  # to evict now (already out of the pool)
    # The pool just filled up (first refusal or eviction since it was at
    # most half full): worth one log line.
    saturated: bool = False


class PreauthPool:
    def __init__(
        self,
        limit: int,
        per_ip: int,
        exempt: Iterable[Network] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.per_ip = per_ip
        self.exempt = tuple(exempt)
        self.clock = clock
        # Client key -> its tickets, oldest first (dicts keep insertion order).
        self._held: dict[str, dict[Ticket, None]] = {}
        self.open = 0
        self.evictions = 0
        self.refusals = 0
        self._saturated = False

    @property
    def crowded(self) -> bool:
        return self.open * 2 > self.limit

    @property
    def addresses(self) -> int:
        return len(self._held)

    def holding(self, ip: str) -> int:
        """Pre-auth connections of the client address ``ip``."""
        return len(self._held.get(client_key(ip), ()))

    def admit(self, ip: str) -> Admission:
        """A new connection from ``ip``: its ticket, or a refusal."""
        key = client_key(ip)
        if in_networks(ip, self.exempt):
            return Admission(Ticket(key, self.clock()))
        crowded = self.crowded
        mine = len(self._held.get(key, ()))
        if mine >= self.per_ip:
            self.refusals += 1
            return Admission(None, ADDRESS)
        victim = None
        saturated = False
        if self.open >= self.limit:
            saturated = not self._saturated
            self._saturated = True
            victim = self._victim(mine)
            if victim is None:
                self.refusals += 1
                return Admission(None, FULL, saturated=saturated)
            self._remove(victim)
            self.evictions += 1
        ticket = Ticket(key, self.clock(), crowded=crowded, _pool=self)
        self._held.setdefault(key, {})[ticket] = None
        self.open += 1
        return Admission(ticket, victim=victim, saturated=saturated)

    def _victim(self, mine: int) -> Ticket | None:
        """The oldest idle connection of the largest holder (among equals, the
        oldest of theirs), or of the next largest that holds more than ``mine``."""
        by_size: dict[int, list[dict[Ticket, None]]] = {}
        for tickets in self._held.values():
            if len(tickets) > mine:
                by_size.setdefault(len(tickets), []).append(tickets)
        for size in sorted(by_size, reverse=True):
            oldest: Ticket | None = None
            for tickets in by_size[size]:
                idle = next((t for t in tickets if not t.busy()), None)
                if idle is not None and (oldest is None or idle.since < oldest.since):
                    oldest = idle
            if oldest is not None:
                return oldest
        return None

    def _remove(self, ticket: Ticket) -> None:
        if ticket._pool is not self:
            return
        ticket._pool = None
        tickets = self._held.get(ticket.key)
        if tickets is None or ticket not in tickets:  # pragma: no cover — never happens
            return
        del tickets[ticket]
        if not tickets:
            del self._held[ticket.key]
        self.open -= 1
        if not self.crowded:
            self._saturated = False


def report(pool: PreauthPool, admission: Admission, ip: str, listener: str) -> None:
    """Log the start of a saturation episode (once, not each eviction)."""
    if admission.saturated:
        log_event(
            log,
            "preauth_full",
            logging.WARNING,
            open=pool.open,
            addresses=pool.addresses,
            client=ip,
            listener=listener,
        )
