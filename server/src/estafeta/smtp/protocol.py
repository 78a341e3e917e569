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
  message a byte at a time cannot hold a connection for ever);
- the DATA phase read by a sans-IO reader (``smtp.data``) into one buffer,
  within a byte budget shared by every SMTP connection (``[limits]
  data_memory``: ``452 4.3.1`` after the final dot when it is spent);
- an error limit with tarpitting per client address (``smtp.errors``:
  ``[limits] smtp_soft_error_limit``, ``smtp_hard_error_limit``,
  ``smtp_error_delay``);
- ``503 5.5.1`` to a STARTTLS on a connection that has TLS already;
- on the MX, the connection screen (``smtp.screen``, given as ``screen=``):
  a multi-line greeting whose final line comes after ``[screen]
  greeting_pause`` while DNS lists and reverse DNS are checked; an early
  talker or a listed client gets a 554 instead of the final line, and HELO
  signals are judged at EHLO/HELO. ``session.screen`` carries the result
  (None on submission).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    TLSSetupException,
    auth_mechanism,
    syntax,
)

from estafeta import tlsbinding
from estafeta.auth import scramlogin
from estafeta.auth.connections import (
    ADDRESS,
    CROWDED_TIMEOUT,
    EVICTED_SMTP,
    PreauthPool,
    Ticket,
    report,
)
from estafeta.auth.guard import Authenticator, ConnectionsPerIP, LoginResult
from estafeta.auth.sasl import (
    MalformedSASL,
    SASLCancelled,
    SASLError,
    decode_plain,
)
from estafeta.auth.scram import MAX_MESSAGE, SCRAM_SHA_256, SCRAM_SHA_256_PLUS
from estafeta.log import log_event
from estafeta.smtp import replies
from estafeta.smtp.data import DataBudget, DataReader, DataStatus
from estafeta.smtp.errors import TOO_MANY_ERRORS, ErrorLimiter, counts_as_error
from estafeta.smtp.screen import HELO, PREGREET, Screen, ScreenResult, pregreet_reply
from estafeta.starttls import drain_pipelined
from estafeta.tlsclose import SHUTDOWN_SECONDS, close_promptly

log = logging.getLogger("estafeta.smtp")
T = TypeVar("T")

# Checks a user name and password from a client address (Authenticator.login).
Authenticate = Callable[[str, str, str], Awaitable[LoginResult]]
# rfc4468 BURL: (URL, the account logged in) -> the octets it names, or None. Blocking.
BurlResolver = Callable[[str, str], bytes | None]
# Failed AUTH attempts before the connection is closed.
MAX_AUTH_FAILURES = 3


class _Answered(Exception):
    """aiosmtpd answered the client already (a "*" or bad base64 to a 334)."""


# rfc4954:6 — 454 4.7.0 "Temporary authentication failure": the client (or
# the account, from an unknown address) is locked out for a while.
AUTH_LOCKED = "454 4.7.0 Too many failed authentications, try later"
TOO_MANY_FROM_ADDRESS = "421 4.7.0 Too many connections from your address"
# rfc5321:4.5.3.2.7 server timeout; rfc5321:3.8 a server closing the
# connection says 421 first; rfc3463:3.5 X.4.2 "bad connection".
IDLE_TIMEOUT = "421 4.4.2 {} Error: timeout exceeded"
DATA_TIMEOUT = "421 4.4.2 {} Error: the message took too long to arrive"
# rfc5321:3.1 — after a 554 greeting the server waits for QUIT, answering
# 503 to anything else: for at most this long, and this many commands.
REFUSED_LINGER = 10.0
REFUSED_COMMANDS = 5
REFUSED_SEQUENCE = "503 5.5.1 Bad sequence of commands: service unavailable, send QUIT"
# The screen's DNS checks end on their own timeouts; this is the backstop.
SCREEN_BACKSTOP = 5.0
# The stream's limit while DATA is read (see smtp_DATA).
DATA_STREAM_LIMIT = 16 * 1024
# Replies after which the connection closes: never held (see _may_hold).
_LAST_WORDS = ("220", "221", "421", "502 5.5.1 Too many unrecognized")

# rfc5321:4.1.2 the common form of a MAIL/RCPT path: "<" Dot-string "@"
# Domain ">", then the parameters. aiosmtpd parses every path with the
# email package's RFC 5322 parser (7 % of the event loop's time in an
# ingest profile); a path of this form gives the same address and rest
# (test_smtp_getaddr.py compares both), anything else goes to aiosmtpd.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*)>[ \t]*([^ \t(].*)?\Z",
    re.ASCII | re.DOTALL,
)


@dataclass
class Connections:
    """The open connections of all SMTP listeners, and their cap."""

    limit: int
    open: set[SMTPProtocol] = field(default_factory=set)
    # Shared with the IMAP and POP3 listeners; None: no per-address cap.
    per_ip: ConnectionsPerIP | None = None
    # Connections not logged in yet (every port-25 session, submission before
    # AUTH), shared with IMAP and POP3; None: no such budget.
    preauth: PreauthPool | None = None

    def shutdown(self) -> None:
        """Say goodbye (rfc5321:3.8) to every connection not in a delivery."""
        for protocol in list(self.open):
            transport = protocol.transport
            if not protocol.busy and isinstance(transport, asyncio.WriteTransport):
                protocol._flush_held()
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
        # Its place among the connections not logged in yet, likewise.
        self._ticket: Ticket | None = None
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
        timeout = self._handshake_timeout
        preauth = self._connections.preauth
        if preauth is not None:
            admission = preauth.admit(ip)
            report(preauth, admission, ip, "submissions")
            if admission.ticket is None:
                self._release()
                transport.abort()
                return
            self._ticket = admission.ticket
            self._ticket.evict = transport.abort  # during the handshake: just closed
            if self._ticket.crowded:
                timeout = min(timeout, CROWDED_TIMEOUT)
            if admission.victim is not None:
                admission.victim.evict()
        self._task = asyncio.get_running_loop().create_task(self._start_tls(transport, timeout))

    def _release(self) -> None:
        if self._ip is not None and self._connections.per_ip is not None:
            self._connections.per_ip.release(self._ip)
        self._ip = None
        if self._ticket is not None:
            self._ticket.leave()
            self._ticket = None

    async def _start_tls(self, transport: asyncio.Transport, handshake_timeout: float) -> None:
        protocol = self._make()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport,
                protocol,
                self._context,
                server_side=True,
                ssl_handshake_timeout=handshake_timeout,
                ssl_shutdown_timeout=SHUTDOWN_SECONDS,
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
        protocol._preauth, self._ticket = self._ticket, None
        protocol.connection_made(tls)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only called before start_tls takes the transport over (the task
        # has not run yet): it never will.
        if self._task is not None:
            self._task.cancel()
        self._release()


# Replies held for one pipelined group at most (rfc2920:3.2), then sent.
_MAX_HELD = 64

_DATA_REFUSALS = {
    DataStatus.LINE_TOO_LONG: replies.DATA_LINE_TOO_LONG,
    DataStatus.TOO_MUCH_DATA: replies.DATA_TOO_BIG,
    DataStatus.NO_MEMORY: replies.DATA_NO_MEMORY,
}

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

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.match(arg)
        if match is None:
            try:
                return super()._getaddr(arg)
            except IndexError:
                # The email package's parser on a path cut short ("<"): a
                # syntax error (aiosmtpd answers 553 5.1.3), not a 451 with a
                # traceback in the log.
                return None, None
        address = match[1]
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, match[2] or ""

    def __init__(
        self,
        handler: Any,
        *,
        connections: Connections,
        allow_auth: bool = False,
        authenticate: Authenticate | None = None,
        scram: Authenticator | None = None,
        burl: BurlResolver | None = None,
        implicit_tls: bool = False,
        data_timeout: float | None = None,
        data_memory: DataBudget | None = None,
        errors: ErrorLimiter | None = None,
        screen: Screen | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        # The whole DATA phase; the command timeout (aiosmtpd's) if not given.
        self._data_timeout: float = data_timeout or self._timeout_duration
        # loop.time() by which the message must be in; None outside DATA.
        self._data_deadline: float | None = None
        self._authenticate_user = authenticate
        # SCRAM-SHA-256(-PLUS) logins (estafeta.auth.scramlogin); None: not offered.
        self._scram = scram
        # rfc4468 BURL (submission only): resolves a URLAUTH URL for the
        # account logged in, in a thread; None: BURL is not offered.
        self._burl = burl
        self._implicit_tls = implicit_tls
        if implicit_tls:
            # The whole connection is TLS (port 465, rfc8314:3.3): AUTH may go ahead.
            self._auth_require_tls = False
        self._auth_failures = 0
        self._connections = connections
        self._counted = False
        self._counted_ip: str | None = None
        # Its place among the connections not logged in yet (until AUTH).
        self._preauth: Ticket | None = None
        # True while a DATA hook stores a message: shutdown waits for it.
        self.busy = False
        self._allow_auth = allow_auth
        self._greeted = False
        self._in_ehlo = False
        # Message bytes in memory, shared by all SMTP connections (None: no cap).
        self._data_memory = data_memory
        self._burl_held = 0  # octets of BURL parts reserved in data_memory
        # Error replies of this session, and the per-client tarpit.
        self._errors = errors
        self._error_count = 0
        self._closing_for_errors = False
        self._held: list[bytes] = []  # replies held for a pipelined group (see _may_hold)
        self._deadline = 0.0  # when the connection times out (see _reset_timeout)
        self._timer_armed = False  # _timeout_handle has not fired and is not cancelled
        # The connection screen (MX only) and what it found: session.screen.
        self._screen = screen
        self.screen_result: ScreenResult | None = None
        # True until the final greeting line is sent: any octet from the
        # client meanwhile makes it an early talker (set in data_received).
        self._before_greeting = screen is not None
        self._talked = asyncio.Event()
        self._helo_refusal_logged = False
        # While the screen holds the client (bounded by the pause, the DNS
        # timeouts and the refusal's linger), the idle timer waits too.
        self._screening = False
        self._signals: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._counted:
            # A new TCP connection (not the STARTTLS upgrade of one).
            assert isinstance(transport, asyncio.WriteTransport)
            if len(self._connections.open) >= self._connections.limit:
                self._release_address()  # counted by ImplicitTLS
                transport.write(replies.TOO_MANY_CONNECTIONS.encode() + b"\r\n")
                transport.close()
                return
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            per_ip = self._connections.per_ip
            if per_ip is not None and self._counted_ip is None:
                if not per_ip.acquire(ip):
                    transport.write(TOO_MANY_FROM_ADDRESS.encode() + b"\r\n")
                    transport.close()
                    return
                self._counted_ip = ip
            preauth = self._connections.preauth
            if preauth is not None and self._preauth is None:
                admission = preauth.admit(ip)
                report(preauth, admission, ip, "submission" if self._allow_auth else "smtp")
                if admission.ticket is None:
                    self._release_address()
                    full = admission.refusal != ADDRESS
                    refusal = replies.TOO_MANY_CONNECTIONS if full else TOO_MANY_FROM_ADDRESS
                    transport.write(refusal.encode() + b"\r\n")
                    transport.close()
                    return
                self._preauth = admission.ticket
                if admission.victim is not None:
                    admission.victim.evict()
            if self._preauth is not None:
                self._preauth.evict = self._evict
                self._preauth.busy = self._in_transaction
            self._connections.open.add(self)
            self._counted = True
        super().connection_made(transport)
        if self.session is not None:
            # aiosmtpd makes a new Session after STARTTLS: the result stays.
            self.session.screen = self.screen_result  # type: ignore[attr-defined]

    def _release_address(self) -> None:
        if self._counted_ip is not None and self._connections.per_ip is not None:
            self._connections.per_ip.release(self._counted_ip)
        self._counted_ip = None
        if self._preauth is not None:
            self._preauth.leave()

    def _in_transaction(self) -> bool:
        """MAIL given (the envelope keeps its sender until the transaction
        ends), DATA in progress or a message being stored: not evicted."""
        envelope = self.envelope
        return self.busy or (envelope is not None and envelope.mail_from is not None)

    def _evict(self) -> None:
        """Too many connections not logged in: this one makes room (421, close)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        original = self._original_transport
        if original is not None and self.session is not None and self.session.ssl is None:
            # Inside the STARTTLS handshake: no reply can get through.
            assert isinstance(original, asyncio.Transport)
            original.abort()
            return
        assert isinstance(transport, asyncio.WriteTransport)
        self._flush_held()
        transport.write(EVICTED_SMTP)
        transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self._release_burl()
        if self._signals is not None and not self._signals.done():
            self._signals.cancel()
        if self._counted:
            self._connections.open.discard(self)
            self._counted = False
            self._release_address()
        if self.session is None:  # refused in connection_made
            return
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self.session is None:  # refused in connection_made: closing already
            return False
        if self._before_greeting and self._talked.is_set():
            # An early talker that closed its side: its 554 still goes out
            # (the screen closes the connection after it).
            return True
        return super().eof_received()

    # -- the connection screen (MX) ----------------------------------------------

    async def _handle_client(self) -> None:
        """aiosmtpd sends the greeting and reads commands here; there is no
        hook before the greeting, so the screen runs first and aiosmtpd's
        loop (whose first act is the final "220 " line) only if it passes."""
        if self._screen is not None:
            self._screening = True
            try:
                passed = await self._run_screen(self._screen)
            except asyncio.CancelledError:
                # The connection went away (or EOF) during the screen: as
                # aiosmtpd does when its own loop is cancelled.
                self._writer.close()
                raise
            finally:
                self._screening = False
            if not passed:
                return
            # The idle timeout counts from the greeting, not from the connect.
            self._reset_timeout()
            if self._screen.checks_later and self.screen_result is not None:
                # Signals (FCrDNS) the greeting did not wait for.
                self._signals = asyncio.ensure_future(
                    self._check_signals(self._screen, self.screen_result)
                )
        self._before_greeting = False
        await super()._handle_client()

    def _set_screen(self, result: ScreenResult) -> None:
        self.screen_result = result
        if self.session is not None:
            self.session.screen = result  # type: ignore[attr-defined]

    async def _run_screen(self, screen: Screen) -> bool:
        """Hold the client in a multi-line greeting while it is checked.

        rfc5321:4.2 — the greeting may span lines: "220-" and our name now,
        the final "220 " line once the pause is over and the checks are in.
        A client that sends anything before the final line (rfc5321:4.3.1:
        it waits for the greeting) is an early talker: 554 and the close. A
        listed client gets the 554 instead of the final line (rfc5321:3.1).
        A well-behaved client waits the greeting pause, or the DNS checks if
        they take longer (they run during the pause); a trusted one, or one
        that passed recently with no DNS work to do, not at all. False: the
        connection is refused and ends.
        """
        ip = self._client_ip()
        if screen.is_trusted(ip):
            self._set_screen(ScreenResult(ip, trusted=True))
            return True
        self._set_screen(ScreenResult(ip))
        pause = screen.greeting_pause(ip)
        if pause <= 0 and not screen.checks_at_connect:
            return True
        started = asyncio.get_running_loop().time()
        if screen.checks_at_connect:
            # The DNS checks come before any greeting line: a refusal must be
            # the greeting itself ("554 ...", rfc5321:3.1), never a "554" after
            # a "220-" line (rfc5321:4.2.1: one reply, one code). Bytes sent
            # meanwhile are early talk too (rfc5321:4.3.1).
            found = await self._watch(self._check_client(screen, ip))
            if found is None:
                return await self._early_talker(screen, ip)
            self._set_screen(found)
            if found.reject is not None:
                await self._refuse(found.reject, found.reason or "other", linger=True)
                return False
            if found.allowlisted:
                return True  # an allow zone vouches for it: no pause
        # What is left of the pause after the checks (they ran inside it).
        remaining = pause - (asyncio.get_running_loop().time() - started)
        if pause > 0 and remaining > 0:
            if not await self._send_line(f"220-{self.hostname} {self.__ident__}"):
                return False
            if await self._watch(asyncio.sleep(remaining, True)) is None:
                return await self._early_talker(screen, ip)
        if pause > 0:
            screen.passed(ip)
        return True

    async def _watch(self, work: Coroutine[Any, Any, T]) -> T | None:
        """``work``'s result, or None if the client talked first (``work``
        is then cancelled)."""
        talked = asyncio.ensure_future(self._talked.wait())
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({talked, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (talked, task):
                if not future.done():
                    future.cancel()
        if self._talked.is_set() or not task.done() or task.cancelled():
            return None
        return task.result()

    async def _early_talker(self, screen: Screen, ip: str) -> bool:
        screen.failed(ip)
        await self._refuse(pregreet_reply(ip), PREGREET, linger=False)
        return False

    async def _check_client(self, screen: Screen, ip: str) -> ScreenResult:
        """``screen.check_client``, within a backstop; never raises: a
        failure here lets the client in (our trouble is not its fault)."""
        try:
            async with asyncio.timeout(SCREEN_BACKSTOP + screen.dns_timeout):
                return await screen.check_client(ip)
        except Exception as exc:  # logged; never a traceback to the client
            self._screen_failed(ip, exc)
            return ScreenResult(ip)

    async def _check_signals(self, screen: Screen, result: ScreenResult) -> None:
        """``screen.check_signals`` beside the session; a failure is logged
        and changes nothing for the client."""
        try:
            await screen.check_signals(result)
        except Exception as exc:  # logged; the session goes on
            self._screen_failed(result.ip, exc)

    def _screen_failed(self, ip: str, exc: Exception) -> None:
        log_event(
            log,
            "screen_failed",
            logging.WARNING,
            client=ip,
            error=f"{type(exc).__name__}: {exc}"[:200],
        )

    async def _send_line(self, line: str) -> bool:
        """One reply line as it is (no enhanced code); False if the client is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        try:
            await super().push(_printable(line))
        except ConnectionError:
            return False
        return True

    async def _refuse(self, reply: str, reason: str, *, linger: bool) -> None:
        """Refuse the session: the reply, logged and counted once, then the
        close; with ``linger``, first wait (briefly) for the QUIT that
        rfc5321:3.1 says a 554 greeting waits for."""
        ip = self._client_ip()
        log_event(
            log, "connection_rejected", logging.WARNING, client=ip, reason=reason, reply=reply
        )
        self._before_greeting = not linger  # an early talker's octets stay dropped
        if await self._send_line(reply) and linger:
            try:
                async with asyncio.timeout(REFUSED_LINGER):
                    for _ in range(REFUSED_COMMANDS):
                        line = await self._reader.readuntil(b"\n")
                        if line.strip().upper() == b"QUIT":
                            await self._send_line(f"221 2.0.0 {self.hostname} Bye")
                            break
                        await self._send_line(REFUSED_SEQUENCE)
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                pass
            except asyncio.LimitOverrunError:
                pass
        if self.transport is not None:
            self.transport.close()

    async def _helo_refused(self, hostname: str) -> bool:
        """The screen's HELO checks (signals; in reject mode, the refusal)."""
        screen, result = self._screen, self.screen_result
        if screen is None or result is None or not hostname:
            return False
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        own = [str(sockname[0])] if isinstance(sockname, tuple) else []
        reply = screen.check_helo(result, hostname, self.hostname, own)
        if reply is None:
            return False
        if not self._helo_refusal_logged:
            self._helo_refusal_logged = True
            log_event(
                log,
                "connection_rejected",
                logging.WARNING,
                client=self._client_ip(),
                reason=HELO,
                reply=reply,
            )
        await self.push(reply)
        return True

    # -- timeouts -------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's: the connection times out ``duration`` (the command
        timeout by default) from now. aiosmtpd cancels its timer and makes a
        new one at every command and every DATA chunk; here the deadline
        moves and the one timer stays, unless the new deadline is earlier:
        when the timer fires before the deadline it is set again for it."""
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is not None and self._timer_armed and handle.when() <= deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(deadline, self._timer_fired)
        self._timer_armed = True

    def _timer_fired(self) -> None:
        self._timer_armed = False
        # asyncio may run a timer up to its clock resolution early: within a
        # millisecond of the deadline is the deadline.
        if self._deadline - self.loop.time() > 0.001:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)
            self._timer_armed = True
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        """aiosmtpd's timer went off: say why (421 4.4.2), then close."""
        if self.busy or self._screening:
            # The message is in and being stored: its reply comes first. Or
            # the screen holds the client: it ends on its own bounds.
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
        self._flush_held()
        transport.write(reply.format(self.hostname).encode() + b"\r\n")
        # close() sends what is buffered (the 421) before the FIN / close_notify.
        transport.close()

    def data_received(self, data: bytes) -> None:
        if self._before_greeting:
            # rfc5321:4.3.1 — the client waits for the greeting. What an
            # early talker sends is dropped: it gets a 554 and the close.
            self._talked.set()
            return
        if self._data_deadline is not None:
            # Inside DATA, each arrival restarts the silence timer (rfc5321:
            # 4.5.3.2.7), but never beyond the DATA deadline.
            remaining = self._data_deadline - self.loop.time()
            self._reset_timeout(max(0.001, min(self._timeout_duration, remaining)))
        super().data_received(data)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """rfc5321:4.1.1.4 — aiosmtpd's checks and replies, but the message is
        read in chunks by ``DataReader`` into one buffer within the shared
        byte budget (aiosmtpd keeps a bytearray per line: about 44 bytes of
        memory per byte of a message of empty lines)."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        if getattr(self.envelope, "burl_parts", None):
            # rfc4468:3.2 BURL parts go on with BURL (or BDAT), not DATA.
            await self.push("503 5.5.1 BURL transaction in progress: end it with BURL ... LAST")
            return
        reader = DataReader(size_limit=self.data_size_limit, budget=self._data_memory)
        self._data_deadline = self.loop.time() + self._data_timeout
        self._reset_timeout(min(self._timeout_duration, self._data_timeout))
        # aiosmtpd's stream limit is one command line (1001 octets), and the
        # stream stops reading the socket past twice that: a 4 KiB message
        # came in LimitOverrunError pieces, with the socket paused and
        # resumed (two epoll_ctl calls, each letting the event loop's thread
        # lose the GIL) for each. During DATA the limit is DATA_STREAM_LIMIT
        # (asyncio.StreamReader keeps it in _limit, which readuntil and flow
        # control both use). What the stream holds unread stays bounded as
        # before: by one read of the socket (256 KiB, asyncio's) plus twice
        # the limit; what the reader holds counts against [limits] data_memory.
        stream = self._reader
        stream._limit = max(stream._limit, DATA_STREAM_LIMIT)  # type: ignore[attr-defined]
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            if await self._receive_data(reader):
                await self._end_of_data(reader)
        finally:
            stream._limit = self.line_length_limit  # type: ignore[attr-defined]
            # Every way out (reply sent, disconnect, timeout, cancel): the
            # budget gets back what this transfer held.
            reader.close()
            self._data_deadline = None
            if self.transport is not None:
                # Back to waiting for a command, with the whole command timeout.
                self._reset_timeout()

    async def _receive_data(self, reader: DataReader) -> bool:
        """Feed the reader until the final dot; False if the connection ended.

        Reading up to ``reader.needed()`` (CRLF "." CRLF, or what completes
        it) never goes past the end of the data, so pipelined commands
        after it stay in the stream; a longer stretch without one comes in
        pieces of what has arrived (LimitOverrunError past the stream's
        limit, DATA_STREAM_LIMIT during DATA). Just after a CRLF, one octet tells whether the
        line may be the end: that keeps the pieces large even when every
        line ends in "." (a search for "." CRLF would stop at each line).
        """
        stream = self._reader
        while not reader.done:
            needed = reader.needed()
            try:
                try:
                    if needed == b".\r\n":
                        chunk = await stream.readexactly(1)
                    else:
                        chunk = await stream.readuntil(needed)
                except asyncio.LimitOverrunError as exc:
                    chunk = await stream.read(exc.consumed)
            except asyncio.IncompleteReadError:
                chunk = b""
            except asyncio.CancelledError:
                # The connection went away during DATA (as aiosmtpd does).
                self._writer.close()
                raise
            if not chunk:  # end of the stream
                self._writer.close()
                return False
            reader.receive_data(chunk)
        # Unreachable data after the dot would be a bug in the reader's use.
        assert not reader.trailing
        return True

    async def _end_of_data(self, reader: DataReader) -> None:
        assert self.envelope is not None
        status = reader.status
        if status is not DataStatus.OK:
            self.envelope = self._create_envelope()
            if status is DataStatus.NO_MEMORY:
                self._log_no_memory(reader.size)
            await self.push(_DATA_REFUSALS[status])
            return
        await self._take_message(reader.take_message(), reader.close)

    def _log_no_memory(self, size: int) -> None:
        """A message refused for [limits] data_memory (DATA or BURL)."""
        log_event(
            log,
            "data_refused",
            logging.WARNING,
            client=self._client_ip(),
            reason="data memory",
            size=size,
        )

    async def _take_message(self, original_content: bytes, release: Callable[[], None]) -> None:
        """The message of the transaction is in (DATA's final dot, BURL
        LAST): hand it to the handler and answer; ``release`` gives back the
        memory it was held in (after the handler, before the reply)."""
        assert self.envelope is not None
        content: str | bytes = original_content
        if self._decode_data:
            try:
                content = original_content.decode(
                    "utf-8" if self.enable_SMTPUTF8 else "ascii",
                    "surrogateescape" if self.enable_SMTPUTF8 else "strict",
                )
            except UnicodeDecodeError:
                self.envelope = self._create_envelope()
                await self.push("500 Error: strict ASCII mode")
                return
        self.envelope.content = content
        self.envelope.original_content = original_content
        del content, original_content
        status = await self._call_handler_hook("DATA")
        # The transaction is over: its memory goes back before the reply.
        self.envelope = self._create_envelope()
        release()
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_BURL(self, arg: str) -> None:
        """rfc4468:3.2 BURL <url> [LAST]: the message (or the next part of
        it) is what a URLAUTH IMAP URL names, fetched from the mailbox
        store; LAST ends the transaction as DATA's final dot does."""
        if self._burl is None:
            await self.push('500 Error: command "BURL" not recognized')
            return
        if await self.check_helo_needed() or await self.check_auth_needed("BURL"):
            return
        assert self.envelope is not None
        words = arg.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1].upper() != "LAST"):
            await self.push("501 Syntax: BURL absolute-URI [LAST]")
            return
        if not self.envelope.rcpt_tos:
            await self.push("554 5.5.0 No recipients have been specified")  # rfc4468:6
            return
        account = self.authenticated_user
        assert account is not None  # check_auth_needed
        # rfc4468:3.3 submit+ URLs only for the account logged in (checked
        # by the resolver with the URL's access identifier).
        data = await asyncio.to_thread(self._burl, words[0], account)
        if data is None:
            self.envelope = self._create_envelope()  # rfc4468:3.2 the whole transaction fails
            await self.push("554 5.7.0 IMAP URL authorization failed")
            return
        parts: bytearray = getattr(self.envelope, "burl_parts", bytearray())
        if self.data_size_limit and len(parts) + len(data) > self.data_size_limit:
            self.envelope = self._create_envelope()
            await self.push("554 5.3.4 Message too big for system")  # rfc4468:6
            return
        # The parts held count against [limits] data_memory, as DATA's do:
        # many connections each holding a message's worth between BURLs.
        if self._data_memory is not None:
            if not self._data_memory.reserve(len(data)):
                self.envelope = self._create_envelope()
                self._log_no_memory(len(parts) + len(data))
                await self.push(replies.DATA_NO_MEMORY)
                return
            self._burl_held += len(data)
        parts += data
        del data
        if len(words) == 1:
            self.envelope.burl_parts = parts  # type: ignore[attr-defined]
            await self.push("250 2.5.0 Waiting for additional BURL commands")  # rfc4468:6
            return
        message = bytes(parts)
        parts.clear()
        await self._take_message(message, self._release_burl)

    def _release_burl(self) -> None:
        """Give back to [limits] data_memory what BURL parts held."""
        held, self._burl_held = getattr(self, "_burl_held", 0), 0
        if held and self._data_memory is not None:
            self._data_memory.release(held)

    def _create_envelope(self) -> Envelope:
        # Every end of a transaction (RSET, MAIL, HELO, failure, the reply
        # to BURL LAST) makes a new envelope: BURL parts held go with it.
        self._release_burl()
        return super()._create_envelope()

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
        if self._closing_for_errors:
            return  # "too many errors" was the last word
        transport = self.transport
        if transport is None or transport.is_closing():
            # Closed already (aiosmtpd goes on with pipelined commands after
            # its own closes): nothing can be sent, and a TLS transport
            # would raise.
            return
        error = self._errors is not None and counts_as_error(status)
        if error:
            await self._count_error()
        text = _printable(status)
        self._held.append(text.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n")
        if not self._may_hold(text):
            await self._send_held()
        if error and self._errors is not None and self._error_count >= self._errors.hard_limit:
            await self._too_many_errors()

    def _may_hold(self, text: str) -> bool:
        """Whether a reply may wait for the next ones: rfc2920:3.2 lets a
        server keep the replies to pipelined commands and send them as one
        unit, and while the next command is already read in full it is
        answered before anything could be read from the client. Never a
        reply the client must see before it goes on (3xx: 354, 334; 220
        before the TLS handshake) or the last words (221, 421, and
        aiosmtpd's 502 before it closes on too many unknown commands: held,
        it was never sent)."""
        if text[:1] not in ("2", "4", "5") or text.startswith(_LAST_WORDS):
            return False
        if len(self._held) >= _MAX_HELD:
            return False
        return b"\n" in getattr(self._reader, "_buffer", b"")

    async def _send_held(self) -> None:
        """Send the replies held so far, in one write."""
        self._flush_held()
        await self._writer.drain()

    def _flush_held(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            transport = self.transport
            if transport is not None and not transport.is_closing():
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(data)

    def _client_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    async def _count_error(self) -> None:
        """One more error reply: past the soft limit of the client, it waits
        (in line with the client's other connections)."""
        assert self._errors is not None
        self._error_count += 1
        ip = self._client_ip()
        await self._errors.wait(ip, self._errors.record(ip))

    async def _too_many_errors(self) -> None:
        """rfc5321:3.8 — 421 and close, like Postfix's smtpd_hard_error_limit."""
        self._closing_for_errors = True
        log_event(
            log,
            "smtp_error_limit",
            logging.WARNING,
            client=self._client_ip(),
            errors=self._error_count,
        )
        self._flush_held()
        await super().push(_printable(TOO_MANY_ERRORS.format(self.hostname)))
        if self.transport is not None:
            self.transport.close()
        if self._handler_coroutine is not None:
            # Nothing more is read (as after QUIT).
            self._handler_coroutine.cancel()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            if await self._helo_refused(hostname):
                return
            await super().smtp_EHLO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_ehlo = True
        try:
            if await self._helo_refused(hostname):
                return
            await super().smtp_HELO(hostname)
        finally:
            self._in_ehlo = False

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls_active:
            # rfc3207:4 — a client MUST NOT start TLS on a TLS session; it is
            # a command out of sequence (rfc5321:4.2.4, 503). aiosmtpd would
            # answer 220 and stack a second TLS layer that fails.
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        if not arg and self.tls_context:
            # rfc3207:4.2 — what the client pipelined after STARTTLS is
            # discarded (aiosmtpd empties the buffer again once TLS is up).
            # Reading it now also resumes a transport that a flood of more
            # than two lines paused: the handshake would never arrive. The
            # socket is drained too, before the 220 (estafeta.starttls).
            discarded = await drain_pipelined(self._reader)
            if discarded:
                log_event(
                    log,
                    "starttls_pipelined",
                    logging.WARNING,
                    client=self._client_ip(),
                    octets=discarded,
                )
        try:
            await super().smtp_STARTTLS(arg)
            if self._tls_protocol is not None:
                close_promptly(self._tls_protocol)
        except TLSSetupException as exc:
            # The client's handshake failed: aiosmtpd closes the connection
            # (HandlerBase.handle_exception logs no traceback for it).
            log_event(
                log,
                "starttls_failed",
                logging.INFO,
                client=self._client_ip(),
                reason=str(exc.__cause__ or exc)[:200],
            )
            raise

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

    # rfc4954:4 with rfc5802 / rfc7677 / rfc9266 (aiosmtpd's public auth_ hook).
    @auth_mechanism(SCRAM_SHA_256)
    async def auth_SCRAM_SHA_256(self, _: Any, args: list[str]) -> AuthResult:
        return await self._auth_scram(SCRAM_SHA_256, args)

    @auth_mechanism(SCRAM_SHA_256_PLUS)
    async def auth_SCRAM_SHA_256_PLUS(self, _: Any, args: list[str]) -> AuthResult:
        return await self._auth_scram(SCRAM_SHA_256_PLUS, args)

    def _scram_mechanisms(self) -> list[str]:
        """What this connection offers: -PLUS only with tls-exporter data."""
        if self._scram is None:
            return []
        return scramlogin.mechanisms(tlsbinding.exporter(self._ssl_object()))

    async def _auth_scram(self, mechanism: str, args: list[str]) -> AuthResult:
        binding = tlsbinding.exporter(self._ssl_object())
        if self._scram is None or mechanism not in scramlogin.mechanisms(binding):
            await self.push("504 5.5.4 Unrecognized authentication type")
            return AuthResult(success=False, handled=True)
        peer = self._peer_ip()

        async def challenge(data: bytes) -> bytes:
            try:
                blob = await self.challenge_auth(data)  # "334 " + base64; "*", bad base64: 501
            except ValueError:  # asyncio: over the reader's line limit (dropped)
                raise MalformedSASL("SASL response too long") from None
            if blob is MISSING:
                raise _Answered
            if len(blob) > MAX_MESSAGE:
                raise MalformedSASL("SASL response too long")
            return bytes(blob)

        try:
            outcome = await scramlogin.login(
                self._scram,
                mechanism,
                args[1] if len(args) > 1 else None,
                challenge,
                protocol="smtp",
                peer=peer,
                channel_binding=binding,
                final_challenge=True,  # rfc4954:4: as a 334 challenge, "" back
            )
        except _Answered:
            return AuthResult(success=False, handled=True)
        except SASLCancelled:
            await self.push("501 5.7.0 Auth aborted")
            return AuthResult(success=False, handled=True)
        except MalformedSASL as exc:
            await self.push(f"501 5.5.2 {exc}")
            return AuthResult(success=False, handled=True)
        except SASLError as exc:
            await self.push(f"535 5.7.8 {exc}")
            return AuthResult(success=False, handled=True)
        return await self._login_result(outcome.user, outcome.result, peer)

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

    def _peer_ip(self) -> str:
        return str(self.session.peer[0]) if self.session and self.session.peer else "?"

    async def _check_password(self, user: str, password: str) -> AuthResult:
        peer = self._peer_ip()
        result = LoginResult(None)
        if self._authenticate_user is not None:
            # Delays after a failure and lockouts are the guard's business.
            result = await self._authenticate_user(user, password, peer)
        return await self._login_result(user, result, peer)

    async def _login_result(self, user: str, result: LoginResult, peer: str) -> AuthResult:
        """Answer a decided login (PLAIN, LOGIN, SCRAM)."""
        account = result.address
        if account is None:
            self._auth_failures += 1
            if not result.locked:
                log_event(
                    log,
                    "auth",
                    logging.WARNING,
                    protocol="smtp",
                    user=user[:100],
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
        if self._preauth is not None:
            self._preauth.leave()  # logged in: no longer counted as pre-auth
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

    def _ssl_object(self) -> ssl.SSLObject | None:
        if self._implicit_tls and self.transport is not None:
            ssl_object: ssl.SSLObject | None = self.transport.get_extra_info("ssl_object")
            return ssl_object
        if self._tls_protocol is None:
            return None
        return self._tls_protocol._extra.get("ssl_object")

    def tls_info(self) -> str | None:
        """'TLSv1.3 TLS_AES_256_GCM_SHA384' on a TLS connection."""
        ssl_object = self._ssl_object()
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()

    def ehlo_extensions(self, responses: list[str]) -> list[str]:
        """Adjust the EHLO keyword list aiosmtpd built."""
        lines = [line[4:] for line in responses]
        if not self._allow_auth:
            lines = [line for line in lines if not line.upper().startswith("AUTH")]
        else:
            # SCRAM only where this connection can do it (-PLUS: tls-exporter).
            offered = self._scram_mechanisms()
            lines = [
                " ".join(
                    word
                    for word in line.split()
                    if word.upper() not in (SCRAM_SHA_256, SCRAM_SHA_256_PLUS) or word in offered
                )
                if line.upper().startswith("AUTH ")
                else line
                for line in lines
            ]
        lines = [line for line in lines if line.upper() != "HELP"]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        if self._burl is not None:
            # rfc4468:3.1, 3.3: URLAUTH IMAP URLs of this server's mailboxes;
            # rfc4468:4 asks for 8BITMIME too (aiosmtpd offers it).
            lines.append("BURL imap")
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]
