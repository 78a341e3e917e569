#!/usr/bin/env python3
"""What one synchronous flush costs on this machine (issue 17, "Ingest").

Each figure is the median (and p90) wall time of one operation, repeated,
in a temporary directory on the file system the store would use:

* ``file fsync``: create a 4 KiB file, write it, fsync it (what
  ``maildir.write_tmp`` does for every message today);
* ``file write, no fsync``: the same without the fsync (the page cache only);
* ``rename + dir fsync``: rename a file into another directory and fsync
  that directory (``maildir.publish`` + ``fsync_dir``);
* ``sqlite commit FULL``: one row plus a 4 KiB blob committed in WAL mode
  with ``synchronous=FULL`` (one fsync of the -wal file);
* ``sqlite commit NORMAL``: the same with ``synchronous=NORMAL`` (no fsync
  at commit: the reference for what the flush costs);
* ``N files fsync'd in parallel`` / ``syncfs after N files``: making N files
  (and their directory) durable together, the way a deferred flush does.

    .venv/bin/python bench/flush_costs.py [--repeat 200] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import ctypes.util
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DATA = os.urandom(4096)


def timed(
    repeat: int, setup: Callable[[int], object], op: Callable[[int, object], None]
) -> list[float]:
    times = []
    for n in range(repeat):
        state = setup(n)
        t0 = time.perf_counter()
        op(n, state)
        times.append(time.perf_counter() - t0)
    return times


def write(path: Path, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, DATA)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path | str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def report(name: str, times: list[float], per: int = 1) -> None:
    times = sorted(times)
    p50 = statistics.median(times) * 1000
    p90 = times[int(len(times) * 0.9) - 1] * 1000
    extra = f"   ({p50 / per:.3f} ms per file)" if per > 1 else ""
    print(f"{name:<34} {p50:>8.3f} {p90:>8.3f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="estafeta-flush-", dir=args.dir))
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pool = concurrent.futures.ThreadPoolExecutor(8)
    try:
        tmp, new = root / "tmp", root / "new"
        tmp.mkdir()
        new.mkdir()
        r = args.repeat
        print(f"{r} repetitions in {root}; 4096-byte payloads")
        print(f"{'operation':<34} {'p50 ms':>8} {'p90 ms':>8}")
        report(
            "file write, no fsync",
            timed(r, lambda n: tmp / f"w{n}", lambda n, p: write(p, sync=False)),  # type: ignore[arg-type]
        )
        report(
            "file write + fsync",
            timed(r, lambda n: tmp / f"s{n}", lambda n, p: write(p, sync=True)),  # type: ignore[arg-type]
        )

        def rename_sync(n: int, path: object) -> None:
            os.rename(path, new / f"s{n}")  # type: ignore[arg-type]
            fsync_path(new, directory=True)

        report("rename + dir fsync", timed(r, lambda n: tmp / f"s{n}", rename_sync))
        report(
            "dir fsync (nothing changed)",
            timed(r, lambda n: None, lambda n, _: fsync_path(new, directory=True)),
        )
        for mode in ("FULL", "NORMAL"):
            conn = sqlite3.connect(root / f"index-{mode}.db", isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, data BLOB)")

            def commit(n: int, _: object, conn: sqlite3.Connection = conn) -> None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (name, data) VALUES (?, ?)", (f"new/{n}", DATA))
                conn.execute("COMMIT")

            report(f"sqlite commit {mode} (row+4K)", timed(r, lambda n: None, commit))
            conn.close()

        for count in (1, 8, 32, 128):
            batch = max(5, r // max(1, count // 4))

            def make(n: int, count: int = count) -> list[Path]:
                paths = [tmp / f"b{count}.{n}.{i}" for i in range(count)]
                for p in paths:
                    write(p, sync=False)
                return paths

            def parallel(n: int, paths: object) -> None:
                list(pool.map(fsync_path, paths))  # type: ignore[arg-type]
                for p in paths:  # type: ignore[attr-defined]
                    os.rename(p, new / p.name)
                fsync_path(new, directory=True)

            report(f"{count:>3} files fsync'd ||, mv, dir", timed(batch, make, parallel), count)

            def syncfs(n: int, paths: object) -> None:
                for p in paths:  # type: ignore[attr-defined]
                    os.rename(p, new / p.name)
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if libc.syncfs(fd) != 0:
                        raise OSError(ctypes.get_errno(), "syncfs")
                finally:
                    os.close(fd)

            report(f"{count:>3} files, mv, one syncfs", timed(batch, make, syncfs), count)
    finally:
        pool.shutdown()
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
