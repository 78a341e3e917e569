"""SMTPProtocol._getaddr's fast path for plain paths gives what aiosmtpd's
RFC 5322 parser gives, for any input (rfc5321:4.1.2 Path and parameters)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

import _fuzz  # noqa: F401  (the project's Hypothesis profile: derandomized, no database)
from estafeta.smtp.protocol import _SIMPLE_PATH, SMTPProtocol


def _outcome(function: Callable[[SMTPProtocol, str], object], arg: str, limit: int) -> object:
    instance = object.__new__(SMTPProtocol)
    instance.local_part_limit = limit
    try:
        return function(instance, arg)
    except Exception as exc:  # aiosmtpd's parser raises IndexError on "<"
        return type(exc)


def _both(arg: str, limit: int = 0) -> tuple[object, object]:
    ours = _outcome(SMTPProtocol._getaddr, arg, limit)
    reference = _outcome(SMTP._getaddr, arg, limit)
    if reference is IndexError:
        reference = (None, None)  # what ours answers instead: a syntax error
    return ours, reference


CASES = [
    "<alice@example.test>",
    "<alice@example.test> SIZE=4096 BODY=8BITMIME",
    "<alice@example.test>SIZE=10",
    "  <a.b+tag@mx-1.example.test>\t NOTIFY=NEVER",
    "<alice@example.test>   ",
    "<alice@example.test> (a comment) SIZE=1",
    "<>",
    "<> SIZE=1",
    '<"quoted local"@example.test>',
    "<alice@[192.0.2.1]>",
    "<@relay.test:alice@example.test>",
    "<alice@example.test",
    "<",
    " <",
    "alice@example.test",
    "<alice..dots@example.test>",
    "<.alice@example.test>",
    "<alice@-bad.test>",
    "<alice@example.test.>",
    "<ålice@example.test>",
    "",
]


@pytest.mark.parametrize("arg", CASES)
def test_known_paths(arg: str) -> None:
    ours, reference = _both(arg)
    assert ours == reference


def test_the_fast_path_is_taken_for_plain_paths() -> None:
    # Not a timing test: the common forms must match the regex, or the
    # override would only ever fall back.
    for arg in CASES[:5]:
        assert _SIMPLE_PATH.match(arg), arg


def test_the_local_part_limit_still_applies() -> None:
    long_local = "<" + "a" * 65 + "@example.test>"
    ours, reference = _both(long_local, limit=64)
    assert ours == reference == (None, None)


PIECES = st.sampled_from(
    ["<", ">", "@", ".", " ", "\t", "(", ")", '"', "\\", "[", "]", ":", ",", "=", "+", "-",
     "a", "b", "Z", "0", "9", "example", "test", "SIZE=1", "é", "\r"]
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=14).map("".join))
def test_any_input_gives_what_aiosmtpd_gives(arg: str) -> None:
    ours, reference = _both(arg)
    assert ours == reference


@settings(max_examples=1000, deadline=None)
@given(
    st.from_regex(r"\A<[a-z0-9.+-]{1,12}@[a-z0-9.-]{1,12}>( [A-Z]+=[a-z0-9]+){0,2}\Z"),
)
def test_plain_looking_paths_give_what_aiosmtpd_gives(arg: str) -> None:
    ours, reference = _both(arg)
    assert ours == reference
