#!/usr/bin/env python3
"""CREATE of many mailboxes in one account, and what it does to the others.

Starts a real estafeta, creates N mailboxes in alice's account over IMAP,
one after the other, while a second client delivers to bob over SMTP
without pause. Prints the time per 100 CREATEs (flat if a CREATE costs the
same whatever the number of mailboxes, growing if it does not), the total,
bob's delivery latency meanwhile, and a LIST "*" of the result (issue 14
item 8: 5,000 CREATEs took 429 s and slowed bob to 2 s a delivery).

    .venv/bin/python bench/mailbox_create.py [--mailboxes 1000]

Against another estafeta (e.g. an older checkout), put its source first:
``PYTHONPATH=/path/to/server/src``. [limits] max_mailboxes is raised to fit
N when that estafeta knows the key.
"""

from __future__ import annotations

import argparse
import imaplib
import smtplib
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _harness import add_user, free_port, running

PASSWORD = "correct horse battery staple"
DEFAULTS = 6  # INBOX, Drafts, Sent, Archive, Junk, Trash


def knows_max_mailboxes() -> bool:
    from estafeta.config import Limits

    return hasattr(Limits(), "max_mailboxes")


def write_config(root: Path, smtp: int, imap: int, mailboxes: int) -> Path:
    config = root / "estafeta.toml"
    limits = f"max_mailboxes = {mailboxes + DEFAULTS}\n" if knows_max_mailboxes() else ""
    config.write_text(
        'hostname = "mx.example.test"\n'
        f'data_dir = "{root / "data"}"\n'
        'domains = ["example.test"]\n'
        f'[listen]\nsmtp = ["127.0.0.1:{smtp}"]\nimap = ["127.0.0.1:{imap}"]\n'
        f"[limits]\n{limits}"
        '[log]\nlevel = "warning"\n'
        "[auth]\nallow_plaintext = true\nargon2_time_cost = 1\n"
        "argon2_memory_cost = 1024\nargon2_parallelism = 1\n"
        "[inbound]\nauthenticate = false\n"
    )
    return config


def deliver_forever(port: int, stop: threading.Event, latencies: list[float]) -> None:
    message = "Subject: probe\r\n\r\nprobe\r\n"
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        while not stop.is_set():
            started = time.monotonic()
            smtp.sendmail("probe@elsewhere.test", ["bob@example.test"], message)
            latencies.append(time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        smtp_port, imap_port = free_port(), free_port()
        config = write_config(root, smtp_port, imap_port, args.mailboxes)
        for user in ("alice@example.test", "bob@example.test"):
            add_user(config, user, PASSWORD)
        with running(config, smtp_port, root / "estafeta.log"):
            time.sleep(0.5)  # the IMAP listener opens right after SMTP
            imap = imaplib.IMAP4("127.0.0.1", imap_port)
            imap.login("alice@example.test", PASSWORD)
            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=deliver_forever, args=(smtp_port, stop, latencies))
            prober.start()
            per_hundred: list[float] = []
            started = lap = time.monotonic()
            for n in range(args.mailboxes):
                status, reply = imap.create(f"Folder{n:05d}")
                if status != "OK":
                    raise SystemExit(f"CREATE {n}: {status} {reply}")
                if (n + 1) % 100 == 0:
                    now = time.monotonic()
                    per_hundred.append(now - lap)
                    lap = now
            total = time.monotonic() - started
            stop.set()
            prober.join()
            listed = time.monotonic()
            status, lines = imap.list('""', "*")
            list_seconds = time.monotonic() - listed
            imap.logout()
    print(f"{args.mailboxes} CREATEs: {total:.1f} s ({1000 * total / args.mailboxes:.1f} ms each)")
    print("seconds per 100 CREATEs: " + " ".join(f"{s:.2f}" for s in per_hundred))
    if latencies:
        ordered = sorted(latencies)
        print(
            f"bob's deliveries meanwhile: {len(ordered)}, median"
            f" {1000 * statistics.median(ordered):.0f} ms, p95"
            f" {1000 * ordered[int(0.95 * (len(ordered) - 1))]:.0f} ms,"
            f" max {1000 * ordered[-1]:.0f} ms"
        )
    print(f'LIST "" "*": {len(lines)} mailboxes in {1000 * list_seconds:.0f} ms ({status})')


if __name__ == "__main__":
    main()
