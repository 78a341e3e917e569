"""FETCH data items (rfc9051:6.4.5), rendered as rfc9051:7.5.2 responses.

``render_items`` turns the requested items of one message into the inside of
``* n FETCH (...)``. Everything but the body sections comes from the index
(the ``Summary`` computed at delivery, flags, sizes); the message file is read
only when a body section is asked for, and then at most once per message.

For the server the same output comes in pieces: ``prepare`` does everything
that can fail (reading the file, decoding BINARY sections, each once per
message), then ``render_pieces`` yields the response piece by piece, body
data as memoryviews of the file read once, so that a session can send a
response of any size holding one message and a bounded buffer (issue 14
item 5: 300 overlapping BODY[]<n.2000000> of a 1 MiB message were a 298 MiB
response built in memory). ``MAX_ITEMS`` bounds the items of one FETCH.

The items an index row answers alone (UID, FLAGS, RFC822.SIZE, INTERNALDATE,
MODSEQ, ENVELOPE: what clients ask for when they list a whole mailbox) have
a path of their own, ``RowFormat``: one ``%``-format per message straight
from the row tuple, with the FLAGS and INTERNALDATE texts cached, and no
MessageData (issue 17: FETCH 1:* of 100,000 messages). Its lines are the
bytes ``render_items`` gives, octet for octet.

Choices (each one of several that IMAP servers make):

* A section that does not exist (``BODY[9]``, ``BODY[1.HEADER]`` of a part
  that is not message/rfc822 or message/global, ``BODY[MIME]`` without a part
  number) is answered with the empty string ``""``, not NIL and not NO; this is
  what Dovecot does ("MIME part not found. return an empty part").
  ``BINARY.SIZE`` of such a section is 0.
* Bytes are sent as stored: a message stored with LF line ends gives LF
  sections, matching the sizes in BODYSTRUCTURE (see
  ``estafeta.message.structure``). The blank line that ends a
  ``HEADER.FIELDS`` subset uses the header's own line end. ``BINARY`` data
  is the decoded octets, line ends as decoded (rfc9051:7.5.2: the content
  "after removing any encoding"), so ``BINARY.SIZE`` is its exact length.
* A NUL byte cannot be sent in a string or a normal literal (rfc9051:4.3), so
  in ``BODY[...]``/``RFC822*`` data it is replaced by 0x80, as Dovecot does.
  Unlike dropping it, this keeps ``RFC822.SIZE`` equal to the length of
  ``BODY[]`` and partial fetches aligned with the stored octets. ``BINARY``
  data with NULs goes out as a literal8 instead (rfc3516:4.3).
* ``INTERNALDATE`` is always given in UTC (``+0000``): the same answer in
  every session, whatever the server's time zone.
* ``BINARY`` decodes base64 and quoted-printable leniently (characters outside
  the alphabet are skipped, missing padding is tolerated; quoted-printable
  drops the whitespace that ends a line, rfc2045:6.7 rule 3, and takes "="
  followed by whitespace and the line end as a soft break): clients asked for
  the decoded data and a NO for one bad character helps nobody. Only an
  encoding we do not know gives ``NO [UNKNOWN-CTE]`` (rfc3516:4.2).
  rfc9051:6.4.5 allows BINARY only for leaf parts; for a multipart, and for
  ``BINARY[]`` (the whole message), the data is returned unchanged, since
  composite entities can only be 7bit, 8bit or binary (rfc2045:6.4).
* Two requested items that give the same response item (``BODY[1]`` and
  ``BODY.PEEK[1]``, or a repeated ``UID``) are answered once.
* With UTF8=ACCEPT (``utf8=True``) quoted strings may carry UTF-8
  (rfc6855:3), but need not: non-ASCII strings are sent as literals either
  way, which every client accepts, so the flag changes nothing today.
"""

from __future__ import annotations

import binascii
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from estafeta.imap.types import FetchAtt, Section
from estafeta.message import Summary, find_part, imap_bodystructure, imap_envelope, imap_string
from estafeta.message.preview import preview
from estafeta.message.transfer import decode_quoted_printable
from estafeta.store.reader import FetchRow

__all__ = [
    "MAX_ITEMS",
    "OBJECT_KINDS",
    "FetchError",
    "MessageData",
    "RowFormat",
    "needs_content",
    "prepare",
    "render_items",
    "render_pieces",
    "sets_seen",
]

MAX_ITEMS = 1000
"""Data items in one FETCH (after macro expansion). Far above what clients
send (a handful); beyond it the command gets NO [LIMIT] (rfc5530:3)."""

_MONTHS = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_MAX_TIME = 253_402_300_799  # 9999-12-31 23:59:59 UTC, the last date-year

# Kinds of item, after folding the synonyms together.
_SECTION = "BODY[]"  # BODY[...] and BODY.PEEK[...]
_BINARY = "BINARY"  # BINARY[...] and BINARY.PEEK[...]
_BINARY_SIZE = "BINARY.SIZE"
_STRUCTURE = "BODY"  # BODY without a section: BODYSTRUCTURE without extensions

# Items answered from the index alone.
_SUMMARY_KINDS = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
        _STRUCTURE,
        *("EMAILID", "THREADID", "SAVEDATE"),  # rfc8474:5.3, rfc8514:4.2
    }
)

OBJECT_KINDS = frozenset({"EMAILID", "THREADID", "SAVEDATE"})
"""Items of ``MessageData.objects``: read from the index only when asked for
(estafeta.store.reader.object_rows), so a FETCH without them costs nothing
more."""

_IDENTITY_CTE = frozenset({"7bit", "8bit", "binary"})
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(b for b in range(256) if b not in _BASE64_ALPHABET)
_NUL = re.compile(b"\0")
_LITERAL_THRESHOLD = 1024  # estafeta.message.structure: longer strings are literals

# What a piece of a response is: bytes, or a view into the message file.
Piece = bytes | memoryview


@dataclass
class MessageData:
    """What the session knows about one message."""

    uid: int
    flags: tuple[str, ...]
    internal_date: int  # POSIX seconds
    size: int
    modseq: int
    summary: Summary
    load: Callable[[], bytes]  # reads the message file
    # ENVELOPE as rendered at delivery (index column), so FETCH ENVELOPE
    # needs no JSON parse; None: render from the summary.
    envelope: bytes | None = None
    # (EMAILID, THREADID, save date) for OBJECT_KINDS items; see ObjectRow.
    objects: tuple[str | None, str | None, int | None] = (None, None, None)
    _content: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _sendable: bytes | None = field(default=None, init=False, repr=False, compare=False)
    # BINARY data by part path, decoded once per message.
    _binary: dict[tuple[int, ...], Piece] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def content(self) -> bytes:
        """The message file, read on first use only."""
        if self._content is None:
            self._content = self.load()
        return self._content

    def sendable(self) -> bytes:
        """The file with NUL replaced by 0x80 (see the module docstring):
        the file itself unless it has a NUL; offsets are the same."""
        if self._sendable is None:
            content = self.content()
            self._sendable = content.replace(b"\0", b"\x80") if b"\0" in content else content
        return self._sendable


class FetchError(Exception):
    """A FETCH that must fail with NO; ``code`` is the response code."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


def _kind(att: FetchAtt) -> str:
    name = att.name.upper()
    if name in ("BODY", "BODY[]", "BODY.PEEK"):
        return _STRUCTURE if att.section is None and name == "BODY" else _SECTION
    if name in ("BINARY", "BINARY[]", "BINARY.PEEK"):
        return _BINARY
    if name in ("BINARY.SIZE", "BINARY.SIZE[]"):
        return _BINARY_SIZE
    return name


def needs_content(atts: Sequence[FetchAtt]) -> bool:
    """Whether any item needs the message file (not just the index)."""
    return any(_kind(att) not in _SUMMARY_KINDS for att in atts)


def sets_seen(atts: Sequence[FetchAtt]) -> bool:
    """rfc9051:6.4.5: BODY[...], BINARY[...] (not .PEEK), RFC822 and
    RFC822.TEXT set \\Seen; RFC822.HEADER is BODY.PEEK[HEADER] (rfc3501:6.4.5)."""
    for att in atts:
        kind = _kind(att)
        if kind in (_SECTION, _BINARY) and not att.peek:
            return True
        if kind in ("RFC822", "RFC822.TEXT"):
            return True
    return False


def render_items(
    message: MessageData, atts: Sequence[FetchAtt], *, imap4rev2: bool, utf8: bool = False
) -> bytes:
    """The inside of ``* n FETCH (...)`` for ``atts``, in the order asked.

    Raises FetchError (UNKNOWN-CTE) for BINARY of a part in an encoding we
    cannot decode; whatever the file read raises (OSError) passes through.
    ``utf8`` is accepted for UTF8=ACCEPT sessions; see the module docstring.
    """
    prepare(message, atts)
    return b"".join(render_pieces(message, atts, imap4rev2=imap4rev2, utf8=utf8))


def prepare(message: MessageData, atts: Sequence[FetchAtt]) -> None:
    """Do what may fail before any of the response is sent: read the file
    if an item needs it (OSError passes through) and decode the BINARY
    sections (FetchError UNKNOWN-CTE). ``render_pieces`` then cannot fail."""
    for att in atts:
        kind = _kind(att)
        if kind == _BINARY:
            _binary_data(message, (att.section or Section()).part)
        elif kind == _BINARY_SIZE:
            _binary_size(message, (att.section or Section()).part)
        elif kind in _SECTION_KINDS:
            # Reads the file unless the section does not exist.
            _section_data(message, _RFC822_SECTIONS.get(kind) or att.section or Section(), False)


def render_pieces(
    message: MessageData, atts: Sequence[FetchAtt], *, imap4rev2: bool, utf8: bool = False
) -> Iterator[Piece]:
    """``render_items`` in pieces (call ``prepare`` first): body data are
    views of the message file, no larger than the section asked for; the
    caller sends each piece before asking for the next."""
    answered: set[tuple[bytes, tuple[int, int] | None]] = set()
    first = True
    for att in atts:
        kind = _kind(att)
        name = _response_name(kind, att)
        key = (name, att.partial)
        if key in answered:
            continue
        answered.add(key)
        head = name + b" " if first else b" " + name + b" "
        first = False
        if kind in _SECTION_KINDS:
            pieces = _section_pieces(message, kind, att)
            yield head + pieces[0]
            yield from pieces[1:]
        else:
            yield head + _value(message, kind, att, imap4rev2)


def _response_name(kind: str, att: FetchAtt) -> bytes:
    """rfc9051:7.5.2 item name: BODY.PEEK[x] is answered as BODY[x], a
    partial shows only its origin octet (BODY[]<0>)."""
    if kind not in (_SECTION, _BINARY, _BINARY_SIZE):
        return kind.encode("ascii")
    section = att.section or Section()
    name = kind.removesuffix("[]") + "[" + section.spec() + "]"
    if att.partial is not None and kind != _BINARY_SIZE:
        name += f"<{att.partial[0]}>"
    return name.encode("utf-8", "surrogateescape")


def _value(message: MessageData, kind: str, att: FetchAtt, imap4rev2: bool) -> bytes:
    summary = message.summary
    if kind == "UID":
        return b"%d" % message.uid
    if kind == "FLAGS":
        return b"(" + " ".join(message.flags).encode("utf-8", "surrogateescape") + b")"
    if kind == "INTERNALDATE":
        return _internal_date(message.internal_date)
    if kind == "RFC822.SIZE":
        return b"%d" % message.size
    if kind == "MODSEQ":
        return b"(%d)" % message.modseq  # rfc7162:3.1.4
    if kind in OBJECT_KINDS:
        return _object_value(kind, message.objects)
    if kind == "ENVELOPE":
        if message.envelope is not None:
            return message.envelope
        return imap_envelope(summary.envelope)
    if kind == _STRUCTURE:
        return imap_bodystructure(summary.bodystructure, False, imap4rev2=imap4rev2)
    if kind == "BODYSTRUCTURE":
        return imap_bodystructure(summary.bodystructure, True, imap4rev2=imap4rev2)
    if kind == _BINARY_SIZE:
        section = att.section or Section()
        return b"%d" % _binary_size(message, section.part)
    if kind == "PREVIEW":  # rfc8970:3, always available (never NIL)
        return imap_string(preview(message.content(), summary))
    if kind in _SECTION_KINDS:
        return b"".join(_section_pieces(message, kind, att))
    raise ValueError(f"unknown FETCH data item {att.name!r}")


# Items whose value is (a part of) the message: sent as literals, in pieces.
# rfc3501:6.4.5: RFC822 = BODY[], RFC822.HEADER = BODY.PEEK[HEADER],
# RFC822.TEXT = BODY[TEXT], differing only in the response item name.
_RFC822_SECTIONS = {
    "RFC822": Section(),
    "RFC822.HEADER": Section(text="HEADER"),
    "RFC822.TEXT": Section(text="TEXT"),
}
_SECTION_KINDS = frozenset({_SECTION, _BINARY, *_RFC822_SECTIONS})


def _section_pieces(message: MessageData, kind: str, att: FetchAtt) -> list[Piece]:
    """The value of a body item: [literal header, data] (or one short string)."""
    if kind == _BINARY:
        data = _binary_data(message, (att.section or Section()).part)
        return _binary_string(_partial(data, att.partial))
    section = _RFC822_SECTIONS.get(kind) or att.section or Section()
    partial = att.partial if kind == _SECTION else None
    source = _section_data(message, section)
    if isinstance(source, tuple):
        # A range of the file: a view of it, NUL already replaced.
        start, end = source
        return _body_string(_partial(memoryview(message.sendable())[start:end], partial))
    if b"\0" in source:
        source = source.replace(b"\0", b"\x80")  # see the module docstring
    return _body_string(_partial(source, partial))


def section_octets(
    message: MessageData, section: Section | None, partial: tuple[int, int | None] | None
) -> bytes:
    """The octets of BODY[section]<partial> as stored (no NUL replaced):
    what an IMAP URL (rfc5092) names, for CATENATE (rfc4469:3)."""
    source = _section_data(message, section or Section())
    data = message.content()[source[0] : source[1]] if isinstance(source, tuple) else source
    if partial is None:
        return data
    origin, length = partial
    return data[origin:] if length is None else data[origin : origin + length]


def _object_value(kind: str, objects: tuple[str | None, str | None, int | None]) -> bytes:
    """rfc8474:7 fetch-emailid-resp / fetch-threadid-resp, rfc8514:5
    SAVEDATE: NIL where the index does not know the value (THREADID "NIL"
    is rfc8474:5.3's "not calculated"; a save date is always known since
    index schema 8, an EMAILID since 12)."""
    email, thread, saved = objects
    if kind == "SAVEDATE":
        return b"NIL" if saved is None else _internal_date(saved)
    value = email if kind == "EMAILID" else thread
    return b"NIL" if value is None else b"(" + value.encode("ascii") + b")"


def _internal_date(timestamp: int) -> bytes:
    # rfc9051:9 date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
    # SP time SP zone DQUOTE; the day is padded with a space, the zone is UTC.
    t = time.gmtime(min(max(timestamp, 0), _MAX_TIME))
    return b'"%2d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def _partial(data: Piece, partial: tuple[int, int] | None) -> Piece:
    # rfc9051:6.4.5: a substring from the origin octet; an origin beyond the
    # end gives the empty string, a length beyond it is cut.
    if partial is None:
        return data
    origin, length = partial
    if isinstance(data, bytes):
        data = memoryview(data)
    return data[origin : origin + length]


def _body_string(data: Piece) -> list[Piece]:
    """An IMAP string of ``data`` (NUL-free): a literal when long, else what
    ``imap_string`` makes of it (quoted when it can be)."""
    if len(data) > _LITERAL_THRESHOLD:
        return [b"{%d}\r\n" % len(data), data]
    return [imap_string(bytes(data))]


def _has_nul(data: Piece) -> bool:
    if isinstance(data, bytes):
        return b"\0" in data
    return _NUL.search(data) is not None  # no copy of the view


def _binary_string(data: Piece) -> list[Piece]:
    # rfc3516:4.3 / rfc9051:7.5.2: a literal8 only when the data has a NUL,
    # otherwise a normal string (a literal: the data is arbitrary octets).
    if not data:
        return [b'""']
    if _has_nul(data):
        return [b"~{%d}\r\n" % len(data), data]
    return [b"{%d}\r\n" % len(data), data]


# --------------------------------------------------------------------------
# Sections


def _range(message: MessageData, start: Any, end: Any) -> tuple[int, int]:
    """Offsets of the file, clamped to it (as a slice would be)."""
    size = len(message.content())
    low = min(max(int(start), 0), size)
    return low, min(max(int(end), low), size)


def _slice(message: MessageData, start: Any, end: Any) -> bytes:
    return message.content()[int(start) : int(end)]


def _section_data(
    message: MessageData, section: Section, fields: bool = True
) -> tuple[int, int] | bytes:
    """rfc9051:6.4.5 BODY[<section>], before any partial: a range of the file
    (start, end), or computed bytes (HEADER.FIELDS, nothing). With ``fields``
    False, HEADER.FIELDS(.NOT) gives the whole header's range (a probe)."""
    root = message.summary.bodystructure
    text = section.text.upper()
    if not section.part:
        if text == "":  # the whole message, header included
            return 0, len(message.content())
        if text == "MIME":  # needs a part number (rfc9051:6.4.5)
            return b""
        entity: Mapping[str, Any] = root
    else:
        part = find_part(root, section.part)
        if part is None:
            return b""
        if text == "":
            # The part's body without its MIME header; for message/rfc822 the
            # whole encapsulated message; for part 1 of a single-part message
            # the message body.
            return _range(message, part["body_start"], part["body_end"])
        if text == "MIME":
            return _range(message, part["header_start"], part["body_start"])
        inner = part.get("body")
        # HEADER and TEXT only of message/rfc822 (and message/global) parts:
        # the header and body of the encapsulated message.
        if not isinstance(inner, Mapping):
            return b""
        entity = inner
    if text == "TEXT":
        return _range(message, entity["body_start"], entity["body_end"])
    if text == "HEADER" or (not fields and text.startswith("HEADER")):
        return _range(message, entity["header_start"], entity["body_start"])
    header = _slice(message, entity["header_start"], entity["body_start"])
    if text == "HEADER.FIELDS":
        return _header_fields(header, section.fields, exclude=False)
    if text == "HEADER.FIELDS.NOT":
        return _header_fields(header, section.fields, exclude=True)
    return b""


def _header_fields(header: bytes, names: Sequence[str], *, exclude: bool) -> bytes:
    """rfc9051:6.4.5 HEADER.FIELDS (or .NOT with ``exclude``): the fields whose
    name is (is not) in ``names``, compared case-insensitively, in message
    order with their continuation lines, then the blank line (rfc9051:7.5.2)."""
    wanted = {n.upper() for n in names}
    out: list[bytes] = []
    keep = exclude  # a continuation line before any field belongs to none
    eol = b""
    pos, size = 0, len(header)
    find = header.find
    while pos < size:
        nl = find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        line = header[pos:end]
        pos = end
        if line in (b"\r\n", b"\n", b"\r"):
            if line != b"\r":
                eol = line
            break
        if not eol:
            eol = b"\r\n" if line.endswith(b"\r\n") else b"\n" if nl >= 0 else b""
        if line[0] not in (0x20, 0x09):  # not a continuation (rfc5322:2.2.3)
            colon = line.find(b":")
            name = line[:colon].rstrip(b" \t").decode("latin-1").upper() if colon > 0 else ""
            keep = (name in wanted) != exclude
        if keep:
            out.append(line)
    eol = eol or b"\r\n"
    if out and not out[-1].endswith(b"\n"):
        out.append(eol)  # the header ended without a line end
    out.append(eol)
    return b"".join(out)


# --------------------------------------------------------------------------
# BINARY (rfc3516, rfc9051:6.4.5)


def _binary_part(message: MessageData, path: Sequence[int]) -> Mapping[str, Any] | None:
    return find_part(message.summary.bodystructure, path) if path else None


def _is_leaf(part: Mapping[str, Any]) -> bool:
    return "parts" not in part


def _encoding(part: Mapping[str, Any]) -> str:
    return str(part.get("encoding") or "7bit").strip().lower()


def _binary_data(message: MessageData, path: Sequence[int]) -> Piece:
    """The section's content with its Content-Transfer-Encoding removed;
    decoded once per message (kept in the MessageData)."""
    key = tuple(path)
    data = message._binary.get(key)
    if data is None:
        data = message._binary[key] = _decode_binary(message, key)
    return data


def _decode_binary(message: MessageData, path: Sequence[int]) -> Piece:
    if not path:
        return message.content()  # BINARY[]: the whole message, unchanged
    part = _binary_part(message, path)
    if part is None:
        return b""
    start, end = _range(message, part["body_start"], part["body_end"])
    if not _is_leaf(part):
        return memoryview(message.content())[start:end]
    encoding = _encoding(part)
    if encoding in _IDENTITY_CTE:
        return memoryview(message.content())[start:end]
    raw = message.content()[start:end]
    if encoding == "base64":
        return _decode_base64(raw)
    if encoding == "quoted-printable":
        return decode_quoted_printable(raw)
    section = ".".join(str(n) for n in path)
    raise FetchError(
        f"Unknown Content-Transfer-Encoding {encoding!r} in part {section}", "UNKNOWN-CTE"
    )


def _binary_size(message: MessageData, path: Sequence[int]) -> int:
    """rfc9051:7.5.2 BINARY.SIZE: the length BINARY would send; the file is
    not read when the summary already knows it."""
    if path:
        part = _binary_part(message, path)
        if part is None:
            return 0
        if not _is_leaf(part) or _encoding(part) in _IDENTITY_CTE:
            return max(0, int(part["body_end"]) - int(part["body_start"]))
    return len(_binary_data(message, path))


def _decode_base64(raw: bytes) -> bytes:
    # rfc2045:6.8: characters outside the alphabet are ignored; "=" ends the
    # data. A dangling single character cannot encode a byte and is dropped.
    end = raw.find(b"=")
    clean = (raw if end < 0 else raw[:end]).translate(None, _NOT_BASE64)
    usable = len(clean) - (len(clean) % 4 == 1)
    clean = clean[:usable]
    return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


# --------------------------------------------------------------------------
# Responses straight from index rows (issue 17)

ROW_KINDS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "MODSEQ", "ENVELOPE"})
"""Items a ``FetchRow`` answers alone: no summary, no message file."""

# Columns of a FetchRow (estafeta.store.reader).
_UID = itemgetter(0)
_SIZE = itemgetter(2)
_DATE = itemgetter(3)
_FLAGS = itemgetter(4)
_MODSEQ = itemgetter(5)
_ENVELOPE = itemgetter(7)
_CACHE_SIZE = 65_536  # texts kept per cache; past it the cache starts over


class _FlagsText(dict[str, bytes]):
    """FLAGS values by the index's flags column, as ``_value`` renders them:
    a mailbox has few distinct flag sets."""

    def __missing__(self, text: str) -> bytes:
        if len(self) >= _CACHE_SIZE:
            self.clear()
        value = self[text] = b"(" + " ".join(text.split()).encode("utf-8", "surrogateescape") + b")"
        return value


class _DayText(dict[int, bytes]):
    """``"dd-Mon-yyyy `` of ``_internal_date`` by day since the epoch."""

    def __missing__(self, day: int) -> bytes:
        if len(self) >= _CACHE_SIZE:
            self.clear()
        value = self[day] = _internal_date(day * 86_400)[:13]
        return value


_DAYS = _DayText()


class _DateText(dict[int, bytes]):
    """INTERNALDATE values by timestamp, the same bytes as ``_internal_date``
    (UTC: a day is 86,400 POSIX seconds), the date part cached by day."""

    def __missing__(self, timestamp: int) -> bytes:
        if len(self) >= _CACHE_SIZE:
            self.clear()
        day, second = divmod(min(max(timestamp, 0), _MAX_TIME), 86_400)
        value = self[timestamp] = b'%s%02d:%02d:%02d +0000"' % (
            _DAYS[day],
            second // 3600,
            second // 60 % 60,
            second % 60,
        )
        return value


class RowFormat:
    """``* n FETCH (...)`` lines for item lists made of ``ROW_KINDS`` only,
    rendered straight from index rows: one template with a ``%`` field per
    item, in the order asked, repeated items answered once (as
    ``render_pieces`` does). The values come from the row's columns through
    C-level ``map``s; FLAGS and INTERNALDATE texts are cached for the
    command (messages share flag sets and dates). Nothing here can fail on
    a well-formed row, and nothing reads a file.
    """

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(dict.fromkeys(kinds))
        fields = []
        for kind in self.kinds:
            if kind not in ROW_KINDS:
                raise ValueError(f"{kind} is not answered from the index row")
            value = b"%d" if kind in ("UID", "RFC822.SIZE") else b"%s"
            if kind == "MODSEQ":
                value = b"(%d)"  # rfc7162:3.1.4
            fields.append(kind.encode("ascii") + b" " + value)
        self.template = b"* %d FETCH (" + b" ".join(fields) + b")\r\n"
        self.wants_envelope = "ENVELOPE" in self.kinds
        self._flags = _FlagsText()
        self._dates = _DateText()

    @classmethod
    def for_items(cls, atts: Sequence[FetchAtt]) -> RowFormat | None:
        """The format for ``atts``, or None when one of them needs more than
        the row (a summary, the message file)."""
        kinds = [_kind(att) for att in atts]
        if not kinds or not ROW_KINDS.issuperset(kinds):
            return None
        return cls(kinds)

    def lines(self, seqs: Iterable[int], rows: Sequence[FetchRow]) -> Iterator[bytes]:
        """One response line per row, with the sequence numbers ``seqs``,
        rendered as they are taken: the caller holds the rows and the lines
        not sent yet, never a second copy of all of them. With ENVELOPE,
        every row must have its envelope (``with_envelopes``)."""
        columns: list[Iterable[Any]] = []
        for kind in self.kinds:
            if kind == "UID":
                columns.append(map(_UID, rows))
            elif kind == "FLAGS":
                columns.append(map(self._flags.__getitem__, map(_FLAGS, rows)))
            elif kind == "RFC822.SIZE":
                columns.append(map(_SIZE, rows))
            elif kind == "INTERNALDATE":
                columns.append(map(self._dates.__getitem__, map(_DATE, rows)))
            elif kind == "MODSEQ":
                columns.append(map(_MODSEQ, rows))
            else:
                columns.append(map(_ENVELOPE, rows))
        return map(self.template.__mod__, zip(seqs, *columns, strict=True))

    def lacks_envelopes(self, rows: Sequence[FetchRow]) -> bool:
        """Whether ENVELOPE is asked for and a row has none (see below)."""
        return self.wants_envelope and None in map(_ENVELOPE, rows)

    @staticmethod
    def with_envelopes(rows: Sequence[FetchRow]) -> list[FetchRow]:
        """``rows`` (read with their summary) with the envelope rendered from
        the summary where the index has none (rows from before schema 3)."""
        return [
            row
            if row[7] is not None
            else (*row[:7], imap_envelope(Summary.from_json(row[6] or "").envelope))
            for row in rows
        ]
