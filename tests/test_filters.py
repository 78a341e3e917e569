"""filter_plugins/mail.py: every filter on good and bad input, then through Ansible.

The unit tests load the plugin file the way Ansible does (by path, not as a
package) and call the functions that FilterModule.filters() publishes. Good
input must give exactly the expected value; bad input must raise
AnsibleFilterError whose message names the problem. TLSA and DKIM expectations
are computed here from the keys, independently of the plugin's own parsing.
The last tests run the filters through `ansible localhost -m debug`, which
proves that ansible.cfg's filter_plugins setting loads them and that they work
on the values Ansible's templating hands them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from ansible.errors import AnsibleFilterError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "filter_plugins" / "mail.py"


def _load_plugin() -> Any:
    spec = importlib.util.spec_from_file_location("estafeta_filter_plugins_mail", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = _load_plugin().FilterModule().filters()

# RFC 8463 appendix A's Ed25519 public key, raw 32 bytes in base64.
ED25519_P = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


def run(name: str, *args: Any, **kwargs: Any) -> Any:
    return FILTERS[name](*args, **kwargs)


def test_published_filters() -> None:
    assert sorted(FILTERS) == sorted(
        [
            "spf_record",
            "dmarc_record",
            "dmarc_external_destinations",
            "dkim_txt",
            "txt_strings",
            "mta_sts_txt",
            "tlsrpt_txt",
            "srv_records",
            "tlsa_record",
        ]
    )
    assert all(callable(function) for function in FILTERS.values())


# -- good input: (filter, args, kwargs, expected) -------------------------------------------

GOOD = [
    # spf_record
    pytest.param(
        "spf_record",
        [
            {
                "mx": True,
                "a": False,
                "ip4": ["198.51.100.10"],
                "ip6": ["2001:db8::10"],
                "include": ["_spf.provider.example"],
            }
        ],
        {},
        "v=spf1 mx ip4:198.51.100.10 ip6:2001:db8::10 include:_spf.provider.example -all",
        id="spf-dict",
    ),
    pytest.param(
        "spf_record",
        [["mx", "a:mail.example.org/24", "ip4:198.51.100.0/24", "~include:_spf.example.net"]],
        {"all": "~all"},
        "v=spf1 mx a:mail.example.org/24 ip4:198.51.100.0/24 ~include:_spf.example.net ~all",
        id="spf-list-softfail",
    ),
    pytest.param("spf_record", [{}], {}, "v=spf1 -all", id="spf-sends-no-mail"),
    pytest.param("spf_record", [[]], {"all": "?all"}, "v=spf1 ?all", id="spf-neutral"),
    pytest.param(
        "spf_record",
        [{"a": True, "mx": True, "ip4": "198.51.100.10"}],
        {},
        "v=spf1 mx a ip4:198.51.100.10 -all",
        id="spf-dict-order-and-single-string",
    ),
    pytest.param(
        "spf_record",
        [{"mx": ["mx1.example.org", "mx2.example.org"], "a": ["web.example.org"]}],
        {},
        "v=spf1 mx:mx1.example.org mx:mx2.example.org a:web.example.org -all",
        id="spf-other-domains",
    ),
    pytest.param(
        "spf_record",
        [["mx", "MX", "ip4:198.51.100.10", " ip4:198.51.100.10 "]],
        {},
        "v=spf1 mx ip4:198.51.100.10 -all",
        id="spf-duplicates-dropped",
    ),
    pytest.param(
        "spf_record",
        [{"ip6": ["2001:DB8:0:0::10", "2001:db8:1::/48"]}],
        {},
        "v=spf1 ip6:2001:db8::10 ip6:2001:db8:1::/48 -all",
        id="spf-ipv6-normalized",
    ),
    pytest.param(
        "spf_record",
        [["a/24//64", "mx//64", "exists:%{i}._spf.example.org", "-ip4:203.0.113.7/32"]],
        {},
        "v=spf1 a/24//64 mx//64 exists:%{i}._spf.example.org -ip4:203.0.113.7/32 -all",
        id="spf-cidr-macros-qualifier",
    ),
    pytest.param(
        "spf_record",
        [["exp=explain.example.org", "mx"]],
        {},
        "v=spf1 mx exp=explain.example.org -all",
        id="spf-modifiers-last",
    ),
    pytest.param(
        "spf_record",
        [{"redirect": "_spf.example.org"}],
        {"all": None},
        "v=spf1 redirect=_spf.example.org",
        id="spf-redirect",
    ),
    pytest.param(
        "spf_record",
        [[f"include:_spf{i}.example.net" for i in range(9)] + ["mx"]],
        {},
        "v=spf1 " + " ".join(f"include:_spf{i}.example.net" for i in range(9)) + " mx -all",
        id="spf-ten-lookups",
    ),
    # dmarc_record
    pytest.param("dmarc_record", [], {}, "v=DMARC1; p=none", id="dmarc-default"),
    pytest.param(
        "dmarc_record",
        ["reject"],
        {"rua": ["mailto:dmarc@example.org"], "adkim": "s"},
        "v=DMARC1; p=reject; adkim=s; rua=mailto:dmarc@example.org",
        id="dmarc-arguments",
    ),
    pytest.param(
        "dmarc_record",
        [{"p": "reject", "rua": ["mailto:dmarc@example.org"]}],
        {},
        "v=DMARC1; p=reject; rua=mailto:dmarc@example.org",
        id="dmarc-dict",
    ),
    pytest.param(
        "dmarc_record",
        [
            {
                "p": "reject",
                "sp": "quarantine",
                "adkim": "s",
                "aspf": "s",
                "pct": 25,
                "rua": ["mailto:a@example.org", "mailto:b@example.net!10m"],
                "ruf": "mailto:f@example.org",
                "fo": ["d", "s"],
            }
        ],
        {},
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=s; pct=25; fo=d:s; "
        "rua=mailto:a@example.org,mailto:b@example.net!10m; ruf=mailto:f@example.org",
        id="dmarc-every-tag-in-rfc-order",
    ),
    pytest.param(
        "dmarc_record",
        [{"p": "reject", "sp": "reject", "adkim": "r", "aspf": "r", "pct": 100, "fo": "0"}],
        {},
        "v=DMARC1; p=reject",
        id="dmarc-defaults-left-out",
    ),
    pytest.param(
        "dmarc_record",
        [{"v": "DMARC1", "policy": "Quarantine", "subdomain_policy": "none"}],
        {"rua": "mailto:dmarc@example.org", "pct": "50"},
        "v=DMARC1; p=quarantine; sp=none; pct=50; rua=mailto:dmarc@example.org",
        id="dmarc-dict-and-arguments",
    ),
    pytest.param(
        "dmarc_record",
        ["none"],
        {"ruf": ["mailto:f@example.org"], "fo": 1},
        "v=DMARC1; p=none; fo=1; ruf=mailto:f@example.org",
        id="dmarc-fo",
    ),
    # dmarc_external_destinations (rfc7489:7.1): hosts outside the policy domain's
    # organizational domain, by the Public Suffix List
    pytest.param(
        "dmarc_external_destinations",
        ["v=DMARC1; p=none; rua=mailto:dmarc@example.org", "example.org"],
        {},
        [],
        id="external-none",
    ),
    pytest.param(
        "dmarc_external_destinations",
        [
            "v=DMARC1; p=reject; rua=mailto:a@Reports.Example.NET!10m,mailto:b@example.org,"
            "mailto:c@reports.example.net; ruf=mailto:f@forensic.example.com",
            "example.org.",
        ],
        {},
        ["reports.example.net", "forensic.example.com"],
        id="external-rua-and-ruf-once-each",
    ),
    pytest.param(
        "dmarc_external_destinations",
        [
            "v=DMARC1;p=none;rua=mailto:d@example.org,mailto:d@mail.example.org",
            "sub.example.org",
        ],
        {},
        [],
        id="external-same-organization",
    ),
    # Under co.uk (a public suffix) each name below it is an organization of its own;
    # the policy domain itself needs no consent whatever it is.
    pytest.param(
        "dmarc_external_destinations",
        [
            "v=DMARC1; p=none; rua=mailto:d@one.co.uk,mailto:d@x.one.co.uk,mailto:d@two.co.uk",
            "one.co.uk",
        ],
        {},
        ["two.co.uk"],
        id="external-public-suffix",
    ),
    pytest.param(
        "dmarc_external_destinations",
        ["v=DMARC1; p=none; rua=mailto:d@example.org", "example.org"],
        {},
        [],
        id="external-same-domain",
    ),
    # mta_sts_txt
    pytest.param("mta_sts_txt", ["20240501T120000"], {}, "v=STSv1; id=20240501T120000", id="sts"),
    pytest.param("mta_sts_txt", [20240501120000], {}, "v=STSv1; id=20240501120000", id="sts-int"),
    pytest.param("mta_sts_txt", ["a" * 32], {}, "v=STSv1; id=" + "a" * 32, id="sts-32"),
    # tlsrpt_txt
    pytest.param(
        "tlsrpt_txt",
        ["mailto:tls@example.org"],
        {},
        "v=TLSRPTv1; rua=mailto:tls@example.org",
        id="tlsrpt-one",
    ),
    pytest.param(
        "tlsrpt_txt",
        [
            [
                "mailto:tls@example.org",
                "https://reports.example.net/v1/tlsrpt",
                "mailto:tls@example.org",
            ]
        ],
        {},
        "v=TLSRPTv1; rua=mailto:tls@example.org,https://reports.example.net/v1/tlsrpt",
        id="tlsrpt-list",
    ),
    # txt_strings
    pytest.param("txt_strings", [""], {}, [""], id="txt-empty"),
    pytest.param("txt_strings", ["a" * 255], {}, ["a" * 255], id="txt-255"),
    pytest.param("txt_strings", ["a" * 256], {}, ["a" * 255, "a"], id="txt-256"),
    pytest.param("txt_strings", ["b" * 600], {}, ["b" * 255, "b" * 255, "b" * 90], id="txt-600"),
    pytest.param("txt_strings", ["é" * 128], {}, ["é" * 127, "é"], id="txt-utf8-boundary"),
    # dkim_txt (RSA keys are in test_dkim_txt_rsa)
    pytest.param(
        "dkim_txt",
        [{"k": "ed25519", "p": ED25519_P}],
        {},
        [f"v=DKIM1; k=ed25519; p={ED25519_P}"],
        id="dkim-dict",
    ),
    pytest.param(
        "dkim_txt",
        [f"v=DKIM1;k=ed25519;  p={ED25519_P[:20]} {ED25519_P[20:]};"],
        {},
        [f"v=DKIM1; k=ed25519; p={ED25519_P}"],
        id="dkim-text-normalized",
    ),
    pytest.param(
        "dkim_txt",
        [{"p": ED25519_P, "k": "ed25519", "h": ["sha256"], "t": ["y", "s"], "s": "email"}],
        {},
        [f"v=DKIM1; h=sha256; k=ed25519; s=email; t=y:s; p={ED25519_P}"],
        id="dkim-dict-lists",
    ),
    pytest.param("dkim_txt", ["v=DKIM1; p="], {}, ["v=DKIM1; p="], id="dkim-revoked"),
    # srv_records (the default set is in test_srv_records_default)
    pytest.param(
        "srv_records",
        ["example.org.", "mx.example.org."],
        {"ports": {"imap": "1143", "pop3": None, "pop3s": None, "submission": None}},
        [
            {
                "name": "_submissions._tcp.example.org",
                "priority": 0,
                "weight": 1,
                "port": 465,
                "target": "mx.example.org",
            },
            {
                "name": "_submission._tcp.example.org",
                "priority": 0,
                "weight": 0,
                "port": 0,
                "target": ".",
            },
            {
                "name": "_imaps._tcp.example.org",
                "priority": 0,
                "weight": 1,
                "port": 993,
                "target": "mx.example.org",
            },
            {
                "name": "_imap._tcp.example.org",
                "priority": 10,
                "weight": 1,
                "port": 1143,
                "target": "mx.example.org",
            },
            {
                "name": "_pop3s._tcp.example.org",
                "priority": 0,
                "weight": 0,
                "port": 0,
                "target": ".",
            },
            {
                "name": "_pop3._tcp.example.org",
                "priority": 0,
                "weight": 0,
                "port": 0,
                "target": ".",
            },
        ],
        id="srv-ports",
    ),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "expected"), GOOD)
def test_good_input(name: str, args: list[Any], kwargs: dict[str, Any], expected: Any) -> None:
    assert run(name, *args, **kwargs) == expected


def test_srv_records_default() -> None:
    records = run("srv_records", "example.org", "mx.example.org")
    assert [(r["name"], r["priority"], r["weight"], r["port"], r["target"]) for r in records] == [
        ("_submissions._tcp.example.org", 0, 1, 465, "mx.example.org"),
        ("_submission._tcp.example.org", 10, 1, 587, "mx.example.org"),
        ("_imaps._tcp.example.org", 0, 1, 993, "mx.example.org"),
        ("_imap._tcp.example.org", 10, 1, 143, "mx.example.org"),
        ("_pop3s._tcp.example.org", 20, 1, 995, "mx.example.org"),
        ("_pop3._tcp.example.org", 30, 1, 110, "mx.example.org"),
    ]
    assert all(set(r) == {"name", "priority", "weight", "port", "target"} for r in records)


def test_txt_strings_rejoin() -> None:
    value = "v=spf1 " + " ".join(f"ip6:2001:db8:{i:x}::/48" for i in range(30)) + " -all"
    chunks = run("txt_strings", value)
    assert "".join(chunks) == value
    assert all(len(chunk.encode()) <= 255 for chunk in chunks)
    assert len(chunks) == -(-len(value) // 255)


def test_spf_record_long_value_splits() -> None:
    record = run("spf_record", {"ip6": [f"2001:db8:{i:x}::/48" for i in range(20)]})
    assert 255 < len(record) <= 512
    assert "".join(run("txt_strings", record)) == record


# -- bad input: (filter, args, kwargs, words the message must contain) ----------------------

BAD = [
    # spf_record
    pytest.param("spf_record", ["mx -all"], {}, "input must be a dict", id="spf-string"),
    pytest.param("spf_record", [{"ipv4": ["1.2.3.4"]}], {}, "unknown key(s) 'ipv4'", id="spf-key"),
    pytest.param(
        "spf_record", [{"ip4": ["198.51.100.300"]}], {}, "not an IPv4 address", id="spf-bad-ip"
    ),
    pytest.param(
        "spf_record",
        [{"ip4": ["198.51.100.10/24"]}],
        {},
        "did you mean 198.51.100.0/24",
        id="spf-host-bits",
    ),
    pytest.param(
        "spf_record", [{"ip4": ["2001:db8::1"]}], {}, "list it under ip6", id="spf-ip6-in-ip4"
    ),
    pytest.param("spf_record", [{"ip6": ["198.51.100.1"]}], {}, "under ip4", id="spf-ip4-in-ip6"),
    pytest.param("spf_record", [["ip4:0.0.0.0/0"]], {}, "every address", id="spf-everything"),
    pytest.param("spf_record", [{"ip4": [42]}], {}, "must hold strings", id="spf-not-string"),
    pytest.param("spf_record", [{"ip4": [""]}], {}, "empty string", id="spf-empty-item"),
    pytest.param("spf_record", [["ip6:fe80::1%eth0"]], {}, "zone index", id="spf-zone-index"),
    pytest.param(
        "spf_record", [["exists:%{i}.exämple.org"]], {}, "invalid characters", id="spf-macro"
    ),
    pytest.param("spf_record", [{"redirect": 1}], {"all": None}, "domain name", id="spf-redirect"),
    pytest.param("spf_record", [["ptr"]], {}, "RFC 7208 5.5", id="spf-ptr"),
    pytest.param("spf_record", [["mx", "-all"]], {}, "set the all argument", id="spf-all-listed"),
    pytest.param("spf_record", [["v=spf1", "mx"]], {}, "leave 'v=spf1' out", id="spf-version"),
    pytest.param("spf_record", [["mx a"]], {}, "its own list item", id="spf-space"),
    pytest.param("spf_record", [["ipv4:1.2.3.4"]], {}, "unknown mechanism", id="spf-mechanism"),
    pytest.param("spf_record", [["redirct=x.example"]], {}, "unknown modifier", id="spf-modifier"),
    pytest.param("spf_record", [["include:"]], {}, "include:<value>", id="spf-include-empty"),
    pytest.param(
        "spf_record",
        [["include:198.51.100.1"]],
        {},
        "fully qualified domain name",
        id="spf-include-ip",
    ),
    pytest.param("spf_record", [["a.example.org"]], {}, "a:<domain>", id="spf-a-colon"),
    pytest.param("spf_record", [["a/33"]], {}, "prefix length", id="spf-cidr"),
    pytest.param(
        "spf_record", [{"mx": "yes"}], {}, "true, false or a list of domains", id="spf-mx-yes"
    ),
    pytest.param(
        "spf_record", [{"a": "web"}], {}, "'web' must be a fully qualified", id="spf-a-short"
    ),
    pytest.param(
        "spf_record",
        [[f"include:_spf{i}.example.net" for i in range(10)] + ["a"]],
        {},
        "11 terms cause DNS lookups",
        id="spf-eleven-lookups",
    ),
    pytest.param("spf_record", [{"mx": True}], {"all": "+all"}, "+all would let", id="spf-+all"),
    pytest.param("spf_record", [{"mx": True}], {"all": "-"}, "one of -all, ~all", id="spf-all"),
    pytest.param("spf_record", [{"mx": True}], {"all": None}, "only be null", id="spf-no-all"),
    pytest.param(
        "spf_record",
        [{"redirect": "_spf.example.org"}],
        {},
        "pass all=None",
        id="spf-redirect-and-all",
    ),
    pytest.param(
        "spf_record",
        [["redirect=a.example.org", "redirect=b.example.org"]],
        {"all": None},
        "only once",
        id="spf-two-redirects",
    ),
    pytest.param(
        "spf_record",
        [{"ip6": [f"2001:db8:{i:x}::/48" for i in range(40)]}],
        {},
        "over 512 it does not fit",
        id="spf-too-long",
    ),
    # dmarc_record
    pytest.param("dmarc_record", ["block"], {}, "none, quarantine, reject", id="dmarc-p"),
    pytest.param(
        "dmarc_record", [{"sp": "allow"}], {}, "sp (subdomain_policy) must be", id="dmarc-sp"
    ),
    pytest.param(
        "dmarc_record",
        ["reject"],
        {"rua": ["dmarc@example.org"]},
        "write 'mailto:dmarc@example.org'",
        id="dmarc-bare-address",
    ),
    pytest.param(
        "dmarc_record",
        ["reject"],
        {"rua": "https://example.org/dmarc"},
        "must be a mailto: URI",
        id="dmarc-https",
    ),
    pytest.param(
        "dmarc_record",
        ["reject"],
        {"rua": "mailto:a@example.org,b@example.org"},
        "exactly one address",
        id="dmarc-two-in-one",
    ),
    pytest.param(
        "dmarc_record",
        ["reject"],
        {"rua": "mailto:dmarc@localhost"},
        "fully qualified domain name",
        id="dmarc-address-domain",
    ),
    pytest.param(
        "dmarc_record", ["reject"], {"rua": "mailto:a@example.org!10x"}, "!10m", id="dmarc-size"
    ),
    pytest.param("dmarc_record", ["reject"], {"pct": 101}, "0 to 100", id="dmarc-pct"),
    pytest.param("dmarc_record", ["reject"], {"pct": True}, "0 to 100", id="dmarc-pct-bool"),
    pytest.param("dmarc_record", ["reject"], {"adkim": "strict"}, "adkim must", id="dmarc-adkim"),
    pytest.param("dmarc_record", ["reject"], {"aspf": 1}, "aspf must", id="dmarc-aspf"),
    pytest.param("dmarc_record", ["reject"], {"fo": "1"}, "add ruf", id="dmarc-fo-no-ruf"),
    pytest.param(
        "dmarc_record",
        ["reject"],
        {"fo": "x", "ruf": "mailto:f@example.org"},
        "fo may hold 0, 1, d, s",
        id="dmarc-fo",
    ),
    pytest.param(
        "dmarc_record",
        [{"p": "reject", "adkim": "s"}],
        {"adkim": "r"},
        "adkim is given both",
        id="dmarc-twice",
    ),
    pytest.param(
        "dmarc_record",
        [{"p": "reject", "policy": "none"}],
        {},
        "p is given twice",
        id="dmarc-p-and-policy",
    ),
    pytest.param("dmarc_record", [{"ri": 3600}], {}, "unknown key 'ri'", id="dmarc-key"),
    pytest.param("dmarc_record", [{"v": "DMARC2"}], {}, "v must be DMARC1", id="dmarc-v"),
    pytest.param(
        "dmarc_external_destinations",
        ["p=none; v=DMARC1", "example.org"],
        {},
        "must start with v=DMARC1",
        id="external-v-first",
    ),
    pytest.param(
        "dmarc_external_destinations", [None, "example.org"], {}, "not NoneType", id="external-type"
    ),
    pytest.param(
        "dmarc_external_destinations",
        ["v=DMARC1; p=none; rua=https://example.net/r", "example.org"],
        {},
        "must be a mailto: URI",
        id="external-scheme",
    ),
    pytest.param(
        "dmarc_external_destinations",
        ["v=DMARC1; p=none", "localhost"],
        {},
        "fully qualified domain name",
        id="external-domain",
    ),
    # dkim_txt
    pytest.param("dkim_txt", [42], {}, "record text or a dict", id="dkim-type"),
    pytest.param("dkim_txt", [{"k": "rsa"}], {}, "needs p", id="dkim-dict-no-p"),
    pytest.param("dkim_txt", [{"k": 1, "p": ""}], {}, "k must be a string", id="dkim-dict-int"),
    pytest.param("dkim_txt", ["v=DKIM1; k=rsa"], {}, "needs p=", id="dkim-text-no-p"),
    pytest.param("dkim_txt", [{"p": "", "g": "*"}], {}, "unknown key(s) 'g'", id="dkim-key"),
    pytest.param("dkim_txt", ["v=DKIM1; g=*; p="], {}, "unknown tag(s) g", id="dkim-tag"),
    pytest.param("dkim_txt", ["k=rsa; v=DKIM1; p="], {}, "first tag", id="dkim-v-first"),
    pytest.param("dkim_txt", ["v=DKIM2; p="], {}, "v must be DKIM1", id="dkim-v"),
    pytest.param("dkim_txt", ["v=DKIM1; p=; p="], {}, "appears twice", id="dkim-twice"),
    pytest.param("dkim_txt", ["v=DKIM1; rsa; p="], {}, "tag=value", id="dkim-no-equals"),
    pytest.param("dkim_txt", ["v=DKIM1; h=sha1; p="], {}, "RFC 8301", id="dkim-sha1"),
    pytest.param("dkim_txt", ["v=DKIM1; k=dsa; p="], {}, "rsa or ed25519", id="dkim-k"),
    pytest.param("dkim_txt", ["v=DKIM1; p=not*base64"], {}, "not base64", id="dkim-base64"),
    pytest.param(
        "dkim_txt",
        [{"k": "ed25519", "p": base64.b64encode(b"x" * 33).decode()}],
        {},
        "raw 32-byte key",
        id="dkim-ed25519-size",
    ),
    pytest.param(
        "dkim_txt",
        [{"p": base64.b64encode(b"x" * 40).decode()}],
        {},
        "DER-encoded RSA public key",
        id="dkim-rsa-garbage",
    ),
    pytest.param("dkim_txt", ["v=DKIM1; n=a\tb; p="], {}, "n must be printable", id="dkim-notes"),
    pytest.param("dkim_txt", ["v=DKIM1; n=é; p="], {}, "must be ASCII", id="dkim-ascii"),
    # txt_strings
    pytest.param("txt_strings", [["a", "b"]], {}, "must be a string", id="txt-list"),
    # mta_sts_txt
    pytest.param("mta_sts_txt", ["a" * 33], {}, "1 to 32 letters and digits", id="sts-long"),
    pytest.param("mta_sts_txt", [""], {}, "1 to 32 letters and digits", id="sts-empty"),
    pytest.param("mta_sts_txt", ["2024-05-01"], {}, "e.g. '20240501'", id="sts-hint"),
    pytest.param("mta_sts_txt", [True], {}, "letters and digits", id="sts-bool"),
    pytest.param("mta_sts_txt", [-1], {}, "letters and digits", id="sts-negative"),
    # tlsrpt_txt
    pytest.param("tlsrpt_txt", [[]], {}, "at least one", id="tlsrpt-empty"),
    pytest.param("tlsrpt_txt", [None], {}, "at least one", id="tlsrpt-none"),
    pytest.param("tlsrpt_txt", [42], {}, "string or a list", id="tlsrpt-type"),
    pytest.param("tlsrpt_txt", ["http://r.example.org/"], {}, "https:, not http:", id="tls-http"),
    pytest.param("tlsrpt_txt", ["tls@example.org"], {}, "write 'mailto:", id="tlsrpt-bare"),
    pytest.param("tlsrpt_txt", ["https:/r.example.org"], {}, "URL like", id="tlsrpt-url"),
    pytest.param(
        "tlsrpt_txt", ["https://r.example.org/a,b"], {}, "percent-encode", id="tlsrpt-comma"
    ),
    pytest.param("tlsrpt_txt", ["https://localhost/"], {}, "fully qualified", id="tlsrpt-host"),
    pytest.param("tlsrpt_txt", ["ftp://r.example.org/"], {}, "mailto: URI", id="tlsrpt-scheme"),
    # srv_records
    pytest.param(
        "srv_records",
        ["example.org", "mx.example.org"],
        {"ports": {"smtp": 25}},
        "unknown service(s) 'smtp'",
        id="srv-service",
    ),
    pytest.param(
        "srv_records",
        ["example.org", "mx.example.org"],
        {"ports": {"imap": 0}},
        "from 1 to 65535",
        id="srv-port-0",
    ),
    pytest.param(
        "srv_records",
        ["example.org", "mx.example.org"],
        {"ports": {"imap": 70000}},
        "from 1 to 65535",
        id="srv-port-high",
    ),
    pytest.param(
        "srv_records",
        ["example.org", "mx.example.org"],
        {"ports": {"imap": True}},
        "ports['imap'] must be a number",
        id="srv-port-bool",
    ),
    pytest.param(
        "srv_records",
        ["example.org", "mx.example.org"],
        {"ports": ["imap"]},
        "ports must be a dict",
        id="srv-ports-type",
    ),
    pytest.param("srv_records", ["example.org", "mx"], {}, "fully qualified", id="srv-short-host"),
    pytest.param(
        "srv_records", ["example.org", "198.51.100.1"], {}, "fully qualified", id="srv-ip-host"
    ),
    pytest.param(
        "srv_records", ["example.org", "."], {}, "hostname must be a domain name", id="srv-dot"
    ),
    pytest.param(
        "srv_records", ["example..org", "mx.example.org"], {}, "empty label", id="srv-dots"
    ),
    pytest.param("srv_records", ["ex_ample.org", "mx.example.org"], {}, "label", id="srv-label"),
    pytest.param("srv_records", ["-x.example.org", "mx.example.org"], {}, "'-'", id="srv-hyphen"),
    pytest.param(
        "srv_records", ["exämple.org", "mx.example.org"], {}, "xn--exmple-cua", id="srv-idn"
    ),
    pytest.param(
        "srv_records",
        ["a" * 64 + ".example.org", "mx.example.org"],
        {},
        "1 to 63",
        id="srv-label-length",
    ),
    pytest.param(
        "srv_records",
        [".".join(["a" * 63] * 4) + ".org", "mx.example.org"],
        {},
        "longer than 253",
        id="srv-name-length",
    ),
    pytest.param("srv_records", [None, "mx.example.org"], {}, "domain must be", id="srv-none"),
    # tlsa_record (certificate problems are in test_tlsa_record_bad_certificate)
    pytest.param("tlsa_record", ["x"], {"usage": 4}, "usage must be 0 to 3", id="tlsa-usage"),
    pytest.param(
        "tlsa_record", ["x"], {"selector": "key"}, "0 or 1 or one of Cert, SPKI", id="tlsa-selector"
    ),
    pytest.param("tlsa_record", ["x"], {"mtype": True}, "SHA2-256", id="tlsa-mtype"),
    pytest.param("tlsa_record", ["x"], {}, "PEM certificate", id="tlsa-not-pem"),
    pytest.param("tlsa_record", [None], {}, "PEM certificate", id="tlsa-none"),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "message"), BAD)
def test_bad_input(name: str, args: list[Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(AnsibleFilterError) as caught:
        run(name, *args, **kwargs)
    assert message in str(caught.value)


def test_dmarc_external_destinations_names_the_missing_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without publicsuffixlist on the controller: a message saying what to install, and
    only when a report address is in another domain than the policy domain."""
    module = _load_plugin()
    monkeypatch.setitem(sys.modules, "publicsuffixlist", None)  # import fails
    record = "v=DMARC1; p=none; rua=mailto:d@example.org"
    assert module.dmarc_external_destinations(record, "example.org") == []
    with pytest.raises(AnsibleFilterError, match="pip install publicsuffixlist"):
        module.dmarc_external_destinations(record, "example.net")


# -- dkim_txt with real keys ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _spki_base64(public_key: Any) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def _chunks(value: str) -> list[str]:
    return [value[i : i + 255] for i in range(0, len(value), 255)]


def test_dkim_txt_rsa(rsa_key: rsa.RSAPrivateKey) -> None:
    public = rsa_key.public_key()
    p = _spki_base64(public)
    record = f"v=DKIM1; k=rsa; p={p}"
    expected = _chunks(record)
    assert len(expected) == 2  # a 2048-bit key does not fit one string
    spki_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    pkcs1_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    ).decode()

    assert run("dkim_txt", record) == expected
    assert run("dkim_txt", {"k": "rsa", "p": p}) == expected
    assert run("dkim_txt", {"p": spki_pem}) == expected  # k comes from the key
    assert run("dkim_txt", {"p": pkcs1_pem, "k": "rsa"}) == expected
    # as `estafeta dkim list` prints it, split and re-quoted by a zone editor
    assert run("dkim_txt", f"v=DKIM1; k=rsa; p={p[:100]}  {p[100:]}") == expected


def test_dkim_txt_ed25519_pem() -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    expected = [f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"]
    assert run("dkim_txt", {"p": pem}) == expected
    with pytest.raises(AnsibleFilterError, match="k is 'rsa' but p holds an ed25519 key"):
        run("dkim_txt", {"k": "rsa", "p": pem})


def test_dkim_txt_bad_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(AnsibleFilterError, match="private key; pass the public key"):
        run("dkim_txt", {"p": private_pem})
    with pytest.raises(AnsibleFilterError, match="not a readable PEM public key"):
        run("dkim_txt", {"p": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"})
    # 512-bit modulus: cryptography will not generate one, so build it from numbers.
    weak = rsa.RSAPublicNumbers(65537, (1 << 511) | (1 << 100) | 1).public_key()
    with pytest.raises(AnsibleFilterError, match="512 bits; verifiers ignore keys under 1024"):
        run("dkim_txt", {"p": _spki_base64(weak)})
    with pytest.raises(AnsibleFilterError, match="not RSA; set k"):
        run("dkim_txt", {"p": _spki_base64(ed25519.Ed25519PrivateKey.generate().public_key())})
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(AnsibleFilterError, match="must be an RSA or Ed25519 public key"):
        run("dkim_txt", {"p": ec_pem})


def test_cryptography_missing(monkeypatch: pytest.MonkeyPatch, leaf: trustme.LeafCert) -> None:
    """Without cryptography the filters that need it say so; the others keep working."""
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(AnsibleFilterError, match="needs the Python library cryptography"):
        run("tlsa_record", leaf.cert_chain_pems[0].bytes())
    assert run("mta_sts_txt", "1") == "v=STSv1; id=1"


# -- tlsa_record against hashes computed here -----------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("mx.example.org")


def _pem_der(pem: bytes) -> bytes:
    """DER of the first certificate in PEM text, by plain base64 decoding."""
    lines = pem.decode().strip().splitlines()
    end = lines.index("-----END CERTIFICATE-----")
    return base64.b64decode("".join(lines[1:end]))


def _spki_der_from_key(private_pem: bytes) -> bytes:
    """SubjectPublicKeyInfo from the leaf's private key, not from the certificate."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    ("usage", "selector", "mtype", "expected_prefix", "part", "digest"),
    [
        pytest.param(3, 1, 1, "3 1 1", "spki", "sha256", id="3-1-1"),
        pytest.param("DANE-EE", "SPKI", "SHA2-256", "3 1 1", "spki", "sha256", id="names"),
        pytest.param("3", "1", "2", "3 1 2", "spki", "sha512", id="3-1-2-strings"),
        pytest.param(3, 0, 1, "3 0 1", "cert", "sha256", id="3-0-1"),
        pytest.param(1, 1, 0, "1 1 0", "spki", None, id="1-1-0"),
        pytest.param(3, "cert", "full", "3 0 0", "cert", None, id="3-0-0"),
    ],
)
def test_tlsa_record(
    leaf: trustme.LeafCert,
    usage: Any,
    selector: Any,
    mtype: Any,
    expected_prefix: str,
    part: str,
    digest: str | None,
) -> None:
    cert_pem = leaf.cert_chain_pems[0].bytes()
    data = _spki_der_from_key(leaf.private_key_pem.bytes()) if part == "spki" else None
    if data is None:
        data = _pem_der(cert_pem)
    association = hashlib.new(digest, data).hexdigest() if digest else data.hex()
    expected = f"{expected_prefix} {association}"
    assert run("tlsa_record", cert_pem.decode(), usage, selector, mtype) == expected
    assert run("tlsa_record", cert_pem, usage=usage, selector=selector, mtype=mtype) == expected


def test_tlsa_record_chain(ca: trustme.CA, leaf: trustme.LeafCert) -> None:
    chain = (leaf.cert_chain_pems[0].bytes() + ca.cert_pem.bytes()).decode()
    leaf_spki = _spki_der_from_key(leaf.private_key_pem.bytes())
    assert run("tlsa_record", chain) == f"3 1 1 {hashlib.sha256(leaf_spki).hexdigest()}"
    with pytest.raises(AnsibleFilterError, match="pass that CA certificate alone"):
        run("tlsa_record", chain, usage=2)
    ca_der = _pem_der(ca.cert_pem.bytes())
    assert run("tlsa_record", ca.cert_pem.bytes(), 2, 0, 1) == (
        f"2 0 1 {hashlib.sha256(ca_der).hexdigest()}"
    )


def test_tlsa_record_bad_certificate(leaf: trustme.LeafCert) -> None:
    with pytest.raises(AnsibleFilterError, match="private key, pass the certificate"):
        run("tlsa_record", leaf.private_key_pem.bytes().decode())
    with pytest.raises(AnsibleFilterError, match="cannot be read"):
        run("tlsa_record", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(AnsibleFilterError, match="PEM text, not DER"):
        run("tlsa_record", b"\x30\x82\xff" + _pem_der(leaf.cert_chain_pems[0].bytes()))


# -- through Ansible ------------------------------------------------------------------------


def _ansible(expression: str, extra_vars: dict[str, Any] | None = None) -> tuple[int, str]:
    """Run `ansible localhost -m debug -a msg=EXPRESSION` in the repository; (rc, output)."""
    bin_dir = Path(sys.executable).parent
    ansible = bin_dir / "ansible"
    if not ansible.exists():
        found = shutil.which("ansible")
        assert found, "ansible not found next to the Python running pytest nor on PATH"
        ansible = Path(found)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_NOCOLOR="1",
    )
    command = [str(ansible), "localhost", "-m", "ansible.builtin.debug", "-a"]
    command.append(f"msg={expression}")
    if extra_vars is not None:
        command += ["-e", json.dumps(extra_vars)]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _debug_msg(output: str) -> Any:
    report = json.loads(output[output.index("{") :])
    return report["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]


def test_ansible_loads_spf_record() -> None:
    rc, output = _ansible(
        "{{ {'mx': true, 'a': false, 'ip4': ['198.51.100.10'], 'ip6': ['2001:db8::10'], "
        "'include': ['_spf.provider.example']} | spf_record }}"
    )
    assert rc == 0, output
    assert _debug_msg(output) == (
        "v=spf1 mx ip4:198.51.100.10 ip6:2001:db8::10 include:_spf.provider.example -all"
    )


def test_ansible_runs_every_filter(leaf: trustme.LeafCert) -> None:
    cert_pem = leaf.cert_chain_pems[0].bytes().decode()
    spki = _spki_der_from_key(leaf.private_key_pem.bytes())
    expression = (
        "{{ ["
        "  spf | spf_record(all='~all'),"
        "  'reject' | dmarc_record(rua=['mailto:dmarc@example.org'], adkim='s'),"
        "  dmarc_tags | dmarc_record,"
        "  dmarc_tags | dmarc_record | dmarc_external_destinations('example.net'),"
        "  {'k': 'ed25519', 'p': ed25519_p} | dkim_txt,"
        "  ('x' * 300) | txt_strings | map('length') | list,"
        "  20240501120000 | mta_sts_txt,"
        "  ['mailto:tls@example.org'] | tlsrpt_txt,"
        "  'example.org' | srv_records('mx.example.org', ports={'pop3': none}) | last,"
        "  cert | tlsa_record,"
        "] }}"
    )
    rc, output = _ansible(
        expression,
        {
            "spf": {"mx": True, "ip4": ["198.51.100.10"]},
            "dmarc_tags": {"p": "quarantine", "pct": 50, "rua": "mailto:dmarc@example.org"},
            "ed25519_p": ED25519_P,
            "cert": cert_pem,
        },
    )
    assert rc == 0, output
    assert _debug_msg(output) == [
        "v=spf1 mx ip4:198.51.100.10 ~all",
        "v=DMARC1; p=reject; adkim=s; rua=mailto:dmarc@example.org",
        "v=DMARC1; p=quarantine; pct=50; rua=mailto:dmarc@example.org",
        ["example.org"],
        [f"v=DKIM1; k=ed25519; p={ED25519_P}"],
        [255, 45],
        "v=STSv1; id=20240501120000",
        "v=TLSRPTv1; rua=mailto:tls@example.org",
        {"name": "_pop3._tcp.example.org", "priority": 0, "weight": 0, "port": 0, "target": "."},
        f"3 1 1 {hashlib.sha256(spki).hexdigest()}",
    ]


def test_ansible_reports_filter_error() -> None:
    rc, output = _ansible("{{ ['mx', 'ptr'] | spf_record }}")
    assert rc != 0
    assert "spf_record" in output
    assert "ptr is slow and must not be published (RFC 7208 5.5)" in output
