"""Property tests of the LIST matcher (estafeta.imap.listing, issue 14 item 2).

The matcher is a bit-parallel NFA; two independent references decide the
same thing:

* ``regex_reference``: the regex translation the matcher replaced (each
  "*" is ``.*``, each "%" ``[^/]*``), with the INBOX rule written as a
  lookbehind. It backtracks, so it only sees short inputs.
* ``dp_reference``: textbook dynamic programming over (pattern, name)
  positions, quadratic at worst, for the long inputs.

``list_match_case(data)`` is the driver the long fuzz run can use (see the
module's end).
"""

from __future__ import annotations

import re
from functools import lru_cache

from hypothesis import given, settings
from hypothesis import strategies as st

from _fuzz import Crash, examples
from estafeta.imap.listing import (
    MAX_PATTERN,
    MAX_PATTERN_TOTAL,
    MAX_PATTERNS,
    Box,
    Matcher,
    PatternLimit,
    list_mailboxes,
    lsub,
    matches,
)

# Characters that exercise every rule: the delimiter, both wildcards, the
# letters of INBOX in both cases, a non-ASCII letter whose upper case is "I".
ALPHABET = "ab/*%INBOXinbox\u0131\u00e9"
NAME_ALPHABET = "ab/INBOXinbox\u0131\u00e9*%"


def _folded(name: str) -> bool:
    head = name[:5]
    return head.isascii() and head.upper() == "INBOX" and name[5:6] in ("", "/")


@lru_cache(maxsize=4096)
def _regex(full: str, folded: bool) -> re.Pattern[str]:
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append("[^/]*")
        elif folded:
            # Within the first five characters of the name, ASCII case is free.
            out.append(f"(?:{re.escape(char)}|(?<![\\s\\S]{{5}})(?ai:{re.escape(char)}))")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def regex_reference(reference: str, pattern: str, name: str) -> bool:
    return _regex(reference + pattern, _folded(name)).fullmatch(name) is not None


def dp_reference(reference: str, pattern: str, name: str) -> list[bool]:
    """For each prefix length of ``name``, does the pattern match it?"""
    full = reference + pattern
    folded = _folded(name)

    def same(p: str, position: int) -> bool:
        char = name[position]
        if p == char:
            return True
        return folded and position < 5 and p.isascii() and p.upper() == char.upper()

    # row[j]: the pattern read so far matches name[:j].
    row = [True] + [False] * len(name)
    for p in full:
        new = [False] * (len(name) + 1)
        if p == "*":
            for j in range(len(name) + 1):
                new[j] = row[j] or (j > 0 and new[j - 1])
        elif p == "%":
            for j in range(len(name) + 1):
                new[j] = row[j] or (j > 0 and new[j - 1] and name[j - 1] != "/")
        else:
            for j in range(1, len(name) + 1):
                new[j] = row[j - 1] and same(p, j - 1)
        row = new
    return row


def _level_ends(name: str) -> list[int]:
    return [i for i, char in enumerate(name) if char == "/"] + [len(name)]


def _prefixes(name: str) -> list[str]:
    return [name[:end] for end in _level_ends(name)]


def expected_levels(reference: str, patterns: list[str], name: str) -> list[str]:
    """The levels of ``name`` some pattern matches, by a reference."""
    if len(reference) + max(map(len, patterns)) <= 12 and len(name) <= 14:
        return [
            prefix
            for prefix in _prefixes(name)
            if any(regex_reference(reference, q, prefix) for q in patterns)
        ]
    rows = [dp_reference(reference, q, name) for q in patterns]
    return [name[:end] for end in _level_ends(name) if any(row[end] for row in rows)]


def check_match(reference: str, patterns: list[str], names: list[str]) -> None:
    """The matcher against a reference on every name and every level of it."""
    try:
        matcher = Matcher(reference, patterns)
    except PatternLimit:
        fulls = {reference + p for p in patterns}
        within = (
            len(fulls) <= MAX_PATTERNS
            and max(map(len, fulls)) <= MAX_PATTERN
            and sum(map(len, fulls)) <= MAX_PATTERN_TOTAL
        )
        if within:
            raise Crash(f"PatternLimit within the bounds: {patterns!r}") from None
        return
    for name in names:
        expected = expected_levels(reference, patterns, name)
        got = matcher.levels(name)
        if got != expected:
            raise Crash(f"{reference!r} {patterns!r} on {name!r}: {got!r}, expected {expected!r}")
        if matcher(name) != (name in expected):
            raise Crash(f"{reference!r} {patterns!r} on {name!r}: call and levels disagree")


# INBOX in several cases, as a whole name, a first level or a prefix of one.
_INBOXES = ["", "", "INBOX", "INBOX/", "inbox/", "Inbox", "INBOXa/", "\u0131nbox/"]
text = st.builds(
    str.__add__,
    st.sampled_from([*_INBOXES, "in%", "I*", "%/", "inb*/", "inbox%", "iNBOXa/"]),
    st.text(ALPHABET, max_size=8),
)
names = st.lists(
    st.builds(str.__add__, st.sampled_from(_INBOXES), st.text(NAME_ALPHABET, max_size=9)).filter(
        bool
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=examples(300))
@given(st.text(ALPHABET, max_size=3), st.lists(text, min_size=1, max_size=3), names)
def test_matcher_agrees_with_the_regex_it_replaced(
    reference: str, patterns: list[str], candidates: list[str]
) -> None:
    check_match(reference, patterns, candidates)


@settings(max_examples=examples(100))
@given(
    st.lists(st.text("ab/*%", min_size=20, max_size=120), min_size=1, max_size=4),
    st.lists(st.text("ab/", min_size=20, max_size=120), min_size=1, max_size=4),
)
def test_long_patterns_agree_with_dynamic_programming(
    patterns: list[str], candidates: list[str]
) -> None:
    check_match("", patterns, candidates)


@settings(max_examples=examples(10))
@given(st.data())
def test_longest_patterns_finish(data: st.DataObject) -> None:
    """Patterns at the bounds against 1,000 names near the folder size
    limit finish (the profile's deadline fails an example that hangs), and
    the long patterns still answer what the quadratic reference does."""
    count = data.draw(st.integers(1, MAX_PATTERNS))
    length = min(MAX_PATTERN, MAX_PATTERN_TOTAL // count)
    unit = data.draw(st.sampled_from(["%", "*", "%a", "*a", "a%", "%/", "*%a/", "a*/"]))
    patterns = [(unit * length)[: length - 2] + f"{i:02d}" for i in range(count)]
    boxes = [Box("a" * 100 + "/" + "a" * 100 + f"{i:02d}") for i in range(1000)]
    listed = {entry.name for entry in list_mailboxes(boxes, "", patterns)}
    name = boxes[data.draw(st.integers(0, len(boxes) - 1))].name
    expected = expected_levels("", patterns, name)
    assert [level for level in _prefixes(name) if level in listed] == expected


@settings(max_examples=examples(200))
@given(
    st.lists(
        st.tuples(
            st.builds(str.__add__, st.sampled_from(_INBOXES), st.text("ab/IN\u00e9", max_size=8)),
            st.booleans(),
        ),
        max_size=10,
    ),
    st.text(ALPHABET, max_size=3),
    st.lists(text, min_size=1, max_size=3),
)
def test_list_and_lsub_return_what_matches(
    named: list[tuple[str, bool]], reference: str, patterns: list[str]
) -> None:
    """LIST: every name and implied parent that matches, nothing else; LSUB:
    the subscribed ones and their matching parents (rfc9051:6.3.9)."""
    boxes = [Box(name, subscribed=subscribed) for name, subscribed in dict(named).items()]
    every = {p for box in boxes for p in _prefixes(box.name)}
    listed = [e.name for e in list_mailboxes(boxes, reference, patterns)]
    assert sorted(listed) == sorted(
        n for n in every if any(regex_reference(reference, p, n) for p in patterns)
    )
    assert len(listed) == len(set(listed))
    subscribed = {p for box in boxes if box.subscribed for p in _prefixes(box.name)}
    for pattern in patterns:
        assert [e.name for e in lsub(boxes, reference, pattern)] == sorted(
            n for n in subscribed if regex_reference(reference, pattern, n)
        )


def test_issue_pattern() -> None:
    """The issue's 81 octets against names that made the regex backtrack."""
    pattern = "%" * 70 + "X"
    for name in ("Drafts", "Archive", "a" * 200, "INBOX", "Sent/X"):
        assert matches("", pattern, name) == dp_reference("", pattern, name)[-1]
    assert matches("", pattern, "INBOX")
    assert not matches("", pattern, "Sent/X")


# -- the driver for bench/fuzz.py ------------------------------------------------


def list_match_case(data: bytes) -> None:
    """One fuzz input: the first line is the reference, the second the
    patterns (separated by NUL), the rest are names. Raises Crash when the
    matcher disagrees with a reference (or goes beyond its bounds)."""
    lines = data.decode("utf-8", "replace").split("\n")
    # Cut so that the quadratic reference stays fast (a millisecond or so).
    reference = lines[0][:64]
    patterns = [p[:256] for p in (lines[1] if len(lines) > 1 else "").split("\0")[:8]]
    candidates = [line[:64] for line in lines[2:] if line][:8] or ["INBOX", "INBOX/x"]
    check_match(reference, patterns, candidates)


# Seeds and tokens for the long run: reference, NUL-separated patterns, names.
LIST_CORPUS: list[bytes] = [
    b"\n*\nINBOX\nSent\nLists/Python",
    b"\n%/%\nLists/Python\nLists\nWork/2026/Q4",
    b"Lists/\n%\nLists/Rust\nLists",
    b"\ninbox/%\0*X\nINBOX/x\nInbox\ninboxes",
    b"\n" + b"%" * 70 + b"X\nDrafts\nArchive\n" + b"a" * 40,
    b"\n" + b"a%" * 20 + b"\n" + b"a" * 30,
    b"W\n*4\0%/%\nWork/2026/Q4\n\xc3\xa9t\xc3\xa9",
]
LIST_TOKENS: list[bytes] = [
    b"*", b"%", b"/", b"INBOX", b"inbox", b"\0", b"\n", b"a", b"\xc3\xa9", b"\xc4\xb1",
]  # fmt: skip


def test_corpus_runs_clean() -> None:
    """The seeds of the long run pass the driver as they are."""
    for data in LIST_CORPUS:
        list_match_case(data)
