"""Tests for estafeta.message: ENVELOPE, BODYSTRUCTURE and the summary.

Expected IMAP strings are written by hand from the rfc3501:9 grammar, in the
form Dovecot produces for the same message (case as written, defaults
``"text" "plain" ("charset" "us-ascii")`` and ``"7bit"``, all four
extension fields present in BODYSTRUCTURE).
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest

from estafeta.message import (
    MAX_DEPTH,
    Summary,
    decode_rfc2047,
    find_part,
    imap_bodystructure,
    imap_envelope,
    imap_string,
    parse_addresses,
    structure,
    summarize,
)
from estafeta.message.structure import MAX_PARTS, STRUCTURED_LIMIT, _summarize


def crlf(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\n", b"\r\n")


def body_of(data: bytes, part: dict[str, object]) -> bytes:
    start, end = part["body_start"], part["body_end"]
    assert isinstance(start, int) and isinstance(end, int)
    return data[start:end]


def mime_of(data: bytes, part: dict[str, object]) -> bytes:
    start, end = part["header_start"], part["body_start"]
    assert isinstance(start, int) and isinstance(end, int)
    return data[start:end]


SIMPLE = crlf(
    """From: Alice <alice@example.com>
To: bob@example.org
Subject: Hello
Date: Mon, 7 Feb 1994 21:52:25 -0800
Message-ID: <1@example.com>

Hi Bob.
Bye.
"""
)

MIXED_TEXT = """From: a@example.com
To: b@example.com
Subject: mixed
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße
--outer
Content-Type: application/pdf; name="doc.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="doc.pdf"

JVBERi0xLjQK
--outer
Content-Type: message/rfc822

From: Carol <carol@example.net>
Subject: inner
Date: Tue, 1 Jan 2019 00:00:00 +0000

Inner body
--outer--
epilogue
"""
MIXED = crlf(MIXED_TEXT)

INNER_ENVELOPE = (
    b'("Tue, 1 Jan 2019 00:00:00 +0000" "inner" (("Carol" NIL "carol" "example.net"))'
    b' (("Carol" NIL "carol" "example.net")) (("Carol" NIL "carol" "example.net"))'
    b" NIL NIL NIL NIL NIL)"
)


# --------------------------------------------------------------------------
# Simple messages and the envelope


def test_simple_text_message() -> None:
    s = summarize(SIMPLE)
    assert s.header_size == SIMPLE.index(b"\r\n\r\n") + 4
    assert imap_envelope(s.envelope) == (
        b'("Mon, 7 Feb 1994 21:52:25 -0800" "Hello" (("Alice" NIL "alice" "example.com"))'
        b' (("Alice" NIL "alice" "example.com")) (("Alice" NIL "alice" "example.com"))'
        b' ((NIL NIL "bob" "example.org")) NIL NIL NIL "<1@example.com>")'
    )
    # 15 octets "Hi Bob.\r\nBye.\r\n", 2 lines.
    assert imap_bodystructure(s.bodystructure, extensible=True) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 15 2 NIL NIL NIL NIL)'
    )
    assert imap_bodystructure(s.bodystructure, extensible=False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 15 2)'
    )
    assert body_of(SIMPLE, s.bodystructure) == b"Hi Bob.\r\nBye.\r\n"
    assert s.subject == "Hello"
    assert s.from_addr == "alice@example.com"
    assert s.to_addrs == ["bob@example.org"]
    assert s.cc_addrs == []
    assert s.date == datetime(1994, 2, 8, 5, 52, 25, tzinfo=UTC).timestamp()
    assert s.message_id == "<1@example.com>"
    assert s.in_reply_to is None
    assert s.references == []


def test_rfc3501_fetch_example() -> None:
    # rfc3501:7.4.2 (and rfc3501:6.4.5 FETCH example): the ENVELOPE and BODY
    # of message 12. The body is built to the example's 3028 octets, 92 lines.
    header = crlf(
        """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII
Content-Transfer-Encoding: 7BIT

"""
    )
    body = b"x" * 31 + b"\r\n"
    body = body * 91 + b"y" * 23 + b"\r\n"
    assert len(body) == 3028
    s = summarize(header + body)
    assert imap_envelope(s.envelope) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
        b' NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    assert imap_bodystructure(s.bodystructure, extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    )
    assert s.header_size == len(header)
    assert s.cc_addrs == ["minutes@cnri.reston.va.us", "klensin@mit.edu"]
    assert s.date == datetime(1996, 7, 17, 9, 23, 25, tzinfo=UTC).timestamp()


def test_group_addresses() -> None:
    msg = crlf(
        """From: "Doe, John" <john@example.com>
To: undisclosed-recipients:;
Cc: Friends: alice@a.example, "Bob B" <bob@b.example>;, carol@c.example (Carol C)

x
"""
    )
    s = summarize(msg)
    assert s.envelope[2] == [["Doe, John", None, "john", "example.com"]]
    assert s.envelope[5] == [[None, None, "undisclosed-recipients", None], [None] * 4]
    doe = b'(("Doe, John" NIL "john" "example.com"))'
    assert imap_envelope(s.envelope) == (
        b"(NIL NIL " + doe + b" " + doe + b" " + doe + b" "
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        b' ((NIL NIL "Friends" NIL)(NIL NIL "alice" "a.example")("Bob B" NIL "bob" "b.example")'
        b'(NIL NIL NIL NIL)("Carol C" NIL "carol" "c.example")) NIL NIL NIL)'
    )
    assert s.to_addrs == []
    assert s.cc_addrs == ["alice@a.example", "bob@b.example", "carol@c.example"]


def test_address_parsing_edge_cases() -> None:
    # rfc5322:4.4 obsolete route, quoted local part, unclosed group, "<>",
    # an address without domain, and a comment that is not the name.
    assert parse_addresses('"Q \\"x\\"" <@r1.example,@r2.example:c@d.example>') == [
        ['Q "x"', "@r1.example,@r2.example", "c", "d.example"]
    ]
    assert parse_addresses('"john doe"@x.org') == [[None, None, '"john doe"', "x.org"]]
    assert parse_addresses("team: a@b.example") == [
        [None, None, "team", None],
        [None, None, "a", "b.example"],
        [None, None, None, None],
    ]
    assert parse_addresses("<>") == []
    assert parse_addresses("root") == [[None, None, "root", "MISSING_DOMAIN"]]
    assert parse_addresses("John Q. Public <jqp@x.example> (work)") == [
        ["John Q. Public", None, "jqp", "x.example"]
    ]
    assert parse_addresses("=?utf-8?q?J=C3=B6rg?= <j@x.example>") == [
        ["=?utf-8?q?J=C3=B6rg?=", None, "j", "x.example"]
    ]
    assert parse_addresses(" , ,") == []


def test_sender_and_reply_to_default_to_from() -> None:
    msg = crlf("From: a@example.com\nSender:\nReply-To: r@example.com\n\n")
    env = summarize(msg).envelope
    assert env[3] == [[None, None, "a", "example.com"]]  # empty Sender -> From
    assert env[4] == [[None, None, "r", "example.com"]]


def test_missing_headers() -> None:
    data = b"\r\njust a body\r\n"
    s = summarize(data)
    assert imap_envelope(s.envelope) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert s.header_size == 2
    assert imap_bodystructure(s.bodystructure, True) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL)'
    )
    assert (s.subject, s.from_addr, s.date, s.message_id) == ("", "", None, None)

    empty = summarize(b"")
    assert empty.header_size == 0
    assert empty.envelope == [None] * 10
    assert empty.bodystructure["size"] == 0


def test_present_but_empty_headers() -> None:
    # rfc3501:7.4.2: present-but-empty strings are "", empty address lists NIL.
    s = summarize(crlf("Subject:\nDate:   \nTo:\nMessage-ID:\n\nbody"))
    assert s.envelope[0] == ""
    assert s.envelope[1] == ""
    assert s.envelope[5] is None
    assert s.envelope[9] == ""
    assert imap_envelope(s.envelope) == b'("" "" NIL NIL NIL NIL NIL NIL NIL "")'
    assert s.date is None
    assert s.message_id is None


def test_header_without_body_separator() -> None:
    s = summarize(b"Subject: only a header\r\nX-Other: y\r\n")
    assert s.header_size == len(b"Subject: only a header\r\nX-Other: y\r\n")
    assert s.bodystructure["size"] == 0
    assert s.subject == "only a header"


def test_folded_headers_are_unfolded_not_decoded() -> None:
    msg = crlf(
        "Subject: =?utf-8?q?caf=C3=A9?=\n\tand more\nIn-Reply-To: <a@x>\n <b@x>\n"
        "References: <r1@x>\n  <r2@x> <r3@x>\n\n"
    )
    s = summarize(msg)
    assert s.envelope[1] == "=?utf-8?q?caf=C3=A9?=\tand more"
    assert s.subject == "café\tand more"
    assert s.envelope[8] == "<a@x> <b@x>"
    assert s.in_reply_to == "<a@x>"
    assert s.references == ["<r1@x>", "<r2@x>", "<r3@x>"]


def test_date_variants() -> None:
    def date(value: str) -> float | None:
        return summarize(crlf(f"Date: {value}\n\n")).date

    assert date("1 Jan 2020 00:00:00 -0000") == datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    assert date("Wed, 1 Jan 2020 01:00:00 +0100") == datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    assert date("not a date") is None
    assert date("Wed, 1 Foo 2020 01:00:00 +0100") is None


# --------------------------------------------------------------------------
# Encodings: RFC 2047, UTF-8 headers, 8-bit bytes


def test_encoded_word_subjects() -> None:
    assert decode_rfc2047("=?UTF-8?B?w6lsw6h2ZQ==?= =?ISO-8859-1?Q?caf=E9?=") == "élèvecafé"
    # A character split across two words of one charset (rfc2047:5).
    assert decode_rfc2047("=?utf-8?q?=C3?= =?utf-8?q?=A9t=C3=A9?=") == "été"
    assert decode_rfc2047("Re: =?utf-8?q?a_b?= c") == "Re: a b c"
    assert decode_rfc2047("=?no-such-charset?q?x?= y") == "=?no-such-charset?q?x?= y"
    assert decode_rfc2047("=?utf-8*en?b?w6k?=") == "é"  # rfc2231:5 language, bad padding
    # Python codecs that are not text encodings are not charsets.
    assert decode_rfc2047("=?hex?q?41?= =?rot13?q?n?=") == "=?hex?q?41?= =?rot13?q?n?="

    s = summarize(crlf("Subject: =?UTF-8?B?w6lsw6h2ZQ==?=\n\n"))
    assert s.subject == "élève"
    assert s.envelope[1] == "=?UTF-8?B?w6lsw6h2ZQ==?="  # IMAP gets it raw


def test_utf8_headers_rfc6532() -> None:
    msg = "From: Jörg <jörg@bücher.example>\nSubject: Grüße\n\n".encode().replace(b"\n", b"\r\n")
    s = summarize(msg)
    assert s.subject == "Grüße"
    assert s.from_addr == "jörg@bücher.example"
    # 8-bit text cannot be quoted in IMAP: literals (rfc3501:4.3).
    assert imap_envelope(s.envelope).startswith(
        b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe (({5}\r\nJ\xc3\xb6rg NIL {5}\r\nj\xc3\xb6rg"
        b" {15}\r\nb\xc3\xbccher.example))"
    )


def test_eight_bit_garbage_round_trips() -> None:
    msg = b"Subject: caf\xe9 \xff\r\nFrom: M\xfcller <m@x.example>\r\n\r\nbody\xff\r\n"
    s = summarize(msg)
    assert s.subject == "café ÿ"  # not UTF-8: read as Latin-1
    # The envelope keeps the original bytes exactly.
    assert imap_string(s.envelope[1]) == b"{6}\r\ncaf\xe9 \xff"
    assert imap_envelope(s.envelope).startswith(b"(NIL {6}\r\ncaf\xe9 \xff (({6}\r\nM\xfcller NIL")
    text = s.to_json()
    assert text.isascii()
    again = Summary.from_json(text)
    assert again == s
    assert imap_envelope(again.envelope) == imap_envelope(s.envelope)


# --------------------------------------------------------------------------
# MIME structure


def test_multipart_mixed_with_attachment_and_message() -> None:
    s = summarize(MIXED)
    text_part = b'("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 7 0 NIL NIL NIL NIL)'
    pdf_part = (
        b'("application" "pdf" ("name" "doc.pdf") NIL NIL "base64" 12'
        b' NIL ("attachment" ("filename" "doc.pdf")) NIL NIL)'
    )
    inner_body = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL)'
    message_part = (
        b'("message" "rfc822" NIL NIL NIL "7bit" 99 '
        + INNER_ENVELOPE
        + b" "
        + inner_body
        + b" 4 NIL NIL NIL NIL)"
    )
    assert imap_bodystructure(s.bodystructure, True) == (
        b"(" + text_part + pdf_part + message_part + b' "mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert imap_bodystructure(s.bodystructure, False) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "8bit" 7 0)'
        b'("application" "pdf" ("name" "doc.pdf") NIL NIL "base64" 12)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 99 '
        + INNER_ENVELOPE
        + b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0) 4) "mixed")'
    )

    # Offsets serve BODY[n], BODY[n.MIME], BODY[n.HEADER], BODY[n.TEXT].
    root = s.bodystructure
    p1, p2, p3 = root["parts"]
    assert body_of(MIXED, p1) == "Grüße".encode()
    assert mime_of(MIXED, p2) == crlf(
        'Content-Type: application/pdf; name="doc.pdf"\nContent-Transfer-Encoding: base64\n'
        'Content-Disposition: attachment; filename="doc.pdf"\n\n'
    )
    assert body_of(MIXED, p2) == b"JVBERi0xLjQK"
    assert body_of(MIXED, p3).startswith(b"From: Carol") and body_of(MIXED, p3).endswith(b"body")
    assert mime_of(MIXED, p3["body"]) == crlf(
        "From: Carol <carol@example.net>\nSubject: inner\nDate: Tue, 1 Jan 2019 00:00:00 +0000\n\n"
    )
    assert body_of(MIXED, p3["body"]) == b"Inner body"
    assert body_of(MIXED, root).startswith(b"This is the preamble.")
    assert s.header_size == MIXED.index(b"\r\n\r\n") + 4


def test_find_part_section_numbers() -> None:
    s = summarize(MIXED)
    root = s.bodystructure
    assert find_part(root, []) is root
    assert find_part(root, [2]) is root["parts"][1]
    assert find_part(root, [3, 1]) is root["parts"][2]["body"]  # rfc3501:6.4.5
    assert find_part(root, [4]) is None
    assert find_part(root, [1, 1]) is None
    assert find_part(root, [0]) is None
    simple = summarize(SIMPLE).bodystructure
    assert find_part(simple, [1]) is simple
    assert find_part(simple, [2]) is None


def test_multipart_alternative() -> None:
    msg = crlf(
        """Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain; charset="us-ascii"

plain
--alt
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

<p>html</p>
--alt--
"""
    )
    s = summarize(msg)
    assert imap_bodystructure(s.bodystructure, False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 11 0) "alternative")'
    )
    assert imap_bodystructure(s.bodystructure, True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 11 0 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "alt") NIL NIL NIL)'
    )


def test_rfc2046_simple_boundary_example() -> None:
    # rfc2046:5.1.1 example: implicit typing, preamble, epilogue, a part not
    # ending with a line break (the CRLF before a delimiter is not content).
    msg = crlf(
        """From: Nathaniel Borenstein <nsb@bellcore.com>
To: Ned Freed <ned@innosoft.com>
Date: Sun, 21 Mar 1993 23:56:48 -0800 (PST)
Subject: Sample message
MIME-Version: 1.0
Content-type: multipart/mixed; boundary="simple boundary"

This is the preamble.  It is to be ignored, though it
is a handy place for composition agents to include an
explanatory note to non-MIME conformant readers.

--simple boundary

This is implicitly typed plain US-ASCII text.
It does NOT end with a linebreak.
--simple boundary
Content-type: text/plain; charset=us-ascii

This is explicitly typed plain US-ASCII text.
It DOES end with a linebreak.

--simple boundary--

This is the epilogue.  It is also to be ignored.
"""
    )
    s = summarize(msg)
    assert imap_bodystructure(s.bodystructure, True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 80 1 NIL NIL NIL NIL)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 78 2 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "simple boundary") NIL NIL NIL)'
    )
    first = s.bodystructure["parts"][0]
    assert mime_of(msg, first) == b"\r\n"


def test_lf_only_input() -> None:
    data = MIXED_TEXT.encode()
    s = summarize(data)
    assert s.header_size == data.index(b"\n\n") + 2
    p1, p2, p3 = s.bodystructure["parts"]
    assert body_of(data, p1) == "Grüße".encode()
    assert body_of(data, p2) == b"JVBERi0xLjQK"
    # The encapsulated message is 4 bytes shorter than with CRLF: 99 - 4.
    assert (p3["size"], p3["lines"]) == (95, 4)
    assert body_of(data, p3["body"]) == b"Inner body"
    assert imap_envelope(p3["envelope"]) == INNER_ENVELOPE
    assert mime_of(data, p3["body"]).endswith(b"+0000\n\n")
    assert s.subject == "mixed"


def test_missing_close_delimiter() -> None:
    msg = crlf(
        """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

one
--bb
still one
--b
two
"""
    )
    s = summarize(msg)
    one, two = s.bodystructure["parts"]
    assert body_of(msg, one) == b"one\r\n--bb\r\nstill one"  # "--bb" is not "--b"
    # The second part has no header (its first line is not a field): it runs
    # to the end of the data.
    assert mime_of(msg, two) == b""
    assert body_of(msg, two) == b"two\r\n"
    assert imap_bodystructure(s.bodystructure, False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1) "mixed")'
    )


def test_multipart_without_delimiters_or_boundary() -> None:
    no_delims = crlf("Content-Type: multipart/mixed; boundary=zz\n\nno parts at all\n")
    s = summarize(no_delims)
    assert imap_bodystructure(s.bodystructure, True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "zz") NIL NIL NIL)'
    )
    no_boundary = crlf("Content-Type: multipart/mixed\n\n--zz\n\nx\n--zz--\n")
    assert imap_bodystructure(summarize(no_boundary).bodystructure, False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 19 4)'
    )


def test_invalid_content_type_defaults_to_text_plain() -> None:
    for value in ["text", "garbage here", "/plain", "text/", 'text/"plain"']:
        s = summarize(crlf(f"Content-Type: {value}\n\nx"))
        assert imap_bodystructure(s.bodystructure, False) == (
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0)'
        ), value


def test_digest_default_is_message_rfc822() -> None:
    msg = crlf(
        """Content-Type: multipart/digest; boundary=d

--d

Subject: first

one
--d
Content-Type: text/plain

two
--d--
"""
    )
    s = summarize(msg)
    first, second = s.bodystructure["parts"]
    assert (first["type"], first["subtype"]) == ("message", "rfc822")
    assert first["envelope"][1] == "first"
    assert (second["type"], second["subtype"]) == ("text", "plain")
    assert imap_bodystructure(s.bodystructure, False).startswith(
        b'(("message" "rfc822" NIL NIL NIL "7bit" 21 (NIL "first" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0) 2)'
    )


def test_content_fields_and_parameters() -> None:
    msg = crlf(
        """Content-Type: text/plain (a comment); format=flowed;
 Name*0="long ";  name*1="name.txt"
Content-ID: <part1@x>
Content-Description: A  description
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==
Content-Language: en, de (German)
Content-Location: http://example.com/a
Content-Disposition: inline; filename*=utf-8''%C3%A9t%C3%A9.txt
Content-Transfer-Encoding: QUOTED-PRINTABLE

x
"""
    )
    part = summarize(msg).bodystructure
    # Continuations merged, RFC 2231 value kept encoded, default charset added
    # at the end (as Dovecot does).
    assert part["params"] == [
        ["format", "flowed"],
        ["Name", "long name.txt"],
        ["charset", "us-ascii"],
    ]
    assert part["disposition"] == ["inline", [["filename*", "utf-8''%C3%A9t%C3%A9.txt"]]]
    assert imap_bodystructure(part, True) == (
        b'("text" "plain" ("format" "flowed" "Name" "long name.txt" "charset" "us-ascii")'
        b' "<part1@x>" "A  description" "QUOTED-PRINTABLE" 3 1 "Q2hlY2sgSW50ZWdyaXR5IQ=="'
        b' ("inline" ("filename*" "utf-8\'\'%C3%A9t%C3%A9.txt")) ("en" "de")'
        b' "http://example.com/a")'
    )


def test_rfc2231_extended_continuations_stay_encoded() -> None:
    msg = crlf(
        "Content-Type: application/octet-stream;\n"
        " title*0*=us-ascii'en'This%20is%20; title*1*=%2A%2A%2Afun%2A%2A%2A;\n"
        ' title*2="isn\'t it 100%!"\n\n'
    )
    part = summarize(msg).bodystructure
    assert part["params"] == [
        ["title*", "us-ascii'en'This%20is%20%2A%2A%2Afun%2A%2A%2Aisn%27t%20it%20100%25%21"]
    ]


def test_boundary_from_rfc2231_continuation() -> None:
    msg = crlf(
        "Content-Type: multipart/mixed; boundary*0=ab; boundary*1=cd\n\n--abcd\n\nx\n--abcd--\n"
    )
    s = summarize(msg)
    assert len(s.bodystructure["parts"]) == 1
    assert body_of(msg, s.bodystructure["parts"][0]) == b"x"


def test_message_global_is_rfc822_only_for_imap4rev2() -> None:
    msg = crlf(
        "Content-Type: multipart/mixed; boundary=g\n\n--g\nContent-Type: message/global\n\n"
        "Subject: inner\n\nhi\n--g--\n"
    )
    root = summarize(msg).bodystructure
    assert root["parts"][0]["envelope"][1] == "inner"
    assert imap_bodystructure(root, False) == (
        b'(("message" "global" NIL NIL NIL "7bit" 20) "mixed")'
    )
    assert imap_bodystructure(root, False, imap4rev2=True) == (
        b'(("message" "global" NIL NIL NIL "7bit" 20 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0) 2) "mixed")'
    )


# --------------------------------------------------------------------------
# Hostile input


def _depth(part: dict[str, object]) -> int:
    depth = 0
    current = part
    while True:
        if "parts" in current:
            children = current["parts"]
            assert isinstance(children, list)
            current = children[0]
        elif "body" in current:
            inner = current["body"]
            assert isinstance(inner, dict)
            current = inner
        else:
            return depth
        depth += 1


def _deepest(part: dict[str, object]) -> dict[str, object]:
    while "parts" in part or "body" in part:
        nxt = part["parts"][0] if "parts" in part else part["body"]  # type: ignore[index]
        assert isinstance(nxt, dict)
        part = nxt
    return part


def test_deeply_nested_multipart() -> None:
    levels = 1000
    head = "".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(levels)
    )
    tail = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(levels)))
    data = (head + "\r\nleaf" + tail).encode()
    s = summarize(data)
    assert _depth(s.bodystructure) == MAX_DEPTH
    deepest = _deepest(s.bodystructure)
    assert (deepest["type"], deepest["subtype"]) == ("application", "octet-stream")
    out = imap_bodystructure(s.bodystructure, True)
    assert out.startswith(b"(" * MAX_DEPTH + b'("application" "octet-stream" NIL NIL NIL "7bit" ')
    assert Summary.from_json(s.to_json()) == s


def test_deeply_nested_messages() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * 1000 + b"Subject: bottom\r\n\r\nx"
    s = summarize(data)
    assert _depth(s.bodystructure) == MAX_DEPTH
    assert _deepest(s.bodystructure)["type"] == "application"
    assert imap_bodystructure(s.bodystructure, False).count(b'"message" "rfc822"') == MAX_DEPTH
    assert Summary.from_json(s.to_json()) == s


def test_part_count_is_bounded() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * (
        MAX_PARTS + 500
    )
    s = summarize(data)
    parts = s.bodystructure["parts"]
    assert len(parts) == MAX_PARTS - 1  # the root counts as one
    assert body_of(data, parts[0]) == b"x"
    last = body_of(data, parts[-1])  # runs to the end, unparsed delimiters and all
    assert last.startswith(b"x\r\n--b\r\n") and len(last) == 3 + 501 * 10


def test_huge_address_header_is_cut_at_a_comma() -> None:
    count = STRUCTURED_LIMIT // 8 + 1000
    to = ", ".join(f"u{i:04d}@x" for i in range(count))  # 9 bytes + ", " each
    s = summarize(crlf(f"To: {to}\n\nx"))
    assert 0 < len(s.to_addrs) < count
    assert s.to_addrs[:2] == ["u0000@x", "u0001@x"]
    assert s.to_addrs[-1] == f"u{len(s.to_addrs) - 1:04d}@x"  # no half address


def test_summarize_has_a_safety_net(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes) -> Summary:
        raise RuntimeError("bug")

    monkeypatch.setattr(structure, "_summarize", broken)
    s = summarize(SIMPLE)
    assert s.envelope == [None] * 10
    assert imap_bodystructure(s.bodystructure, False) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 8)' % len(SIMPLE)
    )


def test_fuzzed_messages_never_raise() -> None:
    # _summarize has no safety net, unlike summarize: any exception here is a
    # bug in the parser.
    rng = random.Random(3501)
    seeds = [SIMPLE, MIXED, MIXED_TEXT.encode()]
    alphabet = b'\r\n\t :;,<>@"()[]\\=-/?*%\x00\xff\xc3'
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 12)):
            i = rng.randrange(len(data) + 1)
            action = rng.random()
            if action < 0.4:
                data[i:i] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            elif action < 0.8:
                del data[i : i + rng.randint(1, 8)]
            else:
                data[i:i] = data[rng.randrange(len(data) + 1) :][:40]
        s = _summarize(bytes(data))
        imap_envelope(s.envelope)
        imap_bodystructure(s.bodystructure, True)
        imap_bodystructure(s.bodystructure, False)
        assert Summary.from_json(s.to_json()) == s
        assert 0 <= s.header_size <= len(data)


def test_large_message_is_fast() -> None:
    attachment = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    parts = []
    for n in range(4):
        parts.append(
            b"--xyz\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="f%d.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" % n + attachment * 3400
        )
    data = (
        SIMPLE.split(b"\r\n\r\n")[0]
        + b"\r\nContent-Type: multipart/mixed; boundary=xyz\r\n\r\n"
        + b"\r\n".join(parts)
        + b"\r\n--xyz--\r\n"
    )
    assert len(data) > 1_000_000
    started = time.perf_counter()
    s = summarize(data)
    elapsed = time.perf_counter() - started
    print(f"summarize of {len(data)} bytes: {elapsed * 1000:.1f} ms")
    assert len(s.bodystructure["parts"]) == 4
    assert s.bodystructure["parts"][3]["lines"] == 3400


# --------------------------------------------------------------------------
# Serialisation


def test_imap_string() -> None:
    assert imap_string(None) == b"NIL"
    assert imap_string("") == b'""'
    assert imap_string('say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert imap_string(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert imap_string("é") == b"{2}\r\n\xc3\xa9"
    assert imap_string("\udce9") == b"{1}\r\n\xe9"  # a surrogate-escaped byte
    assert imap_string("x" * 1024) == b'"' + b"x" * 1024 + b'"'
    assert imap_string("x" * 1025) == b"{1025}\r\n" + b"x" * 1025
    assert imap_string("a\0b") == b'"ab"'


def test_imap_envelope_serialisation() -> None:
    envelope = [
        "Mon, 7 Feb 1994 21:52:25 -0800",
        "afternoon meeting",
        [["Fred Foobar", None, "foobar", "Blurdybloop.COM"]],
        [["Fred Foobar", None, "foobar", "Blurdybloop.COM"]],
        [["Fred Foobar", None, "foobar", "Blurdybloop.COM"]],
        [[None, None, "mooch", "owatagu.siam.edu"]],
        [],
        None,
        None,
        "<B27397-0100000@Blurdybloop.COM>",
    ]
    assert imap_envelope(envelope) == (
        b'("Mon, 7 Feb 1994 21:52:25 -0800" "afternoon meeting"'
        b' (("Fred Foobar" NIL "foobar" "Blurdybloop.COM"))'
        b' (("Fred Foobar" NIL "foobar" "Blurdybloop.COM"))'
        b' (("Fred Foobar" NIL "foobar" "Blurdybloop.COM"))'
        b' ((NIL NIL "mooch" "owatagu.siam.edu")) NIL NIL NIL'
        b' "<B27397-0100000@Blurdybloop.COM>")'
    )


def test_json_round_trip() -> None:
    s = summarize(MIXED)
    text = s.to_json()
    assert json.loads(text)["bodystructure"]["parts"][2]["envelope"][1] == "inner"
    again = Summary.from_json(text)
    assert again == s
    assert imap_bodystructure(again.bodystructure, True) == imap_bodystructure(
        s.bodystructure, True
    )
    assert again.date == s.date


@pytest.mark.parametrize("text", ["[]", "{}", '{"header_size": 1}', "null"])
def test_from_json_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        Summary.from_json(text)


def test_punycode_and_idna_are_no_mail_charsets() -> None:
    # Their decoders are quadratic: a long encoded-word in either stays as
    # written, whatever its length (here short; the point is the refusal).
    for charset in ("punycode", "PUNYCODE", "idna"):
        word = f"=?{charset}?Q?abc-999?="
        assert decode_rfc2047(word) == word
    assert decode_rfc2047("=?utf-8?Q?caf=C3=A9?=") == "café"
