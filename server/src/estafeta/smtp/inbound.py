"""Inbound SMTP (MX): who may receive, and durable delivery to the store.

The aiosmtpd hooks below (``handle_EHLO``, ``handle_MAIL``, ...) carry the
policy; the protocol details are aiosmtpd's (and ``protocol.SMTPProtocol``'s).
A ``250`` after DATA is sent only after ``Store.deliver`` returned, i.e. the
message file and directory are fsync'd and the index is committed.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import TLSSetupException

from estafeta.address import AddressError, normalize_address
from estafeta.delivery.dmarc_evaluations import Recorder
from estafeta.delivery.local import Envelope, LocalDelivery, Outcome, Recipient, RecipientCheck
from estafeta.delivery.spam import Scanner, rewrite_subject, strip_spam_fields
from estafeta.dns import Resolver
from estafeta.log import log_event
from estafeta.policy import authresults, spf
from estafeta.policy.analyze import Analysis, analyze
from estafeta.smtp import replies
from estafeta.smtp.gate import Gate

log = logging.getLogger("estafeta.smtp")

# rfc5321:2.3.8 — CRLF is the only line ending; a lone CR or LF is how
# "SMTP smuggling" hides a second message inside the first. The definition;
# has_bare_line_ending is the fast form (test_smtp_bare_lines.py compares them).
_BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def has_bare_line_ending(content: bytes) -> bool:
    """Whether ``content`` has a CR not followed by LF or an LF not after a
    CR: exactly when there are more CRs or more LFs than CRLF pairs. Three
    counts in C instead of the regex's two tries at every octet (the regex
    was 16 % of the event loop's GIL time in a P1 profile)."""
    pairs = content.count(b"\r\n")
    return content.count(b"\r") != pairs or content.count(b"\n") != pairs


_QID_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"
# rfc5321:6.3 — loop detection by counting Received fields; 100 is the
# suggested ceiling, Postfix uses 50.
MAX_HOPS = 50


# Queue ids must be unique, not secret (they are shown in replies, trace
# fields and DSNs): a generator seeded once from the system's source. A
# read of that source per id released the GIL on the event loop's thread,
# which then waited for the store's threads: 3.5 % of ingest.
_QID_RANDOM = random.Random(secrets.token_bytes(32))


def new_queue_id() -> str:
    """12 characters of _QID_ALPHABET (about 2**58 values)."""
    value = _QID_RANDOM.getrandbits(64)
    chars = []
    for _ in range(12):
        value, digit = divmod(value, len(_QID_ALPHABET))
        chars.append(_QID_ALPHABET[digit])
    return "".join(chars)


@dataclass
class Transaction:
    """What we learn about one mail transaction beyond aiosmtpd's Envelope."""

    queue_id: str = field(default_factory=new_queue_id)
    # Each accepted RCPT: the address as given and where it leads.
    recipients: list[Recipient] = field(default_factory=list)
    # SPF of the MAIL FROM identity, when RCPT needed it (greylisting).
    spf: spf.SPFVerdict | None = None
    # Why greylisting does not apply to this transaction ("" : not decided).
    greylist_skip: str = ""
    # SPF, DKIM, DMARC and ARC of the message, once DATA has them.
    analysis: Analysis | None = None


class HandlerBase:
    """The hooks the MX and submission handlers answer alike."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        result: list[str] = server.ehlo_extensions(responses)
        return result

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A failed STARTTLS handshake is the client's doing, logged by
            # SMTPProtocol.smtp_STARTTLS; aiosmtpd closes without a reply.
            return replies.INTERNAL_ERROR
        # Never a traceback to the client: log it, answer 451 (the client retries).
        log.error("internal error in SMTP session", exc_info=error)
        return replies.INTERNAL_ERROR

    max_recipients: int

    def _begin(self, envelope: Any, address: str, mail_options: list[str]) -> str:
        """MAIL accepted: start the transaction."""
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.estafeta = Transaction()
        return replies.OK_SENDER

    def _check_rcpt(self, envelope: Any, address: str) -> tuple[str, str | None]:
        """(normalized address, refusal reply or None) for one RCPT."""
        if len(envelope.rcpt_tos) >= self.max_recipients:
            # rfc5321:4.5.3.1.10 — 452, and the client sends the rest later.
            return "", replies.TOO_MANY_RECIPIENTS
        try:
            return normalize_address(address), None
        except AddressError as exc:
            return "", f"{replies.BAD_RECIPIENT_SYNTAX}: {exc}"

    def _accept_rcpt(
        self, envelope: Any, address: str, recipient: Recipient, options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.estafeta.recipients.append(recipient)
        return replies.OK_RECIPIENT

    @staticmethod
    def _reply(outcome: Outcome, queue_id: str) -> str:
        """The reply after DATA for what the delivery layer did."""
        if outcome.status == "delivered":
            return f"250 2.0.0 Ok: queued as {queue_id}"
        if outcome.status == "overquota":
            return replies.MAILBOX_FULL_PERMANENT if outcome.permanent else replies.MAILBOX_FULL
        if outcome.status == "rejected":
            reason = _reply_safe(outcome.reason) or "Message refused by the recipient's rules"
            return f"{replies.REFUSED_BY_RULE} {reason}"
        return replies.TEMPORARY_FAILURE


class InboundHandler(HandlerBase):
    def __init__(
        self,
        *,
        hostname: str,
        delivery: LocalDelivery,
        max_recipients: int,
        resolver: Resolver | None = None,
        dmarc_reject: bool = True,
        gate: Gate | None = None,
        scanner: Scanner | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.hostname = hostname
        self.delivery = delivery
        self.max_recipients = max_recipients
        # None: no SPF/DKIM/DMARC/ARC checks ([inbound] authenticate = false).
        self.resolver = resolver
        self.dmarc_reject = dmarc_reject
        # Greylisting at RCPT (None: off) and the spam checks after DATA.
        self.gate = gate
        self.scanner = scanner if scanner is not None and scanner.active else None
        # DMARC evaluations for the aggregate reports we send (None: off).
        self.recorder = recorder

    # -- hooks called by aiosmtpd -----------------------------------------

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if address != "<>":
            try:
                normalize_address(address)
            except AddressError as exc:
                return f"{replies.BAD_SENDER_SYNTAX}: {exc}"
        return self._begin(envelope, address, mail_options)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        address = self.delivery.router.postmaster(address)
        normalized, refusal = self._check_rcpt(envelope, address)
        if refusal:
            return refusal
        check: RecipientCheck = await self.delivery.check_recipient(normalized)
        if check.refusal == "relay":
            # Relaying needs authentication (submission); the MX never relays.
            self._rejected(session, envelope, address, "relay denied")
            return f"{replies.RELAY_DENIED}: <{address}>"
        if check.refusal == "over_quota":
            self._rejected(session, envelope, address, "mailbox full")
            return f"{replies.MAILBOX_FULL}: <{address}>"
        if check.refusal:
            self._rejected(session, envelope, address, check.reason)
            return f"{replies.NO_SUCH_USER}: <{address}>"
        if self.gate is not None:
            refusal = await self._greylist(session, envelope, normalized)
            if refusal:
                return refusal
        recipient = Recipient(address, check.targets, check.srs)
        return self._accept_rcpt(envelope, address, recipient, rcpt_options)

    async def _greylist(self, session: Any, envelope: Any, rcpt: str) -> str:
        """rfc6647:2.2 — greylisting at RCPT: "" to go on, or the 451 reply."""
        assert self.gate is not None
        transaction: Transaction = envelope.estafeta
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        if not transaction.greylist_skip:
            transaction.greylist_skip = await self.gate.skip(
                ip=_peer(session),
                sender=sender,
                helo=session.host_name or "",
                screen=getattr(session, "screen", None),
                resolver=self.resolver,
                hostname=self.hostname,
                transaction=transaction,
            )
        if transaction.greylist_skip != "no":
            return ""
        reply = await self.gate.check(_peer(session), sender, rcpt)
        if reply:
            self._rejected(session, envelope, rcpt, "greylisted")
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await self._data(server, session, envelope)
        transaction: Transaction = envelope.estafeta
        if self.recorder is not None and transaction.analysis is not None and reply[:1] != "4":
            # docs/dmarc-reports.md: once the message's fate is final (a 4xx
            # makes the client try again, and that try is recorded).
            self.recorder.record(
                transaction.analysis,
                ip=_peer(session),
                mail_from="" if envelope.mail_from == "<>" else envelope.mail_from,
                recipients=[rcpt.address for rcpt in transaction.recipients],
            )
        return reply

    async def _data(self, server: Any, session: Any, envelope: Any) -> str:
        transaction: Transaction = envelope.estafeta
        content: bytes = envelope.original_content
        fields: dict[str, Any] = {
            "qid": transaction.queue_id,
            "client": _peer(session),
            "helo": session.host_name,
            "from": _angle(envelope.mail_from),
            "to": [_angle(rcpt.address) for rcpt in transaction.recipients],
            "size": len(content),
        }
        if has_bare_line_ending(content):
            log_event(
                log,
                "delivery",
                level=logging.WARNING,
                **fields,
                result="rejected",
                reason="bare CR or LF",
            )
            return replies.BARE_LINE_ENDING
        if _count_received(content) >= MAX_HOPS:
            # rfc5321:6.3 — a message that went round this often is in a loop.
            log_event(log, "delivery", logging.WARNING, **fields, result="rejected", reason="loop")
            return replies.TOO_MANY_HOPS

        # rfc8601:5 — nobody else may speak for our authserv-id.
        content = authresults.strip_ours(content, self.hostname)
        analysis: Analysis | None = None
        if self.resolver is not None:
            analysis = await analyze(
                self.resolver,
                hostname=self.hostname,
                ip=_peer(session),
                helo=session.host_name or "",
                mail_from="" if envelope.mail_from == "<>" else envelope.mail_from,
                message=content,
                dmarc_reject=self.dmarc_reject,
                spf_verdict=transaction.spf,
            )
            transaction.analysis = analysis
            fields.update(analysis.summary())
            if analysis.reject:
                log_event(
                    log, "delivery", logging.INFO, **fields, result="rejected", reason="dmarc"
                )
                return analysis.reject
        scan = None
        if self.scanner is not None:
            # Only our X-Spam-* fields are believed (the filter adds them).
            content = strip_spam_fields(content)
            scan = await self.scanner.scan(
                content,
                ip=_peer(session),
                helo=session.host_name or "",
                sender="" if envelope.mail_from == "<>" else envelope.mail_from,
                recipients=[rcpt.address for rcpt in transaction.recipients],
                queue_id=transaction.queue_id,
            )
            screen = getattr(session, "screen", None)
            if screen is not None and screen.signals:
                scan.screen = tuple(screen.signals)
                fields["screen"] = ",".join(scan.screen)
            fields.update(scan.fields)
            if scan.reply:
                log_event(
                    log, "delivery", logging.INFO, **fields, result="rejected", reason=scan.reason
                )
                return scan.reply
            if scan.rspamd is not None and scan.rspamd.action == "rewrite subject":
                content = rewrite_subject(content, scan.rspamd.subject)
        received = self._trace_headers(server, session, envelope, transaction)
        message = received + (analysis.header if analysis else b"") + content
        started = time.monotonic()
        server.busy = True
        try:
            outcome = await self.delivery.deliver(
                Envelope(
                    sender="" if envelope.mail_from == "<>" else envelope.mail_from,
                    recipients=tuple(transaction.recipients),
                    queue_id=transaction.queue_id,
                    origin="mx",
                    client_ip=_peer(session),
                ),
                message,
                analysis,
                scan,
            )
        finally:
            server.busy = False
        if self.gate is not None and analysis is not None and outcome.status == "delivered":
            await self.gate.delivered(analysis)
        log_event(
            log,
            "delivery",
            level=logging.ERROR if outcome.status == "tempfail" else logging.INFO,
            **fields,
            **outcome.log_fields(),
            result=outcome.status,
            **({"reason": outcome.reason} if outcome.reason else {}),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return self._reply(outcome, transaction.queue_id)

    # -- helpers ----------------------------------------------------------

    def _rejected(self, session: Any, envelope: Any, rcpt: str, reason: str) -> None:
        log_event(
            log,
            "rcpt_rejected",
            level=logging.INFO,
            qid=envelope.estafeta.queue_id,
            client=_peer(session),
            helo=session.host_name,
            **{"from": _angle(envelope.mail_from)},
            to=_angle(rcpt),
            reason=reason,
        )

    def _trace_headers(
        self, server: Any, session: Any, envelope: Any, transaction: Transaction
    ) -> bytes:
        # rfc5321:4.4 — the delivering server adds Return-Path; every hop adds Received.
        protocol = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP"
        if not session.extended_smtp:
            protocol = "SMTP"
        elif server.tls_active:
            protocol += "S"  # rfc3848:4
        tls = server.tls_info()
        peer = _peer(session)
        helo = _header_safe(session.host_name or "unknown")
        lines = [
            f"Received: from {helo} ([{peer}])",
            f"\tby {self.hostname} (estafeta) with {protocol} id {transaction.queue_id}",
        ]
        if tls:
            lines.append(f"\t(using {tls})")
        if len(transaction.recipients) == 1:
            lines.append(f"\tfor {_angle(_header_safe(transaction.recipients[0].address))};")
        else:
            lines[-1] += ";"
        lines.append(f"\t{email.utils.formatdate(localtime=True)}")
        header = "\r\n".join(lines) + "\r\n"
        return header.encode("utf-8", "surrogateescape")


def _count_received(content: bytes) -> int:
    end = content.find(b"\r\n\r\n")
    head = content[: end + 2] if end >= 0 else content
    return sum(1 for line in head.split(b"\r\n") if line[:9].lower() == b"received:")


def _peer(session: Any) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _angle(address: str | None) -> str:
    if not address or address == "<>":
        return "<>"
    return f"<{address}>"


def _reply_safe(text: str) -> str:
    """A user's text in an SMTP reply: one line of printable ASCII (rfc5321:4.2)."""
    flat = " ".join(text.split())
    return "".join(c if " " <= c <= "~" else "?" for c in flat)[:400]


def _header_safe(text: str) -> str:
    """Client-supplied text placed in a header: no line breaks, no controls."""
    return "".join(c if c.isprintable() and c not in "\r\n" else "?" for c in text)[:255]
