"""A real PostgreSQL from Debian (postgresql-15) for the cluster tests.

Each test process starts its own server in a temporary directory, run as
the ``postgres`` user (initdb refuses root), listening on 127.0.0.1 with TLS
(a test CA's certificate) and on a Unix socket in its directory. The
estafeta role logs in with a password (SCRAM-SHA-256) over TLS only, as a
production node would; the tests' own administration goes over the socket.
The server gets SIGKILL when the test process dies (PR_SET_PDEATHSIG), so a
crashed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

BIN = Path("/usr/lib/postgresql/15/bin")
ROLE = "estafeta"
PASSWORD = "estafeta-test-password"


def until_parent_dies() -> None:
    """In the child before exec: SIGKILL when the test process dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Postgres:
    root: Path
    port: int
    ca_file: Path
    socket_dir: Path
    process: subprocess.Popen[bytes]
    created: int = 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the socket; its output."""
        result = subprocess.run(
            [str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres",
             "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"psql {sql!r}: {result.stderr}")
        return result.stdout.strip()

    def create_database(self, prefix: str = "estafeta") -> str:
        """A new empty database owned by the estafeta role: its name."""
        self.created += 1
        name = f"{prefix}_{os.getpid()}_{self.created}"
        self.psql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return name

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start(self) -> None:
        """Start it again after ``stop`` or a kill (same data, same port)."""
        self.process = _spawn(self.root, self.port, self.socket_dir)
        _wait(self)


def _run_as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, user="postgres", group="postgres", capture_output=True,
                          text=True, check=True, timeout=120, **kwargs)  # type: ignore[call-overload]  # fmt: skip


def _spawn(root: Path, port: int, socket_dir: Path) -> subprocess.Popen[bytes]:
    log = (root / "postgres.log").open("ab")
    try:
        return subprocess.Popen(
            [str(BIN / "postgres"), "-D", str(root / "data"), "-p", str(port),
             "-k", str(socket_dir), "-c", "listen_addresses=127.0.0.1"],
            user="postgres", group="postgres", stdout=log, stderr=log,
            preexec_fn=until_parent_dies,
        )  # fmt: skip
    finally:
        log.close()


def _wait(server: Postgres) -> None:
    deadline = time.monotonic() + 60
    while True:
        if server.process.poll() is not None:
            raise AssertionError(
                "postgres exited: " + (server.root / "postgres.log").read_text(errors="replace")
            )
        probe = subprocess.run(
            [str(BIN / "pg_isready"), "-q", "-h", str(server.socket_dir), "-p", str(server.port)],
            check=False,
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError("postgres did not start within 60 s")
        time.sleep(0.1)


@contextlib.contextmanager
def postgres_server(port: int) -> Iterator[Postgres]:
    """Initialise and start a server on ``port``; removed afterwards."""
    if not (BIN / "postgres").exists():
        raise AssertionError(f"{BIN}/postgres is missing: make deps-test installs postgresql-15")
    root = Path(tempfile.mkdtemp(prefix="estafeta-pg-"))
    account = pwd.getpwnam("postgres")
    try:
        os.chown(root, account.pw_uid, account.pw_gid)
        root.chmod(0o700)
        socket_dir = root / "socket"
        socket_dir.mkdir()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(root / "server.key"))
        cert.cert_chain_pems[0].write_to_path(str(root / "server.crt"))
        ca_file = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        for path in (socket_dir, root / "server.key", root / "server.crt", ca_file):
            os.chown(path, account.pw_uid, account.pw_gid)
        (root / "server.key").chmod(0o600)
        ca_file.chmod(0o644)
        password = root / "password"
        password.write_text(PASSWORD + "\n")
        password.chmod(0o600)
        os.chown(password, account.pw_uid, account.pw_gid)
        _run_as_postgres(
            [str(BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-E", "UTF8",
             "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=reject"],
        )  # fmt: skip
        data = root / "data"
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"ssl = on\nssl_cert_file = '{root / 'server.crt'}'\n"
                f"ssl_key_file = '{root / 'server.key'}'\n"
                "ssl_min_protocol_version = 'TLSv1.2'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        server = Postgres(root, port, ca_file, socket_dir, _spawn(root, port, socket_dir))
        try:
            _wait(server)
            server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
