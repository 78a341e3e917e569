"""The ``estafeta`` command.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or configuration.
``user verify`` answers with its exit code: 0 the password matches, 1 it does
not (and nothing is printed), 2 an error (printed on stderr).
``app-password create`` prints the new password alone on stdout (the rest on
stderr); on an account with TOTP a wrong or reused code is an exit 1.
``sieve check`` and ``sieve test`` (cli_sieve.py) exit 2 with
``FILE:line:column: message`` when the script does not compile.

``--json`` output is for programs (the Ansible modules in ``library/``):
one JSON document on stdout, keys as documented on each command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from estafeta import config as config_module
from estafeta import log as log_module
from estafeta.address import AddressError, normalize_address, normalize_domain
from estafeta.auth import AccountError, Accounts
from estafeta.config import Config, ConfigError
from estafeta.store import Store, StoreError

if TYPE_CHECKING:
    from estafeta.queue.store import QueueBackend

# The DKIM and queue modules are imported by the commands that use them: they
# take longer to import than most commands take to run, and the Ansible
# modules run a few commands per task.

DEFAULT_CONFIG = "/etc/estafeta/estafeta.toml"


class UsageError(Exception):
    pass


class CommandFailed(Exception):
    """The operation failed (exit 1); the message is the one line printed."""


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords differ")
    else:
        raise UsageError("no terminal to ask for a password: use --password-stdin")
    if not password:
        raise UsageError("empty password")
    return password


def _accounts(config: Config) -> Accounts:
    config_module.check_runtime(config)
    if config.store.cluster:
        from estafeta.cluster_node import cli_accounts

        return cli_accounts(config)
    return Accounts(
        config.accounts_db,
        config.domains,
        hasher=config.auth.hasher(),
        scram_iterations=config.auth.scram_iterations,
    )


def cmd_check(config: Config, args: argparse.Namespace) -> int:
    config_module.check_runtime(config)
    listeners = ", ".join(
        f"{name}={'/'.join(str(e) for e in endpoints)}" for name, endpoints in config.listen.items()
    )
    print(
        f"{config.path}: ok ({config.hostname}; domains {', '.join(config.domains)}; "
        f"listen {listeners or 'nothing'})"
    )
    return 0


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    config_module.check_runtime(config)
    log_module.setup(config.log.level, config.log.format)
    from estafeta.server import serve

    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"estafeta: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_user_add(config: Config, args: argparse.Namespace) -> int:
    password = _read_password(args)
    with _accounts(config) as accounts:
        address = accounts.add_user(args.address, password)
    print(f"added {address}")
    return 0


def cmd_user_passwd(config: Config, args: argparse.Namespace) -> int:
    password = _read_password(args)
    with _accounts(config) as accounts:
        accounts.set_password(args.address, password)
    print(f"password changed for {normalize_address(args.address)}")
    return 0


def cmd_user_del(config: Config, args: argparse.Namespace) -> int:
    address = normalize_address(args.address)
    with _accounts(config) as accounts:
        changed = accounts.delete_user(address)
    print(f"deleted {address}")
    for source in changed:
        print(f"  removed from alias {source}")
    if config.store.cluster:
        print("  its mail stays in the cluster's store")
        return 0
    # The mail is kept, out of the way: deleting an account must not lose mail.
    mail = Store(config.mail_dir, config.hostname).account_dir(address)
    if mail.exists():
        target = config.data_dir / "deleted" / f"{address}.{time.strftime('%Y%m%dT%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.move(mail, target)
        print(f"  mail moved to {target}")
    return 0


def cmd_user_verify(config: Config, args: argparse.Namespace) -> int:
    password = _read_password(args)
    # Exit code 1 means "does not match" and nothing else: every error is a 2.
    try:
        with _accounts(config) as accounts:
            address = normalize_address(args.address)
            if not accounts.exists(address):
                raise UsageError(f"no account {address}")
            # Only look: a rehash here would be a write, even in a dry run.
            matches = accounts.verify_password(address, password, rehash=False)
    except (AccountError, AddressError) as exc:
        raise UsageError(str(exc)) from None
    return 0 if matches else 1


def cmd_user_quota(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        address = normalize_address(args.address)
        if args.bytes is not None:
            accounts.set_quota(address, args.bytes)
        quota = accounts.get_quota(address)
    print(f"quota of {address}: {f'{quota} bytes' if quota else 'the global [limits] quota'}")
    return 0


def cmd_user_list(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        quotas = accounts.list_quotas()
    if args.json:
        # [{"address": str, "quota": bytes, 0 = the global [limits] quota}]
        print(json.dumps([{"address": a, "quota": q} for a, q in quotas.items()], indent=2))
        return 0
    for address in quotas:
        print(address)
    return 0


def cmd_normalize(config: Config, args: argparse.Namespace) -> int:
    """The canonical form of addresses (and ``@domain`` catch-alls), as stored."""
    result = []
    for address in args.addresses:
        if address.startswith("@"):
            domain = normalize_domain(address[1:])
            canonical = f"@{domain}"
        else:
            canonical = normalize_address(address)
            domain = canonical.rpartition("@")[2]
        if args.local and domain not in config.domains:
            raise AddressError(
                f"{address}: domain {domain} is not one of the configured domains "
                f"({', '.join(config.domains)})"
            )
        result.append(canonical)
    if args.json:
        print(json.dumps(result))
    else:
        for canonical in result:
            print(canonical)
    return 0


def cmd_alias_add(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        accounts.add_alias(args.source, args.targets)
    print(f"alias {args.source} -> {', '.join(args.targets)}")
    return 0


def cmd_alias_del(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        accounts.delete_alias(args.source)
    print(f"deleted alias {args.source}")
    return 0


def cmd_alias_list(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        aliases = accounts.list_aliases()
    if args.json:
        print(json.dumps(aliases, indent=2))  # {"source": ["target", ...]}
        return 0
    for source, targets in aliases.items():
        print(f"{source} -> {', '.join(targets)}")
    return 0


def _when(timestamp: int | None, never: str = "never") -> str:
    if timestamp is None:
        return never
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _print_qr(data: str) -> None:
    """A QR code on stdout: black on white with ANSI colours on a terminal
    (readable whatever its theme), block characters otherwise."""
    import qrcode  # type: ignore[import-untyped]

    code = qrcode.QRCode(border=2)
    code.add_data(data)
    code.make(fit=True)
    if sys.stdout.isatty():
        code.print_tty(out=sys.stdout)
    else:
        code.print_ascii(out=sys.stdout)
    sys.stdout.flush()


def _write_qr_png(data: str, path: str) -> None:
    """The QR code as a PNG file, readable by its owner only (it holds the secret)."""
    import qrcode
    from qrcode.image.pure import PyPNGImage  # type: ignore[import-untyped]

    image = qrcode.make(data, image_factory=PyPNGImage)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        os.fchmod(stream.fileno(), 0o600)  # if the file was there already
        image.save(stream)


def cmd_totp_enroll(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        address = normalize_address(args.address)
        secret, uri = accounts.totp_enroll(address)
    print(f"TOTP enrolled for {address}; scan this with an authenticator app:")
    _print_qr(uri)
    print(uri)
    print(f"or type the key: {secret}")
    print(
        f"From now on the password of {address} no longer opens IMAP, POP3 or SMTP: "
        f"create app passwords (estafeta app-password create {address} --name DEVICE)."
    )
    if args.png:
        try:
            _write_qr_png(uri, args.png)
        except OSError as exc:
            print(
                f"estafeta: cannot write {args.png}: {exc.strerror}; TOTP is enrolled all "
                "the same: use the code above, or totp disable and enrol again",
                file=sys.stderr,
            )
            return 1
        print(f"QR code written to {args.png}")
    return 0


def cmd_totp_disable(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        address = normalize_address(args.address)
        accounts.totp_disable(address)
    print(f"TOTP disabled for {address}: its password opens IMAP, POP3 and SMTP again")
    return 0


def cmd_totp_status(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        address = normalize_address(args.address)
        enrolled = accounts.totp_enrolled(address)
        count = len(accounts.app_password_list(address))
    if args.json:
        # {"address", "totp": bool, "app_passwords": count}
        print(json.dumps({"address": address, "totp": enrolled, "app_passwords": count}))
        return 0
    state = "enrolled" if enrolled else "not enrolled"
    print(f"{address}: TOTP {state}, {count} app password{'' if count == 1 else 's'}")
    return 0


def _read_totp_code(args: argparse.Namespace) -> str:
    if args.code is not None:
        code: str = args.code
    elif sys.stdin.isatty():
        code = input("TOTP code: ")
    else:
        raise UsageError("no terminal to ask for the TOTP code: use --code")
    return code.strip()


def cmd_app_password_create(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        address = normalize_address(args.address)
        # With TOTP, a person holding the second factor must be present.
        if accounts.totp_enrolled(address) and not accounts.totp_verify(
            address, _read_totp_code(args)
        ):
            raise AccountError(
                f"wrong or already used TOTP code for {address}; no app password was created"
            )
        password = accounts.app_password_create(
            address, args.name, protocols=args.protocols, expires_days=args.expires
        )
        entries = accounts.app_password_list(address)
    (entry,) = [e for e in entries if e["name"] == args.name.strip()]
    print(password)
    print(
        f"app password {entry['name']!r} for {address} ({', '.join(entry['protocols'])}; "
        f"expires {_when(entry['expires'])}): shown only this once",
        file=sys.stderr,
    )
    return 0


def cmd_app_password_list(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        entries = accounts.app_password_list(args.address)
    if args.json:
        # [{"name", "protocols": [...], "created", "expires", "last_used"}], Unix times or null
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        print(
            f"{e['name']}  {','.join(e['protocols'])}  created {_when(e['created'])}  "
            f"expires {_when(e['expires'])}  last used {_when(e['last_used'])}"
        )
    return 0


def cmd_app_password_revoke(config: Config, args: argparse.Namespace) -> int:
    with _accounts(config) as accounts:
        address = normalize_address(args.address)
        accounts.app_password_revoke(address, args.name)
    print(f"revoked app password {args.name.strip()!r} of {address}")
    return 0


def _existing_account(config: Config, address: str) -> str:
    with _accounts(config) as accounts:
        normalized = normalize_address(address)
        if not accounts.exists(normalized):
            raise UsageError(f"no account {normalized}")
    return normalized


def cmd_reindex(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    # What the rebuild repairs (renames an older version could not finish,
    # mailboxes whose folder cannot exist) is logged: show it on stderr.
    log_module.setup("warning", config.log.format)
    if config.store.cluster:
        raise UsageError(
            "reindex rebuilds a local index from its files; a cluster's is PostgreSQL's"
        )
    with Store(config.mail_dir, config.hostname) as store:
        count = store.reindex(address)
    print(f"reindexed {address}: {count} messages")
    return 0


def cmd_mail_ls(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _store(config) as store, store.reader(address) as reader:
        box = reader.mailbox(args.mailbox)
        if box is None:
            raise UsageError(f"{address} has no mailbox {args.mailbox!r}")
        rows = reader.messages(box.id)
    print(f"{address} {box.name}: {len(rows)} messages (UIDVALIDITY {box.uidvalidity})")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.internal_date))
        flags = " ".join(row.flags) or "-"
        print(
            f"{row.uid:>6}  {when}  {row.size:>8}  {flags:<10}  "
            f"{row.summary.from_addr or '-'}  {row.summary.subject}"
        )
    return 0


def cmd_mail_cat(config: Config, args: argparse.Namespace) -> int:
    address = _existing_account(config, args.address)
    with _store(config) as store, store.reader(address) as reader:
        box = reader.mailbox(args.mailbox)
        if box is None:
            raise UsageError(f"{address} has no mailbox {args.mailbox!r}")
        file = reader.message_file(box.id, args.uid)
        if file is None:
            raise UsageError(f"{address} {box.name} has no message with UID {args.uid}")
        data = reader.content(file)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def _store(config: Config) -> contextlib.AbstractContextManager[Store]:
    """The store, started (a cluster node's, connected, when so configured)."""
    if config.store.cluster:
        from estafeta.cluster_node import cli_store

        return cli_store(config)
    return Store(config.mail_dir, config.hostname)


def _queue(config: Config) -> QueueBackend:
    from estafeta.queue.store import QueueStore

    config_module.check_runtime(config)
    if config.store.cluster:
        from estafeta.cluster_node import cli_queue

        return cli_queue(config)
    # The server may be running: leave files of in-flight enqueues alone.
    return QueueStore(config.queue_dir, recover=False)


def cmd_queue_list(config: Config, args: argparse.Namespace) -> int:
    queue = _queue(config)
    try:
        entries = queue.entries()
    finally:
        queue.close()
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    if not entries:
        print("queue is empty")
        return 0
    now = time.time()
    for e in entries:
        age = _ago(now - e.created)
        due = "now" if e.next_attempt <= now else f"in {_ago(e.next_attempt - now)}"
        print(
            f"{e.id}  {e.size:>8}  {age:>6} old  attempts {e.attempts}  next {due}\n"
            f"    from <{e.sender}>  to {', '.join(f'<{r}>' for r in e.recipients)}"
        )
        if e.last_error:
            print(f"    last error: {e.last_error}")
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return 0


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_queue_flush(config: Config, args: argparse.Namespace) -> int:
    queue = _queue(config)
    try:
        count = queue.flush(args.id)
    finally:
        queue.close()
    if args.id and not count:
        print(f"estafeta: no queue entry {args.id}", file=sys.stderr)
        return 1
    print(f"{count} entr{'y' if count == 1 else 'ies'} due now (a running server picks them up)")
    return 0


def cmd_queue_delete(config: Config, args: argparse.Namespace) -> int:
    queue = _queue(config)
    try:
        removed = queue.remove(args.id)
    finally:
        queue.close()
    if not removed:
        print(f"estafeta: no queue entry {args.id}", file=sys.stderr)
        return 1
    print(f"deleted {args.id} (no DSN is sent)")
    return 0


def cmd_dkim_keygen(config: Config, args: argparse.Namespace) -> int:
    from estafeta.policy import dkim
    from estafeta.policy.signer import DKIMKeyError, Signer

    config_module.check_runtime(config)
    domain = normalize_domain(args.domain)
    if domain not in config.domains:
        raise UsageError(f"{domain} is not one of the configured domains")
    signer = Signer(config.dkim_dir)
    try:
        key = signer.keygen(domain, args.selector, args.algorithm, force=args.force)
    except DKIMKeyError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {signer.key_path(domain, args.selector)}", file=sys.stderr)
    print(f"{args.selector}._domainkey.{domain}. IN TXT {_quoted_txt(dkim.txt_record(key))}")
    return 0


def cmd_dkim_list(config: Config, args: argparse.Namespace) -> int:
    from estafeta.policy import dkim
    from estafeta.policy.signer import Signer

    config_module.check_runtime(config)
    signer = Signer(config.dkim_dir)
    # One domain (configured or not: its keys may be left over), or all configured.
    domains = [normalize_domain(args.domain)] if args.domain else list(config.domains)
    keys = [key for domain in domains for key in signer.keys_for(domain)]
    if args.json:
        # [{"domain", "selector", "algorithm": "rsa"|"ed25519", "txt": unquoted record}]
        entries = [
            {
                "domain": key.domain,
                "selector": key.selector,
                "algorithm": key.algorithm,
                "txt": dkim.txt_record(key),
            }
            for key in keys
        ]
        print(json.dumps(entries, indent=2))
        return 0
    for key in keys:
        print(f"{key.selector}._domainkey.{key.domain}. IN TXT {_quoted_txt(dkim.txt_record(key))}")
    return 0


def cmd_dkim_remove(config: Config, args: argparse.Namespace) -> int:
    from estafeta.policy.signer import Signer

    config_module.check_runtime(config)
    domain = normalize_domain(args.domain)
    # The selector names a file: the same rule as keygen, so no path escapes the folder.
    if not args.selector or not all(c.isalnum() or c in "-_" for c in args.selector):
        raise UsageError(f"selector {args.selector!r}: use letters, digits, '-' and '_'")
    path = Signer(config.dkim_dir).key_path(domain, args.selector)
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"estafeta: no DKIM key {path}", file=sys.stderr)
        return 1
    print(f"removed {path} (remove {args.selector}._domainkey.{domain} from DNS too)")
    return 0


def _quoted_txt(value: str) -> str:
    # rfc1035:3.3.14 — character-strings of at most 255 octets each.
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    return " ".join(f'"{chunk}"' for chunk in chunks)


# The modules that add commands of their own, in the order of the list of
# commands, and the modules each command word needs. Importing all of them
# takes longer than most commands take to run (the DMARC sender, ACME, the
# privacy tools), and estafeta runs thousands of times in the tests, in the
# Ansible modules and in cron: only the named command's are imported.
MODULE_ORDER = (
    "cli_sieve",  # the sieve commands are many
    "cli_spam",
    "cli_retention",  # retention run, user retention (issue 18)
    "cli_privacy",  # user export / user erase (issue 18)
    "cli_backup",
    "cli_shared",  # shared mailboxes and their ACLs (rfc4314)
    "cli_dmarc",  # DMARC aggregate reports received and sent (issue 22)
    "cli_doctor",  # estafeta doctor: deliverability checks (issue 22)
    "cli_tlsrpt",  # SMTP TLS reports sent and received (issue 22)
    "cli_tls",  # the DANE keys of [acme] dane (issue 22)
    "cli_migrate",  # local store <-> cluster (issue 23)
)
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    # build_parser's own commands.
    **dict.fromkeys(("check", "serve", "alias", "totp", "app-password", "reindex", "mail",
                     "dkim", "normalize", "queue"), ()),
    "user": ("cli_retention", "cli_privacy"),
    "sieve": ("cli_sieve",),
    "spam": ("cli_spam",),
    "retention": ("cli_retention",),
    "backup": ("cli_backup",),
    "shared": ("cli_shared",),
    "dmarc": ("cli_dmarc",),
    "doctor": ("cli_doctor",),
    "tlsrpt": ("cli_tlsrpt",),
    "tls": ("cli_tls",),
    "migrate": ("cli_migrate",),
}  # fmt: skip


def _command_word(argv: Sequence[str]) -> str | None:
    """The COMMAND of an estafeta command line, None when it has none before
    an option of its own (``--help``): the word after the global options."""
    tokens = iter(argv)
    for token in tokens:
        if token in ("-c", "--config"):
            next(tokens, None)
        elif token.startswith(("--config=", "-c")):
            continue
        elif token.startswith("-"):
            return None
        else:
            return token
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser, with the commands ``argv`` names (sys.argv)."""
    parser = argparse.ArgumentParser(prog="estafeta", description="Estafeta mail server")
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("ESTAFETA_CONFIG", DEFAULT_CONFIG),
        help=f"configuration file (default: $ESTAFETA_CONFIG or {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        func: Callable[[Config, argparse.Namespace], int],
        help_text: str,
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    add(commands, "check", cmd_check, "validate the configuration and exit")
    add(commands, "serve", cmd_serve, "run the mail server")

    user = commands.add_parser("user", help="manage accounts").add_subparsers(
        dest="user_command", required=True, metavar="ACTION"
    )
    for name, func, text in (
        ("add", cmd_user_add, "create an account"),
        ("passwd", cmd_user_passwd, "change an account's password"),
    ):
        command = add(user, name, func, text)
        command.add_argument("address")
        command.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
    command = add(
        user,
        "verify",
        cmd_user_verify,
        "check a password: exit 0 if it matches, 1 if not (prints nothing either way)",
    )
    command.add_argument("address")
    command.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add(user, "del", cmd_user_del, "delete an account (its mail is kept under data_dir/deleted)")
    user.choices["del"].add_argument("address")
    command = add(
        user, "quota", cmd_user_quota, "show or set an account's storage quota (IMAP QUOTA)"
    )
    command.add_argument("address")
    command.add_argument(
        "bytes",
        nargs="?",
        type=int,
        metavar="BYTES",
        help="the quota in bytes; 0 = use the global [limits] quota",
    )
    add(user, "list", cmd_user_list, "list accounts").add_argument(
        "--json", action="store_true", help='machine-readable: [{"address", "quota"}]'
    )

    alias = commands.add_parser("alias", help="manage aliases").add_subparsers(
        dest="alias_command", required=True, metavar="ACTION"
    )
    command = add(alias, "add", cmd_alias_add, "create an alias (SOURCE may be @domain)")
    command.add_argument("source")
    command.add_argument("targets", nargs="+", metavar="TARGET")
    add(alias, "del", cmd_alias_del, "delete an alias").add_argument("source")
    add(alias, "list", cmd_alias_list, "list aliases").add_argument(
        "--json", action="store_true", help='machine-readable: {"source": ["target", ...]}'
    )

    totp_parser = commands.add_parser(
        "totp", help="two-factor authentication (TOTP) of accounts"
    ).add_subparsers(dest="totp_command", required=True, metavar="ACTION")
    command = add(
        totp_parser,
        "enroll",
        cmd_totp_enroll,
        "give an account a TOTP secret and show its QR code; from then on "
        "only app passwords open IMAP, POP3 and SMTP",
    )
    command.add_argument("address")
    command.add_argument("--png", metavar="FILE", help="also write the QR code to FILE (PNG, 0600)")
    add(totp_parser, "disable", cmd_totp_disable, "remove an account's TOTP").add_argument(
        "address"
    )
    command = add(totp_parser, "status", cmd_totp_status, "show whether an account has TOTP")
    command.add_argument("address")
    command.add_argument(
        "--json", action="store_true", help='machine-readable: {"address", "totp", "app_passwords"}'
    )

    app_password = commands.add_parser(
        "app-password", help="per-device passwords for mail clients"
    ).add_subparsers(dest="app_password_command", required=True, metavar="ACTION")
    command = add(
        app_password,
        "create",
        cmd_app_password_create,
        "create an app password and print it (once); asks for a TOTP code if the account has TOTP",
    )
    command.add_argument("address")
    command.add_argument("--name", required=True, help="its name, e.g. the device")
    command.add_argument(
        "--protocols",
        default="imap,pop3,smtp",
        help="what it opens, comma-separated: imap, pop3, smtp, sieve (ManageSieve)"
        " (default: imap,pop3,smtp)",
    )
    command.add_argument("--expires", type=int, metavar="DAYS", help="expire after DAYS days")
    command.add_argument("--code", help="the current TOTP code (asked on the terminal if omitted)")
    command = add(app_password, "list", cmd_app_password_list, "list an account's app passwords")
    command.add_argument("address")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: [{"name", "protocols", "created", "expires", "last_used"}]',
    )
    command = add(app_password, "revoke", cmd_app_password_revoke, "delete an app password")
    command.add_argument("address")
    command.add_argument("--name", required=True)

    command = add(
        commands,
        "normalize",
        cmd_normalize,
        "print the canonical form of addresses (or @domain), as accounts and aliases store them",
    )
    command.add_argument("addresses", nargs="+", metavar="ADDRESS")
    command.add_argument("--local", action="store_true", help="also require a configured domain")
    command.add_argument("--json", action="store_true", help="machine-readable: a JSON list")

    add(commands, "reindex", cmd_reindex, "rebuild an account's index from its files").add_argument(
        "address"
    )

    mail = commands.add_parser("mail", help="look at stored mail").add_subparsers(
        dest="mail_command", required=True, metavar="ACTION"
    )
    command = add(mail, "ls", cmd_mail_ls, "list the messages of a mailbox")
    command.add_argument("address")
    command.add_argument("--mailbox", default="INBOX")
    command = add(mail, "cat", cmd_mail_cat, "print one message")
    command.add_argument("address")
    command.add_argument("uid", type=int)
    command.add_argument("--mailbox", default="INBOX")

    queue = commands.add_parser("queue", help="the outbound queue").add_subparsers(
        dest="queue_command", required=True, metavar="ACTION"
    )
    add(queue, "list", cmd_queue_list, "list queued messages").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    add(queue, "flush", cmd_queue_flush, "retry now (all, or one ID)").add_argument("id", nargs="?")
    add(queue, "delete", cmd_queue_delete, "drop a queue entry without a DSN").add_argument("id")

    dkim_parser = commands.add_parser("dkim", help="DKIM signing keys").add_subparsers(
        dest="dkim_command", required=True, metavar="ACTION"
    )
    command = add(
        dkim_parser, "keygen", cmd_dkim_keygen, "create a signing key and print its DNS record"
    )
    command.add_argument("domain")
    command.add_argument("--selector", required=True)
    command.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    command.add_argument("--force", action="store_true", help="replace an existing key")
    command = add(dkim_parser, "list", cmd_dkim_list, "print the DNS records of every key")
    command.add_argument("domain", nargs="?", help="only this domain's keys")
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: [{"domain", "selector", "algorithm", "txt"}]',
    )
    command = add(
        dkim_parser, "remove", cmd_dkim_remove, "delete a signing key (then its DNS record)"
    )
    command.add_argument("domain")
    command.add_argument("--selector", required=True)

    # The commands of modules of their own: only those the command line
    # names are imported (all of them for the list of commands).
    command_word = _command_word(sys.argv[1:] if argv is None else argv)
    for module in COMMAND_MODULES.get(command_word or "", MODULE_ORDER):
        importlib.import_module(f"estafeta.{module}").register(commands, add)
    return parser


def user_actions(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The ACTION subparsers of ``estafeta user`` (build_parser made them): where
    cli_privacy and cli_retention add theirs."""
    for action in commands.choices["user"]._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError("estafeta user has no actions")


# The commands that know the cluster backend ([store] backend = "cluster");
# the others would read or change this node's local files only, so refuse.
CLUSTER_COMMANDS = frozenset(
    {
        "cmd_check", "cmd_serve", "cmd_user_add", "cmd_user_passwd", "cmd_user_del",
        "cmd_user_verify", "cmd_user_quota", "cmd_user_list", "cmd_alias_add", "cmd_alias_del",
        "cmd_alias_list", "cmd_totp_enroll", "cmd_totp_disable", "cmd_totp_status",
        "cmd_app_password_create", "cmd_app_password_list", "cmd_app_password_revoke",
        "cmd_reindex", "cmd_mail_ls", "cmd_mail_cat", "cmd_dkim_keygen", "cmd_dkim_list",
        "cmd_dkim_remove", "cmd_normalize", "cmd_queue_list", "cmd_queue_flush",
        "cmd_queue_delete", "cmd_migrate",
        # An account's archive: read from the cluster's database and objects.
        "cmd_user_export",
        # Sieve scripts are in the cluster's database (cli_sieve).
        "cmd_sieve_list", "cmd_sieve_get", "cmd_sieve_put", "cmd_sieve_activate",
        "cmd_sieve_deactivate", "cmd_sieve_delete", "cmd_sieve_check", "cmd_sieve_test",
        # This node's own: its DNS, listeners, keys and certificate; the
        # DMARC and TLS reports it received and the evaluations it made.
        "cmd_doctor", "cmd_tls_tlsa", "cmd_tls_rollover", "cmd_dmarc_import",
        "cmd_dmarc_report", "cmd_dmarc_send", "cmd_tlsrpt_import", "cmd_tlsrpt_report",
        "cmd_tlsrpt_send",
        # Shared mailboxes are in the cluster's store (the "#shared" scope).
        "cmd_shared_list", "cmd_shared_set", "cmd_shared_remove",
        # Retention rules are in the accounts, the mail in the cluster's store.
        "cmd_retention_run", "cmd_user_retention",
        # The junk filter's statistics are in the cluster's database.
        "cmd_spam_status", "cmd_spam_train", "cmd_spam_reset", "cmd_spam_allow",
        "cmd_spam_disallow", "cmd_spam_allowlist",
    }
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        config = config_module.load(args.config)
        if config.store.cluster and args.func.__name__ not in CLUSTER_COMMANDS:
            raise UsageError(
                f"this command works on a local store only: {config.path} has"
                ' [store] backend = "cluster" (docs/scale.md lists what is not shared yet)'
            )
        result: int = args.func(config, args)
        return result
    except ConfigError as exc:
        print(f"estafeta: configuration error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"estafeta: {exc}", file=sys.stderr)
        return 2
    except (AccountError, AddressError, StoreError, CommandFailed) as exc:
        print(f"estafeta: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
