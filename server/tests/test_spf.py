"""SPF (RFC 7208): the official test suite, plus table tests of our own.

The suite (data/rfc7208-tests.yml) is a stream of scenarios, each a ``zonedata``
block (DNS as data) and ``tests`` run against it. Its zone conventions, as the
suite's header and reference driver define them:

- ``TXT`` / ``SPF`` values are a string or a list of character-strings (joined);
- ``SPF`` (type 99) records stand in for TXT records at names that list no TXT
  entry at all: "other sections rely on auto-magic duplication of SPF to TXT
  records (by test suite drivers)". A name with any TXT entry uses only those;
  type 99 itself is never queried (RFC 7208 dropped it);
- ``TXT: NONE`` means "no TXT records here" (and no SPF-to-TXT duplication);
- ``TIMEOUT`` makes every query at the name time out, except for the record
  types listed before it (``spftimeout``: TXT answers, everything else times out);
- ``MX`` values are ``[preference, exchange]``;
- a test's ``result`` is one value or a list of acceptable ones; ``explanation``
  ``DEFAULT`` means "the receiver's default", i.e. no exp= text (None here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from estafeta.dns import Answer, DNSTempError, MockResolver, normalize_name
from estafeta.policy import spf
from estafeta.policy.spf import SPFResult

SUITE_FILE = Path(__file__).parent / "data" / "rfc7208-tests.yml"


class SuiteResolver(MockResolver):
    """MockResolver built from a suite scenario's ``zonedata``."""

    def __init__(self, zonedata: Mapping[str, Sequence[Any]]) -> None:
        super().__init__()
        # name -> record types that still answer when the name times out
        self.timeouts: dict[str, set[str]] = {}
        for owner, entries in zonedata.items():
            name = normalize_name(owner)
            has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
            listed: set[str] = set()
            for entry in entries:
                if entry == "TIMEOUT":
                    self.timeouts[name] = set(listed)
                    continue
                ((rdtype, value),) = entry.items()
                if rdtype == "TXT" and value == "NONE":
                    continue
                if rdtype in ("TXT", "SPF"):
                    value = value if isinstance(value, str) else "".join(value)
                elif rdtype == "MX":
                    value = (int(value[0]), str(value[1]))
                else:
                    value = str(value)
                self.add(name, rdtype, value)
                listed.add(rdtype)
                if rdtype == "SPF" and not has_txt:
                    self.add(name, "TXT", value)

    async def lookup(self, name: str, rdtype: str) -> Answer:
        name, rdtype = normalize_name(name), rdtype.upper()
        seen: set[str] = set()
        while True:
            self.queries.append((name, rdtype))
            answering = self.timeouts.get(name)
            if answering is not None and rdtype not in answering:
                raise DNSTempError(f"{name}/{rdtype}: simulated timeout")
            values = self.records.get((name, rdtype))
            if values is not None:
                return Answer(tuple(values))
            cname = self.records.get((name, "CNAME"))
            if not cname or rdtype == "CNAME":
                return Answer((), nxdomain=not self.exists(name))
            # A CNAME loop is SERVFAIL from a real recursive resolver (the
            # base class would recurse forever, e.g. on ptr-cname-loop).
            if name in seen:
                raise DNSTempError(f"{name}: CNAME loop")
            seen.add(name)
            name = normalize_name(cname[0])


def _load_suite() -> list[Any]:
    params = []
    with SUITE_FILE.open(encoding="utf-8") as stream:
        for scenario in yaml.safe_load_all(stream):
            for name, case in scenario["tests"].items():
                params.append(pytest.param(scenario["zonedata"], case, id=name))
    return params


SUITE = _load_suite()


def test_suite_loaded_completely() -> None:
    assert len(SUITE) == 203


@pytest.mark.parametrize(("zonedata", "case"), SUITE)
def test_rfc7208_suite(zonedata: Mapping[str, Sequence[Any]], case: dict[str, Any]) -> None:
    resolver = SuiteResolver(zonedata)
    verdict = asyncio.run(
        spf.verify(resolver, str(case["host"]), str(case["mailfrom"]), str(case["helo"]))
    )
    expected = case["result"]
    acceptable = expected if isinstance(expected, list) else [expected]
    assert verdict.result in acceptable, verdict.reason
    if "explanation" in case:
        want = None if case["explanation"] == "DEFAULT" else case["explanation"]
        assert verdict.explanation == want


# --- our own table tests --------------------------------------------------------


def _resolver(
    txt: Mapping[str, str | Sequence[str]] | None = None, **other: Mapping[str, Sequence[Any]]
) -> MockResolver:
    """DNS from ``txt={name: record(s)}`` and ``A={name: [...]}`` etc."""
    resolver = MockResolver()
    for name, records in (txt or {}).items():
        resolver.add(name, "TXT", *([records] if isinstance(records, str) else records))
    for rdtype, names in other.items():
        for name, values in names.items():
            resolver.add(name, rdtype, *values)
    return resolver


def run(coro: Any) -> spf.SPFVerdict:
    result: spf.SPFVerdict = asyncio.run(coro)
    return result


INCLUDE_CHAIN = {
    "example.com": "v=spf1 include:_spf.example.com -all",
    "_spf.example.com": "v=spf1 include:_netblocks.example.net ~all",
    "_netblocks.example.net": "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
}


@pytest.mark.parametrize(
    ("ip", "result"),
    [
        ("192.0.2.77", SPFResult.PASS),
        ("2001:db8:1::1", SPFResult.PASS),
        ("::ffff:192.0.2.77", SPFResult.PASS),  # IPv4-mapped is IPv4 (rfc7208:5)
        ("198.51.100.1", SPFResult.FAIL),  # inner fail/softfail: include does not match
        ("2001:db9::1", SPFResult.FAIL),
    ],
)
def test_include_chain(ip: str, result: SPFResult) -> None:
    verdict = run(spf.verify(_resolver(INCLUDE_CHAIN), ip, "alice@example.com", "mx.example.net"))
    assert verdict.result is result
    assert verdict.domain == "example.com"
    assert verdict.identity == "mailfrom"


def test_include_of_domain_without_policy_is_permerror() -> None:
    resolver = _resolver({"example.com": "v=spf1 include:nothing.example.org -all"})
    verdict = run(spf.check_host(resolver, "192.0.2.1", "example.com", "a@example.com"))
    assert verdict.result is SPFResult.PERMERROR
    assert "nothing.example.org" in verdict.reason


def test_redirect_uses_target_policy_and_explanation() -> None:
    resolver = _resolver(
        {
            "example.org": "v=spf1 exp=ignored.example.org redirect=_spf.example.com",
            "_spf.example.com": "v=spf1 a:mail.%{d} -all exp=why.%{d}",
            "why._spf.example.com": "%{i} may not send for %{o} (policy %{d})",
            "ignored.example.org": "not this one",
        },
        A={"mail._spf.example.com": ["192.0.2.25"]},
    )
    ok = run(spf.verify(resolver, "192.0.2.25", "bob@example.org", "mx.example.net"))
    assert ok.result is SPFResult.PASS
    assert ok.domain == "example.org"  # the identity's domain, not the redirect target
    bad = run(spf.verify(resolver, "192.0.2.26", "bob@example.org", "mx.example.net"))
    assert bad.result is SPFResult.FAIL
    assert bad.explanation == "192.0.2.26 may not send for example.org (policy _spf.example.com)"


def test_void_lookup_limit() -> None:
    record = "v=spf1 a:n1.example.com mx:n2.example.com exists:n3.example.com ip4:192.0.2.1 -all"
    resolver = _resolver({"example.com": record})
    over = run(spf.check_host(resolver, "192.0.2.1", "example.com", "a@example.com"))
    assert over.result is SPFResult.PERMERROR
    assert "void" in over.reason
    raised = run(
        spf.check_host(resolver, "192.0.2.1", "example.com", "a@example.com", max_void_lookups=3)
    )
    assert raised.result is SPFResult.PASS


def test_dns_lookup_limit_counts_across_includes() -> None:
    resolver = _resolver(
        {
            "example.com": "v=spf1 include:a.example.com include:b.example.com -all",
            "a.example.com": "v=spf1 a a a",
            "b.example.com": "v=spf1 ip4:192.0.2.1",
        },
        A={"a.example.com": ["198.51.100.1"]},
    )
    # include, a, a, a, include: five terms.
    five = run(spf.check_host(resolver, "192.0.2.1", "example.com", "a@example.com"))
    assert five.result is SPFResult.PASS
    four = run(spf.check_host(resolver, "192.0.2.1", "example.com", "a@example.com", max_lookups=4))
    assert four.result is SPFResult.PERMERROR


@pytest.mark.parametrize("mail_from", ["", "<>"])
def test_null_mail_from_checks_helo(mail_from: str) -> None:
    resolver = _resolver(
        {"mx.example.net": "v=spf1 a -all exp=why.example.net", "why.example.net": "%{s}"},
        A={"mx.example.net": ["192.0.2.10"]},
    )
    ok = run(spf.verify(resolver, "192.0.2.10", mail_from, "mx.example.net"))
    assert (ok.result, ok.domain, ok.identity) == (SPFResult.PASS, "mx.example.net", "helo")
    bad = run(spf.verify(resolver, "192.0.2.11", mail_from, "mx.example.net"))
    assert bad.result is SPFResult.FAIL
    assert bad.explanation == "postmaster@mx.example.net"  # rfc7208:2.4


def test_empty_local_part_is_postmaster() -> None:
    resolver = _resolver(
        {"example.com": "v=spf1 -all exp=why.example.com", "why.example.com": "%{l}"}
    )
    verdict = run(spf.verify(resolver, "192.0.2.1", "<@example.com>", "mx.example.net"))
    assert (verdict.result, verdict.explanation) == (SPFResult.FAIL, "postmaster")


@pytest.mark.parametrize(
    ("helo", "mail_from"),
    [("localhost", ""), ("[192.0.2.1]", ""), ("mx.example.net", "a@[192.0.2.1]")],
)
def test_unusable_identity_is_none(helo: str, mail_from: str) -> None:
    verdict = run(spf.verify(_resolver(), "192.0.2.1", mail_from, helo))
    assert verdict.result is SPFResult.NONE


def test_temperror_and_no_record() -> None:
    resolver = MockResolver(
        {("example.com", "TXT"): ["some other text"]}, temperror=["example.org"]
    )
    assert run(spf.verify(resolver, "192.0.2.1", "a@example.org", "h")).result == "temperror"
    assert run(spf.verify(resolver, "192.0.2.1", "a@example.com", "h")).result == "none"
    assert run(spf.verify(resolver, "192.0.2.1", "a@example.net", "h")).result == "none"


# rfc7208:7.4 expansion examples: sender strong-bad@email.example.com from 192.0.2.3
# (or 2001:db8::cb01), seen through the name an "exists:" mechanism queries.
@pytest.mark.parametrize(
    ("macro", "ip", "expanded"),
    [
        ("%{s}", "192.0.2.3", "strong-bad@email.example.com"),
        ("%{o}", "192.0.2.3", "email.example.com"),
        ("%{d}", "192.0.2.3", "email.example.com"),
        ("%{d4}", "192.0.2.3", "email.example.com"),
        ("%{d3}", "192.0.2.3", "email.example.com"),
        ("%{d2}", "192.0.2.3", "example.com"),
        ("%{d1}", "192.0.2.3", "com"),
        ("%{dr}", "192.0.2.3", "com.example.email"),
        ("%{d2r}", "192.0.2.3", "example.email"),
        ("%{l}", "192.0.2.3", "strong-bad"),
        ("%{l-}", "192.0.2.3", "strong.bad"),
        ("%{lr}", "192.0.2.3", "strong-bad"),
        ("%{lr-}", "192.0.2.3", "bad.strong"),
        ("%{l1r-}", "192.0.2.3", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "192.0.2.3", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "192.0.2.3", "bad.strong.lp._spf.example.com"),
        (
            "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
            "192.0.2.3",
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
        ),
        (
            "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
            "192.0.2.3",
            "3.2.0.192.in-addr.strong.lp._spf.example.com",
        ),
        (
            "%{d2}.trusted-domains.example.net",
            "192.0.2.3",
            "example.com.trusted-domains.example.net",
        ),
        (
            "%{ir}.%{v}._spf.%{d2}",
            "2001:db8::cb01",
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com",
        ),
        ("%{L}.%%%_%-.example.com", "192.0.2.3", "strong-bad.% %20.example.com"),
        ("%{S}", "192.0.2.3", "strong-bad%40email.example.com"),
    ],
)
def test_macro_expansion_examples(macro: str, ip: str, expanded: str) -> None:
    resolver = _resolver({"email.example.com": f"v=spf1 exists:{macro} -all"})
    verdict = run(spf.verify(resolver, ip, "strong-bad@email.example.com", "mx.example.net"))
    assert verdict.result is SPFResult.FAIL
    assert resolver.queries[-1] == (expanded, "A")


def test_explanation_only_macros() -> None:
    resolver = _resolver(
        {
            "example.com": "v=spf1 -all exp=why.example.com",
            "why.example.com": "%{c} via %{r} at %{t}, see https://example.com/?s=%{S}",
        }
    )
    verdict = run(
        spf.verify(resolver, "2001:DB8::1", "a+b@example.com", "h", receiver="mx.example.net")
    )
    assert verdict.explanation is not None
    head, _, tail = verdict.explanation.partition(" at ")
    stamp, _, rest = tail.partition(",")
    assert head == "2001:db8::1 via mx.example.net"
    assert stamp.isdigit()
    assert rest == " see https://example.com/?s=a%2Bb%40example.com"


@pytest.mark.parametrize(
    "record",
    [
        "v=spf1 a:%{c}.example.com -all",  # c, r, t only in explanations (rfc7208:7.2)
        "v=spf1 exists:%{d0}.example.com",  # DIGIT must be nonzero (rfc7208:7.3)
        "v=spf1 a:example.com/24//129",
        "v=spf1 ip4:192.0.2.01",
        "v=spf1 ip6:2001:db8::1%eth0",
        "v=spf1 include:example.com/24",
        "v=spf1 redirect=a.example.com redirect=b.example.com",
        "v=spf1 +redirect=a.example.com",
    ],
)
def test_syntax_errors_are_permerror(record: str) -> None:
    resolver = _resolver({"example.com": record})
    verdict = run(spf.check_host(resolver, "192.0.2.1", "example.com", "a@example.com"))
    assert verdict.result is SPFResult.PERMERROR


def test_mx_and_ptr() -> None:
    resolver = _resolver(
        {"example.com": "v=spf1 mx/24 ptr -all", "example.net": "v=spf1 mx -all"},
        MX={
            "example.com": [(10, "mx1.example.com"), (20, "mx2.example.com")],
            "example.net": [(0, "")],
        },
        A={
            "mx1.example.com": ["198.51.100.1"],
            "mx2.example.com": ["192.0.2.1"],
            "host.example.com": ["203.0.113.9"],
        },
        PTR={"9.113.0.203.in-addr.arpa": ["host.example.com"]},
    )
    check = spf.check_host
    assert run(check(resolver, "192.0.2.200", "example.com", "a@example.com")).result == "pass"
    assert run(check(resolver, "203.0.113.9", "example.com", "a@example.com")).result == "pass"
    assert run(check(resolver, "203.0.113.8", "example.com", "a@example.com")).result == "fail"
    # A null MX (rfc7505) names no hosts.
    assert run(check(resolver, "192.0.2.1", "example.net", "a@example.net")).result == "fail"
