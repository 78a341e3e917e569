"""IMAP URLs (rfc5092) naming a message or a part of one, as CATENATE
(rfc4469:3) uses them. Sans-IO: text in, an ``ImapUrl`` out.

Accepted forms (keywords case-insensitive, percent-encoding decoded):

* ``imap://[user[;AUTH=mech]@]host[:port]/MAILBOX[;UIDVALIDITY=n]/;UID=n[...]``
* an absolute path, ``/MAILBOX[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]``
  (rfc5092:7.1 relative to the server)
* ``;UID=n[...]``, relative to the selected mailbox (rfc5092:7.2)

A mailbox name is UTF-8 (rfc5092:3.2); an ASCII name with ``&`` that is
valid modified UTF-7 (older clients, rfc2192) is decoded as such. URLs with
``;URLAUTH=`` are refused here (no URLAUTH yet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from estafeta.imap.parser import decode_mutf7, parse_section
from estafeta.imap.types import Section

MAX_URL = 4096  # octets; an rfc4469 URL names one message part


class BadUrl(ValueError):
    """Not a URL this server can resolve (rfc4469:5 BADURL)."""


@dataclass(frozen=True)
class ImapUrl:
    mailbox: str | None  # None: the selected mailbox (a relative URL)
    uid: int
    uidvalidity: int | None = None
    section: Section | None = None
    partial: tuple[int, int | None] | None = None  # offset, length
    user: str | None = None
    host: str | None = None  # the URL's host, without a port (absolute URLs)


_SERVER_RE = re.compile(
    r"imap://(?:(?P<userinfo>[^@/]*)@)?(?P<host>[^/]*)(?P<path>/.*)?\Z", re.I | re.S
)
_MAILBOX_RE = re.compile(
    r"(?P<name>[^;]*)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?\Z", re.I
)
_UID_RE = re.compile(r";UID=([1-9][0-9]{0,9})\Z", re.I)
_SECTION_RE = re.compile(r";SECTION=(.+)\Z", re.I | re.S)
_PARTIAL_RE = re.compile(r";PARTIAL=([0-9]{1,10})(?:\.([1-9][0-9]{0,9}))?\Z", re.I)
_MAX32 = 0xFFFFFFFF


def _decoded(text: str, what: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise BadUrl(f"{what} is not UTF-8") from None


def parse(url: str) -> ImapUrl:
    """rfc5092:6 (imessagepart, absolute or relative); BadUrl when it is not
    one, or names something this server does not resolve."""
    if len(url.encode("utf-8", "surrogatepass")) > MAX_URL:
        raise BadUrl("URL too long")
    user = None
    host = None
    path = url
    server = _SERVER_RE.match(url)
    if server is not None:
        userinfo = server.group("userinfo")
        if userinfo:
            user = _decoded(userinfo.split(";", 1)[0], "user") or None
        # rfc5092:3 host [":" port]; an IPv6 literal keeps its brackets
        host = re.sub(r":[0-9]*\Z", "", server.group("host")).lower() or None
        path = server.group("path") or ""
    elif not url.startswith(("/", ";")):
        raise BadUrl("not an IMAP URL")
    segments = path.split("/")
    mailbox: str | None = None
    uidvalidity: int | None = None
    if path.startswith("/"):
        # "/MAILBOX[;UIDVALIDITY=n]" then "/;UID=n" ...: the mailbox name
        # itself may hold "/" (its hierarchy): everything up to "/;UID=".
        cut = re.search(r"/;UID=", path, re.I)
        if cut is None:
            raise BadUrl("the URL names no message (;UID=)")
        boxed = _MAILBOX_RE.match(path[1 : cut.start()])
        if boxed is None or not boxed.group("name"):
            raise BadUrl("no mailbox in the URL")
        mailbox = _mailbox(_decoded(boxed.group("name"), "mailbox"))
        if boxed.group("uidvalidity"):
            uidvalidity = _number(boxed.group("uidvalidity"))
        segments = path[cut.start() + 1 :].split("/")
    uid_match = _UID_RE.match(segments[0])
    if uid_match is None:
        raise BadUrl("the URL names no message (;UID=)")
    uid = _number(uid_match.group(1))
    section = None
    partial: tuple[int, int | None] | None = None
    rest = segments[1:]
    if rest and _SECTION_RE.match(rest[0]):
        text = _decoded(_SECTION_RE.match(rest[0]).group(1), "section")  # type: ignore[union-attr]
        try:
            section = parse_section(text.encode("utf-8"))
        except ValueError as exc:
            raise BadUrl(f"bad section: {exc}") from None
        rest = rest[1:]
    if rest and _PARTIAL_RE.match(rest[0]):
        found = _PARTIAL_RE.match(rest[0])
        assert found is not None
        offset = int(found.group(1))
        length = int(found.group(2)) if found.group(2) else None
        if offset > _MAX32 or (length is not None and length > _MAX32):
            raise BadUrl("partial range out of range")
        partial = (offset, length)
        rest = rest[1:]
    if rest:
        if any(";URLAUTH=" in r.upper() or ";EXPIRE=" in r.upper() for r in rest):
            raise BadUrl("URLAUTH is not supported")
        raise BadUrl("unexpected text after the message part")
    return ImapUrl(mailbox, uid, uidvalidity, section, partial, user, host)


def _number(text: str) -> int:
    value = int(text)
    if value > _MAX32:
        raise BadUrl("number out of range")
    return value


def _mailbox(name: str) -> str:
    if name.isascii() and "&" in name:
        try:
            return decode_mutf7(name)
        except ValueError:
            return name
    return "INBOX" if name.upper() == "INBOX" else name
