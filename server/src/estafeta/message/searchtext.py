"""The text SEARCH matches a message's envelope fields against
(rfc9051:6.4.4), computed the same way at delivery (for the index's search
columns) and at search time (to check a candidate), so that an index lookup
never misses what a scan would find.

All values are ``str.casefold()``-ed: SEARCH compares case-insensitively
with both sides folded (see estafeta.imap.search).
"""

from __future__ import annotations

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
