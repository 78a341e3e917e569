"""SASL for IMAP, POP3, submission and ManageSieve: PLAIN (rfc4616) and the
response lines every mechanism shares (SCRAM: estafeta.auth.scram)."""

from __future__ import annotations

import base64
import binascii


class SASLError(ValueError):
    """An unacceptable SASL response; the text says why."""


class MalformedSASL(SASLError):
    """Not even syntactically a PLAIN response (a protocol error, not a refusal)."""


def decode_plain(response: str) -> tuple[str, str]:
    """(authcid, password) from a base64 PLAIN response ("=" is empty).

    rfc4616:2: message = [authzid] UTF8NUL authcid UTF8NUL passwd. We do not
    let one user act as another, so a non-empty authzid must name the same
    user.
    """
    try:
        decoded = base64.b64decode(response, validate=True) if response != "=" else b""
        authzid, authcid, password = decoded.decode("utf-8").split("\x00")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MalformedSASL("Malformed PLAIN response") from None
    if authzid and authzid.lower() != authcid.lower():
        raise SASLError("Authorization identity must match the user")
    return authcid, password


class SASLCancelled(SASLError):
    """The client sent "*" (rfc4422:3.5): the exchange ends, no login."""


# Base64 of the longest client message we take (estafeta.auth.scram.MAX_MESSAGE).
MAX_RESPONSE_LINE = 4 * -(-1024 // 3)


def decode_response(line: str | bytes) -> bytes:
    """A client's SASL response line (base64; "=" for an empty initial
    response, rfc4959:3; "*" cancels, rfc4422:3.5) as bytes."""
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if text == "*":
        raise SASLCancelled("Authentication cancelled")
    if len(text) > MAX_RESPONSE_LINE:
        raise MalformedSASL("SASL response too long")
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedSASL("Malformed base64 in SASL response") from None
