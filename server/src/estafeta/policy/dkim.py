"""DKIM signing and verification (rfc6376, rfc8301, rfc8463) and ARC (rfc8617).

Keys are PKCS#8 PEM files, RSA or Ed25519. Signing is done here: the
canonicalization and header hashing are dkimpy's (the same code that verifies,
so the two cannot disagree), the signature itself is made by ``cryptography``
(OpenSSL: constant-time, unlike dkimpy's pure-Python RSA).

Verification never blocks the event loop and never lets dkimpy touch the
network: every key record a message needs is looked up first through our
``Resolver``, then dkimpy runs in a worker thread with a ``dnsfunc`` that
answers from those pre-resolved records. DNS failures and unusable key
records are classified here, before dkimpy runs, because dkimpy folds them
all into a bare ``False``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import dkim as dkimpy  # type: ignore[import-untyped]
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from estafeta.dns import DNSTempError, Resolver, normalize_name

log = logging.getLogger("estafeta.dkim")

ALGORITHMS = ("rsa", "ed25519")
# The a= tag for each key type: rfc8301:3.1 leaves rsa-sha256 as the only RSA
# algorithm; rfc8463:3 adds ed25519-sha256.
SIGNATURE_ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
# rfc8301:3.2 — signers must use RSA keys of at least 1024 bits (2048
# recommended), and verifiers must not accept signatures made with shorter ones.
MIN_RSA_BITS = 1024
# Verifying a signature costs a DNS lookup and a public-key operation; a
# message cannot make us do more than this many (rfc6376:6.1 lets a verifier
# limit the number of signatures it tries, against denial of service).
MAX_SIGNATURES = 5
# At most this many TXT records at one key name are considered.
MAX_KEY_RECORDS = 4
# rfc8617:4.2.1 — instance numbers (i=) run from 1 to 50.
ARC_MAX_INSTANCE = 50

# Header fields we sign when present (rfc6376:5.4.1 recommends the fields
# that make up the "core content" of a message).
SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    # rfc8460:5.3 — TLS reports: "SHOULD be included in the DKIM signature".
    "tls-report-domain",
    "tls-report-submitter",
)
_SIGNED_PREFIXES = ("list-",)
# Each of these is signed once more than it occurs, so that adding another
# instance breaks the signature (rfc6376:8.15 "Attacks Involving Extra
# Header Fields", rfc6376:5.4.2).
OVERSIGNED_HEADERS = ("from",)

_CANON = b"relaxed/relaxed"
_FOLD_AT = 76


# -- keys ---------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private_pem: bytes  # PKCS#8 PEM for both algorithms


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> bytes:
    """A new private key as unencrypted PKCS#8 PEM.

    ``bits`` applies to RSA only; rfc8301:3.2 sets 1024 as the floor and
    recommends 2048. Ed25519 keys are always 256 bits (rfc8463:3).
    """
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits (rfc8301:3.2)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@functools.lru_cache(maxsize=64)
def _load_private(pem: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """The key in a PEM blob; ValueError saying why it cannot be used.

    Cached: a key is parsed (and, for RSA, checked) once, not per message."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the private key is encrypted; store it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key of {key.key_size} bits is too short; "
                f"at least {MIN_RSA_BITS} are required (rfc8301:3.2)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"unsupported key type {type(key).__name__}; DKIM keys are RSA or Ed25519")


def load_key(path: Path, domain: str, selector: str) -> SigningKey:
    """Read a private key file; the algorithm comes from the key itself.

    Raises ValueError naming the file and the problem (unreadable, not PEM,
    encrypted, too short, not RSA/Ed25519). The stored PEM is normalized to
    PKCS#8, so a PKCS#1 ("BEGIN RSA PRIVATE KEY") file works too.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read key file ({exc.strerror or exc})") from None
    try:
        key = _load_private(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    domain = normalize_name(domain)
    if not domain or not selector:
        raise ValueError(f"{path}: a key needs a domain and a selector")
    if not domain.isascii() or not selector.isascii():
        raise ValueError(f"{path}: DKIM d= and s= must be ASCII (use the A-label form)")
    algorithm = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(domain=domain, selector=selector, algorithm=algorithm, private_pem=pem)


def txt_record(key: SigningKey) -> str:
    """The DNS TXT record to publish at ``<selector>._domainkey.<domain>``.

    RSA: base64 of the DER SubjectPublicKeyInfo (rfc6376:3.6.1, as ``openssl
    rsa -pubout`` writes it); Ed25519: base64 of the raw 32-byte public key
    (rfc8463:4).
    """
    private = _load_private(key.private_pem)
    if isinstance(private, rsa.RSAPrivateKey):
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        k = "rsa"
    else:
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        k = "ed25519"
    return f"v=DKIM1; k={k}; p={base64.b64encode(public).decode('ascii')}"


# -- signing --------------------------------------------------------------------


def _parse_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    try:
        headers, body = dkimpy.rfc822_parse(message)
    except dkimpy.DKIMException as exc:
        raise ValueError(f"malformed header block: {exc}") from None
    return [(bytes(name), bytes(value)) for name, value in headers], bytes(body)


def _headers_to_sign(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """h= for this message: each present field we sign, once per instance
    (rfc6376:5.4.2 signs repeated fields bottom-up), then the oversigned ones
    once more (rfc6376:8.15)."""
    names: list[bytes] = []
    for raw_name, _ in headers:
        name = raw_name.lower()
        text = name.decode("ascii", "replace")
        if text in SIGNED_HEADERS or text.startswith(_SIGNED_PREFIXES):
            names.append(name)
    if b"from" not in names:
        # rfc6376:5.4 — "The From header field MUST be signed".
        raise ValueError("message has no From header field to sign (rfc6376:5.4)")
    names.extend(name.encode("ascii") for name in OVERSIGNED_HEADERS)
    return names


def _fold(units: Sequence[tuple[str, str]], start: int) -> str:
    """Join ``(separator, text)`` units, breaking the line (CRLF TAB: FWS,
    which rfc6376:3.2 allows around every unit boundary we use) before a unit
    that would pass column _FOLD_AT."""
    out: list[str] = []
    column = start
    for separator, text in units:
        if out and column + len(separator) + len(text) > _FOLD_AT:
            out.append("\r\n\t")
            column = 1
        else:
            out.append(separator)
            column += len(separator)
        out.append(text)
        column += len(text)
    return "".join(out)


def _signature_units(tags: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    units: list[tuple[str, str]] = []
    for name, value in tags:
        if name == "h":
            # rfc6376:3.5 sig-h-tag allows FWS around each ":".
            fields = value.split(":")
            for i, field in enumerate(fields):
                text = ("h=" if i == 0 else "") + field + (":" if i < len(fields) - 1 else ";")
                units.append((" " if i == 0 else "", text))
        else:
            units.append((" ", f"{name}={value};"))
    units[0] = ("", units[0][1])
    return units


def _sign_one(
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    include: list[bytes],
    key: SigningKey,
    timestamp: int,
) -> bytes:
    private = _load_private(key.private_pem)
    algorithm = SIGNATURE_ALGORITHMS["rsa" if isinstance(private, rsa.RSAPrivateKey) else "ed25519"]
    canon = dkimpy.canonicalization.CanonicalizationPolicy.from_c_value(_CANON)
    # rfc6376:3.7 — the body hash over the canonicalized body.
    body_hash = base64.b64encode(hashlib.sha256(canon.canonicalize_body(body)).digest())
    tags = [
        ("v", "1"),
        ("a", algorithm),
        ("c", _CANON.decode()),
        ("d", key.domain),
        ("s", key.selector),
        ("t", str(timestamp)),
        ("h", ":".join(name.decode("ascii") for name in include)),
        ("bh", body_hash.decode("ascii")),
    ]
    # b= is last and on a line of its own: the header hash covers the field
    # with an empty b= value (rfc6376:3.7), and the signed text is exactly
    # what we emit up to "b=".
    prefix = " " + _fold(_signature_units(tags), len("DKIM-Signature: ")) + "\r\n\tb="
    hasher = hashlib.sha256()
    dkimpy.hash_headers(
        hasher,
        canon,
        canon.canonicalize_headers(headers),
        list(include),
        (b"DKIM-Signature", prefix.encode("ascii")),
        None,
    )
    digest = hasher.digest()
    if isinstance(private, rsa.RSAPrivateKey):
        # rfc6376:3.3.1 RSASSA-PKCS1-v1_5 over the SHA-256 hash.
        signature = private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    else:
        # rfc8463:3 — PureEdDSA Ed25519 over the SHA-256 hash of the data.
        signature = private.sign(digest)
    b64 = base64.b64encode(signature).decode("ascii")
    # rfc6376:3.5 — FWS may appear anywhere in the base64 b= value.
    chunks = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("DKIM-Signature:" + prefix + "\r\n\t ".join(chunks) + "\r\n").encode("ascii")


def sign(message: bytes, keys: Sequence[SigningKey], *, timestamp: int | None = None) -> bytes:
    """DKIM-Signature field(s) to prepend to ``message``, CRLF-terminated.

    One signature per key, each over the unsigned message, so an RSA and an
    Ed25519 key give the dual signatures of rfc8463:5. relaxed/relaxed
    canonicalization (rfc6376:3.4); ``timestamp`` is the t= value (default:
    now). Raises ValueError for a message without From or an unusable key.
    """
    if not keys:
        return b""
    headers, body = _parse_message(message)
    include = _headers_to_sign(headers)
    when = int(time.time()) if timestamp is None else int(timestamp)
    return b"".join(_sign_one(headers, body, include, key, when) for key in keys)


# -- verification -------------------------------------------------------------


@dataclass(frozen=True)
class DKIMResult:
    # "pass" | "fail" | "neutral" | "temperror" | "permerror" | "policy" (rfc8601:2.7.1)
    result: str
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a= e.g. "rsa-sha256"
    reason: str  # short text
    header_b: str = ""  # first 8 chars of b= (rfc6008) for Authentication-Results


class _QuietLogger(logging.LoggerAdapter[logging.Logger]):
    """dkimpy logs every bad signature at ERROR; for a mail server that is
    routine input, so its errors become debug messages."""

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_dkimpy_log = _QuietLogger(logging.getLogger("estafeta.dkim.dkimpy"), {})


@dataclass(frozen=True)
class _Signature:
    index: int  # position among the DKIM-Signature fields, top first
    domain: str
    selector: str
    algorithm: str
    identity: str  # the domain of i= (rfc6376:3.5), d= when absent
    header_b: str

    @property
    def key_name(self) -> str:
        # rfc6376:3.6.2.1 — "<selector>._domainkey.<domain>"
        return f"{self.selector}._domainkey.{self.domain}"

    def result(self, result: str, reason: str) -> DKIMResult:
        return DKIMResult(result, self.domain, self.selector, self.algorithm, reason, self.header_b)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _clean(value: bytes) -> bytes:
    return re.sub(rb"\s+", b"", value)


def _parse_tags(value: bytes) -> dict[bytes, bytes]:
    tags = dkimpy.parse_tag_value(value)
    return {bytes(k): bytes(v) for k, v in tags.items()}


def _parse_signature(index: int, value: bytes) -> _Signature | DKIMResult:
    """The DKIM-Signature field's tags, or a permerror result (rfc6376:6.1.1)."""
    try:
        tags = _parse_tags(value)
    except dkimpy.InvalidTagValueList as exc:
        return DKIMResult("permerror", "", "", "", f"signature syntax error ({exc})")
    domain = _text(_clean(tags.get(b"d", b""))).lower()
    selector = _text(_clean(tags.get(b"s", b""))).lower()
    algorithm = _text(_clean(tags.get(b"a", b""))).lower()
    header_b = _text(_clean(tags.get(b"b", b"")))[:8]
    partial = DKIMResult("permerror", domain, selector, algorithm, "", header_b)
    try:
        # Required tags, v=1, base64, i= under d=, q=dns/txt, t=/x= sanity.
        dkimpy.validate_signature_fields(tags)
    except dkimpy.DKIMException as exc:
        return _replace_reason(partial, f"invalid signature ({_short(exc)})")
    if algorithm == "rsa-sha1":
        # rfc8301:3.1 — rsa-sha1 is no longer to be used for signing or verifying.
        return _replace_reason(partial, "rsa-sha1 is not accepted (rfc8301:3.1)")
    if not domain.isascii() or not selector.isascii() or not domain or not selector:
        return _replace_reason(partial, "d= and s= must be ASCII domain labels")
    identity = _text(_clean(tags.get(b"i", b""))).rpartition("@")[2].lower() or domain
    return _Signature(index, domain, selector, algorithm, identity.rstrip("."), header_b)


def _replace_reason(result: DKIMResult, reason: str) -> DKIMResult:
    return dataclasses.replace(result, reason=reason)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A key name → its TXT records, or the DNSTempError that looking it up raised.
_KeyRecords: TypeAlias = dict[str, tuple[str, ...] | DNSTempError]


async def _fetch(resolver: Resolver, names: Iterable[str]) -> _KeyRecords:
    unique = sorted({normalize_name(name) for name in names})

    async def one(name: str) -> tuple[str, ...] | DNSTempError:
        try:
            answer = await resolver.lookup(name, "TXT")
        except DNSTempError as exc:
            return exc
        return tuple(str(record) for record in answer.records[:MAX_KEY_RECORDS])

    found = await asyncio.gather(*(one(name) for name in unique))
    return dict(zip(unique, found, strict=True))


def _key_problem(record: str, sig: _Signature | None) -> str | None:
    """Why this key record cannot verify ``sig`` (rfc6376:3.6.1, 6.1.2), or None."""
    try:
        tags = _parse_tags(record.encode("utf-8", "surrogateescape"))
    except dkimpy.InvalidTagValueList:
        return "key record syntax error"
    version = tags.get(b"v")
    if version is not None and version != b"DKIM1":
        return "key record is not v=DKIM1"
    if b"p" not in tags:
        return "key record has no p="
    if not _clean(tags[b"p"]):
        # rfc6376:3.6.1 — "An empty value means that this public key has been revoked."
        return "key revoked"
    k = tags.get(b"k", b"rsa").lower()
    if k not in (b"rsa", b"ed25519"):
        return f"unknown key type k={_text(k)}"
    hashes_allowed = [h.strip().lower() for h in tags.get(b"h", b"sha256").split(b":")]
    if b"sha256" not in hashes_allowed:
        return "key does not allow sha256 (h=)"
    services = [s.strip().lower() for s in tags.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        return "key is not for email (s=)"
    if sig is not None:
        if not sig.algorithm.startswith(_text(k) + "-"):
            # rfc6376:6.1.2 — "inappropriate key algorithm".
            return f"key type k={_text(k)} does not match a={sig.algorithm}"
        flags = [f.strip().lower() for f in tags.get(b"t", b"").split(b":")]
        if b"s" in flags and sig.identity != sig.domain:
            # rfc6376:3.6.1 t=s — i= must not be a subdomain of d=.
            return "key requires i= domain equal to d= (t=s)"
    try:
        _, keysize, ktag, _ = dkimpy.evaluate_pk(b"key", record.encode("utf-8", "surrogateescape"))
    except Exception as exc:  # dkimpy raises a mix of its own and codec errors
        return f"unusable public key ({_short(exc, 60)})"
    if ktag == b"rsa" and int(keysize) < MIN_RSA_BITS:
        return f"RSA key of {keysize} bits is too short (rfc8301:3.2)"
    return None


def _choose_key(records: Sequence[str], sig: _Signature | None) -> tuple[str | None, str]:
    """The first usable record (rfc6376:6.1.2 lets the verifier choose among
    several), else None and the first record's problem."""
    first_problem = ""
    for record in records:
        problem = _key_problem(record, sig)
        if problem is None:
            return record, ""
        first_problem = first_problem or problem
    return None, first_problem or "no key record"


def _dnsfunc(keys: dict[str, str]) -> Callable[..., bytes | None]:
    """dkimpy's DNS hook: ``dnsfunc(name_bytes, timeout=...)`` returns the TXT
    record as bytes, or None when there is none. Every name dkimpy can ask
    for was resolved beforehand; anything else is absent."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        # dkimpy builds the name from the raw s= and d= values.
        record = keys.get(normalize_name(re.sub(r"\s+", "", name.decode("ascii", "replace"))))
        return None if record is None else record.encode("utf-8", "surrogateescape")

    return lookup


def _verify_signature(message: bytes, sig: _Signature, record: str) -> DKIMResult:
    """dkimpy over one signature whose key record is known to be usable; runs
    in a worker thread. dkimpy sees only that record, whatever it asks for."""
    verifier = dkimpy.DKIM(message, logger=_dkimpy_log, minkey=MIN_RSA_BITS)
    try:
        ok = verifier.verify(idx=sig.index, dnsfunc=_dnsfunc({sig.key_name: record}))
    except dkimpy.ValidationError as exc:
        if "body hash" in str(exc):
            # rfc6376:6.1.3 — "PERMFAIL (body hash did not verify)".
            return sig.result("fail", "body hash did not verify")
        return sig.result("permerror", _short(exc))
    except dkimpy.DKIMException as exc:
        return sig.result("permerror", _short(exc))
    except Exception as exc:  # hostile input must not take the session down
        log.warning("dkimpy failed on signature %d: %r", sig.index, exc)
        return sig.result("permerror", "signature could not be processed")
    if ok:
        return sig.result("pass", "good signature")
    return sig.result("fail", "signature did not verify")


def _header_end(message: bytes) -> int:
    match = re.search(rb"\r?\n\r?\n", message)
    return match.start() if match else len(message)


async def verify(resolver: Resolver, message: bytes) -> list[DKIMResult]:
    """One result per DKIM-Signature field (the first MAX_SIGNATURES, top
    first); an empty list when the message is not signed."""
    try:
        headers, _ = _parse_message(message)
    except ValueError:
        if b"dkim-signature" in message[: _header_end(message)].lower():
            return [DKIMResult("permerror", "", "", "", "malformed header block")]
        return []
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]
    parsed = [_parse_signature(i, value) for i, value in enumerate(values[:MAX_SIGNATURES])]
    if not parsed:
        return []
    signatures = [p for p in parsed if isinstance(p, _Signature)]
    fetched = await _fetch(resolver, (sig.key_name for sig in signatures))

    def check_and_verify() -> dict[int, DKIMResult]:
        verdicts: dict[int, DKIMResult] = {}
        for sig in signatures:
            records = fetched[normalize_name(sig.key_name)]
            if isinstance(records, DNSTempError):
                # rfc6376:6.1.2 — "TEMPFAIL (key unavailable)".
                verdicts[sig.index] = sig.result("temperror", f"key lookup failed: {records}")
                continue
            if not records:
                # rfc6376:6.1.2 — "PERMFAIL (no key for signature)".
                verdicts[sig.index] = sig.result("permerror", f"no key at {sig.key_name}")
                continue
            record, problem = _choose_key(records, sig)
            if record is None:
                verdicts[sig.index] = sig.result("permerror", problem)
                continue
            verdicts[sig.index] = _verify_signature(message, sig, record)
        return verdicts

    verdicts = await asyncio.to_thread(check_and_verify)
    return [p if isinstance(p, DKIMResult) else verdicts[p.index] for p in parsed]


# -- ARC (rfc8617) ------------------------------------------------------------


@dataclass(frozen=True)
class ARCResult:
    result: str  # "none" | "pass" | "fail"
    instance: int  # highest i= seen, 0 if none
    reason: str


_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)\s*(?:;|$)")


def _arc_instance(value: bytes) -> int | None:
    match = _INSTANCE.search(b" ".join(value.split()))
    return int(match.group(1)) if match else None


async def arc_verify(resolver: Resolver, message: bytes) -> ARCResult:
    """Validate the ARC chain (rfc8617:5.2): "none" without ARC sets, "pass"
    when every set is present and every seal and the newest message signature
    verify, "fail" otherwise (including a key lookup that failed temporarily:
    ARC has no temperror result)."""
    try:
        headers, _ = _parse_message(message)
    except ValueError:
        return ARCResult("none", 0, "malformed header block")
    arc_headers = [(name.lower(), value) for name, value in headers if name.lower() in _ARC_FIELDS]
    if not arc_headers:
        return ARCResult("none", 0, "no ARC sets")
    instances = [_arc_instance(value) for _, value in arc_headers]
    highest = max((i for i in instances if i is not None), default=0)
    if None in instances or highest < 1:
        # rfc8617:5.2 step 1-3: every ARC field carries a valid i=.
        return ARCResult("fail", highest, "ARC header field without a valid i= tag")
    if highest > ARC_MAX_INSTANCE:
        return ARCResult("fail", highest, f"i={highest} exceeds {ARC_MAX_INSTANCE} (rfc8617:4.2.1)")
    names: set[str] = set()
    for name, value in arc_headers:
        if name == b"arc-authentication-results":
            continue
        try:
            tags = _parse_tags(value)
        except dkimpy.InvalidTagValueList:
            return ARCResult("fail", highest, f"{_text(name)} syntax error")
        domain = _text(_clean(tags.get(b"d", b"")))
        selector = _text(_clean(tags.get(b"s", b"")))
        if domain and selector:
            names.add(f"{selector}._domainkey.{domain}")
    fetched = await _fetch(resolver, names)
    keys: dict[str, str] = {}
    for key_name, records in fetched.items():
        if isinstance(records, DNSTempError):
            return ARCResult("fail", highest, f"temporary DNS error for {key_name}: {records}")
        record, _ = _choose_key(records, None)
        if record is not None:
            keys[key_name] = record

    def run() -> tuple[bool, str]:
        try:
            cv, _, why = dkimpy.arc_verify(
                message, logger=_dkimpy_log, dnsfunc=_dnsfunc(keys), minkey=MIN_RSA_BITS
            )
        except Exception as exc:  # hostile input must not take the session down
            log.warning("dkimpy ARC verification failed: %r", exc)
            return False, "ARC chain could not be processed"
        return cv == dkimpy.CV_Pass, _text(why) if isinstance(why, bytes) else str(why)

    passed, why = await asyncio.to_thread(run)
    if passed:
        return ARCResult("pass", highest, "chain validated")
    return ARCResult("fail", highest, " ".join(why.split())[:120] or "chain did not validate")


def arc_seal(
    message: bytes, key: SigningKey, authserv_id: str, *, timestamp: int | None = None
) -> bytes:
    """The next ARC set (ARC-Seal, ARC-Message-Signature,
    ARC-Authentication-Results; rfc8617:4.1), CRLF-terminated, to prepend.

    ``message`` must already carry our Authentication-Results field (named
    exactly so, authserv-id ``authserv_id``): the AAR copies it and its
    ``arc=`` result becomes the seal's cv= (rfc8617:5.1.1). RSA keys only.
    """
    if key.algorithm != "rsa":
        raise ValueError("ARC sealing needs an RSA key (ed25519 ARC is not deployed)")
    _load_private(key.private_pem)  # the same checks as for signing
    try:
        sets = dkimpy.arc_sign(
            message,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_pem,
            authserv_id.encode("ascii"),
            timestamp=timestamp,
            logger=_dkimpy_log,
        )
    except dkimpy.DKIMException as exc:
        raise ValueError(f"cannot seal: {_short(exc)}") from None
    if not sets:
        raise ValueError(
            f"cannot seal: no Authentication-Results field from {authserv_id} "
            "(or the chain is already broken without an arc= result)"
        )
    return b"".join(bytes(field) for field in sets)
