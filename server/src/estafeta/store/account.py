"""The store: durable delivery with group commit, recovery and reindex.

All writes to message files and indexes go through one writer thread. A
delivery of a message up to ``inline_max`` octets (almost all mail) is
acknowledged after one flush, the index commit (``estafeta.store.ingest``
has the order and why it is crash-safe):

1. the file is written in ``tmp/``, not fsync'd;
2. the index rows of the batch and the messages' bytes (table ``pending``)
   are inserted in one transaction per account and committed (WAL,
   synchronous=FULL: the commit is on disk). Acknowledged;
3. afterwards, many at a time, off the writer thread ("settling"): the
   files are fsync'd, renamed into ``new/``, ``new/`` fsync'd, and their
   ``pending`` rows deleted. Before an operation that links, unlinks or
   renames files of an account, its files are settled at once.

A larger message is acknowledged after three, in this order:

1. the file is written in ``tmp/`` and fsync'd (several files of a batch
   are fsync'd in parallel, which the file system's journal merges);
2. it is renamed into ``new/`` and the ``new/`` directory is fsync'd once
   for the whole batch;
3. the index rows of the batch are inserted in one transaction per account
   and committed (WAL, synchronous=FULL: the commit is on disk).

A crash between 2 and 3 leaves a file that the index does not know; it was
never acknowledged. ``open`` of an account first writes out the files of
``pending`` rows (``ingest.recover``), then finds such files and indexes
them (duplicates of unacknowledged messages are allowed; losses are not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from estafeta import metrics
from estafeta.address import split_address
from estafeta.log import log_event
from estafeta.message import Summary, summarize
from estafeta.store import fulltext, index, ingest, maildir, names, operations, shared
from estafeta.store.changes import Changes
from estafeta.store.index import NewMessage
from estafeta.store.reader import SqliteReader

T = TypeVar("T")

MAX_BATCH = 256
# Files delivered on the index commit alone are made durable in ``new/``
# this long after the first of them, or at once when this many wait
# (``Store._settle_tick``); at most one settling runs at a time.
SETTLE_DELAY = 0.05
SETTLE_MAX = 512
# Mailboxes per account ([limits] max_mailboxes); CREATE/RENAME beyond: NO [LIMIT].
MAX_MAILBOXES = 1000

log = logging.getLogger("estafeta.store")


FULLTEXT_BATCH = 200
"""Messages indexed (or keys dropped) per step of the full-text index."""
FULLTEXT_BATCH_OCTETS = 16 * 1024 * 1024
"""Octets of message files read per step at most (one message may be larger)."""
FULLTEXT_IDLE = 0.05
"""Seconds the writer thread waits for work before a full-text step."""
FULLTEXT_HELPER_MIN = 16
"""Steps of at least this many messages are prepared by the helper process
(``Store(fulltext_helper=True)``); smaller ones in the writer thread."""
FULLTEXT_HELPER_TIMEOUT = 120.0
"""Seconds a step may take in the helper before it is given up (and redone
in the writer thread)."""


def _helper_init() -> None:
    # The index is an accelerator: it may wait for the CPU, mail may not.
    with contextlib.suppress(OSError):  # a sandbox may refuse; then at equal priority
        os.nice(10)


class StoreError(Exception):
    """A delivery or store operation failed; nothing was acknowledged."""


class OverQuota(StoreError):
    """The delivery would take the account past its quota; nothing was written."""


@dataclass(frozen=True)
class Delivery:
    address: str  # a normalised local account address
    data: bytes
    summary: Summary
    mailbox: str = maildir.INBOX
    flags: tuple[str, ...] = ()
    internal_date: float | None = None
    # Octets the account may hold (sum of RFC822.SIZE, as IMAP QUOTA reports
    # it); None: no quota. Checked in the writer thread, so two deliveries
    # cannot both pass on the same room; a delivery over it fails with
    # OverQuota before anything is written.
    quota: int | None = None
    # Create the mailbox if it is missing (Sieve fileinto :create, rfc5490:3.2);
    # otherwise a missing mailbox fails the delivery.
    create: bool = False


@dataclass(frozen=True)
class Delivered:
    address: str
    mailbox: str
    uid: int
    file: str
    uidvalidity: int = 0


@dataclass
class _Job:
    future: concurrent.futures.Future[Any]
    deliveries: Sequence[Delivery] = ()
    call: Callable[[], Any] | None = None
    # Not work: wakes the writer to collect a finished settling.
    wake: bool = False


@dataclass
class _Account:
    address: str
    path: Path
    conn: sqlite3.Connection
    # Mailbox name -> folder, filled as deliveries need them (``_folder``)
    # and emptied when mailboxes change: never rebuilt whole per operation.
    folders: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Staged:
    job: _Job
    delivery: Delivery
    account: _Account
    folder: Path
    staged: maildir.Staged | None = None
    error: BaseException | None = None
    # Acknowledged on the index commit alone: the file stays unsynced in
    # tmp/ and its bytes go into ``pending`` (estafeta.store.ingest).
    inline: bool = False


class Store:
    """All accounts' mail under ``mail_dir``. Thread-safe; one writer thread."""

    def __init__(
        self,
        mail_dir: Path,
        hostname: str,
        max_batch: int = MAX_BATCH,
        max_mailboxes: int = MAX_MAILBOXES,
        inline_max: int = ingest.INLINE_MAX,
        settle_delay: float = SETTLE_DELAY,
        settle_syncfs: bool | None = None,
        fulltext_helper: bool = False,
    ) -> None:
        self.mail_dir = mail_dir
        self.hostname = hostname
        self.max_batch = max_batch
        self.max_mailboxes = max_mailboxes
        # Messages up to this size: one flush (ingest); larger: three. 0: always three.
        self.inline_max = inline_max
        self.settle_delay = settle_delay
        # Settle with one syncfs(2) per file system instead of an fsync per
        # file (ingest.settle): far fewer syscalls, threads and journal
        # commits, but it flushes everything dirty on that file system.
        # None: where syncfs reports write errors (Linux 5.8 and later).
        self.settle_syncfs = (
            ingest.syncfs_reports_errors() if settle_syncfs is None else settle_syncfs
        )
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accounts: dict[str, _Account] = {}
        self._readers: dict[str, SqliteReader] = {}
        self._readers_lock = threading.Lock()
        # Viewer numbers in the shared store (estafeta.store.shared), by address.
        self._viewers: dict[str, int] = {}
        # Accounts whose full-text index may lack messages, or hold keys of
        # messages that are gone (writer thread only; see _fulltext_step).
        self._fulltext_todo: set[str] = set()
        self._fulltext_stale: set[str] = set()
        # Decoding and folding mail for the index takes about 1 ms of CPU per
        # message: with ``fulltext_helper`` (the server) a step of many
        # messages runs in one helper process, started when first needed,
        # at a lower priority and without the GIL that IMAP, POP3 and SMTP
        # need. Writer thread only.
        self.fulltext_helper = fulltext_helper
        self._helper: concurrent.futures.ProcessPoolExecutor | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="fsync")
        # Settling (ingest step 3), writer thread only: files acknowledged
        # but still unsynced in tmp/, since when, and the one settling running.
        self._settler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="settle")
        self._unsynced: list[ingest.Unsynced] = []
        self._unsynced_since = 0.0
        self._settling: (
            concurrent.futures.Future[tuple[list[ingest.Unsynced], list[ingest.Unsynced]]] | None
        ) = None
        self.settled = 0  # files made durable by settling, for tests and benchmarks
        # Who wants to hear about commits (IMAP IDLE, other sessions).
        self.changes = Changes()
        # COPY's name for a copy instead of a hard link (operations.copy);
        # None: link the file (the cluster backend names bodies otherwise).
        self._link_name: Callable[[str, int], str] | None = None
        # Batch sizes the writer saw, for metrics and benchmarks.
        self.batches = 0
        self.batched_messages = 0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self.mail_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish queued work, then stop the writer and close indexes."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        for account in self._accounts.values():
            account.conn.close()
        self._accounts.clear()
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self._settler.shutdown()
        self._pool.shutdown()
        if self._helper is not None:
            self._helper.shutdown(cancel_futures=True)
            self._helper = None

    def __enter__(self) -> Store:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public API --------------------------------------------------------

    def account_dir(self, address: str) -> Path:
        if address == shared.OWNER:
            return self.mail_dir / shared.DIRECTORY  # estafeta.store.shared
        local, domain = split_address(address)
        return self.mail_dir / domain / maildir.escape(local)

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Delivered]:
        """Store messages durably; returns once every one is committed.

        All or nothing from the caller's point of view: if any delivery
        fails, StoreError is raised (some may have been stored: the client
        will retry, and a duplicate is better than a loss).
        """
        future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()
        self._submit(_Job(future, deliveries=deliveries))
        return await asyncio.wrap_future(future)

    def deliver_sync(self, deliveries: Sequence[Delivery]) -> list[Delivered]:
        future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()
        self._submit(_Job(future, deliveries=deliveries))
        return future.result()

    async def usage(self, address: str) -> int:
        """Octets the account holds (for the quota check at RCPT); 0 for an
        account that has no mail directory yet."""
        path = self._index_path(address)

        def read() -> int:
            if not path.exists():
                return 0
            conn = index.connect(path)
            try:
                return operations.used_octets(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    def has_mailbox(self, address: str, name: str) -> bool:
        """Whether the account has mailbox ``name`` (Sieve mailboxexists,
        rfc5490:3.1). Blocking: call it from a thread."""
        path = self._index_path(address)
        if not path.exists():
            return name.upper() == maildir.INBOX
        conn = index.connect(path)
        try:
            return index.mailbox(conn, name) is not None
        except Exception:
            return False
        finally:
            conn.close()

    def read_messages(
        self, address: str, mailbox: str, uids: Sequence[int], limit: int, max_size: int
    ) -> tuple[list[bytes], int]:
        """The contents of messages ``uids`` of ``mailbox`` as they are now
        (expunged ones left out), at most ``limit`` of them and ``max_size``
        octets of each; and how many were left out for ``limit``. Blocking:
        call it from a thread (the spam trainer's)."""
        path = self._index_path(address)
        if not path.exists():
            return [], 0
        conn = index.connect(path)
        try:
            box = index.mailbox(conn, mailbox)
            if box is None:
                return [], 0
            wanted = sorted(set(uids))
            files = index.files_of(conn, box.id, wanted[: max(0, limit)])
        finally:
            conn.close()
        account = self.account_dir(address)
        contents: list[bytes] = []
        for file in files:
            with contextlib.suppress(FileNotFoundError), maildir.open_message(account / file) as f:
                contents.append(f.read(max_size))
        return contents, max(0, len(wanted) - limit)

    def settle(self) -> int:
        """Make every file acknowledged so far durable in ``new/`` now (it
        happens by itself within ``settle_delay``); returns how many files
        settling has made durable since the start. Blocking."""

        def run() -> int:
            self._settle_all()
            return self.settled

        return self._call(run)

    def reindex(self, address: str) -> int:
        """Rebuild an account's index from its files; returns the message count."""

        def run() -> int:
            count = self._reindex(address)
            # New mailbox ids: the full-text index starts again for them.
            self._fulltext_todo.add(address)
            self._fulltext_stale.add(address)
            return count

        return self._call(run)

    def open_index(self, address: str) -> sqlite3.Connection:
        """A connection for reading an account's index (created if missing)."""
        self._call(lambda: self._open(address))
        return index.connect(self._index_path(address))

    def reader(self, address: str, viewer: str | None = None) -> SqliteReader:
        """A reader of its own over an account's index (created if missing);
        the caller closes it. Blocking: call it from a thread. With
        ``viewer``, the shared store as that account sees it (its \\Seen)."""
        number = self._viewer(address, viewer)
        return self._make_reader(self.open_index(address), address, number)

    def _make_reader(
        self, conn: sqlite3.Connection, address: str, viewer: int | None = None
    ) -> SqliteReader:
        """A reader over ``conn``; the cluster backend's reads bodies elsewhere."""
        return SqliteReader(conn, self.account_dir(address), viewer)

    def viewer_reader(self, address: str, viewer: str) -> SqliteReader:
        """``shared_reader`` of the shared store as ``viewer`` sees it (its
        private \\Seen): over the same connection, so one per viewer costs
        nothing; of any other account, its shared reader. Never closed by
        the caller. Blocking the first time for a viewer: call it from a thread."""
        base = self.shared_reader(address)
        if address != shared.OWNER:
            return base
        number = self._viewer(address, viewer)
        return self._make_reader(base.conn, address, number)

    def _viewer(self, address: str, viewer: str | None) -> int | None:
        """The viewer number of ``viewer`` in the shared store (made if
        missing, in the writer thread); None for other stores."""
        if viewer is None or address != shared.OWNER:
            return None
        number = self._viewers.get(viewer)
        if number is None:
            number = self._call(lambda: shared.viewer_id(self._open(address).conn, viewer))
            self._viewers[viewer] = number  # never changes once given
        return number

    def shared_reader(self, address: str) -> SqliteReader:
        """One reader per account for all sessions of one event loop.

        Sessions of one loop never use it at the same time (a query runs
        to completion between awaits), and sharing keeps memory flat with
        thousands of IMAP connections. Closed by ``stop``.
        """
        with self._readers_lock:
            reader = self._readers.get(address)
            if reader is None:
                conn = self.open_index(address)
                conn.execute("PRAGMA cache_size = -512")  # KiB: reads are mostly sequential
                reader = self._make_reader(conn, address)
                self._readers[address] = reader
            return reader

    # -- IMAP operations (each one transaction, then a change notification) --

    def _account_op(
        self,
        address: str,
        function: Callable[[_Account], T],
        mailboxes: bool = False,
        files: bool = False,
        changes_mail: bool = True,
    ) -> T:
        """Run ``function`` in the writer thread; ``mailboxes``: it may
        create, rename or delete mailboxes (their folders are looked up
        again when needed, which costs nothing per mailbox of the account);
        ``files``: it may link, unlink or rename message files, so the
        account's files still in tmp/ are settled first."""

        def run() -> T:
            account = self._open(address)
            if files:
                self._settle_account(address)
            try:
                return function(account)
            finally:
                if mailboxes:
                    account.folders.clear()
                if changes_mail:
                    self._fulltext_todo.add(address)  # copies to index, old keys to drop
                    self._fulltext_stale.add(address)
                self.changes.notify(address)

        return self._call(run)

    def store_flags(
        self,
        address: str,
        mailbox: str,
        uids: Sequence[int],
        mode: str,
        flags: Sequence[str],
        unchangedsince: int | None = None,
        viewer: str | None = None,
        rights: str = shared.ALL_RIGHTS,
    ) -> operations.StoreResult:
        """rfc9051:6.4.6 STORE. In the shared store, for ``viewer`` with
        ``rights`` (rfc4314:4): \\Seen private, the flags it may not change kept."""
        if address == shared.OWNER:
            if viewer is None:
                raise StoreError("a STORE in the shared store needs a viewer")
            return self._account_op(
                address,
                lambda a: shared.store_flags(
                    a.conn, mailbox, uids, mode, flags, viewer, rights, unchangedsince
                ),
                changes_mail=False,
            )
        return self._account_op(
            address,
            lambda a: operations.store_flags(a.conn, mailbox, uids, mode, flags, unchangedsince),
            changes_mail=False,
        )

    def set_acl(self, mailbox: str, identifier: str, rights: str | None) -> bool:
        """rfc4314:3.1 SETACL / 3.2 DELETEACL (``rights`` None) on a mailbox
        of the shared store; whether it changed anything."""
        return self._account_op(
            shared.OWNER,
            lambda a: shared.set_rights(a.conn, mailbox, identifier, rights),
            changes_mail=False,
        )

    def shared_acls(self) -> dict[str, dict[str, str]]:
        """Every shared mailbox with an ACL: name -> {identifier: rights}."""
        return self._call(lambda: shared.all_acls(self._open(shared.OWNER).conn))

    def expunge(self, address: str, mailbox: str, uids: Sequence[int] | None = None) -> list[int]:
        return self._account_op(
            address, lambda a: operations.expunge(a.conn, a.path, mailbox, uids), files=True
        )

    def expire(self, address: str, mailbox: str, saved_before: int, limit: int) -> list[int]:
        """Retention (estafeta.retention): expunge up to ``limit`` messages
        of ``mailbox`` saved into it before ``saved_before`` (POSIX seconds),
        whatever their flags, in one transaction; the UIDs expunged. The
        path of EXPUNGE: committed (with VANISHED records) before the files
        go, sessions told after the commit. Call it again while it returns
        ``limit`` UIDs: deliveries queued meanwhile go in between."""
        return self._account_op(
            address,
            lambda a: operations.expire(a.conn, a.path, mailbox, saved_before, limit),
            files=True,
        )

    def count_expired(self, address: str, mailbox: str, saved_before: int) -> int:
        """How many messages ``expire`` would take (``retention run --dry-run``).
        Blocking: call it from a thread."""
        path = self._index_path(address)
        if not path.exists():
            return 0
        conn = index.connect(path)
        try:
            box = index.mailbox(conn, mailbox)
            return 0 if box is None else len(index.saved_before(conn, box.id, saved_before))
        finally:
            conn.close()

    def remove(self, address: str, mailbox: str, uids: Sequence[int]) -> list[int]:
        """Remove messages whatever their flags (POP3 UPDATE, rfc1939:6)."""
        return self._account_op(
            address,
            lambda a: operations.expunge(a.conn, a.path, mailbox, uids, only_deleted=False),
            files=True,
        )

    def copy(
        self,
        address: str,
        source: str,
        uids: Sequence[int],
        destination: str,
        move: bool = False,
        quota: int | None = None,
    ) -> operations.CopyResult:
        """COPY / MOVE; with ``quota``, OVERQUOTA when a COPY would go over it
        (checked in the writer thread, see ``operations.copy``)."""
        return self._account_op(
            address,
            lambda a: operations.copy(
                a.conn,
                a.path,
                self.hostname,
                source,
                uids,
                destination,
                move=move,
                quota=quota,
                link_name=self._link_name,
            ),
            files=True,
        )

    def create_mailbox(
        self, address: str, name: str, special_use: str | None = None
    ) -> index.Mailbox:
        def run(a: _Account) -> index.Mailbox:
            box = operations.create_mailbox(
                a.conn, a.path, name, special_use, max_mailboxes=self.max_mailboxes
            )
            if address == shared.OWNER:
                shared.inherit(a.conn, box.name)  # rfc4314:4 CREATE
            return box

        return self._account_op(address, run, mailboxes=True)

    def delete_mailbox(self, address: str, name: str) -> None:
        self._account_op(
            address,
            lambda a: operations.delete_mailbox(a.conn, a.path, name),
            mailboxes=True,
            files=True,
        )

    def rename_mailbox(self, address: str, old: str, new: str) -> None:
        self._account_op(
            address,
            lambda a: operations.rename_mailbox(
                a.conn,
                a.path,
                self.hostname,
                old,
                new,
                max_mailboxes=self.max_mailboxes,
                link_name=self._link_name,
            ),
            mailboxes=True,
            files=True,
        )

    def subscribe(self, address: str, name: str, subscribed: bool) -> None:
        self._account_op(
            address,
            lambda a: operations.subscribe(
                a.conn, name, subscribed, max_subscriptions=self.max_mailboxes
            ),
            changes_mail=False,
        )

    def claim_recent(self, address: str, mailbox_id: int, uid: int) -> None:
        """rfc3501:2.3.2: the UIDs up to ``uid`` of a mailbox were given out
        as \\Recent (estafeta.imap.recent). No session needs to hear of it:
        no change notice, which would wake every session of the account."""

        def run() -> None:
            operations.claim_recent(self._open(address).conn, mailbox_id, uid)

        self._call(run)

    async def append(
        self,
        address: str,
        mailbox: str,
        data: bytes,
        flags: Sequence[str] = (),
        internal_date: float | None = None,
        quota: int | None = None,
    ) -> Delivered:
        """rfc9051:6.3.12 APPEND; MailboxError TRYCREATE if the mailbox is missing,
        OVERQUOTA if the account would hold more than ``quota`` octets."""
        # open_index waits for the writer thread: never block the event loop on it.
        conn = await asyncio.to_thread(self.open_index, address)
        try:
            box = index.mailbox(conn, operations.check_name(mailbox))
        finally:
            conn.close()
        if box is None:
            raise operations.MailboxError(f"no mailbox {mailbox!r}", "TRYCREATE")
        loop = asyncio.get_running_loop()
        summary = await loop.run_in_executor(None, summarize, data)
        delivery = Delivery(
            address,
            data,
            summary,
            mailbox=box.name,
            flags=tuple(operations.canonical_flags(flags)),
            internal_date=internal_date if internal_date is not None else time.time(),
        )
        if quota is None:
            [delivered] = await self.deliver([delivery])
            return delivered
        # Under a quota the check and the commit are one step of the writer
        # thread (a group-committed delivery would check too early: two
        # APPENDs could both pass on the same room).
        future: concurrent.futures.Future[Delivered] = concurrent.futures.Future()
        self._submit(_Job(future, call=lambda: self._append_within(delivery, quota)))
        return await asyncio.wrap_future(future)

    async def append_many(
        self,
        address: str,
        mailbox: str,
        messages: Sequence[tuple[bytes, Sequence[str], float | None]],
        quota: int | None = None,
    ) -> list[Delivered]:
        """rfc3502 MULTIAPPEND: (data, flags, internal date) each, all in one
        commit or none; MailboxError TRYCREATE if the mailbox is missing,
        OVERQUOTA if the account would hold more than ``quota`` octets."""
        loop = asyncio.get_running_loop()
        items = []
        for data, flags, when in messages:
            summary = await loop.run_in_executor(None, summarize, data)
            items.append(
                operations.Appended(
                    data, summary, tuple(operations.canonical_flags(flags)),
                    when if when is not None else time.time(),
                )
            )  # fmt: skip

        def run() -> list[Delivered]:
            account = self._open(address)
            box = index.mailbox(account.conn, operations.check_name(mailbox))
            if box is None:
                raise operations.MailboxError(f"no mailbox {mailbox!r}", "TRYCREATE")
            made, uidvalidity = operations.append_many(
                account.conn, account.path, self.hostname, box.name, items, quota
            )
            self._fulltext_todo.add(address)
            self.changes.notify(address)
            return [Delivered(address, box.name, uid, file, uidvalidity) for uid, file in made]

        future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()
        self._submit(_Job(future, call=run))
        return await asyncio.wrap_future(future)

    def _append_within(self, delivery: Delivery, quota: int) -> Delivered:
        """In the writer thread: ``operations.append`` with the quota check."""
        account = self._open(delivery.address)
        uid, uidvalidity, file = operations.append(
            account.conn,
            account.path,
            self.hostname,
            delivery.mailbox,
            delivery.data,
            delivery.summary,
            delivery.flags,
            delivery.internal_date or time.time(),
            quota,
        )
        self._fulltext_todo.add(delivery.address)  # as deliveries do
        self.changes.notify(delivery.address)
        return Delivered(delivery.address, delivery.mailbox, uid, file, uidvalidity)

    # -- writer thread ------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        if self._thread is None:
            raise StoreError("store is not started")
        self._queue.put(job)

    def _call(self, function: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._submit(_Job(future, call=function))
        return future.result()

    def _run(self) -> None:
        pending: list[_Job | None] = []
        # When the writer last had work (a delivery or a call): the full-text
        # index is filled only after FULLTEXT_IDLE without any, so that it
        # never takes the GIL from a stream of deliveries.
        last_work = time.monotonic()
        while True:
            if pending:
                job = pending.pop()
            else:
                # Settling is due after a while; and mail is indexed for
                # SEARCH when nothing else waits (a step is bounded:
                # deliveries never wait long behind it).
                timeout = self._settle_timeout()
                if self._fulltext_todo:
                    idle = max(0.0, last_work + FULLTEXT_IDLE - time.monotonic())
                    timeout = idle if timeout is None else min(timeout, idle)
                try:
                    job = self._queue.get(timeout=timeout)
                except queue.Empty:
                    self._settle_tick()
                    if self._fulltext_todo and time.monotonic() - last_work >= FULLTEXT_IDLE:
                        self._fulltext_step()
                    continue
            if job is None:
                self._settle_all()
                return
            if job.wake:
                self._settle_tick()
                continue
            if job.call is not None:
                self._run_call(job)
                last_work = time.monotonic()
                continue
            batch = [job]
            count = len(job.deliveries)
            # Group commit: take whatever else is already waiting.
            while count < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is not None and more.wake:
                    continue  # the tick after this batch collects it
                if more is None or more.call is not None:
                    pending.append(more)
                    break
                batch.append(more)
                count += len(more.deliveries)
            self._run_batch(batch)
            self._settle_tick()
            last_work = time.monotonic()

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        assert job.call is not None
        try:
            job.future.set_result(job.call())
        except BaseException as exc:
            job.future.set_exception(exc)

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        items: list[_Staged] = []
        failed: dict[int, BaseException] = {}
        # Octets each account holds, plus what this batch adds, for quotas.
        usage: dict[str, int] = {}
        for job in live:
            for delivery in job.deliveries:
                try:
                    account = self._open(delivery.address)
                    if delivery.quota is not None:
                        self._reserve(account, delivery, usage)
                    if delivery.create and index.mailbox(account.conn, delivery.mailbox) is None:
                        operations.create_mailbox(
                            account.conn,
                            account.path,
                            delivery.mailbox,
                            max_mailboxes=self.max_mailboxes,
                        )
                        account.folders.clear()
                    folder = self._folder(account, delivery.mailbox)
                    inline = len(delivery.data) <= self.inline_max
                    items.append(_Staged(job, delivery, account, folder, inline=inline))
                except Exception as exc:
                    failed[id(job)] = exc
        items = [item for item in items if id(item.job) not in failed]

        # 1. Write the files: the large ones fsync'd, in parallel; the others
        #    only into the page cache (their bytes go into the commit).
        for item in items:
            if item.inline:
                self._stage(item)
        list(self._pool.map(self._stage, [item for item in items if not item.inline]))
        for item in items:
            if item.error is not None:
                failed.setdefault(id(item.job), item.error)

        # 2. Publish the large ones and fsync each new/ directory once.
        published: list[_Staged] = []
        new_dirs: set[Path] = set()
        for item in items:
            if item.staged is None:
                continue
            if id(item.job) in failed:
                item.staged.tmp_path.unlink(missing_ok=True)
                continue
            if item.inline:
                published.append(item)
                continue
            try:
                maildir.publish(item.staged)
            except OSError as exc:
                failed.setdefault(id(item.job), exc)
                item.staged.tmp_path.unlink(missing_ok=True)
                continue
            published.append(item)
            new_dirs.add(item.staged.final_path.parent)
        for directory in new_dirs:
            maildir.fsync_dir(directory)

        # 3. One transaction per account for the whole batch: the commit is
        #    the one flush of the inline ones.
        results: dict[int, list[Delivered]] = {id(job): [] for job in live}
        by_account: dict[str, list[_Staged]] = {}
        for item in published:
            by_account.setdefault(item.account.address, []).append(item)
        for group in by_account.values():
            try:
                delivered = self._commit(group)
            except Exception as exc:
                for item in group:
                    failed.setdefault(id(item.job), exc)
                    assert item.staged is not None
                    if item.inline:
                        item.staged.tmp_path.unlink(missing_ok=True)
                    else:
                        item.staged.final_path.unlink(missing_ok=True)
                continue
            if not self._unsynced:
                self._unsynced_since = time.monotonic()
            for item, record in zip(group, delivered, strict=True):
                results[id(item.job)].append(record)
                if item.inline:
                    assert item.staged is not None
                    self._unsynced.append(
                        ingest.Unsynced(
                            item.account.address,
                            item.account.path,
                            record.file,
                            item.staged.tmp_path,
                        )
                    )
            self._fulltext_todo.add(group[0].account.address)
            self.changes.notify(group[0].account.address)

        self.batches += 1
        self.batched_messages += len(published)
        if published:
            metrics.STORE_BATCH_SECONDS.observe(time.monotonic() - started)
            metrics.STORE_BATCH_MESSAGES.observe(len(published))
        for job in live:
            error = failed.get(id(job))
            if isinstance(error, OverQuota):
                job.future.set_exception(error)
            elif error is not None:
                job.future.set_exception(StoreError(f"delivery failed: {error}"))
            else:
                job.future.set_result(results[id(job)])

    # -- settling (ingest step 3), writer thread ------------------------------------

    def _settle_timeout(self) -> float | None:
        """How long the writer may wait for work before settling is due."""
        if not self._unsynced or self._settling is not None:
            return None  # nothing due, or a wake job comes when it is done
        return max(0.0, self._unsynced_since + self.settle_delay - time.monotonic())

    def _settle_tick(self) -> None:
        """Collect a finished settling; start one when files are due."""
        if self._settling is not None:
            if not self._settling.done():
                return
            self._collect(*self._settling.result())
            self._settling = None
        if not self._unsynced:
            return
        due = self._unsynced_since + self.settle_delay <= time.monotonic()
        if not due and len(self._unsynced) < SETTLE_MAX:
            return
        entries, self._unsynced = self._unsynced, []
        future = self._settler.submit(ingest.settle, entries, self._pool.map, self.settle_syncfs)
        self._settling = future
        future.add_done_callback(
            lambda _: self._queue.put(_Job(concurrent.futures.Future(), wake=True))
        )

    def _settle_account(self, address: str) -> None:
        """Settle an account's files now (before an operation on its files)."""
        if self._settling is not None:
            self._collect(*self._settling.result())
            self._settling = None
        mine = [entry for entry in self._unsynced if entry.address == address]
        if mine:
            self._unsynced = [entry for entry in self._unsynced if entry.address != address]
            self._collect(*ingest.settle(mine, self._pool.map, self.settle_syncfs))

    def _settle_all(self) -> None:
        if self._settling is not None:
            self._collect(*self._settling.result())
            self._settling = None
        if self._unsynced:
            entries, self._unsynced = self._unsynced, []
            self._collect(*ingest.settle(entries, self._pool.map, self.settle_syncfs))

    def _collect(self, durable: list[ingest.Unsynced], failed: list[ingest.Unsynced]) -> None:
        """After a settling: a file that could not be settled is written
        again from its committed bytes (``ingest.materialise``); the
        ``pending`` rows of durable files are deleted. What fails here stays
        in ``pending``, safe, for the next open of the account."""
        by_account: dict[str, list[str]] = {}
        for entry in durable:
            by_account.setdefault(entry.address, []).append(entry.file)
        for entry in failed:
            account = self._accounts.get(entry.address)
            if account is None:
                continue
            try:
                for file, (data, internal_date) in ingest.data_of(
                    account.conn, [entry.file]
                ).items():
                    ingest.materialise(account.path, file, data, internal_date)
            except (OSError, sqlite3.Error) as exc:
                log_event(
                    log, "settle_failed", logging.ERROR, account=entry.address, file=entry.file,
                    error=str(exc),
                )  # fmt: skip
                continue
            by_account.setdefault(entry.address, []).append(entry.file)
        for address, files in by_account.items():
            account = self._accounts.get(address)
            if account is None:
                continue
            try:
                ingest.forget_settled(account.conn, files)
            except sqlite3.Error as exc:
                log_event(
                    log, "settle_forget_failed", logging.WARNING, account=address, error=str(exc)
                )
            self.settled += len(files)

    def _reserve(self, account: _Account, delivery: Delivery, usage: dict[str, int]) -> None:
        """Count ``delivery`` against its account's quota (writer thread)."""
        assert delivery.quota is not None
        used = usage.get(account.address)
        if used is None:
            used = operations.used_octets(account.conn)
        if used + len(delivery.data) > delivery.quota:
            usage[account.address] = used
            raise OverQuota(
                f"{account.address} would hold {used + len(delivery.data)} of {delivery.quota}"
                " octets"
            )
        usage[account.address] = used + len(delivery.data)

    def _stage(self, item: _Staged) -> None:
        delivery = item.delivery
        try:
            name = maildir.unique_name(self.hostname, len(delivery.data))
            item.staged = maildir.write_tmp(
                item.folder, name, delivery.data, delivery.internal_date, sync=not item.inline
            )
        except BaseException as exc:
            item.error = exc

    def _commit(self, group: list[_Staged]) -> list[Delivered]:
        conn = group[0].account.conn
        account = group[0].account
        by_mailbox: dict[str, list[int]] = {}
        for position, item in enumerate(group):
            by_mailbox.setdefault(item.delivery.mailbox, []).append(position)
        uids = [0] * len(group)
        uidvalidity: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for mailbox_name, positions in by_mailbox.items():
                box = index.mailbox(conn, mailbox_name)
                uidvalidity[mailbox_name] = box.uidvalidity if box else 0
                new = []
                for position in positions:
                    item = group[position]
                    assert item.staged is not None
                    new.append(
                        NewMessage(
                            file=str(item.staged.final_path.relative_to(account.path)),
                            size=len(item.delivery.data),
                            internal_date=int(item.delivery.internal_date or time.time()),
                            flags=item.delivery.flags,
                            summary=item.delivery.summary,
                        )
                    )
                for position, uid in zip(
                    positions, index.add_messages(conn, mailbox_name, new), strict=True
                ):
                    uids[position] = uid
            # The bytes of the messages whose files are not durable yet: in
            # the same commit as their rows (estafeta.store.ingest).
            ingest.add_pending(
                conn,
                (
                    (str(item.staged.final_path.relative_to(account.path)), item.delivery.data)
                    for item, uid in zip(group, uids, strict=True)
                    if item.inline and uid and item.staged is not None
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [
            Delivered(
                address=account.address,
                mailbox=item.delivery.mailbox,
                uid=uid,
                file=str(item.staged.final_path.relative_to(account.path)),
                uidvalidity=uidvalidity[item.delivery.mailbox],
            )
            for item, uid in zip(group, uids, strict=True)
            if item.staged is not None
        ]

    # -- accounts ----------------------------------------------------------

    def _index_path(self, address: str) -> Path:
        return self.account_dir(address) / "index.db"

    def _open(self, address: str) -> _Account:
        account = self._accounts.get(address)
        if account is not None:
            return account
        path = self.account_dir(address)
        fresh = not path.exists()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if fresh:
            maildir.fsync_dir(path.parent)
            maildir.fsync_dir(path.parent.parent)
        conn = index.connect(path / "index.db")
        account = _Account(address, path, conn)
        # Finish file work committed before a crash first, so that files an
        # expunge removed from the index are not "recovered" as new mail.
        # replay_journal never raises for the file system, and a mailbox whose
        # folder cannot be made is skipped: an account always opens.
        operations.replay_journal(conn, path)
        self._make_folders(account)
        # Then the files of acknowledged messages a crash left in tmp/ (or
        # nowhere): written from their committed bytes before anything reads.
        ingest.recover(conn, path, address)
        self._recover(account)
        self._accounts[address] = account
        self._fulltext_todo.add(address)  # what was delivered before the index existed
        self._fulltext_stale.add(address)
        return account

    # -- the full-text index (estafeta.store.fulltext) ------------------------

    def build_fulltext(self, address: str) -> int:
        """Index now every message of the account the full-text index does
        not hold (the writer thread does it when idle anyway); the number
        indexed. Blocking: for tools and benchmarks."""

        def run() -> int:
            account = self._open(address)
            total = 0
            while added := self._fulltext_add(account):
                total += added
            self._fulltext_todo.discard(address)
            return total

        return self._call(run)

    def _fulltext_step(self) -> None:
        """One bounded step of keeping an account's full-text index up to
        date, in its own transaction: index up to FULLTEXT_BATCH messages
        not in it yet (each mailbox's messages above the highest UID it
        holds), or drop up to FULLTEXT_BATCH keys of messages that are gone.
        An account with nothing left to do leaves the to-do set. SEARCH is
        right whatever the index holds: it scans the messages not in it."""
        address = next(iter(self._fulltext_todo))
        try:
            account = self._open(address)
            if address in self._fulltext_stale:
                if self._fulltext_drop(account) < FULLTEXT_BATCH:
                    self._fulltext_stale.discard(address)
                return
            if self._fulltext_add(account) == 0:
                self._fulltext_todo.discard(address)
        except Exception as exc:  # the index is an accelerator: never fatal
            self._fulltext_todo.discard(address)
            self._fulltext_stale.discard(address)
            log_event(log, "fulltext_failed", logging.WARNING, account=address, error=str(exc))

    def _fulltext_add(self, account: _Account) -> int:
        conn = account.conn
        items: list[tuple[int, str, str | None]] = []
        octets = 0
        for box in index.mailboxes(conn):
            low, high = fulltext.mailbox_range(box.id)
            row = conn.execute(
                "SELECT max(key) FROM fulltext_doc WHERE key BETWEEN ? AND ?", (low, high)
            ).fetchone()
            above = fulltext.split_key(row[0])[1] if row[0] is not None else 0
            rows = conn.execute(
                "SELECT uid, file, summary, size FROM messages WHERE mailbox_id = ? AND uid > ?"
                " ORDER BY uid LIMIT ?",
                (box.id, above, FULLTEXT_BATCH - len(items)),
            ).fetchall()
            for uid, file, summary, size in rows:
                # A message not settled yet is in tmp/: prepare_files reads
                # it with maildir.read_message (estafeta.store.ingest).
                items.append((fulltext.message_key(box.id, uid), str(account.path / file), summary))
                octets += size
                if octets >= FULLTEXT_BATCH_OCTETS:
                    break  # a step holds at most this much mail (and one message)
            if len(items) >= FULLTEXT_BATCH or octets >= FULLTEXT_BATCH_OCTETS:
                break
        if items:
            entries = self._prepare(items)
            with operations.transaction(conn):
                fulltext.insert_many(conn, entries)
        return len(items)

    def _prepare(
        self, items: list[tuple[int, str, str | None]]
    ) -> list[tuple[int, fulltext.Entry]]:
        """``fulltext.prepare_files``, in the helper process when it is worth
        it. The writer waits (without the GIL), so nothing changes the
        account meanwhile; if the helper fails, it is done here instead."""
        if self.fulltext_helper and len(items) >= FULLTEXT_HELPER_MIN:
            try:
                if self._helper is None:
                    self._helper = concurrent.futures.ProcessPoolExecutor(
                        1,
                        mp_context=multiprocessing.get_context("spawn"),  # no fork of threads
                        initializer=_helper_init,
                    )
                return self._helper.submit(fulltext.prepare_files, items).result(
                    timeout=FULLTEXT_HELPER_TIMEOUT
                )
            except Exception as exc:  # BrokenProcessPool, TimeoutError, OSError
                log_event(log, "fulltext_helper_failed", logging.WARNING, error=repr(exc))
                helper, self._helper = self._helper, None
                if helper is not None:
                    helper.shutdown(wait=False, cancel_futures=True)
                    for process in list((getattr(helper, "_processes", None) or {}).values()):
                        process.kill()  # a stuck helper must not outlive its use
        return fulltext.prepare_files(items)

    def _fulltext_drop(self, account: _Account) -> int:
        conn = account.conn
        gone = [
            key
            for (key,) in conn.execute(
                "SELECT key FROM fulltext_doc d WHERE NOT EXISTS (SELECT 1 FROM messages m"
                " WHERE m.mailbox_id = d.key >> 32 AND m.uid = d.key & 4294967295) LIMIT ?",
                (FULLTEXT_BATCH,),
            )
        ]
        if gone:
            with operations.transaction(conn):
                fulltext.remove(conn, gone)
        return len(gone)

    def _make_folders(self, account: _Account) -> None:
        """Make every mailbox's folder (at open, once): one that cannot exist
        (a name an older version let through) is logged and skipped, and
        ``estafeta reindex`` repairs it."""
        account.folders.clear()
        for box in index.mailboxes(account.conn):
            folder = account.path / box.dir if box.dir else account.path
            try:
                maildir.make_maildir(folder)
            except OSError as exc:
                log_event(
                    log, "mailbox_folder_unusable", logging.ERROR, account=account.address,
                    mailbox=box.name, error=exc.strerror, hint="estafeta reindex",
                )  # fmt: skip
                continue
            account.folders[box.name] = folder

    def _folder(self, account: _Account, mailbox_name: str) -> Path:
        """The folder of a mailbox, from the cache or the index (writer thread)."""
        folder = account.folders.get(mailbox_name)
        if folder is not None:
            return folder
        box = index.mailbox(account.conn, mailbox_name)
        if box is None:
            raise StoreError(f"{account.address}: no mailbox {mailbox_name!r}")
        folder = account.path / box.dir if box.dir else account.path
        try:
            maildir.make_maildir(folder)
        except OSError as exc:
            raise StoreError(f"{account.address}: mailbox {box.name!r}: {exc.strerror}") from None
        account.folders[mailbox_name] = folder
        return folder

    def _recover(self, account: _Account) -> int:
        """Index message files the index does not know (a crash before commit)."""
        known = index.files(account.conn)
        recovered = 0
        for box in index.mailboxes(account.conn):
            folder = account.folders.get(box.name)
            if folder is None:
                continue  # no folder (logged by _make_folders)
            maildir.clean_tmp(folder)
            prefix = f"{box.dir}/" if box.dir else ""
            orphans = sorted(
                (prefix + name for name in maildir.scan(folder) if prefix + name not in known),
                key=lambda name: maildir.sort_key(name.rsplit("/", 1)[1]),
            )
            if not orphans:
                continue
            account.conn.execute("BEGIN IMMEDIATE")
            try:
                index.add_messages(
                    account.conn, box.name, [_from_file(account.path, name) for name in orphans]
                )
                account.conn.execute("COMMIT")
            except BaseException:
                account.conn.execute("ROLLBACK")
                raise
            recovered += len(orphans)
        return recovered

    def _reindex(self, address: str) -> int:
        path = self.account_dir(address)
        if not path.is_dir():
            raise StoreError(f"{address}: no mail directory at {path}")
        account = self._open(address)
        self._settle_account(address)  # reindex reads new/ and cur/ only
        conn = account.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # And what another process (the server, when the CLI reindexes)
            # committed with its file still in tmp/: written out under the
            # write lock, so that no such message can be missed below.
            ingest.write_out(conn, path, address)
            carried = index.old_flags(conn)
            settings = index.dump_mailbox_settings(conn)
            acls = shared.dump(conn)  # the shared store's (new mailbox ids below)
            conn.execute("DELETE FROM messages")
            conn.execute("DELETE FROM expunged")
            conn.execute("DELETE FROM mailboxes")
            uidvalidity = index.new_uidvalidity(
                conn, max((s[2] + 1 for s in settings.values()), default=0)
            )
            total = 0
            fs_limits = names.limits(path)
            folders = set(maildir.folders(path))
            for name in settings:
                directory = maildir.mailbox_dir(name)
                if names.fits(path, directory, fs_limits):
                    folders.add(directory)
                else:
                    # A name an older version committed whose folder cannot
                    # exist (issue 14 item 3): it never held a file.
                    log_event(
                        log, "reindex_dropped_mailbox", logging.WARNING, account=address,
                        mailbox=name, reason="folder name too long",
                    )  # fmt: skip
            for directory in sorted(folders):
                name = maildir.mailbox_name(directory)
                special, subscribed, _, highest = settings.get(name, (None, True, 0, 0))
                if name not in settings:
                    # A folder the index did not know: subscribed, as before.
                    conn.execute("INSERT OR IGNORE INTO subscriptions (name) VALUES (?)", (name,))
                conn.execute(
                    "INSERT INTO mailboxes (id, name, dir, uidvalidity, uidnext, highestmodseq,"
                    " special_use, subscribed) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                    (
                        index.next_mailbox_id(conn),
                        name,
                        directory,
                        uidvalidity,
                        highest,
                        special,
                        int(subscribed),
                    ),
                )
                folder = path / directory if directory else path
                maildir.make_maildir(folder)
                account.folders[name] = folder
                prefix = f"{directory}/" if directory else ""
                files = sorted(
                    (prefix + f for f in maildir.scan(folder)),
                    key=lambda f: maildir.sort_key(f.rsplit("/", 1)[1]),
                )
                records = [_from_file(path, f, carried.get(f)) for f in files]
                index.add_messages(conn, name, records)
                total += len(records)
            shared.restore(conn, acls)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return total


def _from_file(account_path: Path, name: str, carried: index.Carried | None = None) -> NewMessage:
    file = account_path / name
    data = file.read_bytes()
    saved: int | None
    email_oid = thread_oid = None
    if carried is not None:
        flags, internal_date, saved, email_oid, thread_oid = carried
    else:
        flags = tuple(maildir.flags_from_name(file.name))
        internal_date = int(os.stat(file).st_mtime)
        saved = None
    return NewMessage(
        email_oid=email_oid,  # rfc8474:5.1, 5.2: kept by reindex
        thread_oid=thread_oid,
        file=name,
        size=len(data),
        internal_date=internal_date,
        flags=flags,
        summary=summarize(data),
        # Kept by reindex; else when the file was made in its folder.
        saved=saved if saved is not None else index.saved_from_name(name, internal_date),
    )
