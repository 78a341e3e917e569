"""``estafeta dmarc send``: the DMARC aggregate reports we owe others, now
(rfc7489:7.2; docs/dmarc-reports.md "Sending").

    estafeta dmarc send [--now ISO8601] [--dry-run] [--json]

What the server's daily job does (estafeta.delivery.dmarc_send): every UTC
day complete at ``--now`` (default: the clock) and not sent yet gets one
report per policy domain, queued for the rua= addresses of the domain's
DMARC record; the server's queue runner sends it (it looks for new entries
every second). ``--now 2026-12-06T01:00:00Z`` makes 2026-12-05 complete (a
time without a zone is refused). ``--dry-run`` looks everything up and
builds the messages but queues and marks nothing.

One line per (day, domain): ``sent`` (to whom), ``skipped`` (nowhere to
send it, or every address refused: marked, not tried again), ``stale``
(more than STALE_DAYS old: marked, not sent), ``deferred`` (the DNS failed:
the next run tries again) or ``failed``; the addresses left out follow with
their reason (size, external, dns, local, scheme, invalid, limit).

``--json``: {"now", "dry_run", "reports": [{"day", "begin", "end",
"domain", "state", "report_id", "records", "messages", "recipients",
"skipped": [{"uri", "reason", ...}], "error", "sources"}]}; times are Unix
seconds; "sources" sums the report's messages per source IP as the
receiving side's ``estafeta dmarc report --json`` will ({"source_ip",
"messages", "spf_aligned", "dkim_aligned", "dmarc": {"pass", "fail"},
"disposition": {"none", "quarantine", "reject"}}), so ``--dry-run --json``
shows what a report would tell.

Exit codes as in cli.py: 0 done (also with nothing to send), 1 a report
deferred or failed, another run holding the lock, the database failing;
2 bad usage or ``[reports] dmarc_send`` off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING

from estafeta.cli import CommandFailed, UsageError, _queue
from estafeta.config import Config
from estafeta.delivery.dmarc_send import Outcome, ReportSender, SendBusy, Settings
from estafeta.dns import DNSPythonResolver
from estafeta.policy.signer import Signer
from estafeta.reports.evaluations import EvaluationStore
from estafeta.reports.store import ReportStoreError

if TYPE_CHECKING:
    from estafeta.cli_dmarc import Add


def _now(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--now {text!r}: not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise UsageError(f"--now {text!r}: give the zone too, e.g. 2026-12-06T01:00:00Z")
    return moment.timestamp()


def _line(outcome: Outcome, dry_run: bool) -> str:
    head = f"{outcome.to_json()['day']} {outcome.domain}: "
    if outcome.state == "sent":
        verb = "would send" if dry_run else "sent"
        text = f"{verb} to {', '.join(outcome.recipients)}"
    else:
        text = outcome.state + (f": {outcome.error}" if outcome.error else "")
    if outcome.state in ("sent", "skipped"):
        text += f" ({outcome.records} records, {outcome.messages} messages)"
    left_out = "".join(f"; not to {s['uri']}: {s['reason']}" for s in outcome.skipped)
    return head + text + left_out


def cmd_dmarc_send(config: Config, args: argparse.Namespace) -> int:
    now = _now(args.now)
    if not config.reports.dmarc_send:
        raise UsageError("[reports] dmarc_send is off: nothing is recorded, nothing to send")
    # The server may be running; on a cluster node, the queue every node sends from.
    queue = _queue(config)
    try:
        sender = ReportSender(
            store=EvaluationStore(config.dmarc_evaluations_db),
            queue=queue,
            signer=Signer(config.dkim_dir),
            resolver=DNSPythonResolver([(e.host, e.port) for e in config.nameservers]),
            settings=Settings.of(config.hostname, tuple(config.domains), config.reports),
        )
        outcomes = asyncio.run(sender.run(now, dry_run=args.dry_run))
    except (SendBusy, ReportStoreError) as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        queue.close()
    if args.json:
        document = {
            "now": int(now),
            "dry_run": args.dry_run,
            "reports": [o.to_json() for o in outcomes],
        }
        print(json.dumps(document, indent=2))
    elif not outcomes:
        print("nothing to send: every complete day is sent")
    else:
        for outcome in outcomes:
            print(_line(outcome, args.dry_run))
    return 1 if any(o.state in ("deferred", "failed") for o in outcomes) else 0


def register(dmarc: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``send`` to ``estafeta dmarc`` (cli_dmarc.register)."""
    command = add(
        dmarc,
        "send",
        cmd_dmarc_send,
        "send the aggregate reports of every complete UTC day not sent yet ([reports] dmarc_send)",
    )
    command.add_argument(
        "--now",
        metavar="ISO8601",
        help="the time to act as of, with its zone (default: now), e.g. 2026-12-06T01:00:00Z",
    )
    command.add_argument(
        "--dry-run", action="store_true", help="look up and build, but queue and mark nothing"
    )
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"now", "dry_run", "reports": [{"day", "domain", "state", ...}]}',
    )
