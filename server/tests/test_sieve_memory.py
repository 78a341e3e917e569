"""sieve.memory: vacation and duplicate records that survive restarts."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.sieve.memory import Memory

ALICE = "alice@example.test"
BOB = "bob@example.test"
DAY = 86400.0
T0 = 1_700_000_000.0


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[Memory]:
    with Memory(tmp_path / "sieve" / "memory.db") as memory:
        yield memory


def test_seen_within_the_window_only(memory: Memory) -> None:
    assert not memory.seen(ALICE, "vacation:sender@x", DAY, now=T0)
    memory.remember(ALICE, "vacation:sender@x", 7 * DAY, now=T0)
    assert memory.seen(ALICE, "vacation:sender@x", 7 * DAY, now=T0 + 1)
    assert memory.seen(ALICE, "vacation:sender@x", 7 * DAY, now=T0 + 7 * DAY - 1)
    # The record expires with the period it was made for.
    assert not memory.seen(ALICE, "vacation:sender@x", 7 * DAY, now=T0 + 7 * DAY)
    # A shorter window asked for later applies at once (:days 7 -> :days 1).
    assert not memory.seen(ALICE, "vacation:sender@x", DAY, now=T0 + 2 * DAY)
    # A longer window cannot revive an expired record.
    assert not memory.seen(ALICE, "vacation:sender@x", 30 * DAY, now=T0 + 8 * DAY)


def test_keys_and_accounts_are_separate(memory: Memory) -> None:
    memory.remember(ALICE, "k", DAY, now=T0)
    assert memory.seen(ALICE, "k", DAY, now=T0)
    assert not memory.seen(BOB, "k", DAY, now=T0)
    assert not memory.seen(ALICE, "K", DAY, now=T0)
    assert not memory.seen(ALICE, "k ", DAY, now=T0)


def test_remember_again_starts_a_new_window(memory: Memory) -> None:
    memory.remember(ALICE, "k", DAY, now=T0)
    memory.remember(ALICE, "k", DAY, now=T0 + DAY - 10)
    assert memory.seen(ALICE, "k", DAY, now=T0 + DAY + 10)
    assert memory.count(ALICE) == 1


def test_odd_windows(memory: Memory) -> None:
    memory.remember(ALICE, "zero", 0, now=T0)
    memory.remember(ALICE, "nan", float("nan"), now=T0)
    memory.remember(ALICE, "negative", -5, now=T0)
    for key in ("zero", "nan", "negative"):
        assert not memory.seen(ALICE, key, DAY, now=T0), key
    memory.remember(ALICE, "forever", float("inf"), now=T0)
    assert memory.seen(ALICE, "forever", float("inf"), now=T0 + 365 * DAY)
    assert not memory.seen(ALICE, "forever", float("nan"), now=T0 + 1)


def test_keys_are_hashed(memory: Memory, tmp_path: Path) -> None:
    huge = "x" * 1_000_000
    memory.remember(ALICE, huge, DAY, now=T0)
    memory.remember(ALICE, "\udcff surrogate", DAY, now=T0)
    assert memory.seen(ALICE, huge, DAY, now=T0)
    assert memory.seen(ALICE, "\udcff surrogate", DAY, now=T0)
    conn = sqlite3.connect(tmp_path / "sieve" / "memory.db")
    lengths = {row[0] for row in conn.execute("SELECT length(key) FROM records")}
    conn.close()
    assert lengths == {32}


def test_rows_per_account_are_capped_oldest_first(tmp_path: Path) -> None:
    with Memory(tmp_path / "m.db", max_records=5) as memory:
        for n in range(8):
            memory.remember(ALICE, f"sender{n}", DAY, now=T0 + n)
        memory.remember(BOB, "sender0", DAY, now=T0)
        assert memory.count(ALICE) == 5
        assert memory.count(BOB) == 1
        seen = [memory.seen(ALICE, f"sender{n}", DAY, now=T0 + 10) for n in range(8)]
        assert seen == [False, False, False, True, True, True, True, True]
        # A refreshed old record is new again, so it survives the next flood.
        memory.remember(ALICE, "sender3", DAY, now=T0 + 20)
        memory.remember(ALICE, "sender8", DAY, now=T0 + 21)
        assert memory.seen(ALICE, "sender3", DAY, now=T0 + 22)
        assert not memory.seen(ALICE, "sender4", DAY, now=T0 + 22)


def test_prune_removes_expired_records(memory: Memory) -> None:
    memory.remember(ALICE, "short", 60, now=T0)
    memory.remember(ALICE, "long", DAY, now=T0)
    memory.remember(BOB, "short", 60, now=T0)
    assert memory.prune(now=T0 + 59) == 0
    assert memory.prune(now=T0 + 60) == 2
    assert memory.count() == 1
    assert memory.seen(ALICE, "long", DAY, now=T0 + 61)


def test_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    with Memory(path) as memory:
        memory.remember(ALICE, "k", DAY, now=T0)
    assert path.stat().st_mode & 0o777 == 0o600
    with Memory(path) as again:
        assert again.seen(ALICE, "k", DAY, now=T0 + 1)


def test_a_broken_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "memory.db"
    path.write_bytes(b"this is not a database, it is a text file" * 100)
    with Memory(path) as memory:
        memory.remember(ALICE, "k", DAY, now=T0)
        assert memory.seen(ALICE, "k", DAY, now=T0)
    aside = list(tmp_path.glob("memory.db.broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert "sieve_memory_reset" in caplog.text


def test_errors_are_logged_not_raised(memory: Memory, caplog: pytest.LogCaptureFixture) -> None:
    memory.remember(ALICE, "k", DAY, now=T0)
    memory.close()
    # A closed (or failing) database: deliveries go on, the message is kept.
    assert memory.seen(ALICE, "k", DAY, now=T0) is False
    memory.remember(ALICE, "k2", DAY, now=T0)
    assert caplog.text.count("sieve_memory_error") == 2


def test_threads(memory: Memory) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                memory.remember(ALICE, f"{n}-{i}", DAY, now=T0)
                assert memory.seen(ALICE, f"{n}-{i}", DAY, now=T0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert memory.count(ALICE) == 400
