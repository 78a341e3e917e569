"""Open relay: nobody without credentials gets mail relayed to another domain.

On the MX port (port 25 semantics: no AUTH) every address that leads off
our domains is refused at RCPT with a 5xx — 554 5.7.1 for a remote domain,
550 5.1.1 for a local part nobody has, 553 5.1.3 / 501 for syntax — however
it is dressed up: the percent hack and bang paths of UUCP days, "@@",
quoted local parts holding an "@", source routes (rfc5321:4.1.1.3 says to
ignore them: the last hop is what counts), address literals, look-alike
domains, trailing dots, the null sender. Submission without AUTH refuses
every transaction (530 5.7.0, rfc4954:6). After each case nothing is in the
outbound queue and no mailbox got anything.
"""

from __future__ import annotations

import re

import pytest

from tests.security.conftest import (
    ALICE,
    BOB,
    Client,
    MailServer,
    smtp_client,
    tls_client,
)

REMOTE_SENDER = "<sender@remote.example>"
RELAY_DENIED = r"554 5\.7\.1 Relay access denied"
NO_SUCH_USER = r"550 5\.1\.1 No such user here"
BAD_SYNTAX = r"(553 5\.1\.3|501 5\.5\.[24]) "

# (id, RCPT TO argument, the reply it gets). example.test and other.test are
# ours (see Instance.write_config); other.example and the rest are not.
REFUSED = [
    ("remote", "<victim@other.example>", RELAY_DENIED),
    ("remote-without-brackets", "victim@other.example", RELAY_DENIED),
    ("percent-hack", "<victim%other.example@example.test>", NO_SUCH_USER),
    ("percent-hack-real-user", "<alice%other.example@example.test>", NO_SUCH_USER),
    ("percent-in-domain", "<victim@other.example%example.test>", BAD_SYNTAX),
    ("bang-path-at-ours", "<other.example!victim@example.test>", NO_SUCH_USER),
    ("bang-path-remote-at-end", "<example.test!victim@other.example>", RELAY_DENIED),
    ("bang-path-bare", "<other!victim>", BAD_SYNTAX),
    ("bang-path-no-brackets", "other!victim", BAD_SYNTAX),
    ("double-at", "<victim@@example.test>", BAD_SYNTAX),
    ("double-at-remote", "<victim@@other.example>", BAD_SYNTAX),
    ("two-domains", "<victim@other.example@example.test>", BAD_SYNTAX),
    ("quoted-at-local", '<"victim@other.example"@example.test>', NO_SUCH_USER),
    ("quoted-at-remote", '<"alice@example.test"@other.example>', RELAY_DENIED),
    ("quoted-remote", '<"victim"@other.example>', RELAY_DENIED),
    ("source-route", "<@example.test:victim@other.example>", RELAY_DENIED),
    ("source-route-2-hops", "<@example.test,@a.example:victim@other.example>", RELAY_DENIED),
    ("ipv4-literal", "<postmaster@[127.0.0.1]>", BAD_SYNTAX),
    ("ipv6-literal", "<postmaster@[IPv6:::1]>", BAD_SYNTAX),
    ("ip-as-domain", "<victim@127.0.0.1>", RELAY_DENIED),
    ("localhost", "<victim@localhost>", RELAY_DENIED),
    ("our-hostname-is-no-mail-domain", "<alice@mx.example.test>", RELAY_DENIED),
    ("ends-like-ours", "<alice@evilexample.test>", RELAY_DENIED),
    ("ours-as-prefix", "<alice@example.test.evil>", RELAY_DENIED),
    ("idn-look-alike", "<alice@ex\u0430mple.test>", RELAY_DENIED),  # Cyrillic a
    ("trailing-dot-remote", "<victim@other.example.>", BAD_SYNTAX),
    ("trailing-dot-ours", "<alice@example.test.>", BAD_SYNTAX),
    ("trailing-dots", "<alice@example.test..>", BAD_SYNTAX),
    ("tab-before-bracket", "<victim@other.example\t>", RELAY_DENIED),
    ("two-addresses", "<alice@example.test>,<victim@other.example>", BAD_SYNTAX),
]

# Addresses that are ours after all: accepted and delivered here, never queued.
ACCEPTED = [
    ("mixed-case", "<Alice@ExAmple.TEST>"),
    # rfc5321:4.1.1.3: the route is ignored, the mailbox is alice's.
    ("source-route-to-us", "<@other.example:alice@example.test>"),
]


def message(subject: str) -> bytes:
    return f"From: <sender@remote.example>\r\nSubject: {subject}\r\n\r\nhello\r\n.\r\n".encode()


@pytest.fixture
def empty_before(mail_server: MailServer) -> dict[str, int]:
    assert mail_server.queued() == []
    return mail_server.mailboxes()


def assert_nothing_relayed(server: MailServer, before: dict[str, int]) -> None:
    assert server.queued() == []
    assert server.mailboxes() == before


@pytest.mark.parametrize(
    ("rcpt", "expected"), [pytest.param(rcpt, reply, id=name) for name, rcpt, reply in REFUSED]
)
def test_mx_refuses(
    mail_server: MailServer, empty_before: dict[str, int], source: str, rcpt: str, expected: str
) -> None:
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        assert client.smtp(f"MAIL FROM:{REMOTE_SENDER}").startswith(b"250 2.1.0 ")
        reply = client.smtp(f"RCPT TO:{rcpt}".encode())
        assert re.match(expected, reply.decode("utf-8", "replace")), reply
        # No recipient, no message: the client cannot go on to DATA.
        assert client.smtp("DATA").startswith(b"503 5.5.1 ")
        assert client.smtp("QUIT").startswith(b"221 ")
    assert_nothing_relayed(mail_server, empty_before)


@pytest.mark.parametrize("sender", ["<>", REMOTE_SENDER, f"<{ALICE}>", f"<{BOB}>"])
def test_mx_refuses_remote_recipient_whatever_the_sender(
    mail_server: MailServer, empty_before: dict[str, int], source: str, sender: str
) -> None:
    """The null sender (bounces) and our own addresses (forged) relay no more."""
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        assert client.smtp(f"MAIL FROM:{sender}").startswith(b"250 ")
        assert re.match(RELAY_DENIED, client.smtp("RCPT TO:<victim@other.example>").decode())
        assert client.smtp("DATA").startswith(b"503 ")
    assert_nothing_relayed(mail_server, empty_before)


@pytest.mark.parametrize("rcpt", [pytest.param(rcpt, id=name) for name, rcpt in ACCEPTED])
def test_mx_accepts_our_own_addresses(
    mail_server: MailServer, empty_before: dict[str, int], source: str, rcpt: str
) -> None:
    """Not relay: User@ExAmple.TEST is alice's, delivered here, never queued."""
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        assert client.smtp(f"MAIL FROM:{REMOTE_SENDER}").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:{rcpt}").startswith(b"250 2.1.5 ")
        assert client.smtp("DATA").startswith(b"354 ")
        client.send(message("local"))
        assert client.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert mail_server.queued() == []
    assert mail_server.mailboxes() == {**empty_before, ALICE: empty_before[ALICE] + 1}


def test_mx_mixed_recipients_deliver_only_the_local_one(
    mail_server: MailServer, empty_before: dict[str, int], source: str
) -> None:
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        assert client.smtp(f"MAIL FROM:{REMOTE_SENDER}").startswith(b"250 ")
        assert re.match(RELAY_DENIED, client.smtp("RCPT TO:<victim@other.example>").decode())
        assert client.smtp(f"RCPT TO:<{BOB}>").startswith(b"250 ")
        assert re.match(RELAY_DENIED, client.smtp("RCPT TO:<bob@other.example>").decode())
        assert client.smtp("DATA").startswith(b"354 ")
        client.send(message("mixed"))
        assert client.reply().startswith(b"250 2.0.0 ")
    assert mail_server.queued() == []
    assert mail_server.mailboxes() == {**empty_before, BOB: empty_before[BOB] + 1}


def test_mx_takes_postmaster_without_domain(mail_server: MailServer, source: str) -> None:
    """rfc5321:4.5.1: "<Postmaster>" MUST be accepted — as the postmaster of
    our first domain (who does not exist here: 550, but no syntax error)."""
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        assert client.smtp(f"MAIL FROM:{REMOTE_SENDER}").startswith(b"250 ")
        reply = client.smtp("RCPT TO:<Postmaster>")
        assert reply.startswith(b"550 5.1.1 No such user here: <postmaster@example.test>"), reply
    assert mail_server.queued() == []


def _submission_client(server: MailServer, listener: str, source: str) -> Client:
    if listener == "submission":
        return smtp_client(server.port(listener), source=source)
    name = "submission" if listener == "submission+starttls" else listener
    client = tls_client(server, name, server.verifying_context(), source=source)
    assert client.smtp("EHLO client.example").startswith(b"250 ")
    return client


@pytest.mark.parametrize("listener", ["submission", "submission+starttls", "submissions"])
@pytest.mark.parametrize(
    "rcpt",
    [
        "<victim@other.example>",
        "<victim%other.example@example.test>",
        "<@example.test:victim@other.example>",
        f"<{BOB}>",
    ],
)
def test_submission_without_auth_refuses_everything(
    mail_server: MailServer, empty_before: dict[str, int], source: str, listener: str, rcpt: str
) -> None:
    """rfc6409:4.3 / rfc4954:6: no transaction at all before AUTH (530 5.7.0)."""
    with _submission_client(mail_server, listener, source) as client:
        assert client.smtp(f"MAIL FROM:<{ALICE}>").startswith(b"530 5.7.0 ")
        assert client.smtp(f"RCPT TO:{rcpt}").startswith(b"530 5.7.0 ")
        assert client.smtp("DATA").startswith(b"530 5.7.0 ")
    assert_nothing_relayed(mail_server, empty_before)


def test_submission_after_failed_auth_refuses(
    mail_server: MailServer, empty_before: dict[str, int], source: str
) -> None:
    with _submission_client(mail_server, "submissions", source) as client:
        # AUTH PLAIN of alice with a wrong password.
        assert client.smtp("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==").startswith(
            b"535 5.7.8 "
        )
        assert client.smtp(f"MAIL FROM:<{ALICE}>").startswith(b"530 5.7.0 ")
        assert client.smtp("RCPT TO:<victim@other.example>").startswith(b"530 5.7.0 ")
    assert_nothing_relayed(mail_server, empty_before)


def test_a_refused_relay_is_logged_and_absent_from_the_queue_as_the_cli_sees_it(
    mail_server: MailServer, source: str
) -> None:
    """A relay attempt of this test alone: refused, logged with its client and
    recipient, and ``estafeta queue list --json`` (the CLI, not the in-process
    reader the other tests use) shows nothing queued."""
    victim = f"victim-{source.replace('.', '-')}@other.example"
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        assert client.smtp(f"MAIL FROM:{REMOTE_SENDER}").startswith(b"250 ")
        assert re.match(RELAY_DENIED, client.smtp(f"RCPT TO:<{victim}>").decode())
        assert client.smtp("QUIT").startswith(b"221 ")
    assert mail_server.queue() == []
    logged = [
        line
        for line in mail_server.log_text().splitlines()
        if "rcpt_rejected" in line and victim in line
    ]
    assert len(logged) == 1, logged
    assert "relay denied" in logged[0] and source in logged[0]
