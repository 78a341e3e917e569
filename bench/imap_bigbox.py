#!/usr/bin/env python3
"""IMAP on a big mailbox, and the memory cost of idle IDLE connections.

Fills an INBOX with N messages (default 100,000) through the store API
(durable writes, as deliveries do), starts a real estafeta, and prints:
  - SELECT time, FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE) time,
  - UID SEARCH HEADER time and SEARCH BODY time, STATUS time,
  - STORE 1:* +FLAGS (\\Seen) and -FLAGS (\\Seen) times,
  - the server's RSS and PSS before and after opening C connections that
    LOGIN, SELECT INBOX and sit in IDLE (default 10,000; over --idle-accounts
    accounts of 10 messages, from source addresses spread over 127.0.0.0/8,
    held by worker processes), and the time until a message delivered over
    SMTP is announced (* n EXISTS) to every idle connection of its account.
Targets: SELECT + FETCH under 3 s (issue #3); 100,000 IDLE connections in
1 GiB, a delivery announced within 1 s (issue 17).

    .venv/bin/python bench/imap_bigbox.py [--messages 100000] [--idle 10000]
    .venv/bin/python bench/imap_bigbox.py --messages 0 --idle 100000   # IDLE only

100,000 connections need RLIMIT_NOFILE above 100,000 for the server: this
script raises its own (inherited by the server) if it may (root with
CAP_SYS_RESOURCE, up to /proc/sys/fs/nr_open) and says so if it cannot.
"""

from __future__ import annotations

import argparse
import imaplib
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from _harness import add_user, free_port, running
from _load import IdleFleet, bigbox_message, pop_message, raise_open_files, smtp_send
from _procs import memory_kib
from estafeta import config as config_module
from estafeta.auth import Accounts
from estafeta.message import summarize
from estafeta.store import Delivery, Store

USER = "big@bench.test"
PASSWORD = secrets.token_urlsafe(18)  # estafeta refuses guessable passwords


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


def idle_accounts(config: Path, count: int) -> dict[str, str]:
    """``count`` accounts for the IDLE connections, 10 messages in each INBOX
    (created in this process: same code as ``estafeta user add``)."""
    cfg = config_module.load(config)
    passwords = {f"idle{n:04d}@bench.test": secrets.token_urlsafe(18) for n in range(count)}
    with Accounts(cfg.accounts_db, cfg.domains, hasher=cfg.auth.hasher()) as accounts:
        for address, password in passwords.items():
            accounts.add_user(address, password)
    with Store(cfg.mail_dir, "mx.bench.test") as store:
        for address in passwords:
            messages = [pop_message(n, 2048) for n in range(10)]
            store.deliver_sync([Delivery(address, m, summarize(m)) for m in messages])
    return passwords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--messages", type=int, default=100_000, help="big INBOX size; 0: IDLE only"
    )
    parser.add_argument("--idle", type=int, default=10_000, help="IDLE connections")
    parser.add_argument(
        "--idle-accounts", type=int, default=100, help="accounts they log in to (default 100)"
    )
    parser.add_argument(
        "--per-address",
        type=int,
        default=500,
        help="client connections per loopback source address (default 500)",
    )
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    args.idle_accounts = max(1, min(args.idle_accounts, args.idle or 1))
    limit = raise_open_files(args.idle + 4096)
    if args.idle and limit < args.idle + 1000:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit} and cannot be raised here (needs root with "
            f"CAP_SYS_RESOURCE): the server could not hold {args.idle} connections; "
            f"--idle {max(0, limit - 1000)} at most"
        )

    root = Path(tempfile.mkdtemp(prefix="estafeta-imapbench-", dir=args.dir))
    port = free_port()
    smtp_port = free_port()
    config = root / "estafeta.toml"
    config.write_text(
        f'hostname = "mx.bench.test"\ndata_dir = "{root / "data"}"\ndomains = ["bench.test"]\n'
        f'[listen]\nimap = ["127.0.0.1:{port}"]\nsmtp = ["127.0.0.1:{smtp_port}"]\n'
        f"[limits]\nmax_connections = {args.idle + 100}\n"
        '[log]\nlevel = "warning"\n'
        # Loopback only: plaintext LOGIN, and cheap hashes so that 10,000
        # logins measure the IMAP server, not argon2.
        "[auth]\nallow_plaintext = true\nargon2_time_cost = 1\nargon2_memory_cost = 1024\n"
        "argon2_parallelism = 1\n"
        # Loopback clients: no per-client cap (max_connections_per_ip) and
        # no login serialisation for them.
        'exempt = ["127.0.0.0/8"]\n'
        # No DNS here (SPF/DKIM/DMARC), no greylisting of the probe message.
        "[inbound]\nauthenticate = false\n[greylist]\nenabled = false\n"
        "[screen]\ngreeting_pause = 0\n"
    )
    add_user(config, USER, PASSWORD)
    if args.messages:
        print(f"filling INBOX with {args.messages} messages ...", flush=True)
        fill_s = fill(root, args.messages)
        print(f"fill: {fill_s:.1f} s ({args.messages / fill_s:.0f} msg/s, store API, fsync'd)")
    passwords = idle_accounts(config, args.idle_accounts) if args.idle else {}

    try:
        with running(config, port, root / "log") as server:
            if args.messages:
                measure(args, port)
            if args.idle:
                measure_idle(args, port, smtp_port, server.pid, passwords)
    finally:
        shutil.rmtree(root)


def measure(args: argparse.Namespace, port: int) -> None:
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


def measure_idle(
    args: argparse.Namespace, port: int, smtp_port: int, pid: int, passwords: dict[str, str]
) -> None:
    """Memory of ``args.idle`` IDLE connections, and how soon they hear of a
    delivery."""
    accounts = list(passwords)
    logins = [(accounts[n % len(accounts)], "") for n in range(args.idle)]
    logins = [(address, passwords[address]) for address, _ in logins]
    rss_before, pss_before = memory_kib([pid])
    fleet = IdleFleet(port, logins, per_address=args.per_address)
    print(
        f"opening {args.idle} IDLE connections over {len(accounts)} accounts from "
        f"{fleet.addresses} source addresses, {len(fleet.jobs)} client processes ...",
        flush=True,
    )
    last = [0.0]

    def progress(done: int) -> None:
        if time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"  {done} in IDLE", flush=True)

    try:
        opened = fleet.open(progress)
        time.sleep(3)
        rss, pss = memory_kib([pid])
        print(f"{args.idle} IDLE connections opened in {opened:.1f} s")
        print(
            f"server RSS {rss_before / 1024:.0f} MiB before, {rss / 1024:.0f} MiB with them; "
            f"PSS {pss_before / 1024:.0f} -> {pss / 1024:.0f} MiB "
            f"({(pss - pss_before) / args.idle:.2f} KiB PSS, "
            f"{(rss - rss_before) / args.idle:.2f} KiB RSS per connection; target: "
            f"100,000 in 1 GiB)"
        )
        # One message to the first account: every one of its connections
        # must hear "* 11 EXISTS".
        target = accounts[0]
        wanted = sum(1 for address, _ in logins if address == target)
        for attempt in range(3):
            fleet.mark()
            dot, acked = smtp_send(smtp_port, target, pop_message(1000 + attempt, 2048))
            times = fleet.exists(target, wanted)
            if not times:
                print("  no EXISTS heard")
                continue
            late = [t - dot for t in times]
            print(
                f"delivery {attempt + 1}: 250 after {(acked - dot) * 1000:.0f} ms; EXISTS on "
                f"{len(times)}/{wanted} connections of {target}: first "
                f"{late[0] * 1000:.0f} ms, median {statistics.median(late) * 1000:.0f} ms, "
                f"last {late[-1] * 1000:.0f} ms after the final dot (target < 1 s)"
            )
            time.sleep(1)
        rss_after, pss_after = memory_kib([pid])
        print(
            f"server after the deliveries: RSS {rss_after / 1024:.0f} MiB, "
            f"PSS {pss_after / 1024:.0f} MiB"
        )
    finally:
        fleet.close()


if __name__ == "__main__":
    main()
