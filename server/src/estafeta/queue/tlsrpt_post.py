"""TLS reports over HTTPS (rfc8460:5.4): one POST of the gzip'd report.

The same small, bounded HTTP/1.1 client as the MTA-STS policy fetch
(estafeta.queue.mtasts): the host's addresses from our resolver (or the
literal address in the URL), verified TLS with the URL's host name, no
redirect followed, a time limit on the whole exchange, a bounded response
head; the response body is not read. A 2xx status is success
(rfc8460:5.4: "typically a 200 or 201"); anything else raises
:class:`PostError` (or OSError, TimeoutError for the network), and the
sender tries again at its next run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import urllib.parse

from estafeta.dns import Resolver
from estafeta.queue.mtasts import PolicyError, _addresses, _ascii_domain, _read_head, each_address
from estafeta.reports.tlsrpt import GZIP_TYPE

TIMEOUT = 60.0
MAX_BODY = 16 * 1024 * 1024


class PostError(Exception):
    """The report server did not take the report; says what it answered."""


async def post_report(
    url: str,
    body: bytes,
    *,
    resolver: Resolver,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = TIMEOUT,  # noqa: ASYNC109 -- bounds the whole exchange, DNS included
) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise PostError(f"{url}: not an https URL")
    if len(body) > MAX_BODY:
        raise PostError(f"report of {len(body)} octets is too large to post")
    host = parts.hostname
    try:
        port = parts.port or 443
    except ValueError:
        raise PostError(f"{url}: not a valid port") from None
    try:
        addresses = [str(ipaddress.ip_address(host))]
        server_name = host
    except ValueError:
        try:
            server_name = _ascii_domain(host)
        except PolicyError as exc:
            raise PostError(f"{url}: {exc}") from None
        addresses = []
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    if not target.isascii() or not target.isprintable() or " " in target:
        raise PostError(f"{url!r}: not a URL that can be sent as it is")
    context = ssl_context if ssl_context is not None else ssl.create_default_context()
    try:
        async with asyncio.timeout(timeout):
            if not addresses:
                try:
                    addresses = await _addresses(resolver, server_name)
                except PolicyError as exc:
                    raise PostError(str(exc)) from None
            authority = server_name if port == 443 else f"{server_name}:{port}"
            head = (
                f"POST {target} HTTP/1.1\r\n"
                f"Host: {authority}\r\n"
                "User-Agent: estafeta\r\n"
                f"Content-Type: {GZIP_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n"
                "\r\n"
            ).encode("ascii")

            async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
                writer.write(head + body)
                await writer.drain()
                try:
                    while True:
                        status, _headers = await _read_head(reader)
                        if not 100 <= status < 200:  # interim responses (rfc9110:15.2)
                            return status
                except PolicyError as exc:
                    raise PostError(f"{url}: {exc}") from None

            status = await each_address(addresses, port, context, server_name, exchange)
            if not 200 <= status < 300:
                # rfc8460:5.4 — other codes are failures; no redirect is followed.
                raise PostError(f"{url}: HTTP status {status}")
    except TimeoutError:
        raise TimeoutError(f"posting the TLS report to {url} timed out") from None
