"""The firewall role for real, in a network namespace of this machine.

Each test that loads rules makes its own namespace (``ip netns add``) and
runs ``ansible-playbook`` inside it (``ip netns exec``), with a local
connection and the role's files in a temporary directory, so every ``nft``
the role runs sees only that namespace: the machine's own firewall is never
touched.

- acceptance 3 of issue 19: a namespace with foreign tables (a Docker-like
  forward chain, a fail2ban-like table with a set) keeps them, byte for byte,
  after two runs of the role; our table has the expected rules (replies
  first, SSH from firewall__ssh_allow, the mail ports, no forward chain); the
  second run changes nothing; when our table goes missing, the next run
  loads it again and changes nothing else;
- the SSH guard: with SSH_CONNECTION of a session that the ruleset would not
  let in again (wrong address, or sshd on another port), the role fails
  naming the address and the port, and neither writes the file nor loads
  anything; the checker itself is tested on a table of cases;
- firewall__flush_ruleset (opt-in) does remove the foreign tables;
- no forward chain unless firewall__forward_policy is set;
- Debian's default /etc/nftables.conf (``flush ruleset``) and the file older
  versions of the role wrote are replaced, an administrator's own is kept;
- the boot unit runs after nftables.service and systemd-analyze accepts it.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_roles import ROOT, changed_tasks, failures, run_playbook, task_results

PYTHON = str(ROOT / ".venv" / "bin" / "python")
GUARD = ROOT / "roles" / "firewall" / "files" / "ssh_guard.py"

# What the namespace holds before the role runs: tables of other software.
FOREIGN = """\
table ip docker_like {
	chain x {
		type filter hook forward priority 0; policy accept;
	}
}
table inet f2b_like {
	set addr-set-sshd {
		type ipv4_addr
		elements = { 192.0.2.9 }
	}
	chain f2b-chain {
		type filter hook input priority filter - 1; policy accept;
		tcp dport 22 ip saddr @addr-set-sshd reject
	}
}
"""

# Debian 12's /etc/nftables.conf as the nftables package ships it.
DEBIAN_NFTABLES_CONF = """\
#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
"""

# What the role wrote into /etc/nftables.conf before it kept to its own table.
OLD_ROLE_NFTABLES_CONF = """\
#!/usr/sbin/nft -f
#
# Ansible managed
#

flush ruleset

table inet estafeta {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
	}
}
"""

PLAYBOOK = """
- name: Apply the firewall role
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - firewall
"""


def load_guard() -> Any:
    spec = importlib.util.spec_from_file_location("ssh_guard", GUARD)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the SSH guard's checker ----------------------------------------------------------------------

SSH = {
    "comment": "ssh",
    "proto": "tcp",
    "ports": [22],
    "sources": ["198.51.100.0/24", "2001:db8::/48"],
}
MAIL = {"comment": "mail", "proto": "tcp", "ports": [25, 587], "sources": []}
UDP = {"comment": "dns", "proto": "udp", "ports": [22], "sources": []}
EXTRA = {"comment": "admin", "ports": [2222], "sources": ["203.0.113.7"]}


@pytest.mark.parametrize(
    ("connection", "rules", "allowed", "rule"),
    [
        ("198.51.100.1 50000 198.51.100.10 22", [SSH], True, "ssh"),
        ("203.0.113.5 50000 198.51.100.10 22", [SSH, MAIL], False, None),
        # Another port than the rules open (sshd on 2222).
        ("198.51.100.1 50000 198.51.100.10 2222", [SSH], False, None),
        # ... unless an extra rule opens it to this address (proto tcp by default).
        ("203.0.113.7 50000 198.51.100.10 2222", [SSH, EXTRA], True, "admin"),
        ("203.0.113.8 50000 198.51.100.10 2222", [SSH, EXTRA], False, None),
        # IPv6 inside and outside the network.
        ("2001:db8:0:1::5 50000 2001:db8:1::10 22", [SSH], True, "ssh"),
        ("2001:db8:ffff::5 50000 2001:db8:1::10 22", [SSH], False, None),
        # An IPv4 client seen through an IPv6 socket is IPv4 on the wire.
        ("::ffff:198.51.100.1 50000 ::ffff:198.51.100.10 22", [SSH], True, "ssh"),
        # A link-local client with a zone index.
        ("fe80::1%eth0 50000 fe80::2%eth0 22", [SSH], False, None),
        # A rule for everyone on the port.
        ("203.0.113.5 50000 198.51.100.10 25", [SSH, MAIL], True, "mail"),
        # UDP rules do not carry SSH.
        ("203.0.113.5 50000 198.51.100.10 22", [UDP], False, None),
        # Loopback and the host's own address pass "iif lo".
        ("127.0.0.1 50000 127.0.0.1 22", [], True, "loopback"),
        ("::1 50000 ::1 22", [], True, "loopback"),
        ("198.51.100.10 50000 198.51.100.10 22", [], True, "loopback"),
        # No rule at all (SSH closed).
        ("198.51.100.1 50000 198.51.100.10 22", [], False, None),
    ],
)
def test_the_guard_checks_address_and_port_against_the_rules(
    connection: str, rules: list[dict[str, Any]], allowed: bool, rule: str | None
) -> None:
    verdict = load_guard().check(connection, rules)
    assert verdict["allowed"] is allowed
    assert verdict["rule"] == rule
    assert verdict["port"] == int(connection.split()[3])


def test_the_guard_exits_2_on_bad_input() -> None:
    for spec in ["{", json.dumps({"ssh_connection": "1.2.3.4 22", "rules": []}), "{}"]:
        ran = subprocess.run(
            [PYTHON, str(GUARD), spec], capture_output=True, text=True, check=False
        )
        assert ran.returncode == 2, (spec, ran.stdout)
        assert "error" in json.loads(ran.stdout)


# -- the role in a network namespace -------------------------------------------------------------


def netns_usable() -> bool:
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        return False
    name = f"estafeta-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    try:
        probe = subprocess.run(
            ["ip", "netns", "exec", name, "nft", "list", "ruleset"], capture_output=True
        )
        return probe.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


needs_netns = pytest.mark.skipif(
    not netns_usable(), reason="needs root, nft (Debian package nftables) and ip netns"
)
_counter = itertools.count()


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of its own, with the foreign tables loaded."""
    name = f"estafeta-fw-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        nft(name, "-f", "-", stdin=FOREIGN)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def nft(namespace: str, *args: str, stdin: str | None = None) -> str:
    ran = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def ruleset(namespace: str) -> list[dict[str, Any]]:
    """`nft -j list ruleset` of the namespace, without the metainfo."""
    items = json.loads(nft(namespace, "-j", "list", "ruleset"))["nftables"]
    return [item for item in items if "metainfo" not in item]


def of_table(items: list[dict[str, Any]], family: str, table: str) -> list[dict[str, Any]]:
    """The objects (table, sets, chains, rules) of one table."""
    found = []
    for item in items:
        ((kind, body),) = item.items()
        name = body["name"] if kind == "table" else body.get("table")
        if body.get("family") == family and name == table:
            found.append(item)
    return found


def foreign(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_table(items, "ip", "docker_like") + of_table(items, "inet", "f2b_like")


def role_vars(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    nftables_conf = tmp_path / "nftables.conf"
    if not nftables_conf.exists():
        nftables_conf.write_text(DEBIAN_NFTABLES_CONF)
        nftables_conf.chmod(0o755)
    return {
        "ansible_python_interpreter": PYTHON,
        "firewall__config_path": str(tmp_path / "nftables.d" / "estafeta.nft"),
        "firewall__nftables_conf_path": str(nftables_conf),
        "firewall__boot_load": False,
        **extra,
    }


def run_in(
    namespace: str,
    tmp_path: Path,
    variables: dict[str, Any],
    ssh_connection: str | None = None,
    playbook: str = PLAYBOOK,
) -> tuple[int, dict[str, Any], str]:
    """ansible-playbook inside the namespace; SSH_CONNECTION as given (else none)."""
    path = tmp_path / f"playbook-{next(_counter)}.yml"
    path.write_text(playbook)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")
    }
    if ssh_connection is not None:
        env["SSH_CONNECTION"] = ssh_connection
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_NOCOLOR="1",
    )
    playbook_bin = shutil.which("ansible-playbook")
    assert playbook_bin, "ansible-playbook not on PATH (run with .venv/bin on PATH)"
    command = ["ip", "netns", "exec", namespace, playbook_bin, str(path), "-i", "localhost,"]
    command += ["--extra-vars", json.dumps(variables)]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON:\n{result.stdout}\n{result.stderr}") from None
    return result.returncode, output, result.stderr


def rule_texts(namespace: str) -> list[str]:
    """The rules of our input chain as nft prints them, one per line."""
    listed = nft(namespace, "list", "chain", "inet", "estafeta", "input")
    lines = [line.strip() for line in listed.splitlines()]
    return [line for line in lines if line and not line.startswith(("table", "chain", "type", "}"))]


@needs_netns
def test_a_foreign_table_survives_and_the_second_run_changes_nothing(
    netns: str, tmp_path: Path
) -> None:
    before = ruleset(netns)
    assert len(foreign(before)) == 6 and len(before) == 6, before
    variables = role_vars(tmp_path, firewall__ssh_allow=["198.51.100.1", "2001:db8:ffff::/48"])
    session = "198.51.100.1 40000 198.51.100.10 22"

    rc, output, stderr = run_in(netns, tmp_path, variables, ssh_connection=session)
    assert rc == 0, failures(output) or stderr
    changed = changed_tasks(output)
    for task in (
        "Write the nftables ruleset",
        "Load the ruleset in one transaction",
        "Replace an nftables.conf that flushes the whole ruleset",
    ):
        assert f"localhost: firewall : {task}" in changed, changed
    after = ruleset(netns)
    # The foreign tables are exactly as they were (handles included).
    assert foreign(after) == foreign(before)

    ours = of_table(after, "inet", "estafeta")
    chains = {item["chain"]["name"]: item["chain"] for item in ours if "chain" in item}
    assert sorted(chains) == ["input"], "a forward or output chain nobody asked for"
    assert chains["input"]["hook"] == "input" and chains["input"]["policy"] == "drop"
    rules = rule_texts(netns)
    assert rules[0] == "ct state established,related accept"
    assert 'ip saddr 198.51.100.1 tcp dport 22 accept comment "ssh"' in rules
    assert 'ip6 saddr 2001:db8:ffff::/48 tcp dport 22 accept comment "ssh"' in rules
    assert 'tcp dport { 25, 143, 465, 587, 993, 4190 } accept comment "mail"' in rules
    assert sum("ssh rate limit" in rule for rule in rules) == 2
    # The table's comment is the fingerprint the role compares.
    listed = nft(netns, "--terse", "list", "table", "inet", "estafeta")
    assert re.search(r'comment "estafeta sha256:[0-9a-f]{64}"', listed), listed
    # Debian's nftables.conf flushes everything: replaced by one that does not.
    conf = (tmp_path / "nftables.conf").read_text()
    assert "flush ruleset" not in conf.replace("`flush ruleset`", "")
    nft(netns, "-c", "-f", str(tmp_path / "nftables.conf"))

    # The second run changes nothing and reloads nothing.
    rc, output, stderr = run_in(netns, tmp_path, variables, ssh_connection=session)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []
    assert ruleset(netns) == after

    # Someone removes our table: the next run loads it again, and only that.
    nft(netns, "delete", "table", "inet", "estafeta")
    rc, output, stderr = run_in(netns, tmp_path, variables, ssh_connection=session)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == ["localhost: firewall : Load the ruleset in one transaction"]
    again = ruleset(netns)
    assert foreign(again) == foreign(before)
    assert rule_texts(netns) == rules


@needs_netns
@pytest.mark.parametrize(
    ("session", "allow", "client", "port"),
    [
        # The controller's address is not in firewall__ssh_allow.
        ("203.0.113.5 50000 198.51.100.10 22", ["198.51.100.0/24"], "203.0.113.5", 22),
        # Everyone may reach port 22, but sshd listens on 2222.
        ("198.51.100.1 50000 198.51.100.10 2222", ["0.0.0.0/0", "::/0"], "198.51.100.1", 2222),
        # SSH closed altogether.
        ("2001:db8::5 50000 2001:db8::10 22", [], "2001:db8::5", 22),
    ],
)
def test_the_guard_refuses_a_ruleset_that_cuts_off_the_session(
    netns: str, tmp_path: Path, session: str, allow: list[str], client: str, port: int
) -> None:
    before = ruleset(netns)
    variables = role_vars(tmp_path, firewall__ssh_allow=allow)
    rc, output, _ = run_in(netns, tmp_path, variables, ssh_connection=session)
    assert rc != 0
    failed = [(name, result) for name, _, result in task_results(output) if result.get("failed")]
    assert [name for name, _ in failed] == [
        "firewall : Refuse a ruleset that would cut off the SSH connection"
    ]
    message = failed[0][1]["msg"]
    assert f"from {client} to TCP port {port}" in message, message
    assert "firewall__ssh_allow" in message
    # Nothing written, nothing loaded.
    assert not (tmp_path / "nftables.d" / "estafeta.nft").exists()
    assert ruleset(netns) == before


@needs_netns
def test_the_guard_is_skipped_without_an_ssh_session(netns: str, tmp_path: Path) -> None:
    # A local run has no SSH_CONNECTION: SSH closed is then allowed.
    variables = role_vars(tmp_path, firewall__ssh_allow=[])
    rc, output, stderr = run_in(netns, tmp_path, variables)
    assert rc == 0, failures(output) or stderr
    assert not any("dport 22 accept" in rule for rule in rule_texts(netns))
    assert not any("ssh rate limit" in rule for rule in rule_texts(netns))


@needs_netns
def test_flush_ruleset_is_opt_in_and_removes_every_other_table(netns: str, tmp_path: Path) -> None:
    variables = role_vars(tmp_path, firewall__flush_ruleset=True)
    rc, output, stderr = run_in(netns, tmp_path, variables)
    assert rc == 0, failures(output) or stderr
    after = ruleset(netns)
    assert foreign(after) == []
    assert of_table(after, "inet", "estafeta")


@needs_netns
@pytest.mark.parametrize("policy", ["accept", "drop"])
def test_a_forward_chain_only_when_a_policy_is_set(netns: str, tmp_path: Path, policy: str) -> None:
    before = ruleset(netns)
    variables = role_vars(tmp_path, firewall__forward_policy=policy)
    rc, output, stderr = run_in(netns, tmp_path, variables)
    assert rc == 0, failures(output) or stderr
    after = ruleset(netns)
    chains = [item["chain"] for item in of_table(after, "inet", "estafeta") if "chain" in item]
    forward = [chain for chain in chains if chain["name"] == "forward"]
    assert len(forward) == 1 and forward[0]["hook"] == "forward"
    assert forward[0]["policy"] == policy
    assert foreign(after) == foreign(before)


# -- /etc/nftables.conf and the boot unit ----------------------------------------------------------

BOOT = """
- name: Run the boot part of the firewall role
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Replace nftables.conf if it flushes the ruleset
      ansible.builtin.include_role:
        name: firewall
        tasks_from: boot.yml
"""


@needs_netns
@pytest.mark.parametrize(
    ("content", "replaced"),
    [
        (DEBIAN_NFTABLES_CONF, True),
        (OLD_ROLE_NFTABLES_CONF, True),
        ("#!/usr/sbin/nft -f\n# mine\nflush ruleset\ntable inet mine {\n}\n", False),
    ],
)
def test_nftables_conf_is_replaced_only_when_it_is_debians_or_ours(
    tmp_path: Path, content: str, replaced: bool
) -> None:
    conf = tmp_path / "nftables.conf"
    conf.write_text(content)
    variables = role_vars(tmp_path)
    rc, output, stderr = run_playbook(BOOT, tmp_path, "-i", "localhost,", extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    now = conf.read_text()
    if replaced:
        assert now != content
        assert "estafeta-firewall.service" in now and "\nflush ruleset" not in now
        assert conf.stat().st_mode & 0o777 == 0o755
    else:
        assert now == content
    # Left alone from then on.
    rc, output, stderr = run_playbook(BOOT, tmp_path, "-i", "localhost,", extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []


UNIT = """
- name: Render the boot unit of the firewall role
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: firewall
      # Only the defaults; the unit is rendered below.
      when: false
  tasks:
    - name: Write the unit
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.template', role_dir ~ '/templates/' ~ unit ~ '.j2') }}"
        dest: "{{ out }}/{{ unit }}"
        mode: "0644"
"""


def test_the_boot_unit_loads_our_file_after_nftables_service(tmp_path: Path) -> None:
    variables = {
        "ansible_python_interpreter": PYTHON,
        "role_dir": str(ROOT / "roles" / "firewall"),
        "out": str(tmp_path),
        "unit": "estafeta-firewall.service",
    }
    rc, output, stderr = run_playbook(UNIT, tmp_path, "-i", "localhost,", extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    unit = (tmp_path / "estafeta-firewall.service").read_text()
    lines = set(unit.splitlines())
    for line in (
        "After=nftables.service",
        "PartOf=nftables.service",
        "ReloadPropagatedFrom=nftables.service",
        "Before=network-pre.target shutdown.target",
        "ExecStart=/usr/sbin/nft -f /etc/nftables.d/estafeta.nft",
        "ExecStop=-/usr/sbin/nft delete table inet estafeta",
        "WantedBy=sysinit.target",
    ):
        assert line in lines, f"{line!r} not in\n{unit}"
    assert "flush" not in "\n".join(line for line in lines if line.startswith("Exec"))
    analyze = shutil.which("systemd-analyze")
    if analyze and Path("/usr/sbin/nft").exists():
        # systemd's own check; it prints each problem as "FILE:LINE: ...".
        checked = subprocess.run(
            [analyze, "verify", "--man=no", str(tmp_path / "estafeta-firewall.service")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        assert "estafeta-firewall.service:" not in checked.stderr, checked.stderr
