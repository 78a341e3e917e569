"""The backup and lab_s3 roles on this machine, without lab hosts.

- the [backup] table: the example inventory (backups to S3) renders one that
  ``estafeta check`` accepts and that the backup role's own check
  (tasks/contract.yml) finds equal to its export; the lab inventory (no
  backups) renders none; a table that differs fails that check, naming both;
- the master key (tasks/key.yml): no key, or a malformed one, fails before
  anything is written, with the command that makes one; a good one is
  written 0600, never shown (no_log, also in check mode with --diff), not
  written again, and a different key on the host is not replaced unless
  backup__key_replace;
- the destination (tasks/destination.yml): the S3 credentials file is
  written 0600 and the server's own reader takes it; a directory
  destination is made 0700;
- the systemd units: create, then prune, as the estafeta user; a daily timer
  with RandomizedDelaySec and Persistent; systemd-analyze accepts them;
- the lab_s3 wheelhouse tarball is built once and is the same bytes for the
  same wheels.

The restore (tasks/restore.yml) needs systemd and a repository: the backup
Molecule scenario runs it.
"""

from __future__ import annotations

import getpass
import grp
import importlib.util
import json
import os
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import trustme

from estafeta.backup.objects import load_key
from estafeta.config_backup import read_credentials
from tests.test_roles import (
    ESTAFETA,
    INVENTORIES,
    RENDER_CONFIG,
    ROOT,
    changed_tasks,
    config_vars,
    failures,
    run_playbook,
    task_results,
)

LOCAL = ["-i", "localhost,"]
KEY = "0f" * 32
OTHER_KEY = "a1" * 32
PYTHON = str(ROOT / ".venv" / "bin" / "python")

CONFIG_THEN_CONTRACT = """
- name: Render estafeta.toml, then check its [backup] table as the backup role does
  hosts: mail_servers
  connection: local
  gather_facts: false
  tasks:
    - name: Write estafeta.toml with the estafeta role's own task file
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: config.yml
      when: not skip_render | default(false)
    - name: Check the table with the backup role's own task file
      ansible.builtin.include_role:
        name: backup
        tasks_from: contract.yml
"""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("mx1.example.org", "mx1.example.test", "mx2.example.net")
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


def contract_vars(tmp_path: Path, tls_files: tuple[Path, Path]) -> dict[str, Any]:
    return {
        **config_vars(tmp_path, tls_files),
        "backup__executable": str(ESTAFETA),
        "backup__config_path": str(tmp_path / "{{ inventory_hostname }}.toml"),
    }


# -- the [backup] table -------------------------------------------------------------------------


def test_example_renders_the_backup_table_the_backup_role_wants(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    args, _ = INVENTORIES["example"]
    variables = contract_vars(tmp_path, tls_files)
    rc, output, stderr = run_playbook(CONFIG_THEN_CONTRACT, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    config = tmp_path / "mx1.example.org.toml"
    check = subprocess.run(
        [str(ESTAFETA), "-c", str(config), "check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    # The estafeta role's table is the backup role's export (checked by its task) ...
    checked = [
        r for name, _, r in task_results(output) if name.endswith("this role's [backup] table")
    ]
    assert len(checked) == 1 and not checked[0].get("failed"), checked
    # ... and says what the example inventory says.
    assert tomllib.loads(config.read_text())["backup"] == {
        "key_file": str(tmp_path / "backup.key"),
        "destination": "s3://example-mail-backups/mx1.example.org",
        "s3_endpoint": "https://s3.eu-central-003.backblazeb2.com",
        "s3_region": "eu-central-003",
        "s3_path_style": False,
        "s3_credentials_file": str(tmp_path / "backup-s3.ini"),
        "uploads": 4,
        "keep_daily": 7,
        "keep_weekly": 4,
        "keep_monthly": 6,
    }
    # No secret of the vault reaches the configuration.
    assert "vault" not in config.read_text().lower()


def test_without_backups_there_is_no_backup_table(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    args, _ = INVENTORIES["lab"]
    variables = config_vars(tmp_path, tls_files)
    rc, output, stderr = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    for host in ("mx1.example.test", "mx2.example.net"):
        assert "backup" not in tomllib.loads((tmp_path / f"{host}.toml").read_text())


def test_a_table_that_differs_fails_the_backup_role_naming_both(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    args, _ = INVENTORIES["example"]
    variables = contract_vars(tmp_path, tls_files)
    rc, output, stderr = run_playbook(CONFIG_THEN_CONTRACT, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    # The backup role's settings change, estafeta.toml was not rendered again.
    changed = {**variables, "skip_render": True, "backup__keep_daily": 14}
    rc, output, _ = run_playbook(CONFIG_THEN_CONTRACT, tmp_path, *args, extra_vars=changed)
    assert rc != 0
    failed = [(name, r) for name, _, r in task_results(output) if r.get("failed")]
    assert [name for name, _ in failed] == [
        "backup : Check that estafeta.toml has this role's [backup] table"
    ]
    message = failed[0][1]["msg"]
    assert '"keep_daily": 7' in message and '"keep_daily": 14' in message
    assert "playbooks/estafeta.yml" in message


# -- the master key ------------------------------------------------------------------------------

KEY_PLAYBOOK = """
- name: The key and destination steps of the backup role
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Check the settings and write the key
      ansible.builtin.include_role:
        name: backup
        tasks_from: key.yml
    - name: Prepare the destination
      ansible.builtin.include_role:
        name: backup
        tasks_from: destination.yml
"""


def key_vars(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "ansible_python_interpreter": PYTHON,
        "backup__key": KEY,
        "backup__key_file": str(tmp_path / "backup.key"),
        "backup__destination": "s3://bucket/mx1",
        "backup__s3_access_key_id": "AKIDEXAMPLE",
        "backup__s3_secret_access_key": "s3-secret-never-shown",
        "backup__s3_credentials_file": str(tmp_path / "backup-s3.ini"),
        "backup__user": getpass.getuser(),
        "backup__group": grp.getgrgid(os.getgid()).gr_name,
        **extra,
    }


def shown(output: dict[str, Any], stderr: str) -> str:
    return json.dumps(output) + stderr


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", "openssl rand -hex 32 | ansible-vault encrypt_string --stdin-name backup__key"),
        ("0f" * 31, "is not 64 hexadecimal digits"),
    ],
)
def test_no_key_or_a_malformed_one_fails_before_anything_is_written(
    tmp_path: Path, key: str, words: str
) -> None:
    rc, output, _ = run_playbook(
        KEY_PLAYBOOK, tmp_path, *LOCAL, extra_vars=key_vars(tmp_path, backup__key=key)
    )
    assert rc != 0
    ran = [name for name, _, _ in task_results(output)]
    assert ran[-1] == "backup : Check the backup settings", ran
    (result,) = [r for name, _, r in task_results(output) if name == ran[-1]]
    assert words in result["msg"]
    assert not (tmp_path / "backup.key").exists()


def test_the_key_is_written_once_0600_and_never_shown(tmp_path: Path) -> None:
    variables = key_vars(tmp_path)
    # Check mode with --diff on a new host: it would write, and shows nothing.
    rc, output, stderr = run_playbook(
        KEY_PLAYBOOK, tmp_path, *LOCAL, "--check", "--diff", extra_vars=variables
    )
    assert rc == 0, failures(output) or stderr
    assert "backup : Write the backup master key" in [
        name for name, _, r in task_results(output) if r.get("changed")
    ]
    assert not (tmp_path / "backup.key").exists()
    assert KEY not in shown(output, stderr) and "s3-secret-never-shown" not in shown(output, stderr)

    rc, output, stderr = run_playbook(
        KEY_PLAYBOOK, tmp_path, *LOCAL, "--diff", extra_vars=variables
    )
    assert rc == 0, failures(output) or stderr
    key_file = tmp_path / "backup.key"
    assert key_file.read_text() == KEY + "\n"
    assert key_file.stat().st_mode & 0o777 == 0o600
    for name, _, result in task_results(output):
        if name in ("backup : Write the backup master key", "backup : Write the S3 credentials"):
            assert result.get("censored"), (name, result)
    assert KEY not in shown(output, stderr) and "s3-secret-never-shown" not in shown(output, stderr)

    # The server reads both files as the role wrote them.
    assert load_key(key_file) == bytes.fromhex(KEY)
    credentials = tmp_path / "backup-s3.ini"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert read_credentials(credentials) == ("AKIDEXAMPLE", "s3-secret-never-shown")

    rc, output, stderr = run_playbook(KEY_PLAYBOOK, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []


def test_a_different_key_on_the_host_is_not_replaced(tmp_path: Path) -> None:
    key_file = tmp_path / "backup.key"
    key_file.write_text(OTHER_KEY + "\n")
    key_file.chmod(0o600)
    rc, output, stderr = run_playbook(KEY_PLAYBOOK, tmp_path, *LOCAL, extra_vars=key_vars(tmp_path))
    assert rc != 0
    failed = [(name, r) for name, _, r in task_results(output) if r.get("failed")]
    assert [name for name, _ in failed] == [
        "backup : Refuse to replace a different key on the host"
    ]
    assert "holds another key than backup__key" in failed[0][1]["msg"]
    assert key_file.read_text() == OTHER_KEY + "\n"
    assert OTHER_KEY not in shown(output, stderr) and KEY not in shown(output, stderr)

    variables = key_vars(tmp_path, backup__key_replace=True)
    rc, output, stderr = run_playbook(KEY_PLAYBOOK, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert key_file.read_text() == KEY + "\n"


def test_a_directory_destination_is_made_for_the_estafeta_user(tmp_path: Path) -> None:
    variables = key_vars(
        tmp_path,
        backup__destination=str(tmp_path / "repository"),
        backup__s3_access_key_id="",
        backup__s3_secret_access_key="",
    )
    (tmp_path / "backup-s3.ini").write_text("left from an S3 destination\n")
    rc, output, stderr = run_playbook(KEY_PLAYBOOK, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert (tmp_path / "repository").stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "backup-s3.ini").exists()


def test_a_relative_destination_fails(tmp_path: Path) -> None:
    variables = key_vars(tmp_path, backup__destination="backups/mx1")
    rc, output, _ = run_playbook(KEY_PLAYBOOK, tmp_path, *LOCAL, extra_vars=variables)
    assert rc != 0
    (result,) = [r for name, _, r in task_results(output) if r.get("failed")]
    assert "neither s3://BUCKET/PREFIX nor an absolute directory" in result["msg"]


# -- the systemd units ---------------------------------------------------------------------------

UNITS = """
- name: Render the backup units
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: backup
      # Only the defaults (role vars); the templates are rendered below.
      when: false
  tasks:
    - name: Write the units
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.template', role_dir ~ '/templates/' ~ item) }}"
        dest: "{{ out }}/{{ item | replace('.j2', '') }}"
        mode: "0644"
      loop: [estafeta-backup.service.j2, estafeta-backup.timer.j2]
"""


@pytest.mark.parametrize("destination", ["s3://bucket/mx1", "/srv/backup/estafeta"])
def test_the_units_run_create_then_prune_daily(tmp_path: Path, destination: str) -> None:
    variables = {
        "ansible_python_interpreter": PYTHON,
        "role_dir": str(ROOT / "roles" / "backup"),
        "out": str(tmp_path),
        "backup__destination": destination,
        "backup__key": KEY,
    }
    rc, output, stderr = run_playbook(UNITS, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    service = (tmp_path / "estafeta-backup.service").read_text()
    timer = (tmp_path / "estafeta-backup.timer").read_text()
    run = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert run == [
        "ExecStart=/opt/estafeta/bin/estafeta -c /etc/estafeta/estafeta.toml backup create"
        " --no-progress",
        "ExecStart=/opt/estafeta/bin/estafeta -c /etc/estafeta/estafeta.toml backup prune",
    ]
    assert "Type=oneshot" in service and "User=estafeta" in service
    writable = "ReadWritePaths=/var/lib/estafeta"
    if destination.startswith("/"):
        writable += f" {destination}"
    assert f"\n{writable}\n" in service
    for line in ("OnCalendar=daily", "RandomizedDelaySec=1h", "Persistent=true"):
        assert f"\n{line}\n" in timer
    analyze, true = shutil.which("systemd-analyze"), shutil.which("true")
    if analyze and true:
        # systemd's own check of both units (the program must exist: true
        # stands in for estafeta). It prints each problem as "FILE:LINE: ...".
        service_file = tmp_path / "estafeta-backup.service"
        service_file.write_text(service.replace("/opt/estafeta/bin/estafeta", true))
        checked = subprocess.run(
            [
                analyze,
                "verify",
                "--man=no",
                str(service_file),
                str(tmp_path / "estafeta-backup.timer"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0 and "estafeta-backup." not in checked.stderr, checked.stderr


# -- lab_s3: the wheelhouse tarball --------------------------------------------------------------


def load_lab_s3_builder() -> Any:
    path = ROOT / "roles" / "lab_s3" / "files" / "build_wheelhouse.py"
    spec = importlib.util.spec_from_file_location("lab_s3_build_wheelhouse", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lab_s3_wheelhouse_is_built_once_and_reproducible(tmp_path: Path) -> None:
    wheel = tmp_path / "dist" / "labpkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("labpkg/__init__.py", "x = 1\n")
        archive.writestr(
            "labpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: labpkg\nVersion: 1.0\n"
        )
        archive.writestr(
            "labpkg-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr("labpkg-1.0.dist-info/RECORD", "")
    build = load_lab_s3_builder()
    offline = ["--no-index", "--no-deps"]
    first = build.build(tmp_path / "a", [str(wheel)], offline)
    assert first["built"] and first["wheels"] == [wheel.name]
    again = build.build(tmp_path / "a", [str(wheel)], offline)
    assert not again["built"] and again["tarball"] == first["tarball"]
    other = build.build(tmp_path / "b", [str(wheel)], offline)
    assert Path(other["tarball"]).read_bytes() == Path(first["tarball"]).read_bytes()
