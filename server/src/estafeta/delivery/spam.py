"""Spam checks of inbound mail: one scan per message, one verdict per account.

``Scanner.scan`` runs once for a message the MX accepted the DATA of, before
anything is stored:

- the message is parsed once (``spam.extract``, in a worker thread);
- an attachment with an executable file type refuses the message
  (``[spam] reject_executables``; ``554 5.7.1`` naming the file);
- rspamd, when configured, checks it (``/checkv2``); its action is applied:
  ``reject`` and ``soft reject``/``greylist`` refuse the message with rspamd's
  reason (554 / 451), ``rewrite subject`` and ``add header`` file it into
  Junk. If rspamd is down or slow, ``[rspamd] on_failure`` decides: ``accept``
  (the default: ``X-Spam-Status: unchecked``, a log line and a metric; our
  failure never becomes a 5xx for the sender) or ``tempfail`` (451);
- the registrable domains of the URLs in its body are looked up in the
  ``[dnsbl]`` domain zones (rfc5782:3): a listed one files it into Junk.

``SpamFilter`` is the filter chain's step for one account (after the DMARC
quarantine, before Sieve): the global and the account's allowlist, the
account's learning filter (``JunkFilter.classify``), one ``X-Spam-*`` header
set, Junk for a spam verdict, and the score that Sieve's ``spamtest``
(rfc5235) sees. Fields named ``X-Spam-*`` that came with the message are
removed first (``strip_spam_fields``): only ours are believed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from estafeta.config_spam import RspamdConfig, SpamConfig
from estafeta.delivery.filters import INBOX, JUNK, Action, Item, Keep
from estafeta.log import log_event
from estafeta.message import Summary, with_fields
from estafeta.policy import dnsbl
from estafeta.spam import JunkFilter, Verdict, executable_attachments, extract, url_domains
from estafeta.spam.extract import Extracted

log = logging.getLogger("estafeta.delivery")

# rfc5322:2.2 — a field name, then ":"; we look at the header block only.
MAX_HEADER = 256 * 1024
_SPAM_PREFIX = b"x-spam-"
_SUBJECT = re.compile(rb"(?im)^subject:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n")
# Messages up to this size are parsed on the event loop: about 0.1 ms for
# 4 KiB of text, at most a few ms here (spam.extract reads at most
# 256 KiB of text whatever the size).
INLINE_EXTRACT = 64 * 1024
# rfc3463:3.8 X.7.1 "delivery not authorized, message refused".
EXECUTABLE_REFUSED = "554 5.7.1 Executable attachments are not accepted here: {}"
RSPAMD_REJECT = "554 5.7.1 {}"
RSPAMD_SOFT = "451 4.7.1 {}"
RSPAMD_GREYLIST = "451 4.7.1 Greylisted by the spam filter, please try again later"
# rfc3463:3.8 X.7.0 as a temporary condition: our checker is down.
UNCHECKED_TEMPFAIL = "451 4.7.0 Spam check unavailable, please try again later"


class RspamdVerdict(Protocol):
    action: str
    score: float
    required: float
    symbols: tuple[tuple[str, float], ...]
    reason: str
    subject: str


class RspamdChecker(Protocol):
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
    ) -> Any: ...


@dataclass
class Scan:
    """What the per-message checks found (``Item.scan`` for the filters)."""

    extracted: Extracted | None = None
    rspamd: RspamdVerdict | None = None
    unchecked: str = ""  # rspamd is configured and failed: why
    url_listings: tuple[str, ...] = ()  # "domain (zone)"
    screen: tuple[str, ...] = ()  # the connection screen's signals (smtp.screen)
    reply: str = ""  # refuse the message with this reply
    reason: str = ""  # a short word for the log and the metric
    fields: dict[str, str] = field(default_factory=dict)  # log fields

    @property
    def rspamd_junk(self) -> bool:
        return self.rspamd is not None and self.rspamd.action in ("add header", "rewrite subject")


class Scanner:
    def __init__(
        self,
        *,
        junk: JunkFilter | None,
        config: SpamConfig,
        lists: dnsbl.Lists | None,
        rspamd: RspamdChecker | None,
        rspamd_config: RspamdConfig,
        hostname: str,
    ) -> None:
        self.junk = junk
        self.config = config
        self.lists = lists if lists is not None and lists.settings.domain_zones else None
        self.rspamd = rspamd
        self.rspamd_config = rspamd_config
        self.hostname = hostname

    @property
    def active(self) -> bool:
        return bool(
            self.junk is not None
            or self.config.reject_executables
            or self.lists is not None
            or self.rspamd is not None
        )

    async def scan(
        self,
        message: bytes,
        *,
        ip: str,
        helo: str,
        sender: str,
        recipients: Sequence[str],
        queue_id: str,
    ) -> Scan:
        scan = Scan()
        settings = self.config.settings
        if self.junk is not None or self.config.reject_executables or self.lists is not None:
            parse = self.junk.extract if self.junk is not None else extract
            if len(message) <= INLINE_EXTRACT:
                # Cheaper than the hop to a worker thread and back (bench/spam.py).
                scan.extracted = parse(message)
            else:
                scan.extracted = await asyncio.to_thread(parse, message)
        if self.config.reject_executables and scan.extracted is not None:
            names = executable_attachments(scan.extracted, settings.executable_extensions)
            if names:
                scan.reply = EXECUTABLE_REFUSED.format(_reply_text(", ".join(names))[:200])
                scan.reason = "executable"
                scan.fields["attachments"] = ", ".join(names)[:200]
                return scan
        urls = self.lists is not None and scan.extracted is not None
        if self.rspamd is not None and urls:
            await asyncio.gather(
                self._rspamd(scan, message, ip, helo, sender, recipients, queue_id),
                self._urls(scan),
            )
        elif self.rspamd is not None:  # one check: no tasks to make (bench/spam.py)
            await self._rspamd(scan, message, ip, helo, sender, recipients, queue_id)
        elif urls:
            await self._urls(scan)
        return scan

    async def _rspamd(
        self,
        scan: Scan,
        message: bytes,
        ip: str,
        helo: str,
        sender: str,
        recipients: Sequence[str],
        queue_id: str,
    ) -> None:
        if self.rspamd is None:
            return
        try:
            result: RspamdVerdict = await self.rspamd.check(
                message,
                ip=ip,
                helo=helo,
                sender=sender,
                recipients=recipients,
                queue_id=queue_id,
                hostname=self.hostname,
            )
        except Exception as exc:  # RspamdError, and a bug must not lose mail either
            scan.unchecked = str(exc)[:200] or type(exc).__name__
            log_event(
                log,
                "rspamd_unavailable",
                logging.WARNING,
                qid=queue_id,
                error=scan.unchecked,
                result=self.rspamd_config.on_failure,
            )
            if self.rspamd_config.on_failure == "tempfail":
                scan.reply, scan.reason = UNCHECKED_TEMPFAIL, "rspamd_unavailable"
            return
        scan.rspamd = result
        scan.fields["rspamd"] = f"{result.action} {result.score:.2f}/{result.required:.2f}"
        reason = _reply_text(result.reason) or "Spam message rejected"
        if result.action == "reject":
            scan.reply, scan.reason = RSPAMD_REJECT.format(reason), "rspamd"
        elif result.action == "soft reject":
            scan.reply, scan.reason = RSPAMD_SOFT.format(reason), "rspamd_soft"
        elif result.action == "greylist":
            scan.reply, scan.reason = RSPAMD_GREYLIST, "rspamd_greylist"

    async def _urls(self, scan: Scan) -> None:
        if self.lists is None or scan.extracted is None:
            return
        domains = url_domains(scan.extracted)
        if not domains:
            return
        result = await self.lists.check_domains(domains)
        scan.url_listings = tuple(f"{item.subject} ({item.zone})" for item in result.listed_by)
        if scan.url_listings:
            scan.fields["url_listed"] = ", ".join(scan.url_listings)[:200]


class SpamFilter:
    """The chain's spam step for one account (module docstring)."""

    name = "spam"

    def __init__(self, junk: JunkFilter | None, config: SpamConfig) -> None:
        self.junk = junk
        self.config = config
        self._global = frozenset(config.allow_senders)

    async def apply(self, item: Item, actions: Sequence[Action]) -> Sequence[Action]:
        scan = item.scan
        if not isinstance(scan, Scan):
            return actions  # not from the MX (submission, DSNs, the queue)
        senders = _sender_addresses(item)
        allowed = self._allowed_globally(senders)
        verdict: Verdict | None = None
        if self.junk is not None and not allowed:
            done = self._classify_nowait(item, scan, senders)
            if done is None:
                done = await asyncio.to_thread(self._classify, item, scan, senders)
            verdict, allowed = done
        tests: list[str] = []
        if not allowed:
            if verdict is not None and verdict.spam:
                tests.append("bayes")
            if scan.rspamd_junk:
                tests.append("rspamd")
            if scan.url_listings:
                tests.append("url")
        item.spam_score = _score(verdict, scan, bool(tests))
        fields = _header_fields(verdict, scan, tests, allowed)
        header = b"".join(f"{n}: {v}\r\n".encode() for n, v in fields)
        at = _after_trace(item.message)
        message = item.message[:at] + header + item.message[at:]
        item.parsed = _parsed(scan, item.message, at, header, message)
        item.message = message
        if not tests:
            return actions
        item.notes.append("spam: " + ",".join(tests))
        return [
            Keep(JUNK, a.flags) if isinstance(a, Keep) and a.mailbox == INBOX else a
            for a in actions
        ]

    def _allowed_globally(self, senders: Sequence[str]) -> bool:
        if not self._global:
            return False
        return any(s in self._global or "@" + s.rpartition("@")[2] in self._global for s in senders)

    def _classify_nowait(
        self, item: Item, scan: Scan, senders: Sequence[str]
    ) -> tuple[Verdict | None, bool] | None:
        """``_classify`` on the loop when the account's statistics can be
        read without waiting (JunkFilter.*_nowait), else None."""
        assert self.junk is not None
        if scan.extracted is None:
            return None  # a big message: extraction belongs in a thread
        checked = self.junk.check_nowait(item.account, scan.extracted, senders)
        if checked is None:
            return None
        allowed, verdict = checked
        return verdict, allowed

    def _classify(
        self, item: Item, scan: Scan, senders: Sequence[str]
    ) -> tuple[Verdict | None, bool]:
        assert self.junk is not None
        if senders and self.junk.is_allowed(item.account, senders):
            return None, True
        message: bytes | Extracted = scan.extracted if scan.extracted is not None else item.message
        return self.junk.classify(item.account, message), False


def _parsed(
    scan: Scan, message: bytes, at: int, header: bytes, new: bytes
) -> tuple[bytes, Summary] | None:
    """``new`` (``header`` put into ``message`` at ``at``) and its Summary,
    made from the scan's parse of the content without parsing again: the
    message is our trace fields on top of that content, so only offsets
    move (``message.with_fields``). None when that does not hold (rspamd
    rewrote the subject, say): the store parses the message itself."""
    extracted = scan.extracted
    if extracted is None or not message.endswith(extracted.data):
        return None
    top = len(message) - len(extracted.data)
    summary = with_fields(extracted.summary, extracted.data, 0, message[:top])
    if summary is not None:
        summary = with_fields(summary, message, at, header)
    return None if summary is None else (new, summary)


def _score(verdict: Verdict | None, scan: Scan, spam: bool) -> float | None:
    """0..1 for Sieve's spamtest; None: nothing judged the message."""
    scores: list[float] = []
    if verdict is not None and verdict.trained:
        scores.append(verdict.score)
    if scan.rspamd is not None and scan.rspamd.required > 0:
        scores.append(max(0.0, min(1.0, scan.rspamd.score / scan.rspamd.required)))
    if scan.url_listings:
        scores.append(1.0)
    if not scores:
        return None
    value = max(scores)
    return max(value, 0.9) if spam else value


def _header_fields(
    verdict: Verdict | None, scan: Scan, tests: Sequence[str], allowed: bool
) -> list[tuple[str, str]]:
    """One X-Spam-* set: Status (Yes/No/unchecked first), Score, then the details."""
    base = dict(verdict.header_fields()) if verdict is not None else {}
    if allowed:
        status = "No, allowlisted"
    else:
        status = base.get("X-Spam-Status", "No")
        if tests:
            status = "Yes" + status.removeprefix("Yes").removeprefix("No")
            status += f" tests={','.join(tests)}"
        elif scan.unchecked:
            status = "unchecked" + status.removeprefix("No")
    if scan.unchecked:
        status += " rspamd=unchecked"
    fields = [("X-Spam-Status", status)]
    if "X-Spam-Score" in base:
        fields.append(("X-Spam-Score", base["X-Spam-Score"]))
    if "X-Spam-Tokens" in base:
        fields.append(("X-Spam-Tokens", base["X-Spam-Tokens"]))
    rspamd = scan.rspamd
    if rspamd is not None:
        symbols = " ".join(f"{_header_text(n)}({s:.2f})" for n, s in rspamd.symbols[:20])
        fields.append(
            (
                "X-Spam-Rspamd",
                f'action="{_header_text(rspamd.action)}" score={rspamd.score:.2f} '
                f"required={rspamd.required:.2f}" + (f" symbols={symbols}" if symbols else ""),
            )
        )
    if scan.url_listings:
        fields.append(("X-Spam-Urls", _header_text(", ".join(scan.url_listings))))
    if scan.screen:
        # What the connection screen noticed and did not refuse for (FCrDNS,
        # HELO, a block list below the reject score): for the reader and Sieve.
        fields.append(("X-Spam-Screen", _header_text(" ".join(scan.screen))))
    return [(name, _fold(name, value)) for name, value in fields]


def strip_spam_fields(message: bytes) -> bytes:
    """``message`` without header fields named ``X-Spam-*`` (with their
    continuation lines): a sender must not be able to say what our filter
    said. Other bytes are kept exactly; only the header block is looked at."""
    head_end = message.find(b"\r\n\r\n", 0, MAX_HEADER)
    if head_end < 0:
        head_end = min(len(message), MAX_HEADER)
    lowered = message[: head_end + 2].lower()
    if b"\nx-spam-" not in lowered and not lowered.startswith(_SPAM_PREFIX):
        return message
    out: list[bytes] = []
    drop = False
    position = 0
    while position < head_end + 2:
        newline = message.find(b"\n", position, head_end + 2)
        end = head_end + 2 if newline < 0 else newline + 1
        line = message[position:end]
        if line in (b"\r\n", b"\n"):
            break  # rfc5322:2.1 — the empty line: the body follows
        if line[:1] not in (b" ", b"\t"):
            drop = line[:7].lower() == _SPAM_PREFIX
        if not drop:
            out.append(line)
        position = end
    out.append(message[position:])
    return b"".join(out)


def rewrite_subject(message: bytes, subject: str) -> bytes:
    """rspamd's ``rewrite subject`` action: the first Subject field replaced
    (added when there is none), the new text made one safe line."""
    text = _header_text(subject)[:900]
    head_end = message.find(b"\r\n\r\n", 0, MAX_HEADER)
    head = message[: head_end + 2] if head_end >= 0 else b""
    replacement = b"Subject: " + text.encode("utf-8") + b"\r\n"
    found = _SUBJECT.search(head)
    if found is None:
        return replacement + message
    return message[: found.start()] + replacement + message[found.end() :]


_TRACE = (b"received:", b"authentication-results:")


def _after_trace(message: bytes) -> int:
    """Where our fields go: after the trace fields this server put on top
    (Received, then Authentication-Results; rfc5321:4.4 keeps trace
    fields first), before the fields that came with the message."""
    position = 0
    for name in _TRACE:
        if message[position : position + len(name)].lower() != name:
            continue
        while True:
            newline = message.find(b"\n", position, position + MAX_HEADER)
            if newline < 0:
                return position
            position = newline + 1
            if message[position : position + 1] not in (b" ", b"\t"):
                break
    return position


def _sender_addresses(item: Item) -> list[str]:
    """The envelope sender and the From addresses, lower case (allowlists)."""
    found = [item.sender.lower()] if item.sender else []
    head_end = item.message.find(b"\r\n\r\n", 0, MAX_HEADER)
    head = item.message[: head_end + 2] if head_end >= 0 else item.message[:MAX_HEADER]
    for match in _FROM.finditer(head):
        for address in _ADDRESS.findall(match.group(1).decode("utf-8", "replace")):
            address = address.lower()
            if address not in found and len(found) < 10:
                found.append(address)
        break  # the first From field only
    return found


_FROM = re.compile(rb"(?im)^from:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)")
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w.-]+")


def _reply_text(text: str) -> str:
    """Text for an SMTP reply line: printable ASCII, one line (rfc5321:4.2)."""
    flat = " ".join(str(text).split())
    return "".join(c if " " <= c <= "~" else "?" for c in flat)[:400]


def _header_text(text: str) -> str:
    flat = " ".join(str(text).split())
    return "".join(c if " " <= c <= "~" else "?" for c in flat)


def _fold(name: str, value: str, width: int = 78) -> str:
    """rfc5322:2.2.3 — fold at spaces so that no line passes ``width``."""
    words = value.split(" ")
    lines: list[str] = []
    current = ""
    used = len(name) + 2
    for word in words:
        if current and used + len(current) + 1 + len(word) > width:
            lines.append(current)
            current, used = word, 1
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\r\n\t".join(lines)
