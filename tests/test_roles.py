"""Tests of the roles in roles/, run on the controller without lab hosts.

- every role documents exactly its defaults in meta/argument_specs.yml;
- a wrong-typed variable fails the argument-spec check before any task runs;
- the estafeta configuration rendered for the example and lab inventories
  passes the real ``estafeta check``, and a broken value fails the template
  task naming the key while the old file stays as it was;
- the nftables ruleset of both inventories passes ``nft -c``;
- dns_records (provider zonefile) writes the records of the example
  inventory and changes nothing on a second run;
- dns_records (provider nsupdate) publishes the example's records to a real
  knotd with TSIG, mail_dns_check finds them right, a second run changes nothing;
- tls (self_signed) changes nothing on a second run and follows new names;
- the wheelhouse fingerprint ignores zip timestamps, and estafeta installs
  from the controller's wheelhouse with no change on the second run;
- both inventories list their hosts, and every playbook passes
  ``--syntax-check`` with each of them.

Each Ansible test writes a small playbook to a temporary directory and runs
``ansible-playbook`` with the JSON callback, on localhost.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.reversename
import pytest
import trustme
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if (path / "tasks").is_dir())
VAULT_PASSWORD = ROOT / "inventories" / "example" / "vault-password.txt"
ESTAFETA = ROOT / ".venv" / "bin" / "estafeta"


def ansible_playbook() -> str:
    path = shutil.which("ansible-playbook")
    assert path, "ansible-playbook not on PATH (run with .venv/bin on PATH, as make does)"
    return path


def run_playbook(
    playbook: str,
    tmp_path: Path,
    *args: str,
    extra_vars: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """Run a playbook (YAML text); returns (rc, JSON callback output, stderr)."""
    path = tmp_path / f"playbook-{len(list(tmp_path.glob('playbook-*')))}.yml"
    path.write_text(playbook)
    command = [ansible_playbook(), str(path), *args]
    if extra_vars is not None:
        command += ["--extra-vars", json.dumps(extra_vars)]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON from ansible-playbook:\n{result.stdout}\n{result.stderr}"
        ) from None
    return result.returncode, output, result.stderr


def task_results(output: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(task name, host, result) of every task that ran, in order."""
    results = []
    for play in output["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                results.append((task["task"]["name"], host, result))
    return results


def changed_tasks(output: dict[str, Any]) -> list[str]:
    return [
        f"{host}: {name}" for name, host, result in task_results(output) if result.get("changed")
    ]


def failures(output: dict[str, Any]) -> str:
    return "\n".join(
        f"{host}: {name}: {result.get('msg')} {result.get('stderr', '')}"
        for name, host, result in task_results(output)
        if result.get("failed") and not result.get("ignore_errors")
    )


# -- argument specs ---------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_documents_every_default(role: str) -> None:
    defaults = load_yaml(ROOT / "roles" / role / "defaults" / "main.yml")
    spec = load_yaml(ROOT / "roles" / role / "meta" / "argument_specs.yml")
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults), (
        f"only in defaults: {sorted(set(defaults) - set(options))}, "
        f"only in argument_specs: {sorted(set(options) - set(defaults))}"
    )
    for name, option in options.items():
        assert name.startswith(f"{role}__"), f"{name} lacks the role prefix {role}__"
        assert option.get("type"), f"{name} has no type"
        assert option.get("description"), f"{name} has no description"
        if "default" in option:
            assert option["default"] == defaults[name], f"{name}: the spec's default differs"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_the_usual_files(role: str) -> None:
    base = ROOT / "roles" / role
    for part in ("defaults/main.yml", "meta/main.yml", "handlers/main.yml", "README.md"):
        assert (base / part).is_file(), f"roles/{role}/{part} is missing"
    readme = (base / "README.md").read_text()
    for name in load_yaml(base / "defaults" / "main.yml"):
        assert f"`{name}`" in readme, f"roles/{role}/README.md does not describe {name}"


# A wrong value for one variable of each role, and the word the message must hold.
WRONG = {
    "backup": ({"backup__keep_daily": "a week"}, "backup__keep_daily"),
    "base": ({"base__unattended_reboot": "perhaps"}, "base__unattended_reboot"),
    "dns_records": ({"dns_records__ttl": "an hour"}, "dns_records__ttl"),
    "estafeta": ({"estafeta__limits_quota": "lots"}, "estafeta__limits_quota"),
    "firewall": ({"firewall__ssh_port": "not-a-number"}, "firewall__ssh_port"),
    "lab_acme": ({"lab_acme__http_port": "eighty"}, "lab_acme__http_port"),
    "lab_dns": ({"lab_dns__zones": "example.test"}, "lab_dns__zones"),
    "lab_s3": ({"lab_s3__port": "nine thousand"}, "lab_s3__port"),
    "resolver": ({"resolver__port": "fifty-three"}, "resolver__port"),
    "rspamd": ({"rspamd__service_enabled": "perhaps"}, "rspamd__service_enabled"),
    "tls": ({"tls__mode": "magic"}, "tls__mode"),
}


def test_wrong_values_cover_every_role() -> None:
    assert sorted(WRONG) == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_wrong_type_fails_before_any_task(role: str, tmp_path: Path) -> None:
    extra, name = WRONG[role]
    playbook = f"""
- name: Apply {role} with a wrong value
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - {role}
"""
    rc, output, _ = run_playbook(playbook, tmp_path, "-i", "localhost,", extra_vars=extra)
    assert rc != 0
    ran = task_results(output)
    assert len(ran) == 1, f"tasks ran after the failed check: {[task for task, _, _ in ran]}"
    task, _, result = ran[0]
    assert task.startswith(f"{role} : Validating arguments against arg spec 'main'")
    assert result["failed"]
    assert "Validation of arguments failed" in result["msg"]
    assert name in result["msg"]


# -- the estafeta configuration ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("mx1.example.org", "mx1.example.test", "mx2.example.net")
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


RENDER_CONFIG = """
- name: Render the estafeta configuration of each mail host
  hosts: mail_servers
  connection: local
  gather_facts: false
  tasks:
    - name: Write estafeta.toml with the role's own task file
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: config.yml
"""


def config_vars(tmp_path: Path, tls_files: tuple[Path, Path]) -> dict[str, Any]:
    """Point the role's files at tmp_path and run everything as the current user."""
    return {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "estafeta__config_dir": str(tmp_path),
        "estafeta__config_path": str(tmp_path / "{{ inventory_hostname }}.toml"),
        "estafeta__data_dir": str(tmp_path / "{{ inventory_hostname }}" / "data"),
        "estafeta__executable": str(ESTAFETA),
        "estafeta__user": getpass.getuser(),
        "estafeta__group": grp.getgrgid(os.getgid()).gr_name,
        "estafeta__tls_cert": str(tls_files[0]),
        "estafeta__tls_key": str(tls_files[1]),
        "estafeta__queue_relay_password_file": str(tmp_path / "{{ inventory_hostname }}.relay"),
        "estafeta__service_state": "stopped",
    }


INVENTORIES = {
    "example": (["-i", "inventories/example", "--vault-password-file", str(VAULT_PASSWORD)], {}),
    "example-with-relay": (
        ["-i", "inventories/example", "--vault-password-file", str(VAULT_PASSWORD)],
        {
            "estafeta__queue_relay_host": "smtp.provider.example:587",
            "estafeta__queue_relay_username": "mx1@example.org",
            "estafeta__queue_relay_password": "{{ vault_estafeta__queue_relay_password }}",
        },
    ),
    "lab": (["-i", "inventories/lab"], {}),
}
HOSTS = {
    "example": ["mx1.example.org"],
    "example-with-relay": ["mx1.example.org"],
    "lab": ["mx1.example.test", "mx2.example.net"],
}


@pytest.mark.parametrize("inventory", sorted(INVENTORIES))
def test_config_of_the_inventories_passes_estafeta_check(
    inventory: str, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    assert ESTAFETA.exists(), f"{ESTAFETA} is missing (make venv)"
    args, extra = INVENTORIES[inventory]
    variables = {**config_vars(tmp_path, tls_files), **extra}
    rc, output, stderr = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    for host in HOSTS[inventory]:
        config = tmp_path / f"{host}.toml"
        check = subprocess.run(
            [str(ESTAFETA), "-c", str(config), "check"], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr
        data = tomllib.loads(config.read_text())
        assert data["hostname"] == host
        assert data["tls"] == {"cert": str(tls_files[0]), "key": str(tls_files[1])}
        assert (config.stat().st_mode & 0o777) == 0o640
        if "relay" in inventory:
            secret = Path(data["queue"]["relay"]["password_file"])
            assert secret.read_text() == "example-only-relay-password\n"
            assert (secret.stat().st_mode & 0o777) == 0o600
    assert data["domains"] == (
        ["example.org", "example.net"] if "example" in inventory else ["example.net"]
    )
    # The same run again changes nothing.
    rc, output, stderr = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []


def test_broken_value_fails_naming_the_key_and_keeps_the_file(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    args, _ = INVENTORIES["lab"]
    variables = config_vars(tmp_path, tls_files)
    rc, output, stderr = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    config = tmp_path / "mx1.example.test.toml"
    before = config.read_bytes()

    broken = {**variables, "estafeta__queue_lifetime": "5 days"}
    rc, output, _ = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=broken)
    assert rc != 0
    failed = [(name, result) for name, host, result in task_results(output) if result.get("failed")]
    assert failed, "nothing failed"
    assert all(name == "estafeta : Write estafeta.toml" for name, _ in failed), failed
    for _, result in failed:
        assert "queue.lifetime" in result.get("stderr", "") + result.get("msg", "")
    assert config.read_bytes() == before


# -- firewall ------------------------------------------------------------------------------


RENDER_RULESET = """
- name: Render the nftables ruleset of each host
  hosts: firewall_servers
  connection: local
  gather_facts: false
  tasks:
    - name: Write the ruleset with the role's own task file
      ansible.builtin.include_role:
        name: firewall
        tasks_from: ruleset.yml
"""


def nft_usable() -> bool:
    if not shutil.which("nft") or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["nft", "-c", "-f", "-"], input="table inet probe {}\n", capture_output=True, text=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not nft_usable(), reason="needs nft (Debian package nftables) and root")
@pytest.mark.parametrize("inventory", ["example", "lab"])
def test_ruleset_of_the_inventories_passes_nft_check(inventory: str, tmp_path: Path) -> None:
    args, _ = INVENTORIES[inventory]
    variables = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "firewall__config_path": str(tmp_path / "{{ inventory_hostname }}.nft"),
        "firewall__apply": False,
    }
    rc, output, stderr = run_playbook(RENDER_RULESET, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    for host in HOSTS[inventory]:
        ruleset = (tmp_path / f"{host}.nft").read_text()
        # Established traffic comes first; SSH and the mail ports are open.
        assert ruleset.index("ct state established,related accept") < ruleset.index("dport")
        assert "tcp dport { 22 } accept" in ruleset
        # The example also offers ManageSieve (4190, rfc5804); the lab does not.
        ports = "25, 143, 465, 587, 993" + (", 4190" if inventory == "example" else "")
        assert f"tcp dport {{ {ports} }} accept" in ruleset
        # Both use ACME HTTP-01 (tls__mode acme), so port 80 is open.
        assert "tcp dport { 80 } accept" in ruleset
        assert "policy drop;" in ruleset


# -- dns_records -------------------------------------------------------------------------------


def test_dns_records_zonefile_for_the_example(tmp_path: Path) -> None:
    playbook = """
- name: Publish the records of the example as a zone snippet
  hosts: mail_servers
  connection: local
  gather_facts: false
  roles:
    - dns_records
"""
    variables = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "dns_records__provider": "zonefile",
        "dns_records__check": False,
        "dns_records__tlsa": False,
        "dns_records__zonefile_dir": str(tmp_path / "zones"),
        "dns_records__mta_sts": True,
        "dns_records__mta_sts_policy_dir": str(tmp_path / "policies"),
        "dns_records__dkim_records": [
            {
                "name": "ed2025._domainkey.example.org",
                "value": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            }
        ],
    }
    args = INVENTORIES["example"][0]
    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    zone = (tmp_path / "zones" / "mx1.example.org.zone").read_text()
    lines = {" ".join(line.split()) for line in zone.splitlines() if not line.startswith(";")}
    for expected in [
        "example.org. 3600 IN MX 10 mx1.example.org.",
        'example.net. 3600 IN TXT "v=spf1 mx -all"',
        '_dmarc.example.org. 3600 IN TXT "v=DMARC1; p=quarantine; '
        'rua=mailto:dmarc-reports@example.org"',
        '_smtp._tls.example.net. 3600 IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@example.net"',
        'ed2025._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=ed25519; '
        'p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="',
        "_submissions._tcp.example.org. 3600 IN SRV 0 1 465 mx1.example.org.",
        "_pop3._tcp.example.org. 3600 IN SRV 0 0 0 .",
        "autoconfig.example.net. 3600 IN CNAME mx1.example.org.",
    ]:
        assert expected in lines, f"{expected!r} not in\n{zone}"
    assert any(line.startswith('_mta-sts.example.org. 3600 IN TXT "v=STSv1; id=') for line in lines)
    policy = (tmp_path / "policies" / "example.org.txt").read_bytes()
    lines_crlf = [b"version: STSv1", b"mode: testing", b"mx: mx1.example.org", b"max_age: 604800"]
    assert policy == b"\r\n".join(lines_crlf) + b"\r\n"
    # Nothing changes on the second run.
    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []


# -- the wheelhouse fingerprint ------------------------------------------------------------------


def load_build_wheelhouse() -> Any:
    path = ROOT / "roles" / "estafeta" / "files" / "build_wheelhouse.py"
    spec = importlib.util.spec_from_file_location("build_wheelhouse", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wheel(path: Path, date: tuple[int, int, int, int, int, int], body: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in [("pkg/__init__.py", body), ("pkg-1.0.dist-info/RECORD", b"")]:
            archive.writestr(zipfile.ZipInfo(name, date_time=date), data)


def test_wheel_fingerprint_ignores_timestamps(tmp_path: Path) -> None:
    build = load_build_wheelhouse()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "pkg-1.0-py3-none-any.whl"
    second = tmp_path / "b" / "pkg-1.0-py3-none-any.whl"
    make_wheel(first, (2020, 1, 1, 0, 0, 0), b"x = 1\n")
    make_wheel(second, (2024, 6, 1, 12, 0, 0), b"x = 1\n")
    assert first.read_bytes() != second.read_bytes()
    assert build.wheel_digest(first) == build.wheel_digest(second)
    make_wheel(second, (2024, 6, 1, 12, 0, 0), b"x = 2\n")
    assert build.wheel_digest(first) != build.wheel_digest(second)


# -- installing estafeta from the wheelhouse ------------------------------------------------------


INSTALL = """
- name: Install estafeta into a temporary virtualenv
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Install with the role's own task file
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: install.yml
"""


def python_minor(python: str) -> str:
    script = "import sys; print('%d.%d' % sys.version_info[:2])"
    return subprocess.run(
        [python, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs Debian's python3")
def test_install_from_the_wheelhouse_twice(tmp_path: Path) -> None:
    """Build on the controller, install offline, and change nothing the second time."""
    variables = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "estafeta__venv": str(tmp_path / "venv"),
        "estafeta__wheelhouse_build_dir": str(tmp_path / "wheelhouse"),
        "estafeta__admin_command": str(tmp_path / "estafeta-admin"),
        "estafeta__config_path": str(tmp_path / "estafeta.toml"),
        "estafeta__user": getpass.getuser(),
        "estafeta__group": grp.getgrgid(os.getgid()).gr_name,
        "estafeta__service_state": "stopped",
    }
    debian, ours = python_minor("/usr/bin/python3"), python_minor(str(ROOT / ".venv/bin/python"))
    if debian != ours:
        pytest.skip(f"Debian's python3 is {debian}, the controller's {ours}")
    # The restart handler checks the configuration with the new estafeta first.
    (tmp_path / "estafeta.toml").write_text(
        f'hostname = "mx.example.test"\ndata_dir = "{tmp_path / "data"}"\n'
        'domains = ["example.test"]\n'
    )
    args = ["-i", "localhost,"]
    rc, output, stderr = run_playbook(INSTALL, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert "localhost: estafeta : Install estafeta from the wheelhouse" in changed_tasks(output)
    installed = tmp_path / "venv" / "bin" / "estafeta"
    assert subprocess.run([installed, "--help"], capture_output=True, check=False).returncode == 0
    fingerprint = (tmp_path / "venv" / ".wheelhouse-fingerprint").read_text()

    rc, output, stderr = run_playbook(INSTALL, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []
    assert (tmp_path / "venv" / ".wheelhouse-fingerprint").read_text() == fingerprint


# -- dns_records with nsupdate against a real Knot ---------------------------------------------

TSIG_SECRET = "dGVzdC1vbmx5LXRzaWctc2VjcmV0LWZvci1lc3RhZmV0YQ=="
DKIM_ED25519 = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return int(udp.getsockname()[1])


def start_knot(root: Path, zones: dict[str, list[str]]) -> tuple[subprocess.Popen[bytes], int]:
    """knotd on 127.0.0.1 serving ``zones``, updatable with the TSIG key ``test-update``."""
    port = free_port()
    for sub in ("run", "db", "zones"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = [
        "server:",
        f'    rundir: "{root / "run"}"',
        f"    listen: 127.0.0.1@{port}",
        "log:",
        "  - target: stderr",
        "    any: info",
        "database:",
        f'    storage: "{root / "db"}"',
        "key:",
        "  - id: test-update",
        "    algorithm: hmac-sha256",
        f"    secret: {TSIG_SECRET}",
        "acl:",
        "  - id: update",
        "    key: test-update",
        "    action: update",
        "template:",
        "  - id: default",
        f'    storage: "{root / "zones"}"',
        '    file: "%s.zone"',
        "    zonefile-sync: -1",
        "    zonefile-load: difference-no-serial",
        "    journal-content: all",
        "    acl: update",
        "zone:",
    ]
    for origin, lines in zones.items():
        conf.append(f"  - domain: {origin}")
        soa = [
            "@ SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 60",
            "@ NS ns.example.org.",
        ]
        body = "\n".join([f"$ORIGIN {origin}.", "$TTL 60", *soa, *lines])
        (root / "zones" / f"{origin}.zone").write_text(body + "\n")
    (root / "knot.conf").write_text("\n".join(conf) + "\n")
    with (root / "knot.log").open("ab") as log:
        process = subprocess.Popen(["knotd", "-c", str(root / "knot.conf")], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    for origin in zones:
        while True:
            assert process.poll() is None, (root / "knot.log").read_text()
            query = dns.message.make_query(f"{origin}.", dns.rdatatype.SOA)
            with contextlib.suppress(OSError, dns.exception.DNSException):
                if dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5).answer:
                    break
            assert time.monotonic() < deadline, (root / "knot.log").read_text()
            time.sleep(0.1)
    return process, port


@pytest.mark.skipif(not shutil.which("knotd"), reason="needs knotd (Debian package knot)")
def test_dns_records_nsupdate_publishes_and_checks(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """The example inventory's records go to Knot with nsupdate, mail_dns_check
    (mode check) finds them right, and a second run changes nothing."""
    v6_reverse = dns.reversename.from_address("2001:db8::10").to_text(omit_final_dot=True)
    zones = {
        "example.org": ["ns A 127.0.0.1", "mx1 A 192.0.2.10", "mx1 AAAA 2001:db8::10"],
        "example.net": [],
        "2.0.192.in-addr.arpa": ["10 PTR mx1.example.org."],
        "8.b.d.0.1.0.0.2.ip6.arpa": [f"{v6_reverse}. PTR mx1.example.org."],
    }
    knotd, port = start_knot(tmp_path / "knot", zones)
    try:
        playbook = """
- name: Publish the records of the example with nsupdate
  hosts: mail_servers
  connection: local
  gather_facts: false
  roles:
    - dns_records
"""
        variables = {
            "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
            "dns_records__nsupdate_server": "127.0.0.1",
            "dns_records__nsupdate_port": port,
            "dns_records__nsupdate_key_name": "test-update",
            "dns_records__nsupdate_key_secret": TSIG_SECRET,
            "dns_records__tlsa_cert_path": str(tls_files[0]),
            "dns_records__mta_sts": True,
            "dns_records__mta_sts_policy_dir": str(tmp_path / "policies"),
            "dns_records__dkim_records": [
                {"name": "ed2025._domainkey.example.org", "value": DKIM_ED25519},
                {"name": "ed2025._domainkey.example.net", "value": DKIM_ED25519},
            ],
        }
        args = INVENTORIES["example"][0]
        rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
        assert rc == 0, failures(output) or stderr
        checks = [
            result
            for name, _, result in task_results(output)
            if name == "dns_records : Check the published records"
        ]
        assert len(checks) == 1
        per_domain = checks[0]["results"]
        assert [item["item"]["key"] for item in per_domain] == ["example.org", "example.net"]
        for item in per_domain:
            assert item["ok"], item.get("failed_checks")
            assert {entry["check"] for entry in item["results"]} >= {
                "mx",
                "a",
                "aaaa",
                "ptr",
                "spf",
                "dkim",
                "dmarc",
                "mta_sts",
                "tlsrpt",
                "srv",
            }
        # The TLSA record of the host is published too.
        query = dns.message.make_query("_25._tcp.mx1.example.org.", dns.rdatatype.TLSA)
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
        assert answer.answer and answer.answer[0][0].usage == 3

        rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
        assert rc == 0, failures(output) or stderr
        assert changed_tasks(output) == []
    finally:
        knotd.terminate()
        knotd.wait(timeout=30)


# -- tls, self_signed ------------------------------------------------------------------------------


def test_tls_self_signed_is_idempotent_and_follows_the_names(tmp_path: Path) -> None:
    playbook = """
- name: Make a self-signed certificate
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - tls
"""
    variables: dict[str, Any] = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "tls__mode": "self_signed",
        "tls__dir": str(tmp_path / "tls"),
        "tls__owner": getpass.getuser(),
        "tls__group": grp.getgrgid(os.getgid()).gr_name,
        "tls__key_type": "ecdsa",
        "tls__hostnames": ["mx1.example.test"],
        "tls__restart_services": [],
        # The modules run with the controller's Python here, which has cryptography.
        "tls__packages": [],
    }
    args = ["-i", "localhost,"]
    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    fullchain = tmp_path / "tls" / "fullchain.pem"
    first = fullchain.read_bytes()
    assert (tmp_path / "tls" / "privkey.pem").stat().st_mode & 0o777 == 0o640

    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []
    assert fullchain.read_bytes() == first

    variables["tls__hostnames"] = ["mx1.example.test", "mail.example.test"]
    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert fullchain.read_bytes() != first
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(fullchain)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:mx1.example.test" in names and "DNS:mail.example.test" in names


# -- inventories and playbooks --------------------------------------------------------------

PLAYBOOKS = sorted(path.name for path in (ROOT / "playbooks").glob("*.yml"))


def ansible_env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


@pytest.mark.parametrize("inventory", ["example", "lab"])
def test_inventory_lists_the_mail_hosts(inventory: str) -> None:
    tool = shutil.which("ansible-inventory")
    assert tool, "ansible-inventory not on PATH"
    args, _ = INVENTORIES[inventory]
    result = subprocess.run(
        [tool, *args, "--list"], capture_output=True, text=True, cwd=ROOT, env=ansible_env()
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mail_servers"]["hosts"] == HOSTS[inventory]
    hostvars = data["_meta"]["hostvars"]
    for host in HOSTS[inventory]:
        assert hostvars[host]["estafeta__hostname"] == host
        assert hostvars[host]["verify__account"]["address"]


@pytest.mark.parametrize("inventory", ["example", "lab"])
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(inventory: str, playbook: str) -> None:
    args, _ = INVENTORIES[inventory]
    result = subprocess.run(
        [ansible_playbook(), *args, "--syntax-check", f"playbooks/{playbook}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ansible_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_site_imports_every_service_playbook() -> None:
    site = load_yaml(ROOT / "playbooks" / "site.yml")
    assert all(set(entry) == {"name", "ansible.builtin.import_playbook"} for entry in site)
    imported = [entry["ansible.builtin.import_playbook"] for entry in site]
    assert imported == [
        "base.yml",
        "firewall.yml",
        "tls.yml",
        "estafeta.yml",
        "backup.yml",
        "dns.yml",
    ]
