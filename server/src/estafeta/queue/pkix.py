"""Certificate checks with cryptography's path builder (``x509.verification``).

Two users: DANE-TA (estafeta.queue.dane, a certificate the server sent as
the trust anchor, rfc7672:3.1.2) and the MTA-STS ``testing`` mode
(estafeta.queue.delivery): a testing policy is not enforced (rfc8461:5),
so the session's handshake does not verify the certificate, but what the
verification would have found is what TLS reports are for (rfc8460:4.3).
``check`` does that verification after the fact, against the trust store of
the deliverer's verifying context (the system's CA bundle and ``[queue]
ca_file``) and the MX host name (rfc8461:4.2: the MX host name, a wildcard
only as the whole leftmost label, rfc6125:6.4.3).

The extension rules are relaxed to what makes a chain a chain (CA
certificates say CA:TRUE, the leaf has a subjectAltName), as OpenSSL's own
verification is, rather than the CA/Browser Forum's profile, so that a
private CA (the lab's ``ca_file``) passes here as it does in the handshake.
A chain is at most ``MAX_CHAIN`` certificates; a certificate that does not
parse ends it.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from estafeta.dns import normalize_name
from estafeta.reports import tlsrpt

MAX_CHAIN = 10  # certificates of the presented chain looked at

# The failure-reason-codes OpenSSL gives the same findings in a handshake
# (estafeta.reports.tlsrpt_recorder.classify_tls_error), so that a report
# says the same whichever way a certificate was checked.
EXPIRED = "X509_V_ERR_CERT_HAS_EXPIRED"
NOT_YET_VALID = "X509_V_ERR_CERT_NOT_YET_VALID"
HOSTNAME_MISMATCH = "X509_V_ERR_HOSTNAME_MISMATCH"


def _ca_constraints(policy: Any, cert: x509.Certificate, ext: Any) -> None:
    if ext is None or not ext.ca:
        raise ValueError("an issuing certificate is not a CA")


_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, _ca_constraints
)
_EE_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)


def verifier(store: Store, name: str, now: datetime.datetime) -> Any:
    """A server verifier for ``name`` with ``store``'s trust anchors."""
    return (
        PolicyBuilder()
        .store(store)
        .time(now)
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_server_verifier(x509.DNSName(name))
    )


def load_chain(chain: Sequence[bytes]) -> list[x509.Certificate]:
    """The chain (DER, leaf first) as certificates, up to an unparsable one."""
    certs: list[x509.Certificate] = []
    for der in chain[:MAX_CHAIN]:
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            break  # what follows an unparsable certificate cannot be a chain
    return certs


def trust_store(anchors: Sequence[bytes]) -> Store | None:
    """A store of the DER certificates that parse; None when none does."""
    certs: list[x509.Certificate] = []
    with warnings.catch_warnings():
        # A system bundle's old roots break today's rules (a serial number
        # that is not positive, rfc5280:4.1.2.2); OpenSSL trusts them all the
        # same, and so does the check that stands in for it.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for der in anchors:
            try:
                certs.append(x509.load_der_x509_certificate(der))
            except ValueError:
                continue
    return Store(certs) if certs else None


def name_matches(cert: x509.Certificate, name: str) -> bool:
    """A dNSName equal to ``name``, or ``*.`` + its parent (rfc7672:3.2.3,
    rfc6125:6.4.3)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return False
    name = normalize_name(name)
    parent = name.partition(".")[2]
    for dns_name in san.value.get_values_for_type(x509.DNSName):
        candidate = normalize_name(dns_name)
        if candidate == name or (parent and candidate == "*." + parent):
            return True
    return False


def check(
    chain: Sequence[bytes], store: Store | None, name: str, now: datetime.datetime
) -> tuple[str, str] | None:
    """What a verifying handshake would have found wrong with ``chain`` for
    the host ``name``: an rfc8460:4.3 result type and a failure-reason-code,
    or None when the certificate is valid."""
    certs = load_chain(chain)
    if not certs:
        return tlsrpt.VALIDATION_FAILURE, "no certificate"
    leaf = certs[0]
    if now > leaf.not_valid_after_utc:
        return tlsrpt.CERTIFICATE_EXPIRED, EXPIRED
    if now < leaf.not_valid_before_utc:
        return tlsrpt.CERTIFICATE_NOT_TRUSTED, NOT_YET_VALID
    if not name_matches(leaf, name):
        return tlsrpt.CERTIFICATE_HOST_MISMATCH, HOSTNAME_MISMATCH
    if store is None:
        return tlsrpt.CERTIFICATE_NOT_TRUSTED, "no trust anchors"
    try:
        verifier(store, name, now).verify(leaf, certs[1:])
    except (VerificationError, ValueError) as exc:
        return tlsrpt.CERTIFICATE_NOT_TRUSTED, " ".join(str(exc).split())[:200]
    return None


__all__ = ["MAX_CHAIN", "check", "load_chain", "name_matches", "trust_store", "verifier"]
