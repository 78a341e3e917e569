"""COMPRESS=DEFLATE (rfc4978): raw DEFLATE (rfc1951, zlib windowBits -15)
both ways after the tagged OK of COMPRESS.

``Deflater`` and ``Inflater`` are sans-IO: bytes in, bytes out. Every
write is compressed and sync-flushed at once, so whatever the server has
written is whole on the client's side when the server waits for it (rfc4978:4
leaves the flushing to the server). Inflation is bounded: at most
``CHUNK`` octets come out per call, the rest waits in zlib's unconsumed
input until asked for, so a few kilobytes that inflate to gigabytes (a
DEFLATE "bomb", up to 1032:1) cost memory only as fast as the session reads.

``install`` puts the two below an asyncio stream pair (a transport and a
protocol between the socket's, or TLS's, and the StreamReader/StreamWriter
of the session), keeping the stream's flow control: while the reader is
full, inflation stops and the socket is not read.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

__all__ = ["CHUNK", "CompressError", "Deflater", "Inflater", "install"]

CHUNK = 64 * 1024
_WBITS = -15  # rfc4978:4 raw DEFLATE, no zlib header


class CompressError(Exception):
    """The client's stream is not valid DEFLATE."""


class Deflater:
    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, _WBITS)

    def compress(self, data: bytes) -> bytes:
        """``data`` compressed and flushed to a byte boundary (Z_SYNC_FLUSH)."""
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)


class Inflater:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(_WBITS)
        self._pending = b""  # compressed input not yet inflated

    def feed(self, data: bytes) -> None:
        self._pending += data

    def read(self, limit: int = CHUNK) -> bytes:
        """Up to ``limit`` inflated octets (b"": nothing more for now)."""
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
    deflated into the transport below; pausing reads stops inflation."""

    def __init__(self, inner: asyncio.Transport, layer: _Protocol) -> None:
        super().__init__()
        self._inner = inner
        self._layer = layer
        self._deflater = Deflater()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._inner.write(self._deflater.compress(bytes(data)))

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
        self._inner.close()

    def abort(self) -> None:
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

    def data_received(self, data: bytes) -> None:
        self.inflater.feed(data)
        self.pump()

    def pump(self) -> None:
        while not self.paused:
            try:
                chunk = self.inflater.read()
            except CompressError:
                # rfc4978 gives no way back: end the connection (the session
                # sees it closed, never a traceback).
                if self.transport is not None:
                    self.transport.write(b"* BYE Invalid compressed data\r\n")
                    self.transport.abort()
                return
            if not chunk:
                return
            self.app.data_received(chunk)

    def eof_received(self) -> bool | None:
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
    now on; ``unread`` are octets the client sent after COMPRESS that were
    already taken from the socket (compressed ones)."""
    inner = writer.transport
    app = inner.get_protocol()
    assert isinstance(app, asyncio.Protocol)
    layer = _Protocol(app)
    outer = _Transport(inner, layer)  # type: ignore[arg-type]
    layer.transport = outer
    inner.set_protocol(layer)
    # The stream pair's own references to their transport (asyncio keeps
    # them in these attributes: StreamWriter.transport is read-only).
    writer._transport = outer  # type: ignore[attr-defined]
    reader._transport = outer  # type: ignore[attr-defined]
    if unread:
        layer.data_received(unread)
