"""Address and domain normalisation (estafeta.address)."""

from __future__ import annotations

import pytest

from estafeta.address import (
    AddressError,
    display_domain,
    normalize_address,
    normalize_domain,
    split_address,
)

GOOD = [
    # plain, and case folding of both parts
    ("alice@example.test", "alice@example.test"),
    ("Alice@Example.TEST", "alice@example.test"),
    ("ALICE.SMITH@EXAMPLE.TEST", "alice.smith@example.test"),
    # one trailing dot on the domain (the DNS root) is dropped
    ("bob@example.test.", "bob@example.test"),
    # IDN domains: UTS #46 mapping, then IDNA2008 A-labels
    ("Alice@Exämple.TEST", "alice@xn--exmple-cua.test"),
    ("a@XN--EXMPLE-CUA.test", "a@xn--exmple-cua.test"),
    ("user@ＥＸＡＭＰＬＥ．test", "user@example.test"),  # full-width forms
    ("user@例え。テスト", "user@xn--r8jz45g.xn--zckzah"),  # ideographic full stop
    ("user@faß.de", "user@xn--fa-hia.de"),  # IDNA2008 keeps ß (IDNA2003 gave fass.de)
    # every atext character is allowed unquoted (rfc5321:4.1.2)
    ("!#$%&'*+-/=?^_`{|}~@example.test", "!#$%&'*+-/=?^_`{|}~@example.test"),
    ("user+tag@example.test", "user+tag@example.test"),
    # quoted local parts: unquoted when the quotes are not needed
    ('"Alice"@example.test', "alice@example.test"),
    ('"a.b"@example.test', "a.b@example.test"),
    ('"a\\b"@example.test', "ab@example.test"),  # a needless quoted-pair
    # ... and kept, with the fewest backslashes, when they are
    ('"John Doe"@example.test', '"john doe"@example.test'),
    ('"a@b"@example.test', '"a@b"@example.test'),
    ('"a..b"@example.test', '"a..b"@example.test'),
    ('".a"@example.test', '".a"@example.test'),
    ('"A\\"B"@example.test', '"a\\"b"@example.test'),
    ('"a\\\\b"@example.test', '"a\\\\b"@example.test'),
    ('"a\\ b"@example.test', '"a b"@example.test'),
    # UTF-8 local parts (rfc6531:3.3), lower-cased and in NFC
    ("Pelé@example.test", "pelé@example.test"),
    ("Pe\u0301le@example.test", "p\u00e9le@example.test"),  # decomposed -> composed
    ("ΔΟΚΙΜΉ@παράδειγμα.δοκιμή", "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"),
    ("用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"),
    ("ẞ@example.test", "ß@example.test"),
    ('"Jörg Müller"@example.test', '"jörg müller"@example.test'),
    ("a\u200db@example.test", "a\u200db@example.test"),  # ZWJ is allowed
    # limits, exactly at the edge
    ("a" * 64 + "@example.test", "a" * 64 + "@example.test"),
    ("é" * 32 + "@example.test", "é" * 32 + "@example.test"),  # 64 octets
    ("a@" + "b" * 63 + ".test", "a@" + "b" * 63 + ".test"),
]

BAD = [
    ("", "empty address"),
    ("alice", "missing '@'"),
    ("alice.example.test", "missing '@'"),
    ("a@b@example.test", "more than one '@'"),
    ('"a"@b@example.test', "more than one '@'"),
    ("@example.test", "empty local part"),
    ('""@example.test', "empty local part"),
    ("alice@", "empty domain"),
    ("alice@.", "empty domain"),
    ("<alice@example.test>", "angle brackets"),
    ("<alice@example.test", "angle brackets"),
    ("alice@example.test>", "angle brackets"),
    ("a b@example.test", "space in the local part"),
    (" alice@example.test", "space in the local part"),
    ("alice @example.test", "space in the local part"),
    ("alice@exa mple.test", "space or control character in domain"),
    ("al\nice@example.test", "control character U+000A"),
    ("alice\r@example.test", "control character U+000D"),
    ('"a\tb"@example.test', "control character U+0009"),
    ("a\x00b@example.test", "control character U+0000"),
    ("a\x7fb@example.test", "control character U+007F"),
    ("a\u0085b@example.test", "control character U+0085"),  # C1 control
    ("a\ud800b@example.test", "surrogate U+D800"),
    (".alice@example.test", "starts or ends with a dot"),
    ("alice.@example.test", "starts or ends with a dot"),
    ("al..ice@example.test", "two dots in a row"),
    ('al"ice@example.test', "character '\"' in the local part must be quoted"),
    ("a(b)@example.test", "character '(' in the local part must be quoted"),
    ("a,b@example.test", "character ',' in the local part must be quoted"),
    ('"alice@example.test', "unterminated quoted local part"),
    ('"alice\\"@example.test', "unterminated quoted local part"),
    ('"a"b@example.test', "must be followed by '@'"),
    ('"a\\é"@example.test', "quoted-pairSMTP"),
    ("a\u00a0b@example.test", "space U+00A0"),
    ('"a\u3000b"@example.test', "space U+3000"),
    ("a\u202eb@example.test", "invisible format character U+202E"),
    ("a\u200bb@example.test", "invisible format character U+200B"),
    ("a\ue000@example.test", "private-use character U+E000"),
    ("a\u0378@example.test", "unassigned code point U+0378"),
    ("a" * 65 + "@example.test", "local part longer than 64 octets (rfc5321:4.5.3.1.1)"),
    # 33 characters but 66 octets: the limit is in octets of UTF-8
    ("é" * 33 + "@example.test", "local part longer than 64 octets (rfc5321:4.5.3.1.1)"),
    ('"' + "a " * 32 + '"@example.test', "local part longer than 64 octets"),
    ("alice@[192.0.2.1]", "address literals are not accepted"),
    ("alice@[IPv6:2001:db8::1]", "address literals are not accepted"),
    ("alice@example..test", "empty label"),
    ("alice@.example.test", "empty label"),
    ("alice@example.test..", "empty label"),
    ("alice@-example.test", "hyphen"),
    ("alice@ex_ample.test", "not a valid domain name"),
    ("alice@xn--abc.test", "not a valid domain name"),  # not valid Punycode
    ("alice@" + "b" * 64 + ".test", "label longer than 63 octets"),
    # 22 characters, but its A-label is 70 octets
    ("alice@用户例子广告测试邮件地址国际化域名系统服务器.test", "label longer than 63 octets"),
    ("a@" + ("b" * 63 + ".") * 4 + "test", "domain longer than 253 octets (rfc5321:4.5.3.1.2)"),
    ("a" * 64 + "@" + ("b" * 63 + ".") * 3 + "test", "address longer than 254 octets"),
    ("a@" + "b" * 5000 + ".test", "far too long"),
]


@pytest.mark.parametrize(("address", "expected"), GOOD)
def test_normalize_good(address: str, expected: str) -> None:
    assert normalize_address(address) == expected


@pytest.mark.parametrize(("address", "expected"), GOOD)
def test_normalize_is_idempotent(address: str, expected: str) -> None:
    assert normalize_address(expected) == expected


@pytest.mark.parametrize(("address", "message"), BAD)
def test_normalize_bad(address: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        normalize_address(address)
    assert message in str(info.value)


def test_address_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="missing '@'"):
        normalize_address("nobody")


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("example.test", "example.test"),
        ("Example.TEST.", "example.test"),
        ("Bücher.TEST", "xn--bcher-kva.test"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
        ("localhost", "localhost"),
        ("b" * 63 + ".test", "b" * 63 + ".test"),
        (".".join(["b" * 63] * 3 + ["c" * 61]), ".".join(["b" * 63] * 3 + ["c" * 61])),
    ],
)
def test_normalize_domain(domain: str, expected: str) -> None:
    assert normalize_domain(domain) == expected
    assert len(expected) <= 253


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("", "empty domain"),
        (".", "empty domain"),
        ("example.test..", "empty label"),
        ("a..b", "empty label"),
        ("[127.0.0.1]", "address literals"),
        ("a@b.test", "'@' in domain"),
        ("exa mple.test", "space or control character"),
        ("b" * 64 + ".test", "label longer than 63 octets"),
        (".".join(["b" * 63] * 3 + ["c" * 62]), "domain longer than 253 octets"),
        ("bad_domain.test", "not a valid domain name"),
        ("*.example.test", "not a valid domain name"),
    ],
)
def test_normalize_domain_bad(domain: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        normalize_domain(domain)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("xn--bcher-kva.test", "bücher.test"),
        ("xn--exmple-cua.test", "exämple.test"),
        ("xn--r8jz45g.xn--zckzah", "例え.テスト"),
        ("example.test", "example.test"),
        ("xn--abc.test", "xn--abc.test"),  # not decodable: shown as it is
    ],
)
def test_display_domain(domain: str, expected: str) -> None:
    assert display_domain(domain) == expected


def test_display_domain_round_trips() -> None:
    for domain in ("xn--bcher-kva.test", "xn--fsqu00a.xn--4rr70v", "example.test"):
        assert normalize_domain(display_domain(domain)) == domain


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("alice@example.test", ("alice", "example.test")),
        ('"a@b"@example.test', ('"a@b"', "example.test")),
        ("用户@xn--fsqu00a.xn--4rr70v", ("用户", "xn--fsqu00a.xn--4rr70v")),
    ],
)
def test_split_address(address: str, expected: tuple[str, str]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["alice", "@example.test", "alice@"])
def test_split_address_bad(address: str) -> None:
    with pytest.raises(AddressError, match="not of the form local@domain"):
        split_address(address)


def test_split_of_normalized_quoted_address_keeps_the_at_in_the_local_part() -> None:
    local, domain = split_address(normalize_address('"Sales@HQ"@Example.TEST'))
    assert (local, domain) == ('"sales@hq"', "example.test")
