"""The http and https listeners: accept, count, start TLS, serve.

Every connection is counted against the client address's share (the
server's ConnectionsPerIP, over every protocol) before a byte of TLS is
spent on it, like imaps. On https the TLS handshake is started here, after a
look at the ClientHello without taking it off the socket (MSG_PEEK): an ACME
TLS-ALPN-01 validation (rfc8737:3, ALPN ``acme-tls/1`` and the name being
validated) gets the challenge certificate, everybody else the certificate
of the moment — which ``contexts`` gives anew for every connection, so a
renewed certificate is used by the next handshake and open connections keep
theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable

from estafeta.log import log_event
from estafeta.web.connection import Handler, HTTPSession, Limits

log = logging.getLogger("estafeta.web")

# How much of a ClientHello is read to find SNI and ALPN; a longer one
# (post-quantum key shares make them about 1.8 KiB) is still well inside.
PEEK_BYTES = 16 * 1024
PEEK_PAUSE = 0.02


class HTTPListener:
    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        limits: Limits,
        admit: Callable[[str], bool],
        release: Callable[[str], None],
        context: Callable[[], ssl.SSLContext] | None = None,
        alpn_challenge: Callable[[bytes], ssl.SSLContext | None] | None = None,
        handshake_timeout: float = 10.0,
        hsts_max_age: int = 31536000,
    ) -> None:
        self.name = name
        self.handler = handler
        self.limits = limits
        self.admit = admit
        self.release = release
        self.context = context
        self.alpn_challenge = alpn_challenge
        self.handshake_timeout = handshake_timeout
        self.hsts_max_age = hsts_max_age
        self.open: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []
        self._sockets: list[socket.socket] = []

    async def listen(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sockets.append(sock)
        self._accepting.append(asyncio.create_task(self._accept(sock)))

    async def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        for task in list(self.open):
            task.cancel()
        await asyncio.gather(*self._accepting, *self.open, return_exceptions=True)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and the like: wait, do not spin
                log_event(log, "accept_failed", logging.WARNING, listener=self.name, error=str(exc))
                await asyncio.sleep(0.5)
                continue
            task = asyncio.create_task(self._connection(conn, str(address[0])))
            self.open.add(task)
            task.add_done_callback(self.open.discard)

    async def _connection(self, conn: socket.socket, ip: str) -> None:
        if not self.admit(ip):
            conn.close()
            return
        try:
            await self._serve(conn, ip)
        finally:
            self.release(ip)

    async def _serve(self, conn: socket.socket, ip: str) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        context = None
        if self.context is not None:
            context = self.context()
            if self.alpn_challenge is not None:
                hello = await self._peek(conn, time.monotonic() + self.handshake_timeout)
                if hello is None:
                    conn.close()
                    return
                context = self.alpn_challenge(hello) or context
        reader = asyncio.StreamReader(limit=64 * 1024)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.handshake_timeout if context else None,
            )
        except (OSError, TimeoutError, ssl.SSLError):
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        session = HTTPSession(
            reader,
            writer,
            self.handler,
            limits=self.limits,
            secure=context is not None,
            remote=ip,
            listener=self.name,
            hsts_max_age=self.hsts_max_age,
        )
        await session.run()

    async def _peek(self, conn: socket.socket, deadline: float) -> bytes | None:
        """The bytes that came so far, once they hold a whole TLS record or
        PEEK_BYTES; None if the client went away or took too long."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            except OSError:
                return None
            if data == b"":
                return None
            if data is not None and _record_complete(data):
                return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if data is None:
                waiter = loop.create_future()
                loop.add_reader(conn.fileno(), waiter.set_result, None)
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter, remaining)
                finally:
                    loop.remove_reader(conn.fileno())
            else:
                # Part of a record is there; readiness would stay set while
                # it is not taken, so wait a moment instead.
                await asyncio.sleep(PEEK_PAUSE)


def _record_complete(data: bytes) -> bool:
    """A whole TLS record (rfc8446:5.1: 5-byte header, 2-byte length), or
    as much as is ever peeked, or something that is no TLS at all."""
    if len(data) >= PEEK_BYTES:
        return True
    if data[:1] != b"\x16":
        return True  # not a handshake record: the TLS layer will refuse it
    if len(data) < 5:
        return False
    return len(data) >= 5 + int.from_bytes(data[3:5], "big")
