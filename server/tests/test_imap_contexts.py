"""Updating searches and partial results (rfc5267:4, CONTEXT=SEARCH) as a
transcript, whole and one byte at a time; the cases are the peer suite's
search-context-update*, search-partial, written as our own steps."""

from __future__ import annotations

import imaplib
import re
import socket
from pathlib import Path

import pytest
from test_imap_transcript import ALICE, PLAIN, RawReader, run_both_ways, start

from conftest import PASSWORD
from estafeta.imap import contexts
from estafeta.imap.types import SearchKey

Step = tuple[bytes, list[str]]


def append(tag: str, box: str, subject: str, flags: str = "") -> Step:
    data = f"Subject: {subject}\r\n\r\nbody {subject}\r\n".encode()
    flag_part = f"({flags}) " if flags else ""
    return f"{tag} APPEND {box} {flag_part}{{{len(data)}+}}\r\n".encode() + data + b"\r\n", [
        rf"{tag} OK"
    ]


def es(tag: str, rest: str = "") -> str:
    """A regex for an ESEARCH response to ``tag`` with ``rest`` (a regex) after it."""
    return rf'\* ESEARCH \(TAG "{tag}"\)' + (" " + rest if rest else "")


def ask(tag: str, command: str, *untagged: str, status: str = "OK") -> Step:
    return f"{tag} {command}\r\n".encode(), [*untagged, rf"{tag} {status}"]


SCRIPT: list[Step] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    ask("a2", "CAPABILITY", r"\* CAPABILITY .*CONTEXT=SEARCH"),
    ask("a3", "CREATE ctx"),
    *[append(f"a4{n}", "ctx", f"s{n}") for n in range(1, 6)],
    ask("a5", "SELECT ctx", r"\* 5 EXISTS"),
    # rfc5267:4.3 RETURN (UPDATE) alone: an ESEARCH without data
    ask("b1", "SEARCH RETURN (UPDATE) SEEN", es("b1") + r"\r\n"),
    # flags change: ADDTO / REMOVEFROM before the command ends (sequence numbers)
    ask("b2", "STORE 1,2,4 +FLAGS.SILENT (\\Seen)", es("b1", r"ADDTO \(0 1:2,4\)\r\nb2 OK")),
    ask("b3", "STORE 1,2 -FLAGS.SILENT (\\Seen)", es("b1", r"REMOVEFROM \(0 1:2\)\r\nb3 OK")),
    # expunged: REMOVEFROM first, numbered as before the EXPUNGE responses
    # (which go from the last message down)
    ask("b4", "STORE 3:5 +FLAGS.SILENT (\\Deleted)"),
    ask(
        "b5",
        "EXPUNGE",
        es("b1", r"REMOVEFROM \(0 4\)\r\n\* 5 EXPUNGE\r\n\* 4 EXPUNGE\r\n\* 3 EXPUNGE\r\n"),
    ),
    # a new message that matches
    (
        append("b6", "ctx", "s6", "\\Seen")[0],
        [r"\* 3 EXISTS", es("b1", r"ADDTO \(0 3\)"), r"b6 OK"],
    ),
    ask("b7", "CANCELUPDATE \"b1\""),
    ask("b8", "STORE 1 +FLAGS.SILENT (\\Seen)"),  # no ESEARCH (checked below)
    ask("b9", 'CANCELUPDATE "b1"', status="BAD"),  # no longer known
    # UID SEARCH: updates in UIDs, several at once
    ask("c1", "STORE 1:3 -FLAGS.SILENT (\\Seen)"),
    ask("c2", "UID SEARCH RETURN (UPDATE ALL) OR SEEN SUBJECT s2", es("c2", r"UID ALL 2\r\n")),
    ask("c3", "STORE 1:3 +FLAGS.SILENT (\\Seen)", es("c2", r"UID ADDTO \(0 1,6\)\r\nc3 OK")),
    ask("c4", "STORE 1:3 -FLAGS.SILENT (\\Seen)", es("c2", r"UID REMOVEFROM \(0 1,6\)\r\nc4 OK")),
    # an implicit \Seen (FETCH BODY[]) is a change too
    ask("c5", "FETCH 1 BODY[]", es("c2", r"UID ADDTO \(0 1\)\r\nc5 OK")),
    # rfc5267:4.3 a searching command may not reuse the tag of a live one
    ask("c2", "SEARCH ALL", status="BAD"),
    ask("c2", "SORT (ARRIVAL) UTF-8 ALL", status="BAD"),
    # CONTEXT alone is a hint: the answer is RETURN ()'s
    ask("c6", "SEARCH RETURN (CONTEXT) ALL", es("c6", r"ALL 1:3\r\n")),
    # rfc5267:4.4 PARTIAL: positions in mailbox order, NIL past the end
    ask("d1", "SEARCH RETURN (PARTIAL 2:3) ALL", es("d1", r"PARTIAL \(2:3 2:3\)\r\n")),
    ask("d2", "SEARCH RETURN (PARTIAL 3:2) ALL", es("d2", r"PARTIAL \(2:3 2:3\)\r\n")),
    ask("d3", "UID SEARCH RETURN (PARTIAL 1:9) ALL", es("d3", r"UID PARTIAL \(1:9 1:2,6\)\r\n")),
    ask("d4", "SEARCH RETURN (PARTIAL 4:4) ALL", es("d4", r"PARTIAL \(4:4 NIL\)\r\n")),
    ask("d5", "SEARCH RETURN (COUNT PARTIAL 1:1) ALL", es("d5", r"COUNT 3 PARTIAL \(1:1 1\)\r\n")),
    ask("d6", "SEARCH RETURN (PARTIAL 1) ALL", status="BAD"),
    ask("d7", "SEARCH RETURN (PARTIAL 1:*) ALL", status="BAD"),
    ask("d8", "SEARCH RETURN (ALL PARTIAL 1:2) ALL", status="BAD"),
    # more updating searches than a session keeps: NO [NOUPDATE], the answer still given
    *[ask(f"f{n}", "SEARCH RETURN (UPDATE) DELETED") for n in range(contexts.MAX_CONTEXTS - 1)],
    ask(
        "g1",
        "SEARCH RETURN (UPDATE COUNT) DELETED",
        r'\* NO \[NOUPDATE "g1"\]',
        es("g1", r"COUNT 0"),
    ),
    # closing the mailbox ends them all
    ask("h1", "UNSELECT"),
    ask("h2", "SELECT ctx"),
    ask("h3", "CANCELUPDATE \"c2\"", status="BAD"),
    # rfc5267:4.3.3-4.3.4 CONTEXT=SORT: positions in the sort order
    ask("s0", "CREATE sorted"),
    *[append(f"s0{n}", "sorted", subject) for n, subject in enumerate(("c", "a", "b"))],
    ask("s1", "SELECT sorted", r"\* 3 EXISTS"),
    ask("s2", "CAPABILITY", r"\* CAPABILITY .*CONTEXT=SORT"),
    ask("s3", "UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 FLAGGED", es("s3") + r" UID\r\n"),
    ask("s4", "STORE 1:3 +FLAGS (\\Flagged)", es("s3", r"UID ADDTO \(1 2 2 3 3 1\)\r\ns4 OK")),
    ask("s5", "STORE 3 -FLAGS.SILENT (\\Flagged)", es("s3", r"UID REMOVEFROM \(2 3\)\r\ns5 OK")),
    (append("s6", "sorted", "aa", "\\Flagged")[0], [es("s3", r"UID ADDTO \(2 4\)"), r"s6 OK"]),
    ask("s7", "SORT RETURN (UPDATE COUNT) (ARRIVAL) UTF-8 ALL", es("s7", r"COUNT 4")),
    ask("s8", "SORT RETURN (UPDATE) (ARRIVAL) UTF-8 ALL", r'\* NO \[NOUPDATE "s8"\]'),
    ask("s9", "STORE 1 +FLAGS.SILENT (\\Deleted)"),
    ask("sa", "EXPUNGE", es("s3", r"UID REMOVEFROM \(3 1\)"), es("s7", r"REMOVEFROM \(1 1\)"),
        r"\* 1 EXPUNGE"),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]  # fmt: skip


@pytest.mark.slow
def test_updating_searches_whole_and_byte_by_byte(tmp_path: Path) -> None:
    whole = run_both_ways(tmp_path, SCRIPT)
    cancelled = re.search(r"b7 OK[^\n]*\n(.*?)b9 BAD", whole, re.DOTALL)
    assert cancelled is not None and "ESEARCH" not in cancelled.group(1)  # no more updates
    unchanged = re.search(r"c6 OK[^\n]*\n(.*?)f0 ", whole, re.DOTALL)
    assert unchanged is not None and "ADDTO" not in unchanged.group(1)  # searches change nothing


def test_a_context_tells_what_joined_and_left() -> None:
    context = contexts.Context("t", SearchKey("SEEN", ()), uid=True, matched={1, 2, 3})
    added, removed = context.change([2, 3, 4, 5], {3, 5})
    assert (added, removed) == ([5], [2])
    assert context.matched == {1, 3, 5}
    assert context.lose([1, 9]) == [1]
    assert context.matched == {3, 5}


def test_updates_are_sequence_numbers_unless_the_search_was_uid() -> None:
    by_seq = contexts.Context('a"b', SearchKey("SEEN", ()), uid=False)
    seqs = {10: 1, 11: 2, 13: 3}
    line = contexts.render_change(by_seq, "ADDTO", [10, 11, 13], seqs.get)
    assert line == 'ESEARCH (TAG "a\\"b") ADDTO (0 1:3)'
    by_uid = contexts.Context("u", SearchKey("SEEN", ()), uid=True)
    assert contexts.render_change(by_uid, "REMOVEFROM", [10, 11, 13], seqs.get) == (
        'ESEARCH (TAG "u") UID REMOVEFROM (0 10:11,13)'
    )


def test_an_idling_session_hears_another_sessions_change(tmp_path: Path) -> None:
    """rfc5267:4.3: the updates reach a session in IDLE as the other session
    changes the flags, and a new message that matches joins the result."""
    server = start(tmp_path, "idle")
    try:
        with (
            socket.create_connection(("127.0.0.1", server.imap_port), timeout=10) as idler,
            imaplib.IMAP4("127.0.0.1", server.imap_port) as writer,
        ):
            until = RawReader(idler).until

            until(rb"\* OK .*\r\n")
            idler.sendall(f"a AUTHENTICATE PLAIN {PLAIN}\r\nb SELECT INBOX\r\n".encode())
            until(rb"b OK")
            idler.sendall(b"c UID SEARCH RETURN (UPDATE) FLAGGED\r\nd IDLE\r\n")
            assert b'ESEARCH (TAG "c") UID\r\n' in until(rb"\+ idling\r\n")
            writer.login(ALICE, PASSWORD)
            writer.select("INBOX")
            writer.store("2", "+FLAGS", r"(\Flagged)")
            assert b'* ESEARCH (TAG "c") UID ADDTO (0 2)\r\n' in until(rb"ADDTO[^\r]*\r\n")
            writer.append("INBOX", r"(\Flagged)", None, b"Subject: new\r\n\r\nnew\r\n")
            seen = until(rb"ADDTO \(0 3\)\r\n")
            assert b"* 3 EXISTS\r\n" in seen
            writer.store("2", "-FLAGS", r"(\Flagged)")
            assert b'* ESEARCH (TAG "c") UID REMOVEFROM (0 2)\r\n' in until(
                rb"REMOVEFROM[^\r]*\r\n"
            )
            idler.sendall(b"DONE\r\ne LOGOUT\r\n")
            until(rb"e OK")
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
