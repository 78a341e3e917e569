"""estafeta.web: the sans-IO HTTP request parser, the routes, and the asyncio server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from estafeta import metrics
from estafeta.web import HTTPError, Request, RequestParser, WebApp, WebServer

GET = b"GET /metrics HTTP/1.1\r\nHost: mx.example.test:8080\r\nUser-Agent: t\r\n\r\n"


def parse_whole(data: bytes) -> Request | None:
    return RequestParser().feed(data)


def parse_bytewise(data: bytes) -> Request | None:
    parser = RequestParser()
    result = None
    for i in range(len(data)):
        result = parser.feed(data[i : i + 1])
    return result


@pytest.mark.parametrize("parse", [parse_whole, parse_bytewise])
def test_a_request_parses_the_same_in_one_piece_and_byte_by_byte(parse) -> None:  # type: ignore[no-untyped-def]
    request = parse(GET)
    assert request == Request(
        "GET", "/metrics", "HTTP/1.1", {"host": "mx.example.test:8080", "user-agent": "t"}
    )
    assert request.host == "mx.example.test"


def test_an_incomplete_head_is_not_a_request_yet() -> None:
    parser = RequestParser()
    assert parser.feed(GET[:-2]) is None
    assert parser.feed(GET[-2:]) is not None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9 style
        (b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # rfc9112:3.2 Host required
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # rfc9112:5.1
        (b"GET /m\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000, 414),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"Host: a\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 41000, 431),
    ],
)
def test_malformed_requests_get_the_right_status(data: bytes, status: int) -> None:
    with pytest.raises(HTTPError) as excinfo:
        parse_whole(data)
    assert excinfo.value.status == status


def test_http_1_0_needs_no_host() -> None:
    request = parse_whole(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert request is not None and request.target == "/healthz"


def test_routes(tmp_path: Path) -> None:
    (tmp_path / "example.test.txt").write_text("version: STSv1\nmode: enforce\n")
    problems: list[str | None] = [None]
    app = WebApp(health=lambda: problems[0], policy_dir=tmp_path)

    def get(target: str, host: str = "mx.example.test", method: str = "GET") -> tuple[int, bytes]:
        status, body, _ = app.handle(Request(method, target, "HTTP/1.1", {"host": host}))
        return status, body

    assert get("/healthz") == (200, b"ok\n")
    problems[0] = "store stopped"
    assert get("/healthz") == (503, b"unhealthy: store stopped\n")
    status, body = get("/metrics")
    assert status == 200 and b"# TYPE estafeta_messages_received_total counter" in body
    assert get("/.well-known/mta-sts.txt", "mta-sts.example.test")[1].startswith(b"version: STSv1")
    assert get("/.well-known/mta-sts.txt", "MTA-STS.Example.Test:443")[0] == 200
    assert get("/.well-known/mta-sts.txt", "mta-sts.other.test")[0] == 404
    assert get("/.well-known/mta-sts.txt", "mx.example.test")[0] == 404
    assert get("/.well-known/mta-sts.txt", "mta-sts.../../etc/passwd")[0] == 404
    assert get("/nope")[0] == 404
    assert get("/metrics", method="POST")[0] == 405


def test_events_move_the_counters() -> None:
    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("estafeta_messages_received_total", kind="inbound")
    metrics.record_event("delivery", {"result": "delivered", "ms": 3.0})
    assert value("estafeta_messages_received_total", kind="inbound") == before + 1
    before = value("estafeta_messages_rejected_total", kind="inbound", reason="dmarc")
    metrics.record_event("delivery", {"result": "rejected", "reason": "dmarc"})
    assert value("estafeta_messages_rejected_total", kind="inbound", reason="dmarc") == before + 1
    before = value("estafeta_delivery_duration_seconds_count")
    metrics.record_event("outbound", {"result": "delivered", "ms": 250.0})
    assert value("estafeta_delivery_duration_seconds_count") == before + 1
    # Long free-text reasons do not become label values.
    metrics.record_event("rcpt_rejected", {"reason": "x" * 200})
    assert value("estafeta_messages_rejected_total", kind="inbound", reason="other") >= 1


async def _serve(app: WebApp) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(WebServer(app).handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _exchange(port: int, data: bytes, pause: float = 0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if pause:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
    else:
        writer.write(data)
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return reply


def test_server_answers_and_closes() -> None:
    async def run() -> None:
        server, port = await _serve(WebApp())
        async with server:
            reply = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Connection: close" in reply and reply.endswith(b"\r\n\r\nok\n")
            head = await _exchange(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
            assert b"Content-Length: 3" in head
            bad = await _exchange(port, b"BREW /pot HTCPCP/1.0\r\n\r\n")
            assert bad.startswith(b"HTTP/1.1 400 Bad Request")
            slow = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", pause=1)
            assert slow.startswith(b"HTTP/1.1 200 OK") and b"estafeta_" in slow
            assert b"Traceback" not in bad + slow

    asyncio.run(run())
