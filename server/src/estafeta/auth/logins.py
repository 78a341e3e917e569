"""Login history and per-account retention settings, in ``accounts.db``
(issue 18 §3; the ``Accounts`` methods that use these are thin wrappers).

Schema version 4 of ``estafeta.auth.accounts`` adds::

    logins(address, at, protocol, client, ok)   INDEX (address, at), INDEX (at),
                                                 INDEX (at) WHERE client not truncated yet
    retention(address, mailbox, seconds)         PRIMARY KEY (address, mailbox)

``logins``: one row per login attempt on an existing account, by any
protocol (``Authenticator`` records them: estafeta.auth.guard). ``client``
is the client's IP address as text (an IPv4-mapped IPv6 address as IPv4;
"" when the peer is not an IP address), and once older than ``[retention]
truncate_client_ip`` its network: IPv4 /24, IPv6 /48 (``truncate_client``),
always written with a "/" so that truncated rows leave the partial index.
At most ``KEEP_PER_ACCOUNT`` rows per account: the oldest are deleted in
the transaction that adds new ones.

No fsync per login. ``LoginRecorder`` buffers records in memory (at most
``MAX_WAITING``; beyond, the oldest are dropped and counted in
``estafeta_login_history_dropped_total``) and a thread of its own writes
them in one transaction at most once per ``interval`` (a second). Crash
ordering: a crash loses at most the last second of records, never anything
else; a record never reaches the file before the attempt was decided.
Rows for an address that is not an account (unknown user, account deleted
meanwhile) are never written: the INSERT checks ``accounts`` in the same
transaction.

``retention``: an account's own retention per mailbox key (a special-use
role such as "Trash", or a mailbox name), in seconds, 0 = keep forever;
``estafeta user retention`` writes it, ``estafeta.retention`` reads it.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from estafeta import metrics
from estafeta.log import log_event

log = logging.getLogger("estafeta.auth")

PROTOCOLS = ("imap", "pop3", "smtp", "sieve", "web")
KEEP_PER_ACCOUNT = 1000  # newest rows kept per account
MAX_WAITING = 10_000  # records buffered in memory at most
FLUSH_INTERVAL = 1.0  # seconds: at most one transaction per interval
BATCH = 5000  # rows deleted or truncated per transaction by the daily run
TRUNCATE_V4 = 24
TRUNCATE_V6 = 48
_MAX_CLIENT = 64  # characters of a client that is not an IP address (never stored)

DROPPED = Counter(
    "estafeta_login_history_dropped_total",
    "Login records not written to the login history: overflow (more than 10,000 waiting) "
    "or error (the database refused the write).",
    ["reason"],
    registry=metrics.REGISTRY,
)

_UNTRUNCATED = "client != '' AND instr(client, '/') = 0"


def create_v4(conn: sqlite3.Connection) -> None:
    """Schema version 4 of accounts.db (in the migration's transaction)."""
    conn.execute(
        """CREATE TABLE logins (
            address TEXT NOT NULL,          -- an account (normalised)
            at INTEGER NOT NULL,            -- Unix time of the attempt
            protocol TEXT NOT NULL CHECK (protocol IN ('imap', 'pop3', 'smtp', 'sieve', 'web')),
            client TEXT NOT NULL,           -- IP address; its /24 or /48 once truncated
            ok INTEGER NOT NULL             -- 1 logged in, 0 refused
        )"""
    )
    conn.execute("CREATE INDEX logins_by_address ON logins (address, at)")
    conn.execute("CREATE INDEX logins_by_time ON logins (at)")
    # Only the rows whose client is still a whole address: the daily
    # truncation finds them without reading the truncated ones again.
    conn.execute(f"CREATE INDEX logins_untruncated ON logins (at) WHERE {_UNTRUNCATED}")
    conn.execute(
        """CREATE TABLE retention (
            address TEXT NOT NULL,          -- an account
            mailbox TEXT NOT NULL,          -- a special-use role ("Trash") or a mailbox name
            seconds INTEGER NOT NULL,       -- messages older than this (since saved) go; 0 = never
            PRIMARY KEY (address, mailbox)
        )"""
    )


@dataclass(frozen=True)
class LoginRecord:
    """One login attempt, as ``Accounts.login_history`` gives it."""

    at: int  # Unix time
    protocol: str  # imap | pop3 | smtp | sieve | web
    client: str  # IP address, or its network once truncated ("192.0.2.0/24")
    ok: bool


def client_text(ip: str) -> str:
    """How a client address is stored: canonical text, IPv4-mapped IPv6 as
    IPv4, the zone dropped; "" for a peer that is not an IP address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def truncate_client(client: str) -> str:
    """The network of a stored client address: IPv4 /24, IPv6 /48 ("" stays "")."""
    if not client or "/" in client:
        return client
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return "/"  # not an address (an older writer's): nothing of it is kept
    prefix = TRUNCATE_V6 if isinstance(address, ipaddress.IPv6Address) else TRUNCATE_V4
    return str(ipaddress.ip_network((address, prefix), strict=False))


# -- SQL, each inside the caller's transaction ------------------------------------------


def insert(
    conn: sqlite3.Connection, records: Sequence[tuple[str, int, str, str, bool]], keep: int
) -> int:
    """Add (address, at, protocol, client, ok) records of existing accounts
    and trim each account they name to its ``keep`` newest rows; rows added."""
    before = conn.total_changes
    conn.executemany(
        "INSERT INTO logins (address, at, protocol, client, ok)"
        " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM accounts WHERE address = ?)",
        [(a, at, p, c, int(ok), a) for a, at, p, c, ok in records],
    )
    added = conn.total_changes - before
    for address in {record[0] for record in records}:
        conn.execute(
            "DELETE FROM logins WHERE rowid IN (SELECT rowid FROM logins WHERE address = ?"
            " ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)",
            (address, keep),
        )
    return added


def history(conn: sqlite3.Connection, address: str) -> list[LoginRecord]:
    rows = conn.execute(
        "SELECT at, protocol, client, ok FROM logins WHERE address = ?"
        " ORDER BY at DESC, rowid DESC",
        (address,),
    ).fetchall()
    return [LoginRecord(int(at), str(p), str(c), bool(ok)) for at, p, c, ok in rows]


def forget(conn: sqlite3.Connection, address: str) -> int:
    return max(0, conn.execute("DELETE FROM logins WHERE address = ?", (address,)).rowcount)


def count_before(conn: sqlite3.Connection, before: int) -> int:
    row = conn.execute("SELECT count(*) FROM logins WHERE at < ?", (before,)).fetchone()
    return int(row[0])


def delete_before(conn: sqlite3.Connection, before: int, limit: int) -> int:
    """Delete up to ``limit`` rows older than ``before``; how many went."""
    cursor = conn.execute(
        "DELETE FROM logins WHERE rowid IN (SELECT rowid FROM logins WHERE at < ? LIMIT ?)",
        (before, limit),
    )
    return max(0, cursor.rowcount)


def count_untruncated(conn: sqlite3.Connection, before: int) -> int:
    sql = f"SELECT count(*) FROM logins WHERE {_UNTRUNCATED} AND at < ?"  # noqa: S608
    return int(conn.execute(sql, (before,)).fetchone()[0])


def truncate_before(conn: sqlite3.Connection, before: int, limit: int) -> int:
    """Truncate the client of up to ``limit`` rows older than ``before``."""
    sql = f"SELECT rowid, client FROM logins WHERE {_UNTRUNCATED} AND at < ? LIMIT ?"  # noqa: S608
    rows = conn.execute(sql, (before, limit)).fetchall()
    conn.executemany(
        "UPDATE logins SET client = ? WHERE rowid = ?",
        [(truncate_client(client), rowid) for rowid, client in rows],
    )
    return len(rows)


def overrides(conn: sqlite3.Connection, address: str | None = None) -> dict[str, dict[str, int]]:
    """address -> {mailbox key: seconds}, of one account or all."""
    if address is None:
        rows = conn.execute("SELECT address, mailbox, seconds FROM retention ORDER BY 1, 2")
    else:
        rows = conn.execute(
            "SELECT address, mailbox, seconds FROM retention WHERE address = ? ORDER BY 2",
            (address,),
        )
    result: dict[str, dict[str, int]] = {}
    for owner, mailbox, seconds in rows:
        result.setdefault(str(owner), {})[str(mailbox)] = int(seconds)
    return result


def set_override(conn: sqlite3.Connection, address: str, mailbox: str, seconds: int | None) -> None:
    """Set an account's retention for a mailbox key; None removes it."""
    if seconds is None:
        conn.execute("DELETE FROM retention WHERE address = ? AND mailbox = ?", (address, mailbox))
        return
    conn.execute(
        "INSERT INTO retention (address, mailbox, seconds) VALUES (?, ?, ?)"
        " ON CONFLICT (address, mailbox) DO UPDATE SET seconds = excluded.seconds",
        (address, mailbox, seconds),
    )


def forget_account(conn: sqlite3.Connection, address: str) -> None:
    """What ``delete_user`` removes of this module's tables."""
    conn.execute("DELETE FROM logins WHERE address = ?", (address,))
    conn.execute("DELETE FROM retention WHERE address = ?", (address,))


# -- the recorder ------------------------------------------------------------------------


class LoginWriter(Protocol):
    def record_logins(self, records: Sequence[tuple[str, int, str, str, bool]]) -> int: ...


class LoginRecorder:
    """Buffers login records and writes them from a thread of its own, in one
    transaction at most once per ``interval`` seconds. ``record`` is cheap
    (a lock and an append): the event loop calls it. ``close`` writes what
    waits and stops the thread."""

    def __init__(
        self,
        writer: LoginWriter,
        *,
        interval: float = FLUSH_INTERVAL,
        max_waiting: int = MAX_WAITING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.interval = interval
        self.clock = clock
        self._waiting: deque[tuple[str, int, str, str, bool]] = deque(maxlen=max_waiting)
        self._cond = threading.Condition()
        # Held from taking a batch until it is written, so that ``flush``
        # returns only once what was recorded before it is readable, even
        # when the thread took it a moment earlier. Order: _writing, _cond.
        self._writing = threading.Lock()
        self._closing = False
        self.dropped = 0  # for tests; the metric counts the same
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="login-history", daemon=True)
        self._thread.start()

    def record(self, address: str, protocol: str, client: str, ok: bool) -> None:
        """One decided attempt on ``address`` (not checked here: rows of
        addresses that are not accounts are left out when written)."""
        if protocol not in PROTOCOLS:
            return
        entry = (address, int(self.clock()), protocol, client_text(client), ok)
        with self._cond:
            if self._closing:
                return
            waiting = self._waiting
            if len(waiting) == waiting.maxlen:
                self.dropped += 1  # the deque drops the oldest
                DROPPED.labels("overflow").inc()
            waiting.append(entry)
            if len(waiting) == 1:
                self._cond.notify()

    def flush(self) -> None:
        """Write what waits now, in the caller's thread (tests, close); on
        return, every record made before the call has been written."""
        with self._writing:
            with self._cond:
                batch = list(self._waiting)
                self._waiting.clear()
            self._write(batch)

    def close(self) -> None:
        """Write what waits and stop the thread (server stop). Blocking."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                # At most one transaction per interval: let records gather.
                while not self._closing:
                    left = last + self.interval - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closing:
                    return  # close() writes the rest
            with self._writing:
                with self._cond:
                    batch = list(self._waiting)
                    self._waiting.clear()
                self._write(batch)
            last = time.monotonic()

    def _write(self, batch: list[tuple[str, int, str, str, bool]]) -> None:
        if not batch:
            return
        try:
            self.written += self.writer.record_logins(batch)
        except Exception as exc:  # sqlite3.Error, AccountError: never the login's problem
            self.dropped += len(batch)
            DROPPED.labels("error").inc(len(batch))
            log_event(log, "login_history_failed", logging.WARNING, records=len(batch), error=exc)
