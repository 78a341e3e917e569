"""The PROXY protocol in front of https: the sans-IO parser fed whole, byte
by byte and with garbage, then a real estafeta behind a "front" that sends
the header before its TLS handshake."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import time
from pathlib import Path

import pytest

from conftest import Instance, free_port, make_tls
from estafeta.web import proxy

V1 = b"PROXY TCP4 203.0.113.9 192.0.2.1 56324 443\r\n"
V1_6 = b"PROXY TCP6 2001:db8::9 2001:db8::1 56324 443\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
V2 = (
    proxy.V2_SIGNATURE
    + bytes([0x21, 0x11])
    + (12 + 7).to_bytes(2, "big")
    + bytes([203, 0, 113, 9, 192, 0, 2, 1])
    + (56324).to_bytes(2, "big")
    + (443).to_bytes(2, "big")
    + bytes([0x01, 0x00, 0x04])
    + b"h2\x00\x00"  # a TLV (ALPN), skipped
)
V2_6 = (
    proxy.V2_SIGNATURE
    + bytes([0x21, 0x21])
    + (36).to_bytes(2, "big")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::9")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + bytes(4)
)
V2_LOCAL = proxy.V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
TLS = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"  # what follows the header


@pytest.mark.parametrize(
    ("header", "source"),
    [
        (V1, "203.0.113.9"),
        (V1_6, "2001:db8::9"),
        (V1_UNKNOWN, None),
        (V2, "203.0.113.9"),
        (V2_6, "2001:db8::9"),
        (V2_LOCAL, None),
    ],
)
def test_headers_parse_whole_and_growing_byte_by_byte(header: bytes, source: str | None) -> None:
    assert proxy.parse(header + TLS) == proxy.ProxyHeader(source, len(header))
    for cut in range(len(header)):
        assert proxy.parse(header[:cut]) is None, cut


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        TLS,
        b"PROXY TCP4 203.0.113.9 192.0.2.1 56324\r\n",
        b"PROXY TCP4 2001:db8::9 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.9 192.0.2.1 080 443\r\n",  # leading zero
        b"PROXY TCP4 203.0.113.9 192.0.2.1 70000 443\r\n",
        b"PROXY UDP4 203.0.113.9 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 " + b"1" * 120,  # no CRLF within 107 bytes
        b"PROXX ",
        proxy.V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),  # version 3
        proxy.V2_SIGNATURE + bytes([0x21, 0x11]) + (4096).to_bytes(2, "big"),
        proxy.V2_SIGNATURE + bytes([0x21, 0x31, 0, 4]) + bytes(4),  # AF_UNIX
        b"\r\n\r\nXX",
    ],
)
def test_what_is_not_a_header_is_refused(data: bytes) -> None:
    with pytest.raises(proxy.ProxyError):
        proxy.parse(data)


def test_garbage_never_raises_anything_else() -> None:
    rng = random.Random(20)
    seeds = [V1, V1_6, V2, V2_6, V2_LOCAL]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randrange(len(data) + 1)]
        with contextlib.suppress(proxy.ProxyError):
            proxy.parse(bytes(data))


@pytest.fixture
def behind_a_front(tmp_path: Path) -> tuple[Instance, ssl.SSLContext]:
    tls_section, ca = make_tls(tmp_path)
    instance = Instance(
        tmp_path,
        free_port(),
        https_port=free_port(),
        http_port=free_port(),
        extra_config=tls_section
        + '[web]\nproxy_protocol = ["127.0.0.1/32"]\nproxy_protocol_listeners = ["https"]\n',
    )
    instance.write_config()
    instance.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield instance, context  # type: ignore[misc]
    instance.stop()


def get_healthz(port: int, context: ssl.SSLContext, header: bytes) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(header)
    with context.wrap_socket(raw, server_hostname="mx.example.test") as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: mx.example.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    return answer


def test_the_client_address_comes_from_the_header(
    behind_a_front: tuple[Instance, ssl.SSLContext],
) -> None:
    instance, context = behind_a_front
    header = b"PROXY TCP4 203.0.113.9 127.0.0.1 56324 443\r\n"
    assert get_healthz(instance.https_port, context, header).startswith(b"HTTP/1.1 200 ")
    assert get_healthz(instance.https_port, context, V2_LOCAL).startswith(b"HTTP/1.1 200 ")
    # Without the header: refused before any TLS.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        get_healthz(instance.https_port, context, b"")
    deadline = time.monotonic() + 10
    while "proxy_header_refused" not in instance.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    log = instance.log_text()
    assert "remote=203.0.113.9" in log  # the access log has the client, not the front
    assert "remote=127.0.0.1 host=mx.example.test method=GET path=/healthz" in log  # LOCAL


def test_listeners_not_named_take_no_header(
    behind_a_front: tuple[Instance, ssl.SSLContext],
) -> None:
    """proxy_protocol_listeners = ["https"]: the front is on 443 only, and a
    health check from the same address reaches http without a header."""
    instance, _ = behind_a_front
    with socket.create_connection(("127.0.0.1", instance.http_port), timeout=10) as plain:
        plain.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: mx.example.test\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := plain.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    # A PROXY header there is not taken for one: the request line is refused.
    with socket.create_connection(("127.0.0.1", instance.http_port), timeout=10) as plain:
        plain.sendall(
            b"PROXY TCP4 203.0.113.9 127.0.0.1 56324 80\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: mx.example.test\r\n\r\n"
        )
        answer = plain.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
