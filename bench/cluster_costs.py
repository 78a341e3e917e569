#!/usr/bin/env python3
"""What the cluster backend costs per operation, for docs/scale.md's capacity model.

Starts a private PostgreSQL 15 and moto's S3 (the test suite's helpers),
runs a cluster node's store in-process and measures, per delivered message
and per IMAP flag change: PostgreSQL transactions and WAL bytes, rows and
bytes in ``mail_rows`` (table and indexes), bytes in the object store, and
the node's replica bytes; then the delivery rate with group commit. Counts
and bytes do not depend on the machine's load; the rates do (run it on a
quiet machine). Prints a table and the extrapolation to 10,000 and
1,000,000 mailboxes with ``--messages-per-mailbox`` messages of
``--size`` octets each.

    .venv/bin/python bench/cluster_costs.py [--messages 2000] [--size 4096] [--sessions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "server" / "tests"))

from _moto import REGION, moto_server, s3_admin  # noqa: E402
from _ports import free_port  # noqa: E402
from _postgres import postgres_server  # noqa: E402

from estafeta.cluster.blobs import Blobs  # noqa: E402
from estafeta.cluster.database import Database  # noqa: E402
from estafeta.cluster.ioloop import IoLoop  # noqa: E402
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig  # noqa: E402
from estafeta.cluster.url import parse_url  # noqa: E402
from estafeta.message import summarize  # noqa: E402
from estafeta.store import Delivery  # noqa: E402
from estafeta.store.cluster import ClusterStore  # noqa: E402


def message(n: int, size: int) -> bytes:
    head = (
        f"From: Sender {n % 97} <s{n % 97}@example.net>\r\nTo: user@example.test\r\n"
        f"Subject: report {n} about topic {n % 50}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{n}.{os.getpid()}@example.net>\r\n\r\n"
    ).encode()
    line = b"the quick brown fox jumps over the lazy dog 0123456789\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def stats(db: Database) -> dict[str, int]:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn AS wal,"
            " (SELECT count(*) FROM mail_rows) AS rows,"
            " pg_total_relation_size('mail_rows') AS row_bytes,"
            " pg_total_relation_size('blobs') AS blob_row_bytes"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
    return {key: int(row[key]) for key in row}


def say(text: str) -> None:
    print(text, flush=True)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--stores", type=int, default=200, help="single-message STOREs measured")
    parser.add_argument("--messages-per-mailbox", type=int, default=10_000)
    parser.add_argument("--mean-size", type=int, default=75_000, help="octets, for the model")
    parser.add_argument("--objects", choices=("s3", "database"), default="s3")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="estafeta-cluster-bench-", dir="/var/tmp"))
    with postgres_server(free_port()) as pg, moto_server(root, free_port()) as s3:
        name = pg.create_database()
        s3_admin(s3).create_bucket(Bucket="bench")
        credentials = root / "s3.ini"
        credentials.write_text("access_key_id = a\nsecret_access_key = b\n")
        credentials.chmod(0o600)
        database = DatabaseConfig(
            url=parse_url(pg.url(name)), password_file=pg.root / "password",
            ca_file=pg.ca_file, pool_size=10,
        )  # fmt: skip
        objects = ObjectsConfig(
            kind=args.objects, bucket="bench", endpoint=s3, region=REGION, path_style=True,
            credentials_file=credentials,
        )  # fmt: skip
        io = IoLoop().start()
        db = Database(database)
        io.run(db.open())
        blobs = Blobs(db, objects, root / "cache", 256 << 20)
        store = ClusterStore(root / "replicas", "bench.example.test", io=io, db=db, bodies=blobs)
        store.start()
        accounts = [f"user{i}@example.test" for i in range(args.accounts)]
        for address in accounts:  # each account's first version: not measured
            store.reader(address).close()
        bodies = [message(n, args.size) for n in range(args.messages)]
        summaries = [summarize(data) for data in bodies]

        async def deliver() -> list[float]:
            latencies: list[float] = []
            queue = list(range(args.messages))

            async def session() -> None:
                while queue:
                    n = queue.pop()
                    started = time.monotonic()
                    await store.deliver(
                        [Delivery(accounts[n % len(accounts)], bodies[n], summaries[n])]
                    )
                    latencies.append(time.monotonic() - started)

            await asyncio.gather(*(session() for _ in range(args.sessions)))
            return latencies

        before = io.run(stats(db))
        started = time.monotonic()
        latencies = asyncio.run(deliver())
        elapsed = time.monotonic() - started
        after = io.run(stats(db))
        d = delta(after, before)
        replica_bytes = sum(
            (root / "replicas" / "example.test" / f"user{i}" / "index.db").stat().st_size
            for i in range(args.accounts)
        )
        n = args.messages
        k = args.stores
        batch = store.batched_messages / max(1, store.batches)
        p99 = sorted(latencies)[int(len(latencies) * 0.99)]
        say(f"deliveries: {n} x {args.size} octets, {args.sessions} sessions")
        say(f"  {args.accounts} accounts, bodies in {args.objects}")
        say(f"  rate            {n / elapsed:10.1f} msg/s (machine-dependent)")
        p50 = statistics.median(latencies)
        say(f"  latency p50     {p50 * 1000:10.1f} ms, p99 {p99 * 1000:.1f}")
        say(f"  group commit    {batch:10.1f} messages per batch")
        say(f"  PG commits      {d['xact_commit'] / n:10.2f} per message")
        say(f"  PG WAL          {d['wal'] / n:10.0f} octets per message")
        say(f"  mail_rows       {d['rows'] / n:10.2f} rows per message")
        say(f"  mail_rows size  {d['row_bytes'] / n:10.0f} octets per message, with indexes")
        say(f"  blobs rows      {d['blob_row_bytes'] / n:10.0f} octets per message")
        say(f"  object store    {args.size:10d} octets per message (identical bodies once)")
        say(f"  replica         {replica_bytes / n:10.0f} octets per message, per serving node")
        # Flag changes: one STORE of one message, as a client marks mail read.
        before = io.run(stats(db))
        started = time.monotonic()
        for i in range(k):
            address = accounts[i % len(accounts)]
            store.store_flags(address, "INBOX", [1 + i // len(accounts)], "+", ["\\Seen"])
        store_elapsed = time.monotonic() - started
        d2 = delta(io.run(stats(db)), before)
        say(f"STORE +FLAGS (\\Seen) of one message, {k} times")
        say(f"  latency         {store_elapsed / k * 1000:10.2f} ms (machine-dependent)")
        say(f"  PG commits      {d2['xact_commit'] / k:10.2f} each")
        say(f"  PG WAL          {d2['wal'] / k:10.0f} octets each")
        per_message = (d["row_bytes"] + d["blob_row_bytes"]) / n
        wal = d["wal"] / n
        per_box, mean = args.messages_per_mailbox, args.mean_size
        say(f"model: {per_box} messages per mailbox, {mean} octets each")
        for mailboxes in (10_000, 1_000_000):
            messages = mailboxes * args.messages_per_mailbox
            daily = mailboxes * 20
            say(f"  {mailboxes:>9,} mailboxes, {messages:,} messages:")
            say(f"    PostgreSQL    {messages * per_message / 1e9:12,.0f} GB")
            say(f"    object store  {messages * args.mean_size / 1e12:12,.1f} TB")
            say(f"    20 deliveries per mailbox per day: {daily / 86400:,.1f} msg/s,")
            say(f"    {daily * wal / 1e9:,.1f} GB of WAL per day")
        store.stop()
        blobs.close()
        io.run(db.close())
        io.stop()


if __name__ == "__main__":
    main()
