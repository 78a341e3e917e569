"""SASL SCRAM-SHA-256 and SCRAM-SHA-256-PLUS, server side, sans-IO.

rfc5802 (SCRAM), rfc7677 (the SHA-256 variants), rfc9266 (``tls-exporter``
channel binding). No socket and no database here: a session feeds the
client's messages to a ``ScramServer`` and sends what it returns; looking up
the account's salt and credentials is the caller's (``estafeta.auth.guard.
Authenticator.scram_login``)::

    server = ScramServer("SCRAM-SHA-256-PLUS", binding=exporter, plus_offered=True)
    user = server.client_first(message)          # ScramError / ScramMalformed
    challenge = server.server_first(salt, iterations)
    server.client_final(message)                 # ScramError / ScramMalformed
    index = server.verify(credentials)           # None: refused
    final = server.server_final(credentials[index])

Several credentials of one account (its password, its app passwords) share
one salt and iteration count, so the server-first message does not depend on
which one the client uses; ``verify`` tries the proof against each one
(rfc5802:3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage), good if
H(ClientKey) == StoredKey).

Channel binding (rfc5802:6): a client that says ``y`` (it could bind but
thinks we cannot) while we offered -PLUS is being downgraded: the exchange
goes on and fails at the proof, like a wrong password (so it goes through the
login guard). So does a ``c=`` that does not match this connection's
tls-exporter data (a relayed handshake). Only ``tls-exporter`` is supported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from estafeta.auth.sasl import MalformedSASL, SASLError

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
MECHANISMS = (SCRAM_SHA_256, SCRAM_SHA_256_PLUS)
CHANNEL_BINDING = "tls-exporter"  # rfc9266:2
MAX_MESSAGE = 1024  # octets of one client message (decoded): ours, not the RFC's
MIN_ITERATIONS = 4096  # rfc7677:4 "at least 4096"
DEFAULT_ITERATIONS = 10_000
SALT_LENGTH = 16
KEYS_LENGTH = 64  # StoredKey || ServerKey as stored
_NONCE_BYTES = 18  # 24 base64 characters of our own
_DIGEST = hashlib.sha256


class ScramError(SASLError):
    """A well-formed message we refuse (authzid of another user, unsupported binding)."""


class ScramMalformed(MalformedSASL):
    """Not a SCRAM message (syntax, size, order)."""


@dataclass(frozen=True)
class Credential:
    """One secret of an account as SCRAM needs it (rfc5802:3)."""

    stored_key: bytes
    server_key: bytes
    kind: str = "password"  # "password" or "app"
    name: str = ""  # the app password's name


# -- key derivation ------------------------------------------------------------


def saslprep(text: str) -> str:
    """rfc4013 SASLprep (stringprep profile for user names and passwords).

    ValueError for prohibited characters or bad bidirectional text."""
    # rfc4013:2.1 mapping: non-ASCII spaces to SPACE, B.1 to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # rfc4013:2.2 normalisation: NFKC.
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,  # rfc4013:2.5 unassigned code points
    )
    for ch in normalized:
        if any(table(ch) for table in prohibited):
            raise ValueError("prohibited character")
    # rfc3454:6 bidirectional text.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise ValueError("mixed bidirectional text")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ValueError("bad bidirectional text")
    return normalized


def _normalize_password(password: str) -> bytes:
    """rfc5802:2.2 Normalize(); a password SASLprep refuses is used as it is
    (as most clients do), so that it still works."""
    try:
        prepared = saslprep(password)
    except ValueError:
        prepared = password
    return prepared.encode("utf-8", "surrogatepass")


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, _DIGEST).digest()


def derive_keys(password: str, salt: bytes, iterations: int) -> bytes:
    """StoredKey || ServerKey for a password (rfc5802:3). Slow on purpose
    (PBKDF2): only when a password is set or upgraded, off the event loop."""
    salted = hashlib.pbkdf2_hmac("sha256", _normalize_password(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored_key = _DIGEST(client_key).digest()
    server_key = _hmac(salted, b"Server Key")
    return stored_key + server_key


def split_keys(keys: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) from what ``derive_keys`` returned."""
    half = len(keys) // 2
    return keys[:half], keys[half:]


def fake_salt(secret: bytes, account: str) -> bytes:
    """A salt for an account that has none (or is no account): the same on
    every attempt, unguessable without ``secret``, as long as a real one."""
    return _hmac(secret, b"scram-salt\x00" + account.encode("utf-8", "surrogatepass"))[:SALT_LENGTH]


# -- message syntax (rfc5802:7) --------------------------------------------------


def _decode_saslname(value: str) -> str:
    """rfc5802:5.1: "=2C" is ",", "=3D" is "="; any other "=" is malformed."""
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "=":
            escape = value[i : i + 3]
            if escape == "=2C":
                out.append(",")
            elif escape == "=3D":
                out.append("=")
            else:
                raise ScramMalformed("Malformed SCRAM user name")
            i += 3
            continue
        out.append(ch)
        i += 1
    if not out:
        raise ScramMalformed("Empty SCRAM user name")
    return "".join(out)


def _printable_nonce(nonce: str) -> bool:
    # rfc5802:7 printable = %x21-2B / %x2D-7E
    return bool(nonce) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in nonce)


def _attributes(text: str) -> list[tuple[str, str]]:
    """ "a=x,b=y" as pairs; every part must be one letter, "=", a value."""
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha() or not part[0].isascii():
            raise ScramMalformed("Malformed SCRAM attribute")
        pairs.append((part[0], part[2:]))
    return pairs


def _b64decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ScramMalformed("Malformed base64 in SCRAM message") from None


@dataclass
class ScramServer:
    """One SCRAM exchange of one connection (the four messages of rfc5802:5)."""

    mechanism: str
    binding: bytes | None = None  # this connection's tls-exporter data, if known
    plus_offered: bool = False  # did we advertise -PLUS on this connection?
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(_NONCE_BYTES))

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"unknown SCRAM mechanism {self.mechanism!r}")
        self.step = 0
        self.user = ""
        self.binding_ok = True
        self._gs2_header = b""
        self._client_first_bare = ""
        self._server_first = ""
        self._full_nonce = ""
        self._auth_message = b""
        self._proof = b""
        self.salt = b""
        self.iterations = 0

    @staticmethod
    def _text(message: bytes) -> str:
        if len(message) > MAX_MESSAGE:
            raise ScramMalformed("SCRAM message too long")
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramMalformed("SCRAM message is not UTF-8") from None

    def _expect(self, step: int) -> None:
        if self.step != step:
            raise ScramMalformed("SCRAM message out of order")
        self.step += 1

    def client_first(self, message: bytes) -> str:
        """Parse the client-first-message (rfc5802:5.1); the user it names."""
        self._expect(0)
        text = self._text(message)
        # gs2-header = gs2-cbind-flag "," [authzid] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramMalformed("Malformed SCRAM client-first message")
        flag, authzid, bare = parts
        plus = self.mechanism == SCRAM_SHA_256_PLUS
        if flag.startswith("p="):
            if not plus:
                # rfc5802:6: "p" only with a -PLUS mechanism.
                raise ScramError("Channel binding needs SCRAM-SHA-256-PLUS")
            if flag[2:] != CHANNEL_BINDING:
                raise ScramError("Unsupported channel binding type: use tls-exporter")
            if self.binding is None:
                raise ScramError("No channel binding on this connection")
        elif flag in ("n", "y"):
            if plus:
                raise ScramError("SCRAM-SHA-256-PLUS needs p=tls-exporter")
            if flag == "y" and self.plus_offered:
                # rfc5802:6: the client thinks we cannot bind, but we offered
                # -PLUS: a downgrade. Fail the authentication (at the proof).
                self.binding_ok = False
        else:
            raise ScramMalformed("Malformed SCRAM channel binding flag")
        attributes = _attributes(bare)
        if attributes and attributes[0][0] == "m":
            # rfc5802:5.1 reserved-mext: "the server MUST fail".
            raise ScramError("Unsupported SCRAM extension")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise ScramMalformed("Malformed SCRAM client-first message")
        user = _decode_saslname(attributes[0][1])
        if authzid:
            if not authzid.startswith("a="):
                raise ScramMalformed("Malformed SCRAM authorization identity")
            # We do not let one user act as another (as for PLAIN).
            if _decode_saslname(authzid[2:]).lower() != user.lower():
                raise ScramError("Authorization identity must match the user")
        client_nonce = attributes[1][1]
        if not _printable_nonce(client_nonce):
            raise ScramMalformed("Malformed SCRAM nonce")
        self._gs2_header = (flag + "," + authzid + ",").encode("utf-8")
        self._client_first_bare = bare
        self._full_nonce = client_nonce + self.nonce
        self.user = user
        return user

    def server_first(self, salt: bytes, iterations: int) -> bytes:
        """The server-first-message (rfc5802:5.1) for the account's salt."""
        self._expect(1)
        self.salt = salt
        self.iterations = iterations
        self._server_first = (
            f"r={self._full_nonce},s={base64.b64encode(salt).decode('ascii')},i={iterations}"
        )
        return self._server_first.encode("ascii")

    def client_final(self, message: bytes) -> None:
        """Parse the client-final-message (rfc5802:5.1) and check its binding."""
        self._expect(2)
        text = self._text(message)
        without_proof, sep, proof = text.rpartition(",p=")
        if not sep:
            raise ScramMalformed("SCRAM client-final message without proof")
        attributes = _attributes(without_proof)
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise ScramMalformed("Malformed SCRAM client-final message")
        if attributes[1][1] != self._full_nonce:
            raise ScramMalformed("SCRAM nonce does not match")
        self._proof = _b64decode(proof)
        if len(self._proof) != _DIGEST().digest_size:
            raise ScramMalformed("Malformed SCRAM proof")
        # rfc5802:7 cbind-input = gs2-header [cbind-data]; rfc9266:2.
        expected = self._gs2_header
        if self._gs2_header.startswith(b"p="):
            expected += self.binding or b""
        if not hmac.compare_digest(_b64decode(attributes[0][1]), expected):
            self.binding_ok = False
        self._auth_message = ",".join(
            (self._client_first_bare, self._server_first, without_proof)
        ).encode("utf-8")

    def verify(self, credentials: Sequence[Credential]) -> int | None:
        """Which credential the proof matches (rfc5802:3), or None. Every
        credential is tried, so the time does not say which one matched."""
        if self.step != 3:
            raise ScramMalformed("SCRAM proof checked out of order")
        found = None
        for index, credential in enumerate(credentials):
            signature = _hmac(credential.stored_key, self._auth_message)
            client_key = bytes(a ^ b for a, b in zip(self._proof, signature, strict=True))
            if hmac.compare_digest(_DIGEST(client_key).digest(), credential.stored_key):
                found = index if found is None else found
        return found if self.binding_ok else None

    def server_final(self, credential: Credential) -> bytes:
        """The server-final-message (rfc5802:5.1): the server's signature."""
        signature = _hmac(credential.server_key, self._auth_message)
        return b"v=" + base64.b64encode(signature)
