"""estafeta.starttls.drain_pipelined on a StreamReader fed by the test: what
it drops, when it stops waiting, and its bounds against a client that
trickles (the socket-level cases are in tests/security/test_starttls_injection.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from estafeta import starttls


def run(scenario: Callable[[asyncio.StreamReader], Coroutine[Any, Any, int]]) -> int:
    async def main() -> int:
        reader = asyncio.StreamReader()
        return await scenario(reader)

    return asyncio.run(main())


def test_nothing_pipelined_drops_nothing_and_does_not_wait_for_a_late_piece() -> None:
    async def scenario(reader: asyncio.StreamReader) -> int:
        # A piece after the reply would be the ClientHello: not waited for.
        asyncio.get_running_loop().call_later(0.05, reader.feed_data, b"\x16\x03\x01")
        dropped = await starttls.drain_pipelined(reader)
        assert await reader.read(3) == b"\x16\x03\x01"  # still there for TLS
        return dropped

    assert run(scenario) == 0


def test_what_the_stream_holds_and_a_piece_that_comes_late_are_dropped() -> None:
    async def scenario(reader: asyncio.StreamReader) -> int:
        reader.feed_data(b"RSET\r\n")
        asyncio.get_running_loop().call_later(0.05, reader.feed_data, b"MAIL FROM:<a@b>\r\n")
        dropped = await starttls.drain_pipelined(reader)
        reader.feed_data(b"\x16\x03\x01")  # after the pause: the ClientHello
        assert await reader.read(100) == b"\x16\x03\x01"
        return dropped

    assert run(scenario) == len(b"RSET\r\nMAIL FROM:<a@b>\r\n")


def test_what_the_parser_held_is_reason_enough_to_wait() -> None:
    async def scenario(reader: asyncio.StreamReader) -> int:
        asyncio.get_running_loop().call_later(0.05, reader.feed_data, b"b CAPABILITY\r\n")
        return await starttls.drain_pipelined(reader, pipelined=65000)

    assert run(scenario) == len(b"b CAPABILITY\r\n")


def test_a_trickle_is_cut_off_after_the_drain_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(starttls, "DRAIN_TIME", 0.3)
    sent: list[int] = []

    async def scenario(reader: asyncio.StreamReader) -> int:
        async def trickle() -> None:
            while True:  # a byte every 20 ms, never a pause of PAUSE
                reader.feed_data(b"x")
                sent.append(1)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(trickle())
        await asyncio.sleep(0)
        try:  # unbounded, it would never return: the test fails after 5 s
            return await asyncio.wait_for(starttls.drain_pipelined(reader), 5)
        finally:
            task.cancel()

    dropped = run(scenario)
    assert 0 < dropped <= len(sent)


def test_at_most_starttls_drain_octets_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(starttls, "STARTTLS_DRAIN", 1000)

    async def scenario(reader: asyncio.StreamReader) -> int:
        reader.feed_data(b"x" * 600)
        asyncio.get_running_loop().call_later(0.05, reader.feed_data, b"y" * 600)
        dropped = await starttls.drain_pipelined(reader)
        rest = await reader.read(2000)
        assert rest == b"y" * (1200 - dropped)  # left for the handshake to refuse
        return dropped

    assert run(scenario) == 1000


def test_the_end_of_the_stream_ends_the_drain() -> None:
    async def scenario(reader: asyncio.StreamReader) -> int:
        reader.feed_data(b"QUIT\r\n")
        reader.feed_eof()
        return await starttls.drain_pipelined(reader)

    assert run(scenario) == len(b"QUIT\r\n")
