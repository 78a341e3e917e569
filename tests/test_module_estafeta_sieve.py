"""library/estafeta_sieve.py against a real estafeta CLI.

As tests/test_module_estafeta_account.py does: each test calls the module's
main() through conftest's ``run_module`` with a temporary configuration and
an executable wrapper around this venv's ``python -m estafeta``, and checks
the outcome with the same CLI. The last test runs the module through the
``ansible`` command under the host's Python, as on a mail host.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
PASSWORD = "correct horse battery staple"

RULES = """require ["fileinto", "mailbox"];
if header :contains "List-Id" "<dev.lists.example.org>" {
    fileinto :create "Lists/dev";
}
"""
OTHER = 'require "fileinto";\nfileinto "Elsewhere";\n'

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


class Host:
    """A temporary estafeta install with the account alice@; the module run against it."""

    def __init__(self, root: Path, run_module: Callable[..., dict[str, Any]]) -> None:
        self.run_module = run_module
        self.config = root / "estafeta.toml"
        self.data_dir = root / "data"
        self.executable = root / "bin" / "estafeta"
        self.config.write_text(
            f'hostname = "mx.{DOMAIN}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'domains = ["{DOMAIN}"]\n'
            "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"
        )
        self.executable.parent.mkdir()
        self.executable.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m estafeta "$@"\n'
        )
        self.executable.chmod(0o755)
        self.cli("user", "add", ALICE, "--password-stdin", stdin=PASSWORD)

    def cli(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(self.executable), "-c", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def scripts(self) -> dict[str, bool]:
        return {
            s["name"]: s["active"] for s in json.loads(self.cli("sieve", "list", ALICE, "--json"))
        }

    def stored(self, name: str) -> bytes:
        """The script's file, as bytes (the CLI in text mode would turn CRLF into LF)."""
        result = subprocess.run(
            [str(self.executable), "-c", str(self.config), "sieve", "get", ALICE, name],
            capture_output=True,
            timeout=120,
            check=True,
        )
        return result.stdout

    def run(self, check: bool = False, diff: bool = False, **params: Any) -> dict[str, Any]:
        args = {"config": str(self.config), "executable": str(self.executable), **params}
        if diff:
            args["_ansible_diff"] = True
        return self.run_module("estafeta_sieve", args, check_mode=check)

    def ok(self, **params: Any) -> dict[str, Any]:
        result = self.run(**params)
        assert not result["failed"], result
        del result["failed"]
        return result

    def failed(self, **params: Any) -> str:
        result = self.run(**params)
        assert result["failed"], result
        return str(result["msg"])


@pytest.fixture
def host(tmp_path: Path, run_module: Callable[..., dict[str, Any]]) -> Host:
    return Host(tmp_path, run_module)


def test_store_activate_then_nothing_to_do(host: Host) -> None:
    result = host.ok(address=ALICE, name="rules", content=RULES, active=True)
    assert result == {
        "changed": True,
        "address": ALICE,
        "name": "rules",
        "active": True,
        "script_changed": True,
    }
    assert host.scripts() == {"rules": True}
    assert host.stored("rules") == RULES.encode()
    again = host.ok(address="Alice@EXAMPLE.test", name="rules", content=RULES, active=True)
    assert (again["changed"], again["script_changed"], again["address"]) == (False, False, ALICE)
    # Without active the activation is left as it is.
    assert host.ok(address=ALICE, name="rules", content=RULES)["changed"] is False
    assert host.scripts() == {"rules": True}


def test_text_arrives_byte_for_byte(host: Host) -> None:
    # No final line break, CRLF, UTF-8: stored exactly, so the next run sees no change.
    text = 'require "fileinto";\r\n# Grüße\r\nfileinto "Entwürfe";'
    assert host.ok(address=ALICE, name="exact", content=text)["changed"] is True
    assert host.stored("exact") == text.encode()
    assert host.ok(address=ALICE, name="exact", content=text)["changed"] is False
    # A different line end is a different script.
    assert host.ok(address=ALICE, name="exact", content=text + "\n")["changed"] is True
    assert host.stored("exact") == (text + "\n").encode()


def test_check_mode_compiles_and_writes_nothing(host: Host) -> None:
    result = host.ok(address=ALICE, name="rules", content=RULES, active=True, check=True)
    assert (result["changed"], result["active"], result["script_changed"]) == (True, True, True)
    assert host.scripts() == {}
    host.ok(address=ALICE, name="rules", content=RULES, active=True)
    assert host.ok(address=ALICE, name="rules", content=RULES, check=True)["changed"] is False
    result = host.ok(address=ALICE, name="rules", content=OTHER, active=False, check=True)
    assert (result["changed"], result["active"], result["script_changed"]) == (True, False, True)
    assert host.scripts() == {"rules": True}
    assert host.stored("rules") == RULES.encode()
    # A broken script fails in check mode already, with the line:column.
    message = host.failed(address=ALICE, name="rules", content="keep;\nfrobnicate;\n", check=True)
    assert message.startswith(f"Sieve script rules of {ALICE}: rules:2:1: "), message
    assert host.stored("rules") == RULES.encode()


def test_refused_script_fails_and_keeps_the_old(host: Host) -> None:
    host.ok(address=ALICE, name="rules", content=RULES, active=True)
    message = host.failed(address=ALICE, name="rules", content='require "nope";\n')
    assert re.match(rf"Sieve script rules of {ALICE}: rules:1:\d+: \S", message), message
    assert host.stored("rules") == RULES.encode()
    assert host.scripts() == {"rules": True}


def test_activation(host: Host) -> None:
    host.ok(address=ALICE, name="rules", content=RULES, active=True)
    # Another script made active takes the place; the first one stays stored.
    result = host.ok(address=ALICE, name="other", content=OTHER, active=True)
    assert (result["changed"], result["active"]) == (True, True)
    assert host.scripts() == {"other": True, "rules": False}
    # Back to rules: only the activation changes.
    result = host.ok(address=ALICE, name="rules", content=RULES, active=True)
    assert (result["changed"], result["script_changed"]) == (True, False)
    assert host.scripts() == {"other": False, "rules": True}
    # active=false deactivates it; for an inactive script it is no change.
    result = host.ok(address=ALICE, name="rules", content=RULES, active=False)
    assert (result["changed"], result["active"]) == (True, False)
    assert host.scripts() == {"other": False, "rules": False}
    assert host.ok(address=ALICE, name="other", content=OTHER, active=False)["changed"] is False


def test_absent(host: Host) -> None:
    assert host.ok(address=ALICE, name="rules", state="absent")["changed"] is False
    host.ok(address=ALICE, name="rules", content=RULES, active=True)
    host.ok(address=ALICE, name="other", content=OTHER)
    # check mode: reported, not done.
    result = host.ok(address=ALICE, name="rules", state="absent", check=True)
    assert (result["changed"], result["active"], result["script_changed"]) == (True, False, True)
    assert host.scripts() == {"other": False, "rules": True}
    # The active script is deactivated, then deleted; the others stay.
    assert host.ok(address=ALICE, name="rules", state="absent")["changed"] is True
    assert host.scripts() == {"other": False}
    assert host.ok(address=ALICE, name="rules", state="absent")["changed"] is False


def test_diff(host: Host) -> None:
    result = host.ok(address=ALICE, name="rules", content=RULES, active=True, diff=True)
    assert result["diff"] == {
        "before_header": f"estafeta sieve script rules of {ALICE}",
        "after_header": f"estafeta sieve script rules of {ALICE}",
        "before": "",
        "after": "# (the active script)\n" + RULES,
    }
    result = host.ok(address=ALICE, name="rules", content="keep;", active=False, diff=True)
    assert result["diff"]["before"] == "# (the active script)\n" + RULES
    assert result["diff"]["after"] == "# (not active)\nkeep;\n"
    result = host.ok(address=ALICE, name="rules", state="absent", diff=True)
    assert (result["diff"]["before"], result["diff"]["after"]) == ("# (not active)\nkeep;\n", "")


def test_bad_input(host: Host, tmp_path: Path) -> None:
    ghost = f"ghost@{DOMAIN}"
    assert host.failed(address=ghost, name="rules", content=RULES) == (
        f"no account {ghost}: create it first (estafeta_account)"
    )
    # In check mode an account an earlier task would create is a change, not a failure.
    result = host.ok(address=ghost, name="rules", content=RULES, active=True, check=True)
    assert (result["changed"], result["active"]) == (True, True)
    assert host.ok(address=ghost, name="rules", state="absent")["changed"] is False
    assert "not one of the configured domains" in host.failed(
        address="alice@elsewhere.test", name="rules", content=RULES
    )
    assert "state is present but all of the following are missing: content" in host.failed(
        address=ALICE, name="rules"
    )
    assert "content of rules is empty" in host.failed(address=ALICE, name="rules", content=" \n")
    assert host.failed(address=ALICE, name=" ", content=RULES) == "name must not be empty"
    assert "estafeta executable" in host.failed(
        address=ALICE, name="rules", content=RULES, executable=str(tmp_path / "nope")
    )
    assert host.scripts() == {}


def test_through_ansible(host: Host, tmp_path: Path) -> None:
    ansible = shutil.which("ansible") or str(Path(sys.executable).parent / "ansible")
    env = {
        **os.environ,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
    }
    env.pop("ANSIBLE_CONFIG", None)
    interpreter = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    args = {
        "config": str(host.config),
        "executable": str(host.executable),
        "address": ALICE,
        "name": "rules",
        "content": RULES,
        "active": True,
    }

    def adhoc() -> dict[str, Any]:
        proc = subprocess.run(
            [ansible, "localhost", "-i", "localhost,", "-c", "local", "-e",
             f"ansible_python_interpreter={interpreter}", "-m", "estafeta_sieve",
             "-a", json.dumps(args)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode in (0, 2), proc.stdout + proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"][
            "localhost"
        ]
        return result

    assert adhoc()["changed"] is True
    assert host.stored("rules") == RULES.encode()
    assert host.scripts() == {"rules": True}
    assert adhoc()["changed"] is False
    args["content"] = "if true {\n"
    result = adhoc()
    assert result["failed"] is True
    assert re.match(rf"Sieve script rules of {ALICE}: rules:\d+:\d+: \S", result["msg"])
