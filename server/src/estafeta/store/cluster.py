"""The cluster backend of the store (``[store] backend = "cluster"``, docs/scale.md).

Same interface as the local ``Store``, and the same code for everything but
where bodies live and how a write is committed:

- each account's index is a replica (estafeta.cluster.replica) of its rows
  in PostgreSQL, kept in ``mail_dir`` the way the local backend keeps its
  index; every IMAP, POP3 and Sieve read runs the local queries on it;
- every write runs the local operation inside ``Replica.write``: under the
  account's lock in PostgreSQL, after a pull, shipped before it returns;
- bodies are content-addressed objects (estafeta.cluster.blobs) written
  before the index rows that name them; a message's ``file`` is a Maildir
  name ending in ``,B=<SHA-256>``, which is how the collector knows which
  bodies are in use, and which survives RENAME (it rewrites the folder
  part only). COPY makes a new name for the same body: no bytes move.

A delivery's 250 follows (1) the body's PUT acknowledged by the object
store and (2) the PostgreSQL commit of its rows, with the bodies pinned in
that same transaction (issue 23: "A 250 is sent only after the body is
stored and the index row is committed").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from estafeta import metrics
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.listener import Listener
from estafeta.cluster.replica import Replica
from estafeta.message import Summary, summarize
from estafeta.store import fulltext, index, maildir, operations, shared
from estafeta.store.account import (
    Delivered,
    Delivery,
    OverQuota,
    Store,
    StoreError,
    _Account,
    _Job,
)
from estafeta.store.reader import SqliteReader

T = TypeVar("T")

log = logging.getLogger("estafeta.store")

INDEX_TABLES = (
    "mailboxes", "messages", "expunged", "meta", "subscriptions", "acl", "viewers", "private_seen",
)  # fmt: skip
"""The index tables replicated through PostgreSQL. Not: ``journal`` and
``pending`` (the local backend's file work) and the full-text tables, which
each replica builds for itself from the bodies."""

BODY_MARK = ",B="


class Bodies(Protocol):
    """What the store needs of the body store (estafeta.cluster.blobs.Blobs);
    its coroutines run on the IoLoop."""

    async def put_many(self, items: Sequence[bytes]) -> list[str]: ...

    async def get(self, digest: str) -> bytes: ...

    async def pin(self, conn: Any, digests: Sequence[str]) -> None: ...


def body_of(file: str) -> str:
    """The SHA-256 (hex) of the body a message ``file`` names."""
    digest = file[-64:]
    if file[-64 - len(BODY_MARK) : -64] != BODY_MARK:
        raise StoreError(f"{file!r} names no body")
    return digest


@dataclass
class _ClusterAccount(_Account):
    replica: Replica | None = None


class ClusterReader(SqliteReader):
    """A reader whose ``content`` comes from the body store (through its
    disk cache). ``inline_content`` is False: a body may be a network read
    away, so sessions call ``content`` in a thread, never on their loop."""

    inline_content = False

    def __init__(
        self,
        conn: Any,
        account_dir: Path,
        viewer: int | None,
        io: IoLoop,
        bodies: Bodies,
    ) -> None:
        super().__init__(conn, account_dir, viewer)
        self.io = io
        self.bodies = bodies

    def content(self, file: str) -> bytes:
        return self.io.run(self.bodies.get(body_of(file)))


class ClusterStore(Store):
    """All accounts' mail of a cluster node; the replicas under ``mail_dir``."""

    def __init__(
        self,
        mail_dir: Path,
        hostname: str,
        *,
        io: IoLoop,
        db: Database,
        bodies: Bodies,
        listen: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("fulltext_helper", False)  # bodies are read here, not from files
        super().__init__(mail_dir, hostname, **kwargs)
        self.io = io
        self.db = db
        self.bodies = bodies
        self._link_name = self._copy_name
        self._listen = listen
        self._listener: Listener | None = None
        self._listening: concurrent.futures.Future[None] | None = None
        self.refreshed = 0  # replicas changed by other nodes' writes (tests, metrics)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        super().start()
        if self._listen and self._listening is None:
            self._listener = Listener(self.db, self.changed_elsewhere, self.resync)
            self._listening = self.io.submit(self._listener.run())

    def stop(self) -> None:
        if self._listening is not None:
            self.io.loop.call_soon_threadsafe(self._listening.cancel)
            self._listening = None
        super().stop()

    def wait_listening(self, timeout: float = 10.0) -> None:
        """Block until the listener is connected (tests, start-up)."""
        listener = self._listener
        if listener is None:
            raise StoreError("the store does not listen for changes")

        async def wait() -> None:
            await asyncio.wait_for(listener.connected.wait(), timeout)

        self.io.run(wait())

    def changed_elsewhere(self, scope: str) -> None:
        """A write of ``scope`` was committed (on the IoLoop's thread)."""
        if scope in self._accounts:
            self._submit(_Job(concurrent.futures.Future(), call=lambda: self._refresh(scope)))

    def resync(self) -> None:
        for scope in list(self._accounts):
            self.changed_elsewhere(scope)

    def _refresh(self, address: str) -> None:
        """In the writer thread: pull what other nodes wrote; tell sessions."""
        account = self._accounts.get(address)
        if account is None:
            return
        try:
            changed = self._replica(account).sync()
        except Exception as exc:  # the database is away: the next write pulls
            log.warning("cannot refresh %s: %s", address, exc)
            return
        if changed:
            self.refreshed += 1
            account.folders.clear()
            self._fulltext_todo.add(address)
            self._fulltext_stale.add(address)
            self.changes.notify(address)

    # -- accounts ----------------------------------------------------------------

    def _open(self, address: str) -> _Account:
        account = self._accounts.get(address)
        if account is not None:
            return account
        path = self.account_dir(address)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = index.connect(path / "index.db")
        replica = Replica(self.io, self.db, address, conn, INDEX_TABLES)
        if not replica.sync() and replica.state()[1]:
            # Not in PostgreSQL yet: this node's new index (its default
            # mailboxes) becomes the account's first version, under the
            # lock, unless another node got there first (then it is pulled).
            replica.write(lambda: None)
        # A local journal of file work has nothing to do here: bodies are
        # not files of the account (the collector removes unused ones).
        conn.execute("DELETE FROM journal")
        made = _ClusterAccount(address, path, conn, replica=replica)
        self._accounts[address] = made
        self._fulltext_todo.add(address)
        self._fulltext_stale.add(address)
        return made

    @staticmethod
    def _replica(account: _Account) -> Replica:
        replica = getattr(account, "replica", None)
        if replica is None:
            raise StoreError(f"{account.address}: not a cluster account")
        assert isinstance(replica, Replica)
        return replica

    def _write(
        self,
        account: _Account,
        function: Callable[[], T],
        before_commit: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
    ) -> T:
        return self._replica(account).write(function, before_commit)

    def _account_op(
        self,
        address: str,
        function: Callable[[_Account], T],
        mailboxes: bool = False,
        files: bool = False,
        changes_mail: bool = True,
    ) -> T:
        def run() -> T:
            account = self._open(address)
            try:
                return self._write(account, lambda: function(account))
            finally:
                account.conn.execute("DELETE FROM journal")  # see _open
                if mailboxes:
                    account.folders.clear()
                if changes_mail:
                    self._fulltext_todo.add(address)
                    self._fulltext_stale.add(address)
                self.changes.notify(address)

        return self._call(run)

    def claim_recent(self, address: str, mailbox_id: int, uid: int) -> None:
        def run() -> None:
            account = self._open(address)
            self._write(account, lambda: operations.claim_recent(account.conn, mailbox_id, uid))

        self._call(run)

    def _viewer(self, address: str, viewer: str | None) -> int | None:
        # Viewer numbers key the private \Seen rows every node shares: they
        # are given under the shared store's lock.
        if viewer is None or address != shared.OWNER:
            return None
        number = self._viewers.get(viewer)
        if number is None:

            def run() -> int:
                account = self._open(address)
                return self._write(account, lambda: shared.viewer_id(account.conn, viewer))

            number = self._call(run)
            self._viewers[viewer] = number
        return number

    def reindex(self, address: str) -> int:
        raise StoreError(
            "reindex rebuilds a local index from Maildir files; a cluster's index is PostgreSQL's"
        )

    def _make_reader(self, conn: Any, address: str, viewer: int | None = None) -> SqliteReader:
        return ClusterReader(conn, self.account_dir(address), viewer, self.io, self.bodies)

    # -- reads that open the replica themselves: up to date first ---------------

    def _fresh(self, address: str) -> None:
        """Open (and so pull) the account's replica, in the writer thread."""

        def run() -> None:
            if address in self._accounts:
                self._refresh(address)
            else:
                self._open(address)

        self._call(run)

    async def usage(self, address: str) -> int:
        await asyncio.to_thread(self._fresh, address)
        return await super().usage(address)

    def has_mailbox(self, address: str, name: str) -> bool:
        self._fresh(address)
        return super().has_mailbox(address, name)

    def count_expired(self, address: str, mailbox: str, saved_before: int) -> int:
        self._fresh(address)
        return super().count_expired(address, mailbox, saved_before)

    def read_messages(
        self, address: str, mailbox: str, uids: Sequence[int], limit: int, max_size: int
    ) -> tuple[list[bytes], int]:
        self._fresh(address)
        conn = index.connect(self._index_path(address))
        try:
            box = index.mailbox(conn, mailbox)
            if box is None:
                return [], 0
            wanted = sorted(set(uids))
            files = index.files_of(conn, box.id, wanted[: max(0, limit)])
        finally:
            conn.close()
        contents = [self.io.run(self.bodies.get(body_of(file)))[:max_size] for file in files]
        return contents, max(0, len(wanted) - limit)

    # -- writing mail ------------------------------------------------------------

    def _copy_name(self, file: str, size: int) -> str:
        """COPY's name for a copy of ``file``: a new name, the same body."""
        return maildir.unique_name(self.hostname, size) + BODY_MARK + body_of(file)

    def _file(self, box: index.Mailbox, digest: str, size: int) -> str:
        name = maildir.unique_name(self.hostname, size) + BODY_MARK + digest
        return f"{box.dir}/new/{name}" if box.dir else f"new/{name}"

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Delivered]:
        try:
            digests = await self.io.call(self.bodies.put_many([d.data for d in deliveries]))
        except Exception as exc:
            raise StoreError(f"delivery failed: cannot store the bodies: {exc}") from None
        future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()
        self._submit(_Job(future, deliveries=_with_bodies(deliveries, digests)))
        return await asyncio.wrap_future(future)

    def deliver_sync(self, deliveries: Sequence[Delivery]) -> list[Delivered]:
        try:
            digests = self.io.run(self.bodies.put_many([d.data for d in deliveries]))
        except Exception as exc:
            raise StoreError(f"delivery failed: cannot store the bodies: {exc}") from None
        future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()
        self._submit(_Job(future, deliveries=_with_bodies(deliveries, digests)))
        return future.result()

    def _run_batch(self, jobs: list[_Job]) -> None:
        """Group commit: one write per account for the whole batch, the
        bodies (already stored) pinned in the same transaction."""
        started = time.monotonic()
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        failed: dict[int, BaseException] = {}
        results: dict[int, list[Delivered]] = {id(job): [] for job in live}
        by_account: dict[str, list[tuple[_Job, _BodyDelivery]]] = {}
        for job in live:
            for delivery in job.deliveries:
                assert isinstance(delivery, _BodyDelivery)
                by_account.setdefault(delivery.address, []).append((job, delivery))
        stored = 0
        for address, items in by_account.items():
            try:
                done = self._deliver_to(address, items, failed)
            except Exception as exc:
                for job, _ in items:
                    failed.setdefault(id(job), exc)
                continue
            for job, record in done:
                results[id(job)].append(record)
            stored += len(done)
            self._fulltext_todo.add(address)
            self.changes.notify(address)
        self.batches += 1
        self.batched_messages += stored
        if stored:
            metrics.STORE_BATCH_SECONDS.observe(time.monotonic() - started)
            metrics.STORE_BATCH_MESSAGES.observe(stored)
        for job in live:
            error = failed.get(id(job))
            if isinstance(error, OverQuota):
                job.future.set_exception(error)
            elif error is not None:
                job.future.set_exception(StoreError(f"delivery failed: {error}"))
            else:
                job.future.set_result(results[id(job)])

    def _deliver_to(
        self,
        address: str,
        items: Sequence[tuple[_Job, _BodyDelivery]],
        failed: dict[int, BaseException],
    ) -> list[tuple[_Job, Delivered]]:
        account = self._open(address)
        pinned: list[str] = []
        return self._write(
            account,
            lambda: self._add_deliveries(account, items, failed, pinned),
            lambda conn: self.bodies.pin(conn, pinned),
        )

    def _add_deliveries(
        self,
        account: _Account,
        items: Sequence[tuple[_Job, _BodyDelivery]],
        failed: dict[int, BaseException],
        pinned: list[str],
    ) -> list[tuple[_Job, Delivered]]:
        """Inside the account's write: the quota, ``:create``, then one
        transaction of rows for the deliveries that passed."""
        conn = account.conn
        used: int | None = None
        accepted: list[tuple[_Job, _BodyDelivery, index.Mailbox]] = []
        for job, delivery in items:
            if id(job) in failed:
                continue
            try:
                if delivery.quota is not None:
                    used = operations.used_octets(conn) if used is None else used
                    if used + len(delivery.data) > delivery.quota:
                        raise OverQuota(
                            f"{account.address} would hold {used + len(delivery.data)}"
                            f" of {delivery.quota} octets"
                        )
                    used += len(delivery.data)
                box = index.mailbox(conn, delivery.mailbox)
                if box is None and delivery.create:  # rfc5490:3.2 fileinto :create
                    box = operations.create_mailbox(
                        conn, account.path, delivery.mailbox, max_mailboxes=self.max_mailboxes
                    )
                if box is None:
                    raise StoreError(f"{account.address}: no mailbox {delivery.mailbox!r}")
                accepted.append((job, delivery, box))
            except Exception as exc:
                failed[id(job)] = exc
        accepted = [entry for entry in accepted if id(entry[0]) not in failed]
        if not accepted:
            return []
        done: list[tuple[_Job, Delivered]] = []
        with operations.transaction(conn):
            by_box: dict[int, list[tuple[_Job, _BodyDelivery, index.Mailbox]]] = {}
            for entry in accepted:
                by_box.setdefault(entry[2].id, []).append(entry)
            for group in by_box.values():
                box = group[0][2]
                files = [self._file(box, d.digest, len(d.data)) for _, d, _ in group]
                uids = index.add_messages(
                    conn,
                    box.name,
                    [
                        index.NewMessage(
                            file=file,
                            size=len(d.data),
                            internal_date=int(d.internal_date or time.time()),
                            flags=d.flags,
                            summary=d.summary,
                        )
                        for file, (_, d, _) in zip(files, group, strict=True)
                    ],
                )
                for (job, d, _), uid, file in zip(group, uids, files, strict=True):
                    done.append((job, Delivered(d.address, box.name, uid, file, box.uidvalidity)))
                    pinned.append(d.digest)
        return done

    async def append(
        self,
        address: str,
        mailbox: str,
        data: bytes,
        flags: Sequence[str] = (),
        internal_date: float | None = None,
        quota: int | None = None,
    ) -> Delivered:
        [made] = await self.append_many(address, mailbox, [(data, flags, internal_date)], quota)
        return made

    async def append_many(
        self,
        address: str,
        mailbox: str,
        messages: Sequence[tuple[bytes, Sequence[str], float | None]],
        quota: int | None = None,
    ) -> list[Delivered]:
        """rfc9051:6.3.12 APPEND, rfc3502 MULTIAPPEND: all in one write or
        none; TRYCREATE before any body is stored."""
        name = operations.check_name(mailbox)
        if not await asyncio.to_thread(self.has_mailbox, address, name):
            raise operations.MailboxError(f"no mailbox {mailbox!r}", "TRYCREATE")
        loop = asyncio.get_running_loop()
        summaries = [await loop.run_in_executor(None, summarize, data) for data, _, _ in messages]
        digests = await self.io.call(self.bodies.put_many([data for data, _, _ in messages]))

        def run() -> list[Delivered]:
            account = self._open(address)
            made = self._write(
                account,
                lambda: self._append_rows(account, name, messages, summaries, digests, quota),
                lambda conn: self.bodies.pin(conn, digests),
            )
            self._fulltext_todo.add(address)
            self.changes.notify(address)
            return made

        future: concurrent.futures.Future[list[Delivered]] = concurrent.futures.Future()
        self._submit(_Job(future, call=run))
        return await asyncio.wrap_future(future)

    def _append_rows(
        self,
        account: _Account,
        mailbox: str,
        messages: Sequence[tuple[bytes, Sequence[str], float | None]],
        summaries: Sequence[Summary],
        digests: Sequence[str],
        quota: int | None,
    ) -> list[Delivered]:
        """``operations.append_many`` with bodies instead of files."""
        conn = account.conn
        box = index.mailbox(conn, mailbox)
        if box is None:
            raise operations.MailboxError(f"no mailbox {mailbox!r}", "TRYCREATE")
        rows = [
            index.NewMessage(
                file=self._file(box, digest, len(data)),
                size=len(data),
                internal_date=int(when if when is not None else time.time()),
                flags=list(operations.canonical_flags(flags)),
                summary=summary,
            )
            for (data, flags, when), summary, digest in zip(
                messages, summaries, digests, strict=True
            )
        ]
        with operations.transaction(conn):
            if quota is not None:
                operations.check_quota(conn, quota, sum(row.size for row in rows))
            uids = index.add_messages(conn, box.name, rows)
        return [
            Delivered(account.address, box.name, uid, row.file, box.uidvalidity)
            for uid, row in zip(uids, rows, strict=True)
        ]

    # -- the full-text index: from the bodies ------------------------------------

    def _prepare(
        self, items: list[tuple[int, str, str | None]]
    ) -> list[tuple[int, fulltext.Entry]]:
        prepared: list[tuple[int, fulltext.Entry]] = []
        for key, path, summary in items:
            try:
                data = self.io.run(self.bodies.get(body_of(path)))
            except Exception as exc:  # the index is an accelerator: skip, SEARCH scans it
                log.warning("full-text index: cannot read %s: %s", path, exc)
                continue
            prepared.append(
                (key, fulltext.prepare(data, Summary.from_json(summary) if summary else None))
            )
        return prepared


@dataclass(frozen=True)
class _BodyDelivery(Delivery):
    """A delivery whose body is already in the body store."""

    digest: str = ""


def _with_bodies(deliveries: Sequence[Delivery], digests: Sequence[str]) -> list[Delivery]:
    return [
        _BodyDelivery(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)}, digest=digest)
        for d, digest in zip(deliveries, digests, strict=True)
    ]
