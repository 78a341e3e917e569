"""The Cloudflare API v4 client ("DNS Records for a Zone"); see dns_providers.py for the
interface, the retries and the handling of secrets.

Cloudflare takes full names without the final dot; MX as ``content`` plus
``priority``; SRV, TLSA and CAA as ``data``; TXT content as quoted
character-strings of at most 255 octets (content without quotes, from older
records or the dashboard, is read as one text). Records are created "DNS only"
(``proxied: false``): a proxied name answers with Cloudflare's HTTP proxy,
which takes no mail.

Import from a module as ``from ansible.module_utils.dns_cloudflare import
CloudflareClient``.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.dns_providers import (
    NAME_TYPES,
    JsonApiClient,
    ProviderError,
    Record,
    absolute_name,
    canonical,
    checked_value,
    relative_name,
    split255,
    txt_quoted,
    txt_strings,
    txt_text,
)

CLOUDFLARE_URL = "https://api.cloudflare.com/client/v4"
# Cloudflare's error codes that mean the record is already there.
CF_RECORD_EXISTS = 81057
CF_IDENTICAL_RECORD_EXISTS = 81058
# Cloudflare's "Record does not exist."
CF_RECORD_NOT_FOUND = 81044
# Cloudflare's "automatic" TTL, which is 300 seconds.
CF_TTL_AUTOMATIC = 1
CF_TTL_AUTOMATIC_SECONDS = 300


def _cf_name(name: str) -> str:
    """A domain name as Cloudflare writes it: without the final dot (the root stays ".")."""
    return name.rstrip(".") or "."


class CloudflareClient(JsonApiClient):
    """Cloudflare API v4, "DNS Records for a Zone". The token needs Zone.DNS edit
    (and Zone read, to find the zone by name)."""

    provider = "Cloudflare"
    default_url = CLOUDFLARE_URL
    per_page = 100

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _error(self, status: int, payload: Any, what: str) -> ProviderError:
        parts = []
        errors = payload.get("errors") if isinstance(payload, dict) else None
        for error in errors or []:
            text = f"{error.get('message', '?')} ({error.get('code', '?')})"
            chain = [
                f"{c.get('message', '?')} ({c.get('code', '?')})"
                for c in error.get("error_chain") or []
            ]
            parts.append(text + (": " + ", ".join(chain) if chain else ""))
        detail = "; ".join(parts) or f"HTTP {status}"
        return ProviderError(self._scrub(f"Cloudflare: {detail} {what}"))

    def _ok(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        status, payload = self._call(method, path, query=query, body=body, what=what)
        if not (200 <= status < 300 and isinstance(payload, dict) and payload.get("success")):
            raise self._error(status, payload, what)
        return payload

    def _pages(self, path: str, query: dict[str, Any], what: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        page = 1
        while True:
            payload = self._ok(
                "GET", path, query={**query, "page": page, "per_page": self.per_page}, what=what
            )
            results += payload.get("result") or []
            info = payload.get("result_info") or {}
            if page >= int(info.get("total_pages") or 1):
                return results
            page += 1

    def zone_id(self, zone: str) -> str:
        zone = absolute_name(zone).rstrip(".")
        if zone not in self._zones:
            what = f"for zone {zone}"
            found = [
                z for z in self._pages("/zones", {"name": zone}, what) if z.get("name") == zone
            ]
            if len(found) != 1:
                raise ProviderError(
                    f"Cloudflare: {len(found)} zones are named {zone} in the accounts this"
                    " token can read; expected one (is the zone in Cloudflare, and may the"
                    " token read it?)"
                )
            self._zones[zone] = str(found[0]["id"])
        return self._zones[zone]

    def _records(self, zone: str, name: str, rtype: str) -> list[dict[str, Any]]:
        full = absolute_name(name).rstrip(".")
        relative_name(full, zone)  # refuses a name outside the zone
        rtype = rtype.upper()
        records = self._pages(
            f"/zones/{self.zone_id(zone)}/dns_records",
            {"name": full, "type": rtype},
            f"for {full} {rtype} in zone {absolute_name(zone).rstrip('.')}",
        )
        return [
            r for r in records if str(r.get("name", "")).lower() == full and r.get("type") == rtype
        ]

    @staticmethod
    def _value(record: dict[str, Any]) -> str:
        """The presentation of a Cloudflare record's data."""
        rtype, content, data = record["type"], str(record.get("content", "")), record.get("data")
        if rtype == "TXT":
            try:
                return txt_text(txt_strings(content, unquoted_is_one_string=True))
            except ValueError:  # content the API let through unbalanced: one string
                return txt_text(split255([content.encode("utf-8")]))
        if isinstance(data, dict):
            keys = {
                "SRV": ("priority", "weight", "port", "target"),
                "TLSA": ("usage", "selector", "matching_type", "certificate"),
            }.get(rtype)
            if keys:
                content = " ".join(str(data[key]) for key in keys)
            elif rtype == "CAA":
                content = (
                    f"{data['flags']} {data['tag']} {txt_quoted([str(data['value']).encode()])}"
                )
        if rtype == "SRV" and not isinstance(data, dict):
            content = f"{record.get('priority', 0)} {content}"
        if rtype == "MX":
            content = f"{record.get('priority', 0)} {content}"
        return canonical(rtype, content)

    @staticmethod
    def _ttl(record: dict[str, Any]) -> int:
        ttl = int(record.get("ttl") or CF_TTL_AUTOMATIC)
        return CF_TTL_AUTOMATIC_SECONDS if ttl == CF_TTL_AUTOMATIC else ttl

    def rrset(self, zone: str, name: str, rtype: str) -> list[Record]:
        return [
            Record(self._value(r), self._ttl(r), str(r["id"]))
            for r in self._records(zone, name, rtype)
        ]

    @staticmethod
    def _body(name: str, rtype: str, value: str, ttl: int) -> dict[str, Any]:
        body: dict[str, Any] = {"type": rtype, "name": name, "ttl": ttl}
        norm = checked_value("Cloudflare", rtype, value)
        fields = norm.split()
        if rtype == "TXT":
            body["content"] = txt_quoted(txt_strings(value))
        elif rtype == "MX":
            body["priority"], body["content"] = int(fields[0]), _cf_name(fields[1])
        elif rtype == "SRV":
            body["data"] = {
                "priority": int(fields[0]),
                "weight": int(fields[1]),
                "port": int(fields[2]),
                "target": _cf_name(fields[3]),
            }
        elif rtype == "TLSA":
            body["data"] = {
                "usage": int(fields[0]),
                "selector": int(fields[1]),
                "matching_type": int(fields[2]),
                "certificate": fields[3],
            }
        elif rtype == "CAA":
            tag_value = txt_strings(norm.split(None, 2)[2])[0].decode("utf-8", "replace")
            body["data"] = {"flags": int(fields[0]), "tag": fields[1], "value": tag_value}
        elif rtype in NAME_TYPES:
            body["content"] = _cf_name(norm)
        else:
            body["content"] = norm
        if rtype in ("A", "AAAA", "CNAME"):
            body["proxied"] = False  # the DNS answer must be our data, not Cloudflare's proxy
        return body

    def add(self, zone: str, name: str, rtype: str, value: str, ttl: int) -> str:
        rtype = rtype.upper()
        full = absolute_name(name).rstrip(".")
        relative_name(full, zone)
        origin = absolute_name(zone).rstrip(".")
        what = f"adding {full} {rtype} {value} to zone {origin}"
        body = self._body(full, rtype, value, ttl)
        status, payload = self._call(
            "POST", f"/zones/{self.zone_id(zone)}/dns_records", body=body, what=what
        )
        if 200 <= status < 300 and isinstance(payload, dict) and payload.get("success"):
            return str(payload["result"]["id"])
        codes = (
            {e.get("code") for e in (payload or {}).get("errors") or []}
            if isinstance(payload, dict)
            else set()
        )
        if codes & {CF_RECORD_EXISTS, CF_IDENTICAL_RECORD_EXISTS}:
            wanted = checked_value(self.provider, rtype, value)
            for record in self.rrset(zone, full, rtype):
                if record.value == wanted:
                    return record.id
        raise self._error(status, payload, what)

    def delete(self, zone: str, name: str, rtype: str, value: str) -> int:
        deleted = 0
        for record_id, what in self._deletions(zone, name, rtype.upper(), value):
            status, payload = self._call(
                "DELETE", f"/zones/{self.zone_id(zone)}/dns_records/{record_id}", what=what
            )
            codes = (
                {e.get("code") for e in (payload or {}).get("errors") or []}
                if isinstance(payload, dict)
                else set()
            )
            if not (200 <= status < 300) and CF_RECORD_NOT_FOUND not in codes:
                raise self._error(status, payload, what)
            deleted += 1
        return deleted

    def set_ttl(self, zone: str, name: str, rtype: str, ttl: int) -> int:
        changed = 0
        for record in self._records(zone, name, rtype):
            if self._ttl(record) != ttl:
                self._ok(
                    "PATCH",
                    f"/zones/{self.zone_id(zone)}/dns_records/{record['id']}",
                    body={"ttl": ttl},
                    what=f"changing the TTL of {record['name']} {rtype}",
                )
                changed += 1
        return changed
