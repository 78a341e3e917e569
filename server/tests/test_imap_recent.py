"""estafeta.imap.recent: who gets \\Recent, and what is written (rfc3501:2.3.2)."""

from __future__ import annotations

import asyncio
import gc
import threading

from estafeta.imap.recent import Claims, RecentSet


def test_recent_set_keeps_merged_ranges() -> None:
    recent = RecentSet()
    assert not recent and 1 not in recent
    recent.add(3, 5)
    recent.add(6, 8)  # follows on: one range
    recent.add(12, 12)
    assert recent.ranges == [(3, 8), (12, 12)]
    assert [uid in recent for uid in (2, 3, 8, 9, 11, 12, 13)] == [
        False, True, True, False, False, True, False,
    ]  # fmt: skip
    assert recent.count_in([1, 3, 4, 9, 10, 12, 40]) == 3
    assert recent.key() == ((3, 8), (12, 12))


def test_each_uid_is_taken_once_and_writes_are_coalesced() -> None:
    written: list[int] = []
    gate = threading.Event()

    def persist(account: str, mailbox_id: int, uid: int) -> None:
        assert (account, mailbox_id) == ("a@example.test", 7)
        gate.wait(5)
        written.append(uid)

    async def main() -> None:
        claims = Claims()
        claim = claims.get("a@example.test", 7, stored=4)
        assert claims.claimed("a@example.test", 7, 0) == 4
        # Another session of the mailbox gets the same claim.
        assert claims.get("a@example.test", 7, stored=0) is claim
        assert claims.take(claim, 4, persist, "a@example.test", 7) is None
        assert claims.take(claim, 9, persist, "a@example.test", 7) == (5, 9)
        assert claims.take(claim, 9, persist, "a@example.test", 7) is None  # the second session
        assert claims.take(claim, 10, persist, "a@example.test", 7) == (10, 10)
        assert claims.take(claim, 12, persist, "a@example.test", 7) == (11, 12)
        gate.set()
        del claim
        await claims.drain()
        # Claims made before the writer got a turn: one write.
        assert written == [12]
        claim = claims.get("a@example.test", 7, stored=12)  # what the index says now
        assert claims.take(claim, 13, persist, "a@example.test", 7) == (13, 13)
        await asyncio.sleep(0.05)  # that write is under way...
        assert claims.take(claim, 14, persist, "a@example.test", 7) == (14, 14)
        assert claims.take(claim, 15, persist, "a@example.test", 7) == (15, 15)
        await claims.drain()
        assert written == [12, 13, 15]  # ...the two after it made one more
        del claim
        gc.collect()
        # Written and no longer held: the next session reads the index.
        assert claims.claimed("a@example.test", 7, 15) == 15
        assert claims.get("a@example.test", 7, stored=15).up_to == 15

    asyncio.run(main())


def test_a_claim_is_kept_until_written() -> None:
    """A claim nobody holds any more stays alive while its write is pending:
    a session selecting meanwhile must not take the same messages again from
    an index that does not say so yet."""
    release = threading.Event()

    def persist(_account: str, _mailbox_id: int, _uid: int) -> None:
        release.wait(5)

    async def main() -> None:
        claims = Claims()
        claim = claims.get("b@example.test", 1, stored=0)
        assert claims.take(claim, 3, persist, "b@example.test", 1) == (1, 3)
        del claim
        gc.collect()
        again = claims.get("b@example.test", 1, stored=0)  # the index still says 0
        assert claims.take(again, 3, persist, "b@example.test", 1) is None
        release.set()
        await claims.drain()

    asyncio.run(main())
