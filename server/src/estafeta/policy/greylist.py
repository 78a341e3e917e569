"""Greylisting (rfc6647): a temporary failure for the first mail of a stranger.

A legitimate MTA queues and retries a message that got a 4yz reply
(rfc5321:4.5.4.1); much bulk software does not. The first time we see a
*triplet* we answer ``451 4.7.1`` to that RCPT; a retry after ``delay`` is
accepted and the triplet remembered, so later mail of its kind passes at once.

The triplet (rfc6647:2.2, greylisting at the SMTP command level): the client
**network** (IPv4 /24, IPv6 /64: rfc6647:2.1 keys on the client address,
widened because large senders retry from another host of their pool and an
IPv6 host may use many addresses of its /64); the envelope **sender** as
:func:`normalize_sender` makes it (BATV tags, SRS hashes, VERP numbers do not
make every message a stranger; the null sender is ``""``); the **recipient**,
lower-cased.

:meth:`Greylist.check` decides one RCPT, in this order:

1. the client network is auto-allowed -> pass (``auto-allowed``);
2. the triplet passed before and was seen within ``expire`` -> pass
   (``known``), its "last seen" refreshed (at most hourly);
3. no pending entry -> greylisted (``new``), first sight recorded;
4. less than ``delay`` since first sight -> greylisted (``early``);
5. ``retry_window`` or more since first sight (or the clock went back) ->
   greylisted again from now (``restarted``);
6. otherwise -> pass (``retried``): the entry moves to the passed triplets.

Auto-allowing (rfc6647:5, sparing clients that retry correctly the delay):
a network with ``auto_allow`` distinct live passed triplets is allowed as a
whole, until it goes unseen for ``expire``; ``auto_allow = 0`` turns it off.

Known senders: the caller gives :meth:`~Greylist.remember_sender` the domain
that authenticated a delivered message with *aligned* SPF or DKIM (the exact DKIM
``d=`` or SPF MAIL FROM domain, not its organizational domain), and skips
greylisting when :meth:`~Greylist.known_sender` says so. A spammer's own
domain passes aligned SPF easily (``v=spf1 +all``), so one message that got
through could vouch for a whole botnet: a domain is known only once it was
first remembered ``sender_min_age`` ago (a day), so a throw-away domain used
in one burst never is; it is forgotten after ``expire`` unseen. Callers
should prefer DKIM, and count an SPF pass of a ``+all`` record as none.

On disk: one SQLite file (``data_dir/greylist.db``), WAL mode::

    pending(key BLOB PK, first REAL)               INDEX (first)
    passed (key BLOB PK, network TEXT, last REAL)  INDEX (last), INDEX (network)
    clients(network TEXT PK, last REAL)            INDEX (last)   auto-allowed
    senders(domain TEXT PK, first REAL, last REAL) INDEX (last)   known senders

``key``: 16 bytes of BLAKE2b over the triplet, a fixed size whatever the
addresses. ``PRAGMA user_version`` is the schema version.

Crash ordering: a decision that writes is one transaction (synchronous=NORMAL:
a power loss may forget the last entries, which costs a sender one more
greylisting, never a message). A file that is not a database, or of another
schema version, is moved aside (``greylist.db.broken-TIMESTAMP``) and a new
one started, with an ERROR event. A database error during a check is logged
and the RCPT is *not* greylisted: mail must flow without the list.

Bounds against a flood: at most ``max_pending`` pending entries (1,000,000 by
default, about 70 bytes each on disk: ~70 MB), the oldest evicted and counted
in :attr:`Greylist.evicted`; at most ``max_passed`` passed triplets, allowed
networks and known senders each, least recently seen evicted
(:attr:`Greylist.evicted_passed`). Freed pages are reused, so the file stays
at that size. Expiry is incremental: every ``PRUNE_EVERY`` checks or
``PRUNE_INTERVAL`` seconds, at most ``PRUNE_BATCH`` rows a table, through the
time indexes. A check is a few indexed lookups; addresses are cut at
``MAX_INPUT`` characters before the (linear) normalization.

Thread-safe: one connection, one lock; the methods are synchronous, for
worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from estafeta.address import AddressError, normalize_domain
from estafeta.log import log_event

log = logging.getLogger("estafeta.greylist")

DAY = 86400.0
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
PRUNE_EVERY = 1_000  # check() calls between two expiry runs...
PRUNE_INTERVAL = 300.0  # ...or seconds of the injected clock, whichever comes first
PRUNE_BATCH = 10_000  # rows one run removes from one table, at most
REFRESH_AFTER = 3600.0  # "last seen" is rewritten at most this often (reads stay reads)
MAX_INPUT = 1024  # characters of an address that are looked at
MAX_ADDRESS_TEXT = 100  # an IPv6 address with a scope is far shorter

# The counter attributes of a Greylist, for /metrics and the CLI.
COUNTERS = ("greylisted", "passed", "auto_allowed", "known", "evicted", "evicted_passed", "errors")
# Decision reasons.
NEW = "new"
EARLY = "early"
RESTARTED = "restarted"
RETRIED = "retried"
KNOWN = "known"
AUTO_ALLOWED = "auto-allowed"
ERROR = "error"

# Table -> (key column, time column that orders eviction and expiry). The SQL
# built with f-strings below takes its identifiers from here only (never
# from input): hence its "noqa: S608".
_TABLES = {
    "pending": ("key", "first"),
    "passed": ("key", "last"),
    "clients": ("network", "last"),
    "senders": ("domain", "last"),
}

# rfc6647:2.2: what one decision reads, in one statement.
_READ = (
    "SELECT (SELECT last FROM clients WHERE network = ?),"
    " (SELECT last FROM passed WHERE key = ?), (SELECT first FROM pending WHERE key = ?)"
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pending (key BLOB PRIMARY KEY, first REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS pending_by_first ON pending (first)",
    "CREATE TABLE IF NOT EXISTS passed ("
    " key BLOB PRIMARY KEY, network TEXT NOT NULL, last REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS passed_by_last ON passed (last)",
    "CREATE INDEX IF NOT EXISTS passed_by_network ON passed (network)",
    "CREATE TABLE IF NOT EXISTS clients (network TEXT PRIMARY KEY, last REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS clients_by_last ON clients (last)",
    "CREATE TABLE IF NOT EXISTS senders ("
    " domain TEXT PRIMARY KEY, first REAL NOT NULL, last REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS senders_by_last ON senders (last)",
)


@dataclass(frozen=True)
class Settings:
    delay: float = 300.0  # seconds a new triplet is refused
    retry_window: float = 2 * DAY  # a retry later than this after first sight starts over
    expire: float = 35 * DAY  # passed triplets, allowed networks, known senders: unseen for this
    auto_allow: int = 5  # passed triplets that allow their whole network (0: never)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    max_pending: int = 1_000_000
    max_passed: int = 1_000_000  # each of: passed triplets, allowed networks, known senders
    sender_min_age: float = DAY  # a remembered domain is "known" only this long after first

    def __post_init__(self) -> None:
        if not (
            0 <= self.delay < self.retry_window
            and self.expire > 0
            and self.sender_min_age >= 0
            and 0 <= self.ipv4_prefix <= 32
            and 0 <= self.ipv6_prefix <= 128
            and min(self.max_pending, self.max_passed) >= 1
            and self.auto_allow >= 0
        ):
            raise ValueError(f"greylist: impossible settings {self}")


@dataclass(frozen=True)
class Decision:
    greylisted: bool
    reason: str  # one of the reason constants above
    retry_after: float  # seconds until a retry can pass; 0 when not greylisted
    reply: str  # the SMTP reply to send when greylisted, "" otherwise
    network: str = ""  # the client network the triplet was keyed on


def greylist_reply(seconds: float) -> str:
    """The RCPT reply for a greylisted triplet.

    451 is a transient failure the client retries (rfc5321:4.2.2,
    rfc5321:4.5.4.1); 4.7.1 is "delivery not authorized" as a temporary
    condition (rfc3463:3.8). The text says what happened and when a retry
    can pass, so an operator reading a bounce knows it is not an error.
    """
    n = max(1, math.ceil(seconds))
    return f"451 4.7.1 Greylisted, please try again in {n} second{'s' if n != 1 else ''}"


# -- keys -----------------------------------------------------------------------


def client_network(client_ip: str, ipv4_prefix: int = 24, ipv6_prefix: int = 64) -> str:
    """The network a client address is keyed by, e.g. ``192.0.2.0/24``.

    An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, from a dual-stack
    socket) counts as IPv4; an IPv6 scope (``%eth0``) is dropped. Anything
    that is not an address string raises ValueError.
    """
    if not isinstance(client_ip, str):
        raise ValueError(f"not an IP address: {client_ip!r}")
    if len(client_ip) > MAX_ADDRESS_TEXT:
        raise ValueError(f"not an IP address: {client_ip[:100]!r}")
    return _client_network(client_ip, ipv4_prefix, ipv6_prefix)


# Every RCPT asks (ipaddress is slow: tens of microseconds); the same
# clients come back.
@functools.lru_cache(maxsize=4096)
def _client_network(client_ip: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        raise ValueError(f"not an IP address: {client_ip[:100]!r}") from None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        address = mapped if mapped is not None else ipaddress.IPv6Address(int(address))
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network((address, prefix), strict=False))


# SRS (the 2004 paper, as estafeta.srs writes it): the hash and the day
# stamp change from day to day, the original address does not.
#   SRS0=HHHH=TT=orig.domain=orig-local@forwarder
#   SRS1=HHHH=first.forwarder==HHHH=TT=orig.domain=orig-local@second.forwarder
_SRS0 = re.compile(r"srs0[=+-][^=]*=[^=]*=([^=]*)=(.+)")
_SRS1 = re.compile(r"srs1[=+-][^=]*=[^=]*=[=+-][^=]*=[^=]*=([^=]*)=(.+)")
# BATV (draft-levine-smtp-batv): prvs=KDDDSSSSSS=local, where the tag is a
# key digit, a three-digit day and six hex digits of hash; some signers put
# the tag last (prvs=local=tag). Microsoft (msprvs1=TAG=local) and
# Barracuda (btv1==TAG==local) use the same idea.
_BATV = re.compile(r"(?:prvs|msprvs\d*|btv\d*)=+(.+)")
_PRVS_TAG = re.compile(r"\d{4}[0-9a-f]{6}")
# A run of letters and digits holding a digit is a message or recipient
# number, a hex or base-36 id; words without digits name the list or the
# service and are kept. (Matched in two steps: "[a-z0-9]*[0-9][a-z0-9]*"
# backtracks quadratically over a long run of letters.)
_RUN = re.compile(r"[a-z0-9]+")
_DIGIT = re.compile(r"[0-9]")


def _variable(match: re.Match[str]) -> str:
    return "#" if _DIGIT.search(match.group()) else match.group()


def _strip_batv(local: str) -> str:
    match = _BATV.fullmatch(local)
    if match is None:
        return local
    parts = [part for part in match.group(1).split("=") if part]
    if len(parts) < 2:
        return local
    tag_last = not _PRVS_TAG.fullmatch(parts[0]) and _PRVS_TAG.fullmatch(parts[-1])
    if local.startswith("prvs=") and tag_last:  # the prvs=local=tag variant
        return "=".join(parts[:-1])
    return "=".join(parts[1:])


def normalize_sender(sender: str) -> str:
    """The envelope sender as it is keyed: stable across one sender's messages.

    Lower-cased (local part too: the key only has to be stable, and folding
    case merges at worst two spellings of one sender), then on the local part:

    1. SRS0/SRS1 (forwarders): reduced to the original ``local@domain``
       inside; the forwarder is still in the key as the client network;
    2. BATV (``prvs=TAG=local``, ``msprvs1=``, ``btv1==``): the tag removed,
       so signed and unsigned bounce addresses of one sender are one sender;
    3. a ``+extension`` dropped (VERP: ``bounces+123-user=example.org``);
    4. every run of letters and digits that holds a digit becomes ``#``
       (``list-bounces-123-456`` -> ``list-bounces-#-#``, SES-style ids).

    Over-merging is the safe side here: two senders that share a key also
    share the client network and the recipient, and a network whose mail
    passed after a retry is one that retries, which greylisting cannot stop
    anyway. The null sender ``""`` (``<>``) stays ``""``. Linear in the
    input, which is cut at ``MAX_INPUT`` characters.
    """
    text = sender.strip()[:MAX_INPUT]
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    text = text.lower()
    local, at, domain = text.rpartition("@")
    if not at:
        local, domain = text, ""
    domain = domain.rstrip(".")
    for pattern in (_SRS1, _SRS0):
        match = pattern.fullmatch(local)
        if match is not None:
            domain, local = match.group(1), match.group(2)
            break
    local = _strip_batv(local)
    local = local.split("+", 1)[0]
    local = _RUN.sub(_variable, local)
    return f"{local}@{domain}" if (at or domain) else local


def normalize_recipient(recipient: str) -> str:
    text = recipient.strip()[:MAX_INPUT]
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.lower().rstrip(".")


def triplet_key(network: str, sender: str, recipient: str) -> bytes:
    """16 bytes naming a triplet of already normalized parts."""
    data = f"{network}\0{sender}\0{recipient}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


# -- the decision, whatever keeps the state ------------------------------------

# What a decision asks the store to write (``decide``).
REFRESH_CLIENT = "refresh-client"  # the network's "last seen" = now
REFRESH_PASSED = "refresh-passed"  # the triplet's "last seen" = now
ADD_PENDING = "add-pending"  # first sight of the triplet = now
RESTART_PENDING = "restart-pending"  # first sight moved to now
PROMOTE = "promote"  # pending -> passed (and maybe the network allowed)


def decide(
    s: Settings,
    network: str,
    now: float,
    client_last: float | None,
    passed_last: float | None,
    pending_first: float | None,
) -> tuple[Decision, str]:
    """One RCPT's decision from what the list holds for it (the network's
    and the triplet's rows), and the write it needs ("" for none); the
    order of the module docstring."""
    if client_last is not None and now - client_last < s.expire:
        write = REFRESH_CLIENT if now - client_last >= REFRESH_AFTER else ""
        return Decision(False, AUTO_ALLOWED, 0.0, "", network), write
    if passed_last is not None and now - passed_last < s.expire:
        write = REFRESH_PASSED if now - passed_last >= REFRESH_AFTER else ""
        return Decision(False, KNOWN, 0.0, "", network), write
    if pending_first is None:
        return _greylisted(NEW, s.delay, network), ADD_PENDING
    elapsed = now - pending_first
    if elapsed < 0 or elapsed >= s.retry_window:
        # Too late for a retry of the first attempt (or the clock went back).
        return _greylisted(RESTARTED, s.delay, network), RESTART_PENDING
    if elapsed < s.delay:
        return _greylisted(EARLY, s.delay - elapsed, network), ""
    return Decision(False, RETRIED, 0.0, "", network), PROMOTE


def _greylisted(reason: str, seconds: float, network: str) -> Decision:
    return Decision(True, reason, seconds, greylist_reply(seconds), network)


def sender_is_known(s: Settings, row: tuple[float, float] | None, now: float) -> bool:
    """A known sender: remembered (``row`` = first, last) at least
    ``sender_min_age`` ago and seen within ``expire``."""
    return row is not None and now - row[1] < s.expire and now - row[0] >= s.sender_min_age


def erasure_keys(s: Settings, triplets: Iterable[tuple[str, str, str]]) -> set[bytes]:
    """The keys of (client IP, sender, recipient) triplets as ``check`` keys
    them; triplets whose client is not an address are left out."""
    keys: set[bytes] = set()
    for client_ip, sender, recipient in triplets:
        try:
            network = client_network(client_ip, s.ipv4_prefix, s.ipv6_prefix)
        except ValueError:
            continue
        keys.add(triplet_key(network, normalize_sender(sender), normalize_recipient(recipient)))
    return keys


class Counters:
    """The decision counters of a list, for /metrics and the CLI (monotonic)."""

    def __init__(self) -> None:
        self.greylisted = 0
        self.passed = 0
        self.auto_allowed = 0
        self.known = 0
        self.evicted = 0
        self.evicted_passed = 0
        self.errors = 0

    def count(self, decision: Decision) -> None:
        if decision.greylisted:
            self.greylisted += 1
        elif decision.reason == AUTO_ALLOWED:
            self.auto_allowed += 1
        else:
            self.passed += 1

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


class GreylistStore(Protocol):
    """What the MX's gate (``smtp.gate``) needs of a list: this module's
    ``Greylist`` (one node's file) or ``greylist_cluster.SharedGreylist``."""

    settings: Settings

    def now(self) -> float: ...
    def check(self, client_ip: str, sender: str, recipient: str) -> Decision: ...
    def known_sender(self, domain: str) -> bool: ...
    def remember_sender(self, domain: str) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class _SchemaError(sqlite3.DatabaseError):
    """A database of another schema version than this code knows."""


# -- the store ------------------------------------------------------------------


class Greylist(Counters):
    """Greylisting state in one SQLite file; see the module docstring.

    Counters for /metrics and the CLI (monotonic, since this object was
    made): ``greylisted``, ``passed`` (retried and known triplets),
    ``auto_allowed``, ``known`` (known_sender hits), ``evicted`` (pending
    entries dropped at the cap), ``evicted_passed``, ``errors``.
    """

    def __init__(
        self,
        path: Path,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.path = path
        self.settings = settings or Settings()
        self._clock = clock
        self._lock = threading.Lock()
        self._evicted_logged = 0
        self._calls = 0  # check() calls since the last expiry run
        self._pruned_at = -math.inf  # clock of the last expiry run
        self._rows: dict[str, int] = {}  # rows per table, counted at open, then tracked
        self._conn = self._open()
        with self._lock:
            self._maybe_prune(self._clock())  # after a long stop, much may have expired

    # -- opening ----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return self._connect()
        except sqlite3.OperationalError:
            raise  # locked, unreadable, disk full: not the file's fault, leave it be
        except sqlite3.DatabaseError as exc:
            # Not a database, a broken one, or another schema: keep it for a
            # post-mortem and start afresh. Losing it costs senders one more
            # greylisting each, never a message.
            stamp = f"{self.path.name}.broken-{int(self._clock())}"
            broken, n = self.path.with_name(stamp), 0
            while broken.exists():
                n += 1
                broken = self.path.with_name(f"{stamp}-{n}")
            log_event(log, "greylist_reset", logging.ERROR, path=str(self.path), error=str(exc))
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, Path(f"{broken}{suffix}"))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                raise _SchemaError(f"schema version {version}, expected {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            os.chmod(self.path, 0o600)
            # Once per start (O(rows)); afterwards kept up to date by rowcount.
            for table in _TABLES:
                (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
                self._rows[table] = int(count)
        except BaseException:
            conn.close()
            raise
        return conn

    def now(self) -> float:
        """The list's clock (injected in tests)."""
        return self._clock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Greylist:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- greylisting ----------------------------------------------------------------

    def check(self, client_ip: str, sender: str, recipient: str) -> Decision:
        """Decide one RCPT. ValueError if ``client_ip`` is not an address.

        Database errors are logged and counted, and the RCPT passes
        (reason ``error``).
        """
        s = self.settings
        network = client_network(client_ip, s.ipv4_prefix, s.ipv6_prefix)
        key = triplet_key(network, normalize_sender(sender), normalize_recipient(recipient))
        with self._lock:
            now = self._clock()
            try:
                decision = self._check(network, key, now)
            except sqlite3.Error as exc:
                self._error("check", exc)
                return Decision(False, ERROR, 0.0, "", network)
            self._maybe_prune(now)
            self.count(decision)
        log_event(log, "greylist", logging.DEBUG, result=decision.reason, network=network)
        return decision

    def _check(self, network: str, key: bytes, now: float) -> Decision:
        conn = self._conn
        row = conn.execute(_READ, (network, key, key)).fetchone()
        decision, write = decide(self.settings, network, now, *row)
        if write == REFRESH_CLIENT:
            conn.execute("UPDATE clients SET last = ? WHERE network = ?", (now, network))
        elif write == REFRESH_PASSED:
            conn.execute("UPDATE passed SET last = ? WHERE key = ?", (now, key))
        elif write == ADD_PENDING:
            self._write(self._add_pending, key, now)
        elif write == RESTART_PENDING:
            conn.execute("UPDATE pending SET first = ? WHERE key = ?", (now, key))
        elif write == PROMOTE:
            self._write(self._promote, network, key, now)
        return decision

    def _add_pending(self, key: bytes, now: float) -> None:
        self._conn.execute("INSERT INTO pending (key, first) VALUES (?, ?)", (key, now))
        self._rows["pending"] += 1
        self._cap("pending", self.settings.max_pending)

    def _promote(self, network: str, key: bytes, now: float) -> None:
        s = self.settings
        conn = self._conn
        cursor = conn.execute("DELETE FROM pending WHERE key = ?", (key,))
        self._rows["pending"] -= max(0, cursor.rowcount)
        self._upsert("passed", "key", key, network=network, last=now)
        if s.auto_allow == 0:
            return
        (alive,) = conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM passed WHERE network = ? AND last > ? LIMIT ?)",
            (network, now - s.expire, s.auto_allow),
        ).fetchone()
        if alive >= s.auto_allow:
            self._upsert("clients", "network", network, last=now)
            log_event(log, "greylist_auto_allow", logging.INFO, network=network)

    def _upsert(self, table: str, key_column: str, key: object, **values: object) -> None:
        """Insert or update one row of ``table``; a new row counts against the cap."""
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cursor = self._conn.execute(
            f"INSERT INTO {table} ({key_column}, {columns}) VALUES (?, {marks}) "  # noqa: S608
            f"ON CONFLICT ({key_column}) DO NOTHING",
            (key, *values.values()),
        )
        if cursor.rowcount == 1:
            self._rows[table] += 1
            self._cap(table, self.settings.max_passed)
            return
        assignments = ", ".join(f"{column} = ?" for column in values)
        self._conn.execute(
            f"UPDATE {table} SET {assignments} WHERE {key_column} = ?",  # noqa: S608
            (*values.values(), key),
        )

    def _cap(self, table: str, limit: int) -> None:
        excess = self._rows[table] - limit
        if excess <= 0:
            return
        key_column, time_column = _TABLES[table]
        cursor = self._conn.execute(
            f"DELETE FROM {table} WHERE {key_column} IN (SELECT {key_column} FROM {table}"  # noqa: S608
            f" ORDER BY {time_column}, {key_column} LIMIT ?)",
            (excess,),
        )
        removed = max(0, cursor.rowcount)
        self._rows[table] -= removed
        if table == "pending":
            self.evicted += removed
        else:
            self.evicted_passed += removed

    def _write(self, action: Callable[..., None], *args: object) -> None:
        """Run ``action`` in one transaction; row counts roll back with it."""
        conn = self._conn
        saved = (dict(self._rows), self.evicted, self.evicted_passed)
        conn.execute("BEGIN IMMEDIATE")
        try:
            action(*args)
            conn.execute("COMMIT")
        except BaseException:
            self._rows, self.evicted, self.evicted_passed = saved
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- known senders --------------------------------------------------------------

    def remember_sender(self, domain: str) -> None:
        """Remember ``domain`` as one that authenticated a delivered message.

        Call only after an *aligned* SPF or DKIM pass of a message that was
        delivered, with the authenticated domain (DKIM ``d=``, SPF MAIL FROM
        domain). ValueError (AddressError) for a malformed domain; database
        errors are logged.
        """
        name = normalize_domain(domain)
        with self._lock:
            now = self._clock()
            try:
                row = self._conn.execute(
                    "SELECT last FROM senders WHERE domain = ?", (name,)
                ).fetchone()
                if row is None or now - row[0] >= self.settings.expire:
                    self._write(self._new_sender, name, now)
                elif now - row[0] >= REFRESH_AFTER or now < row[0]:
                    self._conn.execute("UPDATE senders SET last = ? WHERE domain = ?", (now, name))
            except sqlite3.Error as exc:
                self._error("remember", exc)

    def _new_sender(self, name: str, now: float) -> None:
        # An expired entry starts over: its age counts from now again.
        self._upsert("senders", "domain", name, first=now, last=now)

    def known_sender(self, domain: str) -> bool:
        """Was ``domain`` remembered at least ``sender_min_age`` ago, and seen
        within ``expire``? False for a malformed domain or a database error."""
        try:
            name = normalize_domain(domain)
        except AddressError:
            return False
        with self._lock:
            now = self._clock()
            try:
                row = self._conn.execute(
                    "SELECT first, last FROM senders WHERE domain = ?", (name,)
                ).fetchone()
            except sqlite3.Error as exc:
                self._error("known", exc)
                return False
            known = sender_is_known(self.settings, row, now)
            if known:
                self.known += 1
            return known

    # -- erasure ------------------------------------------------------------------

    def forget(self, triplets: Iterable[tuple[str, str, str]]) -> int:
        """Remove the pending and passed entries of these (client IP, sender,
        recipient) triplets, keyed as ``check`` keys them (``estafeta user
        erase``); how many entries went. Keys are hashes, so only triplets
        the caller can name are found: entries of mail it never saw stay
        until they expire (``retry_window``, ``expire``). Deleted with
        ``secure_delete``; if any went, the file is rebuilt (VACUUM: older
        copies of the keys in free space) and its WAL truncated."""
        keys = erasure_keys(self.settings, triplets)
        removed = 0
        with self._lock:
            conn = self._conn
            conn.execute("PRAGMA secure_delete = ON")
            try:

                def delete() -> None:
                    nonlocal removed
                    for table in ("pending", "passed"):
                        for key in keys:
                            cursor = conn.execute(
                                f"DELETE FROM {table} WHERE key = ?",  # noqa: S608
                                (key,),
                            )
                            self._rows[table] -= max(0, cursor.rowcount)
                            removed += max(0, cursor.rowcount)

                self._write(delete)
                if removed:
                    conn.execute("VACUUM")
                (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute("PRAGMA secure_delete = OFF")
        if busy:
            raise sqlite3.OperationalError(f"{self.path}: the WAL is in use; run again")
        return removed

    # -- maintenance ----------------------------------------------------------------

    def _maybe_prune(self, now: float) -> None:
        self._calls += 1
        since = now - self._pruned_at
        if self._calls >= PRUNE_EVERY or since >= PRUNE_INTERVAL or since < 0:
            try:
                self._prune(now)
            except sqlite3.Error as exc:
                self._calls = 0  # not again at once: errors are logged once a run
                self._pruned_at = now
                self._error("prune", exc)

    def _error(self, op: str, exc: sqlite3.Error) -> None:
        self.errors += 1
        log_event(log, "greylist_error", logging.ERROR, op=op, error=str(exc))

    def _prune(self, now: float) -> int:
        s = self.settings
        cutoffs = {
            "pending": now - s.retry_window,
            "passed": now - s.expire,
            "clients": now - s.expire,
            "senders": now - s.expire,
        }
        removed = {table: 0 for table in _TABLES}

        def delete() -> None:
            for table, cutoff in cutoffs.items():
                key_column, time_column = _TABLES[table]
                cursor = self._conn.execute(
                    f"DELETE FROM {table} WHERE {key_column} IN (SELECT {key_column}"  # noqa: S608
                    f" FROM {table} WHERE {time_column} <= ? ORDER BY {time_column} LIMIT ?)",
                    (cutoff, PRUNE_BATCH),
                )
                removed[table] = max(0, cursor.rowcount)
                self._rows[table] -= removed[table]

        self._write(delete)
        self._calls = 0
        self._pruned_at = now
        if self.evicted > self._evicted_logged:
            # Once per run, not once per evicted row: a flood must not flood the log.
            log_event(
                log, "greylist_full", logging.WARNING,
                evicted=self.evicted - self._evicted_logged, limit=s.max_pending,
            )  # fmt: skip
            self._evicted_logged = self.evicted
        return sum(removed.values())

    def prune(self) -> int:
        """Remove one batch of expired entries now; how many (CLI, tests)."""
        with self._lock:
            return self._prune(self._clock())

    def stats(self) -> dict[str, int]:
        """The counters, and the entries of each table (``pending_entries``...)."""
        with self._lock:
            counters = self.counters()
            return counters | {f"{table}_entries": n for table, n in self._rows.items()}
