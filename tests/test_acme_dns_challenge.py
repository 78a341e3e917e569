"""library/acme_dns_challenge.py with every provider (issue 19 §2: DNS-01 works with each).

- nsupdate against Debian's knotd (RFC 2136 with TSIG): a challenge value is
  added next to a foreign value at the same ``_acme-challenge`` name, a CNAME
  at the challenge name is followed into another zone, the task waits until
  the server answers with the values, a second run changes nothing, check mode
  changes nothing, removal takes only our values; a server that never answers
  fails the wait with its address; a value that is not base64url and a name
  outside every known zone fail with a message;
- Cloudflare and Hetzner DNS against the local stand-ins of their APIs, and
  Route 53 against moto: added and removed value by value, the foreign value
  kept, the API token absent from the result.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ansible.module_utils  # type: ignore[import-untyped]
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.standins.cloudflare import CloudflareStandIn
from tests.standins.hetzner import HetznerStandIn
from tests.test_dns_route53 import ACCESS_KEY, SECRET_KEY, moto_endpoint, route53  # noqa: F401
from tests.test_role_dns_records import TSIG_SECRET, start_knot, stop
from tests.test_roles import ROOT

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

needs_knot = pytest.mark.skipif(not shutil.which("knotd"), reason="needs knotd (package knot)")

# Challenge values look like this (base64url of a SHA-256 digest, RFC 8555 8.4).
OURS = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
OURS_TOO = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
FOREIGN = "foreign-client-value-0123456789abcdefghijkl"

RunModule = Callable[..., dict[str, Any]]


def txt_at(port: int, name: str) -> set[str]:
    query = dns.message.make_query(name, "TXT")
    answer = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    return {
        item.to_text().strip('"')
        for found in answer.answer
        if found.rdtype == dns.rdatatype.TXT
        for item in found
    }


@pytest.fixture
def knot_zones(tmp_path: Path) -> Any:
    process, port = start_knot(
        tmp_path / "knot",
        {
            "example.org": [
                f'_acme-challenge.mx1 60 TXT "{FOREIGN}"',
                "_acme-challenge.www 60 CNAME www.acme.example.net.",
            ],
            "acme.example.net": [],
        },
    )
    yield port
    stop(process)


def nsupdate_args(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "nsupdate",
        "server": "127.0.0.1",
        "port": port,
        "key_name": "test-update",
        "key_secret": TSIG_SECRET,
        "zones": ["example.org", "acme.example.net"],
        "nameservers": [f"127.0.0.1:{port}"],
        "propagation_timeout": 10,
        **extra,
    }


@needs_knot
def test_nsupdate_publishes_next_to_foreign_values_follows_cname_and_removes_only_ours(
    run_module: RunModule, knot_zones: int
) -> None:
    port = knot_zones
    challenges = {
        "_acme-challenge.mx1.example.org": [OURS],
        "_acme-challenge.www.example.org.": [OURS_TOO],
    }
    args = nsupdate_args(port, challenges=challenges)

    checked = run_module("acme_dns_challenge", args, check_mode=True)
    assert not checked["failed"], checked["msg"]
    assert checked["changed"]
    assert txt_at(port, "_acme-challenge.mx1.example.org.") == {FOREIGN}

    published = run_module("acme_dns_challenge", args)
    assert not published["failed"], published["msg"]
    assert published["changed"]
    assert txt_at(port, "_acme-challenge.mx1.example.org.") == {FOREIGN, OURS}
    # The CNAME is followed: the value is at its target, in the other zone.
    assert txt_at(port, "www.acme.example.net.") == {OURS_TOO}
    targets = {r["name"]: (r["target"], r["zone"]) for r in published["records"]}
    assert targets["_acme-challenge.www.example.org"] == (
        "www.acme.example.net",
        "acme.example.net",
    )
    assert targets["_acme-challenge.mx1.example.org"] == (
        "_acme-challenge.mx1.example.org",
        "example.org",
    )

    again = run_module("acme_dns_challenge", args)
    assert not again["failed"], again["msg"]
    assert not again["changed"]

    removed_check = run_module("acme_dns_challenge", {**args, "state": "absent"}, check_mode=True)
    assert removed_check["changed"]
    assert txt_at(port, "_acme-challenge.mx1.example.org.") == {FOREIGN, OURS}

    removed = run_module("acme_dns_challenge", {**args, "state": "absent"})
    assert not removed["failed"], removed["msg"]
    assert removed["changed"]
    assert txt_at(port, "_acme-challenge.mx1.example.org.") == {FOREIGN}
    assert txt_at(port, "www.acme.example.net.") == set()

    gone = run_module("acme_dns_challenge", {**args, "state": "absent"})
    assert not gone["failed"] and not gone["changed"]


@needs_knot
def test_a_server_without_the_values_fails_the_wait_by_name(
    run_module: RunModule, knot_zones: int, silent_nameserver: str
) -> None:
    port = knot_zones
    args = nsupdate_args(
        port,
        challenges={"_acme-challenge.mx1.example.org": [OURS]},
        nameservers=[f"127.0.0.1:{port}", silent_nameserver],
        propagation_timeout=1.5,
        timeout=0.3,
    )
    result = run_module("acme_dns_challenge", args)
    assert result["failed"]
    assert silent_nameserver in result["msg"]
    assert "not served everywhere" in result["msg"]
    # The primary has the value; the caller removes it (the tls role, in always).
    assert OURS in txt_at(port, "_acme-challenge.mx1.example.org.")


@needs_knot
def test_bad_values_and_unknown_zones_fail_with_a_message(
    run_module: RunModule, knot_zones: int
) -> None:
    port = knot_zones
    bad = run_module(
        "acme_dns_challenge",
        nsupdate_args(port, challenges={"_acme-challenge.mx1.example.org": ['a "quoted" value']}),
    )
    assert bad["failed"] and "not a DNS-01 challenge value" in bad["msg"]

    outside = run_module(
        "acme_dns_challenge",
        nsupdate_args(port, challenges={"_acme-challenge.mx.elsewhere.test": [OURS]}, timeout=1),
    )
    assert outside["failed"]
    assert "elsewhere.test is in none of the zones" in outside["msg"]
    assert txt_at(port, "_acme-challenge.mx1.example.org.") == {FOREIGN}


# -- HTTP APIs ------------------------------------------------------------------------------


def cloudflare_txt(standin: CloudflareStandIn, name: str) -> set[str]:
    return {
        r["content"].strip('"')
        for r in standin.zone_records("example.org")
        if r["type"] == "TXT" and r["name"] == name
    }


def hetzner_txt(standin: HetznerStandIn, name: str) -> set[str]:
    relative = name.removesuffix(".example.org")
    return {
        r["value"].strip('"')
        for r in standin.zone_records("example.org")
        if r["type"] == "TXT" and r["name"] == relative
    }


@pytest.mark.parametrize("provider", ["cloudflare", "hetzner"])
def test_http_providers_add_and_remove_value_by_value(run_module: RunModule, provider: str) -> None:
    standin: CloudflareStandIn | HetznerStandIn
    standin = CloudflareStandIn() if provider == "cloudflare" else HetznerStandIn()
    read = cloudflare_txt if provider == "cloudflare" else hetzner_txt
    name = "_acme-challenge.mx1.example.org"
    with standin:
        standin.add_zone("example.org")
        if provider == "cloudflare":
            standin.seed("example.org", "TXT", name, f'"{FOREIGN}"', ttl=300)
        else:
            standin.seed("example.org", "TXT", "_acme-challenge.mx1", f'"{FOREIGN}"', ttl=300)
        args = {
            "provider": provider,
            "api_token": standin.token,
            "api_url": standin.base_url,
            "zones": ["example.org"],
            "challenges": {name: [OURS, OURS_TOO]},
            # No DNS server serves the stand-in's zone.
            "propagation_timeout": 0,
        }
        published = run_module("acme_dns_challenge", args)
        assert not published["failed"], published["msg"]
        assert published["changed"]
        assert read(standin, name) == {FOREIGN, OURS, OURS_TOO}
        assert standin.token not in json.dumps(published)

        again = run_module("acme_dns_challenge", args)
        assert not again["failed"] and not again["changed"]

        removed = run_module("acme_dns_challenge", {**args, "state": "absent"})
        assert not removed["failed"], removed["msg"]
        assert read(standin, name) == {FOREIGN}

        wrong = run_module("acme_dns_challenge", {**args, "api_token": "wrong-token-abcdef"})
        assert wrong["failed"]
        assert "wrong-token-abcdef" not in wrong["msg"]


def route53_zone(client: Any, zone: str, name: str, ttl: int, value: str = FOREIGN) -> str:
    """A new hosted zone with a foreign TXT ``value`` at ``name``; its id."""
    zone_id = str(
        client.create_hosted_zone(Name=zone + ".", CallerReference=f"{zone}-{time.time()}")[
            "HostedZone"
        ]["Id"]
    )
    foreign = {"Name": name + ".", "Type": "TXT", "TTL": ttl}
    foreign["ResourceRecords"] = [{"Value": f'"{value}"'}]
    change = {"Action": "CREATE", "ResourceRecordSet": foreign}
    client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [change]})
    return zone_id


def route53_txt(client: Any, zone_id: str, name: str) -> tuple[set[str], int | None]:
    """The TXT values at ``name`` and their TTL."""
    for rrset in client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]:
        if rrset["Name"] == name + "." and rrset["Type"] == "TXT":
            return {r["Value"].strip('"') for r in rrset["ResourceRecords"]}, rrset["TTL"]
    return set(), None


def drop_route53_zone(client: Any, zone_id: str) -> None:
    """Empty and delete a hosted zone (moto is shared by the test module)."""
    sets = client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    changes = [{"Action": "DELETE", "ResourceRecordSet": s} for s in sets if s["Type"] == "TXT"]
    if changes:
        client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    client.delete_hosted_zone(Id=zone_id)


def test_route53_adds_to_and_removes_from_the_record_set(
    run_module: RunModule,
    route53: Any,  # noqa: F811
    moto_endpoint: str,  # noqa: F811
) -> None:
    name = "_acme-challenge.mx1.acme-test.example"
    zone_id = route53_zone(route53, "acme-test.example", name, 300)

    def values() -> tuple[set[str], int | None]:
        return route53_txt(route53, zone_id, name)

    args = {
        "provider": "route53",
        "endpoint_url": moto_endpoint,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "zones": ["acme-test.example"],
        "challenges": {name: [OURS]},
        "propagation_timeout": 0,
    }
    published = run_module("acme_dns_challenge", args)
    assert not published["failed"], published["msg"]
    # The foreign value and its TTL stay in the set written back.
    assert values() == ({FOREIGN, OURS}, 300)
    assert SECRET_KEY not in json.dumps(published)

    removed = run_module("acme_dns_challenge", {**args, "state": "absent"})
    assert not removed["failed"], removed["msg"]
    assert values() == ({FOREIGN}, 300)
    drop_route53_zone(route53, zone_id)
