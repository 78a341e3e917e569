"""Fixtures and helpers of the deliverability scenario's tests: the lab's
hosts, playbooks run on it, and DNS updates to its Knot. What the lab is
(paths, network, mail hosts, variables) comes from lab_hosts.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Literal

import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
import testinfra
from lab_hosts import INVENTORY, LAB_DNS, LAB_VARS, MAIL_HOSTS, ROOT

# How Ansible reaches the lab hosts (inventories/lab/group_vars/lab_hosts.yml),
# spelled out: testinfra's ansible:// backend takes the inventory's variables
# untemplated, "{{ lab__root }}/.lab/ssh/id_ed25519" as the key file included.
SSH_KEY = ROOT / ".lab" / "ssh" / "id_ed25519"
SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


def lab_host(address: str) -> testinfra.host.Host:
    """A testinfra host for the lab host at ``address``, over SSH as root."""
    return testinfra.get_host(
        f"ssh://root@{address}", ssh_identity_file=str(SSH_KEY), ssh_extra_args=SSH_ARGS
    )


@pytest.fixture(scope="module")
def hosts() -> dict[str, testinfra.host.Host]:
    """testinfra hosts of the lab by inventory name, at this lab's addresses."""
    addresses = {name: info["address"] for name, info in MAIL_HOSTS.items()}
    return {name: lab_host(address) for name, address in {**addresses, "dns.lab": LAB_DNS}.items()}


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

_KEY_NAME = LAB_VARS["lab_dns__tsig_key_name"]
_KEYRING = dns.tsigkeyring.from_text({_KEY_NAME: LAB_VARS["lab_tsig_secret"]})
WRONG_TLSA = "3 1 1 " + "00" * 32


def records(rdtype: str, ttl: int, *values: str) -> dns.rdataset.Rdataset:
    """An RRset's records (RDTYPE, TTL, each value in presentation format)."""
    rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, value) for value in values]
    return dns.rdataset.from_rdata_list(ttl, rdatas)


def nsupdate(
    zone: str,
    name: str,
    rdtype: str,
    rdataset: dns.rdataset.Rdataset | None,
    action: Literal["replace", "add", "delete"] = "replace",
) -> None:
    """An RFC 2136 update of NAME's RDTYPE records in ZONE at the lab's Knot,
    signed with the lab's TSIG key (as the dns_records role pushes records).

    ``replace``: the RRset is deleted (rfc2136:2.5.2) and RDATASET added in
    its place (rfc2136:2.5.1), or nothing when RDATASET is None; ``add``:
    RDATASET's records join the RRset; ``delete``: just RDATASET's records
    leave it (rfc2136:2.5.4)."""
    update = dns.update.UpdateMessage(
        zone, keyring=_KEYRING, keyname=_KEY_NAME, keyalgorithm=dns.tsig.HMAC_SHA256
    )
    owner = dns.name.from_text(name)
    if rdataset is None:
        assert action == "replace", f"{action} needs the records"
        update.delete(owner, rdtype)
    else:
        assert dns.rdatatype.to_text(rdataset.rdtype) == rdtype.upper(), rdataset
        if action == "replace":
            update.replace(owner, rdataset)
        elif action == "add":
            update.add(owner, rdataset)
        else:
            update.delete(owner, rdataset)
    response = dns.query.tcp(update, LAB_DNS, timeout=10)
    assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())


@pytest.fixture
def unsigned_zone_tlsa() -> Iterator[str]:
    """A wrong TLSA record at _25._tcp.mx1.example.test (unsigned zone), for
    the length of the test: a DANE client must ignore it (rfc7672:2.2)."""
    name = "_25._tcp.mx1.example.test."
    wrong = records("TLSA", 60, WRONG_TLSA)
    nsupdate("example.test", name, "TLSA", wrong, "add")
    try:
        yield name
    finally:
        nsupdate("example.test", name, "TLSA", wrong, "delete")
