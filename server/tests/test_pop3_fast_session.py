"""POP3 RETR and TOP against a real server, byte for byte: leading dots,
bare LF and lone CR, no final CRLF, a message larger than the inline-read
limit with dot lines at its piece boundaries, a message expunged over IMAP
after the POP3 login, and all of it pipelined in one send.

The expected bytes come from the dot-stuffing and TOP code as they were
before the fast path (copied here), applied to what the server stored.
"""

from __future__ import annotations

import imaplib
import io
import poplib
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _fakeio import old_dot_stuff

from conftest import DOMAIN, PASSWORD, Instance, free_port

ALICE = f"alice@{DOMAIN}"
CHUNK = 256 * 1024  # pop3.session.CHUNK and INLINE_READ


def old_top(data: bytes, top: int) -> bytes:
    header_end = data.find(b"\r\n\r\n")
    if header_end < 0:
        return data if data.endswith(b"\r\n") else data + b"\r\n"
    lines = data[header_end + 4 :].split(b"\r\n")
    kept = b"\r\n".join(lines[:top]) + (b"\r\n" if top and len(lines) > top else b"")
    return data[: header_end + 4] + kept


def retr_reply(data: bytes) -> bytes:
    return b"+OK %d octets\r\n" % len(data) + old_dot_stuff(data)


def top_reply(data: bytes, top: int) -> bytes:
    return b"+OK Top of message follows\r\n" + old_dot_stuff(old_top(data, top))


def fill(data: bytes, target: int, ending: bytes) -> bytes:
    """``data`` and lines of at most ~200 octets up to ``target`` octets,
    the last one ending with ``ending`` (poplib takes lines of 2048 at most)."""
    line = b"y" * 98 + b"\r\n"
    data += line * max(0, (target - len(data) - 200) // len(line))
    return data + b"z" * (target - len(data) - len(ending)) + ending


def large_message() -> bytes:
    """More than CHUNK octets, with a "." exactly at each piece boundary:
    after a CRLF, after a bare LF, in the middle of a line, and after a
    CRLF split across the boundary."""
    data = fill(b"Subject: large\r\n\r\n", CHUNK, b"\r\n")
    data = fill(data + b".at the first boundary\r\n", 2 * CHUNK, b"\n")
    data = fill(data + b"..at the second boundary\r\n", 3 * CHUNK, b"x")
    data = fill(data + b".in the middle of a line\r\n", 4 * CHUNK, b"\r")
    assert len(data) == 4 * CHUNK
    return data + b"\n.after a CR|LF split\r\n.last line, no CRLF"


MESSAGES = [
    b"Subject: dots\r\n\r\n.first\r\n..two\r\n.\r\nend\r\n",
    b"Subject: bare LF\n\n.dot after a bare LF\nline\r\n.crlf dot\rlone CR\r.x\n.",
    b".Subject: starts with a dot\r\n\r\n.\r\n.\r\n",
    large_message(),
    b"Subject: expunged over IMAP meanwhile\r\n\r\n.gone\r\n",
    b"Subject: no final CRLF\r\n\r\nfirst\r\n.second\r\nlast line without CRLF",
]


def append_raw(port: int, messages: list[bytes]) -> None:
    """IMAP APPEND of each message as it is (imaplib's append would turn
    bare LFs and lone CRs into CRLF)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    recv_until(sock, b"\r\n")
    sock.sendall(b'a0 LOGIN "%s" "%s"\r\n' % (ALICE.encode(), PASSWORD.encode()))
    assert re.search(rb"a0 OK", recv_until_tagged(sock, b"a0"))
    for n, data in enumerate(messages, 1):
        sock.sendall(b"a%d APPEND INBOX {%d}\r\n" % (n, len(data)))
        assert recv_until(sock, b"\r\n").startswith(b"+")
        sock.sendall(data + b"\r\n")
        assert re.search(rb"a%d OK" % n, recv_until_tagged(sock, b"a%d" % n))
    sock.sendall(b"z LOGOUT\r\n")
    recv_until_tagged(sock, b"z")
    sock.close()


def recv_until_tagged(sock: socket.socket, tag: bytes) -> bytes:
    data = b""
    while not re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n$", data):
        data += recv_until(sock, b"\r\n")
    return data


@pytest.fixture
def server(instance: Instance) -> Iterator[Instance]:
    instance.imap_port = free_port()
    instance.pop3_port = free_port()
    instance.auth_config = "allow_plaintext = true\n"  # loopback only
    instance.limits_config = "max_message_size = 4194304\n"  # APPEND of the large one
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    append_raw(instance.imap_port, MESSAGES)
    # APPEND stores the literal as given: the boundaries fall where planned.
    assert sorted(instance.message_bodies(ALICE)) == sorted(MESSAGES)
    yield instance
    assert "Traceback" not in instance.log_text()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert recv_exactly(sock, b"+OK").startswith(b"+OK")
    return sock


def recv_until(sock: socket.socket, ending: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + 20
    while not data.endswith(ending):
        assert time.monotonic() < deadline, data[-200:]
        chunk = sock.recv(1 << 20)
        assert chunk, data[-200:]
        data += chunk
    return data


def recv_exactly(sock: socket.socket, expected: bytes) -> bytes:
    """Read until len(expected) octets came (or the greeting's CRLF)."""
    if expected == b"+OK":
        return recv_until(sock, b"\r\n")
    data = b""
    deadline = time.monotonic() + 20
    while len(data) < len(expected):
        assert time.monotonic() < deadline, data[-200:]
        chunk = sock.recv(1 << 20)
        assert chunk, (len(data), data[-200:])
        data += chunk
    return data


def login(sock: socket.socket) -> None:
    sock.sendall(b"USER " + ALICE.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\n")
    reply = recv_until(sock, b"octets)\r\n")
    assert reply.startswith(b"+OK Send the password\r\n+OK Logged in, 6 messages"), reply


def exchange(sock: socket.socket, command: bytes, expected: bytes) -> None:
    sock.sendall(command + b"\r\n")
    reply = recv_exactly(sock, expected)
    assert reply == expected, (command, reply[:200], expected[:200])


def test_retr_and_top_byte_for_byte(server: Instance) -> None:
    sock = connect(server.pop3_port)
    login(sock)
    for n, data in enumerate(MESSAGES, 1):
        exchange(sock, b"LIST %d" % n, b"+OK %d %d\r\n" % (n, len(data)))
        exchange(sock, b"RETR %d" % n, retr_reply(data))
        for lines in (0, 1, 2, 5, 100000):
            exchange(sock, b"TOP %d %d" % (n, lines), top_reply(data, lines))
    exchange(sock, b"QUIT", b"+OK Bye, 0 messages deleted\r\n")
    sock.close()


def poplib_reading(wire: bytes) -> tuple[bytes, list[bytes], int]:
    """What poplib makes of a multi-line reply (its own parser, over bytes)."""
    client: Any = poplib.POP3.__new__(poplib.POP3)
    client._debugging = 0
    client.file = io.BytesIO(wire)
    response, lines, octets = client._getlongresp()
    return response, lines, octets


def test_poplib_gets_each_message_back(server: Instance) -> None:
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    client.user(ALICE)
    client.pass_(PASSWORD)
    _, listing, _ = client.list()
    assert [int(line.split()[1]) for line in listing] == [len(m) for m in MESSAGES]
    for n, data in enumerate(MESSAGES, 1):
        assert client.retr(n) == poplib_reading(retr_reply(data))
        assert client.top(n, 2) == poplib_reading(top_reply(data, 2))
        if b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b""):
            # CRLF-only messages come back whole once poplib un-stuffs them.
            _, lines, octets = client.retr(n)
            got = b"\r\n".join(lines) + b"\r\n"
            assert got == (data if data.endswith(b"\r\n") else data + b"\r\n")
            assert octets == len(got)
    _, lines, _ = client.top(1, 1)
    assert lines == [b"Subject: dots", b"", b".first"]
    assert client.quit().startswith(b"+OK Bye")


# The local store's file is gone with the expunge; a cluster node still reads
# the body (content-addressed, kept until the collector finds it unused),
# and serves the message the session listed at login.
@pytest.mark.local_store
def test_message_expunged_after_login_is_a_temporary_failure(server: Instance) -> None:
    sock = connect(server.pop3_port)
    login(sock)
    imap = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=10)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    imap.store("5", "+FLAGS", "\\Deleted")
    imap.expunge()
    imap.logout()
    gone = b"-ERR [SYS/TEMP] Message was deleted by another session\r\n"
    exchange(sock, b"RETR 5", gone)
    exchange(sock, b"TOP 5 0", gone)
    # The rest of the maildrop is unaffected; the listing is the login's.
    exchange(sock, b"RETR 6", retr_reply(MESSAGES[5]))
    exchange(sock, b"STAT", b"+OK 6 %d\r\n" % sum(len(m) for m in MESSAGES))
    exchange(sock, b"QUIT", b"+OK Bye, 0 messages deleted\r\n")
    sock.close()
    assert server.message_count(ALICE) == 5


def test_pipelined_commands_and_a_slow_reader(server: Instance) -> None:
    sock = connect(server.pop3_port)
    login(sock)
    sizes = [len(m) for m in MESSAGES]
    script: list[tuple[bytes, bytes]] = [
        (b"STAT", b"+OK 6 %d\r\n" % sum(sizes)),
        (
            b"LIST",
            b"+OK Scan listing follows\r\n"
            + b"".join(b"%d %d\r\n" % (n, s) for n, s in enumerate(sizes, 1))
            + b".\r\n",
        ),
    ]
    for n, data in enumerate(MESSAGES, 1):
        script.append((b"RETR %d" % n, retr_reply(data)))
        script.append((b"TOP %d 1" % n, top_reply(data, 1)))
    script += [
        (b"RETR 4", retr_reply(MESSAGES[3])),
        (b"RETR 99", b"-ERR No message 99\r\n"),
        (b"DELE 2", b"+OK Message 2 deleted\r\n"),
        (b"RETR 2", b"-ERR Message 2 is deleted\r\n"),
        (b"LIST 2", b"-ERR Message 2 is deleted\r\n"),
        (b"RETR 4", retr_reply(MESSAGES[3])),
        (b"NOOP", b"+OK\r\n"),
        (b"DELE 3", b"+OK Message 3 deleted\r\n"),
        (b"QUIT", b"+OK Bye, 2 messages deleted\r\n"),
    ]
    sock.sendall(b"".join(command + b"\r\n" for command, _ in script))
    # Read nothing for a while: the server holds back (it must not buffer
    # megabytes for us, nor drop anything), then read it all.
    time.sleep(0.5)
    expected = b"".join(reply for _, reply in script)
    received = recv_exactly(sock, expected)
    assert received == expected
    assert sock.recv(100) == b""  # closed after QUIT
    sock.close()
    deadline = time.monotonic() + 5
    while server.message_count(ALICE) != 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    remaining = sorted(server.message_bodies(ALICE))
    assert remaining == sorted(MESSAGES[:1] + MESSAGES[3:])
