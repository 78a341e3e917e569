#!/usr/bin/env python3
"""Would a new ruleset still let in the SSH connection Ansible runs over?

The firewall role runs this on the controller before it writes the ruleset:

    ssh_guard.py '{"ssh_connection": "...", "rules": [...]}'

``ssh_connection`` is SSH_CONNECTION of the session on the host, as sshd
sets it: "client-address client-port server-address server-port".
``rules`` are the accept rules of the input chain as data (the role's
``firewall__combined_rules``): ``{comment, proto, ports, sources}``, where
empty sources means everyone and each source is an address or a network.

It prints one JSON object: the client address and server port it checked,
``allowed`` and the rule that lets the connection in (or why no rule is
needed). The established connection itself survives any ruleset (replies
are accepted first); what is checked is a new connection from the same
address to the same port, as the next Ansible run makes. Loopback traffic
(and a client on the host's own address) is always accepted. Rate limits do
not count as cutting off.

Exit status: 0 when the check ran (whatever its verdict), 2 for bad input.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address:
    """An address from SSH_CONNECTION; IPv4-mapped IPv6 becomes IPv4 (what the
    firewall sees on the wire), a zone index ("%eth0") is dropped."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def source_matches(client: Address, source: str) -> bool:
    network = ipaddress.ip_network(source, strict=False)
    return network.version == client.version and client in network


def check(ssh_connection: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    fields = ssh_connection.split()
    if len(fields) != 4:
        raise ValueError(f"SSH_CONNECTION has {len(fields)} fields, not 4: {ssh_connection!r}")
    client, server = parse_address(fields[0]), parse_address(fields[2])
    port = int(fields[3])
    verdict: dict[str, Any] = {"client": str(client), "port": port}
    if client.is_loopback or client == server:
        return {**verdict, "allowed": True, "rule": "loopback"}
    for rule in rules:
        if rule.get("proto", "tcp") != "tcp":
            continue
        if port not in [int(item) for item in rule["ports"]]:
            continue
        sources = rule.get("sources") or []
        if not sources or any(source_matches(client, source) for source in sources):
            return {**verdict, "allowed": True, "rule": rule.get("comment") or "(no comment)"}
    return {**verdict, "allowed": False, "rule": None}


def main(argv: list[str]) -> int:
    try:
        spec = json.loads(argv[1])
        verdict = check(spec["ssh_connection"], spec["rules"])
    except (IndexError, KeyError, TypeError, ValueError) as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 2
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
