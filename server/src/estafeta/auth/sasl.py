"""SASL PLAIN (rfc4616), shared by IMAP, POP3 and (later) submission."""

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
