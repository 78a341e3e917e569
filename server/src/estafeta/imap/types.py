"""Values shared by the IMAP parser, FETCH, SEARCH and the session.

Plain data, no IO. The parser produces them; ``fetch`` and ``search``
consume them.
"""

from __future__ import annotations

import bisect
import datetime
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# A bound of a range; None stands for "*", the largest number in use.
Bound = int | None


@dataclass(frozen=True)
class Ranges:
    """Disjoint, ascending, non-adjacent closed ranges: a merged sequence set.

    ``starts`` and ``ends`` are parallel; ``ends[i] + 1 < starts[i + 1]``.
    Membership is a binary search, selection from a sorted list one pair of
    binary searches per range: nothing here is proportional to the numbers
    a range spans.
    """

    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()

    @classmethod
    def merge(cls, pairs: Iterable[tuple[int, int]]) -> Ranges:
        """Sort and coalesce (low, high) pairs (low <= high): overlapping and
        adjacent ranges become one. O(n log n) in the number of pairs."""
        starts: list[int] = []
        ends: list[int] = []
        for low, high in sorted(pairs):
            if ends and low <= ends[-1] + 1:
                if high > ends[-1]:
                    ends[-1] = high
            else:
                starts.append(low)
                ends.append(high)
        return cls(tuple(starts), tuple(ends))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    def __len__(self) -> int:
        return len(self.starts)

    def contains(self, number: int) -> bool:
        i = bisect.bisect_right(self.starts, number) - 1
        return i >= 0 and number <= self.ends[i]

    def count(self) -> int:
        """How many numbers the ranges hold."""
        return sum(high - low + 1 for low, high in self)

    def select(self, ordered: Sequence[int]) -> list[int]:
        """The members of ``ordered`` (ascending, no duplicates) that the
        ranges hold, ascending: O(ranges x log len(ordered) + output)."""
        out: list[int] = []
        for low, high in self:
            first = bisect.bisect_left(ordered, low)
            last = bisect.bisect_right(ordered, high, first)
            out.extend(ordered[first:last])
        return out


@dataclass(frozen=True)
class SequenceSet:
    """rfc9051:9 sequence-set: "1,3:5,7:*", or "$" (rfc5182 saved result).

    ``ranges`` are kept as the client sent them (a client may send the same
    range thousands of times); everything that uses the set goes through
    ``merged``, computed once per value of "*" and kept.
    """

    ranges: tuple[tuple[Bound, Bound], ...] = ()
    saved: bool = False
    # (largest, merged ranges) of the last ``merged`` call; not part of the value.
    _merged: list[tuple[int, Ranges]] = field(
        default_factory=list, init=False, repr=False, compare=False, hash=False
    )

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ranges as (low, high) with "*" replaced by ``largest``; rfc9051:9
        says "4:2" means "2:4", and "*" on an empty mailbox is 0."""
        result = []
        for start, end in self.ranges:
            a = largest if start is None else start
            b = largest if end is None else end
            result.append((min(a, b), max(a, b)))
        return result

    def merged(self, largest: int) -> Ranges:
        """The set with "*" resolved to ``largest``, sorted and coalesced
        (rfc9051:9: a set names each number once, in whatever order and with
        whatever repeats it was written)."""
        cache = self._merged
        if cache and cache[0][0] == largest:
            return cache[0][1]
        ranges = Ranges.merge(self.resolve(largest))
        cache[:] = [(largest, ranges)]
        return ranges

    def contains(self, number: int, largest: int) -> bool:
        return self.merged(largest).contains(number)

    def iter(self, largest: int, limit: int | None = None) -> Iterator[int]:
        """The numbers in the set, ascending, without duplicates, capped at ``limit``."""
        ceiling = largest if limit is None else min(largest, limit)
        for low, high in self.merged(largest):
            if low > ceiling:
                return
            yield from range(max(low, 1), min(high, ceiling) + 1)


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
    structure), BODYSTRUCTURE, UID, MODSEQ (rfc7162), EMAILID, THREADID
    (rfc8474), SAVEDATE (rfc8514), BODY[] (with
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
      UNANSWERED, UNDELETED, UNDRAFT, UNFLAGGED, UNSEEN,
      SAVEDATESUPPORTED (rfc8514)                            ()
      KEYWORD, UNKEYWORD                                     (flag: str,)
      BEFORE, ON, SINCE, SENTBEFORE, SENTON, SENTSINCE,
      SAVEDBEFORE, SAVEDON, SAVEDSINCE (rfc8514)             (day: datetime.date,)
      EMAILID, THREADID (rfc8474)                            (objectid: str,)
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
