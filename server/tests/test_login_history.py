"""The login history (issue 18 §3): accounts.db schema 4, the buffered
recorder behind Authenticator, truncation and pruning, and a real server."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import argon2
import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port
from estafeta.auth import Accounts, logins
from estafeta.auth import accounts as accounts_module
from estafeta.auth.guard import Authenticator, GuardPolicy, LoginGuard
from estafeta.auth.logins import LoginRecord, LoginRecorder

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
        db.add_user(BOB, PASSWORD)
        yield db


class Counting:
    """A LoginWriter that counts its transactions and may hold the first one."""

    def __init__(self, accounts: Accounts, hold: threading.Event | None = None) -> None:
        self.accounts = accounts
        self.hold = hold
        self.calls: list[int] = []
        self.entered = threading.Event()

    def record_logins(self, records: Sequence[tuple[str, int, str, str, bool]]) -> int:
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        self.calls.append(len(records))
        return self.accounts.record_logins(records)


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_version_3_database_gets_the_login_history(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    conn = sqlite3.connect(path)
    for migration in accounts_module._MIGRATIONS[:3]:
        migration(conn)
    conn.execute(
        "INSERT INTO accounts (address, password_hash, created) VALUES (?, ?, 0)",
        (ALICE, CHEAP.hash(PASSWORD)),
    )
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    with Accounts(path, [DOMAIN], hasher=CHEAP) as db:
        assert db.login_history(ALICE) == []
        assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE
        assert db.record_logins([(ALICE, 100, "imap", "192.0.2.1", True)]) == 1
        assert db.login_history(ALICE) == [LoginRecord(100, "imap", "192.0.2.1", True)]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (8,)
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(logins)")}
        assert {"logins_by_address", "logins_by_time", "logins_untruncated"} <= indexes
    finally:
        conn.close()
    assert accounts_module.schema_version() == 8


def test_records_of_accounts_only_newest_first(accounts: Accounts) -> None:
    clock = iter(range(1000, 2000))
    recorder = LoginRecorder(accounts, clock=lambda: next(clock))
    recorder.record(ALICE, "imap", "192.0.2.7", True)
    recorder.record(ALICE, "smtp", "::ffff:198.51.100.9", False)
    recorder.record(f"nobody@{DOMAIN}", "imap", "192.0.2.7", False)  # not an account
    recorder.record("not an address", "pop3", "192.0.2.7", False)
    recorder.record(BOB, "sieve", "2001:db8::1%eth0", True)
    recorder.record(BOB, "gopher", "192.0.2.7", True)  # not a protocol
    recorder.close()
    assert accounts.login_history(ALICE) == [
        LoginRecord(1001, "smtp", "198.51.100.9", False),
        LoginRecord(1000, "imap", "192.0.2.7", True),
    ]
    assert accounts.login_history(BOB) == [LoginRecord(1004, "sieve", "2001:db8::1", True)]
    assert accounts.login_history(f"nobody@{DOMAIN}") == []
    assert recorder.written == 3
    recorder.record(ALICE, "imap", "192.0.2.7", True)  # after close: ignored
    assert len(accounts.login_history(ALICE)) == 2


def test_one_transaction_per_interval_not_per_login(accounts: Accounts) -> None:
    writer = Counting(accounts)
    # An interval far longer than 200 records and the 0.2 s sleep take,
    # even on a loaded machine.
    recorder = LoginRecorder(writer, interval=2.0)
    recorder.record(ALICE, "imap", "192.0.2.1", True)
    wait_for(lambda: writer.calls == [1])  # the first one at once
    for n in range(200):
        recorder.record(ALICE if n % 2 else BOB, "imap", f"192.0.2.{n % 250}", False)
    time.sleep(0.2)
    assert writer.calls == [1]  # the others wait for the interval
    wait_for(lambda: len(writer.calls) == 2)
    assert writer.calls == [1, 200]
    recorder.close()
    assert len(accounts.login_history(ALICE)) == 101
    assert len(accounts.login_history(BOB)) == 100


def test_overflow_drops_the_oldest_and_counts_them(accounts: Accounts) -> None:
    hold = threading.Event()
    writer = Counting(accounts, hold)
    recorder = LoginRecorder(writer, interval=0.0, max_waiting=10)
    before = logins.DROPPED.labels("overflow")._value.get()
    recorder.record(ALICE, "imap", "192.0.2.1", True)
    assert writer.entered.wait(10)  # the thread is stuck in that write
    for n in range(15):
        recorder.record(BOB, "pop3", f"192.0.2.{n}", False)
    assert recorder.dropped == 5
    assert logins.DROPPED.labels("overflow")._value.get() == before + 5
    hold.set()
    recorder.close()
    clients = {r.client for r in accounts.login_history(BOB)}
    assert clients == {f"192.0.2.{n}" for n in range(5, 15)}  # the newest 10


def test_flush_waits_for_the_batch_the_thread_is_writing(accounts: Accounts) -> None:
    hold = threading.Event()
    writer = Counting(accounts, hold)
    recorder = LoginRecorder(writer, interval=0.0)
    recorder.record(ALICE, "web", "192.0.2.7", True)
    assert writer.entered.wait(10)  # the thread took the record and is writing it
    flushed = threading.Event()
    flusher = threading.Thread(target=lambda: (recorder.flush(), flushed.set()))
    flusher.start()
    assert not flushed.wait(0.3)  # nothing waits, but the write is not done
    hold.set()
    assert flushed.wait(10)
    flusher.join()
    assert [r.protocol for r in accounts.login_history(ALICE)] == ["web"]
    recorder.close()


def test_a_failed_write_costs_records_not_logins(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def record_logins(self, records: Sequence[tuple[str, int, str, str, bool]]) -> int:
            raise sqlite3.OperationalError("database is locked")

    recorder = LoginRecorder(Broken())
    recorder.record(ALICE, "imap", "192.0.2.1", True)
    recorder.close()
    assert recorder.dropped == 1
    assert "login_history_failed" in caplog.text


def test_each_account_keeps_its_newest_rows(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logins, "KEEP_PER_ACCOUNT", 5)
    accounts.record_logins([(ALICE, at, "imap", "192.0.2.1", True) for at in range(1, 9)])
    accounts.record_logins([(BOB, 50, "imap", "192.0.2.1", True)])
    assert [r.at for r in accounts.login_history(ALICE)] == [8, 7, 6, 5, 4]
    accounts.record_logins([(ALICE, 9, "pop3", "192.0.2.1", False)])
    assert [r.at for r in accounts.login_history(ALICE)] == [9, 8, 7, 6, 5]
    assert [r.at for r in accounts.login_history(BOB)] == [50]


def test_forget_and_delete_user(accounts: Accounts) -> None:
    accounts.record_logins([(ALICE, at, "imap", "192.0.2.1", True) for at in range(3)])
    accounts.record_logins([(BOB, 1, "imap", "192.0.2.1", True)])
    accounts.set_retention(BOB, "Trash", 86400)
    assert accounts.forget_logins(ALICE) == 3
    assert accounts.forget_logins(ALICE) == 0
    assert accounts.login_history(ALICE) == []
    accounts.delete_user(BOB)
    assert accounts.forget_logins(BOB) == 0  # delete_user took them
    assert accounts.retention_overrides() == {}


def test_truncation_and_pruning(accounts: Accounts) -> None:
    accounts.record_logins(
        [
            (ALICE, 100, "imap", "192.0.2.77", True),
            (ALICE, 200, "smtp", "2001:db8:1:2:3:4:5:6", False),
            (ALICE, 300, "pop3", "", True),  # not an IP address: nothing to cut
            (ALICE, 5000, "imap", "198.51.100.4", True),
        ]
    )
    assert accounts.truncate_login_clients(1000, dry_run=True) == 2
    assert accounts.truncate_login_clients(1000) == 2
    assert accounts.truncate_login_clients(1000) == 0  # done once: not read again
    assert [r.client for r in accounts.login_history(ALICE)] == [
        "198.51.100.4",
        "",
        "2001:db8:1::/48",
        "192.0.2.0/24",
    ]
    assert accounts.prune_logins(250, dry_run=True) == 2
    assert len(accounts.login_history(ALICE)) == 4
    assert accounts.prune_logins(250) == 2
    assert [r.at for r in accounts.login_history(ALICE)] == [5000, 300]


def test_pruning_goes_in_batches(accounts: Accounts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logins, "BATCH", 7)
    accounts.record_logins([(ALICE, at, "imap", f"192.0.2.{at}", True) for at in range(20)])
    accounts.record_logins([(BOB, at, "imap", f"192.0.2.{at}", True) for at in range(20)])
    assert accounts.truncate_login_clients(15) == 30
    assert accounts.prune_logins(10) == 20
    assert len(accounts.login_history(ALICE)) == 10


def test_authenticator_records_every_decided_attempt(accounts: Accounts) -> None:
    async def no_sleep(_: float) -> None:
        return None

    async def scenario() -> None:
        recorder = LoginRecorder(accounts)
        guard = LoginGuard(GuardPolicy(pair_max_failures=2, delay_base=0.0))
        auth = Authenticator(accounts, guard, sleep=no_sleep, history=recorder)
        assert (await auth.login(ALICE, PASSWORD, "imap", "192.0.2.1")).ok
        assert not (await auth.login(BOB, "wrong", "pop3", "192.0.2.2")).ok
        assert not (await auth.login(f"nobody@{DOMAIN}", "x", "smtp", "192.0.2.3")).ok
        assert not (await auth.login(BOB, "wrong", "pop3", "192.0.2.2")).ok  # pair locked now
        locked = await auth.login(BOB, PASSWORD, "pop3", "192.0.2.2")
        assert locked.locked
        await auth.close()  # writes what waits

    asyncio.run(scenario())
    assert [(r.protocol, r.client, r.ok) for r in accounts.login_history(ALICE)] == [
        ("imap", "192.0.2.1", True)
    ]
    assert [(r.protocol, r.ok) for r in accounts.login_history(BOB)] == [("pop3", False)] * 3


# -- a real server ---------------------------------------------------------------------


def test_an_imap_login_is_recorded_by_the_server(tmp_path: Path) -> None:
    instance = Instance(
        tmp_path, free_port(), imap_port=free_port(), auth_config="allow_plaintext = true\n"
    )
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    try:
        with imaplib.IMAP4("127.0.0.1", instance.imap_port, timeout=30) as client:
            client.login(ALICE, PASSWORD)
            client.logout()
        with (
            imaplib.IMAP4("127.0.0.1", instance.imap_port, timeout=30) as client,
            pytest.raises(imaplib.IMAP4.error),
        ):
            client.login(ALICE, "not the password")
        db = instance.data_dir / "accounts.db"

        def rows() -> list[LoginRecord]:
            with Accounts(db, [DOMAIN]) as accounts:
                return accounts.login_history(ALICE)

        wait_for(lambda: len(rows()) == 2)  # written within a second or so
    finally:
        assert instance.stop() == 0
    assert [(r.protocol, r.client, r.ok) for r in rows()] == [
        ("imap", "127.0.0.1", False),
        ("imap", "127.0.0.1", True),
    ]
    assert abs(rows()[0].at - time.time()) < 60


def test_the_server_writes_waiting_records_when_it_stops(tmp_path: Path) -> None:
    instance = Instance(
        tmp_path, free_port(), pop3_port=free_port(), auth_config="allow_plaintext = true\n"
    )
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    for _ in range(2):  # the first is written at once, the second a second later
        client = poplib.POP3("127.0.0.1", instance.pop3_port, timeout=30)
        client.user(ALICE)
        client.pass_(PASSWORD)
        client.quit()
    assert instance.stop() == 0  # SIGTERM at once: the second is still waiting
    with Accounts(instance.data_dir / "accounts.db", [DOMAIN]) as accounts:
        assert [(r.protocol, r.ok) for r in accounts.login_history(ALICE)] == [("pop3", True)] * 2
