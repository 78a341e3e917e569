"""COMPRESS=DEFLATE (rfc4978): the sans-IO deflater and inflater (a bomb
inflates only as fast as it is read; a compressed transcript parses the
same fed whole or a byte at a time), and a real server over a socket (and
over TLS): a session goes on compressed, every command of the transcript
test through a compressing proxy, whole and a byte at a time; a bomb
costs the server no memory; a corrupt stream ends the connection with
``* BYE`` and without a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_imap_parser import run
from test_imap_transcript import ALICE, PLAIN, SCRIPT, deliver, run_script, start

from conftest import Instance, tls_instance
from estafeta.imap import commands as c
from estafeta.imap.compress import (
    BYE_CORRUPT,
    CHUNK,
    CompressError,
    Deflater,
    Inflater,
    install,
)
from estafeta.imap.parser import Command, Continue, Event, NeedData, ParseError, Parser

MiB = 1024 * 1024


def _client_deflate(level: int = 6) -> zlib._Compress:
    return zlib.compressobj(level, zlib.DEFLATED, -15)


def _packed(*pieces: bytes) -> bytes:
    """What a client sends: each piece compressed and sync-flushed."""
    z = _client_deflate()
    return b"".join(z.compress(p) + z.flush(zlib.Z_SYNC_FLUSH) for p in pieces)


# -- sans-IO -------------------------------------------------------------------------------


def test_deflater_output_is_whole_after_each_flush() -> None:
    deflater = Deflater()
    inflate = zlib.decompressobj(-15)
    for burst in ([b"* OK one\r\n"], [b"* 1 EXISTS\r\n", b"a OK done\r\n"] * 100, []):
        packed = b"".join(deflater.compress(line) for line in burst) + deflater.flush()
        assert inflate.decompress(packed) == b"".join(burst)
    # one flush per burst: a hundred lines cost less than a flush each
    deflater, z = Deflater(), _client_deflate()
    lines = [b"* %d FETCH (FLAGS (\\Seen))\r\n" % n for n in range(100)]
    burst = b"".join(deflater.compress(line) for line in lines) + deflater.flush()
    each = b"".join(z.compress(line) + z.flush(zlib.Z_SYNC_FLUSH) for line in lines)
    assert len(burst) < len(each) // 2


def _inflate_all(inflater: Inflater) -> bytes:
    out = b""
    while chunk := inflater.read():
        assert len(chunk) <= CHUNK
        out += chunk
    return out


def test_inflater_is_bounded_and_fed_in_any_pieces() -> None:
    data = b"a LOGIN x y\r\n" * 1000
    stream = _packed(data)
    for size in (1, 7, len(stream)):
        inflater = Inflater()
        out = b""
        for i in range(0, len(stream), size):
            inflater.feed(stream[i : i + size])
            out += _inflate_all(inflater)
        assert out == data
    # a bomb: 100 MB of zeros in about 100 KB, read CHUNK at a time
    bomb = _client_deflate(9)
    compressed = bomb.compress(b"\0" * 100_000_000) + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(compressed) < 200_000
    inflater = Inflater()
    inflater.feed(compressed)
    first = inflater.read()
    assert len(first) == CHUNK and inflater.pending > 0  # the rest waits, compressed


def test_inflater_refuses_what_is_not_deflate_or_follows_its_end() -> None:
    broken = Inflater()
    broken.feed(b"\xff\xff\xff\xff")
    with pytest.raises(CompressError):
        broken.read()
    # a client that ends its stream (Z_FINISH): what came before it counts,
    # anything after it is an error
    z = _client_deflate()
    ended = Inflater()
    ended.feed(z.compress(b"z LOGOUT\r\n") + z.flush(zlib.Z_FINISH))
    assert _inflate_all(ended) == b"z LOGOUT\r\n"
    ended.feed(b"\x00")
    with pytest.raises(CompressError):
        ended.read()


def _inflated_events(stream: bytes, chunk: int) -> list[Event]:
    """``stream`` fed ``chunk`` octets at a time through an Inflater into
    the session's parser, as the session reads it: the parser's events."""
    inflater, parser = Inflater(), Parser()
    parser.set_authenticated(True)
    events: list[Event] = []
    for at in range(0, len(stream), chunk):
        inflater.feed(stream[at : at + chunk])
        while piece := inflater.read():
            parser.receive_data(piece)
            while not isinstance(event := parser.next_event(), NeedData):
                events.append(event)
            assert len(piece) <= CHUNK and len(parser._buf) <= parser.max_line + CHUNK
    return events


TRANSCRIPT = [
    b"a1 SELECT INBOX\r\n",
    b"a2 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
    b"a3 APPEND INBOX (\\Seen) {14+}\r\nSubject: x\r\n\r\n\r\n",
    b"a4 APPEND INBOX {5}\r\n",
    b"hello\r\n",
    b"a5 UID STORE 1:3 +FLAGS.SILENT (\\Deleted)\r\na6 NOOP\r\n",
    b"a7 LOGOUT\r\n",
]


def test_a_compressed_transcript_parses_the_same_whole_and_byte_by_byte() -> None:
    plain = run(b"".join(TRANSCRIPT), sizes=[1])
    assert len([e for e in plain if isinstance(e, Command)]) == 7
    assert Continue in {type(e) for e in plain}
    stream = _packed(*TRANSCRIPT)
    assert _inflated_events(stream, len(stream)) == plain
    assert _inflated_events(stream, 1) == plain


def test_an_inflated_bomb_meets_the_parser_line_limit() -> None:
    # 256 MiB of one line in a few hundred KB: inflated CHUNK by CHUNK, the
    # parser drops the over-long line as it comes and goes on after it.
    z = _client_deflate(9)
    line = b"x1 NOOP " + b"a" * 16 * MiB
    stream = z.compress(line) + b"".join(z.compress(b"a" * 16 * MiB) for _ in range(15))
    stream += z.compress(b"\r\nx2 NOOP\r\n") + z.flush(zlib.Z_SYNC_FLUSH)
    assert len(stream) < 512 * 1024
    events = _inflated_events(stream, 64 * 1024)
    assert len(events) == 2 and isinstance(events[0], ParseError), events
    assert events[0].tag == "x1" and "too long" in events[0].text and not events[0].fatal
    assert events[1] == Command("x2", "NOOP", c.Noop())


# -- the layer under an asyncio stream pair -------------------------------------------------


async def _through_the_layer(data: bytes) -> tuple[bytes, bytes]:
    """``data`` sent compressed, then EOF, to a stream pair with the layer
    installed, read back; and what the pair writes in one burst, inflated."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader, writer = await asyncio.open_connection(sock=ours)
        install(reader, writer)
        theirs.sendall(_packed(data))
        theirs.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := await reader.read(65536):
            got += chunk
        writer.write(b"* OK one\r\n")
        writer.write(b"* OK two\r\n")
        await writer.drain()
        await asyncio.sleep(0)  # the burst's flush
        sent = zlib.decompressobj(-15).decompress(theirs.recv(65536))
        writer.close()
        return got, sent


def test_the_layer_keeps_flow_control_and_the_eof_after_the_data() -> None:
    # 8 MiB from a few KiB: the reader fills and pauses inflation, the EOF
    # behind the data waits until all of it is read.
    data = b"a NOOP\r\n" * MiB
    got, sent = asyncio.run(_through_the_layer(data))
    assert got == data
    assert sent == b"* OK one\r\n* OK two\r\n"


# -- a real server -------------------------------------------------------------------------


class _Compressed:
    """A client side of a compressed IMAP connection."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.out = _client_deflate()
        self.inflate = zlib.decompressobj(-15)
        self.got = self.inflate.decompress(leftover)

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, pattern: bytes) -> bytes:
        while not re.search(pattern, self.got):
            chunk = self.sock.recv(65536)
            assert chunk, self.got
            self.got += self.inflate.decompress(chunk)
        found, self.got = self.got, b""
        return found

    def rest(self) -> bytes:
        """All the server sends until it closes the connection."""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := self.sock.recv(65536):
                self.got += self.inflate.decompress(chunk)
        return self.got


def _plain_until(sock: socket.socket, pattern: bytes) -> tuple[bytes, bytes]:
    """What was received up to the end of ``pattern`` and what came after it."""
    got = b""
    while not (m := re.search(pattern, got)):
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    return got[: m.end()], got[m.end() :]


def _start_tls(tmp_path: Path) -> Instance:
    """A server whose IMAP port offers STARTTLS (and plaintext AUTH, a loopback test)."""
    root = tmp_path / "tls"
    root.mkdir()
    server = tls_instance(root, "imap_port", auth_config="allow_plaintext = true\n")
    server.write_config()
    server.add_user(ALICE)
    server.start()
    deliver(server.port)
    return server


@contextlib.contextmanager
def _server(tmp_path: Path, tls: bool, name: str) -> Iterator[Instance]:
    server = _start_tls(tmp_path) if tls else start(tmp_path, name)
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()


def _logged_in(server: Instance, tls: bool) -> socket.socket:
    """A connection to ``server``, after STARTTLS when ``tls``, logged in."""
    raw = socket.create_connection(("127.0.0.1", server.imap_port), timeout=10)
    sock: socket.socket = raw
    greeting, _ = _plain_until(sock, rb"\r\n")
    assert b"COMPRESS=DEFLATE" not in greeting  # rfc4978:5 command-auth
    if tls:
        sock.sendall(b"t STARTTLS\r\n")
        _plain_until(sock, rb"t OK[^\r]*\r\n")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(raw)
    sock.sendall(f"a AUTHENTICATE PLAIN {PLAIN}\r\n".encode())
    _plain_until(sock, rb"a OK[^\r]*\r\n")
    return sock


def _compress(sock: socket.socket) -> _Compressed:
    sock.sendall(b"d COMPRESS DEFLATE\r\n")
    reply, after = _plain_until(sock, rb"d OK[^\r]*\r\n")
    assert reply.endswith(b"d OK DEFLATE active\r\n")
    return _Compressed(sock, after)


@pytest.mark.parametrize("tls", [False, True])
def test_a_compressed_session(tmp_path: Path, tls: bool) -> None:
    with _server(tmp_path, tls, "compress") as server:
        sock = _logged_in(server, tls)
        sock.sendall(b"b CAPABILITY\r\nc COMPRESS FOO\r\n")
        reply, _ = _plain_until(sock, rb"c [A-Z]+[^\r]*\r\n")
        assert b"COMPRESS=DEFLATE" in reply
        assert b"c BAD" in reply  # rfc4978:3 an unknown argument
        client = _compress(sock)
        client.send(b"e SELECT INBOX\r\n")
        assert b"* 2 EXISTS" in client.until(rb"e OK[^\r]*\r\n")
        body = b"Subject: packed\r\n\r\n" + b"text line\r\n" * 5000
        client.send(b"f APPEND INBOX {%d}\r\n" % len(body))
        client.until(rb"\+[^\r]*\r\n")
        client.send(body + b"\r\n")
        client.until(rb"f OK[^\r]*\r\n")
        client.send(b"g FETCH 3 BODY.PEEK[]\r\ng2 CAPABILITY\r\n")
        fetched = client.until(rb"g2 OK[^\r]*\r\n")
        assert body in fetched
        assert b"COMPRESS=DEFLATE" not in fetched.split(b"* CAPABILITY")[1].split(b"\r\n")[0]
        client.send(b"h COMPRESS DEFLATE\r\n")  # rfc4978:3 already active: BAD
        assert b"h BAD [COMPRESSIONACTIVE]" in client.until(rb"h BAD[^\r]*\r\n")
        client.send(b"i UID FETCH 1:* (FLAGS)\r\n")  # still in step
        assert len(re.findall(rb"\* \d+ FETCH", client.until(rb"i OK[^\r]*\r\n"))) == 3
        client.send(b"z LOGOUT\r\n")
        assert b"* BYE" in client.until(rb"z OK[^\r]*\r\n")
        sock.close()


@pytest.mark.parametrize("tls", [False, True])
def test_a_corrupt_stream_ends_the_connection(tmp_path: Path, tls: bool) -> None:
    with _server(tmp_path, tls, "corrupt") as server:
        with _logged_in(server, tls) as sock:
            client = _compress(sock)
            client.send(b"e NOOP\r\n")
            client.until(rb"e OK[^\r]*\r\n")
            sock.sendall(b"\xff\xfe\xfd\xfc" * 16)
            assert client.rest().endswith(BYE_CORRUPT)
        # the server goes on serving others
        with socket.create_connection(("127.0.0.1", server.imap_port), timeout=10) as sock:
            assert b"* OK" in _plain_until(sock, rb"\r\n")[0]


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory, in octets (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert m is not None
    return int(m.group(1)) * 1024


def test_a_bomb_costs_the_server_no_memory(tmp_path: Path) -> None:
    # 256 MiB in one command line, sent as about 250 KiB: the server inflates
    # it only as fast as its parser drops it, answers BAD and goes on.
    with _server(tmp_path, False, "bomb") as server:
        assert server.process is not None
        with _logged_in(server, False) as sock:
            client = _compress(sock)
            client.send(b"e SELECT INBOX\r\n")
            client.until(rb"e OK[^\r]*\r\n")
            before = _peak_rss(server.process.pid)
            z = zlib.compressobj(9, zlib.DEFLATED, -15)
            block = b"a" * 16 * MiB
            sent = 0
            for piece in [b"x1 SEARCH TEXT "] + [block] * 16 + [b"\r\nx2 NOOP\r\n"]:
                packed = z.compress(piece)
                sock.sendall(packed)
                sent += len(packed)
            sock.sendall(z.flush(zlib.Z_SYNC_FLUSH))
            reply = client.until(rb"x2 OK[^\r]*\r\n")
            assert re.search(rb"x1 BAD [^\r]*too long", reply), reply
            assert sent < MiB // 2
            assert _peak_rss(server.process.pid) - before < 64 * MiB


class _CompressingProxy:
    """Between a plain client (``run_script``) and the server: plain until
    the AUTHENTICATE of ``auth_tag`` is answered; then the proxy sends
    COMPRESS DEFLATE before it passes that answer on, and from then on
    compresses what the client sends (every piece received, sync-flushed on
    its own: a byte at a time when the client sends so) and inflates what
    the server sends."""

    def __init__(self, imap_port: int, auth_tag: bytes = b"a3") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.imap_port = imap_port
        self.auth_tag = auth_tag
        self.auth_sent = threading.Event()
        self.compressing = threading.Event()
        self.threads = [threading.Thread(target=self._serve, daemon=True)]
        self.threads[0].start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.imap_port), timeout=30)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = threading.Thread(target=self._up, args=(client, upstream), daemon=True)
        up.start()
        self.threads.append(up)
        with client, upstream, contextlib.suppress(OSError):
            self._down(client, upstream)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        z, sent = _client_deflate(), b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.compressing.is_set():
                    data = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
                elif not self.auth_sent.is_set():
                    sent += data
                    if self.auth_tag + b" AUTHENTICATE" in sent:
                        self.auth_sent.set()
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)

    def _down(self, client: socket.socket, upstream: socket.socket) -> None:
        held, inflate = b"", zlib.decompressobj(-15)
        while not self.compressing.is_set():
            chunk = upstream.recv(65536)
            if not chunk:
                return
            if not self.auth_sent.is_set():
                client.sendall(chunk)
                continue
            held += chunk
            if re.search(rb"(^|\n)" + self.auth_tag + rb" OK[^\r]*\r\n", held):
                upstream.sendall(b"zz COMPRESS DEFLATE\r\n")
                reply, after = _plain_until(upstream, rb"zz OK DEFLATE active\r\n")
                self.compressing.set()
                held += reply.split(b"zz OK")[0]
                client.sendall(held)
                client.sendall(inflate.decompress(after))
        while chunk := upstream.recv(65536):
            client.sendall(inflate.decompress(chunk))

    def close(self) -> None:
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=10)


def _run_compressed(tmp_path: Path, name: str, byte_at_a_time: bool) -> str:
    server = start(tmp_path, name)
    try:
        proxy = _CompressingProxy(server.imap_port)
        try:
            transcript = run_script(proxy.port, byte_at_a_time=byte_at_a_time, script=SCRIPT)
        finally:
            proxy.close()
        assert proxy.compressing.is_set()
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
    return transcript


@pytest.mark.slow
def test_every_command_compressed_whole_and_byte_by_byte(tmp_path: Path) -> None:
    # The transcript test's script with COMPRESS DEFLATE right after its
    # login: every command, response and literal goes through DEFLATE.
    whole = _run_compressed(tmp_path, "whole", byte_at_a_time=False)
    one_byte = _run_compressed(tmp_path, "bytes", byte_at_a_time=True)
    assert whole == one_byte
