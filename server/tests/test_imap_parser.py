"""The sans-IO IMAP command parser (rfc9051:9 and the extensions it serves).

Every transcript goes through ``run``, which feeds it in one chunk and in
every chunk size from 1 octet up, and requires the same events each time.
"""

from __future__ import annotations

import datetime
import random
import time
from typing import Any

import pytest

from estafeta.imap import commands as c
from estafeta.imap.parser import (
    Command,
    Continue,
    Eof,
    Event,
    NeedData,
    ParseError,
    Parser,
    RawLine,
    UnencodedName,
    decode_mutf7,
    encode_mutf7,
)
from estafeta.imap.types import FetchAtt, SearchKey, Section, SequenceSet

CONT = Continue("Ready for literal data")


def K(op: str, *args: object) -> SearchKey:
    return SearchKey(op, tuple(args))


def plain_keys(ops: str) -> tuple[SearchKey, ...]:
    return tuple(SearchKey(op) for op in ops.split())


def AND(*keys: SearchKey) -> SearchKey:
    return SearchKey("AND", (tuple(keys),))


def S(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


def _feed(
    data: bytes,
    chunk: int,
    *,
    auth: bool,
    utf8: bool,
    options: dict[str, Any],
) -> list[Event]:
    parser = Parser(**options)
    parser.set_authenticated(auth)
    parser.set_utf8(utf8)
    events: list[Event] = []

    def drain(until: type) -> None:
        for _ in range(100_000):
            event = parser.next_event()
            if isinstance(event, until):
                return
            assert not isinstance(event, NeedData | Eof), event
            events.append(event)
            # What the session does: IDLE and a SASL exchange read raw lines.
            if isinstance(event, Command) and (
                event.name == "IDLE"
                or (isinstance(event.args, c.Authenticate) and event.args.initial_response is None)
            ):
                parser.expect_line()
        raise AssertionError("parser does not settle")

    for start in range(0, len(data), chunk):
        parser.receive_data(data[start : start + chunk])
        drain(NeedData)
    parser.receive_data(b"")
    drain(Eof)
    assert isinstance(parser.next_event(), Eof)  # and stays there
    return events


# Transcripts of tens of kilobytes (literal limits) pass ``sizes``: every
# size from 1 up would feed them some 10^9 times.
def run(
    data: bytes,
    *,
    auth: bool = True,
    utf8: bool = False,
    sizes: range | list[int] | None = None,
    **options: Any,
) -> list[Event]:
    """The events for ``data`` (without NeedData and the final Eof), the
    same whatever the chunking."""
    expected = _feed(data, max(len(data), 1), auth=auth, utf8=utf8, options=options)
    for size in sizes if sizes is not None else range(1, len(data) + 1):
        got = _feed(data, size, auth=auth, utf8=utf8, options=options)
        assert got == expected, f"chunk size {size}"
    return expected


def one(line: bytes, **options: Any) -> Command:
    """The single Command a line gives (after a "+" for each synchronizing literal)."""
    events = [e for e in run(line, **options) if e != CONT]
    assert len(events) == 1 and isinstance(events[0], Command), events
    return events[0]


def args_of(line: bytes, **options: Any) -> object:
    return one(line, **options).args


def error_of(line: bytes, **options: Any) -> ParseError:
    """The single ParseError a line gives, checking that the parser is back
    in step: a NOOP after it parses."""
    events = run(line + b"zz1 NOOP\r\n", **options)
    assert len(events) == 2, events
    error, after = events
    assert isinstance(error, ParseError), events
    assert after == Command("zz1", "NOOP", c.Noop()), events
    assert not error.fatal
    return error


# -- the sample session of rfc9051:8 ---------------------------------------------------


def test_rfc9051_section8_sample_session() -> None:
    data = (
        b"a001 login mrc secret\r\n"
        b"a002 select inbox\r\n"
        b"a003 fetch 12 full\r\n"
        b"a004 fetch 12 body[header]\r\n"
        b"a005 store 12 +flags \\deleted\r\n"
        b"a006 logout\r\n"
    )
    full = tuple(FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"))
    assert run(data, auth=False) == [
        Command("a001", "LOGIN", c.Login("mrc", "secret")),
        Command("a002", "SELECT", c.Select("INBOX")),
        Command("a003", "FETCH", c.Fetch(S((12, 12)), full)),
        Command(
            "a004",
            "FETCH",
            c.Fetch(S((12, 12)), (FetchAtt("BODY[]", Section(text="HEADER")),)),
        ),
        Command("a005", "STORE", c.Store(S((12, 12)), "+", False, ("\\Deleted",))),
        Command("a006", "LOGOUT", c.Logout()),
    ]


# -- every command, from the examples of rfc9051:6 and the extension RFCs ------------------

COMMANDS: list[tuple[bytes, str, object, bool]] = [
    # rfc9051:6.1
    (b"abcd CAPABILITY", "CAPABILITY", c.Capability(), False),
    (b"a002 NOOP", "NOOP", c.Noop(), False),
    (b"A023 LOGOUT", "LOGOUT", c.Logout(), False),
    # rfc9051:6.2
    (b"a002 STARTTLS", "STARTTLS", c.StartTls(), False),
    (
        b"a004 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q=",  # rfc4959:3 SASL-IR
        "AUTHENTICATE",
        c.Authenticate("PLAIN", "dGVzdAB0ZXN0AHRlc3Q="),
        False,
    ),
    (b"a AUTHENTICATE plain =", "AUTHENTICATE", c.Authenticate("PLAIN", "="), False),
    (b"a001 LOGIN SMITH SESAME", "LOGIN", c.Login("SMITH", "SESAME"), False),
    (b'a LOGIN "fred \\"x\\"" "p\\\\w d"', "LOGIN", c.Login('fred "x"', "p\\w d"), False),
    # rfc9051:6.3; rfc5161
    (
        b"t3 ENABLE CONDSTORE X-GOOD-IDEA",
        "ENABLE",
        c.Enable(("CONDSTORE", "X-GOOD-IDEA")),
        False,
    ),
    (b"A142 SELECT INBOX", "SELECT", c.Select("INBOX"), False),
    (b"A932 EXAMINE blurdybloop", "EXAMINE", c.Examine("blurdybloop"), False),
    (b"a SELECT INBOX (CONDSTORE)", "SELECT", c.Select("INBOX", condstore=True), False),
    (
        b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
        "SELECT",
        c.Select(
            "INBOX",
            qresync=c.QresyncParams(
                67890007, 20050715194045000, S((41, 41), (43, 211), (214, 541))
            ),
        ),
        False,
    ),
    (
        b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 (1:15,18 3:17,22)))",
        "SELECT",
        c.Select(
            "INBOX",
            qresync=c.QresyncParams(
                67890007,
                90060115194045000,
                S((41, 211), (214, 541)),
                (S((1, 15), (18, 18)), S((3, 17), (22, 22))),
            ),
        ),
        False,
    ),
    (
        b"B05 EXAMINE INBOX (QRESYNC (1 2 (1 7)) CONDSTORE)",
        "EXAMINE",
        c.Examine("INBOX", True, c.QresyncParams(1, 2, None, (S((1, 1)), S((7, 7))))),
        False,
    ),
    (b"A003 CREATE owatagusiam/", "CREATE", c.Create("owatagusiam/"), False),
    (  # rfc6154:5.2
        b"t1 CREATE MySpecialArchive (USE (\\archive))",
        "CREATE",
        c.Create("MySpecialArchive", ("\\Archive",)),
        False,
    ),
    (b"A683 DELETE blurdybloop", "DELETE", c.Delete("blurdybloop"), False),
    (b"Z433 RENAME INBOX old-mail", "RENAME", c.Rename("INBOX", "old-mail"), False),
    (
        b"A002 SUBSCRIBE #news.comp.mail.mime",
        "SUBSCRIBE",
        c.Subscribe("#news.comp.mail.mime"),
        False,
    ),
    (
        b"A002 UNSUBSCRIBE #news.comp.mail.mime",
        "UNSUBSCRIBE",
        c.Unsubscribe("#news.comp.mail.mime"),
        False,
    ),
    (b'A101 LIST "" ""', "LIST", c.List("", ("",)), False),
    (b"A202 LIST ~/Mail/ %", "LIST", c.List("~/Mail/", ("%",)), False),
    (
        b'A102 LIST #news.comp.mail.misc ""',
        "LIST",
        c.List("#news.comp.mail.misc", ("",)),
        False,
    ),
    (  # rfc5258:5
        b'A02 LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (CHILDREN)',
        "LIST",
        c.List("", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",)),
        False,
    ),
    (
        b'BBB LIST "" ("INBOX" "Drafts" "Sent/%")',
        "LIST",
        c.List("", ("INBOX", "Drafts", "Sent/%")),
        False,
    ),
    (
        b'A04 LIST (remote) "" * RETURN ()',
        "LIST",
        c.List("", ("*",), ("REMOTE",)),
        False,
    ),
    (  # rfc6154:5.1
        b't1 LIST (SPECIAL-USE) "" "*"',
        "LIST",
        c.List("", ("*",), ("SPECIAL-USE",)),
        False,
    ),
    (  # rfc5819:5
        b'A01 LIST "" % RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN) SUBSCRIBED)',
        "LIST",
        c.List("", ("%",), (), ("SPECIAL-USE", "SUBSCRIBED"), ("MESSAGES", "UNSEEN")),
        False,
    ),
    (b'A002 LSUB "#news." "comp.mail.*"', "LSUB", c.Lsub("#news.", "comp.mail.*"), False),
    (b"A001 NAMESPACE", "NAMESPACE", c.Namespace(), False),
    (
        b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
        "STATUS",
        c.Status("blurdybloop", ("UIDNEXT", "MESSAGES")),
        False,
    ),
    (
        b"A043 STATUS inbox (unseen deleted size recent highestmodseq appendlimit uidvalidity)",
        "STATUS",
        c.Status(
            "INBOX",
            (
                "UNSEEN",
                "DELETED",
                "SIZE",
                "RECENT",
                "HIGHESTMODSEQ",
                "APPENDLIMIT",
                "UIDVALIDITY",
            ),
        ),
        False,
    ),
    (b"A001 IDLE", "IDLE", c.Idle(), False),
    # rfc2971:3.1
    (
        b'a023 ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")',
        "ID",
        c.Id({"name": "sodr", "version": "19.34", "vendor": "Pink Floyd Music Limited"}),
        False,
    ),
    (b"a024 ID NIL", "ID", c.Id(None), False),
    (b'a025 ID ("os" NIL)', "ID", c.Id({"os": None}), False),
    (b"a026 ID ()", "ID", c.Id({}), False),
    # rfc9208:4
    (b'G0001 GETQUOTA "!partition/sda4"', "GETQUOTA", c.GetQuota("!partition/sda4"), False),
    (b"A003 GETQUOTAROOT INBOX", "GETQUOTAROOT", c.GetQuotaRoot("INBOX"), False),
    (
        b'S0000 SETQUOTA "#user/alice" (STORAGE 510 message 20)',
        "SETQUOTA",
        c.SetQuota("#user/alice", {"STORAGE": 510, "MESSAGE": 20}),
        False,
    ),
    (b'S0001 SETQUOTA "" ()', "SETQUOTA", c.SetQuota("", {}), False),
    # rfc9051:6.4
    (b"FXXZ CHECK", "CHECK", c.Check(), False),
    (b"A341 CLOSE", "CLOSE", c.Close(), False),
    (b"A342 UNSELECT", "UNSELECT", c.Unselect(), False),
    (b"A202 EXPUNGE", "EXPUNGE", c.Expunge(), False),
    (b"A003 UID EXPUNGE 3000:3002", "EXPUNGE", c.UidExpunge(S((3000, 3002))), True),
    (
        b"A003 STORE 2:4 +FLAGS (\\Deleted)",
        "STORE",
        c.Store(S((2, 4)), "+", False, ("\\Deleted",)),
        False,
    ),
    (
        b"a103 UID STORE 7,5,9 (UNCHANGEDSINCE 320162338) -FLAGS.SILENT (\\seen $Junk)",
        "STORE",
        c.Store(S((7, 7), (5, 5), (9, 9)), "-", True, ("\\Seen", "$Junk"), 320162338),
        True,
    ),
    (
        b"a STORE $ FLAGS \\Answered Work",
        "STORE",
        c.Store(SequenceSet(saved=True), "", False, ("\\Answered", "Work")),
        False,
    ),
    (b"a STORE 1 FLAGS ()", "STORE", c.Store(S((1, 1)), "", False, ()), False),
    (b"A003 COPY 2:4 MEETING", "COPY", c.Copy(S((2, 4)), "MEETING"), False),
    (b"A004 UID COPY 1:* inbox", "COPY", c.Copy(S((1, None)), "INBOX"), True),
    (b"a UID MOVE 42:69 foo", "MOVE", c.Move(S((42, 69)), "foo"), True),
    (b"a MOVE *:4 foo", "MOVE", c.Move(S((None, 4)), "foo"), False),
    (
        b"A999 UID FETCH 4827313:4828442 FLAGS",
        "FETCH",
        c.Fetch(S((4827313, 4828442)), (FetchAtt("FLAGS"),)),
        True,
    ),
    (
        b"s100 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",  # rfc7162:3.2.6
        "FETCH",
        c.Fetch(S((300, 500)), (FetchAtt("FLAGS"),), 12345, True),
        True,
    ),
]


@pytest.mark.parametrize(
    ("line", "name", "expected", "uid"), COMMANDS, ids=[x[0].decode() for x in COMMANDS]
)
def test_command(line: bytes, name: str, expected: object, uid: bool) -> None:
    tag = line.split(b" ")[0].decode()
    assert run(line + b"\r\n") == [Command(tag, name, expected, uid)]


def test_every_command_is_covered() -> None:
    names = {name for _, name, _, _ in COMMANDS} | {"SEARCH", "APPEND"}
    assert names == {
        "CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE",
        "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
        "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE",
        "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "ID",
        "GETQUOTA", "GETQUOTAROOT", "SETQUOTA",
    }  # fmt: skip


def test_command_names_and_keywords_are_case_insensitive() -> None:
    assert run(b"a uId fEtCh 1 (fLaGs body.PEEK[text]) (changedSince 5)\r\n") == [
        Command(
            "a",
            "FETCH",
            c.Fetch(
                S((1, 1)),
                (FetchAtt("FLAGS"), FetchAtt("BODY[]", Section(text="TEXT"), peek=True)),
                5,
            ),
            uid=True,
        )
    ]


# -- FETCH ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (b"ALL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
        (b"fast", ("FLAGS", "INTERNALDATE", "RFC822.SIZE")),
        (b"FULL", ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")),
        (
            b"(UID RFC822 RFC822.HEADER RFC822.TEXT)",
            ("UID", "RFC822", "RFC822.HEADER", "RFC822.TEXT"),
        ),
        (b"(BODYSTRUCTURE BODY MODSEQ)", ("BODYSTRUCTURE", "BODY", "MODSEQ")),
    ],
)
def test_fetch_macros_and_simple_items(items: bytes, expected: tuple[str, ...]) -> None:
    args = args_of(b"a FETCH 1 " + items + b"\r\n")
    assert args == c.Fetch(S((1, 1)), tuple(FetchAtt(n) for n in expected))


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (b"BODY[]", FetchAtt("BODY[]", Section())),
        (b"BODY.PEEK[]<0.2048>", FetchAtt("BODY[]", Section(), True, (0, 2048))),
        (
            b"BODY[HEADER.FIELDS (DATE FROM)]",  # rfc9051:6.4.5
            FetchAtt("BODY[]", Section((), "HEADER.FIELDS", ("DATE", "FROM"))),
        ),
        (
            b'BODY[1.2.header.fields.not ("x-spam" Received)]',
            FetchAtt("BODY[]", Section((1, 2), "HEADER.FIELDS.NOT", ("X-SPAM", "RECEIVED"))),
        ),
        (b"BODY[4.2.2.1]", FetchAtt("BODY[]", Section((4, 2, 2, 1)))),
        (b"BODY[3.MIME]", FetchAtt("BODY[]", Section((3,), "MIME"))),
        (b"BODY[2.TEXT]<10.5>", FetchAtt("BODY[]", Section((2,), "TEXT"), False, (10, 5))),
        (b"BINARY[1.3]", FetchAtt("BINARY", Section((1, 3)))),  # rfc3516:4.1
        (b"BINARY.PEEK[]<0.9>", FetchAtt("BINARY", Section(), True, (0, 9))),
        (b"BINARY.SIZE[1]", FetchAtt("BINARY.SIZE", Section((1,)))),
    ],
)
def test_fetch_sections(item: bytes, expected: FetchAtt) -> None:
    assert args_of(b"a FETCH 2:4 (" + item + b")\r\n") == c.Fetch(S((2, 4)), (expected,))
    assert args_of(b"a FETCH 2:4 " + item + b"\r\n") == c.Fetch(S((2, 4)), (expected,))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"a FETCH 1 (FLAGS", "expected fetch item or )"),
        (b"a FETCH 1 FLAGS)", "expected fetch modifiers"),
        (b"a FETCH 1 (ALL)", "unknown fetch item ALL"),  # macros stand alone
        (b"a FETCH 1 ()", "expected fetch item"),
        (b"a FETCH 1 BODY[MIME]", "MIME needs a part number"),
        (b"a FETCH 1 BODY[0]", "section part out of range"),
        (b"a FETCH 1 BODY[1]<5>", "expected . in partial"),
        (b"a FETCH 1 BODY[1]<0.0>", "partial length out of range"),
        (b"a FETCH 1 BINARY[TEXT]", "expected section part"),
        (b"a FETCH 1 BINARY.SIZE[1]<0.5>", "expected fetch modifiers"),
        (b"a FETCH 1 BODY.PEEK", "expected ["),
        (b"a FETCH 1 FLAGS (CHANGEDSINCE 0)", "mod-sequence out of range"),
        (b"a FETCH 1 FLAGS (FOO)", "unknown fetch modifier FOO"),
        (b"a FETCH 1", "expected fetch items"),
    ],
)
def test_fetch_errors(line: bytes, message: str) -> None:
    error = error_of(line + b"\r\n")
    assert error == ParseError("a", f"Syntax error in FETCH: {message}")


# -- sequence sets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"1", S((1, 1))),
        (b"2,4:7,9,12:*", S((2, 2), (4, 7), (9, 9), (12, None))),
        (b"*:4,5:7", S((None, 4), (5, 7))),
        (b"*", S((None, None))),
        (b"4294967295", S((4294967295, 4294967295))),
        (b"$", SequenceSet(saved=True)),  # rfc5182:2.1
    ],
)
def test_sequence_sets(text: bytes, expected: SequenceSet) -> None:
    assert args_of(b"a COPY " + text + b" x\r\n") == c.Copy(expected, "x")


@pytest.mark.parametrize(
    "text", [b"0", b"1:", b":1", b"1,,2", b"1:2:3", b"4294967296", b"01", b"$,1", b"1,"]
)
def test_bad_sequence_sets(text: bytes) -> None:
    error = error_of(b"a COPY " + text + b" x\r\n")
    assert error == ParseError("a", "Syntax error in COPY: invalid sequence set")


def test_qresync_known_sets_refuse_star() -> None:
    error = error_of(b"a SELECT INBOX (QRESYNC (1 2 1:*))\r\n")
    assert error.text == "Syntax error in SELECT: invalid known UIDs"


# -- SEARCH ---------------------------------------------------------------------------------

FEB1 = datetime.date(1994, 2, 1)


@pytest.mark.parametrize(
    ("program", "keys"),
    [
        (
            b'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
            (K("FLAGGED"), K("SINCE", FEB1), K("NOT", K("FROM", "Smith"))),
        ),
        (
            b"all answered deleted draft flagged seen recent new old",
            plain_keys("ALL ANSWERED DELETED DRAFT FLAGGED SEEN RECENT NEW OLD"),
        ),
        (
            b"UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN",
            plain_keys("UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN"),
        ),
        (
            b"KEYWORD $Forwarded UNKEYWORD Junk",
            (K("KEYWORD", "$Forwarded"), K("UNKEYWORD", "Junk")),
        ),
        (
            b'BEFORE "1-Feb-1994" ON 01-Feb-1994 SENTBEFORE 1-feb-1994 SENTON 1-FEB-1994'
            b" SENTSINCE 29-Feb-2000",
            (
                K("BEFORE", FEB1),
                K("ON", FEB1),
                K("SENTBEFORE", FEB1),
                K("SENTON", FEB1),
                K("SENTSINCE", datetime.date(2000, 2, 29)),
            ),
        ),
        (b"OLDER 3600 YOUNGER 259200", (K("OLDER", 3600), K("YOUNGER", 259200))),  # rfc5032
        (b"LARGER 5000000000 SMALLER 10", (K("LARGER", 5000000000), K("SMALLER", 10))),
        (
            b'BCC a BODY "b c" CC "" FROM {3}\r\nx y TEXT t TO ~peter',
            (
                K("BCC", "a"),
                K("BODY", "b c"),
                K("CC", ""),
                K("FROM", "x y"),
                K("TEXT", "t"),
                K("TO", "~peter"),
            ),
        ),
        (b'HEADER Message-ID "<x@y>"', (K("HEADER", "Message-ID", "<x@y>"),)),
        (
            b"UID 443:557 1:5,7 $",
            (
                K("UID", S((443, 557))),
                K("SEQSET", S((1, 5), (7, 7))),
                K("SEQSET", SequenceSet(saved=True)),
            ),
        ),
        (
            b'MODSEQ "/flags/\\\\draft" all 620162338 MODSEQ 0',  # rfc7162:3.1.5
            (K("MODSEQ", "/flags/\\draft", "all", 620162338), K("MODSEQ", None, None, 0)),
        ),
        (
            b"OR NOT MODSEQ 720162338 LARGER 50000 (SEEN (FLAGGED))",
            (
                K("OR", K("NOT", K("MODSEQ", None, None, 720162338)), K("LARGER", 50000)),
                AND(K("SEEN"), AND(K("FLAGGED"))),
            ),
        ),
        (
            b"OR OR 1 2 3",
            (
                K(
                    "OR",
                    K("OR", K("SEQSET", S((1, 1))), K("SEQSET", S((2, 2)))),
                    K("SEQSET", S((3, 3))),
                ),
            ),
        ),
    ],
)
def test_search_keys(program: bytes, keys: tuple[SearchKey, ...]) -> None:
    args = args_of(b"a SEARCH " + program + b"\r\n")
    assert args == c.Search(None, None, AND(*keys))


@pytest.mark.parametrize(
    ("line", "charset", "options"),
    [
        (b"A282 SEARCH RETURN (MIN COUNT) ALL", None, ("MIN", "COUNT")),  # rfc4731:3.1
        (b"A283 SEARCH RETURN () ALL", None, ()),
        (
            b"A284 SEARCH RETURN (min max all count save) ALL",
            None,
            ("MIN", "MAX", "ALL", "COUNT", "SAVE"),
        ),
        (b"A285 SEARCH CHARSET utf-8 ALL", "UTF-8", None),
        (b'A286 SEARCH RETURN (SAVE) CHARSET "US-ASCII" ALL', "US-ASCII", ("SAVE",)),
    ],
)
def test_search_return_and_charset(
    line: bytes, charset: str | None, options: tuple[str, ...] | None
) -> None:
    assert args_of(line + b"\r\n") == c.Search(charset, options, AND(K("ALL")))


def test_search_utf8_literals_rfc9051_examples() -> None:
    word = "отпуск".encode()
    assert len(word) == 12
    data = (
        b"A285 SEARCH CHARSET UTF-8 TEXT {12}\r\n" + word + b"\r\n"
        b"A286 UID SEARCH CHARSET UTF-8 TEXT {12+}\r\n" + word + b"\r\n"
    )
    key = c.Search("UTF-8", None, AND(K("TEXT", "отпуск")))
    assert run(data) == [CONT, Command("A285", "SEARCH", key), Command("A286", "SEARCH", key, True)]


def test_search_badcharset() -> None:
    data = "A287 SEARCH CHARSET KOI8-R TEXT {4}\r\nпр\r\nb NOOP\r\n".encode()
    assert run(data) == [
        CONT,
        ParseError("A287", "[BADCHARSET (US-ASCII UTF-8)] Charset KOI8-R is not supported"),
        Command("b", "NOOP", c.Noop()),
    ]
    error = error_of(b'A288 SEARCH CHARSET "ISO-2022-JP" TEXT x\r\n')
    assert error == ParseError(
        "A288", "[BADCHARSET (US-ASCII UTF-8)] Charset ISO-2022-JP is not supported"
    )


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (b"(SEEN", "expected search key or )"),
        (b"SEEN)", "expected search key"),
        (b"()", "expected search key"),
        (b"FOO", "unknown search key FOO"),
        (b"SINCE 31-Feb-1994", "invalid date"),
        (b"SINCE 1-Foo-1994", "invalid date"),
        (b'SINCE "1-Feb-1994', "expected date like 1-Feb-1994"),
        (b"OLDER 0", "interval out of range"),
        (b"KEYWORD \\Seen", "expected keyword"),
        (b"OR SEEN", "expected second search key"),
        (b"RETURN (FOO) ALL", "unknown SEARCH return option FOO"),
        (b'MODSEQ "/x" all 5', "expected entry name /flags/<flag>"),
        (b'MODSEQ "/flags/x" mine 5', "expected entry type priv, shared or all"),
        (b"", "expected search key"),
    ],
)
def test_search_errors(program: bytes, message: str) -> None:
    error = error_of(b"s SEARCH " + program + b"\r\n")
    assert error == ParseError("s", f"Syntax error in SEARCH: {message}")


def test_search_nesting_limit() -> None:
    ok = b"a SEARCH " + b"NOT " * 32 + b"ALL\r\n"
    key = K("ALL")
    for _ in range(32):
        key = K("NOT", key)
    assert args_of(ok) == c.Search(None, None, AND(key))
    error = error_of(b"a SEARCH " + b"NOT " * 33 + b"ALL\r\n")
    assert error.text == "Syntax error in SEARCH: search keys nested more than 32 deep"
    error = error_of(b"a SEARCH " + b"(" * 33 + b"ALL" + b")" * 33 + b"\r\n")
    assert error.text == "Syntax error in SEARCH: search keys nested more than 32 deep"
    assert isinstance(
        args_of(b"a SEARCH " + b"(" * 4 + b"ALL" + b")" * 4 + b"\r\n", max_depth=4), c.Search
    )
    error = error_of(b"a SEARCH OR OR OR SEEN SEEN SEEN SEEN\r\n", max_depth=2)
    assert error.text == "Syntax error in SEARCH: search keys nested more than 2 deep"


# -- STORE, flags ---------------------------------------------------------------------------


def test_system_flags_are_normalised_and_keywords_kept() -> None:
    args = args_of(
        b"a STORE 1 +FLAGS (\\SEEN \\answered \\FlAgGeD \\Draft \\deleted \\Recent"
        b" $MDNSent \\Custom)\r\n"
    )
    assert isinstance(args, c.Store)
    assert args.flags == (
        "\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "\\Recent", "$MDNSent",
        "\\Custom",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"a STORE 1 +FLAGS (\\*)", "\\* is not a flag that can be set"),
        (b"a STORE 1 FLAGS", "expected flags"),
        (b"a STORE 1 FLAGS (\\Seen", "expected flag or )"),
        (b"a STORE 1 LABELS (x)", "expected FLAGS, +FLAGS or -FLAGS"),
        (b"a STORE 1 (UNCHANGEDSINCE) FLAGS (x)", "expected mod-sequence"),
        (b"a STORE 1 (FOO 1) FLAGS (x)", "unknown STORE modifier FOO"),
        (b'a STORE 1 FLAGS ("x")', "expected flag"),
    ],
)
def test_store_errors(line: bytes, message: str) -> None:
    assert error_of(line + b"\r\n") == ParseError("a", f"Syntax error in STORE: {message}")


# -- APPEND and literals ----------------------------------------------------------------------

MESSAGE = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.siam.edu.example\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)


def test_append_rfc9051_example_with_synchronizing_literal() -> None:
    data = b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"
    assert run(data) == [
        CONT,
        Command("A003", "APPEND", c.Append("saved-messages", ("\\Seen",), None, MESSAGE)),
    ]


def test_append_with_date_and_literal_plus() -> None:
    data = b'A004 APPEND Drafts () "17-Jul-1996 02:44:25 -0700" {%d+}\r\n' % len(MESSAGE)
    events = run(data + MESSAGE + b"\r\n")
    want = datetime.datetime(
        1996, 7, 17, 2, 44, 25, tzinfo=datetime.timezone(-datetime.timedelta(hours=7))
    )
    assert events == [Command("A004", "APPEND", c.Append("Drafts", (), want, MESSAGE))]
    assert isinstance(events[0], Command)
    args = events[0].args
    assert isinstance(args, c.Append) and args.date is not None
    assert args.date.utcoffset() == -datetime.timedelta(hours=7)


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        (b'" 7-Feb-1994 21:52:25 +0130"', (1994, 2, 7, 21, 52, 25, 90)),
        (b'"31-Dec-1999 23:59:59 +0000"', (1999, 12, 31, 23, 59, 59, 0)),
        (b'"01-jan-2000 00:00:00 -1200"', (2000, 1, 1, 0, 0, 0, -720)),
    ],
)
def test_append_date_times(date: bytes, expected: tuple[int, ...]) -> None:
    year, month, day, hour, minute, second, offset = expected
    zone = datetime.timezone(datetime.timedelta(minutes=offset))
    when = datetime.datetime(year, month, day, hour, minute, second, tzinfo=zone)
    args = args_of(b"a APPEND x " + date + b" {1+}\r\nM\r\n")
    assert args == c.Append("x", (), when, b"M")


@pytest.mark.parametrize(
    "date",
    [b'"30-Feb-1994 01:00:00 +0000"', b'"1-Feb-1994 24:00:00 +0000"', b'"1-Feb-1994 01:00:00 +2400"',  # noqa: E501
     b'"1-Feb-94 01:00:00 +0000"', b'"1-Feb-1994 01:00 +0000"', b'"1-Feb-1994 01:00:00"'],
)  # fmt: skip
def test_append_bad_date_times(date: bytes) -> None:
    error = error_of(b"a APPEND x " + date + b" {1+}\r\nM\r\n")
    assert error.tag == "a" and "date-time" in error.text


def test_append_literal8_keeps_nul_and_crlf() -> None:
    body = b"a\x00b\r\n{3}\r\nc"  # NUL, CRLF and a fake literal marker: all data
    data = b"A APPEND INBOX (\\Draft) ~{%d}\r\n" % len(body) + body + b"\r\n"
    assert run(data) == [
        CONT,
        Command("A", "APPEND", c.Append("INBOX", ("\\Draft",), None, body, binary=True)),
    ]


def test_append_utf8_literal8() -> None:  # rfc6855:4
    body = "Subject: Grüße\r\n\r\nx".encode()
    data = b"A APPEND INBOX UTF8 (~{%d+}\r\n" % len(body) + body + b")\r\n"
    assert run(data) == [
        Command("A", "APPEND", c.Append("INBOX", (), None, body, utf8=True, binary=True))
    ]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (
            b"A APPEND Drafts " + b"{0+}\r\n " * 1000 + b"{0+}\r\n",
            "at most 1000 messages in one APPEND",
        ),
        (
            b"A APPEND Drafts CATENATE (" + b'URL "/x/;UID=1" ' * 256 + b'URL "/x/;UID=1")',
            "at most 256 parts in one CATENATE",
        ),
    ],
)
def test_append_bounds(line: bytes, text: str) -> None:
    """rfc3502 / rfc4469 bounds: a BAD, and the parser back in step (long
    lines: a few chunkings, not every one)."""
    sizes = [1, 7, 4096, len(line) + 20]
    assert error_of(line + b"\r\n", sizes=sizes) == ParseError("A", text)


def test_fetch_preview() -> None:
    """rfc8970:7 PREVIEW, with or without (LAZY), among other items."""
    data = b"a FETCH 1 (PREVIEW (LAZY) UID)\r\nb FETCH 1 PREVIEW\r\n"
    assert run(data) == [
        Command(
            "a", "FETCH", c.Fetch(SequenceSet(((1, 1),)), (FetchAtt("PREVIEW"), FetchAtt("UID")))
        ),
        Command("b", "FETCH", c.Fetch(SequenceSet(((1, 1),)), (FetchAtt("PREVIEW"),))),
    ]
    assert error_of(b"c FETCH 1 (PREVIEW (FUZZY))\r\n").text.endswith(
        "unknown PREVIEW modifier FUZZY"
    )


def test_multiappend_and_catenate() -> None:
    """rfc3502:6.3.11 several messages, each with its options; rfc4469:5
    CATENATE parts (TEXT literals and URLs), mixed with plain messages."""
    data = (
        b'A APPEND Drafts (\\Seen) {1+}\r\nx "05-Dec-2026 10:00:00 +0000" {1}\r\ny'
        b' CATENATE (URL "/INBOX/;UID=3/;SECTION=HEADER" TEXT {2+}\r\nzz)'
        b' (\\Answered) CATENATE (url ";uid=4")\r\n'
    )
    [cont, command] = run(data, sizes=[1, 2, 7, len(data)])
    assert cont == CONT
    assert isinstance(command, Command) and isinstance(command.args, c.Append)
    args = command.args
    when = datetime.datetime(2026, 12, 5, 10, 0, tzinfo=datetime.UTC)
    assert args.messages() == [
        c.AppendMessage(("\\Seen",), None, b"x"),
        c.AppendMessage((), when, b"y"),
        c.AppendMessage(
            (), None, b"",
            catenate=(c.CatPart(url="/INBOX/;UID=3/;SECTION=HEADER"), c.CatPart(text=b"zz")),
        ),
        c.AppendMessage(("\\Answered",), None, b"", catenate=(c.CatPart(url=";uid=4"),)),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"A APPEND Drafts CATENATE ()", "Syntax error in APPEND: expected TEXT or URL"),
        (b"A APPEND Drafts CATENATE (TEXT)", "Syntax error in APPEND: expected TEXT literal"),
        (
            b'A APPEND Drafts CATENATE (URL "x"',
            "Syntax error in APPEND: expected next CATENATE part",
        ),
        (b'A APPEND Drafts CATENATE (TEXT "x")', "Syntax error in APPEND: expected TEXT literal"),
        (
            b"A APPEND Drafts CATENATE (TEXT ~{1+}\r\nx)",
            "Syntax error in APPEND: literal8 is not allowed for TEXT literal",
        ),
        (b"A APPEND Drafts {1+}\r\nx ", "Syntax error in APPEND: expected message literal"),
        (
            b"A APPEND Drafts {1+}\r\nx  {1+}\r\ny",
            "Syntax error in APPEND: expected message literal",
        ),
        (
            b"A APPEND Drafts (\\*) {1+}\r\nx",
            "Syntax error in APPEND: \\* is not a flag that can be set",
        ),
        (
            b'A APPEND Drafts "message"',
            'Syntax error in APPEND: expected date-time like "17-Jul-1996 02:44:25 -0700"',
        ),
        (
            b"A APPEND Drafts {2+}\r\na\x00",
            "Syntax error in APPEND: NUL octet in a literal (rfc9051:4.3; use literal8)",
        ),
        (b"A LOGIN ~{1+}\r\na x", "Syntax error in LOGIN: literal8 is not allowed for user name"),
    ],
)
def test_append_refusals(line: bytes, text: str) -> None:
    assert error_of(line + b"\r\n") == ParseError("A", text)


def test_continue_only_for_synchronizing_literals() -> None:
    data = (
        b"a LOGIN {4}\r\nuser {8+}\r\npass\r\nwo\r\n"  # literal data may hold CRLF
        b"b SELECT {5+}\r\ninbox\r\n"
        b"c RENAME {1}\r\nx {1}\r\ny\r\n"
        b'd STATUS "x" (MESSAGES)\r\n'
    )
    assert run(data) == [
        CONT,
        Command("a", "LOGIN", c.Login("user", "pass\r\nwo")),
        Command("b", "SELECT", c.Select("INBOX")),
        CONT,
        CONT,
        Command("c", "RENAME", c.Rename("x", "y")),
        Command("d", "STATUS", c.Status("x", ("MESSAGES",))),
    ]


def test_empty_literal_and_literal_at_command_end() -> None:
    assert run(b"a LOGIN {0}\r\n {0+}\r\n\r\n") == [CONT, Command("a", "LOGIN", c.Login("", ""))]


def test_synchronizing_literal_for_a_bad_command_gets_bad_not_continue() -> None:
    # rfc9051:7.5: the client waits for "+"; a BAD tells it not to send the literal.
    assert run(b"a FROB {5}\r\nb NOOP\r\n") == [
        ParseError("a", "Unknown command FROB"),
        Command("b", "NOOP", c.Noop()),
    ]
    assert run(b"+a LOGIN {5}\r\nb NOOP\r\n") == [
        ParseError(None, "Missing or invalid tag"),
        Command("b", "NOOP", c.Noop()),
    ]


# -- literal limits -------------------------------------------------------------------------


def test_literal_limit_before_authentication() -> None:
    big = 64 * 1024 + 1
    # Synchronizing: refused at once, without reading; the next line is a command.
    events = run(b"a LOGIN {%d}\r\nb NOOP\r\n" % big, auth=False)
    assert events == [
        ParseError("a", f"[TOOBIG] Literal of {big} octets is over the limit of 65536"),
        Command("b", "NOOP", c.Noop()),
    ]
    # Exactly 64 KiB is accepted (sum of the command's literals).
    ok = b"a LOGIN {65535}\r\n" + b"u" * 65535 + b" {1}\r\np\r\n"
    assert run(ok, auth=False, sizes=[1000, 4096, 65536])[-1] == Command(
        "a", "LOGIN", c.Login("u" * 65535, "p")
    )
    over = b"a LOGIN {65535}\r\n" + b"u" * 65535 + b" {2}\r\nb NOOP\r\n"
    assert run(over, auth=False, sizes=[1000, 70000])[-2:] == [
        ParseError("a", "[TOOBIG] Literal of 2 octets is over the limit of 65536"),
        Command("b", "NOOP", c.Noop()),
    ]
    # Non-synchronizing: the client sends it anyway; there is no resynchronising.
    events = run(b"a LOGIN {%d+}\r\nxxxx b NOOP\r\n" % big, auth=False)
    assert events == [
        ParseError("a", f"[TOOBIG] Literal of {big} octets is over the limit of 65536", True)
    ]


def test_literal_limit_after_authentication() -> None:
    data = b"a APPEND x {100000}\r\n" + b"m" * 100000 + b"\r\n"
    events = run(data, sizes=[1, 7, 4096, 100000])
    assert events == [CONT, Command("a", "APPEND", c.Append("x", (), None, b"m" * 100000))]
    assert run(b"a APPEND x {101}\r\nb NOOP\r\n", max_literal=100) == [
        ParseError("a", "[TOOBIG] Literal of 101 octets is over the limit of 100"),
        Command("b", "NOOP", c.Noop()),
    ]
    assert run(b"a APPEND x {101+}\r\n" + b"m" * 101 + b"\r\nb NOOP\r\n", max_literal=100) == [
        ParseError("a", "[TOOBIG] Literal of 101 octets is over the limit of 100", True)
    ]
    huge = b"a APPEND x {99999999999999999999999999}\r\nb NOOP\r\n"
    refusal = run(huge)[0]
    assert isinstance(refusal, ParseError) and refusal.text.startswith("[TOOBIG]")


def test_set_authenticated_raises_the_limit_for_later_commands() -> None:
    parser = Parser()
    parser.receive_data(b"a LOGIN u p\r\nb APPEND x {70000}\r\n")
    assert isinstance(parser.next_event(), Command)
    parser.set_authenticated(True)  # the session does this after LOGIN succeeds
    assert parser.next_event() == CONT


def test_literal_minus() -> None:  # rfc7888:4
    ok = b"a APPEND x {4096+}\r\n" + b"m" * 4096 + b"\r\n"
    assert run(ok, literal_plus=False, sizes=[1, 100, 5000])[0] == Command(
        "a", "APPEND", c.Append("x", (), None, b"m" * 4096)
    )
    over = b"a APPEND x {4097+}\r\n" + b"m" * 4097 + b"\r\nb NOOP\r\n"
    assert run(over, literal_plus=False, sizes=[1, 100, 5000]) == [
        ParseError("a", "[TOOBIG] Non-synchronizing literal over 4096 octets"),
        Command("b", "NOOP", c.Noop()),
    ]
    # The rest of the refused command is dropped, with its further literals.
    more = b"a APPEND x {4097+}\r\n" + b"m" * 4097 + b" {3+}\r\nb x\r\nc NOOP\r\n"
    assert run(more, literal_plus=False, sizes=[1, 100, 5000]) == [
        ParseError("a", "[TOOBIG] Non-synchronizing literal over 4096 octets"),
        Command("c", "NOOP", c.Noop()),
    ]
    # With LITERAL+ the same literal is fine.
    assert isinstance(run(over, sizes=[5000])[0], Command)


# -- line length ------------------------------------------------------------------------------


def test_line_too_long_then_resync() -> None:
    data = b"a1 SEARCH TEXT " + b"x" * 200 + b"\r\nb NOOP\r\n"
    assert run(data, max_line=100) == [
        ParseError("a1", "Command line too long (over 100 octets)"),
        Command("b", "NOOP", c.Noop()),
    ]
    # The limit is on the text: exactly max_line octets pass.
    line = b"a1 SEARCH TEXT " + b"x" * 85
    assert len(line) == 100
    assert isinstance(run(line + b"\r\n", max_line=100)[0], Command)
    assert isinstance(run(line + b"x\r\n", max_line=100)[0], ParseError)


def test_line_limit_counts_text_around_literals_not_literals() -> None:
    data = b"a LOGIN {200}\r\n" + b"u" * 200 + b" " + b"p" * 60 + b"\r\n"
    events = run(data, max_line=100)
    assert events[-1] == Command("a", "LOGIN", c.Login("u" * 200, "p" * 60))
    data = b"a LOGIN {200}\r\n" + b"u" * 200 + b" " + b"p" * 90 + b"\r\nb NOOP\r\n"
    assert run(data, max_line=100) == [
        CONT,
        ParseError("a", "Command line too long (over 100 octets)"),
        Command("b", "NOOP", c.Noop()),
    ]


def test_too_long_line_ending_in_literal_plus_skips_the_literal() -> None:
    data = b"a APPEND " + b"x" * 200 + b" {11+}\r\nb NOOP\r\nxyz\r\nc NOOP\r\n"
    assert run(data, max_line=100) == [
        ParseError("a", "Command line too long (over 100 octets)"),
        Command("c", "NOOP", c.Noop()),
    ]
    # Too long and a literal too large to skip: fatal.
    data = b"a APPEND " + b"x" * 200 + b" {1000000+}\r\nb NOOP\r\n"
    assert run(data, max_line=100, max_literal=1000) == [
        ParseError("a", "[TOOBIG] Literal too large; cannot resynchronise", True)
    ]


def test_too_long_tag() -> None:
    assert run(b"x" * 150 + b" NOOP\r\nb NOOP\r\n", max_line=100) == [
        ParseError(None, "Command line too long (over 100 octets)"),
        Command("b", "NOOP", c.Noop()),
    ]


# -- tags, names, resynchronisation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"a FOO bar", ParseError("a", "Unknown command FOO")),
        (b"a UID FOO 1", ParseError("a", "Unknown command UID FOO")),
        (b"a UID LOGIN a b", ParseError("a", "Unknown command UID LOGIN")),
        (b"a UID", ParseError("a", "Missing command after UID")),
        (b"a", ParseError("a", "Missing command")),
        (b"a ", ParseError("a", "Missing command")),
        (b"a  NOOP", ParseError("a", "Missing command")),
        (b"NOOP", ParseError("NOOP", "Missing command")),
        (b"+a NOOP", ParseError(None, "Missing or invalid tag")),
        (b"* NOOP", ParseError(None, "Missing or invalid tag")),
        (b"a*b NOOP", ParseError(None, "Missing or invalid tag")),
        (b'"a" NOOP', ParseError(None, "Missing or invalid tag")),
        (b" NOOP", ParseError(None, "Missing or invalid tag")),
        (b"", ParseError(None, "Empty command line")),
        (b"a NOOP now", ParseError("a", "Syntax error in NOOP: expected end of command")),
        (b"a SELECT", ParseError("a", "Syntax error in SELECT: expected mailbox")),
        (b"a SELECT (x)", ParseError("a", "Syntax error in SELECT: expected mailbox")),
        (
            b"a SELECT x (FOO)",
            ParseError("a", "Syntax error in SELECT: unknown select parameter FOO"),
        ),
        (
            b'a LOGIN "unterminated',
            ParseError(
                "a", "Syntax error in LOGIN: unterminated or invalid quoted string for user name"
            ),
        ),
        (b"a LOGIN u\x00 p", ParseError("a", "Syntax error in LOGIN: NUL octet in command")),
        (b"a LOGIN u\tx p", ParseError("a", "Syntax error in LOGIN: expected password")),
        (
            b'a LOGIN "\xff" p',
            ParseError("a", "Syntax error in LOGIN: user name is not valid UTF-8"),
        ),
        (b"a ENABLE", ParseError("a", "Syntax error in ENABLE: expected capability")),
        (
            b"a AUTHENTICATE PLAIN ab=c",
            ParseError("a", "Syntax error in AUTHENTICATE: expected base64 initial response"),
        ),
        (b'a ID ("k")', ParseError("a", "Syntax error in ID: expected ID field value")),
        (
            b'a ID ("' + b"k" * 31 + b'" NIL)',
            ParseError("a", "Syntax error in ID: ID field or value too long (rfc2971:3.3)"),
        ),
        (
            b"a CREATE x (FOO (y))",
            ParseError("a", "Syntax error in CREATE: unknown CREATE parameter FOO"),
        ),
        (
            b'a LIST (FOO) "" *',
            ParseError("a", "Syntax error in LIST: unknown LIST selection option FOO"),
        ),
        (
            b'a LIST (RECURSIVEMATCH) "" *',
            ParseError("a", "Syntax error in LIST: RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE"),
        ),
        (
            b'a LIST "" * RETURN (FOO)',
            ParseError("a", "Syntax error in LIST: unknown LIST return option FOO"),
        ),
        (b'a LIST "" * (CHILDREN)', ParseError("a", "Syntax error in LIST: expected RETURN")),
        (b'a LIST "" ()', ParseError("a", "Syntax error in LIST: empty mailbox patterns")),
        (b"a STATUS x ()", ParseError("a", "Syntax error in STATUS: empty status items")),
        (
            b"a STATUS x (MESSAGES BOGUS)",
            ParseError("a", "Syntax error in STATUS: unknown status item BOGUS"),
        ),
        (
            b"a SETQUOTA x (STORAGE)",
            ParseError("a", "Syntax error in SETQUOTA: expected resource limit"),
        ),
        (b"a UID EXPUNGE", ParseError("a", "Syntax error in UID EXPUNGE: expected sequence set")),
    ],
)
def test_errors_and_resync(line: bytes, error: ParseError) -> None:
    assert error_of(line + b"\r\n") == error


def test_tags() -> None:
    # rfc9051:9 tag = 1*<any ASTRING-CHAR except "+">: "]" is allowed.
    assert run(b"a]1 NOOP\r\n#~!.x NOOP\r\n") == [
        Command("a]1", "NOOP", c.Noop()),
        Command("#~!.x", "NOOP", c.Noop()),
    ]


def test_pipelined_commands_in_one_chunk() -> None:
    data = (
        b"p1 SELECT INBOX\r\np2 FETCH 1:* (FLAGS)\r\np3 BOGUS\r\np4 STORE 1 +FLAGS \\Seen\r\n"
        b"p5 NOOP\r\n"
    )
    parser = Parser()
    parser.receive_data(data)
    events = [parser.next_event() for _ in range(6)]
    assert events == [
        Command("p1", "SELECT", c.Select("INBOX")),
        Command("p2", "FETCH", c.Fetch(S((1, None)), (FetchAtt("FLAGS"),))),
        ParseError("p3", "Unknown command BOGUS"),
        Command("p4", "STORE", c.Store(S((1, 1)), "+", False, ("\\Seen",))),
        Command("p5", "NOOP", c.Noop()),
        NeedData(),
    ]


def test_state_changes_apply_to_pipelined_commands() -> None:
    # ENABLE UTF8=ACCEPT takes effect for the commands after it, even when
    # they came in the same chunk (the parser only parses what it returns).
    parser = Parser()
    parser.receive_data(b"a ENABLE UTF8=ACCEPT\r\nb SELECT &ZeVnLIqe-\r\n")
    assert isinstance(parser.next_event(), Command)
    parser.set_utf8(True)
    assert parser.next_event() == Command("b", "SELECT", c.Select("&ZeVnLIqe-"))


# -- raw lines (AUTHENTICATE, IDLE) ----------------------------------------------------------


def test_authenticate_exchange_and_idle_read_raw_lines() -> None:
    data = (
        b"A001 AUTHENTICATE GSSAPI\r\n"
        b"YIIB+wYJKoZIhvcSAQICAQBuggHqMIIB5qADAgEFoQMCAQ6iBw\r\n"
        b"A002 IDLE\r\n"
        b"done\r\n"
        b"A003 NOOP\r\n"
    )
    assert run(data) == [
        Command("A001", "AUTHENTICATE", c.Authenticate("GSSAPI")),
        RawLine(b"YIIB+wYJKoZIhvcSAQICAQBuggHqMIIB5qADAgEFoQMCAQ6iBw"),
        Command("A002", "IDLE", c.Idle()),
        RawLine(b"done"),
        Command("A003", "NOOP", c.Noop()),
    ]


def test_raw_line_is_not_parsed_and_may_hold_a_literal_marker() -> None:
    parser = Parser()
    parser.expect_line()
    parser.receive_data(b"* {5}\r\na NOOP\r\n")
    assert parser.next_event() == RawLine(b"* {5}")
    assert parser.next_event() == Command("a", "NOOP", c.Noop())


def test_raw_line_too_long() -> None:
    data = b"A001 AUTHENTICATE PLAIN\r\n" + b"A" * 200 + b"\r\nb NOOP\r\n"
    assert run(data, max_line=100) == [
        Command("A001", "AUTHENTICATE", c.Authenticate("PLAIN")),
        ParseError(None, "Line too long"),
        Command("b", "NOOP", c.Noop()),
    ]


# -- mailbox names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "name"),
    [
        ("~peter/mail/&ZeVnLIqe-/&U,BTFw-", "~peter/mail/日本語/台北"),  # rfc3501:5.1.3
        ("Tom &- Jerry", "Tom & Jerry"),
        ("&AOkA6QDp-t&AOk-", "ééété"),
        ("&2D3eAA-", "😀"),  # a surrogate pair
        ("&AAk-", "\t"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_mutf7_round_trip(wire: str, name: str) -> None:
    assert decode_mutf7(wire) == name
    assert encode_mutf7(name) == wire


@pytest.mark.parametrize(
    "wire",
    [
        "&Jjo",  # unterminated
        "&AGE-",  # "a": printable ASCII must stand for itself
        "&2D0-",  # a lone high surrogate
        "&AOl-",  # leftover bits set ("&AOk-" is é)
        "&Z-",  # impossible length
        "a&b/c-",  # "/" is not modified base64
        "é",  # 8-bit octets are not mUTF-7
        "tab\there",
    ],
)
def test_mutf7_invalid(wire: str) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(wire)


def test_mailbox_names() -> None:
    assert args_of(b"a SELECT &ZeVnLIqe-\r\n") == c.Select("日本語")
    assert args_of(b'a SELECT "InBoX"\r\n') == c.Select("INBOX")
    assert args_of(b"a SELECT inbox/Sub\r\n") == c.Select("inbox/Sub")
    assert args_of(b"a SELECT {5}\r\niNbOx\r\n") == c.Select("INBOX")
    assert args_of(b"a CREATE INBOXES\r\n") == c.Create("INBOXES")
    # 8-bit names cannot be mUTF-7: taken as UTF-8 (rfc9051 quoted strings).
    assert args_of('a CREATE "Entwürfe"\r\n'.encode()) == c.Create("Entwürfe")
    # A name that is not valid mUTF-7 is a name all the same, kept as sent
    # (rfc3501:5.1.3): the session answers NO, never BAD.
    for line, wanted in (
        (b"a DELETE &AGE-\r\n", c.Delete("&AGE-")),
        (b"a SELECT &Jjo\r\n", c.Select("&Jjo")),
        (b"a SELECT !#$&'+,-.\r\n", c.Select("!#$&'+,-.")),
    ):
        parsed = args_of(line)
        assert parsed == wanted
        assert isinstance(parsed.mailbox, UnencodedName)  # type: ignore[attr-defined]
    copy = args_of(b"a COPY 1 &AGE-\r\n")
    assert isinstance(copy.mailbox, UnencodedName)  # type: ignore[attr-defined]
    assert not isinstance(args_of(b"a SELECT &ZeVnLIqe-\r\n").mailbox, UnencodedName)  # type: ignore[attr-defined]


def test_utf8_accept_takes_names_as_they_are() -> None:
    assert args_of(b"a SELECT &ZeVnLIqe-\r\n", utf8=True) == c.Select("&ZeVnLIqe-")
    assert args_of(b'a RENAME "a&b" "\xc3\xa9"\r\n', utf8=True) == c.Rename("a&b", "é")
    assert args_of(b'a LIST "" "&*"\r\n', utf8=True) == c.List("", ("&*",))


def test_list_patterns_are_decoded_but_not_case_folded() -> None:
    assert args_of(b"a LIST &ZeVnLIqe-/ inbox*\r\n") == c.List("日本語/", ("inbox*",))
    assert args_of(b'a LSUB "" %/&ZeVnLIqe-\r\n') == c.Lsub("", "%/日本語")


# -- framing edge cases -----------------------------------------------------------------------


def test_eof_mid_command_and_after() -> None:
    assert run(b"a NOOP") == []  # no CRLF: never a command
    assert run(b"a LOGIN {5}\r\nab") == [CONT]
    parser = Parser()
    parser.receive_data(b"")
    parser.receive_data(b"a NOOP\r\n")  # nothing after EOF counts
    assert parser.next_event() == Eof()
    assert parser.next_event() == Eof()


def test_after_a_fatal_error_nothing_more_is_parsed() -> None:
    parser = Parser(max_literal=10)
    parser.set_authenticated(True)
    parser.receive_data(b"a APPEND x {11+}\r\n0123456789ab NOOP\r\n")
    assert parser.next_event() == ParseError(
        "a", "[TOOBIG] Literal of 11 octets is over the limit of 10", True
    )
    parser.receive_data(b"c NOOP\r\n")
    assert parser.next_event() == NeedData()
    parser.receive_data(b"")
    assert parser.next_event() == Eof()


def test_bare_lf_does_not_end_a_command() -> None:
    # rfc9051:2.2: lines end with CRLF; a LF alone is a CTL in the text.
    assert run(b"a NOOP\nb NOOP\r\n") == [
        ParseError("a", "Syntax error in NOOP: expected end of command")
    ]


def test_crlf_split_between_chunks() -> None:
    parser = Parser()
    parser.receive_data(b"a NOOP\r")
    assert parser.next_event() == NeedData()
    parser.receive_data(b"\nb NOOP\r\n")
    assert parser.next_event() == Command("a", "NOOP", c.Noop())
    assert parser.next_event() == Command("b", "NOOP", c.Noop())


# -- fuzz --------------------------------------------------------------------------------------

SEEDS = [
    b"a001 login mrc secret\r\n",
    b"a SELECT INBOX (QRESYNC (1 2 1:5 (1:2 3:4)))\r\n",
    b"a FETCH 1:* (FLAGS BODY.PEEK[1.HEADER.FIELDS (FROM)]<0.10>) (CHANGEDSINCE 3)\r\n",
    b'a UID SEARCH RETURN (MIN) CHARSET UTF-8 OR (FROM "x" SINCE 1-Feb-1994) NOT 1:5 TEXT {3}'
    b"\r\nabc\r\n",
    b"a STORE 1 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Seen)\r\n",
    b'a APPEND x (\\Seen) "17-Jul-1996 02:44:25 -0700" ~{3+}\r\na\x00b\r\n',
    b'a LIST (SUBSCRIBED) "" ("%" "&ZeVnLIqe-") RETURN (STATUS (MESSAGES))\r\n',
    b'a ID ("name" "x")\r\nb AUTHENTICATE PLAIN =\r\nc IDLE\r\nDONE\r\n',
    b'a SETQUOTA "" (STORAGE 5)\r\nb CREATE x (USE (\\Sent))\r\n',
]
_ALPHABET = b' ()[]<>{}+~*%$\\"\r\n\x00\xff0123456789:,.-AaZz'


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        pos = rng.randrange(len(out) + 1)
        if choice < 0.4 and out:
            out[min(pos, len(out) - 1)] = rng.choice(_ALPHABET)
        elif choice < 0.7:
            out[pos:pos] = bytes(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 4)))
        elif out:
            del out[pos : pos + rng.randint(1, 4)]
    return bytes(out)


def _drain(parser: Parser) -> list[Event]:
    """Events up to and including NeedData or Eof, as the session would take them."""
    events: list[Event] = []
    for _ in range(10_000):
        event = parser.next_event()
        events.append(event)
        if isinstance(event, NeedData | Eof):
            return events
        if isinstance(event, ParseError):
            assert not event.text.startswith("Internal"), event
            if event.fatal:
                assert isinstance(parser.next_event(), NeedData | Eof)
        if isinstance(event, Command) and (
            event.name == "IDLE"
            or (isinstance(event.args, c.Authenticate) and event.args.initial_response is None)
        ):
            parser.expect_line()
    raise AssertionError("parser does not settle")


def _drive(data: bytes, cuts: list[int], options: dict[str, Any], auth: bool) -> list[Event]:
    parser = Parser(**options)
    parser.set_authenticated(auth)
    events: list[Event] = []
    start = 0
    for end in [*cuts, len(data)]:
        if end == start:
            continue  # b"" would mean EOF
        parser.receive_data(data[start:end])
        start = end
        got = _drain(parser)
        assert isinstance(got[-1], NeedData), got
        events += got[:-1]
    parser.receive_data(b"")
    got = _drain(parser)
    assert isinstance(got[-1], Eof), got
    return events + got[:-1]


def test_fuzz_never_raises_and_always_settles() -> None:
    """Random and mutated input: next_event never raises, always comes back
    to NeedData (Eof at the end), and the chunking changes nothing."""
    rng = random.Random(9051)
    deadline = time.monotonic() + 2.0
    cases = 0
    while time.monotonic() < deadline:
        if rng.random() < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 120)))
        else:
            data = b"".join(_mutate(rng, rng.choice(SEEDS)) for _ in range(rng.randint(1, 3)))
        options: dict[str, Any] = {
            "max_line": rng.choice([40, 200, 65536]),
            "max_literal": rng.choice([8, 4096]),
            "max_depth": rng.choice([2, 32]),
            "literal_plus": rng.random() < 0.7,
        }
        auth = rng.random() < 0.5
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 8))) if data else []
        whole = _drive(data, [], options, auth)
        assert _drive(data, cuts, options, auth) == whole, (data, cuts)
        assert _drive(data, list(range(1, len(data))), options, auth) == whole, data
        cases += 1
    assert cases > 100
