"""Fixtures of the deliverability scenario's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra

ROOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
INVENTORY = ROOT / "inventories" / "lab"


@pytest.fixture(scope="module")
def hosts(pytestconfig: pytest.Config) -> dict[str, object]:
    """testinfra hosts of the lab by inventory name (Molecule's inventory,
    else inventories/lab)."""
    inventory = pytestconfig.getoption("ansible_inventory") or str(INVENTORY)
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
        for name in ("mx1.example.test", "mx2.example.net", "dns.lab")
    }
