#!/usr/bin/env python3
"""Backups of a big store: first run, incremental run, full restore (issue 18).

Fills ``--accounts`` accounts with ``--messages`` messages in all (default
100,000 over 4 accounts) through the store API, with a mix like real mail:
70 % plain text of about 4 KiB, 25 % HTML of about 30 KiB, 5 % with a
base64 attachment of about 300 KiB (random octets: they do not compress);
about 25 KiB on average, 2.5 GB in all. Then, with no server running (a
quiet machine), it times `estafeta backup` as a user runs it:

  - the first `backup create` to a directory: seconds, MB/s (snapshot size
    over time), octets written;
  - `--new` (1,000) more messages, then `backup create` again: seconds,
    objects and octets uploaded;
  - `backup restore` of the newest snapshot onto an empty directory;
  - the first `backup create` to an S3 endpoint (moto's server mode on
    127.0.0.1, in memory; `--s3-messages` of the accounts' messages, default
    all) and the incremental run there.

Targets: the first backup to a directory at 50 MB/s or more; the
incremental run under 10 s.

    .venv/bin/python bench/backup.py [--messages 100000] [--accounts 4] [--keep]
    .venv/bin/python bench/backup.py --messages 10000 --no-s3     # a quick look
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _harness import add_user, estafeta, free_port
from estafeta import config as config_module
from estafeta.message import summarize
from estafeta.store import Delivery, Store

PASSWORD = "bench-" + os.urandom(9).hex()
WORDS = """meeting report budget project quarter review schedule team customer update
invoice delivery contract draft proposal agenda summary release feedback plan""".split()  # noqa: SIM905


def message(rng: random.Random, number: int, to: str) -> bytes:
    kind = rng.random()
    head = (
        f"From: Sender {number % 97} <s{number % 97}@remote.test>\r\nTo: <{to}>\r\n"
        f"Subject: {rng.choice(WORDS)} {number}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{number}.bench@remote.test>\r\nMIME-Version: 1.0\r\n"
    )

    def text(octets: int) -> str:
        lines = []
        while octets > 0:
            line = " ".join(rng.choice(WORDS) for _ in range(10))
            lines.append(line)
            octets -= len(line) + 2
        return "\r\n".join(lines) + "\r\n"

    if kind < 0.70:
        return (head + "Content-Type: text/plain\r\n\r\n" + text(4000)).encode()
    if kind < 0.95:
        body = "<html><body>" + text(30000).replace("\r\n", "<br>\r\n") + "</body></html>\r\n"
        return (head + "Content-Type: text/html\r\n\r\n" + body).encode()
    blob = base64.encodebytes(rng.randbytes(225_000)).decode().replace("\n", "\r\n")
    return (
        head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain\r\n\r\n" + text(1000) + "--b\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + blob + "--b--\r\n"
    ).encode()  # fmt: skip


def fill(config_path: Path, accounts: list[str], count: int, start: int, seed: int) -> int:
    """Deliver ``count`` messages round-robin; returns the octets stored."""
    config = config_module.load(config_path)
    rng = random.Random(seed)
    octets = 0
    with Store(config.mail_dir, config.hostname) as store:
        batch: list[Delivery] = []
        for number in range(start, start + count):
            to = accounts[number % len(accounts)]
            data = message(rng, number, to)
            octets += len(data)
            batch.append(Delivery(to, data, summarize(data)))
            if len(batch) == 256:
                store.deliver_sync(batch)
                batch = []
        if batch:
            store.deliver_sync(batch)
        store.settle()
    return octets


def run(config: Path, *args: str) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    result = subprocess.run(
        [*estafeta(config), "backup", *args], capture_output=True, text=True, check=False
    )
    took = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"estafeta backup {' '.join(args)} failed: {result.stderr}")
    out = result.stdout.strip().splitlines()
    data = json.loads(out[-1]) if out and out[-1].startswith("{") else {}
    return took, data


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def moto_server(root: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with (root / "moto.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
    try:
        for _ in range(600):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_config(root: Path, destination: str, extra: str = "") -> Path:
    path = root / f"estafeta-{abs(hash(destination)) % 10**6}.toml"
    path.write_text(
        f'hostname = "mx.bench.test"\ndata_dir = "{root / "data"}"\ndomains = ["bench.test"]\n'
        f'[listen]\nsmtp = ["127.0.0.1:{free_port()}"]\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"
        f'[backup]\nkey_file = "{root / "backup.key"}"\ndestination = "{destination}"\n' + extra
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 (moto) runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="estafeta-backup-bench-", dir="/var/tmp"))
    figures: dict[str, object] = {"messages": args.messages, "accounts": args.accounts}
    try:
        config = write_config(root, str(root / "repo"))
        accounts = [f"user{n}@bench.test" for n in range(args.accounts)]
        for address in accounts:
            add_user(config, address, PASSWORD)
        started = time.monotonic()
        octets = fill(config, accounts, args.messages, 0, seed=18)
        print(f"filled {args.messages} messages, {octets / 1e6:.0f} MB "
              f"in {time.monotonic() - started:.0f} s")  # fmt: skip
        subprocess.run([*estafeta(config), "backup", "key"], check=True, capture_output=True)

        subprocess.run(["sync"], check=True)
        took, first = run(config, "create", "--json", "--no-progress")
        size = int(str(first["octets"]))
        figures["first_dir_s"] = round(took, 2)
        figures["first_dir_MBps"] = round(size / 1e6 / took, 1)
        figures["snapshot_MB"] = round(size / 1e6, 1)
        figures["repository_MB"] = round(du(root / "repo") / 1e6, 1)
        stored = du(root / "repo") / 1e6
        print(f"first backup to a directory: {took:.1f} s, {size / 1e6 / took:.1f} MB/s "
              f"({size / 1e6:.0f} MB in the snapshot, {stored:.0f} MB stored)")  # fmt: skip

        fill(config, accounts, args.new, args.messages, seed=19)
        took, second = run(config, "create", "--json", "--no-progress")
        figures["incremental_dir_s"] = round(took, 2)
        figures["incremental_objects"] = second["new_objects"]
        figures["incremental_uploaded_MB"] = round(int(str(second["uploaded_octets"])) / 1e6, 1)
        print(f"incremental run after {args.new} new messages: {took:.1f} s, "
              f"{second['new_objects']} objects, "
              f"{int(str(second['uploaded_octets'])) / 1e6:.1f} MB uploaded, "
              f"{second['cached_files']} files from the cache")  # fmt: skip

        target = root / "restored"
        took, _ = run(config, "restore", "latest", "--to", str(target))
        figures["restore_s"] = round(took, 2)
        figures["restore_MBps"] = round(int(str(second["octets"])) / 1e6 / took, 1)
        print(f"full restore: {took:.1f} s, {int(str(second['octets'])) / 1e6 / took:.1f} MB/s")
        shutil.rmtree(target)

        if not args.no_s3:
            import boto3

            with moto_server(root) as url:
                boto3.client(
                    "s3", endpoint_url=url, region_name="us-east-1",
                    aws_access_key_id="bench", aws_secret_access_key="bench",  # noqa: S106
                ).create_bucket(Bucket="bench")  # fmt: skip
                creds = root / "s3.ini"
                creds.write_text("access_key_id = bench\nsecret_access_key = bench\n")
                creds.chmod(0o600)
                s3_config = write_config(
                    root,
                    "s3://bench/mx",
                    f's3_endpoint = "{url}"\ns3_region = "us-east-1"\ns3_path_style = true\n'
                    f's3_credentials_file = "{creds}"\n',
                )
                (root / "data" / "backup" / "cache.db").unlink(missing_ok=True)
                took, first_s3 = run(s3_config, "create", "--json", "--no-progress")
                size = int(str(first_s3["octets"]))
                figures["first_s3_s"] = round(took, 2)
                figures["first_s3_MBps"] = round(size / 1e6 / took, 1)
                print(f"first backup to S3 (moto): {took:.1f} s, {size / 1e6 / took:.1f} MB/s")
                fill(config, accounts, args.new, args.messages + args.new, seed=20)
                took, second_s3 = run(s3_config, "create", "--json", "--no-progress")
                figures["incremental_s3_s"] = round(took, 2)
                print(f"incremental run to S3 after {args.new} new messages: {took:.1f} s, "
                      f"{second_s3['new_objects']} objects")  # fmt: skip
        ok_first = float(str(figures["first_dir_MBps"])) >= 50
        ok_incr = float(str(figures["incremental_dir_s"])) < 10
        print(json.dumps(figures))
        print(f"targets: first backup >= 50 MB/s: {'met' if ok_first else 'NOT met'}; "
              f"incremental < 10 s: {'met' if ok_incr else 'NOT met'}")  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
