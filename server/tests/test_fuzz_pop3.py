"""Property tests of the POP3 command parser.

Any bytes, fed in any pieces, give only commands, raw lines (after AUTH)
and -ERR texts of one line: never an exception, and the same events
whatever the pieces. Valid commands read back as sent.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import _fuzz
from _fuzz import POP3_CORPUS, POP3_TOKENS, cuts, mutated, pop3_events, split
from estafeta.pop3.parser import COMMANDS, MAX_LINE, Command, Error

TOO_LONG = "Line too long (rfc2449:4: 255 octets)"


def same_in_pieces(data: bytes, pieces: list[int]) -> None:
    assert pop3_events(split(data, pieces)) == pop3_events([data])


@given(st.binary(max_size=600), cuts)
def test_random_bytes(data: bytes, pieces: list[int]) -> None:
    same_in_pieces(data, pieces)


@given(mutated(POP3_CORPUS, POP3_TOKENS), cuts)
def test_mutated_commands(data: bytes, pieces: list[int]) -> None:
    same_in_pieces(data, pieces)


@given(st.randoms(use_true_random=False), cuts)
def test_random_mutations(rng: Any, pieces: list[int]) -> None:
    same_in_pieces(_fuzz.fuzz_input(rng, POP3_CORPUS, POP3_TOKENS), pieces)


@given(st.integers(1, 600), st.sampled_from([b"\r\n", b"\n", b"\r"]), cuts)
def test_lines_around_the_limit(size: int, end: bytes, pieces: list[int]) -> None:
    data = b"USER " + b"x" * size + end + b"STAT\r\n"
    events = pop3_events(split(data, pieces))
    assert events == pop3_events([data])
    if end == b"\r\n":
        too_long = len(b"USER ") + size + 2 > MAX_LINE
        assert events[0] == (Error(TOO_LONG) if too_long else Command("USER", ("x" * size,)))
        assert events[1:] == [Command("STAT", ())]
    else:
        assert len(events) == 1 and isinstance(events[0], Error)


word = st.text(
    st.characters(min_codepoint=0x21, exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
    min_size=1,
    max_size=20,
)


@given(st.sampled_from(sorted(COMMANDS)), st.lists(word, max_size=2), st.booleans())
def test_valid_commands_read_back(name: str, args: list[str], lower: bool) -> None:
    low, high = COMMANDS[name]
    args = args[:high]
    line = " ".join([name.lower() if lower else name, *args]).encode() + b"\r\n"
    events = pop3_events([line])
    if len(line) > MAX_LINE:
        assert isinstance(events[0], Error)
    elif low <= len(args) <= high:
        assert events[0] == Command(name, tuple(args))
    else:
        assert isinstance(events[0], Error)
