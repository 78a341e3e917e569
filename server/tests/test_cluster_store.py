"""The cluster backend of the store (estafeta.store.cluster): two nodes over
one real PostgreSQL 15 and one body store (moto's S3, or PostgreSQL
itself), each with its own event loop thread, pool, cache and replicas."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import run_drained
from estafeta.cluster.blobs import Blobs
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig
from estafeta.message import summarize
from estafeta.store import Delivery, OverQuota, operations
from estafeta.store.cluster import ClusterStore, body_of

ANA = "ana@example.test"


def mail(n: int, size: int = 0) -> bytes:
    return (
        f"From: bob@example.test\r\nTo: {ANA}\r\nSubject: note {n}\r\n"
        f"Message-ID: <{n}@example.test>\r\n\r\nbody {n}\r\n{'x' * size}\r\n"
    ).encode()


def delivery(n: int, **fields: object) -> Delivery:
    data = mail(n)
    return Delivery(ANA, data, summarize(data), **fields)  # type: ignore[arg-type]


@dataclasses.dataclass
class Node:
    store: ClusterStore
    io: IoLoop
    db: Database
    blobs: Blobs

    def rows(self, mailbox: str = "INBOX") -> list[tuple[int, str]]:
        """(UID, flags) of the mailbox's messages; none while it is missing."""
        with self.store.reader(ANA) as reader:
            box = reader.mailbox(mailbox)
            if box is None:
                return []
            return [(row.uid, " ".join(row.flags)) for row in reader.messages(box.id)]

    def body(self, uid: int, mailbox: str = "INBOX") -> bytes:
        with self.store.reader(ANA) as reader:
            box = reader.mailbox(mailbox)
            assert box is not None
            file = reader.message_file(box.id, uid)
            assert file is not None
            return reader.content(file)


@pytest.fixture(params=["s3", "database"])
def objects(request: pytest.FixtureRequest) -> ObjectsConfig:
    if request.param == "s3":
        bucket: ObjectsConfig = request.getfixturevalue("bucket")
        return bucket
    return ObjectsConfig(kind="database")


@pytest.fixture
def nodes(
    tmp_path: Path, database: DatabaseConfig, objects: ObjectsConfig
) -> Iterator[Callable[[str], Node]]:
    made: list[Node] = []

    def make(name: str) -> Node:
        io = IoLoop(f"io-{name}").start()
        db = Database(database)
        io.run(db.open())
        blobs = Blobs(db, objects, tmp_path / name / "cache", 64 << 20)
        store = ClusterStore(
            tmp_path / name / "replicas", f"{name}.example.test", io=io, db=db, bodies=blobs
        )
        store.start()
        store.wait_listening()
        node = Node(store, io, db, blobs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.store.stop()
        node.blobs.close()
        node.io.run(node.db.close())
        node.io.stop()


def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``condition`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "not within the time"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_delivery_on_one_node_is_read_on_the_other(nodes: Callable[[str], Node]) -> None:
    a, b = nodes("a"), nodes("b")
    delivered = a.store.deliver_sync([delivery(1), delivery(2)])
    assert [d.uid for d in delivered] == [1, 2]
    assert body_of(delivered[0].file) == hashlib.sha256(mail(1)).hexdigest()
    assert b.rows() == [(1, ""), (2, "")]
    assert b.body(2) == mail(2)
    with a.store.reader(ANA) as ra, b.store.reader(ANA) as rb:
        assert ra.mailbox("INBOX") == rb.mailbox("INBOX")  # one UIDVALIDITY


def test_idle_on_b_hears_of_a_delivery_on_a_within_a_second(
    nodes: Callable[[str], Node],
) -> None:
    a, b = nodes("a"), nodes("b")
    a.store.deliver_sync([delivery(1)])
    b.rows()  # b serves the account now
    heard = threading.Event()
    b.store.changes.watch(ANA, lambda _address: heard.set())
    a.store.deliver_sync([delivery(2)])  # committed on a when it returns
    assert heard.wait(1.0), "b's sessions were not told within 1 s"
    assert [uid for uid, _ in b.rows()] == [1, 2]


def test_imap_writes_from_both_nodes(nodes: Callable[[str], Node]) -> None:
    a, b = nodes("a"), nodes("b")
    a.store.deliver_sync([delivery(1), delivery(2), delivery(3)])
    b.store.store_flags(ANA, "INBOX", [1, 2], "+", ["\\Seen", "$Work"])
    b.store.create_mailbox(ANA, "Projects/2026")
    copied = a.store.copy(ANA, "INBOX", [1, 2], "Projects/2026")
    assert copied.dest_uids == [1, 2]
    moved = b.store.copy(ANA, "INBOX", [3], "Projects/2026", move=True)
    assert moved.dest_uids == [3]
    until(lambda: len(a.rows("Projects/2026")) == 3)
    assert a.rows("Projects/2026") == b.rows("Projects/2026")
    assert set(a.rows("Projects/2026")[0][1].split()) == {"$Work", "\\Seen"}
    # COPY made new names for the same bodies: no bytes moved.
    assert b.body(1, "Projects/2026") == mail(1)
    assert a.body(3, "Projects/2026") == mail(3)
    a.store.expunge(ANA, "INBOX", [1])  # not \Deleted: nothing goes
    b.store.store_flags(ANA, "INBOX", [1], "+", ["\\Deleted"])
    assert a.store.expunge(ANA, "INBOX") == [1]
    until(lambda: [uid for uid, _ in b.rows()] == [2])
    b.store.rename_mailbox(ANA, "Projects", "Archive/Projects")
    until(lambda: len(a.rows("Archive/Projects/2026")) == 3)
    assert a.body(2, "Archive/Projects/2026") == mail(2)  # RENAME kept the bodies' names


def test_append_and_rename_inbox(nodes: Callable[[str], Node]) -> None:
    a, b = nodes("a"), nodes("b")

    async def append() -> list[int]:
        made = await b.store.append_many(
            ANA, "INBOX", [(mail(1), ["\\Flagged"], 1700000000.0), (mail(2), [], None)]
        )
        return [m.uid for m in made]

    assert run_drained(append()) == [1, 2]
    with pytest.raises(operations.MailboxError) as missing:
        run_drained(b.store.append(ANA, "Nowhere", mail(3)))
    assert missing.value.code == "TRYCREATE"
    a.store.rename_mailbox(ANA, "INBOX", "Old")  # rfc9051:6.3.6: INBOX's messages move
    until(lambda: len(b.rows("Old")) == 2)
    assert b.rows() == []
    assert b.body(1, "Old") == mail(1)


def test_quota_holds_across_nodes(nodes: Callable[[str], Node]) -> None:
    a, b = nodes("a"), nodes("b")
    size = len(mail(0))
    quota = size * 5 + size // 2  # room for five

    def deliver(node: Node, n: int) -> bool:
        try:
            node.store.deliver_sync([delivery(n, quota=quota)])
            return True
        except OverQuota:
            return False

    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(deliver((a, b)[i % 2], i)))
        for i in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 5
    assert len(a.rows()) == 5 == len(b.rows())


@pytest.mark.parametrize("objects", ["s3"], indirect=True)
def test_a_body_store_that_fails_refuses_the_delivery(
    nodes: Callable[[str], Node], objects: ObjectsConfig
) -> None:
    a = nodes("a")
    a.store.deliver_sync([delivery(1)])
    broken = dataclasses.replace(objects, bucket="no-such-bucket-here")
    a.store.bodies = Blobs(a.db, broken, a.store.mail_dir.parent / "cache2", 1 << 20)
    with pytest.raises(Exception, match="delivery failed"):
        a.store.deliver_sync([delivery(2)])
    a.store.bodies = a.blobs
    assert [uid for uid, _ in a.rows()] == [1]  # nothing half-made
