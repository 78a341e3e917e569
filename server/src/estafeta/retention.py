"""Retention (issue 18 §3): old mail out of Trash and Junk, old login
history out of ``accounts.db``, client addresses cut to their network.

What goes, once a day (``[retention]``, estafeta.config_retention):

* messages that have been in a mailbox a rule names for longer than the
  rule's duration, counted from when they were saved into it (``saved`` in
  the index, estafeta.store.index version 8), never from the internal date,
  which COPY and MOVE keep (rfc9051:6.4.7, rfc9051:6.4.8): a year-old
  message moved to Trash today stays the full 30 days. Rules are the
  configuration's ``mailboxes`` merged with the account's own (``estafeta
  user retention``; the account's win for the same key). A key that is a
  special-use role (rfc6154:2) names the mailbox with that attribute, else
  a mailbox of that name; when several keys name one mailbox, the rule that
  keeps mail longest wins (0, keep forever, beats any duration).
* login history rows older than ``login_history``;
* client addresses older than ``truncate_client_ip`` in the login history,
  cut to IPv4 /24, IPv6 /48 (estafeta.auth.logins.truncate_client).

Crash ordering: messages go through the store's own expunge path
(``Store.expire``): one transaction of at most ``EXPIRE_BATCH`` messages
that deletes the rows, records them for VANISHED (rfc7162:3.2.10) and
journals their files; the files are unlinked after the commit (the journal
finishes that after a crash); IMAP sessions are told after the commit and
report EXPUNGE or VANISHED where they may (rfc9051:7.5.1). Each batch is a
job of the store's writer thread of its own, so deliveries queued meanwhile
go in between: one batch is the longest a delivery waits. A run that
stops half-way (server stop, crash) leaves a consistent store; the next run
takes what is left. Login rows go in transactions of 5,000.

The server runs it daily at ``hour`` (local time) plus a random delay of up
to 30 minutes (``RetentionRunner``); ``estafeta retention run`` runs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from estafeta import metrics
from estafeta.auth import Accounts
from estafeta.config_retention import ROLES, RetentionConfig, format_duration, rule_key
from estafeta.log import log_event
from estafeta.store import Mailbox, Store, StoreError
from estafeta.store.names import MailboxError, canonical

log = logging.getLogger("estafeta.retention")

EXPIRE_BATCH = 500  # messages per store transaction
START_SPREAD = 30 * 60.0  # seconds of random delay after the configured hour

EXPUNGED = Counter(
    "estafeta_retention_expunged_total",
    "Messages expunged by [retention] (older than their mailbox's rule).",
    registry=metrics.REGISTRY,
)
LOGIN_ROWS_DELETED = Counter(
    "estafeta_retention_login_rows_deleted_total",
    "Login history rows deleted by [retention] login_history.",
    registry=metrics.REGISTRY,
)
CLIENTS_TRUNCATED = Counter(
    "estafeta_retention_clients_truncated_total",
    "Client addresses in the login history cut to /24 or /48 by [retention] truncate_client_ip.",
    registry=metrics.REGISTRY,
)


@dataclass(frozen=True)
class Expiry:
    """What one rule took (or would take) from one mailbox."""

    address: str
    mailbox: str
    rule: str  # the key that named it: a role or a mailbox name
    seconds: int
    messages: int


@dataclass
class Report:
    dry_run: bool
    expired: list[Expiry] = field(default_factory=list)
    login_rows: int = 0  # deleted (or that would be)
    clients: int = 0  # truncated (or that would be)
    problems: list[str] = field(default_factory=list)
    stopped: bool = False  # the server stopped before the run was done

    @property
    def messages(self) -> int:
        return sum(e.messages for e in self.expired)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "expunged": [
                {
                    "address": e.address,
                    "mailbox": e.mailbox,
                    "rule": e.rule,
                    "seconds": e.seconds,
                    "messages": e.messages,
                }
                for e in self.expired
            ],
            "messages": self.messages,
            "login_rows_deleted": self.login_rows,
            "clients_truncated": self.clients,
            "problems": list(self.problems),
        }


def effective(settings: RetentionConfig, own: Mapping[str, int]) -> dict[str, int]:
    """An account's rules: the configuration's, then its own (same key: its own)."""
    return {key: seconds for key, (seconds, _) in sources(settings, own).items()}


def sources(settings: RetentionConfig, own: Mapping[str, int]) -> dict[str, tuple[int, str]]:
    """An account's rules with where each comes from: "config" or "account"."""
    rules = {rule_key(key): (seconds, "config") for key, seconds in settings.mailboxes.items()}
    rules.update({rule_key(key): (seconds, "account") for key, seconds in own.items()})
    return rules


def _role(key: str) -> str | None:
    """The special-use attribute a key names ("trash" -> "\\Trash"), or None."""
    role = rule_key(key)
    return "\\" + role if role in ROLES else None


def targets(mailboxes: Sequence[Mailbox], rules: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """(mailbox name, rule key, seconds) of each mailbox a rule names,
    sorted by name; the special-use attribute first, then the name."""
    by_use = {box.special_use: box for box in mailboxes if box.special_use}
    by_name = {box.name: box for box in mailboxes}
    chosen: dict[str, tuple[str, int]] = {}
    for key, seconds in rules.items():
        role = _role(key)
        box = by_use.get(role) if role is not None else None
        if box is None:
            box = by_name.get(key) or by_name.get(canonical(key))
        if box is None:
            continue
        held = chosen.get(box.name)
        # Several keys for one mailbox: the one that keeps mail longest.
        if held is None or (held[1] != 0 and (seconds == 0 or seconds > held[1])):
            chosen[box.name] = (key, seconds)
    return [(name, key, seconds) for name, (key, seconds) in sorted(chosen.items())]


def run(
    settings: RetentionConfig,
    accounts: Accounts,
    store: Store,
    *,
    now: int,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    batch: int = EXPIRE_BATCH,
) -> Report:
    """Apply retention once (``dry_run``: only count). Blocking: the store's
    writer thread does the work, this thread waits for each batch."""
    report = Report(dry_run)
    overrides = accounts.retention_overrides()
    for address in accounts.list_users():
        if stop is not None and stop.is_set():
            report.stopped = True
            return report
        rules = effective(settings, overrides.get(address, {}))
        if not any(rules.values()) or not store.account_dir(address).is_dir():
            continue  # nothing to expire, or never had mail
        try:
            _account(store, address, rules, now, dry_run, stop, batch, report)
        except (StoreError, MailboxError, OSError) as exc:
            report.problems.append(f"{address}: {exc}")
            log_event(log, "retention_failed", logging.WARNING, account=address, error=str(exc))
    if stop is not None and stop.is_set():
        report.stopped = True
        return report
    if settings.login_history:
        report.login_rows = accounts.prune_logins(now - settings.login_history, dry_run=dry_run)
    if settings.truncate_client_ip:
        report.clients = accounts.truncate_login_clients(
            now - settings.truncate_client_ip, dry_run=dry_run
        )
    if not dry_run:
        LOGIN_ROWS_DELETED.inc(report.login_rows)
        CLIENTS_TRUNCATED.inc(report.clients)
    return report


def _account(
    store: Store,
    address: str,
    rules: Mapping[str, int],
    now: int,
    dry_run: bool,
    stop: threading.Event | None,
    batch: int,
    report: Report,
) -> None:
    with store.reader(address) as reader:
        mailboxes = reader.mailboxes()
    for name, key, seconds in targets(mailboxes, rules):
        if seconds == 0:
            continue
        cutoff = now - seconds
        if dry_run:
            count = store.count_expired(address, name, cutoff)
        else:
            count = 0
            while stop is None or not stop.is_set():
                done = len(store.expire(address, name, cutoff, batch))
                count += done
                EXPUNGED.inc(done)
                if done < batch:
                    break
        if count:
            report.expired.append(Expiry(address, name, key, seconds, count))
            if not dry_run:
                log_event(
                    log, "retention_expunged", account=address, mailbox=name, messages=count,
                    older_than=format_duration(seconds),
                )  # fmt: skip


def next_start(now: float, hour: int, spread: float) -> float:
    """The next ``hour``:00 local time after ``now``, plus ``spread`` seconds."""
    tm = time.localtime(now)
    start = time.mktime((tm.tm_year, tm.tm_mon, tm.tm_mday, hour, 0, 0, 0, 0, -1))
    if start <= now:  # mktime carries day 32 into the next month
        start = time.mktime((tm.tm_year, tm.tm_mon, tm.tm_mday + 1, hour, 0, 0, 0, 0, -1))
    return start + spread


class RetentionRunner:
    """The server's daily run: ``start`` in the server's loop, ``stop``
    before the store stops (a run in progress ends after its current batch)."""

    def __init__(
        self,
        settings: RetentionConfig,
        accounts: Accounts,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        spread: Callable[[], float] = lambda: random.uniform(0, START_SPREAD),
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.store = store
        self.clock = clock
        self.spread = spread
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._current: asyncio.Future[Report] | None = None
        self.last: Report | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._daily())

    async def run_now(self, *, dry_run: bool = False) -> Report:
        """One run, in a thread (one at a time); its report."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._current = asyncio.ensure_future(
                asyncio.to_thread(
                    run,
                    self.settings,
                    self.accounts,
                    self.store,
                    now=int(self.clock()),
                    dry_run=dry_run,
                    stop=self._stop,
                )
            )
            try:
                report = await asyncio.shield(self._current)
            finally:
                self._current = None
        if not dry_run:
            self.last = report
            log_event(
                log, "retention", messages=report.messages, login_rows=report.login_rows,
                clients=report.clients, problems=len(report.problems), stopped=report.stopped,
            )  # fmt: skip
        return report

    async def stop(self) -> None:
        self._stop.set()
        current = self._current
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if current is not None:
            with contextlib.suppress(Exception):
                await current  # ends after its current batch

    async def _daily(self) -> None:
        while True:
            now = self.clock()
            await asyncio.sleep(max(0.0, next_start(now, self.settings.hour, self.spread()) - now))
            try:
                await self.run_now()
            except Exception as exc:  # sqlite3.Error, AccountError...: try again tomorrow
                log_event(log, "retention_failed", logging.ERROR, error=str(exc))
