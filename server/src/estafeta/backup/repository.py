"""A backup repository at a destination: packs, indexes, snapshots, keyring, locks.

Layout at the destination (``estafeta.backup.destinations``)::

    config              sealed with the master key: repository id, format version
    keyring             sealed with the master key: per-scope subkeys (objects.Keyring)
    packs/XX/PACK       sealed objects one after another (up to PACK_TARGET octets);
                        PACK is SHA-256 of the pack's octets
    index/NAME          sealed (server scope): which pack holds which object, for the
                        packs one run wrote
    snapshots/NAME      sealed (server scope): a snapshot's manifest; NAME sorts by time
    locks/NAME          plain JSON {"kind", "host", "pid", "time"}: who writes now

Why packs: a mailbox of 100,000 messages is 100,000 small objects; one file
or one PUT each would make the first backup crawl and cost a request per
message. Objects are sealed one by one (``objects.seal_named``: each can be
opened and checked alone, and each belongs to one scope, so crypto-erasure
works per account) and written 16 MiB at a time.

Order of writes, so that a run killed at any point leaves nothing a reader
could mistake for a snapshot: packs first, then the index naming them, then
the manifest. A killed run leaves packs (and maybe an index) no manifest
refers to; ``prune`` removes them. Snapshots are listed from ``snapshots/``
only, so a killed run lists nothing.

Writers exclude each other with lock objects: ``create`` and ``prune`` each
write one, refreshed every LOCK_REFRESH seconds, then look for others. A
``create`` that finds a ``prune`` steps back and waits; a ``prune`` that
finds anything gives up. So ``prune`` never deletes a pack a running
``create`` relies on (it reuses objects it finds in the index). A lock not
refreshed for LOCK_STALE seconds belongs to a dead process and is ignored,
as is one of this host whose process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from estafeta.backup import objects
from estafeta.backup.destinations import Destination
from estafeta.backup.objects import BackupError, Keyring

FORMAT = 1
PACK_TARGET = 16 * 1024 * 1024
LOCK_REFRESH = 60.0
LOCK_STALE = 5 * LOCK_REFRESH
SERVER = ""  # the scope of what belongs to no account
_CONFIG_AD = b"estafeta backup repository config"


@dataclass(frozen=True)
class Location:
    pack: str
    offset: int
    length: int


def _pack_key(pack: str) -> str:
    return f"packs/{pack[:2]}/{pack}"


def snapshot_name(now: float | None = None) -> str:
    """A new snapshot's name: UTC time to the millisecond (names sort by
    age) and a random suffix, e.g. ``2026-12-04T112428.016Z-6dd54c``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(3)}"


class Repository:
    """One repository: open it with the master key (``open`` or ``init``)."""

    def __init__(self, destination: Destination, master: bytes, repo_id: str) -> None:
        self.destination = destination
        self.master = master
        self.id = repo_id
        self.keyring = Keyring()
        self._index: dict[str, Location] | None = None

    # -- opening ----------------------------------------------------------------

    @classmethod
    def open(cls, destination: Destination, master: bytes, create: bool = False) -> Repository:
        """The repository at ``destination``; a new one if there is none and
        ``create``. A wrong master key is told apart from damage."""
        if not destination.exists("config"):
            if not create:
                raise BackupError(
                    f"{destination.describe()}: no backup repository here "
                    "(run 'estafeta backup create' first)"
                )
            repo_id = secrets.token_hex(16)
            body = json.dumps({"id": repo_id, "format": FORMAT}).encode()
            destination.put("config", _seal_master(master, body))
            repository = cls(destination, master, repo_id)
            repository.keyring.subkey(SERVER)
            repository.save_keyring()
            return repository
        body = _open_master(
            master,
            destination.get("config"),
            f"{destination.describe()}: the repository does not open with this key "
            "(wrong key file, or 'config' is damaged)",
        )
        data = json.loads(body)
        if data.get("format") != FORMAT:
            raise BackupError(
                f"{destination.describe()}: repository format {data.get('format')} "
                f"is not {FORMAT} (a newer estafeta made it?)"
            )
        repository = cls(destination, master, data["id"])
        repository.keyring = repository._read_keyring()
        return repository

    def _read_keyring(self) -> Keyring:
        if not self.destination.exists("keyring"):
            return Keyring()
        return Keyring.open(self.master, self.destination.get("keyring"))

    def save_keyring(self) -> None:
        """Write the keyring, merged with the stored one (``Keyring.merge``)."""
        self.keyring.merge(self._read_keyring())
        self.destination.put("keyring", self.keyring.seal(self.master))

    # -- sealed JSON of the server scope ---------------------------------------

    def _server_key(self) -> bytes:
        return self.keyring.subkey(SERVER)

    def put_json(self, key: str, value: object) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        subkey = self._server_key()
        name = objects.object_id(subkey, data)
        self.destination.put(key, name.encode() + b"\n" + objects.seal_named(subkey, name, data))

    def get_json(self, key: str) -> object:
        blob = self.destination.get(key)
        name, _, sealed = blob.partition(b"\n")
        data = objects.open_object(self.keyring.existing(SERVER), name.decode("ascii"), sealed)
        try:
            return json.loads(data)
        except ValueError:
            raise BackupError(f"{self.destination.describe()}: {key} is not JSON") from None

    # -- the index of packs -------------------------------------------------------

    def index(self) -> dict[str, Location]:
        """Object id -> where it is, from every index object (read once)."""
        if self._index is None:
            found: dict[str, Location] = {}
            for key in self.destination.list("index"):
                data = self.get_json(key)
                if not isinstance(data, dict):
                    raise BackupError(f"{self.destination.describe()}: {key} is not an index")
                packs = data["packs"]
                for name, pack, offset, length in data["objects"]:
                    found[name] = Location(packs[pack], offset, length)
            self._index = found
        return self._index

    def pack_names(self) -> set[str]:
        return {key.rsplit("/", 1)[1] for key in self.destination.list("packs")}

    def read_pack(self, pack: str) -> bytes:
        data = self.destination.get(_pack_key(pack))
        if hashlib.sha256(data).hexdigest() != pack:
            raise BackupError(
                f"{self.destination.describe()}: pack {pack} is damaged (its content does "
                "not match its name)"
            )
        return data

    def delete_pack(self, pack: str) -> None:
        self.destination.delete(_pack_key(pack))

    # -- snapshots --------------------------------------------------------------------

    def snapshots(self) -> list[str]:
        return sorted(key.split("/", 1)[1] for key in self.destination.list("snapshots"))

    def manifest(self, name: str) -> dict[str, object]:
        if name not in self.snapshots():
            raise BackupError(f"{self.destination.describe()}: no snapshot {name}")
        data = self.get_json(f"snapshots/{name}")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupError(f"{self.destination.describe()}: snapshot {name} is not readable")
        return data

    # -- locks ------------------------------------------------------------------------

    def locks(self) -> dict[str, dict[str, object]]:
        found: dict[str, dict[str, object]] = {}
        for key in self.destination.list("locks"):
            with contextlib.suppress(BackupError, ValueError):
                found[key] = json.loads(self.destination.get(key))
        return found

    @contextlib.contextmanager
    def lock(self, kind: str, wait: float = 3600.0) -> Iterator[None]:
        """Hold a ``kind`` lock ("create" or "prune") for the block."""
        key = f"locks/{secrets.token_hex(8)}"
        deadline = time.monotonic() + wait
        while True:
            self._write_lock(key, kind)
            others = {
                name: info for name, info in self.locks().items() if name != key and _alive(info)
            }
            if not others:
                break
            self.destination.delete(key)
            holder = next(iter(others.values()))
            described = f"{holder.get('kind')} on {holder.get('host')} (pid {holder.get('pid')})"
            if kind != "create" or time.monotonic() > deadline:
                raise BackupError(
                    f"{self.destination.describe()}: another backup process is running: "
                    f"{described}; try again when it is done"
                )
            time.sleep(min(10.0, max(0.1, deadline - time.monotonic())))
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(LOCK_REFRESH):
                with contextlib.suppress(BackupError):
                    self._write_lock(key, kind)

        thread = threading.Thread(target=refresh, name="backup-lock", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(BackupError):
                self.destination.delete(key)

    def _write_lock(self, key: str, kind: str) -> None:
        body = {"kind": kind, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        self.destination.put(key, json.dumps(body).encode())


def _alive(lock: dict[str, object]) -> bool:
    """Whether a lock's holder may still run: refreshed lately, and, if it
    ran on this host, its process is there (a killed run's lock is ignored
    at once, not after LOCK_STALE)."""
    try:
        age = time.time() - float(str(lock.get("time", 0)))
        pid = int(str(lock.get("pid", 0)))
    except ValueError:
        return False
    if age >= LOCK_STALE:
        return False
    if lock.get("host") == socket.gethostname() and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def _seal_master(master: bytes, body: bytes) -> bytes:
    from nacl import bindings

    nonce = secrets.token_bytes(objects.NONCE_SIZE)
    return nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        body, _CONFIG_AD, nonce, master
    )


def _open_master(master: bytes, blob: bytes, error: str) -> bytes:
    from nacl import bindings
    from nacl.exceptions import CryptoError

    try:
        return bytes(
            bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[objects.NONCE_SIZE :], _CONFIG_AD, blob[: objects.NONCE_SIZE], master
            )
        )
    except (CryptoError, ValueError):
        raise BackupError(error) from None


# -- writing packs --------------------------------------------------------------------


@dataclass
class Packer:
    """Collects sealed objects into packs and uploads them on ``workers``
    threads, at most ``workers + 1`` packs in memory at once; ``finish``
    waits for every upload and writes the index of this run's packs."""

    repository: Repository
    workers: int = 4
    # False: do not skip objects the repository's index lists (prune
    # rewrites such objects into new packs).
    use_index: bool = True
    added: dict[str, Location] = field(default_factory=dict)
    uploaded_octets: int = 0
    packs: list[str] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _pending: list[tuple[str, int, int]] = field(default_factory=list)
    _futures: list[Future[None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: threading.Semaphore | None = None
    _pool: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="backup-upload")
        self._slots = threading.Semaphore(self.workers + 1)

    def known(self, name: str) -> bool:
        return name in self.added or (self.use_index and name in self.repository.index())

    def add(self, name: str, blob: bytes) -> None:
        """Add one sealed object (thread-safe); a full pack goes out."""
        with self._lock:
            if self.known(name):
                return
            self._pending.append((name, len(self._buffer), len(blob)))
            self.added[name] = Location("", 0, 0)  # placed when the pack is named
            self._buffer += blob
            if len(self._buffer) < PACK_TARGET:
                return
            data, pending = bytes(self._buffer), self._pending
            self._buffer, self._pending = bytearray(), []
        self._send(data, pending)

    def _send(self, data: bytes, pending: list[tuple[str, int, int]]) -> None:
        assert self._pool is not None and self._slots is not None
        pack = hashlib.sha256(data).hexdigest()
        with self._lock:
            for name, offset, length in pending:
                self.added[name] = Location(pack, offset, length)
            self.packs.append(pack)
        self._slots.acquire()

        def upload() -> None:
            try:
                self.repository.destination.put(_pack_key(pack), data)
                with self._lock:
                    self.uploaded_octets += len(data)
            finally:
                assert self._slots is not None
                self._slots.release()

        future = self._pool.submit(upload)
        with self._lock:
            self._futures.append(future)
            done = [f for f in self._futures if f.done()]
            self._futures = [f for f in self._futures if not f.done()]
        for finished in done:
            finished.result()  # an upload that failed fails the run now

    def finish(self, write_index: bool = True) -> None:
        """Upload what is left and write this run's index (after every pack;
        ``write_index=False``: the caller writes one)."""
        assert self._pool is not None
        with self._lock:
            data, pending = bytes(self._buffer), self._pending
            self._buffer, self._pending = bytearray(), []
        if pending:
            self._send(data, pending)
        try:
            with self._lock:
                waiting = list(self._futures)
            for future in waiting:
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()
        if not self.added or not write_index:
            return
        numbers = {pack: number for number, pack in enumerate(self.packs)}
        entries = [
            [name, numbers[where.pack], where.offset, where.length]
            for name, where in self.added.items()
        ]
        self.repository.put_json(
            f"index/{snapshot_name()}", {"packs": self.packs, "objects": entries}
        )
        self.repository.index().update(self.added)

    def abort(self) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)
