"""DNS as the policy code sees it: one small async interface, two implementations.

Policy code (SPF, DKIM, DMARC, MTA-STS, MX routing) never imports dnspython:
it takes a ``Resolver`` and calls ``lookup(name, rdtype)``. In the server that
is ``DNSPythonResolver`` (dnspython's async resolver, the nameservers from
``[dns] nameservers`` or /etc/resolv.conf); in tests it is ``MockResolver``,
DNS described as data.

Record values by type (names are lower case, without the trailing dot):

- ``A``, ``AAAA``: the address as text;
- ``MX``: ``(preference, exchange)``; a null MX (rfc7505) has exchange ``""``;
- ``TXT``: the character-strings of one record joined without separator
  (rfc7208:3.3, rfc6376:3.6.2.2), decoded as UTF-8 with surrogateescape;
- ``PTR``, ``CNAME``: the target name;
- ``TLSA``: ``(usage, selector, mtype, data-bytes)``;
- ``NS``: the name server's name; ``SOA``: ``(primary name server, serial)``
  (``estafeta doctor`` finds a zone's authoritative servers with them).

DNSSEC (for DANE, rfc7672): ``Answer.secure`` is the AD bit of the answer
from a validating resolver (rfc4035:3.2.3), asked for with the AD bit in the
query (rfc6840:5.7) rather than DO, so that no RRSIGs travel. An answer is
only as trustworthy as the path to the resolver (rfc4033:4.9.3): the AD bit is
believed only when every configured nameserver is a loopback address (the
resolver role runs unbound on 127.0.0.1); otherwise ``secure`` is always
False and ``DNSPythonResolver.validating`` says so. A "bogus" or
"indeterminate" answer (rfc4035:4.3) is a SERVFAIL from the validating
resolver, so a ``DNSTempError``; when the resolver says why in an Extended
DNS Error (rfc8914:4, unbound with ``ede: yes``) and the reason is DNSSEC,
it is the subclass ``DNSBogusError``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

RECORD_TYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME", "TLSA", "NS", "SOA")


class DNSTempError(Exception):
    """A lookup that may work later: timeout, SERVFAIL, no reachable server."""


class DNSBogusError(DNSTempError):
    """SERVFAIL because the answer failed DNSSEC validation (rfc4035:4.3 "bogus")."""


# rfc8914:4 — Extended DNS Error codes that mean "DNSSEC validation failed":
# 5 Indeterminate, 6 Bogus, 7 Signature Expired, 8 Signature Not Yet Valid,
# 9 DNSKEY Missing, 10 RRSIGs Missing, 11 No Zone Key Bit Set, 12 NSEC Missing.
DNSSEC_EDE_CODES = frozenset(range(5, 13))


@dataclass(frozen=True)
class Answer:
    records: tuple[Any, ...] = ()
    # True when the name does not exist at all (rcode NXDOMAIN).
    nxdomain: bool = False
    # True when a validating resolver we trust set the AD bit: the records,
    # or the denial of their existence, are DNSSEC-authenticated.
    secure: bool = False
    # The name after CNAME expansion, when it differs from the name asked.
    canonical: str = ""
    # The TTL of the records as the resolver gave it (rfc1035:3.2.1; what is
    # left of it in the resolver's cache); 0 when there are no records.
    ttl: int = 0


class Resolver(Protocol):
    async def lookup(self, name: str, rdtype: str) -> Answer:
        """Records of ``rdtype`` at ``name``; raises DNSTempError."""
        ...


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def reverse_name(ip: str) -> str:
    """The PTR owner name of an address (in-addr.arpa / ip6.arpa)."""
    return ipaddress.ip_address(ip).reverse_pointer


def _keys(items: Iterable[str | tuple[str, str]]) -> set[str | tuple[str, str]]:
    keys: set[str | tuple[str, str]] = set()
    for item in items:
        if isinstance(item, tuple):
            keys.add((normalize_name(item[0]), item[1].upper()))
        else:
            keys.add(normalize_name(item))
    return keys


class MockResolver:
    """DNS as a dict: ``{(name, rdtype): [records]}``; for tests and fixtures.

    ``temperror`` lists names (or ``(name, rdtype)`` pairs) whose lookups raise
    DNSTempError; ``bogus`` likewise, raising DNSBogusError (a SERVFAIL from
    a validating resolver). A name with any record of any type exists; all
    others are NXDOMAIN. ``signed`` lists zones: answers for names at or
    below them are DNSSEC-secure, denials of existence included, unless the
    name (or pair) is in ``insecure``. A CNAME answer is secure when every
    step is. Answers with records carry ``ttl``. ``queries`` records every
    lookup, in order.
    """

    # Its answers' ``secure`` flags are believed (DNSPythonResolver.validating).
    validating = True

    def __init__(
        self,
        records: Mapping[tuple[str, str], Sequence[Any]] | None = None,
        temperror: Iterable[str | tuple[str, str]] = (),
        *,
        signed: Iterable[str] = (),
        insecure: Iterable[str | tuple[str, str]] = (),
        bogus: Iterable[str | tuple[str, str]] = (),
        ttl: int = 0,
    ) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}
        self.ttl = ttl
        for (name, rdtype), values in (records or {}).items():
            self.add(name, rdtype, *values)
        self.temperror = _keys(temperror)
        self.bogus = _keys(bogus)
        self.insecure = _keys(insecure)
        self.signed: set[str] = {normalize_name(zone) for zone in signed}
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, rdtype: str, *values: Any) -> None:
        key = (normalize_name(name), rdtype.upper())
        self.records.setdefault(key, []).extend(values)

    def exists(self, name: str) -> bool:
        name = normalize_name(name)
        return any(owner == name for owner, _ in self.records)

    def is_secure(self, name: str, rdtype: str) -> bool:
        name, rdtype = normalize_name(name), rdtype.upper()
        if name in self.insecure or (name, rdtype) in self.insecure:
            return False
        return any(name == zone or name.endswith("." + zone) for zone in self.signed)

    async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
        name, rdtype = normalize_name(name), rdtype.upper()
        self.queries.append((name, rdtype))
        if name in self.bogus or (name, rdtype) in self.bogus:
            raise DNSBogusError(f"{name}/{rdtype}: simulated DNSSEC validation failure")
        if name in self.temperror or (name, rdtype) in self.temperror:
            raise DNSTempError(f"{name}/{rdtype}: simulated timeout")
        secure = self.is_secure(name, rdtype)
        values = self.records.get((name, rdtype))
        if values is not None:
            return Answer(tuple(values), secure=secure, ttl=self.ttl if values else 0)
        cname = self.records.get((name, "CNAME"))
        if cname and rdtype != "CNAME":
            if _depth >= 8:  # a CNAME loop: a resolver gives up with SERVFAIL
                raise DNSTempError(f"{name}/{rdtype}: CNAME chain too long")
            target = await self.lookup(cname[0], rdtype, _depth + 1)
            return replace(
                target,
                secure=secure and target.secure,
                canonical=target.canonical or normalize_name(cname[0]),
            )
        return Answer((), nxdomain=not self.exists(name), secure=secure)


class DNSPythonResolver:
    """The real resolver: dnspython's asyncio stub resolver.

    Queries carry EDNS0 and the AD bit (rfc6840:5.7: "tell me whether you
    validated"); ``validating`` is True when the AD bit of answers is
    believed, i.e. every nameserver is on loopback (rfc4033:4.9.3).

    ``recursion=False`` clears the RD bit: the way to ask a zone's
    authoritative server what it serves itself (rfc1035:4.1.1).
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        timeout: float = 5.0,
        *,
        recursion: bool = True,
    ) -> None:
        import dns.asyncresolver
        import dns.flags
        import dns.nameserver

        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)
        # rfc6891 EDNS0 (room for TLSA RRsets) and rfc6840:5.7 AD in the query.
        resolver.use_edns(0, 0, 1232)
        resolver.flags = (dns.flags.RD if recursion else 0) | dns.flags.AD
        self._resolver = resolver
        servers = list(resolver.nameservers)
        self.validating = bool(servers) and all(map(_loopback, servers))

    async def lookup(self, name: str, rdtype: str) -> Answer:
        import dns.exception
        import dns.name
        import dns.resolver

        name, rdtype = normalize_name(name), rdtype.upper()
        if rdtype not in RECORD_TYPES:
            raise ValueError(f"unsupported record type {rdtype}")
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            # A name that cannot be a DNS name does not exist.
            return Answer((), nxdomain=True)
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            # rfc4035:3.2.3 — AD on an NXDOMAIN: the denial of existence validated.
            responses = list(exc.kwargs.get("responses", {}).values())
            secure = bool(responses) and all(map(self._ad, responses))
            return Answer((), nxdomain=True, secure=secure)
        except dns.resolver.NoAnswer:
            return Answer(())
        except dns.resolver.NoNameservers as exc:
            if _bogus(exc):
                raise DNSBogusError(f"{name}/{rdtype}: DNSSEC validation failed: {exc}") from None
            raise DNSTempError(f"{name}/{rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DNSTempError(f"{name}/{rdtype}: {exc}") from None
        secure = self._ad(answer.response)
        canonical = normalize_name(answer.canonical_name.to_text())
        canonical = "" if canonical == name else canonical
        if answer.rrset is None:
            return Answer((), secure=secure, canonical=canonical)
        records = tuple(_value(rdtype, rdata) for rdata in answer.rrset)
        return Answer(records, secure=secure, canonical=canonical, ttl=int(answer.rrset.ttl))

    def _ad(self, response: Any) -> bool:
        import dns.flags

        # rfc4035:3.2.3 — AD: every RRset in the answer (and the denial) validated.
        return self.validating and bool(response.flags & dns.flags.AD)


def _loopback(nameserver: Any) -> bool:
    """Whether a nameserver (an address, or a dnspython Nameserver) is on loopback."""
    try:
        return ipaddress.ip_address(getattr(nameserver, "address", nameserver)).is_loopback
    except (TypeError, ValueError):
        return False  # a DoH URL, say


def _bogus(exc: Any) -> bool:
    """Whether a resolver's SERVFAIL says, in an rfc8914 EDE option, that DNSSEC failed."""
    for error in exc.kwargs.get("errors") or ():
        response = error[4] if len(error) > 4 else None
        for option in getattr(response, "options", ()):
            if getattr(option, "code", None) in DNSSEC_EDE_CODES:
                return True
    return False


def _value(rdtype: str, rdata: Any) -> Any:
    if rdtype in ("A", "AAAA"):
        return str(rdata.address)
    if rdtype == "MX":
        return (int(rdata.preference), normalize_name(rdata.exchange.to_text()))
    if rdtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "surrogateescape")
    if rdtype in ("PTR", "CNAME", "NS"):
        return normalize_name(rdata.target.to_text())
    if rdtype == "SOA":
        return (normalize_name(rdata.mname.to_text()), int(rdata.serial))
    if rdtype == "TLSA":
        return (int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))
    raise ValueError(rdtype)
