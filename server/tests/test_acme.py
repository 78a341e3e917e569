"""ACME inside the server (issue 20 §2), against Debian's pebble.

pebble validates for real: HTTP-01 on a small asyncio HTTP responder that
answers from ``Challenges.http01_for_path``, TLS-ALPN-01 on a listener that
peeks the ClientHello (``peek_client_hello``) and answers with
``Challenges.context_for``, as the server's listeners do. Every name resolves
to 127.0.0.1 through pebble-challtestsrv. Renewal is driven by an injected
clock; ACME Renewal Information (rfc9773), which pebble 2.4 does not offer,
comes from a small HTTPS front that adds ``renewalInfo`` to pebble's
directory and answers it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import logging
import random
import socket
import ssl
import stat
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
from _acme import (
    HOST,
    NAMES,
    Clock,
    Installs,
    Responders,
    manager,
    run,
    running,
    settings,
    until,
)
from _pebble import Pebble
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store

from estafeta.acme import (
    AcmeSettings,
    CertificateManager,
    Challenges,
    ClientHelloError,
    client_hello,
    peek_client_hello,
)
from estafeta.acme.files import AcmeFiles
from estafeta.acme.hello import MAX_HELLO_BYTES, ClientHello
from estafeta.acme.pending import ID_PE_ACME_IDENTIFIER, make_alpn_context

LIFETIME = 157766400  # pebble 2.4's default validity, seconds


def verify_chain(chain: bytes, root_pem: bytes, names: tuple[str, ...]) -> x509.Certificate:
    """The chain verifies for each name against pebble's root."""
    certs = x509.load_pem_x509_certificates(chain)
    root = x509.load_pem_x509_certificate(root_pem)
    for name in names:
        verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(name))
        verifier.verify(certs[0], certs[1:])
    return certs[0]


def san(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value.get_values_for_type(x509.DNSName))


# -- issuance ---------------------------------------------------------------------------------


def test_http01_issuance(pebble: Pebble, tmp_path: Path) -> None:
    state = tmp_path / "data" / "acme"
    challenges, installs, clock = Challenges(), Installs(), Clock()
    acme = manager(pebble, state, challenges, installs, clock)

    async def main() -> None:
        async with Responders(challenges).serving(pebble) as responders, running(acme):
            await until(lambda: len(installs) == 1, pebble)
            assert responders.http_answers >= len(NAMES)
            assert responders.alpn_answers == 0
            await until(lambda: acme.status()["renew_at"] is not None, pebble)

    run(main)
    leaf = verify_chain(installs[0].chain, pebble.root_pem(), NAMES)
    assert san(leaf) == set(NAMES)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert installs[0].key_mode == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert {p.name for p in state.iterdir()} == {
        "account.key",
        "account.json",
        "fullchain.pem",
        "privkey.pem",
    }
    assert json.loads((state / "account.json").read_text())["directory"] == pebble.directory
    not_after = leaf.not_valid_after_utc.timestamp()
    assert acme.expiry() == dict.fromkeys(NAMES, not_after)
    status = acme.status()
    assert status["installed"] and status["issued"] == 1 and status["failures"] == 0
    assert status["renew_source"] == "lifetime"
    not_before = leaf.not_valid_before_utc.timestamp()
    assert status["renew_at"] == pytest.approx(not_before + (not_after - not_before) * 2 / 3)
    assert challenges.pending() == {"http-01": 0, "tls-alpn-01": 0}


def test_tls_alpn01_issuance(pebble: Pebble, tmp_path: Path) -> None:
    challenges, installs, clock = Challenges(), Installs(), Clock()
    acme = manager(
        pebble,
        tmp_path / "acme",
        challenges,
        installs,
        clock,
        challenge="tls-alpn-01",
        key_type="rsa-2048",
    )

    async def main() -> None:
        async with Responders(challenges).serving(pebble) as responders, running(acme):
            await until(lambda: len(installs) == 1, pebble)
            assert responders.alpn_answers >= len(NAMES)
            assert responders.http_answers == 0

    run(main)
    leaf = verify_chain(installs[0].chain, pebble.root_pem(), NAMES)
    assert san(leaf) == set(NAMES)
    public = leaf.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    assert installs[0].key_mode == 0o600
    assert challenges.pending() == {"http-01": 0, "tls-alpn-01": 0}


# -- renewal, restarts, changes, failures -----------------------------------------------------


def test_renews_on_its_own_when_the_time_comes(pebble: Pebble, tmp_path: Path) -> None:
    challenges, installs, clock = Challenges(), Installs(), Clock()
    acme = manager(pebble, tmp_path / "acme", challenges, installs, clock)

    async def main() -> None:
        async with Responders(challenges).serving(pebble), running(acme):
            await until(lambda: acme.status()["renew_at"] is not None, pebble)
            renew_at = acme.status()["renew_at"]
            clock.offset = renew_at - time.time() - 3600  # an hour early: nothing happens
            await asyncio.sleep(0.3)
            assert len(installs) == 1
            clock.offset = renew_at - time.time() + 1
            await until(lambda: len(installs) == 2, pebble)

    run(main)
    assert installs[0].fingerprint != installs[1].fingerprint
    assert installs[0].key != installs[1].key  # a new key for each certificate
    leaf = verify_chain(installs[1].chain, pebble.root_pem(), NAMES)
    assert san(leaf) == set(NAMES)
    assert acme.status()["issued"] == 2
    assert (tmp_path / "acme" / "fullchain.pem").read_bytes() == installs[1].chain


def test_restart_with_a_valid_certificate_does_not_reissue(pebble: Pebble, tmp_path: Path) -> None:
    state = tmp_path / "acme"
    challenges = Challenges()
    first, second = Installs(), Installs()

    async def main() -> None:
        async with Responders(challenges).serving(pebble):
            acme = manager(pebble, state, challenges, first, Clock())
            async with running(acme):
                await until(lambda: len(first) == 1, pebble)
            again = manager(pebble, state, challenges, second, Clock())
            async with running(again):
                await until(lambda: again.status()["renew_at"] is not None, pebble)
                await asyncio.sleep(0.2)
            assert again.status()["issued"] == 0
            assert again.expiry() == acme.expiry()

    run(main)
    assert [i.fingerprint for i in second] == [first[0].fingerprint]


def test_changed_names_get_a_new_certificate(pebble: Pebble, tmp_path: Path) -> None:
    state = tmp_path / "acme"
    challenges = Challenges()
    first, second = Installs(), Installs()
    fewer = (HOST,)

    async def main() -> None:
        async with Responders(challenges).serving(pebble):
            async with running(manager(pebble, state, challenges, first, Clock(), names=fewer)):
                await until(lambda: len(first) == 1, pebble)
            # Restarted with more names: the old certificate serves until the new one is there.
            again = manager(pebble, state, challenges, second, Clock())
            async with running(again):
                await until(lambda: len(second) == 2, pebble)
                assert set(again.expiry()) == set(NAMES)
                # A configuration reload with other names: a new certificate at once.
                again.update_settings(settings(pebble, names=(HOST, "autoconfig.example.test")))
                await until(lambda: len(second) == 3, pebble)
                assert set(again.expiry()) == {HOST, "autoconfig.example.test"}

    run(main)
    assert second[0].fingerprint == first[0].fingerprint
    root = pebble.root_pem()
    assert san(verify_chain(second[1].chain, root, NAMES)) == set(NAMES)
    assert san(verify_chain(second[2].chain, root, (HOST,))) == {
        HOST,
        "autoconfig.example.test",
    }


def test_unreachable_ca_retries_with_backoff_and_keeps_the_certificate(
    pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "acme"
    challenges, installs, clock = Challenges(), Installs(), Clock()
    acme = manager(pebble, state, challenges, installs, clock)

    async def main() -> None:
        async with Responders(challenges).serving(pebble), running(acme):
            await until(lambda: acme.status()["renew_at"] is not None, pebble)
            expiry = acme.expiry()
            pebble.stop()
            with caplog.at_level(logging.WARNING, logger="estafeta.acme"):
                clock.offset = acme.status()["renew_at"] - time.time() + 1
                await until(lambda: acme.status()["failures"] >= 5, None)
            status = acme.status()
            assert "ConnectionError" in status["last_error"]
            assert acme.expiry() == expiry
            assert status["installed"]

    run(main)
    delays = [
        r.estafeta_fields["retry_in"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "acme_failed"
    ]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert len(installs) == 1
    assert (state / "fullchain.pem").read_bytes() == installs[0].chain
    assert (state / "privkey.pem").read_bytes() == installs[0].key
    assert not (state / "fullchain.next.pem").exists()


def test_first_issuance_against_an_unreachable_ca_installs_nothing_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    installs = Installs()
    acme = CertificateManager(
        AcmeSettings(
            directory="https://127.0.0.1:9/dir", names=NAMES, retry_min=0.05, retry_max=0.1
        ),
        tmp_path / "acme",
        Challenges(),
        installs,
        check_interval=0.05,
    )

    async def main() -> None:
        with caplog.at_level(logging.WARNING, logger="estafeta.acme"):
            async with running(acme) as task:
                await until(lambda: acme.status()["failures"] >= 3, None)
                assert not task.done()

    run(main)
    assert installs == []
    assert acme.expiry() == {}


# -- ACME Renewal Information (rfc9773) --------------------------------------------------------


class AriFront:
    """pebble's directory plus ``renewalInfo``, over HTTPS; everything else
    in the directory still points at pebble."""

    def __init__(self, pebble: Pebble, root: Path, windows: list[tuple[float, float]]):
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.bundle = root / "bundle.pem"
        self.bundle.write_bytes(pebble.ca_file.read_bytes() + ca.cert_pem.bytes())
        self.asked: list[str] = []
        front = self
        pebble_context = ssl.create_default_context(cafile=str(pebble.ca_file))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/dir":
                    with urllib.request.urlopen(  # noqa: S310 (https only)
                        pebble.directory, context=pebble_context, timeout=5
                    ) as response:
                        directory = json.loads(response.read())
                    directory["renewalInfo"] = f"{front.url}/renewal-info"
                    self.reply(directory)
                elif self.path.startswith("/renewal-info/"):
                    # The first certificate asked about gets the first window, and so on.
                    cert_id = self.path.rsplit("/", 1)[1]
                    if cert_id not in front.asked:
                        front.asked.append(cert_id)
                    start, end = windows[min(front.asked.index(cert_id), len(windows) - 1)]
                    self.reply(
                        {"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}},
                        {"Retry-After": "21600"},
                    )
                else:
                    self.send_error(404)

            def reply(self, data: Any, headers: dict[str, str] | None = None) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def rfc3339(epoch: float) -> str:
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def ari_id(chain: bytes) -> str:
    """rfc9773:4.1: base64url(AKI keyIdentifier) "." base64url(serial DER INTEGER)."""
    leaf = x509.load_pem_x509_certificates(chain)[0]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = leaf.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big")

    def b64(data: bytes | None) -> str:
        return base64.urlsafe_b64encode(data or b"").decode().rstrip("=")

    return f"{b64(aki.key_identifier)}.{b64(serial_der)}"


def test_renewal_information_window_is_honoured(pebble: Pebble, tmp_path: Path) -> None:
    now = float(int(time.time()))  # whole seconds, as the front sends them
    window = (now + 1000, now + 1010)
    front = AriFront(pebble, tmp_path, [window, (now + 10**7, now + 10**7 + 10)])
    challenges, installs, clock = Challenges(), Installs(), Clock()
    acme = manager(
        pebble,
        tmp_path / "acme",
        challenges,
        installs,
        clock,
        directory=f"{front.url}/dir",
        ca_bundle=front.bundle,
    )

    async def main() -> None:
        async with Responders(challenges).serving(pebble), running(acme):
            await until(lambda: acme.status()["renew_source"] == "renewal_info", pebble)
            # A random time in the window (rfc9773:4.2), not two thirds of five years.
            assert window[0] <= acme.status()["renew_at"] <= window[1]
            assert len(installs) == 1
            clock.offset = 1011
            await until(lambda: len(installs) == 2, pebble)
            await until(lambda: acme.status()["renew_at"] >= now + 10**7, pebble)

    try:
        run(main)
    finally:
        front.close()
    assert front.asked == [ari_id(installs[0].chain), ari_id(installs[1].chain)]
    assert acme.status()["issued"] == 2


# -- crash ordering of the files ----------------------------------------------------------------


def test_a_crash_between_the_renames_is_rolled_forward(tmp_path: Path) -> None:
    ca = trustme.CA()
    files = AcmeFiles(tmp_path / "acme")
    files.prepare()
    old = ca.issue_cert(HOST)
    (files.directory / "fullchain.pem").write_bytes(old.cert_chain_pems[0].bytes())
    (files.directory / "privkey.pem").write_bytes(old.private_key_pem.bytes())
    assert files.load_current() is not None
    new = ca.issue_cert(HOST, "mta-sts.example.test")
    # Crash after privkey.next.pem was renamed, before fullchain.next.pem was.
    (files.directory / "privkey.pem").write_bytes(new.private_key_pem.bytes())
    (files.directory / "fullchain.next.pem").write_bytes(new.cert_chain_pems[0].bytes())
    current = files.load_current()
    assert current is not None and current.names == {HOST, "mta-sts.example.test"}
    assert not (files.directory / "fullchain.next.pem").exists()
    # An unfinished issuance (a staged key, no chain) leaves the pair alone.
    files.stage_key(ca.issue_cert(HOST).private_key_pem.bytes())
    again = files.load_current()
    assert again is not None and again.fingerprint == current.fingerprint
    assert not (files.directory / "privkey.next.pem").exists()


# -- the challenges' state ---------------------------------------------------------------------


def test_http01_tokens_outside_base64url_get_nothing() -> None:
    challenges = Challenges()
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    challenges.add_http01(token, f"{token}.thumbprint")
    assert challenges.http01_response(token) == f"{token}.thumbprint"
    assert challenges.http01_for_path(f"/.well-known/acme-challenge/{token}") == (
        f"{token}.thumbprint"
    )
    for bad in [
        "",
        "../" + token,
        token + "/",
        token + "=",
        token + " ",
        token + "\n",
        token + "%2F",
        "é" + token,
        "a" * 257,
        token.replace("-", "+"),
    ]:
        assert challenges.http01_response(bad) is None, bad
        with pytest.raises(ValueError):
            challenges.add_http01(bad, "x")
    assert challenges.http01_for_path(f"/.well-known/acme-challenge/{token}/x") is None
    assert challenges.http01_for_path(f"/{token}") is None
    assert challenges.http01_response("a" * 256) is None  # well-formed, unknown
    challenges.remove_http01(token)
    assert challenges.http01_response(token) is None


def test_settings_are_checked() -> None:
    ok = AcmeSettings(
        directory="https://ca.test/dir", names=("MX.Example.Test.", "mx.example.test")
    )
    assert ok.names == ("mx.example.test",)
    cases: list[dict[str, Any]] = [
        {"names": ("*.example.test",)},
        {"names": ()},
        {"names": ("-bad.example.test",)},
        {"names": ("localhost",)},
        {"challenge": "dns-01"},
        {"key_type": "ed25519"},
        {"renew_fraction": 1.5},
        {"retry_min": 10, "retry_max": 5},
        {"directory": "ftp://ca.test/dir"},
        {"email": "a@b.test, c@d.test"},
    ]
    for bad in cases:
        values: dict[str, Any] = {"directory": "https://ca.test/dir", "names": (HOST,)}
        values.update(bad)
        with pytest.raises(ValueError):
            AcmeSettings(**values)


def alpn_handshake(
    context: ssl.SSLContext, name: str, protocols: list[str]
) -> tuple[str | None, x509.Certificate]:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.set_alpn_protocols(protocols)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = c.getpeercert(binary_form=True)
    assert der is not None
    return c.selected_alpn_protocol(), x509.load_der_x509_certificate(der)


def test_alpn_context_presents_the_acme_identifier() -> None:
    key_authorization = "token.thumbprint"
    context = make_alpn_context(HOST, key_authorization)
    challenges = Challenges()
    challenges.add_tls_alpn01(HOST, context)
    assert challenges.alpn_context("MX.example.test") is context
    assert challenges.alpn_context("other.example.test") is None
    assert challenges.context_for(ClientHello(HOST, (b"acme-tls/1",))) is context
    assert challenges.context_for(ClientHello(HOST, (b"h2", b"acme-tls/1"))) is None
    assert challenges.context_for(ClientHello(HOST, None)) is None
    assert challenges.context_for(ClientHello(None, (b"acme-tls/1",))) is None
    protocol, cert = alpn_handshake(context, HOST, ["acme-tls/1"])
    assert protocol == "acme-tls/1"
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    digest = hashlib.sha256(key_authorization.encode()).digest()
    assert ext.value.value == b"\x04\x20" + digest  # type: ignore[attr-defined]
    assert san(cert) == {HOST}
    challenges.remove_tls_alpn01(HOST)
    assert challenges.alpn_context(HOST) is None


# -- the ClientHello parser ------------------------------------------------------------------


def real_hello(
    name: str | None, protocols: list[str] | None, maximum: ssl.TLSVersion | None = None
) -> bytes:
    """The first flight of a real ``ssl`` client handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if protocols is not None:
        context.set_alpn_protocols(protocols)
    if maximum is not None:
        context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def refragment(data: bytes, size: int) -> bytes:
    """The same handshake message in records of ``size`` bytes."""
    length = int.from_bytes(data[3:5], "big")
    payload = data[5 : 5 + length]
    return b"".join(
        data[:3] + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (payload[i : i + size] for i in range(0, len(payload), size))
    )


CASES = [
    ("mx.example.test", ["acme-tls/1"], None),
    ("MTA-STS.example.test", ["h2", "http/1.1"], None),
    ("mx.example.test", ["acme-tls/1"], ssl.TLSVersion.TLSv1_2),
    (None, ["acme-tls/1"], None),
    ("mx.example.test", None, None),
]


@pytest.mark.parametrize(("name", "protocols", "maximum"), CASES)
def test_client_hello_from_real_handshakes(
    name: str | None, protocols: list[str] | None, maximum: ssl.TLSVersion | None
) -> None:
    data = real_hello(name, protocols, maximum)
    expected = ClientHello(
        name.lower() if name else None,
        tuple(p.encode() for p in protocols) if protocols is not None else None,
    )
    assert client_hello(data) == expected
    assert client_hello(data + b"\x17\x03\x03 trailing records") == expected
    for end in range(len(data)):
        assert client_hello(data[:end]) is None, end
    for size in (1, 7, 100):
        split = refragment(data, size)
        assert client_hello(split) == expected
        assert all(client_hello(split[:end]) is None for end in range(0, len(split), 13))


def test_peek_client_hello_leaves_the_bytes_for_the_handshake() -> None:
    data = real_hello(HOST, ["acme-tls/1"])

    async def main() -> None:
        left, right = socket.socketpair()
        left.setblocking(False)
        with left, right:
            right.sendall(data[:10])
            task = asyncio.create_task(peek_client_hello(left))
            await asyncio.sleep(0.05)
            assert not task.done()
            right.sendall(data[10:])
            async with asyncio.timeout(5):
                assert await task == ClientHello(HOST, (b"acme-tls/1",))
            assert left.recv(len(data) + 10) == data
            right.close()
            async with asyncio.timeout(5):
                assert await peek_client_hello(left) is None

    asyncio.run(main())


def test_client_hello_rejects_what_is_not_one() -> None:
    data = real_hello(HOST, ["acme-tls/1"])
    for bad in [
        b"GET / HTTP/1.1\r\n",
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert record
        b"\x16\x02\x00",  # SSL 2 version byte
        b"\x16\x03\x01\x00\x00",  # an empty handshake record
        b"\x16\x03\x01\x40\x01" + bytes(16385),  # a record over 2^14
        data[:5] + b"\x02" + data[6:],  # a ServerHello type
    ]:
        with pytest.raises(ClientHelloError):
            client_hello(bad)
    with pytest.raises(ClientHelloError, match="too long"):
        # A hello longer than we look at: refused from its length alone.
        client_hello(b"\x16\x03\x01\x00\x04\x01\x00\xff\xff")
    with pytest.raises(ClientHelloError, match="too long"):
        # One that fits the bound by its length but comes in 1-byte records.
        handshake = b"\x01\x00\x7f\x00" + bytes(0x7F00)
        tiny = b"".join(b"\x16\x03\x01\x00\x01" + bytes([byte]) for byte in handshake)
        client_hello(tiny[:MAX_HELLO_BYTES])


def test_client_hello_with_a_duplicate_extension_is_refused() -> None:
    alpn = b"\x00\x10\x00\x0d\x00\x0b\x0aacme-tls/1"
    extensions = alpn + alpn
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake
    with pytest.raises(ClientHelloError, match="twice"):
        client_hello(record)
    single = record.replace(alpn + alpn, alpn)
    fixed = bytearray(single)
    # Lengths shrink by len(alpn): record, handshake, extensions.
    fixed[3:5] = (len(handshake) - len(alpn)).to_bytes(2, "big")
    fixed[6:9] = (len(body) - len(alpn)).to_bytes(3, "big")
    fixed[9 + 2 + 32 + 1 + 4 + 2 : 9 + 2 + 32 + 1 + 4 + 4] = len(alpn).to_bytes(2, "big")
    assert client_hello(bytes(fixed)) == ClientHello(None, (b"acme-tls/1",))


def test_client_hello_fuzzed() -> None:
    """Mutated, truncated and random input: a ClientHello, None or
    ClientHelloError, never anything else."""
    rng = random.Random(20)
    seeds = [real_hello(name, protocols, maximum) for name, protocols, maximum in CASES]
    outcomes = {"hello": 0, "none": 0, "error": 0}
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            pos = rng.randrange(len(data))
            if choice < 0.5:
                data[pos] = rng.randrange(256)
            elif choice < 0.7:
                del data[pos : pos + rng.randint(1, 20)]
            elif choice < 0.85:
                data[pos:pos] = rng.randbytes(rng.randint(1, 20))
            else:
                data = data[:pos]
            if not data:
                data = bytearray(b"\x16")
        try:
            result = client_hello(bytes(data))
        except ClientHelloError:
            outcomes["error"] += 1
        else:
            outcomes["none" if result is None else "hello"] += 1
            if result is not None:
                assert result.server_name is None or result.server_name.isascii()
    for _ in range(500):
        with contextlib.suppress(ClientHelloError):
            client_hello(rng.randbytes(rng.randint(0, 600)))
    assert all(outcomes.values()), outcomes
