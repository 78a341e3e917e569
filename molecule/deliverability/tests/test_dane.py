"""DANE in the lab (issue 22 §3, acceptance 2 and 3): the infrastructure.

- Knot on dns.lab signs example.net; mx1's and mx2's unbound trust its DS
  (.lab/trust-anchors.json, written by playbooks/lab.yml): example.net
  answers carry the AD bit, example.test (unsigned) answers do not, and a
  forged example.net answer is SERVFAIL.
- A TLSA record on the unsigned example.test is answered without AD: a DANE
  client must ignore it (rfc7672:2.2). The fixture ``unsigned_zone_tlsa``
  (conftest.py) publishes a deliberately wrong one at
  _25._tcp.mx1.example.test for the length of a test; a test of the DANE
  client can use it to show that mail from mx2 to mx1 is still delivered.
- Delivery (after the rollover, which needs mx2's TLSA records untouched
  until then): mx1's mail to mx2 is DANE-verified (the log's ``outbound``
  line says tls=dane, a ``dane_verified`` line names mx2 and the record);
  with mx2's TLSA records replaced by one that names no key of mx2's, mx1
  defers the message with 4.7.5 and keeps it queued, and once the records
  are back it goes; mx2's mail to mx1 is delivered under MTA-STS while a
  wrong TLSA record sits in the unsigned example.test.
- mx2's key rollover: while mx2 switches its certificate's key twice (once
  to a standby key long in DNS, once to one published seconds before, which
  it must wait for), a loop on mx1 compares, every 2 s, the TLSA records
  mx1's resolver gives for _25._tcp.mx2.example.net with the key mx2
  presents after STARTTLS on port 25. No moment may lack a match.

About 100 s in all, half of it one run of playbooks/dns.yml.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from lab_hosts import LAB_DNS, MAIL_HOSTS, TRUST_ANCHORS
from test_deliverability import receive, send

from conftest import WRONG_TLSA, nsupdate, playbook, records

MX1, MX2 = "mx1.example.test", "mx2.example.net"
ESTAFETA = "/usr/local/sbin/estafeta"
MX2_ADDRESS = MAIL_HOSTS[MX2]["address"]
TLSA_NAME = f"_25._tcp.{MX2}"
# One line every 2 s on mx1: time, the AD flag, mx1's resolver's TLSA 3 1 1
# digests for mx2 (comma-separated), the SPKI SHA-256 mx2 presents on 25.
WATCHER = """#!/bin/sh
while :; do
  now=$(date +%s.%N)
  answer=$(kdig @127.0.0.1 +dnssec +timeout=2 TLSA {name})
  ad=$(printf '%s\\n' "$answer" | grep -c '^;; Flags:.* ad[ ;]')
  tlsa=$(printf '%s\\n' "$answer" \\
    | awk '$4 == "TLSA" && $5 == 3 && $6 == 1 && $7 == 1 {{print tolower($8)}}' \\
    | sort | paste -sd, -)
  spki=$(echo QUIT \\
    | timeout 10 openssl s_client -starttls smtp -connect {address}:25 -servername {host} \\
      2>/dev/null \\
    | openssl x509 -pubkey -noout 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null \\
    | openssl dgst -sha256 -r | cut -d' ' -f1)
  echo "$now $ad ${{tlsa:--}} ${{spki:--}}" >> {log}
  sleep 2
done
"""


def kdig(host: Any, name: str, rdtype: str, server: str = "127.0.0.1") -> str:
    return str(host.check_output(f"kdig @{server} +dnssec +timeout=3 {rdtype} {name}"))


def flags(answer: str) -> list[str]:
    line = next(line for line in answer.splitlines() if line.startswith(";; Flags:"))
    return line.split(";")[2].replace("Flags:", "").split()


def status(answer: str) -> str:
    line = next(line for line in answer.splitlines() if "status:" in line)
    return line.split("status:")[1].split(";")[0].strip()


def tlsa_values(answer: str) -> list[str]:
    return sorted(
        " ".join([*fields[4:7], fields[7].lower()])
        for fields in (line.split() for line in answer.splitlines() if not line.startswith(";"))
        if len(fields) >= 8 and fields[3] == "TLSA"
    )


def dane_keys(host: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(host.check_output(f"{ESTAFETA} tls tlsa --json"))
    return result


# -- the resolvers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [MX1, MX2])
def test_unbound_validates_example_net_and_not_example_test(hosts, name: str) -> None:  # type: ignore[no-untyped-def]
    host = hosts[name]
    assert host.run("unbound-checkconf").rc == 0
    anchors = json.loads(TRUST_ANCHORS.read_text())["example.net"]
    config = host.file("/etc/unbound/unbound.conf").content_string
    assert f'trust-anchor: "{anchors[0]}"' in config
    assert 'domain-insecure: "example.net"' not in config
    signed = kdig(host, TLSA_NAME, "TLSA")
    assert status(signed) == "NOERROR" and "ad" in flags(signed), signed
    assert tlsa_values(signed), signed
    unsigned = kdig(host, MX1, "A")
    assert status(unsigned) == "NOERROR" and "ad" not in flags(unsigned), unsigned
    assert MAIL_HOSTS[MX1]["address"] in unsigned


def test_tlsa_on_the_unsigned_zone_is_answered_insecure(hosts, unsigned_zone_tlsa: str) -> None:  # type: ignore[no-untyped-def]
    answer = kdig(hosts[MX2], unsigned_zone_tlsa, "TLSA")
    assert status(answer) == "NOERROR" and "ad" not in flags(answer), answer
    assert tlsa_values(answer) == [WRONG_TLSA]


def test_a_forged_example_net_answer_is_bogus(hosts) -> None:  # type: ignore[no-untyped-def]
    """dns.lab serves the signed zone's records (RRSIGs and all) with one
    TLSA value changed from a second Knot; an unbound on mx1 with the lab's
    trust anchor, asking that one, answers SERVFAIL for the TLSA record."""
    dns_lab, mx1 = hosts["dns.lab"], hosts[MX1]
    forged = "/run/forged-knot"
    anchor = json.loads(TRUST_ANCHORS.read_text())["example.net"][0]
    script = f"""set -e
rm -rf {forged}; mkdir -p {forged}
knotc zone-read example.net | sed 's/^\\[[^]]*\\] //' \\
  | awk '$3 == "TLSA" {{ $7 = "CD" substr($7, 3) }} {{ print }}' > {forged}/example.net.zone
grep -q ' RRSIG TLSA ' {forged}/example.net.zone
cat > {forged}/knot.conf <<EOF
server:
    rundir: "{forged}"
    listen: 0.0.0.0@5300
database:
    storage: "{forged}"
template:
  - id: default
    storage: "{forged}"
    file: "%s.zone"
    zonefile-sync: -1
zone:
  - domain: example.net
EOF
setsid knotd -c {forged}/knot.conf > {forged}/knot.log 2>&1 < /dev/null &
echo $! > {forged}/pid
"""
    dns_lab.check_output(script)
    unbound = "/run/forged-unbound"
    try:
        mx1.check_output(
            f"""set -e
rm -rf {unbound}; mkdir -p {unbound}
cat > {unbound}/unbound.conf <<EOF
server:
    interface: 127.0.0.1@5301
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{unbound}"
    pidfile: ""
    use-syslog: no
    module-config: "validator iterator"
    trust-anchor: "{anchor}"
    local-zone: "example.net" transparent
stub-zone:
    name: "example.net"
    stub-addr: {LAB_DNS}@5300
remote-control:
    control-enable: no
EOF
setsid unbound -d -c {unbound}/unbound.conf > {unbound}/log 2>&1 < /dev/null &
echo $! > {unbound}/pid
"""
        )
        deadline = time.monotonic() + 20
        while True:
            intact = mx1.run(f"kdig @127.0.0.1 -p 5301 +dnssec +timeout=2 A {MX2}").stdout
            if "status: NOERROR" in intact or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "ad" in flags(intact), intact  # the untouched records validate
        bogus = mx1.check_output(f"kdig @127.0.0.1 -p 5301 +dnssec +timeout=3 TLSA {TLSA_NAME}")
        assert status(bogus) == "SERVFAIL", bogus
    finally:
        mx1.run(f"test -f {unbound}/pid && kill $(cat {unbound}/pid); rm -rf {unbound}")
        dns_lab.run(f"test -f {forged}/pid && kill $(cat {forged}/pid); rm -rf {forged}")


# -- mx2's key rollover, seen from mx1 ---------------------------------------------------------


@pytest.fixture
def watcher(hosts) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """The loop on mx1 (WATCHER), started and stopped by its PID; yields its log."""
    mx1 = hosts[MX1]
    log = "/run/dane-watch.log"
    script = WATCHER.format(name=TLSA_NAME, address=MX2_ADDRESS, host=MX2, log=log)
    mx1.check_output(f"rm -f {log}; cat > /run/dane-watch.sh <<'EOF'\n{script}EOF")
    mx1.check_output(
        "setsid sh /run/dane-watch.sh > /dev/null 2>&1 < /dev/null & echo $! > /run/dane-watch.pid"
    )
    try:
        yield Path(log)
    finally:
        mx1.run("kill $(cat /run/dane-watch.pid); rm -f /run/dane-watch.sh /run/dane-watch.pid")


def watched(hosts: dict[str, Any], log: Path) -> list[tuple[float, bool, set[str], str]]:
    """The watcher's lines so far: (time, AD, TLSA digests, presented digest)."""
    text = hosts[MX1].run(f"cat {log}").stdout
    rows = []
    for line in text.splitlines():
        when, ad, tlsa, spki = line.split()
        rows.append((float(when), ad == "1", set() if tlsa == "-" else set(tlsa.split(",")), spki))
    return rows


def wait_until(what: str, condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(1)


def test_the_key_rollover_never_leaves_mx1_without_a_match(hosts, watcher: Path) -> None:  # type: ignore[no-untyped-def]
    mx2 = hosts[MX2]
    before = dane_keys(mx2)
    current, standby = (k["spki_sha256"] for k in before["keys"])
    assert before["keys"][1]["visible"] and before["keys"][1]["secure"], before
    wait_until("three looks from mx1", lambda: len(watched(hosts, watcher)) >= 3, 30)
    assert watched(hosts, watcher)[-1][3] == current

    # 1. The standby key has been in DNS since the converge: the switch is at once.
    mx2.check_output(f"{ESTAFETA} tls rollover --json && systemctl reload estafeta")
    wait_until(
        "mx2 presents its standby key", lambda: watched(hosts, watcher)[-1][3] == standby, 60
    )
    after = dane_keys(mx2)
    assert after["keys"][0]["spki_sha256"] == standby
    newest = after["keys"][1]["spki_sha256"]
    assert newest not in (current, standby) and after["rollover_requested"] is None

    # 2. dns_records publishes the new standby and withdraws the old key; a
    # rollover asked for at once must wait for the new record's TTL + margin.
    playbook("dns.yml", "--limit", MX2)
    published = time.time()
    mx2.check_output(f"{ESTAFETA} tls rollover && systemctl reload estafeta")
    wait_until("mx2 presents the newest key", lambda: watched(hosts, watcher)[-1][3] == newest, 90)
    switched = time.time()
    wait_until("two more looks", lambda: watched(hosts, watcher)[-2][0] > switched, 30)

    rows = watched(hosts, watcher)
    misses = [row for row in rows if not row[1] or row[3] not in row[2]]
    assert not misses, "mx1 found no TLSA record for mx2's key at:\n" + "\n".join(map(str, misses))
    presented = [row[3] for row in rows]
    assert list(dict.fromkeys(presented)) == [current, standby, newest]
    # The newest key appeared in mx1's answers before mx2 used it, the old one left.
    first_seen = min(row[0] for row in rows if newest in row[2])
    first_used = min(row[0] for row in rows if row[3] == newest)
    assert first_seen < first_used and first_used > published
    assert current not in rows[-1][2] and rows[-1][2] == {standby, newest}
    log = mx2.check_output("journalctl -u estafeta --no-pager -o cat | grep -E 'acme_key_rollover'")
    assert log.count("acme_key_rollover") >= 2


# -- mx1's deliveries, DANE-checked ------------------------------------------------------------


def journal(host: Any, since: float, event: str) -> list[dict[str, str]]:
    """estafeta's log lines of EVENT from SINCE (epoch seconds) on, as their
    key=value fields (the role's text log format, estafeta.log)."""
    text = host.run(f"journalctl -u estafeta --no-pager -o cat --since @{int(since) - 1}").stdout
    lines = []
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:  # a traceback's line, say
            continue
        if len(words) > 3 and words[3] == event:
            lines.append(dict(word.partition("=")[::2] for word in words[4:]))
    return lines


def outbound(host: Any, since: float, to: str, result: str, timeout: float = 90) -> dict[str, str]:
    """The first ``outbound`` log line since SINCE for recipient TO with RESULT
    (sent, temporary), waited for; the queue runs at once for new mail."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            line
            for line in journal(host, since, "outbound")
            if line.get("to") == f"<{to}>" and line.get("result") == result
        ]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no outbound {result} to {to} within {timeout:.0f} s"
        time.sleep(2)


def forget(host: Any, name: str, rdtype: str) -> None:
    """Drop NAME's RDTYPE records from the host's unbound (cache and expired)."""
    host.check_output(f"unbound-control flush_type {name} {rdtype}")
    host.check_output("unbound-control flush_negative")


def authoritative_tlsa() -> tuple[int, list[str]]:
    """mx2's TLSA RRset as dns.lab serves it: TTL and values."""
    query = dns.message.make_query(TLSA_NAME, "TLSA")
    answer = dns.query.tcp(query, LAB_DNS, timeout=10)
    rrset = answer.find_rrset(answer.answer, query.question[0].name, 1, dns.rdatatype.TLSA)
    return rrset.ttl, [rdata.to_text() for rdata in rrset]


def resolved_tlsa(host: Any, expected: list[str], timeout: float = 30) -> None:
    """Wait until the host's resolver answers EXPECTED (validated) for mx2's TLSA."""
    expected = sorted(" ".join([*v.split()[:3], v.split()[3].lower()]) for v in expected)
    deadline = time.monotonic() + timeout
    while True:
        answer = kdig(host, TLSA_NAME, "TLSA")
        if tlsa_values(answer) == expected and "ad" in flags(answer):
            return
        assert time.monotonic() < deadline, f"mx1 resolves {tlsa_values(answer)}, not {expected}"
        forget(host, TLSA_NAME, "TLSA")
        time.sleep(1)


def test_mx1_delivers_to_mx2_dane_verified(hosts) -> None:  # type: ignore[no-untyped-def]
    mx1 = hosts[MX1]
    since = time.time()
    subject = f"dane {uuid.uuid4().hex}"
    send(MX1, MX2, subject)
    receive(MX2, subject)
    line = outbound(mx1, since, MAIL_HOSTS[MX2]["account"], "sent")
    assert line["tls"] == "dane" and line["relay"].startswith(MX2), line
    verified = [v for v in journal(mx1, since, "dane_verified") if v["host"] == MX2]
    assert verified, "no dane_verified line for mx2"
    # rfc7672:3.1.1 — the lab publishes DANE-EE(3) SPKI(1) records.
    assert (verified[0]["usage"], verified[0]["selector"]) == ("3", "1"), verified[0]
    assert verified[0]["address"] == MX2_ADDRESS, verified[0]


def test_mx1_defers_mail_to_mx2_while_no_tlsa_record_matches(hosts) -> None:  # type: ignore[no-untyped-def]
    mx1, to = hosts[MX1], MAIL_HOSTS[MX2]["account"]
    ttl, values = authoritative_tlsa()
    assert values, "mx2 publishes no TLSA record"
    subject = f"dane mismatch {uuid.uuid4().hex}"
    nsupdate("example.net", TLSA_NAME + ".", "TLSA", records("TLSA", ttl, WRONG_TLSA))
    try:
        resolved_tlsa(mx1, [WRONG_TLSA])
        since = time.time()
        send(MX1, MX2, subject)
        deferred = outbound(mx1, since, to, "temporary")
        # rfc7672:2.2, rfc3463 X.7.5 — a TLSA record set and no match: not delivered.
        assert (deferred["status"], deferred["tls"]) == ("4.7.5", "dane"), deferred
        failed = [f for f in journal(mx1, since, "dane_failed") if f["host"] == MX2]
        assert failed and failed[0]["result"] == "validation-failure", failed
        queued = json.loads(mx1.check_output(f"{ESTAFETA} queue list --json"))
        [entry] = [e for e in queued if e["id"] == deferred["id"]]
        assert entry["recipients"] == [to] and "DANE" in entry["last_error"], entry
        assert not journal(mx1, since, "dane_verified")
    finally:
        nsupdate("example.net", TLSA_NAME + ".", "TLSA", records("TLSA", ttl, *values))
    # The records mended, the message waiting in the queue goes, DANE-verified.
    resolved_tlsa(mx1, values)
    since = time.time()
    mx1.check_output(f"{ESTAFETA} queue flush {deferred['id']}")
    sent = outbound(mx1, since, to, "sent")
    assert (sent["id"], sent["tls"]) == (deferred["id"], "dane"), sent
    receive(MX2, subject)


def test_mx2_ignores_tlsa_on_the_unsigned_zone(hosts, unsigned_zone_tlsa: str) -> None:  # type: ignore[no-untyped-def]
    """rfc7672:2.2 — TLSA records of an insecure zone are not usable: mx2
    delivers to mx1 as without them (MTA-STS, example.test's policy)."""
    mx2 = hosts[MX2]
    forget(mx2, unsigned_zone_tlsa, "TLSA")
    answer = kdig(mx2, unsigned_zone_tlsa, "TLSA")
    assert tlsa_values(answer) == [WRONG_TLSA] and "ad" not in flags(answer), answer
    since = time.time()
    subject = f"dane unsigned {uuid.uuid4().hex}"
    send(MX2, MX1, subject)
    receive(MX1, subject)
    line = outbound(mx2, since, MAIL_HOSTS[MX1]["account"], "sent")
    assert line["tls"] == "mta-sts", line
    assert not [f for f in journal(mx2, since, "dane_failed") if f["host"] == MX1]
