"""The small HTTP side of estafeta: ``/metrics``, ``/healthz`` and MTA-STS policies.

``[listen] http`` (plain, for a scraper on a private network or behind a
reverse proxy) serves:

- ``GET /metrics``: Prometheus text exposition (estafeta.metrics);
- ``GET /healthz``: ``200 ok`` while the server accepts and stores mail,
  ``503`` with the reason otherwise;
- ``GET /.well-known/mta-sts.txt``: the MTA-STS policy of the domain named by
  the Host header (``mta-sts.<domain>``, rfc8461:3.3), read from
  ``<policy_dir>/<domain>.txt`` (written by the dns_records role).

The request parser is sans-IO (:class:`RequestParser`): it takes bytes as they
come and yields a request or an :class:`HTTPError` with the status to send.
Only GET and HEAD exist here; every response closes the connection
(rfc9112:9.6), which keeps the server trivial and a slow client cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from estafeta import metrics

log = logging.getLogger("estafeta.web")

MAX_REQUEST_LINE = 8192  # rfc9112:3 recommends at least 8000 octets
MAX_HEADER_BYTES = 32768
MAX_HEADERS = 100
READ_TIMEOUT = 10.0

_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HTTPError(Exception):
    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail or REASONS.get(status, ""))
        self.status = status


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """The Host header without port, lower case (rfc9110:7.2)."""
        value = self.headers.get("host", "").strip().lower()
        if value.startswith("["):
            return value
        return value.rsplit(":", 1)[0] if ":" in value else value


class RequestParser:
    """Feed bytes; ``request`` is set once the head is complete (rfc9112:2-5)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.request: Request | None = None

    def feed(self, data: bytes) -> Request | None:
        if self.request is not None:
            return self.request  # a body (none expected for GET) is ignored
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            first = self._buffer.find(b"\r\n")
            if first < 0 and len(self._buffer) > MAX_REQUEST_LINE:
                raise HTTPError(414)
            if len(self._buffer) > MAX_REQUEST_LINE + MAX_HEADER_BYTES:
                raise HTTPError(431)
            return None
        head = bytes(self._buffer[:end])
        self.request = self._parse(head)
        return self.request

    @staticmethod
    def _parse(head: bytes) -> Request:
        lines = head.split(b"\r\n")
        request_line = lines[0]
        if len(request_line) > MAX_REQUEST_LINE:
            raise HTTPError(414)
        parts = request_line.split(b" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
            raise HTTPError(400, "malformed request line")
        method, target, version = parts
        if not re.fullmatch(rb"HTTP/1\.[01]", version):
            if version.startswith(b"HTTP/"):
                raise HTTPError(505)
            raise HTTPError(400, "malformed request line")
        if any(b < 0x21 or b > 0x7E for b in target):
            raise HTTPError(400, "bad characters in the target")
        headers: dict[str, str] = {}
        if len(lines) - 1 > MAX_HEADERS:
            raise HTTPError(431)
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            # rfc9112:5.1: no whitespace between the name and the colon.
            if not colon or not _TOKEN.match(name):
                raise HTTPError(400, "malformed header field")
            if b"\r" in value or b"\n" in value or b"\0" in value:
                raise HTTPError(400, "malformed header field")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if key == "host" and key in headers:
                raise HTTPError(400, "more than one Host")  # rfc9112:3.2
            headers[key] = text
        if version == b"HTTP/1.1" and "host" not in headers:
            raise HTTPError(400, "Host is required")  # rfc9112:3.2
        return Request(method.decode("ascii"), target.decode("ascii"), version.decode(), headers)


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


@dataclass
class WebApp:
    """What the routes need from the server."""

    # None when healthy, else a short reason.
    health: Callable[[], str | None] = lambda: None
    policy_dir: Path | None = None

    def handle(self, request: Request) -> tuple[int, bytes, str]:
        if request.method not in ("GET", "HEAD"):
            return 405, b"only GET and HEAD\n", "text/plain; charset=utf-8"
        path = request.target.split("?", 1)[0]
        if path == "/metrics":
            return 200, metrics.exposition(), metrics.CONTENT_TYPE
        if path == "/healthz":
            problem = self.health()
            if problem is None:
                return 200, b"ok\n", "text/plain; charset=utf-8"
            return 503, f"unhealthy: {problem}\n".encode(), "text/plain; charset=utf-8"
        if path == "/.well-known/mta-sts.txt":
            return self._mta_sts(request)
        return 404, b"not found\n", "text/plain; charset=utf-8"

    def _mta_sts(self, request: Request) -> tuple[int, bytes, str]:
        # rfc8461:3.3: https://mta-sts.<domain>/.well-known/mta-sts.txt,
        # media type text/plain.
        host = request.host
        domain = host.removeprefix("mta-sts.")
        if self.policy_dir is None or domain == host or not _DOMAIN.match(domain):
            return 404, b"no MTA-STS policy here\n", "text/plain; charset=utf-8"
        path = self.policy_dir / f"{domain}.txt"
        try:
            body = path.read_bytes()
        except OSError:
            return 404, b"no MTA-STS policy for this domain\n", "text/plain; charset=utf-8"
        return 200, body, "text/plain; charset=utf-8"


class WebServer:
    def __init__(self, app: WebApp, tls: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.tls = tls

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestParser()
        try:
            try:
                request = None
                async with asyncio.timeout(READ_TIMEOUT):
                    while request is None:
                        data = await reader.read(4096)
                        if not data:
                            return
                        request = parser.feed(data)
                status, body, content_type = self.app.handle(request)
                if request.method == "HEAD":
                    out = response(status, body, content_type)
                    out = out[: len(out) - len(body)]
                else:
                    out = response(status, body, content_type)
            except HTTPError as exc:
                out = response(exc.status, f"{exc}\n".encode())
            except TimeoutError:
                out = response(408, b"request timeout\n")
            except Exception:
                log.exception("internal error in the HTTP listener")
                out = response(503, b"internal error\n")
            writer.write(out)
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(READ_TIMEOUT):
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
