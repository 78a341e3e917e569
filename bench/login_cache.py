#!/usr/bin/env python3
"""What the login cache saves (issue 17): repeat logins with and without it.

1. In process: ``Accounts.authenticate`` with the production argon2id
   parameters (t=3, m=64 MiB, p=4), N logins of one account with the same
   password, the cache off and on.
2. End to end: a real estafeta (production argon2 parameters), N IMAP
   connections one after the other, each LOGIN + LOGOUT over loopback
   (plaintext), with ``[auth] login_cache_lifetime = 0`` and ``"5m"``.

Prints the median and mean time per login. Not a test.

    .venv/bin/python bench/login_cache.py [--logins 50]
"""

from __future__ import annotations

import argparse
import imaplib
import statistics
import tempfile
import time
from pathlib import Path

import argon2

from _harness import add_user, free_port, running
from estafeta.auth import Accounts
from estafeta.auth.logincache import LoginCache

PASSWORD = "correct horse battery staple"
ADDRESS = "alice@example.test"


def summary(name: str, times: list[float]) -> None:
    print(
        f"{name:<34} median {statistics.median(times) * 1000:8.2f} ms"
        f"   mean {statistics.fmean(times) * 1000:8.2f} ms   (n={len(times)})"
    )


def in_process(logins: int, root: Path) -> None:
    hasher = argon2.PasswordHasher()  # the defaults estafeta uses: t=3, m=64 MiB, p=4
    for label, cache in (("authenticate, no cache", None), ("authenticate, cache", LoginCache())):
        path = root / f"accounts-{'off' if cache is None else 'on'}.db"
        with Accounts(path, ["example.test"], hasher=hasher, login_cache=cache) as db:
            db.add_user(ADDRESS, PASSWORD)
            assert db.authenticate(ADDRESS, PASSWORD, "imap") == ADDRESS  # first: argon2
            times = []
            for _ in range(logins):
                start = time.perf_counter()
                assert db.authenticate(ADDRESS, PASSWORD, "imap") == ADDRESS
                times.append(time.perf_counter() - start)
        summary(label, times)


def imap(logins: int, root: Path) -> None:
    for lifetime in ("0", '"5m"'):
        directory = root / f"imap-{lifetime.strip(chr(34))}"
        directory.mkdir()
        smtp_port, imap_port = free_port(), free_port()
        config = directory / "estafeta.toml"
        config.write_text(
            'hostname = "mx.example.test"\n'
            f'data_dir = "{directory / "data"}"\n'
            'domains = ["example.test"]\n'
            f'[listen]\nsmtp = ["127.0.0.1:{smtp_port}"]\nimap = ["127.0.0.1:{imap_port}"]\n'
            "[auth]\nallow_plaintext = true\n"
            f"login_cache_lifetime = {lifetime}\n"
            "[greylist]\nenabled = false\n"
        )
        add_user(config, ADDRESS, PASSWORD)
        with running(config, imap_port, directory / "estafeta.log"):
            times = []
            for n in range(logins + 1):
                start = time.perf_counter()
                client = imaplib.IMAP4("127.0.0.1", imap_port, timeout=60)
                client.login(ADDRESS, PASSWORD)
                client.logout()
                if n:  # the first login fills the cache
                    times.append(time.perf_counter() - start)
        summary(f"IMAP connect+LOGIN, cache {'off' if lifetime == '0' else 'on'}", times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        in_process(args.logins, Path(tmp))
        imap(args.logins, Path(tmp))


if __name__ == "__main__":
    main()
