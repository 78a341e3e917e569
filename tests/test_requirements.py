"""requirements.yml must be satisfiable by the `ansible` package we pin.

Galaxy is unreachable from our machines and CI, so every collection listed
there has to come from the pip package in requirements.txt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


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
