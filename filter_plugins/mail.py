"""Filters that build the DNS record values a mail domain publishes.

One function per filter, published through ``FilterModule.filters()``:

==============  ===========================================================
spf_record      SPF TXT value from a dict or list of mechanisms (RFC 7208)
dmarc_record    DMARC TXT value (RFC 7489)
dmarc_external_destinations
                report hosts of a DMARC value needing consent (RFC 7489 7.1)
dkim_txt        DKIM key TXT value as <= 255-octet strings (RFC 6376)
txt_strings     any TXT value as <= 255-octet strings (RFC 1035 3.3.14)
mta_sts_txt     MTA-STS TXT value (RFC 8461 3.1)
tlsrpt_txt      SMTP TLS reporting TXT value (RFC 8460 3)
srv_records     SRV records for mail clients (RFC 6186, RFC 8314 5.1)
tlsa_record     TLSA rdata for a certificate (RFC 6698, RFC 7671)
==============  ===========================================================

Every filter is a pure function: no DNS queries, no files, no clock. Each one
checks its input and raises ``AnsibleFilterError`` with a message that names
the offending value and says what to change (Ansible adds the filter's name).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ansible.errors import AnsibleFilterError

# How these filters are documented, and why this way:
#
# ansible-doc finds a filter's documentation through the file that holds it,
# not through the filter's name: for every filter in this file it reads the
# DOCUMENTATION, EXAMPLES and RETURN below (only when the file has no
# DOCUMENTATION does it try a sidecar `filter_plugins/<filter>.yml`). So one
# set of strings is what `ansible-doc -t filter <any of these filters>` shows,
# and it is written as one page for the whole file: `_input` says what each
# filter takes, every other option names the filter that uses it, EXAMPLES
# show every filter and RETURN describes each result. Documenting only
# the "main" filter would show spf_record's options under dmarc_record.
# The strings are YAML text rather than dict literals because `ansible-doc -l`
# reads `short_description` from the text line by line and would list a dict
# as UNDOCUMENTED. Each function's docstring repeats its own part in detail.
# Per-filter ansible-doc pages would need sidecar YAML files instead.

DOCUMENTATION = r"""
name: mail
short_description: DNS record values for mail - SPF, DMARC, DKIM, MTA-STS, TLS-RPT, SRV, TLSA
version_added: "0.1.0"
author: estafeta
description:
  - This file holds several filters; C(ansible-doc -t filter) shows this page for each of them.
  - C(spf_record) builds an SPF TXT value (RFC 7208) from a dict or a list of mechanisms.
    The record ends with the O(all) qualifier. It refuses C(ptr), C(+all), more than 10
    DNS-lookup terms (RFC 7208 4.6.4, counted in this record only, not inside includes)
    and records over 512 octets. RFC 7208 3.4 advises staying under 450 octets.
  - C(dmarc_record) builds a DMARC TXT value (RFC 7489 6.3) with C(v) and C(p) first and
    tags at their default value left out. Its input is the policy (C(none), C(quarantine),
    C(reject)) or a dict of tags (C(p), C(sp), C(rua), C(ruf), C(adkim), C(aspf), C(pct),
    C(fo); C(policy) and C(subdomain_policy) are accepted as names for C(p) and C(sp)).
  - C(dmarc_external_destinations) returns the hosts of the C(mailto:) report addresses
    (C(rua), C(ruf)) of a DMARC value whose organizational domain differs from the policy
    domain's; RFC 7489 7.1 has receivers report there only when the host publishes
    C(<domain>._report._dmarc.<host> TXT "v=DMARC1"). Organizational domains come from the
    Public Suffix List of the Python library publicsuffixlist, needed on the controller
    when a report address is in another domain.
  - C(dkim_txt) checks a DKIM key record (RFC 6376 3.6.1, RFC 8301, RFC 8463), given as the
    TXT value or as a dict of tags, and returns it split into strings of at most 255 octets
    (RFC 6376 3.6.2.2). In the dict form C(p) may be a PEM public key.
  - C(txt_strings) splits any TXT value into strings of at most 255 octets (RFC 1035 3.3.14),
    for SPF or DMARC values that grow past one string.
  - C(mta_sts_txt) builds C(v=STSv1; id=...) (RFC 8461 3.1).
  - C(tlsrpt_txt) builds C(v=TLSRPTv1; rua=...) (RFC 8460 3) from C(mailto:) and C(https:) URIs.
  - C(srv_records) returns the RFC 6186 and RFC 8314 SRV records that let mail clients find
    the submission, IMAP and POP3 services of a domain, as a list of dicts with the keys
    C(name), C(priority), C(weight), C(port) and C(target). Implicit TLS gets the lower
    (preferred) priority, IMAP is preferred over POP3.
  - C(tlsa_record) returns the TLSA rdata (RFC 6698 2.1, RFC 7671) for a PEM certificate,
    by default C(3 1 1) (DANE-EE, SubjectPublicKeyInfo, SHA2-256), as RFC 7672 3.1 advises
    for SMTP.
options:
  _input:
    description:
      - The value piped into the filter; what it is depends on the filter.
      - C(spf_record) (mechanisms) - a dict with the keys C(mx), C(a) (V(true) or a list of
        domains), C(ip4), C(ip6), C(include), C(exists) (lists), C(redirect) and C(exp)
        (strings); or a list of SPF terms such as V(mx) or V(ip4:198.51.100.0/24).
      - C(dmarc_record) (policy) - V(none), V(quarantine), V(reject), or a dict of tags.
      - C(dmarc_external_destinations) (record) - a DMARC TXT value, as C(dmarc_record) returns.
      - C(dkim_txt) (value) - a string like V(v=DKIM1; k=rsa; p=MIIB...) or a dict with the
        tags C(v), C(h), C(k), C(n), C(s), C(t) and C(p).
      - C(txt_strings) (value) - any string.
      - C(mta_sts_txt) (policy_id) - 1 to 32 letters and digits; an integer is accepted.
      - C(tlsrpt_txt) (rua) - one URI or a list of C(mailto:) and C(https:) URIs.
      - C(srv_records) (domain) - the mail domain the records are published under.
      - C(tlsa_record) (cert_pem) - a PEM certificate; with several (a full chain) the first
        one, the server's own, is used for usages 1 and 3.
    type: raw
    required: true
  all:
    description: C(spf_record) - how to end the record; V(null) only together with C(redirect).
    type: str
    default: "-all"
    choices: ["-all", "~all", "?all"]
  extra:
    description:
      - C(spf_record) - more SPF terms, added after the mechanisms of the input (for example
        V(include:_spf.google.com) for another sender of the domain); checked like them.
    type: list
    elements: str
  rua:
    description: C(dmarc_record) - C(mailto:) URIs that receive aggregate reports; a size
      limit may follow, as in V(mailto:dmarc@example.org!10m).
    type: list
    elements: str
  ruf:
    description: C(dmarc_record) - C(mailto:) URIs that receive failure reports.
    type: list
    elements: str
  domain:
    description: C(dmarc_external_destinations) - the policy domain, where the record is published.
    type: str
    required: true
  subdomain_policy:
    description: C(dmarc_record) - C(sp), the policy for subdomains; left out when it equals C(p).
    type: str
    choices: [none, quarantine, reject]
  adkim:
    description: C(dmarc_record) - DKIM alignment, V(r) relaxed or V(s) strict.
    type: str
    default: r
    choices: [r, s]
  aspf:
    description: C(dmarc_record) - SPF alignment, V(r) relaxed or V(s) strict.
    type: str
    default: r
    choices: [r, s]
  pct:
    description: C(dmarc_record) - percentage of failing mail the policy applies to, 0 to 100.
    type: int
    default: 100
  fo:
    description: C(dmarc_record) - failure reporting options, any of V(0), V(1), V(d), V(s),
      as a list or joined with C(:); needs C(ruf).
    type: raw
    default: "0"
  hostname:
    description: C(srv_records) - the host that serves the mail clients (the SRV target).
    type: str
  ports:
    description:
      - C(srv_records) - maps service names (V(submissions), V(submission), V(imaps), V(imap),
        V(pop3s), V(pop3)) to a port, or to V(null) to publish that the service is not
        offered (RFC 6186 4, target C(.)). Services not named keep their standard port.
    type: dict
  usage:
    description: C(tlsa_record) - certificate usage, 0 to 3 or PKIX-TA, PKIX-EE, DANE-TA, DANE-EE.
    type: raw
    default: 3
  selector:
    description: C(tlsa_record) - 0 (Cert, the whole certificate) or 1 (SPKI, its public key).
    type: raw
    default: 1
  mtype:
    description: C(tlsa_record) - matching type, 0 (Full), 1 (SHA2-256) or 2 (SHA2-512).
    type: raw
    default: 1
seealso:
  - name: RFC 7208 Sender Policy Framework
    link: https://www.rfc-editor.org/rfc/rfc7208
    description: SPF record syntax and the DNS lookup limit.
  - name: RFC 7489 DMARC
    link: https://www.rfc-editor.org/rfc/rfc7489
    description: DMARC record format.
  - name: RFC 6186 SRV records for email
    link: https://www.rfc-editor.org/rfc/rfc6186
    description: How mail clients find their servers.
  - name: RFC 7671 DANE operational guidance
    link: https://www.rfc-editor.org/rfc/rfc7671
    description: Which TLSA parameters to publish.
"""

EXAMPLES = r"""
- name: SPF value for the zone
  ansible.builtin.debug:
    msg: "{{ {'mx': true, 'ip4': ['198.51.100.10'], 'ip6': ['2001:db8::10']} | spf_record }}"
    # => "v=spf1 mx ip4:198.51.100.10 ip6:2001:db8::10 -all"

- name: SPF value from a list of mechanisms, soft fail
  ansible.builtin.debug:
    msg: "{{ ['mx', 'include:_spf.provider.example'] | spf_record(all='~all') }}"
    # => "v=spf1 mx include:_spf.provider.example ~all"

- name: SPF value with another sender of the domain
  ansible.builtin.debug:
    msg: "{{ {'mx': true} | spf_record(extra=['include:_spf.google.com']) }}"
    # => "v=spf1 mx include:_spf.google.com -all"

- name: DMARC value, policy as input
  ansible.builtin.debug:
    msg: "{{ 'reject' | dmarc_record(rua=['mailto:dmarc@example.org'], adkim='s') }}"
    # => "v=DMARC1; p=reject; adkim=s; rua=mailto:dmarc@example.org"

- name: DMARC value, tags as a dict
  ansible.builtin.debug:
    msg: "{{ {'p': 'quarantine', 'sp': 'reject', 'pct': 50} | dmarc_record }}"
    # => "v=DMARC1; p=quarantine; sp=reject; pct=50"

- name: Report hosts that must agree to receive example.org's reports
  ansible.builtin.debug:
    msg: "{{ 'v=DMARC1; p=none; rua=mailto:dmarc@example.org,mailto:d@reports.example.net'
             | dmarc_external_destinations('example.org') }}"
    # => ["reports.example.net"]: publish
    #    example.org._report._dmarc.reports.example.net TXT "v=DMARC1" there

- name: DKIM key record as TXT strings
  ansible.builtin.debug:
    msg: "{{ {'k': 'ed25519', 'p': '11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo='} | dkim_txt }}"
    # => ["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]

- name: A long SPF value as several strings
  ansible.builtin.debug:
    msg: "{{ spf_value | txt_strings }}"

- name: MTA-STS and TLS reporting values
  ansible.builtin.debug:
    msg:
      - "{{ 20240501120000 | mta_sts_txt }}"
      - "{{ ['mailto:tls@example.org'] | tlsrpt_txt }}"
    # => ["v=STSv1; id=20240501120000", "v=TLSRPTv1; rua=mailto:tls@example.org"]

- name: SRV records for mail clients, no POP3
  ansible.builtin.debug:
    msg: "{{ 'example.org' | srv_records('mx.example.org', ports={'pop3': none, 'pop3s': none}) }}"

- name: TLSA rdata for the certificate of the MX
  ansible.builtin.debug:
    msg: "{{ lookup('ansible.builtin.file', 'mx.example.org.pem') | tlsa_record }}"
    # => "3 1 1 <64 hex digits>"
"""

RETURN = r"""
_value:
  description:
    - C(spf_record), C(dmarc_record), C(mta_sts_txt), C(tlsrpt_txt) - the TXT value as one
      string, without quotes.
    - C(dmarc_external_destinations) - a list of host names, lower case, each once.
    - C(dkim_txt), C(txt_strings) - a list of strings of at most 255 octets each, to be
      published as the character-strings of one TXT record.
    - C(srv_records) - a list of dicts with the keys C(name), C(priority), C(weight), C(port)
      and C(target), one per service.
    - C(tlsa_record) - the TLSA rdata, for example V(3 1 1 8f2c...).
  type: raw
"""


def _error(message: str) -> AnsibleFilterError:
    return AnsibleFilterError(message)


def _strings(what: str, value: Any) -> list[str]:
    """A list of strings from one string, a list of strings or None; duplicates dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
    else:
        raise _error(f"{what} must be a string or a list of strings, not {type(value).__name__}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _error(f"{what} must hold strings, but {item!r} is {type(item).__name__}")
        item = item.strip()
        if not item:
            raise _error(f"{what} holds an empty string; remove it")
        if item not in result:
            result.append(item)
    return result


def _integer(what: str, value: Any, low: int, high: int) -> int:
    """An int in [low, high] from an int or a string of digits (bools refused)."""
    if isinstance(value, bool):
        raise _error(f"{what} must be a number from {low} to {high}, not {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not low <= value <= high:
        raise _error(f"{what} must be a number from {low} to {high}, not {value!r}")
    return value


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _domain(what: str, value: Any, underscore: bool = True) -> str:
    """Check a DNS name of at least two labels; returns it without a trailing dot."""
    if not isinstance(value, str) or not value.strip():
        raise _error(f"{what} must be a domain name, not {value!r}")
    name = value.strip().removesuffix(".")
    if not name:
        raise _error(f"{what} must be a domain name, not {value!r}")
    if not name.isascii():
        try:
            hint = f"; write it as {name.encode('idna').decode('ascii')}"
        except UnicodeError:
            hint = ""
        raise _error(f"{what} {value!r} must be ASCII (the xn-- form){hint}")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise _error(f"{what} {value!r} has an empty label (two dots in a row)")
        if not _LABEL.match(label) or (not underscore and "_" in label):
            allowed = "letters, digits and '-'" + (" or '_'" if underscore else "")
            raise _error(
                f"{what} {value!r} is not a valid domain name: label {label!r} must be 1 to 63 "
                f"{allowed}, not starting or ending with '-'"
            )
    if len(name) > 253:
        raise _error(f"{what} {value!r} is longer than 253 characters")
    if len(labels) < 2 or labels[-1].isdigit():
        raise _error(f"{what} {value!r} must be a fully qualified domain name like mx.example.org")
    return name


# Local part of an address inside a mailto: URI. '!' (DMARC size limits), ','
# (URI lists) and ';' (tag separator) cannot appear unencoded (RFC 7489 6.3).
_LOCAL_PART = re.compile(r"[A-Za-z0-9#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9#$%&'*+/=?^_`{|}~-]+)*\Z")


def _mailto(what: str, uri: str) -> str:
    """Check a mailto: URI holding a single address; returns it with the scheme in lower case."""
    if not uri.lower().startswith("mailto:"):
        if "@" in uri and ":" not in uri:
            raise _error(f"{what} {uri!r} must be a URI: write 'mailto:{uri}'")
        raise _error(f"{what} {uri!r} must be a mailto: URI")
    address = uri[len("mailto:") :]
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.match(local):
        raise _error(
            f"{what} {uri!r} must hold exactly one address like mailto:reports@example.org "
            "(list several addresses as separate URIs; percent-encode ',', ';' and '!')"
        )
    _domain(f"{what} {uri!r}: the domain", domain, underscore=False)
    return "mailto:" + address


# -- spf_record -----------------------------------------------------------------------------

_SPF_ALL = ("-all", "~all", "?all")
# RFC 7208 4.6.4: a, mx, include, exists and redirect= cost DNS lookups, 10 at most.
_SPF_MAX_LOOKUPS = 10
_SPF_MAX_OCTETS = 512
_SPF_DICT_KEYS = ("mx", "a", "ip4", "ip6", "include", "exists", "redirect", "exp")
# A domain-spec with macros (RFC 7208 7.1) is checked loosely: visible ASCII, no spaces.
_SPF_MACRO_SPEC = re.compile(r"[!-~]+\Z")
_SPF_CIDR = re.compile(r"(?:/(\d{1,2}))?(?://(\d{1,3}))?\Z")


def _spf_domain_spec(term: str, spec: str) -> str:
    if "%" in spec:
        if not _SPF_MACRO_SPEC.match(spec):
            raise _error(f"{term!r}: the domain {spec!r} has invalid characters")
        return spec
    return _domain(f"{term!r}: the domain", spec) + ("." if spec.endswith(".") else "")


def _spf_address(term: str, kind: str, value: str) -> str:
    version = 4 if kind == "ip4" else 6
    other = "ip6" if version == 4 else "ip4"
    example = (
        "198.51.100.10 or 198.51.100.0/24" if version == 4 else "2001:db8::10 or 2001:db8::/32"
    )
    if "%" in value:
        raise _error(f"{term!r}: leave the zone index out of {value!r}")
    try:
        parsed: Any = (
            ipaddress.ip_network(value, strict=True)
            if "/" in value
            else ipaddress.ip_address(value)
        )
    except ValueError as exc:
        if "host bits set" in str(exc):
            network = ipaddress.ip_network(value, strict=False)
            raise _error(
                f"{term!r} has host bits set after the prefix; did you mean {network}?"
            ) from None
        raise _error(
            f"{term!r}: {value!r} is not an IPv{version} address or network ({example})"
        ) from None
    if parsed.version != version:
        raise _error(f"{term!r} is an IPv{parsed.version} address; list it under {other}")
    if isinstance(parsed, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and parsed.prefixlen == 0:
        raise _error(f"{term!r} authorizes every address; narrow the prefix")
    return f"{kind}:{parsed}"


def _spf_term(term: str) -> tuple[str, bool]:
    """Check one SPF term; returns it normalized and whether it costs a DNS lookup."""
    if term.lower().startswith("v=spf1"):
        raise _error(f"{term!r}: leave 'v=spf1' out, the filter writes it")
    if any(char.isspace() for char in term):
        raise _error(f"{term!r}: give each mechanism as its own list item")
    modifier = re.match(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)\Z", term)
    if modifier:
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name not in ("redirect", "exp"):
            raise _error(f"unknown modifier {term!r}; known are redirect= and exp=")
        return f"{name}={_spf_domain_spec(term, value)}", name == "redirect"
    qualifier = term[0] if term[0] in "+-~?" else ""
    body = term[len(qualifier) :]
    match = re.match(r"([A-Za-z0-9]+)(.*)\Z", body)
    name, rest = (match.group(1).lower(), match.group(2)) if match else ("", body)
    if name == "all":
        raise _error(f"{term!r}: set the all argument instead of listing all")
    if name == "ptr":
        raise _error(f"{term!r}: ptr is slow and must not be published (RFC 7208 5.5)")
    if name in ("a", "mx"):
        spec, cidr = "", rest
        if rest.startswith(":"):
            domain, slash, lengths_text = rest[1:].partition("/")
            spec, cidr = ":" + _spf_domain_spec(term, domain), slash + lengths_text
        elif rest and not rest.startswith("/"):
            raise _error(f"{term!r}: write it as {name}:<domain>")
        lengths = _SPF_CIDR.match(cidr)
        if (
            not lengths
            or (lengths.group(1) and int(lengths.group(1)) > 32)
            or (lengths.group(2) and int(lengths.group(2)) > 128)
        ):
            raise _error(f"{term!r}: the prefix length must look like /24, //64 or /24//64")
        return f"{qualifier}{name}{spec}{cidr}", True
    if name in ("ip4", "ip6", "include", "exists"):
        if not rest.startswith(":") or len(rest) == 1:
            raise _error(f"{term!r}: write it as {name}:<value>")
        if name in ("ip4", "ip6"):
            return qualifier + _spf_address(term, name, rest[1:]), False
        return f"{qualifier}{name}:{_spf_domain_spec(term, rest[1:])}", True
    raise _error(f"unknown mechanism {term!r}; use a, mx, ip4, ip6, include or exists")


def _spf_terms_from_dict(mechanisms: Mapping[Any, Any]) -> list[str]:
    unknown = [key for key in mechanisms if key not in _SPF_DICT_KEYS]
    if unknown:
        raise _error(
            f"unknown key(s) {', '.join(map(repr, unknown))}; use {', '.join(_SPF_DICT_KEYS)}"
        )
    terms: list[str] = []
    for key in _SPF_DICT_KEYS:
        value = mechanisms.get(key)
        if key in ("a", "mx"):
            if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false"):
                raise _error(f"{key} must be true, false or a list of domains, not {value!r}")
            if value is True:
                terms.append(key)
            elif value is not None and value is not False:
                terms += [f"{key}:{domain}" for domain in _strings(key, value)]
        elif key in ("redirect", "exp"):
            if value is not None:
                if not isinstance(value, str):
                    raise _error(f"{key} must be a domain name, not {value!r}")
                terms.append(f"{key}={value.strip()}")
        else:
            terms += [f"{key}:{item}" for item in _strings(key, value)]
    return terms


def spf_record(mechanisms: Any, all: str | None = "-all", extra: Any = None) -> str:
    """Build an SPF TXT value (RFC 7208).

    ``mechanisms`` is either a dict or a list of SPF terms:

    * dict: ``mx`` and ``a`` are ``true`` (the domain itself) or a list of other domains;
      ``ip4``, ``ip6``, ``include`` and ``exists`` are lists (one string is taken as a list
      of one); ``redirect`` and ``exp`` are domain names. Terms come out in the order mx, a,
      ip4, ip6, include, exists, redirect, exp.
    * list: terms such as ``mx``, ``a:mail.example.org/24``, ``ip4:198.51.100.0/24``,
      ``~include:_spf.provider.example`` or ``redirect=_spf.example.org``, kept in order.

    ``extra`` is a list of more terms, added after the mechanisms (other senders of the
    domain, such as ``include:_spf.google.com``) and checked like them.

    ``all`` ends the record: ``-all`` (default), ``~all`` or ``?all``. It must be None when
    the record has ``redirect=``, which receivers ignore if there is an ``all`` (RFC 7208 6.1).

    Addresses and networks are checked with ``ipaddress`` (no host bits after the prefix),
    duplicate terms are dropped, ``ptr`` and ``+all`` are refused, more than 10 terms that
    cost a DNS lookup are refused (RFC 7208 4.6.4; lookups made by included records are not
    counted because that needs DNS) and so is a record over 512 octets, which does not fit
    a UDP answer (RFC 7208 3.4 advises staying under 450). Values over 255 octets must be
    published as several strings: pipe the result through ``txt_strings``.
    """
    if isinstance(mechanisms, Mapping):
        raw_terms = _spf_terms_from_dict(mechanisms)
    elif isinstance(mechanisms, Sequence) and not isinstance(mechanisms, (str, bytes)):
        raw_terms = _strings("mechanisms", mechanisms)
    else:
        raise _error(
            f"input must be a dict like {{'mx': true, 'ip4': ['198.51.100.10']}} or a list of "
            f"mechanisms like ['mx', 'ip4:198.51.100.10'], not {type(mechanisms).__name__}"
        )
    if extra is not None:
        raw_terms = raw_terms + _strings("extra", extra)
    terms: list[str] = []
    lookups = 0
    redirect = False
    for raw in raw_terms:
        term, costs_lookup = _spf_term(raw)
        if term in terms:
            continue
        terms.append(term)
        lookups += costs_lookup
        redirect = redirect or term.startswith("redirect=")
    if sum(term.startswith("redirect=") for term in terms) > 1 or (
        sum(term.startswith("exp=") for term in terms) > 1
    ):
        raise _error("redirect= and exp= may each appear only once (RFC 7208 6)")
    if all is None:
        if not redirect:
            raise _error("all may only be null when the record has redirect=")
    elif all not in _SPF_ALL:
        hint = "; +all would let anyone send as the domain" if "+all" in str(all) else ""
        raise _error(f"all must be one of {', '.join(_SPF_ALL)}, not {all!r}{hint}")
    elif redirect:
        raise _error(
            "redirect= is ignored when the record ends with all (RFC 7208 6.1); pass all=None"
        )
    if lookups > _SPF_MAX_LOOKUPS:
        raise _error(
            f"{lookups} terms cause DNS lookups (a, mx, include, exists, redirect) but at most "
            f"{_SPF_MAX_LOOKUPS} are allowed (RFC 7208 4.6.4); replace some with ip4/ip6"
        )
    # Modifiers go after the mechanisms, where RFC 7208 4.6.3 recommends them.
    mechanisms_first = [t for t in terms if "=" not in t] + [t for t in terms if "=" in t]
    record = " ".join(["v=spf1", *mechanisms_first, *([all] if all else [])])
    size = len(record.encode("ascii"))
    if size > _SPF_MAX_OCTETS:
        raise _error(
            f"the record is {size} octets; over {_SPF_MAX_OCTETS} it does not fit a UDP DNS "
            "answer, move addresses into an include: record"
        )
    return record


# -- dmarc_record ---------------------------------------------------------------------------

_DMARC_POLICIES = ("none", "quarantine", "reject")
_DMARC_FO = ("0", "1", "d", "s")
# Dict keys accepted by dmarc_record and the tag each one sets.
_DMARC_DICT_KEYS = {
    "p": "p",
    "policy": "p",
    "sp": "sp",
    "subdomain_policy": "sp",
    "rua": "rua",
    "ruf": "ruf",
    "adkim": "adkim",
    "aspf": "aspf",
    "pct": "pct",
    "fo": "fo",
}
_DMARC_SIZE = re.compile(r"\d+[kmgt]?\Z")


def _dmarc_uris(what: str, value: Any) -> list[str]:
    uris = []
    for uri in _strings(what, value):
        address, bang, size = uri.partition("!")
        if bang and not _DMARC_SIZE.match(size):
            raise _error(
                f"{what} {uri!r}: a size limit looks like !10m (digits, then k, m, g or t)"
            )
        uris.append(_mailto(what, address) + bang + size)
    return uris


def _dmarc_choice(what: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise _error(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value.strip().lower()


def dmarc_record(
    policy: Any = "none",
    rua: Any = None,
    ruf: Any = None,
    subdomain_policy: Any = None,
    adkim: Any = None,
    aspf: Any = None,
    pct: Any = None,
    fo: Any = None,
) -> str:
    """Build a DMARC TXT value (RFC 7489 6.3).

    Two styles, which can be mixed as long as no tag is given twice:

    * ``{{ 'reject' | dmarc_record(rua=['mailto:dmarc@example.org'], adkim='s') }}``
    * ``{{ {'p': 'reject', 'rua': ['mailto:dmarc@example.org']} | dmarc_record }}``; the
      dict keys are the tag names (p, sp, rua, ruf, adkim, aspf, pct, fo) or the argument
      names policy and subdomain_policy.

    ``policy``/``subdomain_policy`` are none, quarantine or reject; ``adkim``/``aspf`` r or
    s; ``pct`` 0 to 100; ``fo`` any of 0, 1, d, s as a list or joined with ':' (needs
    ``ruf``); ``rua``/``ruf`` one mailto: URI or a list of them, each optionally with a
    size limit (``mailto:dmarc@example.org!10m``). Arguments left at None take the RFC
    default (adkim=r, aspf=r, pct=100, fo=0, sp=p).

    Output order: v, p, sp, adkim, aspf, pct, fo, rua, ruf; tags equal to their default are
    left out, p is always written. Reports to another domain only arrive once that domain
    publishes the authorization record of RFC 7489 7.1, which this filter cannot check
    (dmarc_external_destinations names the domains that must).
    """
    given: dict[str, Any] = {}
    if isinstance(policy, Mapping):
        for key, value in policy.items():
            if key == "v":
                if value != "DMARC1":
                    raise _error(f"v must be DMARC1, not {value!r}")
                continue
            if key not in _DMARC_DICT_KEYS:
                raise _error(f"unknown key {key!r}; use {', '.join(sorted(set(_DMARC_DICT_KEYS)))}")
            tag = _DMARC_DICT_KEYS[key]
            if tag in given:
                raise _error(f"{tag} is given twice in the dict ({key!r})")
            given[tag] = value
        given.setdefault("p", "none")
    else:
        given["p"] = policy
    arguments = {
        "sp": subdomain_policy,
        "rua": rua,
        "ruf": ruf,
        "adkim": adkim,
        "aspf": aspf,
        "pct": pct,
        "fo": fo,
    }
    for tag, value in arguments.items():
        if value is None:
            continue
        if tag in given:
            raise _error(f"{tag} is given both in the input dict and as an argument")
        given[tag] = value

    p = _dmarc_choice("p (policy)", given["p"], _DMARC_POLICIES)
    tags = [("v", "DMARC1"), ("p", p)]
    if given.get("sp") is not None:
        sp = _dmarc_choice("sp (subdomain_policy)", given["sp"], _DMARC_POLICIES)
        if sp != p:
            tags.append(("sp", sp))
    for tag in ("adkim", "aspf"):
        if given.get(tag) is not None:
            alignment = _dmarc_choice(tag, given[tag], ("r", "s"))
            if alignment != "r":
                tags.append((tag, alignment))
    if given.get("pct") is not None:
        percent = _integer("pct", given["pct"], 0, 100)
        if percent != 100:
            tags.append(("pct", str(percent)))
    rua_uris = _dmarc_uris("rua", given.get("rua"))
    ruf_uris = _dmarc_uris("ruf", given.get("ruf"))
    if given.get("fo") is not None:
        options = given["fo"]
        if isinstance(options, int) and not isinstance(options, bool):
            options = str(options)
        if isinstance(options, str):
            options = options.split(":")
        flags = _strings("fo", options)
        bad = [flag for flag in flags if flag not in _DMARC_FO]
        if bad or not flags:
            raise _error(
                f"fo may hold {', '.join(_DMARC_FO)} joined with ':', not {':'.join(bad)!r}"
            )
        if flags != ["0"]:
            if not ruf_uris:
                raise _error("fo only matters with ruf; add ruf or drop fo")
            tags.append(("fo", ":".join(flags)))
    if rua_uris:
        tags.append(("rua", ",".join(rua_uris)))
    if ruf_uris:
        tags.append(("ruf", ",".join(ruf_uris)))
    return "; ".join(f"{tag}={value}" for tag, value in tags)


# -- dmarc_external_destinations ------------------------------------------------------------


@functools.cache
def _public_suffixes() -> Any:
    """The Public Suffix List the publicsuffixlist library ships (no network, ever), as
    the server uses it (server/src/estafeta/policy/dmarc.py)."""
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:
        raise _error(
            "telling organizational domains apart (RFC 7489 3.2) needs the Python library "
            "publicsuffixlist on the Ansible controller (pip install publicsuffixlist)"
        ) from None
    return PublicSuffixList()


def _organizational_domain(name: str) -> str:
    """rfc7489:3.2 - the public suffix plus one label; a public suffix is its own."""
    return str(_public_suffixes().privatesuffix(name) or name)


def dmarc_external_destinations(record: Any, domain: Any) -> list[str]:
    """The report destinations of a DMARC value that need their owner's consent
    (RFC 7489 7.1), for the policy domain ``domain``.

    ``record`` is a DMARC TXT value as dmarc_record builds it. Each ``mailto:`` URI of its
    ``rua`` and ``ruf`` tags names a destination host (the address's domain, lower case);
    those whose organizational domain (RFC 7489 3.2, by the Public Suffix List) differs
    from that of ``domain`` are returned, each once, in the order of the record. A
    receiver sends reports there only when ``<domain>._report._dmarc.<host>`` holds a TXT
    record starting with ``v=DMARC1``. The Python library publicsuffixlist is needed on
    the controller only when a destination host is not ``domain`` itself.
    """
    if not isinstance(record, str):
        raise _error(f"input must be a DMARC TXT value (a string), not {type(record).__name__}")
    policy_domain = _domain("domain", domain).lower()
    pairs = [
        (tag.strip().lower(), value.strip())
        for tag, eq, value in (part.partition("=") for part in record.split(";"))
        if eq and tag.strip()
    ]
    # rfc7489:6.4 - v=DMARC1 comes first.
    if not pairs or pairs[0] != ("v", "DMARC1"):
        raise _error(f"{record!r} is not a DMARC value: it must start with v=DMARC1")
    tags = dict(reversed(pairs))  # the first of a tag given twice
    hosts: list[str] = []
    for tag in ("rua", "ruf"):
        uris = [uri.strip() for uri in tags.get(tag, "").split(",") if uri.strip()]
        for uri in _dmarc_uris(tag, uris):
            # rfc7489:7.1 step 1 - the destination host (of a mailto: URI, the domain).
            host = uri.partition("!")[0].rpartition("@")[2].lower()
            if host != policy_domain and host not in hosts:
                hosts.append(host)
    if not hosts:
        return []
    # rfc7489:7.1 - only destinations outside the policy domain's organizational domain.
    own = _organizational_domain(policy_domain)
    return [host for host in hosts if _organizational_domain(host) != own]


# -- txt_strings, dkim_txt ------------------------------------------------------------------

_TXT_STRING_OCTETS = 255


def txt_strings(value: Any) -> list[str]:
    """Split a TXT value into character-strings of at most 255 octets (RFC 1035 3.3.14).

    Receivers of SPF (RFC 7208 3.3), DKIM (RFC 6376 3.6.2.2) and DMARC records join the
    strings without a separator, so a split anywhere is fine. Non-ASCII text is split
    between UTF-8 characters, never inside one. An empty value gives one empty string.
    """
    if not isinstance(value, str):
        raise _error(f"input must be a string, not {type(value).__name__}")
    chunks: list[str] = []
    current = ""
    size = 0
    for char in value:
        width = len(char.encode("utf-8"))
        if size + width > _TXT_STRING_OCTETS:
            chunks.append(current)
            current, size = "", 0
        current += char
        size += width
    chunks.append(current)
    return chunks


_DKIM_TAG_ORDER = ("v", "h", "k", "s", "t", "n", "p")
_DKIM_LISTS = {"h": ("sha256",), "s": ("*", "email"), "t": ("y", "s")}


def _dkim_key_from_pem(pem: str) -> tuple[str, str]:
    """(k, p) for a PEM public key: base64 SubjectPublicKeyInfo for RSA, raw key for Ed25519."""
    if "PRIVATE KEY" in pem:
        raise _error("p holds a private key; pass the public key (BEGIN PUBLIC KEY)")
    serialization, _ = _cryptography()
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise _error(f"p is not a readable PEM public key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "rsa", base64.b64encode(der).decode("ascii")
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519", base64.b64encode(raw).decode("ascii")
    raise _error("p must be an RSA or Ed25519 public key (RFC 6376, RFC 8463)")


def _dkim_tags_from_dict(value: Mapping[Any, Any]) -> dict[str, str]:
    unknown = [key for key in value if key not in _DKIM_TAG_ORDER]
    if unknown:
        raise _error(
            f"unknown key(s) {', '.join(map(repr, unknown))}; use {', '.join(_DKIM_TAG_ORDER)}"
        )
    tags: dict[str, str] = {}
    for tag in _DKIM_TAG_ORDER:
        item = value.get(tag)
        if item is None:
            continue
        if tag in _DKIM_LISTS and not isinstance(item, str):
            item = ":".join(_strings(tag, item))
        if not isinstance(item, str):
            raise _error(f"{tag} must be a string, not {type(item).__name__}")
        tags[tag] = item.strip()
    if "p" not in tags:
        raise _error("the dict needs p, the public key (empty to revoke the key)")
    if "BEGIN" in tags["p"]:
        kind, tags["p"] = _dkim_key_from_pem(tags["p"])
        if tags.setdefault("k", kind) != kind:
            raise _error(f"k is {tags['k']!r} but p holds an {kind} key")
    tags.setdefault("v", "DKIM1")
    return {tag: tags[tag] for tag in _DKIM_TAG_ORDER if tag in tags}


def _dkim_tags_from_text(value: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        tag, equals, item = part.partition("=")
        tag = tag.strip()
        if not equals or not re.match(r"[A-Za-z][A-Za-z0-9_]*\Z", tag):
            raise _error(f"{part.strip()!r} is not a tag=value pair; separate tags with ';'")
        if tag in tags:
            raise _error(f"tag {tag} appears twice (RFC 6376 3.2)")
        tags[tag] = item.strip()
    if "v" in tags and next(iter(tags)) != "v":
        raise _error("v=DKIM1 must be the first tag (RFC 6376 3.6.1)")
    return tags


def _dkim_check(tags: dict[str, str]) -> None:
    unknown = [tag for tag in tags if tag not in _DKIM_TAG_ORDER]
    if unknown:
        raise _error(f"unknown tag(s) {', '.join(unknown)}; use {', '.join(_DKIM_TAG_ORDER)}")
    if "v" in tags and tags["v"] != "DKIM1":
        raise _error(f"v must be DKIM1, not {tags['v']!r}")
    for tag, allowed in _DKIM_LISTS.items():
        if tag in tags:
            bad = [item for item in tags[tag].split(":") if item.strip() not in allowed]
            if bad:
                hint = " (sha1 is forbidden by RFC 8301)" if tag == "h" else ""
                raise _error(f"{tag} may hold {', '.join(allowed)}, not {':'.join(bad)!r}{hint}")
            tags[tag] = ":".join(item.strip() for item in tags[tag].split(":"))
    if "n" in tags and not re.match(r"[ -:<-~]*\Z", tags["n"]):
        raise _error("n must be printable ASCII without ';'")
    kind = tags.get("k", "rsa")
    if kind not in ("rsa", "ed25519"):
        raise _error(f"k must be rsa or ed25519, not {kind!r}")
    if "p" not in tags:
        raise _error("the record needs p=, the public key (empty to revoke the key)")
    key_text = re.sub(r"\s+", "", tags["p"])
    tags["p"] = key_text
    if not key_text:
        return  # RFC 6376 3.6.1: an empty p= revokes the key.
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        raise _error("p is not base64; give the key without PEM header lines") from None
    if kind == "ed25519":
        if len(key) != 32:
            raise _error(
                f"p holds {len(key)} bytes but an Ed25519 key is the raw 32-byte key (RFC 8463)"
            )
        return
    serialization, _ = _cryptography()
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        public = serialization.load_der_public_key(key)
    except ValueError:
        raise _error("p does not hold a DER-encoded RSA public key") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise _error("p holds a key that is not RSA; set k to the key's type")
    if public.key_size < 1024:
        raise _error(
            f"the RSA key has {public.key_size} bits; verifiers ignore keys under 1024 bits "
            "(RFC 8301 3.2), use 2048"
        )


def dkim_txt(value: Any) -> list[str]:
    """Check a DKIM key record (RFC 6376 3.6.1) and split it into TXT strings.

    ``value`` is the record text (``v=DKIM1; k=rsa; p=MIIB...``) or a dict of tags
    (``{'k': 'rsa', 'p': 'MIIB...'}``; ``h``, ``s`` and ``t`` may be lists). In a dict,
    ``p`` may also be a PEM public key; it is converted to what DKIM publishes (base64
    SubjectPublicKeyInfo for RSA, the raw 32-byte key for Ed25519, RFC 8463) and sets ``k``
    when missing. The dict form always starts with ``v=DKIM1``.

    Checked: v first and DKIM1, no tag twice, known tags only, k rsa or ed25519, h only
    sha256 (RFC 8301), p base64 and an RSA key of at least 1024 bits or an Ed25519 key of
    32 bytes; an empty p (revoked key) is allowed. The record is written back as
    ``tag=value`` pairs joined by ``"; "`` and split with ``txt_strings``.
    """
    if isinstance(value, Mapping):
        tags = _dkim_tags_from_dict(value)
    elif isinstance(value, str):
        if not value.isascii():
            raise _error("the record must be ASCII")
        tags = _dkim_tags_from_text(value)
    else:
        raise _error(f"input must be the record text or a dict of tags, not {type(value).__name__}")
    _dkim_check(tags)
    return txt_strings("; ".join(f"{tag}={item}" for tag, item in tags.items()))


# -- mta_sts_txt, tlsrpt_txt ----------------------------------------------------------------


def mta_sts_txt(policy_id: Any) -> str:
    """Build the MTA-STS TXT value ``v=STSv1; id=<policy_id>`` (RFC 8461 3.1).

    The id is 1 to 32 letters and digits; change it whenever the policy changes. A
    non-negative integer (a YAML timestamp like 20240501120000) is accepted.
    """
    if isinstance(policy_id, int) and not isinstance(policy_id, bool) and policy_id >= 0:
        policy_id = str(policy_id)
    if not isinstance(policy_id, str) or not re.match(r"[A-Za-z0-9]{1,32}\Z", policy_id):
        hint = ""
        if isinstance(policy_id, str):
            cleaned = re.sub(r"[^A-Za-z0-9]", "", policy_id)[:32]
            hint = f", e.g. {cleaned!r}" if cleaned else ""
        raise _error(
            f"the policy id must be 1 to 32 letters and digits (RFC 8461 3.1), "
            f"not {policy_id!r}{hint}"
        )
    return f"v=STSv1; id={policy_id}"


def tlsrpt_txt(rua: Any) -> str:
    """Build the SMTP TLS reporting TXT value ``v=TLSRPTv1; rua=...`` (RFC 8460 3).

    ``rua`` is one URI or a list of them, each ``mailto:`` with one address or an
    ``https:`` URL; they are joined with ',' in the given order, duplicates dropped.
    """
    uris = []
    for uri in _strings("rua", rua):
        if uri.lower().startswith("https:"):
            parts = urlsplit(uri)
            if not parts.hostname or uri[len("https:") :][:2] != "//":
                raise _error(f"rua {uri!r} must be a URL like https://host/path")
            if re.search(r"[\s,;]", uri):
                raise _error(f"rua {uri!r}: percent-encode ',', ';' and spaces")
            _domain(f"rua {uri!r}: the host", parts.hostname, underscore=False)
            uris.append("https:" + uri[len("https:") :])
        elif uri.lower().startswith("http:"):
            raise _error(f"rua {uri!r} must use https:, not http:")
        else:
            uris.append(_mailto("rua", uri))
    if not uris:
        raise _error("rua needs at least one mailto: or https: URI")
    return f"v=TLSRPTv1; rua={','.join(uris)}"


# -- srv_records ----------------------------------------------------------------------------

# (service, standard port, priority). RFC 8314 5.1 adds _submissions and wants implicit TLS
# preferred over STARTTLS; RFC 6186 lets the priority also rank IMAP above POP3. Clients
# compare priorities across these records, lower first.
_SRV_SERVICES = (
    ("submissions", 465, 0),
    ("submission", 587, 10),
    ("imaps", 993, 0),
    ("imap", 143, 10),
    ("pop3s", 995, 20),
    ("pop3", 110, 30),
)


def srv_records(domain: Any, hostname: Any, ports: Any = None) -> list[dict[str, Any]]:
    """SRV records that let mail clients find their servers (RFC 6186, RFC 8314 5.1).

    Returns one dict per service with the keys name, priority, weight, port and target,
    in this order: _submissions (465, priority 0), _submission (587, 10), _imaps (993, 0),
    _imap (143, 10), _pop3s (995, 20), _pop3 (110, 30); all under ``domain`` and pointing
    at ``hostname``, weight 1.

    ``ports`` maps service names to another port, or to None to publish that the service
    is not offered: target ``.``, port 0, priority 0, weight 0 (RFC 6186 4, RFC 2782).
    Services it does not name keep their standard port. Names and targets are written
    without the trailing dot.
    """
    zone = _domain("domain", domain, underscore=False)
    target = _domain("hostname", hostname, underscore=False)
    if ports is None:
        ports = {}
    if not isinstance(ports, Mapping):
        raise _error(f"ports must be a dict like {{'pop3': null}}, not {type(ports).__name__}")
    services = [service for service, _, _ in _SRV_SERVICES]
    unknown = [key for key in ports if key not in services]
    if unknown:
        raise _error(
            f"unknown service(s) {', '.join(map(repr, unknown))} in ports; "
            f"use {', '.join(services)}"
        )
    records = []
    for service, standard_port, priority in _SRV_SERVICES:
        name = f"_{service}._tcp.{zone}"
        port = ports.get(service, standard_port)
        if port is None:
            records.append({"name": name, "priority": 0, "weight": 0, "port": 0, "target": "."})
            continue
        port = _integer(f"ports[{service!r}]", port, 1, 65535)
        records.append(
            {"name": name, "priority": priority, "weight": 1, "port": port, "target": target}
        )
    return records


# -- tlsa_record ----------------------------------------------------------------------------

# RFC 7218 acronyms for the TLSA fields.
_TLSA_USAGES = {"PKIX-TA": 0, "PKIX-EE": 1, "DANE-TA": 2, "DANE-EE": 3}
_TLSA_SELECTORS = {"Cert": 0, "SPKI": 1}
_TLSA_MTYPES = {"Full": 0, "SHA2-256": 1, "SHA2-512": 2}


def _cryptography() -> tuple[Any, Any]:
    """The cryptography modules these filters use, or an error saying to install it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise _error(
            "this filter needs the Python library cryptography on the Ansible controller "
            "(pip install cryptography)"
        ) from None
    return serialization, x509


def _tlsa_field(what: str, value: Any, names: Mapping[str, int]) -> int:
    by_name = {name.lower(): number for name, number in names.items()}
    if isinstance(value, str) and value.strip().lower() in by_name:
        return by_name[value.strip().lower()]
    high = max(names.values())
    try:
        return _integer(what, value, 0, high)
    except AnsibleFilterError:
        numbers = "0 or 1" if high == 1 else f"0 to {high}"
        raise _error(
            f"{what} must be {numbers} or one of {', '.join(names)} (RFC 7218), not {value!r}"
        ) from None


def tlsa_record(cert_pem: Any, usage: Any = 3, selector: Any = 1, mtype: Any = 1) -> str:
    """TLSA rdata for a certificate (RFC 6698 2.1, RFC 7671), like ``3 1 1 <hex>``.

    ``usage`` 0-3 (PKIX-TA, PKIX-EE, DANE-TA, DANE-EE), ``selector`` 0 (Cert: the whole
    certificate, DER) or 1 (SPKI: its SubjectPublicKeyInfo, DER), ``mtype`` 0 (Full: the
    selected data itself), 1 (SHA2-256) or 2 (SHA2-512); numbers or the RFC 7218 names.
    The default 3 1 1 is what RFC 7671 5.1 and RFC 7672 3.1 recommend for mail: it stays
    valid across renewals that keep the key. The hex digits are lower case.

    ``cert_pem`` may hold a chain; for usages 1 and 3 the first certificate (the server's
    own, as in a fullchain.pem) is used, for usages 0 and 2 pass the trust anchor alone.
    """
    usage_number = _tlsa_field("usage", usage, _TLSA_USAGES)
    selector_number = _tlsa_field("selector", selector, _TLSA_SELECTORS)
    mtype_number = _tlsa_field("mtype", mtype, _TLSA_MTYPES)
    if isinstance(cert_pem, bytes):
        try:
            cert_pem = cert_pem.decode("ascii")
        except UnicodeDecodeError:
            raise _error("the certificate must be PEM text, not DER") from None
    if not isinstance(cert_pem, str) or "-----BEGIN CERTIFICATE-----" not in cert_pem:
        hint = ""
        if isinstance(cert_pem, str) and "PRIVATE KEY" in cert_pem:
            hint = "; that is a private key, pass the certificate"
        raise _error(f"input must be a PEM certificate (-----BEGIN CERTIFICATE-----){hint}")
    serialization, x509 = _cryptography()
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem.encode("ascii"))
    except (ValueError, UnicodeError) as exc:
        raise _error(f"the PEM certificate cannot be read ({exc})") from None
    if len(certificates) > 1 and usage_number in (0, 2):
        raise _error(
            f"usage {usage_number} names a trust anchor; pass that CA certificate alone, "
            f"not a chain of {len(certificates)}"
        )
    certificate = certificates[0]
    if selector_number == 0:
        data = certificate.public_bytes(serialization.Encoding.DER)
    else:
        data = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if mtype_number == 1:
        association = hashlib.sha256(data).hexdigest()
    elif mtype_number == 2:
        association = hashlib.sha512(data).hexdigest()
    else:
        association = data.hex()
    return f"{usage_number} {selector_number} {mtype_number} {association}"


class FilterModule:
    """DNS record values for a mail domain."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "spf_record": spf_record,
            "dmarc_record": dmarc_record,
            "dmarc_external_destinations": dmarc_external_destinations,
            "dkim_txt": dkim_txt,
            "txt_strings": txt_strings,
            "mta_sts_txt": mta_sts_txt,
            "tlsrpt_txt": tlsrpt_txt,
            "srv_records": srv_records,
            "tlsa_record": tlsa_record,
        }
