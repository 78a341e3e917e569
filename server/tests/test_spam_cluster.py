"""The junk filter's statistics shared by cluster two_nodes
(estafeta.spam.cluster) against a real PostgreSQL: the same outcomes,
counts and pruning as the local SQLite store for the same training, two
two_nodes training one account at once losing nothing, the allowlist and its
cap, reset and remove per account, a JunkFilter that classifies with it
without ever querying on the event loop, and mail flowing when the
database is gone."""

from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_cluster_counters import Proxy

from conftest import Node, open_db
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig
from estafeta.cluster.url import parse_url
from estafeta.spam import JunkFilter, SpamSettings, message_digest
from estafeta.spam import cluster as spam_cluster
from estafeta.spam.cluster import SharedTokenStore
from estafeta.spam.store import Status, TokenStore, token_id

ALICE = "alice@example.test"
BOB = "bob@example.test"

Shared = SharedTokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(two_nodes: tuple[Node, Node]) -> Node:
    return two_nodes[0]


def shared(node: Node, clock: Clock | None = None, **options: Any) -> Shared:
    return SharedTokenStore(*node, clock=clock or Clock(), **options)


def sql(node: Node, query: str, *args: Any) -> Any:
    io, db = node
    return io.run(db.pool.fetchval(query, *args))


def rows_of(node: Node, account: str) -> dict[str, int]:
    tables = ("spam_stats", "spam_tokens", "spam_trained", "spam_allow")
    return {
        t: sql(node, f"SELECT count(*) FROM {t} WHERE account = $1", account)  # noqa: S608
        for t in tables
    }


def message(n: int, words: str = "", subject: str = "hello") -> bytes:
    return (
        f"From: bob@example.org\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{n}@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
        f"message number{n} {words}\r\n"
    ).encode()


def figures(status: Status) -> tuple[int, int, int, int]:
    return status.spam, status.ham, status.tokens, status.trained


def test_the_same_outcomes_and_counts_as_the_local_store(node: Node, tmp_path: Path) -> None:
    clock = Clock()
    here, there = TokenStore(tmp_path, clock=clock), shared(node, clock)
    rng = random.Random(7)
    messages = {n: rng.sample(range(-60, 60), 25) for n in range(10)}

    def item(n: int, extra: list[int] | None = None) -> tuple[bytes, list[int]]:
        return bytes([n]) * 32, messages[n] + (extra or [])

    script: list[tuple[str, Any]] = [
        ("learn", ([item(0), item(1)], True)),
        ("learn", ([item(0)], True)),  # unchanged
        ("learn", ([item(0)], False)),  # relearned: moved out of Junk
        ("learn", ([item(2), item(2), item(3), item(0)], False)),  # a repeat in a batch
        ("learn", ([item(1), item(4), item(5)], False)),  # relearned and learned at once
        ("unlearn", item(2)),
        ("unlearn", item(2)),  # absent now
        ("unlearn", item(7)),  # never trained
        # Tokens the training did not have (a changed tokenizer): never below zero.
        ("unlearn", item(4, [1000, 1001])),
        ("learn", ([item(3, [2000])], True)),
        ("learn", ([item(6), item(5)], True)),
        ("unlearn", item(3)),
        # Two moved at once, 3000 trained in one only: its spam count stops at 0.
        ("learn", ([item(8, [3000])], True)),
        ("learn", ([item(9)], True)),
        ("learn", ([item(8, [3000]), item(9, [3000])], False)),
    ]
    everything = [*range(-60, 60), 1000, 1001, 2000, 3000]
    try:
        for op, args in script:
            clock.now += 3600
            if op == "learn":
                assert there.learn(ALICE, *args) == here.learn(ALICE, *args), args
            else:
                assert there.unlearn(ALICE, *args) == here.unlearn(ALICE, *args), args
            assert there.counts(ALICE, everything) == here.counts(ALICE, everything)
            assert figures(there.status(ALICE)) == figures(here.status(ALICE))
        assert 0 < there.status(ALICE).tokens < len(everything)
        found = there.counts(ALICE, [3000])
        assert found is not None and found.tokens == {3000: (0, 2)}
        assert there.counts(BOB, everything) is None and here.counts(BOB, everything) is None
        assert figures(there.status(BOB)) == (0, 0, 0, 0)
        assert there.status(BOB).size == 0 and there.status(ALICE).size > 0
        assert there.status(ALICE).path == f"postgresql:spam_stats/{ALICE}"
    finally:
        here.close()


def test_the_token_cap_prunes_as_the_local_store_does(node: Node, tmp_path: Path) -> None:
    clock = Clock()
    here = TokenStore(tmp_path, max_tokens=100, clock=clock)
    there = shared(node, clock, max_tokens=100)
    asked = [token_id(f"unique{i}x{j}") for i in range(60) for j in range(5)]
    try:
        for i in range(60):
            # "frequent" is in every message; "unique..." words in one each.
            ids = [token_id("frequent"), *(token_id(f"unique{i}x{j}") for j in range(5))]
            item = [(bytes([i]) * 32, ids)]
            assert there.learn(ALICE, item, i % 2 == 0) == here.learn(ALICE, item, i % 2 == 0)
            clock.now += 86400  # a day later each time
            assert there.status(ALICE).tokens == here.status(ALICE).tokens <= 100
        assert there.counts(ALICE, asked) == here.counts(ALICE, asked)
        found = there.counts(ALICE, [token_id("frequent"), *asked])
        assert found is not None and found.tokens[token_id("frequent")] == (30, 30)
        assert token_id("unique0x0") not in found.tokens  # rare and old went first
        assert token_id("unique59x4") in found.tokens
    finally:
        here.close()
    # Pruned down to PRUNE_TO of the cap when it was passed.
    there = shared(node, clock, max_tokens=50)
    there.learn(ALICE, [(b"n" * 32, [1, 2, 3])], True)
    assert there.status(ALICE).tokens == 45


def test_the_trained_cap_forgets_the_oldest(node: Node) -> None:
    clock = Clock()
    store = shared(node, clock, max_trained=10)
    for i in range(25):
        store.learn(ALICE, [(bytes([i]) * 32, [i])], True)
        clock.now += 1
        assert store.status(ALICE).trained <= 10
    assert figures(store.status(ALICE))[:2] == (25, 0)  # message counts are not pruned
    assert store.unlearn(ALICE, bytes([0]) * 32, [0]) == "absent"  # too old to reverse
    assert store.unlearn(ALICE, bytes([24]) * 32, [24]) == "unlearned"


def test_two_nodes_training_one_account_at_once_lose_nothing(two_nodes: tuple[Node, Node]) -> None:
    a, b = shared(two_nodes[0]), shared(two_nodes[1])
    common = token_id("common")
    outcomes: list[str] = []
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def train(store: Shared, numbers: range) -> None:
        try:
            start.wait()
            for n in numbers:
                item = (n.to_bytes(32, "big"), [common, token_id(f"own{n}")])
                outcomes.extend(store.learn(ALICE, [item], True))
        except BaseException as exc:
            failures.append(exc)

    # 50 messages each, 25 of them trained by both two_nodes at once.
    threads = [
        threading.Thread(target=train, args=(a, range(50))),
        threading.Thread(target=train, args=(b, range(25, 75))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert sorted(outcomes) == ["learned"] * 75 + ["unchanged"] * 25
    counts = b.counts(ALICE, [common, token_id("own0"), token_id("own74")])
    assert counts is not None and (counts.nspam, counts.nham) == (75, 0)
    assert counts.tokens == {common: (75, 0), token_id("own0"): (1, 0), token_id("own74"): (1, 0)}
    assert figures(a.status(ALICE)) == (75, 0, 76, 75)
    # Both two_nodes move the same messages out of Junk at once: each counts once.
    start.reset()
    outcomes.clear()
    threads = [
        threading.Thread(target=lambda s=s: _relearn(s, start, outcomes, common)) for s in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["relearned"] * 10 + ["unchanged"] * 10
    assert figures(b.status(ALICE)) == (65, 10, 76, 75)
    counts = a.counts(ALICE, [common])
    assert counts is not None and counts.tokens == {common: (65, 10)}


def _relearn(store: Shared, start: threading.Barrier, outcomes: list[str], common: int) -> None:
    start.wait()
    for n in range(10):
        item = (n.to_bytes(32, "big"), [common, token_id(f"own{n}")])
        outcomes.extend(store.learn(ALICE, [item], False))


# -- the allowlist -------------------------------------------------------------


def test_allowlist_by_address_and_domain(node: Node) -> None:
    store = shared(node)
    assert store.allowed(ALICE) == [] and not store.any_allowed(ALICE, ["a@b.example"])
    assert store.allow(ALICE, "news@shop.example")
    assert store.allow(ALICE, "@friends.example")
    assert store.allow(ALICE, "@friends.example")  # again: fine, once
    assert store.allowed(ALICE) == ["@friends.example", "news@shop.example"]  # byte order
    assert store.any_allowed(ALICE, ["x@other.example", "@friends.example"])
    assert not store.any_allowed(ALICE, ["other@shop.example"])
    assert not store.any_allowed(BOB, ["news@shop.example"])  # per account
    assert store.disallow(ALICE, "news@shop.example")
    assert not store.disallow(ALICE, "news@shop.example")
    assert not store.disallow(BOB, "news@shop.example")
    assert store.allowed(ALICE) == ["@friends.example"]
    with pytest.raises(ValueError):
        store.allow(ALICE, "a@" + "x" * 320)
    # An allowlist without training: the account has statistics, untrained.
    counts = store.counts(ALICE, [1])
    assert counts is not None and (counts.nspam, counts.nham, counts.tokens) == (0, 0, {})


def test_the_allowlist_cap_holds_with_two_nodes_adding_at_once(
    two_nodes: tuple[Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spam_cluster, "MAX_ALLOW", 5)
    a, b = shared(two_nodes[0]), shared(two_nodes[1])
    added: list[bool] = []
    start = threading.Barrier(6)

    def add(store: Shared, side: str) -> None:
        start.wait()
        added.extend(store.allow(ALICE, f"{side}{n}@x.example") for n in range(4))

    # Three threads on each node, 24 entries offered for 5 places.
    sides = [(a if n % 2 else b, f"t{n}-") for n in range(6)]
    threads = [threading.Thread(target=add, args=side) for side in sides]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert added.count(True) == 5 and len(b.allowed(ALICE)) == 5
    entry = a.allowed(ALICE)[0]
    assert a.allow(ALICE, entry)  # already there: still fine when full
    assert not a.allow(ALICE, "late@x.example")


# -- reset and remove ----------------------------------------------------------


def test_reset_and_remove_touch_one_account_only(node: Node) -> None:
    store = shared(node)
    for account in (ALICE, BOB):
        store.learn(account, [(b"1" * 32, [1, 2, 3]), (b"2" * 32, [3, 4])], True)
        store.learn(account, [(b"3" * 32, [4, 5])], False)
        store.allow(account, "@friends.example")
    bob_before = (figures(store.status(BOB)), store.counts(BOB, range(10)), rows_of(node, BOB))
    store.reset(ALICE)
    assert figures(store.status(ALICE)) == (0, 0, 0, 0)
    assert rows_of(node, ALICE) == {
        "spam_stats": 1, "spam_tokens": 0, "spam_trained": 0, "spam_allow": 1,
    }  # fmt: skip
    assert store.allowed(ALICE) == ["@friends.example"]  # as TokenStore.reset: training only
    assert store.learn(ALICE, [(b"1" * 32, [1, 2, 3])], True) == ["learned"]
    store.reset("never@example.test")  # nothing to do, nothing made
    assert rows_of(node, "never@example.test")["spam_stats"] == 0
    assert store.remove(ALICE) == []
    assert set(rows_of(node, ALICE).values()) == {0}
    assert store.counts(ALICE, [1]) is None
    assert (figures(store.status(BOB)), store.counts(BOB, range(10)), rows_of(node, BOB)) == (
        bob_before
    )


# -- with JunkFilter -------------------------------------------------------------


SPAMMY = ["winner", "prize", "casino", "pills", "pharmacy", "discount", "cheap", "lottery"]
HAMMY = ["meeting", "agenda", "project", "patch", "kernel", "release", "schedule", "minutes"]


def corpus_message(rng: random.Random, spam: bool, n: int) -> bytes:
    own = SPAMMY if spam else HAMMY
    words = " ".join(rng.choice(own) for _ in range(30))
    return (
        f"From: {'promo@deals' if spam else 'colleague@corp'}.example\r\nTo: {ALICE}\r\n"
        f"Subject: {' '.join(rng.choice(own) for _ in range(3))}\r\n"
        f"Message-ID: <{n}.{int(spam)}@example>\r\n\r\n{words}\r\n"
    ).encode()


def test_a_junk_filter_on_the_shared_store(two_nodes: tuple[Node, Node], tmp_path: Path) -> None:
    settings = SpamSettings(min_spam=5, min_ham=5)
    store, other = shared(two_nodes[0], absent_for=0.5), shared(two_nodes[1])
    junk = JunkFilter(tmp_path / "unused", settings, store=store)
    rng = random.Random(3)
    new = message(999, "cheap pills")
    # Never asked about: the event loop is never made to wait, "not now".
    assert junk.check_nowait(ALICE, new, ["a@b.example"]) is None
    assert not junk.classify(ALICE, new).trained  # a worker thread's read: none
    assert store.has_no_file(ALICE)
    assert junk.check_nowait(ALICE, new) == (False, junk.classify(ALICE, new))  # untrained, at once
    for n in range(8):
        assert junk.learn(ALICE, corpus_message(rng, True, n), True) == "learned"
        assert not store.has_no_file(ALICE)  # trained here: seen at once
        assert junk.learn(ALICE, corpus_message(rng, False, n), False) == "learned"
    spam, ham = corpus_message(rng, True, 100), corpus_message(rng, False, 100)
    verdict = junk.classify(ALICE, spam)
    assert verdict.trained and verdict.spam and verdict.score >= settings.threshold
    assert not junk.classify(ALICE, ham).spam
    assert junk.check_nowait(ALICE, spam) is None  # trained: the thread's path
    assert junk.learn(ALICE, spam, False) == "learned"
    assert junk.unlearn(ALICE, spam) == "unlearned"
    status = junk.status(ALICE)
    assert (status.spam, status.ham) == (8, 8)
    assert junk.allow(ALICE, "Promo@Deals.example")
    assert junk.is_allowed(ALICE, ["promo@deals.example"])
    # Trained on another node: absent here for at most absent_for seconds.
    assert junk.classify(BOB, spam).trained is False and store.has_no_file(BOB)
    other.learn(BOB, [(message_digest(spam), [1])], True)
    time.sleep(0.6)
    assert not store.has_no_file(BOB) and junk.check_nowait(BOB, spam) is None
    junk.close()


def test_no_database_no_verdict_and_no_wait(
    ioloop: IoLoop, database: DatabaseConfig, tmp_path: Path
) -> None:
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        url = str(database.url).replace(f":{database.url.port}/", f":{held.getsockname()[1]}/")
        gone = Database(
            DatabaseConfig(
                url=parse_url(url), password_file=database.password_file,
                tls=database.tls, ca_file=database.ca_file, connect_timeout=1,
            )
        )  # fmt: skip
        store = shared((ioloop, gone), timeout=1.0, write_timeout=1.0, pause=30.0)
        started = time.monotonic()
        with pytest.raises(DatabaseError):
            store.learn(ALICE, [(b"x" * 32, [1, 2])], True)
        junk = JunkFilter(tmp_path, store=store)
        verdict = junk.classify(ALICE, message(1, "pills"))
        assert not verdict.trained and not verdict.spam and verdict.score == 0.5
        assert junk.learn(ALICE, message(1, "pills"), True) == "error"
        assert junk.unlearn(ALICE, message(1, "pills")) == "error"
        assert not junk.is_allowed(ALICE, ["a@b.example"])
        assert junk.check_nowait(ALICE, message(1), ["a@b.example"]) is None
        assert junk.train_from(ALICE, [message(2), message(3)], True).errors == 2
        with pytest.raises(DatabaseError):
            junk.status(ALICE)
        assert time.monotonic() - started < 2.0


def test_a_database_that_goes_away(
    ioloop: IoLoop, database: DatabaseConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    relay = Proxy(database.url.port or 5432)
    far = open_db(ioloop, relay.config(database))
    try:
        store = shared((ioloop, far), timeout=1.0, write_timeout=1.0, pause=0.5)
        junk = JunkFilter(tmp_path, SpamSettings(min_spam=1, min_ham=1), store=store)
        junk.learn(ALICE, message(1, "pills"), True)
        junk.learn(ALICE, message(2, "agenda"), False)
        assert junk.classify(ALICE, message(3, "pills")).trained
        relay.stop()
        started = time.monotonic()
        assert not junk.classify(ALICE, message(3, "pills")).trained
        assert junk.learn(ALICE, message(4, "pills"), True) == "error"
        assert time.monotonic() - started < 3.0  # within the timeouts, or refused at once
        assert "spam_store_error" in caplog.text
        relay.start()
        time.sleep(0.6)  # the breaker's pause
        deadline = time.monotonic() + 10
        while not junk.classify(ALICE, message(3, "pills")).trained:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert junk.learn(ALICE, message(4, "pills"), True) == "learned"
    finally:
        ioloop.run(far.close())
        relay.close()
