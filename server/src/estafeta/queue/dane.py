"""DANE for outbound SMTP (rfc7672): which MX hosts must prove who they are, and how.

Discovery (rfc7672:2.2), per MX host, run by the deliverer:

- only when the MX RRset (or, for a domain without MX, the denial of it) is
  DNSSEC-secure (rfc7672:2.2.1; the RFC allows DANE with an insecure MX
  RRset too, we do not: an attacker who forges the MX list picks the hosts);
- and the host's address records are secure (rfc7672:2.2.2; TLSA is asked
  only after that, so that broken unsigned zones never see TLSA queries);
- the TLSA RRset at ``_25._tcp.<host>`` (the route's port). When the host
  name is a CNAME and the address answer, the whole chain, is secure, the
  expanded name is the TLSA base domain tried first, then the original name
  (rfc7672:2.2.3). The resolver follows CNAMEs itself and its AD bit covers
  the chain, so "original name secure, expansion insecure" cannot be told
  apart from "all insecure": both mean no DANE for that host.

What the TLSA answer means (rfc7672:2.2):

- secure, with usable records: ``dane`` — STARTTLS is mandatory and the
  certificate must match a record (rfc7672:3); MTA-STS is not applied to the
  host (rfc8461:2: it must not override DANE);
- secure, records but none usable: ``encrypt`` — STARTTLS is mandatory,
  without authentication;
- secure denial (NXDOMAIN/NODATA) or insecure: no DANE for the host;
- a lookup failure (SERVFAIL, "bogus" or "indeterminate", a timeout):
  the host is not used now, neither with TLS nor without; the next MX is
  tried, else delivery is deferred: ``TLSALookupError``.

Authentication (rfc7672:3.1), in ``verify_chain``: usable records are
DANE-TA(2) and DANE-EE(3) with selector 0/1 and matching type 0/1/2; PKIX-TA(0)
and PKIX-EE(1) are unusable in SMTP (rfc7672:3.1.3). DANE-EE matches the
leaf or its public key, with no name and no expiry check (rfc7672:3.1.1).
DANE-TA matches a certificate the server sent above its leaf (for selector 1
too: the server must send the trust anchor, rfc7672:3.1.2), and the leaf must
chain to it and carry one of the reference identifiers (rfc7672:3.2.2: the
TLSA base domain and the MX host name) in a subjectAltName dNSName, a
wildcard only as the whole leftmost label (rfc7672:3.2.3). Chain building,
signatures and validity periods are cryptography's verifier (estafeta.queue.pkix),
with the Web PKI extension rules relaxed to what a private CA issues: CA
certificates must say CA:TRUE, the leaf must have a subjectAltName.

What a host attempt was, for the logs and TLS reports, is
estafeta.queue.tlsoutcome's (policy-type ``tlsa``, these records).
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import Store, VerificationError

from estafeta.dns import DNSBogusError, DNSTempError, Resolver, normalize_name
from estafeta.queue import pkix

# rfc6698:7.2-7.4 registries.
PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
SELECTOR_CERT, SELECTOR_SPKI = 0, 1
MATCH_FULL, MATCH_SHA256, MATCH_SHA512 = 0, 1, 2
_DIGEST_SIZE = {MATCH_SHA256: 32, MATCH_SHA512: 64}
# Bounds on what a remote party controls.
MAX_RECORDS = 32  # TLSA records considered per host
MAX_CHAIN = pkix.MAX_CHAIN  # certificates of the presented chain looked at

Mode = Literal["none", "dane", "encrypt"]


@dataclass(frozen=True)
class TLSA:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """rfc7672:3.1.3 / rfc6698:2.1 — parameters we know, data of the right size."""
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (0, 1):
            return False
        if self.mtype == MATCH_FULL:
            return bool(self.data)
        return _DIGEST_SIZE.get(self.mtype) == len(self.data)

    def __str__(self) -> str:
        # The presentation format (rfc6698:2.2), as TLS-RPT's policy-string wants it.
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


@dataclass(frozen=True)
class HostPolicy:
    """What DANE asks of one MX host (``mode="none"``: nothing)."""

    host: str
    mode: Mode = "none"
    base_domain: str = ""  # the TLSA base domain, also the SNI (rfc7672:8.1)
    names: tuple[str, ...] = ()  # reference identifiers for DANE-TA (rfc7672:3.2.2)
    records: tuple[TLSA, ...] = ()  # the whole RRset, for logs and TLS-RPT

    @property
    def policy(self) -> str:
        """The label logs and delivery results use."""
        return {"dane": "dane", "encrypt": "dane-encrypt"}.get(self.mode, "")


NO_DANE = HostPolicy("")


@dataclass(frozen=True)
class Verdict:
    """What ``verify_chain`` found."""

    ok: bool
    record: TLSA | None = None
    result_type: str = ""  # rfc8460:4.3 when not ok
    reason: str = ""


class TLSALookupError(Exception):
    """The TLSA lookup of a host failed: it may not be used now (rfc7672:2.2)."""

    def __init__(self, host: str, base_domain: str, reason: str, bogus: bool) -> None:
        super().__init__(reason)
        self.host = host
        self.base_domain = base_domain
        self.bogus = bogus


def tlsa_name(port: int, host: str) -> str:
    # rfc6698:3 — _<port>._tcp.<base domain>
    return f"_{port}._tcp.{host}"


async def discover(resolver: Resolver, host: str, canonical: str, port: int) -> HostPolicy:
    """The DANE policy of ``host``, whose MX and address answers were secure.

    ``canonical`` is the CNAME-expanded host name from the (secure) address
    lookup, or "". Raises TLSALookupError when a TLSA lookup fails.
    """
    host = normalize_name(host)
    canonical = normalize_name(canonical)
    # rfc7672:2.2.3 — the expanded name first when the expansion is secure.
    bases = [canonical, host] if canonical and canonical != host else [host]
    for base in bases:
        try:
            answer = await resolver.lookup(tlsa_name(port, base), "TLSA")
        except DNSTempError as exc:
            raise TLSALookupError(host, base, str(exc), isinstance(exc, DNSBogusError)) from None
        if not answer.secure or not answer.records:
            continue  # rfc7672:2.2 — insecure, or a secure denial: not DANE here
        records = tuple(_record(value) for value in answer.records[:MAX_RECORDS])
        # rfc7672:3.2.2 — the TLSA base domain, and the MX host name as well.
        names = tuple(dict.fromkeys([base, host]))
        mode: Mode = "dane" if any(r.usable for r in records) else "encrypt"
        return HostPolicy(host, mode, base, names, records)
    return HostPolicy(host)


def _record(value: Any) -> TLSA:
    usage, selector, mtype, data = value
    return TLSA(int(usage), int(selector), int(mtype), bytes(data))


# -- authentication (rfc7672:3) ------------------------------------------------------


def peer_chain(ssl_object: Any) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER.

    Python 3.13 has ``SSLObject.get_unverified_chain()``; 3.10-3.12 have it on
    the private ``_sslobj`` (the same OpenSSL SSL_get_peer_cert_chain). When
    neither exists, the leaf alone: DANE-EE works, DANE-TA fails closed.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        chain = getter() or []
        return [_der(cert) for cert in chain[:MAX_CHAIN]]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _der(cert: Any) -> bytes:
    if isinstance(cert, bytes):
        return cert
    return bytes(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]


def verify_chain(
    records: Sequence[TLSA],
    chain: Sequence[bytes],
    names: Sequence[str],
    now: datetime.datetime,
) -> Verdict:
    """Whether the chain the server sent (DER, leaf first) matches a usable record."""
    usable = [record for record in records if record.usable]
    if not usable:
        return Verdict(False, result_type="tlsa-invalid", reason="no usable TLSA record")
    certs = pkix.load_chain(chain)
    if not certs:
        return Verdict(False, result_type="validation-failure", reason="no certificate")
    leaf = certs[0]
    # rfc7672:3.1.1 — DANE-EE: the leaf (or its key) itself; no name, no expiry.
    for record in usable:
        if record.usage == DANE_EE and _matches(record, leaf):
            return Verdict(True, record)
    # rfc7672:3.1.2 — DANE-TA: a certificate above the leaf is the trust anchor.
    failures: list[str] = []
    for record in usable:
        if record.usage != DANE_TA:
            continue
        for anchor in certs[1:]:
            if not _matches(record, anchor):
                continue
            for name in names:
                try:
                    pkix.verifier(Store([anchor]), name, now).verify(leaf, certs[1:])
                except (VerificationError, ValueError) as exc:
                    failures.append(str(exc))
                    continue
                return Verdict(True, record)
    if not failures:
        return Verdict(False, result_type="validation-failure", reason="no TLSA record matches")
    if not any(pkix.name_matches(leaf, name) for name in names):
        # rfc8460:4.3 — the certificate does not name the host.
        return Verdict(
            False,
            result_type="certificate-host-mismatch",
            reason=f"certificate names none of {', '.join(names)}",
        )
    return Verdict(False, result_type="validation-failure", reason=failures[0])


def _matches(record: TLSA, cert: x509.Certificate) -> bool:
    try:
        if record.selector == SELECTOR_CERT:
            data = cert.public_bytes(Encoding.DER)
        else:
            data = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm):
        return False
    if record.mtype == MATCH_SHA256:
        data = hashlib.sha256(data).digest()
    elif record.mtype == MATCH_SHA512:
        data = hashlib.sha512(data).digest()
    return data == record.data


__all__ = [
    "NO_DANE",
    "TLSA",
    "HostPolicy",
    "TLSALookupError",
    "Verdict",
    "discover",
    "peer_chain",
    "tlsa_name",
    "verify_chain",
]
