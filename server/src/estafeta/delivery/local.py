"""Local delivery: the only path into the store for new mail.

Every accepted message — from the MX, from submission, from the queue
(DSNs, deferred deliveries, redirects to local addresses) — comes through
``LocalDelivery.deliver``:

1. its recipients are split by ``Router`` into accounts here and addresses
   elsewhere (alias forwards, SRS bounces);
2. for each account the filter chain (``filters``: DMARC quarantine, Sieve)
   decides the actions: keep into mailboxes with flags, redirect, reject,
   discard, reply;
3. the store writes run first, one job per account with the account's quota
   (``Delivery.quota``, checked in the store's writer thread, so nothing is
   half-written); a mailbox that cannot take the message (missing, not
   ``:create``d) falls back to the INBOX, so a rule can never lose mail;
4. then what goes out is queued durably: remote recipients (SRS + ARC from
   the MX, as is from submission), redirects, vacation replies, rejection
   notices;
5. then the duplicate and vacation memory is written.

Only after all of that does the caller answer ``250``. Any failure before
is a temporary failure for the whole message (the sender retries; a
duplicate is better than a loss). Quota: an account that is already over
its quota is refused at RCPT (``check_recipient``); a message that would
take every one of its local accounts over gets ``overquota`` (452 4.2.2, or
552 5.2.2 with ``[delivery] over_quota = "reject"``). When some accounts
took it and others are full, the full ones get it through the queue, which
retries like any deferred delivery and bounces after ``[queue] lifetime``.

DMARC aggregate reports and TLS reports (docs/dmarc-reports.md,
docs/tls-reports.md). When a RCPT is ``[reports] dmarc_address`` or
``tlsrpt_address``, the message goes to the report intake
(delivery/reports.py, delivery/tlsrpt.py) first: a valid report is
stored, and the copies of the accounts (or shared mailboxes) it reached
only through that address become a ``Discard``, before any filter runs
(which intake judges it: the one whose address it was sent to);
other recipients are served as usual, and a message that is no valid report
goes through the chain like any mail.

Shared mailboxes (docs/shared-mailboxes.md). An address the administrator
gave a shared mailbox resolves to it (``Router.shared_mailboxes``); the
message is one more store job in step 3, through the same ``Store.deliver``
(so the same crash ordering: the 250 comes after the commit), into the
shared store's mailbox, which notifies every session that has it selected
or idles on it. Only the message-level filters run for it (DMARC
quarantine, the spam verdicts), never Sieve: the shared store is no one's.
Junk goes into the mailbox's child ``Junk`` when there is one, else into
the mailbox itself, flagged ``$Junk`` either way. No quota applies. On
submission the authenticated sender needs the ``p`` right on the mailbox
(rfc4314:2.1 "post"), checked at RCPT (``check_recipient(submitter=)``);
from the MX and the queue the administrator's address is the permission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from estafeta.address import split_address
from estafeta.auth.sharedaddresses import target as shared_target
from estafeta.delivery import responses
from estafeta.delivery.filters import (
    INBOX,
    JUNK,
    Action,
    Discard,
    Filter,
    Item,
    Keep,
    Redirect,
    Reject,
    Reply,
    SieveFilter,
)
from estafeta.delivery.forward import Forwarder
from estafeta.delivery.route import Router
from estafeta.log import log_event
from estafeta.message import Summary, summarize, with_fields
from estafeta.message.structure import header_fields
from estafeta.policy.analyze import Analysis
from estafeta.policy.signer import Signer
from estafeta.queue.delivery import Result
from estafeta.queue.store import QueueBackend
from estafeta.sieve.memory import Memory
from estafeta.store import Delivery, OverQuota, Store, StoreError, shared
from estafeta.store.reader import IndexReader

log = logging.getLogger("estafeta.delivery")

# rfc9051:2.3.2 / IANA IMAP keywords: the client-visible mark of junk, on
# what goes into a shared mailbox's Junk (or the mailbox, when it has none).
JUNK_KEYWORD = "$Junk"
# rfc4314:2.1 "p" - post: who may send to a shared mailbox's address on submission.
POST = "p"

Origin = Literal["mx", "submission", "queue"]


class Intake(Protocol):
    """A report intake (delivery/reports.py, delivery/tlsrpt.py): a message
    to an address it ``wants`` is offered to it first, with the RCPT
    addresses it wants (``to``); True: consumed."""

    def wants(self, recipient: str) -> bool: ...

    async def take(self, message: bytes, queue_id: str = "", to: Sequence[str] = ()) -> bool: ...


@dataclass(frozen=True)
class Recipient:
    """One accepted RCPT: the address as given and where it leads."""

    address: str
    targets: tuple[str, ...]
    srs: bool = False  # a reversed SRS address: a bounce of mail we forwarded


@dataclass(frozen=True)
class Envelope:
    sender: str  # the reverse-path, "" for the null sender
    recipients: tuple[Recipient, ...]
    queue_id: str = ""
    origin: Origin = "mx"
    client_ip: str = ""
    auth: str = ""  # the authenticated submitter (submission)


@dataclass
class Outcome:
    """What ``deliver`` did; the SMTP layer turns it into a reply."""

    status: Literal["delivered", "tempfail", "overquota", "rejected"] = "delivered"
    reason: str = ""
    permanent: bool = False  # overquota: 552 5.2.2 instead of 452 4.2.2
    folders: dict[str, list[str]] = field(default_factory=dict)
    forwarded: list[str] = field(default_factory=list)
    srs: str = ""
    deferred: list[str] = field(default_factory=list)  # over quota, queued for retry
    rejected: list[str] = field(default_factory=list)  # by a rule, sender notified
    discarded: list[str] = field(default_factory=list)
    redirected: list[str] = field(default_factory=list)
    replied: list[str] = field(default_factory=list)

    def log_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"mailboxes": list(self.folders)}
        folders = sorted({f for boxes in self.folders.values() for f in boxes})
        if folders:
            fields["folder"] = folders[0] if len(folders) == 1 else folders
        for name in ("forwarded", "deferred", "rejected", "discarded", "redirected", "replied"):
            value = getattr(self, name)
            if value:
                fields[name] = value
        if self.forwarded:
            fields["srs"] = self.srs or "<>"
        return fields


@dataclass(frozen=True)
class RecipientCheck:
    """``check_recipient``: the targets, or why the address is refused now."""

    targets: tuple[str, ...] = ()
    srs: bool = False
    refusal: Literal["", "no_such_user", "relay", "over_quota", "not_allowed"] = ""
    reason: str = ""


@dataclass
class _Plan:
    """One account's share of a message: the filters' verdict and its result."""

    item: Item
    actions: Sequence[Action]
    stored: list[str] = field(default_factory=list)
    over_quota: bool = False
    # The shared mailbox this share goes to ("": the account ``item.account``).
    shared: str = ""


class LocalDelivery:
    def __init__(
        self,
        *,
        hostname: str,
        store: Store,
        router: Router,
        queue: QueueBackend,
        wake_queue: Callable[[], None],
        forwarder: Forwarder,
        signer: Signer,
        memory: Memory,
        filters: Sequence[Filter] = (),
        quota_for: Callable[[str], int | None] = lambda account: None,
        over_quota: str = "defer",
        intake: Intake | None = None,
    ) -> None:
        self.hostname = hostname
        self.store = store
        self.router = router
        self.queue = queue
        self.wake_queue = wake_queue
        self.forwarder = forwarder
        self.signer = signer
        self.memory = memory
        self.filters = list(filters)
        # Shared mailboxes: the message-level filters, no Sieve (no one's rules).
        self.shared_filters = [f for f in self.filters if not isinstance(f, SieveFilter)]
        self.quota_for = quota_for
        self.over_quota = over_quota
        # [reports] dmarc_address, tlsrpt_address: reports stored, not
        # delivered (delivery/reports.py, delivery/tlsrpt.py).
        self.intake = intake
        self._shared_index: IndexReader | None = None

    # -- questions the protocols ask ----------------------------------------

    def handles(self, domain: str) -> bool:
        """Whether mail for ``domain`` is delivered here (the queue asks)."""
        return self.router.is_local_domain(domain)

    async def check_recipient(self, address: str, submitter: str = "") -> RecipientCheck:
        """Before a RCPT is accepted: where it leads, and whether its accounts
        can take mail now (rfc3463:3.3 X.2.2 — an account already over its
        quota is refused with a temporary error, and the sender retries).
        ``submitter``: the authenticated account on submission, which needs
        the ``p`` right on each shared mailbox the address leads to
        (rfc4314:2.1; rfc3463:3.8 X.7.1 when it lacks it)."""
        resolution = self.router.resolve(address)
        if not resolution.found:
            refusal: Literal["no_such_user", "relay"] = (
                "relay" if resolution.reason == "relay denied" else "no_such_user"
            )
            return RecipientCheck(refusal=refusal, reason=resolution.reason)
        boxes = self.router.shared_mailboxes(resolution.targets)
        if submitter:
            for name in boxes:
                if POST not in await self.shared_rights(name, submitter):
                    return RecipientCheck(
                        refusal="not_allowed",
                        reason=f"{submitter} may not post to Shared/{name} (no 'p' right)",
                    )
        local, remote = self.router.split(resolution.targets)
        if local and not remote and not boxes:
            full = 0
            for account in local:
                quota = self.quota_for(account)
                if quota is not None and await self.store.usage(account) >= quota:
                    full += 1
            if full == len(local):
                return RecipientCheck(
                    resolution.targets, resolution.srs, "over_quota", "mailbox full"
                )
        return RecipientCheck(resolution.targets, resolution.srs)

    # -- delivery -------------------------------------------------------------

    async def deliver(
        self,
        envelope: Envelope,
        message: bytes,
        analysis: Analysis | None = None,
        scan: object | None = None,
    ) -> Outcome:
        """Carry out everything an accepted message needs (see the module
        docstring). ``message`` carries our trace headers, no Return-Path."""
        outcome = Outcome()
        first_rcpt: dict[str, str] = {}
        first_shared: dict[str, str] = {}  # shared mailbox -> the RCPT that led there
        # Local accounts and shared mailboxes reached by other RCPTs than the
        # report intake's address: they get the message even if it is a report.
        not_only_reports: set[str] = set()
        remote_by_domain: dict[str, list[str]] = {}
        for rcpt in envelope.recipients:
            local, remote = self.router.split(rcpt.targets)
            boxes = self.router.shared_mailboxes(rcpt.targets)
            for account in local:
                first_rcpt.setdefault(account, rcpt.address)
            for name in boxes:
                first_shared.setdefault(name, rcpt.address)
            if self.intake is None or not self.intake.wants(rcpt.address):
                not_only_reports.update(local)
                not_only_reports.update(shared_target(name) for name in boxes)
            if remote:
                domain = _domain(rcpt.address) or self.hostname
                remote_by_domain.setdefault(domain, []).extend(remote)

        def item(account: str, rcpt: str) -> Item:
            return Item(
                account=account,
                sender=envelope.sender,
                recipient=rcpt,
                message=message,
                analysis=analysis,
                auth=envelope.auth,
                client_ip=envelope.client_ip,
                scan=scan,
            )

        # docs/dmarc-reports.md: a report to the intake's address is stored
        # and consumed; the copies of those who got it only that way are not kept.
        report = False
        if self.intake is not None:
            reached = set(first_rcpt) | {shared_target(name) for name in first_shared}
            if reached - not_only_reports:
                to = [r.address for r in envelope.recipients if self.intake.wants(r.address)]
                report = await self.intake.take(message, envelope.queue_id, to)

        async def consumed(share: Item) -> _Plan:
            share.notes.append("report stored")
            return _Plan(share, [Discard()])

        try:
            plans = list(
                await asyncio.gather(
                    *(
                        consumed(item(account, rcpt))
                        if report and account not in not_only_reports
                        else self._filter(item(account, rcpt))
                        for account, rcpt in first_rcpt.items()
                    ),
                    *(
                        consumed(item(shared.OWNER, rcpt))
                        if report and shared_target(name) not in not_only_reports
                        else self._filter_shared(name, item(shared.OWNER, rcpt))
                        for name, rcpt in first_shared.items()
                    ),
                )
            )
            # rfc5429:2.1 — a refusal goes into the SMTP reply when nothing
            # else happens to the message; otherwise it becomes a DSN.
            refusals = [p for p in plans if any(isinstance(a, Reject) for a in p.actions)]
            if refusals and len(refusals) == len(plans) and not remote_by_domain:
                reject = next(a for a in refusals[0].actions if isinstance(a, Reject))
                outcome.status, outcome.reason = "rejected", reject.reason
                outcome.rejected = [p.item.account for p in refusals]
                return outcome
            await self._store(envelope, plans, outcome)
            if any(p.over_quota for p in plans) and not any(p.stored for p in plans):
                # Nothing has happened yet (the store writes come first):
                # the sender keeps the message and retries (rfc3463:3.3 X.2.2).
                outcome.status, outcome.reason = "overquota", "mailbox full"
                outcome.permanent = self.over_quota == "reject"
                return outcome
            await self._defer_over_quota(envelope, plans, message, outcome)
            await self._send_remote(envelope, remote_by_domain, message, outcome)
            for plan in plans:
                if not plan.over_quota:  # the deferred copy runs its rules again
                    await self._side_effects(envelope, plan, outcome)
        except (StoreError, OSError) as exc:
            outcome.status, outcome.reason = "tempfail", str(exc)
            return outcome
        for plan in plans:
            if plan.over_quota:
                continue
            for key, seconds in plan.item.marks:
                await asyncio.to_thread(
                    self.memory.remember, plan.item.account, "duplicate:" + key, seconds
                )
        return outcome

    async def deliver_queued(
        self, sender: str, recipients: Sequence[str], data: bytes, queue_id: str = ""
    ) -> list[Result]:
        """A queue entry for one of our domains (a DSN, a redirect, a delivery
        deferred for quota): one ``Result`` per recipient, for the runner."""
        results: list[Result] = []
        for address in recipients:
            resolution = self.router.resolve(address)
            if not resolution.found:
                results.append(
                    Result(
                        address, "permanent", "5.1.1", f"550 5.1.1 <{address}>: {resolution.reason}"
                    )
                )
                continue
            envelope = Envelope(
                sender=sender,
                recipients=(Recipient(address, resolution.targets, resolution.srs),),
                queue_id=queue_id,
                origin="queue",
            )
            outcome = await self.deliver(envelope, data)
            results.append(_queue_result(address, outcome))
        return results

    # -- shared mailboxes ---------------------------------------------------------

    async def shared_rights(self, name: str, account: str) -> str:
        """rfc4314:2 the rights of ``account`` on shared mailbox ``name``
        (its entry and anyone's); "" when there is no such mailbox."""
        reader = await self._shared()
        box = reader.mailbox(name)
        return reader.rights(box.id, account) if box is not None else ""

    async def _shared(self) -> IndexReader:
        """The shared store's index, read on the event loop like the IMAP
        sessions read it (Store.shared_reader); opened in a thread once."""
        if self._shared_index is None:
            self._shared_index = await asyncio.to_thread(self.store.shared_reader, shared.OWNER)
        return self._shared_index

    async def _filter_shared(self, name: str, item: Item) -> _Plan:
        """A shared mailbox's share: the message-level filters only (DMARC
        quarantine, the spam verdicts; Sieve is someone's, and the shared
        store is no one's), their keeps turned into the mailbox's own:
        INBOX -> the mailbox, Junk -> its child Junk if it has one, else the
        mailbox, flagged $Junk either way (module docstring)."""
        actions: Sequence[Action] = [Keep()]
        for chain_filter in self.shared_filters:
            actions = await chain_filter.apply(item, actions)
        keeps: list[Action] = []
        for action in actions:
            if not isinstance(action, Keep):
                continue  # the filters above make keeps only
            if action.mailbox == JUNK:
                junk = f"{name}/{JUNK}"
                has_junk = (await self._shared()).mailbox(junk) is not None
                flags = tuple(dict.fromkeys((*action.flags, JUNK_KEYWORD)))
                keeps.append(Keep(junk if has_junk else name, flags))
            else:
                keeps.append(Keep(name, action.flags))
        return _Plan(item, keeps or [Keep(name)], shared=name)

    # -- steps ----------------------------------------------------------------

    async def _filter(self, item: Item) -> _Plan:
        actions: Sequence[Action] = [Keep()]
        for chain_filter in self.filters:
            actions = await chain_filter.apply(item, actions)
        if any(isinstance(a, Redirect) for a in actions) and _redirected_here(item):
            # Loop detection: a copy that went through this account's
            # redirect before carries its Delivered-To (as Postfix marks
            # forwarded mail). Not again: the message is kept instead, so
            # a loop can never lose it.
            log_event(log, "redirect_loop", logging.WARNING, account=item.account)
            rest: list[Action] = [a for a in actions if not isinstance(a, Redirect)]
            if not any(isinstance(a, Keep) for a in rest):
                rest.append(Keep())
            actions = rest
        if item.errors:
            log_event(
                log, "rules_failed", logging.WARNING, account=item.account, errors=item.errors
            )
        return _Plan(item, actions)

    async def _store(self, envelope: Envelope, plans: list[_Plan], outcome: Outcome) -> None:
        """Write every kept copy: one store job per account, run together
        (the writer group-commits them), each with the account's quota."""
        now = time.time()
        return_path = f"Return-Path: <{envelope.sender}>\r\n".encode()
        # One parse per distinct message (editheader may have changed some).
        prepared: dict[bytes, tuple[bytes, Summary]] = {}

        async def prepare(item: Item) -> tuple[bytes, Summary]:
            message = item.message
            found = prepared.get(message)
            if found is None:
                data = return_path + message
                # The spam filter's parse of this very message, when it has
                # one: the Return-Path moves its offsets, nothing else.
                known = item.parsed
                summary = (
                    with_fields(known[1], message, 0, return_path)
                    if known is not None and known[0] is message
                    else None
                )
                if summary is None:
                    summary = await asyncio.to_thread(summarize, data)
                found = prepared[message] = (data, summary)
            return found

        for plan in plans:
            if _merge_keeps(plan.actions):
                await prepare(plan.item)

        async def store_one(plan: _Plan) -> None:
            keeps = _merge_keeps(plan.actions)
            if not keeps:
                return
            data, summary = await prepare(plan.item)
            # The shared store has no quota (docs/shared-mailboxes.md).
            quota = None if plan.shared else self.quota_for(plan.item.account)
            fallback = plan.shared or INBOX
            deliveries = [
                Delivery(
                    plan.item.account,
                    data,
                    summary,
                    keep.mailbox,
                    flags=keep.flags,
                    internal_date=now,
                    quota=quota,
                    create=keep.create,
                )
                for keep in keeps
            ]
            try:
                await self.store.deliver(deliveries)
            except OverQuota:
                plan.over_quota = True
                return
            except StoreError as exc:
                if all(k.mailbox == fallback for k in keeps):
                    raise
                # A rule named a mailbox that cannot take it (deleted, never
                # created): the INBOX, as the implicit keep would (rfc5228:2.10.6);
                # a shared mailbox's Junk deleted meanwhile: the mailbox.
                log_event(
                    log,
                    "fileinto_failed",
                    logging.WARNING,
                    account=plan.item.account,
                    mailboxes=[k.mailbox for k in keeps],
                    error=str(exc),
                    result=fallback,
                )
                try:
                    await self.store.deliver(
                        [
                            Delivery(
                                plan.item.account,
                                data,
                                summary,
                                fallback,
                                flags=keeps[0].flags,
                                internal_date=now,
                                quota=quota,
                            )
                        ]
                    )
                except OverQuota:
                    plan.over_quota = True
                    return
                keeps = [Keep(fallback, keeps[0].flags)]
            plan.stored = [k.mailbox for k in keeps]
            key = shared_target(plan.shared) if plan.shared else plan.item.account
            outcome.folders[key] = plan.stored

        await _gather(store_one(plan) for plan in plans)

    async def _defer_over_quota(
        self, envelope: Envelope, plans: list[_Plan], message: bytes, outcome: Outcome
    ) -> None:
        """Accounts that were full while others took the message: through the
        queue, which retries them (deliver_queued) and bounces after lifetime."""
        full = [p.item.account for p in plans if p.over_quota]
        if not full:
            return
        await asyncio.to_thread(self.queue.enqueue, envelope.sender, full, message)
        self.wake_queue()
        outcome.deferred = full

    async def _send_remote(
        self,
        envelope: Envelope,
        remote_by_domain: dict[str, list[str]],
        message: bytes,
        outcome: Outcome,
    ) -> None:
        if not remote_by_domain:
            return
        if envelope.origin == "submission":
            # Our own user's mail: the sender is ours, no SRS or ARC needed.
            remote = list(dict.fromkeys(a for group in remote_by_domain.values() for a in group))
            await asyncio.to_thread(self.queue.enqueue, envelope.sender, remote, message)
            self.wake_queue()
            outcome.forwarded.extend(remote)
            outcome.srs = envelope.sender
            return
        for domain, remote in remote_by_domain.items():
            # Alias forwards and SRS bounces: SRS sender and an ARC seal
            # in the name of the alias's domain (delivery/forward.py).
            outcome.srs = await self.forwarder.forward(
                sender=envelope.sender,
                recipients=list(dict.fromkeys(remote)),
                message=message,
                domain=domain,
            )
            outcome.forwarded.extend(remote)

    async def _side_effects(self, envelope: Envelope, plan: _Plan, outcome: Outcome) -> None:
        """Redirects, replies and rejection notices of one account's rules."""
        item = plan.item
        for action in plan.actions:
            if isinstance(action, Redirect):
                await self._redirect(envelope, item, action, outcome)
            elif isinstance(action, Reply):
                await self._reply(envelope, item, action, outcome)
            elif isinstance(action, Reject):
                await self._reject(envelope, item, action, outcome)
            elif isinstance(action, Discard) and not plan.stored:
                outcome.discarded.append(item.account)

    async def _redirect(
        self, envelope: Envelope, item: Item, action: Redirect, outcome: Outcome
    ) -> None:
        marker = f"<{item.account}>".encode()
        copy = b"Delivered-To: " + marker + b"\r\n" + item.message
        outcome.srs = await self.forwarder.forward(
            sender=envelope.sender,
            recipients=[action.address],
            message=copy,
            domain=_domain(item.account) or self.hostname,
        )
        outcome.redirected.append(action.address)

    async def _reply(self, envelope: Envelope, item: Item, action: Reply, outcome: Outcome) -> None:
        if not envelope.sender or not action.to:
            return  # rfc5230:4.5 / rfc3834:2 — never to the null sender
        key = f"vacation:{action.handle}:{action.to.lower()}"
        seen = await asyncio.to_thread(self.memory.seen, item.account, key, action.seconds)
        if seen:
            log_event(log, "vacation_suppressed", account=item.account, to=action.to, reason="sent")
            return
        sender = item.account
        if action.from_ and self.router.owns(item.account, _bare(action.from_)):
            sender = _bare(action.from_)
        reply = responses.vacation_reply(
            original=item.message,
            sender=sender,
            to=action.to,
            subject=action.subject,
            body=action.body,
            mime=action.mime,
            hostname=self.hostname,
        )
        signature = await asyncio.to_thread(self.signer.sign, _domain(sender), reply)
        # rfc3834:3.3 / rfc5230:5 — replies go out with the null reverse-path.
        await asyncio.to_thread(self.queue.enqueue, "", [action.to], signature + reply)
        self.wake_queue()
        await asyncio.to_thread(self.memory.remember, item.account, key, action.seconds)
        outcome.replied.append(action.to)

    async def _reject(
        self, envelope: Envelope, item: Item, action: Reject, outcome: Outcome
    ) -> None:
        outcome.rejected.append(item.account)
        if not envelope.sender:
            return  # rfc5429:2.1 — never a notice to the null sender
        notice = responses.rejection(
            original=item.message,
            sender=envelope.sender,
            recipient=item.recipient,
            reason=action.reason,
            hostname=self.hostname,
            queue_id=envelope.queue_id or None,
            arrival=time.time(),
        )
        await asyncio.to_thread(self.queue.enqueue, "", [envelope.sender], notice)
        self.wake_queue()


def _redirected_here(item: Item) -> bool:
    marker = f"<{item.account}>".encode().lower()
    return any(
        name == "delivered-to" and value.strip().lower() == marker
        for name, value in header_fields(item.message)
    )


def _merge_keeps(actions: Sequence[Action]) -> list[Keep]:
    """The store writes of a verdict: one per mailbox (rfc5228:2.10.3 — never
    the same mailbox twice), flags of several keeps to one mailbox joined."""
    merged: dict[str, Keep] = {}
    for action in actions:
        if isinstance(action, Keep):
            earlier = merged.get(action.mailbox)
            if earlier is None:
                merged[action.mailbox] = action
            else:
                flags = tuple(dict.fromkeys((*earlier.flags, *action.flags)))
                merged[action.mailbox] = Keep(
                    action.mailbox, flags, earlier.create or action.create
                )
    return list(merged.values())


def _queue_result(address: str, outcome: Outcome) -> Result:
    if outcome.status == "delivered":
        return Result(address, "sent", "2.0.0", "250 2.0.0 delivered locally")
    if outcome.status == "rejected":
        return Result(address, "permanent", "5.7.1", f"550 5.7.1 {outcome.reason}")
    if outcome.status == "overquota":
        return Result(address, "temporary", "4.2.2", "452 4.2.2 mailbox full")
    return Result(address, "temporary", "4.3.0", f"451 4.3.0 {outcome.reason}")


async def _gather(coroutines: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run together; every one finishes before the first error is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    if not tasks:
        return
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _domain(address: str) -> str:
    try:
        return split_address(address)[1]
    except Exception:
        return address.rpartition("@")[2]


def _bare(address: str) -> str:
    address = address.strip()
    if "<" in address and address.endswith(">"):
        return address[address.rfind("<") + 1 : -1]
    return address
