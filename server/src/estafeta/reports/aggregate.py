"""DMARC aggregate reports we send (rfc7489:7.2), written. Sans-IO.

A :class:`~estafeta.reports.dmarc.Report` (the same frozen type the parser
returns, so a report we write is checked by reading it back) goes in, bytes
come out:

- ``feedback_xml(report)``: the XML document of rfc7489 appendix C,
  elements in the schema's order, written by ElementTree (which escapes
  ``<``, ``&`` and quotes), text reduced to what XML 1.0 may hold;
- ``attachment_name(receiver, report)``: the rfc7489:7.2.1.1 file name,
  ``receiver!policy-domain!begin!end.xml.gz``;
- ``report_message(...)``: the whole message (rfc7489:7.2.1.1): multipart/
  mixed, a short text/plain part for people and the gzipped XML as
  ``application/gzip``, with the ``Report Domain: ... Submitter: ...
  Report-ID: <...>`` subject; CRLF line endings, ready to be signed;
- ``sources(report)``: its messages summed per source IP, in the shape of
  the ``sources`` of ``estafeta dmarc report --json`` (what the receiving
  side will show), for ``estafeta dmarc send --json``.

No file, socket, clock or DNS is touched: the caller passes the time and
the identifiers (estafeta.delivery.dmarc_send).
"""

from __future__ import annotations

import email.policy
import gzip
import re
import time
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from xml.etree import ElementTree

from estafeta.reports.dmarc import Record, Report

DAY = 86_400
VERSION = "1.0"  # rfc7489:C feedback/version

# Characters XML 1.0 cannot hold (2.2 Char): C0 controls but TAB, LF and CR;
# surrogates; U+FFFE and U+FFFF. ElementTree writes them as they are, which
# no parser reads back.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def day_start(timestamp: float) -> int:
    """The start of the UTC day holding ``timestamp`` (seconds since 1970)."""
    return int(timestamp) // DAY * DAY


def day_name(day: int) -> str:
    """``2026-12-05`` for the UTC day starting at ``day``."""
    return time.strftime("%Y-%m-%d", time.gmtime(day))


def report_id(day: int, domain: str, hostname: str) -> str:
    """One report id per policy domain, UTC day and reporting host
    (rfc7489:C report_id: "unique within the reporting organisation").
    The same for a report sent again after a crash, so that the domain
    owner's intake sees a duplicate (rfc7489:7.2.1.1 Report-ID's purpose)."""
    return f"{time.strftime('%Y%m%d', time.gmtime(day))}.{domain}@{hostname}"


def sources(report: Report) -> list[dict[str, Any]]:
    """The report's messages per source IP: how many, how many passed SPF
    and DKIM aligned (rfc7489:3.1), DMARC (either, rfc7489:6.6.2), and the
    dispositions applied; most messages first. The keys are those of the
    ``sources`` of ``estafeta dmarc report --json`` (cli_dmarc.py)."""
    found: dict[str, dict[str, Any]] = {}
    for record in report.records:
        tally = found.setdefault(
            record.source_ip,
            {
                "source_ip": record.source_ip,
                "messages": 0,
                "spf_aligned": {"pass": 0, "fail": 0},
                "dkim_aligned": {"pass": 0, "fail": 0},
                "dmarc": {"pass": 0, "fail": 0},
                "disposition": {"none": 0, "quarantine": 0, "reject": 0},
            },
        )
        evaluated = record.policy_evaluated
        tally["messages"] += record.count
        tally["spf_aligned"][evaluated.spf] += record.count
        tally["dkim_aligned"][evaluated.dkim] += record.count
        tally["dmarc"][record.dmarc] += record.count
        tally["disposition"][evaluated.disposition] += record.count
    return sorted(found.values(), key=lambda t: (-t["messages"], t["source_ip"]))


def attachment_name(receiver: str, report: Report) -> str:
    """rfc7489:7.2.1.1 filename = receiver "!" policy-domain "!"
    begin-timestamp "!" end-timestamp "." extension, with the "xml.gz"
    extension of gzip (erratum 7099)."""
    dates = report.date_range
    return f"{receiver}!{report.policy_published.domain}!{dates.begin}!{dates.end}.xml.gz"


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def _add(parent: ElementTree.Element, name: str, value: str | int | None) -> None:
    """A child with text; None leaves it out (the schema's minOccurs=0)."""
    if value is None:
        return
    ElementTree.SubElement(parent, name).text = _text(str(value))


def _record(parent: ElementTree.Element, record: Record) -> None:
    element = ElementTree.SubElement(parent, "record")  # rfc7489:C RecordType
    row = ElementTree.SubElement(element, "row")  # RowType
    _add(row, "source_ip", record.source_ip)
    _add(row, "count", record.count)
    evaluated = record.policy_evaluated
    policy = ElementTree.SubElement(row, "policy_evaluated")  # PolicyEvaluatedType
    _add(policy, "disposition", evaluated.disposition)
    _add(policy, "dkim", evaluated.dkim)
    _add(policy, "spf", evaluated.spf)
    for override in evaluated.reasons:  # PolicyOverrideReason
        reason = ElementTree.SubElement(policy, "reason")
        _add(reason, "type", override.type)
        _add(reason, "comment", override.comment)
    identifiers = ElementTree.SubElement(element, "identifiers")  # IdentifierType
    _add(identifiers, "envelope_to", record.envelope_to)
    # Required by the schema; empty for the null reverse-path (a bounce).
    _add(identifiers, "envelope_from", record.envelope_from or "")
    _add(identifiers, "header_from", record.header_from)
    auth = ElementTree.SubElement(element, "auth_results")  # AuthResultType
    for dkim in record.auth_results.dkim:  # DKIMAuthResultType
        entry = ElementTree.SubElement(auth, "dkim")
        _add(entry, "domain", dkim.domain)
        _add(entry, "selector", dkim.selector)
        _add(entry, "result", dkim.result)
        _add(entry, "human_result", dkim.human_result)
    for spf in record.auth_results.spf:  # SPFAuthResultType
        entry = ElementTree.SubElement(auth, "spf")
        _add(entry, "domain", spf.domain)
        _add(entry, "scope", spf.scope)
        _add(entry, "result", spf.result)


def feedback_xml(report: Report) -> bytes:
    """The report as rfc7489 appendix C XML (no namespace, as most
    reporters write it; our parser and others accept it), UTF-8."""
    root = ElementTree.Element("feedback")
    _add(root, "version", report.version or VERSION)
    metadata = ElementTree.SubElement(root, "report_metadata")  # ReportMetadataType
    _add(metadata, "org_name", report.org_name)
    _add(metadata, "email", report.email)
    _add(metadata, "extra_contact_info", report.extra_contact_info)
    _add(metadata, "report_id", report.report_id)
    dates = ElementTree.SubElement(metadata, "date_range")  # DateRangeType
    _add(dates, "begin", report.date_range.begin)
    _add(dates, "end", report.date_range.end)
    for error in report.errors:
        _add(metadata, "error", error)
    published = report.policy_published
    policy = ElementTree.SubElement(root, "policy_published")  # PolicyPublishedType
    _add(policy, "domain", published.domain)
    _add(policy, "adkim", published.adkim)
    _add(policy, "aspf", published.aspf)
    _add(policy, "p", published.p)
    _add(policy, "sp", published.sp)
    _add(policy, "pct", published.pct)
    _add(policy, "fo", published.fo)
    for record in report.records:
        _record(root, record)
    ElementTree.indent(root)
    xml: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"


def compressed(xml: bytes) -> bytes:
    """rfc7489:7.2.1.1 — "The aggregate data MUST be an XML file subjected to
    GZIP compression"; mtime 0 makes the same report the same bytes."""
    return gzip.compress(xml, compresslevel=9, mtime=0)


def _summary(report: Report, submitter: str) -> str:
    counts = report.counts()
    domain = report.policy_published.domain
    sources = len({record.source_ip for record in report.records})
    lines = [
        f"This is a DMARC aggregate report (RFC 7489) from {submitter} about mail",
        f"claiming to be from {domain}, received on {day_name(report.date_range.begin)} (UTC).",
        "",
        f"Messages: {report.messages} from {sources} source address"
        f"{'' if sources == 1 else 'es'}; DMARC pass {counts['dmarc_pass']},"
        f" fail {counts['dmarc_fail']}.",
        "",
        "The figures are in the attached XML file (gzip), for a report reader.",
    ]
    lines += [f"Note: {error}" for error in report.errors]
    return "\n".join(lines) + "\n"


def report_message(
    report: Report,
    *,
    sender: str,
    recipient: str,
    submitter: str,
    receiver: str,
    message_id: str,
    now: float,
) -> bytes:
    """The message that carries ``report`` to ``recipient`` (rfc7489:7.2.1.1).

    ``sender``: our reports address (From); ``submitter``: the domain name
    that stands for us in the subject; ``receiver``: the one in the file
    name; ``message_id`` without angle brackets. CRLF line endings.
    """
    utf8 = not (sender.isascii() and recipient.isascii())
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    message = EmailMessage(policy=policy)
    domain = report.policy_published.domain
    message["From"] = Address(display_name=f"DMARC reports of {submitter}", addr_spec=sender)
    message["To"] = recipient
    # rfc7489:7.2.1.1 dmarc-subject, the Report-ID a msg-id (rfc5322:3.6.4).
    message["Subject"] = (
        f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report.report_id}>"
    )
    message["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    message["Message-ID"] = f"<{message_id}>"
    # rfc3834:5 — generated by a machine: no vacation reply, no auto-forward.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_summary(report, submitter), charset="utf-8")
    message.add_attachment(
        compressed(feedback_xml(report)),
        maintype="application",
        subtype="gzip",
        filename=attachment_name(receiver, report),
    )
    return message.as_bytes(policy=policy)
