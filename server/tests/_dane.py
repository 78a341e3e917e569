"""TLSA test data: the certificate association of a certificate (rfc6698:2.1)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from estafeta.queue.dane import TLSA


def association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    """The certificate association data of a TLSA record (rfc6698:2.1.3)."""
    if selector == 0:
        data = cert.public_bytes(Encoding.DER)
    else:
        data = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def record(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> TLSA:
    return TLSA(usage, selector, mtype, association(cert, selector, mtype))


def rdata(tlsa: TLSA) -> tuple[int, int, int, bytes]:
    """A TLSA record as estafeta.dns gives it (and MockResolver takes it)."""
    return (tlsa.usage, tlsa.selector, tlsa.mtype, tlsa.data)
