"""One IMAP connection: the asyncio side of the sans-IO parser.

The session owns the stream, the timeouts and the per-connection state
(rfc9051:3: not authenticated, authenticated, selected, logout). Commands
are looked up in per-state tables and run one at a time; errors raised by
a command become a tagged NO/BAD, never a traceback to the client.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import contextvars
import datetime
import functools
import json
import logging
import re
import ssl
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from estafeta import __version__
from estafeta.auth import Accounts, urlauth
from estafeta.auth.connections import Ticket
from estafeta.auth.guard import BUSY, Authenticator, LoginResult
from estafeta.auth.sasl import MalformedSASL, SASLError, decode_plain
from estafeta.imap import acl, imapurl, resultcache, urlfetch
from estafeta.imap import commands as c
from estafeta.imap import compress as compress_module
from estafeta.imap import contexts as contexts_module
from estafeta.imap import fetch as fetch_module
from estafeta.imap import metadata as metadata_module
from estafeta.imap import notify as notify_module
from estafeta.imap import search as search_module
from estafeta.imap import sort as sort_module
from estafeta.imap import thread as thread_module
from estafeta.imap.errors import Bad, No
from estafeta.imap.listing import DELIMITER, Box, Entry, PatternLimit, list_mailboxes, lsub
from estafeta.imap.listing import cost as list_cost
from estafeta.imap.parser import (
    Command,
    Continue,
    Eof,
    NeedData,
    ParseError,
    Parser,
    RawLine,
    UnencodedName,
    encode_mutf7,
)
from estafeta.imap.recent import RecentSet, claims
from estafeta.imap.selected import Selected, Updates
from estafeta.imap.stream import ResponseStream
from estafeta.imap.types import FetchAtt, SearchKey, SequenceSet
from estafeta.log import log_event
from estafeta.message import Summary, imap_string, imap_utf8_string, summarize
from estafeta.starttls import drain_pipelined
from estafeta.store import Mailbox, Store, StoreError, shared
from estafeta.store.flags import canonical_flags
from estafeta.store.names import canonical
from estafeta.store.operations import MailboxError
from estafeta.store.reader import Condition, IndexReader
from estafeta.tlsclose import close_promptly
from estafeta.workers import SEARCHES

log = logging.getLogger("estafeta.imap")

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = range(4)
# Defaults of Settings.login_timeout / idle_timeout ([limits] login_timeout,
# imap_idle_timeout). rfc9051:5.4: an autologout timer of at least 30
# minutes once authenticated; before that a server may be quicker.
AUTH_TIMEOUT = 60.0
IDLE_TIMEOUT = 30 * 60.0
# Longest STARTTLS handshake (asyncio's default), within the login time left.
TLS_HANDSHAKE_TIMEOUT = 60.0
MAX_BAD_COMMANDS = 20
MAX_FAILED_LOGINS = 3
# Commands a client may send before it authenticates: enough for CAPABILITY,
# ID, STARTTLS and a few tries; a scanner gets cut off.
MAX_COMMANDS_BEFORE_AUTH = 30
# Octets read from the client at a time.
READ_SIZE = 65536
# Why Session._read_or_wake was interrupted.
_WOKEN_BY_TIMER, _WOKEN_BY_CHANGE = 1, 2
# The context the timers of _read_or_wake run in (they read no context variable).
_TIMER_CONTEXT = contextvars.Context()


@dataclass
class Settings:
    hostname: str
    allow_plaintext: bool = False  # LOGIN / AUTHENTICATE PLAIN without TLS (tests only)
    append_limit: int = 50 * 1024 * 1024
    quota_bytes: int | None = None  # rfc9208 STORAGE limit per account; None = unlimited
    # Seconds from connecting to logging in, in all (a client trickling bytes
    # does not extend it); then autologout while silent (rfc9051:5.4).
    login_timeout: float = AUTH_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


Handler = Callable[["Session", Command], Awaitable[None]]


class JunkTrainer(Protocol):
    """What the session needs of estafeta.spam.training.Trainer."""

    def submit(
        self, account: str, spam: bool, load: Callable[[int], tuple[list[bytes], int]]
    ) -> bool: ...


class Session:
    # One per connection, and a thousand idle connections are cheap only if
    # each is small (issue 17): with more than 30 attributes an instance
    # __dict__ no longer shares its keys and costs 1.5 KiB; slots, 0.3 KiB.
    __slots__ = (
        "_changed", "_contexts_view", "_held", "_loop", "_notify_changed", "_notify_ids",
        "_notify_state", "_notify_subs", "_waiting", "_wake_on_change", "_woken", "accounts",
        "authenticator", "bad_commands", "commands_before_auth", "compressed", "contexts",
        "enabled", "failed_logins", "index_reader", "login_deadline", "notify_spec", "parser",
        "peer", "preauth", "reader", "saved_result", "selected", "settings", "shared_reader",
        "state", "store", "tls", "tls_active", "trainer", "user", "view_reader", "writer",
    )  # fmt: skip

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        accounts: Accounts,
        authenticator: Authenticator,
        store: Store,
        settings: Settings,
        tls: ssl.SSLContext | None,
        implicit_tls: bool,
        preauth: Ticket | None = None,
        trainer: JunkTrainer | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.accounts = accounts
        self.authenticator = authenticator
        self.store = store
        # Junk moves and $Junk / $NotJunk teach the spam filter (issue 16).
        self.trainer = trainer
        self.settings = settings
        self.tls = tls
        self.tls_active = implicit_tls
        self.compressed = False  # rfc4978 COMPRESS=DEFLATE is on
        self.parser = Parser(max_literal=settings.append_limit + 1024)
        self.state = NOT_AUTHENTICATED
        self.user: str | None = None
        self.index_reader: IndexReader | None = None
        # The shared store's index (its ACLs and mailboxes), and the reader
        # of the selected mailbox as this user sees it (estafeta.imap.acl).
        self.shared_reader: IndexReader | None = None
        self.view_reader: IndexReader | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.saved_result: Sequence[int] = ()  # rfc5182 $, as UIDs
        # rfc5267:4.3 updating searches (estafeta.imap.contexts), by tag, and
        # the view they belong to: they end with it.
        self.contexts: dict[str, contexts_module.Context] = {}
        self._contexts_view: Selected | None = None
        # rfc5465 NOTIFY: what the client asked to be told (None: not set,
        # or NONE), and what it was last told of the other mailboxes.
        self.notify_spec: notify_module.Spec | None = None
        self._notify_state: dict[str, notify_module.BoxState] = {}
        self._notify_ids: dict[int, str] = {}
        self._notify_subs: set[str] = set()
        self._notify_changed = False  # the index changed since the last notify_poll
        # The tagged response held back while the updating searches catch up
        # with what the command changed (rfc5267:4.3: before the command ends).
        self._held: list[bytes] | None = None
        self.bad_commands = 0
        self.failed_logins = 0
        self.commands_before_auth = 0
        # The index changed since the last report_updates (set by _on_change).
        self._changed = False
        # The session's task while it waits in _read_or_wake (what a change
        # or the timer interrupts), and why it was interrupted (_WOKEN_BY_*).
        self._waiting: asyncio.Task[Any] | None = None
        self._wake_on_change = False
        self._woken = 0
        self._loop = asyncio.get_running_loop()
        self.login_deadline = self._loop.time() + settings.login_timeout
        # Its place among the connections not logged in yet (server.py).
        self.preauth = preauth if preauth is not None else Ticket("", 0.0)
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # -- output ------------------------------------------------------------

    def send(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.writer.write(line + b"\r\n")

    async def flush(self) -> None:
        await self.writer.drain()

    def untagged(self, text: bytes | str) -> None:
        self.send(b"* " + (text.encode("utf-8") if isinstance(text, str) else text))

    def tagged(self, tag: str, status: str, text: str, code: str = "") -> None:
        code_part = f"[{code}] " if code else ""
        line = f"{tag} {status} {code_part}{text}"
        if self._held is not None:
            self._held.append(line.encode("utf-8"))
            return
        self.send(line)

    def mailbox_name(self, name: str) -> bytes:
        """A mailbox name for a response: mUTF-7 (rfc3501:5.1.3) unless
        UTF8=ACCEPT, then UTF-8, quoted when it fits (rfc6855:3)."""
        if "UTF8=ACCEPT" in self.enabled:
            return imap_utf8_string(name)
        return imap_string(encode_mutf7(name))

    # -- capabilities ----------------------------------------------------------

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        plaintext_ok = self.tls_active or self.settings.allow_plaintext
        if self.state == NOT_AUTHENTICATED:
            if self.tls is not None and not self.tls_active:
                caps.append("STARTTLS")
            if plaintext_ok:
                from estafeta.auth import scramlogin  # SCRAM (rfc5802); kept in this method

                binding = scramlogin.binding(self.writer) if self.tls_active else None
                scram = [f"AUTH={name}" for name in scramlogin.mechanisms(binding)]
                caps += [*scram, "AUTH=PLAIN", "SASL-IR"]
            else:
                caps.append("LOGINDISABLED")  # rfc9051:6.2.3
        caps += [
            "LITERAL+",
            "ENABLE",
            "ID",
            "IDLE",
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "ESEARCH",
            "SEARCHRES",
            "WITHIN",
            "CONDSTORE",
            "QRESYNC",
            "BINARY",
            f"APPENDLIMIT={self.settings.append_limit}",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "UTF8=ACCEPT",
            "STATUS=SIZE",
            # rfc5256 (estafeta.imap.sort, estafeta.imap.thread), rfc5957,
            # rfc5267:3 (SORT ... RETURN answered with ESEARCH)
            "SORT",
            "SORT=DISPLAY",
            "THREAD=ORDEREDSUBJECT",
            "THREAD=REFERENCES",
            "ESORT",
            "CONTEXT=SEARCH",  # rfc5267:4 (estafeta.imap.contexts)
            "CONTEXT=SORT",
            "URLAUTH",  # rfc4467 (estafeta.imap.urlfetch)
            "NOTIFY",  # rfc5465 (estafeta.imap.notify)
            # rfc4978 (imap/compress.py): a command of the authenticated state
            *([] if self.compressed or self.state == NOT_AUTHENTICATED else ["COMPRESS=DEFLATE"]),
            "METADATA",  # rfc5464 (estafeta.imap.metadata): server and mailbox entries
            "MULTIAPPEND",
            "CATENATE",
            "PREVIEW",
            "OBJECTID",  # rfc8474:3 (MAILBOXID, EMAILID, THREADID: estafeta.store.index)
            "SAVEDATE",  # rfc8514:4.1
            "ACL",  # rfc4314 (estafeta.imap.acl)
            "RIGHTS=texk",  # rfc4314:5.1.1: t, e, x, k each on its own
            "LIST-MYRIGHTS",  # rfc8440
        ]
        return list(dict.fromkeys(caps))

    # -- main loop -------------------------------------------------------------

    async def run(self, sessions: set[Session] | None = None) -> None:
        """The whole connection; in ``sessions`` (the server's) meanwhile."""
        if sessions is not None:
            sessions.add(self)
        try:
            self.untagged(
                f"OK [CAPABILITY {' '.join(self.capabilities())}] {self.settings.hostname} "
                "estafeta IMAP ready"
            )
            await self.flush()
            # The command loop, here rather than in a coroutine of its own:
            # one frame less kept by every connection (issue 17).
            while self.state != LOGOUT:
                event = self.parser.next_event()
                if isinstance(event, NeedData):
                    await self.flush()
                    if self.notify_spec is not None and self.parser.idle():
                        # rfc5465:1 the client takes notifications at any
                        # time: a change wakes the read (as in IDLE).
                        data = await self._read_or_wake(
                            self.settings.idle_timeout, wake_on_change=True
                        )
                        if data is None:
                            await self.notify_now()
                            continue
                        self.parser.receive_data(data)
                        continue
                    self.parser.receive_data(await self._read())
                elif isinstance(event, Continue):
                    self.send(f"+ {event.text}")
                    await self.flush()
                elif isinstance(event, Command):
                    await self._dispatch(event)
                elif isinstance(event, ParseError):
                    self.bad_commands += 1
                    prefix = event.tag if event.tag else "*"
                    self.send(f"{prefix} BAD {event.text}")
                    if event.fatal or self.bad_commands > MAX_BAD_COMMANDS:
                        self.untagged("BYE Too many errors, closing")
                        await self._safe_flush()
                        return
                elif isinstance(event, Eof):
                    return
                elif isinstance(event, RawLine):  # pragma: no cover — only after expect_line
                    self.send("* BAD Unexpected continuation line")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except TimeoutError:
            # rfc9051:7.1.5 — BYE before the server closes the connection.
            if self.state == NOT_AUTHENTICATED:
                self.untagged("BYE Autologout; not logged in in time")
            else:
                self.untagged("BYE Autologout; idle for too long")
            await self._safe_flush()
        finally:
            self.stop_notify()
            self._close_selected()
            self.writer.close()
            if sessions is not None:
                sessions.discard(self)

    async def _safe_flush(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.flush(), 5)

    def login_time_left(self) -> float:
        return self.login_deadline - self._loop.time()

    async def _read(self) -> bytes:
        if self.state == NOT_AUTHENTICATED:
            timeout = self.login_time_left()
            if timeout <= 0:
                raise TimeoutError
        else:
            timeout = self.settings.idle_timeout
        data = await self._read_or_wake(timeout, wake_on_change=False)
        assert data is not None
        return data

    async def _read_or_wake(self, within: float, *, wake_on_change: bool) -> bytes | None:
        """What the client sent (b"" once it closed); TimeoutError after
        ``within`` seconds; None when the index changed meanwhile (only
        ``wake_on_change``, IDLE), its data then stays buffered.

        No task of its own (asyncio.wait_for and asyncio.wait each make one,
        and a future, a coroutine...): the session's task waits in the read,
        and the timer or a change interrupts it by cancelling it, and knows
        it did (_woken). 100,000 connections sit here in IDLE (issue 17)."""
        if wake_on_change and self._changed:
            return None
        task = asyncio.current_task()
        assert task is not None
        # A function and one context for all (not a bound method and a copy
        # of the context per timer): smaller timers.
        timer = self._loop.call_later(
            max(0.0, within), _interrupt, self, _WOKEN_BY_TIMER, context=_TIMER_CONTEXT
        )
        self._waiting = task
        self._wake_on_change = wake_on_change
        try:
            waiter = _park(self.reader, self._loop)
            if waiter is not None:
                try:
                    await waiter
                finally:
                    _unpark(self.reader, waiter)
            return await self.reader.read(READ_SIZE)
        except asyncio.CancelledError:
            woken = self._woken
            # Not ours, or cancelled from elsewhere as well: a real cancellation.
            if not woken or task.uncancel() > 0:
                raise
            if woken == _WOKEN_BY_TIMER:
                raise TimeoutError from None
            return None
        finally:
            timer.cancel()
            self._waiting = None
            self._woken = 0

    async def _dispatch(self, command: Command) -> None:
        if self.state == NOT_AUTHENTICATED:
            self.commands_before_auth += 1
            if self.commands_before_auth > MAX_COMMANDS_BEFORE_AUTH:
                self.untagged("BYE Too many commands without logging in")
                self.state = LOGOUT
                return
        table = _COMMANDS[self.state]
        handler = table.get(command.name)
        tag = command.tag
        if handler is None:
            if any(command.name in t for t in _COMMANDS.values()):
                self.tagged(tag, "BAD", f"{command.name} is not allowed now")
            else:
                self.tagged(tag, "BAD", f"Unknown command {command.name}")
            return
        started = time.monotonic()
        # rfc5267:4.3, rfc5465: the updates a command causes come before its end.
        hold = command.name not in _UNHELD and (
            bool(self.live_contexts()) or self.notify_spec is not None
        )
        if hold:
            self._held = []
        try:
            await handler(self, command)
        except No as exc:
            self.tagged(tag, "NO", str(exc), exc.code)
        except Bad as exc:
            self.tagged(tag, "BAD", str(exc), exc.code)
        except MailboxError as exc:
            self.tagged(tag, "NO", str(exc), exc.code)
        except StoreError as exc:
            log.error("store error in %s: %s", command.name, exc)
            self.tagged(tag, "NO", "Temporary failure, try again", "SERVERBUG")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            self._held = None
            raise
        except OSError as exc:
            # Storage that cannot answer now: a full disk, or a cluster's
            # database or object store away (DatabaseError, BlobError).
            # rfc5530:3 UNAVAILABLE: a temporary failure, try again later.
            log.error("storage error in %s: %s", command.name, exc)
            self.tagged(tag, "NO", "Temporary failure, try again later", "UNAVAILABLE")
        except Exception:
            # Never a traceback to the client: log it, answer NO [SERVERBUG].
            log.exception("internal error in IMAP %s", command.name)
            self.tagged(tag, "NO", "Internal error", "SERVERBUG")
        if hold:
            held, self._held = self._held or [], None
            try:
                if self.notify_spec is not None and (
                    self._notify_changed or command.name in _CHANGING
                ):
                    # rfc5465 what the command (or others meanwhile) changed
                    # elsewhere; after a command that writes, whether or not
                    # its change notice has come through the event loop yet.
                    self.notify_poll()
                await self.refresh_contexts()
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                raise
            except Exception:
                log.exception("internal error updating searches after IMAP %s", command.name)
                for context_tag in list(self.contexts):
                    self.untagged(contexts_module.noupdate(context_tag))
                self.contexts.clear()
            for line in held:
                self.send(line)
        elapsed = time.monotonic() - started
        if elapsed > 1:
            log_event(
                log, "slow_command", command=command.name, user=self.user, s=round(elapsed, 2)
            )

    def shutdown(self) -> None:
        """Server stopping: tell the client (rfc9051:7.1.5) and close."""
        if self.state != LOGOUT:
            self.untagged("BYE Server shutting down")
            self.state = LOGOUT
        self.writer.close()

    # -- index access -------------------------------------------------------

    def index(self) -> IndexReader:
        assert self.index_reader is not None
        return self.index_reader

    def shared_index(self) -> IndexReader:
        assert self.shared_reader is not None
        return self.shared_reader

    def box_index(self) -> IndexReader:
        """The reader of the selected mailbox's store, as this user sees it."""
        return self.view_reader if self.view_reader is not None else self.index()

    def share_key(self) -> str:
        """Whose views of the selected mailbox may share contents
        (selected.Snapshot): the account's, or the viewer's of a shared one."""
        view, user = self.selected, self.user or ""
        if view is not None and view.owner == shared.OWNER:
            return f"{shared.OWNER}\0{user}"
        return user

    def _watch(self, _address: str) -> None:
        # Called in the store's writer thread after a commit.
        self._loop.call_soon_threadsafe(self._on_change)

    def _on_change(self) -> None:
        self._changed = True
        self._notify_changed = True
        if self._wake_on_change:
            _interrupt(self, _WOKEN_BY_CHANGE)

    def _close_selected(self) -> None:
        self.selected = None
        self.view_reader = None

    # -- reporting changes ------------------------------------------------------

    def report_updates(self, allow_expunge: bool) -> None:
        """Send what other sessions and deliveries changed (rfc9051:7.5.1)."""
        self._changed = False
        view = self.selected
        if view is None:
            return
        updates: Updates = view.pull(self.box_index())
        if not (updates.expunged or updates.flags or updates.new or view.pending_expunge):
            view.highestmodseq = updates.highestmodseq
            return
        if allow_expunge and self.live_contexts():
            # rfc5267:4.3.4 REMOVEFROM for the messages about to be expunged,
            # numbered as they are until the EXPUNGE responses.
            self._contexts_lose(view, view.pending_expunge.union(updates.expunged))
        # The sessions idling on one mailbox share their view of it
        # (selected.Snapshot): the first to take a change works it out, the
        # others on the same snapshot take its result and what it said.
        recent_key = None if view.recent is None else view.recent.key()
        variant = (
            allow_expunge, "QRESYNC" in self.enabled, view.condstore, view.readonly, recent_key
        )  # fmt: skip
        lines = view.step(updates, variant)
        if lines is None:
            start = view.snapshot
            lines = self._apply_updates(view, updates, allow_expunge)
            view.remember(start, updates, variant, lines, self.share_key())
        elif lines and lines[0].startswith("FLAGS ("):
            # Told by the view that worked the step out: learn its keywords.
            view.keywords = view.keywords | frozenset(lines[0][7:-1].split()) - set(SYSTEM_FLAGS)
        for line in lines:
            self.untagged(line)
        if updates.new and view.recent is not None and _take_recent(self, view):
            # rfc3501:7.3.2: RECENT when the number grows (this session's
            # own: never in the lines shared with other views).
            self.untagged(f"{view.recent.count_in(view.uids)} RECENT")

    # -- NOTIFY (rfc5465) ------------------------------------------------------------

    def start_notify(self, spec: notify_module.Spec) -> None:
        """Take ``spec`` and what every mailbox is now (rfc5465:3.1: the
        changes from here on are told); STATUS for each watched mailbox
        when the client asked (NOTIFY SET STATUS)."""
        if self.notify_spec is None:
            self.store.changes.watch(_user(self), self._watch)
            # A shared mailbox selected meanwhile changes in the shared store.
            self.store.changes.watch(shared.OWNER, self._watch)
        self.notify_spec = spec
        self._notify_state.clear()
        self._notify_ids.clear()
        self._notify_subs.clear()
        self.notify_poll(initial=True)

    def stop_notify(self) -> None:
        if self.notify_spec is not None and self.user is not None:
            self.store.changes.unwatch(self.user, self._watch)
            self.store.changes.unwatch(shared.OWNER, self._watch)
        self.notify_spec = None

    def notify_poll(self, *, initial: bool = False) -> None:
        """Tell what changed in the mailboxes other than the selected one
        since the last poll: STATUS for message events (rfc5465:5.1-5.3),
        LIST for names (rfc5465:5.4) and subscriptions (rfc5465:5.5).
        ``initial``: only take the state (and, for NOTIFY SET STATUS, send
        the STATUS of every watched mailbox, rfc5465:3.1)."""
        spec = self.notify_spec
        if spec is None:
            return
        self._notify_changed = False
        reader = self.index()
        boxes = reader.mailboxes()
        subscribed = set(reader.subscriptions())
        condstore = "CONDSTORE" in self.enabled or "QRESYNC" in self.enabled
        ids = {box.id: box.name for box in boxes}
        if not initial:
            for line in self._name_changes(spec, ids, subscribed):
                self.untagged(line)
        selected = self.selected.box.id if self.selected is not None else None
        states: dict[str, notify_module.BoxState] = {}
        for box in boxes:
            events = spec.events_for(box.name, subscribed) & notify_module.MESSAGE_EVENTS
            if box.id == selected or not events:
                continue
            old = self._notify_state.get(box.name)
            if old is not None and (old.uidvalidity, old.uidnext, old.highestmodseq) == (
                box.uidvalidity,
                box.uidnext,
                box.highestmodseq,
            ):
                # Nothing came or went: a new message takes a UID, an expunge
                # a modseq (rfc7162:3.1.1). Only changed mailboxes are counted.
                messages = old.messages
            else:
                messages = reader.status_counts(box.id, ["MESSAGES"])["MESSAGES"]
            state = notify_module.BoxState(
                box.uidvalidity, messages, box.uidnext, box.highestmodseq
            )
            states[box.name] = state
            if initial:
                items = notify_module.initial_items(events, condstore) if spec.status else []
            else:
                items = notify_module.changed_items(old, state, events, condstore)
            if items:
                self.untagged(_status_line(self, box.name, items))
        self._notify_state = states
        self._notify_ids = ids
        self._notify_subs = subscribed

    def _name_changes(
        self, spec: notify_module.Spec, ids: dict[int, str], subscribed: set[str]
    ) -> list[bytes]:
        """rfc5465:5.4 LIST for mailboxes made, renamed (OLDNAME) or deleted
        (\\NonExistent); rfc5465:5.5 LIST with or without \\Subscribed."""
        lines: list[bytes] = []
        old_subs = self._notify_subs

        def wants(event: str, name: str) -> bool:
            return event in spec.events_for(name, subscribed | old_subs)

        for box_id, name in ids.items():
            before = self._notify_ids.get(box_id)
            if before is None and wants("MAILBOXNAME", name):
                lines.append(b'LIST () "/" ' + self.mailbox_name(name))
            elif before is not None and before != name and wants("MAILBOXNAME", name):
                lines.append(
                    b'LIST () "/" ' + self.mailbox_name(name)
                    + b' ("OLDNAME" (' + self.mailbox_name(before) + b"))"
                )  # fmt: skip
        for box_id, name in self._notify_ids.items():
            if box_id not in ids and wants("MAILBOXNAME", name):
                lines.append(b'LIST (\\NonExistent) "/" ' + self.mailbox_name(name))
        for name in sorted(subscribed - old_subs):
            if wants("SUBSCRIPTIONCHANGE", name):
                lines.append(b'LIST (\\Subscribed) "/" ' + self.mailbox_name(name))
        for name in sorted(old_subs - subscribed):
            if wants("SUBSCRIPTIONCHANGE", name):
                lines.append(b'LIST () "/" ' + self.mailbox_name(name))
        return lines

    async def notify_now(self) -> None:
        """A change came while no command was in progress (rfc5465:1): the
        selected mailbox's (SELECTED: expunges too; SELECTED-DELAYED: at the
        next command that allows them, rfc5465:6.1), then the others'."""
        spec = self.notify_spec
        view = self.selected
        if spec is not None and view is not None and spec.selected_events() and self._changed:
            top = view.uids[-1] if view.uids else 0
            self.report_updates(allow_expunge=spec.immediate_expunge)
            await self.refresh_contexts()
            assert spec.selected is not None
            new = view.uids[bisect.bisect_right(view.uids, top) :]
            if new and spec.selected.fetch and self.selected is view:
                await _notify_fetch(self, new, spec.selected.fetch)
        if self._notify_changed:
            self.notify_poll()
        # Told (or nothing the client asked for): the next read waits again.
        # The selected mailbox's other changes go out at the next command.
        self._changed = False
        await self.flush()

    # -- updating searches (rfc5267:4.3) -----------------------------------------

    def live_contexts(self) -> dict[str, contexts_module.Context]:
        """The updating searches of the selected mailbox (none once it is
        closed or another is selected)."""
        if self.contexts and self._contexts_view is not self.selected:
            self.contexts.clear()
        return self.contexts

    def _contexts_lose(self, view: Selected, uids: Iterable[int]) -> None:
        gone = [u for u in uids if view.seq_of(u) is not None]
        for context in self.contexts.values():
            lost = context.lose(gone)
            if lost:
                self._tell_removed(context, view, lost)

    def _tell_removed(
        self, context: contexts_module.Context, view: Selected, removed: list[int]
    ) -> None:
        if context.criteria is None:
            line = contexts_module.render_change(context, "REMOVEFROM", removed, view.seq_of)
        else:
            pairs = context.removals(removed)
            line = contexts_module.render_pairs(context, "REMOVEFROM", pairs, view.seq_of)
        self.untagged(line)

    async def refresh_contexts(self) -> None:
        """Evaluate the updating searches again on the messages whose
        mod-sequence moved past what each saw (flags changed, or new), and
        tell the client what joined or left each result (rfc5267:4.3.3,
        rfc5267:4.3.4). A search that runs out of budget is dropped."""
        view = self.selected
        live = self.live_contexts()
        if view is None or not live:
            return
        low = min(context.modseq for context in live.values())
        moved = [
            (u, m) for u, m in view.modseqs.items() if m > low and u not in view.pending_expunge
        ]
        if not moved:
            return
        for context in list(live.values()):
            changed = [u for u, m in moved if m > context.modseq]
            if not changed:
                continue
            context.modseq = max(m for _, m in moved)
            try:
                found = await _search(self, view, context.key, uids=changed)
            except No:
                del live[context.tag]  # rfc5267:4.3.1: the server stops updating it
                self.untagged(contexts_module.noupdate(context.tag))
                continue
            if self.selected is not view or live.get(context.tag) is not context:
                return  # the mailbox was closed meanwhile (IDLE ... DONE, LOGOUT)
            added, removed = context.change(changed, {m.uid for m in found})
            if removed:
                self._tell_removed(context, view, removed)
            if not added:
                continue
            if context.criteria is None:
                self.untagged(contexts_module.render_change(context, "ADDTO", added, view.seq_of))
                continue
            # rfc5267:4.3.3 CONTEXT=SORT: where each joins the sorted result.
            try:
                ordered = await _sorted_uids(self, view, context.criteria)
            except No:
                del live[context.tag]
                self.untagged(contexts_module.noupdate(context.tag))
                continue
            if self.selected is not view or live.get(context.tag) is not context:
                return
            pairs = context.insertions(ordered)
            self.untagged(contexts_module.render_pairs(context, "ADDTO", pairs, view.seq_of))

    def _apply_updates(self, view: Selected, updates: Updates, allow_expunge: bool) -> list[str]:
        """Bring ``view`` up to ``updates``; the untagged responses that tell it."""
        lines: list[str] = _new_keywords(
            view,
            [flags for _, flags, _ in updates.flags] + [flags for _, flags, _ in updates.new],
        )
        view.note_expunged(updates.expunged)
        if allow_expunge and view.pending_expunge:
            lines += self._expunges(view, sorted(view.pending_expunge))
        for uid, flags, modseq in updates.flags:
            if uid in view.pending_expunge:
                continue
            if view.flags.get(uid) != flags or view.condstore:
                view.apply_flags([(uid, flags, modseq)])
                seq = view.seq_of(uid)
                lines.append(self._flags_fetch(seq or 0, uid, flags, modseq))
        if updates.new:
            view.apply_new(updates.new)
            lines.append(f"{view.exists} EXISTS")
        if not view.pending_expunge:
            view.highestmodseq = updates.highestmodseq
        else:
            view.highestmodseq = max(view.highestmodseq, updates.highestmodseq)
        return lines

    def _expunges(self, view: Selected, uids: list[int]) -> list[str]:
        if "QRESYNC" in self.enabled:
            # rfc7162:3.2.10: VANISHED instead of EXPUNGE once QRESYNC is enabled.
            view.apply_expunge(uids)
            return [f"VANISHED {search_module.compress(uids)}"]
        return [f"{seq} EXPUNGE" for seq in view.apply_expunge(uids)]

    def _flags_fetch(self, seq: int, uid: int, flags: Sequence[str], modseq: int) -> str:
        if self.selected is not None and self.selected.is_recent(uid):
            flags = ("\\Recent", *flags)  # rfc3501:2.3.2
        parts = [f"UID {uid}", f"FLAGS ({' '.join(flags)})"]
        if self.selected is not None and self.selected.condstore:
            parts.append(f"MODSEQ ({modseq})")
        return f"{seq} FETCH ({' '.join(parts)})"


def _park(
    reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None] | None:
    """The future the stream resolves on data, its end or an error, made as
    StreamReader.read() would make it, for the session's task to wait on
    itself: no read() and _wait_for_data() coroutines kept for every idle
    connection (a sixteenth of what one costs, issue 17). None when read()
    would not wait, or for a reader not known to work this way: then read()
    does it all."""
    if type(reader) is not asyncio.StreamReader:
        return None
    if (
        getattr(reader, "_buffer", True)
        or reader.at_eof()
        or reader.exception() is not None
        or getattr(reader, "_waiter", True) is not None
        or getattr(reader, "_paused", True)
    ):
        return None
    waiter: asyncio.Future[None] = loop.create_future()
    setattr(reader, "_waiter", waiter)  # noqa: B010 — StreamReader's own attribute
    return waiter


def _unpark(reader: asyncio.StreamReader, waiter: asyncio.Future[None]) -> None:
    """As read() does after its wait (woken, the reader has let go already)."""
    if getattr(reader, "_waiter", None) is waiter:
        setattr(reader, "_waiter", None)  # noqa: B010 — StreamReader's own attribute


def _interrupt(session: Session, why: int) -> None:
    """Wake the task waiting in Session._read_or_wake (in the event loop)."""
    if session._waiting is not None and not session._woken:
        session._woken = why
        session._waiting.cancel()


async def start_tls(
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    handshake_timeout: float,
    *,
    peer: str,
    protocol: str,
) -> None:
    """The handshake after STARTTLS / STLS. A client that fails it (no shared
    version or cipher, garbage, a reset, too slow) is the client's problem,
    not an internal error: one log line, then ConnectionError ends the
    session (the connection cannot be used in the clear any more)."""
    try:
        await writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
        close_promptly(writer.transport)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        log_event(
            log,
            "tls_failed",
            logging.INFO,
            protocol=protocol,
            client=peer,
            reason=getattr(exc, "reason", None) or type(exc).__name__,
        )
        raise ConnectionError("TLS handshake failed") from None


# ---------------------------------------------------------------------------
# Commands. Each is `async def cmd_x(session, command)`; it sends untagged
# data and the tagged completion itself, or raises No / Bad.
# ---------------------------------------------------------------------------


async def cmd_capability(s: Session, cmd: Command) -> None:
    s.untagged("CAPABILITY " + " ".join(s.capabilities()))
    s.tagged(cmd.tag, "OK", "CAPABILITY completed")


async def cmd_noop(s: Session, cmd: Command) -> None:
    s.report_updates(allow_expunge=True)
    s.tagged(cmd.tag, "OK", f"{cmd.name} completed")


async def cmd_logout(s: Session, cmd: Command) -> None:
    s.untagged("BYE Logging out")
    s.tagged(cmd.tag, "OK", "LOGOUT completed")
    s.state = LOGOUT
    await s.flush()


async def cmd_starttls(s: Session, cmd: Command) -> None:
    if s.tls is None or s.tls_active:
        raise Bad("STARTTLS is not available")
    # rfc9051:6.2.1 (and rfc3207:4.2's reasoning): anything the client
    # pipelined after STARTTLS is discarded — what the parser holds, what is
    # in the stream's buffer and what the socket still holds (over 64 KiB
    # are read at once) — before the OK, after which the ClientHello comes.
    dropped = len(s.parser.take_unread())
    s.parser = Parser(max_literal=s.settings.append_limit + 1024)
    dropped += await drain_pipelined(s.reader, dropped)
    s.tagged(cmd.tag, "OK", "Begin TLS negotiation now")
    await s.flush()
    if dropped:
        log_event(log, "starttls_pipelined", logging.WARNING, client=s.peer, octets=dropped)
    await start_tls(
        s.writer,
        s.tls,
        max(1.0, min(TLS_HANDSHAKE_TIMEOUT, s.login_time_left())),
        peer=s.peer,
        protocol="imap",
    )
    s.tls_active = True


async def cmd_compress(s: Session, cmd: Command) -> None:
    """rfc4978:3 COMPRESS DEFLATE: the tagged OK goes out as it is; every
    octet after it, both ways, is DEFLATE (estafeta.imap.compress)."""
    args: c.Compress = cmd.args  # type: ignore[assignment]
    if s.compressed:
        # rfc4978:3 Result: BAD for "COMPRESS already active" (NO is for
        # compression by another layer; TLS compression is off here), with
        # the rfc4978:5 code a client can tell it by, as Cyrus does.
        raise Bad("DEFLATE active via COMPRESS", "COMPRESSIONACTIVE")
    if args.mechanism != "DEFLATE":  # rfc4978:3 BAD: unknown argument
        raise Bad(f"Unknown compression mechanism {args.mechanism[:40]}")
    s.tagged(cmd.tag, "OK", "DEFLATE active")
    await s.flush()
    # rfc4978:3 the client compresses from the first command after COMPRESS:
    # whatever it sent since was compressed, in the parser's or the stream's buffer.
    unread = s.parser.take_unread()
    buffered = len(getattr(s.reader, "_buffer", b""))
    if buffered:
        unread += await s.reader.read(buffered)
    compress_module.install(s.reader, s.writer, unread)
    s.compressed = True


async def _login(s: Session, cmd: Command, user: str, password: str) -> None:
    if not (s.tls_active or s.settings.allow_plaintext):
        raise No("Log in after STARTTLS (rfc9051:6.2.3)", "PRIVACYREQUIRED")
    # The shared guard delays failures and refuses locked-out clients.
    result = await s.authenticator.login(user, password, "imap", s.peer)
    await _logged_in(s, cmd, result, user)


async def _logged_in(
    s: Session, cmd: Command, result: LoginResult, user: str, mechanism: str = ""
) -> None:
    """Answer a decided login (LOGIN, AUTHENTICATE PLAIN or SCRAM-*)."""
    if result.address is None:
        s.failed_logins += 1
        if not result.locked:
            log_event(log, "login_failed", logging.WARNING, client=s.peer, user=user)
        if s.failed_logins >= MAX_FAILED_LOGINS:
            s.untagged("BYE Too many failed logins")
            s.state = LOGOUT
        if result.reason == BUSY:
            raise No("Too many logins at once, try again later", "UNAVAILABLE")
        if result.locked:
            # rfc5530:3: UNAVAILABLE is the temporary failure ("try later");
            # AUTHENTICATIONFAILED would tell the client the credentials are
            # wrong and not worth trying again.
            raise No("Too many failed logins, try again later", "UNAVAILABLE")
        raise No("Invalid credentials", "AUTHENTICATIONFAILED")
    # Logged in: no longer one of the connections not logged in yet.
    s.preauth.leave()
    s.user = result.address
    # One read connection per account, shared by its sessions (memory).
    s.index_reader = await asyncio.to_thread(s.store.shared_reader, s.user)
    s.shared_reader = await asyncio.to_thread(s.store.shared_reader, shared.OWNER)
    await _know_viewer(s)
    s.parser.set_authenticated(True)
    s.state = AUTHENTICATED
    extra: dict[str, object] = {"mechanism": mechanism} if mechanism else {}
    log_event(log, "login", logging.INFO, client=s.peer, user=s.user, tls=s.tls_active, **extra)
    # rfc9051:6.2.3: send the capabilities again, they changed.
    s.tagged(cmd.tag, "OK", "Logged in", "CAPABILITY " + " ".join(s.capabilities()))


async def cmd_login(s: Session, cmd: Command) -> None:
    args: c.Login = cmd.args  # type: ignore[assignment]
    await _login(s, cmd, args.user, args.password)


async def cmd_authenticate(s: Session, cmd: Command) -> None:
    # SCRAM-SHA-256(-PLUS): imported here so that it stays in this command.
    import base64

    from estafeta.auth import scramlogin
    from estafeta.auth.sasl import SASLCancelled, decode_response

    args: c.Authenticate = cmd.args  # type: ignore[assignment]
    mechanism = args.mechanism.upper()
    binding = scramlogin.binding(s.writer) if s.tls_active else None
    if mechanism != "PLAIN" and mechanism not in scramlogin.mechanisms(binding):
        raise No(f"Unsupported mechanism {args.mechanism}", "CANNOT")
    if not (s.tls_active or s.settings.allow_plaintext):
        raise No("Authenticate after STARTTLS", "PRIVACYREQUIRED")

    async def respond(challenge: bytes) -> str:
        """rfc9051:6.2.2: a "+" continuation with the base64 challenge; the
        client's line."""
        s.send(b"+ " + base64.b64encode(challenge))
        await s.flush()
        s.parser.expect_line()
        while True:
            event = s.parser.next_event()
            if isinstance(event, NeedData):
                s.parser.receive_data(await s._read())
                continue
            break
        if not isinstance(event, RawLine):
            raise Bad("Expected a SASL response line")
        return event.line.decode("ascii", "replace").strip()

    if mechanism != "PLAIN":

        async def challenge(data: bytes) -> bytes:
            return decode_response(await respond(data))

        try:
            outcome = await scramlogin.login(
                s.authenticator,
                mechanism,
                args.initial_response,  # rfc4959:3
                challenge,
                protocol="imap",
                peer=s.peer,
                channel_binding=binding,
                final_challenge=True,  # rfc4422:5: no data with success in IMAP
            )
        except SASLCancelled:  # rfc9051:6.2.2 the client cancels
            raise Bad("Authentication cancelled") from None
        except MalformedSASL as exc:
            raise Bad(str(exc)) from None
        except SASLError as exc:
            raise No(str(exc), "AUTHENTICATIONFAILED") from None
        await _logged_in(s, cmd, outcome.result, outcome.user[:100], mechanism)
        return
    response = args.initial_response
    if response is None:
        response = await respond(b"")
        if response == "*":  # rfc9051:6.2.2 the client cancels
            raise Bad("Authentication cancelled")
    try:
        authcid, password = decode_plain(response)
    except MalformedSASL as exc:
        raise Bad(str(exc)) from None
    except SASLError as exc:
        raise No(str(exc), "AUTHORIZATIONFAILED") from None
    await _login(s, cmd, authcid, password)


async def cmd_enable(s: Session, cmd: Command) -> None:
    args: c.Enable = cmd.args  # type: ignore[assignment]
    known = {"IMAP4REV2": "IMAP4rev2", "CONDSTORE": "CONDSTORE", "QRESYNC": "QRESYNC",
             "UTF8=ACCEPT": "UTF8=ACCEPT"}  # fmt: skip
    newly = []
    for capability in args.capabilities:
        name = known.get(capability.upper())
        if name and name not in s.enabled:
            s.enabled.add(name)
            newly.append(name)
    if "QRESYNC" in newly:
        s.enabled.add("CONDSTORE")  # rfc7162:3.2.3 QRESYNC implies CONDSTORE
    if "UTF8=ACCEPT" in s.enabled:
        s.parser.set_utf8(True)
    if "IMAP4rev2" in newly and s.selected is not None:
        s.selected.recent = None  # rfc9051 has no \Recent
    # rfc5161:3.1: ENABLED lists what this command enabled.
    s.untagged("ENABLED" + "".join(f" {n}" for n in newly))
    if "CONDSTORE" in s.enabled:
        _condstore_on(s)
    s.tagged(cmd.tag, "OK", "ENABLE completed")


async def cmd_id(s: Session, cmd: Command) -> None:
    # rfc2971:3.3 — name and version only; nothing that helps an attacker more.
    s.untagged(f'ID ("name" "estafeta" "version" "{__version__}")')
    s.tagged(cmd.tag, "OK", "ID completed")


async def cmd_namespace(s: Session, cmd: Command) -> None:
    s.untagged(acl.NAMESPACE)  # rfc2342:5, the shared namespace: estafeta.imap.acl
    s.tagged(cmd.tag, "OK", "NAMESPACE completed")


def _list_boxes(s: Session) -> tuple[dict[str, str], list[Box]]:
    """The user's rights on each mailbox it may list (personal ones: all;
    shared ones with "l", rfc4314:4), and as listing Boxes with the
    subscribed names no mailbox has (rfc9051:6.3.9)."""
    reader = s.index()
    subscriptions = reader.subscriptions()
    subscribed = set(subscriptions)
    # A personal mailbox named like the shared namespace is hidden behind it.
    rows = [b for b in reader.mailboxes() if not acl.in_namespace(b.name)]
    boxes = [Box(b.name, b.special_use, b.subscribed) for b in rows]
    rights = dict.fromkeys((b.name for b in rows), acl.ALL)
    for name, _, granted in acl.shared_boxes(s):
        boxes.append(Box(name, None, name in subscribed))
        rights[name] = granted
    boxes += [Box(n, None, True, exists=False) for n in subscriptions if n not in rights]
    return rights, boxes


async def cmd_select(s: Session, cmd: Command) -> None:
    args: c.Select = cmd.args  # type: ignore[assignment]
    readonly = cmd.name == "EXAMINE"
    if s.selected is not None:
        # rfc7162:3.2.11 CLOSED before the new mailbox's data.
        s._close_selected()
        s.state = AUTHENTICATED
        s.untagged("OK [CLOSED] Previous mailbox closed")
    place = acl.locate(s, args.mailbox)
    box = acl.need(place, "r", args.mailbox)  # rfc4314:4 SELECT / EXAMINE
    viewer = _user(s) if place.shared else None
    # rfc4314:5.2: READ-ONLY without any of "iewt"; "s" alone still keeps
    # this user's own \Seen (private in shared mailboxes).
    shown_readonly = readonly or not any(r in place.rights for r in acl.WRITE_RIGHTS)
    readonly = readonly or not any(r in place.rights for r in acl.WRITE_RIGHTS + "s")
    # Taken with the row read, before waiting: held from now on, the claim
    # stays what the index said unless a session claims more (recent.Claims.get).
    claim = claims(s.store).get(place.owner, box.id, box.recent_uid)
    # Loading a big mailbox takes a while (0.3 s for 100,000 messages): do it
    # on a connection of its own in a thread, so other sessions go on.
    view = await asyncio.to_thread(_load_view, s.store, place.owner, viewer, box, readonly)
    view.owner, view.rights = place.owner, place.rights
    s.view_reader = (
        await asyncio.to_thread(s.store.viewer_reader, place.owner, _user(s))
        if place.shared
        else None
    )
    if args.qresync is not None and "QRESYNC" not in s.enabled:
        raise Bad("QRESYNC must be enabled first (rfc7162:3.2.5)")
    view.condstore = args.condstore or args.qresync is not None or "CONDSTORE" in s.enabled
    view.qresync = args.qresync is not None
    view.keywords = frozenset(f for fl in view.flags.values() for f in fl if f[:1] != "\\")
    s.untagged(f"{view.exists} EXISTS")
    if "IMAP4rev2" not in s.enabled:
        view.recent, view.claim = RecentSet(), claim
        _take_recent(s, view)
        s.untagged(f"{view.recent.count_in(view.uids)} RECENT")  # rfc3501:7.3.2
        unseen = next((i + 1 for i, u in enumerate(view.uids) if "\\Seen" not in view.flags[u]), 0)
        if unseen:
            s.untagged(f"OK [UNSEEN {unseen}] First unseen")
    for line in _flags_lines(view):
        s.untagged(line)
    s.untagged(f"OK [UIDVALIDITY {box.uidvalidity}] UIDs valid")
    s.untagged(f"OK [UIDNEXT {box.uidnext}] Predicted next UID")
    s.untagged(f"OK [MAILBOXID ({_mailbox_oid(box, view.owner)})] Mailbox id")  # rfc8474:4.2
    s.untagged(f"OK [URLMECH {urlauth.MECHANISM}] URL authorization mechanisms")  # rfc4467
    if view.condstore:
        s.untagged(f"OK [HIGHESTMODSEQ {view.highestmodseq}] Highest")
    shown = acl.imap_name(box.name) if place.shared else box.name
    s.untagged(b'LIST () "/" ' + s.mailbox_name(shown))
    s.selected = view
    s.state = SELECTED
    if args.qresync is not None:
        _qresync_report(s, view, args.qresync)
    code = "READ-ONLY" if shown_readonly else "READ-WRITE"
    s.tagged(cmd.tag, "OK", f"{cmd.name} completed", code)


def _take_recent(s: Session, view: Selected) -> bool:
    """rfc3501:2.3.2: the messages of the view no session was given as
    \\Recent yet become this session's; a read-only session sees them as
    recent and leaves them for the next one (estafeta.imap.recent). Whether
    this session got any."""
    if view.recent is None or view.claim is None or not view.uids:
        return False
    top = view.uids[-1]
    if view.readonly:
        low = max(view.claim.up_to, view.recent.ranges[-1][1] if view.recent else 0) + 1
        if top < low:
            return False
        view.recent.add(low, top)
        return True
    taken = claims(s.store).take(view.claim, top, s.store.claim_recent, view.owner, view.box.id)
    if taken is None:
        return False
    view.recent.add(*taken)
    return True


def _load_view(
    store: Store, owner: str, viewer: str | None, box: Mailbox, readonly: bool
) -> Selected:
    with store.reader(owner, viewer) as reader:
        return Selected.load(reader, box, readonly)


def _qresync_report(s: Session, view: Selected, params: Any) -> None:
    """rfc7162:3.2.5.2 — VANISHED (EARLIER) and FETCH for what changed since."""
    uidvalidity, modseq = params[0], params[1]
    known = params[2] if len(params) > 2 else None
    if uidvalidity != view.box.uidvalidity:
        return
    vanished = s.box_index().vanished_since(view.box.id, modseq)
    if known is not None and vanished:
        # Merged once: O(ranges log ranges + UIDs), not ranges x UIDs.
        wanted = known.merged(view.uids[-1] if view.uids else vanished[-1])
        vanished = [u for u in vanished if wanted.contains(u)]
    if vanished:
        s.untagged(f"VANISHED (EARLIER) {search_module.compress(vanished)}")
    for seq, uid in enumerate(view.uids, 1):
        if view.modseqs[uid] > modseq:
            s.untagged(s._flags_fetch(seq, uid, view.flags[uid], view.modseqs[uid]))


async def cmd_create(s: Session, cmd: Command) -> None:
    args: c.Create = cmd.args  # type: ignore[assignment]
    use = args.use[0] if args.use else None
    if args.use and len(args.use) > 1:
        raise No("One special-use attribute per mailbox", "USEATTR")
    # rfc9051:6.3.4 a trailing hierarchy separator declares that names will
    # be created below this one; we need no such declaration, so it is
    # ignored and the name is created without it.
    name = args.mailbox
    _refuse_unencoded(name)
    if name.endswith(DELIMITER) and name.strip(DELIMITER):
        name = name[: -len(DELIMITER)]
    owner = _user(s)
    if acl.in_namespace(name):
        # rfc4314:4 CREATE: "k" on the nearest existing parent; nobody makes
        # a top-level shared mailbox over IMAP (the administrator does).
        name, owner = _shared_parent(s, name), shared.OWNER
    box = await asyncio.to_thread(s.store.create_mailbox, owner, name, use)
    oid = _mailbox_oid(box, owner)
    s.tagged(cmd.tag, "OK", "CREATE completed", f"MAILBOXID ({oid})")  # rfc8474:4.1


def _mailbox_oid(box: Mailbox, owner: str) -> str:
    """rfc8474:4 MAILBOXID (estafeta.store.index.Mailbox.objectid): "S"
    for a mailbox of the shared store, whose ids are counted apart from the
    account's, so that no two mailboxes a user sees share one."""
    return "S" + box.objectid[1:] if owner == shared.OWNER else box.objectid


def _shared_parent(s: Session, name: str) -> str:
    """For CREATE and RENAME into the shared namespace: the name in the
    shared store, after checking "k" on its nearest existing parent."""
    inner = name[len(acl.PREFIX) + 1 :]
    parts = inner.split(DELIMITER)
    for depth in range(len(parts) - 1, 0, -1):
        parent = acl.PREFIX + DELIMITER + DELIMITER.join(parts[:depth])
        place = acl.locate(s, parent)
        if place.box is not None and place.rights:
            acl.need(place, "k", parent)
            return inner
    raise No("Shared mailboxes are made by the administrator", "NOPERM")


async def cmd_delete(s: Session, cmd: Command) -> None:
    args: c.Delete = cmd.args  # type: ignore[assignment]
    place = acl.locate(s, args.mailbox)
    if place.shared:
        acl.need(place, "x", args.mailbox)  # rfc4314:4 DELETE
        if DELIMITER not in place.name:
            raise No("Shared mailboxes are removed by the administrator", "NOPERM")
    view = s.selected
    if (
        view is not None
        and view.owner == place.owner
        and view.box.name in (place.name, canonical(place.name))
    ):
        raise No("Cannot delete the selected mailbox; select another first", "INUSE")
    await asyncio.to_thread(s.store.delete_mailbox, place.owner, place.name)
    if place.box is not None and not place.shared:
        # rfc5464:4.1 its METADATA entries go with it.
        await asyncio.to_thread(s.accounts.forget_metadata, _user(s), place.box.id)
    s.tagged(cmd.tag, "OK", "DELETE completed")


async def cmd_rename(s: Session, cmd: Command) -> None:
    args: c.Rename = cmd.args  # type: ignore[assignment]
    _refuse_unencoded(args.new)
    old, new = acl.in_namespace(args.old), acl.in_namespace(args.new)
    if old or new:
        if not (old and new):
            raise No("Mailboxes do not move between namespaces", "CANNOT")
        place = acl.locate(s, args.old)
        acl.need(place, "x", args.old)  # rfc4314:4 RENAME: "x" on the old name,
        if DELIMITER not in place.name:
            # As DELETE: a top-level one (and the delivery addresses that
            # name it, docs/shared-mailboxes.md) is the administrator's.
            raise No("Shared mailboxes are renamed by the administrator", "NOPERM")
        inner = _shared_parent(s, args.new)  # "k" on the new parent
        await asyncio.to_thread(s.store.rename_mailbox, shared.OWNER, place.name, inner)
        s.tagged(cmd.tag, "OK", "RENAME completed")
        return
    await asyncio.to_thread(s.store.rename_mailbox, _user(s), args.old, args.new)
    s.tagged(cmd.tag, "OK", "RENAME completed")


async def cmd_subscribe(s: Session, cmd: Command) -> None:
    args: c.Subscribe = cmd.args  # type: ignore[assignment]
    if cmd.name == "SUBSCRIBE":
        _refuse_unencoded(args.mailbox)
    await asyncio.to_thread(s.store.subscribe, _user(s), args.mailbox, cmd.name == "SUBSCRIBE")
    s.tagged(cmd.tag, "OK", f"{cmd.name} completed")


SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def _flags_lines(view: Selected) -> list[str]:
    """FLAGS and PERMANENTFLAGS for the keywords the view knows (rfc9051:7.3.5,
    7.1: "\\*" says new keywords may be made; none on a read-only view)."""
    every = " ".join([*SYSTEM_FLAGS, *sorted(view.keywords)])
    permanent = "" if view.readonly else f"{every} \\*"
    if not view.readonly and view.rights != acl.ALL:
        # rfc4314:5.1.1: the flags this user's rights let it change.
        may = [f for f in every.split() if shared.flag_right(f) in view.rights]
        permanent = " ".join([*may, "\\*"] if "w" in view.rights else may)
    return [f"FLAGS ({every})", f"OK [PERMANENTFLAGS ({permanent})] Flags permitted"]


def _new_keywords(view: Selected, flag_sets: Iterable[Sequence[str]]) -> list[str]:
    """rfc9051:7.3.5 / rfc3501:7.2.6: a keyword the client was not told of
    yet: the view learns it, and the FLAGS lines to send (else none)."""
    new = {f for flags in flag_sets for f in flags if f[:1] != "\\"} - view.keywords
    if not new:
        return []
    view.keywords = view.keywords | new
    return _flags_lines(view)


def _condstore_on(s: Session) -> None:
    """A CONDSTORE enabling command (rfc7162:3.1) while a mailbox is
    selected: the first one sends the mailbox's HIGHESTMODSEQ (rfc7162:3.1.2,
    3.1.8), so the client has a modseq to resynchronise from; from then on
    FETCH responses carry MODSEQ."""
    view = s.selected
    if view is not None and not view.condstore:
        view.condstore = True
        s.untagged(f"OK [HIGHESTMODSEQ {view.highestmodseq}] Highest")


def _refuse_unencoded(name: str) -> None:
    # rfc3501:5.1.3 a name that is not valid modified UTF-7 is not made.
    if isinstance(name, UnencodedName):
        raise No(f"{name!r} is not valid modified UTF-7 (rfc3501:5.1.3)", "CANNOT")


async def _know_viewer(s: Session) -> None:
    """At login: the user's viewer number in the shared store, if it may see
    a shared mailbox, so that no later command waits for the store's writer
    thread on the event loop to learn it (estafeta.store.shared)."""
    if s.shared_index().visible(_user(s)):
        await asyncio.to_thread(s.store.viewer_reader, shared.OWNER, _user(s))


def _user(s: Session) -> str:
    assert s.user is not None
    return s.user


def _reader_of(s: Session) -> tuple[str, str | None]:
    """(store, viewer) of the selected mailbox, for a reader of its own."""
    view = s.selected
    if view is None or not view.owner or view.owner == s.user:
        return _user(s), None
    return view.owner, _user(s)


# Above this many word operations (listing.cost; a few milliseconds), LIST
# and LSUB match on a thread of their own, so the event loop never waits for
# them (issue 14 item 2), and they never take a thread of asyncio's default
# pool, where logins and deliveries wait. Within listing's bounds the largest
# takes about 0.1 s for 1,000 mailboxes; several queue behind each other.
LIST_INLINE_COST = 100_000
_LIST_THREAD = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="estafeta-list")


async def _match(
    boxes: Sequence[Box], reference: str, patterns: Sequence[str], run: Callable[[], list[Entry]]
) -> list[Entry]:
    """``run`` (a LIST or LSUB match) inline when it is cheap, else on the
    LIST thread; patterns beyond listing's bounds get NO [LIMIT] (rfc5530:3)."""
    try:
        if list_cost((b.name for b in boxes), reference, patterns) <= LIST_INLINE_COST:
            return run()
        return await asyncio.get_running_loop().run_in_executor(_LIST_THREAD, run)
    except PatternLimit as exc:
        raise No(f"Too many or too long mailbox patterns: {exc}", "LIMIT") from None


async def cmd_list(s: Session, cmd: Command) -> None:
    args: c.List = cmd.args  # type: ignore[assignment]
    rights, boxes = _list_boxes(s)
    if not args.patterns or args.patterns == ("",):
        # rfc9051:6.3.9: an empty pattern asks for the delimiter.
        s.untagged('LIST (\\Noselect) "/" ""')
        s.tagged(cmd.tag, "OK", "LIST completed")
        return
    entries = await _match(
        boxes,
        args.reference,
        args.patterns,
        lambda: list_mailboxes(
            boxes, args.reference, args.patterns, selection=args.selection, returns=args.returns
        ),
    )
    for entry in entries:
        line = (
            b"LIST (" + " ".join(entry.attributes).encode() + b') "/" ' + s.mailbox_name(entry.name)
        )
        if entry.childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        s.untagged(line)
        listed = entry.name in rights and "\\NonExistent" not in entry.attributes
        if listed and "MYRIGHTS" in args.returns:
            s.untagged(acl.myrights_line(s, entry.name, rights[entry.name]))  # rfc8440:3
        if args.status_items and listed and "r" in rights[entry.name]:
            # rfc5819:2 LIST-STATUS (rfc4314:4: STATUS needs "r")
            s.untagged(_status_line(s, entry.name, args.status_items))
    s.tagged(cmd.tag, "OK", "LIST completed")


async def cmd_lsub(s: Session, cmd: Command) -> None:
    args: c.Lsub = cmd.args  # type: ignore[assignment]
    _, boxes = _list_boxes(s)
    entries = await _match(
        boxes, args.reference, [args.pattern], lambda: lsub(boxes, args.reference, args.pattern)
    )
    for entry in entries:
        s.untagged(
            b"LSUB (" + " ".join(entry.attributes).encode() + b') "/" ' + s.mailbox_name(entry.name)
        )
    s.tagged(cmd.tag, "OK", "LSUB completed")


def _status_line(s: Session, name: str, items: Sequence[str]) -> bytes:
    place = acl.locate(s, name)
    box = acl.need(place, "r", name)  # rfc4314:4 STATUS
    reader = acl.viewer_reader(s, place)
    counts = reader.status_counts(box.id, items)
    values = []
    for item in items:
        item = item.upper()
        if item in counts:
            value = counts[item]
        elif item == "UIDNEXT":
            value = box.uidnext
        elif item == "UIDVALIDITY":
            value = box.uidvalidity
        elif item == "RECENT":
            # rfc3501:6.3.10: messages no session was given as \Recent.
            claimed = claims(s.store).claimed(place.owner, box.id, box.recent_uid)
            value = reader.count_above(box.id, claimed)
        elif item == "HIGHESTMODSEQ":
            value = box.highestmodseq
        elif item == "APPENDLIMIT":
            value = s.settings.append_limit
        elif item == "MAILBOXID":  # rfc8474:4.3
            values.append(f"MAILBOXID ({_mailbox_oid(box, place.owner)})")
            continue
        else:
            raise Bad(f"Unknown STATUS item {item}")
        values.append(f"{item} {value}")
    return b"STATUS " + s.mailbox_name(name) + f" ({' '.join(values)})".encode()


async def cmd_status(s: Session, cmd: Command) -> None:
    args: c.Status = cmd.args  # type: ignore[assignment]
    s.untagged(_status_line(s, args.mailbox, args.items))
    if any(item.upper() == "HIGHESTMODSEQ" for item in args.items):
        _condstore_on(s)
    s.tagged(cmd.tag, "OK", "STATUS completed")


async def cmd_append(s: Session, cmd: Command) -> None:
    args: c.Append = cmd.args  # type: ignore[assignment]
    messages = args.messages()
    if len(messages) > 1 or args.catenate:
        await _append_many(s, cmd, args, messages)
        return
    if len(args.data) > s.settings.append_limit:
        raise No("Message too large", "TOOBIG")  # rfc7889
    if acl.in_namespace(args.mailbox):
        await _append_shared(s, cmd, args, [(args.data, args.flags, args.date)])
        return
    limit = _quota_limit(s)
    if limit is not None:
        used = s.index().used_octets()
        if used + len(args.data) > limit:
            raise No("Quota exceeded", "OVERQUOTA")  # rfc9208:4.3.1
    when = args.date.timestamp() if args.date is not None else None
    # The check above spares the work of a message that cannot fit; the one
    # that counts is made again with the commit, in the store's writer thread
    # (two APPENDs or an APPEND and a COPY cannot both take the same room).
    delivered = await s.store.append(
        _user(s), args.mailbox, args.data, args.flags, when, quota=limit
    )
    s.report_updates(allow_expunge=True)
    s.tagged(
        cmd.tag, "OK", "APPEND completed", f"APPENDUID {delivered.uidvalidity} {delivered.uid}"
    )


async def _append_many(
    s: Session, cmd: Command, args: c.Append, messages: Sequence[c.AppendMessage]
) -> None:
    """rfc3502 MULTIAPPEND and rfc4469 CATENATE: every message is built
    (URLs resolved) and checked first, then all are stored in one commit, or
    none (rfc3502:6.3.11)."""
    shared_target = acl.in_namespace(args.mailbox)
    if shared_target:
        acl.need(acl.locate(s, args.mailbox), "i", args.mailbox)
    elif s.index().mailbox(args.mailbox) is None:
        _refuse_unencoded(args.mailbox)
        # rfc4469:3: TRYCREATE whatever else is wrong with the URLs.
        raise No(f"No mailbox {args.mailbox}", "TRYCREATE")
    resolver = _UrlResolver(s)
    built: list[tuple[bytes, Sequence[str], float | None]] = []
    total = 0
    for message in messages:
        data = message.data
        if message.catenate:
            data = await resolver.catenate(message.catenate)
        if len(data) > s.settings.append_limit:
            raise No("Message too large", "TOOBIG")  # rfc7889, rfc4469:5
        total += len(data)
        built.append((data, message.flags, message.date.timestamp() if message.date else None))
    if shared_target:
        when = [(d, f, None if t is None else _from_timestamp(t)) for d, f, t in built]
        await _append_shared(s, cmd, args, when)
        return
    limit = _quota_limit(s)
    if limit is not None and s.index().used_octets() + total > limit:
        raise No("Quota exceeded", "OVERQUOTA")  # rfc9208:4.3.1
    delivered = await s.store.append_many(_user(s), args.mailbox, built, quota=limit)
    s.report_updates(allow_expunge=True)
    uids = search_module.compress([d.uid for d in delivered])
    # rfc4315:3 APPENDUID with a uid-set for several messages.
    s.tagged(cmd.tag, "OK", "APPEND completed", f"APPENDUID {delivered[0].uidvalidity} {uids}")


def _from_timestamp(when: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(when, datetime.UTC)


async def _append_shared(
    s: Session, cmd: Command, args: c.Append, messages: Sequence[tuple[bytes, Sequence[str], Any]]
) -> None:
    """APPEND into a shared mailbox: "i" (rfc4314:4), flags the user may not
    set dropped, \\Seen kept as the user's own; no quota (the shared store
    has none); one commit for all, then the \\Seen of the appender."""
    place = acl.locate(s, args.mailbox)
    box = acl.need(place, "i", args.mailbox)
    built: list[tuple[bytes, Sequence[str], float | None]] = []
    seen = []
    for data, flags, date in messages:
        allowed = acl.allowed_flags(flags, place.rights)
        seen.append(any(f.lower() == "\\seen" for f in allowed))
        common = [f for f in allowed if f.lower() != "\\seen"]
        built.append((data, common, date.timestamp() if date is not None else None))
    delivered = await s.store.append_many(shared.OWNER, box.name, built)
    mine = [d.uid for d, was_seen in zip(delivered, seen, strict=True) if was_seen]
    if mine:
        await asyncio.to_thread(
            s.store.store_flags, shared.OWNER, box.name, mine, "+", ["\\Seen"],
            viewer=_user(s), rights=place.rights,
        )  # fmt: skip
    s.report_updates(allow_expunge=True)
    uids = search_module.compress([d.uid for d in delivered])
    s.tagged(cmd.tag, "OK", "APPEND completed", f"APPENDUID {delivered[0].uidvalidity} {uids}")


class _UrlResolver:
    """The octets IMAP URLs name (rfc4469:3), for one APPEND: each message
    read once, the octets read bounded (a CATENATE of many URLs to large
    messages costs reads, not only what it keeps)."""

    def __init__(self, s: Session) -> None:
        self.s = s
        # (reader, mailbox id, UID): a shared mailbox's ids are another store's
        self.messages: dict[tuple[int, int, int], fetch_module.MessageData] = {}
        self.budget = 4 * s.settings.append_limit

    async def catenate(self, parts: Sequence[c.CatPart]) -> bytes:
        out = bytearray()
        for part in parts:
            if part.text is not None:
                out += part.text
            else:
                assert part.url is not None
                out += await self.octets(part.url)
            if len(out) > self.s.settings.append_limit:
                raise No("Message too large", "TOOBIG")  # rfc4469:5
        return bytes(out)

    async def octets(self, url: str) -> bytes:
        s = self.s
        # rfc4469:5 url-resp-text: TEXT-CHARs but "]".
        code = "BADURL " + re.sub(r"[\x00-\x1f\x7f\]]", lambda m: f"%{ord(m[0]):02X}", url)
        try:
            parsed = imapurl.parse(url)
        except imapurl.BadUrl as exc:
            raise No(f"Bad URL: {exc}", code) from None
        if parsed.user is not None and parsed.user.lower() != _user(s).lower():
            raise No("Bad URL: another account's message", code)
        reader = s.index()
        if parsed.mailbox is None:  # rfc5092:7.2 relative to the selected mailbox
            reader = s.box_index()
            box = reader.mailbox(s.selected.box.name) if s.selected is not None else None
        elif acl.in_namespace(parsed.mailbox):
            place = acl.locate(s, parsed.mailbox)
            box = place.box if "r" in place.rights else None
            reader = acl.viewer_reader(s, place)
        else:
            box = s.index().mailbox(parsed.mailbox)
        if box is None or parsed.uidvalidity not in (None, box.uidvalidity):
            raise No("Bad URL: no such mailbox", code)
        message = self.messages.get((id(reader), box.id, parsed.uid))
        if message is None:
            rows = reader.fetch_rows(box.id, [parsed.uid], summary=True)
            if not rows:
                raise No("Bad URL: no such message", code)
            uid, file, size, internal_date, flag_text, modseq, summary, _ = rows[0]
            self.budget -= size
            if self.budget < 0:
                raise No("CATENATE reads too much", "LIMIT")  # rfc5530:3

            def read() -> fetch_module.MessageData:
                # Off the event loop: the file, and the summary's JSON.
                content = reader.content(file)
                return fetch_module.MessageData(
                    uid=uid, flags=tuple(flag_text.split()), internal_date=internal_date,
                    size=size, modseq=modseq, summary=Summary.from_json(summary or ""),
                    load=lambda: content,
                )  # fmt: skip

            try:
                message = await asyncio.to_thread(read)
            except FileNotFoundError:
                raise No("Bad URL: the message was expunged", code) from None
            self.messages[(id(reader), box.id, parsed.uid)] = message
        # The section's octets (a MIME walk of the message) in a thread too.
        return await asyncio.to_thread(
            fetch_module.section_octets, message, parsed.section, parsed.partial
        )


async def cmd_idle(s: Session, cmd: Command) -> None:
    """rfc2177 / rfc9051:6.3.13: report changes until DONE."""
    assert s.user is not None
    # Watching before the first report: a change committed meanwhile is
    # either in that report or wakes the loop below.
    s.store.changes.watch(s.user, s._watch)
    # A shared mailbox changes in the shared store: hear its commits too.
    other = s.selected.owner if s.selected is not None and s.selected.owner != s.user else None
    if other:
        s.store.changes.watch(other, s._watch)
    try:
        s.send("+ idling")
        s.report_updates(allow_expunge=True)
        await s.refresh_contexts()  # rfc5267:4.3 updating searches, as they change
        await s.flush()
        s.parser.expect_line()
        deadline = s._loop.time() + s.settings.idle_timeout
        while True:
            event = s.parser.next_event()
            if isinstance(event, RawLine):
                if event.line.strip().upper() != b"DONE":
                    raise Bad("Expected DONE")
                break
            if isinstance(event, Eof):
                s.state = LOGOUT
                return
            # One task per connection in all, waiting in the read, and the
            # mailbox's view shared with the other sessions idling on it
            # (memory: 100,000 IDLE connections, issue 17); a change wakes it.
            if s.selected is not None:
                s.selected.share(s.share_key())
            data = await s._read_or_wake(deadline - s._loop.time(), wake_on_change=True)
            if data is not None:
                s.parser.receive_data(data)
            if s._changed:
                s.report_updates(allow_expunge=True)
                await s.refresh_contexts()
                if s._notify_changed and s.notify_spec is not None:
                    s.notify_poll()  # rfc5465:4 the same events in IDLE
                await s.flush()
    finally:
        s.store.changes.unwatch(s.user, s._watch)
        if other:
            s.store.changes.unwatch(other, s._watch)
    s.tagged(cmd.tag, "OK", "IDLE terminated")


async def cmd_check(s: Session, cmd: Command) -> None:
    s.report_updates(allow_expunge=True)
    s.tagged(cmd.tag, "OK", "CHECK completed")


async def cmd_close(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    if cmd.name == "CLOSE" and not view.readonly and "e" in view.rights:
        # rfc9051:6.4.1: expunge silently; rfc4314:4: not without "e", still OK.
        await asyncio.to_thread(s.store.expunge, view.owner, view.box.name)
    s._close_selected()
    s.state = AUTHENTICATED
    s.tagged(cmd.tag, "OK", f"{cmd.name} completed")


async def cmd_expunge(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    if "e" not in view.rights:
        raise No("Not allowed to expunge: needs the 'e' right (rfc4314:4)", "NOPERM")
    if view.readonly:
        raise No("Mailbox is read-only")
    uids = None
    if cmd.uid:
        args: c.UidExpunge = cmd.args  # type: ignore[assignment]
        uids = view.resolve(args.sequence_set, uid=True, saved=s.saved_result)
    await asyncio.to_thread(s.store.expunge, view.owner, view.box.name, uids)
    s.report_updates(allow_expunge=True)
    s.tagged(
        cmd.tag,
        "OK",
        "EXPUNGE completed",
        f"HIGHESTMODSEQ {view.highestmodseq}" if view.condstore else "",
    )


def _needs_valid(s: Session, cmd: Command, sequence: Any) -> None:
    view = s.selected
    assert view is not None
    if not cmd.uid and not view.valid_seqs(sequence):
        raise Bad("Invalid message sequence number")


async def cmd_fetch(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    args: c.Fetch = cmd.args  # type: ignore[assignment]
    if len(args.atts) > fetch_module.MAX_ITEMS:
        # rfc9051:6.4.5 sets no bound, this one is ours: a tagged NO (rfc9051:7.1.2)
        # with the rfc5530:3 LIMIT code, before anything is read or sent.
        raise No(f"Too many FETCH items (at most {fetch_module.MAX_ITEMS})", "LIMIT")
    _needs_valid(s, cmd, args.sequence_set)
    s.report_updates(allow_expunge=False)
    uids = view.resolve(args.sequence_set, uid=cmd.uid, saved=s.saved_result)
    atts = list(args.atts)
    if cmd.uid and not any(a.name == "UID" for a in atts):
        atts.insert(0, FetchAtt("UID"))  # rfc9051:6.4.9
    if args.changedsince is not None or any(a.name == "MODSEQ" for a in atts):
        _condstore_on(s)
        if not any(a.name == "MODSEQ" for a in atts):
            atts.append(FetchAtt("MODSEQ"))
    if args.vanished:
        if not cmd.uid or args.changedsince is None:
            raise Bad("VANISHED needs UID FETCH with CHANGEDSINCE (rfc7162:3.2.6)")
        gone = s.box_index().vanished_since(view.box.id, args.changedsince)
        if gone:
            # "*" is the largest UID in the view (else the largest expunged one).
            wanted = args.sequence_set.merged(view.uids[-1] if view.uids else gone[-1])
            gone = [uid for uid in gone if wanted.contains(uid)]
        if gone:
            s.untagged(f"VANISHED (EARLIER) {search_module.compress(gone)}")
    row_format = fetch_module.RowFormat.for_items(atts)
    if row_format is not None:
        # Only items of the index row, as a client listing a mailbox asks:
        # whole lines straight from the rows (issue 17).
        await _fetch_from_rows(s, view, uids, row_format, args.changedsince)
        s.tagged(cmd.tag, "OK", f"{'UID ' if cmd.uid else ''}FETCH completed")
        return
    # rfc4314:4: an implicit \\Seen needs "s"; without it the FETCH goes on.
    sets_seen = fetch_module.sets_seen(atts) and not view.readonly and "s" in view.rights
    # UID FLAGS RFC822.SIZE INTERNALDATE MODSEQ come from columns: skip the JSON.
    needs_summary = any(
        a.name not in _COLUMN_ITEMS
        and a.name not in fetch_module.OBJECT_KINDS
        and a.name != "ENVELOPE"
        for a in atts
    )
    # rfc8474:5.3 EMAILID, THREADID, rfc8514:4.2 SAVEDATE: read only when asked for.
    wants_objects = any(a.name in fetch_module.OBJECT_KINDS for a in atts)
    objects: dict[int, Any] = {}
    wants_envelope = any(a.name == "ENVELOPE" for a in atts)
    needs_file = fetch_module.needs_content(atts)
    content = s.box_index().content
    inline = getattr(s.box_index(), "inline_content", True)
    imap4rev2 = "IMAP4rev2" in s.enabled
    utf8 = "UTF8=ACCEPT" in s.enabled
    # Responses are streamed message by message, item by item, with
    # back-pressure (issue 14 item 5): one message file and a bounded buffer
    # at a time, however many items, messages or octets were asked for.
    out = ResponseStream(s.writer, s.settings.idle_timeout, s.peer)
    try:
        for chunk_start in range(0, len(uids), _FETCH_ROWS):
            chunk = uids[chunk_start : chunk_start + _FETCH_ROWS]
            rows = _fetch_rows(s, view.box.id, chunk, needs_summary)
            if wants_envelope and not needs_summary and any(row[7] is None for row in rows):
                rows = _fetch_rows(s, view.box.id, chunk, True)  # rows from before schema 3
            if wants_objects:
                objects = {row[0]: row[1:] for row in s.box_index().object_rows(view.box.id, chunk)}
            new_flags: dict[int, tuple[tuple[str, ...], int]] = {}
            if sets_seen:
                # rfc9051:6.4.5: BODY[...] sets \Seen; store it first so that the
                # FLAGS in this very response already show it.
                unseen = [row[0] for row in rows if "\\Seen" not in row[4].split()]
                if unseen:
                    out.flush_nowait()
                    result = await asyncio.to_thread(
                        s.store.store_flags, view.owner, view.box.name, unseen, "+", ["\\Seen"],
                        viewer=_user(s), rights=view.rights,
                    )  # fmt: skip
                    for change in result.changed:
                        view.apply_flags([(change.uid, change.flags, change.modseq)])
                        new_flags[change.uid] = (change.flags, change.modseq)
            for uid, file, size, internal_date, flag_text, modseq, summary, envelope in rows:
                if args.changedsince is not None and modseq <= args.changedsince:
                    continue
                flags, modseq = new_flags.get(uid, (tuple(flag_text.split()), modseq))
                if view.is_recent(uid):
                    flags = ("\\Recent", *flags)  # rfc3501:2.3.2
                message = fetch_module.MessageData(
                    uid=uid,
                    flags=flags,
                    internal_date=internal_date,
                    size=size,
                    modseq=modseq,
                    summary=Summary.from_json(summary)
                    if needs_summary or (wants_envelope and envelope is None)
                    else _NO_SUMMARY,
                    load=functools.partial(content, file),
                    envelope=envelope,
                    objects=objects.get(uid, _NO_OBJECTS),
                )
                atts_here = atts
                if uid in new_flags and not any(a.name == "FLAGS" for a in atts):
                    atts_here = [*atts, FetchAtt("FLAGS")]  # the \Seen change is reported
                try:
                    # Everything that can fail happens before a byte is sent.
                    if needs_file and (size > _READ_INLINE or not inline):
                        await asyncio.to_thread(fetch_module.prepare, message, atts_here)
                    else:
                        fetch_module.prepare(message, atts_here)
                except fetch_module.FetchError as exc:
                    raise No(str(exc), exc.code) from None
                except FileNotFoundError:
                    continue  # expunged meanwhile by another session
                await _stream_fetch(
                    s, out, view.seq_of(uid) or 0, message, atts_here, imap4rev2, utf8
                )
            await out.pump()
    finally:
        out.flush_nowait()
    s.tagged(cmd.tag, "OK", f"{'UID ' if cmd.uid else ''}FETCH completed")


_FETCH_ROWS = 256  # index rows read at a time
_READ_INLINE = 256 * 1024  # larger message files are read (and decoded) in a thread


def _fetch_rows(s: Session, mailbox_id: int, chunk: Sequence[int], summary: bool) -> list[Any]:
    return s.box_index().fetch_rows(mailbox_id, chunk, summary=summary)


async def _stream_fetch(
    s: Session,
    out: ResponseStream,
    seq: int,
    message: fetch_module.MessageData,
    atts: Sequence[FetchAtt],
    imap4rev2: bool,
    utf8: bool,
) -> None:
    """One ``* seq FETCH (...)`` response (rfc9051:7.5.2), piece by piece."""
    pieces = fetch_module.render_pieces(message, atts, imap4rev2=imap4rev2, utf8=utf8)
    try:
        if out.add(b"* %d FETCH (" % seq):
            await out.pump()
        for piece in pieces:
            if out.add(piece):
                await out.pump()
        out.add(b")\r\n")
    except ConnectionError:
        raise  # the client is gone, or stopped reading (ResponseStream)
    except Exception:
        # Half a response cannot be taken back: the stream is unusable.
        log.exception("FETCH response cut short (uid %d)", message.uid)
        s.writer.transport.abort()
        raise ConnectionResetError("FETCH response cut short") from None


async def _fetch_from_rows(
    s: Session,
    view: Selected,
    uids: Sequence[int],
    row_format: fetch_module.RowFormat,
    changedsince: int | None,
) -> None:
    """The FETCH responses of ``uids`` for items the index rows answer
    alone (fetch.RowFormat): a line per message rendered from its row,
    written about FLUSH octets at a time with the same back-pressure as
    ``_stream_fetch``; other sessions get a turn after every
    ``_FETCH_ROWS`` messages, however fast the client reads."""
    out = ResponseStream(s.writer, s.settings.idle_timeout, s.peer)
    try:
        for chunk_start in range(0, len(uids), _FETCH_ROWS):
            chunk = uids[chunk_start : chunk_start + _FETCH_ROWS]
            rows = _fetch_rows(s, view.box.id, chunk, False)
            if row_format.lacks_envelopes(rows):
                # Rows from before schema 3: the envelope from the summary.
                rows = row_format.with_envelopes(_fetch_rows(s, view.box.id, chunk, True))
            if changedsince is not None:
                rows = [row for row in rows if row[5] > changedsince]
            if view.recent:
                rows = [
                    (*row[:4], "\\Recent " + row[4], *row[5:]) if row[0] in view.recent else row
                    for row in rows
                ]  # rfc3501:2.3.2
            if rows:
                await out.put_many(row_format.lines(_row_seqs(view, rows), rows))
            if s.writer.transport.is_closing():
                raise ConnectionResetError("the client is gone")
            await asyncio.sleep(0)
        await out.pump()
    finally:
        out.flush_nowait()


def _row_seqs(view: Selected, rows: Sequence[Any]) -> Sequence[int]:
    """The sequence numbers of ``rows`` (ascending UIDs of the view): a
    range when they follow each other in the view (1:*), else a bisection
    each."""
    row_uids = [row[0] for row in rows]
    first = view.seq_of(row_uids[0]) or 0
    if first and view.uids[first - 1 : first - 1 + len(row_uids)] == row_uids:
        return range(first, first + len(row_uids))
    return [view.seq_of(uid) or 0 for uid in row_uids]


_COLUMN_ITEMS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "MODSEQ"})
_NO_SUMMARY = summarize(b"")
_NO_OBJECTS = (None, None, None)


_STORE_CHUNK = 128 * 1024  # characters of STORE's FETCH responses per write


async def cmd_store(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    if view.readonly:
        raise No("Mailbox is read-only")
    args: c.Store = cmd.args  # type: ignore[assignment]
    _needs_valid(s, cmd, args.sequence_set)
    if "\\Recent" in args.flags:
        raise Bad("\\Recent cannot be stored")
    # rfc4314:4: "s" for \Seen, "t" for \Deleted, "w" for the others; a
    # STORE fails only when none of what it would change may change.
    touched = {shared.flag_right(f) for f in canonical_flags(args.flags)}
    if args.mode == "":
        touched = set("stw")
    if not touched & set(view.rights):
        raise No("Not allowed to change these flags (rfc4314:4)", "NOPERM")
    s.report_updates(allow_expunge=False)
    uids = view.resolve(args.sequence_set, uid=cmd.uid, saved=s.saved_result)
    if args.unchangedsince is not None:
        _condstore_on(s)
    result = await asyncio.to_thread(
        s.store.store_flags,
        view.owner,
        view.box.name,
        uids,
        args.mode,
        args.flags,
        args.unchangedsince,
        viewer=_user(s),
        rights=view.rights,
    )
    changed = {ch.uid: ch for ch in result.changed}
    failed = set(result.failed)
    for told in _new_keywords(view, [ch.flags for ch in result.changed]):
        s.untagged(told)
    # The FETCH responses go out in large writes with flow control, not one
    # write per message (a STORE 1:* answers for the whole mailbox).
    out: list[str] = []
    size = 0
    for uid in uids:
        change = changed.get(uid)
        line: str | None = None
        if change is not None:
            view.apply_flags([(uid, change.flags, change.modseq)])
            if not args.silent or view.condstore:
                seq = view.seq_of(uid) or 0
                if args.silent:
                    uid_part = f"UID {uid} " if cmd.uid else ""
                    line = f"* {seq} FETCH ({uid_part}MODSEQ ({change.modseq}))\r\n"
                else:
                    line = f"* {s._flags_fetch(seq, uid, change.flags, change.modseq)}\r\n"
        elif not args.silent and uid not in failed and uid in view.flags:
            seq = view.seq_of(uid) or 0
            line = f"* {s._flags_fetch(seq, uid, view.flags[uid], view.modseqs[uid])}\r\n"
        if line is not None:
            out.append(line)
            size += len(line)
            if size >= _STORE_CHUNK:
                s.writer.write("".join(out).encode("utf-8"))
                out, size = [], 0
                await s.flush()
    if out:
        s.writer.write("".join(out).encode("utf-8"))
    view.highestmodseq = (
        max(view.highestmodseq, result.highestmodseq)
        if not view.pending_expunge
        else view.highestmodseq
    )
    if result.failed:
        numbers = result.failed if cmd.uid else [view.seq_of(u) or 0 for u in result.failed]
        s.tagged(
            cmd.tag,
            "OK",
            "Conditional STORE failed for some",
            f"MODIFIED {search_module.compress(sorted(numbers))}",
        )
    else:
        s.tagged(cmd.tag, "OK", "STORE completed")
    if s.trainer is not None and args.mode in ("+", ""):
        # $Junk / $NotJunk (IANA IMAP keywords): the client says what it is.
        keywords = {f.lower() for f in args.flags}
        verdict = True if "$junk" in keywords else False if "$notjunk" in keywords else None
        taught = [ch.uid for ch in result.changed]
        if verdict is not None and taught and view.owner == s.user:
            _teach(s, view.box.name, taught, verdict)


async def cmd_copy(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    args: c.Copy = cmd.args  # type: ignore[assignment]
    _needs_valid(s, cmd, args.sequence_set)
    move = cmd.name == "MOVE"
    if move and view.readonly:
        raise No("Mailbox is read-only")
    if move and not all(right in view.rights for right in "te"):
        raise No("Not allowed to move out: needs 't' and 'e' (rfc4314:4)", "NOPERM")
    target = acl.locate(s, args.mailbox)
    if target.shared:
        acl.need(target, "i", args.mailbox)  # rfc4314:4 COPY / MOVE into
    s.report_updates(allow_expunge=False)
    uids = view.resolve(args.sequence_set, uid=cmd.uid, saved=s.saved_result)
    if target.owner != view.owner:
        # Into the account from the shared store, MOVE too: it grows.
        quota = None if target.shared else _quota_limit(s)
        result = await acl.copy_across(s, view, uids, target, move, quota)
    else:
        # rfc9208:4.3.1 OVERQUOTA: checked in the store's writer thread, atomically
        # with the copy. A MOVE stays within the account: no quota to check.
        quota = None if move or target.shared else _quota_limit(s)
        result = await asyncio.to_thread(
            s.store.copy, view.owner, view.box.name, uids, target.name, move, quota
        )
    code = ""
    if result.source_uids:
        code = (f"COPYUID {result.uidvalidity} {search_module.compress(result.source_uids)} "
                f"{search_module.compress(result.dest_uids)}")  # fmt: skip
    if move:
        # rfc6851:4.3: COPYUID in an untagged OK, then the expunges.
        if code:
            s.untagged(f"OK [{code}] Moved")
        s.report_updates(allow_expunge=True)
        s.tagged(cmd.tag, "OK", "MOVE completed")
    else:
        s.tagged(cmd.tag, "OK", "COPY completed", code)
    if s.trainer is not None and result.dest_uids and view.owner == s.user == target.owner:
        _teach_moved(s, view.box, args.mailbox, result.dest_uids)


# -- training the junk filter (issue 16) -------------------------------------------

_READ_LIMIT = 1 << 20  # octets of one message read for training


def _kind(box: Mailbox) -> str:
    """ "junk", "trash" or "" for a mailbox (rfc6154 special use, else the name)."""
    use = (box.special_use or "").lower()
    name = box.name.rsplit("/", 1)[-1].lower()
    if use == "\\junk" or (not use and name in ("junk", "spam")):
        return "junk"
    if use == "\\trash" or (not use and name == "trash"):
        return "trash"
    return ""


def _teach_moved(s: Session, source: Mailbox, target: str, uids: list[int]) -> None:
    """Into Junk from elsewhere: spam; out of Junk, not into Trash: ham."""
    box = s.store.shared_reader(_user(s)).mailbox(target)
    if box is None:
        return
    to, came_from = _kind(box), _kind(source)
    if to == "junk" and came_from != "junk":
        _teach(s, box.name, uids, True)
    elif came_from == "junk" and to not in ("junk", "trash"):
        _teach(s, box.name, uids, False)


def _teach(s: Session, mailbox: str, uids: list[int], spam: bool) -> None:
    assert s.trainer is not None
    store, user = s.store, _user(s)

    def load(limit: int) -> tuple[list[bytes], int]:
        # In the trainer's worker thread: the messages as the index names
        # them now, each read up to a cap.
        return store.read_messages(user, mailbox, uids, limit, _READ_LIMIT)

    s.trainer.submit(user, spam, load)


async def cmd_search(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    args: c.Search = cmd.args  # type: ignore[assignment]
    _check_context_tag(s, cmd)
    s.report_updates(allow_expunge=False)
    key: SearchKey = args.key
    saving = args.return_options is not None and "SAVE" in args.return_options
    matched = await _search(s, view, key, saving=saving)
    numbers = [m.uid if cmd.uid else m.seq for m in matched]
    options = list(args.return_options) if args.return_options is not None else None
    if options is not None and ("UPDATE" in options or "CONTEXT" in options):
        if "UPDATE" in options:
            _start_context(s, view, cmd, key, [m.uid for m in matched])
        elif not set(options) - {"CONTEXT", "SAVE"} and args.partial is None:
            options.append("ALL")  # rfc5267:4.2 CONTEXT is a hint: RETURN (CONTEXT) is RETURN ()
        options = [o for o in options if o not in ("UPDATE", "CONTEXT")]
        if not options and args.partial is None:
            # rfc5267:4.3 RETURN (UPDATE) alone: an ESEARCH without data.
            s.untagged(
                b"ESEARCH (TAG "
                + contexts_module.quoted_tag(cmd.tag).encode()
                + b")"
                + (b" UID" if cmd.uid else b"")
            )
            s.tagged(cmd.tag, "OK", f"{'UID ' if cmd.uid else ''}SEARCH completed")
            return
    if options is not None and "SAVE" in [o.upper() for o in options]:
        s.saved_result = [m.uid for m in matched]
        options = [o for o in options if o.upper() != "SAVE"]
        if not options and args.partial is None:
            s.tagged(cmd.tag, "OK", "SEARCH completed (saved)")
            return
    # rfc7162:3.1.5 / rfc4731:3.2: which messages' modseq is reported depends on RETURN.
    highest = None
    if _uses_modseq(key):
        _condstore_on(s)
        highest = search_module.response_modseq(matched, options)
    if options is not None or "IMAP4rev2" in s.enabled:
        s.untagged(
            search_module.render_esearch(
                cmd.tag,
                numbers,
                options or ([] if args.partial else ["ALL"]),
                uid=cmd.uid,
                modseq=highest,
                partial_range=args.partial,
            )
        )
    else:
        s.untagged(search_module.render_search(numbers, modseq=highest))
    s.tagged(cmd.tag, "OK", f"{'UID ' if cmd.uid else ''}SEARCH completed")


def _check_context_tag(s: Session, cmd: Command) -> None:
    """rfc5267:4.3 a searching command with the tag of a live updating
    search is refused with BAD."""
    if cmd.tag in s.live_contexts():
        raise Bad(f"Tag reuse: {cmd.tag[:40]} names a search that is being updated")


def _start_context(
    s: Session,
    view: Selected,
    cmd: Command,
    key: SearchKey,
    matched: Sequence[int],
    *,
    criteria: tuple[tuple[str, bool], ...] | None = None,
) -> None:
    """rfc5267:4.3 keep the result (UIDs; for SORT, in sort order) of a
    SEARCH or SORT ... RETURN (UPDATE) up to date, or refuse to: NO
    [NOUPDATE] (rfc5267:4.3.1) past MAX_CONTEXTS (MAX_SORT_CONTEXTS sorted)."""
    live = s.live_contexts()
    sorted_live = sum(1 for context in live.values() if context.criteria is not None)
    if len(live) >= contexts_module.MAX_CONTEXTS or (
        criteria is not None and sorted_live >= contexts_module.MAX_SORT_CONTEXTS
    ):
        s.untagged(contexts_module.noupdate(cmd.tag))
        return
    s._contexts_view = view
    live[cmd.tag] = contexts_module.Context(
        cmd.tag,
        key,
        cmd.uid,
        set(matched),
        max(view.modseqs.values(), default=0),
        criteria,
        list(matched) if criteria is not None else [],
    )


async def cmd_cancelupdate(s: Session, cmd: Command) -> None:
    """rfc5267:4.3.5: stop updating the searches with these tags."""
    args: c.CancelUpdate = cmd.args  # type: ignore[assignment]
    live = s.live_contexts()
    unknown = [tag for tag in args.tags if tag not in live]
    if unknown:
        raise Bad(f"No updating search has the tag {unknown[0][:40]!r}")
    for tag in args.tags:
        del live[tag]
    s.tagged(cmd.tag, "OK", "CANCELUPDATE completed")


async def _search(
    s: Session,
    view: Selected,
    key: SearchKey,
    *,
    saving: bool = False,
    uids: Sequence[int] | None = None,
) -> list[search_module.Candidate]:
    """The messages of ``view`` that match ``key`` (among ``uids`` when
    given), in mailbox order, evaluated on the search pool within a budget;
    No [LIMIT] when it runs out (and, ``saving``, "$" emptied)."""
    content = s.box_index().content
    # Flags, dates, sizes and numbers come from columns; skip the summary
    # JSON (the bulk of a row) unless a key reads headers or the body. The
    # index narrows the messages down first (flags, header columns, sizes:
    # search.conditions); every row it returns is checked by evaluate.
    largest_uid = view.uids[-1] if view.uids else 0
    conditions = search_module.conditions(key, largest_uid)
    if uids is not None:
        conditions.append(Condition("uid_in", value=json.dumps(sorted(uids))))
    texts = search_module.fulltext_keys(key)
    if texts:
        # BODY / TEXT: the full-text index names the messages that may
        # match (and those it does not hold yet); evaluate checks them.
        try:
            allowed = await _fulltext_candidates(s, view.box, texts)
        except search_module.SearchLimit as exc:
            log_event(log, "search_limit", logging.WARNING, user=s.user, why=str(exc))
            if saving:
                s.saved_result = []  # rfc5182:2.1: a failed SEARCH ... SAVE empties "$"
            raise No("Search too expensive", "LIMIT") from None  # rfc5530:3
        if allowed is not None:
            conditions.append(Condition("uid_in", value=json.dumps(sorted(allowed))))
    rows = s.box_index().search_rows(view.box.id, conditions, summary=_needs_summary(key))
    objects: dict[int, Any] = {}
    if search_module.needs_objects(key):  # rfc8474:6, rfc8514:4.3: only then
        wanted = None if len(rows) > _FETCH_ROWS else [row[0] for row in rows]
        objects = {row[0]: row[1:] for row in s.box_index().object_rows(view.box.id, wanted)}
    candidates = []
    octets = 0
    for uid, file, size, internal_date, flag_text, modseq, summary in rows:
        seq = view.seq_of(uid)
        if seq is None:
            continue
        octets += size
        candidates.append(
            search_module.Candidate(
                seq=seq,
                uid=uid,
                flags=frozenset(flag_text.split()),
                recent=view.is_recent(uid),
                internal_date=internal_date,
                size=size,
                modseq=modseq,
                summary=_NO_SUMMARY if summary is None else summary,  # JSON, parsed on use
                load=functools.partial(content, file),
                objects=objects.get(uid, _NO_OBJECTS),
            )
        )
    del rows
    # Searches run on a pool of their own, one per account at a time, each
    # within a work and time budget (issue 14 item 7; see estafeta.workers).
    budget = search_module.Budget.for_mailbox(octets)
    evaluate = functools.partial(
        search_module.evaluate,
        key,
        candidates,
        largest_seq=view.exists,
        largest_uid=view.uids[-1] if view.uids else 0,
        saved=s.saved_result,
        budget=budget,
    )
    try:
        matched = await SEARCHES.run(_user(s), evaluate)
    except search_module.SearchLimit as exc:
        log_event(
            log, "search_limit", logging.WARNING, user=s.user, why=str(exc),
            work=budget.used(), messages=len(candidates),
        )  # fmt: skip
        if saving:
            s.saved_result = []  # rfc5182:2.1: a failed SEARCH ... SAVE empties "$"
        raise No("Search too expensive", "LIMIT") from None  # rfc5530:3
    finally:
        budget.cancel()  # the client went away: a running search stops
    return matched


_SUMMARY_FREE = frozenset(
    {
        "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "RECENT", "NEW", "OLD",
        "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN", "KEYWORD", "UNKEYWORD",
        "BEFORE", "ON", "SINCE", "OLDER", "YOUNGER", "LARGER", "SMALLER", "UID", "SEQSET",
        "MODSEQ", "NOT", "OR", "AND",
    }
)  # fmt: skip


async def _fulltext_candidates(
    s: Session, box: Mailbox, texts: list[tuple[str, str]]
) -> set[int] | None:
    """UIDs that may match every BODY/TEXT key of ``texts``, from the
    full-text index, on a search thread with a reader of its own, within a
    search budget (SearchLimit when it is used up); None: the index cannot
    narrow."""
    user = _user(s)
    owner, viewer = _reader_of(s)
    octets = s.box_index().status_counts(box.id, ["SIZE"])["SIZE"]
    budget = search_module.Budget.for_mailbox(octets)

    def lookup() -> set[int] | None:
        budget.start()
        found: set[int] | None = None
        with s.store.reader(owner, viewer) as reader:
            for op, needle in texts:
                field: Literal["BODY", "TEXT"] = "BODY" if op == "BODY" else "TEXT"
                uids = reader.fulltext(box.id, field, needle, budget.charge)
                if uids is not None:
                    found = uids if found is None else found & uids
        return found

    try:
        return await SEARCHES.run(user, lookup)
    finally:
        budget.cancel()  # the client went away: a running lookup stops


def _needs_summary(key: SearchKey) -> bool:
    if key.op not in _SUMMARY_FREE:
        return True
    for arg in key.args:
        if isinstance(arg, SearchKey) and _needs_summary(arg):
            return True
        if isinstance(arg, tuple) and any(
            isinstance(k, SearchKey) and _needs_summary(k) for k in arg
        ):
            return True
    return False


def _uses_modseq(key: SearchKey) -> bool:
    if key.op == "MODSEQ":
        return True
    return any(isinstance(a, SearchKey) and _uses_modseq(a) for a in key.args) or any(
        isinstance(a, tuple) and any(isinstance(k, SearchKey) and _uses_modseq(k) for k in a)
        for a in key.args
    )


# -- SORT and THREAD (rfc5256, rfc5957, rfc5267:3) ------------------------------------------

# rfc5256:3: the charset is SEARCH's (rfc9051:6.4.4: US-ASCII and UTF-8 at least).
_SORT_CHARSETS = ("US-ASCII", "UTF-8")
# What THREAD reads of each message (estafeta.store.reader.SORT_FIELDS), in
# the order of estafeta.imap.thread.Record.
_THREAD_FIELDS = ("date", "message_id", "references", "subject", "reply")
# The last SORT and THREAD answers over whole views (estafeta.imap.resultcache).
_ANSWERS = resultcache.ResultCache()


def _answer_key(s: Session, view: Selected, *question: object) -> tuple[object, ...]:
    """What a SORT or THREAD answer over the whole of ``view`` depends on,
    but for the digest of its UIDs (taken off the event loop)."""
    # The store's owner: a shared mailbox's ids are counted apart from the
    # account's, and its order is the same for every viewer.
    return (_reader_of(s)[0], view.box.id, view.box.uidvalidity, *question)


def _check_charset(charset: str) -> None:
    if charset not in _SORT_CHARSETS:
        shown = "".join(ch if "!" <= ch <= "~" else "?" for ch in charset[:40])
        # rfc5256:3 / rfc9051:7.1 a charset not supported: NO, and the ones that are.
        raise No(f"Charset {shown} is not supported", "BADCHARSET (US-ASCII UTF-8)")


def _is_all(key: SearchKey) -> bool:
    """Whether ``key`` is ALL, alone or ANDed with nothing else."""
    if key.op == "AND":
        return all(_is_all(k) for k in key.args[0])
    return key.op == "ALL"


async def _matching_uids(
    s: Session, view: Selected, key: SearchKey, saving: bool
) -> set[int] | None:
    """The UIDs the search program of a SORT or THREAD matches (rfc5256:3:
    "the searching criteria ... are the same as SEARCH"), evaluated by
    SEARCH's engine; None for ALL, every message of the view."""
    if _is_all(key):
        return None
    return {m.uid for m in await _search(s, view, key, saving=saving)}


async def _off_loop(s: Session, compute: Callable[[IndexReader, search_module.Budget], Any]) -> Any:
    """``compute(reader, budget)`` off the event loop: on the search pool,
    with an index reader of its own, within a budget (rfc5530:3 NO [LIMIT]
    when it is used up or the time runs out)."""
    user = _user(s)
    owner, viewer = _reader_of(s)
    budget = search_module.Budget(search_module.BASE_WORK)

    def work() -> Any:
        budget.start()
        with s.store.reader(owner, viewer) as reader:
            return compute(reader, budget)

    try:
        return await SEARCHES.run(user, work)
    except search_module.SearchLimit as exc:
        log_event(
            log, "search_limit", logging.WARNING, user=s.user, why=str(exc), work=budget.used()
        )
        raise No("Too expensive", "LIMIT") from None
    finally:
        budget.cancel()  # the client went away: a running sort stops


async def _sorted_uids(
    s: Session, view: Selected, criteria: Sequence[tuple[str, bool]]
) -> list[int]:
    """The UIDs of the view's messages in the order of ``criteria``
    (rfc5256:3, by the index: estafeta.store.reader.sorted_uids), off the
    event loop; kept by view (estafeta.imap.resultcache)."""
    box_id, uids = view.box.id, view.uids
    question = _answer_key(s, view, "SORT", tuple(criteria))

    def compute(reader: IndexReader, budget: search_module.Budget) -> list[int]:
        key = (*question, resultcache.view_digest(uids))
        known = _ANSWERS.get(key)
        if known is not None:
            return list(known)
        ordered = reader.sorted_uids(box_id, criteria)
        budget.charge(len(ordered) * sort_module.ROW_WORK)
        result = sort_module.select(ordered, uids)
        _ANSWERS.put(key, array("I", result))
        return result

    result: list[int] = await _off_loop(s, compute)
    return result


async def cmd_sort(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    args: c.Sort = cmd.args  # type: ignore[assignment]
    _check_context_tag(s, cmd)
    _check_charset(args.charset)
    s.report_updates(allow_expunge=False)
    wanted = set(args.return_options or ())
    saving = "SAVE" in wanted
    uids = view.uids  # the view does not change while we wait
    try:
        matched = await _matching_uids(s, view, args.key, saving)
        result = sort_module.select(await _sorted_uids(s, view, args.criteria), uids, matched)
    except No:
        if saving:
            s.saved_result = []  # rfc5182:2.1: a failed SORT ... SAVE empties "$"
        raise
    if saving:
        s.saved_result = sorted(result)
    numbers = result if cmd.uid else sort_module.sequence_numbers(result, uids)
    done = f"{'UID ' if cmd.uid else ''}SORT completed"
    if "UPDATE" in wanted:
        # rfc5267:4.3 CONTEXT=SORT: the sorted result kept up to date.
        _start_context(s, view, cmd, args.key, result, criteria=tuple(args.criteria))
    if args.return_options is None:
        s.untagged(sort_module.render_sort(numbers))
        s.tagged(cmd.tag, "OK", done)
        return
    # rfc5267:3.1 ESORT: answered with ESEARCH. RETURN () means ALL
    # (rfc4731:3.1); SAVE alone asks for no answer (rfc5182:2.1).
    shown = wanted - {"SAVE", "UPDATE", "CONTEXT", "PARTIAL"}
    if not wanted - {"CONTEXT"}:
        shown = {"ALL"}
    if not saving or wanted - {"SAVE", "CONTEXT"}:
        s.untagged(
            sort_module.render_esort(
                cmd.tag, numbers, sorted(shown), uid=cmd.uid, partial_range=args.partial
            )
        )
    s.tagged(cmd.tag, "OK", done)


async def cmd_thread(s: Session, cmd: Command) -> None:
    view = s.selected
    assert view is not None
    args: c.Thread = cmd.args  # type: ignore[assignment]
    _check_charset(args.charset)
    s.report_updates(allow_expunge=False)
    matched = await _matching_uids(s, view, args.key, saving=False)
    algorithm = (
        thread_module.references if args.algorithm == "REFERENCES"
        else thread_module.orderedsubject
    )  # fmt: skip
    box_id, uids = view.box.id, view.uids
    question = _answer_key(s, view, "THREAD", args.algorithm, cmd.uid)

    def compute(reader: IndexReader, budget: search_module.Budget) -> bytes:
        key = None if matched is not None else (*question, resultcache.view_digest(uids))
        known = None if key is None else _ANSWERS.get(key)
        if isinstance(known, bytes):
            return known
        rows = reader.sort_rows(box_id, _THREAD_FIELDS)
        budget.charge(len(rows) * sort_module.ROW_WORK)
        roots, children, numbers = algorithm(sort_module.in_view(rows, uids, matched), budget)
        if not cmd.uid:
            numbers = sort_module.sequence_numbers(numbers, uids)
        answer = thread_module.render((roots, children, numbers))
        if key is not None:
            _ANSWERS.put(key, answer)
        return answer

    s.untagged(await _off_loop(s, compute))
    s.tagged(cmd.tag, "OK", f"{'UID ' if cmd.uid else ''}THREAD completed")


async def cmd_getquotaroot(s: Session, cmd: Command) -> None:
    args: c.GetQuotaRoot = cmd.args  # type: ignore[assignment]
    if s.index().mailbox(args.mailbox) is None:
        raise No(f"No mailbox {args.mailbox}", "NONEXISTENT")
    s.untagged(b"QUOTAROOT " + s.mailbox_name(args.mailbox) + b' ""')
    s.untagged(_quota_line(s))
    s.tagged(cmd.tag, "OK", "GETQUOTAROOT completed")


def _quota_limit(s: Session) -> int | None:
    """The account's own quota (``estafeta user quota``), else the global one."""
    own = s.accounts.get_quota(_user(s))
    return own if own > 0 else s.settings.quota_bytes


def _quota_line(s: Session) -> str:
    used = s.index().used_octets()
    limit = _quota_limit(s)
    # rfc9208:5.1 STORAGE is in units of 1024 octets.
    if limit is None:
        return 'QUOTA "" ()'
    return f'QUOTA "" (STORAGE {used // 1024} {limit // 1024})'


# -- NOTIFY (rfc5465; estafeta.imap.notify) ----------------------------------------------


async def cmd_notify(s: Session, cmd: Command) -> None:
    """rfc5465:3.1 NOTIFY SET / NOTIFY NONE."""
    args: c.Notify = cmd.args  # type: ignore[assignment]
    if args.groups is None:
        s.stop_notify()
        s.tagged(cmd.tag, "OK", "NOTIFY completed")
        return
    try:
        spec = notify_module.Spec(args.groups, status=args.status)
    except notify_module.NotifyError as exc:
        if exc.bad:
            raise Bad(str(exc)) from None
        # rfc5465:3.1 an unsupported event: NO [BADEVENT (the supported ones)]
        raise No(str(exc), f"BADEVENT ({' '.join(notify_module.SUPPORTED)})") from None
    if s.selected is not None:
        s.report_updates(allow_expunge=True)  # rfc5465:3.1 an implicit NOOP
    s.start_notify(spec)
    s.tagged(cmd.tag, "OK", "NOTIFY completed")


async def _notify_fetch(s: Session, uids: list[int], atts: tuple[FetchAtt, ...]) -> None:
    """rfc5465:5.2 the FETCH items MessageNew asked for, for new messages
    of the selected mailbox: a UID FETCH whose tagged reply is dropped."""
    command = Command("*", "FETCH", c.Fetch(SequenceSet(((uids[0], uids[-1]),)), atts), uid=True)
    held, s._held = s._held, []
    try:
        await cmd_fetch(s, command)
    except (No, Bad) as exc:
        log.info("NOTIFY MessageNew FETCH refused: %s", exc)
    finally:
        s._held = held


# -- METADATA (rfc5464; estafeta.imap.metadata, estafeta.auth.metadata) ----------------


def _metadata_target(s: Session, mailbox: str) -> tuple[int, int]:
    """(mailbox id, UIDVALIDITY) of the entries of ``mailbox``; (0, 0) for
    the server's ("")."""
    if mailbox == "":
        return (0, 0)
    box = s.index().mailbox(mailbox)
    if box is None:
        raise No(f"No mailbox {mailbox}", "NONEXISTENT")  # rfc5464:3.3
    return (box.id, box.uidvalidity)


def _metadata_names(names: Iterable[str]) -> list[str]:
    try:
        return [metadata_module.check_name(name) for name in names]
    except metadata_module.BadEntry as exc:
        raise Bad(str(exc)) from None


async def cmd_getmetadata(s: Session, cmd: Command) -> None:
    """rfc5464:4.2 GETMETADATA: the entries asked for (NIL for those with
    no value), their children to DEPTH, values over MAXSIZE left out
    (OK [METADATA LONGENTRIES n])."""
    args: c.GetMetadata = cmd.args  # type: ignore[assignment]
    wanted = _metadata_names(args.entries)
    target = _metadata_target(s, args.mailbox)
    stored = await asyncio.to_thread(s.accounts.metadata, _user(s), target)
    if target == (0, 0):
        # rfc5464:3.2.1.1 /shared/admin: how to reach the administrator (read-only)
        # at the account's own domain (rfc5321:4.5.1: postmaster is there).
        stored["/shared/admin"] = f"mailto:postmaster@{_user(s).rpartition('@')[2]}".encode()
    entries, longest = metadata_module.select(stored, wanted, args.depth, args.maxsize)
    name = s.mailbox_name(args.mailbox) if args.mailbox else b'""'
    if entries:
        s.untagged(metadata_module.render(name, entries))
    code = f"METADATA LONGENTRIES {longest}" if longest is not None else ""
    s.tagged(cmd.tag, "OK", "GETMETADATA completed", code)


async def cmd_setmetadata(s: Session, cmd: Command) -> None:
    """rfc5464:4.3 SETMETADATA: every entry set (NIL: removed), or none."""
    args: c.SetMetadata = cmd.args  # type: ignore[assignment]
    names = _metadata_names(name for name, _ in args.pairs)
    target = _metadata_target(s, args.mailbox)
    changes = list(zip(names, (value for _, value in args.pairs), strict=True))
    for name, value in changes:
        if name in metadata_module.READ_ONLY or (target == (0, 0) and name.startswith("/shared/")):
            # rfc5464:3.3 the server's shared entries are the administrator's.
            raise No(f"{name} cannot be set", "NOPERM")
        if value is not None and len(value) > metadata_module.MAX_VALUE:
            raise No("Value too large", f"METADATA MAXSIZE {metadata_module.MAX_VALUE}")
    done = await asyncio.to_thread(
        functools.partial(
            s.accounts.set_metadata,
            _user(s),
            target,
            changes,
            max_entries=metadata_module.MAX_ENTRIES,
        )
    )
    if not done:
        raise No("Too many entries", "METADATA TOOMANY")
    s.tagged(cmd.tag, "OK", "SETMETADATA completed")


# -- URLAUTH (rfc4467; estafeta.auth.urlauth, estafeta.imap.urlfetch) ------------------


async def cmd_resetkey(s: Session, cmd: Command) -> None:
    """rfc4467 RESETKEY: a new access key for a mailbox, or none at all."""
    args: c.ResetKey = cmd.args  # type: ignore[assignment]
    if args.mailbox is None:
        await asyncio.to_thread(s.accounts.urlauth_reset, _user(s))
        s.tagged(cmd.tag, "OK", "All keys removed")
        return
    unknown = [m for m in args.mechanisms if m != urlauth.MECHANISM]
    if unknown:
        raise No(f"Unknown URL authorization mechanism {unknown[0][:40]}")
    box = s.index().mailbox(args.mailbox)
    if box is None:
        raise No(f"No mailbox {args.mailbox}", "NONEXISTENT")
    await asyncio.to_thread(s.accounts.urlauth_reset, _user(s), (box.id, box.uidvalidity))
    s.tagged(cmd.tag, "OK", "Key reset", f"URLMECH {urlauth.MECHANISM}")


async def cmd_genurlauth(s: Session, cmd: Command) -> None:
    """rfc4467 GENURLAUTH: each URL rump with its token; BAD when one is not
    a URL this account may authorize."""
    args: c.GenUrlAuth = cmd.args  # type: ignore[assignment]

    def generate() -> list[str]:
        return [
            urlfetch.generate(s.store, s.accounts, _user(s), url, mech) for url, mech in args.pairs
        ]

    try:
        urls = await asyncio.to_thread(generate)
    except urlauth.BadUrlAuth as exc:
        raise Bad(str(exc)) from None
    s.untagged(b"GENURLAUTH " + b" ".join(imap_string(url) for url in urls))
    s.tagged(cmd.tag, "OK", "GENURLAUTH completed")


async def cmd_urlfetch(s: Session, cmd: Command) -> None:
    """rfc4467 URLFETCH: what each URL names, NIL for one that is not valid
    for this session; one response per URL, sent before the next is read."""
    args: c.UrlFetch = cmd.args  # type: ignore[assignment]
    for url in args.urls:
        data = await asyncio.to_thread(urlfetch.resolve, s.store, s.accounts, url, user=_user(s))
        value = b"NIL" if data is None else b"{%d}\r\n" % len(data) + data
        s.untagged(b"URLFETCH " + imap_string(url) + b" " + value)
        await s.flush()
    s.tagged(cmd.tag, "OK", "URLFETCH completed")


async def cmd_getquota(s: Session, cmd: Command) -> None:
    args: c.GetQuota = cmd.args  # type: ignore[assignment]
    if args.root != "":
        raise No("No such quota root", "NONEXISTENT")
    s.untagged(_quota_line(s))
    s.tagged(cmd.tag, "OK", "GETQUOTA completed")


async def cmd_setquota(s: Session, cmd: Command) -> None:
    raise No("Quotas are set by the administrator", "NOPERM")


_ANY: dict[str, Handler] = {
    "CAPABILITY": cmd_capability,
    "NOOP": cmd_noop,
    "LOGOUT": cmd_logout,
    "ID": cmd_id,
}
_AUTH: dict[str, Handler] = {
    **_ANY,
    "ENABLE": cmd_enable,
    "SELECT": cmd_select,
    "EXAMINE": cmd_select,
    "CREATE": cmd_create,
    "DELETE": cmd_delete,
    "RENAME": cmd_rename,
    "SUBSCRIBE": cmd_subscribe,
    "UNSUBSCRIBE": cmd_subscribe,
    "LIST": cmd_list,
    "LSUB": cmd_lsub,
    "NAMESPACE": cmd_namespace,
    "STATUS": cmd_status,
    "APPEND": cmd_append,
    "IDLE": cmd_idle,
    "GETQUOTA": cmd_getquota,
    "GETQUOTAROOT": cmd_getquotaroot,
    "SETQUOTA": cmd_setquota,
    "NOTIFY": cmd_notify,
    "COMPRESS": cmd_compress,
    "GETMETADATA": cmd_getmetadata,
    "SETMETADATA": cmd_setmetadata,
    "RESETKEY": cmd_resetkey,
    "GENURLAUTH": cmd_genurlauth,
    "URLFETCH": cmd_urlfetch,
    # rfc4314:3 (estafeta.imap.acl)
    "SETACL": acl.cmd_setacl,
    "DELETEACL": acl.cmd_setacl,
    "GETACL": acl.cmd_getacl,
    "LISTRIGHTS": acl.cmd_listrights,
    "MYRIGHTS": acl.cmd_myrights,
}
_COMMANDS: dict[int, dict[str, Handler]] = {
    NOT_AUTHENTICATED: {
        **_ANY,
        "STARTTLS": cmd_starttls,
        "LOGIN": cmd_login,
        "AUTHENTICATE": cmd_authenticate,
    },
    AUTHENTICATED: _AUTH,
    SELECTED: {
        **_AUTH,
        "CHECK": cmd_check,
        "CLOSE": cmd_close,
        "UNSELECT": cmd_close,
        "EXPUNGE": cmd_expunge,
        "SEARCH": cmd_search,
        "SORT": cmd_sort,
        "THREAD": cmd_thread,
        "FETCH": cmd_fetch,
        "STORE": cmd_store,
        "COPY": cmd_copy,
        "MOVE": cmd_copy,
        "CANCELUPDATE": cmd_cancelupdate,
    },
    LOGOUT: {},
}
# Commands that change mailboxes, their messages or subscriptions (NOTIFY
# looks at once for what they changed).
_CHANGING = frozenset(
    {"APPEND", "COPY", "MOVE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
     "STORE", "EXPUNGE", "CLOSE", "FETCH"}
)  # fmt: skip
# Commands whose tagged response goes out as they end: they change the
# connection itself, or wait for the client (IDLE updates the searches as
# it reports).
_UNHELD = frozenset({"LOGOUT", "STARTTLS", "COMPRESS", "IDLE", "AUTHENTICATE", "LOGIN"})
