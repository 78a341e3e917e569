"""Sans-IO POP3 command parser: bytes in, commands out (rfc1939:3).

Commands are one line each: a keyword of 3-4 characters, arguments
separated by single spaces, CRLF. rfc2449:4 limits a command line to 255
octets including CRLF; we enforce that here. During SASL (rfc5034:4) the
session asks for raw lines with ``expect_line``.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 255  # rfc2449:4, CRLF included
MAX_SASL_LINE = 8192  # a base64 SASL response can be longer than a command (rfc5034:4)
MAX_ARGS = 2

# Keyword -> (minimum args, maximum args) (rfc1939:5-7, rfc2449:5, rfc2595:4, rfc5034:4, rfc6856:2)
COMMANDS: dict[str, tuple[int, int]] = {
    "USER": (1, 1),
    "PASS": (1, 1),  # the password may contain spaces: see _split
    "APOP": (2, 2),
    "STAT": (0, 0),
    "LIST": (0, 1),
    "RETR": (1, 1),
    "DELE": (1, 1),
    "NOOP": (0, 0),
    "RSET": (0, 0),
    "QUIT": (0, 0),
    "TOP": (2, 2),
    "UIDL": (0, 1),
    "CAPA": (0, 0),
    "STLS": (0, 0),
    "AUTH": (0, 2),
    "UTF8": (0, 0),
}


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class RawLine:
    line: bytes


@dataclass(frozen=True)
class Error:
    text: str  # what to put after "-ERR "


@dataclass(frozen=True)
class NeedData:
    pass


@dataclass(frozen=True)
class Eof:
    pass


Event = Command | RawLine | Error | NeedData | Eof


class Parser:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._raw = False
        self._discarding = False  # inside an over-long line, up to its CRLF

    @property
    def buffered(self) -> int:
        """Octets received and not parsed yet (STLS drops them)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._eof = True

    def expect_line(self) -> None:
        """The next line is a SASL response, not a command."""
        self._raw = True

    def next_event(self) -> Event:
        limit = MAX_SASL_LINE if self._raw else MAX_LINE
        end = self._buffer.find(b"\r\n")
        if self._discarding:
            if end < 0:
                # Keep the last byte: it may be the CR of the CRLF.
                del self._buffer[: max(0, len(self._buffer) - 1)]
                return Eof() if self._eof else NeedData()
            del self._buffer[: end + 2]
            self._discarding = False
            return Error("Line too long (rfc2449:4: 255 octets)")
        if end < 0:
            if len(self._buffer) > limit:
                self._discarding = True
                return self.next_event()
            return Eof() if self._eof else NeedData()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        if len(line) + 2 > limit:
            return Error("Line too long (rfc2449:4: 255 octets)")
        if self._raw:
            self._raw = False
            return RawLine(line)
        return self._parse(line)

    def _parse(self, line: bytes) -> Event:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return Error("Command is not UTF-8")
        if any(ord(c) < 0x20 for c in text):
            return Error("Control characters in command")
        keyword, _, rest = text.partition(" ")
        name = keyword.upper()
        if name not in COMMANDS:
            return Error(f"Unknown command {keyword[:10]!r}" if keyword else "Empty command")
        low, high = COMMANDS[name]
        if name == "PASS":
            # rfc1939:7: the password is the rest of the line, spaces included.
            args: tuple[str, ...] = (rest,) if rest else ()
        else:
            args = tuple(rest.split(" ")) if rest else ()
            if any(a == "" for a in args):
                return Error(f"Extra spaces in {name}")
        if not low <= len(args) <= high:
            if low == high:
                need = f"{low} argument{'s' if low != 1 else ''}"
            else:
                need = f"{low} to {high} arguments"
            return Error(f"{name} takes {need}")
        return Command(name, args)
