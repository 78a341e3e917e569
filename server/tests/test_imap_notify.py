"""NOTIFY (rfc5465): the parser (fed whole and in every chunk size), a
transcript (whole and one byte at a time), and two sessions over sockets:
what one does reaches the other with no command in progress."""

from __future__ import annotations

import imaplib
import re
import socket
from pathlib import Path

import pytest
from test_imap_parser import error_of, one
from test_imap_transcript import ALICE, PLAIN, RawReader, run_both_ways, start

from conftest import PASSWORD
from estafeta.imap import commands as c
from estafeta.imap.notify import BoxState, Group, NotifyError, Spec, changed_items
from estafeta.imap.types import FetchAtt

ALL = frozenset({"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE"})


def test_parser_notify_forms() -> None:
    assert one(b"a NOTIFY NONE\r\n").args == c.Notify(None)
    line = (
        b"a notify set status (selected (MessageNew (uid flags) messageExpunge))"
        b' (subtree (Lists "a b") (MessageNew MessageExpunge MailboxName))'
        b" (mailboxes INBOX NONE) (personal (SubscriptionChange))\r\n"
    )
    assert one(line).args == c.Notify(
        (
            Group("SELECTED", (), frozenset({"MESSAGENEW", "MESSAGEEXPUNGE"}),
                  (FetchAtt("UID"), FetchAtt("FLAGS"))),
            Group("SUBTREE", ("Lists", "a b"),
                  frozenset({"MESSAGENEW", "MESSAGEEXPUNGE", "MAILBOXNAME"})),
            Group("MAILBOXES", ("INBOX",), frozenset()),
            Group("PERSONAL", (), frozenset({"SUBSCRIPTIONCHANGE"})),
        ),
        status=True,
    )  # fmt: skip
    for bad in (
        b"a NOTIFY\r\n",
        b"a NOTIFY SET\r\n",
        b"a NOTIFY SET (PERSONAL)\r\n",
        b"a NOTIFY SET (EVERYWHERE (MessageNew))\r\n",
        b"a NOTIFY SET (MAILBOXES (MessageNew))\r\n",
        b"a NOTIFY SET (PERSONAL (MessageNew)\r\n",
        b"a NOTIFY MAYBE\r\n",
    ):
        assert error_of(bad).tag == "a", bad


def test_spec_checks_and_filters() -> None:
    with pytest.raises(NotifyError) as refused:
        Spec([Group("PERSONAL", (), frozenset({"ANNOTATIONCHANGE"}))], status=False)
    assert not refused.value.bad  # NO [BADEVENT]
    for groups in (
        [Group("SELECTED", (), frozenset({"MAILBOXNAME"}))],  # rfc5465:6.1
        [Group("SELECTED", (), ALL), Group("SELECTED-DELAYED", (), ALL)],
        [Group("PERSONAL", (), ALL, (FetchAtt("UID"),))],  # FETCH items only for SELECTED
    ):
        with pytest.raises(NotifyError) as error:
            Spec(groups, status=False)
        assert error.value.bad
    spec = Spec(
        [
            Group("MAILBOXES", ("Lists",), frozenset({"MESSAGENEW"})),
            Group("SUBTREE", ("Lists",), ALL),
            Group("SUBSCRIBED", (), frozenset({"FLAGCHANGE"})),
            Group("INBOXES", (), frozenset({"MESSAGEEXPUNGE"})),
        ],
        status=False,
    )
    assert spec.events_for("Lists", set()) == {"MESSAGENEW"}  # the first group that takes it
    assert spec.events_for("Lists/a", set()) == ALL
    assert spec.events_for("Listsx", set()) == frozenset()
    assert spec.events_for("Other", {"Other"}) == {"FLAGCHANGE"}
    assert spec.events_for("INBOX", set()) == {"MESSAGEEXPUNGE"}


def test_status_items_for_changes() -> None:
    old = BoxState(uidvalidity=7, messages=3, uidnext=4, highestmodseq=10)
    arrived = BoxState(7, 4, 5, 11)
    gone = BoxState(7, 2, 4, 12)
    flagged = BoxState(7, 3, 4, 13)
    assert changed_items(old, arrived, ALL, False) == ["MESSAGES", "UIDNEXT"]
    assert changed_items(old, arrived, ALL, True) == ["MESSAGES", "UIDNEXT", "HIGHESTMODSEQ"]
    assert changed_items(old, gone, ALL, False) == ["MESSAGES", "UIDNEXT"]
    assert changed_items(old, gone, frozenset({"MESSAGENEW"}), False) == []
    assert changed_items(old, flagged, ALL, False) == ["UIDVALIDITY", "HIGHESTMODSEQ"]
    assert changed_items(old, flagged, frozenset({"MESSAGENEW"}), False) == []
    assert changed_items(old, old, ALL, False) == []
    # one arrived and one went: still a change of the message set
    assert changed_items(old, BoxState(7, 3, 5, 12), ALL, False) == ["MESSAGES", "UIDNEXT"]


SCRIPT: list[tuple[bytes, list[str]]] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    (b"a2 CAPABILITY\r\n", [r"\* CAPABILITY .*NOTIFY", r"a2 OK"]),
    (b"a3 CREATE box2\r\n", [r"a3 OK"]),
    (b"a4 APPEND box2 {14+}\r\nSubject: x\r\n\r\n\r\n", [r"a4 OK"]),
    # rfc5465:3.1 STATUS for each watched mailbox before the tagged OK
    (b"b1 NOTIFY SET STATUS (MAILBOXES box2 (MessageNew MessageExpunge))\r\n",
     [r'\* STATUS "box2" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+\)\r\nb1 OK']),
    (b"b2 NOTIFY SET STATUS (MAILBOXES box2 (MessageNew MessageExpunge FlagChange))\r\n",
     [r'\* STATUS "box2" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ HIGHESTMODSEQ \d+\)\r\nb2 OK']),
    (b"b3 NOTIFY SET (MAILBOXES box2 (MessageNew MessageExpunge))\r\n", [r"b3 OK"]),
    # one's own APPEND elsewhere is told too
    (b"b4 APPEND box2 {14+}\r\nSubject: y\r\n\r\n\r\n",
     [r'\* STATUS "box2" \(MESSAGES 2 UIDNEXT 3\)\r\nb4 OK']),
    (b"b5 NOTIFY SET (PERSONAL (AnnotationChange))\r\n",
     [r"b5 NO \[BADEVENT \(MessageNew MessageExpunge FlagChange MailboxName Subscr"]),
    (b"b6 NOTIFY SET (SELECTED (MailboxName))\r\n", [r"b6 BAD"]),
    (b"b7 NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))\r\n", [r"b7 OK"]),
    (b"b8 CREATE box3\r\n", [r'\* LIST \(\) "/" "box3"\r\nb8 OK']),
    (b"b9 RENAME box3 box4\r\n", [r'\* LIST \(\) "/" "box4" \("OLDNAME" \("box3"\)\)\r\nb9 OK']),
    (b"c1 SUBSCRIBE box4\r\n", [r'\* LIST \(\\Subscribed\) "/" "box4"\r\nc1 OK']),
    (b"c2 DELETE box4\r\n", [r'\* LIST \(\\NonExistent\) "/" "box4"\r\nc2 OK']),
    (b"c3 NOTIFY NONE\r\n", [r"c3 OK"]),
    (b"c4 CREATE box5\r\n", [r"c4 OK"]),  # nothing told (checked below)
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]  # fmt: skip


@pytest.mark.slow
def test_notify_transcript_whole_and_byte_by_byte(tmp_path: Path) -> None:
    whole = run_both_ways(tmp_path, SCRIPT)
    quiet = re.search(r"c3 OK[^\n]*\n(.*?)c4 OK", whole, re.DOTALL)
    assert quiet is not None and "LIST" not in quiet.group(1)


def test_notifications_come_with_no_command_in_progress(tmp_path: Path) -> None:
    server = start(tmp_path, "notify")
    try:
        with (
            socket.create_connection(("127.0.0.1", server.imap_port), timeout=10) as watcher,
            imaplib.IMAP4("127.0.0.1", server.imap_port) as other,
        ):
            until = RawReader(watcher).until

            until(rb"\* OK .*\r\n")
            watcher.sendall(f"a AUTHENTICATE PLAIN {PLAIN}\r\nb SELECT INBOX\r\n".encode())
            until(rb"b OK")
            watcher.sendall(
                b"c NOTIFY SET (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)])"
                b" MessageExpunge FlagChange)) (PERSONAL (MessageNew MessageExpunge"
                b" MailboxName))\r\n"
            )
            until(rb"c OK")
            other.login(ALICE, PASSWORD)
            other.create("Elsewhere")
            assert b'* LIST () "/" "Elsewhere"\r\n' in until(rb"Elsewhere\"\r\n")
            other.append("INBOX", None, None, b"Subject: live\r\n\r\nnew\r\n")
            seen = until(rb"Subject: live\r\n\r\n\)\r\n")
            assert b"* 3 EXISTS\r\n" in seen
            assert re.search(rb"\* 3 FETCH \(UID 3 BODY\[HEADER\.FIELDS \(SUBJECT\)\] \{", seen)
            other.append("Elsewhere", None, None, b"Subject: there\r\n\r\nx\r\n")
            assert b'* STATUS "Elsewhere" (MESSAGES 1 UIDNEXT 2)\r\n' in until(rb"STATUS[^\r]*\r\n")
            other.select("INBOX")
            other.store("1", "+FLAGS", r"(\Flagged)")
            assert re.search(
                rb"\* 1 FETCH \(UID 1 FLAGS \((\\Recent )?\\Flagged\)\)", until(rb"FETCH[^\r]*\r\n")
            )
            # SELECTED: an expunge is told at once, not at the next command
            other.store("2", "+FLAGS", r"(\Deleted)")
            other.expunge()
            assert b"* 2 EXPUNGE\r\n" in until(rb"EXPUNGE\r\n")
            watcher.sendall(b"d NOTIFY NONE\r\ne LOGOUT\r\n")
            until(rb"e OK")
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
