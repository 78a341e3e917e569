"""SQLite replicas of PostgreSQL scopes (estafeta.cluster.replica): two
nodes write one account's index in turn and at once against a real
PostgreSQL 15; failed, crashed and pruned cases rebuild the replica."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.cluster import replica as replica_module
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.replica import Replica
from estafeta.cluster.settings import DatabaseConfig
from estafeta.message import summarize
from estafeta.store import index, operations

INDEX_TABLES = (
    "mailboxes", "messages", "expunged", "meta", "subscriptions", "acl", "viewers", "private_seen",
)  # fmt: skip
SCOPE = "ana@example.test"


@pytest.fixture
def db(database: DatabaseConfig, ioloop: IoLoop) -> Iterator[Database]:
    node = Database(database)
    ioloop.run(node.open())
    yield node
    ioloop.run(node.close())


def make_node(root: Path, ioloop: IoLoop, db: Database) -> Replica:
    root.mkdir(parents=True, exist_ok=True)
    return Replica(ioloop, db, SCOPE, index.connect(root / "index.db"), INDEX_TABLES)


def message(n: int) -> index.NewMessage:
    data = f"From: a@example.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n".encode()
    return index.NewMessage(f"new/m{n}", len(data), 1700000000 + n, [], summarize(data))


def deliver(node: Replica, mailbox: str, count: int, start: int = 0) -> list[int]:
    def run() -> list[int]:
        with operations.transaction(node.conn):
            return index.add_messages(
                node.conn, mailbox, [message(start + i) for i in range(count)]
            )

    return node.write(run)


def rows(node: Replica, mailbox: str = "INBOX") -> list[tuple[int, str, int]]:
    box = index.mailbox(node.conn, mailbox)
    assert box is not None
    return [
        (int(r[0]), str(r[1]), int(r[2]))
        for r in node.conn.execute(
            "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? ORDER BY uid", (box.id,)
        )
    ]


def test_two_nodes_write_in_turn(tmp_path: Path, ioloop: IoLoop, db: Database) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    b = make_node(tmp_path / "b", ioloop, db)
    assert deliver(a, "INBOX", 3) == [1, 2, 3]  # the first write seeds the scope
    # b's own new index had other UIDVALIDITYs: it takes a's.
    assert b.sync()
    assert index.mailbox(b.conn, "INBOX") == index.mailbox(a.conn, "INBOX")
    assert [r[0] for r in rows(b)] == [1, 2, 3]

    b.write(lambda: operations.store_flags(b.conn, "INBOX", [2], "+", ["\\Seen"]))
    b.write(lambda: operations.create_mailbox(b.conn, tmp_path / "b", "Work/2026"))
    a.sync()
    assert rows(a) == rows(b)
    assert rows(a)[1][1] == "\\Seen"
    assert index.mailbox(a.conn, "Work/2026") is not None
    assert index.mailbox(a.conn, "Work") is not None  # the superior CREATE made

    a.write(lambda: operations.expunge(a.conn, tmp_path / "a", "INBOX", [1, 3], only_deleted=False))
    b.sync()
    assert [r[0] for r in rows(b)] == [2]
    box = index.mailbox(b.conn, "INBOX")
    assert box is not None
    # rfc7162:3.2.10 VANISHED (EARLIER) on b needs a's expunged records.
    assert index.mailbox(a.conn, "INBOX") == box
    assert sorted(
        r[0] for r in b.conn.execute("SELECT uid FROM expunged WHERE mailbox_id = ?", (box.id,))
    ) == [1, 3]
    assert not b.sync()  # nothing new: one query, no transaction


def test_ten_writes_at_once_from_two_nodes(tmp_path: Path, ioloop: IoLoop, db: Database) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    b = make_node(tmp_path / "b", ioloop, db)
    deliver(a, "INBOX", 1)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def writer(name: str, node: Replica) -> None:
        for i in range(10):
            got[name] += deliver(node, "INBOX", 1, start=100 * (name == "b") + 10 + i)

    threads = [threading.Thread(target=writer, args=(n, r)) for n, r in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every UID given once, in the order the writes took the scope's lock.
    assert sorted(got["a"] + got["b"]) == list(range(2, 22))
    a.sync()
    b.sync()
    assert rows(a) == rows(b)
    assert len({r[2] for r in rows(a)}) == 21  # one modseq per write
    assert a.version == b.version == 21


def test_a_failed_operation_changes_nothing(tmp_path: Path, ioloop: IoLoop, db: Database) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    deliver(a, "INBOX", 2)
    before = a.version

    def fails() -> None:
        operations.store_flags(a.conn, "INBOX", [1], "+", ["\\Flagged"])
        raise operations.MailboxError("no", "CANNOT")

    # The flag change committed locally before the error: it is shipped,
    # as the local backend would keep it too; the error still reaches the caller.
    with pytest.raises(operations.MailboxError):
        a.write(fails)
    assert a.version == before + 1
    with pytest.raises(operations.MailboxError, match=r"TRYCREATE|no mailbox"):
        a.write(lambda: operations.copy(a.conn, tmp_path / "a", "h", "INBOX", [1], "Nowhere"))
    assert a.version == before + 1  # nothing written, no version spent
    b = make_node(tmp_path / "b", ioloop, db)
    b.sync()
    assert rows(b) == rows(a)


def test_a_crash_before_the_commit_is_undone(tmp_path: Path, ioloop: IoLoop, db: Database) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    deliver(a, "INBOX", 2)
    # As if the node died after its local commit and before PostgreSQL's:
    # dirty, with a change PostgreSQL never got.
    a.conn.execute("UPDATE replica_state SET dirty = 1")
    a.conn.execute("UPDATE messages SET flags = '\\Deleted' WHERE uid = 1")
    a.conn.close()
    again = make_node(tmp_path / "a", ioloop, db)
    assert again.state()[1]  # still dirty after a restart
    assert again.sync()
    assert again.pulled_whole == 1
    assert rows(again)[0][1] == ""  # PostgreSQL's truth
    assert not again.state()[1]


def test_the_database_failing_mid_write_leaves_no_stray_change(
    tmp_path: Path, ioloop: IoLoop, db: Database
) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    deliver(a, "INBOX", 1)

    def cut() -> None:
        operations.store_flags(a.conn, "INBOX", [1], "+", ["\\Answered"])
        # Our own connection to PostgreSQL is killed before the commit.
        ioloop.run(
            db.pool.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'transactionid' AND pid <> pg_backend_pid()"
            )
        )

    with pytest.raises(Exception) as caught:
        a.write(cut)
    assert a.pulled_whole == 1, caught.value
    assert rows(a)[0][1] == ""  # rebuilt from PostgreSQL at once
    deliver(a, "INBOX", 1, start=5)  # and the next write works
    assert [r[0] for r in rows(a)] == [1, 2]


def test_a_replica_behind_the_pruned_mark_pulls_the_whole_scope(
    tmp_path: Path, ioloop: IoLoop, db: Database
) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    b = make_node(tmp_path / "b", ioloop, db)
    deliver(a, "INBOX", 4)
    b.sync()
    a.write(lambda: operations.expunge(a.conn, tmp_path / "a", "INBOX", [2], only_deleted=False))
    deliver(a, "INBOX", 1, start=9)
    removed = ioloop.run(replica_module.prune(db, keep=0))
    assert removed >= 1  # the tombstone of UID 2
    b.sync()
    assert b.pulled_whole == 2  # its first pull, and this one
    assert [r[0] for r in rows(b)] == [1, 3, 4, 5]
    assert rows(a) == rows(b)


def test_rows_of_every_type_survive_the_trip(tmp_path: Path, ioloop: IoLoop, db: Database) -> None:
    a = make_node(tmp_path / "a", ioloop, db)
    b = make_node(tmp_path / "b", ioloop, db)
    deliver(a, "INBOX", 1)  # the envelope column is a BLOB, the summary JSON text
    a.write(lambda: operations.create_mailbox(a.conn, tmp_path / "a", "Ünïcødé ✓"))
    b.sync()
    query = "SELECT envelope, summary, subject FROM messages"
    assert b.conn.execute(query).fetchall() == a.conn.execute(query).fetchall()
    assert isinstance(b.conn.execute("SELECT envelope FROM messages").fetchone()[0], bytes)
    assert index.mailbox(b.conn, "Ünïcødé ✓") is not None


def test_an_unknown_table_is_refused(tmp_path: Path, ioloop: IoLoop, db: Database) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(replica_module.ReplicaError, match="no table 'nope'"):
        Replica(ioloop, db, "x", conn, ["nope"])
