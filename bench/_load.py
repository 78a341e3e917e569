"""Load generators the benchmarks share: messages, SMTP, IMAP and POP3 clients.

Everything here speaks plain protocol over loopback and knows nothing of
the server behind the port, so the same code measures estafeta and a peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    and the word "zebracorn" in the body of one message in 1,000."""
    needle = "zebracorn" if n % 1000 == 7 else "ordinary"
    return (
        f"From: Sender {n % 97} <sender{n % 97}@remote.test>\r\n"
        f"To: {to}\r\nSubject: report {n} about topic {n % 50}\r\n"
        f"Date: Mon, 23 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}@remote.test>\r\nX-Batch: {n // 1000}\r\n\r\n"
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
    search: list[int] = field(default_factory=list)  # numbers of "* SEARCH"
    lines: list[bytes] = field(default_factory=list)  # "* STATUS" responses


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
            if line.startswith(b"* SEARCH"):
                search.extend(int(n) for n in line.split()[2:])
            elif line.startswith(b"* STATUS"):
                kept.append(line)

    def login(self, user: str, password: str) -> Reply:
        return self.command(f'LOGIN "{user}" "{password}"')

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command("LOGOUT", ok=False)
        self.reader.close()
        self.sock.close()


async def idle_connections(
    port: int,
    logins: Sequence[tuple[str, str]],
    *,
    host: str = "127.0.0.1",
    parallel: int = 100,
    progress: Callable[[int], None] | None = None,
) -> list[asyncio.StreamWriter]:
    """Open one connection per (user, password): LOGIN, SELECT INBOX, IDLE.
    Returns the writers once every connection sits in IDLE."""
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(parallel)

    async def one(user: str, password: str) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            await reader.readline()
            writer.write(f'a LOGIN "{user}" "{password}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError(f"{user}: server closed the connection")
                if line[:4] in (b"a NO", b"b NO", b"a BA", b"b BA", b"c NO", b"c BA"):
                    raise ConnectionError(f"{user}: {line!r}")
                if line.startswith(b"+ "):
                    break
            writers.append(writer)
            if progress is not None:
                progress(len(writers))

    await asyncio.gather(*(one(user, password) for user, password in logins))
    return writers


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
