"""One flush per delivery (estafeta.store.ingest, issue 17): the pending
table, settling, recovery at open, readers, and crash points.

The crash-point test replays a delivery run with the file system under
watch: before every write, fsync, rename, link and unlink the store makes,
it copies the account as a power loss at that moment could leave it (every
write not fsync'd cut short, every directory change not followed by an
fsync of its directory undone or not, at random), opens the copy and
checks that every delivery acknowledged by then is there exactly once,
with its bytes, and that no file in new/ or cur/ is partial.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import shutil
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import store_rows
from estafeta.message import summarize
from estafeta.store import Delivery, Store, index, ingest, maildir
from estafeta.store.account import _Job

ALICE = "alice@example.test"


def message(n: int, size: int = 300) -> bytes:
    head = f"Subject: m{n}\r\nMessage-ID: <m{n}@x.test>\r\n\r\n".encode()
    return head + (b"z" * 70 + b"\r\n") * max(1, size // 72)


def delivery(n: int, size: int = 300, mailbox: str = "INBOX") -> Delivery:
    data = message(n, size)
    return Delivery(ALICE, data, summarize(data), mailbox=mailbox, internal_date=1_700_000_000 + n)


def pending_files(account: Path) -> list[str]:
    conn = sqlite3.connect(account / "index.db")
    try:
        return [row[0] for row in conn.execute("SELECT file FROM pending ORDER BY file")]
    finally:
        conn.close()


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[Store]:
    """A store that settles only when asked."""
    with Store(tmp_path / "mail", "mx.example.test", settle_delay=3600) as store:
        yield store


def test_acknowledged_before_the_file_is_in_new(lazy: Store) -> None:
    [done] = lazy.deliver_sync([delivery(1)])
    account = lazy.account_dir(ALICE)
    assert done.file.startswith("new/")
    assert not (account / done.file).exists()
    assert (account / "tmp" / done.file[4:]).read_bytes() == message(1)
    assert pending_files(account) == [done.file]
    # Readers find it meanwhile.
    with lazy.reader(ALICE) as reader:
        assert reader.content(done.file) == message(1)
    assert maildir.read_message(account / done.file) == message(1)
    assert lazy.settle() == 1
    assert (account / done.file).read_bytes() == message(1)
    assert os.listdir(account / "tmp") == []
    assert pending_files(account) == []
    assert int((account / done.file).stat().st_mtime) == 1_700_000_001


def test_settles_by_itself(tmp_path: Path) -> None:
    with Store(tmp_path, "mx", settle_delay=0.01) as store:
        store.deliver_sync([delivery(n) for n in range(3)])
        account = store.account_dir(ALICE)
        for _ in range(500):
            if not pending_files(account):
                break
            threading.Event().wait(0.01)
        assert pending_files(account) == []
        assert len(list(maildir.scan(account))) == 3
        assert store.settled == 3


def test_large_messages_take_the_three_flushes(tmp_path: Path) -> None:
    with Store(tmp_path, "mx", settle_delay=3600, inline_max=1000) as store:
        [small, large] = store.deliver_sync([delivery(1, 300), delivery(2, 5000)])
        account = store.account_dir(ALICE)
        assert not (account / small.file).exists()
        assert (account / large.file).read_bytes() == message(2, 5000)
        assert pending_files(account) == [small.file]


def test_stop_settles_everything(tmp_path: Path) -> None:
    with Store(tmp_path, "mx", settle_delay=3600) as store:
        store.deliver_sync([delivery(n) for n in range(5)])
        account = store.account_dir(ALICE)
    assert pending_files(account) == []
    assert os.listdir(account / "tmp") == []
    assert len(list(maildir.scan(account))) == 5


def crash_copy(store: Store, target: Path) -> Path:
    """The account as a crash of the process leaves it (page cache intact)."""
    account = store.account_dir(ALICE)
    copy = target / "mail" / "example.test" / "alice"
    shutil.copytree(account, copy, ignore=shutil.ignore_patterns("index.db-shm"))
    return target / "mail"


def test_a_crash_before_settling_loses_nothing(lazy: Store, tmp_path: Path) -> None:
    done = lazy.deliver_sync([delivery(n) for n in range(4)])
    mail = crash_copy(lazy, tmp_path / "crash")
    with Store(mail, "mx") as store:
        got = {row.file: row.summary.message_id for row in store_rows(store, ALICE)}
        account = store.account_dir(ALICE)
        assert pending_files(account) == []
    assert sorted(got) == sorted(d.file for d in done)
    for n, d in enumerate(done):
        assert (account / d.file).read_bytes() == message(n)
    # The stale tmp/ files the crash left are gone; nothing else to recover.
    assert os.listdir(account / "tmp") == []


@pytest.mark.parametrize("damage", ["missing", "empty", "half"])
def test_power_loss_before_settling_is_recovered(lazy: Store, tmp_path: Path, damage: str) -> None:
    """The tmp/ files were never fsync'd: after a power loss they may be
    gone or cut short, and some may even have been renamed into new/ (a
    settling under way). The committed bytes make them whole."""
    done = lazy.deliver_sync([delivery(n) for n in range(4)])
    mail = crash_copy(lazy, tmp_path / "crash")
    account = mail / "example.test" / "alice"
    for d in done:
        tmp = account / "tmp" / d.file[4:]
        if damage == "missing":
            tmp.unlink()
        elif damage == "empty":
            tmp.write_bytes(b"")
        else:
            tmp.write_bytes(tmp.read_bytes()[:50])
    with Store(mail, "mx") as store:
        got = sorted(row.file for row in store_rows(store, ALICE))
        assert pending_files(account) == []
    assert got == sorted(d.file for d in done)
    for n, d in enumerate(done):
        assert (account / d.file).read_bytes() == message(n)


def test_a_settled_file_is_not_written_again(lazy: Store, tmp_path: Path) -> None:
    """A crash after settling, before the pending rows were deleted (or a
    deletion lost: it commits without a flush): the files stay as they are."""
    [done] = lazy.deliver_sync([delivery(1)])
    account = lazy.account_dir(ALICE)
    tmp = account / "tmp" / done.file[4:]
    durable, failed = ingest.settle([ingest.Unsynced(ALICE, account, done.file, tmp)])
    assert failed == [] and len(durable) == 1
    inode = (account / done.file).stat().st_ino
    mail = crash_copy(lazy, tmp_path / "crash")
    copy = mail / "example.test" / "alice"
    assert pending_files(copy) == [done.file]
    inode = (copy / done.file).stat().st_ino
    with Store(mail, "mx") as store:
        assert [row.file for row in store_rows(store, ALICE)] == [done.file]
    assert pending_files(copy) == []
    assert (copy / done.file).stat().st_ino == inode
    assert (copy / done.file).read_bytes() == message(1)


@pytest.mark.parametrize("works", [True, False])
def test_settling_with_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, works: bool) -> None:
    """One syncfs per file system; where it fails, one fsync per file."""
    calls: list[Path] = []
    fsyncs: list[Path] = []

    def fake_syncfs(path: Path) -> None:
        calls.append(path)
        if not works:
            raise OSError(5, "EIO")

    real = ingest._fsync_file

    def fake_fsync(path: Path) -> None:
        fsyncs.append(path)
        real(path)

    monkeypatch.setattr(ingest, "syncfs", fake_syncfs)
    monkeypatch.setattr(ingest, "_fsync_file", fake_fsync)
    with Store(tmp_path, "mx", settle_delay=3600, settle_syncfs=True) as store:
        done = store.deliver_sync([delivery(n) for n in range(3)])
        assert store.settle() == 3
        account = store.account_dir(ALICE)
    assert len(calls) == 1
    assert len(fsyncs) == (0 if works else 3)
    for n, d in enumerate(done):
        assert (account / d.file).read_bytes() == message(n)


def test_operations_on_files_settle_first(lazy: Store) -> None:
    done = lazy.deliver_sync([delivery(n) for n in range(3)])
    account = lazy.account_dir(ALICE)
    # COPY links the file: it must be in new/, and durable, first.
    result = lazy.copy(ALICE, "INBOX", [done[0].uid], "Archive")
    assert result.dest_uids == [1]
    assert pending_files(account) == []
    [archived] = store_rows(lazy, ALICE, "Archive")
    assert (account / archived.file).read_bytes() == message(0)
    more = lazy.deliver_sync([delivery(9)])
    lazy.store_flags(ALICE, "INBOX", [more[0].uid], "+", ["\\Deleted"])
    assert pending_files(account) == [more[0].file]  # flags touch no file
    assert lazy.expunge(ALICE, "INBOX") == [more[0].uid]
    assert pending_files(account) == []
    assert not (account / more[0].file).exists()
    assert not (account / "tmp" / more[0].file[4:]).exists()


def test_an_expunged_pending_message_is_not_resurrected(tmp_path: Path) -> None:
    with Store(tmp_path, "mx", settle_delay=3600) as store:
        [done] = store.deliver_sync([delivery(1)])
        account = store.account_dir(ALICE)
    # As an older crash could leave it: the pending row outlived its message.
    conn = sqlite3.connect(account / "index.db")
    conn.execute("DELETE FROM messages")
    conn.execute("INSERT INTO pending (file, data) VALUES (?, ?)", (done.file, b"x"))
    conn.commit()
    conn.close()
    (account / done.file).unlink()
    with Store(tmp_path, "mx") as store:
        assert store_rows(store, ALICE) == []
    assert pending_files(account) == []
    assert not (account / done.file).exists()


def test_a_reindex_by_another_process_keeps_pending_messages(lazy: Store) -> None:
    """``estafeta reindex`` (another Store) while the server has files in
    tmp/: they are written out under the reindex's write lock, not lost."""
    lazy.deliver_sync([delivery(1)])
    account = lazy.account_dir(ALICE)
    with Store(lazy.mail_dir, "mx") as cli:
        cli.open_index(ALICE).close()  # opened (and recovered) before the next delivery
        [late] = lazy.deliver_sync([delivery(2)])
        assert pending_files(account) == [late.file]
        assert cli.reindex(ALICE) == 2
        assert pending_files(account) == []
        assert sorted(r.summary.subject for r in store_rows(cli, ALICE)) == ["m1", "m2"]
        found = {r.summary.subject: r.file for r in store_rows(cli, ALICE)}
    assert (account / found["m2"]).read_bytes() == message(2)
    assert lazy.settle() >= 0  # the server's settling finds its tmp/ file gone: no harm
    assert sorted(maildir.read_message(account / f) for f in found.values()) == [
        message(1),
        message(2),
    ]
    assert os.listdir(account / "tmp") == []


def test_schema_6_gets_the_pending_table(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    conn = index.connect(path)
    conn.execute("DROP TABLE pending")
    conn.execute("PRAGMA user_version=6")
    conn.close()
    conn = index.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION == 13
        assert conn.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    finally:
        conn.close()


def test_schema_8_subscriptions_move_to_their_table(tmp_path: Path) -> None:
    """Version 9 keeps subscriptions as names (rfc9051:6.3.9): the
    mailboxes an older index marked subscribed are the subscriptions."""
    path = tmp_path / "index.db"
    conn = index.connect(path)
    conn.execute("DROP TABLE subscriptions")
    conn.execute("UPDATE mailboxes SET subscribed = (name IN ('INBOX', 'Sent'))")
    conn.execute("PRAGMA user_version=8")
    conn.close()
    conn = index.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION == 13
        assert index.subscriptions(conn) == ["INBOX", "Sent"]
        assert {b.name for b in index.mailboxes(conn) if b.subscribed} == {"INBOX", "Sent"}
    finally:
        conn.close()
    # A new index: its first mailboxes are subscribed.
    fresh = index.connect(tmp_path / "fresh.db")
    try:
        assert index.subscriptions(fresh) == sorted(n for n, _ in index.DEFAULT_MAILBOXES)
    finally:
        fresh.close()


def test_schema_9_makes_nothing_recent(tmp_path: Path) -> None:
    """Version 10 keeps the UIDs given out as \\Recent (rfc3501:2.3.2): an
    older index counts every message it holds as seen by a session, so an
    upgrade does not show a whole mailbox as new."""
    path = tmp_path / "index.db"
    conn = index.connect(path)
    conn.execute("ALTER TABLE mailboxes DROP COLUMN recent_uid")
    conn.execute("UPDATE mailboxes SET uidnext = 8 WHERE name = 'INBOX'")
    conn.execute("PRAGMA user_version=9")
    conn.close()
    conn = index.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION
        recent = {b.name: b.recent_uid for b in index.mailboxes(conn)}
        assert recent["INBOX"] == 7 and recent["Sent"] == 0
    finally:
        conn.close()


def test_subscriptions_are_bounded_and_checked(tmp_path: Path) -> None:
    from estafeta.store import operations

    conn = index.connect(tmp_path / "index.db")
    try:
        conn.execute("DELETE FROM subscriptions")
        operations.subscribe(conn, "inbox", True, max_subscriptions=2)  # canonical: INBOX
        operations.subscribe(conn, "Later/On", True, max_subscriptions=2)
        operations.subscribe(conn, "Later/On", True, max_subscriptions=2)  # again: no change
        with pytest.raises(operations.MailboxError) as limit:
            operations.subscribe(conn, "Third", True, max_subscriptions=2)
        assert limit.value.code == "LIMIT"
        with pytest.raises(operations.MailboxError) as bad:
            operations.subscribe(conn, "a//b", True, max_subscriptions=9)
        assert bad.value.code == "CANNOT"
        operations.subscribe(conn, "Nothing", False, max_subscriptions=2)  # not subscribed: fine
        operations.subscribe(conn, "Later/On", False, max_subscriptions=2)
        assert index.subscriptions(conn) == ["INBOX"]
    finally:
        conn.close()


def test_open_message_looks_in_tmp(tmp_path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    (tmp_path / "tmp" / "a").write_bytes(b"in tmp")
    assert maildir.read_message(tmp_path / "new" / "a") == b"in tmp"
    with pytest.raises(FileNotFoundError):
        maildir.read_message(tmp_path / "cur" / "a")  # only new/ files wait in tmp/
    with pytest.raises(FileNotFoundError):
        maildir.read_message(tmp_path / "new" / "b")


# -- crash points --------------------------------------------------------------------


class InlineExecutor(concurrent.futures.Executor):
    """Runs everything at once in the caller's thread, so that every file
    operation of the store happens in the writer thread, in order."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Any, **_: Any) -> Iterator[Any]:
        return iter(list(map(fn, *iterables)))

    def shutdown(self, wait: bool = True, **_: Any) -> None:
        pass


@dataclass
class Change:
    """A directory entry added or removed, not yet made durable by an
    fsync of its directory."""

    path: str
    added: bool
    content: bytes = b""
    durable_data: bool = True


@dataclass
class Snapshot:
    copy: Path
    acked: list[int]
    attempted: list[int]


@dataclass
class Disk:
    """What an fsync-less power loss could undo, as seen through ``os``."""

    root: str
    snapshots_dir: Path
    enabled: bool = False
    fds: dict[int, str] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)  # inodes written since their fsync
    changes: dict[str, list[Change]] = field(default_factory=dict)  # directory -> changes
    snapshots: list[Snapshot] = field(default_factory=list)
    jobs: list[tuple[int, concurrent.futures.Future[Any]]] = field(default_factory=list)
    local: threading.local = field(default_factory=threading.local)

    def mine(self, path: Any) -> str | None:
        if getattr(self.local, "busy", False):
            return None
        text = os.fsdecode(path)
        text = os.path.abspath(text)
        return text if text.startswith(self.root) and "index.db" not in text else None

    def change(self, path: str, added: bool) -> None:
        content, durable = b"", True
        if not added:
            try:
                st = os.lstat(path)
                with open(path, "rb") as handle:
                    content = handle.read()
                durable = st.st_ino not in self.dirty
            except OSError:
                return
        self.changes.setdefault(os.path.dirname(path), []).append(
            Change(path, added, content, durable)
        )

    def snapshot(self) -> None:
        if not self.enabled:
            return
        self.local.busy = True
        try:
            acked = [n for n, f in self.jobs if f.done() and f.exception() is None]
            copy = self.snapshots_dir / str(len(self.snapshots))
            account = copy / "mail" / "example.test" / "alice"
            shutil.copytree(self.root, account, ignore=shutil.ignore_patterns("index.db-shm"))
            self.damage(account, random.Random(len(self.snapshots)))
            self.snapshots.append(Snapshot(copy, acked, [n for n, _ in self.jobs]))
        finally:
            self.local.busy = False

    def damage(self, copy: Path, rng: random.Random) -> None:
        def there(path: str) -> Path:
            return copy / os.path.relpath(path, self.root)

        # Directory changes not fsync'd: each one lost, or not.
        for changes in self.changes.values():
            for change in reversed(changes):
                if rng.random() < 0.5:
                    continue
                target = there(change.path)
                if change.added:
                    target.unlink(missing_ok=True)
                elif not target.exists():
                    data = change.content
                    if not change.durable_data:
                        data = data[: rng.randrange(len(data) + 1)]
                    target.write_bytes(data)
        # Data not fsync'd: cut short anywhere (nothing, part, all of it).
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                target = there(path)
                if st.st_ino in self.dirty and target.exists() and target.stat().st_size:
                    size = target.stat().st_size
                    with open(target, "r+b") as handle:
                        handle.truncate(rng.choice([0, rng.randrange(size), size]))


def watch(monkeypatch: pytest.MonkeyPatch, disk: Disk) -> None:
    real_open, real_write, real_fsync = os.open, os.write, os.fsync
    real_close, real_rename, real_link, real_unlink = os.close, os.rename, os.link, os.unlink

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        mine = disk.mine(path)
        if mine is None:
            return real_open(path, flags, mode, dir_fd=dir_fd)
        disk.snapshot()
        new = bool(flags & os.O_CREAT) and not os.path.lexists(mine)
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        disk.fds[fd] = mine
        if new:
            disk.change(mine, added=True)
        return fd

    def fake_write(fd: int, data: Any) -> int:
        if fd in disk.fds:
            disk.snapshot()
            disk.dirty.add(os.fstat(fd).st_ino)
        return real_write(fd, data)

    def fake_fsync(fd: Any) -> None:
        path = disk.fds.get(fd) if isinstance(fd, int) else None
        if path is not None:
            disk.snapshot()
        real_fsync(fd)
        if path is not None:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                disk.changes.pop(path, None)
            else:
                disk.dirty.discard(st.st_ino)

    def fake_close(fd: int) -> None:
        disk.fds.pop(fd, None)
        real_close(fd)

    def fake_rename(src: Any, dst: Any, **kw: Any) -> None:
        a, b = disk.mine(src), disk.mine(dst)
        if a is None or b is None:
            return real_rename(src, dst, **kw)
        disk.snapshot()
        disk.change(a, added=False)
        real_rename(src, dst, **kw)
        disk.change(b, added=True)

    def fake_link(src: Any, dst: Any, **kw: Any) -> None:
        b = disk.mine(dst)
        if b is not None:
            disk.snapshot()
        real_link(src, dst, **kw)
        if b is not None:
            disk.change(b, added=True)

    def fake_unlink(path: Any, **kw: Any) -> None:
        mine = disk.mine(path)
        if mine is not None:
            disk.snapshot()
            disk.change(mine, added=False)
        real_unlink(path, **kw)

    for name, fake in [
        ("open", fake_open),
        ("write", fake_write),
        ("fsync", fake_fsync),
        ("close", fake_close),
        ("rename", fake_rename),
        ("link", fake_link),
        ("unlink", fake_unlink),
    ]:
        monkeypatch.setattr(os, name, fake)


def check_snapshot(snapshot: Snapshot, sizes: dict[int, int]) -> list[str]:
    """Problems found in a copy after the store opened it (recovery)."""
    problems: list[str] = []
    mail = snapshot.copy / "mail"
    with Store(mail, "mx") as store:
        account = store.account_dir(ALICE)
        if not (account / "index.db").exists():
            return [] if not snapshot.acked else ["no index"]
        found: dict[str, list[str]] = {}
        for box in ("INBOX", "Sent"):
            for row in store_rows(store, ALICE, box):
                found.setdefault(row.summary.message_id or "", []).append(row.file)
    for n in snapshot.acked:
        files = found.get(f"<m{n}@x.test>", [])
        if len(files) != 1:
            problems.append(f"m{n} acknowledged, indexed {len(files)} times")
    for msgid, files in found.items():
        n = int(msgid[2:].split("@")[0])
        for file in files:
            try:
                data = (account / file).read_bytes()
            except FileNotFoundError:
                problems.append(f"{msgid}: row without file {file}")
                continue
            if data != message(n, sizes[n]):
                problems.append(f"{msgid}: {file} has {len(data)} wrong bytes")
    # Nothing in new/ or cur/ is partial, indexed or not.
    for folder in (account, account / ".Sent"):
        for name in maildir.scan(folder):
            data = (folder / name).read_bytes()
            if not any(data == message(n, sizes[n]) for n in snapshot.attempted):
                problems.append(f"partial file {name} ({len(data)} octets)")
    if pending_files(account):
        problems.append("pending rows left after open")
    return problems


def run_crash_points(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inline_max: int = ingest.INLINE_MAX,
    syncfs: bool = False,
) -> tuple[int, list[str]]:
    mail = tmp_path / "mail"
    store = Store(mail, "mx", settle_delay=0, inline_max=inline_max, settle_syncfs=syncfs)
    store._pool = InlineExecutor()  # type: ignore[assignment]
    store._settler = InlineExecutor()  # type: ignore[assignment]
    disk = Disk(str(mail / "example.test" / "alice"), tmp_path / "snapshots")
    rng = random.Random(17)
    sizes: dict[int, int] = {}
    with store:
        store.deliver_sync([delivery(0)])  # the account and its folders exist
        store.settle()
        sizes[0] = 300
        disk.jobs.append((0, _done()))
        watch(monkeypatch, disk)
        real_syncfs = ingest.syncfs

        def watched_syncfs(path: Path) -> None:
            disk.snapshot()
            real_syncfs(path)
            disk.dirty.clear()  # everything on the file system is durable now
            disk.changes.clear()

        monkeypatch.setattr(ingest, "syncfs", watched_syncfs)
        disk.enabled = True
        n = 1
        for burst in range(8):
            futures = []
            for _ in range(rng.choice((1, 1, 3))):
                size = rng.choice((300, 2000, 6000))
                sizes[n] = size
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                box = "Sent" if rng.random() < 0.2 else "INBOX"
                disk.jobs.append((n, future))
                store._submit(_Job(future, deliveries=[delivery(n, size, box)]))
                futures.append(future)
                n += 1
            for future in futures:
                future.result()
            if burst == 5:
                store.settle()
        disk.enabled = False
        monkeypatch.undo()
    problems: list[str] = []
    for snapshot in disk.snapshots:
        problems += [
            f"crash point {snapshot.copy.name}: {p}" for p in check_snapshot(snapshot, sizes)
        ]
    return len(disk.snapshots), problems


def _done() -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(None)
    return future


@pytest.mark.slow
def test_power_loss_at_every_crash_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    points, problems = run_crash_points(tmp_path, monkeypatch)
    assert points > 50
    assert problems == []


@pytest.mark.slow
@pytest.mark.skipif(ingest._SYNCFS is None, reason="no syncfs(2) here")
def test_power_loss_at_every_crash_point_settling_with_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    points, problems = run_crash_points(tmp_path, monkeypatch, syncfs=True)
    assert points > 50
    assert problems == []


@pytest.mark.slow
def test_power_loss_at_every_crash_point_three_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the path of large messages (three flushes)."""
    points, problems = run_crash_points(tmp_path, monkeypatch, inline_max=1000)
    assert points > 50
    assert problems == []


def _careless_settle(entries: list[ingest.Unsynced], *_: Any) -> Any:
    for entry in entries:  # renamed into new/ before any fsync
        os.rename(entry.tmp_path, entry.final_path)
    return list(entries), []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "broken", "symptom"),
    [
        ("settle", _careless_settle, "wrong bytes"),
        ("add_pending", lambda conn, rows: list(rows), "row without file"),
    ],
)
def test_crash_points_catch_a_broken_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, broken: Any, symptom: str
) -> None:
    """The check has teeth: a settling that renames before the fsync, or a
    commit without the bytes, loses or mangles acknowledged mail."""
    monkeypatch.setattr(ingest, name, broken)
    _, problems = run_crash_points(tmp_path, monkeypatch)
    assert any(symptom in p for p in problems)
