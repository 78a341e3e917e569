"""rfc8460 TLS reports, the format (estafeta.reports.tlsrpt): the sample
written after the example of rfc8460:4.4 parses to its exact numbers in
every form it arrives in, what we write parses back to the same report,
the rfc8460:3 record grammar, and every schema rule refuses with a reason
and the path of what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from _tls_reports import DOMAIN, END, ORG, REPORT_ID, SAMPLE, START, gzipped, message, sample
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import (
    FailureDetail,
    Policy,
    PolicyResult,
    Report,
    ReportError,
    parse_any,
    parse_json,
    parse_message,
)
from estafeta.reports.tlsrpt_record import (
    RecordError,
    https_url,
    mailto_addresses,
    parse_record,
    select_record,
)


def check_sample(report: Report) -> None:
    assert report.org_name == ORG
    assert report.report_id == REPORT_ID
    assert (report.start, report.end) == (START, END)
    assert report.contact_info == "smtp-tls-reporting@sender.example"
    assert (report.successful, report.failed) == (4228, 38)
    assert report.domains == (DOMAIN, "other.test")
    sts, none = report.policies
    assert sts.policy == Policy(
        "sts",
        DOMAIN,
        (
            "version: STSv1",
            "mode: enforce",
            "mx: mx.example.test",
            "mx: *.backup.example.test",
            "max_age: 604800",
        ),
        ("mx.example.test", "*.backup.example.test"),
    )
    assert (sts.successful, sts.failed) == (4211, 38)
    assert [(d.result_type, d.count) for d in sts.details] == [
        ("certificate-expired", 30),
        ("starttls-not-supported", 6),
        ("validation-failure", 2),
    ]
    expired, starttls, validation = sts.details
    assert expired.sending_ip == "2001:db8:abcd:12::1"  # the address, not the spelling
    assert (expired.receiving_mx, expired.receiving_ip) == ("mx.example.test", "192.0.2.25")
    assert starttls.receiving_helo == "mx2.backup.example.test"
    assert starttls.additional_information.startswith("https://reports.sender.example/tls?")
    assert validation.reason_code == "X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED"
    assert none.policy == Policy("no-policy-found", "other.test")
    assert (none.successful, none.failed, none.details) == (17, 0, ())
    assert tlsrpt.summary_counts(report) == {
        "certificate-expired": 30,
        "starttls-not-supported": 6,
        "validation-failure": 2,
    }


@pytest.mark.parametrize(
    "data",
    [
        SAMPLE,
        gzipped(SAMPLE),
        message(gzipped(SAMPLE)),
        message(SAMPLE, content_type="application/tlsrpt+json", filename="r.json"),
        # Generic types are taken by their rfc8460:5.1 file name.
        message(gzipped(SAMPLE), content_type="application/octet-stream"),
        message(gzipped(SAMPLE), content_type="application/gzip"),
    ],
    ids=["json", "gzip", "message", "message-json", "octet-stream", "gzip-type"],
)
def test_the_sample_parses_in_every_form(data: bytes) -> None:
    check_sample(parse_any(data))


def test_a_message_that_is_the_report_itself() -> None:
    # Content-Type of the whole message application/tlsrpt+json (no multipart).
    raw = (
        b"From: r@sender.example\r\nTo: t@example.test\r\nSubject: Report\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: application/tlsrpt+json\r\n\r\n" + SAMPLE
    )
    check_sample(parse_message(raw))


def test_what_we_write_parses_back_to_the_same_report() -> None:
    report = parse_json(SAMPLE)
    written = tlsrpt.report_json(report)
    assert parse_json(written) == report
    assert tlsrpt.parse_report(tlsrpt.compress(written)) == report
    document = json.loads(written)
    # rfc8460:4.4 member names; mx-host an array (erratum 6241); empty optionals left out.
    assert document["date-range"] == {
        "start-datetime": "2026-01-01T00:00:00Z",
        "end-datetime": "2026-01-01T23:59:59Z",
    }
    assert document["policies"][0]["policy"]["mx-host"] == [
        "mx.example.test",
        "*.backup.example.test",
    ]
    assert document["policies"][1] == {
        "policy": {"policy-type": "no-policy-found", "policy-domain": "other.test"},
        "summary": {"total-successful-session-count": 17, "total-failure-session-count": 0},
    }
    assert "receiving-mx-helo" not in document["policies"][0]["failure-details"][0]


def test_a_written_report_with_unicode_round_trips() -> None:
    report = Report(
        org_name="Ëxample Ørg",
        start=0,
        end=86_399,
        contact_info="tls@exämple.test",
        report_id="x@y",
        policies=(
            PolicyResult(
                Policy("tlsa", "xn--exmple-cua.test", ("3 1 1 ABCDEF",)),
                1,
                1,
                (FailureDetail("dane-required", 1, receiving_mx="mx.xn--exmple-cua.test"),),
            ),
        ),
    )
    assert parse_json(tlsrpt.report_json(report)) == report


def edit(change: Any) -> bytes:
    document = json.loads(SAMPLE)
    change(document)
    return json.dumps(document).encode()


def test_what_deployed_reporters_send_is_read() -> None:
    def lenient(d: dict[str, Any]) -> None:
        d["policies"][0]["policy"]["mx-host"] = "*.mail.example.test"  # rfc8460's own example
        d["date-range"]["start-datetime"] = "2026-01-01T00:00:00"  # no zone: UTC
        d["date-range"]["end-datetime"] = "2026-01-02T01:59:59+02:00"
        d["policies"][0].pop("failure-details")
        d["policies"][0]["summary"]["total-failure-session-count"] = 0
        d["unknown-member"] = {"ignored": [1, 2, 3]}
        d["policies"][0]["failure-details-extension"] = True

    report = parse_json(edit(lenient))
    assert report.policies[0].policy.mx_hosts == ("*.mail.example.test",)
    assert (report.start, report.end) == (START, END)
    assert report.policies[0].details == ()


def test_text_from_a_report_is_kept_printable() -> None:
    def hostile(d: dict[str, Any]) -> None:
        d["organization-name"] = "Evil\x1b[31m Org\r\nInjected: yes\u2028"

    report = parse_json(edit(hostile))
    assert report.org_name == "Evil\ufffd[31m Org Injected: yes"
    assert report.org_name.isprintable()


def _set(path: str, value: Any) -> Any:
    def change(d: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = d
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (_set("organization-name", _DELETE), "report: no 'organization-name'"),
        (_set("report-id", 7), "report/report-id: not a string"),
        (_set("policies", {}), "report/policies: not an array"),
        (_set("date-range/start-datetime", "yesterday"), "not an rfc3339 date-time"),
        (_set("date-range/start-datetime", "2026-02-30T00:00:00Z"), "not a valid date-time"),
        (_set("date-range/start-datetime", "2026-01-03T00:00:00Z"), "start-datetime is after"),
        (_set("policies/0/policy/policy-type", "dane"), "policy-type: 'dane' is not one of"),
        (_set("policies/0/policy/policy-domain", "not a domain"), "policy-domain"),
        (_set("policies/0/summary/total-failure-session-count", -1), "out of range"),
        (_set("policies/0/summary/total-failure-session-count", 1.5), "not an integer"),
        (_set("policies/0/summary/total-failure-session-count", True), "not an integer"),
        (_set("policies/0/summary/total-failure-session-count", 2**60), "out of range"),
        (_set("policies/0/failure-details/0/sending-mta-ip", "300.1.2.3"), "not an IP address"),
        (_set("policies/0/failure-details/0/receiving-ip", "fe80::1%eth0"), "not an IP address"),
        (_set("policies/0/failure-details/0/result-type", "Bad Type!"), "not a result type"),
        (_set("policies/0/failure-details/0", []), "failure-details[0]: not a JSON object"),
        (_set("policies/0/policy/policy-string", ["ok", 3]), "policy-string[1]: not a string"),
        (_set("report-id", "x" * 5000), "longer than 2048 characters"),
    ],
)
def test_schema_violations_are_refused_with_the_path(change: Any, where: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_json(edit(change))
    assert caught.value.reason == "schema"
    assert where in str(caught.value)


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"{",
        b'{"a": 1} trailing',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"organization-name": "a", "organization-name": "b"}',  # duplicate member
        b"\xff\xfe{}",
        b"[]",  # well-formed, but not an object: schema
    ],
)
def test_what_is_not_json_is_refused(document: bytes) -> None:
    with pytest.raises(ReportError) as caught:
        parse_json(document)
    assert caught.value.reason in ("json", "schema")


def test_a_message_without_or_with_two_reports_is_refused() -> None:
    plain = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hello\r\n\r\nNo report here.\r\n"
    with pytest.raises(ReportError) as caught:
        parse_message(plain)
    assert caught.value.reason == "no_report"
    part = b"--b1\r\nContent-Type: application/tlsrpt+json\r\n\r\n" + SAMPLE + b"\r\n"
    twice = (
        b"From: a@b.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type="tlsrpt"; boundary="b1"\r\n\r\n'
        + part
        + part
        + b"--b1--\r\n"
    )
    with pytest.raises(ReportError) as caught:
        parse_message(twice)
    assert caught.value.reason == "several_reports"


# -- the record (rfc8460:3; estafeta.reports.tlsrpt_record) --------------------------------


@pytest.mark.parametrize(
    ("txt", "uris"),
    [
        ("v=TLSRPTv1; rua=mailto:tls@example.test", ("mailto:tls@example.test",)),
        ("v=TLSRPTv1;rua=mailto:tls@example.test;", ("mailto:tls@example.test",)),
        (
            "v=TLSRPTv1 ;\trua=mailto:a@example.test , https://r.example.test/v1/tls",
            ("mailto:a@example.test", "https://r.example.test/v1/tls"),
        ),
        (
            # rua more than once: both lists, in order, each URI once.
            "v=TLSRPTv1; rua=mailto:a@example.test; ext=1; rua=mailto:b@example.test,"
            "mailto:a@example.test",
            ("mailto:a@example.test", "mailto:b@example.test"),
        ),
        (
            "v=TLSRPTv1; future_ext.1=value-x; rua=https://r.example.test/%21x%2Cy",
            ("https://r.example.test/%21x%2Cy",),
        ),
    ],
)
def test_valid_records(txt: str, uris: tuple[str, ...]) -> None:
    assert parse_record(txt) == uris
    assert select_record(["v=spf1 -all", txt, "unrelated"]) == uris


@pytest.mark.parametrize(
    "txt",
    [
        "v=TLSRPTv1",
        "v=TLSRPTv1;",
        "v=TLSRPTv1 rua=mailto:a@example.test",
        "v=TLSRPTv1; ext=1",  # no rua
        "v=TLSRPTv1; rua=",
        "v=TLSRPTv1; rua=tls@example.test",  # no scheme
        "v=TLSRPTv1; rua=mailto:a@example.test!10m",  # "!" must be encoded
        "v=TLSRPTv1; rua=mailto:a@example.test; _bad=1",
        "v=TLSRPTv1; rua=mailto:a@example.test; ext=has space",
        "v=TLSRPTv10; rua=mailto:a@example.test",
    ],
)
def test_invalid_records_ask_for_nothing(txt: str) -> None:
    with pytest.raises(RecordError):
        parse_record(txt)
    assert select_record([txt]) is None


def test_two_records_mean_no_reports() -> None:
    one = "v=TLSRPTv1; rua=mailto:a@example.test"
    assert select_record([one]) is not None
    assert select_record([one, "v=TLSRPTv1; rua=mailto:b@example.test"]) is None
    assert select_record([]) is None


def test_rua_uris() -> None:
    assert mailto_addresses("mailto:TLS@Example.Test") == ("tls@example.test",)
    assert mailto_addresses("mailto:a%40b@example.test") == ()
    assert mailto_addresses("mailto:a@example.test%2Cb@example.test?subject=x") == (
        "a@example.test",
        "b@example.test",
    )
    assert mailto_addresses("https://example.test/") == ()
    assert https_url("https://r.example.test:8443/tls") == "https://r.example.test:8443/tls"
    assert https_url("http://r.example.test/") is None
    assert https_url("https:///nohost") is None


def test_the_filename_of_rfc8460_5_1() -> None:
    assert (
        tlsrpt.filename("sender.example", DOMAIN, START, END)
        == f"sender.example!{DOMAIN}!{START}!{END}.json.gz"
    )
    assert (
        tlsrpt.filename("s.example", "d.example", 1, 2, "00-1")
        == "s.example!d.example!1!2!001.json.gz"
    )


def test_the_helpers_for_other_modules() -> None:
    assert sample(report_id="other") != SAMPLE
    assert tlsrpt.policy_lines(["version: STSv1\r", "", "  mode: testing "]) == (
        "version: STSv1",
        "mode: testing",
    )
