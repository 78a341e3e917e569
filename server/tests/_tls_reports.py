"""TLS reports for the tests: the sample written after rfc8460:4.4's
example (data/tlsrpt/report.json), in the forms reporters send it (gzip'd,
plain JSON) and inside messages as they arrive at the rua address
(rfc8460:5.3).

The sample's numbers, which the tests check exactly: two policies; the
MTA-STS one of example.test with 4211 successful and 38 failed sessions
(certificate-expired 30, starttls-not-supported 6, validation-failure 2),
the no-policy-found one of other.test with 17 successful sessions.
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

SAMPLE_PATH = Path(__file__).parent / "data" / "tlsrpt" / "report.json"
SAMPLE = SAMPLE_PATH.read_bytes()
START, END = 1767225600, 1767311999  # 2026-01-01 00:00:00 / 23:59:59 UTC
DOMAIN = "example.test"
ORG = "Sender Example Inc."
REPORT_ID = "2026-01-01T00:00:00Z_example.test"
FILENAME = f"sender.example!{DOMAIN}!{START}!{END}.json.gz"


def sample(
    start: str = "2026-01-01T00:00:00Z",
    end: str = "2026-01-01T23:59:59Z",
    report_id: str = REPORT_ID,
    org: str = ORG,
) -> bytes:
    """The sample report with another period, id or organisation."""
    return (
        SAMPLE.replace(b'"2026-01-01T00:00:00Z"', f'"{start}"'.encode())
        .replace(b'"2026-01-01T23:59:59Z"', f'"{end}"'.encode())
        .replace(f'"report-id": "{REPORT_ID}"'.encode(), f'"report-id": "{report_id}"'.encode())
        .replace(f'"{ORG}"'.encode(), f'"{org}"'.encode())
    )


def gzipped(document: bytes) -> bytes:
    return gzip.compress(document, mtime=0)


def message(
    payload: bytes,
    content_type: str = "application/tlsrpt+gzip",
    filename: str = FILENAME,
    to: str = f"tls-reports@{DOMAIN}",
) -> bytes:
    """A report message as rfc8460:5.3 shows one: multipart/report with a
    text part and the report, base64."""
    body = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        (
            "From: TLS Reporting <smtp-tls-reporting@sender.example>\r\n"
            f"To: <{to}>\r\n"
            f"Subject: Report Domain: {DOMAIN} Submitter: sender.example"
            f" Report-ID: <{REPORT_ID}@sender.example>\r\n"
            "Date: Fri, 02 Jan 2026 04:00:00 +0000\r\n"
            "Message-ID: <tlsrpt-20260101@sender.example>\r\n"
            f"TLS-Report-Domain: {DOMAIN}\r\n"
            "TLS-Report-Submitter: sender.example\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type="tlsrpt"; boundary="b1"\r\n'
            "\r\n"
            "--b1\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
            f"This is an aggregate TLS report from sender.example for {DOMAIN}.\r\n"
            "--b1\r\n"
            f"Content-Type: {content_type}\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{filename}"\r\n'
            "\r\n"
        ).encode()
        + body
        + b"\r\n--b1--\r\n"
    )
