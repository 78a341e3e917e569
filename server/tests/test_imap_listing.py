"""LIST / LSUB matching and attributes (rfc9051:6.3.9, rfc5258, rfc6154)."""

from __future__ import annotations

import pytest

from estafeta.imap.listing import (
    MAX_PATTERN,
    MAX_PATTERN_TOTAL,
    MAX_PATTERNS,
    Box,
    Matcher,
    PatternLimit,
    cost,
    list_mailboxes,
    lsub,
    matches,
)

BOXES = [
    Box("INBOX", subscribed=True),
    Box("Sent", "\\Sent", subscribed=True),
    Box("Trash", "\\Trash", subscribed=False),
    Box("Lists/Python", subscribed=True),
    Box("Lists/Rust"),
    Box("Work"),
    Box("Work/2026/Q4", subscribed=True),
]


@pytest.mark.parametrize(
    ("reference", "pattern", "name", "expected"),
    [
        ("", "*", "Lists/Python", True),
        ("", "%", "Lists/Python", False),
        ("", "%", "Lists", True),
        ("", "Lists/%", "Lists/Python", True),
        ("Lists/", "%", "Lists/Python", True),
        ("", "inbox", "INBOX", True),
        ("", "INBOX", "inbox", True),
        ("", "in%", "INBOX", True),
        ("", "Sent", "sent", False),  # only INBOX is case-insensitive
        ("", "W*4", "Work/2026/Q4", True),
        ("", "W%4", "Work/2026/Q4", False),
        ("", "a.b", "axb", False),  # no regex leaks
    ],
)
def test_matches(reference: str, pattern: str, name: str, expected: bool) -> None:
    assert matches(reference, pattern, name) is expected


def names(entries: list) -> list[tuple[str, list[str]]]:  # type: ignore[type-arg]
    return [(e.name, e.attributes) for e in entries]


def test_list_all_with_children_and_special_use() -> None:
    assert names(list_mailboxes(BOXES, "", ["*"])) == [
        ("INBOX", ["\\HasNoChildren"]),
        ("Lists", ["\\NonExistent", "\\HasChildren"]),
        ("Lists/Python", ["\\HasNoChildren"]),
        ("Lists/Rust", ["\\HasNoChildren"]),
        ("Sent", ["\\HasNoChildren", "\\Sent"]),
        ("Trash", ["\\HasNoChildren", "\\Trash"]),
        ("Work", ["\\HasChildren"]),
        ("Work/2026", ["\\NonExistent", "\\HasChildren"]),
        ("Work/2026/Q4", ["\\HasNoChildren"]),
    ]


def test_list_percent_top_level() -> None:
    assert [e.name for e in list_mailboxes(BOXES, "", ["%"])] == [
        "INBOX",
        "Lists",
        "Sent",
        "Trash",
        "Work",
    ]


def test_list_extended_selection() -> None:
    subscribed = list_mailboxes(BOXES, "", ["*"], selection=["SUBSCRIBED"])
    assert [e.name for e in subscribed] == ["INBOX", "Lists/Python", "Sent", "Work/2026/Q4"]
    assert all("\\Subscribed" in e.attributes for e in subscribed)
    special = list_mailboxes(BOXES, "", ["*"], selection=["SPECIAL-USE"])
    assert [e.name for e in special] == ["Sent", "Trash"]
    # rfc5258:3.5 example: RECURSIVEMATCH reports parents of matching children.
    recursive = list_mailboxes(BOXES, "", ["%"], selection=["SUBSCRIBED", "RECURSIVEMATCH"])
    by_name = {e.name: e for e in recursive}
    assert by_name["Lists"].childinfo == ("SUBSCRIBED",)
    assert by_name["Work"].childinfo == ("SUBSCRIBED",)
    assert "Trash" not in by_name
    assert by_name["INBOX"].childinfo == ()


def test_childinfo_only_for_inferiors_not_listed() -> None:
    """rfc5258:3.5 CHILDINFO shows a subscribed inferior the patterns do not
    list; one they list needs none (the peer suite's listext, as Dovecot)."""
    select = ["SUBSCRIBED", "RECURSIVEMATCH"]
    alone = list_mailboxes(BOXES, "", ["Lists"], selection=select)
    assert [(e.name, e.childinfo) for e in alone] == [("Lists", ("SUBSCRIBED",))]
    both = list_mailboxes(BOXES, "", ["Lists", "Lists/Python"], selection=select)
    assert [(e.name, e.childinfo) for e in both] == [("Lists/Python", ())]
    deep = list_mailboxes(BOXES, "", ["Work", "Work/2026"], selection=select)
    assert [(e.name, e.childinfo) for e in deep] == [
        ("Work", ("SUBSCRIBED",)), ("Work/2026", ("SUBSCRIBED",)),
    ]  # fmt: skip


def test_list_multiple_patterns_and_return_subscribed() -> None:
    entries = list_mailboxes(BOXES, "", ["Sent", "Lists/%"], returns=["SUBSCRIBED"])
    assert names(entries) == [
        ("Lists/Python", ["\\HasNoChildren", "\\Subscribed"]),
        ("Lists/Rust", ["\\HasNoChildren"]),
        ("Sent", ["\\HasNoChildren", "\\Subscribed", "\\Sent"]),
    ]


def test_lsub() -> None:
    assert [(e.name, e.attributes) for e in lsub(BOXES, "", "%")] == [
        ("INBOX", []),
        ("Lists", ["\\Noselect"]),
        ("Sent", []),
        ("Work", ["\\Noselect"]),
    ]
    assert [e.name for e in lsub(BOXES, "", "*")] == [
        "INBOX",
        "Lists",
        "Lists/Python",
        "Sent",
        "Work",
        "Work/2026",
        "Work/2026/Q4",
    ]


# -- the matcher without backtracking (issue 14 item 2) ----------------------------


@pytest.mark.parametrize(
    ("reference", "pattern", "name", "expected"),
    [
        ("", "inbox/%", "INBOX/x", True),  # INBOX as the first level, any case
        ("", "Inbox/*", "INBOX/x/y", True),
        ("inbox/", "%", "INBOX/x", True),
        ("", "inbox/X", "INBOX/x", False),  # only the INBOX level is case-insensitive
        ("", "inboxes", "INBOXes", False),  # "INBOXes" is not INBOX
        ("", "INBOXes", "INBOXes", True),
        ("", "\u0131nbox", "INBOX", False),  # ASCII case only: dotless i is not I
        ("", "%" * 70 + "X", "INBOX", True),  # the pattern; INBOX ends in X
        ("", "%" * 70 + "X", "Drafts", False),
        ("", "*%*%*%", "a/b", True),  # a run with a "*" crosses levels
        ("", "%%%%", "a/b", False),  # a run of "%" does not
        ("", "a%%b", "ab", True),
        ("", "", "", True),
        ("", "", "x", False),
    ],
)
def test_matcher_rules(reference: str, pattern: str, name: str, expected: bool) -> None:
    assert matches(reference, pattern, name) is expected


def test_levels_are_decided_in_one_scan() -> None:
    matcher = Matcher("", ["%", "Work/*"])
    assert matcher.levels("Work/2026/Q4") == ["Work", "Work/2026", "Work/2026/Q4"]
    assert Matcher("", ["%/%"]).levels("Work/2026/Q4") == ["Work/2026"]
    assert Matcher("", ["x*"]).levels("Work/2026") == []


@pytest.mark.parametrize(
    ("reference", "patterns", "message"),
    [
        ("", [f"p{i}" for i in range(MAX_PATTERNS + 1)], "more than 64 patterns"),
        ("", ["%" * (MAX_PATTERN + 1)], "longer than 1024"),
        ("%" * MAX_PATTERN, ["x"], "longer than 1024"),  # the reference counts
        ("", ["%" * 1000 + str(i) for i in range(5)], "4096 characters in all"),
    ],
)
def test_pattern_bounds(reference: str, patterns: list[str], message: str) -> None:
    with pytest.raises(PatternLimit, match=message):
        list_mailboxes(BOXES, reference, patterns)
    if len(patterns) == 1:
        with pytest.raises(PatternLimit):
            lsub(BOXES, reference, patterns[0])


def test_pattern_bounds_count_distinct_patterns() -> None:
    """The same pattern repeated is one pattern (clients repeat INBOX)."""
    entries = list_mailboxes(BOXES, "", ["INBOX"] * (MAX_PATTERNS * 2))
    assert [e.name for e in entries] == ["INBOX"]
    # And patterns right at the bounds are fine.
    list_mailboxes(BOXES, "", ["%" * (MAX_PATTERN_TOTAL // MAX_PATTERNS)] * 1)
    list_mailboxes(BOXES, "", [f"{i:02d}" + "%" * 62 for i in range(MAX_PATTERNS)])


def test_cost_grows_with_names_and_patterns() -> None:
    assert cost(["abcd"], "", ["*"]) == 4
    assert cost(["abcd"] * 10, "", ["x" * 200]) == 40 * (1 + 201 // 64)
