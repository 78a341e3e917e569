"""estafeta.message.preview: rfc8970 preview text."""

from __future__ import annotations

import base64

from estafeta.message import summarize
from estafeta.message.preview import MAX_CHARS, preview


def of(data: bytes) -> str:
    return preview(data, summarize(data))


def test_plain_text_with_whitespace_and_quotes_dropped() -> None:
    data = b"Subject: x\r\n\r\nHi  Bob,\r\n\r\n> what you wrote\r\n>> and before\r\nSee you.\r\n"
    assert of(data) == "Hi Bob, See you."


def test_plain_is_preferred_to_html_and_charsets_are_decoded() -> None:
    data = (
        b"Subject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>the <b>html</b></p>\r\n"
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 au lait=\r\n ici\r\n"
        b"--b--\r\n"
    )
    assert of(data) == "Café au lait ici"


def test_html_markup_scripts_and_entities() -> None:
    data = (
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(
            b"<html><head><title>T</title><style>p{}</style></head>"
            b"<body><script>alert(1)</script><p>Fish &amp; chips&nbsp;\xc2\xa3</p></body></html>"
        )
    )
    assert of(data) == "Fish & chips £"


def test_attachments_and_no_text() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nnot this\r\n"
        b"--b\r\nContent-Type: image/png\r\n\r\nxx\r\n--b--\r\n"
    )
    assert of(data) == ""
    assert of(b"Subject: empty\r\n\r\n") == ""


def test_at_most_256_characters_of_a_large_part() -> None:
    word = "été ".encode() * 100_000
    text = of(b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + word)
    assert len(text) == MAX_CHARS and text.startswith("été été")
