"""What a cluster node shares between its parts (``[store] backend = "cluster"``).

One event loop thread for all the cluster's I/O (estafeta.cluster.ioloop),
one connection pool, one body store with its disk cache, and one LISTEN
connection whose notices go to the part that holds the scope: the store
(an account's index) or the accounts (``#accounts``). Maintenance runs on
the same loop: the body collector and the pruning of old tombstones, each
at most once per period across the cluster (a lease).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from estafeta.auth.cluster import ClusterAccounts
from estafeta.cluster import replica
from estafeta.cluster.blobs import Blobs
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.leases import Leases
from estafeta.cluster.listener import Listener
from estafeta.config import Config, ConfigError
from estafeta.queue.cluster import ClusterQueueStore
from estafeta.sieve import Compiled
from estafeta.sieve.cluster import ClusterScriptStore
from estafeta.spam.cluster import SharedTokenStore
from estafeta.store.cluster import ClusterStore

log = logging.getLogger("estafeta.cluster")

COLLECT_EVERY = 600.0
"""Seconds between two runs of the body collector and the pruning."""
COLLECT_GRACE = 3600.0
"""Seconds a body is kept after it was last claimed, and after it was found
unused, before it is removed: far longer than any write between its PUT
and its commit."""


class ClusterNode:
    def __init__(self, config: Config) -> None:
        store = config.store
        if store.database is None:  # config_store refuses this already
            raise ConfigError(config.path, "store.database", "is required for a cluster")
        self.config = config
        self.io = IoLoop("cluster-io")
        self.db = Database(store.database, application_name=f"estafeta {store.node}")
        cache = store.cache_dir or config.data_dir / "cache"
        self.cache_dir: Path = cache
        self.blobs: Blobs | None = None
        self._listening: concurrent.futures.Future[None] | None = None
        self._maintaining: concurrent.futures.Future[None] | None = None
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._default: Callable[[str], None] = lambda _scope: None
        self._resyncs: list[Callable[[], None]] = []

    def open(self) -> None:
        """Connect, migrate, make the body store; DatabaseError says why not."""
        self.io.start()
        try:
            self.io.run(self.db.open())
        except DatabaseError:
            self.io.stop()
            raise
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.blobs = Blobs(
            self.db, self.config.store.objects, self.cache_dir, self.config.store.cache_mib << 20
        )

    def bodies(self) -> Blobs:
        if self.blobs is None:
            raise DatabaseError("the cluster node is not open")
        return self.blobs

    def route(self, scope: str, handler: Callable[[str], None]) -> None:
        """Notices of ``scope`` go to ``handler`` (called on the IoLoop: it
        must only hand the work to a thread of its own)."""
        self._handlers[scope] = handler

    def route_rest(self, handler: Callable[[str], None], resync: Callable[[], None]) -> None:
        """Notices of every other scope go to ``handler``."""
        self._default = handler
        self._resyncs.append(resync)

    def _notice(self, scope: str) -> None:
        self._handlers.get(scope, self._default)(scope)

    def _resync(self) -> None:
        for handler in self._handlers.values():
            handler("")
        for resync in self._resyncs:
            resync()

    def start(self) -> None:
        listener = Listener(self.db, self._notice, self._resync)
        self._listening = self.io.submit(listener.run())
        self._maintaining = self.io.submit(self._maintain())

    async def _maintain(self) -> None:
        leases = Leases(self.io, self.db, self.config.store.node)
        holder = leases.new_holder()
        while True:
            await asyncio.sleep(COLLECT_EVERY)
            try:
                # One node a period does it (a node that dies lets it go).
                if not await leases.acquire("job:collector", COLLECT_EVERY * 0.9, holder=holder):
                    continue
                doomed, removed = await self.bodies().collect(COLLECT_GRACE)
                pruned = await replica.prune(self.db)
                if doomed or removed or pruned:
                    log.info(
                        "collector: %d bodies unused, %d removed, %d tombstones pruned",
                        doomed,
                        removed,
                        pruned,
                    )
            except Exception as exc:  # the database or the object store is away
                log.warning("collector: %s", exc)

    def close(self) -> None:
        for future in (self._listening, self._maintaining):
            if future is not None:
                self.io.loop.call_soon_threadsafe(future.cancel)
        if self.blobs is not None:
            self.blobs.close()
        with contextlib.suppress(Exception):
            self.io.run(self.db.close(), timeout=10)
        self.io.stop()


def cli_accounts(config: Config) -> ClusterAccounts:
    """The accounts for a command of the CLI: a node of its own, closed
    with the accounts."""
    node = _cli_node(config)
    try:
        return ClusterAccounts(
            config.accounts_db,
            config.domains,
            io=node.io,
            db=node.db,
            hasher=config.auth.hasher(),
            scram_iterations=config.auth.scram_iterations,
            on_close=node.close,
        )
    except BaseException:
        node.close()
        raise


@contextlib.contextmanager
def cli_store(config: Config) -> Iterator[ClusterStore]:
    """The store for a command of the CLI, started; stopped afterwards."""
    node = _cli_node(config)
    try:
        store = ClusterStore(
            config.data_dir / "replicas",
            config.hostname,
            io=node.io,
            db=node.db,
            bodies=node.bodies(),
            listen=False,
        )
        with store:
            yield store
    finally:
        node.close()


@contextlib.contextmanager
def cli_scripts(config: Config, compile: Callable[[str], Compiled]) -> Iterator[ClusterScriptStore]:
    """The Sieve scripts every node shares, for a command of the CLI."""
    node = _cli_node(config)
    try:
        yield ClusterScriptStore(
            node.io,
            node.db,
            max_script_size=config.sieve.max_script_size,
            max_scripts=config.sieve.max_scripts,
            compile=compile,
        )
    finally:
        node.close()


@contextlib.contextmanager
def cli_spam_store(config: Config) -> Iterator[SharedTokenStore]:
    """The junk filter's statistics every node shares, for the CLI."""
    node = _cli_node(config)
    try:
        s = config.spam.settings
        yield SharedTokenStore(node.io, node.db, max_tokens=s.max_tokens, max_trained=s.max_trained)
    finally:
        node.close()


def _cli_node(config: Config) -> ClusterNode:
    node = ClusterNode(config)
    try:
        node.open()
    except DatabaseError as exc:
        raise ConfigError(config.path, "store.database", str(exc)) from None
    return node


class _CliQueue(ClusterQueueStore):
    """The queue for a command of the CLI: claims nothing (an operator's
    delete wins over a node's attempt), and closes its node with it."""

    def __init__(self, node: ClusterNode) -> None:
        super().__init__(node.io, node.db, node.config.store.node, tool=True)
        self._node = node

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._node.close()


def cli_queue(config: Config) -> ClusterQueueStore:
    return _CliQueue(_cli_node(config))
