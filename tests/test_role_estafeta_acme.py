"""The estafeta role with the tls role's mode acme_builtin: [acme] instead of
[tls], from the tls variables, for the lab (pebble) and the production
example (Let's Encrypt), accepted by `estafeta check`."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.test_roles import (
    ESTAFETA,
    INVENTORIES,
    RENDER_CONFIG,
    config_vars,
    failures,
    run_playbook,
)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("mx1.example.test")
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(cert.cert_chain_pems[0].bytes())
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


def rendered(
    inventory: str, tmp_path: Path, tls_files: tuple[Path, Path], **extra: Any
) -> dict[str, dict[str, Any]]:
    args, inventory_vars = INVENTORIES[inventory]
    variables = {**config_vars(tmp_path, tls_files), **inventory_vars, **extra}
    rc, output, stderr = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    configs = {}
    for path in sorted(tmp_path.glob("*.toml")):
        check = subprocess.run(
            [str(ESTAFETA), "-c", str(path), "check"], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr
        configs[path.stem] = tomllib.loads(path.read_text())
    return configs


def test_the_lab_gets_its_certificates_from_pebble(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    # The CA file of pebble's directory, as the tls role copies it to the host.
    ca = tmp_path / "acme-directory-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    configs = rendered("lab", tmp_path, tls_files, estafeta__acme_ca_bundle=str(ca))
    mx1 = configs["mx1.example.test"]
    assert "tls" not in mx1
    acme = mx1["acme"]
    assert acme["directory"].endswith(":14000/dir")
    assert acme["challenge"] == "http-01"
    assert acme["ca_bundle"] == str(ca)
    assert acme["email"] == "postmaster@example.test"
    assert acme["reuse_key"] is False
    # The hostname and mta-sts. etc. are always in; the webmail's name too.
    assert acme["names"] == ["webmail.example.test"]
    # HTTP-01 on 80; the policy and the account pages on 443 (mx1: behind the
    # webmail's stream front, which sends a PROXY header).
    assert mx1["listen"]["http"] == ["0.0.0.0:80"]
    assert mx1["listen"]["https"] == ["127.0.0.1:8443"]
    assert mx1["web"] == {"proxy_protocol": ["127.0.0.1/32"], "proxy_protocol_listeners": ["https"]}
    mx2 = configs["mx2.example.net"]
    assert mx2["acme"]["names"] == [] and mx2["listen"]["https"] == ["0.0.0.0:443"]
    # DANE on mx2 (signed example.net, issue 22): the key rollover with lab timings.
    assert acme["dane"] is False and "dane_ports" not in acme
    assert mx2["acme"]["dane"] is True
    assert (mx2["acme"]["dane_ports"], mx2["acme"]["dane_margin"]) == ([25], "4s")
    assert "web" not in mx2
    assert set(configs) == {"mx1.example.test", "mx2.example.net"}


def test_the_production_example_keeps_its_key_for_dane(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    configs = rendered("example", tmp_path, tls_files)
    for config in configs.values():
        acme = config["acme"]
        assert acme["directory"] == "https://acme-v02.api.letsencrypt.org/directory"
        assert "ca_bundle" not in acme
        # dns_records__tlsa is on in the example: DANE 3 1 1 names the key,
        # which changes only by the rollover (a standby key seen in DNS for a day).
        assert acme["reuse_key"] is True
        assert (acme["dane"], acme["dane_ports"], acme["dane_margin"]) == (True, [25], "1d")
        assert "tls" not in config and "https" in config["listen"]


def test_other_tls_modes_keep_the_tls_table(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    configs = rendered("example", tmp_path, tls_files, tls__mode="acme")
    for config in configs.values():
        assert "acme" not in config
        assert config["tls"]["cert"] == str(tls_files[0])


def test_dns01_is_refused_for_the_builtin_client(tmp_path: Path) -> None:
    play = """
- name: The tls role's checks only
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run the acme_builtin tasks
      ansible.builtin.include_role:
        name: tls
        tasks_from: acme_builtin.yml
      vars:
        tls__mode: acme_builtin
        tls__acme_challenge: dns-01
        tls__register_dir: {stat: {exists: true}}
"""
    rc, output, _ = run_playbook(play, tmp_path, "-i", "localhost,")
    assert rc != 0
    assert "For dns-01 use tls__mode acme" in failures(output)
