"""FETCH responses in pieces (estafeta.imap.fetch.prepare / render_pieces).

The server streams a FETCH response (issue 14 item 5): ``prepare`` does all
that can fail, then ``render_pieces`` yields the response, with body data as
views of the message file read once. Expected bytes are written out here
from rfc9051:6.4.5 / 7.5.2 and rfc3516:4.3, not computed by the renderer.
"""

from __future__ import annotations

import pytest

from conftest import Loader
from estafeta.imap.fetch import FetchError, MessageData, prepare, render_items, render_pieces
from estafeta.imap.types import FetchAtt, Section
from estafeta.message import summarize

HEADER = b"From: a@example.test\r\nSubject: pieces\r\n\r\n"


def message(data: bytes) -> tuple[MessageData, Loader]:
    loader = Loader(data)
    summary = summarize(data)
    return MessageData(1, (), 0, len(data), 1, summary, loader), loader


def partial(origin: int, length: int, *, peek: bool = True) -> FetchAtt:
    return FetchAtt("BODY[]", Section(), peek, (origin, length))


def test_many_partials_read_the_file_once_and_copy_nothing() -> None:
    data = HEADER + b"0123456789" * 300
    msg, loader = message(data)
    atts = [partial(i, 2000) for i in range(300)]
    prepare(msg, atts)
    pieces = list(render_pieces(msg, atts, imap4rev2=True))
    assert loader.calls == 1
    views = [p for p in pieces if isinstance(p, memoryview)]
    # Every literal over 1024 octets is a view of the file, not a copy.
    assert len(views) == sum(1 for i in range(300) if min(2000, len(data) - i) > 1024)
    assert all(v.obj is data for v in views)
    whole = b"".join(pieces)
    assert whole.startswith(b"BODY[]<0> {2000}\r\n" + data[:2000] + b" BODY[]<1> {2000}\r\n")
    assert whole == render_items(msg, atts, imap4rev2=True)


def test_pieces_join_to_the_response_items() -> None:
    data = HEADER + b"x" * 3000
    msg, _ = message(data)
    atts = [FetchAtt("UID"), partial(10, 5), partial(0, 4000), FetchAtt("RFC822.SIZE")]
    prepare(msg, atts)
    joined = b"".join(render_pieces(msg, atts, imap4rev2=True))
    # rfc9051:7.5.2: a partial is answered with its origin only; a short
    # one may be a quoted string, a long one is a literal.
    assert joined == (
        b'UID 1 BODY[]<10> "ample" BODY[]<0> {%d}\r\n' % len(data)
        + data
        + b" RFC822.SIZE %d" % len(data)
    )


def test_nul_is_sent_as_0x80_in_body_and_kept_in_a_binary_literal8() -> None:
    body = b"a\0b" * 600
    data = HEADER + body
    msg, loader = message(data)
    atts = [FetchAtt("BODY[]", Section(text="TEXT"), True), FetchAtt("BINARY", Section(), True)]
    prepare(msg, atts)
    joined = b"".join(render_pieces(msg, atts, imap4rev2=True))
    assert joined == (
        b"BODY[TEXT] {1800}\r\n"
        + body.replace(b"\0", b"\x80")
        + b" BINARY[] ~{%d}\r\n" % len(data)
        + data
    )
    assert loader.calls == 1


def test_partial_past_the_end_is_empty() -> None:
    data = HEADER + b"y" * 2000
    msg, _ = message(data)
    atts = [partial(len(data) + 5, 10), partial(len(data) - 3, 10**12)]
    prepare(msg, atts)
    joined = b"".join(render_pieces(msg, atts, imap4rev2=True))
    assert joined == b'BODY[]<%d> "" BODY[]<%d> "yyy"' % (len(data) + 5, len(data) - 3)


def test_what_fails_fails_in_prepare() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Transfer-Encoding: x-unknown\r\n\r\nzzz\r\n--b--\r\n"
    )
    msg, _ = message(data)
    atts = [FetchAtt("BINARY", Section((1,)), True)]
    with pytest.raises(FetchError) as error:
        prepare(msg, atts)
    assert error.value.code == "UNKNOWN-CTE"  # rfc3516:4.2

    def gone() -> bytes:
        raise FileNotFoundError("expunged")

    msg2 = MessageData(1, (), 0, 10, 1, summarize(HEADER), gone)
    with pytest.raises(FileNotFoundError):
        prepare(msg2, [partial(0, 5)])
    # Items from the index need no file.
    prepare(msg2, [FetchAtt("UID"), FetchAtt("FLAGS")])
    assert b"".join(render_pieces(msg2, [FetchAtt("UID")], imap4rev2=True)) == b"UID 1"
