"""Issue 14 item 4: users could send as another user.

The attack: logged in as alice on 587 or 465, submit a message whose From:
shows bob. ``From: alice@example.test <bob@example.test>`` and a header
``From : bob@example.test`` followed by ``From: alice@example.test`` were
accepted: the ownership check read From: with Python's email parser, which
sees only alice in both, while our own parser (IMAP ENVELOPE) and mail
clients see bob; and DKIM signed the result for the domain.

Now one parser (message.structure, the one ENVELOPE uses) reads From: and
Sender: for the check: exactly one From field (rfc5322:3.6), each a strict
mailbox-list (rfc5322:3.4, 3.6.2), every mailbox owned, and no address a
client would display (a display name or comment, RFC 2047 decoded) that
is not alice's. Each trick gets a 5xx after DATA, and nothing is queued or
delivered; the legitimate forms still get 250.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import (
    ALICE,
    BOB,
    DOMAIN,
    PASSWORD,
    Client,
    MailServer,
    start_server,
    tls_client,
    unverified_context,
)

ALIAS = f"sales@{DOMAIN}"
REMOTE = "friend@remote.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = start_server(Path(tmp_path_factory.mktemp("spoof")))
    server.instance.cli("alias", "add", ALIAS, ALICE)
    try:
        yield server
    finally:
        server.stop()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


TRICKS = {
    # The two of the issue.
    "address-as-display-name": "From: alice@example.test <bob@example.test>",
    "obs-from-then-from": "From : bob@example.test\r\nFrom: alice@example.test",
    # More than one From field, however spelled (rfc5322:3.6: exactly one).
    "two-from": "From: alice@example.test\r\nFrom: bob@example.test",
    "two-from-case": 'From: "Alice" <alice@example.test>\r\nfrom: bob@example.test',
    "two-from-bare-lf": "From: alice@example.test\nFrom: bob@example.test",
    "tab-before-colon": "From\t: bob@example.test\r\nFrom: alice@example.test",
    # Every mailbox of the list is checked.
    "second-mailbox": "From: Alice <alice@example.test>, bob@example.test",
    "folded-second-mailbox": "From: alice@example.test,\r\n bob@example.test",
    "folded-angle": "From: alice@example.test\r\n <bob@example.test>",
    # What a client may show instead of the address.
    "comment": "From: alice@example.test (bob@example.test)",
    "quoted-display-name": 'From: "bob@example.test" <alice@example.test>',
    "quoted-display-name-angle": 'From: "Bob <bob@example.test>" <alice@example.test>',
    "encoded-word-q": ("From: =?utf-8?q?Bob_=3Cbob=40example=2Etest=3E?= <alice@example.test>"),
    "encoded-word-b": f"From: =?utf-8?b?{b64('bob@example.test')}?= <alice@example.test>",
    "comment-in-angle": "From: Alice <alice@example.test> (bob@example.test)",
    # Local parts and syntax a spoofer may hope we read leniently.
    "quoted-local-part-with-at": 'From: "bob@example.test"@example.test',
    "quoted-local-part-alice": 'From: "alice@example.test"@remote.example',
    "comment-inside-address": "From: bob(alice@example.test)@example.test",
    "group": "From: friends: bob@example.test, alice@example.test;",
    "group-of-alice": "From: friends: alice@example.test;",
    "route": "From: <@example.test:bob@example.test>",
    "junk-after-angle": "From: <alice@example.test> bob@example.test",
    "unclosed-quote": 'From: "Alice <alice@example.test>',
    "unclosed-comment": "From: (Alice alice@example.test",
    "stray-parenthesis": "From: alice@example.test) <bob@example.test>",
    "control-character": "From: alice@example.test\x00<bob@example.test>",
    "empty": "From: ",
    "no-domain": "From: alice",
    "null-address": "From: <>",
    # Sender: speaks for the message too (rfc5322:3.6.2).
    "sender": "From: alice@example.test\r\nSender: bob@example.test",
    "two-senders": "From: alice@example.test\r\nSender: alice@example.test\r\nSender: bob@x.y",
    # Refused before this change too.
    "plain-bob": "From: bob@example.test",
    "display-name-bob": "From: Bob <bob@EXAMPLE.test>",
    "uppercase-field-name": "FROM: bob@example.test",
    "no-space": "From:bob@example.test",
    "remote-address": "From: someone@remote.example",
}

LEGITIMATE = {
    "plain": "From: alice@example.test",
    "display-name": "From: Alice <alice@example.test>",
    "quoted-display-name": 'From: "Alice Liddell" <alice@example.test>',
    "display-name-is-own-address": 'From: "Alice <alice@example.test>" <alice@example.test>',
    "encoded-word": "From: =?utf-8?q?Al=C3=ADce?= <alice@example.test>",
    "comment": "From: alice@example.test (Alice)",
    "alias": f"From: Sales <{ALIAS}>",
    "subaddress": "From: alice+news@example.test",
    "obs-from-alone": "From : Alice <alice@example.test>",
    "sender-is-alice": "From: Sales <sales@example.test>\r\nSender: alice@example.test",
    "no-from": "",
}


def submit(server: MailServer, listener: str, source: str, header: str) -> bytes:
    """Logged in as alice: a message to bob and to a remote address."""
    context = unverified_context()
    client: Client
    with tls_client(server, listener, context, source=source) as client:
        assert client.smtp("EHLO client.example").startswith(b"250 ")
        plain = b64(f"\0{ALICE}\0{PASSWORD}")
        assert client.smtp(f"AUTH PLAIN {plain}").startswith(b"235 ")
        assert client.smtp(f"MAIL FROM:<{ALICE}>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{BOB}>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{REMOTE}>").startswith(b"250 ")
        assert client.smtp("DATA").startswith(b"354 ")
        lines = (header + "\r\n" if header else "") + "Subject: hello\r\n\r\nbody\r\n."
        return client.smtp(lines.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("listener", ["submission", "submissions"])
@pytest.mark.parametrize("header", TRICKS.values(), ids=TRICKS.keys())
def test_spoofed_from_is_refused(
    server: MailServer, source: str, listener: str, header: str
) -> None:
    queued, delivered = len(server.queued()), server.mail(BOB)
    reply = submit(server, listener, source, header)
    assert reply.startswith((b"550 5.6.0 ", b"553 5.7.1 ")), reply
    assert len(server.queued()) == queued
    assert server.mail(BOB) == delivered


@pytest.mark.parametrize("header", LEGITIMATE.values(), ids=LEGITIMATE.keys())
def test_own_addresses_are_accepted(server: MailServer, source: str, header: str) -> None:
    queued, delivered = len(server.queued()), server.mail(BOB)
    reply = submit(server, "submissions", source, header)
    assert reply.startswith(b"250 2.0.0 "), reply
    assert len(server.queued()) == queued + 1
    assert server.mail(BOB) == delivered + 1
    # What bob's client will show is the From: that was checked.
    newest = max(server.instance.files(BOB), key=lambda path: path.stat().st_mtime_ns)
    stored = newest.read_bytes()
    if header:
        assert header.encode() + b"\r\n" in stored
    else:
        assert f"From: <{ALICE}>\r\n".encode() in stored
