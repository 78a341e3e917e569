"""The dns_records role against a real Knot (RFC 2136 with TSIG) and as a zone file.

Each test writes a small playbook and runs ``ansible-playbook`` on the
controller with the JSON callback (helpers from tests/test_roles.py); Knot is
Debian's knotd on 127.0.0.1 and a free port, queried with dnspython before and
after each run:

- zonefile: the example inventory's records land in the snippet, a second run
  changes nothing;
- nsupdate: the example inventory's records are published, mail_dns_check
  finds them right, a second run changes nothing;
- ownership (issue 19, acceptance 2): on a zone that already has foreign TXT
  values at the apex and a foreign SPF with another include, ``--check --diff``
  shows exactly the record lines added and removed and changes nothing in
  Knot; the run keeps the foreign values and merges the SPF; a second run
  changes nothing; a mechanism dropped from dns_records__spf_extra goes while
  the foreign one stays; a DKIM selector that is no longer wanted stays until
  its replacement has been published for dns_records__dkim_retire_after, then
  goes;
- PTR: a missing PTR record is printed as the exact record to ask for;
- secrets: at -vvv neither the TSIG secret nor the AWS secret key appears in
  the output, whether publishing works or fails.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.reversename
import pytest
import trustme

from tests.conftest import free_port
from tests.test_roles import INVENTORIES, ROOT, changed_tasks, failures, run_playbook, task_results

TSIG_SECRET = "dGVzdC1vbmx5LXRzaWctc2VjcmV0LWZvci1lc3RhZmV0YQ=="
DKIM_ED25519 = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
DKIM_NEW = "v=DKIM1; k=ed25519; p=+Im1uIZ2zLiVHpH7HNT0t4p9hU8ZgnLr0DG4thTmXfA="
PYTHON = str(ROOT / ".venv" / "bin" / "python")
needs_knot = pytest.mark.skipif(not shutil.which("knotd"), reason="needs knotd (package knot)")


def start_knot(root: Path, zones: dict[str, list[str]]) -> tuple[subprocess.Popen[bytes], int]:
    """knotd on 127.0.0.1 serving ``zones``, updatable with the TSIG key ``test-update``."""
    port = free_port(socket.SOCK_DGRAM)
    for sub in ("run", "db", "zones"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = [
        "server:",
        f'    rundir: "{root / "run"}"',
        f"    listen: 127.0.0.1@{port}",
        "log:",
        "  - target: stderr",
        "    any: info",
        "database:",
        f'    storage: "{root / "db"}"',
        "key:",
        "  - id: test-update",
        "    algorithm: hmac-sha256",
        f"    secret: {TSIG_SECRET}",
        "acl:",
        "  - id: update",
        "    key: test-update",
        "    action: update",
        "template:",
        "  - id: default",
        f'    storage: "{root / "zones"}"',
        '    file: "%s.zone"',
        "    zonefile-sync: -1",
        "    zonefile-load: difference-no-serial",
        "    journal-content: all",
        "    acl: update",
        "zone:",
    ]
    for origin, lines in zones.items():
        conf.append(f"  - domain: {origin}")
        soa = [
            "@ SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 60",
            "@ NS ns.example.org.",
        ]
        body = "\n".join([f"$ORIGIN {origin}.", "$TTL 60", *soa, *lines])
        (root / "zones" / f"{origin}.zone").write_text(body + "\n")
    (root / "knot.conf").write_text("\n".join(conf) + "\n")
    with (root / "knot.log").open("ab") as log:
        process = subprocess.Popen(["knotd", "-c", str(root / "knot.conf")], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    for origin in zones:
        while True:
            assert process.poll() is None, (root / "knot.log").read_text()
            query = dns.message.make_query(f"{origin}.", dns.rdatatype.SOA)
            with contextlib.suppress(OSError, dns.exception.DNSException):
                if dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5).answer:
                    break
            assert time.monotonic() < deadline, (root / "knot.log").read_text()
            time.sleep(0.1)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


def rrset(port: int, name: str, rdtype: str) -> set[str]:
    """The records of one RRset at Knot, as ``NAME TTL IN TYPE DATA`` lines."""
    query = dns.message.make_query(name, rdtype)
    answer = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    return {
        f"{found.name} {found.ttl} IN {dns.rdatatype.to_text(found.rdtype)} {item.to_text()}"
        for found in answer.answer
        if found.rdtype == dns.rdatatype.from_text(rdtype)
        for item in found
    }


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("mx1.example.org")
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


# -- zonefile ------------------------------------------------------------------------------------


def test_dns_records_zonefile_for_the_example(tmp_path: Path) -> None:
    playbook = """
- name: Publish the records of the example as a zone snippet
  hosts: mail_servers
  connection: local
  gather_facts: false
  roles:
    - dns_records
"""
    variables = {
        "ansible_python_interpreter": PYTHON,
        "dns_records__provider": "zonefile",
        "dns_records__check": False,
        "dns_records__tlsa": False,
        "dns_records__zonefile_dir": str(tmp_path / "zones"),
        "dns_records__state_dir": str(tmp_path / "state"),
        "dns_records__mta_sts": True,
        "dns_records__mta_sts_policy_dir": str(tmp_path / "policies"),
        "dns_records__dkim_records": [
            {
                "name": "ed2025._domainkey.example.org",
                "value": "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            }
        ],
    }
    args = INVENTORIES["example"][0]
    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    zone = (tmp_path / "zones" / "mx1.example.org.zone").read_text()
    lines = {" ".join(line.split()) for line in zone.splitlines() if not line.startswith(";")}
    for expected in [
        "example.org. 3600 IN MX 10 mx1.example.org.",
        'example.net. 3600 IN TXT "v=spf1 mx -all"',
        '_dmarc.example.org. 3600 IN TXT "v=DMARC1; p=quarantine; '
        'rua=mailto:dmarc-reports@example.org"',
        # One intake for the reports of both domains (estafeta__reports_*_address),
        # with the RFC 7489 7.1 consent for example.net's rua at example.org.
        '_dmarc.example.net. 3600 IN TXT "v=DMARC1; p=quarantine; '
        'rua=mailto:dmarc-reports@example.org"',
        'example.net._report._dmarc.example.org. 3600 IN TXT "v=DMARC1"',
        '_smtp._tls.example.net. 3600 IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@example.org"',
        'ed2025._domainkey.example.org. 3600 IN TXT "v=DKIM1; k=ed25519; '
        'p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="',
        "_submissions._tcp.example.org. 3600 IN SRV 0 1 465 mx1.example.org.",
        "_pop3._tcp.example.org. 3600 IN SRV 0 0 0 .",
        "autoconfig.example.net. 3600 IN CNAME mx1.example.org.",
    ]:
        assert expected in lines, f"{expected!r} not in\n{zone}"
    assert any(line.startswith('_mta-sts.example.org. 3600 IN TXT "v=STSv1; id=') for line in lines)
    policy = (tmp_path / "policies" / "example.org.txt").read_bytes()
    lines_crlf = [b"version: STSv1", b"mode: testing", b"mx: mx1.example.org", b"max_age: 604800"]
    assert policy == b"\r\n".join(lines_crlf) + b"\r\n"
    # Nothing changes on the second run.
    rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []


# -- nsupdate: the example inventory ---------------------------------------------------------------

NSUPDATE_PLAYBOOK = """
- name: Publish the records of the example with nsupdate
  hosts: mail_servers
  connection: local
  gather_facts: false
  roles:
    - dns_records
"""


@needs_knot
def test_dns_records_nsupdate_publishes_and_checks(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """The example inventory's records go to Knot with nsupdate, mail_dns_check
    (mode check) finds them right, and a second run changes nothing."""
    v6_reverse = dns.reversename.from_address("2001:db8::10").to_text(omit_final_dot=True)
    zones = {
        "example.org": ["ns A 127.0.0.1", "mx1 A 192.0.2.10", "mx1 AAAA 2001:db8::10"],
        "example.net": [],
        "2.0.192.in-addr.arpa": ["10 PTR mx1.example.org."],
        "8.b.d.0.1.0.0.2.ip6.arpa": [f"{v6_reverse}. PTR mx1.example.org."],
    }
    knotd, port = start_knot(tmp_path / "knot", zones)
    try:
        playbook = NSUPDATE_PLAYBOOK
        variables = {
            "ansible_python_interpreter": PYTHON,
            "dns_records__nsupdate_server": "127.0.0.1",
            "dns_records__nsupdate_port": port,
            "dns_records__nsupdate_key_name": "test-update",
            "dns_records__nsupdate_key_secret": TSIG_SECRET,
            # TLSA from a certificate file (the example's acme_builtin would ask estafeta).
            "dns_records__tlsa_source": "certificate",
            "dns_records__tlsa_cert_path": str(tls_files[0]),
            "dns_records__state_dir": str(tmp_path / "state"),
            "dns_records__check_timeout": 10,
            "dns_records__mta_sts": True,
            "dns_records__mta_sts_policy_dir": str(tmp_path / "policies"),
            "dns_records__dkim_records": [
                {"name": "ed2025._domainkey.example.org", "value": DKIM_ED25519},
                {"name": "ed2025._domainkey.example.net", "value": DKIM_ED25519},
            ],
        }
        args = INVENTORIES["example"][0]
        rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
        assert rc == 0, failures(output) or stderr
        checks = [
            result
            for name, _, result in task_results(output)
            if name == "dns_records : Check the published records"
        ]
        assert len(checks) == 1
        per_domain = checks[0]["results"]
        assert [item["item"]["key"] for item in per_domain] == ["example.org", "example.net"]
        for item in per_domain:
            assert item["ok"], item.get("failed_checks")
            assert {entry["check"] for entry in item["results"]} >= {
                "mx",
                "a",
                "aaaa",
                "ptr",
                "spf",
                "dkim",
                "dmarc",
                "mta_sts",
                "tlsrpt",
                "srv",
            }
        # The TLSA record of the host is published too.
        query = dns.message.make_query("_25._tcp.mx1.example.org.", dns.rdatatype.TLSA)
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
        assert answer.answer and answer.answer[0][0].usage == 3
        # The ownership state is on the (here: local) host.
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        assert {"example.org", "_dmarc.example.net"} <= {r["name"] for r in state["records"]}

        rc, output, stderr = run_playbook(playbook, tmp_path, *args, extra_vars=variables)
        assert rc == 0, failures(output) or stderr
        assert changed_tasks(output) == []
    finally:
        stop(knotd)


# -- nsupdate: what others published stays (issue 19, acceptance 2) --------------------------------

OWN_PLAYBOOK = """
- name: Publish the records of mx1.example.org with nsupdate
  hosts: mx1.example.org
  gather_facts: false
  roles:
    - dns_records
"""
FOREIGN_SPF = '"v=spf1 include:_spf.example.org ~all"'
APEX = "example.org."
# Every RRset the test looks at, before and after each run.
WATCHED = [
    (APEX, "TXT"),
    (APEX, "MX"),
    ("_dmarc.example.org.", "TXT"),
    ("old._domainkey.example.org.", "TXT"),
    ("new._domainkey.example.org.", "TXT"),
    ("autoconfig.example.org.", "CNAME"),
    ("_submission._tcp.example.org.", "SRV"),
]


def local_inventory(tmp_path: Path) -> Path:
    """An inventory of mx1.example.org on this machine, with the venv's Python."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        f"mx1.example.org ansible_connection=local ansible_python_interpreter={PYTHON}\n"
    )
    return inventory


def nsupdate_to(port: int) -> dict[str, Any]:
    """The variables that publish to the test Knot of start_knot on ``port``."""
    return {
        "dns_records__provider": "nsupdate",
        "dns_records__nsupdate_server": "127.0.0.1",
        "dns_records__nsupdate_port": port,
        "dns_records__nsupdate_key_name": "test-update",
        "dns_records__nsupdate_key_secret": TSIG_SECRET,
    }


def zone_now(port: int) -> dict[tuple[str, str], set[str]]:
    return {key: rrset(port, *key) for key in WATCHED}


def show_task(output: dict[str, Any]) -> dict[str, Any]:
    found = [
        result
        for name, _, result in task_results(output)
        if name == "dns_records : Show the record changes"
    ]
    assert len(found) == 1, [name for name, _, _ in task_results(output)]
    return found[0]


def diff_lines(result: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(removed, added) record lines of the task's diff."""
    diff = result["diff"]
    diff = diff[0] if isinstance(diff, list) else diff
    before = set(diff["before"].splitlines())
    after = set(diff["after"].splitlines())
    return before - after, after - before


@needs_knot
def test_dns_records_keep_what_others_published(tmp_path: Path) -> None:
    zones = {
        "example.org": [
            "ns A 127.0.0.1",
            "mx1 A 192.0.2.10",
            '@ TXT "google-site-verification=abc"',
            '@ TXT "MS=ms123"',
            f"@ TXT {FOREIGN_SPF}",
        ]
    }
    knotd, port = start_knot(tmp_path / "knot", zones)
    try:
        inventory = local_inventory(tmp_path)
        state_file = tmp_path / "state" / "state.json"
        variables: dict[str, Any] = {
            **nsupdate_to(port),
            "dns_records__state_dir": str(state_file.parent),
            "dns_records__domains": ["example.org"],
            "dns_records__hostname": "mx1.example.org",
            "dns_records__ttl": 300,
            "dns_records__spf_extra": ["include:_spf.other.example"],
            "dns_records__dkim_records": [
                {"name": "old._domainkey.example.org", "value": DKIM_ED25519}
            ],
            "dns_records__dkim_retire_after": "1h",
            "dns_records__ipv4": ["192.0.2.10"],
            "dns_records__check_ptr": False,
            "dns_records__check_timeout": 10,
        }
        args = ("-i", str(inventory))

        def run(*more: str) -> dict[str, Any]:
            rc, output, stderr = run_playbook(
                OWN_PLAYBOOK, tmp_path, *args, *more, extra_vars=variables
            )
            assert rc == 0, failures(output) or stderr
            return output

        before = zone_now(port)
        foreign = {
            f'{APEX} 60 IN TXT "google-site-verification=abc"',
            f'{APEX} 60 IN TXT "MS=ms123"',
        }
        assert before[(APEX, "TXT")] == foreign | {f"{APEX} 60 IN TXT {FOREIGN_SPF}"}
        merged = (
            f'{APEX} 60 IN TXT "v=spf1 mx include:_spf.other.example include:_spf.example.org -all"'
        )

        # --check --diff: the exact record lines, and nothing changes in Knot.
        output = run("--check", "--diff")
        removed, added = diff_lines(show_task(output))
        assert removed == {f"{APEX} 60 IN TXT {FOREIGN_SPF}"}
        assert merged in added
        assert {
            f"{APEX} 300 IN MX 10 mx1.example.org.",
            '_dmarc.example.org. 300 IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.org"',
            f'old._domainkey.example.org. 300 IN TXT "{DKIM_ED25519}"',
            "autoconfig.example.org. 300 IN CNAME mx1.example.org.",
        } <= added
        assert not foreign & (removed | added)
        assert zone_now(port) == before
        assert not state_file.exists()

        # The run: foreign values kept, SPF merged, the check passes at Knot.
        output = run()
        after = zone_now(port)
        assert after[(APEX, "TXT")] == foreign | {merged}
        assert after[("old._domainkey.example.org.", "TXT")] == {
            f'old._domainkey.example.org. 300 IN TXT "{DKIM_ED25519}"'
        }
        checks = [
            r for n, _, r in task_results(output) if n.endswith("Check the published records")
        ]
        assert all(item["ok"] for item in checks[0]["results"])
        state = json.loads(state_file.read_text())
        owned = {(r["name"], r["type"], r["value"]) for r in state["records"]}
        assert ("example.org", "TXT", merged.split(" TXT ", 1)[1]) in owned
        assert not any("google" in value or "MS=" in value for _, _, value in owned)

        # Idempotent, and --check --diff then shows nothing.
        assert changed_tasks(run()) == []
        output = run("--check", "--diff")
        assert changed_tasks(output) == []
        assert diff_lines(show_task(output)) == (set(), set())
        assert zone_now(port) == after

        # A new DKIM selector, and include:_spf.other.example no longer wanted: the
        # include goes at once, the foreign one stays; the old key stays (grace).
        variables["dns_records__dkim_records"] = [
            {"name": "new._domainkey.example.org", "value": DKIM_NEW}
        ]
        variables["dns_records__spf_extra"] = []
        output = run("--diff")
        removed, added = diff_lines(show_task(output))
        assert removed == {merged}
        assert added == {
            f'{APEX} 60 IN TXT "v=spf1 mx include:_spf.example.org -all"',
            f'new._domainkey.example.org. 300 IN TXT "{DKIM_NEW}"',
        }
        rotated = zone_now(port)
        assert rotated[("old._domainkey.example.org.", "TXT")]
        assert rotated[("new._domainkey.example.org.", "TXT")]
        assert foreign <= rotated[(APEX, "TXT")]
        # Not before its grace period: another run keeps it.
        assert changed_tasks(run()) == []
        assert zone_now(port)[("old._domainkey.example.org.", "TXT")]

        # The new key has been published for more than dns_records__dkim_retire_after
        # (its time in the state moved back by two hours): the old one goes.
        state = json.loads(state_file.read_text())
        for record in state["records"]:
            if record["name"] == "new._domainkey.example.org":
                since = datetime.datetime.fromisoformat(record["since"].replace("Z", "+00:00"))
                earlier = since - datetime.timedelta(hours=2)
                record["since"] = earlier.strftime("%Y-%m-%dT%H:%M:%SZ")
        state_file.write_text(json.dumps(state))
        output = run("--diff")
        removed, added = diff_lines(show_task(output))
        assert removed == {f'old._domainkey.example.org. 300 IN TXT "{DKIM_ED25519}"'}
        assert added == set()
        final = zone_now(port)
        assert final[("old._domainkey.example.org.", "TXT")] == set()
        assert final[("new._domainkey.example.org.", "TXT")]
        assert final[(APEX, "TXT")] == foreign | {
            f'{APEX} 60 IN TXT "v=spf1 mx include:_spf.example.org -all"'
        }
        state = json.loads(state_file.read_text())
        assert "old._domainkey.example.org" not in {r["name"] for r in state["records"]}
    finally:
        stop(knotd)


# -- DMARC reports to the intake, with the consent of rfc7489:7.1 ---------------------------


@needs_knot
def test_dmarc_reports_go_to_the_intake_with_their_consent_records(tmp_path: Path) -> None:
    """dns_records__dmarc_report_address (by default the estafeta role's intake) becomes
    every domain's rua=; a domain of another organization gets the RFC 7489 7.1 record in
    the zone of the address, and only there: moved with the address, removed when no
    longer wanted or turned off, and for an address in a zone this host does not publish,
    named for its owner to publish instead; in the closest of our zones."""
    zones = {"example.org": ["mx1 A 192.0.2.10"], "example.net": [], "reports.example.org": []}
    knotd, port = start_knot(tmp_path / "knot", zones)
    try:
        inventory = local_inventory(tmp_path)
        variables: dict[str, Any] = {
            **nsupdate_to(port),
            "dns_records__state_dir": str(tmp_path / "state"),
            "dns_records__domains": ["example.org", "example.net"],
            "dns_records__hostname": "mx1.example.org",
            "dns_records__ttl": 300,
            "dns_records__dkim_records": [],
            "dns_records__ipv4": ["192.0.2.10"],
            "dns_records__check_ptr": False,
            "dns_records__check_timeout": 10,
            # What the estafeta role hands over (its [reports] dmarc_address).
            "estafeta__reports_dmarc_address": "dmarc@example.org",
        }

        def run() -> dict[str, Any]:
            rc, output, stderr = run_playbook(
                OWN_PLAYBOOK, tmp_path, "-i", str(inventory), extra_vars=variables
            )
            assert rc == 0, failures(output) or stderr
            return output

        def txt(name: str) -> set[str]:
            return {line.split(" TXT ", 1)[1] for line in rrset(port, name, "TXT")}

        def consents() -> dict[str, set[str]]:
            names = [
                f"{domain}._report._dmarc.{host}"
                for domain in ("example.org", "example.net")
                for host in ("example.org", "example.net")
            ]
            return {name: txt(name) for name in names if txt(name)}

        def told(output: dict[str, Any]) -> list[str]:
            return [
                result["msg"]
                for name, _, result in task_results(output)
                if name == "dns_records : Say which DMARC report authorisations others must publish"
                and "msg" in result
            ]

        output = run()
        rua = "rua=mailto:dmarc@example.org"
        assert txt("_dmarc.example.org") == {f'"v=DMARC1; p=none; {rua}"'}
        assert txt("_dmarc.example.net") == {f'"v=DMARC1; p=none; {rua}"'}
        # example.net's reports go to example.org, which agrees; example.org's own need none.
        assert consents() == {"example.net._report._dmarc.example.org": {'"v=DMARC1"'}}
        assert told(output) == []
        # The check passes at Knot, and a second run changes nothing.
        checks = [
            r for n, _, r in task_results(output) if n.endswith("Check the published records")
        ]
        assert all(item["ok"] for item in checks[0]["results"])
        assert changed_tasks(run()) == []

        # The address moves to example.net: the consent moves with it.
        variables["estafeta__reports_dmarc_address"] = "reports@example.net"
        run()
        assert txt("_dmarc.example.org") == {'"v=DMARC1; p=none; rua=mailto:reports@example.net"'}
        assert consents() == {"example.org._report._dmarc.example.net": {'"v=DMARC1"'}}

        # Turned off: the consent published goes.
        variables["dns_records__dmarc_report_authorization"] = False
        run()
        assert consents() == {}
        variables["dns_records__dmarc_report_authorization"] = True

        # dns_records__dmarc still decides: a report service elsewhere takes them (our
        # consent records go, its owner is told which to publish), plus a copy in-house.
        variables["dns_records__dmarc"] = {
            "p": "quarantine",
            "rua": ["mailto:{domain}@reports.vendor.example", "mailto:dmarc@{domain}"],
        }
        output = run()
        assert txt("_dmarc.example.net") == {
            '"v=DMARC1; p=quarantine; '
            'rua=mailto:example.net@reports.vendor.example,mailto:dmarc@example.net"'
        }
        assert consents() == {}
        [message] = told(output)
        assert (
            "example.org._report._dmarc.reports.vendor.example, "
            "example.net._report._dmarc.reports.vendor.example"
        ) in " ".join(message.split())
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        assert not [r for r in state["records"] if "._report._dmarc." in r["name"]]

        # An address below two of our zones: the consent goes into the closer one
        # (an RFC 2136 update to the other zone would be refused: NOTZONE).
        del variables["dns_records__dmarc"]
        variables["dns_records__domains"] = ["example.org", "example.net", "reports.example.org"]
        variables["estafeta__reports_dmarc_address"] = "d@x.reports.example.org"
        run()
        assert consents() == {}
        assert txt("example.net._report._dmarc.x.reports.example.org") == {'"v=DMARC1"'}
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        [consent] = [r for r in state["records"] if "._report._dmarc." in r["name"]]
        assert consent["zone"] == "reports.example.org"

    finally:
        stop(knotd)


# -- PTR: what to ask the hosting provider for ---------------------------------------------


@needs_knot
def test_dns_records_says_which_ptr_to_ask_for(tmp_path: Path, knot: Any) -> None:
    """With dns_records__ptr_provider none: the check finds the missing PTR and the role
    prints the exact record to ask for (zone file provider, checks in report mode)."""
    server = knot({"example.org": ["mx1 A 192.0.2.10"], "2.0.192.in-addr.arpa": []})
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        f"mx1.example.org ansible_connection=local ansible_python_interpreter={PYTHON}\n"
    )
    variables = {
        "dns_records__provider": "zonefile",
        "dns_records__zonefile_dir": str(tmp_path / "zones"),
        "dns_records__domains": ["example.org", "example.net"],
        "dns_records__hostname": "mx1.example.org",
        "dns_records__dkim_records": [],
        "dns_records__ipv4": ["192.0.2.10"],
        "dns_records__check_nameservers": [server.address],
    }
    rc, output, stderr = run_playbook(
        OWN_PLAYBOOK, tmp_path, "-i", str(inventory), extra_vars=variables
    )
    assert rc == 0, failures(output) or stderr
    [asked] = [
        result
        for name, _, result in task_results(output)
        if name == "dns_records : Say which PTR records to ask the hosting provider for"
    ]
    messages = [item["msg"] for item in asked["results"]]
    assert len(messages) == 1, messages
    assert "10.2.0.192.in-addr.arpa. PTR mx1.example.org." in messages[0]
    assert "no PTR record for 192.0.2.10" in messages[0]


# -- secrets ------------------------------------------------------------------------------------


@needs_knot
def test_tsig_secret_and_aws_keys_stay_out_of_the_output(tmp_path: Path, knot: Any) -> None:
    """At -vvv, neither the TSIG secret nor the AWS secret key appears in the output,
    when publishing works and when it fails (the error is still told)."""
    server = knot({"example.org": []})
    secret = "c2VjcmV0LXRzaWcta2V5LXRoYXQtbXVzdC1ub3QtbGVhaw=="
    aws_secret = "aws-secret-that-must-not-leak"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        f"mx1.example.org ansible_connection=local ansible_python_interpreter={PYTHON}\n"
    )
    base = {
        "dns_records__domains": ["example.org"],
        "dns_records__hostname": "mx1.example.org",
        "dns_records__dkim_records": [],
        "dns_records__state_dir": str(tmp_path / "state"),
        "dns_records__check": False,
    }
    cases = {
        # Knot here takes no updates: the module fails after reading (check mode passes).
        "nsupdate": {
            "dns_records__provider": "nsupdate",
            "dns_records__nsupdate_server": "127.0.0.1",
            "dns_records__nsupdate_port": server.port,
            "dns_records__nsupdate_key_name": "test-update",
            "dns_records__nsupdate_key_secret": secret,
        },
        # Nothing listens there: boto3 fails to connect.
        "route53": {
            "dns_records__provider": "route53",
            "dns_records__route53_endpoint_url": f"http://127.0.0.1:{free_port()}",
            "dns_records__route53_access_key": "AKIDEXAMPLE",
            "dns_records__route53_secret_key": aws_secret,
        },
    }
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(OWN_PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_NOCOLOR": "1",
    }
    for provider, variables in cases.items():
        for check in ((), ("--check", "--diff")):
            # The default callback at -vvv: what a user sees on the console.
            command = [shutil.which("ansible-playbook") or "ansible-playbook", str(playbook)]
            command += ["-i", str(inventory), "-vvv", *check]
            command += ["--extra-vars", json.dumps(base | variables)]
            result = subprocess.run(
                command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
            )
            text = result.stdout + result.stderr
            assert secret not in text and aws_secret not in text, provider
            if provider == "nsupdate" and check:
                # Check mode only reads, which this Knot allows: the run passes.
                assert result.returncode == 0, text[-3000:]
                assert "Show the record changes" in text
            else:
                assert result.returncode != 0, f"{provider} {check}: expected a failure"
                assert "Publishing the DNS records failed" in text, text[-3000:]


# -- several hosts for one domain (issue 23, the cluster) ------------------------------------------

CLUSTER_PLAYBOOK = """
- name: Publish the records of every host of the domain with nsupdate
  hosts: mail_servers
  gather_facts: false
  serial: 1
  roles:
    - dns_records
"""


@needs_knot
def test_hosts_of_one_domain_publish_one_set_of_records(tmp_path: Path) -> None:
    """Two hosts of mail_servers serving example.org (the nodes of a cluster) each
    publish the same MX, SRV and MTA-STS values, naming both, instead of replacing
    each other's: the MX set has both at their preferences, every SRV name points at
    both, autoconfig at the preferred one, the MTA-STS policies are the same on
    both hosts and list both MX hosts; each host's check passes and a second run
    changes nothing. A host that leaves the group takes its values away."""
    zones = {"example.org": ["ns A 127.0.0.1", "mx1 A 192.0.2.10", "mx2 A 192.0.2.11"]}
    knotd, port = start_knot(tmp_path / "knot", zones)
    try:
        inventory = tmp_path / "hosts.yml"

        def write_inventory(hosts: list[str]) -> None:
            lines = ["all:", "  children:", "    mail_servers:", "      hosts:"]
            for index, name in enumerate(hosts):
                lines += [
                    f"        {name}:",
                    "          ansible_connection: local",
                    f"          ansible_python_interpreter: {PYTHON}",
                    "          estafeta__domains: [example.org]",
                    f"          dns_records__state_dir: {tmp_path / name / 'state'}",
                    f"          dns_records__mta_sts_policy_dir: {tmp_path / name / 'policies'}",
                    f"          dns_records__ipv4: [192.0.2.{10 + index}]",
                    f"          dns_records__mx_priority: {10 * (index + 1)}",
                ]
            inventory.write_text("\n".join(lines) + "\n")

        variables: dict[str, Any] = {
            **nsupdate_to(port),
            "dns_records__ttl": 300,
            "dns_records__dkim_records": [
                {"name": "ed2025._domainkey.example.org", "value": DKIM_ED25519}
            ],
            "dns_records__mta_sts": True,
            "dns_records__check_ptr": False,
            "dns_records__check_timeout": 10,
        }

        def run(*more: str) -> dict[str, Any]:
            rc, output, stderr = run_playbook(
                CLUSTER_PLAYBOOK, tmp_path, "-i", str(inventory), *more, extra_vars=variables
            )
            assert rc == 0, failures(output) or stderr
            return output

        write_inventory(["mx1.example.org", "mx2.example.org"])
        output = run()
        checks = [
            result
            for name, _, result in task_results(output)
            if name == "dns_records : Check the published records"
        ]
        assert len(checks) == 2
        for check in checks:
            for item in check["results"]:
                assert item["ok"], item.get("failed_checks")
                warned = [e for e in item["results"] if e["status"] in ("warn", "fail")]
                assert warned == [], warned
        assert rrset(port, APEX, "MX") == {
            f"{APEX} 300 IN MX 10 mx1.example.org.",
            f"{APEX} 300 IN MX 20 mx2.example.org.",
        }
        assert rrset(port, "_imaps._tcp.example.org.", "SRV") == {
            "_imaps._tcp.example.org. 300 IN SRV 0 1 993 mx1.example.org.",
            "_imaps._tcp.example.org. 300 IN SRV 0 1 993 mx2.example.org.",
        }
        assert rrset(port, "autoconfig.example.org.", "CNAME") == {
            "autoconfig.example.org. 300 IN CNAME mx1.example.org."
        }
        assert len(rrset(port, "_mta-sts.example.org.", "TXT")) == 1
        policies = {
            (tmp_path / name / "policies" / "example.org.txt").read_text()
            for name in ("mx1.example.org", "mx2.example.org")
        }
        assert len(policies) == 1
        policy = policies.pop()
        assert "mx: mx1.example.org\nmx: mx2.example.org\n" in policy.replace("\r\n", "\n")
        assert changed_tasks(run()) == []

        # mx2 leaves the domain's hosts: mx1's next run removes what named it.
        write_inventory(["mx1.example.org"])
        run("--limit", "mx1.example.org")
        assert rrset(port, APEX, "MX") == {f"{APEX} 300 IN MX 10 mx1.example.org."}
        assert rrset(port, "_imaps._tcp.example.org.", "SRV") == {
            "_imaps._tcp.example.org. 300 IN SRV 0 1 993 mx1.example.org."
        }
        policy_file = tmp_path / "mx1.example.org" / "policies" / "example.org.txt"
        assert "mx2" not in policy_file.read_text()
    finally:
        stop(knotd)
