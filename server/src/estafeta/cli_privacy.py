"""``estafeta user export`` and ``estafeta user erase``: an account's data, all
of it or none of it (issue 18; estafeta.privacy has the formats and the order).

    estafeta user export ADDRESS --to FILE [--format zip|tar] [--force] [--json]
    estafeta user erase ADDRESS [--yes] [--json]

``export`` writes FILE (0600) through FILE.tmp and refuses an existing FILE
unless ``--force``. ``erase`` asks for the address to be typed on a terminal
unless ``--yes``; with neither a terminal nor ``--yes`` it refuses (exit 2)
and erases nothing. It prints what it removed, per kind. It may run while the
server runs, and running it again finishes an erasure a crash interrupted.

Exit codes as in cli.py: 0 done; 1 the operation failed (the archive could
not be written; a step of the erasure failed or something came back: run it
again); 2 bad usage (no such account for export, FILE exists, not confirmed).

``--json``: ``export`` {"path", "mailboxes", "messages", "octets", "skipped"};
``erase`` {"address", "removed": {"account", "aliases_removed",
"aliases_changed", "logins", "queue_messages", "queue_recipient_entries",
"greylist_entries", "sieve_scripts", "sieve_memory", "spam_files", "mail"},
"backup": [lines], "problems": [lines]}, plus "error" when a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from estafeta import config as config_module
from estafeta.address import AddressError, normalize_address
from estafeta.cli import CommandFailed, UsageError, _existing_account, user_actions
from estafeta.config import Config

if TYPE_CHECKING:
    from estafeta.privacy.erase import Erasure
    from estafeta.privacy.export import Sources

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def cmd_user_export(config: Config, args: argparse.Namespace) -> int:
    # Imported here: `estafeta user ...` loads this module for every action.
    from estafeta.privacy.export import ExportError, export_account

    address = _existing_account(config, args.address)
    target = Path(args.to)
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; give --force to replace it")
    try:
        with export_sources(config) as sources:
            report = export_account(
                config, address, target, fmt=args.format, force=args.force, sources=sources
            )
    except ExportError as exc:
        raise CommandFailed(str(exc)) from None
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    skipped = f" ({report.skipped} expunged meanwhile, left out)" if report.skipped else ""
    print(
        f"exported {address} to {report.path}: {report.mailboxes} mailboxes,"
        f" {report.messages} messages, {report.octets} octets{skipped}"
    )
    return 0


@contextlib.contextmanager
def export_sources(config: Config) -> Iterator[Sources | None]:
    """What ``user export`` reads: None for the local store (the export
    opens its files); on a cluster node the accounts, Sieve scripts, junk
    filter statistics and mail every node shares."""
    if not config.store.cluster:
        yield None
        return
    from estafeta.cli import _accounts, _store
    from estafeta.cli_sieve import _script_store
    from estafeta.cli_spam import _junk
    from estafeta.privacy.export import Sources

    with (
        _accounts(config) as accounts,
        _script_store(config) as scripts,
        _junk(config) as junk,
        _store(config) as store,
    ):
        yield Sources(accounts, scripts, junk, store, files=False)


def _confirmed(address: str) -> bool:
    print(
        f"This removes {address} for good: its account, mail, rules, filter training,"
        " queued mail and backup key. It cannot be undone.",
        file=sys.stderr,
    )
    # The prompt on stderr too: stdout may be --json for a program.
    print(f"Type {address} to erase it: ", end="", file=sys.stderr, flush=True)
    try:
        typed = input()
    except EOFError:
        return False
    try:
        return normalize_address(typed.strip()) == address
    except AddressError:
        return False


def _print(erasure: Erasure, as_json: bool, error: str | None = None) -> None:
    if as_json:
        document = erasure.to_json()
        if error is not None:
            document["error"] = error
        print(json.dumps(document, indent=2))
        return
    print(f"erased {erasure.address}:" if error is None else f"erasing {erasure.address}:")
    for line in erasure.lines():
        print(f"  {line}")


def cmd_user_erase(config: Config, args: argparse.Namespace) -> int:
    from estafeta.privacy.erase import EraseError, erase

    config_module.check_runtime(config)
    address = normalize_address(args.address)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"no terminal to confirm the erasure of {address}: give --yes (nothing was erased)"
            )
        if not _confirmed(address):
            raise UsageError(f"not confirmed; nothing of {address} was erased")
    try:
        erasure = erase(config, address)
    except EraseError as exc:
        _print(exc.erasure, args.json, str(exc))
        raise CommandFailed(str(exc)) from None
    _print(erasure, args.json)
    return 1 if erasure.problems else 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta user export`` and ``user erase`` (cli.build_parser)."""
    user = user_actions(commands)
    command = add(
        user, "export", cmd_user_export, "write everything about an account to one archive"
    )
    command.add_argument("address")
    command.add_argument("--to", required=True, metavar="FILE", help="the archive to write")
    command.add_argument(
        "--format", choices=("zip", "tar"), default="zip", help="zip, or tar for tar.gz"
    )
    command.add_argument("--force", action="store_true", help="replace an existing FILE")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"path", "mailboxes", "messages", "octets", "skipped"}',
    )
    command = add(
        user,
        "erase",
        cmd_user_erase,
        "remove an account and everything about it, for good (asks unless --yes)",
    )
    command.add_argument("address")
    command.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"address", "removed": {...}, "backup", "problems"}',
    )
