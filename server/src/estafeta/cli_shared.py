"""``estafeta shared ...``: shared mailboxes and who may do what in them.

Shared mailboxes live in the shared store (estafeta.store.shared; design in
docs/shared-mailboxes.md) and show under ``Shared/`` in IMAP. The
administrator makes and removes them here; their ACL (rfc4314 rights
``lrswipkxtea``, per account address or ``anyone``) is set here or, by an
account with the ``a`` right, over IMAP SETACL.

* ``shared list [--json]``: [{"name", "acl": {identifier: rights}}]
* ``shared set NAME [--acl IDENTIFIER=RIGHTS ...] [--exclusive] [--check]
  [--json]``: make the mailbox if missing and give each identifier exactly
  those rights (an empty RIGHTS takes them all away); ``--exclusive`` also
  removes the entries not named. {"changed", "created", "acl"}
* ``shared remove NAME [--check] [--json]``: delete the mailbox with its
  messages and ACL. {"changed"}
* ``shared reindex``: rebuild the shared store's index from its files, as
  ``estafeta reindex`` does for an account (ACLs are kept; private \\Seen
  is lost: the files cannot hold one per account).

Idempotent: running the same ``set`` twice changes nothing the second
time (``changed`` false), which the Ansible module relies on; ``--check``
says what would change and writes nothing. Exit codes as in cli.py: 0
success, 1 the store refused, 2 bad usage (unknown account, bad rights).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from estafeta.address import AddressError, normalize_address
from estafeta.cli import UsageError, _accounts
from estafeta.config import Config
from estafeta.store import Store, shared
from estafeta.store.names import MailboxError, check_name

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def _name(text: str) -> str:
    try:
        name = check_name(text)
    except MailboxError as exc:
        raise UsageError(f"bad shared mailbox name {text!r}: {exc}") from None
    if name.upper() == "INBOX" or name.split("/")[0].upper() == "INBOX":
        raise UsageError("INBOX cannot be a shared mailbox")
    return name


def _entries(config: Config, specs: list[str]) -> dict[str, str]:
    """IDENTIFIER=RIGHTS arguments: identifiers checked (an account, or
    anyone), rights canonical."""
    wanted: dict[str, str] = {}
    with _accounts(config) as accounts:
        for spec in specs:
            ident, sep, rights = spec.partition("=")
            if not sep:
                raise UsageError(f"--acl {spec!r}: expected IDENTIFIER=RIGHTS")
            try:
                ident = shared.identifier(ident.strip())
                if ident != shared.ANYONE:
                    ident = normalize_address(ident)
                    if not accounts.exists(ident):
                        raise UsageError(f"--acl {spec!r}: no account {ident}")
                wanted[ident] = shared.parse_rights(rights.strip())
            except (ValueError, AddressError) as exc:
                raise UsageError(f"--acl {spec!r}: {exc}") from None
    return wanted


def _print(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result, sort_keys=True) if args.json else text)


def cmd_shared_list(config: Config, args: argparse.Namespace) -> int:
    with Store(config.mail_dir, config.hostname) as store:
        acls = store.shared_acls()
    if args.json:
        print(json.dumps([{"name": n, "acl": a} for n, a in sorted(acls.items())]))
        return 0
    for name, entries in sorted(acls.items()):
        rights = " ".join(f"{ident}={r}" for ident, r in sorted(entries.items()))
        print(f"Shared/{name}  {rights}")
    return 0


def cmd_shared_set(config: Config, args: argparse.Namespace) -> int:
    name = _name(args.name)
    wanted = _entries(config, args.acl or [])
    with Store(config.mail_dir, config.hostname) as store:
        with store.reader(shared.OWNER) as reader:
            box = reader.mailbox(name)
            current = dict(reader.acl(box.id)) if box is not None else {}
        created = box is None
        after = dict(wanted) if args.exclusive else {**current, **wanted}
        changed = created or after != current
        if changed and not args.check:
            if created:
                store.create_mailbox(shared.OWNER, name)
                # A new child took its parent's ACL (rfc4314:4); exact from here.
                with store.reader(shared.OWNER) as reader:
                    made = reader.mailbox(name)
                    current = dict(reader.acl(made.id)) if made is not None else {}
                if not args.exclusive:
                    after = {**current, **wanted}
            for ident in sorted(set(current) - set(after)):
                store.set_acl(name, ident, None)
            for ident, rights in sorted(after.items()):
                store.set_acl(name, ident, rights)
    verb = "would change" if args.check and changed else "changed" if changed else "unchanged"
    _print(
        args,
        {"changed": changed, "created": created, "acl": after},
        f"Shared/{name}: {verb}",
    )
    return 0


def cmd_shared_remove(config: Config, args: argparse.Namespace) -> int:
    name = _name(args.name)
    with Store(config.mail_dir, config.hostname) as store:
        with store.reader(shared.OWNER) as reader:
            exists = reader.mailbox(name) is not None
        if exists and not args.check:
            store.delete_mailbox(shared.OWNER, name)
    verb = "would remove" if args.check and exists else "removed" if exists else "absent"
    _print(args, {"changed": exists}, f"Shared/{name}: {verb}")
    return 0


def cmd_shared_reindex(config: Config, args: argparse.Namespace) -> int:
    with Store(config.mail_dir, config.hostname) as store:
        count = store.reindex(shared.OWNER)
    print(f"reindexed the shared mailboxes: {count} messages")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    sub = commands.add_parser(
        "shared", help="shared mailboxes (Shared/NAME in IMAP) and their ACLs (rfc4314)"
    ).add_subparsers(dest="shared_command", required=True, metavar="ACTION")
    add(sub, "list", cmd_shared_list, "list shared mailboxes and their ACLs").add_argument(
        "--json", action="store_true", help='machine-readable: [{"name", "acl"}]'
    )
    command = add(
        sub, "set", cmd_shared_set, "make a shared mailbox if missing and set rights in its ACL"
    )
    command.add_argument("name", help="the name under Shared/, e.g. info or info/2026")
    command.add_argument(
        "--acl",
        action="append",
        metavar="IDENTIFIER=RIGHTS",
        help="an account address (or anyone) and its rfc4314 rights, e.g. "
        "alice@example.org=lrswipkxtea; repeat for more",
    )
    command.add_argument(
        "--exclusive", action="store_true", help="remove the ACL entries not given with --acl"
    )
    command.add_argument("--check", action="store_true", help="change nothing, say what would")
    command.add_argument("--json", action="store_true", help='{"changed", "created", "acl"}')
    add(sub, "reindex", cmd_shared_reindex, "rebuild the shared mailboxes' index from their files")
    command = add(sub, "remove", cmd_shared_remove, "delete a shared mailbox and its messages")
    command.add_argument("name")
    command.add_argument("--check", action="store_true", help="change nothing, say what would")
    command.add_argument("--json", action="store_true", help='{"changed"}')
