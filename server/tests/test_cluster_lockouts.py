"""Login lockouts every node honours (estafeta.cluster.lockouts with
estafeta.auth.guard) against a real PostgreSQL: failures on two nodes add
up to one ip, pair or account lockout (reported once, by the node that
started it), a node started afterwards honours it, a locked-out client's
flood costs no query, a good login forgets, and a node whose database is
away or slow decides on its own counts without locking anybody else out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
from test_cluster_counters import Proxy

from conftest import run_drained
from estafeta.auth.guard import (
    ACCOUNT,
    IP,
    PAIR,
    Authenticator,
    GuardPolicy,
    LoginGuard,
    account_key,
)
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.lockouts import SharedLockouts
from estafeta.cluster.settings import DatabaseConfig

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "right"


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


def policy(**changes: object) -> GuardPolicy:
    values: dict[str, object] = {
        "ip_max_failures": 4,
        "pair_max_failures": 10,
        "account_max_failures": 100,
        "window": 600.0,
        "lockout": 300.0,
        **changes,
    }
    return GuardPolicy(**values)  # type: ignore[arg-type]


def node(io: IoLoop, db: Database, **changes: object) -> LoginGuard:
    return LoginGuard(policy(**changes), shared=SharedLockouts(io, db))


class Accounts:
    def __init__(self) -> None:
        self.calls = 0

    def authenticate(
        self, address: str, secret: str, protocol: str, *, allow_password: bool = True
    ) -> str | None:
        self.calls += 1
        return account_key(address) if allow_password and secret == PASSWORD else None


async def _no_sleep(seconds: float) -> None:
    pass


def authenticator(guard: LoginGuard) -> tuple[Authenticator, Accounts]:
    accounts = Accounts()
    return Authenticator(accounts, guard, sleep=_no_sleep, workers=1), accounts


def _lockouts(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        r.estafeta_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "auth_lockout"
    ]


def test_a_client_locked_out_on_two_nodes_and_on_a_third_started_later(
    ioloop: IoLoop, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = node(ioloop, db), node(ioloop, db)
    (auth_a, _), (auth_b, _) = authenticator(a), authenticator(b)
    client = "192.0.2.1"

    async def run() -> None:
        # Two failures on each node: four in all, the ip limit.
        for auth, user in ((auth_a, ALICE), (auth_a, BOB), (auth_b, ALICE)):
            assert not (await auth.login(user, "guess", "imap", client)).locked
        assert a.failures(client) == 2 and b.failures(client) == 1  # each node's own
        assert not (await auth_b.login(BOB, "guess", "pop3", client)).locked
        refused = await auth_b.login(ALICE, PASSWORD, "imap", client)
        assert refused.locked and refused.reason == IP
        # Node A hears of it at its next refresh (no query per attempt).
        assert a.check(client, ALICE).allowed
        await a.refresh()
        assert a.check(client, ALICE).scope == IP
        # A node started afterwards (or restarted) honours it too.
        c = node(ioloop, db)
        assert c.check(client, ALICE).allowed
        await c.refresh()
        decision = c.check(client, BOB)
        assert not decision.allowed and decision.scope == IP
        assert 290 < decision.until - c.clock() <= 300
        # Another client is not affected anywhere.
        assert (await auth_a.login(ALICE, PASSWORD, "imap", "192.0.2.2")).ok

    with caplog.at_level(logging.INFO, logger="estafeta"):
        run_drained(run())
    (logged,) = _lockouts(caplog)  # by node B, which started it; once
    assert logged["scope"] == IP and logged["client"] == client


def test_a_locked_out_flood_costs_no_query(
    ioloop: IoLoop, db: Database, database: DatabaseConfig, proxy: Proxy
) -> None:
    setter = node(ioloop, db, ip_max_failures=2)
    far = Database(proxy.config(database))
    ioloop.run(far.open())
    guard = LoginGuard(policy(), shared=SharedLockouts(ioloop, far, timeout=0.3))
    auth, accounts = authenticator(guard)

    async def run() -> None:
        for _ in range(2):
            await setter.record_failure("198.51.100.9", ALICE)
        await guard.refresh()
        proxy.stop()  # any query now would fail and be noticed
        started = time.monotonic()
        results = [await auth.login(ALICE, PASSWORD, "imap", "198.51.100.9") for _ in range(200)]
        assert all(r.locked and r.reason == IP for r in results)
        assert time.monotonic() - started < 1.0
        assert accounts.calls == 0 and not guard.shared_outage

    try:
        run_drained(run())
    finally:
        ioloop.run(far.close())


def test_pair_lockout_counts_both_nodes(ioloop: IoLoop, db: Database) -> None:
    changes: dict[str, object] = {"pair_max_failures": 3, "ip_max_failures": 10}
    a, b = node(ioloop, db, **changes), node(ioloop, db, **changes)
    client = "2001:db8:1:2::7"

    async def run() -> None:
        assert (await a.record_failure(client, ALICE)).lockouts == ()
        assert (await b.record_failure(client, ALICE)).lockouts == ()
        (lockout,) = (await a.record_failure(client, ALICE)).lockouts
        assert lockout.scope == PAIR and lockout.failures == 3
        # The same /64 is the same client; other accounts and clients are free.
        assert a.check("2001:db8:1:2::99", ALICE).scope == PAIR
        assert a.check(client, BOB).allowed and a.check("192.0.2.5", ALICE).allowed
        await b.refresh()
        assert b.check(client, ALICE).scope == PAIR
        # Nothing more is reported while it lasts.
        assert (await b.record_failure(client, ALICE)).lockouts == ()

    run_drained(run())


def test_account_lockout_needs_many_clients_across_nodes(ioloop: IoLoop, db: Database) -> None:
    # 6 failures from at least 3 clients (6 / pair limit 2), over two nodes.
    changes: dict[str, object] = {
        "account_max_failures": 6,
        "pair_max_failures": 2,
        "ip_max_failures": 50,
    }
    a, b = node(ioloop, db, **changes), node(ioloop, db, **changes)
    owner = "203.0.113.50"

    async def run() -> None:
        await a.record_success(owner, ALICE)  # the owner's phone is known to A
        # Two clients guess from both nodes until their pairs lock: 4 failures.
        for client in ("192.0.2.1", "192.0.2.2"):
            await a.record_failure(client, ALICE)
            (pair,) = (await b.record_failure(client, ALICE)).lockouts
            assert pair.scope == PAIR
        assert b.check("192.0.2.3", ALICE).allowed
        await b.record_failure("192.0.2.3", ALICE)
        (locked, pair) = (await a.record_failure("192.0.2.3", ALICE)).lockouts
        assert (locked.scope, locked.failures, pair.scope) == (ACCOUNT, 6, PAIR)
        # Unknown clients may not try the password (app passwords only).
        await b.refresh()
        for guard in (a, b):
            assert guard.check("192.0.2.77", ALICE).scope == ACCOUNT
            assert guard.check("192.0.2.77", BOB).allowed
        assert a.check(owner, ALICE).allowed  # known to node A
        assert not b.check(owner, ALICE).allowed  # "known" is each node's own

    run_drained(run())


def test_few_clients_cannot_lock_an_account(ioloop: IoLoop, db: Database) -> None:
    changes: dict[str, object] = {
        "account_max_failures": 4,
        "account_min_clients": 3,
        "pair_max_failures": 10,
        "ip_max_failures": 50,
    }
    a, b = node(ioloop, db, **changes), node(ioloop, db, **changes)

    async def run() -> None:
        for guard in (a, b, a, b, a):  # five failures, one client
            assert (await guard.record_failure("192.0.2.1", ALICE)).lockouts == ()
        assert (await b.record_failure("192.0.2.2", ALICE)).lockouts == ()  # two clients
        (lockout,) = (await a.record_failure("192.0.2.3", ALICE)).lockouts
        assert lockout.scope == ACCOUNT and lockout.failures == 7

    run_drained(run())


def test_a_good_login_forgets_the_clients_failures(ioloop: IoLoop, db: Database) -> None:
    changes: dict[str, object] = {"pair_max_failures": 3, "ip_max_failures": 4}
    a, b = node(ioloop, db, **changes), node(ioloop, db, **changes)
    client = "192.0.2.40"

    async def run() -> None:
        await a.record_failure(client, ALICE)
        await b.record_failure(client, ALICE)
        await b.record_success(client, ALICE)  # shared: 0 of 3 again
        # Not forgotten, this would be the third: a pair lockout.
        assert (await a.record_failure(client, ALICE)).lockouts == ()
        assert (await b.record_failure(client, ALICE)).lockouts == ()
        (lockout,) = (await a.record_failure(client, ALICE)).lockouts
        assert lockout.scope == PAIR and lockout.failures == 3

    run_drained(run())


def test_exempt_proxy_failures_count_as_clients_of_their_own(ioloop: IoLoop, db: Database) -> None:
    import ipaddress

    changes: dict[str, object] = {
        "account_max_failures": 4,
        "account_min_clients": 4,
        "exempt": (ipaddress.ip_network("10.0.0.0/8"),),
    }
    a, b = node(ioloop, db, **changes), node(ioloop, db, **changes)

    async def run() -> None:
        for guard in (a, b, a):
            assert (await guard.record_failure("10.1.1.1", ALICE)).lockouts == ()
        (lockout,) = (await b.record_failure("10.1.1.1", ALICE)).lockouts
        assert lockout.scope == ACCOUNT
        assert a.check("10.1.1.1", BOB).allowed  # the proxy itself is never locked

    run_drained(run())


def test_without_its_database_a_node_decides_alone_and_logs_once(
    ioloop: IoLoop,
    db: Database,
    database: DatabaseConfig,
    proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    far = Database(proxy.config(database))
    ioloop.run(far.open())
    guard = LoginGuard(policy(), shared=SharedLockouts(ioloop, far, timeout=2, pause=0.3))
    other = node(ioloop, db)
    auth, _ = authenticator(guard)
    client = "192.0.2.60"

    async def run() -> None:
        await other.record_failure(client, ALICE)  # one failure elsewhere, shared
        await other.record_failure(client, BOB)
        proxy.stop()
        started = time.monotonic()
        # Four failures here: this node's own count locks the client out.
        for n in range(4):
            result = await auth.login(ALICE, f"guess {n}", "imap", client)
            assert not result.locked
        assert (await auth.login(ALICE, PASSWORD, "imap", client)).reason == IP
        # Everybody else logs in, the database away or not.
        for n in range(5):
            assert (await auth.login(BOB, PASSWORD, "imap", f"192.0.2.{100 + n}")).ok
        await guard.refresh()
        assert time.monotonic() - started < 3
        assert guard.shared_outage
        proxy.start()
        deadline = time.monotonic() + 10
        while guard.shared_outage:  # the breaker's pause, a new connection
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            await guard.refresh()
        # The lockout this node made alone stands here, and was never
        # shared: the other node counts the two failures it saw itself.
        assert guard.check(client, ALICE).scope == IP
        assert other.check(client, ALICE).allowed
        await other.record_failure(client, ALICE)
        (lockout,) = (await other.record_failure(client, BOB)).lockouts
        assert lockout.scope == IP and lockout.failures == 4

    try:
        with caplog.at_level(logging.INFO, logger="estafeta"):
            run_drained(run())
    finally:
        ioloop.run(far.close())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("auth_shared_unavailable") == 1
    assert messages.count("auth_shared_restored") == 1
    assert [f["scope"] for f in _lockouts(caplog)] == [IP]  # this node's, during the outage


def test_a_slow_database_locks_nobody_out(
    ioloop: IoLoop, database: DatabaseConfig, proxy: Proxy
) -> None:
    far = Database(proxy.config(database))
    ioloop.run(far.open())
    # A timeout well above what a login costs on a loaded machine, so that
    # "answered at once" (below a second) is told from "waited for it".
    guard = LoginGuard(policy(), shared=SharedLockouts(ioloop, far, timeout=2.0, pause=60))
    auth, _ = authenticator(guard)

    async def run() -> list[float]:
        proxy.held.set()
        took = []
        for n in range(30):
            started = time.monotonic()
            ip = f"192.0.2.{n + 1}"
            assert not (await auth.login(ALICE, "guess", "imap", ip)).locked
            assert (await auth.login(ALICE, PASSWORD, "imap", ip)).ok
            took.append(time.monotonic() - started)
        await guard.refresh()
        return took

    try:
        took = run_drained(run())
    finally:
        proxy.held.clear()
        proxy.stop()
        ioloop.run(far.close())
    assert took[0] < 5 and max(took[1:]) < 1.0  # one timeout, then the breaker
    assert guard.shared_outage


def test_refresh_reads_what_is_new_and_now_and_then_everything(
    ioloop: IoLoop, db: Database
) -> None:
    setter = SharedLockouts(ioloop, db)
    reader = SharedLockouts(ioloop, db, full_every=3600, prune_every=3600)

    async def sql(query: str) -> None:
        await ioloop.call(db.pool.execute(query))

    async def run() -> None:
        assert await setter.lock([IP], "192.0.2.1", ALICE, 300) == {IP: pytest.approx(300, abs=5)}
        assert await setter.lock([IP], "192.0.2.1", ALICE, 300) == {}  # active already
        assert await reader.refresh() == 1  # the first reads everything
        await setter.lock([PAIR, ACCOUNT], "192.0.2.2", BOB, 300)
        assert await reader.refresh() == 3  # what is new since
        assert 290 < reader.remaining(PAIR, "192.0.2.2", BOB) <= 300
        assert reader.remaining(PAIR, "192.0.2.2", ALICE) == 0
        assert reader.remaining(ACCOUNT, "192.0.2.99", BOB) > 0
        # Lifted by hand: gone at the next full read, not before.
        await sql("DELETE FROM lockouts")
        assert await reader.refresh() == 3
        reader.full_every = 0
        assert await reader.refresh() == 0
        assert reader.remaining(IP, "192.0.2.1", ALICE) == 0
        # Pruning: failures and lockouts older than the longest window go.
        await sql(
            "INSERT INTO login_failures (kind, subject, at) VALUES"
            " ('ip', '192.0.2.3', now() - interval '2 hours'), ('ip', '192.0.2.3', now())"
        )
        await sql(
            "INSERT INTO lockouts (kind, subject, until)"
            " VALUES ('ip', '192.0.2.3', now() - interval '2 hours')"
        )
        reader.prune_every = 0
        await reader.refresh()
        left = await ioloop.call(db.pool.fetchval("SELECT count(*) FROM login_failures"))
        assert left == 1
        assert await ioloop.call(db.pool.fetchval("SELECT count(*) FROM lockouts")) == 0

    run_drained(run())
