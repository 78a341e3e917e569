"""`estafeta doctor` end to end: Knot serves the zones, a real estafeta the listeners.

The acceptance of issue 22 on loopback: everything right is all ok and exit
0; then, one at a time, the test breaks what the issue names (PTR removed,
SPF without the host, DKIM record altered, the host's address listed in the
test blocklist zone, the MTA-STS policy id changed without the file) with a
dynamic update (rfc2136) and each run names exactly that problem and exits 1.
Also: the JSON shape, the text output, and exit 2 for bad options.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from _mailnet import Knot, txt
from conftest import Instance, free_port, make_tls
from estafeta.doctor import CHECKS
from estafeta.doctor.mtasts import policy_id
from estafeta.policy import dkim
from estafeta.policy.signer import Signer

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = pytest.mark.xdist_group("mailnet")

HOST = "mx.example.test"
DOMAIN = "example.test"
POLICY = f"version: STSv1\r\nmode: enforce\r\nmx: {HOST}\r\nmax_age: 604800\r\n"
SPF = "v=spf1 mx -all"
PTR_ZONE = "127.in-addr.arpa"


class Site:
    def __init__(self, instance: Instance, knot: Knot, dkim_rdata: str) -> None:
        self.instance = instance
        self.knot = knot
        self.dkim_rdata = dkim_rdata

    def doctor(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "estafeta",
            "-c",
            str(self.instance.config),
            "doctor",
            "--ip",
            "127.0.0.1",
            "--blocklist",
            "bl.test",
            "--authoritative",
            self.knot.address,
            "--ca-file",
            str(self.instance.root / "ca.pem"),
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def report(self) -> tuple[int, dict[str, Any]]:
        result = self.doctor("--json")
        assert result.stderr == ""
        return result.returncode, json.loads(result.stdout)

    def update(self, zone: str, change: Callable[[dns.update.UpdateMessage], None]) -> None:
        keyring = dns.tsigkeyring.from_text({"estafeta-test": self.knot.tsig_secret})
        message = dns.update.UpdateMessage(zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
        change(message)
        response = dns.query.tcp(message, "127.0.0.1", port=self.knot.port, timeout=10)
        assert response.rcode() == dns.rcode.NOERROR


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    section, _ = make_tls(root, (HOST, f"mta-sts.{DOMAIN}", "127.0.0.1"))
    (root / "mta-sts").mkdir()
    (root / "mta-sts" / f"{DOMAIN}.txt").write_text(POLICY, newline="")
    knot = Knot(root / "knot", {})
    https_port = free_port()
    instance = Instance(
        root,
        free_port(),
        submission_port=free_port(),
        imaps_port=free_port(),
        https_port=https_port,
        extra_config=section + f'[dns]\nnameservers = ["{knot.address}"]\n'
        f"[queue]\nmta_sts_port = {https_port}\n",
    )
    instance.write_config()
    text = instance.config.read_text()
    instance.config.write_text(text.replace('"example.test", "other.test"', '"example.test"', 1))
    out = instance.cli("dkim", "keygen", DOMAIN, "--selector", "s1").stdout.strip()
    dkim_rdata = out.partition(" IN TXT ")[2]
    leaf = x509.load_pem_x509_certificate((root / "cert.pem").read_bytes())
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    knot.zones = {
        DOMAIN: [
            "@ MX 10 mx",
            "mx A 127.0.0.1",
            f"@ TXT {txt(SPF)}",
            f"_dmarc TXT {txt(f'v=DMARC1; p=reject; rua=mailto:postmaster@{DOMAIN}')}",
            f"s1._domainkey TXT {dkim_rdata}",
            f"_mta-sts TXT {txt(f'v=STSv1; id={policy_id(POLICY)}')}",
            "mta-sts A 127.0.0.1",
            f"_smtp._tls TXT {txt(f'v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}')}",
            f"_25._tcp.mx TLSA 3 1 1 {hashlib.sha256(spki).hexdigest()}",
        ],
        PTR_ZONE: [f"1.0.0 PTR {HOST}."],
        "bl.test": [],
    }
    knot.start()
    try:
        instance.start()
        try:
            yield Site(instance, knot, dkim_rdata)
        finally:
            instance.kill()
    finally:
        knot.stop()


def failures(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["check"], f["subject"]) for f in report["findings"] if f["status"] != "ok"]


def test_all_green(site: Site) -> None:
    code, report = site.report()
    assert failures(report) == [], json.dumps(report, indent=2)
    assert code == 0
    assert report["status"] == "ok"
    assert report["hostname"] == HOST and report["domains"] == [DOMAIN]
    assert report["addresses"] == [{"address": "127.0.0.1", "source": "--ip"}]
    assert report["resolvers"] == [f"resolver {site.knot.address}"]
    assert report["summary"] == {"ok": len(report["findings"]), "warn": 0, "fail": 0}
    assert {f["check"] for f in report["findings"]} == {"addresses", *CHECKS}
    for finding in report["findings"]:
        assert set(finding) == {"check", "subject", "status", "detail", "fix", "domain"}
    text = site.doctor()
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == HOST
    assert text.stdout.rstrip().endswith(" ok: nothing to fix")


def _other_dkim_record() -> str:
    key = dkim.SigningKey(DOMAIN, "s1", "rsa", dkim.generate_key("rsa"))
    return txt(dkim.txt_record(key))


BREAKS: dict[str, tuple[str, str, str, str, str]] = {
    # name: (zone, owner, type, broken rdata ("" deletes), the failure's check)
    "PTR removed": (PTR_ZONE, f"1.0.0.{PTR_ZONE}.", "PTR", "", "ptr"),
    "SPF without the host": (DOMAIN, f"{DOMAIN}.", "TXT", txt("v=spf1 ip4:192.0.2.1 -all"), "spf"),
    "DKIM record altered": (DOMAIN, f"s1._domainkey.{DOMAIN}.", "TXT", "OTHER", "dkim"),
    "address on the test blocklist": (
        "bl.test",
        "1.0.0.127.bl.test.",
        "A",
        "127.0.0.2",
        "blocklist",
    ),
    "MTA-STS id changed without the file": (
        DOMAIN,
        f"_mta-sts.{DOMAIN}.",
        "TXT",
        # An id in the role's form (SHA-1 digits), of another policy.
        txt("v=STSv1; id=" + policy_id(POLICY.replace("max_age: ", "max_age: 1"))),
        "mta-sts",
    ),
}
SUBJECTS = {
    "ptr": HOST,
    "spf": DOMAIN,
    "dkim": f"s1._domainkey.{DOMAIN}",
    "blocklist": "bl.test",
    "mta-sts": DOMAIN,
}
ORIGINAL = {
    "PTR removed": f"{HOST}.",
    "SPF without the host": txt(SPF),
    "MTA-STS id changed without the file": txt(f"v=STSv1; id={policy_id(POLICY)}"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_one_break_names_that_problem(site: Site, case: str) -> None:
    zone, owner, rdtype, broken, check = BREAKS[case]
    original = site.dkim_rdata if case == "DKIM record altered" else ORIGINAL.get(case, "")
    if broken == "OTHER":
        broken = _other_dkim_record()

    def set_to(value: str) -> Callable[[dns.update.UpdateMessage], None]:
        def change(message: dns.update.UpdateMessage) -> None:
            if value:
                message.replace(owner, 60, rdtype, value)
            else:
                message.delete(owner, rdtype)

        return change

    site.update(zone, set_to(broken))
    try:
        code, report = site.report()
    finally:
        site.update(zone, set_to(original))
    assert failures(report) == [(check, SUBJECTS[check])], json.dumps(report, indent=2)
    assert code == 1
    assert report["status"] == "fail"
    (found,) = [f for f in report["findings"] if f["status"] == "fail"]
    assert found["fix"]


def test_text_output_of_a_listing(site: Site) -> None:
    def listed(message: dns.update.UpdateMessage) -> None:
        message.replace("1.0.0.127.bl.test.", 60, "A", "127.0.0.2")
        message.replace("1.0.0.127.bl.test.", 60, "TXT", txt("lab test listing"))

    site.update("bl.test", listed)
    try:
        result = site.doctor()
    finally:
        site.update("bl.test", lambda m: m.delete("1.0.0.127.bl.test."))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.startswith("  FAIL  blocklist ")]
    assert lines[index].endswith(" bl.test: 127.0.0.1 is listed (127.0.0.2): lab test listing")
    assert lines[index + 1].strip().startswith("fix: find out why 127.0.0.1 was listed")
    assert lines[-1].startswith("1 failed, 0 warnings, ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ip", "not-an-address"], "estafeta: --ip not-an-address: not an IP address"),
        (["--resolver", "resolver.example"], "estafeta: --resolver resolver.example: not IP"),
        (["--timeout", "0"], "estafeta: --timeout must be a number of seconds greater than 0"),
        (["--ca-file", "/nonexistent.pem"], "estafeta: --ca-file /nonexistent.pem: not a PEM"),
        (["--blocklist", "bad_zone!"], "estafeta: --blocklist bad_zone!: zone "),
    ],
)
def test_bad_options_exit_2(site: Site, args: list[str], message: str) -> None:
    result = site.doctor(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message), result.stderr


def test_configuration_error_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "estafeta.toml"
    config.write_text(
        f'hostname = "{HOST}"\ndata_dir = "{tmp_path}"\ndomains = ["{DOMAIN}"]\n'
        f'[queue]\nca_file = "{tmp_path / "missing.pem"}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", str(config), "doctor", "--check", "spf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"estafeta: configuration error: {config}: queue.ca_file: ")
    assert "Traceback" not in result.stderr


def test_broken_dkim_key_file_is_a_finding(tmp_path: Path) -> None:
    config = tmp_path / "estafeta.toml"
    config.write_text(f'hostname = "{HOST}"\ndata_dir = "{tmp_path}"\ndomains = ["{DOMAIN}"]\n')
    Signer(tmp_path / "dkim").keygen(DOMAIN, "s1", "ed25519")
    (tmp_path / "dkim" / DOMAIN / "s1.pem").write_text("-----BEGIN PRIVATE KEY-----\nx\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "estafeta",
            "-c",
            str(config),
            "doctor",
            "--json",
            "--check",
            "dkim",
            "--ip",
            "192.0.2.1",
            "--resolver",
            f"127.0.0.1:{free_port()}",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    (found,) = [f for f in report["findings"] if f["check"] == "dkim"]
    assert found["status"] == "fail"
    assert found["detail"].startswith("the key file cannot be used: ")
