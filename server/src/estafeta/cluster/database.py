"""The PostgreSQL connection pool of a cluster node (asyncpg).

One pool per node, opened by ``Database.open``, which also brings the
schema up to date (``estafeta.cluster.schema``). TLS follows libpq's
``sslmode`` names (https://www.postgresql.org/docs/15/libpq-ssl.html,
table 34.1): ``verify-full`` checks the chain and the host name,
``verify-ca`` the chain only, ``require`` encrypts without checking; always
TLS 1.2 or later. The password is read from ``password_file`` for every new
connection, so a rotated password needs no restart, and it never appears in
an error, a log line or ``describe()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import stat
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from estafeta.cluster.settings import DatabaseConfig

log = logging.getLogger("estafeta.cluster")

# Seconds a closing pool waits for its busy connections (a query running, a
# lock awaited) before it cuts them; ClusterNode.close waits longer than this.
CLOSE_GRACE = 5.0

# Errors asyncpg and the network raise when the database cannot be reached or
# goes away; callers catch DatabaseError, which says where and what.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


class StorageError(OSError):
    """The cluster's database or object store could not do what was asked.
    An OSError, as a disk's would be: callers that answer "try again later"
    for a storage error (IMAP's UNAVAILABLE, ManageSieve's TRYLATER,
    SMTP's 451) do so for these."""


class DatabaseError(StorageError):
    """The database could not do what was asked; the message names the URL.
    An OSError, as a disk's would be: callers that answer "try again later"
    for a storage error (ManageSieve's TRYLATER, SMTP's 451) do so for it."""


class Database:
    """The pool of one node; ``open`` before use, ``close`` at the end."""

    def __init__(self, config: DatabaseConfig, *, application_name: str = "estafeta") -> None:
        self.config = config
        self.application_name = application_name
        self._pool: asyncpg.Pool | None = None
        # Names this node in its NOTIFY payloads, so that its own writes,
        # which it has applied already, are not pulled again.
        self.origin = secrets.token_hex(8)

    def describe(self) -> str:
        return str(self.config.url)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseError(f"{self.describe()}: not open")
        return self._pool

    # -- connecting -----------------------------------------------------------

    def password(self) -> str | None:
        file = self.config.password_file
        if file is None:
            return None
        try:
            info = os.stat(file)
            text = file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatabaseError(f"{file}: cannot read the database password: {exc}") from None
        if info.st_mode & stat.S_IRWXO:
            raise DatabaseError(
                f"{file}: the database password is readable by others; chmod 600 it"
            )
        return text.strip("\r\n")

    def ssl_context(self) -> ssl.SSLContext | bool:
        mode = self.config.tls
        if mode == "disable":
            return False
        cafile = str(self.config.ca_file) if self.config.ca_file else None
        context = ssl.create_default_context(cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if mode == "verify-ca":
            context.check_hostname = False
        elif mode == "require":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect_args(self) -> dict[str, Any]:
        url = self.config.url
        return {
            "host": url.host,
            "port": url.port,
            "user": url.user,
            "database": url.database,
            "password": self.password,  # a callable: read at each connection
            "ssl": self.ssl_context(),
            "timeout": self.config.connect_timeout,
            "server_settings": {"application_name": self.application_name},
        }

    def error(self, what: str, exc: BaseException) -> DatabaseError:
        """``exc`` in words that name the URL (never the password)."""
        if isinstance(exc, DatabaseError):
            return exc
        if isinstance(exc, asyncpg.InvalidPasswordError):
            reason = "the password was refused (check password_file)"
        elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            reason = f"the server refused the login: {exc}"
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            reason = f"database {self.config.url.database!r} does not exist"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            reason = (
                f"the server's certificate was not accepted: {exc.verify_message} (tls, ca_file)"
            )
        elif isinstance(exc, ssl.SSLError):
            reason = f"TLS failed: {exc.reason or exc}"
        elif isinstance(exc, TimeoutError):
            reason = "timed out"
        elif isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
        else:
            reason = str(exc) or type(exc).__name__
        return DatabaseError(f"{self.describe()}: cannot {what}: {reason}")

    async def open(self, *, migrate: bool = True) -> None:
        """Connect (``pool_size`` connections at most) and, with ``migrate``,
        apply the schema's missing migrations. DatabaseError on failure."""
        from estafeta.cluster import schema

        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                min_size=1,
                max_size=self.config.pool_size,
                reset=_keep_session,
                **self._connect_args(),
            )
        except Exception as exc:
            raise self.error("connect", exc) from None
        try:
            async with self._pool.acquire() as conn:
                if migrate:
                    await schema.migrate(conn)
                else:
                    await schema.check(conn)
        except schema.SchemaError as exc:
            await self.close()
            raise DatabaseError(f"{self.describe()}: {exc}") from None
        except Exception as exc:
            await self.close()
            raise self.error("prepare the schema", exc) from None

    async def connect_one(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool (LISTEN)."""
        try:
            return await asyncpg.connect(**self._connect_args())
        except Exception as exc:
            raise self.error("connect", exc) from None

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Close the pool: each connection ends its session once given back.
        Those still busy after ``grace`` seconds are cut: a connection left
        open would outlive the loop it belongs to (the caller stops it next)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), grace)
            except Exception:  # still busy, or the server is gone
                pool.terminate()

    @contextlib.asynccontextmanager
    async def transaction(self, isolation: str = "read_committed") -> AsyncIterator[Any]:
        """A pooled connection in a transaction; errors become DatabaseError
        only for an unreachable database (SQL errors pass through)."""
        try:
            async with self.pool.acquire() as conn, conn.transaction(isolation=isolation):
                yield conn
        except StorageError:
            raise  # said already, by whoever raised it
        except UNREACHABLE as exc:
            raise self.error("run a transaction", exc) from None


async def _keep_session(conn: Any) -> None:
    """The pool's reset of a connection given back: nothing. asyncpg's
    default (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is one more
    round trip per use, for session state this project never leaves on a
    pooled connection: its advisory locks are transaction locks, its
    cursors live in transactions, it LISTENs on a connection of its own
    (``connect_one``) and sets nothing."""
