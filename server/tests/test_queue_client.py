"""The outbound SMTP client: reply parser transcripts, dot-stuffing, pipelining."""

from __future__ import annotations

import asyncio

import pytest

from estafeta.queue.client import ProtocolError, Reply, ReplyParser, SMTPConnection, dot_stuff

TRANSCRIPT = (
    b"220 mx.example.net ESMTP ready\r\n"
    b"250-mx.example.net greets you\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000\r\n"
    b"250 STARTTLS\r\n"
    b"250 2.1.0 Ok\r\n"
    b"550 5.1.1 <nobody@example.net>: no such user\r\n"
    b"451-4.3.0 first line\n"  # a bare LF is tolerated on input
    b"451 4.3.0 second line\r\n"
)
EXPECTED = [
    Reply(220, ("mx.example.net ESMTP ready",)),
    Reply(250, ("mx.example.net greets you", "PIPELINING", "SIZE 1000", "STARTTLS")),
    Reply(250, ("2.1.0 Ok",)),
    Reply(550, ("5.1.1 <nobody@example.net>: no such user",)),
    Reply(451, ("4.3.0 first line", "4.3.0 second line")),
]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, len(TRANSCRIPT)])
def test_parser_same_replies_at_any_chunk_size(chunk: int) -> None:
    parser = ReplyParser()
    replies: list[Reply] = []
    for start in range(0, len(TRANSCRIPT), chunk):
        parser.feed(TRANSCRIPT[start : start + chunk])
        replies += parser.replies()
    assert replies == EXPECTED
    assert not parser.buffered


def test_reply_properties() -> None:
    ok, nouser, later = EXPECTED[2], EXPECTED[3], EXPECTED[4]
    assert ok.positive and ok.enhanced == "2.1.0"
    assert nouser.enhanced == "5.1.1" and not nouser.temporary
    assert later.temporary and later.status() == "4.3.0"
    # No enhanced code: the class comes from the reply code.
    assert Reply(554, ("go away",)).status("7.1") == "5.7.1"
    # An enhanced code of another class than the reply is not believed.
    assert Reply(250, ("5.1.1 odd",)).enhanced is None


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"2x0 bad code\r\n",
        b"250-first\r\n251 changed code\r\n",
        b"250_ bad separator\r\n",
        b"250 " + b"x" * 5000,
    ],
)
def test_parser_rejects_what_is_not_a_reply(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyParser().feed(data)


def test_dot_stuffing() -> None:
    # rfc5321:4.5.2 — a line starting with "." gets another one.
    assert dot_stuff(b".start\r\nmid\r\n.\r\nend") == b"..start\r\nmid\r\n..\r\nend\r\n.\r\n"
    assert dot_stuff(b"") == b"\r\n.\r\n"


async def _fake_server(replies: list[bytes], received: list[bytes]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        await writer.drain()
        queue = list(replies)
        while queue:
            data = await reader.read(65536)
            if not data:
                break
            received.append(data)
            lines = data.count(b"\r\n")
            for _ in range(lines):
                if queue:
                    writer.write(queue.pop(0))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_envelope_is_pipelined_when_offered() -> None:
    async def run() -> tuple[list[bytes], Reply, list[Reply]]:
        received: list[bytes] = []
        server, port = await _fake_server(
            [
                b"250-fake\r\n250 PIPELINING\r\n",
                b"250 2.1.0 ok\r\n",
                b"250 2.1.5 ok\r\n",
                b"550 5.1.1 no\r\n",
                b"221 bye\r\n",
            ],
            received,
        )
        async with server:
            conn, greeting = await SMTPConnection.open(
                "127.0.0.1", port, time_limit=5, peer_name="fake"
            )
            assert greeting.code == 220
            await conn.ehlo("me.example")
            mail, rcpts = await conn.envelope("a@x.test", ["b@y.test", "c@y.test"])
            await conn.quit()
        return received, mail, rcpts

    received, mail, rcpts = asyncio.run(run())
    # MAIL and both RCPTs went out in one write: one round trip (rfc2920:3.1).
    assert received[1] == b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n"
    assert mail.code == 250
    assert [r.code for r in rcpts] == [250, 550]
