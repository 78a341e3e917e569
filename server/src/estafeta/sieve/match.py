"""Comparators (rfc4790:9, rfc5228:2.7.3) and match types (rfc5228:2.7.1,
rfc5231 relational, the regex draft), with bounded work.

* ``i;octet`` and ``i;ascii-casemap`` compare octets: values and keys are
  UTF-8 encoded first, so ":matches" ``?`` matches one octet as rfc5228:2.7.1
  says; casemap folds ASCII letters only (``bytes.upper``, rfc4790:9.2.1).
* ``i;ascii-numeric`` (rfc4790:9.1): the leading digits as a number, a value
  without one is positive infinity; no substring operation, so ":contains",
  ":matches" and ":regex" with it are compile errors.
* ``:matches`` never backtracks: the pattern is cut at its ``*`` into
  segments; the first is anchored at the start, the last at the end, each
  one between is found at its leftmost place (``bytes.find``, or a
  fixed-length ``re`` for segments with ``?``, which cannot backtrack more
  than its own length).  Leftmost is also what makes every ``*`` as short
  as possible (rfc5229:3.2 "non-greedy").  Work is O(len(value) x
  len(pattern)) at worst, and charged to the run's step budget beforehand
  (``glob_cost``).
* ``:regex`` uses the ``regex`` package (POSIX classes such as
  ``[[:alpha:]]`` work) on the decoded text, with the match variables
  ${0} (the match) and ${1}... (the groups); ``i;ascii-casemap`` makes it
  case-insensitive (Unicode case folding: the package has no ASCII-only
  mode that keeps POSIX classes Unicode-aware).  A per-match timeout; patterns
  longer than MAX_REGEX or whose counted repetitions would expand beyond
  MAX_REGEX_WEIGHT are refused (the package expands ``{n}`` when compiling:
  "((a{1000}){1000}){1000}" would take the machine's memory).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import regex  # type: ignore[import-untyped]

OCTET: Final = "i;octet"
CASEMAP: Final = "i;ascii-casemap"
NUMERIC: Final = "i;ascii-numeric"
COMPARATORS: Final = frozenset({OCTET, CASEMAP, NUMERIC})
RELATIONS: Final = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
MAX_REGEX: Final = 1024
MAX_REGEX_WEIGHT: Final = 4096  # about 1.5 MB once compiled
# Only light patterns are kept compiled (a few KB each); heavy ones are
# compiled again when used, their cost charged (``regex_cost``).
_CACHED_REGEX_WEIGHT: Final = 256
# Octet comparisons per budget step (see glob_cost).
OPS_PER_STEP: Final = 4096


class RegexError(ValueError):
    """A :regex pattern we do not run (invalid, too long, too heavy)."""


class MatchTimeout(Exception):
    """A :regex match ran out of its time budget."""


@dataclass(frozen=True, slots=True)
class MatchSpec:
    """The match type (rfc5228:2.7.1), relation (rfc5231:4) and comparator."""

    kind: str = "is"  # is contains matches regex value count
    relation: str = ""
    comparator: str = CASEMAP


DEFAULT: Final = MatchSpec()


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------
# Comparators


def _numeric(text: str) -> float:
    """rfc4790:9.1.1: leading digits as a number; none is positive infinity."""
    end = 0
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    return int(text[:end]) if end else math.inf


def _fold(data: bytes, comparator: str) -> bytes:
    return data.upper() if comparator == CASEMAP else data


def order(left: str, right: str, comparator: str) -> int:
    """-1, 0, 1: the comparator's ordering (rfc4790:4.2.4)."""
    if comparator == NUMERIC:
        a: float | bytes = _numeric(left)
        b: float | bytes = _numeric(right)
    else:
        a = _fold(encode(left), comparator)
        b = _fold(encode(right), comparator)
    return (a > b) - (a < b)  # type: ignore[operator]


def relation_holds(cmp: int, relation: str) -> bool:
    if relation == "gt":
        return cmp > 0
    if relation == "ge":
        return cmp >= 0
    if relation == "lt":
        return cmp < 0
    if relation == "le":
        return cmp <= 0
    if relation == "eq":
        return cmp == 0
    return cmp != 0


def equal(value: str, key: str, comparator: str) -> bool:
    if comparator == NUMERIC:
        return _numeric(value) == _numeric(key)
    if comparator == OCTET:
        return value == key
    return _fold(encode(value), comparator) == _fold(encode(key), comparator)


def contains(value: bytes, key: bytes, comparator: str) -> bool:
    return _fold(key, comparator) in _fold(value, comparator)


# --------------------------------------------------------------------------
# :matches (rfc5228:2.7.1) with match variables (rfc5229:3.2)

# A segment: its octets for searching (folded when case-insensitive, "?" as
# any octet), where its "?" are, and an re for segments that have any.
_Segment = tuple[bytes, tuple[int, ...], "re.Pattern[bytes] | None"]


@dataclass(frozen=True, slots=True)
class Glob:
    segments: tuple[_Segment, ...]  # len(stars) + 1 of them
    wildcards: tuple[tuple[int, int], ...]  # in pattern order: (segment, offset) or (-1, star)
    length: int

    def match(self, value: bytes, fold: bool) -> list[bytes] | None:
        """The captures (${0} first) if ``value`` matches, else None."""
        return self.match_folded(value, value.upper() if fold else value)

    def match_folded(self, value: bytes, text: bytes) -> list[bytes] | None:
        """``match`` with ``text`` the value already folded as the pattern was."""
        segs = self.segments
        first = segs[0]
        n = len(text)
        if len(segs) == 1:
            if n != len(first[0]) or not _at(text, first, 0):
                return None
            starts = [0]
        else:
            last = segs[-1]
            tail = n - len(last[0])
            if tail < len(first[0]) or not _at(text, first, 0) or not _at(text, last, tail):
                return None
            starts = [0]
            cur = len(first[0])
            for seg in segs[1:-1]:
                pos = _find(text, seg, cur, tail)
                if pos < 0:
                    return None
                starts.append(pos)
                cur = pos + len(seg[0])
            starts.append(tail)
        captures = [value]
        for where, index in self.wildcards:
            if where >= 0:  # a "?": one octet at a fixed offset in its segment
                at = starts[where] + index
                captures.append(value[at : at + 1])
            else:  # star number ``index`` lies between segments index and index + 1
                begin = starts[index] + len(segs[index][0])
                captures.append(value[begin : starts[index + 1]])
        return captures


def _at(text: bytes, seg: _Segment, pos: int) -> bool:
    octets, _, pattern = seg
    if pattern is None:
        return text.startswith(octets, pos)
    return pattern.match(text, pos) is not None


def _find(text: bytes, seg: _Segment, start: int, end: int) -> int:
    octets, _, pattern = seg
    if pattern is None:
        return text.find(octets, start, end)
    m = pattern.search(text, start, end)
    return -1 if m is None else m.start()


# Patterns up to this long are cached (1024 of them): a script's keys are
# compiled once, while long patterns built from variables do not fill memory.
_CACHED_GLOB: Final = 1024


def compile_glob(pattern: bytes, fold: bool) -> Glob:
    """rfc5228:2.7.1: "*" any run, "?" one octet, "\\" makes the next literal."""
    if len(pattern) <= _CACHED_GLOB:
        return _cached_glob(pattern, fold)
    return _compile_glob(pattern, fold)


@functools.lru_cache(maxsize=1024)
def _cached_glob(pattern: bytes, fold: bool) -> Glob:
    return _compile_glob(pattern, fold)


def _compile_glob(pattern: bytes, fold: bool) -> Glob:
    segments: list[_Segment] = []
    wildcards: list[tuple[int, int]] = []
    current = bytearray()
    anys: list[int] = []
    stars = 0

    def close() -> None:
        octets = bytes(current)
        if fold:
            octets = octets.upper()
        compiled = None
        if anys:
            pieces = []
            for i in range(len(octets)):
                pieces.append(b"." if i in anys else re.escape(octets[i : i + 1]))
            compiled = re.compile(b"".join(pieces), re.DOTALL)
        segments.append((octets, tuple(anys), compiled))
        current.clear()
        anys.clear()

    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x5C and i + 1 < n:  # "\": the next octet is literal
            current.append(pattern[i + 1])
            i += 2
            continue
        if c == 0x2A:  # "*"
            close()
            wildcards.append((-1, stars))
            stars += 1
        elif c == 0x3F:  # "?"
            wildcards.append((len(segments), len(current)))
            anys.append(len(current))
            current.append(0x3F)
        else:
            current.append(c)
        i += 1
    close()
    return Glob(tuple(segments), tuple(wildcards), n)


def glob_cost(value_len: int, glob: Glob) -> int:
    """Budget steps of one match: the octets a search may compare."""
    if len(glob.segments) <= 2:
        return 1 + value_len // OPS_PER_STEP
    inner = sum(max(1, len(s[0])) if s[2] is not None else 1 for s in glob.segments[1:-1])
    return 1 + value_len * inner // OPS_PER_STEP


# --------------------------------------------------------------------------
# :regex (draft-ietf-sieve-regex-01)

_QUANT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


@functools.lru_cache(maxsize=1024)
def regex_weight(pattern: str) -> int:
    """How large a pattern may become when its counted repetitions are
    expanded: every atom weighs 1, a group the sum of its content, a
    ``{n,m}`` multiplies what it follows by max(n, m) (``{n,}`` by n + 1)."""
    stack: list[int] = [0]
    last = 0  # weight of the atom just closed, for a quantifier
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            last = 1
            stack[-1] += 1
            i += 2
            continue
        if c == "[":  # a bracket expression is one atom
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                if pattern[j] == "[" and j + 1 < n and pattern[j + 1] in ":=.":
                    close = pattern.find(pattern[j + 1] + "]", j + 2)
                    j = n if close < 0 else close + 2
                    continue
                j += 1
            last = 1
            stack[-1] += 1
            i = j + 1
            continue
        if c == "(":
            stack.append(0)
            last = 0
        elif c == ")":
            inner = stack.pop() if len(stack) > 1 else 0
            last = inner
            stack[-1] += inner
        elif c == "{":
            m = _QUANT.match(pattern, i)
            if m is not None:
                low = int(m.group(1)[:9])
                high = m.group(2)
                times = low + 1 if high == "" else max(low, int(high[:9])) if high else low
                stack[-1] += last * (times - 1)
                last *= times
                if stack[-1] > MAX_REGEX_WEIGHT:
                    return stack[-1]
                i = m.end()
                continue
            last = 1
            stack[-1] += 1
        elif c in "*+?|^$":
            pass
        else:
            last = 1
            stack[-1] += 1
        i += 1
    return sum(stack)


def compile_regex(pattern: str, fold: bool) -> Callable[..., object]:
    """The compiled pattern's ``search``; RegexError if we refuse it."""
    if len(pattern) > MAX_REGEX:
        raise RegexError(f"regular expression longer than {MAX_REGEX} characters")
    weight = regex_weight(pattern)
    if weight > MAX_REGEX_WEIGHT:
        raise RegexError("regular expression with too many counted repetitions")
    if weight <= _CACHED_REGEX_WEIGHT:
        return _cached_regex(pattern, fold)
    return _compile_regex(pattern, fold)


def regex_cost(pattern: str) -> int:
    """Budget steps of compiling ``pattern`` (a heavy one each time)."""
    weight = regex_weight(pattern[:MAX_REGEX])
    return 1 + (len(pattern) + (weight if weight > _CACHED_REGEX_WEIGHT else 0)) // 64


@functools.lru_cache(maxsize=256)
def _cached_regex(pattern: str, fold: bool) -> Callable[..., object]:
    return _compile_regex(pattern, fold)


def _compile_regex(pattern: str, fold: bool) -> Callable[..., object]:
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE if fold else 0)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise RegexError(f"invalid regular expression: {exc}") from None
    search: Callable[..., object] = compiled.search
    return search


# Characters that stand for themselves in a pattern, and the punctuation a
# backslash makes literal; anything else ends a literal run (see below).
_PLAIN: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_@/:,;'\"!%&=<>#~`"
)
_ESCAPED: Final = frozenset("[](){}.*+?^$|\\/-")
_QUANTIFIERS: Final = frozenset("*+?{")


@functools.lru_cache(maxsize=1024)
def required_literal(pattern: str) -> str | None:
    """A string every match of ``pattern`` contains, or None.

    The leading run of literal characters (after an optional "^"), short of
    one that a quantifier makes optional: "^\\[ticket-3\\] [0-9]+$" gives
    "[ticket-3] ".  Conservative: None for a pattern with an alternation or
    an inline flag or group extension anywhere ("|", "(?"), and a run is
    only of ASCII characters that mean themselves in every syntax the regex
    package has.  A search can skip the engine when the text lacks it.
    """
    if "|" in pattern or "(?" in pattern:
        return None
    i = 1 if pattern.startswith("^") else 0
    run: list[str] = []
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in _ESCAPED:
            char, width = pattern[i + 1], 2
        elif c in _PLAIN:
            char, width = c, 1
        else:
            break
        if i + width < len(pattern) and pattern[i + width] in _QUANTIFIERS:
            break  # this one may be absent (or repeated): the run ends before it
        run.append(char)
        i += width
    return "".join(run) or None


def literal_absent(literal: str | None, text: str, fold: bool) -> bool:
    """Whether ``text`` certainly lacks ``required_literal``'s string (so the
    pattern cannot match).  Case-insensitive patterns fold with Unicode rules
    (U+212A KELVIN SIGN matches "k"): those are only decided on ASCII text."""
    if literal is None:
        return False
    if not fold:
        return literal not in text
    if not text.isascii():
        return False
    return literal.lower() not in text.lower()


def regex_light(pattern: str) -> bool:
    """Whether a compiled ``pattern`` is small enough to keep (see regex_cost)."""
    return len(pattern) <= MAX_REGEX and regex_weight(pattern) <= _CACHED_REGEX_WEIGHT


def regex_groups(
    search: Callable[..., object], value: str, timeout: float
) -> tuple[str, ...] | None:
    """Groups (the whole match first) if the compiled pattern's ``search``
    finds it in ``value``; MatchTimeout after ``timeout`` seconds."""
    try:
        # (string, pos, endpos, concurrent, partial, timeout): positional,
        # as keyword arguments cost the package twice the time of a short
        # search (test_regex_timeout_is_a_runtime_error checks the timeout).
        m = search(value, None, None, None, False, timeout)
    except TimeoutError:
        raise MatchTimeout("regular expression took too long") from None
    if m is None:
        return None
    groups: tuple[str | None, ...] = (m.group(0), *m.groups())  # type: ignore[attr-defined]
    return tuple(g or "" for g in groups)


def regex_search(
    pattern: str, value: str, comparator: str, timeout: float
) -> tuple[str, ...] | None:
    """Groups (the whole match first) if ``pattern`` is found in ``value``."""
    return regex_groups(compile_regex(pattern, comparator == CASEMAP), value, timeout)
