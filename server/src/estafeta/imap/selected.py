"""The state of a selected mailbox, as one session sees it.

A session's view lags the index on purpose: rfc9051:7.5.1 forbids
EXPUNGE responses while FETCH, STORE or SEARCH run, and sequence numbers
must not shift under a client's feet. ``Selected`` keeps the session's
UID list and flags, and ``pull`` computes what to tell the client to bring
its view up to the index (EXISTS, FETCH FLAGS, EXPUNGE / VANISHED).

Views of one mailbox in the same state share their UID list and flag and
modseq maps (a ``Snapshot``, copy on write): a thousand sessions idling on
one mailbox keep one copy of it, not a thousand (issue 17). A view joins
(``share``) when its session goes idle; ``step``/``remember`` let the
sessions on one snapshot take a change the first of them made, without
copying or comparing the whole mailbox again.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from estafeta.imap.recent import Claim, RecentSet
from estafeta.imap.types import SequenceSet
from estafeta.store import Mailbox
from estafeta.store.reader import IndexReader


@dataclass
class Updates:
    expunged: list[int] = field(default_factory=list)  # UIDs, still in the view
    flags: list[tuple[int, tuple[str, ...], int]] = field(
        default_factory=list
    )  # uid, flags, modseq
    new: list[tuple[int, tuple[str, ...], int]] = field(default_factory=list)
    highestmodseq: int = 0


class Snapshot:
    """A view's contents shared by views of one mailbox in one state; never
    changed while shared (a view copies before changing: Selected._own)."""

    __slots__ = ("__weakref__", "box", "flags", "highestmodseq", "modseqs", "next", "uids")

    def __init__(self, view: Selected) -> None:
        self.box = view.box
        self.uids = view.uids
        self.flags = view.flags
        self.modseqs = view.modseqs
        self.highestmodseq = view.highestmodseq
        # The last change a view on this snapshot went through (Step).
        self.next: Step | None = None


@dataclass(eq=False)
class Step:
    """From a snapshot, ``updates`` (as pulled, told the client as ``lines``,
    the session's ``variant`` of telling) lead to the snapshot ``to`` at
    ``highestmodseq``."""

    updates: Updates
    variant: tuple[object, ...]
    lines: list[str]
    to: weakref.ref[Snapshot]
    highestmodseq: int


# Changes larger than this (messages) are not remembered (Selected.remember).
STEP_LIMIT = 1024
# The snapshots views share: (account, mailbox id, uidvalidity, highest
# modseq) -> snapshot, as long as a view holds it.
_SHARED: weakref.WeakValueDictionary[tuple[str, int, int, int], Snapshot] = (
    weakref.WeakValueDictionary()
)


@dataclass(slots=True)
class Selected:
    box: Mailbox
    readonly: bool
    uids: list[int]
    flags: dict[int, tuple[str, ...]]
    modseqs: dict[int, int]
    highestmodseq: int
    condstore: bool = False  # rfc7162:3.1: a CONDSTORE-enabling command was used
    qresync: bool = False
    # UIDs the index has expunged but the client has not been told yet.
    pending_expunge: set[int] = field(default_factory=set)
    # Whose uids, flags and modseqs these are when shared with other views.
    snapshot: Snapshot | None = None
    # The keywords the client was told in FLAGS / PERMANENTFLAGS.
    keywords: frozenset[str] = frozenset()
    # rfc3501:2.3.2 \Recent (estafeta.imap.recent): the UIDs this session
    # holds as recent and the mailbox's claim; None in IMAP4rev2 sessions.
    recent: RecentSet | None = None
    claim: Claim | None = None
    # The store the mailbox is in (an account, or estafeta.store.shared.OWNER)
    # and the user's rfc4314 rights on it when it was selected (rfc4314:5.1.1
    # allows keeping them until the next SELECT).
    owner: str = ""
    rights: str = "lrswipkxtea"

    def is_recent(self, uid: int) -> bool:
        return self.recent is not None and uid in self.recent

    @classmethod
    def load(cls, reader: IndexReader, box: Mailbox, readonly: bool) -> Selected:
        rows = reader.flag_rows(box.id)
        uids = [row[0] for row in rows]
        flags = {row[0]: tuple(row[1].split()) for row in rows}
        modseqs = {row[0]: row[2] for row in rows}
        return cls(box, readonly, uids, flags, modseqs, box.highestmodseq)

    # -- numbers ---------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def resolve(self, sequence: SequenceSet, uid: bool, saved: Sequence[int] = ()) -> list[int]:
        """The UIDs a sequence set names, ascending (rfc9051:9 seq-number / uid-set).

        For UID sets, "*" is the largest UID in the view, and numbers that
        are not in the view are ignored (rfc9051:6.4.9). The set is merged
        first, so the work is O(ranges x log ranges + the UIDs named),
        whatever the client repeated or overlapped.
        """
        if sequence.saved:
            wanted = set(saved)
            return [u for u in self.uids if u in wanted]
        if not self.uids:
            return []
        if uid:
            return sequence.merged(self.uids[-1]).select(self.uids)
        exists = len(self.uids)
        result: list[int] = []
        for low, high in sequence.merged(exists):
            if low > exists:
                break
            result.extend(self.uids[max(low, 1) - 1 : min(high, exists)])
        return result

    def valid_seqs(self, sequence: SequenceSet) -> bool:
        """rfc9051:6.4.5: a sequence number beyond EXISTS is a BAD request.
        O(ranges)."""
        if sequence.saved:
            return True
        exists = len(self.uids)
        return all(
            (start is None or start <= exists) and (end is None or end <= exists)
            for start, end in sequence.ranges
        )

    # -- sharing (copy on write) ---------------------------------------------------

    def _own(self) -> None:
        """Before a change: a copy of its own if the contents are shared."""
        if self.snapshot is not None:
            self.uids = list(self.uids)
            self.flags = dict(self.flags)
            self.modseqs = dict(self.modseqs)
            self.snapshot = None

    def share(self, account: str) -> None:
        """Take the contents of an equal view of the same mailbox (same state,
        compared: O(messages)), or offer these to the next ones."""
        if self.snapshot is not None or self.pending_expunge:
            return
        key = (account, self.box.id, self.box.uidvalidity, self.highestmodseq)
        found = _SHARED.get(key)
        if (
            found is not None
            and found.uids == self.uids
            and found.flags == self.flags
            and found.modseqs == self.modseqs
        ):
            self._adopt(found)
            return
        self.snapshot = _SHARED[key] = Snapshot(self)

    def _adopt(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if snapshot.box == self.box:
            self.box = snapshot.box
        self.uids = snapshot.uids
        self.flags = snapshot.flags
        self.modseqs = snapshot.modseqs
        self.highestmodseq = snapshot.highestmodseq

    def step(self, updates: Updates, variant: tuple[object, ...]) -> list[str] | None:
        """If another view on the same snapshot went through the same updates
        (told the same way): take its result, O(1); the lines it told."""
        snapshot = self.snapshot
        if snapshot is None or self.pending_expunge:
            return None
        step = snapshot.next
        if step is None or step.variant != variant or step.updates != updates:
            return None
        result = step.to()
        if result is None:
            return None
        self._adopt(result)
        self.highestmodseq = step.highestmodseq
        return step.lines

    def remember(
        self,
        start: Snapshot | None,
        updates: Updates,
        variant: tuple[object, ...],
        lines: list[str],
        account: str,
    ) -> None:
        """This view went from snapshot ``start`` through ``updates``, telling
        ``lines``: share the result, and keep the way for the other views on
        ``start`` (step)."""
        if start is None or self.pending_expunge:
            return
        self.share(account)
        # A large change is not kept for the others (its responses would stay
        # in memory as long as the old snapshot): each works it out.
        small = len(updates.expunged) + len(updates.flags) + len(updates.new) <= STEP_LIMIT
        if self.snapshot is not None and small:
            to = weakref.ref(self.snapshot)
            start.next = Step(updates, variant, lines, to, self.highestmodseq)

    # -- keeping up with the index --------------------------------------------

    def note_expunged(self, uids: Iterable[int]) -> None:
        """Expunged in the index, to tell the client when it may hear it."""
        self.pending_expunge.update(uids)

    def pull(self, reader: IndexReader) -> Updates:
        """What changed in the index since this view last looked."""
        updates = Updates(highestmodseq=self.highestmodseq)
        highest = reader.highestmodseq(self.box.id)
        if highest is None or highest <= self.highestmodseq:
            return updates
        since = self.highestmodseq
        for uid in reader.vanished_since(self.box.id, since):
            if uid in self.flags:
                updates.expunged.append(uid)
        known_max = self.uids[-1] if self.uids else 0
        for uid, flag_text, modseq in reader.flag_rows(self.box.id, since):
            flags = tuple(flag_text.split())
            if uid > known_max:
                updates.new.append((uid, flags, modseq))
            elif uid in self.flags:
                updates.flags.append((uid, flags, modseq))
        updates.highestmodseq = highest
        return updates

    def apply_flags(self, changes: Iterable[tuple[int, tuple[str, ...], int]]) -> None:
        for uid, flags, modseq in changes:
            if uid in self.flags:
                self._own()
                self.flags[uid] = flags
                self.modseqs[uid] = modseq

    def apply_new(self, new: Iterable[tuple[int, tuple[str, ...], int]]) -> None:
        for uid, flags, modseq in new:
            if uid not in self.flags:
                self._own()
                self.uids.append(uid)
                self.flags[uid] = flags
                self.modseqs[uid] = modseq

    def apply_expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove UIDs; returns their sequence numbers as the client must hear
        them (each EXPUNGE shifts the ones after it: report in descending
        order so that every number is right when it is read). One pass over
        the view, however many go."""
        wanted = set(uids)
        self.pending_expunge.difference_update(wanted)
        doomed = {uid for uid in wanted if uid in self.flags}
        if not doomed:
            return []
        self._own()
        seqs = [seq for seq, uid in enumerate(self.uids, 1) if uid in doomed]
        seqs.reverse()
        self.uids[:] = [uid for uid in self.uids if uid not in doomed]
        for uid in doomed:
            del self.flags[uid]
            self.modseqs.pop(uid, None)
        return seqs
