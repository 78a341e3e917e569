"""Prometheus metrics of one estafeta process (prometheus-client).

Most counters follow the structured log: every ``log_event`` call passes its
event name and fields to :func:`record_event` (whatever the log level), so the
``/metrics`` figures and the log lines of SMTP transactions, deliveries and
logins cannot disagree. The rest is observed where it happens (store batches,
login outcomes) or read at scrape time (open connections, queue depth and
age) through collectors the server registers.

Names follow https://prometheus.io/docs/practices/naming/: ``estafeta_``
prefix, ``_total`` for counters, base units (seconds, bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_RECEIVED = Counter(
    "estafeta_messages_received_total",
    "Messages accepted (250 after DATA), by listener kind.",
    ["kind"],  # inbound (MX) | submission
    registry=REGISTRY,
)
MESSAGES_REJECTED = Counter(
    "estafeta_messages_rejected_total",
    "Messages or recipients refused, by reason.",
    ["kind", "reason"],
    registry=REGISTRY,
)
MESSAGES_DELIVERED = Counter(
    "estafeta_messages_delivered_total",
    "Outbound delivery attempts per recipient, by result (delivered, deferred, failed).",
    ["result"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "estafeta_delivery_duration_seconds",
    "Time of one outbound delivery attempt to a remote MX.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
AUTH_ATTEMPTS = Counter(
    "estafeta_auth_attempts_total",
    "Logins (IMAP, POP3, SMTP AUTH) by protocol and result (ok, failed, locked).",
    ["protocol", "result"],
    registry=REGISTRY,
)
AUTH_LOCKOUTS = Counter(
    "estafeta_auth_lockouts_total",
    "Temporary lockouts after repeated failed logins, by scope (ip, account).",
    ["scope"],
    registry=REGISTRY,
)
SEND_LIMITS = Counter(
    "estafeta_send_limit_hits_total",
    "Submission refused by a per-account sending limit, by limit.",
    ["limit"],
    registry=REGISTRY,
)
SMTP_TARPITS = Counter(
    "estafeta_smtp_tarpits_total",
    "SMTP clients (address or IPv6 /64) whose error replies began to be delayed "
    "([limits] smtp_soft_error_limit), once per episode.",
    registry=REGISTRY,
)
SMTP_ERROR_LIMITS = Counter(
    "estafeta_smtp_error_limit_closes_total",
    "SMTP sessions closed with 421 at [limits] smtp_hard_error_limit.",
    registry=REGISTRY,
)
SMTP_DATA_REFUSED = Counter(
    "estafeta_smtp_data_refused_total",
    "SMTP transfers answered 452 4.3.1 after the final dot, by reason (data memory).",
    ["reason"],
    registry=REGISTRY,
)
SMTP_CONNECTIONS_REJECTED = Counter(
    "estafeta_smtp_connections_rejected_total",
    "MX connections refused by the connection screen, by reason (dnsbl, pregreet, fcrdns, helo).",
    ["reason"],
    registry=REGISTRY,
)
DMARC_REPORTS = Counter(
    "estafeta_dmarc_reports_total",
    "DMARC aggregate reports received at [reports] dmarc_address, by result "
    "(accepted, duplicate, expired: older than the retention, rejected: kept as mail).",
    ["result"],
    registry=REGISTRY,
)
DMARC_REPORTS_REJECTED = Counter(
    "estafeta_dmarc_reports_rejected_total",
    "DMARC aggregate reports not stored (the message is delivered as mail), by reason "
    "(no_report, several_reports, too_large, archive, xml, dtd, schema, too_many_records, "
    "store, internal).",
    ["reason"],
    registry=REGISTRY,
)
DMARC_REPORT_MESSAGES = Counter(
    "estafeta_dmarc_report_messages_total",
    "Messages counted in accepted DMARC aggregate reports, by check (spf and dkim: "
    "aligned; dmarc: either aligned) and result (pass, fail).",
    ["check", "result"],
    registry=REGISTRY,
)
STORE_BATCH_SECONDS = Histogram(
    "estafeta_store_commit_duration_seconds",
    "Time to make one group of deliveries durable (files fsync'd, index committed).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
STORE_BATCH_MESSAGES = Histogram(
    "estafeta_store_commit_messages",
    "Messages made durable together in one group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)


def _reason(fields: Mapping[str, Any]) -> str:
    # Reasons are short fixed words in our log lines; keep label values bounded.
    reason = str(fields.get("reason", "other"))
    return reason if len(reason) <= 32 and "\n" not in reason else "other"


def record_event(event: str, fields: Mapping[str, Any]) -> None:
    """Count one structured log event (called by estafeta.log.log_event)."""
    result = fields.get("result")
    if event == "delivery":
        if result == "delivered":
            MESSAGES_RECEIVED.labels("inbound").inc()
        elif result == "rejected":
            MESSAGES_REJECTED.labels("inbound", _reason(fields)).inc()
    elif event == "rcpt_rejected":
        MESSAGES_REJECTED.labels("inbound", _reason(fields)).inc()
    elif event == "submission":
        if result == "ok":
            MESSAGES_RECEIVED.labels("submission").inc()
    elif event == "submission_refused":
        MESSAGES_REJECTED.labels("submission", _reason(fields)).inc()
    elif event == "send_limit":
        SEND_LIMITS.labels(str(fields.get("limit", "other"))).inc()
    elif event == "outbound":
        MESSAGES_DELIVERED.labels(str(result or "other")).inc()
        ms = fields.get("ms")
        if isinstance(ms, int | float):
            DELIVERY_SECONDS.observe(ms / 1000)
    elif event == "smtp_tarpit":
        SMTP_TARPITS.inc()
    elif event == "smtp_error_limit":
        SMTP_ERROR_LIMITS.inc()
    elif event == "data_refused":
        SMTP_DATA_REFUSED.labels(_reason(fields)).inc()
    elif event == "connection_rejected":
        SMTP_CONNECTIONS_REJECTED.labels(_reason(fields)).inc()
    elif event == "auth_lockout":
        AUTH_LOCKOUTS.labels(str(fields.get("scope", "other"))).inc()
    elif event == "dmarc_report":
        _dmarc_report(fields)


_DMARC_RESULTS = ("accepted", "duplicate", "expired", "rejected")


def _dmarc_report(fields: Mapping[str, Any]) -> None:
    """A report that reached the intake (estafeta.delivery.reports): its
    result, the reason of a refusal, and for an accepted one its messages
    (``spf_pass``, ``spf_fail``, ``dkim_pass``, ... ``dmarc_fail``)."""
    result = str(fields.get("result", ""))
    if result not in _DMARC_RESULTS:
        return
    DMARC_REPORTS.labels(result).inc()
    if result == "rejected":
        DMARC_REPORTS_REJECTED.labels(_reason(fields)).inc()
    if result != "accepted":
        return
    for check in ("spf", "dkim", "dmarc"):
        for outcome in ("pass", "fail"):
            count = fields.get(f"{check}_{outcome}", 0)
            if isinstance(count, int) and count > 0:
                DMARC_REPORT_MESSAGES.labels(check, outcome).inc(count)


class GaugeCollector(Collector):
    """A gauge family read at scrape time: ``read()`` gives {label value: number}."""

    def __init__(
        self, name: str, documentation: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.read = read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, number in sorted(self.read().items()):
            family.add_metric([value], number)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=[self.label])


_GAUGES: dict[str, GaugeCollector] = {}


def register_gauge(
    name: str, documentation: str, label: str, read: Callable[[], Mapping[str, float]]
) -> GaugeCollector:
    """Register a scrape-time gauge; one registered earlier under NAME is replaced
    (a server object created again in the same process)."""
    old = _GAUGES.pop(name, None)
    if old is not None:
        REGISTRY.unregister(old)
    collector = GaugeCollector(name, documentation, label, read)
    REGISTRY.register(collector)
    _GAUGES[name] = collector
    return collector


def unregister_gauge(collector: GaugeCollector) -> None:
    """Take back a gauge registered by ``register_gauge`` (a server that stopped:
    its reads would touch closed databases); one registered later under the same
    name by another server object stays."""
    for name, current in list(_GAUGES.items()):
        if current is collector:
            del _GAUGES[name]
            REGISTRY.unregister(collector)


def exposition() -> bytes:
    """The text exposition format of every metric."""
    return generate_latest(REGISTRY)
