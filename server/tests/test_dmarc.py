"""DMARC (estafeta.policy.dmarc): records, domains, alignment, evaluation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from estafeta.dns import MockResolver
from estafeta.policy import dmarc
from estafeta.policy.dkim import DKIMResult
from estafeta.policy.dmarc import DMARCRecord, DMARCSyntaxError

# -- records -------------------------------------------------------------------------


def record(**changes: object) -> DMARCRecord:
    fields: dict[str, object] = {
        "policy": "none",
        "subdomain_policy": "none",
        "adkim": "r",
        "aspf": "r",
        "pct": 100,
        "rua": (),
        "ruf": (),
        "fo": "0",
    }
    fields.update(changes)
    return DMARCRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("txt", "expected"),
    [
        ("v=DMARC1; p=none", record()),
        ("v=DMARC1;p=reject;", record(policy="reject", subdomain_policy="reject")),
        (
            "v=DMARC1; p=quarantine; sp=reject; adkim=s; aspf=s; pct=50; fo=1:d",
            record(
                policy="quarantine",
                subdomain_policy="reject",
                adkim="s",
                aspf="s",
                pct=50,
                fo="1:d",
            ),
        ),
        (
            "v=DMARC1; p=reject; rua=mailto:a@example.test!10m, mailto:b@example.test; "
            "ruf=mailto:f@example.test",
            record(
                policy="reject",
                subdomain_policy="reject",
                rua=("mailto:a@example.test!10m", "mailto:b@example.test"),
                ruf=("mailto:f@example.test",),
            ),
        ),
        # Tag names and policy values are case-insensitive; whitespace is free.
        ("v = DMARC1 ;  P = Reject ; SP=None", record(policy="reject", subdomain_policy="none")),
        # Unknown tags are ignored (rfc7489:6.3).
        ("v=DMARC1; p=none; np=reject; psd=y; ri=3600; x_future=1", record()),
        # ...and so are malformed ones after v= (rfc7489:6.3 "SHOULD be discarded").
        (
            "v=DMARC1; p=reject; x-future=1; junk; =3",
            record(policy="reject", subdomain_policy="reject"),
        ),
        # Invalid values of optional tags fall back to their defaults (rfc7489:6.3).
        ("v=DMARC1; p=none; adkim=x; aspf=relaxed; fo=9", record()),
        # rfc7489:6.6.3 step 6: no valid p= but a valid rua= → act as p=none.
        ("v=DMARC1; rua=mailto:d@example.test", record(rua=("mailto:d@example.test",))),
        ("v=DMARC1; p=block; rua=mailto:d@example.test", record(rua=("mailto:d@example.test",))),
        (
            "v=DMARC1; p=reject; sp=bogus; rua=mailto:d@example.test",
            record(rua=("mailto:d@example.test",)),
        ),
        # Invalid report URIs are dropped.
        (
            "v=DMARC1; p=none; rua=not a uri, mailto:ok@example.test",
            record(rua=("mailto:ok@example.test",)),
        ),
    ],
)
def test_parse_record(txt: str, expected: DMARCRecord) -> None:
    assert dmarc.parse_record(txt) == expected


@pytest.mark.parametrize(
    ("pct", "expected"),
    [("0", 0), ("1", 1), ("100", 100), ("101", 100), ("-1", 100), ("fifty", 100), ("", 100)],
)
def test_pct_bounds(pct: str, expected: int) -> None:
    # Out-of-range pct= is a syntax error in an optional tag: the default
    # (100) applies (rfc7489:6.3).
    assert dmarc.parse_record(f"v=DMARC1; p=reject; pct={pct}").pct == expected


@pytest.mark.parametrize(
    ("txt", "message"),
    [
        ("", "empty record"),
        ("p=reject", "must start with v=DMARC1"),
        ("p=reject; v=DMARC1", "must start with v=DMARC1"),
        ("v=dmarc1; p=reject", "must start with v=DMARC1"),
        ("v=DMARC2; p=reject", "must start with v=DMARC1"),
        ("v=DMARC1", "no p= tag"),
        ("v=DMARC1; p=block", "invalid p=block"),
        ("v=DMARC1; p=reject; sp=block", "invalid sp=block"),
        # rua= without a valid URI does not rescue a missing p=.
        ("v=DMARC1; rua=bogus", "no p= tag"),
        ("v=DMARC1; p=none; p=reject", "duplicate tag p="),
    ],
)
def test_parse_record_errors(txt: str, message: str) -> None:
    with pytest.raises(DMARCSyntaxError, match=message):
        dmarc.parse_record(txt)
    assert issubclass(DMARCSyntaxError, ValueError)


# -- domains and alignment ------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.co.uk", "example.co.uk"),
        ("mail.example.co.uk", "example.co.uk"),
        ("a.b.example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("example.test", "example.test"),  # unknown TLD: "*" rule
        ("co.uk", "co.uk"),  # a public suffix is its own organizational domain
        ("bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert dmarc.organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("a", "b", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),
        ("example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "r", True),
        ("mail.example.com", "example.com", "s", False),
        ("a.example.com", "b.example.com", "r", True),
        ("EXAMPLE.com.", "example.COM", "s", True),
        ("example.com", "example.net", "r", False),
        ("example.co.uk", "other.co.uk", "r", False),  # the org domain is not co.uk
        ("a.example.co.uk", "example.co.uk", "r", True),
        ("", "example.com", "r", False),
    ],
)
def test_aligned(a: str, b: str, mode: str, expected: bool) -> None:
    assert dmarc.aligned(a, b, mode) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"From: alice@Example.TEST\r\nTo: bob@example.net\r\n\r\n", "example.test"),
        (b"From: Alice <alice@example.test>\r\n\r\nbody\r\n", "example.test"),
        (b"To: x@y.test\r\nFROM: <alice@mail.example.test>\r\n", "mail.example.test"),
        (b'From: "Spoof@evil.test" <alice@example.test>\r\n\r\n', "example.test"),
        (
            b"From: =?utf-8?q?J=C3=B6rg_=3Cjoerg=40evil=2Etest=3E?= <joerg@example.test>\r\n",
            "example.test",
        ),
        (b"From: =?iso-8859-1?b?SvZyZw==?= <joerg@example.test>\r\n", "example.test"),
        (b"From: Alice\r\n <alice@example.test> (work)\r\n\r\n", "example.test"),
        ("From: Jörg <joerg@bücher.example>\r\n".encode(), "xn--bcher-kva.example"),
        (b"From: joerg@XN--BCHER-KVA.example\r\n", "xn--bcher-kva.example"),
        # Two From fields, none, several mailboxes, a group: not processable.
        (b"From: alice@example.test\r\nFrom: mallory@evil.test\r\n\r\n", None),
        (b"To: bob@example.net\r\n\r\n", None),
        (b"From: alice@example.test, mallory@evil.test\r\n\r\n", None),
        (b"From: team: alice@example.test;\r\n\r\n", None),
        (b"From: team: alice@example.test, bob@example.test;\r\n\r\n", None),
        (b"From: undisclosed\r\n\r\n", None),
        (b"From: <>\r\n\r\n", None),
        (b"From: alice@[192.0.2.1]\r\n\r\n", None),
        (b"From: <alice@example.test> junk <mallory@evil.test>\r\n\r\n", None),
        (b"From: alice@exa mple.test\r\n\r\n", None),
    ],
)
def test_from_domain(headers: bytes, expected: str | None) -> None:
    assert dmarc.from_domain(headers) == expected


def test_from_domain_ignores_body() -> None:
    assert dmarc.from_domain(b"From: a@example.test\r\n\r\nFrom: b@evil.test\r\n") == "example.test"


# -- evaluation -------------------------------------------------------------------------


def dkim_pass(domain: str) -> DKIMResult:
    return DKIMResult("pass", domain, "s1", "rsa-sha256", "good signature", "abcdefgh")


def dkim_fail(domain: str) -> DKIMResult:
    return DKIMResult("fail", domain, "s1", "rsa-sha256", "body hash did not verify", "abcdefgh")


DNS = {
    ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r"],
    ("_dmarc.relaxed.test", "TXT"): ["v=DMARC1; p=reject"],
    ("_dmarc.sampled.test", "TXT"): ["v=DMARC1; p=reject; pct=0"],
    ("_dmarc.sampledq.test", "TXT"): ["v=DMARC1; p=quarantine; pct=0"],
    ("_dmarc.half.test", "TXT"): ["v=DMARC1; p=reject; pct=50"],
    ("_dmarc.own.example.com", "TXT"): ["v=DMARC1; p=none"],
    ("_dmarc.noise.test", "TXT"): ["google-site-verification=abc", "v=DMARC1; p=quarantine"],
    ("_dmarc.twice.test", "TXT"): ["v=DMARC1; p=none", "v=DMARC1; p=reject"],
    ("_dmarc.broken.test", "TXT"): ["v=DMARC1; p=block"],
    ("_dmarc.other.test", "TXT"): ["spf1 is not dmarc"],
}


def evaluate(
    from_domain: str,
    *,
    spf: tuple[str, str] = ("fail", ""),
    dkim: Sequence[DKIMResult] = (),
    rng: random.Random | None = None,
    resolver: MockResolver | None = None,
) -> dmarc.DMARCResult:
    return asyncio.run(
        dmarc.verify(
            resolver or MockResolver(DNS),
            from_domain,
            spf_result=spf[0],
            spf_domain=spf[1],
            dkim=dkim,
            rng=rng,
        )
    )


@pytest.mark.parametrize(
    ("from_domain", "spf", "dkim", "result", "policy"),
    [
        # SPF aligned pass (aspf=r: a subdomain of the org domain aligns).
        ("example.com", ("pass", "bounces.example.com"), [], "pass", "none"),
        ("example.com", ("pass", "example.com"), [], "pass", "none"),
        # SPF pass for an unrelated domain does not align.
        ("example.com", ("pass", "example.net"), [], "fail", "reject"),
        ("example.com", ("softfail", "example.com"), [], "fail", "reject"),
        # DKIM aligned pass; adkim=s needs the exact domain.
        ("example.com", ("fail", ""), [dkim_pass("example.com")], "pass", "none"),
        ("example.com", ("fail", ""), [dkim_pass("mail.example.com")], "fail", "reject"),
        ("example.com", ("fail", ""), [dkim_fail("example.com")], "fail", "reject"),
        (
            "example.com",
            ("none", ""),
            [dkim_pass("example.net"), dkim_pass("example.com")],
            "pass",
            "none",
        ),
        # Relaxed DKIM alignment (the default) accepts a parent/sibling domain.
        ("relaxed.test", ("fail", ""), [dkim_pass("mail.relaxed.test")], "pass", "none"),
        ("news.relaxed.test", ("fail", ""), [dkim_pass("relaxed.test")], "pass", "none"),
        ("relaxed.test", ("fail", ""), [dkim_pass("relaxed.example")], "fail", "reject"),
        # sp= for a subdomain whose policy came from the org domain.
        ("mail.example.com", ("fail", ""), [], "fail", "quarantine"),
        # ...but a subdomain with its own record uses that record's p=.
        ("own.example.com", ("fail", ""), [], "fail", "none"),
        # Non-DMARC TXT records at _dmarc are discarded (rfc7489:6.6.3).
        ("noise.test", ("fail", ""), [], "fail", "quarantine"),
    ],
)
def test_verify(
    from_domain: str,
    spf: tuple[str, str],
    dkim: list[DKIMResult],
    result: str,
    policy: str,
) -> None:
    outcome = evaluate(from_domain, spf=spf, dkim=dkim)
    assert (outcome.result, outcome.policy) == (result, policy)
    assert outcome.from_domain == from_domain
    assert outcome.record is not None


def test_org_domain_fallback_queries() -> None:
    resolver = MockResolver(DNS)
    outcome = evaluate("a.b.example.com", resolver=resolver)
    assert resolver.queries == [("_dmarc.a.b.example.com", "TXT"), ("_dmarc.example.com", "TXT")]
    assert outcome.result == "fail"
    assert outcome.policy == "quarantine"  # sp=
    assert outcome.record == dmarc.parse_record(DNS[("_dmarc.example.com", "TXT")][0])


def test_org_domain_itself_uses_p() -> None:
    resolver = MockResolver(DNS)
    outcome = evaluate("example.com", resolver=resolver)
    assert resolver.queries == [("_dmarc.example.com", "TXT")]
    assert outcome.policy == "reject"


def test_pct_zero_downgrades_with_seeded_rng() -> None:
    outcome = evaluate("sampled.test", rng=random.Random(1))
    assert (outcome.result, outcome.policy) == ("fail", "quarantine")
    assert "not sampled at pct=0" in outcome.reason
    outcome = evaluate("sampledq.test", rng=random.Random(1))
    assert (outcome.result, outcome.policy) == ("fail", "none")


def test_pct_sampling_is_driven_by_the_rng() -> None:
    rng = random.Random(42)
    expected_rng = random.Random(42)
    policies = [evaluate("half.test", rng=rng).policy for _ in range(200)]
    expected = ["reject" if expected_rng.randrange(100) < 50 else "quarantine" for _ in range(200)]
    assert policies == expected
    assert 60 < policies.count("reject") < 140


def test_pass_is_not_affected_by_pct() -> None:
    outcome = evaluate("sampled.test", spf=("pass", "sampled.test"), rng=random.Random(1))
    assert (outcome.result, outcome.policy) == ("pass", "none")


def test_no_record() -> None:
    resolver = MockResolver(DNS)
    outcome = evaluate("nothing.example.org", resolver=resolver)
    assert outcome == dmarc.DMARCResult(
        "none", "nothing.example.org", "none", None, "no DMARC record"
    )
    assert resolver.queries == [
        ("_dmarc.nothing.example.org", "TXT"),
        ("_dmarc.example.org", "TXT"),
    ]
    assert evaluate("other.test").result == "none"


def test_temperror() -> None:
    resolver = MockResolver(DNS, temperror=["_dmarc.example.com"])
    outcome = evaluate("mail.example.com", resolver=resolver)
    assert (outcome.result, outcome.policy, outcome.record) == ("temperror", "none", None)
    outcome = evaluate("example.com", resolver=resolver, dkim=[dkim_pass("example.com")])
    assert outcome.result == "temperror"


@pytest.mark.parametrize(
    ("domain", "reason"),
    [("twice.test", "multiple DMARC records"), ("broken.test", "invalid p=block")],
)
def test_permerror(domain: str, reason: str) -> None:
    outcome = evaluate(domain)
    assert (outcome.result, outcome.policy, outcome.record) == ("permerror", "none", None)
    assert reason in outcome.reason


def test_idn_from_domain_is_looked_up_as_a_label() -> None:
    resolver = MockResolver({("_dmarc.xn--bcher-kva.example", "TXT"): ["v=DMARC1; p=reject"]})
    outcome = evaluate(
        "Bücher.example", resolver=resolver, dkim=[dkim_pass("xn--bcher-kva.example")]
    )
    assert (outcome.result, outcome.from_domain) == ("pass", "xn--bcher-kva.example")
