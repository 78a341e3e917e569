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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from estafeta.imap.search import compress
from estafeta.imap.types import SearchKey

__all__ = ["MAX_CONTEXTS", "Context", "noupdate", "quoted_tag", "render_change"]

MAX_CONTEXTS = 8
"""Live updating searches per session (Dovecot keeps no fixed number; a
client uses one per view it shows)."""


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
