#!/usr/bin/env python3
"""Flag, keyword, size and UID searches over a large mailbox, in-process.

Times ``estafeta.imap.search.evaluate`` over N candidates (default 100,000)
whose message files must never be read (the keys are answered from index
columns). Figures only: the correctness of these searches is checked by
server/tests/test_imap_search.py; the former 0.5 s assertion lives here as
the target it was ("under 0.5 s each on the reference machine").

    .venv/bin/python bench/search_flags.py [--messages 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from estafeta.imap.search import Candidate, evaluate
from estafeta.imap.types import SearchKey, SequenceSet
from estafeta.message import summarize

MESSAGE = b"From: a@example.test\r\nSubject: flags\r\n\r\nbody\r\n"


def refuse() -> bytes:
    raise AssertionError("a flag search read a message file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.messages
    summary = summarize(MESSAGE)
    candidates = [
        Candidate(
            seq=i,
            uid=i * 2,
            flags=frozenset({"\\Seen", "Work"} if i % 3 else {"$Junk"}),
            recent=False,
            internal_date=1_700_000_000 + i,
            size=1000 + i,
            modseq=i,
            summary=summary,
            load=refuse,
        )
        for i in range(1, n + 1)
    ]
    keys = {
        "UNSEEN": SearchKey("UNSEEN"),
        "KEYWORD work": SearchKey("KEYWORD", ("work",)),
        "SEEN LARGER 50000": SearchKey(
            "AND", ((SearchKey("SEEN"), SearchKey("LARGER", (50_000,))),)
        ),
        "UID 2:10,199990:*": SearchKey("UID", (SequenceSet(((2, 10), (199_990, None))),)),
    }
    print(f"{n:,} messages, {args.rounds} rounds, median / max seconds")
    for name, key in keys.items():
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            found = evaluate(key, candidates, largest_seq=n, largest_uid=2 * n)
            times.append(time.perf_counter() - start)
        print(
            f"  {name:<22} {statistics.median(times):.3f}  {max(times):.3f}  ({len(found):,} found)"
        )


if __name__ == "__main__":
    main()
