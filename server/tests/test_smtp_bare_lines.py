"""has_bare_line_ending (three counts) answers like the regex that defines a
bare CR or LF (rfc5321:2.3.8), for any content."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _fuzz  # noqa: F401  (the project's Hypothesis profile: derandomized, no database)
from estafeta.smtp.inbound import _BARE_LINE_ENDING, has_bare_line_ending

CASES = [
    b"",
    b"a\r\nb\r\n",
    b"a\nb\r\n",
    b"a\rb\r\n",
    b"a\r\r\n",
    b"a\r\n\n",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\r",
    b"x" * 4000 + b"\r\n.\r\n",
    b"Subject: hi\r\n\r\nbody\r\n.\n.\r\n",  # the smuggling form
]


@pytest.mark.parametrize("content", CASES)
def test_known_contents(content: bytes) -> None:
    assert has_bare_line_ending(content) == bool(_BARE_LINE_ENDING.search(content))


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b" "]), max_size=30))
def test_any_content(pieces: list[bytes]) -> None:
    content = b"".join(pieces)
    assert has_bare_line_ending(content) == bool(_BARE_LINE_ENDING.search(content))
