"""The cluster's outbound queue (estafeta.queue.cluster) against a real
PostgreSQL: the local store's interface; claims that two nodes asking at
once never share; a dead node's claims taken over after the lease, its late
writes refused; a DSN queued exactly once whichever nodes settle; the last
entry of a message taking it along under concurrency; erasure; and the
queue runner delivering over loopback SMTP from two nodes, and riding out a
database that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from _ports import free_port
from _postgres import PASSWORD, Postgres
from aiosmtpd.controller import Controller

from conftest import run_drained
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig
from estafeta.config import QueueConfig
from estafeta.dns import MockResolver
from estafeta.queue import runner as queue_runner
from estafeta.queue.cluster import ClusterQueueStore
from estafeta.queue.delivery import Deliverer, Result
from estafeta.queue.runner import QueueRunner
from estafeta.queue.store import Bounce, QueueUnavailable

ALICE = "alice@example.test"
MESSAGE = b"From: alice@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


@contextlib.contextmanager
def node(
    config: DatabaseConfig, name: str, lease: float = 300.0, *, tool: bool = False
) -> Iterator[ClusterQueueStore]:
    """A node of its own: IoLoop, pool and queue store."""
    with IoLoop(f"{name}-io") as io:
        db = Database(config)
        io.run(db.open())
        try:
            yield ClusterQueueStore(io, db, name, lease, tool=tool)
        finally:
            io.run(db.close())


def rows(store: ClusterQueueStore, sql: str, *args: Any) -> list[Any]:
    async def fetch() -> list[Any]:
        return list(await store.db.pool.fetch(sql, *args))

    return store.io.run(fetch())


def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released together; their results."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_the_local_stores_interface(database: DatabaseConfig) -> None:
    with node(database, "node-a") as store:
        entries = store.enqueue(
            ALICE,
            ["a@one.test", "b@two.test", "c@one.test", "a@one.test"],
            MESSAGE,
            envelope_id="env-1",
            now=1000.0,
        )
        by_domain = {e.domain: e.recipients for e in entries}
        assert by_domain == {"one.test": ("a@one.test", "c@one.test"), "two.test": ("b@two.test",)}
        one = next(e for e in entries if e.domain == "one.test")
        two = next(e for e in entries if e.domain == "two.test")
        assert store.read_message(one.message_id) == MESSAGE
        assert store.envelope_id(one.message_id) == "env-1"
        assert store.depth() == (2, 1000.0) and store.next_due() == 1000.0
        assert [e.id for e in store.entries()] == [one.id, two.id]

        # due claims: what it returned is not offered again.
        assert [e.id for e in store.due(999.0, set(), 10)] == []
        assert [e.id for e in store.due(1000.0, {one.id}, 10)] == [two.id]
        assert [e.id for e in store.due(1000.0, set(), 10)] == [one.id]
        assert store.due(1000.0, set(), 10) == []
        [claim] = rows(store, "SELECT claimed_by, lease_until > now() AS live FROM queue_entries"
                       " WHERE id = $1", one.id)  # fmt: skip
        assert claim["claimed_by"] == "node-a" and claim["live"]

        # One recipient delivered, one to retry in 300 s; the claim is released.
        assert store.reschedule(
            one.id, recipients=["c@one.test"], next_attempt=1300.0, error="451 later"
        )
        again = store.get(one.id)
        assert again is not None and again.recipients == ("c@one.test",)
        assert again.attempts == 1 and again.last_error == "451 later"
        assert rows(store, "SELECT claimed_by FROM queue_entries WHERE id = $1", one.id) == [
            (None,)
        ]
        assert not store.reschedule(one.id, recipients=["x@one.test"], next_attempt=0, error="")
        assert store.flush(one.id, now=1100.0) == 1
        assert [e.id for e in store.due(1100.0, set(), 10)] == [one.id]

        # The last entry of a message takes the message along.
        assert store.settle(two.id, recipients=[], next_attempt=0, error="")
        assert store.read_message(one.message_id) == MESSAGE
        assert store.remove(one.id)
        assert store.entries() == [] and store.depth() == (0, None)
        with pytest.raises(FileNotFoundError):
            store.read_message(one.message_id)
        assert not store.remove(one.id)
        assert store.flush() == 0

        assert store.sts_get("example.net") is None
        store.sts_put("example.net", '{"mode": "testing"}')
        store.sts_put("example.net", '{"mode": "enforce"}')
        assert store.sts_get("example.net") == '{"mode": "enforce"}'
        with pytest.raises(ValueError):
            store.enqueue(ALICE, [], MESSAGE)


def test_two_nodes_claiming_at_once_share_nothing(database: DatabaseConfig) -> None:
    with node(database, "node-a") as a, node(database, "node-b") as b:
        domains = [f"r@d{i}.test" for i in range(50)]
        entries = a.enqueue(ALICE, domains, MESSAGE, now=1000.0)
        assert len(entries) == 50
        got_a, got_b = at_once(lambda: a.due(1000.0, set(), 50), lambda: b.due(1000.0, set(), 50))
        ids_a, ids_b = {e.id for e in got_a}, {e.id for e in got_b}
        assert not ids_a & ids_b
        assert ids_a | ids_b == {e.id for e in entries}
        holders = dict(rows(a, "SELECT id, claimed_by FROM queue_entries"))
        assert all(holders[i] == "node-a" for i in ids_a)
        assert all(holders[i] == "node-b" for i in ids_b)

        # Many small claims by four stores of two nodes, racing: still disjoint.
        more = b.enqueue(ALICE, [f"r@e{i}.test" for i in range(60)], MESSAGE, now=2000.0)
        with node(database, "node-c") as c, node(database, "node-d") as d:

            def drain(store: ClusterQueueStore) -> list[str]:
                taken: list[str] = []
                while batch := store.due(2000.0, set(), 3):
                    taken += [e.id for e in batch]
                return taken

            takes = at_once(*(lambda s=s: drain(s) for s in (a, b, c, d)))
        flat = [i for take in takes for i in take]
        assert len(flat) == len(set(flat)) == 60
        assert set(flat) == {e.id for e in more}


WRITES: dict[str, Callable[[ClusterQueueStore, str], bool]] = {
    "reschedule": lambda store, entry_id: store.reschedule(
        entry_id, recipients=["bob@far.test"], next_attempt=9.0, error="451 x"
    ),
    "remove": lambda store, entry_id: store.remove(entry_id),
    "bounce": lambda store, entry_id: store.settle(
        entry_id, recipients=[], next_attempt=0, error="", bounces=[Bounce(ALICE, b"DSN")]
    ),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_dead_nodes_claims_go_to_another_after_the_lease(
    database: DatabaseConfig, write: str
) -> None:
    # A lease long enough for the next query to come within it, loaded or not.
    with node(database, "node-a", lease=1.0) as a, node(database, "node-b") as b:
        [entry] = a.enqueue(ALICE, ["bob@far.test"], MESSAGE, now=1000.0)
        assert [e.id for e in a.due(1000.0, set(), 10)] == [entry.id]
        # Node A "dies" holding it: B is not offered it while the lease holds...
        assert b.due(1000.0, set(), 10) == []
        # ...and is once it has run out.
        taken: list[str] = []
        until(lambda: bool(taken.extend(e.id for e in b.due(1000.0, set(), 10)) or taken))
        assert taken == [entry.id]
        # A comes back: what it writes about the entry does not count.
        assert a.renew([entry.id]) == {entry.id}  # lost
        assert not WRITES[write](a, entry.id)
        assert not WRITES[write](a, entry.id)  # nor when it tries again
        same = b.get(entry.id)
        assert same is not None and same.attempts == 0 and same.next_attempt == 1000.0
        assert rows(b, "SELECT claimed_by FROM queue_entries") == [("node-b",)]
        assert rows(b, "SELECT count(*) FROM queue_messages") == [(1,)]  # no DSN
        # B's writes do.
        assert WRITES[write](b, entry.id)
        assert rows(b, "SELECT claimed_by FROM queue_entries") in ([], [(None,)])


def test_a_lapsed_claim_nobody_took_still_records_the_attempt(database: DatabaseConfig) -> None:
    with node(database, "node-a", lease=0.2) as a:
        [entry] = a.enqueue(ALICE, ["bob@far.test"], MESSAGE, now=1000.0)
        a.due(1000.0, set(), 10)
        until(lambda: rows(a, "SELECT lease_until < clock_timestamp() FROM queue_entries")[0][0])
        # No other node attempted it: recording the attempt keeps it from a second one.
        assert a.reschedule(entry.id, recipients=["bob@far.test"], next_attempt=2000.0, error="x")
        again = a.get(entry.id)
        assert again is not None and again.attempts == 1 and again.next_attempt == 2000.0


def test_renew_keeps_a_claim_and_release_gives_it_up(database: DatabaseConfig) -> None:
    with node(database, "node-a", lease=1.0) as a, node(database, "node-b") as b:
        [entry] = a.enqueue(ALICE, ["bob@far.test"], MESSAGE, now=1000.0)
        a.due(1000.0, set(), 10)
        start = time.monotonic()
        while time.monotonic() - start < 2.0:  # twice the lease, renewed
            assert a.renew([entry.id, "unknown"]) == set()  # none lost
            assert b.due(1000.0, set(), 10) == []
            time.sleep(0.1)
        a.release([entry.id])
        assert [e.id for e in b.due(1000.0, set(), 10)] == [entry.id]
        assert a.renew([entry.id]) == set()  # released: no claim left to lose


def test_an_operator_deletion_wins_over_a_claim(database: DatabaseConfig) -> None:
    with node(database, "node-a") as a, node(database, "tool", tool=True) as tool:
        [entry] = a.enqueue(ALICE, ["bob@far.test"], MESSAGE, now=1000.0)
        a.due(1000.0, set(), 10)
        assert tool.remove(entry.id)  # estafeta queue delete: no claim needed
        assert not a.settle(
            entry.id, recipients=[], next_attempt=0, error="", bounces=[Bounce(ALICE, b"DSN")]
        )
        assert rows(a, "SELECT count(*) FROM queue_messages") == [(0,)]


@pytest.mark.parametrize("order", ["together", "stale-first"])
def test_a_dsn_is_queued_exactly_once(database: DatabaseConfig, order: str) -> None:
    with node(database, "node-a", lease=0.2) as a, node(database, "node-b") as b:
        [entry] = a.enqueue(ALICE, ["nobody@far.test"], MESSAGE, now=1000.0)
        a.due(1000.0, set(), 10)
        taken: list[str] = []
        until(lambda: bool(taken.extend(e.id for e in b.due(1000.0, set(), 10)) or taken))

        def bounce(store: ClusterQueueStore) -> bool:
            dsn = Bounce(ALICE, f"DSN from {store.node}".encode())
            return store.settle(entry.id, recipients=[], next_attempt=0, error="", bounces=[dsn])

        # Both nodes bounce the entry (at the same moment, or the node whose
        # lease ran out first): only B's claim counts.
        if order == "together":
            assert at_once(lambda: bounce(a), lambda: bounce(b)) == [False, True]
        else:
            assert [bounce(a), bounce(b)] == [False, True]
        assert not bounce(a) and not bounce(b)  # and nothing settles twice
        dsns = rows(b, "SELECT sender, data FROM queue_messages")
        assert [(d["sender"], bytes(d["data"])) for d in dsns] == [("", b"DSN from node-b")]
        [dsn_entry] = b.entries()
        assert dsn_entry.recipients == (ALICE,) and dsn_entry.sender == ""


def test_a_delay_warning_is_queued_once_with_the_warned_mark(database: DatabaseConfig) -> None:
    with node(database, "node-a") as a, node(database, "node-b") as b:
        [entry] = a.enqueue(ALICE, ["slow@far.test"], MESSAGE, now=1000.0)
        a.due(1000.0, set(), 10)
        dsn = Bounce(ALICE, b"delayed")
        assert a.settle(
            entry.id,
            recipients=["slow@far.test"],
            next_attempt=1000.0,
            error="451 busy",
            warned=True,
            bounces=[dsn],
        )
        again = b.get(entry.id)
        assert again is not None and again.warned and again.attempts == 1
        assert len(rows(b, "SELECT 1 FROM queue_messages WHERE sender = ''")) == 1


def test_two_nodes_removing_a_messages_last_entries_remove_it(database: DatabaseConfig) -> None:
    # Each node removes one of a message's two entries at the same time; the
    # message row goes with whichever is last (its lock orders them).
    with node(database, "node-a") as a, node(database, "node-b") as b:
        for round_ in range(20):
            entries = a.enqueue(ALICE, ["x@one.test", "y@two.test"], MESSAGE, now=float(round_))
            got_a = a.due(float(round_), set(), 1)
            got_b = b.due(float(round_), set(), 1)
            assert {e.id for e in got_a + got_b} == {e.id for e in entries}
            done = at_once(
                functools.partial(a.settle, got_a[0].id, recipients=[], next_attempt=0, error=""),
                functools.partial(b.settle, got_b[0].id, recipients=[], next_attempt=0, error=""),
            )
            assert done == [True, True]
            assert rows(a, "SELECT count(*) FROM queue_messages") == [(0,)]
            assert a.entries() == []


def test_forget_address(database: DatabaseConfig) -> None:
    with node(database, "node-a") as a:
        a.enqueue("alice+news@example.test", ["x@far.test"], MESSAGE)  # its own: deleted
        vacation = b"From: Alice <alice@example.test>\r\nSubject: away\r\n\r\nAway.\r\n"
        a.enqueue("", ["bob@far.test"], vacation)  # its vacation reply: deleted
        [mixed] = a.enqueue("carol@example.test", ["ALICE@example.test", "bob@example.test"], b"x")
        [only] = a.enqueue("carol@example.test", ["alice@example.test"], b"y")
        a.due(time.time(), set(), 10)
        a.settle(
            mixed.id,
            recipients=list(mixed.recipients),
            next_attempt=0,
            error="451 alice@example.test is over quota",
        )
        assert a.forget_address("alice@example.test") == (2, 2)
        [left] = a.entries()
        assert left.id == mixed.id and left.recipients == ("bob@example.test",)
        assert left.last_error == ""
        assert a.get(only.id) is None
        assert rows(a, "SELECT count(*) FROM queue_messages") == [(1,)]
        assert a.forget_address("alice@example.test") == (0, 0)


# -- the runner over the cluster store -------------------------------------------


class Sink:
    """The far MX: refuses nobody@, keeps the rest (one record per message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple[str, ...], bytes]] = []
        self.lock = threading.Lock()
        self.delay = 0.0  # before the reply to DATA: a long attempt

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        with self.lock:
            self.messages.append(
                (envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 Ok: queued"


class LocalSink:
    """Local delivery for example.test (where the DSNs go)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, tuple[str, ...], bytes]] = []

    def handles(self, domain: str) -> bool:
        return domain == "example.test"

    async def deliver_queued(
        self, sender: str, recipients: Sequence[str], data: bytes, queue_id: str = ""
    ) -> list[Result]:
        self.received.append((sender, tuple(recipients), data))
        return [Result(r, "sent", "2.0.0", "250 delivered") for r in recipients]


@pytest.fixture
def far_mx() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def runner(store: ClusterQueueStore, port: int, local: LocalSink) -> QueueRunner:
    config = QueueConfig(port=port, mta_sts=False, dane=False, retry_min=60.0)
    resolver = MockResolver(
        {("far.test", "MX"): [(10, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]}
    )
    deliverer = Deliverer(hostname="mx.example.test", resolver=resolver, config=config)
    return QueueRunner(
        store=store, deliverer=deliverer, config=config, hostname="mx.example.test", local=local
    )


async def run_until(runners: Sequence[QueueRunner], done: Callable[[], bool]) -> None:
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        deadline = time.monotonic() + 15
        while not done():
            assert time.monotonic() < deadline, "the runners did not finish in time"
            assert not any(t.done() for t in tasks), "a runner stopped"
            await asyncio.sleep(0.05)
    finally:
        for r in runners:
            await r.stop()
        await asyncio.gather(*tasks)


def test_two_runners_deliver_each_message_once(
    database: DatabaseConfig, far_mx: tuple[Sink, int]
) -> None:
    sink, port = far_mx
    local = LocalSink()
    with node(database, "node-a") as a, node(database, "node-b") as b:
        for i in range(12):
            a.enqueue(ALICE, [f"bob{i}@far.test"], MESSAGE + f"{i}\r\n".encode())
        b.enqueue(ALICE, ["nobody@far.test"], MESSAGE + b"lost\r\n", envelope_id="env-9")

        def settled() -> bool:
            return len(sink.messages) >= 12 and len(local.received) >= 1 and not a.entries()

        run_drained(run_until([runner(a, port, local), runner(b, port, local)], settled))
        bodies = sorted(content for _, _, content in sink.messages)
        assert bodies == sorted(MESSAGE + f"{i}\r\n".encode() for i in range(12))
        assert all(sender == ALICE for sender, _, _ in sink.messages)
        # The refused recipient: one DSN, to the sender, from the null path.
        [(sender, to, dsn)] = local.received
        assert sender == "" and to == (ALICE,)
        assert b"nobody@far.test" in dsn and b"5.1.1" in dsn and b"env-9" in dsn
        assert rows(a, "SELECT count(*) FROM queue_messages") == [(0,)]


def test_a_long_attempt_keeps_its_claim(
    database: DatabaseConfig, far_mx: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attempt takes over twice the lease: the runner renews the claim,
    # so the other node never attempts the entry too.
    monkeypatch.setattr(queue_runner, "POLL", 0.05)
    sink, port = far_mx
    sink.delay = 1.5
    with node(database, "node-a", lease=0.6) as a, node(database, "node-b", lease=0.6) as b:
        a.enqueue(ALICE, ["bob@far.test"], MESSAGE)
        local = LocalSink()
        run_drained(
            run_until([runner(a, port, local), runner(b, port, local)], lambda: not a.entries())
        )
        assert len(sink.messages) == 1


class Proxy:
    """A TCP forwarder to PostgreSQL that can be cut: its connections
    reset, new ones refused (the database "goes away")."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.io = IoLoop("proxy-io").start()
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    def open(self) -> None:
        async def start() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self.io.run(start())

    def cut(self) -> None:
        async def cut() -> None:
            assert self.server is not None
            self.server.close()
            for transport in self.transports:
                transport.abort()  # type: ignore[attr-defined]
            self.transports.clear()

        self.io.run(cut())

    def close(self) -> None:
        self.cut()
        self.io.stop()


def test_an_unreachable_database_is_tried_again(
    database: DatabaseConfig,
    postgres: Postgres,
    far_mx: tuple[Sink, int],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_runner, "POLL", 0.1)
    sink, port = far_mx
    proxy = Proxy(postgres.port)
    proxy.open()
    url = dataclasses.replace(database.url, port=proxy.port)
    config = dataclasses.replace(database, url=url, connect_timeout=2.0)
    try:
        with node(config, "node-a") as a:
            a.enqueue(ALICE, ["bob@far.test"], MESSAGE)
            proxy.cut()
            with pytest.raises(DatabaseError) as caught:
                a.due(time.time(), set(), 10)
            assert isinstance(caught.value, QueueUnavailable)
            assert str(url) in str(caught.value) and PASSWORD not in str(caught.value)

            async def outage() -> None:
                queue_runner = runner(a, port, LocalSink())
                task = asyncio.create_task(queue_runner.run())
                await asyncio.sleep(0.6)  # polls without a database
                assert not task.done()
                proxy.open()  # it comes back: the message goes out
                deadline = time.monotonic() + 10
                while not sink.messages:
                    assert time.monotonic() < deadline, "not delivered after the outage"
                    await asyncio.sleep(0.05)
                await queue_runner.stop()
                await task

            with caplog.at_level(logging.INFO, logger="estafeta.queue"):
                run_drained(outage())
            events = [r.getMessage() for r in caplog.records if r.name == "estafeta.queue"]
            assert events.count("queue_unavailable") == 1  # once an outage, not each poll
            assert "queue_available" in events
            # No traceback of ours (asyncpg's pool logs its reconnection attempts).
            assert not [r for r in caplog.records if r.exc_info and r.name.startswith("estafeta")]
            assert len(sink.messages) == 1
            until(lambda: a.entries() == [])
    finally:
        proxy.close()
