"""The server name and ALPN protocols of a TLS ClientHello, read from peeked bytes.

The stdlib's ``ssl`` shows a server the client's SNI name (``sni_callback``)
but not the ALPN protocols it offers, so it cannot tell an ACME validator
doing TLS-ALPN-01 (rfc8737:3: it offers only ``acme-tls/1``) from a mail
client or a browser asking for the same name. The HTTPS listener therefore
peeks at the first bytes of a connection (``peek_client_hello``, which leaves
them in the socket for the TLS handshake), reads them with ``client_hello``
and picks the SSL context before the handshake starts.

``client_hello`` is sans-IO: bytes in, a ``ClientHello`` (or ``None`` while
the bytes end before the message does) out. It is bounded (at most
``MAX_HELLO_BYTES`` of input are looked at) and raises nothing but
``ClientHelloError`` for any input.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass

# rfc8446:5.1: a record carries at most 2^14 bytes of plaintext.
MAX_RECORD = 2**14
# The most we read while looking for one ClientHello (records and their headers).
MAX_HELLO_BYTES = 2 * (MAX_RECORD + 5)

HANDSHAKE_SECONDS = 10.0  # for a TLS-ALPN-01 handshake
_HANDSHAKE = 22  # rfc8446:5.1 ContentType handshake
_CLIENT_HELLO = 1  # rfc8446:4 HandshakeType client_hello
_SERVER_NAME = 0  # rfc6066:3 (ExtensionType server_name)
_ALPN = 16  # rfc7301:3.1 (ExtensionType application_layer_protocol_negotiation)
_HOST_NAME = 0  # rfc6066:3 NameType host_name


class ClientHelloError(ValueError):
    """The bytes are not the start of a TLS ClientHello we can read."""


@dataclass(frozen=True)
class ClientHello:
    """What the listener needs from a ClientHello.

    ``server_name`` is the SNI host name in lower case (None without the
    extension); ``alpn`` the offered protocol names in the client's order
    (None without the extension).
    """

    server_name: str | None
    alpn: tuple[bytes, ...] | None


class _Incomplete(Exception):
    """The input ends inside the message: wait for more bytes."""


class _Reader:
    """Reads big-endian fields out of one complete (or truncated) buffer."""

    def __init__(self, data: bytes, truncated: bool) -> None:
        self.data = data
        self.pos = 0
        self.truncated = truncated

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            if self.truncated:
                raise _Incomplete
            raise ClientHelloError("a length runs past the end of its field")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        """A length-prefixed vector (rfc8446:3.4) as a reader of its own."""
        length = self.number(length_size)
        start = self.pos
        if start + length > len(self.data) and self.truncated:
            raise _Incomplete
        return _Reader(self.take(length), truncated=False)

    def done(self) -> bool:
        return self.pos >= len(self.data)


def _handshake_bytes(data: bytes) -> tuple[bytes, bool]:
    """The handshake layer's bytes carried by the records at the start of
    ``data``, and whether the records end before the ClientHello does."""
    payload = bytearray()
    pos = 0
    while True:
        # rfc8446:5.1 TLSPlaintext: type(1) legacy_record_version(2) length(2) fragment.
        if len(payload) >= 4:
            needed = 4 + int.from_bytes(payload[1:4], "big")
            if needed > 2 * MAX_RECORD:
                raise ClientHelloError("ClientHello too long")
            if len(payload) >= needed:
                return bytes(payload), False
        header = data[pos : pos + 5]
        if header[:1] and header[0] != _HANDSHAKE:
            raise ClientHelloError("not a TLS handshake record")
        if header[1:2] and header[1] != 3:
            raise ClientHelloError("not a TLS record version")
        if len(header) < 5:
            return bytes(payload), True
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_RECORD:
            # rfc8446:5.1: no zero-length handshake fragments, at most 2^14 bytes.
            raise ClientHelloError("bad record length")
        fragment = data[pos + 5 : pos + 5 + length]
        payload += fragment
        if len(fragment) < length:
            return bytes(payload), True
        pos += 5 + length


def client_hello(data: bytes) -> ClientHello | None:
    """Read the ClientHello at the start of ``data`` (peeked TLS records).

    Returns None while ``data`` ends before the message does; raises
    ClientHelloError when the bytes are not a ClientHello we can read
    (another protocol, a malformed message, one longer than we look at).
    """
    data = bytes(data[:MAX_HELLO_BYTES])
    try:
        return _parse(data)
    except _Incomplete:
        if len(data) >= MAX_HELLO_BYTES:
            raise ClientHelloError("ClientHello too long") from None
        return None


def _parse(data: bytes) -> ClientHello:
    payload, truncated = _handshake_bytes(data)
    # rfc8446:4 Handshake: msg_type(1) length(3) body.
    handshake = _Reader(payload, truncated)
    if handshake.number(1) != _CLIENT_HELLO:
        raise ClientHelloError("not a ClientHello")
    hello = handshake.vector(3)
    # rfc8446:4.1.2 ClientHello.
    hello.take(2)  # legacy_version
    hello.take(32)  # random
    if len(hello.vector(1).data) > 32:  # legacy_session_id<0..32>
        raise ClientHelloError("session id longer than 32 bytes")
    suites = hello.vector(2)  # cipher_suites<2..2^16-2>
    if not suites.data or len(suites.data) % 2:
        raise ClientHelloError("bad cipher suite list")
    if not hello.vector(1).data:  # legacy_compression_methods<1..2^8-1>
        raise ClientHelloError("no compression methods")
    if hello.done():
        return ClientHello(None, None)  # TLS 1.2 without extensions (rfc5246:7.4.1.2)
    extensions = hello.vector(2)
    if not hello.done():
        raise ClientHelloError("bytes after the extensions")
    server_name: str | None = None
    alpn: tuple[bytes, ...] | None = None
    seen: set[int] = set()
    while not extensions.done():
        kind = extensions.number(2)
        body = extensions.vector(2)
        if kind in seen:
            # rfc8446:4.2: no more than one extension of the same type.
            raise ClientHelloError("an extension appears twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            server_name = _server_name(body)
        elif kind == _ALPN:
            alpn = _protocols(body)
    return ClientHello(server_name, alpn)


def _server_name(body: _Reader) -> str | None:
    # rfc6066:3: ServerNameList<1..2^16-1> of {NameType name_type; HostName<1..2^16-1>}.
    names = body.vector(2)
    if not body.done() or names.done():
        raise ClientHelloError("bad server_name extension")
    host: str | None = None
    while not names.done():
        name_type = names.number(1)
        name = names.vector(2).data
        if name_type != _HOST_NAME:
            continue
        if host is not None:
            # rfc6066:3: at most one name of each type.
            raise ClientHelloError("two host names in server_name")
        if not name or not name.isascii():
            # rfc6066:3: "represented as a byte string using ASCII encoding".
            raise ClientHelloError("server name is not an ASCII host name")
        host = name.decode("ascii").lower()
    return host


def _protocols(body: _Reader) -> tuple[bytes, ...]:
    # rfc7301:3.1: ProtocolNameList<2..2^16-1> of ProtocolName<1..2^8-1>.
    names = body.vector(2)
    if not body.done() or names.done():
        raise ClientHelloError("bad ALPN extension")
    protocols: list[bytes] = []
    while not names.done():
        name = names.vector(1).data
        if not name:
            raise ClientHelloError("empty ALPN protocol name")
        protocols.append(name)
    return tuple(protocols)


async def peek_client_hello(sock: socket.socket) -> ClientHello | None:
    """Wait for the ClientHello on an accepted non-blocking socket and read
    it without consuming it: the bytes stay for the TLS handshake.

    Returns None when the peer closes first; raises ClientHelloError for
    anything that is not a ClientHello. It waits as long as the peer takes:
    the caller bounds it (``asyncio.timeout``) and closes the connection.
    """
    loop = asyncio.get_running_loop()
    seen = -1
    while True:
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())
        try:
            data = sock.recv(MAX_HELLO_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            return None
        hello = client_hello(data)
        if hello is not None:
            return hello
        if len(data) == seen:
            # Readable with nothing new: a peek does not consume, so the
            # socket stays readable until more arrives. Wait a moment.
            await asyncio.sleep(0.01)
        seen = len(data)


async def answer_tls_alpn(sock: socket.socket, context: ssl.SSLContext) -> None:
    """Complete a TLS-ALPN-01 handshake on ``sock`` with ``context`` (from
    ``Challenges.context_for``) and close the connection: rfc8737:3 says the
    validator closes right after the handshake and sends no data. Failures
    end quietly; the caller bounds the time (``asyncio.timeout``)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    class _Close(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

    transport: asyncio.BaseTransport | None = None
    try:
        transport, _ = await loop.connect_accepted_socket(
            _Close, sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_SECONDS
        )
        await done
    except (OSError, ssl.SSLError):
        pass
    finally:
        if transport is not None:
            transport.close()
        else:
            with contextlib.suppress(OSError):
                sock.close()
