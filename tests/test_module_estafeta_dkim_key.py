"""library/estafeta_dkim_key.py against a real estafeta CLI.

As in test_module_estafeta_account.py: main() runs under conftest's
``run_module`` and drives a real ``estafeta`` through a wrapper script on a
temporary configuration; the key files and ``estafeta dkim list`` show what
happened. The last test runs the module through the ``ansible`` command.
"""

from __future__ import annotations

import json
import os
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
RSA_PREFIX = "v=DKIM1; k=rsa; p="
ED_PREFIX = "v=DKIM1; k=ed25519; p="

# What ansible.cfg's module_utils= does when Ansible packs a module.
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


class Host:
    """A temporary estafeta install, and the module run against it."""

    def __init__(self, root: Path, run_module: Callable[..., dict[str, Any]]) -> None:
        self.run_module = run_module
        self.config = root / "estafeta.toml"
        self.data_dir = root / "data"
        self.executable = root / "bin" / "estafeta"
        self.config.write_text(
            f'hostname = "mx.{DOMAIN}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'domains = ["{DOMAIN}", "bücher.test"]\n'
        )
        self.executable.parent.mkdir()
        self.executable.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m estafeta "$@"\n'
        )
        self.executable.chmod(0o755)

    def key_file(self, selector: str, domain: str = DOMAIN) -> Path:
        return self.data_dir / "dkim" / domain / f"{selector}.pem"

    def keys(self) -> dict[str, tuple[str, str]]:
        """``{"selector._domainkey.domain": (algorithm, txt)}`` as the CLI lists them."""
        proc = subprocess.run(
            [str(self.executable), "-c", str(self.config), "dkim", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return {
            f"{k['selector']}._domainkey.{k['domain']}": (k["algorithm"], k["txt"])
            for k in json.loads(proc.stdout)
        }

    def run(self, check: bool = False, diff: bool = False, **params: Any) -> dict[str, Any]:
        args = {"config": str(self.config), "executable": str(self.executable), **params}
        if diff:
            args["_ansible_diff"] = True
        return self.run_module("estafeta_dkim_key", args, check_mode=check)

    def ok(self, **params: Any) -> dict[str, Any]:
        result = self.run(**params)
        assert not result["failed"], result
        return result

    def failed(self, **params: Any) -> str:
        result = self.run(**params)
        assert result["failed"], result
        return str(result["msg"])


@pytest.fixture
def host(tmp_path: Path, run_module: Callable[..., dict[str, Any]]) -> Host:
    return Host(tmp_path, run_module)


def test_create_rsa_then_nothing_to_do(host: Host) -> None:
    result = host.ok(domain=DOMAIN, selector="s1")
    assert result["changed"] is True
    assert result["txt"].startswith(RSA_PREFIX)
    assert result["record_name"] == f"s1._domainkey.{DOMAIN}"
    assert (result["domain"], result["selector"], result["algorithm"]) == (DOMAIN, "s1", "rsa")
    assert host.key_file("s1").is_file()
    assert host.keys() == {f"s1._domainkey.{DOMAIN}": ("rsa", result["txt"])}

    again = host.ok(domain=DOMAIN, selector="s1")
    assert again["changed"] is False
    assert again["txt"] == result["txt"]
    # Another spelling of the domain is the same key.
    assert host.ok(domain="Example.TEST.", selector="s1")["txt"] == result["txt"]


def test_ed25519_next_to_rsa(host: Host) -> None:
    rsa = host.ok(domain=DOMAIN, selector="r1")
    ed = host.ok(domain=DOMAIN, selector="e1", algorithm="ed25519")
    assert ed["changed"] is True
    assert ed["txt"].startswith(ED_PREFIX)
    assert ed["algorithm"] == "ed25519"
    assert host.ok(domain=DOMAIN, selector="e1", algorithm="ed25519")["changed"] is False
    assert host.keys() == {
        f"e1._domainkey.{DOMAIN}": ("ed25519", ed["txt"]),
        f"r1._domainkey.{DOMAIN}": ("rsa", rsa["txt"]),
    }


def test_idn_domain_record_name(host: Host) -> None:
    result = host.ok(domain="Bücher.test", selector="e1", algorithm="ed25519")
    assert result["record_name"] == "e1._domainkey.xn--bcher-kva.test"
    assert host.key_file("e1", "xn--bcher-kva.test").is_file()


def test_rotate_makes_a_new_key(host: Host) -> None:
    first = host.ok(domain=DOMAIN, selector="s1")
    rotated = host.ok(domain=DOMAIN, selector="s1", rotate=True)
    assert rotated["changed"] is True
    assert rotated["txt"].startswith(RSA_PREFIX)
    assert rotated["txt"] != first["txt"]
    assert host.keys() == {f"s1._domainkey.{DOMAIN}": ("rsa", rotated["txt"])}
    # rotate is also how a key changes algorithm.
    ed = host.ok(domain=DOMAIN, selector="s1", algorithm="ed25519", rotate=True)
    assert ed["txt"].startswith(ED_PREFIX)
    assert host.keys() == {f"s1._domainkey.{DOMAIN}": ("ed25519", ed["txt"])}


def test_check_mode_writes_nothing(host: Host) -> None:
    result = host.ok(domain=DOMAIN, selector="s1", check=True)
    assert result["changed"] is True
    assert result["txt"] is None  # the key does not exist yet
    assert result["record_name"] == f"s1._domainkey.{DOMAIN}"
    assert not host.key_file("s1").exists()
    assert host.keys() == {}

    made = host.ok(domain=DOMAIN, selector="s1")
    pem = host.key_file("s1").read_bytes()
    assert host.ok(domain=DOMAIN, selector="s1", check=True)["changed"] is False
    result = host.ok(domain=DOMAIN, selector="s1", rotate=True, check=True)
    assert result["changed"] is True
    assert host.key_file("s1").read_bytes() == pem
    result = host.ok(domain=DOMAIN, selector="s1", state="absent", check=True)
    assert result["changed"] is True
    assert host.key_file("s1").read_bytes() == pem
    assert host.keys() == {f"s1._domainkey.{DOMAIN}": ("rsa", made["txt"])}


def test_diff_shows_the_record(host: Host) -> None:
    name = f"e1._domainkey.{DOMAIN}"
    result = host.ok(domain=DOMAIN, selector="e1", algorithm="ed25519", diff=True, check=True)
    assert result["diff"] == {
        "before_header": name,
        "after_header": name,
        "before": "",
        "after": f"{name}. IN TXT (a new ed25519 key)\n",
    }
    made = host.ok(domain=DOMAIN, selector="e1", algorithm="ed25519", diff=True)
    assert made["diff"]["before"] == ""
    assert made["diff"]["after"] == f'{name}. IN TXT "{made["txt"]}"\n'
    rotated = host.ok(domain=DOMAIN, selector="e1", algorithm="ed25519", rotate=True, diff=True)
    assert rotated["diff"]["before"] == made["diff"]["after"]
    assert rotated["diff"]["after"] == f'{name}. IN TXT "{rotated["txt"]}"\n'
    gone = host.ok(domain=DOMAIN, selector="e1", state="absent", diff=True)
    assert (gone["diff"]["before"], gone["diff"]["after"]) == (rotated["diff"]["after"], "")


def test_absent(host: Host) -> None:
    host.ok(domain=DOMAIN, selector="s1", algorithm="ed25519")
    host.ok(domain=DOMAIN, selector="s2", algorithm="ed25519")
    result = host.ok(domain=DOMAIN, selector="s1", state="absent")
    assert result["changed"] is True
    assert (result["txt"], result["algorithm"]) == (None, None)
    assert result["record_name"] == f"s1._domainkey.{DOMAIN}"
    assert not host.key_file("s1").exists()
    assert list(host.keys()) == [f"s2._domainkey.{DOMAIN}"]
    assert host.ok(domain=DOMAIN, selector="s1", state="absent")["changed"] is False
    # Removing needs no configured domain: there is simply nothing there.
    assert host.ok(domain="elsewhere.test", selector="s1", state="absent")["changed"] is False


def test_algorithm_mismatch_asks_for_rotate(host: Host) -> None:
    made = host.ok(domain=DOMAIN, selector="s1")
    message = host.failed(domain=DOMAIN, selector="s1", algorithm="ed25519")
    assert f"the DKIM key s1._domainkey.{DOMAIN} is rsa, not ed25519" in message
    assert "set rotate=true" in message
    assert host.failed(domain=DOMAIN, selector="s1", algorithm="ed25519", check=True) == message
    assert host.keys() == {f"s1._domainkey.{DOMAIN}": ("rsa", made["txt"])}


def test_bad_input_fails_with_a_reason(host: Host) -> None:
    for check in (False, True):
        message = host.failed(domain="elsewhere.test", selector="s1", check=check)
        assert "domain elsewhere.test is not one of the configured domains" in message
        message = host.failed(domain="bad..test", selector="s1", check=check)
        assert "empty label" in message
        message = host.failed(domain=DOMAIN, selector="../s1", check=check)
        assert message == "selector '../s1': use letters, digits, '-' and '_'"
    assert host.keys() == {}
    assert not (host.data_dir / "dkim").exists() or not any((host.data_dir / "dkim").iterdir())


def test_through_ansible(host: Host, tmp_path: Path) -> None:
    """Ansible finds the module (library=) and its module_utils (module_utils=) in
    ansible.cfg, and runs it under the host's Python rather than estafeta's venv."""
    ansible = shutil.which("ansible") or str(Path(sys.executable).parent / "ansible")
    interpreter = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    env = {
        **os.environ,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
    }
    env.pop("ANSIBLE_CONFIG", None)
    args = {
        "domain": DOMAIN,
        "selector": "s1",
        "algorithm": "ed25519",
        "config": str(host.config),
        "executable": str(host.executable),
    }
    command = [ansible, "localhost", "-i", "localhost,", "-c", "local"]
    command += ["-e", f"ansible_python_interpreter={interpreter}"]
    command += ["-m", "estafeta_dkim_key", "-a", json.dumps(args)]
    results = []
    for _ in range(2):
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results.append(json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"])
    assert [r["changed"] for r in results] == [True, False]
    assert results[0]["txt"].startswith(ED_PREFIX)
    assert results[1]["txt"] == results[0]["txt"]
    assert results[0]["record_name"] == f"s1._domainkey.{DOMAIN}"
    assert host.keys() == {f"s1._domainkey.{DOMAIN}": ("ed25519", results[0]["txt"])}
