"""DNSSEC answers through DNSPythonResolver: Knot signs, unbound validates.

- signed.example: signed by Knot, its key trusted by unbound: secure;
- plain.example:  unsigned: insecure;
- bogus.example:  signed, but unbound trusts a key it does not have: every
  answer fails validation (SERVFAIL with an Extended DNS Error).

The AD bit is what ``Answer.secure`` reports (rfc4035:3.2.3), asked for with
AD in the query (rfc6840:5.7) and believed from a loopback resolver only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest

from _mailnet import Knot, Unbound
from estafeta.dns import Answer, DNSBogusError, DNSPythonResolver

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

KEY = "ab" * 32
ZONE = [
    "@ MX 10 mx",
    "mx A 192.0.2.25",
    f"_25._tcp.mx TLSA 3 1 1 {KEY}",
    "alias CNAME mx",
]


@dataclass
class Resolvers:
    knot: Knot
    unbound: Unbound

    def via(self, server: Knot | Unbound) -> DNSPythonResolver:
        host, _, port = server.address.partition(":")
        return DNSPythonResolver([(host, int(port))], timeout=3.0)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolvers]:
    root = tmp_path_factory.mktemp("dnssec")
    zones = {"signed.example": ZONE, "plain.example": ZONE, "bogus.example": ZONE}
    knot = Knot(root / "knot", zones, signed=("signed.example", "bogus.example"))
    unbound = Unbound(root / "unbound", knot, bogus=("bogus.example",))
    knot.start()
    try:
        unbound.start()
        try:
            yield Resolvers(knot, unbound)
        finally:
            unbound.stop()
    finally:
        knot.stop()


def lookup(resolver: DNSPythonResolver, name: str, rdtype: str) -> Answer:
    """The answer, its TTL checked (present exactly when there are records) and then
    set aside: a cache counts it down, so it is no value to compare."""
    answer = asyncio.run(resolver.lookup(name, rdtype))
    assert (answer.ttl > 0) == bool(answer.records), answer
    return replace(answer, ttl=0)


def test_signed_zone_answers_are_secure(servers: Resolvers) -> None:
    resolver = servers.via(servers.unbound)
    assert resolver.validating
    assert lookup(resolver, "mx.signed.example", "A") == Answer(("192.0.2.25",), secure=True)
    assert lookup(resolver, "signed.example", "MX") == Answer(
        ((10, "mx.signed.example"),), secure=True
    )
    assert lookup(resolver, "_25._tcp.mx.signed.example", "TLSA") == Answer(
        ((3, 1, 1, bytes.fromhex(KEY)),), secure=True
    )


def test_signed_denials_are_secure(servers: Resolvers) -> None:
    resolver = servers.via(servers.unbound)
    # NODATA and NXDOMAIN, both proven by NSEC records.
    assert lookup(resolver, "mx.signed.example", "AAAA") == Answer((), secure=True)
    assert lookup(resolver, "_25._tcp.nope.signed.example", "TLSA") == Answer(
        (), nxdomain=True, secure=True
    )


def test_cname_expansion(servers: Resolvers) -> None:
    resolver = servers.via(servers.unbound)
    answer = lookup(resolver, "alias.signed.example", "A")
    assert answer == Answer(("192.0.2.25",), secure=True, canonical="mx.signed.example")


def test_unsigned_zone_is_insecure(servers: Resolvers) -> None:
    resolver = servers.via(servers.unbound)
    assert lookup(resolver, "mx.plain.example", "A") == Answer(("192.0.2.25",))
    assert lookup(resolver, "_25._tcp.mx.plain.example", "TLSA").secure is False


def test_bogus_answers_are_a_temporary_error(servers: Resolvers) -> None:
    resolver = servers.via(servers.unbound)
    # rfc7672:2.1.1 — "bogus" is a lookup failure, never an answer.
    with pytest.raises(DNSBogusError):
        lookup(resolver, "_25._tcp.mx.bogus.example", "TLSA")
    with pytest.raises(DNSBogusError):
        lookup(resolver, "bogus.example", "MX")


def test_an_authoritative_server_says_nothing_about_validation(servers: Resolvers) -> None:
    # Knot answers the same signed records, but validates nothing: no AD.
    resolver = servers.via(servers.knot)
    assert lookup(resolver, "mx.signed.example", "A") == Answer(("192.0.2.25",))


def test_ad_from_an_untrusted_resolver_is_ignored(servers: Resolvers) -> None:
    # rfc4033:4.9.3 — only a resolver on loopback is believed.
    assert not DNSPythonResolver([("192.0.2.53", 53)]).validating
    resolver = servers.via(servers.unbound)
    resolver.validating = False  # as if unbound were across the network
    assert lookup(resolver, "mx.signed.example", "A") == Answer(("192.0.2.25",))
