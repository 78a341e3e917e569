"""DMARC aggregate reports for the tests: the sample report written after
rfc7489 appendix C (data/dmarc/report.xml), in the forms reporters send it
(zip, gzip, plain XML) and inside messages as they arrive at the rua address.

The sample's numbers, which the tests check exactly: 4 records, 14
messages; SPF aligned 9 pass / 5 fail; DKIM aligned 11 pass / 3 fail; DMARC
12 pass / 2 fail; dispositions none 12, quarantine 0, reject 2.
"""

from __future__ import annotations

import base64
import gzip
import io
import quopri
import zipfile
from pathlib import Path

SAMPLE_PATH = Path(__file__).parent / "data" / "dmarc" / "report.xml"
SAMPLE = SAMPLE_PATH.read_bytes()
BEGIN, END = 1767225600, 1767311999
DOMAIN = "example.test"
REPORT_ID = "rx-20260101-0001"
ORG = "Receiver Example"
# rfc7489:7.2.1.1 filename: receiver!policy-domain!begin!end[!unique-id].extension
FILENAME = f"receiver.example!{DOMAIN}!{BEGIN}!{END}"


def sample(begin: int = BEGIN, end: int = END, report_id: str = REPORT_ID, org: str = ORG) -> bytes:
    """The sample report, with another period, id or reporting organisation."""
    return (
        SAMPLE.replace(f"<begin>{BEGIN}</begin>".encode(), f"<begin>{begin}</begin>".encode())
        .replace(f"<end>{END}</end>".encode(), f"<end>{end}</end>".encode())
        .replace(f"<report_id>{REPORT_ID}<".encode(), f"<report_id>{report_id}<".encode())
        .replace(f"<org_name>{ORG}<".encode(), f"<org_name>{org}<".encode())
    )


def zipped(xml: bytes, name: str = FILENAME + ".xml", *extra: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in ((name, xml), *extra):
            info = zipfile.ZipInfo(member, date_time=(2026, 1, 2, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def gzipped(xml: bytes) -> bytes:
    return gzip.compress(xml, mtime=0)


def message(
    payload: bytes,
    content_type: str = "application/zip",
    filename: str = FILENAME + ".zip",
    encoding: str = "base64",
    to: str = f"dmarc-reports@{DOMAIN}",
) -> bytes:
    """A report message as a receiver sends one (rfc7489:7.2.1.1): a short
    text part and the report as an attachment."""
    if encoding == "base64":
        body = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        body = quopri.encodestring(payload).replace(b"\n", b"\r\n")
    else:
        body = payload
    name = f'; name="{filename}"' if filename else ""
    disposition = f'Content-Disposition: attachment; filename="{filename}"\r\n' if filename else ""
    return (
        (
            "From: DMARC Reporter <noreply-dmarc@receiver.example>\r\n"
            f"To: <{to}>\r\n"
            f"Subject: Report Domain: {DOMAIN} Submitter: receiver.example"
            f" Report-ID: <{REPORT_ID}>\r\n"
            "Date: Fri, 02 Jan 2026 04:00:00 +0000\r\n"
            "Message-ID: <dmarc-rx-20260101-0001@receiver.example>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n'
            "\r\n"
            "--b1\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n"
            f"This is an aggregate report from receiver.example for {DOMAIN}.\r\n"
            "--b1\r\n"
            f"Content-Type: {content_type}{name}\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n"
            f"{disposition}"
            "\r\n"
        ).encode()
        + body
        + b"\r\n--b1--\r\n"
    )
