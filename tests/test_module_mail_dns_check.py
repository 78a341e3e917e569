"""library/mail_dns_check.py against zones served by a real Knot DNS."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.name
import dns.reversename
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
IP6_ZONE = "8.b.d.0.1.0.0.2.ip6.arpa"


def dkim_key() -> str:
    """The p= value of a fresh RSA-2048 key, as `estafeta dkim keygen` makes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def txt(value: str, size: int = 255) -> str:
    """Zone-file TXT rdata: ``value`` as quoted strings of ``size`` octets."""
    return " ".join(f'"{value[i : i + size]}"' for i in range(0, len(value), size))


def ip6_relative(address: str) -> str:
    name = dns.reversename.from_address(address)
    return name.relativize(dns.name.from_text(IP6_ZONE)).to_text()


KEY = dkim_key()
OTHER_KEY = dkim_key()
# Published split at odd places and with white space inside p= (RFC 6376 3.6.1
# allows folding white space there); the expectations below use other splits.
DKIM_PUBLISHED = '"v=DKIM1; k=rsa;" " p=" ' + txt(
    KEY[:150] + " \t" + KEY[150:300] + " " + KEY[300:], 100
)

ZONES = {
    "example.test": [
        "@ MX 10 mx1",
        "@ MX 20 mx2",
        "mx1 A 198.51.100.10",
        "mx1 AAAA 2001:db8::10",
        "mx2 A 198.51.100.11",
        "mx2 AAAA 2001:db8::11",
        "stray A 198.51.100.99",
        '@ TXT "v=spf1 mx ip4:198.51.100.0/24 -all"',
        '@ TXT "google-site-verification=abc"',
        f"s2026._domainkey TXT {DKIM_PUBLISHED}",
        '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@example.test"',
        '_mta-sts TXT "v=STSv1; id=20261128T120000"',
        # The policy host, in another zone (as a web host's name would be).
        "mta-sts CNAME web.hosting.test.",
        '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@example.test"',
        "_submission._tcp SRV 0 1 587 mx1",
        "_imaps._tcp SRV 0 1 993 mx1",
        "_pop3s._tcp SRV 0 0 0 .",
    ],
    "100.51.198.in-addr.arpa": [
        "10 PTR mx1.example.test.",
        "11 PTR mx2.example.test.",
        "12 PTR stray.example.test.",
    ],
    IP6_ZONE: [
        f"{ip6_relative('2001:db8::10')} PTR mx1.example.test.",
        f"{ip6_relative('2001:db8::11')} PTR mx2.example.test.",
    ],
    "warn.test": [
        "@ MX 10 mx",
        "@ MX 50 backup",
        "mx A 198.51.100.20",
        "backup A 198.51.100.21",
        '@ TXT "v=spf1 mx -all"',
        f"sel._domainkey TXT {txt(f'v=DKIM1; k=rsa; t=y; p={OTHER_KEY}')}",
        '_dmarc TXT "v=DMARC1; p=reject; fo=1"',
        "_submission._tcp SRV 0 1 587 mx",
        "_submission._tcp SRV 10 1 587 backup",
    ],
    "hosting.test": ["web A 127.0.0.1"],
    "fail.test": [
        "@ MX 10 mx",
        "mx A 198.51.100.30",
        '@ TXT "v=spf1 mx ~all"',
        '_dmarc TXT "v=DMARC1; p=none"',
        '_mta-sts TXT "v=STSv1; id=old"',
    ],
}

GOOD = {
    "mx": ["mx1.example.test", "mx2.example.test"],
    "spf": "v=spf1 mx ip4:198.51.100.0/24 -all",
    # As `estafeta dkim list` prints it: one quoted string, its own spacing.
    "dkim": {"s2026": f'"v=DKIM1; k=rsa; p={KEY}"'},
    "dmarc": {"p": "reject"},
    "mta_sts_id": "20261128T120000",
    "tlsrpt": "v=TLSRPTv1; rua=mailto:tlsrpt@example.test",
    "srv": [
        {"name": "_submission._tcp", "port": 587, "target": "mx1.example.test"},
        {"name": "_imaps._tcp", "port": 993, "target": "mx1.example.test", "priority": 0},
        {"name": "_pop3s._tcp", "port": 0, "target": "."},
    ],
    "a": ["198.51.100.10", "198.51.100.11"],
    "aaaa": {"mx1.example.test": ["2001:db8::10"], "mx2.example.test": ["2001:db8::11"]},
    "ptr": {
        "198.51.100.10": "mx1.example.test",
        "198.51.100.11": "mx2.example.test.",
        "2001:db8::10": "mx1.example.test",
    },
}


@pytest.fixture(scope="module")
def nameserver(knot: Callable[..., Any]) -> str:
    return str(knot(ZONES).address)


@pytest.fixture
def check(
    run_module: Callable[..., dict[str, Any]], nameserver: str
) -> Callable[..., dict[str, Any]]:
    def run(domain: str, expect: dict[str, Any], **extra: Any) -> dict[str, Any]:
        args = {"domain": domain, "nameservers": [nameserver], "expect": expect, **extra}
        return run_module("mail_dns_check", args)

    return run


def by_check(result: dict[str, Any], check: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in result["results"] if r["check"] == check and name in (None, r["name"])]
    assert len(found) == 1, (check, name, result["results"])
    return found[0]


def test_everything_published_as_expected(check: Callable[..., dict[str, Any]]) -> None:
    result = check("example.test", GOOD)
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is False
    assert result["ok"] is True
    assert result["failed_checks"] == []
    bad = [r for r in result["results"] if r["status"] != "ok"]
    assert bad == []
    checks = [(r["check"], r["name"]) for r in result["results"]]
    assert checks == [
        ("mx", "example.test"),
        ("a", "mx1.example.test"),
        ("a", "mx2.example.test"),
        ("aaaa", "mx1.example.test"),
        ("aaaa", "mx2.example.test"),
        ("ptr", "10.100.51.198.in-addr.arpa"),
        ("ptr", "11.100.51.198.in-addr.arpa"),
        ("ptr", f"{ip6_relative('2001:db8::10')}.{IP6_ZONE}"),
        ("spf", "example.test"),
        ("dkim", "s2026._domainkey.example.test"),
        ("dmarc", "_dmarc.example.test"),
        ("mta_sts", "_mta-sts.example.test"),
        ("tlsrpt", "_smtp._tls.example.test"),
        ("srv", "_submission._tcp.example.test"),
        ("srv", "_imaps._tcp.example.test"),
        ("srv", "_pop3s._tcp.example.test"),
    ]
    mx = by_check(result, "mx")
    assert mx["found"] == ["10 mx1.example.test.", "20 mx2.example.test."]
    assert by_check(result, "spf")["found"] == ["v=spf1 mx ip4:198.51.100.0/24 -all"]
    assert "report" not in result and "table" not in result


def test_ansible_check_mode_runs_the_same_checks(
    run_module: Callable[..., dict[str, Any]], nameserver: str
) -> None:
    args = {"domain": "example.test", "nameservers": [nameserver], "expect": {"spf": "v=spf1 -all"}}
    result = run_module("mail_dns_check", args, check_mode=True)
    assert result["failed"] is True
    assert result["failed_checks"] == ["spf example.test"]


def test_dkim_tolerates_quoting_splitting_and_white_space(
    check: Callable[..., dict[str, Any]],
) -> None:
    chunks = [KEY[i : i + 64] for i in range(0, len(KEY), 64)]
    zone_style = '( "v=DKIM1; k=rsa; "\n  ' + "\n  ".join(f'"{c}"' for c in ["p=", *chunks]) + " )"
    for value in (f"v=DKIM1;k=rsa;p={KEY}", f"k=rsa; p={' '.join(chunks)}", zone_style):
        result = check("example.test", {"dkim": {"s2026": value}})
        assert result["failed"] is False, (value, result.get("msg"))


def test_wrong_expectations_fail_with_a_reason_per_check(
    check: Callable[..., dict[str, Any]],
) -> None:
    expect = {
        "mx": ["mx2.example.test", "mx1.example.test", "mx3.example.test"],
        "spf": "v=spf1 mx include:_spf.example.net -all",
        "dkim": {"s2026": f"v=DKIM1; k=rsa; p={OTHER_KEY}", "missing": f"p={KEY}"},
        "dmarc": {"p": "reject", "rua": "mailto:reports@example.net"},
        "mta_sts_id": "20270101T000000",
        "tlsrpt": "v=TLSRPTv1; rua=mailto:other@example.test",
        "srv": [
            {"name": "_submission._tcp", "port": 465, "target": "mx1.example.test"},
            {"name": "_imaps._tcp", "port": 993, "target": "mx1.example.test", "priority": 5},
            {"name": "_imap._tcp", "port": 143, "target": "mx1.example.test"},
        ],
        "a": {"mx1.example.test": ["198.51.100.10", "198.51.100.50"]},
        "ptr": {
            "198.51.100.10": "mx2.example.test",
            "198.51.100.12": "stray.example.test",
            "198.51.100.13": "mx1.example.test",
        },
    }
    result = check("example.test", expect)
    assert result["failed"] is True
    assert result["ok"] is False
    why = {f"{r['check']} {r['name']}": r["why"] for r in result["results"]}
    status = {f"{r['check']} {r['name']}": r["status"] for r in result["results"]}
    assert "mx3.example.test is not an MX host" in why["mx example.test"]
    assert "expected mx2.example.test first" in why["mx example.test"]
    assert "missing include:_spf.example.net" in why["spf example.test"]
    assert "different public key" in why["dkim s2026._domainkey.example.test"]
    assert (
        "no TXT record at missing._domainkey.example.test"
        in why["dkim missing._domainkey.example.test"]
    )
    assert "rua lacks mailto:reports@example.net" in why["dmarc _dmarc.example.test"]
    assert (
        "id=20261128T120000 published, id=20270101T000000 expected"
        in why["mta_sts _mta-sts.example.test"]
    )
    assert "rua=mailto:tlsrpt@example.test published" in why["tlsrpt _smtp._tls.example.test"]
    assert (
        "no SRV record points to mx1.example.test. port 465"
        in why["srv _submission._tcp.example.test"]
    )
    assert "priority/weight 0 1 published" in why["srv _imaps._tcp.example.test"]
    assert "no SRV record at _imap._tcp.example.test" in why["srv _imap._tcp.example.test"]
    assert "missing: 198.51.100.50" in why["a mx1.example.test"]
    assert (
        "points to mx1.example.test, expected mx2.example.test"
        in why["ptr 10.100.51.198.in-addr.arpa"]
    )
    assert "does not resolve back to 198.51.100.12" in why["ptr 12.100.51.198.in-addr.arpa"]
    assert "198.51.100.99" in why["ptr 12.100.51.198.in-addr.arpa"]
    assert "no PTR record for 198.51.100.13" in why["ptr 13.100.51.198.in-addr.arpa"]
    assert all(s == "fail" for s in status.values()), status
    assert sorted(result["failed_checks"]) == sorted(status)
    # The message names every failing check and why.
    assert result["msg"].startswith(f"{len(status)} DNS checks failed for example.test: ")
    for key, reason in why.items():
        assert f"{key}: {reason}" in result["msg"]


def test_weaker_policies_fail(check: Callable[..., dict[str, Any]]) -> None:
    result = check(
        "fail.test",
        {
            "spf": "v=spf1 mx -all",
            "dmarc": "v=DMARC1; p=reject",
            "mta_sts_id": "new",
            "tlsrpt": "v=TLSRPTv1; rua=mailto:tls@fail.test",
            "mx": [{"preference": 20, "host": "mx.fail.test"}],
        },
    )
    assert result["failed"] is True
    assert by_check(result, "spf")["why"] == (
        "published ~all (softfail) where -all (fail) is expected"
    )
    assert "p=none published where p=reject is expected" in by_check(result, "dmarc")["why"]
    assert "id=old published, id=new expected" in by_check(result, "mta_sts")["why"]
    assert "no TLS-RPT record" in by_check(result, "tlsrpt")["why"]
    assert by_check(result, "mx")["why"] == "mx.fail.test has preference 10, expected 20"
    assert result["failed_checks"] == [
        "mx fail.test",
        "spf fail.test",
        "dmarc _dmarc.fail.test",
        "mta_sts _mta-sts.fail.test",
        "tlsrpt _smtp._tls.fail.test",
    ]


def test_warnings_do_not_fail(check: Callable[..., dict[str, Any]]) -> None:
    result = check(
        "warn.test",
        {
            "mx": ["mx.warn.test"],
            "spf": "v=spf1 mx ~all",
            "dkim": {"sel": f"v=DKIM1; k=rsa; p={OTHER_KEY}"},
            "dmarc": {"p": "quarantine"},
            "srv": [{"name": "_submission._tcp", "port": 587, "target": "mx.warn.test"}],
            "a": ["198.51.100.20"],
        },
    )
    assert result["failed"] is False, result.get("msg")
    assert result["ok"] is True
    assert result["failed_checks"] == []
    assert {r["check"]: r["status"] for r in result["results"]} == {
        "mx": "warn",
        "a": "ok",
        "spf": "warn",
        "dkim": "warn",
        "dmarc": "warn",
        "srv": "warn",
    }
    assert by_check(result, "mx")["why"] == "unexpected MX host: backup.warn.test (preference 50)"
    assert "stricter than the expected ~all" in by_check(result, "spf")["why"]
    assert "t=y" in by_check(result, "dkim")["why"]
    assert "p=reject is stricter than the expected p=quarantine" in by_check(result, "dmarc")["why"]
    assert "10 1 587 backup.warn.test." in by_check(result, "srv")["why"]


def test_exact_dmarc_value_warns_about_extra_tags(check: Callable[..., dict[str, Any]]) -> None:
    result = check("warn.test", {"dmarc": '"v=DMARC1;  p=reject"'})
    assert result["failed"] is False
    assert by_check(result, "dmarc")["status"] == "warn"
    assert "fo=1" in by_check(result, "dmarc")["why"]


def test_a_list_for_several_mx_hosts(check: Callable[..., dict[str, Any]]) -> None:
    result = check("example.test", {"a": ["198.51.100.10", "198.51.100.12"]})
    assert result["failed"] is True
    assert by_check(result, "a", "mx1.example.test")["status"] == "ok"
    assert by_check(result, "a", "mx2.example.test")["why"] == "unexpected: 198.51.100.11"
    assert "not an address of any MX host" in by_check(result, "a", "example.test")["why"]


def test_report_mode_lists_records_and_never_fails(check: Callable[..., dict[str, Any]]) -> None:
    expect = {
        "mx": [{"preference": 10, "host": "mx.fail.test"}],
        "spf": "v=spf1 mx -all",
        "dkim": {"s1": f"v=DKIM1; k=rsa; p={KEY}"},
        "dmarc": {"p": "reject", "rua": "mailto:dmarc@fail.test"},
        "mta_sts_id": "old",
        "srv": [{"name": "_submissions._tcp", "port": 465, "target": "mx.fail.test"}],
        "a": ["198.51.100.30"],
        "ptr": {"198.51.100.30": "mx.fail.test"},
    }
    result = check("fail.test", expect, mode="report")
    assert result["failed"] is False
    assert result["ok"] is False
    assert "spf fail.test" in result["failed_checks"]
    assert result["records"] == [
        {"type": "MX", "name": "fail.test.", "value": "10 mx.fail.test."},
        {"type": "A", "name": "mx.fail.test.", "value": "198.51.100.30"},
        {"type": "PTR", "name": "30.100.51.198.in-addr.arpa.", "value": "mx.fail.test."},
        {"type": "TXT", "name": "fail.test.", "value": "v=spf1 mx -all"},
        {"type": "TXT", "name": "s1._domainkey.fail.test.", "value": f"v=DKIM1; k=rsa; p={KEY}"},
        {
            "type": "TXT",
            "name": "_dmarc.fail.test.",
            "value": "v=DMARC1; p=reject; rua=mailto:dmarc@fail.test",
        },
        {"type": "TXT", "name": "_mta-sts.fail.test.", "value": "v=STSv1; id=old"},
        {"type": "SRV", "name": "_submissions._tcp.fail.test.", "value": "0 1 465 mx.fail.test."},
    ]
    table = result["table"]
    assert len(table) == 1 + len(result["records"])
    assert table[0].split() == ["TYPE", "NAME", "VALUE", "STATUS", "NOW"]
    # Columns line up: each starts at the same offset on every line.
    for column in ("NAME", "VALUE", "STATUS", "NOW"):
        offset = table[0].index(column)
        for line in table[1:]:
            assert line[offset - 2 : offset] == "  " and line[offset] != " ", (column, line)
    rows = {(line.split()[0], line.split()[1]): line for line in table[1:]}
    status_at = table[0].index("STATUS")
    now_at = table[0].index("NOW")

    def cells(line: str) -> tuple[str, str]:
        return line[status_at:now_at].strip(), line[now_at:]

    assert cells(rows[("MX", "fail.test.")]) == ("ok", "10 mx.fail.test.")
    assert cells(rows[("TXT", "fail.test.")]) == ("fail", "v=spf1 mx ~all")
    assert cells(rows[("TXT", "_dmarc.fail.test.")]) == ("fail", "v=DMARC1; p=none")
    assert cells(rows[("TXT", "_mta-sts.fail.test.")]) == ("ok", "v=STSv1; id=old")
    assert cells(rows[("TXT", "s1._domainkey.fail.test.")]) == ("fail", "-")
    assert cells(rows[("SRV", "_submissions._tcp.fail.test.")]) == ("fail", "-")
    assert cells(rows[("PTR", "30.100.51.198.in-addr.arpa.")])[0] == "fail"


def test_unreachable_nameserver_fails_with_timeout(
    run_module: Callable[..., dict[str, Any]], silent_nameserver: str
) -> None:
    result = run_module(
        "mail_dns_check",
        {
            "domain": "example.test",
            "nameservers": [silent_nameserver],
            "timeout": 0.5,
            "expect": {"mx": ["mx1.example.test"], "spf": "v=spf1 -all"},
        },
    )
    assert result["failed"] is True
    assert result["failed_checks"] == ["mx example.test", "spf example.test"]
    for entry in result["results"]:
        assert entry["status"] == "fail"
        assert entry["why"].startswith("timeout querying example.test ")
        assert silent_nameserver in entry["why"]
    assert "timeout querying example.test MX" in result["msg"]


def test_unreachable_nameserver_in_report_mode_does_not_fail(
    run_module: Callable[..., dict[str, Any]], silent_nameserver: str
) -> None:
    result = run_module(
        "mail_dns_check",
        {
            "domain": "example.test",
            "nameservers": [silent_nameserver],
            "timeout": 0.5,
            "mode": "report",
            "expect": {"spf": "v=spf1 -all"},
        },
    )
    assert result["failed"] is False
    assert result["ok"] is False
    assert result["records"] == [{"type": "TXT", "name": "example.test.", "value": "v=spf1 -all"}]
    assert result["table"][1].split()[-2:] == ["fail", "-"]


# The MTA-STS policy the tests below serve and expect (CRLF, rfc8461:3.2).
POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: mx2.example.test\r\n"
    "max_age: 604800\r\n"
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"nameservers": ["ns.example.test"]}, "is not an IP address or ip:port"),
        ({"expect": {"mx": [{"host": "mx.example.test"}]}}, "needs preference and host"),
        ({"expect": {"a": ["2001:db8::1"]}}, "is not an IPv4 address"),
        ({"expect": {"dkim": {"s": "v=DKIM1; k=rsa"}}}, "has no p= tag"),
        ({"expect": {"ptr": {"mx.example.test": "mx"}}}, "is not an IP address"),
        ({"expect": {"srv": [{"name": "_imap._tcp", "port": 143}]}}, "target"),
        ({"expect": {"mta_sts_policy": "version: STSv1\r\nmode: on\r\n"}}, "mode: on is none of"),
        (
            {"expect": {"mta_sts_policy": POLICY}, "mta_sts_ca_file": "/nonexistent/ca.pem"},
            "mta_sts_ca_file /nonexistent/ca.pem does not exist",
        ),
        ({"mta_sts_port": 70000}, "mta_sts_port 70000 is not a TCP port"),
    ],
)
def test_bad_arguments(
    run_module: Callable[..., dict[str, Any]],
    nameserver: str,
    args: dict[str, Any],
    message: str,
) -> None:
    result = run_module(
        "mail_dns_check", {"domain": "example.test", "nameservers": [nameserver], **args}
    )
    assert result["failed"] is True
    assert message in result["msg"]


def test_helpers(library_module: Callable[[str], Any]) -> None:
    module = library_module("mail_dns_check")
    assert module.unquote_txt('"v=DKIM1; " "p=AB\\"C" ') == 'v=DKIM1; p=AB"C'
    assert module.unquote_txt('( "a"\n "b\\059c" )') == "ab;c"
    assert module.unquote_txt("v=spf1 -all") == "v=spf1 -all"
    assert module.unquote_txt('"unterminated') == '"unterminated'
    assert module.parse_tags(" v=DMARC1;P=reject ; rua = mailto:a@b , mailto:c@d;;") == {
        "v": "DMARC1",
        "p": "reject",
        "rua": "mailto:a@b , mailto:c@d",
    }


def test_loads_through_ansible(nameserver: str, tmp_path: Path) -> None:
    """The module as Ansible runs it: found through ansible.cfg (library =
    library), packed by AnsiballZ, dnspython imported in the module process."""
    args = {
        "domain": "example.test",
        "nameservers": [nameserver],
        "mode": "report",
        "expect": {"mx": GOOD["mx"], "dmarc": {"p": "reject"}},
    }
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote"),
    }
    run = subprocess.run(
        ["ansible", "localhost", "-m", "mail_dns_check", "-a", json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result["ok"] is True
    assert result["changed"] is False
    assert [r["status"] for r in result["results"]] == ["ok", "ok"]
    assert result["table"][1].split()[:3] == ["MX", "example.test.", "10"]


def test_missing_dnspython_is_reported(
    run_module: Callable[..., dict[str, Any]],
    library_module: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = library_module("mail_dns_check")
    monkeypatch.setattr(module, "DNSPYTHON_IMPORT_ERROR", "Traceback: No module named 'dns'")
    result = run_module("mail_dns_check", {"domain": "example.test"})
    assert result["failed"] is True
    assert "Failed to import the required Python library (dnspython)" in result["msg"]


# -- the MTA-STS policy, fetched over HTTPS (RFC 8461 3.3) ----------------------------------

POLICY_HOST = "mta-sts.example.test"
POLICY_PATH = "/.well-known/mta-sts.txt"


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    body: bytes = POLICY.encode()
    # No Content-Length: the body ends when the connection closes.
    close_delimited: bool = False
    # Seconds between the bytes of the answer (a server that drips).
    drip: float = 0.0
    # Answer nothing until the test ends.
    hang: bool = False


class PolicyServer(ThreadingHTTPServer):
    """An HTTPS server on 127.0.0.1 that answers every GET with ``reply`` and
    records the requests (path, Host) and the SNI names it was asked for."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _PolicyHandler)
        self.tls = tls
        self.reply = Reply()
        self.requests: list[tuple[str, str | None]] = []
        self.sni: list[str | None] = []
        self.released = threading.Event()
        tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes are what some tests are about


class _PolicyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PolicyServer

    def setup(self) -> None:
        # The TLS handshake in the connection's own thread.
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.request.close()  # the server closes only the socket it accepted

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Host")))
        reply = server.reply
        if reply.hang:
            server.released.wait(30)
            return
        head = [f"HTTP/1.1 {reply.status} X\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in reply.headers.items()]
        if reply.close_delimited:
            head.append("Connection: close\r\n")
        else:
            head.append(f"Content-Length: {len(reply.body)}\r\n")
        data = "".join([*head, "\r\n"]).encode() + reply.body
        if reply.drip:
            for i in range(len(data)):
                if server.released.wait(reply.drip):
                    break
                self.wfile.write(data[i : i + 1])
        else:
            self.wfile.write(data)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def policy_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def policy_ca_file(policy_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    policy_ca.cert_pem.write_to_path(str(path))
    return str(path)


def _start(server: PolicyServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    return thread


@pytest.fixture(scope="module")
def servers(policy_ca: trustme.CA) -> Iterator[dict[str, PolicyServer]]:
    """ "good": a certificate for mta-sts.example.test; "wrong_name": for www.example.test."""
    started = {}
    for key, name in (("good", POLICY_HOST), ("wrong_name", "www.example.test")):
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        policy_ca.issue_cert(name).configure_cert(tls)
        server = PolicyServer(tls)
        started[key] = (server, _start(server))
    yield {key: server for key, (server, _) in started.items()}
    for server, thread in started.values():
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def policy_server(servers: dict[str, PolicyServer]) -> Iterator[PolicyServer]:
    server = servers["good"]
    server.reply = Reply()
    server.requests.clear()
    server.sni.clear()
    server.released.clear()
    yield server
    server.released.set()


@pytest.fixture
def fetch(
    check: Callable[..., dict[str, Any]], policy_server: PolicyServer, policy_ca_file: str
) -> Callable[..., dict[str, Any]]:
    """``fetch(expected_policy, mx=None, **module_args)``: the mta_sts_policy check of
    example.test (with expect.mx when given) against the good server, its CA trusted;
    returns the result row (and the whole result as row["_result"])."""

    def run(policy: str = POLICY, mx: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        args = {"mta_sts_port": policy_server.port, "mta_sts_ca_file": policy_ca_file} | extra
        expect = {"mta_sts_policy": policy} | ({"mx": mx} if mx else {})
        result = check("example.test", expect, **args)
        row = by_check(result, "mta_sts_policy")
        assert row["name"] == POLICY_HOST
        assert result["failed"] is (row["status"] == "fail"), result
        return {**row, "_result": result}

    return run


def test_policy_served_as_expected(
    check: Callable[..., dict[str, Any]], policy_server: PolicyServer, policy_ca_file: str
) -> None:
    expect = {
        "mta_sts_id": GOOD["mta_sts_id"],
        "mta_sts_policy": POLICY,
        "tlsrpt": GOOD["tlsrpt"],
    }
    result = check(
        "example.test",
        expect,
        mta_sts_port=policy_server.port,
        mta_sts_ca_file=policy_ca_file,
    )
    assert result["failed"] is False, result.get("msg")
    assert [r["check"] for r in result["results"]] == ["mta_sts", "mta_sts_policy", "tlsrpt"]
    row = by_check(result, "mta_sts_policy")
    assert row["status"] == "ok"
    assert row["why"] == "MTA-STS policy served as expected"
    lines = POLICY.split("\r\n")[:-1]
    assert row["expected"] == row["found"] == lines
    # Through the CNAME to web.hosting.test (127.0.0.1), as a sender asks: SNI and
    # Host are the policy host's, the path the well-known one, nothing cached.
    assert policy_server.sni == [POLICY_HOST]
    assert policy_server.requests == [(POLICY_PATH, f"{POLICY_HOST}:{policy_server.port}")]


def test_policy_in_the_report_table(
    check: Callable[..., dict[str, Any]], policy_server: PolicyServer, policy_ca_file: str
) -> None:
    policy_server.reply = Reply(body=POLICY.replace("enforce", "testing").encode())
    expect = {"mta_sts_id": GOOD["mta_sts_id"], "mta_sts_policy": POLICY}
    result = check(
        "example.test",
        expect,
        mode="report",
        mta_sts_port=policy_server.port,
        mta_sts_ca_file=policy_ca_file,
    )
    assert result["failed"] is False
    assert result["failed_checks"] == [f"mta_sts_policy {POLICY_HOST}"]
    # Not a DNS record: in the table only.
    assert [r["type"] for r in result["records"]] == ["TXT"]
    table = result["table"]
    assert len(table) == 3
    assert table[1].split()[:2] == ["TXT", "_mta-sts.example.test."]
    url = f"https://{POLICY_HOST}:{policy_server.port}{POLICY_PATH}"
    assert table[2].split()[:2] == ["POLICY", url]
    status_at = table[0].index("STATUS")
    now_at = table[0].index("NOW")
    assert table[2][status_at:now_at].strip() == "fail"
    assert table[2][now_at:].startswith("version: STSv1 | mode: testing | mx: mx1.example.test")


def test_policy_text_differs(fetch: Callable[..., dict[str, Any]]) -> None:
    row = fetch(POLICY.replace("max_age: 604800", "max_age: 86400"))
    assert row["status"] == "fail"
    assert row["why"] == (
        "max_age 604800, 86400 expected; the policy served differs from the one expected:"
        " line 5 is 'max_age: 604800', 'max_age: 86400' expected"
    )
    # Line ends matter too: the policy is compared byte for byte.
    row = fetch(POLICY.replace("\r\n", "\n"))
    assert row["status"] == "fail"
    assert row["why"].endswith("line 1 'version: STSv1' has CRLF, LF expected")
    row = fetch(POLICY + "mx: mx3.example.test\r\n")
    assert row["why"].endswith(
        "line 6 'mx: mx3.example.test' is missing (the policy served ends after line 5)"
    )


def test_policy_mode_differs(
    fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer
) -> None:
    policy_server.reply = Reply(body=POLICY.replace("enforce", "testing").encode())
    row = fetch()
    assert row["status"] == "fail"
    assert row["why"].startswith("mode testing, enforce expected; ")
    assert "line 2 is 'mode: testing', 'mode: enforce' expected" in row["why"]
    assert row["found"][1] == "mode: testing"


def test_policy_must_cover_every_mx_host(
    fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer
) -> None:
    # rfc8461:4.1: "*.mx2.example.test" is one label more than mx2.example.test.
    policy = POLICY.replace("mx: mx2.example.test", "mx: *.mx2.example.test")
    policy_server.reply = Reply(body=policy.encode())
    row = fetch(policy)
    assert row["status"] == "fail"
    assert row["why"] == "MX mx2.example.test matches no mx: line"
    # The MX hosts of expect.mx when given.
    result = fetch(policy, mx=["mx1.example.test"])
    assert result["status"] == "ok", result["why"]
    # A wildcard for both.
    policy = POLICY.replace("mx: mx1.example.test\r\nmx: mx2.example.test", "mx: *.EXAMPLE.test")
    policy_server.reply = Reply(body=policy.encode())
    assert fetch(policy)["status"] == "ok"


def test_untrusted_certificate(fetch: Callable[..., dict[str, Any]]) -> None:
    row = fetch(mta_sts_ca_file=None)
    assert row["status"] == "fail"
    assert row["why"].startswith(f"certificate for {POLICY_HOST} not trusted: ")
    assert "set mta_sts_ca_file" in row["why"]
    assert row["found"] == []


def test_certificate_for_another_name(
    fetch: Callable[..., dict[str, Any]], servers: dict[str, PolicyServer]
) -> None:
    row = fetch(mta_sts_port=servers["wrong_name"].port)
    assert row["status"] == "fail"
    assert row["why"].startswith(f"certificate of {POLICY_HOST} (127.0.0.1 port ")
    assert f"is not valid for the name {POLICY_HOST}" in row["why"]
    assert servers["wrong_name"].requests == []


def test_not_found(fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer) -> None:
    policy_server.reply = Reply(status=404, body=b"no such file")
    row = fetch()
    assert row["status"] == "fail"
    assert row["why"].startswith(f"HTTP 404 X for https://{POLICY_HOST}:")


def test_redirect_is_not_followed(
    fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer
) -> None:
    # The target would serve the right policy: a sender must still not go there.
    target = f"https://{POLICY_HOST}:{policy_server.port}/policy.txt"
    policy_server.reply = Reply(status=301, headers={"Location": target}, body=b"")
    row = fetch()
    assert row["status"] == "fail"
    assert row["why"].startswith(f"HTTP 301 redirect to {target}: senders do not follow")
    assert [path for path, _ in policy_server.requests] == [POLICY_PATH]


def test_wrong_media_type(
    fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer
) -> None:
    policy_server.reply = Reply(headers={"Content-Type": "text/html; charset=utf-8"})
    row = fetch()
    assert row["status"] == "fail"
    assert row["why"].startswith("media type text/html for https://")
    # Parameters do not matter.
    policy_server.reply = Reply(headers={"Content-Type": "Text/Plain; charset=utf-8"})
    assert fetch()["status"] == "ok"


def test_oversized_policy(
    fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer
) -> None:
    padding = ("x-padding: " + "y" * 100 + "\r\n").encode() * 700  # about 78 KB
    big = POLICY.encode() + padding
    policy_server.reply = Reply(body=big)
    row = fetch()
    assert row["status"] == "fail"
    assert row["why"].endswith(
        f"is {len(big)} bytes, more than the 64 KiB senders read (rfc8461:3.3)"
    )
    # Without a Content-Length: no more than 64 KiB is read.
    policy_server.reply = Reply(body=big, close_delimited=True)
    row = fetch()
    assert row["status"] == "fail"
    assert row["why"].endswith("is more than the 64 KiB senders read (rfc8461:3.3)")
    # Just under the limit is fine (the extension lines are ignored by senders).
    fits = POLICY.encode() + padding[: 64 * 1024 - len(POLICY)]
    policy_server.reply = Reply(body=fits, close_delimited=True)
    row = fetch(fits.decode())
    assert row["status"] == "ok", row["why"]


def test_server_that_never_answers(
    fetch: Callable[..., dict[str, Any]], policy_server: PolicyServer
) -> None:
    # TCP accepted (the kernel's backlog), no TLS handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        row = fetch(mta_sts_port=port, timeout=1)
    assert row["status"] == "fail"
    assert row["why"] == f"no TLS handshake with {POLICY_HOST} (127.0.0.1 port {port}) within 1s"
    # A handshake, then no answer to the request.
    policy_server.reply = Reply(hang=True)
    row = fetch(timeout=1)
    assert row["why"] == (
        f"no complete answer from {POLICY_HOST} (127.0.0.1 port {policy_server.port}) within 1s"
    )
    # An answer one byte at a time: the time limit is for the whole answer, not each read.
    policy_server.released.set()
    policy_server.released.clear()
    policy_server.reply = Reply(drip=0.05)
    row = fetch(timeout=1)
    assert row["why"].startswith(f"no complete answer from {POLICY_HOST} ")


def test_nothing_listens(fetch: Callable[..., dict[str, Any]]) -> None:
    port = free_port()  # of this process's block: nobody else binds it
    row = fetch(mta_sts_port=port)
    assert row["status"] == "fail"
    assert (
        row["why"] == f"cannot connect to {POLICY_HOST} port {port}: 127.0.0.1: Connection refused"
    )


def test_no_policy_host(check: Callable[..., dict[str, Any]], policy_ca_file: str) -> None:
    result = check("fail.test", {"mta_sts_policy": POLICY}, mta_sts_ca_file=policy_ca_file)
    row = by_check(result, "mta_sts_policy")
    assert row["status"] == "fail"
    assert row["why"].startswith("no A or AAAA record for mta-sts.fail.test: ")


def test_policy_helpers(library_module: Callable[[str], Any]) -> None:
    module = library_module("mail_dns_check")
    matches = module.mx_pattern_matches
    assert matches("*.example.com", "mail.example.com")
    assert matches("*.Example.COM.", "MAIL.example.com")
    assert not matches("*.example.com", "example.com")
    assert not matches("*.example.com", "a.mail.example.com")
    assert matches("mx.example.com", "mx.example.com.")
    assert not matches("mx.example.com", "mx2.example.com")
    fields, problems, warnings = module.parse_mta_sts_policy(
        "mode: testing\nversion: STSv1\nmx: *.example.com\nmax_age: 0\nmode: enforce\nx_ext: 1\n"
    )
    assert fields == {
        "version": "STSv1",
        "mode": "testing",
        "max_age": "0",
        "mx": ["*.example.com"],
    }
    assert problems == []
    assert warnings == [
        "mode: repeated on line 5; senders use the first",
        "version: is not the first line",
    ]
    _, problems, _ = module.parse_mta_sts_policy(
        "version: STSv1\r\nmode: enforce\r\nmx: mx*.example.com\r\nmax_age: 31557601\r\n"
    )
    assert problems == [
        "mx: 'mx*.example.com' is not a host name or *.domain pattern",
        "max_age: 31557601 is not a number of seconds, 0 to 31557600",
    ]
    # mx may be left out only with mode none.
    _, problems, _ = module.parse_mta_sts_policy("version: STSv1\nmode: none\nmax_age: 86400")
    assert problems == []
    _, problems, _ = module.parse_mta_sts_policy("version: STSv1\nmode: testing\nmax_age: 86400")
    assert problems == ["no mx: line"]


def test_policy_from_a_real_estafeta(
    check: Callable[..., dict[str, Any]],
    policy_ca: trustme.CA,
    policy_ca_file: str,
    tmp_path: Path,
) -> None:
    """The policy file the dns_records role writes, served by estafeta's https
    listener, passes the check as the role expects it."""
    cert = policy_ca.issue_cert("mx1.example.test", POLICY_HOST)
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / "example.test.txt").write_bytes(POLICY.encode())
    port = free_port()
    config = tmp_path / "estafeta.toml"
    config.write_text(
        'hostname = "mx1.example.test"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        'domains = ["example.test"]\n'
        f'[listen]\nhttps = ["127.0.0.1:{port}"]\n'
        f'[tls]\ncert = "{tmp_path / "cert.pem"}"\nkey = "{tmp_path / "key.pem"}"\n'
    )
    log_path = tmp_path / "estafeta.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "estafeta", "-c", str(config), "serve"], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        expect = {"mta_sts_policy": POLICY}
        args = {"mta_sts_port": port, "mta_sts_ca_file": policy_ca_file}
        result = check("example.test", expect, **args)
        assert result["failed"] is False, result.get("msg")
        assert by_check(result, "mta_sts_policy")["found"] == POLICY.split("\r\n")[:-1]
        result = check(
            "example.test", {"mta_sts_policy": POLICY.replace("enforce", "testing")}, **args
        )
        assert by_check(result, "mta_sts_policy")["why"].startswith(
            "mode enforce, testing expected"
        )
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(20)
