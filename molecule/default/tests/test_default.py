"""Verify the converged mail host from outside (and inside, through testinfra)."""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
import yaml
from cryptography import x509

HOST = "mx1.example.test"
ADDRESS = "198.51.100.10"
ROOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
HOST_VARS = yaml.safe_load((ROOT / "inventories/molecule/host_vars" / f"{HOST}.yml").read_text())
PASSWORD = HOST_VARS["molecule_password"]
ALICE, BOB = "alice@example.test", "bob@example.test"

testinfra_hosts = [f"ansible://{HOST}"]


def tls_context() -> ssl.SSLContext:
    # The scenario uses a self-signed certificate (tls__mode: self_signed):
    # check it is the host's, not that a CA signed it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_estafeta_runs_under_systemd(host) -> None:  # type: ignore[no-untyped-def]
    service = host.service("estafeta")
    assert service.is_running
    assert service.is_enabled
    # The server runs as its own unprivileged user.
    assert host.process.filter(user="estafeta")
    config = host.file("/etc/estafeta/estafeta.toml")
    assert config.exists and config.mode & 0o007 == 0


@pytest.mark.parametrize("port", [25, 587, 465, 143, 993, 110, 995])
def test_every_port_listens(host, port: int) -> None:  # type: ignore[no-untyped-def]
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening


@pytest.mark.parametrize("port", [465, 993, 995])
def test_implicit_tls_ports_present_our_certificate(port: int) -> None:
    with (
        socket.create_connection((ADDRESS, port), timeout=10) as raw,
        tls_context().wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        der = tls.getpeercert(binary_form=True)
        assert der

    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert HOST in names.get_values_for_type(x509.DNSName)


MAIL_PORTS = {25, 110, 143, 465, 587, 993, 995}


def input_chain(host) -> tuple[dict, list[dict]]:  # type: ignore[no-untyped-def]
    """The input chain of the estafeta table as nft's JSON: (chain, rules)."""
    listed = host.run("nft -j list chain inet estafeta input")
    assert listed.rc == 0, listed.stderr
    items = json.loads(listed.stdout)["nftables"]
    chains = [item["chain"] for item in items if "chain" in item]
    rules = [item["rule"] for item in items if "rule" in item]
    assert len(chains) == 1, items
    return chains[0], rules


def accepted_from_anywhere(rules: list[dict]) -> set[int]:
    """TCP ports that a rule accepts with no other condition than the port."""
    ports: set[int] = set()
    for rule in rules:
        expr = rule["expr"]
        if len(expr) != 2 or "accept" not in expr[1] or "match" not in expr[0]:
            continue
        match = expr[0]["match"]
        if match["left"] != {"payload": {"protocol": "tcp", "field": "dport"}}:
            continue
        right = match["right"]
        ports.update(right["set"] if isinstance(right, dict) else [right])
    return ports


def test_nftables_input_policy_drops_and_opens_only_mail_ports(host) -> None:  # type: ignore[no-untyped-def]
    chain, rules = input_chain(host)
    assert chain["hook"] == "input" and chain["policy"] == "drop", chain
    # Every mail port is open to the world, and nothing else is (SSH is
    # limited to firewall__ssh_allow, hence not "from anywhere").
    assert accepted_from_anywhere(rules) == MAIL_PORTS
    # No rule accepts everything (a bare "accept" or "tcp accept").
    for rule in rules:
        assert rule["expr"] != [{"accept": None}], rule


def test_a_listener_on_a_closed_port_is_unreachable_from_outside(host) -> None:  # type: ignore[no-untyped-def]
    host.run("systemctl stop probe8080 2>/dev/null; systemctl reset-failed probe8080 2>/dev/null")
    started = host.run("systemd-run --unit=probe8080 python3 -m http.server 8080")
    assert started.rc == 0, started.stderr
    try:
        deadline = time.monotonic() + 10
        while not host.socket("tcp://0.0.0.0:8080").is_listening:
            assert time.monotonic() < deadline, "the probe listener did not start"
            time.sleep(0.2)
        # Positive controls: the probe answers on the host itself, and this
        # controller reaches the host's SMTP port over the same path.
        local = "import socket; socket.create_connection(('127.0.0.1', 8080), 3).close()"
        assert host.run(f'python3 -c "{local}"').rc == 0
        socket.create_connection((ADDRESS, 25), timeout=10).close()
        # The firewall drops 8080: no answer at all (a refusal would come
        # from a reject rule, which we do not have either).
        with pytest.raises((TimeoutError, ConnectionRefusedError)):
            socket.create_connection((ADDRESS, 8080), timeout=3).close()
    finally:
        host.run("systemctl stop probe8080")


def send(subject: str) -> None:
    with smtplib.SMTP(ADDRESS, 587, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(ALICE, PASSWORD)
        client.sendmail(
            ALICE,
            [BOB],
            f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode(),
        )


def test_message_round_trips_smtp_to_imap() -> None:
    subject = f"imap {uuid.uuid4().hex}"
    send(subject)
    deadline = time.monotonic() + 30
    with imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=tls_context()) as client:
        client.login(BOB, PASSWORD)
        while time.monotonic() < deadline:
            client.select("INBOX")
            _, data = client.search(None, "SUBJECT", f'"{subject}"')
            if data[0]:
                return
            time.sleep(0.5)
    raise AssertionError("the message did not arrive over IMAP")


def test_message_round_trips_smtp_to_pop3() -> None:
    subject = f"pop3 {uuid.uuid4().hex}"
    send(subject)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        client = poplib.POP3_SSL(ADDRESS, 995, context=tls_context(), timeout=30)
        try:
            client.user(BOB)
            client.pass_(PASSWORD)
            count, _ = client.stat()
            for number in range(1, count + 1):
                lines = client.retr(number)[1]
                if f"Subject: {subject}".encode() in lines:
                    return
        finally:
            client.quit()
        time.sleep(0.5)
    raise AssertionError("the message did not arrive over POP3")


def test_shared_mailbox_from_the_inventory() -> None:
    """estafeta__host_shared_mailboxes made Shared/team with the address
    team@: mail to it lands there; alice (every right) and bob (lrs) each
    keep a \\Seen of their own; bob may neither post to it (rfc4314 "p")
    nor delete it ("x")."""
    subject = f"team {uuid.uuid4().hex}"
    with smtplib.SMTP(ADDRESS, 587, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(BOB, PASSWORD)
        client.mail(BOB)
        code, reply = client.rcpt("team@example.test")
        assert (code, reply[:5]) == (550, b"5.7.1"), reply
    with smtplib.SMTP(ADDRESS, 587, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(ALICE, PASSWORD)
        message = f"From: <{ALICE}>\r\nTo: <team@example.test>\r\nSubject: {subject}\r\n\r\nHi.\r\n"
        client.sendmail(ALICE, ["team@example.test"], message.encode())
    context = tls_context()
    with imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=context) as alice:
        alice.login(ALICE, PASSWORD)
        _, rights = alice.myrights("Shared/team")
        assert rights[0] is not None and b"lrswipkxtea" in rights[0], rights
        deadline = time.monotonic() + 30
        found: list[bytes | None] = [b""]
        while time.monotonic() < deadline:
            alice.select("Shared/team")
            _, found = alice.search(None, "SUBJECT", f'"{subject}"')
            if found[0]:
                break
            time.sleep(0.5)
        assert found[0], "the message to team@ did not arrive in Shared/team"
        alice.store(found[0].split()[0].decode(), "+FLAGS", r"(\Seen)")
    with imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=context) as bob:
        bob.login(BOB, PASSWORD)
        _, listed = bob.list("Shared/", "*")
        assert any(b"Shared/team" in line for line in listed if isinstance(line, bytes)), listed
        _, rights = bob.myrights("Shared/team")
        assert rights[0] is not None and rights[0].split()[-1].strip(b'"') == b"lrs", rights
        typ, _ = bob.select("Shared/team", readonly=True)
        assert typ == "OK"
        _, unseen = bob.search(None, "SUBJECT", f'"{subject}"', "UNSEEN")
        assert unseen[0], "bob's copy should be unseen: alice's \\Seen is hers"
        bob.close()
        typ, data = bob.delete("Shared/team")  # needs "x" (rfc4314:4)
        assert typ == "NO", data
