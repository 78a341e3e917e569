"""``estafeta retention run`` and ``estafeta user retention`` (issue 18;
estafeta.retention has what goes and in which order).

    estafeta retention run [--dry-run] [--json]
    estafeta user retention ADDRESS [MAILBOX=DURATION ...] [--json]

``retention run`` applies ``[retention]`` once, as the server does daily,
and prints per account and mailbox how many messages were expunged
(``--dry-run``: would be), then the login history rows deleted and client
addresses truncated. It may run while the server runs: messages go through
the store's expunge path (IMAP sessions see them expunged at their next
command; an IDLE session at its next check), in transactions of 500.

``user retention ADDRESS`` shows the account's effective rules: each
mailbox key with its duration and where it comes from (``config`` or
``account``). ``MAILBOX=DURATION`` sets the account's own rule for a
special-use role (``Trash``, ``Junk``...) or a mailbox name: ``30d``,
``12h``, ``2w``; ``0`` (or ``keep``) keeps forever; ``default`` removes the
account's rule (the configuration's applies again). Then it shows the rules.

Exit codes as in cli.py: 0 done; 1 the run failed for an account (printed,
the others were done); 2 bad usage (no such account, a bad DURATION).

``--json``: ``retention run`` {"dry_run", "expunged": [{"address",
"mailbox", "rule", "seconds", "messages"}], "messages",
"login_rows_deleted", "clients_truncated", "problems"}; ``user retention``
{"address", "mailboxes": {KEY: {"seconds", "source"}}, "login_history",
"truncate_client_ip"} (seconds; 0 = keep forever).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from estafeta import log as log_module
from estafeta import retention
from estafeta.cli import UsageError, _accounts, _existing_account, _store, user_actions
from estafeta.config import Config
from estafeta.config_retention import format_duration, parse_duration, rule_key

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def cmd_retention_run(config: Config, args: argparse.Namespace) -> int:
    # What the store repairs or cannot do is logged: show it on stderr.
    log_module.setup("warning", config.log.format)
    with _accounts(config) as accounts, _store(config) as store:
        report = retention.run(
            config.retention, accounts, store, now=int(time.time()), dry_run=args.dry_run
        )
    if args.json:
        print(json.dumps(report.to_json()))
        return 1 if report.problems else 0
    verb = "would expunge" if args.dry_run else "expunged"
    for e in report.expired:
        print(
            f"{e.address} {e.mailbox}: {verb} {e.messages} messages"
            f" (saved more than {format_duration(e.seconds)} ago; rule {e.rule})"
        )
    if not report.expired:
        print(f"{verb} no messages")
    settings = config.retention
    if settings.login_history:
        deleted = "would delete" if args.dry_run else "deleted"
        print(
            f"login history: {deleted} {report.login_rows} rows"
            f" older than {format_duration(settings.login_history)}"
        )
    if settings.truncate_client_ip:
        truncated = "would truncate" if args.dry_run else "truncated"
        print(
            f"login history: {truncated} {report.clients} client addresses"
            f" older than {format_duration(settings.truncate_client_ip)}"
        )
    for problem in report.problems:
        print(f"problem: {problem}")
    return 1 if report.problems else 0


def _rule(text: str) -> tuple[str, int | None]:
    """``MAILBOX=DURATION`` -> (mailbox key, seconds or None for ``default``)."""
    key, sep, value = text.rpartition("=")
    if not sep or not key.strip():
        raise UsageError(f"{text!r}: write MAILBOX=DURATION, e.g. Trash=30d or Junk=default")
    if value.strip().lower() == "default":
        return rule_key(key), None
    try:
        return rule_key(key), parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{key.strip()}: {exc}") from None


def cmd_user_retention(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    changes = [_rule(text) for text in args.rules]  # all checked before any is set
    with _accounts(config) as accounts:
        for key, seconds in changes:
            accounts.set_retention(address, key, seconds)
        own = accounts.retention_overrides(address).get(address, {})
    settings = config.retention
    rules: dict[str, dict[str, Any]] = {
        key: {"seconds": seconds, "source": source}
        for key, (seconds, source) in retention.sources(settings, own).items()
    }
    if args.json:
        print(json.dumps({
            "address": address, "mailboxes": rules, "login_history": settings.login_history,
            "truncate_client_ip": settings.truncate_client_ip,
        }))  # fmt: skip
        return 0
    print(f"{address}:")
    if not rules:
        print("  every mailbox: keep (no [retention] mailboxes rule)")
    width = max((len(key) for key in rules), default=0)
    for key in sorted(rules):
        rule = rules[key]
        print(f"  {key:<{width}}  {format_duration(rule['seconds']):>5}  ({rule['source']})")
    print(
        f"  login history: {format_duration(settings.login_history)};"
        f" client addresses truncated after {format_duration(settings.truncate_client_ip)}"
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta retention run`` and ``estafeta user retention`` (cli.build_parser)."""
    parser = commands.add_parser("retention", help="expire old mail and login history")
    group = parser.add_subparsers(dest="retention_command", required=True, metavar="ACTION")
    command = add(group, "run", cmd_retention_run, "apply [retention] once, as the server daily")
    command.add_argument(
        "--dry-run", action="store_true", help="only count what would go; change nothing"
    )
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"dry_run", "expunged": [...], "login_rows_deleted", ...}',
    )
    command = add(
        user_actions(commands),
        "retention",
        cmd_user_retention,
        "show or set an account's own retention per mailbox (Trash=7d, Junk=default)",
    )
    command.add_argument("address")
    command.add_argument(
        "rules", nargs="*", metavar="MAILBOX=DURATION", help="30d, 12h, 2w; 0 keeps; default"
    )
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"address", "mailboxes": {KEY: {"seconds", "source"}}, ...}',
    )
