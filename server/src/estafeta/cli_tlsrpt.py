"""``estafeta tlsrpt ...``: SMTP TLS reports (rfc8460; docs/tls-reports.md).

    estafeta tlsrpt send [--now ISO8601] [--dry-run] [--json]
    estafeta tlsrpt import FILE... [--json]
    estafeta tlsrpt report [--days N] [--domain D] [--json]

``send`` reports every complete UTC day (before ``--now``, by default now)
that is not reported yet, about each domain our sessions went to (counted
by the server when ``[reports] tlsrpt_send`` is on), to the ``rua`` of
that domain's ``_smtp._tls`` record as it is now; what the server does
daily after midnight. A day is reported once (``sent``, ``no-record``,
``unsupported``); ``deferred`` (a DNS or HTTPS failure) is tried again at
the next run. ``--dry-run`` looks the records up and says what it would
send, and sends and marks nothing. The server writes the counts every 15
seconds: a run right after the day ends may miss the last few.

``import`` reads reports saved by hand: a message (.eml), a .json.gz or
the .json itself. Each FILE is one line: ``accepted``, ``duplicate`` (that
organisation's report id is stored), ``expired``, or ``rejected`` with
what is wrong. Exit 1 when a FILE was rejected or the database failed.

``report`` sums the received reports whose period ended in the last N
days (7 by default), about domain D only with ``--domain``: per reporting
organisation and policy (domain and type), the reports, successful and
failed sessions, and the failed sessions by result type (rfc8460:4.3).

``--json`` (one document on stdout):

- send: [{"day", "domain", "result", "report_id", "successful", "failed",
  "rua": [{"uri", "result", "error"?, "signed"?}], "error"?}];
- import: [{"file", "result", "reason"?, "error"?, "org_name", "report_id",
  "domains", "begin", "end", "successful", "failed"}];
- report: {"days", "since", "domain", "reports", "successful", "failed",
  "policies": [{"org_name", "policy_domain", "policy_type", "reports",
  "successful", "failed", "failures": {result type: count}}]}.

Exit codes as in cli.py: 0 success, 1 failed, 2 bad usage (``send`` with
``[reports] tlsrpt_send`` off, as ``dmarc send``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import time
from typing import Any

from estafeta.cli import CommandFailed, UsageError
from estafeta.cli_dmarc import Add, day, import_reports, print_columns, report_scope
from estafeta.config import Config
from estafeta.reports.store import ReportStoreError
from estafeta.reports.tlsrpt import Report, parse_any
from estafeta.reports.tlsrpt_sessions import SessionStoreError
from estafeta.reports.tlsrpt_store import TLSReportStore


def _store(config: Config) -> TLSReportStore:
    return TLSReportStore(config.tlsrpt_reports_db, config.reports.retention)


def _when(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--now {text!r}: not an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def cmd_tlsrpt_send(config: Config, args: argparse.Namespace) -> int:
    from estafeta.cli import _queue
    from estafeta.delivery.tlsrpt import report_sender
    from estafeta.dns import DNSPythonResolver
    from estafeta.policy.signer import Signer

    if not config.reports.tlsrpt_send:
        # As `estafeta dmarc send`: off, the server counts nothing to report.
        raise UsageError("[reports] tlsrpt_send is off: no sessions are counted, nothing to send")
    now = _when(args.now) if args.now else time.time()
    # The server may be running; on a cluster node, the queue every node sends from.
    queue = _queue(config)
    try:
        resolver = DNSPythonResolver([(e.host, e.port) for e in config.nameservers])
        sender = report_sender(config, resolver, queue, Signer(config.dkim_dir))
        entries = asyncio.run(sender.run(now, dry_run=args.dry_run))
    except SessionStoreError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        queue.close()
    if args.json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print("no TLS report due (no sessions counted for a complete day not yet reported)")
    else:
        for e in entries:
            ruas = ", ".join(f"{r['uri']} {r['result']}" for r in e["rua"])
            print(
                f"{e['day']} {e['domain']}: {e['result']}"
                f" ({e['successful']} successful, {e['failed']} failed sessions)"
                + (f": {ruas}" if ruas else "")
                + (f": {e['error']}" if e.get("error") else "")
            )
    return 1 if any(e["result"] == "deferred" for e in entries) else 0


def cmd_tlsrpt_import(config: Config, args: argparse.Namespace) -> int:
    def line(e: dict[str, Any]) -> str:
        return (
            f"{e['org_name']} report {e['report_id']}"
            f" about {', '.join(e['domains']) or 'no domain'}"
            f" ({day(e['begin'])} to {day(e['end'])},"
            f" {e['successful']} successful, {e['failed']} failed sessions)"
        )

    return import_reports(config, args, parse_any, _store(config).add, Report.describe, line)


def cmd_tlsrpt_report(config: Config, args: argparse.Namespace) -> int:
    domain, since = report_scope(args)
    try:
        tallies = _store(config).tally(since, domain)
        reports = _store(config).count(since, domain)
    except ReportStoreError as exc:
        raise CommandFailed(str(exc)) from None
    successful = sum(t.successful for t in tallies)
    failed = sum(t.failed for t in tallies)
    if args.json:
        document = {
            "days": args.days,
            "since": since,
            "domain": domain,
            "reports": reports,
            "successful": successful,
            "failed": failed,
            "policies": [t.to_json() for t in tallies],
        }
        print(json.dumps(document, indent=2))
        return 0
    what = f" about {domain}" if domain else ""
    print(
        f"TLS reports{what}, periods ending after {day(since)} UTC:"
        f" {reports} report{'' if reports == 1 else 's'},"
        f" {successful} successful, {failed} failed sessions"
    )
    if not tallies:
        print("(none received: is [reports] tlsrpt_address the rua= of your _smtp._tls records?)")
        return 0
    print()
    header = ["ORGANISATION", "POLICY DOMAIN", "TYPE", "REPORTS", "SUCCESSFUL", "FAILED"]
    rows = [
        [
            t.org_name,
            t.domain,
            t.policy_type,
            str(t.reports),
            str(t.successful),
            str(t.failed),
            ", ".join(f"{kind} {count}" for kind, count in t.failures.items()),
        ]
        for t in tallies
    ]
    print_columns([[*header, "FAILURES"], *rows], left=(0, 1, 2, 6))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta tlsrpt ...`` to the command's parser (cli.build_parser)."""
    tlsrpt = commands.add_parser(
        "tlsrpt", help="SMTP TLS reports: ours sent, others' received (rfc8460)"
    ).add_subparsers(dest="tlsrpt_command", required=True, metavar="ACTION")
    command = add(
        tlsrpt,
        "send",
        cmd_tlsrpt_send,
        "send the TLS reports of every complete UTC day not reported yet",
    )
    command.add_argument(
        "--now", help="the time to take as now (ISO 8601, UTC unless it says otherwise)"
    )
    command.add_argument(
        "--dry-run", action="store_true", help="look the records up; send and mark nothing"
    )
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: [{"day", "domain", "result", "report_id", "rua", ...}]',
    )
    command = add(
        tlsrpt,
        "import",
        cmd_tlsrpt_import,
        "store reports saved by hand: messages (.eml), .json.gz or .json files",
    )
    command.add_argument("files", nargs="+", metavar="FILE")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: [{"file", "result", "org_name", "report_id", ...}]',
    )
    command = add(
        tlsrpt,
        "report",
        cmd_tlsrpt_report,
        "per reporting organisation and policy: successful and failed sessions, failure types",
    )
    command.add_argument(
        "--days", type=int, default=7, help="reports whose period ended in the last N days (7)"
    )
    command.add_argument("--domain", help="only reports about this policy domain")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"successful", "failed", "policies": [...]}',
    )
