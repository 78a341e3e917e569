"""The DMARC aggregate reports received, kept for ``estafeta dmarc report``.

On disk: one SQLite file, ``data_dir/reports/dmarc.db`` (mode 0600 in a
0700 directory), WAL mode::

    reports(id INTEGER PK, org_name, report_id, email, extra_contact_info,
            domain, begin_time, end_time, received, messages, version,
            policy JSON, errors JSON)
            UNIQUE (org_name, report_id), INDEX (end_time), INDEX (domain, end_time)
    records(report -> reports.id, source_ip, count, disposition, dkim, spf,
            header_from, envelope_from, envelope_to, reasons JSON,
            auth_results JSON)
            INDEX (report)

``domain`` is the report's ``policy_published`` domain; ``dkim`` and
``spf`` of a record are the *aligned* results DMARC evaluated
(rfc7489:C PolicyEvaluatedType); ``auth_results`` keeps the raw ones.
``PRAGMA user_version`` is the schema version.

Deduplication: a report is known by (org_name, report_id) (rfc7489:C: the
reporter's own identifier of the report); the same report again (a
reporter's retry, the same file imported twice) changes nothing and says
"duplicate".

Retention: a report whose period ended more than ``retention`` seconds ago
(400 days by default: a year's comparison and a little) is deleted, on
every write, in the same transaction; such a report arriving late is not
stored at all ("expired").

Crash ordering: a report and its records are one transaction (BEGIN
IMMEDIATE ... COMMIT, synchronous=FULL): a crash leaves the report whole or
absent, never half-written. The intake commits before the message is
acknowledged, so a crash before the commit means the sender retries; after
it, the retry is a duplicate.

The server (the intake, in a worker thread) and the CLI (``dmarc import``)
may write at the same time: SQLite's locking with a busy timeout serialises
them. Every method opens its own connection (reports come a few a day), so
the object is safe to use from any thread. SQL stays in this module: callers
get typed rows (:class:`Tally`), and every database or file error comes out
as :class:`ReportStoreError` naming the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from estafeta.reports.dmarc import Report

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
DAY = 86_400
DEFAULT_RETENTION = 400 * DAY

Added = Literal["accepted", "duplicate", "expired"]
Grouping = Literal["org", "source"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reports (
        id INTEGER PRIMARY KEY,
        org_name TEXT NOT NULL,
        report_id TEXT NOT NULL,
        email TEXT NOT NULL,
        extra_contact_info TEXT,
        domain TEXT NOT NULL,
        begin_time INTEGER NOT NULL,
        end_time INTEGER NOT NULL,
        received INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        version TEXT,
        policy TEXT NOT NULL,
        errors TEXT NOT NULL,
        UNIQUE (org_name, report_id)
    )""",
    "CREATE INDEX IF NOT EXISTS reports_end ON reports (end_time)",
    "CREATE INDEX IF NOT EXISTS reports_domain ON reports (domain, end_time)",
    """CREATE TABLE IF NOT EXISTS records (
        report INTEGER NOT NULL REFERENCES reports (id),
        source_ip TEXT NOT NULL,
        count INTEGER NOT NULL,
        disposition TEXT NOT NULL,
        dkim TEXT NOT NULL,
        spf TEXT NOT NULL,
        header_from TEXT NOT NULL,
        envelope_from TEXT,
        envelope_to TEXT,
        reasons TEXT NOT NULL,
        auth_results TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS records_report ON records (report)",
)

# The two groupings of ``tally``: a fixed column each (never user input in SQL).
_KEYS: dict[str, str] = {"org": "r.org_name", "source": "c.source_ip"}


class ReportStoreError(Exception):
    """The report database cannot be opened, read or written; names the file."""


@dataclass(frozen=True)
class Tally:
    """Messages of the stored reports under one key (a reporting
    organisation or a source IP): how many passed SPF and DKIM aligned,
    DMARC (either aligned, rfc7489:6.6.2), and the dispositions applied."""

    key: str
    reports: int
    messages: int
    spf_pass: int
    spf_fail: int
    dkim_pass: int
    dkim_fail: int
    dmarc_pass: int
    dmarc_fail: int
    none: int
    quarantine: int
    reject: int
    organisations: tuple[str, ...] = ()  # by source: who reported it

    def to_json(self, key_name: str) -> dict[str, Any]:
        result: dict[str, Any] = {
            key_name: self.key,
            "reports": self.reports,
            "messages": self.messages,
            "spf_aligned": {"pass": self.spf_pass, "fail": self.spf_fail},
            "dkim_aligned": {"pass": self.dkim_pass, "fail": self.dkim_fail},
            "dmarc": {"pass": self.dmarc_pass, "fail": self.dmarc_fail},
            "disposition": {
                "none": self.none,
                "quarantine": self.quarantine,
                "reject": self.reject,
            },
        }
        if key_name == "source_ip":
            result["organisations"] = list(self.organisations)
        return result


class ReportStore:
    def __init__(self, path: Path, retention: float = DEFAULT_RETENTION) -> None:
        self.path = path
        self.retention = retention

    # -- writing ---------------------------------------------------------------------

    def add(self, report: Report, now: float) -> Added:
        """Store ``report`` (received at ``now``) with its records, and prune
        what is past the retention, in one transaction."""
        cutoff = int(now - self.retention)
        with transaction(self.path, _SCHEMA, SCHEMA_VERSION, create=True) as conn:
            self._prune(conn, cutoff)
            return self._insert(conn, report, int(now), cutoff)

    def prune(self, now: float) -> int:
        """Delete the reports past the retention; how many went."""
        if not self.path.exists():
            return 0
        with transaction(self.path, _SCHEMA, SCHEMA_VERSION, create=False) as conn:
            return self._prune(conn, int(now - self.retention))

    @staticmethod
    def _prune(conn: sqlite3.Connection, cutoff: int) -> int:
        conn.execute(
            "DELETE FROM records WHERE report IN (SELECT id FROM reports WHERE end_time < ?)",
            (cutoff,),
        )
        return conn.execute("DELETE FROM reports WHERE end_time < ?", (cutoff,)).rowcount

    @staticmethod
    def _insert(conn: sqlite3.Connection, report: Report, now: int, cutoff: int) -> Added:
        if report.date_range.end < cutoff:
            return "expired"
        policy = asdict(report.policy_published)
        cursor = conn.execute(
            "INSERT OR IGNORE INTO reports (org_name, report_id, email, extra_contact_info,"
            " domain, begin_time, end_time, received, messages, version, policy, errors)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report.org_name,
                report.report_id,
                report.email,
                report.extra_contact_info,
                report.policy_published.domain,
                report.date_range.begin,
                report.date_range.end,
                now,
                report.messages,
                report.version,
                json.dumps(policy),
                json.dumps(list(report.errors)),
            ),
        )
        if cursor.rowcount == 0:
            return "duplicate"
        report_row = cursor.lastrowid
        conn.executemany(
            "INSERT INTO records (report, source_ip, count, disposition, dkim, spf,"
            " header_from, envelope_from, envelope_to, reasons, auth_results)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    report_row,
                    record.source_ip,
                    record.count,
                    record.policy_evaluated.disposition,
                    record.policy_evaluated.dkim,
                    record.policy_evaluated.spf,
                    record.header_from,
                    record.envelope_from,
                    record.envelope_to,
                    json.dumps([asdict(r) for r in record.policy_evaluated.reasons]),
                    json.dumps(asdict(record.auth_results)),
                )
                for record in report.records
            ),
        )
        return "accepted"

    # -- reading -----------------------------------------------------------------------

    def tally(self, since: float, by: Grouping, domain: str | None = None) -> list[Tally]:
        """Sums over the reports whose period ended at ``since`` or later
        (of ``domain`` only, when given), one per organisation or source IP,
        the most messages first."""
        if not self.path.exists():
            return []
        key = _KEYS[by]
        query = (
            f"SELECT {key}, COUNT(DISTINCT r.id), SUM(c.count),"  # noqa: S608 (a fixed column)
            " SUM(CASE WHEN c.spf = 'pass' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.spf = 'fail' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.dkim = 'pass' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.dkim = 'fail' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.spf = 'pass' OR c.dkim = 'pass' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.spf = 'pass' OR c.dkim = 'pass' THEN 0 ELSE c.count END),"
            " SUM(CASE WHEN c.disposition = 'none' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.disposition = 'quarantine' THEN c.count ELSE 0 END),"
            " SUM(CASE WHEN c.disposition = 'reject' THEN c.count ELSE 0 END),"
            " json_group_array(DISTINCT r.org_name)"
            " FROM reports r JOIN records c ON c.report = r.id"
            " WHERE r.end_time >= ? AND (? IS NULL OR r.domain = ?)"
            f" GROUP BY {key} ORDER BY SUM(c.count) DESC, {key}"
        )
        with self._connect(create=False) as conn:
            rows = conn.execute(query, (int(since), domain, domain)).fetchall()
        return [
            Tally(
                key=str(row[0]),
                reports=int(row[1]),
                messages=int(row[2]),
                spf_pass=int(row[3]),
                spf_fail=int(row[4]),
                dkim_pass=int(row[5]),
                dkim_fail=int(row[6]),
                dmarc_pass=int(row[7]),
                dmarc_fail=int(row[8]),
                none=int(row[9]),
                quarantine=int(row[10]),
                reject=int(row[11]),
                organisations=tuple(sorted(json.loads(row[12]))) if by == "source" else (),
            )
            for row in rows
        ]

    # -- the file --------------------------------------------------------------------------

    @contextmanager
    def _connect(self, create: bool) -> Iterator[sqlite3.Connection]:
        with connect(self.path, _SCHEMA, SCHEMA_VERSION, create) as conn:
            yield conn


@contextmanager
def connect(
    path: Path, schema: Sequence[str], version: int, create: bool
) -> Iterator[sqlite3.Connection]:
    """A connection to one of the report databases (this one, and the
    evaluations of estafeta.reports.evaluations): WAL, synchronous=FULL,
    the busy timeout, ``schema`` created at ``version`` in a new file
    (0600, in a 0700 directory made when ``create``). Every database or
    file error comes out as ReportStoreError naming the file."""
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise ReportStoreError(f"{path}: {_detail(exc)}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found not in (0, version):
            raise ReportStoreError(f"{path}: schema version {found}, this estafeta knows {version}")
        if found == 0:
            for statement in schema:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            os.chmod(path, 0o600)
        yield conn
    except (OSError, sqlite3.Error) as exc:
        raise ReportStoreError(f"{path}: {_detail(exc)}") from None
    finally:
        conn.close()


@contextmanager
def transaction(
    path: Path, schema: Sequence[str], version: int, create: bool
) -> Iterator[sqlite3.Connection]:
    """``connect``, in one BEGIN IMMEDIATE transaction: committed when the
    body ends, rolled back when it raises."""
    with connect(path, schema, version, create) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _detail(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
