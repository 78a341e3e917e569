"""estafeta.web.connection: one HTTP/1.1 connection, driven by transcripts.

Every transcript is fed whole and one byte at a time: the answers must be
the same (h11 frames, our session bounds).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from _fakeio import FakeWriter

from estafeta.web.connection import HTTPSession, Limits, Request, Response, text

DEFAULT_LIMITS = Limits()


class ChunkReader:
    """A StreamReader stand-in handing out the transcript in fixed pieces."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(0)
        if not self.pieces:
            return b""
        piece = self.pieces[0]
        if 0 < n < len(piece):  # like a socket: at most n bytes a read
            self.pieces[0] = piece[n:]
            return piece[:n]
        return self.pieces.pop(0)


class StallingReader(ChunkReader):
    """Hands out the transcript, then never sends another byte."""

    async def read(self, n: int = -1) -> bytes:
        if self.pieces:
            return await super().read(n)
        await asyncio.sleep(3600)
        return b""


async def echo(request: Request) -> Response:
    if request.path == "/boom":
        raise RuntimeError("secret internal detail")
    if request.path == "/static":
        return Response(200, b"static body\n", max_age=60)
    body = f"{request.method} {request.path} {len(request.body)} {request.body[:20]!r}\n"
    return Response(200, body.encode())


def serve(
    data: bytes,
    chunk: int = 0,
    *,
    limits: Limits = DEFAULT_LIMITS,
    secure: bool = True,
    reader_class: type[ChunkReader] = ChunkReader,
    handler: Callable[[Request], object] = echo,
) -> bytes:
    writer = FakeWriter()

    async def run() -> None:
        session = HTTPSession(
            reader_class(data, chunk),  # type: ignore[arg-type]
            writer,  # type: ignore[arg-type]
            handler,  # type: ignore[arg-type]
            limits=limits,
            secure=secure,
            remote="192.0.2.1",
            listener="https",
        )
        await asyncio.wait_for(session.run(), 20)

    asyncio.run(run())
    return bytes(writer.data)


def responses(data: bytes, heads: tuple[int, ...] = ()) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of responses (Content-Length framed) apart; the
    answers numbered in ``heads`` answer HEAD requests (no content)."""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        length = 0 if len(out) in heads else int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


GET = b"GET /a HTTP/1.1\r\nHost: mx.example.test\r\n\r\n"
BOTH = pytest.mark.parametrize("chunk", [0, 1], ids=["whole", "bytewise"])


@BOTH
def test_keep_alive_serves_pipelined_requests_in_order(chunk: int) -> None:
    data = GET + b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n" + b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    out = serve(data, chunk)
    got = responses(out, heads=(1,))
    assert [status for status, _, _ in got] == [200, 200, 200]
    assert got[0][2] == b"GET /a 0 b''\n"
    # rfc9110:9.3.2: HEAD has the Content-Length of the GET, and no content.
    assert got[1][1]["content-length"] == str(len(b"HEAD /b 0 b''\n"))
    assert got[2][2] == b"GET /c 0 b''\n"
    assert b"HEAD /b" not in out


@BOTH
def test_bodies_by_length_and_chunked(chunk: int) -> None:
    data = (
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /q HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    got = responses(serve(data, chunk))
    assert [body for _, _, body in got] == [b"POST /p 5 b'hello'\n", b"POST /q 5 b'abcde'\n"]


@BOTH
def test_too_large_bodies_are_refused_without_reading_them(chunk: int) -> None:
    limits = Limits(body_bytes=8)
    declared = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n123456789" + GET
    got = responses(serve(declared, chunk, limits=limits))
    assert len(got) == 1 and got[0][0] == 413 and got[0][1]["connection"] == "close"
    chunked = (
        b"POST /q HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n"
    )
    got = responses(serve(chunked, chunk, limits=limits))
    assert [status for status, _, _ in got] == [413]


@BOTH
def test_expect_100_continue(chunk: int) -> None:
    data = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"
    out = serve(data, chunk)
    assert out.startswith(b"HTTP/1.1 100 ")
    assert responses(out.split(b"\r\n\r\n", 1)[1])[0][2] == b"POST /p 2 b'ok'\n"
    too_big = b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99\r\n\r\n"
    out = serve(too_big, chunk, limits=Limits(body_bytes=10))
    assert out.startswith(b"HTTP/1.1 413 ") and b" 100 " not in out


@BOTH
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /metrics\r\n\r\n", 400),  # HTTP/0.9
        (b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # rfc9112:3.2 Host required
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nHost : a\r\n\r\n", 400),  # rfc9112:5.1
        (b"GET http://evil.test/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # we are no proxy
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),  # TLS on http
    ],
)
def test_malformed_requests_get_a_status_and_the_connection_closes(
    data: bytes, status: int, chunk: int
) -> None:
    out = serve(data + GET, chunk)
    got = responses(out)
    assert [s for s, _, _ in got] == [status]
    assert got[0][1].get("connection") == "close"
    assert b"Traceback" not in out


@BOTH
def test_a_failing_handler_gives_500_without_detail(chunk: int) -> None:
    out = serve(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n" + GET, chunk)
    got = responses(out)
    assert [s for s, _, _ in got] == [500]
    assert b"secret internal detail" not in out and b"Traceback" not in out


@BOTH
def test_conditional_get_answers_304(chunk: int) -> None:
    first = responses(serve(b"GET /static HTTP/1.1\r\nHost: x\r\n\r\n", chunk))[0]
    etag = first[1]["etag"]
    assert first[1]["cache-control"] == "max-age=60"
    again = b'GET /static HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/"zz", ' + etag.encode()
    got = responses(serve(again + b"\r\n\r\n" + GET, chunk))
    assert got[0][0] == 304 and got[0][2] == b"" and got[0][1]["etag"] == etag
    assert got[1][0] == 200  # and the connection went on
    other = b'GET /static HTTP/1.1\r\nHost: x\r\nIf-None-Match: "other"\r\n\r\n'
    assert responses(serve(other, chunk))[0][0] == 200


def test_security_headers_and_hsts_only_over_tls() -> None:
    secure = responses(serve(GET))[0][1]
    assert secure["strict-transport-security"] == "max-age=31536000"
    assert "frame-ancestors 'none'" in secure["content-security-policy"]
    assert secure["x-content-type-options"] == "nosniff"
    assert secure["cache-control"] == "no-store"
    assert re.match(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", secure["date"])
    plain = responses(serve(GET, secure=False))[0][1]
    assert "strict-transport-security" not in plain


def test_http_1_0_closes_after_one_answer_and_needs_no_host() -> None:
    got = responses(serve(b"GET /a HTTP/1.0\r\n\r\n" + GET))
    assert len(got) == 1 and got[0][0] == 200


def test_max_requests_per_connection() -> None:
    got = responses(serve(GET * 5, limits=Limits(max_requests=3)))
    assert [s for s, _, _ in got] == [200, 200, 200]
    assert got[2][1]["connection"] == "close"


def test_a_head_that_never_ends_gets_408() -> None:
    out = serve(
        b"GET /a HTTP/1.1\r\nHost: x\r\n",
        1,
        limits=Limits(head_timeout=0.3),
        reader_class=StallingReader,
    )
    assert out.startswith(b"HTTP/1.1 408 ")


def test_an_idle_connection_is_closed_quietly() -> None:
    out = serve(GET, limits=Limits(keepalive_timeout=0.2), reader_class=StallingReader)
    got = responses(out)
    assert [s for s, _, _ in got] == [200]  # then closed, no 408 for nothing sent


def test_a_trickled_body_is_bounded_by_body_timeout() -> None:
    data = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
    out = serve(
        data, 1, limits=Limits(head_timeout=0.2, body_timeout=0.2), reader_class=StallingReader
    )
    assert out.startswith(b"HTTP/1.1 408 ")


def test_text_helper() -> None:
    response = text(404, "not found")
    assert response.body == b"not found\n" and response.content_type.startswith("text/plain")
