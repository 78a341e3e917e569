"""PTR records through the Hetzner Cloud API (dns_records__ptr_provider: hetzner; issue 19 §2).

The dns_records role's ptr_hetzner.yml runs ``hetzner.hcloud.rdns`` from the
controller against a local stand-in of the Cloud API's servers
(tests/standins/hcloud.py). Most tests run only that task file, with the
token vaulted and the output at ``-vvv --diff`` (helpers from
tests/test_secrets.py); the last runs the whole role:

- ``--check`` on a fresh server shows the names before and after and sends
  no change; a run sets the PTR of the server's IPv4 address and of an IPv6
  address in its /64 to the host name (waiting for the API's actions); a
  second run changes nothing;
- an address that already has the name is left alone;
- a wrong token fails with the API's answer, a server name that does not
  exist fails naming it, an address the server does not have fails naming
  it; nothing changes and the token is never printed;
- without a token the role says which variable to set and calls nothing;
- the whole role (zone file provider, checks against Knot): the PTR step runs
  before the check, whose PTR result is still reported, and the role does not
  tell to ask the hosting provider for the record; the server's name in Hetzner
  Cloud defaults to the inventory name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.standins.hcloud import HcloudStandIn
from tests.test_role_dns_records import needs_knot
from tests.test_roles import failures, run_playbook, task_results
from tests.test_secrets import PYTHON, assert_no_secret, run, write_inventory

HOST = "mx1.example.org"
IPV4 = "203.0.113.10"
IPV6 = "2001:db8:1::25"
DEFAULT_IPV4_PTR = "static.10.113.0.203.clients.your-server.de"

PLAYBOOK = """
- name: Set the PTR records
  hosts: all
  gather_facts: false
  tasks:
    - name: Run the PTR step of dns_records
      ansible.builtin.include_role:
        name: dns_records
        tasks_from: ptr_hetzner.yml
"""


@pytest.fixture
def hcloud() -> Iterator[tuple[HcloudStandIn, int]]:
    with HcloudStandIn() as api:
        server_id = api.add_server("mx1", IPV4, "2001:db8:1::/64")
        yield api, server_id


def role_vars(api: HcloudStandIn, **extra: Any) -> dict[str, Any]:
    return {
        "dns_records__ptr_provider": "hetzner",
        "dns_records__hcloud_api_token": "{{ vault_hcloud }}",
        "dns_records__hcloud_api_endpoint": api.base_url,
        "dns_records__hcloud_server": "mx1",
        # A final dot is dropped: the API takes the name without it.
        "dns_records__hostname": HOST + ".",
        "dns_records__ipv4": [IPV4],
        "dns_records__ipv6": [IPV6],
        **extra,
    }


def changes_sent(api: HcloudStandIn) -> list[dict[str, Any]]:
    """The bodies of the change_dns_ptr requests the stand-in received."""
    return [r.body for r in api.calls("POST") if r.path.endswith("/actions/change_dns_ptr")]


def test_check_mode_then_a_run_set_the_ptr_records_once(
    tmp_path: Path, hcloud: tuple[HcloudStandIn, int]
) -> None:
    api, server_id = hcloud
    inventory = write_inventory(tmp_path, {"vault_hcloud": api.token})

    checked = run(PLAYBOOK, tmp_path, inventory, "--check", extra_vars=role_vars(api))
    assert checked.rc == 0, checked.text[-4000:]
    assert checked.recap()["changed"] >= 1
    assert changes_sent(api) == []
    assert api.ptr(server_id, IPV4) == DEFAULT_IPV4_PTR
    assert api.ptr(server_id, IPV6) is None
    # The diff: the name in place now, and the one the run would set.
    assert f"-{IPV4} PTR {DEFAULT_IPV4_PTR}\n" in checked.text
    assert f"+{IPV4} PTR {HOST}\n" in checked.text
    assert f"+{IPV6} PTR {HOST}\n" in checked.text
    assert f"{IPV6} PTR {HOST}: would be set, now none" in checked.text
    assert_no_secret(checked, [api.token])

    first = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert first.rc == 0, first.text[-4000:]
    assert api.ptr(server_id, IPV4) == HOST
    assert api.ptr(server_id, IPV6) == HOST
    assert sorted(changes_sent(api), key=str) == sorted(
        [{"ip": IPV4, "dns_ptr": HOST}, {"ip": IPV6, "dns_ptr": HOST}], key=str
    )
    # The module waited for each action (the stand-in applies it when it is read).
    assert len(api.calls("GET", "/actions/")) == 2
    assert f"{IPV4} PTR {HOST}: set, was {DEFAULT_IPV4_PTR}" in first.text
    assert_no_secret(first, [api.token])

    second = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert second.rc == 0, second.text[-4000:]
    assert second.recap()["changed"] == 0
    assert len(changes_sent(api)) == 2
    assert f"{IPV6} PTR {HOST}: unchanged" in second.text
    assert_no_secret(second, [api.token])


def test_only_the_address_with_another_name_is_changed(
    tmp_path: Path, hcloud: tuple[HcloudStandIn, int]
) -> None:
    api, server_id = hcloud
    api.servers[server_id]["public_net"]["ipv4"]["dns_ptr"] = HOST
    inventory = write_inventory(tmp_path, {"vault_hcloud": api.token})
    result = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert result.rc == 0, result.text[-4000:]
    assert changes_sent(api) == [{"ip": IPV6, "dns_ptr": HOST}]
    assert api.ptr(server_id, IPV6) == HOST


def test_a_wrong_token_server_or_address_fails_clearly(
    tmp_path: Path, hcloud: tuple[HcloudStandIn, int]
) -> None:
    api, server_id = hcloud
    wrong = "hcloud-wrong-token-abcdef0123456789"
    inventory = write_inventory(tmp_path, {"vault_hcloud": wrong})
    refused = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert refused.rc != 0
    assert (
        'Reading the PTR records of the Hetzner Cloud server "mx1" failed: '
        f"unable to authenticate (unauthorized) ({IPV4}, {IPV6})"
    ) in refused.text
    assert_no_secret(refused, [wrong, api.token])

    inventory = write_inventory(tmp_path, {"vault_hcloud": api.token})
    unknown = run(
        PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api, dns_records__hcloud_server="mx9")
    )
    assert unknown.rc != 0
    assert 'server "mx9" failed: resource (server) does not exist: mx9' in unknown.text
    assert_no_secret(unknown, [api.token])

    # One address the server does not have: nothing is changed, not even the other.
    foreign = run(
        PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api, dns_records__ipv4=["192.0.2.99"])
    )
    assert foreign.rc != 0
    assert "The selected server does not have this IP address (192.0.2.99)" in foreign.text
    assert_no_secret(foreign, [api.token])

    assert changes_sent(api) == []
    assert api.ptr(server_id, IPV4) == DEFAULT_IPV4_PTR
    assert api.ptr(server_id, IPV6) is None


def test_no_token_says_what_to_set(tmp_path: Path, hcloud: tuple[HcloudStandIn, int]) -> None:
    api, _ = hcloud
    inventory = write_inventory(tmp_path, {"vault_hcloud": ""})
    result = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert result.rc != 0
    assert "set dns_records__hcloud_api_token" in result.text
    assert api.calls() == []


ROLE_PLAYBOOK = """
- name: Publish the records of mx1.example.org and set its PTR records
  hosts: mx1.example.org
  gather_facts: false
  roles:
    - dns_records
"""


@needs_knot
def test_the_role_sets_ptr_records_and_still_checks_them(tmp_path: Path, knot: Any) -> None:
    # Knot serves the reverse zone without the PTR record: the stand-in cannot
    # publish into it, so the check must still report the record missing.
    server = knot({"example.org": [f"mx1 A {IPV4}"], "113.0.203.in-addr.arpa": []})
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"{HOST} ansible_connection=local ansible_python_interpreter={PYTHON}\n")
    with HcloudStandIn() as api:
        # Named like the inventory host: dns_records__hcloud_server's default.
        server_id = api.add_server(HOST, IPV4, "2001:db8:1::/64")
        variables = {
            "dns_records__provider": "zonefile",
            "dns_records__zonefile_dir": str(tmp_path / "zones"),
            "dns_records__domains": ["example.org"],
            "dns_records__hostname": HOST,
            "dns_records__dkim_records": [],
            "dns_records__ipv4": [IPV4],
            "dns_records__check_nameservers": [server.address],
            "dns_records__ptr_provider": "hetzner",
            "dns_records__hcloud_api_token": api.token,
            "dns_records__hcloud_api_endpoint": api.base_url,
        }
        rc, output, stderr = run_playbook(
            ROLE_PLAYBOOK, tmp_path, "-i", str(inventory), extra_vars=variables
        )
        assert rc == 0, failures(output) or stderr
        assert api.ptr(server_id, IPV4) == HOST
    names = [name for name, _, _ in task_results(output)]
    assert names.index("dns_records : Set the PTR records in Hetzner Cloud") < names.index(
        "dns_records : Check the published records"
    )
    [check] = [r for n, _, r in task_results(output) if n.endswith("Check the published records")]
    ptr = [c for c in check["results"][0]["results"] if c["check"] == "ptr"]
    # Checked all the same: Knot has no PTR record (the stand-in is not Knot).
    assert [(c["name"], c["status"]) for c in ptr] == [("10.113.0.203.in-addr.arpa", "fail")]
    # A failing PTR check, yet no request to ask the hosting provider.
    [asked] = [
        result
        for name, _, result in task_results(output)
        if name == "dns_records : Say which PTR records to ask the hosting provider for"
    ]
    assert all(item.get("skipped") for item in asked["results"]), asked
    assert "Ask the hosting provider" not in str(asked)
