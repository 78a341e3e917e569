"""Leases across nodes (estafeta.cluster.leases) against a real PostgreSQL:
two holders exclude each other, also two sessions of one node; expiry lets
another in, renewal keeps it out, release lets it in; LeaseLocks renews by
itself and a dead node's maildrops come free after the TTL; and POP3
sessions of two "nodes" over loopback lock one maildrop (rfc1939:8)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import run_drained
from estafeta.auth.guard import LoginResult, account_key
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.leases import LeaseLocks, Leases
from estafeta.cluster.settings import DatabaseConfig
from estafeta.pop3 import session as pop3

ALICE = "alice@example.test"


@pytest.fixture
def db(database: DatabaseConfig, ioloop: IoLoop) -> Iterator[Database]:
    node = Database(database)
    ioloop.run(node.open())
    yield node
    ioloop.run(node.close())


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    """Poll ``check`` until it is true: the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@contextlib.contextmanager
def another_node(config: DatabaseConfig) -> Iterator[tuple[IoLoop, Database]]:
    """A node of its own (IoLoop and pool), for one that dies."""
    with IoLoop("node-a-io") as io:
        node = Database(config)
        io.run(node.open())
        try:
            yield io, node
        finally:
            io.run(node.close())


async def _kill(node: Database) -> None:
    node.pool.terminate()  # as if the process died: no release, no renewal


def test_two_holders_exclude_each_other(ioloop: IoLoop, db: Database) -> None:
    a, b = Leases(ioloop, db, "node-a"), Leases(ioloop, db, "node-b")

    async def run() -> None:
        assert await a.acquire("job", 30)
        assert not await b.acquire("job", 30)
        assert await a.acquire("job", 30)  # its own: taken again (renewed)
        assert await a.holder_of("job") == "node-a"
        assert not await b.renew("job", 30) and not await b.release("job")
        assert await a.holder_of("job") == "node-a"
        # Two sessions of one node: holders of their own exclude each other.
        first, second = a.new_holder(), a.new_holder()
        assert first != second and first.startswith("node-a/")
        assert await a.acquire("pop3:x", 30, holder=first)
        assert not await a.acquire("pop3:x", 30, holder=second)
        assert not await a.acquire("pop3:x", 30)  # nor the node's own name
        assert await a.release("pop3:x", holder=first)
        assert await a.acquire("pop3:x", 30, holder=second)
        # Released: the other node gets it.
        assert await a.release("job")
        assert await a.holder_of("job") is None
        assert await b.acquire("job", 30)

    run_drained(run())


def test_only_one_of_many_at_once_gets_it(ioloop: IoLoop, db: Database) -> None:
    nodes = [Leases(ioloop, db, f"node-{n}") for n in range(12)]

    async def run() -> list[bool]:
        return list(await asyncio.gather(*(node.acquire("once", 30) for node in nodes)))

    assert sorted(run_drained(run())) == [False] * 11 + [True]


def test_expiry_lets_another_in_and_renewal_keeps_it_out(ioloop: IoLoop, db: Database) -> None:
    a, b = Leases(ioloop, db, "node-a"), Leases(ioloop, db, "node-b")

    async def run() -> None:
        # A TTL ten renewals long: a stall of a loaded machine between two
        # of them must not let the lease lapse.
        assert await a.acquire("renewed", 1.0)
        assert await a.acquire("expires", 0.5)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # two TTLs, renewed all along
            assert await a.renew("renewed", 1.0)
            assert not await b.acquire("renewed", 1.0)
            await asyncio.sleep(0.1)
        # The one not renewed expired long ago: the other node took it
        # and the first holder cannot renew it any more.
        assert await b.acquire("expires", 30)
        assert not await a.renew("expires", 30)
        # Stop renewing: within the TTL the other node gets it.
        took = await until(lambda: b.acquire("renewed", 30), within=4)
        assert took < 2.5
        assert await b.holder_of("renewed") == "node-b"
        # An expired lease nobody took is still renewable by its holder.
        assert await a.acquire("lapsed", 0.1)
        await asyncio.sleep(0.3)
        assert await a.holder_of("lapsed") is None
        assert await a.renew("lapsed", 30)
        assert await a.holder_of("lapsed") == "node-a"
        assert await a.prune(expired_for=0) == 0  # nothing expired now

    run_drained(run())


def test_bad_arguments_are_refused(ioloop: IoLoop, db: Database) -> None:
    leases = Leases(ioloop, db, "node-a")
    with pytest.raises(ValueError, match="TTL"):
        run_drained(leases.acquire("x", 0))
    with pytest.raises(ValueError, match="lease name"):
        run_drained(leases.acquire("x" * 401, 10))
    with pytest.raises(ValueError, match="renew_every"):
        LeaseLocks(ioloop, db, "node-a", ttl=1.0, renew_every=2.0)


def test_lease_locks_renew_themselves_and_exclude_sessions(ioloop: IoLoop, db: Database) -> None:
    a = LeaseLocks(ioloop, db, "node-a", ttl=1.0, renew_every=0.1)
    b = LeaseLocks(ioloop, db, "node-b", ttl=1.0, renew_every=0.1)
    leases = Leases(ioloop, db, "observer")

    async def run() -> None:
        assert await a.acquire(ALICE)
        assert not await a.acquire(ALICE)  # this node's other session
        assert not await b.acquire(ALICE)
        await asyncio.sleep(2.2)  # more than two TTLs: the renewals keep it
        assert a.holds(ALICE) and not b.holds(ALICE)
        assert not await b.acquire(ALICE)
        holder = await leases.holder_of("pop3:" + ALICE)
        assert holder is not None and holder.startswith("node-a/")
        a.release(ALICE)
        assert not a.holds(ALICE)
        await until(lambda: b.acquire(ALICE), within=3)
        assert b.holds(ALICE)
        # At once again on the node that let go (its release awaited first).
        b.release(ALICE)
        assert await b.acquire(ALICE)
        await b.close()
        assert await leases.holder_of("pop3:" + ALICE) is None
        await a.close()

    run_drained(run())


def test_a_dead_nodes_maildrop_comes_free_after_the_ttl(
    ioloop: IoLoop, db: Database, database: DatabaseConfig
) -> None:
    b = LeaseLocks(ioloop, db, "node-b", ttl=0.8, renew_every=0.2)

    with another_node(database) as (io_a, db_a):
        a = LeaseLocks(io_a, db_a, "node-a", ttl=0.8, renew_every=0.2)

        async def run() -> float:
            assert await a.acquire(ALICE)
            await asyncio.sleep(0.3)
            assert not await b.acquire(ALICE)
            await io_a.call(_kill(db_a))
            killed = time.monotonic()
            await until(lambda: b.acquire(ALICE), within=5)
            waited = time.monotonic() - killed
            # Node A's renewals failed: after its TTL it knows it lost the lock.
            await until(lambda: _false(a.holds(ALICE)), within=3)
            return waited

        waited = run_drained(run())
        assert 0.1 < waited < 2.0
        a.release(ALICE)  # never raises, its database gone or not
        with pytest.raises(DatabaseError):
            run_drained(a.acquire("bob@example.test"))
    run_drained(b.close())


async def _false(value: bool) -> bool:
    return not value


# -- POP3 sessions of two nodes over loopback ----------------------------------


class FakeAuthenticator:
    async def login(self, user: str, secret: str, protocol: str, peer: str) -> LoginResult:
        return LoginResult(account_key(user) if secret == "secret" else None)


@dataclass
class Box:
    id: int = 1
    uidvalidity: int = 7


@dataclass
class FakeStore:
    """The store as POP3 sees it: one message in alice's INBOX."""

    removed: list[tuple[str, list[int]]] = field(default_factory=list)

    @contextlib.contextmanager
    def reader(self, address: str) -> Iterator[Any]:
        yield self

    def mailbox(self, name: str) -> Box:
        return Box()

    def listing(self, box: int) -> list[tuple[int, int, str]]:
        return [(1, 12, "cur/1")]

    def shared_reader(self, address: str) -> Any:
        return self

    def content(self, file: str) -> bytes:
        return b"Subject: x\r\n"

    def remove(self, address: str, mailbox: str, uids: list[int]) -> None:
        self.removed.append((address, uids))


@contextlib.asynccontextmanager
async def pop3_node(locks: pop3.MaildropLocks, store: FakeStore) -> AsyncIterator[int]:
    """A POP3 listener on loopback whose sessions use ``locks``: its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = pop3.Session(
            reader,
            writer,
            accounts=None,  # type: ignore[arg-type]
            authenticator=FakeAuthenticator(),  # type: ignore[arg-type]
            store=store,  # type: ignore[arg-type]
            settings=pop3.Settings("node.example.test", allow_plaintext=True),
            locks=locks,
            tls=None,
            implicit_tls=False,
        )
        await session.run()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def login(cls, port: int) -> tuple[Client, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        assert (await reader.readline()).startswith(b"+OK")
        assert (await client.command("USER " + ALICE)).startswith(b"+OK")
        return client, await client.command("PASS secret")

    async def command(self, line: str) -> bytes:
        self.writer.write(line.encode() + b"\r\n")
        return await asyncio.wait_for(self.reader.readline(), 5)

    async def drop(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def test_pop3_sessions_on_two_nodes_lock_one_maildrop(
    ioloop: IoLoop, db: Database, database: DatabaseConfig
) -> None:
    store = FakeStore()
    locks_a = LeaseLocks(ioloop, db, "node-a", ttl=5, renew_every=1)
    locks_b = LeaseLocks(ioloop, db, "node-b", ttl=5, renew_every=1)

    async def run() -> None:
        async with pop3_node(locks_a, store) as port_a, pop3_node(locks_b, store) as port_b:
            first, answer = await Client.login(port_a)
            assert answer.startswith(b"+OK Logged in, 1 messages")
            for port in (port_b, port_a):  # the other node, and this node's other session
                other, answer = await Client.login(port)
                assert answer.startswith(b"-ERR [IN-USE]")  # rfc2449:8.1.1
                await other.drop()
            assert (await first.command("DELE 1")).startswith(b"+OK")
            assert await first.command("QUIT") == b"+OK Bye, 1 messages deleted\r\n"
            await first.drop()
            assert store.removed == [(ALICE, [1])]
            # QUIT released it: node B's session gets the maildrop.
            second, answer = await _login_soon(port_b)
            assert answer.startswith(b"+OK Logged in")
            other, answer = await Client.login(port_a)
            assert answer.startswith(b"-ERR [IN-USE]")
            await other.drop()
            # A dropped connection releases it too (and deletes nothing).
            assert (await second.command("DELE 1")).startswith(b"+OK")
            await second.drop()
            third, answer = await _login_soon(port_a)
            assert answer.startswith(b"+OK Logged in")
            await third.drop()
            assert store.removed == [(ALICE, [1])]
        await locks_a.close()
        await locks_b.close()

    run_drained(run())


async def _login_soon(port: int) -> tuple[Client, bytes]:
    """Log in, trying again while the last session's release is under way."""
    deadline = time.monotonic() + 5
    while True:
        client, answer = await Client.login(port)
        if answer.startswith(b"+OK") or time.monotonic() > deadline:
            return client, answer
        await client.drop()
        await asyncio.sleep(0.05)


def test_pop3_deletes_nothing_once_its_lease_is_lost(
    ioloop: IoLoop, db: Database, database: DatabaseConfig
) -> None:
    store = FakeStore()
    with another_node(database) as (io_a, db_a):
        locks = LeaseLocks(io_a, db_a, "node-a", ttl=0.6, renew_every=0.15)

        async def run() -> None:
            async with pop3_node(locks, store) as port:
                client, answer = await Client.login(port)
                assert answer.startswith(b"+OK")
                assert (await client.command("DELE 1")).startswith(b"+OK")
                await io_a.call(_kill(db_a))
                await until(lambda: _false(locks.holds(ALICE)), within=3)
                answer = await client.command("QUIT")
                assert answer.startswith(b"-ERR [SYS/TEMP] Maildrop lock lost")
                await client.drop()
                # No lock without the database: a temporary failure, not IN-USE.
                client, answer = await Client.login(port)
                assert answer.startswith(b"-ERR [SYS/TEMP] Temporary failure")
                await client.drop()
                # Meanwhile a node whose database answers can take it.
                other = LeaseLocks(ioloop, db, "node-b", ttl=5)
                assert await other.acquire(ALICE)
                await other.close()

        run_drained(run())
    assert store.removed == []
