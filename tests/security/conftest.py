"""Fixtures and clients of the abuse battery.

- ``mail_server``: one real estafeta per test module with every listener
  (smtp, submission, submissions, imap, imaps, pop3, pop3s) on 127.0.0.1, TLS
  from a test CA, the accounts alice@ and bob@example.test, and a DNS server
  that is not there (remote mail stays in the queue, where tests look for it);
- ``start_server``: the same with other [limits] / [auth] lines;
- ``Client``: a raw line client (plain, implicit TLS or after STARTTLS) that
  can send anything, read with a timeout and tell silence from an answer;
- ``new_source``: a fresh loopback source address per test, so that
  per-address limits of one test never touch another.

The server-side helpers (``Instance``, ``make_tls``...) are those of
server/tests/conftest.py, imported under the top-level name ``conftest`` as
the modules of server/tests import them (the same module object when both
directories run in one session).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

_SERVER_TESTS = Path(__file__).resolve().parents[2] / "server" / "tests"
if str(_SERVER_TESTS) not in sys.path:
    sys.path.insert(0, str(_SERVER_TESTS))

from conftest import DOMAIN, PASSWORD, STARTED, Instance, free_port, make_tls  # noqa: E402
from estafeta.queue.store import QueueStore  # noqa: E402

__all__ = [
    "ALICE",
    "BOB",
    "DOMAIN",
    "HOSTNAME",
    "IMPLICIT_TLS",
    "LISTENERS",
    "PASSWORD",
    "PROTOCOL",
    "STARTED",
    "Client",
    "Instance",
    "MailServer",
    "imap_login",
    "make_tls",
    "new_source",
    "plain_before_tls",
    "smtp_client",
    "start_server",
    "tls_client",
    "unverified_context",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is serial (pytest.ini): they bound latency and memory
    under attack, which the second xdist worker's load would blur. make test
    runs them alone, after the parallel run."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents:
            item.add_marker(pytest.mark.serial)


ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
HOSTNAME = f"mx.{DOMAIN}"
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
IMPLICIT_TLS = frozenset({"submissions", "imaps", "pop3s"})
# The protocol each listener speaks.
PROTOCOL = {
    "smtp": "smtp",
    "submission": "smtp",
    "submissions": "smtp",
    "imap": "imap",
    "imaps": "imap",
    "pop3": "pop3",
    "pop3s": "pop3",
}

_sources = itertools.count()


def new_source() -> str:
    """A loopback address no other test of this session connects from
    (127.0.0.40 and up; 127.0.0.2-.30 belong to other suites)."""
    n = next(_sources)
    return f"127.0.{n // 200}.{40 + n % 200}"


# -- the server ------------------------------------------------------------------------


@dataclass
class MailServer:
    instance: Instance
    ca_file: Path

    def port(self, listener: str) -> int:
        return {
            "smtp": self.instance.port,
            "submission": self.instance.submission_port,
            "submissions": self.instance.submissions_port,
            "imap": self.instance.imap_port,
            "imaps": self.instance.imaps_port,
            "pop3": self.instance.pop3_port,
            "pop3s": self.instance.pop3s_port,
        }[listener]

    @property
    def config(self) -> Path:
        return self.instance.config

    def queue(self) -> list[dict[str, object]]:
        """``estafeta queue list --json``: what waits for remote delivery."""
        entries: list[dict[str, object]] = json.loads(
            self.instance.cli("queue", "list", "--json").stdout
        )
        return entries

    def queued(self) -> list[dict[str, object]]:
        """The same entries, read in-process as the CLI reads them (0.5 s faster)."""
        store = QueueStore(self.instance.data_dir / "queue", recover=False)
        try:
            return [entry.to_json() for entry in store.entries()]
        finally:
            store.close()

    def queued_message(self, message_id: str) -> bytes:
        store = QueueStore(self.instance.data_dir / "queue", recover=False)
        try:
            return store.read_message(message_id)
        finally:
            store.close()

    def mail(self, address: str) -> int:
        """Messages in the INBOX of ``address`` (files and index rows agree)."""
        files = len(self.instance.files(address))
        assert files == len(self.instance.index_rows(address))
        return files

    def mailboxes(self) -> dict[str, int]:
        return {address: self.mail(address) for address in (ALICE, BOB)}

    def verifying_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context

    def log_text(self) -> str:
        return self.instance.log_text()

    def stop(self) -> None:
        if self.instance.process is not None:
            self.instance.kill()


def start_server(
    root: Path,
    *,
    limits_config: str = "",
    auth_config: str = "",
    extra_config: str = "",
    populate: Callable[[Path], None] | None = None,
) -> MailServer:
    """A running estafeta in ``root`` with every listener, TLS and two accounts;
    ``populate(root)``, if given, runs once the accounts exist and before the
    server starts (to put mail in place through the store API)."""
    tls_section, _ = make_tls(root)
    instance = Instance(
        root,
        free_port(),
        imap_port=free_port(),
        imaps_port=free_port(),
        pop3_port=free_port(),
        pop3s_port=free_port(),
        submission_port=free_port(),
        submissions_port=free_port(),
        limits_config=limits_config,
        auth_config=auth_config,
        # Nobody answers DNS queries there: remote mail stays queued.
        extra_config=tls_section
        + f'[dns]\nnameservers = ["127.0.0.1:{free_port()}"]\n'
        + '[queue]\nretry_min = "1h"\n'
        + extra_config,
    )
    instance.write_config()
    instance.add_user(ALICE)
    instance.add_user(BOB)
    if populate is not None:
        populate(root)
    instance.start()
    server = MailServer(instance, root / "ca.pem")
    # start() waits for the SMTP port; the other listeners open right after it.
    deadline = time.monotonic() + 30
    for name in LISTENERS:
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port(name)), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise AssertionError(f"{name} does not listen: {server.log_text()}") from None
                time.sleep(0.05)
    return server


# -- no traceback, ever (issue 14, acceptance 3) ------------------------------------

# Index in STARTED of the first server of the running module, and how much of
# each server's log has been checked already.
_first_of_module = 0
_checked: dict[Path, int] = {}


def _tracebacks_since_last_check() -> list[str]:
    found = []
    for instance in STARTED[_first_of_module:]:
        try:
            text = instance.log_path.read_bytes()
        except FileNotFoundError:
            continue
        new = text[_checked.get(instance.log_path, 0) :]
        _checked[instance.log_path] = len(text)
        if b"Traceback" in new:
            at = new.index(b"Traceback")
            found.append(
                f"{instance.log_path}:\n"
                + new[max(0, at - 500) : at + 3000].decode("utf-8", "replace")
            )
    return found


@pytest.fixture(scope="module", autouse=True)
def _servers_of_this_module() -> Iterator[None]:
    """Set up before the module's own server fixtures, torn down after them:
    so the check below also sees what a server logged while stopping."""
    global _first_of_module
    _first_of_module = len(STARTED)
    yield
    found = _tracebacks_since_last_check()
    assert not found, "a server logged a traceback:\n" + "\n".join(found)


@pytest.fixture(autouse=True)
def no_traceback_in_server_logs() -> Iterator[None]:
    """After every test of the battery: no server of this module logged a
    traceback. Client input must get a protocol reply, never an internal
    error; an internal error is a bug even when the client got a clean NO."""
    yield
    found = _tracebacks_since_last_check()
    assert not found, "a server logged a traceback:\n" + "\n".join(found)


@pytest.fixture(scope="module")
def mail_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    """One server for the tests of a module (each module gets its own)."""
    server = start_server(tmp_path_factory.mktemp("estafeta"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def source() -> str:
    return new_source()


def unverified_context() -> ssl.SSLContext:
    """A client context that accepts any certificate (for handshake probes)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- the client ------------------------------------------------------------------------


class Client:
    """One connection, read line by line with timeouts, never trusting the server."""

    def __init__(
        self,
        port: int,
        *,
        source: str = "127.0.0.1",
        context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=HOSTNAME)
            except BaseException:
                sock.close()
                raise
        self.sock: socket.socket = sock
        self.timeout = timeout
        self.buffer = b""
        self.closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        """Read what comes within ``timeout``; False at EOF. TimeoutError if nothing."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            chunk = b""
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.timeout)
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def line(self, timeout: float | None = None) -> bytes:
        """The next line with its line ending; b"" once the server has closed.
        TimeoutError if neither comes in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buffer:
            if self.closed or not self._fill(deadline - time.monotonic()):
                rest, self.buffer = self.buffer, b""
                return rest
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def lines_until_eof(self, timeout: float | None = None) -> list[bytes]:
        lines = []
        while line := self.line(timeout):
            lines.append(line)
        return lines

    def silence(self, seconds: float) -> bytes:
        """Whatever the server sends within ``seconds`` (b"": nothing, as it should)."""
        deadline = time.monotonic() + seconds
        received = self.buffer
        self.buffer = b""
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if not self._fill(left):
                    break
            except TimeoutError:
                break
            received += self.buffer
            self.buffer = b""
        return received

    def starttls(self, context: ssl.SSLContext) -> None:
        """Start TLS now (the STARTTLS reply has been read)."""
        assert not self.buffer, f"plaintext after the STARTTLS reply: {self.buffer!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=HOSTNAME)

    # -- SMTP --------------------------------------------------------------------------

    def reply(self, timeout: float | None = None) -> bytes:
        """The last line of an SMTP reply (multi-line replies are skipped through)."""
        while True:
            line = self.line(timeout)
            if line[3:4] != b"-":
                return line

    def smtp(self, command: bytes | str, timeout: float | None = None) -> bytes:
        if isinstance(command, str):
            command = command.encode()
        self.send(command + b"\r\n")
        return self.reply(timeout)

    # -- IMAP --------------------------------------------------------------------------

    def imap(self, tag: str, command: bytes | str) -> tuple[list[bytes], bytes]:
        """(untagged and continuation lines, the tagged line) of one command."""
        if isinstance(command, str):
            command = command.encode()
        self.send(tag.encode() + b" " + command + b"\r\n")
        return self.until_tagged(tag)

    def until_tagged(self, tag: str) -> tuple[list[bytes], bytes]:
        other = []
        while True:
            line = self.line()
            if not line or line.startswith(tag.encode() + b" "):
                return other, line
            other.append(line)


def imap_login(
    server: MailServer, user: str = ALICE, *, source: str | None = None, timeout: float = 30.0
) -> Client:
    """A plain IMAP connection (the server must allow plaintext), greeted and
    logged in as ``user`` (tag "L"), from ``source`` or a fresh address."""
    client = Client(server.port("imap"), source=source or new_source(), timeout=timeout)
    greeting = client.line()
    assert greeting.startswith(b"* OK"), greeting
    _, tagged = client.imap("L", f'LOGIN {user} "{PASSWORD}"')
    assert tagged.startswith(b"L OK"), tagged
    return client


def smtp_client(
    port: int, *, source: str = "127.0.0.1", context: ssl.SSLContext | None = None
) -> Client:
    """Connected, greeted (220) and EHLO'd."""
    client = Client(port, source=source, context=context)
    greeting = client.line()
    assert greeting.startswith(b"220 "), greeting
    assert client.smtp("EHLO client.example").startswith(b"250 ")
    return client


def tls_client(
    server: MailServer,
    listener: str,
    context: ssl.SSLContext,
    *,
    source: str = "127.0.0.1",
    inject: bytes = b"",
    then: bytes = b"",
) -> Client:
    """A connection to ``listener`` with TLS up: implicit, or after the
    protocol's STARTTLS (with ``inject`` pipelined in the same packet, and
    ``then`` in a second one, a moment later)."""
    if listener in IMPLICIT_TLS:
        assert not inject
        client = Client(server.port(listener), source=source, context=context)
        client.line()  # greeting
        return client
    client = plain_before_tls(server, listener, source=source, inject=inject, then=then)
    client.starttls(context)
    return client


def plain_before_tls(
    server: MailServer,
    listener: str,
    *,
    source: str = "127.0.0.1",
    inject: bytes = b"",
    then: bytes = b"",
) -> Client:
    """A connection that is ready for a TLS ClientHello: implicit-TLS ports
    as they are, the others once the server said yes to STARTTLS (``then``
    is sent 50 ms after the STARTTLS packet, as the rest of an injection
    the network delayed would be)."""
    port = server.port(listener)
    protocol = PROTOCOL[listener]
    client = Client(port, source=source)
    if listener in IMPLICIT_TLS:
        return client
    greeting = client.line()

    def starttls(command: bytes) -> None:
        client.send(command + inject)
        if then:
            time.sleep(0.05)
            client.send(then)

    if protocol == "smtp":
        assert greeting.startswith(b"220 "), greeting
        assert client.smtp("EHLO client.example").startswith(b"250 ")
        starttls(b"STARTTLS\r\n")
        reply = client.reply()
        assert reply.startswith(b"220 "), reply
    elif protocol == "imap":
        assert greeting.startswith(b"* OK"), greeting
        starttls(b"S STARTTLS\r\n")
        _, tagged = client.until_tagged("S")
        assert tagged.startswith(b"S OK"), tagged
    else:
        assert greeting.startswith(b"+OK"), greeting
        starttls(b"STLS\r\n")
        reply = client.line()
        assert reply.startswith(b"+OK"), reply
    return client
