"""What a snapshot holds: data_dir divided into scopes, read consistently.

Every file under ``data_dir`` belongs to one *scope*: an account (its mail
and index, its Sieve scripts, its junk-filter statistics, what ``user del``
kept of it under ``deleted/``), or the server (accounts.db, the queue, DKIM
keys, the SRS secret, greylisting, Sieve's memory, everything else). A
scope's objects are sealed with its subkey, so erasing an account's
subkey erases it from every snapshot (``objects.Keyring``).

Consistency while mail keeps flowing, without pausing delivery:

* A SQLite database is copied with SQLite's online backup API in one step
  (``copy_database``): one read transaction, so the copy is the database at
  one instant; in WAL mode the writers go on meanwhile.
* An account's message files are those its index copy lists, read after
  the copy. Files are never modified, so each is whole; one removed since
  (expunged) has its row dropped from the copy; one moved since (a mailbox
  renamed) is found by its unique name. A message acknowledged after the
  copy is in the next snapshot; one acknowledged before is in this one: its
  file, or, if its file was not yet settled, its octets in the index's
  ``pending`` table, written out when the restored account is opened
  (``estafeta.store.ingest``).
* The queue likewise: queue.db copied, then the files of the copy's rows;
  a message delivered since (file gone) is dropped from the copy.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from estafeta.address import split_address
from estafeta.backup.objects import BackupError
from estafeta.backup.repository import SERVER
from estafeta.config import Config
from estafeta.sieve.scripts import ScriptStore
from estafeta.spam.store import file_name as spam_file_name
from estafeta.store import maildir

# Never backed up: SQLite's side files (the copy is made through the API),
# files being written, the backup's own state.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
OWN_DIR = "backup"  # data_dir/backup: the cache and the temporary copies
# data_dir/pre-upgrade: the Ansible role's database copies taken before an
# upgrade (roles/estafeta/files/snapshot_databases.py); not backed up.
PRE_UPGRADE_DIR = "pre-upgrade"
CONFIG_PREFIX = "@config/"  # the configuration file, which lives outside data_dir


@dataclass
class Source:
    """One thing to store: a file to read (``path``) or a database copy
    (``copy``), under the name ``name`` (relative to data_dir)."""

    name: str
    path: Path
    kind: str = "f"  # "f" a file, "d" a directory, "db" a SQLite copy made already
    cacheable: bool = True  # immutable files: the cache may skip reading them
    mode: int | None = None  # a copy's: the original's permission bits
    # A message file listed in a database copy: (the copy, "index" or
    # "queue", what names it there). If the file vanishes before it is read
    # (expunged, delivered), ``forget_vanished`` takes it out of the copy,
    # which is stored after the files.
    listed_in: tuple[Path, str, str] | None = None


@dataclass
class Scope:
    name: str  # SERVER or an address
    sources: list[Source] = field(default_factory=list)
    dropped: int = 0  # index or queue rows whose file vanished after the copy


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite database ``source`` in ``target``
    (a single file, no WAL), made with the online backup API."""
    target.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: cannot open the database: {exc}") from None
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: all in one step, one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.commit()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: cannot copy the database: {exc}") from None
    finally:
        src.close()


def _walk(root: Path, skip: set[Path]) -> Iterator[tuple[Path, os.stat_result, bool]]:
    """(path, stat, is_dir) below root, directories before their content,
    not following symbolic links, leaving out ``skip``."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BackupError(f"{directory}: cannot list: {exc.strerror}") from None
        for entry in entries:
            path = Path(entry.path)
            if path in skip:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if entry.is_dir(follow_symlinks=False):
                yield path, info, True
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                yield path, info, False


class Planner:
    """Divides ``config.data_dir`` into scopes; copies databases into
    ``work`` (a directory under data_dir/backup) as it goes."""

    def __init__(self, config: Config, work: Path) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.work = work
        self._copies = 0
        self.scripts = ScriptStore(config.sieve_dir, max_script_size=1, max_scripts=1)

    def _copy(self, database: Path) -> Path:
        self._copies += 1
        target = self.work / f"{self._copies}.db"
        copy_database(database, target)
        return target

    def _database(self, database: Path) -> Source:
        """A source for a consistent copy of ``database``."""
        try:
            mode = os.stat(database).st_mode & 0o7777
        except OSError:
            mode = 0o600
        return Source(self._name(database), self._copy(database), "db", False, mode)

    def _name(self, path: Path) -> str:
        return path.relative_to(self.data_dir).as_posix()

    def accounts(self, accounts_copy: Path) -> list[str]:
        conn = sqlite3.connect(accounts_copy)
        try:
            return [row[0] for row in conn.execute("SELECT address FROM accounts ORDER BY address")]
        except sqlite3.Error as exc:
            raise BackupError(
                f"{self.config.accounts_db}: not an accounts database: {exc}"
            ) from None
        finally:
            conn.close()

    def account_paths(self, address: str) -> tuple[Path, Path, Path]:
        """(mail folder, Sieve folder, junk-filter file) of an account."""
        local, domain = split_address(address)
        return (
            self.config.mail_dir / domain / maildir.escape(local),
            self.scripts.account_dir(address),
            self.config.spam_dir / spam_file_name(address),
        )

    def plan(self) -> list[Scope]:
        """Every scope, its databases copied: the server scope first."""
        own = self.data_dir / OWN_DIR
        server = Scope(SERVER)
        scopes: dict[str, Scope] = {}
        claimed: set[Path] = {own, self.data_dir / PRE_UPGRADE_DIR}
        accounts_copy: Path | None = None
        if self.config.accounts_db.is_file():
            source = self._database(self.config.accounts_db)
            accounts_copy = source.path
            server.sources.append(source)
            claimed.add(self.config.accounts_db)
        for address in self.accounts(accounts_copy) if accounts_copy else []:
            scope = scopes[address] = Scope(address)
            mail, sieve, spam = self.account_paths(address)
            if mail.is_dir():
                self._mail(scope, mail)
            if sieve.is_dir():
                self._plain(scope, sieve, claimed)
            if spam.is_file():
                scope.sources.append(self._database(spam))
            claimed |= {mail, sieve, spam}
        deleted = self.data_dir / "deleted"
        if deleted.is_dir():
            for kept in sorted(deleted.iterdir()):
                address = kept.name.rsplit(".", 1)[0]
                if "@" not in address or not kept.is_dir():
                    continue
                scope = scopes.setdefault(address, Scope(address))
                self._plain(scope, kept, claimed)
                claimed.add(kept)
        queue_dir = self.config.queue_dir
        if (queue_dir / "queue.db").is_file():
            self._queue(server, queue_dir)
            claimed.add(queue_dir)
        self._plain(server, self.data_dir, claimed, top=True)
        if self.config.path.is_file():
            server.sources.append(
                Source(CONFIG_PREFIX + self.config.path.name, self.config.path, cacheable=False)
            )
        return [server, *scopes.values()]

    def _plain(self, scope: Scope, root: Path, claimed: set[Path], top: bool = False) -> None:
        """Every directory and file below ``root`` (and root itself), SQLite
        databases through ``copy_database``."""
        if not top:
            scope.sources.append(Source(self._name(root), root, "d"))
        for path, _info, is_dir in _walk(root, claimed):
            name = path.name
            if is_dir:
                scope.sources.append(Source(self._name(path), path, "d"))
            elif name.endswith(SIDE_SUFFIXES) or name.startswith((".tmp-", ".write-test.")):
                continue
            elif name.endswith(".db") and _is_sqlite(path):
                scope.sources.append(self._database(path))
            else:
                scope.sources.append(Source(self._name(path), path, cacheable=False))

    def _mail(self, scope: Scope, account: Path) -> None:
        """An account's mail: its index copied, then the files it lists."""
        index_db = account / "index.db"
        database = self._database(index_db) if index_db.is_file() else None
        copy = database.path if database else None
        listed: dict[str, None] = {}
        if copy is not None:
            conn = sqlite3.connect(copy)
            try:
                pending = {row[0] for row in conn.execute("SELECT file FROM pending")}
                for (file,) in conn.execute("SELECT file FROM messages"):
                    if file not in pending:
                        listed[file] = None
            except sqlite3.Error as exc:
                raise BackupError(f"{index_db}: not a mail index: {exc}") from None
            finally:
                conn.close()
        scope.sources.append(Source(self._name(account), account, "d"))
        found: dict[str, tuple[Path, str]] = {}  # file name -> (path, relative)
        for path, _info, is_dir in _walk(account, set()):
            relative = path.relative_to(account).as_posix()
            if is_dir:
                scope.sources.append(Source(self._name(path), path, "d"))
                continue
            parent = path.parent.name
            if parent in ("new", "cur"):
                found[path.name] = (path, relative)
            elif parent != "tmp" and not path.name.startswith("index.db"):
                scope.sources.append(Source(self._name(path), path, cacheable=False))
        gone: list[str] = []
        for file in listed:
            where = found.get(file.rsplit("/", 1)[-1])
            if where is None:
                gone.append(file)  # expunged after the copy was made
                continue
            # Under the name the index copy knows (a rename since moved it).
            scope.sources.append(
                Source(
                    self._name(account / file),
                    where[0],
                    listed_in=(database.path, "index", file) if database else None,
                )
            )
        if database is not None:
            if gone:
                _forget_messages(database.path, gone)
                scope.dropped += len(gone)
            scope.sources.append(database)

    def _queue(self, server: Scope, queue_dir: Path) -> None:
        database = self._database(queue_dir / "queue.db")
        conn = sqlite3.connect(database.path)
        try:
            ids = [row[0] for row in conn.execute("SELECT id FROM messages")]
        except sqlite3.Error as exc:
            raise BackupError(f"{queue_dir / 'queue.db'}: not a queue database: {exc}") from None
        finally:
            conn.close()
        server.sources.append(Source(self._name(queue_dir), queue_dir, "d"))
        messages = queue_dir / "messages"
        server.sources.append(Source(self._name(messages), messages, "d"))
        gone = []
        for message_id in ids:
            path = messages / f"{message_id}.eml"
            if path.is_file():
                listed = (database.path, "queue", message_id)
                server.sources.append(Source(self._name(path), path, listed_in=listed))
            else:
                gone.append(message_id)  # delivered or bounced after the copy
        if gone:
            _forget_queued(database.path, gone)
            server.dropped += len(gone)
        server.sources.append(database)


def forget_vanished(sources: list[Source]) -> int:
    """Take the files of ``sources`` (which vanished after their database
    was copied) out of those copies; how many."""
    by_copy: dict[tuple[Path, str], list[str]] = {}
    for source in sources:
        if source.listed_in is not None:
            copy, kind, key = source.listed_in
            by_copy.setdefault((copy, kind), []).append(key)
    for (copy, kind), keys in by_copy.items():
        (_forget_messages if kind == "index" else _forget_queued)(copy, keys)
    return sum(len(keys) for keys in by_copy.values())


def _forget_queued(copy: Path, ids: list[str]) -> None:
    conn = sqlite3.connect(copy)
    try:
        with conn:
            conn.executemany("DELETE FROM entries WHERE message_id = ?", [(i,) for i in ids])
            conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
    finally:
        conn.close()


def _forget_messages(copy: Path, files: list[str]) -> None:
    conn = sqlite3.connect(copy)
    try:
        with conn:
            conn.executemany("DELETE FROM messages WHERE file = ?", [(f,) for f in files])
    finally:
        conn.close()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
