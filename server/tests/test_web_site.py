"""estafeta.web.site: the routes, called directly, then over real sockets.

The second half starts a real estafeta with ``[listen] http`` and ``https``
and asks it with Python's http.client over TLS, as a browser, Thunderbird
or a sending MTA would.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Instance, free_port, make_tls
from estafeta.config import Endpoint
from estafeta.web.clientconfig import ClientSettings
from estafeta.web.connection import Request, Response
from estafeta.web.site import MtaSts, Site, SiteSettings

LISTEN = {
    "imaps": (Endpoint("0.0.0.0", 993),),
    "submissions": (Endpoint("0.0.0.0", 465),),
    "submission": (Endpoint("0.0.0.0", 587),),
}


def site(tmp_path: Path, **overrides: object) -> Site:
    settings = SiteSettings(
        hostname="mx.example.test",
        domains=("example.test", "other.test"),
        client=ClientSettings.from_listen("mx.example.test", LISTEN),
        policy_dir=tmp_path,
        mta_sts=MtaSts("enforce", 86400, ("mx.example.test", "*.example.test")),
        metrics_networks=(ipaddress.ip_network("10.0.0.0/8"),),
        metrics_token="s3cret-token",
        https=True,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return Site(
        settings,
        health=lambda: None,
        acme_http01=lambda token: "tok.thumb" if token == "tok" else None,
    )


def ask(
    handler: object,
    path: str,
    host: str = "mx.example.test",
    method: str = "GET",
    remote: str = "192.0.2.7",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> Response:
    request = Request(method, path, [("host", host), *headers], body=body, remote=remote)
    return asyncio.run(handler(request))  # type: ignore[operator]


def test_mta_sts_policy_from_the_file_or_the_config(tmp_path: Path) -> None:
    s = site(tmp_path)
    made = ask(s.https, "/.well-known/mta-sts.txt", "mta-sts.other.test")
    assert made.status == 200
    assert made.body == (
        b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\n"
        b"mx: *.example.test\r\nmax_age: 86400\r\n"
    )
    assert made.max_age is not None  # cacheable: ETag and 304
    (tmp_path / "example.test.txt").write_bytes(b"version: STSv1\r\nmode: testing\r\n")
    filed = ask(s.https, "/.well-known/mta-sts.txt", "MTA-STS.Example.Test:443")
    assert filed.body.startswith(b"version: STSv1\r\nmode: testing")
    for host in ("mta-sts.nobody.test", "mx.example.test", "mta-sts.../../etc/passwd"):
        assert ask(s.https, "/.well-known/mta-sts.txt", host).status == 404
    assert ask(s.https, "/.well-known/mta-sts.txt", "mta-sts.example.test", "POST").status == 405


def test_metrics_only_for_the_networks_or_the_token(tmp_path: Path) -> None:
    s = site(tmp_path)
    assert ask(s.https, "/metrics", remote="192.0.2.7").status == 403
    assert ask(s.https, "/metrics", remote="10.1.2.3").status == 200
    assert ask(s.https, "/metrics", remote="::ffff:10.1.2.3").status == 200
    good = (("authorization", "Bearer s3cret-token"),)
    bad = (("authorization", "Bearer s3cret-tokeN"),)
    assert ask(s.https, "/metrics", headers=good).status == 200
    assert ask(s.https, "/metrics", headers=bad).status == 403
    assert b"estafeta_" in ask(s.https, "/metrics", headers=good).body


def test_http_redirects_to_our_names_only_and_answers_acme(tmp_path: Path) -> None:
    s = site(tmp_path)
    moved = ask(s.http, "/x?y=1", "autoconfig.example.test")
    assert moved.status == 301
    assert ("Location", "https://autoconfig.example.test/x?y=1") in moved.headers
    foreign = ask(s.http, "/", "evil.test")
    assert ("Location", "https://mx.example.test/") in foreign.headers
    assert ask(s.http, "/", method="POST").status == 405
    challenge = ask(s.http, "/.well-known/acme-challenge/tok")
    assert (challenge.status, challenge.body) == (200, b"tok.thumb")
    assert ask(s.http, "/.well-known/acme-challenge/other").status == 404
    assert ask(s.http, "/.well-known/acme-challenge/a%2F..%2Fb").status == 404
    assert ask(s.http, "/healthz").status == 200  # not redirected: for probes
    without_https = site(tmp_path, https=False)
    assert ask(without_https.http, "/.well-known/mta-sts.txt", "mta-sts.example.test").status == 200


def test_autoconfig_for_our_domains(tmp_path: Path) -> None:
    s = site(tmp_path)
    answer = ask(s.https, "/mail/config-v1.1.xml?emailaddress=ann%40other.test", "autoconfig.x")
    assert answer.status == 200 and answer.content_type.startswith("text/xml")
    root = ET.fromstring(answer.body)  # noqa: S314 — our own answer
    assert root.find("emailProvider").get("id") == "other.test"  # type: ignore[union-attr]
    wellknown = ask(s.https, "/.well-known/autoconfig/mail/config-v1.1.xml", "example.test")
    assert wellknown.status == 200
    assert ask(s.https, "/mail/config-v1.1.xml", "autoconfig.nobody.test").status == 404
    assert ask(s.https, "/mail/config-v1.1.xml?emailaddress=a%40nobody.test").status == 404


# -- a real server ---------------------------------------------------------


@pytest.fixture
def web(tmp_path: Path) -> Instance:
    tls_section, ca = make_tls(tmp_path)
    instance = Instance(
        tmp_path,
        free_port(),
        imaps_port=free_port(),
        pop3s_port=free_port(),
        submission_port=free_port(),
        submissions_port=free_port(),
        http_port=free_port(),
        https_port=free_port(),
        extra_config=tls_section + '[mta_sts]\nmode = "enforce"\nmax_age = "1d"\n',
    )
    instance.write_config()
    instance.start()
    instance.ca = ca  # type: ignore[attr-defined]
    yield instance  # type: ignore[misc]
    instance.stop()


def _client(web: Instance) -> http.client.HTTPSConnection:
    context = ssl.create_default_context()
    web.ca.configure_trust(context)  # type: ignore[attr-defined]
    context.check_hostname = False  # the test certificate names mx.example.test only
    return http.client.HTTPSConnection("127.0.0.1", web.https_port, context=context)


def test_a_real_server_over_https_with_keep_alive(web: Instance) -> None:
    connection = _client(web)
    connection.request("GET", "/.well-known/mta-sts.txt", headers={"Host": "mta-sts.example.test"})
    first = connection.getresponse()
    policy = first.read()
    assert first.status == 200 and b"mode: enforce\r\nmx: mx.example.test\r\n" in policy
    assert first.getheader("Strict-Transport-Security", "").startswith("max-age=")
    etag = first.getheader("ETag")
    sock = connection.sock
    # The same connection again (keep-alive), now conditional: 304.
    connection.request(
        "GET",
        "/.well-known/mta-sts.txt",
        headers={"Host": "mta-sts.example.test", "If-None-Match": etag or ""},
    )
    second = connection.getresponse()
    assert second.status == 304 and second.read() == b""
    assert connection.sock is sock
    body = (
        b'<?xml version="1.0" encoding="utf-8"?>'
        b'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
        b'requestschema/2006"><Request><EMailAddress>bob@example.test</EMailAddress>'
        b"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
        b"outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
    )
    connection.request(
        "POST",
        "/Autodiscover/Autodiscover.xml",
        body=body,
        headers={"Host": "autodiscover.example.test", "Content-Type": "text/xml"},
    )
    answer = connection.getresponse()
    text = answer.read()
    assert answer.status == 200 and b"<Server>mx.example.test</Server>" in text
    assert str(web.imaps_port).encode() in text
    # Thunderbird's autoconfig over the same connection: every protocol the
    # server offers, with its port and socket type (implicit TLS first).
    connection.request(
        "GET",
        "/mail/config-v1.1.xml?emailaddress=ann%40example.test",
        headers={"Host": "autoconfig.example.test"},
    )
    answer = connection.getresponse()
    config = ET.fromstring(answer.read())  # noqa: S314 — our own answer
    assert answer.status == 200 and answer.getheader("Content-Type", "").startswith("text/xml")
    servers = [
        (
            server.get("type"),
            server.findtext("hostname"),
            server.findtext("port"),
            server.findtext("socketType"),
            server.findtext("username"),
        )
        for server in config.iter()
        if server.tag in ("incomingServer", "outgoingServer")
    ]
    assert servers == [
        ("imap", "mx.example.test", str(web.imaps_port), "SSL", "%EMAILADDRESS%"),
        ("pop3", "mx.example.test", str(web.pop3s_port), "SSL", "%EMAILADDRESS%"),
        ("smtp", "mx.example.test", str(web.submissions_port), "SSL", "%EMAILADDRESS%"),
        ("smtp", "mx.example.test", str(web.submission_port), "STARTTLS", "%EMAILADDRESS%"),
    ]
    connection.close()

    plain = http.client.HTTPConnection("127.0.0.1", web.http_port)
    plain.request("GET", "/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.test"})
    moved = plain.getresponse()
    moved.read()
    plain.close()
    assert moved.status == 301
    assert moved.getheader("Location") == (
        f"https://autoconfig.example.test:{web.https_port}/mail/config-v1.1.xml"
    )
    assert "http_request" in web.log_text()


def test_the_listener_caps_open_connections_and_each_address() -> None:
    """max_open over the listener, the per-address admission before any
    byte is read; both refusals are a close, nothing more."""
    from estafeta.web.connection import Limits as WebLimits
    from estafeta.web.listener import HTTPListener

    async def ok(_request: Request) -> Response:
        return Response(200, b"ok\n")

    async def run() -> None:
        admitted: list[str] = []
        listener = HTTPListener(
            "http",
            ok,
            limits=WebLimits(keepalive_timeout=5),
            admit=lambda ip: admitted.append(ip) is None and len(admitted) <= 2,
            release=lambda ip: None,
            max_open=2,
        )
        port = free_port()
        await listener.listen("127.0.0.1", port)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # over max_open
            writer.close()
            for _, held_writer in held:
                held_writer.close()
            await asyncio.sleep(0.2)
            # Room again; the admit callback (per address) refuses the third.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert len(admitted) == 3  # the one over max_open was never asked about
        finally:
            await listener.close()

    asyncio.run(run())
