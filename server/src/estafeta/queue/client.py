"""SMTP client for the outbound queue: a sans-IO reply parser and an asyncio session.

Why not aiosmtplib here: it reads exactly one reply per command written and
drops replies that arrive early, so it cannot pipeline (rfc2920). The queue
pipelines MAIL and every RCPT in one write when the server offers PIPELINING,
which is one round trip instead of N+1 per message.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from estafeta.tlsclose import SHUTDOWN_SECONDS, close_promptly

# rfc5321:4.5.3.1.5 — a reply line is at most 512 octets; be lenient, not unbounded.
MAX_LINE = 4096
MAX_LINES = 100
# [0-9], not \d: the text is decoded UTF-8, and \d would take other digits ("5.٣.1").
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})\b")


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The rfc3463 status code of the first line, when the server sent one."""
        match = _ENHANCED.match(self.lines[0] if self.lines else "")
        if match and match.group(1) == str(self.code)[0]:
            return match.group(0)
        return None

    def status(self, default_subject: str = "0.0") -> str:
        return self.enhanced or f"{str(self.code)[0]}.{default_subject}"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class ReplyParser:
    """Bytes in, replies out (rfc5321:4.2): ``feed()`` then ``replies()``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None
        self._ready: list[Reply] = []

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                # Measured as _line measures it: a final CR may be the CR of CRLF.
                if len(self._buffer) - self._buffer.endswith(b"\r") > MAX_LINE:
                    raise ProtocolError("reply line too long")
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._line(raw[:-1] if raw.endswith(b"\r") else raw)

    def _line(self, raw: bytes) -> None:
        # The limit counts every octet but the line end (one CR, one LF), so
        # that it does not depend on how the data was split into reads.
        if len(raw) > MAX_LINE:
            raise ProtocolError("reply line too long")
        raw = raw.rstrip(b"\r")
        # rfc5321:4.2 — Reply-line = *( Reply-code "-" [ textstring ] CRLF )
        #                            Reply-code [ SP textstring ] CRLF
        if len(raw) < 3 or not raw[:3].isdigit() or raw[:1] not in b"2345":
            raise ProtocolError(f"not an SMTP reply: {raw[:40]!r}")
        code = int(raw[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError("reply code changed inside a multi-line reply")
        separator = raw[3:4]
        if separator not in (b"", b" ", b"-"):
            raise ProtocolError(f"not an SMTP reply: {raw[:40]!r}")
        self._code = code
        self._lines.append(raw[4:].decode("utf-8", "replace"))
        if len(self._lines) > MAX_LINES:
            raise ProtocolError("reply has too many lines")
        if separator != b"-":
            self._ready.append(Reply(code, tuple(self._lines)))
            self._lines = []
            self._code = None

    @property
    def buffered(self) -> bool:
        """Bytes received that are not yet a whole reply."""
        return bool(self._buffer or self._lines)

    def replies(self) -> list[Reply]:
        ready, self._ready = self._ready, []
        return ready


def dot_stuff(message: bytes) -> bytes:
    """rfc5321:4.5.2 transparency, plus the final ``.``; input has CRLF line ends."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class SMTPConnection:
    """One client connection. Methods raise ProtocolError, OSError or TimeoutError."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float,
        peer_name: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.peer_name = peer_name
        self.extensions: dict[str, str] = {}
        self.tls = False
        self._parser = ReplyParser()
        self._pending: list[Reply] = []

    @classmethod
    async def open(
        cls,
        address: str,
        port: int,
        *,
        time_limit: float,
        peer_name: str,
        source_address: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> tuple[SMTPConnection, Reply]:
        """Connect (with implicit TLS when ``tls`` is given) and read the greeting."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address,
                port,
                local_addr=(source_address, 0) if source_address else None,
                ssl=tls,
                server_hostname=peer_name if tls else None,
                limit=MAX_LINE * 4,
            ),
            time_limit,
        )
        connection = cls(reader, writer, timeout=time_limit, peer_name=peer_name)
        connection.tls = tls is not None
        try:
            greeting = await connection.read_reply()
        except BaseException:
            connection.abort()
            raise
        return connection, greeting

    async def read_reply(self, wait: float | None = None) -> Reply:
        async with asyncio.timeout(wait or self.timeout):
            while not self._pending:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionResetError("connection closed by the server")
                self._parser.feed(data)
                self._pending.extend(self._parser.replies())
        return self._pending.pop(0)

    async def command(self, line: str, wait: float | None = None) -> Reply:
        await self._send(line.encode("utf-8") + b"\r\n")
        return await self.read_reply(wait)

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def ehlo(self, name: str) -> Reply:
        reply = await self.command(f"EHLO {name}")
        if reply.code != 250:
            # rfc5321:3.2 — fall back to HELO for an old server.
            reply = await self.command(f"HELO {name}")
            self.extensions = {}
            return reply
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.upper()] = params
        return reply

    async def starttls(self, context: ssl.SSLContext, server_name: str = "") -> Reply:
        """rfc3207:4 — after 220, the TLS handshake; the caller repeats EHLO.

        ``server_name`` is the SNI when it is not the peer name (DANE's TLSA
        base domain, rfc7672:8.1).
        """
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            return reply
        if self._pending or self._parser.buffered:
            # rfc3207:6 / CVE-2011-0411 — data pipelined before the handshake.
            raise ProtocolError("server sent data after 220 for STARTTLS")
        async with asyncio.timeout(self.timeout):
            await self.writer.start_tls(context, server_hostname=server_name or self.peer_name)
            close_promptly(self.writer.transport)
        self.tls = True
        return reply

    async def auth_plain(self, username: str, password: str) -> Reply:
        # rfc4616:2 — authzid NUL authcid NUL passwd; rfc4954 initial response.
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
        return await self.command(f"AUTH PLAIN {token}")

    async def envelope(
        self, sender: str, recipients: Sequence[str], mail_options: Sequence[str] = ()
    ) -> tuple[Reply, list[Reply]]:
        """MAIL and RCPTs, in one write when the server offers PIPELINING (rfc2920:3.1)."""
        mail = " ".join([f"MAIL FROM:<{sender}>", *mail_options])
        rcpts = [f"RCPT TO:<{rcpt}>" for rcpt in recipients]
        if "PIPELINING" in self.extensions:
            await self._send("".join(f"{line}\r\n" for line in [mail, *rcpts]).encode("utf-8"))
            mail_reply = await self.read_reply()
            rcpt_replies = [await self.read_reply() for _ in rcpts]
            return mail_reply, rcpt_replies
        mail_reply = await self.command(mail)
        if not mail_reply.positive:
            return mail_reply, []
        return mail_reply, [await self.command(line) for line in rcpts]

    async def data(self, message: bytes, wait: float) -> Reply:
        reply = await self.command("DATA")
        if reply.code != 354:
            return reply
        await self._send(dot_stuff(message))
        # rfc5321:4.5.3.2.6 — up to 10 minutes for the reply to the final dot.
        return await self.read_reply(wait)

    async def quit(self) -> None:
        try:
            await asyncio.wait_for(self.command("QUIT"), 5)
        except (OSError, TimeoutError, ProtocolError):
            pass
        finally:
            self.abort()
        # rfc5321:4.1.1.10 — the server closes after 221; over TLS that is an
        # exchange of close_notify alerts (tlsclose bounds the wait), so wait
        # for it: the socket is closed when the attempt ends.
        try:
            await asyncio.wait_for(self.writer.wait_closed(), SHUTDOWN_SECONDS + 1)
        except (OSError, TimeoutError):
            self.writer.transport.abort()

    def abort(self) -> None:
        self.writer.close()
