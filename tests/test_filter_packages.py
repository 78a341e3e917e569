"""filter_plugins/packages.py: dpkg_missing on dpkg-query output, then in a real playbook.

The playbook test runs the very task pair the roles use (dpkg-query, then the
filter in a folded YAML block) against this machine's dpkg database, which
is what a role sees on a host: it caught the earlier inline expression that
called every package missing, so roles ran apt (and failed offline) on hosts
that had everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "filter_plugins" / "packages.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("estafeta_filter_plugins_packages", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dpkg_missing = _load().FilterModule().filters()["dpkg_missing"]


def test_installed_packages_are_not_missing() -> None:
    output = "knot\tii \npebble\tii \n"
    assert dpkg_missing(output, ["knot", "pebble"]) == []


def test_unknown_and_half_installed_packages_are_missing_in_order() -> None:
    # dpkg-query prints nothing for a package it does not know; rc (removed,
    # config files left) and iU (unpacked) are not installed.
    output = "nftables\trc \npython3\tii \nknot\tiU \n"
    wanted = ["knot", "python3", "nftables", "no-such-package", "knot"]
    assert dpkg_missing(output, wanted) == ["knot", "nftables", "no-such-package"]


def test_architecture_qualifiers_match_the_plain_name() -> None:
    assert dpkg_missing("libc6:amd64\tii \n", ["libc6", "libc6:amd64"]) == []


def test_empty_output_means_all_missing() -> None:
    assert dpkg_missing("", ["a", "b"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("output", "wanted", "message"),
    [
        (["knot\tii "], ["knot"], "standard output"),
        ("", "knot", "list of package names"),
        ("", ["knot", ""], "is not a package name"),
    ],
)
def test_bad_input_names_the_problem(output: Any, wanted: Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        dpkg_missing(output, wanted)


PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    wanted: [dpkg, python3, estafeta-no-such-package]
    query: [dpkg-query, --show, "--showformat=${Package}\\t${db:Status-Abbrev}\\n"]
  tasks:
    - ansible.builtin.command:
        argv: "{{ query + wanted }}"
      register: dpkg
      changed_when: false
      failed_when: dpkg.rc > 1
    - ansible.builtin.debug:
        msg: "{{ missing }}"
      vars:
        missing: >-
          {{ dpkg.stdout
             | dpkg_missing(wanted) }}
"""


def test_in_a_playbook_only_the_absent_package_is_missing(tmp_path: Path) -> None:
    playbook = tmp_path / "dpkg.yml"
    playbook.write_text(PLAYBOOK)
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
    )
    result = subprocess.run(
        [str(bin_dir / "ansible-playbook"), str(playbook)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    msg = report["plays"][0]["tasks"][1]["hosts"]["localhost"]["msg"]
    assert msg == ["estafeta-no-such-package"]
