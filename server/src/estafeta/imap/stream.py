"""Sending a long response with bounded memory.

A FETCH response can be far larger than anything the server should hold: 300
overlapping partials of a 1 MiB message are 300 MiB (issue 14 item 5), and a
client may stop reading at any time. ``ResponseStream`` takes the response in
pieces (bytes, or memoryviews of a message file), joins small pieces into
writes of about ``FLUSH`` octets, cuts large ones into ``SLICE``-sized views,
and once the transport holds more than ``HIGH_WATER`` octets waits for the
client to read (``drain``). A client that reads nothing for ``timeout``
seconds loses its connection (aborted, so that the buffer is freed at once
rather than after the kernel gives up), and the command ends with
``ConnectionResetError``.

What one response holds at any time: the pieces not yet written (< FLUSH +
one piece), what the transport buffers (< HIGH_WATER + SLICE, plus the
kernel's socket buffer), and whatever the pieces are views of (the caller's
one message).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from estafeta.log import log_event

log = logging.getLogger("estafeta.imap")

FLUSH = 64 * 1024
"""Small pieces are joined up to this size before they are written."""
SLICE = 256 * 1024
"""Larger pieces are written in views of at most this size."""
HIGH_WATER = 512 * 1024
"""Octets the transport may hold before the sender waits for the client."""


class ResponseStream:
    """Pieces of a response, written to ``writer`` with back-pressure."""

    def __init__(self, writer: asyncio.StreamWriter, timeout: float, peer: str = "") -> None:
        self.writer = writer
        self.timeout = timeout
        self.peer = peer
        self._pending: list[bytes | memoryview] = []
        self._size = 0
        self.sent = 0  # octets handed to the transport

    def add(self, piece: bytes | memoryview) -> bool:
        """Queue a piece; True when ``pump`` should run before the next one."""
        self._pending.append(piece)
        self._size += len(piece)
        return self._size >= FLUSH

    async def put(self, piece: bytes | memoryview) -> None:
        if self.add(piece):
            await self.pump()

    async def put_many(self, pieces: Iterable[bytes]) -> None:
        """``put`` of each piece in turn (many short ones: whole response
        lines), with the bookkeeping in locals: the same writes of about
        FLUSH octets and the same waits for the client."""
        pending = self._pending
        size = self._size
        for piece in pieces:
            pending.append(piece)
            size += len(piece)
            if size >= FLUSH:
                self._size = size
                await self.pump()
                pending = self._pending
                size = self._size
        self._size = size

    async def pump(self) -> None:
        """Write what is queued; wait for the client if the transport is full."""
        pending, self._pending, self._size = self._pending, [], 0
        if max(map(len, pending), default=0) <= SLICE:  # the usual case: one write
            self._write(pending)
            await self._wait()
            return
        small: list[bytes | memoryview] = []
        for piece in pending:
            if len(piece) <= SLICE:
                small.append(piece)
                continue
            self._write(small)
            small = []
            view = memoryview(piece)
            for start in range(0, len(view), SLICE):
                self._write([view[start : start + SLICE]])
                await self._wait()
        self._write(small)
        await self._wait()

    def flush_nowait(self) -> None:
        """Hand what is queued to the transport (before another reply line)."""
        pending, self._pending, self._size = self._pending, [], 0
        self._write(pending)

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        if not pieces or self.writer.transport.is_closing():
            return
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.writer.write(data)
        self.sent += len(data)

    async def _wait(self) -> None:
        transport = self.writer.transport
        if transport.get_write_buffer_size() <= HIGH_WATER:
            return
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            log_event(
                log, "send_timeout", logging.WARNING, client=self.peer, octets=self.sent,
                buffered=transport.get_write_buffer_size(),
            )  # fmt: skip
            transport.abort()
            raise ConnectionResetError("the client stopped reading") from None
