"""One POP3 connection (rfc1939) over the store's INBOX.

States: AUTHORIZATION -> TRANSACTION -> UPDATE (rfc1939:3). Messages marked
with DELE are removed only in UPDATE, after QUIT; a dropped connection
removes nothing. One POP3 session per maildrop at a time (rfc1939:8,
rfc2449:8 IN-USE): ``Locks`` within this server, or any ``MaildropLocks``
(on a cluster, leases every node honours: estafeta.cluster.leases); IMAP
sessions on the same account carry on and see the removals as expunges.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from estafeta.auth import Accounts, scramlogin
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
from estafeta.pop3.parser import Command, Eof, Error, NeedData, Parser, RawLine
from estafeta.starttls import drain_pipelined
from estafeta.store import Store, StoreError
from estafeta.store.reader import IndexReader, ListingRow

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
# Messages up to this size are read on the event loop (a page-cache read of
# a few KiB costs far less than a hop to a thread); larger ones in a thread,
# then sent CHUNK octets at a time, each stuffed on its own and drained.
INLINE_READ = 256 * 1024
CHUNK = 256 * 1024
# Responses are gathered and written together when the session waits for
# the client (pipelined commands: one write for the lot), or as soon as
# this much is pending, then drained (the transport's back-pressure).
HIGH_WATER = 64 * 1024
# A line that starts with "." after a line ending, CRLF or a bare LF (the
# store keeps messages as received: SMTP and APPEND may bring bare LFs).
_LF_DOT = re.compile(rb"\n\.")


class MaildropLocks(Protocol):
    """One POP3 session per maildrop (rfc1939:8).

    ``acquire`` is asked once a login succeeded: False if another session
    holds the maildrop; it may raise if it cannot tell (the session answers
    with a temporary failure). ``release`` is called at QUIT or disconnect
    and never raises. ``holds`` says whether the lock is still this
    session's: a lock that can be lost (a lease) must not be relied on in
    the UPDATE state once it is."""

    async def acquire(self, address: str) -> bool: ...

    def release(self, address: str) -> None: ...

    def holds(self, address: str) -> bool: ...


@dataclass
class Locks:
    """Maildrops held by POP3 sessions of this server (rfc1939:8)."""

    held: set[str] = field(default_factory=set)

    async def acquire(self, address: str) -> bool:
        if address in self.held:
            return False
        self.held.add(address)
        return True

    def release(self, address: str) -> None:
        self.held.discard(address)

    def holds(self, address: str) -> bool:
        return address in self.held


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


def stuff(data: bytes, line_start: bool = True) -> bytes:
    """Byte-stuff for a multi-line response (rfc1939:3): a "." that starts
    a line, after any line ending (CRLF or a bare LF), gets another ".".
    ``line_start``: ``data`` follows a line ending (or starts the body)."""
    # Most messages need nothing, and finding that out is the cost: a "."
    # anywhere (memchr), then an LF "." (the regex engine scans faster for
    # a two-octet needle than bytes.__contains__ on Python 3.11).
    if b"." in data and _LF_DOT.search(data) is not None:
        data = data.replace(b"\n.", b"\n..")
    if line_start and data[:1] == b".":
        data = b"." + data
    return data


def terminator(data: bytes) -> bytes:
    """What ends a multi-line response whose body ends with ``data``: a CRLF
    if the body does not end with one, then "." CRLF."""
    return b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"


def stuffed_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``stuff(data)`` in pieces made from ``size`` octets each: a "." that
    starts a piece starts a line if the previous piece ended one."""
    line_start = True
    for start in range(0, len(data), size):
        chunk = data[start : start + size]
        yield stuff(chunk, line_start)
        line_start = chunk.endswith(b"\n")


def dot_stuff(data: bytes) -> bytes:
    """Byte-stuff a message for a multi-line response and terminate it."""
    return stuff(data) + terminator(data)


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
        locks: MaildropLocks,
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
        # The account's shared reader (content() only: a file read, no SQL).
        self.content_reader: IndexReader | None = None
        # Responses not written yet (see HIGH_WATER).
        self._out: list[bytes] = []
        self._out_size = 0
        self.uidvalidity = 0
        self.failed_logins = 0
        self.errors = 0
        self.utf8 = False
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self._event_loop = asyncio.get_running_loop()
        self.login_deadline = self._event_loop.time() + settings.login_timeout
        self._read_deadline = self.login_deadline
        self._read_timer_handle: asyncio.TimerHandle | None = None
        self._reading = False
        # Its place among the connections not logged in yet (server.py).
        self.preauth = preauth if preauth is not None else Ticket("", 0.0)

    # -- output --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue output; ``flush`` writes it."""
        self._out.append(data)
        self._out_size += len(data)

    def flush(self) -> None:
        if self._out:
            out = self._out
            self._out = []
            self._out_size = 0
            self.writer.write(out[0] if len(out) == 1 else b"".join(out))

    async def flush_and_drain(self) -> None:
        self.flush()
        # drain() waits only while the transport holds more than its own
        # high-water mark; with nothing held (what was written went to the
        # socket at once, the usual case) there is nothing to wait for.
        # A closing transport is drained: that raises if the client is gone.
        transport = self.writer.transport
        if transport.get_write_buffer_size() or transport.is_closing():
            await self.writer.drain()

    def ok(self, text: str = "") -> None:
        self.send(f"+OK {text}".rstrip().encode() + b"\r\n")

    def err(self, text: str, code: str = "") -> None:
        # rfc2449:8 response codes, e.g. -ERR [IN-USE] ...
        prefix = f"[{code}] " if code else ""
        self.send(f"-ERR {prefix}{text}".encode() + b"\r\n")

    def lines(self, lines: list[str]) -> None:
        body = "".join(f"{line}\r\n" for line in lines)
        self.send(body.encode() + b".\r\n")

    # -- main loop -----------------------------------------------------------

    async def run(self) -> None:
        try:
            self.ok(f"{self.settings.hostname} estafeta POP3 ready")
            await self.flush_and_drain()
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
                await asyncio.wait_for(self.flush_and_drain(), 5)
        finally:
            self._stop_read_timer()
            self._unlock()
            # What a last command answered (before an EOF or too many
            # errors) still goes out: close() sends what is buffered.
            with contextlib.suppress(Exception):
                self.flush()
            self.writer.close()

    def shutdown(self) -> None:
        if self.state != CLOSED:
            self.err("Server shutting down", "SYS/TEMP")
            self.state = CLOSED
        with contextlib.suppress(Exception):
            self.flush()
        self.writer.close()

    def _unlock(self) -> None:
        if self.user is not None and self.state in (TRANSACTION, UPDATE, CLOSED):
            self.locks.release(self.user)

    def login_time_left(self) -> float:
        return self.login_deadline - self._event_loop.time()

    async def _read(self) -> bytes:
        now = self._event_loop.time()
        if self.state == AUTHORIZATION:
            deadline = self.login_deadline
            if deadline <= now:
                raise TimeoutError
        else:
            deadline = now + self.settings.idle_timeout
        # One timer per session, armed again only when it fires before the
        # deadline of the read then under way (see _read_timer), rather
        # than a timer made and cancelled for every command.
        self._read_deadline = deadline
        timer = self._read_timer_handle
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._read_timer_handle = self._event_loop.call_at(deadline, self._read_timer, deadline)
        self._reading = True
        try:
            return await self.reader.read(65536)
        finally:
            self._reading = False

    def _read_timer(self, when: float) -> None:
        """The timer of _read: a read still waiting at its deadline ends in
        TimeoutError (rfc1939:3 autologout); a later deadline re-arms it."""
        self._read_timer_handle = None
        if not self._reading or getattr(self.reader, "_buffer", None):
            # Busy answering, or a command has just come in (as wait_for
            # did, a read that has its data is no timeout): the next read
            # arms the timer again.
            return
        if self._read_deadline > when:
            deadline = self._read_deadline
            self._read_timer_handle = self._event_loop.call_at(deadline, self._read_timer, deadline)
            return
        self.reader.set_exception(TimeoutError())  # the waiting read() raises it

    def _stop_read_timer(self) -> None:
        if self._read_timer_handle is not None:
            self._read_timer_handle.cancel()
            self._read_timer_handle = None

    async def _next(self) -> Command | RawLine | Error | Eof:
        while True:
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                # All commands received so far are answered: one write for
                # their responses (rfc2449:6.6 PIPELINING), then wait.
                await self.flush_and_drain()
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
            if self._out_size >= HIGH_WATER:
                await self.flush_and_drain()
        await self.flush_and_drain()

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
        await self.logged_in(result, user)

    async def logged_in(self, result: LoginResult, user: str, mechanism: str = "") -> None:
        """Answer a decided login (USER/PASS, AUTH PLAIN, AUTH SCRAM-*)."""
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
                log_event(log, "login_failed", logging.WARNING, client=self.peer, user=user[:100])
                self.err("Invalid credentials", "AUTH")  # rfc3206:5
            if self.failed_logins >= MAX_FAILED_LOGINS:
                self.state = CLOSED
            return
        try:
            locked = await self.locks.acquire(address)
        except Exception as exc:  # the lock's keeper (a database) cannot say
            log_event(log, "maildrop_lock_failed", logging.ERROR, user=address, error=str(exc))
            self.err("Temporary failure, try again later", "SYS/TEMP")
            return
        if not locked:
            self.err("Maildrop is in use by another POP3 session", "IN-USE")  # rfc2449:8.1.1
            return
        self.user = address
        # Logged in: no longer one of the connections not logged in yet.
        self.preauth.leave()
        try:
            self.uidvalidity, rows, self.content_reader = await asyncio.to_thread(
                _maildrop, self.store, address
            )
        except BaseException:
            self.locks.release(address)
            self.user = None
            raise
        self.messages = [Message(uid, size, file) for uid, size, file in rows]
        self.state = TRANSACTION
        extra: dict[str, object] = {"mechanism": mechanism} if mechanism else {}
        log_event(
            log, "login", logging.INFO, client=self.peer, user=address, tls=self.tls_active, **extra
        )
        total = sum(m.size for m in self.messages)
        self.ok(f"Logged in, {len(self.messages)} messages ({total} octets)")


def _maildrop(store: Store, address: str) -> tuple[int, list[ListingRow], IndexReader]:
    """The INBOX's UIDVALIDITY, (uid, size, file) of its messages and the
    account's shared reader (for message contents)."""
    with store.reader(address) as reader:
        box = reader.mailbox("INBOX")
        assert box is not None
        listing = reader.listing(box.id)
    return box.uidvalidity, listing, store.shared_reader(address)


async def cmd_capa(s: Session, cmd: Command) -> None:
    caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
            "LOGIN-DELAY 0", "UTF8", "IMPLEMENTATION estafeta"]  # fmt: skip
    if s.state == AUTHORIZATION:
        if s.tls is not None and not s.tls_active:
            caps.append("STLS")
        if s.plaintext_ok():
            binding = scramlogin.binding(s.writer) if s.tls_active else None
            caps += ["USER", " ".join(["SASL", *scramlogin.mechanisms(binding), "PLAIN"])]
    s.ok("Capability list follows")
    s.lines(caps)


async def cmd_stls(s: Session, cmd: Command) -> None:
    if s.tls is None or s.tls_active:
        s.err("STLS is not available")
        return
    # rfc2595:4 — anything pipelined after STLS is discarded: what the
    # parser holds, the stream's buffer and what the socket still holds,
    # before the +OK (after it, the ClientHello comes).
    dropped = s.parser.buffered
    s.parser = Parser()
    dropped += await drain_pipelined(s.reader, dropped)
    s.ok("Begin TLS negotiation")
    await s.flush_and_drain()
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
    binding = scramlogin.binding(s.writer) if s.tls_active else None
    if not cmd.args:
        s.ok("Mechanisms follow")  # rfc5034:4 (as in rfc1734 usage)
        s.lines([*scramlogin.mechanisms(binding), "PLAIN"] if s.plaintext_ok() else [])
        return
    mechanism = cmd.args[0].upper()
    if mechanism != "PLAIN" and mechanism not in scramlogin.mechanisms(binding):
        s.err(f"Unsupported mechanism {cmd.args[0][:20]}")
        return
    if not s.plaintext_ok():
        s.err("Authenticate after STLS", "AUTH")
        return
    initial = cmd.args[1] if len(cmd.args) > 1 else None

    async def respond(challenge: bytes) -> str:
        """rfc5034:4: a "+" continuation with the base64 challenge; the
        client's line."""
        s.send(b"+ " + base64.b64encode(challenge) + b"\r\n")
        s.parser.expect_line()
        event = await s._next()
        if not isinstance(event, RawLine):
            raise MalformedSASL("Expected a SASL response")
        return event.line.decode("ascii", "replace").strip()

    async def challenge(data: bytes) -> bytes:
        return decode_response(await respond(data))

    outcome = None
    try:
        if mechanism == "PLAIN":
            response = await respond(b"") if initial is None else initial
            if response == "*":
                raise SASLCancelled("Authentication cancelled")
            authcid, password = decode_plain(response)
        else:  # SCRAM-SHA-256(-PLUS) (rfc5802, rfc9266)
            outcome = await scramlogin.login(
                s.authenticator,
                mechanism,
                initial,
                challenge,
                protocol="pop3",
                peer=s.peer,
                channel_binding=binding,
                final_challenge=True,  # rfc4422:5 item 5: no data with success
            )
    except SASLCancelled:
        s.err("Authentication cancelled")  # rfc5034:4
        return
    except MalformedSASL as exc:
        s.err(str(exc))
        return
    except SASLError as exc:
        s.err(str(exc), "AUTH")
        return
    if outcome is None:
        await s.login(authcid, password)
    else:
        await s.logged_in(outcome.result, outcome.user, mechanism)


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
    if doomed and not s.locks.holds(s.user):
        # The lock was lost (a lease not renewed in time): another session
        # may have the maildrop now, so nothing is removed.
        s.err("Maildrop lock lost, no messages deleted; try again", "SYS/TEMP")
        return
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
    s.send(
        b"".join(
            [b"+OK Scan listing follows\r\n"]
            + [b"%d %d\r\n" % (n, m.size) for n, m in enumerate(s.messages, 1) if not m.deleted]
            + [b".\r\n"]
        )
    )


async def cmd_uidl(s: Session, cmd: Command) -> None:
    if cmd.args:
        message = s.message(cmd.args[0])
        if message is not None:
            s.ok(f"{int(cmd.args[0])} {s.uidl(message)}")
        return
    prefix = b"%d." % s.uidvalidity  # rfc1939:7 unique-id: UIDVALIDITY.UID
    s.send(
        b"".join(
            [b"+OK Unique-id listing follows\r\n"]
            + [
                b"%d %s%d\r\n" % (n, prefix, m.uid)
                for n, m in enumerate(s.messages, 1)
                if not m.deleted
            ]
            + [b".\r\n"]
        )
    )


async def _send_message(s: Session, message: Message, top: int | None) -> None:
    reader = s.content_reader
    assert reader is not None
    try:
        # reader.content: a message not settled yet is in tmp/ (store.ingest).
        if message.size <= INLINE_READ and getattr(reader, "inline_content", True):
            data = reader.content(message.file)  # microseconds from the page cache
        else:
            data = await asyncio.to_thread(reader.content, message.file)  # a file read, no SQL
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
    if len(data) <= CHUNK:
        # Status line, body and terminator: one write, with whatever
        # pipelined responses come before and after it.
        s.send(stuff(data))
        s.send(terminator(data))
        return
    # A large message: CHUNK octets at a time, each stuffed on its own (a
    # "." at a chunk's start is a line start if the previous chunk ended
    # a line), and drained, so that the output in flight stays bounded.
    for piece in stuffed_chunks(data, CHUNK):
        s.send(piece)
        await s.flush_and_drain()
    s.send(terminator(data))


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
