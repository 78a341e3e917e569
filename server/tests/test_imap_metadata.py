"""METADATA (rfc5464): entry names and GETMETADATA's selection
(estafeta.imap.metadata), the parser (fed whole and in every chunk size),
and a transcript against a real server (whole and one byte at a time)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_imap_parser import error_of, one
from test_imap_transcript import PLAIN, run_both_ways

from estafeta.imap import commands as c
from estafeta.imap import metadata


def test_entry_names() -> None:
    assert metadata.check_name("/Private/Comment") == "/private/comment"
    assert metadata.check_name("/shared/vendor/acme/x") == "/shared/vendor/acme/x"
    bad_names = ["/comment", "/private", "/private/", "/private//a", "/shared/a*", "/shared/%"]
    bad_names += ["private/comment", "/shared/vendor/acme", "/shared/a\x01", "/shared/" + "x" * 300]
    for bad in bad_names:
        with pytest.raises(metadata.BadEntry):
            metadata.check_name(bad)


def test_select_depth_and_maxsize() -> None:
    stored = {
        "/private/a": b"1",
        "/private/a/b": b"22",
        "/private/a/b/c": b"333",
        "/private/a/d": b"x" * 50,
        "/private/ab": b"no",
    }
    assert metadata.select(stored, ["/private/a"], "0", None) == ([("/private/a", b"1")], None)
    assert metadata.select(stored, ["/private/a"], "1", None) == (
        [("/private/a", b"1"), ("/private/a/b", b"22"), ("/private/a/d", b"x" * 50)],
        None,
    )
    found, longest = metadata.select(stored, ["/private/a"], "INFINITY", 10)
    assert found == [("/private/a", b"1"), ("/private/a/b", b"22"), ("/private/a/b/c", b"333")]
    assert longest == 50  # rfc5464:4.2.1 LONGENTRIES
    assert metadata.select(stored, ["/private/none"], "1", None) == (
        [("/private/none", None)],
        None,
    )
    assert metadata.render(b'"INBOX"', [("/private/a", b"1"), ("/private/b", None)]) == (
        b'METADATA "INBOX" ("/private/a" "1" "/private/b" NIL)'
    )


def test_parser_metadata_commands() -> None:
    assert one(b'a GETMETADATA "" /shared/comment\r\n').args == c.GetMetadata(
        "", ("/shared/comment",)
    )
    assert one(
        b"a getmetadata (MAXSIZE 1024 DEPTH infinity) INBOX (/shared/comment /private/a)\r\n"
    ).args == c.GetMetadata("INBOX", ("/shared/comment", "/private/a"), "INFINITY", 1024)
    assert one(
        b"a SETMETADATA INBOX (/private/comment {5+}\r\nab\r\nc /shared/x NIL"
        b" /shared/y ~{3}\r\n\x00\x01\x02)\r\n"
    ).args == c.SetMetadata(
        "INBOX",
        (("/private/comment", b"ab\r\nc"), ("/shared/x", None), ("/shared/y", b"\x00\x01\x02")),
    )
    for bad in (
        b"a GETMETADATA INBOX\r\n",
        b"a GETMETADATA (DEPTH 2) INBOX /a\r\n",
        b"a GETMETADATA (COLOUR 1) INBOX /a\r\n",
        b"a SETMETADATA INBOX /private/a x\r\n",
        b"a SETMETADATA INBOX (/private/a)\r\n",
    ):
        assert error_of(bad).tag == "a", bad


SCRIPT: list[tuple[bytes, list[str]]] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    (b"a2 CAPABILITY\r\n", [r"\* CAPABILITY .*METADATA", r"a2 OK"]),
    (b'a3 GETMETADATA "" /shared/admin\r\n',
     [r'\* METADATA "" \("/shared/admin" "mailto:postmaster@example\.test"\)\r\na3 OK']),
    (b'a4 SETMETADATA "" (/shared/admin "mailto:me@x")\r\n', [r"a4 NO \[NOPERM\]"]),
    (b'a5 SETMETADATA "" (/private/vendor/acme/theme "dark")\r\n', [r"a5 OK"]),
    (b'a6 GETMETADATA "" (/private/vendor/acme/theme)\r\n',
     [r'\* METADATA "" \("/private/vendor/acme/theme" "dark"\)']),
    (b"b1 SETMETADATA INBOX (/private/comment {5+}\r\nab\r\nc /shared/comment \"shared\")\r\n",
     [r"b1 OK"]),
    (b"b2 GETMETADATA INBOX (/private/comment /shared/comment /private/none)\r\n",
     [r'\* METADATA "?INBOX"? \("/private/comment" \{5\}\r\nab\r\nc "/shared/comment" "shared"'
      r' "/private/none" NIL\)\r\nb2 OK']),
    (b"b3 GETMETADATA (MAXSIZE 3) INBOX (/private/comment /shared/comment)\r\n",
     [r"b3 OK \[METADATA LONGENTRIES 6\]"]),
    (b"b4 SETMETADATA INBOX (/private/comment NIL)\r\n", [r"b4 OK"]),
    (b"b5 GETMETADATA INBOX /private/comment\r\n",
     [r'\* METADATA "?INBOX"? \("/private/comment" NIL\)\r\nb5 OK']),
    (b"b6 SETMETADATA INBOX (/private/comment* \"x\")\r\n", [r"b6 BAD"]),
    (b"b7 SETMETADATA Nowhere (/private/comment \"x\")\r\n", [r"b7 NO \[NONEXISTENT\]"]),
    (b"b8 SETMETADATA INBOX (/private/big ~{70000}\r\n" + b"x" * 70000 + b")\r\n",
     [r"b8 NO \[METADATA MAXSIZE 65536\]"]),
    # all or nothing (rfc5464:4.3): past 100 entries a mailbox, none is set
    (b"c0 SETMETADATA INBOX (" + b" ".join(b'/private/n%d "1"' % i for i in range(60)) + b")\r\n",
     [r"c0 OK"]),
    (b"c1 SETMETADATA INBOX (" + b" ".join(b'/private/m%d "1"' % i for i in range(60)) + b")\r\n",
     [r"c1 NO \[METADATA TOOMANY\]"]),
    (b"c2 GETMETADATA INBOX (/private/m0 /private/n59)\r\n",
     [r'\("/private/m0" NIL "/private/n59" "1"\)\r\nc2 OK']),
    # rfc5464:4.1 entries follow a RENAME and go with a DELETE
    (b"d1 CREATE Box\r\n", [r"d1 OK"]),
    (b"d2 SETMETADATA Box (/shared/comment \"kept\")\r\n", [r"d2 OK"]),
    (b"d3 RENAME Box Box2\r\n", [r"d3 OK"]),
    (b"d4 GETMETADATA Box2 /shared/comment\r\n", [r'"/shared/comment" "kept"\)\r\nd4 OK']),
    (b"d5 DELETE Box2\r\n", [r"d5 OK"]),
    (b"d6 CREATE Box2\r\n", [r"d6 OK"]),
    (b"d7 GETMETADATA Box2 /shared/comment\r\n", [r'"/shared/comment" NIL\)\r\nd7 OK']),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]  # fmt: skip


@pytest.mark.slow
def test_metadata_transcript_whole_and_byte_by_byte(tmp_path: Path) -> None:
    whole = run_both_ways(tmp_path, SCRIPT)
    # rfc5464:4.2.1 both values are over MAXSIZE 3: no METADATA response at all
    cut = re.search(r"b2 OK[^\n]*\n(.*?)b3 OK", whole, re.DOTALL)
    assert cut is not None and "METADATA" not in cut.group(1)
