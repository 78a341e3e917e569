"""STARTTLS command injection (CVE-2011-0411 and its many cousins).

A man in the middle appends commands to the client's STARTTLS in the same
packet. A server that keeps them in its input buffer runs them after the
handshake, as if the client had sent them over TLS. rfc3207:4.2 (SMTP),
rfc9051:6.2.1 (IMAP) and rfc2595:4 (POP3): what was pipelined after
STARTTLS / STLS is discarded.

Each case sends the command and the injection in one ``send``, does the
handshake, then listens: nothing may arrive before our own next command,
and the first reply must be to it. The large cases push more than the
server reads at once (64 KiB for IMAP and POP3, two lines for aiosmtpd's
buffer), so the injection sits in the stream's buffer rather than in the
parser's — the case that once went through on IMAP and POP3.
"""

from __future__ import annotations

import ssl

import pytest

from tests.security.conftest import (
    ALICE,
    Client,
    MailServer,
    tls_client,
    unverified_context,
)

# Time to wait for an answer that must not come (it would take milliseconds).
QUIET = 0.5


def _filler(total: int, before: bytes) -> bytes:
    """Harmless lines that make ``before + filler`` exactly ``total`` octets."""
    size = total - len(before)
    line = b"NOOP " + b"x" * 60 + b"\r\n"
    lines, rest = divmod(size, len(line))
    return line * lines + (b"x" * (rest - 2) + b"\r\n" if rest >= 2 else b"\r\n"[:rest])


def _handshake_or_refusal(
    server: MailServer, listener: str, inject: bytes, source: str, then: bytes = b""
) -> tuple[bytes, Client] | None:
    """TLS up after STARTTLS + ``inject`` (and ``then``, a moment later);
    then what arrives unasked. None when the handshake failed (the injected
    octets were taken for TLS records, which is a refusal too)."""
    try:
        client = tls_client(
            server, listener, unverified_context(), source=source, inject=inject, then=then
        )
    except (ssl.SSLError, ConnectionError):
        return None
    return client.silence(QUIET), client


SMTP_INJECTIONS = {
    "rset": b"RSET\r\n",
    "mail-from": b"MAIL FROM:<attacker@remote.example>\r\n",
    "ehlo-mail-rcpt": (
        b"EHLO evil.example\r\nMAIL FROM:<attacker@remote.example>\r\n"
        b"RCPT TO:<alice@example.test>\r\n"
    ),
    "auth": b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4\r\n",
    "over-two-lines": _filler(3000, b"") + b"MAIL FROM:<attacker@remote.example>\r\n",
    # 70 KB: more than the server's stream buffer holds, so part of it is
    # still in the socket when the 220 goes out; all of it is dropped and
    # the handshake succeeds.
    "flood-70k": _filler(70000, b"") + b"MAIL FROM:<attacker@remote.example>\r\n",
}


@pytest.mark.parametrize("listener", ["smtp", "submission"])
@pytest.mark.parametrize("inject", SMTP_INJECTIONS.values(), ids=SMTP_INJECTIONS.keys())
def test_smtp_discards_what_follows_starttls(
    mail_server: MailServer, source: str, listener: str, inject: bytes
) -> None:
    result = _handshake_or_refusal(mail_server, listener, inject, source)
    assert result is not None, "the handshake failed after a pipelined injection"
    unasked, client = result
    assert unasked == b"", f"the server answered injected commands: {unasked!r}"
    with client:
        # The first reply is to our command; the session starts afresh
        # (rfc3207:4.2): no MAIL FROM of the attacker is pending.
        assert client.smtp("NOOP").startswith(b"250 2.0.0 ")
        assert client.smtp("EHLO client.example").startswith(b"250 ")
        reply = client.smtp(f"RCPT TO:<{ALICE}>")
        # MX: no MAIL yet (503). Submission: not authenticated either (530).
        expected = b"503 5.5.1 " if listener == "smtp" else b"530 5.7.0 "
        assert reply.startswith(expected), reply


IMAP_INJECTIONS = {
    "capability": b"b CAPABILITY\r\n",
    "login": b'b LOGIN alice@example.test "guess"\r\nc NOOP\r\n',
    "literal": b"b LOGIN {5}\r\n",
    # Exactly the 64 KiB the session reads at once, then the injection.
    "past-64k": None,
}


@pytest.mark.parametrize("listener", ["imap"])
@pytest.mark.parametrize("name", IMAP_INJECTIONS.keys())
def test_imap_discards_what_follows_starttls(
    mail_server: MailServer, source: str, listener: str, name: str
) -> None:
    inject = IMAP_INJECTIONS[name]
    if inject is None:
        inject = _filler(65536, b"S STARTTLS\r\n") + b"b CAPABILITY\r\nc NOOP\r\n"
    result = _handshake_or_refusal(mail_server, listener, inject, source)
    assert result is not None, "the handshake failed"
    unasked, client = result
    assert unasked == b"", f"the server answered injected commands: {unasked!r}"
    with client:
        untagged, tagged = client.imap("d", "NOOP")
        assert untagged == [] and tagged.startswith(b"d OK "), (untagged, tagged)
        # Still not logged in: the injected LOGIN did not run.
        _, tagged = client.imap("e", "SELECT INBOX")
        assert tagged.startswith(b"e BAD "), tagged


POP3_INJECTIONS = {
    "capa": b"CAPA\r\n",
    "user": b"USER alice@example.test\r\n",
    "past-64k": None,
}


@pytest.mark.parametrize("name", POP3_INJECTIONS.keys())
def test_pop3_discards_what_follows_stls(mail_server: MailServer, source: str, name: str) -> None:
    inject = POP3_INJECTIONS[name]
    if inject is None:
        inject = _filler(65536, b"STLS\r\n") + b"USER alice@example.test\r\n"
    result = _handshake_or_refusal(mail_server, "pop3", inject, source)
    assert result is not None, "the handshake failed"
    unasked, client = result
    assert unasked == b"", f"the server answered injected commands: {unasked!r}"
    with client:
        # The injected USER did not run: PASS has no user to go with.
        client.send(b"PASS guess\r\n")
        reply = client.line()
        assert reply.startswith(b"-ERR USER first"), reply
        client.send(b"NOOP\r\n")
        assert client.line().startswith(b"-ERR NOOP is not allowed now")


@pytest.mark.parametrize("listener", ["smtp", "imap", "pop3"])
def test_an_injection_left_in_the_stream_buffer_is_logged(
    mail_server: MailServer, source: str, listener: str
) -> None:
    """A large injection (more than one read of the server) is dropped and
    logged once, with the client's address and the octets dropped."""
    if listener == "smtp":
        inject = _filler(3000, b"") + b"MAIL FROM:<attacker@remote.example>\r\n"
    elif listener == "imap":
        inject = _filler(65536, b"S STARTTLS\r\n") + b"b CAPABILITY\r\n"
    else:
        inject = _filler(65536, b"STLS\r\n") + b"USER alice@example.test\r\n"
    result = _handshake_or_refusal(mail_server, listener, inject, source)
    assert result is not None, "the handshake failed"
    unasked, client = result
    client.close()
    assert unasked == b""
    logged = _pipelined_lines(mail_server, source)
    assert len(logged) == 1, logged


SPLIT_INJECTIONS = {
    "smtp": (b"RSET\r\n", b"MAIL FROM:<attacker@remote.example>\r\n"),
    "imap": (b"b CAPABILITY\r\n", b'c LOGIN alice@example.test "guess"\r\n'),
    "pop3": (b"CAPA\r\n", b"USER alice@example.test\r\n"),
}


@pytest.mark.parametrize("listener", SPLIT_INJECTIONS.keys())
def test_the_rest_of_an_injection_that_comes_late_is_dropped_too(
    mail_server: MailServer, source: str, listener: str
) -> None:
    """An injection may reach the server in two pieces (the sender's kernel
    or scheduler split it). Once something was pipelined, the server reads
    on until the flow pauses before it replies: the late piece is dropped
    with the first, not read as a TLS record that fails the handshake."""
    first, rest = SPLIT_INJECTIONS[listener]
    result = _handshake_or_refusal(mail_server, listener, first, source, then=rest)
    assert result is not None, "the handshake failed: the late piece was taken for TLS"
    unasked, client = result
    assert unasked == b"", f"the server answered injected commands: {unasked!r}"
    with client:
        if listener == "smtp":
            assert client.smtp("NOOP").startswith(b"250 2.0.0 ")
            assert client.smtp("EHLO client.example").startswith(b"250 ")
            assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"503 5.5.1 ")  # no MAIL
        elif listener == "imap":
            _, tagged = client.imap("d", "SELECT INBOX")
            assert tagged.startswith(b"d BAD "), tagged  # the LOGIN did not run
        else:
            client.send(b"PASS guess\r\n")
            assert client.line().startswith(b"-ERR USER first")
    logged = _pipelined_lines(mail_server, source)
    assert len(logged) == 1, logged
    assert f"octets={len(first) + len(rest)}" in logged[0], logged


def _pipelined_lines(server: MailServer, source: str) -> list[str]:
    """The server's ``starttls_pipelined`` lines about ``source``."""
    return [
        line
        for line in server.log_text().splitlines()
        if "starttls_pipelined" in line and f"client={source} " in line + " "
    ]
