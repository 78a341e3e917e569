"""What a client pipelined after STARTTLS (SMTP, IMAP, ManageSieve) or STLS
(POP3) is dropped, never run.

rfc3207:4.2, rfc9051:6.2.1, rfc2595:4 and rfc5804:2.2: the client waits for
the server's reply before its ClientHello, so whatever arrives before that
reply is not TLS. A man in the middle appends commands to the client's
STARTTLS (CVE-2011-0411); a server that kept them would run them after the
handshake, as if the client had sent them over TLS. The session drops what
its parser holds; ``drain_pipelined`` drops what the stream holds and what
the socket still brings, before the reply.

A client that pipelined nothing pays two turns of the loop. When something
was pipelined, more may be on its way: a large injection reaches the server
in pieces, as the sender's kernel and scheduler let it, and a piece that
arrived after the reply would be read as a TLS record and fail the
handshake. So once anything was dropped, the drain goes on until the flow
pauses for ``PAUSE`` seconds, for at most ``DRAIN_TIME`` seconds and
``STARTTLS_DRAIN`` octets in all: an attacker who trickles gains a bounded
wait, and what arrives after it fails the handshake, a refusal too.
"""

from __future__ import annotations

import asyncio
import time

STARTTLS_DRAIN = 1 << 20  # octets dropped at most; after that the handshake decides
PAUSE = 0.2  # once something was pipelined: the pause in the flow that ends it
DRAIN_TIME = 2.0  # seconds a drain lasts at most


async def drain_pipelined(reader: asyncio.StreamReader, pipelined: int = 0) -> int:
    """Drop what the stream holds and the socket still brings; the octets
    dropped here. ``pipelined``: those the session's parser held (dropped
    by the caller), which count as a sign that more may come."""
    discarded = 0
    quiet = 0
    # What the socket holds already is read by the loop between two turns.
    while quiet < 2 and discarded < STARTTLS_DRAIN:
        buffered = await discard_buffered(reader)
        if buffered:
            discarded += buffered
            quiet = 0
        else:
            quiet += 1
        await asyncio.sleep(0)
    if not (discarded or pipelined):
        return 0
    deadline = time.monotonic() + DRAIN_TIME
    while discarded < STARTTLS_DRAIN:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            async with asyncio.timeout(min(PAUSE, left)):
                # A read cancelled while it waits has taken nothing.
                chunk = await reader.read(STARTTLS_DRAIN - discarded)
        except TimeoutError:
            break  # the pause: the client waits for our reply now
        if not chunk:
            break  # end of stream: the handshake will find it
        discarded += len(chunk)
    return discarded


async def discard_buffered(reader: asyncio.StreamReader) -> int:
    """Drop the octets the stream has received but nobody read; their count."""
    # StreamReader has no public "bytes available"; read() of exactly what is
    # buffered returns at once (and resumes a paused transport).
    buffered = len(getattr(reader, "_buffer", b""))
    if not buffered:
        return 0
    return len(await reader.read(buffered))
