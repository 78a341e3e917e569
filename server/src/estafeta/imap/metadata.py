"""METADATA (rfc5464): entry names, what GETMETADATA returns, the METADATA
response. Pure functions, no IO; the entries are ``Accounts.metadata``'s
(estafeta.auth.metadata).

Bounds (rfc5464:4.1 asks at least 1,024 octets a value and 10 entries):
values up to ``MAX_VALUE`` octets (NO [METADATA MAXSIZE]), ``MAX_ENTRIES``
entries per mailbox and for the server entries of an account (NO
[METADATA TOOMANY]), names up to ``MAX_NAME`` octets; a GETMETADATA walks
at most the entries of one mailbox.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from estafeta.message import imap_string

__all__ = [
    "MAX_ENTRIES",
    "MAX_NAME",
    "MAX_VALUE",
    "READ_ONLY",
    "BadEntry",
    "check_name",
    "render",
    "select",
]

MAX_VALUE = 64 * 1024
MAX_ENTRIES = 100
MAX_NAME = 256
# rfc5464:3.2.1.1 /shared/admin is always read-only: the server's.
READ_ONLY = frozenset({"/shared/admin"})
# rfc5464:3.2 a slash-separated path under /private or /shared; no "*", "%",
# no empty component (no "//", no trailing "/"), no control characters.
_NAME_RE = re.compile(r"/(private|shared)(/[^/*%\x00-\x1f\x7f]+)+\Z")


class BadEntry(ValueError):
    """An entry name rfc5464:3.2 does not allow (the command's BAD)."""


def check_name(name: str) -> str:
    """The entry name in lower case (rfc5464:3.2: case-insensitive), or BadEntry."""
    lowered = name.lower()
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME or not _NAME_RE.match(lowered):
        raise BadEntry(f"invalid entry name {name[:60]!r}")
    vendor = lowered.split("/")
    if len(vendor) > 2 and vendor[2] == "vendor" and len(vendor) < 5:
        # rfc5464:3.2 /private/vendor/<vendor-token>/...: at least 4 components.
        raise BadEntry(f"vendor entry {name[:60]!r} needs a vendor token and a name")
    return lowered


def select(
    stored: Mapping[str, bytes], wanted: Sequence[str], depth: str, maxsize: int | None
) -> tuple[list[tuple[str, bytes | None]], int | None]:
    """rfc5464:4.2 the entries GETMETADATA returns for ``wanted`` names
    (lower case): each name (None when it has no value, as Dovecot and Cyrus
    answer NIL), and with DEPTH 1 its children, with DEPTH infinity all
    below it; values over ``maxsize`` left out. Returns them in order and
    the largest size left out (rfc5464:4.2.1 LONGENTRIES), None if none."""
    out: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    longest: int | None = None
    names = sorted(stored)
    for name in wanted:
        found: list[str] = [name] if name not in seen else []
        if depth != "0":
            prefix = name + "/"
            for other in names:
                if other.startswith(prefix) and other not in seen:
                    if depth == "1" and "/" in other[len(prefix) :]:
                        continue
                    found.append(other)
        for entry in found:
            seen.add(entry)
            value = stored.get(entry)
            if value is not None and maxsize is not None and len(value) > maxsize:
                longest = max(longest or 0, len(value))
                continue
            if value is None and entry != name:
                continue
            out.append((entry, value))
    return out, longest


def render(mailbox: bytes, entries: Iterable[tuple[str, bytes | None]]) -> bytes:
    """rfc5464:4.4.1 METADATA mailbox (entry value ...), without the "* "."""
    parts = []
    for name, value in entries:
        parts.append(imap_string(name) + b" " + (b"NIL" if value is None else _value(value)))
    return b"METADATA " + mailbox + b" (" + b" ".join(parts) + b")"


def _value(value: bytes) -> bytes:
    if b"\x00" in value:
        return b"~{%d}\r\n%s" % (len(value), value)  # rfc5464:5 value = nstring / literal8
    return imap_string(value)
