"""The Hetzner DNS Console API client (dns.hetzner.com/api/v1); see dns_providers.py for
the interface, the retries and the handling of secrets.

Hetzner takes names relative to the zone (``@`` for the apex) and values in
zone-file presentation (TXT as quoted character-strings of at most 255 octets;
a name without the final dot is relative to the zone, RFC 1035 5.1). A record
without a TTL has the zone's. Zones moved to the Hetzner Console are served by
the Hetzner Cloud API instead and cannot be changed through this one.

Import from a module as ``from ansible.module_utils.dns_hetzner import
HetznerClient``.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.dns_providers import (
    JsonApiClient,
    ProviderError,
    Record,
    absolute_name,
    canonical,
    checked_value,
    relative_name,
    txt_quoted,
    txt_strings,
)

HETZNER_URL = "https://dns.hetzner.com/api/v1"


class HetznerClient(JsonApiClient):
    """The Hetzner DNS API (dns.hetzner.com/api/v1) with an API token of the DNS Console."""

    provider = "Hetzner DNS"
    default_url = HETZNER_URL
    per_page = 100

    def __init__(self, token: str, base_url: str = "", **options: Any) -> None:
        super().__init__(token, base_url, **options)
        self._zone_ttl: dict[str, int] = {}
        # The API lists a zone's records only as a whole, and its rate limit is
        # low: each zone is read once per client and kept up to date with the
        # changes this client makes (``forget`` reads it again next time).
        self._cache: dict[str, list[dict[str, Any]]] = {}

    def forget(self) -> None:
        """Read every zone again at its next use."""
        self._cache.clear()

    def _headers(self) -> dict[str, str]:
        return {"Auth-API-Token": self._token}

    def _error(self, status: int, payload: Any, what: str) -> ProviderError:
        message = ""
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict) and error.get("message"):
                message = str(error["message"])
            elif payload.get("message"):
                message = str(payload["message"])
        detail = f"{message} (HTTP {status})" if message else f"HTTP {status}"
        return ProviderError(self._scrub(f"Hetzner DNS: {detail} {what}"))

    def _ok(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        status, payload = self._call(method, path, query=query, body=body, what=what)
        if not 200 <= status < 300:
            raise self._error(status, payload, what)
        return payload

    def zone_id(self, zone: str) -> str:
        zone = absolute_name(zone).rstrip(".")
        if zone not in self._zones:
            what = f"for zone {zone}"
            status, payload = self._call("GET", "/zones", query={"name": zone}, what=what)
            if status == 404:
                raise ProviderError(
                    f"Hetzner DNS: no zone {zone} in the DNS Console of this token"
                    " (a zone moved to the Hetzner Console is served by the Cloud API instead)"
                )
            if not 200 <= status < 300 or not isinstance(payload, dict):
                raise self._error(status, payload, what)
            found = [z for z in payload.get("zones") or [] if z.get("name") == zone]
            if len(found) != 1:
                raise ProviderError(
                    f"Hetzner DNS: {len(found)} zones are named {zone}; expected one"
                )
            self._zones[zone] = str(found[0]["id"])
            self._zone_ttl[zone] = int(found[0].get("ttl") or 86400)
        return self._zones[zone]

    def _zone_records(self, zone: str, what: str) -> list[dict[str, Any]]:
        zone_id = self.zone_id(zone)
        if zone_id not in self._cache:
            records: list[dict[str, Any]] = []
            page = 1
            while True:
                payload = self._ok(
                    "GET",
                    "/records",
                    query={"zone_id": zone_id, "page": page, "per_page": self.per_page},
                    what=what,
                )
                records += payload.get("records") or []
                pagination = (payload.get("meta") or {}).get("pagination") or {}
                if page >= int(pagination.get("last_page") or 1):
                    break
                page += 1
            self._cache[zone_id] = records
        return self._cache[zone_id]

    def _records(self, zone: str, name: str, rtype: str) -> list[dict[str, Any]]:
        relative = relative_name(name, zone)
        rtype = rtype.upper()
        full, origin = absolute_name(name).rstrip("."), absolute_name(zone).rstrip(".")
        records = self._zone_records(zone, f"for {full} {rtype} in zone {origin}")
        return [
            r
            for r in records
            if str(r.get("name", "")).lower() == relative and r.get("type") == rtype
        ]

    def rrset(self, zone: str, name: str, rtype: str) -> list[Record]:
        origin = absolute_name(zone).rstrip(".")
        out = []
        for record in self._records(zone, name, rtype):
            value = str(record.get("value", ""))
            try:
                value = canonical(record["type"], value, origin)
            except ValueError:
                value = " ".join(value.split())
            ttl = record.get("ttl")
            out.append(
                Record(
                    value,
                    int(ttl) if ttl is not None else self._zone_ttl[origin],
                    str(record["id"]),
                )
            )
        return out

    def _value(self, rtype: str, value: str) -> str:
        norm = checked_value(self.provider, rtype, value)
        return txt_quoted(txt_strings(norm)) if rtype == "TXT" else norm

    def add(self, zone: str, name: str, rtype: str, value: str, ttl: int) -> str:
        rtype = rtype.upper()
        body = {
            "zone_id": self.zone_id(zone),
            "type": rtype,
            "name": relative_name(name, zone),
            "value": self._value(rtype, value),
            "ttl": ttl,
        }
        full, origin = absolute_name(name).rstrip("."), absolute_name(zone).rstrip(".")
        what = f"adding {full} {rtype} {value} to zone {origin}"
        zone_records = self._zone_records(zone, what)
        payload = self._ok("POST", "/records", body=body, what=what)
        zone_records.append(payload["record"])
        return str(payload["record"]["id"])

    def delete(self, zone: str, name: str, rtype: str, value: str) -> int:
        deleted = 0
        for record_id, what in self._deletions(zone, name, rtype.upper(), value):
            status, payload = self._call("DELETE", f"/records/{record_id}", what=what)
            if not (200 <= status < 300 or status == 404):
                raise self._error(status, payload, what)
            cached = self._cache[self.zone_id(zone)]
            cached[:] = [r for r in cached if str(r["id"]) != record_id]
            deleted += 1
        return deleted

    def set_ttl(self, zone: str, name: str, rtype: str, ttl: int) -> int:
        changed = 0
        for record in self._records(zone, name, rtype):
            if record.get("ttl") != ttl:
                body = {k: record[k] for k in ("zone_id", "type", "name", "value")}
                payload = self._ok(
                    "PUT",
                    f"/records/{record['id']}",
                    body={**body, "ttl": ttl},
                    what=f"changing the TTL of {name} {rtype}",
                )
                record.clear()
                record.update(payload["record"])
                changed += 1
        return changed
