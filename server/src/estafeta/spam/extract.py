"""What the junk filter reads of a message: decoded text, URL hosts, attachments.

``extract`` walks the MIME structure that ``estafeta.message.summarize``
computes (the same parse IMAP uses; the caller may pass the Summary it
already has) and collects, in one bounded pass:

* the text of every ``text/*`` leaf, transfer-decoded (rfc2045:6.7
  quoted-printable, rfc2045:6.8 base64) and charset-decoded; HTML parts
  (``text/html``) lose their ``<script>``/``<style>`` contents and tags, then
  their character references (``&amp;``) are resolved;
* the host of each ``http``/``https`` URL in that text (HTML ``href``
  attributes included, character references resolved first);
* the file names of attachments (rfc2183:2.3 ``filename``, the older
  Content-Type ``name``, their rfc2231:4 ``filename*`` forms and RFC 2047
  encoded-words, which mail clients also honour).

``url_domains`` and ``executable_attachments`` answer the two content
checks of issue 16 from an ``Extracted`` (or from the raw bytes).

Bounds (an attacker controls all of it):

* the structure parse is ``summarize``'s (linear, ``MAX_PARTS``,
  ``MAX_DEPTH``); the walk visits each part once;
* at most ``max_text`` characters of decoded text in total (default
  256 KiB): each part's raw body is sliced to what can decode to the
  remaining budget before it is decoded, so a 50 MB base64 part costs what
  its first 384 KiB cost;
* HTML stripping is linear: tags are removed with a pattern that cannot
  backtrack past the next ``<``, and script/style blocks are cut by one
  forward scan;
* at most ``MAX_URLS`` URL occurrences are looked at, ``MAX_HOSTS`` distinct
  hosts kept, ``MAX_ATTACHMENTS`` attachments recorded.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import html
import ipaddress
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from publicsuffixlist import PublicSuffixList

from estafeta.address import AddressError, normalize_domain
from estafeta.message import Summary, decode_rfc2047, summarize
from estafeta.message.transfer import decode_quoted_printable

MAX_TEXT = 256 * 1024
"""Characters of decoded text taken from one message (all parts together)."""

MAX_URLS = 2_000
"""URL occurrences looked at per message."""

MAX_HOSTS = 200
"""Distinct URL hosts kept per message."""

MAX_URL_DOMAINS = 20
"""Domains ``url_domains`` returns at most (each one costs DNS queries)."""

MAX_ATTACHMENTS = 100
"""Attachments recorded per message."""

MAX_HOST = 1024
"""Characters of a host name looked at (an A-label name is at most 253;
U-labels take more characters before conversion)."""

MAX_FILENAME = 255
"""Characters of an attachment's file name kept."""

DEFAULT_EXECUTABLE_EXTENSIONS = frozenset(
    {
        "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh",
        "hta", "msi", "msp", "jar", "lnk", "cpl", "ps1", "reg",
    }
)  # fmt: skip
"""File types Windows runs when a user opens them: what mail should not carry."""


@dataclass(frozen=True)
class TextPart:
    """The decoded text of one ``text/*`` part (HTML already stripped)."""

    subtype: str  # lower-case: "plain", "html", ...
    text: str
    charset: str  # lower-case, as declared ("" if none)
    encoding: str  # lower-case Content-Transfer-Encoding


@dataclass(frozen=True)
class Attachment:
    """A part with a file name or ``Content-Disposition: attachment``."""

    content_type: str  # lower-case "type/subtype"
    names: tuple[str, ...]  # every distinct name it gives (filename, filename*, name, ...)


@dataclass(frozen=True)
class Extracted:
    """The parts of a message the filter reads; see the module docstring."""

    data: bytes
    summary: Summary
    content_type: str  # of the whole message, lower-case "type/subtype"
    leaf_types: tuple[str, ...]  # distinct "type/subtype" of the leaves, in order
    texts: tuple[TextPart, ...]
    url_hosts: tuple[str, ...]  # distinct, lower-case, in order of appearance
    url_count: int  # URL occurrences seen (at most MAX_URLS)
    images: bool  # an HTML part has <img>
    attachments: tuple[Attachment, ...]
    truncated: bool  # text beyond max_text was not read


# -- entry points ---------------------------------------------------------------


def extract(data: bytes, summary: Summary | None = None, *, max_text: int = MAX_TEXT) -> Extracted:
    """Read ``data`` (a whole message). ``summary``, if the caller has it,
    must be ``summarize(data)`` of these very bytes (its offsets are used)."""
    if summary is None:
        summary = summarize(data)
    walker = _Walker(data, max(0, max_text))
    root = summary.bodystructure
    for part in _leaves(root):
        walker.leaf(part)
    return Extracted(
        data=data,
        summary=summary,
        content_type=_media_type(root),
        leaf_types=tuple(walker.leaf_types),
        texts=tuple(walker.texts),
        url_hosts=tuple(walker.hosts),
        url_count=walker.url_count,
        images=walker.images,
        attachments=tuple(walker.attachments),
        truncated=walker.truncated,
    )


def url_domains(message: bytes | Extracted, limit: int = MAX_URL_DOMAINS) -> list[str]:
    """Distinct registrable domains of the http(s) URLs in the text and HTML
    parts, in order of appearance, at most ``limit``: what a domain block
    list (rfc5782 style, e.g. a URI list) is asked about.

    A host becomes its registrable domain (the public suffix plus one label:
    ``www.shop.example.co.uk`` -> ``example.co.uk``) in A-label form; IP
    literals, hosts that are a public suffix themselves and names that are
    not valid domain names are left out.
    """
    extracted = message if isinstance(message, Extracted) else extract(message)
    out: list[str] = []
    seen: set[str] = set()
    for host in extracted.url_hosts:
        if len(out) >= limit:
            break
        domain = registrable_domain(host)
        if domain is not None and domain not in seen:
            seen.add(domain)
            out.append(domain)
    return out


def executable_attachments(
    message: bytes | Extracted, extensions: frozenset[str] | set[str] | None = None
) -> list[str]:
    """The file names of attachments whose type is in ``extensions`` (lower
    case, without the dot; default ``DEFAULT_EXECUTABLE_EXTENSIONS``).

    Every name a part gives is checked (``filename``, ``filename*``, ``name``,
    ``name*``): mail clients differ in which one they show and save. The
    extension is what follows the last dot once trailing dots and blanks are
    removed (Windows drops them: ``invoice.pdf.exe.`` runs as an .exe); a
    name with a NUL counts if either reading is executable, cut at the NUL
    (C APIs) or with the NUL dropped; case does not matter.
    """
    extracted = message if isinstance(message, Extracted) else extract(message)
    if not extracted.attachments:
        return []
    wanted = _extensions(
        DEFAULT_EXECUTABLE_EXTENSIONS if extensions is None else frozenset(extensions)
    )
    out: list[str] = []
    for attachment in extracted.attachments:
        for name in attachment.names:
            readings = {file_extension(name), file_extension(name.replace("\x00", ""))}
            if readings & wanted:
                out.append(name)
                break
    return out


@functools.lru_cache(maxsize=16)  # the configured list, and a test's few
def _extensions(extensions: frozenset[str]) -> frozenset[str]:
    return frozenset(e.lower().lstrip(".") for e in extensions) - {""}


def file_extension(name: str) -> str:
    """The lower-case extension Windows would act on ("" if none)."""
    name = name.split("\x00", 1)[0]
    name = re.split(r"[/\\]", name)[-1]
    name = name.rstrip(" .\t")
    dot = name.rfind(".")
    return name[dot + 1 :].lower() if dot >= 0 else ""


@functools.cache
def _psl() -> PublicSuffixList:
    # The list shipped with publicsuffixlist: no network access, ever.
    return PublicSuffixList()


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ASCII_HOST_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")


def registrable_domain(host: str) -> str | None:
    """``host``'s registrable domain (A-labels), None for IP literals, public
    suffixes and names that are not domain names."""
    if len(host) > MAX_HOST:
        return None  # rfc1035:2.3.4 — no domain name is this long
    return _registrable_domain(host)


# Hosts are asked about again and again (the From domain of every message, a
# newsletter's links): the answers of the last few thousand are kept.
@functools.lru_cache(maxsize=4096)
def _registrable_domain(host: str) -> str | None:
    host = host.rstrip(".").lower()
    if not host or host.startswith("[") or _is_ip(host):
        return None
    if not (host.isascii() and len(host) <= 253 and _ASCII_HOST_RE.fullmatch(host)):
        try:
            host = normalize_domain(host)
        except AddressError:
            return None
    if "." not in host:
        return None
    private = _psl().privatesuffix(host)
    return private if isinstance(private, str) else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- the walk -------------------------------------------------------------------


def _leaves(root: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Leaves of the part tree, depth first in document order; encapsulated
    messages (message/rfc822) are entered. No recursion: the tree's depth
    is bounded by summarize, but a stack keeps this independent of it."""
    stack: list[Mapping[str, Any]] = [root]
    while stack:
        part = stack.pop()
        children = part.get("parts")
        if children is not None:
            stack.extend(reversed(children))
        elif "body" in part:
            yield part  # the message/rfc822 part itself (it may be an attachment)
            stack.append(part["body"])
        else:
            yield part


def _media_type(part: Mapping[str, Any]) -> str:
    return f"{part['type']}/{part['subtype']}".lower()


def _params(part: Mapping[str, Any], key: str) -> Sequence[Sequence[str]]:
    if key == "params":
        return part.get("params") or ()
    disposition = part.get("disposition")
    return (disposition[1] or ()) if disposition else ()


class _Walker:
    def __init__(self, data: bytes, budget: int) -> None:
        self.data = data
        self.budget = budget
        self.truncated = False
        self.texts: list[TextPart] = []
        self.leaf_types: list[str] = []
        self.hosts: list[str] = []
        self._hosts_seen: set[str] = set()
        self.url_count = 0
        self.images = False
        self.attachments: list[Attachment] = []

    def leaf(self, part: Mapping[str, Any]) -> None:
        media = _media_type(part)
        if media not in self.leaf_types and len(self.leaf_types) < 100:
            self.leaf_types.append(media)
        disposition = part.get("disposition")
        names = _file_names(part)
        is_attachment = bool(names) or (
            disposition is not None and str(disposition[0]).lower() == "attachment"
        )
        if is_attachment and len(self.attachments) < MAX_ATTACHMENTS:
            self.attachments.append(Attachment(media, names))
        if str(part["type"]).lower() != "text" or "body" in part:
            return
        if self.budget <= 0:
            self.truncated = self.truncated or part["body_end"] > part["body_start"]
            return
        self._text(part, str(part["subtype"]).lower())

    def _text(self, part: Mapping[str, Any], subtype: str) -> None:
        encoding = str(part.get("encoding") or "7bit").lower()
        charset = ""
        for key, value in _params(part, "params"):
            if key.lower() == "charset":
                charset = value.strip().lower()
                break
        raw, cut = _decode_transfer(
            self.data, part["body_start"], part["body_end"], encoding, self.budget
        )
        text = _decode_charset(raw, charset)
        if len(text) > self.budget:
            text, cut = text[: self.budget], True
        self.truncated = self.truncated or cut
        self.budget -= len(text)
        if subtype == "html":
            self._urls(html.unescape(text))
            text, images = strip_html(text)
            self.images = self.images or images
        else:
            self._urls(text)
        self.texts.append(TextPart(subtype, text, charset, encoding))

    def _urls(self, text: str) -> None:
        if "://" not in text:  # the regexp scans every word boundary: 10x slower
            return
        for m in URL_RE.finditer(text):
            if self.url_count >= MAX_URLS:
                return
            self.url_count += 1
            host = url_host(m.group(1))
            if host and host not in self._hosts_seen and len(self.hosts) < MAX_HOSTS:
                self._hosts_seen.add(host)
                self.hosts.append(host)


# -- names of attachments --------------------------------------------------------


def _file_names(part: Mapping[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    for where, key in (
        ("disposition", "filename"),
        ("params", "name"),
    ):  # rfc2183:2.3 filename; Content-Type name (rfc1341, still sent)
        for pname, value in _params(part, where):
            lname = pname.lower()
            if lname == key + "*":
                name = rfc2231_decode(value)  # rfc2231:4 charset'language'%XX
            elif lname == key:
                name = decode_rfc2047(value)  # not standard here, but what clients do
            else:
                continue
            name = name[:MAX_FILENAME]
            if name and name not in names:
                names.append(name)
    return tuple(names)


def rfc2231_decode(value: str) -> str:
    """rfc2231:4 ``charset'language'percent-encoded`` to text (continuations
    are already merged by summarize, rfc2231:3). Undecodable bytes become
    U+FFFD; an unknown charset is read as Latin-1."""
    parts = value.split("'", 2)
    charset, encoded = (parts[0], parts[2]) if len(parts) == 3 else ("us-ascii", value)
    raw = urllib.parse.unquote_to_bytes(encoded.encode("utf-8", "surrogateescape"))
    return _decode_charset(raw, charset.lower())


# -- decoding ------------------------------------------------------------------------

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_DELETE = bytes(c for c in range(256) if c not in _B64_ALPHABET)


def _decode_transfer(
    data: bytes, start: int, end: int, encoding: str, limit: int
) -> tuple[bytes, bool]:
    """The first ``limit`` octets of the decoded body, and whether more
    followed. The raw body is sliced first, generously for the encoding's
    overhead, so the work is O(limit) whatever the part's size."""
    if encoding == "base64":
        # rfc2045:6.8: 4 characters carry 3 octets; lines of 76 plus CRLF
        # make ~1.37 raw octets per decoded one. Characters outside the
        # alphabet (line ends, junk, padding) are ignored, padding restored.
        window = limit * 3 // 2 + 1024
        raw = data[start : min(end, start + window)].translate(None, _B64_DELETE)
        rest = len(raw) % 4
        if rest == 1:  # a lone character carries no whole octet
            raw = raw[:-1]
        elif rest:  # padding dropped above (or the window cut a quantum)
            raw += b"=" * (4 - rest)
        try:
            decoded = base64.b64decode(raw)
        except (binascii.Error, ValueError):
            decoded = b""
    elif encoding == "quoted-printable":
        # rfc2045:6.7: "=XX" is three raw octets for one; soft line breaks.
        window = limit * 3 + 1024
        decoded = decode_quoted_printable(data[start : min(end, start + window)])
    else:  # 7bit, 8bit, binary, and unknown encodings read as they are
        window = limit
        decoded = data[start : min(end, start + window)]
    cut = end - start > window or len(decoded) > limit
    return decoded[:limit], cut


_ASCII_ALIASES = frozenset({"", "us-ascii", "ascii", "us_ascii", "ansi_x3.4-1968"})


# Text codecs that are no charset and whose decoder is quadratic in the
# input (punycode's insertions): a message must not choose them.
_REFUSED_CODECS = frozenset({"punycode", "idna"})


def _decode_charset(raw: bytes, charset: str) -> str:
    # rfc2046:4.1.2 default us-ascii; 8-bit text mislabelled as ASCII is far
    # more often UTF-8 than anything else, and UTF-8 is a superset.
    if charset in _ASCII_ALIASES:
        charset = "utf-8"
    try:
        if codecs.lookup(charset).name in _REFUSED_CODECS:
            return raw.decode("latin-1")
        # bytes.decode refuses non-text codecs (LookupError), so "zlib" or
        # "base64" as a charset cannot turn into a decompression.
        return raw.decode(charset, "replace")
    except (LookupError, UnicodeError, ValueError):
        return raw.decode("latin-1")


# -- HTML -----------------------------------------------------------------------

# A tag: "<" then anything but "<" or ">" up to ">". A "<" with no ">" before
# the next "<" is left as text; each character is scanned at most twice.
_TAG_RE = re.compile(r"<[^<>]*>")
_HIDDEN_RE = re.compile(r"<(/?)(script|style)\b", re.IGNORECASE)
_IMG_RE = re.compile(r"<img\b", re.IGNORECASE)


def strip_html(text: str) -> tuple[str, bool]:
    """Crude, linear HTML to text: script and style contents dropped, tags
    replaced by a blank, character references resolved. Also whether the
    HTML has an ``<img>``. Not a sanitiser: the result is only tokenized."""
    images = _IMG_RE.search(text) is not None
    pieces: list[str] = []
    pos = 0
    hidden: str | None = None  # inside <script> or <style>: the element's name
    for m in _HIDDEN_RE.finditer(text):
        if m.start() < pos:
            continue  # inside a closing tag already consumed
        closing, name = m.group(1) == "/", m.group(2).lower()
        if hidden is None and not closing:
            pieces.append(text[pos : m.start()])
            hidden = name
        elif hidden == name and closing:
            # Each search starts past the last one's end: linear overall.
            close = text.find(">", m.end())
            hidden = None
            if close < 0:
                pos = len(text)
                break
            pos = close + 1
    if hidden is None:
        pieces.append(text[pos:])
    visible = _TAG_RE.sub(" ", "".join(pieces))
    return html.unescape(visible), images


# -- URLs -----------------------------------------------------------------------

# rfc3986:3: scheme "://" authority; the authority ends at "/", "?", "#" or
# anything that cannot be in it (blanks, quotes, angle brackets).
URL_RE = re.compile(r"\bhttps?://([^\s/?#\"'<>\\()\[\]{}|^`]{1,300})", re.IGNORECASE)


def url_host(authority: str) -> str:
    """The host of an rfc3986:3.2 authority, lower-case, without userinfo
    (rfc3986:3.2.1, the part before the last "@") and port (rfc3986:3.2.3).
    Percent-encoded hosts are decoded (rfc3986:3.2.2 reg-name)."""
    host = authority.rsplit("@", 1)[-1]
    if host.startswith("["):
        return ""  # an IPv6 literal: no domain to look up
    host = host.split(":", 1)[0]
    if "%" in host:
        host = urllib.parse.unquote(host, errors="replace")
    host = host.rstrip(".,;:!*'&=+$").strip(".").lower()
    return host if 0 < len(host) <= 253 else ""
