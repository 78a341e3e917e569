"""Verify the converged mail host from outside (and inside, through testinfra)."""

from __future__ import annotations

import imaplib
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


def test_nftables_loaded_and_closed_port_dropped(host) -> None:  # type: ignore[no-untyped-def]
    ruleset = host.run("nft list ruleset").stdout
    assert "policy drop" in ruleset
    assert "dport 993" in ruleset or "993" in ruleset
    # Nothing is allowed on 8080 even if something listened there.
    listener = host.run("systemd-run --unit=probe8080 python3 -m http.server 8080")
    try:
        time.sleep(1)
        with pytest.raises((TimeoutError, ConnectionRefusedError, OSError)):
            socket.create_connection((ADDRESS, 8080), timeout=3).close()
    finally:
        if listener.rc == 0:
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
