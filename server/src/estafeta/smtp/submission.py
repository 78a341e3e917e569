"""Message submission (rfc6409) on 587 (STARTTLS) and 465 (implicit TLS, rfc8314).

Only authenticated users may submit (``530 5.7.0`` before AUTH); they may
send anywhere (relay), but only as themselves: the envelope sender and every
From: address must be the account or an address that resolves to it (an
alias, a subaddress), else ``553 5.7.1``. A recipient that is a shared
mailbox's address needs the account's ``p`` right on that mailbox
(rfc4314:2.1 "post", docs/shared-mailboxes.md), else ``550 5.7.1`` at RCPT.

The From: and Sender: fields are read by the parser that gives IMAP its
ENVELOPE (``message.structure``), the reading mail clients share, not by a
second one that could see another address in the same bytes: exactly one
From field (rfc5322:3.6), at most one Sender, each a strict mailbox-list
(rfc5322:3.4, 3.6.2; no group, nothing our parser would have to guess at:
``550 5.6.0``), every mailbox owned, and no unowned address in a display
name or comment either (decoded from RFC 2047), since clients show those
instead of the address (``553 5.7.1``). The first From mailbox names the
DKIM signing domain.

Before the ``250``: the message gets the Message-ID and Date a client left
out (rfc6409:8.2/8.3), our Received header (without the client's address if
``[submission] strip_client_ip``), DKIM signatures for the From domain;
local recipients are delivered to the store and remote ones are written to
the outbound queue — both durably.

Sending limits per account (``[submission] max_messages_per_hour`` and
``max_recipients_per_message``) slow down a stolen account: ``451 4.7.1``
on the MAIL after too many accepted messages in the last hour, and on each
RCPT beyond the per-message limit. ``SendLimits`` counts in memory (a
restart resets it); on a cluster ``SharedSendLimits`` counts what every node
accepted (estafeta.cluster.counters), and while the database is away falls
back to this node's own count: mail is never refused because the counter
cannot be read.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from estafeta.address import normalize_address, split_address
from estafeta.delivery.local import Envelope, LocalDelivery, Recipient
from estafeta.log import log_event
from estafeta.message import decode_rfc2047
from estafeta.message.structure import AddressSyntaxError, header_fields, parse_mailbox_list
from estafeta.policy.signer import Signer
from estafeta.smtp import replies
from estafeta.smtp.inbound import HandlerBase, Transaction, _angle, _header_safe, _peer

log = logging.getLogger("estafeta.smtp")

_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")

NOT_OWNER = "553 5.7.1 Sender address not owned by the authenticated user"
FROM_NOT_OWNER = "553 5.7.1 From: header address not owned by the authenticated user"
NULL_SENDER = "553 5.7.1 The null sender is not accepted on submission"
BAD_FROM = "550 5.6.0 From: header cannot be parsed"
# rfc5322:3.6 — From exactly once, Sender at most once (rfc3463:3.7 X.6.0).
MANY_FROM = "550 5.6.0 More than one From: header field; a message has exactly one (rfc5322:3.6)"
MANY_SENDER = "550 5.6.0 More than one Sender: header field (rfc5322:3.6)"
BAD_SENDER = "550 5.6.0 Sender: header must be one mailbox (rfc5322:3.6.2)"
SENDER_NOT_OWNER = "553 5.7.1 Sender: header address not owned by the authenticated user"
NAME_NOT_OWNER = (
    "553 5.7.1 From: display name or comment shows an address not owned by the authenticated user"
)
# An address as a mail client may pick it out of a display name or comment.
_ADDRESS_IN_TEXT = re.compile(r"[^\s<>()\[\]\",;:@]+@[^\s<>()\[\]\",;:@]+\.[^\s<>()\[\]\",;:@.]+")
# rfc3463:3.8 X.7.1 "delivery not authorized": a policy refusal, temporary (4xx)
# because it lifts by itself.
HOURLY_LIMIT = "451 4.7.1 Sending limit reached: at most {} messages per hour; try again later"
RECIPIENT_LIMIT = "451 4.7.1 Too many recipients: at most {} per message; send the rest separately"
HOUR = 3600.0


class SendLimits:
    """Per-account sending limits, in memory.

    ``messages_per_hour`` counts the messages an account got a 250 for over
    a sliding hour (one message to 50 recipients counts once);
    ``recipients_per_message`` caps the RCPTs of one transaction.
    """

    def __init__(
        self,
        *,
        messages_per_hour: int,
        recipients_per_message: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.messages_per_hour = messages_per_hour
        self.recipients_per_message = recipients_per_message
        self.clock = clock
        # Times of accepted messages in the last hour; never longer than the limit.
        self._sent: dict[str, deque[float]] = {}
        # Accounts refused since they were last allowed (to log once per episode).
        self._over: set[str] = set()

    def _recent(self, account: str) -> deque[float] | None:
        times = self._sent.get(account)
        if times is None:
            return None
        since = self.clock() - HOUR
        while times and times[0] <= since:
            times.popleft()
        if not times:
            del self._sent[account]
            return None
        return times

    def may_send(self, account: str) -> bool:
        times = self._recent(account)
        if times is None or len(times) < self.messages_per_hour:
            self._over.discard(account)
            return True
        return False

    def first_refusal(self, account: str) -> bool:
        """True the first time an account is refused since it was last allowed."""
        if account in self._over:
            return False
        self._over.add(account)
        return True

    def sent(self, account: str) -> None:
        times = self._recent(account)
        if times is None:
            times = self._sent[account] = deque()
        times.append(self.clock())
        while len(times) > self.messages_per_hour:
            times.popleft()

    def count(self, account: str) -> int:
        times = self._recent(account)
        return 0 if times is None else len(times)

    # What the handler awaits (SharedSendLimits asks the database).

    async def allow(self, account: str) -> bool:
        """May ``account`` start another message now?"""
        return self.may_send(account)

    async def record(self, account: str) -> None:
        """``account`` got a 250 for a message."""
        self.sent(account)


class SendCounter(Protocol):
    """Messages per address counted by every node
    (estafeta.cluster.counters.SendCounts); times are wall-clock seconds."""

    def record(self, address: str, when: float) -> Awaitable[None]: ...

    def count(self, address: str, since: float) -> Awaitable[int]: ...


class SharedSendLimits(SendLimits):
    """``SendLimits`` over the messages every node accepted (a cluster).

    Each MAIL asks ``counts`` for the account's last hour (one query), each
    accepted message adds one (one upsert). This node also counts in memory
    as ``SendLimits`` does: while the database is away, that count decides,
    so mail keeps flowing (a sender may then get up to the limit per node).
    The outage is logged once when it starts and once when it ends.
    """

    def __init__(
        self,
        counts: SendCounter,
        *,
        messages_per_hour: int,
        recipients_per_message: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            messages_per_hour=messages_per_hour,
            recipients_per_message=recipients_per_message,
            clock=clock,
        )
        self.counts = counts
        self.wall_clock = wall_clock
        self.outage = False

    async def allow(self, account: str) -> bool:
        try:
            sent = await self.counts.count(account, self.wall_clock() - HOUR)
        except Exception as exc:
            self._down(exc)
            return self.may_send(account)
        self._up()
        if sent < self.messages_per_hour:
            self._over.discard(account)
            return True
        return False

    async def record(self, account: str) -> None:
        self.sent(account)
        try:
            await self.counts.record(account, self.wall_clock())
        except Exception as exc:
            self._down(exc)
        else:
            self._up()

    def _down(self, exc: Exception) -> None:
        if not self.outage:
            self.outage = True
            log_event(log, "send_limits_shared_unavailable", logging.WARNING,
                      error=str(exc)[:300] or type(exc).__name__,
                      fallback="this node's own count")  # fmt: skip

    def _up(self) -> None:
        if self.outage:
            self.outage = False
            log_event(log, "send_limits_shared_restored", logging.INFO)


class SubmissionHandler(HandlerBase):
    def __init__(
        self,
        *,
        hostname: str,
        delivery: LocalDelivery,
        signer: Signer,
        max_recipients: int,
        strip_client_ip: bool = False,
        limits: SendLimits | None = None,
    ) -> None:
        self.hostname = hostname
        self.delivery = delivery
        self.signer = signer
        self.max_recipients = max_recipients
        self.strip_client_ip = strip_client_ip
        self.limits = limits or SendLimits(
            messages_per_hour=500, recipients_per_message=max_recipients
        )

    def owns(self, account: str, address: str) -> bool:
        return self.delivery.router.owns(account, address)

    # -- hooks called by aiosmtpd -----------------------------------------

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        account = server.authenticated_user
        if account is None:  # aiosmtpd's auth_required answers first; belt and braces.
            return "530 5.7.0 Authentication required"
        if address == "<>" or not address:
            return NULL_SENDER
        if not self.owns(account, address):
            log_event(
                log,
                "submission_refused",
                logging.WARNING,
                user=account,
                **{"from": _angle(address)},
                reason="sender not owned",
            )
            return f"{NOT_OWNER}: <{address}>"
        if not await self.limits.allow(account):
            if self.limits.first_refusal(account):
                log_event(
                    log,
                    "send_limit",
                    logging.WARNING,
                    account=account,
                    limit="max_messages_per_hour",
                    value=self.limits.messages_per_hour,
                    client=_peer(session),
                )
            return HOURLY_LIMIT.format(self.limits.messages_per_hour)
        return self._begin(envelope, address, mail_options)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        limit = self.limits.recipients_per_message
        if len(envelope.rcpt_tos) >= limit:
            if not getattr(envelope, "estafeta_rcpt_limit_logged", False):
                envelope.estafeta_rcpt_limit_logged = True
                log_event(
                    log,
                    "send_limit",
                    logging.WARNING,
                    account=server.authenticated_user,
                    limit="max_recipients_per_message",
                    value=limit,
                    client=_peer(session),
                )
            return RECIPIENT_LIMIT.format(limit)
        normalized, refusal = self._check_rcpt(envelope, address)
        if refusal:
            return refusal
        _, domain = split_address(normalized)
        if not self.delivery.router.is_local_domain(domain):
            # Relayed for our user: the queue takes it.
            recipient = Recipient(normalized, (normalized,))
            return self._accept_rcpt(envelope, address, recipient, rcpt_options)
        account = server.authenticated_user
        check = await self.delivery.check_recipient(normalized, submitter=account)
        if check.refusal == "over_quota":
            return f"{replies.MAILBOX_FULL}: <{address}>"
        if check.refusal == "not_allowed":
            # rfc4314:2.1 "p": posting to a shared mailbox's address is a right.
            log_event(log, "submission_refused", logging.INFO, user=account,
                      to=_angle(normalized), reason=check.reason)  # fmt: skip
            return f"{replies.NOT_ALLOWED_TO_POST}: <{address}>"
        if check.refusal:
            return f"{replies.NO_SUCH_USER}: <{address}>"
        recipient = Recipient(normalized, check.targets, check.srs)
        return self._accept_rcpt(envelope, address, recipient, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        transaction: Transaction = envelope.estafeta
        account: str = server.authenticated_user
        # Authenticated clients get the benefit of the doubt: lone LFs and CRs
        # become CRLF (smuggling needs an unauthenticated hop to matter).
        content = _BARE_LF.sub(b"\r\n", _BARE_CR.sub(b"\r\n", envelope.original_content))
        header = header_fields(content)
        names = {name for name, _ in header}
        added: list[str] = []
        from_address, refusal = self._check_originator(account, envelope, header)
        if refusal is not None:
            return refusal
        if "from" not in names:
            added.append(f"From: <{envelope.mail_from}>")
        if "message-id" not in names:
            # rfc6409:8.3 — the MSA may add a missing Message-ID.
            added.append(f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>")
        if "date" not in names:
            added.append(f"Date: {email.utils.formatdate(localtime=True)}")  # rfc6409:8.2
        data = (
            self._received(server, session, envelope, transaction)
            + "".join(f"{line}\r\n" for line in added).encode("utf-8")
            + content
        )
        from_domain = split_address(normalize_address(from_address))[1]
        signature = await asyncio.to_thread(self.signer.sign, from_domain, data)
        data = signature + data

        fields: dict[str, Any] = {
            "qid": transaction.queue_id,
            "user": account,
            "client": _peer(session),
            "from": _angle(envelope.mail_from),
            "to": [_angle(rcpt.address) for rcpt in transaction.recipients],
            "size": len(data),
            "dkim": bool(signature),
        }
        server.busy = True
        try:
            outcome = await self.delivery.deliver(
                Envelope(
                    sender=envelope.mail_from,
                    recipients=tuple(transaction.recipients),
                    queue_id=transaction.queue_id,
                    origin="submission",
                    client_ip=_peer(session),
                    auth=account,
                ),
                data,
            )
        finally:
            server.busy = False
        log_event(
            log,
            "submission",
            logging.ERROR if outcome.status == "tempfail" else logging.INFO,
            **fields,
            **outcome.log_fields(),
            result="ok" if outcome.status == "delivered" else outcome.status,
            **({"reason": outcome.reason} if outcome.reason else {}),
        )
        if outcome.status == "delivered":
            await self.limits.record(account)
        return self._reply(outcome, transaction.queue_id)

    def _check_originator(
        self, account: str, envelope: Any, fields: list[tuple[str, bytes]]
    ) -> tuple[str, str | None]:
        """(the From address that names the signing domain, None), or ("",
        the refusal) for a message whose From: or Sender: is not the
        account's (see the module docstring)."""
        froms = [raw for name, raw in fields if name == "from"]
        senders = [raw for name, raw in fields if name == "sender"]
        if len(froms) > 1:
            self._refused(account, "several From:", None, detail=str(len(froms)))
            return "", MANY_FROM
        if len(senders) > 1:
            self._refused(account, "several Sender:", None, detail=str(len(senders)))
            return "", MANY_SENDER
        try:
            mailboxes = parse_mailbox_list(froms[0]) if froms else []
            sender = parse_mailbox_list(senders[0]) if senders else []
        except AddressSyntaxError as exc:
            self._refused(account, "From: syntax", None, detail=str(exc))
            return "", BAD_FROM
        if senders and len(sender) != 1:
            self._refused(account, "Sender: not one mailbox", None, detail=str(len(sender)))
            return "", BAD_SENDER
        for mailbox, refusal in [(m, FROM_NOT_OWNER) for m in mailboxes] + [
            (m, SENDER_NOT_OWNER) for m in sender
        ]:
            if not self.owns(account, mailbox.address):
                self._refused(account, "From: not owned", mailbox.address)
                return "", f"{refusal}: <{_header_safe(mailbox.address)}>"
            for text in mailbox.texts:
                for shown in _ADDRESS_IN_TEXT.findall(decode_rfc2047(text)):
                    if not self.owns(account, shown):
                        self._refused(account, "display name not owned", shown)
                        return "", f"{NAME_NOT_OWNER}: <{_header_safe(shown)}>"
        return (mailboxes[0].address if mailboxes else str(envelope.mail_from)), None

    def _refused(self, account: str, reason: str, value: object, detail: str = "") -> None:
        fields = {} if value is None else {"header_from": _header_safe(str(value))}
        if detail:
            fields["detail"] = detail
        log_event(log, "submission_refused", logging.WARNING, user=account, **fields, reason=reason)

    def _received(
        self, server: Any, session: Any, envelope: Any, transaction: Transaction
    ) -> bytes:
        # rfc3848:4 — ESMTPSA: ESMTP with STARTTLS/TLS and AUTH.
        protocol = "UTF8SMTPSA" if envelope.smtp_utf8 else "ESMTPSA"
        if not server.tls_active:
            protocol = protocol.replace("SA", "A")
        if self.strip_client_ip:
            first = "Received: by"
        else:
            helo = _header_safe(session.host_name or "unknown")
            first = f"Received: from {helo} ([{_peer(session)}])\r\n\tby"
        lines = [f"{first} {self.hostname} (estafeta) with {protocol} id {transaction.queue_id}"]
        tls = server.tls_info()
        if tls:
            lines.append(f"\t(using {tls})")
        lines[-1] += ";"
        lines.append(f"\t{email.utils.formatdate(localtime=True)}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
