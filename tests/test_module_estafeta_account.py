"""library/estafeta_account.py against a real estafeta CLI.

Each test calls the module's main() with module arguments set (conftest's
``run_module``, as community.general does in
tests/unit/plugins/modules/test_nsupdate.py) and reads back what it passed to
exit_json or fail_json. The module drives a real ``estafeta`` (a wrapper
script around this venv's ``python -m estafeta``) on a temporary
configuration; the tests check the outcome with the same CLI. The last test
runs the module through the ``ansible`` command.
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
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "another long passphrase"


# -- harness ---------------------------------------------------------------------------

# What ansible.cfg's module_utils= does when Ansible packs a module: make
# module_utils/estafeta.py importable as ansible.module_utils.estafeta.
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


class Host:
    """A temporary estafeta install: config, data dir and an executable wrapper,
    and the module run against it through conftest's ``run_module``."""

    def __init__(self, root: Path, run_module: Callable[..., dict[str, Any]]) -> None:
        self.run_module = run_module
        self.config = root / "estafeta.toml"
        self.data_dir = root / "data"
        self.executable = root / "bin" / "estafeta"
        self.config.write_text(
            f'hostname = "mx.{DOMAIN}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'domains = ["{DOMAIN}", "other.test"]\n'
            "[auth]\n"
            # Cheap hashes keep the tests fast; production keeps the defaults.
            "argon2_time_cost = 1\n"
            "argon2_memory_cost = 1024\n"
            "argon2_parallelism = 1\n"
        )
        self.executable.parent.mkdir()
        # The module only knows an executable, as on a mail host (/opt/estafeta/bin/estafeta).
        self.executable.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m estafeta "$@"\n'
        )
        self.executable.chmod(0o755)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.executable), "-c", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def users(self) -> dict[str, int]:
        out = self.cli("user", "list", "--json").stdout
        return {entry["address"]: entry["quota"] for entry in json.loads(out)}

    def aliases(self) -> dict[str, list[str]]:
        return dict(json.loads(self.cli("alias", "list", "--json").stdout))

    def password_is(self, address: str, password: str) -> bool:
        result = self.cli("user", "verify", address, "--password-stdin", stdin=password)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0

    def run(self, check: bool = False, diff: bool = False, **params: Any) -> dict[str, Any]:
        """main() with these params; what it passed to exit_json or fail_json."""
        args = {"config": str(self.config), "executable": str(self.executable), **params}
        if diff:
            args["_ansible_diff"] = True
        return self.run_module("estafeta_account", args, check_mode=check)

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


# -- create, idempotence, check mode ---------------------------------------------------


def test_create_then_nothing_to_do(host: Host) -> None:
    result = host.ok(address=ALICE, password=PASSWORD)
    assert result == {
        "changed": True,
        "address": ALICE,
        "quota": 0,
        "aliases": [],
        "password_changed": True,
    }
    assert host.users() == {ALICE: 0}
    assert host.password_is(ALICE, PASSWORD)

    again = host.ok(address=ALICE, password=PASSWORD)
    assert again["changed"] is False
    assert again["password_changed"] is False
    # The same account in another spelling is the same account.
    assert host.ok(address="Alice@EXAMPLE.test.", password=PASSWORD)["changed"] is False
    # Without a password an existing account is left as it is.
    assert host.ok(address=ALICE)["changed"] is False


def test_check_mode_reports_and_writes_nothing(host: Host) -> None:
    result = host.ok(
        address=ALICE, password=PASSWORD, quota="1G", aliases=[f"postmaster@{DOMAIN}"], check=True
    )
    assert result["changed"] is True
    assert result["password_changed"] is True
    assert result["quota"] == 2**30
    assert result["aliases"] == [f"postmaster@{DOMAIN}"]
    assert host.users() == {}
    assert host.aliases() == {}

    host.ok(address=ALICE, password=PASSWORD)
    result = host.ok(
        address=ALICE, password=NEW_PASSWORD, quota="1G", aliases=[f"abuse@{DOMAIN}"], check=True
    )
    assert (result["changed"], result["password_changed"]) == (True, True)
    assert host.users() == {ALICE: 0}
    assert host.aliases() == {}
    assert host.password_is(ALICE, PASSWORD)
    # Nothing to change is reported as such in check mode too.
    assert host.ok(address=ALICE, password=PASSWORD, check=True)["changed"] is False


def test_diff_shows_everything_but_the_password(host: Host) -> None:
    result = host.ok(address=ALICE, password=PASSWORD, aliases=[f"postmaster@{DOMAIN}"], diff=True)
    assert result["diff"] == {
        "before_header": f"estafeta account {ALICE}",
        "after_header": f"estafeta account {ALICE}",
        "before": "",
        "after": (
            f"address: {ALICE}\n"
            "quota: 0  # the global [limits] quota\n"
            "aliases:\n"
            f"  - postmaster@{DOMAIN}\n"
            "password: (changed)\n"
        ),
    }
    result = host.ok(address=ALICE, password=NEW_PASSWORD, quota=4096, diff=True, check=True)
    assert result["diff"]["before"] == (
        f"address: {ALICE}\nquota: 0  # the global [limits] quota\n"
        f"aliases:\n  - postmaster@{DOMAIN}\n"
    )
    assert result["diff"]["after"] == (
        f"address: {ALICE}\nquota: 4096\naliases:\n  - postmaster@{DOMAIN}\npassword: (changed)\n"
    )
    text = json.dumps(result)
    assert PASSWORD not in text and NEW_PASSWORD not in text

    result = host.ok(address=ALICE, state="absent", diff=True)
    assert result["diff"]["after"] == ""
    assert result["diff"]["before"].startswith(f"address: {ALICE}\n")


# -- password ---------------------------------------------------------------------------


def test_password_change_is_found_by_verify(host: Host) -> None:
    host.ok(address=ALICE, password=PASSWORD)
    result = host.ok(address=ALICE, password=NEW_PASSWORD)
    assert (result["changed"], result["password_changed"]) == (True, True)
    assert host.password_is(ALICE, NEW_PASSWORD)
    assert not host.password_is(ALICE, PASSWORD)
    again = host.ok(address=ALICE, password=NEW_PASSWORD, diff=True)
    assert (again["changed"], again["password_changed"]) == (False, False)
    for output in (result, again):
        text = json.dumps(output)
        assert PASSWORD not in text
        assert NEW_PASSWORD not in text

    # on_create: an existing account keeps whatever password it has now.
    result = host.ok(address=ALICE, password=PASSWORD, update_password="on_create")
    assert (result["changed"], result["password_changed"]) == (False, False)
    assert host.password_is(ALICE, NEW_PASSWORD)
    result = host.ok(address=BOB, password=PASSWORD, update_password="on_create")
    assert (result["changed"], result["password_changed"]) == (True, True)
    assert host.password_is(BOB, PASSWORD)


def test_missing_or_bad_password(host: Host) -> None:
    message = host.failed(address=ALICE)
    assert message == f"account {ALICE} does not exist: a password is needed to create it"
    assert host.failed(address=ALICE, password="") == "password must not be empty"
    message = host.failed(address=ALICE, password=PASSWORD + "\nsecond line")
    assert message == "password must be a single line (no line breaks)"
    # The CLI's rule and message, the password not in it.
    message = host.failed(address=ALICE, password="short")
    assert "password too short: use at least 12 characters" in message
    assert "short" not in message.replace("too short", "")
    assert host.users() == {}


# -- quota --------------------------------------------------------------------------------


def test_quota(host: Host) -> None:
    result = host.ok(address=ALICE, password=PASSWORD, quota="1G")
    assert (result["changed"], result["quota"]) == (True, 2**30)
    assert host.users() == {ALICE: 2**30}
    assert host.ok(address=ALICE, quota=2**30)["changed"] is False
    assert host.ok(address=ALICE, quota="1024M")["changed"] is False
    assert host.ok(address=ALICE)["quota"] == 2**30  # left alone when not given

    result = host.ok(address=ALICE, quota="512 MB")
    assert (result["changed"], result["quota"]) == (True, 512 * 2**20)
    assert host.users() == {ALICE: 512 * 2**20}
    result = host.ok(address=ALICE, quota=0)
    assert (result["changed"], result["quota"]) == (True, 0)
    assert host.users() == {ALICE: 0}

    for bad in ("lots", "-1", -5, "1.5Q", True):
        message = host.failed(address=ALICE, quota=bad)
        assert "use a number of bytes or a size such as 512M or 10G" in message, bad
    assert host.users() == {ALICE: 0}


# -- aliases ----------------------------------------------------------------------------


def test_aliases_are_added_and_kept(host: Host) -> None:
    result = host.ok(
        address=ALICE,
        password=PASSWORD,
        aliases=[f"Postmaster@{DOMAIN}", f"abuse@{DOMAIN}", "@other.test"],
    )
    assert result["aliases"] == ["@other.test", f"abuse@{DOMAIN}", f"postmaster@{DOMAIN}"]
    assert host.aliases() == {
        "@other.test": [ALICE],
        f"abuse@{DOMAIN}": [ALICE],
        f"postmaster@{DOMAIN}": [ALICE],
    }
    again = host.ok(address=ALICE, aliases=[f"postmaster@{DOMAIN}", f"abuse@{DOMAIN}"])
    assert again["changed"] is False
    # Not exclusive: the alias left out of the list stays.
    assert again["aliases"] == ["@other.test", f"abuse@{DOMAIN}", f"postmaster@{DOMAIN}"]


def test_aliases_exclusive_removes_only_aliases_of_this_account(host: Host) -> None:
    host.ok(address=BOB, password=PASSWORD)
    host.ok(address=ALICE, password=PASSWORD, aliases=[f"postmaster@{DOMAIN}", f"abuse@{DOMAIN}"])
    assert host.cli("alias", "add", f"team@{DOMAIN}", ALICE, BOB).returncode == 0
    assert host.cli("alias", "add", f"robert@{DOMAIN}", BOB).returncode == 0

    result = host.ok(
        address=ALICE, aliases=[f"postmaster@{DOMAIN}"], aliases_exclusive=True, check=True
    )
    assert result["changed"] is True
    assert f"abuse@{DOMAIN}" in host.aliases()

    result = host.ok(
        address=ALICE, aliases=[f"postmaster@{DOMAIN}"], aliases_exclusive=True, diff=True
    )
    assert result["changed"] is True
    # team also leads to bob, so it is not this account's to remove.
    assert result["aliases"] == [f"postmaster@{DOMAIN}", f"team@{DOMAIN}"]
    assert host.aliases() == {
        f"postmaster@{DOMAIN}": [ALICE],
        f"robert@{DOMAIN}": [BOB],
        f"team@{DOMAIN}": [ALICE, BOB],
    }
    assert f"-  - abuse@{DOMAIN}" not in result["diff"]["after"]
    assert f"  - abuse@{DOMAIN}\n" in result["diff"]["before"]
    assert (
        host.ok(address=ALICE, aliases=[f"postmaster@{DOMAIN}"], aliases_exclusive=True)["changed"]
        is False
    )
    result = host.ok(address=ALICE, aliases=[], aliases_exclusive=True)
    assert result["aliases"] == [f"team@{DOMAIN}"]
    assert f"postmaster@{DOMAIN}" not in host.aliases()


def test_alias_conflicts_fail_before_any_change(host: Host) -> None:
    host.ok(address=BOB, password=PASSWORD, aliases=[f"robert@{DOMAIN}"])
    cases = [
        (f"robert@{DOMAIN}", f"alias robert@{DOMAIN} exists and points to {BOB}, not to {ALICE}"),
        (BOB, f"{BOB} is an account, so it cannot be an alias of {ALICE}"),
        (ALICE, f"alias {ALICE} is the account's own address"),
        ("alias@remote.test", "domain remote.test is not one of the configured domains"),
    ]
    for alias, message in cases:
        got = host.failed(address=ALICE, password=PASSWORD, aliases=[f"new@{DOMAIN}", alias])
        assert message in got, (alias, got)
    assert host.users() == {BOB: 0}
    assert host.aliases() == {f"robert@{DOMAIN}": [BOB]}


# -- absent ----------------------------------------------------------------------------------


def test_absent(host: Host) -> None:
    host.ok(address=ALICE, password=PASSWORD, aliases=[f"postmaster@{DOMAIN}"])
    result = host.ok(address=ALICE, state="absent", check=True)
    assert result["changed"] is True
    assert host.users() == {ALICE: 0}

    result = host.ok(address=ALICE, state="absent")
    assert result == {
        "changed": True,
        "address": ALICE,
        "quota": None,
        "aliases": [],
        "password_changed": False,
    }
    assert host.users() == {}
    assert host.aliases() == {}  # its only target is gone, so is the alias
    assert host.ok(address=ALICE, state="absent")["changed"] is False
    # An address that cannot be an account here is not one: nothing to delete.
    assert host.ok(address="someone@remote.test", state="absent")["changed"] is False


# -- errors -----------------------------------------------------------------------------------


def test_bad_addresses_fail_with_the_cli_message(host: Host) -> None:
    cases = [
        ("not-an-address", "missing '@'"),
        (f"two..dots@{DOMAIN}", "two dots in a row"),
        ("alice@remote.test", "domain remote.test is not one of the configured domains"),
    ]
    for address, message in cases:
        for check in (False, True):
            result = host.run(address=address, password=PASSWORD, check=check)
            assert result["failed"] is True
            assert result["msg"].startswith("estafeta normalize "), result["msg"]
            assert message in result["msg"], result["msg"]
            assert result["rc"] == 1
    message = host.failed(address=f"@{DOMAIN}", password=PASSWORD)
    assert "a catch-all cannot be an account" in message
    assert host.users() == {}


def test_address_starting_with_a_dash_is_not_an_option(host: Host) -> None:
    # "-" is atext, so this is a valid address; the CLI must not take it for an option.
    # "$" and "~" are atext too, and must reach the CLI unexpanded.
    shellish = f"$HOME~x@{DOMAIN}"
    assert host.ok(address=shellish, password=PASSWORD)["address"] == shellish.lower()
    assert host.ok(address=shellish, password=PASSWORD)["changed"] is False
    assert host.users() == {shellish.lower(): 0}
    assert host.ok(address=shellish, state="absent")["changed"] is True
    dash = f"-dash@{DOMAIN}"
    result = host.ok(address=dash, password=PASSWORD, quota=1000, aliases=[f"-d@{DOMAIN}"])
    assert result["changed"] is True
    assert host.users() == {dash: 1000}
    assert host.aliases() == {f"-d@{DOMAIN}": [dash]}
    assert host.ok(address=dash, password=PASSWORD)["changed"] is False  # verify
    assert host.ok(address=dash, aliases=[], aliases_exclusive=True)["changed"] is True
    assert host.ok(address=dash, state="absent")["changed"] is True
    assert host.users() == {}


def test_missing_executable_and_bad_config(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = host.failed(address=ALICE, executable=str(tmp_path / "nope"))
    assert message.startswith(f"estafeta executable {tmp_path / 'nope'} not found")
    # A bare name is looked up in PATH.
    monkeypatch.setenv("PATH", f"{host.executable.parent}{os.pathsep}{os.environ['PATH']}")
    assert host.ok(address=ALICE, password=PASSWORD, executable="estafeta")["changed"] is True
    message = host.failed(address=ALICE, executable="estafeta-nowhere")
    assert message.startswith("estafeta executable estafeta-nowhere not found")
    message = host.failed(address=ALICE, config=str(tmp_path / "missing.toml"))
    assert "configuration error" in message
    assert str(tmp_path / "missing.toml") in message


# -- through Ansible ---------------------------------------------------------------------------


def ansible_adhoc(
    host: Host, tmp_path: Path, module: str, args: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Run one module with the `ansible` command from the repository root, so that
    ansible.cfg's library= and module_utils= apply; returns the task result."""
    ansible = shutil.which("ansible") or str(Path(sys.executable).parent / "ansible")
    env = {
        **os.environ,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
    }
    env.pop("ANSIBLE_CONFIG", None)
    # The module runs under the host's own Python, as on a mail host, not
    # estafeta's venv: it reaches estafeta only through the executable.
    interpreter = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    all_args = {"config": str(host.config), "executable": str(host.executable), **args}
    proc = subprocess.run(
        [
            ansible,
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={interpreter}",
            "-m",
            module,
            "-a",
            json.dumps(all_args),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 2), proc.stdout + proc.stderr
    output = json.loads(proc.stdout)
    return output["plays"][0]["tasks"][0]["hosts"]["localhost"], proc.stdout + proc.stderr


def test_through_ansible(host: Host, tmp_path: Path) -> None:
    args = {"address": ALICE, "password": PASSWORD, "quota": "2G"}
    result, text = ansible_adhoc(host, tmp_path, "estafeta_account", args)
    assert result["changed"] is True, text
    assert (result["address"], result["quota"]) == (ALICE, 2 * 2**30)
    assert host.users() == {ALICE: 2 * 2**30}
    assert host.password_is(ALICE, PASSWORD)
    assert PASSWORD not in text
    result, text = ansible_adhoc(host, tmp_path, "estafeta_account", args)
    assert result["changed"] is False, text
    # A failure carries the CLI's message.
    result, text = ansible_adhoc(
        host, tmp_path, "estafeta_account", {"address": "x@remote.test", "password": PASSWORD}
    )
    assert result["failed"] is True
    assert "domain remote.test is not one of the configured domains" in result["msg"]
    assert PASSWORD not in text
