"""``estafeta migrate``: a local store into a cluster, and back (issue 23;
estafeta.cluster_migrate has the order of the work and why it is safe).

    estafeta -c CONFIG migrate --to cluster|local [--verify]
        [--verify-bodies sample|all] [--skip-missing] [--server-stopped]

CONFIG is a cluster node's: ``[store] backend = "cluster"`` with
``[store.database]`` and ``[store.objects]`` (the cluster) and ``data_dir``
(the local store). ``--to cluster`` copies the local store into the
cluster, ``--to local`` the cluster into ``data_dir``; afterwards the config
with the target's backend serves it. Stop the server on this node first,
and run the command as the server's user.

Resumable: run it again after a failure; what is in the target already is
compared and skipped. ``--verify`` only compares (every run ends with it).

Exit codes as in cli.py: 0 copied and verified; 1 the copy failed, or the
check found differences (printed, the first ones per account); 2 refused,
nothing overwritten: the target has an account with other content, message
files are missing (``--skip-missing`` leaves them out and lists them), the
server answers on this node, another migrate runs, or the configuration is
not a cluster's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from estafeta.cli import CommandFailed, UsageError
from estafeta.config import Config

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def _print(line: str) -> None:
    print(line, flush=True)


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from estafeta import cluster_migrate  # asyncpg and boto3: only when migrating
    from estafeta import config as config_module

    config_module.check_runtime(config)
    try:
        return cluster_migrate.run(
            config,
            args.to,
            verify_only=args.verify,
            verify_bodies=args.verify_bodies,
            skip_missing=args.skip_missing,
            server_check=not args.server_stopped,
            out=_print,
        )
    except cluster_migrate.Refused as exc:
        raise UsageError(str(exc)) from None
    except cluster_migrate.MigrationError as exc:
        raise CommandFailed(
            f"{exc} (nothing half-done is kept: run the same command again to go on)"
        ) from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta migrate`` (cli.build_parser)."""
    command = add(
        commands,
        "migrate",
        cmd_migrate,
        "copy the local store (data_dir) into the cluster of [store], or the cluster back",
    )
    command.add_argument(
        "--to",
        required=True,
        choices=("cluster", "local"),
        help="cluster: data_dir into PostgreSQL and the object store; local: the reverse",
    )
    command.add_argument(
        "--verify",
        action="store_true",
        help="copy nothing: compare source and target (exit 1 naming the first differences)",
    )
    command.add_argument(
        "--verify-bodies",
        choices=("sample", "all"),
        default="sample",
        help="bodies checked against their digests: a sample per account (default) or all",
    )
    command.add_argument(
        "--skip-missing",
        action="store_true",
        help="go on without messages whose file is missing (listed; expunged in the copy)",
    )
    command.add_argument(
        "--server-stopped",
        action="store_true",
        help="do not refuse when something answers on a [listen] endpoint",
    )
