#!/usr/bin/env python3
"""Build (once) a wheelhouse tarball of pip requirements for lab hosts.

Runs on the Ansible controller with ``ansible_playbook_python``; lab hosts
have no internet and install from the tarball with ``pip install --no-index``.
The tarball is named after a hash of the requirements, the pip arguments and
the Python version (the wheels of compiled dependencies fit one version
only), and built only when it is missing: later runs reuse it. Its members
have fixed times and owners, so the same wheels give the same tarball.

Prints one JSON object: ``tarball`` (its path), ``python`` (``3.11``),
``built`` (made by this run) and ``wheels`` (file names).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path


def build(dest: Path, requirements: list[str], pip_args: list[str]) -> dict[str, object]:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(json.dumps([python, requirements, pip_args]).encode()).hexdigest()[:12]
    tarball = dest / f"wheelhouse-{key}.tar"
    built = False
    if not tarball.exists():
        dest.mkdir(parents=True, exist_ok=True)
        work = dest / f".build-{key}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(work)]
        result = subprocess.run([*pip, *pip_args, *requirements], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"pip wheel failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        partial = tarball.with_suffix(".tar.partial")
        with tarfile.open(partial, "w") as archive:
            for wheel in sorted(work.glob("*.whl")):
                info = archive.gettarinfo(str(wheel), arcname=wheel.name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o644
                with wheel.open("rb") as data:
                    archive.addfile(info, data)
        partial.rename(tarball)
        shutil.rmtree(work)
        for old in dest.glob("wheelhouse-*.tar"):
            if old != tarball:
                old.unlink()
        built = True
    with tarfile.open(tarball) as archive:
        wheels = sorted(archive.getnames())
    return {"tarball": str(tarball), "python": python, "built": built, "wheels": wheels}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True, help="directory of the tarballs")
    parser.add_argument(
        "--requirement", action="append", required=True, help="a requirement (repeat for more)"
    )
    parser.add_argument("pip_args", nargs="*", help="extra arguments for pip wheel (after --)")
    args = parser.parse_args()
    print(json.dumps(build(args.dest.resolve(), args.requirement, args.pip_args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
