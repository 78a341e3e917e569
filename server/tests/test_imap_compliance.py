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
from test_imap_transcript import ALICE, PLAIN, deliver, run_both_ways, start

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
    # 4. rfc3501:2.3.2 \Recent: a message is recent to the first read-write
    # session told of it. EXAMINE sees them and leaves them (rfc3501:6.3.2).
    (b"r1 EXAMINE INBOX\r\n", [r"\* 2 EXISTS\r\n\* 2 RECENT\r\n", r"r1 OK \[READ-ONLY\]"]),
    (
        b"r2 FETCH 1:2 FLAGS\r\n",
        [r"\* 1 FETCH \(FLAGS \(\\Recent\)\)", r"\* 2 FETCH \(FLAGS \(\\Recent\)\)", r"r2 OK"],
    ),
    (b"r3 SEARCH NEW\r\n", [r"\* SEARCH 1 2\r\n", r"r3 OK"]),
    (b"r4 CLOSE\r\n", [r"r4 OK"]),
    (b"r5 STATUS INBOX (MESSAGES RECENT)\r\n", [r"\(MESSAGES 2 RECENT 2\)", r"r5 OK"]),
    (b"r6 SELECT INBOX\r\n", [r"\* 2 EXISTS\r\n\* 2 RECENT\r\n", r"r6 OK \[READ-WRITE\]"]),
    (
        b"r7 STORE 1 +FLAGS (\\Seen)\r\n",
        [r"\* 1 FETCH \(UID 1 FLAGS \(\\Recent \\Seen\)\)", r"r7 OK"],
    ),
    (b"r8 STORE 1 -FLAGS (\\Recent)\r\n", [r"r8 BAD"]),  # rfc3501:2.3.2: not the client's
    (b"r9 SEARCH NEW\r\n", [r"\* SEARCH 2\r\n", r"r9 OK"]),
    (b"s1 SEARCH OLD\r\n", [r"\* SEARCH\r\n", r"s1 OK"]),
    # rfc3501:6.3.11: APPEND to the selected mailbox: this session is told
    # of it first, and takes it.
    (
        b"s2 APPEND INBOX {18+}\r\nSubject: third\r\n\r\n\r\n",
        [r"\* 3 EXISTS\r\n\* 3 RECENT\r\n", r"s2 OK"],
    ),
    (b"s3 UID SEARCH RECENT\r\n", [r"\* SEARCH 1 2 3\r\n", r"s3 OK"]),
    (b"s4 STATUS INBOX (RECENT)\r\n", [r"\(RECENT 0\)", r"s4 OK"]),
    # 5. rfc7162:3.1 the first CONDSTORE enabling command while a mailbox is
    # selected sends its HIGHESTMODSEQ; later ones do not.
    (b"c1 SELECT INBOX\r\n", [r"\* 3 EXISTS\r\n\* 0 RECENT\r\n", r"c1 OK"]),
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
    whole = run_both_ways(tmp_path, SCRIPT)
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


def _recent(client: imaplib.IMAP4) -> list[bytes]:
    return client.untagged_responses.pop("RECENT", [])  # type: ignore[return-value]


def test_recent_goes_to_the_first_session_told(tmp_path: Path) -> None:
    """4. rfc3501:2.3.2 between sessions: a delivery or APPEND is recent to
    the session that hears of it first, a COPY is recent in its target
    (rfc3501:6.4.7), a later session sees none of them as recent."""
    server = start(tmp_path, "recent")
    try:
        with (
            imaplib.IMAP4("127.0.0.1", server.imap_port) as first,
            imaplib.IMAP4("127.0.0.1", server.imap_port) as other,
        ):
            for client in (first, other):
                client.login(ALICE, PASSWORD)
            first.select("INBOX")
            assert _recent(first) == [b"2"]
            assert other.append("INBOX", "", None, b"Subject: x\r\n\r\nhi\r\n")[0] == "OK"
            first.noop()
            assert _recent(first) == [b"3"]
            assert first.fetch("3", "(FLAGS)")[1] == [b"3 (FLAGS (\\Recent))"]
            other.select("INBOX")
            assert _recent(other) == [b"0"]
            assert other.fetch("1:3", "(FLAGS)")[1] == [
                b"1 (FLAGS ())",
                b"2 (FLAGS ())",
                b"3 (FLAGS ())",
            ]
            # A COPY into a mailbox another session has selected.
            first.select("Archive")
            assert _recent(first) == [b"0"]
            assert other.copy("1:2", "Archive")[0] == "OK"
            first.noop()
            assert first.untagged_responses.pop("EXISTS", [])[-1] == b"2"
            assert _recent(first) == [b"2"]
            flags = first.fetch("1:2", "(FLAGS)")[1]
            assert flags == [b"1 (FLAGS (\\Recent))", b"2 (FLAGS (\\Recent))"], flags
            assert other.status("Archive", "(RECENT)")[1] == [b'"Archive" (RECENT 0)']
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def test_imap4rev2_sessions_neither_see_nor_take_recent(tmp_path: Path) -> None:
    """rfc9051 has no \\Recent (appendix E): no RECENT response, no flag,
    and the messages stay recent for the next IMAP4rev1 session."""
    server = start(tmp_path, "rev2")
    try:
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as modern:
            modern.login(ALICE, PASSWORD)
            modern.enable("IMAP4rev2")
            modern.select("INBOX")
            assert _recent(modern) == []
            assert modern.fetch("1:2", "(FLAGS)")[1] == [b"1 (FLAGS ())", b"2 (FLAGS ())"]
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as older:
            older.login(ALICE, PASSWORD)
            older.select("INBOX")
            assert _recent(older) == [b"2"]
    finally:
        server.stop()


def test_recent_claims_outlive_a_restart(tmp_path: Path) -> None:
    """What a session took is written to the index: after a restart the
    messages are no longer recent; what came in meanwhile is."""
    server = start(tmp_path, "restart")
    try:
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as client:
            client.login(ALICE, PASSWORD)
            client.select("INBOX")
            assert _recent(client) == [b"2"]
        server.stop()
        server.start()
        deliver(server.port)
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as client:
            client.login(ALICE, PASSWORD)
            assert client.status("INBOX", "(MESSAGES RECENT)")[1] == [
                b'"INBOX" (MESSAGES 4 RECENT 2)'
            ]
            client.select("INBOX")
            assert _recent(client) == [b"2"]
            assert client.search(None, "RECENT")[1] == [b"3 4"]
    finally:
        server.stop()


def _lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


FOO = b"From: foo@example.com\r\n\r\nHello world body\r\n"
BAR = b"From: bar@example.com\r\nSubject: two\r\n\r\nSecond body\r\n"

# rfc3502 MULTIAPPEND and rfc4469 CATENATE (the peer suite's multiappend,
# catenate and catenate-multiappend cases): all messages or none.
APPEND_SCRIPT: list[tuple[bytes, list[str]]] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    (b"a2 CREATE cat\r\n", [r"a2 OK"]),
    (
        b'm1 APPEND cat (\\Seen) "04-Dec-2026 09:00:00 +0000" '
        + _lit(FOO)
        + b' (\\Flagged) "05-Dec-2026 10:00:00 +0000" '
        + _lit(BAR)
        + b"\r\n",
        [r"m1 OK \[APPENDUID \d+ 1:2\]"],
    ),
    (b"m2 APPEND cat CATENATE (TEXT " + _lit(FOO) + b")\r\n", [r"m2 OK \[APPENDUID \d+ 3\]"]),
    (
        b'm3 APPEND cat (\\Seen) CATENATE (URL "/cat/;uid=2/;section=header" TEXT '
        + _lit(b"body1\r\n")
        + b")\r\n",
        [r"m3 OK \[APPENDUID \d+ 4\]"],
    ),
    (
        b"m4 APPEND cat CATENATE (TEXT "
        + _lit(b"Subject: made\r\n\r\n")
        + b' URL "/cat/;UID=1/;SECTION=1" TEXT '
        + _lit(b"suffix\r\n")
        + b")"
        + b' CATENATE (URL "/cat/;uid=2/;partial=100000.1" TEXT '
        + _lit(b"H: x\r\n\r\nb7\r\n")
        + b")\r\n",
        [r"m4 OK \[APPENDUID \d+ 5:6\]"],
    ),
    # A URL that names nothing: NO [BADURL url], and nothing appended (the
    # first message of the command neither).
    (
        b"n1 APPEND cat "
        + _lit(b"Subject: not kept\r\n\r\n")
        + b' CATENATE (URL "/cat;UIDVALIDITY=12345/;uid=1/;section=header")\r\n',
        [r"n1 NO \[BADURL /cat;UIDVALIDITY=12345/;uid=1/;section=header\]"],
    ),
    (b'n2 APPEND cat CATENATE (URL "/cat/;uid=99")\r\n', [r"n2 NO \[BADURL /cat/;uid=99\]"]),
    (b'n3 APPEND cat CATENATE (URL "/cat/;uid=1/;urlauth=x")\r\n', [r"n3 NO \[BADURL "]),
    (b'n4 APPEND cat CATENATE (URL ";UID=1")\r\n', [r"n4 NO \[BADURL ;UID=1\]"]),  # no selected
    # TRYCREATE whatever the URLs say.
    (
        b'n5 APPEND nowhere CATENATE (URL "/cat;UIDVALIDITY=12345/;uid=1")\r\n',
        [r"n5 NO \[TRYCREATE\]"],
    ),
    (b"n6 APPEND cat CATENATE ()\r\n", [r"n6 BAD"]),
    (b"n7 APPEND cat CATENATE (TEXT)\r\n", [r"n7 BAD"]),
    (b"n8 STATUS cat (MESSAGES)\r\n", [r"\(MESSAGES 6\)", r"n8 OK"]),
    (b"p1 SELECT cat\r\n", [r"p1 OK"]),
    (
        b"p2 FETCH 1:2 (FLAGS INTERNALDATE)\r\n",
        [
            r"\* 1 FETCH \(FLAGS \(\\Recent \\Seen\) ",
            r"\* 2 FETCH \(FLAGS \(\\Recent \\Flagged\) "
            r'INTERNALDATE " 5-Dec-2026 10:00:00 \+0000"\)',
            r"p2 OK",
        ],
    ),
    (
        b"p3 FETCH 4 BODY.PEEK[]\r\n",
        [
            r"BODY\[\] \{\d+\}\r\nFrom: bar@example.com\r\nSubject: two\r\n\r\nbody1\r\n\)",
            r"p3 OK",
        ],
    ),
    (
        b"p4 FETCH 5 BODY.PEEK[]\r\n",
        [
            r"BODY\[\] \{\d+\}\r\nSubject: made\r\n\r\nHello world body\r\nsuffix\r\n\)",
            r"p4 OK",
        ],
    ),
    (b"p5 FETCH 6 BODY.PEEK[]\r\n", [r"BODY\[\] \{\d+\}\r\nH: x\r\n\r\nb7\r\n\)", r"p5 OK"]),
    # rfc5092:7.2 relative to the selected mailbox.
    (
        b'p6 APPEND cat CATENATE (URL ";UID=2/;SECTION=TEXT")\r\n',
        [r"\* 7 EXISTS", r"p6 OK \[APPENDUID \d+ 7\]"],
    ),
    (b"p7 FETCH 7 BODY.PEEK[]\r\n", [r"BODY\[\] \{13\}\r\nSecond body\r\n\)", r"p7 OK"]),
    # rfc8970 PREVIEW (LAZY changes nothing here); not a section: no \Seen.
    (
        b"p8 FETCH 1:2 (PREVIEW FLAGS)\r\n",
        [
            r'\* 1 FETCH \(PREVIEW "Hello world body" FLAGS \(\\Recent \\Seen\)\)',
            r'\* 2 FETCH \(PREVIEW "Second body" FLAGS \(\\Recent \\Flagged\)\)',
            r"p8 OK",
        ],
    ),
    (b"p9 UID FETCH 3 (PREVIEW (LAZY))\r\n", [r'PREVIEW "Hello world body"', r"p9 OK"]),
    (b"q1 FETCH 1 (PREVIEW (FUZZY))\r\n", [r"q1 BAD"]),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]


@pytest.mark.slow
def test_multiappend_and_catenate_whole_and_byte_by_byte(tmp_path: Path) -> None:
    run_both_ways(tmp_path, APPEND_SCRIPT)
