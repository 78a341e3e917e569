"""The DMARC evaluations of our MX, summed for the aggregate reports we send.

On disk: ``data_dir/reports/dmarc-evaluations.db`` (SQLite, WAL,
synchronous=FULL, 0600 in a 0700 directory; the connection rules of
estafeta.reports.store)::

    policies(day, domain, policy JSON, rua JSON, rows, dropped)   PK (day, domain)
    rows(day, domain, record JSON, count)                         PK (day, domain, record)
    days(day, domains, dropped)                                   PK (day)
    sent(day, domain, state, report_id, at, detail JSON)          PK (day, domain)

``day`` is the start of a UTC day (Unix seconds), ``domain`` the policy
domain: where the DMARC record was found (rfc7489:6.6.3), the
``policy_published`` domain of the report. ``record`` is one row of the
report as canonical JSON without its count (rfc7489:C RecordType: source
IP, disposition, aligned DKIM and SPF results, override reasons, header and
envelope From, the raw DKIM and SPF results): an evaluation with the same
JSON adds one to ``count``. ``policies`` keeps the record as last seen that
day (p, sp, pct, adkim, aspf, fo) and its ``rua=`` URIs.

Bounds (an attacker who sends from many addresses or as many domains must
not grow the file without limit): at most ``max_rows`` rows per policy
domain and day and ``max_domains`` policy domains per day. What does not
fit is counted (``policies.dropped``, ``days.dropped``; the report says how
many messages it leaves out) and dropped. Together with the retention that
bounds the file to about retention days x max_domains x max_rows rows.

``sent`` marks a (day, domain) done: ``sent`` (queued to at least one
address), ``skipped`` (nowhere to send it; ``detail`` says why) or
``stale`` (not sent in time, estafeta.delivery.dmarc_send). A marked day
is never sent again; evaluations arriving for it later (a clock set back,
``estafeta dmarc send --now`` ahead of the clock) are dropped as ``late``.

Crash ordering: a batch of evaluations is one transaction; a mark is one
transaction, written after the report is in the queue (see
estafeta.delivery.dmarc_send for what a crash in between costs). Pruning
(``prune``) deletes whole days older than the retention in one
transaction. The server (recording, its daily job) and ``estafeta dmarc
send`` may use the file at once: SQLite's busy timeout serialises them.
SQL stays in this module; callers get typed values.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from estafeta.reports.dmarc import (
    AuthResults,
    DkimAuth,
    PolicyEvaluated,
    PolicyOverride,
    PolicyPublished,
    Record,
    SpfAuth,
)
from estafeta.reports.store import connect, transaction

SCHEMA_VERSION = 1
DAY = 86_400
# Rows of one policy domain's report for one day: some 600 octets of XML
# each, 2,000 are about 1.2 MB (100-200 KB gzipped), under the common
# rua=...!10m limits. A busy domain fills far fewer: a row is one
# combination of source address and results.
MAX_ROWS = 2_000
# Policy domains recorded per day (each with a DMARC record naming rua=).
MAX_DOMAINS = 2_000

State = Literal["sent", "skipped", "stale"]
# What add() did with each evaluation: recorded, or dropped because of the
# row or domain bound, or because its day was already sent.
Outcome = Literal["recorded", "rows", "domains", "late"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS policies (
        day INTEGER NOT NULL,
        domain TEXT NOT NULL,
        policy TEXT NOT NULL,
        rua TEXT NOT NULL,
        rows INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, domain)
    )""",
    """CREATE TABLE IF NOT EXISTS rows (
        day INTEGER NOT NULL,
        domain TEXT NOT NULL,
        record TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (day, domain, record)
    )""",
    """CREATE TABLE IF NOT EXISTS days (
        day INTEGER PRIMARY KEY,
        domains INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS sent (
        day INTEGER NOT NULL,
        domain TEXT NOT NULL,
        state TEXT NOT NULL,
        report_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (day, domain)
    )""",
)


@dataclass(frozen=True)
class Evaluation:
    """One message's DMARC evaluation on our MX, as a report row of count 1."""

    day: int  # the UTC day it was made (estafeta.reports.aggregate.day_start)
    policy: PolicyPublished  # domain: the policy domain
    rua: tuple[str, ...]  # the record's rua= URIs then
    record: Record


@dataclass(frozen=True)
class Aggregate:
    """What one (day, policy domain) sums to."""

    day: int
    domain: str
    policy: PolicyPublished
    rua: tuple[str, ...]
    records: tuple[Record, ...]
    dropped: int  # messages left out: more than max_rows distinct rows


@dataclass(frozen=True)
class Mark:
    day: int
    domain: str
    state: State
    report_id: str
    at: int
    detail: dict[str, Any]


def record_key(record: Record) -> str:
    """The row identity: the record as canonical JSON, without its count."""
    data = asdict(record)
    del data["count"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _record(key: str, count: int) -> Record:
    data = json.loads(key)
    evaluated = data["policy_evaluated"]
    auth = data["auth_results"]
    return Record(
        source_ip=data["source_ip"],
        count=count,
        policy_evaluated=PolicyEvaluated(
            disposition=evaluated["disposition"],
            dkim=evaluated["dkim"],
            spf=evaluated["spf"],
            reasons=tuple(PolicyOverride(**reason) for reason in evaluated["reasons"]),
        ),
        header_from=data["header_from"],
        envelope_from=data["envelope_from"],
        envelope_to=data["envelope_to"],
        auth_results=AuthResults(
            dkim=tuple(DkimAuth(**entry) for entry in auth["dkim"]),
            spf=tuple(SpfAuth(**entry) for entry in auth["spf"]),
        ),
    )


class EvaluationStore:
    def __init__(
        self, path: Path, *, max_rows: int = MAX_ROWS, max_domains: int = MAX_DOMAINS
    ) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_domains = max_domains

    # -- recording -----------------------------------------------------------------

    def add(self, evaluations: Sequence[Evaluation]) -> Counter[Outcome]:
        """Sum ``evaluations`` in, in one transaction: what became of them."""
        outcomes: Counter[Outcome] = Counter()
        with self._transaction(create=True) as conn:
            for evaluation in evaluations:
                outcomes[self._add(conn, evaluation)] += 1
        return outcomes

    def _add(self, conn: sqlite3.Connection, evaluation: Evaluation) -> Outcome:
        day, domain = evaluation.day, evaluation.policy.domain
        if conn.execute(
            "SELECT 1 FROM sent WHERE day = ? AND domain = ?", (day, domain)
        ).fetchone():
            return "late"
        policy = json.dumps(asdict(evaluation.policy), sort_keys=True)
        rua = json.dumps(list(evaluation.rua))
        known = conn.execute(
            "UPDATE policies SET policy = ?, rua = ? WHERE day = ? AND domain = ?",
            (policy, rua, day, domain),
        ).rowcount
        if not known:
            conn.execute("INSERT OR IGNORE INTO days (day) VALUES (?)", (day,))
            (domains,) = conn.execute("SELECT domains FROM days WHERE day = ?", (day,)).fetchone()
            if domains >= self.max_domains:
                conn.execute("UPDATE days SET dropped = dropped + 1 WHERE day = ?", (day,))
                return "domains"
            conn.execute("UPDATE days SET domains = domains + 1 WHERE day = ?", (day,))
            conn.execute(
                "INSERT INTO policies (day, domain, policy, rua) VALUES (?, ?, ?, ?)",
                (day, domain, policy, rua),
            )
        key = record_key(evaluation.record)
        if conn.execute(
            "UPDATE rows SET count = count + 1 WHERE day = ? AND domain = ? AND record = ?",
            (day, domain, key),
        ).rowcount:
            return "recorded"
        (rows,) = conn.execute(
            "SELECT rows FROM policies WHERE day = ? AND domain = ?", (day, domain)
        ).fetchone()
        if rows >= self.max_rows:
            conn.execute(
                "UPDATE policies SET dropped = dropped + 1 WHERE day = ? AND domain = ?",
                (day, domain),
            )
            return "rows"
        conn.execute(
            "INSERT INTO rows (day, domain, record, count) VALUES (?, ?, ?, 1)", (day, domain, key)
        )
        conn.execute(
            "UPDATE policies SET rows = rows + 1 WHERE day = ? AND domain = ?", (day, domain)
        )
        return "recorded"

    # -- reporting -----------------------------------------------------------------

    def unsent(self, before: int) -> list[tuple[int, str]]:
        """(day, domain) of every day that ended at ``before`` or earlier and
        is not marked, oldest first."""
        if not self.path.exists():
            return []
        with connect(self.path, _SCHEMA, SCHEMA_VERSION, create=False) as conn:
            rows = conn.execute(
                "SELECT p.day, p.domain FROM policies p LEFT JOIN sent s"
                " ON s.day = p.day AND s.domain = p.domain"
                " WHERE s.day IS NULL AND p.day + ? <= ? ORDER BY p.day, p.domain",
                (DAY, before),
            ).fetchall()
        return [(int(day), str(domain)) for day, domain in rows]

    def aggregate(self, day: int, domain: str) -> Aggregate | None:
        """The rows of one (day, domain), the most messages first."""
        if not self.path.exists():
            return None
        with connect(self.path, _SCHEMA, SCHEMA_VERSION, create=False) as conn:
            found = conn.execute(
                "SELECT policy, rua, dropped FROM policies WHERE day = ? AND domain = ?",
                (day, domain),
            ).fetchone()
            if found is None:
                return None
            rows = conn.execute(
                "SELECT record, count FROM rows WHERE day = ? AND domain = ?"
                " ORDER BY count DESC, record",
                (day, domain),
            ).fetchall()
        policy, rua, dropped = found
        return Aggregate(
            day=day,
            domain=domain,
            policy=PolicyPublished(**json.loads(policy)),
            rua=tuple(json.loads(rua)),
            records=tuple(_record(key, count) for key, count in rows),
            dropped=int(dropped),
        )

    def dropped_domains(self, day: int) -> int:
        """Evaluations of ``day`` not recorded for the bound on domains."""
        if not self.path.exists():
            return 0
        with connect(self.path, _SCHEMA, SCHEMA_VERSION, create=False) as conn:
            row = conn.execute("SELECT dropped FROM days WHERE day = ?", (day,)).fetchone()
        return int(row[0]) if row else 0

    def mark(
        self,
        day: int,
        domain: str,
        state: State,
        report_id: str,
        now: float,
        detail: dict[str, Any],
    ) -> None:
        """Mark (day, domain) done; a mark is never replaced."""
        with self._transaction(create=True) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO sent (day, domain, state, report_id, at, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (day, domain, state, report_id, int(now), json.dumps(detail, sort_keys=True)),
            )

    def marks(self, since: int = 0) -> list[Mark]:
        """The marks of the days from ``since`` on, oldest first."""
        if not self.path.exists():
            return []
        with connect(self.path, _SCHEMA, SCHEMA_VERSION, create=False) as conn:
            rows = conn.execute(
                "SELECT day, domain, state, report_id, at, detail FROM sent"
                " WHERE day >= ? ORDER BY day, domain",
                (since,),
            ).fetchall()
        return [
            Mark(int(day), str(domain), state, str(rid), int(at), json.loads(detail))
            for day, domain, state, rid, at, detail in rows
        ]

    def prune(self, before: int) -> int:
        """Delete every day that started before ``before``: its rows, policy,
        bound counters and mark. How many (day, domain) reports went."""
        if not self.path.exists():
            return 0
        with self._transaction(create=False) as conn:
            removed = conn.execute("DELETE FROM policies WHERE day < ?", (before,)).rowcount
            for table in ("rows", "days", "sent"):
                conn.execute(f"DELETE FROM {table} WHERE day < ?", (before,))  # noqa: S608
        return int(removed)

    # -- the file ------------------------------------------------------------------

    def _transaction(self, create: bool) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path, _SCHEMA, SCHEMA_VERSION, create)
