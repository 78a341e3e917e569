"""Issue 14 item 5: FETCH amplification.

The attack: after a 1 MiB APPEND, ``FETCH 1 (BODY.PEEK[]<0.2000000>
BODY.PEEK[]<1.2000000> ...)`` with 300 items (7.4 KB of command) made the
server build a 298 MiB reply in memory before sending a byte (peak RSS
1.86 GB); 600 items peaked at 3.7 GB. Responses were built for 500 messages
at a time and only fully identical items were merged.

Now the response is streamed message by message and item by item, with
back-pressure (estafeta.imap.stream): the server holds one message file and
a bounded buffer whatever the client asks for, and a client that stops
reading holds no more. Each test checks, against a real server, that its
RSS stays within 64 MiB of what it was before the FETCH, that the client gets
the whole response, octet for octet, and that another client's SMTP greeting
and IMAP LOGIN are answered within 1 s while it streams. Beyond
``fetch.MAX_ITEMS`` (1000) items a FETCH gets NO [LIMIT] (rfc5530:3).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._responsiveness import Probe, RssSampler, imap_login, prepared_server, rss
from tests.security.conftest import Client, MailServer

MIB = 1024 * 1024
RSS_BOUND = 64 * MIB
# Under Instance.write_config's max_message_size (1048576).
MESSAGE_SIZE = 1_040_000


def big_message(size: int = MESSAGE_SIZE) -> bytes:
    """A message of ``size`` octets whose every line is different, so that a
    literal from the wrong offset cannot compare equal."""
    header = b"From: alice@example.test\r\nTo: alice@example.test\r\nSubject: big\r\n\r\n"
    lines = []
    total = len(header)
    n = 0
    while total < size:
        line = b"%08d the quick brown fox jumps over the lazy dog %08x\r\n" % (n, n * 2654435761)
        lines.append(line)
        total += len(line)
        n += 1
    return (header + b"".join(lines))[:size]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailServer]:
    with prepared_server(tmp_path, lambda root: None) as server:
        yield server


def append(client: Client, data: bytes) -> None:
    client.send(b"A APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    _, tagged = client.until_tagged("A")
    assert tagged.startswith(b"A OK"), tagged


class Reader:
    """Reads a FETCH response off a socket without keeping it (300+ MiB)."""

    def __init__(self, client: Client) -> None:
        self.sock: socket.socket = client.sock
        self.buffer = bytearray(client.buffer)
        client.buffer = b""
        self.received = 0

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.received += len(chunk)
        self.buffer += chunk

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            self._more()
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def partial_fetch(count: int) -> bytes:
    items = " ".join(f"BODY.PEEK[]<{i}.2000000>" for i in range(count))
    return f"F FETCH 1 ({items})\r\n".encode()


def read_partials(reader: Reader, message: bytes, count: int) -> int:
    """Read the ``* 1 FETCH`` response of ``partial_fetch(count)``, checking
    every literal; the octets of literal data read."""
    literal_octets = 0
    line = reader.line()
    assert line.startswith(b"* 1 FETCH ("), line[:200]
    head = line[len(b"* 1 FETCH (") :]
    for i in range(count):
        expected_head = b"BODY[]<%d> {%d}\r\n" % (i, len(message) - i)
        if i:
            expected_head = b" " + expected_head
        assert head == expected_head, (i, head[:200])
        data = reader.exactly(len(message) - i)
        assert data == message[i:], f"literal {i} differs"
        literal_octets += len(data)
        head = reader.line()
    assert head == b")\r\n", head[:200]
    tagged = reader.line()
    assert tagged.startswith(b"F OK"), tagged
    return literal_octets


@pytest.mark.parametrize("count", [300, 600])
def test_overlapping_partials_are_streamed_in_bounded_memory(
    server: MailServer, count: int
) -> None:
    message = big_message()
    client = imap_login(server)
    append(client, message)
    _, tagged = client.imap("S", "SELECT INBOX")
    assert tagged.startswith(b"S OK"), tagged
    # Warm up: one partial of the message, so that the baseline has seen it.
    client.send(partial_fetch(1))
    assert read_partials(Reader(client), message, 1) == len(message)
    baseline = rss(server)
    expected = sum(len(message) - i for i in range(count))
    started = time.monotonic()
    with Probe(server) as probe, RssSampler(server) as memory:
        probe.wait_rounds(1)
        client.send(partial_fetch(count))
        reader = Reader(client)
        got = read_partials(reader, message, count)
        probe.wait_rounds(len(probe.logins) + 1)
    elapsed = time.monotonic() - started
    assert got == expected
    assert reader.received >= expected
    grown = memory.peak - baseline
    assert grown < RSS_BOUND, f"RSS grew {grown / MIB:.0f} MiB for {expected / MIB:.0f} MiB sent"
    worst = probe.worst()
    assert worst["smtp_greeting"] < 1.0, (worst, probe.errors)
    assert worst["imap_login"] < 1.0, (worst, probe.errors)
    assert len(probe.logins) >= 2, f"no probe while streaming ({elapsed:.1f} s)"
    assert "Traceback" not in server.log_text()
    client.close()


def test_a_client_that_does_not_read_pins_little_memory(server: MailServer) -> None:
    message = big_message()
    client = imap_login(server)
    append(client, message)
    _, tagged = client.imap("S", "SELECT INBOX")
    assert tagged.startswith(b"S OK"), tagged
    client.send(partial_fetch(1))
    read_partials(Reader(client), message, 1)
    baseline = rss(server)
    count = 300
    with Probe(server) as probe, RssSampler(server) as memory:
        client.send(partial_fetch(count))
        time.sleep(3)  # the client reads nothing: the server must wait, not buffer
        stalled_peak = memory.peak
        probe.wait_rounds(len(probe.logins) + 2)
        got = read_partials(Reader(client), message, count)
    assert got == sum(len(message) - i for i in range(count))
    grown = stalled_peak - baseline
    assert grown < RSS_BOUND, f"RSS grew {grown / MIB:.0f} MiB while the client did not read"
    assert memory.peak - baseline < RSS_BOUND
    worst = probe.worst()
    assert worst["smtp_greeting"] < 1.0, (worst, probe.errors)
    assert worst["imap_login"] < 1.0, (worst, probe.errors)
    # The session goes on afterwards.
    _, tagged = client.imap("N", "NOOP")
    assert tagged.startswith(b"N OK"), tagged
    client.close()


def test_too_many_items_is_no_limit(server: MailServer) -> None:
    message = big_message(3000)
    client = imap_login(server)
    append(client, message)
    _, tagged = client.imap("S", "SELECT INBOX")
    assert tagged.startswith(b"S OK"), tagged
    # 1000 items are served (here 1000 partials of a 3,000-octet message)...
    client.send(partial_fetch(1000))
    read_partials(Reader(client), message, 1000)
    # ... 1001 are refused with NO [LIMIT] (rfc5530:3), and nothing is sent.
    client.send(partial_fetch(1001))
    untagged, tagged = client.until_tagged("F")
    assert untagged == []
    assert tagged.startswith(b"F NO [LIMIT] "), tagged
    _, tagged = client.imap("N", "NOOP")
    assert tagged.startswith(b"N OK"), tagged
    assert "Traceback" not in server.log_text()
    client.close()
