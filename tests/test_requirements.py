"""requirements.yml and galaxy.yml's dependencies list exactly the
collections in use, and the `ansible` package we pin satisfies them.

Galaxy is unreachable from our machines and CI, so every collection listed
in requirements.yml has to come from the pip package in requirements.txt.

"In use" means named as ``namespace.collection.something`` (a module, a
filter, a lookup) in the YAML, templates and Python of roles/, playbooks/,
molecule/, inventories/ and tests/, where ``namespace.collection`` is a
collection Ansible knows (one the `ansible` package ships, or one listed in
requirements.yml); ansible.builtin and ansible.legacy come with ansible-core
and our own estafeta.mail is built here. galaxy.yml's dependencies are the
collections used by what the estafeta.mail collection ships: the roles
without lab_ in their name, library/, filter_plugins/ and module_utils/.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def installed_collections() -> dict[str, str]:
    galaxy = shutil.which("ansible-galaxy")
    assert galaxy, "ansible-galaxy not on PATH (run through make)"
    out = subprocess.run(
        [galaxy, "collection", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    found: dict[str, str] = {}
    for collections in json.loads(out).values():
        for name, info in collections.items():
            found.setdefault(name, info["version"])
    return found


def satisfies(version: str, spec: str) -> bool:
    """Galaxy's version ranges (">=1.0,<2.0", "*", "1.2.3") checked with PEP 440 rules."""
    if spec.strip() in ("", "*"):
        return True
    if spec[0].isdigit():
        spec = f"=={spec}"
    return Version(version) in SpecifierSet(spec)


REQUIREMENTS = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())

# Collections nobody installs: they come with ansible-core, or are built here.
NOT_REQUIRED = {"ansible.builtin", "ansible.legacy", "estafeta.mail"}
SCANNED_SUFFIXES = {".yml", ".yaml", ".j2", ".py"}
# These two hold example text about collection names, not uses.
NOT_SCANNED = {Path(__file__).resolve(), ROOT / "tests" / "test_collection.py"}
FQCN = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z_][a-z0-9_]*")


def collections_used(paths: Iterable[Path], known: set[str]) -> dict[str, set[str]]:
    """{collection: files naming it} for every known collection named as
    ``namespace.collection.name`` in the files under ``paths``."""
    used: dict[str, set[str]] = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in files:
            if path.suffix not in SCANNED_SUFFIXES or path in NOT_SCANNED or not path.is_file():
                continue
            if "__pycache__" in path.parts:
                continue
            for match in FQCN.finditer(path.read_text(encoding="utf-8", errors="replace")):
                name = f"{match[1]}.{match[2]}"
                if name in known and name not in NOT_REQUIRED:
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    used.setdefault(name, set()).add(str(where))
    return used


def known_collections() -> set[str]:
    return set(installed_collections()) | {r["name"] for r in REQUIREMENTS}


def test_scan_finds_fqcn_uses(tmp_path: Path) -> None:
    sample = tmp_path / "tasks.yml"
    sample.write_text(
        "- community.general.nsupdate: {}\n"
        '- ansible.builtin.debug: {msg: "{{ x | community.crypto.split_pem }}"}\n'
        "- estafeta.mail.estafeta_account: {}\n"
        "- ansible.builtin.debug: {msg: mx1.example.test community.general}\n"
    )
    known = {"community.general", "community.crypto", "amazon.aws", "ansible.builtin"}
    used = collections_used([sample], known)
    assert set(used) == {"community.general", "community.crypto"}


def test_requirements_list_exactly_what_is_used() -> None:
    paths = [ROOT / d for d in ("roles", "playbooks", "molecule", "inventories", "tests")]
    used = collections_used(paths, known_collections())
    listed = {r["name"] for r in REQUIREMENTS}
    unused = listed - set(used)
    missing = {name: sorted(files)[:3] for name, files in used.items() if name not in listed}
    assert not unused, f"listed in requirements.yml but used nowhere: {sorted(unused)}"
    assert not missing, f"used but not in requirements.yml: {missing}"


def collection_content() -> list[Path]:
    roles = [
        path
        for path in sorted((ROOT / "roles").iterdir())
        if path.is_dir() and not path.name.startswith("lab_")
    ]
    return [*roles, ROOT / "library", ROOT / "filter_plugins", ROOT / "module_utils"]


def test_galaxy_dependencies_match_the_collection() -> None:
    used = collections_used(collection_content(), known_collections())
    dependencies = GALAXY.get("dependencies") or {}
    assert set(dependencies) == set(used), (
        f"galaxy.yml dependencies {sorted(dependencies)}, used by the collection {sorted(used)}"
    )
    ranges = {r["name"]: r["version"] for r in REQUIREMENTS}
    for name, version in dependencies.items():
        assert version == ranges.get(name), (
            f"{name}: galaxy.yml {version}, requirements.yml {ranges.get(name)}"
        )


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=lambda r: r["name"])
def test_collection_is_installed_in_range(requirement: dict[str, str]) -> None:
    installed = installed_collections()
    name = requirement["name"]
    assert name in installed, f"{name} is not shipped by the pinned ansible package"
    assert satisfies(installed[name], requirement["version"]), (
        f"{name} {installed[name]} does not satisfy {requirement['version']}"
    )


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("11.4.2", ">=11.0.0,<12.0.0", True),
        ("12.0.0", ">=11.0.0,<12.0.0", False),
        ("1.0.0", "1.0.0", True),
        ("1.0.1", "1.0.0", False),
        ("3.0.5", "*", True),
    ],
)
def test_version_check(version: str, spec: str, expected: bool) -> None:
    assert satisfies(version, spec) is expected
