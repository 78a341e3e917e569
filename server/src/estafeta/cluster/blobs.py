"""Message bodies of the cluster, by SHA-256: in the object store (S3) or in
PostgreSQL (table ``blobs``, ``[store.objects] kind = "database"``), with a
bounded disk cache on each node.

A body is named by the hex SHA-256 of its bytes (its digest), so the same
bytes delivered twice are stored once and what comes back is checked
against its name: corruption is refused, never served. A row of ``blobs``
stands for each body; its columns are the protocol between writers and the
collector:

- ``stored``: the body is written (S3 PUT acknowledged, or ``data`` set).
  Only what a writer saw acknowledged sets it, and the collector clears it,
  committed, before it deletes anything: so ``stored`` always means the
  body exists.
- ``claimed``: when a writer last said it is about to refer to the body.
- ``doomed``: when the collector found no message referring to the body.

Crash ordering of a writer (``put`` then ``pin``):

1. claim: upsert the row (``claimed = now()``, ``doomed = NULL``),
   committed. A crash here leaves a row with ``stored = false``, which the
   next put of the same bytes does not trust: it writes the body again.
2. write the body unless the row says ``stored``; then set ``stored``
   (only if the row is still claimed and not doomed: else start over).
3. ``pin`` in the writer's own transaction that commits the index rows:
   refresh ``claimed``, un-doom, and refuse if a body is not ``stored``.
   After that commit the index rows refer to the body, which keeps it.

Crash ordering of the collector (``collect``), ``grace`` apart:

1. doom: a row unreferenced and claimed more than ``grace`` ago gets
   ``doomed = now()``; a doomed row that is referenced again is un-doomed.
2. a row doomed more than ``grace`` ago, still unreferenced and not claimed
   since, gets ``stored = false``, committed (a crash after this leaves a
   row that writers rewrite and pins refuse, nothing worse);
3. in another transaction: lock the row (``FOR UPDATE SKIP LOCKED``),
   check again, delete the object, delete the row, commit. A writer's claim
   waits on that lock: it comes before (the check fails, nothing is
   deleted) or after (the row is gone: it inserts a new one and writes the
   body again).

A writer has ``grace`` from its claim to its pin; the collector's grace is
meant to be hours, far longer than any delivery takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from estafeta.cluster.database import UNREACHABLE, Database, StorageError
from estafeta.cluster.settings import ObjectsConfig
from estafeta.s3credentials import read_credentials

log = logging.getLogger("estafeta.cluster")

T = TypeVar("T")

PARALLEL = 8  # put_many: bodies written at once
ATTEMPTS = 3  # put: claims before giving up on a body the collector keeps removing
INLINE_HASH = 256 * 1024  # bodies above this are hashed in a worker thread
DELETE_BATCH = 100  # the collector: rows locked, objects deleted, per transaction

_DIGEST = re.compile(r"[0-9a-f]{64}")
_FAN = re.compile(r"[0-9a-f]{2}")
_TMP = ".tmp-"

# The digest a messages row of mail_rows refers to: exactly the expression of
# the index mail_rows_blob (estafeta.cluster.schema), so that it is used.
REFERENCED = (
    "EXISTS (SELECT 1 FROM mail_rows m WHERE m.tbl = 'messages' AND m.row IS NOT NULL"
    " AND right(m.row->>'file', 64) = b.digest)"
)


class BlobError(StorageError):
    """A body could not be stored or read; the message says where and why.
    A StorageError (an OSError): sessions answer "try again later"."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def digest_of(data: bytes) -> str:
    """``sha256_hex``, in a worker thread for a large body."""
    if len(data) > INLINE_HASH:
        return await asyncio.to_thread(sha256_hex, data)
    return sha256_hex(data)


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BlobError(f"{digest!r} is not a body's digest (64 lowercase hex digits)")
    return digest


# -- where the bytes are --------------------------------------------------------------


class Bodies(Protocol):
    def describe(self) -> str: ...

    async def write(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest``; return once it is durable."""

    async def read(self, digest: str) -> bytes:
        """The bytes stored under ``digest`` (unchecked); BlobError if absent."""

    async def delete(self, conn: Any, digests: Sequence[str]) -> None:
        """Remove the bodies (absent ones are fine), in the transaction
        ``conn`` that deletes their rows."""

    def close(self) -> None: ...


class DatabaseBodies:
    """Bodies in ``blobs.data``: for small clusters without an object store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> str:
        return f"table blobs of {self.db.describe()}"

    async def write(self, digest: str, data: bytes) -> None:
        try:
            await self.db.pool.execute("UPDATE blobs SET data = $2 WHERE digest = $1", digest, data)
        except UNREACHABLE as exc:
            raise self.db.error(f"write body {digest}", exc) from None

    async def read(self, digest: str) -> bytes:
        try:
            data = await self.db.pool.fetchval("SELECT data FROM blobs WHERE digest = $1", digest)
        except UNREACHABLE as exc:
            raise self.db.error(f"read body {digest}", exc) from None
        if data is None:
            raise BlobError(f"{self.describe()}: body {digest} is missing")
        return bytes(data)

    async def delete(self, conn: Any, digests: Sequence[str]) -> None:
        pass  # the data goes with its row

    def close(self) -> None:
        pass


class S3Bodies:
    """Bodies as objects ``PREFIX/ab/abcd…`` of an S3-compatible bucket."""

    def __init__(self, objects: ObjectsConfig, *, attempts: int = 3) -> None:
        self.objects = objects
        self.prefix = objects.prefix.strip("/")
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise BlobError("S3 bodies need boto3 (pip install boto3)") from None
        key_id = secret = None
        if objects.credentials_file is not None:
            try:
                key_id, secret = read_credentials(objects.credentials_file)
            except ValueError as exc:
                raise BlobError(str(exc)) from None
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=objects.endpoint,
            region_name=objects.region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(
                s3={"addressing_style": "path" if objects.path_style else "auto"},
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=2 * PARALLEL,
                # Only the checksums we ask for: some S3-compatible stores
                # refuse the SDK's default CRC32 headers.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def describe(self) -> str:
        where = self.objects.endpoint or "AWS S3"
        return f"s3://{self.objects.bucket}/{self.prefix} at {where}"

    def key(self, digest: str) -> str:
        name = f"{digest[:2]}/{digest}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def _error(self, what: str, key: str, exc: Exception) -> BlobError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            NoCredentialsError,
        )

        where = f"{self.describe()}: cannot {what} {key}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return BlobError(f"{where}: the object is missing")
            if code == "NoSuchBucket":
                return BlobError(
                    f"{where}: bucket {self.objects.bucket!r} does not exist "
                    "(check bucket in [store.objects], or create it)"
                )
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return BlobError(
                    f"{where}: {code} (check credentials_file and that the key may "
                    "get, put and delete objects in the bucket)"
                )
            if code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
                return BlobError(
                    f"{where}: the object store received other bytes than were sent "
                    f"({code}); nothing was stored"
                )
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
                return BlobError(f"{where}: {code} (check region and endpoint)")
            return BlobError(f"{where}: {code}: {error.get('Message', '')}".rstrip(": "))
        if isinstance(exc, NoCredentialsError):
            return BlobError(
                f"{where}: no S3 credentials (set credentials_file in [store.objects])"
            )
        if isinstance(exc, ConnectionError):
            return BlobError(
                f"{where}: the object store is unreachable ({exc}); check endpoint "
                "in [store.objects], that the store runs, and the network between"
            )
        if isinstance(exc, BotoCoreError):
            return BlobError(f"{where}: {exc}")
        return BlobError(f"{where}: {exc!r}")

    async def _call(self, what: str, key: str, call: Callable[[], T]) -> T:
        def run() -> T:
            try:
                return call()
            except Exception as exc:  # botocore's errors, or a connection that failed
                raise self._error(what, key, exc) from None

        return await asyncio.to_thread(run)

    async def write(self, digest: str, data: bytes) -> None:
        key = self.key(digest)
        # The store checks the bytes against this before it acknowledges.
        checksum = base64.b64encode(bytes.fromhex(digest)).decode("ascii")
        await self._call(
            "write",
            key,
            lambda: self.client.put_object(
                Bucket=self.objects.bucket, Key=key, Body=data, ChecksumSHA256=checksum
            ),
        )

    async def read(self, digest: str) -> bytes:
        key = self.key(digest)

        def get() -> bytes:
            response = self.client.get_object(Bucket=self.objects.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                return bytes(body.read())

        return await self._call("read", key, get)

    async def delete(self, conn: Any, digests: Sequence[str]) -> None:
        keys = [self.key(digest) for digest in digests]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 at most
            batch = keys[start : start + 1000]

            def delete(batch: list[str] = batch) -> Any:
                return self.client.delete_objects(
                    Bucket=self.objects.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )

            response = await self._call("delete", f"{len(batch)} objects from {batch[0]}", delete)
            for failed in response.get("Errors", []):
                raise BlobError(
                    f"{self.describe()}: cannot delete {failed.get('Key')}: "
                    f"{failed.get('Code')}: {failed.get('Message', '')}"
                )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def make_bodies(db: Database, objects: ObjectsConfig) -> Bodies:
    if objects.kind == "database":
        return DatabaseBodies(db)
    if objects.kind == "s3":
        return S3Bodies(objects)
    raise BlobError(f"[store.objects] kind {objects.kind!r} is neither 's3' nor 'database'")


# -- the disk cache -------------------------------------------------------------------


class DiskCache:
    """Bodies on local disk, ``DIR/ab/abcd…``, at most ``max_bytes`` in all,
    the least recently used evicted first. Every read is checked against the
    digest: a corrupt or truncated file is dropped, never returned. Thread
    safe; ``max_bytes`` 0 caches nothing."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max(0, max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # least recent first
        self._writing: set[str] = set()
        self._total = 0  # bytes of the entries and of the writes under way
        if self.max_bytes:
            try:
                self._load()
            except OSError as exc:
                raise BlobError(
                    f"{directory}: cannot use the body cache: {exc.strerror or exc}"
                ) from None

    @property
    def total(self) -> int:
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, digest: object) -> bool:
        with self._lock:
            return digest in self._entries

    def path(self, digest: str) -> Path:
        return self.directory / digest[:2] / digest

    def _load(self) -> None:
        """The entries from the files (their order from the access and
        modification times); left-over temporary files are removed."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        with os.scandir(self.directory) as fans:
            for fan in fans:
                if not (_FAN.fullmatch(fan.name) and fan.is_dir(follow_symlinks=False)):
                    continue
                with os.scandir(fan.path) as files:
                    for entry in files:
                        if entry.name.startswith(_TMP):
                            with contextlib.suppress(OSError):
                                os.unlink(entry.path)
                        elif _DIGEST.fullmatch(entry.name) and entry.name[:2] == fan.name:
                            info = entry.stat(follow_symlinks=False)
                            used = max(info.st_atime, info.st_mtime)
                            found.append((used, entry.name, info.st_size))
        found.sort()
        with self._lock:
            for _used, digest, size in found:
                self._entries[digest] = size
                self._total += size
            self._evict(0)

    def _evict(self, room: int) -> None:
        """Drop the least recent entries until ``room`` more bytes fit (lock held)."""
        while self._entries and self._total + room > self.max_bytes:
            digest, size = self._entries.popitem(last=False)
            self._total -= size
            with contextlib.suppress(OSError):
                os.unlink(self.path(digest))

    def discard(self, digest: str) -> None:
        with self._lock:
            size = self._entries.pop(digest, None)
            if size is not None:
                self._total -= size
                with contextlib.suppress(OSError):
                    os.unlink(self.path(digest))

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            if digest not in self._entries:
                return None
            self._entries.move_to_end(digest)
        try:
            data = self.path(digest).read_bytes()
        except OSError:
            self.discard(digest)
            return None
        if sha256_hex(data) != digest:
            log.warning("body cache: %s is corrupt, dropped", self.path(digest))
            self.discard(digest)
            return None
        return data

    def put(self, digest: str, data: bytes) -> bool:
        """Cache ``data`` (whose digest the caller checked); False if it was
        not (too large, already there, no room, or a disk error)."""
        size = len(data)
        if size > self.max_bytes:
            return False
        with self._lock:
            if digest in self._entries or digest in self._writing:
                return False
            self._evict(size)
            if self._total + size > self.max_bytes:
                return False  # the room is held by writes under way
            self._total += size
            self._writing.add(digest)
        done = False
        try:
            self._write(digest, data)
            done = True
        except OSError as exc:
            log.warning("body cache: cannot write %s: %s", self.path(digest), exc.strerror or exc)
        finally:
            with self._lock:
                self._writing.discard(digest)
                if done:
                    self._entries[digest] = size
                else:
                    self._total -= size
        return done

    def _write(self, digest: str, data: bytes) -> None:
        final = self.path(digest)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=_TMP, dir=final.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(name, final)  # readers see no file or a whole one
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise


# -- the store of bodies --------------------------------------------------------------

_CLAIM = """
INSERT INTO blobs AS b (digest, size) VALUES ($1, $2)
ON CONFLICT (digest) DO UPDATE SET claimed = now(), doomed = NULL
RETURNING b.stored
"""
_MARK = """
UPDATE blobs SET stored = true, claimed = now()
WHERE digest = $1 AND doomed IS NULL RETURNING true
"""
# Rows locked in digest order, so that two writers never deadlock.
_PIN = """
UPDATE blobs AS b SET claimed = now(), doomed = NULL
FROM (SELECT digest FROM blobs WHERE digest = ANY($1::text[]) ORDER BY digest FOR UPDATE) AS l
WHERE b.digest = l.digest
RETURNING b.digest, b.stored
"""
_AGO = "now() - make_interval(secs => $3)"
_SURVEY = f"""
SELECT b.digest, b.doomed IS NOT NULL AS doomed, b.claimed < {_AGO} AS old,
       {REFERENCED} AS referenced
FROM blobs b WHERE b.digest > $1 ORDER BY b.digest LIMIT $2
FOR UPDATE SKIP LOCKED
"""  # noqa: S608 (constants only)
_CONDEMN = f"""
WITH c AS (
    SELECT b.digest, (b.claimed > b.doomed OR {REFERENCED}) AS spared
    FROM blobs b WHERE b.doomed IS NOT NULL AND b.doomed < now() - make_interval(secs => $1)
    ORDER BY b.doomed LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE blobs AS b
SET doomed = CASE WHEN c.spared THEN NULL ELSE b.doomed END,
    stored = c.spared AND b.stored
FROM c WHERE b.digest = c.digest
RETURNING b.digest, c.spared
"""  # noqa: S608 (constants only)
_LOCK_CONDEMNED = f"""
SELECT b.digest FROM blobs b
WHERE b.digest = ANY($1::text[]) AND NOT b.stored AND b.doomed IS NOT NULL
  AND b.doomed < now() - make_interval(secs => $2) AND b.claimed <= b.doomed
  AND NOT {REFERENCED}
FOR UPDATE SKIP LOCKED
"""  # noqa: S608 (constants only)


class Blobs:
    """The bodies of a cluster node. Every coroutine runs on the loop that
    owns ``db``'s pool (the IoLoop). Errors: BlobError for a body or the
    object store, DatabaseError when the database cannot be reached."""

    def __init__(
        self,
        db: Database,
        objects: ObjectsConfig,
        cache_dir: Path,
        cache_bytes: int,
        *,
        bodies: Bodies | None = None,
    ) -> None:
        self.db = db
        self.bodies = bodies if bodies is not None else make_bodies(db, objects)
        self.cache = DiskCache(cache_dir, cache_bytes)
        self._writing: dict[str, asyncio.Task[None]] = {}
        self._reading: dict[str, asyncio.Task[bytes]] = {}
        self._cursor = ""  # the collector's survey goes on after this digest

    def describe(self) -> str:
        return self.bodies.describe()

    def close(self) -> None:
        self.bodies.close()

    async def _fetchval(self, what: str, query: str, *args: Any) -> Any:
        try:
            return await self.db.pool.fetchval(query, *args)
        except UNREACHABLE as exc:
            raise self.db.error(what, exc) from None

    async def _shared(
        self,
        running: dict[str, asyncio.Task[T]],
        digest: str,
        make: Callable[[], Coroutine[Any, Any, T]],
    ) -> T:
        """One task per digest at a time: concurrent callers share its outcome."""
        task = running.get(digest)
        if task is None:
            task = asyncio.ensure_future(make())
            running[digest] = task

            def forget(done: asyncio.Task[T]) -> None:
                if running.get(digest) is done:
                    del running[digest]
                if not done.cancelled():
                    done.exception()  # retrieved, even if every caller left

            task.add_done_callback(forget)
        return await asyncio.shield(task)

    # -- writing --------------------------------------------------------------------

    async def put(self, data: bytes) -> str:
        """Store ``data``; its digest, once the body is stored and claimed."""
        digest = await digest_of(data)
        await self._shared(self._writing, digest, lambda: self._store(digest, data))
        return digest

    async def _store(self, digest: str, data: bytes) -> None:
        for _attempt in range(ATTEMPTS):
            if await self._fetchval(f"claim body {digest}", _CLAIM, digest, len(data)):
                return  # stored, and now claimed
            await self.bodies.write(digest, data)
            if await self._fetchval(f"record body {digest}", _MARK, digest):
                return
            # Doomed or removed while it was written: claim it again.
        raise BlobError(
            f"{self.describe()}: body {digest} was collected while it was written, "
            f"{ATTEMPTS} times (is the collector's grace shorter than a write takes?)"
        )

    async def put_many(self, items: Sequence[bytes]) -> list[str]:
        """``put`` each, ``PARALLEL`` at a time; the digests in order."""
        limit = asyncio.Semaphore(PARALLEL)

        async def one(data: bytes) -> str:
            async with limit:
                return await self.put(data)

        tasks = [asyncio.ensure_future(one(data)) for data in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def pin(self, conn: Any, digests: Sequence[str]) -> None:
        """In the writer's transaction ``conn``, before it commits index rows
        that refer to ``digests``: claim them again; BlobError (roll back,
        put the bodies again) if any is not stored."""
        wanted = sorted({check_digest(digest) for digest in digests})
        if not wanted:
            return
        rows = await conn.fetch(_PIN, wanted)
        stored = {row["digest"] for row in rows if row["stored"]}
        missing = [digest for digest in wanted if digest not in stored]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise BlobError(
                f"{self.describe()}: {len(missing)} bodies are not stored "
                f"({', '.join(missing[:3])}{more}): put them again"
            )

    # -- reading --------------------------------------------------------------------

    async def get(self, digest: str) -> bytes:
        """The body named ``digest``, checked; BlobError if it is missing or
        what the store holds is not it."""
        check_digest(digest)
        return await self._shared(self._reading, digest, lambda: self._fetch(digest))

    async def _fetch(self, digest: str) -> bytes:
        if self.cache.max_bytes:
            cached = await asyncio.to_thread(self.cache.get, digest)
            if cached is not None:
                return cached
        data = await self.bodies.read(digest)
        found = await digest_of(data)
        if found != digest:
            raise BlobError(
                f"{self.describe()}: body {digest} is corrupt: what came back "
                f"({len(data)} octets) has the SHA-256 {found}"
            )
        if self.cache.max_bytes:
            await asyncio.to_thread(self.cache.put, digest, data)
        return data

    # -- the collector --------------------------------------------------------------

    async def collect(self, grace: float, limit: int = 1000) -> tuple[int, int]:
        """One round of the collector: (bodies doomed, bodies removed). It
        surveys at most ``limit`` rows (going on from where the last round
        stopped) and removes at most ``limit`` bodies."""
        if grace < 0 or limit < 1:
            raise ValueError("collect: grace must be >= 0 and limit >= 1")
        doomed = await self._survey(float(grace), limit)
        return doomed, await self._remove(float(grace), limit)

    async def _survey(self, grace: float, limit: int) -> int:
        async with self.db.transaction() as conn:
            rows = await conn.fetch(_SURVEY, self._cursor, limit, grace)
            doom = [r["digest"] for r in rows if not (r["doomed"] or r["referenced"]) and r["old"]]
            spare = [r["digest"] for r in rows if r["doomed"] and r["referenced"]]
            if doom:
                await conn.execute("UPDATE blobs SET doomed = now() WHERE digest = ANY($1)", doom)
            if spare:
                await conn.execute("UPDATE blobs SET doomed = NULL WHERE digest = ANY($1)", spare)
        self._cursor = rows[-1]["digest"] if len(rows) == limit else ""
        return len(doom)

    async def _remove(self, grace: float, limit: int) -> int:
        async with self.db.transaction() as conn:
            rows = await conn.fetch(_CONDEMN, grace, limit)
        condemned = [row["digest"] for row in rows if not row["spared"]]
        removed = 0
        for start in range(0, len(condemned), DELETE_BATCH):
            batch = condemned[start : start + DELETE_BATCH]
            async with self.db.transaction() as conn:
                gone = [r["digest"] for r in await conn.fetch(_LOCK_CONDEMNED, batch, grace)]
                if gone:
                    await self.bodies.delete(conn, gone)
                    await conn.execute("DELETE FROM blobs WHERE digest = ANY($1)", gone)
            removed += len(gone)
        if removed:
            log.info("blob collector: %d bodies removed from %s", removed, self.describe())
        return removed
