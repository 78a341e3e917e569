"""``estafeta spam ...``: the learning junk filter of an account (issue 16).

    estafeta spam status ADDRESS [--json]
    estafeta spam train ADDRESS [--spam PATH...] [--ham PATH...]   files, Maildirs, mboxes
    estafeta spam train ADDRESS --from-mailboxes                     Junk as spam, the rest ham
    estafeta spam reset ADDRESS
    estafeta spam allow | disallow ADDRESS SENDER                    user@domain or @domain
    estafeta spam allowlist ADDRESS [--json]

ADDRESS must be an existing account (normalised as the other commands do).
Exit codes as in cli.py: 0 success; 1 the operation failed (a missing or
unreadable PATH, a SENDER that is neither user@domain nor @domain, a
statistics file that cannot be opened); 2 bad usage (no such account, no
--spam/--ham). Every error is one line on stderr, never a traceback.

``reset`` acts at once and says what it forgot, as ``user del`` does; the
allowlist is kept (``disallow`` takes entries off).

``train`` checks every PATH before it learns anything, then prints one line
per PATH: learned (new), relearned (trained the other way before),
unchanged (already trained so), errors (not readable as a message) and
skipped (larger than 10 MiB). It streams: one message read at a time
(readers.MessageSource), 50 in a transaction (JunkFilter.train_from), so a
2 GB mbox takes as little memory as a small one.

The server may run meanwhile: the statistics are SQLite files it shares
(busy timeout), and a training by the CLI counts for the next delivery.

``--json``: ``status`` {"account", "spam", "ham", "tokens", "size", "path",
"ready", "min_spam", "min_ham"}; ``allowlist`` ["entry", ...].
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from estafeta.cli import CommandFailed, UsageError, _existing_account
from estafeta.config import Config
from estafeta.spam import STATS_ERRORS, JunkFilter
from estafeta.spam.filter import TrainReport, allow_entry
from estafeta.spam.readers import MessageSource

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]

# Folders --from-mailboxes learns as spam, and those it leaves out (rfc6154
# names, as the server creates them; "Spam" as other servers name Junk).
_SPAM_FOLDERS = {"Junk", "Spam"}
_SKIPPED_FOLDERS = {"Trash", "Drafts"}


@contextmanager
def _junk(config: Config) -> Iterator[JunkFilter]:
    """The filter; a statistics file that cannot be opened or written
    (permissions, a full disk, a file where the directory should be) is one
    line naming it, exit 1."""
    if config.store.cluster:
        from estafeta.cluster_node import cli_spam_store

        # The statistics every node shares; a database error is one line too.
        with (
            cli_spam_store(config) as store,
            JunkFilter(config.spam_dir, config.spam.settings, store=store) as junk,
        ):
            yield junk
        return
    try:
        with JunkFilter(config.spam_dir, config.spam.settings) as junk:
            yield junk
    except STATS_ERRORS as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandFailed(f"{config.spam_dir}: the junk filter's statistics: {detail}") from None


def cmd_spam_status(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    settings = config.spam.settings
    with _junk(config) as junk:
        status = junk.status(address)
    ready = status.spam >= settings.min_spam and status.ham >= settings.min_ham
    if args.json:
        print(json.dumps({
            "account": address, "spam": status.spam, "ham": status.ham,
            "tokens": status.tokens, "size": status.size, "path": status.path,
            "ready": ready, "min_spam": settings.min_spam, "min_ham": settings.min_ham,
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


def _source(raw: str) -> MessageSource:
    """PATH as a message source, or one line naming it (exit 1)."""
    try:
        return MessageSource(Path(raw))
    except FileNotFoundError:
        raise CommandFailed(f"{raw}: no such file or directory") from None
    except OSError as exc:
        raise CommandFailed(f"{raw}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a directory that is not a Maildir
        raise CommandFailed(str(exc)) from None


def _read(source: MessageSource) -> Iterator[bytes]:
    """The messages of ``source``; a read error (a file gone, EIO, a
    permission) stops the training with one line naming the path."""
    messages = iter(source)
    while True:
        try:
            message = next(messages)
        except StopIteration:
            return
        except OSError as exc:
            where = exc.filename or source.path
            raise CommandFailed(f"{where}: {exc.strerror or exc}") from None
        yield message


def _train(junk: JunkFilter, address: str, source: MessageSource, spam: bool, what: str) -> None:
    report = junk.train_from(address, _read(source), spam)
    _report(what, report, source.skipped)


def cmd_spam_train(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    if args.from_mailboxes:
        if args.spam or args.ham:
            raise UsageError("--from-mailboxes takes no --spam/--ham")
        return _train_from_mailboxes(config, address)
    if not (args.spam or args.ham):
        raise UsageError("give --spam PATH... and/or --ham PATH... (or --from-mailboxes)")
    # Every PATH is checked before anything is learned.
    sources = [(_source(raw), True) for raw in args.spam or ()]
    sources += [(_source(raw), False) for raw in args.ham or ()]
    with _junk(config) as junk:
        for source, spam in sources:
            what = f"{source.path} ({source.kind}, {'spam' if spam else 'ham'})"
            _train(junk, address, source, spam, what)
    return 0


def _train_from_mailboxes(config: Config, address: str) -> int:
    from estafeta.store import Store, maildir

    if config.store.cluster:
        raise UsageError(
            "--from-mailboxes reads a local store's folders; on a cluster node train from"
            " files (--spam PATH, --ham PATH), or move mail into and out of Junk over IMAP"
        )

    account_dir = Store(config.mail_dir, config.hostname).account_dir(address)
    if not account_dir.is_dir():
        print(f"{address}: no mail yet, nothing to learn from")
        return 0
    with _junk(config) as junk:
        for folder in sorted(maildir.folders(account_dir)):
            name = folder.lstrip(".") or "INBOX"
            spam = name in _SPAM_FOLDERS
            if name in _SKIPPED_FOLDERS:
                continue
            source = _source(str(account_dir / folder) if folder else str(account_dir))
            _train(junk, address, source, spam, f"{name} as {'spam' if spam else 'ham'}")
    return 0


def cmd_spam_reset(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _junk(config) as junk:
        before = junk.status(address)
        junk.reset(address)
    # As user del: no question asked, what went is printed.
    print(f"reset {address}: forgot {before.spam} spam, {before.ham} ham, {before.tokens} tokens")
    return 0


def _entry(sender: str) -> str:
    try:
        return allow_entry(sender)
    except ValueError as exc:
        raise CommandFailed(str(exc)) from None


def cmd_spam_allow(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    entry = _entry(args.sender)
    with _junk(config) as junk:
        added = junk.allow(address, entry)
    if not added:
        raise CommandFailed(f"{address}: the allowlist is full")
    print(f"{address}: {entry} allowed")
    return 0


def cmd_spam_disallow(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    entry = _entry(args.sender)
    with _junk(config) as junk:
        removed = junk.disallow(address, entry)
    if not removed:
        raise CommandFailed(f"{address}: {entry} is not on the allowlist")
    print(f"{address}: {entry} removed from the allowlist")
    return 0


def cmd_spam_allowlist(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
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
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"account", "spam", "ham", "tokens", "size", "path", "ready",'
        ' "min_spam", "min_ham"}',
    )
    command = add(spam, "train", cmd_spam_train, "teach it spam or ham from files")
    command.add_argument("address")
    command.add_argument("--spam", nargs="+", metavar="PATH", help="spam: files, Maildirs, mboxes")
    command.add_argument("--ham", nargs="+", metavar="PATH", help="not spam: the same")
    command.add_argument(
        "--from-mailboxes",
        action="store_true",
        help="learn from the account's own mail: Junk as spam, the other folders"
        " (not Trash, Drafts) as ham",
    )
    command = add(spam, "reset", cmd_spam_reset, "forget everything an account's filter learned")
    command.add_argument("address")
    for name, func, text in (
        ("allow", cmd_spam_allow, "never judge mail from SENDER (user@domain or @domain) spam"),
        ("disallow", cmd_spam_disallow, "take SENDER off the account's allowlist"),
    ):
        command = add(spam, name, func, text)
        command.add_argument("address")
        command.add_argument("sender")
    command = add(spam, "allowlist", cmd_spam_allowlist, "the account's allowed senders")
    command.add_argument("address")
    command.add_argument("--json", action="store_true", help="machine-readable: [entry, ...]")
