"""The extensions whose work is more than a match: vacation (rfc5230,
rfc6131, rfc3834), duplicate (rfc7352), editheader (rfc5293) and
environment (rfc5183), plus mailbox names.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING, Final

from estafeta import __version__
from estafeta.sieve.actions import INBOX, Vacation
from estafeta.sieve.match import OPS_PER_STEP
from estafeta.sieve.message import (
    FIELD_NAME,
    sieve_address,
    split_envelope_address,
)
from estafeta.sieve.signatures import Node
from estafeta.sieve.state import Frame, Run, ScriptError
from estafeta.sieve.variables import Template

if TYPE_CHECKING:
    from estafeta.sieve.interpret import Context

DAY: Final = 86400.0


def canonical_mailbox(name: str) -> str:
    """The IMAP name a script means: NFC, a first level "inbox" in any ASCII
    case is INBOX (rfc9051:5.1), as the store spells it."""
    name = unicodedata.normalize("NFC", name)
    first, sep, rest = name.partition("/")
    if len(first) == 5 and first.isascii() and first.upper() == INBOX:
        return INBOX + sep + rest
    return name


def environment(ctx: Context) -> dict[str, str]:
    """rfc5183:4.1 items: ours, then what the caller knows (it wins)."""
    items = {
        "location": "MDA",
        "phase": "during",
        "name": "estafeta",
        "version": __version__,
        "domain": ctx.account.rpartition("@")[2],
    }
    items.update({k.lower(): v for k, v in ctx.environment.items()})
    return items


def _text(run: Run, frame: Frame, value: object) -> str:
    assert isinstance(value, Template)
    return run.expand(frame, value)


# --------------------------------------------------------------------------
# rfc7352 duplicate


def duplicate(run: Run, frame: Frame, node: Node) -> bool:
    handle_arg = node.tag("handle")
    handle = "" if handle_arg is None else _text(run, frame, handle_arg)
    unique_arg = node.tag("uniqueid")
    if unique_arg is not None:
        unique = _text(run, frame, unique_arg)
    else:
        header_arg = node.tag("header")
        name = "message-id" if header_arg is None else _text(run, frame, header_arg)
        if not FIELD_NAME.match(name):
            return False  # rfc7352:3.1: an invalid name is false, not an error
        fields = run.header.named(name)
        if not fields:
            return False  # and nothing is recorded
        unique = fields[0].decoded  # unfolded, UTF-8, trimmed
    limits = run.limits
    seconds_arg = node.tag("seconds")
    if isinstance(seconds_arg, int):
        seconds = min(float(seconds_arg), limits.duplicate_max_period)  # rfc7352:3.3
    else:
        seconds = limits.duplicate_default_period
    if seconds <= 0:
        return False
    key = f"{len(handle)}:{handle}:{unique}"
    found = run.duplicates.get(key)
    if found is None:
        # rfc7352:3: only earlier runs count, and every test of this run with
        # the same arguments gives the same answer.
        seen = run.ctx.seen
        try:
            found = bool(seen(key, seconds)) if seen is not None else False
        except Exception as exc:
            raise ScriptError(node.pos, f"duplicate: cannot read the records ({exc})") from None
        run.duplicates[key] = found
    if not found or "last" in node.tags:
        run.marks[key] = seconds  # recorded by the caller after a successful run
    return found


# --------------------------------------------------------------------------
# rfc5293 editheader

# rfc5293:6: Received and Auto-Submitted MUST NOT be deleted; Return-Path,
# the other trace field (rfc5322:3.6.7), neither.  None of them can be added
# either (rfc5293:6 lets a site refuse any change, silently).
PROTECTED: Final = frozenset({"received", "auto-submitted", "return-path"})
_LINE_BREAKS: Final = re.compile(r"\r\n(?=[ \t])|\r\n|\r|\n")
_PLAIN: Final = re.compile(r"[ -~\t]*\Z")
_LINE: Final = 78  # rfc5322:2.1.1 SHOULD; 998 MUST


def fold_value(name: str, value: str) -> bytes:
    """The field body for ``name: value``: unstructured text folded at
    blanks (rfc5322:2.2.3), or RFC 2047 encoded-words when it has other
    than printable ASCII or a word too long to fold (rfc5293:4)."""
    value = _LINE_BREAKS.sub(lambda m: "" if m.group() == "\r\n" else " ", value).strip(" \t")
    words = value.split(" ")
    if _PLAIN.match(value) and all(len(w) < 900 for w in words):
        lines: list[str] = []
        line = ""
        width = len(name) + 1
        for word in words:
            if line and width + len(line) + 1 + len(word) > _LINE:
                lines.append(line)
                line, width = word, 0
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        return (" " + "\r\n ".join(lines)).encode("ascii")
    encoded: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in value:
        octets = len(char.encode("utf-8", "surrogatepass"))
        if size + octets > 45:
            encoded.append(_encoded_word("".join(chunk)))
            chunk, size = [], 0
        chunk.append(char)
        size += octets
    if chunk:
        encoded.append(_encoded_word("".join(chunk)))
    return (" " + "\r\n ".join(encoded)).encode("ascii")


def _encoded_word(text: str) -> str:
    data = base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")
    return f"=?UTF-8?B?{data}?="


def addheader(run: Run, frame: Frame, node: Node) -> None:
    name = _text(run, frame, node.args[0])
    value = _text(run, frame, node.args[1])
    if not FIELD_NAME.match(name):
        raise ScriptError(node.pos, f"addheader: {name!r} is not a header field name")
    if name.lower() in PROTECTED:
        return
    folded = fold_value(name, value)
    run.added_header += len(name) + len(folded) + 3
    if run.added_header > run.limits.max_added_header:
        raise ScriptError(
            node.pos, f"addheader: more than {run.limits.max_added_header} octets added"
        )
    # An edit moves the list of fields (a fast pass, but a pass).
    run.charge(1 + len(folded) // OPS_PER_STEP + len(run.header.fields) // 256)
    run.header.add(name, folded, "last" in node.tags)


def deleteheader(run: Run, frame: Frame, node: Node) -> None:
    name = _text(run, frame, node.args[0])
    if not FIELD_NAME.match(name):
        raise ScriptError(node.pos, f"deleteheader: {name!r} is not a header field name")
    if name.lower() in PROTECTED:
        return
    fields = run.header.named(name)
    run.charge(len(fields) // 16)
    index = node.tag("index")
    if isinstance(index, int):
        if index > len(fields):
            return
        fields = [fields[-index] if "last" in node.tags else fields[index - 1]]
    patterns = node.args[1]
    if isinstance(patterns, tuple):
        fields = [
            f
            for f in fields
            if run.test_values(frame, node, [f.decoded], patterns, count=1, capture=False)
        ]
    if fields:
        run.charge(1 + len(run.header.fields) // 256)
        run.header.delete(fields)


# --------------------------------------------------------------------------
# rfc5230 vacation


# rfc5230:4.6: addresses of automated systems never answered.
_ROBOTS: Final = frozenset(
    {"mailer-daemon", "listserv", "majordomo", "noreply", "no-reply", "do-not-reply"}
)
# rfc5230:4.6, rfc2369, rfc2919: list mail is not answered.
_LIST_FIELDS: Final = (
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
# rfc5230:4.5: where the user's address must be.
_RECIPIENT_FIELDS: Final = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


def _mine(address: str) -> str:
    """An address compared as the user's: lower-case, "+detail" dropped."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local.partition('+')[0]}@{domain}"


def _first_word(value: str) -> str:
    value = re.sub(r"\([^()]*\)", " ", value)
    return value.partition(";")[0].strip().lower()


def why_not_reply(run: Run, extra: list[str]) -> str | None:
    """The rfc5230:4.5/4.6 and rfc3834 reason not to answer, or None."""
    ctx = run.ctx
    sender = split_envelope_address(ctx.envelope.sender)
    if sender is None or not sender.domain:
        return "null sender"
    local = sender.local.lower()
    if local in _ROBOTS or local.startswith("owner-") or local.endswith("-request"):
        return "automated sender"
    header = run.header
    for f in header.named("auto-submitted"):
        if _first_word(f.text) != "no":
            return "Auto-Submitted"  # rfc3834:5
    if any(header.named(name) for name in _LIST_FIELDS):
        return "list mail"
    for f in header.named("precedence"):
        if _first_word(f.text) in ("bulk", "junk", "list"):
            return "Precedence"
    for f in header.named("x-auto-response-suppress"):
        if {w.strip().lower() for w in f.text.split(",")} & {"all", "oof"}:
            return "X-Auto-Response-Suppress"
    mine = {_mine(a) for a in (*ctx.addresses, ctx.account, ctx.envelope.recipient, *extra) if a}
    if _mine(sender.all) in mine:
        return "mail from the account itself"
    for name in _RECIPIENT_FIELDS:
        for f in header.named(name):
            for address in f.addresses:
                if address.valid and _mine(address.all) in mine:
                    return None
    return "the account's address is not in To, Cc or Bcc"


def _handle(node: Node) -> str:
    """rfc5230:4.2: without :handle, the unexpanded arguments identify the
    response (counted strings, so no two combinations collide)."""
    digest = hashlib.sha256()
    for name in ("subject", "from"):
        value = node.tag(name)
        text = value.raw if isinstance(value, Template) else "\0none"
        digest.update(f"{len(text)}:{text};".encode("utf-8", "surrogatepass"))
    digest.update(b"mime;" if "mime" in node.tags else b"text;")
    reason = node.args[0]
    assert isinstance(reason, Template)
    digest.update(reason.raw.encode("utf-8", "surrogatepass"))
    return "auto-" + digest.hexdigest()[:32]


def _one_line(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text).strip()


def vacation(run: Run, frame: Frame, node: Node) -> Vacation | None:
    """The reply to send, or None when a rule says not to answer."""
    limits = run.limits
    reason = _text(run, frame, node.args[0])
    mime = "mime" in node.tags
    if mime:
        head = reason.split("\r\n\r\n", 1)[0]
        if not head.isascii():
            # rfc5230:5: MIME header material must not be 8-bit.
            raise ScriptError(node.pos, "vacation :mime: non-ASCII in the MIME header")
    addresses_arg = node.tag("addresses")
    extra = run.expand_all(frame, addresses_arg) if isinstance(addresses_arg, tuple) else []
    seconds_arg, days_arg = node.tag("seconds"), node.tag("days")
    if isinstance(seconds_arg, int):
        period = float(seconds_arg)
    elif isinstance(days_arg, int):
        period = days_arg * DAY
    else:
        period = max(7 * DAY, limits.vacation_min_period)  # rfc5230:4.1 default
    period = min(max(period, limits.vacation_min_period), limits.vacation_max_period)
    handle_arg = node.tag("handle")
    handle = _text(run, frame, handle_arg) if handle_arg is not None else _handle(node)
    from_arg = node.tag("from")
    sender = _one_line(_text(run, frame, from_arg)) if from_arg is not None else ""
    if sender and sieve_address(sender) is None:
        sender = ""  # rfc5230:4.3: an invalid :from is ignored
    if why_not_reply(run, extra) is not None:
        return None
    subject_arg = node.tag("subject")
    if subject_arg is not None:
        subject = _one_line(_text(run, frame, subject_arg))
    else:  # rfc5230:5.3
        fields = run.header.named("subject")
        subject = f"Auto: {_one_line(fields[0].decoded)}" if fields else "Automated reply"
    to = split_envelope_address(run.ctx.envelope.sender)
    assert to is not None
    return Vacation(
        to=to.all,
        subject=subject,
        body=reason,
        from_=sender,
        mime=mime,
        handle=handle,
        seconds=period,
        addresses=tuple(extra),
    )
