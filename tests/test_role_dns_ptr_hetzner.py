"""PTR records through the Hetzner Cloud API (dns_records__ptr_provider: hetzner; issue 19 §2).

The dns_records role's ptr_hetzner.yml runs ``hetzner.hcloud.rdns`` from the
controller against a local stand-in of the Cloud API's servers
(tests/standins/hcloud.py), with the token vaulted and the output at ``-vvv``
(helpers from tests/test_secrets.py):

- a first run sets the PTR of the server's IPv4 address and of an IPv6
  address in its /64 to the host name; a second run changes nothing;
- ``--check`` on a fresh server reports the change and sends none;
- a wrong token fails with the API's answer; a server name that does not
  exist fails naming it; no PTR changes and the token is never printed;
- without a token the role says which variable to set and calls nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.standins.hcloud import HcloudStandIn
from tests.test_secrets import assert_no_secret, run, write_inventory

HOST = "mx1.example.org"
IPV4 = "203.0.113.10"
IPV6 = "2001:db8:1::25"

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
        "dns_records__hostname": HOST,
        "dns_records__ipv4": [IPV4],
        "dns_records__ipv6": [IPV6],
        **extra,
    }


def changes(api: HcloudStandIn) -> int:
    return len(api.calls("POST", "/servers/"))


def test_ptr_records_are_set_once(tmp_path: Path, hcloud: tuple[HcloudStandIn, int]) -> None:
    api, server_id = hcloud
    inventory = write_inventory(tmp_path, {"vault_hcloud": api.token})

    checked = run(PLAYBOOK, tmp_path, inventory, "--check", extra_vars=role_vars(api))
    assert checked.rc == 0, checked.text[-4000:]
    assert checked.recap()["changed"] >= 1
    assert changes(api) == 0
    assert api.ptr(server_id, IPV4) == "static.10.113.0.203.clients.your-server.de"
    assert_no_secret(checked, [api.token])

    first = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert first.rc == 0, first.text[-4000:]
    assert api.ptr(server_id, IPV4) == HOST
    assert api.ptr(server_id, IPV6) == HOST
    assert changes(api) == 2
    assert f"{IPV4} PTR {HOST}" in first.text
    assert_no_secret(first, [api.token])

    second = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert second.rc == 0, second.text[-4000:]
    assert second.recap()["changed"] == 0
    assert changes(api) == 2


def test_a_wrong_token_or_server_fails_clearly(
    tmp_path: Path, hcloud: tuple[HcloudStandIn, int]
) -> None:
    api, server_id = hcloud
    wrong = "hcloud-wrong-token-abcdef0123456789"
    inventory = write_inventory(tmp_path, {"vault_hcloud": wrong})
    refused = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert refused.rc != 0
    assert "Setting the PTR records in Hetzner Cloud (server mx1) failed" in refused.text
    assert "unable to authenticate" in refused.text
    assert_no_secret(refused, [wrong, api.token])

    inventory = write_inventory(tmp_path, {"vault_hcloud": api.token})
    unknown = run(
        PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api, dns_records__hcloud_server="mx9")
    )
    assert unknown.rc != 0
    assert "resource (server) does not exist: mx9" in unknown.text
    assert_no_secret(unknown, [api.token])
    assert changes(api) == 0
    assert api.ptr(server_id, IPV6) is None


def test_no_token_says_what_to_set(tmp_path: Path, hcloud: tuple[HcloudStandIn, int]) -> None:
    api, _ = hcloud
    inventory = write_inventory(tmp_path, {"vault_hcloud": ""})
    result = run(PLAYBOOK, tmp_path, inventory, extra_vars=role_vars(api))
    assert result.rc != 0
    assert "set dns_records__hcloud_api_token" in result.text
    assert api.calls() == []
