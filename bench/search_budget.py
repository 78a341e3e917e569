#!/usr/bin/env python3
"""SEARCH's work budget and its cost to the event loop (issue 14 item 7), in-process.

Part 1 times ``estafeta.imap.search.evaluate`` on one 10 MiB text message
(lines of "a", the worst case of the substring search) for: one BODY key,
the same key 300 times (matched once per message now), 300 different keys
without a budget, and the same with the budget a SEARCH gets in the server
(``Budget.for_mailbox``), which ends it with SearchLimit.

Part 2 runs N of those 300-key searches at once on an event loop, the way
the server does (``estafeta.workers.SearchPool``: two threads, each search
on its own account here so that they run in parallel), and the way it did
before issue 14 (``asyncio.to_thread`` on the default pool, one str.find
per text): while they run, a ticker on the loop wakes every 10 ms and the
largest lateness is printed. That lateness is what every login, SMTP
greeting and delivery of the server waits on top of its own work.

    .venv/bin/python bench/search_budget.py [--size-mib 10] [--keys 300] [--searches 1,2,6]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from estafeta.imap import search
from estafeta.imap.search import Budget, Candidate, SearchLimit, evaluate
from estafeta.imap.types import SearchKey
from estafeta.message import summarize
from estafeta.workers import SearchPool

MIB = 1024 * 1024


def message(size: int) -> bytes:
    line = b"a" * 998 + b"\r\n"  # the longest line rfc5322:2.1.1 allows
    return b"From: a@example.test\r\nSubject: big\r\nContent-Type: text/plain\r\n\r\n" + line * (
        size // len(line)
    )


def program(keys: int, distinct: bool, tag: str = "") -> SearchKey:
    needles = [f"aaaaaaaaab{tag}{k:03d}" if distinct else "aaaaaaaaab" for k in range(keys)]
    return SearchKey("AND", (tuple(SearchKey("NOT", (SearchKey("BODY", (n,)),)) for n in needles),))


def candidates(data: bytes) -> list[Candidate]:
    summary = summarize(data)
    return [Candidate(1, 1, frozenset(), False, 0, len(data), 1, summary, lambda: data)]


def timed(function: Callable[[], Any]) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        result = function()
        outcome = f"{len(result)} match"
    except SearchLimit as exc:
        outcome = f"SearchLimit ({exc})"
    return time.perf_counter() - started, outcome


def part_one(data: bytes, keys: int) -> None:
    found = candidates(data)
    cases = {
        "1 x NOT BODY": (program(1, False), None),
        f"{keys} x the same NOT BODY": (program(keys, False), None),
        f"{keys} different NOT BODY, no budget": (program(keys, True), None),
        f"{keys} different NOT BODY, budget": (program(keys, True), "budget"),
    }
    print(f"one message of {len(data) / MIB:.0f} MiB; seconds, outcome")
    for name, (key, budgeted) in cases.items():
        budget = Budget.for_mailbox(len(data)) if budgeted else None
        seconds, outcome = timed(
            lambda key=key, budget=budget: evaluate(
                key, found, largest_seq=1, largest_uid=1, budget=budget
            )
        )
        used = f", work {budget.used() / MIB:.0f} MiB of {budget.work / MIB:.0f}" if budget else ""
        print(f"  {name:<40} {seconds:7.2f} s  {outcome}{used}")


async def ticker(stop: asyncio.Event, period: float = 0.01) -> float:
    """The largest lateness of a 10 ms timer on this loop until ``stop``."""
    worst = 0.0
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        wanted = loop.time() + period
        await asyncio.sleep(period)
        worst = max(worst, loop.time() - wanted)
    return worst


async def concurrent(data: bytes, keys: int, searches: int, way: str) -> tuple[float, float, str]:
    found = candidates(data)
    pool = SearchPool()
    stop = asyncio.Event()
    tick = asyncio.ensure_future(ticker(stop))
    await asyncio.sleep(0.05)
    started = time.perf_counter()

    async def one(i: int) -> str:
        key = program(keys, True, tag=str(i))
        if way == "before":
            # fc9a17d: the default pool, no budget, one str.find per text.
            def unbounded() -> list[Candidate]:
                return evaluate(key, found, largest_seq=1, largest_uid=1)

            return f"{len(await asyncio.to_thread(unbounded))}"
        budget = Budget.for_mailbox(len(data))

        def budgeted() -> list[Candidate]:
            return evaluate(key, found, largest_seq=1, largest_uid=1, budget=budget)

        try:
            return f"{len(await pool.run(f'account{i}', budgeted))}"
        except SearchLimit:
            return "LIMIT"

    if way == "before":
        saved = search.SCAN_SLICE
        search.SCAN_SLICE = 1 << 62  # one call per text, as before
    try:
        outcomes = await asyncio.gather(*(one(i) for i in range(searches)))
    finally:
        if way == "before":
            search.SCAN_SLICE = saved
    elapsed = time.perf_counter() - started
    stop.set()
    worst = await tick
    pool.shutdown()
    return elapsed, worst, " ".join(outcomes)


def part_two(data: bytes, keys: int, counts: list[int], ways: tuple[str, ...]) -> None:
    print(f"\n{keys} different NOT BODY keys per search, N searches at once; loop lateness")
    for searches in counts:
        for way in ways:
            elapsed, worst, outcomes = asyncio.run(concurrent(data, keys, searches, way))
            print(
                f"  N={searches} {way:<6} all done in {elapsed:6.2f} s, "
                f"worst loop lateness {worst * 1000:7.1f} ms  [{outcomes}]"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=10)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--searches", default="1,2,6")
    parser.add_argument("--skip-before", action="store_true", help="only the current way")
    args = parser.parse_args()
    data = message(args.size_mib * MIB)
    part_one(data, args.keys)
    counts = [int(n) for n in args.searches.split(",")]
    part_two(data, args.keys, counts, ("now",) if args.skip_before else ("before", "now"))


if __name__ == "__main__":
    main()
