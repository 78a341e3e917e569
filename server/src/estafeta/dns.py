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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

RECORD_TYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME", "TLSA", "NS", "SOA")


class DNSTempError(Exception):
    """A lookup that may work later: timeout, SERVFAIL, no reachable server."""


@dataclass(frozen=True)
class Answer:
    records: tuple[Any, ...] = ()
    # True when the name does not exist at all (rcode NXDOMAIN).
    nxdomain: bool = False


class Resolver(Protocol):
    async def lookup(self, name: str, rdtype: str) -> Answer:
        """Records of ``rdtype`` at ``name``; raises DNSTempError."""
        ...


def normalize_name(name: str) -> str:
    return name.strip().rstrip(".").lower()


def reverse_name(ip: str) -> str:
    """The PTR owner name of an address (in-addr.arpa / ip6.arpa)."""
    return ipaddress.ip_address(ip).reverse_pointer


class MockResolver:
    """DNS as a dict: ``{(name, rdtype): [records]}``; for tests and fixtures.

    ``temperror`` lists names (or ``(name, rdtype)`` pairs) whose lookups raise
    DNSTempError. A name with any record of any type exists; all others are
    NXDOMAIN. ``queries`` records every lookup, in order.
    """

    def __init__(
        self,
        records: Mapping[tuple[str, str], Sequence[Any]] | None = None,
        temperror: Iterable[str | tuple[str, str]] = (),
    ) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}
        for (name, rdtype), values in (records or {}).items():
            self.add(name, rdtype, *values)
        self.temperror: set[str | tuple[str, str]] = set()
        for item in temperror:
            if isinstance(item, tuple):
                self.temperror.add((normalize_name(item[0]), item[1].upper()))
            else:
                self.temperror.add(normalize_name(item))
        self.queries: list[tuple[str, str]] = []

    def add(self, name: str, rdtype: str, *values: Any) -> None:
        key = (normalize_name(name), rdtype.upper())
        self.records.setdefault(key, []).extend(values)

    def exists(self, name: str) -> bool:
        name = normalize_name(name)
        return any(owner == name for owner, _ in self.records)

    async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
        name, rdtype = normalize_name(name), rdtype.upper()
        self.queries.append((name, rdtype))
        if name in self.temperror or (name, rdtype) in self.temperror:
            raise DNSTempError(f"{name}/{rdtype}: simulated timeout")
        values = self.records.get((name, rdtype))
        if values is not None:
            return Answer(tuple(values))
        cname = self.records.get((name, "CNAME"))
        if cname and rdtype != "CNAME":
            if _depth >= 8:  # a CNAME loop: a resolver gives up with SERVFAIL
                raise DNSTempError(f"{name}/{rdtype}: CNAME chain too long")
            return await self.lookup(cname[0], rdtype, _depth + 1)
        return Answer((), nxdomain=not self.exists(name))


class DNSPythonResolver:
    """The real resolver: dnspython's asyncio stub resolver.

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
        import dns.nameserver

        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)
        if not recursion:
            resolver.set_flags(0)  # dnspython sets RD by default
        self._resolver = resolver

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
        except dns.resolver.NXDOMAIN:
            return Answer((), nxdomain=True)
        except dns.resolver.NoAnswer:
            return Answer(())
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DNSTempError(f"{name}/{rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DNSTempError(f"{name}/{rdtype}: {exc}") from None
        if answer.rrset is None:
            return Answer(())
        return Answer(tuple(_value(rdtype, rdata) for rdata in answer.rrset))


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
