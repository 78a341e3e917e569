"""A stand-in of the Hetzner DNS API (dns.hetzner.com/api/v1), zones and records.

What it implements, after Hetzner's API documentation (dns.hetzner.com/api-docs):

- authentication with the ``Auth-API-Token`` header: missing or wrong is HTTP
  401 ``{"message": "Invalid authentication credentials"}``;
- ``GET /zones?name=`` (``{"zones": [...], "meta": {"pagination": ...}}``; no
  zone of that name is HTTP 404 with ``{"error": {"message": "zone not found",
  "code": 404}}``);
- ``GET /records?zone_id=`` with ``page``/``per_page`` (all records when
  ``per_page`` is not given) and ``meta.pagination`` (``page``, ``per_page``,
  ``previous_page``, ``next_page``, ``last_page``, ``total_entries``); an
  unknown zone is HTTP 404 "zone not found";
- ``POST /records``, ``GET``/``PUT``/``DELETE /records/{id}``: record fields
  ``id``, ``type``, ``name`` (relative to the zone, ``@`` for the apex),
  ``value`` (zone-file presentation: TXT as quoted strings), ``ttl`` (optional:
  the zone's TTL applies without it), ``zone_id``, ``created``, ``modified``;
  the answer is ``{"record": {...}}``; an unknown record is HTTP 404 "record
  not found"; DELETE answers 200 with an empty body;
- checks, answered HTTP 422 ``{"error": {"message": "422 Unprocessable
  Entity: ...", "code": 422}}``: the fields ``name``, ``type``, ``value``,
  ``zone_id`` are required; the type is one the API supports (A, AAAA, NS, MX,
  CNAME, RP, TXT, SOA, HINFO, SRV, DANE, TLSA, DS, CAA: no PTR); A/AAAA
  addresses; MX is "priority host"; a TXT value's quotes balance and each
  character-string is at most 255 octets (RFC 1035 3.3);
- a 429 answer (for ``fail_next(429)``) is ``{"message": "API rate limit
  exceeded"}``, the gateway's answer.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.standins import Reply, Request, StandIn, int_arg, page_of, unparsable

# The record types the API takes (no PTR: reverse DNS is set on the server or IP).
TYPES = frozenset(
    {
        "A",
        "AAAA",
        "NS",
        "MX",
        "CNAME",
        "RP",
        "TXT",
        "SOA",
        "HINFO",
        "SRV",
        "DANE",
        "TLSA",
        "DS",
        "CAA",
    }
)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"]+)')


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


def _error(status: int, message: str, **fields: Any) -> Reply:
    return status, {**fields, "error": {"message": message, "code": status}}, {}


def txt_strings(value: str) -> list[bytes] | None:
    """The character-strings of a zone-file TXT value; None when it does not parse."""
    strings, rest = [], value.strip()
    while rest:
        match = _STRING.match(rest)
        if not match:
            return None
        text = match.group(1) if match.group(1) is not None else match.group(2)
        data, index = bytearray(), 0
        while index < len(text):
            if text[index] == "\\" and text[index + 1 : index + 4].isdigit():
                data.append(int(text[index + 1 : index + 4]))
                index += 4
            elif text[index] == "\\" and index + 1 < len(text):
                data += text[index + 1].encode()
                index += 2
            else:
                data += text[index].encode()
                index += 1
        strings.append(bytes(data))
        rest = rest[match.end() :].lstrip()
    return strings


class HetznerStandIn(StandIn):
    prefix = "/api/v1"

    def __init__(self, token: str = "hz-test-token-0123456789") -> None:  # noqa: S107
        super().__init__(token)
        self.zones: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}

    # -- test set-up and inspection --------------------------------------------------------------

    def add_zone(self, name: str, ttl: int = 86400) -> str:
        zone_id = uuid.uuid4().hex[:22]
        self.zones[zone_id] = {
            "id": zone_id,
            "name": name,
            "ttl": ttl,
            "registrar": "",
            "legacy_dns_host": "",
            "legacy_ns": [],
            "ns": ["hydrogen.ns.hetzner.com", "oxygen.ns.hetzner.com", "helium.ns.hetzner.de"],
            "created": _now(),
            "verified": "",
            "modified": _now(),
            "project": "",
            "owner": "",
            "permission": "",
            "zone_type": {"id": "", "name": "", "description": "", "prices": None},
            "status": "verified",
            "paused": False,
            "is_secondary_dns": False,
            "txt_verification": {"name": "", "token": ""},
            "records_count": 0,
        }
        return zone_id

    def seed(self, zone: str, rtype: str, name: str, value: str, ttl: int | None = None) -> str:
        """Put a record in place as if someone had made it (no checks)."""
        zone_id = next(i for i, z in self.zones.items() if z["name"] == zone)
        body: dict[str, Any] = {"zone_id": zone_id, "type": rtype, "name": name, "value": value}
        if ttl is not None:
            body["ttl"] = ttl
        return str(self._store(body)["id"])

    def zone_records(self, zone: str) -> list[dict[str, Any]]:
        zone_id = next(i for i, z in self.zones.items() if z["name"] == zone)
        return [copy.deepcopy(r) for r in self.records.values() if r["zone_id"] == zone_id]

    def fault_payload(self, status: int) -> Any:
        if status == 429:
            return {"message": "API rate limit exceeded"}
        if status >= 500:
            return {"error": {"message": "internal server error", "code": status}}
        return None

    # -- the API ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if request.headers.get("auth-api-token") != self.token:
            return 401, {"message": "Invalid authentication credentials"}, {}
        if unparsable(request.body):
            return _error(400, "400 Bad Request: invalid JSON")
        parts = request.path.strip("/").split("/")
        if parts == ["zones"] and request.method == "GET":
            return self._list_zones(request.query)
        if parts == ["records"] and request.method == "GET":
            return self._list_records(request.query)
        if parts == ["records"] and request.method == "POST":
            failure = self._check(request.body)
            if failure:
                return failure
            return 200, {"record": copy.deepcopy(self._store(request.body))}, {}
        if len(parts) == 2 and parts[0] == "records" and parts[1] != "bulk":
            record = self.records.get(parts[1])
            if record is None:
                return _error(404, "record not found", record={})
            if request.method == "GET":
                return 200, {"record": copy.deepcopy(record)}, {}
            if request.method == "DELETE":
                del self.records[parts[1]]
                return 200, None, {}
            if request.method == "PUT":
                failure = self._check(request.body)
                if failure:
                    return failure
                updated = self._store(request.body, record_id=parts[1])
                updated["created"] = record["created"]
                return 200, {"record": copy.deepcopy(updated)}, {}
        return 404, {"message": "no Route matched with those values"}, {}

    @staticmethod
    def _pagination(total: int, page: int, per_page: int) -> dict[str, int]:
        last = max(1, -(-total // per_page)) if per_page else 1
        return {
            "page": page,
            "per_page": per_page,
            "previous_page": max(1, page - 1),
            "next_page": min(last, page + 1),
            "last_page": last,
            "total_entries": total,
        }

    def _list_zones(self, query: dict[str, str]) -> Reply:
        zones = [
            z for z in self.zones.values() if "name" not in query or z["name"] == query["name"]
        ]
        meta = {"pagination": self._pagination(len(zones), 1, 100)}
        if not zones and "name" in query:
            return _error(404, "zone not found", zones=[], meta=meta)
        return 200, {"zones": copy.deepcopy(zones), "meta": meta}, {}

    def _list_records(self, query: dict[str, str]) -> Reply:
        zone_id = query.get("zone_id")
        if zone_id is not None and zone_id not in self.zones:
            return _error(404, "zone not found", records=[])
        records = [r for r in self.records.values() if zone_id is None or r["zone_id"] == zone_id]
        page = max(int_arg(query, "page", 1), 1)
        per_page = max(int_arg(query, "per_page", 0), 0)
        shown = page_of(records, page, per_page) if per_page else records
        meta = {"pagination": self._pagination(len(records), page, per_page or len(records))}
        return 200, {"records": copy.deepcopy(shown), "meta": meta}, {}

    def _store(self, body: dict[str, Any], record_id: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": record_id or uuid.uuid4().hex,
            "type": str(body["type"]).upper(),
            "name": str(body["name"]),
            "value": str(body["value"]),
            "zone_id": body["zone_id"],
            "created": _now(),
            "modified": _now(),
        }
        if body.get("ttl") is not None:
            record["ttl"] = int(body["ttl"])
        self.records[record["id"]] = record
        return record

    def _check(self, body: Any) -> Reply | None:
        def invalid(detail: str) -> Reply:
            return _error(422, f"422 Unprocessable Entity: {detail}", record={})

        if not isinstance(body, dict):
            return invalid("the body must be an object")
        for field in ("name", "type", "value", "zone_id"):
            if body.get(field) in (None, ""):
                return invalid(f"missing field {field}")
        if body["zone_id"] not in self.zones:
            return _error(404, "zone not found", record={})
        rtype = str(body["type"]).upper()
        if rtype not in TYPES:
            return invalid(f"invalid type {rtype}")
        value = str(body["value"])
        if "ttl" in body and body["ttl"] is not None and not isinstance(body["ttl"], int):
            return invalid("ttl must be an integer")
        try:
            if rtype == "A":
                ipaddress.IPv4Address(value)
            elif rtype == "AAAA":
                ipaddress.IPv6Address(value)
        except ValueError:
            return invalid(f"invalid {rtype} record value {value}")
        if rtype == "MX" and not re.fullmatch(r"\d{1,5} \S+", value.strip()):
            return invalid("an MX value is priority and host")
        if rtype == "TXT":
            strings = txt_strings(value)
            if strings is None:
                return invalid("invalid TXT record: unbalanced quotes")
            if any(len(s) > 255 for s in strings):
                return invalid("invalid TXT record: a string is longer than 255 characters")
        return None
