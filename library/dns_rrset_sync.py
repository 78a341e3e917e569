#!/usr/bin/python
"""Ansible module: publish DNS records value by value, keeping the values others own.

Ownership and crash ordering
----------------------------
The module reads every record set it is about to touch from the provider
(the zone's primary for RFC 2136, the hosted zone for Route 53, the zone's
records through the Cloudflare or Hetzner DNS API), plans the
record-level change against the ownership state it is given (the values this
host published before, with the time each was first published), sends the
change, and returns the new state. The role writes that state on the mail host
only after the module has returned, so:

- a crash or failure before or during the send leaves the old state: values
  we added and still want are ours again on the next run (they are desired),
  values we meant to remove are still listed as ours and are removed then;
- a lost state file makes every existing value look foreign: nothing is
  removed that should not be (at worst a stale value stays until removed by
  hand), and a retiring DKIM key waits a full grace period again.

Removing too little is the failure mode; removing someone else's value is not.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dns_rrset_sync
short_description: Publish DNS records value by value, keeping values other parties own
description:
  - Reads the record sets it manages from the provider, adds the values in O(records) that
    are missing and removes only the values this host published before (O(state)) and no
    longer wants. Values that others published in the same record set are kept, such as
    C(google-site-verification=) TXT values at the apex.
  - The SPF value (O(records[].kind=spf)) is merged with a foreign SPF value at the same name;
    its mechanisms are kept, so there is one C(v=spf1) value (RFC 7208 3.2, 4.5). A DMARC
    value (O(records[].kind=dmarc)) keeps foreign C(rua)/C(ruf) addresses and tags that are
    not set here. Values of kind V(version) replace other TXT values with the same C(v=) tag
    (MTA-STS, TLS-RPT; one such record per name). A CNAME replaces the name's CNAME.
  - DKIM key records this host published and no longer wants are removed only once every
    wanted DKIM key of the same domain has been published for O(dkim_retire_after).
  - Returns the record-level difference as a diff (before and after lines per changed
    record set) and the new ownership state for the caller to store.
version_added: "1.0.0"
options:
  provider:
    description:
      - V(nsupdate) sends RFC 2136 updates (with TSIG); V(route53) uses the Route 53 API.
      - V(cloudflare) uses the Cloudflare API v4 and V(hetzner) the Hetzner DNS API, value by
        value (records are added and deleted one by one; a CNAME is deleted, then added).
    type: str
    choices: [cloudflare, hetzner, nsupdate, route53]
    required: true
  records:
    description: The records wanted.
    type: list
    elements: dict
    required: true
    suboptions:
      zone:
        description: The zone that holds the name.
        type: str
        required: true
      name:
        description: The owner name (absolute, final dot optional).
        type: str
        required: true
      type:
        description: The record type.
        type: str
        required: true
      ttl:
        description: The TTL, used when the record set holds only values of this host.
        type: int
        default: 3600
      values:
        description: The record data in presentation format (TXT quoted).
        type: list
        elements: str
        required: true
      kind:
        description: How the values combine with the values already published (see above).
        type: str
        choices: [values, spf, dmarc, version, cname]
        default: values
  state:
    description:
      - The ownership state the last run returned (RV(state)); empty on the first run.
    type: dict
    default: {}
  dkim_retire_after:
    description:
      - How long every wanted DKIM key of a domain must have been published before a DKIM key
        record this host published and no longer wants is removed. A number of seconds or a
        duration such as C(7d), C(12h), C(30m), C(2w).
    type: str
    default: 7d
  now:
    description: The current time (ISO 8601); default the clock. For tests.
    type: str
  server:
    description: nsupdate, the primary server (an IP address).
    type: str
  port:
    description: nsupdate, its port.
    type: int
    default: 53
  key_name:
    description: nsupdate, the TSIG key name; empty sends unsigned updates.
    type: str
    default: ""
  key_secret:
    description: nsupdate, the TSIG secret (base64).
    type: str
    default: ""
  key_algorithm:
    description: nsupdate, the TSIG algorithm.
    type: str
    default: hmac-sha256
  timeout:
    description: Seconds to wait for each DNS query or update, or each API request.
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
    description: route53, wait until the change is in sync.
    type: bool
    default: true
  wait_timeout:
    description: route53, the longest wait for the change, in seconds.
    type: int
    default: 300
  api_token:
    description:
      - cloudflare and hetzner, the API token. Cloudflare needs a token with the permission
        Zone DNS Edit; Hetzner an API token of the DNS Console.
    type: str
    default: ""
  api_url:
    description:
      - cloudflare and hetzner, the API's base URL; empty for the provider's public API
        (C(https://api.cloudflare.com/client/v4), C(https://dns.hetzner.com/api/v1)).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: Reads the provider and plans; sends nothing.
  diff_mode:
    support: full
    details: One line per record, C(NAME TTL IN TYPE DATA), of the record sets that change.
  platform:
    platforms: posix
requirements:
  - dnspython >= 2.0
  - boto3 (for O(provider=route53))
notes:
  - Run it on the controller (C(delegate_to) V(localhost)). Give the task C(no_log) when it
    carries a TSIG secret, AWS keys or an API token, and show RV(diff) with a separate task.
  - O(provider=cloudflare) and O(provider=hetzner) use the module_utils C(dns_cloudflare) and
    C(dns_hetzner) (standard library only). Error messages never hold the API token.
author:
  - Estafeta contributors
"""

EXAMPLES = r"""
- name: Publish the records
  dns_rrset_sync:
    provider: nsupdate
    server: 192.0.2.53
    key_name: estafeta-update
    key_secret: "{{ vault_tsig_secret }}"
    state: "{{ previous_state }}"
    records:
      - {zone: example.org, name: example.org, type: TXT, kind: spf, values: ['"v=spf1 mx -all"']}
      - {zone: example.org, name: example.org, type: MX, values: ["10 mx1.example.org."]}
  delegate_to: localhost
  no_log: true
  register: published
"""

RETURN = r"""
changes:
  description: The record sets that change (or would, in check mode).
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: The owner name., type: str}
    type: {description: The record type., type: str}
    added: {description: Record lines added., type: list, elements: str}
    removed: {description: Record lines removed., type: list, elements: str}
diff:
  description: C(before) and C(after), the lines of every record set that changes.
  returned: always
  type: dict
state:
  description: The new ownership state, to pass as O(state) next time.
  returned: always
  type: dict
retiring:
  description: DKIM records kept for their grace period, with the time they may go.
  returned: always
  type: list
  elements: dict
"""

import datetime  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

DNSPYTHON_IMPORT_ERROR = None
try:
    import dns.exception
    import dns.name
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
except ImportError:
    DNSPYTHON_IMPORT_ERROR = traceback.format_exc()

# The providers (module_utils/dns_backends.py and the clients it uses; AnsiballZ
# ships them with the module).
BACKEND_IMPORT_ERROR = None
try:
    from ansible.module_utils.dns_backends import (
        BACKEND_OPTIONS,
        BACKENDS,
        MissingLibrary,
        absolute,
        backend,
        rdata,
    )
    from ansible.module_utils.dns_providers import ProviderError
except ImportError:
    BACKEND_IMPORT_ERROR = traceback.format_exc()
    BACKEND_OPTIONS, BACKENDS = {}, {}

    class ProviderError(Exception):  # type: ignore[no-redef]
        """Stands in for dns_providers.ProviderError when module_utils is not there."""


STATE_VERSION = 1
_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Mechanisms that cost a DNS lookup (RFC 7208 4.6.4), at most 10.
_SPF_LOOKUP = re.compile(r"[+?~-]?(a|mx|include|exists|ptr)([:/]|\Z)|redirect=", re.IGNORECASE)


class PlanError(Exception):
    """Input the module cannot act on (a message for fail_json)."""


def parse_duration(text: str) -> int:
    match = _DURATION.match(str(text))
    if not match:
        raise PlanError(f"{text!r} is not a duration such as 3600, 45s, 30m, 12h, 7d or 2w")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_time(text: str) -> float:
    value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def format_time(stamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(stamp), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def txt_text(value: Any) -> str:
    """The text of a TXT rdata: its strings joined (RFC 7208 3.3, RFC 7489 6.4)."""
    return b"".join(value.strings).decode("utf-8", "replace")


def txt_rdata(text: str) -> Any:
    """A TXT rdata of ``text`` in strings of at most 255 octets (RFC 1035 3.3.14)."""
    data = text.encode("utf-8")
    strings = [data[start : start + 255] for start in range(0, len(data), 255)] or [b""]
    quoted = " ".join(
        '"' + s.decode("utf-8").replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings
    )
    return rdata("TXT", quoted)


def line(name: str, ttl: int, rdtype: str, value: Any) -> str:
    return f"{name}. {ttl} IN {rdtype} {value.to_text()}"


# -- merging single-valued records ----------------------------------------------------------


def spf_terms(text: str) -> list[str]:
    return text.split()[1:]


def _spf_key(term: str) -> str:
    """A mechanism without its qualifier, lower case (the same mechanism with another
    qualifier is the same mechanism for merging)."""
    term = term.lower()
    return term[1:] if term[:1] in "+-~?" else term


def merge_spf(
    ours: str, foreign_values: list[str], previous_own: list[str]
) -> tuple[str, list[str]]:
    """Our SPF value with the foreign mechanisms of ``foreign_values`` kept.

    Our mechanisms come first, then the foreign ones not seen before, then our
    modifiers and our ``all``. A foreign mechanism this host published last time
    (``previous_own``) and no longer wants is dropped; foreign ``all`` and
    ``redirect=`` give way to ours (RFC 7208 6.1: ``redirect`` is ignored when
    the record has ``all``). Returns the value and our own terms (for the state).
    """
    own = spf_terms(ours)
    own_keys = {_spf_key(t) for t in own}
    dropped = {_spf_key(t) for t in previous_own}
    mechanisms = [t for t in own if "=" not in t and _spf_key(t) != "all"]
    modifiers = [t for t in own if "=" in t]
    tail = [t for t in own if _spf_key(t) == "all"]
    seen = set(own_keys)
    for value in foreign_values:
        for term in spf_terms(value):
            key = _spf_key(term)
            if key in seen or key in dropped or key == "all" or key.startswith("redirect="):
                continue
            seen.add(key)
            if key.startswith("exp="):
                if not any(m.lower().startswith("exp=") for m in modifiers):
                    modifiers.append(term)
            elif "=" not in key:
                mechanisms.append(term)
    return " ".join(["v=spf1", *mechanisms, *modifiers, *tail]), own


def _dmarc_tags(text: str) -> list[tuple[str, str]]:
    tags = []
    for part in text.split(";"):
        tag, eq, value = part.partition("=")
        if eq and tag.strip():
            tags.append((tag.strip().lower(), " ".join(value.split())))
    return tags


def _dmarc_terms(text: str) -> list[str]:
    terms = []
    for tag, value in _dmarc_tags(text):
        if tag in ("rua", "ruf"):
            terms += [f"{tag}={uri.strip()}" for uri in value.split(",") if uri.strip()]
        elif tag != "v":
            terms.append(f"{tag}={value}")
    return terms


def merge_dmarc(
    ours: str, foreign_values: list[str], previous_own: list[str]
) -> tuple[str, list[str]]:
    """Our DMARC value with the foreign report addresses and the foreign tags we do
    not set kept; one DMARC record per name (RFC 7489 6.6.3)."""
    own = _dmarc_terms(ours)
    tags = dict(_dmarc_tags(ours))
    dropped = {t.lower() for t in previous_own}
    for value in foreign_values:
        for term in _dmarc_terms(value):
            tag, _, text = term.partition("=")
            if term.lower() in dropped or term.lower() in {t.lower() for t in own}:
                continue
            if tag in ("rua", "ruf"):
                uris = [u for u in tags.get(tag, "").split(",") if u]
                if text.lower() not in {u.lower() for u in uris}:
                    tags[tag] = ",".join([*uris, text])
            elif tag not in tags:
                tags[tag] = text
    order = ["v", "p"] + [t for t in tags if t not in ("v", "p")]
    return "; ".join(f"{t}={tags[t]}" for t in order if t in tags), own


def _version(text: str) -> str:
    head = text.strip().split(";", 1)[0].split(None, 1)
    return head[0].lower() if head else ""


# -- the plan --------------------------------------------------------------------------------


class Planner:
    """Plans the record-level change of every managed record set."""

    def __init__(
        self, records: list[dict[str, Any]], state: dict[str, Any], now: float, retire_after: int
    ) -> None:
        self.now = now
        self.retire_after = retire_after
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        for record in records:
            name = absolute(record["name"]).to_text(omit_final_dot=True).lower()
            rdtype = record["type"].upper()
            group = self.groups.setdefault(
                (name, rdtype),
                {"zone": record["zone"].rstrip(".").lower(), "ttl": record["ttl"], "wanted": []},
            )
            for value in record["values"]:
                group["wanted"].append((record["kind"], rdata(rdtype, value)))
        self.previous: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for entry in (state or {}).get("records", []):
            key = (str(entry["name"]).lower(), str(entry["type"]).upper())
            self.previous.setdefault(key, []).append(entry)
        self.terms: dict[str, list[str]] = dict((state or {}).get("terms", {}))

    def keys(self) -> list[tuple[str, str, str]]:
        """(zone, name, type) of every record set to read: wanted or owned before."""
        keys = {(g["zone"], n, t) for (n, t), g in self.groups.items()}
        for (name, rdtype), entries in self.previous.items():
            keys.add((entries[0]["zone"], name, rdtype))
        return sorted(keys, key=lambda k: (k[0], k[1], k[2]))

    def _owned_before(self, name: str, rdtype: str) -> list[Any]:
        return [rdata(rdtype, e["value"]) for e in self.previous.get((name, rdtype), [])]

    def _since(self, name: str, rdtype: str, value: Any) -> float:
        for entry in self.previous.get((name, rdtype), []):
            if rdata(rdtype, entry["value"]) == value:
                return parse_time(entry["since"])
        return self.now

    def _target(
        self, name: str, rdtype: str, existing: list[Any]
    ) -> tuple[list[Any], list[tuple[str, Any]]]:
        """The values the record set should hold and (kind, value) of ours among them."""
        group = self.groups[(name, rdtype)]
        owned_before = self._owned_before(name, rdtype)
        wanted = [v for _, v in group["wanted"]]
        ours: list[tuple[str, Any]] = []
        keep = [v for v in existing if v not in owned_before or v in wanted]
        for kind, value in group["wanted"]:
            if kind == "cname":
                keep = []
            elif kind in ("spf", "dmarc", "version"):
                # One value with this v= tag per name: every published one (ours from
                # last time included) is replaced by ours, merged with theirs.
                mark = _version(txt_text(value))
                same = [v for v in existing if _version(txt_text(v)) == mark]
                keep = [v for v in keep if _version(txt_text(v)) != mark]
                if kind != "version":
                    merge = merge_spf if kind == "spf" else merge_dmarc
                    term_key = f"{name} {kind}"
                    text, own = merge(
                        txt_text(value), [txt_text(v) for v in same], self.terms.get(term_key, [])
                    )
                    self.terms[term_key] = own
                    value = txt_rdata(text)
            ours.append((kind, value))
        target = list(keep)
        for _, value in ours:
            if value not in target:
                target.append(value)
        return target, ours

    def plan(self, read: Any) -> dict[str, Any]:
        """``read(zone, name, type)`` gives (ttl or None, [rdata]) of a record set."""
        existing = {(n, t): (z, *read(z, n, t)) for z, n, t in self.keys()}
        state_records: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        retiring: list[dict[str, Any]] = []
        used_terms = set()
        for (name, rdtype), (zone, ttl, values) in existing.items():
            if (name, rdtype) in self.groups:
                target, ours = self._target(name, rdtype, values)
                used_terms |= {f"{name} {k}" for k, _ in ours if k in ("spf", "dmarc")}
                owned = ours
            else:
                owned_before = self._owned_before(name, rdtype)
                kept = self._retiring(name, rdtype, [v for v in values if v in owned_before])
                for value in kept:
                    retiring.append(
                        {
                            "name": name,
                            "type": rdtype,
                            "value": value.to_text(),
                            "removed_after": format_time(
                                self._newest_dkim(name) + self.retire_after
                            ),
                        }
                    )
                target = [v for v in values if v not in owned_before or v in kept]
                owned = [(self._kind_before(name, rdtype, v), v) for v in kept]
            exclusive = bool(target) and all(any(v == o for _, o in owned) for v in target)
            want_ttl = self.groups[(name, rdtype)]["ttl"] if (name, rdtype) in self.groups else ttl
            new_ttl = want_ttl if (exclusive or not values or ttl is None) else ttl
            for kind, value in owned:
                state_records.append(
                    {
                        "zone": zone,
                        "name": name,
                        "type": rdtype,
                        "kind": kind,
                        "value": value.to_text(),
                        "since": format_time(self._since(name, rdtype, value)),
                    }
                )
            before = sorted(line(name, ttl, rdtype, v) for v in values)
            after = sorted(line(name, new_ttl, rdtype, v) for v in target)
            if before != after:
                changes.append(
                    {
                        "zone": zone,
                        "name": name,
                        "type": rdtype,
                        "ttl": new_ttl,
                        "exclusive": exclusive,
                        "before": values,
                        "after": target,
                        "before_ttl": ttl,
                        "added": [x for x in after if x not in before],
                        "removed": [x for x in before if x not in after],
                        "before_lines": before,
                        "after_lines": after,
                    }
                )
        state = {
            "version": STATE_VERSION,
            "records": state_records,
            "terms": {k: v for k, v in sorted(self.terms.items()) if k in used_terms},
        }
        return {"changes": changes, "state": state, "retiring": retiring}

    def _kind_before(self, name: str, rdtype: str, value: Any) -> str:
        for entry in self.previous.get((name, rdtype), []):
            if rdata(rdtype, entry["value"]) == value:
                return str(entry.get("kind", "values"))
        return "values"

    def _newest_dkim(self, name: str) -> float:
        """When the newest wanted DKIM key of the domain of ``name`` was first published
        (now when it is new, when there is none, or when it is published only now)."""
        domain = name.split("._domainkey.", 1)[1]
        stamps = [
            self._since(n, t, v)
            for (n, t), group in self.groups.items()
            if t == "TXT" and n.endswith("._domainkey." + domain)
            for _, v in group["wanted"]
        ]
        return max(stamps) if stamps else self.now

    def _retiring(self, name: str, rdtype: str, stale: list[Any]) -> list[Any]:
        """The stale values to keep: DKIM keys whose replacement is not old enough yet."""
        if rdtype != "TXT" or "._domainkey." not in name or not stale:
            return []
        if self._newest_dkim(name) + self.retire_after <= self.now:
            return []
        return stale


PROVIDERS = ["cloudflare", "hetzner", "nsupdate", "route53"]


def main() -> None:
    record_spec = {
        "zone": {"type": "str", "required": True},
        "name": {"type": "str", "required": True},
        "type": {"type": "str", "required": True},
        "ttl": {"type": "int", "default": 3600},
        "values": {"type": "list", "elements": "str", "required": True},
        "kind": {
            "type": "str",
            "default": "values",
            "choices": ["values", "spf", "dmarc", "version", "cname"],
        },
    }
    module = AnsibleModule(
        argument_spec={
            "provider": {"type": "str", "required": True, "choices": sorted(PROVIDERS)},
            "records": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": record_spec,
            },
            "state": {"type": "dict", "default": {}},
            "dkim_retire_after": {"type": "str", "default": "7d"},
            "now": {"type": "str"},
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
    params = module.params
    try:
        now = parse_time(params["now"]) if params["now"] else time.time()
        planner = Planner(
            params["records"], params["state"], now, parse_duration(params["dkim_retire_after"])
        )
        provider = backend(params)
        plan = planner.plan(provider.read)
        if plan["changes"] and not module.check_mode:
            provider.apply(plan["changes"])
    except MissingLibrary as exc:
        module.fail_json(msg=missing_required_lib(exc.library), exception=exc.trace)
    except (PlanError, ProviderError, dns.exception.DNSException, ValueError) as exc:
        module.fail_json(msg=str(exc))
    changes = [
        {"name": c["name"], "type": c["type"], "added": c["added"], "removed": c["removed"]}
        for c in plan["changes"]
    ]
    before = [x for c in plan["changes"] for x in c["before_lines"]]
    after = [x for c in plan["changes"] for x in c["after_lines"]]
    module.exit_json(
        changed=bool(changes),
        changes=changes,
        diff={
            "before": "".join(x + "\n" for x in before),
            "after": "".join(x + "\n" for x in after),
            "before_header": f"DNS ({params['provider']})",
            "after_header": f"DNS ({params['provider']})",
        },
        state=plan["state"],
        retiring=plan["retiring"],
    )


if __name__ == "__main__":
    main()
