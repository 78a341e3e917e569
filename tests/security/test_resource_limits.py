"""Resource limits: each one enforced with a protocol reply, never a crash.

- SMTP: command line too long (500 5.5.2, rfc5321:4.5.3.1.4), too many
  recipients (452 4.5.3, rfc5321:4.5.3.1.10), message too big in SIZE= at
  MAIL and at the end of DATA (552 5.3.4, rfc1870:6), DATA lines too long
  (rfc5321:4.5.3.1.6);
- IMAP: command line and literals over the limit (BAD, [TOOBIG] for
  literals: rfc7888:4, rfc7889), 10,000 nested parentheses;
- POP3: a line over rfc2449:4's 255 octets (-ERR);
- connections per client address ([limits] max_connections_per_ip): the
  fourth gets 421 4.7.0 / * BYE / -ERR on every listener;
- timeouts, each announced before the close: SMTP idle (421 4.4.2,
  rfc5321:4.5.3.2.7), SMTP DATA in all ([limits] data_timeout: a trickle
  of one byte a second is cut off), IMAP and POP3 before login (* BYE /
  -ERR, [limits] login_timeout, a total that a trickle does not extend).

Timeouts are seconds here so that this file runs in seconds.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.config import ConfigError, Limits, from_dict
from tests.security.conftest import (
    ALICE,
    BOB,
    IMPLICIT_TLS,
    LISTENERS,
    PASSWORD,
    PROTOCOL,
    Client,
    MailServer,
    new_source,
    smtp_client,
    start_server,
    unverified_context,
)

COMMAND_TIMEOUT = 1.5
DATA_TIMEOUT = 3.0
LOGIN_TIMEOUT = 1.5
# Instance.write_config's [limits]: max_message_size = 1048576, max_recipients = 5.
MAX_MESSAGE = 1048576
MAX_RECIPIENTS = 5


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = start_server(
        tmp_path_factory.mktemp("limits"),
        limits_config="max_connections_per_ip = 3\n",
        auth_config="allow_plaintext = true\n",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def timeout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = start_server(
        tmp_path_factory.mktemp("timeouts"),
        limits_config=(
            f"command_timeout = {COMMAND_TIMEOUT}\n"
            f"data_timeout = {DATA_TIMEOUT}\n"
            f"login_timeout = {LOGIN_TIMEOUT}\n"
        ),
        auth_config="allow_plaintext = true\n",
    )
    try:
        yield server
    finally:
        server.stop()


def command(client: Client, text: bytes | str) -> bytes:
    """Send one line, return the next line (POP3 style)."""
    client.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
    return client.line()


def imap_login(client: Client) -> None:
    assert client.line().startswith(b"* OK")
    _, tagged = client.imap("L", f'LOGIN {ALICE} "{PASSWORD}"')
    assert tagged.startswith(b"L OK "), tagged


def still_alive(server: MailServer) -> None:
    assert server.instance.process is not None and server.instance.process.poll() is None
    with Client(server.port("imap"), source=new_source()) as client:
        assert client.line().startswith(b"* OK")


# -- SMTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"NOOP " + b"x" * 600,
        b"RCPT TO:<" + b"a" * 2000 + b"@example.test>",
        b"MAIL FROM:<" + b"a" * 100_000 + b"@remote.example>",
    ],
    ids=["noop-600", "rcpt-2000", "mail-100k"],
)
def test_smtp_command_line_too_long(limits_server: MailServer, source: str, line: bytes) -> None:
    with smtp_client(limits_server.port("smtp"), source=source) as client:
        reply = client.smtp(line)
        assert reply.startswith(b"500 5.5.2 "), reply
        assert b"too long" in reply.lower()
        # The connection stays usable: the rest of that line was skipped.
        assert client.smtp("NOOP").startswith(b"250 ")
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")


def test_smtp_too_many_recipients(limits_server: MailServer, source: str) -> None:
    before = limits_server.mailboxes()
    with smtp_client(limits_server.port("smtp"), source=source) as client:
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        for n in range(MAX_RECIPIENTS):
            assert client.smtp(f"RCPT TO:<{(ALICE, BOB)[n % 2]}>").startswith(b"250 ")
        for _ in range(2):
            reply = client.smtp(f"RCPT TO:<{ALICE}>")
            assert reply.startswith(b"452 4.5.3 Too many recipients"), reply
        assert client.smtp("DATA").startswith(b"354 ")
        client.send(b"Subject: many\r\n\r\nhi\r\n.\r\n")
        assert client.reply().startswith(b"250 2.0.0 ")
    # One copy per account, whatever the number of RCPTs naming it.
    assert limits_server.mailboxes() == {a: n + 1 for a, n in before.items()}


def test_smtp_size_declared_at_mail(limits_server: MailServer, source: str) -> None:
    with smtp_client(limits_server.port("smtp"), source=source) as client:
        reply = client.smtp(f"MAIL FROM:<sender@remote.example> SIZE={MAX_MESSAGE + 1}")
        assert reply.startswith(b"552 5.3.4 "), reply
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"503 ")
        ok = client.smtp(f"MAIL FROM:<sender@remote.example> SIZE={MAX_MESSAGE}")
        assert ok.startswith(b"250 ")


def test_smtp_size_at_end_of_data(limits_server: MailServer, source: str) -> None:
    before = limits_server.mailboxes()
    with smtp_client(limits_server.port("smtp"), source=source) as client:
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert client.smtp("DATA").startswith(b"354 ")
        line = b"x" * 998 + b"\r\n"
        client.send(b"Subject: big\r\n\r\n" + line * (MAX_MESSAGE // len(line) + 10) + b".\r\n")
        reply = client.reply()
        assert reply.startswith(b"552 5.3.4 "), reply
        assert client.smtp("RSET").startswith(b"250 ")
    assert limits_server.mailboxes() == before


def test_smtp_data_line_too_long(limits_server: MailServer, source: str) -> None:
    before = limits_server.mailboxes()
    with smtp_client(limits_server.port("smtp"), source=source) as client:
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert client.smtp("DATA").startswith(b"354 ")
        client.send(b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\n")
        reply = client.reply()
        assert reply.startswith(b"500 5.5.2 Line too long"), reply
        assert client.smtp("NOOP").startswith(b"250 ")
    assert limits_server.mailboxes() == before


@pytest.mark.parametrize(
    "argument",
    [b">\x80alice", b"\xff\xfe", b"<a\x1b[31m@example.test>", b"\x00x"],
    ids=["8bit", "not-utf8", "escape", "nul"],
)
def test_smtp_echoed_garbage_gets_a_clean_reply(
    limits_server: MailServer, source: str, argument: bytes
) -> None:
    """aiosmtpd echoes a bad VRFY argument: not-UTF-8 octets and control
    characters come back as "?" instead of breaking the reply (a traceback
    and a 451 before)."""
    with smtp_client(limits_server.port("smtp"), source=source) as client:
        reply = client.smtp(b"VRFY " + argument)
        assert reply[:4] in (b"252 ", b"501 ", b"502 "), reply
        assert not any(c < 0x20 for c in reply[:-2]) and reply.decode("utf-8")
        assert client.smtp("NOOP").startswith(b"250 ")
    assert "Traceback" not in limits_server.log_text()


# -- IMAP ---------------------------------------------------------------------------------


def test_imap_command_line_too_long(limits_server: MailServer, source: str) -> None:
    with Client(limits_server.port("imap"), source=source) as client:
        assert client.line().startswith(b"* OK")
        _, tagged = client.imap("a", b"NOOP " + b"x" * 70_000)
        # A BAD for the tag (its start was read); the line is skipped.
        assert tagged.startswith(b"a BAD "), tagged
        assert b"too long" in tagged.lower()
        _, tagged = client.imap("b", "NOOP")
        assert tagged.startswith(b"b OK "), tagged


def test_imap_literal_too_big_before_login(limits_server: MailServer, source: str) -> None:
    """64 KiB of literal before authentication (rfc9051:5.4 leaves it to us)."""
    with Client(limits_server.port("imap"), source=source) as client:
        assert client.line().startswith(b"* OK")
        _, tagged = client.imap("a", "LOGIN {100000}")
        assert tagged.startswith(b"a BAD [TOOBIG] "), tagged
        # The client did not send the literal (rfc9051:7.5): go on.
        _, tagged = client.imap("b", "NOOP")
        assert tagged.startswith(b"b OK "), tagged


def test_imap_append_over_the_limit(limits_server: MailServer, source: str) -> None:
    """APPENDLIMIT (rfc7889): a synchronizing literal over it is refused
    before it is sent, with [TOOBIG]; the session goes on."""
    with Client(limits_server.port("imap"), source=source) as client:
        imap_login(client)
        _, tagged = client.imap("a", f"APPEND INBOX {{{MAX_MESSAGE + 1024 + 1}}}")
        assert tagged[:11] in (b"a BAD [TOOB", b"a NO [TOOBI"), tagged
        assert b"[TOOBIG]" in tagged
        _, tagged = client.imap("b", "NOOP")
        assert tagged.startswith(b"b OK "), tagged


def test_imap_nonsynchronizing_literal_over_the_limit(
    limits_server: MailServer, source: str
) -> None:
    """A LITERAL+ literal over the limit is already on its way and cannot be
    skipped safely: [TOOBIG], then * BYE and the connection closes."""
    with Client(limits_server.port("imap"), source=source) as client:
        imap_login(client)
        client.send(b"a APPEND INBOX {2000000+}\r\n" + b"z" * 4096)
        lines = client.lines_until_eof()
        assert lines[0].startswith(b"a BAD [TOOBIG] "), lines
        assert lines[-1].startswith(b"* BYE "), lines
    still_alive(limits_server)


@pytest.mark.parametrize(
    ("logged_in", "text"),
    [
        (False, b"ID " + b"(" * 10_000),
        (False, b"LOGIN " + b"(" * 10_000 + b" x"),
        (True, b"SEARCH " + b"(" * 10_000 + b"ALL" + b")" * 10_000),
        (True, b"FETCH 1:* " + b"(" * 10_000 + b"FLAGS" + b")" * 10_000),
        (True, b"STORE 1 +FLAGS " + b"(" * 10_000),
        (True, b"LIST " + b"(" * 10_000 + b' "" *'),
        (True, b"STATUS INBOX " + b"(" * 10_000),
    ],
    ids=["id", "login", "search", "fetch", "store", "list", "status"],
)
def test_imap_deep_nesting(
    limits_server: MailServer, source: str, logged_in: bool, text: bytes
) -> None:
    with Client(limits_server.port("imap"), source=source) as client:
        if logged_in:
            imap_login(client)
            assert client.imap("s", "SELECT INBOX")[1].startswith(b"s OK ")
        else:
            assert client.line().startswith(b"* OK")
        _, tagged = client.imap("a", text)
        assert tagged.startswith(b"a BAD "), tagged
        _, tagged = client.imap("b", "NOOP")
        assert tagged.startswith(b"b OK "), tagged
    still_alive(limits_server)


# -- POP3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [300, 100_000])
def test_pop3_line_too_long(limits_server: MailServer, source: str, size: int) -> None:
    with Client(limits_server.port("pop3"), source=source) as client:
        assert client.line().startswith(b"+OK")
        reply = command(client, b"USER " + b"u" * size)
        assert reply.startswith(b"-ERR Line too long"), reply
        assert command(client, "CAPA").startswith(b"+OK")


# -- connections per address --------------------------------------------------------------

REFUSALS = {
    "smtp": b"421 4.7.0 Too many connections from your address\r\n",
    "imap": b"* BYE Too many connections from your address\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
}


def test_connections_per_ip(limits_server: MailServer) -> None:
    source = new_source()
    held = [Client(limits_server.port(name), source=source) for name in ("smtp", "imap", "pop3")]
    try:
        assert [c.line()[:3] for c in held] == [b"220", b"* O", b"+OK"]
        for listener in LISTENERS:
            with Client(limits_server.port(listener), source=source) as extra:
                if listener in IMPLICIT_TLS:
                    # No TLS handshake for a refused client (the costly part
                    # for the server): the close is the answer.
                    assert extra.line() == b"", listener
                else:
                    assert extra.line() == REFUSALS[PROTOCOL[listener]], listener
                    assert extra.line() == b"", listener  # and closed
        # Another address is not concerned.
        with Client(limits_server.port("smtp"), source=new_source()) as other:
            assert other.line().startswith(b"220 ")
        # A closed connection frees its place.
        held.pop().close()
        assert _greeting_when_free(limits_server, "pop3", source).startswith(b"+OK")
    finally:
        for client in held:
            client.close()


def _greeting_when_free(server: MailServer, listener: str, source: str) -> bytes:
    deadline = time.monotonic() + 10
    while True:
        context = unverified_context() if listener in IMPLICIT_TLS else None
        try:
            with Client(server.port(listener), source=source, context=context) as again:
                greeting = again.line()
        except (ssl.SSLError, ConnectionError):
            greeting = b""
        if greeting or time.monotonic() > deadline:
            return greeting
        time.sleep(0.05)


def test_stalled_tls_handshakes_count_for_their_address(limits_server: MailServer) -> None:
    """On 465/993/995 a connection counts from its accept, not from the end
    of its handshake: stalling handshakes cannot get round the cap."""
    source = new_source()
    stalled = [Client(limits_server.port(name), source=source) for name in sorted(IMPLICIT_TLS)]
    try:
        time.sleep(0.3)  # for the server to accept all three
        with Client(limits_server.port("smtp"), source=source) as extra:
            assert extra.line() == REFUSALS["smtp"]
        # A handshake given up frees its place; a real one gets in.
        stalled.pop().close()
        greeting = _greeting_when_free(limits_server, "imaps", source)
        assert greeting.startswith(b"* OK"), greeting
    finally:
        for client in stalled:
            client.close()


# -- timeouts -----------------------------------------------------------------------------


def timed_lines(client: Client, limit: float) -> tuple[list[bytes], float]:
    """The lines up to EOF, and how long the server took to close."""
    started = time.monotonic()
    lines = client.lines_until_eof(timeout=limit)
    return lines, time.monotonic() - started


@pytest.mark.parametrize("listener", ["smtp", "submission", "submissions"])
def test_smtp_idle_timeout(timeout_server: MailServer, source: str, listener: str) -> None:
    context = unverified_context() if listener in IMPLICIT_TLS else None
    with smtp_client(timeout_server.port(listener), source=source, context=context) as client:
        lines, waited = timed_lines(client, 10)
    assert lines == [b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"]
    assert COMMAND_TIMEOUT * 0.8 < waited < COMMAND_TIMEOUT + 3


def test_smtp_trickled_command_does_not_reset_the_timer(
    timeout_server: MailServer, source: str
) -> None:
    """Only a whole command restarts the silence timer, not a byte of one."""
    with smtp_client(timeout_server.port("smtp"), source=source) as client:
        started = time.monotonic()
        received = b""
        for byte in b"NOOP " + b"x" * 40:
            try:
                client.send(bytes([byte]))
            except OSError:
                break
            received += client.silence(0.25)
            if client.closed:
                break
        received += b"".join(client.lines_until_eof(timeout=10))
        waited = time.monotonic() - started
    assert received == b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    assert COMMAND_TIMEOUT * 0.8 < waited < COMMAND_TIMEOUT + 3


def test_smtp_slow_data_is_cut_off(timeout_server: MailServer, source: str) -> None:
    """One byte a second keeps the silence timer happy; data_timeout does not."""
    before = timeout_server.mailboxes()
    with smtp_client(timeout_server.port("smtp"), source=source) as client:
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert client.smtp("DATA").startswith(b"354 ")
        started = time.monotonic()
        received = b""
        for byte in b"Subject: slow\r\n\r\n" + b"z" * 100:
            try:
                client.send(bytes([byte]))
            except OSError:
                break
            received += client.silence(1.0)
            if client.closed:
                break
        waited = time.monotonic() - started
    assert received == b"421 4.4.2 mx.example.test Error: the message took too long to arrive\r\n"
    assert DATA_TIMEOUT * 0.8 < waited < DATA_TIMEOUT + 3
    assert timeout_server.mailboxes() == before


def test_smtp_silence_inside_data(timeout_server: MailServer, source: str) -> None:
    with smtp_client(timeout_server.port("smtp"), source=source) as client:
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert client.smtp("DATA").startswith(b"354 ")
        client.send(b"Subject: then nothing\r\n")
        lines, waited = timed_lines(client, 10)
    assert len(lines) == 1 and lines[0].startswith(b"421 4.4.2 "), lines
    assert COMMAND_TIMEOUT * 0.8 < waited < COMMAND_TIMEOUT + 3


def test_smtp_a_normal_message_is_not_hurried(timeout_server: MailServer, source: str) -> None:
    """Short timeouts, but a message sent at a normal pace goes through."""
    before = timeout_server.mailboxes()
    with smtp_client(timeout_server.port("smtp"), source=source) as client:
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert client.smtp("DATA").startswith(b"354 ")
        for n in range(4):  # 2 s in all: longer than the silence timeout
            client.send(f"Line {n}\r\n".encode())
            time.sleep(0.5)
        assert client.smtp(".").startswith(b"250 2.0.0 ")
        assert client.smtp("QUIT").startswith(b"221 ")
    assert timeout_server.mailboxes()[ALICE] == before[ALICE] + 1


@pytest.mark.parametrize("listener", sorted(IMPLICIT_TLS))
def test_stalled_tls_handshake_is_dropped(
    timeout_server: MailServer, source: str, listener: str
) -> None:
    """No ClientHello: the handshake timeout is the login (IMAP, POP3) or
    command (SMTP) timeout when that is shorter than asyncio's 60 s."""
    with Client(timeout_server.port(listener), source=source) as client:
        lines, waited = timed_lines(client, 10)
    assert lines == []
    # Both are 1.5 s here.
    assert LOGIN_TIMEOUT * 0.8 < waited < LOGIN_TIMEOUT + 3


@pytest.mark.parametrize("listener", ["imap", "imaps", "pop3", "pop3s"])
@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickle"])
def test_login_timeout(
    timeout_server: MailServer, source: str, listener: str, trickle: bool
) -> None:
    """Before login the client has login_timeout in all; a byte every 0.3 s
    (a slowloris) does not extend it."""
    context = unverified_context() if listener in IMPLICIT_TLS else None
    with Client(timeout_server.port(listener), source=source, context=context) as client:
        assert client.line()[:3] in (b"* O", b"+OK")
        started = time.monotonic()
        received = b""
        if trickle:
            for byte in b"a LOGIN alice@example.test x":
                try:
                    client.send(bytes([byte]))
                except OSError:
                    break
                received += client.silence(0.3)
                if client.closed:
                    break
        received += b"".join(client.lines_until_eof(timeout=10))
        waited = time.monotonic() - started
    if PROTOCOL[listener] == "imap":
        assert received == b"* BYE Autologout; not logged in in time\r\n"
    else:
        assert received == b"-ERR Autologout: not logged in in time\r\n"
    assert LOGIN_TIMEOUT * 0.8 < waited < LOGIN_TIMEOUT + 3


def test_login_timeout_ends_at_login(timeout_server: MailServer, source: str) -> None:
    """Once logged in, the autologout timer is rfc9051:5.4's 30 minutes."""
    with Client(timeout_server.port("imap"), source=source) as client:
        imap_login(client)
        assert client.silence(LOGIN_TIMEOUT + 0.5) == b""
        _, tagged = client.imap("n", "NOOP")
        assert tagged.startswith(b"n OK "), tagged
    with Client(timeout_server.port("pop3"), source=new_source()) as client:
        assert client.line().startswith(b"+OK")
        assert command(client, f"USER {ALICE}").startswith(b"+OK")
        assert command(client, f"PASS {PASSWORD}").startswith(b"+OK")
        assert client.silence(LOGIN_TIMEOUT + 0.5) == b""
        assert command(client, "NOOP").startswith(b"+OK")


# -- configuration ------------------------------------------------------------------------


def _limits(tmp_path: Path, **limits: object) -> Limits:
    data = {
        "hostname": "mx.example.test",
        "data_dir": str(tmp_path),
        "domains": ["example.test"],
        "limits": limits,
    }
    return from_dict(data, tmp_path / "estafeta.toml").limits


def test_timeout_settings(tmp_path: Path) -> None:
    limits = _limits(
        tmp_path,
        command_timeout="5m",
        data_timeout="15m",
        login_timeout=30,
        imap_idle_timeout="1h",
        pop3_idle_timeout="10m",
    )
    assert (
        limits.command_timeout,
        limits.data_timeout,
        limits.login_timeout,
        limits.imap_idle_timeout,
        limits.pop3_idle_timeout,
    ) == (300.0, 900.0, 30.0, 3600.0, 600.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("imap_idle_timeout", "29m", "at least 30 minutes (rfc9051:5.4)"),
        ("pop3_idle_timeout", 599, "at least 10 minutes (rfc1939:3)"),
        ("data_timeout", 0, "must be greater than 0"),
        ("login_timeout", "soon", "must be a number of seconds"),
        ("command_timeout", -1, "must be greater than 0"),
    ],
)
def test_timeout_settings_refused(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _limits(tmp_path, **{key: value})
    assert error.value.key == f"limits.{key}"
    assert message in error.value.message
