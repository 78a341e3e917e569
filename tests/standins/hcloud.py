"""A stand-in of the Hetzner Cloud API's servers, for reverse DNS (PTR) records.

What it implements, after the Hetzner Cloud API reference (docs.hetzner.cloud)
and what the hcloud client that ``hetzner.hcloud.rdns`` carries sends:

- authentication with ``Authorization: Bearer TOKEN``; anything else is
  HTTP 401 ``{"error": {"code": "unauthorized", "message": "unable to
  authenticate"}}``;
- ``GET /servers`` with the filter ``name`` (exact) and ``page``/``per_page``,
  answering ``{"servers": [...], "meta": {"pagination": {...}}}``;
- ``GET /servers/{id}``; an unknown id is HTTP 404, code ``not_found``;
- ``POST /servers/{id}/actions/change_dns_ptr`` with ``{"ip", "dns_ptr"}``:
  ``ip`` must be the server's IPv4 address or inside its IPv6 /64 (else 422
  ``invalid_input``); ``dns_ptr`` null resets it (IPv4: the default name,
  IPv6: the entry goes). IPv6 entries are kept with the address in its
  compressed form (RFC 5952), which the stand-in assumes the API does too.
  Answers 201 with an action in status ``running``;
- ``GET /actions/{id}``: the first read of a running action finishes it
  (status ``success``, progress 100) and only then is the new name in place,
  so a client that does not wait for the action does not see it;
- servers carry ``public_net.ipv4`` (``ip``, ``blocked``, ``dns_ptr``, ``id``),
  ``public_net.ipv6`` (``ip`` as ``NET/64``, ``dns_ptr`` as a list of
  ``{"ip", "dns_ptr"}``, ``id``), ``floating_ips`` and ``firewalls`` (empty).
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.standins import Reply, Request, StandIn, int_arg, page_of


def _error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message, "details": {}}}, {}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class HcloudStandIn(StandIn):
    prefix = "/v1"

    def __init__(self, token: str = "hcloud-test-token-0123456789abcdef") -> None:  # noqa: S107
        super().__init__(token)
        self.servers: dict[int, dict[str, Any]] = {}
        self.actions: dict[int, dict[str, Any]] = {}
        # What each running action does when it finishes.
        self._pending: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count(4711)

    # -- test set-up and inspection --------------------------------------------------------------

    def add_server(self, name: str, ipv4: str, ipv6_net: str) -> int:
        server_id = next(self._ids)
        octets = ipv4.split(".")
        self.servers[server_id] = {
            "id": server_id,
            "name": name,
            "status": "running",
            "created": _now(),
            "labels": {},
            "public_net": {
                "ipv4": {
                    "id": next(self._ids),
                    "ip": ipv4,
                    "blocked": False,
                    "dns_ptr": f"static.{'.'.join(reversed(octets))}.clients.your-server.de",
                },
                "ipv6": {"id": next(self._ids), "ip": ipv6_net, "blocked": False, "dns_ptr": []},
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "volumes": [],
        }
        return server_id

    def ptr(self, server_id: int, ip: str) -> str | None:
        """The reverse DNS name ``ip`` has now."""
        net = self.servers[server_id]["public_net"]
        if net["ipv4"]["ip"] == ip:
            return str(net["ipv4"]["dns_ptr"])
        return next((e["dns_ptr"] for e in net["ipv6"]["dns_ptr"] if e["ip"] == ip), None)

    # -- serving ---------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "unable to authenticate")
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and parts == ["servers"]:
            return self._list(request.query)
        if parts[0] == "servers" and len(parts) >= 2:
            server = self.servers.get(int(parts[1])) if parts[1].isdigit() else None
            if server is None:
                return _error(404, "not_found", "server not found")
            if request.method == "GET" and len(parts) == 2:
                return 200, {"server": copy.deepcopy(server)}, {}
            if request.method == "POST" and parts[2:] == ["actions", "change_dns_ptr"]:
                return self._change_dns_ptr(server, request.body)
        if request.method == "GET" and parts[0] == "actions" and len(parts) == 2:
            action = self.actions.get(int(parts[1])) if parts[1].isdigit() else None
            if action is None:
                return _error(404, "not_found", "action not found")
            if action["status"] == "running":
                self._pending.pop(action["id"])()
                action.update(status="success", progress=100, finished=_now())
            return 200, {"action": copy.deepcopy(action)}, {}
        return _error(404, "not_found", f"no route for {request.method} {request.path}")

    def _list(self, query: dict[str, str]) -> Reply:
        found = [s for s in self.servers.values() if query.get("name") in (None, s["name"])]
        page, per_page = int_arg(query, "page", 1), int_arg(query, "per_page", 25)
        last = max(1, -(-len(found) // per_page))
        meta = {
            "pagination": {
                "page": page,
                "per_page": per_page,
                "previous_page": page - 1 if page > 1 else None,
                "next_page": page + 1 if page < last else None,
                "last_page": last,
                "total_entries": len(found),
            }
        }
        items = [copy.deepcopy(s) for s in page_of(found, page, per_page)]
        return 200, {"servers": items, "meta": meta}, {}

    def _change_dns_ptr(self, server: dict[str, Any], body: Any) -> Reply:
        if not isinstance(body, dict) or not isinstance(body.get("ip"), str):
            return _error(400, "invalid_input", "invalid input in field 'ip'")
        ip, name = body["ip"], body.get("dns_ptr")
        if name is not None and (not isinstance(name, str) or not name or name.endswith(".")):
            return _error(422, "invalid_input", "invalid input in field 'dns_ptr'")
        net = server["public_net"]
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return _error(422, "invalid_input", "invalid input in field 'ip'")
        if address.version == 4 and ip == net["ipv4"]["ip"]:
            octets = ip.split(".")
            default = f"static.{'.'.join(reversed(octets))}.clients.your-server.de"

            def apply() -> None:
                net["ipv4"]["dns_ptr"] = name if name is not None else default

        elif address.version == 6 and address in ipaddress.ip_network(net["ipv6"]["ip"]):

            def apply() -> None:
                entries = [e for e in net["ipv6"]["dns_ptr"] if e["ip"] != str(address)]
                if name is not None:
                    entries.append({"ip": str(address), "dns_ptr": name})
                net["ipv6"]["dns_ptr"] = entries

        else:
            return _error(422, "invalid_input", f"ip {ip} does not belong to the server")
        action_id = next(self._ids)
        self.actions[action_id] = {
            "id": action_id,
            "command": "change_dns_ptr",
            "status": "running",
            "progress": 0,
            "started": _now(),
            "finished": None,
            "resources": [{"id": server["id"], "type": "server"}],
            "error": None,
        }
        self._pending[action_id] = apply
        return 201, {"action": copy.deepcopy(self.actions[action_id])}, {}
