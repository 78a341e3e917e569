"""SEARCH's work budget and pool (issue 14 item 7).

- ``evaluate`` decodes a message's text once per search and matches a text
  key that the program repeats once per message;
- a ``Budget`` ends a search that does more work than it allows, runs past
  its time, or is cancelled from another thread, with SearchLimit;
- ``SearchPool`` runs one search per account at a time, at most ``threads``
  in all, and an account's turn lasts until its search has returned, even
  when the session waiting for it went away.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conftest import Loader
from estafeta.imap import search
from estafeta.imap.search import Budget, Candidate, SearchLimit, evaluate, program_size
from estafeta.imap.types import SearchKey
from estafeta.message import summarize
from estafeta.workers import SearchPool

TEXT = b"Content-Type: text/plain\r\nSubject: s\r\n\r\n" + (b"a" * 998 + b"\r\n") * 1000


def candidate(data: bytes = TEXT, uid: int = 1) -> tuple[Candidate, Loader]:
    loader = Loader(data)
    return Candidate(uid, uid, frozenset(), False, 0, len(data), 1, summarize(data), loader), loader


def not_body(needles: list[str]) -> SearchKey:
    keys = tuple(SearchKey("NOT", (SearchKey("BODY", (n,)),)) for n in needles)
    return SearchKey("AND", (keys,))


def test_a_repeated_key_is_matched_once_per_message() -> None:
    message, loader = candidate()
    key = not_body(["aaaaaaaaab"] * 300)
    budget = Budget(10**12)
    assert evaluate(key, [message], largest_seq=1, largest_uid=1, budget=budget) == [message]
    assert loader.calls == 1
    # The file read, the text scanned once, and the nodes of the program.
    text = len(TEXT) - TEXT.index(b"\r\n\r\n") - 4
    assert budget.used() < len(TEXT) + 2 * text + program_size(key) * search.NODE_WORK
    assert program_size(key) == 1 + 300 * 2


def test_different_keys_run_out_of_work() -> None:
    message, _ = candidate()
    key = not_body([f"aaaaaaaaab{i:03d}" for i in range(300)])
    # Enough for the file and about ten scans of its text.
    budget = Budget(12 * len(TEXT))
    with pytest.raises(SearchLimit):
        evaluate(key, [message], largest_seq=1, largest_uid=1, budget=budget)
    assert budget.left < 0
    # Without a budget it completes, and matches.
    assert evaluate(key, [message], largest_seq=1, largest_uid=1) == [message]


def test_the_mailbox_budget_grows_with_the_mailbox() -> None:
    assert Budget.for_mailbox(0).work == search.BASE_WORK
    assert Budget.for_mailbox(10).work == search.BASE_WORK + 10 * search.WORK_PER_OCTET


def test_a_search_runs_out_of_time() -> None:
    messages = [candidate(uid=n)[0] for n in range(1, 600)]
    budget = Budget(10**15, seconds=0.0)
    with pytest.raises(SearchLimit, match="time"):
        evaluate(
            SearchKey("BODY", ("zz",)), messages, largest_seq=599, largest_uid=599, budget=budget
        )


def test_a_long_text_is_scanned_in_slices_and_can_be_cancelled() -> None:
    big = b"Content-Type: text/plain\r\n\r\n" + b"b" * (8 * search.SCAN_SLICE)
    message, _ = candidate(big)
    budget = Budget(10**15)
    checks = 0
    real_check = budget.check

    def counting_check() -> None:
        nonlocal checks
        checks += 1
        real_check()

    budget.check = counting_check  # type: ignore[method-assign]
    assert (
        evaluate(
            SearchKey("BODY", ("zzz",)), [message], largest_seq=1, largest_uid=1, budget=budget
        )
        == []
    )
    assert checks >= 8  # one per slice: the GIL changes hands in between
    budget.cancel()
    with pytest.raises(SearchLimit, match="cancelled"):
        evaluate(
            SearchKey("BODY", ("zzz",)), [message], largest_seq=1, largest_uid=1, budget=budget
        )


def test_one_search_per_account_and_a_bounded_pool() -> None:
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    total = {"now": 0, "most": 0}
    lock = threading.Lock()

    def work(account: str) -> str:
        with lock:
            running[account] = running.get(account, 0) + 1
            most[account] = max(most.get(account, 0), running[account])
            total["now"] += 1
            total["most"] = max(total["most"], total["now"])
        time.sleep(0.05)
        with lock:
            running[account] -= 1
            total["now"] -= 1
        return account

    async def main() -> None:
        pool = SearchPool(threads=2)
        jobs = [pool.run(a, work, a) for a in ["alice"] * 4 + ["bob"] * 4 + ["carol"] * 4]
        assert sorted(await asyncio.gather(*jobs)) == ["alice"] * 4 + ["bob"] * 4 + ["carol"] * 4
        assert pool.busy() == 0
        pool.shutdown()

    asyncio.run(main())
    assert most == {"alice": 1, "bob": 1, "carol": 1}
    assert total["most"] == 2


def test_a_turn_lasts_until_the_search_returns() -> None:
    release = threading.Event()
    started = threading.Event()
    order: list[str] = []

    def slow() -> None:
        order.append("slow started")
        started.set()
        release.wait(5)
        order.append("slow done")

    def quick() -> None:
        order.append("quick")

    async def main() -> None:
        pool = SearchPool(threads=2)
        first = asyncio.ensure_future(pool.run("alice", slow))
        assert await asyncio.to_thread(started.wait, 5)  # running in its thread
        first.cancel()  # the session went away; its search still runs
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(pool.run("alice", quick))
        await asyncio.sleep(0.1)
        assert order == ["slow started"]  # alice's next search waits its turn
        release.set()
        await second
        assert order == ["slow started", "slow done", "quick"]
        assert pool.busy() == 0
        pool.shutdown()

    asyncio.run(main())
