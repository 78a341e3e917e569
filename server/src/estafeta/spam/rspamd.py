"""A small asyncio client for rspamd's HTTP protocol (issue 16).

rspamd (https://rspamd.com/doc/developers/protocol.html) speaks HTTP/1.0 or
1.1 with JSON replies. Three calls are used here:

- ``check``: ``POST /checkv2`` on the normal worker, the message as the body
  and the SMTP envelope in rspamd's request header fields (``IP``, ``Helo``,
  ``From``, one ``Rcpt`` per recipient, ``User``, ``Queue-Id``,
  ``MTA-Name``); the reply's ``action``, ``score``, ``required_score``,
  ``symbols``, ``messages.smtp_message`` and ``subject`` become an
  ``RspamdResult``;
- ``learn``: ``POST /learnspam`` or ``/learnham`` on the controller, with the
  ``Password`` field;
- ``stat``: ``GET /stat`` on the controller.

The HTTP/1.1 client is written here on asyncio streams (stdlib only). One
connection per call, closed afterwards (``Connection: close``,
rfc9112:9.6): a scan costs milliseconds, a loopback connect microseconds,
and a pool would add state that can go wrong: a connection rspamd closed
while it sat idle, or one left mid-reply by a timeout and then reused.

Bounds (an attacker controls the message, HELO and the envelope; a broken
or hostile rspamd controls the reply):

- the whole call, connect to last byte, runs under ``asyncio.timeout``;
- a reply's status line and header block at most ``MAX_HEAD`` octets and
  ``MAX_FIELDS`` fields; its body at most ``max_response`` octets, whether
  sized by Content-Length, chunked or read to the end;
- request field values: CR, LF, NUL and other controls replaced by spaces
  (rfc9110:5.5), at most ``MAX_VALUE`` characters; an ``IP`` that does not
  parse is left out; at most ``MAX_RECIPIENTS`` ``Rcpt`` fields;
- the JSON reply is checked field by field: a wrong shape is an
  ``RspamdError``, never a ``KeyError``; ``symbols`` keeps the
  ``MAX_SYMBOLS`` largest by absolute score.

Every failure (refused, timed out, not HTTP, not 200, bad JSON) raises
``RspamdError``; its text never contains the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # status line + header block of a reply
MAX_FIELDS = 100  # header fields in a reply
MAX_VALUE = 1000  # characters in one request field value
MAX_RECIPIENTS = 1000  # Rcpt fields in one request (rspamd's max_recipients: 1024)
MAX_SYMBOLS = 20  # symbols kept in a result
MAX_REASON = 300  # characters of a result's reason
MAX_SUBJECT = 1000  # characters of a rewritten subject

ACTIONS = frozenset(
    {"reject", "soft reject", "greylist", "rewrite subject", "add header", "no action"}
)


class RspamdError(Exception):
    """rspamd is down, slow, or answered something unusable."""


@dataclass(frozen=True)
class RspamdResult:
    """rspamd's verdict on one message (the ``/checkv2`` reply)."""

    action: str  # one of ACTIONS; a custom action name is passed on as given
    score: float
    required: float  # required_score: the reject threshold
    symbols: tuple[tuple[str, float], ...]  # largest |score| first, at most MAX_SYMBOLS
    reason: str  # messages.smtp_message, or the top symbols named
    subject: str = ""  # the new subject for "rewrite subject"


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    tls: bool
    path: str  # base path without the trailing "/"

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"the URL may hold only scheme, host, port and path: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.hostname, port, parts.scheme == "https", parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        # rfc9110:7.2 — Host is the authority of the target URI.
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class _Reply:
    status: int
    fields: Mapping[str, str]  # lower-case names; a repeated field keeps the last value
    body: bytes


class RspamdClient:
    """``check`` on the normal worker (``url``, e.g. ``http://127.0.0.1:11333``);
    ``learn`` and ``stat`` on the controller (``controller_url``, e.g.
    ``http://127.0.0.1:11334``) with ``password`` (the module docstring has
    the bounds). Safe to share between tasks: no state between calls."""

    def __init__(
        self,
        url: str,
        *,
        controller_url: str = "",
        password: str = "",
        timeout: float = 5.0,
        max_response: int = 1 << 20,
    ) -> None:
        if timeout <= 0 or max_response <= 0:
            raise ValueError("timeout and max_response must be positive")
        self._normal = _Endpoint.parse(url)
        self._controller = _Endpoint.parse(controller_url) if controller_url else None
        self._password = _clean(password)
        self.timeout = timeout
        self.max_response = max_response

    def __repr__(self) -> str:  # never the password
        return f"RspamdClient({self._normal.authority!r})"

    async def check(
        self,
        message: bytes,
        *,
        ip: str = "",
        helo: str = "",
        sender: str = "",
        recipients: Sequence[str] = (),
        user: str = "",
        queue_id: str = "",
        hostname: str = "",
    ) -> RspamdResult:
        """rspamd's verdict on ``message``. ``sender`` is the MAIL FROM
        address ("" for the null sender: no ``From`` field is sent),
        ``user`` the authenticated login (empty on the MX), ``hostname``
        our own name (``MTA-Name``, used in rspamd's Authentication-Results);
        rspamd's ``Hostname`` field (the client's resolved name) is not sent,
        so rspamd looks the client up itself."""
        fields: list[tuple[str, str]] = []
        # A wrong IP would make rspamd refuse the whole request: left out.
        with contextlib.suppress(ValueError):
            fields.append(("IP", str(ipaddress.ip_address(ip.strip()))))
        fields += [("Helo", helo), ("From", sender)]
        fields += [("Rcpt", rcpt) for rcpt in list(recipients)[:MAX_RECIPIENTS]]
        fields += [("User", user), ("Queue-Id", queue_id), ("MTA-Name", hostname)]
        reply = await self._call(self._normal, "POST", "/checkv2", fields, message)
        if reply.status != 200:
            raise RspamdError(_status_text("check", reply))
        return _result(_json_object(reply.body))

    async def learn(self, message: bytes, spam: bool) -> bool:
        """Teach rspamd's Bayes classifier. True: learned. False: rspamd
        skipped it: already learned the same way (HTTP 208), or did not
        learn it (204, e.g. fewer tokens than the classifier's min_tokens).
        Any other answer raises ``RspamdError``."""
        endpoint = self._require_controller()
        path = "/learnspam" if spam else "/learnham"
        reply = await self._call(endpoint, "POST", path, self._auth(), message)
        if reply.status in (204, 208):
            return False
        if reply.status != 200:
            raise RspamdError(_status_text("learn", reply))
        answer = _json_object(reply.body)
        if answer.get("success") is not True:
            raise RspamdError("rspamd learn: the reply does not say success")
        return True

    async def stat(self) -> dict[str, Any]:
        """The controller's ``/stat`` reply (counters: ``scanned``,
        ``learned``, ``actions``, ``statfiles`` ...), as rspamd sends it."""
        endpoint = self._require_controller()
        reply = await self._call(endpoint, "GET", "/stat", self._auth(), b"")
        if reply.status != 200:
            raise RspamdError(_status_text("stat", reply))
        return _json_object(reply.body)

    def _require_controller(self) -> _Endpoint:
        if self._controller is None:
            raise RspamdError("rspamd: no controller_url configured")
        return self._controller

    def _auth(self) -> list[tuple[str, str]]:
        return [("Password", self._password)] if self._password else []

    async def _call(
        self,
        endpoint: _Endpoint,
        method: str,
        path: str,
        fields: Sequence[tuple[str, str]],
        body: bytes,
    ) -> _Reply:
        head = _request_head(endpoint, method, path, fields, len(body))
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    endpoint.host,
                    endpoint.port,
                    ssl=ssl.create_default_context() if endpoint.tls else None,
                    limit=MAX_HEAD,
                )
                writer.write(head)
                if body:
                    writer.write(body)
                await writer.drain()
                reply = await _read_reply(reader, self.max_response)
                writer.close()
                with contextlib.suppress(OSError):  # the reply is complete already
                    await writer.wait_closed()
                writer = None
                return reply
        except TimeoutError:
            raise RspamdError(f"rspamd timed out after {self.timeout:g}s") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            text = "closed the connection" if isinstance(exc, asyncio.IncompleteReadError) else exc
            raise RspamdError(f"rspamd at {endpoint.authority}: {text}") from None
        except asyncio.LimitOverrunError:
            raise RspamdError("rspamd reply: a header line is too long") from None
        finally:
            if writer is not None:
                writer.transport.abort()  # mid-call failure: nothing more to send or read


def _clean(value: str) -> str:
    """A request field value: controls (CR, LF, NUL ...) become spaces
    (rfc9110:5.5), the ends are trimmed, the length is capped."""
    text = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value[:MAX_VALUE])
    return text.strip()


def _request_head(
    endpoint: _Endpoint,
    method: str,
    path: str,
    fields: Sequence[tuple[str, str]],
    length: int,
) -> bytes:
    # rfc9112:3 — request-line; rfc9112:6.2 — Content-Length sizes the body
    # (rspamd takes chunked too, but the message's length is known).
    lines = [
        f"{method} {endpoint.path}{path} HTTP/1.1",
        f"Host: {endpoint.authority}",
        "Connection: close",
        "User-Agent: estafeta",
    ]
    if method == "POST":
        lines.append(f"Content-Length: {length}")
    for name, value in fields:
        value = _clean(value)
        if value:
            lines.append(f"{name}: {value}")
    # An address or HELO decoded with surrogateescape cannot be UTF-8: "?" then.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")


async def _read_reply(reader: asyncio.StreamReader, max_body: int) -> _Reply:
    # rfc9112:4 — status-line = HTTP-version SP status-code SP [ reason-phrase ]
    line = await reader.readuntil(b"\n")
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise RspamdError("rspamd reply: not an HTTP/1.x status line")
    status = int(parts[1])
    fields: dict[str, str] = {}
    size = len(line)
    while True:
        line = await reader.readuntil(b"\n")
        size += len(line)
        if line in (b"\r\n", b"\n"):
            break
        if size > MAX_HEAD or len(fields) >= MAX_FIELDS:
            raise RspamdError("rspamd reply: header block too large")
        # rfc9112:5.1 — field-line = field-name ":" OWS field-value OWS
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise RspamdError("rspamd reply: malformed header field")
        fields[name.lower()] = value.strip()
    if fields.get("content-encoding", "identity").lower() != "identity":
        raise RspamdError("rspamd reply: compressed bodies are not accepted")
    body = await _read_body(reader, status, fields, max_body)
    return _Reply(status, fields, body)


async def _read_body(
    reader: asyncio.StreamReader, status: int, fields: Mapping[str, str], max_body: int
) -> bytes:
    # rfc9112:6.3 — the message body length, in this order: no body for
    # 204 and 304; chunked; Content-Length; otherwise until the close.
    if status in (204, 304) or 100 <= status < 200:
        return b""
    coding = fields.get("transfer-encoding", "").lower()
    if coding:
        if coding != "chunked":
            raise RspamdError(f"rspamd reply: transfer coding {coding[:40]!r} not supported")
        return await _read_chunked(reader, max_body)
    if "content-length" in fields:
        text = fields["content-length"]
        if not text.isdigit() or len(text) > 18:
            raise RspamdError("rspamd reply: bad Content-Length")
        length = int(text)
        if length > max_body:
            raise RspamdError(f"rspamd reply: body of {length} octets passes {max_body}")
        return await reader.readexactly(length)
    body = await reader.read(max_body + 1)
    while len(body) <= max_body:
        more = await reader.read(max_body + 1 - len(body))
        if not more:
            return body
        body += more
    raise RspamdError(f"rspamd reply: body passes {max_body} octets")


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    # rfc9112:7.1 — chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF;
    # last-chunk = 1*("0") [ chunk-ext ] CRLF; then trailer fields and CRLF.
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16) if size_text and len(size_text) <= 16 else -1
        except ValueError:
            size = -1
        if size < 0:
            raise RspamdError("rspamd reply: bad chunk size")
        if size == 0:
            break
        total += size
        if total > max_body:
            raise RspamdError(f"rspamd reply: body passes {max_body} octets")
        parts.append(await reader.readexactly(size))
        if await reader.readuntil(b"\n") not in (b"\r\n", b"\n"):
            raise RspamdError("rspamd reply: chunk not followed by CRLF")
    trailer = 0
    while (line := await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
        trailer += len(line)
        if trailer > MAX_HEAD:
            raise RspamdError("rspamd reply: trailer too large")
    return b"".join(parts)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise RspamdError("rspamd reply: not JSON") from None
    if not isinstance(value, dict):
        raise RspamdError("rspamd reply: not a JSON object")
    return value


def _status_text(call: str, reply: _Reply) -> str:
    """ "rspamd check: HTTP 401 Unauthorized" from the reply's {"error": ...}."""
    error = ""
    try:
        value = json.loads(reply.body) if reply.body else None
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        error = " " + _flat(value["error"], 200)
    return f"rspamd {call}: HTTP {reply.status}{error}"


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RspamdError(f"rspamd reply: {what} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise RspamdError(f"rspamd reply: {what} is not finite")
    return number


def _flat(text: str, limit: int) -> str:
    """One line of printable text: controls become spaces, runs of space one."""
    return " ".join("".join(" " if c < " " or c == "\x7f" else c for c in text).split())[:limit]


def _result(reply: Mapping[str, Any]) -> RspamdResult:
    """The ``/checkv2`` reply checked field by field (protocol.html,
    "Rspamd HTTP reply")."""
    action = reply.get("action")
    if not isinstance(action, str) or not action:
        raise RspamdError("rspamd reply: no action")
    score = _number(reply.get("score"), "score")
    required = _number(reply.get("required_score"), "required_score")
    raw_symbols = reply.get("symbols", {})
    if not isinstance(raw_symbols, dict):
        raise RspamdError("rspamd reply: symbols is not an object")
    symbols: list[tuple[str, float]] = []
    for name, symbol in raw_symbols.items():
        if not isinstance(symbol, dict):
            raise RspamdError("rspamd reply: a symbol is not an object")
        symbols.append((_flat(str(name), 100), _number(symbol.get("score", 0.0), "symbol score")))
    symbols.sort(key=lambda item: (-abs(item[1]), item[0]))
    top = tuple(symbols[:MAX_SYMBOLS])
    messages = reply.get("messages", {})
    if not isinstance(messages, dict):
        raise RspamdError("rspamd reply: messages is not an object")
    smtp_message = messages.get("smtp_message", "")
    if not isinstance(smtp_message, str):
        raise RspamdError("rspamd reply: smtp_message is not a string")
    subject = reply.get("subject", "")
    if not isinstance(subject, str):
        raise RspamdError("rspamd reply: subject is not a string")
    reason = _flat(smtp_message, MAX_REASON) or _reason(score, required, top)
    return RspamdResult(
        action=_flat(action, 40).lower(),
        score=score,
        required=required,
        symbols=top,
        reason=reason,
        subject=_flat(subject, MAX_SUBJECT),
    )


def _reason(score: float, required: float, symbols: Sequence[tuple[str, float]]) -> str:
    """ "spam score 16.20/15.00 (BAYES_SPAM, R_SPF_FAIL)": the symbols that
    added to the score, largest first, at most five."""
    named = [name for name, value in symbols if value > 0][:5]
    text = f"spam score {score:.2f}/{required:.2f}"
    return (f"{text} ({', '.join(named)})" if named else text)[:MAX_REASON]
