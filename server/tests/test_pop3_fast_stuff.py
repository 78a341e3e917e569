"""POP3 dot-stuffing on its fast path.

It must give, for every input, the bytes the earlier regex-based
``dot_stuff`` gave (a "." after any LF, CRLF or bare, or at the start, gets
another "."; a CRLF is added if the data does not end with one; then
"." CRLF), whole or in pieces.
"""

from __future__ import annotations

import random

import pytest
from _fakeio import old_dot_stuff

from estafeta.pop3 import session as pop3
from estafeta.pop3.session import dot_stuff, stuff, stuffed_chunks, terminator

PIECES = [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b"\n.", b"\r.", b"a", b"xyz", b" "]


def random_inputs(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    inputs = []
    for _ in range(count):
        if rng.random() < 0.2:
            data = bytes(rng.choice(b".\r\na") for _ in range(rng.randrange(0, 40)))
        else:
            data = b"".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 30)))
        inputs.append(data)
    return inputs


FIXED = [
    b"",
    b".",
    b"..",
    b".\r\n",
    b"\r\n.",
    b"\n.",
    b"\r.",
    b"\n",
    b"\r",
    b"a",
    b".\r\n.\r\n.",
    b"Subject: x\r\n\r\n.line\r\n..two\r\n.\r\nend\r\n",
    b"Subject: lf\n\n.dot after a bare LF\nline\r\n.crlf\rlone cr\r.x\n.",
    b"no line end at all",
    b"ends with CR\r",
    b"ends with LF\n",
    b"\n\n..\n.\n",
]


@pytest.mark.parametrize("data", FIXED)
def test_fixed_inputs_match_the_old_function(data: bytes) -> None:
    assert dot_stuff(data) == old_dot_stuff(data)
    assert stuff(data) + terminator(data) == old_dot_stuff(data)


def test_random_inputs_match_the_old_function() -> None:
    for data in random_inputs(20000, seed=1939):
        assert dot_stuff(data) == old_dot_stuff(data), data


def test_random_inputs_in_pieces_match_the_old_function() -> None:
    # Every piece size, so that chunk boundaries fall everywhere: between
    # an LF and its ".", between CR and LF, inside "..".
    for data in random_inputs(3000, seed=2449):
        expected = old_dot_stuff(data)
        for size in range(1, min(len(data), 12) + 1):
            pieces = list(stuffed_chunks(data, size))
            assert len(pieces) == -(-len(data) // size)
            assert b"".join(pieces) + terminator(data) == expected, (data, size)


def test_fast_path_returns_the_same_object() -> None:
    data = b"Subject: plain\r\n\r\n" + b"x" * 76 + b"\r\n"
    assert stuff(data) is data  # nothing to stuff: no copy


def test_large_random_message_with_dots_everywhere() -> None:
    rng = random.Random(17)
    lines = [
        rng.choice([b".", b"..", b".x", b"x", b"", b"x.y"]) * rng.randrange(1, 40)
        for _ in range(20000)
    ]
    data = b"\r\n".join(lines) + b"\n.\r."
    expected = old_dot_stuff(data)
    assert dot_stuff(data) == expected
    assert b"".join(stuffed_chunks(data, pop3.CHUNK)) + terminator(data) == expected
    assert b"".join(stuffed_chunks(data, 4093)) + terminator(data) == expected
