"""Delivery status notifications (rfc3464) about messages in the queue.

``build_dsn`` writes the whole notification by hand, so that every line ends
in CRLF and nothing a remote server said can become a header of its own:

    multipart/report; report-type=delivery-status            (rfc6522:3)
      1. text/plain               what happened, for people
      2. message/delivery-status  the same, for programs     (rfc3464:2)
      3. message/rfc822           the original message, or text/rfc822-headers
                                  with its header block only when it is larger
                                  than ``max_original``     (rfc6522:4, rfc3462)

The notification goes out with the null reverse-path (rfc5321:4.5.5), which
the caller takes care of.

Network text (SMTP replies, remote host names, the ENVID) is sanitised:
control characters, CR and LF among them, become spaces, and runs of
whitespace collapse, so a reply like ``"550 x\\r\\nBcc: y"`` stays inside its
Diagnostic-Code field. Long values are folded at spaces (rfc5322:2.2.3).

Internationalised addresses (rfc6531): when the sender or a recipient address
is not ASCII the report part is message/global-delivery-status with
``utf-8`` address types (rfc6533:3, 6.1) and UTF-8 is kept in the header
fields, which is only deliverable over SMTPUTF8 — as the sender's address
requires anyway. Otherwise the whole report is ASCII: non-ASCII characters
in diagnostics are replaced by ``?``. An original whose header block holds
8-bit text is returned as message/global (rfc6532:3.7) or, cut down to its
headers, message/global-headers (rfc6533:6.3); an original with 8-bit
content is declared ``Content-Transfer-Encoding: 8bit`` (rfc2046:5.2.1).
"""

from __future__ import annotations

import re
import secrets
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")  # rfc3464:2.3.3

SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"
SUBJECT_SUCCESS = "Successful Mail Delivery Report"

CRLF = "\r\n"
_FOLD_WIDTH = 78  # rfc5322:2.1.1 SHOULD
_HARD_CHUNK = 200  # characters; 4 bytes each at most stays under 998 octets

# rfc3464:2.3.4 status-code = class "." subject "." detail
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
# An SMTP reply starts with its three-digit code (rfc5321:4.2).
_SMTP_REPLY = re.compile(r"[2-5]\d\d(?:[ -]|\Z)")
# Control characters (C0, DEL, C1) and Unicode line/paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SURROGATES = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")
_TYPED = re.compile(r"[A-Za-z0-9-]+;")
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class RecipientStatus:
    final_recipient: str  # address
    action: str  # "failed" | "delayed" | "delivered" | "relayed" | "expanded"
    status: str  # "5.1.1", "4.4.1", ...
    original_recipient: str | None = None
    remote_mta: str | None = None  # hostname of the MTA that answered
    diagnostic: str | None = None  # the SMTP reply text, e.g. "550 5.1.1 <x@y>: no such user"
    last_attempt: float | None = None  # epoch seconds
    will_retry_until: float | None = None


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[RecipientStatus],
    original: bytes,
    arrival_date: float,
    envelope_id: str | None = None,
    queue_id: str | None = None,
    now: float | None = None,
    max_original: int = 256 * 1024,
) -> bytes:
    """The DSN for ``recipients`` of ``original``, addressed to ``sender``.

    Returns the complete message: CRLF line endings, ending in CRLF.
    Raises ValueError when ``recipients`` is empty or an action is unknown.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    for r in recipients:
        if r.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {r.action!r} (rfc3464:2.3.3)")
    now = time.time() if now is None else now
    # rfc6533:3 — non-ASCII addresses need the "global" report.
    utf8 = not all(a.isascii() for a in _addresses(sender, recipients))
    clean = _Cleaner(utf8)
    host = clean(reporting_mta) or "localhost"

    actions = {r.action for r in recipients}
    if "failed" in actions:
        subject = SUBJECT_FAILED
    elif "delayed" in actions:
        subject = SUBJECT_DELAYED
    else:
        subject = SUBJECT_SUCCESS

    text = _human_text(host, recipients, clean, arrival_date, queue_id)
    report = _report(host, recipients, clean, arrival_date, envelope_id, utf8)
    original_type, original_body = _original_part(original, max_original)

    text_bytes = text.encode("utf-8")
    report_bytes = report.encode("utf-8")
    text_8bit = not text_bytes.isascii()
    original_8bit = not original_body.isascii()

    parts: list[tuple[list[tuple[str, str]], bytes]] = [
        (
            [
                ("Content-Description", "Notification"),
                (
                    "Content-Type",
                    f"text/plain; charset={'utf-8' if text_8bit else 'us-ascii'}",
                ),
                *([("Content-Transfer-Encoding", "8bit")] if text_8bit else []),
            ],
            text_bytes,
        ),
        (
            [
                ("Content-Description", "Delivery report"),
                (
                    "Content-Type",
                    "message/global-delivery-status" if utf8 else "message/delivery-status",
                ),
                *([("Content-Transfer-Encoding", "8bit")] if utf8 else []),
            ],
            report_bytes,
        ),
        (
            [
                (
                    "Content-Description",
                    "Undelivered message"
                    if original_type in ("message/rfc822", "message/global")
                    else "Undelivered message headers",
                ),
                ("Content-Type", original_type),
                *([("Content-Transfer-Encoding", "8bit")] if original_8bit else []),
            ],
            original_body,
        ),
    ]

    boundary = _boundary(body for _, body in parts)
    top: list[tuple[str, str]] = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        ("To", clean(sender)),
        ("Subject", subject),
        ("Date", _date(now)),
        ("Message-ID", _message_id(host, queue_id)),
        # rfc3834:5 — an automatic response; auto-responders stay quiet.
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        # rfc6522:3 — the report-type names the second part's type.
        (
            "Content-Type",
            f'multipart/report; report-type=delivery-status; boundary="{boundary}"',
        ),
    ]
    if utf8 or text_8bit or original_8bit:
        top.append(("Content-Transfer-Encoding", "8bit"))

    out = bytearray(_headers(top))
    out += b"\r\nThis is a MIME-encapsulated message.\r\n"
    for headers, body in parts:
        out += f"\r\n--{boundary}\r\n".encode()
        out += _headers(headers)
        out += b"\r\n"
        out += body
        # Every body ends in CRLF; the delimiter's own CRLF comes first
        # (rfc2046:5.1.1), so the body keeps its final line break.
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


# -- the parts -----------------------------------------------------------------


def _human_text(
    host: str,
    recipients: Sequence[RecipientStatus],
    clean: _Cleaner,
    arrival_date: float,
    queue_id: str | None,
) -> str:
    lines = [f"This is the mail system at {host}.", ""]
    groups: dict[str, list[RecipientStatus]] = {}
    for r in recipients:
        groups.setdefault(r.action, []).append(r)
    intro = {
        "failed": "Your message could not be delivered to the following recipients; "
        "it is attached below.",
        "delayed": "Your message has not been delivered yet to the following recipients. "
        "The mail system will keep trying; you do not need to send it again.",
        "delivered": "Your message was delivered to the following recipients.",
        "relayed": "Your message was passed on to the following recipients' mail systems, "
        "which may not send further notifications.",
        "expanded": "Your message was delivered to the following recipients, which are "
        "lists or aliases that forwarded it on.",
    }
    for action in ACTIONS:
        group = groups.get(action)
        if not group:
            continue
        lines += _wrap(intro[action])
        lines.append("")
        for r in group:
            lines.append(f"<{clean(r.final_recipient)}>:")
            detail = clean(r.diagnostic or "") or f"status {_status(r)}"
            if r.remote_mta:
                detail = f"{clean(r.remote_mta)} said: {detail}"
            lines += _wrap(detail, indent="    ")
            if action == "delayed" and r.will_retry_until is not None:
                lines += _wrap(f"Retrying until {_date(r.will_retry_until)}.", indent="    ")
            lines.append("")
    if queue_id:
        lines.append(f"Queue ID: {clean(queue_id)}")
    lines.append(f"Arrival date: {_date(arrival_date)}")
    return CRLF.join(lines) + CRLF


def _report(
    host: str,
    recipients: Sequence[RecipientStatus],
    clean: _Cleaner,
    arrival_date: float,
    envelope_id: str | None,
    utf8: bool,
) -> str:
    # rfc3464:2.2 per-message fields, in the order of the grammar.
    fields: list[tuple[str, str]] = []
    if envelope_id:
        fields.append(("Original-Envelope-Id", clean(envelope_id)))  # rfc3464:2.2.1
    fields.append(("Reporting-MTA", f"dns; {host}"))  # rfc3464:2.2.2
    fields.append(("Arrival-Date", _date(arrival_date)))  # rfc3464:2.2.5
    blocks = [_fields(fields)]
    for r in recipients:
        # rfc3464:2.3 per-recipient fields, in the order of the grammar.
        fields = []
        if r.original_recipient:
            fields.append(("Original-Recipient", _typed(r.original_recipient, clean, utf8)))
        fields.append(("Final-Recipient", _typed(r.final_recipient, clean, utf8)))  # 2.3.2
        fields.append(("Action", r.action))  # rfc3464:2.3.3
        fields.append(("Status", _status(r)))  # rfc3464:2.3.4
        if r.remote_mta:
            fields.append(("Remote-MTA", f"dns; {clean(r.remote_mta)}"))  # rfc3464:2.3.5
        if r.diagnostic:
            diagnostic = clean(r.diagnostic)
            # rfc3464:2.3.6 — "smtp" only for what an SMTP server replied; our
            # own descriptions (connection refused, ...) get an X- type.
            kind = "smtp" if _SMTP_REPLY.match(diagnostic) else "X-Estafeta"
            fields.append(("Diagnostic-Code", f"{kind}; {diagnostic}"))
        if r.last_attempt is not None:
            fields.append(("Last-Attempt-Date", _date(r.last_attempt)))  # rfc3464:2.3.7
        if r.action == "delayed" and r.will_retry_until is not None:
            # rfc3464:2.3.8 — only meaningful for "delayed".
            fields.append(("Will-Retry-Until", _date(r.will_retry_until)))
        blocks.append(_fields(fields))
    # rfc3464:2.1 — blocks are separated by one blank line.
    return CRLF.join(blocks)


def _original_part(original: bytes, max_original: int) -> tuple[str, bytes]:
    data = _crlf(original)
    end = data.find(b"\r\n\r\n")
    header_block = data if end < 0 else data[: end + 2]
    global_headers = not header_block.isascii()
    if len(original) <= max_original:
        # rfc6532:3.7 — message/global when the headers are UTF-8.
        return ("message/global" if global_headers else "message/rfc822"), data
    # rfc6522:4 (rfc3462) — a large message is returned as its headers only.
    if len(header_block) > max_original:
        cut = header_block.rfind(b"\r\n", 0, max_original)
        header_block = header_block[: cut + 2] if cut > 0 else b""
    return ("message/global-headers" if global_headers else "text/rfc822-headers"), header_block


# -- helpers -------------------------------------------------------------------


class _Cleaner:
    """Makes network text safe for a header field or a line of text."""

    def __init__(self, utf8: bool) -> None:
        self.utf8 = utf8

    def __call__(self, value: str) -> str:
        value = _CONTROLS.sub(" ", value)
        value = _WHITESPACE.sub(" ", value).strip()
        # Lone surrogates (undecodable bytes, surrogateescape) cannot be encoded.
        value = _SURROGATES.sub("\ufffd" if self.utf8 else "?", value)
        if not self.utf8:
            value = value.encode("ascii", "replace").decode("ascii")
        return value


def _addresses(sender: str, recipients: Sequence[RecipientStatus]) -> Iterable[str]:
    yield sender
    for r in recipients:
        yield r.final_recipient
        if r.original_recipient:
            yield r.original_recipient


def _typed(address: str, clean: _Cleaner, utf8: bool) -> str:
    value = clean(address)
    if _TYPED.match(value):
        # Already "addr-type; address", e.g. an ORCPT value (rfc3461:4.2).
        kind, _, rest = value.partition(";")
        return f"{kind}; {rest.strip()}"
    # rfc3464:2.3.2 "rfc822" for internet addresses; rfc6533:3 "utf-8" when
    # the address is internationalised (unitext form, global report only).
    return f"{'utf-8' if utf8 and not value.isascii() else 'rfc822'}; {value}"


def _status(r: RecipientStatus) -> str:
    status = r.status.strip()
    if _STATUS.match(status):
        return status
    # Never let a malformed code through; fall back on the action's class.
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(r.action, "2.0.0")


def _date(timestamp: float) -> str:
    # rfc5322:3.3 date-time, in UTC ("+0000", not the "-0000" of unknown zones).
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


def _message_id(host: str, queue_id: str | None) -> str:
    local = _ID_CHARS.sub("", queue_id or "")[:64]
    token = secrets.token_hex(8)
    return f"<{local}.{token}@{host}>" if local else f"<{token}@{host}>"


def _boundary(bodies: Iterable[bytes]) -> str:
    contents = list(bodies)
    while True:
        boundary = f"=_estafeta_{secrets.token_hex(16)}"
        encoded = boundary.encode()
        # rfc2046:5.1.1 — the delimiter must not occur in any enclosed part.
        if not any(encoded in body for body in contents):
            return boundary


def _headers(fields: Sequence[tuple[str, str]]) -> bytes:
    return _fields(fields).encode("utf-8")


def _fields(fields: Sequence[tuple[str, str]]) -> str:
    return "".join(_fold(f"{name}: {value}") + CRLF for name, value in fields)


def _fold(line: str) -> str:
    """Fold a header line at spaces (rfc5322:2.2.3); split overlong words."""
    words: list[str] = []
    for word in line.split(" "):
        while len(word) > _HARD_CHUNK:
            words.append(word[:_HARD_CHUNK])
            word = word[_HARD_CHUNK:]
        words.append(word)
    out: list[str] = []
    current = ""
    for word in words:
        if not current:
            current = word
        elif len(current) + 1 + len(word) > _FOLD_WIDTH and current.strip():
            out.append(current)
            current = " " + word
        else:
            current += " " + word
    out.append(current)
    return CRLF.join(out)


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text,
        width=76,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=True,
        break_on_hyphens=False,
    ) or [indent.rstrip()]


def _crlf(data: bytes) -> bytes:
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data
