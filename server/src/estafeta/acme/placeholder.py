"""A self-signed certificate for the time before the first ACME issuance.

The TLS listeners start with it (they need some certificate), and the
manager replaces it within seconds of a reachable CA; clients that connect
meanwhile see a certificate they do not trust, as they would see no TLS at
all otherwise. It is written beside the ACME state, never as
``fullchain.pem``: the manager must not take it for an issued certificate.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from estafeta.durable import write_atomic

CERT = "placeholder-cert.pem"
KEY = "placeholder-key.pem"
LIFETIME = datetime.timedelta(days=7)


def placeholder(directory: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    """The placeholder's certificate and key paths, made (again) when absent
    or expired; the directory is made 0700 and the files 0600."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT, directory / KEY
    now = datetime.datetime.now(datetime.UTC)
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if current.not_valid_after_utc > now + datetime.timedelta(hours=1) and key_path.is_file():
            return cert_path, key_path
    except (OSError, ValueError):
        pass
    cert_pem, key_pem = self_signed(names, "estafeta placeholder", LIFETIME)
    write_atomic(key_path, key_pem)
    write_atomic(cert_path, cert_pem)
    return cert_path, key_path


def self_signed(
    names: tuple[str, ...],
    common_name: str,
    lifetime: datetime.timedelta,
    extra: x509.ExtensionType | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed P-256 certificate for ``names`` (and a critical ``extra``
    extension), and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
