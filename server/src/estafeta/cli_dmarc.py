"""``estafeta dmarc ...``: the DMARC aggregate reports received (rfc7489:7.2;
docs/dmarc-reports.md).

    estafeta dmarc import FILE... [--json]
    estafeta dmarc report [--days N] [--domain D] [--json]
    estafeta dmarc send [--now ISO8601] [--dry-run] [--json]   (cli_dmarc_send.py)

``import`` reads reports saved by hand: a whole message (.eml), a .zip, a
.gz or the .xml itself (the kind is told by the first bytes, not the name).
Each FILE is one line: ``accepted`` (stored), ``duplicate`` (that
reporter's report id is stored already), ``expired`` (its period ended
before the retention), or ``rejected`` with what is wrong. Exit 1 when a
FILE was unreadable or rejected (the others are imported all the same) or
the report database failed.

``report`` sums the reports whose period ended in the last N days (7 by
default), of domain D only with ``--domain``: per reporting organisation
and per source IP, the messages, how many passed and failed SPF and DKIM
*aligned* (rfc7489:3.1: what DMARC evaluates), DMARC (either aligned,
rfc7489:6.6.2) and the dispositions the receivers applied. An address that
fails both and is not yours is someone sending as your domain.

``--json`` (one document on stdout):

- import: [{"file", "result", "reason", "error", "org_name", "report_id",
  "domain", "begin", "end", "records", "messages"}]; reason and error only
  when rejected;
- report: {"days", "since", "domain", "reports", "messages",
  "organisations": [TALLY with "org_name"], "sources": [TALLY with
  "source_ip" and "organisations"]}, where TALLY is {"reports",
  "messages", "spf_aligned": {"pass", "fail"}, "dkim_aligned": {"pass",
  "fail"}, "dmarc": {"pass", "fail"}, "disposition": {"none",
  "quarantine", "reject"}}; times are Unix seconds.

Exit codes as in cli.py: 0 success, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from estafeta import config as config_module
from estafeta.address import AddressError, normalize_domain
from estafeta.cli import CommandFailed, UsageError
from estafeta.config import Config
from estafeta.reports import unpack
from estafeta.reports.dmarc import Report, ReportError, parse_any
from estafeta.reports.store import ReportStore, ReportStoreError, Tally

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]

DAY = 86_400
MAX_DAYS = 3_660
# A file bigger than this is no report (a message carrying one is at most
# unpack.MAX_MESSAGE); it is refused before it is read.
MAX_FILE = unpack.MAX_MESSAGE


def _store(config: Config) -> ReportStore:
    return ReportStore(config.dmarc_reports_db, config.reports.retention)


def _read(path: Path) -> bytes:
    """The file, at most MAX_FILE octets (checked while reading, not trusted
    from stat: it may be a pipe or growing). OSError or ReportError."""
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ReportError(unpack.TOO_LARGE, f"larger than {MAX_FILE} octets")
    return data


def _import_one(store: ReportStore, name: str, now: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"file": name}
    try:
        report = parse_any(_read(Path(name)))
    except OSError as exc:
        entry.update(result="rejected", reason="unreadable", error=exc.strerror or str(exc))
        return entry
    except ReportError as exc:
        entry.update(result="rejected", reason=exc.reason, error=str(exc))
        return entry
    try:
        result = store.add(report, now)
    except ReportStoreError as exc:
        raise CommandFailed(str(exc)) from None
    entry.update(result=result, **_describe(report))
    return entry


def _describe(report: Report) -> dict[str, Any]:
    return {
        "org_name": report.org_name,
        "report_id": report.report_id,
        "domain": report.policy_published.domain,
        "begin": report.date_range.begin,
        "end": report.date_range.end,
        "records": len(report.records),
        "messages": report.messages,
    }


def cmd_dmarc_import(config: Config, args: argparse.Namespace) -> int:
    config_module.check_runtime(config)  # data_dir exists, with its mode, and is writable
    store = _store(config)
    now = time.time()
    entries = [_import_one(store, name, now) for name in args.files]
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            if e["result"] == "rejected":
                print(f"{e['file']}: rejected: {e['error']}")
            else:
                print(
                    f"{e['file']}: {e['result']}: {e['org_name']} report {e['report_id']}"
                    f" for {e['domain']} ({_day(e['begin'])} to {_day(e['end'])},"
                    f" {e['records']} records, {e['messages']} messages)"
                )
    return 1 if any(e["result"] == "rejected" for e in entries) else 0


def _day(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))


def cmd_dmarc_report(config: Config, args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_DAYS:
        raise UsageError(f"--days must be 1 to {MAX_DAYS}")
    domain = None
    if args.domain:
        try:
            domain = normalize_domain(args.domain)
        except AddressError as exc:
            raise UsageError(f"--domain {args.domain!r}: {exc}") from None
    store = _store(config)
    since = int(time.time()) - args.days * DAY
    try:
        organisations = store.tally(since, "org", domain)
        sources = store.tally(since, "source", domain)
    except ReportStoreError as exc:
        raise CommandFailed(str(exc)) from None
    reports = sum(t.reports for t in organisations)
    messages = sum(t.messages for t in organisations)
    if args.json:
        print(
            json.dumps(
                {
                    "days": args.days,
                    "since": since,
                    "domain": domain,
                    "reports": reports,
                    "messages": messages,
                    "organisations": [t.to_json("org_name") for t in organisations],
                    "sources": [t.to_json("source_ip") for t in sources],
                },
                indent=2,
            )
        )
        return 0
    what = f" for {domain}" if domain else ""
    print(
        f"DMARC aggregate reports{what}, periods ending after {_day(since)} UTC:"
        f" {reports} report{'' if reports == 1 else 's'}, {messages} messages"
    )
    if not organisations:
        print("(none received: is [reports] dmarc_address the rua= of your DMARC records?)")
        return 0
    print()
    _table("ORGANISATION", organisations)
    print()
    _table("SOURCE IP", sources, with_reporters=True)
    return 0


def _table(title: str, tallies: Sequence[Tally], with_reporters: bool = False) -> None:
    """Aligned columns; pass/fail pairs as "PASS/FAIL"."""
    header = [title, "REPORTS", "MESSAGES", "SPF PASS/FAIL", "DKIM PASS/FAIL", "DMARC PASS/FAIL"]
    header.append("NONE/QUAR/REJECT")
    if with_reporters:
        header.append("REPORTED BY")
    rows = []
    for t in tallies:
        row = [
            t.key,
            str(t.reports),
            str(t.messages),
            f"{t.spf_pass}/{t.spf_fail}",
            f"{t.dkim_pass}/{t.dkim_fail}",
            f"{t.dmarc_pass}/{t.dmarc_fail}",
            f"{t.none}/{t.quarantine}/{t.reject}",
        ]
        if with_reporters:
            row.append(", ".join(t.organisations))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i in (0, len(header) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta dmarc ...`` to the command's parser (cli.build_parser)."""
    dmarc = commands.add_parser(
        "dmarc", help="DMARC aggregate reports received and sent (rfc7489)"
    ).add_subparsers(dest="dmarc_command", required=True, metavar="ACTION")
    command = add(
        dmarc,
        "import",
        cmd_dmarc_import,
        "store reports saved by hand: messages (.eml), .zip, .gz or .xml files",
    )
    command.add_argument("files", nargs="+", metavar="FILE")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: [{"file", "result", "org_name", "report_id", "domain", ...}]',
    )
    command = add(
        dmarc,
        "report",
        cmd_dmarc_report,
        "per reporting organisation and per source IP: messages, SPF and DKIM aligned"
        " pass/fail, DMARC pass/fail, dispositions",
    )
    command.add_argument(
        "--days", type=int, default=7, help="reports whose period ended in the last N days (7)"
    )
    command.add_argument("--domain", help="only reports about this domain (policy_published)")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"reports", "messages", "organisations": [...], "sources": [...]}',
    )
    from estafeta import cli_dmarc_send  # the reports we send (docs/dmarc-reports.md)

    cli_dmarc_send.register(dmarc, add)
