"""TLS connections close promptly when the session ends (issue 21, item 10).

After LOGOUT (QUIT) the server sends its close_notify and must then close
the TCP connection soon, whether or not the client answers with its own
close_notify: asyncio waits 30 s for it by default, and a client that
waits for the disconnect hangs that long. The client here reads the
server's close_notify and then only watches the socket.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from conftest import Instance, tls_instance

# The bound the server must meet (it closes after at most 2 s of waiting).
PROMPT = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Instance:
    root = tmp_path_factory.mktemp("tlsclose")
    instance = tls_instance(root, "imap_port", "imaps_port", "pop3s_port", "submissions_port")
    instance.write_config()
    instance.add_user("alice@example.test")
    instance.start()
    yield instance  # type: ignore[misc]
    instance.stop()


def context(root: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(root / "ca.pem"))


def seconds_to_tcp_close(tls: ssl.SSLSocket, end: bytes, done: bytes) -> float:
    """Send ``end``, read up to ``done`` and the close_notify; then how long
    until the TCP connection closes, our close_notify never sent."""
    tls.sendall(end)
    data = b""
    while done not in data:
        chunk = tls.recv(4096)
        assert chunk, data
        data += chunk
    start = time.monotonic()
    while tls.recv(4096):  # b"" at the server's close_notify
        pass
    raw = socket.socket(fileno=os.dup(tls.fileno()))  # the TCP socket under TLS
    raw.settimeout(60)
    try:
        assert raw.recv(1) == b""
    except ConnectionResetError:
        pass
    finally:
        raw.close()
    return time.monotonic() - start


@pytest.mark.parametrize(
    ("port", "end", "done"),
    [
        ("imaps_port", b"a LOGOUT\r\n", b"a OK"),
        ("pop3s_port", b"QUIT\r\n", b"+OK"),
        ("submissions_port", b"QUIT\r\n", b"221"),
    ],
)
def test_implicit_tls_closes_promptly(server: Instance, port: str, end: bytes, done: bytes) -> None:
    raw = socket.create_connection(("127.0.0.1", getattr(server, port)), timeout=60)
    with context(server.root).wrap_socket(raw, server_hostname="mx.example.test") as tls:
        assert tls.recv(4096)  # the greeting
        assert seconds_to_tcp_close(tls, end, done) < PROMPT


def test_starttls_closes_promptly(server: Instance) -> None:
    raw = socket.create_connection(("127.0.0.1", server.imap_port), timeout=60)
    assert raw.recv(4096).startswith(b"* OK")
    raw.sendall(b"s STARTTLS\r\n")
    assert b"s OK" in raw.recv(4096)
    with context(server.root).wrap_socket(raw, server_hostname="mx.example.test") as tls:
        assert seconds_to_tcp_close(tls, b"a LOGOUT\r\n", b"a OK") < PROMPT


def test_smtp_starttls_closes_promptly(server: Instance) -> None:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=60)
    client.starttls(context=context(server.root))
    tls = client.sock
    assert isinstance(tls, ssl.SSLSocket)
    with tls:
        assert seconds_to_tcp_close(tls, b"QUIT\r\n", b"221") < PROMPT
