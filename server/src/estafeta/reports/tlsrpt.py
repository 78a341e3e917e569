"""SMTP TLS reports (rfc8460): the report and its file. Sans-IO.

(The ``_smtp._tls`` record is estafeta.reports.tlsrpt_record.)

- :class:`Report` and its parts, the JSON of rfc8460:4.4: ``report_json``
  writes it, ``parse_json`` reads it back strictly;
- ``parse_message`` (a report as it arrives by mail, rfc8460:5.3),
  ``parse_report`` (a .json or .json.gz file), ``parse_any`` (either);
- ``filename`` (rfc8460:5.1).

Reading is bounded before any memory is spent on the document: at most
``MAX_JSON`` octets, counted while inflating a gzip (``unpack.gunzip``: a
bomb stops at the bound); before ``json`` builds a single object, a scan of
the document's skeleton (its strings blanked) refuses more than
``MAX_CONTAINERS`` objects and arrays, ``MAX_VALUES`` values, or nesting
deeper than ``MAX_DEPTH``; after it, ``MAX_POLICIES`` policies,
``MAX_DETAILS`` failure details and ``MAX_STRINGS`` policy-string lines.
Refusals are :class:`~estafeta.reports.unpack.ReportError`, whose
``reason`` is a metrics label (the DMARC parser's, plus ``json``).

Validation follows rfc8460:4.4: the required members with their JSON
types, counts non-negative integers (not booleans, not floats), dates
rfc3339 date-times with ``start <= end``, ``policy-type`` one of three,
addresses IP addresses, the policy domain a domain name (stored as
A-labels). Members the schema does not know are skipped. Leniencies, each
for what deployed reporters send: ``mx-host`` as a string (the RFC's own
example, fixed by erratum 6241 to an array), date-times without a time
zone (read as UTC), result types not in the IANA registry (kept, if they
look like one), ``failure-details`` absent. Text is kept printable (runs of
white space one space, control characters U+FFFD): a report may not put
escape sequences on the operator's terminal.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from estafeta.address import AddressError, normalize_domain
from estafeta.reports import unpack
from estafeta.reports.unpack import SCHEMA, TOO_LARGE, ReportError

# rfc8460:4.4 policy-type
STS = "sts"
TLSA = "tlsa"
NO_POLICY = "no-policy-found"
POLICY_TYPES = (TLSA, STS, NO_POLICY)

# rfc8460:4.3.1 negotiation failures
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
CERTIFICATE_EXPIRED = "certificate-expired"
CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
VALIDATION_FAILURE = "validation-failure"
# rfc8460:4.3.2.1 DANE policy failures
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"
# rfc8460:4.3.2.2 MTA-STS policy failures
STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
STS_POLICY_INVALID = "sts-policy-invalid"
STS_WEBPKI_INVALID = "sts-webpki-invalid"
RESULT_TYPES = (
    STARTTLS_NOT_SUPPORTED,
    CERTIFICATE_HOST_MISMATCH,
    CERTIFICATE_EXPIRED,
    CERTIFICATE_NOT_TRUSTED,
    VALIDATION_FAILURE,
    TLSA_INVALID,
    DNSSEC_INVALID,
    DANE_REQUIRED,
    STS_POLICY_FETCH_ERROR,
    STS_POLICY_INVALID,
    STS_WEBPKI_INVALID,
)

# rfc8460:6 media types; 5.1 filename extensions
GZIP_TYPE = "application/tlsrpt+gzip"
JSON_TYPE = "application/tlsrpt+json"
_GENERIC_TYPES = frozenset(
    {"application/gzip", "application/x-gzip", "application/json", "application/octet-stream"}
)

MiB = 1024 * 1024
MAX_JSON = 4 * MiB  # decompressed; reports are kilobytes, a big one a few hundred
MAX_DEPTH = 12  # the schema nests 6 deep
MAX_CONTAINERS = 60_000  # objects and arrays in the document
MAX_VALUES = 500_000  # commas: members and array elements
MAX_POLICIES = 2_000
MAX_DETAILS = 20_000  # failure-details over all policies
MAX_STRINGS = 1_000  # policy-string lines or mx-host patterns of one policy
MAX_STRING = 2_048  # characters of one string
MAX_COUNT = 2**53  # JSON's exact integers

JSON = "json"  # not well-formed JSON (a ReportError reason)

__all__ = [
    "FailureDetail",
    "Policy",
    "PolicyResult",
    "Report",
    "ReportError",
    "filename",
    "parse_any",
    "parse_json",
    "parse_message",
    "parse_report",
    "report_json",
]


# -- the report (rfc8460:4.4) ---------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """rfc8460:4.4 ``policy``: what was applied to a recipient domain."""

    type: str  # one of POLICY_TYPES
    domain: str  # policy-domain, A-labels
    strings: tuple[str, ...] = ()  # policy-string: the MTA-STS lines, or TLSA records
    mx_hosts: tuple[str, ...] = ()  # mx-host: the MTA-STS mx patterns


@dataclass(frozen=True)
class FailureDetail:
    """rfc8460:4.4 ``failure-details``: failed sessions of one kind; empty
    strings are members left out."""

    result_type: str
    count: int  # failed-session-count
    sending_ip: str = ""  # sending-mta-ip
    receiving_mx: str = ""  # receiving-mx-hostname
    receiving_helo: str = ""  # receiving-mx-helo
    receiving_ip: str = ""  # receiving-ip
    additional_information: str = ""  # a URI
    reason_code: str = ""  # failure-reason-code


@dataclass(frozen=True)
class PolicyResult:
    """One entry of ``policies``: the policy, its ``summary``, the failures."""

    policy: Policy
    successful: int  # total-successful-session-count
    failed: int  # total-failure-session-count
    details: tuple[FailureDetail, ...] = ()


@dataclass(frozen=True)
class Report:
    org_name: str  # organization-name
    start: int  # date-range, Unix seconds
    end: int
    contact_info: str
    report_id: str
    policies: tuple[PolicyResult, ...]

    @property
    def successful(self) -> int:
        return sum(p.successful for p in self.policies)

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.policies)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.policy.domain for p in self.policies))

    def describe(self) -> dict[str, Any]:
        """Who reported what: for log lines and ``tlsrpt import --json``."""
        return {
            "org_name": self.org_name,
            "report_id": self.report_id,
            "domains": list(self.domains),
            "begin": self.start,
            "end": self.end,
            "successful": self.successful,
            "failed": self.failed,
        }


def report_json(report: Report) -> bytes:
    """The report as rfc8460:4.4 JSON (UTF-8; optional members that are
    empty left out, ``mx-host`` an array as erratum 6241 has it)."""
    policies = []
    for result in report.policies:
        policy: dict[str, Any] = {"policy-type": result.policy.type}
        if result.policy.strings:
            policy["policy-string"] = list(result.policy.strings)
        policy["policy-domain"] = result.policy.domain
        if result.policy.mx_hosts:
            policy["mx-host"] = list(result.policy.mx_hosts)
        entry: dict[str, Any] = {
            "policy": policy,
            "summary": {
                "total-successful-session-count": result.successful,
                "total-failure-session-count": result.failed,
            },
        }
        if result.details:
            entry["failure-details"] = [_detail_json(d) for d in result.details]
        policies.append(entry)
    document = {
        "organization-name": report.org_name,
        "date-range": {
            "start-datetime": _datetime(report.start),
            "end-datetime": _datetime(report.end),
        },
        "contact-info": report.contact_info,
        "report-id": report.report_id,
        "policies": policies,
    }
    return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8")


def _detail_json(detail: FailureDetail) -> dict[str, Any]:
    fields = (
        ("result-type", detail.result_type),
        ("sending-mta-ip", detail.sending_ip),
        ("receiving-mx-hostname", detail.receiving_mx),
        ("receiving-mx-helo", detail.receiving_helo),
        ("receiving-ip", detail.receiving_ip),
    )
    out: dict[str, Any] = {name: value for name, value in fields if value}
    out["failed-session-count"] = detail.count
    if detail.additional_information:
        out["additional-information"] = detail.additional_information
    if detail.reason_code:
        out["failure-reason-code"] = detail.reason_code
    return out


def _datetime(timestamp: int) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # rfc3339:5.6 date-time


def compress(document: bytes) -> bytes:
    """rfc8460:5.2 — gzip, with no timestamp (the same report, the same bytes)."""
    return gzip.compress(document, mtime=0)


def filename(submitter: str, domain: str, start: int, end: int, unique_id: str = "") -> str:
    """rfc8460:5.1 — sender "!" policy-domain "!" begin "!" end ["!" unique-id]
    ".json.gz"; the unique id keeps only letters and digits."""
    unique = "".join(c for c in unique_id if c.isascii() and c.isalnum())
    name = f"{submitter}!{domain}!{start}!{end}"
    return f"{name}!{unique}.json.gz" if unique else f"{name}.json.gz"


# -- reading ------------------------------------------------------------------------


def parse_message(message: bytes) -> Report:
    """The report a message carries (rfc8460:5.3): the part of type
    application/tlsrpt+gzip or application/tlsrpt+json (or a generic type
    named *.json.gz or *.json), the whole message if it is that part."""
    part = unpack.find_attachment(
        message,
        _is_report,
        "a part of type application/tlsrpt+gzip or application/tlsrpt+json",
    )
    return parse_report(part.data)


def _is_report(leaf: Mapping[str, Any]) -> bool:
    kind = unpack.media_type(leaf)
    if kind in (GZIP_TYPE, JSON_TYPE):
        return True
    name = unpack.filename(leaf).lower()
    return kind in _GENERIC_TYPES and name.endswith((".json", ".json.gz"))


def parse_report(data: bytes) -> Report:
    """A report file: gzip'd JSON or the JSON itself, by the first bytes."""
    if data.startswith(b"\x1f\x8b"):
        document = b"".join(unpack.gunzip(data, MAX_JSON, "report JSON"))
    elif len(data) > MAX_JSON:
        raise ReportError(TOO_LARGE, f"report JSON larger than {MAX_JSON} octets")
    else:
        document = data
    return parse_json(document)


def parse_any(data: bytes) -> Report:
    """A report file (.json.gz, .json) or a whole message (an .eml)."""
    if data.startswith(b"\x1f\x8b") or data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return parse_report(data)
    return parse_message(data)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def _check_shape(document: bytes) -> None:
    """The bounds of the module docstring, on the skeleton of the document
    (strings blanked, so that brackets and commas in them do not count)."""
    skeleton = _JSON_STRING.sub(b'""', document)
    containers = skeleton.count(b"{") + skeleton.count(b"[")
    if containers > MAX_CONTAINERS:
        raise ReportError(TOO_LARGE, f"more than {MAX_CONTAINERS} JSON objects and arrays")
    if skeleton.count(b",") > MAX_VALUES:
        raise ReportError(TOO_LARGE, f"more than {MAX_VALUES} JSON values")
    depth = 0
    for bracket in _BRACKETS.finditer(skeleton):  # at most 2 * MAX_CONTAINERS of them
        if bracket.group() in (b"{", b"["):
            depth += 1
            if depth > MAX_DEPTH:
                raise ReportError(TOO_LARGE, f"JSON nested more than {MAX_DEPTH} deep")
        else:
            depth -= 1


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity (rfc8259:6)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"member {key[:40]!r} appears twice")
        result[key] = value
    return result


def parse_json(document: bytes) -> Report:
    """A report's JSON (rfc8259, UTF-8), validated against rfc8460:4.4."""
    if len(document) > MAX_JSON:
        raise ReportError(TOO_LARGE, f"report JSON larger than {MAX_JSON} octets")
    _check_shape(document)
    try:
        text = document.decode("utf-8-sig")
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_object)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
        raise ReportError(JSON, f"not a valid JSON document: {str(exc)[:200]}") from None
    return _report(_Object(value, "report"))


class _Object:
    """A JSON object of the report, members looked up with their rfc8460:4.4
    types; every error names the member's path."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ReportError(SCHEMA, f"{path}: not a JSON object")
        self.value: dict[str, Any] = value
        self.path = path

    def error(self, key: str, message: str) -> ReportError:
        return ReportError(SCHEMA, f"{self.path}/{key}: {message}")

    def member(self, key: str, required: bool) -> Any:
        if key not in self.value or self.value[key] is None:
            if required:
                raise ReportError(SCHEMA, f"{self.path}: no {key!r} (rfc8460:4.4)")
            return None
        return self.value[key]

    def object(self, key: str) -> _Object:
        return _Object(self.member(key, True), f"{self.path}/{key}")

    def string(self, key: str, required: bool = True, cut: bool = False) -> str:
        value = self.member(key, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(key, "not a string")
        if len(value) > MAX_STRING and not cut:
            raise self.error(key, f"longer than {MAX_STRING} characters")
        return _text(value)

    def count(self, key: str) -> int:
        value = self.member(key, True)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "not an integer")
        if not 0 <= value <= MAX_COUNT:
            raise self.error(key, f"{value} is out of range")
        return value

    def array(self, key: str, required: bool, limit: int, reason: str = SCHEMA) -> list[Any]:
        value = self.member(key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, "not an array")
        if len(value) > limit:
            raise ReportError(reason, f"{self.path}/{key}: more than {limit} entries")
        return value

    def strings(self, key: str, single: bool = False) -> tuple[str, ...]:
        """An optional array of strings; with ``single``, one string too
        (mx-host as the RFC's example writes it, erratum 6241)."""
        if single and isinstance(self.member(key, False), str):
            items = [self.value[key]]
        else:
            items = self.array(key, False, MAX_STRINGS)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", "not a string")
            out.append(_text(item))
        return tuple(out)

    def address(self, key: str) -> str:
        text = self.string(key, required=False)
        if not text:
            return ""
        try:
            if "%" in text:
                raise ValueError(text)  # no IPv6 zone
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise self.error(key, f"{text[:60]!r} is not an IP address") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _text(value: str) -> str:
    """At most MAX_STRING characters, printable: white space runs as one
    space, control characters U+FFFD."""
    text = " ".join(value[:MAX_STRING].split())
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return _CONTROL.sub("\ufffd", text)


# rfc3339:5.6 date-time (a space for the "T" and a missing zone tolerated)
_DATETIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"
)


def _timestamp(dates: _Object, key: str) -> int:
    text = dates.string(key)
    match = _DATETIME.match(text)
    if match is None:
        raise dates.error(key, f"{text[:40]!r} is not an rfc3339 date-time")
    zone = match[4] or "Z"
    try:
        moment = datetime.datetime.fromisoformat(
            f"{match[1]}T{match[2]}{'+00:00' if zone in 'Zz' else zone}"
        )
    except ValueError:
        raise dates.error(key, f"{text[:40]!r} is not a valid date-time") from None
    return int(moment.timestamp())


_RESULT_TYPE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")


def _report(top: _Object) -> Report:
    dates = top.object("date-range")
    start, end = _timestamp(dates, "start-datetime"), _timestamp(dates, "end-datetime")
    if start > end:
        raise ReportError(SCHEMA, f"{dates.path}: start-datetime is after end-datetime")
    entries = top.array("policies", True, MAX_POLICIES, TOO_LARGE)
    details = 0
    policies = []
    for i, raw in enumerate(entries):
        result = _policy_result(_Object(raw, f"report/policies[{i}]"))
        details += len(result.details)
        if details > MAX_DETAILS:
            raise ReportError(TOO_LARGE, f"more than {MAX_DETAILS} failure-details")
        policies.append(result)
    return Report(
        org_name=top.string("organization-name"),
        start=start,
        end=end,
        contact_info=top.string("contact-info", cut=True),
        report_id=top.string("report-id"),
        policies=tuple(policies),
    )


def _policy_result(entry: _Object) -> PolicyResult:
    policy = entry.object("policy")
    kind = policy.string("policy-type")
    if kind not in POLICY_TYPES:
        raise policy.error("policy-type", f"{kind[:40]!r} is not one of {', '.join(POLICY_TYPES)}")
    domain_text = policy.string("policy-domain")
    try:
        domain = normalize_domain(domain_text)
    except AddressError as exc:
        raise policy.error("policy-domain", str(exc)) from None
    summary = entry.object("summary")
    details = []
    for i, raw in enumerate(entry.array("failure-details", False, MAX_DETAILS, TOO_LARGE)):
        details.append(_failure(_Object(raw, f"{entry.path}/failure-details[{i}]")))
    return PolicyResult(
        policy=Policy(
            type=kind,
            domain=domain,
            strings=policy.strings("policy-string"),
            mx_hosts=tuple(h.lower() for h in policy.strings("mx-host", single=True)),
        ),
        successful=summary.count("total-successful-session-count"),
        failed=summary.count("total-failure-session-count"),
        details=tuple(details),
    )


def _failure(detail: _Object) -> FailureDetail:
    result_type = detail.string("result-type").lower()
    if not _RESULT_TYPE.match(result_type):
        raise detail.error("result-type", f"{result_type[:40]!r} is not a result type")
    return FailureDetail(
        result_type=result_type,
        count=detail.count("failed-session-count"),
        sending_ip=detail.address("sending-mta-ip"),
        receiving_mx=detail.string("receiving-mx-hostname", required=False).lower(),
        receiving_helo=detail.string("receiving-mx-helo", required=False, cut=True),
        receiving_ip=detail.address("receiving-ip"),
        additional_information=detail.string("additional-information", False, cut=True),
        reason_code=detail.string("failure-reason-code", required=False, cut=True),
    )


def summary_counts(report: Report) -> Mapping[str, int]:
    """Failed sessions by result type, over the report's failure details."""
    counts: dict[str, int] = {}
    for result in report.policies:
        for detail in result.details:
            counts[detail.result_type] = counts.get(detail.result_type, 0) + detail.count
    return counts


def policy_lines(lines: Sequence[str]) -> tuple[str, ...]:
    """An MTA-STS policy file's lines as rfc8460:4.4 policy-string wants
    them: each ``key: value`` line, without line ends or blank lines."""
    out = (line.rstrip("\r").strip() for line in lines)
    return tuple(line for line in out if line)[:MAX_STRINGS]
