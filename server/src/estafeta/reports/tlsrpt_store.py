"""The TLS reports received (rfc8460), kept for ``estafeta tlsrpt report``.

On disk: ``data_dir/reports/tlsrpt.db`` (mode 0600 in a 0700 directory),
WAL mode (opened by estafeta.reports.database)::

    reports(id INTEGER PK, org_name, report_id, contact_info, start_time,
            end_time, received, successful, failed)
            UNIQUE (org_name, report_id), INDEX (end_time)
    policies(id INTEGER PK, report -> reports.id, domain, type, strings JSON,
             mx_hosts JSON, successful, failed)       INDEX (report)
    failures(policy -> policies.id, result_type, count, sending_ip,
             receiving_mx, receiving_helo, receiving_ip, additional_information,
             reason_code)                             INDEX (policy)

Deduplication: a report is known by (organization-name, report-id)
(rfc8460:4.4, and 5.3: the Report-ID lets a domain drop duplicates); the
same report again changes nothing and says "duplicate".

Retention: a report whose period ended more than ``retention`` seconds ago
(``[reports] retention``, as for DMARC) is deleted on every write, in the
same transaction; one arriving that late is not stored ("expired").

Crash ordering: a report with its policies and failures is one
transaction: whole or absent. The intake commits before the message is
acknowledged (estafeta.delivery.tlsrpt), so a crash before the commit makes
the sender retry, after it the retry is a duplicate. SQL stays in this
module: callers get :class:`Tally` rows and :class:`ReportStoreError`.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from estafeta.reports import database
from estafeta.reports.store import DEFAULT_RETENTION, Added, ReportStoreError
from estafeta.reports.tlsrpt import Report

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reports (
        id INTEGER PRIMARY KEY,
        org_name TEXT NOT NULL,
        report_id TEXT NOT NULL,
        contact_info TEXT NOT NULL,
        start_time INTEGER NOT NULL,
        end_time INTEGER NOT NULL,
        received INTEGER NOT NULL,
        successful INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        UNIQUE (org_name, report_id)
    )""",
    "CREATE INDEX IF NOT EXISTS reports_end ON reports (end_time)",
    """CREATE TABLE IF NOT EXISTS policies (
        id INTEGER PRIMARY KEY,
        report INTEGER NOT NULL REFERENCES reports (id),
        domain TEXT NOT NULL,
        type TEXT NOT NULL,
        strings TEXT NOT NULL,
        mx_hosts TEXT NOT NULL,
        successful INTEGER NOT NULL,
        failed INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS policies_report ON policies (report)",
    """CREATE TABLE IF NOT EXISTS failures (
        policy INTEGER NOT NULL REFERENCES policies (id),
        result_type TEXT NOT NULL,
        count INTEGER NOT NULL,
        sending_ip TEXT NOT NULL,
        receiving_mx TEXT NOT NULL,
        receiving_helo TEXT NOT NULL,
        receiving_ip TEXT NOT NULL,
        additional_information TEXT NOT NULL,
        reason_code TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS failures_policy ON failures (policy)",
)


@dataclass(frozen=True)
class Tally:
    """Sessions in the stored reports of one organisation about one policy
    (domain and type): successful, failed, and failed by result type."""

    org_name: str
    domain: str
    policy_type: str
    reports: int
    successful: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "org_name": self.org_name,
            "policy_domain": self.domain,
            "policy_type": self.policy_type,
            "reports": self.reports,
            "successful": self.successful,
            "failed": self.failed,
            "failures": dict(self.failures),
        }


class TLSReportStore:
    def __init__(self, path: Path, retention: float = DEFAULT_RETENTION) -> None:
        self.path = path
        self.retention = retention

    def add(self, report: Report, now: float) -> Added:
        """Store ``report`` (received at ``now``) and prune, in one transaction."""
        cutoff = int(now - self.retention)
        with self._connect(create=True) as conn, database.transaction(conn):
            self._prune(conn, cutoff)
            return self._insert(conn, report, int(now), cutoff)

    @staticmethod
    def _prune(conn: sqlite3.Connection, cutoff: int) -> None:
        conn.execute(
            "DELETE FROM failures WHERE policy IN (SELECT p.id FROM policies p"
            " JOIN reports r ON r.id = p.report WHERE r.end_time < ?)",
            (cutoff,),
        )
        conn.execute(
            "DELETE FROM policies WHERE report IN (SELECT id FROM reports WHERE end_time < ?)",
            (cutoff,),
        )
        conn.execute("DELETE FROM reports WHERE end_time < ?", (cutoff,))

    @staticmethod
    def _insert(conn: sqlite3.Connection, report: Report, now: int, cutoff: int) -> Added:
        if report.end < cutoff:
            return "expired"
        cursor = conn.execute(
            "INSERT OR IGNORE INTO reports (org_name, report_id, contact_info, start_time,"
            " end_time, received, successful, failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report.org_name,
                report.report_id,
                report.contact_info,
                report.start,
                report.end,
                now,
                report.successful,
                report.failed,
            ),
        )
        if cursor.rowcount == 0:
            return "duplicate"
        report_row = cursor.lastrowid
        for result in report.policies:
            policy_row = conn.execute(
                "INSERT INTO policies (report, domain, type, strings, mx_hosts, successful,"
                " failed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    report_row,
                    result.policy.domain,
                    result.policy.type,
                    json.dumps(list(result.policy.strings)),
                    json.dumps(list(result.policy.mx_hosts)),
                    result.successful,
                    result.failed,
                ),
            ).lastrowid
            conn.executemany(
                "INSERT INTO failures (policy, result_type, count, sending_ip, receiving_mx,"
                " receiving_helo, receiving_ip, additional_information, reason_code)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        policy_row,
                        d.result_type,
                        d.count,
                        d.sending_ip,
                        d.receiving_mx,
                        d.receiving_helo,
                        d.receiving_ip,
                        d.additional_information,
                        d.reason_code,
                    )
                    for d in result.details
                ),
            )
        return "accepted"

    def tally(self, since: float, domain: str | None = None) -> list[Tally]:
        """Sums over the reports whose period ended at ``since`` or later
        (about ``domain`` only, when given), one per (organisation, policy
        domain, policy type), the most sessions first."""
        if not self.path.exists():
            return []
        args = (int(since), domain, domain)
        with self._connect(create=False) as conn:
            rows = conn.execute(
                "SELECT r.org_name, p.domain, p.type, COUNT(DISTINCT r.id), SUM(p.successful),"
                " SUM(p.failed) FROM reports r JOIN policies p ON p.report = r.id"
                " WHERE r.end_time >= ? AND (? IS NULL OR p.domain = ?)"
                " GROUP BY r.org_name, p.domain, p.type"
                " ORDER BY SUM(p.successful) + SUM(p.failed) DESC, r.org_name, p.domain, p.type",
                args,
            ).fetchall()
            failures = conn.execute(
                "SELECT r.org_name, p.domain, p.type, f.result_type, SUM(f.count)"
                " FROM reports r JOIN policies p ON p.report = r.id"
                " JOIN failures f ON f.policy = p.id"
                " WHERE r.end_time >= ? AND (? IS NULL OR p.domain = ?)"
                " GROUP BY r.org_name, p.domain, p.type, f.result_type"
                " ORDER BY SUM(f.count) DESC, f.result_type",
                args,
            ).fetchall()
        by_key: dict[tuple[str, str, str], dict[str, int]] = {}
        for org, policy_domain, kind, result_type, count in failures:
            by_key.setdefault((org, policy_domain, kind), {})[str(result_type)] = int(count)
        return [
            Tally(
                org_name=str(org),
                domain=str(policy_domain),
                policy_type=str(kind),
                reports=int(reports),
                successful=int(successful),
                failed=int(failed),
                failures=by_key.get((org, policy_domain, kind), {}),
            )
            for org, policy_domain, kind, reports, successful, failed in rows
        ]

    def count(self, since: float, domain: str | None = None) -> int:
        """How many stored reports ``tally`` sums (a report of several
        policies counts once)."""
        if not self.path.exists():
            return 0
        with self._connect(create=False) as conn:
            (count,) = conn.execute(
                "SELECT COUNT(DISTINCT r.id) FROM reports r JOIN policies p ON p.report = r.id"
                " WHERE r.end_time >= ? AND (? IS NULL OR p.domain = ?)",
                (int(since), domain, domain),
            ).fetchone()
        return int(count)

    def _connect(self, create: bool) -> AbstractContextManager[sqlite3.Connection]:
        return database.connect(self.path, _SCHEMA, SCHEMA_VERSION, ReportStoreError, create)
