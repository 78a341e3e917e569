"""DKIM signing/verification and ARC sealing/validation (estafeta.policy.dkim)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import dkim as dkimpy  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from estafeta.dns import MockResolver
from estafeta.policy import dkim
from estafeta.policy.dkim import DKIMResult, SigningKey

T = TypeVar("T")

DOMAIN = "example.test"
AUTHSERV = "mx.example.net"
WHEN = 1_700_000_000

MESSAGE = (
    b"Received: from client.example.test by mail.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.test>\r\n"
    b"To: Bob <bob@example.net>, carol@example.org\r\n"
    b"Subject: Quarterly numbers, as discussed\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <20240101000000.1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Id: Numbers <numbers.example.test>\r\n"
    b"X-Mailer: estafeta-tests\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the numbers are  attached.\r\n"
)

# A 512-bit RSA key (cryptography refuses to generate one; rfc8301:3.2
# forbids using it). Only ever used to prove that verification rejects it.
WEAK_RSA_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIBVwIBADANBgkqhkiG9w0BAQEFAASCAUEwggE9AgEAAkEA3knBTtOO3IOKLgZO
+/EhjcncWqHaALxLCMXROdcjVSkUxMlKjRad+mJ++ra5gV/3pqHlS4IMxKOz9K2Z
tRxUwQIDAQABAkEAi7feOla9gBtp+h3a/X8F8SJFT+5VoYq4uw3jwbBZNAfPFbhJ
h6mmfQEYHcczz6t0/6o291kBave37s8F7GOPwQIhAPq9ULa6uupyelrZjPc4y79K
WzR17HmOAGNjbQTJGa1ZAiEA4vOhrGBH8BHmQeE+VPsnvUQjGg0QB6nmciquBfnq
bakCIQCfbxGLn2CLAw/aBMslx++GSvmDehhLkoecqvP/PwAcwQIhAKPSb5KpUWRG
12oYuFDJlu71H01vvnF5v+ILUuD3fLQ5AiEAlRmmWqNq4WnhyT5te2XQsFQbstAZ
N7G7Z7z6n5e1rcY=
-----END PRIVATE KEY-----
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dkim")


@pytest.fixture(scope="module")
def rsa_key(keydir: Path) -> SigningKey:
    path = keydir / "r2024.pem"
    path.write_bytes(dkim.generate_key("rsa"))
    return dkim.load_key(path, DOMAIN, "r2024")


@pytest.fixture(scope="module")
def ed_key(keydir: Path) -> SigningKey:
    path = keydir / "e2024.pem"
    path.write_bytes(dkim.generate_key("ed25519"))
    return dkim.load_key(path, DOMAIN, "e2024")


def resolver_for(*keys: SigningKey, **kwargs: Any) -> MockResolver:
    return MockResolver(
        {(f"{k.selector}._domainkey.{k.domain}", "TXT"): [dkim.txt_record(k)] for k in keys},
        **kwargs,
    )


def signed(keys: list[SigningKey], message: bytes = MESSAGE) -> bytes:
    return dkim.sign(message, keys, timestamp=WHEN) + message


def tags(field: bytes) -> dict[str, str]:
    value = field.split(b":", 1)[1]
    out = {}
    for spec in value.decode().split(";"):
        if spec.strip():
            name, _, val = spec.partition("=")
            out[name.strip()] = re.sub(r"\s+", "", val)
    return out


def split_fields(block: bytes) -> list[bytes]:
    return [m.group(0) for m in re.finditer(rb"[^\s][^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", block)]


# -- keys --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generate_and_load_key(tmp_path: Path, algorithm: str) -> None:
    pem = dkim.generate_key(algorithm)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    path = tmp_path / "sel.pem"
    path.write_bytes(pem)
    key = dkim.load_key(path, "Example.TEST.", "sel")
    assert key == SigningKey("example.test", "sel", algorithm, pem)


def test_load_key_normalizes_pkcs1_to_pkcs8(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    path = tmp_path / "old.pem"
    path.write_bytes(pkcs1)
    key = dkim.load_key(path, DOMAIN, "old")
    assert key.algorithm == "rsa"
    assert key.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def _ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _encrypted_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a PEM private key"),
        (b"hello, world\n", "not a PEM private key"),
        (WEAK_RSA_PEM, "512 bits is too short"),
        (_ec_pem(), "unsupported key type"),
        (_encrypted_pem(), "encrypted"),
    ],
    ids=["empty", "garbage", "rsa512", "ecdsa", "encrypted"],
)
def test_load_key_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        dkim.load_key(path, DOMAIN, "bad")
    assert str(path) in str(info.value)


def test_load_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        dkim.load_key(tmp_path / "nope.pem", DOMAIN, "nope")


def test_generate_key_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="1024"):
        dkim.generate_key("rsa", bits=512)
    with pytest.raises(ValueError, match="unknown key algorithm"):
        dkim.generate_key("dsa")


def test_txt_record_rsa(rsa_key: SigningKey) -> None:
    record = dkim.txt_record(rsa_key)
    match = re.fullmatch(r"v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)", record)
    assert match
    public = serialization.load_der_public_key(base64.b64decode(match.group(1)))
    assert isinstance(public, rsa.RSAPublicKey)
    private = serialization.load_pem_private_key(rsa_key.private_pem, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert public.public_numbers() == private.public_key().public_numbers()


def test_txt_record_ed25519(ed_key: SigningKey) -> None:
    record = dkim.txt_record(ed_key)
    match = re.fullmatch(r"v=DKIM1; k=ed25519; p=([A-Za-z0-9+/=]+)", record)
    assert match
    raw = base64.b64decode(match.group(1))
    private = serialization.load_pem_private_key(ed_key.private_pem, None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert raw == private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(raw) == 32  # rfc8463:4


# -- signing -----------------------------------------------------------------------


def test_sign_produces_one_signature_per_key(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    block = dkim.sign(MESSAGE, [rsa_key, ed_key], timestamp=WHEN)
    fields = split_fields(block)
    assert b"".join(fields) == block
    assert len(fields) == 2
    rsa_tags, ed_tags = tags(fields[0]), tags(fields[1])
    assert rsa_tags["a"] == "rsa-sha256"
    assert ed_tags["a"] == "ed25519-sha256"
    for t, key in ((rsa_tags, rsa_key), (ed_tags, ed_key)):
        assert t["v"] == "1"
        assert t["c"] == "relaxed/relaxed"
        assert t["d"] == DOMAIN
        assert t["s"] == key.selector
        assert t["t"] == str(WHEN)
        assert t["h"] == ("from:to:subject:date:message-id:mime-version:content-type:list-id:from")
    for line in block.split(b"\r\n")[:-1]:
        assert len(line) <= 78
    # Deterministic for a fixed timestamp (PKCS#1 v1.5 and Ed25519 both are).
    assert dkim.sign(MESSAGE, [rsa_key, ed_key], timestamp=WHEN) == block


def test_sign_oversigns_from_and_skips_unlisted_fields(rsa_key: SigningKey) -> None:
    h = tags(dkim.sign(MESSAGE, [rsa_key], timestamp=WHEN))["h"].split(":")
    assert h.count("from") == 2  # rfc6376:8.15
    assert "received" not in h
    assert "x-mailer" not in h


def test_sign_repeated_fields_once_per_instance(rsa_key: SigningKey) -> None:
    message = b"List-Post: <mailto:a@example.test>\r\nCc: x@example.test\r\nCc: y@example.test\r\n"
    h = tags(dkim.sign(message + MESSAGE, [rsa_key], timestamp=WHEN))["h"].split(":")
    assert h.count("cc") == 2
    assert "list-post" in h


def test_sign_without_from_is_refused(rsa_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="From"):
        dkim.sign(b"Subject: x\r\n\r\nbody\r\n", [rsa_key])


def test_sign_with_no_keys_is_empty() -> None:
    assert dkim.sign(MESSAGE, []) == b""


# -- verification --------------------------------------------------------------------


def test_rsa_and_ed25519_signatures_pass(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    message = signed([rsa_key, ed_key])
    resolver = resolver_for(rsa_key, ed_key)
    results = run(dkim.verify(resolver, message))
    b_values = [tags(f)["b"] for f in split_fields(message.split(b"\r\n\r\n")[0] + b"\r\n")[:2]]
    assert results == [
        DKIMResult("pass", DOMAIN, "r2024", "rsa-sha256", "good signature", b_values[0][:8]),
        DKIMResult("pass", DOMAIN, "e2024", "ed25519-sha256", "good signature", b_values[1][:8]),
    ]
    # Every key came from our resolver, nowhere else.
    assert resolver.queries == [
        ("e2024._domainkey.example.test", "TXT"),
        ("r2024._domainkey.example.test", "TXT"),
    ]


def test_signatures_verify_with_dkimpy_itself(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    records = {
        f"{k.selector}._domainkey.{k.domain}.".encode(): dkim.txt_record(k).encode()
        for k in (rsa_key, ed_key)
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    message = signed([rsa_key, ed_key])
    verifier = dkimpy.DKIM(message)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc) is True
    assert verifier.verify(idx=1, dnsfunc=dnsfunc) is True


def test_unsigned_message_has_no_results() -> None:
    assert run(dkim.verify(MockResolver(), MESSAGE)) == []


def test_tampered_body_fails(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    message = signed([rsa_key, ed_key]).replace(b"attached", b"enclosed")
    results = run(dkim.verify(resolver_for(rsa_key, ed_key), message))
    assert [(r.result, r.reason) for r in results] == [("fail", "body hash did not verify")] * 2


def test_tampered_header_fails(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    message = signed([rsa_key, ed_key]).replace(b"Quarterly numbers", b"Quarterly NUMBERS")
    results = run(dkim.verify(resolver_for(rsa_key, ed_key), message))
    assert [(r.result, r.reason) for r in results] == [("fail", "signature did not verify")] * 2


def test_added_from_field_breaks_oversigned_signature(rsa_key: SigningKey) -> None:
    message = signed([rsa_key])
    forged = message.replace(b"From: Alice", b"From: mallory@evil.test\r\nFrom: Alice")
    results = run(dkim.verify(resolver_for(rsa_key), forged))
    assert results[0].result == "fail"


def test_relaxed_canonicalization_survives_refolding(
    rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    message = signed([rsa_key, ed_key])
    refolded = (
        message.replace(
            b"Subject: Quarterly numbers, as discussed\r\n",
            b"Subject:   Quarterly numbers,\r\n\t  as   discussed  \r\n",
        )
        .replace(b"To: Bob <bob@example.net>, carol", b"TO: Bob <bob@example.net>,\r\n carol")
        .replace(b"are  attached.\r\n", b"are attached.   \r\n\r\n\r\n")
    )
    assert refolded != message
    results = run(dkim.verify(resolver_for(rsa_key, ed_key), refolded))
    assert [r.result for r in results] == ["pass", "pass"]


def test_missing_key_is_permerror(rsa_key: SigningKey) -> None:
    results = run(dkim.verify(MockResolver(), signed([rsa_key])))
    assert len(results) == 1
    assert results[0].result == "permerror"
    assert results[0].reason == "no key at r2024._domainkey.example.test"
    assert (results[0].domain, results[0].selector) == (DOMAIN, "r2024")


def test_dns_failure_is_temperror(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    resolver = resolver_for(rsa_key, ed_key, temperror=["r2024._domainkey.example.test"])
    results = run(dkim.verify(resolver, signed([rsa_key, ed_key])))
    assert [r.result for r in results] == ["temperror", "pass"]
    assert "key lookup failed" in results[0].reason


def test_weak_rsa_key_is_rejected() -> None:
    # Signed by dkimpy directly: our own signer refuses such a key.
    signature = dkimpy.sign(
        MESSAGE,
        b"weak",
        DOMAIN.encode(),
        WEAK_RSA_PEM,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"subject"],
    )
    weak = SigningKey(DOMAIN, "weak", "rsa", WEAK_RSA_PEM)
    with pytest.raises(ValueError, match="too short"):
        dkim.txt_record(weak)
    public = serialization.load_pem_private_key(WEAK_RSA_PEM, None).public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()
    resolver = MockResolver({("weak._domainkey.example.test", "TXT"): [record]})
    results = run(dkim.verify(resolver, signature + MESSAGE))
    assert results[0].result == "permerror"
    assert "512 bits is too short" in results[0].reason


def test_our_signer_refuses_weak_key() -> None:
    with pytest.raises(ValueError, match="too short"):
        dkim.sign(MESSAGE, [SigningKey(DOMAIN, "weak", "rsa", WEAK_RSA_PEM)])


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("v=DKIM1; k=rsa; p=", "key revoked"),
        ("v=DKIM1; k=rsa", "no p="),
        ("v=DKIM2; k=rsa; p=AAAA", "not v=DKIM1"),
        ("v=DKIM1; k=ed25519; p={ed}", "does not match a=rsa-sha256"),
        ("v=DKIM1; k=dsa; p=AAAA", "unknown key type"),
        ("v=DKIM1; h=sha1; p={rsa}", "does not allow sha256"),
        ("v=DKIM1; s=tlsrpt; p={rsa}", "not for email"),
        ("v=DKIM1; p=bm90IGEga2V5", "unusable public key"),
        ("v=DKIM1; p={rsa}; p={rsa}", "syntax error"),
    ],
)
def test_unusable_key_records_are_permerror(
    rsa_key: SigningKey, ed_key: SigningKey, record: str, reason: str
) -> None:
    rsa_p = dkim.txt_record(rsa_key).split("p=")[1]
    ed_p = dkim.txt_record(ed_key).split("p=")[1]
    resolver = MockResolver(
        {("r2024._domainkey.example.test", "TXT"): [record.format(rsa=rsa_p, ed=ed_p)]}
    )
    results = run(dkim.verify(resolver, signed([rsa_key])))
    assert results[0].result == "permerror"
    assert reason in results[0].reason


def test_usable_record_chosen_among_several(rsa_key: SigningKey) -> None:
    resolver = MockResolver(
        {
            ("r2024._domainkey.example.test", "TXT"): [
                "some-site-verification=abc",
                dkim.txt_record(rsa_key),
            ]
        }
    )
    assert run(dkim.verify(resolver, signed([rsa_key])))[0].result == "pass"


def test_key_record_without_version_or_k_defaults_to_rsa(rsa_key: SigningKey) -> None:
    record = "p=" + dkim.txt_record(rsa_key).split("p=")[1]
    resolver = MockResolver({("r2024._domainkey.example.test", "TXT"): [record]})
    assert run(dkim.verify(resolver, signed([rsa_key])))[0].result == "pass"


def test_malformed_signature_fields_are_permerror(rsa_key: SigningKey) -> None:
    block = dkim.sign(MESSAGE, [rsa_key], timestamp=WHEN)
    without_bh = re.sub(rb"bh=[^;]+;", b"", block)
    results = run(dkim.verify(resolver_for(rsa_key), without_bh + MESSAGE))
    assert results[0].result == "permerror"
    assert "missing" in results[0].reason
    assert results[0].domain == DOMAIN
    sha1 = block.replace(b"a=rsa-sha256", b"a=rsa-sha1")
    results = run(dkim.verify(resolver_for(rsa_key), sha1 + MESSAGE))
    assert results[0].result == "permerror"
    assert "rfc8301" in results[0].reason
    garbage = b"DKIM-Signature: this is not a tag list\r\n"
    results = run(dkim.verify(resolver_for(rsa_key), garbage + MESSAGE))
    assert results[0].result == "permerror"


def test_only_max_signatures_are_verified(rsa_key: SigningKey) -> None:
    block = dkim.sign(MESSAGE, [rsa_key], timestamp=WHEN)
    message = block * (dkim.MAX_SIGNATURES + 3) + MESSAGE
    resolver = resolver_for(rsa_key)
    results = run(dkim.verify(resolver, message))
    assert len(results) == dkim.MAX_SIGNATURES
    assert {r.result for r in results} == {"pass"}


# -- ARC ------------------------------------------------------------------------------


def with_authresults(message: bytes, arc: str = "none") -> bytes:
    return (
        f"Authentication-Results: {AUTHSERV};\r\n"
        f"\tspf=pass smtp.mailfrom=example.test;\r\n"
        f"\tdkim=pass header.d=example.test header.s=r2024;\r\n"
        f"\tarc={arc}\r\n"
    ).encode() + message


def test_arc_seal_then_verify_passes(rsa_key: SigningKey) -> None:
    message = with_authresults(signed([rsa_key]))
    arc_set = dkim.arc_seal(message, rsa_key, AUTHSERV, timestamp=WHEN)
    names = [f.split(b":", 1)[0] for f in split_fields(arc_set)]
    assert names == [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
    assert b"i=1;" in arc_set and b"cv=none" in arc_set
    assert arc_set.endswith(b"\r\n")
    result = run(dkim.arc_verify(resolver_for(rsa_key), arc_set + message))
    assert result == dkim.ARCResult("pass", 1, "chain validated")


def test_arc_second_hop(rsa_key: SigningKey, ed_key: SigningKey, keydir: Path) -> None:
    path = keydir / "hop2.pem"
    path.write_bytes(dkim.generate_key("rsa", bits=1024))
    hop2 = dkim.load_key(path, "forwarder.test", "hop2")
    resolver = resolver_for(rsa_key, hop2)
    first = with_authresults(signed([rsa_key]))
    first = dkim.arc_seal(first, rsa_key, AUTHSERV, timestamp=WHEN) + first
    assert run(dkim.arc_verify(resolver, first)).result == "pass"
    second = (
        b"Authentication-Results: mx.forwarder.test; arc=pass; dkim=pass header.d=example.test\r\n"
        + first
    )
    second = dkim.arc_seal(second, hop2, "mx.forwarder.test", timestamp=WHEN) + second
    assert run(dkim.arc_verify(resolver, second)) == dkim.ARCResult("pass", 2, "chain validated")


def test_arc_tampered_message_fails(rsa_key: SigningKey) -> None:
    message = with_authresults(signed([rsa_key]))
    sealed = dkim.arc_seal(message, rsa_key, AUTHSERV, timestamp=WHEN) + message
    result = run(dkim.arc_verify(resolver_for(rsa_key), sealed.replace(b"Bob,", b"Eve,")))
    assert result.result == "fail"
    assert result.instance == 1
    assert "ARC-Message-Signature" in result.reason


def test_arc_tampered_seal_fails(rsa_key: SigningKey) -> None:
    message = with_authresults(signed([rsa_key]))
    sealed = dkim.arc_seal(message, rsa_key, AUTHSERV, timestamp=WHEN) + message
    forged = sealed.replace(b"cv=none", b"cv=pass", 1)
    assert run(dkim.arc_verify(resolver_for(rsa_key), forged)).result == "fail"


def test_arc_none_without_arc_sets(rsa_key: SigningKey) -> None:
    result = run(dkim.arc_verify(resolver_for(rsa_key), signed([rsa_key])))
    assert result == dkim.ARCResult("none", 0, "no ARC sets")


def test_arc_key_lookup_temperror_fails(rsa_key: SigningKey) -> None:
    message = with_authresults(signed([rsa_key]))
    sealed = dkim.arc_seal(message, rsa_key, AUTHSERV, timestamp=WHEN) + message
    resolver = resolver_for(rsa_key, temperror=["r2024._domainkey.example.test"])
    result = run(dkim.arc_verify(resolver, sealed))
    assert result.result == "fail"
    assert "temporary DNS error" in result.reason


def test_arc_incomplete_set_fails(rsa_key: SigningKey) -> None:
    message = with_authresults(signed([rsa_key]))
    arc_set = dkim.arc_seal(message, rsa_key, AUTHSERV, timestamp=WHEN)
    without_seal = b"".join(split_fields(arc_set)[1:])
    result = run(dkim.arc_verify(resolver_for(rsa_key), without_seal + message))
    assert result.result == "fail"
    assert result.instance == 1


def test_arc_seal_needs_our_authresults_and_rsa(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="no Authentication-Results"):
        dkim.arc_seal(signed([rsa_key]), rsa_key, AUTHSERV)
    with pytest.raises(ValueError, match="no Authentication-Results"):
        dkim.arc_seal(with_authresults(MESSAGE), rsa_key, "other.example.net")
    with pytest.raises(ValueError, match="RSA"):
        dkim.arc_seal(with_authresults(MESSAGE), ed_key, AUTHSERV)
