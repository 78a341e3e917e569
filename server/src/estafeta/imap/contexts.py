"""Updating searches (rfc5267:4.3, CONTEXT=SEARCH): a SEARCH with RETURN
(UPDATE) stays live while its mailbox is selected, and the session tells the
client which messages join or leave its result as flags change, messages
arrive or go. Pure state and responses, no IO; the session evaluates the
search program on the messages that changed (estafeta.imap.session).

Bounds: at most ``MAX_CONTEXTS`` live searches per session (a further one
is refused with NO [NOUPDATE], rfc5267:4.3.1), each holding the UIDs of its
result (at most the mailbox); a refresh re-evaluates only the messages whose
mod-sequence passed the one the search last saw, on the search pool within
SEARCH's budget (a search that runs out is dropped, NO [NOUPDATE] again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from estafeta.imap.search import compress
from estafeta.imap.types import SearchKey

__all__ = [
    "MAX_CONTEXTS",
    "MAX_SORT_CONTEXTS",
    "Context",
    "noupdate",
    "quoted_tag",
    "render_change",
    "render_pairs",
]

MAX_CONTEXTS = 8
"""Live updating searches per session (Dovecot keeps no fixed number; a
client uses one per view it shows)."""
MAX_SORT_CONTEXTS = 2
"""Of which sorted ones (rfc5267:4.3.1: they cost more; each keeps its
result in order, and a message joining it re-reads the mailbox's order)."""


@dataclass(slots=True)
class Context:
    """One updating search: its tag, program, whether it was a UID SEARCH
    (then the updates are UIDs, else sequence numbers: rfc5267:4.3.2), the
    UIDs of its result, and the highest mod-sequence it has seen."""

    tag: str
    key: SearchKey
    uid: bool
    matched: set[int] = field(default_factory=set)
    modseq: int = 0
    # CONTEXT=SORT (rfc5267:4.3.3): the sort criteria, and the result's
    # UIDs in sort order; None for a SEARCH (an unordered result).
    criteria: tuple[tuple[str, bool], ...] | None = None
    order: list[int] = field(default_factory=list)

    def removals(self, uids: Iterable[int]) -> list[tuple[int, int]]:
        """A sorted result loses ``uids``: (position, UID) pairs, each to be
        removed in turn (rfc5267:4.3.4: a pair's position counts the removals
        before it), the last position first so none moves another."""
        where = {uid: i for i, uid in enumerate(self.order)}
        gone = sorted((where[uid] for uid in set(uids) if uid in where), reverse=True)
        pairs = [(i + 1, self.order[i]) for i in gone]
        for i in gone:
            del self.order[i]
        return pairs

    def insertions(self, ordered: Sequence[int]) -> list[tuple[int, int]]:
        """A sorted result gained members (``matched``): with the mailbox's
        order ``ordered`` (every UID, sort order), (position, UID) pairs in
        ascending positions, each inserted in turn (rfc5267:4.3.3)."""
        before = set(self.order)
        self.order = [uid for uid in ordered if uid in self.matched]
        return [(i + 1, uid) for i, uid in enumerate(self.order) if uid not in before]

    def lose(self, uids: Iterable[int]) -> list[int]:
        """The UIDs of ``uids`` that were in the result, now taken out, ascending."""
        lost = sorted(self.matched.intersection(uids))
        self.matched.difference_update(lost)
        return lost

    def change(self, checked: Iterable[int], now: set[int]) -> tuple[list[int], list[int]]:
        """``checked`` (UIDs) were evaluated again and ``now`` of them
        match: (those that joined the result, those that left it), ascending."""
        checked = set(checked)
        added = sorted(now - self.matched)
        removed = sorted(self.matched.intersection(checked) - now)
        self.matched.update(added)
        self.matched.difference_update(removed)
        return added, removed


def quoted_tag(tag: str) -> str:
    """A tag as an IMAP quoted string (rfc9051:9 tag-string = astring)."""
    return '"' + tag.replace("\\", "\\\\").replace('"', '\\"') + '"'


def noupdate(tag: str) -> str:
    """rfc5267:4.3.1 the untagged refusal to keep (or to go on keeping) a
    search up to date, without the "* "."""
    return f"NO [NOUPDATE {quoted_tag(tag)}] The search is no longer updated"


def render_pairs(
    context: Context,
    item: str,
    pairs: list[tuple[int, int]],
    number: Callable[[int], int | None],
) -> str:
    """rfc5267:4.3.3 ADDTO / rfc5267:4.3.4 REMOVEFROM of a sorted result:
    ``(position number position number ...)``, UIDs or sequence numbers."""
    shown = []
    for position, uid in pairs:
        value = uid if context.uid else number(uid)
        if value is not None:
            shown.append(f"{position} {value}")
    uid_part = " UID" if context.uid else ""
    return f"ESEARCH (TAG {quoted_tag(context.tag)}){uid_part} {item} ({' '.join(shown)})"


def render_change(
    context: Context, item: str, uids: list[int], number: Callable[[int], int | None]
) -> str:
    """rfc5267:4.3.3 ADDTO / rfc5267:4.3.4 REMOVEFROM, without the "* ":
    ``uids`` (ascending) as UIDs or, for a SEARCH without UID, as the
    sequence numbers ``number`` gives them. An unsorted result has no
    position: it is 0 (rfc5267:4.3.2)."""
    numbers = uids if context.uid else sorted(n for n in map(number, uids) if n is not None)
    uid_part = " UID" if context.uid else ""
    return f"ESEARCH (TAG {quoted_tag(context.tag)}){uid_part} {item} (0 {compress(numbers)})"
