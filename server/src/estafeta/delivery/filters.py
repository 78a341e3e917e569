"""The filter chain: what becomes of a message for one account.

A filter looks at one message for one account (an ``Item``) and the actions
decided so far, and returns the actions that replace them. The chain starts
from ``[Keep()]`` (the INBOX) and runs the filters in order:

1. ``DmarcQuarantine``: a message whose DMARC policy says ``quarantine``
   (rfc7489:6.3) is kept in Junk instead of the INBOX;
2. ``SpamFilter`` (delivery/spam.py): the learning filter, rspamd's and the
   URL lists' verdicts: spam is kept in Junk, with one X-Spam-* header set;
3. ``SieveFilter``: the operator's global scripts and the user's active
   script (rfc5228), whose implicit keep goes where the steps before said,
   and whose ``spamtest`` (rfc5235) sees step 2's score.

The verdicts are a closed set, whatever filter made them: ``Keep`` (into a
mailbox, with flags), ``Redirect``, ``Reject``, ``Discard`` and ``Reply`` (a
vacation answer). ``LocalDelivery`` carries them out; no filter does IO
towards the store or the queue itself, so a filter can never lose mail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from estafeta import sieve
from estafeta.log import log_event
from estafeta.message import Summary
from estafeta.policy.analyze import Analysis
from estafeta.sieve import actions as sieve_actions
from estafeta.sieve.memory import Memory

log = logging.getLogger("estafeta.delivery")

INBOX = "INBOX"
JUNK = "Junk"


@dataclass(frozen=True)
class Keep:
    """Store into ``mailbox`` with ``flags``; ``create``: make it if missing."""

    mailbox: str = INBOX
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(frozen=True)
class Redirect:
    address: str


@dataclass(frozen=True)
class Reject:
    """Refuse the message (rfc5429): in the SMTP reply when it can be, else a DSN."""

    reason: str
    protocol: bool = False  # ereject: an SMTP-level refusal is preferred


@dataclass(frozen=True)
class Discard:
    pass


@dataclass(frozen=True)
class Reply:
    """An automatic answer (rfc5230 vacation), subject to the per-sender memory."""

    to: str
    subject: str
    body: str
    from_: str = ""
    mime: bool = False
    handle: str = ""
    seconds: float = 7 * 86400.0


Action = Keep | Redirect | Reject | Discard | Reply


@dataclass
class Item:
    """One message for one account, as the filters see it."""

    account: str
    sender: str  # the envelope sender, "" for the null sender
    recipient: str  # the RCPT address that led to this account
    message: bytes  # with our trace headers, without Return-Path
    analysis: Analysis | None = None
    auth: str = ""  # the authenticated submitter, if any
    client_ip: str = ""
    # The MX's per-message spam checks (delivery.spam.Scan), None for other
    # origins; the spam filter's score for Sieve's spamtest (rfc5235), 0..1.
    scan: object | None = None
    spam_score: float | None = None
    # ``message`` and its Summary, when a filter knows them (the spam filter
    # does, from its own parse); only used while ``message`` is that very
    # object, so a filter that changes the message need not care.
    parsed: tuple[bytes, Summary] | None = None
    # Filled by filters for LocalDelivery: duplicate records to write after
    # a successful delivery (rfc7352), and errors to log for the user.
    marks: list[tuple[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Set by filters that take the decision out of the user's hands (the log).
    notes: list[str] = field(default_factory=list)


class Filter(Protocol):
    name: str

    async def apply(self, item: Item, actions: Sequence[Action]) -> Sequence[Action]: ...


def default_keep(actions: Sequence[Action]) -> Keep:
    """The keep the chain has so far (where an implicit keep goes)."""
    for action in actions:
        if isinstance(action, Keep):
            return action
    return Keep()


class DmarcQuarantine:
    """rfc7489:6.3 ``p=quarantine`` failed: the message goes to Junk."""

    name = "dmarc"

    async def apply(self, item: Item, actions: Sequence[Action]) -> Sequence[Action]:
        if item.analysis is None or not item.analysis.junk:
            return actions
        item.notes.append("dmarc quarantine")
        return [
            Keep(JUNK, a.flags) if isinstance(a, Keep) and a.mailbox == INBOX else a
            for a in actions
        ]


# Loads the compiled scripts to run for an account, in order: the global
# "before" scripts, the user's active script, the global "after" scripts.
ScriptsFor = Callable[[str], Sequence[sieve.Compiled]]
Includes = Callable[[str, str, str], "sieve.Compiled | None"]  # (account, location, name)


# Messages up to this size may have their rules run on the event loop
# (reading their header is part of the run).
INLINE_MESSAGE = 256 * 1024


class SieveFilter:
    """The user's rules (rfc5228), under ``limits``.

    Most scripts are a few dozen rules on header fields and the envelope:
    tens of microseconds, less than handing the run to a worker thread and
    back costs.  Those run on the event loop, within the small inline budget
    of ``sieve.run(inline=True)`` (about a millisecond); a script that needs
    IO (``sieve.inline_safe``), a large message, or a run that goes past the
    budget runs (again, from the start) in a worker thread."""

    name = "sieve"

    def __init__(
        self,
        *,
        scripts_for: ScriptsFor,
        limits: sieve.Limits,
        memory: Memory,
        hostname: str,
        addresses_of: Callable[[str], Sequence[str]],
        includes: Includes | None = None,
        mailbox_exists: Callable[[str, str], bool] | None = None,
        remote_scripts: bool = False,
    ) -> None:
        self.scripts_for = scripts_for
        # The cluster's scripts are a database query away: never on the loop.
        self.remote_scripts = remote_scripts
        self.limits = limits
        self.memory = memory
        self.hostname = hostname
        self.addresses_of = addresses_of
        self.includes = includes
        self.mailbox_exists = mailbox_exists

    async def apply(self, item: Item, actions: Sequence[Action]) -> Sequence[Action]:
        # Finding the scripts is a stat (cached compile): no thread for
        # the accounts that have none.
        if self.remote_scripts:
            scripts = await asyncio.to_thread(self.scripts_for, item.account)
        else:
            scripts = self.scripts_for(item.account)
        if not scripts:
            return actions
        if len(item.message) <= INLINE_MESSAGE and sieve.inline_safe(scripts):
            try:
                return self._run(scripts, item, actions, inline=True)
            except sieve.NeedsWorker:
                pass  # nothing was decided: the full run follows
        return await asyncio.to_thread(self._run, scripts, item, actions)

    def _run(
        self,
        scripts: Sequence[sieve.Compiled],
        item: Item,
        actions: Sequence[Action],
        inline: bool = False,
    ) -> Sequence[Action]:
        account = item.account

        def seen(key: str, seconds: float) -> bool:
            return self.memory.seen(account, "duplicate:" + key, seconds)

        exists = self.mailbox_exists

        def load_include(location: str, name: str) -> sieve.Compiled | None:
            if self.includes is None:
                return None
            return self.includes(account, location, name)

        context = sieve.Context(
            message=item.message,
            envelope=sieve.Envelope(sender=item.sender, recipient=item.recipient, auth=item.auth),
            account=account,
            addresses=_Lazy(lambda: self.addresses_of(account)),
            now=_local_now,  # the local zone: "currentdate" without :zone
            environment={
                "domain": account.rsplit("@", 1)[-1],
                "host": self.hostname,
                "location": "MDA",
                "phase": "during",
                "name": "estafeta",
                "remote-ip": item.client_ip,
            },
            seen=seen,
            load_include=load_include,
            mailbox_exists=None if exists is None else (lambda name: exists(account, name)),
            spam_score=item.spam_score,
        )
        started = time.monotonic()
        result = sieve.run(scripts, context, self.limits, inline=inline)
        if result.errors:
            item.errors.extend(result.errors)
            log_event(
                log,
                "sieve_error",
                logging.WARNING,
                account=account,
                errors=result.errors,
                result="implicit keep",
            )
        if result.message is not None:
            item.message = result.message
        item.marks.extend(result.duplicate_marks)
        keep = default_keep(actions)
        if len(result.actions) == 1 and result.actions[0] == _IMPLICIT_KEEP and not keep.create:
            return [keep]  # the common end: the keep the chain had (what _translate makes)
        verdict: list[Action] = []
        for action in result.actions:
            verdict.append(_translate(action, keep))
        if log.isEnabledFor(logging.DEBUG):
            log_event(
                log,
                "sieve",
                logging.DEBUG,
                account=account,
                actions=[a.to_json() for a in result.actions],
                ms=round((time.monotonic() - started) * 1000, 2),
                inline=inline,
            )
        return verdict


_IMPLICIT_KEEP = sieve_actions.Keep()


def _local_now() -> datetime:
    return datetime.now().astimezone()


class _Lazy(Sequence[str]):
    """The account's addresses, looked up only when a rule asks (vacation):
    reading every alias for every delivery would cost more than the rules."""

    def __init__(self, load: Callable[[], Sequence[str]]) -> None:
        self._load = load
        self._items: Sequence[str] | None = None

    def _get(self) -> Sequence[str]:
        if self._items is None:
            self._items = list(self._load())
        return self._items

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())


def _translate(action: sieve_actions.Action, keep: Keep) -> Action:
    """A Sieve action as a delivery verdict; the implicit keep and ``keep``
    go where the chain's keep was going (Junk after a DMARC quarantine)."""
    if isinstance(action, sieve_actions.Keep):
        return Keep(keep.mailbox, _union(keep.flags, action.flags))
    if isinstance(action, sieve_actions.FileInto):
        return Keep(action.mailbox, tuple(action.flags), create=action.create)
    if isinstance(action, sieve_actions.Redirect):
        return Redirect(action.address)
    if isinstance(action, sieve_actions.Reject):
        return Reject(action.reason)
    if isinstance(action, sieve_actions.EReject):
        return Reject(action.reason, protocol=True)
    if isinstance(action, sieve_actions.Discard):
        return Discard()
    if isinstance(action, sieve_actions.Vacation):
        return Reply(
            to=action.to,
            subject=action.subject,
            body=action.body,
            from_=action.from_,
            mime=action.mime,
            handle=action.handle,
            seconds=action.seconds,
        )
    raise TypeError(f"unknown Sieve action {action!r}")


def _union(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for flag in (*first, *second):
        seen.setdefault(flag.lower(), flag)
    return tuple(seen.values())
