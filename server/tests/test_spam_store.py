"""The junk filter's statistics: idempotent training, caps, durability, repair."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estafeta.spam import JunkFilter, SpamSettings, message_digest
from estafeta.spam import store as store_module
from estafeta.spam.store import TokenStore, file_name, token_id

ACCOUNT = "alice@example.test"


def message(n: int, words: str = "", subject: str = "hello") -> bytes:
    return (
        f"From: bob@example.org\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{n}@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
        f"message number{n} {words}\r\n"
    ).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def junk(tmp_path: Path, clock: Clock) -> Iterator[JunkFilter]:
    with JunkFilter(tmp_path, clock=clock) as junk:
        yield junk


def counts(junk: JunkFilter, token: str) -> tuple[int, int] | None:
    found = junk.store.counts(ACCOUNT, [token_id(token)])
    assert found is not None
    return found.tokens.get(token_id(token))


# -- idempotence and reversal -------------------------------------------------


def test_learning_twice_counts_once(junk: JunkFilter) -> None:
    data = message(1, "cheap pills")
    assert junk.learn(ACCOUNT, data, spam=True) == "learned"
    assert junk.learn(ACCOUNT, data, spam=True) == "unchanged"
    status = junk.status(ACCOUNT)
    assert (status.spam, status.ham, status.trained) == (1, 0, 1)
    assert counts(junk, "cheap") == (1, 0)


def test_spam_then_ham_counts_ham_once(junk: JunkFilter) -> None:
    data = message(1, "cheap pills")
    junk.learn(ACCOUNT, message(2, "cheap watches"), spam=True)
    assert junk.learn(ACCOUNT, data, spam=True) == "learned"
    assert counts(junk, "cheap") == (2, 0)
    assert junk.learn(ACCOUNT, data, spam=False) == "relearned"  # moved out of Junk
    status = junk.status(ACCOUNT)
    assert (status.spam, status.ham) == (1, 1)
    assert counts(junk, "cheap") == (1, 1)
    assert counts(junk, "pills") == (0, 1)
    assert counts(junk, "watches") == (1, 0)
    assert junk.learn(ACCOUNT, data, spam=False) == "unchanged"
    assert counts(junk, "pills") == (0, 1)


def test_unlearn_takes_training_back(junk: JunkFilter) -> None:
    data = message(1, "uniqueword")
    assert junk.unlearn(ACCOUNT, data) == "absent"
    junk.learn(ACCOUNT, data, spam=True)
    tokens_before = junk.status(ACCOUNT).tokens
    assert tokens_before > 0
    assert junk.unlearn(ACCOUNT, data) == "unlearned"
    status = junk.status(ACCOUNT)
    assert (status.spam, status.ham, status.tokens, status.trained) == (0, 0, 0, 0)
    assert counts(junk, "uniqueword") is None  # the row is gone, not left at (0, 0)
    assert junk.unlearn(ACCOUNT, data) == "absent"


def test_digest_is_stable_across_delivery_and_line_ends(junk: JunkFilter) -> None:
    original = message(7, "some words here")
    stored = (
        b"Return-Path: <bob@example.org>\r\nReceived: from mx by us\r\n"
        b"X-Spam-Status: No, score=0.100\r\n" + original
    )
    exported = original.replace(b"\r\n", b"\n")
    assert message_digest(stored) == message_digest(original) == message_digest(exported)
    assert message_digest(message(8, "some words here")) != message_digest(original)
    assert message_digest(original + b"more body\r\n") != message_digest(original)
    junk.learn(ACCOUNT, stored, spam=True)
    assert junk.learn(ACCOUNT, exported, spam=False) == "relearned"
    assert (junk.status(ACCOUNT).spam, junk.status(ACCOUNT).ham) == (0, 1)


def test_train_from_reports_outcomes(junk: JunkFilter) -> None:
    batch = [message(i) for i in range(7)]
    report = junk.train_from(ACCOUNT, batch + batch[:2], spam=True, batch=3)
    assert (report.learned, report.unchanged, report.relearned, report.errors) == (7, 2, 0, 0)
    report = junk.train_from(ACCOUNT, batch[:3], spam=False)
    assert (report.learned, report.relearned) == (0, 3)
    status = junk.status(ACCOUNT)
    assert (status.spam, status.ham) == (4, 3)


# -- caps -------------------------------------------------------------------------


def test_token_cap_prunes_rare_and_old_first(tmp_path: Path, clock: Clock) -> None:
    settings = SpamSettings(max_tokens=100)
    with JunkFilter(tmp_path, settings, clock=clock) as junk:
        for i in range(60):
            # "frequent" is in every message; "unique..." words in one each.
            words = "frequent " + " ".join(f"unique{i}x{j}" for j in range(5))
            junk.learn(ACCOUNT, message(i, words), spam=i % 2 == 0)
            clock.now += 86400  # a day later each time
            assert junk.status(ACCOUNT).tokens <= 100
        assert counts(junk, "frequent") == (30, 30)
        assert counts(junk, "unique59x0") is not None  # recent, kept
        assert counts(junk, "unique0x0") is None  # rare and old, pruned
        status = junk.status(ACCOUNT)
        assert (status.spam, status.ham) == (30, 30)  # message counts are not pruned


def test_trained_record_cap(tmp_path: Path, clock: Clock) -> None:
    with JunkFilter(tmp_path, SpamSettings(max_trained=10), clock=clock) as junk:
        for i in range(25):
            junk.learn(ACCOUNT, message(i), spam=True)
            clock.now += 1
        assert junk.status(ACCOUNT).trained <= 10
        assert junk.status(ACCOUNT).spam == 25
        assert junk.unlearn(ACCOUNT, message(0)) == "absent"  # too old to reverse
        assert junk.unlearn(ACCOUNT, message(24)) == "unlearned"


def test_open_files_are_bounded_and_threads_agree(tmp_path: Path) -> None:
    with JunkFilter(tmp_path, SpamSettings(max_open=1)) as junk:
        accounts = [f"u{i}@example.test" for i in range(4)]
        errors: list[BaseException] = []

        def work(account: str) -> None:
            try:
                for i in range(15):
                    junk.learn(account, message(i, f"w{i}"), spam=i % 3 == 0)
                    junk.classify(account, message(100 + i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(a,)) for a in accounts for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(junk.store._dbs) <= 1
        for account in accounts:
            status = junk.status(account)
            assert (status.spam, status.ham) == (5, 10)


# -- durability and repair ---------------------------------------------------------


def test_statistics_survive_reopening(tmp_path: Path) -> None:
    with JunkFilter(tmp_path) as junk:
        for i in range(20):
            junk.learn(ACCOUNT, message(i, "cheap pills casino"), spam=True)
            junk.learn(ACCOUNT, message(100 + i, "meeting agenda notes"), spam=False)
        before = junk.classify(ACCOUNT, message(999, "cheap casino"))
        status = junk.status(ACCOUNT)
    assert before.trained and before.spam
    with JunkFilter(tmp_path) as junk:
        after = junk.status(ACCOUNT)
        assert (after.spam, after.ham, after.tokens, after.trained) == (
            status.spam, status.ham, status.tokens, status.trained,
        )  # fmt: skip
        assert junk.classify(ACCOUNT, message(999, "cheap casino")) == before
        assert junk.learn(ACCOUNT, message(3, "cheap pills casino"), spam=True) == "unchanged"


def test_reset_forgets_everything(junk: JunkFilter) -> None:
    for i in range(3):
        junk.learn(ACCOUNT, message(i, "word"), spam=True)
    junk.reset(ACCOUNT)
    status = junk.status(ACCOUNT)
    assert (status.spam, status.ham, status.tokens, status.trained) == (0, 0, 0, 0)
    assert junk.learn(ACCOUNT, message(0, "word"), spam=True) == "learned"
    junk.reset("never@example.test")  # no file: nothing to do, none made
    assert not (junk.store.path_for("never@example.test")).exists()


def test_status_of_unknown_account(junk: JunkFilter) -> None:
    status = junk.status("nobody@example.test")
    assert (status.spam, status.ham, status.tokens, status.size) == (0, 0, 0, 0)
    assert not Path(status.path).exists()


@pytest.mark.parametrize("damage", ["not_a_database", "garbage_pages"])
def test_corrupt_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    with JunkFilter(tmp_path) as junk:
        for i in range(30):
            junk.learn(ACCOUNT, message(i, " ".join(f"w{i}x{j}" for j in range(50))), spam=True)
        path = junk.store.path_for(ACCOUNT)
    content = path.read_bytes()
    assert len(content) > 8192
    if damage == "not_a_database":
        damaged = b"this is not a database\n" * 500
    else:  # a valid header, then garbage: the schema page is destroyed
        damaged = content[:100] + b"\xa5" * (len(content) - 100)
    path.write_bytes(damaged)
    caplog.set_level(logging.ERROR, logger="estafeta.spam")
    with JunkFilter(tmp_path) as junk:
        assert junk.status(ACCOUNT).spam == 0  # started afresh
        assert junk.learn(ACCOUNT, message(1), spam=False) == "learned"
        assert junk.status(ACCOUNT).ham == 1
    assert "spam_store_reset" in caplog.text
    aside = list(tmp_path.glob(f"{path.name}.broken-*"))
    assert (
        aside and aside[0].read_bytes()[:50] == path.read_bytes()[:0] + aside[0].read_bytes()[:50]
    )


def test_corruption_found_during_use_is_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = TokenStore(tmp_path)
    store.learn(ACCOUNT, [(b"d" * 32, [1, 2, 3])], spam=True)
    calls = 0
    original = TokenStore._learn

    def corrupt_once(self: TokenStore, *args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(TokenStore, "_learn", corrupt_once)
    caplog.set_level(logging.ERROR, logger="estafeta.spam")
    assert store.learn(ACCOUNT, [(b"e" * 32, [4])], spam=False) == ["learned"]
    assert "spam_store_reset" in caplog.text
    status = store.status(ACCOUNT)
    assert (status.spam, status.ham) == (0, 1)  # the old statistics were moved aside
    store.close()


def test_a_busy_database_is_not_mistaken_for_corruption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 20)
    store = TokenStore(tmp_path)
    store.learn(ACCOUNT, [(b"d" * 32, [1])], spam=True)
    # Another process (the CLI, say) holds the write lock past our busy timeout.
    other = sqlite3.connect(store.path_for(ACCOUNT), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.learn(ACCOUNT, [(b"e" * 32, [4])], spam=False)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "spam_store_reset" not in caplog.text
    assert not list(tmp_path.glob("*.broken-*"))
    assert store.learn(ACCOUNT, [(b"e" * 32, [4])], spam=False) == ["learned"]
    assert (store.status(ACCOUNT).spam, store.status(ACCOUNT).ham) == (1, 1)
    store.close()


def test_learn_reports_store_errors(
    junk: JunkFilter, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(junk.store, "learn", full)
    caplog.set_level(logging.ERROR, logger="estafeta.spam")
    assert junk.learn(ACCOUNT, message(1), spam=True) == "error"
    assert junk.train_from(ACCOUNT, [message(1), message(2)], spam=True).errors == 2
    assert caplog.text.count("spam_store_error") == 2


# -- file names ---------------------------------------------------------------------


def test_file_names_are_safe_and_distinct() -> None:
    assert file_name("alice@example.test") == "alice@example.test.db"
    for hostile in ("../../etc/passwd", "a/b@example.test", "..", ".hidden@x", "a\x00b"):
        name = file_name(hostile)
        assert "/" not in name and "\x00" not in name and not name.startswith(".")
    assert file_name("A@x") != file_name("a@x")
    assert file_name("a%2Fb") != file_name("a/b")
    long = file_name("x" * 300 + "@example.test")
    assert long.startswith("h-") and len(long) < 100


def test_a_tokenizer_bug_does_not_fail_training(
    junk: JunkFilter, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(message: object) -> list[str]:
        raise RuntimeError("bug")

    monkeypatch.setattr(junk, "tokens", broken)
    caplog.set_level(logging.ERROR, logger="estafeta.spam")
    assert junk.learn(ACCOUNT, message(1), spam=True) == "error"
    assert junk.unlearn(ACCOUNT, message(1)) == "error"
    assert junk.train_from(ACCOUNT, [message(1), message(2)], spam=True).errors == 2
    assert caplog.text.count("spam_tokenize_failed") == 4
    assert junk.status(ACCOUNT).spam == 0


# -- the account's allowlist ----------------------------------------------------


def test_allowlist_by_address_and_domain(junk: JunkFilter) -> None:
    assert junk.allow(ACCOUNT, " News@Shop.Example ")
    assert junk.allow(ACCOUNT, "@friends.example")
    assert junk.allowed(ACCOUNT) == ["@friends.example", "news@shop.example"]
    assert junk.is_allowed(ACCOUNT, ["NEWS@shop.example"])
    assert junk.is_allowed(ACCOUNT, ["x@other.example", "anyone@friends.example"])
    assert not junk.is_allowed(ACCOUNT, ["other@shop.example"])
    assert not junk.is_allowed("bob@example.test", ["news@shop.example"])  # per account
    assert junk.disallow(ACCOUNT, "news@shop.example")
    assert not junk.disallow(ACCOUNT, "news@shop.example")
    assert not junk.is_allowed(ACCOUNT, ["news@shop.example"])


@pytest.mark.parametrize(
    "bad", ["", "nobody", "@", "a@localhost", "a b@x.example", "<a@x.example>"]
)
def test_allowlist_refuses_what_is_not_an_address(junk: JunkFilter, bad: str) -> None:
    with pytest.raises(ValueError, match="not an address"):
        junk.allow(ACCOUNT, bad)
    assert junk.allowed(ACCOUNT) == []


def test_allowlist_is_bounded(junk: JunkFilter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_ALLOW", 3)
    for n in range(3):
        assert junk.allow(ACCOUNT, f"s{n}@x.example")
    assert not junk.allow(ACCOUNT, "s9@x.example")  # full
    assert junk.allow(ACCOUNT, "s1@x.example")  # already there: fine
    assert len(junk.allowed(ACCOUNT)) == 3


def test_allowlist_survives_a_restart(tmp_path: Path) -> None:
    with JunkFilter(tmp_path) as first:
        first.allow(ACCOUNT, "@keep.example")
    with JunkFilter(tmp_path) as second:
        assert second.is_allowed(ACCOUNT, ["a@keep.example"])


# -- reads on the event loop: only when nothing would wait ----------------------


def nowait(junk: JunkFilter, n: int, senders: tuple[str, ...] = ()) -> object:
    return junk.check_nowait(ACCOUNT, message(n), senders)


def test_check_nowait_agrees_with_classify(junk: JunkFilter) -> None:
    assert nowait(junk, 1) is not None  # no file: untrained, at once
    for n in range(3):
        junk.learn(ACCOUNT, message(n, "viagra pills"), True)
        junk.learn(ACCOUNT, message(100 + n, "meeting agenda"), False)
    new = message(50, "cheap viagra pills")
    assert junk.check_nowait(ACCOUNT, new) == (False, junk.classify(ACCOUNT, new))
    junk.allow(ACCOUNT, "@friends.example")
    assert junk.check_nowait(ACCOUNT, new, ["x@y.example"]) == (False, junk.classify(ACCOUNT, new))
    assert junk.check_nowait(ACCOUNT, new, ["a@Friends.example"]) == (True, None)


def test_nowait_reads_while_a_training_holds_the_writer(junk: JunkFilter) -> None:
    junk.learn(ACCOUNT, message(1, "pills"), True)
    db = junk.store._dbs[ACCOUNT]
    with db.lock:  # a training in a worker thread: WAL lets the reader go on
        assert nowait(junk, 2) is not None
    with db.read_lock:  # the reader busy (another loop read): not now
        assert nowait(junk, 2) is None


def test_nowait_does_not_wait_for_a_locked_file(junk: JunkFilter) -> None:
    junk.learn(ACCOUNT, message(1, "pills"), True)
    assert nowait(junk, 2) is not None  # the reader is open now
    db = junk.store._dbs[ACCOUNT]
    assert db.reader is not None
    # A checkpoint that truncates the WAL needs every reader gone; a reader
    # in a transaction meanwhile is what "locked" looks like from here.
    # Simplest honest stand-in: a reader whose every statement is refused.
    real = db.reader

    class Locked:
        in_transaction = False

        def execute(self, sql: str, *args: Any) -> object:
            raise sqlite3.OperationalError("database is locked")

    db.reader = Locked()  # type: ignore[assignment]
    try:
        assert nowait(junk, 2) is None
    finally:
        db.reader = real
    assert nowait(junk, 2) is not None


def test_eviction_closes_the_reader(tmp_path: Path) -> None:
    with JunkFilter(tmp_path, SpamSettings(max_open=1)) as junk:
        junk.learn(ACCOUNT, message(1, "pills"), True)
        assert junk.check_nowait(ACCOUNT, message(2)) is not None
        db = junk.store._dbs[ACCOUNT]
        junk.learn("bob@example.test", message(3, "pills"), True)  # evicts alice's
        assert db.closed and db.reader is None
        # Not open, but the file exists: "not now" (opening it is a thread's job).
        assert junk.check_nowait(ACCOUNT, message(2)) is None
        junk.classify(ACCOUNT, message(2))  # the worker thread's path opens it
        assert junk.check_nowait(ACCOUNT, message(2)) is not None


def test_read_nowait_agrees_with_counts_past_one_statement(tmp_path: Path) -> None:
    # More ids than one "IN (...)" takes: the first chunk comes with the
    # totals and the allowlist in one statement, the rest in more.
    store = TokenStore(tmp_path)
    try:
        ids = list(range(-700, 700))
        store.learn(ACCOUNT, [(b"s" * 32, ids[::3])], spam=True)
        store.learn(ACCOUNT, [(b"h" * 32, ids[::5])], spam=False)
        asked = [*ids, *ids[:10]]  # repeats are asked once
        expected = store.counts(ACCOUNT, asked)
        assert expected is not None and len(expected.tokens) > store_module._CHUNK
        done, (allowed, counts) = store.read_nowait(ACCOUNT, asked, ["bob@example.org"])
        assert done and not allowed and counts == expected
        assert store.allow(ACCOUNT, "bob@example.org")
        assert store.read_nowait(ACCOUNT, asked, ["x@y.example", "bob@example.org"]) == (
            True,
            (True, None),
        )
        # No entries, no ids: the totals alone.
        done, (allowed, counts) = store.read_nowait(ACCOUNT, [], [])
        assert done and not allowed and counts is not None and counts.tokens == {}
        assert (counts.nspam, counts.nham) == (1, 1)
    finally:
        store.close()


def test_an_untrained_account_costs_one_stat_per_window(
    junk: JunkFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats: list[Path] = []
    real_exists = Path.exists

    def counting(self: Path, *args: Any, **kwargs: Any) -> bool:
        stats.append(self)
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", counting)
    for n in range(50):
        assert nowait(junk, n) is not None  # untrained: answered at once
    assert len([p for p in stats if p.name == file_name(ACCOUNT)]) == 1


def test_training_is_seen_at_once_here_and_soon_from_another_process(
    junk: JunkFilter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "ABSENT_FOR", 0.2)
    assert junk.store.run_nowait(ACCOUNT, lambda conn: "read", "absent") == (True, "absent")
    # This process trains: the file is used at once.
    junk.learn(ACCOUNT, message(1, "pills"), True)
    assert junk.store.run_nowait(ACCOUNT, lambda conn: "read", "absent") == (True, "read")
    # Another process (estafeta spam train) trains a second account.
    other_account = "bob@example.test"
    assert junk.store.run_nowait(other_account, lambda conn: "read", "absent")[1] == "absent"
    with JunkFilter(tmp_path) as other:
        other.learn(other_account, message(2, "pills"), True)
    time.sleep(0.25)
    found = junk.store.run_nowait(other_account, lambda conn: "read", "absent")
    assert found == (False, "absent")  # "not now": there is a file to open in a thread


def test_an_untrained_account_is_not_tokenized(
    junk: JunkFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real_tokens = junk.tokens

    def counting(message: Any) -> list[str]:
        calls.append(message)
        return real_tokens(message)

    monkeypatch.setattr(junk, "tokens", counting)
    checked = junk.check_nowait(ACCOUNT, message(1, "pills"), ["a@b.example"])
    assert checked is not None
    allowed, verdict = checked
    assert allowed is False and verdict is not None and not verdict.trained
    assert calls == []
    junk.learn(ACCOUNT, message(2, "pills"), True)  # trained: tokens are needed now
    calls.clear()
    junk.check_nowait(ACCOUNT, message(3, "pills"))
    assert len(calls) == 1
