"""``structure.with_fields``: the Summary of a message with fields added on
top, made without a new parse, must be exactly ``summarize`` of the new
bytes, or None (the caller parses then). Generated messages (``_fuzz``),
random bytes, every line start of the header as the insertion point, and
insertions that are not allowed (fields the Summary reads, continuation
lines, an empty line)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from _fuzz import random_message
from estafeta.message import structure, summarize, with_fields

TRACE = [
    b"Return-Path: <a@b.example>\r\n",
    b"Received: from x.example ([192.0.2.1])\r\n\tby mx.example.test; Mon, 1 Jan 2024\r\n",
    b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=b.example\r\n",
    b"X-Spam-Status: No, score=0.01\r\nX-Spam-Score: 0.01\r\n",
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none\r\n",
]
REFUSED = [
    b"Subject: not ours to add\r\n",  # a field the Summary reads
    b"Content-Type: text/html\r\n",
    b"\tcontinuation\r\n",  # would continue the field before
    b"\r\n",  # would end the header
    b"X-Spam-Status: No",  # not a whole line
    b"not a field\r\n",
]


def line_starts(data: bytes, end: int) -> list[int]:
    starts = [0]
    at = data.find(b"\n")
    while 0 <= at < end - 1:
        starts.append(at + 1)
        at = data.find(b"\n", at + 1)
    return starts


def check(data: bytes, lines: bytes, pick: int) -> bool:
    """True when with_fields gave a summary (checked against summarize)."""
    summary = structure._summarize(data)
    starts = line_starts(data, summary.header_size)
    at = starts[pick % len(starts)]
    made = with_fields(summary, data, at, lines)
    if made is None:
        return False
    assert made == summarize(data[:at] + lines + data[at:]), (data[:200], at, lines)
    return True


@given(st.randoms(use_true_random=False), st.sampled_from(TRACE + REFUSED), st.integers(0, 50))
def test_generated_messages(rng: Any, lines: bytes, pick: int) -> None:
    check(random_message(rng), lines, pick)


@given(st.binary(max_size=600), st.sampled_from(TRACE + REFUSED), st.integers(0, 50))
def test_random_bytes(data: bytes, lines: bytes, pick: int) -> None:
    check(data, lines, pick)


MESSAGE = (
    b"Received: from a.example\r\n\tby b.example\r\n"
    b"From: Ann <ann@a.example>\r\nTo: bob@b.example\r\nSubject: hi\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--XX--\r\n"
)


def test_delivery_stacking_is_exact() -> None:
    # What delivery does: our Received and Authentication-Results on top,
    # X-Spam-* after them, Return-Path first; each step from the last.
    summary = summarize(MESSAGE)
    data = MESSAGE
    ours = TRACE[1] + TRACE[2]
    for at, lines in ((0, ours), (len(ours), TRACE[3]), (0, TRACE[0])):
        made = with_fields(summary, data, at, lines)
        data = data[:at] + lines + data[at:]
        assert made == summarize(data)
        summary = made
    inner = summary.bodystructure["parts"][1]
    assert data[inner["body"]["body_start"] :].startswith(b"body\r\n")


def test_refused_insertions() -> None:
    summary = summarize(MESSAGE)
    for lines in REFUSED:
        assert with_fields(summary, MESSAGE, 0, lines) is None, lines
    inside = MESSAGE.index(b"\tby")  # inside a folded field
    assert with_fields(summary, MESSAGE, inside, TRACE[0]) is None
    assert with_fields(summary, MESSAGE, summary.header_size, TRACE[0]) is None  # the body
    body_only = b"no header at all\r\n"
    assert with_fields(summarize(body_only), body_only, 0, TRACE[0]) is None
    assert with_fields(summary, MESSAGE, 5, TRACE[0]) is None  # not a line start
