"""IMAP against a real server process, driven by imaplib and raw sockets."""

from __future__ import annotations

import imaplib
import re
import select
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

ALICE = f"alice@{DOMAIN}"


def deliver(server: Instance, subject: str, body: str = "hello", to: str = ALICE) -> None:
    message = (
        f"From: Sender <sender@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("sender@remote.test", [to], message.encode())


@pytest.fixture
def imap_server(instance: Instance, tmp_path: Path) -> Iterator[tuple[Instance, ssl.SSLContext]]:
    section, ca = make_tls(tmp_path)
    instance.imap_port = free_port()
    instance.imaps_port = free_port()
    instance.extra_config = section
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield instance, context


def login(server: Instance, context: ssl.SSLContext) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context, timeout=10)
    client.login(ALICE, PASSWORD)
    return client


def ok(result: tuple[str, list[object]]) -> list[object]:
    status, data = result
    assert status == "OK", data
    return data


def test_full_client_workflow_over_tls(imap_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = imap_server
    for n in range(3):
        deliver(server, f"message {n}", body=f"body text number {n}")
    client = login(server, context)
    caps = client.capabilities
    for cap in ("IMAP4REV1", "IMAP4REV2", "IDLE", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC"):
        assert cap in caps, cap
    listed = b"\n".join(ok(client.list()))  # type: ignore[arg-type]
    for name in (b"INBOX", b"Sent", b"Archive", b"Trash", b"Junk", b"Drafts"):
        assert b'"/" ' + name in listed or b'"/" "' + name + b'"' in listed
    assert b"\\Sent" in listed and b"\\Archive" in listed
    assert ok(client.select("INBOX")) == [b"3"]
    data = ok(client.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)"))
    assert len([d for d in data if isinstance(d, bytes) and b"ENVELOPE" in d]) == 3
    whole = ok(client.fetch("2", "(BODY.PEEK[])"))
    assert b"Subject: message 1" in whole[0][1]  # type: ignore[index]
    assert ok(client.search(None, "SUBJECT", '"message 2"')) == [b"3"]
    assert ok(client.search(None, "BODY", "number")) == [b"1 2 3"]
    ok(client.store("1", "+FLAGS", "(\\Flagged)"))
    flags = ok(client.fetch("1", "(FLAGS)"))
    assert b"\\Flagged" in flags[0]  # type: ignore[operator]
    ok(client.copy("1", "Archive"))
    # rfc4315:3 COPYUID uidvalidity source-uids dest-uids (imaplib keeps response codes).
    _, copyuid = client.response("COPYUID")
    assert re.fullmatch(rb"\d+ 1 1", copyuid[-1])  # type: ignore[arg-type]
    ok(client.uid("MOVE", "2", "Archive"))
    ok(client.store("1", "+FLAGS", "(\\Deleted)"))
    ok(client.expunge())
    assert ok(client.search(None, "ALL")) == [b"1"]
    status, data = client.append("Sent", "(\\Seen)", None, b"Subject: sent by me\r\n\r\nhi\r\n")
    assert status == "OK"
    assert re.search(rb"APPENDUID \d+ 1", data[0])  # type: ignore[arg-type]
    status, data = client.status("Archive", "(MESSAGES UIDNEXT)")
    assert status == "OK" and b"MESSAGES 2" in data[0]  # type: ignore[operator]
    assert client.logout()[0] == "BYE"


def read_until(sock: ssl.SSLSocket | socket.socket, pattern: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while pattern not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {pattern!r}; got {data!r}")
        ready, _, _ = select.select([sock], [], [], remaining)
        if ready:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; got {data!r}")
            data += chunk
    return data


def test_idle_reports_a_delivery_within_a_second(
    imap_server: tuple[Instance, ssl.SSLContext],
) -> None:
    server, context = imap_server
    raw = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.imaps_port), timeout=10),
        server_hostname="127.0.0.1",
    )
    read_until(raw, b"\r\n", 5)
    raw.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    read_until(raw, b"a OK", 10)
    raw.sendall(b"b SELECT INBOX\r\n")
    read_until(raw, b"b OK", 5)
    raw.sendall(b"c IDLE\r\n")
    read_until(raw, b"+ ", 5)
    started = time.monotonic()
    deliver(server, "while idling")
    got = read_until(raw, b"EXISTS", 1.0 + (time.monotonic() - started))
    assert b"* 1 EXISTS" in got
    raw.sendall(b"DONE\r\n")
    read_until(raw, b"c OK", 5)
    raw.sendall(b"d LOGOUT\r\n")
    read_until(raw, b"d OK", 5)
    raw.close()


def test_two_sessions_see_each_others_changes(imap_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = imap_server
    for n in range(4):
        deliver(server, f"shared {n}")
    one, two = login(server, context), login(server, context)
    ok(one.select("INBOX"))
    ok(two.select("INBOX"))
    ok(one.store("2", "+FLAGS", "(\\Seen)"))
    ok(one.store("3", "+FLAGS", "(\\Deleted)"))
    ok(one.expunge())
    status, _ = two.noop()
    assert status == "OK"
    untagged = two.untagged_responses
    assert b"3" in untagged.get("EXPUNGE", [])
    fetches = b" ".join(x for x in untagged.get("FETCH", []) if isinstance(x, bytes))
    assert b"\\Seen" in fetches
    assert ok(two.search(None, "ALL")) == [b"1 2 3"]
    deliver(server, "new one")
    two.untagged_responses.clear()
    two.noop()
    assert two.untagged_responses.get("EXISTS") == [b"4"]
    assert one.logout()[0] == "BYE"
    assert two.logout()[0] == "BYE"


def test_plaintext_login_refused_without_tls_and_starttls_works(
    imap_server: tuple[Instance, ssl.SSLContext],
) -> None:
    server, context = imap_server
    client = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=10)
    assert "LOGINDISABLED" in client.capabilities
    assert "STARTTLS" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(ALICE, PASSWORD)
    client.starttls(ssl_context=context)
    assert "LOGINDISABLED" not in client.capabilities
    ok(client.login(ALICE, PASSWORD))
    assert client.logout()[0] == "BYE"


def test_wrong_password(imap_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = imap_server
    client = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context, timeout=20)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(ALICE, "wrong password!")
    client.shutdown()
    assert PASSWORD not in server.log_text() and "wrong password!" not in server.log_text()


def test_bad_input_gets_bad_not_a_traceback(imap_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = imap_server
    raw = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.imaps_port), timeout=10),
        server_hostname="127.0.0.1",
    )
    read_until(raw, b"\r\n", 5)
    raw.sendall(b"a FROBNICATE\r\n")
    assert read_until(raw, b"\r\n", 5).startswith(b"a BAD ")
    raw.sendall(b"b SELECT INBOX\r\n")  # not authenticated yet
    assert read_until(raw, b"\r\n", 5).startswith(b"b BAD ")
    raw.sendall(f'c LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    read_until(raw, b"c OK", 10)
    raw.sendall(b"d SELECT INBOX\r\nd2 FETCH 99 FLAGS\r\n")
    out = read_until(raw, b"d2 ", 5)
    out += read_until(raw, b"\r\n", 5) if not out.endswith(b"\r\n") else b""
    assert b"d2 BAD" in out
    raw.sendall(b"e FETCH 1:* (BODY[\r\n")
    assert b"e BAD" in read_until(raw, b"e BAD", 5)
    raw.sendall(b"f NOOP\r\n")
    assert b"f OK" in read_until(raw, b"f OK", 5)  # resynchronised
    raw.close()
    assert "Traceback" not in server.log_text()


def test_condstore_qresync_and_inbox_rename(imap_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = imap_server
    for n in range(3):
        deliver(server, f"sync {n}")
    raw = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.imaps_port), timeout=10),
        server_hostname="127.0.0.1",
    )
    read_until(raw, b"\r\n", 5)
    raw.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb ENABLE QRESYNC\r\n'.encode())
    assert b"* ENABLED QRESYNC" in read_until(raw, b"b OK", 10)
    raw.sendall(b"c SELECT INBOX\r\n")
    out = read_until(raw, b"c OK", 5)
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))  # type: ignore[union-attr]
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1))  # type: ignore[union-attr]
    raw.sendall(b"d STORE 1 +FLAGS (\\Seen)\r\ne STORE 2 +FLAGS (\\Deleted)\r\nf EXPUNGE\r\n")
    out = read_until(raw, b"f OK", 5)
    assert b"* VANISHED 2" in out  # rfc7162:3.2.10, not EXPUNGE, once QRESYNC is on
    raw.sendall(b"g UNSELECT\r\n")
    read_until(raw, b"g OK", 5)
    # A client that knew the mailbox at `modseq` resynchronises in one SELECT.
    raw.sendall(f"h SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))\r\n".encode())
    out = read_until(raw, b"h OK", 5)
    assert b"* VANISHED (EARLIER) 2" in out
    assert re.search(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", out)
    assert b"UID 3 FLAGS" not in out  # unchanged since modseq
    raw.sendall(b"i UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
    out = read_until(raw, b"i OK", 5)
    assert b"VANISHED (EARLIER) 2" in out
    # rfc9051:6.3.6: renaming INBOX moves its messages and leaves it empty.
    raw.sendall(b"j UNSELECT\r\nk RENAME INBOX Old\r\nl STATUS Old (MESSAGES)\r\n")
    out = read_until(raw, b"l OK", 5)
    assert b"k OK" in out and re.search(rb'STATUS "?Old"? \(MESSAGES 2\)', out)
    raw.sendall(b"m STATUS INBOX (MESSAGES)\r\nn LOGOUT\r\n")
    out = read_until(raw, b"n OK", 5)
    assert re.search(rb'STATUS "?INBOX"? \(MESSAGES 0\)', out)
    raw.close()


def test_commands_before_login_are_limited(imap_server: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = imap_server
    raw = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.imaps_port), timeout=10),
        server_hostname="127.0.0.1",
    )
    read_until(raw, b"\r\n", 5)
    raw.sendall(b"".join(b"n%d NOOP\r\n" % i for i in range(40)))
    out = read_until(raw, b"* BYE", 5)
    assert out.count(b" OK NOOP") == 30
    raw.close()


def test_per_account_quota_overrides_the_global_one(
    imap_server: tuple[Instance, ssl.SSLContext],
) -> None:
    server, context = imap_server
    client = login(server, context)
    try:
        typ, data = client.getquotaroot("INBOX")
        assert typ == "OK"
        assert data[1] == [b'"" ()']  # no quota at all
        server.cli("user", "quota", ALICE, "2048")
        typ, data = client.getquota('""')  # imaplib does not quote an empty root
        assert typ == "OK"
        assert data[0] == b'"" (STORAGE 0 2)'
        # rfc9208:5.2 — an APPEND over the quota fails with OVERQUOTA.
        typ, data = client.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 4096)
        assert typ == "NO" and b"OVERQUOTA" in data[0]  # type: ignore[operator]
        client.append("INBOX", None, None, b"Subject: small\r\n\r\nfits\r\n")
    finally:
        client.logout()
