"""The DMARC aggregate reports we write (estafeta.reports.aggregate): the
XML read back by our own parser gives the same report (the sample after
rfc7489 appendix C, and one full of hostile text); the message has the
rfc7489:7.2.1.1 form, parsed with the stdlib ``email`` package."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import gzip
import re
from email.message import EmailMessage

import pytest

from _dmarc_reports import SAMPLE
from estafeta.reports import aggregate, unpack
from estafeta.reports.dmarc import (
    AuthResults,
    DateRange,
    DkimAuth,
    PolicyEvaluated,
    PolicyOverride,
    PolicyPublished,
    Record,
    Report,
    SpfAuth,
    parse_message,
    parse_report,
)

DAY = 1_797_033_600  # 2026-12-12 00:00:00 UTC
HOST = "mx.example.org"


def report(**changes: object) -> Report:
    base = Report(
        org_name="Example Org",
        email="dmarc-reports@example.org",
        report_id=aggregate.report_id(DAY, "sender.test", HOST),
        date_range=DateRange(DAY, DAY + aggregate.DAY - 1),
        policy_published=PolicyPublished(
            domain="sender.test", p="reject", adkim="r", aspf="s", sp="quarantine", pct=50, fo="1"
        ),
        records=(
            Record(
                source_ip="2001:db8::25",
                count=3,
                policy_evaluated=PolicyEvaluated(
                    disposition="quarantine",
                    dkim="fail",
                    spf="fail",
                    reasons=(PolicyOverride("local_policy", "arc=pass"),),
                ),
                header_from="sender.test",
                envelope_from=None,  # the null reverse-path
                auth_results=AuthResults(
                    dkim=(DkimAuth("list.example", "pass", "s1"),),
                    spf=(SpfAuth("helo.list.example", "none", "helo"),),
                ),
            ),
            Record(
                source_ip="192.0.2.1",
                count=7,
                policy_evaluated=PolicyEvaluated("none", "pass", "pass"),
                header_from="mail.sender.test",
                envelope_from="sender.test",
                auth_results=AuthResults(spf=(SpfAuth("sender.test", "pass", "mfrom"),)),
            ),
        ),
        extra_contact_info="https://example.org/postmaster",
        errors=("12 messages left out: more distinct rows than 2 in one day",),
        version="1.0",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_sample_survives_a_round_trip() -> None:
    sample = parse_report(SAMPLE)
    again = parse_report(aggregate.feedback_xml(sample))
    assert again == sample
    assert (again.messages, len(again.records)) == (14, 4)


def test_our_report_survives_a_round_trip_gzipped() -> None:
    ours = report()
    data = aggregate.compressed(aggregate.feedback_xml(ours))
    assert data[:2] == b"\x1f\x8b"  # rfc7489:7.2.1.1 — GZIP
    assert parse_report(data) == ours
    assert aggregate.compressed(aggregate.feedback_xml(ours)) == data  # the same bytes again


def test_the_elements_come_in_the_schema_order() -> None:
    xml = aggregate.feedback_xml(report()).decode()
    order = [
        "<version>",
        "<report_metadata>",
        "<org_name>",
        "<email>",
        "<extra_contact_info>",
        "<report_id>",
        "<date_range>",
        "<error>",
        "<policy_published>",
        "<domain>sender.test</domain>",
        "<adkim>",
        "<aspf>",
        "<p>",
        "<sp>",
        "<pct>",
        "<fo>",
        "<record>",
        "<row>",
        "<source_ip>",
        "<count>",
        "<policy_evaluated>",
        "<disposition>",
        "<reason>",
        "<identifiers>",
        "<envelope_from />",
        "<header_from>",
        "<auth_results>",
        "<dkim>",
        "<spf>",
    ]
    at = 0
    for tag in order:  # each after the one before
        at = xml.index(tag, at)
    assert xml.startswith("<?xml version='1.0' encoding='utf-8'?>")


@pytest.mark.parametrize(
    "hostile",
    [
        "A & B <Mail> \"quoted\" 'single'",
        "</org_name><org_name>injected",
        "]]><!-- --><!DOCTYPE x>",
        "bell\x07 nul\x00 esc\x1b form\x0c",
        "Ünïcødé ✉ 日本",
    ],
)
def test_text_is_escaped_and_kept_to_what_xml_can_hold(hostile: str) -> None:
    ours = report(org_name=hostile, extra_contact_info=hostile)
    xml = aggregate.feedback_xml(ours)
    parsed = parse_report(xml)
    assert xml.count(b"<org_name>") == 1
    # What XML cannot hold becomes U+FFFD in ours; the parser then keeps
    # text printable (white space runs as one space, controls U+FFFD).
    held = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f]", "\ufffd", hostile)
    expected = "".join(c if c.isprintable() else "\ufffd" for c in " ".join(held.split()))
    assert parsed.org_name == expected
    assert parsed.extra_contact_info == expected


def test_the_report_id_and_file_name() -> None:
    ours = report()
    assert ours.report_id == "20261212.sender.test@mx.example.org"
    assert aggregate.attachment_name(HOST, ours) == (
        f"mx.example.org!sender.test!{DAY}!{DAY + 86_399}.xml.gz"
    )
    assert aggregate.day_start(DAY + 86_399.9) == DAY
    assert aggregate.day_name(DAY) == "2026-12-12"


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_the_message_has_the_form_of_rfc7489_7_2_1_1() -> None:
    ours = report()
    data = aggregate.report_message(
        ours,
        sender="dmarc-reports@example.org",
        recipient="rua@sender.test",
        submitter="example.org",
        receiver=HOST,
        message_id="abc.20261212.sender.test@mx.example.org",
        now=DAY + 86_400 + 3_000,
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = parse(data)
    assert message.get_content_type() == "multipart/mixed"
    assert message["Subject"] == (
        "Report Domain: sender.test Submitter: example.org"
        " Report-ID: <20261212.sender.test@mx.example.org>"
    )
    assert message["From"].addresses[0].addr_spec == "dmarc-reports@example.org"
    assert message["To"].addresses[0].addr_spec == "rua@sender.test"
    assert message["Message-ID"] == "<abc.20261212.sender.test@mx.example.org>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"].datetime.timestamp() == DAY + 86_400 + 3_000
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/gzip"]
    assert "sender.test" in parts[0].get_content()
    assert parts[1].get_filename() == f"mx.example.org!sender.test!{DAY}!{DAY + 86_399}.xml.gz"
    xml = gzip.decompress(parts[1].get_content())
    assert xml == aggregate.feedback_xml(ours)
    # What a receiving estafeta does with it (reports/unpack.py, reports/dmarc.py).
    assert unpack.report_attachment(data).filename == parts[1].get_filename()
    assert parse_message(data) == ours


def test_a_message_to_an_internationalised_address() -> None:
    def to(recipient: str) -> bytes:
        return aggregate.report_message(
            report(),
            sender="dmarc-reports@example.org",
            recipient=recipient,
            submitter="example.org",
            receiver=HOST,
            message_id="x@mx.example.org",
            now=DAY,
        )

    assert to("rapports@exemple.test").isascii()
    data = to("rapports-é@exemple.test")
    assert not data.isascii()  # SMTPUTF8 (rfc6532): UTF-8 in the header as it is
    message = email.message_from_string(data.decode("utf-8"), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "rapports-é@exemple.test"
    assert parse_message(data) == report()
