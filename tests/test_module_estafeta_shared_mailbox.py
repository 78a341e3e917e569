"""library/estafeta_shared_mailbox.py against a real estafeta CLI.

As tests/test_module_estafeta_sieve.py does: the module's main() runs
through conftest's ``run_module`` with a temporary configuration and an
executable wrapper around this venv's ``python -m estafeta``; the outcome is
checked with the same CLI. Each run four ways where it matters: check,
apply, apply again (no change), check again (no change).
"""

from __future__ import annotations

import json
import shlex
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
BOB = f"bob@{DOMAIN}"
INFO = f"info@{DOMAIN}"
CONTACT = f"contact@{DOMAIN}"

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


class Host:
    def __init__(self, root: Path, run_module: Callable[..., dict[str, Any]]) -> None:
        self.run_module = run_module
        self.config = root / "estafeta.toml"
        self.executable = root / "bin" / "estafeta"
        self.config.write_text(
            f'hostname = "mx.{DOMAIN}"\n'
            f'data_dir = "{root / "data"}"\n'
            f'domains = ["{DOMAIN}"]\n'
            "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"
        )
        self.executable.parent.mkdir()
        self.executable.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m estafeta "$@"\n'
        )
        self.executable.chmod(0o755)
        for user in (ALICE, BOB):
            self.cli("user", "add", user, "--password-stdin", stdin="correct horse battery staple")

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

    def listed(self) -> dict[str, dict[str, str]]:
        return {e["name"]: e["acl"] for e in json.loads(self.cli("shared", "list", "--json"))}

    def addresses(self) -> dict[str, list[str]]:
        entries = json.loads(self.cli("shared", "list", "--json"))
        return {e["name"]: e["addresses"] for e in entries if e["addresses"]}

    def run(self, check: bool = False, diff: bool = False, **params: Any) -> dict[str, Any]:
        args = {"config": str(self.config), "executable": str(self.executable), **params}
        if diff:
            args["_ansible_diff"] = True
        return self.run_module("estafeta_shared_mailbox", args, check_mode=check)


@pytest.fixture
def host(tmp_path: Path, run_module: Callable[..., dict[str, Any]]) -> Host:
    return Host(tmp_path, run_module)


def test_four_ways_then_absent(host: Host) -> None:
    acl = {ALICE: "lrswipkxtea", "Bob@Example.TEST": "lrs"}
    wanted = {ALICE: "lrswipkxtea", BOB: "lrs"}
    checked = host.run(check=True, diff=True, name="info", acl=acl)
    assert (checked["failed"], checked["changed"], checked["acl"]) == (False, True, wanted)
    assert checked["diff"]["before"] == "" and f"{BOB} lrs\n" in checked["diff"]["after"]
    assert host.listed() == {}  # check mode wrote nothing
    applied = host.run(name="info", acl=acl)
    assert (applied["failed"], applied["changed"]) == (False, True)
    assert host.listed() == {"info": wanted}
    assert host.run(name="info", acl=acl)["changed"] is False
    assert host.run(check=True, name="info", acl=acl)["changed"] is False
    # Entries not named go (acl_exclusive), or stay (acl_exclusive: false).
    kept = host.run(name="info", acl={ALICE: "lrswipkxtea"}, acl_exclusive=False)
    assert kept["changed"] is False
    assert host.run(name="info", acl={ALICE: "lrswipkxtea"})["changed"] is True
    assert host.listed() == {"info": {ALICE: "lrswipkxtea"}}
    gone = host.run(name="info", state="absent")
    assert (gone["changed"], host.listed()) == (True, {})
    assert host.run(name="info", state="absent")["changed"] is False


def test_failures_name_the_reason(host: Host) -> None:
    bad = host.run(name="info", acl={ALICE: "lrQ"})
    assert bad["failed"] and "not a right" in bad["msg"]
    unknown = host.run(name="info", acl={"carol@example.test": "lr"})
    assert unknown["failed"] and "no account" in unknown["msg"]
    inbox = host.run(name="INBOX", acl={ALICE: "lr"})
    assert inbox["failed"] and "INBOX" in inbox["msg"]


def test_addresses_four_ways_then_fewer_then_none(host: Host) -> None:
    acl = {ALICE: "lrswipkxtea", "anyone": "p"}
    params = {"name": "info", "acl": acl, "addresses": ["Info@Example.TEST", CONTACT]}
    checked = host.run(check=True, diff=True, **params)
    assert (checked["failed"], checked["changed"]) == (False, True)
    assert checked["addresses"] == [CONTACT, INFO]  # as the CLI normalised them
    assert f"address {INFO}\n" in checked["diff"]["after"] and checked["diff"]["before"] == ""
    assert host.addresses() == {}  # check mode wrote nothing
    assert host.run(**params)["changed"] is True
    assert host.addresses() == {"info": [CONTACT, INFO]}
    assert host.run(**params)["changed"] is False
    assert host.run(check=True, **params)["changed"] is False
    # Omitted: left as they are (and reported).
    kept = host.run(diff=True, name="info", acl=acl)
    assert (kept["changed"], kept["addresses"]) == (False, [CONTACT, INFO])
    assert kept["diff"]["before"] == kept["diff"]["after"]
    # Fewer: the others go; the diff shows it.
    fewer = host.run(diff=True, name="info", acl=acl, addresses=[INFO])
    assert (fewer["changed"], fewer["addresses"]) == (True, [INFO])
    assert f"address {CONTACT}\n" in fewer["diff"]["before"]
    assert f"address {CONTACT}\n" not in fewer["diff"]["after"]
    assert host.addresses() == {"info": [INFO]}
    assert host.run(check=True, name="info", acl=acl, addresses=[])["changed"] is True
    assert host.addresses() == {"info": [INFO]}
    assert host.run(name="info", acl=acl, addresses=[])["changed"] is True
    assert host.addresses() == {}
    assert host.run(name="info", acl=acl, addresses=[])["changed"] is False


def test_an_address_that_clashes_fails_naming_it(host: Host) -> None:
    clash = host.run(name="info", acl={ALICE: "lr"}, addresses=[INFO, ALICE])
    assert clash["failed"] and f"address {ALICE} is an account" in clash["msg"]
    assert host.listed() == {} and host.addresses() == {}  # nothing was made
    child = host.run(name="info/2026", addresses=[INFO])
    assert child["failed"] and "not top-level" in child["msg"]
    host.run(name="info", acl={ALICE: "lr"}, addresses=[INFO])
    removed = host.run(name="info", state="absent")
    assert removed["changed"] is True and host.addresses() == {}
