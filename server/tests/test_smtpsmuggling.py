"""SMTP smuggling: a lone LF or CR must not end a line, let alone DATA.

rfc5321:2.3.8 allows only CRLF as a line ending. A server that took
"<LF>.<LF>" as the end of DATA would run the text after it as new commands:
a second, forged message "smuggled" inside the first.
"""

from __future__ import annotations

import socket

import pytest

from conftest import DOMAIN, Instance

SMUGGLED_BODY = (
    b"From: sender@remote.test\r\nSubject: outer\r\n\r\nhello\r\n"
    b"{end}"
    b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: admin@example.test\r\nSubject: smuggled\r\n\r\nforged\r\n"
    b".\r\n"
)


def transaction(port: int, body: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO attacker.remote.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        sock.sendall(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        replies = [reader.readline() for _ in range(3)]
        sock.sendall(body + b"QUIT\r\n")
        while line := reader.readline():
            replies.append(line)
    return replies


@pytest.mark.parametrize("end", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_smuggled_message_is_rejected(server: Instance, end: bytes) -> None:
    replies = transaction(server.port, SMUGGLED_BODY.replace(b"{end}", end))
    assert [r[:3] for r in replies[:3]] == [b"250", b"250", b"354"]
    # One reply to the whole DATA: the "smuggled" commands were message text.
    assert replies[3].startswith(b"550 5.6.0 "), replies
    assert replies[4].startswith(b"221 ")
    assert len(replies) == 5
    for address in (f"alice@{DOMAIN}", f"bob@{DOMAIN}"):
        assert server.message_bodies(address) == []
        assert server.index_rows(address) == []


@pytest.mark.parametrize("bad", [b"bare\nlf\r\n", b"bare\rcr\r\n"])
def test_bare_line_endings_anywhere_are_rejected(server: Instance, bad: bytes) -> None:
    body = b"Subject: x\r\n\r\nok\r\n" + bad + b".\r\n"
    replies = transaction(server.port, body)
    assert replies[3].startswith(b"550 5.6.0 ")
    assert server.message_bodies(f"alice@{DOMAIN}") == []


def test_clean_message_still_accepted(server: Instance) -> None:
    replies = transaction(server.port, b"Subject: fine\r\n\r\nall CRLF\r\n.\r\n")
    assert replies[3].startswith(b"250 2.0.0 Ok: queued as ")
    assert len(server.message_bodies(f"alice@{DOMAIN}")) == 1
