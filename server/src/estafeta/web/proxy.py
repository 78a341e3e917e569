"""The PROXY protocol (HAProxy's, versions 1 and 2) in front of http/https.

When a TLS-passthrough front (nginx's stream module with ssl_preread, say,
sharing port 443 with a webmail) hands connections to estafeta, the client's
address would be the front's. The front says who the client is in a header
before the first byte of TLS; estafeta reads it, from the addresses of
``[web] proxy_protocol`` only (and requires it from them), and counts,
limits, logs and guards logins by the address in it.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
(cited below as ``proxy-protocol:2.1`` and so on).

:func:`parse` is sans-IO: it takes the bytes that came so far and returns
the header and its length, None while it is incomplete, or raises
:class:`ProxyError`. :func:`read` takes the header off a socket, and not a
byte more (the TLS handshake follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass

# proxy-protocol:2.1: "PROXY" ... CRLF, 107 bytes at most.
V1_MAX = 107
# proxy-protocol:2.2: the 12-byte signature, then version/command, family,
# and the length of what follows.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD = 16
# Addresses and TLVs; fronts send some TLVs (ALPN, authority); a bound.
V2_MAX_BODY = 2048


class ProxyError(Exception):
    """Not a PROXY header: the connection is closed."""


@dataclass(frozen=True)
class ProxyHeader:
    # The client's address, or None: the front's own connection (LOCAL,
    # UNKNOWN), whose address stays the one the socket has.
    source: str | None
    length: int


def parse(data: bytes) -> ProxyHeader | None:
    if len(data) >= 1 and data[:1] == b"P":
        return _v1(data)
    if len(data) >= 1 and data[:1] == b"\r":
        return _v2(data)
    if data:
        raise ProxyError("no PROXY header")
    return None


def _v1(data: bytes) -> ProxyHeader | None:
    start = data[:6]
    if b"PROXY "[: len(start)] != start:
        raise ProxyError("not a PROXY v1 line")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 line longer than 107 bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line not ASCII") from None
    parts = line.split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyError("not a PROXY v1 line")
    if parts[1] == "UNKNOWN":  # proxy-protocol:2.1: the rest is to be ignored
        return ProxyHeader(None, end + 2)
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyError("PROXY v1: TCP4 or TCP6 and four fields expected")
    kind = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source = kind(parts[2])
        kind(parts[3])
        ports = [int(p) for p in parts[4:6]]
    except ValueError:
        raise ProxyError("PROXY v1: bad address or port") from None
    # proxy-protocol:2.1: ports in decimal, 0-65535, no leading zeros.
    if any(not 0 <= p <= 65535 for p in ports) or any(
        p != "0" and p.startswith("0") for p in parts[4:6]
    ):
        raise ProxyError("PROXY v1: bad port")
    return ProxyHeader(str(source), end + 2)


def _v2(data: bytes) -> ProxyHeader | None:
    if data[: len(V2_SIGNATURE)] != V2_SIGNATURE[: len(data)]:
        raise ProxyError("no PROXY v2 signature")
    if len(data) < V2_HEAD:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command not in (0, 1):
        raise ProxyError("PROXY v2: unknown version or command")
    family = data[13]
    body = int.from_bytes(data[14:16], "big")
    if body > V2_MAX_BODY:
        raise ProxyError("PROXY v2: header too long")
    if len(data) < V2_HEAD + body:
        return None
    length = V2_HEAD + body
    if command == 0:  # LOCAL: the front's own connection (health checks)
        return ProxyHeader(None, length)
    # proxy-protocol:2.2: 0x11 TCP over IPv4 (12 bytes), 0x21 over IPv6 (36).
    if family == 0x11 and body >= 12:
        return ProxyHeader(str(ipaddress.IPv4Address(data[16:20])), length)
    if family == 0x21 and body >= 36:
        return ProxyHeader(str(ipaddress.IPv6Address(data[16:32])), length)
    if family == 0x00:  # UNSPEC
        return ProxyHeader(None, length)
    raise ProxyError("PROXY v2: not TCP over IPv4 or IPv6")


async def read(sock: socket.socket) -> ProxyHeader:
    """Take the header off a non-blocking socket (ProxyError); it waits as
    long as the peer takes: the caller bounds it (``asyncio.timeout``)."""
    loop = asyncio.get_running_loop()
    seen = -1
    while True:
        try:
            data = sock.recv(V2_HEAD + V2_MAX_BODY, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        if data == b"":
            raise ProxyError("closed before the PROXY header")
        if data is not None:
            header = parse(data)
            if header is not None:
                taken = b""
                while len(taken) < header.length:  # all of it is there: peeked
                    taken += sock.recv(header.length - len(taken))
                return header
            if len(data) == seen:
                # A peek does not consume: readiness stays; wait a moment.
                await asyncio.sleep(0.01)
                continue
            seen = len(data)
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), readable.set_result, None)
        try:
            with contextlib.suppress(asyncio.InvalidStateError):
                await readable
        finally:
            loop.remove_reader(sock.fileno())
