"""Fixtures of the deliverability scenario's tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
import testinfra
import yaml

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


def playbook(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run playbooks/NAME on the lab inventory from the controller; asserts success."""
    ansible_playbook = shutil.which("ansible-playbook")
    assert ansible_playbook
    result = subprocess.run(
        [ansible_playbook, "-i", str(INVENTORY), str(ROOT / "playbooks" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


# -- DNS updates to the lab's Knot ---------------------------------------------------------------

_NET_FILE = ROOT / ".lab" / "lab.json"
# The lab's network (scripts/labctl.py net): the default lab's without the file.
LAB_NET: dict[str, str] = (
    json.loads(_NET_FILE.read_text())
    if _NET_FILE.is_file()
    else {"prefix": "198.51.100", "dns": "198.51.100.2"}
)
WRONG_TLSA = "3 1 1 " + "00" * 32


def lab_group_vars() -> dict[str, Any]:
    """inventories/lab/group_vars/all.yml, untemplated."""
    data: dict[str, Any] = yaml.safe_load(
        (ROOT / "inventories" / "lab" / "group_vars" / "all.yml").read_text()
    )
    return data


def nsupdate(zone: str, action: str, name: str, rdata: str) -> None:
    """An RFC 2136 update to the lab's Knot with the lab's TSIG key."""
    keyring = dns.tsigkeyring.from_text({"lab-update.": lab_group_vars()["lab_tsig_secret"]})
    update = dns.update.UpdateMessage(zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
    if action == "add":
        update.add(name, 60, "TLSA", rdata)
    else:
        update.delete(name, "TLSA", rdata)
    reply = dns.query.tcp(update, LAB_NET["dns"], timeout=10)
    assert reply.rcode() == dns.rcode.NOERROR, reply


@pytest.fixture
def unsigned_zone_tlsa() -> Iterator[str]:
    """A wrong TLSA record at _25._tcp.mx1.example.test (unsigned zone), for
    the length of the test: a DANE client must ignore it (rfc7672:2.2)."""
    name = "_25._tcp.mx1.example.test."
    nsupdate("example.test", "add", name, WRONG_TLSA)
    try:
        yield name
    finally:
        nsupdate("example.test", "delete", name, WRONG_TLSA)
