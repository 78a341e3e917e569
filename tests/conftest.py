"""Fixtures for the tests of the modules in library/.

- ``run_module``: run a module's ``main()`` in-process under given arguments
  and return what it passed to ``exit_json``/``fail_json``; ``run_ansible``:
  the same through the ``ansible`` command;
- ``knot``: Debian's knotd serving zones on 127.0.0.1 and a free port;
- ``silent_nameserver``: a UDP port that swallows queries (DNS timeouts);
- ``estafeta_server``: a real estafeta with submission, IMAP and TLS from a
  test CA, and the accounts alice@ and bob@example.test;
- ``doctor_standin``: an ``estafeta`` that answers ``doctor --json`` with a
  given report (tests/doctor_standin.py).

tests/ is a package (tests/__init__.py), so this module is ``tests.conftest``
and does not shadow server/tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import ansible.module_utils
import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
import trustme
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from tests.doctor_standin import StandIn

_LIBRARY = Path(__file__).resolve().parent.parent / "library"
_MODULE_UTILS = _LIBRARY.parent / "module_utils"


# Ports come from server/tests/_ports.py: a block per pytest-xdist worker.
_SERVER_TESTS = Path(__file__).resolve().parent.parent / "server" / "tests"
if str(_SERVER_TESTS) not in sys.path:
    sys.path.insert(0, str(_SERVER_TESTS))
from _ports import free_port  # noqa: E402

_free_port = free_port


def _wait_tcp(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}: {log.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


# -- running a module ----------------------------------------------------------------


class _ModuleExit(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result)
        self.result = result


def _exit_json(self: AnsibleModule, **kwargs: Any) -> None:
    kwargs.setdefault("changed", False)
    kwargs.setdefault("failed", False)
    raise _ModuleExit(kwargs)


def _fail_json(self: AnsibleModule, msg: str, **kwargs: Any) -> None:
    kwargs.pop("exception", None)
    raise _ModuleExit({**kwargs, "msg": msg, "failed": True})


@pytest.fixture(scope="session")
def library_module() -> Callable[[str], Any]:
    """Import library/<name>.py (once) and return the Python module."""
    loaded: dict[str, Any] = {}

    # What ansible.cfg's module_utils= does when Ansible packs a module.
    if str(_MODULE_UTILS) not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(_MODULE_UTILS))

    def load(name: str) -> Any:
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, _LIBRARY / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load


@pytest.fixture
def run_module(library_module: Callable[[str], Any]) -> Callable[..., dict[str, Any]]:
    """``run_module(name, args, check_mode=False)`` runs library/<name>.py's
    main() and returns the result dict (``failed`` is always set)."""

    def run(name: str, args: dict[str, Any], *, check_mode: bool = False) -> dict[str, Any]:
        module = library_module(name)
        params = dict(args, _ansible_check_mode=check_mode)
        with (
            patch_module_args(params),
            mock.patch.object(AnsibleModule, "exit_json", _exit_json),
            mock.patch.object(AnsibleModule, "fail_json", _fail_json),
        ):
            try:
                module.main()
            except _ModuleExit as done:
                return done.result
        raise AssertionError(f"{name}.main() returned without exit_json or fail_json")

    return run


def run_ansible(
    name: str, args: dict[str, Any], tmp_path: Path, *, check_mode: bool = False
) -> tuple[int, dict[str, Any]]:
    """``ansible localhost -m NAME -a ARGS`` from the repository root, so that
    ansible.cfg's library= and module_utils= find the module and its
    module_utils, under the host's Python rather than estafeta's venv; the
    exit code and the module's result."""
    ansible = shutil.which("ansible") or str(Path(sys.executable).parent / "ansible")
    interpreter = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    env = {
        **os.environ,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
    }
    env.pop("ANSIBLE_CONFIG", None)
    command = [ansible, "localhost", "-i", "localhost,", "-c", "local"]
    command += ["--check"] if check_mode else []
    command += ["-e", f"ansible_python_interpreter={interpreter}"]
    command += ["-m", name, "-a", json.dumps(args)]
    proc = subprocess.run(
        command,
        cwd=_LIBRARY.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    except (ValueError, LookupError):
        raise AssertionError(proc.stdout + proc.stderr) from None
    return proc.returncode, dict(result)


@pytest.fixture
def doctor_standin(tmp_path: Path) -> StandIn:
    """A stand-in ``estafeta`` in tmp_path; ``answer()`` says what it prints."""
    return StandIn(tmp_path)


# -- DNS ---------------------------------------------------------------------------------


@dataclass
class _Knot:
    root: Path
    zones: dict[str, list[str]]  # origin -> zone-file lines (names relative to the origin)
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write(self) -> None:
        for sub in ("run", "db", "zones"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f'    rundir: "{self.root / "run"}"',
            f"    listen: 127.0.0.1@{self.port}",
            "log:",
            "  - target: stderr",
            "    any: info",
            "database:",
            f'    storage: "{self.root / "db"}"',
            "template:",
            "  - id: default",
            f'    storage: "{self.root / "zones"}"',
            '    file: "%s.zone"',
            "    zonefile-sync: -1",
            "    journal-content: none",
            "zone:",
        ]
        for origin, lines in self.zones.items():
            conf.append(f"  - domain: {origin}")
            zone = [
                f"$ORIGIN {origin}.",
                "$TTL 60",
                f"@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
                f"@ NS ns.{origin}.",
                "ns A 127.0.0.1",
                *lines,
            ]
            (self.root / "zones" / f"{origin}.zone").write_text("\n".join(zone) + "\n")
        (self.root / "knot.conf").write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        self.write()
        log_path = self.root / "knot.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["knotd", "-c", str(self.root / "knot.conf")], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        for origin in self.zones:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"knotd exited: {log_path.read_text()}")
                query = dns.message.make_query(f"{origin}.", dns.rdatatype.SOA)
                with contextlib.suppress(OSError, dns.exception.DNSException):
                    answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
                    if answer.answer:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"knotd does not serve {origin}: {log_path.read_text()}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., _Knot]]:
    """``knot(zones)`` starts a knotd serving ``zones`` ({origin: [lines]}) on
    127.0.0.1; every server started is stopped at the end of the session."""
    servers: list[_Knot] = []

    def start(zones: dict[str, list[str]]) -> _Knot:
        server = _Knot(tmp_path_factory.mktemp("knot"), zones, _free_port(socket.SOCK_DGRAM))
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """ "127.0.0.1:port" of a UDP socket that reads nothing and answers nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# -- estafeta -------------------------------------------------------------------------------

_PASSWORD = "correct horse battery staple"


@dataclass
class _Estafeta:
    root: Path
    ports: dict[str, int]
    ca_file: Path
    password: str = _PASSWORD
    domain: str = "example.test"
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / "estafeta.toml"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "estafeta", "-c", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"estafeta {' '.join(args)}: {result.stderr}")
        return result.stdout


@pytest.fixture(scope="module")
def estafeta_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Estafeta]:
    """A running estafeta on 127.0.0.1 (smtp, submission, submissions, imap,
    imaps) with a trustme CA (``ca_file``), no inbound authentication (so
    no Authentication-Results), and the accounts alice@ and bob@example.test."""
    root = tmp_path_factory.mktemp("estafeta")
    ca = trustme.CA()
    cert = ca.issue_cert("mx.example.test", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    ports = {name: _free_port() for name in ("smtp", "submission", "submissions", "imap", "imaps")}
    server = _Estafeta(root, ports, root / "ca.pem")
    listen = "".join(f'{name} = ["127.0.0.1:{port}"]\n' for name, port in ports.items())
    server.config.write_text(
        'hostname = "mx.example.test"\n'
        f'data_dir = "{root / "data"}"\n'
        f'domains = ["{server.domain}"]\n'
        f"[listen]\n{listen}"
        f'[tls]\ncert = "{root / "cert.pem"}"\nkey = "{root / "key.pem"}"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"
        "[inbound]\nauthenticate = false\n"
        "[greylist]\nenabled = false\n[screen]\ngreeting_pause = 0\n"
        '[log]\nlevel = "info"\n'
    )
    for user in ("alice", "bob"):
        server.cli(
            "user", "add", f"{user}@{server.domain}", "--password-stdin", stdin=_PASSWORD + "\n"
        )
    log_path = root / "estafeta.log"
    with log_path.open("ab") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "estafeta", "-c", str(server.config), "serve"],
            stdout=log,
            stderr=log,
        )
    try:
        for port in ports.values():
            _wait_tcp(port, server.process, log_path)
        yield server
    finally:
        _stop(server.process)
