"""SMTP smuggling (SEC Consult, December 2023): a second message hidden in
the first behind an end-of-data sequence that is not <CRLF>.<CRLF>.

rfc5321:2.3.8 and 4.1.1.4: lines end in CRLF only, and DATA ends at
<CRLF>.<CRLF> only. If a server took <LF>.<LF> (or one of its cousins) as the
end, the commands after it — MAIL FROM a forged sender, RCPT to a victim —
would run as a second transaction that the first hop never saw.

What estafeta does:
- on the MX, a message with a bare CR or LF is refused whole (550 5.6.0):
  one reply to the one DATA, and the smuggled MAIL/RCPT never run;
- on submission (an authenticated user), bare CR and LF become CRLF: the
  "smuggled" text is the body of the one message, and the copy queued for
  the next hop carries no bare line ending and is dot-stuffed on the way out,
  so the next hop sees one message too;
- BDAT (rfc3030 CHUNKING) is not offered, and refused if sent.
"""

from __future__ import annotations

import base64
import re

import pytest

from estafeta.queue.client import dot_stuff
from tests.security.conftest import (
    ALICE,
    BOB,
    PASSWORD,
    Client,
    MailServer,
    smtp_client,
    tls_client,
)

# The end-of-data variants of the SEC Consult paper and its follow-ups.
FAKE_ENDS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-cr": b"\r.\r",
}
BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")

SMUGGLED = (
    b"MAIL FROM:<admin@example.test>\r\n"
    b"RCPT TO:<bob@example.test>\r\n"
    b"RCPT TO:<victim@other.example>\r\n"
    b"DATA\r\n"
    b"From: <admin@example.test>\r\nSubject: smuggled\r\n\r\nforged\r\n"
    b".\r\n"
)


def outer(sender: str, end: bytes) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{ALICE}>\r\nSubject: outer\r\n\r\nhello\r\n".encode()
        + end
        + SMUGGLED
    )


def transaction(client: Client, sender: str, rcpts: list[str], body: bytes) -> list[bytes]:
    """MAIL, RCPTs, DATA and ``body``, then QUIT: every reply after the 354."""
    assert client.smtp(f"MAIL FROM:<{sender}>").startswith(b"250 ")
    for rcpt in rcpts:
        assert client.smtp(f"RCPT TO:<{rcpt}>").startswith(b"250 ")
    assert client.smtp("DATA").startswith(b"354 ")
    client.send(body + b"QUIT\r\n")
    return client.lines_until_eof()


@pytest.mark.parametrize("end", FAKE_ENDS.values(), ids=FAKE_ENDS.keys())
def test_mx_refuses_the_message_and_runs_no_smuggled_command(
    mail_server: MailServer, source: str, end: bytes
) -> None:
    before = mail_server.mailboxes()
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        body = outer("x@remote.example", end)
        replies = transaction(client, "sender@remote.example", [ALICE], body)
    # One reply to the one DATA, one to QUIT: no 250 for a smuggled MAIL/RCPT.
    assert len(replies) == 2, replies
    assert replies[0].startswith(b"550 5.6.0 "), replies
    assert replies[1].startswith(b"221 ")
    assert mail_server.mailboxes() == before
    assert mail_server.queued() == []


BARE = {"lf": b"bare\nlf\r\n", "cr": b"bare\rcr\r\n", "lf-only": b"\n", "cr-cr": b"x\r\r\n"}


@pytest.mark.parametrize("bad", BARE.values(), ids=BARE.keys())
def test_mx_refuses_bare_line_endings_anywhere(
    mail_server: MailServer, source: str, bad: bytes
) -> None:
    before = mail_server.mailboxes()
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        body = b"Subject: x\r\n\r\nok\r\n" + bad + b"more\r\n.\r\n"
        replies = transaction(client, "sender@remote.example", [ALICE], body)
    assert [r[:10] for r in replies] == [b"550 5.6.0 ", b"221 2.0.0 "], replies
    assert mail_server.mailboxes() == before


def test_mx_takes_a_nul_dot_line_as_text(mail_server: MailServer, source: str) -> None:
    """<CRLF><NUL>.<CRLF> ends nothing: one message, the rest is its text."""
    before = mail_server.mailboxes()
    with smtp_client(mail_server.port("smtp"), source=source) as client:
        body = outer("x@remote.example", b"\r\n\x00.\r\n")
        replies = transaction(client, "sender@remote.example", [ALICE], body)
    assert len(replies) == 2, replies
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as ")
    assert mail_server.mailboxes() == {**before, ALICE: before[ALICE] + 1}
    text = mail_server.instance.files(ALICE)[-1].read_bytes()
    assert b"Subject: outer" in text and b"\r\nMAIL FROM:<admin@example.test>\r\n" in text
    assert mail_server.queued() == []


def _authenticated(server: MailServer, source: str) -> Client:
    client = tls_client(server, "submission", server.verifying_context(), source=source)
    assert client.smtp("EHLO client.example").startswith(b"250 ")
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert client.smtp(f"AUTH PLAIN {token}").startswith(b"235 ")
    return client


@pytest.mark.parametrize("end", FAKE_ENDS.values(), ids=FAKE_ENDS.keys())
def test_submission_sends_one_message_the_next_hop_cannot_split(
    mail_server: MailServer, source: str, end: bytes
) -> None:
    before = mail_server.mailboxes()
    queued_before = {entry["id"] for entry in mail_server.queued()}
    with _authenticated(mail_server, source) as client:
        replies = transaction(client, ALICE, [BOB, "carol@remote.example"], outer(ALICE, end))
    assert len(replies) == 2, replies
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as ")
    assert replies[1].startswith(b"221 ")
    # bob got the one message, from alice, with the "smuggled" lines as text.
    assert mail_server.mailboxes() == {**before, BOB: before[BOB] + 1}
    text = mail_server.instance.files(BOB)[-1].read_bytes()
    assert b"Subject: outer" in text and b"Subject: smuggled" in text
    assert not BARE_LINE_ENDING.search(text)
    # One queue entry, for carol only: the smuggled RCPT to victim never ran.
    new = [e for e in mail_server.queued() if e["id"] not in queued_before]
    assert [(e["sender"], e["recipients"]) for e in new] == [(ALICE, ["carol@remote.example"])]
    data = mail_server.queued_message(str(new[0]["message"]))
    assert not BARE_LINE_ENDING.search(data)
    # On the wire to the next hop: one end of data, at the end.
    wire = dot_stuff(data)
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")


def test_bdat_is_not_offered_nor_accepted(mail_server: MailServer, source: str) -> None:
    """rfc3030: no CHUNKING, no BINARYMIME; BDAT is an unknown command."""
    before = mail_server.mailboxes()
    with Client(mail_server.port("smtp"), source=source) as client:
        assert client.line().startswith(b"220 ")
        client.send(b"EHLO client.example\r\n")
        keywords = []
        while True:
            line = client.line()
            keywords.append(line[4:].strip().split(b" ")[0].upper())
            if line[3:4] != b"-":
                break
        assert b"CHUNKING" not in keywords and b"BINARYMIME" not in keywords
        assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert client.smtp("BDAT 0 LAST").startswith(b"500 5.5.2 ")
        assert client.smtp("RSET").startswith(b"250 ")
        reply = client.smtp("MAIL FROM:<x@remote.example> BODY=BINARYMIME")
        assert reply.startswith(b"501 5.5.4 "), reply
    assert mail_server.mailboxes() == before
