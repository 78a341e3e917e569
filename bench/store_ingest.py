#!/usr/bin/env python3
"""The store alone: durable deliveries per second, no SMTP around them.

Runs ``Store.deliver`` in-process for 1, 20 and 50 concurrent "sessions"
(asyncio tasks, one message per delivery), the way the SMTP server calls
it, and reports the rate, the latency of a delivery (until it is
acknowledged) and the process CPU per message, including the settling of
files that the last deliveries left (issue 17). Compare two trees with
PYTHONPATH:

    PYTHONPATH=server/src .venv/bin/python bench/store_ingest.py [--messages 2000] [--size 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from estafeta.message import summarize
from estafeta.store import Delivery, Store


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sessions", default="1,20,50")
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument(
        "--settle",
        choices=("auto", "fsync", "syncfs"),
        default="auto",
        help="how settling makes files durable (auto: syncfs on Linux 5.8+)",
    )
    args = parser.parse_args()
    body = b"From: a@remote.test\r\nTo: bench@bench.test\r\nSubject: bench\r\n\r\n" + (
        b"x" * 76 + b"\r\n"
    ) * max(1, args.size // 78)
    summary = summarize(body)
    root = Path(tempfile.mkdtemp(prefix="estafeta-store-", dir=args.dir))
    print(f"store ingest, {len(body)}-byte messages, data in {root}")
    print(
        f"{'sessions':>8} {'messages':>8} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'cpu ms/msg':>10}"
    )
    try:
        options = {} if args.settle == "auto" else {"settle_syncfs": args.settle == "syncfs"}
        with Store(root, "mx.bench.test", **options) as store:
            store.deliver_sync([Delivery("bench@bench.test", body, summary)])
            for sessions in (int(n) for n in args.sessions.split(",")):
                count = args.messages if sessions > 1 else max(200, args.messages // 4)

                async def session(per: int) -> list[float]:
                    latencies = []
                    for _ in range(per):
                        t0 = time.perf_counter()
                        await store.deliver([Delivery("bench@bench.test", body, summary)])
                        latencies.append(time.perf_counter() - t0)
                    return latencies

                async def run(sessions: int = sessions, count: int = count) -> list[list[float]]:
                    return await asyncio.gather(
                        *(session(count // sessions) for _ in range(sessions))
                    )

                cpu0, t0 = cpu(), time.perf_counter()
                lat = sorted(x for each in asyncio.run(run()) for x in each)
                elapsed = time.perf_counter() - t0
                if hasattr(store, "settle"):
                    store.settle()  # the CPU of settling what is left counts too
                used = cpu() - cpu0
                p50 = statistics.median(lat) * 1000
                p99 = lat[int(len(lat) * 0.99) - 1] * 1000
                print(
                    f"{sessions:>8} {len(lat):>8} {len(lat) / elapsed:>9.1f} {p50:>8.2f}"
                    f" {p99:>8.2f} {used / len(lat) * 1000:>10.3f}"
                )
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
