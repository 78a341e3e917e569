"""Copy estafeta's SQLite databases before an upgrade (the role runs this).

Usage: python3 -c "$(cat snapshot_databases.py)" DATA_DIR DEST

Runs on the mail host as the estafeta user, with Debian's python3 (only the
standard library), while the server keeps running: every SQLite database
under DATA_DIR (accounts.db, each account's index.db, queue.db,
greylist.db, the junk-filter statistics, ...) is copied into DEST under the
same relative path with SQLite's online backup API, one read transaction
per database, so each copy is that database at one instant even in WAL
mode (https://www.sqlite.org/backup.html). Message files are not copied:
they are never modified, and the indexes are what a schema migration
rewrites. Left out: DEST itself, the directory DEST is in (older
snapshots), and data_dir/backup (the backup's own cache).

Crash safety: the copies go into DEST.partial, which is renamed to DEST
once all are written and flushed; a DEST that exists is whole. An older
DEST of the same name is replaced only then.

Prints one JSON object: {"dest", "databases", "octets"}.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(16) == SQLITE_HEADER
    except OSError:
        return False


def databases(data_dir: Path, skip: set[Path]) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if Path(root, d) not in skip)
        for name in sorted(names):
            path = Path(root, name)
            if name.endswith(".db") and path.is_file() and is_sqlite(path):
                found.append(path)
    return found


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step: one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.commit()
        finally:
            dst.close()
    finally:
        src.close()
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: snapshot_databases.py DATA_DIR DEST", file=sys.stderr)
        return 2
    data_dir, dest = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    skip = {dest.parent, data_dir / "backup"}
    octets = 0
    found = databases(data_dir, skip)
    for source in found:
        target = partial / source.relative_to(data_dir)
        try:
            copy(source, target)
        except sqlite3.Error as exc:
            print(f"{source}: cannot copy: {exc}", file=sys.stderr)
            return 1
        octets += target.stat().st_size
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    directory = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    print(json.dumps({"dest": str(dest), "databases": len(found), "octets": octets}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
