#!/usr/bin/env python3
"""Build a wheelhouse of the estafeta server and all its dependencies.

Runs on the Ansible controller (the role calls it once per run with
``ansible_playbook_python``). The managed hosts install from the result with
``pip install --no-index --find-links``, so they never need the internet.

Prints one JSON object: ``fingerprint`` (a hash of the wheels' names and
contents that ignores zip timestamps, so rebuilding the same source gives the
same value), ``version`` (of estafeta), ``python`` (``3.11``: the wheels of
compiled dependencies only fit that Python) and ``wheels`` (file names).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


def wheel_digest(path: Path) -> str:
    digest = hashlib.sha256(path.name.encode())
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            digest.update(b"\0" + name.encode() + b"\0")
            digest.update(hashlib.sha256(archive.read(name)).digest())
    return digest.hexdigest()


def build(source: Path, dest: Path, extra: list[str]) -> dict[str, object]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest)]
    result = subprocess.run(
        [*pip, *extra, str(source)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"pip wheel failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    wheels = sorted(dest.glob("*.whl"))
    ours = [w for w in wheels if w.name.split("-")[0].lower() == "estafeta"]
    if len(ours) != 1:
        raise SystemExit(f"expected one estafeta wheel in {dest}, found {[w.name for w in ours]}")
    fingerprint = hashlib.sha256()
    for wheel in wheels:
        fingerprint.update(wheel_digest(wheel).encode())
    return {
        "fingerprint": fingerprint.hexdigest(),
        "version": ours[0].name.split("-")[1],
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "wheels": [w.name for w in wheels],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the server/ directory")
    parser.add_argument("--dest", type=Path, required=True, help="wheelhouse directory (emptied)")
    parser.add_argument("pip_args", nargs="*", help="extra arguments for pip wheel (after --)")
    args = parser.parse_args()
    print(json.dumps(build(args.source.resolve(), args.dest.resolve(), args.pip_args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
