"""Tests of scripts/labctl.py's pure parts and of the lab inventories'
addresses, without booting a lab (issue 19 §8):

- a lab name gives a bridge, a /24, machine names; the default lab stays
  br-lab on 198.51.100.0/24, other names get distinct networks;
- a network the machine already routes elsewhere is refused;
- the /etc/hosts block: added, replaced, removed, other labs' blocks and
  everything else kept byte for byte, names another lab has left out;
- inventories/lab and inventories/molecule take every address (hosts, A and
  PTR records, SPF, the blocklist entry, stub zones, SSH source, checks)
  from .lab/lab.json as labctl writes it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def load_labctl(env: dict[str, str] | None = None) -> ModuleType:
    """A fresh import of scripts/labctl.py (module constants read the environment)."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        spec = importlib.util.spec_from_file_location("labctl", ROOT / "scripts" / "labctl.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["labctl"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        os.environ.clear()
        os.environ.update(saved)


labctl = load_labctl()


# -- names and networks ---------------------------------------------------------------------------


def test_default_lab_is_unchanged() -> None:
    net = labctl.make_net("lab")
    assert net.bridge == "br-lab"
    assert str(net.subnet) == "198.51.100.0/24"
    assert (net.gateway, net.dns) == ("198.51.100.1", "198.51.100.2")
    assert net.machine("mx1") == "mx1"
    assert net.as_json()["reverse_zone"] == "100.51.198.in-addr.arpa"


def test_other_names_get_their_own_bridge_network_and_machines() -> None:
    names = ["a", "b", "c", "lab2", "alice", "bob", "ci", "z9", "abcdefgh"]
    nets = [labctl.make_net(n) for n in names]
    subnets = {str(n.subnet) for n in nets}
    assert len(subnets) == len(names)  # distinct for these names
    assert "198.51.100.0/24" not in subnets
    for net in nets:
        assert net.subnet.prefixlen == 24 and net.subnet.is_private
        assert net.subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
        assert 200 <= int(str(net.subnet.network_address).split(".")[1]) < 250
        assert net.bridge == f"br-{net.name}" and len(net.bridge) <= 15
        assert net.machine("mx1") == f"{net.name}-mx1"
        assert len(f"vb-{net.machine('dns')}") <= 15
        # Deterministic: the same name, the same network, in every clone.
        assert labctl.make_net(net.name) == net
    b = labctl.make_net("b").as_json()
    prefix = b["prefix"]
    assert b["gateway"] == f"{prefix}.1" and b["dns"] == f"{prefix}.2"
    assert b["reverse_zone"] == ".".join(reversed(prefix.split("."))) + ".in-addr.arpa"


@pytest.mark.parametrize("name", ["", "Lab", "my-lab", "abcdefghi", "1lab", "la b", "lab/x"])
def test_bad_lab_names_are_refused(name: str) -> None:
    with pytest.raises(SystemExit, match="lab name"):
        labctl.make_net(name)


def test_lab_subnet_overrides_the_derived_network() -> None:
    net = labctl.make_net("b", "172.30.7.0/24")
    assert (str(net.subnet), net.gateway, net.bridge) == ("172.30.7.0/24", "172.30.7.1", "br-b")
    for bad, why in [
        ("172.30.0.0/16", "/24"),
        ("8.8.8.0/24", "private or test"),
        ("127.0.5.0/24", "not a network"),
        ("10.1.2.3/24", "host bits"),
        ("nonsense", "LAB_SUBNET"),
    ]:
        with pytest.raises(SystemExit, match=why):
            labctl.make_net("b", bad)


def test_name_and_subnet_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAB_NAME", raising=False)
    monkeypatch.delenv("LAB_SUBNET", raising=False)
    assert labctl.net_from_env() == labctl.make_net("lab")
    monkeypatch.setenv("LAB_NAME", "b")
    assert labctl.net_from_env() == labctl.make_net("b")
    monkeypatch.setenv("LAB_SUBNET", "10.99.1.0/24")
    assert str(labctl.net_from_env().subnet) == "10.99.1.0/24"
    assert labctl.net_from_json(labctl.net_from_env().as_json()) == labctl.net_from_env()


def test_routes_that_overlap_the_lab_network_are_conflicts() -> None:
    net = labctl.make_net("b", "10.99.1.0/24")
    routes: list[dict[str, object]] = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"dst": "10.99.2.0/24", "dev": "br-c"},
    ]
    assert labctl.route_conflicts(net, routes, own_bridge=False) == []
    ours = [*routes, {"dst": "10.99.1.0/24", "dev": "br-b"}]
    assert labctl.route_conflicts(net, ours, own_bridge=True) == []
    # The same route while br-b is not ours (it does not exist): someone else's.
    assert labctl.route_conflicts(net, ours, own_bridge=False) == ["10.99.1.0/24 dev br-b"]
    wide = [*routes, {"dst": "10.0.0.0/8", "dev": "wg0"}, {"dst": "10.99.1.7", "dev": "tun0"}]
    assert labctl.route_conflicts(net, wide, own_bridge=True) == [
        "10.0.0.0/8 dev wg0",
        "10.99.1.7 dev tun0",
    ]


def test_host_addresses_must_be_in_the_lab_network() -> None:
    net = labctl.make_net("b", "10.99.1.0/24")
    labctl.check_spec(net, "mx1", "10.99.1.10")
    for ip in ["198.51.100.10", "10.99.1.1", "10.99.1.0", "10.99.1.255"]:
        with pytest.raises(SystemExit, match="not a host address of lab 'b'"):
            labctl.check_spec(net, "mx1", ip)
    with pytest.raises(SystemExit, match="not an IPv4 address"):
        labctl.check_spec(net, "mx1", "mx1.example.test")


def test_parse_spec() -> None:
    assert labctl.parse_spec("mx1=10.99.1.10:mx1.example.test") == (
        "mx1",
        "10.99.1.10",
        "mx1.example.test",
    )
    assert labctl.parse_spec("dns=10.99.1.2") == ("dns", "10.99.1.2", "dns")
    with pytest.raises(SystemExit):
        labctl.parse_spec("mx1")


# -- state paths ----------------------------------------------------------------------------------


def test_state_lives_in_the_clone_and_the_image_cache_can_be_shared(tmp_path: Path) -> None:
    assert labctl.LAB == ROOT / ".lab"
    assert labctl.NET_FILE == ROOT / ".lab" / "lab.json"
    assert labctl.STATE == ROOT / ".lab" / "state.json"
    assert labctl.CACHE == ROOT / ".cache" / "lab"
    assert f"estafeta-lab {ROOT}" == labctl.OWNER
    shared = load_labctl({"LAB_IMAGE_CACHE": str(tmp_path)})
    assert tmp_path == shared.CACHE
    assert shared.image_dir().parent == tmp_path
    assert shared.LAB == ROOT / ".lab"  # the running lab stays per clone


# -- /etc/hosts -----------------------------------------------------------------------------------

SYSTEM = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# a comment\n192.0.2.9 files.example\n"
A = [("10.210.36.10", "mx1.example.test"), ("10.210.36.2", "dns.lab")]
B = [("10.216.123.10", "mx1.example.test"), ("10.216.123.2", "dns.lab")]


def test_hosts_block_is_added_replaced_and_removed() -> None:
    with_a = labctl.edit_hosts(SYSTEM, "a", A)
    assert with_a.startswith(SYSTEM)
    block = with_a[len(SYSTEM) :].splitlines()
    assert block[0] == "# BEGIN estafeta lab a" and block[-1] == "# END estafeta lab a"
    assert block[2:-1] == ["10.210.36.10 mx1.example.test", "10.210.36.2 dns.lab"]
    # Again: the same text; another lab's block goes after it.
    assert labctl.edit_hosts(with_a, "a", A) == with_a
    both = labctl.edit_hosts(with_a, "b", B)
    assert both.startswith(with_a) and "# BEGIN estafeta lab b" in both
    # New addresses for a: its block is replaced, b's kept.
    moved = labctl.edit_hosts(both, "a", [("10.210.36.11", "mx1.example.test")])
    assert "10.210.36.10" not in moved and "10.210.36.11 mx1.example.test" in moved
    assert "10.216.123.10 mx1.example.test" in moved
    # Down in a: only b's block is left; down in b: the file as it was.
    only_b = labctl.edit_hosts(moved, "a", [])
    assert "estafeta lab a" not in only_b and only_b.startswith(SYSTEM)
    assert labctl.edit_hosts(only_b, "b", []) == SYSTEM


def test_hosts_block_keeps_a_file_without_final_newline() -> None:
    text = "127.0.0.1 localhost"
    added = labctl.edit_hosts(text, "a", A)
    assert added.startswith("127.0.0.1 localhost\n# BEGIN estafeta lab a\n")
    assert labctl.edit_hosts(added, "a", []) == "127.0.0.1 localhost\n"
    # A lab name that is a prefix of another's does not touch the other's block.
    ab = labctl.edit_hosts(labctl.edit_hosts(text, "ab", B), "a", A)
    assert labctl.edit_hosts(ab, "a", []).count("# BEGIN estafeta lab ab") == 1


def test_names_another_line_has_are_left_out() -> None:
    with_a = labctl.edit_hosts(SYSTEM, "a", A)
    assert labctl.hosts_entries(SYSTEM, "b", B) == (B, [])
    assert labctl.hosts_entries(with_a, "a", A) == (A, [])  # its own block is no conflict
    kept, warnings = labctl.hosts_entries(with_a, "b", [*B, ("10.216.123.11", "mx2.example.net")])
    assert kept == [("10.216.123.11", "mx2.example.net")]
    assert warnings == [
        "mx1.example.test is 10.210.36.10 in the hosts file (another lab?), not this lab's "
        "10.216.123.10: left out",
        "dns.lab is 10.210.36.2 in the hosts file (another lab?), not this lab's "
        "10.216.123.2: left out",
    ]
    # Several names on a line: only the taken one goes.
    kept, _ = labctl.hosts_entries(with_a, "b", [("10.216.123.10", "mx1.example.test mx1")])
    assert kept == [("10.216.123.10", "mx1")]


def test_hosts_file_is_edited_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(SYSTEM)
    inode = hosts.stat().st_ino
    monkeypatch.setenv("LAB_HOSTS_FILE", str(hosts))
    net = labctl.make_net("a", "10.210.36.0/24")
    state = {"mx1": {"pid": 1, "ip": "10.210.36.10", "fqdn": "mx1.example.test"}}
    assert labctl.update_hosts_file(net, state) == []
    assert (
        "10.210.36.10 mx1.example.test mta-sts.example.test autoconfig.example.test"
        " autodiscover.example.test webmail.example.test\n# END estafeta lab a\n"
    ) in hosts.read_text()
    assert hosts.stat().st_ino == inode  # a bind-mounted /etc/hosts cannot be renamed over
    # Lab b, with a: its mx1 is left out while a has the name ...
    other = labctl.make_net("b", "10.216.123.0/24")
    state_b = {
        "mx1": {"pid": 2, "ip": "10.216.123.10", "fqdn": "mx1.example.test"},
        "mx2": {"pid": 3, "ip": "10.216.123.11", "fqdn": "mx2.example.net"},
    }
    warnings = labctl.update_hosts_file(other, state_b)
    # mx1.example.test and its four service names.
    assert len(warnings) == 5 and warnings[0].startswith("mx1.example.test is 10.210.36.10")
    assert hosts.read_text().count("mx1.example.test") == 1
    # ... a goes down, b's next up takes the name.
    assert labctl.update_hosts_file(net, {}) == []
    assert labctl.update_hosts_file(other, state_b) == []
    assert hosts.read_text() == labctl.edit_hosts(
        SYSTEM,
        "b",
        [
            ("10.216.123.10", labctl.host_names("mx1.example.test")),
            ("10.216.123.11", labctl.host_names("mx2.example.net")),
        ],
    )
    # Unwritable: a warning, not a failure; no file at all: nothing done.
    monkeypatch.setenv("LAB_HOSTS_FILE", str(tmp_path / "missing" / "hosts"))
    assert "could not update" in labctl.update_hosts_file(net, state)[0]
    monkeypatch.setenv("LAB_HOSTS_FILE", "")
    assert labctl.update_hosts_file(net, state) == []


# -- the inventories read the lab's network -------------------------------------------------------

PROBE = """
- name: Show the lab addresses
  hosts: all
  gather_facts: false
  tasks:
    - name: Show them
      ansible.builtin.debug:
        msg:
          ansible_host: "{{ ansible_host }}"
          ssh: "{{ firewall__ssh_allow }}"
          ipv4: "{{ dns_records__ipv4 | default(None) }}"
          zones: "{{ lab_dns__zones | default(None) }}"
          stubs: "{{ resolver__stub_zones | default(None) }}"
          nsupdate: "{{ dns_records__nsupdate_server | default(None) }}"
          acme: "{{ tls__acme_directory | default(None) }}"
          pebble_dns: "{{ lab_acme__dns_server | default(None) }}"
          verify_address: "{{ verify__address | default(None) }}"
          verify_resolve: "{{ verify__resolve | default(None) }}"
"""


def probe(
    inventory: str, tmp_path: Path, net: dict[str, str] | None, lab_name: str = ""
) -> tuple[int, dict[str, dict[str, Any]], str]:
    """The inventory's addresses per host, with ``net`` as .lab/lab.json of a
    repository root at tmp_path/root (MOLECULE_PROJECT_DIRECTORY)."""
    root = tmp_path / "root"
    (root / ".lab").mkdir(parents=True, exist_ok=True)
    if net is not None:
        (root / ".lab" / "lab.json").write_text(json.dumps(net))
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PROBE)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_FILTER_PLUGINS": str(ROOT / "filter_plugins"),
        "MOLECULE_PROJECT_DIRECTORY": str(root),
        "LAB_NAME": lab_name,
    }
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(ROOT / "inventories" / inventory), str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if not result.stdout.strip():
        return result.returncode, {}, result.stderr
    output = json.loads(result.stdout)
    hosts = output["plays"][0]["tasks"][0]["hosts"]
    return result.returncode, {h: r.get("msg", r) for h, r in hosts.items()}, result.stderr


def lab_records(zones: list[dict[str, Any]]) -> dict[str, list[tuple[str, str, str]]]:
    return {z["name"]: [(r["name"], r["type"], r["value"]) for r in z["records"]] for z in zones}


@pytest.mark.parametrize("name", ["lab", "b"])
def test_lab_inventory_follows_the_lab_network(name: str, tmp_path: Path) -> None:
    net = labctl.make_net(name).as_json()
    p, rev = net["prefix"], net["reverse_prefix"]
    rc, hosts, stderr = probe("lab", tmp_path, net, lab_name=name)
    assert rc == 0, stderr
    assert {h: v["ansible_host"] for h, v in hosts.items()} == {
        "dns.lab": f"{p}.2",
        "mx1.example.test": f"{p}.10",
        "mx2.example.net": f"{p}.11",
    }
    mx1, mx2 = hosts["mx1.example.test"], hosts["mx2.example.net"]
    assert mx1["ssh"] == [f"{p}.1"]
    assert (mx1["ipv4"], mx2["ipv4"]) == ([f"{p}.10"], [f"{p}.11"])  # SPF's ip4 and the A checks
    assert (mx1["verify_address"], mx2["verify_address"]) == (f"{p}.10", f"{p}.11")
    assert mx1["nsupdate"] == f"{p}.2" and mx1["acme"] == f"https://{p}.2:14000/dir"
    assert hosts["dns.lab"]["pebble_dns"] == f"{p}.2:53"
    records = lab_records(mx1["zones"])
    assert records["example.test"] == [("ns1", "A", f"{p}.2"), ("mx1", "A", f"{p}.10")]
    assert records["example.net"] == [("ns1", "A", f"{p}.2"), ("mx2", "A", f"{p}.11")]
    assert records[f"{rev}.in-addr.arpa"] == [
        ("2", "PTR", "ns1.example.test."),
        ("10", "PTR", "mx1.example.test."),
        ("11", "PTR", "mx2.example.net."),
    ]
    listed = {r[0] for r in records["dnsbl.test"] if r[1] == "A"}
    assert listed == {"2.0.0.127", f"66.{rev}"}
    assert {z["name"]: z["addresses"] for z in mx1["stubs"]} == {
        "example.test": [f"{p}.2"],
        "example.net": [f"{p}.2"],
        f"{rev}.in-addr.arpa": [f"{p}.2"],
        "dnsbl.test": [f"{p}.2"],
    }
    assert mx1["verify_resolve"] == [
        {"name": f"66.{rev}.dnsbl.test", "type": "A", "expect": "127.0.0.2"},
        {"name": "mx2.example.net", "type": "A", "expect": f"{p}.11"},
    ]


def test_lab_inventory_without_lab_json(tmp_path: Path) -> None:
    # No lab started yet: the default lab's addresses ...
    rc, hosts, stderr = probe("lab", tmp_path, None)
    assert rc == 0, stderr
    assert hosts["mx1.example.test"]["ansible_host"] == "198.51.100.10"
    # ... unless LAB_NAME names another lab: then say what to do.
    rc, hosts, stderr = probe("lab", tmp_path, None, lab_name="b")
    assert rc != 0
    assert "run make lab-up" in json.dumps(hosts) + stderr


def test_molecule_inventory_is_the_default_lab(tmp_path: Path) -> None:
    # Written out for Molecule's testinfra verifier, which does not template.
    net = labctl.make_net("lab").as_json()
    rc, hosts, stderr = probe("molecule", tmp_path, net, lab_name="lab")
    assert rc == 0, stderr
    assert hosts["mx1.example.test"]["ansible_host"] == f"{net['prefix']}.10"
    assert hosts["mx1.example.test"]["ssh"] == [net["gateway"]]


def test_deliverability_hosts_are_the_default_labs(tmp_path: Path) -> None:
    """molecule/deliverability/hosts.yml is inventories/lab/hosts.yml for the default lab."""
    net = labctl.make_net("lab").as_json()
    rc, lab_hosts, stderr = probe("lab", tmp_path, net, lab_name="lab")
    assert rc == 0, stderr
    literal = yaml.safe_load((ROOT / "molecule" / "deliverability" / "hosts.yml").read_text())
    templated = yaml.safe_load((ROOT / "inventories" / "lab" / "hosts.yml").read_text())

    children = literal["all"]["children"]
    assert children.keys() == templated["all"]["children"].keys()
    wanted = {
        "mail_servers": ["mx1.example.test", "mx2.example.net"],
        "lab_dns_servers": ["dns.lab"],
    }
    for group, hosts in wanted.items():
        assert sorted(children[group]["hosts"]) == sorted(
            templated["all"]["children"][group]["hosts"]
        )
        for host in hosts:
            assert children[group]["hosts"][host]["ansible_host"] == lab_hosts[host]["ansible_host"]


@pytest.mark.parametrize("inventory", ["lab", "molecule"])
def test_inventory_default_network_is_labctls(inventory: str) -> None:
    """The fallback in the inventory (no .lab/lab.json) is the default lab of labctl."""
    group = yaml.safe_load(
        (ROOT / "inventories" / inventory / "group_vars" / "all.yml").read_text()
    )
    default = labctl.make_net("lab").as_json()
    assert group["lab__net_default"] == {k: default[k] for k in group["lab__net_default"]}
    assert set(group["lab__net_default"]) >= {"name", "prefix", "gateway", "dns", "reverse_zone"}


def test_mail_hosts_bring_their_service_names() -> None:
    assert labctl.host_names("mx1.example.test") == (
        "mx1.example.test mta-sts.example.test autoconfig.example.test autodiscover.example.test"
        " webmail.example.test"
    )
    assert labctl.host_names("dns.lab") == "dns.lab"
    assert labctl.host_names("mx9") == "mx9"
