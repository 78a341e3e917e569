"""Load generators the benchmarks share: messages, SMTP, IMAP and POP3 clients.

Everything here speaks plain protocol over loopback and knows nothing of
the server behind the port, so the same code measures estafeta and a peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import poplib
import queue
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- messages ----------------------------------------------------------------


def ingest_message(n: int, to: str, size: int = 4096) -> bytes:
    """A plain text message of about ``size`` bytes (CRLF line ends)."""
    head = (
        f"From: Load Generator <load@remote.test>\r\nTo: <{to}>\r\n"
        f"Subject: ingest {n}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@remote.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def bigbox_message(n: int, to: str) -> bytes:
    """Message ``n`` of the big INBOX: Subject "report N about topic N%50",
    the word "zebracorn" in the body of one message in 1,000, and threads of
    four (In-Reply-To the message before, but for every fourth one)."""
    needle = "zebracorn" if n % 1000 == 7 else "ordinary"
    reply = f"In-Reply-To: <{n - 1}@remote.test>\r\n" if n % 4 else ""
    return (
        f"From: Sender {n % 97} <sender{n % 97}@remote.test>\r\n"
        f"To: {to}\r\nSubject: report {n} about topic {n % 50}\r\n"
        f"Date: Mon, 23 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}@remote.test>\r\n{reply}X-Batch: {n // 1000}\r\n\r\n"
        + f"Line of {needle} text for message {n}.\r\n"
        * 20
    ).encode()


def pop_message(n: int, size: int = 8192) -> bytes:
    return b"Subject: pop %d\r\n\r\n" % n + (b"x" * 76 + b"\r\n") * max(1, size // 78)


# -- SMTP --------------------------------------------------------------------


class SMTPError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


def _expect(code: int, reply: tuple[int, bytes], what: str) -> None:
    if reply[0] != code:
        raise SMTPError(f"{what}: {reply[1]!r}")


@dataclass
class IngestResult:
    sent: int
    started: float  # time.perf_counter() when the first MAIL FROM went out
    seconds: float  # from then to the last 250 after the final dot
    latencies: list[float] = field(default_factory=list)


async def smtp_ingest(
    port: int,
    sessions: int,
    messages: Sequence[bytes],
    recipient: str,
    *,
    host: str = "127.0.0.1",
    sender: str = "load@remote.test",
) -> IngestResult:
    """Send ``messages`` over ``sessions`` concurrent SMTP sessions, one
    transaction per message, MAIL/RCPT/DATA pipelined (rfc2920) when the
    server offers PIPELINING. Every session connects and says EHLO before
    the clock starts."""
    connected: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]] = []
    for _ in range(sessions):
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        _expect(220, await _reply(reader), "greeting")
        writer.write(b"EHLO load.bench.test\r\n")
        ehlo = await _reply(reader)
        _expect(250, ehlo, "EHLO")
        connected.append((reader, writer, b"PIPELINING" in ehlo[1].upper()))
    envelope = [
        f"MAIL FROM:<{sender}>\r\n".encode(),
        f"RCPT TO:<{recipient}>\r\n".encode(),
        b"DATA\r\n",
    ]
    latencies: list[float] = []

    async def session(i: int) -> None:
        reader, writer, pipelining = connected[i]
        for data in messages[i::sessions]:
            t0 = time.perf_counter()
            if pipelining:
                writer.write(b"".join(envelope))
                for code, what in ((250, "MAIL"), (250, "RCPT"), (354, "DATA")):
                    _expect(code, await _reply(reader), what)
            else:
                for command, code in zip(envelope, (250, 250, 354), strict=True):
                    writer.write(command)
                    _expect(code, await _reply(reader), command.decode().strip())
            body = data.replace(b"\r\n.", b"\r\n..")
            writer.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            _expect(250, await _reply(reader), "end of data")
            latencies.append(time.perf_counter() - t0)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(sessions)))
    return IngestResult(len(latencies), started, time.perf_counter() - started, latencies)


# -- IMAP --------------------------------------------------------------------

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


@dataclass
class Reply:
    seconds: float
    untagged: int  # untagged responses ("* ...") before the tagged one
    octets: int
    tagged: bytes
    search: list[int] = field(default_factory=list)  # numbers of "* SEARCH" and "* SORT"
    lines: list[bytes] = field(default_factory=list)  # "* STATUS" and "* THREAD" responses


class IMAPClient:
    """A minimal blocking IMAP client that times each command to its tagged
    reply, reading literals but parsing nothing else (so that the client's
    own cost stays out of the figures)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 1800) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb", buffering=1 << 16)
        self.reader.readline()
        self.tags = 0

    def _response(self) -> bytes:
        """One response line, literals included."""
        line = self.reader.readline()
        if not line:
            raise ConnectionError("IMAP server closed the connection")
        parts = [line]
        while (literal := _LITERAL.search(line)) is not None:
            parts.append(self.reader.read(int(literal.group(1))))
            line = self.reader.readline()
            parts.append(line)
        return b"".join(parts)

    def command(self, text: str, ok: bool = True) -> Reply:
        self.tags += 1
        tag = b"t%d" % self.tags
        started = time.perf_counter()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        untagged = octets = 0
        search: list[int] = []
        kept: list[bytes] = []
        while True:
            line = self._response()
            octets += len(line)
            if line.startswith(tag + b" "):
                if ok and not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text.split()[0]}: {line!r}")
                elapsed = time.perf_counter() - started
                return Reply(elapsed, untagged, octets, line, search, kept)
            untagged += 1
            if line.startswith((b"* SEARCH", b"* SORT")):
                search.extend(int(n) for n in line.split()[2:])
            elif line.startswith((b"* STATUS", b"* THREAD")):
                kept.append(line)

    def login(self, user: str, password: str) -> Reply:
        return self.command(f'LOGIN "{user}" "{password}"')

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command("LOGOUT", ok=False)
        self.reader.close()
        self.sock.close()


def source_address(n: int, per_address: int = 500) -> str:
    """The loopback address the ``n``-th client connection binds to:
    ``per_address`` connections on each of 127.1.0.1, 127.1.0.2, ... (spread
    over 127.0.0.0/8: one source address has only the ~28,000 ephemeral
    ports of net.ipv4.ip_local_port_range towards one server port)."""
    k = n // per_address
    return f"127.{1 + k // 62_500}.{k // 250 % 250}.{1 + k % 250}"


@dataclass
class IdleConnection:
    user: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def idle_connections(
    port: int,
    logins: Sequence[tuple[str, str]],
    *,
    host: str = "127.0.0.1",
    parallel: int = 100,
    progress: Callable[[int], None] | None = None,
    sources: Sequence[str] | None = None,
    mailbox: str = "INBOX",
) -> list[IdleConnection]:
    """Open one connection per (user, password): LOGIN, SELECT ``mailbox``,
    IDLE; the n-th from source address ``sources[n]`` if given. Returns them
    once every connection sits in IDLE. A login refused for the moment
    (``NO [UNAVAILABLE]``: the server checks only so many passwords at
    once) is tried again on a new connection, as a client would."""
    opened: list[IdleConnection] = []
    gate = asyncio.Semaphore(parallel)

    async def attempt(n: int, user: str, password: str) -> IdleConnection | None:
        local = (sources[n], 0) if sources is not None else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        await reader.readline()
        writer.write(
            f'a LOGIN "{user}" "{password}"\r\nb SELECT "{mailbox}"\r\nc IDLE\r\n'.encode()
        )
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError(f"{user}: server closed the connection")
            if line.startswith(b"a NO [UNAVAILABLE]"):
                writer.close()
                await writer.wait_closed()
                return None
            if line[:4] in (b"a NO", b"b NO", b"a BA", b"b BA", b"c NO", b"c BA"):
                raise ConnectionError(f"{user}: {line!r}")
            if line.startswith(b"+ "):
                return IdleConnection(user, reader, writer)

    async def one(n: int, user: str, password: str) -> None:
        async with gate:
            for retry in range(200):
                connection = await attempt(n, user, password)
                if connection is not None:
                    break
                await asyncio.sleep(0.01 * min(retry + 1, 20))
            else:
                raise ConnectionError(f"{user}: the server stayed busy")
            opened.append(connection)
            if progress is not None:
                progress(len(opened))

    await asyncio.gather(*(one(n, user, password) for n, (user, password) in enumerate(logins)))
    return opened


# -- many IDLE connections, from several processes ------------------------------

# Connections one worker process holds: within the usual hard limit of open
# files (RLIMIT_NOFILE) of 20,000 or more, with room to spare.
PER_WORKER = 15_000


class IdleFleet:
    """``len(logins)`` IMAP connections in IDLE, held by worker processes
    (one process cannot hold 100,000 sockets under most RLIMIT_NOFILE hard
    limits, and one event loop would be slow to open them), each bound to a
    loopback source address of its own range (``source_address``).

    Each worker watches its connections: after ``mark()``, the first
    ``* n EXISTS`` each one receives is timed (time.monotonic, one clock
    for all processes on Linux) and ``exists()`` collects the times: how
    long a delivery took to be announced to idle clients.

        fleet = IdleFleet(port, logins)
        seconds = fleet.open(progress=print)
        ...
        fleet.mark(); deliver(); times = fleet.exists(user, wanted, timeout=10)
        fleet.close()
    """

    def __init__(
        self,
        port: int,
        logins: Sequence[tuple[str, str]],
        *,
        host: str = "127.0.0.1",
        per_address: int = 500,
        per_worker: int = PER_WORKER,
        parallel: int = 32,
        mailbox: str = "INBOX",
    ) -> None:
        self.logins = list(logins)
        sources = [source_address(n, per_address) for n in range(len(self.logins))]
        count = max(1, -(-len(self.logins) // per_worker))
        self.jobs = [
            {
                "host": host,
                "port": port,
                "logins": self.logins[w::count],
                "sources": sources[w::count],
                "parallel": max(4, parallel // count),
                "mailbox": mailbox,
            }
            for w in range(count)
        ]
        self.addresses = len(set(sources))
        self.workers: list[subprocess.Popen[str]] = []

    def _send(self, worker: subprocess.Popen[str], line: str) -> None:
        assert worker.stdin is not None
        worker.stdin.write(line + "\n")
        worker.stdin.flush()

    def _receive(self, worker: subprocess.Popen[str]) -> dict[str, Any]:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"IDLE worker {worker.pid} ended (exit {worker.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"IDLE worker {worker.pid}: {answer['error']}")
        return answer

    def open(self, progress: Callable[[int], None] | None = None) -> float:
        """Start the workers and wait until every connection is in IDLE;
        the seconds that took."""
        started = time.perf_counter()
        for job in self.jobs:
            worker = subprocess.Popen(
                [sys.executable, str(Path(__file__)), "idle-worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.workers.append(worker)
            self._send(worker, json.dumps(job))
        done = [0] * len(self.workers)
        ready = [False] * len(self.workers)
        # Each worker says how far it got every thousand connections.
        reports: queue.Queue[tuple[int, dict[str, Any] | BaseException]] = queue.Queue()

        def listen(i: int, worker: subprocess.Popen[str]) -> None:
            while True:
                try:
                    answer = self._receive(worker)
                except BaseException as exc:  # handed to open()
                    reports.put((i, exc))
                    return
                reports.put((i, answer))
                if "ready" in answer:
                    return

        for i, worker in enumerate(self.workers):
            threading.Thread(target=listen, args=(i, worker), daemon=True).start()
        while not all(ready):
            i, answer = reports.get()
            if isinstance(answer, BaseException):
                raise answer
            done[i] = answer.get("opened", answer.get("ready", done[i]))
            ready[i] = "ready" in answer
            if progress is not None:
                progress(sum(done))
        return time.perf_counter() - started

    def mark(self) -> None:
        """From now on, time the first EXISTS of every connection."""
        for worker in self.workers:
            self._send(worker, "mark")
        for worker in self.workers:
            self._receive(worker)

    def exists(self, user: str, wanted: int, timeout: float = 10.0) -> list[float]:
        """time.monotonic() of the first EXISTS since mark() on each of
        ``user``'s connections, once ``wanted`` of them have one (or at the
        timeout: fewer)."""
        deadline = time.monotonic() + timeout
        while True:
            times: list[float] = []
            for worker in self.workers:
                self._send(worker, f"exists {user}")
            for worker in self.workers:
                times += self._receive(worker)["times"]
            if len(times) >= wanted or time.monotonic() > deadline:
                return sorted(times)
            time.sleep(0.05)

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                self._send(worker, "close")
        for worker in self.workers:
            try:
                worker.wait(timeout=120)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            for pipe in (worker.stdin, worker.stdout):
                if pipe is not None:
                    pipe.close()
        self.workers = []


def raise_open_files(wanted: int) -> int:
    """RLIMIT_NOFILE of this process (inherited by the servers it starts):
    the soft limit up to the hard one, and the hard one up to ``wanted`` if
    allowed (root with CAP_SYS_RESOURCE, up to /proc/sys/fs/nr_open).
    Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def smtp_send(
    port: int, recipient: str, data: bytes, host: str = "127.0.0.1"
) -> tuple[float, float]:
    """One message over SMTP: time.monotonic() when the final dot went out
    and when its 250 came back."""
    with socket.create_connection((host, port), timeout=60) as sock:
        lines = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = lines.readline()
                if not line:
                    raise SMTPError("connection closed")
                if line[3:4] != b"-":
                    return line

        def say(command: bytes, code: bytes) -> None:
            sock.sendall(command)
            answer = reply()
            if not answer.startswith(code):
                raise SMTPError(f"{command!r}: {answer!r}")

        if not reply().startswith(b"220"):
            raise SMTPError("no greeting")
        say(b"EHLO load.bench.test\r\n", b"250")
        say(b"MAIL FROM:<load@remote.test>\r\n", b"250")
        say(f"RCPT TO:<{recipient}>\r\n".encode(), b"250")
        say(b"DATA\r\n", b"354")
        body = data.replace(b"\r\n.", b"\r\n..")
        sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n"))
        dot = time.monotonic()
        sock.sendall(b".\r\n")
        answer = reply()
        acked = time.monotonic()
        if not answer.startswith(b"250"):
            raise SMTPError(f"end of data: {answer!r}")
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
            reply()
        lines.close()
    return dot, acked


async def _idle_worker(job: dict[str, Any]) -> None:
    """One IdleFleet worker: opens its connections, then answers the
    fleet's commands on stdin (JSON on stdout), one line each."""
    loop = asyncio.get_running_loop()
    count = 0

    def progress(n: int) -> None:
        nonlocal count
        count = n
        if n % 1000 == 0:
            print(json.dumps({"opened": n}), flush=True)

    started = time.perf_counter()
    connections = await idle_connections(
        job["port"],
        [tuple(login) for login in job["logins"]],
        host=job["host"],
        parallel=job["parallel"],
        progress=progress,
        sources=job["sources"],
        mailbox=job["mailbox"],
    )
    seconds = time.perf_counter() - started
    marked = False
    seen: dict[int, float] = {}

    async def watch(n: int, connection: IdleConnection) -> None:
        while line := await connection.reader.readline():
            if marked and n not in seen and line.endswith(b" EXISTS\r\n"):
                seen[n] = time.monotonic()

    watchers = [asyncio.create_task(watch(n, c)) for n, c in enumerate(connections)]
    print(json.dumps({"ready": len(connections), "seconds": seconds}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words == ["mark"]:
            marked = True
            seen.clear()
            print(json.dumps({"marked": True}), flush=True)
        elif words[:1] == ["exists"]:
            times = [t for n, t in seen.items() if connections[n].user == words[1]]
            print(json.dumps({"times": times}), flush=True)
        elif words == ["close"]:
            break
    for watcher in watchers:
        watcher.cancel()
    for connection in connections:
        connection.writer.close()
    await asyncio.gather(
        *(c.writer.wait_closed() for c in connections), *watchers, return_exceptions=True
    )


def _worker_main() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    job = json.loads(sys.stdin.readline())
    try:
        asyncio.run(_idle_worker(job))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        raise SystemExit(1) from None


# -- POP3 --------------------------------------------------------------------


@dataclass
class POP3Result:
    login: float
    list: float
    retr: float
    messages: int
    octets: int


def pop3_retr_all(port: int, user: str, password: str, host: str = "127.0.0.1") -> POP3Result:
    """USER/PASS, LIST, then RETR of every message; no DELE."""
    t0 = time.perf_counter()
    client = poplib.POP3(host, port, timeout=600)
    client.user(user)
    client.pass_(password)
    t_login = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, listing, _ = client.list()
    t_list = time.perf_counter() - t0
    t0 = time.perf_counter()
    moved = 0
    for n in range(1, len(listing) + 1):
        _, _lines, octets = client.retr(n)
        moved += octets
    t_retr = time.perf_counter() - t0
    client.quit()
    return POP3Result(t_login, t_list, t_retr, len(listing), moved)


if __name__ == "__main__" and sys.argv[1:] == ["idle-worker"]:
    _worker_main()
