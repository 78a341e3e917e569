"""DMARC aggregate reports (estafeta.reports): the sample report written
after rfc7489 appendix C, fed whole as XML, zip, gzip and inside messages as
reporters send them, then in chunks; schema violations, each refused with
the element named. The hostile inputs (bombs, DTDs, record floods) are in
test_dmarc_report_bombs.py."""

from __future__ import annotations

import base64
import random
import re

import pytest

from _dmarc_reports import (
    BEGIN,
    END,
    FILENAME,
    SAMPLE,
    gzipped,
    message,
    zipped,
)
from estafeta.reports import unpack
from estafeta.reports.dmarc import (
    AuthResults,
    DateRange,
    DkimAuth,
    FeedbackParser,
    PolicyEvaluated,
    PolicyOverride,
    PolicyPublished,
    Record,
    Report,
    ReportError,
    SpfAuth,
    parse_any,
    parse_message,
    parse_report,
)

EXPECTED = Report(
    org_name="Receiver Example",
    email="noreply-dmarc@receiver.example",
    report_id="rx-20260101-0001",
    date_range=DateRange(BEGIN, END),
    policy_published=PolicyPublished(
        domain="example.test", p="reject", adkim="r", aspf="r", sp="reject", pct=100, fo="0"
    ),
    records=(
        Record(
            source_ip="192.0.2.10",
            count=8,
            policy_evaluated=PolicyEvaluated("none", dkim="pass", spf="pass"),
            header_from="example.test",
            envelope_from="example.test",
            envelope_to="receiver.example",
            auth_results=AuthResults(
                dkim=(DkimAuth("example.test", "pass", selector="s2026"),),
                spf=(SpfAuth("example.test", "pass", scope="mfrom"),),
            ),
        ),
        Record(
            source_ip="192.0.2.11",
            count=3,
            policy_evaluated=PolicyEvaluated(
                "none",
                dkim="pass",
                spf="fail",
                reasons=(PolicyOverride("forwarded", "list.receiver.example"),),
            ),
            header_from="example.test",
            auth_results=AuthResults(
                dkim=(
                    DkimAuth(
                        "example.test", "pass", selector="s2026", human_result="good signature"
                    ),
                ),
                spf=(SpfAuth("lists.receiver.example", "fail", scope="mfrom"),),
            ),
        ),
        Record(
            source_ip="2001:db8::25",  # written 2001:DB8:0:0::25: normalised
            count=2,
            policy_evaluated=PolicyEvaluated("reject", dkim="fail", spf="fail"),
            header_from="example.test",  # written Example.Test
            auth_results=AuthResults(
                dkim=(DkimAuth("attacker.example", "fail"),),
                spf=(SpfAuth("attacker.example", "softfail", scope="mfrom"),),
            ),
        ),
        Record(
            source_ip="198.51.100.7",
            count=1,
            policy_evaluated=PolicyEvaluated("none", dkim="fail", spf="pass"),
            header_from="example.test",
            auth_results=AuthResults(spf=(SpfAuth("bounces.example.test", "pass", "mfrom"),)),
        ),
    ),
    extra_contact_info="https://receiver.example/postmaster",
    errors=("one message's DKIM key could not be fetched",),
    version="1.0",
)


def test_the_sample_report_parses_to_every_field() -> None:
    report = parse_report(SAMPLE)
    assert report == EXPECTED
    assert report.messages == 14
    assert report.counts() == {
        "spf_pass": 9,
        "spf_fail": 5,
        "dkim_pass": 11,
        "dkim_fail": 3,
        "dmarc_pass": 12,
        "dmarc_fail": 2,
    }
    assert [r.dmarc for r in report.records] == ["pass", "pass", "fail", "pass"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(SAMPLE, id="xml"),
        pytest.param(zipped(SAMPLE), id="zip"),
        pytest.param(gzipped(SAMPLE), id="gzip"),
        pytest.param(gzipped(SAMPLE[:500]) + gzipped(SAMPLE[500:]), id="gzip-two-members"),
        pytest.param(b"\xef\xbb\xbf" + SAMPLE, id="xml-with-bom"),
        pytest.param(
            SAMPLE.replace(b'encoding="UTF-8"', b'encoding="UTF-16"').decode().encode("utf-16"),
            id="xml-utf-16",
        ),
    ],
)
def test_report_files_of_every_kind(data: bytes) -> None:
    assert parse_report(data) == EXPECTED
    assert parse_any(data) == EXPECTED


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(message(zipped(SAMPLE)), id="application/zip"),
        pytest.param(
            message(gzipped(SAMPLE), "application/gzip", FILENAME + ".xml.gz"),
            id="application/gzip",
        ),
        pytest.param(
            message(gzipped(SAMPLE), "application/x-gzip", FILENAME + ".xml.gz"),
            id="application/x-gzip",
        ),
        pytest.param(
            message(SAMPLE, "text/xml", FILENAME + ".xml", "quoted-printable"), id="text/xml-qp"
        ),
        pytest.param(message(SAMPLE, "text/xml", "", "7bit"), id="text/xml-unnamed"),
        # rfc7489:7.2.1.1 filename on a generic type: found by its name.
        pytest.param(
            message(zipped(SAMPLE), "application/octet-stream", FILENAME + ".zip"),
            id="octet-stream-named",
        ),
        # The type says gzip, the bytes are a zip: the bytes decide.
        pytest.param(
            message(zipped(SAMPLE), "application/gzip", FILENAME + ".xml.gz"), id="mislabelled"
        ),
    ],
)
def test_report_messages_as_receivers_send_them(raw: bytes) -> None:
    assert parse_message(raw) == EXPECTED
    assert parse_any(raw) == EXPECTED


def test_a_report_forwarded_by_hand_inside_a_message() -> None:
    forwarded = (
        b"From: alice@example.test\r\nTo: dmarc-reports@example.test\r\nSubject: Fwd\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
        b"--outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        + message(zipped(SAMPLE))
        + b"\r\n--outer--\r\n"
    )
    assert parse_message(forwarded) == EXPECTED


def test_a_report_in_a_single_part_message() -> None:
    raw = (
        b"From: r@receiver.example\r\nSubject: Report Domain: example.test\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: application/gzip\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(gzipped(SAMPLE)).replace(b"\n", b"\r\n")
    )
    assert parse_message(raw) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 511, 512])
def test_fed_in_chunks_the_same_report(size: int) -> None:
    """STYLE 6: the same transcript in chunks of 1 to 512 bytes."""
    parser = FeedbackParser()
    for start in range(0, len(SAMPLE), size):
        parser.feed(SAMPLE[start : start + size])
    assert parser.close() == EXPECTED


def test_namespaces_and_unknown_elements() -> None:
    """rfc7489's namespace, DMARCbis's with a prefix, and elements the
    schema does not know (skipped): the same report."""
    rfc = SAMPLE.replace(b"<feedback>", b'<feedback xmlns="http://dmarc.org/dmarc-xml/0.1">')
    assert parse_report(rfc) == EXPECTED
    bis = re.sub(rb"<(/?)([a-z_]+)", rb"<\1d:\2", SAMPLE).replace(
        b"<d:feedback>", b'<d:feedback xmlns:d="urn:ietf:params:xml:ns:dmarc-2.0">'
    )
    extended = bis.replace(
        b"<d:policy_published>",
        b"<d:extensions><d:x>1</d:x></d:extensions><d:policy_published><d:np>none</d:np>",
    )
    assert parse_report(extended) == EXPECTED


def test_what_deployed_reporters_leave_out_is_optional() -> None:
    """version, sp, pct, fo, envelope_from and the SPF auth result are
    required by the schema but missing from many real reports."""
    lean = SAMPLE
    for element in (
        b"<version>1.0</version>",
        b"<sp>reject</sp>",
        b"<pct>100</pct>",
        b"<fo>0</fo>",
        b"<envelope_from>example.test</envelope_from>",
    ):
        assert element in lean
        lean = lean.replace(element, b"")
    start = lean.index(b"<spf>\n        <domain>bounces")
    lean = lean[:start] + lean[lean.index(b"</spf>", start) + 6 :]
    report = parse_report(lean)
    assert report.version is None
    assert report.policy_published == PolicyPublished("example.test", "reject", "r", "r")
    assert report.records[0].envelope_from is None
    assert report.records[3].auth_results == AuthResults()
    assert report.messages == 14


def test_enumerations_are_read_case_insensitively_and_spf_aliases() -> None:
    """rfc7489:C SPFResultType: "unknown" is commonly written for temperror,
    "error" for permerror."""
    data = (
        SAMPLE.replace(b"<disposition>reject</disposition>", b"<disposition>REJECT</disposition>")
        .replace(b"<result>softfail</result>", b"<result>unknown</result>")
        .replace(b"<result>fail</result>\n      </spf>", b"<result>Error</result>\n      </spf>")
    )
    report = parse_report(data)
    assert report.records[2].policy_evaluated.disposition == "reject"
    assert report.records[2].auth_results.spf[0].result == "temperror"
    assert report.records[1].auth_results.spf[0].result == "permerror"


def test_text_is_kept_printable() -> None:
    """No escape sequence of a report reaches a terminal: C1 controls (legal
    in XML 1.0) become U+FFFD, white space runs one space."""
    data = SAMPLE.replace(
        b"<org_name>Receiver Example</org_name>",
        b"<org_name>\n  Receiver\t&#x9b;2J  Example &#x80;</org_name>",
    )
    assert parse_report(data).org_name == "Receiver \ufffd2J Example \ufffd"


def _without(element: bytes) -> bytes:
    start = SAMPLE.index(b"<" + element + b">")
    end = SAMPLE.index(b"</" + element + b">", start) + len(element) + 3
    return SAMPLE[:start] + SAMPLE[end:]


def _records_removed() -> bytes:
    start = SAMPLE.index(b"<record>")
    end = SAMPLE.rindex(b"</record>") + len(b"</record>")
    return SAMPLE[:start] + SAMPLE[end:]


@pytest.mark.parametrize(
    ("data", "reason", "error"),
    [
        (_without(b"org_name"), "schema", "feedback/report_metadata: missing <org_name>"),
        (_without(b"report_id"), "schema", "feedback/report_metadata: missing <report_id>"),
        (_without(b"date_range"), "schema", "feedback/report_metadata: missing <date_range>"),
        (_without(b"policy_published"), "schema", "feedback: missing <policy_published>"),
        (_without(b"report_metadata"), "schema", "feedback: missing <report_metadata>"),
        (_records_removed(), "schema", "feedback: no <record>"),
        (_without(b"identifiers"), "schema", "feedback/record[1]: missing <identifiers>"),
        (
            SAMPLE.replace(b"<p>reject</p>", b""),
            "schema",
            "feedback/policy_published: missing <p>",
        ),
        (
            SAMPLE.replace(b"<source_ip>192.0.2.11<", b"<source_ip>300.1.2.3<"),
            "schema",
            "feedback/record[2]/row/source_ip: '300.1.2.3' is not an IP address",
        ),
        (
            SAMPLE.replace(b"<source_ip>192.0.2.11<", b"<source_ip>fe80::1%eth0<"),
            "schema",
            "feedback/record[2]/row/source_ip: 'fe80::1%eth0' is not an IP address",
        ),
        (
            SAMPLE.replace(b"<count>8</count>", b"<count>-8</count>"),
            "schema",
            "feedback/record[1]/row/count: -8 is out of range",
        ),
        (
            SAMPLE.replace(b"<count>8</count>", b"<count>eight</count>"),
            "schema",
            "feedback/record[1]/row/count: 'eight' is not an integer",
        ),
        (
            SAMPLE.replace(b"<count>8</count>", b"<count>8</count><count>9</count>"),
            "schema",
            "feedback/record[1]/row/count: appears 2 times",
        ),
        (
            SAMPLE.replace(b"<begin>1767225600<", b"<begin>1767400000<"),
            "schema",
            "feedback/report_metadata/date_range: begin 1767400000 is after end 1767311999",
        ),
        (
            SAMPLE.replace(b"<disposition>reject<", b"<disposition>discard<"),
            "schema",
            "feedback/record[3]/row/policy_evaluated/disposition: 'discard' is not one of"
            " none, quarantine, reject",
        ),
        (
            SAMPLE.replace(b"<dkim>pass</dkim>\n        <spf>pass", b"<dkim>x</dkim><spf>pass"),
            "schema",
            "feedback/record[1]/row/policy_evaluated/dkim: 'x' is not one of pass, fail",
        ),
        (
            SAMPLE.replace(b"<result>softfail<", b"<result>hardfail<"),
            "schema",
            "feedback/record[3]/auth_results/spf[1]/result: 'hardfail' is not one of",
        ),
        (
            SAMPLE.replace(b"<scope>mfrom</scope>", b"<scope>rcpt</scope>", 1),
            "schema",
            "feedback/record[1]/auth_results/spf[1]/scope: 'rcpt' is not one of helo, mfrom",
        ),
        (
            SAMPLE.replace(b"<type>forwarded<", b"<type>because<"),
            "schema",
            "feedback/record[2]/row/policy_evaluated/reason[1]/type: 'because' is not one of",
        ),
        (
            SAMPLE.replace(b"<pct>100<", b"<pct>101<"),
            "schema",
            "feedback/policy_published/pct: 101 is out of range (0 to 100)",
        ),
        (
            SAMPLE.replace(b"<version>1.0<", b"<version>one<"),
            "schema",
            "feedback/version: 'one' is not a decimal number",
        ),
        (
            SAMPLE.replace(b"<org_name>Receiver Example<", b"<org_name> <"),
            "schema",
            "feedback/report_metadata/org_name: is empty",
        ),
        (
            SAMPLE.replace(b"</report_metadata>", b"</report_metadata><report_metadata/>"),
            "schema",
            "feedback: <report_metadata> appears more than once",
        ),
        (
            SAMPLE.replace(b"<feedback>", b"<report>").replace(b"</feedback>", b"</report>"),
            "schema",
            "the document element is <report>, not <feedback>",
        ),
        (SAMPLE.replace(b"</feedback>", b""), "xml", "not well-formed XML"),
        (SAMPLE.replace(b'"UTF-8"', b'"UTF-9"'), "xml", "unreadable XML: unknown encoding"),
        (SAMPLE + b"<feedback/>", "xml", "junk after document element"),
        (b"", "archive", "neither a zip, a gzip nor XML"),
        (b"feedback", "archive", "neither a zip, a gzip nor XML"),
    ],
)
def test_schema_violations_name_the_element(data: bytes, reason: str, error: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_report(data)
    assert caught.value.reason == reason
    assert error in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "reason", "error"),
    [
        (
            b"From: a@b.example\r\nSubject: hello\r\n\r\njust text\r\n",
            "no_report",
            "no report in the message",
        ),
        (
            message(zipped(SAMPLE)).replace(
                b"--b1--", b"--b1\r\nContent-Type: application/gzip\r\n\r\nxx\r\n--b1--"
            ),
            "several_reports",
            "2 report parts",
        ),
        (
            message(zipped(SAMPLE)).replace(b"Content-Transfer-Encoding: base64", b"X-E: 1"),
            "archive",
            "neither a zip, a gzip nor XML",
        ),
        (message(b"\x1f\x8b\x08\x00garbage", "application/gzip"), "archive", "gzip"),
        (message(b"abc", encoding="base64").replace(b"YWJj", b"YWJ"), "archive", "base64"),
    ],
)
def test_messages_without_one_valid_report(raw: bytes, reason: str, error: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_message(raw)
    assert caught.value.reason == reason
    assert error in str(caught.value)


def test_rfc7489_filename_convention() -> None:
    """rfc7489:7.2.1.1 receiver!policy-domain!begin!end[!unique-id].extension"""
    name = unpack.parse_filename("Receiver.Example!example.test!1767225600!1767311999!a1.xml.gz")
    assert name == unpack.ReportFilename(
        "receiver.example", "example.test", BEGIN, END, "a1", "xml.gz"
    )
    assert unpack.parse_filename(FILENAME + ".zip") is not None
    assert unpack.parse_filename("report.zip") is None
    assert unpack.parse_filename("a!b!c!d.xml") is None  # timestamps are digits


@pytest.mark.parametrize("kind", ["gzip", "gzip-members", "zip"])
def test_decompression_round_trips_beyond_one_chunk(kind: str) -> None:
    """Inflated 64 KiB at a time, fed 64 KiB at a time: what went in comes
    out whole (incompressible data, so input and output cross many chunks)."""
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)
    if kind == "gzip":
        packed = gzipped(data)
    elif kind == "gzip-members":
        packed = gzipped(data[:1_000_001]) + gzipped(data[1_000_001:])
    else:
        packed = zipped(data)
    chunks = list(unpack.xml_chunks(packed))
    assert all(0 < len(c) <= unpack.CHUNK for c in chunks)
    assert b"".join(chunks) == data
