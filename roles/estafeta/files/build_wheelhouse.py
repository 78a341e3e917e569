#!/usr/bin/env python3
"""Build the wheelhouse of the estafeta server for one target platform.

Runs on the Ansible controller (the role calls it with
``ansible_playbook_python``, once per platform among the hosts of a batch).
The hosts install from the result with ``pip install --no-index
--find-links``, so they never need the internet, and the controller may be
of any platform: an x86_64 or macOS controller builds for an aarch64 host.

- The dependencies come from the lock (``server/requirements.lock``, written
  by lock_requirements.py) and nothing else: ``pip download --no-deps
  --require-hashes`` for the target's platform tags (``--platform
  manylinux_2_<glibc>_<machine>`` down to manylinux2014, ``--python-version``,
  ``--implementation cp``, ``--abi``). pip only considers files whose hash the
  lock lists, so for a package with wheels it takes the best wheel for that
  glibc, and for one without any wheel (authres, dkimpy) its sdist, which is
  built here into a wheel that must be pure Python (``py3-none-any``).
  Cached per platform and lock under ``BUILD_DIR/<platform>/deps-<lock hash>``.
- estafeta itself is built from a copy of the source tree (``pip wheel
  --no-deps``), cached under ``BUILD_DIR/estafeta-<hash of the source files>``.
- ``BUILD_DIR/<platform>/wheelhouse-<source hash>-<lock hash>`` then holds
  exactly those wheels; every one is checked to fit the target.

Prints one JSON object: ``wheelhouse`` (that directory), ``fingerprint`` (a
hash of the wheels' names and contents that ignores zip timestamps, so the
same commit and lock give the same value on any controller), ``release``
(``<version>-<first 12 digits of the fingerprint>``, the host's release
directory), ``version`` (of estafeta), ``platform`` and ``wheels``.

The build directory is shared by every clone of the repository on the
controller and by plays that run at the same time, of one source or of
several. So an entry (``estafeta-*``, ``deps-*``, ``wheelhouse-*-*``) is never
changed once it has its name:

1. it is made while holding its lock (``fcntl.flock`` on ``<entry>.lock``
   beside it), and only if it is still missing once the lock is held: two
   runs of the same source build it once, the second waits and takes it;
2. it is made in a temporary directory (``.tmp-*``), its files synced, and
   renamed to its name: a crash leaves a ``.tmp-*`` behind, never a
   half-written entry;
3. each use sets its modification time, under the lock;
4. pruning (``--keep-days``, at the end of a run) removes an entry only if
   its lock is free (taken without waiting) and, looking again under the
   lock, it has not been used for that many days: it is renamed to
   ``.trash-*``, its lock file removed, the lock released, then the trash
   deleted. The entries this run used are never pruned, and a wheelhouse
   that was returned was used just now, so it stays whole until the play has
   copied it. Whoever takes a lock checks that the file it locked still has
   that name (pruning removes lock files), or it tries again.

A second run from another source therefore gets a wheelhouse of its own
name and cannot touch this one (the estafeta wheel of one clone was once
replaced by another clone's between the build and the copy to the host).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

LOCK_HEADER = re.compile(r"^# estafeta-lock: python=(?P<python>\S+) machines=(?P<machines>\S+)$")
# Directories of the source tree that are not part of the wheel's input.
SOURCE_SKIP_DIRS = {"__pycache__", "build", "dist", "tests", ".pytest_cache", ".mypy_cache"}


def wheel_digest(path: Path) -> str:
    """A hash of a wheel's name and member contents, not of its zip timestamps."""
    digest = hashlib.sha256(path.name.encode())
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            digest.update(b"\0" + name.encode() + b"\0")
            digest.update(hashlib.sha256(archive.read(name)).digest())
    return digest.hexdigest()


def manylinux_platforms(machine: str, glibc: tuple[int, int]) -> list[str]:
    """The manylinux platform tags a host of ``machine`` with glibc ``glibc``
    accepts, best first (PEP 600, and the aliases of PEP 513, 571 and 599)."""
    major, minor = glibc
    if major != 2:
        raise SystemExit(f"glibc {major}.{minor}: only glibc 2.x is known")
    lowest = 5 if machine in ("x86_64", "i686") else 17
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    platforms = []
    for version in range(minor, lowest - 1, -1):
        platforms.append(f"manylinux_2_{version}_{machine}")
        if version in legacy and (version == 17 or machine in ("x86_64", "i686")):
            platforms.append(f"{legacy[version]}_{machine}")
    if not platforms:
        raise SystemExit(f"glibc 2.{minor} is older than any manylinux for {machine}")
    return platforms


def wheel_tags(filename: str) -> set[tuple[str, str, str]]:
    """The (python, abi, platform) tags of a wheel file name (PEP 427)."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise SystemExit(f"{filename}: not a wheel file name")
    python, abi, platform = parts[-3:]
    return {
        (p, a, q) for p in python.split(".") for a in abi.split(".") for q in platform.split(".")
    }


def fits(filename: str, python: tuple[int, int], platforms: list[str]) -> bool:
    """Whether CPython ``python`` on one of ``platforms`` may install the wheel."""
    major, minor = python
    interpreters = {f"cp{major}{minor}", f"py{major}", f"py{major}{minor}"}
    abi3 = {f"cp{major}{m}" for m in range(2, minor + 1)}
    for tag_python, abi, platform in wheel_tags(filename):
        if platform != "any" and platform not in platforms:
            continue
        if abi == f"cp{major}{minor}" and tag_python == f"cp{major}{minor}":
            return True
        if abi == "abi3" and tag_python in abi3:
            return True
        if abi == "none" and (tag_python in interpreters or tag_python.startswith(f"py{major}")):
            return True
    return False


def pip(*args: str, extra: list[str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args, *(extra or [])],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if result.returncode != 0:
        raise SystemExit(f"pip {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def read_lock(lock: Path) -> tuple[str, list[str]]:
    """(python version, machines) the lock covers, from its first line."""
    first = lock.read_text().splitlines()[0] if lock.read_text() else ""
    match = LOCK_HEADER.match(first)
    if not match:
        raise SystemExit(f"{lock}: not a lock written by lock_requirements.py (make lock)")
    return match["python"], match["machines"].split(",")


# -- the entries of the build directory: locks, publication, pruning --------------------------


def take_lock(entry: Path, *, wait: bool = True) -> int | None:
    """Hold the lock of ``entry`` (``<entry>.lock`` beside it): the open
    descriptor, to close for release; None when ``wait`` is false and another
    process holds it."""
    path = entry.with_name(entry.name + ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            if still_named(fd, path):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``: pruning removes a
    lock file while holding it, and a lock on the removed file is no lock."""
    held = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold the lock of ``entry`` for the block, waiting for it."""
    fd = take_lock(entry)
    if fd is None:
        raise AssertionError("a waiting flock returned without the lock")
    try:
        yield
    finally:
        os.close(fd)


def sync(path: str | Path) -> None:
    """Flush a file or directory to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(work: Path, entry: Path) -> None:
    """Give the whole directory ``work`` the name ``entry``: its files and
    itself synced first, so the name never stands for a partial entry."""
    for root, _dirs, names in os.walk(work):
        for name in [*names, "."]:
            sync(os.path.join(root, name))
    try:
        work.rename(entry)
    except OSError:
        # Made meanwhile by a run without locks (the layout before them): the
        # same key, the same content; keep that one.
        if not entry.is_dir():
            raise
        shutil.rmtree(work)
    sync(entry.parent)


def use(entry: Path) -> None:
    """Record that ``entry`` is used now (its modification time), for pruning."""
    os.utime(entry)


# What pruning looks at, in BUILD_DIR and in each BUILD_DIR/<platform>:
# entries (each with its lock), and unlocked leftovers: the temporary
# directories of a run that died (this layout's and the one before it) and
# the result directory of the layout before this one.
PLATFORM_DIR = re.compile(r"cp\d+-manylinux\w+")
TOP_ENTRY = re.compile(r"estafeta-[0-9a-f]{16}")
TOP_LEFTOVER = re.compile(r"\.tmp-.+|\.estafeta-.+")
PLATFORM_ENTRY = re.compile(r"deps-[0-9a-f]{16}|wheelhouse-[0-9a-f]{16}-[0-9a-f]{16}")
PLATFORM_LEFTOVER = re.compile(r"\.tmp-.+|\.deps-.+|wheelhouse")


def prune_entry(entry: Path, limit: float) -> bool:
    """Remove ``entry`` (or its lock file alone, when the entry is gone) if
    it was last used before ``limit`` and no one holds its lock."""
    lock = entry.with_name(entry.name + ".lock")

    def stale() -> bool:
        try:
            return (entry if entry.exists() else lock).stat().st_mtime < limit
        except FileNotFoundError:
            return False

    if not stale():
        return False
    fd = take_lock(entry, wait=False)
    if fd is None:
        return False  # being made or used right now
    trash = None
    try:
        if not stale():
            return False  # used since the first look
        if entry.exists():
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=entry.parent))
            entry.rename(trash / entry.name)
        lock.unlink()
    finally:
        os.close(fd)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return True


def prune(
    build_dir: Path, keep_days: float, used: set[Path], now: float | None = None
) -> list[str]:
    """Remove what was not used for ``keep_days`` days (0: nothing), never
    ``used``; the names removed, relative to ``build_dir``. Best effort: what
    cannot be removed now is left for a later run."""
    if keep_days <= 0:
        return []
    limit = (time.time() if now is None else now) - keep_days * 86400
    directories = [(build_dir, TOP_ENTRY, TOP_LEFTOVER)] + [
        (path, PLATFORM_ENTRY, PLATFORM_LEFTOVER)
        for path in sorted(build_dir.iterdir())
        if PLATFORM_DIR.fullmatch(path.name) and path.is_dir() and not path.is_symlink()
    ]
    removed = []
    for directory, entries, leftovers in directories:
        for path in sorted(directory.iterdir()):
            name = path.name.removesuffix(".lock")
            if path.with_name(name) in used or path.is_symlink():
                continue
            try:
                if name.startswith(".trash-"):
                    shutil.rmtree(path, ignore_errors=True)
                elif leftovers.fullmatch(name) and path.is_dir():
                    if path.stat().st_mtime >= limit:
                        continue
                    shutil.rmtree(path)
                elif not (entries.fullmatch(name) and prune_entry(path.with_name(name), limit)):
                    continue
            except OSError as error:
                print(f"build_wheelhouse: not pruned: {path}: {error}", file=sys.stderr)
                continue
            removed.append(str(path.relative_to(build_dir)))
    return removed


# -- the parts of the wheelhouse ----------------------------------------------------------------


def download_dependencies(
    lock: Path,
    dest: Path,
    python: tuple[int, int],
    platforms: list[str],
    extra: list[str],
) -> None:
    """The locked dependencies as wheels for the target in ``dest``."""
    work = Path(tempfile.mkdtemp(prefix=".tmp-deps-", dir=dest.parent))
    try:
        downloads = work / "downloads"
        target = [f"--platform={p}" for p in platforms] + [
            f"--python-version={python[0]}.{python[1]}",
            "--implementation=cp",
            f"--abi=cp{python[0]}{python[1]}",
        ]
        pip(
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--dest",
            str(downloads),
            *target,
            "--requirement",
            str(lock),
            extra=extra,
        )
        wheels = work / "wheels"
        wheels.mkdir()
        for path in sorted(downloads.iterdir()):
            if path.name.endswith(".whl"):
                path.rename(wheels / path.name)
                continue
            # An sdist (only where the lock lists no wheel): build it here; the
            # result must be pure Python, or the host would get a wheel built
            # for the controller.
            built = work / "built"
            pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(path), extra=extra)
            (wheel,) = built.iterdir()
            if not all(
                platform == "any" and abi == "none" for _, abi, platform in wheel_tags(wheel.name)
            ):
                raise SystemExit(
                    f"{path.name} has no wheel on PyPI and builds {wheel.name}, which is not "
                    "pure Python: it cannot be built for another platform here"
                )
            wheel.rename(wheels / wheel.name)
            built.rmdir()
        publish(wheels, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def source_files(source: Path) -> list[Path]:
    """The files of the source tree the estafeta wheel is built from (not
    its tests, caches or earlier build output), in a stable order."""
    files = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(
            d for d in dirs if d not in SOURCE_SKIP_DIRS and not d.endswith(".egg-info")
        )
        files += [Path(root) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def copy_source(source: Path, tree: Path) -> str:
    """Copy the source files of ``source`` to ``tree``; the hash of the copy
    (of each file's path and content), which is what the wheel is built from
    even if the source changes meanwhile (a checkout in that clone)."""
    digest = hashlib.sha256()
    for path in source_files(source):
        relative = path.relative_to(source)
        copy = tree / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
        digest.update(str(relative).encode() + b"\0")
        digest.update(hashlib.sha256(copy.read_bytes()).digest())
    return digest.hexdigest()


def estafeta_wheel(cache: Path) -> Path:
    found = [w for w in cache.glob("*.whl") if w.name.split("-")[0].lower() == "estafeta"]
    if len(found) != 1:
        raise SystemExit(f"expected one estafeta wheel in {cache}, found {[w.name for w in found]}")
    return found[0]


def build_estafeta(tree: Path, cache: Path, extra: list[str]) -> None:
    """The estafeta wheel of the copied source ``tree`` in ``cache``."""
    work = Path(tempfile.mkdtemp(prefix=".tmp-estafeta-", dir=cache.parent))
    try:
        wheels = work / "wheels"
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(tree), extra=extra)
        estafeta_wheel(wheels)
        publish(wheels, cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def assemble(
    house: Path, wheels: list[Path], python: tuple[int, int], platforms: list[str]
) -> None:
    """The wheelhouse ``house``: ``wheels``, each checked to fit the target,
    linked (the entries they come from never change) or else copied."""
    work = Path(tempfile.mkdtemp(prefix=".tmp-wheelhouse-", dir=house.parent))
    try:
        for wheel in wheels:
            if not fits(wheel.name, python, platforms):
                raise SystemExit(f"{wheel.name} does not fit {house.parent.name}")
            try:
                os.link(wheel, work / wheel.name)
            except OSError:
                shutil.copy2(wheel, work / wheel.name)
        work.chmod(0o755)
        publish(work, house)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(
    source: Path,
    lock: Path,
    build_dir: Path,
    machine: str,
    python: str,
    glibc: str,
    extra: list[str],
    *,
    keep_days: float = 0,
) -> dict[str, object]:
    locked_python, machines = read_lock(lock)
    if python != locked_python or machine not in machines:
        raise SystemExit(
            f"the host has Python {python} on {machine}, and {lock} covers Python "
            f"{locked_python} on {', '.join(machines)} only: add the host's platform to "
            "roles/estafeta/files/lock_requirements.py (PYTHON, MACHINES) and run make lock"
        )
    python_version = tuple(int(n) for n in python.split("."))
    glibc_version = tuple(int(n) for n in glibc.split(".")[:2])
    if len(python_version) != 2 or len(glibc_version) != 2:
        raise SystemExit(f"python {python!r}, glibc {glibc!r}: expected MAJOR.MINOR")
    target = (python_version[0], python_version[1])
    platforms = manylinux_platforms(machine, (glibc_version[0], glibc_version[1]))
    tag = f"cp{target[0]}{target[1]}-{platforms[0]}"
    build_dir.mkdir(parents=True, exist_ok=True)
    platform_dir = build_dir / tag
    platform_dir.mkdir(exist_ok=True)

    lock_hash = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    deps = platform_dir / f"deps-{lock_hash}"
    snapshot = Path(tempfile.mkdtemp(prefix=".tmp-source-", dir=build_dir))
    try:
        source_hash = copy_source(source, snapshot / "source")[:16]
        ours = build_dir / f"estafeta-{source_hash}"
        house = platform_dir / f"wheelhouse-{source_hash}-{lock_hash}"
        # Locks are taken in this order only (house, then each part), and
        # pruning never waits for one: no deadlock.
        with locked(house):
            if not house.is_dir():
                with locked(deps):
                    if not deps.is_dir():
                        download_dependencies(lock, deps, target, platforms, extra)
                    use(deps)
                with locked(ours):
                    if not ours.is_dir():
                        build_estafeta(snapshot / "source", ours, extra)
                    use(ours)
                assemble(
                    house, [*sorted(deps.glob("*.whl")), estafeta_wheel(ours)], target, platforms
                )
            use(house)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    prune(build_dir, keep_days, {house, deps, ours})

    wheels = sorted(house.glob("*.whl"))
    fingerprint = hashlib.sha256()
    for wheel in wheels:
        fingerprint.update(wheel_digest(wheel).encode())
    (estafeta,) = [w for w in wheels if w.name.split("-")[0].lower() == "estafeta"]
    version = estafeta.name.split("-")[1]
    return {
        "wheelhouse": str(house),
        "fingerprint": fingerprint.hexdigest(),
        "release": f"{version}-{fingerprint.hexdigest()[:12]}",
        "version": version,
        "platform": tag,
        "wheels": [w.name for w in wheels],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the server/ directory")
    parser.add_argument("--lock", type=Path, required=True, help="the lock file with hashes")
    parser.add_argument("--build-dir", type=Path, required=True, help="cache and output directory")
    parser.add_argument("--machine", required=True, help="the host's machine, e.g. aarch64")
    parser.add_argument("--python", required=True, help="the host's Python, e.g. 3.11")
    parser.add_argument("--glibc", required=True, help="the host's glibc, e.g. 2.36")
    parser.add_argument(
        "--keep-days",
        type=int,
        default=30,
        help="remove what no run used for this many days (0: keep everything)",
    )
    parser.add_argument("pip_args", nargs="*", help="extra arguments for pip (after --)")
    args = parser.parse_args()
    if not (args.source / "pyproject.toml").is_file():
        raise SystemExit(f"{args.source}: no pyproject.toml (estafeta__source_dir)")
    if args.keep_days < 0:
        raise SystemExit(f"--keep-days {args.keep_days}: a number of days, or 0")
    result = build(
        args.source.resolve(),
        args.lock.resolve(),
        args.build_dir.resolve(),
        args.machine,
        args.python,
        args.glibc,
        args.pip_args,
        keep_days=args.keep_days,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
