"""A self-signed certificate for the time before the first ACME issuance.

The TLS listeners start with it (they need some certificate), and the
manager replaces it within seconds of a reachable CA; clients that connect
meanwhile see a certificate they do not trust, as they would see no TLS at
all otherwise. It is written beside the ACME state, never as
``fullchain.pem``: the manager must not take it for an issued certificate.

With ``[acme] dane`` it is made with the key in use (estafeta.acme.dane),
which the TLSA records name already: a DANE client (rfc7672:3.1.1, DANE-EE
ignores the issuer and the names) accepts it until the first issuance.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from estafeta.durable import write_atomic

CERT = "placeholder-cert.pem"
KEY = "placeholder-key.pem"
LIFETIME = datetime.timedelta(days=7)


def placeholder(
    directory: Path, names: tuple[str, ...], key_pem: bytes | None = None
) -> tuple[Path, Path]:
    """The placeholder's certificate and key paths, made (again) when absent,
    expired, or not of ``key_pem`` (when given; a new key otherwise); the
    directory is made 0700 and the files 0600."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT, directory / KEY
    now = datetime.datetime.now(datetime.UTC)
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if (
            current.not_valid_after_utc > now + datetime.timedelta(hours=1)
            and key_path.is_file()
            and (key_pem is None or key_path.read_bytes() == key_pem)
        ):
            return cert_path, key_path
    except (OSError, ValueError):
        pass
    cert_pem, key_pem = self_signed(names, "estafeta placeholder", LIFETIME, key_pem=key_pem)
    write_atomic(key_path, key_pem)
    write_atomic(cert_path, cert_pem)
    return cert_path, key_path


def self_signed(
    names: tuple[str, ...],
    common_name: str,
    lifetime: datetime.timedelta,
    extra: x509.ExtensionType | None = None,
    key_pem: bytes | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``names`` (and a critical ``extra``
    extension) with ``key_pem`` (a new P-256 key when None), and its key, as PEM."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_pem is None:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        loaded = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("the placeholder's key must be EC or RSA")
        key = loaded
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    cert = builder.sign(key, hashes.SHA256())
    if key_pem is None:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
