"""Property tests of the TLS report parser (estafeta.reports.tlsrpt): the
sample report as JSON, gzip and inside a message, mutated (``_fuzz``), gives
a Report or a ReportError, never another exception; and whatever parses
serialises and parses back to the same report (the round trip)."""

from __future__ import annotations

from hypothesis import given

from _fuzz import mutated
from _tls_reports import SAMPLE, gzipped, message
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import Report, ReportError, parse_any

SEEDS = [
    SAMPLE,
    gzipped(SAMPLE),
    message(gzipped(SAMPLE)),
    message(SAMPLE, "application/tlsrpt+json"),
]
TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\u0000",
    b",",
    b"1e999",
    b"-1",
    b"null",
    b"\x1f\x8b",
    b"\xff",
]
REASONS = {"no_report", "several_reports", "too_large", "archive", "json", "schema"}


@given(mutated(SEEDS, TOKENS))
def test_any_mutation_gives_a_report_or_a_report_error(data: bytes) -> None:
    try:
        report = parse_any(data)
    except ReportError as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc)
    else:
        assert isinstance(report, Report)
        assert all(p.successful >= 0 and p.failed >= 0 for p in report.policies)
        assert tlsrpt.parse_json(tlsrpt.report_json(report)) == report
