"""``estafeta tls tlsa`` and ``estafeta tls rollover``: the DANE-EE keys of
``[acme] dane`` (estafeta.acme.dane says how the rollover goes).

    estafeta tls tlsa [--json]
    estafeta tls rollover [--json]

``tls tlsa`` prints the TLSA records to publish at ``_PORT._tcp.HOSTNAME``
for every port of ``[acme] dane_ports``: one "3 1 1" record for the key in
use and one for the standby key; the dns_records role publishes them
(``dns_records__tlsa_source: estafeta``). It only reads: the server makes
the keys (at its start), so run it after the server has started once.

``tls rollover`` asks the server for a key rollover now: it renews its
certificate with the standby key as soon as DNS has shown that key's TLSA
record for its TTL plus ``dane_margin``, never sooner. The running server
sees the request at its next look at DNS, at once after ``systemctl reload
estafeta``.

Exit codes as in cli.py: 0 done; 2 ``[acme]`` or its ``dane`` is off.

``--json``: ``tls tlsa`` {"hostname", "ports", "names", "keys": [{"role":
"current"|"standby", "spki_sha256", "spki_sha512", "tlsa", and for the
standby "first_seen", "ttl", "checked", "visible", "secure", "error"}],
"ready_at", "rollover_requested"} (times in epoch seconds or null);
``tls rollover`` the same after the request.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from estafeta.acme.dane import DaneKeys, tlsa_names
from estafeta.cli import UsageError
from estafeta.config import Config

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def _keys(config: Config) -> DaneKeys:
    if config.acme is None or not config.acme.dane:
        raise UsageError("[acme] dane is off: there is no standby key (set dane = true)")
    return DaneKeys(config.acme_dir)


def _report(config: Config, keys: DaneKeys) -> dict[str, Any]:
    assert config.acme is not None
    listing = keys.listing()
    standby = next((k for k in listing if k["role"] == "standby"), None)
    ready_at = None
    if standby is not None and standby["visible"] and standby["first_seen"] is not None:
        ready_at = standby["first_seen"] + standby["ttl"] + config.acme.dane_margin
    return {
        "hostname": config.hostname,
        "ports": list(config.acme.dane_ports),
        "names": tlsa_names(config.hostname, config.acme.dane_ports),
        "keys": listing,
        "ready_at": ready_at,
        "rollover_requested": keys.requested(),
    }


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _print(report: dict[str, Any]) -> None:
    if not report["keys"]:
        print("no DANE keys yet: start the server once (it makes them)")
        return
    for key in report["keys"]:
        print(f"; {key['role']} key")
        for name in report["names"]:
            print(f"{name}. IN TLSA {key['tlsa']}")
    standby = next((k for k in report["keys"] if k["role"] == "standby"), None)
    if standby is None:
        return
    if standby["error"]:
        print(f"; standby: the last lookup failed: {standby['error']}")
    if standby["visible"]:
        print(
            f"; standby: in DNS since {_when(standby['first_seen'])} (TTL {standby['ttl']} s),"
            f" usable from {_when(report['ready_at'])}"
        )
    else:
        print(f"; standby: not in DNS at the last look ({_when(standby['checked'])})")
    if report["rollover_requested"] is not None:
        print(f"; rollover requested at {_when(report['rollover_requested'])}")


def cmd_tls_tlsa(config: Config, args: argparse.Namespace) -> int:
    report = _report(config, _keys(config))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


def cmd_tls_rollover(config: Config, args: argparse.Namespace) -> int:
    keys = _keys(config)
    keys.request()
    report = _report(config, keys)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print(report)
    print(
        "the server switches to the standby key once its TLSA record has been in DNS for"
        " its TTL plus dane_margin (`systemctl reload estafeta` makes it look now)"
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    """Add ``estafeta tls tlsa`` and ``estafeta tls rollover`` (cli.build_parser)."""
    parser = commands.add_parser("tls", help="the certificate's DANE keys ([acme] dane)")
    group = parser.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    command = add(
        group, "tlsa", cmd_tls_tlsa, "print the TLSA records of the key in use and the standby key"
    )
    command.add_argument(
        "--json", action="store_true", help='machine-readable: {"names", "keys": [...], ...}'
    )
    command = add(
        group,
        "rollover",
        cmd_tls_rollover,
        "switch to the standby key as soon as its TLSA record has been in DNS long enough",
    )
    command.add_argument("--json", action="store_true", help="machine-readable, as tls tlsa")
