"""What the fuzz tests (test_fuzz_*.py) and the long run (bench/fuzz.py) share.

* Hypothesis profiles: ``ci`` (the default: few examples, derandomized, so
  ``make test`` stays short and reproducible) and ``long`` (many examples,
  random), chosen with the environment variable ``ESTAFETA_FUZZ``.
* Drivers: feed bytes to one sans-IO parser in given pieces and return what
  came out, raising ``Crash`` (or letting the unexpected exception through)
  when the parser does something it never should. The same drivers run
  under pytest and in ``bench/fuzz.py``.
* Corpora and mutation: valid inputs per target and the tokens that break
  them, as Hypothesis strategies (which shrink) and as a fast
  ``random.Random`` mutator (for the long run).
* A reader of IMAP response values (NIL, numbers, quoted strings, literals,
  parenthesised lists), to check what the server serialises.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from estafeta.address import (
    MAX_ADDRESS_OCTETS,
    AddressError,
    normalize_address,
    normalize_domain,
    split_address,
)
from estafeta.imap import parser as imap
from estafeta.imap.commands import Authenticate, Enable, Fetch
from estafeta.imap.fetch import FetchError, MessageData, render_items
from estafeta.imap.types import FetchAtt
from estafeta.message import Summary, structure
from estafeta.pop3 import parser as pop3
from estafeta.queue.client import ProtocolError, Reply, ReplyParser

# -- profiles ---------------------------------------------------------------------

_COMMON: dict[str, Any] = {
    "database": None,  # no .hypothesis/ directory in the tree
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile(
    "ci", max_examples=200, derandomize=True, deadline=timedelta(seconds=5), **_COMMON
)
settings.register_profile(
    "long", max_examples=20_000, derandomize=False, deadline=timedelta(seconds=20), **_COMMON
)
PROFILE = os.environ.get("ESTAFETA_FUZZ", "ci")
settings.load_profile(PROFILE)


def examples(ci: int) -> int:
    """``ci`` examples in the default profile, 100 times more in the long one."""
    return ci * 100 if PROFILE == "long" else ci


class Crash(AssertionError):
    """A parser produced something it must never produce."""


# -- chunking ---------------------------------------------------------------------


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` in pieces, cut at the given offsets (any order, clamped)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def random_cuts(rng: random.Random, size: int) -> list[int]:
    style = rng.random()
    if size == 0 or style < 0.25:
        return []
    if style < 0.35 and size <= 512:
        return list(range(size))  # one byte at a time
    return [rng.randrange(size + 1) for _ in range(rng.randint(1, 8))]


cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=12)

# -- mutation ---------------------------------------------------------------------


def mutate(rng: random.Random, base: bytes, tokens: Sequence[bytes], rounds: int = 0) -> bytes:
    """A few random edits of ``base``: insert, delete, replace, repeat, splice."""
    data = bytearray(base)
    for _ in range(rounds or rng.randint(1, 4)):
        pos = rng.randint(0, len(data))
        op = rng.random()
        if op < 0.35:
            data[pos:pos] = rng.choice(tokens)
        elif op < 0.5 and data:
            del data[pos : pos + rng.randint(1, 8)]
        elif op < 0.65 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op < 0.75:
            # Mostly short runs; a few long ones (up to ~100 kB) for the limits.
            token = rng.choice(tokens)
            most = 200 if rng.random() < 0.02 else 20
            data[pos:pos] = token * rng.randint(2, min(most, 2 + 100_000 // len(token)))
        elif op < 0.85 and data:
            end = min(len(data), pos + rng.randint(1, 40))
            data[pos:pos] = data[pos:end] * rng.randint(1, 20)
        elif op < 0.92:
            data = data[:pos]
        else:
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def fuzz_input(
    rng: random.Random, corpus: Sequence[bytes], tokens: Sequence[bytes], lines: int = 3
) -> bytes:
    """A random input: random bytes, or corpus entries joined and mutated."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(0, 200))
    chosen = b"".join(rng.choice(corpus) for _ in range(rng.choice((1, 1, 2, lines))))
    return mutate(rng, chosen, tokens) if rng.random() < 0.9 else chosen


@st.composite
def mutated(draw: st.DrawFn, corpus: Sequence[bytes], tokens: Sequence[bytes]) -> bytes:
    """The Hypothesis counterpart of ``fuzz_input`` (it shrinks)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    parts = draw(st.lists(st.sampled_from(corpus), min_size=1, max_size=3))
    data = bytearray(b"".join(parts))
    for op, pos, token, count in draw(
        st.lists(
            st.tuples(
                st.integers(0, 4),
                st.integers(0, 10_000),
                st.one_of(st.sampled_from(tokens), st.binary(min_size=1, max_size=8)),
                st.integers(1, 64),
            ),
            max_size=5,
        )
    ):
        pos = pos % (len(data) + 1)
        if op == 0:
            data[pos:pos] = token
        elif op == 1:
            del data[pos : pos + count]
        elif op == 2:
            data[pos:pos] = token * min(count, 1 + 100_000 // len(token))
        elif op == 3:
            data[pos:pos] = data[pos : pos + 16] * count
        else:
            data[pos : pos + len(token)] = token
    return bytes(data)


# -- IMAP command parser ------------------------------------------------------------

IMAP_CORPUS: list[bytes] = [
    b"a1 CAPABILITY\r\n",
    b"a2 NOOP\r\n",
    b"a3 LOGOUT\r\n",
    b"a4 STARTTLS\r\n",
    b"a5 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"a5 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
    b"a5 AUTHENTICATE PLAIN =\r\n",
    b'a6 LOGIN alice "pass \\"word\\""\r\n',
    b"a6 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
    b"a7 ENABLE CONDSTORE QRESYNC UTF8=ACCEPT\r\n",
    b'a8 ID ("name" "test" "version" NIL)\r\n',
    b"a8 ID NIL\r\n",
    b"a9 SELECT INBOX (CONDSTORE)\r\n",
    b"a9 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1:3 4:6)))\r\n",
    b'b1 EXAMINE "Sent &AOk-l&AOk-ments"\r\n',
    b"b2 CREATE Projects/2026 (USE (\\Flagged \\Archive))\r\n",
    b"b3 DELETE Projects/Done\r\n",
    b"b4 RENAME Projects/2026 Projects/Done\r\n",
    b"b5 SUBSCRIBE Projects/Done\r\n",
    b"b6 UNSUBSCRIBE Projects/Done\r\n",
    b'b7 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("*" %) RETURN (CHILDREN STATUS (MESSAGES))\r\n',
    b'b8 LSUB "" "Projects/%"\r\n',
    b"b9 NAMESPACE\r\n",
    # rfc4314:3 ACL commands and rfc8440 LIST RETURN (MYRIGHTS)
    b"e1 SETACL Shared/info bob@example.test +lrswida\r\n",
    b'e2 SETACL "Shared/info" {6+}\r\nanyone ""\r\n',
    b"e3 DELETEACL Shared/info anyone\r\n",
    b"e4 GETACL Shared/info\r\ne5 MYRIGHTS INBOX\r\n",
    b"e6 LISTRIGHTS Shared/info anyone\r\n",
    b'e7 LIST "" "*" RETURN (MYRIGHTS CHILDREN)\r\n',
    b"c1 STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE HIGHESTMODSEQ APPENDLIMIT)\r\n",
    b"c2 APPEND Drafts (\\Draft $Junk) {11}\r\nhello world\r\n",
    b'c2 APPEND Drafts "17-Jul-1996 02:44:25 -0700" {5+}\r\nhello\r\n',
    b"c2 APPEND Drafts UTF8 (~{5+}\r\nhe\x00lo)\r\n",
    b"c2 APPEND Drafts ~{3}\r\na\x00b\r\n",
    b"c3 IDLE\r\nDONE\r\n",
    b'c4 GETQUOTA ""\r\n',
    b"c5 GETQUOTAROOT INBOX\r\n",
    b'c6 SETQUOTA "" (STORAGE 512 MESSAGE 1000)\r\n',
    b"c7 CHECK\r\nc8 CLOSE\r\nc9 UNSELECT\r\nd1 EXPUNGE\r\n",
    b"d2 UID EXPUNGE 3:5,7\r\n",
    b"d3 SEARCH RETURN (MIN MAX COUNT SAVE) CHARSET UTF-8 (OR FLAGGED NOT SEEN) 1:*\r\n",
    b'd3 UID SEARCH HEADER "X-Spam" "yes" SINCE 1-Feb-1994 LARGER 100 MODSEQ "/flags/\\\\draft" '
    b"all 620162338 $\r\n",
    b"d3 SEARCH OR (SUBJECT {3}\r\nfoo BODY bar) (NOT (UID 1:* KEYWORD x)) YOUNGER 60\r\n",
    b"d4 FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE UID MODSEQ)\r\n",
    b'd4 FETCH 2 (BODY.PEEK[1.2.HEADER.FIELDS (SUBJECT "X-A")]<0.100> BINARY[1]'
    b" BINARY.SIZE[2] BODY[TEXT] BODY[1.MIME] RFC822.HEADER) (CHANGEDSINCE 5 VANISHED)\r\n",
    b"d4 UID FETCH 1,3:* ALL\r\n",
    b"d4 FETCH $ BODY[HEADER.FIELDS.NOT ({4}\r\nDATE)]\r\n",
    b"d5 STORE 1:3 (UNCHANGEDSINCE 12) +FLAGS.SILENT (\\Deleted \\Seen kw)\r\n",
    b"d5 UID STORE 1 -FLAGS \\Seen\r\n",
    b"d6 COPY 1:2 Archive\r\nd7 UID MOVE 2 Trash\r\n",
    b"d8 SELECT &ZeVnLIqe-\r\n",
]
IMAP_TOKENS: list[bytes] = [
    b" ", b"(", b")", b"((((((((", b")))))", b'"', b'\\"', b"\\", b"[", b"]", b"<", b">",
    b"{", b"}", b"{0}\r\n", b"{5}\r\n", b"{3+}\r\n", b"~{4}\r\n", b"{4294967296}\r\n",
    b"{99999999999999999999999}\r\n", b"{70000+}\r\n", b"{5000+}\r\n", b"\r\n", b"\r", b"\n",
    b"\x00", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"*", b"%", b"$", b":", b",", b".", b"&",
    b"&-", b"&AOk-", b"&AOk", b"&,,,-", b"NIL", b"UID ", b"OR ", b"NOT ", b"0", b"4294967296",
    b"99999999999999999999", b"-0700", b"BODY[", b"HEADER.FIELDS (", b"INBOX", b"+", b"~",
    b"DONE\r\n", b"x" * 1000,
]  # fmt: skip


_PRINTABLE = re.compile(r"[ -~]+")


def _imap_event_ok(event: imap.Event) -> None:
    if isinstance(event, imap.ParseError):
        if event.text.startswith("Internal error"):
            raise Crash(f"parser bug reported as {event!r}")
        if not _PRINTABLE.fullmatch(event.text):
            raise Crash(f"BAD text is not one line of printable ASCII: {event!r}")
        if event.tag is not None and not imap._TAG_RE.fullmatch(event.tag.encode()):
            raise Crash(f"invalid tag in {event!r}")
    elif isinstance(event, imap.Command):
        if not imap._TAG_RE.fullmatch(event.tag.encode("ascii")):
            raise Crash(f"invalid tag in {event!r}")
    elif isinstance(event, imap.RawLine):
        if b"\r\n" in event.line:
            raise Crash(f"CRLF inside {event!r}")
    elif not isinstance(event, imap.Continue):
        raise Crash(f"unexpected event {event!r}")


def imap_events(
    pieces: Iterable[bytes],
    *,
    authenticated: bool = False,
    utf8: bool = False,
    **options: Any,
) -> list[imap.Event]:
    """Every event the IMAP parser gives for ``pieces`` then EOF, driven as the
    session drives it: a raw line after IDLE and after AUTHENTICATE without
    an initial response; authenticated after LOGIN or AUTHENTICATE (as if it
    succeeded), UTF-8 names after ENABLE UTF8=ACCEPT."""
    parser = imap.Parser(**options)
    parser.set_authenticated(authenticated)
    parser.set_utf8(utf8)
    out: list[imap.Event] = []

    def drain() -> bool:
        for _ in range(1_000_000):
            event = parser.next_event()
            if isinstance(event, imap.NeedData):
                return False
            if isinstance(event, imap.Eof):
                return True
            _imap_event_ok(event)
            out.append(event)
            if not isinstance(event, imap.Command):
                continue
            args = event.args
            if event.name == "IDLE" or (
                isinstance(args, Authenticate) and args.initial_response is None
            ):
                parser.expect_line()
            if event.name in ("LOGIN", "AUTHENTICATE"):
                parser.set_authenticated(True)
            elif isinstance(args, Enable) and "UTF8=ACCEPT" in (
                c.upper() for c in args.capabilities
            ):
                parser.set_utf8(True)
        raise Crash("the IMAP parser does not settle")

    for piece in pieces:
        if piece:
            parser.receive_data(piece)
            if drain():
                raise Crash("Eof before the client closed")
    parser.receive_data(b"")
    if not drain():
        raise Crash("NeedData after EOF")
    return out


# -- POP3 command parser -------------------------------------------------------------

POP3_CORPUS: list[bytes] = [
    b"CAPA\r\n",
    b"USER alice@example.test\r\n",
    b"PASS secret with spaces \r\n",
    b"STAT\r\n",
    b"LIST\r\nLIST 2\r\n",
    b"UIDL\r\nuidl 1\r\n",
    b"RETR 1\r\n",
    b"TOP 1 10\r\n",
    b"DELE 1\r\n",
    b"NOOP\r\nRSET\r\nQUIT\r\n",
    b"STLS\r\nUTF8\r\n",
    b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
    b"AUTH\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
]
POP3_TOKENS: list[bytes] = [
    b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b"\x00", b"\x7f", b"\xff", b"\xc3\xa9",
    b"\xe2\x80\xa8", b"\xed\xa0\x80", b"*", b"x" * 300, b"1" * 30, b"-1", b"USER ", b"AUTH ",
]  # fmt: skip


def _pop3_event_ok(event: pop3.Event) -> None:
    if isinstance(event, pop3.Error):
        if not event.text or any(ch in event.text for ch in "\r\n\x00"):
            raise Crash(f"-ERR text is not one line: {event!r}")
    elif isinstance(event, pop3.Command):
        if event.name not in pop3.COMMANDS:
            raise Crash(f"unknown command accepted: {event!r}")
        for arg in event.args:
            if any(ord(ch) < 0x20 for ch in arg):
                raise Crash(f"control character in {event!r}")
        if event.name != "PASS" and any(not a or " " in a for a in event.args):
            raise Crash(f"empty or spaced argument in {event!r}")
    elif isinstance(event, pop3.RawLine):
        if b"\r\n" in event.line:
            raise Crash(f"CRLF inside {event!r}")
    else:
        raise Crash(f"unexpected event {event!r}")


def pop3_events(pieces: Iterable[bytes]) -> list[pop3.Event]:
    """Every event the POP3 parser gives for ``pieces`` then EOF, with a raw
    line after ``AUTH mechanism`` (no initial response), as the session does."""
    parser = pop3.Parser()
    out: list[pop3.Event] = []

    def drain() -> bool:
        for _ in range(1_000_000):
            event = parser.next_event()
            if isinstance(event, pop3.NeedData):
                return False
            if isinstance(event, pop3.Eof):
                return True
            _pop3_event_ok(event)
            out.append(event)
            if isinstance(event, pop3.Command) and event.name == "AUTH" and len(event.args) == 1:
                parser.expect_line()
        raise Crash("the POP3 parser does not settle")

    for piece in pieces:
        if piece:
            parser.receive_data(piece)
            if drain():
                raise Crash("Eof before the client closed")
    parser.receive_data(b"")
    if not drain():
        raise Crash("NeedData after EOF")
    return out


# -- SMTP reply parser (queue client) ---------------------------------------------------

SMTP_REPLY_CORPUS: list[bytes] = [
    b"220 mx.example.net ESMTP ready\r\n",
    b"250-mx.example.net greets you\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n",
    b"250 2.1.0 Ok\r\n",
    b"550 5.1.1 <nobody@example.net>: no such user\r\n",
    b"451-4.3.0 first line\n451 4.3.0 second line\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"221\r\n",
    b"250-\r\n250 \r\n",
    b"421 4.7.0 Try again later\r\n",
]
SMTP_REPLY_TOKENS: list[bytes] = [
    b" ", b"-", b"\r\n", b"\r", b"\n", b"\x00", b"\xff", b"\xc3\xa9", b"250", b"250-", b"600 ",
    b"199 ", b"2.0.0 ", b"5.\xd9\xa3.1 ", b"\xef\xbc\x95.1.1 ", b"x" * 5000, b"\r" * 5000,
    b"250-x\r\n" * 120,
]  # fmt: skip

_ENHANCED_OK = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_STATUS_OK = re.compile(r"[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\Z")  # 3.x.x for a 3yz reply


def _reply_ok(reply: Reply) -> None:
    if not 200 <= reply.code <= 599 or not reply.lines:
        raise Crash(f"impossible reply {reply!r}")
    if any("\n" in line for line in reply.lines):
        raise Crash(f"line break inside {reply!r}")
    enhanced = reply.enhanced
    if enhanced is not None and not _ENHANCED_OK.match(enhanced):
        raise Crash(f"malformed enhanced status {enhanced!r} of {reply!r}")
    status = reply.status()
    if not _STATUS_OK.match(status) or status[0] != str(reply.code)[0]:
        raise Crash(f"malformed status {status!r} of {reply!r}")
    str(reply)
    _ = (reply.text, reply.positive, reply.temporary)


def smtp_replies(pieces: Iterable[bytes]) -> tuple[list[Reply], str | None]:
    """The replies parsed from ``pieces`` and the ProtocolError that stopped
    parsing, if any (the client drops the connection then)."""
    parser = ReplyParser()
    out: list[Reply] = []
    error = None
    try:
        for piece in pieces:
            parser.feed(piece)
            out += parser.replies()
    except ProtocolError as exc:
        error = str(exc)
    out += parser.replies()
    for reply in out:
        _reply_ok(reply)
    return out, error


# -- reading IMAP response values -------------------------------------------------------


class Atom(str):
    """An atom in an IMAP response (not a string: it was not quoted)."""


class SyntaxErr(AssertionError):
    """A server response that does not follow the IMAP grammar."""


_NUMBER_RE = re.compile(rb"[0-9]+")
_RESP_ATOM_RE = re.compile(rb"\\?[^(){ %*\"\\\]\x00-\x1f\x7f-\xff]+")  # "\\" for flags
_LITERAL_RE = re.compile(rb"(~?)\{([0-9]+)\}\r\n")
_ASTRING_ATOM_RE = re.compile(rb"[^(){ %*\"\\\x00-\x1f\x7f-\xff]+")


_QUOTED_RE = re.compile(rb'"((?:[^"\\\r\n\x00\x80-\xff]|\\["\\])*)"')
_UNESCAPE_RE = re.compile(rb'\\(["\\])')


def _quoted(data: bytes, pos: int) -> tuple[bytes, int]:
    """rfc3501:9 quoted: 7-bit, no CR, LF or NUL, only \\" and \\\\ escaped."""
    m = _QUOTED_RE.match(data, pos)
    if m is None:
        raise SyntaxErr(f"bad quoted string at {pos}: {data[pos : pos + 40]!r}")
    return _UNESCAPE_RE.sub(rb"\1", m.group(1)), m.end()


def _scalar(data: bytes, pos: int) -> tuple[Any, int]:
    char = data[pos : pos + 1]
    if char == b'"':
        return _quoted(data, pos)
    if char in (b"{", b"~"):
        m = _LITERAL_RE.match(data, pos)
        if m is None:
            raise SyntaxErr(f"bad literal at {pos}: {data[pos : pos + 20]!r}")
        size = int(m.group(2))
        start = m.end()
        if start + size > len(data):
            raise SyntaxErr("literal runs past the end")
        value = data[start : start + size]
        if not m.group(1) and b"\x00" in value:
            raise SyntaxErr("NUL in a literal (not literal8)")
        return value, start + size
    m = _NUMBER_RE.match(data, pos)
    if m is not None and data[m.end() : m.end() + 1] in (b"", b" ", b")"):
        return int(m.group()), m.end()
    m = _RESP_ATOM_RE.match(data, pos)
    if m is None:
        raise SyntaxErr(f"no value at {pos}: {data[pos : pos + 20]!r}")
    word = m.group().decode("ascii")
    return (None if word.upper() == "NIL" else Atom(word)), m.end()


def read_value(data: bytes, pos: int = 0) -> tuple[Any, int]:
    """One response value at ``pos``: None (NIL), int, bytes (quoted or
    literal), ``Atom``, or a list of values; and the offset after it.
    Iterative, so any nesting depth can be read."""
    stack: list[list[Any]] = []
    while True:
        if pos >= len(data):
            raise SyntaxErr("value expected at end of data")
        if data[pos] == 0x28:  # "(": a list starts
            stack.append([])
            pos += 1
            if data[pos : pos + 1] != b")":
                continue
            value: Any = stack.pop()
            pos += 1
        else:
            value, pos = _scalar(data, pos)
        while True:  # a value is complete: add it to its list, close lists
            if not stack:
                return value, pos
            stack[-1].append(value)
            sep = data[pos : pos + 1]
            if sep != b")":
                break
            value = stack.pop()
            pos += 1
        if sep == b" ":
            pos += 1
        elif sep != b"(" or data[pos - 1 : pos] != b")":
            # rfc3501:9 "(" 1*address ")" and 1*body have no SP between items.
            raise SyntaxErr(f"expected SP or ) at {pos}: {data[pos : pos + 20]!r}")


def read_one(data: bytes) -> Any:
    """``data`` must be exactly one value."""
    value, end = read_value(data)
    if end != len(data):
        raise SyntaxErr(f"trailing data after the value: {data[end : end + 40]!r}")
    return value


def _astring(data: bytes, pos: int) -> tuple[bytes, int]:
    if data[pos : pos + 1] == b'"':
        return _quoted(data, pos)
    m = _LITERAL_RE.match(data, pos)
    if m is not None:
        value, end = read_value(data, pos)
        return value, end
    m = _ASTRING_ATOM_RE.match(data, pos)
    if m is None:
        raise SyntaxErr(f"astring expected at {pos}: {data[pos : pos + 20]!r}")
    return m.group(), m.end()


_ITEM_NAME_RE = re.compile(rb"[A-Z0-9.]+")
_SECTION_SPEC_RE = re.compile(rb"[0-9A-Z.]*")


def read_fetch_items(data: bytes) -> list[tuple[str, tuple[str, tuple[bytes, ...]] | None, Any]]:
    """The inside of ``* n FETCH (...)``: (name, section or None, value) per
    item; the section is (spec before any field list, field names)."""
    items: list[tuple[str, tuple[str, tuple[bytes, ...]] | None, Any]] = []
    pos = 0
    while True:
        m = _ITEM_NAME_RE.match(data, pos)
        if m is None:
            raise SyntaxErr(f"FETCH item name expected at {pos}: {data[pos : pos + 20]!r}")
        name = m.group().decode("ascii")
        pos = m.end()
        section = None
        if data[pos : pos + 1] == b"[":
            m = _SECTION_SPEC_RE.match(data, pos + 1)
            assert m is not None
            spec = m.group().decode("ascii")
            pos = m.end()
            fields: list[bytes] = []
            if data[pos : pos + 2] == b" (":
                pos += 2
                while True:
                    field, pos = _astring(data, pos)
                    fields.append(field)
                    sep = data[pos : pos + 1]
                    pos += 1
                    if sep == b")":
                        break
                    if sep != b" ":
                        raise SyntaxErr(f"bad header field list at {pos}")
            if data[pos : pos + 1] != b"]":
                raise SyntaxErr(f"] expected at {pos}: {data[pos : pos + 20]!r}")
            pos += 1
            section = (spec, tuple(fields))
            m = re.compile(rb"<[0-9]+>").match(data, pos)
            if m is not None:
                name += m.group().decode("ascii")
                pos = m.end()
        if data[pos : pos + 1] != b" ":
            raise SyntaxErr(f"SP expected after item name at {pos}")
        value, pos = read_value(data, pos + 1)
        items.append((name, section, value))
        if pos == len(data):
            return items
        if data[pos : pos + 1] != b" ":
            raise SyntaxErr(f"SP expected between items at {pos}: {data[pos : pos + 20]!r}")
        pos += 1


def depth_of(value: Any) -> int:
    """Nesting depth of a parsed value (lists only), iteratively."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest


def wire(value: str | bytes | None) -> bytes | None:
    """What a string of the summary becomes on the wire (see ``imap_string``)."""
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return raw.replace(b"\0", b"")


def expected_envelope(envelope: Sequence[Any]) -> list[Any]:
    """The parsed form ``imap_envelope(envelope)`` must have."""

    def addresses(value: Any) -> Any:
        if not value:
            return None
        return [[wire(v) for v in address] for address in value]

    return [addresses(v) if 2 <= i <= 7 else wire(v) for i, v in enumerate(envelope)]


def expected_body(part: dict[str, Any], ext: bool, rev2: bool = False) -> list[Any]:
    """The parsed form ``imap_bodystructure(part, ext)`` must have (rfc3501:9 body)."""

    def params(value: Any) -> Any:
        return [wire(v) for pair in value for v in pair] if value else None

    def disposition(value: Any) -> Any:
        return [wire(value[0]), params(value[1])] if value else None

    def language(value: Any) -> Any:
        return [wire(v) for v in value] if value else None

    if part.get("parts") is not None:
        out = [expected_body(child, ext, rev2) for child in part["parts"]]
        out.append(wire(part["subtype"]))
        if ext:
            out += [
                params(part["params"]),
                disposition(part["disposition"]),
                language(part["language"]),
                wire(part["location"]),
            ]
        return out
    out = [wire(part["type"]), wire(part["subtype"]), params(part["params"])]
    out += [wire(part["id"]), wire(part["description"]), wire(part["encoding"]), part["size"]]
    kind, sub = str(part["type"]).lower(), str(part["subtype"]).lower()
    if "body" in part and kind == "message" and (sub == "rfc822" or (rev2 and sub == "global")):
        out += [expected_envelope(part["envelope"]), expected_body(part["body"], ext, rev2)]
        out.append(part["lines"])
    elif kind == "text":
        out.append(part["lines"])
    if ext:
        out += [
            wire(part["md5"]),
            disposition(part["disposition"]),
            language(part["language"]),
            wire(part["location"]),
        ]
    return out


# -- addresses ------------------------------------------------------------------------

ADDRESS_CORPUS: list[str] = [
    "alice@example.test",
    "Alice.Smith+tag@Example.TEST.",
    '"john doe"@example.test',
    '"a\\"b\\\\c"@example.test',
    '"@"@example.test',
    '""@example.test',
    "user@bücher.test",
    "user@xn--bcher-kva.test",
    "Ünïcødé@例え.テスト",
    "δοκιμή@παράδειγμα.δοκιμή",
    "user@EXAMPLE。TEST",
    "a.b.c@a-b.c-d.test",
    "user@[192.0.2.1]",
    "ẞ@ß.test",
    "İ@i.test",
    "x@xn--ls8h.test",
    "user@-bad-.test",
    "zwnj\u200c@x.test",
    "a@" + "b" * 63 + "." + "c" * 63 + ".test",
    "l" * 64 + "@example.test",
]
ADDRESS_TOKENS: list[str] = [
    "@", ".", "..", '"', "\\", " ", "\t", "\x00", "\x7f", "\u200b", "\u200c", "\u202e",
    "\ufeff", "\u3002", "\uff0e", "\u00df", "\u0130", "\u0345", "\u1e9e", "\u2028", "\ud800",
    "\U000e0001", "\U0010ffff", "xn--", "xn--a", "-", "[", "]", "<", ">", "ǅ", "ﬀ", "Å", "Å",
    "\u0301", "a" * 64, "é" * 40, "\u0660", "\uff21", "ℌ", "ⅷ", "\u0627\u0644",
]  # fmt: skip


def random_address(rng: random.Random) -> str:
    """A near-valid address: a corpus entry with a few str-level edits."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 40)).decode("utf-8", "replace")
    text = rng.choice(ADDRESS_CORPUS)
    for _ in range(rng.randint(0 if roll < 0.2 else 1, 4)):
        pos = rng.randint(0, len(text))
        op = rng.random()
        if op < 0.5:
            text = text[:pos] + rng.choice(ADDRESS_TOKENS) + text[pos:]
        elif op < 0.7:
            text = text[:pos] + text[pos + rng.randint(1, 4) :]
        elif op < 0.85:
            char = chr(rng.choice([rng.randrange(0x80), rng.randrange(0x110000)]))
            text = text[:pos] + char + text[pos + 1 :]
        else:
            text = text[:pos] + rng.choice(ADDRESS_TOKENS) * rng.randint(2, 40) + text[pos:]
    return text


# -- MIME messages ---------------------------------------------------------------------

_HEADER_NAMES = [
    "From", "To", "Cc", "Bcc", "Sender", "Reply-To", "Subject", "Date", "Message-ID",
    "In-Reply-To", "References", "Content-Type", "Content-Transfer-Encoding",
    "Content-Disposition", "Content-Language", "Content-ID", "Content-Description",
    "Content-MD5", "Content-Location", "MIME-Version", "X-Junk", "content-type", "FROM",
]  # fmt: skip
_HEADER_VALUES = [
    "Alice <alice@example.test>", '"Doe, John" <john@example.test>, bob@example.test',
    "Team: a@x.test, b@y.test;", "undisclosed-recipients:;", "<@route,@r2:user@host>",
    "(comment (nested) \\) ) user@host (tail", "=?utf-8?B?w6l0w6k=?= <e@x.test>", "<>",
    "user@[1.2.3.4]", "@", "<<<", ">>>", ",,,", ";:;:", '"unterminated', "a.@.b",
    "=?utf-8?q?caf=C3=A9?= =?utf-8?q?_au_lait?=", "=?iso-8859-1?Q?Andr=E9?=",
    "=?punycode?B?/w==?=", "=?idna?Q?=FF?=", "=?utf-7?B?K2Fh?=", "=?x-unknown?Q?a?=",
    "=?utf-8?B?****?=", "=?hex?Q?41?=", "=?UTF-16?B?AGE=?=", "=?utf-8*en?Q?a?=",
    "Mon, 23 Nov 2026 10:00:00 +0000", "Tue, 31 Feb 9999 25:61:61 -9999", "99 Jan 1 0:0 +99",
    "<id@host> <id2@host>", "<a@b", "text/plain; charset=utf-8", "text/plain; charset",
    'multipart/mixed; boundary="b1"', "multipart/alternative; boundary=b2",
    "multipart/digest; boundary=b3", "multipart/mixed", "multipart/mixed; boundary=\"\"",
    "multipart/mixed; boundary*0=b; boundary*1=4", "multipart/mixed; boundary*=utf-8''b%35",
    "message/rfc822", "message/global", "message/partial; id=x", "application/octet-stream",
    "text/html; name*0*=utf-8''%E2%82; name*1*=%AC; name*2=x", "text/; x=y", "/", ";;;==;",
    "image/png; (comment) name=\"a\\\"b\"", "base64", "quoted-printable", "7bit", "x-uue",
    "attachment; filename=\"a.txt\"; size=12", "inline", "en, de (German), fr-CA", "(((",
    "1.0", "", " ", "\t", "é", "\xff",
]  # fmt: skip


def _header_value(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.7:
        value = rng.choice(_HEADER_VALUES).encode("utf-8", "surrogateescape")
    elif roll < 0.85:
        value = rng.randbytes(rng.randint(0, 30))
    else:
        value = b", ".join(rng.choice(_HEADER_VALUES).encode() for _ in range(rng.randint(2, 6)))
    if rng.random() < 0.15:  # folded
        cut = rng.randint(0, len(value))
        value = value[:cut] + rng.choice([b"\r\n ", b"\n\t", b"\r\n\r\n "]) + value[cut:]
    return value


def random_message(rng: random.Random, depth: int = 0) -> bytes:
    """A generated MIME entity: header and body, nested multiparts and
    message/rfc822, bad or missing boundaries and headers, 8-bit junk,
    encoded words, mixed line ends."""
    eol = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r"])
    kind = rng.random() if depth < 6 else 1.0
    boundary = rng.choice([b"b1", b"b2", b"=_part_" + str(depth).encode(), b"-", b"a b", b""])
    lines: list[bytes] = []
    for _ in range(rng.randint(0, 6)):
        name = rng.choice(_HEADER_NAMES).encode()
        sep = rng.choice([b": ", b":", b" : ", b""])
        lines.append(name + sep + _header_value(rng))
    if kind < 0.35:
        subtype = rng.choice([b"mixed", b"alternative", b"digest", b"related"])
        quoted = b'"' + boundary + b'"' if rng.random() < 0.5 else boundary
        lines.append(b"Content-Type: multipart/" + subtype + b"; boundary=" + quoted)
    elif kind < 0.5:
        lines.append(b"Content-Type: message/" + rng.choice([b"rfc822", b"global", b"RFC822"]))
    rng.shuffle(lines)
    head = eol.join(lines)
    if rng.random() < 0.9:
        head += eol + eol
    if kind < 0.35:
        delim = b"--" + (boundary if rng.random() < 0.85 else b"other")
        body = [rng.randbytes(rng.randint(0, 10)) if rng.random() < 0.3 else b""]
        for _ in range(rng.randint(0, 4)):
            pad = rng.choice([b"", b" ", b"\t \t", b"x"])
            body.append(eol + delim + pad + eol + random_message(rng, depth + 1))
        if rng.random() < 0.7:
            body.append(eol + delim + b"--" + eol)
        if rng.random() < 0.3:
            body.append(rng.randbytes(rng.randint(0, 20)))
        data = head + b"".join(body)
    elif kind < 0.5:
        data = head + random_message(rng, depth + 1)
    else:
        words = [b"hello", b"=E9t=C3=A9", b"w6l0w6k=", b"\xff\xfe", b"\x00", b"--b1", b"."]
        body_lines = [
            rng.choice(words) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 12))
            for _ in range(rng.randint(0, 8))
        ]
        data = head + eol.join(body_lines)
    if depth == 0 and rng.random() < 0.3:
        data = mutate(rng, data, [b"\r\n", b"\n", b"--", b"--b1", b":", b"\x00", b"\xff"])
    return data


def nested_message(depth: int, *, rfc822_every: int = 0, eol: bytes = b"\r\n") -> bytes:
    """A message nested ``depth`` containers deep (multiparts, and every
    ``rfc822_every``-th level a message/rfc822), to check bounded nesting."""
    inner = b"Content-Type: text/plain" + eol + eol + b"leaf" + eol
    for level in range(depth, 0, -1):
        if rfc822_every and level % rfc822_every == 0:
            inner = b"Content-Type: message/rfc822" + eol + eol + inner
            continue
        boundary = b"b%d" % level
        inner = (
            b"Content-Type: multipart/mixed; boundary=" + boundary + eol + eol
            + b"--" + boundary + eol + inner + eol + b"--" + boundary + b"--" + eol
        )  # fmt: skip
    return b"Subject: deep" + eol + inner


def check_address(text: str) -> str | None:
    """normalize_address: AddressError or a canonical form that is a fixed
    point, splits back into itself, has a canonical domain and fits."""
    try:
        canonical = normalize_address(text)
    except AddressError:
        return None
    again = normalize_address(canonical)
    if again != canonical:
        raise Crash(f"not idempotent: {text!r} -> {canonical!r} -> {again!r}")
    local, domain = split_address(canonical)
    if f"{local}@{domain}" != canonical:
        raise Crash(f"split_address({canonical!r}) = {(local, domain)!r}")
    # normalize_address(canonical) == canonical: the domain is canonical too.
    if not domain.isascii() or domain != domain.lower():
        raise Crash(f"domain of {canonical!r} is not lower-case ASCII")
    if len(canonical.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise Crash(f"{canonical!r} is too long")
    return canonical


def check_domain(text: str) -> str | None:
    try:
        domain = normalize_domain(text)
    except AddressError:
        return None
    if normalize_domain(domain) != domain:
        raise Crash(f"normalize_domain not idempotent on {text!r} -> {domain!r}")
    return domain


# -- MIME structure ----------------------------------------------------------------------

FETCH_ITEMS: list[bytes] = [
    b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"FLAGS", b"UID", b"RFC822.SIZE", b"INTERNALDATE",
    b"MODSEQ", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT", b"BODY[]", b"BODY.PEEK[TEXT]<1.5>",
    b"BODY[HEADER]", b"BODY[1]", b"BODY[1.MIME]", b"BODY[2.1]", b"BODY[1.HEADER]",
    b"BODY[1.TEXT]<0.10>", b"BODY[3.2.1.MIME]", b"BINARY[]", b"BINARY[1]", b"BINARY.PEEK[2]<2.7>",
    b"BINARY.SIZE[1]", b"BINARY.SIZE[2.1]", b"BODY[HEADER.FIELDS (SUBJECT FROM)]",
    b'BODY.PEEK[1.HEADER.FIELDS.NOT ("To" {4}\r\nC\xc3\xa9C)]', b'BODY[HEADER.FIELDS ("A B" "]")]',
    b'BODY[HEADER.FIELDS ("" "\\"" "\\\\" "x)")]', b"BODY[HEADER.FIELDS ({2}\r\n\r\n)]",
    b"BODY[HEADER.FIELDS ({2}\r\n\xc3\xa9)]",
]  # fmt: skip


def _dict_depth(part: dict[str, Any]) -> int:
    deepest = 0
    stack = [(part, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node.get("parts") or ())
        if isinstance(node.get("body"), dict):
            stack.append((node["body"], level + 1))
    return deepest


def fetch_atts(items: bytes) -> tuple[FetchAtt, ...]:
    """The FETCH items of ``a FETCH 1 (items)``, parsed by the real parser."""
    events = imap_events([b"a FETCH 1 (" + items + b")\r\n"], authenticated=True)
    commands = [e for e in events if isinstance(e, imap.Command)]
    if len(commands) != 1:
        raise Crash(f"FETCH items {items!r} do not parse: {events!r}")
    args = commands[0].args
    assert isinstance(args, Fetch)
    return args.atts


def check_message(data: bytes, atts: Sequence[FetchAtt] = ()) -> Summary:
    """summarize (its inner function, so that bugs raise instead of giving
    the fallback summary), then the summary's invariants: bounded nesting,
    JSON round trip, ENVELOPE and BODYSTRUCTURE that read back as what they
    say; and FETCH ``atts`` rendered into well-formed items."""
    summary = structure._summarize(data)
    root = summary.bodystructure
    if _dict_depth(root) > structure.MAX_DEPTH + 2:
        raise Crash(f"nesting of {_dict_depth(root)} levels")
    if Summary.from_json(summary.to_json()) != summary:
        raise Crash("Summary JSON does not round-trip")
    envelope = structure.imap_envelope(summary.envelope)
    if read_one(envelope) != expected_envelope(summary.envelope):
        raise Crash(f"ENVELOPE reads back differently: {envelope[:200]!r}")
    for ext in (False, True):
        for rev2 in (False, True):
            body = structure.imap_bodystructure(root, ext, imap4rev2=rev2)
            parsed = read_one(body)
            if parsed != expected_body(root, ext, rev2):
                raise Crash(f"BODY(STRUCTURE) reads back differently: {body[:200]!r}")
            if depth_of(parsed) > 3 * (structure.MAX_DEPTH + 2):
                raise Crash(f"BODY(STRUCTURE) nested {depth_of(parsed)} deep")
    for key in ("header_start", "body_start", "body_end"):
        if not 0 <= root[key] <= len(data):
            raise Crash(f"{key} out of the message")
    if atts:
        message = MessageData(
            uid=1,
            flags=("\\Seen", "kw"),
            internal_date=0,
            size=len(data),
            modseq=1,
            summary=summary,
            load=lambda: data,
        )
        try:
            rendered = render_items(message, atts, imap4rev2=True)
        except FetchError as exc:
            if exc.code != "UNKNOWN-CTE":
                raise
        else:
            items = read_fetch_items(rendered)
            check_fetch_items(items, atts)
    return summary


def check_fetch_items(
    items: Sequence[tuple[str, tuple[str, tuple[bytes, ...]] | None, Any]],
    atts: Sequence[FetchAtt],
) -> None:
    """Each section in the response is the one asked for (same part, text
    and header field names)."""
    asked = {
        (att.section.part, att.section.text, att.section.fields)
        for att in atts
        if att.section is not None
    }
    for name, section, _ in items:
        if section is None:
            continue
        spec, fields = section
        pieces = spec.split(".") if spec else []
        part = tuple(int(p) for p in pieces if p.isdigit())
        text = ".".join(p for p in pieces if not p.isdigit())
        key = (part, text, tuple(f.decode("utf-8", "surrogateescape") for f in fields))
        if key not in asked:
            raise Crash(f"FETCH response item {name} {section!r} was not asked for: {asked!r}")
