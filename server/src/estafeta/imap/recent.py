"""\\Recent for IMAP4rev1 sessions (rfc3501:2.3.2).

A message is recent to the first read-write session told of it: that session
sees ``\\Recent`` in its FLAGS, counts it in ``* n RECENT`` and SEARCH RECENT,
and no later session does. IMAP4rev2 dropped the flag (rfc9051:1, appendix
E); sessions that ENABLE IMAP4rev2 neither see nor take it.

Each mailbox keeps the highest UID given out as recent (``recent_uid`` in
the index, schema 10). A session takes ("claims") the UIDs above it when it
selects the mailbox and when it learns of new messages. The claim is made in
memory, one process serving every session of an account, so the claim costs
no I/O on the event loop and two sessions never both get a message: a
``Claim`` lives while a view or a pending write holds it, and is written
to the index behind the sessions' backs (``Claims.persist``), the writes of a
mailbox coalesced. A crash can lose the last claims: those messages are
recent once more, which is harmless (rfc3501:2.3.2 allows a server that
cannot tell to call messages recent). EXAMINE sees what is not claimed yet
and claims nothing ("if the session is read-write, subsequent sessions will
not see \\Recent": a read-only one leaves them for the others).

What a session was given is a list of UID ranges: each claim takes every
UID from the last one claimed up to the newest, so claims are ranges, and a
session that keeps claiming alone keeps one range.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import weakref
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

Persist = Callable[[str, int, int], None]
"""(account, mailbox id, UID): write the claim to the index (blocking)."""


class Claim:
    """The highest UID of one mailbox given out as recent."""

    __slots__ = ("__weakref__", "up_to", "writing", "written")

    def __init__(self, up_to: int) -> None:
        self.up_to = up_to
        self.written = up_to
        self.writing = False


class Claims:
    """The claims of every mailbox a session has selected, per process."""

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[tuple[str, int], Claim] = (
            weakref.WeakValueDictionary()
        )
        self._writers: set[asyncio.Task[None]] = set()

    def get(self, account: str, mailbox_id: int, stored: int) -> Claim:
        """The mailbox's claim; ``stored`` is the index's ``recent_uid``, read
        just now (right when no claim is alive: every claim alive is in
        ``_live``, and one is kept alive until it is written)."""
        key = (account, mailbox_id)
        claim = self._live.get(key)
        if claim is None:
            claim = self._live[key] = Claim(stored)
        return claim

    def claimed(self, account: str, mailbox_id: int, stored: int) -> int:
        """The highest UID claimed, for STATUS (RECENT): the live claim if
        there is one, else what the index holds."""
        claim = self._live.get((account, mailbox_id))
        return stored if claim is None else max(claim.up_to, stored)

    def take(
        self, claim: Claim, up_to: int, persist: Persist, account: str, mailbox_id: int
    ) -> tuple[int, int] | None:
        """Claim the UIDs up to ``up_to``: the range taken, None if another
        session got there first. The write to the index follows."""
        if up_to <= claim.up_to:
            return None
        taken = (claim.up_to + 1, up_to)
        claim.up_to = up_to
        if not claim.writing:
            claim.writing = True
            task = asyncio.get_running_loop().create_task(
                self._write(claim, persist, account, mailbox_id)
            )
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)
        return taken

    async def _write(self, claim: Claim, persist: Persist, account: str, mailbox_id: int) -> None:
        # The task holds the claim: it stays in _live until it is written.
        try:
            while claim.written < claim.up_to:
                value = claim.up_to
                await asyncio.to_thread(persist, account, mailbox_id, value)
                claim.written = value
        except Exception:  # the mailbox was deleted meanwhile, or the disk failed
            log.warning("recent claim of mailbox %d not written", mailbox_id, exc_info=True)
        finally:
            claim.writing = False

    async def drain(self) -> None:
        """Wait for the claims being written (server stopping, tests)."""
        while self._writers:
            await asyncio.gather(*list(self._writers), return_exceptions=True)


_BY_STORE: weakref.WeakKeyDictionary[object, Claims] = weakref.WeakKeyDictionary()


def claims(store: object) -> Claims:
    """The claims of the mailboxes of ``store`` (one estafeta process serves
    every session of a store; tests run several stores in one process)."""
    found = _BY_STORE.get(store)
    if found is None:
        found = _BY_STORE[store] = Claims()
    return found


class RecentSet:
    """The UIDs one session holds as recent: ascending, disjoint ranges."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def add(self, low: int, high: int) -> None:
        if self.ranges and self.ranges[-1][1] + 1 >= low:
            self.ranges[-1] = (self.ranges[-1][0], max(high, self.ranges[-1][1]))
        else:
            self.ranges.append((low, high))

    def __contains__(self, uid: int) -> bool:
        i = bisect.bisect_right(self.ranges, (uid, float("inf"))) - 1
        return i >= 0 and self.ranges[i][0] <= uid <= self.ranges[i][1]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def count_in(self, uids: Sequence[int]) -> int:
        """How many of ``uids`` (ascending) are recent: O(ranges x log n)."""
        return sum(
            bisect.bisect_right(uids, high) - bisect.bisect_left(uids, low)
            for low, high in self.ranges
        )

    def key(self) -> tuple[tuple[int, int], ...]:
        """What tells two sessions' recent UIDs apart (selected.Step variants)."""
        return tuple(self.ranges)
