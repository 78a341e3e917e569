"""Sans-IO parser of IMAP client commands (rfc9051:9, rfc3501:9 and extensions).

Bytes go in with ``Parser.receive_data``; events come out of
``Parser.next_event``: a ``Command``, a ``Continue`` to answer a synchronizing
literal, a ``ParseError`` to answer with BAD, ``NeedData`` or ``Eof``. The
parser never does IO and never raises for anything a client sends.

Framing (rfc9051:2.2, 4.3, 7.5; rfc7888):

* A command is a line ending in CRLF, unless the line ends in a literal
  announcement ``{n}`` / ``{n+}`` / ``~{n}`` (rfc3516 literal8): then n octets
  follow verbatim and the command goes on after them.
* ``{n}`` is synchronizing: a ``Continue`` is emitted and the session sends
  "+"; the client waits for it. If the literal is refused (too large, or the
  command is already known to be bad), a ``ParseError`` is emitted instead
  and the client, per rfc9051:7.5, does not send the literal: parsing goes
  on with the next line.
* ``{n+}`` (LITERAL+) is sent without waiting. Refusing one over the
  rfc7888:4 LITERAL- limit (4096 octets, when ``literal_plus`` is False)
  skips its octets and the rest of the command; one over the size limit
  cannot be skipped safely and is a fatal error.
* ``max_line`` bounds the command text outside literals; the literal limit is
  ``max_literal`` for the sum of a command's literals, and 64 KiB before
  authentication.

Chosen behaviours, each one of several a server could pick:

* A command is only parsed when ``next_event`` reaches it, so state changes
  the session makes after a command (``set_utf8``, ``set_authenticated``,
  ``expect_line``) apply to the commands pipelined after it.
* At a synchronizing literal only the tag and the command name are checked
  before answering "+" (a full check of the text so far would make a command
  with many literals quadratic).
* Mailbox names are mUTF-7 decoded (rfc3501:5.1.3) unless ``set_utf8(True)``;
  a name with 8-bit octets cannot be mUTF-7 and is taken as UTF-8 either way
  (rfc9051 allows UTF-8 in quoted strings). Only the name "INBOX" itself is
  case-folded (rfc9051:5.1), not "inbox/child".
* Strings must be valid UTF-8 (rfc9051:9 quoted; rfc6855:3); NUL is only
  accepted inside a literal8.
"""

from __future__ import annotations

import base64
import datetime
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from estafeta.imap import commands as c
from estafeta.imap import notify
from estafeta.imap.types import FetchAtt, SearchKey, Section, SequenceSet

__all__ = [
    "Command",
    "Continue",
    "Eof",
    "Event",
    "NeedData",
    "ParseError",
    "Parser",
    "RawLine",
    "UnencodedName",
    "decode_mutf7",
    "encode_mutf7",
    "parse_section",
]

log = logging.getLogger("estafeta.imap")

# -- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class NeedData:
    """Feed more bytes with ``receive_data``."""


@dataclass(frozen=True)
class Continue:
    """A synchronizing literal was announced: send ``+ text``."""

    text: str


@dataclass(frozen=True)
class Command:
    tag: str
    name: str
    args: object
    uid: bool = False


@dataclass(frozen=True)
class RawLine:
    """The line asked for by ``expect_line``, without its CRLF."""

    line: bytes


@dataclass(frozen=True)
class ParseError:
    """Answer ``tag BAD text`` (``* BAD text`` when tag is None); when
    ``fatal``, the stream cannot be resynchronised: send BYE and close."""

    tag: str | None
    text: str
    fatal: bool = False


@dataclass(frozen=True)
class Eof:
    pass


Event = NeedData | Continue | Command | RawLine | ParseError | Eof

# -- limits -------------------------------------------------------------------------

UNAUTHENTICATED_LITERAL = 64 * 1024  # largest literal before authentication
LITERAL_MINUS = 4096  # rfc7888:4 largest non-synchronizing literal with LITERAL-
_MAX32 = 2**32 - 1  # rfc9051:9 number, nz-number
_MAX63 = 2**63 - 1  # rfc9051:9 number64; rfc7162:7 mod-sequence-value
_TAIL = 64  # octets kept of a line being discarded, to see its literal marker
CONTINUE_TEXT = "Ready for literal data"

# -- character classes (rfc9051:9) -----------------------------------------------------

# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials
#                 / resp-specials
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}
_ATOM_CHARS = bytes(b for b in range(0x01, 0x80) if b not in _ATOM_SPECIALS)


def _char_class(chars: bytes) -> bytes:
    return b"[" + b"".join(re.escape(bytes([b])) for b in chars) + b"]"


_ATOM_RE = re.compile(_char_class(_ATOM_CHARS) + b"+")
_ASTRING_RE = re.compile(_char_class(_ATOM_CHARS + b"]") + b"+")  # ASTRING-CHAR
_TAG_RE = re.compile(_char_class(_ATOM_CHARS.replace(b"+", b"") + b"]") + b"+")
_LIST_RE = re.compile(_char_class(_ATOM_CHARS + b"%*]") + b"+")  # list-char
_QUOTED_RE = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNQUOTE_RE = re.compile(rb'\\(["\\])')
_DIGITS_RE = re.compile(rb"[0-9]+")
_SEQSET_RE = re.compile(rb"[0-9*:,$]+")
_FETCH_NAME_RE = re.compile(rb"[A-Za-z0-9.]+")
_OBJECTID_RE = re.compile(rb"[A-Za-z0-9_-]{1,255}(?![A-Za-z0-9_-])")  # rfc8474:7 objectid
_SECTION_TEXT_RE = re.compile(rb"[A-Za-z.]+")
_BASE64_RE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_DATE_RE = re.compile(rb'("?)([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})("?)')
_DATE_TIME_RE = re.compile(
    rb'"( ?[0-9]|[0-9]{2})-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
# A literal announcement at the end of a line: literal, literal8, LITERAL+.
_MARKER_RE = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")

_MONTHS = {
    m: i for i, m in enumerate(b"JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)
}
_SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
# rfc6154:2 (and rfc8457 \Important), spelled as registered.
_SPECIAL_USE = {
    f.upper(): f
    for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash",
              "\\Important")
}  # fmt: skip
_STATUS_ITEMS = frozenset(
    {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT",
     "HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID"}
)  # fmt: skip
_CHARSETS = ("US-ASCII", "UTF-8")
_BADCHARSET = "[BADCHARSET (US-ASCII UTF-8)]"

# -- modified UTF-7 (rfc3501:5.1.3) -------------------------------------------------


def encode_mutf7(name: str) -> str:
    """A mailbox name in modified UTF-7: printable ASCII stands for itself
    ("&" as "&-"), anything else is UTF-16 in base64 with "," for "/"."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            out.append(
                "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"
            )
            run.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


_MUTF7_B64 = re.compile(r"[A-Za-z0-9+,]+")


class UnencodedName(str):
    """A mailbox name that is a valid astring but not valid modified UTF-7.

    rfc3501:5.1.3 asks clients to encode; a name that is not is still a
    name, not a syntax error: a BAD makes clients drop the connection. It is
    kept as sent, so SELECT finds nothing (NO [NONEXISTENT]) and LIST
    matches nothing (an empty OK), and CREATE and RENAME refuse to make it
    (NO [CANNOT]): no mailbox gets a name other clients cannot decode.
    """

    __slots__ = ()


def decode_mutf7(name: str) -> str:
    """The Unicode name of a modified UTF-7 mailbox name; ValueError if it is
    not valid mUTF-7 (raw non-printable characters, unterminated or
    non-canonical base64, bad UTF-16, base64 standing for printable ASCII)."""
    out: list[str] = []
    i = 0
    while i < len(name):
        char = name[i]
        if char != "&":
            if not 0x20 <= ord(char) <= 0x7E:
                raise ValueError(f"character {char!r} must be encoded")
            out.append(char)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated &...- sequence")
        chunk = name[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if not _MUTF7_B64.fullmatch(chunk):
            raise ValueError("invalid base64 in &...- sequence")
        b64 = chunk.replace(",", "/")
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        # Non-canonical base64 (leftover bits set, impossible length) is refused.
        if base64.b64encode(raw).decode("ascii").rstrip("=") != b64 or len(raw) % 2:
            raise ValueError("invalid base64 in &...- sequence")
        text = raw.decode("utf-16-be")  # strict: lone surrogates raise
        if any(0x20 <= ord(ch) <= 0x7E for ch in text):
            raise ValueError("printable ASCII must not be base64-encoded")
        out.append(text)
    return "".join(out)


# -- the grammar -------------------------------------------------------------------------


class _Syntax(Exception):
    """The command does not match the grammar; the message says what was expected."""


class _Refused(Exception):
    """The command is well-formed but uses something we do not support, or
    is refused for a stated reason; the message is the whole BAD text."""


@dataclass(frozen=True)
class _Literal:
    data: bytes
    binary: bool  # literal8


_LITERAL = 0x00  # stands for a literal in the command text (NUL is never text)


class _Cursor:
    """A recursive-descent reader over one command's text, in which each
    literal is one NUL octet standing for the next entry of ``literals``."""

    def __init__(
        self, text: bytes, literals: Sequence[_Literal], *, utf8: bool, max_depth: int
    ) -> None:
        self.text = text
        self.pos = 0
        self.literals = literals
        self.next_literal = 0
        self.utf8 = utf8
        self.max_depth = max_depth

    # -- primitives ---------------------------------------------------------------

    def peek(self) -> int:
        return self.text[self.pos] if self.pos < len(self.text) else -1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def expect(self, char: bytes, what: str) -> None:
        if not self.text.startswith(char, self.pos):
            raise _Syntax(f"expected {what}")
        self.pos += len(char)

    def sp(self, what: str) -> None:
        """rfc9051:9 SP, exactly one space, before ``what``."""
        self.expect(b" ", what)

    def try_char(self, char: bytes) -> bool:
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise _Syntax("expected end of command")

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.text, self.pos)
        if m is None or m.end() == self.pos:
            raise _Syntax(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def try_keyword(self, word: bytes) -> bool:
        """Consume ``word`` (case-insensitive) if it is the next whole atom."""
        end = self.pos + len(word)
        if self.text[self.pos : end].upper() != word:
            return False
        if end < len(self.text) and self.text[end] not in b" )":
            return False
        self.pos = end
        return True

    def atom(self, what: str) -> str:
        return self.match(_ATOM_RE, what).decode("ascii")

    def keyword(self, what: str) -> str:
        return self.atom(what).upper()

    def number(self, what: str, *, nonzero: bool = False, largest: int = _MAX32) -> int:
        digits = self.match(_DIGITS_RE, what).lstrip(b"0") or b"0"
        if len(digits) > 19 or int(digits) > largest or (nonzero and digits == b"0"):
            raise _Syntax(f"{what} out of range")
        return int(digits)

    def peek_in(self, chars: bytes) -> bool:
        return self.pos < len(self.text) and self.text[self.pos] in chars

    # -- strings (rfc9051:4.3) -----------------------------------------------------------

    def literal(self, what: str, *, binary_ok: bool = False) -> _Literal:
        if self.peek() != _LITERAL:
            raise _Syntax(f"expected {what}")
        lit = self.literals[self.next_literal]
        self.next_literal += 1
        self.pos += 1
        if lit.binary and not binary_ok:
            raise _Syntax(f"literal8 is not allowed for {what}")
        if not lit.binary and b"\x00" in lit.data:
            raise _Syntax("NUL octet in a literal (rfc9051:4.3; use literal8)")
        return lit

    def string(self, what: str) -> bytes:
        """rfc9051:9 string = quoted / literal."""
        if self.peek() == ord('"'):
            m = _QUOTED_RE.match(self.text, self.pos)
            if m is None:
                raise _Syntax(f"unterminated or invalid quoted string for {what}")
            self.pos = m.end()
            return _UNQUOTE_RE.sub(rb"\1", m.group(1))
        return self.literal(what).data

    def astring(self, what: str) -> bytes:
        """rfc9051:9 astring = 1*ASTRING-CHAR / string."""
        char = self.peek()
        if char == ord('"') or char == _LITERAL:
            return self.string(what)
        return self.match(_ASTRING_RE, what)

    def nstring(self, what: str) -> bytes | None:
        if self.peek() not in (ord('"'), _LITERAL) and self.try_keyword(b"NIL"):
            return None
        return self.string(what)

    def text_of(self, raw: bytes, what: str) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Syntax(f"{what} is not valid UTF-8") from None

    def astring_text(self, what: str) -> str:
        return self.text_of(self.astring(what), what)

    # -- mailboxes (rfc9051:5.1) ---------------------------------------------------------

    def mailbox_name(self, raw: bytes, what: str, *, inbox: bool = True) -> str:
        if self.utf8 or not raw.isascii():
            name = self.text_of(raw, what)
        else:
            try:
                name = decode_mutf7(raw.decode("ascii"))
            except ValueError:
                return UnencodedName(raw.decode("ascii"))
        if inbox and name.upper() == "INBOX":
            return "INBOX"
        return name

    def mailbox(self, what: str = "mailbox") -> str:
        return self.mailbox_name(self.astring(what), what)

    def list_mailbox(self, what: str = "mailbox pattern") -> str:
        """rfc9051:9 list-mailbox = 1*list-char / string."""
        char = self.peek()
        raw = self.string(what) if char in (ord('"'), _LITERAL) else self.match(_LIST_RE, what)
        return self.mailbox_name(raw, what, inbox=False)

    # -- numbers and sets ------------------------------------------------------------

    def sequence_set(self, what: str = "sequence set", *, known: bool = False) -> SequenceSet:
        """rfc9051:9 sequence-set, or "$" (rfc5182:2.1). ``known``: rfc7162
        known-uids / seq-match-data, where neither "*" nor "$" may appear."""
        raw = self.match(_SEQSET_RE, what)
        if raw == b"$" and not known:
            return SequenceSet(saved=True)
        ranges: list[tuple[int | None, int | None]] = []
        for part in raw.split(b","):
            ends = part.split(b":")
            if len(ends) > 2:
                raise _Syntax(f"invalid {what}")
            numbers = [self._seq_number(e, what, known) for e in ends]
            ranges.append((numbers[0], numbers[-1]))
        return SequenceSet(tuple(ranges))

    @staticmethod
    def _seq_number(raw: bytes, what: str, known: bool) -> int | None:
        if raw == b"*" and not known:
            return None
        if not raw.isdigit() or raw.startswith(b"0") or len(raw) > 10 or int(raw) > _MAX32:
            raise _Syntax(f"invalid {what}")
        return int(raw)

    # -- flags (rfc9051:2.3.2, 9 flag) -----------------------------------------------

    def flag(self, what: str = "flag") -> str:
        if self.try_char(b"\\"):
            if self.try_char(b"*"):
                raise _Syntax("\\* is not a flag that can be set")
            name = "\\" + self.atom(what)
            return _SYSTEM_FLAGS.get(name.upper(), name)
        return self.atom(what)

    def flag_list(self) -> tuple[str, ...]:
        """rfc9051:9 flag-list = "(" [flag *(SP flag)] ")"."""
        self.expect(b"(", "flag list")
        flags: list[str] = []
        if not self.try_char(b")"):
            flags.append(self.flag())
            while not self.try_char(b")"):
                self.sp("flag or )")
                flags.append(self.flag())
        return tuple(dict.fromkeys(flags))

    # -- dates (rfc9051:9 date, date-time) ---------------------------------------

    def date(self, what: str = "date") -> datetime.date:
        m = _DATE_RE.match(self.text, self.pos)
        if m is None or m.group(1) != m.group(5):
            raise _Syntax(f"expected {what} like 1-Feb-1994")
        month = _MONTHS.get(m.group(3).upper())
        try:
            if month is None:
                raise ValueError
            day = datetime.date(int(m.group(4)), month, int(m.group(2)))
        except ValueError:
            raise _Syntax(f"invalid {what}") from None
        self.pos = m.end()
        return day

    def date_time(self) -> datetime.datetime:
        m = _DATE_TIME_RE.match(self.text, self.pos)
        if m is None:
            raise _Syntax('expected date-time like "17-Jul-1996 02:44:25 -0700"')
        day, mon, year, hour, minute, second, sign, zh, zm = m.groups()
        month = _MONTHS.get(mon.upper())
        try:
            if month is None or int(zh) > 23 or int(zm) > 59:
                raise ValueError
            offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
            zone = datetime.timezone(-offset if sign == b"-" else offset)
            when = datetime.datetime(
                int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=zone
            )
        except ValueError:
            raise _Syntax("invalid date-time") from None
        self.pos = m.end()
        return when

    def paren_list(self, item: Callable[[], str], what: str, *, empty: bool = True) -> list[str]:
        """ "(" [item *(SP item)] ")" """
        self.expect(b"(", what)
        items: list[str] = []
        if self.try_char(b")"):
            if not empty:
                raise _Syntax(f"empty {what}")
            return items
        items.append(item())
        while not self.try_char(b")"):
            self.sp(f"{what} item or )")
            items.append(item())
        return items

    def status_items(self) -> tuple[str, ...]:
        """rfc9051:9 status-att list; rfc7162 HIGHESTMODSEQ, rfc7889 APPENDLIMIT,
        rfc3501 RECENT."""

        def item() -> str:
            name = self.keyword("status item")
            if name not in _STATUS_ITEMS:
                raise _Syntax(f"unknown status item {name}")
            return name

        return tuple(dict.fromkeys(self.paren_list(item, "status items", empty=False)))


# -- commands -------------------------------------------------------------------------------

_Handler = Callable[[_Cursor], object]


def _no_args(factory: Callable[[], object]) -> _Handler:
    def handler(cur: _Cursor) -> object:
        return factory()

    return handler


def _cmd_authenticate(cur: _Cursor) -> object:
    # rfc9051:6.2.2, rfc4959 SASL-IR: initial-resp = base64 / "="
    cur.sp("mechanism")
    mechanism = cur.keyword("mechanism")
    response = None
    if not cur.at_end():
        cur.sp("initial response")
        if cur.try_char(b"="):
            response = "="
        else:
            response = cur.match(_BASE64_RE, "base64 initial response").decode("ascii")
    return c.Authenticate(mechanism, response)


def _cmd_login(cur: _Cursor) -> object:
    # rfc9051:6.2.3 login = "LOGIN" SP userid SP password
    cur.sp("user name")
    user = cur.astring_text("user name")
    cur.sp("password")
    password = cur.astring_text("password")
    return c.Login(user, password)


def _cmd_enable(cur: _Cursor) -> object:
    # rfc5161:4 enable = "ENABLE" 1*(SP capability)
    caps = []
    cur.sp("capability")
    caps.append(cur.atom("capability"))
    while not cur.at_end():
        cur.sp("capability")
        caps.append(cur.atom("capability"))
    return c.Enable(tuple(caps))


def _cmd_id(cur: _Cursor) -> object:
    # rfc2971:4 id_params_list ::= "(" #(string SPACE nstring) ")" / nil
    cur.sp("ID parameters")
    if cur.try_keyword(b"NIL"):
        return c.Id(None)
    cur.expect(b"(", "ID parameter list or NIL")
    params: dict[str, str | None] = {}
    first = True
    while not cur.try_char(b")"):
        if not first:
            cur.sp("ID field or )")
        first = False
        key = cur.text_of(cur.string("ID field name"), "ID field name")
        cur.sp("ID field value")
        value = cur.nstring("ID field value")
        # rfc2971:3.3: fields of at most 30 octets, values of 1024, 30 pairs.
        if len(key.encode()) > 30 or (value is not None and len(value) > 1024):
            raise _Syntax("ID field or value too long (rfc2971:3.3)")
        params[key] = None if value is None else cur.text_of(value, "ID field value")
        if len(params) > 30:
            raise _Syntax("more than 30 ID fields (rfc2971:3.3)")
    return c.Id(params)


def _select_like(factory: type[c.Select]) -> _Handler:
    def handler(cur: _Cursor) -> object:
        # rfc9051:6.3.2; rfc7162:3.1.8 / 3.2.5 select-param
        cur.sp("mailbox")
        mailbox = cur.mailbox()
        condstore = False
        qresync = None
        if not cur.at_end():
            cur.sp("select parameters")
            cur.expect(b"(", "select parameters")
            while True:
                name = cur.keyword("select parameter")
                if name == "CONDSTORE":
                    condstore = True
                elif name == "QRESYNC":
                    cur.sp("QRESYNC parameters")
                    qresync = _qresync(cur)
                else:
                    raise _Syntax(f"unknown select parameter {name}")
                if cur.try_char(b")"):
                    break
                cur.sp("select parameter or )")
        return factory(mailbox, condstore, qresync)

    return handler


def _qresync(cur: _Cursor) -> c.QresyncParams:
    # rfc7162:7 "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #           [SP seq-match-data] ")"
    cur.expect(b"(", "QRESYNC parameters")
    uidvalidity = cur.number("UIDVALIDITY", nonzero=True)
    cur.sp("mod-sequence")
    modseq = cur.number("mod-sequence", nonzero=True, largest=_MAX63)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if cur.try_char(b" "):
        if cur.peek() != ord("("):
            known = cur.sequence_set("known UIDs", known=True)
            if cur.try_char(b" "):
                match = _seq_match(cur)
        else:
            match = _seq_match(cur)
    cur.expect(b")", ") after QRESYNC parameters")
    return c.QresyncParams(uidvalidity, modseq, known, match)


def _seq_match(cur: _Cursor) -> tuple[SequenceSet, SequenceSet]:
    # seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    cur.expect(b"(", "sequence match data")
    seqs = cur.sequence_set("known sequence set", known=True)
    cur.sp("known UID set")
    uids = cur.sequence_set("known UID set", known=True)
    cur.expect(b")", ") after sequence match data")
    return (seqs, uids)


def _cmd_create(cur: _Cursor) -> object:
    # rfc9051:6.3.4; rfc6154:3 create-param = "USE" SP "(" [use-attr *(SP use-attr)] ")"
    cur.sp("mailbox")
    mailbox = cur.mailbox()
    use: list[str] = []
    if not cur.at_end():
        cur.sp("CREATE parameters")
        cur.expect(b"(", "CREATE parameters")
        while True:
            name = cur.keyword("CREATE parameter")
            if name != "USE":
                raise _Syntax(f"unknown CREATE parameter {name}")
            cur.sp("special-use attributes")

            def use_attr() -> str:
                cur.expect(b"\\", "special-use attribute")
                attr = "\\" + cur.atom("special-use attribute")
                return _SPECIAL_USE.get(attr.upper(), attr)

            use += cur.paren_list(use_attr, "special-use attributes")
            if cur.try_char(b")"):
                break
            cur.sp("CREATE parameter or )")
    return c.Create(mailbox, tuple(dict.fromkeys(use)))


def _one_mailbox(factory: Callable[[str], object]) -> _Handler:
    def handler(cur: _Cursor) -> object:
        cur.sp("mailbox")
        return factory(cur.mailbox())

    return handler


def _cmd_rename(cur: _Cursor) -> object:
    # rfc9051:6.3.6 rename = "RENAME" SP mailbox SP mailbox
    cur.sp("existing mailbox")
    old = cur.mailbox("existing mailbox")
    cur.sp("new mailbox")
    new = cur.mailbox("new mailbox")
    return c.Rename(old, new)


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "MYRIGHTS"})  # rfc8440:3


def _cmd_list(cur: _Cursor) -> object:
    # rfc5258:6 list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                  [SP list-return-opts]
    cur.sp("reference")
    selection: list[str] = []
    if cur.peek() == ord("("):
        selection = cur.paren_list(lambda: cur.keyword("selection option"), "selection options")
        for chosen in selection:
            if chosen not in _LIST_SELECT:
                raise _Syntax(f"unknown LIST selection option {chosen}")
        # rfc5258:3.1: RECURSIVEMATCH needs a base option to modify.
        if "RECURSIVEMATCH" in selection and not {"SUBSCRIBED", "SPECIAL-USE"} & set(selection):
            raise _Syntax("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE")
        cur.sp("reference")
    reference = cur.mailbox_name(cur.astring("reference"), "reference", inbox=False)
    cur.sp("mailbox pattern")
    if cur.peek() == ord("("):
        patterns = cur.paren_list(cur.list_mailbox, "mailbox patterns", empty=False)
    else:
        patterns = [cur.list_mailbox()]
    returns: list[str] = []
    status: tuple[str, ...] = ()
    if not cur.at_end():
        cur.sp("RETURN")
        if not cur.try_keyword(b"RETURN"):
            raise _Syntax("expected RETURN")
        cur.sp("return options")

        def option() -> str:
            nonlocal status
            name = cur.keyword("return option")
            if name == "STATUS":  # rfc5819:4
                cur.sp("status items")
                status = cur.status_items()
            elif name not in _LIST_RETURN:
                raise _Syntax(f"unknown LIST return option {name}")
            return name

        returns = [r for r in cur.paren_list(option, "return options") if r != "STATUS"]
    return c.List(
        reference,
        tuple(patterns),
        tuple(dict.fromkeys(selection)),
        tuple(dict.fromkeys(returns)),
        status,
    )


def _cmd_lsub(cur: _Cursor) -> object:
    # rfc3501:6.3.9 lsub = "LSUB" SP mailbox SP list-mailbox
    cur.sp("reference")
    reference = cur.mailbox_name(cur.astring("reference"), "reference", inbox=False)
    cur.sp("mailbox pattern")
    return c.Lsub(reference, cur.list_mailbox())


def _cmd_status(cur: _Cursor) -> object:
    # rfc9051:6.3.11 status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    cur.sp("mailbox")
    mailbox = cur.mailbox()
    cur.sp("status items")
    return c.Status(mailbox, cur.status_items())


# rfc3502 / rfc4469: at most this many messages in one APPEND, and parts in
# one CATENATE (the octets are bounded by the literal limit; these bound the
# work of parts and messages that are empty or only URLs).
MAX_APPEND_MESSAGES = 1000
MAX_CATENATE_PARTS = 256


def _cmd_append(cur: _Cursor) -> object:
    # rfc9051:6.3.12 append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
    # rfc3502:6.3.11 append = "APPEND" SP mailbox 1*append-message
    #   append-message = append-opts SP append-data
    # rfc3516:4.4 literal8; rfc6855:4 "UTF8" SP "(" literal8 ")"
    # rfc4469:5 append-data =/ "CATENATE" SP "(" cat-part *(SP cat-part) ")"
    cur.sp("mailbox")
    mailbox = cur.mailbox()
    messages: list[c.AppendMessage] = []
    while True:
        cur.sp("message literal")
        messages.append(_append_message(cur))
        if len(messages) > MAX_APPEND_MESSAGES:
            raise _Refused(f"at most {MAX_APPEND_MESSAGES} messages in one APPEND")
        if cur.at_end():
            break
    first, more = messages[0], tuple(messages[1:])
    return c.Append(
        mailbox, first.flags, first.date, first.data, utf8=first.utf8, binary=first.binary,
        catenate=first.catenate, more=more,
    )  # fmt: skip


def _append_message(cur: _Cursor) -> c.AppendMessage:
    flags: tuple[str, ...] = ()
    if cur.peek() == ord("("):
        flags = cur.flag_list()
        cur.sp("message literal")
    date = None
    if cur.peek() == ord('"'):
        date = cur.date_time()
        cur.sp("message literal")
    utf8 = False
    if cur.peek() != _LITERAL:
        if cur.try_keyword(b"CATENATE"):
            return c.AppendMessage(flags, date, b"", catenate=_catenate(cur))
        if not cur.try_keyword(b"UTF8"):
            raise _Syntax("expected message literal")
        utf8 = True
        cur.sp("(")
        cur.expect(b"(", "( before UTF8 literal")
    lit = cur.literal("message literal", binary_ok=True)
    if utf8:
        cur.expect(b")", ") after UTF8 literal")
    return c.AppendMessage(flags, date, lit.data, utf8=utf8, binary=lit.binary)


def _catenate(cur: _Cursor) -> tuple[c.CatPart, ...]:
    # rfc4469:5 cat-part = text-literal / url
    #   text-literal = "TEXT" SP literal;  url = "URL" SP astring
    cur.sp("(")
    cur.expect(b"(", "( after CATENATE")
    parts: list[c.CatPart] = []
    while True:
        if cur.try_keyword(b"TEXT"):
            cur.sp("TEXT literal")
            parts.append(c.CatPart(text=cur.literal("TEXT literal").data))
        elif cur.try_keyword(b"URL"):
            cur.sp("URL")
            parts.append(c.CatPart(url=cur.astring_text("URL")))
        else:
            raise _Syntax("expected TEXT or URL")
        if len(parts) > MAX_CATENATE_PARTS:
            raise _Refused(f"at most {MAX_CATENATE_PARTS} parts in one CATENATE")
        if cur.try_char(b")"):
            return tuple(parts)
        cur.sp("next CATENATE part")


def parse_section(text: bytes) -> Section:
    """A section-spec as an IMAP URL writes it (rfc5092:3 ``;SECTION=``),
    with the grammar of BODY[...]; ValueError if it is not one."""
    cur = _Cursor(b"[" + text + b"]", (), utf8=True, max_depth=4)
    try:
        section = _section(cur)
        cur.end()
    except (_Syntax, _Refused) as exc:
        raise ValueError(str(exc)) from None
    return section


def _cmd_getquota(cur: _Cursor) -> object:
    # rfc9208:4.2 getquota = "GETQUOTA" SP quota-root-name
    cur.sp("quota root")
    return c.GetQuota(cur.astring_text("quota root"))


def _cmd_setquota(cur: _Cursor) -> object:
    # rfc9208:4.4 setquota = "SETQUOTA" SP quota-root-name SP setquota-list
    cur.sp("quota root")
    root = cur.astring_text("quota root")
    cur.sp("resource limits")
    cur.expect(b"(", "resource limits")
    resources: dict[str, int] = {}
    while not cur.try_char(b")"):
        if resources:
            cur.sp("resource or )")
        name = cur.keyword("resource name")
        cur.sp("resource limit")
        resources[name] = cur.number("resource limit", largest=_MAX63)
    return c.SetQuota(root, resources)


# rfc4314:3 bounds of ours: an identifier is an account address or "anyone"
# (255 octets is more than any address), a rights string a sign and a few
# letters (13 rights exist).
MAX_IDENTIFIER = 255
MAX_RIGHTS = 32
_RIGHTS_RE = re.compile(rb"[+-]?[a-z0-9]*\Z")


def _identifier(cur: _Cursor) -> str:
    # rfc4314:7 identifier = astring (UTF-8 since rfc4314, appendix A.1)
    raw = cur.astring("identifier")
    if not raw or len(raw) > MAX_IDENTIFIER:
        raise _Syntax(f"an identifier is 1 to {MAX_IDENTIFIER} octets")
    text = cur.text_of(raw, "identifier")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise _Syntax("control characters in an identifier")
    return text


def _cmd_setacl(cur: _Cursor) -> object:
    # rfc4314:7 setacl = "SETACL" SP mailbox SP identifier SP mod-rights
    cur.sp("mailbox")
    mailbox = cur.mailbox()
    cur.sp("identifier")
    ident = _identifier(cur)
    cur.sp("rights")
    raw = cur.astring("rights")
    # rfc4314:7 rights: "only lowercase ASCII letters and digits" (after the sign)
    if len(raw) > MAX_RIGHTS or not _RIGHTS_RE.match(raw):
        raise _Syntax("rights are a + or - and lower-case letters (rfc4314:3.1)")
    return c.SetAcl(mailbox, ident, raw.decode("ascii"))


def _mailbox_identifier(factory: Callable[[str, str], object]) -> _Handler:
    # rfc4314:7 deleteacl / listrights = NAME SP mailbox SP identifier
    def handler(cur: _Cursor) -> object:
        cur.sp("mailbox")
        mailbox = cur.mailbox()
        cur.sp("identifier")
        return factory(mailbox, _identifier(cur))

    return handler


def _cmd_uid_expunge(cur: _Cursor) -> object:
    # rfc4315:3 uid-expunge = "EXPUNGE" SP sequence-set
    cur.sp("sequence set")
    return c.UidExpunge(cur.sequence_set())


def _copy_like(factory: type[c.Copy]) -> _Handler:
    def handler(cur: _Cursor) -> object:
        # rfc9051:6.4.7 copy = "COPY" SP sequence-set SP mailbox; rfc6851:5 move
        cur.sp("sequence set")
        sequence = cur.sequence_set()
        cur.sp("mailbox")
        return factory(sequence, cur.mailbox())

    return handler


# -- STORE (rfc9051:6.4.6, rfc7162:3.1.3) ------------------------------------------------


def _cmd_store(cur: _Cursor) -> object:
    # store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags
    cur.sp("sequence set")
    sequence = cur.sequence_set()
    cur.sp("FLAGS")
    unchangedsince = None
    if cur.try_char(b"("):
        while True:
            name = cur.keyword("STORE modifier")
            if name != "UNCHANGEDSINCE":
                raise _Syntax(f"unknown STORE modifier {name}")
            cur.sp("mod-sequence")
            unchangedsince = cur.number("mod-sequence", largest=_MAX63)
            if cur.try_char(b")"):
                break
            cur.sp("STORE modifier or )")
        cur.sp("FLAGS")
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    mode = ""
    if cur.try_char(b"+"):
        mode = "+"
    elif cur.try_char(b"-"):
        mode = "-"
    item = cur.keyword("FLAGS")
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise _Syntax("expected FLAGS, +FLAGS or -FLAGS")
    cur.sp("flags")
    if cur.peek() == ord("("):
        flags = cur.flag_list()
    else:
        found = [cur.flag()]
        while not cur.at_end():
            cur.sp("flag")
            found.append(cur.flag())
        flags = tuple(dict.fromkeys(found))
    return c.Store(sequence, mode, item == "FLAGS.SILENT", flags, unchangedsince)


# -- FETCH (rfc9051:6.4.5, rfc3516, rfc7162:3.1.4 / 3.2.6) -----------------------------

_SIMPLE_ATTS = frozenset(
    {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "RFC822", "RFC822.HEADER",
     "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ",
     "EMAILID", "THREADID",  # rfc8474:5.3
     "SAVEDATE"}  # rfc8514:4.2
)  # fmt: skip
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _section_part(cur: _Cursor) -> list[int]:
    # section-part = nz-number *("." nz-number)
    parts = [cur.number("section part", nonzero=True)]
    while cur.text[cur.pos : cur.pos + 1] == b"." and cur.text[cur.pos + 1 : cur.pos + 2].isdigit():
        cur.pos += 1
        parts.append(cur.number("section part", nonzero=True))
    return parts


def _section(cur: _Cursor) -> Section:
    # section = "[" [section-spec] "]"
    # section-spec = section-msgtext / (section-part ["." section-text])
    cur.expect(b"[", "[")
    if cur.try_char(b"]"):
        return Section()
    parts: list[int] = []
    if cur.peek_in(b"0123456789"):
        parts = _section_part(cur)
        if not cur.try_char(b"."):
            cur.expect(b"]", "] after section")
            return Section(tuple(parts))
    text = cur.match(_SECTION_TEXT_RE, "section text").decode("ascii").upper()
    fields: list[str] = []
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        cur.sp("header field list")
        fields = cur.paren_list(
            lambda: cur.astring_text("header field name").upper(), "header field list", empty=False
        )
    elif text == "MIME" and not parts:
        raise _Syntax("MIME needs a part number")
    elif text not in ("HEADER", "TEXT", "MIME"):
        raise _Syntax(f"unknown section text {text}")
    cur.expect(b"]", "] after section")
    return Section(tuple(parts), text, tuple(fields))


def _binary_section(cur: _Cursor) -> Section:
    # section-binary = "[" [section-part] "]"
    cur.expect(b"[", "[")
    if cur.try_char(b"]"):
        return Section()
    parts = _section_part(cur)
    cur.expect(b"]", "] after section part")
    return Section(tuple(parts))


def _partial(cur: _Cursor) -> tuple[int, int] | None:
    # partial = "<" number64 "." nz-number64 ">"
    if not cur.try_char(b"<"):
        return None
    offset = cur.number("partial offset", largest=_MAX63)
    cur.expect(b".", ". in partial")
    length = cur.number("partial length", nonzero=True, largest=_MAX63)
    cur.expect(b">", "> after partial")
    return (offset, length)


def _fetch_att(cur: _Cursor) -> FetchAtt:
    name = cur.match(_FETCH_NAME_RE, "fetch item").decode("ascii").upper()
    if name in _SIMPLE_ATTS:
        return FetchAtt(name)
    if name == "PREVIEW":
        # rfc8970:7 "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"];
        # preview-mod = "LAZY": we always have the preview, LAZY changes nothing.
        if cur.text.startswith(b" (", cur.pos):
            cur.pos += 1
            for modifier in cur.paren_list(lambda: cur.keyword("preview modifier"), "modifiers"):
                if modifier != "LAZY":
                    raise _Syntax(f"unknown PREVIEW modifier {modifier}")
        return FetchAtt("PREVIEW")
    if name == "BODY" and cur.peek() != ord("["):
        return FetchAtt("BODY")
    if name in ("BODY", "BODY.PEEK"):
        section = _section(cur)
        return FetchAtt("BODY[]", section, name == "BODY.PEEK", _partial(cur))
    if name in ("BINARY", "BINARY.PEEK"):
        section = _binary_section(cur)
        return FetchAtt("BINARY", section, name == "BINARY.PEEK", _partial(cur))
    if name == "BINARY.SIZE":
        return FetchAtt("BINARY.SIZE", _binary_section(cur))
    raise _Syntax(f"unknown fetch item {name}")


def _cmd_fetch(cur: _Cursor) -> object:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #         "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
    cur.sp("sequence set")
    sequence = cur.sequence_set()
    cur.sp("fetch items")
    atts: list[FetchAtt] = []
    if cur.try_char(b"("):
        atts.append(_fetch_att(cur))
        while not cur.try_char(b")"):
            cur.sp("fetch item or )")
            atts.append(_fetch_att(cur))
    else:
        start = cur.pos
        word = cur.match(_FETCH_NAME_RE, "fetch items").decode("ascii").upper()
        if word in _MACROS and cur.peek() in (-1, ord(" ")):
            atts = [FetchAtt(n) for n in _MACROS[word]]
        else:
            cur.pos = start
            atts.append(_fetch_att(cur))
    changedsince = None
    vanished = False
    if not cur.at_end():
        # fetch-modifiers = SP "(" fetch-modifier *(SP fetch-modifier) ")"
        cur.sp("fetch modifiers")
        cur.expect(b"(", "fetch modifiers")
        while True:
            name = cur.keyword("fetch modifier")
            if name == "CHANGEDSINCE":
                cur.sp("mod-sequence")
                changedsince = cur.number("mod-sequence", nonzero=True, largest=_MAX63)
            elif name == "VANISHED":
                vanished = True
            else:
                raise _Syntax(f"unknown fetch modifier {name}")
            if cur.try_char(b")"):
                break
            cur.sp("fetch modifier or )")
    return c.Fetch(sequence, tuple(atts), changedsince, vanished)


# -- SEARCH (rfc9051:6.4.4, rfc3501:6.4.4, rfc4731, rfc5032, rfc5182, rfc7162) ----------

_SEARCH_FLAG_KEYS = frozenset(
    {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "RECENT", "NEW", "OLD",
     "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
     "SAVEDATESUPPORTED"}  # rfc8514:4.3
)  # fmt: skip
_SEARCH_DATE_KEYS = frozenset(
    {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
     "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # rfc8514:5
)  # fmt: skip
_SEARCH_TEXT_KEYS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
# rfc4731:3.1, rfc5182:2.1 SAVE, rfc5267:4 UPDATE, CONTEXT and PARTIAL.
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL"})


def _search_key(cur: _Cursor, depth: int) -> SearchKey:
    char = cur.peek()
    if char == ord("("):
        if depth >= cur.max_depth:
            raise _Syntax(f"search keys nested more than {cur.max_depth} deep")
        cur.pos += 1
        keys = [_search_key(cur, depth + 1)]
        while not cur.try_char(b")"):
            cur.sp("search key or )")
            keys.append(_search_key(cur, depth + 1))
        return SearchKey("AND", (tuple(keys),))
    if cur.peek_in(b"0123456789*$"):
        return SearchKey("SEQSET", (cur.sequence_set(),))
    op = cur.keyword("search key")
    if op in _SEARCH_FLAG_KEYS:
        return SearchKey(op)
    if op in ("KEYWORD", "UNKEYWORD"):
        cur.sp("keyword")
        return SearchKey(op, (cur.atom("keyword"),))
    if op in _SEARCH_DATE_KEYS:
        cur.sp("date")
        return SearchKey(op, (cur.date(),))
    if op in ("EMAILID", "THREADID"):  # rfc8474:7 search-key: case-sensitive
        cur.sp("object id")
        return SearchKey(op, (cur.match(_OBJECTID_RE, "object id").decode("ascii"),))
    if op in ("OLDER", "YOUNGER"):  # rfc5032:4
        cur.sp("interval")
        return SearchKey(op, (cur.number("interval", nonzero=True),))
    if op in ("LARGER", "SMALLER"):
        cur.sp("size")
        return SearchKey(op, (cur.number("size", largest=_MAX63),))
    if op in _SEARCH_TEXT_KEYS:
        cur.sp("search string")
        return SearchKey(op, (cur.astring_text("search string"),))
    if op == "HEADER":
        cur.sp("header field name")
        field = cur.astring_text("header field name")
        cur.sp("search string")
        return SearchKey(op, (field, cur.astring_text("search string")))
    if op == "UID":
        cur.sp("UID set")
        return SearchKey(op, (cur.sequence_set("UID set"),))
    if op == "MODSEQ":
        # rfc7162:7 "MODSEQ" [search-modsequence-ext] SP mod-sequence-valzer
        cur.sp("mod-sequence")
        entry = kind = None
        if cur.peek() in (ord('"'), _LITERAL):
            entry = cur.text_of(cur.string("entry name"), "entry name")
            if not entry.lower().startswith("/flags/"):
                raise _Syntax("expected entry name /flags/<flag>")
            cur.sp("entry type")
            kind = cur.keyword("entry type").lower()
            if kind not in ("priv", "shared", "all"):
                raise _Syntax("expected entry type priv, shared or all")
            cur.sp("mod-sequence")
        return SearchKey(op, (entry, kind, cur.number("mod-sequence", largest=_MAX63)))
    if op in ("NOT", "OR"):
        if depth >= cur.max_depth:
            raise _Syntax(f"search keys nested more than {cur.max_depth} deep")
        cur.sp("search key")
        first = _search_key(cur, depth + 1)
        if op == "NOT":
            return SearchKey(op, (first,))
        cur.sp("second search key")
        return SearchKey(op, (first, _search_key(cur, depth + 1)))
    raise _Syntax(f"unknown search key {op}")


def _cmd_search(cur: _Cursor) -> object:
    # search = "SEARCH" [search-return-opts] SP search-program
    # search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    # search-program = ["CHARSET" SP charset SP] search-key *(SP search-key)
    cur.sp("search key")
    options: tuple[str, ...] | None = None
    partial = None
    if cur.try_keyword(b"RETURN"):
        options, partial = _return_options(cur, _SEARCH_RETURN, "SEARCH")
        cur.sp("search key")
    charset = None
    if cur.try_keyword(b"CHARSET"):
        cur.sp("charset")
        quoted = cur.peek() == ord('"')
        raw = cur.string("charset") if quoted else cur.match(_ATOM_RE, "charset")
        charset = raw.decode("ascii", "replace").upper()
        if charset not in _CHARSETS:
            shown = re.sub(r"[^!-~]", "?", charset)[:40]
            raise _Refused(f"{_BADCHARSET} Charset {shown} is not supported")
        cur.sp("search key")
    keys = [_search_key(cur, 0)]
    while not cur.at_end():
        cur.sp("search key")
        keys.append(_search_key(cur, 0))
    return c.Search(charset, options, SearchKey("AND", (tuple(keys),)), partial)


# -- SORT, THREAD (rfc5256:5, rfc5957:4, rfc5267:5) ---------------------------------------

_SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
_THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})
_SORT_RETURN = _SEARCH_RETURN  # rfc5267:3.1 ESORT's return options are SEARCH's


def _return_options(
    cur: _Cursor, allowed: frozenset[str], command: str
) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """rfc4731:3.1 search-return-opts after "RETURN": the option names (upper
    case, each once) and the rfc5267:4.4 PARTIAL range, "low:high" with
    both nz-numbers (given high:low, the same range)."""
    cur.sp("return options")
    partial: list[tuple[int, int]] = []

    def option() -> str:
        name = cur.keyword("return option")
        if name not in allowed:
            raise _Syntax(f"unknown {command} return option {name}")
        if name == "PARTIAL":
            if partial:
                raise _Syntax("PARTIAL given twice")
            cur.sp("partial range")
            low = cur.number("partial range", nonzero=True)
            cur.expect(b":", "partial range low:high")
            high = cur.number("partial range", nonzero=True)
            partial.append((min(low, high), max(low, high)))
        return name

    options = tuple(dict.fromkeys(cur.paren_list(option, "return options")))
    if partial and "ALL" in options:
        raise _Syntax("PARTIAL and ALL cannot be used together")  # rfc5267:4.4
    return options, partial[0] if partial else None


def _search_criteria(cur: _Cursor) -> tuple[str, SearchKey]:
    """rfc5256:5 search-criteria = charset 1*(SP search-key): the charset
    (upper case, any: the session refuses the ones SEARCH does not know with
    NO [BADCHARSET]) and the keys, ANDed."""
    quoted = cur.peek() == ord('"')
    raw = cur.string("charset") if quoted else cur.match(_ATOM_RE, "charset")
    charset = raw.decode("ascii", "replace").upper()
    keys: list[SearchKey] = []
    while not keys or not cur.at_end():
        cur.sp("search key")
        keys.append(_search_key(cur, 0))
    return charset, SearchKey("AND", (tuple(keys),))


def _cmd_sort(cur: _Cursor) -> object:
    # rfc5267:5 sort = ["UID" SP] "SORT" [search-return-opts] SP sort-criteria
    #                  SP search-criteria
    # rfc5256:5 sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"
    #           sort-criterion = ["REVERSE" SP] sort-key
    options: tuple[str, ...] | None = None
    partial = None
    cur.sp("sort criteria")
    if cur.try_keyword(b"RETURN"):
        options, partial = _return_options(cur, _SORT_RETURN, "SORT")
        cur.sp("sort criteria")

    def criterion() -> str:
        name = cur.keyword("sort key")
        if name == "REVERSE":
            cur.sp("sort key after REVERSE")
            name = "-" + cur.keyword("sort key")
        if name.lstrip("-") not in _SORT_KEYS:
            raise _Syntax(f"unknown sort key {name.lstrip('-')}")
        return name

    items = cur.paren_list(criterion, "sort criteria", empty=False)
    criteria = tuple((item.lstrip("-"), item.startswith("-")) for item in items)
    cur.sp("charset")
    charset, key = _search_criteria(cur)
    return c.Sort(criteria, charset, options, key, partial)


def _cmd_thread(cur: _Cursor) -> object:
    # rfc5256:5 thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    cur.sp("threading algorithm")
    algorithm = cur.keyword("threading algorithm")
    if algorithm not in _THREAD_ALGORITHMS:
        raise _Syntax(f"unknown threading algorithm {algorithm}")
    cur.sp("charset")
    charset, key = _search_criteria(cur)
    return c.Thread(algorithm, charset, key)


def _cmd_cancelupdate(cur: _Cursor) -> object:
    # rfc5267:5 cancelupdate = "CANCELUPDATE" 1*(SP quoted)
    tags: list[str] = []
    while not tags or not cur.at_end():
        cur.sp("tag")
        if cur.peek() != ord('"'):
            raise _Syntax("expected a quoted tag")
        tags.append(cur.text_of(cur.string("tag"), "tag"))
    return c.CancelUpdate(tuple(dict.fromkeys(tags)))


def _cmd_compress(cur: _Cursor) -> object:
    # rfc4978:5 compress = "COMPRESS" SP algorithm
    cur.sp("compression mechanism")
    return c.Compress(cur.keyword("compression mechanism"))


# -- NOTIFY (rfc5465:8) ----------------------------------------------------------------

_NOTIFY_FILTERS = frozenset(
    {"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"}
)
_FILTER_RE = re.compile(rb"[A-Za-z-]+")


def _cmd_notify(cur: _Cursor) -> object:
    # notify = "NOTIFY" SP (notify-set / notify-none)
    # notify-set = "SET" [status-indicator] SP event-groups; status-indicator = SP "STATUS"
    cur.sp("SET or NONE")
    word = cur.keyword("SET or NONE")
    if word == "NONE":
        return c.Notify(None)
    if word != "SET":
        raise _Syntax("expected SET or NONE")
    cur.sp("event groups")
    status = cur.try_keyword(b"STATUS")
    if status:
        cur.sp("event groups")
    groups = [_event_group(cur)]
    names = len(groups[0].names)
    while not cur.at_end():
        cur.sp("event group")
        groups.append(_event_group(cur))
        names += len(groups[-1].names)
        if len(groups) > notify.MAX_GROUPS or names > notify.MAX_NAMES:
            raise _Syntax("too many event groups or mailboxes")
    return c.Notify(tuple(groups), status)


def _event_group(cur: _Cursor) -> notify.Group:
    # event-group = "(" filter-mailboxes SP events ")"
    cur.expect(b"(", "event group")
    kind = cur.match(_FILTER_RE, "mailbox filter").decode("ascii").upper()
    if kind not in _NOTIFY_FILTERS:
        raise _Syntax(f"unknown mailbox filter {kind[:40]}")
    names: list[str] = []
    if kind in ("SUBTREE", "MAILBOXES"):
        # one-or-more-mailbox = mailbox / "(" mailbox *(SP mailbox) ")"
        cur.sp("mailboxes")
        if cur.try_char(b"("):
            names.append(cur.mailbox())
            while not cur.try_char(b")"):
                cur.sp("mailbox or )")
                names.append(cur.mailbox())
                if len(names) > notify.MAX_NAMES:
                    raise _Syntax("too many mailboxes")
        else:
            names.append(cur.mailbox())
    cur.sp("events")
    events: list[str] = []
    fetch: list[FetchAtt] = []
    if not cur.try_keyword(b"NONE"):
        # events = "(" event *(SP event) ")"; MessageNew may take "(" fetch-att ... ")"
        cur.expect(b"(", "events")
        while True:
            name = cur.keyword("event")
            events.append(name)
            after = cur.text[cur.pos : cur.pos + 2]
            if name == "MESSAGENEW" and after == b" (":
                cur.sp("fetch items")
                cur.expect(b"(", "fetch items")
                fetch.append(_fetch_att(cur))
                while not cur.try_char(b")"):
                    cur.sp("fetch item or )")
                    fetch.append(_fetch_att(cur))
            if cur.try_char(b")"):
                break
            cur.sp("event or )")
            if len(events) > 16:
                raise _Syntax("too many events")
    cur.expect(b")", "end of event group")
    return notify.Group(kind, tuple(names), frozenset(events), tuple(fetch))


# -- METADATA (rfc5464:5) --------------------------------------------------------------

_MAX_METADATA_ENTRIES = 100  # per command (estafeta.imap.metadata.MAX_ENTRIES a mailbox)


def _metadata_mailbox(cur: _Cursor) -> str:
    # rfc5464:4.1 the empty string names the server
    raw = cur.astring("mailbox")
    return "" if raw == b"" else cur.mailbox_name(raw, "mailbox")


def _entry(cur: _Cursor) -> str:
    # rfc5464:5 entry = astring
    return cur.astring_text("entry")


def _cmd_getmetadata(cur: _Cursor) -> object:
    # getmetadata = "GETMETADATA" [SP getmetadata-options] SP mailbox SP entries
    cur.sp("mailbox")
    depth, maxsize = "0", None
    if cur.try_char(b"("):
        while True:
            name = cur.keyword("GETMETADATA option")
            cur.sp(f"{name} value")
            if name == "MAXSIZE":  # rfc5464:4.2.1
                maxsize = cur.number("MAXSIZE")
            elif name == "DEPTH":  # rfc5464:4.2.2
                depth = cur.atom("DEPTH").upper()
                if depth not in ("0", "1", "INFINITY"):
                    raise _Syntax("DEPTH is 0, 1 or infinity")
            else:
                raise _Syntax(f"unknown GETMETADATA option {name[:40]}")
            if cur.try_char(b")"):
                break
            cur.sp("GETMETADATA option")
        cur.sp("mailbox")
    mailbox = _metadata_mailbox(cur)
    cur.sp("entries")
    if cur.peek() == ord("("):
        entries = cur.paren_list(lambda: _entry(cur), "entries", empty=False)
        if len(entries) > _MAX_METADATA_ENTRIES:
            raise _Syntax("too many entries")
    else:
        entries = [_entry(cur)]
    return c.GetMetadata(mailbox, tuple(entries), depth, maxsize)


def _cmd_setmetadata(cur: _Cursor) -> object:
    # setmetadata = "SETMETADATA" SP mailbox SP entry-values
    # entry-values = "(" entry-value *(SP entry-value) ")"; value = nstring / literal8
    cur.sp("mailbox")
    mailbox = _metadata_mailbox(cur)
    cur.sp("entry values")
    cur.expect(b"(", "entry values")
    pairs: list[tuple[str, bytes | None]] = []
    while True:
        entry = _entry(cur)
        cur.sp("value")
        value: bytes | None
        if cur.peek() == _LITERAL:
            value = cur.literal("value", binary_ok=True).data
        else:
            value = cur.nstring("value")
        pairs.append((entry, value))
        if len(pairs) > _MAX_METADATA_ENTRIES:
            raise _Syntax("too many entries")
        if cur.try_char(b")"):
            break
        cur.sp("entry or )")
    return c.SetMetadata(mailbox, tuple(pairs))


# -- URLAUTH (rfc4467:9) ---------------------------------------------------------------

_MECHANISM_RE = re.compile(rb"[A-Za-z0-9.-]+")
MAX_URLAUTH_URLS = 100  # per GENURLAUTH / URLFETCH (estafeta.imap.urlfetch.MAX_URLS)


def _mechanism(cur: _Cursor) -> str:
    # rfc4467:9 mechanism = "INTERNAL" / 1*(ALPHA / DIGIT / "-" / ".")
    return cur.match(_MECHANISM_RE, "URL authorization mechanism").decode("ascii").upper()


def _url(cur: _Cursor) -> str:
    return cur.astring_text("URL")


def _cmd_resetkey(cur: _Cursor) -> object:
    # rfc4467:9 resetkey = "RESETKEY" [SP mailbox *(SP mechanism)]
    if cur.at_end():
        return c.ResetKey(None)
    cur.sp("mailbox")
    mailbox = cur.mailbox()
    mechanisms: list[str] = []
    while not cur.at_end():
        cur.sp("mechanism")
        mechanisms.append(_mechanism(cur))
    return c.ResetKey(mailbox, tuple(dict.fromkeys(mechanisms)))


def _cmd_genurlauth(cur: _Cursor) -> object:
    # rfc4467:9 genurlauth = "GENURLAUTH" 1*(SP url-rump SP mechanism)
    pairs: list[tuple[str, str]] = []
    while not pairs or not cur.at_end():
        if len(pairs) == MAX_URLAUTH_URLS:
            raise _Syntax(f"more than {MAX_URLAUTH_URLS} URLs")
        cur.sp("URL")
        url = _url(cur)
        cur.sp("mechanism")
        pairs.append((url, _mechanism(cur)))
    return c.GenUrlAuth(tuple(pairs))


def _cmd_urlfetch(cur: _Cursor) -> object:
    # rfc4467:9 urlfetch = "URLFETCH" 1*(SP url-full)
    urls: list[str] = []
    while not urls or not cur.at_end():
        if len(urls) == MAX_URLAUTH_URLS:
            raise _Syntax(f"more than {MAX_URLAUTH_URLS} URLs")
        cur.sp("URL")
        urls.append(_url(cur))
    return c.UrlFetch(tuple(urls))


# Command name -> (argument parser, allowed after UID).
_COMMANDS: dict[str, _Handler] = {
    "CAPABILITY": _no_args(c.Capability),
    "NOOP": _no_args(c.Noop),
    "LOGOUT": _no_args(c.Logout),
    "STARTTLS": _no_args(c.StartTls),
    "AUTHENTICATE": _cmd_authenticate,
    "LOGIN": _cmd_login,
    "ENABLE": _cmd_enable,
    "ID": _cmd_id,
    "SELECT": _select_like(c.Select),
    "EXAMINE": _select_like(c.Examine),
    "CREATE": _cmd_create,
    "DELETE": _one_mailbox(c.Delete),
    "RENAME": _cmd_rename,
    "SUBSCRIBE": _one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "LIST": _cmd_list,
    "LSUB": _cmd_lsub,
    "NAMESPACE": _no_args(c.Namespace),
    "STATUS": _cmd_status,
    "APPEND": _cmd_append,
    "IDLE": _no_args(c.Idle),
    "GETQUOTA": _cmd_getquota,
    "GETQUOTAROOT": _one_mailbox(c.GetQuotaRoot),
    "SETQUOTA": _cmd_setquota,
    "SETACL": _cmd_setacl,
    "DELETEACL": _mailbox_identifier(c.DeleteAcl),
    "GETACL": _one_mailbox(c.GetAcl),
    "LISTRIGHTS": _mailbox_identifier(c.ListRights),
    "MYRIGHTS": _one_mailbox(c.MyRights),
    "CHECK": _no_args(c.Check),
    "CLOSE": _no_args(c.Close),
    "UNSELECT": _no_args(c.Unselect),
    "EXPUNGE": _no_args(c.Expunge),
    "SEARCH": _cmd_search,
    "SORT": _cmd_sort,
    "THREAD": _cmd_thread,
    "CANCELUPDATE": _cmd_cancelupdate,
    "NOTIFY": _cmd_notify,
    "COMPRESS": _cmd_compress,
    "GETMETADATA": _cmd_getmetadata,
    "SETMETADATA": _cmd_setmetadata,
    "RESETKEY": _cmd_resetkey,
    "GENURLAUTH": _cmd_genurlauth,
    "URLFETCH": _cmd_urlfetch,
    "FETCH": _cmd_fetch,
    "STORE": _cmd_store,
    "COPY": _copy_like(c.Copy),
    "MOVE": _copy_like(c.Move),
}
# rfc9051:6.4.9 uid = "UID" SP (copy / move / fetch / search / store / uid-expunge),
# rfc5256:5 and sort / thread
_UID_COMMANDS: dict[str, _Handler] = {
    "COPY": _COMMANDS["COPY"],
    "MOVE": _COMMANDS["MOVE"],
    "FETCH": _COMMANDS["FETCH"],
    "SEARCH": _COMMANDS["SEARCH"],
    "SORT": _COMMANDS["SORT"],
    "THREAD": _COMMANDS["THREAD"],
    "STORE": _COMMANDS["STORE"],
    "EXPUNGE": _cmd_uid_expunge,
}


def _shown(word: bytes) -> str:
    """A client's word, safe to echo in a response."""
    return re.sub(rb"[^ -~]", b"?", word[:40]).decode("ascii")


@dataclass
class _Head:
    """What the start of a command says: tag, name, and its argument parser."""

    tag: str | None
    name: str = ""
    uid: bool = False
    handler: _Handler | None = None
    error: str | None = None  # the BAD text when the head is already wrong


def _read_head(cur: _Cursor) -> _Head:
    """rfc9051:9 command = tag SP (command-any / command-auth / ...) CRLF."""
    m = _TAG_RE.match(cur.text)
    if m is None or (m.end() < len(cur.text) and cur.text[m.end()] != ord(" ")):
        return _Head(None, error="Missing or invalid tag")
    tag = m.group(0).decode("ascii")
    cur.pos = m.end()
    if not cur.try_char(b" "):
        return _Head(tag, error="Missing command")
    start = cur.pos
    word = cur.match(_ATOM_RE, "command") if cur.peek_in(_ATOM_CHARS) else b""
    name = word.decode("ascii").upper()
    if not name:
        return _Head(tag, error="Missing command")
    if name == "UID":
        if not cur.try_char(b" "):
            return _Head(tag, error="Missing command after UID")
        sub = cur.match(_ATOM_RE, "command").upper() if cur.peek_in(_ATOM_CHARS) else b""
        handler = _UID_COMMANDS.get(sub.decode("ascii"))
        if handler is None:
            return _Head(tag, error=f"Unknown command {_shown(cur.text[start : cur.pos])}")
        return _Head(tag, sub.decode("ascii"), True, handler)
    handler = _COMMANDS.get(name)
    if handler is None:
        return _Head(tag, error=f"Unknown command {_shown(word)}")
    return _Head(tag, name, False, handler)


def _tag_of(text: bytes) -> str | None:
    """The tag at the start of some command text, if it has a valid one."""
    m = _TAG_RE.match(text)
    if m is None or m.end() >= len(text) or text[m.end()] != ord(" "):
        return None
    return m.group(0).decode("ascii")


# -- framing ------------------------------------------------------------------------------

_LINE = 0  # reading the text of a command
_LITERAL_DATA = 1  # reading a literal's octets into the command
_SKIP = 2  # dropping a refused non-synchronizing literal's octets
_DISCARD = 3  # dropping the rest of a refused command
_DEAD = 4  # after a fatal error: nothing more is parsed


class Parser:
    """The IMAP command parser of one connection; see the module docstring."""

    def __init__(
        self,
        *,
        max_line: int = 64 * 1024,
        max_literal: int = 64 * 1024 * 1024,
        max_depth: int = 32,
        literal_plus: bool = True,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_depth = max_depth
        self.literal_plus = literal_plus
        self._authenticated = False
        self._utf8 = False
        self._buf = bytearray()
        self._scan = 0  # no CRLF in _buf before this offset
        self._eof = False
        self._mode = _LINE
        self._raw = False  # expect_line(): the next line is a RawLine
        self._overlong = False  # the current line is over max_line and being dropped
        self._overlong_tag: str | None = None
        self._reset_command()
        self._remaining = 0  # octets left of the literal being read or skipped
        self._literal = bytearray()
        self._literal_binary = False

    # -- the session's controls ------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """More octets from the client; b"" means the client closed."""
        if self._eof:
            return
        if not data:
            self._eof = True
        elif self._mode != _DEAD:
            self._buf += data

    def set_authenticated(self, value: bool) -> None:
        self._authenticated = value

    def set_utf8(self, value: bool) -> None:
        """rfc6855:3 after ENABLE UTF8=ACCEPT: mailbox names are UTF-8, not mUTF-7."""
        self._utf8 = value

    def idle(self) -> bool:
        """Between commands: nothing of a next command received yet (the
        moment rfc5465 NOTIFY may send its responses)."""
        return (
            self._mode == _LINE and not self._buf and not self._text and not self._literals
            and not self._raw and not self._overlong
        )  # fmt: skip

    def take_unread(self) -> bytes:
        """What was received after the last command and not parsed yet,
        taken out (COMPRESS: those octets were compressed)."""
        unread = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return unread

    def expect_line(self) -> None:
        """The next line is returned as a RawLine (an AUTHENTICATE response,
        IDLE's DONE), not parsed as a command."""
        self._raw = True

    # -- events ------------------------------------------------------------------------

    def next_event(self) -> Event:
        while True:
            event = self._step()
            if event is not None:
                return event

    def _more(self) -> Event:
        return Eof() if self._eof else NeedData()

    def _literal_limit(self) -> int:
        if self._authenticated:
            return self.max_literal
        return min(self.max_literal, UNAUTHENTICATED_LITERAL)

    def _reset_command(self) -> None:
        self._text = bytearray()
        self._text_len = 0  # octets of command text received (literal markers included)
        self._literals: list[_Literal] = []
        self._literal_total = 0
        self._nul = False  # a NUL octet came in the command text
        self._head: tuple[str | None, str | None] | None = None  # tag, head error

    def _step(self) -> Event | None:
        """Make progress; an event, or None to be called again."""
        if self._mode == _DEAD:
            self._buf.clear()
            return self._more()
        if self._mode in (_LITERAL_DATA, _SKIP):
            return self._step_literal()
        line = self._take_line()
        if line is None:
            return self._more()
        if self._mode == _DISCARD:
            return self._discarded_line(line)
        if self._raw and not self._text_len:
            self._raw = False
            if self._overlong:
                self._overlong = False
                return ParseError(None, "Line too long")
            return RawLine(line)
        if self._overlong:
            return self._overlong_line(line)
        return self._command_line(line)

    def _take_line(self) -> bytes | None:
        """The next line without its CRLF, or None when it is not complete.
        Over-long lines are not kept: ``_overlong`` is set and only their
        tail is returned."""
        buf = self._buf
        idx = buf.find(b"\r\n", self._scan)
        in_command = self._mode == _LINE and not (self._raw and not self._text_len)
        budget = self.max_line - (self._text_len if in_command else 0)
        dropping = self._overlong or self._mode == _DISCARD
        if idx < 0:
            pending = len(buf) - (1 if buf.endswith(b"\r") else 0)
            if not dropping and self._mode == _LINE and pending > budget:
                self._start_overlong(bytes(buf))
                dropping = True
            if dropping and len(buf) > _TAIL:
                del buf[:-_TAIL]
            self._scan = max(0, len(buf) - 1)
            return None
        line = bytes(buf[:idx])
        del buf[: idx + 2]
        self._scan = 0
        if not dropping and self._mode == _LINE and idx > budget:
            self._start_overlong(line)
        return line

    def _start_overlong(self, line: bytes) -> None:
        self._overlong = True
        prefix = (bytes(self._text) + line)[: self.max_line]
        self._overlong_tag = _tag_of(prefix) if not (self._raw and not self._text_len) else None

    # -- literals ------------------------------------------------------------------------

    def _step_literal(self) -> Event | None:
        take = min(self._remaining, len(self._buf))
        if self._mode == _LITERAL_DATA:
            self._literal += self._buf[:take]
        del self._buf[:take]
        self._remaining -= take
        self._scan = 0
        if self._remaining:
            return self._more()
        if self._mode == _SKIP:
            self._mode = _DISCARD
            return None
        self._literals.append(_Literal(bytes(self._literal), self._literal_binary))
        self._literal = bytearray()
        self._mode = _LINE
        return None

    def _announce(self, line: bytes, m: re.Match[bytes]) -> Event | None:
        """The line ends in a literal marker: accept or refuse the literal."""
        binary = bool(m.group(1))
        digits = m.group(2).lstrip(b"0") or b"0"
        size = int(digits) if len(digits) <= 20 else _MAX63 + 1
        sync = not m.group(3)
        self._text += line[: m.start()] + bytes([_LITERAL])
        if self._head is None:
            # Tag and name end at the first literal at the latest: read them once.
            text = bytes(self._text)
            self._head = (_tag_of(text), self._head_error(text))
        tag, head_error = self._head
        total = self._literal_total + size
        limit = self._literal_limit()
        if sync:
            if total > limit:
                refusal: str | None = (
                    f"[TOOBIG] Literal of {size} octets is over the limit of {limit}"
                )
            else:
                refusal = "NUL octet in command" if self._nul else head_error
            if refusal is not None:
                # rfc9051:7.5: after a BAD the client does not send the literal.
                self._reset_command()
                return ParseError(tag, refusal)
            self._start_literal(size, binary, total)
            return Continue(CONTINUE_TEXT)
        if total > limit:
            self._reset_command()
            self._mode = _DEAD
            self._buf.clear()
            return ParseError(
                tag, f"[TOOBIG] Literal of {size} octets is over the limit of {limit}", fatal=True
            )
        if not self.literal_plus and size > LITERAL_MINUS:
            # rfc7888:4 LITERAL-: refuse with [TOOBIG], drop the literal and the command.
            self._reset_command()
            self._mode = _SKIP
            self._remaining = size
            return ParseError(
                tag, f"[TOOBIG] Non-synchronizing literal over {LITERAL_MINUS} octets"
            )
        self._start_literal(size, binary, total)
        return None

    def _start_literal(self, size: int, binary: bool, total: int) -> None:
        self._literal_total = total
        self._remaining = size
        self._literal_binary = binary
        self._literal = bytearray()
        self._mode = _LITERAL_DATA

    def _head_error(self, text: bytes) -> str | None:
        """The BAD text if the command so far has a bad tag or name (checked
        before answering "+" to a synchronizing literal)."""
        cur = _Cursor(text, (), utf8=self._utf8, max_depth=self.max_depth)
        return _read_head(cur).error

    # -- lines --------------------------------------------------------------------------------

    def _command_line(self, line: bytes) -> Event | None:
        self._text_len += len(line)
        if b"\x00" in line:
            self._nul = True
        m = _MARKER_RE.search(line) if line.endswith(b"}") else None
        if m is not None:
            return self._announce(line, m)
        self._text += line
        text, literals, nul = bytes(self._text), self._literals, self._nul
        self._reset_command()
        if not text and not literals:
            return ParseError(None, "Empty command line")
        return self._parse(text, literals, nul)

    def _overlong_line(self, line: bytes) -> Event | None:
        """The end of a line that went over max_line (``line`` may be only its tail)."""
        tag = self._overlong_tag
        self._overlong = False
        self._reset_command()
        text = f"Command line too long (over {self.max_line} octets)"
        m = _MARKER_RE.search(line[-_TAIL:])
        if m is None or not m.group(3):
            return ParseError(tag, text)  # a client waiting for "+" gives up on BAD
        return self._skip_literal(m, ParseError(tag, text))

    def _discarded_line(self, line: bytes) -> Event | None:
        """A line of a command already refused: drop it, and the literals it announces."""
        m = _MARKER_RE.search(line[-_TAIL:])
        if m is None or not m.group(3):
            self._mode = _LINE
            return None
        return self._skip_literal(m, None)

    def _skip_literal(self, m: re.Match[bytes], event: ParseError | None) -> Event | None:
        digits = m.group(2).lstrip(b"0") or b"0"
        size = int(digits) if len(digits) <= 20 else _MAX63 + 1
        if size > self._literal_limit():
            self._mode = _DEAD
            self._buf.clear()
            tag = event.tag if event is not None else None
            return ParseError(tag, "[TOOBIG] Literal too large; cannot resynchronise", fatal=True)
        self._mode = _SKIP
        self._remaining = size
        return event

    # -- grammar ------------------------------------------------------------------------------

    def _parse(self, text: bytes, literals: list[_Literal], nul: bool) -> Event:
        cur = _Cursor(text, literals, utf8=self._utf8, max_depth=self.max_depth)
        head = _read_head(cur)
        if head.error is not None:
            return ParseError(head.tag, head.error)
        assert head.tag is not None and head.handler is not None
        label = f"UID {head.name}" if head.uid else head.name
        if nul:
            return ParseError(head.tag, f"Syntax error in {label}: NUL octet in command")
        try:
            args = head.handler(cur)
            cur.end()
        except _Syntax as exc:
            return ParseError(head.tag, f"Syntax error in {label}: {exc}")
        except _Refused as exc:
            return ParseError(head.tag, str(exc))
        except RecursionError:
            return ParseError(head.tag, f"Syntax error in {label}: nested too deeply")
        except Exception:  # a parser bug must not become a traceback to the client
            log.exception("IMAP parser failed on a %s command", label)
            return ParseError(head.tag, f"Internal error parsing {label}")
        return Command(head.tag, head.name, args, head.uid)
