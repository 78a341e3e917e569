"""[acme] in a real estafeta: certificates from Debian's pebble, renewed by
the server on its own, swapped into the listeners without a restart.

pebble issues certificates valid for VALIDITY seconds, so the renewal (at
two thirds of the lifetime) happens within the test. An IMAP connection
opened on the first certificate stays open and working across the renewal,
while new connections get the new certificate (issue 20, acceptance 3).
"""

from __future__ import annotations

import http.client
import imaplib
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _acme import peer_certificate
from _pebble import Pebble
from cryptography import x509

from conftest import PASSWORD, Instance, free_port, make_tls

VALIDITY = 24  # seconds: renewal after 16


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    server = Pebble.start(tmp_path / "pebble", validity=VALIDITY)
    yield server
    server.stop()


@pytest.fixture
def acme_server(tmp_path: Path, pebble: Pebble) -> Iterator[Instance]:
    root = tmp_path / "estafeta"
    root.mkdir()
    # pebble validates HTTP-01 on its http_port: our [listen] http there.
    instance = Instance(
        root,
        free_port(),
        imaps_port=free_port(),
        http_port=pebble.http_port,
        https_port=free_port(),
        extra_config=(
            "[acme]\n"
            f'directory = "{pebble.directory}"\n'
            f'ca_bundle = "{pebble.ca_file}"\n'
            'email = "postmaster@example.test"\n'
            'retry_min = "2s"\n'
            "reuse_key = true\n"
        ),
    )
    instance.write_config()
    instance.add_user("ann@example.test")
    instance.start()
    yield instance
    instance.stop()


def certificate_when(
    port: int, accept: Callable[[x509.Certificate], bool], timeout: float, what: str
) -> x509.Certificate:
    """The certificate new connections on ``port`` get, once ``accept`` takes it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cert = peer_certificate(port)
        if accept(cert):
            return cert
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def issued(cert: x509.Certificate) -> bool:
    return cert.issuer != cert.subject  # the placeholder is self-signed


def test_the_server_obtains_renews_and_swaps_its_certificate(
    acme_server: Instance, pebble: Pebble, tmp_path: Path
) -> None:
    first = certificate_when(acme_server.imaps_port, issued, 60, "the first certificate")
    names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) >= {
        "mx.example.test",
        "mta-sts.example.test",
        "autoconfig.other.test",
        "autodiscover.example.test",
    }
    assert peer_certificate(acme_server.https_port).serial_number == first.serial_number
    key = acme_server.data_dir / "acme" / "privkey.pem"
    assert key.stat().st_mode & 0o777 == 0o600

    # A client that trusts pebble's root verifies the MTA-STS host by name.
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    trusting = ssl.create_default_context(cafile=str(root))
    https = http.client.HTTPSConnection(
        "mta-sts.example.test", acme_server.https_port, context=trusting
    )
    https.sock = trusting.wrap_socket(
        socket.create_connection(("127.0.0.1", acme_server.https_port), timeout=10),
        server_hostname="mta-sts.example.test",
    )
    https.request("GET", "/.well-known/mta-sts.txt")
    policy = https.getresponse()
    assert policy.status == 200 and policy.read().startswith(b"version: STSv1\r\n")
    https.close()

    # An IMAP session on the first certificate, across the renewal.
    context = ssl.create_default_context(cafile=str(root))
    context.check_hostname = False
    imap = imaplib.IMAP4_SSL("127.0.0.1", acme_server.imaps_port, ssl_context=context)
    imap.login("ann@example.test", PASSWORD)
    old_serial = x509.load_der_x509_certificate(
        imap.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    ).serial_number
    assert old_serial == first.serial_number

    renewed = certificate_when(
        acme_server.imaps_port,
        lambda cert: cert.serial_number != old_serial,
        VALIDITY + 30,
        "the renewed certificate",
    )
    assert issued(renewed)
    # reuse_key: the same key, so DANE 3 1 1 records stay true.
    assert renewed.public_key() == first.public_key()
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert peer_certificate(acme_server.https_port).serial_number == renewed.serial_number
    # The old session goes on, on its own certificate.
    assert imap.noop()[0] == "OK"
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()

    log = acme_server.log_text()
    assert log.count("acme_issued") >= 2
    assert "BEGIN" not in log  # no key material in the log
    metrics = http.client.HTTPConnection("127.0.0.1", acme_server.http_port)
    metrics.request("GET", "/metrics")
    body = metrics.getresponse().read().decode()
    metrics.close()
    assert 'estafeta_certificate_expiry_timestamp_seconds{name="mta-sts.example.test"}' in body


def test_sighup_reads_the_tls_files_again(tmp_path: Path) -> None:
    """Without [acme]: a certificate renewed on disk (tls role, certbot) is
    used after `systemctl reload` (SIGHUP); a broken pair is refused and
    the certificate in use stays."""
    tls_section, ca = make_tls(tmp_path)
    instance = Instance(tmp_path, free_port(), imaps_port=free_port(), extra_config=tls_section)
    instance.write_config()
    instance.start()
    try:
        first = peer_certificate(instance.imaps_port)
        renewed = ca.issue_cert("mx.example.test")
        renewed.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        renewed.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        assert instance.process is not None
        instance.process.send_signal(signal.SIGHUP)
        second = certificate_when(
            instance.imaps_port,
            lambda cert: cert.serial_number != first.serial_number,
            10,
            "the reloaded certificate",
        )
        # A key that does not belong to the certificate: refused, logged.
        ca.issue_cert("mx.example.test").private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        instance.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload_failed" not in instance.log_text():
            assert time.monotonic() < deadline, instance.log_text()
            time.sleep(0.1)
        assert peer_certificate(instance.imaps_port).serial_number == second.serial_number
    finally:
        instance.stop()
