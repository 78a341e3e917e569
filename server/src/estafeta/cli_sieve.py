"""``estafeta sieve ...``: the mail rules (Sieve, rfc5228) of accounts.

The scripts are those ManageSieve manages (rfc5804): several per account,
at most one active, each checked by the compiler before it is stored
(``ScriptStore`` in sieve/scripts.py owns the files). ``check`` and ``test``
compile a file under the configured ``[sieve]`` limits; ``test`` runs it the
way a delivery would (with the global scripts, the account's aliases as its
addresses, includes from the store) and prints the actions, delivering
nothing and remembering nothing.

Exit codes as in cli.py: 0 success, 1 the operation failed (a script the
store refuses: syntax, quota, the active one deleted, ...), 2 bad usage (no
such account, unreadable file). ``check`` and ``test`` exit 2 with
``FILE:line:column: message`` on stderr when the script does not compile.

``--json`` output: ``list`` [{"name", "active"}]; ``put`` {"changed", "active"};
``test`` {"actions": [action.to_json(), ...], "errors": [...] (only when a
runtime error made the implicit keep)}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from estafeta.address import AddressError, normalize_address
from estafeta.cli import CommandFailed, UsageError, _accounts, _existing_account
from estafeta.config import Config

if TYPE_CHECKING:
    from email.message import EmailMessage

    from estafeta import sieve
    from estafeta.sieve.scripts import Scripts

_T = TypeVar("_T")

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def _sieve_limits(config: Config) -> sieve.Limits:
    from estafeta import sieve

    return sieve.Limits.from_config(config.sieve)


@contextlib.contextmanager
def _script_store(config: Config) -> Iterator[Scripts]:
    """The account scripts: this host's files, or on a cluster node
    ([store] backend = "cluster") the scripts every node shares."""
    from estafeta import sieve
    from estafeta.sieve.scripts import ScriptStore

    limits = _sieve_limits(config)

    def compile_script(text: str) -> sieve.Compiled:
        return sieve.compile_script(text, limits=limits)

    if config.store.cluster:
        from estafeta.cluster_node import cli_scripts

        with cli_scripts(config, compile_script) as shared:
            yield shared
        return
    yield ScriptStore(
        config.sieve_dir,
        max_script_size=config.sieve.max_script_size,
        max_scripts=config.sieve.max_scripts,
        compile=compile_script,
    )


def _read_input(source: str, limit: int, what: str) -> bytes:
    """FILE, or standard input for "-": at most ``limit`` octets, or a UsageError."""
    try:
        if source == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(source, "rb") as stream:
                data = stream.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{source}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UsageError(f"{source}: the {what} is larger than {limit} octets")
    return data


def _script_text(data: bytes, source: str) -> str:
    """A script's bytes as text; rfc5228:1 — scripts are UTF-8. The error
    names the line:column of the first bad octet (columns count characters)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise UsageError(f"{source}:{line}:{column}: not valid UTF-8") from None


def _source_name(source: str) -> str:
    return "<stdin>" if source == "-" else source


def _store_call(call: Callable[[], _T], address: str, *, source: str = "") -> _T:
    """Run a ScriptStore operation; its ScriptError becomes one clear line."""
    from estafeta.sieve.scripts import ScriptError

    try:
        return call()
    except ScriptError as exc:
        if exc.code == "SYNTAX" and source:
            raise CommandFailed(f"{source}:{exc.message} (not stored)") from None
        if exc.code == "ACTIVE":
            raise CommandFailed(
                f"{address}: {exc.message}: deactivate it first "
                f"(estafeta sieve deactivate {address})"
            ) from None
        raise CommandFailed(f"{address}: {exc.message}") from None


def cmd_sieve_list(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _script_store(config) as store:
        scripts = _store_call(lambda: store.list(address), address)
    if args.json:
        # [{"name", "active": bool}], sorted by name
        print(json.dumps([{"name": n, "active": a} for n, a in scripts], indent=2))
        return 0
    for name, active in scripts:
        print(f"{name} (active)" if active else name)
    return 0


def cmd_sieve_get(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _script_store(config) as store:
        text = _store_call(lambda: store.get(address, args.name), address)
    # Exactly the stored text, as UTF-8 whatever the locale says.
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.flush()
    return 0


def cmd_sieve_put(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    source = _source_name(args.file)
    text = _script_text(_read_input(args.file, config.sieve.max_script_size, "script"), source)
    with _script_store(config) as store:
        changed = _store_call(lambda: store.put(address, args.name, text), address, source=source)
        if args.activate:
            changed = _store_call(lambda: store.activate(address, args.name), address) or changed
        # Names are stored in NFC (rfc5804:1.6): look for it in that form.
        name = unicodedata.normalize("NFC", args.name)
        active = (name, True) in _store_call(lambda: store.list(address), address)
    if args.json:
        print(json.dumps({"changed": changed, "active": active}))  # {"changed", "active"}
        return 0
    state = "stored" if changed else "unchanged:"
    print(f"{state} {args.name} of {address}{' (active)' if active else ''}")
    return 0


def cmd_sieve_activate(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _script_store(config) as store:
        changed = _store_call(lambda: store.activate(address, args.name), address)
    print(f"{args.name} {'is now' if changed else 'was already'} the active script of {address}")
    return 0


def cmd_sieve_deactivate(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _script_store(config) as store:
        changed = _store_call(lambda: store.activate(address, None), address)
    print(f"{address} {'no longer has' if changed else 'had no'} active script")
    return 0


def cmd_sieve_delete(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _script_store(config) as store:
        _store_call(lambda: store.delete(address, args.name), address)
    print(f"deleted {args.name} of {address}")
    return 0


def _compile_file(config: Config, source: str) -> sieve.Compiled:
    """Compile FILE (or stdin) under the configured limits; a syntax error is
    printed as ``FILE:line:column: message`` and raised as _SyntaxFailed."""
    from estafeta import sieve

    name = _source_name(source)
    data = _read_input(source, config.sieve.max_script_size, "script")
    try:
        return sieve.compile_script(data, name=name, limits=_sieve_limits(config))
    except sieve.SieveError as exc:
        # Like a compiler: one line an editor can jump to.
        print(f"{name}:{exc}", file=sys.stderr)
        raise _SyntaxFailed from None


class _SyntaxFailed(Exception):
    """The script did not compile; the error is already on stderr (exit 2)."""


def cmd_sieve_check(config: Config, args: argparse.Namespace) -> int:
    try:
        _compile_file(config, args.file)
    except _SyntaxFailed:
        return 2
    print("ok")
    return 0


def _header_address(message: EmailMessage, *names: str) -> str:
    """The first address in the first of these header fields that has one."""
    from email.utils import getaddresses

    for name in names:
        values = message.get_all(name) or []
        for _, address in getaddresses([str(v) for v in values]):
            if address:
                return address
    return ""


def cmd_sieve_test(config: Config, args: argparse.Namespace) -> int:
    """What a delivery would do with a message: the actions, nothing delivered."""
    from email import policy as email_policy
    from email.parser import BytesParser

    from estafeta import sieve

    if args.script == "-" and args.message == "-":
        raise UsageError("only one of --script and --message can be - (standard input)")
    try:
        script = _compile_file(config, args.script)
    except _SyntaxFailed:
        return 2
    raw = _read_input(args.message, config.limits.max_message_size, "message")
    # The message as delivery sees it: CRLF line ends.
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    headers = BytesParser(policy=email_policy.default).parsebytes(raw, headersonly=True)
    # rfc5228:5.4 — the envelope: given, or taken from the message as a delivery agent would.
    sender = args.sender
    if sender is None:
        # Return-Path: <> is the null sender; without one, Sender or From.
        return_path = headers.get("Return-Path")
        if return_path is not None:
            sender = _header_address(headers, "Return-Path")
        else:
            sender = _header_address(headers, "Sender", "From")
    recipient = args.recipient or _header_address(headers, "Delivered-To", "To", "Cc")
    if not recipient:
        raise UsageError("no recipient: give --to ADDRESS (the message has no To either)")
    now = datetime.now(UTC)
    if args.now:
        try:
            now = datetime.fromisoformat(args.now)
        except ValueError:
            raise UsageError(
                f"--now {args.now!r}: use a date like 2026-12-24 or 2026-12-24T09:30"
            ) from None
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    account, addresses = _test_account(config, recipient)
    with _script_store(config) as store:
        from estafeta.delivery.rules import Rules, RulesError

        try:
            rules = Rules(config.sieve, store, _sieve_limits(config))
        except RulesError as exc:
            raise UsageError(str(exc)) from None
        scripts = [script] if args.no_global else [*rules.before, script, *rules.after]
        context = sieve.Context(
            message=raw,
            envelope=sieve.Envelope(sender=sender, recipient=recipient),
            account=account,
            addresses=addresses,
            now=now,
            environment={
                "domain": account.rpartition("@")[2],
                "host": config.hostname,
                "location": "MDA",
                "phase": "during",
                "name": "estafeta",
            },
            # Nothing is remembered: every duplicate test answers "not seen".
            seen=lambda key, seconds: False,
            load_include=lambda location, name: rules.include(account, location, name),
        )
        result = sieve.run(scripts, context, _sieve_limits(config))
    actions = [action.to_json() for action in result.actions]
    if args.json:
        document: dict[str, Any] = {"actions": actions}
        if result.errors:
            document["errors"] = list(result.errors)
        print(json.dumps(document))
        return 0
    print(f"from <{sender}> to <{recipient}> (account {account}):")
    for action in actions:
        print(f"  {_describe_action(action)}")
    for error in result.errors:
        print(f"error: {error} (so: the implicit keep)")
    if result.message is not None:
        print("the message's header was edited (editheader)")
    return 0


def _test_account(config: Config, recipient: str) -> tuple[str, list[str]]:
    """The account a delivery to ``recipient`` reaches (aliases and
    subaddresses resolved) and its addresses; the recipient itself when it
    is no account here, so a script can be tried without one."""
    try:
        normalized = normalize_address(recipient)
    except AddressError as exc:
        raise UsageError(f"--to {recipient!r}: {exc}") from None
    with _accounts(config) as accounts:
        targets = [t for t in accounts.resolve(normalized) or [] if accounts.exists(t)]
        if not targets:
            return normalized, [normalized]
        account = targets[0]
        addresses = [account] + [
            source
            for source, goes_to in accounts.list_aliases().items()
            if not source.startswith("@") and goes_to == [account]
        ]
    return account, addresses


def _describe_action(action: dict[str, Any]) -> str:
    """One action of ``sieve test`` for people: ``fileinto "Lists/dev" flags \\Seen``."""
    words = [str(action["action"])]
    if action["action"] == "keep":
        words.append(str(action.get("mailbox", "INBOX")))
    elif "mailbox" in action:
        words.append(json.dumps(action["mailbox"], ensure_ascii=False))
    if "address" in action:
        words.append(f"<{action['address']}>")
    if "to" in action:
        words.append(f"to <{action['to']}>")
    if action.get("subject"):
        words.append(f"subject {json.dumps(action['subject'], ensure_ascii=False)}")
    if "reason" in action:
        words.append(json.dumps(action["reason"], ensure_ascii=False))
    if action.get("flags"):
        words.append("flags " + " ".join(action["flags"]))
    if action.get("copy"):
        words.append(":copy")
    if action.get("create"):
        words.append(":create")
    return " ".join(words)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta sieve ...`` to the command's parser (cli.build_parser)."""

    sieve_parser = commands.add_parser(
        "sieve", help="mail rules (Sieve scripts) of accounts"
    ).add_subparsers(dest="sieve_command", required=True, metavar="ACTION")
    command = add(sieve_parser, "list", cmd_sieve_list, "list an account's scripts")
    command.add_argument("address")
    command.add_argument(
        "--json", action="store_true", help='machine-readable: [{"name", "active"}]'
    )
    command = add(sieve_parser, "get", cmd_sieve_get, "print one script of an account")
    command.add_argument("address")
    command.add_argument("name")
    command = add(
        sieve_parser,
        "put",
        cmd_sieve_put,
        "store a script (checked first; a script that does not compile is refused)",
    )
    command.add_argument("address")
    command.add_argument("name")
    command.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="the script (default -: stdin)"
    )
    command.add_argument("--activate", action="store_true", help="also make it the active one")
    command.add_argument(
        "--json", action="store_true", help='machine-readable: {"changed", "active"}'
    )
    command = add(sieve_parser, "activate", cmd_sieve_activate, "make a script the one that runs")
    command.add_argument("address")
    command.add_argument("name")
    add(
        sieve_parser, "deactivate", cmd_sieve_deactivate, "run no script of an account"
    ).add_argument("address")
    command = add(sieve_parser, "delete", cmd_sieve_delete, "delete a script (not the active one)")
    command.add_argument("address")
    command.add_argument("name")
    add(
        sieve_parser,
        "check",
        cmd_sieve_check,
        "compile a script: ok, or exit 2 with FILE:line:column: message",
    ).add_argument("file", metavar="FILE", help="the script (- for stdin)")
    command = add(
        sieve_parser,
        "test",
        cmd_sieve_test,
        "print the actions a delivery of a message would take (nothing is delivered)",
    )
    command.add_argument("--script", required=True, metavar="FILE", help="the script to try")
    command.add_argument(
        "--message", required=True, metavar="FILE", help="the message (- for stdin)"
    )
    command.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help='envelope sender (default Return-Path, Sender or From; "" for the null sender)',
    )
    command.add_argument(
        "--to",
        dest="recipient",
        metavar="ADDRESS",
        help="envelope recipient (default Delivered-To, To or Cc)",
    )
    command.add_argument(
        "--now", metavar="DATE", help="the current date for date tests (ISO 8601; default now)"
    )
    command.add_argument(
        "--no-global",
        action="store_true",
        help="leave out the [sieve] global_before/global_after scripts",
    )
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: {"actions": [{"action", ...}], "errors": [...] if any}',
    )
