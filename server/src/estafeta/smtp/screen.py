"""The MX connection screen (postscreen-like): what is known of a client
before its first command, and what its HELO says.

``Screen.check_client(ip)`` runs at connection time, while the protocol
holds the client in a multi-line greeting (``smtp.protocol``):

- ``[screen] trusted`` networks skip everything here (and greylisting);
- DNS block- and allowlists (``policy.dnsbl.Lists``, rfc5782): a summed
  block weight of at least ``[dnsbl] reject_score`` refuses the client with
  ``554 5.7.1 Service unavailable; client [IP] listed by ZONE`` (rfc5321:3.1,
  a 554 instead of the 220), unless an allow zone lists it; an allow-zone
  listing sets ``allowlisted`` (greylisting is skipped). A zone that times
  out, fails or answers a 127.255.255.x "query refused" code lists nothing
  (``Lists`` logs it, throttled per zone);
- forward-confirmed reverse DNS (``[screen] fcrdns``): the PTR names of the
  address, then their A/AAAA records must contain the address. ``signal``
  records ``fcrdns_none`` / ``fcrdns_mismatch`` (``check_signals``, beside
  the session: the greeting does not wait for a check that refuses no
  one); ``reject`` refuses with ``554 5.7.25`` (rfc7372:3.3), and the
  greeting waits for it. A DNS failure is ``fcrdns_temperror`` and never
  refuses.

``Screen.check_helo`` judges the EHLO/HELO argument (``[screen] helo``):
its syntax (rfc5321:4.1.1.1, 4.1.2, address literals 4.1.3), a name that is
not fully qualified (rfc5321:2.3.5), and a client claiming our own host
name or address. ``signal`` only records it; ``reject`` answers ``501`` for
syntax and ``550 5.7.1`` for a claim to be us. The default is ``signal``:
rfc5321:4.1.4 forbids refusing mail because the EHLO name does not match
the client's address.

The pregreet pass cache: a client address that sat through the greeting
pause without talking is not paused again for ``pregreet_ttl`` seconds.

Bounds (an attacker chooses its address, how often it connects, its HELO):

- DNS per connection: what ``Lists.check_ip`` does (one query per zone,
  shared and cached there), plus for FCrDNS one PTR query and at most
  ``MAX_PTR_NAMES`` forward queries, all under one ``dns_timeout``. Nothing
  is cached here beyond ``Lists``' cache: the resolver caches.
- The pass cache holds at most ``pregreet_cache`` addresses (about 150
  bytes each: 100,000 entries are ~15 MB), least recently added evicted
  first; an entry lives ``pregreet_ttl`` seconds and is not extended by use.
  Keyed by the exact address (an IPv6 client that rotates through its /64
  is paused on each new address: the cost is its own).
- ``ScreenResult.signals`` holds at most ``MAX_SIGNALS`` distinct names.
- A HELO argument is examined up to ``MAX_HELO`` characters (aiosmtpd caps
  a command line at 512 octets anyway).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from estafeta.config_spam import ScreenConfig
from estafeta.dns import DNSTempError, Resolver, reverse_name
from estafeta.log import log_event
from estafeta.policy.dnsbl import IPResult, Lists, client_address, reject_reply, sanitize

log = logging.getLogger("estafeta.smtp.screen")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# rfc7208:5.5 caps the PTR names SPF's "ptr" looks at to 10: the same cap here.
MAX_PTR_NAMES = 10
MAX_SIGNALS = 16
MAX_HELO = 300

# Reasons, as the "connection_rejected" event and its metric label give them.
DNSBL, PREGREET, FCRDNS, HELO = "dnsbl", "pregreet", "fcrdns", "helo"

# rfc5321:4.1.2 — sub-domain = Let-dig [Ldh-str]; Domain = sub-domain *("." sub-domain)
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*")
# rfc5321:4.1.3 — IPv4-address-literal = Snum 3("." Snum)
_IPV4_LITERAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


def refused_reply(ip: str, why: str, code: str = "5.7.1") -> str:
    """A 554 greeting naming the reason (rfc5321:3.1, rfc5321:4.2.2 "No SMTP
    service here"); one printable line."""
    return f"554 {code} Service unavailable; client [{sanitize(ip, 64)}] {why}"


def pregreet_reply(ip: str) -> str:
    """rfc5321:4.3.1 — the client must wait for the greeting; this one did not."""
    return refused_reply(ip, "talked before the greeting")


@dataclass
class ScreenResult:
    """What the screen knows of one connection; ``session.screen`` on the MX.

    ``reject`` is the whole reply line when the client is refused at the
    greeting, ``reason`` one of ``DNSBL``/``FCRDNS`` then. ``signals`` are
    short names (``fcrdns_none``, ``helo_syntax``, ``dnsbl:ZONE``...) for the
    log and for later scoring; at most ``MAX_SIGNALS``.
    """

    ip: str
    trusted: bool = False
    allowlisted: bool = False
    signals: list[str] = field(default_factory=list)
    reject: str | None = None
    reason: str | None = None
    ptr: str | None = None  # the forward-confirmed name
    dnsbl: IPResult | None = None

    def add_signal(self, name: str) -> bool:
        """Record ``name`` once; False when it was there already or no room is left."""
        if name in self.signals or len(self.signals) >= MAX_SIGNALS:
            return False
        self.signals.append(name)
        return True


class PassCache:
    """Client addresses that passed the pregreet test, each for ``ttl``
    seconds; at most ``size`` of them (the oldest pass goes first)."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._size = max(0, size)
        self._ttl = ttl
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        expiry = self._expiry.get(ip)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._expiry[ip]
            return False
        return True

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, ip: str) -> None:
        if not self._size or self._ttl <= 0:
            return
        self._expiry.pop(ip, None)
        self._expiry[ip] = self._clock() + self._ttl
        while len(self._expiry) > self._size:
            self._expiry.popitem(last=False)

    def discard(self, ip: str) -> None:
        self._expiry.pop(ip, None)


def _address(ip: str) -> Address | None:
    try:
        return client_address(ip)
    except ValueError:  # not an IP peer (a Unix socket in a test)
        return None


def helo_problems(
    helo: str, hostname: str, own_addresses: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """What is wrong with an EHLO/HELO argument, as (signal, reason) pairs:
    ``helo_syntax``, ``helo_not_fqdn`` or ``helo_ours``; empty when nothing is."""
    text = helo.strip()
    if not text or len(text) > MAX_HELO:
        return [("helo_syntax", "not a domain name or address literal")]
    if text.startswith("[") and text.endswith("]"):
        literal = _literal(text[1:-1])
        if literal is None:
            # rfc5321:4.1.3 — a General-address-literal's tag must be registered
            # with IANA; "IPv6" is the only one: any other literal is invalid.
            return [("helo_syntax", "not a valid address literal")]
        return [("helo_ours", "that is our address")] if _ours(literal, own_addresses) else []
    if _IPV4_LITERAL.fullmatch(text) or ":" in text:
        # An address without brackets (rfc5321:4.1.3 wants "[1.2.3.4]").
        bare = _literal(text) if ":" not in text else _ipv6(text)
        if bare is not None and _ours(bare, own_addresses):
            return [("helo_ours", "that is our address")]
        return [("helo_syntax", "an address literal needs brackets")]
    name = text.rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")  # U-labels (rfc6531:3.7.1)
        except UnicodeError:
            return [("helo_syntax", "not a domain name")]
    if not _DOMAIN.fullmatch(name) or len(name) > 253 or any(len(x) > 63 for x in name.split(".")):
        return [("helo_syntax", "not a domain name")]
    if name.lower() == hostname.strip().rstrip(".").lower():
        return [("helo_ours", "that is our name")]
    labels = name.split(".")
    if len(labels) < 2:
        # rfc5321:2.3.5 — the EHLO domain is a fully-qualified name.
        return [("helo_not_fqdn", "not a fully-qualified domain name")]
    if labels[-1].isdigit():
        return [("helo_syntax", "not a domain name")]
    return []


def _literal(inner: str) -> Address | None:
    """The address of an rfc5321:4.1.3 IPv4 or IPv6 literal, None otherwise."""
    if inner[:5].lower() == "ipv6:":
        return _ipv6(inner[5:])
    if _IPV4_LITERAL.fullmatch(inner):
        try:
            return ipaddress.IPv4Address(inner)
        except ValueError:  # an Snum over 255, or a leading zero
            return None
    return None


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    if "%" in text:  # rfc5321:4.1.3 IPv6-addr has no zone index
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _ours(addr: Address, own_addresses: Iterable[str]) -> bool:
    mapped = getattr(addr, "ipv4_mapped", None)
    target = mapped if mapped is not None else addr
    return any(_address(own) == target for own in own_addresses)


class Screen:
    """The checks of one MX listener. One per process; shared by its
    connections (it holds the pass cache). ``dns_timeout`` bounds the FCrDNS
    lookups (``Lists`` has its own ``[dnsbl] timeout``)."""

    def __init__(
        self,
        config: ScreenConfig,
        resolver: Resolver | None = None,
        lists: Lists | None = None,
        *,
        reject_score: float = 1.0,
        dns_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.lists = lists if lists is not None and lists.settings.zones else None
        self.reject_score = reject_score
        self.dns_timeout = dns_timeout
        self.passes = PassCache(config.pregreet_cache, config.pregreet_ttl, clock)

    # -- the pregreet pause ------------------------------------------------------

    def is_trusted(self, ip: str) -> bool:
        addr = _address(ip)
        return addr is not None and any(addr in net for net in self.config.trusted)

    def greeting_pause(self, ip: str) -> float:
        """Seconds to hold ``ip`` between "220-" and "220 "; 0: no pause."""
        if self.config.greeting_pause <= 0 or self.is_trusted(ip) or self._key(ip) in self.passes:
            return 0.0
        return self.config.greeting_pause

    def passed(self, ip: str) -> None:
        """``ip`` sat through the whole pause without talking."""
        self.passes.add(self._key(ip))

    def failed(self, ip: str) -> None:
        """``ip`` talked before the greeting: it is paused next time."""
        self.passes.discard(self._key(ip))

    @staticmethod
    def _key(ip: str) -> str:
        addr = _address(ip)
        return str(addr) if addr is not None else ip

    @property
    def checks_at_connect(self) -> bool:
        """True when ``check_client`` has DNS work that may refuse the
        client: the greeting waits for it."""
        return self.lists is not None or (
            self.config.fcrdns == "reject" and self.resolver is not None
        )

    @property
    def checks_later(self) -> bool:
        """True when ``check_signals`` has work: FCrDNS as a signal, which
        the greeting does not wait for (it cannot refuse anyone)."""
        return self.config.fcrdns == "signal" and self.resolver is not None

    # -- at connection time ----------------------------------------------------

    async def check_client(self, ip: str) -> ScreenResult:
        """Everything known of ``ip`` before its first command. Returns within
        about max(``[dnsbl] timeout``, ``dns_timeout``); a DNS failure never
        refuses a client."""
        addr = _address(ip)
        if addr is None:
            return ScreenResult(ip)
        result = ScreenResult(str(addr))
        if any(addr in net for net in self.config.trusted):
            result.trusted = True
            return result
        jobs: list[asyncio.Future[None]] = []
        if self.lists is not None:
            jobs.append(asyncio.ensure_future(self._dnsbl(self.lists, result)))
        if self.config.fcrdns == "reject" and self.resolver is not None:
            jobs.append(asyncio.ensure_future(self._fcrdns(self.resolver, addr, result)))
        try:
            await asyncio.gather(*jobs)
        finally:
            for job in jobs:
                job.cancel()
        if result.signals:
            log_event(log, "screen_signal", client=result.ip, signals=list(result.signals))
        return result

    async def check_signals(self, result: ScreenResult) -> None:
        """The checks that only record signals (FCrDNS in ``signal`` mode),
        run beside the session once the client is greeted: they add to
        ``result.signals`` and log them. Bounded by ``dns_timeout``."""
        addr = _address(result.ip)
        if addr is None or result.trusted or not self.checks_later or self.resolver is None:
            return
        before = len(result.signals)
        await self._fcrdns(self.resolver, addr, result)
        new = result.signals[before:]
        if new:
            log_event(log, "screen_signal", client=result.ip, signals=list(new))

    async def _dnsbl(self, lists: Lists, result: ScreenResult) -> None:
        found = await lists.check_ip(result.ip)
        result.dnsbl = found
        result.allowlisted = found.allowed
        for listing in found.listed_by:
            result.add_signal(f"dnsbl:{listing.zone}")
        if found.listed and found.score >= self.reject_score and not found.allowed:
            # rfc5782:2.1 — the listing names the zone; the reply says which.
            result.reject = reject_reply(found)
            result.reason = DNSBL

    async def _fcrdns(self, resolver: Resolver, addr: Address, result: ScreenResult) -> None:
        outcome, name = await self.fcrdns(resolver, addr)
        if outcome == "pass":
            result.ptr = name
            return
        result.add_signal(f"fcrdns_{outcome}")
        if self.config.fcrdns == "reject" and outcome != "temperror" and result.reject is None:
            why = (
                "has no reverse DNS"
                if outcome == "none"
                else "has no forward-confirmed reverse DNS"
            )
            # rfc7372:3.3 — X.7.25 "Reverse DNS validation failed".
            result.reject = refused_reply(str(addr), why, "5.7.25")
            result.reason = FCRDNS

    async def fcrdns(self, resolver: Resolver, addr: Address) -> tuple[str, str | None]:
        """("pass", name), ("none", None): no PTR, ("mismatch", None): no PTR
        name resolves back to ``addr``, ("temperror", None): DNS failed."""
        family = "A" if addr.version == 4 else "AAAA"
        try:
            async with asyncio.timeout(self.dns_timeout):
                answer = await resolver.lookup(reverse_name(str(addr)), "PTR")
                names = list(dict.fromkeys(str(r) for r in answer.records))[:MAX_PTR_NAMES]
                if not names:
                    return "none", None
                forward = await asyncio.gather(
                    *(resolver.lookup(name, family) for name in names), return_exceptions=True
                )
        except (DNSTempError, TimeoutError):
            return "temperror", None
        failed = False
        for name, found in zip(names, forward, strict=True):
            if isinstance(found, BaseException):
                if not isinstance(found, DNSTempError):
                    raise found
                failed = True
                continue
            for value in found.records:
                try:
                    if ipaddress.ip_address(str(value)) == addr:
                        return "pass", name
                except ValueError:
                    continue
        return ("temperror" if failed else "mismatch"), None

    # -- EHLO / HELO ---------------------------------------------------------------

    def check_helo(
        self,
        result: ScreenResult,
        helo: str,
        hostname: str,
        own_addresses: Iterable[str] = (),
    ) -> str | None:
        """Record what is wrong with ``helo`` in ``result.signals`` (logged once
        per connection and signal); in ``reject`` mode, the reply that refuses
        the EHLO/HELO (the session stays as it was: rfc5321:4.1.4)."""
        if self.config.helo == "off" or result.trusted:
            return None
        problems = helo_problems(helo, hostname, own_addresses)
        new = [signal for signal, _ in problems if result.add_signal(signal)]
        if new:
            log_event(log, "screen_signal", client=result.ip, signals=new, helo=sanitize(helo, 100))
        if self.config.helo != "reject" or not problems:
            return None
        signal, why = problems[0]
        if signal == "helo_ours":
            return f"550 5.7.1 HELO refused: {why}; you are not {sanitize(hostname, 100)}"
        # rfc5321:4.1.2 — a command with invalid characters gets a 501.
        return f"501 5.5.2 HELO refused: {why} (rfc5321:4.1.1.1)"
