"""Property tests of the ManageSieve parser (estafeta.managesieve.parser).

Invariants, for any bytes fed in any pieces:

* only commands of the table with arguments of the right kinds, SASL
  responses (after ``expect_response``), one-line error texts, and Eof:
  never an exception;
* the same events whatever the pieces;
* what it holds stays within its limits (the line limit, the literal limit,
  and the piece being fed): a refused literal is never buffered;
* what the writer produces as a string, the parser reads back as sent.

``managesieve_case(rng)`` is the driver of the long fuzz run (bench/fuzz.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from _fuzz import Crash, cuts, fuzz_input, mutated, random_cuts, split
from estafeta.managesieve import parser as p

CORPUS: list[bytes] = [
    b"CAPABILITY\r\n",
    b"NOOP\r\n",
    b'NOOP "STARTTLS-SYNC-42"\r\n',
    b"LOGOUT\r\n",
    b"STARTTLS\r\n",
    b'AUTHENTICATE "PLAIN" "AGFsaWNlAHNlY3JldA=="\r\n',
    b'Authenticate "PLAIN" {20+}\r\nAGFsaWNlAHNlY3JldA==\r\n',
    b'AUTHENTICATE "PLAIN"\r\n"AGFsaWNlAHNlY3JldA=="\r\n',
    b'AUTHENTICATE "PLAIN"\r\n{20+}\r\nAGFsaWNlAHNlY3JldA==\r\n',
    b'AUTHENTICATE "PLAIN"\r\n"*"\r\n',
    b'HAVESPACE "myscript" 999999\r\n',
    b'Putscript "foo" {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n',
    b'PUTSCRIPT "mysievescript" {110+}\r\nrequire ["fileinto"];\r\n\r\n'
    b'if envelope :contains "to" "tmartin+sent" {\r\n  fileinto "INBOX.sent";\r\n}\r\n',
    b'PUTSCRIPT "a" {5}\r\nkeep;\r\n',
    b"LISTSCRIPTS\r\n",
    b'SETACTIVE "vacation"\r\nSETACTIVE ""\r\n',
    b'GETSCRIPT "myscript"\r\n',
    b'DELETESCRIPT "foo"\r\n',
    b'RENAMESCRIPT "foo" "bar"\r\n',
    b"RENAMESCRIPT {3+}\r\nfoo {3+}\r\nbar\r\n",
    b"CHECKSCRIPT {6+}\r\nkeep;\n\r\n",
    b"UNAUTHENTICATE\r\n",
    b'NOOP "\\"\\\\\xc3\xa9"\r\n',
]
TOKENS: list[bytes] = [
    b" ", b'"', b'\\"', b"\\", b"{", b"}", b"+}", b"{0+}\r\n", b"{5+}\r\n", b"{5}\r\n",
    b"{1001+}\r\n", b"{70000+}\r\n", b"{4294967296+}\r\n", b"{99999999999999999999999+}\r\n",
    b"\r\n", b"\r", b"\n", b"\x00", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"(", b")", b"*",
    b"0", b"007", b"4294967296", b"ACTIVE", b"NOOP", b"PUTSCRIPT ", b'"x"', b"x" * 1100,
]  # fmt: skip

_ONE_LINE = re.compile(r"[^\r\n]+")
MAX_LINE_OPTIONS = (p.MAX_LINE, 64, 300)


def _event_ok(event: p.Event) -> None:
    if isinstance(event, p.ParseError):
        if not _ONE_LINE.fullmatch(event.text):
            raise Crash(f"error text is not one line: {event!r}")
        if event.code not in ("", "QUOTA/MAXSIZE"):
            raise Crash(f"unexpected code in {event!r}")
    elif isinstance(event, p.Command):
        spec = p.COMMANDS.get(event.name)
        if spec is None:
            raise Crash(f"unknown command {event!r}")
        if not len(spec.args) - spec.optional <= len(event.args) <= len(spec.args):
            raise Crash(f"wrong argument count in {event!r}")
        for arg, kind in zip(event.args, spec.args, strict=False):
            if (kind == p.NUMBER) != isinstance(arg, int):
                raise Crash(f"wrong argument kind in {event!r}")
            if isinstance(arg, int) and not 0 <= arg <= p.MAX_NUMBER:
                raise Crash(f"number out of range in {event!r}")
    elif not isinstance(event, p.Response | p.Eof):
        raise Crash(f"unexpected event {event!r}")


def managesieve_events(
    pieces: Iterable[bytes],
    *,
    authenticated: bool = True,
    max_literal: int = 1000,
    max_line: int = p.MAX_LINE,
) -> list[p.Event]:
    """Every event for ``pieces`` then EOF, driven as the session drives it:
    a SASL response line after AUTHENTICATE without an initial response,
    authenticated after AUTHENTICATE (as if it succeeded), not after
    UNAUTHENTICATE."""
    parser = p.Parser(max_literal=max_literal, max_line=max_line)
    parser.set_authenticated(authenticated)
    events: list[p.Event] = []
    for piece in [*pieces, b""]:
        parser.receive_data(piece)
        # A line, the literals of one command, and what was just fed.
        if parser.buffered > max_line + max(max_literal, p.UNAUTHENTICATED_LITERAL) + len(piece):
            raise Crash(f"parser holds {parser.buffered} octets")
        while True:
            event = parser.next_event()
            if isinstance(event, p.NeedData):
                break
            _event_ok(event)
            events.append(event)
            if isinstance(event, p.Eof):
                return events
            if isinstance(event, p.ParseError) and event.fatal:
                return events  # the session closes the connection
            if isinstance(event, p.Command):
                if event.name == "AUTHENTICATE":
                    if len(event.args) == 1:
                        parser.expect_response()
                    else:
                        parser.set_authenticated(True)
                elif event.name == "UNAUTHENTICATE":
                    parser.set_authenticated(False)
            elif isinstance(event, p.Response):
                parser.set_authenticated(True)
    raise Crash("no Eof at the end")  # pragma: no cover


def same_in_pieces(data: bytes, pieces: list[int], **options: Any) -> None:
    whole = managesieve_events([data], **options)
    if managesieve_events(split(data, pieces), **options) != whole:
        raise Crash("chunking changes the events")


@given(st.binary(max_size=600), cuts)
def test_random_bytes(data: bytes, pieces: list[int]) -> None:
    same_in_pieces(data, pieces)


@given(mutated(CORPUS, TOKENS), cuts, st.booleans(), st.sampled_from(MAX_LINE_OPTIONS))
def test_mutated_commands(data: bytes, pieces: list[int], auth: bool, max_line: int) -> None:
    same_in_pieces(data, pieces, authenticated=auth, max_line=max_line)


@given(st.randoms(use_true_random=False))
def test_random_mutations(rng: Any) -> None:
    managesieve_case(rng)[2]()


@given(mutated(CORPUS, TOKENS))
def test_one_byte_at_a_time(data: bytes) -> None:
    same_in_pieces(data, list(range(len(data))))


@given(st.binary(max_size=2000))
def test_strings_read_back(value: bytes) -> None:
    # rfc5804:4: a string the server writes is one the parser reads.
    data = b"NOOP " + p.string(value) + b"\r\n"
    events = managesieve_events([data], max_literal=4000)
    assert events == [p.Command("NOOP", (value,)), p.Eof()]


@given(st.text(max_size=300), st.sampled_from(["", "TAG", "QUOTA/MAXSIZE"]))
def test_responses_are_one_completion(text: str, code: str) -> None:
    # A completion ends with CRLF and holds CRLF only inside a literal.
    reply = p.no(text, code, "x\r\ny" if code == "TAG" else None)
    assert reply.endswith(b"\r\n")
    body = re.sub(rb"\{(\d+)\}\r\n", b"", reply[:-2])
    literal_octets = sum(int(n) for n in re.findall(rb"\{(\d+)\}\r\n", reply))
    assert body.count(b"\r\n") <= literal_octets


def managesieve_case(rng: random.Random) -> tuple[bytes, str, Any]:
    """One long-run case: a mutated input, options, pieces; the check to run."""
    data = fuzz_input(rng, CORPUS, TOKENS)
    pieces = random_cuts(rng, len(data)) if rng.random() < 0.25 else []
    options: dict[str, Any] = {"authenticated": rng.random() < 0.7}
    if rng.random() < 0.3:
        options["max_line"] = rng.choice(MAX_LINE_OPTIONS)
    if rng.random() < 0.3:
        options["max_literal"] = rng.randint(0, 5000)

    def run() -> None:
        whole = managesieve_events([data], **options)
        if pieces and managesieve_events(split(data, pieces), **options) != whole:
            raise Crash(f"chunking changes the events: {whole!r}")

    return data, f"cuts={pieces} options={options}", run
