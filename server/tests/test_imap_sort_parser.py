"""The sans-IO parser on SORT, THREAD and CANCELUPDATE (rfc5256:5,
rfc5957:4, rfc5267:5): what each form parses to, and that every malformed
one is a BAD (a ParseError, with the parser back in step), never a
traceback."""

from __future__ import annotations

import datetime

import pytest
from test_imap_parser import AND, K, S, args_of, error_of, one

from estafeta.imap import commands as c
from estafeta.imap.parser import Command


def test_sort_plain_and_uid() -> None:
    assert args_of(b"A282 SORT (SUBJECT) UTF-8 SINCE 1-Feb-1994\r\n") == c.Sort(
        (("SUBJECT", False),), "UTF-8", None, AND(K("SINCE", datetime.date(1994, 2, 1)))
    )
    command = one(b"A283 uid sort (reverse date subject DisplayFrom) us-ascii 1:5 SEEN\r\n")
    assert command == Command(
        "A283",
        "SORT",
        c.Sort(
            (("DATE", True), ("SUBJECT", False), ("DISPLAYFROM", False)),
            "US-ASCII",
            None,
            AND(K("SEQSET", S((1, 5))), K("SEEN")),
        ),
        uid=True,
    )


def test_sort_charset_is_any_atom_or_quoted_and_checked_by_the_session() -> None:
    assert args_of(b'a SORT (SIZE) "koi8-r" ALL\r\n') == c.Sort(
        (("SIZE", False),), "KOI8-R", None, AND(K("ALL"))
    )


def test_sort_return_options() -> None:
    assert args_of(b"a SORT RETURN (MIN MAX ALL COUNT) (ARRIVAL) UTF-8 ALL\r\n") == c.Sort(
        (("ARRIVAL", False),), "UTF-8", ("MIN", "MAX", "ALL", "COUNT"), AND(K("ALL"))
    )
    assert args_of(b"a SORT RETURN () (ARRIVAL) UTF-8 ALL\r\n") == c.Sort(
        (("ARRIVAL", False),), "UTF-8", (), AND(K("ALL"))
    )
    # rfc5267:4.4: PARTIAL high:low is the same range as low:high.
    assert args_of(b"a SORT RETURN (PARTIAL 4:2 COUNT) (ARRIVAL) UTF-8 ALL\r\n") == c.Sort(
        (("ARRIVAL", False),), "UTF-8", ("PARTIAL", "COUNT"), AND(K("ALL")), (2, 4)
    )
    assert args_of(b"a SORT RETURN (UPDATE CONTEXT SAVE) (DATE) UTF-8 ALL\r\n") == c.Sort(
        (("DATE", False),), "UTF-8", ("UPDATE", "CONTEXT", "SAVE"), AND(K("ALL"))
    )


def test_thread_and_uid_thread() -> None:
    assert args_of(b"A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000\r\n") == c.Thread(
        "ORDEREDSUBJECT", "UTF-8", AND(K("SINCE", datetime.date(2000, 3, 5)))
    )
    assert one(b'a uid thread references "US-ASCII" OR 1 2 UNSEEN\r\n') == Command(
        "a",
        "THREAD",
        c.Thread(
            "REFERENCES",
            "US-ASCII",
            AND(K("OR", K("SEQSET", S((1, 1))), K("SEQSET", S((2, 2)))), K("UNSEEN")),
        ),
        uid=True,
    )


def test_cancelupdate() -> None:
    assert args_of(b'a CANCELUPDATE "x1" "x2" "x1"\r\n') == c.CancelUpdate(("x1", "x2"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"a SORT", "expected sort criteria"),
        (b"a SORT ", "expected sort criteria"),
        (b"a SORT DATE UTF-8 ALL", "expected sort criteria"),
        (b"a SORT () UTF-8 ALL", "empty sort criteria"),
        (b"a SORT (DATE UTF-8 ALL", "unknown sort key UTF-8"),
        (b"a SORT (BOGUS) UTF-8 ALL", "unknown sort key BOGUS"),
        (b"a SORT (REVERSE) UTF-8 ALL", "expected sort key after REVERSE"),
        (b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL", "unknown sort key REVERSE"),
        (b"a SORT (DATE)", "expected charset"),
        (b"a SORT (DATE) UTF-8", "expected search key"),
        (b"a SORT (DATE) UTF-8 ", "expected search key"),
        (b"a SORT (DATE)  UTF-8 ALL", "expected charset"),
        (b"a SORT (DATE) UTF-8 NOSUCH", "unknown search key NOSUCH"),
        (b"a SORT (DATE) UTF-8 ALL)", "expected search key"),
        (b"a SORT RETURN (DATE) UTF-8 ALL", "unknown SORT return option DATE"),
        (b"a SORT RETURN (MIN) UTF-8 ALL", "expected sort criteria"),
        (b"a SORT RETURN MIN (DATE) UTF-8 ALL", "expected return options"),
        (b"a SORT RETURN (PARTIAL 1) (DATE) UTF-8 ALL", "expected partial range low:high"),
        (b"a SORT RETURN (PARTIAL 1:*) (DATE) UTF-8 ALL", "expected partial range"),
        (b"a SORT RETURN (PARTIAL *:1) (DATE) UTF-8 ALL", "expected partial range"),
        (b"a SORT RETURN (PARTIAL 0:3) (DATE) UTF-8 ALL", "partial range out of range"),
        (b"a SORT RETURN (PARTIAL 1:2 PARTIAL 3:4) (DATE) UTF-8 ALL", "PARTIAL given twice"),
        (b"a SORT RETURN (PARTIAL 1:2 ALL) (DATE) UTF-8 ALL", "PARTIAL and ALL cannot"),
        (b"a THREAD", "expected threading algorithm"),
        (b"a THREAD REFS UTF-8 ALL", "unknown threading algorithm REFS"),
        (b"a THREAD REFERENCES", "expected charset"),
        (b"a THREAD REFERENCES UTF-8", "expected search key"),
        (b"a THREAD (REFERENCES) UTF-8 ALL", "expected threading algorithm"),
        (b"a UID THREAD REFERENCES UTF-8 UID", "expected UID set"),
        (b"a CANCELUPDATE", "expected tag"),
        (b"a CANCELUPDATE x1", "expected a quoted tag"),
        (b'a CANCELUPDATE "x1"x', "expected tag"),
    ],
)
def test_malformed_forms_are_bad(line: bytes, message: str) -> None:
    error = error_of(line + b"\r\n")
    assert error.tag == "a"
    assert message in error.text, error.text


def test_deeply_nested_search_keys_are_bad_not_a_crash() -> None:
    program = b"(" * 200 + b"ALL" + b")" * 200
    error = error_of(b"a SORT (DATE) UTF-8 " + program + b"\r\n")
    assert "nested" in error.text
