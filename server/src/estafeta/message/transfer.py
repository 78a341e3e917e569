"""Quoted-printable decoding as rfc2045:6.7 describes it.

``binascii.a2b_qp`` keeps the whitespace that ends an encoded line and
takes only "=" immediately before the line end as a soft break. rfc2045:6.7
rule 3 makes trailing whitespace transport padding, which decoding deletes,
and "=" followed by such padding is still a soft break (rule 5). Used
wherever a quoted-printable body is decoded: IMAP BINARY, SEARCH BODY/TEXT,
Sieve body, the spam features.
"""

from __future__ import annotations

import binascii
import re

_LINE = re.compile(rb"([^\r\n]*)(\r\n|\n|\r|$)")


def decode_quoted_printable(raw: bytes) -> bytes:
    """Trailing spaces and tabs of each line dropped (rule 3); a line that
    then ends in "=" joins the next (rule 5, a soft break); "=XX" is an
    octet, and a "=" not followed by two hex digits is kept (the lenient
    reading rfc2045:6.7 recommends). Linear in ``raw``."""
    out = []
    for match in _LINE.finditer(raw):
        text, end = match.group(1).rstrip(b" \t"), match.group(2)
        if text.endswith(b"="):
            out.append(text[:-1])
        else:
            out.append(text + end)
        if not end:
            break
    return binascii.a2b_qp(b"".join(out))
