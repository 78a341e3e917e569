"""Verify the lab after site.yml: DNS published, certificates from pebble, mail crossing.

The controller talks to the hosts over the lab bridge like any client on the
internet would; testinfra runs commands inside the hosts where the check has
to be made from there (the firewall seen from mx1).
"""

from __future__ import annotations

import imaplib
import json
import re
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message

import dns.message
import dns.query
import dns.rdatatype
import pytest
from lab_hosts import LAB_DNS, LAB_NET, MAIL_HOSTS, PEBBLE_ROOT, lab_address

from conftest import playbook


def ask(name: str, rdtype: str) -> list[str]:
    """The records at NAME, straight from the lab's authoritative server."""
    query = dns.message.make_query(name, rdtype)
    response = dns.query.udp(query, LAB_DNS, timeout=5)
    wanted = dns.rdatatype.from_text(rdtype)
    return [
        rdata.to_text() if wanted != dns.rdatatype.TXT else b"".join(rdata.strings).decode()
        for rrset in response.answer
        if rrset.rdtype == wanted
        for rdata in rrset
    ]


def pebble_context() -> ssl.SSLContext:
    """Trust only pebble's current root: the certificates must come from ACME."""
    context = ssl.create_default_context(cafile=str(PEBBLE_ROOT))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@pytest.mark.parametrize("name", sorted(MAIL_HOSTS))
def test_dns_server_holds_the_pushed_records(hosts, name: str) -> None:  # type: ignore[no-untyped-def]
    info = MAIL_HOSTS[name]
    domain = info["domain"]
    assert ask(domain, "MX") == [f"10 {name}."]
    assert ask(name, "A") == [info["address"]]
    assert ask(domain, "TXT") == ["v=spf1 mx -all"]
    dmarc = ask(f"_dmarc.{domain}", "TXT")
    assert len(dmarc) == 1 and dmarc[0].startswith("v=DMARC1;") and "p=" in dmarc[0]
    # MTA-STS (issue 20): estafeta serves https://mta-sts.<domain>/, so the
    # policy is published, in enforce mode, and its name points at the host.
    sts = ask(f"_mta-sts.{domain}", "TXT")
    assert len(sts) == 1 and sts[0].startswith("v=STSv1; id=")
    assert ask(f"mta-sts.{domain}", "CNAME") == [f"{name}."]
    tlsrpt = ask(f"_smtp._tls.{domain}", "TXT")
    assert len(tlsrpt) == 1 and tlsrpt[0].startswith("v=TLSRPTv1; rua=")
    # rfc8314:5.1: implicit TLS is preferred (a lower priority) over STARTTLS.
    srv = {}
    for service, port in (("submissions", 465), ("submission", 587), ("imaps", 993), ("imap", 143)):
        records = [r.split() for r in ask(f"_{service}._tcp.{domain}", "SRV")]
        assert [(r[2], r[3]) for r in records] == [(str(port), f"{name}.")], service
        srv[service] = int(records[0][0])
    assert srv["submissions"] < srv["submission"] and srv["imaps"] < srv["imap"]
    reverse = ".".join(reversed(info["address"].split("."))) + ".in-addr.arpa"
    assert ask(reverse, "PTR") == [f"{name}."]
    # The DKIM record published is the key the server signs with.
    listed = json.loads(hosts[name].check_output(f"estafeta dkim list --json {domain}"))
    assert listed, f"no DKIM key on {name}"
    for key in listed:
        published = ask(f"{key['selector']}._domainkey.{domain}", "TXT")
        assert published == [key["txt"]]


def test_verify_playbook_reports_every_check_ok() -> None:
    """playbooks/verify.yml: mail_dns_check on both domains, mail both ways, and
    mail_deliverability's estafeta doctor on each host, all green."""
    result = playbook("verify.yml")
    for info in MAIL_HOSTS.values():
        assert f"DNS  {info['domain']}: ok" in result.stdout
    assert "FAILED" not in result.stdout
    # The summary's DOCTOR section: each host ok, with nothing failed or warned
    # (the summary ends with a debug message: JSON-escaped newlines).
    summary = result.stdout.replace("\\n", "\n")
    assert "DOCTOR (estafeta doctor on each mail host, by mail_deliverability)" in summary
    for name in MAIL_HOSTS:
        assert re.search(
            rf"^ *{re.escape(name)}: ok \(0 failed, 0 warnings, \d+ ok\)$", summary, re.M
        ), summary[summary.index("DOCTOR") :]


@pytest.mark.parametrize("name", sorted(MAIL_HOSTS))
def test_the_mta_sts_policy_is_served_in_enforce_mode(name: str) -> None:
    """The server's own https listener, with the certificate it got from
    pebble itself (tls__mode acme_builtin) for mta-sts.<domain>."""
    domain = MAIL_HOSTS[name]["domain"]
    host = f"mta-sts.{domain}"
    with (
        socket.create_connection((MAIL_HOSTS[name]["address"], 443), timeout=10) as raw,
        pebble_context().wrap_socket(raw, server_hostname=host) as tls,
    ):
        request = f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n"
        tls.sendall(f"{request}Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/plain" in head
    assert body == (
        f"version: STSv1\r\nmode: enforce\r\nmx: {name}\r\nmax_age: 604800\r\n".encode()
    )


@pytest.mark.parametrize("name", sorted(MAIL_HOSTS))
@pytest.mark.parametrize("port", [465, 993, 443])
def test_certificates_come_from_pebble(name: str, port: int) -> None:
    address = MAIL_HOSTS[name]["address"]
    with (
        socket.create_connection((address, port), timeout=10) as raw,
        pebble_context().wrap_socket(raw, server_hostname=name) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def send(sender: str, recipient: str, subject: str) -> None:
    info = MAIL_HOSTS[sender]
    with smtplib.SMTP(timeout=30) as client:
        client.connect(info["address"], 587)
        # Verify the certificate against the host name, not the address used.
        client._host = sender
        client.starttls(context=pebble_context())
        client.login(info["account"], info["password"])
        to = MAIL_HOSTS[recipient]["account"]
        body = (
            f"From: <{info['account']}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n"
            "Sent by the deliverability scenario.\r\n"
        )
        client.sendmail(info["account"], [to], body.encode())


class LabIMAP(imaplib.IMAP4_SSL):
    """IMAPS to an address, with the certificate checked against the host name."""

    def __init__(self, name: str, address: str) -> None:
        self.address = address
        super().__init__(name, 993, ssl_context=pebble_context(), timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def receive(recipient: str, subject: str, timeout: float = 120) -> Message:
    info = MAIL_HOSTS[recipient]
    deadline = time.monotonic() + timeout
    with LabIMAP(recipient, info["address"]) as client:
        client.login(info["account"], info["password"])
        while time.monotonic() < deadline:
            for folder in ("INBOX", "Junk"):
                client.select(folder, readonly=True)
                _, data = client.search(None, "SUBJECT", f'"{subject}"')
                if data[0]:
                    number = data[0].split()[-1]
                    _, parts = client.fetch(number, "(BODY.PEEK[])")
                    assert folder == "INBOX", f"the message went to {folder}"
                    return message_from_bytes(parts[0][1])  # type: ignore[index]
            time.sleep(1)
    raise AssertionError(f"{subject!r} did not reach {recipient} within {timeout:.0f} s")


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [("mx1.example.test", "mx2.example.net"), ("mx2.example.net", "mx1.example.test")],
)
def test_mail_crosses_with_spf_dkim_dmarc_pass(sender: str, recipient: str) -> None:
    subject = f"deliverability {uuid.uuid4().hex}"
    send(sender, recipient, subject)
    message = receive(recipient, subject)
    results = message.get_all("Authentication-Results") or []
    assert len(results) == 1, results
    result = " ".join(results[0].split())
    assert result.startswith(f"{recipient};")
    domain = MAIL_HOSTS[sender]["domain"]
    assert f"spf=pass smtp.mailfrom={domain}" in result
    assert f"dkim=pass header.d={domain}" in result
    assert f"dmarc=pass header.from={domain}" in result


def test_mx2_firewall_refuses_a_non_mail_port_from_mx1(hosts) -> None:  # type: ignore[no-untyped-def]
    mx1, mx2 = hosts["mx1.example.test"], hosts["mx2.example.net"]
    target = MAIL_HOSTS["mx2.example.net"]["address"]
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('{target}', int(sys.argv[1])), timeout=3).close()\n"
        "except OSError as e:\n"
        "    print(type(e).__name__); sys.exit(1)\n"
        "print('connected')\n"
    )
    mx2.run("systemctl stop probe8080 2>/dev/null; systemctl reset-failed probe8080 2>/dev/null")
    started = mx2.run("systemd-run --unit=probe8080 python3 -m http.server 8080")
    assert started.rc == 0, started.stderr
    try:
        deadline = time.monotonic() + 10
        while not mx2.socket("tcp://0.0.0.0:8080").is_listening:
            assert time.monotonic() < deadline, "the probe listener did not start on mx2"
            time.sleep(0.2)
        # Something listens on mx2:8080, and mx2 reaches it itself ...
        local = "import socket; socket.create_connection(('127.0.0.1', 8080), 3)"
        assert mx2.run(f'python3 -c "{local}"').rc == 0
        # ... mx1 reaches mx2's SMTP port over the same bridge ...
        assert mx1.run(f'python3 -c "{probe}" 25').stdout.strip() == "connected"
        # ... but the firewall stops mx1 at 8080.
        refused = mx1.run(f'python3 -c "{probe}" 8080')
        assert refused.rc == 1, refused.stdout
        assert refused.stdout.strip() in ("TimeoutError", "ConnectionRefusedError")
    finally:
        mx2.run("systemctl stop probe8080")


# The address the lab's test blocklist (dnsbl.test, on dns.lab) lists.
LISTED = lab_address(66)


@pytest.fixture
def listed_source() -> Iterator[str]:
    """LISTED on the controller's end of the lab bridge for one test: a
    client the mail hosts' connection screen must refuse."""
    bridge = LAB_NET["bridge"]
    subprocess.run(["ip", "addr", "add", f"{LISTED}/32", "dev", bridge], check=True)
    try:
        yield LISTED
    finally:
        subprocess.run(["ip", "addr", "del", f"{LISTED}/32", "dev", bridge], check=False)


@pytest.mark.parametrize("name", sorted(MAIL_HOSTS))
def test_a_listed_client_is_refused_at_connect(listed_source: str, name: str) -> None:
    """Issue 16, acceptance 1 in the lab: 554 5.7.1 naming the zone."""
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(MAIL_HOSTS[name]["address"], 25, timeout=30, source_address=(listed_source, 0))
    assert refused.value.smtp_code == 554
    text = refused.value.smtp_error.decode()
    assert text.startswith("5.7.1 ") and f"[{LISTED}]" in text and "dnsbl.test" in text
