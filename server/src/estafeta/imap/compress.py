"""COMPRESS=DEFLATE (rfc4978): raw DEFLATE (rfc1951, zlib windowBits -15)
both ways after the tagged OK of COMPRESS.

``Deflater`` and ``Inflater`` are sans-IO: bytes in, bytes out. Writes are
compressed as they come and sync-flushed once per burst (what the session
writes before it next waits: one turn of the event loop), so whatever the
server has written is whole on the client's side when the server waits for
it (rfc4978:4 leaves the flushing to the sender). Inflation is bounded: at
most ``CHUNK`` octets come out per call, the rest waits in zlib's
unconsumed input until asked for, so a few kilobytes that inflate to
gigabytes (a DEFLATE "bomb", up to 1032:1; rfc4978:6 defers to TLS
compression's considerations, rfc3749) cost memory only as fast as the
session reads, and the session's parser applies its line and literal
limits to the inflated octets as to any others.

``install`` puts the two below an asyncio stream pair (a transport and a
protocol between the socket's, or TLS's, and the StreamReader/StreamWriter
of the session), keeping the stream's flow control: while the reader is
full, inflation stops and the socket is not read.

Memory: a compressing connection holds zlib's state, about 256 KiB to
deflate (windowBits 15, memLevel 8) and 40 KiB to inflate.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

__all__ = ["BYE_CORRUPT", "CHUNK", "CompressError", "Deflater", "Inflater", "install"]

CHUNK = 64 * 1024
_WBITS = -15  # rfc4978:4 raw DEFLATE (rfc1951), no zlib header; a 32 KiB window
BYE_CORRUPT = b"* BYE Invalid compressed data\r\n"


class CompressError(Exception):
    """The client's stream is not valid DEFLATE."""


class Deflater:
    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, _WBITS)

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed; zlib may hold some of it until ``flush``."""
        return self._z.compress(data)

    def flush(self) -> bytes:
        """All held so far, ending on a byte boundary (Z_SYNC_FLUSH: the
        peer can inflate all of it; the dictionary is kept, rfc4978:4)."""
        return self._z.flush(zlib.Z_SYNC_FLUSH)


class Inflater:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(_WBITS)
        self._pending = b""  # compressed input not yet inflated

    def feed(self, data: bytes) -> None:
        self._pending += data

    def read(self, limit: int = CHUNK) -> bytes:
        """Up to ``limit`` inflated octets (b"": nothing more for now).
        Raises CompressError for a stream that is not DEFLATE, or for
        octets after the end of the stream (a client that ended it, with
        Z_FINISH, sends nothing more)."""
        if not self._pending:
            return b""
        if self._z.eof:
            # Octets after the end of the client's stream: nothing can read them.
            raise CompressError("data after the end of the client's DEFLATE stream")
        try:
            out = self._z.decompress(self._pending, limit)
        except zlib.error as exc:
            raise CompressError(str(exc)) from None
        # At the end of the stream (a client that finished it, Z_FINISH, as it
        # closes) what came before it is still its last commands.
        self._pending = self._z.unconsumed_tail if not self._z.eof else self._z.unused_data
        return out

    @property
    def pending(self) -> int:
        """Compressed octets still to inflate."""
        return len(self._pending)


class _Transport(asyncio.Transport):
    """What the session's StreamReader and StreamWriter talk to: writes are
    deflated into the transport below, flushed once per burst; pausing
    reads stops inflation."""

    def __init__(
        self, inner: asyncio.Transport, layer: _Protocol, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self._inner = inner
        self._layer = layer
        self._loop = loop
        self._deflater = Deflater()
        self._flush_due = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        compressed = self._deflater.compress(bytes(data))
        if compressed:
            self._inner.write(compressed)
        if not self._flush_due:
            # rfc4978:4 one sync flush per burst, not per line: each costs
            # about five octets, and the client needs whole responses only
            # when the server waits.
            self._flush_due = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand the peer all written so far (also ahead of a close)."""
        if self._flush_due and not self._inner.is_closing():
            self._inner.write(self._deflater.flush())
        self._flush_due = False

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def pause_reading(self) -> None:
        self._layer.paused = True
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._layer.paused = False
        self._layer.pump()
        if not self._layer.paused and not self._inner.is_closing():
            self._inner.resume_reading()

    def is_reading(self) -> bool:
        return not self._layer.paused

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        # What was written goes out if the socket takes it at once, as it
        # would without compression (a BYE right before an abort).
        self.flush()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._layer.app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app


class _Protocol(asyncio.Protocol):
    """What the socket's (or TLS's) transport talks to: inflates what comes
    in and hands it up in CHUNK pieces, no faster than the reader takes it."""

    def __init__(self, app: asyncio.Protocol) -> None:
        self.app = app
        self.inflater = Inflater()
        self.paused = False
        self.transport: _Transport | None = None
        self._failed = False

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        self.inflater.feed(data)
        self.pump()

    def pump(self) -> None:
        while not self.paused and not self._failed:
            try:
                chunk = self.inflater.read()
            except CompressError:
                self._fail()
                return
            if not chunk:
                return
            self.app.data_received(chunk)

    def _fail(self) -> None:
        # rfc4978 gives no way back from a broken stream: say so and end the
        # connection (the session sees it closed, never a traceback).
        self._failed = True
        if self.transport is not None:
            self.transport.write(BYE_CORRUPT)
            self.transport.abort()  # after a flush

    def eof_received(self) -> bool | None:
        # It cannot overtake compressed data: while inflation is paused the
        # transport below is paused too and reads nothing, EOF included.
        return self.app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()


def install(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, unread: bytes = b""
) -> None:
    """Compress what ``writer`` sends and inflate what ``reader`` gets from
    now on (rfc4978:3: from the octet after the tagged OK's CRLF);
    ``unread`` are octets the client sent after COMPRESS that were already
    taken from the socket (compressed ones)."""
    inner = writer.transport
    app = inner.get_protocol()
    assert isinstance(app, asyncio.Protocol)
    layer = _Protocol(app)
    outer = _Transport(inner, layer, asyncio.get_running_loop())  # type: ignore[arg-type]
    layer.transport = outer
    inner.set_protocol(layer)
    # The stream pair's own references to their transport (asyncio keeps
    # them in these attributes: StreamWriter.transport is read-only).
    writer._transport = outer  # type: ignore[attr-defined]
    reader._transport = outer  # type: ignore[attr-defined]
    if unread:
        layer.data_received(unread)
