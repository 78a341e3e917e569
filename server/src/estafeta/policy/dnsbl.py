"""DNS block- and allowlists (RFC 5782) for client addresses and for domains.

``Lists.check_ip(ip)`` looks the SMTP client's address up in every configured
address zone at once, under one overall timeout, and says which block zones
list it (with the return codes that counted and, optionally, the zone's TXT
reason), which allow zones list it, the summed weight of the block zones, and
which zones gave no usable answer. ``Lists.check_domains(names)`` does the same
for domain names (URL hosts of a message body) against domain zones.
``reject_reply(result)`` words the SMTP refusal. Nothing here decides to
refuse: the caller compares ``score`` with its threshold.

What counts as a listing (rfc5782:2.1): an A record whose value is in
127.0.0.0/8 and in the zone's configured codes (all of
127.0.0.0/8 when none are configured). Never a listing, whatever the codes
say, and logged as ``dnsbl_misconfigured`` (throttled per zone):

- any value in 127.255.255.0/24: Spamhaus-style "query refused" answers
  (.252 typo in the zone name, .254 query through a public resolver, .255 too
  many queries). The zone said nothing about the address.
- any value outside 127.0.0.0/8: a wildcarding or hijacked zone, or a resolver
  that rewrites NXDOMAIN.

A timeout or a DNSTempError is never a listing either: the zone is reported in
``unanswered`` and logged as ``dnsbl_timeout`` (throttled per zone), and the
message goes on as if the zone were not configured.

Bounds (an attacker controls the client address, the names in a body and how
often it connects):

- DNS work per ``check_ip``: one A query per zone, one TXT query per listing
  block zone, all cut at ``Settings.timeout`` seconds. Per ``check_domains``:
  at most ``max_domains`` distinct names × the domain zones, chosen among the
  first ``MAX_DOMAIN_CANDIDATES`` names offered; each name at most 1024
  characters before normalisation.
- Identical queries in flight are made once and shared (a client opening many
  connections at once costs one query per zone); at most ``max_inflight``
  queries run at a time; each shared query ends after ``timeout`` seconds.
- Answers (positive and negative, not failures) are cached for ``cache_ttl``
  seconds, at most ``cache_size`` entries, least recently used evicted first;
  a cached entry holds at most ``MAX_CODES`` addresses or one TXT reason of at
  most ``MAX_REASON`` characters.
- Log throttling keeps one record per (event, zone): bounded by the
  configuration, not by traffic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from estafeta.address import AddressError, normalize_domain
from estafeta.dns import DNSTempError, Resolver
from estafeta.log import log_event

log = logging.getLogger("estafeta.policy.dnsbl")

Kind = Literal["block", "allow"]
Why = Literal["timeout", "temperror", "refused"]

# rfc5782:2.1 — return codes live in 127.0.0.0/8.
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# Spamhaus: 127.255.255.0/24 answers mean "query refused", not "listed".
_REFUSED = ipaddress.IPv4Network("127.255.255.0/24")
_REFUSED_MEANING = {
    252: "typo in the zone name",
    254: "query through a public or open resolver",
    255: "excessive number of queries",
}
_WILD = "answer outside 127.0.0.0/8 (wildcard zone or rewriting resolver)"
MAX_CODES = 16  # A records kept from one answer
MAX_REASON = 200  # characters of TXT reason kept (after sanitising)
MAX_DOMAIN_CANDIDATES = 1000  # names examined by check_domains
_MAX_NAME = 253  # rfc1035:3.1, dotted text without the trailing dot
_REPLY_MAX = 510  # rfc5321:4.5.3.1.5 — a reply line is at most 512 octets with CRLF
_HEX_LABEL = re.compile(r"0x[0-9a-f]*")


# -- configuration -------------------------------------------------------------


def parse_codes(spec: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Return codes as inclusive integer ranges; raises ValueError naming the bad entry.

    Entries: one address (``127.0.0.2``), a range (``127.0.0.2-127.0.0.11``) or
    a network (``127.0.1.0/24``), all inside 127.0.0.0/8 (rfc5782:2.1). An entry
    wholly inside 127.255.255.0/24 is refused: those codes never count.
    """
    if isinstance(spec, str):
        spec = [spec]
    ranges: list[tuple[int, int]] = []
    for entry in spec:
        text = str(entry).strip()
        try:
            if "/" in text:
                net = ipaddress.IPv4Network(text, strict=True)
                low, high = int(net.network_address), int(net.broadcast_address)
            elif "-" in text:
                first, last = text.split("-", 1)
                low = int(ipaddress.IPv4Address(first.strip()))
                high = int(ipaddress.IPv4Address(last.strip()))
            else:
                low = high = int(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(
                f"return code {entry!r}: not an IPv4 address, range (a-b) or network (a/n)"
            ) from None
        if low > high:
            raise ValueError(f"return code {entry!r}: the range runs backwards")
        loop_low, loop_high = int(_LOOPBACK.network_address), int(_LOOPBACK.broadcast_address)
        if low < loop_low or high > loop_high:
            raise ValueError(f"return code {entry!r}: codes are in 127.0.0.0/8 (rfc5782:2.1)")
        if low >= int(_REFUSED.network_address):
            raise ValueError(
                f"return code {entry!r}: 127.255.255.0/24 means 'query refused', never a listing"
            )
        ranges.append((low, high))
    return tuple(ranges)


@dataclass(frozen=True)
class Zone:
    """One DNS list. ``name`` is normalised (lower case, A-labels, no trailing dot).

    ``codes``: the A values that count (see ``parse_codes``); empty means any
    127.0.0.0/8 value. ``weight`` adds to the result's score when a block zone
    lists. ``ipv4``/``ipv6``: which client address families the zone serves
    (ignored for domain zones). Raises ValueError on a bad value.
    """

    name: str
    kind: Kind = "block"
    codes: tuple[str, ...] = ()
    weight: float = 1.0
    ipv4: bool = True
    ipv6: bool = True
    ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            name = normalize_domain(self.name)
        except AddressError as exc:
            raise ValueError(f"zone {self.name!r}: {exc}") from None
        # rfc5782:2.4 — an IPv6 entry adds 32 one-character labels (64 octets).
        if len(name) > _MAX_NAME - 64:
            raise ValueError(f"zone {self.name!r}: name too long for IPv6 entries")
        if self.kind not in ("block", "allow"):
            raise ValueError(f"zone {name}: kind must be 'block' or 'allow', not {self.kind!r}")
        if not (isinstance(self.weight, int | float) and 0 <= self.weight < math.inf):
            raise ValueError(f"zone {name}: weight must be a finite number >= 0")
        codes = (self.codes,) if isinstance(self.codes, str) else tuple(self.codes)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "codes", codes)
        try:
            object.__setattr__(self, "ranges", parse_codes(codes))
        except ValueError as exc:
            raise ValueError(f"zone {name}: {exc}") from None

    def counts(self, code: int) -> bool:
        return not self.ranges or any(low <= code <= high for low, high in self.ranges)


@dataclass(frozen=True)
class Settings:
    zones: tuple[Zone, ...] = ()  # address zones (rfc5782:2.1, 2.4)
    domain_zones: tuple[Zone, ...] = ()  # domain zones (rfc5782:3)
    timeout: float = 2.0  # seconds for one whole check
    max_domains: int = 20  # distinct names looked up per check_domains
    cache_size: int = 10000  # answers kept; 0 disables the cache
    cache_ttl: float = 300.0  # seconds an answer is reused
    max_inflight: int = 64  # DNS queries running at once (per Lists)
    fetch_reason: bool = True  # ask a listing block zone for its TXT reason
    log_period: float = 600.0  # seconds between two log lines per zone and event

    def __post_init__(self) -> None:
        object.__setattr__(self, "zones", tuple(self.zones))
        object.__setattr__(self, "domain_zones", tuple(self.domain_zones))
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError("dnsbl timeout must be a positive number of seconds")
        if self.max_domains < 0 or self.cache_size < 0 or self.cache_ttl < 0:
            raise ValueError("dnsbl max_domains, cache_size and cache_ttl must not be negative")
        if self.max_inflight < 1:
            raise ValueError("dnsbl max_inflight must be at least 1")


# -- results -------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    zone: str
    subject: str  # the address or domain that is listed
    codes: tuple[str, ...]  # the A values that counted
    weight: float
    reason: str | None = None  # the TXT record, sanitised (printable ASCII, capped)


@dataclass(frozen=True)
class Unanswered:
    zone: str
    subject: str
    why: Why  # timeout, temperror (DNSTempError), refused (error code or wild answer)
    code: str = ""  # the answer, for "refused"


@dataclass(frozen=True)
class IPResult:
    ip: str  # the address as looked up (IPv4-mapped IPv6 unwrapped)
    listed_by: tuple[Listing, ...] = ()  # block zones, in configured order
    allowed_by: tuple[Listing, ...] = ()  # allow zones, in configured order
    score: float = 0.0  # sum of the weights of listed_by
    unanswered: tuple[Unanswered, ...] = ()

    @property
    def listed(self) -> bool:
        return bool(self.listed_by)

    @property
    def allowed(self) -> bool:
        return bool(self.allowed_by)


@dataclass(frozen=True)
class DomainResult:
    domains: tuple[str, ...] = ()  # the normalised names looked up
    invalid: int = 0  # names skipped: IP literals, not a domain name
    truncated: bool = False  # more names than max_domains (or MAX_DOMAIN_CANDIDATES)
    listed_by: tuple[Listing, ...] = ()
    allowed_by: tuple[Listing, ...] = ()
    score: float = 0.0  # each listing block zone counts once, however many names it lists
    unanswered: tuple[Unanswered, ...] = ()


# -- names -------------------------------------------------------------------


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address to look up; raises ValueError. An IPv4-mapped IPv6 address
    (a dual-stack socket's view of an IPv4 client, rfc4291:2.5.5.2) is the IPv4
    client and is looked up as such; a zone index (``%eth0``) is dropped."""
    addr = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def ip_query_name(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    """The DNS name of ``ip`` in ``zone`` (no unwrapping of mapped addresses)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        # rfc5782:2.1 — the octets of the address in reverse order, then the zone.
        labels = reversed(str(addr).split("."))
    else:
        # rfc5782:2.4 — 32 hex nibbles, least significant first, then the zone.
        labels = reversed(f"{int(addr):032x}")
    return ".".join(labels) + "." + zone


def lookup_domain(name: str) -> str | None:
    """A name as a domain zone is asked about it, or None if it cannot be one.

    Lower case, IDNA A-labels, no trailing dot (estafeta.address.normalize_domain);
    IP literals (also ``1.2.3.4.``, ``[…]``, a numeric or ``0x`` last label,
    which browsers read as IPv4) and single-label names are skipped.
    """
    text = name.strip()
    if not text or len(text) > 1024 or text.startswith("["):
        return None
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    try:
        domain = normalize_domain(text)
    except AddressError:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit() or _HEX_LABEL.fullmatch(labels[-1]):
        return None
    return domain


def sanitize(text: str, limit: int = MAX_REASON) -> str:
    """Printable ASCII only (others become "?"), whitespace runs as one space, capped."""
    cleaned = "".join(c if " " <= c <= "~" else ("?" if not c.isspace() else " ") for c in text)
    return " ".join(cleaned.split())[:limit]


def reject_reply(result: IPResult) -> str:
    """The SMTP refusal for a listed client, naming the first listing zone:
    ``554 5.7.1 Service unavailable; client [198.51.100.66] listed by zen.example``
    followed by ``; <TXT reason>`` when the zone gave one. One line, printable
    ASCII, at most 510 characters (rfc5321:4.5.3.1.5)."""
    if not result.listed_by:
        raise ValueError("reject_reply: the client is not listed")
    first = result.listed_by[0]
    text = f"554 5.7.1 Service unavailable; client [{sanitize(result.ip, 64)}] listed by "
    text += sanitize(first.zone, _MAX_NAME)
    if first.reason:
        text += "; " + sanitize(first.reason)
    return text[:_REPLY_MAX]


# -- the checker ---------------------------------------------------------------


class _NotListed:
    """An answer that lists nothing (NXDOMAIN, no A record, codes that do not count)."""


_NOT_LISTED = _NotListed()
_Outcome = Listing | Unanswered | _NotListed | None  # None: no answer yet


@dataclass(frozen=True)
class _Verdict:
    codes: tuple[str, ...] = ()  # values that count
    refused: str = ""  # an error code or a wild answer, when there is one
    meaning: str = ""


class Lists:
    """The checker. One per process (it holds the cache); safe to share between
    sessions of one event loop. ``clock`` drives cache expiry and log throttling."""

    def __init__(
        self,
        resolver: Resolver,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.settings = settings
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, tuple[str, ...]]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[tuple[str, ...]]] = {}
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}

    async def check_ip(self, ip: str) -> IPResult:
        """Look ``ip`` up in all address zones; raises ValueError if it is not an address."""
        addr = client_address(ip)
        family = "ipv4" if addr.version == 4 else "ipv6"
        zones = [z for z in self.settings.zones if getattr(z, family)]
        jobs = [(zone, str(addr), ip_query_name(addr, zone.name)) for zone in zones]
        listed, allowed, unanswered = await self._run(jobs)
        score = sum(item.weight for item in listed)
        return IPResult(str(addr), tuple(listed), tuple(allowed), score, tuple(unanswered))

    async def check_domains(self, domains: Iterable[str]) -> DomainResult:
        """Look up to ``max_domains`` distinct names up in the domain zones (rfc5782:3)."""
        chosen: dict[str, None] = {}  # insertion-ordered set
        invalid, truncated = 0, False
        for count, raw in enumerate(domains):
            if count >= MAX_DOMAIN_CANDIDATES:
                truncated = True
                break
            name = lookup_domain(raw) if isinstance(raw, str) else None
            if name is None:
                invalid += 1
            elif name not in chosen:
                if len(chosen) >= self.settings.max_domains:
                    truncated = True
                    break
                chosen[name] = None
        jobs = [  # rfc5782:3 — the domain name, then the zone
            (zone, name, f"{name}.{zone.name}")
            for name in chosen
            for zone in self.settings.domain_zones
            if len(name) + 1 + len(zone.name) <= _MAX_NAME
        ]
        listed, allowed, unanswered = await self._run(jobs)
        block_zones = {item.zone: item.weight for item in listed}
        return DomainResult(
            tuple(chosen),
            invalid,
            truncated,
            tuple(listed),
            tuple(allowed),
            sum(block_zones.values()),
            tuple(unanswered),
        )

    # -- one check: all queries at once, one deadline --------------------------

    async def _run(
        self, jobs: list[tuple[Zone, str, str]]
    ) -> tuple[list[Listing], list[Listing], list[Unanswered]]:
        outcomes: list[_Outcome] = [None] * len(jobs)
        if jobs:
            tasks = [
                asyncio.ensure_future(self._one(zone, subject, qname, outcomes, i))
                for i, (zone, subject, qname) in enumerate(jobs)
            ]
            try:
                await asyncio.wait(tasks, timeout=self.settings.timeout)
            finally:  # the deadline, or our caller cancelled: stop what is left
                pending = [task for task in tasks if not task.done()]
                for task in pending:
                    task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        listed: list[Listing] = []
        allowed: list[Listing] = []
        unanswered: list[Unanswered] = []
        for (zone, subject, _), outcome in zip(jobs, outcomes, strict=True):
            if outcome is None:
                outcome = Unanswered(zone.name, subject, "timeout")
                self._warn("dnsbl_timeout", zone.name, why="timeout")
            if isinstance(outcome, Unanswered):
                unanswered.append(outcome)
            elif isinstance(outcome, _NotListed):
                pass
            elif zone.kind == "block":
                listed.append(outcome)
            else:
                allowed.append(outcome)
        return listed, allowed, unanswered

    async def _one(
        self,
        zone: Zone,
        subject: str,
        qname: str,
        outcomes: list[_Outcome],
        index: int,
    ) -> None:
        """Fill ``outcomes[index]`` as soon as the A answer is judged, so that a
        deadline hit while fetching the TXT reason keeps the listing."""
        try:
            records = await self._lookup(qname, "A")
        except (DNSTempError, TimeoutError) as exc:
            why: Why = "temperror" if isinstance(exc, DNSTempError) else "timeout"
            failed = Unanswered(zone.name, subject, why)
            outcomes[index] = failed
            self._warn("dnsbl_timeout", zone.name, why=why)
            return
        verdict = self._judge(zone, records)
        if verdict.refused:
            outcomes[index] = Unanswered(zone.name, subject, "refused", verdict.refused)
            self._warn(
                "dnsbl_misconfigured", zone.name, code=verdict.refused, meaning=verdict.meaning
            )
            return
        if not verdict.codes:
            outcomes[index] = _NOT_LISTED
            return
        listing = Listing(zone.name, subject, verdict.codes, float(zone.weight))
        outcomes[index] = listing
        if zone.kind == "block" and self.settings.fetch_reason:
            # rfc5782:2.1 — a DNSBL entry SHOULD have a TXT record with the reason.
            try:
                reasons = await self._lookup(qname, "TXT")
            except (DNSTempError, TimeoutError):
                return
            if reasons:
                outcomes[index] = replace(listing, reason=reasons[0])

    def _judge(self, zone: Zone, records: tuple[str, ...]) -> _Verdict:
        codes: list[str] = []
        for value in records:
            try:
                addr = ipaddress.IPv4Address(value)
            except ValueError:
                return _Verdict(refused=sanitize(str(value), 64), meaning=_WILD)
            # A refusal code or a wild answer anywhere voids the whole answer.
            if addr in _REFUSED:
                meaning = _REFUSED_MEANING.get(int(addr) & 0xFF, "query refused")
                return _Verdict(refused=str(addr), meaning=meaning)
            if addr not in _LOOPBACK:
                return _Verdict(refused=str(addr), meaning=_WILD)
            if zone.counts(int(addr)):
                codes.append(str(addr))
        return _Verdict(codes=tuple(codes))

    # -- DNS: cache, shared in-flight queries, bounded concurrency -------------

    async def _lookup(self, name: str, rdtype: str) -> tuple[str, ...]:
        """A values, or the first TXT reason (sanitised); () when there is none.
        Raises DNSTempError, or TimeoutError after ``timeout`` seconds."""
        key = (name.lower(), rdtype)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a caller hitting its deadline does not cancel the others' query.
        return await asyncio.shield(task)

    def _finished(self, key: tuple[str, str], task: asyncio.Task[tuple[str, ...]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters may all have gone

    async def _fetch(self, key: tuple[str, str]) -> tuple[str, ...]:
        name, rdtype = key
        async with asyncio.timeout(self.settings.timeout), self._slots:
            answer = await self.resolver.lookup(name, rdtype)
        if rdtype == "TXT":
            first = next((str(r) for r in answer.records), "")
            values: tuple[str, ...] = (sanitize(first),) if first else ()
        else:
            values = tuple(str(r) for r in answer.records[:MAX_CODES])
        if self.settings.cache_size and self.settings.cache_ttl > 0:
            self._cache[key] = (self._clock() + self.settings.cache_ttl, values)
            self._cache.move_to_end(key)
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return values

    # -- logging, throttled per zone ---------------------------------------------

    def _warn(self, event: str, zone: str, **fields: str) -> None:
        """Log ``event`` for ``zone`` at most once per ``log_period``, with the
        number of occurrences left out since the previous line."""
        now = self._clock()
        last, suppressed = self._logged.get((event, zone), (-math.inf, 0))
        if now - last < self.settings.log_period:
            self._logged[(event, zone)] = (last, suppressed + 1)
            return
        self._logged[(event, zone)] = (now, 0)
        log_event(log, event, logging.WARNING, zone=zone, suppressed=suppressed, **fields)
