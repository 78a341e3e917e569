"""The certificate manager's files under ``data_dir/acme`` (mode 0700).

Layout, every file mode 0600:

* ``account.key``: the ACME account key (EC P-256, PKCS#8 PEM);
* ``account.json``: ``{"directory": URL, "uri": account URL}``, the account
  at that CA (informational: the key finds the account again, rfc8555:7.3.1);
* ``fullchain.pem``, ``privkey.pem``: the certificate in use, leaf first,
  and its key;
* ``privkey.next.pem``, ``fullchain.next.pem``: an issuance under way;
* with ``[acme] dane``: ``privkey.standby.pem``, ``dane.json`` and
  ``rollover.request`` (estafeta.acme.dane, which also says how a switch to
  the standby key is ordered around the steps below). ``privkey.pem`` then
  exists from the first start, before any ``fullchain.pem``.

Every file is written atomically: a temporary file in the same directory,
fsync'd, renamed over the old name, then the directory fsync'd.

Crash ordering of an issuance, so that ``fullchain.pem`` and ``privkey.pem``
always hold a matching pair once ``load_current`` has run:

1. the new key goes to ``privkey.next.pem`` before the CSR is sent;
2. the issued chain goes to ``fullchain.next.pem``;
3. ``privkey.next.pem`` is renamed to ``privkey.pem``, then
   ``fullchain.next.pem`` to ``fullchain.pem``, then the directory fsync'd.

``load_current`` rolls a crash forward: a ``fullchain.next.pem`` that
matches ``privkey.next.pem`` (crash in step 3 before the first rename) or
``privkey.pem`` (crash between the two renames) is completed; anything else
of an unfinished issuance is removed. The pair in use is never touched
before a complete new pair exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from estafeta.durable import fsync_dir, write_atomic

ACCOUNT_KEY = "account.key"
ACCOUNT_JSON = "account.json"
FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"
NEXT_FULLCHAIN = "fullchain.next.pem"
NEXT_PRIVKEY = "privkey.next.pem"


@dataclass(frozen=True)
class Certificate:
    """A certificate chain with a key that matches its leaf."""

    chain_pem: bytes
    names: frozenset[str]
    not_before: float  # epoch seconds
    not_after: float
    fingerprint: str  # SHA-256 of the leaf, hex

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now < self.not_after


def certificate_names(cert: x509.Certificate) -> frozenset[str]:
    """The DNS names a certificate is for: its SANs, else its CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return frozenset(name.lower() for name in names)


def load_certificate(chain_pem: bytes, key_pem: bytes) -> Certificate:
    """Read a chain and check that ``key_pem`` is its leaf's key.
    Raises ValueError when either cannot be read or they do not match."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    leaf = chain[0]
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != leaf.public_key().public_bytes(*public):
        raise ValueError("the key does not belong to the certificate")
    return Certificate(
        chain_pem=chain_pem,
        names=certificate_names(leaf),
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def new_private_key(key_type: str) -> bytes:
    """A new certificate key, PKCS#8 PEM: ``ec-p256`` or ``rsa-2048``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_fits(key_pem: bytes, key_type: str) -> bool:
    """Whether ``key_pem`` is a private key of ``key_type`` (``ec-p256`` or ``rsa-2048``)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (TypeError, ValueError):
        return False
    if key_type == "rsa-2048":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


class AcmeFiles:
    """The files of one state directory. Blocking: call from a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fullchain = directory / FULLCHAIN
        self.privkey = directory / PRIVKEY

    def prepare(self) -> None:
        """Create the directory (0700) and tighten it and its files if needed."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(self.directory.stat().st_mode) != 0o700:
            self.directory.chmod(0o700)
        for path in self.directory.iterdir():
            if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
                path.chmod(0o600)

    # -- the account --------------------------------------------------------------------------

    def account_key(self) -> ec.EllipticCurvePrivateKey:
        """The account key, made on first use."""
        path = self.directory / ACCOUNT_KEY
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomic(
                path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC key")
        return key

    def account_uri(self, directory_url: str) -> str | None:
        try:
            data = json.loads((self.directory / ACCOUNT_JSON).read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("directory") != directory_url:
            return None
        uri = data.get("uri")
        return uri if isinstance(uri, str) else None

    def save_account(self, directory_url: str, uri: str) -> None:
        if self.account_uri(directory_url) != uri:
            data = {"directory": directory_url, "uri": uri}
            write_atomic(self.directory / ACCOUNT_JSON, json.dumps(data).encode() + b"\n")

    # -- the certificate ----------------------------------------------------------------------

    def current_key(self, key_type: str) -> bytes | None:
        """The key in use, when it is of ``key_type``; else None."""
        try:
            pem = self.privkey.read_bytes()
        except OSError:
            return None
        return pem if key_fits(pem, key_type) else None

    def stage_key(self, key_pem: bytes) -> None:
        """Step 1: keep the key of an issuance under way."""
        write_atomic(self.directory / NEXT_PRIVKEY, key_pem)

    def commit(self, chain_pem: bytes) -> Certificate:
        """Steps 2 and 3: make the issued chain and the staged key current.
        Raises ValueError (and changes nothing in use) if they do not match."""
        cert = load_certificate(chain_pem, (self.directory / NEXT_PRIVKEY).read_bytes())
        write_atomic(self.directory / NEXT_FULLCHAIN, chain_pem)
        self._finish(self.directory / NEXT_PRIVKEY)
        return cert

    def _finish(self, key: Path) -> None:
        if key != self.privkey:
            os.replace(key, self.privkey)
        os.replace(self.directory / NEXT_FULLCHAIN, self.fullchain)
        fsync_dir(self.directory)

    def load_current(self) -> Certificate | None:
        """The pair in use after rolling a crashed issuance forward, or None
        when there is none that can be read."""
        next_chain = self.directory / NEXT_FULLCHAIN
        next_key = self.directory / NEXT_PRIVKEY
        if next_chain.exists():
            for key in (next_key, self.privkey):
                with contextlib.suppress(OSError, ValueError):
                    load_certificate(next_chain.read_bytes(), key.read_bytes())
                    self._finish(key)
                    break
        next_chain.unlink(missing_ok=True)
        next_key.unlink(missing_ok=True)
        try:
            return load_certificate(self.fullchain.read_bytes(), self.privkey.read_bytes())
        except (OSError, ValueError):
            return None
