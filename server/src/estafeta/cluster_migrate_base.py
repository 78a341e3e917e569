"""What both directions of ``estafeta migrate`` share (estafeta.cluster_migrate):
the cluster node the command opens, the answer to "is it there already?"
(the same: skipped; else refused), and ``--verify``, which every run ends
with: each scope's rows compared (estafeta.cluster_migrate_check), bodies
checked against the digests the cluster's names hold (a sample per account,
or all), the accounts database and the Sieve scripts compared.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from estafeta.auth.accounts import AccountError, Accounts
from estafeta.auth.cluster import SCOPE as ACCOUNTS_SCOPE
from estafeta.auth.cluster import TABLES as ACCOUNT_TABLES
from estafeta.cluster.blobs import BlobError, Blobs, sha256_hex
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster_migrate_check import (
    Comparison,
    compare,
)
from estafeta.cluster_migrate_sides import (
    BODY_BATCH,
    PARALLEL,
    SAMPLE,
    SCOPE_VERSION,
    Mail,
    MigrationError,
    Refused,
    Sqlite,
    Totals,
    local_accounts,
    mail_rows,
    mib,
    sieve_accounts,
    transaction,
)
from estafeta.cluster_node import ClusterNode
from estafeta.config import Config, ConfigError
from estafeta.sieve.scripts import ScriptStore
from estafeta.store import shared
from estafeta.store.account import Store


class MigrationBase:
    """One run of ``estafeta migrate`` on a config whose store is a cluster:
    what both directions share."""

    def __init__(
        self,
        config: Config,
        *,
        verify_bodies: str = "sample",
        skip_missing: bool = False,
        out: Callable[[str], None] = print,
    ) -> None:
        if verify_bodies not in ("sample", "all"):
            raise ValueError("verify_bodies is 'sample' or 'all'")
        self.config = config
        self.verify_bodies = verify_bodies
        self.skip_missing = skip_missing
        self.out = out
        self.paths = Store(config.mail_dir, config.hostname)  # for its paths only
        self.scripts = ScriptStore(
            config.sieve_dir,
            max_script_size=config.sieve.max_script_size,
            max_scripts=config.sieve.max_scripts,
        )
        self.totals = Totals()
        self.missing: list[tuple[str, str]] = []  # (account, file) left out
        # Tests: called with the scope inside its transaction, before the commit.
        self.before_commit: Callable[[str], None] | None = None
        self.node: ClusterNode | None = None
        self._blobs: Blobs | None = None

    def open(self) -> None:
        node = ClusterNode(self.config)
        try:
            node.open()
        except DatabaseError as exc:
            raise ConfigError(self.config.path, "store.database", str(exc)) from None
        self.node = node
        # Bodies are read to be checked, never cached: no disk cache.
        self._blobs = Blobs(node.db, self.config.store.objects, node.cache_dir, 0)

    def close(self) -> None:
        if self._blobs is not None:
            self._blobs.close()
            self._blobs = None
        if self.node is not None:
            self.node.close()
            self.node = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def io(self) -> IoLoop:
        assert self.node is not None, "open() first"
        return self.node.io

    @property
    def db(self) -> Database:
        assert self.node is not None, "open() first"
        return self.node.db

    @property
    def blobs(self) -> Blobs:
        assert self._blobs is not None, "open() first"
        return self._blobs

    def _version(self, scope: str) -> int:
        version = self.io.run(self.db.pool.fetchval(SCOPE_VERSION, scope))
        return 0 if version is None else int(version)

    def _skip_or_refuse(self, scope: str, result: Comparison) -> None:
        if result.ok:
            self.totals.skipped += 1
            self.out(f"{scope}: already in the target (an earlier run), skipped")
            return
        raise Refused(
            f"{scope}: the target has it already, with other content"
            f" ({result.count} differences; the first: {result.differences[0]}):"
            " nothing was overwritten. If it came from elsewhere or changed since,"
            " decide which copy to keep; remove the other before migrating again"
        )

    def _accounts_file(self, path: Path) -> Sqlite:
        """The accounts database, its schema brought up to date first (the
        local code's own migrations)."""
        try:
            Accounts(
                path, self.config.domains, hasher=self.config.auth.hasher(), password_policy=False
            ).close()
        except AccountError as exc:
            raise MigrationError(str(exc)) from None
        return Sqlite(sqlite3.connect(path, isolation_level=None), ACCOUNT_TABLES)

    def _local_scripts(self, address: str) -> list[tuple[str, str, bool]]:
        return sorted(
            (name, self.scripts.get(address, name), active)
            for name, active in self.scripts.list(address)
        )

    @staticmethod
    async def _cluster_scripts(conn: Any, address: str) -> list[tuple[str, str, bool]]:
        rows = await conn.fetch(
            "SELECT name, content, active FROM sieve_scripts WHERE address = $1", address
        )
        return sorted((r["name"], r["content"], bool(r["active"])) for r in rows)

    async def _read_cluster_scripts(self, address: str) -> list[tuple[str, str, bool]]:
        async with self.db.pool.acquire() as conn:
            return await self._cluster_scripts(conn, address)

    def _cluster_scopes(self) -> list[str]:
        """The mail scopes of the cluster: accounts, then the shared store."""
        rows = self.io.run(
            self.db.pool.fetch("SELECT scope FROM mail_scopes WHERE version >= 1 ORDER BY scope")
        )
        scopes = [str(r[0]) for r in rows]
        return [s for s in scopes if "@" in s and not s.startswith("#")] + [
            s for s in scopes if s == shared.OWNER
        ]

    def _compare_mail(self, scope: str, mail: Mail) -> Comparison:
        """The rows of an account on both sides (no bodies)."""
        missing = self._missing_quietly(mail)
        with transaction(self.io, self.db, readonly=True) as tx:
            return compare(scope, lambda: mail_rows(mail, missing, None), tx.scope_rows(scope))

    def _missing_quietly(self, mail: Mail) -> dict[int, set[int]]:
        """With ``--skip-missing``, the messages left out of a copy."""
        if not self.skip_missing:
            return {}
        missing: dict[int, set[int]] = {}
        for box, uid, file in mail.messages():
            if not mail.has(file):
                missing.setdefault(box, set()).add(uid)
        return missing

    def _compare_accounts(self, source: Sqlite) -> Comparison:
        with transaction(self.io, self.db, readonly=True) as tx:
            return compare(ACCOUNTS_SCOPE, source.rows, tx.scope_rows(ACCOUNTS_SCOPE))

    def verify(self, direction: str) -> bool:
        """Compare every scope of the source with the target; print the
        differences; whether there were none."""
        started = time.monotonic()
        problems = 0
        if direction == "cluster":
            accounts = local_accounts(self.paths)[0]
        else:
            accounts = [(scope, self.paths.account_dir(scope)) for scope in self._cluster_scopes()]
        checked = 0
        for scope, path in accounts:
            problems += self._verify_account(scope, path, direction)
            checked += 1
        problems += self._verify_accounts_db()
        problems += self._verify_scripts(direction)
        seconds = time.monotonic() - started
        if problems:
            self.out(f"verify: {problems} differences in {checked} accounts ({seconds:.1f} s)")
            return False
        self.out(f"verified {checked} accounts, the accounts database and Sieve ({seconds:.1f} s)")
        return True

    def _verify_account(self, scope: str, path: Path, direction: str) -> int:
        if direction == "cluster" and self._version(scope) < 1:
            self.out(f"{scope}: not in the cluster")
            return 1
        if direction == "local" and not (path / "index.db").is_file():
            self.out(f"{scope}: not in the local store ({path})")
            return 1
        mail = Mail(path)
        try:
            missing = self._missing_quietly(mail) if direction == "cluster" else {}
            files: dict[str, str] = {}
            with transaction(self.io, self.db, readonly=True) as tx:
                result = compare(
                    scope, lambda: mail_rows(mail, missing, None, files), tx.scope_rows(scope)
                )
            checked = self._check_bodies(result, mail, files, direction)
        finally:
            mail.close()
        for text in result.differences:
            self.out(f"{scope}: {text}")
        if result.count > len(result.differences):
            self.out(f"{scope}: and {result.count - len(result.differences)} more differences")
        if result.ok:
            self.out(
                f"{scope}: same in both ({result.mailboxes} mailboxes, {result.messages}"
                f" messages, {checked} bodies checked)"
            )
        return result.count

    def _check_bodies(
        self, result: Comparison, mail: Mail, files: Mapping[str, str], direction: str
    ) -> int:
        """Check bodies (a sample, or all) against the digests the cluster's
        names hold: the local bytes, and, into the cluster, the stored ones
        (Blobs.get checks what it reads against its name). The number checked."""
        keys = sorted(key for key in result.digests if key in files)
        if self.verify_bodies == "sample" and len(keys) > SAMPLE:
            keys = sorted(random.sample(keys, SAMPLE))
        for start in range(0, len(keys), BODY_BATCH):
            chunk = keys[start : start + BODY_BATCH]
            for key in chunk:
                file, digest = files[key], result.digests[key]
                data = mail.body(file)
                if data is None:
                    result.add(f"{result.message(key)}: the local file {file} is missing")
                elif sha256_hex(data) != digest:
                    result.add(f"{result.message(key)}: {file} is not the body {digest}")
            if direction == "cluster":
                wanted = sorted({result.digests[key] for key in chunk})
                for digest, error in zip(
                    wanted, self.io.run(self._check_stored(wanted)), strict=True
                ):
                    if error is not None:
                        result.add(f"body {digest}: {error}")
        return len(keys)

    async def _check_stored(self, digests: Sequence[str]) -> list[str | None]:
        limit = asyncio.Semaphore(PARALLEL)

        async def one(digest: str) -> str | None:
            async with limit:
                try:
                    await self.blobs.get(digest)
                except (BlobError, DatabaseError) as exc:
                    return str(exc)
                return None

        return list(await asyncio.gather(*(one(digest) for digest in digests)))

    def _verify_accounts_db(self) -> int:
        path = self.config.accounts_db
        in_cluster = self._version(ACCOUNTS_SCOPE) >= 1
        if not path.is_file() and not in_cluster:
            return 0
        if not path.is_file() or not in_cluster:
            self.out(f"{ACCOUNTS_SCOPE}: only in {'the cluster' if in_cluster else path}")
            return 1
        source = self._accounts_file(path)
        try:
            result = self._compare_accounts(source)
        finally:
            source.close()
        for text in result.differences:
            self.out(f"{ACCOUNTS_SCOPE}: {text}")
        if result.ok:
            self.out(f"{ACCOUNTS_SCOPE}: same in both ({result.rows} rows)")
        return result.count

    def _verify_scripts(self, direction: str) -> int:
        if direction == "cluster":
            addresses = sieve_accounts(self.scripts)
        else:
            rows = self.io.run(self.db.pool.fetch("SELECT DISTINCT address FROM sieve_scripts"))
            addresses = sorted(str(row[0]) for row in rows)
        problems = 0
        for address in addresses:
            if self._local_scripts(address) != self.io.run(self._read_cluster_scripts(address)):
                self.out(f"{address}: the Sieve scripts differ")
                problems += 1
        return problems

    def _report(self, where: str) -> None:
        t = self.totals
        seconds = max(t.seconds, 1e-6)
        self.out(
            f"copied {t.copied} accounts {where} ({t.skipped} skipped): {t.messages} messages,"
            f" {mib(t.octets)}, {t.rows} rows in {t.seconds:.1f} s"
            f" ({t.rows / seconds:.0f} rows/s, {t.bodies / seconds:.0f} bodies/s)"
        )
        if self.missing:
            self.out(f"{len(self.missing)} messages left out (their files were missing):")
            for scope, file in self.missing:
                self.out(f"  {scope} {file}")
