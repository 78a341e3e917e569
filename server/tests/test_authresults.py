"""Authentication-Results (estafeta.policy.authresults): writing and stripping."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import authres  # type: ignore[import-untyped]
import pytest

from estafeta.policy import authresults
from estafeta.policy.dkim import ARCResult, DKIMResult
from estafeta.policy.dmarc import DMARCResult, parse_record

ID = "mx.example.net"


@dataclass(frozen=True)
class SPF:
    result: object
    domain: str
    identity: object = "mailfrom"


@dataclass(frozen=True)
class Iprev:
    result: str
    ip: str
    hostname: str = ""


class StrResult(enum.StrEnum):
    PASS = "pass"
    SOFTFAIL = "softfail"


class PlainResult(enum.Enum):
    TEMPERROR = "temperror"


class Identity(enum.Enum):
    HELO = "helo"


def dkim_result(result: str = "pass", **changes: str) -> DKIMResult:
    fields = {
        "domain": "example.test",
        "selector": "s1",
        "algorithm": "rsa-sha256",
        "reason": "good signature",
        "header_b": "abcdefgh",
    }
    fields.update(changes)
    return DKIMResult(result, **fields)


def dmarc_result(result: str = "pass", policy: str = "none", **changes: object) -> DMARCResult:
    fields: dict[str, object] = {
        "from_domain": "example.test",
        "record": parse_record("v=DMARC1; p=reject"),
        "reason": "",
    }
    fields.update(changes)
    return DMARCResult(result=result, policy=policy, **fields)  # type: ignore[arg-type]


def parsed(field: bytes) -> list[tuple[str, str, dict[str, str], str | None]]:
    """The field as authres reads it: (method, result, properties, reason)."""
    header = authres.AuthenticationResultsHeader.parse(field.decode().rstrip("\r\n"))
    assert header.authserv_id == ID
    return [
        (r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties}, r.reason)
        for r in header.results
    ]


# -- formatting -----------------------------------------------------------------------


def test_nothing_checked() -> None:
    assert authresults.header(ID) == b"Authentication-Results: mx.example.net; none\r\n"


def test_full_header() -> None:
    field = authresults.header(
        ID,
        spf=SPF("pass", "example.test"),
        dkim=[dkim_result()],
        dmarc=dmarc_result(),
        arc=ARCResult("none", 0, "no ARC sets"),
    )
    assert field == (
        b"Authentication-Results: mx.example.net;\r\n"
        b"\tspf=pass smtp.mailfrom=example.test;\r\n"
        b"\tdkim=pass header.d=example.test header.s=s1 header.a=rsa-sha256\r\n"
        b"\t\theader.b=abcdefgh;\r\n"
        b"\tdmarc=pass header.from=example.test;\r\n"
        b"\tarc=none\r\n"
    )
    assert parsed(field) == [
        ("spf", "pass", {"smtp.mailfrom": "example.test"}, None),
        (
            "dkim",
            "pass",
            {
                "header.d": "example.test",
                "header.s": "s1",
                "header.a": "rsa-sha256",
                "header.b": "abcdefgh",
            },
            None,
        ),
        ("dmarc", "pass", {"header.from": "example.test"}, None),
        ("arc", "none", {}, None),
    ]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"spf": SPF(StrResult.SOFTFAIL, "example.test")},
            "spf=softfail smtp.mailfrom=example.test",
        ),
        (
            {"spf": SPF(PlainResult.TEMPERROR, "example.test")},
            "spf=temperror smtp.mailfrom=example.test",
        ),
        ({"spf": SPF("pass", "mx.example.test", "helo")}, "spf=pass smtp.helo=mx.example.test"),
        (
            {"spf": SPF("pass", "mx.example.test", Identity.HELO)},
            "spf=pass smtp.helo=mx.example.test",
        ),
        ({"spf": SPF("none", "")}, "spf=none"),
        ({"dkim": []}, "dkim=none"),
        (
            {"dkim": [dkim_result("fail", reason="body hash did not verify", header_b="ab/c+d==")]},
            'dkim=fail reason="body hash did not verify" header.d=example.test\r\n'
            '\t\theader.s=s1 header.a=rsa-sha256 header.b="ab/c+d=="',
        ),
        (
            {"dkim": [DKIMResult("permerror", "", "", "", "signature syntax error")]},
            'dkim=permerror reason="signature syntax error"',
        ),
        (
            {"dmarc": dmarc_result("fail", "quarantine")},
            "dmarc=fail (p=reject dis=quarantine) header.from=example.test",
        ),
        ({"dmarc": dmarc_result("none", record=None)}, "dmarc=none header.from=example.test"),
        (
            {"dmarc": dmarc_result("temperror", record=None, reason="DNS lookup failed")},
            'dmarc=temperror reason="DNS lookup failed" header.from=example.test',
        ),
        ({"arc": ARCResult("pass", 2, "chain validated")}, "arc=pass"),
        (
            {"arc": ARCResult("fail", 1, "ARC-Seal[1] did not validate")},
            'arc=fail reason="ARC-Seal[1] did not validate"',
        ),
        (
            {"iprev": Iprev("pass", "192.0.2.1", "mail.example.test")},
            "iprev=pass policy.iprev=192.0.2.1 (mail.example.test)",
        ),
        ({"iprev": Iprev("fail", "2001:db8::1")}, 'iprev=fail policy.iprev="2001:db8::1"'),
    ],
)
def test_single_method(kwargs: dict[str, object], expected: str) -> None:
    field = authresults.header(ID, **kwargs)  # type: ignore[arg-type]
    assert field == f"Authentication-Results: mx.example.net;\r\n\t{expected}\r\n".encode()
    parsed(field)  # authres reads it


def test_methods_in_order_with_several_signatures() -> None:
    field = authresults.header(
        ID,
        iprev=Iprev("pass", "192.0.2.1"),
        spf=SPF("fail", "example.test"),
        dkim=[dkim_result(), dkim_result("fail", selector="s2", reason="signature did not verify")],
        dmarc=dmarc_result(),
        arc=ARCResult("none", 0, ""),
    )
    assert [(m, r) for m, r, _, _ in parsed(field)] == [
        ("iprev", "pass"),
        ("spf", "fail"),
        ("dkim", "pass"),
        ("dkim", "fail"),
        ("dmarc", "pass"),
        ("arc", "none"),
    ]


def test_lines_stay_short_and_values_cannot_inject() -> None:
    hostile = 'evil\r\nAuthentication-Results: mx.example.net; dkim=pass "\\ (x) ' + "x" * 300
    field = authresults.header(
        ID,
        dkim=[dkim_result("fail", reason=hostile, domain="a" * 40 + ".example.test")],
        dmarc=dmarc_result("permerror", record=None, reason=hostile),
    )
    lines = field.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines[1:-1]:
        assert line.startswith(b"\t")  # every line after the first is a continuation
    assert all(len(line) <= 77 for line in lines)
    results = parsed(field)
    # The forged text stays inside a quoted reason: no third result appears.
    assert [(m, r) for m, r, _, _ in results] == [("dkim", "fail"), ("dmarc", "permerror")]
    # authres leaves quoted-pairs escaped.
    reasons = [re.sub(r"\\(.)", r"\1", reason or "") for _, _, _, reason in results]
    expected = 'evil Authentication-Results: mx.example.net; dkim=pass "\\...'
    assert len(expected) == authresults.MAX_REASON
    assert reasons == [expected, expected]


def test_quoted_authserv_id_and_bad_result() -> None:
    assert authresults.header("odd id") == b'Authentication-Results: "odd id"; none\r\n'
    with pytest.raises(ValueError, match="not an rfc8601 keyword"):
        authresults.header(ID, spf=SPF("pass; dkim=pass", "example.test"))


# -- stripping --------------------------------------------------------------------------

BODY = b"\r\nHello.\r\nAuthentication-Results: mx.example.net; dkim=pass\r\n"


@pytest.mark.parametrize(
    "forged",
    [
        b"Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=example.test\r\n",
        b"Authentication-Results: MX.Example.NET; dkim=pass\r\n",
        b"Authentication-Results: mx.example.net 1; dkim=pass\r\n",
        b"Authentication-Results:mx.example.net;dkim=pass\r\n",
        b"authentication-results: mx.example.net; none\r\n",
        b"Authentication-Results : mx.example.net; none\r\n",
        b"Authentication-Results: (trust me (really)) mx.example.net (v1); dkim=pass\r\n",
        b'Authentication-Results: "mx.example.net"; dkim=pass\r\n',
        b"Authentication-Results: mx.example.net.; dkim=pass\r\n",
        b"Authentication-Results:\r\n\tmx.example.net;\r\n"
        b"\tspf=pass smtp.mailfrom=example.test;\r\n\tdkim=pass header.d=example.test\r\n",
        b"Authentication-Results: mx.example.net;\r\n  dkim=pass header.d=example.test\r\n \r\n",
    ],
)
def test_strip_ours(forged: bytes) -> None:
    head = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: a@example.test\r\n"
    tail = b"Subject: hi\r\n"
    assert authresults.strip_ours(head + forged + tail + BODY, ID) == head + tail + BODY
    assert authresults.strip_ours(forged + head + BODY, ID) == head + BODY
    assert authresults.strip_ours(head + forged + BODY, ID) == head + BODY


@pytest.mark.parametrize(
    "kept",
    [
        b"Authentication-Results: mx.other.test; dkim=pass\r\n",
        b"Authentication-Results: mx.example.net.evil.test; dkim=pass\r\n",
        b"Authentication-Results: (mx.example.net) mx.other.test; dkim=pass\r\n",
        b"Authentication-Results: other.test;\r\n\tdkim=pass (mx.example.net;)\r\n",
        b"ARC-Authentication-Results: i=1; mx.example.net; dkim=pass\r\n",
        b"X-Authentication-Results: mx.example.net; dkim=pass\r\n",
    ],
)
def test_strip_keeps_other_fields_exactly(kept: bytes) -> None:
    message = b"From: a@example.test\r\n" + kept + b"Subject:  odd   spacing \r\n" + BODY
    assert authresults.strip_ours(message, ID) == message


def test_strip_several_and_keep_the_rest() -> None:
    message = (
        b"Authentication-Results: mx.example.net; spf=fail\r\n"
        b"Authentication-Results: relay.example.org;\r\n\tspf=pass smtp.mailfrom=example.test\r\n"
        b"From: a@example.test\r\n"
        b"Authentication-Results: mx.example.net;\r\n\tdkim=pass\r\n"
        b"\r\nbody\r\n"
    )
    assert authresults.strip_ours(message, "MX.EXAMPLE.NET") == (
        b"Authentication-Results: relay.example.org;\r\n\tspf=pass smtp.mailfrom=example.test\r\n"
        b"From: a@example.test\r\n"
        b"\r\nbody\r\n"
    )


def test_strip_lf_only_and_headers_only_messages() -> None:
    lf = b"Authentication-Results: mx.example.net; none\nFrom: a@example.test\n\nbody\n"
    assert authresults.strip_ours(lf, ID) == b"From: a@example.test\n\nbody\n"
    no_body = b"From: a@example.test\r\nAuthentication-Results: mx.example.net; none\r\n"
    assert authresults.strip_ours(no_body, ID) == b"From: a@example.test\r\n"
    no_newline = b"From: a@example.test\r\nAuthentication-Results: mx.example.net; none"
    assert authresults.strip_ours(no_newline, ID) == b"From: a@example.test\r\n"
    assert authresults.strip_ours(b"", ID) == b""


def test_strip_our_own_header_round_trip() -> None:
    ours = authresults.header(ID, spf=SPF("pass", "example.test"), dkim=[dkim_result()])
    message = b"From: a@example.test\r\n\r\nbody\r\n"
    assert authresults.strip_ours(ours + message, ID) == message
