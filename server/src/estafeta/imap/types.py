"""Values shared by the IMAP parser, FETCH, SEARCH and the session.

Plain data, no IO. The parser produces them; ``fetch`` and ``search``
consume them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# A bound of a range; None stands for "*", the largest number in use.
Bound = int | None


@dataclass(frozen=True)
class SequenceSet:
    """rfc9051:9 sequence-set: "1,3:5,7:*", or "$" (rfc5182 saved result)."""

    ranges: tuple[tuple[Bound, Bound], ...] = ()
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ranges as (low, high) with "*" replaced by ``largest``; rfc9051:9
        says "4:2" means "2:4", and "*" on an empty mailbox is 0."""
        result = []
        for start, end in self.ranges:
            a = largest if start is None else start
            b = largest if end is None else end
            result.append((min(a, b), max(a, b)))
        return result

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in self.resolve(largest))

    def iter(self, largest: int, limit: int | None = None) -> Iterator[int]:
        """The numbers in the set, ascending, without duplicates, capped at ``limit``."""
        ceiling = largest if limit is None else min(largest, limit)
        seen: set[int] = set()
        for low, high in sorted(self.resolve(largest)):
            for n in range(max(low, 1), min(high, ceiling) + 1):
                if n not in seen:
                    seen.add(n)
                    yield n


@dataclass(frozen=True)
class Section:
    """rfc9051:6.4.5 section-spec of BODY[...] / BINARY[...].

    ``part`` is the part number path ((), (1,), (2, 3), ...); ``text`` is
    "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME";
    ``fields`` are the upper-cased header names for HEADER.FIELDS(.NOT).
    """

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        """The section as written back in a FETCH response: '1.2.HEADER.FIELDS (FROM)'.

        Header field names are rfc9051:9 astrings: written as atoms when they
        can be, else quoted, else as literals (the client may have sent them
        as any of these).
        """
        pieces = [str(p) for p in self.part]
        if self.text:
            pieces.append(self.text)
        out = ".".join(pieces)
        if self.fields:
            out += " (" + " ".join(astring(f) for f in self.fields) + ")"
        return out


# rfc9051:9 atom-specials (CTL and SP aside), and "]": an ASTRING-CHAR, but
# inside a section "[...]" a bare "]" would read as its end.
_NOT_BARE = frozenset('(){%*"\\]')


def astring(text: str) -> str:
    """``text`` as an rfc9051:9 astring in a response: an atom if it is one,
    else a quoted string if it is printable ASCII, else a literal."""
    if text and all("!" <= ch <= "~" and ch not in _NOT_BARE for ch in text):
        return text
    if all(" " <= ch <= "~" for ch in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    size = len(text.encode("utf-8", "surrogateescape"))
    return f"{{{size}}}\r\n{text}"


@dataclass(frozen=True)
class FetchAtt:
    """One FETCH data item (rfc9051:6.4.5).

    ``name`` is one of: ENVELOPE, FLAGS, INTERNALDATE, RFC822.SIZE, RFC822,
    RFC822.HEADER, RFC822.TEXT, BODY (no section: the non-extensible
    structure), BODYSTRUCTURE, UID, MODSEQ (rfc7162), BODY[] (with
    ``section``), BINARY, BINARY.SIZE (rfc3516/rfc9051, with ``section``).
    ``peek`` is BODY.PEEK / BINARY.PEEK; ``partial`` is <offset.length>.
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class SearchKey:
    """A node of a SEARCH program (rfc9051:6.4.4), as ``op`` plus ``args``.

    ops and their args:
      ALL, ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, RECENT, NEW, OLD,
      UNANSWERED, UNDELETED, UNDRAFT, UNFLAGGED, UNSEEN      ()
      KEYWORD, UNKEYWORD                                     (flag: str,)
      BEFORE, ON, SINCE, SENTBEFORE, SENTON, SENTSINCE        (day: datetime.date,)
      OLDER, YOUNGER (rfc5032, seconds)                      (seconds: int,)
      LARGER, SMALLER                                        (octets: int,)
      BCC, BODY, CC, FROM, SUBJECT, TEXT, TO                 (text: str,)
      HEADER                                                 (field: str, text: str)
      UID, SEQSET                                            (set: SequenceSet,)
      MODSEQ (rfc7162:3.1.5)              (entry: str|None, kind: str|None, modseq: int)
      NOT                                                    (key: SearchKey,)
      OR                                                     (left: SearchKey, right: SearchKey)
      AND (a parenthesised list, or the top level)           (keys: tuple[SearchKey, ...],)
    """

    op: str
    args: tuple[Any, ...] = ()


def date_arg(key: SearchKey) -> datetime.date:
    value = key.args[0]
    assert isinstance(value, datetime.date)
    return value
