"""DMARC aggregate reports (rfc7489:7.2), parsed and validated. Sans-IO.

Bytes in, a frozen :class:`Report` out, or a :class:`ReportError` naming
what is wrong (``reason``: a short word for the metrics; the message: the
element, e.g. ``feedback/record[3]/row/source_ip: '300.1.2.3' is not an IP
address``). No file, socket or clock is touched.

- ``parse_message(message)``: a message as it arrives at the ``rua``
  address: its report attachment (``unpack``), decompressed, parsed;
- ``parse_report(data)``: a report file: zip, gzip or XML;
- ``parse_any(data)``: either, by the first bytes (``estafeta dmarc import``);
- ``FeedbackParser``: the incremental parser under them: ``feed(chunk)``
  as often as needed, then ``close()``.

XML safety (no defusedxml in our dependencies; the same rules as the
autodiscover parser in web/clientconfig.py): expat, with every DTD feature
refused. A DOCTYPE, which is where entities would be declared (billion
laughs, XXE), ends the parse; parameter entities are never parsed; without
a DTD expat knows only the five predefined entities and character
references, and any other entity reference is a well-formedness error.
Bounds: ``MAX_DEPTH`` nesting, ``MAX_CHILDREN`` children of one element,
``MAX_TEXT`` characters of one element's text, ``MAX_NODES`` elements and
``MAX_HELD`` characters held for one top-level element (a record),
``MAX_RECORDS`` records; the document itself is at most ``unpack.MAX_XML``
octets. The parse streams:
each ``<record>`` is validated and turned into a small frozen object as soon
as it closes, so memory follows the records kept, not the XML.

Validation (rfc7489:C, the XML schema): the root is ``feedback`` (in any
namespace or none: rfc7489 names http://dmarc.org/dmarc-xml/0.1, most
reporters use none, DMARCbis urn:ietf:params:xml:ns:dmarc-2.0); each known
element at most once where the schema says so; integers are integers and
counts and times non-negative (and ``begin <= end``); ``source_ip`` an IPv4
or IPv6 address; enumerations from the schema (case-insensitive, stored in
lower case). Elements the schema does not know are skipped (reports made to
the DMARCbis schema add some). Required by the schema but optional here,
because widely deployed reporters leave them out: ``version``, ``sp``,
``pct``, ``fo``, ``envelope_from``, and the SPF entry of ``auth_results``;
an SPF result "unknown" is read as "temperror" and "error" as "permerror",
as the schema's own comment says they are commonly written.

Text is kept printable: runs of white space become one space and control
characters U+FFFD, so that no report can put escape sequences on the
terminal of the operator who reads ``estafeta dmarc report``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from xml.parsers import expat

from estafeta.reports import unpack
from estafeta.reports.unpack import (
    DTD,
    SCHEMA,
    TOO_LARGE,
    TOO_MANY_RECORDS,
    XML,
    ReportError,
)

__all__ = [
    "AuthResults",
    "DateRange",
    "DkimAuth",
    "FeedbackParser",
    "PolicyEvaluated",
    "PolicyOverride",
    "PolicyPublished",
    "Record",
    "Report",
    "ReportError",
    "SpfAuth",
    "parse_any",
    "parse_message",
    "parse_report",
]

# Records in one report. The smallest valid record is about 220 octets, so
# MAX_XML (20 MiB) would allow some 95,000; no receiver reports that many
# distinct sources for one domain in a day to a self-hosted server.
MAX_RECORDS = 50_000
MAX_DEPTH = 16  # the schema nests 5 deep (feedback/record/auth_results/dkim/domain)
MAX_CHILDREN = 1_000
MAX_TEXT = 64 * 1024
# Held at once for one top-level element (a record is about 25 elements and
# 1 KiB of text): a hostile record cannot grow past these.
MAX_NODES = 4_096
MAX_HELD = 256 * 1024
MAX_STRING = 1_024  # identifiers longer than this are refused, free text cut
MAX_COUNT = 10**9  # messages in one row
MAX_TIME = 10**11  # seconds since 1970 (year 5138)

# rfc7489:C — the enumerations of the schema.
DISPOSITIONS = ("none", "quarantine", "reject")  # DispositionType
ALIGNMENTS = ("r", "s")  # AlignmentType
DMARC_RESULTS = ("pass", "fail")  # DMARCResultType
OVERRIDES = (  # PolicyOverrideType (+ DMARCbis's policy_test_mode)
    "forwarded",
    "sampled_out",
    "trusted_forwarder",
    "mailing_list",
    "local_policy",
    "other",
    "policy_test_mode",
)
DKIM_RESULTS = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
SPF_RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
SPF_SCOPES = ("helo", "mfrom")  # SPFDomainScope
# rfc7489:C SPFResultType: '"TempError" commonly implemented as "unknown"',
# '"PermError" commonly implemented as "error"'.
_SPF_ALIASES = {"unknown": "temperror", "error": "permerror"}

_INTEGER = re.compile(r"^[+-]?[0-9]{1,20}$")  # xs:integer, within reason
_DECIMAL = re.compile(r"^[+-]?[0-9]{1,10}(\.[0-9]{1,10})?$")  # xs:decimal


@dataclass(frozen=True, slots=True)
class DateRange:
    """rfc7489:C DateRangeType — seconds since the epoch, UTC."""

    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class PolicyPublished:
    """rfc7489:C PolicyPublishedType — the DMARC record the reporter found."""

    domain: str
    p: str
    adkim: str | None = None
    aspf: str | None = None
    sp: str | None = None
    pct: int | None = None
    fo: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyOverride:
    """rfc7489:C PolicyOverrideReason."""

    type: str
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class PolicyEvaluated:
    """rfc7489:C PolicyEvaluatedType — DMARC's verdict: the disposition
    applied and whether DKIM and SPF passed *aligned* (rfc7489:3.1)."""

    disposition: str
    dkim: str
    spf: str
    reasons: tuple[PolicyOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class DkimAuth:
    """rfc7489:C DKIMAuthResultType — one signature, not interpreted for DMARC."""

    domain: str
    result: str
    selector: str | None = None
    human_result: str | None = None


@dataclass(frozen=True, slots=True)
class SpfAuth:
    """rfc7489:C SPFAuthResultType."""

    domain: str
    result: str
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class AuthResults:
    """rfc7489:C AuthResultType — the raw DKIM and SPF results."""

    dkim: tuple[DkimAuth, ...] = ()
    spf: tuple[SpfAuth, ...] = ()


@dataclass(frozen=True, slots=True)
class Record:
    """rfc7489:C RecordType — ``count`` messages from ``source_ip`` with the
    same identifiers and results."""

    source_ip: str
    count: int
    policy_evaluated: PolicyEvaluated
    header_from: str
    envelope_from: str | None = None
    envelope_to: str | None = None
    auth_results: AuthResults = field(default_factory=AuthResults)

    @property
    def dmarc(self) -> str:
        """rfc7489:6.6.2 — DMARC passes when SPF or DKIM passes aligned."""
        evaluated = self.policy_evaluated
        return "pass" if "pass" in (evaluated.spf, evaluated.dkim) else "fail"


@dataclass(frozen=True, slots=True)
class Report:
    """rfc7489:C ``feedback`` — one aggregate report."""

    org_name: str
    email: str
    report_id: str
    date_range: DateRange
    policy_published: PolicyPublished
    records: tuple[Record, ...]
    extra_contact_info: str | None = None
    errors: tuple[str, ...] = ()
    version: str | None = None

    @property
    def messages(self) -> int:
        return sum(record.count for record in self.records)

    def counts(self) -> dict[str, int]:
        """Messages by aligned result: ``spf_pass``, ``spf_fail``,
        ``dkim_pass``, ``dkim_fail``, ``dmarc_pass``, ``dmarc_fail``."""
        counts = dict.fromkeys(
            ("spf_pass", "spf_fail", "dkim_pass", "dkim_fail", "dmarc_pass", "dmarc_fail"), 0
        )
        for record in self.records:
            evaluated = record.policy_evaluated
            counts[f"spf_{evaluated.spf}"] += record.count
            counts[f"dkim_{evaluated.dkim}"] += record.count
            counts[f"dmarc_{record.dmarc}"] += record.count
        return counts


# -- entry points -------------------------------------------------------------------


def parse_xml(chunks: Iterable[bytes]) -> Report:
    """A report from its XML, given in chunks."""
    parser = FeedbackParser()
    for chunk in chunks:
        parser.feed(chunk)
    return parser.close()


def parse_report(data: bytes) -> Report:
    """A report file: zip, gzip or XML, by its first bytes."""
    return parse_xml(unpack.xml_chunks(data))


def parse_message(message: bytes) -> Report:
    """The report a message carries (rfc7489:7.2.1.1)."""
    return parse_report(unpack.report_attachment(message).data)


def parse_any(data: bytes) -> Report:
    """A report file or a whole message (an .eml saved from a mail client)."""
    if unpack.sniff(data) == "message":
        return parse_message(data)
    return parse_report(data)


# -- the streaming parser ----------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    name: str
    text: list[str] = field(default_factory=list)
    size: int = 0
    children: list[_Node] = field(default_factory=list)


class FeedbackParser:
    """Incremental: ``feed(data)`` any number of times, then ``close()``."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.max_records = max_records
        self._parser = expat.ParserCreate(namespace_separator=" ")
        self._parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        self._parser.StartDoctypeDeclHandler = self._refuse_dtd
        self._parser.EntityDeclHandler = self._refuse_dtd
        self._parser.ExternalEntityRefHandler = self._refuse_external
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._parser.CharacterDataHandler = self._characters
        self._stack: list[_Node] = []
        self._records: list[Record] = []
        self._metadata: tuple[str, str, str, DateRange, str | None, tuple[str, ...]] | None = None
        self._policy: PolicyPublished | None = None
        self._version: str | None = None
        self._seen: set[str] = set()
        self._done = False
        self._nodes = 0  # held for the current top-level element
        self._held = 0  # characters held for it

    def feed(self, data: bytes) -> None:
        self._parse(data, final=False)

    def close(self) -> Report:
        self._parse(b"", final=True)
        if not self._done:
            raise ReportError(XML, "no document element")
        if self._metadata is None:
            raise ReportError(SCHEMA, "feedback: missing <report_metadata> (rfc7489:C)")
        if self._policy is None:
            raise ReportError(SCHEMA, "feedback: missing <policy_published> (rfc7489:C)")
        if not self._records:
            raise ReportError(SCHEMA, "feedback: no <record> (rfc7489:C: at least one)")
        org_name, email, report_id, date_range, extra, errors = self._metadata
        return Report(
            org_name=org_name,
            email=email,
            report_id=report_id,
            date_range=date_range,
            policy_published=self._policy,
            records=tuple(self._records),
            extra_contact_info=extra,
            errors=errors,
            version=self._version,
        )

    def _parse(self, data: bytes, final: bool) -> None:
        try:
            self._parser.Parse(data, final)
        except expat.ExpatError as exc:
            raise ReportError(
                XML,
                f"not well-formed XML at line {exc.lineno}, column {exc.offset}:"
                f" {expat.ErrorString(exc.code)}",
            ) from None
        except (LookupError, ValueError) as exc:  # an encoding no codec reads
            raise ReportError(XML, f"unreadable XML: {exc}") from None

    # -- expat handlers: a ReportError raised here ends Parse() ---------------------

    def _refuse_dtd(self, *_: object) -> None:
        raise ReportError(DTD, "a DOCTYPE or entity declaration: not accepted in a report")

    def _refuse_external(self, *_: object) -> int:
        raise ReportError(DTD, "an external entity: not accepted in a report")

    def _start(self, name: str, _attributes: object) -> None:
        local = name.rpartition(" ")[2]
        depth = len(self._stack)
        if depth == 0:
            if local != "feedback":
                raise ReportError(
                    SCHEMA, f"the document element is <{local}>, not <feedback> (rfc7489:C)"
                )
        elif depth >= MAX_DEPTH:
            raise ReportError(SCHEMA, f"elements nested more than {MAX_DEPTH} deep")
        elif depth == 1 and local == "record" and len(self._records) >= self.max_records:
            raise ReportError(TOO_MANY_RECORDS, f"more than {self.max_records} records")
        elif depth > 1:
            if len(self._stack[-1].children) >= MAX_CHILDREN:
                raise ReportError(
                    SCHEMA, f"<{self._stack[-1].name}> has more than {MAX_CHILDREN} children"
                )
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise ReportError(
                    TOO_LARGE, f"<{self._stack[1].name}> has more than {MAX_NODES} elements"
                )
        self._stack.append(_Node(local))

    def _characters(self, data: str) -> None:
        if len(self._stack) < 2:
            return  # between the top-level elements: white space, never kept
        node = self._stack[-1]
        node.size += len(data)
        self._held += len(data)
        if node.size > MAX_TEXT:
            raise ReportError(TOO_LARGE, f"<{node.name}> has more than {MAX_TEXT} characters")
        if self._held > MAX_HELD:
            raise ReportError(
                TOO_LARGE, f"<{self._stack[1].name}> has more than {MAX_HELD} characters"
            )
        node.text.append(data)

    def _end(self, _name: str) -> None:
        node = self._stack.pop()
        depth = len(self._stack)
        if depth == 0:
            self._done = True
        elif depth == 1:
            self._top_level(node)  # converted, then dropped
            self._nodes = self._held = 0
        else:
            self._stack[-1].children.append(node)

    # -- rfc7489:C, one top-level element at a time ----------------------------------

    def _top_level(self, node: _Node) -> None:
        name = node.name
        if name in ("version", "report_metadata", "policy_published"):
            if name in self._seen:
                raise ReportError(SCHEMA, f"feedback: <{name}> appears more than once")
            self._seen.add(name)
        path = f"feedback/{name}"
        if name == "version":
            value = _text(node)
            if not _DECIMAL.match(value):
                raise ReportError(SCHEMA, f"{path}: {value!r} is not a decimal number")
            self._version = value
        elif name == "report_metadata":
            self._metadata = _metadata(_Element(node, path))
        elif name == "policy_published":
            self._policy = _policy_published(_Element(node, path))
        elif name == "record":
            path = f"feedback/record[{len(self._records) + 1}]"
            self._records.append(_record(_Element(node, path)))
        # Anything else (DMARCbis extensions, vendors' additions): skipped.


def _text(node: _Node) -> str:
    """The element's text, printable: white space runs as one space,
    control characters (C0 and C1) as U+FFFD."""
    text = " ".join("".join(node.text).split())
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


class _Element:
    """A finished element, its children looked up by name, with the
    schema's types; every error names the element's path."""

    def __init__(self, node: _Node, path: str) -> None:
        self.path = path
        self.children: dict[str, list[_Node]] = {}
        for child in node.children:
            self.children.setdefault(child.name, []).append(child)

    def error(self, name: str, message: str, reason: str = SCHEMA) -> ReportError:
        return ReportError(reason, f"{self.path}/{name}: {message}")

    def node(self, name: str, required: bool = True) -> _Node | None:
        nodes = self.children.get(name, [])
        if len(nodes) > 1:
            raise self.error(name, f"appears {len(nodes)} times (rfc7489:C: once)")
        if not nodes:
            if required:
                raise ReportError(SCHEMA, f"{self.path}: missing <{name}> (rfc7489:C)")
            return None
        return nodes[0]

    def element(self, name: str) -> _Element:
        node = self.node(name)
        assert node is not None
        return _Element(node, f"{self.path}/{name}")

    def elements(self, name: str) -> list[_Element]:
        return [
            _Element(node, f"{self.path}/{name}[{i}]")
            for i, node in enumerate(self.children.get(name, []), 1)
        ]

    def string(self, name: str, required: bool = True, cut: bool = False) -> str | None:
        node = self.node(name, required)
        if node is None:
            return None
        value = _text(node)
        if not value:
            if required:
                raise self.error(name, "is empty")
            return None
        if len(value) > MAX_STRING:
            if not cut:
                raise self.error(name, f"longer than {MAX_STRING} characters")
            value = value[:MAX_STRING]
        return value

    def required(self, name: str) -> str:
        value = self.string(name)
        assert value is not None
        return value

    def domain(self, name: str, required: bool = True) -> str | None:
        value = self.string(name, required)
        if value is None:
            return None
        value = value.lower().rstrip(".")
        if not value or len(value) > 255 or " " in value:
            raise self.error(name, f"{value!r} is not a domain name")
        return value

    def integer(self, name: str, maximum: int, required: bool = True) -> int | None:
        value = self.string(name, required)
        if value is None:
            return None
        if not _INTEGER.match(value):
            raise self.error(name, f"{value!r} is not an integer (xs:integer)")
        number = int(value)
        if not 0 <= number <= maximum:
            raise self.error(name, f"{number} is out of range (0 to {maximum})")
        return number

    def choice(
        self,
        name: str,
        choices: tuple[str, ...],
        required: bool = True,
        type_name: str = "",
        aliases: Mapping[str, str] | None = None,
    ) -> str | None:
        value = self.string(name, required)
        if value is None:
            return None
        value = value.lower()
        if aliases:
            value = aliases.get(value, value)
        if value not in choices:
            raise self.error(
                name, f"{value!r} is not one of {', '.join(choices)} (rfc7489:C {type_name})"
            )
        return value

    def choose(
        self,
        name: str,
        choices: tuple[str, ...],
        type_name: str,
        aliases: Mapping[str, str] | None = None,
    ) -> str:
        value = self.choice(name, choices, type_name=type_name, aliases=aliases)
        assert value is not None
        return value


def _metadata(
    element: _Element,
) -> tuple[str, str, str, DateRange, str | None, tuple[str, ...]]:
    """rfc7489:C ReportMetadataType."""
    org_name = element.required("org_name")
    email = element.required("email")
    report_id = element.required("report_id")
    extra = element.string("extra_contact_info", required=False, cut=True)
    dates = element.element("date_range")  # rfc7489:C DateRangeType
    begin = dates.integer("begin", MAX_TIME)
    end = dates.integer("end", MAX_TIME)
    assert begin is not None and end is not None
    if begin > end:
        raise ReportError(SCHEMA, f"{dates.path}: begin {begin} is after end {end}")
    errors = tuple(
        _text(node)[:MAX_STRING] for node in element.children.get("error", []) if _text(node)
    )
    return org_name, email, report_id, DateRange(begin, end), extra, errors


def _policy_published(element: _Element) -> PolicyPublished:
    """rfc7489:C PolicyPublishedType."""
    domain = element.domain("domain")
    assert domain is not None
    return PolicyPublished(
        domain=domain,
        p=element.choose("p", DISPOSITIONS, "DispositionType"),
        adkim=element.choice("adkim", ALIGNMENTS, False, "AlignmentType"),
        aspf=element.choice("aspf", ALIGNMENTS, False, "AlignmentType"),
        sp=element.choice("sp", DISPOSITIONS, False, "DispositionType"),
        pct=element.integer("pct", 100, required=False),
        fo=element.string("fo", required=False, cut=True),
    )


def _record(element: _Element) -> Record:
    """rfc7489:C RecordType: row, identifiers, auth_results."""
    row = element.element("row")  # rfc7489:C RowType
    text = row.required("source_ip")
    try:
        if "%" in text:  # no IPv6 zone: the schema's IPAddress has none
            raise ValueError(text)
        source_ip = str(ipaddress.ip_address(text))
    except ValueError:
        raise row.error("source_ip", f"{text!r} is not an IP address") from None
    count = row.integer("count", MAX_COUNT)
    assert count is not None
    evaluated = row.element("policy_evaluated")  # rfc7489:C PolicyEvaluatedType
    reasons = tuple(
        PolicyOverride(
            type=reason.choose("type", OVERRIDES, "PolicyOverrideType"),
            comment=reason.string("comment", required=False, cut=True),
        )
        for reason in evaluated.elements("reason")
    )
    policy = PolicyEvaluated(
        disposition=evaluated.choose("disposition", DISPOSITIONS, "DispositionType"),
        dkim=evaluated.choose("dkim", DMARC_RESULTS, "DMARCResultType"),
        spf=evaluated.choose("spf", DMARC_RESULTS, "DMARCResultType"),
        reasons=reasons,
    )
    identifiers = element.element("identifiers")  # rfc7489:C IdentifierType
    header_from = identifiers.domain("header_from")
    assert header_from is not None
    auth = element.element("auth_results")  # rfc7489:C AuthResultType
    dkim = tuple(
        DkimAuth(
            domain=entry.domain("domain") or "",
            result=entry.choose("result", DKIM_RESULTS, "DKIMResultType"),
            selector=entry.string("selector", required=False),
            human_result=entry.string("human_result", required=False, cut=True),
        )
        for entry in auth.elements("dkim")
    )
    spf = tuple(
        SpfAuth(
            domain=entry.domain("domain") or "",
            result=entry.choose("result", SPF_RESULTS, "SPFResultType", _SPF_ALIASES),
            scope=entry.choice("scope", SPF_SCOPES, False, "SPFDomainScope"),
        )
        for entry in auth.elements("spf")
    )
    return Record(
        source_ip=source_ip,
        count=count,
        policy_evaluated=policy,
        header_from=header_from,
        envelope_from=identifiers.domain("envelope_from", required=False),
        envelope_to=identifiers.domain("envelope_to", required=False),
        auth_results=AuthResults(dkim=dkim, spf=spf),
    )
