"""compare.py's third side: estafeta on the cluster backend (docs/scale.md).

``Backends`` starts a private PostgreSQL 15 and moto's S3 with the test
suite's own helpers (server/tests/_postgres.py, _moto.py: temporary
directories, 127.0.0.1 high ports, SIGKILLed if this process dies), and
``ClusterEstafeta`` is ``_servers.Estafeta`` whose config has ``[store]
backend = "cluster"`` on them. Accounts and the P2 box go in the cluster
way, through the code ``estafeta user add`` and the CLI's store use on a
cluster node (``Estafeta.add_users`` and ``fill``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from _harness import free_port
from _load import IMAPClient
from _procs import tree
from _servers import DOMAIN, Estafeta, status_messages

TESTS = Path(__file__).resolve().parent.parent / "server" / "tests"
NODE = "bench1"
BUCKET = "estafeta-bench"
BODIES = ("s3", "database")
# The test helper runs PostgreSQL with fsync, synchronous_commit and
# full_page_writes off (tests need no durability) and 32 MB of shared
# buffers. The bench puts back what Debian's PostgreSQL 15 runs with: a
# commit, and so a cluster node's 250, waits for the WAL on disk, as the
# local backend's and the peer's 250s wait for their fsyncs.
POSTGRES_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
}


def _helper(name: str) -> ModuleType:
    """A module of server/tests (after bench's own modules on sys.path)."""
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))
    return importlib.import_module(name)


def _children_running(pattern: str) -> list[int]:
    """This process's descendants whose command line contains ``pattern``."""
    found = []
    for pid in tree(os.getpid()):
        with contextlib.suppress(OSError):
            if pattern.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                found.append(pid)
    return found


class Backends:
    """A private PostgreSQL 15 (one database for the node) and, for
    ``bodies = "s3"``, moto's S3 server with one bucket."""

    def __init__(self, root: Path, bodies: str = "s3") -> None:
        if bodies not in BODIES:
            raise ValueError(f"bodies is one of {BODIES}")
        self.root = root
        self.bodies = bodies
        self.postgres: Any = None  # _postgres.Postgres
        self.database = ""
        self.endpoint = ""
        self.region = ""
        self.moto_pid: int | None = None
        self.settings: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        postgres = _helper("_postgres")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres = self._stack.enter_context(postgres.postgres_server(free_port()))
            for name, value in POSTGRES_SETTINGS.items():
                self.postgres.psql(f"ALTER SYSTEM SET {name} = '{value}'")
            self.postgres.stop()  # shared_buffers needs a restart
            self.postgres.start()
            self.settings = {name: self.postgres.psql(f"SHOW {name}") for name in POSTGRES_SETTINGS}
            if self.settings != POSTGRES_SETTINGS:
                raise RuntimeError(f"PostgreSQL runs with {self.settings}, not {POSTGRES_SETTINGS}")
            self.database = self.postgres.create_database("bench")
            if self.bodies == "s3":
                moto = _helper("_moto")
                port = free_port()
                self.endpoint = self._stack.enter_context(moto.moto_server(self.root, port))
                self.region = moto.REGION
                moto.s3_admin(self.endpoint).create_bucket(Bucket=BUCKET)
                pids = _children_running(f"moto.server -H 127.0.0.1 -p {port}")
                self.moto_pid = pids[0] if pids else None
                credentials = self.credentials_file
                credentials.write_text(
                    f"access_key_id = {moto.KEY_ID}\nsecret_access_key = {moto.SECRET}\n"
                )
                credentials.chmod(0o600)
        except BaseException:
            self.stop()
            raise

    @property
    def credentials_file(self) -> Path:
        return self.root / "s3.ini"

    def store_section(self, node: str = NODE) -> str:
        """``[store]`` of a node of this cluster: PostgreSQL over TLS with
        the helper's CA (verify-full) and its SCRAM password in a 0600 file,
        as the test suite's nodes and a production node connect (the
        helper's pg_hba.conf takes TLS connections only)."""
        pg = self.postgres
        assert pg is not None, "start() first"
        section = (
            f'[store]\nbackend = "cluster"\nnode = "{node}"\n'
            f'[store.database]\nurl = "{pg.url(self.database)}"\n'
            f'password_file = "{pg.root / "password"}"\n'
            f'tls = "verify-full"\nca_file = "{pg.ca_file}"\n'
        )
        if self.bodies == "database":
            return section + '[store.objects]\nkind = "database"\n'
        return section + (
            f'[store.objects]\nkind = "s3"\nbucket = "{BUCKET}"\nendpoint = "{self.endpoint}"\n'
            f'region = "{self.region}"\npath_style = true\n'
            f'credentials_file = "{self.credentials_file}"\n'
        )

    def pid_groups(self) -> dict[str, list[int]]:
        groups = {"postgresql": tree(self.postgres.process.pid) if self.postgres else []}
        if self.moto_pid is not None:
            groups["moto"] = tree(self.moto_pid)
        return groups

    def versions(self) -> dict[str, str]:
        found: dict[str, str] = {}
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            binary = _helper("_postgres").BIN / "postgres"
            found["postgresql"] = subprocess.run(
                [str(binary), "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
        if self.bodies == "s3":
            with contextlib.suppress(ImportError):
                found["moto"] = importlib.import_module("moto").__version__
        return found

    def stop(self) -> None:
        self._stack.close()
        self.postgres = None
        self.moto_pid = None


@dataclass
class ClusterEstafeta(Estafeta):
    """One ``estafeta serve`` whose store is a cluster node's."""

    label: str = "estafeta (cluster)"
    backends: Backends | None = field(default=None, repr=False)

    def store_section(self) -> str:
        assert self.backends is not None
        return self.backends.store_section()

    def maildir(self, address: str) -> Path:
        raise NotImplementedError("a cluster node keeps no Maildir: see counter()")

    def index_db(self, address: str) -> Path:
        """The node's replica of the account's index (data_dir/replicas)."""
        local = address.split("@")[0]
        return self.root / "data" / "replicas" / DOMAIN / local / "index.db"

    @contextlib.contextmanager
    def counter(self, address: str, password: str) -> Iterator[Callable[[], int]]:
        """P1's "visible" check on the cluster. A delivered message has no
        file here: it is visible when the serving node's replica of the
        account's index lists it, and that replica is what every IMAP read
        runs on. So the check asks the node over IMAP, ``STATUS INBOX
        (MESSAGES)``, the question a client's new-mail check asks: it reads
        the replica's index only (no body, no database round trip), the
        cheapest check that goes through the server's own read path. One
        connection, logged in before the clock and the CPU count start (an
        argon2 verification is not ingest work); compare.py polls it only
        after the last 250, as it counts Maildir files for the others, so
        its few STATUS commands are all it adds to the node's CPU. That the
        bodies are readable (from the node's cache or the object store) is
        checked after the clock, with a FETCH of the last message's body."""
        client = IMAPClient(self.imap_port)
        try:
            client.login(address, password)
            yield lambda: status_messages(client)
        finally:
            client.close()

    def pid_groups(self) -> dict[str, list[int]]:
        """The processes doing the cluster side's work: the node, and the
        PostgreSQL and moto it needs (both on this machine, so their CPU is
        the cluster's cost here; a real deployment runs them elsewhere)."""
        groups = {"estafeta": super().pids()}
        if self.backends is not None:
            groups.update(self.backends.pid_groups())
        return groups

    def pids(self) -> list[int]:
        return [pid for group in self.pid_groups().values() for pid in group]

    def memory_pids(self) -> list[int]:
        return super().pids()
