#!/usr/bin/env python3
"""What the built-in spam checks cost on the MX: P1 ingest with and without them.

Two real estafeta servers (SMTP on loopback, no DNS checks, as
bench/compare.py's P1), run in turn:

- **without**: ``[spam] enabled = false``, ``reject_executables = false``,
  no greylisting, no greeting pause;
- **with**: the defaults of a small VPS: the learning filter on, with the
  account trained on 30 spam and 30 ham messages (so every delivery reads
  its token statistics and computes a verdict), the executable-attachment
  check, greylisting (the load's triplet passed once before the runs: the
  cost of a known sender's mail, which most mail is), and the pregreet test
  (1 s greeting pause; the load's address passed it in the warm-up, so
  later connections are not held, as postscreen's cache does).

DNS block lists are not in the loop (no DNS here): their cost is one cached
lookup per zone and connection, bounded by ``[dnsbl] timeout``.

    .venv/bin/python bench/spam.py [--messages 1000] [--rounds 16] [--sessions 20]

Prints msg/s of each, the cost in per cent of throughput (issue 16's target:
at most 15 %), the median of each round's pair, and the servers' CPU time per
message (user + system, from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sieve import cpu_seconds

from _harness import free_port
from _load import ingest_message, smtp_ingest
from _servers import DOMAIN, Estafeta

WITHOUT = (
    "[greylist]\nenabled = false\n[screen]\ngreeting_pause = 0\n"
    "[spam]\nenabled = false\nreject_executables = false\n"
)
WITH = '[greylist]\nenabled = true\ndelay = "0s"\n[screen]\ngreeting_pause = "1s"\n'
SPAM_WORDS = [
    "cheap",
    "pills",
    "casino",
    "winner",
    "prize",
    "claim",
    "bitcoin",
    "offer",
    "unsubscribe",
]
HAM_WORDS = ["meeting", "agenda", "project", "review", "minutes", "budget", "schedule", "report"]


def train(server: Estafeta, account: str) -> None:
    """30 spam and 30 ham, in-process (what `estafeta spam train` does)."""
    from estafeta import config
    from estafeta.spam import JunkFilter

    cfg = config.load(server.config_path)
    with JunkFilter(cfg.spam_dir, cfg.spam.settings) as junk:
        for n in range(30):
            for words, spam in ((SPAM_WORDS, True), (HAM_WORDS, False)):
                body = " ".join(words[(n + i) % len(words)] for i in range(40))
                message = (
                    f"From: <s{n}@remote.test>\r\nTo: <{account}>\r\nSubject: {words[n % 8]} {n}"
                    f"\r\nMessage-ID: <{n}.{spam}@remote.test>\r\n\r\n{body}\r\n"
                ).encode()
                junk.learn(account, message, spam)


def ingest(server: Estafeta, account: str, sessions: int, count: int, size: int) -> float:
    before = server.count(account)
    messages = [ingest_message(i, account, size) for i in range(count)]
    result = asyncio.run(smtp_ingest(server.smtp_port, sessions, messages, account))
    deadline = time.perf_counter() + 600
    while server.count(account) < before + count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{account}: {server.count(account) - before} of {count} visible")
        time.sleep(0.005)
    return count / (time.perf_counter() - result.started)


async def pass_greylisting(port: int, account: str) -> None:
    """One transaction, refused (first sight), so later ones pass (delay 0)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    greeting = await reader.readline()  # "220-" (the pregreet pause), then "220 "
    while greeting[3:4] == b"-":
        greeting = await reader.readline()
    for line in (
        b"EHLO load.bench.test",
        b"MAIL FROM:<load@remote.test>",
        f"RCPT TO:<{account}>".encode(),
    ):
        writer.write(line + b"\r\n")
        reply = await reader.readline()
        while reply[3:4] == b"-":
            reply = await reader.readline()
    if not reply.startswith(b"451"):
        raise RuntimeError(f"expected the first RCPT to be greylisted, got {reply!r}")
    writer.write(b"QUIT\r\n")
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument(
        "--with-config",
        default=WITH,
        help="TOML appended to the checked server's config (to measure one check alone)",
    )
    args = parser.parse_args()
    count = args.messages - args.messages % args.sessions
    root = Path(tempfile.mkdtemp(prefix="estafeta-bench-spam-", dir="/var/tmp"))
    account = f"user@{DOMAIN}"
    servers = {
        "without": Estafeta(
            root / "without", free_port(), free_port(), free_port(), extra_config=WITHOUT
        ),
        "with": Estafeta(
            root / "with", free_port(), free_port(), free_port(), extra_config=args.with_config
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.write_config()
            server.add_users({account: secrets.token_urlsafe(18)})
        train(servers["with"], account)
        for server in servers.values():
            server.start()
        if "[greylist]\nenabled = true" in args.with_config:
            asyncio.run(pass_greylisting(servers["with"].smtp_port, account))
        for server in servers.values():
            ingest(server, account, args.sessions, args.sessions * 5, args.size)  # warm-up
        for round_no in range(args.rounds):
            order = ("without", "with") if round_no % 2 == 0 else ("with", "without")
            for name in order:
                server = servers[name]
                assert server.process is not None
                used = cpu_seconds(server.process.pid)
                rate = ingest(server, account, args.sessions, count, args.size)
                cpu[name].append((cpu_seconds(server.process.pid) - used) / count * 1e6)
                rates[name].append(rate)
                print(
                    f"round {round_no + 1}: {name:<7} {rate:7.1f} msg/s"
                    f"  {cpu[name][-1]:6.0f} us CPU/msg",
                    flush=True,
                )
        for name, server in servers.items():
            log = server.log_path.read_text(errors="replace")
            if "Traceback" in log:
                raise RuntimeError(f"{name}: the server logged a traceback: see {root}")
        junked = len(list((servers["with"].maildir(account) / ".Junk").glob("*/*")))
        if junked:
            print(f"note: {junked} load messages were filed into Junk", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    base = len(rates["without"]) * count / sum(count / r for r in rates["without"])
    checked = len(rates["with"]) * count / sum(count / r for r in rates["with"])
    paired = statistics.median(
        (w - c) / w * 100 for w, c in zip(rates["without"], rates["with"], strict=True)
    )
    cpu_base, cpu_checked = statistics.mean(cpu["without"]), statistics.mean(cpu["with"])
    print(
        f"P1 ingest, {args.sessions} sessions, {args.rounds} x 2 alternated runs of"
        f" {count} x {args.size} B:"
        f"\n  without checks {base:7.1f} msg/s  {cpu_base:6.0f} us CPU/msg"
        f"\n  with checks    {checked:7.1f} msg/s  {cpu_checked:6.0f} us CPU/msg"
        f"\n  cost           {(base - checked) / base * 100:+6.1f} % of throughput"
        f" (target: at most 15 %)"
        f"\n                 {paired:+6.1f} % median of the rounds' pairs"
        f"\n                 {(cpu_checked - cpu_base) / cpu_base * 100:+6.1f} % CPU per message"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
