"""Sender Rewriting Scheme, for mail we forward to other domains.

When ``list@example.net`` forwards to ``friend@elsewhere.org``, the envelope
sender must become one of ours: the original sender's SPF record does not
list our address, so the next hop would see an SPF fail (rfc7208:1 and
appendix D discuss forwarding). We rewrite it, reversibly and unforgeably,
in the form of the 2004 SRS paper (Shevek; as postsrsd and exim do):

    SRS0=HHHH=TT=orig.domain=orig-local@our.domain

TT is the day (base32, 10 bits), HHHH the first 4 characters of a base64
HMAC-SHA1 over TT, the domain and the local part under a secret kept in
``data_dir/srs.key``. A bounce to such an address comes back to our MX,
which checks the hash and the age (at most ``MAX_AGE_DAYS``) and sends it on
to the original sender. Anything else addressed to ``SRS0=`` is refused, so
we are not an open relay through forged SRS addresses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_AGE_DAYS = 21
HASH_LENGTH = 4


class SRSError(ValueError):
    """An SRS address that is malformed, forged or too old."""


def load_secret(path: Path) -> bytes:
    """The SRS secret, created on first use (mode 0600, written atomically)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # loses to a concurrent creator instead of replacing it
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def _day(now: float) -> int:
    return int(now // 86400) % 1024


def _stamp(day: int) -> str:
    return _BASE32[day >> 5] + _BASE32[day & 31]


def _hash(secret: bytes, *parts: str) -> str:
    digest = hmac.new(secret, "".join(p.lower() for p in parts).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")[:HASH_LENGTH]


def is_srs(local: str) -> bool:
    return local[:5].upper() in ("SRS0=", "SRS1=")


def forward(secret: bytes, sender: str, our_domain: str, now: float | None = None) -> str:
    """The envelope sender to use when forwarding mail from ``sender``."""
    if not sender:
        return ""  # rfc5321:4.5.5 — a bounce stays a bounce
    local, _, domain = sender.rpartition("@")
    if domain.lower() == our_domain.lower() or is_srs(local):
        # Ours already, or rewritten by us before: SRS1 chains are not needed
        # for a single forwarding hop, and our own senders pass our SPF.
        return sender
    stamp = _stamp(_day(time.time() if now is None else now))
    digest = _hash(secret, stamp, domain, local)
    return f"SRS0={digest}={stamp}={domain}={local}@{our_domain}"


def reverse(secret: bytes, address: str, now: float | None = None) -> str:
    """The original sender behind one of our SRS0 addresses; SRSError otherwise."""
    local, _, _ = address.rpartition("@")
    if local[:5].upper() != "SRS0=":
        raise SRSError("not an SRS0 address")
    parts = local[5:].split("=", 3)
    if len(parts) != 4 or not all(parts):
        raise SRSError("malformed SRS0 address")
    digest, stamp, domain, orig_local = parts
    if len(stamp) != 2 or any(c not in _BASE32 for c in stamp.upper()):
        raise SRSError("malformed SRS0 timestamp")
    expected = _hash(secret, stamp.upper(), domain, orig_local)
    # Mail systems may change case: compare the hash case-insensitively, as the paper says.
    if not hmac.compare_digest(expected.lower(), digest.lower()):
        raise SRSError("SRS0 hash does not match")
    stamp = stamp.upper()
    then = (_BASE32.index(stamp[0]) << 5) | _BASE32.index(stamp[1])
    age = (_day(time.time() if now is None else now) - then) % 1024
    if age > MAX_AGE_DAYS:
        raise SRSError("SRS0 address has expired")
    return f"{orig_local}@{domain}"
