"""Property tests of the MIME structure (estafeta.message.structure) and of
FETCH rendering (estafeta.imap.fetch).

Generated messages (nested multiparts, message/rfc822, bad or missing
boundaries and headers, 8-bit junk, encoded words, mixed line ends) and
plain random bytes give a summary without an exception (the inner
``_summarize`` is called, so a bug is not hidden by the fallback summary),
in bounded time (the profile's deadline) and nesting; the summary survives
JSON, and its ENVELOPE, BODY and BODYSTRUCTURE read back, through a reader
of the rfc3501:9 grammar, as exactly what they encode. FETCH of any item on
such a message gives well-formed response items.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _fuzz
from _fuzz import FETCH_ITEMS, check_message, fetch_atts, nested_message, random_message
from estafeta.imap.types import FetchAtt, Section
from estafeta.message import MAX_DEPTH, decode_rfc2047, structure, summarize

ATTS = [fetch_atts(item) for item in FETCH_ITEMS]
section_item = st.builds(
    lambda name, path, text, partial: FetchAtt(name, Section(tuple(path), text), False, partial),
    st.sampled_from(["BODY[]", "BINARY", "BINARY.SIZE"]),
    st.lists(st.integers(1, 4), max_size=4),
    st.sampled_from(["", "", "HEADER", "TEXT", "MIME"]),
    st.none() | st.tuples(st.integers(0, 2**63 - 1), st.integers(1, 2**63 - 1)),
).filter(lambda a: a.name == "BODY[]" or not a.section.text)
fetch_items = st.lists(
    st.sampled_from(ATTS).map(list) | section_item.map(lambda a: [a]), max_size=4
).map(lambda ls: [a for t in ls for a in t])


@given(st.randoms(use_true_random=False), fetch_items)
def test_generated_messages(rng: Any, atts: list[Any]) -> None:
    check_message(random_message(rng), atts)


@given(st.binary(max_size=2000), fetch_items)
def test_random_bytes(data: bytes, atts: list[Any]) -> None:
    check_message(data, atts)


header_line = st.tuples(
    st.sampled_from([b"Content-Type", b"From", b"To", b"Subject", b"Content-Disposition"]),
    st.binary(max_size=60),
).map(lambda t: t[0] + b": " + t[1] + b"\r\n")


@given(st.lists(header_line, max_size=6), st.binary(max_size=200), fetch_items)
def test_random_header_values(lines: list[bytes], body: bytes, atts: list[Any]) -> None:
    check_message(b"".join(lines) + b"\r\n" + body, atts)


@settings(max_examples=_fuzz.examples(15))
@given(
    st.integers(MAX_DEPTH - 2, MAX_DEPTH + 40),
    st.sampled_from([0, 1, 2, 3]),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_nesting_is_bounded(depth: int, rfc822_every: int, eol: bytes) -> None:
    check_message(nested_message(depth, rfc822_every=rfc822_every, eol=eol))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(nested_message(3000), id="3000 nested multiparts"),
        pytest.param(nested_message(3000, rfc822_every=1), id="3000 nested messages"),
        pytest.param(
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n" * 6_000,
            id="6000 empty parts",
        ),
        pytest.param(b"To: " + b"(" * 200_000 + b"\r\n\r\n", id="unclosed comments"),
        pytest.param(b"To: " + b"<" * 100_000 + b"@" * 100_000 + b"\r\n\r\n", id="angles"),
        pytest.param(b"Subject: " + b"=?utf-8?q?a?= " * 50_000 + b"\r\n\r\n", id="words"),
        pytest.param(
            b"Content-Type: text/plain" + b"; a*%d=x" % 5 * 20_000 + b"\r\n\r\n", id="params"
        ),
    ],
)
def test_hostile_messages_in_bounded_time(data: bytes) -> None:
    start = time.monotonic()
    check_message(data)
    assert time.monotonic() - start < 20


# -- regressions found by fuzzing ---------------------------------------------------------


def test_encoded_word_in_a_charset_that_cannot_replace() -> None:
    # The punycode codec raises UnicodeDecodeError even with errors="replace":
    # summarize fell back to a summary without envelope or structure.
    assert decode_rfc2047("=?punycode?B?/w==?=") == "=?punycode?B?/w==?="
    assert decode_rfc2047("=?idna?Q?=FF?= x") == "=?idna?Q?=FF?= x"
    data = b"Subject: =?punycode?Q?=FF?=\r\nFrom: a@b.test\r\n\r\nbody\r\n"
    summary = structure._summarize(data)
    assert summary.subject == "=?punycode?Q?=FF?="
    assert summarize(data).from_addr == "a@b.test"


def test_rfc2231_value_with_raw_8bit_octets() -> None:
    # Found by make fuzz: a boundary*= whose charset or text held raw 8-bit
    # octets (surrogate-escaped in the parsed header) made unquote raise
    # UnicodeEncodeError; summarize fell back to a summary without structure.
    data = b"Content-Type: multipart/mixed; boundary*=u\\\x8f'\xf3\xbb'b%35\r\n\r\nbody\r\n"
    summary = structure._summarize(data)
    assert summary.bodystructure is not None
    assert structure._rfc2231_value("utf-8''caf%C3%A9") == "caf\u00e9"
    assert structure._rfc2231_value("iso-8859-1''caf%E9 \udce9") == "caf\u00e9 \u00e9"
    assert structure._rfc2231_value("no-such-charset''%E9") == "\u00e9"


@pytest.mark.parametrize(
    ("profile", "expected"),
    [("ci", "200 True"), ("long", "20000 False"), ("bogus", "InvalidArgument")],
)
def test_estafeta_fuzz_selects_the_hypothesis_profile(profile: str, expected: str) -> None:
    """ESTAFETA_FUZZ=long (make fuzz's deep runs) really changes the number of
    examples; a misspelt profile fails loudly instead of running the short one."""
    probe = (
        "import hypothesis\n"
        "try:\n"
        "    import _fuzz\n"
        "except hypothesis.errors.InvalidArgument:\n"
        "    print('InvalidArgument')\n"
        "else:\n"
        "    s = hypothesis.settings.default\n"
        "    print(s.max_examples, s.derandomize)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).parent,
        env={**os.environ, "ESTAFETA_FUZZ": profile},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == expected
