"""dns_records publishes estafeta's DANE keys (issue 22 §3, docs/tlsa-rollover.md).

With ``dns_records__tlsa_source: estafeta`` the role publishes one TLSA
record for each key ``estafeta tls tlsa --json`` lists (here: a stand-in
command that prints a file), with ``dns_records__tlsa_ttl``, through
nsupdate to a real Knot. After estafeta's switch the list is the new key in
use and a new standby: the next run publishes the new standby and withdraws
the old key's record, and a run with nothing new changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.test_role_dns_records import (
    DKIM_ED25519,
    NSUPDATE_PLAYBOOK,
    PYTHON,
    TSIG_SECRET,
    needs_knot,
    rrset,
    start_knot,
    stop,
)
from tests.test_roles import INVENTORIES, changed_tasks, failures, run_playbook

OWNER = "_25._tcp.mx1.example.org."


def key(n: int) -> dict[str, Any]:
    """An entry as `estafeta tls tlsa --json` lists it (digests of a made-up SPKI)."""
    spki = f"key {n}".encode()
    sha256 = hashlib.sha256(spki).hexdigest()
    return {
        "role": "current" if n % 2 else "standby",
        "spki_sha256": sha256,
        "spki_sha512": hashlib.sha512(spki).hexdigest(),
        "tlsa": f"3 1 1 {sha256}",
    }


def published(port: int) -> set[str]:
    return rrset(port, OWNER, "TLSA")


def expected(*numbers: int, ttl: int = 7) -> set[str]:
    return {f"{OWNER} {ttl} IN TLSA 3 1 1 {key(n)['spki_sha256']}" for n in numbers}


@needs_knot
def test_the_key_in_use_and_the_standby_are_published_then_rolled(tmp_path: Path) -> None:
    knotd, port = start_knot(
        tmp_path / "knot", {"example.org": ["ns A 127.0.0.1"], "example.net": []}
    )
    listing = tmp_path / "keys.json"
    command = tmp_path / "estafeta"
    # Only `tls tlsa --json` is asked (the DKIM records are given).
    command.write_text(f'#!/bin/sh\n[ "$*" = "tls tlsa --json" ] && exec cat {listing}\nexit 2\n')
    command.chmod(0o755)
    variables = {
        "ansible_python_interpreter": PYTHON,
        "dns_records__nsupdate_server": "127.0.0.1",
        "dns_records__nsupdate_port": port,
        "dns_records__nsupdate_key_name": "test-update",
        "dns_records__nsupdate_key_secret": TSIG_SECRET,
        "dns_records__estafeta_command": str(command),
        "dns_records__tlsa_ttl": 7,
        "dns_records__state_dir": str(tmp_path / "state"),
        "dns_records__mta_sts": False,
        "dns_records__check": False,
        "dns_records__dkim_records": [
            {"name": "ed2025._domainkey.example.org", "value": DKIM_ED25519},
        ],
    }
    args = INVENTORIES["example"][0]  # tls__mode acme_builtin: the source is estafeta

    def run(*numbers: int) -> dict[str, Any]:
        listing.write_text(json.dumps({"keys": [key(n) for n in numbers]}))
        rc, output, stderr = run_playbook(NSUPDATE_PLAYBOOK, tmp_path, *args, extra_vars=variables)
        assert rc == 0, failures(output) or stderr
        return output

    try:
        run(1, 2)  # the key in use, the standby
        assert published(port) == expected(1, 2)
        assert changed_tasks(run(1, 2)) == []
        # estafeta switched to key 2 and made key 3: 1 is withdrawn, 3 published.
        run(2, 3)
        assert published(port) == expected(2, 3)
        # SHA2-512 records of the same keys, when asked for.
        variables["dns_records__tlsa_params"] = [3, 1, 2]
        run(2, 3)
        assert {line.split()[-1] for line in published(port)} == {
            key(n)["spki_sha512"] for n in (2, 3)
        }
        # Anything but DANE-EE of the key is refused before a record changes.
        variables["dns_records__tlsa_params"] = [2, 1, 1]
        listing.write_text(json.dumps({"keys": [key(4)]}))
        rc, output, _ = run_playbook(NSUPDATE_PLAYBOOK, tmp_path, *args, extra_vars=variables)
        assert rc != 0 and "3, 1, 1" in failures(output)
        assert len(published(port)) == 2
    finally:
        stop(knotd)
