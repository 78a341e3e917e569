"""Time-based one-time passwords (TOTP, RFC 6238) with pyotp.

The usual authenticator-app profile: HMAC-SHA1, 6 digits, 30-second steps,
a 160-bit base32 secret. A code is accepted one step either side of the
current one (clocks drift); ``matching_step`` says which step matched so the
caller can refuse that step and earlier ones afterwards (no replay).

Accounts imports this module when a TOTP method is first used, so commands
that never touch TOTP do not pay for importing pyotp.
"""

from __future__ import annotations

import hmac

import pyotp

DIGITS = 6
PERIOD = 30  # seconds per time step
WINDOW = 1  # steps accepted either side of the current one
SECRET_LENGTH = 32  # base32 characters: 160 bits, the RFC 4226 recommendation


def new_secret() -> str:
    """A fresh random secret, base32 (pyotp uses the ``secrets`` module)."""
    return pyotp.random_base32(SECRET_LENGTH)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI that authenticator apps read from a QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD).provisioning_uri(
        name=account, issuer_name=issuer
    )


def time_step(now: float) -> int:
    """The RFC 6238 time step (T) at Unix time ``now``."""
    return int(now // PERIOD)


def code_at(secret: str, step: int) -> str:
    """The code for one time step (what the authenticator app shows then)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD).generate_otp(step)


def normalize_code(code: str) -> str | None:
    """The code without spaces (apps show "123 456"); None unless DIGITS digits."""
    compact = "".join(code.split())
    if len(compact) != DIGITS or not compact.isascii() or not compact.isdigit():
        return None
    return compact


def matching_step(secret: str, code: str, now: float, *, after: int = -1) -> int | None:
    """The time step within WINDOW of ``now`` whose code is ``code``, or None.

    Steps up to and including ``after`` (the last one accepted) never match.
    Every candidate step is computed and compared in constant time, so the
    time taken does not depend on which one matched.
    """
    normalized = normalize_code(code)
    if normalized is None:
        return None
    current = time_step(now)
    found: int | None = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        if step < 0:
            continue
        if hmac.compare_digest(code_at(secret, step), normalized) and step > after:
            found = step if found is None else found
    return found
