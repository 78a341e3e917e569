"""Users' Sieve scripts in PostgreSQL: ``ClusterScriptStore``, the cluster
backend's ``ScriptStore`` (estafeta.sieve.scripts).

The same methods, ScriptError codes and limits as the local store, so
ManageSieve, the CLI, the account pages and delivery do not know which one
they use (``Scripts`` below is the interface both have). The rows are in
``sieve_scripts`` (estafeta.cluster.schema, migration 1)::

    sieve_scripts(address, name, content, active, updated)
        PRIMARY KEY (address, name)
        UNIQUE INDEX sieve_scripts_active ON (address) WHERE active

``address`` is the account as the callers give it (normalised by them, as
for the local store's directories); ``name`` the NFC name (rfc5804:1.6);
``content`` exactly the text uploaded; ``active`` marks the active script
(rfc5804:1.4: at most one, which the partial unique index guarantees);
``updated`` when the row last changed (content, name or ``active``).

Consistency across nodes. Every change is one transaction (READ COMMITTED)
whose first statement is ``pg_advisory_xact_lock(LOCK_CLASS,
hashtext(address))``: the changes to one account are serialised whichever
node makes them, so the checks a change makes (the script count of
PUTSCRIPT, the existence checks of SETACTIVE, DELETESCRIPT, RENAMESCRIPT)
still hold when its writes commit. Two accounts whose hashes collide share a
lock: they wait for each other, nothing worse. The partial unique index is
the last line of defence: a writer that skipped the lock fails instead of
leaving two active scripts.

Crash ordering: none to keep. A transaction commits whole or not at all; a
reader (a delivery, GETSCRIPT) sees a script before a change or after it,
never half, and SETACTIVE's "deactivate the old, activate the new" is never
seen half-done either (the local store's rename of ``active`` gives the same).

Delivery (``compiled``) asks the database on every call for the active
script's SHA-256 and gets its text only when that differs from the cached
compile's: one round trip and a few dozen octets while nothing changed, and
a change made by any node (or by hand in SQL) is seen by the next delivery
on every node, without relying on local events.

The methods are synchronous, as the local store's are: each runs its
coroutine on the node's ``IoLoop`` (where the pool lives) and waits at most
``timeout`` seconds; an unreachable or failing database is a DatabaseError
(estafeta.cluster.database) naming the database, never its password. From
an event loop, ``compiled_async`` waits without blocking that loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import asyncpg

from estafeta.address import MAX_ADDRESS_OCTETS, AddressError, split_address
from estafeta.cluster.database import UNREACHABLE, Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.log import log_event
from estafeta.sieve.errors import SieveError
from estafeta.sieve.scripts import (
    ACTIVE_CODE,
    ALREADYEXISTS,
    CACHE_SIZE,
    INVALID,
    MAXSCRIPTS,
    MAXSIZE,
    NONEXISTENT,
    SYNTAX,
    ScriptError,
    Scripts,
    check_name,
)

if TYPE_CHECKING:
    from estafeta.sieve import Compiled
    from estafeta.sieve.scripts import ScriptStore

log = logging.getLogger("estafeta.sieve")

T = TypeVar("T")

# The first key of pg_advisory_xact_lock(int, int) for an account's scripts
# ("siev"); the second is hashtext(address). The two-key space does not
# overlap the one-key space of the migrations' lock (PostgreSQL 15 docs,
# 9.27.10 "Advisory Lock Functions").
LOCK_CLASS = 0x73696576
# Seconds one operation may take (waiting for a pooled connection and for
# another node's change of the same account included).
TIMEOUT = 30.0

# The active script: its name, its SHA-256, and its text unless the digest is
# the one the caller has ($2; NULL: always the text). Hashed in the server so
# that an unchanged script costs no transfer.
_ACTIVE_VERSION = """
SELECT name, digest, CASE WHEN digest = $2 THEN NULL ELSE content END AS content
FROM (
    SELECT name, content, sha256(convert_to(content, 'UTF8')) AS digest
    FROM sieve_scripts WHERE address = $1 AND active
) AS active_script
"""


class _Cached(NamedTuple):
    """An account's active script as last compiled: the SHA-256 of its text
    (None: no active script) and the result (None: it does not compile)."""

    digest: bytes | None
    compiled: Compiled | None


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _default_compile(text: str) -> Compiled:
    from estafeta import sieve

    return sieve.compile_script(text)


class ClusterScriptStore:
    """Every account's scripts in the cluster's database. Thread-safe; any
    number of nodes may change the same account at once."""

    def __init__(
        self,
        io: IoLoop,
        db: Database,
        *,
        max_script_size: int,
        max_scripts: int,
        compile: Callable[[str], Compiled] | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.io = io
        self.db = db
        self.max_script_size = max_script_size
        self.max_scripts = max_scripts
        self.timeout = timeout
        # Raises SieveError for a script that does not compile (rfc5804:2.6
        # validation = what delivery compiles); None: the default limits.
        self._compile = compile or _default_compile
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._cache_lock = threading.Lock()

    # -- running on the IoLoop ----------------------------------------------------

    def _run(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        """``coro`` run on the IoLoop, waited for at most ``timeout`` s."""
        future = self.io.submit(self._guard(what, coro))
        try:
            return future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            raise self._timed_out(what) from None

    def _timed_out(self, what: str) -> DatabaseError:
        return DatabaseError(
            f"{self.db.describe()}: cannot {what}: no answer within {self.timeout:g} s"
        )

    async def _guard(self, what: str, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        except (*UNREACHABLE, asyncpg.PostgresError) as exc:
            raise self.db.error(what, exc) from None

    @contextlib.asynccontextmanager
    async def _changing(self, key: str) -> AsyncIterator[Any]:
        """A transaction holding the account's lock (see the module's text)."""
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, key)
            yield conn

    async def _fetch(self, query: str, *args: object) -> list[Any]:
        async with self.db.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def _fetchval(self, query: str, *args: object) -> Any:
        async with self.db.pool.acquire() as conn:
            return await conn.fetchval(query, *args)

    # -- accounts ---------------------------------------------------------------

    @staticmethod
    def _key(account: str) -> str:
        """The ``address`` of ``account``'s rows; ScriptError INVALID for
        what the local store could not make a directory of either."""
        try:
            split_address(account)
        except AddressError as exc:
            raise ScriptError(INVALID, str(exc)) from None
        if len(account.encode("utf-8", "surrogatepass")) > MAX_ADDRESS_OCTETS:
            raise ScriptError(
                INVALID, f"an address is at most {MAX_ADDRESS_OCTETS} octets (rfc5321:4.5.3.1.3)"
            )
        try:
            account.encode("utf-8")
        except UnicodeEncodeError:
            raise ScriptError(INVALID, f"{account!r} is not valid UTF-8") from None
        return account

    # -- reading ----------------------------------------------------------------

    def list(self, account: str) -> list[tuple[str, bool]]:
        """(name, active) of every script, sorted by name (code points)."""
        key = self._key(account)
        rows = self._run(
            "list the Sieve scripts",
            self._fetch("SELECT name, active FROM sieve_scripts WHERE address = $1", key),
        )
        return sorted((row["name"], row["active"]) for row in rows)

    def exists(self, account: str, name: str) -> bool:
        key = self._key(account)
        name = check_name(name)
        found = self._run(
            "read a Sieve script",
            self._fetchval(
                "SELECT true FROM sieve_scripts WHERE address = $1 AND name = $2", key, name
            ),
        )
        return bool(found)

    def get(self, account: str, name: str) -> str:
        """The script's text; ScriptError NONEXISTENT if there is none."""
        name = check_name(name)
        key = self._key(account)
        text = self._run(
            "read a Sieve script",
            self._fetchval(
                "SELECT content FROM sieve_scripts WHERE address = $1 AND name = $2", key, name
            ),
        )
        if text is None:
            raise ScriptError(NONEXISTENT, f"there is no script named {name!r}")
        return str(text)

    def active(self, account: str) -> tuple[str, str] | None:
        """(name, text) of the active script, or None."""
        key = self._key(account)
        rows = self._run(
            "read the active Sieve script",
            self._fetch(
                "SELECT name, content FROM sieve_scripts WHERE address = $1 AND active", key
            ),
        )
        return (rows[0]["name"], rows[0]["content"]) if rows else None

    # -- checks -----------------------------------------------------------------

    def _encode(self, text: str) -> bytes:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line, column = _line_column(text, exc.start)
            raise ScriptError(SYNTAX, f"{line}:{column}: not valid UTF-8") from None
        at = text.find("\x00")
        if at >= 0:
            # rfc5228:8.1: no production of the grammar holds NUL (and
            # PostgreSQL's text cannot): refused whatever the compiler says.
            line, column = _line_column(text, at)
            raise ScriptError(SYNTAX, f"{line}:{column}: NUL is not allowed in a script")
        return data

    def _check_size(self, size: int) -> None:
        if size > self.max_script_size:
            raise ScriptError(
                MAXSIZE,
                f"the script is {size} octets, at most {self.max_script_size} are allowed",
            )

    def check(self, text: str) -> Compiled:
        """Compile ``text`` (rfc5804:2.12); ScriptError SYNTAX with "line:column: ..."."""
        self._encode(text)
        try:
            return self._compile(text)
        except SieveError as exc:
            raise ScriptError(SYNTAX, str(exc)) from None

    def _too_many(self, count: int) -> ScriptError:
        return ScriptError(
            MAXSCRIPTS, f"{count} scripts already, at most {self.max_scripts} are allowed"
        )

    def have_space(self, account: str, name: str, size: int) -> None:
        """rfc5804:2.5 — would PUTSCRIPT ``name`` of ``size`` octets fit?
        Returns if so, else ScriptError QUOTA/MAXSIZE or QUOTA/MAXSCRIPTS."""
        name = check_name(name)
        self._check_size(size)
        key = self._key(account)
        row = self._run(
            "count the Sieve scripts",
            self._fetch(
                "SELECT count(*) AS count, coalesce(bool_or(name = $2), false) AS replacing"
                " FROM sieve_scripts WHERE address = $1",
                key,
                name,
            ),
        )[0]
        # Replacing a script does not add one.
        if not row["replacing"] and row["count"] >= self.max_scripts:
            raise self._too_many(row["count"])

    # -- changes ----------------------------------------------------------------

    def put(self, account: str, name: str, text: str) -> bool:
        """Store a script (rfc5804:2.6): checked, then written whole or not at
        all. True if its content changed. ScriptError INVALID, QUOTA/MAXSIZE,
        SYNTAX, QUOTA/MAXSCRIPTS."""
        name = check_name(name)
        data = self._encode(text)
        self._check_size(len(data))
        if not data:
            # rfc5804:2.6: "A script of zero length SHOULD be disallowed."
            raise ScriptError(INVALID, "an empty script is not allowed")
        self.check(text)  # before the transaction: compiling may take a while
        key = self._key(account)
        return self._run("store a Sieve script", self._put(key, name, text))

    async def _put(self, key: str, name: str, text: str) -> bool:
        async with self._changing(key) as conn:
            same = await conn.fetchval(
                "SELECT content = $3 FROM sieve_scripts WHERE address = $1 AND name = $2",
                key,
                name,
                text,
            )
            if same:
                return False
            if same is None:  # a new script: the count under the account's lock
                count = await conn.fetchval(
                    "SELECT count(*) FROM sieve_scripts WHERE address = $1", key
                )
                if count >= self.max_scripts:
                    raise self._too_many(count)
                await conn.execute(
                    "INSERT INTO sieve_scripts (address, name, content) VALUES ($1, $2, $3)",
                    key,
                    name,
                    text,
                )
            else:
                await conn.execute(
                    "UPDATE sieve_scripts SET content = $3, updated = now()"
                    " WHERE address = $1 AND name = $2",
                    key,
                    name,
                    text,
                )
        return True

    def activate(self, account: str, name: str | None) -> bool:
        """rfc5804:2.8 — make ``name`` the active script (None or "": none).
        True if that changed anything. The script must exist (NONEXISTENT)
        and still compile (SYNTAX: an upgrade may have dropped an extension)."""
        key = self._key(account)
        if not name:
            return self._run("deactivate the Sieve script", self._deactivate(key))
        name = check_name(name)
        self.check(self.get(account, name))
        return self._run("activate a Sieve script", self._activate(key, name))

    async def _deactivate(self, key: str) -> bool:
        async with self._changing(key) as conn:
            done = await conn.fetch(
                "UPDATE sieve_scripts SET active = false, updated = now()"
                " WHERE address = $1 AND active RETURNING name",
                key,
            )
        return bool(done)

    async def _activate(self, key: str, name: str) -> bool:
        async with self._changing(key) as conn:
            active = await conn.fetchval(
                "SELECT active FROM sieve_scripts WHERE address = $1 AND name = $2", key, name
            )
            if active is None:
                raise ScriptError(NONEXISTENT, f"there is no script named {name!r}")
            if active:
                return False
            # Two statements: PostgreSQL checks a unique index row by row,
            # so one UPDATE flipping both rows could see two active ones.
            await conn.execute(
                "UPDATE sieve_scripts SET active = false, updated = now()"
                " WHERE address = $1 AND active",
                key,
            )
            await conn.execute(
                "UPDATE sieve_scripts SET active = true, updated = now()"
                " WHERE address = $1 AND name = $2",
                key,
                name,
            )
        return True

    def delete(self, account: str, name: str) -> None:
        """rfc5804:2.10 — NONEXISTENT, or ACTIVE for the active script."""
        name = check_name(name)
        key = self._key(account)
        self._run("delete a Sieve script", self._delete(key, name))

    async def _delete(self, key: str, name: str) -> None:
        async with self._changing(key) as conn:
            active = await conn.fetchval(
                "SELECT active FROM sieve_scripts WHERE address = $1 AND name = $2", key, name
            )
            if active is None:
                raise ScriptError(NONEXISTENT, f"there is no script named {name!r}")
            if active:
                raise ScriptError(ACTIVE_CODE, f"{name!r} is the active script")
            await conn.execute(
                "DELETE FROM sieve_scripts WHERE address = $1 AND name = $2", key, name
            )

    def rename(self, account: str, old: str, new: str) -> None:
        """rfc5804:2.11 — NONEXISTENT, ALREADYEXISTS; the active script stays active."""
        old = check_name(old)
        new = check_name(new)
        key = self._key(account)
        self._run("rename a Sieve script", self._rename(key, old, new))

    async def _rename(self, key: str, old: str, new: str) -> None:
        async with self._changing(key) as conn:
            names = {
                row["name"]
                for row in await conn.fetch(
                    "SELECT name FROM sieve_scripts WHERE address = $1 AND name = ANY($2::text[])",
                    key,
                    [old, new],
                )
            }
            if old not in names:
                raise ScriptError(NONEXISTENT, f"there is no script named {old!r}")
            if new in names:
                raise ScriptError(ALREADYEXISTS, f"a script named {new!r} exists already")
            try:
                async with conn.transaction():  # a savepoint
                    await conn.execute(
                        "UPDATE sieve_scripts SET name = $3, updated = now()"
                        " WHERE address = $1 AND name = $2",
                        key,
                        old,
                        new,
                    )
            except asyncpg.UniqueViolationError:  # a writer that skipped the lock
                raise ScriptError(ALREADYEXISTS, f"a script named {new!r} exists already") from None

    def remove_account(self, account: str) -> int:
        """Remove every script of ``account`` (``estafeta user erase``); the
        number removed. One statement: a delivery meanwhile runs the active
        script or none, and calling it again removes nothing more."""
        key = self._key(account)
        removed = self._run("remove the Sieve scripts", self._remove(key))
        with self._cache_lock:
            self._cache.pop(account, None)
        return removed

    async def _remove(self, key: str) -> int:
        async with self._changing(key) as conn:
            rows = await conn.fetch(
                "DELETE FROM sieve_scripts WHERE address = $1 RETURNING name", key
            )
        return len(rows)

    # -- delivery ---------------------------------------------------------------

    def compiled(self, account: str) -> Compiled | None:
        """The active script compiled, or None (no active script, or one that
        does not compile any more: logged once per version of its text).

        One query per call (see the module's text); the compile is kept per
        account while the text's SHA-256 in the database stays the same.
        DatabaseError if the database cannot say: a delivery must not run
        without the user's rules as though there were none."""
        key = self._key(account)
        cached = self._cached(account)
        known = cached.digest if cached is not None else None
        rows = self._run("read the active Sieve script", self._fetch(_ACTIVE_VERSION, key, known))
        return self._use(account, cached, rows)

    async def compiled_async(self, account: str) -> Compiled | None:
        """``compiled`` for a caller on another event loop (delivery): the
        query does not block that loop. Compiling a changed script does, as
        the local store's does."""
        key = self._key(account)
        cached = self._cached(account)
        known = cached.digest if cached is not None else None
        what = "read the active Sieve script"
        try:
            async with asyncio.timeout(self.timeout):
                rows = await self.io.call(
                    self._guard(what, self._fetch(_ACTIVE_VERSION, key, known))
                )
        except TimeoutError:
            raise self._timed_out(what) from None
        return self._use(account, cached, rows)

    def _cached(self, account: str) -> _Cached | None:
        with self._cache_lock:
            return self._cache.get(account)

    def _use(self, account: str, cached: _Cached | None, rows: Sequence[Any]) -> Compiled | None:
        if not rows:
            self._keep(account, _Cached(None, None))
            return None
        row = rows[0]
        digest = bytes(row["digest"])
        text = row["content"]
        if text is None and cached is not None:  # the digest sent: unchanged
            self._keep(account, cached)
            return cached.compiled
        result: Compiled | None
        try:
            result = self._compile(str(text))
        except SieveError as exc:
            log_event(
                log,
                "sieve_script_invalid",
                logging.ERROR,
                account=account,
                script=row["name"],
                error=str(exc),
            )
            result = None
        self._keep(account, _Cached(digest, result))
        return result

    def _keep(self, account: str, entry: _Cached) -> None:
        with self._cache_lock:
            self._cache[account] = entry
            self._cache.move_to_end(account)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)


if TYPE_CHECKING:
    # Both stores are ``Scripts`` (checked by mypy).
    def _local_is_scripts(store: ScriptStore) -> Scripts:
        return store

    def _cluster_is_scripts(store: ClusterScriptStore) -> Scripts:
        return store
