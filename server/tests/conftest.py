"""Fixtures: a real estafeta process on loopback, configured in a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from _moto import KEY_ID, REGION, SECRET, moto_server, s3_admin
from _pebble import Pebble
from _ports import free_port
from _postgres import Postgres, postgres_server

from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop, end_transports
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig
from estafeta.cluster.url import parse_url
from estafeta.config import load
from estafeta.server import Server
from estafeta.store import Store, index

DOMAIN = "example.test"
PASSWORD = "correct horse battery staple"


# -- the store backend the suite runs against (issue 23) -----------------------
# ``--store-backend cluster`` (or ESTAFETA_TEST_STORE=cluster) gives every
# Instance a [store] of its own on this process's PostgreSQL and moto: a new
# database and bucket each. Tests of the local store's files are marked
# ``local_store`` and deselected then (not skipped: they do not count).


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-backend",
        choices=("local", "cluster"),
        default=os.environ.get("ESTAFETA_TEST_STORE", "local"),
        help="the store backend of the servers the tests start (default local)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--store-backend") != "cluster":
        return
    kept = [item for item in items if item.get_closest_marker("local_store") is None]
    deselected = [item for item in items if item.get_closest_marker("local_store") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


class ClusterStores:
    """New databases and buckets for Instances, on one PostgreSQL and one moto."""

    def __init__(self, postgres: Postgres, moto_s3: str) -> None:
        self.postgres = postgres
        self.moto_s3 = moto_s3

    def section(self, root: Path) -> str:
        name = self.postgres.create_database()
        bucket = "i-" + hashlib.sha256(str(root).encode()).hexdigest()[:20]
        s3_admin(self.moto_s3).create_bucket(Bucket=bucket)
        credentials = root / "s3.ini"
        credentials.write_text(f"access_key_id = {KEY_ID}\nsecret_access_key = {SECRET}\n")
        credentials.chmod(0o600)
        return (
            f'[store]\nbackend = "cluster"\nnode = "n-{bucket[2:10]}"\n'
            f'[store.database]\nurl = "{self.postgres.url(name)}"\n'
            f'password_file = "{self.postgres.root / "password"}"\n'
            f'ca_file = "{self.postgres.ca_file}"\npool_size = 4\n'
            f'[store.objects]\nbucket = "{bucket}"\nprefix = "mail"\n'
            f'endpoint = "{self.moto_s3}"\nregion = "{REGION}"\npath_style = true\n'
            f'credentials_file = "{credentials}"\n'
        )


CLUSTER: ClusterStores | None = None


@pytest.fixture(scope="session", autouse=True)
def store_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend of this run; with "cluster", every Instance gets a cluster store."""
    global CLUSTER
    backend = str(request.config.getoption("--store-backend"))
    if backend == "cluster":
        CLUSTER = ClusterStores(
            request.getfixturevalue("postgres"), request.getfixturevalue("moto_s3")
        )
    yield backend
    CLUSTER = None


def make_tls(
    directory: Path,
    names: Sequence[str] = ("mx.example.test", "127.0.0.1"),
    *,
    with_ca: bool = False,
) -> tuple[str, trustme.CA]:
    """A test CA and a certificate for ``names`` (mx.example.test / 127.0.0.1),
    written to ``directory`` (``with_ca``: the CA after it in cert.pem, as a
    chain); returns the [tls] config section and the CA."""
    ca = trustme.CA()
    # fetchmail checks the subject CN as well as the SANs.
    cert = ca.issue_cert(*names, common_name="mx.example.test")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    chain = cert.cert_chain_pems[0].bytes() + (ca.cert_pem.bytes() if with_ca else b"")
    (directory / "cert.pem").write_bytes(chain)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    section = f'[tls]\ncert = "{directory / "cert.pem"}"\nkey = "{directory / "key.pem"}"\n'
    return section, ca


def tls_instance(root: Path, *ports: str, extra_config: str = "", **fields: Any) -> Instance:
    """An Instance under ``root`` with a test CA's certificate (``make_tls``;
    the CA is ``root / "ca.pem"``), the SMTP port and each of ``ports``
    (Instance field names: "imap_port", "imaps_port", ...) on a free port."""
    section, _ca = make_tls(root)
    given: dict[str, Any] = {name: free_port() for name in ports}
    return Instance(root, free_port(), extra_config=section + extra_config, **given, **fields)


# rfc4467 commands imaplib does not know, for the tests that send them.
for _name in ("GENURLAUTH", "URLFETCH", "RESETKEY"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))


def estafeta(
    config: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"estafeta {' '.join(args)} failed: {result.stderr}")
    return result


class Loader:
    """A ``load`` callable that counts its calls."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


# Every Instance started in this test process, in order: suites check their
# logs (tests/security asserts that no server logged a traceback).
STARTED: list[Instance] = []


@dataclass
class Instance:
    """An estafeta data dir + config, and the server process when running."""

    root: Path
    port: int
    imap_port: int = 0
    imaps_port: int = 0
    pop3_port: int = 0
    pop3s_port: int = 0
    submission_port: int = 0
    submissions_port: int = 0
    http_port: int = 0
    https_port: int = 0
    extra_config: str = ""
    # Extra lines for the [limits] and [auth] tables written here (TOML
    # allows a table only once, so extra_config cannot add to them).
    limits_config: str = ""
    auth_config: str = ""
    process: subprocess.Popen[bytes] | None = None
    # The server runs in this process instead (a test's own thread).
    in_process: bool = False
    log_path: Path = field(init=False)
    # [store] of a cluster run (--store-backend cluster), made once per Instance.
    store_section: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.log_path = self.root / "estafeta.log"

    @property
    def config(self) -> Path:
        return self.root / "estafeta.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def write_config(self) -> None:
        self.config.write_text(
            f'hostname = "mx.{DOMAIN}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'domains = ["{DOMAIN}", "other.test"]\n'
            "[listen]\n"
            f'smtp = ["127.0.0.1:{self.port}"]\n'
            + (f'imap = ["127.0.0.1:{self.imap_port}"]\n' if self.imap_port else "")
            + (f'imaps = ["127.0.0.1:{self.imaps_port}"]\n' if self.imaps_port else "")
            + (f'pop3 = ["127.0.0.1:{self.pop3_port}"]\n' if self.pop3_port else "")
            + (f'pop3s = ["127.0.0.1:{self.pop3s_port}"]\n' if self.pop3s_port else "")
            + (
                f'submission = ["127.0.0.1:{self.submission_port}"]\n'
                if self.submission_port
                else ""
            )
            + (
                f'submissions = ["127.0.0.1:{self.submissions_port}"]\n'
                if self.submissions_port
                else ""
            )
            + (f'http = ["127.0.0.1:{self.http_port}"]\n' if self.http_port else "")
            + (f'https = ["127.0.0.1:{self.https_port}"]\n' if self.https_port else "")
            + "[limits]\n"
            # Small defaults for tests; limits_config may set them itself.
            + ("" if "max_message_size" in self.limits_config else "max_message_size = 1048576\n")
            + ("" if "max_recipients" in self.limits_config else "max_recipients = 5\n")
            + self.limits_config
            + "[log]\n"
            'level = "info"\n'
            # Cheap hashes keep the suite fast; production keeps the defaults.
            "[auth]\n"
            + ("" if "allow_plaintext" in self.auth_config else "allow_plaintext = false\n")
            + "argon2_time_cost = 1\n"
            "argon2_memory_cost = 1024\n"
            "argon2_parallelism = 1\n"
            + self.auth_config
            # No DNS on the test machine: SPF/DKIM/DMARC are tested with a
            # real DNS server in test_deliverability.py and with mocks.
            + ("" if "[inbound]" in self.extra_config else "[inbound]\nauthenticate = false\n")
            # Greylisting and the pregreet pause are tested where a test
            # asks for them (test_spam_*, test_smtp_screen).
            + ("" if "[greylist]" in self.extra_config else "[greylist]\nenabled = false\n")
            + ("" if "[screen]" in self.extra_config else "[screen]\ngreeting_pause = 0\n")
            + self.extra_config
            + self._store()
        )

    def _store(self) -> str:
        if CLUSTER is None or "[store]" in self.extra_config:
            return ""
        if not self.store_section:
            self.root.mkdir(parents=True, exist_ok=True)
            self.store_section = CLUSTER.section(self.root)
        return self.store_section

    @property
    def cluster(self) -> bool:
        return bool(self.store_section)

    def _local_only(self, what: str) -> None:
        if self.cluster:
            raise AssertionError(f"{what} reads the local store's files: mark the test local_store")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return estafeta(self.config, *args, stdin=stdin)

    def add_user(self, address: str) -> None:
        self.cli("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")

    def start(self) -> None:
        assert self.process is None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "estafeta", "-c", str(self.config), "serve"],
            stdout=log,
            stderr=log,
        )
        log.close()
        if not any(started is self for started in STARTED):
            STARTED.append(self)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("server did not start listening")
        # SMTP answers first; wait for every other listener too.
        for port in (
            self.imap_port,
            self.imaps_port,
            self.pop3_port,
            self.pop3s_port,
            self.submission_port,
            self.submissions_port,
            self.http_port,
            self.https_port,
        ):
            while port:
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not start listening on {port}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def imap_opens(self, user: str, secret: str) -> bool:
        """Whether ``secret`` logs ``user`` in over IMAP (the connection is closed)."""
        with imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30) as client:
            try:
                client.login(user, secret)
            except imaplib.IMAP4.error:
                return False
            client.logout()
            return True

    def account_dir(self, address: str) -> Path:
        self._local_only("account_dir")
        local, domain = address.split("@")
        return self.data_dir / "mail" / domain / local

    def files(self, address: str, mailbox_dir: str = "") -> list[Path]:
        """The account's message files in new/ and cur/, once every message
        acknowledged so far has its file there (see ``settled``)."""
        self.settled(address)
        folder = self.account_dir(address) / mailbox_dir
        return sorted(p for sub in ("new", "cur") for p in (folder / sub).glob("*"))

    def settled(self, address: str, timeout: float = 10.0) -> None:
        """Wait until no message of the account waits in the index for its
        file (estafeta.store.ingest: the server moves files into new/ a few
        milliseconds after the 250, several at a time). A stopped server
        settles nothing: then the files are as it left them. A cluster
        store has no such step: its rows are committed before the 250."""
        if self.cluster:
            return
        path = self.account_dir(address) / "index.db"
        deadline = time.monotonic() + timeout
        while path.exists() and (self.process is not None or self.in_process):
            conn = index.connect(path)
            try:
                left = conn.execute("SELECT count(*) FROM pending").fetchone()[0]
            finally:
                conn.close()
            if not left:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{left} messages of {address} not settled")
            time.sleep(0.01)

    def message_bodies(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """The messages of a mailbox, whichever the backend: the files of the
        local store (once settled), or what a cluster node's store reads from
        PostgreSQL and the object store, in UID order."""
        if not self.cluster:
            from estafeta.store.maildir import mailbox_dir

            return [path.read_bytes() for path in self.files(address, mailbox_dir(mailbox))]
        from estafeta.cluster_node import cli_store

        with cli_store(load(self.config)) as store, store.reader(address) as reader:
            box = reader.mailbox(mailbox)
            if box is None:
                return []
            bodies = []
            for row in reader.messages(box.id):
                file = reader.message_file(box.id, row.uid)
                assert file is not None, f"{address} {mailbox} UID {row.uid} has no body"
                bodies.append(reader.content(file))
            return bodies

    def cluster_sql(self, query: str) -> str:
        """A query on this Instance's cluster database, as the superuser; its
        output (psql -A -t)."""
        assert CLUSTER is not None and self.cluster, "not a cluster Instance"
        database = load(self.config).store.database
        assert database is not None
        return CLUSTER.postgres.psql(query, database.url.database)

    def message_count(self, address: str, mailbox: str = "INBOX") -> int:
        """How many messages a mailbox holds, whichever the backend (its rows:
        no body is read)."""
        return len(self.index_rows(address, mailbox))

    def index_rows(self, address: str, mailbox: str = "INBOX") -> list[index.MessageRow]:
        if self.cluster:
            from estafeta.cluster_node import cli_store

            with cli_store(load(self.config)) as store, store.reader(address) as reader:
                box = reader.mailbox(mailbox)
                return [] if box is None else list(reader.messages(box.id))
        self.settled(address)  # callers read the rows' files next
        path = self.account_dir(address) / "index.db"
        if not path.exists():
            return []  # nothing was ever delivered to this account
        return _mailbox_rows(index.connect(path), mailbox)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    """Debian's pebble and its DNS on 127.0.0.1 (_pebble.py), stopped after the test."""
    server = Pebble.start(tmp_path / "pebble")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path, free_port())
    inst.write_config()
    yield inst
    if inst.process is not None:
        inst.kill()


@pytest.fixture
def server(instance: Instance) -> Instance:
    """A running server with accounts alice@ and bob@example.test."""
    instance.add_user(f"alice@{DOMAIN}")
    instance.add_user(f"bob@{DOMAIN}")
    instance.start()
    return instance


def imap_raw(client: imaplib.IMAP4, tag: str, line: str) -> list[bytes]:
    """Send one IMAP command line past imaplib (for what it refuses or
    cannot send); the lines up to its tagged response."""
    client.send(f"{tag} {line}\r\n".encode())
    lines = []
    while True:
        got = client.readline()
        assert got, "connection closed"
        lines.append(got.rstrip(b"\r\n"))
        if got.startswith(tag.encode() + b" "):
            return lines


def store_rows(store: Store, address: str, mailbox: str = "INBOX") -> list[index.MessageRow]:
    """The index rows of one mailbox of ``store`` (a Store in this process)."""
    return _mailbox_rows(store.open_index(address), mailbox)


def _mailbox_rows(conn: sqlite3.Connection, mailbox: str) -> list[index.MessageRow]:
    """The rows of ``mailbox`` read through ``conn``, which is then closed."""
    try:
        box = index.mailbox(conn, mailbox)
        assert box is not None
        return index.messages(conn, box.id)
    finally:
        conn.close()


class InProcess:
    """``estafeta serve`` in this process (a thread with its own loop), so
    a test can reach into it (the greylist's clock, a retention run)."""

    def __init__(self, config: Path, prepare: Callable[[Server], None] | None = None) -> None:
        self.config = config
        # Called with the Server before it starts (a test's own resolver, say).
        self.prepare = prepare
        self.server: Server | None = None
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.server = Server(load(self.config))
        if self.prepare is not None:
            self.prepare(self.server)
        await self.server.start()
        self.ready.set()
        try:
            await self.stop_event.wait()
        finally:
            await self.server.stop()

    def __enter__(self) -> InProcess:
        self.thread.start()
        assert self.ready.wait(30), "server did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


# -- the cluster backend's servers (issue 23): PostgreSQL and moto's S3 --------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 of this test process (_postgres.py), TLS on 127.0.0.1."""
    with postgres_server(free_port()) as server:
        yield server


@pytest.fixture
def database(postgres: Postgres) -> DatabaseConfig:
    """``[store.database]`` of a new empty database on ``postgres``, as a
    node would be configured: TLS verify-full with the test CA, the
    password in a 0600 file."""
    name = postgres.create_database()
    return DatabaseConfig(
        url=parse_url(postgres.url(name)),
        password_file=postgres.root / "password",
        tls="verify-full",
        ca_file=postgres.ca_file,
        pool_size=4,
    )


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 in server mode for this test process: its URL."""
    with moto_server(tmp_path_factory.mktemp("moto"), free_port()) as url:
        yield url


@pytest.fixture
def bucket(moto_s3: str, tmp_path: Path) -> ObjectsConfig:
    """``[store.objects]`` of a new empty bucket on ``moto_s3``."""
    name = "b-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    s3_admin(moto_s3).create_bucket(Bucket=name)
    credentials = tmp_path / "s3.ini"
    credentials.write_text(f"access_key_id = {KEY_ID}\nsecret_access_key = {SECRET}\n")
    credentials.chmod(0o600)
    return ObjectsConfig(
        kind="s3", bucket=name, prefix="mail", endpoint=moto_s3, region=REGION,
        path_style=True, credentials_file=credentials,
    )  # fmt: skip


T = TypeVar("T")


def run_drained(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, ended as an IoLoop ends: connections still closing
    (a TLS close_notify to PostgreSQL in flight after a pool's close or a
    refused connect) get up to a second, then are cut. With asyncio.run the
    loop was closed under them and the socket left to the garbage collector,
    which warned in whichever test it ran in (CI ci18)."""
    with asyncio.Runner() as runner:
        try:
            return runner.run(coro)
        finally:
            end_transports(runner.get_loop())


@pytest.fixture
def ioloop() -> Iterator[IoLoop]:
    """A started cluster IoLoop (estafeta.cluster.ioloop), stopped afterwards."""
    with IoLoop() as loop:
        yield loop


# A cluster node's pieces for tests of shared state: its IoLoop and its pool.
Node = tuple[IoLoop, Database]


def open_db(io: IoLoop, config: DatabaseConfig) -> Database:
    """An opened (and migrated) pool on ``io``."""
    db = Database(config)
    io.run(db.open())
    return db


@pytest.fixture
def two_nodes(database: DatabaseConfig, ioloop: IoLoop) -> Iterator[tuple[Node, Node]]:
    """Two nodes on one new database, each with its IoLoop and pool."""
    with IoLoop("second") as other:
        pools = [open_db(ioloop, database), open_db(other, database)]
        try:
            yield (ioloop, pools[0]), (other, pools[1])
        finally:
            ioloop.run(pools[0].close())
            other.run(pools[1].close())
