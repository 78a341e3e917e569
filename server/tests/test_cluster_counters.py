"""Sending limits counted by every node (estafeta.cluster.counters.SendCounts,
estafeta.smtp.submission.SharedSendLimits) against a real PostgreSQL: two
nodes share one hourly count, old minutes are pruned, and a node whose
database goes away (a proxy in between is stopped) keeps accepting mail on
its own count, logs the outage once, and counts together again afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from _ports import free_port
from aiosmtpd.smtp import Envelope

from conftest import run_drained
from estafeta.cluster.counters import SendCounts, minute
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig
from estafeta.cluster.url import parse_url
from estafeta.smtp.submission import HOURLY_LIMIT, SharedSendLimits, SubmissionHandler

ALICE = "alice@example.test"
BOB = "bob@example.test"


class Proxy:
    """A TCP relay to ``target`` on loopback that a test can stop (every
    connection reset, new ones closed at once), hold (bytes wait: a slow
    database) and start again. It keeps its port bound all along, so that
    nothing else takes it meanwhile; ``close`` ends it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.held = threading.Event()
        self.down = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", free_port()))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.down.is_set():
                client.close()  # the database is "gone"
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.held.is_set():
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """The database goes away: connections reset, new ones closed."""
        self.down.set()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def start(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.held.clear()
        self.stop()
        self._open = False
        self._listener.close()

    def config(self, database: DatabaseConfig) -> DatabaseConfig:
        """``database`` reached through this proxy."""
        url = str(database.url).replace(f":{database.url.port}/", f":{self.port}/")
        return dataclasses.replace(database, url=parse_url(url), connect_timeout=2)


@pytest.fixture
def db(database: DatabaseConfig, ioloop: IoLoop) -> Iterator[Database]:
    node = Database(database)
    ioloop.run(node.open())
    yield node
    ioloop.run(node.close())


@pytest.fixture
def proxy(database: DatabaseConfig) -> Iterator[Proxy]:
    relay = Proxy(database.url.port or 5432)
    yield relay
    relay.close()


def test_counts_per_minute_and_pruning(ioloop: IoLoop, db: Database) -> None:
    counts = SendCounts(ioloop, db, prune_every=3600)
    now = time.time()

    async def run() -> None:
        for when in (now, now, now - 120, now - 2 * 3600, now - 3 * 3600):
            await counts.record(ALICE, when)
        await counts.record(BOB, now)
        assert await counts.count(ALICE, now - 3600) == 3
        assert await counts.count(ALICE, now - 60) == 2
        assert await counts.count(ALICE, 0) == 5
        assert await counts.count(BOB, now - 3600) == 1
        # The minute of ``since`` counts whole (never early out of a window).
        assert await counts.count(ALICE, minute(now) * 60 + 59) == 2
        assert await counts.prune(now) == 2  # the minutes two and three hours ago
        assert await counts.count(ALICE, 0) == 3
        # One row per address and minute however many messages.
        rows = await ioloop.call(db.pool.fetchval("SELECT count(*) FROM send_counts"))
        assert rows == 3
        # Pruning also comes by itself, now and then.
        counts.prune_every = 0
        await counts.record(ALICE, now - 5 * 3600)
        await counts.record(ALICE, now)
        assert await counts.count(ALICE, 0) == 4

    run_drained(run())


def test_two_nodes_share_the_hourly_limit(
    ioloop: IoLoop, db: Database, database: DatabaseConfig
) -> None:
    with IoLoop("node-b-io") as io_b:
        db_b = Database(database)
        io_b.run(db_b.open())
        try:
            node_a = SharedSendLimits(
                SendCounts(ioloop, db), messages_per_hour=5, recipients_per_message=10
            )
            node_b = SharedSendLimits(
                SendCounts(io_b, db_b), messages_per_hour=5, recipients_per_message=10
            )

            async def run() -> None:
                for _ in range(3):
                    assert await node_a.allow(ALICE)
                    await node_a.record(ALICE)
                for _ in range(2):
                    assert await node_b.allow(ALICE)
                    await node_b.record(ALICE)
                # Five in all: refused on both, though each sent fewer.
                assert not await node_b.allow(ALICE) and not await node_a.allow(ALICE)
                assert node_a.count(ALICE) == 3 and node_b.count(ALICE) == 2
                assert await node_a.allow(BOB)  # per account
                # Through the submission handler: 451 at MAIL (rfc3463 4.7.1).
                handler = SubmissionHandler(
                    hostname="node-b.example.test",
                    delivery=SimpleNamespace(router=SimpleNamespace(owns=lambda a, b: True)),  # type: ignore[arg-type]
                    signer=None,  # type: ignore[arg-type]
                    max_recipients=10,
                    limits=node_b,
                )
                server: Any = SimpleNamespace(authenticated_user=ALICE)
                session: Any = SimpleNamespace(peer=("192.0.2.7", 1234))
                reply = await handler.handle_MAIL(server, session, Envelope(), ALICE, [])
                assert reply == HOURLY_LIMIT.format(5)
                server.authenticated_user = BOB
                assert (await handler.handle_MAIL(server, session, Envelope(), BOB, [])).startswith(
                    "250"
                )

            run_drained(run())
        finally:
            io_b.run(db_b.close())


def _events(caplog: pytest.LogCaptureFixture, event: str) -> int:
    return sum(1 for r in caplog.records if r.getMessage() == event)


def test_a_node_without_its_database_counts_alone_and_logs_once(
    ioloop: IoLoop,
    db: Database,
    database: DatabaseConfig,
    proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    far = Database(proxy.config(database))
    ioloop.run(far.open())
    counts = SendCounts(ioloop, far, timeout=2, pause=0.3)
    limits = SharedSendLimits(counts, messages_per_hour=4, recipients_per_message=10)
    other = SharedSendLimits(SendCounts(ioloop, db), messages_per_hour=4, recipients_per_message=10)

    async def run() -> None:
        for _ in range(2):
            assert await limits.allow(ALICE)
            await limits.record(ALICE)
        proxy.stop()  # the database is gone for this node
        started = time.monotonic()
        # Its own count decides: two more, then refused; never an exception.
        for _ in range(2):
            assert await limits.allow(ALICE)
            await limits.record(ALICE)
        for _ in range(20):
            assert not await limits.allow(ALICE)
        assert await limits.allow(BOB)
        # Not a timeout per message: the breaker answers at once.
        assert time.monotonic() - started < 2.5
        assert limits.outage
        # The other node still counts only what reached the database.
        assert await other.allow(ALICE)
        proxy.start()
        deadline = time.monotonic() + 10
        while not await limits.allow(BOB) or limits.outage:  # the breaker's pause, a new connection
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await limits.allow(ALICE)  # the shared count: 2 of 4
        await limits.record(ALICE)
        await other.record(ALICE)
        assert not await limits.allow(ALICE) and not await other.allow(ALICE)

    try:
        with caplog.at_level(logging.INFO, logger="estafeta"):
            run_drained(run())
    finally:
        ioloop.run(far.close())
    assert _events(caplog, "send_limits_shared_unavailable") == 1
    assert _events(caplog, "send_limits_shared_restored") == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "send_limits_shared_unavailable"]
    error = record.estafeta_fields["error"]  # type: ignore[attr-defined]
    assert str(proxy.port) in error and "estafeta-test-password" not in error


def test_a_slow_database_does_not_hold_mail_up(
    ioloop: IoLoop, database: DatabaseConfig, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    far = Database(proxy.config(database))
    ioloop.run(far.open())
    # A timeout well above what a check costs on a loaded machine, so that
    # "answered at once" (below a second) is told from "waited for it".
    limits = SharedSendLimits(
        SendCounts(ioloop, far, timeout=2.0, pause=60),
        messages_per_hour=10,
        recipients_per_message=10,
    )

    async def run() -> list[float]:
        proxy.held.set()  # bytes wait in the proxy: every query hangs
        took = []
        for _ in range(5):
            started = time.monotonic()
            assert await limits.allow(ALICE)
            await limits.record(ALICE)
            took.append(time.monotonic() - started)
        return took

    try:
        with caplog.at_level(logging.INFO, logger="estafeta"):
            took = run_drained(run())
    finally:
        proxy.held.clear()
        proxy.stop()
        ioloop.run(far.close())
    # The first waits for its timeout, the rest are answered at once.
    assert 1.9 < took[0] < 5 and max(took[1:]) < 1.0
    assert _events(caplog, "send_limits_shared_unavailable") == 1
