"""COMPRESS=DEFLATE (rfc4978): the sans-IO deflater and inflater (a bomb
inflates only as fast as it is read), and a real server over a socket (and
over TLS): a session goes on compressed, imaplib-style commands and literals
both ways; a corrupt stream ends the connection without a traceback."""

from __future__ import annotations

import re
import socket
import ssl
import zlib
from pathlib import Path

import pytest
from test_imap_transcript import ALICE, PLAIN, deliver, start

from conftest import Instance, free_port, make_tls
from estafeta.imap.compress import CHUNK, CompressError, Deflater, Inflater


def _client_deflate() -> zlib._Compress:
    return zlib.compressobj(6, zlib.DEFLATED, -15)


def test_deflater_output_is_whole_after_each_write() -> None:
    deflater = Deflater()
    inflate = zlib.decompressobj(-15)
    for line in (b"* OK one\r\n", b"* OK two\r\n" * 100, b""):
        assert inflate.decompress(deflater.compress(line)) == line


def test_inflater_is_bounded_and_fed_in_any_pieces() -> None:
    z = _client_deflate()
    data = b"a LOGIN x y\r\n" * 1000
    stream = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    for size in (1, 7, len(stream)):
        inflater = Inflater()
        out = b""
        for i in range(0, len(stream), size):
            inflater.feed(stream[i : i + size])
            while chunk := inflater.read():
                out += chunk
        assert out == data
    # a bomb: 100 MB of zeros in about 100 KB, read CHUNK at a time
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = bomb.compress(b"\0" * 100_000_000) + bomb.flush(zlib.Z_SYNC_FLUSH)
    inflater = Inflater()
    inflater.feed(compressed)
    first = inflater.read()
    assert len(first) == CHUNK and inflater.pending > 0  # the rest waits, compressed
    # a client that ends its stream (Z_FINISH) as it logs out: its last
    # command still counts; anything after the end does not
    finishing = _client_deflate()
    inflater = Inflater()
    inflater.feed(finishing.compress(b"z LOGOUT\r\n") + finishing.flush(zlib.Z_FINISH))
    assert inflater.read() == b"z LOGOUT\r\n"
    inflater.feed(b"more")
    with pytest.raises(CompressError):
        inflater.read()
    with pytest.raises(CompressError):
        broken = Inflater()
        broken.feed(b"\xff\xff\xff\xff")
        broken.read()


class _Compressed:
    """A client side of a compressed IMAP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = _client_deflate()
        self.inflate = zlib.decompressobj(-15)
        self.got = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, pattern: bytes) -> bytes:
        while not re.search(pattern, self.got):
            chunk = self.sock.recv(65536)
            assert chunk, self.got
            self.got += self.inflate.decompress(chunk)
        found, self.got = self.got, b""
        return found


def _plain_until(sock: socket.socket, pattern: bytes) -> bytes:
    got = b""
    while not re.search(pattern, got):
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    return got


def _start_tls(tmp_path: Path) -> Instance:
    """A server whose IMAP port offers STARTTLS (and plaintext AUTH, a loopback test)."""
    root = tmp_path / "tls"
    root.mkdir()
    section, _ca = make_tls(root)
    server = Instance(root, free_port(), imap_port=free_port(), extra_config=section)
    server.auth_config = "allow_plaintext = true\n"
    server.write_config()
    server.add_user(ALICE)
    server.start()
    deliver(server.port)
    return server


@pytest.mark.parametrize("tls", [False, True])
def test_a_compressed_session(tmp_path: Path, tls: bool) -> None:
    server = _start_tls(tmp_path) if tls else start(tmp_path, "compress")
    try:
        raw = socket.create_connection(("127.0.0.1", server.imap_port), timeout=10)
        sock: socket.socket = raw
        greeting = _plain_until(sock, rb"\r\n")
        assert b"COMPRESS=DEFLATE" not in greeting  # rfc4978: a command of the logged-in state
        if tls:
            sock.sendall(b"t STARTTLS\r\n")
            _plain_until(sock, rb"t OK")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(raw)
        sock.sendall(f"a AUTHENTICATE PLAIN {PLAIN}\r\nb CAPABILITY\r\n".encode())
        assert b"COMPRESS=DEFLATE" in _plain_until(sock, rb"b OK")
        sock.sendall(b"c COMPRESS FOO\r\n")
        assert re.search(rb"c BAD", _plain_until(sock, rb"c BAD[^\r]*\r\n"))
        sock.sendall(b"d COMPRESS DEFLATE\r\n")
        assert _plain_until(sock, rb"d OK[^\r]*\r\n").endswith(b"d OK DEFLATE active\r\n")
        client = _Compressed(sock)
        client.send(b"e SELECT INBOX\r\n")
        assert b"* 2 EXISTS" in client.until(rb"e OK[^\r]*\r\n")
        body = b"Subject: packed\r\n\r\n" + b"text line\r\n" * 5000
        client.send(b"f APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
        client.until(rb"f OK[^\r]*\r\n")
        client.send(b"g FETCH 3 BODY.PEEK[]\r\ng2 CAPABILITY\r\n")
        fetched = client.until(rb"g2 OK[^\r]*\r\n")
        assert body in fetched
        assert b"COMPRESS=DEFLATE" not in fetched.split(b"* CAPABILITY")[1].split(b"\r\n")[0]
        client.send(b"h COMPRESS DEFLATE\r\n")  # rfc4978:3: already active, BAD
        assert b"h BAD" in client.until(rb"h BAD[^\r]*\r\n")
        client.send(b"z LOGOUT\r\n")
        assert b"* BYE" in client.until(rb"z OK[^\r]*\r\n")
        sock.close()
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def test_a_corrupt_stream_ends_the_connection(tmp_path: Path) -> None:
    server = start(tmp_path, "corrupt")
    try:
        with socket.create_connection(("127.0.0.1", server.imap_port), timeout=10) as sock:
            _plain_until(sock, rb"\r\n")
            sock.sendall(f"a AUTHENTICATE PLAIN {PLAIN}\r\nb COMPRESS DEFLATE\r\n".encode())
            _plain_until(sock, rb"b OK[^\r]*\r\n")
            sock.sendall(b"\xff\xfe\xfd\xfc" * 16)
            inflate = zlib.decompressobj(-15)
            got = b""
            while chunk := sock.recv(65536):
                got += inflate.decompress(chunk)
            assert b"* BYE" in got
        # the server goes on serving others
        with socket.create_connection(("127.0.0.1", server.imap_port), timeout=10) as sock:
            assert b"* OK" in _plain_until(sock, rb"\r\n")
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
