"""Message flags as the index keeps them.

A message's flags are one text column, space-separated, system flags in
canonical case (rfc9051:2.3.2: flags are case-insensitive; the index writes
only ``canonical_flags``), keywords as the client gave them. Since index
schema 5 the system flags are also a bit set (``sysflags``, a generated
column over the text, so the two never disagree), indexed with the mailbox:
counts such as STATUS UNSEEN and searches such as UNSEEN or DELETED read
the narrow index instead of every row.
"""

from __future__ import annotations

from collections.abc import Iterable

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

# The bit of each system flag in the ``sysflags`` column.
BITS = {flag: 1 << position for position, flag in enumerate(SYSTEM_FLAGS)}

ANSWERED, FLAGGED, DELETED, SEEN, DRAFT = (BITS[flag] for flag in SYSTEM_FLAGS)

_BY_LOWER = {flag.lower(): flag for flag in SYSTEM_FLAGS}


def canonical_flags(flags: Iterable[str]) -> list[str]:
    """System flags in canonical case (rfc9051:2.3.2: flags are case-insensitive),
    keywords as given; duplicates removed, order kept."""
    result: list[str] = []
    seen: set[str] = set()
    for flag in flags:
        lowered = flag.lower()
        canonical = _BY_LOWER.get(lowered, flag)
        if lowered not in seen:
            seen.add(lowered)
            result.append(canonical)
    return result


def bits(flags: Iterable[str]) -> int:
    """The ``sysflags`` value of canonical ``flags``."""
    value = 0
    for flag in flags:
        value |= BITS.get(flag, 0)
    return value


def sysflags_sql(column: str = "flags") -> str:
    """The SQL expression computing ``sysflags`` from the flags text: exact
    (case-sensitive) whole-word matches of the canonical system flags, the
    same test ``flag in flags.split()`` makes in Python."""
    padded = f"(' ' || {column} || ' ')"
    return " | ".join(
        f"((instr({padded}, ' {flag} ') > 0) << {position})"
        for position, flag in enumerate(SYSTEM_FLAGS)
    )
