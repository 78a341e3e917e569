"""The store: durable delivery, group commit, recovery and reindex."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from conftest import store_rows
from estafeta.message import summarize
from estafeta.store import Delivery, Store, StoreError, index, maildir

ALICE = "alice@example.test"
BOB = "bob@example.test"


def delivery(address: str, subject: str, mailbox: str = "INBOX") -> Delivery:
    data = f"Subject: {subject}\r\nMessage-ID: <{subject}@x.test>\r\n\r\nbody\r\n".encode()
    return Delivery(address, data, summarize(data), mailbox=mailbox, internal_date=1_700_000_000)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "mail", "mx.example.test") as s:
        yield s  # type: ignore[misc]


def test_layout_of_a_delivery(store: Store) -> None:
    [result] = store.deliver_sync([delivery(ALICE, "one")])
    store.settle()  # the file moves into new/ once fsync'd (store.ingest)
    account = store.mail_dir / "example.test" / "alice"
    assert store.account_dir(ALICE) == account
    assert result.uid == 1 and result.mailbox == "INBOX"
    path = account / result.file
    assert path.parent == account / "new"
    assert path.read_bytes().startswith(b"Subject: one\r\n")
    assert int(path.stat().st_mtime) == 1_700_000_000  # internal date kept in mtime
    assert os.listdir(account / "tmp") == []
    for name in ("Drafts", "Sent", "Archive", "Junk", "Trash"):
        assert (account / f".{name}" / "cur").is_dir()
    [row] = store_rows(store, ALICE)
    assert (row.uid, row.file, row.size) == (1, result.file, path.stat().st_size)
    assert row.summary.subject == "one"
    assert row.internal_date == 1_700_000_000


def test_special_use_and_uids(store: Store) -> None:
    store.deliver_sync([delivery(ALICE, "a"), delivery(ALICE, "b", mailbox="Sent")])
    store.deliver_sync([delivery(ALICE, "c")])
    conn = store.open_index(ALICE)
    try:
        boxes = {box.name: box for box in index.mailboxes(conn)}
    finally:
        conn.close()
    assert boxes["Sent"].special_use == "\\Sent"
    assert boxes["INBOX"].uidnext == 3
    assert boxes["Sent"].uidnext == 2
    assert boxes["INBOX"].highestmodseq > boxes["Sent"].highestmodseq
    assert [r.summary.subject for r in store_rows(store, ALICE)] == ["a", "c"]
    assert [r.summary.subject for r in store_rows(store, ALICE, "Sent")] == ["b"]


def test_group_commit_batches_concurrent_deliveries(store: Store) -> None:
    async def many() -> None:
        await asyncio.gather(*(store.deliver([delivery(ALICE, f"m{i}")]) for i in range(200)))

    asyncio.run(many())
    assert len(store_rows(store, ALICE)) == 200
    # Fewer commits than messages: deliveries shared transactions and fsyncs.
    assert store.batched_messages == 200
    assert store.batches < 200


def test_failed_delivery_leaves_nothing(store: Store) -> None:
    store.deliver_sync([delivery(ALICE, "ok")])
    with pytest.raises(StoreError, match="no mailbox 'Nope'"):
        store.deliver_sync([delivery(BOB, "x"), delivery(ALICE, "y", mailbox="Nope")])
    store.settle()
    account = store.account_dir(ALICE)
    assert len(list(maildir.scan(account))) == 1
    assert os.listdir(account / "tmp") == []
    # Bob's part of the failed request was not published either.
    assert list(maildir.scan(store.account_dir(BOB))) == []
    assert store_rows(store, BOB) == []


def test_unindexed_files_are_recovered_on_open(tmp_path: Path) -> None:
    with Store(tmp_path, "mx") as store:
        store.deliver_sync([delivery(ALICE, "indexed")])
        account = store.account_dir(ALICE)
    # A crash after rename, before commit, leaves a file like this one.
    (account / "new" / "1700000001.M1P1Q1.mx,S=30").write_bytes(b"Subject: orphan\r\n\r\nx\r\n")
    (account / ".Sent" / "cur" / "1700000002.M1P1Q2.mx:2,S").write_bytes(b"Subject: sent\r\n\r\n")
    stale = account / "tmp" / "1600000000.M1P1Q1.mx"
    stale.write_bytes(b"never acknowledged")
    os.utime(stale, (1_600_000_000, 1_600_000_000))
    with Store(tmp_path, "mx") as store:
        assert [r.summary.subject for r in store_rows(store, ALICE)] == ["indexed", "orphan"]
        [sent] = store_rows(store, ALICE, "Sent")
        assert sent.flags == ("\\Seen",)
    assert not stale.exists()


def test_reindex_rebuilds_from_files(tmp_path: Path) -> None:
    with Store(tmp_path, "mx") as store:
        store.deliver_sync([delivery(ALICE, f"m{i}") for i in range(5)])
        store.deliver_sync([delivery(ALICE, "s", mailbox="Sent")])
        conn = store.open_index(ALICE)
        old_uidvalidity = index.mailbox(conn, "INBOX").uidvalidity  # type: ignore[union-attr]
        conn.execute("UPDATE messages SET flags = '\\Flagged' WHERE uid = 2")
        conn.close()
        assert store.reindex(ALICE) == 6
        subjects = [r.summary.subject for r in store_rows(store, ALICE)]
        assert subjects == [f"m{i}" for i in range(5)]
        assert store_rows(store, ALICE)[1].flags == ("\\Flagged",)  # carried over
        conn = store.open_index(ALICE)
        box = index.mailbox(conn, "INBOX")
        conn.close()
        assert box is not None and box.uidvalidity > old_uidvalidity
        assert box.special_use is None
        account = store.account_dir(ALICE)
    # Lose the index entirely: the files still rebuild it.
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (account / name).unlink(missing_ok=True)
    (account / ".Lists.Python" / "cur").mkdir(parents=True)
    (account / ".Lists.Python" / "new").mkdir()
    (account / ".Lists.Python" / "cur" / "1700000005.M1P1Q9.mx:2,RS").write_bytes(
        b"Subject: py\r\n\r\n"
    )
    with Store(tmp_path, "mx") as store:
        assert store.reindex(ALICE) == 7
        [py] = store_rows(store, ALICE, "Lists/Python")
        assert py.flags == ("\\Answered", "\\Seen")
        assert [r.uid for r in store_rows(store, ALICE)] == [1, 2, 3, 4, 5]


def test_store_not_started(tmp_path: Path) -> None:
    store = Store(tmp_path, "mx")
    with pytest.raises(StoreError, match="not started"):
        store.deliver_sync([delivery(ALICE, "x")])


@pytest.mark.parametrize(
    ("name", "directory"),
    [
        ("INBOX", ""),
        ("inbox", ""),
        ("Sent", ".Sent"),
        ("Lists/Python", ".Lists.Python"),
        ("v1.2", ".v1%2E2"),
        ("100%", ".100%25"),
        ("Café/Ünïcode ☕", ".Café.Ünïcode ☕"),
    ],
)
def test_mailbox_directories(name: str, directory: str) -> None:
    assert maildir.mailbox_dir(name) == directory
    expected = "INBOX" if name.upper() == "INBOX" else name
    assert maildir.mailbox_name(directory) == expected


def test_unique_names_sort_by_time() -> None:
    first = maildir.unique_name("mx/odd:host", 10)
    time.sleep(1.01)
    second = maildir.unique_name("mx", 10)
    assert "/" not in first and ":" not in first
    assert first.endswith(",S=10")
    assert maildir.sort_key(first) < maildir.sort_key(second)


def test_names_within_one_second_sort_by_microseconds() -> None:
    # The usec field is not zero-padded: "M99999" comes before "M100500".
    early = "1764800000.M99999P12Q1Rab.mx,S=5"
    late = "1764800000.M100500P12Q2Rcd.mx,S=5"
    assert late < early  # as text they sort the wrong way
    assert maildir.sort_key(early) < maildir.sort_key(late)
    assert sorted([late, early, "1764799999.x"], key=maildir.sort_key) == [
        "1764799999.x",
        early,
        late,
    ]


def test_read_messages_for_training(store: Store) -> None:
    # What the spam trainer reads after a move into Junk: the files the index
    # names now, at most `limit` of them, each cut at `max_size`.
    store.deliver_sync([delivery(ALICE, f"m{n}", "Junk") for n in range(5)])
    uids = [row.uid for row in store_rows(store, ALICE, "Junk")]
    contents, left = store.read_messages(ALICE, "Junk", [*uids, uids[0]], limit=3, max_size=12)
    assert contents == [b"Subject: m0\r", b"Subject: m1\r", b"Subject: m2\r"]
    assert left == 2  # five distinct UIDs asked, two beyond the limit
    # A UID that is not (or no longer) there is left out.
    assert store.read_messages(ALICE, "Junk", [uids[4], 999], 2, 100)[0] == [
        b"Subject: m4\r\nMessage-ID: <m4@x.test>\r\n\r\nbody\r\n"
    ]
    assert store.read_messages(ALICE, "Nope", uids, 10, 100) == ([], 0)
    assert store.read_messages("nobody@example.test", "Junk", uids, 10, 100) == ([], 0)


def test_status_counts_compute_what_is_asked(store: Store) -> None:
    store.deliver_sync([delivery(ALICE, f"s{n}") for n in range(3)])
    uids = [row.uid for row in store_rows(store, ALICE)]
    store.store_flags(ALICE, "INBOX", uids[:2], "+", ["\\Seen"])
    store.store_flags(ALICE, "INBOX", uids[2:], "+", ["\\Deleted"])
    conn = store.open_index(ALICE)
    try:
        box = index.mailbox(conn, "INBOX")
        assert box is not None
        size = sum(row.size for row in store_rows(store, ALICE))
        assert index.status_counts(conn, box.id, ["messages", "UNSEEN", "DELETED", "SIZE"]) == {
            "MESSAGES": 3,
            "UNSEEN": 1,
            "DELETED": 1,
            "SIZE": size,
        }
        assert index.status_counts(conn, box.id, ["UIDNEXT", "UNSEEN"]) == {"UNSEEN": 1}
        assert index.status_counts(conn, box.id, []) == {}
    finally:
        conn.close()
