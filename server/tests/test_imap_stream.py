"""ResponseStream (estafeta.imap.stream): a long response with bounded memory.

Over a real loopback connection: what is written arrives whole and in
order; a peer that reads nothing makes the writer wait with at most
HIGH_WATER + SLICE octets in the transport; once it has read nothing for
``timeout`` seconds the connection is aborted and the writer gets
ConnectionResetError (issue 14 item 5).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time

import pytest

from estafeta.imap import stream
from estafeta.imap.stream import ResponseStream

MIB = 1024 * 1024


async def pair() -> tuple[asyncio.StreamWriter, socket.socket, asyncio.Server]:
    """A server-side StreamWriter and the (blocking) client socket it writes to."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    writer = await accepted
    return writer, client, server


def pieces(total: int) -> list[bytes | memoryview]:
    """Small and large pieces, views included, of known content."""
    blob = bytes(range(256)) * (4 * MIB // 256)
    out: list[bytes | memoryview] = []
    size = 0
    n = 0
    while size < total:
        if n % 3 == 0:
            piece: bytes | memoryview = b"* %d FETCH (" % n
        elif n % 3 == 1:
            piece = memoryview(blob)[n % 1000 : n % 1000 + 3 * MIB]
        else:
            piece = b")\r\n"
        out.append(piece)
        size += len(piece)
        n += 1
    return out


def test_everything_arrives_in_order() -> None:
    async def main() -> None:
        writer, client, server = await pair()
        parts = pieces(40 * MIB)
        expected = hashlib.sha256(b"".join(parts)).hexdigest()
        total = sum(len(p) for p in parts)

        def read_all() -> str:
            digest = hashlib.sha256()
            left = total
            while left:
                chunk = client.recv(min(left, 1 << 20))
                assert chunk
                digest.update(chunk)
                left -= len(chunk)
            return digest.hexdigest()

        reading = asyncio.get_running_loop().run_in_executor(None, read_all)
        out = ResponseStream(writer, timeout=10)
        for part in parts:
            if out.add(part):
                await out.pump()
        await out.pump()
        assert out.sent == total
        assert await reading == expected
        client.close()
        writer.close()
        server.close()

    asyncio.run(main())


def test_a_peer_that_does_not_read_is_cut_off_and_holds_little() -> None:
    async def main() -> None:
        writer, client, server = await pair()
        out = ResponseStream(writer, timeout=1.0)
        buffered = 0
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            for part in pieces(200 * MIB):
                if out.add(part):
                    await out.pump()
                buffered = max(buffered, writer.transport.get_write_buffer_size())
        elapsed = time.monotonic() - started
        # Waited about the timeout (not forever), holding a bounded buffer.
        assert 1.0 <= elapsed < 5.0
        assert buffered <= stream.HIGH_WATER + stream.SLICE + stream.FLUSH
        assert out.sent < 16 * MIB  # what the kernel and the buffer took
        assert writer.transport.is_closing()
        client.close()
        server.close()

    asyncio.run(main())
