"""Our outbound TLS sessions per day and policy, and which reports went out.

On disk: ``data_dir/reports/tls-sessions.db`` (mode 0600 in a 0700
directory), WAL mode::

    policies(id INTEGER PK, day, domain, type, strings JSON, mx_hosts JSON,
             successful, failed)        UNIQUE (day, domain, type, strings, mx_hosts)
    details(policy -> policies.id, result_type, sending_ip, receiving_mx,
            receiving_ip, helo, reason_code, count)
            UNIQUE (policy, result_type, sending_ip, receiving_mx, receiving_ip,
                    helo, reason_code)
    sent(day, domain, result, report_id, at)   PRIMARY KEY (day, domain)

``day`` is a UTC day, ``YYYY-MM-DD`` (rfc8460:4.1); a policy is what
rfc8460:4.4 ``policy`` holds, its lists as canonical JSON. The server adds
the recorder's counts (estafeta.reports.tlsrpt_recorder) every few seconds
(``add``: one transaction, upserts). A policy keeps at most
``MAX_DETAILS`` detail rows a day; past that a failure goes into the row of
its result type with the other fields empty, so every failure stays
counted by type.

``sent`` says what became of a (day, policy domain) report: ``sent``
(handed to the queue or accepted over HTTPS), ``no-record`` (the domain
published no valid ``_smtp._tls`` record at send time), ``unsupported``
(only rua URIs we cannot use), ``expired`` (not sent within
``SEND_WINDOW`` of the day's end: temporary failures all along). A day is
reported at most once: ``pending`` never lists a (day, domain) with a row
in ``sent``. Crash ordering: the sender enqueues the report and then
inserts the row, so a crash between the two sends that day again on the
next run (the same report id: rfc8460:5.3 lets the receiver drop the
duplicate); it never loses the mark of a report that was marked.

Retention: rows of days older than ``RETENTION`` are deleted by ``prune``
(the sender calls it on every run). SQL stays here; callers get
:class:`~estafeta.reports.tlsrpt.PolicyResult` objects and
:class:`SessionStoreError` (naming the file) for any database failure.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

from estafeta.reports import database
from estafeta.reports.tlsrpt import FailureDetail, Policy, PolicyResult
from estafeta.reports.tlsrpt_recorder import MAX_DETAILS, Pending

SCHEMA_VERSION = 1
RETENTION_DAYS = 14
SEND_WINDOW_DAYS = 3  # a day's report may go out until 3 days after the day ended

Outcome = Literal["sent", "no-record", "unsupported", "expired"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS policies (
        id INTEGER PRIMARY KEY,
        day TEXT NOT NULL,
        domain TEXT NOT NULL,
        type TEXT NOT NULL,
        strings TEXT NOT NULL,
        mx_hosts TEXT NOT NULL,
        successful INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        UNIQUE (day, domain, type, strings, mx_hosts)
    )""",
    """CREATE TABLE IF NOT EXISTS details (
        policy INTEGER NOT NULL REFERENCES policies (id),
        result_type TEXT NOT NULL,
        sending_ip TEXT NOT NULL,
        receiving_mx TEXT NOT NULL,
        receiving_ip TEXT NOT NULL,
        helo TEXT NOT NULL,
        reason_code TEXT NOT NULL,
        count INTEGER NOT NULL,
        UNIQUE (policy, result_type, sending_ip, receiving_mx, receiving_ip, helo, reason_code)
    )""",
    """CREATE TABLE IF NOT EXISTS sent (
        day TEXT NOT NULL,
        domain TEXT NOT NULL,
        result TEXT NOT NULL,
        report_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (day, domain)
    )""",
)


_ADD_TO_DETAIL = (
    "UPDATE details SET count = count + ? WHERE policy = ? AND result_type = ?"
    " AND sending_ip = ? AND receiving_mx = ? AND receiving_ip = ? AND helo = ?"
    " AND reason_code = ?"
)


class SessionStoreError(Exception):
    """The session database cannot be opened, read or written; names the file."""


def _day_before(day: str, days: int) -> str:
    moment = datetime.date.fromisoformat(day) - datetime.timedelta(days=days)
    return moment.isoformat()


class SessionStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    # -- the recorder's counts --------------------------------------------------------

    def add(self, pending: Pending) -> None:
        """Add drained counts, in one transaction."""
        if not pending:
            return
        with self._connect(create=True) as conn, database.transaction(conn):
            for (day, policy), tally in pending.items():
                row = self._policy_row(conn, day, policy)
                conn.execute(
                    "UPDATE policies SET successful = successful + ?, failed = failed + ?"
                    " WHERE id = ?",
                    (tally.successful, tally.failed, row),
                )
                for key, count in tally.details.items():
                    self._add_detail(conn, row, key, count)

    @staticmethod
    def _policy_row(conn: sqlite3.Connection, day: str, policy: Policy) -> int:
        values = (
            day,
            policy.domain,
            policy.type,
            json.dumps(list(policy.strings)),
            json.dumps(list(policy.mx_hosts)),
        )
        conn.execute(
            "INSERT OR IGNORE INTO policies (day, domain, type, strings, mx_hosts)"
            " VALUES (?, ?, ?, ?, ?)",
            values,
        )
        (row,) = conn.execute(
            "SELECT id FROM policies WHERE day = ? AND domain = ? AND type = ? AND strings = ?"
            " AND mx_hosts = ?",
            values,
        ).fetchone()
        return int(row)

    @staticmethod
    def _add_detail(conn: sqlite3.Connection, row: int, key: tuple[str, ...], count: int) -> None:
        if conn.execute(_ADD_TO_DETAIL, (count, row, *key)).rowcount:
            return
        (rows,) = conn.execute("SELECT COUNT(*) FROM details WHERE policy = ?", (row,)).fetchone()
        if rows >= MAX_DETAILS and any(key[1:]):
            key = (key[0], "", "", "", "", "")  # only its type: still counted
            if conn.execute(_ADD_TO_DETAIL, (count, row, *key)).rowcount:
                return
        conn.execute(
            "INSERT INTO details (policy, result_type, sending_ip, receiving_mx, receiving_ip,"
            " helo, reason_code, count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row, *key, count),
        )

    # -- the sender's questions -------------------------------------------------------

    def pending(self, today: str) -> list[tuple[str, str]]:
        """(day, policy domain) pairs with sessions, of complete days (before
        ``today``) inside the send window, not yet reported; oldest first."""
        if not self.path.exists():
            return []
        oldest = _day_before(today, SEND_WINDOW_DAYS)
        with self._connect(create=False) as conn:
            rows = conn.execute(
                "SELECT DISTINCT p.day, p.domain FROM policies p"
                " LEFT JOIN sent s ON s.day = p.day AND s.domain = p.domain"
                " WHERE p.day < ? AND p.day >= ? AND s.day IS NULL"
                " ORDER BY p.day, p.domain",
                (today, oldest),
            ).fetchall()
        return [(str(day), str(domain)) for day, domain in rows]

    def policies(self, day: str, domain: str) -> list[PolicyResult]:
        """The sessions of ``day`` under each policy of ``domain``."""
        if not self.path.exists():
            return []
        with self._connect(create=False) as conn:
            rows = conn.execute(
                "SELECT id, type, strings, mx_hosts, successful, failed FROM policies"
                " WHERE day = ? AND domain = ? ORDER BY id",
                (day, domain),
            ).fetchall()
            results = []
            for row, kind, strings, mx_hosts, successful, failed in rows:
                details = conn.execute(
                    "SELECT result_type, count, sending_ip, receiving_mx, helo, receiving_ip,"
                    " reason_code FROM details WHERE policy = ?"
                    " ORDER BY count DESC, result_type, receiving_mx, receiving_ip",
                    (row,),
                ).fetchall()
                results.append(
                    PolicyResult(
                        policy=Policy(
                            type=kind,
                            domain=domain,
                            strings=tuple(json.loads(strings)),
                            mx_hosts=tuple(json.loads(mx_hosts)),
                        ),
                        successful=int(successful),
                        failed=int(failed),
                        details=tuple(
                            FailureDetail(
                                result_type=d[0],
                                count=int(d[1]),
                                sending_ip=d[2],
                                receiving_mx=d[3],
                                receiving_helo=d[4],
                                receiving_ip=d[5],
                                reason_code=d[6],
                            )
                            for d in details
                        ),
                    )
                )
        return results

    def mark(self, day: str, domain: str, result: Outcome, report_id: str, at: float) -> bool:
        """Record what became of the report of (``day``, ``domain``); False
        if it was marked already (another run got there first)."""
        with self._connect(create=True) as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO sent (day, domain, result, report_id, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (day, domain, result, report_id, int(at)),
            )
        return cursor.rowcount == 1

    def outcome(self, day: str, domain: str) -> str | None:
        if not self.path.exists():
            return None
        with self._connect(create=False) as conn:
            row = conn.execute(
                "SELECT result FROM sent WHERE day = ? AND domain = ?", (day, domain)
            ).fetchone()
        return None if row is None else str(row[0])

    def expire(self, today: str, at: float) -> int:
        """Mark ``expired`` the unreported (day, domain) pairs that fell out
        of the send window; then delete what is older than the retention."""
        if not self.path.exists():
            return 0
        oldest = _day_before(today, SEND_WINDOW_DAYS)
        cutoff = _day_before(today, RETENTION_DAYS)
        with self._connect(create=False) as conn, database.transaction(conn):
            expired = conn.execute(
                "INSERT OR IGNORE INTO sent (day, domain, result, report_id, at)"
                " SELECT DISTINCT day, domain, 'expired', '', ? FROM policies"
                " WHERE day < ?",
                (int(at), oldest),
            ).rowcount
            conn.execute(
                "DELETE FROM details WHERE policy IN (SELECT id FROM policies WHERE day < ?)",
                (cutoff,),
            )
            conn.execute("DELETE FROM policies WHERE day < ?", (cutoff,))
            conn.execute("DELETE FROM sent WHERE day < ?", (cutoff,))
        return int(expired)

    # -- the file ---------------------------------------------------------------------

    def _connect(self, create: bool) -> AbstractContextManager[sqlite3.Connection]:
        return database.connect(self.path, _SCHEMA, SCHEMA_VERSION, SessionStoreError, create)
