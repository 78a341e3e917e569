"""One ManageSieve connection (rfc5804): the asyncio side of the sans-IO parser.

States (rfc5804:2): not authenticated -> authenticated (AUTHENTICATE) ->
not authenticated again (UNAUTHENTICATE, rfc5804:2.14.1), or logout. The
parser's ``COMMANDS`` table says which command is valid where; a command
that raises ``No`` (or a ``ScriptError`` of the store) is answered with NO,
anything unexpected with NO (TRYLATER) and a log line: never a traceback to
the client.

Logins go through the same ``Authenticator`` as IMAP, POP3 and SMTP (one
login guard: lockouts, delays; app passwords need the "sieve" scope; an
account with TOTP logs in with app passwords only). SASL PLAIN is offered
only under TLS unless ``[auth] allow_plaintext``; before STARTTLS the SASL
capability is empty (rfc5804:1.7) and AUTHENTICATE answers
NO (ENCRYPT-NEEDED) (rfc5804:1.3: policy requires encryption for this
mechanism).

Timeouts: a total deadline to log in (``[limits] login_timeout``; a trickle
of bytes does not extend it), then an idle autologout of
``[limits] imap_idle_timeout`` (rfc5804:1.2: at least 30 minutes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from estafeta.auth import scramlogin
from estafeta.auth.connections import Ticket
from estafeta.auth.guard import BUSY, Authenticator, LoginResult
from estafeta.auth.sasl import (
    MalformedSASL,
    SASLCancelled,
    SASLError,
    decode_plain,
    decode_response,
)
from estafeta.imap.session import start_tls
from estafeta.log import log_event
from estafeta.managesieve import parser as p
from estafeta.managesieve.parser import (
    AUTHENTICATED,
    COMMANDS,
    NOT_AUTHENTICATED,
    Command,
    Eof,
    NeedData,
    ParseError,
    Parser,
    Response,
)
from estafeta.sieve.scripts import ScriptError, Scripts
from estafeta.starttls import drain_pipelined

log = logging.getLogger("estafeta.managesieve")

LOGOUT = "logout"
# Defaults of Settings.login_timeout / idle_timeout.
AUTH_TIMEOUT = 60.0
IDLE_TIMEOUT = 30 * 60.0  # rfc5804:1.2: no less than 30 minutes once authenticated
TLS_HANDSHAKE_TIMEOUT = 60.0
MAX_FAILED_LOGINS = 3
MAX_ERRORS = 20
# Commands before logging in: CAPABILITY, STARTTLS and a few tries; a scanner
# is cut off.
MAX_COMMANDS_BEFORE_AUTH = 30
# A PUTSCRIPT literal may exceed max_script_size by this much and still be
# read (the store then answers NO (QUOTA/MAXSIZE) with the sizes); beyond, the
# parser drops it unread.
LITERAL_SLACK = 1024
# rfc5804:1.3 codes a ScriptError carries through as a response code.
RESPONSE_CODES = frozenset(
    {"NONEXISTENT", "ACTIVE", "ALREADYEXISTS", "QUOTA/MAXSCRIPTS", "QUOTA/MAXSIZE"}
)


class No(Exception):  # named after the response it becomes
    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


@dataclass
class Settings:
    hostname: str
    allow_plaintext: bool = False  # AUTHENTICATE PLAIN without TLS (tests only)
    login_timeout: float = AUTH_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_script_size: int = 64 * 1024
    max_redirects: int = 4  # rfc5804:1.7 MAXREDIRECTS
    extensions: tuple[str, ...] = ()  # rfc5804:1.7 SIEVE


Handler = Callable[["Session", Command], Awaitable[None]]


class Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        authenticator: Authenticator,
        scripts: Scripts,
        settings: Settings,
        tls: ssl.SSLContext | None,
        preauth: Ticket | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.authenticator = authenticator
        self.scripts = scripts
        self.settings = settings
        self.tls = tls
        self.tls_active = False
        self.parser = self._new_parser()
        self.state = NOT_AUTHENTICATED
        self.user: str | None = None
        self.failed_logins = 0
        self.errors = 0
        self.commands_before_auth = 0
        self._loop = asyncio.get_running_loop()
        self.login_deadline = self._loop.time() + settings.login_timeout
        # Its place among the connections not logged in yet (server.py).
        self.preauth = preauth if preauth is not None else Ticket("", 0.0)
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)

    def _new_parser(self) -> Parser:
        return Parser(max_literal=self.settings.max_script_size + LITERAL_SLACK)

    # -- output -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _safe_drain(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.drain(), 5)

    def plaintext_ok(self) -> bool:
        return self.tls_active or self.settings.allow_plaintext

    def scram_mechanisms(self) -> list[str]:
        """SCRAM-SHA-256, and -PLUS where tls-exporter data can be had (rfc9266)."""
        return scramlogin.mechanisms(self.binding())

    def binding(self) -> bytes | None:
        return scramlogin.binding(self.writer) if self.tls_active else None

    def capabilities(self) -> list[tuple[str, str | None]]:
        """rfc5804:1.7; they change only after STARTTLS, AUTHENTICATE and
        UNAUTHENTICATE."""
        caps: list[tuple[str, str | None]] = [
            ("IMPLEMENTATION", "estafeta"),
            # Empty only while STARTTLS is offered (rfc5804:1.7).
            ("SASL", " ".join([*self.scram_mechanisms(), "PLAIN"]) if self.plaintext_ok() else ""),
            ("SIEVE", " ".join(self.settings.extensions)),
        ]
        if self.state == NOT_AUTHENTICATED and self.tls is not None and not self.tls_active:
            caps.append(("STARTTLS", None))
        caps.append(("MAXREDIRECTS", str(self.settings.max_redirects)))
        if self.user is not None:
            caps.append(("OWNER", self.user))
        caps += [("UNAUTHENTICATE", None), ("VERSION", "1.0")]
        return caps

    # -- main loop -------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.send(
                p.capability_lines(self.capabilities())
                + p.ok(f"{self.settings.hostname} estafeta ManageSieve ready")
            )
            await self.writer.drain()
            await self._loop_commands()
            await self._safe_drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except TimeoutError:
            # rfc5804:1.2: BYE, then the server hangs up.
            if self.state == NOT_AUTHENTICATED:
                self.send(p.bye("Autologout; not logged in in time"))
            else:
                self.send(p.bye("Autologout; idle for too long"))
            await self._safe_drain()
        finally:
            self.writer.close()

    def shutdown(self) -> None:
        """Server stopping: BYE (rfc5804:1.2) and close."""
        if self.state != LOGOUT:
            self.send(p.bye("Server shutting down", "TRYLATER"))
            self.state = LOGOUT
        self.writer.close()

    def login_time_left(self) -> float:
        return self.login_deadline - self._loop.time()

    async def _read(self) -> bytes:
        if self.state == NOT_AUTHENTICATED:
            timeout = self.login_time_left()
            if timeout <= 0:
                raise TimeoutError
        else:
            timeout = self.settings.idle_timeout
        return await asyncio.wait_for(self.reader.read(65536), timeout)

    async def next_event(self) -> Command | Response | ParseError | Eof:
        while True:
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                await self.writer.drain()
                self.parser.receive_data(await self._read())
                continue
            return event

    async def _loop_commands(self) -> None:
        while self.state != LOGOUT:
            event = await self.next_event()
            if isinstance(event, Eof):
                return
            if isinstance(event, ParseError):
                self._parse_error(event)
            elif isinstance(event, Response):  # pragma: no cover - only after expect_response
                self._error(p.no("Unexpected SASL response"))
            else:
                await self._dispatch(event)

    def _error(self, reply: bytes) -> None:
        """A NO for a client error; too many of them end the session."""
        self.send(reply)
        self.errors += 1
        if self.errors > MAX_ERRORS:
            self.send(p.bye("Too many errors, closing"))
            self.state = LOGOUT

    def _parse_error(self, event: ParseError) -> None:
        if event.fatal:
            self.send(p.bye(event.text))
            self.state = LOGOUT
            return
        # rfc5804:1.3 QUOTA/MAXSIZE for a script over the limit; for other
        # commands (a huge name, a SASL response) just the NO.
        script = event.command in ("PUTSCRIPT", "CHECKSCRIPT")
        code = event.code if script and self.state == AUTHENTICATED else ""
        self._error(p.no(event.text, code))
        self._count_before_auth()

    def _count_before_auth(self) -> None:
        if self.state == NOT_AUTHENTICATED:
            self.commands_before_auth += 1
            if self.commands_before_auth > MAX_COMMANDS_BEFORE_AUTH:
                self.send(p.bye("Too many commands without logging in"))
                self.state = LOGOUT

    async def _dispatch(self, command: Command) -> None:
        self._count_before_auth()
        if self.state == LOGOUT:
            return
        if self.state not in COMMANDS[command.name].states:
            # rfc5804:2: "Servers MUST reject all other commands with a NO".
            if self.state == NOT_AUTHENTICATED:
                self._error(p.no(f"{command.name}: authenticate first"))
            else:
                self._error(p.no(f"{command.name} is not allowed once authenticated"))
            return
        try:
            await _HANDLERS[command.name](self, command)
        except No as exc:
            self.send(p.no(str(exc), exc.code))
        except ScriptError as exc:
            self.send(p.no(exc.message, exc.code if exc.code in RESPONSE_CODES else ""))
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            raise
        except OSError as exc:
            log_event(
                log, "script_store_error", logging.ERROR, command=command.name, error=str(exc)
            )
            self.send(p.no("Temporary failure, try again later", "TRYLATER"))
        except Exception:
            # Never a traceback to the client: log it, answer NO (TRYLATER).
            log.exception("internal error in ManageSieve %s", command.name)
            self.send(p.no("Internal error", "TRYLATER"))

    # -- logging in -------------------------------------------------------------

    async def login(self, user: str, password: str) -> None:
        # The shared guard delays failures and refuses locked-out clients.
        result = await self.authenticator.login(user, password, "sieve", self.peer)
        self.logged_in(result, user)

    def logged_in(
        self, result: LoginResult, user: str, mechanism: str = "", server_final: bytes | None = None
    ) -> None:
        """Answer a decided login (PLAIN, SCRAM-*); ``server_final`` goes in
        the OK's SASL response code (rfc5804:2.1)."""
        if result.address is None:
            self.failed_logins += 1
            if not result.locked:
                log_event(log, "login_failed", logging.WARNING, client=self.peer, user=user[:100])
            if self.failed_logins >= MAX_FAILED_LOGINS:
                # rfc5804:2.1 example: BYE after too many failures.
                self.send(p.bye("Too many failed authentication attempts"))
                self.state = LOGOUT
                return
            if result.reason == BUSY:
                raise No("Too many logins at once, try again later", "TRYLATER")
            if result.locked:
                # TRYLATER (rfc5804:1.3): temporary; a plain NO would tell the
                # client that the password is wrong.
                raise No("Too many failed logins, try again later", "TRYLATER")
            raise No("Invalid credentials")
        # Logged in: no longer one of the connections not logged in yet.
        self.preauth.leave()
        self.user = result.address
        self.state = AUTHENTICATED
        self.parser.set_authenticated(True)
        extra: dict[str, object] = {"mechanism": mechanism} if mechanism else {}
        log_event(
            log,
            "login",
            logging.INFO,
            client=self.peer,
            user=self.user,
            tls=self.tls_active,
            **extra,
        )
        # PLAIN and SCRAM negotiate no security layer: no capabilities after
        # the OK (rfc5804:2.1, response-authenticate).
        if server_final is None:
            self.send(p.ok("Logged in"))
        else:
            self.send(p.ok("Logged in", "SASL", base64.b64encode(server_final)))


def _name(value: bytes | int) -> str:
    """A script name argument as text (rfc5804:1.6: UTF-8)."""
    assert isinstance(value, bytes)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise No("Script names must be UTF-8 (rfc5804:1.6)") from None


def _script(value: bytes | int) -> str:
    """A script argument as text; rfc5228:1 scripts are UTF-8. The error
    names the line:column of the first bad octet (columns count characters)."""
    assert isinstance(value, bytes)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = value.rfind(b"\n", 0, exc.start) + 1
        line = value.count(b"\n", 0, exc.start) + 1
        column = len(value[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise No(f"{line}:{column}: not valid UTF-8") from None


def _user(s: Session) -> str:
    assert s.user is not None
    return s.user


async def _store(call: Callable[[], object]) -> object:
    return await asyncio.to_thread(call)


# ---------------------------------------------------------------------------
# Commands: ``async def cmd_x(session, command)``; each sends its response,
# or raises No / ScriptError.
# ---------------------------------------------------------------------------


async def cmd_capability(s: Session, cmd: Command) -> None:  # rfc5804:2.4
    s.send(p.capability_lines(s.capabilities()) + p.ok("CAPABILITY completed"))


async def cmd_logout(s: Session, cmd: Command) -> None:  # rfc5804:2.3
    s.send(p.ok("Logout completed"))
    s.state = LOGOUT  # commands after LOGOUT are ignored


async def cmd_noop(s: Session, cmd: Command) -> None:  # rfc5804:2.13
    if cmd.args:
        assert isinstance(cmd.args[0], bytes)
        s.send(p.ok("Done", "TAG", cmd.args[0]))
    else:
        s.send(p.ok("NOOP completed"))


async def cmd_starttls(s: Session, cmd: Command) -> None:  # rfc5804:2.2
    if s.tls is None or s.tls_active:
        raise No("STARTTLS is not available")
    # Anything the client pipelined after STARTTLS is discarded (rfc5804:2.2:
    # it must not send more before the negotiation completes): what the
    # parser holds, the stream's buffer and what the socket still holds,
    # before the OK (after it, the ClientHello comes).
    dropped = s.parser.buffered
    s.parser = s._new_parser()
    dropped += await drain_pipelined(s.reader, dropped)
    s.send(p.ok("Begin TLS negotiation now"))
    await s.writer.drain()
    if dropped:
        log_event(log, "starttls_pipelined", logging.WARNING, client=s.peer, octets=dropped)
    await start_tls(
        s.writer,
        s.tls,
        max(1.0, min(TLS_HANDSHAKE_TIMEOUT, s.login_time_left())),
        peer=s.peer,
        protocol="managesieve",
    )
    s.tls_active = True
    # rfc5804:2.2: the capabilities again (without STARTTLS), then OK.
    s.send(p.capability_lines(s.capabilities()) + p.ok("TLS negotiation successful"))


async def cmd_authenticate(s: Session, cmd: Command) -> None:  # rfc5804:2.1
    mechanism = cmd.args[0]
    assert isinstance(mechanism, bytes)
    name = mechanism.decode("ascii", "replace").upper()
    binding = s.binding()
    if name != "PLAIN" and name not in scramlogin.mechanisms(binding):
        raise No(f"Unsupported mechanism {mechanism[:20].decode('ascii', 'replace')}")
    if not s.plaintext_ok():
        raise No("Authenticate after STARTTLS", "ENCRYPT-NEEDED")
    initial = cmd.args[1] if len(cmd.args) > 1 else None  # the initial response
    assert initial is None or isinstance(initial, bytes)

    async def respond(challenge: bytes) -> bytes:
        """rfc5804:2.1: a challenge is a string with the base64 data (PLAIN
        starts with an empty one); the client's string."""
        s.send(p.string(base64.b64encode(challenge)) + b"\r\n")
        s.parser.expect_response()
        event = await s.next_event()
        if isinstance(event, Eof):
            raise ConnectionError("closed during AUTHENTICATE")
        if isinstance(event, ParseError):
            if event.fatal:
                s._parse_error(event)
                raise _Answered
            raise MalformedSASL(event.text)
        if not isinstance(event, Response):  # pragma: no cover - the parser gives no other
            raise MalformedSASL("Expected a SASL response")
        return event.value

    async def challenge(data: bytes) -> bytes:
        return decode_response(await respond(data))

    outcome = None
    try:
        if name == "PLAIN":
            response = await respond(b"") if initial is None else initial
            if response == b"*":
                raise SASLCancelled("Authentication cancelled")
            # Not ASCII: not base64 either, so a malformed PLAIN response.
            authcid, password = decode_plain(response.decode("ascii", "replace"))
        else:  # SCRAM-SHA-256(-PLUS) (rfc5802, rfc9266)
            outcome = await scramlogin.login(
                s.authenticator,
                name,
                initial,
                challenge,
                protocol="sieve",
                peer=s.peer,
                channel_binding=binding,
                final_challenge=False,  # it goes in the OK (rfc5804:2.1)
            )
    except _Answered:
        return
    except SASLCancelled:
        raise No("Authentication cancelled") from None  # rfc5804:2.1: MUST be a NO
    except SASLError as exc:  # malformed or refused: NO either way (rfc5804:2.1)
        raise No(str(exc)) from None
    if outcome is None:
        await s.login(authcid, password)
    else:
        s.logged_in(outcome.result, outcome.user, name, outcome.server_final)


class _Answered(Exception):
    """The session answered already (a fatal parse error)."""


async def cmd_unauthenticate(s: Session, cmd: Command) -> None:  # rfc5804:2.14.1
    log_event(log, "logout", client=s.peer, user=s.user)
    s.user = None
    s.state = NOT_AUTHENTICATED
    s.parser.set_authenticated(False)
    # A fresh login deadline and budget, as for a new connection.
    s.login_deadline = s._loop.time() + s.settings.login_timeout
    s.commands_before_auth = 0
    s.send(p.ok("Not authenticated any more"))


async def cmd_havespace(s: Session, cmd: Command) -> None:  # rfc5804:2.5
    name = _name(cmd.args[0])
    size = cmd.args[1]
    assert isinstance(size, int)
    user = _user(s)
    await _store(lambda: s.scripts.have_space(user, name, size))
    s.send(p.ok("Putscript would succeed"))


async def cmd_putscript(s: Session, cmd: Command) -> None:  # rfc5804:2.6
    name = _name(cmd.args[0])
    text = _script(cmd.args[1])
    user = _user(s)
    changed = await _store(lambda: s.scripts.put(user, name, text))
    log_event(log, "sieve_script", action="put", user=user, script=name, changed=changed)
    s.send(p.ok("Script stored"))


async def cmd_checkscript(s: Session, cmd: Command) -> None:  # rfc5804:2.12
    text = _script(cmd.args[0])
    await _store(lambda: s.scripts.check(text))  # no quota check (rfc5804:2.12)
    s.send(p.ok("Script is valid"))


async def cmd_listscripts(s: Session, cmd: Command) -> None:  # rfc5804:2.7
    user = _user(s)
    scripts = await asyncio.to_thread(s.scripts.list, user)
    s.send(p.script_lines(scripts) + p.ok("Listscripts completed"))


async def cmd_setactive(s: Session, cmd: Command) -> None:  # rfc5804:2.8
    name = _name(cmd.args[0])  # "" disables the active script
    user = _user(s)
    changed = await _store(lambda: s.scripts.activate(user, name or None))
    log_event(log, "sieve_script", action="activate", user=user, script=name, changed=changed)
    s.send(p.ok("Active script set" if name else "No active script"))


async def cmd_getscript(s: Session, cmd: Command) -> None:  # rfc5804:2.9
    name = _name(cmd.args[0])
    user = _user(s)
    text = await asyncio.to_thread(s.scripts.get, user, name)
    s.send(p.literal(text.encode("utf-8")) + b"\r\n" + p.ok("Getscript completed"))


async def cmd_deletescript(s: Session, cmd: Command) -> None:  # rfc5804:2.10
    name = _name(cmd.args[0])
    user = _user(s)
    await _store(lambda: s.scripts.delete(user, name))
    log_event(log, "sieve_script", action="delete", user=user, script=name)
    s.send(p.ok("Script deleted"))


async def cmd_renamescript(s: Session, cmd: Command) -> None:  # rfc5804:2.11
    old = _name(cmd.args[0])
    new = _name(cmd.args[1])
    user = _user(s)
    await _store(lambda: s.scripts.rename(user, old, new))
    log_event(log, "sieve_script", action="rename", user=user, script=old, to=new)
    s.send(p.ok("Script renamed"))


_HANDLERS: dict[str, Handler] = {
    "AUTHENTICATE": cmd_authenticate,
    "STARTTLS": cmd_starttls,
    "LOGOUT": cmd_logout,
    "CAPABILITY": cmd_capability,
    "HAVESPACE": cmd_havespace,
    "PUTSCRIPT": cmd_putscript,
    "LISTSCRIPTS": cmd_listscripts,
    "SETACTIVE": cmd_setactive,
    "GETSCRIPT": cmd_getscript,
    "DELETESCRIPT": cmd_deletescript,
    "RENAMESCRIPT": cmd_renamescript,
    "CHECKSCRIPT": cmd_checkscript,
    "NOOP": cmd_noop,
    "UNAUTHENTICATE": cmd_unauthenticate,
}
assert set(_HANDLERS) == set(COMMANDS)
