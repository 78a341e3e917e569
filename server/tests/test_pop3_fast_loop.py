"""The POP3 session's main loop in-process, with a stand-in for the
connection: responses to pipelined commands go out in one write, large
output is drained at the high-water mark, a large message in drained
pieces, a vanished file is a temporary failure, and the autologout timers
(rfc1939:3) fire when the client is silent, never while it is being sent
to.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _fakeio import old_dot_stuff

from estafeta.pop3 import session as pop3


class FakeContentReader:
    def __init__(self, contents: dict[str, bytes]) -> None:
        self.contents = contents
        self.calls = 0

    def content(self, file: str) -> bytes:
        self.calls += 1
        try:
            return self.contents[file]
        except KeyError:
            raise FileNotFoundError(file) from None


class FakeTransport:
    def __init__(self, writer: FakeWriter) -> None:
        self.writer = writer

    def get_write_buffer_size(self) -> int:
        return self.writer.since_drain  # as if the client read nothing

    def is_closing(self) -> bool:
        return self.writer.closed


class FakeWriter:
    """Records each write, and how much was written between drains."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.since_drain = 0
        self.most_between_drains = 0
        self.drains = 0
        self.closed = False
        self.transport = FakeTransport(self)

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.since_drain += len(data)
        self.most_between_drains = max(self.most_between_drains, self.since_drain)

    async def drain(self) -> None:
        self.drains += 1
        self.since_drain = 0

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1110) if name == "peername" else None

    def close(self) -> None:
        self.closed = True

    def output(self) -> bytes:
        return b"".join(self.writes)


def make_session(
    reader: asyncio.StreamReader,
    writer: FakeWriter,
    contents: list[bytes],
    *,
    settings: pop3.Settings | None = None,
    logged_in: bool = True,
    missing: frozenset[int] = frozenset(),
) -> tuple[pop3.Session, FakeContentReader]:
    """A session over ``contents``, in the TRANSACTION state if
    ``logged_in``; ``missing``: message numbers whose file is gone."""
    session = pop3.Session(
        reader,
        writer,  # type: ignore[arg-type]
        accounts=None,  # type: ignore[arg-type]
        authenticator=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        settings=settings or pop3.Settings("mx.example.test"),
        locks=pop3.Locks(),
        tls=None,
        implicit_tls=False,
    )
    files = {f"cur/{n}": data for n, data in enumerate(contents, 1) if n not in missing}
    content_reader = FakeContentReader(files)
    if logged_in:
        session.content_reader = content_reader  # type: ignore[assignment]
        session.user = "alice@example.test"
        session.uidvalidity = 77
        session.state = pop3.TRANSACTION
        session.messages = [pop3.Message(n, len(d), f"cur/{n}") for n, d in enumerate(contents, 1)]
    return session, content_reader


async def run_transaction(
    contents: list[bytes],
    commands: bytes,
    *,
    chunked: bool = False,
    missing: frozenset[int] = frozenset(),
) -> tuple[FakeWriter, FakeContentReader]:
    """A session in the TRANSACTION state over ``contents``, fed ``commands``
    at once (then EOF); ``chunked``: one byte at a time instead."""
    reader = asyncio.StreamReader()
    writer = FakeWriter()
    session, content_reader = make_session(reader, writer, contents, missing=missing)

    async def feed() -> None:
        if chunked:
            for byte in commands:
                reader.feed_data(bytes([byte]))
                await asyncio.sleep(0)
        else:
            reader.feed_data(commands)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    await session._loop()
    await feeder
    return writer, content_reader


def expected_retr(data: bytes) -> bytes:
    return b"+OK %d octets\r\n" % len(data) + old_dot_stuff(data)


MESSAGES = [
    b"Subject: one\r\n\r\n.dot\r\nbody\r\n",
    b".Subject: starts with a dot\n\n.bare LF dot\n.",
    b"Subject: three\r\n\r\n" + b"x" * 76 + b"\r\n",
]


def test_pipelined_commands_get_one_write() -> None:
    commands = b"STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\nLIST 2\r\nUIDL 3\r\nNOOP\r\n"
    writer, content_reader = asyncio.run(run_transaction(MESSAGES, commands))
    total = sum(len(m) for m in MESSAGES)
    sizes = [len(m) for m in MESSAGES]
    expected = (
        b"+OK 3 %d\r\n" % total
        + b"+OK Scan listing follows\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % tuple(sizes)
        + b"+OK Unique-id listing follows\r\n1 77.1\r\n2 77.2\r\n3 77.3\r\n.\r\n"
        + b"".join(expected_retr(m) for m in MESSAGES)
        + b"+OK 2 %d\r\n" % sizes[1]
        + b"+OK 3 77.3\r\n"
        + b"+OK\r\n"
    )
    assert writer.output() == expected
    assert len(writer.writes) == 1  # nine responses, one write
    assert content_reader.calls == 3


def test_commands_one_byte_at_a_time_give_the_same_bytes() -> None:
    commands = b"RETR 2\r\nTOP 1 0\r\nRETR 9\r\nDELE 1\r\nRETR 1\r\nLIST\r\nRSET\r\nUIDL\r\n"
    whole, _ = asyncio.run(run_transaction(MESSAGES, commands))
    trickle, _ = asyncio.run(run_transaction(MESSAGES, commands, chunked=True))
    assert whole.output() == trickle.output()
    assert len(whole.writes) == 1
    assert whole.output().startswith(expected_retr(MESSAGES[1]))
    assert b"-ERR No message 9\r\n+OK Message 1 deleted\r\n-ERR Message 1 is deleted\r\n" in (
        whole.output()
    )


def test_a_message_deleted_meanwhile_is_a_temporary_failure() -> None:
    # Listed at login, its file gone since (expunged over IMAP).
    writer, _ = asyncio.run(
        run_transaction(MESSAGES, b"RETR 1\r\nTOP 1 1\r\nRETR 2\r\n", missing=frozenset({1}))
    )
    gone = b"-ERR [SYS/TEMP] Message was deleted by another session\r\n"
    assert writer.output() == gone + gone + expected_retr(MESSAGES[1])


def test_a_large_message_is_sent_in_drained_pieces() -> None:
    # Lines starting with "." right at the piece boundaries.
    chunk = pop3.CHUNK
    head = b"Subject: large\r\n\r\n"
    line = b"y" * 98 + b"\r\n"
    filler = head + line * ((chunk - len(head)) // len(line))
    filler += b"z" * (chunk - len(filler) - 2) + b"\r\n"
    assert len(filler) == chunk
    data = filler + b".at the first boundary\r\n" + line * 3000 + b"\n..\r\n.last"
    writer, _ = asyncio.run(run_transaction([MESSAGES[0], data], b"RETR 1\r\nRETR 2\r\nNOOP\r\n"))
    assert writer.output() == expected_retr(MESSAGES[0]) + expected_retr(data) + b"+OK\r\n"
    pieces = -(-len(data) // chunk)
    assert pieces >= 2
    assert len(writer.writes) == pieces + 1  # each piece, then the terminator with NOOP's +OK
    # Never more than one piece (stuffed: a little more) before a drain.
    assert writer.most_between_drains <= chunk + 1024 + len(expected_retr(MESSAGES[0]))


def test_large_output_is_drained_at_the_high_water_mark() -> None:
    many = [b"Subject: %d\r\n\r\n" % n + b"x" * 4000 + b"\r\n" for n in range(100)]
    commands = b"".join(b"RETR %d\r\n" % n for n in range(1, 101))
    writer, _ = asyncio.run(run_transaction(many, commands))
    assert writer.output() == b"".join(expected_retr(m) for m in many)
    # Batched up to HIGH_WATER, not one write per response, nor one for all.
    assert 2 <= len(writer.writes) <= 100 * 4100 // pop3.HIGH_WATER + 2
    assert writer.most_between_drains < pop3.HIGH_WATER + 4200


# -- autologout (rfc1939:3) ----------------------------------------------------

GREETING = b"+OK mx.example.test estafeta POP3 ready\r\n"


async def run_session(
    session: pop3.Session, feed: Any, limit: float = 10.0
) -> tuple[float, asyncio.Task[None]]:
    """``session.run()`` with ``feed()`` as a task beside it; the seconds it
    took. The session's read timer is gone afterwards."""
    feeder = asyncio.create_task(feed())
    start = time.monotonic()
    await asyncio.wait_for(session.run(), limit)
    elapsed = time.monotonic() - start
    assert getattr(session, "_read_timer_handle", None) is None
    return elapsed, feeder


def test_autologout_when_not_logged_in_in_time() -> None:
    async def scenario() -> tuple[float, FakeWriter]:
        reader = asyncio.StreamReader()
        writer = FakeWriter()
        settings = pop3.Settings("mx.example.test", login_timeout=0.3)
        session, _ = make_session(reader, writer, [], settings=settings, logged_in=False)

        async def trickle() -> None:
            # A CAPA, then a line that never ends, a byte at a time: the
            # login deadline is one for the whole AUTHORIZATION state.
            reader.feed_data(b"CAPA\r\n")
            for _ in range(100):
                await asyncio.sleep(0.02)
                reader.feed_data(b"N")

        elapsed, feeder = await run_session(session, trickle)
        feeder.cancel()
        return elapsed, writer

    elapsed, writer = asyncio.run(scenario())
    assert 0.25 <= elapsed < 1.5
    out = writer.output()
    assert out.startswith(GREETING + b"+OK Capability list follows\r\n")
    assert out.endswith(b".\r\n-ERR Autologout: not logged in in time\r\n")
    assert writer.closed


def test_idle_autologout_after_login_and_each_command_restarts_it() -> None:
    async def scenario() -> tuple[float, FakeWriter]:
        reader = asyncio.StreamReader()
        writer = FakeWriter()
        # Gaps of a fifth of the timeout: a stall of the loop on a loaded
        # machine must not make a gap look like silence.
        settings = pop3.Settings("mx.example.test", idle_timeout=1.0)
        session, _ = make_session(reader, writer, MESSAGES, settings=settings)

        async def commands() -> None:
            for _ in range(6):  # 1.2 s in all, never 1 s silent
                reader.feed_data(b"NOOP\r\n")
                await asyncio.sleep(0.2)

        elapsed, _ = await run_session(session, commands)
        return elapsed, writer

    elapsed, writer = asyncio.run(scenario())
    assert 1.95 <= elapsed < 4  # the last command at 1.0 s, then 1 s idle
    assert writer.output() == (
        GREETING + b"+OK\r\n" * 6 + b"-ERR Autologout: idle for too long\r\n"
    )


def test_no_autologout_while_a_slow_client_is_sent_a_message() -> None:
    """The idle timer counts only while waiting for a command (as it did
    with a timeout around each read): a long RETR to a slow reader, longer
    than the idle timeout, is no reason to log out."""

    class SlowWriter(FakeWriter):
        def __init__(self) -> None:
            super().__init__()
            self.sent = asyncio.Event()  # greeting and three pieces drained

        async def drain(self) -> None:
            await asyncio.sleep(0.35)
            await super().drain()
            if self.drains == 4:
                self.sent.set()

    big = b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * (2 * pop3.CHUNK // 100 + 10)

    async def scenario() -> tuple[float, FakeWriter]:
        reader = asyncio.StreamReader()
        writer = SlowWriter()
        settings = pop3.Settings("mx.example.test", idle_timeout=0.3)
        session, _ = make_session(reader, writer, [big], settings=settings)

        async def commands() -> None:
            reader.feed_data(b"RETR 1\r\n")
            await writer.sent.wait()
            await asyncio.sleep(0.1)
            reader.feed_data(b"NOOP\r\nQUIT\r\n")

        elapsed, _ = await run_session(session, commands)
        return elapsed, writer

    elapsed, writer = asyncio.run(scenario())
    assert elapsed >= 1.0  # three slow drains after the greeting's: busy well past 0.3 s
    assert writer.output() == (
        GREETING + expected_retr(big) + b"+OK\r\n+OK Bye, 0 messages deleted\r\n"
    )


def test_the_read_timer_at_the_deadline() -> None:
    async def scenario(data: bytes) -> tuple[bytes | BaseException, BaseException | None]:
        reader = asyncio.StreamReader()
        session, _ = make_session(reader, FakeWriter(), MESSAGES)
        read = asyncio.create_task(session._read())
        await asyncio.sleep(0)  # the read is waiting
        if data:
            reader.feed_data(data)  # it is woken, but has not run yet
        session._read_timer(session._read_deadline)  # the deadline comes
        try:
            result: bytes | BaseException = await read
        except TimeoutError as exc:
            result = exc
        session._stop_read_timer()
        return result, reader.exception()

    # Silence: the read ends in TimeoutError (autologout).
    result, _ = asyncio.run(scenario(b""))
    assert isinstance(result, TimeoutError)
    # A command that came in just then is read, and no timeout is left
    # over for the next read.
    assert asyncio.run(scenario(b"NOOP\r\n")) == (b"NOOP\r\n", None)
