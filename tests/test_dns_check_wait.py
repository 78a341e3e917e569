"""library/mail_dns_check.py: asking the authoritative servers, waiting for propagation.

- with ``authoritative``, the module finds the zone's NS records and their
  addresses through the given nameserver and asks those servers: a stale
  answer at the first server does not matter (two Knots stand for a caching
  resolver and the zone's server);
- with ``wait``, a check that fails because the record is not there yet is
  repeated until the record appears (an RFC 2136 update sent a second after
  the module starts), and a record that never appears still fails, after more
  than one round.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.name
import dns.query
import dns.tsigkeyring
import dns.update
import pytest

from tests.test_role_dns_records import TSIG_SECRET, start_knot, stop

pytestmark = pytest.mark.skipif(not shutil.which("knotd"), reason="needs knotd (package knot)")
SPF = "v=spf1 mx -all"


def test_authoritative_servers_are_found_and_asked(
    knot: Callable[..., Any], run_module: Callable[..., dict[str, Any]]
) -> None:
    # The zone's own server, with the current record; another server with an old copy
    # (as a resolver's cache would have) whose NS records point to 127.0.0.1.
    current = knot({"example.org": [f'@ TXT "{SPF}"']})
    stale = knot({"example.org": ['@ TXT "v=spf1 a -all"']})
    args: dict[str, Any] = {
        "domain": "example.org",
        "nameservers": [stale.address],
        "expect": {"spf": SPF},
    }
    result = run_module("mail_dns_check", args)
    assert result["failed"] and result["failed_checks"] == ["spf example.org"]

    args |= {"authoritative": True, "authoritative_port": current.port}
    result = run_module("mail_dns_check", args)
    assert not result["failed"], result.get("msg")
    assert result["results"][0]["found"] == [SPF]
    assert result["attempts"] == 1

    # No server for the zone can be found: the check fails and says why.
    args |= {"domain": "example.net"}
    result = run_module("mail_dns_check", args)
    assert result["failed"]
    assert "example.net" in result["results"][0]["why"]


def update_later(port: int, delay: float) -> threading.Thread:
    def send() -> None:
        time.sleep(delay)
        keyring = dns.tsigkeyring.from_text({"test-update": TSIG_SECRET})
        update = dns.update.UpdateMessage(
            "example.org.", keyring=keyring, keyname=dns.name.from_text("test-update")
        )
        update.add("example.org.", 60, "TXT", f'"{SPF}"')
        dns.query.tcp(update, "127.0.0.1", port=port, timeout=5)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_wait_repeats_until_the_record_is_there(
    tmp_path: Path, run_module: Callable[..., dict[str, Any]]
) -> None:
    knotd, port = start_knot(tmp_path / "knot", {"example.org": ["ns A 127.0.0.1"]})
    try:
        args = {
            "domain": "example.org",
            "nameservers": [f"127.0.0.1:{port}"],
            "expect": {"spf": SPF},
        }
        # Never published: fails after more than one round.
        result = run_module("mail_dns_check", args | {"wait": 1})
        assert result["failed"] and result["attempts"] >= 2

        thread = update_later(port, 1.0)
        try:
            result = run_module("mail_dns_check", args | {"wait": 60})
        finally:
            thread.join()
        assert not result["failed"], result.get("msg")
        assert result["attempts"] >= 2
        assert result["results"][0]["status"] == "ok"
    finally:
        stop(knotd)
