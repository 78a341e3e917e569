#!/usr/bin/env python3
"""POP3: time to LIST and RETR 1,000 messages from a real estafeta.

Fills an INBOX through the store API, starts the server with a POP3
listener on loopback and times, with poplib: login, LIST, RETR of every
message (and the bytes moved).

    .venv/bin/python bench/pop3_retr.py [--messages 1000] [--size 8192]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
from pathlib import Path

from _harness import add_user, free_port, running
from _load import pop3_retr_all
from estafeta.message import summarize
from estafeta.store import Delivery, Store

USER = "pop@bench.test"
PASSWORD = secrets.token_urlsafe(18)  # estafeta refuses guessable passwords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=8192)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="estafeta-popbench-", dir="/var/tmp"))
    port = free_port()
    config = root / "estafeta.toml"
    config.write_text(
        f'hostname = "mx.bench.test"\ndata_dir = "{root / "data"}"\ndomains = ["bench.test"]\n'
        f'[listen]\npop3 = ["127.0.0.1:{port}"]\n[log]\nlevel = "warning"\n'
        "[auth]\nallow_plaintext = true\n"  # loopback benchmark only
    )
    add_user(config, USER, PASSWORD)
    body = (b"x" * 76 + b"\r\n") * max(1, args.size // 78)
    with Store(root / "data" / "mail", "mx.bench.test") as store:
        deliveries = []
        for n in range(args.messages):
            data = b"Subject: pop %d\r\n\r\n" % n + body
            deliveries.append(Delivery(USER, data, summarize(data)))
        for start in range(0, len(deliveries), 500):
            store.deliver_sync(deliveries[start : start + 500])
    try:
        with running(config, port, root / "log"):
            measure(args, port, len(body))
    finally:
        shutil.rmtree(root)


def measure(args: argparse.Namespace, port: int, body_size: int) -> None:
    result = pop3_retr_all(port, USER, PASSWORD)
    t_login, t_list, t_retr, moved = result.login, result.list, result.retr, result.octets
    listing = range(result.messages)
    print(f"estafeta POP3, {args.messages} messages of ~{body_size} bytes (loopback, poplib)")
    print(f"login: {t_login * 1000:.1f} ms")
    print(f"LIST: {t_list * 1000:.1f} ms ({len(listing)} entries)")
    print(
        f"RETR all: {t_retr:.2f} s ({args.messages / t_retr:.0f} msg/s, "
        f"{moved / t_retr / 1e6:.1f} MB/s)"
    )
    print(f"LIST + RETR: {t_list + t_retr:.2f} s")


if __name__ == "__main__":
    main()
