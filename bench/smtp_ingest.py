#!/usr/bin/env python3
"""Durable SMTP ingest rate: messages per second acknowledged with 250.

Starts a real estafeta on loopback in a temporary directory, sends N
messages over 1 and over 20 (``--sessions``) concurrent smtplib sessions
(one message per transaction, connections reused), and checks afterwards
that every one is in the index. A 250 from estafeta means the message is
durable (its index row and bytes committed, issue 17; before: fsync'd file
+ directory + index commit), so this is the durable rate. ``cpu ms/msg``:
CPU seconds of the server process (user + system) per message.

    .venv/bin/python bench/smtp_ingest.py [--messages 2000] [--size 4096] [--sessions 1,20,50]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import smtplib
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _harness import add_user, free_port, running
from _procs import cpu_seconds, tree


def write_config(root: Path, port: int) -> Path:
    config = root / "estafeta.toml"
    config.write_text(
        f'hostname = "mx.bench.test"\ndata_dir = "{root / "data"}"\n'
        f'domains = ["bench.test"]\n[listen]\nsmtp = ["127.0.0.1:{port}"]\n'
        '[log]\nlevel = "warning"\n'
        # No DNS here: SPF/DKIM/DMARC lookups would time out on every message.
        "[inbound]\nauthenticate = false\n"
        # One client, many first contacts: no greylisting, no pregreet pause;
        # loopback exempt from the per-client connection limits (50 sessions).
        "[greylist]\nenabled = false\n[screen]\ngreeting_pause = 0\n"
        '[auth]\nexempt = ["127.0.0.0/8"]\n'
    )
    add_user(config, "bench@bench.test", secrets.token_urlsafe(18))  # SMTP needs no login
    return config


def run(port: int, sessions: int, messages: int, body: bytes) -> tuple[float, list[float]]:
    per_session = messages // sessions
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(sessions + 1)

    def worker(n: int) -> None:
        mine = []
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
                client.ehlo(f"bench{n}.test")
                barrier.wait()
                for i in range(per_session):
                    data = b"Message-ID: <%d.%d@bench.test>\r\n" % (n, i) + body
                    t0 = time.perf_counter()
                    client.sendmail("sender@remote.test", ["bench@bench.test"], data)
                    mine.append(time.perf_counter() - t0)
        except BaseException:
            barrier.abort()  # the others would wait for this one for ever
            raise
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return (per_session * sessions) / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="approximate message size")
    parser.add_argument("--dir", help="directory for the data (default: a temp dir under /var/tmp)")
    parser.add_argument("--sessions", default="1,20", help="comma-separated session counts")
    parser.add_argument("--json", help="append the figures to this file (JSON lines)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="estafeta-bench-", dir=args.dir or "/var/tmp"))
    body = b"From: a@remote.test\r\nTo: bench@bench.test\r\nSubject: bench\r\n\r\n" + (
        b"x" * 76 + b"\r\n"
    ) * max(1, args.size // 78)
    port = free_port()
    config = write_config(root, port)
    total = 0
    figures = []
    with running(config, port, root / "log") as server:
        print(f"estafeta SMTP ingest, {len(body)}-byte messages, data in {root}")
        print(
            f"{'sessions':>8} {'messages':>8} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'cpu ms/msg':>10}"
        )
        for sessions in (int(n) for n in args.sessions.split(",")):
            count = args.messages if sessions > 1 else max(200, args.messages // 4)
            cpu_before = cpu_seconds(tree(server.pid))
            rate, lat = run(port, sessions, count, body)
            cpu = cpu_seconds(tree(server.pid)) - cpu_before
            total += len(lat)
            lat.sort()
            p99 = lat[int(len(lat) * 0.99) - 1]
            p50 = statistics.median(lat)
            print(
                f"{sessions:>8} {len(lat):>8} {rate:>9.1f} "
                f"{p50 * 1000:>8.2f} {p99 * 1000:>8.2f} {cpu / len(lat) * 1000:>10.3f}"
            )
            figures.append(
                {
                    "sessions": sessions,
                    "messages": len(lat),
                    "rate": rate,
                    "p50_ms": p50 * 1000,
                    "p99_ms": p99 * 1000,
                    "cpu_ms_per_msg": cpu / len(lat) * 1000,
                }
            )
    db = sqlite3.connect(root / "data/mail/bench.test/bench/index.db")
    indexed = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    db.close()
    print(f"indexed after the run: {indexed} of {total} acknowledged")
    fs = os.statvfs(root)
    print(f"file system block size {fs.f_bsize}; cores {os.cpu_count()}")
    shutil.rmtree(root)
    if args.json:
        with open(args.json, "a") as out:
            for figure in figures:
                out.write(json.dumps({"size": len(body), **figure}) + "\n")
    if indexed != total:
        raise SystemExit("MISMATCH: acknowledged messages missing from the index")


if __name__ == "__main__":
    main()
