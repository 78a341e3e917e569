"""``estafeta shared ...``: shared mailboxes, who may do what in them, and
the addresses that deliver into them.

Shared mailboxes live in the shared store (estafeta.store.shared; design in
docs/shared-mailboxes.md) and show under ``Shared/`` in IMAP. The
administrator makes and removes them here; their ACL (rfc4314 rights
``lrswipkxtea``, per account address or ``anyone``) is set here or, by an
account with the ``a`` right, over IMAP SETACL. A top-level one may have
delivery addresses (``info@example.org``): mail to them lands in it. They
are kept in accounts.db with the accounts and aliases they must not clash
with (estafeta.auth.sharedaddresses).

* ``shared list [--json]``: [{"name", "acl": {identifier: rights},
  "addresses": [...]}]
* ``shared set NAME [--acl IDENTIFIER=RIGHTS ...] [--exclusive]
  [--address ADDRESS ...] [--remove-address ADDRESS ...]
  [--exclusive-addresses] [--check] [--json]``: make the mailbox if
  missing and give each identifier exactly those rights (an empty RIGHTS
  takes them all away); ``--exclusive`` also removes the ACL entries not
  named; ``--address`` gives it a delivery address, ``--remove-address``
  takes one away, ``--exclusive-addresses`` takes away those not given
  (the Ansible module's declarative ``addresses``). {"changed",
  "created", "acl", "addresses"}
* ``shared remove NAME [--check] [--json]``: take its addresses away, then
  delete the mailbox with its messages and ACL. {"changed"}
* ``shared reindex``: rebuild the shared store's index from its files, as
  ``estafeta reindex`` does for an account (ACLs are kept; private \\Seen
  is lost: the files cannot hold one per account).

Idempotent: running the same ``set`` twice changes nothing the second
time (``changed`` false), which the Ansible module relies on; ``--check``
says what would change and writes nothing. Exit codes as in cli.py: 0
success, 1 the store refused, 2 bad usage (unknown account, bad rights, an
address that is not in a configured domain or is an account, an alias or
another mailbox's already: the message names it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from estafeta.address import AddressError, normalize_address
from estafeta.auth import AccountError
from estafeta.cli import UsageError, _accounts, _store
from estafeta.config import Config
from estafeta.store import shared
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
    with _store(config) as store:
        acls = store.shared_acls()
    with _accounts(config) as accounts:
        addresses = accounts.shared_addresses()
    names = sorted(set(acls) | set(addresses))
    if args.json:
        print(
            json.dumps(
                [
                    {"name": n, "acl": acls.get(n, {}), "addresses": addresses.get(n, [])}
                    for n in names
                ]
            )
        )
        return 0
    for name in names:
        rights = " ".join(f"{ident}={r}" for ident, r in sorted(acls.get(name, {}).items()))
        mail = ", ".join(addresses.get(name, []))
        print("  ".join(filter(None, (f"Shared/{name}", rights, mail and f"(mail to {mail})"))))
    return 0


def _addresses(
    config: Config, name: str, args: argparse.Namespace, dry_run: bool
) -> tuple[bool, list[str]]:
    """``--address`` / ``--remove-address`` checked (dry_run) or written:
    (changed, the addresses after). A refusal is bad usage naming the address."""
    add, remove = args.address or [], args.remove_address or []
    exclusive = args.exclusive_addresses
    with _accounts(config) as accounts:
        if not (add or remove or exclusive):
            return False, accounts.shared_addresses(name).get(name, [])
        if "/" in name:
            if not add:
                return False, []  # nothing to take away: a child never has one
            raise UsageError(
                f"--address: Shared/{name} is not top-level; only a top-level shared"
                " mailbox has delivery addresses"
            )
        try:
            return accounts.set_shared_addresses(
                name, add, remove, exclusive=exclusive, dry_run=dry_run
            )
        except AccountError as exc:
            raise UsageError(f"--address: {exc}") from None


def cmd_shared_set(config: Config, args: argparse.Namespace) -> int:
    name = _name(args.name)
    wanted = _entries(config, args.acl or [])
    # Checked before anything is written: a refused address leaves no new mailbox.
    addresses_changed, addresses = _addresses(config, name, args, dry_run=True)
    with _store(config) as store:
        with store.reader(shared.OWNER) as reader:
            box = reader.mailbox(name)
            current = dict(reader.acl(box.id)) if box is not None else {}
        created = box is None
        after = dict(wanted) if args.exclusive else {**current, **wanted}
        changed = created or after != current or addresses_changed
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
    if addresses_changed and not args.check:
        # After the mailbox exists: an address never names a missing one.
        _, addresses = _addresses(config, name, args, dry_run=False)
    verb = "would change" if args.check and changed else "changed" if changed else "unchanged"
    _print(
        args,
        {"changed": changed, "created": created, "acl": after, "addresses": addresses},
        f"Shared/{name}: {verb}",
    )
    return 0


def cmd_shared_remove(config: Config, args: argparse.Namespace) -> int:
    name = _name(args.name)
    with _accounts(config) as accounts:
        # First, so that no address is left naming a deleted mailbox.
        had = accounts.forget_shared_addresses(name, dry_run=args.check)
    with _store(config) as store:
        with store.reader(shared.OWNER) as reader:
            exists = reader.mailbox(name) is not None
        if exists and not args.check:
            store.delete_mailbox(shared.OWNER, name)
    changed = exists or bool(had)
    verb = "would remove" if args.check and changed else "removed" if changed else "absent"
    _print(args, {"changed": changed}, f"Shared/{name}: {verb}")
    return 0


def cmd_shared_reindex(config: Config, args: argparse.Namespace) -> int:
    with _store(config) as store:
        count = store.reindex(shared.OWNER)
    print(f"reindexed the shared mailboxes: {count} messages")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    sub = commands.add_parser(
        "shared", help="shared mailboxes (Shared/NAME in IMAP) and their ACLs (rfc4314)"
    ).add_subparsers(dest="shared_command", required=True, metavar="ACTION")
    add(
        sub, "list", cmd_shared_list, "list shared mailboxes, their ACLs and addresses"
    ).add_argument(
        "--json", action="store_true", help='machine-readable: [{"name", "acl", "addresses"}]'
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
    command.add_argument(
        "--address",
        action="append",
        metavar="ADDRESS",
        help="a delivery address for a top-level shared mailbox, in a configured domain and "
        "no account or alias, e.g. info@example.org: mail to it lands here; repeat for more",
    )
    command.add_argument(
        "--remove-address",
        action="append",
        metavar="ADDRESS",
        help="take a delivery address away (none: no change); repeat for more",
    )
    command.add_argument(
        "--exclusive-addresses",
        action="store_true",
        help="take away the delivery addresses not given with --address (all, without one)",
    )
    command.add_argument("--check", action="store_true", help="change nothing, say what would")
    command.add_argument(
        "--json", action="store_true", help='{"changed", "created", "acl", "addresses"}'
    )
    add(sub, "reindex", cmd_shared_reindex, "rebuild the shared mailboxes' index from their files")
    command = add(
        sub, "remove", cmd_shared_remove, "delete a shared mailbox, its messages and addresses"
    )
    command.add_argument("name")
    command.add_argument("--check", action="store_true", help="change nothing, say what would")
    command.add_argument("--json", action="store_true", help='{"changed"}')
