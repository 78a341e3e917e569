"""``estafeta user erase``: every kind of data an account leaves under
data_dir goes (account, aliases, second factors, mail and what ``user del``
kept, Sieve scripts and memory, filter statistics, queued mail, greylisting
entries), no file names it afterwards (SQLite free space and WAL included),
another account's data stays whole, a crash half-way is finished by running
it again, and the command confirms, refuses without a terminal, and runs
against a live server."""

from __future__ import annotations

import json
import os
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import DOMAIN, Instance, estafeta
from estafeta import cli
from estafeta.auth import Accounts
from estafeta.backup.sources import PRE_UPGRADE_DIR
from estafeta.config import Config, check_runtime, load
from estafeta.message import summarize
from estafeta.policy.greylist import Greylist
from estafeta.privacy import erase as erase_module
from estafeta.privacy.erase import EraseError, erase
from estafeta.queue.store import QueueStore
from estafeta.sieve.memory import Memory
from estafeta.sieve.scripts import ScriptStore
from estafeta.spam import JunkFilter
from estafeta.store import Store
from estafeta.store.account import Delivery

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "correct horse battery staple"
VACATION = 'require ["vacation"];\nvacation :days 1 :subject "Away" "I am away.";\n'


def inbound(recipient: str, sender: str, ip: str, subject: str) -> bytes:
    """A message as our MX stores it: Return-Path, then our Received."""
    return (
        f"Return-Path: <{sender}>\r\n"
        f"Received: from mx.remote.test ([{ip}])\r\n\tby mx.{DOMAIN} (estafeta) with ESMTPS"
        f" id Q1\r\n\tfor <{recipient}>;\r\n\tMon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"From: <{sender}>\r\nTo: undisclosed-recipients:;\r\nSubject: {subject}\r\n\r\nHi.\r\n"
    ).encode()


def mentions(data_dir: Path, address: str) -> list[str]:
    """Files under data_dir whose name or octets hold ``address``, in any case."""
    needle = address.lower().encode()
    found = []
    for path in sorted(data_dir.rglob("*")):
        named = needle in str(path.relative_to(data_dir)).lower().encode()
        if named or (path.is_file() and needle in path.read_bytes().lower()):
            found.append(str(path))
    return found


@pytest.fixture
def config(instance: Instance) -> Config:
    loaded = load(instance.config)
    check_runtime(loaded)
    return loaded


@dataclass
class World:
    config: Config
    accounts: Accounts  # left open, as a running server leaves its connection
    greylist_clock: list[float]


@pytest.fixture
def world(config: Config) -> Iterator[World]:
    """alice and bob with data of every kind; alice is the one erased."""
    accounts = Accounts(
        config.accounts_db, config.domains, hasher=config.auth.hasher(), password_policy=False
    )
    for address in (ALICE, BOB):
        accounts.add_user(address, PASSWORD)
    accounts.add_alias(f"al@{DOMAIN}", [ALICE])
    accounts.add_alias(f"chain@{DOMAIN}", [f"al@{DOMAIN}"])
    accounts.add_alias(f"mix@{DOMAIN}", [f"al@{DOMAIN}", BOB])
    accounts.add_alias(f"team@{DOMAIN}", [ALICE, BOB])
    accounts.add_alias("@other.test", [ALICE])
    accounts.app_password_create(ALICE, "phone")
    accounts.totp_enroll(ALICE)
    accounts.app_password_create(BOB, "laptop")
    at = 1_700_000_000  # login history, as the server's LoginRecorder writes it
    accounts.record_logins([(ALICE, at, "imap", "192.0.2.1", True), (BOB, at, "pop3", "", True)])
    accounts.set_retention(ALICE, "Trash", 86400)
    accounts.set_retention(BOB, "Trash", 86400)
    with Store(config.mail_dir, config.hostname) as store:
        for address in (ALICE, BOB):
            for n in range(3):
                data = inbound(address, f"ann{n}@remote.test", f"192.0.2.{n + 1}", f"m{n}")
                store.deliver_sync([Delivery(address, data, summarize(data))])
        store.create_mailbox(ALICE, "Projects/Secret")
    # What `user del` of an earlier alice kept.
    kept = config.data_dir / "deleted" / f"{ALICE}.20260101T000000" / "cur"
    kept.mkdir(parents=True)
    (kept / "1.eml").write_bytes(inbound(ALICE, "old@remote.test", "192.0.2.9", "old"))
    scripts = ScriptStore(config.sieve_dir, max_script_size=65536, max_scripts=5)
    for address in (ALICE, BOB):
        scripts.put(address, "away", VACATION)
        scripts.activate(address, "away")
    scripts.put(ALICE, "x" * 120, "keep;\n")  # a long name: hashed, with a .name file
    with Memory(config.sieve_dir / ".memory.db") as memory:
        for n in range(20):
            memory.remember(ALICE, f"vacation:h:ann{n}@remote.test", 86400)
            memory.remember(BOB, f"vacation:h:ann{n}@remote.test", 86400)
        memory.prune(now=time.time() + 10**6)  # pruned rows leave octets in free space
        memory.remember(ALICE, "duplicate:<1@remote.test>", 86400)
        memory.remember(BOB, "duplicate:<1@remote.test>", 86400)
    with JunkFilter(config.spam_dir) as junk:
        for address in (ALICE, BOB):
            junk.learn(address, inbound(address, "spam@remote.test", "192.0.2.66", "casino"), True)
            junk.allow(address, "@friends.test")
    queue = QueueStore(config.queue_dir)
    queue.enqueue(ALICE, ["x@remote.test"], b"From: <alice@example.test>\r\n\r\nsent\r\n")
    queue.enqueue(ALICE.upper(), ["y@remote.test"], b"Subject: case\r\n\r\nsent\r\n")
    queue.enqueue("", ["ann0@remote.test"], b"From: <alice@example.test>\r\nSubject: Away\r\n\r\n")
    queue.enqueue(
        "SRS0=abcd=TT=remote.test=ann1@example.test", ["fwd@remote.test"],
        b"Delivered-To: <alice@example.test>\r\nSubject: redirected\r\n\r\n",
    )  # fmt: skip
    queue.enqueue(BOB, ["z@remote.test", ALICE, "w@remote.test"], b"Subject: bob's\r\n\r\nhi\r\n")
    queue.enqueue(BOB, [ALICE], b"Subject: only her\r\n\r\nhi\r\n")
    queue.close()
    now = time.time()
    clock = [now - 1000]
    with Greylist(config.greylist_db, clock=lambda: clock[0]) as greylist:
        for ip, sender, rcpt in (
            ("192.0.2.1", "ann0@remote.test", ALICE),
            ("192.0.2.2", "ann1@remote.test", f"al@{DOMAIN}"),
            ("192.0.2.1", "ann0@remote.test", BOB),
        ):
            assert greylist.check(ip, sender, rcpt).greylisted
        clock[0] = now - 600  # past the delay: the retry passes
        assert not greylist.check("192.0.2.1", "ann0@remote.test", ALICE).greylisted
        assert not greylist.check("192.0.2.1", "ann0@remote.test", BOB).greylisted
    clock[0] = now
    yield World(config, accounts, clock)
    accounts.close()


def bob_is_whole(config: Config, accounts: Accounts) -> None:
    assert accounts.exists(BOB)
    assert [a["name"] for a in accounts.app_password_list(BOB)] == ["laptop"]
    assert len(accounts.login_history(BOB)) == 1
    assert accounts.retention_overrides(BOB) == {BOB: {"Trash": 86400}}
    with Store(config.mail_dir, config.hostname) as store:
        reader = store.reader(BOB)
    with reader:
        inbox = reader.mailbox("INBOX")
        assert inbox is not None
        contents = [reader.content(row.file) for row in reader.messages(inbox.id)]
    assert [data.split(b"Subject: ")[1][:2] for data in contents] == [b"m0", b"m1", b"m2"]
    scripts = ScriptStore(config.sieve_dir, max_script_size=65536, max_scripts=5)
    assert scripts.list(BOB) == [("away", True)]
    with Memory(config.sieve_dir / ".memory.db") as memory:
        assert memory.count(BOB) == 1
    with JunkFilter(config.spam_dir) as junk:
        assert junk.status(BOB).spam == 1 and junk.allowed(BOB) == ["@friends.test"]


def test_erase_removes_every_kind_and_leaves_bob_whole(world: World) -> None:
    config, accounts = world.config, world.accounts
    assert mentions(config.data_dir, ALICE)
    result = erase(config, ALICE, pause=0)
    assert result.problems == []
    assert result.account
    assert result.aliases_removed == ["@other.test", f"al@{DOMAIN}", f"chain@{DOMAIN}"]
    assert result.aliases_changed == [f"mix@{DOMAIN}", f"team@{DOMAIN}"]
    assert (result.queue_messages, result.queue_entries) == (4, 2)
    assert result.greylist == 2  # the passed triplet, and the pending one to the alias
    assert (result.sieve_scripts, result.sieve_memory) == (2, 1)
    assert len(result.spam_files) == 1
    assert [Path(p).name for p in result.mail] == ["alice", f"{ALICE}.20260101T000000"]
    assert result.backup and "none configured" in result.backup[0]
    assert mentions(config.data_dir, ALICE) == []
    # What stays of bob: the account, aliases to him, mail, rules, memory, filter, queue.
    assert not accounts.exists(ALICE)
    assert accounts.list_aliases() == {
        f"mix@{DOMAIN}": [f"al@{DOMAIN}", BOB],
        f"team@{DOMAIN}": [BOB],
    }
    bob_is_whole(config, accounts)
    queue = QueueStore(config.queue_dir, recover=False)
    try:
        entries = queue.entries()
    finally:
        queue.close()
    assert sorted(r for e in entries for r in e.recipients) == [
        "w@remote.test", "z@remote.test"
    ]  # fmt: skip
    assert len(list((config.queue_dir / "messages").iterdir())) == 1
    with Greylist(config.greylist_db, clock=lambda: world.greylist_clock[0]) as greylist:
        assert greylist.check("192.0.2.1", "ann0@remote.test", BOB).reason == "known"
        assert greylist.check("192.0.2.1", "ann0@remote.test", ALICE).reason == "new"
    # Idempotent: a second run finds nothing and says so.
    again = erase(config, ALICE, pause=0)
    assert not again.account and again.problems == []
    assert (again.queue_messages, again.greylist, again.sieve_scripts, again.mail) == (0, 0, 0, [])


def test_a_crash_half_way_is_finished_by_running_it_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = world.config

    def crash(self: ScriptStore, account: str) -> int:
        raise OSError("power lost")

    monkeypatch.setattr(ScriptStore, "remove_account", crash)
    with pytest.raises(EraseError, match="sieve: power lost; run the erase again") as caught:
        erase(config, ALICE, pause=0)
    assert caught.value.erasure.account and caught.value.erasure.queue_messages == 4
    assert not world.accounts.exists(ALICE)
    assert (config.mail_dir / DOMAIN / "alice").is_dir()  # later steps were not done
    monkeypatch.undo()
    result = erase(config, ALICE, pause=0)
    assert not result.account and result.problems == []
    assert result.sieve_scripts == 2 and result.mail
    assert mentions(config.data_dir, ALICE) == []
    bob_is_whole(config, world.accounts)


def test_queue_files_a_crash_left_without_rows_are_removed(world: World) -> None:
    """A crash between the queue's commit and its unlinks leaves files without
    rows: hers go at once, another's young one stays (it may be an enqueue in
    progress), an old one goes whoever's it is."""
    messages = world.config.queue_dir / "messages"
    hers = messages / "HERSHERSHERS.eml"
    hers.write_bytes(b"From: Alice <ALICE@example.test>\r\nSubject: sent\r\n\r\nhi\r\n")
    young = messages / "YOUNGYOUNGYO.eml"
    young.write_bytes(b"From: <bob@example.test>\r\n\r\nin flight\r\n")
    old = messages / "OLDOLDOLDOLD.eml"
    old.write_bytes(b"From: <bob@example.test>\r\n\r\nleft by a crash\r\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert erase(world.config, ALICE, pause=0).problems == []
    assert (hers.exists(), young.exists(), old.exists()) == (False, True, False)


def test_a_mail_folder_left_renamed_by_a_crash_is_removed(world: World) -> None:
    config = world.config
    paths = erase_module._Paths(config, ALICE)
    paths.mail.rename(paths.erasing)  # the crash came between the rename and the removal
    result = erase(config, ALICE, pause=0)
    assert not paths.erasing.exists() and result.problems == []
    assert result.greylist == 2  # the triplets were read from the renamed folder
    assert mentions(config.data_dir, ALICE) == []


def test_mail_that_comes_back_during_the_erasure_is_reported(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = world.config
    real = erase_module._backup

    def delivery_in_flight(config: Config, address: str, erasure: erase_module.Erasure) -> None:
        (config.mail_dir / DOMAIN / "alice" / "new").mkdir(parents=True)
        real(config, address, erasure)

    monkeypatch.setattr(erase_module, "_backup", delivery_in_flight)
    result = erase(config, ALICE, pause=0)
    assert len(result.problems) == 1 and "run the erase again" in result.problems[0]
    monkeypatch.undo()
    assert erase(config, ALICE, pause=0).problems == []


def snapshot(data_dir: Path, dest: Path) -> list[Path]:
    """What roles/estafeta/files/snapshot_databases.py makes: every SQLite
    database under data_dir copied with the backup API to the same relative
    path under dest, in rollback-journal mode; nothing else."""
    copied = []
    for source in sorted(data_dir.rglob("*.db")):
        if PRE_UPGRADE_DIR in source.relative_to(data_dir).parts:
            continue
        target = dest / source.relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        src, dst = sqlite3.connect(source), sqlite3.connect(target)
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        src.close()
        dst.close()
        copied.append(target)
    return copied


def test_the_pre_upgrade_copies_lose_the_account_too(world: World) -> None:
    config, accounts = world.config, world.accounts
    root = config.data_dir / PRE_UPGRADE_DIR
    copies = [root / "0.1.0-1f0e2d3c4b5a", root / "0.2.0-aaaabbbbcccc.partial"]
    for dest in copies:
        assert snapshot(config.data_dir, dest)
    with sqlite3.connect(copies[0] / "accounts.db") as db:
        secrets = [  # her password hash, TOTP secret and app password hash, as copied
            row[0]
            for query in (
                "SELECT password_hash FROM accounts WHERE address = ?",
                "SELECT secret FROM totp WHERE address = ?",
                "SELECT password_hash FROM app_passwords WHERE address = ?",
            )
            for row in db.execute(query, (ALICE,))
        ]
    db.close()
    assert len(secrets) == 3
    index = Path("mail") / DOMAIN / "alice" / "index.db"
    bob_index = Path("mail") / DOMAIN / "bob" / "index.db"
    assert all((dest / index).is_file() for dest in copies)
    bob_before = (copies[0] / bob_index).read_bytes()
    assert mentions(root, ALICE)
    result = erase(config, ALICE, pause=0)
    assert result.problems == []
    assert result.pre_upgrade == [str(dest) for dest in copies]
    assert f"pre-upgrade copy: {copies[0]}" in result.lines()
    assert result.to_json()["removed"]["pre_upgrade"] == [str(dest) for dest in copies]
    assert mentions(root, ALICE) == []  # no file name or octet names her
    for dest in copies:
        assert not (dest / index).parent.exists()
        data = (dest / "accounts.db").read_bytes()
        assert not any(secret.encode() in data for secret in secrets)
        assert not (dest / "queue" / "messages").exists()  # only databases in a copy
        with Accounts(
            dest / "accounts.db", config.domains, hasher=config.auth.hasher(),
            password_policy=False,
        ) as copy:  # fmt: skip
            assert copy.list_users() == [BOB]
            assert [a["name"] for a in copy.app_password_list(BOB)] == ["laptop"]
            assert copy.list_aliases() == accounts.list_aliases()
        assert (dest / bob_index).read_bytes() == bob_before
    again = erase(config, ALICE, pause=0)
    assert again.problems == [] and again.pre_upgrade == []
    assert mentions(root, ALICE) == []


def test_a_copy_at_another_schema_is_left_alone_and_reported(world: World) -> None:
    """Opening it would migrate it: the older release could no longer use it."""
    config = world.config
    dest = config.data_dir / PRE_UPGRADE_DIR / "0.0.9-000000000000"
    snapshot(config.data_dir, dest)
    with sqlite3.connect(dest / "accounts.db") as db:
        db.execute("PRAGMA user_version = 3")
    result = erase(config, ALICE, pause=0)
    assert len(result.problems) == 1
    assert "schema version 3" in result.problems[0] and "by hand" in result.problems[0]
    with sqlite3.connect(dest / "accounts.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT count(*) FROM accounts WHERE address = ?", (ALICE,)).fetchone()
    assert not (dest / "mail" / DOMAIN / "alice").exists()  # the rest of the copy went
    assert result.pre_upgrade == [str(dest)]


def run(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["-c", str(instance.config), "user", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_command_asks_and_refuses_without_a_terminal(
    instance: Instance,
    world: World,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out = run(instance, capsys, "erase", ALICE)
    assert code == 2 and "no terminal" in out and "--yes" in out
    assert world.accounts.exists(ALICE)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda: BOB)
    code, out = run(instance, capsys, "erase", ALICE)
    assert code == 2 and "not confirmed" in out
    assert world.accounts.exists(ALICE)
    monkeypatch.setattr("builtins.input", lambda: ALICE.upper())
    code = cli.main(["-c", str(instance.config), "user", "erase", ALICE, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cannot be undone" in captured.err
    document = json.loads(captured.out)
    assert document["address"] == ALICE and document["removed"]["account"] is True
    assert document["removed"]["sieve_scripts"] == 2 and document["problems"] == []
    assert not world.accounts.exists(ALICE)


def smtp_send(instance: Instance, sender: str, recipient: str, subject: str) -> None:
    body = f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", instance.port, timeout=30) as client:
        client.sendmail(sender, [recipient], body)


def test_erase_with_the_server_running_leaves_no_trace(server: Instance, tmp_path: Path) -> None:
    """The real command in its own process, against a running server that
    holds accounts.db, the queue, Sieve's memory and alice's index open."""
    server.cli("alias", "add", f"team@{DOMAIN}", ALICE, BOB)
    server.cli("alias", "add", f"al@{DOMAIN}", ALICE)
    server.cli("app-password", "create", ALICE, "--name", "phone")
    server.cli("totp", "enroll", ALICE)
    server.cli("spam", "allow", ALICE, "@friends.test")
    ham = tmp_path / "ham.eml"
    ham.write_bytes(b"From: <ann@remote.test>\r\nTo: <alice@example.test>\r\n\r\nlunch?\r\n")
    server.cli("spam", "train", ALICE, "--ham", str(ham))
    script = tmp_path / "away.sieve"
    script.write_text(VACATION)
    server.cli("sieve", "put", ALICE, "away", str(script), "--activate")
    smtp_send(server, "ann@remote.test", ALICE, "to alice")  # answered: a queued reply
    smtp_send(server, "ann@remote.test", BOB, "to bob")
    smtp_send(server, "carl@remote.test", f"team@{DOMAIN}", "to the team")
    deadline = time.monotonic() + 30
    while len(server.index_rows(ALICE)) < 2 or len(server.index_rows(BOB)) < 2:
        assert time.monotonic() < deadline, "mail not delivered"
        time.sleep(0.05)
    server.settled(ALICE)
    data_dir = server.data_dir
    assert mentions(data_dir, ALICE)
    result = estafeta(server.config, "user", "erase", ALICE, "--yes", "--json")
    document = json.loads(result.stdout)
    assert document["problems"] == [], document
    removed = document["removed"]
    # Two vacation replies (to ann, and to carl through the team alias): their
    # records. (The replies themselves leave the queue as soon as the runner
    # finds remote.test unreachable: the queue step is tested in-process.)
    assert removed["account"] and removed["sieve_scripts"] == 1 and removed["sieve_memory"] == 2
    assert removed["aliases_removed"] == [f"al@{DOMAIN}"]
    assert mentions(data_dir, ALICE) == []
    # bob: account, mail, alias; the server goes on serving him.
    listed = json.loads(server.cli("user", "list", "--json").stdout)
    assert [entry["address"] for entry in listed] == [BOB]
    assert json.loads(server.cli("alias", "list", "--json").stdout) == {f"team@{DOMAIN}": [BOB]}
    assert len(server.index_rows(BOB)) == 2
    smtp_send(server, "ann@remote.test", BOB, "after")
    deadline = time.monotonic() + 30
    while len(server.index_rows(BOB)) < 3:
        assert time.monotonic() < deadline, "mail to bob no longer delivered"
        time.sleep(0.05)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp_send(server, "ann@remote.test", ALICE, "after")
    assert mentions(data_dir, ALICE) == []
    assert "Traceback" not in server.log_text()
