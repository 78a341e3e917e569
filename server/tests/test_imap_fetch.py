"""Tests for estafeta.imap.fetch: FETCH data items (rfc9051:6.4.5, 7.5.2).

Messages go through ``summarize`` as at delivery; expected responses are
written out by hand from the RFC text (the sample of rfc3501:8 among them),
never computed with the renderer's own functions.
"""

from __future__ import annotations

import base64
import calendar
from collections.abc import Sequence

import pytest

from conftest import Loader
from estafeta.imap.fetch import (
    FetchError,
    MessageData,
    needs_content,
    render_items,
    sets_seen,
)
from estafeta.imap.types import FetchAtt, Section
from estafeta.message import summarize


def crlf(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\n", b"\r\n")


def lit(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


SIMPLE_HEADER = crlf(
    """From: Alice <alice@example.test>
To: bob@example.test
Subject: hello
 world
Received: from a
Received: from b
\tby c
X-Mixed-Case: yes
Date: Wed, 17 Jul 1996 02:23:25 -0700

"""
)
SIMPLE_BODY = crlf("Line one.\nLine two.\n")
SIMPLE = SIMPLE_HEADER + SIMPLE_BODY

MIXED_HEADER = crlf(
    """From: Alice <alice@example.test>
To: bob@example.test
Subject: mixed
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

"""
)
TEXT_MIME = crlf(
    """Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

"""
)
TEXT_QP = crlf("caf=C3=A9 and a soft=\n break\nend")
ATTACHMENT_MIME = crlf(
    """Content-Type: application/octet-stream; name="a.bin"
Content-Transfer-Encoding: base64

"""
)
ATTACHMENT_B64 = b"AAEC\r\naGVsbG8="  # 00 01 02 "hello"
INNER_HEADER = crlf(
    """From: Carol <carol@example.test>
Subject: inner
Content-Type: text/plain

"""
)
INNER_BODY = b"inner body"
MESSAGE_MIME = b"Content-Type: message/rfc822\r\n\r\n"
MIXED = (
    MIXED_HEADER
    + b"preamble\r\n--XX\r\n"
    + TEXT_MIME
    + TEXT_QP
    + b"\r\n--XX\r\n"
    + ATTACHMENT_MIME
    + ATTACHMENT_B64
    + b"\r\n--XX\r\n"
    + MESSAGE_MIME
    + INNER_HEADER
    + INNER_BODY
    + b"\r\n--XX--\r\nepilogue\r\n"
)

LF_ONLY = b"Subject: lf\nX-Other: 1\n\nfirst\nsecond\n"


def message(
    data: bytes,
    *,
    uid: int = 4,
    flags: tuple[str, ...] = ("\\Seen", "$Label1", "\\Answered"),
    internal_date: int = calendar.timegm((1996, 7, 17, 2, 44, 25)),
) -> tuple[MessageData, Loader]:
    loader = Loader(data)
    msg = MessageData(
        uid=uid,
        flags=flags,
        internal_date=internal_date,
        size=len(data),
        modseq=12345,
        summary=summarize(data),
        load=loader,
    )
    return msg, loader


def body(
    part: Sequence[int] = (),
    text: str = "",
    fields: Sequence[str] = (),
    *,
    peek: bool = False,
    partial: tuple[int, int] | None = None,
) -> FetchAtt:
    return FetchAtt("BODY", Section(tuple(part), text, tuple(fields)), peek, partial)


def binary(
    part: Sequence[int] = (), *, peek: bool = False, partial: tuple[int, int] | None = None
) -> FetchAtt:
    return FetchAtt("BINARY", Section(tuple(part)), peek, partial)


def binary_size(part: Sequence[int]) -> FetchAtt:
    return FetchAtt("BINARY.SIZE", Section(tuple(part)))


def render(data: bytes, *atts: FetchAtt, imap4rev2: bool = False) -> bytes:
    msg, _ = message(data)
    return render_items(msg, atts, imap4rev2=imap4rev2)


# --------------------------------------------------------------------------
# Items from the index


def test_index_items_exact_and_without_reading_the_file() -> None:
    msg, loader = message(SIMPLE)
    atts = [FetchAtt(n) for n in ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ")]
    out = render_items(msg, atts, imap4rev2=False)
    assert out == (
        b"UID 4 FLAGS (\\Seen $Label1 \\Answered) "
        b'INTERNALDATE "17-Jul-1996 02:44:25 +0000" '
        b"RFC822.SIZE %d MODSEQ (12345)" % len(SIMPLE)
    )
    assert loader.calls == 0


def test_internaldate_pads_the_day_with_a_space_and_uses_utc() -> None:
    # 2024-03-05 23:59:59 UTC; rfc9051:9 date-day-fixed = (SP DIGIT) / 2DIGIT.
    msg, _ = message(SIMPLE, internal_date=calendar.timegm((2024, 3, 5, 23, 59, 59)))
    out = render_items(msg, [FetchAtt("INTERNALDATE")], imap4rev2=True)
    assert out == b'INTERNALDATE " 5-Mar-2024 23:59:59 +0000"'


def test_empty_flags_and_items_in_the_order_asked() -> None:
    msg, _ = message(SIMPLE, flags=(), uid=99)
    out = render_items(msg, [FetchAtt("FLAGS"), FetchAtt("UID")], imap4rev2=False)
    assert out == b"FLAGS () UID 99"


# rfc3501:8 (the sample session, also in rfc9051:8): "a FETCH 12 full" answers
#   ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)"
#   "IMAP4rev1 WG mtg summary and minutes"
#   (("Terry Gray" NIL "gray" "cac.washington.edu"))
#   (("Terry Gray" NIL "gray" "cac.washington.edu"))
#   (("Terry Gray" NIL "gray" "cac.washington.edu"))
#   ((NIL NIL "imap" "cac.washington.edu"))
#   ((NIL NIL "minutes" "CNRI.Reston.VA.US")
#   ("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL
#   "<B27397-0100000@cac.washington.edu>")
#   BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)
# The RFC folds the response for reading; on the wire the items are
# separated by single spaces and the addresses of one list follow each other
# with none (rfc9051:9 env-cc = "(" 1*address ")"). Below, the message that
# gives this envelope: 3,028 octets of body in 92 lines.
RFC3501_HEADER = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
)
RFC3501_BODY = (b"x" * 31 + b"\r\n") * 91 + b"x" * 23 + b"\r\n"
RFC3501_ENVELOPE = (
    b'ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" '
    b'"IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US")'
    b'("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL '
    b'"<B27397-0100000@cac.washington.edu>")'
)


def test_envelope_and_body_of_the_rfc3501_sample() -> None:
    assert (len(RFC3501_BODY), RFC3501_BODY.count(b"\r\n")) == (3028, 92)
    msg, loader = message(RFC3501_HEADER + RFC3501_BODY)
    out = render_items(msg, [FetchAtt("ENVELOPE"), FetchAtt("BODY")], imap4rev2=False)
    # The RFC writes the default encoding as "7BIT"; we send it as "7bit"
    # (body-fld-enc is case-insensitive, and Dovecot writes it so too).
    assert out == (
        RFC3501_ENVELOPE + b' BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 3028 92)'
    )
    assert loader.calls == 0


def test_bodystructure_of_the_rfc3501_sample_adds_extension_data() -> None:
    msg, _ = message(RFC3501_HEADER + RFC3501_BODY)
    out = render_items(msg, [FetchAtt("BODYSTRUCTURE")], imap4rev2=True)
    # rfc9051:9 body-ext-1part: body-fld-md5 body-fld-dsp body-fld-lang body-fld-loc.
    assert out == (
        b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 3028 92'
        b" NIL NIL NIL NIL)"
    )


def test_envelope_body_bodystructure_of_a_multipart() -> None:
    msg, loader = message(MIXED)
    atts = [FetchAtt("ENVELOPE"), FetchAtt("BODY"), FetchAtt("BODYSTRUCTURE")]
    out = render_items(msg, atts, imap4rev2=False)
    # Written out by hand from rfc9051:7.5.2 and the grammar of rfc9051:9:
    # - ENVELOPE: no Date (NIL); Sender and Reply-To default to From; no Cc,
    #   Bcc, In-Reply-To, Message-ID.
    # - parts: text 34 octets in 2 lines (the CRLF before a boundary belongs
    #   to the boundary, rfc2046:5.1.1), application 14 octets (no line count
    #   for non-text), message/rfc822 of 88 octets and 4 lines with the
    #   envelope and structure of the inner message (its text/plain defaults
    #   to charset us-ascii, rfc2045:5.2), then the subtype "mixed".
    # - BODY has no extension data; BODYSTRUCTURE adds, per leaf, md5 dsp lang
    #   loc (NIL NIL NIL NIL) and, for the multipart, the parameters then dsp
    #   lang loc.
    envelope = (
        b'(NIL "mixed" (("Alice" NIL "alice" "example.test")) '
        b'(("Alice" NIL "alice" "example.test")) (("Alice" NIL "alice" "example.test")) '
        b'((NIL NIL "bob" "example.test")) NIL NIL NIL NIL)'
    )
    inner_envelope = (
        b'(NIL "inner" (("Carol" NIL "carol" "example.test")) '
        b'(("Carol" NIL "carol" "example.test")) (("Carol" NIL "carol" "example.test")) '
        b"NIL NIL NIL NIL NIL)"
    )
    body = (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 34 2)'
        b'("application" "octet-stream" ("name" "a.bin") NIL NIL "base64" 14)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 88 ' + inner_envelope + b" "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0) 4) "mixed")'
    )
    bodystructure = (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 34 2'
        b" NIL NIL NIL NIL)"
        b'("application" "octet-stream" ("name" "a.bin") NIL NIL "base64" 14'
        b" NIL NIL NIL NIL)"
        b'("message" "rfc822" NIL NIL NIL "7bit" 88 ' + inner_envelope + b" "
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL) 4'
        b" NIL NIL NIL NIL)"
        b' "mixed" ("boundary" "XX") NIL NIL NIL)'
    )
    assert out == b"ENVELOPE " + envelope + b" BODY " + body + b" BODYSTRUCTURE " + bodystructure
    assert loader.calls == 0


def test_body_structure_of_message_global_depends_on_imap4rev2() -> None:
    data = crlf(
        """Subject: outer
Content-Type: message/global

Subject: inner

hi
"""
    )
    rev1 = render(data, FetchAtt("BODYSTRUCTURE"), imap4rev2=False)
    rev2 = render(data, FetchAtt("BODYSTRUCTURE"), imap4rev2=True)
    assert b'"inner"' not in rev1  # rfc3501: message/global is a plain leaf
    assert b'"inner"' in rev2  # rfc9051:7.5.2: envelope of the encapsulated message


def test_utf8_header_is_sent_exactly_in_the_envelope() -> None:
    data = "Subject: caf\u00e9\r\n\r\nx".encode()
    msg, _ = message(data)
    out = render_items(msg, [FetchAtt("ENVELOPE")], imap4rev2=True, utf8=True)
    assert out == b"ENVELOPE (NIL {5}\r\ncaf\xc3\xa9 NIL NIL NIL NIL NIL NIL NIL NIL)"


# --------------------------------------------------------------------------
# BODY[...] of a single-part message


def test_whole_header_text_and_part_one() -> None:
    msg, loader = message(SIMPLE)
    out = render_items(
        msg, [body(), body(text="HEADER"), body(text="TEXT"), body([1])], imap4rev2=False
    )
    assert out == (
        b"BODY[] "
        + lit(SIMPLE)
        + b" BODY[HEADER] "
        + lit(SIMPLE_HEADER)
        + b" BODY[TEXT] "
        + lit(SIMPLE_BODY)
        + b" BODY[1] "
        + lit(SIMPLE_BODY)
    )
    assert loader.calls == 1  # four sections, one read


def test_short_ascii_section_is_a_quoted_string() -> None:
    data = b"Subject: x\r\n\r\nhi"
    assert render(data, body([1])) == b'BODY[1] "hi"'


def test_body_peek_is_answered_as_body() -> None:
    out = render(SIMPLE, body(text="TEXT", peek=True))
    assert out == b"BODY[TEXT] " + lit(SIMPLE_BODY)


def test_name_body_with_brackets_is_a_section_too() -> None:
    out = render(SIMPLE, FetchAtt("BODY[]", Section((1,))))
    assert out == b"BODY[1] " + lit(SIMPLE_BODY)


def test_message_without_body_gives_empty_text() -> None:
    data = b"Subject: no body\r\n\r\n"
    assert render(data, body(text="TEXT")) == b'BODY[TEXT] ""'
    assert render(data, body(text="HEADER")) == b"BODY[HEADER] " + lit(data)


def test_nonexistent_parts_are_empty_without_reading_the_file() -> None:
    msg, loader = message(SIMPLE)
    atts = [body([2]), body([1, 1]), body([1], "HEADER"), body([1], "TEXT"), body(text="MIME")]
    out = render_items(msg, atts, imap4rev2=False)
    assert out == b'BODY[2] "" BODY[1.1] "" BODY[1.HEADER] "" BODY[1.TEXT] "" BODY[MIME] ""'
    assert loader.calls == 0
    msg, loader = message(SIMPLE)
    render_items(msg, [body([7]), binary([7]), binary_size([7])], imap4rev2=False)
    assert loader.calls == 0


# --------------------------------------------------------------------------
# BODY[...] of a multipart message


def test_multipart_part_bodies_without_mime_header() -> None:
    out = render(MIXED, body([1]), body([2]))
    assert out == b"BODY[1] " + lit(TEXT_QP) + b" BODY[2] {14}\r\nAAEC\r\naGVsbG8="


def test_multipart_mime_headers() -> None:
    out = render(MIXED, body([1], "MIME"), body([3], "MIME"))
    assert out == b"BODY[1.MIME] " + lit(TEXT_MIME) + b" BODY[3.MIME] " + lit(MESSAGE_MIME)


def test_multipart_text_is_everything_after_the_header() -> None:
    out = render(MIXED, body(text="TEXT"))
    assert out == b"BODY[TEXT] " + lit(MIXED[len(MIXED_HEADER) :])
    assert out.endswith(b"--XX--\r\nepilogue\r\n")


def test_message_rfc822_part_and_its_header_and_text() -> None:
    out = render(
        MIXED,
        body([3]),
        body([3], "HEADER"),
        body([3], "TEXT"),
        body([3, 1]),
        body([3], "HEADER.FIELDS", ["SUBJECT"]),
    )
    assert out == (
        b"BODY[3] "
        + lit(INNER_HEADER + INNER_BODY)
        + b" BODY[3.HEADER] "
        + lit(INNER_HEADER)
        + b' BODY[3.TEXT] "inner body" BODY[3.1] "inner body"'
        + b" BODY[3.HEADER.FIELDS (SUBJECT)] "
        + lit(b"Subject: inner\r\n\r\n")
    )


def test_header_and_text_of_a_non_message_part_are_empty() -> None:
    out = render(MIXED, body([1], "HEADER"), body([2], "TEXT"), body([2], "HEADER.FIELDS", ["A"]))
    assert out == b'BODY[1.HEADER] "" BODY[2.TEXT] "" BODY[2.HEADER.FIELDS (A)] ""'


def test_part_numbers_out_of_range_are_empty() -> None:
    out = render(MIXED, body([4]), body([2, 1]), body([3, 2]), body([0]))
    assert out == b'BODY[4] "" BODY[2.1] "" BODY[3.2] "" BODY[0] ""'


def test_message_global_part_has_header_and_text() -> None:
    data = crlf(
        """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/global

Subject: g

text
--b--
"""
    )
    out = render(data, body([1], "HEADER"), body([1], "TEXT"))
    assert out == b'BODY[1.HEADER] {14}\r\nSubject: g\r\n\r\n BODY[1.TEXT] "text"'


# --------------------------------------------------------------------------
# HEADER.FIELDS


def test_header_fields_folded_repeated_in_message_order() -> None:
    out = render(SIMPLE, body(text="HEADER.FIELDS", fields=["RECEIVED", "SUBJECT"]))
    expected = crlf("Subject: hello\n world\nReceived: from a\nReceived: from b\n\tby c\n\n")
    assert out == b"BODY[HEADER.FIELDS (RECEIVED SUBJECT)] " + lit(expected)


def test_header_fields_match_case_insensitively() -> None:
    out = render(SIMPLE, body(text="HEADER.FIELDS", fields=["x-mixed-case", "To"]))
    assert out == b"BODY[HEADER.FIELDS (x-mixed-case To)] " + lit(
        b"To: bob@example.test\r\nX-Mixed-Case: yes\r\n\r\n"
    )


def test_header_fields_not() -> None:
    out = render(SIMPLE, body(text="HEADER.FIELDS.NOT", fields=["RECEIVED", "SUBJECT", "DATE"]))
    expected = crlf("From: Alice <alice@example.test>\nTo: bob@example.test\nX-Mixed-Case: yes\n\n")
    assert out == b"BODY[HEADER.FIELDS.NOT (RECEIVED SUBJECT DATE)] " + lit(expected)


def test_header_fields_without_a_match_is_the_blank_line() -> None:
    out = render(SIMPLE, body(text="HEADER.FIELDS", fields=["NEWSGROUPS"]))
    assert out == b"BODY[HEADER.FIELDS (NEWSGROUPS)] {2}\r\n\r\n"


def test_header_fields_do_not_match_prefixes() -> None:
    data = b"Subject-Extra: no\r\nSubject: yes\r\n\r\n"
    out = render(data, body(text="HEADER.FIELDS", fields=["SUBJECT"]))
    assert out == b"BODY[HEADER.FIELDS (SUBJECT)] " + lit(b"Subject: yes\r\n\r\n")


def test_header_fields_of_header_without_final_line_end() -> None:
    out = render(b"Subject: bare", body(text="HEADER.FIELDS", fields=["SUBJECT"]))
    assert out == b"BODY[HEADER.FIELDS (SUBJECT)] " + lit(b"Subject: bare\r\n\r\n")


# --------------------------------------------------------------------------
# Partial fetches


def test_partial_is_a_substring_named_by_its_origin() -> None:
    out = render(SIMPLE, body(partial=(0, 4)), body(text="TEXT", partial=(5, 3)))
    assert out == b'BODY[]<0> "From" BODY[TEXT]<5> "one"'


def test_partial_past_the_end_is_cut_or_empty() -> None:
    n = len(SIMPLE_BODY)
    out = render(SIMPLE, body([1], partial=(n - 4, 100)), body([1], partial=(n + 10, 5)))
    assert out == b'BODY[1]<%d> {4}\r\no.\r\n BODY[1]<%d> ""' % (n - 4, n + 10)


def test_partial_of_header_fields_applies_after_subsetting() -> None:
    out = render(SIMPLE, body(text="HEADER.FIELDS", fields=["TO"], partial=(4, 3)))
    assert out == b'BODY[HEADER.FIELDS (TO)]<4> "bob"'


def test_same_section_with_different_partials_is_answered_twice() -> None:
    out = render(
        SIMPLE, body(partial=(0, 4)), body(partial=(0, 2)), body(peek=True, partial=(0, 2))
    )
    assert out == b'BODY[]<0> "From" BODY[]<0> "Fr"'


def test_duplicate_items_are_answered_once() -> None:
    out = render(SIMPLE, FetchAtt("UID"), body([1]), body([1], peek=True), FetchAtt("UID"))
    assert out == b"UID 4 BODY[1] " + lit(SIMPLE_BODY)


# --------------------------------------------------------------------------
# RFC822.*


def test_rfc822_items() -> None:
    out = render(SIMPLE, FetchAtt("RFC822.HEADER"), FetchAtt("RFC822.TEXT"), FetchAtt("RFC822"))
    assert out == (
        b"RFC822.HEADER "
        + lit(SIMPLE_HEADER)
        + b" RFC822.TEXT "
        + lit(SIMPLE_BODY)
        + b" RFC822 "
        + lit(SIMPLE)
    )


# --------------------------------------------------------------------------
# Line ends and NUL


def test_lf_only_message_is_sent_as_stored() -> None:
    out = render(
        LF_ONLY,
        body(text="HEADER"),
        body(text="HEADER.FIELDS", fields=["SUBJECT"]),
        body([1]),
        FetchAtt("RFC822.SIZE"),
    )
    assert out == (
        b"BODY[HEADER] {24}\r\nSubject: lf\nX-Other: 1\n\n"
        b" BODY[HEADER.FIELDS (SUBJECT)] {13}\r\nSubject: lf\n\n"
        b" BODY[1] {13}\r\nfirst\nsecond\n"
        b" RFC822.SIZE 37"
    )


def test_nul_in_body_is_replaced_keeping_the_size() -> None:
    data = b"Subject: n\r\n\r\na\0b"
    out = render(data, body([1]), body())
    assert out == b"BODY[1] {3}\r\na\x80b BODY[] {17}\r\nSubject: n\r\n\r\na\x80b"


# --------------------------------------------------------------------------
# BINARY


def test_binary_quoted_printable_text_is_decoded() -> None:
    out = render(MIXED, binary([1]), binary_size([1]))
    decoded = "café and a soft break\r\nend".encode()
    assert out == b"BINARY[1] " + lit(decoded) + b" BINARY.SIZE[1] %d" % len(decoded)


def test_binary_quoted_printable_padding_and_soft_breaks() -> None:
    """rfc2045:6.7 rules 3 and 5 (issue 21 item 7): whitespace that ends a
    line is dropped, "=" then whitespace then the line end is a soft break;
    "=" not followed by two hex digits stays; LF-only lines keep their LF."""
    data = (
        crlf(
            """Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

"""
        )
        + b"padded   \t\r\nsoft= \t\r\nbreak=ZZ=3D\nlf  \nend  "
    )
    decoded = b"padded\r\nsoftbreak=ZZ=\nlf\nend"
    out = render(data, binary([1]), binary_size([1]))
    assert out == b"BINARY[1] " + lit(decoded) + b" BINARY.SIZE[1] %d" % len(decoded)


def test_binary_base64_with_nul_is_a_literal8() -> None:
    out = render(MIXED, binary([2]), binary_size([2]))
    assert out == b"BINARY[2] ~{8}\r\n\x00\x01\x02hello BINARY.SIZE[2] 8"


def test_binary_without_nul_is_a_normal_literal() -> None:
    data = crlf(
        """Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

/wA=
"""
    )
    assert render(data, binary([1])) == b"BINARY[1] ~{2}\r\n\xff\x00"
    data = data.replace(b"/wA=", b"/4A=")
    assert render(data, binary([1])) == b"BINARY[1] {2}\r\n\xff\x80"


def test_binary_partial_refers_to_decoded_data() -> None:
    out = render(MIXED, binary([2], peek=True, partial=(3, 4)), binary([2], partial=(50, 4)))
    assert out == b'BINARY[2]<3> {4}\r\nhell BINARY[2]<50> ""'


def test_binary_of_lf_only_text_is_unchanged() -> None:
    """rfc9051:7.5.2 BINARY is the content after removing the CTE, nothing
    more (issue 21 item 6): no CRLF conversion, and BINARY.SIZE is its length."""
    out = render(LF_ONLY, binary([1]), binary_size([1]))
    assert out == b"BINARY[1] {13}\r\nfirst\nsecond\n BINARY.SIZE[1] 13"
    data = crlf(
        """Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

"""
    ) + base64.b64encode(b"one\ntwo\n")
    out = render(data, binary([1]), binary_size([1]))
    assert out == b"BINARY[1] {8}\r\none\ntwo\n BINARY.SIZE[1] 8"


def test_binary_of_identity_encoding_non_text_is_unchanged() -> None:
    data = (
        crlf(
            """Content-Type: application/octet-stream
Content-Transfer-Encoding: binary

"""
        )
        + b"a\nb\0c"
    )
    msg, loader = message(data)
    assert render_items(msg, [binary_size([1])], imap4rev2=False) == b"BINARY.SIZE[1] 5"
    assert loader.calls == 0  # known from the summary
    assert render_items(msg, [binary([1])], imap4rev2=False) == b"BINARY[1] ~{5}\r\na\nb\0c"


def test_binary_base64_is_decoded_leniently() -> None:
    data = crlf(
        """Content-Type: application/octet-stream
Content-Transfer-Encoding: BASE64

aGVs
bG8*gd29y
bGQ
"""
    )
    # "*" is outside the alphabet; the final quantum lacks its padding.
    assert render(data, binary([1])) == b"BINARY[1] {11}\r\nhello world"


def test_binary_base64_drops_a_dangling_character() -> None:
    data = crlf(
        """Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

aGVsbG8gd
"""
    )
    # Nine characters: the ninth cannot make a byte on its own.
    out = render(data, binary([1]), binary_size([1]))
    assert out == b"BINARY[1] {6}\r\nhello  BINARY.SIZE[1] 6"


def test_binary_of_utf16_text_keeps_its_bytes() -> None:
    data = crlf(
        """Content-Type: text/plain; charset=UTF-16LE
Content-Transfer-Encoding: base64

YQAKAGIA
"""
    )
    # "a\nb" in UTF-16LE: 61 00 0a 00 62 00; inserting CR would break it.
    assert render(data, binary([1])) == b"BINARY[1] ~{6}\r\na\x00\n\x00b\x00"


def test_binary_unknown_cte_is_unknown_cte() -> None:
    data = crlf(
        """Content-Type: application/octet-stream
Content-Transfer-Encoding: x-uuencode

begin 644 a
"""
    )
    for att in (binary([1]), binary_size([1])):
        with pytest.raises(FetchError) as info:
            render(data, att)
        assert info.value.code == "UNKNOWN-CTE"
        assert "x-uuencode" in str(info.value)
    # BODY[] of the same part is fine: nothing needs decoding.
    assert render(data, body([1])) == b"BODY[1] " + lit(b"begin 644 a\r\n")


def test_binary_of_whole_message_and_multipart_is_unchanged() -> None:
    data = crlf(
        """Content-Type: multipart/mixed; boundary=o

--o
Content-Type: multipart/alternative; boundary=i

--i
Content-Transfer-Encoding: base64

aGk=
--i--
--o--
"""
    )
    inner = crlf("--i\nContent-Transfer-Encoding: base64\n\naGk=\n--i--")
    out = render(data, binary(), binary([1]), binary_size([1]), binary([1, 1]))
    assert out == (
        b"BINARY[] "
        + lit(data)
        + b" BINARY[1] "
        + lit(inner)
        + b" BINARY.SIZE[1] %d" % len(inner)
        + b" BINARY[1.1] {2}\r\nhi"
    )


# --------------------------------------------------------------------------
# File reads


def test_file_is_read_at_most_once_per_message() -> None:
    msg, loader = message(MIXED)
    atts = [body(), body([1]), binary([2]), binary_size([1]), FetchAtt("RFC822.TEXT")]
    render_items(msg, atts, imap4rev2=False)
    render_items(msg, atts, imap4rev2=True)
    assert loader.calls == 1


SUMMARY_ONLY = [
    FetchAtt("ENVELOPE"),
    FetchAtt("FLAGS"),
    FetchAtt("INTERNALDATE"),
    FetchAtt("RFC822.SIZE"),
    FetchAtt("BODY"),
    FetchAtt("BODYSTRUCTURE"),
    FetchAtt("UID"),
    FetchAtt("MODSEQ"),
]


def test_summary_items_never_read_the_file() -> None:
    msg, loader = message(MIXED)
    out = render_items(msg, SUMMARY_ONLY, imap4rev2=True)
    assert out.startswith(b"ENVELOPE (") and out.endswith(b" MODSEQ (12345)")
    assert loader.calls == 0


# --------------------------------------------------------------------------
# needs_content / sets_seen tables


@pytest.mark.parametrize(
    ("att", "content", "seen"),
    [
        (FetchAtt("ENVELOPE"), False, False),
        (FetchAtt("FLAGS"), False, False),
        (FetchAtt("INTERNALDATE"), False, False),
        (FetchAtt("RFC822.SIZE"), False, False),
        (FetchAtt("BODY"), False, False),
        (FetchAtt("BODYSTRUCTURE"), False, False),
        (FetchAtt("UID"), False, False),
        (FetchAtt("MODSEQ"), False, False),
        (body(), True, True),
        (body(peek=True), True, False),
        (body([1], "MIME"), True, True),
        (body(text="HEADER", peek=True), True, False),
        (body(partial=(0, 10)), True, True),
        (binary([1]), True, True),
        (binary([1], peek=True), True, False),
        (binary_size([1]), True, False),
        (FetchAtt("RFC822"), True, True),
        (FetchAtt("RFC822.TEXT"), True, True),
        (FetchAtt("RFC822.HEADER"), True, False),
    ],
)
def test_needs_content_and_sets_seen(att: FetchAtt, content: bool, seen: bool) -> None:
    assert needs_content([att]) is content
    assert sets_seen([att]) is seen
    # Mixed into summary-only items, the answer is the item's.
    assert needs_content([*SUMMARY_ONLY, att]) is content
    assert sets_seen([*SUMMARY_ONLY, att]) is seen


def test_needs_content_and_sets_seen_of_nothing() -> None:
    assert needs_content([]) is False
    assert sets_seen([]) is False
    assert needs_content(SUMMARY_ONLY) is False
