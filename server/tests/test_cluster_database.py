"""The cluster's PostgreSQL pool and migrations (estafeta.cluster.database,
estafeta.cluster.schema) against a real PostgreSQL 15 over TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from pathlib import Path

import asyncpg
import pytest
import trustme
from _postgres import PASSWORD, Postgres

from conftest import run_drained
from estafeta.cluster import schema
from estafeta.cluster.database import Database, DatabaseError
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig
from estafeta.cluster.url import parse_url


async def _open(config: DatabaseConfig) -> Database:
    database = Database(config)
    await database.open()
    return database


def test_open_applies_the_migrations_once(database: DatabaseConfig) -> None:
    async def run() -> tuple[list[int], list[str], int]:
        # Four nodes starting at once: the advisory lock lets one migrate.
        nodes = await asyncio.gather(*(_open(database) for _ in range(4)))
        try:
            async with nodes[0].pool.acquire() as conn:
                versions = [r[0] for r in await conn.fetch("SELECT version FROM estafeta_schema")]
                tables = [
                    r[0]
                    for r in await conn.fetch(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                    )
                ]
                tls = await conn.fetchval(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                return versions, tables, int(tls)
        finally:
            for node in nodes:
                await node.close()

    versions, tables, tls = run_drained(run())
    assert versions == list(range(1, schema.LATEST + 1))
    for table in ("mail_scopes", "mail_rows", "blobs", "leases", "lockouts", "sieve_scripts"):
        assert table in tables
    assert tls == 1  # the connection is encrypted


def test_a_newer_schema_is_refused(database: DatabaseConfig) -> None:
    async def run() -> None:
        first = await _open(database)
        async with first.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO estafeta_schema (version) VALUES ($1)", schema.LATEST + 1
            )
        await first.close()
        await _open(database)

    with pytest.raises(DatabaseError, match=r"newer than this estafeta knows.*upgrade estafeta"):
        run_drained(run())


def test_without_migrations_an_empty_database_is_refused(database: DatabaseConfig) -> None:
    async def run() -> None:
        await Database(database).open(migrate=False)

    with pytest.raises(DatabaseError, match="schema is version 0"):
        run_drained(run())


def _refusal(config: DatabaseConfig) -> str:
    # On the IoLoop, as a node opens its pool: asyncpg closes the TLS
    # connection it was refused on, and that close (close_notify) may still
    # be in flight when the call returns. IoLoop.stop lets it finish; a
    # plain asyncio.run closed the loop under it, and the socket was left
    # to the garbage collector (a ResourceWarning in a later test, CI ci18).
    with pytest.raises(DatabaseError) as caught, IoLoop("refusal") as io:
        io.run(_open(config))
    message = str(caught.value)
    assert PASSWORD not in message
    return message


def test_a_wrong_password_is_named_not_shown(database: DatabaseConfig, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    message = _refusal(dataclasses.replace(database, password_file=wrong))
    assert str(database.url) in message and "password was refused" in message
    assert "not the password" not in message


def test_a_password_file_readable_by_others_is_refused(
    database: DatabaseConfig, tmp_path: Path
) -> None:
    loose = tmp_path / "loose"
    loose.write_text(PASSWORD)
    loose.chmod(0o644)
    assert "readable by others" in _refusal(dataclasses.replace(database, password_file=loose))


def test_another_ca_is_not_trusted(database: DatabaseConfig, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    message = _refusal(dataclasses.replace(database, ca_file=other))
    assert "certificate was not accepted" in message


def test_the_host_name_is_checked(database: DatabaseConfig, postgres: Postgres) -> None:
    # The certificate is for 127.0.0.1 and localhost: ::1 is not in it... but
    # the server listens on 127.0.0.1 only, so name it by another name that
    # resolves there and is not in the certificate.
    url = parse_url(str(database.url).replace("127.0.0.1", "127.0.0.2"))
    message = _refusal(dataclasses.replace(database, url=url))
    assert "127.0.0.2" in message


def test_verify_ca_takes_a_certificate_of_another_name(
    database: DatabaseConfig, postgres: Postgres
) -> None:
    # Same server through a name the certificate lacks: verify-ca accepts it
    # (the chain is the test CA's), verify-full refused it above.
    async def run() -> int:
        node = await _open(dataclasses.replace(database, tls="verify-ca"))
        try:
            return int(await node.pool.fetchval("SELECT 1"))
        finally:
            await node.close()

    assert run_drained(run()) == 1


def test_no_tls_is_refused_by_this_server(database: DatabaseConfig) -> None:
    # pg_hba.conf allows hostssl only: a node that would send the password
    # in the clear is turned away by the server too.
    message = _refusal(dataclasses.replace(database, tls="disable"))
    assert "refused the login" in message or "pg_hba" in message


def test_a_missing_database_and_a_closed_port(database: DatabaseConfig, postgres: Postgres) -> None:
    missing = parse_url(postgres.url("no_such_database"))
    assert "does not exist" in _refusal(dataclasses.replace(database, url=missing))
    # A port bound and never listened on refuses for certain; port + 1 was
    # sometimes another worker's server, which took the connection and
    # let it time out.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        closed = parse_url(f"postgresql://estafeta@127.0.0.1:{port}/x")
        message = _refusal(dataclasses.replace(database, url=closed, connect_timeout=2))
    assert f"127.0.0.1:{port}" in message and "cannot connect" in message


def test_close_cuts_a_connection_still_busy_after_the_grace(database: DatabaseConfig) -> None:
    """A query still running when the node closes does not hold the close
    for its length, nor is its connection left open past the loop's end."""

    async def run() -> tuple[float, BaseException | None]:
        node = await _open(database)
        conn = await node.pool.acquire()
        busy = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(60)"))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await node.close(grace=0.5)
        took = time.monotonic() - start
        outcome: BaseException | None = None
        try:
            await asyncio.wait_for(busy, 10)
        except Exception as exc:  # what the query's caller sees: the cut
            outcome = exc
        return took, outcome

    took, outcome = run_drained(run())
    # The query's caller is told its connection is gone.
    assert isinstance(outcome, asyncpg.ConnectionDoesNotExistError), outcome
    assert took < 30  # not the query's 60 s
