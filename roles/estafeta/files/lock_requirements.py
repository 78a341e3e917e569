#!/usr/bin/env python3
"""Write the lock file of the estafeta server's runtime dependencies (``make lock``).

The lock pins every runtime dependency of ``server/pyproject.toml`` (the
whole tree, not only the direct ones) to one version, with the SHA-256 of
every file a supported target may install:

- for a package with wheels: every wheel on PyPI for that version that fits
  CPython 3.11 on manylinux (glibc) x86_64 or aarch64, whatever the glibc
  version: the controller later picks the best one for each host's glibc
  (``build_wheelhouse.py``);
- for a package without any wheel (authres, dkimpy): its sdist, which the
  controller builds into a pure-Python wheel.

It runs with the development virtualenv (.venv, which has ``packaging``).
It refuses a package that has wheels for one supported machine and not for
another, because such a host would need a compiler. The versions come from
pip's resolver (``pip install --dry-run --report``) run with this Python,
which must be CPython 3.11 on Linux like the targets; the resolution is
then checked against each target's environment markers, so a dependency
needed only on aarch64 would not be missed. File names and hashes come from
PyPI's simple index in its JSON form (PEP 691), as pip reads it.

The first line of the lock says what it covers (``# estafeta-lock:
python=3.11 machines=x86_64,aarch64``); build_wheelhouse.py reads it and
refuses other targets with a clear message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

from packaging import tags
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import (
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

PYTHON = (3, 11)
MACHINES = ("x86_64", "aarch64")
# Any manylinux glibc a host may have (PEP 600): the lock keeps them all.
GLIBC_MINORS = range(5, 100)
PYPI_SIMPLE = "https://pypi.org/simple"


def pip_environment() -> dict[str, str]:
    """The environment for pip: PyPI only, whatever pip.conf or PIP_* say
    (a local wheel directory or mirror could offer files PyPI lacks)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    if "PIP_CERT" in os.environ:
        environment["PIP_CERT"] = os.environ["PIP_CERT"]
    return environment


def manylinux_platforms(machine: str, glibc_minor: int) -> list[str]:
    """The manylinux platform tags a glibc 2.<glibc_minor> host of ``machine``
    accepts, best first (PEP 600, and the legacy aliases of PEP 513/571/599)."""
    lowest = 5 if machine in ("x86_64", "i686") else 17
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    platforms = []
    for minor in range(glibc_minor, lowest - 1, -1):
        platforms.append(f"manylinux_2_{minor}_{machine}")
        if minor in legacy and (minor == 17 or machine in ("x86_64", "i686")):
            platforms.append(f"{legacy[minor]}_{machine}")
    return platforms


def supported_tags(machine: str, python: tuple[int, int] = PYTHON) -> set[tags.Tag]:
    """Every wheel tag CPython ``python`` on a manylinux ``machine`` accepts."""
    platforms = manylinux_platforms(machine, max(GLIBC_MINORS))
    interpreter = f"cp{python[0]}{python[1]}"
    return set(tags.cpython_tags(python, [interpreter], platforms)) | set(
        tags.compatible_tags(python, interpreter, platforms)
    )


def target_environment(machine: str) -> dict[str, str]:
    """PEP 508 marker values of a target host."""
    environment = {key: str(value) for key, value in default_environment().items()}
    version = f"{PYTHON[0]}.{PYTHON[1]}"
    environment.update(
        {
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "python_version": version,
            "python_full_version": f"{version}.0",
            "implementation_version": f"{version}.0",
            "sys_platform": "linux",
            "os_name": "posix",
            "platform_system": "Linux",
            "platform_machine": machine,
        }
    )
    return environment


def resolve(requirements: list[str]) -> dict[str, dict[str, Any]]:
    """pip's resolution of ``requirements`` for this Python: {name: report item}."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "requirements.in"
        spec.write_text("\n".join(requirements) + "\n")
        report = Path(tmp) / "report.json"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--disable-pip-version-check",
                "--index-url",
                PYPI_SIMPLE,
                "--report",
                str(report),
                "--requirement",
                str(spec),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=pip_environment(),
        )
        if result.returncode != 0:
            raise SystemExit(f"pip could not resolve the dependencies:\n{result.stderr[-3000:]}")
        items = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item for item in items}


def closure(requirements: list[str], resolved: dict[str, dict[str, Any]], machine: str) -> set[str]:
    """The names a ``machine`` host needs, following Requires-Dist with its markers."""
    environment = target_environment(machine)
    needed: set[str] = set()
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        marker_env = {**environment, "extra": extra}
        if requirement.marker and not requirement.marker.evaluate(marker_env):
            continue
        name = canonicalize_name(requirement.name)
        if name not in resolved:
            raise SystemExit(f"{machine} needs {requirement}, which the resolution lacks")
        version = resolved[name]["metadata"]["version"]
        if not requirement.specifier.contains(version, prereleases=True):
            raise SystemExit(f"{machine} needs {requirement}, resolved to {version}")
        extras = sorted(requirement.extras)
        key = name + "".join(f"[{e}]" for e in extras)
        if key in needed:
            continue
        needed.add(key)
        for text in resolved[name]["metadata"].get("requires_dist", []):
            for wanted in extras or [""]:
                todo.append((Requirement(text), wanted))
    return {key.split("[", 1)[0] for key in needed}


def pypi_files(name: str, version: str) -> list[dict[str, Any]]:
    """The files of name==version on PyPI: {filename, packagetype, sha256}."""
    url = f"{PYPI_SIMPLE}/{name}/"  # always https://pypi.org
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        listing = json.load(response)
    wanted = Version(version)
    files = []
    for entry in listing["files"]:
        filename = entry["filename"]
        try:
            if filename.endswith(".whl"):
                kind, found = "bdist_wheel", parse_wheel_filename(filename)[1]
            elif filename.endswith((".tar.gz", ".zip")):
                kind, found = "sdist", parse_sdist_filename(filename)[1]
            else:
                continue
        except ValueError:  # InvalidWheelFilename, InvalidSdistFilename, InvalidVersion
            continue
        if found == wanted and "sha256" in entry["hashes"]:
            files.append(
                {"filename": filename, "packagetype": kind, "sha256": entry["hashes"]["sha256"]}
            )
    return files


def lock_entry(name: str, version: str, files: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(comment, sorted sha256 hashes) of what a target may install of name==version."""
    wheels = [f for f in files if f["packagetype"] == "bdist_wheel"]
    if not wheels:
        sdists = [f for f in files if f["packagetype"] == "sdist"]
        if len(sdists) != 1:
            raise SystemExit(f"{name} {version}: no wheel and {len(sdists)} sdists on PyPI")
        return "no wheel on PyPI: the sdist, built into a wheel on the controller", [
            sdists[0]["sha256"]
        ]
    kept: set[str] = set()
    for machine in MACHINES:
        supported = supported_tags(machine)
        fitting = [w for w in wheels if parse_wheel_filename(w["filename"])[3] & supported]
        if not fitting:
            raise SystemExit(
                f"{name} {version} has wheels, but none for CPython "
                f"{PYTHON[0]}.{PYTHON[1]} on manylinux {machine}: pin another version"
            )
        kept |= {w["sha256"] for w in fitting}
    return f"{len(kept)} wheel(s) for {', '.join(MACHINES)}", sorted(kept)


def render(source: Path, entries: list[tuple[str, str, str, list[str]]]) -> str:
    machines = ",".join(MACHINES)
    lines = [
        f"# estafeta-lock: python={PYTHON[0]}.{PYTHON[1]} machines={machines}",
        f"# The runtime dependencies of {source.name}/pyproject.toml, pinned with the",
        "# SHA-256 of every file a supported host may install (CPython 3.11 on",
        f"# manylinux {', '.join(MACHINES)}). Written by",
        "# roles/estafeta/files/lock_requirements.py (make lock): do not edit.",
        "",
    ]
    for name, version, comment, hashes in entries:
        lines.append(f"# {name}: {comment}")
        lines.append(f"{name}=={version} \\")
        lines.extend(
            f"    --hash=sha256:{digest}" + (" \\" if i < len(hashes) - 1 else "")
            for i, digest in enumerate(hashes)
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the server/ directory")
    parser.add_argument("--output", type=Path, required=True, help="the lock file to write")
    args = parser.parse_args()
    if sys.version_info[:2] != PYTHON or platform.system() != "Linux":
        raise SystemExit(
            f"run this with CPython {PYTHON[0]}.{PYTHON[1]} on Linux (the targets' Python), "
            f"not {platform.python_version()} on {platform.system()}"
        )
    project = tomllib.loads((args.source / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    resolved = resolve(requirements)
    names: set[str] = set()
    for machine in MACHINES:
        names |= closure(requirements, resolved, machine)
    entries = []
    for name in sorted(names):
        version = resolved[name]["metadata"]["version"]
        comment, hashes = lock_entry(name, version, pypi_files(name, version))
        entries.append((name, version, comment, hashes))
    args.output.write_text(render(args.source, entries))
    print(f"{args.output}: {len(entries)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
