"""The sans-IO SMTP DATA reader (estafeta.smtp.data) and its byte budget.

Transcripts are fed whole, one byte at a time and in random chunks, and
must give the same outcome. A reference reader written the way aiosmtpd
1.4.6 reads DATA (one line at a time, CRLF only) decides what the outcome
must be for generated input. Then the asyncio side: many transfers cut
short in every way (disconnect, data timeout, cancel, too big, out of
budget) leave the shared budget at 0.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estafeta.smtp.data import (
    MAX_LINE,
    NEED_DATA,
    DataBudget,
    DataEnd,
    DataReader,
    DataStatus,
)
from estafeta.smtp.protocol import DATA_STREAM_LIMIT, Connections, SMTPProtocol

# -- the reader --------------------------------------------------------------------------


def feed(
    data: bytes, sizes: list[int] | None = None, **kwargs: Any
) -> tuple[DataReader, DataEnd | None]:
    """Feed ``data`` in pieces of ``sizes`` (cycled; None: at once)."""
    reader = DataReader(**kwargs)
    pos, i = 0, 0
    while pos < len(data):
        size = len(data) if sizes is None else sizes[i % len(sizes)]
        reader.receive_data(data[pos : pos + size])
        pos += size
        i += 1
    event = reader.next_event()
    return reader, event if isinstance(event, DataEnd) else None


def outcome(data: bytes, sizes: list[int] | None = None, **kwargs: Any) -> tuple[Any, ...]:
    reader, end = feed(data, sizes, **kwargs)
    if end is None:
        return ("need data",)
    message = reader.take_message() if end.status is DataStatus.OK else None
    return (end.status, end.size, message, reader.trailing)


def every_way(data: bytes, **kwargs: Any) -> tuple[Any, ...]:
    """The outcome, checked to be the same whatever the chunking."""
    whole = outcome(data, **kwargs)
    assert outcome(data, [1], **kwargs) == whole
    assert outcome(data, [2, 3, 1, 5], **kwargs) == whole
    rng = random.Random(len(data))
    assert outcome(data, [rng.randint(1, 7) for _ in range(13)], **kwargs) == whole
    return whole


TRANSCRIPTS = [
    # (what follows the 354, the message, octets counted, what is left after the dot)
    (b".\r\n", b"", 0, b""),
    (b"\r\n.\r\n", b"\r\n", 2, b""),
    (b"Subject: x\r\n\r\nhi\r\n.\r\n", b"Subject: x\r\n\r\nhi\r\n", 18, b""),
    # rfc5321:4.5.2 — the first dot of a line is removed, only the first.
    (b"..\r\n.x\r\n...\r\nend.\r\n.\r\n", b".\r\nx\r\n..\r\nend.\r\n", 19, b""),
    (b".start\r\n.\r\n", b"start\r\n", 8, b""),
    # Only CRLF "." CRLF ends the data (rfc5321:2.3.8): no lone LF or CR.
    (b"a\n.\nb\r.\r\n.\r\n", b"a\n.\nb\r.\r\n", 9, b""),
    (b"a\r\n.\n.\r\r\n.\r\n", b"a\r\n\n.\r\r\n", 9, b""),
    # Pipelined commands after the dot stay for the command reader.
    (b"x\r\n.\r\nQUIT\r\n", b"x\r\n", 3, b"QUIT\r\n"),
    (b".\r\nRSET\r\n", b"", 0, b"RSET\r\n"),
]


@pytest.mark.parametrize(("sent", "message", "size", "trailing"), TRANSCRIPTS)
def test_transcripts(sent: bytes, message: bytes, size: int, trailing: bytes) -> None:
    assert every_way(sent) == (DataStatus.OK, size, message, trailing)


def test_need_data_until_the_final_dot() -> None:
    reader = DataReader()
    for piece in (b"Subject: x\r\n", b"\r\n", b"body\r", b"\n.", b"\r"):
        reader.receive_data(piece)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\n")
    assert reader.next_event() == DataEnd(DataStatus.OK, 20)
    assert reader.take_message() == b"Subject: x\r\n\r\nbody\r\n"


def test_line_length_limit() -> None:
    # 998 octets + CRLF, plus a transparency dot: 1001 octets is the longest line.
    longest = b"." + b"x" * (MAX_LINE - 3) + b"\r\n"
    status, _, message, _ = every_way(longest + b".\r\n")
    assert status is DataStatus.OK and message == longest[1:]
    too_long = b"x" * (MAX_LINE - 1) + b"\r\n"
    assert every_way(too_long + b"ok\r\n.\r\n")[0] is DataStatus.LINE_TOO_LONG
    # A line of bare LFs is one line (rfc5321:2.3.8).
    assert every_way(b"a\n" * 600 + b"\r\n.\r\n")[0] is DataStatus.LINE_TOO_LONG
    # A long line with no CRLF at all yet, then the end.
    assert every_way(b"y" * 100_000 + b"\r\n.\r\n")[0] is DataStatus.LINE_TOO_LONG


def test_size_limit_counts_octets_as_sent() -> None:
    body = b"..\r\n" * 10  # 40 octets as sent, 30 once unstuffed
    assert every_way(body + b".\r\n", size_limit=40)[0] is DataStatus.OK
    end = every_way(body + b".\r\n", size_limit=39)
    assert end[:3] == (DataStatus.TOO_MUCH_DATA, 40, None)


def test_errors_keep_reading_to_the_dot() -> None:
    # The reply comes only after the final dot (rfc5321:4.2.5); what follows it is kept.
    sent = b"z" * 5000 + b"\r\n" + b"more\r\n" * 100 + b".\r\nNOOP\r\n"
    status, _, _, trailing = every_way(sent)
    assert status is DataStatus.LINE_TOO_LONG and trailing == b"NOOP\r\n"


# A reference: aiosmtpd 1.4.6's smtp_DATA, line by line (without its stream limit).
def reference(data: bytes, size_limit: int | None) -> tuple[Any, ...]:
    lines, pos, size, status = [], 0, 0, DataStatus.OK
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return ("need data",)
        line = data[pos : end + 2]
        pos = end + 2
        if line == b".\r\n":
            break
        size += len(line)
        if status is DataStatus.OK and size_limit and size > size_limit:
            status = DataStatus.TOO_MUCH_DATA
        if status is DataStatus.OK and len(line) > MAX_LINE:
            status = DataStatus.LINE_TOO_LONG
        lines.append(line[1:] if line.startswith(b".") else line)
    message = b"".join(lines) if status is DataStatus.OK else None
    return (status, size, message, data[pos:])


# Alphabets that make the interesting sequences (CR, LF, dots) likely.
_PIECES = st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b"..", b"\r\n.", b"x" * 400])


@given(
    st.lists(_PIECES, max_size=40).map(b"".join),
    st.lists(st.integers(1, 9), min_size=1, max_size=8),
    st.sampled_from([None, 50, 500]),
)
def test_same_outcome_as_aiosmtpd(body: bytes, sizes: list[int], limit: int | None) -> None:
    for data in (body, body + b"\r\n.\r\nNOOP\r\n"):
        expected = reference(data, limit)
        assert outcome(data, None, size_limit=limit) == expected
        assert outcome(data, sizes, size_limit=limit) == expected


def via_stream(data: bytes, limit: int) -> tuple[Any, ...]:
    """What SMTPProtocol does, on a model of asyncio.StreamReader with
    ``limit``: read up to ``reader.needed()`` (one octet after a CRLF),
    pieces on LimitOverrunError. The outcome, and what is left unread."""
    stream = bytearray(data)
    reader = DataReader()
    while not reader.done:
        needed = reader.needed()
        if needed == b".\r\n":
            size = min(1, len(stream))
        else:
            found = stream.find(needed)
            if 0 <= found <= limit:
                size = found + len(needed)
            elif found > limit:  # "separator is found, but chunk is longer than limit"
                size = found
            elif len(stream) + 1 - len(needed) > limit:  # "separator is not found"
                size = len(stream) + 1 - len(needed)
            else:
                size = 0  # readuntil would wait for more
        if not size:
            return ("need data",)
        reader.receive_data(bytes(stream[:size]))
        del stream[:size]
    assert reader.trailing == b""  # never read past the final dot
    end = reader.next_event()
    assert isinstance(end, DataEnd)
    message = reader.take_message() if end.status is DataStatus.OK else None
    return (end.status, end.size, message, bytes(stream))


@given(
    st.lists(_PIECES, max_size=40).map(b"".join),
    st.sampled_from([5, 16, MAX_LINE]),
)
def test_the_io_side_never_reads_past_the_dot(body: bytes, limit: int) -> None:
    data = body + b"\r\n.\r\nNOOP\r\n.\r\n"
    assert via_stream(data, limit) == reference(data, None)


# -- the budget --------------------------------------------------------------------------


def test_budget_is_reserved_as_bytes_arrive_and_released_on_close() -> None:
    budget = DataBudget(1000)
    reader = DataReader(budget=budget)
    reader.receive_data(b"x" * 300 + b"\r\n")
    assert budget.used == reader.reserved >= 300
    reader.receive_data(b".\r\n")
    assert reader.take_message() == b"x" * 300 + b"\r\n"
    assert budget.used == 302  # until the transaction ends
    reader.close()
    reader.close()
    assert budget.used == 0


def test_over_budget_discards_and_reads_to_the_dot() -> None:
    budget = DataBudget(1000)
    holder = DataReader(budget=budget)
    holder.receive_data(b"h" * 800 + b"\r\n")
    reader = DataReader(budget=budget)
    reader.receive_data(b"y" * 150 + b"\r\n")
    # The CRLFs at the ends wait for what follows them (maybe a final dot).
    assert budget.used == 950
    reader.receive_data(b"z" * 100 + b"\r\n")
    # Refused: nothing half-kept, what it held is back in the budget.
    assert reader.status is DataStatus.NO_MEMORY and reader.reserved == 0
    assert budget.used == 800
    reader.receive_data(b"w" * 900 + b"\r\n" * 100)
    assert budget.used == 800 and reader.next_event() is NEED_DATA
    reader.receive_data(b".\r\nQUIT\r\n")
    assert reader.next_event() == DataEnd(DataStatus.NO_MEMORY, 152 + 102 + 1100)
    assert reader.trailing == b"QUIT\r\n"
    reader.close()
    holder.close()
    assert budget.used == 0


def test_a_permanent_error_wins_over_memory() -> None:
    budget = DataBudget(100)
    sent = b"a" * 200 + b"\r\n" + b"b" * 2000 + b"\r\n.\r\n"
    _, end = feed(sent, [7], budget=budget)
    assert end is not None and end.status is DataStatus.LINE_TOO_LONG
    assert budget.used == 0


def test_memory_is_one_buffer() -> None:
    """5 MiB of empty lines: one bytearray of 5 MiB, not a million objects."""
    budget = DataBudget(64 << 20)
    reader = DataReader(budget=budget)
    chunk = b"\r\n" * 32768
    for _ in range(80):
        reader.receive_data(chunk)
    assert budget.used == 80 * len(chunk) - 2  # the last CRLF may end the data
    reader.receive_data(b".\r\n")
    assert len(reader.take_message()) == 80 * len(chunk)
    reader.close()
    assert budget.used == 0


# -- the protocol: every way out gives the budget back -----------------------------------


class Handler:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Held while the hook runs.
        assert server._data_memory.used >= len(envelope.original_content)
        self.messages.append(envelope.original_content)
        return "250 2.0.0 Ok"


async def _serve(budget: DataBudget, handler: Handler, **kwargs: Any) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    connections = Connections(limit=100)

    def make() -> SMTPProtocol:
        return SMTPProtocol(
            handler,
            connections=connections,
            data_memory=budget,
            data_size_limit=2 * len(BLOCK) + 1000,
            hostname="mx.example.test",
            loop=loop,
            **kwargs,
        )

    return await loop.create_server(make, "127.0.0.1", 0)


async def _open_transfer(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    while not (await reader.readline()).startswith(b"354"):
        pass
    return reader, writer


async def _until_used(budget: DataBudget, value: int) -> None:
    for _ in range(500):
        if budget.used == value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"budget used {budget.used}, expected {value}")


# More than the stream's limit during DATA (DATA_STREAM_LIMIT), so the
# reader gets at least all but that much at once.
BLOCK = (b"x" * 98 + b"\r\n") * (DATA_STREAM_LIMIT // 100 + 15)


async def _stable(budget: DataBudget) -> int:
    """``budget.used`` once it has not changed for 0.2 s."""
    last, same = -1, 0
    while same < 20:
        await asyncio.sleep(0.01)
        same = same + 1 if budget.used == last else 0
        last = budget.used
    return last


async def _held(budget: DataBudget, transfers: int) -> int:
    """What each of ``transfers`` equal transfers holds."""
    used = await _stable(budget)
    held = used // transfers
    assert used == transfers * held
    assert len(BLOCK) - DATA_STREAM_LIMIT <= held <= len(BLOCK)
    return held


def test_aborted_transfers_leave_the_budget_at_zero() -> None:
    async def main() -> None:
        budget = DataBudget(4 * len(BLOCK) + len(BLOCK) // 2)
        handler = Handler()
        server = await _serve(budget, handler, data_timeout=2.0)
        port = server.sockets[0].getsockname()[1]
        try:
            for round_ in range(4):
                streams = [await _open_transfer(port) for _ in range(4)]
                for _, writer in streams:
                    writer.write(BLOCK)
                    await writer.drain()
                held = await _held(budget, 4)
                streams[1][1].write(BLOCK)  # beyond the budget, not the size limit
                await _until_used(budget, 3 * held)
                # Disconnect one, finish one over budget, one too big; the
                # last one delivers; and one more times out in DATA.
                streams[0][1].transport.abort()
                streams[1][1].write(b".\r\n")
                assert (await streams[1][0].readline()).startswith(b"452 4.3.1 ")
                streams[2][1].write(BLOCK * 2 + b".\r\n")
                assert (await streams[2][0].readline()).startswith(b"552 5.3.4 ")
                streams[3][1].write(b".\r\n")
                assert (await streams[3][0].readline()).startswith(b"250 ")
                if round_ % 2:
                    timed = await _open_transfer(port)
                    timed[1].write(BLOCK)
                    assert (await timed[0].readline()).startswith(b"421 4.4.2 ")
                    timed[1].close()
                for _, writer in streams:
                    writer.close()
                await _until_used(budget, 0)
            assert handler.messages == [BLOCK] * 4
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_cancelled_sessions_give_the_budget_back() -> None:
    """Server shutdown cancels the session tasks in the middle of DATA."""

    async def main() -> None:
        budget = DataBudget(20 * len(BLOCK))
        server = await _serve(budget, Handler())
        port = server.sockets[0].getsockname()[1]
        streams = [await _open_transfer(port) for _ in range(10)]
        for _, writer in streams:
            writer.write(BLOCK)
            await writer.drain()
        await _held(budget, 10)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await _until_used(budget, 0)
        for _, writer in streams:
            writer.close()
        server.close()

    asyncio.run(main())
