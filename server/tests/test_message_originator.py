"""header_fields and parse_mailbox_list (message.structure): the From: and
Sender: that submission checks are the ones IMAP's ENVELOPE shows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estafeta.message import summarize
from estafeta.message.structure import (
    AddressSyntaxError,
    _parse_header,
    header_fields,
    parse_mailbox_list,
)


def test_header_fields_in_order_with_repeats() -> None:
    data = (
        b"From : bob@example.test\r\n"
        b"From: alice@example.test\r\n"
        b"Subject: one\r\n  two\r\n"
        b"X-Empty:\r\n"
        b"\r\n"
        b"From: body@example.test\r\n"
    )
    assert header_fields(data) == [
        ("from", b" bob@example.test\r\n"),
        ("from", b" alice@example.test\r\n"),
        ("subject", b" one\r\n  two\r\n"),
        ("x-empty", b"\r\n"),
    ]


def test_header_ends_at_a_line_that_is_not_a_field() -> None:
    data = b"Subject: x\r\nnot a field\r\nFrom: bob@example.test\r\n\r\n"
    assert header_fields(data) == [("subject", b" x\r\n")]


_LINES = st.sampled_from(
    [
        b"From: a@b.c\r\n",
        b"From : d@e.f\r\n",
        b"from:g@h.i\n",
        b"Sender: j@k.l\r\n",
        b" folded\r\n",
        b"\tfolded\r\n",
        b"Subject: s\r\n",
        b"no colon\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"X-Y:\r\n",
        b": empty name\r\n",
        b"F\xc3\xa9: 8bit name\r\n",
    ]
)


@given(st.lists(_LINES, max_size=12).map(b"".join))
def test_header_fields_split_as_parse_header_does(data: bytes) -> None:
    first: dict[str, bytes] = {}
    for name, value in header_fields(data):
        first.setdefault(name, value)
    assert first == _parse_header(data, 0, len(data))[0]


def addresses(value: bytes) -> list[str]:
    return [m.address for m in parse_mailbox_list(value)]


@pytest.mark.parametrize(
    ("value", "expected", "texts"),
    [
        (b" alice@example.test", ["alice@example.test"], [()]),
        (b" Alice <alice@example.test>", ["alice@example.test"], [("Alice",)]),
        (b' "A. Liddell" <alice@example.test>', ["alice@example.test"], [("A. Liddell",)]),
        (b" A. Liddell <alice@example.test>", ["alice@example.test"], [("A. Liddell",)]),
        (b" alice@example.test (Alice)", ["alice@example.test"], [("Alice",)]),
        (b" Alice\r\n <alice@example.test>", ["alice@example.test"], [("Alice",)]),
        (
            b" a@example.test, B <b@example.test>,, ",
            ["a@example.test", "b@example.test"],
            [(), ("B",)],
        ),
        (b' "a b"@example.test', ['"a b"@example.test'], [()]),
        (b" a@[192.0.2.1]", ["a@[192.0.2.1]"], [()]),
        (b" =?utf-8?q?x?= <a@example.test>", ["a@example.test"], [("=?utf-8?q?x?=",)]),
        (b" \xc3\xa9@example.test", ["\xe9@example.test"], [()]),
    ],
)
def test_mailbox_lists(value: bytes, expected: list[str], texts: list[tuple[str, ...]]) -> None:
    mailboxes = parse_mailbox_list(value)
    assert [m.address for m in mailboxes] == expected
    assert [m.texts for m in mailboxes] == texts


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b" ",
        b" alice",
        b" <>",
        b" alice@example.test <bob@example.test>",
        b" <alice@example.test> bob@example.test",
        b" <alice@example.test",
        b" alice@example.test>",
        b" <<alice@example.test>>",
        b" g: alice@example.test;",
        b" g:;",
        b" <@route:alice@example.test>",
        b' "unclosed <alice@example.test>',
        b" (unclosed alice@example.test",
        b" alice@example.test)",
        b" alice@example.test (\\",
        b" [unclosed@example.test",
        b" alice@example.test\x00",
        b" alice@@example.test",
        b" alice@example..test",
        b" .alice@example.test",
        b" alice@",
        b" @example.test",
        b" a@b" + b", x@y" * 20000,
    ],
)
def test_not_mailbox_lists(value: bytes) -> None:
    with pytest.raises(AddressSyntaxError):
        parse_mailbox_list(value)


_PIECES = st.sampled_from(
    [
        "alice",
        "bob",
        "@",
        ".",
        "example",
        "test",
        "<",
        ">",
        ",",
        ":",
        ";",
        " ",
        '"',
        '"x@y"',
        "(",
        ")",
        "(c)",
        "\\",
        "[1.2.3.4]",
        "=?utf-8?q?a?=",
    ]
)


@given(st.lists(_PIECES, max_size=14).map("".join))
def test_accepted_lists_are_what_envelope_shows(value: str) -> None:
    """Whatever parse_mailbox_list accepts, ENVELOPE's From is the same list."""
    raw = value.encode()
    try:
        mailboxes = parse_mailbox_list(b" " + raw)
    except AddressSyntaxError:
        return
    summary = summarize(b"From: " + raw + b"\r\nSubject: s\r\n\r\nbody\r\n")
    envelope_from = summary.envelope[2]
    assert [f"{m[2]}@{m[3]}" for m in envelope_from] == [m.address for m in mailboxes]
