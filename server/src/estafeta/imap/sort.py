"""SORT (rfc5256:3) with SORT=DISPLAY (rfc5957), and the ESORT and
CONTEXT results (rfc5267:3, rfc5267:4.4): the session's view of a sort
order, and the responses. Pure functions, no IO.

The order itself is the index's: SQLite sorts the prepared keys of every
message of the mailbox (estafeta.store.reader ``sorted_uids``; the keys are
estafeta.message.sortkeys', computed at delivery: the base subject of
rfc5256:2.1, the sent date of rfc5256:2.2 falling back to the internal date,
the addresses' collation keys), each criterion ascending or reversed, equal
messages in UID order, which is mailbox order. What is left here is to keep
the messages the client knows and asked for, in that order, and to number
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any, TypeVar

from estafeta.imap.search import compress

# A row of the index (estafeta.store.reader.SortRow): (uid, ...).
_Row = TypeVar("_Row", bound=tuple[Any, ...])

__all__ = [
    "ROW_WORK",
    "in_view",
    "ordered_set",
    "partial",
    "render_esort",
    "render_sort",
    "select",
    "sequence_numbers",
]

ROW_WORK = 64
"""Budget units (search.Budget) per message read and ordered: about what a
row costs next to a character of a text scan (search.NODE_WORK)."""


def select(ordered: list[int], uids: Sequence[int], matched: set[int] | None = None) -> list[int]:
    """The UIDs of ``ordered`` (every message of the index, in sort order)
    that the client knows, the view's ``uids`` (ascending), and that are in
    ``matched`` when given, in the same order.

    The index and the view differ when messages arrived or were expunged
    since the view last caught up. New messages have UIDs above all of the
    view's, so when the index holds as many messages as the view and its
    highest UID is the view's, both hold the same messages.
    """
    if matched is None:
        if len(ordered) == len(uids) and (not uids or max(ordered) == uids[-1]):
            return ordered
        matched = set(uids)
    return [uid for uid in ordered if uid in matched]


def in_view(rows: list[_Row], uids: Sequence[int], matched: set[int] | None = None) -> list[_Row]:
    """The rows (``(uid, ...)``, ascending UIDs) of the messages the client
    knows (the view's ``uids``, ascending) and that are in ``matched`` when
    given; see ``select``."""
    if matched is None:
        if len(rows) == len(uids) and all(map(int.__eq__, map(itemgetter(0), rows), uids)):
            return rows
        matched = set(uids)
    return [row for row in rows if row[0] in matched]


def sequence_numbers(numbers: Sequence[int], uids: Sequence[int]) -> list[int]:
    """UIDs to sequence numbers in the view ``uids`` (ascending); 0 stays 0
    (a THREAD dummy)."""
    position = dict(zip(uids, range(1, len(uids) + 1), strict=True))
    position[0] = 0
    return [position[n] for n in numbers]


def render_sort(numbers: Sequence[int]) -> bytes:
    """rfc5256:4 SORT response, without the "* "."""
    if not numbers:
        return b"SORT"
    return b"SORT " + " ".join(map(str, numbers)).encode("ascii")


def ordered_set(numbers: Sequence[int]) -> str:
    """rfc5267:3.2: a sequence-set that keeps the sort order: only runs of
    ascending consecutive numbers become ranges ("3:4,2,1")."""
    return compress(numbers)


def partial(numbers: Sequence[int], low: int, high: int) -> list[int]:
    """rfc5267:4.4 PARTIAL low:high: the results at those 1-based positions."""
    return list(numbers[low - 1 : high])


def _quoted(text: str) -> bytes:
    return b'"' + text.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render_esort(
    tag: str,
    numbers: Sequence[int],
    options: Sequence[str],
    *,
    uid: bool,
    partial_range: tuple[int, int] | None = None,
) -> bytes:
    """rfc5267:3.1 ESEARCH response to SORT RETURN (...), without the "* ".

    MIN and MAX are the first and the last message in the sort order, ALL
    the numbers in sort order as a sequence-set that keeps that order
    (rfc5267:3.2), COUNT how many; MIN, MAX and ALL are left out when
    nothing matched. ``partial_range`` (rfc5267:4.4) adds PARTIAL (low:high
    set) with the results at those positions, NIL when there are none.
    """
    wanted = {o.upper() for o in options}
    out = [b"ESEARCH (TAG " + _quoted(tag) + b")"]
    if uid:
        out.append(b"UID")
    if numbers:
        if "MIN" in wanted:
            out.append(b"MIN %d" % numbers[0])
        if "MAX" in wanted:
            out.append(b"MAX %d" % numbers[-1])
        if "ALL" in wanted:
            out.append(b"ALL " + ordered_set(numbers).encode("ascii"))
    if partial_range is not None:
        low, high = partial_range
        part = partial(numbers, low, high)
        shown = ordered_set(part).encode("ascii") if part else b"NIL"
        out.append(b"PARTIAL (%d:%d %s)" % (low, high, shown))
    if "COUNT" in wanted:
        out.append(b"COUNT %d" % len(numbers))
    return b" ".join(out)
