"""The estafeta role's Sieve tasks on this machine, against the real CLI.

config.yml (with tasks/sieve_global.yml), accounts.yml and sieve.yml run from
a playbook on localhost with every path under a temporary directory: the
global scripts land in files the configuration names and ``estafeta check``
accepts, the account scripts (content, src and the vacation shorthand) are
stored and the right one is active, a second run changes nothing, a broken
global script fails before it replaces the old one, two active scripts for
one account are refused before any is stored, and dropped global scripts
go away.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ESTAFETA = ROOT / ".venv" / "bin" / "estafeta"
ALICE = "alice@example.test"

PLAYBOOK = """
- name: The Sieve part of the estafeta role
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Configuration and global scripts
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: config.yml
    - name: Accounts
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: accounts.yml
    - name: Scripts of accounts
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: sieve.yml
"""

SPAM = (
    'require ["fileinto", "mailbox"];\n'
    'if header :is "X-Spam-Flag" "YES" {\n    fileinto :create "Junk";\n}\n'
)
ARCHIVE = 'require ["fileinto", "copy", "mailbox"];\nfileinto :copy :create "Archive";\n'
RULES = (
    'require "imap4flags";\n'
    'if address :is "from" "boss@example.org" {\n    addflag "\\\\Flagged";\n}\n'
)
SPARE = 'require "fileinto";\nfileinto "Spare";\n'


def run_playbook(tmp_path: Path, variables: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    path = tmp_path / "sieve.yml"
    path.write_text(PLAYBOOK)
    playbook = shutil.which("ansible-playbook") or str(ROOT / ".venv" / "bin" / "ansible-playbook")
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
        [playbook, "-i", "localhost,", str(path), "--extra-vars", json.dumps(variables)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON:\n{result.stdout}\n{result.stderr}") from None
    return result.returncode, output, result.stderr


def results(output: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (task["task"]["name"], result)
        for play in output["plays"]
        for task in play["tasks"]
        for result in task["hosts"].values()
    ]


def changed(output: dict[str, Any]) -> list[str]:
    return [name for name, result in results(output) if result.get("changed")]


def failed(output: dict[str, Any]) -> list[tuple[str, str]]:
    """(task, messages) of the failed tasks; a loop's items' messages included."""

    def text(result: dict[str, Any]) -> str:
        own = str(result.get("msg", "")) + str(result.get("stderr", ""))
        return own + "".join(text(item) for item in result.get("results", []))

    return [
        (name, text(result))
        for name, result in results(output)
        if result.get("failed") and not result.get("ignore_errors")
    ]


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "etc" / "estafeta.toml"
        self.scripts_dir = root / "etc" / "sieve"
        (root / "files").mkdir()
        (root / "files" / "archive.sieve").write_text(ARCHIVE)
        (root / "files" / "spare.sieve").write_text(SPARE)
        self.vars: dict[str, Any] = {
            "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
            "estafeta__hostname": "mx.example.test",
            "estafeta__domains": ["example.test"],
            "estafeta__config_dir": str(root / "etc"),
            "estafeta__config_path": str(self.config),
            "estafeta__data_dir": str(root / "data"),
            "estafeta__executable": str(ESTAFETA),
            "estafeta__admin_command": str(ESTAFETA),
            "estafeta__user": getpass.getuser(),
            "estafeta__group": grp.getgrgid(os.getgid()).gr_name,
            "estafeta__tls_cert": "",
            "estafeta__listen": {"smtp": ["127.0.0.1:2525"]},
            "estafeta__service_state": "stopped",
            "estafeta__auth_argon2_time_cost": 1,
            "estafeta__auth_argon2_memory_cost": 1024,
            "estafeta__auth_argon2_parallelism": 1,
            "estafeta__host_accounts": [
                {"address": ALICE, "password": "correct horse battery staple"}
            ],
            "estafeta__sieve_global_before": [{"name": "spam", "content": SPAM}],
            "estafeta__sieve_global_after": [
                {"name": "archive", "src": str(root / "files" / "archive.sieve")}
            ],
            "estafeta__host_sieve_scripts": [
                {"address": ALICE, "name": "rules", "content": RULES},
                {"address": ALICE, "name": "spare", "src": str(root / "files" / "spare.sieve"),
                 "active": False},
                {"address": "Alice@Example.TEST", "active": False,
                 "vacation": {"body": "Away.", "from_date": "2026-12-20"}},
            ],
        }  # fmt: skip
        (root / "etc").mkdir()

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(ESTAFETA), "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def scripts(self) -> dict[str, bool]:
        listing = json.loads(self.cli("sieve", "list", ALICE, "--json"))
        return {s["name"]: s["active"] for s in listing}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    assert ESTAFETA.exists(), f"{ESTAFETA} is missing (make venv)"
    return Site(tmp_path)


def test_scripts_global_and_per_account(site: Site, tmp_path: Path) -> None:
    rc, output, stderr = run_playbook(tmp_path, site.vars)
    assert rc == 0, failed(output) or stderr
    # The global scripts: files the configuration names, which `estafeta check` compiled.
    assert (site.scripts_dir / "spam.sieve").read_text() == SPAM
    assert (site.scripts_dir / "archive.sieve").read_text() == ARCHIVE
    assert (site.scripts_dir / "spam.sieve").stat().st_mode & 0o777 == 0o640
    config = tomllib.loads(site.config.read_text())
    assert config["sieve"]["global_before"] == [str(site.scripts_dir / "spam.sieve")]
    assert config["sieve"]["global_after"] == [str(site.scripts_dir / "archive.sieve")]
    assert config["sieve"]["max_redirects"] == 4
    assert config["sieve"]["vacation_min_period"] == "1d"
    assert config["delivery"] == {"over_quota": "defer"}
    site.cli("check")
    # The scripts of the account, one of them active.
    assert site.scripts() == {"rules": True, "spare": False, "vacation": False}
    assert site.cli("sieve", "get", ALICE, "rules") == RULES
    assert site.cli("sieve", "get", ALICE, "spare") == SPARE
    vacation = site.cli("sieve", "get", ALICE, "vacation")
    assert 'currentdate :value "ge" "date" "2026-12-20"' in vacation
    assert 'vacation :days 7 "Away.";' in vacation

    # Nothing changes on a second run.
    rc, output, stderr = run_playbook(tmp_path, site.vars)
    assert rc == 0, failed(output) or stderr
    assert changed(output) == []

    # Dropping the global after script removes its file and its key.
    site.vars["estafeta__sieve_global_after"] = []
    rc, output, stderr = run_playbook(tmp_path, site.vars)
    assert rc == 0, failed(output) or stderr
    assert sorted(p.name for p in site.scripts_dir.iterdir()) == ["spam.sieve"]
    assert "global_after" not in tomllib.loads(site.config.read_text())["sieve"]
    site.cli("check")


def test_broken_global_script_keeps_the_old_one(site: Site, tmp_path: Path) -> None:
    rc, output, stderr = run_playbook(tmp_path, site.vars)
    assert rc == 0, failed(output) or stderr
    site.vars["estafeta__sieve_global_before"] = [{"name": "spam", "content": "if true {\n"}]
    rc, output, _ = run_playbook(tmp_path, site.vars)
    assert rc != 0
    problems = failed(output)
    assert [name for name, _ in problems] == ["estafeta : Write the global Sieve scripts"]
    assert re.search(r"\.source\.sieve:2:1: missing", problems[0][1]), problems
    assert (site.scripts_dir / "spam.sieve").read_text() == SPAM
    site.cli("check")


def test_two_active_scripts_are_refused(site: Site, tmp_path: Path) -> None:
    site.vars["estafeta__host_sieve_scripts"] = [
        {"address": ALICE, "name": "rules", "content": RULES},
        {"address": "ALICE@example.test", "vacation": {"body": "Away."}},
    ]
    rc, output, _ = run_playbook(tmp_path, site.vars)
    assert rc != 0
    problems = failed(output)
    assert [name for name, _ in problems] == ["estafeta : Check the Sieve scripts of the inventory"]
    assert "only one active script" in problems[0][1]
    assert site.scripts() == {}
