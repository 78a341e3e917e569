"""Regressions from a peer's IMAP compliance suite (issue 21), as transcripts.

Each step is what the suite sent and what RFC 9051 / RFC 3501 want back;
the script runs whole and one byte per send against fresh servers, and both
transcripts must agree (test_imap_transcript's runner).
"""

from __future__ import annotations

import imaplib
import re
from pathlib import Path

import pytest
from test_imap_transcript import ALICE, PLAIN, run_script, start

from conftest import PASSWORD

SCRIPT: list[tuple[bytes, list[str]]] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    # 1. rfc9051:6.3.4 a trailing hierarchy separator is ignored: the name
    # is created without it (and its parent with it).
    (b"a2 CREATE imaptest/\r\n", [r"a2 OK"]),
    (b'a3 LIST "" imaptest\r\n', [r'\* LIST \([^)]*\) "/" "?imaptest"?\r\n', r"a3 OK"]),
    (b"a4 CREATE a/b/\r\n", [r"a4 OK"]),
    (b'a5 LIST "" a/%\r\n', [r'\* LIST \([^)]*\) "/" "?a/b"?\r\n', r"a5 OK"]),
    (b"a6 CREATE /\r\n", [r"a6 NO \[CANNOT\]"]),
    # 3. rfc3501:5.1.3 a valid atom that is not valid modified UTF-7 is a
    # name no mailbox has: NO for SELECT, an empty LIST, never BAD.
    (b"b1 SELECT !#$&'+,-.\r\n", [r"b1 NO \[NONEXISTENT\]"]),
    (b'b2 LIST "" "!#$&\'+,-."\r\n', [r"b2 OK"]),
    (b"b3 CREATE &Jjo\r\n", [r"b3 NO \[CANNOT\] .*modified UTF-7"]),
    (b"b4 RENAME imaptest &AGE-\r\n", [r"b4 NO \[CANNOT\]"]),
    (b"b5 STATUS &Jjo (MESSAGES)\r\n", [r"b5 NO \[NONEXISTENT\]"]),
    (b"b6 NOOP\r\n", [r"b6 OK"]),  # still connected
    # 5. rfc7162:3.1 the first CONDSTORE enabling command while a mailbox is
    # selected sends its HIGHESTMODSEQ; later ones do not.
    (b"c1 SELECT INBOX\r\n", [r"\* 2 EXISTS", r"c1 OK"]),
    (
        b"c2 FETCH 1 (MODSEQ)\r\n",
        [r"\* OK \[HIGHESTMODSEQ \d+\]", r"\* 1 FETCH \(MODSEQ \(\d+\)\)", r"c2 OK"],
    ),
    (b"c3 UID SEARCH MODSEQ 1\r\n", [r"c3 OK"]),
    (b"c4 UNSELECT\r\n", [r"c4 OK"]),
    (b"c5 SELECT INBOX\r\n", [r"c5 OK"]),
    (b"c6 STATUS INBOX (HIGHESTMODSEQ)\r\n", [r"\* OK \[HIGHESTMODSEQ \d+\]", r"c6 OK"]),
    # 9. rfc9051:7.3.5 a new keyword: FLAGS and PERMANENTFLAGS again, before
    # the FETCH that shows it; once.
    (
        b"d1 STORE 1 +FLAGS (Project7)\r\n",
        [
            r"\* FLAGS \([^)]*Project7\)",
            r"\* OK \[PERMANENTFLAGS \([^)]*Project7 \\\*\)\]",
            r"\* 1 FETCH \(",
            r"d1 OK",
        ],
    ),
    (b"d2 STORE 2 +FLAGS (Project7)\r\n", [r"\* 2 FETCH \(", r"d2 OK"]),
    # 2. rfc9051:6.3.7-6.3.9 subscriptions are names: SUBSCRIBE needs no
    # mailbox, DELETE keeps the subscription, LIST (SUBSCRIBED) shows such a
    # name as \NonExistent, plain LIST does not show it, LSUB as \Noselect.
    (b"e1 SUBSCRIBE Nowhere/Yet\r\n", [r"e1 OK"]),
    (b"e2 CREATE Gone\r\n", [r"e2 OK"]),
    (b"e3 SUBSCRIBE Gone\r\n", [r"e3 OK"]),
    (b"e4 DELETE Gone\r\n", [r"e4 OK"]),
    (
        b'e5 LIST (SUBSCRIBED) "" "*"\r\n',
        [
            r'\* LIST \(\\NonExistent \\HasNoChildren \\Subscribed\) "/" "?Gone"?\r\n',
            r'\* LIST \(\\NonExistent \\HasNoChildren \\Subscribed\) "/" "?Nowhere/Yet"?\r\n',
            r"e5 OK",
        ],
    ),
    (b'e6 LIST "" "*"\r\n', [r"e6 OK"]),
    (b'e7 LSUB "" "*"\r\n', [r'\* LSUB \(\\Noselect\) "/" "?Gone"?\r\n', r"e7 OK"]),
    (b"e8 CREATE Gone\r\n", [r"e8 OK"]),
    (
        b'e9 LIST (SUBSCRIBED) "" Gone\r\n',
        [r'\* LIST \(\\HasNoChildren \\Subscribed\) "/" "?Gone"?\r\n', r"e9 OK"],
    ),
    (b"f1 SUBSCRIBE &Jjo\r\n", [r"f1 NO \[CANNOT\]"]),
    (b"f2 UNSUBSCRIBE Nowhere/Yet\r\n", [r"f2 OK"]),
    (b'f3 LSUB "" Nowhere/Yet\r\n', [r"f3 OK"]),
    # A subscribed mailbox stays subscribed under its new name.
    (b"g1 CREATE Old\r\n", [r"g1 OK"]),
    (b"g2 SUBSCRIBE Old\r\n", [r"g2 OK"]),
    (b"g3 RENAME Old Renamed\r\n", [r"g3 OK"]),
    (b'g4 LSUB "" Renamed\r\n', [r'\* LSUB \(\) "/" "?Renamed"?\r\n', r"g4 OK"]),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]


@pytest.mark.slow
def test_compliance_script_whole_and_byte_by_byte(tmp_path: Path) -> None:
    whole_server = start(tmp_path, "whole")
    bytes_server = start(tmp_path, "bytes")
    try:
        whole = run_script(whole_server.imap_port, byte_at_a_time=False, script=SCRIPT)
        one_byte = run_script(bytes_server.imap_port, byte_at_a_time=True, script=SCRIPT)
    finally:
        for server in (whole_server, bytes_server):
            if server.process is not None:
                server.stop()
    assert whole == one_byte
    after = re.search(r"c2 OK[^\n]*\n(.*?)c3 OK", whole, re.DOTALL)
    assert after is not None and "HIGHESTMODSEQ" not in after.group(1)  # once only
    second = re.search(r"d1 OK[^\n]*\n(.*?)d2 OK", whole, re.DOTALL)
    assert second is not None and "* FLAGS" not in second.group(1)  # once only
    plain = re.search(r"e5 OK[^\n]*\n(.*?)e6 OK", whole, re.DOTALL)
    assert plain is not None and "Gone" not in plain.group(1) and "Nowhere" not in plain.group(1)
    gone = re.search(r"f2 OK[^\n]*\n(.*?)f3 OK", whole, re.DOTALL)
    assert gone is not None and "LSUB" not in gone.group(1)  # unsubscribed
    listed = re.search(r"b1 NO[^\n]*\n(.*?)b2 OK", whole, re.DOTALL)
    assert listed is not None and "* LIST" not in listed.group(1)  # an empty LIST
    assert "Traceback" not in whole_server.log_text() + bytes_server.log_text()


def test_uidvalidity_is_never_reused(tmp_path: Path) -> None:
    """8. rfc9051:2.3.1.1 DELETE and CREATE of a name within one second."""
    server = start(tmp_path, "uidvalidity")
    try:
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as client:
            client.login(ALICE, PASSWORD)
            seen = []
            for _ in range(3):
                assert client.create("Again")[0] == "OK"
                status = client.status("Again", "(UIDVALIDITY)")[1][0]
                match = re.search(rb"UIDVALIDITY (\d+)", status)  # type: ignore[arg-type]
                assert match is not None
                seen.append(int(match.group(1)))
                assert client.delete("Again")[0] == "OK"
            assert len(set(seen)) == 3 and seen == sorted(seen), seen
    finally:
        server.stop()


def test_a_new_keyword_is_announced_to_other_sessions(tmp_path: Path) -> None:
    """9. The other session with the mailbox selected learns the keyword
    from FLAGS / PERMANENTFLAGS at its next command; a read-only one gets
    an empty PERMANENTFLAGS."""
    server = start(tmp_path, "keywords")
    try:
        with (
            imaplib.IMAP4("127.0.0.1", server.imap_port) as writer,
            imaplib.IMAP4("127.0.0.1", server.imap_port) as watcher,
            imaplib.IMAP4("127.0.0.1", server.imap_port) as reader,
        ):
            for client in (writer, watcher, reader):
                client.login(ALICE, PASSWORD)
            writer.select("INBOX")
            watcher.select("INBOX")
            reader.select("INBOX", readonly=True)
            assert writer.store("1", "+FLAGS", "(Urgent2)")[0] == "OK"
            for client, permanent in ((watcher, rb"Urgent2 \\\*"), (reader, b"")):
                assert client.noop()[0] == "OK"
                flags = client.untagged_responses.pop("FLAGS", [])
                assert any(b"Urgent2" in f for f in flags), flags
                codes = client.untagged_responses.pop("PERMANENTFLAGS", [])
                assert any(re.search(rb"^\(.*" + permanent + rb"\)$", c) for c in codes), codes
    finally:
        server.stop()
