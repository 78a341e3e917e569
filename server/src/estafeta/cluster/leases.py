"""Leases: one holder at a time for a name, until the lease expires.

A lease is a row of ``leases`` (name, holder, expires). ``acquire`` takes a
name that is free, expired, or already its holder's, in one statement
(``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE``): two nodes asking at
once cannot both get it, since the conflicting insert waits for the other's
row lock and then re-checks the condition (PostgreSQL 15 docs, INSERT, "ON
CONFLICT DO UPDATE"). Expiry is the database's clock (``now()``), so the
nodes' clocks do not matter. A holder that dies stops renewing: its leases
end at ``expires`` and another may take them; nothing waits for the dead.

Holders are strings; ``Leases.new_holder`` makes one unique per use (the
node's name and a random token), so two sessions on one node exclude each
other as two nodes do.

``LeaseLocks`` is POP3's maildrop lock across nodes (rfc1939:8: the server
must acquire an exclusive-access lock on the maildrop): one lease per held
maildrop, renewed by one task for all of them, released at QUIT or
disconnect. A lease that could not be renewed before its TTL ran out is
*lost*: ``holds`` says so, and the session must not enter UPDATE with it.

Every public method is a coroutine that may be awaited on any event loop:
the query runs on the cluster's IoLoop (estafeta.cluster.ioloop), where the
pool lives, bounded by ``timeout``. Failures raise DatabaseError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop, IoLoopError
from estafeta.log import log_event

log = logging.getLogger("estafeta.cluster")

T = TypeVar("T")

MAX_NAME = 400  # "pop3:" and an address of up to 320 octets (rfc5321:4.5.3.1.3)
MAX_TTL = 86400.0
MAX_RENEW = 10_000  # leases renewed by one statement


async def on_io(io: IoLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on ``io``, from ``io``'s own loop or any other."""
    if io.in_loop():
        return await coro
    return await io.call(coro)


async def run_query(
    io: IoLoop,
    db: Database,
    limit: float,
    what: str,
    work: Callable[[Any], Awaitable[T]],
) -> T:
    """``work(connection)`` on a pooled connection on ``io``, in at most
    ``limit`` seconds (pool wait included); any failure is a DatabaseError
    that names the database and ``what`` was tried."""

    async def attempt() -> T:
        async with db.pool.acquire() as conn:
            return await work(conn)

    async def on_loop() -> T:
        # Not asyncio.timeout: a cancelled query's clean-up (asyncpg sends
        # a cancel request, the pool resets the connection) can take as long
        # as the hung database lets it, so it goes on in the background.
        task = asyncio.ensure_future(attempt())
        try:
            done, _ = await asyncio.wait({task}, timeout=limit)
        except asyncio.CancelledError:
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            raise TimeoutError(f"no answer in {limit:g} s")
        return task.result()

    try:
        return await on_io(io, on_loop())
    except Exception as exc:
        raise db.error(what, exc) from None


_abandoned: set[asyncio.Future[Any]] = set()  # cancelled, still cleaning up


def _abandon(task: asyncio.Future[Any]) -> None:
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its failure was reported as the timeout


def _check(name: str, ttl: float | None = None) -> None:
    if not name or len(name) > MAX_NAME:
        raise ValueError(f"lease name of {len(name)} characters (1 to {MAX_NAME})")
    if ttl is not None and not 0 < ttl <= MAX_TTL:
        raise ValueError(f"lease TTL {ttl} s: more than 0 and at most {MAX_TTL:.0f}")


class Leases:
    """The leases of one node; ``holder`` defaults to the node's name."""

    def __init__(self, io: IoLoop, db: Database, node: str, *, timeout: float = 10.0) -> None:
        if not node or len(node) > 100:
            raise ValueError("a node name of 1 to 100 characters is needed")
        self.io = io
        self.db = db
        self.node = node
        self.timeout = timeout

    def new_holder(self) -> str:
        """A holder name no other use of a lease shares: node and a token."""
        return f"{self.node}/{secrets.token_hex(8)}"

    async def acquire(self, name: str, ttl: float, *, holder: str | None = None) -> bool:
        """Take ``name`` for ``ttl`` seconds if it is free, expired, or
        already ``holder``'s (then it is renewed); False if another holds it."""
        _check(name, ttl)
        who = holder or self.node

        async def work(conn: Any) -> bool:
            row = await conn.fetchrow(
                "INSERT INTO leases (name, holder, expires)"
                " VALUES ($1, $2, now() + make_interval(secs => $3))"
                " ON CONFLICT (name) DO UPDATE"
                " SET holder = EXCLUDED.holder, expires = EXCLUDED.expires"
                " WHERE leases.expires < now() OR leases.holder = EXCLUDED.holder"
                " RETURNING holder",
                name, who, float(ttl),
            )  # fmt: skip
            return row is not None

        return await run_query(self.io, self.db, self.timeout, f"acquire lease {name!r}", work)

    async def renew(self, name: str, ttl: float, *, holder: str | None = None) -> bool:
        """Extend ``holder``'s lease to ``ttl`` seconds from now; False if it
        is not (or no longer) theirs. An expired lease nobody took is still
        the holder's: renewing it is safe, nobody else can hold it."""
        _check(name, ttl)
        return name in await self.renew_all({name: holder or self.node}, ttl)

    async def renew_all(self, held: Mapping[str, str], ttl: float) -> set[str]:
        """Renew many leases (name -> holder) in one statement: the names
        still held, and now extended."""
        if not held:
            return set()
        if len(held) > MAX_RENEW:
            raise ValueError(f"{len(held)} leases to renew at once, at most {MAX_RENEW}")
        for name in held:
            _check(name, ttl)
        names, holders = list(held), list(held.values())

        async def work(conn: Any) -> set[str]:
            rows = await conn.fetch(
                "UPDATE leases SET expires = now() + make_interval(secs => $3)"
                " FROM unnest($1::text[], $2::text[]) AS mine(name, holder)"
                " WHERE leases.name = mine.name AND leases.holder = mine.holder"
                " RETURNING leases.name",
                names, holders, float(ttl),
            )  # fmt: skip
            return {row[0] for row in rows}

        return await run_query(self.io, self.db, self.timeout, "renew leases", work)

    async def release(self, name: str, *, holder: str | None = None) -> bool:
        """Give up ``holder``'s lease; False if it was not theirs (any more)."""
        _check(name)
        who = holder or self.node

        async def work(conn: Any) -> bool:
            status = await conn.execute(
                "DELETE FROM leases WHERE name = $1 AND holder = $2", name, who
            )
            return bool(status != "DELETE 0")

        return await run_query(self.io, self.db, self.timeout, f"release lease {name!r}", work)

    async def holder_of(self, name: str) -> str | None:
        """Who holds ``name`` now (None: nobody, or an expired lease)."""
        _check(name)

        async def work(conn: Any) -> str | None:
            value = await conn.fetchval(
                "SELECT holder FROM leases WHERE name = $1 AND expires >= now()", name
            )
            return None if value is None else str(value)

        return await run_query(self.io, self.db, self.timeout, f"read lease {name!r}", work)

    async def prune(self, expired_for: float = 3600.0) -> int:
        """Delete leases expired for ``expired_for`` seconds (left by dead
        holders and never taken again): how many."""

        async def work(conn: Any) -> int:
            status = await conn.execute(
                "DELETE FROM leases WHERE expires < now() - make_interval(secs => $1)",
                float(expired_for),
            )
            return int(status.split()[-1])

        return await run_query(self.io, self.db, self.timeout, "prune leases", work)


# -- POP3's maildrop lock across nodes ---------------------------------------


# Work started on the IoLoop: a Task there, or a Future from another thread.
_Future = concurrent.futures.Future[T] | asyncio.Future[T]


@dataclass
class _Hold:
    holder: str
    renewed: float  # time.monotonic() of the last acquire or renewal
    lost: bool = False


class LeaseLocks:
    """Maildrop locks held with leases (the ``MaildropLocks`` protocol of
    estafeta.pop3.session): exclusive across every node and session.

    One task on the IoLoop renews every held lease each ``renew_every``
    seconds (one statement for all); it runs only while something is held.
    A lease not renewed within ``ttl`` (the database away, or taken after
    expiring) is lost: ``holds`` turns False and stays so until released.
    """

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        node: str,
        *,
        ttl: float = 60.0,
        renew_every: float | None = None,
        prefix: str = "pop3:",
        timeout: float = 10.0,
    ) -> None:
        _check("x", ttl)
        self.leases = Leases(io, db, node, timeout=timeout)
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else ttl / 3
        if not 0 < self.renew_every < ttl:
            raise ValueError(f"renew_every {self.renew_every} s must be less than the TTL {ttl} s")
        self.prefix = prefix
        self._lock = threading.Lock()  # _held, _pending, _releasing, _renewer
        self._held: dict[str, _Hold] = {}
        self._pending: set[str] = set()
        self._releasing: dict[str, _Future[bool]] = {}
        self._renewer: _Future[None] | None = None

    @property
    def io(self) -> IoLoop:
        return self.leases.io

    def _name(self, address: str) -> str:
        return self.prefix + address

    async def acquire(self, address: str) -> bool:
        """Lock ``address``'s maildrop for this session; False if another
        session (of this node or another) holds it. DatabaseError if the
        database cannot say."""
        with self._lock:
            if address in self._held or address in self._pending:
                return False  # this node's own session: no round trip
            self._pending.add(address)
            releasing = self._releasing.get(address)
        holder = self.leases.new_holder()
        try:
            if releasing is not None:
                # This node's last session of the maildrop is still letting
                # go: wait for that (else our own lease refuses us), but not
                # for long (if it fails, the lease expires by itself).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(releasing)), 5)
            ok = await self.leases.acquire(self._name(address), self.ttl, holder=holder)
        finally:
            with self._lock:
                self._pending.discard(address)
        if not ok:
            return False
        with self._lock:
            self._held[address] = _Hold(holder, time.monotonic())
            if self._renewer is None:
                self._renewer = self._start(self._renew_loop())
        return True

    def holds(self, address: str) -> bool:
        """Does this node still hold ``address``'s lock (not lost)?"""
        with self._lock:
            hold = self._held.get(address)
        return hold is not None and not hold.lost and time.monotonic() - hold.renewed < self.ttl

    def release(self, address: str) -> None:
        """Give the maildrop up (QUIT or disconnect). Never raises: if the
        database is away the lease expires by itself after the TTL."""
        with self._lock:
            hold = self._held.pop(address, None)
        if hold is None:
            return
        coro = self.leases.release(self._name(address), holder=hold.holder)
        try:
            future = self._start(coro)
        except IoLoopError:  # shutting down: the TTL ends it
            coro.close()
            return
        with self._lock:
            self._releasing[address] = future
        future.add_done_callback(lambda done: self._released(address, done))

    def _released(self, address: str, done: _Future[bool]) -> None:
        with self._lock:
            if self._releasing.get(address) is done:
                del self._releasing[address]
        if not done.cancelled() and done.exception() is not None:
            log_event(log, "lease_release_failed", logging.WARNING,
                      name=self._name(address)[:120], error=str(done.exception()))  # fmt: skip

    async def close(self) -> None:
        """Stop renewing and release everything held (server stop)."""
        with self._lock:
            held, self._held = self._held, {}
            renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
        for address, hold in held.items():
            try:
                await self.leases.release(self._name(address), holder=hold.holder)
            except Exception as exc:
                log_event(log, "lease_release_failed", logging.WARNING,
                          name=self._name(address)[:120], error=str(exc))  # fmt: skip

    def _start(self, coro: Coroutine[Any, Any, T]) -> _Future[T]:
        """Run ``coro`` on the IoLoop without waiting for it."""
        if self.io.in_loop():
            return self.io.loop.create_task(coro)
        return self.io.submit(coro)

    async def _renew_loop(self) -> None:
        """On the IoLoop: renew what is held, until nothing is."""
        failing = False
        while True:
            await asyncio.sleep(self.renew_every)
            with self._lock:
                live = {a: h for a, h in self._held.items() if not h.lost}
                if not live:
                    self._renewer = None
                    return
            names = [(self._name(a), h.holder) for a, h in live.items()]
            renewed: set[str] | None = set()
            try:
                for start in range(0, len(names), MAX_RENEW):
                    batch = dict(names[start : start + MAX_RENEW])
                    renewed = (renewed or set()) | await self.leases.renew_all(batch, self.ttl)
            except Exception as exc:
                if not failing:
                    log_event(log, "lease_renew_failed", logging.WARNING, error=str(exc))
                failing = True
                renewed = None
            else:
                failing = False
            now = time.monotonic()
            with self._lock:
                for address, hold in live.items():
                    if self._held.get(address) is not hold:
                        continue  # released meanwhile
                    if renewed is not None and self._name(address) in renewed:
                        hold.renewed = now
                    elif renewed is not None or now - hold.renewed >= self.ttl:
                        hold.lost = True
                        log_event(log, "lease_lost", logging.WARNING,
                                  name=self._name(address)[:120])  # fmt: skip
