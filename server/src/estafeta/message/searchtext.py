"""The text SEARCH matches a message's envelope fields against
(rfc9051:6.4.4), computed the same way at delivery (for the index's search
columns) and at search time (to check a candidate), so that an index lookup
never misses what a scan would find.

All values are ``str.casefold()``-ed: SEARCH compares case-insensitively
with both sides folded (see estafeta.imap.search).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from typing import Any

from estafeta.message.structure import (
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    Summary,
    _clean_text,
    _desurrogate,
    decode_rfc2047,
)
from estafeta.message.transfer import decode_quoted_printable

# Envelope slots (rfc3501:7.4.2 order) of the address keys FROM, TO, CC, BCC.
ADDRESS_SLOTS = {"FROM": 2, "TO": 5, "CC": 6, "BCC": 7}
ENVELOPE_SUBJECT = 1


# Header bytes as text (UTF-8, else Latin-1), and envelope strings (8-bit
# bytes kept as lone surrogates) made text: the forms structure.py makes
# the Summary's own search fields with.
clean = _clean_text
desurrogate = _desurrogate


def address_text(addresses: Sequence[Sequence[str | None]] | None) -> str:
    """An ENVELOPE address list (rfc3501:7.4.2) written back as header text:
    ``Name <mailbox@host>, group: member, member;``."""
    out: list[str] = []
    separate = False
    for name, _, mailbox, host in addresses or ():
        if host is None:  # rfc3501:7.4.2 group syntax: start, or end if no name
            if mailbox is None:
                out.append(";")
                separate = True
                continue
            text = f"{desurrogate(mailbox)}:"
        else:
            addr = "" if mailbox in (None, MISSING_MAILBOX) else desurrogate(mailbox or "")
            if host != MISSING_DOMAIN:
                addr = f"{addr}@{desurrogate(host)}"
            text = f"{decode_rfc2047(desurrogate(name))} <{addr}>" if name else addr
        if separate:
            out.append(", ")
        elif out:
            out.append(" ")
        out.append(text)
        separate = host is not None
    return "".join(out)


def envelope_slot(summary: Summary, slot: int) -> Any:
    envelope = summary.envelope
    return envelope[slot] if len(envelope) > slot else None


def header_subject(summary: Summary) -> str | None:
    """HEADER SUBJECT's text: the first Subject field as the ENVELOPE holds
    it, RFC 2047 decoded and folded; None without a Subject field."""
    value = envelope_slot(summary, ENVELOPE_SUBJECT)
    if value is None:
        return None
    return decode_rfc2047(desurrogate(value)).casefold()


def address_key_text(summary: Summary, key: str) -> str:
    """FROM / TO / CC / BCC's text, folded."""
    return address_text(envelope_slot(summary, ADDRESS_SLOTS[key])).casefold()


def search_columns(summary: Summary) -> tuple[str, str | None, str, str, str, str]:
    """The index's search columns of a message: SUBJECT, HEADER SUBJECT
    (None: no Subject field), FROM, TO, CC, BCC."""
    return (
        summary.subject.casefold(),
        header_subject(summary),
        address_key_text(summary, "FROM"),
        address_key_text(summary, "TO"),
        address_key_text(summary, "CC"),
        address_key_text(summary, "BCC"),
    )


MAX_SCAN = 10 * 1024 * 1024
"""Bytes of (still encoded) text part bodies scanned per message by BODY and
TEXT. Bounds the work one message can cause; words past it are not found."""


# rfc5322:3.6.8 field-name, with blanks before the colon tolerated (like
# estafeta.message.structure, so both see the same fields).
_FIELD_RE = re.compile(rb"([!-9;-~]+)[ \t]*:")


def parse_fields(header: bytes) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    name: str | None = None
    value: list[bytes] = []

    def flush() -> None:
        if name is not None:
            # rfc5322:2.2.3 unfolding: the line breaks go, the blanks stay.
            fields.append((name, decode_rfc2047(clean(b"".join(value)).strip(" \t"))))

    for line in header.splitlines():
        if not line:
            break
        if line[0] in b" \t":
            if name is not None:
                value.append(line)
            continue
        flush()
        m = _FIELD_RE.match(line)
        if m is None:  # not a field: the header ends here, as in summarize()
            name = None
            break
        name = m.group(1).decode("ascii").lower()
        value = [line[m.end() :]]
    flush()
    return fields


_NOT_BASE64_RE = re.compile(rb"[^A-Za-z0-9+/]")


def decode_transfer(raw: bytes, encoding: str) -> bytes:
    """Undo Content-Transfer-Encoding (rfc2045:6); unknown ones are kept as is."""
    encoding = encoding.strip().lower()
    if encoding == "quoted-printable":
        return decode_quoted_printable(raw)
    if encoding == "base64":
        try:
            return binascii.a2b_base64(raw)
        except binascii.Error:  # bad padding, or cut short by MAX_SCAN
            clean = _NOT_BASE64_RE.sub(b"", raw)
            try:
                return binascii.a2b_base64(clean[: len(clean) - len(clean) % 4])
            except binascii.Error:
                return b""
    return raw


def charset_of(params: Sequence[Sequence[str]]) -> str:
    for pair in params:
        if len(pair) == 2 and pair[0].lower() == "charset":
            return pair[1].strip()
    return "us-ascii"


def decode_text(raw: bytes, charset: str) -> str:
    # us-ascii text often carries 8-bit UTF-8 anyway; UTF-8 is a superset.
    if charset.lower() in ("us-ascii", "ascii", ""):
        charset = "utf-8"
    try:
        return raw.decode(charset, "replace")
    except LookupError:  # unknown, or not a text codec ("hex")
        return raw.decode("utf-8", "replace")


def raw_body_text(data: bytes, summary: Summary) -> str:
    """rfc9051:6.4.4 BODY: the text parts of the body, decoded.

    Uses the part offsets computed at delivery (Summary.bodystructure), so
    the message is not parsed again.
    """
    pieces: list[str] = []
    budget = MAX_SCAN

    def walk(part: dict[str, Any]) -> None:
        nonlocal budget
        if budget <= 0:
            return
        children = part.get("parts")
        if children is not None:
            for child in children:
                walk(child)
            return
        start = part.get("body_start")
        end = part.get("body_end")
        if not isinstance(start, int) or not isinstance(end, int):
            return
        inner = part.get("body")
        if isinstance(inner, dict):
            # message/rfc822: the encapsulated header is text of this body.
            header_end = inner.get("body_start", start)
            if isinstance(header_end, int):
                header = data[start : min(header_end, start + budget)]
                budget -= len(header)
                pieces.extend(f"{n}: {v}" for n, v in parse_fields(header))
            walk(inner)
            return
        if str(part.get("type", "")).lower() != "text":
            return  # rfc9051:6.4.4 searches text; attachments are not text
        raw = data[start : min(end, start + budget)]
        budget -= len(raw)
        decoded = decode_transfer(raw, str(part.get("encoding", "7bit")))
        pieces.append(decode_text(decoded, charset_of(part.get("params") or ())))

    walk(summary.bodystructure)
    return "\n".join(pieces)


# --------------------------------------------------------------------------
# Summary-based text


def header_text(data: bytes, summary: Summary) -> str:
    """What TEXT matches in the header: one "name: value" line per field,
    unfolded, RFC 2047 decoded, casefolded."""
    fields = parse_fields(data[: summary.header_size])
    return "\n".join(f"{n}: {v}" for n, v in fields).casefold()


def body_text(data: bytes, summary: Summary) -> str:
    """What BODY matches: the decoded text parts and encapsulated headers,
    casefolded."""
    return raw_body_text(data, summary).casefold()
