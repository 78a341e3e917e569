#!/usr/bin/env python3
"""What Sieve costs on the MX: P1 durable ingest with and without a 50-rule script.

Starts one real estafeta (as bench/compare.py's P1 does: SMTP on loopback,
no DNS checks), with two accounts: ``plain@`` has no script, ``rules@`` has
an active script of 50 rules (header, address, envelope and size tests with
:contains, :is, :matches and :regex, none of which match the load, so every
message runs all 50 and ends in the implicit keep — the most a script of
that length costs). The P1 load (20 pipelined SMTP sessions, one message
per transaction, 4 KiB messages) goes to each account in turn, alternating
over the rounds; a run ends when every message is visible in the Maildir.

    .venv/bin/python bench/sieve.py [--messages 1000] [--rounds 16] [--sessions 20]

Prints msg/s for both and the script's cost in per cent of throughput
(issue 15's target: at most 10 %), over many short runs alternated so that
the slow and fast spells of a shared machine fall on both kinds alike; also
the median of each round's pair, and the server's CPU time per message
(user + system, from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import free_port
from _load import ingest_message, smtp_ingest
from _servers import DOMAIN, Estafeta


def fifty_rules() -> str:
    """50 rules of the kinds users write, none matching the load."""
    rules = ['require ["fileinto", "envelope", "regex", "imap4flags", "relational"];']
    for n in range(50):
        kind = n % 5
        if kind == 0:
            test = f'header :contains "List-Id" "list{n}.lists.example.org"'
        elif kind == 1:
            test = f'address :is :domain "from" "sender{n}.example.org"'
        elif kind == 2:
            test = f'envelope :matches "from" "*@bounce{n}.example.org"'
        elif kind == 3:
            test = f'header :regex "subject" "^\\\\[ticket-{n}\\\\] [0-9]+$"'
        else:
            test = f'allof (size :over 10M, header :is "X-Priority" "{n}")'
        rules.append(f'if {test} {{\n  fileinto :flags "\\\\Flagged" "Rules/r{n}";\n  stop;\n}}')
    return "\n".join(rules) + "\n"


def install(server: Estafeta, address: str, script: str) -> None:
    path = server.root / "rules.sieve"
    path.write_text(script)
    subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", str(server.config_path), "sieve", "put",
         address, "rules", str(path), "--activate"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (proc(5) stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest(server: Estafeta, account: str, sessions: int, count: int, size: int) -> float:
    """msg/s from the first MAIL to the last message visible in the Maildir."""
    before = server.count(account)
    messages = [ingest_message(i, account, size) for i in range(count)]
    result = asyncio.run(smtp_ingest(server.smtp_port, sessions, messages, account))
    deadline = time.perf_counter() + 600
    while server.count(account) < before + count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{account}: {server.count(account) - before} of {count} visible")
        time.sleep(0.005)
    return count / (time.perf_counter() - result.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    count = args.messages - args.messages % args.sessions
    root = Path(tempfile.mkdtemp(prefix="estafeta-bench-sieve-", dir="/var/tmp"))
    server = Estafeta(root, free_port(), free_port(), free_port())
    plain, rules = f"plain@{DOMAIN}", f"rules@{DOMAIN}"
    try:
        server.write_config()
        server.add_users({plain: secrets.token_urlsafe(18), rules: secrets.token_urlsafe(18)})
        install(server, rules, fifty_rules())
        server.start()
        ingest(server, plain, args.sessions, args.sessions * 5, args.size)  # warm-up
        ingest(server, rules, args.sessions, args.sessions * 5, args.size)
        rates: dict[str, list[float]] = {plain: [], rules: []}
        cpu: dict[str, list[float]] = {plain: [], rules: []}
        assert server.process is not None
        pid = server.process.pid
        for round_no in range(args.rounds):
            order = (plain, rules) if round_no % 2 == 0 else (rules, plain)
            for account in order:
                used = cpu_seconds(pid)
                rate = ingest(server, account, args.sessions, count, args.size)
                cpu[account].append((cpu_seconds(pid) - used) / count * 1e6)
                rates[account].append(rate)
                label = "no script" if account == plain else "50 rules"
                print(
                    f"round {round_no + 1}: {label:<9} {rate:7.1f} msg/s"
                    f"  {cpu[account][-1]:6.0f} us CPU/msg",
                    flush=True,
                )
        log = server.log_path.read_text(errors="replace")
        if "sieve_error" in log or "Traceback" in log:
            raise RuntimeError("the server logged Sieve errors or a traceback: see " + str(root))
    finally:
        server.stop()
    # All runs of a kind together (messages over the time they took): short
    # runs, alternated, so both kinds see the same slow and fast spells of
    # a shared machine.
    base = len(rates[plain]) * count / sum(count / r for r in rates[plain])
    with_rules = len(rates[rules]) * count / sum(count / r for r in rates[rules])
    paired = statistics.median(
        (p - r) / p * 100 for p, r in zip(rates[plain], rates[rules], strict=True)
    )
    cpu_base, cpu_rules = statistics.mean(cpu[plain]), statistics.mean(cpu[rules])
    print(
        f"P1 ingest, {args.sessions} sessions, {args.rounds} x 2 alternated runs of"
        f" {count} x {args.size} B:"
        f"\n  no script  {base:7.1f} msg/s  {cpu_base:6.0f} us CPU/msg"
        f"\n  50 rules   {with_rules:7.1f} msg/s  {cpu_rules:6.0f} us CPU/msg"
        f"\n  cost       {(base - with_rules) / base * 100:+6.1f} % of throughput"
        f" (target: at most 10 %)"
        f"\n             {paired:+6.1f} % median of the rounds' pairs"
        f"\n             {(cpu_rules - cpu_base) / cpu_base * 100:+6.1f} % CPU per message"
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
