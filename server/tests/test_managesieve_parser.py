"""The sans-IO ManageSieve parser and writer (rfc5804:4), as transcripts: every
transcript is fed whole and one byte at a time, and both must give the
same events."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from estafeta.managesieve import parser as p
from estafeta.managesieve.parser import (
    MAX_LINE,
    UNAUTHENTICATED_LITERAL,
    Command,
    Eof,
    Event,
    NeedData,
    ParseError,
    Parser,
    Response,
)

MAX_LITERAL = 1000


def feed(
    pieces: Iterable[bytes],
    *,
    authenticated: bool = True,
    responses: Sequence[int] = (),
    max_literal: int = MAX_LITERAL,
) -> tuple[list[Event], int]:
    """Events of the pieces, then Eof; and the most octets the parser held.
    ``responses``: after which events (by index) the next line is a SASL
    response."""
    parser = Parser(max_literal=max_literal)
    parser.set_authenticated(authenticated)
    events: list[Event] = []
    most = 0
    for piece in [*pieces, b""]:
        parser.receive_data(piece)
        most = max(most, parser.buffered)
        while True:
            event = parser.next_event()
            if isinstance(event, NeedData):
                break
            events.append(event)
            if len(events) - 1 in responses:
                parser.expect_response()
            if isinstance(event, Eof):
                return events, most
    raise AssertionError("no Eof")  # pragma: no cover


def transcript(data: bytes, **options: object) -> list[Event]:
    """The events of ``data``, the same fed whole and byte by byte."""
    whole, _ = feed([data], **options)  # type: ignore[arg-type]
    bytewise, _ = feed([data[i : i + 1] for i in range(len(data))], **options)  # type: ignore[arg-type]
    assert whole == bytewise
    assert isinstance(whole[-1], Eof)
    return whole[:-1]


def test_rfc5804_examples() -> None:
    data = (
        b'Putscript "foo" {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n'  # rfc5804:2.6
        b'Putscript "mysievescript" {0+}\r\n\r\n'
        b'HAVESPACE "myscript" 999999\r\n'  # rfc5804:2.5
        b"Listscripts\r\n"  # rfc5804:2.7
        b'Setactive ""\r\n'  # rfc5804:2.8
        b'Getscript "myscript"\r\n'  # rfc5804:2.9
        b'Deletescript "foo"\r\n'  # rfc5804:2.10
        b'Renamescript "foo" "bar"\r\n'  # rfc5804:2.11
        b"CheckScript {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n"  # rfc5804:2.12
        b"NOOP\r\n"
        b'NOOP "STARTTLS-SYNC-42"\r\n'  # rfc5804:2.13
        b"UNAUTHENTICATE\r\nCAPABILITY\r\nStartTls\r\nLogout\r\n"
    )
    assert transcript(data) == [
        Command("PUTSCRIPT", (b"foo", b"#comment\r\nInvalidSieveCommand\r\n")),
        Command("PUTSCRIPT", (b"mysievescript", b"")),
        Command("HAVESPACE", (b"myscript", 999999)),
        Command("LISTSCRIPTS", ()),
        Command("SETACTIVE", (b"",)),
        Command("GETSCRIPT", (b"myscript",)),
        Command("DELETESCRIPT", (b"foo",)),
        Command("RENAMESCRIPT", (b"foo", b"bar")),
        Command("CHECKSCRIPT", (b"#comment\r\nInvalidSieveCommand\r\n",)),
        Command("NOOP", ()),
        Command("NOOP", (b"STARTTLS-SYNC-42",)),
        Command("UNAUTHENTICATE", ()),
        Command("CAPABILITY", ()),
        Command("STARTTLS", ()),
        Command("LOGOUT", ()),
    ]


def test_authenticate_forms() -> None:
    # rfc5804:2.1: initial response quoted or literal; or continuation lines.
    data = (
        b'AUTHENTICATE "PLAIN" "AGFAYgBj"\r\n'
        b'Authenticate "PLAIN" {8+}\r\nAGFAYgBj\r\n'
        b'AUTHENTICATE "PLAIN"\r\n'
        b'"AGFAYgBj"\r\n'
        b'AUTHENTICATE "PLAIN"\r\n'
        b"{8+}\r\nAGFAYgBj\r\n"
        b'AUTHENTICATE "PLAIN"\r\n'
        b'"*"\r\n'
        b'AUTHENTICATE "PLAIN"\r\n'
        b'"a" "b"\r\n'
        b'AUTHENTICATE "PLAIN"\r\n'
        b"atom\r\n"
        b'AUTHENTICATE "PLAIN"\r\n'
        b"\r\n"
    )
    events = transcript(data, authenticated=False, responses=(2, 4, 6, 8, 10, 12))
    assert events == [
        Command("AUTHENTICATE", (b"PLAIN", b"AGFAYgBj")),
        Command("AUTHENTICATE", (b"PLAIN", b"AGFAYgBj")),
        Command("AUTHENTICATE", (b"PLAIN",)),
        Response(b"AGFAYgBj"),
        Command("AUTHENTICATE", (b"PLAIN",)),
        Response(b"AGFAYgBj"),
        Command("AUTHENTICATE", (b"PLAIN",)),
        Response(b"*"),
        Command("AUTHENTICATE", (b"PLAIN",)),
        ParseError("Expected one string", "AUTHENTICATE"),
        Command("AUTHENTICATE", (b"PLAIN",)),
        ParseError("Expected a string", "AUTHENTICATE"),
        Command("AUTHENTICATE", (b"PLAIN",)),
        ParseError("Expected a string", "AUTHENTICATE"),
    ]


def test_synchronizing_literal_is_read_like_the_other() -> None:
    # rfc5804:4 has no continuation: {n} octets follow at once, as for {n+}.
    data = b'PUTSCRIPT "a" {5}\r\nkeep;\r\nNOOP\r\n'
    assert transcript(data) == [Command("PUTSCRIPT", (b"a", b"keep;")), Command("NOOP", ())]


def test_quoted_strings() -> None:
    data = (
        b'NOOP "a\\"b\\\\c"\r\n'
        b'NOOP "\xc3\xa9t\xc3\xa9"\r\n'
        b'NOOP "bad \\n escape"\r\n'
        b'NOOP "\xff"\r\n'
        b'NOOP "unterminated\r\n'
        b'NOOP "nul\x00"\r\n'
        b'NOOP "' + b"x" * 1024 + b'"\r\n'
        b'NOOP "' + b"x" * 1025 + b'"\r\n'
        b'NOOP ""\r\n'
    )
    assert transcript(data) == [
        Command("NOOP", (b'a"b\\c',)),
        Command("NOOP", ("été".encode(),)),
        ParseError("Unterminated or invalid quoted string", "NOOP"),
        ParseError("Quoted string is not UTF-8", "NOOP"),
        ParseError("Unterminated or invalid quoted string", "NOOP"),
        ParseError("Unterminated or invalid quoted string", "NOOP"),
        Command("NOOP", (b"x" * 1024,)),
        ParseError("Quoted string too long (at most 1024 octets)", "NOOP"),
        Command("NOOP", (b"",)),
    ]


def test_numbers() -> None:
    data = (
        b'HAVESPACE "a" 0\r\n'
        b'HAVESPACE "a" 4294967295\r\n'
        b'HAVESPACE "a" 4294967296\r\n'
        b'HAVESPACE "a" 007\r\n'
        b'HAVESPACE "a" 99999999999999999999999\r\n'
        b'HAVESPACE "a" 12x\r\n'
        b'HAVESPACE "a" "12"\r\n'
        b"HAVESPACE 12 12\r\n"
    )
    assert transcript(data) == [
        Command("HAVESPACE", (b"a", 0)),
        Command("HAVESPACE", (b"a", 4294967295)),
        ParseError("Number too large", "HAVESPACE"),
        ParseError("Invalid number", "HAVESPACE"),
        ParseError("Invalid number", "HAVESPACE"),
        ParseError("Expected a space between arguments", "HAVESPACE"),
        ParseError("HAVESPACE: expected a number", "HAVESPACE"),
        ParseError("HAVESPACE: expected a string", "HAVESPACE"),
    ]


def test_argument_counts_and_syntax() -> None:
    data = (
        b"GETSCRIPT\r\n"
        b'NOOP "a" "b"\r\n'
        b'LOGOUT "now"\r\n'
        b"SETACTIVE foo\r\n"
        b'NOOP  "two spaces"\r\n'
        b'NOOP "x" \r\n'
        b"NOOP(\r\n"
        b"\r\n"
        b"*\r\n"
        b"XYZZY\r\n"
        b'PUTSCRIPT "a" {5+} "b"\r\n'
        b'RENAMESCRIPT "a"\r\n'
        b"NOOP bare\nlf\r\n"
    )
    assert transcript(data) == [
        ParseError("GETSCRIPT takes 1 argument", "GETSCRIPT"),
        ParseError("NOOP takes 0 to 1 argument", "NOOP"),
        ParseError("LOGOUT takes 0 arguments", "LOGOUT"),
        ParseError("Expected a string", "SETACTIVE"),
        ParseError("Expected a string", "NOOP"),
        ParseError("Expected an argument after the space", "NOOP"),
        ParseError("Expected a space between arguments", "NOOP"),
        ParseError("Empty command"),
        ParseError("Unknown command *", "*"),
        ParseError("Unknown command XYZZY", "XYZZY"),
        ParseError("Invalid literal (a literal ends its line: {n+} CRLF)", "PUTSCRIPT"),
        ParseError("RENAMESCRIPT takes 2 arguments", "RENAMESCRIPT"),
        ParseError("Expected a string", "NOOP"),
    ]


def test_literal_of_a_bad_command_is_never_read_as_commands() -> None:
    # The script text looks like commands; it must be skipped, not run.
    script = b'DELETESCRIPT "victim"\r\nLOGOUT\r\n'
    marker = b"{%d+}\r\n" % len(script)
    data = (
        b"XYZZY " + marker + script + b"\r\n"
        b'PUTSCRIPT "a" "b" ' + marker + script + b"\r\n"
        b"NOOP {bad} " + marker + script + b"\r\n"
        b'PUTSCRIPT "a" ' + marker + script + b' "extra"\r\n'
        b"NOOP\r\n"
    )
    assert transcript(data) == [
        ParseError("Unknown command XYZZY", "XYZZY"),
        ParseError("PUTSCRIPT takes 2 arguments", "PUTSCRIPT"),
        ParseError("Invalid literal (a literal ends its line: {n+} CRLF)", "NOOP"),
        ParseError("PUTSCRIPT takes 2 arguments", "PUTSCRIPT"),
        Command("NOOP", ()),
    ]


def test_literal_limits() -> None:
    fits = b"x" * MAX_LITERAL
    data = (
        b'PUTSCRIPT "a" {1000+}\r\n' + fits + b"\r\n"
        b'PUTSCRIPT "a" {1001+}\r\n' + fits + b"y\r\n"
        # Two literals may hold max_literal in all.
        b"RENAMESCRIPT {600+}\r\n" + b"n" * 600 + b" {401+}\r\n" + b"m" * 401 + b"\r\n"
        b"NOOP\r\n"
    )
    assert transcript(data) == [
        Command("PUTSCRIPT", (b"a", fits)),
        ParseError(
            "Literal too large (1001 octets, at most 1000 here)", "PUTSCRIPT", "QUOTA/MAXSIZE"
        ),
        ParseError(
            "Literal too large (401 octets, at most 400 here)", "RENAMESCRIPT", "QUOTA/MAXSIZE"
        ),
        Command("NOOP", ()),
    ]


def test_refused_literal_is_dropped_unbuffered() -> None:
    size = max(p.MIN_SKIP, 16 * MAX_LITERAL)  # the most that is skipped
    head = b'PUTSCRIPT "big" {%d+}\r\n' % size
    chunks = [head] + [b"z" * 4096] * (size // 4096) + [b"z" * (size % 4096) + b"\r\nNOOP\r\n"]
    events, most = feed(chunks)
    assert events == [
        ParseError(
            f"Literal too large ({size} octets, at most {MAX_LITERAL} here)",
            "PUTSCRIPT",
            "QUOTA/MAXSIZE",
        ),
        Command("NOOP", ()),
        Eof(),
    ]
    assert most <= len(head) + 4096


def test_literal_beyond_what_can_be_skipped_is_fatal() -> None:
    size = max(p.MIN_SKIP, 16 * MAX_LITERAL) + 1
    events, _ = feed([b'PUTSCRIPT "big" {%d+}\r\nzzz' % size])
    assert events == [
        ParseError(
            f"Literal too large ({size} octets, at most {MAX_LITERAL} here)",
            "PUTSCRIPT",
            "QUOTA/MAXSIZE",
            fatal=True,
        ),
        Eof(),
    ]
    events, _ = feed([b"NOOP {99999999999999999999+}\r\n"])
    assert isinstance(events[0], ParseError) and events[0].fatal


def test_smaller_literals_before_authentication() -> None:
    sasl = b"x" * UNAUTHENTICATED_LITERAL
    data = (
        b'AUTHENTICATE "PLAIN" {%d+}\r\n' % len(sasl) + sasl + b"\r\n"
        b'AUTHENTICATE "PLAIN" {%d+}\r\n' % (len(sasl) + 1) + sasl + b"x\r\n"
    )
    limit = UNAUTHENTICATED_LITERAL
    assert transcript(data, authenticated=False, max_literal=100_000) == [
        Command("AUTHENTICATE", (b"PLAIN", sasl)),
        ParseError(
            f"Literal too large ({limit + 1} octets, at most {limit} here)",
            "AUTHENTICATE",
            "QUOTA/MAXSIZE",
        ),
    ]


def test_long_lines() -> None:
    fits = b'NOOP "' + b"x" * 1000 + b'"'
    too_long = b"NOOP " + b"x" * MAX_LINE
    script = b"LOGOUT\r\n"
    data = (
        fits + b"\r\n"
        + too_long + b"\r\n"
        + too_long + b" {8+}\r\n" + script + b"\r\n"
        + b"NOOP\r\n"
    )  # fmt: skip
    error = ParseError(f"Line too long (at most {MAX_LINE} octets)")
    events, most = feed([data[i : i + 100] for i in range(0, len(data), 100)])
    assert events == [*transcript(data), Eof()]
    assert events == [Command("NOOP", (b"x" * 1000,)), error, error, Command("NOOP", ()), Eof()]
    assert most <= MAX_LINE + 100
    # Many lines of a command add up: literals do not count, the lines do.
    lines = b'NOOP {1+}\r\nx "' + b"y" * 900 + b'"\r\n'
    assert transcript(lines) == [ParseError("NOOP takes 0 to 1 argument", "NOOP")]
    many = b"RENAMESCRIPT" + b" {1+}\r\nx" * (MAX_LINE // 4) + b"\r\n"
    assert transcript(many, max_literal=100_000) == [
        ParseError(f"Line too long (at most {MAX_LINE} octets)", "RENAMESCRIPT")
    ]


def test_end_of_stream() -> None:
    assert transcript(b"") == []
    assert transcript(b"NOOP") == []
    assert transcript(b'PUTSCRIPT "a" {10+}\r\nabc') == []
    assert transcript(b"NOOP\r\nNOOP\r") == [Command("NOOP", ())]
    # A lone LF does not end a line (rfc5804:1.1: lines end with CRLF).
    assert transcript(b"NOOP\nNOOP\r\n") == [
        ParseError("Expected a space between arguments", "NOOP")
    ]


@pytest.mark.parametrize(
    "value",
    [b"", b"plain", b'q"uo\\te', "ünï".encode(), b"a\r\nb", b"\x00", b"\xff\xfe", b"x" * 1025],
)
def test_strings_written_read_back(value: bytes) -> None:
    # What the writer produces, the parser reads (s2c {n} is accepted too).
    written = p.string(value)
    quoted = written.startswith(b'"')
    assert quoted == (value in (b"", b"plain", b'q"uo\\te', "ünï".encode()))
    events = transcript(b"NOOP " + written + b"\r\n", max_literal=10_000)
    assert events == [Command("NOOP", (value,))]


def test_responses() -> None:
    assert p.ok() == b"OK\r\n"
    assert p.ok("Done", "TAG", b"STARTTLS-SYNC-42") == b'OK (TAG "STARTTLS-SYNC-42") "Done"\r\n'
    assert p.ok("x", "TAG", b"a\r\nb") == b'OK (TAG {4}\r\na\r\nb) "x"\r\n'
    assert p.no("Quota exceeded", "QUOTA/MAXSIZE") == b'NO (QUOTA/MAXSIZE) "Quota exceeded"\r\n'
    assert p.no("There is no script by that name", "NONEXISTENT") == (
        b'NO (NONEXISTENT) "There is no script by that name"\r\n'
    )
    assert p.no("line 1\r\nline 2") == b"NO {14}\r\nline 1\r\nline 2\r\n"
    assert p.bye("Too many", "TRYLATER") == b'BYE (TRYLATER) "Too many"\r\n'
    assert p.capability_lines([("IMPLEMENTATION", "estafeta"), ("STARTTLS", None)]) == (
        b'"IMPLEMENTATION" "estafeta"\r\n"STARTTLS"\r\n'
    )
    assert p.script_lines([("a", False), ('cle"ver', True), ("x\r\ny", False)]) == (
        b'"a"\r\n"cle\\"ver" ACTIVE\r\n{4}\r\nx\r\ny\r\n'
    )
    assert p.literal(b"abc") == b"{3}\r\nabc"


def test_command_table_matches_the_rfc() -> None:
    # rfc5804:4 command-any / command-auth / command-nonauth.
    anywhere = {
        n for n, s in p.COMMANDS.items() if s.states == {p.AUTHENTICATED, p.NOT_AUTHENTICATED}
    }
    before = {n for n, s in p.COMMANDS.items() if s.states == {p.NOT_AUTHENTICATED}}
    after = {n for n, s in p.COMMANDS.items() if s.states == {p.AUTHENTICATED}}
    assert anywhere == {"CAPABILITY", "LOGOUT", "NOOP"}
    assert before == {"AUTHENTICATE", "STARTTLS"}
    assert after == {
        "GETSCRIPT", "SETACTIVE", "LISTSCRIPTS", "DELETESCRIPT", "PUTSCRIPT", "CHECKSCRIPT",
        "HAVESPACE", "RENAMESCRIPT", "UNAUTHENTICATE",
    }  # fmt: skip
