"""The keys SORT and THREAD order messages by (rfc5256, rfc5957), computed
once per message from its Summary at delivery and kept in the index
(estafeta.store.index, schema 11), so that a SORT or THREAD of a whole
mailbox reads one row per message and parses nothing.

Strings are kept already prepared for comparison: two keys compare as the
collation says when compared as plain strings (code point order). The
collation is i;unicode-casemap (rfc5051:2: each character titlecased, then
decomposed), which rfc5256:7 allows in place of i;ascii-casemap and which
the peer (Dovecot) uses. It is why "[xyz]" sorts after "c": "[" comes after
"C" but before "c".

Choices, where the RFCs leave room (the same as Dovecot's, whose imaptest
suite is the peer check):

* An address key is taken from the first entry of the address list, and
  when that entry starts a group (rfc5322:3.4 "name: a@b, c@d;") the group's
  name stands for the mailbox: "undisclosed-recipients:;" sorts as
  "undisclosed-recipients".
* A Message-ID is valid for threading when it is written "<left@right>"
  (rfc5322:3.6.4) with no "(" or "[" in it; blanks inside are dropped. The
  first valid one of Message-ID counts, all valid ones of References, and
  without those the first valid one of In-Reply-To (rfc5256:3 REFERENCES).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from estafeta.message.structure import Summary, _desurrogate, decode_rfc2047

__all__ = ["SortColumns", "base_subject", "collate", "sort_columns", "valid_ids"]

# (sort_subject, subject_reply, sort_from, sort_to, sort_cc, sort_dfrom,
#  sort_dto, thread_id, thread_refs): the index's columns, in this order.
SortColumns = tuple[str, int, str, str, str, str, str, str | None, str]


@functools.lru_cache(maxsize=4096)
def _title_char(ch: str) -> str:
    # rfc5051:2 uses the simple (one character) titlecase mapping; Python's
    # str.title() is the full one ("ß" -> "Ss"), so keep those as they are.
    titled = ch.title()
    if len(titled) == 1:
        return titled
    upper = ch.upper()
    return upper if len(upper) == 1 else ch


def collate(text: str) -> str:
    """``text`` prepared for i;unicode-casemap comparison (rfc5051:2):
    titlecase, then canonical and compatibility decomposition, repeated
    (a decomposed ligature "ﬁ" gives "f" "i", titlecased again)."""
    if text.isascii():
        return text.upper()
    titled = "".join(map(_title_char, text))
    decomposed = unicodedata.normalize("NFKD", titled)
    if decomposed == titled:
        return titled
    return "".join(map(_title_char, decomposed))


_PACK_RE = re.compile(r"[ \t\r\n]+")


def _blob_end(text: str, pos: int, end: int) -> int:
    """rfc5256:5 subj-blob = "[" *BLOBCHAR "]" *WSP at ``pos``: where it
    ends (blanks are already one space), or -1 if there is none."""
    if pos >= end or text[pos] != "[":
        return -1
    close = pos + 1
    while close < end and text[close] not in "[]":
        close += 1
    if close >= end or text[close] != "]":
        return -1
    close += 1
    if close < end and text[close] == " ":
        close += 1
    return close


def _leader(text: str, pos: int, end: int) -> tuple[int, bool, bool]:
    """rfc5256:2.1 step (3): one subj-leader = (*subj-blob subj-refwd) / WSP
    at ``pos``. Returns (new position, anything removed, a subj-refwd
    removed)."""
    removed = False
    if pos < end and text[pos] == " ":
        pos += 1  # WSP: always removed, whatever follows
        removed = True
    at = pos
    while at < end and text[at] == "[":
        at = _blob_end(text, at, end)
        if at < 0:
            return pos, removed, False
    # subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
    if text.startswith("RE", at, end):
        at += 2
    elif text.startswith("FWD", at, end):
        at += 3
    elif text.startswith("FW", at, end):
        at += 2
    else:
        return pos, removed, False
    if at < end and text[at] == " ":
        at += 1
    if at < end and text[at] == "[":
        at = _blob_end(text, at, end)
        if at < 0:
            return pos, removed, False
    if at < end and text[at] == ":":
        return at + 1, True, True
    return pos, removed, False


def base_subject(subject: str) -> tuple[str, bool]:
    """rfc5256:2.1: the base subject of a (RFC 2047 decoded) subject, as a
    collation key, and whether the message is a reply or forward: whether
    the extraction removed a subj-refwd, a "(fwd)" subj-trailer, or a
    subj-fwd-hdr and subj-fwd-trl.

    Linear in the subject's length: each step only moves the two ends
    inwards.
    """
    # (1) encoded-words are decoded already (Summary.subject); tabs and
    # line breaks become spaces, runs of spaces one space. Working on the
    # collation key makes "re", "Re" and "RE" alike.
    text = _PACK_RE.sub(" ", collate(subject))
    start, end = 0, len(text)
    reply = False
    while True:
        # (2) subj-trailer = "(fwd)" / WSP, removed from the end until none is left.
        while end > start:
            if text[end - 1] == " ":
                end -= 1
            elif end - 5 >= start and text.startswith("(FWD)", end - 5, end):
                end -= 5
                reply = True
            else:
                break
        # (3) subj-leader, (4) a subj-blob if text remains after it,
        # (5) until neither removes anything.
        while True:
            start, found, refwd = _leader(text, start, end)
            reply = reply or refwd
            after = _blob_end(text, start, end)
            if 0 <= after < end:
                start = after
                found = True
                # (3) just scanned this whole run of blobs and found no
                # subj-refwd after it, so it finds none after any of them
                # either: (4) removes the rest of the run at once (all but a
                # last one that ends the text). Linear, not quadratic, in a
                # subject of many "[a]".
                after = _blob_end(text, start, end)
                while 0 <= after < end:
                    start = after
                    after = _blob_end(text, start, end)
            if not found:
                break
        # (6) subj-fwd-hdr "[fwd:" ... subj-fwd-trl "]": unwrap, then from (2).
        if end - start >= 6 and text.startswith("[FWD:", start, end) and text[end - 1] == "]":
            start += 5
            end -= 1
            reply = True
            continue
        # (7)
        return text[start:end], reply


# rfc5322:3.6.4 msg-id, read as the peer (Dovecot's message_id_get_next)
# reads it, so that both link the same messages: from each "<", up to the
# next ">"; when no '"' or "(" comes first, that text with its blanks
# dropped is the id if it holds an "@" (domain literals "[...]" included);
# otherwise it is parsed: [CFWS] (quoted-string / dot-atom) [CFWS] "@"
# [CFWS] dot-atom [CFWS] ">", comments dropped, quotes removed.
_BLANKS = " \t\r\n"
_ATEXT = frozenset(
    "!#$%&'*+-/=?^_`{|}~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def _is_atext(ch: str) -> bool:
    return ch in _ATEXT or ord(ch) >= 128


def _skip_cfws(text: str, pos: int) -> int:
    """rfc5322:3.2.2 CFWS at ``pos``: where it ends (-1: a comment left open)."""
    end = len(text)
    while pos < end:
        ch = text[pos]
        if ch in _BLANKS:
            pos += 1
        elif ch == "(":
            depth = 1
            pos += 1
            while pos < end and depth:
                ch = text[pos]
                if ch == "\\":
                    pos += 1
                elif ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                pos += 1
            if depth:
                return -1
        else:
            break
    return pos


def _dot_atom(text: str, pos: int, out: list[str]) -> int:
    """dot-atom at ``pos`` (CFWS allowed around the dots, as RFC 822 did),
    appended to ``out``; where it and the CFWS after it end, -1 if none."""
    end = len(text)
    if pos >= end or not _is_atext(text[pos]):
        return -1
    while True:
        start = pos
        while pos < end and _is_atext(text[pos]):
            pos += 1
        if pos == start:
            return -1
        out.append(text[start:pos])
        pos = _skip_cfws(text, pos)
        if pos < 0 or pos >= end or text[pos] != ".":
            return pos
        out.append(".")
        pos = _skip_cfws(text, pos + 1)
        if pos < 0 or pos >= end:
            return -1


def _quoted(text: str, pos: int, out: list[str]) -> int:
    """quoted-string at ``pos`` (a '"'), its content appended to ``out``."""
    end = len(text)
    pos += 1
    while pos < end:
        ch = text[pos]
        if ch == '"':
            return _skip_cfws(text, pos + 1)
        if ch == "\\":
            pos += 1
            if pos >= end:
                return -1
            out.append(text[pos])
        elif ch not in "\r\n":
            out.append(ch)
        pos += 1
    return -1


def _parsed_id(text: str, pos: int) -> tuple[str, int] | None:
    """The slow way: the id after a "<" at ``pos``, and where it ends."""
    out: list[str] = []
    pos = _skip_cfws(text, pos)
    if pos < 0 or pos >= len(text):
        return None
    pos = _quoted(text, pos, out) if text[pos] == '"' else _dot_atom(text, pos, out)
    if pos < 0 or pos >= len(text) or text[pos] != "@":
        return None
    out.append("@")
    pos = _skip_cfws(text, pos + 1)
    if pos < 0:
        return None
    pos = _dot_atom(text, pos, out)
    if pos < 0 or pos >= len(text) or text[pos] != ">":
        return None
    return "".join(out), pos + 1


def valid_ids(raw: str | None) -> list[str]:
    """The valid Message-IDs in a header value, "<left@right>", in order."""
    if not raw:
        return []
    text = _desurrogate(raw)
    found: list[str] = []
    pos = 0
    while True:
        pos = text.find("<", pos)
        if pos < 0:
            return found
        pos += 1
        scan, at = pos, False
        while scan < len(text) and text[scan] not in '>"(':
            at = at or text[scan] == "@"
            scan += 1
        if scan >= len(text):
            return found
        if text[scan] == ">":
            if at:
                found.append("<" + "".join(text[pos:scan].split()) + ">")
            pos = scan + 1
            continue
        parsed = _parsed_id(text, pos)
        if parsed is not None:
            # blanks a quoted local part keeps would split thread_refs (space
            # separated): they become U+0001, which no id holds otherwise.
            found.append("<" + "\x01".join(parsed[0].split()) + ">")
            pos = parsed[1]
        else:  # not an id: skip to after the next ">"
            close = text.find(">", pos)
            if close < 0:
                return found
            pos = close + 1


def _slot(summary: Summary, slot: int) -> Any:
    envelope = summary.envelope
    return envelope[slot] if len(envelope) > slot else None


def _first(
    addresses: Sequence[Sequence[str | None]] | None,
) -> Sequence[str | None] | None:
    if not addresses:
        return None
    first = addresses[0]
    return first if len(first) == 4 else None


def mailbox_key(addresses: Sequence[Sequence[str | None]] | None) -> str:
    """rfc5256:3 FROM / TO / CC: the addr-mailbox of the first address
    (a group's name when the list starts with a group); "" for none."""
    first = _first(addresses)
    if first is None or first[2] is None:
        return ""
    return collate(_desurrogate(first[2]))


def display_key(addresses: Sequence[Sequence[str | None]] | None) -> str:
    """rfc5957:3 DISPLAYFROM / DISPLAYTO: the first address's display name,
    RFC 2047 decoded; without one, "mailbox@host" (rfc5957:3: the
    addr-mailbox and addr-host as they would be for FROM); "" for none."""
    first = _first(addresses)
    if first is None:
        return ""
    name, _, mailbox, host = first
    if name:
        decoded = decode_rfc2047(_desurrogate(name))
        if decoded:
            return collate(decoded)
    if mailbox is None:
        return ""
    text = _desurrogate(mailbox)
    if host is not None:
        text = f"{text}@{_desurrogate(host)}"
    return collate(text)


# Envelope slots (rfc3501:7.4.2 order).
_FROM, _TO, _CC, _IN_REPLY_TO, _MESSAGE_ID = 2, 5, 6, 8, 9


def sort_columns(summary: Summary) -> SortColumns:
    """The index's sort and thread columns of a message (see SortColumns)."""
    subject, reply = base_subject(summary.subject)
    from_, to = _slot(summary, _FROM), _slot(summary, _TO)
    own = valid_ids(_slot(summary, _MESSAGE_ID))
    # rfc5256:3 REFERENCES: the References field's ids, else In-Reply-To's first.
    refs = valid_ids(" ".join(summary.references))
    if not refs:
        refs = valid_ids(_slot(summary, _IN_REPLY_TO))[:1]
    return (
        subject,
        int(reply),
        mailbox_key(from_),
        mailbox_key(to),
        mailbox_key(_slot(summary, _CC)),
        display_key(from_),
        display_key(to),
        own[0] if own else None,
        " ".join(refs),
    )
