"""aiosmtpd's SMTP protocol with what a public MX needs on top.

- every reply carries an enhanced status code (rfc3463), so we can
  advertise ENHANCEDSTATUSCODES (rfc2034) and PIPELINING (rfc2920: aiosmtpd
  reads commands from a buffered stream, so pipelined commands just work);
- a cap on concurrent connections, and on those from one client address;
- no AUTH on the MX port; on submission, AUTH PLAIN and LOGIN (rfc4954)
  checked through the shared login guard (estafeta.auth.guard: delays and
  lockouts common to IMAP, POP3 and SMTP) without blocking the event loop,
  and only after TLS (STARTTLS on 587, implicit TLS on 465) unless a test
  config allows plaintext.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

from estafeta.auth.guard import ConnectionsPerIP, LoginResult
from estafeta.auth.sasl import SASLError, decode_plain
from estafeta.log import log_event
from estafeta.smtp import replies

log = logging.getLogger("estafeta.smtp")

# Checks a user name and password from a client address (Authenticator.login).
Authenticate = Callable[[str, str, str], Awaitable[LoginResult]]
# Failed AUTH attempts before the connection is closed.
MAX_AUTH_FAILURES = 3
# rfc4954:6 — 454 4.7.0 "Temporary authentication failure": the client (or
# the account, from an unknown address) is locked out for a while.
AUTH_LOCKED = "454 4.7.0 Too many failed authentications, try later"
TOO_MANY_FROM_ADDRESS = "421 4.7.0 Too many connections from your address"


@dataclass
class Connections:
    """The open connections of all SMTP listeners, and their cap."""

    limit: int
    open: set[SMTPProtocol] = field(default_factory=set)
    # Shared with the IMAP and POP3 listeners; None: no per-address cap.
    per_ip: ConnectionsPerIP | None = None

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
        authenticate: Authenticate | None = None,
        implicit_tls: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._authenticate_user = authenticate
        self._implicit_tls = implicit_tls
        if implicit_tls:
            # The whole connection is TLS (port 465, rfc8314:3.3): AUTH may go ahead.
            self._auth_require_tls = False
        self._auth_failures = 0
        self._connections = connections
        self._counted = False
        self._counted_ip: str | None = None
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
            per_ip = self._connections.per_ip
            if per_ip is not None:
                peer = transport.get_extra_info("peername")
                ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
                if not per_ip.acquire(ip):
                    assert isinstance(transport, asyncio.WriteTransport)
                    transport.write(TOO_MANY_FROM_ADDRESS.encode() + b"\r\n")
                    transport.close()
                    return
                self._counted_ip = ip
            self._connections.open.add(self)
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._connections.open.discard(self)
            self._counted = False
            if self._counted_ip is not None and self._connections.per_ip is not None:
                self._connections.per_ip.release(self._counted_ip)
                self._counted_ip = None
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

    # rfc4954:4 — AUTH PLAIN with an initial response or a 334 challenge.
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
            response = base64.b64encode(blob).decode("ascii") if blob else "="
        else:
            response = args[1]
        try:
            user, password = decode_plain(response)
        except SASLError as exc:
            await self.push(f"501 5.5.2 {exc}")
            return AuthResult(success=False, handled=True)
        return await self._check_password(user, password)

    # draft-murchison-sasl-login: username and password, each base64 after a 334.
    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            user_blob = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if user_blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                user_blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        password_blob = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password_blob is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            user = bytes(user_blob).decode("utf-8")
            password = bytes(password_blob).decode("utf-8")
        except UnicodeDecodeError:
            await self.push("501 5.5.2 User name and password must be UTF-8")
            return AuthResult(success=False, handled=True)
        return await self._check_password(user, password)

    async def _check_password(self, user: str, password: str) -> AuthResult:
        peer = str(self.session.peer[0]) if self.session and self.session.peer else "?"
        result = LoginResult(None)
        if self._authenticate_user is not None:
            # Delays after a failure and lockouts are the guard's business.
            result = await self._authenticate_user(user, password, peer)
        account = result.address
        if account is None:
            self._auth_failures += 1
            if not result.locked:
                log_event(
                    log,
                    "auth",
                    logging.WARNING,
                    protocol="smtp",
                    user=user,
                    client=peer,
                    result="failed",
                )
            if self._auth_failures >= MAX_AUTH_FAILURES:
                await self.push("421 4.7.0 Too many failed authentications")
                if self.transport is not None:
                    self.transport.close()
                return AuthResult(success=False, handled=True)
            if result.locked:
                await self.push(AUTH_LOCKED)
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8
        log_event(log, "auth", protocol="smtp", user=account, client=peer, result="ok")
        return AuthResult(success=True, auth_data=account)

    @property
    def authenticated_user(self) -> str | None:
        if self.session is None or not self.session.authenticated:
            return None
        data = self.session.auth_data
        return data if isinstance(data, str) else None

    @property
    def tls_active(self) -> bool:
        return self._implicit_tls or self._tls_protocol is not None

    def tls_info(self) -> str | None:
        """'TLSv1.3 TLS_AES_256_GCM_SHA384' on a TLS connection."""
        ssl_object: ssl.SSLObject | None
        if self._implicit_tls and self.transport is not None:
            ssl_object = self.transport.get_extra_info("ssl_object")
        elif self._tls_protocol is None:
            return None
        else:
            ssl_object = self._tls_protocol._extra.get("ssl_object")
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
