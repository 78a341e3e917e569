"""One HTTP/1.1 connection: h11 frames the messages, this module bounds them.

Why h11 (python-hyper's HTTP/1.1 library) and not aiohttp or our old parser:
h11 is sans-IO, like every other protocol layer of estafeta (STYLE.md 7), so
the connection stays ours — counted per client address, its TLS started by
the server (ACME's TLS-ALPN-01 needs the ClientHello first), its time and
size limits the same kind as IMAP's — while the framing an old hand-written
parser gets wrong (keep-alive, chunked bodies, pipelining, HEAD, 100-continue,
rfc9112:6-9) is a library's well-tested work. aiohttp would bring its own
server, connection handling and limits, beside ours.

What a client can cost (the brief: think as an attacker):

- the head of a request: ``header_bytes`` (h11's max_incomplete_event_size,
  431 beyond), to be complete within ``head_timeout`` of its first byte or,
  between requests, of the end of the previous answer (``keepalive_timeout``
  while nothing at all comes);
- a body: ``body_bytes`` (413 beyond, before a byte of it is read when
  Content-Length says so), all of it within ``body_timeout``;
- ``max_requests`` requests a connection, then it is closed;
- a reader that does not read: every write is bounded by ``write_timeout``.

Errors never reach the client as a traceback: a handler that raises gets a
500 with no detail, logged here.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import h11

from estafeta.log import log_event

log = logging.getLogger("estafeta.web")

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Limits:
    header_bytes: int = 16 * 1024
    body_bytes: int = 64 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 15.0
    write_timeout: float = 30.0
    max_requests: int = 100
    max_target: int = 4096  # rfc9112:3 asks for at least 8000; no route here needs more


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    remote: str = ""
    secure: bool = False
    http_version: str = "1.1"

    @property
    def path(self) -> str:
        """The path, percent-decoded (rfc3986:2.1), without the query."""
        return unquote(self.target.split("?", 1)[0], errors="replace")

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The field's value; several lines of one field joined with ", " (rfc9110:5.3)."""
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def host(self) -> str:
        """The Host header without port, lower case and without a trailing
        dot (rfc9110:7.2); "" when absent (HTTP/1.0)."""
        value = (self.header("host") or "").strip().lower()
        if value.startswith("["):
            return value.split("]", 1)[0] + "]"
        return value.rsplit(":", 1)[0].rstrip(".")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Seconds a cache may keep it (rfc9111:5.2.2.1); None: no-store. A
    # cacheable 200 gets an ETag and answers If-None-Match with 304.
    max_age: int | None = None
    # Close the connection after this answer.
    close: bool = False


def text(status: int, message: str) -> Response:
    return Response(status, (message.rstrip("\n") + "\n").encode(), TEXT)


Handler = Callable[[Request], Awaitable[Response]]


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def not_modified(request: Request, etag: str) -> bool:
    """rfc9110:13.1.2: If-None-Match, weak comparison, ``*`` matches."""
    wanted = request.header("if-none-match")
    if wanted is None:
        return False
    for item in wanted.split(","):
        tag = item.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]
# Pages may use their own style sheet and inline images (QR codes as data:
# URIs); nothing may frame them (frame-ancestors) or take a form elsewhere.
CSP_HTML = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
CSP_OTHER = "default-src 'none'; frame-ancestors 'none'"


class HTTPSession:
    """Serves the requests of one connection with ``handler``, one at a time."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        *,
        limits: Limits,
        secure: bool,
        remote: str,
        listener: str,
        hsts_max_age: int = 31536000,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.limits = limits
        self.secure = secure
        self.remote = remote
        self.listener = listener
        self.hsts_max_age = hsts_max_age
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.header_bytes)

    async def run(self) -> None:
        try:
            for served in range(self.limits.max_requests):
                if not await self._one(last=served == self.limits.max_requests - 1):
                    break
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _next_event(
        self, deadline: float, head_room: int | None = None
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """The next event; ``head_room``: bytes the head may still take.
        h11 checks max_incomplete_event_size only while a head is
        incomplete, so the head is never given more than one byte beyond
        it: a longer head is refused, not parsed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            size = 8192 if head_room is None else max(1, min(8192, head_room))
            async with asyncio.timeout(remaining):
                data = await self.reader.read(size)
            if head_room is not None:
                head_room -= len(data)
            self.conn.receive_data(data)  # b"" at the end of the stream

    async def _one(self, last: bool) -> bool:
        """One request and its answer; False when the connection is to end."""
        started = time.monotonic()
        try:
            # Between requests the client may be silent for keepalive_timeout;
            # once it sends anything, the head must be whole by head_timeout.
            room = self.limits.header_bytes + 1 - len(self.conn.trailing_data[0])
            if self.conn.their_state is h11.IDLE and room == self.limits.header_bytes + 1:
                async with asyncio.timeout(self.limits.keepalive_timeout):
                    data = await self.reader.read(min(8192, room))
                if not data:
                    return False
                self.conn.receive_data(data)
                room -= len(data)
                started = time.monotonic()
            event = await self._next_event(started + self.limits.head_timeout, room)
            if isinstance(event, h11.ConnectionClosed):
                return False
            assert isinstance(event, h11.Request)
            request = self._request(event)
            early = self._check_head(request)
            if early is not None:
                await self._send(request, early, close=True)
                return False
            request.body = await self._body(request, started)
        except TimeoutError:
            # rfc9110:15.5.9: 408 when the client took too long to send a request.
            if self.conn.their_state is not h11.IDLE or self.conn.trailing_data[0]:
                await self._send_error(text(408, "request timeout"))
            return False
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 400 and "exceeded" in str(exc).lower():
                status = 431
            await self._send_error(text(status, f"bad request: {exc}"))
            return False
        except _TooLarge as exc:
            await self._send(exc.request, text(413, "request body too large"), close=True)
            return False

        try:
            response = await self.handler(request)
        except Exception:
            log.exception("internal error in the HTTP listener")
            response = text(500, "internal error")
            response.close = True
        await self._send(request, response, close=response.close or last, started=started)
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            return False
        if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
            return False
        self.conn.start_next_cycle()
        return True

    def _request(self, event: h11.Request) -> Request:
        return Request(
            method=event.method.decode("ascii"),
            target=event.target.decode("ascii", errors="replace"),
            headers=[
                (name.decode("ascii"), value.decode("latin-1")) for name, value in event.headers
            ],
            remote=self.remote,
            secure=self.secure,
            http_version=event.http_version.decode("ascii"),
        )

    def _check_head(self, request: Request) -> Response | None:
        if len(request.target) > self.limits.max_target:
            return text(414, "request target too long")
        if not request.target.startswith("/") and request.target != "*":
            # Absolute-form is for proxies (rfc9112:3.2.2); we are none.
            return text(400, "origin-form targets only")
        length = request.header("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.body_bytes:
            return text(413, "request body too large")
        return None

    async def _body(self, request: Request, started: float) -> bytes:
        if self.conn.they_are_waiting_for_100_continue:
            # rfc9110:10.1.1: the body is wanted (its size was checked above).
            await self._write(
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
            )
        deadline = started + self.limits.head_timeout + self.limits.body_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(deadline)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.body_bytes:
                    raise _TooLarge(request)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed in the middle of a body
                raise ConnectionResetError

    def _headers(self, request: Request | None, response: Response) -> list[tuple[str, str]]:
        headers = [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", "estafeta"),
        ]
        if response.body or response.status not in (204, 304):
            headers.append(("Content-Type", response.content_type))
        headers.extend(SECURITY_HEADERS)
        html = response.content_type.startswith("text/html")
        headers.append(("Content-Security-Policy", CSP_HTML if html else CSP_OTHER))
        if self.secure and self.hsts_max_age > 0:
            # rfc6797:6.1 — only over a secure transport.
            headers.append(("Strict-Transport-Security", f"max-age={self.hsts_max_age}"))
        if response.max_age is None:
            headers.append(("Cache-Control", "no-store"))
        else:
            headers.append(("Cache-Control", f"max-age={response.max_age}"))
        headers.extend(response.headers)
        return headers

    async def _send(
        self,
        request: Request,
        response: Response,
        *,
        close: bool,
        started: float | None = None,
    ) -> None:
        body = response.body
        status = response.status
        headers = self._headers(request, response)
        if response.max_age is not None and status == 200:
            etag = etag_of(body)
            headers.append(("ETag", etag))
            if request.method in ("GET", "HEAD") and not_modified(request, etag):
                status, body = 304, b""  # rfc9110:15.4.5
                headers = [h for h in headers if h[0] != "Content-Type"]
        if status not in (204, 304):  # rfc9110:8.6
            headers.append(("Content-Length", str(len(body))))
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = REASONS.get(status, "").encode()
            data = self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
            if body and request.method != "HEAD":  # rfc9110:9.3.2: HEAD, no content
                data += self.conn.send(h11.Data(data=body)) or b""
            data += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            log.exception("HTTP answer refused by h11")
            return
        await self._write(data)
        self._access(request, status, len(body), started)

    async def _send_error(self, response: Response) -> None:
        """An answer to a request h11 could not read (no Request to go by)."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = self._headers(None, response)
        headers += [("Content-Length", str(len(response.body))), ("Connection", "close")]
        with contextlib.suppress(h11.LocalProtocolError):
            reason = REASONS.get(response.status, "").encode()
            data = self.conn.send(
                h11.Response(status_code=response.status, headers=headers, reason=reason)
            )
            data += self.conn.send(h11.Data(data=response.body)) or b""
            data += self.conn.send(h11.EndOfMessage()) or b""
            await self._write(data)
            log_event(
                log,
                "http_request",
                listener=self.listener,
                remote=self.remote,
                status=response.status,
                error=response.body.decode(errors="replace").strip()[:200],
            )

    async def _write(self, data: bytes | None) -> None:
        if not data:
            return
        self.writer.write(data)
        async with asyncio.timeout(self.limits.write_timeout):
            await self.writer.drain()

    def _access(self, request: Request, status: int, size: int, started: float | None) -> None:
        # The path only: a query may carry an address (autoconfig's
        # emailaddress=) or a token, which an access log has no need of.
        fields: dict[str, Any] = {
            "listener": self.listener,
            "remote": self.remote,
            "host": request.host[:255],
            "method": request.method[:16],
            "path": request.path[:256],
            "status": status,
            "bytes": size,
        }
        if started is not None:
            fields["ms"] = round((time.monotonic() - started) * 1000, 1)
        log_event(log, "http_request", **fields)


class _TooLarge(Exception):
    def __init__(self, request: Request) -> None:
        super().__init__("body too large")
        self.request = request
