"""The dns_records role with the Cloudflare and Hetzner DNS providers, against local stand-ins.

Each test starts a stand-in of the provider's HTTP API (tests/standins/) in
this process, writes a small playbook and runs ``ansible-playbook`` on the
controller (helpers from tests/test_roles.py, as tests/test_role_dns_records.py
does for nsupdate against Knot). The role's dns_rrset_sync task reaches the
stand-in through ``dns_records__<provider>_api_url``. For each provider:

- ownership (issue 19 §2): on a zone that already has foreign TXT values at
  the apex and a foreign SPF with another include, ``--check --diff`` shows
  the record lines added and removed and sends nothing but reads; the run
  keeps the foreign values and merges the SPF; a second run changes nothing
  and writes nothing; a new TTL is set on the record sets that hold only our
  values (set_ttl) and not on the shared apex TXT set; a new CNAME target
  replaces the old one (delete, then add);
- secrets: at -vvv the API token does not appear in the output, when
  publishing works and when it fails with a wrong token (whose message says
  the provider refused the authentication).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible.module_utils  # type: ignore[import-untyped]
import pytest

from tests.standins.cloudflare import CloudflareStandIn
from tests.standins.hetzner import HetznerStandIn
from tests.test_roles import ROOT, changed_tasks, failures, run_playbook, task_results

# What ansible.cfg's module_utils= does when Ansible packs a module (the stand-ins
# are read back with the same clients the module uses).
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

from ansible.module_utils.dns_cloudflare import (  # type: ignore[import-untyped]
    CloudflareClient,
)
from ansible.module_utils.dns_hetzner import HetznerClient  # type: ignore[import-untyped]

PYTHON = str(ROOT / ".venv" / "bin" / "python")
ZONE = "example.org"
APEX = "example.org."
FOREIGN_SPF = '"v=spf1 include:_spf.example.org ~all"'
DKIM = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
MERGED = f'{APEX} 60 IN TXT "v=spf1 mx include:_spf.other.example include:_spf.example.org -all"'
FOREIGN = {
    f'{APEX} 60 IN TXT "google-site-verification=abc"',
    f'{APEX} 60 IN TXT "MS=ms123"',
}
PLAYBOOK = """
- name: Publish the records of mx1.example.org through an HTTP API
  hosts: mx1.example.org
  gather_facts: false
  roles:
    - dns_records
"""
# Every record set the tests look at, before and after each run.
WATCHED = [
    (APEX, "TXT"),
    (APEX, "MX"),
    ("_dmarc.example.org.", "TXT"),
    ("old._domainkey.example.org.", "TXT"),
    ("autoconfig.example.org.", "CNAME"),
    ("_submission._tcp.example.org.", "SRV"),
]
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# provider: (its stand-in, its client).
PROVIDERS: dict[str, tuple[Any, Any]] = {
    "cloudflare": (CloudflareStandIn, CloudflareClient),
    "hetzner": (HetznerStandIn, HetznerClient),
}


@pytest.fixture(params=sorted(PROVIDERS))
def api(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The provider's stand-in with the zone example.org and foreign apex TXT values."""
    standin_class, _ = PROVIDERS[request.param]
    with standin_class() as standin:
        # Which provider this is, for the helpers below.
        standin.provider = request.param
        standin.add_zone(ZONE)
        apex = ZONE if request.param == "cloudflare" else "@"
        standin.seed(
            ZONE,
            "A",
            "mx1" if request.param == "hetzner" else "mx1.example.org",
            "192.0.2.10",
            ttl=60,
        )
        for value in ('"google-site-verification=abc"', '"MS=ms123"', FOREIGN_SPF):
            standin.seed(ZONE, "TXT", apex, value, ttl=60)
        yield standin


def zone_now(api: Any) -> dict[tuple[str, str], set[str]]:
    """The watched record sets, read with the provider's client, as ``NAME TTL IN TYPE DATA``."""
    client = PROVIDERS[api.provider][1](api.token, api.base_url, attempts=1)
    return {
        (name, rtype): {
            f"{name} {record.ttl} IN {rtype} {record.value}"
            for record in client.rrset(ZONE, name, rtype)
        }
        for name, rtype in WATCHED
    }


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


def role_variables(api: Any, tmp_path: Path, token: str | None = None) -> dict[str, Any]:
    return {
        "dns_records__provider": api.provider,
        f"dns_records__{api.provider}_api_token": api.token if token is None else token,
        f"dns_records__{api.provider}_api_url": api.base_url,
        "dns_records__state_dir": str(tmp_path / "state"),
        "dns_records__domains": [ZONE],
        "dns_records__hostname": "mx1.example.org",
        "dns_records__ttl": 300,
        "dns_records__spf_extra": ["include:_spf.other.example"],
        "dns_records__dkim_records": [{"name": "old._domainkey.example.org", "value": DKIM}],
        # No DNS server answers for the stand-in's zone: nothing to check against.
        "dns_records__check": False,
    }


def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.ini"
    path.write_text(
        f"mx1.example.org ansible_connection=local ansible_python_interpreter={PYTHON}\n"
    )
    return path


def test_dns_records_keep_what_others_published(api: Any, tmp_path: Path) -> None:
    variables = role_variables(api, tmp_path)
    state_file = tmp_path / "state" / "state.json"
    args = ("-i", str(inventory(tmp_path)))

    def run(*more: str) -> dict[str, Any]:
        rc, output, stderr = run_playbook(PLAYBOOK, tmp_path, *args, *more, extra_vars=variables)
        assert rc == 0, failures(output) or stderr
        return output

    before = zone_now(api)
    assert before[(APEX, "TXT")] == FOREIGN | {f"{APEX} 60 IN TXT {FOREIGN_SPF}"}
    records_before = api.zone_records(ZONE)

    # --check --diff: the exact record lines, and nothing but reads at the provider.
    output = run("--check", "--diff")
    removed, added = diff_lines(show_task(output))
    assert removed == {f"{APEX} 60 IN TXT {FOREIGN_SPF}"}
    assert MERGED in added
    assert {
        f"{APEX} 300 IN MX 10 mx1.example.org.",
        '_dmarc.example.org. 300 IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.org"',
        f'old._domainkey.example.org. 300 IN TXT "{DKIM}"',
        "autoconfig.example.org. 300 IN CNAME mx1.example.org.",
    } <= added
    assert not FOREIGN & (removed | added)
    assert [r.method for r in api.requests if r.method in WRITES] == []
    assert api.zone_records(ZONE) == records_before
    assert not state_file.exists()

    # The run: foreign values kept, SPF merged, our records published.
    output = run()
    after = zone_now(api)
    assert after[(APEX, "TXT")] == FOREIGN | {MERGED}
    assert after[(APEX, "MX")] == {f"{APEX} 300 IN MX 10 mx1.example.org."}
    assert after[("old._domainkey.example.org.", "TXT")] == {
        f'old._domainkey.example.org. 300 IN TXT "{DKIM}"'
    }
    assert after[("autoconfig.example.org.", "CNAME")] == {
        "autoconfig.example.org. 300 IN CNAME mx1.example.org."
    }
    assert after[("_submission._tcp.example.org.", "SRV")]
    state = json.loads(state_file.read_text())
    owned = {(r["name"], r["type"], r["value"]) for r in state["records"]}
    assert (ZONE, "TXT", MERGED.split(" TXT ", 1)[1]) in owned
    assert not any("google" in value or "MS=" in value for _, _, value in owned)

    # Idempotent: nothing changes and nothing is written.
    writes = len(api.calls("POST") + api.calls("PUT") + api.calls("PATCH") + api.calls("DELETE"))
    assert changed_tasks(run()) == []
    output = run("--check", "--diff")
    assert changed_tasks(output) == []
    assert diff_lines(show_task(output)) == (set(), set())
    assert (
        len(api.calls("POST") + api.calls("PUT") + api.calls("PATCH") + api.calls("DELETE"))
        == writes
    )
    assert zone_now(api) == after

    # A new TTL: set on the record sets that hold only our values; the apex TXT set,
    # shared with others, keeps its TTL. A new CNAME target replaces the old one.
    variables["dns_records__ttl"] = 600
    variables["dns_records__hostname"] = "mx2.example.org"
    variables["dns_records__mx"] = [{"host": "mx1.example.org", "priority": 10}]
    run()
    changed = zone_now(api)
    assert changed[(APEX, "MX")] == {f"{APEX} 600 IN MX 10 mx1.example.org."}
    assert changed[("old._domainkey.example.org.", "TXT")] == {
        f'old._domainkey.example.org. 600 IN TXT "{DKIM}"'
    }
    assert changed[("autoconfig.example.org.", "CNAME")] == {
        "autoconfig.example.org. 600 IN CNAME mx2.example.org."
    }
    assert changed[(APEX, "TXT")] >= FOREIGN
    assert {line.split()[1] for line in changed[(APEX, "TXT")]} == {"60"}
    assert changed_tasks(run()) == []


def test_api_token_stays_out_of_the_output(api: Any, tmp_path: Path) -> None:
    """At -vvv the API token does not appear in the output, when publishing works and
    when the provider refuses a wrong token (and the message says so)."""
    hosts = inventory(tmp_path)
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_NOCOLOR": "1",
    }
    wrong = f"wrong-{api.provider}-token-that-must-not-leak"
    refused = {
        "cloudflare": "Cloudflare: Authentication error (10000)",
        "hetzner": "Hetzner DNS: Invalid authentication credentials (HTTP 401)",
    }[api.provider]
    for token, check in [
        (api.token, ("--check", "--diff")),
        (api.token, ()),
        (wrong, ("--check", "--diff")),
        (wrong, ()),
    ]:
        command = [shutil.which("ansible-playbook") or "ansible-playbook", str(playbook)]
        command += ["-i", str(hosts), "-vvv", *check]
        command += ["--extra-vars", json.dumps(role_variables(api, tmp_path, token))]
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
        )
        text = result.stdout + result.stderr
        assert api.token not in text and wrong not in text, (token == wrong, check)
        if token == api.token:
            assert result.returncode == 0, text[-3000:]
            assert "Show the record changes" in text
        else:
            assert result.returncode != 0, f"{check}: expected a failure"
            assert "Publishing the DNS records failed" in text, text[-3000:]
            assert refused in text, text[-3000:]
    # The token went to the provider in its header only.
    header = "authorization" if api.provider == "cloudflare" else "auth-api-token"
    sent = {r.headers.get(header, "") for r in api.requests}
    assert any(api.token in value for value in sent)
    assert any(wrong in value for value in sent)


# -- the module alone ------------------------------------------------------------------------


def test_module_needs_a_token(run_module: Any) -> None:
    records = [{"zone": ZONE, "name": ZONE, "type": "MX", "values": ["10 mx1.example.org."]}]
    for provider in sorted(PROVIDERS):
        result = run_module("dns_rrset_sync", {"provider": provider, "records": records})
        assert result["failed"]
        assert result["msg"] == f"api_token is required with provider {provider}"


def test_module_fails_with_the_providers_message(api: Any, run_module: Any) -> None:
    """A refusal of the provider (here: a zone it does not have) is a clear failure
    without the token, not a traceback; nothing is written."""
    records = [{"zone": "example.net", "name": "example.net", "type": "MX", "values": ["10 mx."]}]
    args = {
        "provider": api.provider,
        "api_token": api.token,
        "api_url": api.base_url,
        "records": records,
    }
    result = run_module("dns_rrset_sync", args)
    assert result["failed"]
    assert "example.net" in result["msg"]
    assert result["msg"].startswith(("Cloudflare:", "Hetzner DNS:"))
    assert api.token not in result["msg"]
    assert [r for r in api.requests if r.method in WRITES] == []
