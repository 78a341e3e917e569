"""A SCRAM-SHA-256(-PLUS) client for tests (rfc5802:5), written apart from
the server's code so that one cannot hide the other's mistakes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class ScramClient:
    def __init__(
        self,
        user: str,
        password: str,
        *,
        binding: bytes | None = None,
        flag: str | None = None,
        authzid: str = "",
        nonce: str | None = None,
    ) -> None:
        """``binding``: tls-exporter data, for SCRAM-SHA-256-PLUS; ``flag``
        forces the gs2 flag ("n", "y", "p=...")."""
        self.user = user
        self.password = password
        self.binding = binding
        if flag is None:
            flag = "p=tls-exporter" if binding is not None else "n"
        self.gs2 = f"{flag},{'a=' + authzid if authzid else ''},"
        self.nonce = nonce or secrets.token_urlsafe(18)
        self.bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={self.nonce}"
        self.server_signature = b""

    @property
    def mechanism(self) -> str:
        return "SCRAM-SHA-256-PLUS" if self.gs2.startswith("p=") else "SCRAM-SHA-256"

    def first(self) -> bytes:
        return (self.gs2 + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(part.split("=", 1) for part in text.split(","))
        assert fields["r"].startswith(self.nonce)
        salt = base64.b64decode(fields["s"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, int(fields["i"]))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        cbind = self.gs2.encode() + (self.binding or b"")
        without_proof = f"c={base64.b64encode(cbind).decode()},r={fields['r']}"
        auth_message = f"{self.bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = _hmac(salted, b"Server Key")
        self.server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verified(self, server_final: bytes) -> bool:
        return server_final == b"v=" + base64.b64encode(self.server_signature)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | bytes) -> bytes:
    return base64.b64decode(text)
