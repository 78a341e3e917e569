"""The message as Sieve tests see it: header fields (editable, rfc5293),
their decoded values, the addresses in them, and the envelope.

The header is split by ``estafeta.message.header_fields`` (``header_spans``) -- the very split
that gives IMAP's ENVELOPE its fields -- so a rule and a mail client never
disagree on which fields a message has.  Values are unfolded
(rfc5322:2.2.3), read as UTF-8 (Latin-1 when they are not UTF-8),
RFC 2047 decoded (rfc5228:2.7.2) and stripped of surrounding blanks
(rfc5228:5.7).  Addresses are read by ``estafeta.message.parse_addresses``
(groups, comments and broken syntax are lenient: an address without a
domain still matches ``:all`` with what it has, never ``:localpart``,
``:domain``, ``:user`` or ``:detail``, rfc5228:2.7.4).

Edits (addheader/deleteheader) change the list of fields; every later test
sees them (rfc5293:7), ``to_bytes`` gives the edited message.  The body is
never edited.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from estafeta.message.structure import (
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    AddressSyntaxError,
    decode_rfc2047,
    header_spans,
    parse_addresses,
    parse_mailbox_list,
)

# rfc5322:3.6.8 field-name = 1*ftext; ftext = %d33-57 / %d59-126.
FIELD_NAME: Final = re.compile(r"[!-9;-~]+\Z")

# rfc5228:5.1 "MUST include at least From, To, Cc, Bcc, Sender, Resent-From,
# and Resent-To, and it SHOULD include any other header that utilizes an
# address-list structured header body".
ADDRESS_HEADERS: Final = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-reply-to",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "return-path",
        "delivered-to",
        "x-original-to",
        "envelope-to",
        "x-envelope-to",
        "original-recipient",
        "disposition-notification-to",
        "errors-to",
        "mail-followup-to",
        "mail-reply-to",
        "apparently-to",
    }
)


def text_of(raw: bytes) -> str:
    """Header bytes as text: UTF-8, or Latin-1 when they are not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def unfold(raw: bytes) -> bytes:
    return raw.replace(b"\r", b"").replace(b"\n", b"")


@dataclass(eq=False, slots=True)
class Field:
    """One header field: lower-case name, the whole field as written
    (name, colon, folded value, line end) and the raw value after the colon."""

    name: str
    raw: bytes
    value: bytes
    _text: str | None = None
    _decoded: str | None = None
    _addresses: list[Address] | None = None

    @property
    def text(self) -> str:
        """Unfolded, undecoded, stripped (for addresses and dates)."""
        if self._text is None:
            self._text = text_of(unfold(self.value)).strip(" \t")
        return self._text

    @property
    def decoded(self) -> str:
        """Unfolded, RFC 2047 decoded, stripped (rfc5228:5.7)."""
        if self._decoded is None:
            self._decoded = decode_rfc2047(self.text).strip(" \t")
        return self._decoded

    @property
    def addresses(self) -> list[Address]:
        if self._addresses is None:
            self._addresses = parse_address_list(self.text)
        return self._addresses


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox of an address field; ``domain`` is "" when it has none."""

    local: str
    domain: str

    @property
    def valid(self) -> bool:
        return bool(self.local) and bool(self.domain)

    @property
    def all(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local


# rfc5322:3.2.3 atext, and the two forms most fields hold: "dot-atom@dot-atom"
# and "phrase of atoms <dot-atom@dot-atom>".  Such a value means what the full
# parser says (test_sieve_message checks it), at a fraction of its cost.
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM: Final = rf"{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_ADDRESS: Final = re.compile(
    rf"(?:{_ATOM}(?:[ \t]+{_ATOM})*[ \t]*)?<({_DOT_ATOM})@({_DOT_ATOM})>"
    rf"|({_DOT_ATOM})@({_DOT_ATOM})"
)


def parse_address_list(text: str) -> list[Address]:
    """The mailboxes of an address-list value, group markers left out
    (rfc5228:5.1: "never acts on group names")."""
    simple = _SIMPLE_ADDRESS.fullmatch(text)
    if simple is not None:
        local, domain = simple.group(1, 2) if simple.group(1) else simple.group(3, 4)
        return [Address(local, domain)]
    return parse_address_list_fully(text)


def parse_address_list_fully(text: str) -> list[Address]:
    """``parse_address_list`` by the rfc5322 parser alone."""
    out: list[Address] = []
    for _, _, mailbox, host in parse_addresses(text):
        if mailbox is None or host is None:
            continue  # a group's start or end
        if mailbox == MISSING_MAILBOX:
            continue
        out.append(Address(mailbox, "" if host == MISSING_DOMAIN else host))
    return out


def sieve_address(text: str) -> str | None:
    """rfc5228:2.4.2.3 sieve-address (addr-spec, or phrase "<" addr-spec ">";
    no group, no route, one address): its addr-spec, or None."""
    if not text.strip() or "\r" in text or "\n" in text:
        return None
    try:
        mailboxes = parse_mailbox_list(text.encode("utf-8", "surrogatepass"))
    except (AddressSyntaxError, UnicodeError):
        return None
    if len(mailboxes) != 1:
        return None
    return mailboxes[0].address


def split_envelope_address(address: str) -> Address | None:
    """An envelope path as an Address: "<>" and source routes dropped
    (rfc5228:5.4 "All tests against envelopes MUST drop source routes")."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if text.startswith("@"):
        colon = text.find(":")
        text = text[colon + 1 :] if colon >= 0 else ""
    if not text:
        return None
    local, at, domain = text.rpartition("@")
    if not at:
        return Address(text, "")
    return Address(local, domain)


def subaddress(local: str, part: str) -> str | None:
    """rfc5233:4 ":user" / ":detail" with "+" as the separator (the first
    "+", as delivery resolves plus-addresses); None when there is no detail."""
    user, plus, detail = local.partition("+")
    if part == "user":
        return user
    return detail if plus else None


def address_part(address: Address, part: str) -> str | None:
    """rfc5228:2.7.4 ADDRESS-PART (+ rfc5233); None: the address has no such part."""
    if part == "all":
        return address.all
    if not address.valid:
        return None
    if part == "localpart":
        return address.local
    if part == "domain":
        return address.domain
    return subaddress(address.local, part)


# A whole field, continuation lines included, of a header whose lines all
# end in CRLF.
_FIELD: Final = re.compile(rb"([!-9;-~]+)[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*)")


def split_header(data: bytes) -> list[tuple[str, int, int]]:
    """``header_spans(data)``, one regular expression match per field when
    the header is the usual kind (every line up to the first CRLF CRLF a
    field or a continuation; an empty line ending in a bare LF before it is
    neither); any other header goes to header_spans (test_sieve_fast
    compares the two)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return header_spans(data)
    end += 2
    spans: list[tuple[str, int, int]] = []
    match = _FIELD.match
    pos = 0
    while pos < end:
        m = match(data, pos, end)
        if m is None:
            return header_spans(data)
        spans.append((m.group(1).decode("ascii").lower(), m.start(2), m.end(2)))
        pos = m.end()
    return spans


class Header:
    """The header fields of the message, in order; ``data[end:]`` follows
    them (the empty line and the body, or what ended a broken header).
    The message is never copied, only the fields are held apart.

    A run reads a few fields by name: a ``Field`` is made when a test first
    asks for its name (or for all of them, ``fields``), not for every field
    of every message.  The first edit makes them all."""

    __slots__ = (
        "_by_name",
        "_fields",
        "_index",
        "_made",
        "_spans",
        "data",
        "edited",
        "end",
        "version",
    )

    def __init__(self, data: bytes, spans: list[tuple[str, int, int]]) -> None:
        self.data = data
        self._spans = spans  # (name, value start, value end), see header_spans
        self.end = spans[-1][2] if spans else 0
        self.edited = False
        self.version = 0  # counts the edits (what was read from the fields is stale)
        self._made: dict[int, Field] = {}
        self._by_name: dict[str, list[int]] | None = None  # before any edit
        self._fields: list[Field] | None = None
        self._index: dict[str, list[Field]] | None = None  # after the first edit

    @classmethod
    def parse(cls, data: bytes) -> Header:
        return cls(data, split_header(data))

    def _field(self, i: int) -> Field:
        made = self._made.get(i)
        if made is None:
            name, vstart, vend = self._spans[i]
            start = self._spans[i - 1][2] if i else 0
            made = self._made[i] = Field(name, self.data[start:vend], self.data[vstart:vend])
        return made

    @property
    def fields(self) -> list[Field]:
        if self._fields is None:
            self._fields = [self._field(i) for i in range(len(self._spans))]
        return self._fields

    def named(self, name: str) -> list[Field]:
        if self._fields is None or self._index is None:
            if self._by_name is None:
                by_name: dict[str, list[int]] = {}
                for i, (field_name, _, _) in enumerate(self._spans):
                    by_name.setdefault(field_name, []).append(i)
                self._by_name = by_name
            found = self._by_name.get(name.lower())
            return [self._field(i) for i in found] if found else []
        return self._index.get(name.lower(), [])

    def _edit(self) -> list[Field]:
        """The fields and their index, made to be changed."""
        fields = self.fields
        if self._index is None:
            index: dict[str, list[Field]] = {}
            for f in fields:
                index.setdefault(f.name, []).append(f)
            self._index = index
        return fields

    def add(self, name: str, folded_value: bytes, last: bool) -> None:
        """rfc5293:4: at the beginning (or end with ``:last``) of the header."""
        raw = name.encode("ascii") + b":" + folded_value + b"\r\n"
        new = Field(name.lower(), raw, folded_value)
        fields = self._edit()
        assert self._index is not None
        same = self._index.setdefault(new.name, [])
        if last:
            fields.append(new)
            same.append(new)
        else:
            fields.insert(0, new)
            same.insert(0, new)
        self.edited = True
        self.version += 1

    def delete(self, doomed: list[Field]) -> None:
        """Remove these fields (all of one name, as deleteheader finds them)."""
        if not doomed:
            return
        fields = self._edit()
        assert self._index is not None
        if len(doomed) <= 16:
            for f in doomed:
                fields.remove(f)  # identity: Field has no __eq__
        else:
            ids = {id(f) for f in doomed}
            self._fields = [f for f in fields if id(f) not in ids]
        ids = {id(f) for f in doomed}
        for name in {f.name for f in doomed}:
            kept = [f for f in self._index.get(name, ()) if id(f) not in ids]
            self._index[name] = kept
        self.edited = True
        self.version += 1

    def to_bytes(self) -> bytes:
        return b"".join(f.raw for f in self.fields) + self.data[self.end :]


def body_of(data: bytes, end: int, limit: int) -> bytes | None:
    """rfc5173:4: the first ``limit`` octets of the body, after the empty
    line that follows the header fields (which end at ``end``); None when
    the message is a header without an empty line (no body at all)."""
    if data.startswith(b"\r\n", end):
        start = end + 2
    elif data.startswith(b"\n", end):
        start = end + 1
    elif end >= len(data):
        return None
    else:
        start = end  # a header cut short by a line that is no field
    return data[start : start + limit]
