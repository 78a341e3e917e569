"""DNS block/allow lists (estafeta.policy.dnsbl, rfc5782) against MockResolver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from _dnsfakes import Clock, HangingResolver

from estafeta.dns import Answer, MockResolver
from estafeta.policy import dnsbl
from estafeta.policy.dnsbl import Lists, Settings, Zone

T = TypeVar("T")

BL = "bl.example"
BL2 = "bl2.example"
WL = "wl.example"
DBL = "dbl.example"
CLIENT = "198.51.100.66"
CLIENT_NAME = f"66.100.51.198.{BL}"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def lists(
    resolver: MockResolver, *zones: Zone, clock: Clock | None = None, **settings: Any
) -> Lists:
    return Lists(resolver, Settings(zones=zones, **settings), clock=clock or Clock())


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        r.estafeta_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == name
    ]


# -- query names (rfc5782:2.1, 2.4) --------------------------------------------------


def test_ipv4_name_is_the_reversed_octets() -> None:
    # rfc5782:2.1: reversed octets, then the zone
    assert dnsbl.ip_query_name("192.0.2.99", "bad.example.com") == "99.2.0.192.bad.example.com"


def test_ipv6_name_is_32_reversed_nibbles() -> None:
    # rfc5782:2.4: 32 nibbles, least significant first, then the zone
    name = dnsbl.ip_query_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com")
    expected = "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    assert name == expected
    # rfc5782:5 IPv6 test entry ::FFFF:7F00:2, in nibble form (not unwrapped here)
    test = dnsbl.ip_query_name("::FFFF:7F00:2", "z.example")
    assert test == "2.0.0.0.0.0.f.7.f.f.f.f." + "0." * 20 + "z.example"
    assert len(test.split(".")) == 32 + 2


def test_check_ip_queries_the_rfc_names() -> None:
    dns = MockResolver()
    checker = lists(dns, Zone(BL))
    run(checker.check_ip("2001:DB8::1"))
    run(checker.check_ip("192.0.2.7"))
    nibbles = "1." + "0." * 23 + "8.b.d.0.1.0.0.2."
    assert dns.queries == [(nibbles + BL, "A"), ("7.2.0.192." + BL, "A")]


def test_ipv4_mapped_client_is_looked_up_as_ipv4() -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): ["127.0.0.2"]})
    checker = lists(dns, Zone(BL), fetch_reason=False)
    result = run(checker.check_ip("::ffff:198.51.100.66"))
    assert result.listed and result.ip == CLIENT
    assert dns.queries == [(CLIENT_NAME, "A")]


def test_zone_families() -> None:
    dns = MockResolver()
    checker = lists(dns, Zone(BL, ipv6=False), Zone(BL2, ipv4=False))
    run(checker.check_ip("2001:db8::1"))
    run(checker.check_ip("192.0.2.1"))
    nibbles = "1." + "0." * 23 + "8.b.d.0.1.0.0.2."
    assert dns.queries == [(nibbles + BL2, "A"), ("1.2.0.192." + BL, "A")]


def test_not_an_address_raises() -> None:
    checker = lists(MockResolver(), Zone(BL))
    for bad in ("", "mail.example", "999.1.1.1", "[192.0.2.1]"):
        with pytest.raises(ValueError):
            run(checker.check_ip(bad))


# -- what counts as a listing --------------------------------------------------------


def test_rfc5782_test_entries() -> None:
    # rfc5782:5 — 127.0.0.2 is listed, 127.0.0.1 is not.
    dns = MockResolver({(f"2.0.0.127.{BL}", "A"): ["127.0.0.2"]})
    checker = lists(dns, Zone(BL), fetch_reason=False)
    listed = run(checker.check_ip("127.0.0.2"))
    assert listed.listed and listed.listed_by[0].codes == ("127.0.0.2",)
    assert listed.score == 1.0 and not listed.unanswered
    clean = run(checker.check_ip("127.0.0.1"))
    assert not clean.listed and clean.score == 0.0 and not clean.unanswered


@pytest.mark.parametrize(
    ("answer", "codes"),
    [
        (["127.0.0.2"], ("127.0.0.2",)),
        (["127.0.0.11"], ("127.0.0.11",)),
        (["127.0.0.12"], ()),  # outside the configured set: not listed, not an error
        (["127.0.1.3"], ()),
        (["127.0.0.12", "127.0.0.4", "127.0.0.3"], ("127.0.0.4", "127.0.0.3")),
        (["127.0.2.9"], ("127.0.2.9",)),
    ],
)
def test_configured_codes(answer: list[str], codes: tuple[str, ...]) -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): answer})
    zone = Zone(BL, codes=("127.0.0.2-127.0.0.11", "127.0.2.0/24"))
    result = run(lists(dns, zone, fetch_reason=False).check_ip(CLIENT))
    assert result.listed == bool(codes) and not result.unanswered
    if codes:
        assert result.listed_by[0].codes == codes and result.listed_by[0].subject == CLIENT


@pytest.mark.parametrize("code", ["127.255.255.254", "127.255.255.255", "127.255.255.252"])
def test_refusal_codes_are_never_a_listing(code: str, caplog: pytest.LogCaptureFixture) -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): [code]})
    # With no codes configured, and with codes that cover all of 127.0.0.0/8.
    for zone in (Zone(BL), Zone(BL, codes=("127.0.0.0/8",))):
        with caplog.at_level(logging.WARNING, logger="estafeta"):
            result = run(lists(dns, zone).check_ip(CLIENT))
        assert not result.listed and result.score == 0
        assert [(u.zone, u.why, u.code) for u in result.unanswered] == [(BL, "refused", code)]
    logged = events(caplog, "dnsbl_misconfigured")
    assert logged and logged[0]["zone"] == BL and logged[0]["code"] == code
    if code.endswith(".254"):
        assert "public" in logged[0]["meaning"]
    assert (CLIENT_NAME, "TXT") not in dns.queries


def test_refusal_among_listing_codes_voids_the_answer() -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): ["127.0.0.2", "127.255.255.254"]})
    result = run(lists(dns, Zone(BL)).check_ip(CLIENT))
    assert not result.listed and result.unanswered[0].why == "refused"


def test_answer_outside_loopback_is_a_wildcard(caplog: pytest.LogCaptureFixture) -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): ["192.0.2.80"]})
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        result = run(lists(dns, Zone(BL)).check_ip(CLIENT))
    assert not result.listed and result.unanswered[0].code == "192.0.2.80"
    assert events(caplog, "dnsbl_misconfigured")[0]["code"] == "192.0.2.80"


def test_misconfiguration_is_logged_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    dns = MockResolver({(f"{n}.2.0.192.{BL}", "A"): ["127.255.255.254"] for n in range(50)})
    clock = Clock()
    checker = lists(dns, Zone(BL), Zone(BL2), clock=clock, log_period=600)

    async def many(first: int, last: int) -> None:
        for n in range(first, last):
            await checker.check_ip(f"192.0.2.{n}")

    with caplog.at_level(logging.WARNING, logger="estafeta"):
        run(many(0, 40))
        assert len(events(caplog, "dnsbl_misconfigured")) == 1
        clock.now += 601
        run(many(40, 50))
    logged = events(caplog, "dnsbl_misconfigured")
    assert [e["suppressed"] for e in logged] == [0, 39]
    assert checker._logged.keys() == {("dnsbl_misconfigured", BL)}


# -- failures ------------------------------------------------------------------------


def test_temperror_and_hang_are_unanswered_not_listed(caplog: pytest.LogCaptureFixture) -> None:
    slow = "slow.example"
    dns = HangingResolver(
        slow,
        records={(f"66.100.51.198.{BL2}", "A"): ["127.0.0.2"]},
        temperror=[CLIENT_NAME],
    )
    checker = lists(dns, Zone(BL), Zone(slow), Zone(BL2), timeout=0.2, fetch_reason=False)
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        result = run(checker.check_ip(CLIENT))
    assert [z.zone for z in result.listed_by] == [BL2]
    assert result.score == 1.0
    assert {(u.zone, u.why) for u in result.unanswered} == {(BL, "temperror"), (slow, "timeout")}
    assert {(e["zone"], e["why"]) for e in events(caplog, "dnsbl_timeout")} == {
        (BL, "temperror"),
        (slow, "timeout"),
    }
    # Failures are not cached: the next connection asks again.
    before = len(dns.queries)
    run(checker.check_ip(CLIENT))
    assert (CLIENT_NAME, "A") in dns.queries[before:]


def test_deadline_during_txt_keeps_the_listing() -> None:
    dns = HangingResolver("never.example", records={(CLIENT_NAME, "A"): ["127.0.0.2"]})
    dns.add(CLIENT_NAME, "CNAME", "x.never.example")  # the TXT lookup follows it and hangs
    result = run(lists(dns, Zone(BL), timeout=0.2).check_ip(CLIENT))
    assert result.listed and result.listed_by[0].reason is None and not result.unanswered


# -- allow lists and weights ---------------------------------------------------------


def test_allow_zones_and_weights() -> None:
    dns = MockResolver(
        {
            (CLIENT_NAME, "A"): ["127.0.0.2"],
            (f"66.100.51.198.{BL2}", "A"): ["127.0.0.3"],
            (f"66.100.51.198.{WL}", "A"): ["127.0.10.1"],
        }
    )
    zones = (
        Zone(BL, weight=1.5),
        Zone(BL2, weight=2.0),
        Zone("bl3.example", weight=4.0),
        Zone(WL, kind="allow", weight=3.0),
    )
    result = run(lists(dns, *zones, fetch_reason=False).check_ip(CLIENT))
    assert [z.zone for z in result.listed_by] == [BL, BL2]
    assert result.score == 3.5
    assert result.allowed and [(z.zone, z.codes) for z in result.allowed_by] == [
        (WL, ("127.0.10.1",))
    ]
    clean = run(lists(dns, *zones).check_ip("192.0.2.1"))
    assert not clean.allowed and not clean.listed and clean.score == 0


# -- cache ---------------------------------------------------------------------------


def test_cache_hit_and_expiry() -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): ["127.0.0.2"], (CLIENT_NAME, "TXT"): ["spam"]})
    clock = Clock()
    checker = lists(dns, Zone(BL), clock=clock, cache_ttl=300)
    first = run(checker.check_ip(CLIENT))
    run(checker.check_ip("192.0.2.9"))  # a negative answer is cached too
    assert len(dns.queries) == 3
    clock.now += 299
    again = run(checker.check_ip(CLIENT))
    run(checker.check_ip("192.0.2.9"))
    assert again == first and len(dns.queries) == 3
    clock.now += 2
    run(checker.check_ip(CLIENT))
    assert dns.queries[3:] == [(CLIENT_NAME, "A"), (CLIENT_NAME, "TXT")]


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    dns = MockResolver()
    checker = lists(dns, Zone(BL), cache_size=2)
    run(checker.check_ip("192.0.2.1"))
    run(checker.check_ip("192.0.2.2"))
    run(checker.check_ip("192.0.2.1"))  # a hit, and now the most recently used
    assert len(dns.queries) == 2
    run(checker.check_ip("192.0.2.3"))  # evicts .2
    run(checker.check_ip("192.0.2.1"))
    assert len(dns.queries) == 3
    run(checker.check_ip("192.0.2.2"))
    assert dns.queries[-1] == (f"2.2.0.192.{BL}", "A") and len(dns.queries) == 4
    assert len(checker._cache) == 2


def test_cache_disabled() -> None:
    dns = MockResolver()
    checker = lists(dns, Zone(BL), cache_size=0)
    run(checker.check_ip(CLIENT))
    run(checker.check_ip(CLIENT))
    assert len(dns.queries) == 2


def test_concurrent_checks_share_one_query() -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): ["127.0.0.2"]})
    checker = lists(dns, Zone(BL), fetch_reason=False)

    async def flood() -> list[dnsbl.IPResult]:
        return await asyncio.gather(*(checker.check_ip(CLIENT) for _ in range(30)))

    results = run(flood())
    assert all(r.listed for r in results)
    assert dns.queries == [(CLIENT_NAME, "A")]


def test_a_cancelled_check_leaves_the_shared_query_to_the_others() -> None:
    gate = asyncio.Event()

    class Gated(MockResolver):
        async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
            await gate.wait()
            return await super().lookup(name, rdtype, _depth)

    dns = Gated({(CLIENT_NAME, "A"): ["127.0.0.2"]})
    checker = lists(dns, Zone(BL), fetch_reason=False, timeout=30)

    async def scenario() -> tuple[dnsbl.IPResult, int]:
        first = asyncio.ensure_future(checker.check_ip(CLIENT))
        second = asyncio.ensure_future(checker.check_ip(CLIENT))
        for _ in range(5):
            await asyncio.sleep(0)
        first.cancel()  # the client went away
        for _ in range(5):
            await asyncio.sleep(0)
        # Left: the second check, its per-zone task and the shared query; nothing
        # of the cancelled check lives on.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        gate.set()
        result = await second
        with pytest.raises(asyncio.CancelledError):
            await first
        return result, len(others)

    result, alive = run(scenario())
    assert result.listed and dns.queries == [(CLIENT_NAME, "A")]
    assert alive == 3


def test_inflight_queries_are_bounded() -> None:
    active = 0
    peak = 0

    class Slow(MockResolver):
        async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            for _ in range(3):
                await asyncio.sleep(0)
            active -= 1
            return await super().lookup(name, rdtype, _depth)

    dns = Slow()
    zones = [Zone(f"z{n}.example") for n in range(10)]
    checker = lists(dns, *zones, max_inflight=3, timeout=30)
    result = run(checker.check_ip(CLIENT))
    assert len(dns.queries) == 10 and not result.unanswered
    assert peak == 3


# -- TXT reasons and the reply ------------------------------------------------------


def test_reason_is_fetched_for_block_listings_and_sanitised() -> None:
    hostile = "Listed\r\n250 OK\x00 see https://bl.example/?ip=1 \u00e9" + "x" * 500
    dns = MockResolver(
        {
            (CLIENT_NAME, "A"): ["127.0.0.2"],
            (CLIENT_NAME, "TXT"): [hostile, "second"],
            (f"66.100.51.198.{WL}", "A"): ["127.0.0.2"],
        }
    )
    result = run(lists(dns, Zone(BL), Zone(WL, kind="allow")).check_ip(CLIENT))
    reason = result.listed_by[0].reason
    assert reason is not None and reason.startswith(
        "Listed 250 OK? see https://bl.example/?ip=1 ?x"
    )
    assert len(reason) == dnsbl.MAX_REASON and reason.isascii() and reason.isprintable()
    assert (f"66.100.51.198.{WL}", "TXT") not in dns.queries  # allow zones: no reason
    reply = dnsbl.reject_reply(result)
    assert reply.startswith(
        f"554 5.7.1 Service unavailable; client [{CLIENT}] listed by {BL}; Listed 250 OK"
    )
    assert "\r" not in reply and "\n" not in reply and len(reply) <= 510


def test_reason_not_fetched_when_disabled() -> None:
    dns = MockResolver({(CLIENT_NAME, "A"): ["127.0.0.2"], (CLIENT_NAME, "TXT"): ["why"]})
    result = run(lists(dns, Zone(BL), fetch_reason=False).check_ip(CLIENT))
    assert result.listed_by[0].reason is None and (CLIENT_NAME, "TXT") not in dns.queries


def test_reject_reply_text() -> None:
    dns = MockResolver({("66.100.51.198.zen.example", "A"): ["127.0.0.4"]})
    result = run(lists(dns, Zone("Zen.Example."), Zone(BL)).check_ip(CLIENT))
    assert dnsbl.reject_reply(result) == (
        "554 5.7.1 Service unavailable; client [198.51.100.66] listed by zen.example"
    )
    v6 = dnsbl.IPResult("2001:db8::66", (dnsbl.Listing("zen.example", "2001:db8::66", (), 1.0),))
    assert dnsbl.reject_reply(v6).endswith("client [2001:db8::66] listed by zen.example")
    with pytest.raises(ValueError):
        dnsbl.reject_reply(dnsbl.IPResult(CLIENT))


# -- domains (rfc5782:3) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("www.example.com.", "www.example.com"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("192.0.2.1", None),
        ("192.0.2.1.", None),
        ("[192.0.2.1]", None),
        ("2001:db8::1", None),
        ("[2001:db8::1]", None),
        ("0x7f.0x1", None),
        ("localhost", None),
        ("bad_name.example", None),
        ("a..example", None),
        ("", None),
        ("x" * 64 + ".example", None),
        ("a." * 600 + "example", None),
    ],
)
def test_lookup_domain(raw: str, expected: str | None) -> None:
    assert dnsbl.lookup_domain(raw) == expected


def test_check_domains(caplog: pytest.LogCaptureFixture) -> None:
    dns = MockResolver(
        {
            (f"evil.example.{DBL}", "A"): ["127.0.1.2"],
            (f"evil.example.{DBL}", "TXT"): ["phishing"],
            (f"bad.example.{DBL}", "A"): ["127.0.1.2"],
            (f"xn--bcher-kva.example.{DBL}", "A"): ["127.0.1.2"],
            (f"broken.example.{DBL}", "A"): ["127.255.255.252"],
        }
    )
    zones = (Zone(DBL, codes=("127.0.1.0/24",), weight=2.5),)
    checker = Lists(dns, Settings(domain_zones=zones), clock=Clock())
    names = ["EVIL.example.", "evil.example", "192.0.2.1", "bad.example", "fine.example"]
    names += ["Bücher.example", "broken.example", "nope"]
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        result = run(checker.check_domains(names))
    assert result.domains == (
        "evil.example",
        "bad.example",
        "fine.example",
        "xn--bcher-kva.example",
        "broken.example",
    )
    assert result.invalid == 2 and not result.truncated
    assert [(x.subject, x.reason) for x in result.listed_by] == [
        ("evil.example", "phishing"),
        ("bad.example", None),
        ("xn--bcher-kva.example", None),
    ]
    assert result.score == 2.5  # one zone counts once
    assert [(u.subject, u.why) for u in result.unanswered] == [("broken.example", "refused")]
    assert events(caplog, "dnsbl_misconfigured")[0]["zone"] == DBL
    assert all(q[0].endswith("." + DBL) for q in dns.queries)


def test_check_domains_cap() -> None:
    dns = MockResolver()
    checker = Lists(dns, Settings(domain_zones=(Zone(DBL), Zone("d2.example"))), clock=Clock())
    names = [f"Site{n}.example" for n in range(25)]
    result = run(checker.check_domains(n for n in ["site0.example"] * 5 + names))
    assert result.truncated and len(result.domains) == 20
    assert result.domains[:2] == ("site0.example", "site1.example")
    assert len(dns.queries) == 40
    exact = run(Lists(dns, Settings(domain_zones=(Zone(DBL),))).check_domains(names[:20]))
    assert not exact.truncated


def test_check_domains_candidates_bounded() -> None:
    dns = MockResolver()
    checker = Lists(dns, Settings(domain_zones=(Zone(DBL),)), clock=Clock())
    pulled = 0

    def junk() -> Iterator[str]:
        nonlocal pulled
        while pulled < 10 * dnsbl.MAX_DOMAIN_CANDIDATES:
            pulled += 1
            yield "192.0.2.1"

    result = run(checker.check_domains(junk()))
    assert pulled == dnsbl.MAX_DOMAIN_CANDIDATES + 1
    assert result.truncated and result.invalid == dnsbl.MAX_DOMAIN_CANDIDATES
    assert result.domains == () and dns.queries == []


# -- configuration -------------------------------------------------------------------


def test_parse_codes() -> None:
    assert dnsbl.parse_codes(["127.0.0.2", " 127.0.0.4 - 127.0.0.11 ", "127.0.1.0/24"]) == (
        (0x7F000002, 0x7F000002),
        (0x7F000004, 0x7F00000B),
        (0x7F000100, 0x7F0001FF),
    )
    assert dnsbl.parse_codes("127.0.0.2") == ((0x7F000002, 0x7F000002),)
    assert dnsbl.parse_codes([]) == ()


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.300",
        "10.0.0.2",
        "127.0.0.9-127.0.0.2",
        "127.0.0.2-128.0.0.1",
        "127.0.0.1/24",
        "127.255.255.254",
        "127.255.255.0/24",
        "zen",
    ],
)
def test_parse_codes_names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.").replace("[", r"\[")):
        dnsbl.parse_codes(["127.0.0.2", bad])


def test_zone_validation() -> None:
    zone = Zone("ZEN.Example.", codes=["127.0.0.2"], weight=2)  # type: ignore[arg-type]
    assert zone.name == "zen.example" and zone.codes == ("127.0.0.2",)
    with pytest.raises(ValueError, match=r"zen\.example: return code '10\.0\.0\.1'"):
        Zone("zen.example", codes=("10.0.0.1",))
    for bad in (
        {"name": "bad zone"},
        {"name": ""},
        {"name": "a" * 60 + "." + "b" * 60 + "." + "c" * 60 + ".example"},
        {"name": BL, "kind": "deny"},
        {"name": BL, "weight": float("nan")},
        {"name": BL, "weight": -1},
    ):
        with pytest.raises(ValueError):
            Zone(**bad)
    with pytest.raises(ValueError):
        Settings(timeout=0)
    with pytest.raises(ValueError):
        Settings(max_inflight=0)


def test_no_zones_no_queries() -> None:
    dns = MockResolver()
    checker = Lists(dns, Settings(), clock=Clock())
    assert run(checker.check_ip(CLIENT)) == dnsbl.IPResult(CLIENT)
    assert run(checker.check_domains(["evil.example"])).listed_by == ()
    assert dns.queries == []
