"""Fixtures of the deliverability scenario's tests (the lab in lab_hosts.py)."""

from __future__ import annotations

import pytest
import testinfra
from lab_hosts import INVENTORY, MAIL_HOSTS


@pytest.fixture(scope="module")
def hosts(pytestconfig: pytest.Config) -> dict[str, object]:
    inventory = pytestconfig.getoption("ansible_inventory") or str(INVENTORY)
    return {
        name: testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)
        for name in (*MAIL_HOSTS, "dns.lab")
    }
