"""TLS defaults on every TLS port: SMTP STARTTLS, submission STARTTLS,
submissions, IMAP STARTTLS, imaps, POP3 STLS, pop3s.

- TLS 1.0 and 1.1 are refused (rfc8996), TLS 1.2 and 1.3 accepted;
- no weak suite can be negotiated on TLS 1.2: RC4, 3DES/DES/IDEA, NULL,
  EXPORT, anonymous, CBC (with SHA-1 or SHA-2), RSA key transport. Probed
  with hand-made ClientHellos that offer only those suites (OpenSSL 3 can
  no longer even offer RC4, 3DES or EXPORT) and, where the local OpenSSL
  can, with Python's ssl at SECLEVEL=0;
- Debian's testssl.sh (``testssl``) finds nothing HIGH or CRITICAL in its
  protocol, cipher category, forward secrecy and vulnerability checks. The
  seven runs start with this module and run alongside the other tests.
  Certificate checks (-S) are left out: the test CA's certificate is
  untrusted, valid for centuries and has no CRL or OCSP URL by design.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.security.conftest import (
    LISTENERS,
    PROTOCOL,
    Client,
    MailServer,
    make_tls,
    plain_before_tls,
    tls_client,
    unverified_context,
)

# testssl's -t argument for the STARTTLS listeners.
STARTTLS = {"smtp": "smtp", "submission": "smtp", "imap": "imap", "pop3": "pop3"}
# Protocols, cipher categories, vulnerabilities. (-f, forward secrecy, adds
# 8 s a run; the raw hellos below already show that no suite lacks it.)
TESTSSL_CHECKS = ["-p", "-s", "-U"]
# A run takes about 35 s alone, 80 s with all seven in parallel on 2 CPUs.
TESTSSL_TIMEOUT = 300
# testssl's own error exits (ERR_* in /usr/bin/testssl).
TESTSSL_ERRORS = range(242, 256)


# -- testssl.sh, started first and collected last ------------------------------------------


@dataclass
class ScanRun:
    listener: str
    process: subprocess.Popen[bytes]
    json_file: Path
    output: Path
    started: float

    def finish(self) -> tuple[int, str, float]:
        try:
            code = self.process.wait(timeout=TESTSSL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        return code, self.output.read_text(errors="replace"), time.monotonic() - self.started


@pytest.fixture(scope="module", autouse=True)
def testssl_runs(
    mail_server: MailServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ScanRun]]:
    """One testssl per TLS listener, all started now, in parallel."""
    binary = shutil.which("testssl") or shutil.which("testssl.sh")
    runs: dict[str, ScanRun] = {}
    if binary is None:
        yield runs
        return
    directory = tmp_path_factory.mktemp("testssl")
    env = {
        **os.environ,
        # Shorter waits for answers that do not come: the server is on loopback.
        "HEADER_MAXSLEEP": "2",
        "CCS_MAX_WAITSOCK": "2",
        "HEARTBLEED_MAX_WAITSOCK": "2",
    }
    for listener in LISTENERS:
        json_file = directory / f"{listener}.json"
        output = directory / f"{listener}.txt"
        command = [
            binary,
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--connect-timeout",
            "10",
            "--openssl-timeout",
            "10",
            "--jsonfile-pretty",
            str(json_file),
            "--severity",
            "HIGH",
            *TESTSSL_CHECKS,
        ]
        if listener in STARTTLS:
            command += ["-t", STARTTLS[listener]]
        command.append(f"127.0.0.1:{mail_server.port(listener)}")
        with output.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=directory, env=env
            )
        runs[listener] = ScanRun(listener, process, json_file, output, time.monotonic())
    try:
        yield runs
    finally:
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()
                run.process.wait()


# -- raw ClientHellos ------------------------------------------------------------------------

ALERT, HANDSHAKE = 21, 22
HANDSHAKE_FAILURE, PROTOCOL_VERSION = 40, 70
# What a refusal looks like. asyncio's TLS (sslproto) drops the connection
# when a server-side handshake fails without sending OpenSSL's alert: the
# client sees the connection close ("closed", UNEXPECTED_EOF) where a
# protocol_version or handshake_failure alert would be more helpful.
REFUSED = re.compile(r"ALERT_PROTOCOL_VERSION|ALERT_HANDSHAKE_FAILURE|UNEXPECTED_EOF|NO_SHARED")

# TLS 1.2 suites by family (IANA code points).
WEAK_SUITES: dict[str, list[int]] = {
    "null": [0x0001, 0x0002, 0x003B, 0xC001, 0xC006, 0xC00B, 0xC010, 0xC015],
    "anonymous": [0x0018, 0x001B, 0x0034, 0x003A, 0x006C, 0x006D, 0x00A6, 0x00A7, 0xC018, 0xC019],
    "export": [0x0003, 0x0006, 0x0008, 0x000B, 0x000E, 0x0011, 0x0014, 0x0017, 0x0019, 0x0062],
    "rc4": [0x0004, 0x0005, 0x0018, 0xC002, 0xC007, 0xC00C, 0xC011, 0xC016],
    "3des-des-idea": [0x000A, 0x0013, 0x0016, 0xC008, 0xC012, 0x0009, 0x0015, 0x0007],
    "cbc-sha1": [0x002F, 0x0035, 0x0033, 0x0039, 0xC009, 0xC00A, 0xC013, 0xC014, 0x0041, 0x0084],
    "cbc-sha2": [0x003C, 0x003D, 0x0067, 0x006B, 0xC023, 0xC024, 0xC027, 0xC028],
    "rsa-key-transport": [0x009C, 0x009D, 0xC09C, 0xC09D, 0x002F, 0x0035, 0x003C, 0x003D],
    "camellia-aria-sha2": [0x00BA, 0x00BE, 0xC072, 0xC076, 0xC05C, 0xC060],
}
# ECDHE with AES-GCM and ChaCha20, ECDSA and RSA certificates.
GOOD_SUITES = [0xC02B, 0xC02C, 0xC02F, 0xC030, 0xCCA8, 0xCCA9]


def _extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def _vector(items: Sequence[int]) -> bytes:
    data = b"".join(struct.pack("!H", item) for item in items)
    return struct.pack("!H", len(data)) + data


def client_hello(suites: Sequence[int], version: int = 0x0303) -> bytes:
    """A ClientHello record offering exactly ``suites`` (no TLS 1.3)."""
    name = b"mx.example.test"
    extensions = (
        _extension(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
        + _extension(10, _vector([0x001D, 0x0017, 0x0018, 0x0019, 0x0100, 0x0101]))
        + _extension(11, b"\x01\x00")
        + _extension(
            13,
            _vector([0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601]),
        )
        + _extension(0xFF01, b"\x00")
    )
    body = (
        struct.pack("!H", version)
        + os.urandom(32)
        + b"\x00"
        + _vector(suites)
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", HANDSHAKE, 0x0301, len(handshake)) + handshake


def _read_exact(client: Client, size: int) -> bytes:
    data = client.buffer
    client.buffer = b""
    while len(data) < size:
        chunk = client.sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@dataclass(frozen=True)
class Answer:
    kind: str  # "alert", "server_hello" or "closed"
    value: int = 0  # the alert description, or the suite the server chose


def probe(
    server: MailServer, listener: str, suites: Sequence[int], version: int = 0x0303
) -> Answer:
    """Offer ``suites`` on ``listener`` and read the server's first record."""
    with plain_before_tls(server, listener, source="127.0.0.1") as client:
        client.send(client_hello(suites, version))
        header = _read_exact(client, 5)
        if len(header) < 5:
            return Answer("closed")
        kind, _, length = struct.unpack("!BHH", header)
        payload = _read_exact(client, length)
        if kind == ALERT and len(payload) >= 2:
            return Answer("alert", payload[1])
        if kind == HANDSHAKE and payload[:1] == b"\x02":
            session_id = payload[38]
            (suite,) = struct.unpack("!H", payload[39 + session_id : 41 + session_id])
            return Answer("server_hello", suite)
        raise AssertionError(f"unexpected record {kind} {payload[:16]!r}")


@pytest.mark.parametrize("listener", LISTENERS)
def test_raw_hello_with_good_suites_is_answered(mail_server: MailServer, listener: str) -> None:
    """The probe itself works: strong suites get a ServerHello, and the
    server picks AEAD over CBC whatever the client's order (rfc9325:4.2.1)."""
    answer = probe(mail_server, listener, GOOD_SUITES)
    assert answer.kind == "server_hello" and answer.value in GOOD_SUITES, answer
    answer = probe(mail_server, listener, [0xC013, 0xC027, 0xC009, 0xC023, *GOOD_SUITES])
    assert answer.kind == "server_hello" and answer.value in GOOD_SUITES, answer


@pytest.mark.parametrize("family", WEAK_SUITES.keys())
def test_raw_hello_with_weak_suites_is_refused(mail_server: MailServer, family: str) -> None:
    for listener in LISTENERS:
        answer = probe(mail_server, listener, WEAK_SUITES[family])
        assert answer in (Answer("closed"), Answer("alert", HANDSHAKE_FAILURE)), (listener, answer)


@pytest.mark.parametrize("version", [0x0300, 0x0301, 0x0302], ids=["ssl3", "tls1.0", "tls1.1"])
def test_raw_hello_of_old_versions_is_refused(mail_server: MailServer, version: int) -> None:
    # Suites TLS 1.0 clients have: CBC with SHA-1, and the good ones.
    suites = [0xC013, 0xC014, 0xC009, 0xC00A, 0x002F, 0x0035, *GOOD_SUITES]
    for listener in LISTENERS:
        answer = probe(mail_server, listener, suites, version)
        assert answer in (Answer("closed"), Answer("alert", PROTOCOL_VERSION)), (listener, answer)


# -- Python's ssl ---------------------------------------------------------------------------


def legacy_context(version: ssl.TLSVersion, ciphers: str = "ALL") -> ssl.SSLContext:
    """A client that offers only ``version`` (SECLEVEL=0: OpenSSL 3 refuses
    TLS 1.0/1.1 and weak suites at the default level, on the client too)."""
    context = unverified_context()
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are
        context.minimum_version = version
        context.maximum_version = version
    return context


@pytest.fixture(scope="module")
def legacy_tls_possible(tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Can this machine's OpenSSL speak TLS 1.0 at all? A local server that
    allows it tells (if not, only the raw ClientHellos test old versions)."""
    directory = tmp_path_factory.mktemp("legacy")
    make_tls(directory)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    server_context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = ssl.TLSVersion.TLSv1
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError), listener:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server_context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            legacy_context(ssl.TLSVersion.TLSv1).wrap_socket(sock) as tls,
        ):
            return tls.version() == "TLSv1"
    except (ssl.SSLError, OSError):
        return False
    finally:
        thread.join(5)


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["tls1.0", "tls1.1"]
)
def test_old_versions_are_refused(
    mail_server: MailServer,
    legacy_tls_possible: bool,
    source: str,
    listener: str,
    version: ssl.TLSVersion,
) -> None:
    if not legacy_tls_possible:
        pytest.skip("the local OpenSSL cannot offer TLS 1.0/1.1 (the raw hellos test them)")
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        tls_client(mail_server, listener, legacy_context(version), source=source).close()
    # The server said no (our library sent its ClientHello: it can, see
    # legacy_tls_possible), by closing the connection or with an alert.
    assert REFUSED.search(str(refused.value)) or refused.type is ConnectionResetError


def _talk(client: Client, listener: str) -> None:
    """One command over the TLS session, to see that it works."""
    protocol = PROTOCOL[listener]
    if protocol == "smtp":
        assert client.smtp("EHLO client.example").startswith(b"250 ")
    elif protocol == "imap":
        assert client.imap("t", "NOOP")[1].startswith(b"t OK ")
    else:
        client.send(b"CAPA\r\n")
        assert client.line().startswith(b"+OK")


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_current_versions_are_accepted(
    mail_server: MailServer, source: str, listener: str, version: ssl.TLSVersion
) -> None:
    context = mail_server.verifying_context()  # the certificate checks out, too
    context.minimum_version = version
    context.maximum_version = version
    with tls_client(mail_server, listener, context, source=source) as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        cipher = client.sock.cipher()
        assert cipher is not None and re.search(r"GCM|CHACHA20", cipher[0]), cipher
        _talk(client, listener)


# Suites the local OpenSSL can still offer, by family (RC4, 3DES and EXPORT
# are compiled out of OpenSSL 3: only the raw hellos above can offer them).
OPENSSL_WEAK = {
    "null": "eNULL:NULL",
    "anonymous": "aNULL",
    "cbc-sha1": "SHA1",
    "cbc-sha2": ":".join(
        (
            "AES128-SHA256",
            "AES256-SHA256",
            "DHE-RSA-AES128-SHA256",
            "DHE-RSA-AES256-SHA256",
            "ECDHE-RSA-AES128-SHA256",
            "ECDHE-ECDSA-AES128-SHA256",
            "ECDHE-RSA-AES256-SHA384",
            "ECDHE-ECDSA-AES256-SHA384",
        )
    ),
    "rsa-key-transport": "kRSA",
    "camellia-aria": "CAMELLIA:ARIA",
}


@pytest.mark.parametrize("family", OPENSSL_WEAK.keys())
def test_weak_suites_cannot_be_negotiated(
    mail_server: MailServer, source: str, family: str
) -> None:
    context = legacy_context(ssl.TLSVersion.TLSv1_2, OPENSSL_WEAK[family])
    for listener in LISTENERS:
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
            tls_client(mail_server, listener, context, source=source).close()
        assert REFUSED.search(str(refused.value)) or refused.type is ConnectionResetError, (
            listener,
            refused.value,
        )


# -- testssl.sh ------------------------------------------------------------------------------


def _findings(report: dict[str, object]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    results = report.get("scanResult")
    assert isinstance(results, list) and results, report
    for result in results:
        for key, value in result.items():
            if isinstance(value, list):
                found += [{"section": key, **item} for item in value if isinstance(item, dict)]
    return found


@pytest.mark.parametrize("listener", LISTENERS)
def test_testssl_finds_nothing_high(
    testssl_runs: dict[str, ScanRun], mail_server: MailServer, listener: str
) -> None:
    assert testssl_runs, "testssl is not installed (make deps: Debian package testssl.sh)"
    code, output, seconds = testssl_runs[listener].finish()
    assert code not in TESTSSL_ERRORS, output
    # The scan did run: it saw the protocols and the suites.
    assert re.search(r"TLS 1\.2\s+offered", output), output
    assert re.search(r"TLS 1\s+not offered", output), output
    assert re.search(r"TLS 1\.1\s+not offered", output), output
    assert re.search(r"Strong encryption \(AEAD ciphers\)\s+offered", output), output
    report = json.loads(testssl_runs[listener].json_file.read_text())
    serious = [f for f in _findings(report) if f.get("severity") in ("HIGH", "CRITICAL", "FATAL")]
    assert serious == [], serious
    print(f"testssl {listener}: {seconds:.0f} s")  # shown with -s
