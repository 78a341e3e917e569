"""What IMAP needs precomputed for a message: ENVELOPE, BODYSTRUCTURE, sizes.

``summarize`` runs once per delivered message. It scans the raw bytes once,
top-down: the header of each entity is read line by line, and the body of a
multipart is split by searching for its boundary delimiter lines
(rfc2046:5.1.1), recursing into every part and into message/rfc822 bodies. No
body is decoded and nothing is copied except header values, so the cost is
dominated by a few ``bytes.find``/``bytes.count`` passes in C.

Choices (each one of several that IMAP servers make):

* Everything is measured in bytes of the data *as given*: offsets, sizes and
  line counts (the number of LF bytes in a body). A message stored with LF
  line ends therefore reports LF sizes; store CRLF if the IMAP sizes must be
  those of the wire form.
* Header values in the ENVELOPE and BODYSTRUCTURE are raw: unfolded
  (rfc5322:2.2.3, CRLF before WSP removed), leading/trailing blanks trimmed,
  never RFC 2047 decoded (clients decode, rfc3501:7.4.2). Bytes are decoded as
  UTF-8 with ``surrogateescape``: RFC 6532 UTF-8 headers become ordinary text
  and any other 8-bit byte survives as a lone surrogate, which ``imap_string``
  turns back into the very same byte and JSON stores as an ``\\udcXX`` escape.
* The summary fields meant for SEARCH/SORT (``subject``, addresses, ids) are
  clean text instead: UTF-8, or Latin-1 when the bytes are not UTF-8, with
  RFC 2047 encoded-words decoded in ``subject``.
* Media type, subtype, parameter names and values, the transfer encoding and
  the disposition keep the case they have in the message; defaults are the
  lower-case ``"text" "plain" ("charset" "us-ascii")`` and ``"7bit"``, as
  Dovecot writes them. A text part without a charset parameter gets
  ``charset=us-ascii`` appended (rfc2046:4.1.2).
* RFC 2231 parameters are kept raw, like Dovecot: continuations are merged
  (``name*0``/``name*1`` become ``name``; ``name*0*``/``name*1*`` become
  ``name*`` whose value still carries ``charset'lang'%XX``); nothing is
  charset-decoded. Decoding is the client's business (rfc2231:3, rfc2231:4).
* Parse errors never raise. A syntactically invalid Content-Type, and a
  multipart without a boundary, count as text/plain; charset=us-ascii
  (rfc2045:5.2); a multipart without any delimiter line gets one empty
  text/plain part, since the grammar needs at least one (rfc3501:9 body-type-mpart);
  a missing close delimiter ends the last part at the end of the data.
* Nesting of multipart and message/rfc822 is capped at ``MAX_DEPTH``; a
  container deeper than that is reported as an opaque application/octet-stream
  leaf, so neither parsing nor serialising can exhaust the stack. The number
  of parts is bounded the same way (``MAX_PARTS``: a multipart's last part
  runs to the end of its body, containers past the limit are opaque), and so
  is the parsed length of structured header values (``STRUCTURED_LIMIT``).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

log = logging.getLogger(__name__)

# A part is a JSON object; see ``_leaf`` for its keys.
Part = dict[str, Any]

MAX_DEPTH = 100
"""Deepest nesting of multipart / message/rfc822 containers that is parsed."""

MAX_PARTS = 5_000
"""About how many MIME parts of one message are parsed (at most twice this).
Past it a multipart's last part runs to the end of its body and further
containers are opaque leaves."""

STRUCTURED_LIMIT = 65_536
"""Bytes of an address or Content-* header value that are parsed; the raw
header itself is untouched. Bounds the cost of hostile headers."""

LITERAL_THRESHOLD = 1024
"""Strings longer than this many bytes are sent as literals, not quoted."""

# Placeholders (Dovecot uses the same) for an address without a local part or
# domain: the host must not be NIL, which would make it a group marker
# (rfc3501:7.4.2).
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

_ENVELOPE_ADDRESS_SLOTS = frozenset(range(2, 8))
_ENCAPSULATING = frozenset({"rfc822", "global"})  # message/* subtypes holding a message


@dataclass(frozen=True)
class Summary:
    """Everything about a message that IMAP wants without reading the file.

    ``bodystructure`` is the root part, a dict with these keys:

    * ``type``, ``subtype``: str, as written (defaults lower-case);
    * ``params``: list of ``[name, value]`` (Content-Type parameters);
    * ``id``, ``description``, ``md5``, ``location``: str or None
      (Content-ID, Content-Description, Content-MD5, Content-Location);
    * ``encoding``: str, Content-Transfer-Encoding or ``"7bit"``;
    * ``disposition``: ``[type, params]`` or None; ``language``: list or None;
    * ``size``: octets of the body; ``lines``: LF count of the body (leaves
      and message parts only, not multiparts);
    * ``header_start``, ``body_start``, ``body_end``: byte offsets in the
      message. ``data[header_start:body_start]`` is the part's MIME header
      (BODY[n.MIME]) including the blank line, ``data[body_start:body_end]``
      its body (BODY[n]);
    * multipart only: ``parts``, a non-empty list of parts;
    * message/rfc822 and message/global only: ``envelope`` and ``body`` (the
      encapsulated message's root part, whose header is BODY[n.HEADER] and
      whose body is BODY[n.TEXT]).
    """

    header_size: int
    envelope: list[Any]
    bodystructure: Part
    subject: str
    from_addr: str
    to_addrs: list[str]
    cc_addrs: list[str]
    date: float | None
    message_id: str | None
    in_reply_to: str | None
    references: list[str]

    def to_json(self) -> str:
        # ensure_ascii keeps lone surrogates (8-bit header bytes) as \udcXX
        # escapes, so the JSON is plain ASCII and round-trips exactly.
        return json.dumps(
            {
                "header_size": self.header_size,
                "envelope": self.envelope,
                "bodystructure": self.bodystructure,
                "subject": self.subject,
                "from_addr": self.from_addr,
                "to_addrs": self.to_addrs,
                "cc_addrs": self.cc_addrs,
                "date": self.date,
                "message_id": self.message_id,
                "in_reply_to": self.in_reply_to,
                "references": self.references,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, s: str) -> Summary:
        """Inverse of ``to_json``; ValueError if ``s`` is not such a document."""
        obj = json.loads(s)
        if not isinstance(obj, dict):
            raise ValueError("summary JSON is not an object")
        try:
            date = obj["date"]
            envelope = obj["envelope"]
            bodystructure = obj["bodystructure"]
            if not isinstance(envelope, list) or not isinstance(bodystructure, dict):
                raise ValueError("summary JSON has a malformed envelope or bodystructure")
            return cls(
                header_size=int(obj["header_size"]),
                envelope=envelope,
                bodystructure=bodystructure,
                subject=str(obj["subject"]),
                from_addr=str(obj["from_addr"]),
                to_addrs=[str(a) for a in obj["to_addrs"]],
                cc_addrs=[str(a) for a in obj["cc_addrs"]],
                date=None if date is None else float(date),
                message_id=_opt_str(obj["message_id"]),
                in_reply_to=_opt_str(obj["in_reply_to"]),
                references=[str(r) for r in obj["references"]],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"summary JSON is missing or mistypes a field: {exc}") from exc


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------
# Entry point


def summarize(data: bytes) -> Summary:
    """Compute the Summary of a raw message. Never raises."""
    try:
        return _summarize(data)
    except Exception:  # a bug, not bad input: bad input is handled below
        log.exception("summarize failed; storing a minimal summary")
        return _fallback_summary(data)


def _summarize(data: bytes) -> Summary:
    fields, body_start = _parse_header(data, 0, len(data))
    root = _build_part(_Context(data), fields, 0, body_start, len(data), 0, False)
    envelope = _envelope(fields)
    from_list = _mailboxes(envelope[2])
    subject_raw = fields.get("subject")
    return Summary(
        header_size=body_start,
        envelope=envelope,
        bodystructure=root,
        subject=""
        if subject_raw is None
        else decode_rfc2047(_clean_text(_structured(subject_raw))),
        from_addr=from_list[0] if from_list else "",
        to_addrs=_mailboxes(envelope[5]),
        cc_addrs=_mailboxes(envelope[6]),
        date=_parse_date(fields.get("date")),
        message_id=_first_msgid(fields.get("message-id"), fallback_raw=True),
        in_reply_to=_first_msgid(fields.get("in-reply-to"), fallback_raw=False),
        references=_thread_refs(fields.get("references")),
    )


# Fields a server puts on top of a message it delivers, none of which the
# Summary reads: ``with_fields`` may add these without a new parse.
_TRACE_FIELDS = frozenset(
    {
        "return-path",
        "received",
        "authentication-results",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "delivered-to",
    }
)


def with_fields(summary: Summary, data: bytes, at: int, lines: bytes) -> Summary | None:
    """The Summary of ``data[:at] + lines + data[at:]``, made from ``summary``
    (``summarize(data)``) without parsing again: the offsets past ``at`` move
    by ``len(lines)``, nothing else changes. None when that is not certain
    and the caller must ``summarize`` the new bytes:

    - ``lines`` must be whole header fields (rfc5322:2.2) of the kinds a
      delivering server adds (trace fields, rfc5321:4.4, and our
      ``X-Spam-*``), which the Summary does not read;
    - ``at`` must be the start of a field in ``data``'s header, or its end
      (the empty line), so that the inserted fields neither continue a
      folded field nor end the header early.
    """
    n = len(lines)
    if n == 0:
        return summary
    if not (0 <= at < summary.header_size <= len(data)) or (at and data[at - 1] != 0x0A):
        return None
    if data[at] in (0x20, 0x09) or not lines.endswith(b"\n") or lines[0] in (0x20, 0x09):
        return None
    if at == 0 and _FIELD_NAME_RE.match(data, 0) is None and data[:1] not in (b"\r", b"\n"):
        return None  # data has no header: the inserted lines would make one
    fields, end = _split_header(lines, 0, n)
    if end != n or not fields:
        return None  # an empty line, or a line that is not a field
    for name, _, _ in fields:
        if name not in _TRACE_FIELDS and not name.startswith("x-spam-"):
            return None
    return Summary(
        header_size=summary.header_size + n,
        envelope=summary.envelope,
        bodystructure=_moved(summary.bodystructure, at, n),
        subject=summary.subject,
        from_addr=summary.from_addr,
        to_addrs=summary.to_addrs,
        cc_addrs=summary.cc_addrs,
        date=summary.date,
        message_id=summary.message_id,
        in_reply_to=summary.in_reply_to,
        references=summary.references,
    )


_OFFSETS = ("header_start", "body_start", "body_end")


def _moved(part: Part, at: int, n: int) -> Part:
    """A copy of ``part`` whose offsets past ``at`` are ``n`` further on."""
    moved = dict(part)
    for key in _OFFSETS:
        value = moved.get(key)
        if isinstance(value, int) and value > at:
            moved[key] = value + n
    if "parts" in moved:
        moved["parts"] = [_moved(child, at, n) for child in moved["parts"]]
    if "body" in moved:
        moved["body"] = _moved(moved["body"], at, n)
    return moved


def _fallback_summary(data: bytes) -> Summary:
    """Used only if ``_summarize`` has a bug: the whole data as a text body."""
    root = _leaf("text", "plain", [["charset", "us-ascii"]], {}, 0, 0, len(data))
    root["lines"] = data.count(b"\n")
    return Summary(
        header_size=0,
        envelope=[None] * 10,
        bodystructure=root,
        subject="",
        from_addr="",
        to_addrs=[],
        cc_addrs=[],
        date=None,
        message_id=None,
        in_reply_to=None,
        references=[],
    )


# --------------------------------------------------------------------------
# Header scanning

# rfc5322:3.6.8 field-name = 1*ftext (printable US-ASCII except ":"); some
# mailers put blanks before the colon, which we accept.
_FIELD_NAME_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def _split_header(data: bytes, start: int, end: int) -> tuple[list[tuple[str, int, int]], int]:
    """Split the header of the entity in ``data[start:end]`` into fields.

    Returns every field in order as (lower-cased name, start, end of its raw
    value after the colon, folding included) and the offset where the body
    starts: after the empty line, or at the first line that is neither a field
    nor a continuation (a header missing its separator), or ``end``.
    """
    fields: list[tuple[str, int, int]] = []
    name: str | None = None
    vstart = vend = 0
    pos = start
    find = data.find
    while pos < end:
        nl = find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        c = data[pos]
        if c == 0x0A or (
            c == 0x0D and (line_end - pos == 1 or (line_end - pos == 2 and data[pos + 1] == 0x0A))
        ):
            if name is not None:
                fields.append((name, vstart, vend))
            return fields, line_end
        if c == 0x20 or c == 0x09:  # rfc5322:2.2.3 folded continuation
            if name is not None:
                vend = line_end
            pos = line_end
            continue
        m = _FIELD_NAME_RE.match(data, pos, line_end)
        if name is not None:
            fields.append((name, vstart, vend))
            name = None
        if m is None:
            return fields, pos
        name = m.group(1).decode("ascii").lower()
        vstart = m.end()
        vend = line_end
        pos = line_end
    if name is not None:
        fields.append((name, vstart, vend))
    return fields, end


def _parse_header(data: bytes, start: int, end: int) -> tuple[dict[str, bytes], int]:
    """The first occurrence of each field of the header in ``data[start:end]``
    (lower-cased name -> raw value bytes) and where the body starts (see
    ``_split_header``)."""
    fields, body = _split_header(data, start, end)
    first: dict[str, bytes] = {}
    for name, vstart, vend in fields:
        if name not in first:
            first[name] = data[vstart:vend]
    return first, body


def _unfold(raw: bytes) -> bytes:
    # rfc5322:2.2.3: unfolding removes the CRLF before each continuation's WSP.
    return raw.replace(b"\r\n", b"").replace(b"\n", b"").strip(b" \t\r")


def _structured(raw: bytes) -> bytes:
    """Unfolded value cut to STRUCTURED_LIMIT, at a list comma if there is one."""
    value = _unfold(raw)
    if len(value) > STRUCTURED_LIMIT:
        comma = value.rfind(b",", 0, STRUCTURED_LIMIT)
        value = value[: comma if comma > 0 else STRUCTURED_LIMIT]
    return value


def _raw_text(raw: bytes) -> str:
    """Faithful text: UTF-8, other bytes kept as lone surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def _clean_text(raw: bytes) -> str:
    """Human text for SEARCH/SORT: UTF-8, or Latin-1 if the bytes are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _desurrogate(s: str) -> str:
    """Turn surrogate-escaped bytes back into clean text (see _clean_text)."""
    if s.isascii():
        return s
    return _clean_text(s.encode("utf-8", "surrogateescape"))


def _field(fields: Mapping[str, bytes], name: str) -> str | None:
    raw = fields.get(name)
    return None if raw is None else _raw_text(_unfold(raw))


# --------------------------------------------------------------------------
# MIME structure


def _leaf(
    type_: str,
    subtype: str,
    params: list[list[str]],
    fields: Mapping[str, bytes],
    header_start: int,
    body_start: int,
    body_end: int,
) -> Part:
    return {
        "type": type_,
        "subtype": subtype,
        "params": params,
        "id": _field(fields, "content-id"),
        "description": _field(fields, "content-description"),
        "encoding": _encoding(fields),
        "size": body_end - body_start,
        "md5": _field(fields, "content-md5"),
        "disposition": _disposition(fields),
        "language": _language(fields),
        "location": _field(fields, "content-location"),
        "header_start": header_start,
        "body_start": body_start,
        "body_end": body_end,
    }


def _default_type(in_digest: bool) -> tuple[str, str, list[list[str]]]:
    if in_digest:  # rfc2046:5.1.5
        return "message", "rfc822", []
    return "text", "plain", [["charset", "us-ascii"]]  # rfc2045:5.2


class _Context:
    """The message being parsed and how many more parts may be parsed."""

    __slots__ = ("data", "parts_left")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parts_left = MAX_PARTS


def _build_part(
    ctx: _Context,
    fields: Mapping[str, bytes],
    header_start: int,
    body_start: int,
    body_end: int,
    depth: int,
    in_digest: bool,
) -> Part:
    data = ctx.data
    ctx.parts_left -= 1
    raw_ct = fields.get("content-type")
    parsed = None if raw_ct is None else _parse_content_type(_raw_text(_structured(raw_ct)))
    if parsed is None:
        # Absent: the context's default; invalid: text/plain (rfc2045:5.2).
        type_, subtype, params = _default_type(in_digest and raw_ct is None)
    else:
        type_, subtype, params = parsed
    ltype, lsub = type_.lower(), subtype.lower()

    children: list[tuple[int, int]] | None = None
    if ltype == "multipart":
        boundary = _boundary(params)
        if boundary is None:  # a multipart without boundary is invalid: rfc2045:5.2
            type_, subtype, params = _default_type(False)
            ltype = "text"
        elif depth >= MAX_DEPTH or ctx.parts_left <= 0:
            type_, subtype, params = "application", "octet-stream", []
            ltype = "application"
        else:
            max_parts = max(1, ctx.parts_left)
            children = _split_multipart(data, body_start, body_end, boundary, max_parts)
    elif (
        ltype == "message"
        and lsub in _ENCAPSULATING
        and (depth >= MAX_DEPTH or ctx.parts_left <= 0)
    ):
        type_, subtype, params = "application", "octet-stream", []
        ltype = "application"
    if ltype == "text" and not any(k.lower() == "charset" for k, _ in params):
        params.append(["charset", "us-ascii"])  # rfc2046:4.1.2

    part = _leaf(type_, subtype, params, fields, header_start, body_start, body_end)
    if children is not None:
        sub_digest = lsub == "digest"
        parts: list[Part] = []
        for start, end in children:
            child_fields, child_body = _parse_header(data, start, end)
            parts.append(
                _build_part(ctx, child_fields, start, child_body, end, depth + 1, sub_digest)
            )
        if not parts:
            # rfc3501:9 body-type-mpart needs 1*body; Dovecot also shows an
            # empty text/plain part here.
            empty = _leaf(
                "text", "plain", [["charset", "us-ascii"]], {}, body_end, body_end, body_end
            )
            empty["lines"] = 0
            parts.append(empty)
        part["parts"] = parts
        return part

    part["lines"] = data.count(b"\n", body_start, body_end)
    if ltype == "message" and lsub in _ENCAPSULATING:
        # rfc3501:7.4.2 / rfc9051:7.5.2: the encapsulated message's envelope
        # and body structure. rfc2046:5.2.1 allows only 7bit/8bit/binary here;
        # an encoded body is parsed anyway and simply yields NILs.
        inner_fields, inner_body = _parse_header(data, body_start, body_end)
        part["envelope"] = _envelope(inner_fields)
        part["body"] = _build_part(
            ctx, inner_fields, body_start, inner_body, body_end, depth + 1, False
        )
    return part


def _boundary(params: Sequence[Sequence[str]]) -> bytes | None:
    value: str | None = None
    for k, v in params:
        key = k.lower()
        if key == "boundary":
            value = v
            break
        if key == "boundary*" and value is None:
            value = _rfc2231_value(v)
    if not value:
        return None
    return value.encode("utf-8", "surrogateescape")


def _split_multipart(
    data: bytes, body_start: int, body_end: int, boundary: bytes, max_parts: int
) -> list[tuple[int, int]]:
    """Regions ``(start, end)`` of the body parts of a multipart body.

    rfc2046:5.1.1: a delimiter line is "--" boundary, "--" more for the close
    delimiter, optional transport padding (blanks), then the line end. The
    line break before it belongs to the delimiter, not to the preceding part.
    Text before the first delimiter (preamble) and after the close delimiter
    (epilogue) is not part of any body part. Without a close delimiter the
    last part ends where the multipart's body ends, as does the
    ``max_parts``-th part.
    """
    delim = b"--" + boundary
    dlen = len(delim)
    find = data.find
    regions: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = body_start
    while True:
        i = find(delim, pos, body_end)
        if i < 0:
            break
        pos = i + 1
        if i != body_start and data[i - 1] != 0x0A:
            continue  # not at the start of a line
        j = i + dlen
        closing = data.startswith(b"--", j) and j + 2 <= body_end
        if closing:
            j += 2
        while j < body_end and data[j] in b" \t":
            j += 1
        if j >= body_end:
            line_end = body_end
        elif data[j] == 0x0A:
            line_end = j + 1
        elif data[j] == 0x0D and (j + 1 == body_end or data[j + 1] == 0x0A):
            line_end = min(j + 2, body_end)
        else:
            continue  # "--boundaryX...": a longer boundary or content
        if part_start is not None:
            content_end = i
            if i > body_start:  # drop the line break that precedes the delimiter
                content_end -= 1
                if content_end > body_start and data[content_end - 1] == 0x0D:
                    content_end -= 1
            regions.append((part_start, max(part_start, content_end)))
        if closing:
            return regions
        part_start = line_end
        pos = line_end
        if len(regions) + 1 >= max_parts:
            break
    if part_start is not None:
        regions.append((part_start, body_end))
    return regions


# --------------------------------------------------------------------------
# Content-* header values (rfc2045:5.1, rfc2183:2, rfc2231)

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"?', re.S)
_PLAIN_RE = re.compile(r'[^"(;]+')
_COMMENT_PIECE_RE = re.compile(r"[^()\\]+|\\.?|[()]", re.S)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.S)
_CONTINUATION_RE = re.compile(r"(.+?)\*(\d+)(\*?)\Z", re.S)


def _skip_comment(s: str, pos: int) -> int:
    """``s[pos]`` is "("; return the index after the matching ")" (or len(s))."""
    end = _comment_closed(s, pos)
    return len(s) if end is None else end


def _mime_segments(s: str) -> list[list[tuple[bool, str]]]:
    """Split at ";" outside quoted strings and comments; drop comments.

    Each segment is a list of pieces ``(quoted, text)``; quoted pieces are
    unescaped quoted-string contents.
    """
    segments: list[list[tuple[bool, str]]] = []
    current: list[tuple[bool, str]] = []
    pos, n = 0, len(s)
    while pos < n:
        c = s[pos]
        if c == ";":
            segments.append(current)
            current = []
            pos += 1
        elif c == '"':
            m = _QUOTED_RE.match(s, pos)
            assert m is not None  # the pattern matches any string starting with '"'
            current.append((True, _QUOTED_PAIR_RE.sub(r"\1", m.group(1))))
            pos = m.end()
        elif c == "(":
            pos = _skip_comment(s, pos)
        else:
            m = _PLAIN_RE.match(s, pos)
            assert m is not None  # c is none of the characters it excludes
            current.append((False, m.group()))
            pos = m.end()
    segments.append(current)
    return segments


def _parse_mime_value(s: str) -> tuple[str, list[list[str]]]:
    """Split ``value *(";" attribute "=" value)``; lenient, never raises."""
    segments = _mime_segments(s)
    main = "".join(text for _, text in segments[0]).strip()
    raw_params: list[tuple[str, str]] = []
    for pieces in segments[1:]:
        attr_parts: list[str] = []
        value_pieces: list[tuple[bool, str]] = []
        seen_eq = False
        for quoted, text in pieces:
            if seen_eq:
                value_pieces.append((quoted, text))
            elif not quoted and "=" in text:
                left, right = text.split("=", 1)
                attr_parts.append(left)
                if right:
                    value_pieces.append((False, right))
                seen_eq = True
            else:
                attr_parts.append(text)
        attr = "".join(attr_parts).strip()
        if not seen_eq or not attr:
            continue
        value = "".join(text if quoted else text.strip() for quoted, text in value_pieces)
        raw_params.append((attr, value))
    return main, _merge_rfc2231(raw_params)


def _merge_rfc2231(raw: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Merge rfc2231:3 continuations; keep values encoded (see module doc)."""
    result: list[list[str]] = []
    seen: set[str] = set()
    # base name (lower) -> [index of its slot in result, {n: (extended, value)}]
    continued: dict[str, tuple[int, dict[int, tuple[bool, str]]]] = {}
    for attr, value in raw:
        m = _CONTINUATION_RE.match(attr)
        if m is not None and (m.group(2) == "0" or not m.group(2).startswith("0")):
            base, number, star = m.group(1), int(m.group(2)), m.group(3) == "*"
            key = base.lower()
            if key not in continued:
                continued[key] = (len(result), {})
                result.append([base, ""])
            continued[key][1].setdefault(number, (star, value))
            continue
        key = attr.lower()
        if key in seen:
            continue
        seen.add(key)
        result.append([attr, value])
    for slot, pieces in continued.values():
        ordered = [pieces[n] for n in sorted(pieces)]
        if any(extended for extended, _ in ordered):
            # An unencoded piece must be percent-encoded to join encoded ones.
            value = "".join(
                v if ext else urllib.parse.quote(v.encode("utf-8", "surrogateescape"), safe="")
                for ext, v in ordered
            )
            result[slot] = [result[slot][0] + "*", value]
        else:
            result[slot][1] = "".join(v for _, v in ordered)
    # A merged name that duplicates a plain one keeps the first occurrence.
    deduped: list[list[str]] = []
    names: set[str] = set()
    for name, value in result:
        if name.lower() not in names:
            names.add(name.lower())
            deduped.append([name, value])
    return deduped


def _rfc2231_value(value: str) -> str:
    """Decode an rfc2231:4 ``charset'language'percent-encoded`` value."""
    parts = value.split("'", 2)
    charset, text = (parts[0], parts[2]) if len(parts) == 3 else ("us-ascii", value)
    # The header's raw octets (undecodable ones are surrogate-escaped in
    # ``text``), percent-decoded, then read in the declared charset.
    raw = urllib.parse.unquote_to_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        return raw.decode(charset or "us-ascii", "replace")
    except (LookupError, UnicodeError, ValueError):  # no such codec, or an odd one
        return raw.decode("latin-1")


def _parse_content_type(s: str) -> tuple[str, str, list[list[str]]] | None:
    main, params = _parse_mime_value(s)
    type_, slash, subtype = main.partition("/")
    type_, subtype = type_.strip(), subtype.strip()
    if not slash or not _TOKEN_RE.match(type_) or not _TOKEN_RE.match(subtype):
        return None
    return type_, subtype, params


def _encoding(fields: Mapping[str, bytes]) -> str:
    raw = fields.get("content-transfer-encoding")
    if raw is None:
        return "7bit"  # rfc2045:6.1
    main, _ = _parse_mime_value(_raw_text(_structured(raw)))
    return main or "7bit"


def _disposition(fields: Mapping[str, bytes]) -> list[Any] | None:
    raw = fields.get("content-disposition")
    if raw is None:
        return None
    main, params = _parse_mime_value(_raw_text(_structured(raw)))
    if not _TOKEN_RE.match(main):
        return None
    return [main, params]


def _language(fields: Mapping[str, bytes]) -> list[str] | None:
    raw = fields.get("content-language")
    if raw is None:
        return None
    text = _raw_text(_structured(raw))
    without_comments: list[str] = []
    pos = 0
    while (i := text.find("(", pos)) >= 0:
        without_comments.append(text[pos:i])
        pos = _skip_comment(text, i)
    without_comments.append(text[pos:])
    tags = [t.strip() for t in "".join(without_comments).split(",")]  # rfc3282:2
    tags = [t for t in tags if t]
    return tags or None


# --------------------------------------------------------------------------
# Envelope and addresses (rfc3501:7.4.2, rfc9051:7.5.2, rfc5322:3.4)

_ADDR_TOKEN_RE = re.compile(
    r"""
     (?P<ws>[ \t\r\n]+)
    |(?P<qs>"(?:[^"\\]|\\.)*"?)
    |(?P<dl>\[(?:[^\]\\]|\\.)*\]?)
    |(?P<sp>[<>@,;:.])
    |(?P<cm>\()
    |(?P<atom>[^ \t\r\n"\[<>@,;:.()]+)
    |(?P<other>.)
    """,
    re.X | re.S,
)

# A token: kind ("qs", "dl", "sp", "atom", "comment"), value (unescaped
# content for "qs" and "comment", else the text), raw text, blank before it.
_Token = tuple[str, str, str, bool]


def _unquote(text: str) -> str:
    """Contents of a quoted string (closing quote optional), pairs unescaped."""
    body = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
    return _QUOTED_PAIR_RE.sub(r"\1", body) if "\\" in body else body


def _address_tokens(s: str) -> list[_Token]:
    tokens: list[_Token] = []
    append = tokens.append
    space = False
    pos, n = 0, len(s)
    while pos < n:
        start = pos
        pos = n
        # finditer runs until a comment, which is skipped by hand (comments
        # nest), then restarts after it.
        for m in _ADDR_TOKEN_RE.finditer(s, start):
            kind = m.lastgroup
            if kind == "ws" or kind == "other":  # "other": a stray ")", a separator
                space = True
            elif kind == "cm":
                begin = m.start()
                pos = _skip_comment(s, begin)
                inner = s[begin + 1 : pos - 1 if s[pos - 1 : pos] == ")" else pos]
                append(("comment", _QUOTED_PAIR_RE.sub(r"\1", inner).strip(), "", space))
                space = True
                break
            else:
                assert kind is not None
                text = m.group()
                append((kind, _unquote(text) if kind == "qs" else text, text, space))
                space = False
    return tokens


def _phrase(tokens: Sequence[_Token]) -> str | None:
    """A display name or group name: words joined by one blank, unquoted."""
    words: list[str] = []
    for i, (_, value, _, space) in enumerate(tokens):
        if i and space:
            words.append(" ")
        words.append(value)
    text = "".join(words).strip()
    return text or None


def _join_raw(tokens: Sequence[_Token]) -> str:
    """A local part or domain as written, blanks dropped around dots."""
    out: list[str] = []
    prev = ""
    for i, (_, _, raw, space) in enumerate(tokens):
        if i and space and raw != "." and prev != ".":
            out.append(" ")
        out.append(raw)
        prev = raw
    return "".join(out)


def _split_at(tokens: Sequence[_Token], special: str) -> int:
    for i, tok in enumerate(tokens):
        if tok[0] == "sp" and tok[1] == special:
            return i
    return -1


def _addr_spec(tokens: Sequence[_Token]) -> tuple[str, str]:
    at = _split_at(tokens, "@")
    if at < 0:
        local, domain = _join_raw(tokens), ""
    else:
        local, domain = _join_raw(tokens[:at]), _join_raw(tokens[at + 1 :])
    return local or MISSING_MAILBOX, domain or MISSING_DOMAIN


def parse_addresses(value: str) -> list[list[str | None]]:
    """Parse an address-list header value into IMAP address structures.

    Each address is ``[name, adl, mailbox, host]``; group syntax becomes
    ``[None, None, groupname, None]`` ... ``[None, None, None, None]``
    (rfc3501:7.4.2). Names are unquoted but not RFC 2047 decoded. Lenient:
    anything unparseable is skipped, an unclosed group is closed at the end.
    """
    tokens = _address_tokens(value)
    result: list[list[str | None]] = []
    in_group = False
    phrase: list[_Token] = []
    comment: str | None = None
    angle: tuple[str | None, str, str] | None = None
    empty_angle = False

    def flush() -> None:
        nonlocal phrase, comment, angle, empty_angle
        if angle is not None:
            adl, mailbox, host = angle
            result.append([_phrase(phrase) or comment, adl, mailbox, host])
        elif phrase and not empty_angle:
            mailbox, host = _addr_spec(phrase)
            result.append([comment, None, mailbox, host])
        phrase, comment, angle, empty_angle = [], None, None, False

    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        kind, val = tok[0], tok[1]
        i += 1
        if kind == "comment":
            if val:
                comment = val
            continue
        if kind == "sp":
            if val == ",":
                flush()
                continue
            if val == ";":
                flush()
                if in_group:
                    result.append([None, None, None, None])
                    in_group = False
                continue
            if val == ":" and not in_group and angle is None:
                # rfc5322:3.4 group = display-name ":" [group-list] ";"
                result.append([None, None, _phrase(phrase) or "", None])
                in_group = True
                phrase, comment = [], None
                continue
            if val == "<" and angle is None and not empty_angle:
                j = i
                while j < n and not (tokens[j][0] == "sp" and tokens[j][1] == ">"):
                    j += 1
                inner = [t for t in tokens[i:j] if t[0] != "comment"]
                i = j + 1
                adl: str | None = None
                if inner and inner[0][0] == "sp" and inner[0][1] == "@":
                    colon = _split_at(inner, ":")  # rfc5322:4.4 obs-route
                    if colon >= 0:
                        adl = _join_raw(inner[:colon]) or None
                        inner = inner[colon + 1 :]
                if inner:
                    mailbox, host = _addr_spec(inner)
                    angle = (adl, mailbox, host)
                else:
                    empty_angle = True  # "<>": no address (a null reverse-path)
                continue
            if val == ">":
                continue
        if angle is None and not empty_angle:
            phrase.append(tok)
    flush()
    if in_group:
        result.append([None, None, None, None])
    return result


def _addresses(fields: Mapping[str, bytes], name: str) -> list[list[str | None]] | None:
    raw = fields.get(name)
    if raw is None:
        return None
    # Absent or empty: NIL (rfc3501:7.4.2).
    return parse_addresses(_raw_text(_structured(raw))) or None


def _envelope(fields: Mapping[str, bytes]) -> list[Any]:
    """rfc3501:7.4.2 ENVELOPE; absent string fields are NIL, empty ones ""."""
    from_ = _addresses(fields, "from")
    sender = _addresses(fields, "sender")
    reply_to = _addresses(fields, "reply-to")
    # rfc3501:7.4.2: Sender and Reply-To absent or empty default to From.
    if sender is None and from_ is not None:
        sender = [list(a) for a in from_]
    if reply_to is None and from_ is not None:
        reply_to = [list(a) for a in from_]
    return [
        _field(fields, "date"),
        _field(fields, "subject"),
        from_,
        sender,
        reply_to,
        _addresses(fields, "to"),
        _addresses(fields, "cc"),
        _addresses(fields, "bcc"),
        _field(fields, "in-reply-to"),
        _field(fields, "message-id"),
    ]


def _mailboxes(addresses: Sequence[Sequence[str | None]] | None) -> list[str]:
    """``mailbox@host`` (lower-cased, clean text) of each non-group address."""
    out: list[str] = []
    for _, _, mailbox, host in addresses or ():
        if mailbox is None or host is None:
            continue  # group markers
        addr = mailbox if host == MISSING_DOMAIN else f"{mailbox}@{host}"
        out.append(_desurrogate(addr).lower())
    return out


# --------------------------------------------------------------------------
# Other summary fields

_MSGID_RE = re.compile(rb"<([^<>]*)>")
_BLANKS_RE = re.compile(rb"\s+")


def _msgids(raw: bytes) -> list[str]:
    return [
        "<" + _clean_text(_BLANKS_RE.sub(b"", m.group(1))) + ">"
        for m in _MSGID_RE.finditer(raw)
        if m.group(1).strip()
    ]


def _first_msgid(raw: bytes | None, fallback_raw: bool) -> str | None:
    if raw is None:
        return None
    ids = _msgids(raw)
    if ids:
        return ids[0]
    text = _clean_text(_unfold(raw))
    return text if fallback_raw and text else None


def _thread_refs(raw: bytes | None) -> list[str]:
    """References as THREAD reads it (estafeta.message.sortkeys.valid_ids:
    the peer's reading of malformed ids, so both link the same messages)."""
    from estafeta.message.sortkeys import valid_ids  # sortkeys imports this module

    return [] if raw is None else valid_ids(_clean_text(_unfold(raw)))


def _all_msgids(raw: bytes | None) -> list[str]:
    return [] if raw is None else _msgids(raw)


def _parse_date(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    text = _clean_text(_unfold(raw))
    try:
        parsed = parsedate_to_datetime(text)
        if parsed.tzinfo is None:  # "-0000": time in UTC, zone unknown (rfc5322:3.3)
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")


# Text codecs that are no mail charset, and whose decoders are quadratic (a
# 60 KB punycode Subject took 0.8 s of CPU in every summary).
_REFUSED_CHARSETS = frozenset({"punycode", "idna"})


def _decode_word(charset: str, encoding: str, text: str) -> tuple[str, bytes] | None:
    charset = charset.split("*", 1)[0]  # rfc2231:5 charset*language
    try:
        if codecs.lookup(charset).name in _REFUSED_CHARSETS:
            return None
        b"x".decode(charset, "replace")  # LookupError also for non-text codecs ("hex")
        raw = text.encode("ascii")
        if encoding in "Bb":
            decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4))
        else:
            decoded = binascii.a2b_qp(raw, header=True)
        # Some text codecs (punycode, idna) raise even with "replace".
        decoded.decode(charset, "replace")
    except (LookupError, UnicodeError, binascii.Error, ValueError):
        return None
    return charset, decoded


def _decode_run(raw: bytes, charset: str) -> str:
    """Adjacent encoded-words' bytes as text; Latin-1 if the charset fails on
    the joined bytes although it took each word (see ``_decode_word``)."""
    try:
        return raw.decode(charset, "replace")
    except (LookupError, UnicodeError):
        return raw.decode("latin-1")


def decode_rfc2047(value: str) -> str:
    """Decode rfc2047 encoded-words; broken ones are left as written.

    Blanks between adjacent encoded-words are dropped (rfc2047:6.2), and
    adjacent words in one charset are joined before decoding, so characters
    split across words survive.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    run_charset = ""  # charset of the run of adjacent encoded-words, "" if none
    run = bytearray()
    pos = 0
    for m in _ENCODED_WORD_RE.finditer(value):
        gap = value[pos : m.start()]
        pos = m.end()
        word = _decode_word(m.group(1), m.group(2), m.group(3))
        adjacent = bool(run_charset) and not gap.strip(" \t")
        if word is None or not adjacent or word[0].lower() != run_charset.lower():
            if run_charset:
                out.append(_decode_run(bytes(run), run_charset))
                run.clear()
                run_charset = ""
            if word is None or not adjacent:
                out.append(gap)
        if word is None:
            out.append(m.group())
        else:
            run_charset = word[0]
            run.extend(word[1])
    if run_charset:
        out.append(_decode_run(bytes(run), run_charset))
    out.append(value[pos:])
    return "".join(out)


# --------------------------------------------------------------------------
# IMAP serialisation (rfc3501:9 / rfc9051:9 formal syntax)


def imap_string(value: str | bytes | None) -> bytes:
    """NIL, a quoted string, or a literal.

    A literal is used when the value has CR, LF or 8-bit bytes (not allowed
    in quoted, rfc3501:9 QUOTED-CHAR) or is longer than LITERAL_THRESHOLD.
    NUL bytes cannot be sent in either form and are dropped. Text is encoded
    as UTF-8, surrogate-escaped bytes as the original bytes.
    """
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        if len(value) <= 64:  # type names, parameters, ...: they repeat a lot
            return _short_imap_string(value)
        value = value.encode("utf-8", "surrogateescape")
    return _imap_bytes(value)


@functools.lru_cache(maxsize=1024)
def _short_imap_string(value: str) -> bytes:
    return _imap_bytes(value.encode("utf-8", "surrogateescape"))


def _imap_bytes(data: bytes) -> bytes:
    if b"\0" in data:
        data = data.replace(b"\0", b"")
    if len(data) > LITERAL_THRESHOLD or not data.isascii() or b"\r" in data or b"\n" in data:
        return b"{%d}\r\n%s" % (len(data), data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_utf8_string(value: str) -> bytes:
    """A string for a session that enabled UTF8=ACCEPT: quoted when it fits
    (rfc6855:3, rfc9051:9 QUOTED-CHAR =/ UTF8-2 / UTF8-3 / UTF8-4: UTF-8 is
    allowed in quoted strings), a literal for CR, LF, text that is not
    valid UTF-8 (surrogate escapes) or past LITERAL_THRESHOLD."""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return imap_string(value)
    if len(data) > LITERAL_THRESHOLD or b"\r" in data or b"\n" in data or b"\0" in data:
        return imap_string(value)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _imap_address_list(addresses: Sequence[Sequence[str | None]] | None) -> bytes:
    if not addresses:
        return b"NIL"
    out = [b"("]
    for address in addresses:
        out.append(b"(")
        out.append(b" ".join(imap_string(v) for v in address))
        out.append(b")")
    out.append(b")")
    return b"".join(out)


def imap_envelope(envelope: Sequence[Any]) -> bytes:
    """Serialise an envelope list as rfc3501:9 ``envelope``."""
    items = [
        _imap_address_list(v) if i in _ENVELOPE_ADDRESS_SLOTS else imap_string(v)
        for i, v in enumerate(envelope)
    ]
    return b"(" + b" ".join(items) + b")"


def _imap_params(params: Sequence[Sequence[str]] | None) -> bytes:
    if not params:
        return b"NIL"  # rfc3501:9 body-fld-param
    return b"(" + b" ".join(imap_string(v) for pair in params for v in pair) + b")"


def _imap_disposition(disposition: Sequence[Any] | None) -> bytes:
    if not disposition:
        return b"NIL"
    return b"(" + imap_string(disposition[0]) + b" " + _imap_params(disposition[1]) + b")"


def _imap_language(language: Sequence[str] | None) -> bytes:
    if not language:
        return b"NIL"
    return b"(" + b" ".join(imap_string(t) for t in language) + b")"


def _is_encapsulated(part: Mapping[str, Any], imap4rev2: bool) -> bool:
    if "body" not in part or str(part["type"]).lower() != "message":
        return False
    subtype = str(part["subtype"]).lower()
    return subtype == "rfc822" or (imap4rev2 and subtype == "global")


def _write_body(out: list[bytes], part: Mapping[str, Any], ext: bool, rev2: bool) -> None:
    parts = part.get("parts")
    if parts is not None:
        # rfc3501:9 body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        out.append(b"(")
        for child in parts:
            _write_body(out, child, ext, rev2)
        out.append(b" " + imap_string(part["subtype"]))
        if ext:
            out.append(b" " + _imap_params(part["params"]))
            out.append(b" " + _imap_disposition(part["disposition"]))
            out.append(b" " + _imap_language(part["language"]))
            out.append(b" " + imap_string(part["location"]))
        out.append(b")")
        return
    # rfc3501:9 body-type-1part: media SP body-fields [SP envelope SP body] [SP lines]
    out.append(b"(")
    out.append(imap_string(part["type"]))
    out.append(b" " + imap_string(part["subtype"]))
    out.append(b" " + _imap_params(part["params"]))
    out.append(b" " + imap_string(part["id"]))
    out.append(b" " + imap_string(part["description"]))
    out.append(b" " + imap_string(part["encoding"]))
    out.append(b" %d" % part["size"])
    if _is_encapsulated(part, rev2):
        out.append(b" " + imap_envelope(part["envelope"]) + b" ")
        _write_body(out, part["body"], ext, rev2)
        out.append(b" %d" % part["lines"])
    elif str(part["type"]).lower() == "text":
        out.append(b" %d" % part["lines"])
    if ext:
        # rfc3501:9 body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang
        # [SP body-fld-loc]]]; like Dovecot we always send all four.
        out.append(b" " + imap_string(part["md5"]))
        out.append(b" " + _imap_disposition(part["disposition"]))
        out.append(b" " + _imap_language(part["language"]))
        out.append(b" " + imap_string(part["location"]))
    out.append(b")")


def imap_bodystructure(
    bodystructure: Mapping[str, Any], extensible: bool, *, imap4rev2: bool = False
) -> bytes:
    """BODYSTRUCTURE (``extensible=True``) or BODY (``False``), rfc3501:7.4.2.

    message/global parts are shown with envelope and body only when
    ``imap4rev2`` (rfc9051:9 media-message); IMAP4rev1 only knows RFC822.
    """
    out: list[bytes] = []
    _write_body(out, bodystructure, extensible, imap4rev2)
    return b"".join(out)


def find_part(bodystructure: Mapping[str, Any], section: Sequence[int]) -> Mapping[str, Any] | None:
    """The part that an rfc3501:6.4.5 section number (e.g. ``[2, 1]``) names.

    ``[]`` is the whole message. A non-multipart message has only part 1 (its
    body); the parts of a message/rfc822 part are those of its encapsulated
    message. None if there is no such part.
    """
    part: Mapping[str, Any] = bodystructure
    children: Sequence[Mapping[str, Any]] = part.get("parts") or [part]
    for number in section:
        if not 1 <= number <= len(children):
            return None
        part = children[number - 1]
        if "parts" in part:
            children = part["parts"]
        elif "body" in part:
            inner = part["body"]
            children = inner.get("parts") or [inner]
        else:
            children = []
    return part


# --------------------------------------------------------------------------
# Originator fields, strictly (rfc5322:3.4, rfc5322:3.6.2), for the checks
# that submission makes before it signs and sends a message. The fields and
# the mailboxes are the very ones ``_parse_header`` and ``parse_addresses``
# give ENVELOPE (what IMAP clients show), never a second parser's reading.


def header_fields(data: bytes) -> list[tuple[str, bytes]]:
    """Every field of the top-level header of ``data``, in order.

    (lower-cased name, raw value after the colon, folding included), split by
    the same ``_split_header`` that gives ENVELOPE its fields (``_parse_header``
    keeps only the first of each name): rfc5322:2.2.3 folding, rfc5322:4.5
    obsolete blanks before the colon ("From :"), the header ending at the
    empty line or at the first line that is neither a field nor a continuation.
    """
    fields, _ = _split_header(data, 0, len(data))
    return [(name, data[vstart:vend]) for name, vstart, vend in fields]


def header_spans(data: bytes) -> list[tuple[str, int, int]]:
    """``header_fields`` as offsets: (lower-cased name, start, end of the raw
    value) per field; a field starts where the one before it ended (at 0
    for the first)."""
    return _split_header(data, 0, len(data))[0]


class AddressSyntaxError(ValueError):
    """A mailbox-list that is not one by rfc5322:3.4 (or that we would read
    differently from mail clients)."""


@dataclass(frozen=True)
class Mailbox:
    """One mailbox of a mailbox-list (rfc5322:3.4)."""

    local_part: str  # as written (a quoted string keeps its quotes)
    domain: str
    # The display name and the comments around the mailbox, unquoted but not
    # RFC 2047 decoded: what a mail client may show instead of the address.
    texts: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"


# C0 controls (blanks excepted) and DEL: no business in an address field.
_ADDRESS_CONTROLS_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CLOSED_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_CLOSED_LITERAL_RE = re.compile(r"\[(?:[^\]\\]|\\.)*\]", re.S)


def _comment_closed(s: str, pos: int) -> int | None:
    """``s[pos]`` is "("; the index after its matching ")", None if unclosed."""
    depth = 0
    for m in _COMMENT_PIECE_RE.finditer(s, pos):
        piece = m.group()
        if piece == "(":
            depth += 1
        elif piece == ")":
            depth -= 1
            if depth == 0:
                return m.end()
        elif piece == "\\":  # a backslash at the very end escapes nothing
            return None
    return None


def _check_lexical(value: str) -> None:
    """Quoted strings, domain literals and comments closed; no stray ")"."""
    if _ADDRESS_CONTROLS_RE.search(value.replace("\r\n", "")):
        raise AddressSyntaxError("control character")
    pos = 0
    while pos < len(value):
        m = _ADDR_TOKEN_RE.match(value, pos)
        assert m is not None  # "other" matches any character
        kind = m.lastgroup
        if kind == "cm":
            after = _comment_closed(value, pos)
            if after is None:
                raise AddressSyntaxError("unclosed comment")
            pos = after
            continue
        if kind == "other":
            raise AddressSyntaxError(f"unexpected {m.group()!r}")
        if kind == "qs" and not _CLOSED_QUOTED_RE.fullmatch(m.group()):
            raise AddressSyntaxError("unclosed quoted string")
        if kind == "dl" and not _CLOSED_LITERAL_RE.fullmatch(m.group()):
            raise AddressSyntaxError("unclosed domain literal")
        pos = m.end()


def _is_addr_spec(tokens: Sequence[_Token]) -> bool:
    """rfc5322:3.4.1 addr-spec (with rfc5322:4.4 obs-local-part: words and dots)."""
    at = _split_at(tokens, "@")
    if at <= 0 or at == len(tokens) - 1:
        return False
    local, domain = tokens[:at], tokens[at + 1 :]
    for i, (kind, value, _, _) in enumerate(local):
        if i % 2 == 0 and kind not in ("atom", "qs"):
            return False
        if i % 2 == 1 and (kind, value) != ("sp", "."):
            return False
    if len(local) % 2 == 0:
        return False
    if len(domain) == 1 and domain[0][0] == "dl":
        return True
    for i, (kind, value, _, _) in enumerate(domain):
        if i % 2 == 0 and kind != "atom":
            return False
        if i % 2 == 1 and (kind, value) != ("sp", "."):
            return False
    return len(domain) % 2 == 1


def _mailbox_texts(tokens: Sequence[_Token]) -> tuple[str, ...] | None:
    """The display name and comments of one mailbox (rfc5322:3.4 name-addr
    or addr-spec), None if the tokens are not one."""
    comments = tuple(value for kind, value, _, _ in tokens if kind == "comment" and value)
    words = [t for t in tokens if t[0] != "comment"]
    if _is_addr_spec(words):
        return comments
    open_ = _split_at(words, "<")
    if open_ < 0 or words[-1][:2] != ("sp", ">") or not _is_addr_spec(words[open_ + 1 : -1]):
        return None
    phrase = words[:open_]
    # rfc5322:3.2.5 phrase, with rfc5322:4.1 obs-phrase dots.
    for kind, value, _, _ in phrase:
        if kind not in ("atom", "qs") and (kind, value) != ("sp", "."):
            return None
    name = _phrase(phrase)
    return ((name,) if name else ()) + comments


def parse_mailbox_list(raw: bytes) -> list[Mailbox]:
    """The mailboxes of a From or Sender field value, as ENVELOPE has them.

    rfc5322:3.6.2: From is a mailbox-list, Sender one mailbox; so no group
    (rfc5322:3.4), and every element a name-addr or an addr-spec with both a
    local part and a domain. The addresses are those ``parse_addresses``
    finds in the same value; anything it would skip or guess at (junk
    around an angle address, an unclosed quote or comment, a route, a
    group) raises ``AddressSyntaxError`` instead of being read leniently.
    """
    unfolded = _unfold(raw)
    if len(unfolded) > STRUCTURED_LIMIT:
        raise AddressSyntaxError("field too long")
    value = _raw_text(unfolded)
    _check_lexical(value)
    tokens = _address_tokens(value)
    elements: list[list[_Token]] = [[]]
    depth = 0
    for tok in tokens:
        if tok[0] == "sp" and tok[1] in "<>":
            depth += 1 if tok[1] == "<" else -1
            if depth not in (0, 1):
                raise AddressSyntaxError("misplaced angle bracket")
        if tok[0] == "sp" and tok[1] in ":;":
            raise AddressSyntaxError("a group or a route where a mailbox must be")
        if tok[0] == "sp" and tok[1] == "," and depth == 0:
            elements.append([])
        else:
            elements[-1].append(tok)
    if depth != 0:
        raise AddressSyntaxError("unclosed angle bracket")
    # rfc5322:4.4 obs-mbox-list: empty elements (",,") are allowed.
    elements = [e for e in elements if any(t[0] != "comment" for t in e)]
    addresses = parse_addresses(value)
    if not elements or len(addresses) != len(elements):
        raise AddressSyntaxError("not a mailbox-list")
    mailboxes: list[Mailbox] = []
    for element, (_, adl, local, domain) in zip(elements, addresses, strict=True):
        texts = _mailbox_texts(element)
        if texts is None or adl is not None or local is None or domain is None:
            raise AddressSyntaxError("not a mailbox")
        if local == MISSING_MAILBOX or domain == MISSING_DOMAIN:
            raise AddressSyntaxError("a mailbox without a local part or a domain")
        mailboxes.append(Mailbox(local, domain, texts))
    return mailboxes
