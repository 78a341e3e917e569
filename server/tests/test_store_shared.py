"""The shared store: ACLs (rfc4314), private \\Seen, inheritance, reindex."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.store import Store, shared
from estafeta.store.operations import MailboxError
from estafeta.store.reader import Condition

ALICE = "alice@example.test"
BOB = "bob@example.test"
OWNER = shared.OWNER


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        s.create_mailbox(OWNER, "info")
        s.set_acl("info", ALICE, "lrswipkxtea")
        s.set_acl("info", BOB, "lrs")
        yield s


def append(store: Store, subject: str, flags: tuple[str, ...] = ()) -> int:
    data = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
    delivered = asyncio.run(store.append(OWNER, "info", data, flags))
    return delivered.uid


def flags_of(store: Store, viewer: str) -> dict[int, tuple[str, ...]]:
    with store.reader(OWNER, viewer) as reader:
        box = reader.mailbox("info")
        assert box is not None
        return {uid: tuple(text.split()) for uid, text, _ in reader.flag_rows(box.id)}


def test_rights_parsing_and_virtual_rights() -> None:
    assert shared.parse_rights("rl") == "lr"
    assert shared.parse_rights("lrswida") == "lrswixtea"  # rfc4314:2.1.1 d = xte
    assert shared.parse_rights("c") == "k"
    assert shared.show("lrswikxtea") == "lrswikxteacd"
    assert shared.show("lr") == "lr"
    assert shared.modify("lrs", "+wd") == "lrswxte"
    assert shared.modify("lrswte", "-te") == "lrsw"
    assert shared.modify("lrswte", "lr") == "lr"
    with pytest.raises(shared.RightsError):
        shared.parse_rights("lrQ")  # rfc4314:3.1: upper case is not a right
    with pytest.raises(shared.RightsError):
        shared.parse_rights("lrq")
    assert shared.identifier("Anyone") == shared.ANYONE
    with pytest.raises(ValueError):
        shared.identifier("-bob@example.test")
    with pytest.raises(ValueError):
        shared.identifier("x" * 256)


def test_acl_storage_and_rights(store: Store) -> None:
    with store.reader(OWNER) as reader:
        box = reader.mailbox("info")
        assert box is not None
        assert reader.acl(box.id) == [(ALICE, "lrswipkxtea"), (BOB, "lrs")]
        assert reader.rights(box.id, BOB) == "lrs"
        assert reader.rights(box.id, "carol@example.test") == ""
        assert reader.visible(BOB) == {"info": "lrs"}
    assert store.set_acl("info", shared.ANYONE, "l") is True
    assert store.set_acl("info", shared.ANYONE, "l") is False  # no change
    with store.reader(OWNER) as reader:
        box = reader.mailbox("info")
        assert box is not None
        assert reader.rights(box.id, "carol@example.test") == "l"
        assert reader.rights(box.id, BOB) == "lrs"
    assert store.set_acl("info", shared.ANYONE, None) is True
    assert store.set_acl("info", shared.ANYONE, None) is False
    assert store.shared_acls() == {"info": {ALICE: "lrswipkxtea", BOB: "lrs"}}
    with pytest.raises(MailboxError) as missing:
        store.set_acl("nothere", BOB, "lr")
    assert missing.value.code == "NONEXISTENT"


def test_acl_entries_are_bounded(store: Store) -> None:
    for n in range(shared.MAX_ACL_ENTRIES - 2):
        store.set_acl("info", f"user{n}@example.test", "l")
    with pytest.raises(MailboxError) as limit:
        store.set_acl("info", "one-too-many@example.test", "l")
    assert limit.value.code == "LIMIT"
    store.set_acl("info", BOB, "lr")  # changing an entry is not adding one


def test_private_seen_per_viewer(store: Store) -> None:
    first, second = append(store, "one"), append(store, "two", ("\\Flagged",))
    result = store.store_flags(OWNER, "info", [first], "+", ["\\Seen"], viewer=ALICE)
    assert [(c.uid, c.flags) for c in result.changed] == [(first, ("\\Seen",))]
    assert flags_of(store, ALICE) == {first: ("\\Seen",), second: ("\\Flagged",)}
    assert flags_of(store, BOB) == {first: (), second: ("\\Flagged",)}
    # Common flags are common; \Seen stays each viewer's own.
    store.store_flags(OWNER, "info", [first, second], "+", ["\\Seen", "$Done"], viewer=BOB)
    assert flags_of(store, ALICE) == {first: ("$Done", "\\Seen"), second: ("\\Flagged", "$Done")}
    assert flags_of(store, BOB) == {
        first: ("$Done", "\\Seen"),
        second: ("\\Flagged", "$Done", "\\Seen"),
    }
    # The common text never holds \Seen.
    with store.reader(OWNER) as plain:
        box = plain.mailbox("info")
        assert box is not None
        assert all("\\Seen" not in text for _, text, _ in plain.flag_rows(box.id))
    with store.reader(OWNER, ALICE) as reader:
        box = reader.mailbox("info")
        assert box is not None
        assert reader.status_counts(box.id, ["UNSEEN", "MESSAGES"]) == {
            "UNSEEN": 1,
            "MESSAGES": 2,
        }
        unseen = reader.search_rows(
            box.id, [Condition("flag", "\\Seen", negate=True)], summary=False
        )
        assert [row[0] for row in unseen] == [second]
        assert [row[4] for row in reader.fetch_rows(box.id, [first], summary=False)] == [
            "$Done \\Seen"
        ]


def test_seen_change_moves_modseq_for_everybody(store: Store) -> None:
    uid = append(store, "one")
    with store.reader(OWNER, BOB) as reader:
        box = reader.mailbox("info")
        assert box is not None
        before = reader.highestmodseq(box.id)
    store.store_flags(OWNER, "info", [uid], "+", ["\\Seen"], viewer=ALICE)
    with store.reader(OWNER, BOB) as reader:
        assert reader.highestmodseq(box.id) == (before or 0) + 1
        # Bob pulls the message again and finds his flags as they were.
        assert reader.flag_rows(box.id, before) == [(uid, "", (before or 0) + 1)]


def test_store_keeps_flags_without_the_right(store: Store) -> None:
    uid = append(store, "one", ("\\Flagged",))
    # rfc4314:4: "s" only: \Seen changes, \Flagged and \Deleted do not.
    result = store.store_flags(
        OWNER, "info", [uid], "", ["\\Seen", "\\Deleted"], viewer=BOB, rights="lrs"
    )
    assert [c.flags for c in result.changed] == [("\\Flagged", "\\Seen")]
    assert (
        store.store_flags(
            OWNER, "info", [uid], "+", ["\\Deleted"], viewer=BOB, rights="lrs"
        ).changed
        == []
    )


def test_expunge_and_delete_drop_private_rows(store: Store) -> None:
    uid = append(store, "one")
    store.store_flags(OWNER, "info", [uid], "+", ["\\Seen", "\\Deleted"], viewer=ALICE)
    assert store.expunge(OWNER, "info") == [uid]
    conn = store.open_index(OWNER)
    try:
        assert conn.execute("SELECT count(*) FROM private_seen").fetchone() == (0,)
    finally:
        conn.close()
    store.delete_mailbox(OWNER, "info")
    assert store.shared_acls() == {}


def test_children_inherit_the_acl(store: Store) -> None:
    store.create_mailbox(OWNER, "info/2026/q1")
    acls = store.shared_acls()
    assert acls["info/2026"] == acls["info/2026/q1"] == acls["info"]
    store.set_acl("info/2026", BOB, "lr")
    assert store.shared_acls()["info/2026/q1"][BOB] == "lrs"  # copied once, then its own


def test_reindex_keeps_acls(store: Store) -> None:
    append(store, "one")
    store.settle()
    store.reindex(OWNER)
    assert store.shared_acls()["info"] == {ALICE: "lrswipkxtea", BOB: "lrs"}


def test_shared_store_lives_apart(store: Store, tmp_path: Path) -> None:
    assert store.account_dir(OWNER) == tmp_path / ".shared"
    assert (tmp_path / ".shared" / "index.db").exists()


def test_copy_and_move_keep_every_viewers_seen(store: Store) -> None:
    first, second = append(store, "one"), append(store, "two")
    store.store_flags(OWNER, "info", [first], "+", ["\\Seen"], viewer=ALICE)
    store.store_flags(OWNER, "info", [second], "+", ["\\Seen"], viewer=BOB)
    store.create_mailbox(OWNER, "info/done")
    copied = store.copy(OWNER, "info", [first, second], "info/done")
    moved = store.copy(OWNER, "info", [first, second], "info/done", move=True)
    assert moved.expunged == [first, second]

    def seen(viewer: str) -> dict[int, bool]:
        with store.reader(OWNER, viewer) as reader:
            box = reader.mailbox("info/done")
            assert box is not None
            return {uid: "\\Seen" in text.split() for uid, text, _ in reader.flag_rows(box.id)}

    one, two = copied.dest_uids
    three, four = moved.dest_uids
    assert seen(ALICE) == {one: True, two: False, three: True, four: False}
    assert seen(BOB) == {one: False, two: True, three: False, four: True}
    conn = store.open_index(OWNER)
    try:  # the moved messages' rows went with them
        assert conn.execute("SELECT count(*) FROM private_seen").fetchone() == (4,)
    finally:
        conn.close()
