"""aiosmtpd's SMTP protocol with what a public MX needs on top.

- every reply carries an enhanced status code (rfc3463), so we can
  advertise ENHANCEDSTATUSCODES (rfc2034) and PIPELINING (rfc2920: aiosmtpd
  reads commands from a buffered stream, so pipelined commands just work);
- a cap on concurrent connections;
- no AUTH on the MX port (submission comes with its own listener).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP

from estafeta.smtp import replies


@dataclass
class Connections:
    """The open connections of all SMTP listeners, and their cap."""

    limit: int
    open: set[SMTPProtocol] = field(default_factory=set)

    def shutdown(self) -> None:
        """Say goodbye (rfc5321:3.8) to every connection not in a delivery."""
        for protocol in list(self.open):
            transport = protocol.transport
            if not protocol.busy and isinstance(transport, asyncio.WriteTransport):
                transport.write(replies.SHUTTING_DOWN.encode() + b"\r\n")
                transport.close()


class SMTPProtocol(SMTP):
    """One SMTP connection."""

    def __init__(
        self,
        handler: Any,
        *,
        connections: Connections,
        allow_auth: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._counted = False
        # True while a DATA hook stores a message: shutdown waits for it.
        self.busy = False
        self._allow_auth = allow_auth
        self._greeted = False
        self._in_ehlo = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._counted:
            # A new TCP connection (not the STARTTLS upgrade of one).
            if len(self._connections.open) >= self._connections.limit:
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")
                transport.close()
                return
            self._connections.open.add(self)
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._connections.open.discard(self)
            self._counted = False
        if self.session is None:  # refused in connection_made
            return
        super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "surrogateescape")
        # rfc2034:3: no enhanced code on the greeting and the EHLO/HELO lines.
        if self._greeted and not self._in_ehlo:
            status = replies.with_enhanced_code(status)
        self._greeted = True
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_AUTH(self, arg: str) -> None:
        if not self._allow_auth:
            await self.push(replies.AUTH_UNAVAILABLE)
            return
        await super().smtp_AUTH(arg)

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    def tls_info(self) -> str | None:
        """'TLSv1.3 TLS_AES_256_GCM_SHA384' once STARTTLS succeeded."""
        if self._tls_protocol is None:
            return None
        ssl_object: ssl.SSLObject | None = self._tls_protocol._extra.get("ssl_object")
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()

    def ehlo_extensions(self, responses: list[str]) -> list[str]:
        """Adjust the EHLO keyword list aiosmtpd built."""
        lines = [line[4:] for line in responses]
        if not self._allow_auth:
            lines = [line for line in lines if not line.upper().startswith("AUTH")]
        lines = [line for line in lines if line.upper() != "HELP"]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]
