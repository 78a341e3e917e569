"""Delivery status notifications (rfc3464, rfc6522) built by queue/dsn.py."""

from __future__ import annotations

import email
import email.policy
import re
import secrets
from collections.abc import Iterator
from email.message import EmailMessage, Message
from typing import Any

import pytest

from estafeta.queue.dsn import RecipientStatus, build_dsn

NOW = 1_700_000_000.0
ARRIVAL = NOW - 86_400
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: lunch?\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"Shall we?\r\n"
)

FAILED = RecipientStatus(
    final_recipient="bob@example.net",
    action="failed",
    status="5.1.1",
    original_recipient="Bob@Example.NET",
    remote_mta="mx1.example.net",
    diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected: no such user",
    last_attempt=NOW - 60,
)
DELAYED = RecipientStatus(
    final_recipient="carol@example.com",
    action="delayed",
    status="4.4.1",
    remote_mta=None,
    diagnostic="connect to mx.example.com[192.0.2.1]:25: Connection timed out",
    last_attempt=NOW - 30,
    will_retry_until=NOW + 4 * 86_400,
)


def build(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "reporting_mta": "mail.example.org",
        "sender": "alice@example.org",
        "recipients": [FAILED],
        "original": ORIGINAL,
        "arrival_date": ARRIVAL,
        "now": NOW,
    }
    arguments.update(overrides)
    return build_dsn(**arguments)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(message: EmailMessage) -> list[EmailMessage]:
    return list(message.iter_parts())  # type: ignore[arg-type]


def status_blocks(message: EmailMessage) -> list[Message]:
    """The per-message block and the per-recipient blocks, as email parses them."""
    report = parts(message)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    assert all(isinstance(block, Message) for block in blocks)
    return [block for block in blocks if isinstance(block, Message)]


def header_names(block: Message) -> list[str]:
    return [name.lower() for name in block]


# -- structure -------------------------------------------------------------------


def test_structure_of_a_failure_report() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"  # rfc6522:3
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.org>"
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"  # rfc3834:5
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime.timestamp() == NOW
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.org>", message["Message-ID"])
    assert not message.defects
    for part in message.walk():
        assert not part.defects


def test_message_ids_are_unique() -> None:
    assert parse(build())["Message-ID"] != parse(build())["Message-ID"]
    assert parse(build(queue_id="Q123"))["Message-ID"].startswith("<Q123.")


def test_per_message_fields() -> None:
    blocks = status_blocks(parse(build(envelope_id="env-42")))
    per_message = blocks[0]
    # rfc3464:2.2 — Original-Envelope-Id first, then Reporting-MTA, Arrival-Date.
    assert header_names(per_message) == ["original-envelope-id", "reporting-mta", "arrival-date"]
    assert per_message["Original-Envelope-Id"] == "env-42"
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"
    assert per_message["Arrival-Date"] == "Mon, 13 Nov 2023 22:13:20 +0000"


def test_no_envelope_id_no_field() -> None:
    blocks = status_blocks(parse(build()))
    assert "Original-Envelope-Id" not in blocks[0]


def test_per_recipient_fields() -> None:
    blocks = status_blocks(parse(build(recipients=[FAILED, DELAYED])))
    assert len(blocks) == 3
    bob, carol = blocks[1], blocks[2]
    # rfc3464:2.3 in the order of the grammar
    assert header_names(bob) == [
        "original-recipient",
        "final-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
    ]
    assert bob["Original-Recipient"] == "rfc822; Bob@Example.NET"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.net"
    assert bob["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: no such user"
    )
    assert bob["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:12:20 +0000"
    assert "Will-Retry-Until" not in bob

    assert header_names(carol) == [
        "final-recipient",
        "action",
        "status",
        "diagnostic-code",
        "last-attempt-date",
        "will-retry-until",
    ]
    assert carol["Action"] == "delayed"
    assert carol["Status"] == "4.4.1"
    # Not an SMTP reply: our own description gets an X- diagnostic type.
    assert carol["Diagnostic-Code"].startswith("X-Estafeta; connect to mx.example.com")
    assert carol["Will-Retry-Until"] == "Sat, 18 Nov 2023 22:13:20 +0000"


def test_will_retry_until_only_for_delayed() -> None:
    failed = RecipientStatus("x@example.net", "failed", "5.0.0", will_retry_until=NOW + 10)
    blocks = status_blocks(parse(build(recipients=[failed])))
    assert "Will-Retry-Until" not in blocks[1]


def test_minimal_recipient() -> None:
    only = RecipientStatus("x@example.net", "failed", "5.0.0")
    blocks = status_blocks(parse(build(recipients=[only])))
    assert header_names(blocks[1]) == ["final-recipient", "action", "status"]


def test_original_recipient_already_typed() -> None:
    recipient = RecipientStatus(
        "x@example.net", "failed", "5.0.0", original_recipient="rfc822;X@example.net"
    )
    blocks = status_blocks(parse(build(recipients=[recipient])))
    assert blocks[1]["Original-Recipient"] == "rfc822; X@example.net"


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("5.1.1", "failed", "5.1.1"),
        ("4.4.7", "failed", "4.4.7"),  # expired: failed with the last 4.x.x
        ("2.0.0", "delivered", "2.0.0"),
        ("550", "failed", "5.0.0"),
        ("", "delayed", "4.0.0"),
        ("5.1.1\r\nBcc: x", "failed", "5.0.0"),
        ("9.9.9", "relayed", "2.0.0"),
    ],
)
def test_status_codes(status: str, action: str, expected: str) -> None:
    recipient = RecipientStatus("x@example.net", action, status)
    blocks = status_blocks(parse(build(recipients=[recipient])))
    assert blocks[1]["Status"] == expected


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="action"):
        build(recipients=[RecipientStatus("x@example.net", "bounced", "5.0.0")])
    with pytest.raises(ValueError, match="recipient"):
        build(recipients=[])


@pytest.mark.parametrize(
    ("recipients", "subject"),
    [
        ([FAILED], "Undelivered Mail Returned to Sender"),
        ([DELAYED], "Delayed Mail (still being retried)"),
        ([DELAYED, FAILED], "Undelivered Mail Returned to Sender"),
        (
            [RecipientStatus("x@example.net", "delivered", "2.0.0")],
            "Successful Mail Delivery Report",
        ),
    ],
)
def test_subjects(recipients: list[RecipientStatus], subject: str) -> None:
    assert parse(build(recipients=recipients))["Subject"] == subject


def test_human_readable_part() -> None:
    message = parse(build(recipients=[FAILED, DELAYED], queue_id="Q7"))
    text = parts(message)[0]
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "us-ascii"
    body = text.get_content()
    assert "mail.example.org" in body
    assert "<bob@example.net>" in body
    assert "mx1.example.net said: 550 5.1.1 <bob@example.net>: Recipient address" in body
    assert "<carol@example.com>" in body
    assert "Connection timed out" in body
    assert "Retrying until Sat, 18 Nov 2023" in body
    assert "Queue ID: Q7" in body
    assert body.index("could not be delivered") < body.index("not been delivered yet")
    assert all(len(line) <= 78 for line in body.splitlines())


# -- the original message ---------------------------------------------------------


def test_original_returned_whole() -> None:
    returned = parts(parse(build()))[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_content()
    assert inner["Subject"] == "lunch?"
    assert inner["Message-ID"] == "<m1@example.org>"
    assert inner.get_content().rstrip("\r\n") == "Shall we?"
    assert ORIGINAL in build()


def test_original_at_the_limit_is_returned_whole() -> None:
    returned = parts(parse(build(max_original=len(ORIGINAL))))[2]
    assert returned.get_content_type() == "message/rfc822"


def test_big_original_returns_headers_only() -> None:
    big = ORIGINAL + b"x" * 70 + b"\r\n" + (b"y" * 76 + b"\r\n") * 5000
    assert len(big) > 256 * 1024  # the default max_original
    data = build(original=big)
    returned = parts(parse(data))[2]
    assert returned.get_content_type() == "text/rfc822-headers"  # rfc6522:4
    headers = returned.get_content()
    assert "Subject: lunch?" in headers
    assert "Shall we?" not in headers
    assert b"yyyy" not in data
    assert len(data) < 4096


def test_huge_header_block_is_cut() -> None:
    big = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"z" * 60) for i in range(2000)) + b"\r\nbody\r\n"
    data = build(original=big, max_original=10_000)
    returned = parts(parse(data))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert 9_000 < len(returned.get_content()) <= 10_000
    assert len(data) < 12_000


def test_original_line_endings_normalised() -> None:
    data = build(original=b"Subject: lf only\n\nline one\nline two\rthree")
    assert b"Subject: lf only\r\n\r\nline one\r\nline two\r\nthree\r\n" in data


def test_8bit_original() -> None:
    original = b"Subject: caf\xc3\xa9 tomorrow\r\n\r\nvoil\xc3\xa0\r\n"
    message = parse(build(original=original))
    returned = parts(message)[2]
    # rfc6532:3.7 — UTF-8 in the header block: message/global, sent as 8bit.
    assert returned.get_content_type() == "message/global"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert message["Content-Transfer-Encoding"] == "8bit"
    body_only = b"Subject: plain\r\n\r\nvoil\xc3\xa0\r\n"
    returned = parts(parse(build(original=body_only)))[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    returned = parts(parse(build(original=original, max_original=10)))[2]
    assert returned.get_content_type() == "message/global-headers"  # rfc6533:6.3


def test_ascii_report_has_no_transfer_encoding() -> None:
    message = parse(build())
    assert "Content-Transfer-Encoding" not in message
    assert build().isascii()


def test_boundary_never_occurs_in_content(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens: Iterator[str] = iter(["a" * 32, "b" * 32, "c" * 32, "d" * 16])

    def token_hex(nbytes: int | None = None) -> str:
        return next(tokens)

    monkeypatch.setattr(secrets, "token_hex", token_hex)
    trap = b"--=_estafeta_" + b"a" * 32 + b"\r\n--=_estafeta_" + b"b" * 32 + b"--\r\n"
    data = build(original=ORIGINAL + trap)
    message = parse(data)
    assert message.get_boundary() == "=_estafeta_" + "c" * 32
    assert len(parts(message)) == 3
    assert trap in data


# -- safety --------------------------------------------------------------------------


INJECTIONS = [
    "550 no such user\r\nBcc: victim@example.com",
    "550 no such user\nBcc: victim@example.com",
    "550 no such user\rBcc: victim@example.com",
    "550 no such user\r\n\r\nFinal-Recipient: rfc822; evil@example.com",
    "550 no such user\x00\x0b\x0c\x1b[31m\u2028Bcc: victim@example.com",
    "550-5.1.1 first line\r\n550 5.1.1 second line",
]


@pytest.mark.parametrize("diagnostic", INJECTIONS)
def test_header_injection_in_diagnostic_is_neutralised(diagnostic: str) -> None:
    recipient = RecipientStatus(
        "bob@example.net",
        "failed",
        "5.1.1",
        remote_mta="mx.example.net\r\nX-Injected: 1",
        diagnostic=diagnostic,
    )
    data = build(recipients=[recipient], envelope_id="e1\r\nX-Injected: 2", queue_id="q\r\nX: 3")
    message = parse(data)
    for part in message.walk():
        assert "Bcc" not in part
        assert "X-Injected" not in part
    blocks = status_blocks(message)
    assert len(blocks) == 2  # no extra recipient block
    code = blocks[1]["Diagnostic-Code"]
    assert code.startswith("smtp; 550")
    assert "\r" not in code and "\n" not in code
    assert "\x00" not in code and "\x1b" not in code
    assert blocks[1]["Remote-MTA"] == "dns; mx.example.net X-Injected: 1"
    assert blocks[0]["Original-Envelope-Id"] == "e1 X-Injected: 2"
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", data)


def test_injection_through_sender_and_recipient() -> None:
    data = build(
        sender="alice@example.org\r\nBcc: victim@example.com",
        recipients=[RecipientStatus("bob@example.net\r\nAction: delivered", "failed", "5.0.0")],
    )
    message = parse(data)
    assert "Bcc" not in message
    block = status_blocks(message)[1]
    assert block.get_all("Action") == ["failed"]


def test_crlf_everywhere() -> None:
    data = build(recipients=[FAILED, DELAYED], original=b"Subject: x\n\nbare\nlf\n")
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_long_diagnostic_is_folded() -> None:
    reply = "550 5.7.1 " + " ".join(f"word{i}" for i in range(400)) + " " + "z" * 1500
    recipient = RecipientStatus("bob@example.net", "failed", "5.7.1", diagnostic=reply)
    data = build(recipients=[recipient])
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        assert line.strip() or not line  # no whitespace-only lines
    code = status_blocks(parse(data))[1]["Diagnostic-Code"]
    # Unfolding gives the reply back (up to the spaces put into the long word).
    assert code.replace(" ", "") == ("smtp; " + reply).replace(" ", "")
    assert code.startswith("smtp; 550 5.7.1 word0 word1 word2")


def test_non_ascii_diagnostic_in_an_ascii_report() -> None:
    recipient = RecipientStatus(
        "bob@example.net", "failed", "5.1.1", diagnostic="550 Benutzer unbekannt: Müller \udcff"
    )
    data = build(recipients=[recipient])
    assert data.isascii()
    code = status_blocks(parse(data))[1]["Diagnostic-Code"]
    assert code == "smtp; 550 Benutzer unbekannt: M?ller ?"


def test_internationalised_addresses_use_the_global_report() -> None:
    recipient = RecipientStatus(
        "jörg@bücher.example", "failed", "5.1.1", diagnostic="550 unknown user jörg \udcff"
    )
    data = build(sender="andré@example.org", recipients=[recipient])
    text = data.decode("utf-8")  # well-formed UTF-8 throughout
    message = parse(data)
    types = [p.get_content_type() for p in parts(message)]
    assert types == ["text/plain", "message/global-delivery-status", "message/rfc822"]  # rfc6533
    assert "Final-Recipient: utf-8; jörg@bücher.example\r\n" in text
    assert "Diagnostic-Code: smtp; 550 unknown user jörg \ufffd\r\n" in text
    assert "To: andré@example.org\r\n" in text
    assert parts(message)[0].get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "8bit"
