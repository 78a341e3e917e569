"""The lab the deliverability scenario runs on: where the repository, the
inventory and the lab's network are, and the mail hosts with their domain,
address and account. Shared by the scenario's tests (and their conftest)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

ROOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
INVENTORY = ROOT / "inventories" / "lab"
PEBBLE_ROOT = ROOT / ".lab" / "ca" / "pebble-root.pem"
# The DS records of the lab's signed zones (playbooks/lab.yml writes them).
TRUST_ANCHORS = ROOT / ".lab" / "trust-anchors.json"
# inventories/lab/group_vars/all.yml, untemplated (the TSIG key of the lab's Knot).
LAB_VARS = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())
# The network of this clone's lab (scripts/labctl.py net writes .lab/lab.json),
# the default lab's without it: Molecule runs the default lab, and a lab of
# another LAB_NAME can run these tests too, given an inventory of its addresses
# (--ansible-inventory).
_NET_FILE = ROOT / ".lab" / "lab.json"
LAB_NET = (
    json.loads(_NET_FILE.read_text())
    if _NET_FILE.exists()
    else {"prefix": "198.51.100", "dns": "198.51.100.2", "bridge": "br-lab"}
)
LAB_DNS = LAB_NET["dns"]


def lab_address(host_number: int | str) -> str:
    """The lab's address ending in ``host_number`` (10 is mx1's)."""
    return f"{LAB_NET['prefix']}.{host_number}"


# The mail hosts of the lab inventory: name, domain, address, account. The
# addresses are those of molecule/deliverability/hosts.yml (the default lab's;
# the lab inventory's own are templates) in this lab's network.
_HOSTS = yaml.safe_load((ROOT / "molecule" / "deliverability" / "hosts.yml").read_text())
MAIL_HOSTS = {}
for _name in ("mx1.example.test", "mx2.example.net"):
    _vars = yaml.safe_load((INVENTORY / "host_vars" / f"{_name}.yml").read_text())
    _literal = _HOSTS["all"]["children"]["mail_servers"]["hosts"][_name]["ansible_host"]
    MAIL_HOSTS[_name] = {
        "domain": _vars["estafeta__domains"][0],
        "address": lab_address(_literal.rsplit(".", 1)[1]),
        "account": _vars["verify__account"]["address"],
        "password": _vars["lab_password"],
        # Where the host takes DMARC aggregate reports in (the rua= of its domain).
        "dmarc_address": _vars["estafeta__reports_dmarc_address"],
    }
