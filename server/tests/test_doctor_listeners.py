"""estafeta doctor against real listeners: certificates, TLSA and MTA-STS over HTTPS.

A real estafeta serves every TLS listener (STARTTLS on smtp, submission,
imap, pop3 and managesieve; implicit TLS on submissions, imaps, pop3s and
https) with a test CA's certificate, and the MTA-STS policy from its policy
directory; DNS is a MockResolver. Certificates that expire, a listener
without TLS and a server that turns the doctor away are small asyncio
servers of the test's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from _mailnet import wait_port
from conftest import Instance, free_port, make_tls
from estafeta.config import load
from estafeta.dns import MockResolver
from estafeta.doctor import Context, Finding, Listener, context, run
from estafeta.doctor.mtasts import policy_id
from estafeta.web.site import MtaSts

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = pytest.mark.xdist_group("mailnet")

HOST = "mx.example.test"
DOMAIN = "example.test"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 604800\r\n"


class Server:
    def __init__(self, instance: Instance, ca: trustme.CA, leaf: x509.Certificate) -> None:
        self.instance = instance
        self.ca = ca
        self.leaf = leaf
        self.ca_file = instance.root / "ca.pem"
        self.policy_file = instance.root / "mta-sts" / f"{DOMAIN}.txt"

    @property
    def https_port(self) -> int:
        return self.instance.https_port

    def listeners(self) -> tuple[Listener, ...]:
        return context.listeners(load(self.instance.config))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("doctor")
    # The chain the server sends: the leaf and the CA (for DANE-TA).
    section, ca = make_tls(root, (HOST, f"mta-sts.{DOMAIN}", "127.0.0.1"), with_ca=True)
    (root / "mta-sts").mkdir()
    (root / "mta-sts" / f"{DOMAIN}.txt").write_text(POLICY, newline="")
    sieve_port = free_port()
    instance = Instance(
        root,
        free_port(),
        imap_port=free_port(),
        imaps_port=free_port(),
        pop3_port=free_port(),
        pop3s_port=free_port(),
        submission_port=free_port(),
        submissions_port=free_port(),
        https_port=free_port(),
        extra_config=section,
    )
    instance.write_config()
    text = instance.config.read_text()
    instance.config.write_text(
        text.replace("[listen]\n", f'[listen]\nmanagesieve = ["127.0.0.1:{sieve_port}"]\n', 1)
    )
    instance.start()
    wait_port("127.0.0.1", sieve_port)
    leaf = x509.load_pem_x509_certificate((root / "cert.pem").read_bytes())
    try:
        yield Server(instance, ca, leaf)
    finally:
        instance.kill()


def _ctx(server: Server, dns: MockResolver | None = None, **fields: Any) -> Context:
    values: dict[str, Any] = {
        "hostname": HOST,
        "domains": (DOMAIN,),
        "resolver": dns or MockResolver(),
        "addresses": (("127.0.0.1", "test"),),
        "listeners": server.listeners(),
        "tls": context.client_context([server.ca_file]),
        "mta_sts_port": server.https_port,
        "serves_mta_sts": True,
        "timeout": 5.0,
    }
    values.update(fields)
    return Context(**values)


def _findings(ctx: Context, *checks: str) -> list[Finding]:
    report = asyncio.run(run(ctx, only=checks))
    return [f for f in report.findings if f.check in checks]


def _one(ctx: Context, check: str) -> Finding:
    (found,) = _findings(ctx, check)
    return found


# -- certificates ---------------------------------------------------------------------


def test_every_listener_has_a_good_certificate(server: Server) -> None:
    found = _findings(_ctx(server), "certificate")
    assert sorted(f.subject.split()[0] for f in found) == [
        "https",
        "imap",
        "imaps",
        "managesieve",
        "pop3",
        "pop3s",
        "smtp",
        "submission",
        "submissions",
    ]
    for finding in found:
        assert finding.status == "ok", finding
        assert f"it names {HOST}; trusted, issued by " in finding.detail
        assert finding.detail.startswith("valid until ")


def test_untrusted_certificate_is_a_warning(server: Server) -> None:
    smtp = [x for x in server.listeners() if x.name == "smtp"]
    found = _one(_ctx(server, listeners=smtp, tls=ssl.create_default_context()), "certificate")
    assert found.status == "warn"
    assert "it is not trusted here: self-signed certificate in certificate chain" in found.detail
    assert "--ca-file" in found.fix


def test_certificate_other_than_the_file_warns(server: Server, tmp_path: Path) -> None:
    smtp = [x for x in server.listeners() if x.name == "smtp"]
    own = _one(
        _ctx(server, listeners=smtp, cert_file=server.instance.root / "cert.pem"), "certificate"
    )
    assert own.status == "ok"
    trustme.CA().issue_cert(HOST).cert_chain_pems[0].write_to_path(str(tmp_path / "new.pem"))
    found = _one(_ctx(server, listeners=smtp, cert_file=tmp_path / "new.pem"), "certificate")
    assert found.status == "warn"
    assert f"it is not the certificate in {tmp_path / 'new.pem'} (renewed, but not loaded?)" in (
        found.detail
    )
    assert "(SIGHUP)" in found.fix


def test_name_mismatch_fails(server: Server) -> None:
    imaps = [x for x in server.listeners() if x.name == "imaps"]
    found = _one(_ctx(server, listeners=imaps, hostname="mail.example.test"), "certificate")
    assert found.status == "fail"
    assert f"the certificate names {HOST}, mta-sts.{DOMAIN}, not mail.example.test" in found.detail
    # The mismatch says it all: no second complaint about trust.
    assert "not trusted" not in found.detail


def test_listener_behind_a_proxy_header(tmp_path: Path) -> None:
    section, _ = make_tls(tmp_path)
    instance = Instance(
        tmp_path,
        free_port(),
        https_port=free_port(),
        extra_config=section
        + '[web]\nproxy_protocol = ["127.0.0.0/8"]\nproxy_protocol_listeners = ["https"]\n',
    )
    instance.write_config()
    instance.start()
    try:
        (https,) = [x for x in context.listeners(load(instance.config)) if x.name == "https"]
        assert https.proxy_from
        ctx = Context(
            hostname=HOST,
            domains=(DOMAIN,),
            resolver=MockResolver(),
            listeners=(https,),
            tls=context.client_context([tmp_path / "ca.pem"]),
        )
        assert _one(ctx, "certificate").status == "ok"
        # Without the header the server waits for one: no TLS.
        ctx = Context(
            hostname=HOST,
            domains=(DOMAIN,),
            resolver=MockResolver(),
            listeners=(Listener("https", https.host, https.port, "tls"),),
            tls=context.client_context([tmp_path / "ca.pem"]),
            timeout=0.5,
        )
        assert _one(ctx, "certificate").status == "fail"
    finally:
        instance.kill()


# -- certificates of servers of the test's own -------------------------------------------


@contextlib.asynccontextmanager
async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    tls_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=tls_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)


def _check_on(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    mode: str,
    tls_context: ssl.SSLContext | None = None,
    **fields: Any,
) -> Finding:
    async def main() -> Finding:
        async with _serve(handler, tls_context) as port:
            ctx = Context(
                hostname=HOST,
                domains=(DOMAIN,),
                resolver=MockResolver(),
                listeners=(
                    Listener("smtp" if mode == "smtp" else "imaps", "127.0.0.1", port, mode),
                ),
                timeout=2.0,
                **fields,
            )
            report = await run(ctx, only=["certificate"])
            (found,) = [f for f in report.findings if f.check == "certificate"]
            return found

    return asyncio.run(main())


def _server_context(**dates: datetime.datetime) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate valid within ``dates``, and a client
    context trusting its CA."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, **dates)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


NOW = datetime.datetime.now(datetime.UTC)


def test_certificate_expiring_soon_warns() -> None:
    server, client = _server_context(not_after=NOW + datetime.timedelta(days=5))
    found = _check_on(_idle, "tls", server, tls=client)
    assert found.status == "warn"
    assert ", in 4.9 days" in found.detail or ", in 5.0 days" in found.detail
    assert "renew the certificate" in found.fix


def test_expired_certificate_fails() -> None:
    server, client = _server_context(
        not_before=NOW - datetime.timedelta(days=90), not_after=NOW - datetime.timedelta(days=1)
    )
    found = _check_on(_idle, "tls", server, tls=client)
    assert found.status == "fail"
    assert "the certificate expired on " in found.detail
    assert "not trusted" not in found.detail


def test_certificate_not_yet_valid_fails() -> None:
    server, client = _server_context(not_before=NOW + datetime.timedelta(days=2))
    found = _check_on(_idle, "tls", server, tls=client)
    assert found.status == "fail" and "is not valid before " in found.detail


async def _smtp_without_starttls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"220 mx.example.test ESMTP\r\n")
    await reader.readline()
    writer.write(b"250-mx.example.test\r\n250 PIPELINING\r\n")
    await writer.drain()
    await reader.read(1)


async def _smtp_refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"554 5.7.1 Service unavailable; client [127.0.0.1] listed by bl.test\r\n")
    await writer.drain()


def test_listener_without_starttls_fails() -> None:
    found = _check_on(_smtp_without_starttls, "smtp")
    assert (found.status, found.detail) == (
        "fail",
        f"no TLS on smtp 127.0.0.1:{found.subject.rsplit(':', 1)[1]}: "
        "the server does not offer STARTTLS",
    )


def test_server_turning_the_doctor_away_is_a_warning() -> None:
    found = _check_on(_smtp_refusing, "smtp")
    assert found.status == "warn"
    assert "greeting 554 5.7.1 Service unavailable" in found.detail


def test_nothing_listening_fails() -> None:
    port = free_port()
    ctx = Context(
        hostname=HOST,
        domains=(DOMAIN,),
        resolver=MockResolver(),
        listeners=(Listener("imaps", "127.0.0.1", port, "tls"),),
    )
    found = _one(ctx, "certificate")
    assert found.status == "fail" and "Connect call failed" in found.detail


# -- TLSA ---------------------------------------------------------------------------------


def _spki_sha256(cert: x509.Certificate) -> bytes:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _tlsa(server: Server, *records: tuple[int, int, int, bytes]) -> Finding:
    dns = MockResolver({(f"_25._tcp.{HOST}", "TLSA"): list(records)})
    return _one(_ctx(server, dns), "tlsa")


def test_tlsa_matching_the_live_certificate(server: Server) -> None:
    ee = (3, 1, 1, _spki_sha256(server.leaf))
    found = _tlsa(server, ee)
    assert found.status == "ok"
    assert found.detail.startswith("3 1 1 ") and "matches the certificate on smtp" in found.detail
    ca_der = x509.load_pem_x509_certificate(server.ca.cert_pem.bytes()).public_bytes(
        serialization.Encoding.DER
    )
    found = _tlsa(server, (2, 0, 1, hashlib.sha256(ca_der).digest()))
    assert found.status == "ok"
    leaf_der = server.leaf.public_bytes(serialization.Encoding.DER)
    assert _tlsa(server, (3, 0, 2, hashlib.sha512(leaf_der).digest())).status == "ok"
    # A rollover: the next key's record beside the current one.
    found = _tlsa(server, (3, 1, 1, b"\x01" * 32), ee)
    assert found.status == "ok" and "1 other record(s) match nothing (rollover)" in found.detail


def test_tlsa_not_matching_fails(server: Server) -> None:
    found = _tlsa(server, (3, 1, 1, b"\x01" * 32))
    assert found.status == "fail"
    assert "none of the 1 TLSA records matches the certificate on smtp" in found.detail
    assert f"TLSA 3 1 1 {_spki_sha256(server.leaf).hex()}" in found.fix
    # DANE-TA does not match the leaf itself (rfc7672:3.1.2).
    leaf_der = server.leaf.public_bytes(serialization.Encoding.DER)
    assert _tlsa(server, (2, 0, 0, leaf_der)).status == "fail"


def test_tlsa_pkix_usages_are_unusable(server: Server) -> None:
    found = _tlsa(server, (1, 1, 1, _spki_sha256(server.leaf)))
    assert found.status == "warn"
    assert "usage 1 records are unusable for SMTP (rfc7672:3.1.3)" in found.detail


def test_no_tlsa_is_fine(server: Server) -> None:
    assert _tlsa(server).status == "ok"


# -- MTA-STS over HTTPS ---------------------------------------------------------------------


def _mta_sts_dns(policy_text: str, mx: str = HOST) -> MockResolver:
    return MockResolver(
        {
            (f"_mta-sts.{DOMAIN}", "TXT"): [f"v=STSv1; id={policy_id(policy_text)}"],
            (f"mta-sts.{DOMAIN}", "A"): ["127.0.0.1"],
            (DOMAIN, "MX"): [(10, mx)],
        }
    )


def test_mta_sts_policy_served_and_published(server: Server) -> None:
    found = _one(_ctx(server, _mta_sts_dns(POLICY)), "mta-sts")
    assert found.status == "ok", found
    assert found.detail == (
        f"id={policy_id(POLICY)} is the id of the policy served at "
        f"https://mta-sts.{DOMAIN}/.well-known/mta-sts.txt; mode enforce; "
        f"every MX ({HOST}) matches the policy"
    )


def test_mta_sts_id_changed_without_the_file(server: Server) -> None:
    # An id the dns_records role made, but for another policy (the role's run
    # for another host, or a hand edit of the digits).
    other = policy_id(POLICY.replace("max_age: ", "max_age: 1"))
    dns = _mta_sts_dns(POLICY)
    dns.records[(f"_mta-sts.{DOMAIN}", "TXT")] = [f"v=STSv1; id={other}"]
    report = asyncio.run(run(_ctx(server, dns), only=["mta-sts", "certificate", "tlsa"]))
    assert [(f.check, f.subject) for f in report.findings if f.status == "fail"] == [
        ("mta-sts", DOMAIN)
    ]
    found = next(f for f in report.findings if f.check == "mta-sts")
    assert f"_mta-sts.{DOMAIN} publishes id={other}, but the policy served has the id " in (
        found.detail
    )
    assert f'publish "v=STSv1; id={policy_id(POLICY)}" at _mta-sts.{DOMAIN}' in found.fix


@pytest.mark.parametrize("hand_id", ["20270101000000", "1", "ABCDEF0123456789ABCD", "a" * 21])
def test_mta_sts_id_of_another_form_is_not_checked(server: Server, hand_id: str) -> None:
    """rfc8461:3.1 lets the id be any 1-32 letters and digits; only an id of the
    role's form (20 lowercase hex digits) can be tied to the policy: a
    hand-managed one is said to be unchecked, and never fails."""
    dns = _mta_sts_dns(POLICY)
    dns.records[(f"_mta-sts.{DOMAIN}", "TXT")] = [f"v=STSv1; id={hand_id}"]
    found = _one(_ctx(server, dns), "mta-sts")
    assert found.status == "ok", found
    assert found.detail.startswith(
        f"id={hand_id} is not in the form the dns_records role publishes (the first 20 hex "
        "digits of the SHA-1 of the policy), so it cannot be tied to the policy served; "
    )
    assert "mode enforce" in found.detail and not found.fix


def test_mta_sts_file_changed_without_the_id(server: Server) -> None:
    changed = POLICY.replace("mx: mx.example.test", "mx: mx.example.test\r\nmx: mx2.example.test")
    server.policy_file.write_text(changed, newline="")
    try:
        found = _one(_ctx(server, _mta_sts_dns(POLICY)), "mta-sts")
    finally:
        server.policy_file.write_text(POLICY, newline="")
    assert found.status == "fail"
    assert f"but the policy served has the id {policy_id(changed)}" in found.detail


def test_mta_sts_policy_without_a_file_is_the_servers_own(server: Server) -> None:
    # No policy file: the server serves one made from [mta_sts], whose id is
    # made the same way.
    server.policy_file.unlink()
    try:
        fallback = MtaSts().policy(HOST).decode("ascii")
        found = _one(_ctx(server, _mta_sts_dns(fallback)), "mta-sts")
    finally:
        server.policy_file.write_text(POLICY, newline="")
    assert found.status == "ok", found
    assert "mode testing" in found.detail


def test_mta_sts_mx_outside_the_policy(server: Server) -> None:
    found = _one(_ctx(server, _mta_sts_dns(POLICY, mx="mx9.example.test")), "mta-sts")
    assert found.status == "fail"
    assert "MX mx9.example.test not in the policy's mx (mx.example.test)" in found.detail
    assert "add mx: mx9.example.test to the policy" in found.fix


def test_mta_sts_policy_host_not_trusted(server: Server) -> None:
    ctx = _ctx(server, _mta_sts_dns(POLICY), tls=ssl.create_default_context())
    found = _one(ctx, "mta-sts")
    assert found.status == "fail"
    assert "certificate verify failed" in found.detail
