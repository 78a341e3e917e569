"""The ACME manager against Debian's pebble, as test_acme.py and
test_acme_dane.py drive it: challenge responders that answer as the server's
listeners would, an adjustable clock, a recorder of installed certificates.
The ``pebble`` fixture is in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _pebble import Pebble
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from estafeta.acme import (
    AcmeSettings,
    CertificateManager,
    Challenges,
    ClientHelloError,
    answer_tls_alpn,
    peek_client_hello,
)

HOST = "mx.example.test"
NAMES = (HOST, "mta-sts.example.test", "autoconfig.example.test")

# -- the challenge responders, as the server's listeners would be ----------------------------


@dataclass
class Responders:
    challenges: Challenges
    http_answers: int = 0
    alpn_answers: int = 0
    servers: list[asyncio.Server] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("ascii")
            body = self.challenges.http01_for_path(target.split("?", 1)[0])
            if body is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                self.http_answers += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body.encode()
                )
            await writer.drain()
        writer.close()

    async def tls(self, sock: socket.socket) -> None:
        try:
            async with asyncio.timeout(5):
                hello = await peek_client_hello(sock)
            context = self.challenges.context_for(hello) if hello else None
        except (ClientHelloError, TimeoutError, OSError):
            context = None
        if context is None:
            sock.close()
            return
        self.alpn_answers += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await answer_tls_alpn(sock, context)

    async def accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            sock.setblocking(False)
            task = asyncio.create_task(self.tls(sock))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @contextlib.asynccontextmanager
    async def serving(self, pebble: Pebble) -> Any:
        self.servers.append(await asyncio.start_server(self.http, "127.0.0.1", pebble.http_port))
        listener = socket.create_server(("127.0.0.1", pebble.tls_port))
        listener.setblocking(False)
        acceptor = asyncio.create_task(self.accept(listener))
        try:
            yield self
        finally:
            acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor
            listener.close()
            for task in list(self.tasks):
                task.cancel()
            for server in self.servers:
                server.close()
                await server.wait_closed()


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Installed:
    chain: bytes
    key: bytes
    key_mode: int
    fingerprint: str


class Installs(list[Installed]):
    def __call__(self, fullchain: Path, key: Path) -> None:
        # What the server's install does: load the pair into an SSL context.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(fullchain, key)
        chain = fullchain.read_bytes()
        leaf = x509.load_pem_x509_certificates(chain)[0]
        self.append(
            Installed(
                chain=chain,
                key=key.read_bytes(),
                key_mode=stat.S_IMODE(key.stat().st_mode),
                fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
            )
        )


async def until(condition: Callable[[], bool], pebble: Pebble | None, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached\n" + (pebble.log_text() if pebble else ""))
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(manager: CertificateManager) -> Any:
    task = asyncio.create_task(manager.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def settings(pebble: Pebble, **changes: Any) -> AcmeSettings:
    values: dict[str, Any] = {
        "directory": pebble.directory,
        "names": NAMES,
        "email": "postmaster@example.test",
        "ca_bundle": pebble.ca_file,
        "retry_min": 0.05,
        "retry_max": 0.2,
    }
    values.update(changes)
    return AcmeSettings(**values)


def manager(
    pebble: Pebble,
    state: Path,
    challenges: Challenges,
    installs: Installs,
    clock: Clock,
    **changes: Any,
) -> CertificateManager:
    return CertificateManager(
        settings(pebble, **changes), state, challenges, installs, clock, check_interval=0.05
    )


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def peer_certificate(port: int, name: str = "mx.example.test") -> x509.Certificate:
    """The certificate a new TLS connection on ``port`` is shown (not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
