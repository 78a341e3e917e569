"""`estafeta doctor` in the lab (issue 22, acceptance 4).

On the converged lab the doctor finds nothing wrong on either mail host.
Then the lab's DNS is broken one thing at a time, the way an operator breaks
it: mx1's PTR removed, SPF without the host, the DKIM record another key's,
mx1's address on the test blocklist, the MTA-STS id changed without the
policy. Each run must name exactly that problem (one failing finding, of the
right check and subject), say how to fix it, and exit 1.

Each break is an RFC 2136 update of Knot on dns.lab with the lab's TSIG key
(conftest.nsupdate, as the dns_records role pushes records); the records are
put back exactly as they were afterwards. After each change, each mail
host's unbound (which the doctor asks, as estafeta does) forgets the names
changed, so the doctor takes the normal resolver path and still sees the
change at once: `unbound-control flush_type NAME TYPE` removes exactly those
entries (`flush_zone` only marks a whole zone's entries expired, which a
resolver with serve-expired and no serve-expired-ttl would answer once more).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rdataset
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lab_hosts import LAB_DNS, LAB_NET, MAIL_HOSTS

from conftest import nsupdate, records

MX1 = "mx1.example.test"
DOMAIN = MAIL_HOSTS[MX1]["domain"]
ADDRESS = MAIL_HOSTS[MX1]["address"]
ESTAFETA = "/usr/local/sbin/estafeta"
BLOCKLIST = "dnsbl.test"  # the lab's test blocklist (inventories/lab, lab_dns__zones)
REVERSE_ZONE = ".".join(reversed(LAB_NET["prefix"].split("."))) + ".in-addr.arpa"


def reversed_address(address: str) -> str:
    return ".".join(reversed(address.split(".")))


# -- the doctor --------------------------------------------------------------------------


def doctor(host: Any) -> tuple[int, dict[str, Any]]:
    """`estafeta doctor --json` on the host: its exit code and its report."""
    result = host.run(f"{ESTAFETA} doctor --json")
    assert result.rc in (0, 1), result.stdout + result.stderr
    return result.rc, json.loads(result.stdout)


def not_ok(report: dict[str, Any], status: str) -> list[tuple[str, str]]:
    return [(f["check"], f["subject"]) for f in report["findings"] if f["status"] == status]


def assert_all_green(host: Any) -> None:
    rc, report = doctor(host)
    problems = [f for f in report["findings"] if f["status"] != "ok"]
    assert (rc, report["status"], problems) == (0, "ok", []), json.dumps(report, indent=2)
    # Every check ran, for the host and for its domain.
    checks = {f["check"] for f in report["findings"]}
    assert checks >= {"addresses", "blocklist", "ptr", "helo", "spf", "dkim", "dmarc"}
    assert checks >= {"mta-sts", "tls-rpt", "certificate", "dns-views"}


# -- changing the lab's DNS --------------------------------------------------------------


def lookup(name: str, rdtype: str) -> dns.rdataset.Rdataset | None:
    """NAME's RDTYPE records at the lab's Knot (with their TTL), or None."""
    response, _ = dns.query.udp_with_fallback(
        dns.message.make_query(name, rdtype), LAB_DNS, timeout=5
    )
    wanted = dns.rdatatype.from_text(rdtype)
    for rrset in response.answer:
        if rrset.rdtype == wanted and rrset.name == dns.name.from_text(name):
            return dns.rdataset.from_rdata_list(rrset.ttl, list(rrset))
    return None


def forget(hosts: dict[str, Any], name: str, rdtypes: list[str]) -> None:
    """Each mail host's unbound drops what it has for NAME (see the docstring)."""
    for host in MAIL_HOSTS:
        for rdtype in rdtypes:
            result = hosts[host].run(f"unbound-control flush_type {name} {rdtype}")
            assert result.rc == 0 and result.stdout.strip() == "ok", result.stderr


@contextlib.contextmanager
def changed(
    hosts: dict[str, Any], zone: str, name: str, new: dict[str, dns.rdataset.Rdataset | None]
) -> Iterator[None]:
    """NAME's records of each type in NEW replaced (None: deleted) for the
    block, then put back as they were."""
    old = {rdtype: lookup(name, rdtype) for rdtype in new}
    try:
        for rdtype, rdataset in new.items():
            nsupdate(zone, name, rdtype, rdataset)
        forget(hosts, name, list(new))
        yield
    finally:
        for rdtype, rdataset in old.items():
            nsupdate(zone, name, rdtype, rdataset)
        forget(hosts, name, list(new))
    for rdtype, rdataset in old.items():
        assert lookup(name, rdtype) == rdataset, f"{name} {rdtype} not restored"


def other_dkim_key() -> str:
    """The TXT strings of a DKIM record of a key that is not mx1's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    return " ".join(f'"{text[i : i + 255]}"' for i in range(0, len(text), 255))


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAIL_HOSTS))
def test_the_lab_is_all_green(hosts: dict[str, Any], name: str) -> None:
    assert_all_green(hosts[name])


def _breaks(hosts: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any], tuple[str, str]]]:
    """Each break: (zone, name, the records it sets, the (check, subject) that must fail)."""
    (key, *_) = json.loads(hosts[MX1].check_output(f"{ESTAFETA} dkim list --json {DOMAIN}"))
    selector = f"{key['selector']}._domainkey.{DOMAIN}"
    other_policy = hashlib.sha1(b"another policy", usedforsecurity=False).hexdigest()[:20]
    listed = f"{reversed_address(ADDRESS)}.{BLOCKLIST}"
    return {
        "PTR removed": (
            REVERSE_ZONE,
            f"{reversed_address(ADDRESS)}.in-addr.arpa",
            {"PTR": None},
            ("ptr", MX1),
        ),
        "SPF without the host": (
            DOMAIN,
            DOMAIN,
            # Another address of the lab's network, not mx1's.
            {"TXT": records("TXT", 300, f'"v=spf1 ip4:{LAB_NET["prefix"]}.99 -all"')},
            ("spf", DOMAIN),
        ),
        "DKIM record altered": (
            DOMAIN,
            selector,
            {"TXT": records("TXT", 300, other_dkim_key())},
            ("dkim", selector),
        ),
        "the host's address on the test blocklist": (
            BLOCKLIST,
            listed,
            {
                "A": records("A", 60, "127.0.0.2"),
                "TXT": records("TXT", 60, '"doctor test listing"'),
            },
            ("blocklist", BLOCKLIST),
        ),
        "MTA-STS policy id changed without the file": (
            DOMAIN,
            f"_mta-sts.{DOMAIN}",
            # An id of the dns_records role's form, of another policy.
            {"TXT": records("TXT", 300, f'"v=STSv1; id={other_policy}"')},
            ("mta-sts", DOMAIN),
        ),
    }


BREAKS = [
    "PTR removed",
    "SPF without the host",
    "DKIM record altered",
    "the host's address on the test blocklist",
    "MTA-STS policy id changed without the file",
]


@pytest.mark.parametrize("case", BREAKS)
def test_one_break_names_that_problem(hosts: dict[str, Any], case: str) -> None:
    zone, name, new, failing = _breaks(hosts)[case]
    with changed(hosts, zone, name, new):
        rc, report = doctor(hosts[MX1])
    assert not_ok(report, "fail") == [failing], json.dumps(report, indent=2)
    assert not_ok(report, "warn") == [], json.dumps(report, indent=2)
    assert (rc, report["status"], report["summary"]["fail"]) == (1, "fail", 1)
    (finding,) = [f for f in report["findings"] if f["status"] == "fail"]
    assert finding["fix"], finding


@pytest.mark.parametrize("name", sorted(MAIL_HOSTS))
def test_all_green_again(hosts: dict[str, Any], name: str) -> None:
    """Every break was put back: later tests and a second converge see the lab
    as it was."""
    assert_all_green(hosts[name])
