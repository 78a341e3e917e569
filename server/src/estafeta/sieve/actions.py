"""What a Sieve run decided: the actions, as immutable values with a JSON form.

``run`` returns them in the order the script executed them, deduplicated
(rfc5228:2.10.3: never the same mailbox twice), with the implicit keep
(rfc5228:2.10.2) listed as a ``Keep`` like any other: the list is exactly
what a delivery does.  ``to_json()`` is what ``estafeta sieve test --json``
prints (the shapes are fixed in the design notes of issue 15):

    {"action": "keep", "mailbox": "INBOX", "flags": ["\\\\Seen"]}
    {"action": "fileinto", "mailbox": "Lists/dev", "flags": [], "copy": false}
    {"action": "redirect", "address": "a@b.example", "copy": false}
    {"action": "reject", "reason": "..."}     {"action": "ereject", "reason": "..."}
    {"action": "discard"}
    {"action": "vacation", "to": "sender@x.example", "subject": "..."}

``fileinto`` adds ``"create": true`` (rfc5490:3.2) only when it was asked for.
Mailbox names are IMAP names (UTF-8, "/" separates levels); flags are IMAP
flags (system flags spelled as rfc3501 does, keywords as the script did).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INBOX = "INBOX"


@dataclass(frozen=True, slots=True)
class Keep:
    """rfc5228:4.3 ``keep`` (and the implicit keep): the account's INBOX."""

    flags: tuple[str, ...] = ()

    @property
    def mailbox(self) -> str:
        return INBOX

    def to_json(self) -> dict[str, Any]:
        return {"action": "keep", "mailbox": INBOX, "flags": list(self.flags)}


@dataclass(frozen=True, slots=True)
class FileInto:
    """rfc5228:4.1 ``fileinto``; ``copy`` (rfc3894) did not cancel the
    implicit keep; ``create`` (rfc5490:3.2) creates a missing mailbox."""

    mailbox: str
    flags: tuple[str, ...] = ()
    copy: bool = False
    create: bool = False
    special_use: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": "fileinto",
            "mailbox": self.mailbox,
            "flags": list(self.flags),
            "copy": self.copy,
        }
        if self.create:
            out["create"] = True
        if self.special_use is not None:
            out["special_use"] = self.special_use
        return out


@dataclass(frozen=True, slots=True)
class Redirect:
    """rfc5228:4.2 ``redirect`` to ``address`` (a bare addr-spec)."""

    address: str
    copy: bool = False
    list_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"action": "redirect", "address": self.address, "copy": self.copy}


@dataclass(frozen=True, slots=True)
class Reject:
    """rfc5429:2.2 ``reject``: refuse, preferably with an MDN-like report."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"action": "reject", "reason": self.reason}


@dataclass(frozen=True, slots=True)
class EReject:
    """rfc5429:2.1 ``ereject``: refuse, preferably at the SMTP level."""

    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"action": "ereject", "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Discard:
    """rfc5228:4.4 ``discard``: listed only when nothing else takes the message."""

    def to_json(self) -> dict[str, Any]:
        return {"action": "discard"}


@dataclass(frozen=True, slots=True)
class Vacation:
    """rfc5230 ``vacation``: a reply to ``to`` (the envelope sender).

    Every "do not reply" rule that depends on the message alone has been
    applied already; the "once per ``seconds`` per sender" rule is the
    delivery layer's, keyed by account, ``handle`` and ``to``.  ``handle`` is
    the script's ``:handle`` or, without one, a digest of the unexpanded
    ``:subject``, ``:from``, ``:mime`` and reason (rfc5230:4.2).
    ``body`` is the reason: text, or a whole MIME entity when ``mime``.
    ``from_`` is the script's ``:from`` when it is a valid mailbox, else "".
    """

    to: str
    subject: str
    body: str
    from_: str = ""
    mime: bool = False
    handle: str = ""
    seconds: float = 7 * 86400.0
    addresses: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"action": "vacation", "to": self.to, "subject": self.subject}


Action = Keep | FileInto | Redirect | Reject | EReject | Discard | Vacation
