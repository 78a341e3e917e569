#!/usr/bin/python
"""Ansible module: publish and remove the TXT values of ACME DNS-01 challenges.

The values go out through the same providers as the dns_records role
(module_utils/dns_backends.py), value by value: other values at the same
``_acme-challenge`` name (another host's order for the same name, a second
ACME client) are kept, and removal takes away only the values given. The
values are short-lived and are never part of the dns_records ownership state.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acme_dns_challenge
short_description: Publish and remove the TXT values of ACME DNS-01 challenges
description:
  - Publishes the TXT values an ACME CA asks for in DNS-01 challenges (RFC 8555 8.4) through
    RFC 2136 (nsupdate), Route 53, Cloudflare or Hetzner DNS, the providers of
    M(dns_rrset_sync), and removes them again after validation.
  - Value by value; other TXT values at the same name are kept, in both directions.
  - A CNAME at the challenge name (C(_acme-challenge.host CNAME host.acme.example.net), the
    usual way to hand DNS-01 to a zone with an API) is followed, once, at the provider.
  - After publishing, waits until every authoritative server of the zone (or every server in
    O(nameservers)) answers with every value, so the CA's validation does not meet a
    secondary that has not got the change yet.
  - Run it on the controller (C(delegate_to) V(localhost)); the credentials stay there.
version_added: "1.0.0"
options:
  provider:
    description: Where the zone is served; see M(dns_rrset_sync) for what each one does.
    type: str
    choices: [cloudflare, hetzner, nsupdate, route53]
    required: true
  challenges:
    description:
      - The challenges, as C(acme_certificate) returns them in C(challenge_data_dns), a dict
        from each record name (C(_acme-challenge.<name>), final dot optional) to a list of
        TXT values.
    type: dict
    required: true
  state:
    description: V(present) publishes the values, V(absent) removes them.
    type: str
    choices: [present, absent]
    default: present
  zones:
    description:
      - Zones the names may be in; the longest one that contains a name is its zone.
      - A name in none of them has its zone found through DNS (the SOA record, asked through
        O(nameservers) or the system resolver).
    type: list
    elements: str
    default: []
  ttl:
    description: The TTL of the values added, in seconds.
    type: int
    default: 60
  follow_cname:
    description: Publish at the target of a CNAME found at the challenge name (at the provider).
    type: bool
    default: true
  nameservers:
    description:
      - Servers to check the values at, each C(ip) or C(ip:port); all must answer with every
        value. By default the authoritative servers of each zone (its NS records), found
        through the system resolver.
    type: list
    elements: str
    default: []
  authoritative_port:
    description: The port the authoritative servers are asked on (53; another for tests).
    type: int
    default: 53
  propagation_timeout:
    description:
      - Seconds to wait, after publishing, until the servers answer with every value; the
        task fails with the servers still missing values when it runs out. V(0) does not
        check.
    type: float
    default: 120
  server:
    description: nsupdate, the primary server that takes the updates.
    type: str
  port:
    description: nsupdate, the primary's port.
    type: int
    default: 53
  key_name:
    description: nsupdate, the TSIG key name (RFC 8945).
    type: str
    default: ""
  key_secret:
    description: nsupdate, the TSIG secret, base64.
    type: str
    default: ""
  key_algorithm:
    description: nsupdate, the TSIG algorithm.
    type: str
    default: hmac-sha256
  timeout:
    description: Seconds for each query, update and API request.
    type: float
    default: 10
  endpoint_url:
    description: route53, the API endpoint; empty for AWS.
    type: str
    default: ""
  region:
    description: route53, the region of the API connection.
    type: str
    default: us-east-1
  access_key:
    description: route53, the access key id; empty uses the usual AWS credential chain.
    type: str
    default: ""
  secret_key:
    description: route53, the secret access key.
    type: str
    default: ""
  wait:
    description: route53, wait until the change is in sync (INSYNC) before checking.
    type: bool
    default: true
  wait_timeout:
    description: route53, the longest wait for the change, in seconds.
    type: int
    default: 300
  api_token:
    description: cloudflare and hetzner, the API token.
    type: str
    default: ""
  api_url:
    description:
      - cloudflare and hetzner, the API's base URL; empty for the provider's public API
        (tests point it at a local stand-in).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: Reads the provider and says what would change; sends nothing and does not wait.
  diff_mode:
    support: none
requirements:
  - dnspython
  - boto3 (for O(provider=route53))
author:
  - Estafeta
"""

EXAMPLES = r"""
- name: Ask for a certificate
  community.crypto.acme_certificate:
    challenge: dns-01
    # ...
  register: order

- name: Publish the challenges
  acme_dns_challenge:
    provider: nsupdate
    server: 192.0.2.53
    key_name: estafeta-update
    key_secret: "{{ vault_tsig_secret }}"
    zones: [example.org]
    challenges: "{{ order.challenge_data_dns }}"
  delegate_to: localhost
  no_log: true
"""

RETURN = r"""
records:
  description: Each challenge name, where it was published, and what changed there.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: The challenge name., type: str}
    target: {description: Where the values went (the CNAME target or the name)., type: str}
    zone: {description: The zone of the target., type: str}
    added: {description: TXT values added., type: list, elements: str}
    removed: {description: TXT values removed., type: list, elements: str}
waited:
  description: Seconds spent waiting for the servers to answer with the values.
  returned: always
  type: float
"""

# Ansible reads DOCUMENTATION, EXAMPLES and RETURN first: the imports follow them.
import ipaddress  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

DNSPYTHON_IMPORT_ERROR = None
try:
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rdatatype
    import dns.resolver
except ImportError:
    DNSPYTHON_IMPORT_ERROR = traceback.format_exc()

BACKEND_IMPORT_ERROR = None
try:
    from ansible.module_utils.dns_backends import (
        BACKEND_OPTIONS,
        MissingLibrary,
        backend,
        rdata,
    )
    from ansible.module_utils.dns_providers import ProviderError
except ImportError:
    BACKEND_IMPORT_ERROR = traceback.format_exc()
    BACKEND_OPTIONS = {}

    class ProviderError(Exception):  # type: ignore[no-redef]
        """Stands in for dns_providers.ProviderError when module_utils is not there."""


# Seconds between two rounds of checks at the servers.
CHECK_INTERVAL = 1.0


class ChallengeError(Exception):
    """Input or a state the module cannot act on (a message for fail_json)."""


def host(name: str) -> str:
    """A name in lower case, without the final dot."""
    return str(name).strip().rstrip(".").lower()


def zone_of(name: str, zones: list[str]) -> str | None:
    """The longest of ``zones`` that is ``name`` or contains it."""
    found = [z for z in map(host, zones) if z and (name == z or name.endswith("." + z))]
    return max(found, key=len) if found else None


def txt_value(value: str) -> Any:
    """A challenge value (base64url, RFC 8555 8.4) as one TXT character-string."""
    text = str(value)
    if not text or any(c in text for c in '"\\') or not text.isascii() or not text.isprintable():
        raise ChallengeError(f"{text!r} is not a DNS-01 challenge value (base64url)")
    return rdata("TXT", f'"{text}"')


def nameserver(text: str, default_port: int) -> tuple[str, int]:
    text = str(text).strip()
    address, port = text, str(default_port)
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif text.count(":") == 1:
        address, port = text.split(":")
    try:
        return str(ipaddress.ip_address(address)), int(port)
    except ValueError:
        raise ChallengeError(f"nameservers: {text!r} is not an IP address or ip:port") from None


class Challenges:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        params = module.params
        self.timeout = float(params["timeout"])
        self.resolver = dns.resolver.Resolver(configure=not params["nameservers"])
        self.servers = [nameserver(s, 53) for s in params["nameservers"]]
        if self.servers:
            self.resolver.nameservers = [a for a, _ in self.servers]
            self.resolver.port = self.servers[0][1]
        self.resolver.lifetime = self.timeout
        self.provider = backend(params)
        self.wanted: list[dict[str, Any]] = []
        for name, values in (params["challenges"] or {}).items():
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not values:
                raise ChallengeError(f"challenges: {name} needs a list of TXT values")
            self.wanted.append({"name": host(name), "values": [txt_value(v) for v in values]})

    def zone(self, name: str) -> str:
        found = zone_of(name, self.module.params["zones"])
        if found:
            return found
        try:
            return host(dns.resolver.zone_for_name(name, resolver=self.resolver).to_text())
        except dns.exception.DNSException as exc:
            raise ChallengeError(
                f"{name} is in none of the zones {self.module.params['zones']} and its zone"
                f" cannot be found through DNS ({exc}); list it in zones"
            ) from exc

    def target(self, name: str) -> tuple[str, str]:
        """Where the values of ``name`` go: (name or CNAME target, its zone)."""
        zone = self.zone(name)
        if not self.module.params["follow_cname"]:
            return name, zone
        _, cname = self.provider.read(zone, name, "CNAME")
        if not cname:
            return name, zone
        target = host(cname[0].target.to_text())
        return target, self.zone(target)

    def run(self) -> dict[str, Any]:
        present = self.module.params["state"] == "present"
        records, changes = [], []
        for item in self.wanted:
            target, zone = self.target(item["name"])
            ttl, before = self.provider.read(zone, target, "TXT")
            if present:
                after = before + [v for v in item["values"] if v not in before]
            else:
                after = [v for v in before if v not in item["values"]]
            added = [v.to_text() for v in after if v not in before]
            removed = [v.to_text() for v in before if v not in after]
            item.update(target=target, zone=zone)
            records.append(
                {
                    "name": item["name"],
                    "target": target,
                    "zone": zone,
                    "added": added,
                    "removed": removed,
                }
            )
            if added or removed:
                changes.append(
                    {
                        "zone": zone,
                        "name": target,
                        "type": "TXT",
                        "before": before,
                        "after": after,
                        # Values others published keep their TTL (Route 53 writes the set).
                        "ttl": ttl if ttl is not None else self.module.params["ttl"],
                        "before_ttl": ttl,
                        "exclusive": False,
                    }
                )
        if changes and not self.module.check_mode:
            self.provider.apply(changes)
        waited = 0.0
        timeout = float(self.module.params["propagation_timeout"])
        if present and timeout > 0 and not self.module.check_mode:
            waited = self.wait(timeout)
        return {"changed": bool(changes), "records": records, "waited": round(waited, 1)}

    # -- propagation -------------------------------------------------------------------------

    def zone_servers(self, zone: str) -> list[tuple[str, int]]:
        if self.servers:
            return self.servers
        port = int(self.module.params["authoritative_port"])
        addresses: list[tuple[str, int]] = []
        try:
            for ns in self.resolver.resolve(zone + ".", "NS", search=False):
                for rdtype in ("A", "AAAA"):
                    answer = self.resolver.resolve(
                        ns.target, rdtype, raise_on_no_answer=False, search=False
                    )
                    addresses += [(r.address, port) for r in answer.rrset or []]
        except dns.exception.DNSException as exc:
            raise ChallengeError(f"cannot find the authoritative servers of {zone}: {exc}") from exc
        if not addresses:
            raise ChallengeError(f"no address for the NS records of {zone}")
        return addresses

    def served(self, server: tuple[str, int], name: str) -> list[Any] | str:
        """The TXT values ``server`` answers for ``name``, or why it did not answer."""
        query = dns.message.make_query(name + ".", "TXT")
        query.flags &= ~dns.flags.RD
        try:
            answer, _ = dns.query.udp_with_fallback(
                query, server[0], port=server[1], timeout=self.timeout
            )
        except (OSError, dns.exception.DNSException) as exc:
            return f"no answer ({exc})"
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.TXT and host(rrset.name.to_text()) == name:
                return list(rrset)
        return []

    def lacking(self, server: tuple[str, int], name: str, values: list[Any]) -> str:
        """What ``server`` lacks of ``values`` at ``name`` ("" when it has them all)."""
        got = self.served(server, name)
        if isinstance(got, str):
            return got
        missing = [v.to_text() for v in values if v not in got]
        return "lacks " + ", ".join(missing) if missing else ""

    def wait(self, timeout: float) -> float:
        start = time.monotonic()
        servers = {item["zone"]: self.zone_servers(item["zone"]) for item in self.wanted}
        while True:
            missing = []
            for item in self.wanted:
                for server in servers[item["zone"]]:
                    why = self.lacking(server, item["target"], item["values"])
                    if why:
                        missing.append(f"{server[0]}:{server[1]} {item['target']} TXT: {why}")
            elapsed = time.monotonic() - start
            if not missing:
                return elapsed
            if elapsed >= timeout:
                raise ChallengeError(
                    f"after {elapsed:.0f} s the DNS-01 values are not served everywhere (the CA"
                    f" could not validate): {'; '.join(missing)}"
                )
            time.sleep(min(CHECK_INTERVAL, max(0.0, timeout - elapsed)))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "provider": {
                "type": "str",
                "required": True,
                "choices": ["cloudflare", "hetzner", "nsupdate", "route53"],
            },
            "challenges": {"type": "dict", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "zones": {"type": "list", "elements": "str", "default": []},
            "ttl": {"type": "int", "default": 60},
            "follow_cname": {"type": "bool", "default": True},
            "nameservers": {"type": "list", "elements": "str", "default": []},
            "authoritative_port": {"type": "int", "default": 53},
            "propagation_timeout": {"type": "float", "default": 120},
            **BACKEND_OPTIONS,
        },
        supports_check_mode=True,
    )
    if DNSPYTHON_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("dnspython"), exception=DNSPYTHON_IMPORT_ERROR)
    if BACKEND_IMPORT_ERROR is not None:
        module.fail_json(
            msg="the module_utils dns_backends, dns_cloudflare, dns_hetzner and dns_providers"
            " are missing",
            exception=BACKEND_IMPORT_ERROR,
        )
    try:
        result = Challenges(module).run()
    except MissingLibrary as exc:
        module.fail_json(msg=missing_required_lib(exc.library), exception=exc.trace)
    except (ChallengeError, ProviderError, dns.exception.DNSException, ValueError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
