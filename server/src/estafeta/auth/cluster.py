"""Accounts of a cluster node (``[store] backend = "cluster"``, docs/scale.md).

The accounts database (estafeta.auth.accounts: accounts, aliases,
credentials, second factors, app passwords, per-mailbox settings) is one
replicated scope, ``#accounts`` (estafeta.cluster.replica): every node reads
its own SQLite replica, so a login or an RCPT costs no round trip, and every
write runs the local code under the scope's lock in PostgreSQL, so the rules
the local backend checks in one transaction (an address is an account or an
alias, never both; a TOTP step is used once) hold across nodes.

Not replicated: the login history (``logins``), which each node keeps of
the logins it served; it has no key to replicate by and is written at
every login.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from estafeta.auth.accounts import BUSY_TIMEOUT_MS, Accounts
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.replica import Replica

log = logging.getLogger("estafeta.auth")

SCOPE = "#accounts"
TABLES = (
    "accounts", "aliases", "totp", "app_passwords", "retention", "scram", "scram_secret",
    "urlauth_keys", "metadata", "shared_addresses",
)  # fmt: skip


class ClusterAccounts(Accounts):
    def __init__(
        self,
        path: Any,
        domains: Iterable[str],
        *,
        io: IoLoop,
        db: Database,
        on_close: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """``on_close``: called last by ``close`` (the CLI's own node)."""
        self._on_close = on_close
        super().__init__(path, domains, **kwargs)  # the local file, its schema migrated
        conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        self._replica = Replica(io, db, SCOPE, conn, TABLES)
        # Writes of this node one at a time (they are one at a time across
        # nodes anyway: the scope's lock).
        self._replica_lock = threading.Lock()
        self._refresher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="accounts")
        self._refresh_queued = False
        with self._replica_lock:
            if not self._replica.sync() and self._replica.state()[1]:
                self._replica.write(lambda: None)  # the first node: an empty first version

    @contextmanager
    def _write(self, *, lookups: bool = True, shared: bool = True) -> Iterator[sqlite3.Connection]:
        if not shared:
            with super()._write(lookups=lookups) as conn:
                yield conn
            return
        with self._replica_lock, self._replica.writing():
            conn = self._replica.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._generation += 1
            conn.execute("COMMIT")

    def refresh(self) -> bool:
        """Pull what other nodes wrote; whether anything changed. Blocking."""
        with self._replica_lock:
            self._refresh_queued = False
            changed = self._replica.sync()
        if changed:
            self._generation += 1  # this object's lookups are stale
        return changed

    def changed_elsewhere(self) -> None:
        """Another node committed a write (the listener, on the IoLoop):
        refresh in a thread of our own, once however many notices come."""
        if self._refresh_queued:
            return
        self._refresh_queued = True
        future = self._refresher.submit(self.refresh)
        future.add_done_callback(_log_failure)

    def close(self) -> None:
        self._refresher.shutdown(wait=True)
        self._replica.conn.close()
        super().close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()


def _log_failure(future: concurrent.futures.Future[bool]) -> None:
    error = future.exception()
    if error is not None:  # the database is away: the next write pulls
        log.warning("cannot refresh the accounts: %s", error)
