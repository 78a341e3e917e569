"""``estafeta spam ...``: the learning junk filter of an account (issue 16).

    estafeta spam status ADDRESS [--json]
    estafeta spam train ADDRESS (--spam | --ham) PATH...     files, Maildirs or mboxes
    estafeta spam train ADDRESS --from-mailboxes              Junk as spam, the rest as ham
    estafeta spam reset ADDRESS --yes
    estafeta spam allow | disallow ADDRESS SENDER              user@domain or @domain
    estafeta spam allowlist ADDRESS [--json]

The server may run meanwhile: the statistics are SQLite files it shares
(busy timeout), and a training by the CLI counts for the next delivery.
Training streams: one batch of messages in memory at a time, whatever the
size of the mbox.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from estafeta.address import normalize_address
from estafeta.auth import Accounts
from estafeta.cli import CommandFailed, UsageError
from estafeta.config import Config
from estafeta.spam import JunkFilter
from estafeta.spam.filter import TrainReport
from estafeta.spam.readers import MessageSource, read_maildir
from estafeta.store import maildir

Add = Callable[..., argparse.ArgumentParser]

# Folders never read as ham by --from-mailboxes (rfc6154 names as created).
_NOT_HAM = {"Junk", "Spam", "Trash", "Drafts"}


def _account(config: Config, raw: str) -> str:
    address = normalize_address(raw)
    with Accounts(config.accounts_db, config.domains) as accounts:
        if not accounts.exists(address):
            raise CommandFailed(f"no such account: {address}")
    return address


def _junk(config: Config) -> JunkFilter:
    return JunkFilter(config.spam_dir, config.spam.settings)


def cmd_spam_status(config: Config, args: argparse.Namespace) -> int:
    address = _account(config, args.address)
    settings = config.spam.settings
    with _junk(config) as junk:
        status = junk.status(address)
    ready = status.spam >= settings.min_spam and status.ham >= settings.min_ham
    if args.json:
        print(json.dumps({
            "account": address, "spam": status.spam, "ham": status.ham,
            "tokens": status.tokens, "size": status.size, "ready": ready,
            "min_spam": settings.min_spam, "min_ham": settings.min_ham,
        }))  # fmt: skip
        return 0
    print(f"{address}: trained {status.spam} spam, {status.ham} ham; {status.tokens} tokens,")
    print(f"  {status.size} bytes in {status.path}")
    if ready:
        print("  verdicts count: the filter files spam into Junk")
    else:
        print(
            f"  not enough training yet: verdicts count from {settings.min_spam} spam"
            f" and {settings.min_ham} ham"
        )
    return 0


def _report(what: str, report: TrainReport, skipped: int) -> None:
    print(
        f"{what}: {report.learned} learned, {report.relearned} relearned,"
        f" {report.unchanged} unchanged, {report.errors} errors, {skipped} skipped"
    )


def cmd_spam_train(config: Config, args: argparse.Namespace) -> int:
    address = _account(config, args.address)
    if args.from_mailboxes:
        if args.spam or args.ham:
            raise UsageError("--from-mailboxes takes no --spam/--ham")
        return _train_from_mailboxes(config, address)
    if not (args.spam or args.ham):
        raise UsageError("give --spam PATH... or --ham PATH... (or --from-mailboxes)")
    sources: list[MessageSource] = []
    for raw in args.spam or args.ham:
        path = Path(raw)
        try:
            sources.append(MessageSource(path))
        except FileNotFoundError:
            raise CommandFailed(f"{raw}: no such file or directory") from None
        except (ValueError, OSError) as exc:
            raise CommandFailed(str(exc)) from None
    with _junk(config) as junk:
        for source in sources:
            try:
                report = junk.train_from(address, source, bool(args.spam))
            except OSError as exc:
                raise CommandFailed(f"{source.path}: {exc.strerror or exc}") from None
            _report(f"{source.path} ({source.kind})", report, source.skipped)
    return 0


def _train_from_mailboxes(config: Config, address: str) -> int:
    from estafeta.store import Store

    account_dir = Store(config.mail_dir, config.hostname).account_dir(address)
    if not account_dir.is_dir():
        print(f"{address}: no mail yet, nothing to learn from")
        return 0
    with _junk(config) as junk:
        for folder in maildir.folders(account_dir):
            name = folder.lstrip(".") or "INBOX"
            spam = name in ("Junk", "Spam")
            if not spam and name in _NOT_HAM:
                continue
            report = junk.train_from(address, read_maildir(account_dir / folder), spam)
            _report(f"{name} as {'spam' if spam else 'ham'}", report, 0)
    return 0


def cmd_spam_reset(config: Config, args: argparse.Namespace) -> int:
    address = _account(config, args.address)
    if not args.yes:
        raise UsageError("this forgets all of the account's training: add --yes")
    with _junk(config) as junk:
        junk.reset(address)
    print(f"{address}: training forgotten")
    return 0


def cmd_spam_allow(config: Config, args: argparse.Namespace) -> int:
    address = _account(config, args.address)
    with _junk(config) as junk:
        try:
            added = junk.allow(address, args.sender)
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
    if not added:
        raise CommandFailed(f"{address}: the allowlist is full")
    print(f"{address}: {args.sender.strip().lower()} allowed")
    return 0


def cmd_spam_disallow(config: Config, args: argparse.Namespace) -> int:
    address = _account(config, args.address)
    with _junk(config) as junk:
        try:
            removed = junk.disallow(address, args.sender)
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
    if not removed:
        raise CommandFailed(f"{address}: {args.sender} is not on the allowlist")
    print(f"{address}: {args.sender.strip().lower()} removed")
    return 0


def cmd_spam_allowlist(config: Config, args: argparse.Namespace) -> int:
    address = _account(config, args.address)
    with _junk(config) as junk:
        entries = junk.allowed(address)
    if args.json:
        print(json.dumps(entries))
    else:
        for entry in entries:
            print(entry)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta spam ...`` to the command's parser (cli.build_parser)."""
    spam = commands.add_parser("spam", help="the learning junk filter of accounts").add_subparsers(
        dest="spam_command", required=True, metavar="ACTION"
    )
    command = add(spam, "status", cmd_spam_status, "what an account's filter has learned")
    command.add_argument("address")
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command = add(spam, "train", cmd_spam_train, "teach it spam or ham from files")
    command.add_argument("address")
    kind = command.add_mutually_exclusive_group()
    kind.add_argument("--spam", nargs="+", metavar="PATH", help="spam: files, Maildirs or mboxes")
    kind.add_argument("--ham", nargs="+", metavar="PATH", help="not spam: the same")
    command.add_argument(
        "--from-mailboxes",
        action="store_true",
        help="learn from the account's own mail: Junk as spam, the other folders"
        " (not Trash, Drafts) as ham",
    )
    command = add(spam, "reset", cmd_spam_reset, "forget everything an account's filter learned")
    command.add_argument("address")
    command.add_argument("--yes", action="store_true", help="really")
    for name, func, text in (
        ("allow", cmd_spam_allow, "never judge mail from SENDER (user@domain or @domain) spam"),
        ("disallow", cmd_spam_disallow, "take SENDER off the account's allowlist"),
    ):
        command = add(spam, name, func, text)
        command.add_argument("address")
        command.add_argument("sender")
    command = add(spam, "allowlist", cmd_spam_allowlist, "the account's allowed senders")
    command.add_argument("address")
    command.add_argument("--json", action="store_true", help="machine-readable output")
