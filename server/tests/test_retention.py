"""Retention (issue 18 §3): ``[retention]``, the ``saved`` column (index
version 8), expiry through the store's expunge path, the commands, and a
running server whose selected IMAP session sees the EXPUNGE."""

from __future__ import annotations

import asyncio
import imaplib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest

from conftest import DOMAIN, PASSWORD, InProcess, Instance, estafeta, free_port
from estafeta import retention
from estafeta.auth import Accounts
from estafeta.config import ConfigError, load
from estafeta.config_retention import RetentionConfig, format_duration, parse_duration
from estafeta.message import summarize
from estafeta.retention import next_start, run, targets
from estafeta.store import Delivery, Mailbox, Store, index, maildir

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
DAY = 86_400
YEAR = 365 * DAY
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: <x@remote.test>\r\n\r\nbody\r\n".encode()


def put(
    store: Store, address: str, mailbox: str, *subjects: str, date: float | None = None
) -> list[int]:
    deliveries = [
        Delivery(address, message(s), summarize(message(s)), mailbox=mailbox, internal_date=date)
        for s in subjects
    ]
    return [d.uid for d in store.deliver_sync(deliveries)]


def rows(store: Store, address: str, mailbox: str) -> list[tuple[int, int, int]]:
    """(uid, internal date, saved) of each message of a mailbox."""
    conn = store.open_index(address)
    try:
        box = index.mailbox(conn, mailbox)
        assert box is not None
        return [
            (int(uid), int(date), int(saved))
            for uid, date, saved in conn.execute(
                "SELECT uid, internal_date, saved FROM messages WHERE mailbox_id = ? ORDER BY uid",
                (box.id,),
            )
        ]
    finally:
        conn.close()


def age(store: Store, address: str, mailbox: str, seconds: int) -> None:
    """Make every message of a mailbox look saved ``seconds`` earlier."""
    conn = store.open_index(address)
    try:
        box = index.mailbox(conn, mailbox)
        assert box is not None
        conn.execute(
            "UPDATE messages SET saved = saved - ? WHERE mailbox_id = ?", (seconds, box.id)
        )
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "mail", "mx.example.test") as s:
        yield s


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
        db.add_user(BOB, PASSWORD)
        yield db


# -- configuration ---------------------------------------------------------------------

BASE = f'hostname = "mx.{DOMAIN}"\ndata_dir = "data"\ndomains = ["{DOMAIN}"]\n'


def load_text(tmp_path: Path, text: str) -> RetentionConfig:
    path = tmp_path / "estafeta.toml"
    path.write_text(BASE + text)
    return load(path).retention


def test_the_example_configuration(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        "[retention]\n"
        'mailboxes = { Trash = "30d", Junk = "2w", Archive = "0" }\n'
        'login_history = "90d"\n'
        'truncate_client_ip = "7d"\n'
        "hour = 3\n",
    )
    assert settings == RetentionConfig(
        mailboxes={"Trash": 30 * DAY, "Junk": 14 * DAY, "Archive": 0},
        login_history=90 * DAY,
        truncate_client_ip=7 * DAY,
        hour=3,
    )
    assert load_text(tmp_path, "") == RetentionConfig()  # no section: keep mail, 90d/7d


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mailboxes = { Trash = 30 }", "retention.mailboxes.Trash"),
        ('mailboxes = { Trash = "30x" }', "retention.mailboxes.Trash"),
        ('login_history = "-1d"', "retention.login_history"),
        ("hour = 24", "retention.hour"),
        ('hours = "4"', "retention.hours"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, f"[retention]\n{text}\n")
    assert caught.value.key == key


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30d", "12h", "2w", "90m", "45s", "0", 0, "keep")] == [
        30 * DAY,
        12 * 3600,
        14 * DAY,
        5400,
        45,
        0,
        0,
        0,
    ]
    for bad in ("30", 30, "d", "1.5d", "", True, "200000w"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert [format_duration(s) for s in (0, 30 * DAY, 14 * DAY, 3600, 90, 61)] == [
        "keep",
        "30d",
        "2w",
        "1h",
        "90s",
        "61s",
    ]


def test_the_daily_start() -> None:
    now = time.mktime((2026, 12, 4, 10, 0, 0, 0, 0, -1))
    assert next_start(now, 4, 0) == time.mktime((2026, 12, 5, 4, 0, 0, 0, 0, -1))
    assert next_start(now, 11, 600) == time.mktime((2026, 12, 4, 11, 10, 0, 0, 0, -1))
    end_of_month = time.mktime((2026, 12, 31, 23, 0, 0, 0, 0, -1))
    assert next_start(end_of_month, 4, 0) == time.mktime((2027, 1, 1, 4, 0, 0, 0, 0, -1))


# -- which mailbox a rule names ---------------------------------------------------------


def box(name: str, special: str | None = None) -> Mailbox:
    return Mailbox(1, name, name, 1, 1, 1, special, True)


def test_a_role_names_the_special_use_mailbox_first() -> None:
    boxes = [box("INBOX"), box("Trash"), box("Deleted Items", "\\Trash"), box("Spam", "\\Junk")]
    assert targets(boxes, {"Trash": DAY, "Junk": 2 * DAY, "Lists/old": DAY}) == [
        ("Deleted Items", "Trash", DAY),
        ("Spam", "Junk", 2 * DAY),
    ]
    # Without the attribute, the name; a name of another mailbox also works.
    assert targets([box("INBOX"), box("Trash")], {"trash": DAY}) == []
    assert targets([box("INBOX"), box("Trash")], {"Trash": DAY}) == [("Trash", "Trash", DAY)]
    assert targets([box("INBOX")], {"inbox": DAY}) == [("INBOX", "inbox", DAY)]


def test_several_rules_for_one_mailbox_keep_mail_longest() -> None:
    boxes = [box("Deleted Items", "\\Trash")]
    assert targets(boxes, {"Trash": DAY, "Deleted Items": 3 * DAY}) == [
        ("Deleted Items", "Deleted Items", 3 * DAY)
    ]
    assert targets(boxes, {"Trash": 0, "Deleted Items": 3 * DAY}) == [("Deleted Items", "Trash", 0)]


# -- the saved column -------------------------------------------------------------------


def test_saved_is_when_it_came_into_the_mailbox(store: Store) -> None:
    old = time.time() - YEAR
    [uid] = put(store, ALICE, "INBOX", "a year old", date=old)
    before = time.time()
    [(_, date, saved)] = rows(store, ALICE, "INBOX")
    assert date == int(old) and abs(saved - before) < 5  # delivery: now
    store.create_mailbox(ALICE, "Keep")
    store.copy(ALICE, "INBOX", [uid], "Keep")
    store.copy(ALICE, "INBOX", [uid], "Trash", move=True)
    for mailbox in ("Keep", "Trash"):
        [(_, date, saved)] = rows(store, ALICE, mailbox)
        assert date == int(old) and abs(saved - before) < 5  # rfc9051:6.4.7 kept the date

    delivered = asyncio.run(store.append(ALICE, "Junk", message("appended"), internal_date=old))
    assert delivered.uid == 1
    [(_, date, saved)] = rows(store, ALICE, "Junk")
    assert date == int(old) and abs(saved - before) < 5
    asyncio.run(store.append(ALICE, "Junk", message("quota"), internal_date=old, quota=10**9))
    assert all(abs(s - before) < 5 for _, _, s in rows(store, ALICE, "Junk"))


def test_reindex_keeps_saved(store: Store) -> None:
    put(store, ALICE, "Trash", "x", date=time.time() - YEAR)
    age(store, ALICE, "Trash", 40 * DAY)
    [(_, _, saved)] = rows(store, ALICE, "Trash")
    store.reindex(ALICE)
    assert [s for _, _, s in rows(store, ALICE, "Trash")] == [saved]


def test_an_older_index_gets_saved_from_the_file_names(store: Store, tmp_path: Path) -> None:
    year_ago = time.time() - YEAR
    put(store, ALICE, "INBOX", "moved", date=year_ago)
    store.copy(ALICE, "INBOX", [1], "Trash", move=True)
    put(store, ALICE, "Junk", "other tool", date=year_ago)
    store.stop()
    account = tmp_path / "mail" / DOMAIN / "alice"
    path = account / "index.db"
    # A file another Maildir tool named (no time in it), and a version 7 index.
    conn = index.connect(path)
    of_box = (
        "SELECT file FROM messages WHERE mailbox_id = (SELECT id FROM mailboxes WHERE name = ?)"
    )
    [(junk_file,)] = conn.execute(of_box, ("Junk",)).fetchall()
    renamed = junk_file.rsplit("/", 1)[0] + "/fromtool"
    os.rename(account / junk_file, account / renamed)
    conn.execute("UPDATE messages SET file = ? WHERE file = ?", (renamed, junk_file))
    [(trash_file,)] = conn.execute(of_box, ("Trash",)).fetchall()
    conn.execute("ALTER TABLE messages DROP COLUMN saved")
    conn.execute("PRAGMA user_version=7")
    conn.close()
    conn = index.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION == 13
        saved = dict(conn.execute("SELECT file, saved FROM messages").fetchall())
    finally:
        conn.close()
    # The time of the MOVE's link, not the year-old internal date...
    assert saved[trash_file] == maildir.sort_key(trash_file.rsplit("/", 1)[1])[0]
    assert abs(saved[trash_file] - time.time()) < 60
    # ...and the internal date where the name has no time.
    assert saved[renamed] == int(year_ago)


# -- expiry ------------------------------------------------------------------------------


def test_a_year_old_message_moved_to_trash_stays_its_days(
    store: Store, accounts: Accounts, tmp_path: Path
) -> None:
    settings = RetentionConfig(mailboxes={"Trash": 30 * DAY})
    put(store, ALICE, "INBOX", "old", "older", date=time.time() - YEAR)
    store.copy(ALICE, "INBOX", [1, 2], "Trash", move=True)
    now = int(time.time())
    report = run(settings, accounts, store, now=now + DAY)
    assert report.messages == 0 and len(rows(store, ALICE, "Trash")) == 2
    dry = run(settings, accounts, store, now=now + 31 * DAY, dry_run=True)
    assert [(e.address, e.mailbox, e.messages) for e in dry.expired] == [(ALICE, "Trash", 2)]
    assert len(rows(store, ALICE, "Trash")) == 2  # a dry run changes nothing
    trash = store.account_dir(ALICE) / ".Trash"
    assert len(list(maildir.scan(trash))) == 2
    counted = retention.EXPUNGED._value.get()
    report = run(settings, accounts, store, now=now + 31 * DAY)
    assert [(e.mailbox, e.rule, e.seconds, e.messages) for e in report.expired] == [
        ("Trash", "Trash", 30 * DAY, 2)
    ]
    assert retention.EXPUNGED._value.get() == counted + 2
    assert rows(store, ALICE, "Trash") == []
    assert list(maildir.scan(trash)) == []  # the files went after the commit
    conn = store.open_index(ALICE)
    try:  # rfc7162:3.2.10: recorded for VANISHED (EARLIER)
        trash_box = index.mailbox(conn, "Trash")
        assert trash_box is not None
        expunged = conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? ORDER BY uid", (trash_box.id,)
        ).fetchall()
        assert expunged == [(1,), (2,)]
        assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 0
    finally:
        conn.close()


def test_expiry_goes_in_batches_and_deliveries_go_between(store: Store, accounts: Accounts) -> None:
    put(store, ALICE, "Junk", *[f"m{n}" for n in range(23)])
    age(store, ALICE, "Junk", 10 * DAY)
    calls: list[int] = []
    real = store.expire

    def expire(address: str, mailbox: str, saved_before: int, limit: int) -> list[int]:
        removed = real(address, mailbox, saved_before, limit)
        calls.append(len(removed))
        put(store, ALICE, "Junk", f"new{len(calls)}")  # a delivery between two batches
        return removed

    store.expire = expire  # type: ignore[method-assign]
    report = run(
        RetentionConfig(mailboxes={"Junk": DAY}), accounts, store, now=int(time.time()), batch=10
    )
    assert calls == [10, 10, 3]
    assert report.messages == 23
    assert [uid for uid, _, _ in rows(store, ALICE, "Junk")] == [24, 25, 26]  # the new ones stay


def test_an_account_may_keep_longer_or_shorter(store: Store, accounts: Accounts) -> None:
    for address in (ALICE, BOB):
        put(store, address, "Trash", "t")
        put(store, address, "Archive", "a")
        age(store, address, "Trash", 10 * DAY)
        age(store, address, "Archive", 10 * DAY)
    accounts.set_retention(ALICE, "Trash", 0)  # alice keeps her Trash
    accounts.set_retention(BOB, "Archive", 5 * DAY)  # bob's Archive goes too
    settings = RetentionConfig(mailboxes={"Trash": 7 * DAY})
    report = run(settings, accounts, store, now=int(time.time()))
    assert sorted((e.address, e.mailbox) for e in report.expired) == [
        (BOB, "Archive"),
        (BOB, "Trash"),
    ]
    assert len(rows(store, ALICE, "Trash")) == 1
    accounts.set_retention(ALICE, "Trash", None)  # back to the configuration's
    assert [e.address for e in run(settings, accounts, store, now=int(time.time())).expired] == [
        ALICE
    ]


def test_login_history_is_pruned_and_truncated(store: Store, accounts: Accounts) -> None:
    now = int(time.time())
    accounts.record_logins(
        [
            (ALICE, now - 100 * DAY, "imap", "192.0.2.1", True),
            (ALICE, now - 10 * DAY, "imap", "2001:db8:aa:bb::1", False),
            (ALICE, now - 60, "smtp", "192.0.2.1", True),
        ]
    )
    settings = RetentionConfig(login_history=90 * DAY, truncate_client_ip=7 * DAY)
    dry = run(settings, accounts, store, now=now, dry_run=True)
    assert (dry.login_rows, dry.clients) == (1, 2)
    deleted = retention.LOGIN_ROWS_DELETED._value.get()
    report = run(settings, accounts, store, now=now)
    assert (report.login_rows, report.clients) == (1, 1)  # the old one went first
    assert retention.LOGIN_ROWS_DELETED._value.get() == deleted + 1
    assert [r.client for r in accounts.login_history(ALICE)] == ["192.0.2.1", "2001:db8:aa::/48"]


# -- the commands ------------------------------------------------------------------------


def cli_instance(tmp_path: Path) -> Instance:
    instance = Instance(
        tmp_path,
        free_port(),
        extra_config='[retention]\nmailboxes = { Trash = "30d", Junk = "30d" }\n',
    )
    instance.write_config()
    instance.add_user(ALICE)
    instance.add_user(BOB)
    return instance


def test_user_retention_shows_and_sets(tmp_path: Path) -> None:
    instance = cli_instance(tmp_path)
    shown = json.loads(instance.cli("user", "retention", ALICE, "--json").stdout)
    assert shown["mailboxes"] == {
        "Trash": {"seconds": 30 * DAY, "source": "config"},
        "Junk": {"seconds": 30 * DAY, "source": "config"},
    }
    assert shown["login_history"] == 90 * DAY
    out = instance.cli("user", "retention", ALICE, "Junk=7d", "Archive=keep").stdout
    lines = [line.split() for line in out.splitlines()]
    assert ["Junk", "1w", "(account)"] in lines and ["Archive", "keep", "(account)"] in lines
    assert ["Trash", "30d", "(config)"] in lines
    shown = json.loads(instance.cli("user", "retention", ALICE, "Junk=default", "--json").stdout)
    assert shown["mailboxes"]["Junk"] == {"seconds": 30 * DAY, "source": "config"}
    assert shown["mailboxes"]["Archive"] == {"seconds": 0, "source": "account"}
    bad = estafeta(instance.config, "user", "retention", ALICE, "Junk=30", check=False)
    assert bad.returncode == 2 and "Junk" in bad.stderr
    missing = estafeta(instance.config, "user", "retention", f"nobody@{DOMAIN}", check=False)
    assert missing.returncode == 2


# It makes and ages the mail through the local store's index; on a cluster,
# test_the_server_expunges_trash... runs the same rules on the node's store.
@pytest.mark.local_store
def test_retention_run_from_the_command_line(tmp_path: Path) -> None:
    instance = cli_instance(tmp_path)
    with Store(instance.data_dir / "mail", "mx.example.test") as store:
        put(store, ALICE, "Trash", "old", "old too")
        put(store, BOB, "Junk", "old spam")
        put(store, BOB, "Junk", "new spam")
        age(store, ALICE, "Trash", 40 * DAY)
        conn = store.open_index(BOB)
        conn.execute("UPDATE messages SET saved = saved - ? WHERE uid = 1", (40 * DAY,))
        conn.close()
    dry = json.loads(instance.cli("retention", "run", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["messages"] == 3
    assert {(e["address"], e["mailbox"], e["messages"]) for e in dry["expunged"]} == {
        (ALICE, "Trash", 2),
        (BOB, "Junk", 1),
    }
    out = instance.cli("retention", "run").stdout
    assert f"{ALICE} Trash: expunged 2 messages" in out
    assert f"{BOB} Junk: expunged 1 messages" in out
    with Store(instance.data_dir / "mail", "mx.example.test") as store:
        assert rows(store, ALICE, "Trash") == []
        assert [uid for uid, _, _ in rows(store, BOB, "Junk")] == [2]
    again = json.loads(instance.cli("retention", "run", "--json").stdout)
    assert again["messages"] == 0


# -- a running server ----------------------------------------------------------------


def test_the_server_expunges_trash_and_a_selected_session_sees_it(tmp_path: Path) -> None:
    instance = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        auth_config="allow_plaintext = true\n",
        extra_config='[retention]\nmailboxes = { Trash = "30d" }\n'
        'login_history = "90d"\ntruncate_client_ip = "7d"\n',
    )
    instance.write_config()
    instance.add_user(ALICE)
    with InProcess(instance.config) as running:
        instance.in_process = True
        server, loop = running.server, running.loop
        assert server is not None and loop is not None

        def retention_at(offset: int) -> int:
            server.retention.clock = lambda: time.time() + offset  # type: ignore[method-assign]
            future = asyncio.run_coroutine_threadsafe(server.retention.run_now(), loop)
            return future.result(60).messages

        mover = imaplib.IMAP4("127.0.0.1", instance.imap_port, timeout=30)
        watcher = imaplib.IMAP4("127.0.0.1", instance.imap_port, timeout=30)
        try:
            mover.login(ALICE, PASSWORD)
            year_ago = imaplib.Time2Internaldate(time.time() - YEAR)
            assert mover.append("INBOX", None, year_ago, message("a year old"))[0] == "OK"
            mover.select("INBOX")
            assert mover.uid("MOVE", "1", "Trash")[0] == "OK"  # rfc9051:6.4.8
            watcher.login(ALICE, PASSWORD)
            assert watcher.select("Trash") == ("OK", [b"1"])

            def history() -> list[tuple[str, str, bool]]:
                with Accounts(instance.data_dir / "accounts.db", [DOMAIN]) as accounts:
                    return [(r.protocol, r.client, r.ok) for r in accounts.login_history(ALICE)]

            deadline = time.monotonic() + 10
            while len(history()) < 2:  # written by the server within a second
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert history() == [("imap", "127.0.0.1", True)] * 2

            assert retention_at(DAY) == 0  # tonight: it came into Trash today
            watcher.noop()
            assert watcher.response("EXPUNGE") == ("EXPUNGE", [None])
            assert retention_at(31 * DAY) == 1
            assert watcher.noop()[0] == "OK"
            assert watcher.response("EXPUNGE") == ("EXPUNGE", [b"1"])  # rfc9051:7.5.1
            assert watcher.select("Trash") == ("OK", [b"0"])
            # Our record of the client address is its /24 after 7 days.
            assert history() == [("imap", "127.0.0.0/24", True)] * 2
        finally:
            for client in (mover, watcher):
                client.logout()
        assert instance.message_count(ALICE, "Trash") == 0
