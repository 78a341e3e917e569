"""A stand-in of Cloudflare API v4, "Zones" (list by name) and "DNS Records for a Zone".

What it implements, after Cloudflare's API documentation (api.cloudflare.com,
developers.cloudflare.com/api):

- every answer is the envelope ``{"success", "errors", "messages", "result"}``,
  lists with ``result_info`` (``page``, ``per_page``, ``count``,
  ``total_count``, ``total_pages``); errors are ``{"code", "message"}``;
- authentication with ``Authorization: Bearer TOKEN``: a missing or malformed
  header is HTTP 400, code 6003 "Invalid request headers" (with 6111 in its
  ``error_chain``); a wrong token is HTTP 403, code 10000 "Authentication error";
- ``GET /zones?name=`` (``per_page`` 5 to 50, default 20);
- ``GET /zones/{zone_id}/dns_records`` with the filters ``name``, ``type`` and
  ``content`` (exact matches) and ``page``/``per_page`` (default 100); an unknown
  zone id is HTTP 400, code 7003 "Could not route to ..., perhaps your object
  identifier is invalid?";
- ``POST /zones/{zone_id}/dns_records``, ``GET``/``PUT``/``PATCH``/``DELETE
  /zones/{zone_id}/dns_records/{id}``; an unknown record is HTTP 404, code
  81044 "Record does not exist.";
- record fields ``id``, ``zone_id``, ``zone_name``, ``name`` (the full name,
  lower case, no final dot; a relative name or ``@`` is completed with the zone),
  ``type``, ``content``, ``priority`` (MX, SRV), ``data`` (SRV, TLSA, CAA, which
  are created from ``data``; their ``content`` is then its fields separated by
  tabs), ``proxiable``, ``proxied``, ``ttl`` (1 is "automatic", otherwise 60 to
  86400), ``created_on``, ``modified_on``;
- checks: record type, name inside the zone, A/AAAA addresses, MX priority,
  TTL, "An identical record already exists." (81058), a CNAME next to other
  data at a name (81053, 81054: RFC 1034 3.6.2), proxying of other types than
  A/AAAA/CNAME, JSON that does not parse (6007);
- TXT content (Cloudflare's rule): quoted character-strings of at most 255
  octets each; a longer string is split automatically; content without quotes
  is kept as it is when it fits one string, otherwise split and quoted;
- a 429 answer (for ``fail_next(429)``) has code 971 "Please wait and consider
  throttling your request speed".

Validation errors whose code the documentation does not give use 1004 "DNS
Validation Error" with the detail in the message.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.standins import Reply, Request, StandIn, int_arg, page_of, unparsable

# The record types the API takes.
TYPES = frozenset(
    {
        *("A", "AAAA", "CAA", "CERT", "CNAME", "DNSKEY", "DS", "HTTPS", "LOC", "MX", "NAPTR"),
        *("NS", "OPENPGPKEY", "PTR", "SMIMEA", "SRV", "SSHFP", "SVCB", "TLSA", "TXT", "URI"),
    }
)
DATA_TYPES = frozenset({"SRV", "TLSA", "CAA"})
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _error(code: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def _fail(status: int, *errors: dict[str, Any]) -> Reply:
    return status, {"success": False, "errors": list(errors), "messages": [], "result": None}, {}


def _ok(result: Any, info: dict[str, int] | None = None) -> Reply:
    payload: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if info is not None:
        payload["result_info"] = info
    return 200, payload, {}


def _unescape(text: str) -> bytes:
    out = bytearray()
    index = 0
    while index < len(text):
        if text[index] == "\\" and text[index + 1 : index + 4].isdigit():
            out.append(int(text[index + 1 : index + 4]))
            index += 4
        elif text[index] == "\\":
            out += text[index + 1].encode()
            index += 2
        else:
            out += text[index].encode()
            index += 1
    return bytes(out)


def _quote(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def txt_content(content: str) -> str | None:
    """Cloudflare's TXT content rule (see the module docstring); None when the quotes
    do not balance."""
    stripped = content.strip()
    if not stripped.startswith('"'):
        data = stripped.encode()
        if len(data) <= 255:
            return stripped
        return " ".join(_quote(data[i : i + 255]) for i in range(0, len(data), 255))
    strings, rest = [], stripped
    while rest:
        match = _QUOTED.match(rest)
        if not match:
            return None
        strings.append(_unescape(match.group(1)))
        rest = rest[match.end() :].lstrip()
    if all(len(s) <= 255 for s in strings):
        return stripped
    chunks = [s[i : i + 255] for s in strings for i in range(0, max(len(s), 1), 255)]
    return " ".join(_quote(c) for c in chunks)


class CloudflareStandIn(StandIn):
    prefix = "/client/v4"

    def __init__(self, token: str = "cf-test-token-0123456789") -> None:  # noqa: S107
        super().__init__(token)
        self.zones: dict[str, dict[str, Any]] = {}
        self.records: dict[str, list[dict[str, Any]]] = {}

    # -- test set-up and inspection --------------------------------------------------------------

    def add_zone(self, name: str) -> str:
        zone_id = uuid.uuid4().hex
        self.zones[zone_id] = {
            "id": zone_id,
            "name": name,
            "status": "active",
            "paused": False,
            "type": "full",
            "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            "created_on": _now(),
            "modified_on": _now(),
        }
        self.records[zone_id] = []
        return zone_id

    def seed(self, zone: str, rtype: str, name: str, content: str, **fields: Any) -> str:
        """Put a record in place as if someone had made it (no checks)."""
        zone_id = self._zone_named(zone)
        record = self._record(zone_id, {"type": rtype, "name": name, "content": content, **fields})
        self.records[zone_id].append(record)
        return str(record["id"])

    def zone_records(self, zone: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.records[self._zone_named(zone)])

    def fault_payload(self, status: int) -> Any:
        if status == 429:
            return _fail(
                429, _error(971, "Please wait and consider throttling your request speed")
            )[1]
        if status >= 500:
            return _fail(status, _error(status, "Internal server error"))[1]
        return None

    def _zone_named(self, name: str) -> str:
        return next(i for i, z in self.zones.items() if z["name"] == name)

    # -- the API ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _fail(
                400,
                _error(
                    6003,
                    "Invalid request headers",
                    error_chain=[_error(6111, "Invalid format for Authorization header")],
                ),
            )
        if auth[7:] != self.token:
            return _fail(403, _error(10000, "Authentication error"))
        if unparsable(request.body):
            return _fail(400, _error(6007, "Malformed JSON in request body"))
        parts = request.path.strip("/").split("/")
        if parts == ["zones"] and request.method == "GET":
            return self._list_zones(request.query)
        if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "dns_records":
            zone_id = parts[1]
            if zone_id not in self.zones:
                return _fail(
                    400,
                    _error(
                        7003,
                        f"Could not route to {request.path}, perhaps your object identifier"
                        " is invalid?",
                    ),
                    _error(7000, "No route for that URI"),
                )
            if len(parts) == 3 and request.method == "GET":
                return self._list_records(zone_id, request.query)
            if len(parts) == 3 and request.method == "POST":
                return self._create(zone_id, request.body)
            if len(parts) == 4:
                return self._one(zone_id, parts[3], request)
        return _fail(400, _error(7000, "No route for that URI"))

    def _list_zones(self, query: dict[str, str]) -> Reply:
        zones = [
            z for z in self.zones.values() if "name" not in query or z["name"] == query["name"]
        ]
        per_page = min(max(int_arg(query, "per_page", 20), 5), 50)
        return self._paged(zones, query, per_page)

    def _paged(self, items: list[Any], query: dict[str, str], per_page: int) -> Reply:
        page = max(int_arg(query, "page", 1), 1)
        shown = page_of(items, page, per_page)
        info = {
            "page": page,
            "per_page": per_page,
            "count": len(shown),
            "total_count": len(items),
            "total_pages": max(1, -(-len(items) // per_page)),
        }
        return _ok(copy.deepcopy(shown), info)

    def _list_records(self, zone_id: str, query: dict[str, str]) -> Reply:
        records = [
            r
            for r in self.records[zone_id]
            if ("name" not in query or r["name"] == query["name"].lower().rstrip("."))
            and ("type" not in query or r["type"] == query["type"].upper())
            and ("content" not in query or r["content"] == query["content"])
        ]
        per_page = min(max(int_arg(query, "per_page", 100), 5), 5_000_000)
        return self._paged(records, query, per_page)

    def _one(self, zone_id: str, record_id: str, request: Request) -> Reply:
        records = self.records[zone_id]
        record = next((r for r in records if r["id"] == record_id), None)
        if record is None:
            return _fail(404, _error(81044, "Record does not exist."))
        if request.method == "GET":
            return _ok(copy.deepcopy(record))
        if request.method == "DELETE":
            records.remove(record)
            return _ok({"id": record_id})
        if request.method in ("PUT", "PATCH"):
            if not isinstance(request.body, dict):
                return _fail(400, _error(1004, "DNS Validation Error: the body must be an object"))
            fields = dict(request.body)
            if request.method == "PATCH":
                base = {k: record[k] for k in ("type", "name", "content", "ttl", "proxied")}
                if "priority" in record:
                    base["priority"] = record["priority"]
                if "data" in record:
                    base["data"] = record["data"]
                fields = {**base, **fields}
            failure = self._check(zone_id, fields, ignore=record_id)
            if failure:
                return failure
            updated = self._record(zone_id, fields, record_id=record_id)
            updated["created_on"] = record["created_on"]
            records[records.index(record)] = updated
            return _ok(copy.deepcopy(updated))
        return _fail(405, _error(10405, "Method not allowed"))

    def _create(self, zone_id: str, body: Any) -> Reply:
        if not isinstance(body, dict):
            return _fail(400, _error(1004, "DNS Validation Error: the body must be an object"))
        failure = self._check(zone_id, body)
        if failure:
            return failure
        record = self._record(zone_id, body)
        self.records[zone_id].append(record)
        return _ok(copy.deepcopy(record))

    # -- records ------------------------------------------------------------------------------

    def _full_name(self, zone_id: str, name: str) -> str:
        zone = str(self.zones[zone_id]["name"])
        name = name.strip().lower().rstrip(".")
        if name in ("@", ""):
            return zone
        if name == zone or name.endswith("." + zone):
            return name
        return f"{name}.{zone}"

    def _content(self, body: dict[str, Any]) -> str:
        rtype, data = body["type"], body.get("data")
        if rtype in DATA_TYPES and isinstance(data, dict):
            if rtype == "SRV":
                return f"{data['weight']}\t{data['port']}\t{data['target']}"
            if rtype == "TLSA":
                return (
                    f"{data['usage']}\t{data['selector']}\t{data['matching_type']}"
                    f"\t{data['certificate']}"
                )
            return f'{data["flags"]} {data["tag"]} "{data["value"]}"'
        content = str(body.get("content", ""))
        if rtype == "TXT":
            return txt_content(content) or content
        return content

    def _record(
        self, zone_id: str, body: dict[str, Any], record_id: str | None = None
    ) -> dict[str, Any]:
        rtype = str(body["type"]).upper()
        body = {**body, "type": rtype}
        record: dict[str, Any] = {
            "id": record_id or uuid.uuid4().hex,
            "zone_id": zone_id,
            "zone_name": self.zones[zone_id]["name"],
            "name": self._full_name(zone_id, str(body["name"])),
            "type": rtype,
            "content": self._content(body),
            "proxiable": rtype in ("A", "AAAA", "CNAME"),
            "proxied": bool(body.get("proxied", False)),
            "ttl": int(body.get("ttl", 1)),
            "locked": False,
            "meta": {"auto_added": False, "source": "primary"},
            "comment": body.get("comment"),
            "tags": [],
            "created_on": _now(),
            "modified_on": _now(),
        }
        if rtype == "MX":
            record["priority"] = int(body.get("priority", 0))
        if rtype in DATA_TYPES and isinstance(body.get("data"), dict):
            record["data"] = dict(body["data"])
            if rtype == "SRV":
                record["priority"] = int(body["data"]["priority"])
        return record

    def _check(self, zone_id: str, body: dict[str, Any], ignore: str = "") -> Reply | None:
        def invalid(detail: str) -> Reply:
            return _fail(400, _error(1004, f"DNS Validation Error: {detail}"))

        rtype = str(body.get("type", "")).upper()
        if not rtype:
            return invalid("type is required")
        if rtype not in TYPES:
            return invalid(f"unsupported record type {rtype}")
        if not body.get("name"):
            return invalid("name is required")
        name = self._full_name(zone_id, str(body["name"]))
        if not re.fullmatch(
            r"[a-z0-9_*]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", name
        ):
            return _fail(400, _error(9000, "DNS name is invalid."))
        if rtype in DATA_TYPES:
            data = body.get("data")
            needed = {
                "SRV": ("priority", "weight", "port", "target"),
                "TLSA": ("usage", "selector", "matching_type", "certificate"),
                "CAA": ("flags", "tag", "value"),
            }[rtype]
            if not isinstance(data, dict) or any(k not in data for k in needed):
                return invalid(f"{rtype} records need data with {', '.join(needed)}")
        elif not str(body.get("content", "")).strip():
            return invalid("content is required")
        content = self._content({**body, "type": rtype})
        if rtype == "A":
            try:
                ipaddress.IPv4Address(content)
            except ValueError:
                return _fail(
                    400, _error(9005, "Content for A record must be a valid IPv4 address.")
                )
        if rtype == "AAAA":
            try:
                ipaddress.IPv6Address(content)
            except ValueError:
                return _fail(
                    400, _error(9006, "Content for AAAA record must be a valid IPv6 address.")
                )
        if rtype == "MX" and not (
            isinstance(body.get("priority"), int) and 0 <= body["priority"] <= 65535
        ):
            return invalid("MX records need a priority from 0 to 65535")
        if rtype == "TXT" and txt_content(str(body.get("content", ""))) is None:
            return invalid("TXT content has unbalanced quotes")
        ttl = body.get("ttl", 1)
        if not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
            return invalid("TTL must be between 60 and 86400 seconds, or 1 for Automatic")
        if body.get("proxied") and rtype not in ("A", "AAAA", "CNAME"):
            return invalid(f"{rtype} records cannot be proxied")
        others = [r for r in self.records[zone_id] if r["name"] == name and r["id"] != ignore]
        if rtype == "CNAME" and others:
            return _fail(
                400, _error(81053, "An A, AAAA, or CNAME record with that host already exists.")
            )
        if rtype != "CNAME" and any(r["type"] == "CNAME" for r in others):
            return _fail(400, _error(81054, "A CNAME record with that host already exists."))
        priority = body.get("priority") if rtype == "MX" else None
        for other in others:
            if other["type"] != rtype:
                continue
            if (other["content"], other.get("priority")) == (content, priority) or (
                rtype in DATA_TYPES and other.get("data") == body["data"]
            ):
                return _fail(400, _error(81058, "An identical record already exists."))
        return None
