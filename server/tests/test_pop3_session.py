"""POP3 against a real server: poplib over STLS and 995, every command and
error path as a transcript (whole and byte by byte), locking, IMAP interplay."""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

ALICE = f"alice@{DOMAIN}"


def deliver_many(server: Instance, count: int) -> list[bytes]:
    sent = []
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for n in range(count):
            body = (
                f"Subject: pop {n}\r\nMessage-ID: <pop{n}@remote.test>\r\n\r\n"
                f"line one of {n}\r\n.starts with a dot\r\n..two dots\r\nlast\r\n"
            ).encode()
            client.sendmail("s@remote.test", [ALICE], body)
            sent.append(body)
    return sent


@pytest.fixture
def pop_server(instance: Instance, tmp_path: Path) -> Iterator[tuple[Instance, ssl.SSLContext]]:
    section, ca = make_tls(tmp_path)
    instance.imaps_port = free_port()
    instance.pop3_port = free_port()
    instance.pop3s_port = free_port()
    instance.extra_config = section
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield instance, context


def stored(server: Instance) -> list[bytes]:
    return server.message_bodies(ALICE)


@pytest.mark.parametrize("transport", ["stls", "pop3s"])
def test_poplib_retrieves_and_deletes_100(
    pop_server: tuple[Instance, ssl.SSLContext], transport: str
) -> None:
    server, context = pop_server
    deliver_many(server, 100)
    on_disk = stored(server)
    if transport == "stls":
        client: poplib.POP3 = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
        assert "STLS" in client.capa()
        client.stls(context=context)
    else:
        client = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=context, timeout=10)
    client.user(ALICE)
    client.pass_(PASSWORD)
    count, total = client.stat()
    assert count == 100 and total == sum(len(d) for d in on_disk)
    _, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    _, uidls, _ = client.uidl()
    assert len({line.split()[1] for line in uidls}) == 100
    retrieved = []
    for n in range(1, 101):
        _, lines, _ = client.retr(n)
        data = b"\r\n".join(lines) + b"\r\n"
        assert len(data) == sizes[n - 1]  # LIST size = what RETR delivers
        retrieved.append(data)
        client.dele(n)
    assert sorted(retrieved) == sorted(on_disk)  # byte-identical after un-stuffing
    client.quit()
    assert stored(server) == []
    assert server.message_count(ALICE) == 0


def pop_raw(port: int, context: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def read_reply(sock: socket.socket, multiline: bool) -> bytes:
    data = b""
    end = b"\r\n.\r\n" if multiline else b"\r\n"
    deadline = time.monotonic() + 10
    while not (
        data.endswith(end) or (multiline and data.startswith(b"-ERR") and data.endswith(b"\r\n"))
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {data!r}")
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


PLAIN = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
# (command, multi-line reply?, regex the reply must match)
SCRIPT = [
    (
        b"CAPA",
        True,
        rb"^\+OK.*\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        rb".*USER\r\nSASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN\r\n\.\r\n$",
    ),
    (b"FROB", False, rb"^-ERR Unknown command"),
    (b"STAT", False, rb"^-ERR STAT is not allowed now"),
    (b"PASS x", False, rb"^-ERR USER first"),
    (b"USER " + ALICE.encode(), False, rb"^\+OK"),
    (b"PASS wrong-password", False, rb"^-ERR \[AUTH\] Invalid credentials"),
    (b"AUTH", True, rb"^\+OK.*\r\nPLAIN\r\n\.\r\n$"),
    (b"AUTH CRAM-MD5", False, rb"^-ERR Unsupported mechanism"),
    (b"AUTH PLAIN =", False, rb"^-ERR Malformed PLAIN response"),
    (b"AUTH PLAIN", False, rb"^\+ \r\n$"),
    (b"*", False, rb"^-ERR Authentication cancelled"),  # rfc5034:4
    (b"AUTH PLAIN " + base64.b64encode(b"bob\0alice@example.test\0x"), False, rb"^-ERR \[AUTH\]"),
    (b"APOP alice 0123456789abcdef", False, rb"^-ERR APOP is not supported"),
    (b"STLS", False, rb"^-ERR STLS is not available"),  # already TLS (995)
    (b"UTF8", False, rb"^\+OK UTF8 enabled"),
    (b"AUTH PLAIN " + PLAIN.encode(), False, rb"^\+OK Logged in, 3 messages \(\d+ octets\)"),
    (b"STAT", False, rb"^\+OK 3 \d+\r\n$"),
    (b"LIST", True, rb"^\+OK.*\r\n1 \d+\r\n2 \d+\r\n3 \d+\r\n\.\r\n$"),
    (b"LIST 2", False, rb"^\+OK 2 \d+\r\n$"),
    (b"LIST 9", False, rb"^-ERR No message 9"),
    (b"LIST x", False, rb"^-ERR Invalid message number"),
    (b"UIDL 1", False, rb"^\+OK 1 \d+\.1\r\n$"),
    (b"UIDL", True, rb"^\+OK.*\r\n1 \d+\.\d+\r\n2 \d+\.\d+\r\n3 \d+\.\d+\r\n\.\r\n$"),
    (b"TOP 1 1", True, rb"^\+OK.*\r\n.*Subject: pop 0\r\n.*\r\n\r\nline one of 0\r\n\.\r\n$"),
    (b"TOP 1 x", False, rb"^-ERR TOP needs a number"),
    (
        b"RETR 1",
        True,
        rb"^\+OK \d+ octets\r\n.*\r\n\.\.starts with a dot\r\n\.\.\.two dots\r\nlast\r\n\.\r\n$",
    ),
    (b"DELE 1", False, rb"^\+OK Message 1 deleted"),
    (b"DELE 1", False, rb"^-ERR Message 1 is deleted"),
    (b"RETR 1", False, rb"^-ERR Message 1 is deleted"),
    (b"STAT", False, rb"^\+OK 2 \d+"),
    (b"RSET", False, rb"^\+OK 3 messages"),
    (b"DELE 3", False, rb"^\+OK"),
    (b"NOOP", False, rb"^\+OK"),
    (b"USER bob", False, rb"^-ERR USER is not allowed now"),
    (b"QUIT", False, rb"^\+OK Bye, 1 messages deleted"),
]


def run_pop_script(port: int, context: ssl.SSLContext, one_byte: bool) -> list[bytes]:
    sock = pop_raw(port, context)
    replies = [read_reply(sock, False)]
    for command, multiline, pattern in SCRIPT:
        line = command + b"\r\n"
        if one_byte:
            for byte in line:
                sock.sendall(bytes([byte]))
        else:
            sock.sendall(line)
        reply = read_reply(sock, multiline)
        assert re.search(pattern, reply, re.DOTALL), (command, reply)
        replies.append(reply)
    sock.close()
    return replies


def test_every_command_and_error_whole_and_byte_by_byte(
    pop_server: tuple[Instance, ssl.SSLContext],
) -> None:
    server, context = pop_server
    deliver_many(server, 3)
    whole = run_pop_script(server.pop3s_port, context, one_byte=False)
    # Only message 3 was deleted; restore a third message for the second run.
    deliver_many(server, 1)
    assert server.message_count(ALICE) == 3
    one_byte = run_pop_script(server.pop3s_port, context, one_byte=True)
    mask = lambda replies: [re.sub(rb"\d+", b"N", r) for r in replies]  # noqa: E731
    assert mask(whole) == mask(one_byte)
    assert "Traceback" not in server.log_text()


def test_plaintext_refused_without_tls(pop_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, _ = pop_server
    sock = pop_raw(server.pop3_port)
    read_reply(sock, False)
    sock.sendall(b"CAPA\r\n")
    capa = read_reply(sock, True)
    assert b"STLS" in capa and b"USER" not in capa and b"SASL" not in capa
    sock.sendall(b"USER " + ALICE.encode() + b"\r\n")
    assert read_reply(sock, False).startswith(b"-ERR [AUTH] Log in after STLS")
    sock.close()


def test_lock_drop_and_imap_interplay(pop_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = pop_server
    deliver_many(server, 4)
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context, timeout=10)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")

    first = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=context, timeout=10)
    first.user(ALICE)
    first.pass_(PASSWORD)
    second = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=context, timeout=10)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    second.close()
    # A dropped connection deletes nothing (no UPDATE state).
    first.dele(1)
    first.close()  # no QUIT
    # The lock is released once the server has seen the drop (at once, but
    # a loaded machine may take a moment): the session has ended by then.
    deadline = time.monotonic() + 10
    while True:
        third = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=context, timeout=10)
        third.user(ALICE)
        try:
            third.pass_(PASSWORD)
            break
        except poplib.error_proto as exc:
            third.close()
            assert b"[IN-USE]" in exc.args[0] and time.monotonic() < deadline
            time.sleep(0.05)
    assert server.message_count(ALICE) == 4
    third.dele(2)
    third.dele(4)
    third.quit()
    # The IMAP session, still open, hears of it.
    imap.untagged_responses.clear()
    imap.noop()
    # Reported highest first, so each number is right when the client reads it.
    assert imap.untagged_responses.get("EXPUNGE", []) == [b"4", b"2"]
    assert imap.search(None, "ALL")[1] == [b"1 2"]
    imap.logout()
