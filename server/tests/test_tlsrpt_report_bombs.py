"""Hostile TLS reports (estafeta.reports.tlsrpt): anyone can mail one to
the rua address of our ``_smtp._tls`` record. A gzip bomb stops at the
decompression bound without holding more; deep nesting, container and
value floods are refused by the skeleton scan before ``json`` builds
anything; policy and failure-detail floods and oversized strings stop at
their bounds. Each refusal is a ReportError with its reason, quickly and
in bounded memory."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import pytest

from _reports import expect_refusal
from _tls_reports import SAMPLE, gzipped, message
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import ReportError, parse_any, parse_message, parse_report

MiB = 1024 * 1024


def _expect(data: bytes, reason: str, error: str, limit: int = 48 * MiB) -> None:
    """Refused with ``reason`` within ten seconds, never holding more than
    ``limit`` bytes of Python memory at once."""
    expect_refusal(parse_any, data, reason, error, limit, seconds=10)


def _bomb_body(size: int) -> Iterator[bytes]:
    """Valid JSON so far: a string that never ends before the bound."""
    yield b'{"organization-name": "'
    chunk = b"a" * MiB
    for _ in range(size // MiB):
        yield chunk


def gzip_bomb(size: int = 200 * MiB) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(compressor.compress(c) for c in _bomb_body(size)) + compressor.flush()


def test_a_gzip_bomb_stops_at_the_bound() -> None:
    data = gzip_bomb()
    assert len(data) < MiB  # 200 MiB of JSON in well under a megabyte
    _expect(data, "too_large", f"larger than {tlsrpt.MAX_JSON} octets once decompressed")
    # Mailed as a report, the same.
    with pytest.raises(ReportError) as caught:
        parse_message(message(data))
    assert caught.value.reason == "too_large"


def test_plain_json_over_the_bound_is_refused_unread() -> None:
    data = b'{"a": "' + b"x" * tlsrpt.MAX_JSON + b'"}'
    _expect(data, "too_large", "larger than")


def test_broken_gzip_is_refused() -> None:
    packed = gzipped(SAMPLE)
    for bad in (packed[: len(packed) // 2], packed + b"trailing junk", packed[:10] + b"\0" * 50):
        with pytest.raises(ReportError) as caught:
            parse_report(bad)
        assert caught.value.reason in ("archive", "json"), str(caught.value)


@pytest.mark.parametrize(
    ("document", "error"),
    [
        (b"[" * 200_000 + b"]" * 200_000, "more than"),  # deep and many arrays
        (b'{"a":' * 50 + b"1" + b"}" * 50, f"nested more than {tlsrpt.MAX_DEPTH} deep"),
        (b"[" + b"[]," * 100_000 + b"[]]", f"more than {tlsrpt.MAX_CONTAINERS} JSON objects"),
        (b"[" + b"0," * 1_000_000 + b"0]", f"more than {tlsrpt.MAX_VALUES} JSON values"),
    ],
    ids=["brackets", "deep-objects", "containers", "values"],
)
def test_floods_are_refused_before_json_builds_them(document: bytes, error: str) -> None:
    _expect(document, "too_large", error, limit=24 * MiB)


def test_brackets_inside_strings_do_not_count() -> None:
    document = json.loads(SAMPLE)
    document["report-id"] = "[" * 2000  # a string, not nesting
    report = tlsrpt.parse_json(json.dumps(document).encode())
    assert report.report_id == "[" * 2000


def _with_policies(count: int, details: int = 0) -> bytes:
    document = json.loads(SAMPLE)
    entry = document["policies"][1]
    detail = {"result-type": "validation-failure", "failed-session-count": 1}
    entry = {**entry, "failure-details": [detail] * details}
    document["policies"] = [entry] * count
    return json.dumps(document).encode()


def test_a_policy_flood_stops_at_max_policies() -> None:
    assert len(tlsrpt.parse_json(_with_policies(tlsrpt.MAX_POLICIES)).policies) == (
        tlsrpt.MAX_POLICIES
    )
    _expect(_with_policies(tlsrpt.MAX_POLICIES + 1), "too_large", "more than 2000 entries")


def test_a_failure_detail_flood_stops_at_max_details() -> None:
    _expect(_with_policies(3, 8_000), "too_large", "more than 20000 failure-details")


def test_oversized_strings_are_refused_or_cut() -> None:
    document = json.loads(SAMPLE)
    document["organization-name"] = "x" * (tlsrpt.MAX_STRING + 1)
    with pytest.raises(ReportError) as caught:
        tlsrpt.parse_json(json.dumps(document).encode())
    assert caught.value.reason == "schema"
    # Free text is cut, not refused.
    document = json.loads(SAMPLE)
    document["contact-info"] = "y" * 100_000
    assert tlsrpt.parse_json(json.dumps(document).encode()).contact_info == "y" * tlsrpt.MAX_STRING


def test_a_huge_number_is_refused_as_json() -> None:
    # Python refuses to parse an int of more than 4300 digits: a clean error.
    document = SAMPLE.replace(b"4211", b"9" * 5000)
    with pytest.raises(ReportError) as caught:
        tlsrpt.parse_json(document)
    assert caught.value.reason == "json"
