"""The sort keys (estafeta.message.sortkeys: rfc5256:2.1 base subject,
rfc5051 collation, rfc5256 / rfc5957 address keys, Message-IDs), the THREAD
algorithms on tricky inputs (estafeta.imap.thread: the peer suite's
thread*.mbox cases, cycles, missing parents, duplicate Message-IDs, subject
merging, a 10,000-deep chain) and the work budget that ends a THREAD built
to be quadratic."""

from __future__ import annotations

import time

import pytest

from estafeta.imap import sort, thread
from estafeta.imap.search import BASE_WORK, Budget, SearchLimit
from estafeta.message import summarize
from estafeta.message.sortkeys import (
    base_subject,
    collate,
    display_key,
    mailbox_key,
    sort_columns,
    valid_ids,
)
from estafeta.message.structure import parse_addresses

# -- base subject (rfc5256:2.1) ---------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        ("a", "A", False),
        ("Re: hello", "HELLO", True),
        ("RE:hello", "HELLO", True),
        ("re : hello", "HELLO", True),  # subj-refwd = ("re" / "fw" ["d"]) *WSP [subj-blob] ":"
        ("Fw: Fwd: FWD: hello", "HELLO", True),
        ("Re[2]: hello", "HELLO", True),
        ("Re [2] : hello", "HELLO", True),
        ("[list] Re: hello", "HELLO", True),
        ("[list] hello", "HELLO", False),  # (4): a blob goes when text follows...
        ("[xyz]", "[XYZ]", False),  # ... but not when it is all there is
        ("[a][b]", "[B]", False),
        ("hello (fwd)", "HELLO", True),
        ("hello (FWD)  (fwd) ", "HELLO", True),
        ("[fwd: hello]", "HELLO", True),
        ("[Fwd: Re: [list] hello (fwd)]", "HELLO", True),
        ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "B", True),
        ("Re: [FWD: c]", "C", True),
        ("re: [fwd: [fwd: re: [fwd: babylon]]]", "BABYLON", True),
        ("Ad: Re: Ad: Re: Ad: x", "AD: RE: AD: RE: AD: X", False),
        ("Rex: hello", "REX: HELLO", False),
        ("Re", "RE", False),
        ("hello\tworld \r\n  again", "HELLO WORLD AGAIN", False),
        ("", "", False),
        ("   ", "", False),
        ("[fwd:]", "", True),
        ("(fwd)", "", True),
        ("Re: ", "", True),
        ("[", "[", False),
        ("[fwd: unclosed", "[FWD: UNCLOSED", False),
        ("Grüße", "GRU\u0308SSE".replace("SS", "ß"), False),  # decomposed, simple titlecase
    ],
)
def test_base_subject(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


def test_base_subject_of_hostile_input_is_linear() -> None:
    for subject in ("Re: " * 50_000, "[" * 100_000, "[a]" * 50_000 + "x", "(fwd)" * 50_000):
        started = time.process_time()
        base_subject(subject)
        assert time.process_time() - started < 1.0, subject[:20]


def test_collation_is_titlecase_then_decomposition() -> None:
    # rfc5051:2: "[" (0x5B) sorts after "C" but before "c": keys are upper case.
    assert collate("[xyz]") > collate("c") > collate("b (a)") > collate("b")
    assert collate("ﬁx") == "FIX"
    assert collate("Émile") == collate("ÉMILE") == "E\u0301MILE"


# -- address keys (rfc5256:3 FROM/TO/CC, rfc5957:3 DISPLAYFROM/DISPLAYTO) ----------


@pytest.mark.parametrize(
    ("value", "mailbox", "display"),
    [
        ("foo bar <a@b.c>", "A", "FOO BAR"),
        ("b@c.d", "B", "B@C.D"),
        ("user2@domain2.org (foo bar)", "USER2", "FOO BAR"),  # a comment names it
        ("=?iso-8859-1?q?foo_aar?= <e@f.g>", "E", "FOO AAR"),
        ('"" <x@y.z>', "X", "X@Y.Z"),  # an empty display name: the address
        ("user2: blah@domain1.org;", "USER2", "USER2"),  # a group: its name
        ("empty:;", "EMPTY", "EMPTY"),
        ("", "", ""),
    ],
)
def test_address_keys(value: str, mailbox: str, display: str) -> None:
    addresses = parse_addresses(value) or None
    assert mailbox_key(addresses) == mailbox
    assert display_key(addresses) == display


def test_message_ids_valid_for_threading() -> None:
    assert valid_ids("<a@b> junk <c @ d> <nope> <e(x)@f> <g@[1.2.3.4]>") == [
        "<a@b>",
        "<c@d>",
        "<e@f>",
        "<g@[1.2.3.4]>",
    ]  # the peer drops comments and keeps domain literals
    assert valid_ids(None) == []


def test_sort_columns_of_a_message() -> None:
    message = (
        b"From: =?utf-8?q?Zo=C3=AB?= <zoe@example.test>\r\nTo: list: a@b.c;\r\n"
        b"Subject: Re: [list] Plans\r\nMessage-ID: <m1@example.test>\r\n"
        b"References: <r0@x> <bad> <r1@x>\r\nIn-Reply-To: <ignored@x>\r\n\r\nbody\r\n"
    )
    assert sort_columns(summarize(message)) == (
        "PLANS",
        1,
        "ZOE",
        "LIST",
        "",
        "ZOE\u0308",
        "LIST",
        "<m1@example.test>",
        "<r0@x> <r1@x>",
    )
    # Without References, In-Reply-To's first valid id; no valid Message-ID, None.
    message = b"Message-ID: no-brackets@x\r\nIn-Reply-To: <p@x> <q@x>\r\n\r\n"
    assert sort_columns(summarize(message))[7:] == (None, "<p@x>")


# -- THREAD (rfc5256:3) ---------------------------------------------------------------


def rec(n: int, date: int, msgid: str | None = None, refs: str = "", subject: str = "",
        reply: int = 0) -> thread.Record:  # fmt: skip
    return (n, date, msgid, refs, subject, reply)


def threads(records: list[thread.Record], algorithm: str = "REFERENCES") -> str:
    function = thread.references if algorithm == "REFERENCES" else thread.orderedsubject
    return thread.render(function(records, Budget(10**12))).decode()


def from_headers(*messages: tuple[int, str]) -> list[thread.Record]:
    """Records as the index keeps them, from (date, header text) per message."""
    records = []
    for n, (date, header) in enumerate(messages, 1):
        columns = sort_columns(summarize(header.replace("\n", "\r\n").encode() + b"\r\n\r\nx"))
        records.append((n, date, columns[7], columns[8], columns[0], columns[1]))
    return records


def test_peer_suite_thread_cases() -> None:
    # thread.mbox: b's reference to c is broken by c's own (a loop otherwise).
    box = from_headers(
        (17, "Message-ID: <a@b>"),
        (15, "Message-Id: <b@b>\nReferences: <a@b> <c@b>"),
        (16, "Message-Id: <c@b>\nReferences: <b@b>"),
    )
    assert threads(box) == "THREAD (3 2)(1)"
    assert threads([(n, *r[1:]) for n, r in enumerate(box[1:], 1)]) == "THREAD (2 1)"
    # thread2: a duplicate Message-ID; thread3: ... merged by subject.
    assert threads(from_headers((1, "Message-Id: <a@b>"), (1, "Message-Id: <a@b>"))) == (
        "THREAD (1)(2)"
    )
    duplicates = from_headers(
        (1, "Message-Id: <a@b>\nSubject: foo"), (2, "Message-Id: <a@b>\nSubject: Re: foo")
    )
    assert threads(duplicates) == "THREAD (1 2)"
    # thread4: under a missing parent, then merged by subject.
    assert threads(
        from_headers(
            (1, "Message-Id: <a@b>\nSubject: foo"),
            (2, "Message-Id: <b@b>\nReferences: <c@b>\nSubject: Re: foo"),
        )
    ) == "THREAD (1 2)"  # fmt: skip
    # thread5: children by date, then mailbox order.
    five = from_headers(
        (17, "Message-ID: <1@b>"),
        (15, "Message-Id: <2@b>\nIn-Reply-To: <1@b>"),
        (15, "Message-Id: <3@b>\nIn-Reply-To: <1@b>"),
        (15, "Message-Id: <4@b>\nIn-Reply-To: <2@b>"),
        (15, "Message-Id: <5@b>\nIn-Reply-To: <2@b>"),
    )
    assert threads(five[:4]) == "THREAD (1 (2 4)(3))"
    assert threads([(n, *r[1:]) for n, r in enumerate(five[2:], 1)]) == "THREAD (1)((2)(3))"
    # thread6: two messages under one missing parent stay under a dummy.
    assert threads(from_headers((1, "References: <a@b>"), (2, "References: <a@b>"))) == (
        "THREAD ((1)(2))"
    )
    # thread7: a duplicate's references are its own.
    seven = from_headers(
        (1, "Message-Id: <a@b>"),
        (1, "Message-Id: <b@b>\nReferences: <a@b>"),
        (1, "Message-Id: <c@b>\nReferences: <b@b>"),
        (1, "Message-Id: <b@b>\nReferences: <a@b>"),
    )
    assert threads(seven) == "THREAD (1 (2 3)(4))"
    assert threads([(n, *r[1:]) for n, r in enumerate([seven[0], *seven[2:]], 1)]) == (
        "THREAD (1 3 2)"
    )


def test_peer_suite_orderedsubject() -> None:
    subjects = ["a", "C", "b", "_", "[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b (a)",
                "Re: [FWD: c]", "[xyz]", None, " ", "Re: b", "RE: C", "Re: c",
                "Ad: Re: Ad: Re: Ad: x", "re: [fwd: [fwd: re: [fwd: babylon]]]"]  # fmt: skip
    box = [rec(n, 0, subject=base_subject(s or "")[0]) for n, s in enumerate(subjects, 1)]
    assert threads(box, "ORDEREDSUBJECT") == (
        "THREAD (1)(2 (7)(12)(13))(3 (5)(11))(4)(6)(8)(9 10)(14)(15)"
    )
    dated = [rec(1, 10, subject="A"), rec(2, 9, subject="B"), rec(3, 8, subject="A"),
             rec(4, 7, subject="B"), rec(5, 30, subject="A"), rec(6, 29, subject="B"),
             rec(7, 28, subject="A"), rec(8, 27, subject="B")]  # fmt: skip
    assert threads(dated, "ORDEREDSUBJECT") == "THREAD (4 (2)(8)(6))(3 (1)(7)(5))"


def test_cycles_and_self_references() -> None:
    # Each references the other: the second link would close a loop.
    assert threads([rec(1, 0, "<a@x>", "<b@x>"), rec(2, 0, "<b@x>", "<a@x>")]) == "THREAD (2 1)"
    # A message referencing itself, and a References list that loops.
    assert threads([rec(1, 0, "<a@x>", "<a@x>")]) == "THREAD (1)"
    assert threads([rec(1, 0, "<m@x>", "<a@x> <b@x> <a@x> <b@x>")]) == "THREAD (1)"
    assert threads(
        [rec(1, 0, "<a@x>"), rec(2, 1, "<b@x>", "<a@x> <b@x> <a@x>"), rec(3, 2, "<c@x>", "<b@x>")]
    ) == "THREAD (1 2 3)"  # fmt: skip


def test_missing_parents_and_dummies() -> None:
    # A dummy chain above one message: the message heads its thread.
    assert threads([rec(1, 0, "<m@x>", "<a@x> <b@x> <c@x>")]) == "THREAD (1)"
    # Two messages under dummies of one chain: the topmost dummy holds both.
    assert threads([rec(1, 0, None, "<a@x> <b@x>"), rec(2, 1, None, "<a@x> <c@x>")]) == (
        "THREAD ((1)(2))"
    )
    # Under a message, through a dummy: the message is the parent.
    assert threads([rec(1, 0, "<a@x>"), rec(2, 1, None, "<a@x> <b@x>")]) == "THREAD (1 2)"
    # A dummy thread sorts by its earliest child.
    assert threads([rec(1, 5, "<a@x>"), rec(2, 9, None, "<z@x>"), rec(3, 1, None, "<z@x>")]) == (
        "THREAD ((3)(2))(1)"
    )


def test_subject_merging() -> None:
    # Neither a reply: a dummy holds both.
    assert threads([rec(1, 0, subject="S"), rec(2, 1, subject="S")]) == "THREAD ((1)(2))"
    # A reply goes under the original, whichever came first.
    assert threads([rec(1, 0, subject="S", reply=1), rec(2, 1, subject="S")]) == "THREAD (2 1)"
    # A thread with a dummy on top takes the others.
    merged = threads(
        [rec(1, 0, None, "<a@x>", "S"), rec(2, 1, None, "<a@x>", "S"), rec(3, 2, subject="S")]
    )
    assert merged == "THREAD ((1)(2)(3))"
    # Empty subjects are never merged; others stay apart.
    assert threads([rec(1, 0), rec(2, 1), rec(3, 2, subject="T")]) == "THREAD (1)(2)(3)"
    # Three of one subject: the second makes a dummy, the third joins it.
    assert threads([rec(n, n, subject="S") for n in (1, 2, 3)]) == "THREAD ((1)(2)(3))"
    # A reply thread with children of its own keeps them under the original
    # (rfc5256:4: a message with one child continues the same list).
    assert threads(
        [rec(1, 0, "<r@x>", subject="S", reply=1), rec(2, 1, None, "<r@x>", "S", 1),
         rec(3, 2, "<o@x>", subject="S")]
    ) == "THREAD (3 1 2)"  # fmt: skip


def test_a_10000_deep_chain_and_its_reverse() -> None:
    n = 10_000
    chain = [rec(i, i, f"<{i}@x>", f"<{i - 1}@x>" if i > 1 else "") for i in range(1, n + 1)]
    expected = "THREAD (" + " ".join(map(str, range(1, n + 1))) + ")"
    assert threads(chain) == expected
    # Newest first in the mailbox (numbers as given), and full References lists.
    backwards = [
        rec(n + 1 - i, i, f"<{i}@x>", " ".join(f"<{j}@x>" for j in range(max(1, i - 50), i)))
        for i in range(n, 0, -1)
    ]
    assert (
        threads(backwards) == "THREAD (" + " ".join(str(n + 1 - i) for i in range(1, n + 1)) + ")"
    )
    # A chain where every message has a sibling: nested n/2 deep.
    forked = [rec(1, 0, "<0@x>")]
    for i in range(1, 2001):
        forked += [
            rec(2 * i, i, f"<{i}@x>", f"<{i - 1}@x>"),
            rec(2 * i + 1, i, None, f"<{i - 1}@x>"),
        ]
    rendered = threads(forked)
    assert rendered.startswith("THREAD (1 (2 (4 (6 ") and rendered.count("(") == 1 + 2 * 2000


def quadratic(depth: int, fanout: int) -> list[thread.Record]:
    """A chain ``depth`` long, then ``fanout`` messages that each have a
    child already and reference the chain's end: each link walks the chain
    (step 1's loop check)."""
    records = [rec(i, 0, f"<c{i}@x>", f"<c{i - 1}@x>" if i else "") for i in range(depth)]
    for j in range(fanout):
        records.append(rec(len(records), 0, f"<y{j}@x>", f"<x{j}@x>"))
        records.append(rec(len(records), 0, f"<x{j}@x>", f"<c{depth - 1}@x>"))
    return records


def test_the_budget_ends_a_quadratic_thread() -> None:
    records = quadratic(600, 600)
    with pytest.raises(SearchLimit):
        thread.references(records, Budget(600 * 600 * thread.STEP_WORK // 2))
    # The default budget takes a deep chain of legitimate mail in its stride.
    chain = [rec(i, i, f"<{i}@x>", f"<{i - 1}@x>") for i in range(1, 20_001)]
    budget = Budget(BASE_WORK)
    thread.references(chain, budget)
    assert budget.used() < BASE_WORK // 10
    # ...and so does the time limit, for a budget large enough.
    timed = Budget(10**15, seconds=0.0)
    timed.start()  # as the session's _off_loop does
    with pytest.raises(SearchLimit, match="time"):
        thread.references(quadratic(2000, 2000), timed)


# -- the SORT view helpers and ESORT (rfc5267) ----------------------------------------


def test_select_keeps_the_order_and_the_view() -> None:
    ordered = [5, 2, 9, 1]
    assert sort.select(ordered, [1, 2, 5, 9]) is ordered  # the view is the index
    assert sort.select(ordered, [1, 2, 5, 7, 9]) == [5, 2, 9, 1]  # 7 expunged meanwhile
    assert sort.select([*ordered, 12], [1, 2, 5, 9]) == [5, 2, 9, 1]  # 12 not announced
    assert sort.select(ordered, [1, 2, 5, 9], {9, 5}) == [5, 9]
    assert sort.sequence_numbers([9, 1, 5], [1, 5, 9]) == [3, 1, 2]


def test_esort_response() -> None:
    assert sort.render_esort("t", [5, 3, 4, 2, 1], ["MIN", "MAX", "ALL", "COUNT"], uid=False) == (
        b'ESEARCH (TAG "t") MIN 5 MAX 1 ALL 5,3:4,2,1 COUNT 5'
    )
    assert sort.render_esort("t", [], ["MIN", "ALL", "COUNT"], uid=True) == (
        b'ESEARCH (TAG "t") UID COUNT 0'
    )
    assert sort.render_esort("t", [5, 3, 4], [], uid=False, partial_range=(2, 9)) == (
        b'ESEARCH (TAG "t") PARTIAL (2:9 3:4)'
    )
    assert sort.render_esort("t", [5], [], uid=False, partial_range=(2, 2)) == (
        b'ESEARCH (TAG "t") PARTIAL (2:2 NIL)'
    )
