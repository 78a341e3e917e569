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
- estafeta itself is built from the source tree (``pip wheel --no-deps``),
  cached under ``BUILD_DIR/estafeta-<hash of the source files>``.
- ``BUILD_DIR/<platform>/wheelhouse`` then holds exactly those wheels; every
  one is checked to fit the target.

Prints one JSON object: ``wheelhouse`` (that directory), ``fingerprint`` (a
hash of the wheels' names and contents that ignores zip timestamps, so the
same commit and lock give the same value on any controller), ``release``
(``<version>-<first 12 digits of the fingerprint>``, the host's release
directory), ``version`` (of estafeta), ``platform`` and ``wheels``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
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


def download_dependencies(
    lock: Path,
    dest: Path,
    python: tuple[int, int],
    platforms: list[str],
    extra: list[str],
) -> None:
    """The locked dependencies as wheels for the target in ``dest`` (made
    anew in a temporary directory, then renamed: a cache entry is whole)."""
    work = Path(tempfile.mkdtemp(prefix=".deps-", dir=dest.parent))
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
        if dest.exists():
            shutil.rmtree(dest)
        wheels.rename(dest)
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


def build_estafeta(source: Path, build_dir: Path, extra: list[str]) -> Path:
    """The estafeta wheel of ``source``, built once per content of its files,
    from a copy (the source tree is left as it is: no build/ or egg-info)."""
    files = source_files(source)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    cache = build_dir / f"estafeta-{digest.hexdigest()[:16]}"
    if not cache.is_dir():
        work = Path(tempfile.mkdtemp(prefix=".estafeta-", dir=build_dir))
        try:
            tree = work / "source"
            for path in files:
                copy = tree / path.relative_to(source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy)
            wheels = work / "wheels"
            pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(tree), extra=extra)
            wheels.rename(cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    found = [w for w in cache.glob("*.whl") if w.name.split("-")[0].lower() == "estafeta"]
    if len(found) != 1:
        raise SystemExit(f"expected one estafeta wheel in {cache}, found {[w.name for w in found]}")
    return found[0]


def build(
    source: Path,
    lock: Path,
    build_dir: Path,
    machine: str,
    python: str,
    glibc: str,
    extra: list[str],
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
    platforms = manylinux_platforms(machine, (glibc_version[0], glibc_version[1]))
    tag = f"cp{python_version[0]}{python_version[1]}-{platforms[0]}"
    build_dir.mkdir(parents=True, exist_ok=True)
    platform_dir = build_dir / tag
    platform_dir.mkdir(exist_ok=True)

    deps = platform_dir / f"deps-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    if not deps.is_dir():
        download_dependencies(lock, deps, (python_version[0], python_version[1]), platforms, extra)
    ours = build_estafeta(source, build_dir, extra)

    house = platform_dir / "wheelhouse"
    if house.exists():
        shutil.rmtree(house)
    house.mkdir()
    for wheel in [*deps.glob("*.whl"), ours]:
        if not fits(wheel.name, (python_version[0], python_version[1]), platforms):
            raise SystemExit(f"{wheel.name} does not fit {tag}")
        shutil.copy2(wheel, house / wheel.name)
    wheels = sorted(house.glob("*.whl"))
    fingerprint = hashlib.sha256()
    for wheel in wheels:
        fingerprint.update(wheel_digest(wheel).encode())
    version = ours.name.split("-")[1]
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
    parser.add_argument("pip_args", nargs="*", help="extra arguments for pip (after --)")
    args = parser.parse_args()
    if not (args.source / "pyproject.toml").is_file():
        raise SystemExit(f"{args.source}: no pyproject.toml (estafeta__source_dir)")
    result = build(
        args.source.resolve(),
        args.lock.resolve(),
        args.build_dir.resolve(),
        args.machine,
        args.python,
        args.glibc,
        args.pip_args,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
