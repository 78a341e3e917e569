"""Store operations IMAP needs: flags, expunge, copy/move, mailboxes, append."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.message import summarize
from estafeta.store import Delivery, Store, index, maildir
from estafeta.store.operations import MailboxError, replay_journal

ALICE = "alice@example.test"


def put(store: Store, *subjects: str, mailbox: str = "INBOX") -> list[int]:
    deliveries = []
    for subject in subjects:
        data = f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()
        deliveries.append(Delivery(ALICE, data, summarize(data), mailbox=mailbox))
    return [d.uid for d in store.deliver_sync(deliveries)]


def listing(store: Store, mailbox: str = "INBOX") -> list[tuple[int, str, tuple[str, ...]]]:
    conn = store.open_index(ALICE)
    try:
        box = index.mailbox(conn, mailbox)
        assert box is not None
        return [(r.uid, r.summary.subject, r.flags) for r in index.messages(conn, box.id)]
    finally:
        conn.close()


def mailbox(store: Store, name: str) -> index.Mailbox | None:
    conn = store.open_index(ALICE)
    try:
        return index.mailbox(conn, name)
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        yield s


def test_flags_and_modseq(store: Store) -> None:
    put(store, "a", "b", "c")
    before = mailbox(store, "INBOX")
    assert before is not None
    result = store.store_flags(ALICE, "INBOX", [1, 2], "+", ["\\seen", "$Label"])
    assert [(c.uid, c.flags) for c in result.changed] == [
        (1, ("\\Seen", "$Label")),
        (2, ("\\Seen", "$Label")),
    ]
    assert result.highestmodseq == before.highestmodseq + 1
    # No change, no new modseq (rfc7162:3.1.3).
    again = store.store_flags(ALICE, "INBOX", [1], "+", ["\\Seen"])
    assert again.changed == [] and again.highestmodseq == result.highestmodseq
    store.store_flags(ALICE, "INBOX", [1], "-", ["$label"])
    store.store_flags(ALICE, "INBOX", [3], "", ["\\Flagged", "\\Draft"])
    assert listing(store) == [
        (1, "a", ("\\Seen",)),
        (2, "b", ("\\Seen", "$Label")),
        (3, "c", ("\\Flagged", "\\Draft")),
    ]
    # UNCHANGEDSINCE: message 1 changed after the value given, so it fails.
    guarded = store.store_flags(ALICE, "INBOX", [1, 3], "+", ["\\Answered"], result.highestmodseq)
    assert guarded.failed == [1, 3]  # both were modified after that modseq
    assert guarded.changed == []
    assert store.store_flags(ALICE, "INBOX", [1], "+", ["x"], 10**9).changed[0].uid == 1


def test_expunge_removes_files_and_records_vanished(store: Store) -> None:
    put(store, "a", "b", "c", "d")
    account = store.account_dir(ALICE)
    store.store_flags(ALICE, "INBOX", [2, 3, 4], "+", ["\\Deleted"])
    assert store.expunge(ALICE, "INBOX", uids=[3, 4, 99]) == [3, 4]
    assert store.expunge(ALICE, "INBOX") == [2]
    assert [uid for uid, _, _ in listing(store)] == [1]
    assert len(list(maildir.scan(account))) == 1
    conn = store.open_index(ALICE)
    assert sorted(r[0] for r in conn.execute("SELECT uid FROM expunged")) == [2, 3, 4]
    assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 0
    conn.close()


def test_crash_between_commit_and_unlink_does_not_resurrect(tmp_path: Path) -> None:
    with Store(tmp_path, "mx") as store:
        put(store, "keep", "gone")
        store.store_flags(ALICE, "INBOX", [2], "+", ["\\Deleted"])
        conn = store.open_index(ALICE)
        # What an expunge commits, without the unlink that follows it.
        [(file,)] = conn.execute("SELECT file FROM messages WHERE uid = 2").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM messages WHERE uid = 2")
        conn.execute("INSERT INTO journal (op, a) VALUES ('unlink', ?)", (file,))
        conn.execute("COMMIT")
        conn.close()
        account = store.account_dir(ALICE)
    assert (account / file).exists()
    with Store(tmp_path, "mx") as store:
        assert [s for _, s, _ in listing(store)] == ["keep"]
    assert not (account / file).exists()


def test_copy_and_move(store: Store) -> None:
    put(store, "a", "b", "c")
    store.store_flags(ALICE, "INBOX", [2], "+", ["\\Flagged"])
    archive = mailbox(store, "Archive")
    assert archive is not None
    result = store.copy(ALICE, "INBOX", [2, 3], "Archive")
    assert (result.uidvalidity, result.source_uids, result.dest_uids) == (
        archive.uidvalidity,
        [2, 3],
        [1, 2],
    )
    assert listing(store, "Archive") == [(1, "b", ("\\Flagged",)), (2, "c", ())]
    account = store.account_dir(ALICE)
    # A copy is a hard link: same inode, no extra space.
    conn = store.open_index(ALICE)
    files = dict(conn.execute("SELECT summary, file FROM messages").fetchall())
    conn.close()
    inodes = {os.stat(account / f).st_ino for f in files.values()}
    assert len(inodes) == 3
    moved = store.copy(ALICE, "INBOX", [1, 3], "Trash", move=True)
    assert moved.expunged == [1, 3] and moved.dest_uids == [1, 2]
    assert [s for _, s, _ in listing(store)] == ["b"]
    assert [s for _, s, _ in listing(store, "Trash")] == ["a", "c"]
    assert len(list(maildir.scan(account))) == 1
    with pytest.raises(MailboxError) as error:
        store.copy(ALICE, "INBOX", [2], "Nowhere")
    assert error.value.code == "TRYCREATE"


def test_create_delete_rename(store: Store) -> None:
    box = store.create_mailbox(ALICE, "Projects/2026/Q4")
    assert box.name == "Projects/2026/Q4"
    assert mailbox(store, "Projects") is not None and mailbox(store, "Projects/2026") is not None
    account = store.account_dir(ALICE)
    assert (account / ".Projects.2026.Q4" / "cur").is_dir()
    with pytest.raises(MailboxError) as error:
        store.create_mailbox(ALICE, "projects/2026/Q4".replace("p", "P", 1))
    assert error.value.code == "ALREADYEXISTS"
    for bad in ("", "/x", "x/", "a//b", "a*b", "a\x01b"):
        with pytest.raises(MailboxError):
            store.create_mailbox(ALICE, bad)
    with pytest.raises(MailboxError) as error:
        store.create_mailbox(ALICE, "MySent", special_use="\\Sent")
    assert error.value.code == "USEATTR"
    assert store.create_mailbox(ALICE, "Important", special_use="\\Important").special_use == (
        "\\Important"
    )

    put(store, "p1", "p2", mailbox="Projects/2026")
    before = mailbox(store, "Projects/2026")
    assert before is not None
    store.rename_mailbox(ALICE, "Projects", "Work/Old")
    after = mailbox(store, "Work/Old/2026")
    assert after is not None and after.uidvalidity == before.uidvalidity
    assert mailbox(store, "Projects") is None and mailbox(store, "Work") is not None
    assert [s for _, s, _ in listing(store, "Work/Old/2026")] == ["p1", "p2"]
    assert (account / ".Work.Old.2026" / "new").is_dir()
    assert not (account / ".Projects.2026").exists()
    # The moved files are readable where the index says.
    conn = store.open_index(ALICE)
    for (file,) in conn.execute("SELECT file FROM messages"):
        assert (account / file).is_file()
    conn.close()

    store.delete_mailbox(ALICE, "Work/Old")
    assert mailbox(store, "Work/Old") is None
    assert mailbox(store, "Work/Old/2026") is not None  # inferiors stay
    store.delete_mailbox(ALICE, "Work/Old/2026")
    assert not (account / ".Work.Old.2026").exists()
    with pytest.raises(MailboxError):
        store.delete_mailbox(ALICE, "INBOX")


def test_rename_inbox_moves_messages(store: Store) -> None:
    put(store, "one", "two")
    store.rename_mailbox(ALICE, "inbox", "Old Inbox")
    assert listing(store) == []
    assert [s for _, s, _ in listing(store, "Old Inbox")] == ["one", "two"]
    assert put(store, "three") == [3]  # INBOX goes on with its UIDs


def test_subscribe(store: Store) -> None:
    store.create_mailbox(ALICE, "Lists")
    box = mailbox(store, "Lists")
    assert box is not None and not box.subscribed
    store.subscribe(ALICE, "Lists", True)
    assert mailbox(store, "Lists").subscribed  # type: ignore[union-attr]
    store.subscribe(ALICE, "Lists", False)
    assert not mailbox(store, "Lists").subscribed  # type: ignore[union-attr]


def test_append_and_notifications(store: Store) -> None:
    heard: list[str] = []
    store.changes.watch(ALICE, heard.append)

    async def run() -> None:
        delivered = await store.append(ALICE, "Sent", b"Subject: s\r\n\r\nx\r\n", ["\\seen"], 1.7e9)
        sent = mailbox(store, "Sent")
        assert sent is not None
        assert (delivered.uid, delivered.uidvalidity) == (1, sent.uidvalidity)
        with pytest.raises(MailboxError) as error:
            await store.append(ALICE, "Nope", b"x\r\n")
        assert error.value.code == "TRYCREATE"

    asyncio.run(run())
    assert listing(store, "Sent") == [(1, "s", ("\\Seen",))]
    store.store_flags(ALICE, "Sent", [1], "+", ["\\Flagged"])
    assert heard == [ALICE, ALICE]
    store.changes.unwatch(ALICE, heard.append)
    put(store, "quiet")
    assert heard == [ALICE, ALICE]


def test_journal_replay_is_idempotent(tmp_path: Path) -> None:
    with Store(tmp_path, "mx") as store:
        put(store, "a")
        conn = store.open_index(ALICE)
        account = store.account_dir(ALICE)
        conn.execute("INSERT INTO journal (op, a) VALUES ('unlink', 'new/missing')")
        conn.execute("INSERT INTO journal (op, a, b) VALUES ('rename', '.Nope', '.Other')")
        assert replay_journal(conn, account) == 2
        assert replay_journal(conn, account) == 0
        conn.close()


def test_append_many_is_all_or_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """rfc3502:6.3.11 MULTIAPPEND: every message in one commit, or none of
    them and no file left behind (a quota refused, a write failing)."""
    put(store, "first")
    folder = store.mail_dir / "example.test" / "alice" / ".Sent"
    messages = [
        (b"Subject: %d\r\n\r\nbody\r\n" % n, ["\\Seen"] if n else [], None) for n in range(3)
    ]

    async def main() -> None:
        made = await store.append_many(ALICE, "Sent", messages)
        assert [d.uid for d in made] == [1, 2, 3]
        with pytest.raises(MailboxError) as over:
            await store.append_many(ALICE, "Sent", messages, quota=10)
        assert over.value.code == "OVERQUOTA"
        calls = []
        original = maildir.write_tmp

        def failing(*args: object, **kwargs: object) -> maildir.Staged:
            calls.append(1)
            if len(calls) == 2:
                raise OSError("disk full")
            return original(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(maildir, "write_tmp", failing)
        with pytest.raises(OSError):
            await store.append_many(ALICE, "Sent", messages)
        monkeypatch.undo()
        with pytest.raises(MailboxError) as missing:
            await store.append_many(ALICE, "Nowhere", messages)
        assert missing.value.code == "TRYCREATE"

    asyncio.run(main())
    assert [(uid, flags) for uid, _, flags in listing(store, "Sent")] == [
        (1, ()), (2, ("\\Seen",)), (3, ("\\Seen",)),
    ]  # fmt: skip
    files = [f for sub in ("new", "cur", "tmp") for f in os.listdir(folder / sub)]
    assert len(files) == 3, files
