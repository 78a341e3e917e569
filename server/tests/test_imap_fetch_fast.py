"""FETCH of items the index rows answer alone (issue 17): the fast path.

``fetch.RowFormat`` renders UID, FLAGS, RFC822.SIZE, INTERNALDATE, MODSEQ
and ENVELOPE straight from the index rows; every other item list takes the
general path (MessageData, ``render_pieces``). Each test here runs real
sessions over a real store, once as the server runs and once with the fast
path switched off, and compares the bytes sent, octet for octet: flags with
keywords, CONDSTORE MODSEQ and CHANGEDSINCE, QRESYNC VANISHED, UID FETCH,
sequence sets with gaps and repeats, $ (SEARCHRES), envelopes with NIL
fields, 8-bit and long values, rows from before schema 3 without a stored
envelope, dates clamped at both ends, IMAP4rev2 and UTF8=ACCEPT sessions.
Then: the fast path gives other tasks turns, and stops when the client has
gone.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fakeio import FakeWriter
from test_imap_stream import pair

from estafeta.imap import session as session_module
from estafeta.imap import stream
from estafeta.imap.fetch import MessageData, RowFormat, render_items
from estafeta.imap.parser import Command, Parser
from estafeta.imap.session import AUTHENTICATED, Session, Settings
from estafeta.imap.stream import FLUSH, ResponseStream
from estafeta.imap.types import FetchAtt
from estafeta.message import summarize
from estafeta.store import Delivery, Store

ALICE = "alice@example.test"
MAX_TIME = 253_402_300_799


def message(n: int) -> bytes:
    """Message ``n``: headers that exercise the envelope's cases."""
    kind = n % 8
    if kind == 0:  # nothing but a body: an envelope of NILs
        return b"\r\nno header at all %d\r\n" % n
    if kind == 1:
        header = (
            f"From: Alice <alice@example.test>\r\nTo: bob@example.test, carol@example.test\r\n"
            f"Cc: undisclosed-recipients:;\r\nSubject: plain {n}\r\n"
            f"Date: Mon, 23 Nov 2026 10:{n % 60:02d}:00 +0000\r\nMessage-ID: <{n}@example.test>\r\n"
        ).encode()
    elif kind == 2:  # 8-bit UTF-8 in the header, an encoded word, a group
        header = (
            "From: José Müller <jose@example.test>\r\n"
            "To: friends: a@example.test, b@example.test;\r\n"
            f"Subject: =?utf-8?q?caf=C3=A9?= número {n}\r\nIn-Reply-To: <x{n}@example.test>\r\n"
        ).encode()
    elif kind == 3:  # a long subject (a literal), quotes and backslashes
        header = (
            f'From: "Q \\"uote\\"" <q@example.test>\r\nSubject: {"long " * 300}{n}\r\n'
            f'Reply-To: "back\\\\slash" <r@example.test>\r\n'
        ).encode()
    elif kind == 4:  # bytes that are not UTF-8
        header = b"From: latin \xe9 <l@example.test>\r\nSubject: caf\xe9 %d\r\n" % n
    elif kind == 5:  # no Date, no Message-ID, Sender and Bcc
        header = (
            f"Sender: s@example.test\r\nBcc: hidden@example.test\r\nSubject: bits {n}\r\n"
        ).encode()
    elif kind == 6:  # a multipart message
        header = (
            f"From: m@example.test\r\nSubject: multi {n}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n'
        ).encode()
        return header + b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"
    else:
        header = f"From: <>\r\nSubject:\r\nTo: ,,,\r\nDate: not a date {n}\r\n".encode()
    return header + b"\r\nbody of %d\r\n" % n


FLAG_SETS: list[tuple[str, ...]] = [
    (),
    ("\\Seen",),
    ("\\Seen", "\\Flagged"),
    ("$Label1",),
    ("\\Answered", "Work", "$Forwarded"),
    ("\\Draft",),
    ("\\Deleted", "\\Seen"),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        deliveries = [
            Delivery(
                ALICE,
                message(n),
                summarize(message(n)),
                flags=FLAG_SETS[n % len(FLAG_SETS)],
                # Shared dates and dates of their own, across days and years.
                internal_date=1_700_000_000 + (n // 5) * 3_599 + (n % 3) * 86_400 * 400,
            )
            for n in range(60)
        ]
        s.deliver_sync(deliveries)
        s.store_flags(ALICE, "INBOX", [3, 9, 27], "+", ["\\Flagged", "$Important"])
        s.store_flags(ALICE, "INBOX", [4, 27], "-", ["\\Seen"])
        s.remove(ALICE, "INBOX", [5, 6, 7, 20, 41, 60])
        conn = s.open_index(ALICE)
        try:
            # Dates clamped by the renderer, before 1970 and after 9999.
            conn.execute("UPDATE messages SET internal_date = -5 WHERE uid = 10")
            conn.execute("UPDATE messages SET internal_date = 0 WHERE uid = 11")
            update = "UPDATE messages SET internal_date = ? WHERE uid = ?"
            conn.execute(update, (MAX_TIME + 86_400, 12))
            conn.execute(update, (MAX_TIME, 13))
            # Rows from before schema 3 have no stored envelope.
            conn.execute("UPDATE messages SET envelope = NULL WHERE uid IN (14, 15, 33)")
            conn.commit()
        finally:
            conn.close()
        # A session was told of the first 30: those above are \Recent to an
        # IMAP4rev1 session (rfc3501:2.3.2). The scripts EXAMINE, so that
        # each run sees the same ones (a SELECT would take them).
        s.claim_recent(ALICE, 1, 30)
        yield s


def command(line: bytes) -> Command:
    parser = Parser()
    parser.receive_data(line + b"\r\n")
    event = parser.next_event()
    assert isinstance(event, Command), event
    return event


def open_session(store: Store) -> tuple[Session, FakeWriter]:
    """A session logged in as ALICE, writing to a FakeWriter (call from a
    running event loop)."""
    writer = FakeWriter()
    session = Session(
        asyncio.StreamReader(),
        writer,  # type: ignore[arg-type]
        accounts=None,  # type: ignore[arg-type]
        authenticator=None,  # type: ignore[arg-type]
        store=store,
        settings=Settings("mx.example.test"),
        tls=None,
        implicit_tls=False,
    )
    session.state = AUTHENTICATED
    session.user = ALICE
    session.index_reader = store.reader(ALICE)
    return session, writer


async def transcript(store: Store, lines: list[bytes], fast: bool) -> list[bytes]:
    """What the server sends for each command line, in one session."""
    session, writer = open_session(store)
    replies = []
    with pytest.MonkeyPatch.context() as patch:
        if not fast:
            patch.setattr(RowFormat, "for_items", classmethod(lambda cls, atts: None))
        for line in lines:
            del writer.data[:]
            await session._dispatch(command(line))
            replies.append(bytes(writer.data))
    session.index().close()
    return replies


SCRIPT = [
    b"a EXAMINE INBOX",
    b"b FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)",
    b"c FETCH 1:* ALL",
    b"d FETCH 1:* FAST",
    b"e FETCH 1:* INTERNALDATE",
    b"f UID FETCH 1:* FLAGS",
    b"g UID FETCH 2,4:9,14:16,30:*,999 (ENVELOPE FLAGS)",
    b"h FETCH 3,1,7:5,40:* (UID UID FLAGS ENVELOPE FLAGS RFC822.SIZE uid)",
    b"i FETCH 2:3 (ENVELOPE)",
    b"j UID FETCH 1000:2000 (UID)",
    b"k UID FETCH 10:13 (INTERNALDATE UID)",
    b"l SEARCH RETURN (SAVE) FLAGGED",
    b"m FETCH $ (FLAGS UID)",
    b"n FETCH 1:* (MODSEQ)",
    b"o FETCH 1:* (FLAGS)",
    b"p UID FETCH 1:* (FLAGS) (CHANGEDSINCE 2)",
    b"q FETCH 1:* (UID ENVELOPE INTERNALDATE RFC822.SIZE FLAGS MODSEQ) (CHANGEDSINCE 1)",
    b"r FETCH 1:* (BODY.PEEK[HEADER] FLAGS)",  # the general path in both runs
]


@pytest.mark.parametrize("chunk", [3, 256])
@pytest.mark.parametrize("enable", [b"", b"z ENABLE IMAP4rev2", b"z ENABLE UTF8=ACCEPT"])
def test_fast_path_sends_the_same_bytes_as_the_general_path(
    store: Store, monkeypatch: pytest.MonkeyPatch, chunk: int, enable: bytes
) -> None:
    monkeypatch.setattr(session_module, "_FETCH_ROWS", chunk)
    calls: list[int] = []
    original = session_module._fetch_from_rows

    async def counted(*args: Any) -> None:
        calls.append(1)
        await original(*args)

    monkeypatch.setattr(session_module, "_fetch_from_rows", counted)
    script = ([enable] if enable else []) + SCRIPT
    fast = asyncio.run(transcript(store, script, fast=True))
    fast_calls = len(calls)
    general = asyncio.run(transcript(store, script, fast=False))
    assert fast_calls == sum(1 for line in script if b" FETCH " in line) - 1
    assert len(calls) == fast_calls  # the second run never took it
    for line, got, expected in zip(script, fast, general, strict=True):
        assert got == expected, line
    replies = dict(zip(script, fast, strict=True))
    # The run covered what it meant to.
    whole = replies[b"b FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)"]
    assert whole.count(b" FETCH (UID ") == 54
    assert whole.startswith(b"* 1 FETCH (UID 1 FLAGS () RFC822.SIZE ")
    assert b"* 5 FETCH (UID 8 FLAGS (" in whole  # sequence numbers after the gap
    assert b"ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)" in whole
    assert b"$Important" in whole and b"{" in whole  # a keyword, a literal
    dates = replies[b"k UID FETCH 10:13 (INTERNALDATE UID)"]
    assert b'INTERNALDATE " 1-Jan-1970 00:00:00 +0000"' in dates
    assert b'INTERNALDATE "31-Dec-9999 23:59:59 +0000" UID 13' in dates
    assert b"None" not in whole  # rows without a stored envelope got theirs
    assert replies[b"m FETCH $ (FLAGS UID)"].count(b" FETCH (FLAGS (") == 11
    changed = replies[b"p UID FETCH 1:* (FLAGS) (CHANGEDSINCE 2)"]
    assert changed.count(b" FETCH (UID ") == 3 and b"* 6 FETCH (UID 9 FLAGS (" in changed
    assert replies[b"j UID FETCH 1000:2000 (UID)"] == b"j OK UID FETCH completed\r\n"
    # \Recent above UID 30 for IMAP4rev1, in both paths (compared above).
    recent = b"\\Recent" in replies[b"o FETCH 1:* (FLAGS)"]
    assert recent == (b"IMAP4rev2" not in enable)
    if recent:
        flags = replies[b"f UID FETCH 1:* FLAGS"]
        assert re.search(rb"\* 26 FETCH \(UID 30 FLAGS \((?!\\Recent)", flags)
        assert re.search(rb"\* 27 FETCH \(UID 31 FLAGS \(\\Recent[ )]", flags)
        assert flags.count(b"\\Recent") == 54 - 26


def test_vanished_and_changedsince_take_the_fast_path(store: Store) -> None:
    script = [
        b"a ENABLE QRESYNC",
        b"b EXAMINE INBOX",
        b"c UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",
        b"d UID FETCH 30:* (UID ENVELOPE) (CHANGEDSINCE 1 VANISHED)",
        b"e UID FETCH 1:* (FLAGS) (CHANGEDSINCE 2 VANISHED)",
    ]
    fast = asyncio.run(transcript(store, script, fast=True))
    general = asyncio.run(transcript(store, script, fast=False))
    assert fast == general
    # "*" is the largest UID in the view: 59, not the expunged 60.
    assert fast[2].startswith(b"* VANISHED (EARLIER) 5:7,20,41\r\n")
    assert fast[2].count(b" FETCH (UID ") == 54
    assert fast[3].startswith(b"* VANISHED (EARLIER) 41\r\n")
    assert fast[3].count(b" FETCH (UID ") == 29  # 30:59 but 41
    # Only what the STOREs changed, with its sequence number (a bisection).
    assert fast[4].count(b" FETCH (UID ") == 3
    assert b"* 6 FETCH (UID 9 FLAGS (\\Seen \\Flagged $Important) MODSEQ (" in fast[4]


def test_row_lines_match_render_items() -> None:
    """RowFormat against the renderer, row by row, dates at every hour of
    days across the range, flag texts with odd spacing."""
    atts = [FetchAtt(name) for name in ("MODSEQ", "INTERNALDATE", "FLAGS", "UID", "ENVELOPE")]
    row_format = RowFormat.for_items(atts)
    assert row_format is not None
    summary = summarize(b"Subject: x\r\n\r\n")
    timestamps = [-(10**12), -1, 0, 1, 59, 86_399, 86_400, 951_782_400, 4_107_542_399]
    timestamps += [MAX_TIME - 1, MAX_TIME, MAX_TIME + 1, 10**15]
    timestamps += [1_700_000_000 + 3_601 * k for k in range(200)]
    flag_texts = ["", "\\Seen", "\\Seen  \\Flagged", " $a b ", "caf\udce9"]
    rows: list[Any] = [
        (uid, "file", 100 + uid, ts, flag_texts[uid % 5], 7 * uid, None, b'("x")')
        for uid, ts in enumerate(timestamps, 1)
    ]
    seqs = range(3, 3 + len(rows))
    lines = row_format.lines(seqs, rows)
    for seq, row, line in zip(seqs, rows, lines, strict=True):
        data = MessageData(
            uid=row[0],
            flags=tuple(row[4].split()),
            internal_date=row[3],
            size=row[2],
            modseq=row[5],
            summary=summary,
            load=lambda: b"",
            envelope=row[7],
        )
        assert line == b"* %d FETCH (%s)\r\n" % (
            seq,
            render_items(data, atts, imap4rev2=False),
        )


def test_only_row_items_take_the_fast_path() -> None:
    assert RowFormat.for_items([FetchAtt("UID"), FetchAtt("ENVELOPE")]) is not None
    assert RowFormat.for_items([]) is None
    for name in ("BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        assert RowFormat.for_items([FetchAtt("UID"), FetchAtt(name)]) is None
    assert RowFormat.for_items([FetchAtt("BODY[]", peek=True)]) is None
    assert RowFormat.for_items([FetchAtt("BINARY.SIZE")]) is None


BIG = 5000


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store whose INBOX holds BIG small messages."""
    with Store(tmp_path_factory.mktemp("big"), "mx.example.test") as store:
        data = b"From: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"
        store.deliver_sync([Delivery(ALICE, data, summarize(data)) for _ in range(BIG)])
        yield store


def test_a_long_fetch_gives_other_tasks_turns(big: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "_FETCH_ROWS", 100)

    async def main() -> tuple[int, bytes]:
        session, writer = open_session(big)
        await session._dispatch(command(b"a SELECT INBOX"))
        del writer.data[:]
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = turns
        await session._dispatch(command(b"b FETCH 1:* (UID FLAGS ENVELOPE)"))
        during = turns - start
        done = True
        await task
        session.index().close()
        return during, bytes(writer.data)

    turns, reply = asyncio.run(main())
    assert reply.count(b" FETCH (UID ") == BIG
    # Another task ran at least once every _FETCH_ROWS messages.
    assert turns >= BIG // 100


def test_large_responses_go_out_in_large_writes(big: Store) -> None:
    async def main() -> tuple[int, int]:
        session, writer = open_session(big)
        await session._dispatch(command(b"a SELECT INBOX"))
        before = writer.writes
        size = len(writer.data)
        await session._dispatch(command(b"b FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)"))
        session.index().close()
        return writer.writes - before, len(writer.data) - size

    writes, octets = asyncio.run(main())
    assert octets > 5 * FLUSH
    # About FLUSH octets a write, not one write a message.
    assert writes <= octets // FLUSH + 2


def test_a_gone_client_stops_the_fetch(big: Store) -> None:
    async def main() -> int:
        session, writer = open_session(big)
        await session._dispatch(command(b"a SELECT INBOX"))
        del writer.data[:]
        writer.transport.closing = True
        with pytest.raises(ConnectionResetError):
            await session._dispatch(command(b"b FETCH 1:* (UID FLAGS)"))
        session.index().close()
        return len(writer.data)

    assert asyncio.run(main()) == 0


def test_put_many_waits_for_a_peer_that_does_not_read() -> None:
    """ResponseStream.put_many keeps put's bounds: writes of about FLUSH
    octets, at most HIGH_WATER (+ one write) in the transport, and a peer
    that reads nothing for ``timeout`` seconds is cut off."""

    async def main() -> None:
        writer, client, server = await pair()
        out = ResponseStream(writer, timeout=1.0)
        lines = [b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (n, n) for n in range(1, 20_001)]
        buffered = 0
        written: list[int] = []
        write = writer.write

        def spy(data: bytes) -> None:
            nonlocal buffered
            written.append(len(data))
            write(data)
            buffered = max(buffered, writer.transport.get_write_buffer_size())

        writer.write = spy  # type: ignore[method-assign,assignment]
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            for _ in range(10_000):  # about 8 GB if nothing stopped it
                await out.put_many(lines)
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 5.0
        assert buffered <= stream.HIGH_WATER + stream.FLUSH + 64
        assert all(size < stream.FLUSH + 64 for size in written)
        assert all(size >= stream.FLUSH for size in written)
        assert writer.transport.is_closing()
        client.close()
        server.close()

    asyncio.run(main())


def test_put_many_sends_every_line_in_order() -> None:
    async def main() -> None:
        writer, client, server = await pair()
        lines = [b"* %d FETCH (UID %d)\r\n" % (n, n) for n in range(1, 100_001)]
        expected = b"".join(lines) + b"tail\r\n"

        def read_all() -> bytes:
            data = bytearray()
            while len(data) < len(expected):
                chunk = client.recv(1 << 20)
                assert chunk
                data += chunk
            return bytes(data)

        reading = asyncio.get_running_loop().run_in_executor(None, read_all)
        out = ResponseStream(writer, timeout=10)
        for start in range(0, len(lines), 777):
            await out.put_many(lines[start : start + 777])
        await out.put(b"tail\r\n")
        await out.pump()
        assert out.sent == len(expected)
        assert await reading == expected
        client.close()
        writer.close()
        server.close()

    asyncio.run(main())
