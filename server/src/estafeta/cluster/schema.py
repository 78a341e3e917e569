"""The cluster's tables in PostgreSQL, and the migrations that make them.

``MIGRATIONS[n - 1]`` brings the schema from version n-1 to n. ``migrate``
applies the missing ones in one transaction under an advisory lock, so
nodes that start together apply each exactly once; a database whose schema
is newer than this estafeta knows is refused (``SchemaError``): an old node
must not write into tables it does not understand.

What lives where (docs/scale.md):

- ``mail_scopes`` and ``mail_rows``: the replicated SQLite databases
  (``estafeta.cluster.replica``). A scope is an account's index (its
  address), the shared mailboxes (``#shared``) or the accounts database
  (``#accounts``); each row of a replicated table is one row here, its
  primary key as a JSON array in ``key`` and its columns in ``row``
  (NULL: deleted at ``version``, kept until pruned so replicas hear of it).
  A scope's ``version`` goes up by one for every committed write, under the
  scope row's lock (``FOR UPDATE``), which is what makes UIDs and modseqs
  atomic per mailbox across nodes.
- ``blobs``: message bodies by SHA-256, in the object store or in ``data``
  (``estafeta.cluster.blobs``); ``claimed`` and ``doomed`` are the
  collector's protocol.
- ``leases``: one holder at a time for a name (POP3 maildrops, jobs),
  until ``expires``.
- ``queue_messages``, ``queue_entries``, ``queue_mta_sts``: the outbound
  queue every node's runner takes from (``estafeta.queue.cluster``); an
  entry's claim (``claimed_by``, ``claim``, ``lease_until``) is kept in its
  row, so claiming is one ``UPDATE ... FOR UPDATE SKIP LOCKED``.
- ``send_counts``, ``login_failures``, ``lockouts``: the counters every node
  shares (sending limits, login guard).
- ``sieve_scripts``: ManageSieve's scripts, one active per account.
- ``greylist_*``: greylisting's triplets, networks and known senders
  (``estafeta.policy.greylist_cluster``); ``spam_*``: each account's
  junk-filter statistics and allowlist.
"""

from __future__ import annotations

from typing import Any

LOCK_KEY = 0x65737461  # "esta": pg_advisory_xact_lock key of migrations
CHANNEL = "estafeta_changes"  # NOTIFY channel: payload is the scope written

MIGRATIONS: tuple[str, ...] = (
    # 1: replicated scopes, bodies, leases, counters, Sieve.
    """
    CREATE TABLE mail_scopes (
        scope text PRIMARY KEY,
        version bigint NOT NULL DEFAULT 0,
        pruned bigint NOT NULL DEFAULT 0      -- tombstones at or below are gone
    );
    CREATE TABLE mail_rows (
        scope text NOT NULL,
        tbl text NOT NULL,
        key text NOT NULL,                    -- the primary key, a JSON array
        row jsonb,                            -- NULL: deleted (a tombstone)
        version bigint NOT NULL,
        PRIMARY KEY (scope, tbl, key)
    );
    CREATE INDEX mail_rows_version ON mail_rows (scope, version);
    CREATE INDEX mail_rows_tombstones ON mail_rows (version) WHERE row IS NULL;
    -- The bodies messages refer to: the last 64 characters of their file.
    CREATE INDEX mail_rows_blob ON mail_rows ((right(row->>'file', 64)))
        WHERE tbl = 'messages' AND row IS NOT NULL;
    CREATE TABLE blobs (
        digest text PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
        size bigint NOT NULL,
        data bytea,                           -- kind = "database": the body
        stored boolean NOT NULL DEFAULT false, -- the body is written (PUT acknowledged)
        claimed timestamptz NOT NULL DEFAULT now(),
        doomed timestamptz                    -- unreferenced since (the collector)
    );
    CREATE INDEX blobs_doomed ON blobs (doomed) WHERE doomed IS NOT NULL;
    CREATE TABLE leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        expires timestamptz NOT NULL
    );
    CREATE TABLE send_counts (
        address text NOT NULL,
        minute bigint NOT NULL,               -- POSIX minutes
        count integer NOT NULL,
        PRIMARY KEY (address, minute)
    );
    CREATE TABLE login_failures (
        kind text NOT NULL,                   -- 'ip' | 'account' | 'pair'
        subject text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX login_failures_subject ON login_failures (kind, subject, at);
    CREATE TABLE lockouts (
        kind text NOT NULL,
        subject text NOT NULL,
        until timestamptz NOT NULL,
        PRIMARY KEY (kind, subject)
    );
    CREATE TABLE sieve_scripts (
        address text NOT NULL,
        name text NOT NULL,
        content text NOT NULL,
        active boolean NOT NULL DEFAULT false,
        updated timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (address, name)
    );
    CREATE UNIQUE INDEX sieve_scripts_active ON sieve_scripts (address) WHERE active;
    """,
    # 2: the outbound queue (estafeta.queue.cluster).
    """
    CREATE TABLE queue_messages (
        id text PRIMARY KEY,
        sender text NOT NULL,                 -- '' for the null reverse-path (DSNs)
        size bigint NOT NULL,
        created double precision NOT NULL,    -- POSIX seconds
        envelope_id text,
        -- The message as it will be sent. Up to [limits] max_message_size
        -- (50 MiB) is acceptable in bytea for now; the object store
        -- (estafeta.cluster.blobs) is the next step.
        data bytea NOT NULL
    );
    CREATE TABLE queue_entries (
        id text PRIMARY KEY,
        message_id text NOT NULL REFERENCES queue_messages (id) ON DELETE CASCADE,
        domain text NOT NULL,
        recipients text[] NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt double precision NOT NULL, -- POSIX seconds, the runner's clock
        last_error text NOT NULL DEFAULT '',
        warned boolean NOT NULL DEFAULT false,
        claimed_by text,                      -- the node attempting it
        claim text,                           -- that claim's token
        lease_until timestamptz               -- the database's clock
    );
    CREATE INDEX queue_entries_due ON queue_entries (next_attempt);
    CREATE INDEX queue_entries_message ON queue_entries (message_id);
    CREATE TABLE queue_mta_sts (
        domain text PRIMARY KEY,
        policy text NOT NULL
    );
    """,
    # 3: greylisting (estafeta.policy.greylist_cluster) and the junk
    # filter's statistics, shared by every node. Times
    # are POSIX seconds of the nodes' clocks, as in the local files.
    """
    CREATE TABLE greylist_pending (
        key bytea PRIMARY KEY,                -- policy.greylist.triplet_key
        first double precision NOT NULL
    );
    CREATE INDEX greylist_pending_first ON greylist_pending (first);
    CREATE TABLE greylist_passed (
        key bytea PRIMARY KEY,
        network text NOT NULL,
        last double precision NOT NULL
    );
    CREATE INDEX greylist_passed_last ON greylist_passed (last);
    CREATE INDEX greylist_passed_network ON greylist_passed (network, last);
    CREATE TABLE greylist_clients (           -- auto-allowed networks
        network text PRIMARY KEY,
        last double precision NOT NULL
    );
    CREATE INDEX greylist_clients_last ON greylist_clients (last);
    CREATE TABLE greylist_senders (           -- known sender domains
        domain text PRIMARY KEY,
        first double precision NOT NULL,
        last double precision NOT NULL
    );
    CREATE INDEX greylist_senders_last ON greylist_senders (last);
    CREATE TABLE spam_stats (
        account text PRIMARY KEY,
        nspam bigint NOT NULL DEFAULT 0,
        nham bigint NOT NULL DEFAULT 0,
        tokenizer integer NOT NULL DEFAULT 1
    );
    CREATE TABLE spam_tokens (
        account text NOT NULL REFERENCES spam_stats (account) ON DELETE CASCADE,
        id bigint NOT NULL,                   -- spam.store.token_id
        spam integer NOT NULL,
        ham integer NOT NULL,
        day integer NOT NULL,
        PRIMARY KEY (account, id)
    );
    CREATE TABLE spam_trained (
        account text NOT NULL REFERENCES spam_stats (account) ON DELETE CASCADE,
        digest bytea NOT NULL,
        spam boolean NOT NULL,
        at double precision NOT NULL,
        PRIMARY KEY (account, digest)
    );
    CREATE INDEX spam_trained_age ON spam_trained (account, at);
    CREATE TABLE spam_allow (
        account text NOT NULL REFERENCES spam_stats (account) ON DELETE CASCADE,
        entry text NOT NULL,
        at double precision NOT NULL,
        PRIMARY KEY (account, entry)
    );
    """,
)

LATEST = len(MIGRATIONS)


class SchemaError(Exception):
    """The database's schema cannot be used by this estafeta."""


async def version(conn: Any) -> int:
    """The schema version of the database (0: none yet)."""
    exists = await conn.fetchval("SELECT to_regclass('estafeta_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM estafeta_schema"))


async def check(conn: Any) -> None:
    """SchemaError unless the schema is exactly what this estafeta knows."""
    found = await version(conn)
    if found > LATEST:
        raise SchemaError(_too_new(found))
    if found < LATEST:
        raise SchemaError(
            f"the schema is version {found}, this estafeta needs {LATEST}: "
            "start a node with migrations (estafeta serve) first"
        )


async def migrate(conn: Any) -> int:
    """Apply the missing migrations; the number applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS estafeta_schema ("
            " version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
        )
        found = await version(conn)
        if found > LATEST:
            raise SchemaError(_too_new(found))
        for number in range(found + 1, LATEST + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute("INSERT INTO estafeta_schema (version) VALUES ($1)", number)
        return LATEST - found


def _too_new(found: int) -> str:
    return (
        f"the schema is version {found}, newer than this estafeta knows ({LATEST}): "
        "upgrade estafeta on this node"
    )
