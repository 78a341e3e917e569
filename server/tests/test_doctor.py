"""estafeta doctor against DNS described as data (MockResolver).

``World`` is a host whose every record is right: the doctor reports all ok.
Each break case of issue 22 (PTR removed, SPF without the host, DKIM record
altered, the address on a blocklist) then makes exactly that one finding
fail. The MTA-STS policy id case needs the HTTPS listener:
test_doctor_listeners.py and test_doctor_cli.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _dnsfakes import HangingResolver

from estafeta import config as config_module
from estafeta.dns import Answer, MockResolver, reverse_name
from estafeta.doctor import CHECKS, Context, Report, View, context, render, run
from estafeta.doctor.mtasts import tlsrpt_rua
from estafeta.policy import dkim
from estafeta.policy.dnsbl import Zone
from estafeta.policy.signer import Signer

HOST = "mx.example.org"
DOMAIN = "example.org"
IP4, IP6 = "192.0.2.10", "2001:db8::10"
NOW = 1_800_000_000.0
# Without listeners, every check but the certificates' has something to say.
EVERY_CHECK = {"addresses", *CHECKS} - {"certificate"}


@pytest.fixture(scope="module")
def dkim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dkim")
    Signer(directory).keygen(DOMAIN, "s1", "rsa")
    return directory


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The TXT record of a key that is not ours."""
    key = Signer(tmp_path_factory.mktemp("other")).keygen(DOMAIN, "s1", "rsa")
    return dkim.txt_record(key)


class World:
    """One mail host and domain with every record right."""

    def __init__(self, dkim_dir: Path) -> None:
        self.dkim_dir = dkim_dir
        key = dkim.load_key(dkim_dir / DOMAIN / "s1.pem", DOMAIN, "s1")
        self.dns = MockResolver(
            {
                (HOST, "A"): [IP4],
                (HOST, "AAAA"): [IP6],
                (reverse_name(IP4), "PTR"): [HOST],
                (reverse_name(IP6), "PTR"): [HOST],
                (DOMAIN, "MX"): [(10, HOST)],
                (DOMAIN, "TXT"): ["v=spf1 mx -all", "google-site-verification=abc"],
                (DOMAIN, "SOA"): [("ns1.example.org", 2026010101)],
                (DOMAIN, "NS"): ["ns1.example.org"],
                ("ns1.example.org", "A"): ["192.0.2.53"],
                (f"_dmarc.{DOMAIN}", "TXT"): [f"v=DMARC1; p=reject; rua=mailto:dmarc@{DOMAIN}"],
                (f"s1._domainkey.{DOMAIN}", "TXT"): [dkim.txt_record(key)],
                (f"_smtp._tls.{DOMAIN}", "TXT"): [f"v=TLSRPTv1; rua=mailto:tls@{DOMAIN}"],
                ("bl.test", "SOA"): [("ns.bl.test", 1)],
            }
        )

    def ctx(self, **fields: Any) -> Context:
        values: dict[str, Any] = {
            "hostname": HOST,
            "domains": (DOMAIN,),
            "resolver": self.dns,
            "addresses": ((IP4, "test"), (IP6, "test")),
            "recursive": (View("resolver", self.dns),),
            "direct": lambda address: self.dns,
            "dkim_dir": self.dkim_dir,
            "blocklists": (Zone("bl.test"),),
            "now": lambda: NOW,
            "timeout": 2.0,
        }
        values.update(fields)
        return Context(**values)

    def list_on_bl(self) -> None:
        self.set("10.2.0.192.bl.test", "A", "127.0.0.2")
        self.set("10.2.0.192.bl.test", "TXT", "listed: see https://bl.test/10")

    def set(self, name: str, rdtype: str, *values: Any) -> None:
        self.dns.records.pop((name, rdtype), None)
        if values:
            self.dns.add(name, rdtype, *values)


@pytest.fixture
def world(dkim_dir: Path) -> World:
    return World(dkim_dir)


def diagnose(ctx: Context, **kwargs: Any) -> Report:
    return asyncio.run(run(ctx, **kwargs))


def bad(report: Report, status: str = "fail") -> list[tuple[str, str]]:
    return [(f.check, f.subject) for f in report.findings if f.status == status]


def finding(report: Report, check: str, subject: str | None = None) -> Any:
    found = [f for f in report.findings if f.check == check and subject in (None, f.subject)]
    assert len(found) == 1, found
    return found[0]


# -- all green, then one thing broken at a time ---------------------------------------


def test_everything_right_is_all_ok(world: World) -> None:
    report = diagnose(world.ctx())
    assert bad(report, "fail") == [] and bad(report, "warn") == [], render.text(report)
    assert {f.check for f in report.findings} == EVERY_CHECK
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 0
    # Host findings first, then the domain's; each names what it looked at.
    assert [f.domain for f in report.findings][:1] == [HOST]
    assert finding(report, "ptr").detail == (
        f"{IP4} → {HOST}, which resolves back to it; {IP6} → {HOST}, which resolves back to it"
    )
    assert "1 of 10 DNS lookups (IPv4)" in finding(report, "spf").detail
    assert "a test signature verifies against DNS" in finding(report, "dkim").detail
    assert finding(report, "dns-views").detail == (
        "1 name server address(es) and 1 resolver(s) agree on 10 records"
    )


BREAKS: dict[str, tuple[Callable[[World, str], None], tuple[str, str], str]] = {
    "PTR removed": (
        lambda w, _: w.set(reverse_name(IP4), "PTR"),
        ("ptr", HOST),
        f"ask the provider of the address (its panel calls it 'reverse DNS' or 'rDNS') to set "
        f"the PTR of {IP4} to {HOST}",
    ),
    "SPF without the host": (
        lambda w, _: w.set(DOMAIN, "TXT", "v=spf1 ip4:198.51.100.7 -all"),
        ("spf", DOMAIN),
        f"let {IP4} send for {DOMAIN}: add ip4:{IP4}",
    ),
    "DKIM record altered": (
        lambda w, other: w.set(f"s1._domainkey.{DOMAIN}", "TXT", other),
        ("dkim", f"s1._domainkey.{DOMAIN}"),
        'publish "v=DKIM1; k=rsa; p=',
    ),
    "address on the test blocklist": (
        lambda w, _: w.list_on_bl(),
        ("blocklist", "bl.test"),
        "then ask bl.test for removal",
    ),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_one_break_is_one_failure(world: World, other_key: str, case: str) -> None:
    breaks, expected, fix = BREAKS[case]
    breaks(world, other_key)
    report = diagnose(world.ctx())
    assert bad(report) == [expected], render.text(report)
    assert bad(report, "warn") == []
    assert report.exit_code() == 1
    assert fix in finding(report, *expected).fix


def test_listed_names_the_reason(world: World) -> None:
    world.list_on_bl()
    detail = finding(diagnose(world.ctx()), "blocklist").detail
    assert detail == (
        f"{IP4} is listed (127.0.0.2): listed: see https://bl.test/10; {IP6}: not listed"
    )


def test_dkim_altered_says_which_file(world: World, other_key: str) -> None:
    world.set(f"s1._domainkey.{DOMAIN}", "TXT", other_key)
    found = finding(diagnose(world.ctx()), "dkim")
    path = world.dkim_dir / DOMAIN / "s1.pem"
    assert f"s1._domainkey.{DOMAIN} publishes another public key, not the key in {path}" in (
        found.detail
    )
    assert "a test signature does not verify: fail" in found.detail


# -- blocklists ---------------------------------------------------------------------------


def test_blocklist_refusing_the_resolver_is_a_warning(world: World) -> None:
    world.set("10.2.0.192.bl.test", "A", "127.255.255.254")
    found = finding(diagnose(world.ctx(), only=["blocklist"]), "blocklist")
    assert found.status == "warn"
    assert f"{IP4}: the list answered 127.255.255.254, which means it refused" in found.detail
    assert "not a public one" in found.fix


def test_blocklist_timeout_is_a_warning(world: World) -> None:
    world.dns.temperror.add("10.2.0.192.bl.test")
    found = finding(diagnose(world.ctx(), only=["blocklist"]), "blocklist")
    assert (found.status, found.detail.split(";")[0]) == ("warn", f"{IP4}: no answer (temperror)")


def test_blocklist_per_zone_and_family(world: World) -> None:
    world.set("10.2.0.192.v4.test", "A", "127.0.0.2")
    zones = (Zone("v4.test", ipv6=False), Zone("allow.test", kind="allow"))
    world.set("10.2.0.192.allow.test", "A", "127.0.0.5")
    report = diagnose(world.ctx(blocklists=zones), only=["blocklist"])
    v4 = finding(report, "blocklist", "v4.test")
    assert v4.status == "fail"
    assert f"{IP6}: not asked (the zone lists no IPv6)" in v4.detail
    allow = finding(report, "blocklist", "allow.test")
    assert allow.status == "ok"
    assert f"{IP4}: on this allowlist (127.0.0.5)" in allow.detail


def test_domain_blocklist(world: World) -> None:
    world.set(f"{DOMAIN}.dbl.test", "A", "127.0.1.2")
    report = diagnose(world.ctx(domain_blocklists=(Zone("dbl.test"),)), only=["blocklist"])
    found = finding(report, "blocklist", "dbl.test")
    assert (found.status, found.detail) == ("fail", f"{DOMAIN} is listed (127.0.1.2)")


def test_no_blocklist_configured_warns(world: World) -> None:
    found = finding(diagnose(world.ctx(blocklists=()), only=["blocklist"]), "blocklist")
    assert found.status == "warn" and "--blocklist zen.spamhaus.org" in found.fix


# -- PTR and HELO -----------------------------------------------------------------------


def test_ptr_not_forward_confirmed(world: World) -> None:
    world.set(reverse_name(IP4), "PTR", "static.10.provider.example")
    report = diagnose(world.ctx(), only=["ptr", "helo"])
    ptr = finding(report, "ptr")
    assert ptr.status == "fail"
    assert f"{IP4} has the PTR static.10.provider.example, which does not resolve" in ptr.detail
    # The HELO name still resolves to the address: a mismatch with the PTR is a warning.
    helo = finding(report, "helo")
    assert helo.status == "warn"
    assert f"set the PTR of {IP4} to {HOST}" in helo.fix


def test_helo_name_not_resolving_to_the_address(world: World) -> None:
    world.set(HOST, "AAAA")
    world.set(reverse_name(IP6), "PTR", "other.example.org")
    world.set("other.example.org", "AAAA", IP6)
    report = diagnose(world.ctx(), only=["ptr", "helo"])
    assert bad(report) == [("helo", HOST)]
    assert f"publish {HOST} AAAA {IP6}" in finding(report, "helo").fix


def test_no_address_is_one_failure(world: World) -> None:
    report = diagnose(world.ctx(addresses=()), only=["ptr", "helo", "blocklist", "spf"])
    assert bad(report) == [("addresses", HOST)]
    assert "--ip ADDRESS" in finding(report, "addresses").fix


def test_private_sending_address_gets_a_hint(world: World) -> None:
    report = diagnose(
        world.ctx(addresses=(("10.1.2.3", "the route to the internet"),)), only=["tlsa"]
    )
    assert finding(report, "addresses").detail == (
        "mail is sent from 10.1.2.3 (the route to the internet, a private address: behind NAT, "
        "name the public one with --ip)"
    )


def test_relay_skips_the_helo_check(world: World) -> None:
    found = finding(diagnose(world.ctx(relay="smtp.relay.example"), only=["helo"]), "helo")
    assert found.status == "ok" and "the relay smtp.relay.example" in found.detail


# -- SPF ------------------------------------------------------------------------------


def test_spf_counts_every_lookup_of_the_expansion(world: World) -> None:
    # The host passes at once (ip4: comes first), but an address the record
    # does not name costs 11 includes: permerror for the receivers of forgeries.
    includes = " ".join(f"include:i{n}.{DOMAIN}" for n in range(11))
    world.set(DOMAIN, "TXT", f"v=spf1 ip4:{IP4} ip6:{IP6} {includes} -all")
    for n in range(11):
        world.set(f"i{n}.{DOMAIN}", "TXT", "v=spf1 -all")
    found = finding(diagnose(world.ctx(), only=["spf"]), "spf")
    assert found.status == "fail"
    assert "the record needs 11 DNS lookups (include:i0.example.org" in found.detail
    assert f"{IP4}: pass" in found.detail
    assert "under 10 lookups" in found.fix


def test_spf_far_over_the_limit(world: World) -> None:
    world.set(DOMAIN, "TXT", f"v=spf1 include:loop.{DOMAIN} -all")
    world.set(f"loop.{DOMAIN}", "TXT", f"v=spf1 include:loop.{DOMAIN} -all")
    found = finding(diagnose(world.ctx(), only=["spf"]), "spf")
    assert "the record needs over 40 DNS lookups" in found.detail


def test_spf_void_lookups(world: World) -> None:
    names = " ".join(f"a:gone{n}.{DOMAIN}" for n in range(3))
    world.set(DOMAIN, "TXT", f"v=spf1 mx {names} -all")
    found = finding(diagnose(world.ctx(), only=["spf"]), "spf")
    assert found.status == "fail"
    assert "3 of its lookups find no record; more than 2 is a permerror" in found.detail


def test_spf_plus_all_passes_everybody(world: World) -> None:
    world.set(DOMAIN, "TXT", "v=spf1 mx +all")
    found = finding(diagnose(world.ctx(), only=["spf"]), "spf")
    assert found.status == "warn"
    assert "192.0.2.0, an address nobody uses, passes too" in found.detail


@pytest.mark.parametrize(
    ("records", "detail"),
    [
        ((), "example.org has no SPF record"),
        (("v=spf1 mx -all", "v=spf1 a -all"), "example.org has 2 SPF records"),
        (("v=spf1 mx foo:bar -all",), "the record is broken: example.org: unknown mechanism"),
    ],
)
def test_spf_record_problems(world: World, records: tuple[str, ...], detail: str) -> None:
    world.set(DOMAIN, "TXT", *records)
    found = finding(diagnose(world.ctx(), only=["spf"]), "spf")
    assert found.status == "fail" and detail in found.detail
    assert (
        f"ip4:{IP4} ip6:{IP6}" in found.fix
        or "one v=spf1 record" in found.fix
        or ("rfc7208 syntax" in found.fix)
    )


def test_spf_dns_failure_is_a_finding(world: World) -> None:
    world.dns.temperror.add((DOMAIN, "TXT"))
    found = finding(diagnose(world.ctx(), only=["spf"]), "spf")
    assert found.status == "fail"
    assert found.detail == f"the TXT lookup of {DOMAIN} failed (simulated timeout)"


# -- DKIM -----------------------------------------------------------------------------


def _keys(tmp_path: Path, *specs: tuple[str, str, int]) -> Path:
    for selector, algorithm, bits in specs:
        path = tmp_path / DOMAIN / f"{selector}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dkim.generate_key(algorithm, bits))
    return tmp_path


def _publish(world: World, directory: Path) -> None:
    for path in (directory / DOMAIN).glob("*.pem"):
        key = dkim.load_key(path, DOMAIN, path.stem)
        world.set(f"{path.stem}._domainkey.{DOMAIN}", "TXT", dkim.txt_record(key))


def test_dkim_short_rsa_key_warns(world: World, tmp_path: Path) -> None:
    directory = _keys(tmp_path, ("old", "rsa", 1024))
    _publish(world, directory)
    found = finding(diagnose(world.ctx(dkim_dir=directory), only=["dkim"]), "dkim")
    assert found.status == "warn"
    assert "RSA key of 1024 bits; 2048 are recommended (rfc8301:3.2)" in found.detail


def test_dkim_ed25519_only_warns(world: World, tmp_path: Path) -> None:
    directory = _keys(tmp_path, ("ed", "ed25519", 0))
    _publish(world, directory)
    found = finding(diagnose(world.ctx(dkim_dir=directory), only=["dkim"]), "dkim")
    assert found.status == "warn"
    assert "a test signature verifies against DNS" in found.detail
    assert "--algorithm rsa" in found.fix


def test_dkim_unpublished_and_broken_keys(world: World, tmp_path: Path) -> None:
    directory = _keys(tmp_path, ("new", "ed25519", 0), ("s1", "rsa", 2048))
    _publish(world, directory)
    world.set(f"new._domainkey.{DOMAIN}", "TXT")
    (directory / DOMAIN / "bad.pem").write_text("not a key\n")
    report = diagnose(world.ctx(dkim_dir=directory), only=["dkim"])
    assert sorted(bad(report)) == [
        ("dkim", f"bad._domainkey.{DOMAIN}"),
        ("dkim", f"new._domainkey.{DOMAIN}"),
    ]
    assert (
        "has no TXT record: the key is not published"
        in finding(report, "dkim", f"new._domainkey.{DOMAIN}").detail
    )
    assert "--selector bad --force" in finding(report, "dkim", f"bad._domainkey.{DOMAIN}").fix


def test_dkim_no_key_warns(world: World, tmp_path: Path) -> None:
    found = finding(diagnose(world.ctx(dkim_dir=tmp_path), only=["dkim"]), "dkim")
    assert (found.status, found.subject) == ("warn", f"*._domainkey.{DOMAIN}")


# -- DMARC ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "status", "detail"),
    [
        (None, "fail", "no DMARC record at _dmarc.example.org"),
        ("v=DMARC1; p=none; rua=mailto:d@example.org", "warn", "p=none: receivers do nothing"),
        ("v=DMARC1; p=quarantine", "warn", "no rua=: nobody sends you aggregate reports"),
        ("v=DMARC1; p=reject; pct=50; rua=mailto:d@example.org", "ok", "p=reject, pct=50"),
        ("v=DMARC1; p=bogus", "fail", "_dmarc.example.org cannot be used: invalid p=bogus"),
    ],
)
def test_dmarc(world: World, record: str | None, status: str, detail: str) -> None:
    world.set(f"_dmarc.{DOMAIN}", "TXT", *([record] if record else []))
    found = finding(diagnose(world.ctx(), only=["dmarc"]), "dmarc")
    assert found.status == status and detail in found.detail, found


def test_dmarc_reports_elsewhere_need_consent(world: World) -> None:
    world.set(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject; rua=mailto:x@reports.example")
    found = finding(diagnose(world.ctx(), only=["dmarc"]), "dmarc")
    assert found.status == "warn"
    assert f"{DOMAIN}._report._dmarc.reports.example (rfc7489:7.1)" in found.detail
    world.set(f"{DOMAIN}._report._dmarc.reports.example", "TXT", "v=DMARC1")
    found = finding(diagnose(world.ctx(), only=["dmarc"]), "dmarc")
    assert found.status == "ok" and "reports.example accepts them" in found.detail


def test_dmarc_of_a_subdomain_comes_from_the_organization(world: World) -> None:
    world.set("_dmarc.example.org", "TXT", "v=DMARC1; p=none; sp=reject; rua=mailto:d@example.org")
    found = finding(diagnose(world.ctx(domains=("lists.example.org",)), only=["dmarc"]), "dmarc")
    assert found.status == "ok"
    assert "p=reject (from _dmarc.example.org)" in found.detail


# -- MTA-STS without a listener, TLS-RPT ---------------------------------------------------


def test_mta_sts_record_problems(world: World) -> None:
    name = f"_mta-sts.{DOMAIN}"
    assert finding(diagnose(world.ctx(), only=["mta-sts"]), "mta-sts").status == "ok"
    report = diagnose(world.ctx(serves_mta_sts=True), only=["mta-sts"])
    assert finding(report, "mta-sts").status == "warn"
    world.set(name, "TXT", "v=STSv1; id=1", "v=STSv1; id=2")
    found = finding(diagnose(world.ctx(), only=["mta-sts"]), "mta-sts")
    assert (found.status, found.detail) == (
        "fail",
        f"{name} is not one valid record (2 v=STSv1 records): senders see no policy (rfc8461:3.1)",
    )
    # A valid record whose policy host does not exist.
    world.set(name, "TXT", "v=STSv1; id=20260101")
    found = finding(diagnose(world.ctx(), only=["mta-sts"]), "mta-sts")
    assert found.status == "fail"
    assert f"mta-sts.{DOMAIN} has no address" in found.detail


@pytest.mark.parametrize(
    ("records", "status", "detail"),
    [
        ((), "warn", "no TLS-RPT record"),
        (
            ("v=TLSRPTv1; rua=mailto:a@x.example", "v=TLSRPTv1; rua=mailto:b@x.example"),
            "fail",
            "2 TLS-RPT records",
        ),
        (("v=TLSRPTv1; rua=http://x.example/r",), "fail", "is not a mailto: or https: URI"),
        (
            ("v=TLSRPTv1;rua=mailto:a@x.example,https://r.example/tls;",),
            "ok",
            "reports go to mailto:a@x.example, https://r.example/tls",
        ),
    ],
)
def test_tlsrpt(world: World, records: tuple[str, ...], status: str, detail: str) -> None:
    world.set(f"_smtp._tls.{DOMAIN}", "TXT", *records)
    found = finding(diagnose(world.ctx(), only=["tls-rpt"]), "tls-rpt")
    assert found.status == status and detail in found.detail


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ("v=tlsrptv1; rua=mailto:a@b.example", "does not start with v=TLSRPTv1"),
        ("v=TLSRPTv1", "it has no rua="),
        ("v=TLSRPTv1; x-ext=1", "it has no rua="),
        ("v=TLSRPTv1; rua=mailto:a@b.example; bad field", "is not a key=value field"),
    ],
)
def test_tlsrpt_syntax(record: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        tlsrpt_rua(record)
    assert tlsrpt_rua("v=TLSRPTv1 ; rua=mailto:a@b.example ; ext=v") == ["mailto:a@b.example"]


# -- the authoritative servers and the resolvers -------------------------------------------


def test_resolver_with_old_data_warns(world: World) -> None:
    old = MockResolver(dict(world.dns.records.items()))
    world.set(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=quarantine; rua=mailto:d@example.org")
    ctx = world.ctx(recursive=(View("resolver 127.0.0.53", old),))
    found = finding(diagnose(ctx, only=["dns-views"]), "dns-views")
    assert found.status == "warn"
    assert found.detail == (
        f'resolver 127.0.0.53 answers _dmarc.{DOMAIN} TXT with "v=DMARC1; p=reject; '
        f'rua=mailto:dmarc@example.org", the name servers with "v=DMARC1; p=quarantine; '
        'rua=mailto:d@example.org"'
    )
    assert "flush_zone example.org" in found.fix


def test_name_servers_that_disagree_or_do_not_answer(world: World) -> None:
    world.set(DOMAIN, "NS", "ns1.example.org", "ns2.example.org", "ns3.example.org")
    world.set("ns2.example.org", "A", "192.0.2.54")
    world.set("ns3.example.org", "AAAA", "2001:db8::53")
    stale = MockResolver(dict(world.dns.records.items()))
    stale.add(DOMAIN, "TXT", "v=spf1 -all")
    stale.records[(DOMAIN, "SOA")] = [("ns1.example.org", 2025)]
    servers = {"192.0.2.53": world.dns, "192.0.2.54": stale, "2001:db8::53": HangingResolver("org")}
    ctx = world.ctx(direct=servers.__getitem__, timeout=0.2)
    found = finding(diagnose(ctx, only=["dns-views"]), "dns-views")
    assert found.status == "warn"
    assert "ns3.example.org (2001:db8::53) does not answer (timeout)" in found.detail
    assert (
        f"the name servers disagree on {DOMAIN} SOA (ns1.example.org (192.0.2.53): "
        "serial 2026010101; ns2.example.org (192.0.2.54): serial 2025)" in found.detail
    )
    assert f"the name servers disagree on {DOMAIN} TXT" in found.detail
    assert "transfer the zone again" in found.fix


def test_authoritative_servers_given(world: World) -> None:
    world.set(DOMAIN, "NS")  # not looked up
    ctx = world.ctx(authoritative=(View("192.0.2.99", world.dns),))
    found = finding(diagnose(ctx, only=["dns-views"]), "dns-views")
    assert found.status == "ok"


def test_zones_are_found_from_soa(world: World) -> None:
    world.set(HOST, "SOA")
    world.set("sub.example.org", "SOA", ("ns1.sub.example.org", 7))
    ctx = world.ctx(domains=(DOMAIN, "sub.example.org"))
    world.set("sub.example.org", "NS", "ns1.example.org")
    report = diagnose(ctx, only=["dns-views"])
    assert {f.subject for f in report.findings if f.check == "dns-views"} == {
        DOMAIN,
        "sub.example.org",
    }


# -- robustness -----------------------------------------------------------------------


class BrokenResolver(MockResolver):
    async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
        raise RuntimeError("resolver bug")


def test_a_check_that_raises_is_a_finding(world: World) -> None:
    report = diagnose(world.ctx(resolver=BrokenResolver()), only=["spf", "dmarc"])
    assert bad(report) == [("spf", "(the whole check)"), ("dmarc", "(the whole check)")]
    assert finding(report, "spf").detail == "the check failed: RuntimeError: resolver bug"


def test_a_check_that_hangs_is_cut_off(world: World) -> None:
    ctx = world.ctx(resolver=HangingResolver("arpa"))
    report = diagnose(ctx, only=["ptr"], max_time=0.2)
    assert finding(report, "ptr").detail == (
        "did not finish within 0.2 s (DNS or a listener does not answer)"
    )
    assert report.exit_code() == 1


# -- sending addresses ----------------------------------------------------------------


def _config(tmp_path: Path, queue: str = "") -> config_module.Config:
    path = tmp_path / "estafeta.toml"
    path.write_text(
        f'hostname = "{HOST}"\ndata_dir = "{tmp_path}"\ndomains = ["{DOMAIN}"]\n' + queue
    )
    return config_module.load(path)


def _addresses(config: config_module.Config, resolver: MockResolver, **kwargs: Any) -> Any:
    return asyncio.run(context.sending_addresses(config, resolver, **kwargs))


def test_sending_addresses(world: World, tmp_path: Path) -> None:
    config = _config(tmp_path)
    route = {4: "203.0.113.5", 6: None}

    def probe(family: Any) -> str | None:
        return route[4 if family.name == "AF_INET" else 6]

    found = _addresses(config, world.dns, route=probe, local=lambda a: a == IP6)
    assert found == [
        ("203.0.113.5", "the route to the internet"),
        (IP6, f"{HOST} AAAA, on this host"),
    ]
    assert _addresses(config, world.dns, given=["2001:DB8::1", "2001:db8::1"]) == [
        ("2001:db8::1", "--ip")
    ]
    sourced = _config(tmp_path, '[queue]\nsource_address = "198.51.100.9"\n')
    assert _addresses(sourced, world.dns) == [("198.51.100.9", "[queue] source_address")]
    relayed = _config(tmp_path, '[queue.relay]\nhost = "smtp.relay.example"\n')
    world.set("smtp.relay.example", "A", "198.51.100.25")
    assert _addresses(relayed, world.dns) == [("198.51.100.25", "[queue] relay smtp.relay.example")]


def test_listeners_from_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("")
    config = _config(
        tmp_path,
        '[listen]\nsmtp = ["0.0.0.0:25", "[::]:25"]\nimaps = ["[::]:993"]\nhttp = ["0.0.0.0:80"]\n'
        'https = ["127.0.0.1:8443"]\n[tls]\ncert = "c.pem"\nkey = "c.pem"\n'
        '[web]\nproxy_protocol = ["127.0.0.1/32"]\nproxy_protocol_listeners = ["https"]\n',
    )
    local = (ipaddress.ip_network("127.0.0.1/32"),)
    assert [(x.label, x.mode, x.proxy_from) for x in context.listeners(config)] == [
        ("smtp 127.0.0.1:25", "smtp", ()),
        ("imaps [::1]:993", "tls", ()),
        ("https 127.0.0.1:8443", "tls", local),
    ]


# -- output -----------------------------------------------------------------------------


def test_json_and_text(world: World) -> None:
    world.set(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none; rua=mailto:d@example.org")
    world.set(reverse_name(IP4), "PTR")
    report = diagnose(world.ctx())
    data = json.loads(json.dumps(report.to_json()))
    assert data["status"] == "fail"
    assert data["summary"] == {"ok": len(report.findings) - 2, "warn": 1, "fail": 1}
    assert data["addresses"] == [
        {"address": IP4, "source": "test"},
        {"address": IP6, "source": "test"},
    ]
    assert set(data["findings"][0]) == {"check", "subject", "status", "detail", "fix", "domain"}
    out = render.text(report)
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0] == HOST and f"{DOMAIN}" in lines
    assert any(line.startswith("  FAIL  ptr          mx.example.org: ") for line in lines)
    assert any(line.startswith("  WARN  dmarc        _dmarc.example.org: p=none") for line in lines)
    assert lines[-1] == f"1 failed, 1 warning, {len(report.findings) - 2} ok"
    coloured = render.text(report, colour=True)
    assert "\x1b[31mFAIL \x1b[0m" in coloured and "\x1b[33mWARN \x1b[0m" in coloured
    assert report.exit_code() == 1


def test_text_is_terminal_safe(world: World) -> None:
    world.set(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none; rua=mailto:d@example.org\x1b[2J")
    out = render.text(diagnose(world.ctx(), only=["dmarc"]))
    assert "\x1b" not in out and "?[2J" in out


def test_strict_fails_on_warnings(world: World) -> None:
    world.set(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none; rua=mailto:d@example.org")
    report = diagnose(world.ctx())
    assert (report.exit_code(), report.exit_code(strict=True)) == (0, 1)
