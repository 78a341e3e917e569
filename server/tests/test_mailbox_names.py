"""Mailbox names, limits and RENAME ordering in the store (issue 14 items 3, 8, 14).

- estafeta.store.names: canonical form (INBOX level, NFC), refused
  characters, folder size on disk;
- CREATE/RENAME checked before anything is written, max_mailboxes;
- RENAME: folders first, index after, undone as a whole on any failure and
  after a crash at any point; what versions before 4 left is repaired;
- the cost of a mailbox operation does not grow with the number of mailboxes.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.message import summarize
from estafeta.store import Delivery, Store, StoreError, index, maildir, names, operations
from estafeta.store.names import MailboxError, canonical, check_name

ALICE = "alice@example.test"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        yield s


def put(store: Store, mailbox: str, *subjects: str) -> None:
    store.deliver_sync(
        [
            Delivery(ALICE, data, summarize(data), mailbox=mailbox)
            for data in (f"Subject: {s}\r\n\r\n{s}\r\n".encode() for s in subjects)
        ]
    )


def boxes(store: Store) -> dict[str, index.Mailbox]:
    conn = store.open_index(ALICE)
    try:
        return {box.name: box for box in index.mailboxes(conn)}
    finally:
        conn.close()


def readable(store: Store, mailbox: str) -> list[bytes]:
    """The message files of ``mailbox``, read where the index says they are."""
    conn = store.open_index(ALICE)
    try:
        box = index.mailbox(conn, mailbox)
        assert box is not None
        account = store.account_dir(ALICE)
        return [(account / row.file).read_bytes() for row in index.messages(conn, box.id)]
    finally:
        conn.close()


def journal(store: Store) -> list[tuple[str, str, str]]:
    conn = store.open_index(ALICE)
    try:
        return [tuple(row) for row in conn.execute("SELECT op, a, b FROM journal")]
    finally:
        conn.close()


# -- names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("inbox", "INBOX"),
        ("Inbox/x", "INBOX/x"),
        ("iNbOx/X/inbox", "INBOX/X/inbox"),  # only the first level
        ("inboxes/x", "inboxes/x"),
        ("\u0131nbox/x", "\u0131nbox/x"),  # dotless i: not INBOX
        ("Cafe\u0301", "Caf\u00e9"),  # NFC
        ("\u212b", "\u00c5"),  # ANGSTROM SIGN is A WITH RING in NFC
    ],
)
def test_canonical(given: str, expected: str) -> None:
    assert canonical(given) == expected
    assert check_name(given) == expected


@pytest.mark.parametrize(
    ("name", "code", "why"),
    [
        ("a\u202eb", "CANNOT", "U+202E is a format character"),
        ("a\u200db", "CANNOT", "U+200D is a format character"),
        ("a\u2029b", "CANNOT", "U+2029 is a paragraph separator"),
        ("a\x9bb", "CANNOT", "U+009B is a control character"),
        ("a\U000f0000b", "CANNOT", "U+F0000 is a private-use character"),
        ("a\U0001fffeb", "CANNOT", "noncharacter"),
        ("a\U000e0080b", "CANNOT", "unassigned"),
        ("a*b", "CANNOT", "wildcard"),
        ("a//b", "CANNOT", "empty level"),
        ("x" * 255, "LIMIT", "256 octets"),
        ("a/" * 127 + "b", "LIMIT", "256 octets"),
        ("\u00e9" * 128, "LIMIT", "257 octets"),
        ("a." * 63, "LIMIT", "253"),  # "." takes 3 ("%2E"): 1 + 63 + 189 = 253... fits
    ],
)
def test_check_name_refuses(name: str, code: str, why: str) -> None:
    if why == "253":
        assert names.folder_octets(name) == 253
        check_name(name)
        return
    with pytest.raises(MailboxError, match=re.escape(why)) as error:
        check_name(name)
    assert error.value.code == code


def test_folder_limits_from_the_file_system(tmp_path: Path) -> None:
    name_max, _ = names.limits(tmp_path)
    assert name_max == os.pathconf(tmp_path, "PC_NAME_MAX")
    names.check_fits(tmp_path, "x" * (name_max - 1))
    with pytest.raises(MailboxError) as error:
        names.check_fits(tmp_path, "x" * name_max)
    assert error.value.code == "LIMIT"
    # A small PATH_MAX: the folder fits NAME_MAX but its files' paths do not.
    with pytest.raises(MailboxError, match="paths would take"):
        names.check_fits(tmp_path, "x" * 100, (255, 1200))
    assert names.fits(tmp_path, ".x")
    assert not names.fits(tmp_path, "." + "x" * 255)


# -- CREATE ------------------------------------------------------------------------------


def test_create_checks_every_level_before_writing(store: Store) -> None:
    before = boxes(store)
    with pytest.raises(MailboxError) as error:
        store.create_mailbox(ALICE, "a/" * 130 + "b")
    assert error.value.code == "LIMIT"
    assert boxes(store) == before
    # Nothing on disk either: no folder of any superior.
    account = store.account_dir(ALICE)
    assert not [p for p in account.iterdir() if p.name.startswith(".a")]


def test_max_mailboxes_counts_superiors(tmp_path: Path) -> None:
    with Store(tmp_path, "mx", max_mailboxes=10) as store:
        assert len(boxes(store)) == 6
        store.create_mailbox(ALICE, "A/B")  # 8
        with pytest.raises(MailboxError, match="this would add 3") as error:
            store.create_mailbox(ALICE, "C/D/E")
        assert error.value.code == "LIMIT"
        store.create_mailbox(ALICE, "A/B/C")  # 9
        store.create_mailbox(ALICE, "D")  # 10
        for attempt in (
            lambda: store.create_mailbox(ALICE, "E"),
            lambda: store.rename_mailbox(ALICE, "D", "F/D"),  # adds "F"
            lambda: store.rename_mailbox(ALICE, "INBOX", "Old"),  # adds "Old"
        ):
            with pytest.raises(MailboxError, match="has 10, at most 10"):
                attempt()
        assert len(boxes(store)) == 10
        store.rename_mailbox(ALICE, "D", "A/D")  # adds nothing
        assert "A/D" in boxes(store)


def test_uidvalidity_is_never_given_twice(store: Store) -> None:
    """rfc9051:2.3.1.1: a name created again gets a new UIDVALIDITY, even
    when the old mailbox had the highest one and is gone (same second)."""
    first = store.create_mailbox(ALICE, "Again").uidvalidity
    store.delete_mailbox(ALICE, "Again")
    second = store.create_mailbox(ALICE, "Again").uidvalidity
    assert second > first
    store.delete_mailbox(ALICE, "Again")
    assert store.create_mailbox(ALICE, "Again").uidvalidity > second


def test_mailbox_operations_cost_the_same_with_many_mailboxes(store: Store) -> None:
    """The index statements and folders a CREATE, RENAME and DELETE touch
    do not depend on how many mailboxes the account has (issue 14 item 8)."""
    made: list[Path] = []
    real_make = maildir.make_maildir

    def counting_make(path: Path) -> None:
        made.append(path)
        real_make(path)

    def cost(label: str) -> tuple[int, int]:
        statements: list[str] = []
        account = store._accounts[ALICE]  # the writer's connection
        account.conn.set_trace_callback(statements.append)
        made.clear()
        try:
            store.create_mailbox(ALICE, f"{label}/x")
            store.rename_mailbox(ALICE, f"{label}/x", f"{label}-renamed/x")
            store.delete_mailbox(ALICE, f"{label}-renamed/x")
            put(store, "INBOX", label)
        finally:
            account.conn.set_trace_callback(None)
        return len(statements), len(made)

    store.open_index(ALICE).close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(maildir, "make_maildir", counting_make)
        few = cost("few")
        for n in range(300):
            store.create_mailbox(ALICE, f"Folder{n:03d}")
        many = cost("many")
    assert few == many


# -- RENAME ------------------------------------------------------------------------------


def test_rename_checks_every_inferior_before_writing(store: Store) -> None:
    store.create_mailbox(ALICE, "P/" + "C" * 200)
    put(store, "P/" + "C" * 200, "child")
    before = boxes(store)
    with pytest.raises(MailboxError, match="262 octets") as error:
        store.rename_mailbox(ALICE, "P", "N" * 60)
    assert error.value.code == "LIMIT"
    assert boxes(store) == before
    assert journal(store) == []
    assert readable(store, "P/" + "C" * 200)[0].endswith(b"child\r\n")


def test_rename_refuses_a_clash_of_an_inferior(store: Store) -> None:
    store.create_mailbox(ALICE, "A/x")
    store.create_mailbox(ALICE, "B/x")
    store.delete_mailbox(ALICE, "B")  # B/x stays, B does not exist
    with pytest.raises(MailboxError, match="'B/x' already exists") as error:
        store.rename_mailbox(ALICE, "A", "B")
    assert error.value.code == "ALREADYEXISTS"
    assert {"A", "A/x", "B/x"} <= set(boxes(store))


def test_rename_target_folder_in_the_way(store: Store) -> None:
    store.create_mailbox(ALICE, "A")
    put(store, "A", "a")
    account = store.account_dir(ALICE)
    # An empty Maildir left by a crashed CREATE: taken away.
    maildir.make_maildir(account / ".B")
    store.rename_mailbox(ALICE, "A", "B")
    assert readable(store, "B")[0].endswith(b"a\r\n")
    # A folder with a file the index does not know: refused, nothing moves.
    maildir.make_maildir(account / ".C")
    (account / ".C" / "cur" / "stray").write_bytes(b"stray")
    with pytest.raises(MailboxError, match=r"'\.C' the index does not know") as error:
        store.rename_mailbox(ALICE, "B", "C")
    assert error.value.code == "CANNOT"
    assert readable(store, "B")[0].endswith(b"a\r\n")
    assert (account / ".C" / "cur" / "stray").exists()


@pytest.mark.parametrize("fail_at", ["second-folder", "superior", "commit"])
def test_rename_failure_undoes_everything(
    store: Store, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    """Any failure after the intent is committed: the folders go back and
    the index keeps the old names; NO means nothing changed."""
    store.create_mailbox(ALICE, "A/x")
    put(store, "A", "parent")
    put(store, "A/x", "child")
    before = boxes(store)
    account = store.account_dir(ALICE)
    real_rename, real_make, real_uidvalidity = (
        os.rename,
        maildir.make_maildir,
        index.new_uidvalidity,
    )

    def rename(source: Path, target: Path) -> None:
        if str(target).endswith(".New.Top.x"):
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    def make(path: Path) -> None:
        if path.name == ".New":
            raise OSError(13, "Permission denied")
        real_make(path)

    def uidvalidity(conn: sqlite3.Connection, at_least: int = 0) -> int:
        real_uidvalidity(conn, at_least)
        raise sqlite3.OperationalError("disk I/O error")

    if fail_at == "second-folder":
        monkeypatch.setattr(operations.os, "rename", rename)
    elif fail_at == "superior":
        monkeypatch.setattr(maildir, "make_maildir", make)
    else:
        monkeypatch.setattr(index, "new_uidvalidity", uidvalidity)
    with pytest.raises((OSError, sqlite3.Error)):
        store.rename_mailbox(ALICE, "A", "New/Top")
    monkeypatch.undo()
    assert boxes(store) == before
    assert journal(store) == []
    assert (account / ".A" / "new").is_dir() and (account / ".A.x" / "new").is_dir()
    assert not (account / ".New.Top").exists() and not (account / ".New.Top.x").exists()
    assert readable(store, "A")[0].endswith(b"parent\r\n")
    assert readable(store, "A/x")[0].endswith(b"child\r\n")
    store.rename_mailbox(ALICE, "A", "New/Top")  # and it works once the disk does
    assert readable(store, "New/Top/x")[0].endswith(b"child\r\n")


@pytest.mark.parametrize("moved", [0, 1, 2])
def test_crash_between_intent_and_commit_is_undone_at_open(tmp_path: Path, moved: int) -> None:
    """A crash after step 1 (intent) with 0, 1 or 2 folders renamed and the
    index not committed: the next open puts the folders back."""
    with Store(tmp_path, "mx") as store:
        store.create_mailbox(ALICE, "A/x")
        put(store, "A/x", "child")
        account = store.account_dir(ALICE)
        conn = store.open_index(ALICE)
    renames = [(".A", ".B"), (".A.x", ".B.x")]
    conn.execute("BEGIN IMMEDIATE")
    for a, b in renames:
        conn.execute("INSERT INTO journal (op, a, b) VALUES ('renaming', ?, ?)", (a, b))
    conn.execute("COMMIT")
    conn.close()
    for a, b in renames[:moved]:
        os.rename(account / a, account / b)
    with Store(tmp_path, "mx") as store:
        assert {"A", "A/x"} <= set(boxes(store)) and "B" not in boxes(store)
        assert readable(store, "A/x")[0].endswith(b"child\r\n")
        assert journal(store) == []
        assert not (account / ".B").exists() and not (account / ".B.x").exists()


def test_legacy_rename_entries_are_finished_or_undone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 3 committed the rows, then renamed: a possible rename is
    finished, an impossible one undone in the index (logged once)."""
    with Store(tmp_path, "mx") as store:
        store.create_mailbox(ALICE, "Short")
        store.create_mailbox(ALICE, "Stuff")
        put(store, "Short", "short")
        put(store, "Stuff", "stuff")
        account = store.account_dir(ALICE)
        conn = store.open_index(ALICE)
    too_long = "." + "A" * 300
    conn.execute("BEGIN IMMEDIATE")
    for old, new, directory in (("Short", "Fine", ".Fine"), ("Stuff", "A" * 300, too_long)):
        box = index.mailbox(conn, old)
        assert box is not None
        conn.execute(
            "UPDATE mailboxes SET name = ?, dir = ? WHERE id = ?", (new, directory, box.id)
        )
        conn.execute(
            "UPDATE messages SET file = ? || substr(file, ?) WHERE mailbox_id = ?",
            (directory, len(box.dir) + 1, box.id),
        )
        conn.execute("INSERT INTO journal (op, a, b) VALUES ('rename', ?, ?)", (box.dir, directory))
    conn.execute("COMMIT")
    conn.close()
    with caplog.at_level(logging.WARNING, "estafeta.store"), Store(tmp_path, "mx") as store:
        names_now = set(boxes(store))
        assert {"Fine", "Stuff"} <= names_now and "A" * 300 not in names_now
        assert readable(store, "Fine")[0].endswith(b"short\r\n")
        assert readable(store, "Stuff")[0].endswith(b"stuff\r\n")
        assert journal(store) == []
        put(store, "Stuff", "after")
        assert store.reindex(ALICE) == 3
    assert [r.message for r in caplog.records].count("rename_undone") == 1
    assert (account / ".Fine").is_dir() and not (account / ".Short").exists()


def test_unusable_mailbox_does_not_stop_the_account(tmp_path: Path) -> None:
    """A row whose folder cannot exist and no journal to explain it: the
    account opens, INBOX works, that mailbox says why, reindex drops it."""
    with Store(tmp_path, "mx") as store:
        conn = store.open_index(ALICE)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO mailboxes (name, dir, uidvalidity, uidnext, highestmodseq, subscribed)"
        " VALUES (?, ?, 1, 1, 1, 0)",
        ("B" * 300, "." + "B" * 300),
    )
    conn.execute("COMMIT")
    conn.close()
    with Store(tmp_path, "mx") as store:
        put(store, "INBOX", "fine")
        with pytest.raises(StoreError, match="too long"):
            put(store, "B" * 300, "nowhere")
        assert store.reindex(ALICE) == 1
        assert "B" * 300 not in boxes(store)


def test_lookups_prefer_the_exact_stored_name(store: Store) -> None:
    """A name stored unnormalised by an older version stays reachable under
    its own spelling and is never confused with its NFC twin."""
    conn = store.open_index(ALICE)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO mailboxes (name, dir, uidvalidity, uidnext, highestmodseq, subscribed)"
        " VALUES ('Cafe\u0301', '.Cafe\u0301', 1, 1, 1, 0)"
    )
    conn.execute("COMMIT")
    conn.close()
    store.create_mailbox(ALICE, "Caf\u00e9")
    conn = store.open_index(ALICE)
    try:
        old, new = index.mailbox(conn, "Cafe\u0301"), index.mailbox(conn, "Caf\u00e9")
        assert old is not None and new is not None and old.id != new.id
    finally:
        conn.close()
    store.rename_mailbox(ALICE, "Cafe\u0301", "Legacy")  # the old spelling finds it
    assert {"Legacy", "Caf\u00e9"} <= set(boxes(store))
