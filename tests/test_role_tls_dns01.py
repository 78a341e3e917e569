"""The tls role's ACME DNS-01 with every provider, against Debian's pebble (issue 19 §2).

pebble (the ACME test CA) runs on 127.0.0.1 and validates DNS-01 by asking
knotd (``-dnsserver``); the role runs on localhost with its secrets vaulted
and at ``-vvv`` (helpers from tests/test_secrets.py):

- nsupdate: the challenge value goes to Knot by RFC 2136; pebble validates
  and issues; afterwards ``_acme-challenge`` holds only the value someone else
  had put there before;
- cloudflare, hetzner (the local stand-ins of their APIs) and route53 (moto):
  these serve no DNS, so a mirror thread copies the ``_acme-challenge`` TXT
  values from the API into Knot every 0.2 s, as the provider's nameservers
  would; the role waits until Knot answers with them (what
  tls__acme_dns_nameservers is for), pebble validates, the certificate is
  issued, our value is deleted through the API and the foreign one kept.

Every run is checked for the provider's secret in its output.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.tsigkeyring
import dns.update
import pytest
import trustme

from tests.conftest import free_port
from tests.standins.cloudflare import CloudflareStandIn
from tests.standins.hetzner import HetznerStandIn
from tests.test_acme_dns_challenge import drop_route53_zone, route53_txt, route53_zone
from tests.test_dns_route53 import ACCESS_KEY, SECRET_KEY, moto_endpoint, route53  # noqa: F401
from tests.test_role_dns_records import TSIG_SECRET, start_knot, stop
from tests.test_secrets import assert_no_secret, run, write_inventory

needs_tools = pytest.mark.skipif(
    not (shutil.which("knotd") and shutil.which("pebble")),
    reason="needs knotd and pebble (packages knot and pebble; make deps installs them)",
)

HOST = "mx1.example.org"
CHALLENGE = f"_acme-challenge.{HOST}"
FOREIGN = "another-acme-client-value-0123456789abcdef"

PLAYBOOK = """
- name: Get a certificate with ACME DNS-01
  hosts: all
  gather_facts: false
  roles:
    - tls
"""


# -- Knot, pebble ------------------------------------------------------------------------------


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[int]:
    process, port = start_knot(
        tmp_path / "knot", {"example.org": [f'_acme-challenge.mx1 60 TXT "{FOREIGN}"']}
    )
    yield port
    stop(process)


def knot_txt(port: int, name: str) -> set[str]:
    query = dns.message.make_query(name + ".", "TXT")
    answer = dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    return {item.to_text().strip('"') for rrset in answer.answer for item in rrset}


def knot_update(port: int, name: str, added: set[str], removed: set[str]) -> None:
    keyring = dns.tsigkeyring.from_text({"test-update": TSIG_SECRET})
    update = dns.update.UpdateMessage("example.org.", keyring=keyring, keyalgorithm="hmac-sha256.")
    for value in removed:
        update.delete(name + ".", dns.rdata.from_text(dns.rdataclass.IN, "TXT", f'"{value}"'))
    for value in added:
        update.add(name + ".", 60, dns.rdata.from_text(dns.rdataclass.IN, "TXT", f'"{value}"'))
    dns.query.tcp(update, "127.0.0.1", port=port, timeout=5)


@pytest.fixture
def pebble(tmp_path: Path, knot: int) -> Iterator[dict[str, Any]]:
    """pebble on 127.0.0.1 validating through Knot: its directory URL and CA file."""
    root = tmp_path / "pebble"
    root.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    port, management = free_port(), free_port()
    (root / "config.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{management}",
                    "certificate": str(root / "cert.pem"),
                    "privateKey": str(root / "key.pem"),
                    "httpPort": free_port(),
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",
    }
    log = (root / "pebble.log").open("ab")
    process = subprocess.Popen(
        ["pebble", "-config", str(root / "config.json"), "-dnsserver", f"127.0.0.1:{knot}"],
        stdout=log,
        stderr=log,
        env=env,
    )
    context = ssl.create_default_context(cafile=str(root / "ca.pem"))
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, (root / "pebble.log").read_text()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/dir", context=context, timeout=2)
            break
        assert time.monotonic() < deadline, (root / "pebble.log").read_text()
        time.sleep(0.2)
    try:
        yield {
            "directory": f"https://127.0.0.1:{port}/dir",
            "ca": str(root / "ca.pem"),
            "log": root / "pebble.log",
        }
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


class Mirror:
    """Copies the challenge's TXT values from a provider's API into Knot, as its
    nameservers would, every 0.2 s."""

    def __init__(self, port: int, read: Callable[[], set[str]]) -> None:
        self.port, self.read = port, read
        self.stopping = threading.Event()
        self.copied: set[str] = set()
        self.seen: set[str] = set()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stopping.wait(0.2):
            with contextlib.suppress(Exception):
                values = self.read() - {FOREIGN}
                self.seen |= values
                if values != self.copied:
                    knot_update(self.port, CHALLENGE, values - self.copied, self.copied - values)
                    self.copied = values

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


# -- the role ----------------------------------------------------------------------------------


def role_vars(tmp_path: Path, pebble: dict[str, Any], knot: int, **extra: Any) -> dict[str, Any]:
    return {
        "tls__mode": "acme",
        "tls__acme_challenge": "dns-01",
        "tls__acme_directory": pebble["directory"],
        "tls__acme_ca_src": pebble["ca"],
        "tls__acme_terms_agreed": True,
        "tls__acme_email": "postmaster@example.org",
        "tls__dir": str(tmp_path / "tls"),
        "tls__owner": getpass.getuser(),
        "tls__group": grp.getgrgid(os.getgid()).gr_name,
        "tls__key_type": "ecdsa",
        "tls__hostnames": [HOST],
        "tls__restart_services": [],
        "tls__packages": [],
        "tls__acme_dns_zones": ["example.org"],
        "tls__acme_dns_nameservers": [f"127.0.0.1:{knot}"],
        "tls__acme_dns_propagation_timeout": 30,
        **extra,
    }


def assert_issued(tmp_path: Path, pebble: dict[str, Any]) -> None:
    fullchain = tmp_path / "tls" / "fullchain.pem"
    assert fullchain.exists(), pebble["log"].read_text()[-3000:]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-issuer", "-ext", "subjectAltName", "-in", str(fullchain)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Pebble Intermediate" in text and f"DNS:{HOST}" in text


@needs_tools
def test_dns01_with_nsupdate(tmp_path: Path, knot: int, pebble: dict[str, Any]) -> None:
    inventory = write_inventory(tmp_path, {"vault_tsig": TSIG_SECRET})
    variables = role_vars(
        tmp_path,
        pebble,
        knot,
        tls__acme_dns_provider="nsupdate",
        tls__acme_nsupdate_server="127.0.0.1",
        tls__acme_nsupdate_port=knot,
        tls__acme_nsupdate_key_name="test-update",
        tls__acme_nsupdate_key_secret="{{ vault_tsig }}",
    )
    result = run(PLAYBOOK, tmp_path, inventory, extra_vars=variables)
    assert result.rc == 0, result.text[-5000:]
    assert_issued(tmp_path, pebble)
    assert knot_txt(knot, CHALLENGE) == {FOREIGN}
    assert "Publish the DNS-01 challenges" in result.text
    assert_no_secret(result, [TSIG_SECRET])

    again = run(PLAYBOOK, tmp_path, inventory, extra_vars=variables)
    assert again.rc == 0, again.text[-5000:]
    assert again.recap()["changed"] == 0
    assert_no_secret(again, [TSIG_SECRET])


@needs_tools
@pytest.mark.parametrize("provider", ["cloudflare", "hetzner"])
def test_dns01_with_http_apis(
    tmp_path: Path, knot: int, pebble: dict[str, Any], provider: str
) -> None:
    standin: CloudflareStandIn | HetznerStandIn
    standin = CloudflareStandIn() if provider == "cloudflare" else HetznerStandIn()
    with standin:
        standin.add_zone("example.org")
        if provider == "cloudflare":
            standin.seed("example.org", "TXT", CHALLENGE, f'"{FOREIGN}"')
        else:
            standin.seed("example.org", "TXT", "_acme-challenge.mx1", f'"{FOREIGN}"')

        def read() -> set[str]:
            relative = "_acme-challenge.mx1"
            return {
                str(r.get("content", r.get("value"))).strip('"')
                for r in standin.zone_records("example.org")
                if r["type"] == "TXT" and r["name"] in (CHALLENGE, relative)
            }

        inventory = write_inventory(tmp_path, {"vault_token": standin.token})
        variables = role_vars(
            tmp_path,
            pebble,
            knot,
            tls__acme_dns_provider=provider,
            **{
                f"tls__acme_{provider}_api_token": "{{ vault_token }}",
                f"tls__acme_{provider}_api_url": standin.base_url,
            },
        )
        with Mirror(knot, read) as mirror:
            result = run(PLAYBOOK, tmp_path, inventory, extra_vars=variables)
        assert result.rc == 0, result.text[-5000:]
        assert_issued(tmp_path, pebble)
        # The value went through the API (the mirror saw it) and is gone again.
        assert mirror.seen, "no challenge value ever reached the API"
        assert read() == {FOREIGN}
        assert_no_secret(result, [standin.token])


@needs_tools
def test_dns01_with_route53(
    tmp_path: Path,
    knot: int,
    pebble: dict[str, Any],
    route53: Any,  # noqa: F811
    moto_endpoint: str,  # noqa: F811
) -> None:
    zone_id = route53_zone(route53, "example.org", CHALLENGE, 60, FOREIGN)
    try:

        def read() -> set[str]:
            return route53_txt(route53, zone_id, CHALLENGE)[0]

        secret = "route53-dns01-secret-key-0123456789"
        inventory = write_inventory(tmp_path, {"vault_aws": secret})
        variables = role_vars(
            tmp_path,
            pebble,
            knot,
            tls__acme_dns_provider="route53",
            tls__acme_route53_endpoint_url=moto_endpoint,
            tls__acme_route53_access_key=ACCESS_KEY,
            tls__acme_route53_secret_key="{{ vault_aws }}",
        )
        with Mirror(knot, read) as mirror:
            result = run(PLAYBOOK, tmp_path, inventory, extra_vars=variables)
        assert result.rc == 0, result.text[-5000:]
        assert_issued(tmp_path, pebble)
        assert mirror.seen
        assert read() == {FOREIGN}
        assert_no_secret(result, [secret])
    finally:
        drop_route53_zone(route53, zone_id)


@needs_tools
def test_dns01_with_a_zone_file_says_what_to_do(
    tmp_path: Path, knot: int, pebble: dict[str, Any]
) -> None:
    inventory = write_inventory(tmp_path, {})
    variables = role_vars(tmp_path, pebble, knot, tls__acme_dns_provider="zonefile")
    result = run(PLAYBOOK, tmp_path, inventory, extra_vars=variables)
    assert result.rc != 0
    assert "A zone file cannot be changed while the" in result.text
    assert not (tmp_path / "tls" / "fullchain.pem").exists()
