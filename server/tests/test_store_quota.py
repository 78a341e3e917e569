"""Quota on COPY and APPEND in the store (issue 14 item 9).

``operations.copy`` and ``operations.append`` check the quota in the
store's writer thread, the second time inside the transaction that adds the
rows; a refused COPY or APPEND answers MailboxError OVERQUOTA (rfc9208:4.3.1)
and leaves no file. A MOVE within the account is not checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.message import summarize
from estafeta.store import Delivery, Store, index, operations
from estafeta.store.operations import MailboxError

ALICE = "alice@example.test"
SIZE = 1000


def message(n: int) -> bytes:
    head = b"Subject: m%d\r\n\r\n" % n
    return head + b"x" * (SIZE - len(head))


def files(store: Store) -> list[Path]:
    account = store.account_dir(ALICE)
    return sorted(
        p for p in account.rglob("*") if p.is_file() and p.parent.name in ("new", "cur", "tmp")
    )


def used(store: Store) -> int:
    conn = store.open_index(ALICE)
    try:
        return operations.used_octets(conn)
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        s.deliver_sync([Delivery(ALICE, message(n), summarize(message(n))) for n in range(3)])
        yield s


def test_copy_within_quota_and_over_it(store: Store) -> None:
    assert used(store) == 3 * SIZE
    result = store.copy(ALICE, "INBOX", [1, 2], "Archive", quota=5 * SIZE)
    assert result.dest_uids == [1, 2]
    with pytest.raises(MailboxError) as refused:
        store.copy(ALICE, "INBOX", [3], "Archive", quota=5 * SIZE)
    assert refused.value.code == "OVERQUOTA"
    assert used(store) == 5 * SIZE
    assert len(files(store)) == 5
    # A MOVE holds nothing more: not checked, even at quota.
    moved = store.copy(ALICE, "INBOX", [3], "Archive", move=True, quota=5 * SIZE)
    assert moved.source_uids == [3]
    assert used(store) == 5 * SIZE
    assert len(files(store)) == 5


def test_a_copy_refused_inside_the_transaction_unlinks_its_files(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process fills the account between the first check and the
    # commit: the second check refuses, and the hard links go.
    answers = iter([3 * SIZE, 10 * SIZE])
    monkeypatch.setattr(operations, "used_octets", lambda conn: next(answers))
    with pytest.raises(MailboxError) as refused:
        store.copy(ALICE, "INBOX", [1, 2, 3], "Archive", quota=7 * SIZE)
    assert refused.value.code == "OVERQUOTA"
    monkeypatch.undo()
    assert len(files(store)) == 3
    assert used(store) == 3 * SIZE
    conn = store.open_index(ALICE)
    try:
        archive = index.mailbox(conn, "Archive")
        assert archive is not None and index.count(conn, archive.id) == 0
    finally:
        conn.close()


def test_append_within_quota_and_over_it(store: Store) -> None:
    async def main() -> None:
        delivered = await store.append(ALICE, "INBOX", message(9), ["\\Seen"], None, quota=4 * SIZE)
        assert delivered.uid == 4
        with pytest.raises(MailboxError) as refused:
            await store.append(ALICE, "INBOX", message(10), (), None, quota=4 * SIZE)
        assert refused.value.code == "OVERQUOTA"
        # Without a quota, the group-committed path.
        await store.append(ALICE, "INBOX", message(11), (), None)

    asyncio.run(main())
    assert used(store) == 5 * SIZE
    assert len(files(store)) == 5  # nothing left in tmp/ or new/ by the refusal
    conn = store.open_index(ALICE)
    try:
        inbox = index.mailbox(conn, "INBOX")
        assert inbox is not None
        rows = index.messages(conn, inbox.id)
        assert [r.uid for r in rows] == [1, 2, 3, 4, 5]
        assert rows[3].flags == ("\\Seen",)
    finally:
        conn.close()
