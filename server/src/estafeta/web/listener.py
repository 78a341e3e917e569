"""The http and https listeners: accept, count, start TLS, serve.

Every connection is counted against the client address's share (the
server's ConnectionsPerIP, over every protocol) before a byte of TLS is
spent on it, like imaps. On https the TLS handshake is started here, after a
look at the ClientHello without taking it off the socket (MSG_PEEK): an ACME
TLS-ALPN-01 validation (rfc8737:3, ALPN ``acme-tls/1`` and the name being
validated) gets the challenge certificate, everybody else the certificate
of the moment (``context``; a renewal loads the new one into it, so the
next handshake has it and open connections keep theirs). The ClientHello is
only looked at while a TLS-ALPN-01 challenge is pending.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence

from estafeta.acme import Challenges, ClientHelloError, answer_tls_alpn, peek_client_hello
from estafeta.log import log_event
from estafeta.tlsclose import SHUTDOWN_SECONDS
from estafeta.web import proxy
from estafeta.web.connection import Handler, HTTPSession, Limits

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("estafeta.web")


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
        challenges: Challenges | None = None,
        handshake_timeout: float = 10.0,
        hsts_max_age: int = 31536000,
        proxy_networks: Sequence[IPNetwork] = (),
        max_open: int = 1000,
    ) -> None:
        self.name = name
        self.handler = handler
        self.limits = limits
        self.admit = admit
        self.release = release
        self.context = context
        self.challenges = challenges
        self.handshake_timeout = handshake_timeout
        self.hsts_max_age = hsts_max_age
        # Connections from these addresses start with a PROXY header (web/proxy.py).
        self.proxy_networks = tuple(proxy_networks)
        self.max_open = max_open
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
            if len(self.open) >= self.max_open:
                # Every listener's connections together ([limits]
                # max_connections): beyond, closed at once, before TLS.
                conn.close()
                continue
            task = asyncio.create_task(self._connection(conn, str(address[0])))
            self.open.add(task)
            task.add_done_callback(self.open.discard)

    async def _connection(self, conn: socket.socket, ip: str) -> None:
        conn.setblocking(False)
        if self._from_proxy(ip):
            # The front (a TLS-passthrough proxy) says who the client is.
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    header = await proxy.read(conn)
            except (proxy.ProxyError, TimeoutError, OSError) as exc:
                log_event(
                    log, "proxy_header_refused", logging.WARNING, listener=self.name, error=str(exc)
                )
                conn.close()
                return
            ip = header.source or ip
        if not self.admit(ip):
            conn.close()
            return
        try:
            await self._serve(conn, ip)
        finally:
            self.release(ip)

    def _from_proxy(self, ip: str) -> bool:
        if not self.proxy_networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.proxy_networks)

    async def _serve(self, conn: socket.socket, ip: str) -> None:
        loop = asyncio.get_running_loop()
        context = None
        if self.context is not None:
            context = self.context()
            challenges = self.challenges
            if challenges is not None and challenges.pending()["tls-alpn-01"]:
                # rfc8737:3: an ACME validator offers exactly acme-tls/1 for
                # the name being validated; only then the ClientHello matters.
                try:
                    async with asyncio.timeout(self.handshake_timeout):
                        hello = await peek_client_hello(conn)
                except (ClientHelloError, TimeoutError, OSError):
                    hello = None
                if hello is None:
                    conn.close()
                    return
                challenge = challenges.context_for(hello)
                if challenge is not None:
                    async with asyncio.timeout(self.handshake_timeout):
                        await answer_tls_alpn(conn, challenge)
                    return
        reader = asyncio.StreamReader(limit=64 * 1024)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.handshake_timeout if context else None,
                ssl_shutdown_timeout=SHUTDOWN_SECONDS if context else None,
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
