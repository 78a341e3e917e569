"""Sans-IO ManageSieve (rfc5804): client commands in, server responses out.

Bytes go in with ``Parser.receive_data``; events come out of
``Parser.next_event``: a ``Command``, a ``Response`` (a SASL client response,
after ``expect_response``), a ``ParseError`` to answer with NO (or, when
``fatal``, BYE and a close), ``NeedData`` or ``Eof``. The parser never does
IO and never raises for anything a client sends. The same module writes the
server's side (``ok``, ``no``, ``bye``, ``string``, ``capability_lines``...)
and holds the command table (``COMMANDS``: arguments and the states a
command is valid in), so the session assembles no protocol bytes by hand.

Framing (rfc5804:1.1, 4): a command is a line ending in CRLF, unless the line
ends in a literal announcement ``{n+}``: then n octets follow verbatim and the
command goes on after them (with " " and more arguments, or with CRLF).

* ``{n}`` is the server-to-client form (literal-s2c). rfc5804 has no
  continuation response, so a server cannot answer a synchronizing literal
  and a client cannot wait for one: its n octets follow at once either way.
  A server that refused ``{n}`` would still have to skip those octets (or
  read a script's text as commands), so it is taken exactly as ``{n+}``
  (Dovecot and Cyrus do the same).
* Limits live here. ``max_line`` bounds a command's text outside its
  literals (an over-long line is discarded as it arrives, never buffered);
  the literals of one command may hold ``max_literal`` octets in all
  (``UNAUTHENTICATED_LITERAL`` before AUTHENTICATE). A literal over the
  limit is refused before any of it is buffered: its octets are read and
  dropped (up to ``max_skip``: the answer is then NO (QUOTA/MAXSIZE) and the
  stream stays in step) or, beyond, the error is fatal (BYE, close).
* A command with a syntax error is framed to its end all the same (its
  literals skipped) before the error is reported, so nothing a client sends
  inside a literal is ever read as a command.
* A command is only framed when ``next_event`` reaches it, so the state a
  session sets after a command (``set_authenticated``, ``expect_response``)
  applies to the commands pipelined after it.

Syntax (rfc5804:4): command names are atoms, case-insensitive; arguments
are strings (quoted: at most 1024 octets, UTF-8, only ``\\"`` and ``\\\\``
escaped; or literal: any octets) and numbers (32-bit, no leading zeros).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# -- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class NeedData:
    """Feed more bytes with ``receive_data``."""


@dataclass(frozen=True)
class Eof:
    """The client closed its side; nothing complete is left."""


@dataclass(frozen=True)
class Command:
    name: str  # upper case, a key of COMMANDS
    args: tuple[bytes | int, ...]  # strings as octets, numbers as int (as COMMANDS says)


@dataclass(frozen=True)
class Response:
    """A SASL client response (rfc5804:2.1), the string's octets."""

    value: bytes


@dataclass(frozen=True)
class ParseError:
    """Answer ``NO (code) text``; ``command`` is the command's name when
    known. When ``fatal`` the stream cannot be followed: BYE and close."""

    text: str
    command: str = ""
    code: str = ""
    fatal: bool = False


Event = NeedData | Eof | Command | Response | ParseError

# -- the command table (rfc5804:2, 4) -----------------------------------------------

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
STRING = "string"
NUMBER = "number"


@dataclass(frozen=True)
class Spec:
    args: tuple[str, ...]  # STRING / NUMBER, in order
    optional: int  # how many of the last ones may be left out
    states: frozenset[str]  # where the command is valid


_ANY = frozenset({NOT_AUTHENTICATED, AUTHENTICATED})  # rfc5804:4 command-any
_NONAUTH = frozenset({NOT_AUTHENTICATED})  # command-nonauth
_AUTH = frozenset({AUTHENTICATED})  # command-auth

COMMANDS: dict[str, Spec] = {
    "AUTHENTICATE": Spec((STRING, STRING), 1, _NONAUTH),  # rfc5804:2.1
    "STARTTLS": Spec((), 0, _NONAUTH),  # rfc5804:2.2
    "LOGOUT": Spec((), 0, _ANY),  # rfc5804:2.3
    "CAPABILITY": Spec((), 0, _ANY),  # rfc5804:2.4
    "HAVESPACE": Spec((STRING, NUMBER), 0, _AUTH),  # rfc5804:2.5
    "PUTSCRIPT": Spec((STRING, STRING), 0, _AUTH),  # rfc5804:2.6
    "LISTSCRIPTS": Spec((), 0, _AUTH),  # rfc5804:2.7
    "SETACTIVE": Spec((STRING,), 0, _AUTH),  # rfc5804:2.8
    "GETSCRIPT": Spec((STRING,), 0, _AUTH),  # rfc5804:2.9
    "DELETESCRIPT": Spec((STRING,), 0, _AUTH),  # rfc5804:2.10
    "RENAMESCRIPT": Spec((STRING, STRING), 0, _AUTH),  # rfc5804:2.11
    "CHECKSCRIPT": Spec((STRING,), 0, _AUTH),  # rfc5804:2.12
    "NOOP": Spec((STRING,), 1, _ANY),  # rfc5804:2.13
    "UNAUTHENTICATE": Spec((), 0, _AUTH),  # rfc5804:2.14.1
}

# -- limits ---------------------------------------------------------------------------

MAX_LINE = 8192  # a command's octets outside its literals, CRLFs included
MAX_ATOM = 1024  # rfc5804:4 atom = 1*1024ATOM-CHAR
MAX_QUOTED = 1024  # rfc5804:4 quoted: "limited to 1024 octets between the <">s"
MAX_NUMBER = 2**32 - 1  # rfc5804:4 number: 32-bit unsigned
UNAUTHENTICATED_LITERAL = 8192  # before AUTHENTICATE: a SASL PLAIN response fits
MIN_SKIP = 64 * 1024  # a refused literal of at most max(this, 16 x max_literal) is skipped
_TAIL = 32  # octets kept of a line being discarded, to see its literal marker

# rfc5804:4 ATOM-CHAR: any CHAR except "(" ")" "{" SP CTL DQUOTE "\"
_ATOM_RE = re.compile(rb"[!#-'*-\[\]-z|-~]+")
_NUMBER_RE = re.compile(rb"0|[1-9][0-9]*")
_LITERAL_RE = re.compile(rb"\{([0-9]{1,20})(\+?)\}\Z")
# rfc5804:4 QUOTED-CHAR = SAFE-UTF8-CHAR / "\" QUOTED-SPECIALS; SAFE-CHAR
# excludes NUL, CR, LF, DQUOTE and "\".
_QUOTED_RE = re.compile(rb'"((?:[^"\\\x00\r\n]|\\["\\])*)"')


class _Syntax(Exception):
    pass


class _Command:
    """A command being framed: what its lines and literals gave so far."""

    def __init__(self, response: bool) -> None:
        self.response = response  # a SASL response line, not a command
        self.name = ""
        self.items: list[bytes | int] = []
        self.error = ""
        self.code = ""
        self.line_octets = 0
        self.literal_octets = 0
        self.segments = 0
        self.discarding = False  # inside an over-long line, up to its CRLF
        self.tail = b""  # the last octets of a discarded line

    def fail(self, text: str, code: str = "") -> None:
        if not self.error:
            self.error, self.code = text, code


class Parser:
    def __init__(self, max_literal: int = 64 * 1024, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._authenticated_literal = max_literal
        self.max_line = max_line
        self.max_literal = UNAUTHENTICATED_LITERAL
        self._response = False
        self._command: _Command | None = None
        self._literal: int | None = None  # octets of the literal being read
        self._skip = 0  # octets of a refused literal still to drop
        self._scanned = 0  # octets of the buffer known to hold no CRLF

    @property
    def buffered(self) -> int:
        """Octets held, not yet consumed (a refused literal is never held)."""
        return len(self._buffer)

    @property
    def max_skip(self) -> int:
        return max(MIN_SKIP, 16 * self.max_literal)

    def receive_data(self, data: bytes) -> None:
        """More octets from the client; ``b""`` means the client closed."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def set_authenticated(self, authenticated: bool) -> None:
        """Literals may be as large as ``max_literal`` once authenticated."""
        self.max_literal = self._authenticated_literal if authenticated else UNAUTHENTICATED_LITERAL

    def expect_response(self) -> None:
        """The next line is a SASL client response (one string), not a command."""
        self._response = True

    def next_event(self) -> Event:
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._scanned = 0
                self._skip -= dropped
                if self._skip:
                    return Eof() if self._eof else NeedData()
                continue
            command = self._command
            if command is not None and self._literal is not None:
                if len(self._buffer) < self._literal:
                    return Eof() if self._eof else NeedData()
                command.items.append(bytes(self._buffer[: self._literal]))
                del self._buffer[: self._literal]
                self._scanned = 0
                self._literal = None
                continue
            end = self._buffer.find(b"\r\n", self._scanned)
            if end < 0:
                self._scanned = max(0, len(self._buffer) - 1)
                return self._partial_line()
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._scanned = 0
            event = self._line(line)
            if event is not None:
                return event

    def _partial_line(self) -> Event:
        """No CRLF in the buffer: wait, or start discarding an over-long line."""
        command = self._command
        used = command.line_octets if command is not None else 0
        if command is None or not command.discarding:
            if used + len(self._buffer) <= self.max_line:
                return Eof() if self._eof else NeedData()
            if command is None:
                command = self._command = _Command(self._take_response())
            command.fail(f"Line too long (at most {self.max_line} octets)")
            command.discarding = True
        # Drop what came, keeping a tail (to see a literal marker at the end
        # of the line) and a final CR (the first half of a split CRLF).
        keep = len(self._buffer) - (1 if self._buffer.endswith(b"\r") else 0)
        command.tail = (command.tail + bytes(self._buffer[:keep]))[-_TAIL:]
        del self._buffer[:keep]
        self._scanned = 0
        if self._eof:
            self._command = None
            return Eof()
        return NeedData()

    def _take_response(self) -> bool:
        response, self._response = self._response, False
        return response

    def _line(self, line: bytes) -> Event | None:
        """One line of a command (up to its CRLF); the event when it ends it."""
        command = self._command
        if command is None:
            command = self._command = _Command(self._take_response())
        if command.discarding:
            line = (command.tail + line)[-_TAIL:]
            command.discarding = False
            command.tail = b""
        else:
            command.line_octets += len(line) + 2
            if command.line_octets > self.max_line:
                command.fail(f"Line too long (at most {self.max_line} octets)")
        marker = _LITERAL_RE.search(line, max(0, len(line) - _TAIL))
        if not command.error:
            try:
                self._tokens(command, line[: marker.start()] if marker else line, marker)
            except _Syntax as exc:
                command.fail(str(exc))
        command.segments += 1
        if marker is not None:
            return self._announce(command, int(marker.group(1)))
        self._command = None
        return self._finish(command)

    def _announce(self, command: _Command, size: int) -> Event | None:
        """A literal of ``size`` octets follows: read it, or drop it."""
        room = self.max_literal - command.literal_octets
        if size > room and not command.error:
            command.fail(
                f"Literal too large ({size} octets, at most {max(room, 0)} here)", "QUOTA/MAXSIZE"
            )
        if not command.error:
            command.literal_octets += size
            self._literal = size
            return None
        if size > self.max_skip:
            # Cannot follow the stream without reading all that: give up.
            self._command = None
            return ParseError(command.error, command.name, command.code, fatal=True)
        self._skip = size
        return None

    def _tokens(self, command: _Command, text: bytes, marker: re.Match[bytes] | None) -> None:
        """Read the items of one line (before its literal marker, if any)."""
        pos = 0
        if command.segments == 0 and not command.response:
            match = _ATOM_RE.match(text)
            if match is None:
                raise _Syntax("Empty command" if not text else "Expected a command name")
            if match.end() - match.start() > MAX_ATOM:
                raise _Syntax("Command name too long")
            command.name = match.group().decode("ascii").upper()
            if command.name not in COMMANDS:
                raise _Syntax(f"Unknown command {command.name[:20]}")
            pos = match.end()
        first = command.segments == 0 and command.response
        while pos < len(text) or (marker is not None and pos == len(text) and not first):
            if not first:
                if text[pos : pos + 1] != b" ":
                    raise _Syntax("Expected a space between arguments")
                pos += 1
            first = False
            if pos == len(text):
                if marker is None:
                    raise _Syntax("Expected an argument after the space")
                break  # the literal is the argument
            pos = self._item(command, text, pos)
        if marker is None and command.response and not command.items:
            raise _Syntax("Expected a string")

    def _item(self, command: _Command, text: bytes, pos: int) -> int:
        char = text[pos : pos + 1]
        if char == b'"':
            match = _QUOTED_RE.match(text, pos)
            if match is None:
                raise _Syntax("Unterminated or invalid quoted string")
            raw = match.group(1)
            if len(raw) > MAX_QUOTED:
                raise _Syntax(f"Quoted string too long (at most {MAX_QUOTED} octets)")
            value = re.sub(rb"\\(.)", rb"\1", raw)
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise _Syntax("Quoted string is not UTF-8") from None
            command.items.append(value)
            return match.end()
        if char.isdigit():
            end = pos
            while end < len(text) and text[end : end + 1].isdigit():
                end += 1
            digits = text[pos:end]
            if not _NUMBER_RE.fullmatch(digits) or len(digits) > 10:
                raise _Syntax("Invalid number")
            number = int(digits)
            if number > MAX_NUMBER:
                raise _Syntax("Number too large")
            command.items.append(number)
            return end
        if char == b"{":
            raise _Syntax("Invalid literal (a literal ends its line: {n+} CRLF)")
        raise _Syntax("Expected a string")

    def _finish(self, command: _Command) -> Event:
        if command.response:
            if command.error:
                return ParseError(command.error, "AUTHENTICATE", command.code)
            if len(command.items) != 1 or not isinstance(command.items[0], bytes):
                return ParseError("Expected one string", "AUTHENTICATE")
            return Response(command.items[0])
        if command.error:
            return ParseError(command.error, command.name, command.code)
        spec = COMMANDS[command.name]
        items = command.items
        low = len(spec.args) - spec.optional
        if not low <= len(items) <= len(spec.args):
            count = (
                f"{low}" if low == len(spec.args) else f"{low} to {len(spec.args)}"
            ) + f" argument{'s' if len(spec.args) != 1 else ''}"
            return ParseError(f"{command.name} takes {count}", command.name)
        for item, kind in zip(items, spec.args, strict=False):
            if (kind == NUMBER) != isinstance(item, int):
                return ParseError(f"{command.name}: expected a {kind}", command.name)
        return Command(command.name, tuple(items))


# -- the server's side -------------------------------------------------------------

_QUOTABLE = re.compile(rb"[^\x00\r\n]*\Z")


def literal(value: bytes) -> bytes:
    """rfc5804:4 literal-s2c."""
    return b"{%d}\r\n" % len(value) + value


def string(value: str | bytes) -> bytes:
    """A string for a response: quoted when it can be (UTF-8, at most 1024
    octets, no NUL, CR or LF), a literal otherwise (rfc5804:4)."""
    octets = value.encode("utf-8") if isinstance(value, str) else value
    if len(octets) <= MAX_QUOTED and _QUOTABLE.match(octets):
        try:
            octets.decode("utf-8")
        except UnicodeDecodeError:
            return literal(octets)
        return b'"' + octets.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(octets)


def _completion(status: bytes, text: str, code: str, code_arg: str | bytes | None) -> bytes:
    # rfc5804:4 response-ok / response-nobye: status [SP "(" resp-code ")"] [SP string] CRLF
    out = status
    if code:
        out += b" (" + code.encode("ascii")
        if code_arg is not None:
            out += b" " + string(code_arg)
        out += b")"
    if text:
        out += b" " + string(text)
    return out + b"\r\n"


def ok(text: str = "", code: str = "", code_arg: str | bytes | None = None) -> bytes:
    return _completion(b"OK", text, code, code_arg)


def no(text: str = "", code: str = "", code_arg: str | bytes | None = None) -> bytes:
    return _completion(b"NO", text, code, code_arg)


def bye(text: str = "", code: str = "") -> bytes:
    return _completion(b"BYE", text, code, None)


def capability_lines(capabilities: Iterable[tuple[str, str | None]]) -> bytes:
    """rfc5804:1.7 single-capability lines: name [SP value] CRLF each."""
    out = b""
    for name, value in capabilities:
        out += string(name) + (b" " + string(value) if value is not None else b"") + b"\r\n"
    return out


def script_lines(scripts: Sequence[tuple[str, bool]]) -> bytes:
    """rfc5804:2.7 LISTSCRIPTS data: one name a line, ACTIVE after the active one."""
    return b"".join(
        string(name) + (b" ACTIVE" if active else b"") + b"\r\n" for name, active in scripts
    )
