"""The base role's unattended-upgrades settings, rendered on this machine.

- with the defaults, the origins match Debian's security archive of the
  release (bookworm-security) and not the main archive or -updates, the
  daily runs are on, and there is no automatic reboot; apt itself
  (``apt-config -c FILE dump``) reads the file;
- the reboot window: base__unattended_reboot and base__unattended_reboot_time
  become Unattended-Upgrade::Automatic-Reboot and -Time;
- a reboot time that is not HH:MM (or "now") fails the role before anything
  is written, naming the variable.

The templates are rendered with the template lookup in a play that loads the
role's defaults (the role with ``when: false``), so nothing on this machine
is touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_roles import ROOT, failures, run_playbook, task_results

LOCAL = ["-i", "localhost,"]
PYTHON = str(ROOT / ".venv" / "bin" / "python")

RENDER = """
- name: Render the apt settings of the base role
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: base
      # Only the defaults; the templates are rendered below.
      when: false
  tasks:
    - name: Write the apt settings
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.template', role_dir ~ '/templates/' ~ item) }}"
        dest: "{{ out }}/{{ item | replace('.conf.j2', '') }}"
        mode: "0644"
      loop: [unattended-upgrades.conf.j2, auto-upgrades.conf.j2]
"""

# The Release fields of Debian 12's archives (from their InRelease files).
SECURITY = {"o": "Debian", "l": "Debian-Security", "n": "bookworm-security", "a": "stable-security"}
MAIN = {"o": "Debian", "l": "Debian", "n": "bookworm", "a": "stable"}
UPDATES = {"o": "Debian", "l": "Debian", "n": "bookworm-updates", "a": "stable-updates"}
KEYS = {"origin": "o", "label": "l", "codename": "n", "archive": "a", "suite": "a"}


def render(tmp_path: Path, **variables: Any) -> tuple[str, str]:
    """(52estafeta-unattended-upgrades, 20auto-upgrades) for these variables."""
    extra = {
        "ansible_python_interpreter": PYTHON,
        "role_dir": str(ROOT / "roles" / "base"),
        "out": str(tmp_path),
        **variables,
    }
    rc, output, stderr = run_playbook(RENDER, tmp_path, *LOCAL, extra_vars=extra)
    assert rc == 0, failures(output) or stderr
    return (
        (tmp_path / "unattended-upgrades").read_text(),
        (tmp_path / "auto-upgrades").read_text(),
    )


def apt_dump(path: Path) -> list[str]:
    """What apt reads from the file: `apt-config -c FILE dump` (also the role's validate)."""
    apt_config = shutil.which("apt-config")
    assert apt_config, "apt-config (Debian package apt) is missing"
    dumped = subprocess.run(
        [apt_config, "-c", str(path), "dump"], capture_output=True, text=True, check=False
    )
    assert dumped.returncode == 0, dumped.stderr
    return dumped.stdout.splitlines()


def values(dump: list[str], key: str) -> list[str]:
    """The values of KEY (a scalar, or the entries of a list) in an apt-config dump."""
    found = []
    for line in dump:
        match = re.fullmatch(rf'{re.escape(key)}(?:::)? "(.*)";', line)
        if match:
            found.append(match.group(1))
    return [value for value in found if value]


def pattern_matches(pattern: str, release: dict[str, str]) -> bool:
    """unattended-upgrades' Origins-Pattern test: every key=value must match."""
    for part in pattern.replace("${distro_codename}", "bookworm").split(","):
        key, _, value = part.partition("=")
        if release.get(KEYS.get(key, key)) != value:
            return False
    return True


def test_the_defaults_take_debian_security_updates_only_and_never_reboot(tmp_path: Path) -> None:
    unattended, periodic = render(tmp_path)
    dump = apt_dump(tmp_path / "unattended-upgrades")
    origins = values(dump, "Unattended-Upgrade::Origins-Pattern")
    assert "origin=Debian,codename=${distro_codename}-security,label=Debian-Security" in origins
    assert any(pattern_matches(origin, SECURITY) for origin in origins), origins
    assert not any(pattern_matches(origin, MAIN) for origin in origins), origins
    assert not any(pattern_matches(origin, UPDATES) for origin in origins), origins
    assert values(dump, "Unattended-Upgrade::Automatic-Reboot") == ["false"]
    assert values(dump, "Unattended-Upgrade::Automatic-Reboot-Time") == ["04:00"]
    assert values(dump, "Unattended-Upgrade::Remove-Unused-Dependencies") == ["true"]
    assert values(dump, "Unattended-Upgrade::Mail") == []
    periodic_dump = apt_dump(tmp_path / "auto-upgrades")
    assert values(periodic_dump, "APT::Periodic::Update-Package-Lists") == ["1"]
    assert values(periodic_dump, "APT::Periodic::Unattended-Upgrade") == ["1"]
    assert "Ansible managed" in unattended and "Ansible managed" in periodic


def test_the_reboot_window_becomes_automatic_reboot_and_its_time(tmp_path: Path) -> None:
    render(
        tmp_path,
        base__unattended_reboot=True,
        base__unattended_reboot_time="02:30",
        base__unattended_mail="root@example.test",
    )
    dump = apt_dump(tmp_path / "unattended-upgrades")
    assert values(dump, "Unattended-Upgrade::Automatic-Reboot") == ["true"]
    assert values(dump, "Unattended-Upgrade::Automatic-Reboot-Time") == ["02:30"]
    assert values(dump, "Unattended-Upgrade::Mail") == ["root@example.test"]


def test_unattended_upgrades_off_turns_the_daily_runs_off(tmp_path: Path) -> None:
    render(tmp_path, base__unattended_upgrades=False)
    periodic_dump = apt_dump(tmp_path / "auto-upgrades")
    assert values(periodic_dump, "APT::Periodic::Unattended-Upgrade") == ["0"]
    assert values(periodic_dump, "APT::Periodic::Update-Package-Lists") == ["0"]


@pytest.mark.parametrize("time", ["4am", "24:00", "4:00", "04:60"])
def test_a_wrong_reboot_time_fails_before_anything_is_written(tmp_path: Path, time: str) -> None:
    playbook = """
- name: Apply base with a wrong reboot time
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - base
"""
    extra = {"ansible_python_interpreter": PYTHON, "base__unattended_reboot_time": time}
    rc, output, _ = run_playbook(playbook, tmp_path, *LOCAL, extra_vars=extra)
    assert rc != 0
    ran = [name for name, _, _ in task_results(output)]
    # The argument-spec check, then the failing time check: nothing else ran.
    assert len(ran) == 2, ran
    name, _, result = task_results(output)[-1]
    assert name == "base : Check the unattended reboot time"
    assert result["failed"]
    assert "base__unattended_reboot_time" in result["msg"] and time in result["msg"]
