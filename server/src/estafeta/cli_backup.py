"""``estafeta backup ...``: encrypted, incremental snapshots of data_dir (issue 18).

    estafeta backup key                          make the master key file ([backup] key_file)
    estafeta backup create [--to DEST]           a snapshot, while the server runs
    estafeta backup list [--repo DEST] [--json]
    estafeta backup verify [SNAPSHOT] [--repo DEST] [--json]     fetch, decrypt, check all
    estafeta backup restore SNAPSHOT --to DATA_DIR [--repo DEST]  onto an empty data directory
    estafeta backup restore SNAPSHOT --account ADDRESS [--to DATA_DIR]   one account
    estafeta backup prune [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--dry-run]

DEST is a directory or ``s3://BUCKET/PREFIX`` (``[backup] destination`` by
default; the S3 endpoint, region, addressing and credentials come from
``[backup]``). SNAPSHOT is a name from ``list`` or ``latest``.

Exit codes as in cli.py: 0 done; 1 the operation failed (wrong key, an
object missing or damaged, the destination unreachable: one line on stderr
naming the object or the setting); 2 bad usage. A failed restore leaves the
target as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from estafeta import log as log_module
from estafeta.backup.objects import BackupError, generate_key
from estafeta.backup.repository import Repository
from estafeta.backup.settings import key_path, open_repository
from estafeta.cli import CommandFailed, UsageError
from estafeta.config import Config
from estafeta.config_backup import BackupConfig

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def _repository(config: Config, args: argparse.Namespace, create: bool = False) -> Repository:
    return open_repository(config, args.repo, getattr(args, "key", None), create=create)


def _snapshot(repository: Repository, name: str) -> str:
    names = repository.snapshots()
    if name == "latest":
        if not names:
            raise BackupError(f"{repository.destination.describe()}: no snapshots yet")
        return names[-1]
    return name


def _failing(func: Command) -> Command:
    """BackupError → exit 1 with its message (cli.main knows CommandFailed)."""

    def run(config: Config, args: argparse.Namespace) -> int:
        try:
            return func(config, args)
        except BackupError as exc:
            raise CommandFailed(str(exc)) from None

    run.__doc__ = func.__doc__
    return run


@_failing
def cmd_backup_key(config: Config, args: argparse.Namespace) -> int:
    path = key_path(config, args.key)
    generate_key(path)
    print(f"wrote a new backup key to {path}")
    print("keep a copy somewhere else: without it no backup can be read")
    return 0


@_failing
def cmd_backup_create(config: Config, args: argparse.Namespace) -> int:
    from estafeta.backup.create import Snapshotter

    log_module.setup("info", config.log.format)
    repository = _repository(config, args, create=True)
    report = Snapshotter(
        config,
        repository,
        uploads=config.backup.uploads,
        progress=False if args.no_progress else None,
    ).run()
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(
            f"snapshot {report.snapshot}: {report.files} files, {report.octets / 1e6:.1f} MB; "
            f"{report.new_objects} new objects, {report.uploaded_octets / 1e6:.1f} MB uploaded, "
            f"{report.seconds:.1f} s"
        )
    return 0


@_failing
def cmd_backup_list(config: Config, args: argparse.Namespace) -> int:
    repository = _repository(config, args)
    rows = []
    for name in repository.snapshots():
        manifest = repository.manifest(name)
        report = manifest.get("report")
        report = report if isinstance(report, dict) else {}
        scopes = manifest.get("scopes")
        rows.append(
            {
                "snapshot": name,
                "time": manifest.get("time"),
                "host": manifest.get("hostname"),
                "accounts": max(0, len(scopes) - 1) if isinstance(scopes, dict) else 0,
                "files": report.get("files", 0),
                "octets": report.get("octets", 0),
            }
        )
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(str(row["time"]))))
        print(
            f"{row['snapshot']}  {when}  {row['host']}  {row['accounts']} accounts  "
            f"{row['files']} files  {int(str(row['octets'])) / 1e6:.1f} MB"
        )
    if not rows:
        print("no snapshots", file=sys.stderr)
    return 0


@_failing
def cmd_backup_verify(config: Config, args: argparse.Namespace) -> int:
    from estafeta.backup.restore import verify

    repository = _repository(config, args)
    name = _snapshot(repository, args.snapshot)
    report = verify(repository, name)
    if args.json:
        print(json.dumps(report.__dict__))
    else:
        print(
            f"snapshot {name}: {report.files} files, {report.octets / 1e6:.1f} MB, "
            f"every object decrypts and matches its name"
        )
        for scope in report.erased:
            print(f"  {scope}: key destroyed (erased); its objects were not checked")
    return 0


def _scrubber(config: Config) -> Callable[[Path, str], None]:
    """What ``user erase`` does, on a restored data directory: an account
    erased after the snapshot was made does not come back (its mail cannot:
    its key is destroyed; this takes its account row, aliases, queue
    entries and the rest out of the server's files)."""

    def scrub(data_dir: Path, address: str) -> None:
        from estafeta.privacy.erase import EraseError, erase

        restored = dataclasses.replace(config, data_dir=data_dir, backup=BackupConfig())
        try:
            erase(restored, address, pause=0)
        except EraseError as exc:
            raise BackupError(
                f"{address}: erased, but not out of the restored data: {exc}"
            ) from None

    return scrub


@_failing
def cmd_backup_restore(config: Config, args: argparse.Namespace) -> int:
    from estafeta.backup import restore

    log_module.setup("info", config.log.format)
    repository = _repository(config, args)
    name = _snapshot(repository, args.snapshot)
    if args.account:
        from estafeta.backup.restore_account import restore_account

        target = Path(args.to) if args.to else config.data_dir
        lines = restore_account(repository, name, args.account, target, config)
        for line in lines:
            print(line)
        return 0
    if not args.to:
        raise UsageError("a full restore needs --to DATA_DIR (an empty or new directory)")
    report = restore.restore_all(repository, name, Path(args.to), scrub=_scrubber(config))
    print(
        f"restored snapshot {name} into {args.to}: {report.files} files, "
        f"{report.octets / 1e6:.1f} MB, {len(report.scopes) - 1} accounts"
    )
    for scope in report.erased:
        print(f"  {scope}: not restored, its key was destroyed (erased)")
    if report.config_file:
        print(f"  the configuration of that time: {report.config_file}")
    return 0


@_failing
def cmd_backup_prune(config: Config, args: argparse.Namespace) -> int:
    from estafeta.backup.prune import prune

    log_module.setup("info", config.log.format)
    settings = config.backup
    report = prune(
        _repository(config, args),
        daily=settings.keep_daily if args.keep_daily is None else args.keep_daily,
        weekly=settings.keep_weekly if args.keep_weekly is None else args.keep_weekly,
        monthly=settings.keep_monthly if args.keep_monthly is None else args.keep_monthly,
        dry_run=args.dry_run,
    )
    if args.json:
        print(json.dumps(report.__dict__))
        return 0
    verb = "would forget" if args.dry_run else "forgot"
    print(f"kept {len(report.kept)} snapshots, {verb} {len(report.forgotten)}")
    for name in report.forgotten:
        print(f"  {name}")
    if not args.dry_run:
        print(
            f"deleted {report.packs_deleted} packs ({report.octets_freed / 1e6:.1f} MB), "
            f"rewrote {report.packs_repacked}; {report.objects_kept} objects kept"
        )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta backup ...`` to the command's parser (cli.build_parser)."""
    backup = commands.add_parser(
        "backup", help="encrypted, incremental backups of data_dir"
    ).add_subparsers(dest="backup_command", required=True, metavar="ACTION")

    def common(command: argparse.ArgumentParser, repo_flags: tuple[str, ...]) -> None:
        command.add_argument(
            *repo_flags,
            dest="repo",
            metavar="DEST",
            help="a directory or s3://BUCKET/PREFIX (default: [backup] destination)",
        )
        command.add_argument("--key", metavar="FILE", help="default: [backup] key_file")

    command = add(backup, "key", cmd_backup_key, "make a new master key file (never replaces one)")
    command.add_argument("--key", metavar="FILE", help="default: [backup] key_file")
    command = add(backup, "create", cmd_backup_create, "store a snapshot of data_dir")
    common(command, ("--to", "--repo"))
    command.add_argument("--json", action="store_true", help="machine-readable report")
    command.add_argument("--no-progress", action="store_true", help="no progress line")
    command = add(backup, "list", cmd_backup_list, "list the snapshots")
    common(command, ("--repo",))
    command.add_argument(
        "--json",
        action="store_true",
        help='machine-readable: [{"snapshot", "time", "host", "accounts", "files", "octets"}]',
    )
    command = add(
        backup, "verify", cmd_backup_verify, "fetch, decrypt and check every object of a snapshot"
    )
    command.add_argument("snapshot", nargs="?", default="latest")
    common(command, ("--repo",))
    command.add_argument("--json", action="store_true")
    command = add(
        backup,
        "restore",
        cmd_backup_restore,
        "restore a snapshot onto an empty data directory, or one account",
    )
    command.add_argument("snapshot", help="a name from 'backup list', or latest")
    common(command, ("--from", "--repo"))
    command.add_argument("--to", metavar="DATA_DIR", help="where to restore")
    command.add_argument("--account", metavar="ADDRESS", help="restore only this account")
    command = add(
        backup,
        "prune",
        cmd_backup_prune,
        "forget old snapshots (--keep-*, default: [backup] keep_*) and delete unneeded objects",
    )
    common(command, ("--repo",))
    for period in ("daily", "weekly", "monthly"):
        command.add_argument(
            f"--keep-{period}", type=int, metavar="N", help=f"default: [backup] keep_{period}"
        )
    command.add_argument("--dry-run", action="store_true", help="only say what would go")
    command.add_argument("--json", action="store_true")
    logging.getLogger("botocore").setLevel(logging.WARNING)
