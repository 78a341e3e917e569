"""Mailbox names after ENABLE UTF8=ACCEPT (rfc6855:3): UTF-8, sent quoted
when they fit (not as literals); modified UTF-7 for sessions that did not
enable it (rfc3501:5.1.3). A transcript, whole and one byte at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_imap_transcript import PLAIN, run_both_ways

from estafeta.message import imap_utf8_string

NAME = "Ünïcode 日本"
MUTF7 = "&ANw-n&AO8-code &ZeVnLA-"  # rfc3501:5.1.3
LISTED = r'\* LIST \(\\HasNoChildren\) "/" '

SCRIPT: list[tuple[bytes, list[str]]] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    (f'a2 LIST "" "{MUTF7}"\r\n'.encode(), [r"a2 OK"]),
    (f'a3 CREATE "{MUTF7}"\r\n'.encode(), [r"a3 OK"]),
    (b'a4 LIST "" "&ANw-*"\r\n', [LISTED + f'"{MUTF7}"\r\n', r"a4 OK"]),
    (b"a5 ENABLE UTF8=ACCEPT\r\n", [r"\* ENABLED UTF8=ACCEPT", r"a5 OK"]),
    (f'a6 LIST "" "{NAME[0]}*"\r\n'.encode(), [LISTED + f'"{NAME}"\r\n', r"a6 OK"]),
    (f'a7 SELECT "{NAME}"\r\n'.encode(), [rf'\* LIST \(\) "/" "{NAME}"\r\n', r"a7 OK"]),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]  # fmt: skip


@pytest.mark.slow
def test_utf8_names_are_quoted_after_utf8_accept(tmp_path: Path) -> None:
    run_both_ways(tmp_path, SCRIPT)


def test_imap_utf8_string_quotes_what_fits() -> None:
    assert imap_utf8_string("Ünï") == '"Ünï"'.encode()
    assert imap_utf8_string('a"b\\c') == b'"a\\"b\\\\c"'
    assert imap_utf8_string("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert imap_utf8_string("x" * 5000).startswith(b"{5000}\r\n")
    assert imap_utf8_string("bad\udcff") == b"{4}\r\nbad\xff"  # not UTF-8: a literal
