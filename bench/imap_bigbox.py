#!/usr/bin/env python3
"""IMAP on a big mailbox, and the memory cost of idle IDLE connections.

Fills an INBOX with N messages (default 100,000) through the store API
(durable writes, as deliveries do), starts a real estafeta, and prints:
  - SELECT time, FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE) time,
  - UID SEARCH HEADER time and SEARCH BODY time, STATUS time,
  - STORE 1:* +FLAGS (\\Seen) and -FLAGS (\\Seen) times,
  - the server's RSS before and after opening C connections that LOGIN,
    SELECT and sit in IDLE (default 10,000).
Targets (issue #3, not gates): SELECT + FETCH under 3 s; 10,000 IDLE under 1 GiB.

    .venv/bin/python bench/imap_bigbox.py [--messages 100000] [--idle 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import resource
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path

from _harness import add_user, free_port, running
from _load import bigbox_message
from estafeta.message import summarize
from estafeta.store import Delivery, Store

USER = "big@bench.test"
PASSWORD = secrets.token_urlsafe(18)  # estafeta refuses guessable passwords


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw_fetch(port: int, fetch_args: str) -> tuple[float, int]:
    """Time one FETCH over a raw socket, reading until the tagged OK."""
    return raw_command(port, f"FETCH {fetch_args}")


def raw_command(port: int, command: str) -> tuple[float, int]:
    """Time one command over a raw socket, reading until the tagged OK;
    returns the time and the number of FETCH responses."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
        while not reader.readline().startswith(b"b OK"):
            pass
        started = time.perf_counter()
        sock.sendall(f"c {command}\r\n".encode())
        count = 0
        while True:
            line = reader.readline()
            if line.startswith(b"c "):
                assert line.startswith(b"c OK"), line
                break
            if b" FETCH (" in line:
                count += 1
        return time.perf_counter() - started, count


def make_message(n: int) -> bytes:
    return bigbox_message(n, USER)


def fill(root: Path, count: int) -> float:
    started = time.perf_counter()
    with Store(root / "data" / "mail", "mx.bench.test") as store:
        batch = 1000
        for start in range(0, count, batch):
            deliveries = []
            for n in range(start, min(start + batch, count)):
                data = make_message(n)
                deliveries.append(Delivery(USER, data, summarize(data)))
            store.deliver_sync(deliveries)
    return time.perf_counter() - started


async def idle_clients(port: int, count: int, ready: asyncio.Event) -> list[asyncio.StreamWriter]:
    writers = []
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb EXAMINE Drafts\r\nc IDLE\r\n'.encode())
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError(f"client {i} closed")
                if line.startswith(b"+ "):
                    break
            writers.append(writer)

    await asyncio.gather(*(one(i) for i in range(count)))
    ready.set()
    return writers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    root = Path(tempfile.mkdtemp(prefix="estafeta-imapbench-", dir=args.dir))
    port = free_port()
    config = root / "estafeta.toml"
    config.write_text(
        f'hostname = "mx.bench.test"\ndata_dir = "{root / "data"}"\ndomains = ["bench.test"]\n'
        f'[listen]\nimap = ["127.0.0.1:{port}"]\n[limits]\nmax_connections = {args.idle + 100}\n'
        '[log]\nlevel = "warning"\n'
        # Loopback only: plaintext LOGIN, and cheap hashes so that 10,000
        # logins measure the IMAP server, not argon2.
        "[auth]\nallow_plaintext = true\nargon2_time_cost = 1\nargon2_memory_cost = 1024\n"
        "argon2_parallelism = 1\n"
        # All the connections come from 127.0.0.1: no per-client cap
        # (max_connections_per_ip) and no login serialisation for it.
        'exempt = ["127.0.0.0/8"]\n'
    )
    add_user(config, USER, PASSWORD)
    print(f"filling INBOX with {args.messages} messages ...", flush=True)
    fill_s = fill(root, args.messages)
    print(f"fill: {fill_s:.1f} s ({args.messages / fill_s:.0f} msg/s, store API, fsync'd)")

    try:
        with running(config, port, root / "log") as server:
            measure(args, port, server.pid)
    finally:
        shutil.rmtree(root)


def measure(args: argparse.Namespace, port: int, server_pid: int) -> None:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=600)
    client.login(USER, PASSWORD)
    t0 = time.perf_counter()
    status, data = client.select("INBOX")
    t_select = time.perf_counter() - t0
    assert status == "OK" and int(data[0]) == args.messages, data
    t0 = time.perf_counter()
    status, _rows = client.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    t_fetch_imaplib = time.perf_counter() - t0
    # The same FETCH read raw: what the server costs, without imaplib's parsing.
    t_fetch, fetched = raw_fetch(port, "1:* (UID FLAGS RFC822.SIZE ENVELOPE)")
    t0 = time.perf_counter()
    status, found = client.uid("SEARCH", "HEADER", "Subject", '"topic 42"')
    t_header = time.perf_counter() - t0
    t0 = time.perf_counter()
    status, body_found = client.search(None, "BODY", "zebracorn")
    t_body = time.perf_counter() - t0
    t0 = time.perf_counter()
    status, _ = client.status("INBOX", "(MESSAGES UNSEEN)")
    t_status = time.perf_counter() - t0
    client.logout()
    t_store_set, set_count = raw_command(port, "STORE 1:* +FLAGS (\\Seen)")
    t_store_clear, clear_count = raw_command(port, "STORE 1:* -FLAGS (\\Seen)")
    print(f"SELECT {args.messages}: {t_select:.2f} s")
    print(
        f"FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE): {t_fetch:.2f} s ({fetched} messages;"
        f" {t_fetch_imaplib:.2f} s through imaplib's parser)"
    )
    print(f"SELECT + FETCH: {t_select + t_fetch:.2f} s (target < 3 s)")
    print(f"UID SEARCH HEADER Subject: {t_header:.2f} s ({len(found[0].split())} hits)")
    print(f"SEARCH BODY: {t_body:.2f} s ({len(body_found[0].split())} hits)")
    print(f"STATUS (MESSAGES UNSEEN): {t_status:.3f} s")
    print(f"STORE 1:* +FLAGS (\\Seen): {t_store_set:.2f} s ({set_count} FETCH responses)")
    print(f"STORE 1:* -FLAGS (\\Seen): {t_store_clear:.2f} s ({clear_count} FETCH responses)")

    if args.idle:
        before = rss_mib(server_pid)
        ready = asyncio.Event()

        async def run_idle() -> None:
            t = time.perf_counter()
            writers = await idle_clients(port, args.idle, ready)
            elapsed = time.perf_counter() - t
            await asyncio.sleep(2)
            after = rss_mib(server_pid)
            print(f"{len(writers)} IDLE connections opened in {elapsed:.1f} s")
            print(
                f"server RSS: {before:.0f} MiB before, {after:.0f} MiB with them "
                f"({(after - before) * 1024 / len(writers):.1f} KiB each; target < 1 GiB)"
            )
            for writer in writers:
                writer.close()

        asyncio.run(run_idle())


if __name__ == "__main__":
    main()
