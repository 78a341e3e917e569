"""The DNS providers as the modules use them: read one record set, apply value changes.

``library/dns_rrset_sync.py`` (the records of the dns_records role) and
``library/acme_dns_challenge.py`` (the ``_acme-challenge`` TXT values of the
tls role's DNS-01) publish through the same code, so both keep the values
others published at a name and need the same credentials:

- ``Rfc2136``: queries the zone's primary without recursion (RFC 1035) and
  sends RFC 2136 updates, signed with TSIG (RFC 8945) when a key is given;
  values are added and deleted one by one (RFC 2136 2.5.1, 2.5.4);
- ``Route53``: reads a record set and writes it whole (UPSERT or DELETE of the
  set), the only way the API has; boto3 is imported when it is used;
- ``HttpApi``: Cloudflare or Hetzner DNS through the clients in
  ``dns_cloudflare.py`` and ``dns_hetzner.py``, one record value at a time.

Every backend offers ``read(zone, name, rdtype) -> (ttl or None, [rdata])`` and
``apply(changes)``, where a change is a dict with ``zone``, ``name``, ``type``,
``before`` and ``after`` (dnspython rdata lists), ``ttl``, ``before_ttl`` and
``exclusive`` (the set holds only our values, so it may be replaced whole).
Names are absolute without the final dot. Failures raise ``ProviderError``
with a message for fail_json; a missing Python library raises
``MissingLibrary`` (the module turns it into ``missing_required_lib``).

Import from a module as ``from ansible.module_utils.dns_backends import ...``.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsigkeyring
import dns.update
from ansible.module_utils.dns_cloudflare import CloudflareClient
from ansible.module_utils.dns_hetzner import HetznerClient
from ansible.module_utils.dns_providers import ProviderError

# The options of every backend, for a module's argument_spec (the secrets no_log).
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {
    "server": {"type": "str"},
    "port": {"type": "int", "default": 53},
    "key_name": {"type": "str", "default": ""},
    "key_secret": {"type": "str", "default": "", "no_log": True},
    "key_algorithm": {"type": "str", "default": "hmac-sha256"},
    "timeout": {"type": "float", "default": 10},
    "endpoint_url": {"type": "str", "default": ""},
    "region": {"type": "str", "default": "us-east-1"},
    "access_key": {"type": "str", "default": "", "no_log": True},
    "secret_key": {"type": "str", "default": "", "no_log": True},
    "wait": {"type": "bool", "default": True},
    "wait_timeout": {"type": "int", "default": 300},
    "api_token": {"type": "str", "default": "", "no_log": True},
    "api_url": {"type": "str", "default": ""},
}


class MissingLibrary(Exception):
    """A Python library a backend needs is not installed on the controller."""

    def __init__(self, library: str) -> None:
        super().__init__(library)
        self.library = library
        self.trace = traceback.format_exc()


def absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(str(name).strip().rstrip(".") + ".")


def rdata(rdtype: str, text: str) -> Any:
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
    )


class Rfc2136:
    """Reads from and updates the zone's primary (RFC 1035 queries, RFC 2136 updates)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        if not params.get("server"):
            raise ProviderError("server is required with provider nsupdate")
        self.server = params["server"]
        self.port = params["port"]
        self.timeout = params["timeout"]
        self.keyring = None
        self.keyname = None
        if params["key_name"]:
            self.keyname = dns.name.from_text(params["key_name"])
            self.keyring = dns.tsigkeyring.from_text({params["key_name"]: params["key_secret"]})
        self.algorithm = dns.name.from_text(params["key_algorithm"])

    def read(self, zone: str, name: str, rdtype: str) -> tuple[int | None, list[Any]]:
        query = dns.message.make_query(absolute(name), rdtype)
        query.flags &= ~dns.flags.RD
        try:
            answer = dns.query.tcp(query, self.server, port=self.port, timeout=self.timeout)
        except (OSError, dns.exception.DNSException) as exc:
            raise ProviderError(
                f"cannot query {name} {rdtype} at {self.server}:{self.port}: {exc}"
            ) from exc
        if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise ProviderError(
                f"{self.server}:{self.port} answered {dns.rcode.to_text(answer.rcode())} to"
                f" {name} {rdtype}: is it the primary of {zone}?"
            )
        if not answer.flags & dns.flags.AA:
            raise ProviderError(f"{self.server}:{self.port} is not authoritative for {name}")
        try:
            rrset = answer.find_rrset(
                answer.answer, absolute(name), dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
            )
        except KeyError:
            return None, []
        return rrset.ttl, list(rrset)

    def apply(self, changes: list[dict[str, Any]]) -> None:
        zones: dict[str, list[dict[str, Any]]] = {}
        for change in changes:
            zones.setdefault(change["zone"], []).append(change)
        for zone, items in zones.items():
            update = dns.update.UpdateMessage(
                absolute(zone),
                keyring=self.keyring,
                keyname=self.keyname,
                keyalgorithm=self.algorithm,
            )
            for change in items:
                name = absolute(change["name"])
                ttl_changes = change["before"] and change["before_ttl"] != change["ttl"]
                if change["type"] == "CNAME" or (change["exclusive"] and ttl_changes):
                    # A record set that holds only our values: replaced as a whole.
                    update.delete(name, change["type"])
                    removed, added = [], change["after"]
                else:
                    removed = [v for v in change["before"] if v not in change["after"]]
                    added = [v for v in change["after"] if v not in change["before"]]
                for value in removed:
                    update.delete(name, value)
                for value in added:
                    update.add(name, change["ttl"], value)
            try:
                response = dns.query.tcp(update, self.server, port=self.port, timeout=self.timeout)
            except (OSError, dns.exception.DNSException) as exc:
                raise ProviderError(f"the update of {zone} failed: {exc}") from exc
            if response.rcode() != dns.rcode.NOERROR:
                raise ProviderError(
                    f"{self.server}:{self.port} refused the update of {zone}:"
                    f" {dns.rcode.to_text(response.rcode())}"
                )


class Route53:
    """Reads record sets and writes whole record sets (read-modify-write) with boto3."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        try:
            import boto3
        except ImportError:
            raise MissingLibrary("boto3") from None
        options: dict[str, Any] = {"region_name": params["region"]}
        if params["endpoint_url"]:
            options["endpoint_url"] = params["endpoint_url"]
        if params["access_key"]:
            options["aws_access_key_id"] = params["access_key"]
            options["aws_secret_access_key"] = params["secret_key"]
        self.client = boto3.session.Session().client("route53", **options)
        self.params = params
        self.zone_ids: dict[str, str] = {}

    def zone_id(self, zone: str) -> str:
        if zone not in self.zone_ids:
            found = self._call(self.client.list_hosted_zones_by_name, DNSName=zone)["HostedZones"]
            ids = [
                z["Id"]
                for z in found
                if z["Name"].lower() == zone + "." and not z.get("Config", {}).get("PrivateZone")
            ]
            if len(ids) != 1:
                raise ProviderError(
                    f"{len(ids)} public hosted zones are named {zone}; expected one"
                )
            self.zone_ids[zone] = ids[0]
        return self.zone_ids[zone]

    @staticmethod
    def _call(method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as exc:
            if type(exc).__module__.startswith("botocore"):
                raise ProviderError(f"Route 53: {exc}") from exc
            raise

    def read(self, zone: str, name: str, rdtype: str) -> tuple[int | None, list[Any]]:
        answer = self._call(
            self.client.list_resource_record_sets,
            HostedZoneId=self.zone_id(zone),
            StartRecordName=name + ".",
            StartRecordType=rdtype,
            MaxItems="1",
        )
        for rrset in answer["ResourceRecordSets"]:
            if rrset["Name"].lower().rstrip(".") != name or rrset["Type"] != rdtype:
                continue
            if "SetIdentifier" in rrset or "AliasTarget" in rrset:
                raise ProviderError(f"{name} {rdtype} is an alias or routing-policy record set")
            return rrset.get("TTL"), [rdata(rdtype, r["Value"]) for r in rrset["ResourceRecords"]]
        return None, []

    def apply(self, changes: list[dict[str, Any]]) -> None:
        zones: dict[str, list[dict[str, Any]]] = {}
        for change in changes:
            if change["after"]:
                action, ttl, values = "UPSERT", change["ttl"], change["after"]
            else:
                action, ttl, values = "DELETE", change["before_ttl"], change["before"]
            zones.setdefault(change["zone"], []).append(
                {
                    "Action": action,
                    "ResourceRecordSet": {
                        "Name": change["name"] + ".",
                        "Type": change["type"],
                        "TTL": ttl,
                        "ResourceRecords": [{"Value": v.to_text()} for v in values],
                    },
                }
            )
        for zone, batch in zones.items():
            answer = self._call(
                self.client.change_resource_record_sets,
                HostedZoneId=self.zone_id(zone),
                ChangeBatch={"Changes": batch},
            )
            if self.params["wait"]:
                delay = 5
                self._call(
                    self.client.get_waiter("resource_record_sets_changed").wait,
                    Id=answer["ChangeInfo"]["Id"],
                    WaiterConfig={
                        "Delay": delay,
                        "MaxAttempts": max(1, self.params["wait_timeout"] // delay),
                    },
                )


class HttpApi:
    """Cloudflare or Hetzner DNS through their HTTP APIs, one record value at a time.

    Both APIs hold a record set as separate records, so values others published
    are never touched: the values to remove are deleted one by one, the values
    to add are added at the change's TTL. A record set that holds only our
    values and gets a new TTL has it set on every record. A CNAME (one per name,
    RFC 1034 3.6.2) is deleted first and then added, as the APIs refuse a second
    CNAME at a name.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        provider = params["provider"]
        if not params["api_token"]:
            raise ProviderError(f"api_token is required with provider {provider}")
        client = CloudflareClient if provider == "cloudflare" else HetznerClient
        self.client = client(params["api_token"], params["api_url"], timeout=params["timeout"])

    def read(self, zone: str, name: str, rdtype: str) -> tuple[int | None, list[Any]]:
        records = self.client.rrset(zone, name, rdtype)
        if not records:
            return None, []
        values: list[Any] = []
        for record in records:
            value = rdata(rdtype, record.value)
            if value not in values:
                values.append(value)
        return records[0].ttl, values

    def apply(self, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            zone, name, rdtype = change["zone"], change["name"], change["type"]
            before, after = change["before"], change["after"]
            if rdtype == "CNAME":
                removed, added = list(before), list(after)
            else:
                removed = [v for v in before if v not in after]
                added = [v for v in after if v not in before]
            for value in removed:
                self.client.delete(zone, name, rdtype, value.to_text())
            for value in added:
                self.client.add(zone, name, rdtype, value.to_text(), change["ttl"])
            kept = [v for v in after if v not in added]
            if change["exclusive"] and kept and change["before_ttl"] != change["ttl"]:
                self.client.set_ttl(zone, name, rdtype, change["ttl"])


BACKENDS: dict[str, type[Rfc2136] | type[Route53] | type[HttpApi]] = {
    "cloudflare": HttpApi,
    "hetzner": HttpApi,
    "nsupdate": Rfc2136,
    "route53": Route53,
}


def backend(params: Mapping[str, Any]) -> Rfc2136 | Route53 | HttpApi:
    """The backend of ``params["provider"]`` (a module's params, BACKEND_OPTIONS)."""
    return BACKENDS[params["provider"]](params)
