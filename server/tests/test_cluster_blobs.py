"""Message bodies of the cluster (estafeta.cluster.blobs): content-addressed
in moto's S3 or in PostgreSQL (a real PostgreSQL 15), checked on the way
back, cached on disk within a bound, and collected only when no message
refers to them, through the claimed/stored/doomed protocol."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import os
import random
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _moto import SECRET, s3_admin
from _ports import free_port

from estafeta.cluster import blobs as blobs_module
from estafeta.cluster.blobs import REFERENCED, BlobError, Blobs, DiskCache, S3Bodies
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig

T = TypeVar("T")
HOUR = 3600.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["s3", "database"])
def objects(request: pytest.FixtureRequest) -> ObjectsConfig:
    if request.param == "s3":
        bucket: ObjectsConfig = request.getfixturevalue("bucket")
        return bucket
    return ObjectsConfig(kind="database")


@pytest.fixture
def s3(bucket: ObjectsConfig) -> ObjectsConfig:
    return bucket


@pytest.fixture
def db(database: DatabaseConfig, ioloop: IoLoop) -> Iterator[Database]:
    node = Database(database)
    ioloop.run(node.open())
    yield node
    ioloop.run(node.close())


async def reference(conn: Any, digest: str, uid: int = 1) -> None:
    """A messages row that refers to ``digest``: its file ends with it, as
    estafeta.store.cluster names files and the index mail_rows_blob reads."""
    await conn.execute(
        "INSERT INTO mail_rows (scope, tbl, key, row, version) VALUES "
        "('ana@example.test', 'messages', $2, jsonb_build_object('file', $1::text), 1)",
        f"cur/1765000000.M1P1.node,B={digest}",
        f"[{uid}]",
    )


class Node:
    """A Blobs on the IoLoop that owns the pool, and the test's ways in."""

    def __init__(self, ioloop: IoLoop, db: Database, objects: ObjectsConfig, blobs: Blobs):
        self.ioloop, self.db, self.objects, self.blobs = ioloop, db, objects, blobs

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.ioloop.run(coro, timeout=30)

    def sql(self, query: str, *args: Any) -> list[Any]:
        return self.run(self.db.pool.fetch(query, *args))

    def row(self, digest: str) -> Any:
        rows = self.sql("SELECT * FROM blobs WHERE digest = $1", digest)
        return rows[0] if rows else None

    def keys(self) -> list[str]:
        """The bucket's objects (S3), or the digests whose data is set."""
        if self.objects.kind == "database":
            return [r[0] for r in self.sql("SELECT digest FROM blobs WHERE data IS NOT NULL")]
        listing = s3_admin(self.objects.endpoint or "").list_objects_v2(Bucket=self.objects.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def key(self, digest: str) -> str:
        if self.objects.kind == "database":
            return digest
        return f"{self.objects.prefix}/{digest[:2]}/{digest}"

    def replace_body(self, digest: str, data: bytes) -> None:
        """Change the stored bytes behind the store's back."""
        if self.objects.kind == "database":
            self.sql("UPDATE blobs SET data = $2 WHERE digest = $1", digest, data)
        else:
            s3_admin(self.objects.endpoint or "").put_object(
                Bucket=self.objects.bucket, Key=self.key(digest), Body=data
            )

    def fresh(self, cache: Path, cache_bytes: int = 1 << 20) -> Blobs:
        """Another node's Blobs on the same database and objects (its own cache)."""
        return Blobs(self.db, self.objects, cache, cache_bytes)

    def reference(self, digest: str, uid: int = 1) -> None:
        self.run(reference(self.db.pool, digest, uid))

    def backdate(self, digest: str, claimed: str, doomed: str | None = None) -> None:
        self.sql(
            "UPDATE blobs SET claimed = now() - $2::text::interval,"
            " doomed = coalesce(now() - $3::text::interval, doomed)"
            " WHERE digest = $1",
            digest,
            claimed,
            doomed,
        )


@pytest.fixture
def node(ioloop: IoLoop, db: Database, objects: ObjectsConfig, tmp_path: Path) -> Iterator[Node]:
    blobs = Blobs(db, objects, tmp_path / "cache", 1 << 20)
    yield Node(ioloop, db, objects, blobs)
    blobs.close()


@pytest.fixture
def s3node(ioloop: IoLoop, db: Database, s3: ObjectsConfig, tmp_path: Path) -> Iterator[Node]:
    blobs = Blobs(db, s3, tmp_path / "cache", 1 << 20)
    yield Node(ioloop, db, s3, blobs)
    blobs.close()


# -- storing and reading --------------------------------------------------------------


def test_round_trip(node: Node, tmp_path: Path) -> None:
    bodies = [b"", b"Subject: hi\r\n\r\nhello\r\n", os.urandom(600_000)]  # the last hashed off-loop
    digests = [node.run(node.blobs.put(data)) for data in bodies]
    assert digests == [sha(data) for data in bodies]
    for digest, data in zip(digests, bodies, strict=True):
        row = node.row(digest)
        assert row["stored"] and row["size"] == len(data) and row["doomed"] is None
        assert node.run(node.blobs.get(digest)) == data
    assert sorted(node.keys()) == sorted(node.key(d) for d in digests)
    # Another node, with an empty cache, reads them from the store.
    other = node.fresh(tmp_path / "other")
    for digest, data in zip(digests, bodies, strict=True):
        assert node.run(other.get(digest)) == data
    with pytest.raises(BlobError, match="not a body's digest"):
        node.run(node.blobs.get("../../etc/passwd"))
    with pytest.raises(BlobError, match="missing"):
        node.run(other.get(sha(b"never stored")))


def test_the_same_bytes_are_stored_once(node: Node, tmp_path: Path) -> None:
    data = b"the same message\r\n" * 100
    first = node.run(node.blobs.put(data))
    second = node.run(node.fresh(tmp_path / "b").put(data))
    assert first == second == sha(data)
    assert node.keys() == [node.key(first)]
    assert node.sql("SELECT count(*) FROM blobs")[0][0] == 1


def test_concurrent_puts_of_the_same_bytes(node: Node, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    other = node.fresh(tmp_path / "other")  # a second node, puts of its own

    async def puts() -> list[str]:
        return list(
            await asyncio.gather(
                *(node.blobs.put(data) for _ in range(10)), *(other.put(data) for _ in range(10))
            )
        )

    assert node.run(puts()) == [sha(data)] * 20
    assert node.keys() == [node.key(sha(data))]
    assert node.row(sha(data))["stored"]
    assert node.run(other.get(sha(data))) == data


def test_one_node_writes_and_reads_a_body_once_for_concurrent_callers(
    s3node: Node, tmp_path: Path
) -> None:
    puts: list[str] = []
    client = s3node.blobs.bodies.client  # type: ignore[attr-defined]
    client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: puts.append(request.url)
    )
    data = os.urandom(50_000)

    async def twenty() -> set[str]:
        return set(await asyncio.gather(*(s3node.blobs.put(data) for _ in range(20))))

    assert s3node.run(twenty()) == {sha(data)}
    assert len(puts) == 1
    assert s3node.run(s3node.blobs.put(data)) == sha(data)  # stored: no second write
    assert len(puts) == 1
    # Twenty readers of an uncached body: one GET, one copy in memory.
    reader = s3node.fresh(tmp_path / "reader", 0)
    gets: list[str] = []
    reader.bodies.client.meta.events.register(  # type: ignore[attr-defined]
        "before-send.s3.GetObject", lambda request, **_: gets.append(request.url)
    )

    async def readers() -> list[bytes]:
        return list(await asyncio.gather(*(reader.get(sha(data)) for _ in range(20))))

    got = s3node.run(readers())
    assert len(gets) == 1 and all(body is got[0] for body in got) and got[0] == data
    reader.close()


def test_a_row_whose_writer_crashed_is_written_by_the_next_put(node: Node, tmp_path: Path) -> None:
    data = b"claimed, never stored\r\n"
    digest = sha(data)
    node.sql("INSERT INTO blobs (digest, size) VALUES ($1, $2)", digest, len(data))
    assert node.keys() == []
    assert node.run(node.blobs.put(data)) == digest
    assert node.row(digest)["stored"]
    assert node.keys() == [node.key(digest)]
    assert node.run(node.fresh(tmp_path / "other").get(digest)) == data


def test_the_put_asks_s3_to_check_the_sha256(s3node: Node) -> None:
    sent: list[Any] = []
    client = s3node.blobs.bodies.client  # type: ignore[attr-defined]
    client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(request.headers)
    )
    data = b"checked by the object store\r\n"
    s3node.run(s3node.blobs.put(data))
    expected = base64.b64encode(hashlib.sha256(data).digest())
    assert [headers["x-amz-checksum-sha256"] for headers in sent] == [expected]
    assert "x-amz-checksum-sha256" in sent[0]["Authorization"].decode()  # signed


def test_a_body_altered_behind_our_back_is_refused(node: Node, tmp_path: Path) -> None:
    data = b"the original\r\n"
    digest = node.run(node.blobs.put(data))
    node.replace_body(digest, b"the original, altered\r\n")
    other = node.fresh(tmp_path / "other")
    with pytest.raises(BlobError, match=f"{digest} is corrupt"):
        node.run(other.get(digest))
    assert digest not in other.cache
    node.replace_body(digest, data)  # repaired
    assert node.run(other.get(digest)) == data


class Spy:
    """The node's own Bodies, counting writes at once; ``fail_delete``: the
    node dies right after it deleted objects (before their rows go)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.now = self.most = 0
        self.fail_delete = False

    def describe(self) -> str:
        return str(self.inner.describe())

    async def write(self, digest: str, data: bytes) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.01)
            await self.inner.write(digest, data)
        finally:
            self.now -= 1

    async def read(self, digest: str) -> bytes:
        return bytes(await self.inner.read(digest))

    async def delete(self, conn: Any, digests: Sequence[str]) -> None:
        await self.inner.delete(conn, digests)
        if self.fail_delete:
            raise RuntimeError("the node died")

    def close(self) -> None:
        self.inner.close()


def test_put_many_in_order_and_bounded(node: Node) -> None:
    spy = Spy(node.blobs.bodies)
    blobs = Blobs(node.db, node.objects, Path("/nonexistent"), 0, bodies=spy)
    items = [f"message {i}\r\n".encode() for i in range(30)]
    assert node.run(blobs.put_many(items)) == [sha(item) for item in items]
    assert 1 < spy.most <= blobs_module.PARALLEL
    assert node.run(blobs.put_many([])) == []


# -- the disk cache -------------------------------------------------------------------


def test_the_cache_serves_a_body_whose_object_is_gone(s3node: Node, tmp_path: Path) -> None:
    data = b"cached\r\n" * 1000
    digest = s3node.run(s3node.blobs.put(data))
    assert s3node.run(s3node.blobs.get(digest)) == data  # fetched, then cached
    cached = tmp_path / "cache" / digest[:2] / digest
    assert cached.read_bytes() == data
    assert oct(cached.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "cache").stat().st_mode & 0o777) == "0o700"
    s3_admin(s3node.objects.endpoint or "").delete_object(
        Bucket=s3node.objects.bucket, Key=s3node.key(digest)
    )
    assert s3node.run(s3node.blobs.get(digest)) == data
    with pytest.raises(
        BlobError, match=rf"cannot read {s3node.key(digest)}: the object is missing"
    ):
        s3node.run(s3node.fresh(tmp_path / "empty").get(digest))


def test_a_corrupt_cache_file_is_dropped_and_fetched_again(node: Node, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    digest = node.run(node.blobs.put(data))
    node.run(node.blobs.get(digest))
    cached = tmp_path / "cache" / digest[:2] / digest
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit
    assert node.run(node.blobs.get(digest)) == data
    assert cached.read_bytes() == data  # cached again, whole
    cached.write_bytes(data[:100])  # truncated
    assert node.run(node.blobs.get(digest)) == data
    cached.unlink()  # gone
    assert node.run(node.blobs.get(digest)) == data
    assert cached.read_bytes() == data


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_the_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 10_000)
    bodies = {sha(b): b for b in (bytes([i]) * 3000 for i in range(5))}
    order = list(bodies)
    for digest in order[:3]:
        assert cache.put(digest, bodies[digest])
    assert cache.get(order[0]) == bodies[order[0]]  # now the most recent
    assert cache.put(order[3], bodies[order[3]])  # evicts order[1]
    assert order[1] not in cache and order[0] in cache and cache.get(order[1]) is None
    assert cache.put(order[4], bodies[order[4]])  # evicts order[2]
    assert order[2] not in cache
    assert cache.total == 9000 == _disk_bytes(tmp_path / "c")
    assert not cache.put(sha(b"x" * 10_001), b"x" * 10_001)  # larger than the bound
    assert cache.total <= 10_000
    # A restart rebuilds the entries from the files; a half-written temporary
    # file of a crashed write is removed, a stray file is left alone.
    (tmp_path / "c" / order[0][:2] / ".tmp-crashed").write_bytes(b"half")
    again = DiskCache(tmp_path / "c", 10_000)
    assert again.total == 9000 and len(again) == 3
    assert not (tmp_path / "c" / order[0][:2] / ".tmp-crashed").exists()
    assert again.get(order[4]) == bodies[order[4]]
    smaller = DiskCache(tmp_path / "c", 5000)  # a lower bound: evicted at start
    assert smaller.total <= 5000 and _disk_bytes(tmp_path / "c") <= 5000


def test_the_cache_under_threads_stays_within_its_bound(tmp_path: Path) -> None:
    bound = 50_000
    cache = DiskCache(tmp_path / "c", bound)
    bodies = [os.urandom(random.randrange(1, 12_000)) for _ in range(40)]
    wrong: list[str] = []
    over: list[int] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            data = rng.choice(bodies)
            digest = sha(data)
            got = cache.get(digest)
            if got is not None and got != data:
                wrong.append(digest)
            if got is None:
                cache.put(digest, data)
            if cache.total > bound:
                over.append(cache.total)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong and not over
    assert cache.total == _disk_bytes(tmp_path / "c") <= bound
    assert len(list((tmp_path / "c").rglob(".tmp-*"))) == 0


# -- pin --------------------------------------------------------------------------------


def test_pin_refuses_a_body_that_is_not_stored(node: Node) -> None:
    stored = node.run(node.blobs.put(b"stored\r\n"))
    claimed = sha(b"claimed only")
    node.sql("INSERT INTO blobs (digest, size) VALUES ($1, 12)", claimed)
    unknown = sha(b"unknown")

    async def pin(digests: list[str]) -> None:
        async with node.db.transaction() as conn:
            await node.blobs.pin(conn, digests)

    node.backdate(stored, "2 hours", "1 hour")
    node.run(pin([stored, stored]))
    row = node.row(stored)
    assert row["doomed"] is None  # un-doomed, claimed again
    assert node.sql(
        "SELECT now() - claimed < interval '1 minute' FROM blobs WHERE digest = $1", stored
    )[0][0]
    with pytest.raises(BlobError, match=rf"1 bodies are not stored \({unknown}\)"):
        node.run(pin([stored, unknown]))
    with pytest.raises(BlobError, match=claimed):
        node.run(pin([claimed]))
    node.run(pin([]))


# -- the collector ----------------------------------------------------------------------


def test_an_unreferenced_body_is_doomed_then_removed_after_grace(
    node: Node, tmp_path: Path
) -> None:
    data = b"nobody wants me\r\n"
    digest = node.run(node.blobs.put(data))
    assert node.run(node.blobs.collect(HOUR)) == (0, 0)  # claimed just now
    node.backdate(digest, "2 hours")
    assert node.run(node.blobs.collect(HOUR)) == (1, 0)  # doomed, not yet removed
    assert node.row(digest)["doomed"] is not None and node.keys() == [node.key(digest)]
    assert node.run(node.blobs.collect(HOUR)) == (0, 0)
    node.backdate(digest, "3 hours", "2 hours")
    assert node.run(node.blobs.collect(HOUR)) == (0, 1)
    assert node.row(digest) is None and node.keys() == []
    with pytest.raises(BlobError, match="missing"):
        node.run(node.fresh(tmp_path / "other").get(digest))
    # Delivered again: a new row, and the body written again.
    assert node.run(node.blobs.put(data)) == digest
    assert node.row(digest)["stored"] and node.keys() == [node.key(digest)]


def test_a_referenced_body_is_kept(node: Node) -> None:
    kept = node.run(node.blobs.put(b"in a mailbox\r\n"))
    gone = node.run(node.blobs.put(b"expunged\r\n"))
    node.reference(kept)
    node.backdate(kept, "3 hours")
    node.backdate(gone, "3 hours")
    assert node.run(node.blobs.collect(0)) == (1, 1)  # grace 0: doomed and removed at once
    assert node.row(kept)["doomed"] is None and node.row(gone) is None
    assert node.keys() == [node.key(kept)]
    # Doomed before a message referred to it: un-doomed by the next round.
    other = node.run(node.blobs.put(b"copied later\r\n"))
    node.backdate(other, "3 hours", "2 hours")
    node.reference(other, uid=2)
    assert node.run(node.blobs.collect(HOUR)) == (0, 0)
    assert node.row(other)["doomed"] is None and node.row(other)["stored"]


def test_a_claim_between_doom_and_removal_saves_the_body(node: Node, tmp_path: Path) -> None:
    data = b"delivered again in time\r\n"
    digest = node.run(node.blobs.put(data))
    node.backdate(digest, "3 hours")
    assert node.run(node.blobs.collect(HOUR)) == (1, 0)
    node.run(node.blobs.put(data))  # the claim un-dooms it
    assert node.row(digest)["doomed"] is None
    assert node.run(node.blobs.collect(HOUR)) == (0, 0)
    assert node.run(node.fresh(tmp_path / "a").get(digest)) == data
    # Claimed after it was doomed (by a pin whose transaction then rolled back
    # its reference, say): not removed, un-doomed.
    node.backdate(digest, "1 hour", "2 hours")
    assert node.run(node.blobs.collect(1)) == (0, 0)
    assert node.row(digest)["doomed"] is None
    assert node.run(node.fresh(tmp_path / "b").get(digest)) == data


def test_a_pin_in_an_open_transaction_keeps_the_collector_off(node: Node) -> None:
    digest = node.run(node.blobs.put(b"being delivered\r\n"))
    node.backdate(digest, "3 hours", "2 hours")

    async def deliver_while_collecting() -> tuple[int, int]:
        async with node.db.transaction() as conn:
            await node.blobs.pin(conn, [digest])  # holds the row's lock
            # The collector skips the locked row instead of waiting for it.
            counts = await asyncio.wait_for(node.blobs.collect(0), 10)
            await reference(conn, digest)
        return counts

    assert node.run(deliver_while_collecting()) == (0, 0)
    assert node.run(node.blobs.collect(0)) == (0, 0)  # now referenced
    assert node.row(digest)["stored"] and node.keys() == [node.key(digest)]


def test_a_removal_that_died_midway_is_not_trusted(node: Node, tmp_path: Path) -> None:
    # The collector deleted the object and died before the row's delete
    # committed: the row must not say stored, so that a pin refuses it and
    # the next put writes the body again.
    spy = Spy(node.blobs.bodies)
    blobs = Blobs(node.db, node.objects, tmp_path / "cache", 0, bodies=spy)
    data = b"half removed\r\n"
    digest = node.run(blobs.put(data))
    node.backdate(digest, "3 hours", "2 hours")
    spy.fail_delete = True
    with pytest.raises(RuntimeError, match="the node died"):
        node.run(blobs.collect(HOUR))
    # S3's object is gone; the database's data goes only with its row.
    assert node.keys() == ([] if node.objects.kind == "s3" else [digest])
    assert not node.row(digest)["stored"]

    async def pin() -> None:
        async with node.db.transaction() as conn:
            await blobs.pin(conn, [digest])

    with pytest.raises(BlobError, match="not stored"):
        node.run(pin())
    assert node.run(blobs.put(data)) == digest
    assert node.row(digest)["stored"] and node.row(digest)["doomed"] is None
    assert node.run(node.fresh(tmp_path / "other").get(digest)) == data
    node.run(pin())


def test_the_collector_is_bounded_per_round(node: Node) -> None:
    digests = node.run(node.blobs.put_many([f"old {i}\r\n".encode() for i in range(7)]))
    node.sql("UPDATE blobs SET claimed = now() - interval '3 hours'")
    kept = sorted(digests)[:3]  # the first rows of every survey, if it began anew each time
    for uid, digest in enumerate(kept):
        node.reference(digest, uid)
    doomed = removed = rounds = 0
    while removed < 4:
        d, r = node.run(node.blobs.collect(0, limit=3))
        assert d <= 3 and r <= 3
        doomed, removed, rounds = doomed + d, removed + r, rounds + 1
        assert rounds < 10, "the survey does not go on where it stopped"
    assert doomed == 4 and rounds >= 2
    assert sorted(r[0] for r in node.sql("SELECT digest FROM blobs")) == kept
    assert sorted(node.keys()) == sorted(node.key(d) for d in kept)


def test_the_reference_query_uses_the_index(db: Database, ioloop: IoLoop) -> None:
    query = "EXPLAIN SELECT b.digest FROM blobs b WHERE " + REFERENCED  # noqa: S608

    async def plan() -> str:
        async with db.transaction() as conn:
            await conn.execute("SET LOCAL enable_seqscan = off")  # the tables are empty
            return "\n".join(r[0] for r in await conn.fetch(query))

    assert "mail_rows_blob" in ioloop.run(plan())


# -- errors an operator sees ------------------------------------------------------------


def test_an_unreachable_object_store_is_named(
    s3: ObjectsConfig, db: Database, ioloop: IoLoop, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    nowhere = dataclasses.replace(s3, endpoint=endpoint)
    blobs = Blobs(db, nowhere, tmp_path / "cache", 1 << 20)
    started = time.monotonic()
    with pytest.raises(BlobError) as caught:
        ioloop.run(blobs.put(b"to nowhere\r\n"))
    message = str(caught.value)
    assert endpoint in message and "unreachable" in message and "check endpoint" in message
    assert SECRET not in message
    assert time.monotonic() - started < 10
    # The claim is left unstored: nothing refers to a body that is not there.
    assert not ioloop.run(db.pool.fetchval("SELECT stored FROM blobs"))


def test_a_missing_bucket_and_loose_credentials_are_named(
    s3: ObjectsConfig, db: Database, ioloop: IoLoop, tmp_path: Path
) -> None:
    missing = dataclasses.replace(s3, bucket="no-such-bucket-here")
    with pytest.raises(BlobError, match="bucket 'no-such-bucket-here' does not exist"):
        ioloop.run(Blobs(db, missing, tmp_path / "c", 0).put(b"x"))
    assert s3.credentials_file is not None
    s3.credentials_file.chmod(0o644)
    with pytest.raises(BlobError, match="readable by others; chmod 600"):
        S3Bodies(s3)
    with pytest.raises(BlobError, match="neither 's3' nor 'database'"):
        Blobs(db, dataclasses.replace(s3, kind="ftp"), tmp_path / "c", 0)
