"""SEARCH: evaluate a search program over the selected mailbox, and the
SEARCH / ESEARCH responses (rfc9051:6.4.4, rfc9051:7.3.4, rfc3501:6.4.4,
rfc4731, rfc5182, rfc5032, rfc7162:3.1.5).

A program is compiled once into a tree of small closures, then run over the
messages; keys that only look at flags, numbers, dates or the stored
``Summary`` never read a message file. Choices:

* Strings match as case-insensitive substrings (rfc9051:6.4.4), with both
  sides ``str.casefold()``-ed: a close approximation of i;unicode-casemap
  (rfc5051) without the normalisation step, so "GRÜSSE" finds "Grüße". An
  empty string matches every message, except for HEADER, where it matches the
  messages that have the field (rfc9051:6.4.4).
* FROM, TO, CC and BCC search the ENVELOPE address lists of the Summary,
  written back as text ``Display Name <mailbox@host>, ...`` with RFC 2047
  display names decoded, so display names match as well as addresses. Quotes
  and comments of the raw header are not part of that text.
* SUBJECT searches the decoded Summary subject; HEADER SUBJECT / DATE /
  MESSAGE-ID / IN-REPLY-TO use the raw ENVELOPE fields (first occurrence).
  Every other HEADER field reads the message header, all occurrences, values
  unfolded and RFC 2047 decoded (UTF-8 bytes, else Latin-1).
* BODY searches the decoded text of every text/* leaf (transfer encoding
  undone, charset decoded, unknown charsets read as UTF-8), and the headers of
  encapsulated message/rfc822 parts; non-text parts (attachments) are skipped,
  as are multipart preambles and epilogues. TEXT is the whole header plus
  BODY. At most ``MAX_SCAN`` bytes of (encoded) part bodies are scanned per
  message; text past that is not found.
* BEFORE / ON / SINCE compare the calendar day of the internal date in the
  ``tz`` given to ``evaluate``. SENTBEFORE / SENTON / SENTSINCE compare the
  calendar day written in the Date: header, in the header's own zone
  ("disregarding time and timezone"); a message without a valid Date: (Summary
  ``date`` None) never matches them.
* SAVEDBEFORE / SAVEDON / SAVEDSINCE (rfc8514:4.3) compare the calendar
  day of the save date like BEFORE / ON / SINCE; a message whose save date
  the index does not know is compared by its internal date, the rfc8514:4.3
  fallback. SAVEDATESUPPORTED matches every message: every mailbox keeps
  save dates (index schema 8).
* EMAILID / THREADID (rfc8474:6) match the exact, case-sensitive id.
* MODSEQ matches per-message mod-sequences >= the value; entry names are
  ignored, since flags have no separate mod-sequences here (rfc7162:3.1.5).
* "$" (rfc5182) in a sequence set or UID set names the messages whose UIDs
  are in the saved result; UIDs no longer in the mailbox are ignored.
* AND evaluates keys that need no message file first, and OR the cheaper
  side first, so file-reading keys run on as few messages as possible. A
  message file is read at most once per message per evaluation, its text
  decoded once, and a text key repeated in the program (``NOT BODY x``
  three hundred times) is matched once per message.
* Work is bounded by a ``Budget`` (rfc5530:3 LIMIT): each message costs the
  number of nodes of the program, each text match the characters it scans,
  each message file read its octets; ``SearchLimit`` ends the evaluation
  when the work or the running time is used up, or when the caller cancels
  it. Long texts are scanned in slices, so the thread running a search
  gives the GIL back every few milliseconds (the event loop's thread waits
  for it).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Any

from estafeta.imap.types import SearchKey, SequenceSet, date_arg
from estafeta.message import searchtext
from estafeta.message.searchtext import ADDRESS_SLOTS
from estafeta.message.searchtext import address_text as _address_text
from estafeta.message.searchtext import desurrogate as _desurrogate
from estafeta.message.searchtext import envelope_slot as _envelope_slot
from estafeta.message.searchtext import parse_fields as _parse_fields
from estafeta.message.searchtext import raw_body_text as _body_text
from estafeta.message.structure import (
    Summary,
    decode_rfc2047,
)
from estafeta.store.reader import Condition

log = logging.getLogger(__name__)

MAX_SCAN = searchtext.MAX_SCAN
"""Bytes of (still encoded) text part bodies scanned per message by BODY and
TEXT (estafeta.message.searchtext). Bounds the work one message can cause;
words past it are not found."""

# -- the work budget of one SEARCH ----------------------------------------------
# A unit is about one character scanned. Calibrated on CPython 3.11: a
# substring scan runs at 0.3 (worst case, "aaaaaaaaab" in a run of "a") to
# 2 GB/s, a node of the program costs about as much as 64 characters.
BASE_WORK = 256 * 1024 * 1024
"""Work every search may do, whatever the mailbox."""
WORK_PER_OCTET = 4
"""Further work per octet stored in the mailbox searched: a search may read
every message's text about four times over (four text keys)."""
NODE_WORK = 64
"""Work charged per message per node of the search program."""
MAX_SECONDS = 20.0
"""Running time of one search (time spent queued for a thread not counted)."""
SCAN_SLICE = 1 << 20
"""Characters matched per ``str.find`` call: a few milliseconds at worst, after
which other threads (the event loop's) can take the GIL."""


class SearchLimit(Exception):
    """The search used up its budget, or was cancelled (rfc5530:3 LIMIT)."""


class Budget:
    """The work and time one SEARCH may use; see BASE_WORK and MAX_SECONDS.

    ``cancel`` may be called from another thread (the session's, when the
    client goes away): the search stops at its next check.
    """

    def __init__(self, work: int, seconds: float = MAX_SECONDS) -> None:
        self.work = work
        self.left = work
        self.seconds = seconds
        self.deadline = float("inf")
        self.cancelled = False

    @classmethod
    def for_mailbox(cls, octets: int, seconds: float = MAX_SECONDS) -> Budget:
        """The budget of a search over messages of ``octets`` in all."""
        return cls(BASE_WORK + WORK_PER_OCTET * max(0, octets), seconds)

    def start(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def cancel(self) -> None:
        self.cancelled = True

    def used(self) -> int:
        return self.work - self.left

    def charge(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise SearchLimit("search work budget used up")

    def check(self) -> None:
        if self.cancelled:
            raise SearchLimit("search cancelled")
        if time.monotonic() > self.deadline:
            raise SearchLimit("search time limit reached")


_UNLIMITED_WORK = 2**62
_STRIDE = 256  # messages between two checks of the budget


def program_size(key: SearchKey) -> int:
    """Nodes of a search program (the work a message costs, in NODE_WORK)."""
    size = 1
    for arg in key.args:
        if isinstance(arg, SearchKey):
            size += program_size(arg)
        elif isinstance(arg, tuple):
            size += sum(program_size(k) for k in arg if isinstance(k, SearchKey))
    return size


@dataclass
class Candidate:
    """One message of the selected mailbox, as SEARCH sees it."""

    seq: int
    uid: int
    flags: frozenset[str]  # "\\Seen" etc. in canonical case, and keywords
    recent: bool
    internal_date: int  # POSIX seconds
    size: int
    modseq: int
    # The index summary, or its JSON: parsed on first use, so that searches
    # on flags, dates, sizes and UIDs never pay for it.
    summary: Summary | str
    load: Callable[[], bytes]  # the message file; called at most once per evaluation
    # (EMAILID, THREADID, save date), read only for a program that
    # ``needs_objects`` (estafeta.store.reader.ObjectRow).
    objects: tuple[str | None, str | None, int | None] = (None, None, None)

    def info(self) -> Summary:
        # Parsed on each call, not kept: 100,000 parsed summaries kept alive
        # during one SEARCH cost more in GC than the parsing (see _View.info).
        if isinstance(self.summary, str):
            return Summary.from_json(self.summary)
        return self.summary


# --------------------------------------------------------------------------
# Message content, read lazily


class _View:
    """The message being tested, with its file contents read on demand."""

    __slots__ = ("_body", "_data", "_fields", "_header_text", "_info", "budget", "c", "memo")

    def __init__(self, budget: Budget) -> None:
        self.c: Candidate | None = None
        self._data: bytes | None = None
        self._fields: list[tuple[str, str]] | None = None
        self._header_text: str | None = None
        self._body: str | None = None
        self._info: Summary | None = None
        self.budget = budget
        # Results of text keys for this message, by (op, field, needle).
        self.memo: dict[tuple[str, str, str], bool] = {}

    def reset(self, candidate: Candidate) -> None:
        self.c = candidate
        self._data = self._fields = self._header_text = self._body = None
        self._info = None
        if self.memo:
            self.memo = {}

    def find(self, needle: str, haystack: str) -> bool:
        """``needle in haystack``, charged to the budget and matched in slices
        of SCAN_SLICE characters (each one call that holds the GIL)."""
        size = len(haystack)
        budget = self.budget
        budget.charge(size)
        if size <= SCAN_SLICE:
            return needle in haystack
        overlap = max(len(needle) - 1, 0)
        for start in range(0, size, SCAN_SLICE):
            if haystack.find(needle, start, min(size, start + SCAN_SLICE + overlap)) >= 0:
                return True
            budget.check()
        return False

    def info(self) -> Summary:
        """The message's Summary, parsed once per message and evaluation."""
        if self._info is None:
            self._info = self.m.info()
        return self._info

    @property
    def m(self) -> Candidate:
        assert self.c is not None
        return self.c

    def data(self) -> bytes:
        if self._data is None:
            try:
                self._data = self.m.load()
            except OSError as exc:  # e.g. the file was expunged meanwhile
                log.warning("SEARCH cannot read message uid=%d: %s", self.m.uid, exc)
                self._data = b""
            self.budget.charge(len(self._data))
            self.budget.check()
        return self._data

    def fields(self) -> list[tuple[str, str]]:
        """All header fields: (lower-case name, unfolded decoded value)."""
        if self._fields is None:
            self._fields = _parse_fields(self.data()[: self.info().header_size])
        return self._fields

    def header_text(self) -> str:
        """The decoded header, casefolded, one "name: value" per line."""
        if self._header_text is None:
            self._header_text = "\n".join(f"{n}: {v}" for n, v in self.fields()).casefold()
        return self._header_text

    def body_text(self) -> str:
        """The decoded text of the body's text parts, casefolded."""
        if self._body is None:
            self._body = _body_text(self.data(), self.info()).casefold()
        return self._body


# Header fields whose (first) value the ENVELOPE holds verbatim:
# name -> envelope slot (rfc3501:7.4.2 order). Sender and Reply-To are not
# here: the envelope fills them from From when they are absent.
_ENVELOPE_FIELDS = {"date": 0, "subject": 1, "in-reply-to": 8, "message-id": 9}
_ENVELOPE_ADDRESSES = ADDRESS_SLOTS


def _sent_day(summary: Summary) -> datetime.date | None:
    """The calendar day written in the Date: header, or None if it has none."""
    if summary.date is None:
        return None
    raw = _envelope_slot(summary, 0)
    parsed = parsedate_tz(raw) if isinstance(raw, str) else None
    if parsed is not None:
        try:
            return datetime.date(parsed[0], parsed[1], parsed[2])
        except (ValueError, TypeError):
            pass
    try:
        return datetime.datetime.fromtimestamp(summary.date, datetime.UTC).date()
    except (ValueError, OverflowError, OSError):
        return None


# --------------------------------------------------------------------------
# Compilation

_Predicate = Callable[[_View], bool]

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}


def _leaves(key: SearchKey) -> Iterator[SearchKey]:
    """The keys of a program below its NOT, OR and AND nodes."""
    op = key.op.upper()
    if op in ("NOT", "OR", "AND"):
        for inner in key.args[0] if op == "AND" else key.args:
            yield from _leaves(inner)
    else:
        yield key


def _reads_content(key: SearchKey) -> bool:
    op = key.op.upper()
    if op in ("BODY", "TEXT"):
        return str(key.args[0]) != ""
    return op == "HEADER" and str(key.args[0]).lower() not in _ENVELOPE_FIELDS


def needs_content(key: SearchKey) -> bool:
    """Whether evaluating ``key`` may read message files (Candidate.load)."""
    return any(_reads_content(leaf) for leaf in _leaves(key))


_OBJECT_KEYS = frozenset({"EMAILID", "THREADID", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"})


def needs_objects(key: SearchKey) -> bool:
    """Whether ``key`` reads Candidate.objects (rfc8474:6, rfc8514:4.3)."""
    return any(leaf.op.upper() in _OBJECT_KEYS for leaf in _leaves(key))


@dataclass(frozen=True)
class _Env:
    largest_seq: int
    largest_uid: int
    saved: frozenset[int]
    now: float
    tz: datetime.tzinfo


def _day_start(day: datetime.date, tz: datetime.tzinfo) -> float:
    """POSIX time at which ``day`` begins in ``tz`` (fine for all of 1..9999)."""
    return datetime.datetime.combine(day, datetime.time(), tzinfo=tz).timestamp()


def _next_day_start(day: datetime.date, tz: datetime.tzinfo) -> float:
    if day == datetime.date.max:
        return float("inf")
    return _day_start(day + datetime.timedelta(days=1), tz)


def _number_matcher(sequence: SequenceSet, largest: int) -> Callable[[int], bool]:
    """Membership test for a resolved sequence set (rfc9051:9 seq-number):
    merged once, then a binary search per message."""
    merged = sequence.merged(largest)
    if not merged:
        return lambda n: False
    if len(merged) == 1:
        lo, hi = merged.starts[0], merged.ends[0]
        return lambda n: lo <= n <= hi
    return merged.contains


def _compile(key: SearchKey, env: _Env) -> _Predicate:
    op = key.op.upper()
    args = key.args

    if op == "ALL":
        return lambda v: True
    if op in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[op]
        if wanted:
            return lambda v: flag in v.m.flags
        return lambda v: flag not in v.m.flags
    if op in ("KEYWORD", "UNKEYWORD"):
        # rfc9051:2.3.2: flags are case-insensitive.
        keyword = str(args[0])
        folded = keyword.casefold()

        def has_keyword(v: _View) -> bool:
            flags = v.m.flags
            return keyword in flags or any(f.casefold() == folded for f in flags)

        if op == "KEYWORD":
            return has_keyword
        return lambda v: not has_keyword(v)
    # rfc3501:6.4.4 (dropped from rfc9051, still sent by IMAP4rev1 clients)
    if op == "RECENT":
        return lambda v: v.m.recent
    if op == "NEW":
        return lambda v: v.m.recent and "\\Seen" not in v.m.flags
    if op == "OLD":
        return lambda v: not v.m.recent
    if op == "LARGER":  # rfc9051:6.4.4: RFC822.SIZE larger / smaller than n
        larger = int(args[0])
        return lambda v: v.m.size > larger
    if op == "SMALLER":
        smaller = int(args[0])
        return lambda v: v.m.size < smaller
    if op in ("BEFORE", "ON", "SINCE"):
        # rfc9051:6.4.4: internal date, disregarding time and timezone: the
        # day is taken in env.tz, as day-boundary instants computed once.
        day = date_arg(key)
        start = _day_start(day, env.tz)
        if op == "BEFORE":
            return lambda v: v.m.internal_date < start
        if op == "SINCE":
            return lambda v: v.m.internal_date >= start
        end = _next_day_start(day, env.tz)
        return lambda v: start <= v.m.internal_date < end
    if op in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        return _compile_saved(op, date_arg(key), env)
    if op == "SAVEDATESUPPORTED":  # rfc8514:4.3: every mailbox keeps save dates
        return lambda v: True
    if op in ("EMAILID", "THREADID"):  # rfc8474:6: exactly the id
        wanted_id, slot = str(args[0]), 0 if op == "EMAILID" else 1
        return lambda v: v.m.objects[slot] == wanted_id
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        day = date_arg(key)

        def sent(v: _View) -> bool:
            d = _sent_day(v.info())
            if d is None:
                return False
            if op == "SENTBEFORE":
                return d < day
            if op == "SENTON":
                return d == day
            return d >= day

        return sent
    if op in ("OLDER", "YOUNGER"):
        # rfc5032:3: relative to the server's current time; OLDER is
        # "older than" the interval, YOUNGER "within" it.
        cutoff = env.now - int(args[0])
        if op == "OLDER":
            return lambda v: v.m.internal_date < cutoff
        return lambda v: v.m.internal_date >= cutoff
    if op == "MODSEQ":  # rfc7162:3.1.5: mod-sequence >= the given value
        modseq = int(args[-1])
        return lambda v: v.m.modseq >= modseq
    if op in ("UID", "SEQSET"):
        sequence = args[0]
        assert isinstance(sequence, SequenceSet)
        if sequence.saved:  # rfc5182:2.1: "$" is the saved result, kept as UIDs
            saved = env.saved
            return lambda v: v.m.uid in saved
        if op == "UID":
            in_uids = _number_matcher(sequence, env.largest_uid)
            return lambda v: in_uids(v.m.uid)
        in_seqs = _number_matcher(sequence, env.largest_seq)
        return lambda v: in_seqs(v.m.seq)
    if op in ("NOT", "OR", "AND"):
        return _compile_boolean(op, args, env)
    return _compile_text(op, args)


def _compile_saved(op: str, day: datetime.date, env: _Env) -> _Predicate:
    """rfc8514:4.3: the save date's day, as BEFORE / ON / SINCE take the
    internal date's; the internal date where the save date is not known."""
    start, end = _day_start(day, env.tz), _next_day_start(day, env.tz)

    def saved(v: _View) -> float:
        value = v.m.objects[2]
        return v.m.internal_date if value is None else value

    if op == "SAVEDBEFORE":
        return lambda v: saved(v) < start
    if op == "SAVEDSINCE":
        return lambda v: saved(v) >= start
    return lambda v: start <= saved(v) < end


def _compile_boolean(op: str, args: tuple[Any, ...], env: _Env) -> _Predicate:
    if op == "NOT":
        inner = _compile(args[0], env)
        return lambda v: not inner(v)
    if op == "OR":
        left, right = args
        # Cheap side first, so the file-reading side runs less often.
        if needs_content(left) and not needs_content(right):
            left, right = right, left
        first, second = _compile(left, env), _compile(right, env)
        return lambda v: first(v) or second(v)
    keys: Sequence[SearchKey] = args[0]
    ordered = sorted(keys, key=needs_content)  # stable: cheap keys first
    preds = [_compile(k, env) for k in ordered]
    if not preds:
        return lambda v: True
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda v: a(v) and b(v)
    return lambda v: all(p(v) for p in preds)


def _compile_text(op: str, args: tuple[Any, ...]) -> _Predicate:
    """rfc9051:6.4.4: case-insensitive substring matches. The result for a
    message is kept in the view's memo under (op, field, needle), so a key
    that the program repeats scans the text once."""
    predicate = _text_predicate(op, args)
    if predicate is None:
        return lambda v: True
    memo_key = (op, str(args[0]).lower() if op == "HEADER" else "", str(args[-1]).casefold())

    def memoized(v: _View) -> bool:
        found = v.memo.get(memo_key)
        if found is None:
            found = v.memo[memo_key] = predicate(v)
        return found

    return memoized


def _text_predicate(op: str, args: tuple[Any, ...]) -> _Predicate | None:
    """The match of one text key; None for a key that every message matches."""
    if op == "HEADER":
        field = str(args[0]).lower()
        needle = str(args[1]).casefold()
        if field in _ENVELOPE_FIELDS:
            slot = _ENVELOPE_FIELDS[field]

            def envelope_field(v: _View) -> bool:
                value = _envelope_slot(v.info(), slot)
                if value is None:
                    return False
                return v.find(needle, decode_rfc2047(_desurrogate(value)).casefold())

            return envelope_field

        def header_field(v: _View) -> bool:
            return any(n == field and v.find(needle, val.casefold()) for n, val in v.fields())

        return header_field
    needle = str(args[0]).casefold()
    if op == "SUBJECT":
        return lambda v: v.find(needle, v.info().subject.casefold())
    if op in _ENVELOPE_ADDRESSES:
        slot = _ENVELOPE_ADDRESSES[op]
        if not needle:
            return None
        return lambda v: v.find(needle, _address_text(_envelope_slot(v.info(), slot)).casefold())
    if op in ("BODY", "TEXT"):
        if not needle:
            return None
        if op == "BODY":
            return lambda v: v.find(needle, v.body_text())
        return lambda v: v.find(needle, v.header_text()) or v.find(needle, v.body_text())
    raise ValueError(f"unknown SEARCH key {op!r}")


# --------------------------------------------------------------------------
# What the index can narrow down


_TEXT_COLUMNS = {
    "SUBJECT": "s_subject",
    "FROM": "s_from",
    "TO": "s_to",
    "CC": "s_cc",
    "BCC": "s_bcc",
}


def fulltext_keys(key: SearchKey) -> list[tuple[str, str]]:
    """The BODY and TEXT keys (op, needle) the program ANDs at its top:
    every match contains each needle, so the full-text index can narrow the
    messages down to those that may (estafeta.store.reader.fulltext)."""
    op = key.op.upper()
    if op == "AND":
        return [pair for k in key.args[0] for pair in fulltext_keys(k)]
    if op in ("BODY", "TEXT") and str(key.args[0]):
        return [(op, str(key.args[0]))]
    return []


def conditions(key: SearchKey, largest_uid: int) -> list[Condition]:
    """Tests on indexed columns that every message matching ``key`` passes
    (estafeta.store.reader.Condition), from the keys the program ANDs at
    its top: the index hands back only the messages that pass them, and
    ``evaluate`` still checks each one against the whole program, so a
    condition may let through more than the key matches, never less.

    The text columns hold exactly what the keys compare against (folded by
    estafeta.message.searchtext at delivery), so a substring test there is
    the key's own test. Keys under OR or NOT, and keys with no column, give
    no condition: every message stays a candidate for them.
    """
    op = key.op.upper()
    if op == "AND":
        return [c for k in key.args[0] for c in conditions(k, largest_uid)]
    if op in _FLAG_KEYS:
        flag, wanted = _FLAG_KEYS[op]
        return [Condition("flag", value=flag, negate=not wanted)]
    if op in _TEXT_COLUMNS:
        needle = str(key.args[0]).casefold()
        return [Condition("text", column=_TEXT_COLUMNS[op], value=needle)] if needle else []
    if op == "HEADER" and str(key.args[0]).lower() == "subject":
        needle = str(key.args[1]).casefold()
        # An empty needle matches the messages that have the field: any row.
        return [Condition("text", column="s_hsubject", value=needle)] if needle else []
    if op == "LARGER":
        return [Condition("larger", number=int(key.args[0]))]
    if op == "SMALLER":
        return [Condition("smaller", number=int(key.args[0]))]
    if op == "MODSEQ":
        return [Condition("modseq", number=int(key.args[-1]))]
    if op in ("EMAILID", "THREADID"):
        return [Condition(f"{op[:-2].lower()}_oid", value=str(key.args[0]))]
    if op in ("SAVEDBEFORE", "SAVEDSINCE"):
        # A day's start in UTC give or take 14 hours: the zone evaluate uses
        # is not known here, so the condition lets a day more through.
        moment = _day_start(date_arg(key), datetime.UTC)
        if op == "SAVEDSINCE":
            return [Condition("saved_since", number=int(moment) - 86_400)]
        return [Condition("saved_before", number=int(moment) + 86_400)]
    if op == "UID":
        sequence = key.args[0]
        if isinstance(sequence, SequenceSet) and not sequence.saved and largest_uid:
            ranges = list(sequence.merged(largest_uid))
            if ranges:
                return [Condition("uids", number=ranges[0][0], high=ranges[-1][1])]
    return []


# --------------------------------------------------------------------------
# Evaluation


def evaluate(
    key: SearchKey,
    messages: Sequence[Candidate],
    *,
    largest_seq: int,
    largest_uid: int,
    saved: Sequence[int] = (),
    now: float | None = None,
    tz: datetime.tzinfo = datetime.UTC,
    budget: Budget | None = None,
) -> list[Candidate]:
    """The messages that match ``key``, in mailbox (sequence number) order.

    ``largest_seq`` / ``largest_uid`` are what "*" stands for in sequence and
    UID sets; ``saved`` holds the UIDs of the last SAVE result (rfc5182), the
    meaning of "$"; ``now`` is the time OLDER/YOUNGER count from (default:
    the current time); ``tz`` is the zone of BEFORE/ON/SINCE days. Raises
    ValueError for an op that is not a SEARCH key, and SearchLimit when
    ``budget`` (default: none) is used up, runs out of time or is cancelled.
    """
    env = _Env(
        largest_seq=largest_seq,
        largest_uid=largest_uid,
        saved=frozenset(saved),
        now=time.time() if now is None else now,
        tz=tz,
    )
    if budget is None:
        budget = Budget(_UNLIMITED_WORK, float("inf"))
    budget.start()
    predicate = _compile(key, env)
    per_message = program_size(key) * NODE_WORK
    view = _View(budget)
    matched: list[Candidate] = []
    append = matched.append
    reset = view.reset
    for start in range(0, len(messages), _STRIDE):
        batch = messages[start : start + _STRIDE]
        budget.check()
        budget.charge(per_message * len(batch))  # the nodes of the program, per message
        for message in batch:
            reset(message)
            if predicate(view):
                append(message)
    matched.sort(key=lambda m: m.seq)  # linear when already in order
    return matched


# --------------------------------------------------------------------------
# Responses


def compress(numbers: Sequence[int]) -> str:
    """A sequence-set for ``numbers``: runs of consecutive ascending numbers
    become "a:b" ("2,5:9,47"). The order is kept (COPYUID pairs two sets by
    position, rfc4315:3) and repeats of the previous number are dropped; ""
    for no numbers."""
    out: list[str] = []
    it = iter(numbers)
    first = next(it, None)
    if first is None:
        return ""
    start = end = first
    for n in it:
        if n == end:
            continue
        if n == end + 1:
            end = n
            continue
        out.append(str(start) if start == end else f"{start}:{end}")
        start = end = n
    out.append(str(start) if start == end else f"{start}:{end}")
    return ",".join(out)


def render_search(results: list[int], *, modseq: int | None) -> bytes:
    """rfc9051:7.3.4 / rfc3501:7.2.5 SEARCH response, without the "* ".

    ``modseq`` is appended as "(MODSEQ n)" (rfc7162:3.1.5), but only after at
    least one number, as the rfc7162:7 grammar requires.
    """
    out = b"SEARCH" + b"".join(b" %d" % n for n in results)
    if modseq is not None and results:
        out += b" (MODSEQ %d)" % modseq
    return out


def _quoted(text: str) -> bytes:
    return b'"' + text.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render_esearch(
    tag: str,
    results: list[int],
    options: Sequence[str],
    *,
    uid: bool,
    modseq: int | None,
    partial_range: tuple[int, int] | None = None,
) -> bytes:
    """rfc4731:3.1 / rfc9051:7.3.4 ESEARCH response, without the "* ".

    ``options`` are the RETURN options (case-insensitive); none means ALL.
    Data come in the order MIN MAX COUNT ALL; MIN, MAX and ALL are left out
    when nothing matched, COUNT is always there when asked for. SAVE and
    unknown options add nothing. ``modseq`` is appended as "MODSEQ n"
    (rfc4731:3.2) when something matched; see ``response_modseq``.
    ``partial_range`` (rfc5267:4.4) adds PARTIAL (low:high set) with the
    results at those 1-based positions in mailbox order, NIL for none.
    UPDATE and CONTEXT (rfc5267:4.2-4.3) ask for no data of their own.
    """
    wanted = {o.upper() for o in options}
    if not wanted and partial_range is None:
        wanted = {"ALL"}  # rfc4731:3.1, rfc9051:6.4.4: "RETURN ()" is "RETURN (ALL)"
    out = [b"ESEARCH (TAG " + _quoted(tag) + b")"]
    if uid:
        out.append(b"UID")
    if results:
        if "MIN" in wanted:
            out.append(b"MIN %d" % min(results))
        if "MAX" in wanted:
            out.append(b"MAX %d" % max(results))
    if "COUNT" in wanted:
        out.append(b"COUNT %d" % len(results))
    if results and "ALL" in wanted:
        out.append(b"ALL " + compress(sorted(results)).encode("ascii"))
    if partial_range is not None:
        low, high = partial_range
        part = sorted(results)[low - 1 : high]
        shown = compress(part).encode("ascii") if part else b"NIL"
        out.append(b"PARTIAL (%d:%d %s)" % (low, high, shown))
    if modseq is not None and results:
        out.append(b"MODSEQ %d" % modseq)
    return b" ".join(out)


def response_modseq(matched: Sequence[Candidate], options: Sequence[str] | None) -> int | None:
    """The mod-sequence to report for a search that used the MODSEQ key.

    rfc7162:3.1.5 / rfc4731:3.2: the highest mod-sequence of the messages
    returned; with RETURN options naming only MIN and/or MAX, of just those
    messages. ``options`` None means a plain SEARCH response. None when
    nothing matched.
    """
    if not matched:
        return None
    wanted = {o.upper() for o in options or ()}
    if options is not None and wanted & {"MIN", "MAX"} and not wanted & {"ALL", "COUNT"}:
        reported = []
        if "MIN" in wanted:
            reported.append(min(matched, key=lambda m: m.seq))
        if "MAX" in wanted:
            reported.append(max(matched, key=lambda m: m.seq))
        return max(m.modseq for m in reported)
    return max(m.modseq for m in matched)
