"""One POP3 connection (rfc1939) over the store's INBOX.

States: AUTHORIZATION -> TRANSACTION -> UPDATE (rfc1939:3). Messages marked
with DELE are removed only in UPDATE, after QUIT; a dropped connection
removes nothing. One POP3 session per maildrop at a time (rfc1939:8,
rfc2449:8 IN-USE); IMAP sessions on the same account carry on and see the
removals as expunges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass, field

from estafeta.auth import Accounts
from estafeta.auth.connections import Ticket
from estafeta.auth.guard import BUSY, Authenticator
from estafeta.auth.sasl import MalformedSASL, SASLError, decode_plain
from estafeta.imap.session import discard_buffered, start_tls
from estafeta.log import log_event
from estafeta.pop3.parser import Command, Eof, Error, NeedData, Parser, RawLine
from estafeta.store import Store, StoreError
from estafeta.store.reader import ListingRow

log = logging.getLogger("estafeta.pop3")

AUTHORIZATION, TRANSACTION, UPDATE, CLOSED = range(4)
# Defaults of Settings.login_timeout / idle_timeout ([limits] login_timeout,
# pop3_idle_timeout). rfc1939:3: an inactivity autologout timer of at least
# 10 minutes once logged in; the AUTHORIZATION state gets a total deadline.
AUTH_TIMEOUT = 60.0
IDLE_TIMEOUT = 10 * 60.0
# Longest STLS handshake (asyncio's default), within the login time left.
TLS_HANDSHAKE_TIMEOUT = 60.0
MAX_FAILED_LOGINS = 3
MAX_ERRORS = 20
CHUNK = 256 * 1024
# Lines that start with "." after any line ending get one more "." (rfc1939:3).
_DOT_LINES = re.compile(rb"(^|\n)\.")


@dataclass
class Locks:
    """Maildrops held by POP3 sessions of this server (rfc1939:8)."""

    held: set[str] = field(default_factory=set)


@dataclass
class Settings:
    hostname: str
    allow_plaintext: bool = False
    # Seconds from connecting to logging in, in all (a trickle of bytes does
    # not extend it); then the autologout timer while silent (rfc1939:3).
    login_timeout: float = AUTH_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


@dataclass
class Message:
    uid: int
    size: int
    file: str
    deleted: bool = False


def dot_stuff(data: bytes) -> bytes:
    """Byte-stuff a message for a multi-line response and terminate it."""
    stuffed = _DOT_LINES.sub(rb"\1..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        accounts: Accounts,
        authenticator: Authenticator,
        store: Store,
        settings: Settings,
        locks: Locks,
        tls: ssl.SSLContext | None,
        implicit_tls: bool,
        preauth: Ticket | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.accounts = accounts
        self.authenticator = authenticator
        self.store = store
        self.settings = settings
        self.locks = locks
        self.tls = tls
        self.tls_active = implicit_tls
        self.parser = Parser()
        self.state = AUTHORIZATION
        self.user_arg: str | None = None
        self.user: str | None = None
        self.messages: list[Message] = []
        self.uidvalidity = 0
        self.failed_logins = 0
        self.errors = 0
        self.utf8 = False
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._event_loop = asyncio.get_running_loop()
        self.login_deadline = self._event_loop.time() + settings.login_timeout
        # Its place among the connections not logged in yet (server.py).
        self.preauth = preauth if preauth is not None else Ticket("", 0.0)

    # -- output --------------------------------------------------------------

    def ok(self, text: str = "") -> None:
        self.writer.write(f"+OK {text}".rstrip().encode() + b"\r\n")

    def err(self, text: str, code: str = "") -> None:
        # rfc2449:8 response codes, e.g. -ERR [IN-USE] ...
        prefix = f"[{code}] " if code else ""
        self.writer.write(f"-ERR {prefix}{text}".encode() + b"\r\n")

    def lines(self, lines: list[str]) -> None:
        body = "".join(f"{line}\r\n" for line in lines)
        self.writer.write(body.encode() + b".\r\n")

    # -- main loop -----------------------------------------------------------

    async def run(self) -> None:
        try:
            self.ok(f"{self.settings.hostname} estafeta POP3 ready")
            await self.writer.drain()
            await self._loop()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except TimeoutError:
            # rfc1939:3 autologout: a last -ERR says why, then the connection
            # closes without entering UPDATE (nothing is deleted).
            with contextlib.suppress(ConnectionError, TimeoutError):
                if self.state == AUTHORIZATION:
                    self.err("Autologout: not logged in in time")
                else:
                    self.err("Autologout: idle for too long")
                await asyncio.wait_for(self.writer.drain(), 5)
        finally:
            self._unlock()
            self.writer.close()

    def shutdown(self) -> None:
        if self.state != CLOSED:
            self.err("Server shutting down", "SYS/TEMP")
            self.state = CLOSED
        self.writer.close()

    def _unlock(self) -> None:
        if self.user is not None and self.state in (TRANSACTION, UPDATE, CLOSED):
            self.locks.held.discard(self.user)

    def login_time_left(self) -> float:
        return self.login_deadline - self._event_loop.time()

    async def _read(self) -> bytes:
        if self.state == AUTHORIZATION:
            timeout = self.login_time_left()
            if timeout <= 0:
                raise TimeoutError
        else:
            timeout = self.settings.idle_timeout
        return await asyncio.wait_for(self.reader.read(65536), timeout)

    async def _next(self) -> Command | RawLine | Error | Eof:
        while True:
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                await self.writer.drain()
                self.parser.receive_data(await self._read())
                continue
            return event

    async def _loop(self) -> None:
        while self.state not in (UPDATE, CLOSED):
            event = await self._next()
            if isinstance(event, Eof):
                return  # rfc1939:6: no QUIT, no UPDATE: nothing is deleted
            if isinstance(event, Error):
                self.err(event.text)
                self.errors += 1
                if self.errors > MAX_ERRORS:
                    self.err("Too many errors, closing")
                    return
                continue
            if isinstance(event, RawLine):  # pragma: no cover — only after expect_line
                self.err("Unexpected line")
                continue
            handler = _HANDLERS[self.state].get(event.name)
            if handler is None:
                self.err(f"{event.name} is not allowed now")
                continue
            try:
                await handler(self, event)
            except StoreError as exc:
                log.error("store error in POP3 %s: %s", event.name, exc)
                self.err("Temporary failure, try again later", "SYS/TEMP")
            except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                raise
            except Exception:
                log.exception("internal error in POP3 %s", event.name)
                self.err("Internal error", "SYS/TEMP")
        await self.writer.drain()

    # -- helpers ----------------------------------------------------------

    def plaintext_ok(self) -> bool:
        return self.tls_active or self.settings.allow_plaintext

    def message(self, arg: str) -> Message | None:
        """The message numbered ``arg`` (rfc1939:5: not if marked deleted)."""
        if not arg.isdigit():
            self.err(f"Invalid message number {arg[:20]!r}")
            return None
        n = int(arg)
        if not 1 <= n <= len(self.messages):
            self.err(f"No message {n}")
            return None
        message = self.messages[n - 1]
        if message.deleted:
            self.err(f"Message {n} is deleted")
            return None
        return message

    def uidl(self, message: Message) -> str:
        # rfc1939:7: unique and persistent; UIDVALIDITY.UID never repeats.
        return f"{self.uidvalidity}.{message.uid}"

    async def login(self, user: str, password: str) -> None:
        if not self.plaintext_ok():
            self.err("Log in after STLS", "AUTH")
            return
        # The shared guard delays failures and refuses locked-out clients.
        result = await self.authenticator.login(user, password, "pop3", self.peer)
        address = result.address
        if address is None:
            self.failed_logins += 1
            if result.reason == BUSY:
                self.err("Too many logins at once, try again later", "SYS/TEMP")
            elif result.locked:
                # rfc3206:4: SYS/TEMP, a temporary condition, try again later;
                # [AUTH] (rfc3206:5) would make the client ask for a new password.
                self.err("Too many failed logins, try again later", "SYS/TEMP")
            else:
                log_event(log, "login_failed", logging.WARNING, client=self.peer, user=user)
                self.err("Invalid credentials", "AUTH")  # rfc3206:5
            if self.failed_logins >= MAX_FAILED_LOGINS:
                self.state = CLOSED
            return
        if address in self.locks.held:
            self.err("Maildrop is in use by another POP3 session", "IN-USE")  # rfc2449:8.1.1
            return
        self.locks.held.add(address)
        self.user = address
        # Logged in: no longer one of the connections not logged in yet.
        self.preauth.leave()
        try:
            self.uidvalidity, rows = await asyncio.to_thread(_maildrop, self.store, address)
        except BaseException:
            self.locks.held.discard(address)
            self.user = None
            raise
        self.messages = [Message(uid, size, file) for uid, size, file in rows]
        self.state = TRANSACTION
        log_event(log, "login", client=self.peer, user=address, tls=self.tls_active)
        total = sum(m.size for m in self.messages)
        self.ok(f"Logged in, {len(self.messages)} messages ({total} octets)")


def _maildrop(store: Store, address: str) -> tuple[int, list[ListingRow]]:
    """The INBOX's UIDVALIDITY and (uid, size, file) of its messages."""
    with store.reader(address) as reader:
        box = reader.mailbox("INBOX")
        assert box is not None
        return box.uidvalidity, reader.listing(box.id)


async def cmd_capa(s: Session, cmd: Command) -> None:
    caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
            "LOGIN-DELAY 0", "UTF8", "IMPLEMENTATION estafeta"]  # fmt: skip
    if s.state == AUTHORIZATION:
        if s.tls is not None and not s.tls_active:
            caps.append("STLS")
        if s.plaintext_ok():
            caps += ["USER", "SASL PLAIN"]
    s.ok("Capability list follows")
    s.lines(caps)


async def cmd_stls(s: Session, cmd: Command) -> None:
    if s.tls is None or s.tls_active:
        s.err("STLS is not available")
        return
    s.ok("Begin TLS negotiation")
    await s.writer.drain()
    # rfc2595:4 — anything pipelined after STLS is discarded: what the
    # parser holds and what is still in the stream's buffer.
    s.parser = Parser()
    dropped = await discard_buffered(s.reader)
    if dropped:
        log_event(log, "starttls_pipelined", logging.WARNING, client=s.peer, octets=dropped)
    await start_tls(
        s.writer,
        s.tls,
        max(1.0, min(TLS_HANDSHAKE_TIMEOUT, s.login_time_left())),
        peer=s.peer,
        protocol="pop3",
    )
    s.tls_active = True


async def cmd_user(s: Session, cmd: Command) -> None:
    if not s.plaintext_ok():
        s.err("Log in after STLS", "AUTH")
        return
    s.user_arg = cmd.args[0]
    s.ok("Send the password")


async def cmd_pass(s: Session, cmd: Command) -> None:
    if s.user_arg is None:
        s.err("USER first")
        return
    user, s.user_arg = s.user_arg, None
    await s.login(user, cmd.args[0])


async def cmd_apop(s: Session, cmd: Command) -> None:
    s.err("APOP is not supported (it needs clear-text passwords on the server)")


async def cmd_auth(s: Session, cmd: Command) -> None:
    if not cmd.args:
        s.ok("Mechanisms follow")  # rfc5034:4 (as in rfc1734 usage)
        s.lines(["PLAIN"] if s.plaintext_ok() else [])
        return
    if cmd.args[0].upper() != "PLAIN":
        s.err(f"Unsupported mechanism {cmd.args[0][:20]}")
        return
    if not s.plaintext_ok():
        s.err("Authenticate after STLS", "AUTH")
        return
    response = cmd.args[1] if len(cmd.args) > 1 else None
    if response is None:
        s.writer.write(b"+ \r\n")
        s.parser.expect_line()
        event = await s._next()
        if not isinstance(event, RawLine):
            s.err("Expected a SASL response")
            return
        response = event.line.decode("ascii", "replace").strip()
    if response == "*":
        s.err("Authentication cancelled")  # rfc5034:4
        return
    try:
        authcid, password = decode_plain(response)
    except MalformedSASL as exc:
        s.err(str(exc))
        return
    except SASLError as exc:
        s.err(str(exc), "AUTH")
        return
    await s.login(authcid, password)


async def cmd_utf8(s: Session, cmd: Command) -> None:
    s.utf8 = True  # rfc6856:2: our responses and mail are UTF-8 clean already
    s.ok("UTF8 enabled")


async def cmd_quit(s: Session, cmd: Command) -> None:
    if s.state == AUTHORIZATION:
        s.ok("Bye")
        s.state = CLOSED
        return
    # rfc1939:6 UPDATE: remove what DELE marked, then release the maildrop.
    s.state = UPDATE
    doomed = [m.uid for m in s.messages if m.deleted]
    assert s.user is not None
    if doomed:
        try:
            await asyncio.to_thread(s.store.remove, s.user, "INBOX", doomed)
        except StoreError:
            s.err("Some deleted messages not removed", "SYS/TEMP")
            return
    s.ok(f"Bye, {len(doomed)} messages deleted")


async def cmd_stat(s: Session, cmd: Command) -> None:
    live = [m for m in s.messages if not m.deleted]
    s.ok(f"{len(live)} {sum(m.size for m in live)}")


async def cmd_list(s: Session, cmd: Command) -> None:
    if cmd.args:
        message = s.message(cmd.args[0])
        if message is not None:
            s.ok(f"{cmd.args[0].lstrip('0') or '0'} {message.size}")
        return
    s.ok("Scan listing follows")
    s.lines([f"{n} {m.size}" for n, m in enumerate(s.messages, 1) if not m.deleted])


async def cmd_uidl(s: Session, cmd: Command) -> None:
    if cmd.args:
        message = s.message(cmd.args[0])
        if message is not None:
            s.ok(f"{int(cmd.args[0])} {s.uidl(message)}")
        return
    s.ok("Unique-id listing follows")
    s.lines([f"{n} {s.uidl(m)}" for n, m in enumerate(s.messages, 1) if not m.deleted])


async def _send_message(s: Session, message: Message, top: int | None) -> None:
    assert s.user is not None
    path = s.store.account_dir(s.user) / message.file
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        # Expunged by an IMAP session since we listed the maildrop.
        s.err("Message was deleted by another session", "SYS/TEMP")
        return
    if top is not None:
        header_end = data.find(b"\r\n\r\n")
        if header_end < 0:
            data = data if data.endswith(b"\r\n") else data + b"\r\n"
        else:
            body = data[header_end + 4 :]
            lines = body.split(b"\r\n")
            kept = b"\r\n".join(lines[:top]) + (b"\r\n" if top and len(lines) > top else b"")
            data = data[: header_end + 4] + kept
        s.ok("Top of message follows")
    else:
        s.ok(f"{message.size} octets")
    stuffed = dot_stuff(data)
    for start in range(0, len(stuffed), CHUNK):
        s.writer.write(stuffed[start : start + CHUNK])
        await s.writer.drain()


async def cmd_retr(s: Session, cmd: Command) -> None:
    message = s.message(cmd.args[0])
    if message is not None:
        await _send_message(s, message, None)


async def cmd_top(s: Session, cmd: Command) -> None:
    message = s.message(cmd.args[0])
    if message is None:
        return
    if not cmd.args[1].isdigit():
        s.err("TOP needs a number of lines")
        return
    await _send_message(s, message, int(cmd.args[1]))


async def cmd_dele(s: Session, cmd: Command) -> None:
    message = s.message(cmd.args[0])
    if message is not None:
        message.deleted = True
        s.ok(f"Message {int(cmd.args[0])} deleted")


async def cmd_noop(s: Session, cmd: Command) -> None:
    s.ok()


async def cmd_rset(s: Session, cmd: Command) -> None:
    for message in s.messages:
        message.deleted = False
    s.ok(f"{len(s.messages)} messages")


_AUTHZ = {
    "CAPA": cmd_capa,
    "STLS": cmd_stls,
    "USER": cmd_user,
    "PASS": cmd_pass,
    "APOP": cmd_apop,
    "AUTH": cmd_auth,
    "UTF8": cmd_utf8,
    "QUIT": cmd_quit,
}
_TRANS = {
    "CAPA": cmd_capa,
    "STAT": cmd_stat,
    "LIST": cmd_list,
    "UIDL": cmd_uidl,
    "RETR": cmd_retr,
    "TOP": cmd_top,
    "DELE": cmd_dele,
    "NOOP": cmd_noop,
    "RSET": cmd_rset,
    "QUIT": cmd_quit,
}
_HANDLERS = {AUTHORIZATION: _AUTHZ, TRANSACTION: _TRANS, UPDATE: {}, CLOSED: {}}
