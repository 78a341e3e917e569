"""``TLS-Required: No`` (rfc8689:3) read from a queued message's header
block: sans-IO, bounded, the value ``No`` in every such field."""

from __future__ import annotations

import pytest

from estafeta.queue.requiretls import MAX_HEADER, tls_optional, tls_report

BODY = b"\r\n\r\nTLS-Required: No\r\n"


@pytest.mark.parametrize(
    ("header", "optional"),
    [
        (b"From: a@b.example\r\nTLS-Required: No", True),
        (b"tls-required:   no  ", True),  # rfc5234 literals are case-insensitive
        (b"TLS-Required:\r\n No", True),  # folded (rfc5322:2.2.3)
        (b"TLS-Required : No", True),  # blanks before the colon, as elsewhere
        (b"TLS-Required: Yes", False),
        (b"TLS-Required: No\r\nTLS-Required: maybe", False),  # not every field says No
        (b"TLS-Required: No thanks", False),
        (b"X-TLS-Required: No", False),
        (b"From: a@b.example", False),
        (b"", False),
    ],
)
def test_the_field(header: bytes, optional: bool) -> None:
    assert tls_optional(header + b"\r\n\r\nHello.\r\n") is optional


def test_only_the_header_block_counts() -> None:
    assert tls_optional(b"Subject: hi" + BODY) is False
    # A field after the first line that is no field ends the header.
    assert tls_optional(b"Subject: hi\r\nnot a field\r\nTLS-Required: No\r\n\r\n") is False


def test_the_header_is_read_up_to_a_bound() -> None:
    padding = b"X-Pad: " + b"x" * 70 + b"\r\n"
    inside = padding * ((MAX_HEADER - 100) // len(padding)) + b"TLS-Required: No\r\n"
    assert len(inside) < MAX_HEADER and tls_optional(inside + b"\r\nbody")
    beyond = padding * (MAX_HEADER // len(padding) + 1) + b"TLS-Required: No\r\n"
    assert tls_optional(beyond + b"\r\nbody") is False


@pytest.mark.parametrize(
    "data", [b"\xff\xfe\x00TLS-Required: No", b"\r\n" * 10_000, bytes(range(256)) * 300]
)
def test_garbage_is_no_error(data: bytes) -> None:
    assert tls_optional(data) in (True, False)


REPORT_TYPE = b'Content-Type: multipart/report; report-type="tlsrpt";\r\n boundary="b"\r\n'


@pytest.mark.parametrize(
    ("header", "report"),
    [
        (b"TLS-Report-Domain: peer.test\r\n" + REPORT_TYPE, True),
        (
            b"tls-report-domain: peer.test\r\nContent-Type: Multipart/Report; report-type=tlsrpt",
            True,
        ),
        (
            b'Content-Type: multipart/report;\r\n  report-type = "tlsrpt"\r\nTLS-Report-Domain: x',
            True,
        ),
        (REPORT_TYPE, False),  # no TLS-Report-Domain (rfc8460:5.3)
        (b"TLS-Report-Domain: peer.test\r\nContent-Type: text/plain", False),
        # A DMARC or delivery report is no TLS report.
        (
            b"TLS-Report-Domain: p\r\nContent-Type: multipart/report; report-type=delivery-status",
            False,
        ),
        (b"TLS-Report-Domain: p\r\n" + REPORT_TYPE + b"Content-Type: text/plain\r\n", False),
        (b"Subject: hi", False),
    ],
)
def test_a_tls_report_is_told_by_its_header(header: bytes, report: bool) -> None:
    assert tls_report(header + b"\r\n\r\n--b--\r\n") is report


def test_a_tls_report_field_in_the_body_is_not_seen() -> None:
    assert tls_report(b"Subject: hi\r\n\r\nTLS-Report-Domain: p\r\n" + REPORT_TYPE) is False


@pytest.mark.parametrize("data", [b"\xff\xfe\x00TLS-Report-Domain: x", bytes(range(256)) * 300])
def test_garbage_is_no_tls_report(data: bytes) -> None:
    assert tls_report(data) is False
