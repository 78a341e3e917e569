"""library/dns_rrset_sync.py and library/dns_rrset_diff.py, in-process.

- the SPF and DMARC merges keep foreign mechanisms, addresses and tags, drop
  what this host published before and no longer wants, and never give two
  v=spf1 values (RFC 7208 3.2);
- durations parse, wrong ones are refused;
- in check mode against Knot the module reports the exact record lines it
  would add and remove, returns the state it would keep, and sends nothing;
- an update the server refuses fails with the server's answer;
- dns_rrset_diff hands the diff and the changed status on.

The role-level behaviour (Knot before and after, idempotence, DKIM retirement)
is in tests/test_role_dns_records.py, Route 53 in tests/test_dns_route53.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import dns.message
import dns.query
import pytest

needs_knot = pytest.mark.skipif(not shutil.which("knotd"), reason="needs knotd (package knot)")


@pytest.fixture
def sync(library_module: Callable[[str], Any]) -> Any:
    return library_module("dns_rrset_sync")


@pytest.mark.parametrize(
    ("ours", "published", "previous", "expected"),
    [
        pytest.param(
            "v=spf1 mx -all",
            ["v=spf1 include:_spf.example.org ~all"],
            [],
            "v=spf1 mx include:_spf.example.org -all",
            id="foreign-include-kept-our-all-wins",
        ),
        pytest.param(
            "v=spf1 mx -all",
            ["v=spf1 mx include:_spf.gone.example include:_spf.example.org -all"],
            ["mx", "include:_spf.gone.example", "-all"],
            "v=spf1 mx include:_spf.example.org -all",
            id="our-old-include-dropped",
        ),
        pytest.param(
            "v=spf1 mx ip4:192.0.2.10 -all",
            ["v=spf1 ~mx a redirect=_spf.example.org", "v=spf1 exp=explain.example.org -all"],
            [],
            "v=spf1 mx ip4:192.0.2.10 a exp=explain.example.org -all",
            id="two-values-become-one-redirect-gives-way",
        ),
        pytest.param("v=spf1 mx -all", [], [], "v=spf1 mx -all", id="nothing-published"),
    ],
)
def test_merge_spf(
    sync: Any, ours: str, published: list[str], previous: list[str], expected: str
) -> None:
    merged, own = sync.merge_spf(ours, published, previous)
    assert merged == expected
    assert own == ours.split()[1:]


def test_merge_dmarc(sync: Any) -> None:
    merged, own = sync.merge_dmarc(
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org",
        ["v=DMARC1; p=none; rua=mailto:reports@vendor.example; ruf=mailto:f@vendor.example"],
        [],
    )
    assert merged == (
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org,mailto:reports@vendor.example;"
        " ruf=mailto:f@vendor.example"
    )
    assert own == ["p=quarantine", "rua=mailto:dmarc@example.org"]
    # An address this host published before and no longer wants goes.
    merged, _ = sync.merge_dmarc(
        "v=DMARC1; p=reject",
        ["v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org,mailto:reports@vendor.example"],
        own,
    )
    assert merged == "v=DMARC1; p=reject; rua=mailto:reports@vendor.example"


def test_durations(sync: Any) -> None:
    assert sync.parse_duration("7d") == 7 * 86400
    assert sync.parse_duration("90") == 90
    assert sync.parse_duration("2w") == 14 * 86400
    assert sync.parse_duration(" 30m ") == 1800
    with pytest.raises(sync.PlanError, match="not a duration"):
        sync.parse_duration("a week")


def records(values: dict[tuple[str, str, str], list[str]]) -> list[dict[str, Any]]:
    return [
        {"zone": "example.org", "name": name, "type": rdtype, "kind": kind, "values": vals}
        for (name, rdtype, kind), vals in values.items()
    ]


@needs_knot
def test_check_mode_plans_the_record_lines_and_sends_nothing(
    knot: Callable[..., Any], run_module: Callable[..., dict[str, Any]]
) -> None:
    server = knot(
        {
            "example.org": [
                '@ TXT "google-site-verification=abc"',
                '@ TXT "v=spf1 include:_spf.example.org ~all"',
                '_dmarc TXT "v=DMARC1; p=none; rua=mailto:reports@vendor.example"',
                "@ MX 20 backup.example.net.",
            ]
        }
    )
    wanted = records(
        {
            ("example.org", "TXT", "spf"): ['"v=spf1 mx -all"'],
            ("example.org", "MX", "values"): ["10 mx1.example.org."],
            ("_dmarc.example.org", "TXT", "dmarc"): ['"v=DMARC1; p=reject"'],
        }
    )
    args = {
        "provider": "nsupdate",
        "server": "127.0.0.1",
        "port": server.port,
        "records": wanted,
        "now": "2026-12-01T00:00:00Z",
    }
    result = run_module("dns_rrset_sync", args, check_mode=True)
    assert not result["failed"], result
    assert result["changed"]
    by_set = {(c["name"], c["type"]): c for c in result["changes"]}
    assert by_set[("example.org", "TXT")]["removed"] == [
        'example.org. 60 IN TXT "v=spf1 include:_spf.example.org ~all"'
    ]
    assert by_set[("example.org", "TXT")]["added"] == [
        'example.org. 60 IN TXT "v=spf1 mx include:_spf.example.org -all"'
    ]
    assert by_set[("example.org", "MX")] == {
        "name": "example.org",
        "type": "MX",
        "added": ["example.org. 60 IN MX 10 mx1.example.org."],
        "removed": [],
    }
    # The merged DMARC value is all the set holds now: it takes our TTL.
    assert by_set[("_dmarc.example.org", "TXT")]["added"] == [
        '_dmarc.example.org. 3600 IN TXT "v=DMARC1; p=reject; rua=mailto:reports@vendor.example"'
    ]
    assert "google-site-verification" not in "".join(
        line for change in result["changes"] for line in change["added"] + change["removed"]
    )
    assert 'example.org. 60 IN TXT "google-site-verification=abc"' in result["diff"]["after"]
    # The state lists our values only, with the time given.
    owned = {(r["name"], r["type"], r["value"], r["since"]) for r in result["state"]["records"]}
    assert ("example.org", "MX", "10 mx1.example.org.", "2026-12-01T00:00:00Z") in owned
    assert all("google" not in value and "20 backup" not in value for _, _, value, _ in owned)
    assert result["state"]["terms"]["example.org spf"] == ["mx", "-all"]
    # Nothing was sent.
    answer = dns.query.tcp(
        dns.message.make_query("example.org.", "MX"), "127.0.0.1", port=server.port
    )
    assert [item.to_text() for item in answer.answer[0]] == ["20 backup.example.net."]

    # Not in check mode: this Knot takes no updates, and the module says so.
    result = run_module("dns_rrset_sync", args)
    assert result["failed"]
    assert (
        "refused the update of example.org: REFUSED" in result["msg"] or "NOTAUTH" in result["msg"]
    )


def test_diff_module_hands_the_diff_on(run_module: Callable[..., dict[str, Any]]) -> None:
    diff = {"before": 'a. 60 IN TXT "x"\n', "after": ""}
    result = run_module(
        "dns_rrset_diff", {"result": {"changes": [{"name": "a", "type": "TXT"}], "diff": diff}}
    )
    assert result["changed"] and result["diff"] == diff
    result = run_module("dns_rrset_diff", {"result": {"changes": [], "diff": {}}})
    assert not result["changed"]
    result = run_module("dns_rrset_diff", {"result": {"msg": "boom"}})
    assert result["failed"]
