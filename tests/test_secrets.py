"""No secret reaches Ansible's output, and a password rotated in the vault
takes effect (issue 19 §1).

Every run here is ``ansible-playbook -vvv --diff`` with the default callback
and the repository's ansible.cfg, the output a user sees, and the secrets
come from an ansible-vault encrypted host_vars file as in a real inventory.
All that is printed (stdout and stderr) is searched for every secret: as
is, and inside every base64 run (``slurp`` returns file contents in base64).
The runs go to localhost with a local connection and files under tmp_path:

- accounts (roles/estafeta/tasks/accounts.yml) against a real estafeta
  (``estafeta_server``): created, a second run changes nothing, a password
  rotated in the vault is reported by ``--check`` without being set, then
  set by the next run: over IMAP the old password is refused and the new one
  accepted, and the run after changes nothing;
- failing account items (a password estafeta refuses, a domain it does not
  serve): the output names the account and the reason, never a password,
  and the other items are still done;
- the configuration (tasks/config.yml): the smarthost (relay) and rspamd
  controller passwords are written to their files, in check mode with
  ``--diff`` too, and a bad relay setting fails ``estafeta check`` naming the
  key;
- the backup role's key and S3 steps (tasks/key.yml, destination.yml,
  contract.yml): the master key and the S3 secret key, also when the role
  refuses a different key found on the host;
- the tls role with a key from the vault (tls__mode provided), first in
  check mode on a new host (no certificate directory: issue 19 §6), and
  self-signed in check mode on a new host: nothing fails, nothing is made.

The TSIG key and the AWS keys of the dns_records role are covered by
tests/test_role_dns_records.py (test_tsig_secret_and_aws_keys_stay_out_of_the_output).
The secrets of the tls role's DNS-01 tasks (TSIG key, AWS key, API tokens)
are covered by tests/test_role_tls_dns01.py, which runs them against pebble.
Not covered here: the rspamd role (it installs and starts system services).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import grp
import imaplib
import json
import os
import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.test_roles import ESTAFETA, ROOT, config_vars

PYTHON = str(ROOT / ".venv" / "bin" / "python")
VAULT_PASSWORD = "vault-password-of-the-secrets-test"

# Passwords estafeta accepts (12+ characters, zxcvbn score 3) without spaces:
# the YAML result format folds long lines at spaces, which would split one.
PASSWORD_A = "Umbra7-Kettle-Quasar-Fjord"
PASSWORD_B = "Vellum3-Orchid-Zephyr-Tundra"
PASSWORD_OK = "Basalt9-Meadow-Copper-Lynx"
PASSWORD_OTHER_DOMAIN = "Cobalt5-Harbor-Ginger-Moth"
PASSWORD_SHORT = "qX7!shrt"  # refused by estafeta: under 12 characters
PASSWORD_TYPO = "Saffron6-Glacier-Ribbon-Wren"
RELAY_PASSWORD = "Relay8-Smarthost-Walnut-Piano"
RELAY_PASSWORD_NEW = "Relay2-Lantern-Oyster-Mosaic"
RSPAMD_PASSWORD = "Rspamd4-Controller-Tulip-Anvil"
BACKUP_KEY = "7c" * 8 + "e1" * 8 + "3a" * 8 + "d9" * 8
OTHER_BACKUP_KEY = "5b" * 32
S3_SECRET = "S3secretKEYnever0shown0anywhere0x"


# -- running a playbook the way a user does ----------------------------------------------------


@dataclass
class Run:
    rc: int
    text: str  # stdout and stderr

    def recap(self) -> dict[str, int]:
        found = re.search(
            r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
            self.text,
            re.MULTILINE,
        )
        assert found, f"no PLAY RECAP in:\n{self.text[-3000:]}"
        names = ("ok", "changed", "unreachable", "failed")
        return dict(zip(names, map(int, found.groups()), strict=True))


def vaulted(value: str) -> str:
    """``value`` as an ansible-vault ciphertext (what encrypt_string prints)."""
    vault = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])
    return str(vault.encrypt(value).decode())


def write_inventory(tmp_path: Path, secrets: dict[str, str]) -> list[str]:
    """localhost with ``secrets`` in host_vars, each vaulted; returns the options."""
    inventory = tmp_path / "inventory"
    (inventory / "host_vars" / "localhost").mkdir(parents=True, exist_ok=True)
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": PYTHON,
                        }
                    }
                }
            }
        )
    )
    lines = [f"{name}: !vault |\n" + _indent(vaulted(value)) for name, value in secrets.items()]
    (inventory / "host_vars" / "localhost" / "vault.yml").write_text("---\n" + "".join(lines))
    password_file = tmp_path / "vault-password.txt"
    password_file.write_text(VAULT_PASSWORD + "\n")
    return ["-i", str(inventory / "hosts.yml"), "--vault-password-file", str(password_file)]


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def run(
    playbook: str, tmp_path: Path, inventory: list[str], *args: str, extra_vars: dict[str, Any]
) -> Run:
    path = tmp_path / f"playbook-{len(list(tmp_path.glob('playbook-*')))}.yml"
    path.write_text(playbook)
    command = [
        str(ROOT / ".venv" / "bin" / "ansible-playbook"),
        str(path),
        "-vvv",
        "--diff",
        *inventory,
        *args,
        "--extra-vars",
        json.dumps(extra_vars),
    ]
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    for name in ("ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACK_RESULT_FORMAT"):
        env.pop(name, None)
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False
    )
    return Run(result.returncode, result.stdout + result.stderr)


_BASE64 = re.compile(r"[A-Za-z0-9+/]{12,}={0,2}")


def leaked(text: str, secrets: list[str]) -> list[str]:
    """The secrets found in ``text``, as they are or inside a base64 run."""
    decoded = []
    for match in _BASE64.finditer(text):
        token = match.group()
        # Try each alignment: a run may carry a few characters before the data.
        for start in range(4):
            chunk = token[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded.append(base64.b64decode(chunk, validate=True).decode("latin-1"))
            except (binascii.Error, ValueError):
                continue
    haystack = "\n".join([text, *decoded])
    return [secret for secret in secrets if secret in haystack]


def assert_no_secret(result: Run, secrets: list[str]) -> None:
    found = leaked(result.text, secrets)
    assert not found, f"secrets printed: {found}"


def test_the_search_finds_plain_and_base64_secrets() -> None:
    """The detector itself: a secret in plain text, slurped, or inside a file's base64."""
    secret = "Umbra7-Kettle"
    assert leaked(f"password: {secret}", [secret]) == [secret]
    assert leaked(base64.b64encode(f"{secret}\n".encode()).decode(), [secret]) == [secret]
    ini = base64.b64encode(f"[default]\naws_secret_access_key = {secret}\n".encode()).decode()
    assert leaked(f'content: "{ini}"', [secret]) == [secret]
    assert leaked("password: VALUE_SPECIFIED_IN_NO_LOG_PARAMETER", [secret]) == []


# -- accounts: rotation over IMAP ---------------------------------------------------------------

ACCOUNTS = """
- name: Manage the accounts with the estafeta role's own task file
  hosts: all
  gather_facts: false
  tasks:
    - name: Manage the accounts
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: accounts.yml
"""


def account_vars(server: Any, accounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "estafeta__config_path": str(server.config),
        "estafeta__admin_command": str(ESTAFETA),
        "estafeta__host_accounts": accounts,
    }


def imap_login(server: Any, address: str, password: str) -> bool:
    """Whether the real server takes ``password`` for ``address`` over IMAPS."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    with imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=context, timeout=60
    ) as imap:
        try:
            imap.login(address, password)
        except imaplib.IMAP4.error:
            return False
        imap.logout()
        return True


def test_a_rotated_vault_password_is_set_and_the_old_one_refused(
    estafeta_server: Any, tmp_path: Path
) -> None:
    address = "carol@example.test"
    accounts = [{"address": address, "password": "{{ vault_carol_password }}"}]
    variables = account_vars(estafeta_server, accounts)
    secrets = [PASSWORD_A, PASSWORD_B]

    inventory = write_inventory(tmp_path, {"vault_carol_password": PASSWORD_A})
    created = run(ACCOUNTS, tmp_path, inventory, extra_vars=variables)
    assert created.rc == 0, created.text[-4000:]
    assert created.recap()["changed"] == 1
    assert_no_secret(created, secrets)
    assert imap_login(estafeta_server, address, PASSWORD_A)

    again = run(ACCOUNTS, tmp_path, inventory, extra_vars=variables)
    assert again.rc == 0, again.text[-4000:]
    assert again.recap()["changed"] == 0
    assert_no_secret(again, secrets)

    # The vault now holds B. Check mode says it would change, and changes nothing.
    inventory = write_inventory(tmp_path, {"vault_carol_password": PASSWORD_B})
    checked = run(ACCOUNTS, tmp_path, inventory, "--check", extra_vars=variables)
    assert checked.rc == 0, checked.text[-4000:]
    assert checked.recap()["changed"] == 1
    assert "password: (changed)" in checked.text
    assert_no_secret(checked, secrets)
    assert imap_login(estafeta_server, address, PASSWORD_A)

    rotated = run(ACCOUNTS, tmp_path, inventory, extra_vars=variables)
    assert rotated.rc == 0, rotated.text[-4000:]
    assert rotated.recap()["changed"] == 1
    assert_no_secret(rotated, secrets)
    assert not imap_login(estafeta_server, address, PASSWORD_A)
    assert imap_login(estafeta_server, address, PASSWORD_B)

    settled = run(ACCOUNTS, tmp_path, inventory, extra_vars=variables)
    assert settled.rc == 0, settled.text[-4000:]
    assert settled.recap()["changed"] == 0
    assert_no_secret(settled, secrets)


def test_on_create_keeps_the_password_users_chose(estafeta_server: Any, tmp_path: Path) -> None:
    address = "erin@example.test"
    accounts = [
        {
            "address": address,
            "password": "{{ vault_erin_password }}",
            "update_password": "on_create",
        }
    ]
    variables = account_vars(estafeta_server, accounts)
    inventory = write_inventory(tmp_path, {"vault_erin_password": PASSWORD_A})
    assert run(ACCOUNTS, tmp_path, inventory, extra_vars=variables).rc == 0
    inventory = write_inventory(tmp_path, {"vault_erin_password": PASSWORD_B})
    kept = run(ACCOUNTS, tmp_path, inventory, extra_vars=variables)
    assert kept.rc == 0, kept.text[-4000:]
    assert kept.recap()["changed"] == 0
    assert_no_secret(kept, [PASSWORD_A, PASSWORD_B])
    assert imap_login(estafeta_server, address, PASSWORD_A)


# -- accounts: failing items ----------------------------------------------------------------------


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_failing_account_items_show_the_reason_and_no_password(
    estafeta_server: Any, tmp_path: Path, check: bool
) -> None:
    suffix = "c" if check else "r"
    good, short, foreign = (
        f"dave{suffix}@example.test",
        f"frank{suffix}@example.test",
        f"grace{suffix}@elsewhere.test",
    )
    secrets = {
        "vault_good": PASSWORD_OK,
        "vault_short": PASSWORD_SHORT,
        "vault_foreign": PASSWORD_OTHER_DOMAIN,
        "vault_typo": PASSWORD_TYPO,
    }
    accounts = [
        {"address": short, "password": "{{ vault_short }}"},
        {"address": foreign, "password": "{{ vault_foreign }}"},
        # A typo in the inventory: the error names the missing key, not the entry.
        {"adress": "typo@example.test", "password": "{{ vault_typo }}"},
        {"address": good, "password": "{{ vault_good }}"},
    ]
    inventory = write_inventory(tmp_path, secrets)
    variables = account_vars(estafeta_server, accounts)
    result = run(
        ACCOUNTS, tmp_path, inventory, *(["--check"] if check else []), extra_vars=variables
    )
    assert_no_secret(result, list(secrets.values()))
    # The failed items are named, with estafeta's reason.
    failed = [line for line in result.text.splitlines() if line.startswith("failed: [localhost]")]
    assert any(f"(item={foreign} (present))" in line for line in failed), failed
    assert "domain elsewhere.test is not one of the configured domains" in result.text
    assert "has no attribute 'address'" in result.text
    if check:
        # Check mode ignores the module's errors (a new host has no estafeta
        # yet), so the run passes; a short password is only found on creation.
        assert result.rc == 0, result.text[-4000:]
        assert not imap_login(estafeta_server, good, PASSWORD_OK)
    else:
        assert result.rc != 0
        assert any(f"(item={short} (present))" in line for line in failed), failed
        assert "password too short" in result.text
        # The other items were still done.
        assert imap_login(estafeta_server, good, PASSWORD_OK)


# -- the configuration: relay and rspamd passwords ------------------------------------------------

CONFIG = """
- name: Write the estafeta configuration with the role's own task file
  hosts: all
  gather_facts: false
  tasks:
    - name: Write estafeta.toml and its secret files
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: config.yml
"""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("mx.example.test")
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


def relay_vars(tmp_path: Path, tls_files: tuple[Path, Path]) -> dict[str, Any]:
    return {
        **config_vars(tmp_path, tls_files),
        "estafeta__hostname": "mx.example.test",
        "estafeta__domains": ["example.test"],
        "estafeta__queue_relay_host": "smtp.provider.example:587",
        "estafeta__queue_relay_username": "mx@example.test",
        "estafeta__queue_relay_password": "{{ vault_relay_password }}",
        "estafeta__rspamd": True,
        "estafeta__rspamd_password": "{{ vault_rspamd_password }}",
        "estafeta__rspamd_password_file": str(tmp_path / "rspamd.password"),
    }


def test_relay_and_rspamd_passwords_are_written_never_shown(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    assert ESTAFETA.exists(), f"{ESTAFETA} is missing (make venv)"
    secrets = [RELAY_PASSWORD, RELAY_PASSWORD_NEW, RSPAMD_PASSWORD]
    variables = relay_vars(tmp_path, tls_files)
    vault = {"vault_relay_password": RELAY_PASSWORD, "vault_rspamd_password": RSPAMD_PASSWORD}
    inventory = write_inventory(tmp_path, vault)

    # Check mode with --diff on a new host: it would write the files, shows none.
    checked = run(CONFIG, tmp_path, inventory, "--check", extra_vars=variables)
    assert checked.rc == 0, checked.text[-4000:]
    assert checked.recap()["changed"] > 0
    assert_no_secret(checked, secrets)
    assert not (tmp_path / "localhost.relay").exists()

    written = run(CONFIG, tmp_path, inventory, extra_vars=variables)
    assert written.rc == 0, written.text[-4000:]
    assert_no_secret(written, secrets)
    relay_file = tmp_path / "localhost.relay"
    assert relay_file.read_text() == RELAY_PASSWORD + "\n"
    assert relay_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "rspamd.password").read_text() == RSPAMD_PASSWORD + "\n"
    config = (tmp_path / "localhost.toml").read_text()
    assert str(relay_file) in config
    assert not leaked(config, secrets), "estafeta.toml holds a secret: its --diff would show it"

    # A rotated relay password: --check --diff reports the change, without it.
    vault["vault_relay_password"] = RELAY_PASSWORD_NEW
    inventory = write_inventory(tmp_path, vault)
    rotated = run(CONFIG, tmp_path, inventory, "--check", extra_vars=variables)
    assert rotated.rc == 0, rotated.text[-4000:]
    assert rotated.recap()["changed"] == 1
    assert_no_secret(rotated, secrets)

    # A bad relay setting fails `estafeta check`, naming the key, and no secret.
    broken = {**variables, "estafeta__queue_relay_security": "carrier-pigeon"}
    failed = run(CONFIG, tmp_path, inventory, extra_vars=broken)
    assert failed.rc != 0
    assert failed.recap()["failed"] == 1
    assert "queue.relay.security" in failed.text
    assert_no_secret(failed, secrets)
    # The new password file was written before the check failed; the old
    # configuration (which names the same file) stays.
    assert relay_file.read_text() == RELAY_PASSWORD_NEW + "\n"
    assert (tmp_path / "localhost.toml").read_text() == config


def test_an_unwritable_relay_password_file_fails_without_the_password(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    variables = {
        **relay_vars(tmp_path, tls_files),
        "estafeta__queue_relay_password_file": str(tmp_path / "missing" / "dir" / "relay"),
    }
    inventory = write_inventory(
        tmp_path,
        {"vault_relay_password": RELAY_PASSWORD, "vault_rspamd_password": RSPAMD_PASSWORD},
    )
    failed = run(CONFIG, tmp_path, inventory, extra_vars=variables)
    assert failed.rc != 0
    assert "estafeta : Write the smarthost password" in failed.text
    assert_no_secret(failed, [RELAY_PASSWORD, RSPAMD_PASSWORD])


# -- the backup key and the S3 secret -------------------------------------------------------------

BACKUP = """
- name: Write the configuration, then the backup role's key, destination and check
  hosts: all
  gather_facts: false
  tasks:
    - name: Write estafeta.toml with the estafeta role's own task file
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: config.yml
    - name: Check the settings and write the key
      ansible.builtin.include_role:
        name: backup
        tasks_from: key.yml
    - name: Prepare the destination
      ansible.builtin.include_role:
        name: backup
        tasks_from: destination.yml
    - name: Check the [backup] table
      ansible.builtin.include_role:
        name: backup
        tasks_from: contract.yml
"""


def backup_vars(tmp_path: Path, tls_files: tuple[Path, Path]) -> dict[str, Any]:
    return {
        **config_vars(tmp_path, tls_files),
        "estafeta__hostname": "mx.example.test",
        "estafeta__domains": ["example.test"],
        "backup__key": "{{ vault_backup__key }}",
        "backup__key_file": str(tmp_path / "backup.key"),
        "backup__destination": "s3://mail-backups/mx",
        "backup__s3_endpoint": "https://s3.example.test",
        "backup__s3_access_key_id": "AKIDSECRETSTEST",
        "backup__s3_secret_access_key": "{{ vault_backup__s3_secret_access_key }}",
        "backup__s3_credentials_file": str(tmp_path / "backup-s3.ini"),
        "backup__executable": str(ESTAFETA),
        "backup__config_path": str(tmp_path / "{{ inventory_hostname }}.toml"),
        "backup__user": getpass.getuser(),
        "backup__group": grp.getgrgid(os.getgid()).gr_name,
    }


def test_backup_key_and_s3_secret_are_written_never_shown(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    secrets = [BACKUP_KEY, OTHER_BACKUP_KEY, S3_SECRET]
    variables = backup_vars(tmp_path, tls_files)
    vault = {"vault_backup__key": BACKUP_KEY, "vault_backup__s3_secret_access_key": S3_SECRET}
    inventory = write_inventory(tmp_path, vault)

    checked = run(BACKUP, tmp_path, inventory, "--check", extra_vars=variables)
    assert checked.rc == 0, checked.text[-4000:]
    assert_no_secret(checked, secrets)

    written = run(BACKUP, tmp_path, inventory, extra_vars=variables)
    assert written.rc == 0, written.text[-4000:]
    assert_no_secret(written, secrets)
    assert (tmp_path / "backup.key").read_text() == BACKUP_KEY + "\n"
    assert S3_SECRET in (tmp_path / "backup-s3.ini").read_text()

    again = run(BACKUP, tmp_path, inventory, extra_vars=variables)
    assert again.rc == 0, again.text[-4000:]
    assert again.recap()["changed"] == 0
    assert_no_secret(again, secrets)

    # Another key on the host: refused, and neither key is shown.
    (tmp_path / "backup.key").write_text(OTHER_BACKUP_KEY + "\n")
    refused = run(BACKUP, tmp_path, inventory, extra_vars=variables)
    assert refused.rc != 0
    assert "holds another key than backup__key" in refused.text
    assert_no_secret(refused, secrets)
    assert (tmp_path / "backup.key").read_text() == OTHER_BACKUP_KEY + "\n"


# -- the tls role: a vaulted private key, and check mode on a new host ---------------------------

TLS = """
- name: Make the certificate with the tls role
  hosts: all
  gather_facts: false
  roles:
    - tls
"""


def tls_vars(tmp_path: Path, mode: str) -> dict[str, Any]:
    return {
        "tls__mode": mode,
        "tls__dir": str(tmp_path / "new" / "tls"),
        "tls__owner": getpass.getuser(),
        "tls__group": grp.getgrgid(os.getgid()).gr_name,
        "tls__key_type": "ecdsa",
        "tls__hostnames": ["mx.example.test"],
        "tls__restart_services": [],
        # The modules run with the controller's Python here, which has cryptography.
        "tls__packages": [],
    }


def test_a_vaulted_tls_key_is_written_never_shown(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("mx.example.test")
    key_pem = cert.private_key_pem.bytes().decode()
    # The key's longest base64 line stands for it (the PEM spans several lines).
    secret = max(key_pem.splitlines(), key=len)
    assert len(secret) >= 40
    inventory = write_inventory(tmp_path, {"vault_tls_key": key_pem})
    variables = {
        **tls_vars(tmp_path, "provided"),
        "tls__provided_fullchain": "".join(blob.bytes().decode() for blob in cert.cert_chain_pems),
        "tls__provided_key": "{{ vault_tls_key }}",
    }
    checked = run(TLS, tmp_path, inventory, "--check", extra_vars=variables)
    assert checked.rc == 0, checked.text[-4000:]
    assert checked.recap()["changed"] > 0
    assert_no_secret(checked, [secret])
    assert not (tmp_path / "new").exists()

    written = run(TLS, tmp_path, inventory, extra_vars=variables)
    assert written.rc == 0, written.text[-4000:]
    assert_no_secret(written, [secret])
    key_file = tmp_path / "new" / "tls" / "privkey.pem"
    assert key_file.read_text() == key_pem.strip() + "\n"
    assert key_file.stat().st_mode & 0o777 == 0o640

    again = run(TLS, tmp_path, inventory, "--check", extra_vars=variables)
    assert again.rc == 0, again.text[-4000:]
    assert again.recap()["changed"] == 0
    assert_no_secret(again, [secret])


def test_self_signed_check_mode_on_a_new_host(tmp_path: Path) -> None:
    """The "Create the private key" failure of issue 19: the directory does not exist."""
    inventory = write_inventory(tmp_path, {})
    checked = run(TLS, tmp_path, inventory, "--check", extra_vars=tls_vars(tmp_path, "self_signed"))
    assert checked.rc == 0, checked.text[-4000:]
    assert checked.recap()["failed"] == 0 and "...ignoring" not in checked.text
    assert "does not exist yet. A run creates it" in checked.text
    assert not (tmp_path / "new").exists()
