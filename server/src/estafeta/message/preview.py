"""A message's preview text (rfc8970:2): what a client shows under the
subject in a message list.

The first text part that is not an attachment: text/plain, else text/html
with its markup taken out; decoded (transfer encoding, charset), quoted
lines ("> ...") and whitespace runs dropped, at most 256 characters
(rfc8970:2: "MUST NOT be longer than 256 characters"). Reads at most
``MAX_SCAN`` octets of the part, whatever the message's size.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

from estafeta.message.searchtext import charset_of, decode_text, decode_transfer
from estafeta.message.structure import Summary

MAX_CHARS = 256  # rfc8970:2
MAX_SCAN = 16 * 1024  # octets of the part read
MAX_PARTS = 200  # parts looked at, in a message of many

_HIDDEN = re.compile(r"(?is)<(script|style|head|title)\b.*?(</\1\s*>|\Z)")
_TAG = re.compile(r"(?s)<[^>]*>?")
_SPACE = re.compile(r"\s+")


def preview(data: bytes, summary: Summary) -> str:
    """rfc8970:2 the preview of the message ``data`` whose structure is
    ``summary.bodystructure``; "" when it has no text."""
    plain, markup = _first_text_parts(summary.bodystructure)
    part = plain or markup
    if part is None:
        return ""
    start, end = part["body_start"], part["body_end"]
    raw = data[start : min(end, start + MAX_SCAN)]
    text = decode_text(
        decode_transfer(raw, str(part.get("encoding", "7bit"))),
        charset_of(part.get("params") or ()),
    )
    if part is markup:
        text = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", text)))
    lines = (line for line in text.splitlines() if not line.lstrip().startswith(">"))
    return _SPACE.sub(" ", " ".join(lines)).strip()[:MAX_CHARS]


def _first_text_parts(
    root: Mapping[str, Any],
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The first inline text/plain and text/html leaves, depth first
    (iterative: a deep structure costs no recursion), not inside an
    attached message."""
    plain = markup = None
    stack = [root]
    seen = 0
    while stack and seen < MAX_PARTS and plain is None:
        part = stack.pop()
        seen += 1
        children = part.get("parts")
        if children is not None:
            stack.extend(reversed(children))
            continue
        if not isinstance(part.get("body_start"), int) or not isinstance(part.get("body_end"), int):
            continue
        disposition = part.get("disposition")
        if disposition and str(disposition[0]).lower() == "attachment":
            continue
        if str(part.get("type", "")).lower() != "text":
            continue
        subtype = str(part.get("subtype", "")).lower()
        if subtype == "plain":
            plain = part
        elif subtype == "html" and markup is None:
            markup = part
    return plain, markup
