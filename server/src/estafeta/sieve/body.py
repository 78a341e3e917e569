"""The strings a "body" test (rfc5173) matches against.

Bounded work: only the first ``max_octets`` of the body are read (the
message is cut there before any MIME parsing; ``Limits.max_body_scan``,
1 MiB by default), MIME nesting stops at ``MAX_DEPTH`` levels and
``MAX_PARTS`` parts; text past those limits is not searched.

* ``:raw`` (rfc5173:5.1): the undecoded body as one string.
* ``:content`` (rfc5173:5.2): every MIME part whose type matches,
  transfer-decoded and converted to UTF-8; a matching multipart gives its
  prologue and epilogue, a matching message/rfc822 the header of the
  enclosed message.  The search descends into every multipart and
  message/rfc822 whether it matches or not.
* ``:text`` (rfc5173:5.3): as ``:content "text"`` (which the RFC allows).

The MIME header of the enclosing part is never part of the text, and a
match never spans two parts: every part is its own string.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import re
from collections.abc import Sequence
from typing import Final

from estafeta.message.structure import header_fields
from estafeta.message.transfer import decode_quoted_printable

# Nesting of multipart and message/rfc822 entities followed; every level
# copies what it holds, so the work is at most MAX_DEPTH x max_octets.
MAX_DEPTH: Final = 32
MAX_PARTS: Final = 500

_PARAM = re.compile(r';\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)', re.S)


def _content_type(value: str | None, default: str) -> tuple[str, str, dict[str, str]]:
    """(type, subtype, parameters) of a Content-Type value, lower-cased."""
    if value is None:
        kind = default
        params: dict[str, str] = {}
    else:
        value = re.sub(r"\([^()]*\)", " ", value)  # comments (one level)
        head, _, _ = value.partition(";")
        kind = head.strip().lower() or default
        params = {}
        for m in _PARAM.finditer(value, len(head)):
            raw = m.group(2)
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params.setdefault(m.group(1).lower(), raw)
    main, slash, sub = kind.partition("/")
    if not slash or not main or not sub:
        main, _, sub = default.partition("/")
    return main.strip(), sub.strip(), params


def type_matches(spec: str, main: str, sub: str) -> bool:
    """rfc5173:5.2: "" any type; "type" a type; "type/sub" exactly; a spec
    that starts or ends with "/" or has two of them matches nothing."""
    if spec == "":
        return True
    spec = spec.lower()
    if spec.startswith("/") or spec.endswith("/") or spec.count("/") > 1:
        return False
    if "/" in spec:
        return spec == f"{main}/{sub}"
    return spec == main


def _decode(data: bytes, encoding: str, charset: str | None) -> bytes:
    """Transfer-decoded content as UTF-8 (rfc5173:5.2)."""
    if encoding == "base64":
        with contextlib.suppress(binascii.Error, ValueError):
            data = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/]", b"", data) + b"==", validate=False)
    elif encoding == "quoted-printable":
        data = decode_quoted_printable(data)
    for name in (charset, "utf-8"):
        if not name:
            continue
        try:
            return data.decode(name, "replace").encode("utf-8", "surrogatepass")
        except (LookupError, UnicodeError, ValueError, TypeError):
            continue
    return data.decode("latin-1").encode("utf-8")


class _Walker:
    def __init__(self, specs: Sequence[str]) -> None:
        self.specs = specs
        self.out: list[bytes] = []
        self.parts = 0

    def wants(self, main: str, sub: str) -> bool:
        return any(type_matches(s, main, sub) for s in self.specs)

    def entity(self, data: bytes, default: str, depth: int) -> None:
        """One MIME entity: its header, then its content."""
        self.parts += 1
        if self.parts > MAX_PARTS:
            return
        fields = header_fields(data)
        pos = 0
        values: dict[str, str] = {}
        for name, value in fields:
            colon = data.find(b":", pos)
            pos = colon + 1 + len(value)
            if name not in values:
                text = value.replace(b"\r", b"").replace(b"\n", b"")
                values[name] = text.decode("latin-1").strip()
        rest = data[pos:]
        if rest.startswith(b"\r\n"):
            body = rest[2:]
        elif rest.startswith(b"\n"):
            body = rest[1:]
        else:
            body = rest
        self.content(body, values, default, depth)

    def content(self, body: bytes, values: dict[str, str], default: str, depth: int) -> None:
        main, sub, params = _content_type(values.get("content-type"), default)
        wanted = self.wants(main, sub)
        if main == "multipart" and depth < MAX_DEPTH:
            boundary = params.get("boundary", "")
            parts, prologue, epilogue = _split(body, boundary.encode("latin-1", "replace"))
            if wanted:
                self.out.append(prologue)
                self.out.append(epilogue)
            inner = "message/rfc822" if sub == "digest" else "text/plain"
            for part in parts:
                self.entity(part, inner, depth + 1)
            return
        if main == "message" and sub == "rfc822" and depth < MAX_DEPTH:
            if wanted:
                names = header_fields(body)
                end = 0
                for _, value in names:
                    end = body.find(b":", end) + 1 + len(value)
                self.out.append(body[:end])
            self.entity(body, "text/plain", depth + 1)
            return
        if wanted:
            encoding = values.get("content-transfer-encoding", "7bit").lower()
            self.out.append(_decode(body, encoding, params.get("charset")))


def _split(body: bytes, boundary: bytes) -> tuple[list[bytes], bytes, bytes]:
    """rfc2046:5.1.1: the parts between "--boundary" lines, the prologue
    before the first and the epilogue after "--boundary--"."""
    if not boundary:
        return [], body, b""
    delimiter = b"--" + boundary
    starts: list[tuple[int, int, bool]] = []  # (line start, content start, closing)
    pos = 0
    while True:
        at = body.find(delimiter, pos)
        if at < 0:
            break
        pos = at + len(delimiter)
        if at > 0 and body[at - 1 : at] != b"\n":
            continue
        closing = body.startswith(b"--", pos)
        nl = body.find(b"\n", pos)
        after = len(body) if nl < 0 else nl + 1
        starts.append((at, after, closing))
        pos = after
        if closing:
            break
    if not starts:
        return [], body, b""
    parts: list[bytes] = []
    for (_, begin, closing), (next_at, _, _) in itertools.pairwise(starts):
        if closing:
            break
        parts.append(_before_line_end(body, begin, next_at))
    prologue = _before_line_end(body, 0, starts[0][0])
    _, last_after, last_closing = starts[-1]
    if last_closing:
        epilogue = body[last_after:]
    else:  # no closing delimiter: the last part runs to the end
        parts.append(body[last_after:])
        epilogue = b""
    return parts, prologue, epilogue


def _before_line_end(body: bytes, begin: int, delimiter_at: int) -> bytes:
    """Content up to a delimiter line, without the line end before it
    (which belongs to the delimiter, rfc2046:5.1.1)."""
    end = delimiter_at
    if end > begin and body[end - 1 : end] == b"\n":
        end -= 1
        if end > begin and body[end - 1 : end] == b"\r":
            end -= 1
    return body[begin:end]


def content_parts(message: bytes, specs: Sequence[str], max_octets: int) -> list[bytes]:
    """rfc5173:5.2 — the strings of ``:content specs`` (``:text``: ["text"])."""
    walker = _Walker(specs)
    fields = header_fields(message)
    pos = 0
    for _, value in fields:
        pos = message.find(b":", pos) + 1 + len(value)
    walker.entity(message[: pos + 2 + max_octets], "text/plain", 0)
    return walker.out
