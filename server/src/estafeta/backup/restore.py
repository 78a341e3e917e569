"""``estafeta backup restore`` and ``verify``: read a snapshot back.

A restore never writes into a live data directory until everything has
been fetched, decrypted and checked: files are written into a staging
folder beside the target (same file system), made durable (syncfs(2), or
an fsync per file where there is none), and only then renamed into place.
A wrong key, a missing or damaged pack, a destroyed account key: the
staging folder is removed and the target is as it was.

Objects are fetched a pack at a time (packs in parallel, at most
``workers`` in memory), each object checked by ``objects.open_object``
(tag, size, content matches name) and written where the trees say.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from estafeta.backup import objects
from estafeta.backup.create import CHUNK
from estafeta.backup.objects import BackupError, KeyDestroyed
from estafeta.backup.repository import SERVER, Location, Repository
from estafeta.backup.sources import CONFIG_PREFIX, OWN_DIR
from estafeta.store import ingest, maildir

log = logging.getLogger("estafeta.backup")

RESTORED_CONFIG = f"{OWN_DIR}/restored-config"


@dataclass
class File:
    name: str
    kind: str
    mode: int
    size: int
    mtime: int
    chunks: list[str]


@dataclass
class Tree:
    scope: str
    files: list[File]


@dataclass
class RestoreReport:
    snapshot: str
    files: int = 0
    octets: int = 0
    scopes: list[str] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)  # scopes whose key was destroyed
    config_file: str | None = None


def _parse_tree(scope: str, data: bytes) -> Tree:
    try:
        rows = json.loads(data)
        files = [File(str(n), str(k), int(m), int(s), int(t), list(c)) for n, k, m, s, t, c in rows]
    except (ValueError, TypeError):
        raise BackupError(f"the file list of {scope or 'the server'} is damaged") from None
    return Tree(scope, files)


def _safe(name: str) -> str:
    """A tree's name as a relative path that stays below the target."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError(f"the snapshot names a file outside data_dir: {name!r}")
    return path.as_posix()


class Reader:
    """Objects of one snapshot: trees, and the content they name."""

    def __init__(self, repository: Repository, snapshot: str) -> None:
        self.repository = repository
        self.snapshot = snapshot
        self.manifest = repository.manifest(snapshot)
        scopes = self.manifest.get("scopes")
        if not isinstance(scopes, dict):
            raise BackupError(f"snapshot {snapshot}: its manifest lists no scopes")
        self.scopes: dict[str, dict[str, object]] = scopes
        self.index = repository.index()
        self._packs: dict[str, bytes] = {}

    def locate(self, name: str) -> Location:
        where = self.index.get(name)
        if where is None:
            raise BackupError(
                f"{self.repository.destination.describe()}: object {name} of snapshot "
                f"{self.snapshot} is in no index (pruned or lost)"
            )
        return where

    def read_object(self, subkey: bytes, name: str) -> bytes:
        where = self.locate(name)
        pack = self._packs.get(where.pack)
        if pack is None:
            pack = self.repository.read_pack(where.pack)
            self._packs = {where.pack: pack}  # one pack kept: trees sit together
        blob = pack[where.offset : where.offset + where.length]
        return objects.open_object(subkey, name, blob)

    def tree(self, scope: str) -> Tree:
        entry = self.scopes.get(scope)
        if entry is None:
            what = scope or "the server"
            raise BackupError(f"snapshot {self.snapshot} holds nothing of {what}")
        subkey = self.repository.keyring.existing(scope)
        ids = entry.get("tree")
        if not isinstance(ids, list):
            raise BackupError(f"snapshot {self.snapshot}: the file list of {scope} is missing")
        return _parse_tree(scope, b"".join(self.read_object(subkey, str(i)) for i in ids))

    def trees(self, report: RestoreReport) -> list[Tree]:
        """Every scope's tree; erased scopes (key destroyed) are noted in
        ``report`` and left out."""
        trees = []
        for scope in self.scopes:
            try:
                trees.append(self.tree(scope))
            except KeyDestroyed:
                report.erased.append(scope)
                continue
            report.scopes.append(scope)
        return trees

    def fetch(
        self,
        trees: Iterable[Tree],
        write: bool,
        root: Path | None,
        workers: int = 4,
        names: dict[str, str] | None = None,
    ) -> tuple[int, int]:
        """Fetch and check every object of ``trees``; with ``write``, write
        the files below ``root`` (``names`` maps a tree name to another
        relative name). Returns (files, octets)."""
        wanted: dict[str, list[tuple[str, bytes, int, Path | None]]] = defaultdict(list)
        files = octets = 0
        for tree in trees:
            subkey = self.repository.keyring.existing(tree.scope)
            for entry in tree.files:
                if entry.kind != "f":
                    continue
                target = None
                if write and root is not None:
                    relative = _safe((names or {}).get(entry.name, entry.name))
                    target = root / relative
                    with open(target, "wb"):
                        pass  # created now: an empty file has no object to write it
                files += 1
                octets += entry.size
                for number, name in enumerate(entry.chunks):
                    wanted[self.locate(name).pack].append((name, subkey, number * CHUNK, target))
        lock = threading.Lock()

        def one_pack(pack: str) -> None:
            data = self.repository.read_pack(pack)
            for name, subkey, offset, target in wanted[pack]:
                where = self.index[name]
                content = objects.open_object(
                    subkey, name, data[where.offset : where.offset + where.length]
                )
                if target is None:
                    continue
                fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.pwrite(fd, content, offset)
                finally:
                    os.close(fd)
            with lock:
                wanted[pack] = []

        with ThreadPoolExecutor(workers, thread_name_prefix="backup-fetch") as pool:
            for future in [pool.submit(one_pack, pack) for pack in list(wanted)]:
                future.result()
        return files, octets


def verify(repository: Repository, snapshot: str, workers: int = 4) -> RestoreReport:
    """Fetch, decrypt and check every object of a snapshot."""
    reader = Reader(repository, snapshot)
    report = RestoreReport(snapshot)
    trees = reader.trees(report)
    report.files, report.octets = reader.fetch(trees, write=False, root=None, workers=workers)
    return report


def _lay_out(root: Path, trees: Iterable[Tree], names: dict[str, str]) -> None:
    for tree in trees:
        for entry in tree.files:
            relative = _safe(names.get(entry.name, entry.name))
            if entry.kind == "d":
                (root / relative).mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                (root / relative).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def _finish(root: Path, trees: Iterable[Tree], names: dict[str, str]) -> None:
    """Modes and times as they were (folders last: writing into a folder
    changes its time), then everything durable."""
    folders = []
    for tree in trees:
        for entry in tree.files:
            path = root / _safe(names.get(entry.name, entry.name))
            os.chmod(path, entry.mode & 0o7777)
            if entry.kind == "d":
                folders.append((path, entry.mtime))
            else:
                os.utime(path, ns=(entry.mtime, entry.mtime))
    for path, mtime in reversed(folders):
        os.utime(path, ns=(mtime, mtime))
    _make_durable(root)


def _make_durable(root: Path) -> None:
    if ingest.syncfs_reports_errors():
        ingest.syncfs(root)
        return
    for folder, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _config_names(trees: Iterable[Tree]) -> dict[str, str]:
    return {
        entry.name: f"{RESTORED_CONFIG}/{entry.name[len(CONFIG_PREFIX) :]}"
        for tree in trees
        for entry in tree.files
        if entry.name.startswith(CONFIG_PREFIX)
    }


def restore_all(
    repository: Repository,
    snapshot: str,
    target: Path,
    workers: int = 4,
    scrub: Callable[[Path, str], None] | None = None,
) -> RestoreReport:
    """Restore a whole snapshot into ``target``, which must be absent or an
    empty folder. The scopes of erased accounts are left out, and
    ``scrub(staging folder, address)`` removes what the server's own files
    still hold of each (its account row, aliases, queue entries: the
    snapshot was made before the erasure) before the folder is renamed."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target}: not empty; a full restore needs an empty data directory")
    reader = Reader(repository, snapshot)
    report = RestoreReport(snapshot)
    trees = reader.trees(report)
    if SERVER not in report.scopes:
        raise BackupError(f"snapshot {snapshot} has no server data")
    names = _config_names(trees)
    if names:
        report.config_file = str(target / next(iter(names.values())))
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.restore-{secrets.token_hex(4)}"
    stage.mkdir(mode=0o700)
    try:
        _lay_out(stage, trees, names)
        report.files, report.octets = reader.fetch(trees, True, stage, workers, names)
        _finish(stage, trees, names)
        if scrub is not None:
            for address in report.erased:
                scrub(stage, address)
        if target.exists():
            target.rmdir()
        os.rename(stage, target)
        with contextlib.suppress(OSError):
            maildir.fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info(
        "backup: restored snapshot %s into %s: %d files, %.1f MB",
        snapshot,
        target,
        report.files,
        report.octets / 1e6,
    )
    return report
