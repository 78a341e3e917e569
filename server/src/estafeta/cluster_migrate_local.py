"""``estafeta migrate --to local``: a cluster into ``data_dir`` (the order of
the work and why it is safe: estafeta.cluster_migrate).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from estafeta.auth.cluster import SCOPE as ACCOUNTS_SCOPE
from estafeta.cluster.replica import Table, describe
from estafeta.cluster_migrate_base import MigrationBase
from estafeta.cluster_migrate_check import (
    cluster_row,
)
from estafeta.cluster_migrate_sides import (
    BODY_BATCH,
    BODY_BATCH_OCTETS,
    PARALLEL,
    PROGRESS_EVERY,
    SCOPE_ROWS,
    SCOPE_VERSION,
    TMP_PREFIX,
    Mail,
    MigrationError,
    Refused,
    Tx,
    empty_tables,
    insert_local,
    local_file,
    mib,
    safe_folder,
    transaction,
)
from estafeta.sieve.scripts import ScriptError
from estafeta.store import index, maildir
from estafeta.store.cluster import INDEX_TABLES


class ToLocal(MigrationBase):
    """The way back: every mail scope, the accounts database and the Sieve
    scripts of the cluster into the local store of ``data_dir``."""

    def to_local(self) -> None:
        started = time.monotonic()
        scopes = self._cluster_scopes()
        if not scopes:
            self.out("the cluster holds no accounts")
        for scope in scopes:
            self._account_to_local(scope)
        self._accounts_to_local()
        self._scripts_to_local()
        self.totals.seconds = time.monotonic() - started
        self._report("into the local store")
        self.out(f'to serve it: [store] backend = "local" in {self.config.path}')

    def _account_to_local(self, scope: str) -> None:
        started = time.monotonic()
        final = self.paths.account_dir(scope)
        if (final / "index.db").exists():
            mail = Mail(final)
            try:
                self._skip_or_refuse(scope, self._compare_mail(scope, mail))
            finally:
                mail.close()
            return
        if os.path.lexists(final):
            raise Refused(f"{scope}: {final} exists but holds no index: move it away first")
        work = final.parent / (TMP_PREFIX + final.name)
        if os.path.lexists(work):
            shutil.rmtree(work)  # what a crashed run left
        fresh_parent = not final.parent.exists()
        work.mkdir(parents=True, mode=0o700)
        conn = index.connect(work / "index.db")
        try:
            tables = {table.name: table for table in describe(conn, INDEX_TABLES)}
            with transaction(self.io, self.db, readonly=True) as tx:
                counts = self._fill(scope, work, conn, tables, tx)
        finally:
            conn.close()
        maildir.fsync_dir(work)
        os.rename(work, final)
        maildir.fsync_dir(final.parent)
        if fresh_parent:
            maildir.fsync_dir(final.parent.parent)
        messages, octets, rows = counts
        self.totals.copied += 1
        self.totals.messages += messages
        self.totals.octets += octets
        self.totals.rows += rows
        self.totals.bodies += messages
        self.out(
            f"{scope}: {messages} messages, {mib(octets)}, {rows} rows,"
            f" {time.monotonic() - started:.1f} s"
        )

    def _fill(
        self,
        scope: str,
        work: Path,
        conn: sqlite3.Connection,
        tables: Mapping[str, Table],
        tx: Tx,
    ) -> tuple[int, int, int]:
        """The account's rows into its new index and its bodies into files
        (in ``work``), from one snapshot; (messages, octets, rows)."""
        if int(tx.run(tx.conn.fetchval(SCOPE_VERSION, scope)) or 0) < 1:
            raise MigrationError(f"{scope}: gone from the cluster during the run")
        folders: dict[int, str] = {}
        messages = octets = count = 0
        written: dict[str, Path] = {}  # digest -> a file of it (COPY's hard links)
        batch: list[tuple[str, str, int]] = []
        batch_octets = 0
        last_note = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("PRAGMA defer_foreign_keys = ON")
            empty_tables(conn, tables.values())
            for name, key, text in tx.rows(SCOPE_ROWS + " ORDER BY tbl <> 'mailboxes'", scope):
                digests: dict[str, str] = {}
                row = cluster_row(name, text, digests, key)
                if name == "mailboxes":
                    folder = row.get("dir")
                    if not safe_folder(folder):
                        raise MigrationError(f"{scope}: mailbox folder {folder!r} is refused")
                    folders[int(row["id"])] = str(folder)
                    maildir.make_maildir(work / folder if folder else work)
                elif name == "messages":
                    digest = digests.get(key)
                    local = local_file(str(row["file"]), folders.get(int(row["mailbox_id"]), ""))
                    if local is None or digest is None:
                        raise MigrationError(
                            f"{scope}: message file {row['file']!r} is not a Maildir name"
                            " in its mailbox's folder: refused"
                        )
                    row["file"] = local
                    batch.append((local, digest, int(row["internal_date"])))
                    messages += 1
                    octets += int(row["size"])
                    batch_octets += int(row["size"])
                    if len(batch) >= BODY_BATCH or batch_octets >= BODY_BATCH_OCTETS:
                        self._write_bodies(work, batch, written)
                        batch, batch_octets = [], 0
                insert_local(conn, tables, scope, name, row)
                count += 1
                now = time.monotonic()
                if now - last_note >= PROGRESS_EVERY:
                    self.out(f"{scope}: {messages} messages written")
                    last_note = now
            if batch:
                self._write_bodies(work, batch, written)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return messages, octets, count

    def _write_bodies(
        self, work: Path, batch: Sequence[tuple[str, str, int]], written: dict[str, Path]
    ) -> None:
        """Fetch and write a batch of bodies durably (the way a delivery of a
        large message is written: fsync'd in tmp/, renamed into new/, new/
        fsync'd); a body already written for the account is linked, as COPY
        does."""
        wanted = sorted({digest for _, digest, _ in batch if digest not in written})
        bodies = dict(zip(wanted, self.io.run(self._get_many(wanted)), strict=True))
        directories: set[Path] = set()
        for file, digest, internal_date in batch:
            target = work / file
            try:
                if digest in written:
                    os.link(written[digest], target)
                else:
                    staged = maildir.write_tmp(
                        target.parent.parent, target.name, bodies[digest], internal_date
                    )
                    maildir.publish(staged)
                    written[digest] = target
            except OSError as exc:
                raise MigrationError(f"{target}: cannot write: {exc.strerror}") from None
            directories.add(target.parent)
        for directory in directories:
            maildir.fsync_dir(directory)

    async def _get_many(self, digests: Sequence[str]) -> list[bytes]:
        limit = asyncio.Semaphore(PARALLEL)

        async def one(digest: str) -> bytes:
            async with limit:
                return await self.blobs.get(digest)

        return list(await asyncio.gather(*(one(digest) for digest in digests)))

    def _accounts_to_local(self) -> None:
        if self._version(ACCOUNTS_SCOPE) < 1:
            self.out("the cluster holds no accounts database")
            return
        path = self.config.accounts_db
        existed = path.exists()
        target = self._accounts_file(path)
        try:
            replica = target.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'replica_state'"
            ).fetchone()
            empty = all(
                target.conn.execute(f"SELECT 1 FROM main.{t.name} LIMIT 1").fetchone() is None  # noqa: S608
                for t in target.tables
            )
            if existed and replica is None and not empty:
                # A local accounts database of its own: the same, or refused.
                result = self._compare_accounts(target)
                self._skip_or_refuse(ACCOUNTS_SCOPE, result)
                return
            # New, or this node's replica of the cluster's (its login history,
            # which is not replicated, stays): the cluster's rows, whole.
            tables = {table.name: table for table in target.tables}
            conn = target.conn
            conn.execute("COMMIT")  # the read snapshot Sqlite began
            count = 0
            with transaction(self.io, self.db, readonly=True) as tx:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("PRAGMA defer_foreign_keys = ON")
                    empty_tables(conn, target.tables)
                    for name, key, text in tx.rows(SCOPE_ROWS, ACCOUNTS_SCOPE):
                        row = cluster_row(name, text, None, key)
                        insert_local(conn, tables, ACCOUNTS_SCOPE, name, row)
                        count += 1
                    conn.execute("DROP TABLE IF EXISTS replica_state")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        finally:
            target.close()
        self.totals.rows += count
        self.out(f"{ACCOUNTS_SCOPE}: {count} rows into {path}")

    def _scripts_to_local(self) -> None:
        rows = self.io.run(
            self.db.pool.fetch("SELECT DISTINCT address FROM sieve_scripts ORDER BY address")
        )
        for (address,) in rows:
            scripts = self.io.run(self._read_cluster_scripts(address))
            here = self._local_scripts(address)
            if here == scripts:
                self.out(f"{address}: Sieve scripts already in the target, skipped")
                continue
            # What a run stopped between two scripts left is the start of
            # the same: go on from there. Anything else is someone else's.
            theirs = {name: (text, active) for name, text, active in scripts}
            for name, text, active in here:
                if (
                    name not in theirs
                    or theirs[name][0] != text
                    or (active and not theirs[name][1])
                ):
                    raise Refused(
                        f"{address}: the local store has other Sieve scripts for this"
                        f" account ({name!r}): nothing was overwritten"
                    )
            have = {name for name, _, _ in here}
            try:
                for name, text, _active in scripts:
                    if name not in have:
                        self.scripts.put(address, name, text)  # each durable on its own
                for name, _text, active in scripts:
                    if active:
                        self.scripts.activate(address, name)
            except ScriptError as exc:
                raise MigrationError(f"{address}: Sieve script: {exc}") from None
            self.out(f"{address}: {len(scripts)} Sieve scripts")
