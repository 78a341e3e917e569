"""sieve.cluster.ClusterScriptStore: users' Sieve scripts in PostgreSQL.

The behaviour tests run against both stores (``store`` is parametrized:
the local ScriptStore and the cluster one on a real PostgreSQL), so the two
answer ManageSieve alike (rfc5804). Then what only the cluster has: two
nodes (two stores, each with its own IoLoop and pool) over one database —
what one writes the other reads, and the account's invariants (at most
``max_scripts`` scripts, at most one active) hold when both change the
same account at once. The compiler is the stand-in of test_sieve_scripts
(a script containing "error" fails at that word)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_drained
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig
from estafeta.sieve.cluster import LOCK_CLASS, ClusterScriptStore, Scripts
from estafeta.sieve.errors import SieveError
from estafeta.sieve.scripts import ScriptError, ScriptStore

ALICE = "alice@example.test"
BOB = "bob@example.test"
LIMITS = {"max_script_size": 100, "max_scripts": 3}


class FakeCompiled:
    def __init__(self, text: str) -> None:
        self.text = text


class FakeCompiler:
    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, text: str) -> FakeCompiled:
        with self._lock:
            self.calls += 1
        at = text.find("error")
        if at >= 0:
            line = text.count("\n", 0, at) + 1
            column = at - (text.rfind("\n", 0, at) + 1) + 1
            raise SieveError(line, column, "syntax error")
        return FakeCompiled(text)


@pytest.fixture
def compiler() -> FakeCompiler:
    return FakeCompiler()


@pytest.fixture
def db(ioloop: IoLoop, database: DatabaseConfig) -> Iterator[Database]:
    """Node A's pool, opened (and the schema migrated) on ``ioloop``."""
    node = Database(database, application_name="node-a")
    ioloop.run(node.open())
    yield node
    ioloop.run(node.close())


def cluster_store(
    io: IoLoop, db: Database, compiler: FakeCompiler, **options: Any
) -> ClusterScriptStore:
    return ClusterScriptStore(io, db, compile=compiler, **{**LIMITS, **options})  # type: ignore[arg-type]


@pytest.fixture
def node_a(ioloop: IoLoop, db: Database, compiler: FakeCompiler) -> ClusterScriptStore:
    return cluster_store(ioloop, db, compiler)


@pytest.fixture
def node_b(database: DatabaseConfig, db: Database) -> Iterator[ClusterScriptStore]:
    """A second node: its own IoLoop, pool and compiler, the same database
    (``db`` first: node A migrated it)."""
    with IoLoop("node-b") as io:
        other = Database(database, application_name="node-b")
        io.run(other.open(migrate=False))
        try:
            yield cluster_store(io, other, FakeCompiler())
        finally:
            io.run(other.close())


@pytest.fixture(params=["local", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path, compiler: FakeCompiler) -> Scripts:
    if request.param == "local":
        return ScriptStore(tmp_path / "sieve", compile=compiler, **LIMITS)  # type: ignore[arg-type]
    node: ClusterScriptStore = request.getfixturevalue("node_a")
    return node


def sql(store: ClusterScriptStore, query: str, *args: object) -> list[Any]:
    """Run ``query`` on ``store``'s database (outside the store: "by hand")."""

    async def run() -> list[Any]:
        async with store.db.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    return store.io.run(run())


def tamper(store: Scripts, account: str, name: str, text: str) -> None:
    """Change a stored script behind the store's back (an upgrade, an
    administrator): the file, or the row."""
    if isinstance(store, ScriptStore):
        (store.account_dir(account) / f"{name}.sieve").write_text(text)
    else:
        assert isinstance(store, ClusterScriptStore)
        sql(
            store,
            "UPDATE sieve_scripts SET content = $3 WHERE address = $1 AND name = $2",
            account,
            name,
            text,
        )


def text_of(compiled: object) -> str:
    """The text a (stand-in) compiled script was compiled from."""
    assert isinstance(compiled, FakeCompiled)
    return compiled.text


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(ScriptError) as info:
        call()
    return info.value.code


# -- the same behaviour from both stores ---------------------------------------


def test_put_get_list(store: Scripts) -> None:
    assert store.list(ALICE) == []
    assert store.put(ALICE, "rules", "keep;\r\n") is True
    assert store.put(ALICE, "rules", "keep;\r\n") is False  # unchanged
    assert store.get(ALICE, "rules") == "keep;\r\n"
    assert store.put(ALICE, "rules", "discard;\n") is True
    assert store.put(ALICE, "another", "keep;") is True
    assert store.list(ALICE) == [("another", False), ("rules", False)]
    assert store.exists(ALICE, "rules") and not store.exists(ALICE, "nope")
    assert store.list(BOB) == []
    text = 'require "fileinto";\r\n# Ünïcødé\r\nfileinto "Entwürfe";'
    store.put(BOB, "u", text)
    assert store.get(BOB, "u") == text  # exactly as uploaded


def test_activate_and_deactivate(store: Scripts) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "keep;")
    assert store.active(ALICE) is None
    assert store.activate(ALICE, "a") is True
    assert store.activate(ALICE, "a") is False
    assert store.list(ALICE) == [("a", True), ("b", False)]
    assert store.active(ALICE) == ("a", "keep;")
    assert store.activate(ALICE, "b") is True
    assert store.list(ALICE) == [("a", False), ("b", True)]
    assert store.activate(ALICE, None) is True
    assert store.activate(ALICE, "") is False  # rfc5804:2.8: not an error
    assert store.list(ALICE) == [("a", False), ("b", False)]
    assert store.active(ALICE) is None
    assert code_of(lambda: store.activate(ALICE, "missing")) == "NONEXISTENT"
    assert code_of(lambda: store.activate(BOB, "a")) == "NONEXISTENT"
    assert store.activate(BOB, None) is False


def test_activate_refuses_a_script_that_no_longer_compiles(store: Scripts) -> None:
    store.put(ALICE, "a", "keep;")
    tamper(store, ALICE, "a", "keep;\nerror;")
    with pytest.raises(ScriptError) as info:
        store.activate(ALICE, "a")
    assert (info.value.code, info.value.message) == ("SYNTAX", "2:1: syntax error")
    assert store.active(ALICE) is None


def test_delete(store: Scripts) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "keep;")
    store.activate(ALICE, "a")
    assert code_of(lambda: store.delete(ALICE, "a")) == "ACTIVE"  # rfc5804:2.10
    assert code_of(lambda: store.delete(ALICE, "zzz")) == "NONEXISTENT"
    assert code_of(lambda: store.delete(BOB, "a")) == "NONEXISTENT"
    store.delete(ALICE, "b")
    assert store.list(ALICE) == [("a", True)]
    assert code_of(lambda: store.get(ALICE, "b")) == "NONEXISTENT"


def test_rename(store: Scripts) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "discard;")
    store.activate(ALICE, "a")
    assert code_of(lambda: store.rename(ALICE, "a", "b")) == "ALREADYEXISTS"
    assert code_of(lambda: store.rename(ALICE, "a", "a")) == "ALREADYEXISTS"
    assert code_of(lambda: store.rename(ALICE, "x", "y")) == "NONEXISTENT"
    assert code_of(lambda: store.rename(BOB, "x", "y")) == "NONEXISTENT"
    # rfc5804:2.11: the renamed active script stays active.
    store.rename(ALICE, "a", "c")
    assert store.list(ALICE) == [("b", False), ("c", True)]
    assert store.active(ALICE) == ("c", "keep;")
    store.rename(ALICE, "b", "d")
    assert store.list(ALICE) == [("c", True), ("d", False)]
    assert store.get(ALICE, "d") == "discard;"


def test_size_and_count_limits(store: Scripts) -> None:
    assert code_of(lambda: store.put(ALICE, "big", "#" * 101)) == "QUOTA/MAXSIZE"
    # Octets count, not characters: 50 "é" are 100 octets, 51 are 102.
    store.put(ALICE, "e", "é" * 50)
    assert code_of(lambda: store.put(ALICE, "e", "é" * 51)) == "QUOTA/MAXSIZE"
    store.put(ALICE, "two", "keep;")
    store.put(ALICE, "three", "keep;")
    assert code_of(lambda: store.put(ALICE, "four", "keep;")) == "QUOTA/MAXSCRIPTS"
    assert store.put(ALICE, "three", "discard;") is True  # replacing is fine
    store.have_space(ALICE, "three", 100)
    assert code_of(lambda: store.have_space(ALICE, "three", 101)) == "QUOTA/MAXSIZE"
    assert code_of(lambda: store.have_space(ALICE, "four", 1)) == "QUOTA/MAXSCRIPTS"
    store.have_space(BOB, "four", 100)
    assert code_of(lambda: store.have_space(BOB, "", 1)) == "INVALID"
    assert [name for name, _ in store.list(ALICE)] == ["e", "three", "two"]
    # Deleting makes room again.
    store.delete(ALICE, "two")
    store.have_space(ALICE, "four", 1)
    assert store.put(ALICE, "four", "keep;") is True


def test_refused_scripts_store_nothing(store: Scripts) -> None:
    store.put(ALICE, "a", "keep;")
    with pytest.raises(ScriptError) as info:
        store.put(ALICE, "a", "keep;\n  error;\n")
    assert (info.value.code, info.value.message) == ("SYNTAX", "2:3: syntax error")
    with pytest.raises(ScriptError) as info:
        store.put(ALICE, "a", "# ok\nx\udcffy")
    assert (info.value.code, info.value.message) == ("SYNTAX", "2:2: not valid UTF-8")
    assert code_of(lambda: store.put(ALICE, "a", "")) == "INVALID"  # rfc5804:2.6
    assert code_of(lambda: store.put(ALICE, "b", "error")) == "SYNTAX"
    assert store.get(ALICE, "a") == "keep;"
    assert store.list(ALICE) == [("a", False)]
    assert code_of(lambda: store.check("\nerror")) == "SYNTAX"
    assert isinstance(store.check("keep;"), FakeCompiled)


ILLEGAL = ["", "a" * 129, "tab\there", "nul\x00", "del\x7f", "c1\x85", "l\u2028s", "surr\udcff"]


def test_illegal_names_and_accounts(store: Scripts) -> None:
    for name in ILLEGAL:
        assert code_of(lambda: store.put(ALICE, name, "keep;")) == "INVALID", name  # noqa: B023
        assert code_of(lambda: store.get(ALICE, name)) == "INVALID", name  # noqa: B023
        assert code_of(lambda: store.activate(ALICE, name or "\x00")) == "INVALID", name  # noqa: B023
    assert store.list(ALICE) == []
    assert code_of(lambda: store.list("no-at-sign")) == "INVALID"
    assert code_of(lambda: store.put("@example.test", "a", "keep;")) == "INVALID"


LEGAL = [
    "a" * 128,
    "\U0001f600" * 128,  # 512 octets
    "../../etc/passwd",
    ".hidden",
    "active",
    "100% sure",
    "with space and \"quotes\" and 'more'",
    "Ünïcødé 日本語",
]


def test_any_legal_name_round_trips(store: Scripts) -> None:
    store.put(ALICE, "other", "keep;")
    for name in LEGAL:
        store.put(ALICE, name, "keep;")
        assert store.list(ALICE) == sorted([(name, False), ("other", False)])
        assert store.get(ALICE, name) == "keep;"
        assert store.activate(ALICE, name) is True
        assert store.list(ALICE) == sorted([(name, True), ("other", False)])
        store.rename(ALICE, name, "renamed")
        store.rename(ALICE, "renamed", name)
        assert store.active(ALICE) == (name, "keep;")
        store.activate(ALICE, None)
        store.delete(ALICE, name)
        assert store.list(ALICE) == [("other", False)]


def test_names_are_nfc(store: Scripts) -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    store.put(ALICE, decomposed, "keep;")
    assert store.list(ALICE) == [("café", False)]
    assert store.get(ALICE, "café") == "keep;"
    assert store.put(ALICE, "café", "keep;") is False
    store.activate(ALICE, decomposed)
    assert store.active(ALICE) == ("café", "keep;")


def test_list_sorts_by_code_point(store: Scripts) -> None:
    # Code points, not a locale's collation (which would say a, B, é).
    for name in ["é", "B", "a"]:
        store.put(ALICE, name, "keep;")
    store.put(BOB, "x", "keep;")
    assert [name for name, _ in store.list(ALICE)] == ["B", "a", "é"]


def test_compiled_is_cached_per_version(
    store: Scripts, compiler: FakeCompiler, caplog: pytest.LogCaptureFixture
) -> None:
    assert store.compiled(ALICE) is None
    store.put(ALICE, "a", "keep;")
    store.activate(ALICE, "a")
    calls = compiler.calls
    first = store.compiled(ALICE)
    assert isinstance(first, FakeCompiled) and first.text == "keep;"
    assert store.compiled(ALICE) is first
    assert compiler.calls == calls + 1
    store.put(ALICE, "a", "discard;")
    calls = compiler.calls
    second = store.compiled(ALICE)
    assert isinstance(second, FakeCompiled) and second.text == "discard;"
    assert compiler.calls == calls + 1
    # Changed behind the store: seen; a script that stopped compiling is
    # None, logged once per version.
    tamper(store, ALICE, "a", "stop;")
    assert text_of(store.compiled(ALICE)) == "stop;"
    tamper(store, ALICE, "a", "error here")
    with caplog.at_level(logging.ERROR, logger="estafeta.sieve"):
        assert store.compiled(ALICE) is None
        assert store.compiled(ALICE) is None
    assert caplog.text.count("sieve_script_invalid") == 1
    store.activate(ALICE, None)
    assert store.compiled(ALICE) is None


def test_remove_account(store: Scripts) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "keep;")
    store.activate(ALICE, "a")
    store.put(BOB, "a", "keep;")
    assert store.compiled(ALICE) is not None
    assert store.remove_account(ALICE) == 2
    assert store.list(ALICE) == [] and store.active(ALICE) is None
    assert store.compiled(ALICE) is None
    assert store.remove_account(ALICE) == 0
    assert store.list(BOB) == [("a", False)]


def test_concurrent_puts_respect_the_count(store: Scripts) -> None:
    outcomes = race([functools.partial(store.put, ALICE, f"s{n}", "keep;") for n in range(12)])
    assert sorted(outcomes) == ["QUOTA/MAXSCRIPTS"] * 9 + ["ok"] * 3
    assert len(store.list(ALICE)) == 3


# -- the cluster only ------------------------------------------------------------


def race(calls: list[Callable[[], object]]) -> list[str]:
    """Run ``calls`` in threads released at once: "ok" or the ScriptError
    code of each (any other exception fails the test)."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            call()
            result = "ok"
        except ScriptError as exc:
            result = exc.code
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)
            return
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return outcomes


def test_a_script_put_on_one_node_is_active_on_the_other(
    node_a: ClusterScriptStore, node_b: ClusterScriptStore
) -> None:
    node_a.put(ALICE, "rules", "keep;")
    node_a.activate(ALICE, "rules")
    assert node_b.list(ALICE) == [("rules", True)]
    assert node_b.active(ALICE) == ("rules", "keep;")
    assert text_of(node_b.compiled(ALICE)) == "keep;"
    assert text_of(node_a.compiled(ALICE)) == "keep;"
    # B changes it: A's cached compile is not used again.
    node_b.put(ALICE, "rules", "discard;")
    assert text_of(node_a.compiled(ALICE)) == "discard;"
    node_b.rename(ALICE, "rules", "renamed")
    assert node_a.active(ALICE) == ("renamed", "discard;")
    assert code_of(lambda: node_a.delete(ALICE, "renamed")) == "ACTIVE"
    node_b.activate(ALICE, None)
    assert node_a.compiled(ALICE) is None
    node_a.delete(ALICE, "renamed")
    assert node_b.list(ALICE) == []


def test_concurrent_puts_from_two_nodes_leave_max_scripts(
    node_a: ClusterScriptStore, node_b: ClusterScriptStore
) -> None:
    for round_ in range(3):
        account = f"user{round_}@example.test"
        calls: list[Callable[[], object]] = []
        for n in range(12):
            node = node_a if n % 2 else node_b
            calls.append(functools.partial(node.put, account, f"s{n}", "keep;"))
        outcomes = race(calls)
        assert sorted(outcomes) == ["QUOTA/MAXSCRIPTS"] * 9 + ["ok"] * 3
        rows = sql(node_a, "SELECT count(*) FROM sieve_scripts WHERE address = $1", account)
        assert rows[0][0] == 3
        assert len(node_b.list(account)) == 3


def test_concurrent_setactives_from_two_nodes_leave_one_active(
    node_a: ClusterScriptStore, node_b: ClusterScriptStore
) -> None:
    for name in ("a", "b", "c"):
        node_a.put(ALICE, name, "keep;")
    for round_ in range(15):
        first, second = ("a", "b") if round_ % 2 else ("b", "c")
        outcomes = race(
            [
                lambda: node_a.activate(ALICE, first),  # noqa: B023
                lambda: node_b.activate(ALICE, second),  # noqa: B023
                lambda: node_b.activate(ALICE, first),  # noqa: B023
            ]
        )
        assert outcomes == ["ok"] * 3
        active = sql(node_a, "SELECT name FROM sieve_scripts WHERE address = $1 AND active", ALICE)
        assert len(active) == 1 and active[0][0] in (first, second)
        assert [name for name, on in node_b.list(ALICE) if on] == [active[0][0]]
        node_b.activate(ALICE, None)


def test_delete_racing_setactive_never_leaves_an_active_script_deleted(
    node_a: ClusterScriptStore, node_b: ClusterScriptStore
) -> None:
    for round_ in range(10):
        node_a.put(ALICE, "keep", "keep;")
        node_a.put(ALICE, "x", "discard;")
        node_a.activate(ALICE, "keep")
        outcomes = race([lambda: node_a.delete(ALICE, "x"), lambda: node_b.activate(ALICE, "x")])
        # Either the delete came first (SETACTIVE: NONEXISTENT) or the
        # activation did (DELETESCRIPT: ACTIVE, rfc5804:2.10).
        assert sorted(outcomes) in (["NONEXISTENT", "ok"], ["ACTIVE", "ok"]), round_
        listed = dict(node_b.list(ALICE))
        assert sum(listed.values()) == 1
        assert node_a.active(ALICE) is not None
        node_a.activate(ALICE, None)
        node_a.remove_account(ALICE)


def test_unchanged_script_costs_no_compile_on_either_node(
    node_a: ClusterScriptStore, node_b: ClusterScriptStore, compiler: FakeCompiler
) -> None:
    node_a.put(ALICE, "a", "keep;")
    node_a.activate(ALICE, "a")
    first = node_a.compiled(ALICE)
    calls = compiler.calls
    for _ in range(20):
        assert node_a.compiled(ALICE) is first
    assert compiler.calls == calls
    # The same text stored again (by B): not a new version.
    assert node_b.put(ALICE, "a", "keep;") is False
    assert node_a.compiled(ALICE) is first
    # B's own activation of another script with the same text: A's compile
    # is reused (keyed by content).
    node_b.put(ALICE, "b", "keep;")
    node_b.activate(ALICE, "b")
    assert node_a.compiled(ALICE) is first
    assert compiler.calls == calls


def test_compiled_async_from_another_event_loop(node_a: ClusterScriptStore) -> None:
    node_a.put(ALICE, "a", "keep;")
    node_a.activate(ALICE, "a")

    async def deliver() -> tuple[object, object]:
        return await node_a.compiled_async(ALICE), await node_a.compiled_async(BOB)

    found, none = run_drained(deliver())
    assert isinstance(found, FakeCompiled) and found.text == "keep;"
    assert none is None
    again: object = node_a.compiled(ALICE)
    assert again is found  # one cache for both


def test_a_change_waiting_too_long_is_an_error_and_changes_nothing(
    ioloop: IoLoop, db: Database, compiler: FakeCompiler
) -> None:
    store = cluster_store(ioloop, db, compiler, timeout=0.5)
    store.put(ALICE, "a", "keep;")
    holding = threading.Event()
    release = threading.Event()

    async def hold_the_lock() -> None:
        # Another node in the middle of a change of ALICE's scripts.
        conn = await db.connect_one()
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, ALICE
                )
                holding.set()
                await asyncio.to_thread(release.wait, 10)
        finally:
            await conn.close()

    holder = ioloop.submit(hold_the_lock())
    assert holding.wait(10)
    started = time.monotonic()
    with pytest.raises(DatabaseError) as info:
        store.put(ALICE, "b", "keep;")
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "no answer within 0.5 s" in message and "postgresql://" in message
    assert "password" not in message.lower()
    assert store.list(BOB) == []  # other accounts are not held up
    release.set()
    holder.result(10)
    assert store.list(ALICE) == [("a", False)]  # the cancelled put left nothing
    store.put(ALICE, "b", "keep;")
    assert store.list(ALICE) == [("a", False), ("b", False)]


def test_a_closed_database_is_a_database_error(
    ioloop: IoLoop, database: DatabaseConfig, compiler: FakeCompiler
) -> None:
    node = Database(database)
    store = cluster_store(ioloop, node, compiler)
    with pytest.raises(DatabaseError, match="not open"):
        store.list(ALICE)
    with pytest.raises(DatabaseError, match="not open"):
        store.compiled(ALICE)


def test_what_postgresql_cannot_hold_is_refused_clearly(node_a: ClusterScriptStore) -> None:
    with pytest.raises(ScriptError) as info:
        node_a.put(ALICE, "a", "keep;\n#\x00")
    assert (info.value.code, info.value.message) == (
        "SYNTAX",
        "2:2: NUL is not allowed in a script",
    )
    long = "a" * 250 + "@example.test"
    assert code_of(lambda: node_a.put(long, "a", "keep;")) == "INVALID"
    assert code_of(lambda: node_a.list("al\udcffice@example.test")) == "INVALID"
    assert sql(node_a, "SELECT count(*) FROM sieve_scripts")[0][0] == 0


def test_the_partial_unique_index_backs_the_lock(node_a: ClusterScriptStore) -> None:
    # A writer that skipped the lock cannot make a second script active.
    node_a.put(ALICE, "a", "keep;")
    node_a.put(ALICE, "b", "keep;")
    node_a.activate(ALICE, "a")
    with pytest.raises(Exception, match="sieve_scripts_active"):
        sql(
            node_a,
            "UPDATE sieve_scripts SET active = true WHERE address = $1 AND name = 'b'",
            ALICE,
        )
    assert node_a.list(ALICE) == [("a", True), ("b", False)]
