"""The lab's DNSSEC (issue 22 §3), on this machine, from the roles' templates.

Role lab_dns's knot.conf and zone files, rendered with the lab inventory's
zones, run a real Knot that signs example.net; its DS (``keymgr ZONE ds``,
as the role reads it) is the trust anchor of role resolver's unbound.conf.
That unbound then answers example.net with the AD bit, a TLSA record sent
by RFC 2136 (as dns_records does) included; answers example.test (unsigned)
without it; and turns a forged answer (the signed zone's records with one
TLSA value changed, served by a second Knot) into SERVFAIL.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from tests.test_role_spam_defence import (
    ROOT_KEY,
    free_port,
    lab_file,
    needs,
    process,
    render_templates,
    role_defaults,
)
from tests.test_roles import ROOT, failures, run_playbook

ZONES_PLAYBOOK = """
- name: Render the lab zone files
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render them
      ansible.builtin.template:
        src: "{{ test__src }}"
        dest: "{{ lab_dns__storage }}/{{ item.name }}.zone"
        mode: "0644"
      loop: "{{ lab_dns__zones }}"
"""
TLSA_MX2 = "3 1 1 " + "ab" * 32
TLSA_MX1 = "3 1 1 " + "00" * 32  # deliberately wrong, on the unsigned zone


def query(port: int, name: str, rdtype: str) -> dns.message.Message:
    """A validating resolver's answer to a stub that asks for validation (AD, DO)."""
    message = dns.message.make_query(name, rdtype, want_dnssec=True)
    message.flags |= dns.flags.AD
    return dns.query.udp(message, "127.0.0.1", port=port, timeout=5)


def values(answer: dns.message.Message, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return [r.to_text() for rrset in answer.answer if rrset.rdtype == wanted for r in rrset]


def wait_for(port: int, name: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError, dns.exception.DNSException):
            dns.query.udp(dns.message.make_query(name, "SOA"), "127.0.0.1", port=port, timeout=1)
            return
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def knot_conf(tmp_path: Path, variables: dict[str, Any]) -> Path:
    """Role lab_dns's knot.conf for ``variables``, made to run as this user here."""
    conf = tmp_path / "knot.conf"
    src = str(ROOT / "roles" / "lab_dns" / "templates" / "knot.conf.j2")
    render_templates(tmp_path, variables, [(src, conf)])
    text = conf.read_text()
    text = text.replace('rundir: "/run/knot"', f'rundir: "{tmp_path / "run"}"')
    text = text.replace("    user: knot:knot\n", "")
    text = text.replace("  - target: syslog", "  - target: stderr")
    conf.write_text(text)
    return conf


def unbound_conf(
    tmp_path: Path, name: str, port: int, stubs: list[dict[str, Any]], anchors: dict[str, Any]
) -> Path:
    """Role resolver's unbound.conf with the lab's stub zones, here."""
    anchor = tmp_path / f"{name}-root.key"
    anchor.write_bytes(ROOT_KEY.read_bytes())
    variables = {
        **role_defaults("resolver"),
        "resolver__interfaces": ["127.0.0.1"],
        "resolver__port": port,
        "resolver__trust_anchor_file": str(anchor),
        "resolver__stub_zones": stubs,
        "lab__trust_anchors": anchors,
        "resolver__extra_server_options": [
            "do-not-query-localhost: no",
            'username: ""',
            'chroot: ""',
            f'directory: "{tmp_path}"',
            f'pidfile: "{tmp_path / (name + ".pid")}"',
            "use-syslog: no",
        ],
    }
    conf = tmp_path / f"{name}.conf"
    src = str(ROOT / "roles" / "resolver" / "templates" / "unbound.conf.j2")
    render_templates(tmp_path, variables, [(src, conf)], validate="unbound-checkconf %s")
    conf.write_text(conf.read_text().replace("control-enable: yes", "control-enable: no"))
    return conf


def test_knot_signs_example_net_and_unbound_validates_it(tmp_path: Path) -> None:
    needs("knotd", "keymgr", "unbound", "unbound-checkconf")
    lab = lab_file("group_vars/all.yml")
    zones = [z for z in lab["lab_dns__zones"] if z["name"] in ("example.test", "example.net")]
    assert [z.get("dnssec", False) for z in zones] == [False, True]
    storage = tmp_path / "knot"
    (tmp_path / "run").mkdir()
    storage.mkdir()
    knot_port = free_port(socket.SOCK_DGRAM)
    variables = {
        **role_defaults("lab_dns"),
        "lab_dns__zones": zones,
        "lab_dns__listen": [f"127.0.0.1@{knot_port}"],
        "lab_dns__storage": str(storage),
        "lab_dns__tsig_secret": lab["lab_tsig_secret"],
        "lab_dns__ttl": 60,
        "lab_dns__negative_ttl": lab["lab_dns__negative_ttl"],
    }
    conf = knot_conf(tmp_path, variables)
    rc, output, stderr = run_playbook(
        ZONES_PLAYBOOK,
        tmp_path,
        "-i",
        "localhost,",
        extra_vars={
            **variables,
            "test__src": str(ROOT / "roles" / "lab_dns" / "templates" / "zone.j2"),
            "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        },
    )
    assert rc == 0, failures(output) or stderr
    with process(["knotd", "-c", str(conf)], tmp_path / "knot.log"):
        wait_for(knot_port, "example.net.", tmp_path / "knot.log")
        # What the role's task reads (it runs keymgr as the knot user).
        ds = ""
        for _ in range(50):
            out = subprocess.run(
                ["keymgr", "-c", str(conf), "example.net", "ds"], capture_output=True, text=True
            ).stdout
            ds = next((line for line in out.splitlines() if line.split()[4:5] == ["2"]), "")
            if ds:
                break
            time.sleep(0.2)
        assert ds.startswith("example.net. DS "), out
        # dns_records' way: RFC 2136 with the lab's TSIG key; Knot signs it.
        keyring = dns.tsigkeyring.from_text({"lab-update.": lab["lab_tsig_secret"]})

        def add_tlsa(zone: str, owner: str, value: str) -> None:
            update = dns.update.UpdateMessage(
                zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256
            )
            update.add(owner, 4, "TLSA", value)
            reply = dns.query.tcp(update, "127.0.0.1", port=knot_port, timeout=5)
            assert reply.rcode() == dns.rcode.NOERROR, reply

        add_tlsa("example.net", "_25._tcp.mx2", TLSA_MX2)
        add_tlsa("example.test", "_25._tcp.mx1", TLSA_MX1)
        # The lab's stub zones, pointed at this Knot.
        stubs = [
            {**zone, "addresses": [f"127.0.0.1@{knot_port}"]}
            for zone in lab["resolver__stub_zones"]
            if zone["name"] in ("example.test", "example.net")
        ]
        anchors = {"example.net": [ds]}
        port = free_port(socket.SOCK_DGRAM)
        resolver = unbound_conf(tmp_path, "unbound", port, stubs, anchors)
        text = resolver.read_text()
        assert f'trust-anchor: "{ds}"' in text and 'domain-insecure: "example.net"' not in text
        with process(["unbound", "-d", "-c", str(resolver)], tmp_path / "unbound.log"):
            wait_for(port, "example.net.", tmp_path / "unbound.log")
            signed = query(port, "_25._tcp.mx2.example.net", "TLSA")
            assert signed.flags & dns.flags.AD, signed
            assert values(signed, "TLSA") == [TLSA_MX2]
            unsigned = query(port, "_25._tcp.mx1.example.test", "TLSA")
            assert unsigned.rcode() == dns.rcode.NOERROR and not unsigned.flags & dns.flags.AD
            assert values(unsigned, "TLSA") == [TLSA_MX1]
            # Denial of existence is proven too (NSEC): a secure NXDOMAIN.
            missing = query(port, "_25._tcp.nothere.example.net", "TLSA")
            assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AD
            # A record added after the resolver cached the denial (and the NSEC
            # record that covers its name, rfc8198:5) is seen once the lab's
            # negative TTL has passed (rfc2308:5, the SOA MINIMUM).
            negative_ttl = lab["lab_dns__negative_ttl"]
            assert [r.ttl for r in missing.authority if r.rdtype == dns.rdatatype.SOA]
            assert max(r.ttl for r in missing.authority) <= negative_ttl, missing
            add_tlsa("example.net", "_25._tcp.nothere", TLSA_MX2)
            deadline = time.monotonic() + negative_ttl + 5
            while values(query(port, "_25._tcp.nothere.example.net", "TLSA"), "TLSA") != [TLSA_MX2]:
                assert time.monotonic() < deadline, "the added TLSA record stays unseen"
                time.sleep(0.5)
        forged = forged_zone(tmp_path, conf)
    # A second Knot serves the signed records with the TLSA value changed.
    forged_port = free_port(socket.SOCK_DGRAM)
    with process(forged.knotd(forged_port), tmp_path / "forged-knot.log"):
        wait_for(forged_port, "example.net.", tmp_path / "forged-knot.log")
        port = free_port(socket.SOCK_DGRAM)
        stubs = [
            {
                "name": "example.net",
                "addresses": [f"127.0.0.1@{forged_port}"],
                "insecure": False,
                "trust_anchors": [ds],
            },
        ]
        resolver = unbound_conf(tmp_path, "forged", port, stubs, {})
        with process(["unbound", "-d", "-c", str(resolver)], tmp_path / "forged.log"):
            wait_for(port, "example.net.", tmp_path / "forged.log")
            bogus = query(port, "_25._tcp.mx2.example.net", "TLSA")
            assert bogus.rcode() == dns.rcode.SERVFAIL, bogus
            intact = query(port, "mx2.example.net", "A")
            assert intact.rcode() == dns.rcode.NOERROR and intact.flags & dns.flags.AD


class Forged:
    def __init__(self, root: Path) -> None:
        self.root = root

    def knotd(self, port: int) -> list[str]:
        conf = self.root / "knot.conf"
        conf.write_text(
            "server:\n"
            f'    rundir: "{self.root}"\n'
            f"    listen: 127.0.0.1@{port}\n"
            "database:\n"
            f'    storage: "{self.root}"\n'
            "template:\n"
            "  - id: default\n"
            f'    storage: "{self.root}"\n'
            '    file: "%s.zone"\n'
            "    zonefile-sync: -1\n"
            "zone:\n"
            "  - domain: example.net\n"
        )
        return ["knotd", "-c", str(conf)]


def forged_zone(tmp_path: Path, conf: Path) -> Forged:
    """The signed example.net as Knot serves it, RRSIGs and all, with the
    TLSA value changed: what an on-path attacker could send."""
    dump = subprocess.run(
        ["knotc", "-c", str(conf), "zone-read", "example.net"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line.split("] ", 1)[1] for line in dump.splitlines() if line.startswith("[")]
    forged = [
        line.replace(TLSA_MX2.split()[3].upper(), "CD" * 32) if " TLSA " in line else line
        for line in lines
    ]
    assert forged != lines and any(" RRSIG TLSA " in line for line in lines)
    root = tmp_path / "forged"
    root.mkdir()
    (root / "example.net.zone").write_text("\n".join(forged) + "\n")
    return Forged(root)
