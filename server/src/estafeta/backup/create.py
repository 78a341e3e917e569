"""``estafeta backup create``: store a snapshot of data_dir in a repository.

A snapshot is a manifest (``snapshots/NAME``, sealed with the server's
subkey) naming, per scope, the objects of its *tree*: a JSON list of
``[name, kind, mode, size, mtime_ns, [object, ...]]``, one per directory
("d") and file ("f") under data_dir, the file's content cut into CHUNK
pieces, each an object of that scope (``objects``: named by its keyed hash,
so content stored by an earlier run is not stored again).

Order (see ``estafeta.backup.repository`` for why a killed run lists
nothing): lock; keyring with a subkey for every scope; databases copied and
files read (``sources``); packs; index; manifest; then the local cache and
the status file ``data_dir/backup/status.json`` that /metrics reports.

The cache (``data_dir/backup/cache.db``) remembers, per repository and
scope, the objects of each immutable file (message files) by its size,
modification time and inode, so a later run does not read mail it has
stored before. It names scopes and files by keyed hashes only: nothing in
it mentions an address. A cached entry is used only if the repository's
index still holds its objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import sqlite3
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from estafeta import __version__
from estafeta.backup import objects
from estafeta.backup.objects import BackupError
from estafeta.backup.repository import FORMAT, SERVER, Packer, Repository, snapshot_name
from estafeta.backup.sources import OWN_DIR, Planner, Scope, Source, forget_vanished
from estafeta.config import Config

log = logging.getLogger("estafeta.backup")

CHUNK = 1024 * 1024
BATCH_FILES = 64  # files read and sealed per job of the worker threads
BATCH_OCTETS = 8 * 1024 * 1024

Entry = list[object]  # [name, kind, mode, size, mtime_ns, [object ids]]


@dataclass
class Report:
    snapshot: str
    files: int = 0
    octets: int = 0  # of the files in the snapshot
    read_octets: int = 0  # read this run (not taken from the cache)
    cached_files: int = 0  # message files whose objects the cache knew
    new_objects: int = 0
    uploaded_octets: int = 0  # packs written, after compression and sealing
    dropped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def own_dir(config: Config) -> Path:
    return config.data_dir / OWN_DIR


# -- the cache ------------------------------------------------------------------------


def cache_token(subkey: bytes) -> str:
    return hmac.new(subkey, b"estafeta backup cache", hashlib.sha256).hexdigest()[:32]


def _name_key(token: str, name: str) -> str:
    return hashlib.blake2b(name.encode("utf-8", "surrogateescape"), key=token.encode()).hexdigest()[
        :32
    ]


class Cache:
    """Objects of immutable files from earlier runs (see the module's text)."""

    def __init__(self, path: Path, repository: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conn = sqlite3.connect(path, check_same_thread=False)
        self.conn.execute("PRAGMA secure_delete = ON")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS files (repository TEXT NOT NULL, scope TEXT NOT NULL,"
            " name TEXT NOT NULL, size INTEGER NOT NULL, mtime INTEGER NOT NULL,"
            " inode INTEGER NOT NULL, objects TEXT NOT NULL,"
            " PRIMARY KEY (repository, scope, name)) WITHOUT ROWID"
        )
        self.repository = repository
        self._rows: list[tuple[str, str, str, int, int, int, str]] = []
        self._gone: list[tuple[str, str, str]] = []

    def load(self, token: str) -> dict[str, tuple[int, int, int, list[str]]]:
        return {
            name: (size, mtime, inode, objects_text.split(","))
            for name, size, mtime, inode, objects_text in self.conn.execute(
                "SELECT name, size, mtime, inode, objects FROM files"
                " WHERE repository = ? AND scope = ?",
                (self.repository, token),
            )
        }

    def remember(self, token: str, name: str, info: os.stat_result, ids: list[str]) -> None:
        self._rows.append(
            (
                self.repository,
                token,
                name,
                info.st_size,
                info.st_mtime_ns,
                info.st_ino,
                ",".join(ids),
            )
        )

    def forget(self, token: str, name: str) -> None:
        self._gone.append((self.repository, token, name))

    def commit(self) -> None:
        with self.conn:
            self.conn.executemany(
                "DELETE FROM files WHERE repository = ? AND scope = ? AND name = ?", self._gone
            )
            self.conn.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", self._rows)
        self._rows.clear()
        self._gone.clear()

    def forget_scope(self, token: str) -> int:
        with self.conn:
            count = self.conn.execute("DELETE FROM files WHERE scope = ?", (token,)).rowcount
        return count

    def vacuum(self) -> None:
        """Rewrite the file and truncate its journal: no freed page keeps a
        forgotten row (``estafeta user erase``)."""
        self.conn.execute("VACUUM")

    def close(self) -> None:
        self.conn.close()


# -- progress -------------------------------------------------------------------------


class Progress:
    """A line redrawn on a terminal (stderr), else one log line per phase."""

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self.read = 0
        self.terminal = sys.stderr.isatty() if enabled is None else enabled
        self._shown = 0.0
        self._lock = threading.Lock()

    def advance(self, files: int, octets: int) -> None:
        with self._lock:
            self.done += files
            self.read += octets
            now = time.monotonic()
            if not self.terminal or now - self._shown < 0.2:
                return
            self._shown = now
        percent = 100 * self.done // max(1, self.total)
        sys.stderr.write(
            f"\r  {self.done}/{self.total} files ({percent}%), {self.read / 1e6:.1f} MB read   "
        )
        sys.stderr.flush()

    def end(self) -> None:
        if self.terminal:
            sys.stderr.write("\n")


# -- reading and sealing ----------------------------------------------------------------


def _store(subkey: bytes, packer: Packer, data: bytes) -> list[str]:
    ids = []
    for start in range(0, max(1, len(data)), CHUNK):
        piece = data[start : start + CHUNK]
        name = objects.object_id(subkey, piece)
        if not packer.known(name):
            packer.add(name, objects.seal_named(subkey, name, piece))
        ids.append(name)
    return ids


def _read_file(subkey: bytes, packer: Packer, path: Path) -> tuple[list[str], int]:
    """The objects of a file, read CHUNK at a time, and its length."""
    ids: list[str] = []
    length = 0
    try:
        with path.open("rb") as handle:
            while True:
                piece = handle.read(CHUNK)
                if not piece and ids:
                    break
                ids += _store(subkey, packer, piece)
                length += len(piece)
                if len(piece) < CHUNK:
                    break
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc.strerror}") from None
    return ids, length


class Snapshotter:
    def __init__(
        self,
        config: Config,
        repository: Repository,
        workers: int = 0,
        uploads: int = 4,
        progress: bool | None = None,
    ) -> None:
        self.config = config
        self.repository = repository
        self.workers = workers or min(8, os.cpu_count() or 2)
        self.uploads = uploads
        self.progress_enabled = progress

    def run(self) -> Report:
        started = time.monotonic()
        work = own_dir(self.config) / f"work-{os.getpid()}"
        _clean_work(own_dir(self.config))
        work.mkdir(parents=True, mode=0o700)
        try:
            with self.repository.lock("create"):
                return self._run(work, started)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, work: Path, started: float) -> Report:
        repository = self.repository
        repository.keyring.merge(repository._read_keyring())
        scopes = Planner(self.config, work).plan()
        total = sum(len(scope.sources) for scope in scopes)
        log.info(
            "backup: %d scopes, %d files and folders to look at (%.1f s)",
            len(scopes),
            total,
            time.monotonic() - started,
        )
        for scope in scopes:
            repository.keyring.subkey(scope.name)
        # Subkeys are stored before any object sealed with them.
        repository.save_keyring()
        repository.index()
        report = Report(snapshot_name())
        progress = Progress(total, self.progress_enabled)
        cache = Cache(own_dir(self.config) / "cache.db", repository.id)
        packer = Packer(repository, self.uploads)
        manifest_scopes: dict[str, dict[str, object]] = {}
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="backup-read") as pool:
                for scope in scopes:
                    manifest_scopes[scope.name] = self._scope(scope, cache, packer, pool, progress)
                    report.dropped += scope.dropped
            progress.end()
            log.info(
                "backup: files read and sealed: %.1f MB read, %d new objects (%.1f s)",
                progress.read / 1e6,
                len(packer.added),
                time.monotonic() - started,
            )
            packer.finish()
            log.info(
                "backup: %d packs and their index written, %.1f MB (%.1f s)",
                len(packer.packs),
                packer.uploaded_octets / 1e6,
                time.monotonic() - started,
            )
        except BaseException:
            packer.abort()
            cache.close()
            raise
        report.files = sum(int(str(s["files"])) for s in manifest_scopes.values())
        report.octets = sum(int(str(s["octets"])) for s in manifest_scopes.values())
        report.read_octets = progress.read
        report.cached_files = sum(int(str(s["cached"])) for s in manifest_scopes.values())
        report.new_objects = len(packer.added)
        report.uploaded_octets = packer.uploaded_octets
        report.seconds = round(time.monotonic() - started, 3)
        repository.put_json(
            f"snapshots/{report.snapshot}",
            {
                "format": FORMAT,
                "time": time.time(),
                "host": socket.gethostname(),
                "hostname": self.config.hostname,
                "estafeta": __version__,
                "scopes": manifest_scopes,
                "report": report.as_dict(),
            },
        )
        try:
            cache.commit()
        finally:
            cache.close()
        write_status(self.config, report, repository.destination.describe())
        log.info(
            "backup: snapshot %s: %d files, %.1f MB; %.1f MB read, %d new objects, "
            "%.1f MB uploaded, in %.1f s",
            report.snapshot,
            report.files,
            report.octets / 1e6,
            report.read_octets / 1e6,
            report.new_objects,
            report.uploaded_octets / 1e6,
            report.seconds,
        )
        return report

    def _scope(
        self,
        scope: Scope,
        cache: Cache,
        packer: Packer,
        pool: ThreadPoolExecutor,
        progress: Progress,
    ) -> dict[str, object]:
        subkey = self.repository.keyring.existing(scope.name)
        token = cache_token(subkey)
        cached = cache.load(token)
        entries: list[Entry | None] = [None] * len(scope.sources)
        jobs: list[Future[None]] = []
        batch: list[tuple[int, Source, os.stat_result]] = []
        batch_octets = 0
        seen: set[str] = set()
        hits = 0
        in_flight = threading.Semaphore(2 * self.workers)

        def flush() -> None:
            nonlocal batch, batch_octets
            if batch:
                in_flight.acquire()
                job = pool.submit(
                    self._read_batch, subkey, token, batch, entries, cache, packer, progress,
                    vanished,
                )  # fmt: skip
                job.add_done_callback(lambda _f: in_flight.release())
                jobs.append(job)
                _raise_done(jobs)
            batch, batch_octets = [], 0

        vanished: list[Source] = []
        # Files first, then the database copies: a message file that vanished
        # before it was read is taken out of its copy (sources.forget_vanished)
        # before the copy is stored.
        files_first = sorted(range(len(scope.sources)), key=lambda n: scope.sources[n].kind == "db")
        for position, number in enumerate(files_first):
            source = scope.sources[number]
            if source.kind == "db" and (
                position == 0 or scope.sources[files_first[position - 1]].kind != "db"
            ):
                flush()
                for job in jobs:
                    job.result()
                scope.dropped += forget_vanished(vanished)
            try:
                info = os.stat(source.path, follow_symlinks=False)
            except FileNotFoundError:
                vanished.append(source)  # removed since it was planned (a folder deleted)
                continue
            except OSError as exc:
                raise BackupError(f"{source.path}: cannot look at: {exc.strerror}") from None
            mode = source.mode if source.mode is not None else info.st_mode & 0o7777
            if source.kind == "d":
                entries[number] = [source.name, "d", mode, 0, info.st_mtime_ns, []]
                progress.advance(1, 0)
                continue
            if source.cacheable:
                key = _name_key(token, source.name)
                seen.add(key)
                hit = cached.get(key)
                if (
                    hit is not None
                    and hit[:3] == (info.st_size, info.st_mtime_ns, info.st_ino)
                    and all(packer.known(name) for name in hit[3])
                ):
                    entries[number] = [
                        source.name, "f", mode, info.st_size, info.st_mtime_ns, hit[3]
                    ]  # fmt: skip
                    progress.advance(1, 0)
                    hits += 1
                    continue
            batch.append((number, source, info))
            batch_octets += info.st_size
            if len(batch) >= BATCH_FILES or batch_octets >= BATCH_OCTETS:
                flush()
        flush()
        for job in jobs:
            job.result()
        for key in cached.keys() - seen:
            cache.forget(token, key)
        done = [entry for entry in entries if entry is not None]
        tree = json.dumps(done, separators=(",", ":")).encode()
        return {
            "tree": _store(subkey, packer, tree),
            "files": sum(1 for entry in done if entry[1] == "f"),
            "octets": sum(int(str(entry[3])) for entry in done),
            "dropped": scope.dropped,
            "cached": hits,
        }

    def _read_batch(
        self,
        subkey: bytes,
        token: str,
        batch: list[tuple[int, Source, os.stat_result]],
        entries: list[Entry | None],
        cache: Cache,
        packer: Packer,
        progress: Progress,
        vanished: list[Source],
    ) -> None:
        octets = 0
        for number, source, info in batch:
            try:
                ids, length = _read_file(subkey, packer, source.path)
            except BackupError:
                if not source.path.exists():
                    vanished.append(source)  # removed since it was planned
                    continue
                raise
            octets += length
            mode = source.mode if source.mode is not None else info.st_mode & 0o7777
            entries[number] = [source.name, "f", mode, length, info.st_mtime_ns, ids]
            if source.cacheable and length == info.st_size:
                cache.remember(token, _name_key(token, source.name), info, ids)
        progress.advance(len(batch), octets)


def _raise_done(jobs: list[Future[None]]) -> None:
    for job in [j for j in jobs if j.done()]:
        job.result()


def _clean_work(own: Path) -> None:
    """Remove the work folders of runs that were killed."""
    if not own.is_dir():
        return
    for path in own.glob("work-*"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(path.name.split("-", 1)[1])
            if pid != os.getpid():
                try:
                    os.kill(pid, 0)
                    continue  # still running
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
            shutil.rmtree(path, ignore_errors=True)


def write_status(config: Config, report: Report, destination: str) -> None:
    """``data_dir/backup/status.json``, written whole (tmp, fsync, rename)."""
    path = own_dir(config) / "status.json"
    body = {"last_success": time.time(), "destination": destination, **report.as_dict()}
    tmp = path.with_name(f".status.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_status(config: Config) -> dict[str, object] | None:
    try:
        data = json.loads((own_dir(config) / "status.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["SERVER", "Cache", "Report", "Snapshotter", "cache_token", "read_status"]
