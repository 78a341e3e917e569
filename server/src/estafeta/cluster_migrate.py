"""``estafeta migrate``: a local store into a cluster, and back (issue 23 item 4).

``--to cluster`` copies what ``data_dir`` holds (``mail/``: every account's
index and Maildir files, the shared store; ``accounts.db``; ``sieve/``) into
the cluster the same config names (``[store] backend = "cluster"``):
PostgreSQL's scopes (estafeta.cluster.replica) and the body store
(estafeta.cluster.blobs). ``--to local`` copies a cluster into ``data_dir``,
which ``backend = "local"`` then serves.

Every index row is copied as it is: mailbox ids, UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ, each message's UID, flags, MODSEQ, EMAILID and THREADID,
expunged UIDs, subscriptions, ACLs and private \\Seen. So a client's cache
stays valid across the move (rfc9051:2.3.1.1: same UIDVALIDITY, same UIDs;
rfc7162:3.1: modseqs keep growing from where they were; rfc7162:3.2.10:
VANISHED keeps working). Only a message's ``file`` changes form: the local
``<folder>/{new,cur}/NAME[:2,FLAGS]`` is ``<folder>/new/NAME,B=<SHA-256>``
in the cluster, and back (estafeta.cluster_migrate_check.cluster_stem).

Crash ordering, ``--to cluster``, per account:

1. its bodies are put (content-addressed, claimed: Blobs.put_many), a batch
   at a time, read from the Maildir files, or from ``pending`` for messages
   whose file was not durable yet (estafeta.store.ingest);
2. one PostgreSQL transaction: the scope row is taken (the upsert that
   locks it, as a write does), every row goes in at version 1, the bodies
   are pinned, the scope's version becomes 1, a NOTIFY; commit.

A crash before 2's commit leaves stored bodies and nothing else: the rerun
puts the same bytes again, which only claims them (content-addressed), or
the collector removes them after its grace. After the commit the account
is there whole; the rerun compares it and skips it.

``--to local``, per account: everything is made in
``mail/DOMAIN/.migrating-LOCAL`` (files written and fsync'd, each ``new/``
fsync'd, the index committed), then renamed into place in one rename(2)
and the parent fsync'd: a crash leaves the ``.migrating-`` directory, which
the rerun removes and makes again.

Resumable: an account already in the target is compared with the source;
the same, it is skipped; different (the target has it from elsewhere, or it
changed since), the run stops with exit 2 and overwrites nothing.

Verifiable: ``--verify`` (and every run, at its end) compares each scope's
rows on both sides (estafeta.cluster_migrate_check) and checks bodies
against the digests the cluster's names hold: a sample per account, or all
of them (``--verify-bodies all``).

``--to cluster`` reads the local store and changes nothing in it but its
indexes' schema, brought to this version's first (the local code's own
upgrade, as the server's next start would); ``data_dir/migrate.lock`` keeps
two runs apart. ``accounts.db`` stays where it is: a cluster node keeps its
replica of ``#accounts`` in that very file (estafeta.auth.cluster), which
the first start pulls whole, keeping the node's login history; ``--to
local`` turns such a replica back into a local file (its rows replaced by
the cluster's, the replica's state dropped). ``data_dir/replicas`` (the
cluster's account replicas) is never read; after ``--to local`` it may go.

The server must not run on this node meanwhile (the command refuses when
something answers on a ``[listen]`` endpoint); other nodes of the cluster
may run: a scope one of them made meanwhile is found under its lock and
not overwritten. Run it as the server's user: the files it makes must be
the server's. Not copied: the outbound queue (let it drain first), the
login history (each node keeps its own), Sieve's vacation memory,
greylisting and the spam filter's statistics.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import asyncpg

from estafeta.auth.cluster import SCOPE as ACCOUNTS_SCOPE
from estafeta.cluster.blobs import BlobError
from estafeta.cluster.database import UNREACHABLE, DatabaseError
from estafeta.cluster.replica import SHIP_BATCH, Table, encode_row, notice
from estafeta.cluster.schema import CHANNEL
from estafeta.cluster_migrate_check import (
    Row,
)
from estafeta.cluster_migrate_local import ToLocal
from estafeta.cluster_migrate_sides import (
    BODY_BATCH,
    BODY_BATCH_OCTETS,
    IN_FLIGHT,
    PROGRESS_EVERY,
    REPIN_AFTER,
    InTarget,
    Mail,
    MigrationError,
    Refused,
    Tx,
    local_accounts,
    mail_rows,
    mib,
    sieve_accounts,
    transaction,
)
from estafeta.config import Config
from estafeta.sieve.cluster import LOCK_CLASS

__all__ = ["Migration", "MigrationError", "Refused", "preflight", "run"]

_TAKE_SCOPE = (
    "INSERT INTO mail_scopes AS s (scope) VALUES ($1)"
    " ON CONFLICT (scope) DO UPDATE SET version = s.version RETURNING version"
)
_INSERT_ROWS = (
    "INSERT INTO mail_rows (scope, tbl, key, row, version)"
    " SELECT $1, u.tbl, u.key, u.row, 1"
    " FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS u(tbl, key, row)"
)


class Migration(ToLocal):
    """One run of ``estafeta migrate``: into the cluster here, back in
    ToLocal, the checks in MigrationBase."""

    def to_cluster(self) -> None:
        started = time.monotonic()
        accounts, passed = local_accounts(self.paths)
        for other in passed:
            self.out(f"passed over {other}: not the directory of an address")
        if not accounts:
            self.out(f"no accounts under {self.paths.mail_dir}")
        for scope, path in accounts:
            self._account_to_cluster(scope, path)
        self._accounts_to_cluster()
        self._scripts_to_cluster()
        self.totals.seconds = time.monotonic() - started
        self._report("into the cluster")

    def _account_to_cluster(self, scope: str, path: Path) -> None:
        started = time.monotonic()
        mail = Mail(path)
        try:
            if self._version(scope) >= 1:
                self._skip_or_refuse(scope, self._compare_mail(scope, mail))
                return
            missing = self._missing(scope, mail)
            digests, octets = self._put_bodies(scope, mail, missing)
            try:
                rows = self._commit(
                    scope,
                    mail.tables,
                    mail_rows(mail, missing, digests),
                    sorted(set(digests.values())),
                )
            except InTarget:
                self._skip_or_refuse(scope, self._compare_mail(scope, mail))
                return
        finally:
            mail.close()
        count = len(digests)
        self.totals.copied += 1
        self.totals.messages += count
        self.totals.octets += octets
        self.totals.rows += rows
        self.totals.bodies += count
        self.out(
            f"{scope}: {count} messages, {mib(octets)}, {rows} rows,"
            f" {time.monotonic() - started:.1f} s"
        )

    def _missing(self, scope: str, mail: Mail) -> dict[int, set[int]]:
        """Messages whose file is gone (mailbox id -> UIDs); Refused unless
        ``skip_missing``."""
        gone = [(box, uid, file) for box, uid, file in mail.messages() if not mail.has(file)]
        if not gone:
            return {}
        if not self.skip_missing:
            shown = ", ".join(file for _, _, file in gone[:5])
            more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
            hint = (
                " (its index lists unfinished file work: start the local server once,"
                " which finishes it, then migrate again)"
                if mail.unfinished
                else ""
            )
            raise Refused(
                f"{scope}: {len(gone)} message files are missing under {mail.path}:"
                f" {shown}{more}{hint}; give --skip-missing to migrate without them"
                " (they are listed, and expunged in the copy)"
            )
        missing: dict[int, set[int]] = {}
        for box, uid, file in gone:
            missing.setdefault(box, set()).add(uid)
            self.missing.append((scope, file))
            self.out(f"{scope}: missing {file} (UID {uid}), left out")
        self.totals.missing += len(gone)
        return missing

    def _put_bodies(
        self, scope: str, mail: Mail, missing: Mapping[int, set[int]]
    ) -> tuple[dict[str, str], int]:
        """Store the account's bodies, a batch at a time, IN_FLIGHT batches
        being stored while the next is read; local file -> digest, octets."""
        digests: dict[str, str] = {}
        octets = 0
        messages = [m for m in mail.messages() if m[1] not in missing.get(m[0], ())]
        batch: list[tuple[str, bytes]] = []
        size = 0
        storing: collections.deque[tuple[list[str], concurrent.futures.Future[list[str]]]]
        storing = collections.deque()
        claimed = last_note = time.monotonic()

        def collect(keep: int) -> None:
            while len(storing) > keep:
                files, future = storing.popleft()
                digests.update(zip(files, future.result(), strict=True))

        def send() -> None:
            nonlocal batch, size
            collect(IN_FLIGHT - 1)
            future = self.io.submit(self.blobs.put_many([data for _, data in batch]))
            storing.append(([file for file, _ in batch], future))
            batch, size = [], 0

        try:
            for _box, _uid, file in messages:
                data = mail.body(file)
                if data is None:
                    raise MigrationError(f"{scope}: {mail.path / file} went away during the run")
                batch.append((file, data))
                size += len(data)
                octets += len(data)
                if len(batch) >= BODY_BATCH or size >= BODY_BATCH_OCTETS:
                    send()
                now = time.monotonic()
                if now - claimed >= REPIN_AFTER:
                    collect(0)
                    self._claim_again(sorted(set(digests.values())))
                    claimed = now
                if now - last_note >= PROGRESS_EVERY:
                    self.out(f"{scope}: {len(digests)} of {len(messages)} bodies stored")
                    last_note = now
            if batch:
                send()
            collect(0)
        finally:
            for _files, future in storing:  # an error: let the batches under way end
                with contextlib.suppress(Exception):
                    future.result()
        return digests, octets

    def _claim_again(self, digests: Sequence[str]) -> None:
        async def claim() -> None:
            async with self.db.transaction() as conn:
                await self.blobs.pin(conn, digests)

        self.io.run(claim())

    def _commit(
        self,
        scope: str,
        tables: Sequence[Table],
        rows: Iterator[tuple[str, str, Row]],
        digests: Sequence[str],
    ) -> int:
        """The scope's first version, in one transaction (see the module's
        text); the number of rows. InTarget if the scope has a version."""
        columns = {table.name: table.columns for table in tables}
        count = 0
        with transaction(self.io, self.db) as tx:
            if int(tx.run(tx.conn.fetchval(_TAKE_SCOPE, scope))) >= 1:
                raise InTarget
            if tx.run(tx.conn.fetchval("SELECT 1 FROM mail_rows WHERE scope = $1 LIMIT 1", scope)):
                raise Refused(
                    f"{scope}: PostgreSQL holds rows of this scope but no version of it;"
                    " nothing was written (look at mail_rows for it)"
                )
            batch: list[tuple[str, str, str]] = []
            for name, key, row in rows:
                names = columns[name]
                batch.append((name, key, encode_row(names, [row.get(c) for c in names])))
                if len(batch) >= SHIP_BATCH:
                    count += self._insert(tx, scope, batch)
                    batch = []
            if batch:
                count += self._insert(tx, scope, batch)
            tx.run(self.blobs.pin(tx.conn, digests))
            if self.before_commit is not None:
                self.before_commit(scope)
            tx.run(tx.conn.execute("UPDATE mail_scopes SET version = 1 WHERE scope = $1", scope))
            tx.run(
                tx.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, notice(self.db.origin, scope))
            )
        return count

    @staticmethod
    def _insert(tx: Tx, scope: str, batch: Sequence[tuple[str, str, str]]) -> int:
        tx.run(
            tx.conn.execute(
                _INSERT_ROWS,
                scope,
                [b[0] for b in batch],
                [b[1] for b in batch],
                [b[2] for b in batch],
            )
        )
        return len(batch)

    def _accounts_to_cluster(self) -> None:
        path = self.config.accounts_db
        if not path.is_file():
            self.out(f"no {path}: no accounts to copy")
            return
        started = time.monotonic()
        source = self._accounts_file(path)
        try:
            if self._version(ACCOUNTS_SCOPE) >= 1:
                self._skip_or_refuse(ACCOUNTS_SCOPE, self._compare_accounts(source))
                return
            try:
                rows = self._commit(ACCOUNTS_SCOPE, source.tables, source.rows(), ())
            except InTarget:
                self._skip_or_refuse(ACCOUNTS_SCOPE, self._compare_accounts(source))
                return
        finally:
            source.close()
        self.totals.rows += rows
        self.out(f"{ACCOUNTS_SCOPE}: {rows} rows, {time.monotonic() - started:.1f} s")

    def _scripts_to_cluster(self) -> None:
        for address in sieve_accounts(self.scripts):
            scripts = self._local_scripts(address)
            if not scripts:
                continue
            written = self.io.run(self._put_scripts(address, scripts))
            if written:
                self.out(f"{address}: {len(scripts)} Sieve scripts")
            else:
                self.out(f"{address}: Sieve scripts already in the target, skipped")

    async def _put_scripts(self, address: str, scripts: list[tuple[str, str, bool]]) -> bool:
        """In one transaction under the account's lock (estafeta.sieve.cluster)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, address
            )
            there = await self._cluster_scripts(conn, address)
            if there:
                if there != scripts:
                    raise Refused(
                        f"{address}: the cluster has other Sieve scripts for this account:"
                        " nothing was overwritten"
                    )
                return False
            await conn.executemany(
                "INSERT INTO sieve_scripts (address, name, content, active)"
                " VALUES ($1, $2, $3, $4)",
                [(address, name, text, active) for name, text, active in scripts],
            )
        return True


# -- the command -------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One migration at a time on a data directory."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(directory / "migrate.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refused(f"another estafeta migrate is running on {directory}") from None
        yield
    finally:
        os.close(fd)


def _listening(config: Config) -> str | None:
    """A ``[listen]`` endpoint something answers on (the server, most
    likely), or None."""
    for name, endpoints in config.listen.items():
        for endpoint in endpoints:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104
                endpoint.host, endpoint.host
            )
            with contextlib.suppress(OSError), socket.create_connection((host, endpoint.port), 0.5):
                return f"listen.{name} {endpoint}"
    return None


def preflight(config: Config, *, server_check: bool = True) -> None:
    """Refused unless this node may be migrated now: the server stopped,
    the right user."""
    if not config.store.cluster or config.store.database is None:
        raise Refused(
            f'{config.path}: migrate needs the cluster\'s settings ([store] backend = "cluster"'
            " and [store.database]); data_dir is the local store"
        )
    if config.store.database.pool_size < 2:
        raise Refused("[store.database] pool_size must be at least 2 for migrate")
    data_dir = config.data_dir
    if os.geteuid() == 0 and data_dir.exists() and data_dir.stat().st_uid != 0:
        raise Refused(
            f"run migrate as the owner of {data_dir} (uid {data_dir.stat().st_uid}),"
            " the server's user: the files it makes must be the server's"
        )
    if server_check:
        answering = _listening(config)
        if answering is not None:
            raise Refused(
                f"something answers on {answering}: stop the estafeta server on this node"
                " first (or give --server-stopped if that is not estafeta)"
            )


def run(
    config: Config,
    direction: str,
    *,
    verify_only: bool = False,
    verify_bodies: str = "sample",
    skip_missing: bool = False,
    server_check: bool = True,
    out: Callable[[str], None] = print,
    migration: Migration | None = None,
) -> int:
    """``estafeta migrate``: 0 done and verified, 1 differences found.
    Refused (exit 2) or MigrationError (exit 1) otherwise."""
    if direction not in ("cluster", "local"):
        raise ValueError("direction is 'cluster' or 'local'")
    preflight(config, server_check=server_check)
    work = migration or Migration(
        config, verify_bodies=verify_bodies, skip_missing=skip_missing, out=out
    )
    where = str(config.store.database.url) if config.store.database else "the database"
    with _locked(config.data_dir):
        try:
            with work:
                if not verify_only:
                    if direction == "cluster":
                        work.to_cluster()
                    else:
                        work.to_local()
                return 0 if work.verify(direction) else 1
        except (DatabaseError, BlobError) as exc:
            raise MigrationError(str(exc)) from None
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{where}: {exc}") from None
        except sqlite3.Error as exc:
            raise MigrationError(f"a local SQLite database: {exc}") from None
        except OSError as exc:  # the local files (their names are in the message)
            raise MigrationError(str(exc)) from None
        except UNREACHABLE as exc:
            raise MigrationError(f"{where}: the connection failed: {exc!r}") from None
