"""Shared stand-ins for tests that run a session without a socket, and the
reference POP3 dot-stuffing the fast path is compared with."""

from __future__ import annotations

import re


class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.closing = True


class FakeWriter:
    """What a session writes, kept, and how many writes it took."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.transport = FakeTransport()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1

    async def drain(self) -> None:
        pass

    def get_extra_info(self, _name: str) -> object:
        return ("127.0.0.1", 1143)

    def close(self) -> None:
        self.transport.closing = True

    def take(self) -> bytes:
        data = bytes(self.data)
        del self.data[:]
        return data


_OLD_DOT_LINES = re.compile(rb"(^|\n)\.")


def old_dot_stuff(data: bytes) -> bytes:
    """pop3/session.py's dot_stuff before the fast path, verbatim."""
    stuffed = _OLD_DOT_LINES.sub(rb"\1..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"
