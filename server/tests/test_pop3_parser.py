"""POP3 parser: transcripts whole and in every chunk size, errors, limits."""

from __future__ import annotations

import pytest

from estafeta.pop3.parser import Command, Eof, Error, NeedData, Parser, RawLine


def events(data: bytes, chunk: int | None = None, raw_after: int | None = None) -> list[object]:
    parser = Parser()
    out: list[object] = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    pieces.append(b"")  # EOF
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if isinstance(event, NeedData):
                break
            out.append(event)
            if raw_after is not None and len(out) == raw_after:
                parser.expect_line()
            if isinstance(event, Eof):
                return out
    return out


TRANSCRIPT = (
    b"CAPA\r\nUSER alice@example.test\r\nPASS secret with spaces \r\nSTAT\r\nLIST\r\nLIST 2\r\n"
    b"UIDL\r\nuidl 1\r\nRETR 1\r\nTOP 1 10\r\nDELE 1\r\nNOOP\r\nRSET\r\nSTLS\r\nUTF8\r\n"
    b"AUTH\r\nAUTH PLAIN AGEAYg==\r\nQUIT\r\n"
)
EXPECTED = [
    Command("CAPA", ()),
    Command("USER", ("alice@example.test",)),
    Command("PASS", ("secret with spaces ",)),
    Command("STAT", ()),
    Command("LIST", ()),
    Command("LIST", ("2",)),
    Command("UIDL", ()),
    Command("UIDL", ("1",)),
    Command("RETR", ("1",)),
    Command("TOP", ("1", "10")),
    Command("DELE", ("1",)),
    Command("NOOP", ()),
    Command("RSET", ()),
    Command("STLS", ()),
    Command("UTF8", ()),
    Command("AUTH", ()),
    Command("AUTH", ("PLAIN", "AGEAYg==")),
    Command("QUIT", ()),
    Eof(),
]


def test_rfc1939_transcript() -> None:
    assert events(TRANSCRIPT) == EXPECTED


@pytest.mark.parametrize("chunk", range(1, 40))
def test_same_events_in_any_chunk_size(chunk: int) -> None:
    assert events(TRANSCRIPT, chunk) == EXPECTED


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"FROB\r\n", "Unknown command 'FROB'"),
        (b"\r\n", "Empty command"),
        (b"RETR\r\n", "RETR takes 1 argument"),
        (b"TOP 1\r\n", "TOP takes 2 arguments"),
        (b"STAT 1\r\n", "STAT takes 0 arguments"),
        (b"LIST 1 2\r\n", "LIST takes 0 to 1 arguments"),
        (b"DELE  1\r\n", "Extra spaces in DELE"),
        (b"USER \xff\r\n", "Command is not UTF-8"),
        (b"USER a\x01b\r\n", "Control characters in command"),
        (b"USER " + b"a" * 300 + b"\r\n", "Line too long (rfc2449:4: 255 octets)"),
    ],
)
def test_errors_then_resync(line: bytes, error: str) -> None:
    for chunk in (None, 1, 7):
        assert events(line + b"NOOP\r\n", chunk) == [Error(error), Command("NOOP", ()), Eof()]


def test_sasl_line_may_be_long_and_raw() -> None:
    response = b"A" * 1000
    got = events(b"AUTH PLAIN\r\n" + response + b"\r\nQUIT\r\n", raw_after=1)
    assert got == [Command("AUTH", ("PLAIN",)), RawLine(response), Command("QUIT", ()), Eof()]


def test_bare_lf_does_not_end_a_command() -> None:
    got = events(b"NOOP\nQUIT\r\n")
    assert got == [Error("Control characters in command"), Eof()]


def test_unterminated_line_at_eof() -> None:
    assert events(b"QUIT") == [Eof()]
