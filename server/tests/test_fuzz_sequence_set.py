"""Property tests of merged sequence sets (issue 14 item 6).

Sequence sets are sorted and coalesced once (``SequenceSet.merged``), then
resolved against a mailbox with binary searches (``Ranges.select``,
``Selected.resolve``), tested with ``contains`` in logarithmic time, and
used by SEARCH (``_number_matcher``), VANISHED and QRESYNC. Each of them must
give what the naive reading of rfc9051:9 gives: every number n with
low <= n <= high for some range, "*" standing for the largest number in use
and "a:b" meaning the same as "b:a". Sets are written out as text and read
back by the real command parser, so the grammar is covered too.

``check_sequence_set`` is the driver: it raises ``_fuzz.Crash`` when the
merged resolution and the naive one differ, and ``sequence_set_case`` makes
a random input for it in the shape bench/fuzz.py expects of a target
(``(input bytes, description, check)``). The profile comes from _fuzz.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

import _fuzz
from estafeta.imap import commands as c
from estafeta.imap import search
from estafeta.imap.parser import Command, Parser
from estafeta.imap.selected import Selected
from estafeta.imap.types import Bound, Ranges, SearchKey, SequenceSet
from estafeta.store.index import Mailbox

# -- the naive reference ------------------------------------------------------------


def naive_members(
    ranges: Sequence[tuple[Bound, Bound]], largest: int, universe: Sequence[int]
) -> list[int]:
    """The numbers of ``universe`` (ascending) that the set names."""
    out = []
    for n in universe:
        for start, end in ranges:
            a = largest if start is None else start
            b = largest if end is None else end
            if min(a, b) <= n <= max(a, b):
                out.append(n)
                break
    return out


def write(ranges: Sequence[tuple[Bound, Bound]]) -> str:
    def bound(b: Bound) -> str:
        return "*" if b is None else str(b)

    return ",".join(bound(a) if a == b else f"{bound(a)}:{bound(b)}" for a, b in ranges)


def parse(text: str, uid: bool) -> SequenceSet:
    parser = Parser()
    parser.set_authenticated(True)
    parser.receive_data(f"t {'UID ' if uid else ''}FETCH {text} (FLAGS)\r\n".encode())
    event = parser.next_event()
    if not isinstance(event, Command) or not isinstance(event.args, c.Fetch):
        raise _fuzz.Crash(f"{text!r} does not parse: {event!r}")
    return event.args.sequence_set


def view(uids: Sequence[int]) -> Selected:
    box = Mailbox(1, "INBOX", "", 1, max(uids, default=0) + 1, 1, None, True)
    return Selected(
        box, False, list(uids), {u: () for u in uids}, {u: 1 for u in uids}, highestmodseq=1
    )


# -- the driver ----------------------------------------------------------------------------


def check_sequence_set(ranges: Sequence[tuple[Bound, Bound]], uids: Sequence[int]) -> None:
    """Raise _fuzz.Crash if any use of the merged set differs from the naive
    reading. ``uids``: the mailbox, ascending, no duplicates."""
    text = write(ranges)
    for uid in (True, False):
        sequence = parse(text, uid)
        if sequence.ranges != tuple(ranges):
            raise _fuzz.Crash(f"{text!r} parses as {sequence.ranges!r}")
        selected = view(uids)
        exists = len(uids)
        # Selected.resolve: UIDs (uid sets) or sequence numbers.
        if uid:
            largest = uids[-1] if uids else 0
            expected = naive_members(ranges, largest, uids) if uids else []
        else:
            seqs = naive_members(ranges, exists, range(1, exists + 1))
            expected = [uids[n - 1] for n in seqs]
        got = selected.resolve(sequence, uid=uid)
        if got != expected:
            raise _fuzz.Crash(f"resolve({text!r}, uid={uid}) over {uids}: {got} != {expected}")
        # valid_seqs: rfc9051:6.4.5, a number beyond EXISTS is BAD.
        valid = all(b is None or b <= exists for pair in ranges for b in pair)
        if selected.valid_seqs(sequence) != valid:
            raise _fuzz.Crash(f"valid_seqs({text!r}) with {exists} messages is not {valid}")
    # contains / iter / merged over a number line, for a few values of "*".
    sequence = parse(text, True)
    top = max([b for pair in ranges for b in pair if b is not None] + [1]) + 2
    for largest in {0, 1, top // 2, top}:
        line = list(range(0, top + 2))
        expected = naive_members(ranges, largest, line)
        merged = sequence.merged(largest)
        _check_ranges(merged, text, largest)
        got = [n for n in line if sequence.contains(n, largest)]
        if got != expected:
            raise _fuzz.Crash(f"contains({text!r}, *={largest}): {got} != {expected}")
        if merged.select(line) != expected:
            raise _fuzz.Crash(f"select({text!r}, *={largest}) != {expected}")
        positive = [n for n in expected if n >= 1]
        if list(sequence.iter(largest)) != [n for n in positive if n <= largest]:
            raise _fuzz.Crash(f"iter({text!r}, *={largest})")
        if merged.count() != len(expected):
            raise _fuzz.Crash(f"count({text!r}, *={largest})")
        # SEARCH's UID / sequence-set keys use the same merged sets.
        matcher = search._number_matcher(sequence, largest)
        if [n for n in line if matcher(n)] != expected:
            raise _fuzz.Crash(f"SEARCH matcher({text!r}, *={largest})")


def _check_ranges(merged: Ranges, text: str, largest: int) -> None:
    pairs = list(merged)
    ordered = all(a <= b for a, b in pairs) and all(
        b + 1 < c2 for (_, b), (c2, _) in itertools.pairwise(pairs)
    )
    if not ordered:
        raise _fuzz.Crash(f"merged({text!r}, *={largest}) is not disjoint: {pairs}")


def random_ranges(rng: random.Random, top: int, count: int) -> list[tuple[Bound, Bound]]:
    def bound() -> Bound:
        return None if rng.random() < 0.1 else rng.randint(1, top)

    return [(bound(), bound()) for _ in range(count)]


def sequence_set_case(rng: random.Random) -> tuple[bytes, str, Callable[[], None]]:
    """A bench/fuzz.py case: random ranges (repeats, overlaps, reversed
    ranges, "*") against a random mailbox."""
    top = rng.choice([3, 10, 50, 300])
    ranges = random_ranges(rng, top, rng.randint(1, 40))
    uids = sorted(rng.sample(range(1, top + 5), rng.randint(0, min(top, 60))))
    text = write(ranges)
    return text.encode(), f"set={text} uids={uids}", lambda: check_sequence_set(ranges, uids)


# -- the properties -------------------------------------------------------------------------

bounds = st.one_of(st.none(), st.integers(1, 40))
range_lists = st.lists(st.tuples(bounds, bounds), min_size=1, max_size=30)
mailboxes = st.lists(st.integers(1, 50), max_size=40, unique=True).map(sorted)


@given(range_lists, mailboxes)
def test_merged_sets_resolve_as_the_naive_reading(
    ranges: list[tuple[Bound, Bound]], uids: list[int]
) -> None:
    check_sequence_set(ranges, uids)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), max_size=50))
def test_merge_coalesces_overlapping_and_adjacent_ranges(pairs: list[tuple[int, int]]) -> None:
    pairs = [(min(a, b), max(a, b)) for a, b in pairs]
    merged = Ranges.merge(pairs)
    _check_ranges(merged, repr(pairs), 0)
    numbers = {n for low, high in pairs for n in range(low, high + 1)}
    assert [n for n in range(-1, 303) if merged.contains(n)] == sorted(numbers)
    assert merged.count() == len(numbers)
    assert merged.select(range(-1, 303)) == sorted(numbers)


@given(mailboxes, st.lists(st.integers(1, 60), max_size=20))
def test_apply_expunge_reports_descending_sequence_numbers(
    uids: list[int], gone: list[int]
) -> None:
    selected = view(uids)
    selected.pending_expunge.update(gone)
    # The naive reading: remove one at a time, highest first (rfc9051:7.5.1).
    expected = []
    remaining = list(uids)
    for uid in sorted(set(gone), reverse=True):
        if uid in remaining:
            expected.append(remaining.index(uid) + 1)
            remaining.remove(uid)
    assert selected.apply_expunge(gone) == expected
    assert selected.uids == remaining
    assert set(selected.flags) == set(remaining) == set(selected.modseqs)
    assert not selected.pending_expunge & set(gone)


def test_sixteen_thousand_copies_of_one_range_resolve_once() -> None:
    # The attack of issue 14 item 6, at the scale of a unit test: the merged
    # set has one range, and resolving it touches each message once.
    uids = list(range(1, 32_769))
    selected = view(uids)
    sequence = parse(",".join(["1:*"] * 16_000), True)
    assert len(sequence.merged(uids[-1])) == 1
    assert selected.resolve(sequence, uid=True) == uids
    assert selected.resolve(sequence, uid=False) == uids
    key = SearchKey("UID", (sequence,))
    candidates = [
        search.Candidate(u, u, frozenset(), False, 0, 1, 1, "{}", lambda: b"") for u in uids
    ]
    matched = search.evaluate(key, candidates, largest_seq=len(uids), largest_uid=uids[-1])
    assert len(matched) == len(uids)


def test_sequence_set_case_runs() -> None:
    rng = random.Random(14)
    for _ in range(_fuzz.examples(50)):
        data, about, run = sequence_set_case(rng)
        assert data and about
        run()
