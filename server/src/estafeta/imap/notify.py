"""NOTIFY (rfc5465): which events a session is told of, for which
mailboxes, and what changed in a mailbox that is not selected. Pure state
and functions, no IO; the session reads the index and sends the responses
(estafeta.imap.session ``cmd_notify``, ``notify_poll``).

Supported events (rfc5465:5): MessageNew (with FETCH items for the
selected mailbox), MessageExpunge, FlagChange, MailboxName and
SubscriptionChange. AnnotationChange, MailboxMetadataChange and
ServerMetadataChange are refused with NO [BADEVENT] (rfc5465:3.1): this
server has no ANNOTATE, and METADATA changes are not tracked.

Bounds: at most ``MAX_GROUPS`` event groups and ``MAX_NAMES`` mailbox
names in all (the parser's, a BAD past them); the work of a change is one
read of the account's mailbox rows and one count per watched mailbox
(bounded by the account's mailbox limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from estafeta.imap.types import FetchAtt

__all__ = [
    "MAX_GROUPS",
    "MAX_NAMES",
    "SUPPORTED",
    "BoxState",
    "Group",
    "NotifyError",
    "Spec",
    "changed_items",
    "initial_items",
]

MAX_GROUPS = 32
MAX_NAMES = 1000
MESSAGE_EVENTS = frozenset({"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE", "ANNOTATIONCHANGE"})
# rfc5465:8 event names as this server spells them in BADEVENT.
SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_SUPPORTED = frozenset(name.upper() for name in SUPPORTED)
SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})


class NotifyError(ValueError):
    """A NOTIFY SET that is refused: ``bad`` a BAD (rfc5465:5, 6.1), else
    NO [BADEVENT] (rfc5465:3.1)."""

    def __init__(self, text: str, *, bad: bool) -> None:
        super().__init__(text)
        self.bad = bad


@dataclass(frozen=True)
class Group:
    """rfc5465:8 event-group: the filter (SELECTED, SELECTED-DELAYED,
    INBOXES, PERSONAL, SUBSCRIBED, SUBTREE, MAILBOXES), its mailbox names
    (SUBTREE, MAILBOXES), the events (upper case; none for NONE) and
    MessageNew's FETCH items."""

    filter: str
    names: tuple[str, ...] = ()
    events: frozenset[str] = frozenset()
    fetch: tuple[FetchAtt, ...] = ()


@dataclass(frozen=True)
class BoxState:
    """What a STATUS notification tells of a mailbox (rfc5465:5.1-5.3)."""

    uidvalidity: int
    messages: int
    uidnext: int
    highestmodseq: int


def _check(group: Group) -> None:
    events = group.events
    unknown = sorted(events - _SUPPORTED)
    if unknown:
        raise NotifyError(f"Unsupported event {unknown[0][:40]}", bad=False)
    # rfc5465:5 asks clients to name MessageNew and MessageExpunge together
    # (and both with FlagChange), the server to answer BAD otherwise. As the
    # peer (Dovecot, and its imaptest notify script), each is taken alone:
    # a client that follows the rule is not affected.
    if group.filter in SELECTED_FILTERS and events - MESSAGE_EVENTS:
        raise NotifyError("Only message events go with SELECTED", bad=True)  # rfc5465:6.1
    if group.fetch and group.filter not in SELECTED_FILTERS:
        # rfc5465:5.2 the FETCH items are for new messages of the selected mailbox.
        raise NotifyError("MessageNew FETCH items go with SELECTED", bad=True)


class Spec:
    """A NOTIFY SET (rfc5465:3.1), checked: ``selected`` the group of the
    selected mailbox (None: no message events for it, rfc5465:3.1), and
    the groups of the other mailboxes, first match first."""

    def __init__(self, groups: Iterable[Group], *, status: bool) -> None:
        self.status = status
        self.selected: Group | None = None
        self.others: list[Group] = []
        for group in groups:
            _check(group)
            if group.filter in SELECTED_FILTERS:
                if self.selected is not None:
                    raise NotifyError("SELECTED given twice", bad=True)  # rfc5465:6.1
                self.selected = group
            else:
                self.others.append(group)

    @property
    def immediate_expunge(self) -> bool:
        """rfc5465:6.1 SELECTED: expunges are told at once; SELECTED-DELAYED:
        at the next command that allows them."""
        return self.selected is not None and self.selected.filter == "SELECTED"

    def selected_events(self) -> frozenset[str]:
        return self.selected.events if self.selected is not None else frozenset()

    def events_for(self, name: str, subscribed: set[str]) -> frozenset[str]:
        """The events asked for mailbox ``name`` (not the selected one): the
        first group whose filter takes it (rfc5465:6)."""
        for group in self.others:
            if _matches(group, name, subscribed):
                return group.events
        return frozenset()

    def mailbox_events(self) -> frozenset[str]:
        """MailboxName / SubscriptionChange asked for any mailbox."""
        out: set[str] = set()
        for group in self.others:
            out |= group.events & {"MAILBOXNAME", "SUBSCRIPTIONCHANGE"}
        return frozenset(out)

    def mailbox_event_for(self, event: str, name: str, subscribed: set[str]) -> bool:
        return event in self.events_for(name, subscribed)


def _matches(group: Group, name: str, subscribed: set[str]) -> bool:
    kind = group.filter
    if kind == "PERSONAL":  # rfc5465:6.2 every mailbox of the account
        return True
    if kind == "INBOXES":  # rfc5465:6.3 where new mail is delivered: INBOX
        return name == "INBOX"
    if kind == "SUBSCRIBED":  # rfc5465:6.4
        return name in subscribed
    if kind == "SUBTREE":  # rfc5465:6.5 the mailboxes and all below them
        return any(name == top or name.startswith(top + "/") for top in group.names)
    return name in group.names  # rfc5465:6.6 MAILBOXES: no wildcards


def initial_items(events: frozenset[str], condstore: bool) -> list[str]:
    """rfc5465:3.1 the STATUS items of NOTIFY SET STATUS: MESSAGES, UIDNEXT
    and UIDVALIDITY for MessageNew, MESSAGES for MessageExpunge,
    UIDVALIDITY and HIGHESTMODSEQ for FlagChange (with CONDSTORE)."""
    items: list[str] = []
    if "MESSAGEEXPUNGE" in events or "MESSAGENEW" in events:
        items.append("MESSAGES")
    if "MESSAGENEW" in events:
        items += ["UIDNEXT", "UIDVALIDITY"]
    if "FLAGCHANGE" in events:
        if "UIDVALIDITY" not in items:
            items.append("UIDVALIDITY")
        items.append("HIGHESTMODSEQ")
    elif condstore and items:
        items.append("HIGHESTMODSEQ")
    return items


def changed_items(
    old: BoxState | None, new: BoxState, events: frozenset[str], condstore: bool
) -> list[str]:
    """The STATUS items to send for a mailbox that is not selected, after it
    went from ``old`` to ``new`` (rfc5465:5.1-5.3); none when nothing the
    client asked about changed."""
    if old is None or old.uidvalidity != new.uidvalidity:
        # A mailbox made again: everything (rfc5465:5.1 UIDVALIDITY changes are told).
        return initial_items(events, condstore) if events & MESSAGE_EVENTS else []
    arrived = new.uidnext > old.uidnext
    gone = new.messages < old.messages + (new.uidnext - old.uidnext)
    flagged = new.highestmodseq > old.highestmodseq and not (arrived or gone)
    items: list[str] = []
    if (arrived and "MESSAGENEW" in events) or (gone and "MESSAGEEXPUNGE" in events):
        items = ["MESSAGES", "UIDNEXT"]  # rfc5465:5.2, 5.3 STATUS (UIDNEXT MESSAGES)
        if condstore:
            items.append("HIGHESTMODSEQ")
    elif flagged and "FLAGCHANGE" in events:
        items = ["UIDVALIDITY", "HIGHESTMODSEQ"]  # rfc5465:5.1 at least these
    return items
