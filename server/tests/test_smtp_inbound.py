"""Inbound SMTP against a real server process, with smtplib and raw sockets."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import warnings
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from conftest import DOMAIN, Instance, make_tls
from estafeta.smtp import replies

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject: str = "hello", to: str = ALICE, body: str = "Hi there.\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@remote.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@remote.test>"
    msg.set_content(body)
    return msg


def code_and_text(reply: str) -> tuple[int, str]:
    return int(reply[:3]), reply[4:]


def test_delivers_to_inbox_with_trace_headers(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        refused = client.send_message(message("first"), "sender@remote.test", [ALICE])
    assert refused == {}
    bodies = server.message_bodies(ALICE)
    assert len(bodies) == 1
    data = bodies[0]
    assert data.startswith(
        b"Return-Path: <sender@remote.test>\r\nReceived: from client.remote.test"
    )
    assert b"by mx.example.test (estafeta) with ESMTP id " in data
    assert f"for <{ALICE}>;".encode() in data
    assert b"\r\nSubject: first\r\n" in data
    rows = server.index_rows(ALICE)
    assert [r.uid for r in rows] == [1]
    if not server.cluster:  # a cluster body is named by its hash, not a Maildir file
        assert rows[0].file == "new/" + server.files(ALICE)[0].name
    assert rows[0].size == len(data)
    assert rows[0].summary.subject == "first"
    assert rows[0].summary.message_id == "<first@remote.test>"


def test_ehlo_advertises_extensions_and_no_auth(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        code, _ = client.ehlo("client.remote.test")
        assert code == 250
        for keyword in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert client.has_extn(keyword), keyword
        assert client.esmtp_features["size"] == "1048576"
        assert not client.has_extn("auth")
        assert not client.has_extn("starttls")  # no [tls] in this config
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")
        assert (code, text.decode()) == (502, replies.AUTH_UNAVAILABLE[4:])


def test_relay_attempt_is_refused(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        code, text = client.rcpt("victim@elsewhere.test")
        assert code == 554
        assert text.decode().startswith("5.7.1 Relay access denied")
        # The session goes on: a local recipient is still accepted.
        assert client.rcpt(ALICE)[0] == 250
    assert "rcpt_rejected" in server.log_text()
    assert 'reason="relay denied"' in server.log_text()


def test_unknown_user_is_refused(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        code, text = client.rcpt(f"nobody@{DOMAIN}")
    assert code == 550
    assert text.decode().startswith("5.1.1 ")


def test_oversize_declared_with_size_parameter(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        code, text = client.mail("sender@remote.test", ["SIZE=2000000"])
    assert code == 552
    assert text.decode().startswith("5.3.4 ")


def test_oversize_data_is_refused_and_nothing_stored(server: Instance) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 15000  # 1.17 MB > 1 MiB
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        # No SIZE= parameter (smtplib's sendmail would send one): the data itself is too big.
        assert client.mail("sender@remote.test")[0] == 250
        assert client.rcpt(ALICE)[0] == 250
        code, text = client.data(big)
        assert code == 552
        assert text.decode().startswith("5.3.4 ")
        # The connection is still usable afterwards.
        assert client.send_message(message("small"), "sender@remote.test", [ALICE]) == {}
    assert server.message_count(ALICE) == 1
    assert [r.summary.subject for r in server.index_rows(ALICE)] == ["small"]


def test_too_many_recipients_get_452(server: Instance) -> None:
    # max_recipients = 5 in the test config; rfc5321:4.5.3.1.10 says 452.
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        codes = [client.rcpt(ALICE)[0] for _ in range(5)]
        code, text = client.rcpt(BOB)
    assert codes == [250] * 5
    assert code == 452
    assert text.decode().startswith("4.5.3 ")


def test_null_sender_and_multiple_recipients(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        refused = client.sendmail(
            "<>", [ALICE, BOB, f"ALICE@{DOMAIN.upper()}"], b"Subject: x\r\n\r\nhi\r\n"
        )
    assert refused == {}
    # alice is listed twice (case differs): one copy each.
    assert server.message_count(ALICE) == 1
    assert server.message_count(BOB) == 1
    data = server.message_bodies(BOB)[0]
    assert data.startswith(b"Return-Path: <>\r\n")
    assert b"\tfor <" not in data  # several recipients: no "for" clause


def test_aliases_catch_all_and_subaddress(server: Instance) -> None:
    server.cli("alias", "add", f"team@{DOMAIN}", ALICE, BOB)
    server.cli("alias", "add", "@other.test", BOB)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        assert (
            client.sendmail("s@remote.test", [f"team@{DOMAIN}"], b"Subject: team\r\n\r\n.\r\n")
            == {}
        )
        assert (
            client.sendmail("s@remote.test", ["anyone@other.test"], b"Subject: catch\r\n\r\n.\r\n")
            == {}
        )
        assert (
            client.sendmail(
                "s@remote.test", [f"alice+lists@{DOMAIN}"], b"Subject: plus\r\n\r\n.\r\n"
            )
            == {}
        )
    assert sorted(r.summary.subject for r in server.index_rows(ALICE)) == ["plus", "team"]
    assert sorted(r.summary.subject for r in server.index_rows(BOB)) == ["catch", "team"]


def test_smtputf8_recipient_and_utf8_headers(server: Instance) -> None:
    server.cli("alias", "add", f"josé@{DOMAIN}", ALICE)
    body = "Subject: café ☕\r\nFrom: Zoë <zoe@remote.test>\r\n\r\nol\u00e1\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        refused = client.sendmail(
            "zoë@remote.test", [f"josé@{DOMAIN}"], body, mail_options=["SMTPUTF8"]
        )
    assert refused == {}
    rows = server.index_rows(ALICE)
    assert rows[0].summary.subject == "café ☕"
    assert b"with UTF8SMTP id" in server.message_bodies(ALICE)[0]


def test_malformed_addresses_get_553(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        code, text = client.docmd("MAIL", "FROM:<sender@-bad-.test>")
        assert code == 553, text
        assert text.decode().startswith("5.1.7 ")
        client.mail("sender@remote.test")
        code, text = client.rcpt("@" + "x" * 70)
        assert code in (501, 553)
        code, text = client.rcpt(f"{'a' * 65}@{DOMAIN}")
        assert code == 553
        assert text.decode().startswith("5.1.3 ")
        # A path cut short made aiosmtpd's parser raise IndexError: a 451
        # and a traceback in the log. Now a syntax error like the others.
        code, text = client.docmd("RCPT", "TO:<")
        assert code == 553, text
        client.rset()
        code, text = client.docmd("MAIL", "FROM:<")
        assert code == 553, text
    assert "Traceback" not in server.log_path.read_text()


def test_every_reply_has_an_enhanced_code(server: Instance) -> None:
    transcript = [
        ("EHLO client.remote.test", 250),
        ("MAIL FROM:<sender@remote.test>", 250),
        ("MAIL FROM:<again@remote.test>", 503),
        ("RCPT TO:<alice@example.test>", 250),
        ("RSET", 250),
        ("DATA", 503),
        ("NOOP", 250),
        ("VRFY alice", 252),
        ("BOGUS", 500),
        ("QUIT", 221),
    ]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 mx.example.test ESMTP estafeta")
        for command, expected in transcript:
            sock.sendall(command.encode() + b"\r\n")
            line = reader.readline()
            while line[3:4] == b"-":
                line = reader.readline()
            text = line.decode().rstrip()
            assert int(text[:3]) == expected, (command, text)
            if not command.startswith("EHLO"):
                assert re.match(r"^\d{3} [245]\.\d+\.\d+ ", text), (command, text)


def test_byte_at_a_time_client_is_served(server: Instance) -> None:
    """The same transcript, fed one byte per send, gives the same replies."""
    commands = (
        b"EHLO slow.remote.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
        b"DATA\r\n"
    )
    body = b"Subject: slow\r\n\r\nline one\r\n..dot-stuffed\r\n.\r\nQUIT\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        reader.readline()
        for byte in commands + body:
            sock.sendall(bytes([byte]))
        replies_seen = []
        while True:
            line = reader.readline()
            if not line:
                break
            if line[3:4] != b"-":
                replies_seen.append(int(line[:3]))
    assert replies_seen == [250, 250, 250, 354, 250, 221]
    data = server.message_bodies(ALICE)[0]
    assert data.endswith(b"\r\n\r\nline one\r\n.dot-stuffed\r\n")


def test_pipelined_transaction(server: Instance) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO pipe.remote.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        # rfc2920:3.1 — MAIL, RCPTs and DATA in one send.
        sock.sendall(
            b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        )
        codes = [int(reader.readline()[:3]) for _ in range(5)]
        sock.sendall(b"Subject: piped\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        codes += [int(reader.readline()[:3]) for _ in range(2)]
    assert codes == [250, 250, 550, 250, 354, 250, 221]
    assert server.message_count(ALICE) == 1 and server.message_count(BOB) == 1


def test_pipelined_replies_come_as_one_unit(server: Instance) -> None:
    """rfc2920:3.2: the replies to a pipelined group are sent together, in
    one write (one segment on loopback), not one write per command; the
    354 ends the group (the client waits for it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO pipe.remote.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        for _ in range(3):
            sock.sendall(
                b"RSET\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                b"RCPT TO:<nobody@example.test>\r\nDATA\r\n"
            )
            first = sock.recv(65536)
            assert first.count(b"\r\n") == 5, first
            assert first.endswith(b"\r\n") and first.split(b"\r\n")[-2].startswith(b"354 ")
            sock.sendall(b"Subject: piped\r\n\r\nhi\r\n.\r\n")
            assert reader.readline().startswith(b"250 ")
    assert server.message_count(ALICE) == 3


def test_delivery_log_line(server: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        client.send_message(message("logged"), "sender@remote.test", [ALICE])
    server.stop()
    lines = [line for line in server.log_text().splitlines() if " delivery " in line]
    assert len(lines) == 1
    line = lines[0]
    assert re.search(r" qid=[A-Z0-9]{12} ", line)
    assert "from=<sender@remote.test>" in line
    assert f"to=<{ALICE}>" in line
    assert re.search(r" size=\d+ ", line)
    assert "result=delivered" in line


@pytest.fixture
def tls_server(instance: Instance, tmp_path: Path) -> tuple[Instance, trustme.CA]:
    section, ca = make_tls(tmp_path)
    instance.extra_config = section
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    return instance, ca


def test_starttls(tls_server: tuple[Instance, trustme.CA]) -> None:
    server, ca = tls_server
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("client.remote.test")
        assert not client.has_extn("starttls")
        assert not client.has_extn("auth")
        client.sendmail("s@remote.test", [ALICE], b"Subject: secret\r\n\r\nhi\r\n")
    data = server.message_bodies(ALICE)[0]
    assert b"with ESMTPS id" in data
    assert b"(using TLSv1.3 " in data


def test_tls_below_1_2_is_refused(tls_server: tuple[Instance, trustme.CA]) -> None:
    server, ca = tls_server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/1.1 are deprecated
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("client.remote.test")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            client.starttls(context=context)


def test_queue_ids_are_unique_and_use_the_whole_alphabet() -> None:
    from collections import Counter

    from estafeta.smtp.inbound import _QID_ALPHABET, new_queue_id

    ids = [new_queue_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(len(qid) == 12 and set(qid) <= set(_QID_ALPHABET) for qid in ids)
    counts = Counter("".join(ids))
    assert set(counts) == set(_QID_ALPHABET)
    # 60,000 characters over 28: about 2,143 each; far from that is a bias.
    assert min(counts.values()) > 1800 and max(counts.values()) < 2500
