"""Pending ACME challenges, shared between the certificate manager and the listeners.

The manager (estafeta.acme.manager) adds a challenge before it tells the CA
to validate it and removes it when the authorization is settled; the ``http``
listener answers HTTP-01 from ``http01_response`` and the ``https`` listener
answers TLS-ALPN-01 with ``alpn_context``. All of it lives in memory and is
touched only from the event loop's thread.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import ssl
import tempfile

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from estafeta.acme.hello import ClientHello
from estafeta.acme.placeholder import self_signed

# rfc8555:8.3: the path of an HTTP-01 resource.
HTTP01_PREFIX = "/.well-known/acme-challenge/"
# rfc8555:8.1, 8.3: a token is base64url without padding; a CA sends at
# least 128 bits (22 characters). We accept nothing else and nothing longer.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# rfc8737:6.1: the ALPN protocol name and the acmeIdentifier extension.
ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def valid_token(token: str) -> bool:
    """Whether ``token`` has the form of an ACME challenge token."""
    return _TOKEN.fullmatch(token) is not None


class Challenges:
    """In-memory challenge responses, by HTTP-01 token and by TLS-ALPN-01 name."""

    def __init__(self) -> None:
        self._http01: dict[str, str] = {}
        self._alpn: dict[str, ssl.SSLContext] = {}

    # -- what the listeners ask -------------------------------------------------------------

    def http01_response(self, token: str) -> str | None:
        """The key authorization to serve at ``/.well-known/acme-challenge/<token>``
        (rfc8555:8.3: body, ``application/octet-stream``), or None: 404."""
        if not valid_token(token):
            return None
        return self._http01.get(token)

    def http01_for_path(self, path: str) -> str | None:
        """``http01_response`` for a request path (no query), or None."""
        if not path.startswith(HTTP01_PREFIX):
            return None
        return self.http01_response(path[len(HTTP01_PREFIX) :])

    def alpn_context(self, server_name: str) -> ssl.SSLContext | None:
        """The SSL context that answers TLS-ALPN-01 for ``server_name`` while
        its challenge is pending (rfc8737:3), or None."""
        return self._alpn.get(server_name.lower().rstrip("."))

    def context_for(self, hello: ClientHello) -> ssl.SSLContext | None:
        """The TLS-ALPN-01 context when ``hello`` is an ACME validator's:
        it offers exactly ``acme-tls/1`` (rfc8737:3) for a pending name."""
        if hello.server_name is None or hello.alpn != (ACME_TLS_ALPN.encode(),):
            return None
        return self.alpn_context(hello.server_name)

    def pending(self) -> dict[str, int]:
        """How many challenges of each type are pending (for status and logs)."""
        return {"http-01": len(self._http01), "tls-alpn-01": len(self._alpn)}

    # -- what the manager does --------------------------------------------------------------

    def add_http01(self, token: str, key_authorization: str) -> None:
        if not valid_token(token):
            raise ValueError("the CA sent a challenge token that is not base64url")
        self._http01[token] = key_authorization

    def remove_http01(self, token: str) -> None:
        self._http01.pop(token, None)

    def add_tls_alpn01(self, name: str, context: ssl.SSLContext) -> None:
        self._alpn[name.lower()] = context

    def remove_tls_alpn01(self, name: str) -> None:
        self._alpn.pop(name.lower(), None)


def alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for TLS-ALPN-01 (rfc8737:3) and its key, as PEM.

    It names ``name`` as its only dNSName and carries the critical
    acmeIdentifier extension: the DER OCTET STRING of the SHA-256 digest of
    the key authorization.
    """
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # rfc8737:3: "extnValue ... OCTET STRING containing the SHA-256 digest".
    identifier = x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest)
    return self_signed((name,), "ACME challenge", datetime.timedelta(days=7), identifier)


def make_alpn_context(name: str, key_authorization: str) -> ssl.SSLContext:
    """An SSL context that presents the TLS-ALPN-01 certificate for ``name``
    and offers only ``acme-tls/1``, with TLS 1.2 or later (rfc8737:4).
    Blocking (key generation, a temporary file): run it in a thread."""
    cert_pem, key_pem = alpn_certificate(name, key_authorization)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_ALPN])
    # load_cert_chain reads files only; the key is a throwaway one for this
    # challenge, in a 0600 file that is gone when the block ends.
    with tempfile.NamedTemporaryFile(prefix="estafeta-acme-", suffix=".pem") as file:
        file.write(key_pem + cert_pem)
        file.flush()
        context.load_cert_chain(file.name)
    return context
