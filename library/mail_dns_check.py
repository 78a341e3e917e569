#!/usr/bin/python
"""Ansible module: check a mail domain's published DNS records against expectations."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mail_dns_check
short_description: Check the DNS records of a mail domain against what is expected
description:
  - Queries the MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, SRV, A/AAAA and PTR records of a mail
    domain and compares each with an expectation. Only the checks named in O(expect) are made.
  - With O(expect.mta_sts_policy) it also fetches the domain's MTA-STS policy over HTTPS, as a
    sending mail server does (RFC 8461 sections 3.3 and 4.1), and checks it.
  - Every check yields one entry in RV(results) with a status of V(ok), V(warn) or V(fail).
    A V(warn) never fails the task (for example an MX host nobody expected, or an SPF record
    stricter than expected); a V(fail) does in O(mode=check) (for example a missing record,
    a different DKIM key, C(~all) where C(-all) is expected, DMARC C(p=none) where
    C(p=reject) is expected, or a DNS timeout).
  - O(mode=report) is for domains whose DNS is run by someone else. The module never fails on
    a check and returns the records to publish (RV(records)) and an aligned table of them with
    their current status (RV(table)).
  - The module only reads (DNS, and the MTA-STS policy over HTTPS). Run it on the controller,
    with C(delegate_to) set to C(localhost).
  - Right after a change, ask the servers that hold the zone (O(nameservers) set to the
    primary, or O(authoritative)) and let the checks repeat (O(wait)) while the change
    reaches the secondaries; a caching resolver keeps the old answer until its TTL runs out.
version_added: "1.0.0"
options:
  domain:
    description: The mail domain (the part after C(@)).
    type: str
    required: true
  nameservers:
    description:
      - Nameservers to ask, each C(ip) or C(ip:port) (C([v6]:port) for IPv6 with a port).
      - Ask the authoritative servers to see what is published now, without resolver caches.
      - Default is the system resolver (C(/etc/resolv.conf)).
      - With O(authoritative), these (or the system resolver) are only used to find the
        authoritative servers.
    type: list
    elements: str
  authoritative:
    description:
      - Ask the authoritative servers of each name's zone directly (without recursion); the
        zone is found from the SOA record, its servers from the NS records and their
        addresses, all through O(nameservers) or the system resolver.
      - The reverse zones of O(expect.ptr) have their own servers, found the same way.
    type: bool
    default: false
  authoritative_port:
    description: The port the authoritative servers are asked on (53; another for tests).
    type: int
    default: 53
  wait:
    description:
      - Seconds to keep repeating the checks while any of them fails, every 2 seconds; the
        last round's results are returned. V(0) checks once.
    type: float
    default: 0
  timeout:
    description:
      - Seconds to wait for the answer to each query.
      - Also the time limit of the whole MTA-STS policy fetch (connection, TLS handshake and
        HTTP response together).
    type: float
    default: 5
  mta_sts_ca_file:
    description:
      - A file of PEM CA certificates (on the host that runs the module) trusted for the
        certificate of C(mta-sts.<domain>) in addition to the system's trust store, for a
        private or test CA. A sending mail server trusts only its own store, so a policy that
        only passes with this file set is seen by nobody else.
      - Only used by O(expect.mta_sts_policy).
    type: path
  mta_sts_port:
    description:
      - The port the MTA-STS policy is fetched from. Senders always use 443; another port is for
        tests.
    type: int
    default: 443
  mode:
    description:
      - V(check) fails the task when any check has status V(fail).
      - V(report) never fails on a check; it adds RV(table) and RV(records).
    type: str
    choices: [check, report]
    default: check
  expect:
    description: What should be published. Each key is optional and enables one check.
    type: dict
    suboptions:
      mx:
        description:
          - MX hosts, most preferred first (a list of host names), or a list of dicts with
            C(preference) and C(host) when the exact preferences matter.
          - A missing host, a wrong preference or a wrong order fails; an extra host warns.
        type: list
        elements: raw
      spf:
        description:
          - The exact SPF TXT value at the domain, for example C(v=spf1 mx -all).
          - Compared term by term, ignoring white space and letter case. A weaker C(all)
            (C(~all) where C(-all) is expected) fails; a stricter one warns; the same terms in
            another order warn.
        type: str
      dkim:
        description:
          - Selector to expected TXT value of C(<selector>._domainkey.<domain>).
          - The public key (C(p=)) and key type (C(k=), default C(rsa)) must match. White space,
            zone-file quoting and splitting into several strings do not matter. A different
            C(t=), C(h=), C(s=) or C(n=) tag warns, as does C(t=y) (testing).
        type: dict
      dmarc:
        description:
          - The expected C(_dmarc) TXT value (compared tag by tag), or a dict of the tags that
            must be present, such as C(p=reject) given as a dict with key C(p).
          - A weaker C(p) or C(sp) (C(none) < C(quarantine) < C(reject)) or a lower C(pct)
            fails; a stricter one warns. Missing tags take their RFC 7489 defaults.
        type: raw
      mta_sts_id:
        description: The C(id) published in the C(_mta-sts) TXT record (C(v=STSv1; id=...)).
        type: str
      mta_sts_policy:
        description:
          - The exact MTA-STS policy text C(https://mta-sts.<domain>/.well-known/mta-sts.txt)
            must serve, line ends included (CRLF, as the dns_records role writes it).
          - The policy host's name is resolved through O(nameservers) (or O(authoritative)),
            CNAMEs followed, and the policy fetched from that address as a sender fetches it
            (RFC 8461 3.3). A certificate that is not trusted or not valid for
            C(mta-sts.<domain>), a redirect (never followed), a status other than 200, a media
            type other than C(text/plain), a body over 64 KiB, no complete answer within
            O(timeout), a policy that is not valid (RFC 8461 3.2), a text that differs from
            this one (the first differing line is named), or an MX host that no C(mx:) line of
            the served policy matches (RFC 8461 4.1) fails.
          - The MX hosts are those of O(expect.mx) when given, else the published ones.
        type: str
      tlsrpt:
        description:
          - The C(_smtp._tls) TXT value, for example C(v=TLSRPTv1; rua=mailto:tls@example.org).
        type: str
      srv:
        description: SRV records (RFC 6186 and friends) that must be published.
        type: list
        elements: dict
        suboptions:
          name:
            description:
              - The owner name, such as C(_submission._tcp); relative to O(domain) unless it
                ends with a dot or with the domain.
            type: str
            required: true
          port:
            description: The port.
            type: int
            required: true
          target:
            description: The target host; C(.) for "service not provided".
            type: str
            required: true
          priority:
            description: The priority; not compared when omitted (0 in RV(records)).
            type: int
          weight:
            description: The weight; not compared when omitted (1 in RV(records)).
            type: int
      a:
        description:
          - IPv4 addresses of the MX hosts (the hosts in O(expect.mx), else those published).
          - A list applies to all MX hosts together; every address of every MX host must be
            in it, and each of its addresses must belong to some MX host.
          - A dict maps each host to its exact list of addresses.
        type: raw
      aaaa:
        description: IPv6 addresses of the MX hosts, as for O(expect.a).
        type: raw
      ptr:
        description:
          - IP address to the host name its PTR record must name. The host name must also
            resolve back to the address (forward-confirmed reverse DNS).
        type: dict
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode makes the same queries and the same policy fetch.
  diff_mode:
    support: none
  platform:
    platforms: posix
requirements:
  - dnspython >= 2.0 (on the host that runs the module, usually the controller)
notes:
  - Queries go out with recursion desired, so a recursive resolver and an authoritative
    server both work as O(nameservers).
author:
  - Estafeta contributors
"""

EXAMPLES = r"""
- name: Check the published mail records of example.org
  mail_dns_check:
    domain: example.org
    nameservers: [192.0.2.53]
    expect:
      mx: [mx1.example.org, mx2.example.org]
      spf: v=spf1 mx -all
      dkim:
        s2026: "{{ lookup('ansible.builtin.file', 'dkim/example.org.s2026.txt') }}"
      dmarc: {p: reject}
      mta_sts_id: "20260101T000000"
      # CRLF line ends, as the policy is served.
      mta_sts_policy: "version: STSv1\r\nmode: enforce\r\n\
        mx: mx1.example.org\r\nmx: mx2.example.org\r\nmax_age: 604800\r\n"
      tlsrpt: v=TLSRPTv1; rua=mailto:tlsrpt@example.org
      srv:
        - {name: _submission._tcp, port: 587, target: mx1.example.org}
        - {name: _imaps._tcp, port: 993, target: mx1.example.org}
      a: [192.0.2.25, 192.0.2.26]
      ptr:
        192.0.2.25: mx1.example.org
        192.0.2.26: mx2.example.org
  delegate_to: localhost

- name: Tell the DNS administrator what to publish
  mail_dns_check:
    domain: example.org
    mode: report
    expect:
      mx: [{preference: 10, host: mx1.example.org}]
      spf: v=spf1 mx -all
  delegate_to: localhost
  register: mail_dns

- name: Show the records to publish
  ansible.builtin.debug:
    msg: "{{ mail_dns.table }}"
"""

RETURN = r"""
ok:
  description: Whether no check has status V(fail).
  returned: always
  type: bool
  sample: true
results:
  description:
    - One entry per check, in the order mx, a, aaaa, ptr, spf, dkim, dmarc, mta_sts,
      mta_sts_policy, tlsrpt and srv.
  returned: always
  type: list
  elements: dict
  contains:
    check:
      description: mx, a, aaaa, ptr, spf, dkim, dmarc, mta_sts, mta_sts_policy, tlsrpt or srv.
      type: str
      sample: dkim
    name:
      description:
        - The DNS name checked (no final dot); for mta_sts_policy the policy host
          C(mta-sts.<domain>).
      type: str
      sample: s2026._domainkey.example.org
    status:
      description: V(ok), V(warn) or V(fail).
      type: str
      sample: ok
    expected:
      description: The record values expected (for mta_sts_policy, the policy's lines).
      type: list
      elements: str
      sample: ["10 mx1.example.org."]
    found:
      description: The record values published now (for mta_sts_policy, the lines served).
      type: list
      elements: str
      sample: ["10 mx1.example.org.", "20 mx2.example.org."]
    why:
      description: What was found to be right or wrong.
      type: str
      sample: "unexpected MX host: mx2.example.org (preference 20)"
attempts:
  description: How many rounds of checks were made (more than one with O(wait)).
  returned: always
  type: int
  sample: 1
failed_checks:
  description: C(<check> <name>) of every check with status V(fail).
  returned: always
  type: list
  elements: str
  sample: ["spf example.org"]
records:
  description: The records to publish (names and host names absolute, with a final dot).
  returned: when O(mode=report)
  type: list
  elements: dict
  contains:
    type:
      description: The record type.
      type: str
      sample: TXT
    name:
      description: The owner name.
      type: str
      sample: _dmarc.example.org.
    value:
      description: The record data (TXT values unquoted and unsplit).
      type: str
      sample: v=DMARC1; p=reject
table:
  description:
    - Aligned text lines, a header then one line per record, with the columns TYPE, NAME,
      VALUE (to publish), STATUS (of its check) and NOW (what is published now).
    - With O(expect.mta_sts_policy), a line of TYPE C(POLICY) follows the C(_mta-sts) TXT
      record, with the policy's URL as NAME and its lines separated by C( | ) as VALUE and
      NOW. It is not a DNS record, so it is not in RV(records).
  returned: when O(mode=report)
  type: list
  elements: str
  sample:
    - "TYPE  NAME                  VALUE               STATUS  NOW"
    - "TXT   _dmarc.example.org.   v=DMARC1; p=reject  fail    v=DMARC1; p=none"
"""

# Ansible reads DOCUMENTATION, EXAMPLES and RETURN first: the imports follow them.
import base64  # noqa: E402
import binascii  # noqa: E402
import http.client  # noqa: E402
import io  # noqa: E402
import ipaddress  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

DNSPYTHON_IMPORT_ERROR = None
try:
    import dns.exception
    import dns.flags
    import dns.name
    import dns.resolver
    import dns.reversename
except ImportError:
    DNSPYTHON_IMPORT_ERROR = traceback.format_exc()
try:
    import dns.nameserver  # dnspython >= 2.4: a port per nameserver

    HAS_NAMESERVER_CLASSES = True
except ImportError:
    HAS_NAMESERVER_CLASSES = False

OK = "ok"
WARN = "warn"
FAIL = "fail"
_RANK = {OK: 0, WARN: 1, FAIL: 2}
# DMARC policies from weakest to strongest.
_POLICY_RANK = {"none": 0, "quarantine": 1, "reject": 2}
# RFC 7489 6.3 defaults for tags a record may leave out (sp defaults to p).
_DMARC_DEFAULTS = {"adkim": "r", "aspf": "r", "pct": "100", "fo": "0", "rf": "afrf", "ri": "86400"}
# SPF "all" qualifiers from weakest to strongest; no "all" at all ends in neutral.
_ALL_RANK = {"+": 0, "?": 1, "~": 2, "-": 3}
_ALL_NAMES = {"+": "pass", "?": "neutral", "~": "softfail", "-": "fail"}
_SPF_ALL = re.compile(r"[+?~-]?all")
# Seconds between rounds of checks with O(wait).
WAIT_INTERVAL = 2.0

# rfc8461:3.2: the policy is served from this "well-known" path (RFC 8615) of the
# Policy Host, mta-sts.<domain>.
MTA_STS_PATH = "/.well-known/mta-sts.txt"
# rfc8461:3.3: "a suggested maximum policy size is 64 kilobytes"; senders may read
# no more.
MTA_STS_MAX_BODY = 64 * 1024
# rfc8461:3.2: max_age is at most 31557600 seconds (about a year).
MTA_STS_MAX_AGE = 31557600
MTA_STS_MODES = ("enforce", "testing", "none")
# How many CNAMEs are followed from mta-sts.<domain> to its address.
MAX_CNAMES = 8
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the certificate is for another name.
_X509_HOSTNAME_MISMATCH = 62
# OpenSSL's verify errors that mean "signed by a CA that is not trusted" (self-signed,
# unknown issuer...).
_X509_UNTRUSTED = (18, 19, 20, 21)
_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class LookupFailure(Exception):
    """A query that got no usable answer (timeout, SERVFAIL, REFUSED...)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def unquote_txt(value: str) -> str:
    """A TXT value as text: zone-file quoting (``"a" "b"``, optionally in
    parentheses, with ``\\"`` and ``\\DDD`` escapes) is undone and the strings
    joined; anything else is returned stripped."""
    text = str(value).strip()
    inner = text[1:-1].strip() if text.startswith("(") and text.endswith(")") else text
    if not inner.startswith('"'):
        return text
    parts: list[str] = []
    i = 0
    while i < len(inner):
        if inner[i].isspace():
            i += 1
            continue
        if inner[i] != '"':
            return text  # not only quoted strings: take the value literally
        i += 1
        buf: list[str] = []
        while i < len(inner) and inner[i] != '"':
            if inner[i] == "\\" and i + 1 < len(inner):
                digits = inner[i + 1 : i + 4]
                if len(digits) == 3 and digits.isdigit():
                    buf.append(chr(int(digits)))
                    i += 4
                else:
                    buf.append(inner[i + 1])
                    i += 2
                continue
            buf.append(inner[i])
            i += 1
        if i >= len(inner):
            return text  # unterminated quote
        i += 1
        parts.append("".join(buf))
    return "".join(parts)


def parse_tags(text: str) -> dict[str, str]:
    """A tag=value list (DKIM, DMARC, MTA-STS, TLS-RPT): tags lower-cased,
    values stripped with inner white space runs collapsed; the first of a
    repeated tag wins."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        tag, eq, value = part.partition("=")
        tag = tag.strip().lower()
        if not eq or not tag:
            continue
        tags.setdefault(tag, " ".join(value.split()))
    return tags


def _fold_ws(text: str) -> str:
    return " ".join(text.split())


def _uri_set(value: str) -> set[str]:
    return {uri.strip().lower() for uri in value.split(",") if uri.strip()}


def _key_bytes(value: str) -> bytes | str:
    """DKIM p= key material: base64 decoded, white space ignored."""
    compact = "".join(value.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return compact


def _is_record(text: str, version: str) -> bool:
    """Whether a TXT value starts with the version tag (``v=spf1``, ``v=DMARC1``...)."""
    head = text.lstrip()
    if version == "v=spf1":
        return head.lower() == "v=spf1" or head.lower().startswith("v=spf1 ")
    return (
        parse_tags(head.split(";", 1)[0]).get("v", "").lower() == version.split("=", 1)[1].lower()
    )


class PolicyError(Exception):
    """The MTA-STS policy could not be fetched; ``why`` says what to fix."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _policy_lines(text: str) -> list[str]:
    """The lines of a policy, without their ends (rfc8461:3.2: LF or CRLF)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the last line's end is optional
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse_mta_sts_policy(text: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """An MTA-STS policy (rfc8461:3.2) as ``(fields, problems, warnings)``.

    ``fields`` has version, mode and max_age (the first of each; rfc8461:3.2 says
    later repeats SHOULD be ignored) and mx (every pattern, in order). Each entry
    of ``problems`` makes the policy invalid to a sender; ``warnings`` do not."""
    fields: dict[str, Any] = {"mx": []}
    problems: list[str] = []
    warnings: list[str] = []
    keys: list[str] = []
    for number, line in enumerate(_policy_lines(text), 1):
        # rfc8461:3.2: sts-policy-field *WSP, the field "name:" *WSP value.
        key, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not line.strip():
            warnings.append(f"line {number} is empty")
            continue
        if not colon or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", key):
            problems.append(f"line {number} {line!r} is not a 'key: value' field")
            continue
        keys.append(key)
        if key == "mx":
            fields["mx"].append(value)
            if not _valid_mx_pattern(value):
                problems.append(f"mx: {value!r} is not a host name or *.domain pattern")
        elif key in ("version", "mode", "max_age"):
            if key in fields:
                warnings.append(f"{key}: repeated on line {number}; senders use the first")
            else:
                fields[key] = value
        # Other keys are extensions: rfc8461:3.2 says senders ignore them.
    if "version" not in fields:
        problems.append("no version: line")
    elif fields["version"] != "STSv1":
        problems.append(f"version: {fields['version']}, STSv1 expected")
    elif keys and keys[0] != "version":
        warnings.append("version: is not the first line")
    if "mode" not in fields:
        problems.append("no mode: line")
    elif fields["mode"] not in MTA_STS_MODES:
        problems.append(f"mode: {fields['mode']} is none of enforce, testing, none")
    max_age = fields.get("max_age")
    if max_age is None:
        problems.append("no max_age: line")
    elif not re.fullmatch(r"[0-9]{1,10}", max_age) or int(max_age) > MTA_STS_MAX_AGE:
        problems.append(f"max_age: {max_age} is not a number of seconds, 0 to {MTA_STS_MAX_AGE}")
    # rfc8461:3.2: mx "required at least once, except when mode is 'none'".
    if not fields["mx"] and fields.get("mode") != "none":
        problems.append("no mx: line")
    return fields, problems, warnings


def _valid_mx_pattern(pattern: str) -> bool:
    """rfc8461:3.2: sts-policy-mx-value = ["*."] Domain (a wildcard is a whole label)."""
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.lower().rstrip(".").split(".")
    return len(labels) >= 1 and all(_LDH_LABEL.fullmatch(label) for label in labels)


def mx_pattern_matches(pattern: str, host: str) -> bool:
    """Whether an MX host name matches a policy's mx pattern (rfc8461:4.1).

    Names compare without letter case; "*.example.com" stands for exactly one more
    label: it matches "mail.example.com", not "example.com" nor "a.b.example.com"."""
    pattern = pattern.strip().lower().rstrip(".")
    host = host.strip().lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def first_difference(served: str, expected: str) -> str:
    """Where a served policy first differs from the expected text, as a sentence."""
    # Lines end at LF (rfc8461:3.2: LF or CRLF); the CR stays part of the line's end.
    have = re.findall(r"[^\n]*\n|[^\n]+\Z", served)
    want = re.findall(r"[^\n]*\n|[^\n]+\Z", expected)
    ends = {"\r\n": "CRLF", "\n": "LF", "": "no line end"}

    def bare(line: str) -> str:
        return line.rstrip("\r\n")

    for number, (got, wanted) in enumerate(zip(have, want, strict=False), 1):
        if got == wanted:
            continue
        if bare(got) != bare(wanted):
            return f"line {number} is {bare(got)!r}, {bare(wanted)!r} expected"
        got_end = ends.get(got[len(bare(got)) :], "another line end")
        wanted_end = ends.get(wanted[len(bare(wanted)) :], "another line end")
        return f"line {number} {bare(got)!r} has {got_end}, {wanted_end} expected"
    if len(have) == len(want):
        return "the same text"
    if len(have) > len(want):
        return f"line {len(want) + 1} {bare(have[len(want)])!r} is not expected"
    return (
        f"line {len(have) + 1} {bare(want[len(have)])!r} is missing"
        f" (the policy served ends after line {len(have)})"
    )


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until an absolute deadline: each read waits only for the time
    left, so a server that sends one byte at a time cannot stretch the time limit."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("time limit reached")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _ResponseSource:
    """What http.client.HTTPResponse reads from: only makefile() is used."""

    def __init__(self, reader: _DeadlineReader) -> None:
        self.reader = reader

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self.reader)


class MailDNSCheck:
    """Runs the checks named in ``expect`` and collects one result per check."""

    def __init__(self, module: AnsibleModule, zone_servers: dict[str, Any] | None = None) -> None:
        self.module = module
        params = module.params
        self.domain = self.host(params["domain"])
        self.timeout = float(params["timeout"])
        self.expect = {k: v for k, v in (params["expect"] or {}).items() if v is not None}
        self.servers_text = ", ".join(params["nameservers"] or []) or "the system resolver"
        self.resolver = self._resolver(params["nameservers"] or [])
        self.authoritative = bool(params["authoritative"])
        # zone -> its authoritative servers' resolver (or the LookupFailure finding them),
        # kept across the rounds of O(wait).
        self.zone_servers: dict[str, Any] = {} if zone_servers is None else zone_servers
        self.results: list[dict[str, Any]] = []
        # (record, index of the result it belongs to), for the report.
        self.published: list[tuple[dict[str, str], int]] = []
        # What is served rather than published in DNS (the MTA-STS policy), the same way:
        # in the table, not in RV(records).
        self.served: list[tuple[dict[str, str], int]] = []
        self._cache: dict[tuple[str, str], list[Any] | LookupFailure] = {}

    # -- plumbing -------------------------------------------------------------

    def _resolver(self, nameservers: list[str]) -> dns.resolver.Resolver:
        if not nameservers:
            try:
                resolver = dns.resolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                self.module.fail_json(msg=f"cannot read the system resolver configuration: {exc}")
        else:
            resolver = dns.resolver.Resolver(configure=False)
            servers = [self._nameserver(text) for text in nameservers]
            if HAS_NAMESERVER_CLASSES:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in servers]
            else:
                resolver.nameservers = [a for a, _ in servers]
                resolver.nameserver_ports = dict(servers)
        resolver.timeout = self.timeout
        resolver.lifetime = self.timeout
        resolver.cache = None
        return resolver

    def _nameserver(self, text: str) -> tuple[str, int]:
        text = text.strip()
        address, port = text, "53"
        if text.startswith("["):
            address, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "53"
        elif text.count(":") == 1:
            address, port = text.split(":")
        try:
            return str(ipaddress.ip_address(address)), int(port)
        except ValueError:
            self.module.fail_json(msg=f"nameservers: {text!r} is not an IP address or ip:port")
            raise  # fail_json does not return

    @staticmethod
    def host(text: Any) -> str:
        """A host or domain name in canonical text: lower case, IDNA, no final dot."""
        name = str(text).strip()
        if name in ("", "."):
            return ""
        try:
            return dns.name.from_text(name).to_text(omit_final_dot=True).lower()
        except dns.exception.DNSException:
            return name.rstrip(".").lower()

    def absolute(self, name: str) -> str:
        """``name`` as a child of the domain unless it already is one or ends with a dot."""
        text = str(name).strip()
        if text.endswith("."):
            return self.host(text)
        full = self.host(text)
        if full == self.domain or full.endswith("." + self.domain):
            return full
        return self.host(f"{text}.{self.domain}")

    def query(self, name: str, rdtype: str) -> list[Any]:
        """The records of one RRset; [] for NXDOMAIN or no data. Raises LookupFailure."""
        key = (name, rdtype)
        if key not in self._cache:
            self._cache[key] = self._query(name, rdtype)
        cached = self._cache[key]
        if isinstance(cached, LookupFailure):
            raise cached
        return cached

    def _authoritative_resolver(self, name: str) -> tuple[dns.resolver.Resolver, str]:
        """A resolver that asks the authoritative servers of ``name``'s zone, and their text."""
        try:
            zone = dns.resolver.zone_for_name(name, resolver=self.resolver)
        except dns.exception.DNSException as exc:
            raise LookupFailure(f"cannot find the zone of {name}: {exc}") from exc
        key = zone.to_text()
        if key not in self.zone_servers:
            self.zone_servers[key] = self._zone_resolver(zone)
        found = self.zone_servers[key]
        if isinstance(found, LookupFailure):
            raise found
        resolver, text = found
        return resolver, text

    def _zone_resolver(self, zone: Any) -> tuple[dns.resolver.Resolver, str] | LookupFailure:
        port = int(self.module.params["authoritative_port"])
        addresses: list[str] = []
        try:
            targets = [r.target for r in self.resolver.resolve(zone, "NS", search=False)]
            for target in targets:
                for rdtype in ("A", "AAAA"):
                    answer = self.resolver.resolve(
                        target, rdtype, raise_on_no_answer=False, search=False
                    )
                    addresses += [r.address for r in answer.rrset or []]
        except dns.exception.DNSException as exc:
            return LookupFailure(f"cannot find the servers of {zone}: {exc}")
        if not addresses:
            return LookupFailure(f"no address for the NS records of {zone}")
        resolver = dns.resolver.Resolver(configure=False)
        if HAS_NAMESERVER_CLASSES:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(a, port) for a in addresses]
        else:
            resolver.nameservers = addresses
            resolver.nameserver_ports = dict.fromkeys(addresses, port)
        resolver.flags = 0  # no recursion: the servers answer from the zone
        resolver.timeout = self.timeout
        resolver.lifetime = self.timeout
        resolver.cache = None
        where = ", ".join(f"{t.to_text(omit_final_dot=True)}" for t in targets)
        return resolver, f"the servers of {zone.to_text(omit_final_dot=True)} ({where})"

    def _query(self, name: str, rdtype: str) -> list[Any] | LookupFailure:
        where = f"{name} {rdtype}"
        resolver, servers_text = self.resolver, self.servers_text
        if self.authoritative:
            try:
                resolver, servers_text = self._authoritative_resolver(name)
            except LookupFailure as exc:
                return exc
        try:
            answer = resolver.resolve(
                dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            return LookupFailure(
                f"timeout querying {where}: no answer from {servers_text} within {self.timeout:g}s"
            )
        except dns.resolver.NoNameservers as exc:
            return LookupFailure(f"no nameserver answered {where}: {exc}")
        except dns.exception.DNSException as exc:
            return LookupFailure(f"querying {where} failed: {exc}")
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[str]:
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.query(name, "TXT")]

    def add(
        self,
        check: str,
        name: str,
        status: str,
        expected: list[str],
        found: list[str],
        why: str,
    ) -> int:
        self.results.append(
            {
                "check": check,
                "name": name,
                "status": status,
                "expected": list(expected),
                "found": list(found),
                "why": why,
            }
        )
        return len(self.results) - 1

    def publish(self, index: int, rtype: str, name: str, value: str) -> None:
        record = {"type": rtype, "name": name.rstrip(".") + ".", "value": value}
        self.published.append((record, index))

    @staticmethod
    def verdict(problems: list[str], warnings: list[str], fine: str) -> tuple[str, str]:
        if problems:
            return FAIL, "; ".join(problems + warnings)
        if warnings:
            return WARN, "; ".join(warnings)
        return OK, fine

    # -- the checks -----------------------------------------------------------------

    def run(self) -> None:
        checks = [
            ("mx", self.check_mx),
            ("a", lambda v: self.check_addresses("a", "A", v)),
            ("aaaa", lambda v: self.check_addresses("aaaa", "AAAA", v)),
            ("ptr", self.check_ptr),
            ("spf", self.check_spf),
            ("dkim", self.check_dkim),
            ("dmarc", self.check_dmarc),
            ("mta_sts_id", self.check_mta_sts),
            ("mta_sts_policy", self.check_mta_sts_policy),
            ("tlsrpt", self.check_tlsrpt),
            ("srv", self.check_srv),
        ]
        for key, check in checks:
            if key in self.expect:
                check(self.expect[key])

    def _expected_mx(self, value: Any) -> list[tuple[int | None, str]]:
        if not isinstance(value, list) or not value:
            self.module.fail_json(msg="expect.mx must be a non-empty list")
        wanted: list[tuple[int | None, str]] = []
        for item in value:
            if isinstance(item, dict):
                if "host" not in item or "preference" not in item:
                    self.module.fail_json(msg=f"expect.mx: {item!r} needs preference and host")
                try:
                    preference = int(item["preference"])
                except (TypeError, ValueError):
                    self.module.fail_json(msg=f"expect.mx: bad preference in {item!r}")
                wanted.append((preference, self.host(item["host"])))
            elif isinstance(item, str):
                wanted.append((None, self.host(item)))
            else:
                self.module.fail_json(msg=f"expect.mx: {item!r} is neither a host nor a dict")
        return wanted

    def check_mx(self, value: Any) -> None:
        wanted = self._expected_mx(value)
        shown = [(p if p is not None else 10 * (i + 1), h) for i, (p, h) in enumerate(wanted)]
        expected = [f"{p} {h}." for p, h in shown]
        try:
            records = self.query(self.domain, "MX")
        except LookupFailure as exc:
            index = self.add("mx", self.domain, FAIL, expected, [], exc.why)
        else:
            found = sorted((r.preference, self.host(r.exchange.to_text())) for r in records)
            shown_found = [f"{p} {h}." if h else f"{p} ." for p, h in found]
            status, why = self._compare_mx(wanted, found)
            index = self.add("mx", self.domain, status, expected, shown_found, why)
        for line in expected:
            self.publish(index, "MX", self.domain, line)

    def _compare_mx(
        self, wanted: list[tuple[int | None, str]], found: list[tuple[int, str]]
    ) -> tuple[str, str]:
        if not found:
            return FAIL, f"no MX record at {self.domain}"
        if any(host == "" for _, host in found):
            return FAIL, f"null MX (RFC 7505): {self.domain} says it accepts no mail"
        preference: dict[str, int] = {}
        for pref, host in found:
            preference.setdefault(host, pref)
        problems: list[str] = []
        warnings: list[str] = []
        for pref, host in wanted:
            if host not in preference:
                problems.append(f"{host} is not an MX host of {self.domain}")
            elif pref is not None and preference[host] != pref:
                problems.append(f"{host} has preference {preference[host]}, expected {pref}")
        if all(pref is None for pref, _ in wanted):
            present = [host for _, host in wanted if host in preference]
            for first, second in itertools.pairwise(present):
                if preference[first] > preference[second]:
                    problems.append(
                        f"{second} (preference {preference[second]}) is preferred over"
                        f" {first} (preference {preference[first]}); expected {first} first"
                    )
        extra = [
            f"{host} (preference {pref})"
            for host, pref in preference.items()
            if host not in {h for _, h in wanted}
        ]
        if extra:
            warnings.append(
                f"unexpected MX host{'s' if len(extra) > 1 else ''}: {', '.join(extra)}"
            )
        return self.verdict(problems, warnings, "MX hosts as expected")

    def _mx_hosts(self, check: str) -> list[str] | None:
        """The MX hosts whose addresses are checked; None after recording a failure."""
        try:
            return self._find_mx_hosts()
        except LookupFailure as exc:
            self.add(check, self.domain, FAIL, [], [], exc.why)
            return None

    def _find_mx_hosts(self) -> list[str]:
        """The MX hosts of O(expect.mx), else the published ones. Raises LookupFailure."""
        if "mx" in self.expect:
            return [host for _, host in self._expected_mx(self.expect["mx"])]
        try:
            records = self.query(self.domain, "MX")
        except LookupFailure as exc:
            raise LookupFailure(f"cannot find the MX hosts: {exc.why}") from exc
        hosts = [
            self.host(r.exchange.to_text()) for r in sorted(records, key=lambda r: r.preference)
        ]
        if not hosts:
            return [self.domain]  # RFC 5321 5.1: the implicit MX
        if "" in hosts:
            raise LookupFailure("null MX: there is no MX host to check")
        return list(dict.fromkeys(hosts))

    def _addresses(self, check: str, values: Any) -> list[str]:
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list):
            self.module.fail_json(msg=f"expect.{check}: expected a list of addresses")
        version = 4 if check == "a" else 6
        out = []
        for value in values:
            try:
                address = ipaddress.ip_address(str(value).strip())
            except ValueError:
                self.module.fail_json(msg=f"expect.{check}: {value!r} is not an IP address")
            if address.version != version:
                self.module.fail_json(msg=f"expect.{check}: {value} is not an IPv{version} address")
            out.append(address.compressed)
        return list(dict.fromkeys(out))

    def _lookup_addresses(self, host: str, rdtype: str) -> list[str]:
        return sorted(
            {ipaddress.ip_address(r.address).compressed for r in self.query(host, rdtype)},
            key=ipaddress.ip_address,
        )

    def check_addresses(self, check: str, rdtype: str, value: Any) -> None:
        if isinstance(value, dict):
            for host_text, addresses in value.items():
                host = self.host(host_text)
                expected = self._addresses(check, addresses)
                self._check_host_addresses(check, rdtype, host, expected, exact=True)
            return
        expected = self._addresses(check, value)
        hosts = self._mx_hosts(check)
        if hosts is None:
            return
        seen: set[str] = set()
        for host in hosts:
            seen |= self._check_host_addresses(check, rdtype, host, expected, exact=len(hosts) == 1)
        missing = [a for a in expected if a not in seen]
        if len(hosts) > 1 and missing:
            self.add(
                check,
                self.domain,
                FAIL,
                expected,
                sorted(seen, key=ipaddress.ip_address),
                f"not an address of any MX host ({', '.join(hosts)}): {', '.join(missing)}",
            )

    def _check_host_addresses(
        self, check: str, rdtype: str, host: str, expected: list[str], *, exact: bool
    ) -> set[str]:
        try:
            found = self._lookup_addresses(host, rdtype)
        except LookupFailure as exc:
            index = self.add(check, host, FAIL, expected, [], exc.why)
            found = []
        else:
            problems = []
            unexpected = [a for a in found if a not in expected]
            if not found:
                problems.append(f"no {rdtype} record at {host}")
            elif unexpected:
                problems.append(f"unexpected: {', '.join(unexpected)}")
            missing = [a for a in expected if a not in found]
            if exact and missing:
                problems.append(f"missing: {', '.join(missing)}")
            status, why = self.verdict(problems, [], f"{rdtype} records as expected")
            index = self.add(check, host, status, expected, found, why)
        for address in expected:
            self.publish(index, rdtype, host, address)
        return set(found)

    def check_ptr(self, value: dict[str, Any]) -> None:
        for ip_text, host_text in value.items():
            try:
                ip = ipaddress.ip_address(str(ip_text).strip())
            except ValueError:
                self.module.fail_json(msg=f"expect.ptr: {ip_text!r} is not an IP address")
            host = self.host(host_text)
            name = dns.reversename.from_address(ip.compressed).to_text(omit_final_dot=True)
            expected = [f"{host}."]
            try:
                found = [self.host(r.target.to_text()) for r in self.query(name, "PTR")]
            except LookupFailure as exc:
                index = self.add("ptr", name, FAIL, expected, [], exc.why)
                self.publish(index, "PTR", name, f"{host}.")
                continue
            problems: list[str] = []
            warnings: list[str] = []
            if not found:
                problems.append(f"no PTR record for {ip.compressed}")
            elif host not in found:
                problems.append(f"{ip.compressed} points to {', '.join(found)}, expected {host}")
            else:
                if len(found) > 1:
                    warnings.append(
                        f"{len(found)} PTR records; receivers may look at only one of them"
                    )
                rdtype = "A" if ip.version == 4 else "AAAA"
                try:
                    forward = self._lookup_addresses(host, rdtype)
                except LookupFailure as exc:
                    problems.append(f"cannot confirm the PTR forward: {exc.why}")
                else:
                    if ip.compressed not in forward:
                        resolves = ", ".join(forward) if forward else f"no {rdtype} record"
                        problems.append(
                            f"{host} does not resolve back to {ip.compressed}"
                            f" (forward-confirmed reverse DNS fails): it has {resolves}"
                        )
            status, why = self.verdict(problems, warnings, f"{host} and back to {ip.compressed}")
            index = self.add("ptr", name, status, expected, [f"{h}." for h in found], why)
            self.publish(index, "PTR", name, f"{host}.")

    @staticmethod
    def _split_all(terms: list[str]) -> tuple[list[str], str | None]:
        if terms and _SPF_ALL.fullmatch(terms[-1]):
            qualifier = terms[-1][0] if terms[-1][0] in _ALL_RANK else "+"
            return terms[:-1], qualifier
        return terms, None

    def check_spf(self, value: str) -> None:
        expected = unquote_txt(value)
        name = self.domain
        try:
            records = [t for t in self.txt(name) if _is_record(t, "v=spf1")]
        except LookupFailure as exc:
            index = self.add("spf", name, FAIL, [expected], [], exc.why)
        else:
            status, why = self._compare_spf(expected, records)
            index = self.add("spf", name, status, [expected], records, why)
        self.publish(index, "TXT", name, expected)

    def _compare_spf(self, expected: str, records: list[str]) -> tuple[str, str]:
        if not records:
            return FAIL, f"no SPF record (TXT v=spf1) at {self.domain}"
        if len(records) > 1:
            return FAIL, f"{len(records)} SPF records: RFC 7208 4.5 makes that a permerror"
        want = expected.lower().split()
        have = records[0].lower().split()
        if want == have:
            return OK, "SPF record as expected"
        want_terms, want_all = self._split_all(want)
        have_terms, have_all = self._split_all(have)
        if want_terms == have_terms and want_all != have_all:
            want_text = f"{want_all}all ({_ALL_NAMES[want_all]})" if want_all else "no all"
            have_text = (
                f"{have_all}all ({_ALL_NAMES[have_all]})" if have_all else "no all (neutral)"
            )
            want_rank = _ALL_RANK[want_all] if want_all else 1
            have_rank = _ALL_RANK[have_all] if have_all else 1
            if have_rank > want_rank:
                return WARN, f"published {have_text}, stricter than the expected {want_text}"
            return FAIL, f"published {have_text} where {want_text} is expected"
        if sorted(want) == sorted(have):
            return WARN, "same terms in another order (SPF evaluates them left to right)"
        missing = [t for t in want if t not in have]
        extra = [t for t in have if t not in want]
        parts = []
        if missing:
            parts.append(f"missing {' '.join(missing)}")
        if extra:
            parts.append(f"unexpected {' '.join(extra)}")
        return FAIL, "SPF record differs: " + "; ".join(parts or ["different terms"])

    def check_dkim(self, value: dict[str, Any]) -> None:
        for selector, wanted in value.items():
            name = f"{self.host(selector)}._domainkey.{self.domain}"
            expected = unquote_txt(wanted)
            want = parse_tags(expected)
            if "p" not in want:
                self.module.fail_json(msg=f"expect.dkim.{selector}: the value has no p= tag")
            try:
                records = self.txt(name)
            except LookupFailure as exc:
                index = self.add("dkim", name, FAIL, [expected], [], exc.why)
            else:
                status, why = self._compare_dkim(name, want, records)
                index = self.add("dkim", name, status, [expected], records, why)
            self.publish(index, "TXT", name, _fold_ws(expected))

    @staticmethod
    def _dkim_mismatch(want: dict[str, str], have: dict[str, str]) -> list[str]:
        problems = []
        if have.get("v", "DKIM1") != "DKIM1":
            problems.append(f"v={have['v']} is not DKIM1")
        want_k, have_k = want.get("k", "rsa").lower(), have.get("k", "rsa").lower()
        if want_k != have_k:
            problems.append(f"key type k={have_k} published, k={want_k} expected")
        if not "".join(have.get("p", "").split()):
            problems.append("p= is empty: the key is revoked")
        elif _key_bytes(want["p"]) != _key_bytes(have["p"]):
            problems.append("p= holds a different public key")
        return problems

    def _compare_dkim(self, name: str, want: dict[str, str], records: list[str]) -> tuple[str, str]:
        if not records:
            return FAIL, f"no TXT record at {name}"
        keys = [parse_tags(t) for t in records]
        keys = [k for k in keys if "p" in k]
        if not keys:
            return FAIL, f"no DKIM key record (with p=) at {name}"
        matching = [k for k in keys if not self._dkim_mismatch(want, k)]
        if not matching:
            return FAIL, "; ".join(self._dkim_mismatch(want, keys[0]))
        have = matching[0]
        warnings = []
        if len(records) > 1:
            warnings.append(f"{len(records)} TXT records at {name}; verifiers may use any of them")
        if "y" in {f.strip() for f in have.get("t", "").lower().split(":")}:
            warnings.append("t=y: the key is in testing mode")
        for tag in ("t", "h", "s", "n"):
            if tag in want and have.get(tag) != want[tag]:
                warnings.append(
                    f"{tag}={have.get(tag, '(absent)')} published, {tag}={want[tag]} expected"
                )
        return self.verdict([], warnings, "DKIM key as expected")

    def check_dmarc(self, value: Any) -> None:
        name = f"_dmarc.{self.domain}"
        if isinstance(value, dict):
            want = {str(k).strip().lower(): _fold_ws(str(v)) for k, v in value.items()}
            want.pop("v", None)
            expected = "; ".join(["v=DMARC1", *(f"{k}={v}" for k, v in want.items())])
            exact = False
        elif isinstance(value, str):
            expected = unquote_txt(value)
            want = parse_tags(expected)
            want.pop("v", None)
            exact = True
        else:
            self.module.fail_json(msg="expect.dmarc must be a TXT value or a dict of tags")
        try:
            records = [t for t in self.txt(name) if _is_record(t, "v=DMARC1")]
        except LookupFailure as exc:
            index = self.add("dmarc", name, FAIL, [expected], [], exc.why)
        else:
            status, why = self._compare_dmarc(name, want, records, exact)
            index = self.add("dmarc", name, status, [expected], records, why)
        self.publish(index, "TXT", name, expected)

    @staticmethod
    def _compare_dmarc(
        name: str, want: dict[str, str], records: list[str], exact: bool
    ) -> tuple[str, str]:
        if not records:
            return FAIL, f"no DMARC record (TXT v=DMARC1) at {name}"
        if len(records) > 1:
            return FAIL, f"{len(records)} DMARC records: receivers apply none (RFC 7489 6.6.3)"
        have = parse_tags(records[0])
        if "p" not in have:
            return FAIL, "the DMARC record has no p= tag"
        problems: list[str] = []
        warnings: list[str] = []
        for tag, wanted in want.items():
            found = have.get(tag, have["p"] if tag == "sp" else _DMARC_DEFAULTS.get(tag))
            if found is None:
                problems.append(f"{tag}= is missing, {tag}={wanted} expected")
            elif tag in ("p", "sp") and wanted.lower() in _POLICY_RANK:
                have_rank = _POLICY_RANK.get(found.lower(), -1)
                if have_rank < _POLICY_RANK[wanted.lower()]:
                    problems.append(f"{tag}={found} published where {tag}={wanted} is expected")
                elif have_rank > _POLICY_RANK[wanted.lower()]:
                    warnings.append(f"{tag}={found} is stricter than the expected {tag}={wanted}")
            elif tag == "pct" and found.isdigit() and wanted.isdigit():
                if int(found) < int(wanted):
                    problems.append(f"pct={found} published where pct={wanted} is expected")
                elif int(found) > int(wanted):
                    warnings.append(f"pct={found} is more than the expected pct={wanted}")
            elif tag in ("rua", "ruf"):
                missing = _uri_set(wanted) - _uri_set(found)
                if missing:
                    problems.append(f"{tag} lacks {', '.join(sorted(missing))}")
                elif _uri_set(found) - _uri_set(wanted):
                    warnings.append(f"{tag}={found} has more than the expected {tag}={wanted}")
            elif found.lower() != wanted.lower():
                problems.append(f"{tag}={found} published where {tag}={wanted} is expected")
        if exact:
            extra = [f"{t}={v}" for t, v in have.items() if t != "v" and t not in want]
            if extra:
                warnings.append(f"tags not in the expected record: {'; '.join(extra)}")
        return MailDNSCheck.verdict(problems, warnings, "DMARC record as expected")

    def check_mta_sts(self, value: str) -> None:
        name = f"_mta-sts.{self.domain}"
        wanted = str(value).strip()
        expected = f"v=STSv1; id={wanted}"
        try:
            records = [t for t in self.txt(name) if _is_record(t, "v=STSv1")]
        except LookupFailure as exc:
            index = self.add("mta_sts", name, FAIL, [expected], [], exc.why)
        else:
            if not records:
                status, why = FAIL, f"no MTA-STS record (TXT v=STSv1) at {name}"
            elif len(records) > 1:
                status, why = (
                    FAIL,
                    (
                        f"{len(records)} STSv1 records: senders act as if there were no MTA-STS"
                        " (RFC 8461 3.1)"
                    ),
                )
            else:
                found = parse_tags(records[0]).get("id")
                if found is None:
                    status, why = FAIL, "the record has no id="
                elif found != wanted:
                    status, why = (
                        FAIL,
                        (
                            f"id={found} published, id={wanted} expected; senders keep their cached"
                            " policy until the id changes"
                        ),
                    )
                else:
                    status, why = OK, "MTA-STS policy id as expected"
            index = self.add("mta_sts", name, status, [expected], records, why)
        self.publish(index, "TXT", name, expected)

    def check_mta_sts_policy(self, value: str) -> None:
        """Fetch the MTA-STS policy as a sender does (rfc8461:3.3) and check it."""
        host = f"mta-sts.{self.domain}"
        port = int(self.module.params["mta_sts_port"])
        url = f"https://{host}{'' if port == 443 else f':{port}'}{MTA_STS_PATH}"
        expected_text = str(value)
        expected = _policy_lines(expected_text)
        want, invalid, _ = parse_mta_sts_policy(expected_text)
        if invalid:
            self.module.fail_json(
                msg=f"expect.mta_sts_policy is not a valid MTA-STS policy: {'; '.join(invalid)}"
            )
        try:
            served = self.fetch_policy(host, port, url)
        except (PolicyError, LookupFailure) as exc:
            index = self.add("mta_sts_policy", host, FAIL, expected, [], exc.why)
        else:
            status, why = self._compare_policy(served, expected_text, want)
            index = self.add("mta_sts_policy", host, status, expected, _policy_lines(served), why)
        record = {"type": "POLICY", "name": url, "value": " | ".join(expected)}
        self.served.append((record, index))

    def _compare_policy(
        self, served: str, expected_text: str, want: dict[str, Any]
    ) -> tuple[str, str]:
        have, problems, warnings = parse_mta_sts_policy(served)
        if not problems:
            # What a sender acts on first: it says what matters.
            if have["mode"] != want["mode"]:
                problems.append(f"mode {have['mode']}, {want['mode']} expected")
            if int(have["max_age"]) != int(want["max_age"]):
                problems.append(f"max_age {have['max_age']}, {want['max_age']} expected")
            # rfc8461:4.1: a sender delivers only to MX hosts that match an mx pattern
            # of the policy (in mode testing it reports the others).
            if have["mode"] != "none":
                try:
                    mx_hosts = self._find_mx_hosts()
                except LookupFailure as exc:
                    problems.append(exc.why)
                else:
                    problems += [
                        f"MX {mx} matches no mx: line"
                        for mx in mx_hosts
                        if not any(mx_pattern_matches(p, mx) for p in have["mx"])
                    ]
        if served != expected_text:
            problems.append(
                f"the policy served differs from the one expected:"
                f" {first_difference(served, expected_text)}"
            )
        return self.verdict(problems, warnings, "MTA-STS policy served as expected")

    def _policy_addresses(self, host: str) -> list[str]:
        """The addresses of the policy host through this module's resolver, CNAMEs
        followed, IPv4 first. Raises LookupFailure or PolicyError."""
        name = host
        for _ in range(MAX_CNAMES + 1):
            addresses = [r.address for r in self.query(name, "A")]
            addresses += [r.address for r in self.query(name, "AAAA")]
            if addresses:
                return list(dict.fromkeys(addresses))
            # An authoritative server answers for a CNAME to another zone without
            # the target's addresses: follow it, through that zone's servers.
            targets = [self.host(r.target.to_text()) for r in self.query(name, "CNAME")]
            if not targets:
                break
            name = targets[0]
        else:
            raise PolicyError(f"more than {MAX_CNAMES} CNAMEs from {host}")
        if name != host:
            raise PolicyError(
                f"no A or AAAA record for {name}, the CNAME target of {host}: senders cannot"
                " reach the policy host"
            )
        raise PolicyError(
            f"no A or AAAA record for {host}: senders cannot reach the policy host; publish"
            " it (a CNAME to the mail host that serves https)"
        )

    def _policy_context(self) -> ssl.SSLContext:
        # rfc8461:3.3: the certificate must be valid for the "mta-sts" host name
        # (RFC 6125), chain to a root the sender trusts and not be expired: the
        # system's store (plus mta_sts_ca_file), the name checked.
        context = ssl.create_default_context()
        ca_file = self.module.params["mta_sts_ca_file"]
        if ca_file:
            if not os.path.isfile(ca_file):
                self.module.fail_json(msg=f"mta_sts_ca_file {ca_file} does not exist")
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                self.module.fail_json(
                    msg=f"mta_sts_ca_file {ca_file} holds no PEM CA certificate: {exc}"
                )
        return context

    def fetch_policy(self, host: str, port: int, url: str) -> str:
        """The policy text served at ``url``, from an address of ``host`` found through
        this module's resolver, within O(timeout). Raises PolicyError (or
        LookupFailure) saying what to fix."""
        addresses = self._policy_addresses(host)
        context = self._policy_context()
        deadline = time.monotonic() + self.timeout
        errors = []
        # Like a sender: the first address that takes the connection is asked.
        for address in addresses:
            left = deadline - time.monotonic()
            if left <= 0:
                errors.append(f"{address}: not tried, no time left")
                continue
            try:
                sock = socket.create_connection((address, port), timeout=left)
            except TimeoutError:
                errors.append(f"{address}: no answer within {self.timeout:g}s")
                continue
            except OSError as exc:
                errors.append(f"{address}: {exc.strerror or exc}")
                continue
            with sock:
                return self._get_policy(context, sock, host, port, url, address, deadline)
        raise PolicyError(f"cannot connect to {host} port {port}: {', '.join(errors)}")

    def _get_policy(
        self,
        context: ssl.SSLContext,
        sock: socket.socket,
        host: str,
        port: int,
        url: str,
        address: str,
        deadline: float,
    ) -> str:
        where = f"{host} ({address} port {port})"
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            # SNI and the name checked: the policy host's (rfc8461:3.3).
            tls = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc.reason)
            if exc.verify_code == _X509_HOSTNAME_MISMATCH:
                raise PolicyError(
                    f"certificate of {where} is not valid for the name {host}: senders"
                    " require a certificate for the policy host's name (rfc8461:3.3)"
                ) from exc
            hint = ""
            if exc.verify_code in _X509_UNTRUSTED:
                hint = (
                    "; senders trust public CAs only (for a private or test CA, set"
                    " mta_sts_ca_file)"
                )
            raise PolicyError(f"certificate for {host} not trusted: {reason}{hint}") from exc
        except TimeoutError as exc:
            raise PolicyError(f"no TLS handshake with {where} within {self.timeout:g}s") from exc
        except (ssl.SSLError, OSError) as exc:
            raise PolicyError(f"TLS handshake with {where} failed: {exc}") from exc
        with tls:
            return self._read_policy(tls, host, port, url, where, deadline)

    def _read_policy(
        self, tls: ssl.SSLSocket, host: str, port: int, url: str, where: str, deadline: float
    ) -> str:
        # RFC 9110 7.2: Host is the URL's authority, with the port only when not 443.
        authority = host if port == 443 else f"{host}:{port}"
        request = (
            f"GET {MTA_STS_PATH} HTTP/1.1\r\nHost: {authority}\r\n"
            "User-Agent: mail_dns_check (Ansible)\r\nAccept: text/plain\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            tls.settimeout(max(deadline - time.monotonic(), 0.001))
            tls.sendall(request.encode("ascii"))
            source = _ResponseSource(_DeadlineReader(tls, deadline))
            response = http.client.HTTPResponse(source, method="GET")  # type: ignore[arg-type]
            response.begin()
            # rfc8461:3.3: "Policies fetched via HTTPS are only valid if the HTTP
            # response code is 200 (OK). HTTP 3xx redirects MUST NOT be followed".
            if 300 <= response.status < 400:
                location = response.getheader("Location", "(no Location)")
                raise PolicyError(
                    f"HTTP {response.status} redirect to {location}: senders do not follow"
                    f" redirects (rfc8461:3.3); serve the policy at {url} itself"
                )
            if response.status != 200:
                raise PolicyError(
                    f"HTTP {response.status} {response.reason} for {url}: the policy must be"
                    " served there with status 200"
                )
            # rfc8461:3.2: senders SHOULD check that the media type is text/plain
            # (parameters other than charset are ignored).
            content_type = response.getheader("Content-Type", "")
            media_type = content_type.partition(";")[0].strip().lower()
            if media_type != "text/plain":
                raise PolicyError(
                    f"media type {media_type or '(no Content-Type)'} for {url}, text/plain"
                    " expected (rfc8461:3.2)"
                )
            # rfc8461:3.3: senders may limit the body; 64 KiB is the suggested size.
            length = (response.getheader("Content-Length") or "").strip()
            if length.isdigit() and int(length) > MTA_STS_MAX_BODY:
                raise PolicyError(
                    f"the policy at {url} is {int(length)} bytes, more than the"
                    f" {MTA_STS_MAX_BODY // 1024} KiB senders read (rfc8461:3.3)"
                )
            body = response.read(MTA_STS_MAX_BODY + 1)
        except TimeoutError as exc:
            raise PolicyError(f"no complete answer from {where} within {self.timeout:g}s") from exc
        except http.client.HTTPException as exc:
            raise PolicyError(f"no valid HTTP response from {where}: {exc!r}") from exc
        except (ssl.SSLError, OSError) as exc:
            raise PolicyError(f"reading the answer of {where} failed: {exc}") from exc
        if len(body) > MTA_STS_MAX_BODY:
            raise PolicyError(
                f"the policy at {url} is more than the {MTA_STS_MAX_BODY // 1024} KiB senders"
                " read (rfc8461:3.3)"
            )
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"the policy at {url} is not UTF-8 text: {exc}") from exc

    def check_tlsrpt(self, value: str) -> None:
        name = f"_smtp._tls.{self.domain}"
        expected = unquote_txt(value)
        try:
            records = [t for t in self.txt(name) if _is_record(t, "v=TLSRPTv1")]
        except LookupFailure as exc:
            index = self.add("tlsrpt", name, FAIL, [expected], [], exc.why)
        else:
            if not records:
                status, why = FAIL, f"no TLS-RPT record (TXT v=TLSRPTv1) at {name}"
            elif len(records) > 1:
                status, why = (
                    FAIL,
                    (f"{len(records)} TLSRPTv1 records: senders send no reports (RFC 8460 3)"),
                )
            else:
                want, have = parse_tags(expected), parse_tags(records[0])
                problems = []
                for tag in dict.fromkeys([*want, *have]):
                    wanted, found = want.get(tag, "(absent)"), have.get(tag, "(absent)")
                    same = (
                        _uri_set(wanted) == _uri_set(found)
                        if tag == "rua"
                        else wanted.lower() == found.lower()
                    )
                    if not same:
                        problems.append(f"{tag}={found} published, {tag}={wanted} expected")
                status, why = self.verdict(problems, [], "TLS-RPT record as expected")
            index = self.add("tlsrpt", name, status, [expected], records, why)
        self.publish(index, "TXT", name, expected)

    def check_srv(self, value: list[dict[str, Any]]) -> None:
        entries = [
            {
                "name": self.absolute(entry["name"]),
                "port": int(entry["port"]),
                "target": self.host(entry["target"]),
                "priority": entry.get("priority"),
                "weight": entry.get("weight"),
            }
            for entry in value
        ]

        def matches(entry: dict[str, Any], record: tuple[int, int, int, str]) -> bool:
            priority, weight, port, target = record
            return (
                target == entry["target"]
                and (entry["target"] == "" or port == entry["port"])
                and entry["priority"] in (None, priority)
                and entry["weight"] in (None, weight)
            )

        for entry in entries:
            name = entry["name"]
            shown_target = f"{entry['target']}." if entry["target"] else "."
            expected = (
                f"{entry['priority'] if entry['priority'] is not None else 0}"
                f" {entry['weight'] if entry['weight'] is not None else 1}"
                f" {entry['port']} {shown_target}"
            )
            try:
                records = sorted(
                    (r.priority, r.weight, r.port, self.host(r.target.to_text()))
                    for r in self.query(name, "SRV")
                )
            except LookupFailure as exc:
                index = self.add("srv", name, FAIL, [expected], [], exc.why)
                self.publish(index, "SRV", name, expected)
                continue
            found = [f"{p} {w} {port} {t or ''}." for p, w, port, t in records]
            problems: list[str] = []
            warnings: list[str] = []
            if not records:
                problems.append(f"no SRV record at {name}")
            elif not any(matches(entry, r) for r in records):
                near = [r for r in records if r[3] == entry["target"] and r[2] == entry["port"]]
                if near:
                    problems.append(
                        f"priority/weight {near[0][0]} {near[0][1]} published for"
                        f" {shown_target}:{entry['port']}, expected {expected.split()[0]}"
                        f" {expected.split()[1]}"
                    )
                else:
                    problems.append(f"no SRV record points to {shown_target} port {entry['port']}")
            else:
                siblings = [e for e in entries if e["name"] == name]
                extra = [
                    f"{p} {w} {port} {t}."
                    for p, w, port, t in records
                    if not any(matches(e, (p, w, port, t)) for e in siblings)
                ]
                if extra:
                    warnings.append(f"other SRV records at {name}: {', '.join(extra)}")
            status, why = self.verdict(problems, warnings, "SRV record as expected")
            index = self.add("srv", name, status, [expected], found, why)
            self.publish(index, "SRV", name, expected)

    # -- output ------------------------------------------------------------------

    def failed(self) -> list[str]:
        return [f"{r['check']} {r['name']}" for r in self.results if r["status"] == FAIL]

    def table(self) -> list[str]:
        header = ("TYPE", "NAME", "VALUE", "STATUS", "NOW")
        # Served things (the MTA-STS policy) among the records, in the order of the checks.
        entries = sorted(self.published + self.served, key=lambda entry: entry[1])
        rows = [
            (
                record["type"],
                record["name"],
                record["value"],
                self.results[index]["status"],
                " | ".join(self.results[index]["found"]) or "-",
            )
            for record, index in entries
        ]
        widths = [max(len(row[col]) for row in [header, *rows]) for col in range(4)]
        return [
            "  ".join([*(row[col].ljust(widths[col]) for col in range(4)), row[4]]).rstrip()
            for row in [header, *rows]
        ]


def main() -> None:
    srv_spec = {
        "name": {"type": "str", "required": True},
        "port": {"type": "int", "required": True},
        "target": {"type": "str", "required": True},
        "priority": {"type": "int"},
        "weight": {"type": "int"},
    }
    expect_spec = {
        "mx": {"type": "list", "elements": "raw"},
        "spf": {"type": "str"},
        "dkim": {"type": "dict"},
        "dmarc": {"type": "raw"},
        "mta_sts_id": {"type": "str"},
        "mta_sts_policy": {"type": "str"},
        "tlsrpt": {"type": "str"},
        "srv": {"type": "list", "elements": "dict", "options": srv_spec},
        "a": {"type": "raw"},
        "aaaa": {"type": "raw"},
        "ptr": {"type": "dict"},
    }
    module = AnsibleModule(
        argument_spec={
            "domain": {"type": "str", "required": True},
            "nameservers": {"type": "list", "elements": "str"},
            "timeout": {"type": "float", "default": 5},
            "mode": {"type": "str", "choices": ["check", "report"], "default": "check"},
            "authoritative": {"type": "bool", "default": False},
            "authoritative_port": {"type": "int", "default": 53},
            "wait": {"type": "float", "default": 0},
            "mta_sts_ca_file": {"type": "path"},
            "mta_sts_port": {"type": "int", "default": 443},
            "expect": {"type": "dict", "options": expect_spec},
        },
        supports_check_mode=True,
    )
    if DNSPYTHON_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("dnspython"), exception=DNSPYTHON_IMPORT_ERROR)
    if module.params["timeout"] <= 0:
        module.fail_json(msg="timeout must be more than 0")

    if module.params["wait"] < 0:
        module.fail_json(msg="wait must not be negative")
    if not 0 < module.params["mta_sts_port"] < 65536:
        module.fail_json(msg=f"mta_sts_port {module.params['mta_sts_port']} is not a TCP port")

    # Repeat while a check fails and the wait allows (propagation, RFC 1996 NOTIFY
    # and zone transfers to the secondaries, or an old negative answer's TTL, RFC 2308).
    deadline = time.monotonic() + module.params["wait"]
    zone_servers: dict[str, Any] = {}
    attempts = 0
    while True:
        attempts += 1
        checker = MailDNSCheck(module, zone_servers)
        checker.run()
        failed = checker.failed()
        left = deadline - time.monotonic()
        if not failed or left <= 0:
            break
        # A zone whose servers could not be found is looked for again.
        for zone in [z for z, v in zone_servers.items() if isinstance(v, LookupFailure)]:
            del zone_servers[zone]
        time.sleep(min(WAIT_INTERVAL, left))
    result: dict[str, Any] = {
        "changed": False,
        "attempts": attempts,
        "ok": not failed,
        "results": checker.results,
        "failed_checks": failed,
    }
    if module.params["mode"] == "report":
        result["records"] = [record for record, _ in checker.published]
        result["table"] = checker.table()
        module.exit_json(**result)
    if failed:
        details = [
            f"{r['check']} {r['name']}: {r['why']}" for r in checker.results if r["status"] == FAIL
        ]
        module.fail_json(
            msg=f"{len(failed)} DNS check{'s' if len(failed) > 1 else ''} failed for"
            f" {checker.domain}: " + "; ".join(details),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
