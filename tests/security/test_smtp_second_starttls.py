"""Issue 14 item 13: a second STARTTLS.

The attack: on 587, STARTTLS, the handshake, then STARTTLS again. The
server answered ``220 Ready to start TLS``, stacked a second TLS layer on
the first and logged a traceback; anyone could trigger it, before logging
in. rfc3207:4: a client MUST NOT issue STARTTLS on a TLS session; the
command is out of sequence (rfc5321:4.2.4: 503). Now: ``503 5.5.1 TLS
already active``, the session goes on as if nothing happened, and nothing
in the log. The same on 465 (TLS from the first byte) and on port 25 after
its STARTTLS.
"""

from __future__ import annotations

import base64

import pytest

from tests.security.conftest import (
    ALICE,
    BOB,
    PASSWORD,
    Client,
    MailServer,
    tls_client,
    unverified_context,
)


def second_starttls(client: Client) -> None:
    assert client.smtp("EHLO client.example").startswith(b"250 ")
    reply = client.smtp("STARTTLS")
    assert reply.startswith(b"503 5.5.1 TLS already active"), reply
    # Still the same TLS session, in plain SMTP over it.
    assert client.smtp("NOOP").startswith(b"250 ")
    assert client.smtp("EHLO client.example").startswith(b"250 ")


def send(client: Client, sender: str, recipient: str) -> None:
    assert client.smtp(f"MAIL FROM:<{sender}>").startswith(b"250 ")
    assert client.smtp(f"RCPT TO:<{recipient}>").startswith(b"250 ")
    assert client.smtp("DATA").startswith(b"354 ")
    reply = client.smtp(f"From: <{sender}>\r\nSubject: after\r\n\r\nstill works\r\n.")
    assert reply.startswith(b"250 2.0.0 "), reply


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_submission(mail_server: MailServer, source: str, listener: str) -> None:
    before = mail_server.mail(BOB)
    with tls_client(mail_server, listener, unverified_context(), source=source) as client:
        second_starttls(client)
        plain = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        assert client.smtp(f"AUTH PLAIN {plain}").startswith(b"235 ")
        send(client, ALICE, BOB)
        # Again after AUTH, the same answer.
        assert client.smtp("STARTTLS").startswith(b"503 5.5.1 ")
        assert client.smtp("QUIT").startswith(b"221 ")
    assert mail_server.mail(BOB) == before + 1
    assert "Traceback" not in mail_server.log_text()


def test_mx_after_starttls(mail_server: MailServer, source: str) -> None:
    before = mail_server.mail(ALICE)
    with tls_client(mail_server, "smtp", unverified_context(), source=source) as client:
        second_starttls(client)
        send(client, "sender@remote.example", ALICE)
    assert mail_server.mail(ALICE) == before + 1
    assert "Traceback" not in mail_server.log_text()


def test_pipelined_second_starttls(mail_server: MailServer, source: str) -> None:
    """STARTTLS twice in one packet over TLS: two 503s, then our NOOP."""
    with tls_client(mail_server, "submission", unverified_context(), source=source) as client:
        client.send(b"EHLO a\r\nSTARTTLS\r\nSTARTTLS\r\nNOOP\r\n")
        assert client.reply().startswith(b"250 ")
        assert client.reply().startswith(b"503 5.5.1 ")
        assert client.reply().startswith(b"503 5.5.1 ")
        assert client.reply().startswith(b"250 ")
    assert "Traceback" not in mail_server.log_text()
