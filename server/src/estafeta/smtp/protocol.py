"""aiosmtpd's SMTP protocol with what a public MX needs on top.

- every reply carries an enhanced status code (rfc3463), so we can
  advertise ENHANCEDSTATUSCODES (rfc2034) and PIPELINING (rfc2920: aiosmtpd
  reads commands from a buffered stream, so pipelined commands just work);
- a cap on concurrent connections, and on those from one client address
  (on port 465 counted from the accept, before the TLS handshake:
  ``ImplicitTLS``);
- no AUTH on the MX port; on submission, AUTH PLAIN and LOGIN (rfc4954)
  checked through the shared login guard (estafeta.auth.guard: delays and
  lockouts common to IMAP, POP3 and SMTP) without blocking the event loop,
  and only after TLS (STARTTLS on 587, implicit TLS on 465) unless a test
  config allows plaintext;
- timeouts that say so: ``421 4.4.2`` before the connection is closed, when
  the client has been silent for ``command_timeout`` (rfc5321:4.5.3.2.7) or
  its DATA phase has lasted ``data_timeout`` in all (a client trickling its
  message a byte at a time cannot hold a connection for ever).
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
# rfc5321:4.5.3.2.7 server timeout; rfc5321:3.8 a server closing the
# connection says 421 first; rfc3463:3.5 X.4.2 "bad connection".
IDLE_TIMEOUT = "421 4.4.2 {} Error: timeout exceeded"
DATA_TIMEOUT = "421 4.4.2 {} Error: the message took too long to arrive"


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


class ImplicitTLS(asyncio.Protocol):
    """Port 465 (rfc8314:3.3): the connection counts for its client address
    from the moment it is accepted; then the TLS handshake; then SMTP.

    With asyncio's ``create_server(ssl=...)`` the SMTP protocol would only
    hear of a connection once its handshake is done: a client that opens
    connections and never finishes one would escape the per-address cap for
    the whole handshake timeout. Refused connections get no handshake (that
    is the expensive part) and no reply, just the close.
    """

    def __init__(
        self,
        make: Callable[[], SMTPProtocol],
        context: ssl.SSLContext,
        connections: Connections,
        handshake_timeout: float,
    ) -> None:
        self._make = make
        self._context = context
        self._connections = connections
        self._handshake_timeout = handshake_timeout
        self._ip: str | None = None  # counted, until the SMTP protocol owns it
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for the TLS layer
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        per_ip = self._connections.per_ip
        if per_ip is not None:
            if not per_ip.acquire(ip):
                transport.abort()
                return
            self._ip = ip
        self._task = asyncio.get_running_loop().create_task(self._start_tls(transport))

    def _release(self) -> None:
        if self._ip is not None and self._connections.per_ip is not None:
            self._connections.per_ip.release(self._ip)
        self._ip = None

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        protocol = self._make()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                protocol,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except OSError:  # ssl.SSLError, a reset, the handshake timeout
            self._release()
            transport.abort()
            return
        except asyncio.CancelledError:
            self._release()
            transport.abort()
            raise
        if tls is None or tls.is_closing():
            self._release()
            return
        # The SMTP protocol releases the address when the connection ends.
        protocol._counted_ip, self._ip = self._ip, None
        protocol.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only called before start_tls takes the transport over (the task
        # has not run yet): it never will.
        if self._task is not None:
            self._task.cancel()
        self._release()


# C0 controls and DEL: never in a reply line (CRLF is added by push()).
_CONTROLS = {c: "?" for c in [*range(0x20), 0x7F]}


def _printable(reply: str) -> str:
    """A reply line that can be sent: aiosmtpd echoes client arguments (VRFY,
    unknown parameters), surrogate-escaped when they are not UTF-8, which
    would fail to encode. Those octets and control characters become "?"
    (rfc5321:4.2 textstring: printable text; UTF-8 under SMTPUTF8)."""
    return reply.encode("utf-8", "replace").decode("utf-8").translate(_CONTROLS)


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
        data_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        # The whole DATA phase; the command timeout (aiosmtpd's) if not given.
        self._data_timeout: float = data_timeout or self._timeout_duration
        # loop.time() by which the message must be in; None outside DATA.
        self._data_deadline: float | None = None
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
                self._release_address()  # counted by ImplicitTLS
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")
                transport.close()
                return
            per_ip = self._connections.per_ip
            if per_ip is not None and self._counted_ip is None:
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

    def _release_address(self) -> None:
        if self._counted_ip is not None and self._connections.per_ip is not None:
            self._connections.per_ip.release(self._counted_ip)
        self._counted_ip = None

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._connections.open.discard(self)
            self._counted = False
            self._release_address()
        if self.session is None:  # refused in connection_made
            return
        super().connection_lost(error)

    # -- timeouts -------------------------------------------------------------

    def _timeout_cb(self) -> None:
        """aiosmtpd's timer went off: say why (421 4.4.2), then close."""
        if self.busy:
            # The message is in and being stored: its reply comes first.
            self._reset_timeout()
            return
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        in_data = self._data_deadline is not None
        peer = self.session.peer if self.session is not None else None
        log_event(
            log,
            "timeout",
            logging.INFO,
            client=str(peer[0]) if isinstance(peer, tuple) else str(peer),
            phase="data" if in_data else "command",
        )
        reply = DATA_TIMEOUT if in_data else IDLE_TIMEOUT
        transport.write(reply.format(self.hostname).encode() + b"\r\n")
        # close() sends what is buffered (the 421) before the FIN / close_notify.
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self._data_deadline is not None:
            # Inside DATA, each arrival restarts the silence timer (rfc5321:
            # 4.5.3.2.7), but never beyond the DATA deadline.
            remaining = self._data_deadline - self.loop.time()
            self._reset_timeout(max(0.001, min(self._timeout_duration, remaining)))
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        self._data_deadline = self.loop.time() + self._data_timeout
        self._reset_timeout(min(self._timeout_duration, self._data_timeout))
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_deadline = None
            if self.transport is not None:
                # Back to waiting for a command, with the whole command timeout.
                self._reset_timeout()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        # The final dot is in: the DATA deadline is over. Checking and storing
        # the message (DNS lookups for SPF/DKIM/DMARC, fsync) is our time,
        # not the client's: no timeout cuts it short.
        self._data_deadline = None
        self.busy = True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self.busy = False

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "surrogateescape")
        # rfc2034:3: no enhanced code on the greeting and the EHLO/HELO lines.
        if self._greeted and not self._in_ehlo:
            status = replies.with_enhanced_code(status)
        self._greeted = True
        await super().push(_printable(status))

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

    async def smtp_STARTTLS(self, arg: str) -> None:
        if not arg and self.tls_context:
            # rfc3207:4.2 — what the client pipelined after STARTTLS is
            # discarded (aiosmtpd empties the buffer again once TLS is up).
            # Reading it now also resumes a transport that a flood of more
            # than two lines paused: the handshake would never arrive.
            buffered = len(getattr(self._reader, "_buffer", b""))
            if buffered:
                await self._reader.read(buffered)
                peer = self.session.peer if self.session is not None else None
                log_event(
                    log,
                    "starttls_pipelined",
                    logging.WARNING,
                    client=str(peer[0]) if isinstance(peer, tuple) else str(peer),
                    octets=buffered,
                )
        await super().smtp_STARTTLS(arg)

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
