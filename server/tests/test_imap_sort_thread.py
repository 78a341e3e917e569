"""SORT, THREAD, ESORT and PARTIAL as transcripts (rfc5256, rfc5957, rfc5267).

The cases are those of the peer's compliance suite (Dovecot's imaptest:
sort-*, thread*, esort), written out as steps: each mailbox is built with
APPEND (the internal date given, as the suite's mbox "From " lines give
it), then sorted or threaded, and the answer must be exactly the suite's.
The script runs whole and one byte per send against fresh servers, and
both transcripts must agree (test_imap_transcript's runner).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_imap_transcript import PLAIN, run_both_ways

Step = tuple[bytes, list[str]]


def append(tag: str, box: str, date: str, text: str, flags: str = "") -> Step:
    """APPEND of ``text`` (LF line ends, sent as CRLF) with internal date ``date``."""
    data = text.replace("\n", "\r\n").encode()
    flag_part = f"({flags}) " if flags else ""
    head = f'{tag} APPEND {box} {flag_part}"{date}" {{{len(data)}+}}\r\n'.encode()
    return head + data + b"\r\n", [rf"{tag} OK"]


def mailbox(prefix: str, box: str, messages: list[tuple[str, str]]) -> list[Step]:
    """CREATE ``box``, APPEND each (date, text), SELECT it."""
    steps: list[Step] = [(f"{prefix}c CREATE {box}\r\n".encode(), [rf"{prefix}c OK"])]
    for n, (date, text) in enumerate(messages):
        steps.append(append(f"{prefix}a{n}", box, date, text))
    steps.append((f"{prefix}s SELECT {box}\r\n".encode(), [rf"{prefix}s OK"]))
    return steps


def ask(tag: str, command: str, *untagged: str, status: str = "OK") -> Step:
    """``command``, whose answer holds exactly the ``untagged`` lines (regexes)."""
    return (
        f"{tag} {command}\r\n".encode(),
        [rf"\* {line}\r\n" for line in untagged] + [rf"{tag} {status}"],
    )


D = "22-Feb-2008"


def at(time: str, zone: str = "+0200") -> str:
    return f"{D} {time} {zone}"


ADDRESSES = [
    (at("00:06:23", "+0000"), "From: user2@domain2.org\nTo: foo bar <user2@domain2.org>\n"
     "Cc: user2@domain2.org (foo bar)\n\n1\n"),
    (at("01:06:23", "+0000"), "From: user2@domain1.org\nTo: user2@domain1.org\n"
     "Cc: user2: blah@domain1.org;\n\n2\n"),
    (at("02:06:23", "+0000"), "From: user1@domain1.org\nTo: user1@domain1.org\n"
     "Cc: user1@domain1.org\n\n3\n"),
]  # fmt: skip

ARRIVAL = [
    (at("00:00:00", "+0000"), "\n1\n"),
    (at("02:00:00", "+0000"), "\n2\n"),
    (at("01:00:00", "+0000"), "\n33\n"),
    (at("02:00:00", "+0000"), "\n44\n"),
    (at("02:00:00", "+0000"), "\n5555\n"),
]

DATES = [
    (at("23:00:00"), "Date: Fri, 22 Feb 2008 00:00:00 +0200\n\n1\n"),
    (at("22:00:00"), "Date: Fri, 22 Feb 2008 02:00:00 +0200\n\n2\n"),
    (at("21:00:00"), "Date: Fri, 22 Feb 2008 01:00:00 +0200\n\n33\n"),
    (at("20:00:00"), "Date: Fri, 22 Feb 2008 02:00:00 +0200\n\n44\n"),
    (at("01:30:23"), "Subject: foo\n\n55555\n"),  # no Date: the internal date counts
    (at("18:00:00"), "Date: Fri, 22 Feb 2008 02:00:00 +0200\n\n6666\n"),
    (at("01:00:00"), "Subject: foo bar foo bar foo bar fooo\n\n777\n"),
]

DISPLAY_NAMES = [
    "foo bar <a@b.c>",
    "b@c.d",
    "d",
    "=?iso-8859-1?q?foo_aar?= <e@f.g>",
    "=?iso-8859-1?q?foo_car?= <f@g.h>",
]
DISPLAY_FROM = [(at("23:00:00"), f"From: {name}\n\n{n}\n") for n, name in enumerate(DISPLAY_NAMES)]
DISPLAY_TO = [
    (at("23:00:00"), f"To: {name}\n\n{n}\n")
    for n, name in enumerate(
        [*DISPLAY_NAMES, "a: xx@xx.org, yy@yy.org;", "z: aa@aa.org, bb@bb.org;", "empty:;"]
    )
]

PARTIAL = [
    (at("17:06:21", "+0000"), "\n1\n"),
    (at("17:06:22", "+0000"), "\n2\n"),
    (at("17:06:23", "+0000"), "\n3\n"),
    (at("17:06:23", "+0000"), "\n4\n"),
    (at("17:06:25", "+0000"), "\n5\n"),
]

SIZES = [
    (at(f"0{n}:06:23", "+0000"), f"Date: Sat, 24 Mar 2007 23:00:00 +0200\n\n{body}\n")
    for n, body in enumerate(["1", "22", "333", "4\n4", "555", "66", "7777", "8"])
]

X64 = "x" * 64 + "\n"
SUBJECT_BOX = [
    (at("23:00:00"), f"{header}\n{body}")
    for header, body in [
        ("Subject: a\n", "1\n"),
        ("Subject: C\n", "2\n"),
        ("Subject: b\n", "3\n"),
        ("Subject: _\n", "4\n"),
        ("Subject: [foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)\n", "55\n"),
        ("Subject: b (a)\n", "66\n"),
        ("Subject: Re: [FWD: c]\n", "77\n"),
        ("Subject: [xyz]\n", "88\n"),
        ("", "9\n"),  # no header at all
        ("Subject: =?iso-8859-1?q?_?=\n", "10\n"),
        ("Subject: Re: =?utf-8?q?b?=\n", "11\n" + X64),
        ("Subject: =?iso-8859-1?q?RE:_C?=\n", "12\n" + X64 * 2),
        ("Subject: =?us-ascii?b?UmU6IGM=?=\n", "13\n\nThe subject is 'Re: c'.\n" + X64 * 3),
        ("Subject: Ad: Re: Ad: Re: Ad: x\n", "14\n"),
        ("Subject: re: [fwd: [fwd: re: [fwd: babylon]]]\n", "15\n"),
    ]
]

ORDERED_DATES = [
    (at("23:00:01"), "Subject: a\nDate: Fri, 22 Feb 2008 22:00:10 +0200\n\n1\n"),
    (at("23:00:02"), "Date: Fri, 22 Feb 2008 22:00:09 +0200\nSubject: b\n\n2\n"),
    (at("23:00:03"), "Date: Fri, 22 Feb 2008 22:00:08 +0200\nSubject: a\n\n3\n"),
    (at("23:00:04"), "Date: Fri, 22 Feb 2008 22:00:07 +0200\nSubject: b\n\n4\n"),
    (at("22:00:30"), "Subject: a\n\n5\n"),
    (at("22:00:29"), "Subject: b\n\n6\n"),
    (at("22:00:28"), "Subject: a\n\n7\n"),
    (at("22:00:27"), "Subject: b\n\n8\n"),
]


def thread_box(*messages: tuple[str, str]) -> list[tuple[str, str]]:
    return [(at(t, "+0000"), f"{header}\n\nbody\n") for t, header in messages]


THREAD1 = thread_box(
    ("17:06:23", "Message-ID: <a@b>"),
    ("15:06:23", "Message-Id: <b@b>\nReferences: <a@b> <c@b>"),
    ("16:06:25", "Message-Id: <c@b>\nReferences: <b@b>"),
)
THREAD2 = thread_box(("15:06:23", "Message-Id: <a@b>"), ("15:06:23", "Message-Id: <a@b>"))
THREAD3 = thread_box(
    ("15:06:23", "Message-Id: <a@b>\nSubject: foo"),
    ("15:06:24", "Message-Id: <a@b>\nSubject: Re: foo"),
)
THREAD4 = thread_box(
    ("15:06:23", "Message-Id: <a@b>\nSubject: foo"),
    ("15:06:24", "Message-Id: <b@b>\nReferences: <c@b>\nSubject: Re: foo"),
)
THREAD5 = thread_box(
    ("17:06:23", "Message-ID: <1@b>"),
    ("15:06:23", "Message-Id: <2@b>\nIn-Reply-To: <1@b>"),
    ("15:06:23", "Message-Id: <3@b>\nIn-Reply-To: <1@b>"),
    ("15:06:23", "Message-Id: <4@b>\nIn-Reply-To: <2@b>"),
    ("15:06:23", "Message-Id: <5@b>\nIn-Reply-To: <2@b>"),
)
THREAD6 = thread_box(("15:06:23", "References: <a@b>"), ("15:06:24", "References: <a@b>"))
THREAD7 = thread_box(
    ("15:06:23", "Message-Id: <a@b>"),
    ("15:06:23", "Message-Id: <b@b>\nReferences: <a@b>"),
    ("15:06:23", "Message-Id: <c@b>\nReferences: <b@b>"),
    ("15:06:23", "Message-Id: <b@b>\nReferences: <a@b>"),  # a duplicate of 2
)
THREAD8 = thread_box(
    ("15:06:23", "Message-Id: <a@b>"),
    ("15:06:23", "Message-Id: <b@b>\nReferences: <a@b>"),
    ("15:06:23", "Message-Id: <b@b>\nReferences: <a@b>"),
)


def expunge(tag: str, numbers: str, *expunged: int) -> list[Step]:
    return [
        (f"{tag}s STORE {numbers} +FLAGS.SILENT (\\Deleted)\r\n".encode(), [rf"{tag}s OK"]),
        ask(f"{tag}x", "EXPUNGE", *(f"{n} EXPUNGE" for n in expunged)),
    ]


SCRIPT: list[Step] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    (
        b"a2 CAPABILITY\r\n",
        [
            rf"\* CAPABILITY [^\r]* {name}[ \r]"
            for name in (
                "SORT",
                "SORT=DISPLAY",
                "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES",
                "ESORT",
            )
        ]
        + [r"a2 OK"],
    ),
    # sort-addresses: the addr-mailbox of the first address (a group's name
    # for "user2: blah@domain1.org;"); ties in mailbox order (rfc5256:3).
    *mailbox("b", "addresses", ADDRESSES),
    ask("b1", "SORT (FROM) US-ASCII ALL", "SORT 3 1 2"),
    ask("b2", "SORT (TO) US-ASCII ALL", "SORT 3 1 2"),
    ask("b3", "SORT (CC) US-ASCII ALL", "SORT 3 1 2"),
    ask("b4", "SORT (REVERSE FROM) US-ASCII ALL", "SORT 1 2 3"),
    ask("b5", "SORT (REVERSE TO) US-ASCII ALL", "SORT 1 2 3"),
    ask("b6", "SORT (REVERSE CC) US-ASCII ALL", "SORT 1 2 3"),
    ask("b7", "SORT (FROM REVERSE ARRIVAL) US-ASCII ALL", "SORT 3 2 1"),
    ask("b8", "SORT (TO REVERSE ARRIVAL) US-ASCII ALL", "SORT 3 2 1"),
    ask("b9", "SORT (CC REVERSE ARRIVAL) US-ASCII ALL", "SORT 3 2 1"),
    # sort-arrival
    *mailbox("c", "arrival", ARRIVAL),
    ask("c1", "SORT (ARRIVAL) US-ASCII ALL", "SORT 1 3 2 4 5"),
    ask("c2", "SORT (REVERSE ARRIVAL) US-ASCII ALL", "SORT 2 4 5 3 1"),
    ask("c3", "SORT (ARRIVAL REVERSE SIZE) US-ASCII ALL", "SORT 1 3 5 4 2"),
    # sort-date: the Date: field, in UTC; without one the internal date (rfc5256:2.2)
    *mailbox("d", "dates", DATES),
    ask("d1", "SORT (DATE) US-ASCII ALL", "SORT 1 3 7 5 2 4 6"),
    ask("d2", "SORT (REVERSE DATE) US-ASCII ALL", "SORT 2 4 6 5 3 7 1"),
    ask("d3", "SORT (DATE REVERSE SIZE) US-ASCII ALL", "SORT 1 7 3 5 6 4 2"),
    ask("d4", "SORT (DATE) US-ASCII ALL", "SORT 1 3 7 5 2 4 6"),  # asked again: kept
    # sort-display-from, sort-display-to (rfc5957:3)
    *mailbox("e", "dfrom", DISPLAY_FROM),
    ask("e1", "SORT (DISPLAYFROM) US-ASCII ALL", "SORT 2 3 4 1 5"),
    ask("e2", "SORT (REVERSE DISPLAYFROM) US-ASCII ALL", "SORT 5 1 4 3 2"),
    *mailbox("f", "dto", DISPLAY_TO),
    ask("f1", "SORT (DISPLAYTO) US-ASCII ALL", "SORT 6 2 3 8 4 1 5 7"),
    ask("f2", "SORT (REVERSE DISPLAYTO) US-ASCII ALL", "SORT 7 5 1 4 8 3 2 6"),
    # sort-size
    *mailbox("g", "sizes", SIZES),
    ask("g1", "SORT (SIZE) US-ASCII ALL", "SORT 1 8 2 6 3 5 4 7"),
    ask("g2", "SORT (REVERSE SIZE) US-ASCII ALL", "SORT 4 7 3 5 2 6 1 8"),
    ask("g3", "SORT (SIZE REVERSE ARRIVAL) US-ASCII ALL", "SORT 8 1 6 2 5 3 7 4"),
    # sort-subject: the base subject (rfc5256:2.1), compared in i;unicode-casemap
    *mailbox("h", "subjects", SUBJECT_BOX),
    ask("h1", "SORT (SUBJECT) US-ASCII ALL", "SORT 9 10 1 14 3 5 11 6 15 2 7 12 13 8 4"),
    ask("h2", "SORT (REVERSE SUBJECT) US-ASCII ALL", "SORT 4 8 2 7 12 13 15 6 3 5 11 14 1 9 10"),
    ask(
        "h3",
        "SORT (SUBJECT REVERSE SIZE) US-ASCII ALL",
        "SORT 10 9 1 14 11 5 3 6 15 13 12 7 2 8 4",
    ),
    # thread-orderedsubject (same mailbox)
    ask(
        "h4",
        "THREAD ORDEREDSUBJECT US-ASCII ALL",
        r"THREAD \(1\)\(2 \(7\)\(12\)\(13\)\)\(3 \(5\)\(11\)\)\(4\)\(6\)\(8\)\(9 10\)\(14\)\(15\)",
    ),
    # thread-orderedsubject2: children and threads by sent date
    *mailbox("i", "ordered", ORDERED_DATES),
    ask(
        "i1",
        "THREAD ORDEREDSUBJECT US-ASCII ALL",
        r"THREAD \(4 \(2\)\(8\)\(6\)\)\(3 \(1\)\(7\)\(5\)\)",
    ),
    # sort-partial (rfc5267:4.4)
    *mailbox("j", "partial", PARTIAL),
    ask(
        "j1",
        "SORT RETURN (PARTIAL 1:1) (ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j1"\) PARTIAL \(1:1 1\)',
    ),
    ask(
        "j2",
        "SORT RETURN (PARTIAL 2:4) (ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j2"\) PARTIAL \(2:4 2:4\)',
    ),
    ask(
        "j3",
        "SORT RETURN (PARTIAL 4:2) (ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j3"\) PARTIAL \(2:4 2:4\)',
    ),
    ask(
        "j4",
        "SORT RETURN (PARTIAL 2:4) (REVERSE ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j4"\) PARTIAL \(2:4 3:4,2\)',
    ),
    ask(
        "j5",
        "SORT RETURN (PARTIAL 1:6) (ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j5"\) PARTIAL \(1:6 1:5\)',
    ),
    ask(
        "j6",
        "SORT RETURN (PARTIAL 1:6) (REVERSE ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j6"\) PARTIAL \(1:6 5,3:4,2,1\)',
    ),
    ask(
        "j7",
        "SORT RETURN (PARTIAL 6:9) (ARRIVAL) US-ASCII ALL",
        r'ESEARCH \(TAG "j7"\) PARTIAL \(6:9 NIL\)',
    ),
    (b"j8 SORT RETURN (PARTIAL 1) (ARRIVAL) US-ASCII ALL\r\n", [r"j8 BAD"]),
    (b"j9 SORT RETURN (PARTIAL 1:*) (ARRIVAL) US-ASCII ALL\r\n", [r"j9 BAD"]),
    (b"ja SORT RETURN (PARTIAL *:1) (ARRIVAL) US-ASCII ALL\r\n", [r"ja BAD"]),
    # esort (rfc5267:3.1): MIN and MAX are the first and last in sort order
    ask("k1", "SORT RETURN (MIN) (ARRIVAL) US-ASCII 1:5", r'ESEARCH \(TAG "k1"\) MIN 1'),
    ask("k2", "SORT RETURN (MAX) (ARRIVAL) US-ASCII 1:5", r'ESEARCH \(TAG "k2"\) MAX 5'),
    ask("k3", "SORT RETURN (ALL) (ARRIVAL) US-ASCII 1:5", r'ESEARCH \(TAG "k3"\) ALL 1:5'),
    ask("k4", "SORT RETURN (COUNT) (ARRIVAL) US-ASCII 1:5", r'ESEARCH \(TAG "k4"\) COUNT 5'),
    ask(
        "k5",
        "SORT RETURN (MIN MAX ALL COUNT) (REVERSE ARRIVAL) UTF-8 2:4",
        r'ESEARCH \(TAG "k5"\) MIN 3 MAX 2 ALL 3:4,2 COUNT 3',
    ),
    ask(
        "k6",
        "UID SORT RETURN () (REVERSE ARRIVAL) UTF-8 ALL",
        r'ESEARCH \(TAG "k6"\) UID ALL 5,3:4,2,1',
    ),
    ask("k7", "SORT RETURN (MIN COUNT) (ARRIVAL) UTF-8 DELETED", r'ESEARCH \(TAG "k7"\) COUNT 0'),
    # the search keys are SEARCH's; UID SORT answers UIDs; a charset SEARCH
    # does not know is NO [BADCHARSET] (rfc5256:3)
    ask("k8", "SORT (REVERSE ARRIVAL) UTF-8 OR 1 5", "SORT 5 1"),
    ask("k9", "UID SORT (SIZE) UTF-8 UID 2:4", "SORT 2 3 4"),
    (b"kb SORT (ARRIVAL) KOI8-R ALL\r\n", [r"kb NO \[BADCHARSET \(US-ASCII UTF-8\)\]"]),
    (b"kc THREAD REFERENCES ISO-8859-1 ALL\r\n", [r"kc NO \[BADCHARSET"]),
    (b"kd SORT (ARRIVAL) UTF-8\r\n", [r"kd BAD"]),
    (b"ke SORT () UTF-8 ALL\r\n", [r"ke BAD"]),
    (b"kf THREAD REFS UTF-8 ALL\r\n", [r"kf BAD"]),
    (b"kg SORT (ARRIVAL) UTF-8 NOSUCHKEY\r\n", [r"kg BAD"]),
    # thread: REFERENCES, a link breaking a loop dropped; after an expunge
    # the missing parent is a dummy
    *mailbox("l", "thread1", THREAD1),
    ask("l1", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(3 2\)\(1\)"),
    *expunge("l2", "1", 1),
    ask("l3", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(2 1\)"),
    # thread2: a duplicate Message-ID is a message of its own
    *mailbox("m", "thread2", THREAD2),
    ask("m1", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1\)\(2\)"),
    # thread3, thread4: merged by base subject (step 5)
    *mailbox("n", "thread3", THREAD3),
    ask("n1", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 2\)"),
    *mailbox("o", "thread4", THREAD4),
    ask("o1", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 2\)"),
    # thread5: In-Reply-To; children by date then mailbox order; a dummy
    # with one child at the top gives way to it, one with two stays
    *mailbox("p", "thread5", THREAD5[:4]),
    ask("pb", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 \(2 4\)\(3\)\)"),
    *expunge("pc", "1,2", 1, 1),
    ask("pd", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1\)\(2\)"),
    append("pe", "thread5", *THREAD5[4]),
    ask("pf", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1\)\(\(2\)\(3\)\)"),
    ask("pg", "UID THREAD REFERENCES US-ASCII ALL", r"THREAD \(3\)\(\(4\)\(5\)\)"),
    # asked again (the answer kept by estafeta.imap.resultcache): numbers, not UIDs
    ask("ph", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1\)\(\(2\)\(3\)\)"),
    # thread6: two messages under one missing parent
    *mailbox("q", "thread6", THREAD6),
    ask("q1", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(\(1\)\(2\)\)"),
    # thread7, thread8: duplicate Message-IDs, before and after expunges
    *mailbox("r", "thread7", THREAD7),
    ask("r1", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 \(2 3\)\(4\)\)"),
    *expunge("r2", "2", 2),
    ask("r3", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 3 2\)"),
    *mailbox("s", "thread8", THREAD8[:2]),
    ask("sb", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 2\)"),
    *expunge("sc", "2", 2),
    ask("sd", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1\)"),
    append("se", "thread8", *THREAD8[2]),
    ask("sf", "THREAD REFERENCES US-ASCII ALL", r"THREAD \(1 2\)"),
    # an empty result
    ask("sg", "THREAD REFERENCES UTF-8 DELETED", "THREAD"),
    ask("sh", "SORT (DATE) UTF-8 DELETED", "SORT"),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]


@pytest.mark.slow
def test_sort_and_thread_whole_and_byte_by_byte(tmp_path: Path) -> None:
    run_both_ways(tmp_path, SCRIPT)
