"""Reports between the lab's domains (issue 22, acceptance 1): DMARC and TLS-RPT.

A simulated day: mx1 and mx2 exchange mail (``exchanged``: MESSAGES each way
over submission, each read at the other end), then the injected clock moves
to 00:30 UTC of the next day (``CLOCK``) and each host sends the other the
DMARC aggregate report of the day (``dmarc_sent``):

1. the reporting host's own evidence first: ``estafeta dmarc send --now
   CLOCK --dry-run --json`` sums, per source IP, what its MX evaluated of
   the other domain's mail (polled until it counts this test's messages on
   top of what it counted before them; every test of the scenario sends
   mail, so the numbers come from there, never from this file);
2. ``estafeta dmarc send --now CLOCK --json`` queues the report for the
   domain's ``rua=`` (the other host's ``[reports] dmarc_address``, which
   dns_records publishes), then ``estafeta queue flush`` sends it now;
3. the other host's ``estafeta dmarc report --json`` shows it (bounded
   polling): from the reporting host, about the sending host's lab address,
   every message passing SPF, DKIM and DMARC aligned, as many as the
   reporter evaluated.

Also: the sample report written after RFC 7489 appendix C for the server's
tests (server/tests/data/dmarc/report.xml, several records) is imported on
mx1 as a zip and as a gzip with ``estafeta dmarc import`` and summed by
``estafeta dmarc report``.

Then the TLS reports of the same day (``tlsrpt_sent``, after the DMARC
reports, whose own sessions the day counts too):

1. ``estafeta tlsrpt send --now CLOCK --dry-run --json`` on the reporting
   host counts its sessions to the other domain; ``exchanged`` took the
   count before its messages, so the dry run is polled until it has at
   least MESSAGES more successful sessions (the server writes its counts
   every 15 s);
2. ``estafeta tlsrpt send --now CLOCK --json`` mails the report, DKIM-signed,
   to the rua of the other domain's ``_smtp._tls`` record (the other host's
   ``[reports] tlsrpt_address``), then ``estafeta queue flush``;
3. the other host's ``estafeta tlsrpt report --json`` shows it: from the
   reporting host, about its domain, the very session counts sent, under
   the policy the sessions ran under (mx1 → example.net: DANE, ``tlsa``,
   the zone being signed; mx2 → example.test: MTA-STS, ``sts``).

Needs a lab whose day is not sent yet: the scenario's fresh hosts (a second
``molecule verify`` on the same UTC day finds the day sent; mail of a day
already sent is not recorded again).
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from lab_hosts import MAIL_HOSTS, ROOT
from test_deliverability import receive, send

sys.path.insert(0, str(ROOT / "server" / "tests"))
from _dmarc_reports import gzipped, sample, zipped

MX1, MX2 = "mx1.example.test", "mx2.example.net"
# Messages each way in the simulated day.
MESSAGES = 3
# The injected clock: 00:30 UTC of the next day, which makes today complete.
# Mail of the day after (a run across midnight) would wait for its own day.
_TODAY = datetime.datetime.now(datetime.UTC).date()
CLOCK = f"{_TODAY + datetime.timedelta(days=1)}T00:30:00Z"
# The other host of each: who reports to whom.
OTHER = {MX1: MX2, MX2: MX1}
# The policy type (rfc8460:4.4) of each host's sessions to the other's domain.
POLICY_TYPE = {MX1: "tlsa", MX2: "sts"}
# How often the server writes its session counts (reports/tlsrpt_send.py FLUSH_INTERVAL).
TLS_FLUSH = 15

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """``probe()`` until it gives something, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(2)


def estafeta(host: Any, *args: str) -> Any:
    """``estafeta ARGS --json`` on a lab host (as root: the wrapper runs it as
    the estafeta user); the document it prints."""
    command = shlex.join(["estafeta", *args, "--json"])
    result = host.run(command)
    assert result.rc == 0, f"{command}: {result.rc}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def source_of(reports: list[dict[str, Any]], domain: str, ip: str) -> dict[str, Any]:
    """What the reports about ``domain`` say of ``ip``: their ``sources``
    rows of that address summed (one per day; a run across midnight has two)."""
    total: dict[str, Any] = {"source_ip": ip, "messages": 0}
    for report in reports:
        if report["domain"] != domain:
            continue
        for row in report["sources"]:
            if row["source_ip"] != ip:
                continue
            total["messages"] += row["messages"]
            for key, value in row.items():
                if isinstance(value, dict):
                    counts = total.setdefault(key, dict.fromkeys(value, 0))
                    for result, count in value.items():
                        counts[result] += count
    return total


def evaluated(host: Any, domain: str, address: str, least: int) -> dict[str, Any] | None:
    """What ``host``'s MX evaluated of ``domain``'s mail from ``address``
    (the sources row of a dry run), once it counts at least ``least``."""
    dry = estafeta(host, "dmarc", "send", "--now", CLOCK, "--dry-run")
    row = source_of(dry["reports"], domain, address)
    return row if row["messages"] >= least else None


# -- the simulated day ----------------------------------------------------------------------


def tls_sessions(host: Any, domain: str, least: int) -> dict[str, int] | None:
    """What ``host`` would report to ``domain`` (a dry run): its sessions
    there, successful and failed, once at least ``least`` succeeded."""
    dry = estafeta(host, "tlsrpt", "send", "--now", CLOCK, "--dry-run")
    entries = [entry for entry in dry if entry["domain"] == domain]
    counts = {key: sum(entry[key] for entry in entries) for key in ("successful", "failed")}
    return counts if counts["successful"] >= least else None


@pytest.fixture(scope="module")
def exchanged(hosts) -> dict[str, dict[str, int]]:  # type: ignore[no-untyped-def]
    """MESSAGES messages from each host's account to the other's, each read
    there. {sending host: {"dmarc": how many of its messages the other
    host's MX has evaluated today at least, "tlsrpt": how many successful
    sessions to the other domain it counts today at least}}: what was
    counted before (dry runs) and these."""
    # Sessions of earlier tests still unwritten would pass for these (TLS_FLUSH).
    time.sleep(TLS_FLUSH + 1)
    least = {}
    for sender, recipient in ((MX1, MX2), (MX2, MX1)):
        domain, address = MAIL_HOSTS[sender]["domain"], MAIL_HOSTS[sender]["address"]
        before = evaluated(hosts[recipient], domain, address, 0)
        sessions = tls_sessions(hosts[sender], MAIL_HOSTS[recipient]["domain"], 0)
        assert before is not None and sessions is not None
        for number in range(MESSAGES):
            subject = f"reports day {number} {uuid.uuid4().hex}"
            send(sender, recipient, subject)
            receive(recipient, subject)
        least[sender] = {
            "dmarc": before["messages"] + MESSAGES,
            "tlsrpt": sessions["successful"] + MESSAGES,
        }
    return least


# -- DMARC (RFC 7489 7.2) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dmarc_sent(hosts, exchanged: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Each host reports the day to the other: {reporting host: {"evidence":
    what its MX evaluated from the other host's address (the dry run),
    "reports": the reports `dmarc send` queued}}."""
    sent = {}
    for reporter, sender in OTHER.items():
        host = hosts[reporter]
        domain, address = MAIL_HOSTS[sender]["domain"], MAIL_HOSTS[sender]["address"]
        evidence = wait_for(
            functools.partial(evaluated, host, domain, address, exchanged[sender]["dmarc"]),
            f"{reporter}: the evaluations of {sender}'s mail",
            60,
        )
        document = estafeta(host, "dmarc", "send", "--now", CLOCK)
        reports = [r for r in document["reports"] if r["domain"] == domain]
        assert reports, document
        for report in reports:
            assert report["state"] == "sent", report
            assert report["recipients"] == [MAIL_HOSTS[sender]["dmarc_address"]], report
        # Nothing was evaluated between the dry run and the report.
        assert source_of(reports, domain, address) == evidence
        flushed = host.run("estafeta queue flush")
        assert flushed.rc == 0, flushed.stderr
        sent[reporter] = {"evidence": evidence, "reports": reports}
    return sent


@pytest.mark.parametrize(("reporter", "receiver"), [(MX2, MX1), (MX1, MX2)])
def test_the_dmarc_report_of_the_day_reaches_the_other_host(  # type: ignore[no-untyped-def]
    hosts, dmarc_sent: dict[str, dict[str, Any]], reporter: str, receiver: str
) -> None:
    domain, address = MAIL_HOSTS[receiver]["domain"], MAIL_HOSTS[receiver]["address"]
    evidence = dmarc_sent[reporter]["evidence"]
    messages = evidence["messages"]
    # The reporter's MX saw this host's mail pass: aligned SPF and DKIM, DMARC.
    assert evidence["spf_aligned"] == evidence["dkim_aligned"] == evidence["dmarc"]
    assert evidence["dmarc"] == {"pass": messages, "fail": 0}
    assert evidence["disposition"] == {"none": messages, "quarantine": 0, "reject": 0}

    def arrived() -> Any:
        document = estafeta(hosts[receiver], "dmarc", "report", "--domain", domain)
        orgs = [o for o in document["organisations"] if o["org_name"] == reporter]
        return document if orgs else None

    document = wait_for(arrived, f"{reporter}'s report in {receiver}'s dmarc report")
    [org] = [o for o in document["organisations"] if o["org_name"] == reporter]
    assert (org["reports"], org["messages"]) == (len(dmarc_sent[reporter]["reports"]), messages)
    [source] = [s for s in document["sources"] if s["source_ip"] == address]
    assert source["organisations"] == [reporter]
    assert source["messages"] == messages
    for check in ("spf_aligned", "dkim_aligned", "dmarc"):
        assert source[check] == {"pass": messages, "fail": 0}, check
    assert source["disposition"] == evidence["disposition"]


# -- TLS-RPT (RFC 8460) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tlsrpt_sent(hosts, exchanged, dmarc_sent) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Each host sends the other domain the TLS report of the day: {reporting
    host: {"evidence": its session counts in a dry run, "entries": what
    `tlsrpt send` did about the other domain}}."""
    sent = {}
    for reporter, receiver in OTHER.items():
        host = hosts[reporter]
        domain = MAIL_HOSTS[receiver]["domain"]
        evidence = wait_for(
            functools.partial(tls_sessions, host, domain, exchanged[reporter]["tlsrpt"]),
            f"{reporter}: its TLS sessions to {domain}",
            60,
        )
        entries = [
            e for e in estafeta(host, "tlsrpt", "send", "--now", CLOCK) if e["domain"] == domain
        ]
        assert entries, f"{reporter} sent no TLS report to {domain}"
        for entry in entries:
            assert entry["result"] == "sent", entry
            # rfc8460:3 — the rua of _smtp._tls.<domain>, which dns_records publishes.
            assert [r["uri"] for r in entry["rua"]] == [f"mailto:postmaster@{domain}"], entry
            assert [r["result"] for r in entry["rua"]] == ["queued"], entry
        # What was reported covers what the dry run counted (sessions may
        # have been written between the two: a deferred message's retry).
        for key in ("successful", "failed"):
            assert sum(e[key] for e in entries) >= evidence[key], (key, entries, evidence)
        flushed = host.run("estafeta queue flush")
        assert flushed.rc == 0, flushed.stderr
        sent[reporter] = {"evidence": evidence, "entries": entries}
    return sent


@pytest.mark.parametrize(("reporter", "receiver"), [(MX1, MX2), (MX2, MX1)])
def test_the_tls_report_of_the_day_reaches_the_other_host(  # type: ignore[no-untyped-def]
    hosts, tlsrpt_sent: dict[str, dict[str, Any]], reporter: str, receiver: str
) -> None:
    domain = MAIL_HOSTS[receiver]["domain"]
    entries = tlsrpt_sent[reporter]["entries"]

    def arrived() -> Any:
        document = estafeta(hosts[receiver], "tlsrpt", "report", "--domain", domain)
        policies = [p for p in document["policies"] if p["org_name"] == reporter]
        return policies or None

    policies = wait_for(arrived, f"{reporter}'s TLS report in {receiver}'s tlsrpt report")
    # Every policy of the report is about this domain (rfc8460:4.4 policy-domain).
    assert {p["policy_domain"] for p in policies} == {domain}, policies
    # The report counted what the reporter sent: its sessions, no more, no fewer.
    for key in ("successful", "failed"):
        assert sum(p[key] for p in policies) == sum(e[key] for e in entries), (key, policies)
    assert {p["reports"] for p in policies} == {len(entries)}, policies
    # This test's sessions ran under the policy the domain publishes.
    [main] = [p for p in policies if p["policy_type"] == POLICY_TYPE[reporter]]
    assert main["successful"] >= MESSAGES, policies
    # What failed says why, by rfc8460:4.3 result type.
    for policy in policies:
        assert sum(policy["failures"].values()) == policy["failed"], policy


# -- a report from RFC 7489 appendix C, imported by hand ----------------------------------


def test_an_appendix_c_report_imports_as_zip_and_gzip(hosts) -> None:  # type: ignore[no-untyped-def]
    """The server tests' sample after RFC 7489 appendix C (4 records, 14
    messages; SPF aligned 9 pass / 5 fail, DKIM 11 / 3, DMARC 12 / 2;
    dispositions none 12, reject 2), dated yesterday, as a zip and as a
    gzip of its own report id, under a reporter name of this run."""
    mx1 = hosts[MX1]
    domain = MAIL_HOSTS[MX1]["domain"]
    org = f"Lab Receiver {uuid.uuid4().hex[:8]}"
    begin = int(time.time()) // 86_400 * 86_400 - 86_400
    forms = {
        "report.zip": zipped(sample(begin, begin + 86_399, f"{org}-zip", org)),
        "report.xml.gz": gzipped(sample(begin, begin + 86_399, f"{org}-gzip", org)),
    }
    directory = f"/tmp/dmarc-{uuid.uuid4().hex}"
    paths = []
    assert mx1.run(f"install -d -m 0755 {directory}").rc == 0
    try:
        for name, data in forms.items():
            path = f"{directory}/{name}"
            encoded = base64.b64encode(data).decode()
            written = mx1.run(f"echo {encoded} | base64 -d > {path} && chmod 0644 {path}")
            assert written.rc == 0, written.stderr
            paths.append(path)
        imported = estafeta(mx1, "dmarc", "import", *paths)
    finally:
        mx1.run(f"rm -rf {directory}")
    assert [(entry["result"], entry["records"], entry["messages"]) for entry in imported] == [
        ("accepted", 4, 14),
        ("accepted", 4, 14),
    ]
    document = estafeta(mx1, "dmarc", "report", "--domain", domain)
    [summary] = [o for o in document["organisations"] if o["org_name"] == org]
    assert (summary["reports"], summary["messages"]) == (2, 28)
    assert summary["spf_aligned"] == {"pass": 18, "fail": 10}
    assert summary["dkim_aligned"] == {"pass": 22, "fail": 6}
    assert summary["dmarc"] == {"pass": 24, "fail": 4}
    assert summary["disposition"] == {"none": 24, "quarantine": 0, "reject": 4}
    reported = {s["source_ip"] for s in document["sources"] if org in s["organisations"]}
    assert len(reported) == 4, document["sources"]
