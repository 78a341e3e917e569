"""The dns_records role with provider route53, against moto in server mode.

AWS is out of reach, so Route 53 is moto's (``python -m moto.server`` on a
free port of 127.0.0.1, with fake credentials). The role runs on localhost
with ``ansible-playbook`` and the JSON callback, like tests/test_roles.py, and
the test reads the records back with boto3:

- every record of the domain is there with the value Route 53 stores (TXT
  values quoted and split into strings of at most 255 octets, the 2048-bit
  DKIM key in two); records the role does not own are left alone, and in the
  apex TXT set the foreign values (``google-site-verification=``, ``MS=``)
  stay while the foreign SPF is merged with ours into one value (the record
  set is read, changed and written back whole);
- a second run and a ``--check --diff`` run change nothing;
- a changed input (the DMARC policy) updates exactly that record, and the
  diff shows exactly its old and new line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ZONE = "example.org"
HOST = "mx1.example.org"
TTL = 300
SHOW_TASK = "dns_records : Show the record changes"
# moto takes any credentials; the role gets them as variables only.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """The environment without AWS credentials, region or configuration files."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return {
        **env,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto server (all services, in memory) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    log_path = root / "moto.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=log,
            env=isolated_env(root),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"moto exited: {log_path.read_text(errors='replace')}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


@pytest.fixture
def route53(moto_endpoint: str) -> Iterator[Any]:
    """A boto3 Route 53 client of the moto server."""
    client = boto3.session.Session().client(
        "route53",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    try:
        yield client
    finally:
        client.close()


# -- running the role ------------------------------------------------------------------------

PLAYBOOK = """
- name: Publish the mail records in Route 53
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - dns_records
"""


def run_role(
    tmp_path: Path, variables: dict[str, Any], *args: str
) -> tuple[int, dict[str, Any], str]:
    """Run the role on localhost; returns (rc, JSON callback output, stderr)."""
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(PLAYBOOK)
    ansible_playbook = shutil.which("ansible-playbook")
    assert ansible_playbook, "ansible-playbook not on PATH (run with .venv/bin on PATH)"
    env = {
        **isolated_env(tmp_path),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
    }
    command = [
        ansible_playbook,
        str(playbook),
        "-i",
        "localhost,",
        "--extra-vars",
        json.dumps(variables),
        *args,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON from ansible-playbook:\n{result.stdout}\n{result.stderr}"
        ) from None
    return result.returncode, output, result.stderr


def task_results(output: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (task["task"]["name"], result)
        for play in output["plays"]
        for task in play["tasks"]
        for result in task["hosts"].values()
    ]


def failures(output: dict[str, Any]) -> str:
    return "\n".join(
        f"{name}: {result.get('msg')} {result.get('results', '')}"
        for name, result in task_results(output)
        if result.get("failed") and not result.get("ignore_errors")
    )


def recap(output: dict[str, Any]) -> dict[str, int]:
    """The PLAY RECAP of localhost (ok, changed, failures, ...)."""
    return dict(output["stats"]["localhost"])


def changed_items(output: dict[str, Any]) -> list[str]:
    """``TYPE NAME`` of the record sets the role changed (from its diff task)."""
    return [
        f"{change['type']} {change['name']}"
        for name, result in task_results(output)
        if name == SHOW_TASK
        for change in result.get("changes", [])
    ]


def diff_lines(output: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(removed, added) record lines of the role's diff."""
    [diff] = [result["diff"] for name, result in task_results(output) if name == SHOW_TASK]
    diff = diff[0] if isinstance(diff, list) else diff
    before, after = set(diff["before"].splitlines()), set(diff["after"].splitlines())
    return before - after, after - before


# -- what Route 53 holds ---------------------------------------------------------------------


def zone_id(route53: Any, name: str) -> str:
    zones = route53.list_hosted_zones_by_name(DNSName=name)["HostedZones"]
    matching = [zone["Id"] for zone in zones if zone["Name"] == f"{name}."]
    assert len(matching) == 1, zones
    return str(matching[0])


def record_sets(route53: Any, hosted_zone: str) -> dict[tuple[str, str], tuple[int, list[str]]]:
    """{(name, type): (ttl, values)} of the zone, names with the final dot."""
    found = {}
    for page in route53.get_paginator("list_resource_record_sets").paginate(
        HostedZoneId=hosted_zone
    ):
        for rrset in page["ResourceRecordSets"]:
            values = [record["Value"] for record in rrset.get("ResourceRecords", [])]
            found[(rrset["Name"], rrset["Type"])] = (rrset.get("TTL", 0), values)
    return found


def quoted(text: str) -> str:
    """A TXT value as Route 53 stores it: strings of at most 255 octets, quoted."""
    data = text.encode()
    strings = [data[start : start + 255].decode() for start in range(0, len(data), 255)]
    return " ".join(f'"{string}"' for string in strings)


def dkim_rsa_record() -> str:
    """A DKIM key record of a fresh 2048-bit RSA key (about 410 octets)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


FOREIGN_TXT = [quoted("google-site-verification=abc"), quoted("MS=ms123")]


def expected_records(dkim: str, dmarc_policy: str) -> dict[tuple[str, str], list[str]]:
    policy = f"version: STSv1\r\nmode: testing\r\nmx: {HOST}\r\nmax_age: 604800\r\n"
    # The role's policy id: the first 20 hex digits of the policy's SHA-1 (not security).
    policy_id = hashlib.sha1(policy.encode(), usedforsecurity=False).hexdigest()[:20]
    target = f"{HOST}."
    return {
        (f"{ZONE}.", "MX"): [f"10 {target}"],
        (f"{ZONE}.", "TXT"): [
            quoted("v=spf1 mx include:_spf.example.net -all"),
            quoted("example-verification=abc123"),
            *FOREIGN_TXT,
        ],
        (f"_dmarc.{ZONE}.", "TXT"): [
            quoted(f"v=DMARC1; p={dmarc_policy}; rua=mailto:postmaster@{ZONE}")
        ],
        (f"rsa2025._domainkey.{ZONE}.", "TXT"): [quoted(dkim)],
        (f"_mta-sts.{ZONE}.", "TXT"): [quoted(f"v=STSv1; id={policy_id}")],
        (f"_smtp._tls.{ZONE}.", "TXT"): [quoted(f"v=TLSRPTv1; rua=mailto:postmaster@{ZONE}")],
        (f"_submissions._tcp.{ZONE}.", "SRV"): [f"0 1 465 {target}"],
        (f"_submission._tcp.{ZONE}.", "SRV"): [f"10 1 587 {target}"],
        (f"_imaps._tcp.{ZONE}.", "SRV"): [f"0 1 993 {target}"],
        (f"_imap._tcp.{ZONE}.", "SRV"): [f"10 1 143 {target}"],
        (f"_pop3s._tcp.{ZONE}.", "SRV"): ["0 0 0 ."],
        (f"_pop3._tcp.{ZONE}.", "SRV"): ["0 0 0 ."],
        # rfc5804:1.8 — the example inventory offers ManageSieve on 4190.
        (f"_sieve._tcp.{ZONE}.", "SRV"): [f"0 1 4190 {target}"],
        (f"autoconfig.{ZONE}.", "CNAME"): [target],
        (f"autodiscover.{ZONE}.", "CNAME"): [target],
        (f"mta-sts.{ZONE}.", "CNAME"): [target],
    }


def test_route53_publishes_the_records_and_is_idempotent(
    route53: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    hosted_zone = route53.create_hosted_zone(Name=ZONE, CallerReference=str(time.time_ns()))
    hosted_zone_id = hosted_zone["HostedZone"]["Id"]
    assert zone_id(route53, ZONE) == hosted_zone_id
    # Records that are there before: foreign values in the apex TXT set (two
    # verification tokens and an SPF with another sender's include) and an
    # address record the role does not publish.
    route53.change_resource_record_sets(
        HostedZoneId=hosted_zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": f"{ZONE}.",
                        "Type": "TXT",
                        "TTL": 60,
                        "ResourceRecords": [
                            {"Value": value}
                            for value in [
                                *FOREIGN_TXT,
                                quoted("v=spf1 include:_spf.example.net ~all"),
                            ]
                        ],
                    },
                },
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": f"www.{ZONE}.",
                        "Type": "A",
                        "TTL": 60,
                        "ResourceRecords": [{"Value": "192.0.2.80"}],
                    },
                },
            ]
        },
    )

    dkim = dkim_rsa_record()
    assert len(dkim) > 255
    variables: dict[str, Any] = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "dns_records__provider": "route53",
        "dns_records__route53_endpoint_url": moto_endpoint,
        "dns_records__route53_access_key": ACCESS_KEY,
        "dns_records__route53_secret_key": SECRET_KEY,
        "dns_records__domains": [ZONE],
        "dns_records__hostname": HOST,
        "dns_records__ttl": TTL,
        "dns_records__apex_txt": ["example-verification=abc123"],
        "dns_records__dkim_records": [{"name": f"rsa2025._domainkey.{ZONE}", "value": dkim}],
        "dns_records__mta_sts": True,
        "dns_records__mta_sts_policy_dir": str(tmp_path / "policies"),
        "dns_records__state_dir": str(tmp_path / "state"),
        # No DNS server serves moto's zones, so there is nothing to check against.
        "dns_records__check": False,
    }

    rc, output, stderr = run_role(tmp_path, variables)
    assert rc == 0, failures(output) or stderr
    expected = expected_records(dkim, "none")
    assert sorted(changed_items(output)) == sorted(f"{kind} {name[:-1]}" for name, kind in expected)
    published = record_sets(route53, hosted_zone_id)
    for key, values in expected.items():
        assert key in published, f"{key} not published: {sorted(published)}"
        ttl = 60 if key == (f"{ZONE}.", "TXT") else TTL  # a shared set keeps its TTL
        assert published[key][0] == ttl, key
        assert sorted(published[key][1]) == sorted(values), key
    dkim_strings = published[(f"rsa2025._domainkey.{ZONE}.", "TXT")][1][0]
    assert dkim_strings.count('" "') == 1, "the DKIM record is not split in two strings"
    assert all(len(part) <= 255 for part in dkim_strings.strip('"').split('" "'))
    # The rest of the zone is as it was.
    assert published[(f"www.{ZONE}.", "A")] == (60, ["192.0.2.80"])
    assert set(published) == {
        *expected,
        (f"{ZONE}.", "NS"),
        (f"{ZONE}.", "SOA"),
        (f"www.{ZONE}.", "A"),
    }
    assert (tmp_path / "policies" / f"{ZONE}.txt").is_file()

    # Idempotent: nothing changes on the second run, nor in check mode.
    rc, output, stderr = run_role(tmp_path, variables)
    assert rc == 0, failures(output) or stderr
    assert recap(output)["changed"] == 0, changed_items(output)
    rc, output, stderr = run_role(tmp_path, variables, "--check", "--diff")
    assert rc == 0, failures(output) or stderr
    assert recap(output)["changed"] == 0, changed_items(output)
    assert record_sets(route53, hosted_zone_id) == published

    # A new DMARC policy updates that record and no other; --check --diff says so first.
    variables["dns_records__dmarc"] = {"p": "quarantine", "rua": ["mailto:postmaster@{domain}"]}
    dmarc = (f"_dmarc.{ZONE}.", "TXT")
    old_line = f"{dmarc[0]} {TTL} IN TXT {published[dmarc][1][0]}"
    new_line = f"{dmarc[0]} {TTL} IN TXT {expected_records(dkim, 'quarantine')[dmarc][0]}"
    rc, output, stderr = run_role(tmp_path, variables, "--check", "--diff")
    assert rc == 0, failures(output) or stderr
    assert diff_lines(output) == ({old_line}, {new_line})
    assert record_sets(route53, hosted_zone_id) == published
    rc, output, stderr = run_role(tmp_path, variables)
    assert rc == 0, failures(output) or stderr
    assert changed_items(output) == [f"TXT _dmarc.{ZONE}"]
    updated = record_sets(route53, hosted_zone_id)
    assert updated[dmarc] == (TTL, expected_records(dkim, "quarantine")[dmarc])
    assert {key: value for key, value in updated.items() if key != dmarc} == {
        key: value for key, value in published.items() if key != dmarc
    }
