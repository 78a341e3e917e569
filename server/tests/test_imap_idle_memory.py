"""IDLE at scale (issue 17): what an idle IMAP connection costs, and that
the lean IDLE still tells everything.

An idle connection keeps one task (the session's, waiting in its read: no
read task, no change task, no asyncio.wait), no asyncio.Event, and a view
of its mailbox shared with the other sessions idling on the same mailbox
in the same state (``selected.Snapshot``, copy on write). Tests here:

- sessions over a real store (a fake writer): EXISTS, FETCH FLAGS,
  EXPUNGE and VANISHED reach every idle session of a mailbox, each told
  its own way (CONDSTORE, QRESYNC); views are shared while idle, copied
  before a change, joined again after; DONE, the autologout timer, the
  client leaving, a client's data arriving with a change, a real
  cancellation; the read between commands keeps its timeouts;
- a real server on loopback: the tasks and snapshots 400 idle connections
  make, and the memory they take (tracemalloc), within a bound that a lost
  optimisation would break; the server raises its open files limit.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _fakeio import FakeWriter
from _ports import free_port

from estafeta import config as config_module
from estafeta import server as server_module
from estafeta.auth import Accounts
from estafeta.imap import recent
from estafeta.imap import selected as selected_module
from estafeta.imap.parser import Command, Parser
from estafeta.imap.session import AUTHENTICATED, LOGOUT, NOT_AUTHENTICATED, Session, Settings
from estafeta.message import summarize
from estafeta.server import Server
from estafeta.store import Delivery, Store

ALICE = "alice@example.test"
PASSWORD = "correct horse battery staple"


def message(n: int) -> bytes:
    return b"Subject: message %d\r\nFrom: a@remote.test\r\n\r\nbody %d\r\n" % (n, n)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        s.deliver_sync([Delivery(ALICE, message(n), summarize(message(n))) for n in range(5)])
        # As if a session had seen them: none is \Recent (rfc3501:2.3.2), so
        # every IMAP4rev1 session here is told the same.
        s.claim_recent(ALICE, 1, 5)
        yield s


def command(line: bytes) -> Command:
    parser = Parser()
    parser.set_authenticated(True)
    parser.receive_data(line + b"\r\n")
    event = parser.next_event()
    assert isinstance(event, Command), event
    return event


def open_session(store: Store, settings: Settings | None = None) -> tuple[Session, FakeWriter]:
    writer = FakeWriter()
    session = Session(
        asyncio.StreamReader(),
        writer,  # type: ignore[arg-type]
        accounts=None,  # type: ignore[arg-type]
        authenticator=None,  # type: ignore[arg-type]
        store=store,
        settings=settings or Settings("mx.example.test"),
        tls=None,
        implicit_tls=False,
    )
    session.state = AUTHENTICATED
    session.user = ALICE
    session.parser.set_authenticated(True)
    session.index_reader = store.shared_reader(ALICE)
    return session, writer


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.005)


class Idler:
    """A session in IDLE on INBOX, its output, its IDLE command's task."""

    def __init__(self, store: Store, *enable: bytes, settings: Settings | None = None) -> None:
        self.session, self.writer = open_session(store, settings)
        self.enable = enable
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Idler:
        for capability in self.enable:
            await self.session._dispatch(command(b"e ENABLE " + capability))
        await self.session._dispatch(command(b"s SELECT INBOX"))
        assert b"s OK" in self.writer.take()
        self.task = asyncio.create_task(self.session._dispatch(command(b"i IDLE")))
        await until(lambda: b"+ idling" in self.writer.data)
        self.writer.take()
        return self

    async def told(self, *parts: bytes) -> bytes:
        await until(lambda: all(p in self.writer.data for p in parts))
        return self.writer.take()

    async def done(self) -> bytes:
        assert self.task is not None
        self.session.reader.feed_data(b"DONE\r\n")
        await asyncio.wait_for(self.task, 5)
        return self.writer.take()

    @property
    def view(self) -> selected_module.Selected:
        assert self.session.selected is not None
        return self.session.selected


def test_idle_sessions_share_one_view_and_hear_every_change(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def count_copies() -> list[int]:
        copies = [0]
        own = selected_module.Selected._own

        def counting(view: selected_module.Selected) -> None:
            copies[0] += view.snapshot is not None
            own(view)

        monkeypatch.setattr(selected_module.Selected, "_own", counting)
        return copies

    async def main() -> None:
        idlers = [await Idler(store).start() for _ in range(3)]
        # One snapshot for the three: the same lists and maps.
        snapshot = idlers[0].view.snapshot
        assert snapshot is not None
        assert all(i.view.snapshot is snapshot for i in idlers)
        assert all(i.view.flags is snapshot.flags for i in idlers)

        copies = count_copies()
        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [2], "+", ["\\Flagged"])
        for idler in idlers:
            told = await idler.told(b"FETCH")
            assert told == b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n"
        # The first session copied the view and changed it; the others took
        # its result (Selected.step), copying nothing.
        assert copies == [1]
        # Taken once, then shared again: the old snapshot was not changed.
        assert snapshot.flags[2] == ()
        after = idlers[0].view.snapshot
        assert after is not None and after is not snapshot
        assert all(i.view.snapshot is after for i in idlers)
        assert after.flags[2] == ("\\Flagged",)

        await store.append(ALICE, "INBOX", message(99))
        told = [await idler.told(b"EXISTS") for idler in idlers]
        # The first session to hear of it takes it as \Recent (rfc3501:2.3.2).
        assert sorted(told) == [b"* 6 EXISTS\r\n"] * 2 + [b"* 6 EXISTS\r\n* 1 RECENT\r\n"]
        assert len({id(i.view.snapshot) for i in idlers}) == 1
        assert idlers[0].view.uids == [1, 2, 3, 4, 5, 6]

        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [1, 3], "+", ["\\Deleted"])
        await asyncio.to_thread(store.expunge, ALICE, "INBOX")
        for idler in idlers:
            told = await idler.told(b"3 EXPUNGE", b"1 EXPUNGE")
            assert told.endswith(b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n"), told
        assert all(i.view.uids == [2, 4, 5, 6] for i in idlers)
        assert len({id(i.view.snapshot) for i in idlers}) == 1

        for idler in idlers:
            assert await idler.done() == b"i OK IDLE terminated\r\n"
        # Out of IDLE a session changes its own view only (copy on write).
        first = idlers[0]
        await first.session._dispatch(command(b"f STORE 1 +FLAGS (\\Seen)"))
        assert b"* 1 FETCH (UID 2 FLAGS (\\Flagged \\Seen))" in first.writer.take()
        assert first.view.snapshot is None
        assert idlers[1].view.flags[2] == ("\\Flagged",)
        await idlers[1].session._dispatch(command(b"n NOOP"))
        assert b"* 1 FETCH (UID 2 FLAGS (\\Flagged \\Seen))" in idlers[1].writer.take()

    asyncio.run(main())


def test_each_idle_session_is_told_its_own_way(store: Store) -> None:
    """CONDSTORE adds MODSEQ, QRESYNC says VANISHED: sessions told
    differently do not take each other's step."""

    async def main() -> None:
        plain = await Idler(store).start()
        condstore = await Idler(store, b"CONDSTORE").start()
        qresync = await Idler(store, b"QRESYNC").start()
        plain2 = await Idler(store).start()
        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [4], "+", ["\\Answered"])
        for idler in (plain, plain2):
            assert await idler.told(b"FETCH") == b"* 4 FETCH (UID 4 FLAGS (\\Answered))\r\n"
        for idler in (condstore, qresync):
            told = await idler.told(b"FETCH")
            assert told.startswith(b"* 4 FETCH (UID 4 FLAGS (\\Answered) MODSEQ (")
        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [5], "+", ["\\Deleted"])
        await asyncio.to_thread(store.expunge, ALICE, "INBOX")
        assert (await qresync.told(b"VANISHED")).endswith(b"* VANISHED 5\r\n")
        for idler in (plain, condstore, plain2):
            assert (await idler.told(b"EXPUNGE")).endswith(b"* 5 EXPUNGE\r\n")
        for idler in (plain, condstore, qresync, plain2):
            assert idler.view.uids == [1, 2, 3, 4]
            await idler.done()

    asyncio.run(main())


def test_idle_ends_at_the_autologout_timer(store: Store) -> None:
    async def main() -> None:
        idler = await Idler(store, settings=Settings("mx.example.test", idle_timeout=0.2)).start()
        assert idler.task is not None
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(idler.task, 5)
        # Nothing left behind: no waiting task, no watcher.
        assert idler.session._waiting is None
        assert not store.changes._listeners

    asyncio.run(main())


def test_a_change_and_the_clients_data_at_once(store: Store) -> None:
    """DONE that arrives with a change: the change is told, DONE is not lost."""

    async def main() -> None:
        idler = await Idler(store).start()
        # A change committed and DONE arriving in the same turn of the loop.
        idler.session.reader.feed_data(b"DONE\r\n")
        idler.session._on_change()
        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [1], "+", ["\\Seen"])
        assert idler.task is not None
        await asyncio.wait_for(idler.task, 5)
        told = idler.writer.take()
        assert told.endswith(b"i OK IDLE terminated\r\n"), told
        await idler.session._dispatch(command(b"n NOOP"))
        # Told once: in IDLE if the commit came before the IDLE task woke
        # (the thread may win that race), else at the next command.
        told += idler.writer.take()
        assert told.count(b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n") == 1, told
        assert told.endswith(b"n OK NOOP completed\r\n"), told

    asyncio.run(main())


def test_a_cancellation_from_elsewhere_still_cancels(store: Store) -> None:
    async def main() -> None:
        idler = await Idler(store).start()
        assert idler.task is not None
        await asyncio.sleep(0.01)
        idler.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await idler.task
        assert not store.changes._listeners

    asyncio.run(main())


def test_a_stale_snapshot_is_not_taken(store: Store) -> None:
    """Views of one mailbox at one modseq join only with equal contents."""

    async def main() -> None:
        first = await Idler(store).start()
        second, _ = open_session(store)
        await second._dispatch(command(b"s SELECT INBOX"))
        view = second.selected
        assert view is not None
        view.flags[1] = ("\\Flagged",)  # as if it had been told something else
        view.share(ALICE)
        assert view.snapshot is not None and view.snapshot is not first.view.snapshot
        assert first.view.flags[1] == ()
        await first.done()

    asyncio.run(main())


def test_a_large_change_is_worked_out_by_each_session(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selected_module, "STEP_LIMIT", 0)

    async def main() -> None:
        idlers = [await Idler(store).start() for _ in range(2)]
        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [3], "+", ["\\Seen"])
        for idler in idlers:
            assert await idler.told(b"FETCH") == b"* 3 FETCH (UID 3 FLAGS (\\Seen))\r\n"
            await idler.done()
        # Not remembered, but shared again all the same (compared).
        snapshot = idlers[0].view.snapshot
        assert snapshot is not None and snapshot.next is None
        assert idlers[1].view.snapshot is snapshot

    asyncio.run(main())


def run_session(store: Store, settings: Settings, state: int) -> tuple[Session, FakeWriter]:
    session, writer = open_session(store, settings)
    session.state = state
    return session, writer


def test_the_read_between_commands_keeps_its_timeouts(store: Store) -> None:
    """Before login, the login deadline; after, the autologout timer
    (rfc9051:5.4); the client's commands and its going away in between."""

    async def main() -> None:
        settings = Settings("mx.example.test", login_timeout=0.2, idle_timeout=0.3)
        session, writer = run_session(store, settings, NOT_AUTHENTICATED)
        await asyncio.wait_for(session.run(), 5)
        assert writer.data.endswith(b"* BYE Autologout; not logged in in time\r\n")
        assert writer.transport.closing

        session, writer = run_session(store, settings, AUTHENTICATED)
        session.reader.feed_data(b"a NOOP\r\n")
        await asyncio.wait_for(session.run(), 5)
        assert b"a OK NOOP completed\r\n" in writer.data
        assert writer.data.endswith(b"* BYE Autologout; idle for too long\r\n")

        session, writer = run_session(store, Settings("mx.example.test"), AUTHENTICATED)
        run = asyncio.create_task(session.run())
        await until(lambda: b"* OK" in writer.data)
        session.reader.feed_data(b"a NOOP\r\n")
        await until(lambda: b"a OK" in writer.data)
        session.reader.feed_eof()
        await asyncio.wait_for(run, 5)
        assert session._waiting is None

        session, writer = run_session(store, Settings("mx.example.test"), AUTHENTICATED)
        run = asyncio.create_task(session.run())
        await until(lambda: b"* OK" in writer.data)
        session.reader.set_exception(ConnectionResetError())
        await asyncio.wait_for(run, 5)
        assert writer.transport.closing

    asyncio.run(main())


def test_idle_ends_when_the_client_goes(store: Store) -> None:
    async def main() -> None:
        idler = await Idler(store).start()
        idler.session.reader.feed_eof()
        assert idler.task is not None
        await asyncio.wait_for(idler.task, 5)
        assert idler.session.state == LOGOUT
        assert not store.changes._listeners

    asyncio.run(main())


def test_the_server_raises_its_open_files_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, free_port(), 0)
    limits: list[tuple[int, int]] = []
    monkeypatch.setattr(server_module.resource, "getrlimit", lambda _which: (1024, 4096))
    monkeypatch.setattr(
        server_module.resource, "setrlimit", lambda _which, value: limits.append(value)
    )
    with caplog.at_level("WARNING", "estafeta"):
        assert server_module.raise_open_files(config) == 4096
    assert limits == [(4096, 4096)]
    assert "open_files_limit" not in caplog.text  # 2,000 connections fit

    def refuse(_which: int, _value: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(server_module.resource, "setrlimit", refuse)
    with caplog.at_level("WARNING", "estafeta"):
        assert server_module.raise_open_files(config) == 1024
    assert "open_files_limit" in caplog.text


# -- a real server: tasks and memory of idle connections ----------------------------


def write_config(root: Path, port: int, accounts: int) -> config_module.Config:
    path = root / "estafeta.toml"
    path.write_text(
        f'hostname = "mx.example.test"\ndata_dir = "{root / "data"}"\n'
        'domains = ["example.test"]\n'
        f'[listen]\nimap = ["127.0.0.1:{port}"]\n'
        '[limits]\nmax_connections = 2000\n[log]\nlevel = "warning"\n'
        "[auth]\nallow_plaintext = true\nargon2_time_cost = 1\nargon2_memory_cost = 1024\n"
        'argon2_parallelism = 1\nexempt = ["127.0.0.0/8"]\n'
    )
    config = config_module.load(path)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with Accounts(config.accounts_db, config.domains, hasher=config.auth.hasher()) as users:
        for n in range(accounts):
            users.add_user(f"idle{n}@example.test", PASSWORD)
    with Store(config.mail_dir, "mx.example.test") as mail:
        for n in range(accounts):
            address = f"idle{n}@example.test"
            mail.deliver_sync(
                [Delivery(address, message(m), summarize(message(m))) for m in range(10)]
            )
    return config


def open_idle(port: int, count: int, accounts: int, into: list[socket.socket]) -> None:
    """In a thread: ``count`` connections that LOGIN, SELECT INBOX, IDLE."""
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        into.append(sock)
        with sock.makefile("rb") as lines:
            lines.readline()
            user = f"idle{n % accounts}@example.test"
            sock.sendall(f'a LOGIN {user} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
            while not (line := lines.readline()).startswith(b"+ "):
                assert line and not line.startswith((b"a NO", b"b NO", b"c BAD")), line


CONNECTIONS = 400
ACCOUNTS = 6
# Python objects one idle connection keeps on the server (tracemalloc), all
# included: transport, stream reader and writer, protocol, task, session,
# parser, timer, its share of the views. It was 14 KiB with a read task, a
# change task and asyncio.wait per IDLE, an asyncio.Event per session and a
# view per session (issue 17), then about 8 KiB. It grew to 10.1-10.3 KiB
# when the session passed 30 attributes: its __dict__ stopped sharing keys
# (1.5 KiB each). With __slots__ it is 8.8 KiB (2026-12-06, Python 3.11.7,
# 400 connections).
TRACED_PER_CONNECTION = 10 * 1024


def test_idle_connections_cost_one_task_and_share_their_views(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, ACCOUNTS)
    socks: list[socket.socket] = []

    async def main() -> None:
        server = Server(config)
        await server.start()
        try:
            # A few first: what the first connections allocate once
            # (caches, pools, an account's reader) is not per connection.
            await open_in_thread(port, ACCOUNTS * 2, socks)
            await asyncio.sleep(0.2)
            # The first SELECT of each INBOX took its messages as \Recent;
            # the claims written, no task but the sessions' is left.
            await recent.claims(server.store).drain()
            gc.collect()
            tasks_before = len(asyncio.all_tasks())
            tracemalloc.start(1)
            try:
                before = tracemalloc.take_snapshot()
                await open_in_thread(port, CONNECTIONS, socks)
                await until(lambda: len(server._imap_sessions) == len(socks))
                await asyncio.sleep(0.2)
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            # One task per connection, the session's own.
            assert len(asyncio.all_tasks()) - tasks_before == CONNECTIONS
            sessions = list(server._imap_sessions)
            assert all(s._waiting is not None for s in sessions)
            views = [s.selected for s in sessions if s.selected is not None]
            assert len(views) == len(sessions)
            snapshots = {id(v.snapshot) for v in views if v.snapshot is not None}
            assert len(snapshots) == ACCOUNTS and all(v.snapshot for v in views)
            # The server's allocations: the client's (this thread's sockets,
            # the test) are left out.
            server_side = [
                tracemalloc.Filter(False, __file__),
                tracemalloc.Filter(False, "*/socket.py"),
                tracemalloc.Filter(False, "*/threading.py"),
                tracemalloc.Filter(False, tracemalloc.__file__),
            ]
            grown = after.filter_traces(server_side).compare_to(
                before.filter_traces(server_side), "filename"
            )
            per_connection = sum(d.size_diff for d in grown) / CONNECTIONS
            assert per_connection < TRACED_PER_CONNECTION, (per_connection, grown[:10])
        finally:
            for sock in socks:
                sock.close()
            await server.stop()

    asyncio.run(main())


async def open_in_thread(port: int, count: int, socks: list[socket.socket]) -> None:
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            open_idle(port, count, ACCOUNTS, socks)
        except BaseException as exc:  # handed to the test
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    await until(done.is_set, within=120)
    thread.join()
    if failure:
        raise failure[0]
