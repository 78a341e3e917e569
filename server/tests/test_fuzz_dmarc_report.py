"""Property tests of the DMARC report parser (estafeta.reports): the sample
report as XML, zip, gzip and inside a message, with bytes flipped, cut,
inserted or repeated, gives a Report or a ReportError: never another
exception (a zipfile, zlib, expat or Unicode error leaking through would be
a message the intake cannot account for)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import _fuzz  # noqa: F401 (the Hypothesis profiles)
from _dmarc_reports import SAMPLE, gzipped, message, zipped
from estafeta.reports.dmarc import Report, ReportError, parse_any

SEEDS = [SAMPLE, zipped(SAMPLE), gzipped(SAMPLE), message(zipped(SAMPLE))]
TOKENS = [b"<", b">", b"</record>", b"<record>", b"&", b"&#x9b;", b"\0", b"PK\x03\x04", b"\xff"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 8))
        else:
            del data[at:]
    return bytes(data)


@given(mutated())
def test_any_mutation_gives_a_report_or_a_report_error(data: bytes) -> None:
    try:
        report = parse_any(data)
    except ReportError as exc:
        assert exc.reason in {
            "no_report",
            "several_reports",
            "too_large",
            "archive",
            "xml",
            "dtd",
            "schema",
            "too_many_records",
        }
        assert str(exc)
    else:
        assert isinstance(report, Report)
        assert report.records and all(r.count >= 0 for r in report.records)
