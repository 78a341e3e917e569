"""The messages the delivery layer writes: vacation replies (rfc5230:5,
rfc3834) and rejection notices (rfc5429:2.1)."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default as default_policy

from estafeta.delivery import responses

ORIGINAL = (
    b"From: Bob <bob@example.net>\r\nTo: alice@example.test\r\nSubject: Lunch?\r\n"
    b"Message-ID: <m2@example.net>\r\nReferences: <m0@example.net>\r\n <m1@example.net>\r\n"
    b"\r\nAre you free?\r\n"
)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def test_vacation_reply_threads_and_marks_itself_auto_replied() -> None:
    raw = responses.vacation_reply(
        original=ORIGINAL,
        sender="alice@example.test",
        to="bob@example.net",
        subject="Auto: Lunch?",
        body="Away until Monday.\n",
        mime=False,
        hostname="mx.example.test",
    )
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    reply = parse(raw)
    assert reply["From"].addresses[0].addr_spec == "alice@example.test"
    assert reply["To"].addresses[0].addr_spec == "bob@example.net"
    assert reply["Subject"] == "Auto: Lunch?"
    assert reply["Auto-Submitted"] == "auto-replied (vacation)"  # rfc3834:5.1
    assert reply["In-Reply-To"] == "<m2@example.net>"  # rfc5230:5.8
    assert str(reply["References"]).split() == [
        "<m0@example.net>",
        "<m1@example.net>",
        "<m2@example.net>",
    ]
    assert reply["Message-ID"].endswith("@mx.example.test>")
    assert reply.get_content().strip() == "Away until Monday."


def test_vacation_reply_encodes_a_non_ascii_subject_and_body() -> None:
    raw = responses.vacation_reply(
        original=ORIGINAL,
        sender="alice@example.test",
        to="bob@example.net",
        subject="Abwesend – zurück am Montag",
        body="Grüße\n",
        mime=False,
        hostname="mx.example.test",
    )
    assert raw.isascii() or b"Content-Transfer-Encoding: 8bit" in raw
    reply = parse(raw)
    assert reply["Subject"] == "Abwesend – zurück am Montag"
    assert reply.get_content().strip() == "Grüße"


def test_vacation_reply_with_mime_body_keeps_the_scripts_entity() -> None:
    entity = 'Content-Type: text/html; charset="utf-8"\n\n<p>Away</p>\n'
    reply = parse(
        responses.vacation_reply(
            original=ORIGINAL,
            sender="alice@example.test",
            to="bob@example.net",
            subject="Away",
            body=entity,
            mime=True,
            hostname="mx.example.test",
        )
    )
    assert reply.get_content_type() == "text/html"
    assert "<p>Away</p>" in reply.get_content()
    assert reply["Auto-Submitted"].startswith("auto-replied")


def test_vacation_reply_caps_a_hostile_references_field() -> None:
    ids = " ".join(f"<{n}@x.example>" for n in range(20000))
    original = f"From: b@example.net\r\nReferences: {ids}\r\nMessage-ID: <last@x>\r\n\r\n".encode()
    raw = responses.vacation_reply(
        original=original,
        sender="a@example.test",
        to="b@example.net",
        subject="Away",
        body="x",
        mime=False,
        hostname="mx.example.test",
    )
    references = str(parse(raw)["References"])
    assert len(references) <= responses.MAX_REFERENCES
    assert references.split()[-1] == "<last@x>"
    assert references.startswith("<")


def test_rejection_is_a_dsn_with_status_571_and_the_reason() -> None:
    raw = responses.rejection(
        original=ORIGINAL,
        sender="bob@example.net",
        recipient="alice@example.test",
        reason="I do not accept\r\nmail from you",
        hostname="mx.example.test",
        queue_id="Q1",
        arrival=1_700_000_000.0,
    )
    notice = parse(raw)
    assert notice.get_content_type() == "multipart/report"
    text = notice.as_string()
    assert "Status: 5.7.1" in text
    assert "Action: failed" in text
    assert "I do not accept mail from you" in text
    assert "Are you free?" in text
