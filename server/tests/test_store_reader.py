"""The store's read interface and what schema 5 made indexable (issue 17).

* ``sysflags`` agrees with the flags text, whatever was stored;
* set-based STORE gives exactly what the message-by-message path gives;
* the index's search conditions never lose a message a full scan finds
  (a randomized corpus, many programs, both paths compared);
* an index of schema 4 is upgraded: canonical flags, search columns filled.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estafeta.imap import search as search_module
from estafeta.imap.types import SearchKey, SequenceSet
from estafeta.message import summarize
from estafeta.message.searchtext import search_columns
from estafeta.store import Delivery, Store, flags, index, operations
from estafeta.store.reader import Condition, SqliteReader

ALICE = "alice@example.test"

FLAG_POOL = ["\\Seen", "\\Deleted", "\\Flagged", "\\Answered", "\\Draft", "$Label", "Work", "$junk"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path, "mx.example.test") as s:
        yield s


def _message(n: int, rng: random.Random) -> bytes:
    names = ["Ärger Bob", "Carol", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "DAVE", "ſam"]
    subject = rng.choice(
        ["topic 42", "Topic 4", "GRÜSSE aus Köln", "=?utf-8?b?w4RyZ2Vy?= report", "", "Re: x"]
    )
    lines = [f"From: {rng.choice(names)} <user{n % 7}@Example.TEST>"]
    if rng.random() < 0.7:
        lines.append(f"To: {rng.choice(names)} <to{n % 3}@example.test>")
    if rng.random() < 0.3:
        lines.append(f"Cc: cc{n % 5}@example.test, {rng.choice(names)} <x@y.test>")
    if rng.random() < 0.9:
        lines.append(f"Subject: {subject} {n % 10}")
    lines.append("Date: Mon, 23 Nov 2026 10:00:00 +0000")
    body = "body " + "x" * rng.randrange(0, 3000)
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def _fill(store: Store, count: int, seed: int) -> None:
    rng = random.Random(seed)
    deliveries = []
    for n in range(count):
        data = _message(n, rng)
        chosen = tuple(f for f in FLAG_POOL if rng.random() < 0.3)
        deliveries.append(Delivery(ALICE, data, summarize(data), flags=chosen))
    store.deliver_sync(deliveries)


def _reader(store: Store) -> SqliteReader:
    return store.reader(ALICE)


def test_sysflags_matches_the_flags_text(store: Store) -> None:
    _fill(store, 60, seed=1)
    store.store_flags(ALICE, "INBOX", list(range(1, 61, 3)), "+", ["\\seen", "\\DELETED"])
    store.store_flags(ALICE, "INBOX", list(range(1, 61, 5)), "-", ["\\Seen"])
    conn = store.open_index(ALICE)
    try:
        rows = conn.execute("SELECT flags, sysflags FROM messages").fetchall()
    finally:
        conn.close()
    assert len(rows) == 60
    assert any(bits for _, bits in rows) and any(not bits for _, bits in rows)
    for text, bits in rows:
        assert bits == flags.bits(text.split()), text


def test_delivered_flags_are_stored_canonical(store: Store) -> None:
    data = b"Subject: x\r\n\r\nbody\r\n"
    store.deliver_sync([Delivery(ALICE, data, summarize(data), flags=("\\seen", "\\SEEN", "$A"))])
    with _reader(store) as reader:
        box = reader.mailbox("INBOX")
        assert box is not None
        assert reader.flag_rows(box.id) == [(1, "\\Seen $A", box.highestmodseq)]
        assert reader.status_counts(box.id, ["UNSEEN"]) == {"UNSEEN": 0}


# -- set-based STORE against the message-by-message path ----------------------------

_MODES = st.sampled_from(["", "+", "-"])
_FLAGS = st.lists(st.sampled_from([*FLAG_POOL, "\\SEEN", "work", "$LABEL"]), max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    start=st.lists(st.lists(st.sampled_from(FLAG_POOL), max_size=4), min_size=1, max_size=12),
    mode=_MODES,
    wanted=_FLAGS,
    picks=st.lists(st.integers(1, 12), max_size=12),
    unchanged=st.none() | st.integers(0, 4),
)
def test_set_based_store_equals_the_row_path(
    tmp_path_factory: pytest.TempPathFactory,
    start: list[list[str]],
    mode: str,
    wanted: list[str],
    picks: list[int],
    unchanged: int | None,
) -> None:
    canonical = operations.canonical_flags(wanted)
    if not operations._set_based(mode, canonical):
        return  # the row path is the only path for these
    results = []
    for path in (operations._store_set, operations._store_each):
        conn = index.connect(tmp_path_factory.mktemp("idx") / "index.db")
        data = b"Subject: s\r\n\r\nb\r\n"
        summary = summarize(data)
        conn.execute("BEGIN IMMEDIATE")
        index.add_messages(
            conn,
            "INBOX",
            [index.NewMessage(f"new/{n}", 10, 0, fl, summary) for n, fl in enumerate(start)],
        )
        conn.execute("COMMIT")
        # A few messages changed since: modseqs differ for UNCHANGEDSINCE.
        for uid in range(2, len(start) + 1, 3):
            conn.execute("UPDATE messages SET modseq = modseq + 3 WHERE uid = ?", (uid,))
        box = index.mailbox(conn, "INBOX")
        assert box is not None
        uids = sorted({p for p in picks if p <= len(start)})
        target, params = operations._targets(conn, uids)
        modseq = 100
        conn.execute("BEGIN IMMEDIATE")
        changed = path(conn, box, target, params, mode, canonical, modseq, unchanged)
        conn.execute("COMMIT")
        after = conn.execute("SELECT uid, flags, modseq FROM messages ORDER BY uid").fetchall()
        conn.close()
        results.append(([(c.uid, c.flags, c.modseq) for c in changed], after))
    assert results[0] == results[1]


def test_store_with_scattered_uids_uses_exactly_those(store: Store) -> None:
    _fill(store, 200, seed=2)
    store.store_flags(ALICE, "INBOX", list(range(1, 201)), "-", ["\\Seen"])
    odd = list(range(1, 201, 2))  # 100 runs: the temporary table
    result = store.store_flags(ALICE, "INBOX", odd, "+", ["\\Seen"])
    assert [c.uid for c in result.changed] == odd
    assert len({c.modseq for c in result.changed}) == 1
    with _reader(store) as reader:
        box = reader.mailbox("INBOX")
        assert box is not None
        seen = [uid for uid, text, _ in reader.flag_rows(box.id) if "\\Seen" in text.split()]
        assert seen == odd
        assert reader.status_counts(box.id, ["UNSEEN"]) == {"UNSEEN": 100}


def test_unchangedsince_fails_modified_messages_only(store: Store) -> None:
    _fill(store, 5, seed=3)
    first = store.store_flags(ALICE, "INBOX", [2], "+", ["$X"])
    mark = first.highestmodseq - 1
    result = store.store_flags(
        ALICE, "INBOX", [1, 2, 3], "+", ["\\Flagged", "$Y"], unchangedsince=mark
    )
    assert result.failed == [2]
    assert [c.uid for c in result.changed] == [1, 3]
    assert all("\\Flagged" in c.flags and "$Y" in c.flags for c in result.changed)


# -- SEARCH: the index narrows, never loses ----------------------------------------

_NEEDLES = ["topic 42", "TOPIC", "grüsse", "ärger", "ärger", "bob", "EXAMPLE.test", "sam",
            "to1@", "cc3", "re:", "42", "x", "Köln", "zzz"]  # fmt: skip


def _keys(rng: random.Random, largest: int) -> SearchKey:
    def leaf() -> SearchKey:
        kind = rng.randrange(9)
        if kind == 0:
            return SearchKey(rng.choice(list(search_module._FLAG_KEYS)), ())
        if kind == 1:
            return SearchKey(
                rng.choice(["SUBJECT", "FROM", "TO", "CC", "BCC"]), (rng.choice(_NEEDLES),)
            )
        if kind == 2:
            return SearchKey("HEADER", ("Subject", rng.choice([*_NEEDLES, ""])))
        if kind == 3:
            return SearchKey(rng.choice(["LARGER", "SMALLER"]), (rng.randrange(100, 3000),))
        if kind == 4:
            low = rng.randrange(1, largest + 1)
            return SearchKey("UID", (SequenceSet(((low, rng.choice([None, low + 20])),)),))
        if kind == 5:
            return SearchKey("MODSEQ", (None, None, rng.randrange(1, 6)))
        if kind == 6:
            return SearchKey("NOT", (leaf(),))
        if kind == 7:
            return SearchKey("OR", (leaf(), leaf()))
        return SearchKey("KEYWORD", (rng.choice(["$label", "Work"]),))

    return SearchKey("AND", (tuple(leaf() for _ in range(rng.randrange(1, 4))),))


def _run(reader: SqliteReader, box_id: int, key: SearchKey, conds: list[Condition]) -> list[int]:
    rows = reader.search_rows(box_id, conds, summary=True)
    uids = [row[0] for row in reader.flag_rows(box_id)]
    seqs = {uid: n for n, uid in enumerate(uids, 1)}
    candidates = [
        search_module.Candidate(
            seq=seqs[uid],
            uid=uid,
            flags=frozenset(text.split()),
            recent=False,
            internal_date=when,
            size=size,
            modseq=modseq,
            summary=summary or "",
            load=lambda file=file: reader.content(file),
        )
        for uid, file, size, when, text, modseq, summary in rows
    ]
    matched = search_module.evaluate(
        key, candidates, largest_seq=len(uids), largest_uid=uids[-1] if uids else 0
    )
    return [m.uid for m in matched]


def test_search_through_the_index_equals_a_full_scan(store: Store) -> None:
    _fill(store, 300, seed=4)
    for n in range(1, 300, 7):
        store.store_flags(ALICE, "INBOX", [n], "+", ["\\Seen", "$Label"])
    rng = random.Random(5)
    narrowed = 0
    with _reader(store) as reader:
        box = reader.mailbox("INBOX")
        assert box is not None
        for _ in range(400):
            key = _keys(rng, 300)
            conds = search_module.conditions(key, 300)
            fast = _run(reader, box.id, key, conds)
            full = _run(reader, box.id, key, [])
            assert fast == full, key
            if conds and len(reader.search_rows(box.id, conds, summary=False)) < 300:
                narrowed += 1
    assert narrowed > 100  # the index did narrow most programs down


def test_search_columns_hold_what_the_keys_compare(store: Store) -> None:
    data = (
        b"From: =?utf-8?q?J=C3=B6rg?= <J@Example.TEST>\r\nTo: a@b.test\r\n"
        b"Subject: =?utf-8?q?GR=C3=9CSSE?=\r\n\r\nx\r\n"
    )
    store.deliver_sync([Delivery(ALICE, data, summarize(data))])
    conn = store.open_index(ALICE)
    try:
        columns = ", ".join(index.SEARCH_COLUMNS)
        row = conn.execute(f"SELECT {columns} FROM messages").fetchone()  # noqa: S608
    finally:
        conn.close()
    assert row == search_columns(summarize(data))
    assert row[0] == "grüsse".casefold() and "jörg <j@example.test>" in row[2]


def test_a_schema_4_index_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for script in (index._SCHEMA, index._SCHEMA_V2, index._SCHEMA_V3, index._SCHEMA_V4):
        index._run_script(conn, script)
    conn.execute(
        "INSERT INTO mailboxes (id, name, dir, uidvalidity, uidnext, highestmodseq, subscribed)"
        " VALUES (1, 'INBOX', '', 7, 3, 2, 1)"
    )
    data = b"From: Bob <bob@x.test>\r\nSubject: Hello World\r\n\r\nbody\r\n"
    summary = summarize(data)
    for uid, flag_text in ((1, "\\seen $A"), (2, "\\Flagged")):
        conn.execute(
            "INSERT INTO messages (mailbox_id, uid, file, size, internal_date, flags, modseq,"
            " summary) VALUES (1, ?, ?, 10, 0, ?, 1, ?)",
            (uid, f"new/{uid}", flag_text, summary.to_json()),
        )
    conn.execute("PRAGMA user_version = 4")
    conn.close()

    upgraded = index.connect(path)
    try:
        assert upgraded.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION
        rows = upgraded.execute(
            "SELECT uid, flags, sysflags, s_subject, s_from FROM messages ORDER BY uid"
        ).fetchall()
    finally:
        upgraded.close()
    assert rows == [
        (1, "\\Seen $A", flags.SEEN, "hello world", "bob <bob@x.test>"),
        (2, "\\Flagged", flags.FLAGGED, "hello world", "bob <bob@x.test>"),
    ]


def test_condition_sql_refuses_unknown_columns_and_kinds() -> None:
    conn = sqlite3.connect(":memory:")
    reader = SqliteReader(conn, Path("/nonexistent"))
    with pytest.raises(ValueError):
        reader.search_rows(1, [Condition("text", column="summary; DROP", value="x")], summary=False)
    with pytest.raises(ValueError):
        reader.search_rows(1, [Condition("bogus")], summary=False)


def test_content_reads_whole_files_of_any_size(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    sizes = {"empty": 0, "small": 4096, "big": 300_000}
    for name, size in sizes.items():
        (tmp_path / "new" / name).write_bytes(random.Random(size).randbytes(size))
    reader = SqliteReader(sqlite3.connect(":memory:"), tmp_path)
    for name in sizes:
        assert reader.content(f"new/{name}") == (tmp_path / "new" / name).read_bytes()
    with pytest.raises(FileNotFoundError):
        reader.content("new/expunged")


# -- SEARCH BODY / TEXT through the full-text index ---------------------------------

_BODIES = [
    "plain zebracorn here",
    "nothing to see",
    "ZEBRACORN shouting",
    "Grüße aus Köln, zebra corn apart",
    "caf\u00e9 cr\u00e8me",
]


def _encoded(n: int, rng: random.Random) -> bytes:
    text = rng.choice(_BODIES) + f" number {n}"
    kind = n % 3
    if kind == 0:
        body = text.encode()
        cte = "8bit"
    elif kind == 1:
        import base64

        body = base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")
        cte = "base64"
    else:
        import quopri

        body = quopri.encodestring(text.encode("latin-1", "replace")).replace(b"\n", b"\r\n")
        cte = "quoted-printable"
    charset = "iso-8859-1" if kind == 2 else "utf-8"
    head = (
        f"From: a{n}@x.test\r\nSubject: msg {n} {'zebracorn' if n % 11 == 0 else ''}\r\n"
        f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode() + body + b"\r\n"


def _wait_indexed(store: Store, expected: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while True:
        conn = store.open_index(ALICE)
        try:
            held = conn.execute("SELECT count(*) FROM fulltext_doc").fetchone()[0]
        finally:
            conn.close()
        if held == expected:
            return
        assert time.monotonic() < deadline, (held, expected)
        time.sleep(0.05)


def _compare_fulltext(store: Store, needles: list[str]) -> int:
    """Indexed and full-scan SEARCH give the same UIDs; how many needles the
    index narrowed down."""
    narrowed = 0
    with _reader(store) as reader:
        box = reader.mailbox("INBOX")
        assert box is not None
        for op in ("BODY", "TEXT"):
            for needle in needles:
                key = SearchKey(op, (needle,))
                allowed = reader.fulltext(box.id, op, needle)  # type: ignore[arg-type]
                conds = []
                if allowed is not None:
                    import json

                    conds = [Condition("uid_in", value=json.dumps(sorted(allowed)))]
                    total = len(reader.flag_rows(box.id))
                    narrowed += len(allowed) < total
                assert _run(reader, box.id, key, conds) == _run(reader, box.id, key, []), (
                    op,
                    needle,
                )
    return narrowed


_FT_NEEDLES = ["zebracorn", "ZebraCorn", "grüsse", "GRÜSSE", "köln", "crème", "number 1",
               "msg 22", "zebra corn", "ze", "", "nothing", "absent-word"]  # fmt: skip


def test_fulltext_search_equals_a_scan_as_mail_comes_and_goes(store: Store) -> None:
    rng = random.Random(7)
    data = [_encoded(n, rng) for n in range(120)]
    store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in data])
    _wait_indexed(store, 120)
    assert _compare_fulltext(store, _FT_NEEDLES) >= 10
    # Expunged messages and new ones not indexed yet: still the scan's answers.
    store.store_flags(ALICE, "INBOX", list(range(1, 121, 4)), "+", ["\\Deleted"])
    store.expunge(ALICE, "INBOX")
    more = [_encoded(n, rng) for n in range(120, 160)]
    store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in more])
    _compare_fulltext(store, _FT_NEEDLES)
    _wait_indexed(store, 90 + 40)  # the expunged keys dropped, the new ones in
    assert _compare_fulltext(store, _FT_NEEDLES) >= 10


def test_build_fulltext_indexes_everything_at_once(tmp_path: Path) -> None:
    rng = random.Random(8)
    data = [_encoded(n, rng) for n in range(450)]
    with Store(tmp_path, "mx.example.test") as first:
        first.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in data])
    with Store(tmp_path, "mx.example.test") as store:
        built = store.build_fulltext(ALICE)
        assert 0 < built <= 450  # the writer may have done some when idle
        assert store.build_fulltext(ALICE) == 0
        _wait_indexed(store, 450)


def test_a_deleted_mailbox_id_is_never_given_again(store: Store) -> None:
    store.create_mailbox(ALICE, "Old")
    with _reader(store) as reader:
        old = reader.mailbox("Old")
        assert old is not None
    store.delete_mailbox(ALICE, "Old")
    store.create_mailbox(ALICE, "New")
    with _reader(store) as reader:
        new = reader.mailbox("New")
        assert new is not None
        assert new.id > old.id


def test_an_indexing_step_reads_a_bounded_amount_of_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from estafeta.store import account as account_module

    monkeypatch.setattr(account_module, "FULLTEXT_BATCH_OCTETS", 2000)
    rng = random.Random(9)
    data = [_encoded(n, rng) + b"x" * 1500 for n in range(12)]
    seen: list[int] = []
    real_insert_many = account_module.fulltext.insert_many

    def counting(conn: sqlite3.Connection, entries: list) -> int:  # type: ignore[type-arg]
        entries = list(entries)
        seen.append(len(entries))
        return real_insert_many(conn, entries)

    monkeypatch.setattr(account_module.fulltext, "insert_many", counting)
    with Store(tmp_path, "mx.example.test") as store:
        store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in data])
        _wait_indexed(store, 12)  # every message, in steps of about 2,000 octets
    assert seen and max(seen) <= 2


def test_the_helper_process_prepares_big_steps(tmp_path: Path) -> None:
    # The server's store decodes mail for the index in a helper process
    # (not under the server's GIL); the index must be the same as the
    # writer thread's own, and SEARCH must still answer like a scan.
    rng = random.Random(10)
    data = [_encoded(n, rng) for n in range(60)]
    with Store(tmp_path, "mx.example.test", fulltext_helper=True) as store:
        store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in data])
        _wait_indexed(store, 60)
        helper = store._helper
        assert helper is not None  # 60 messages: a step for the helper
        pids = [p.pid for p in getattr(helper, "_processes", {}).values()]
        assert pids and all(pid != os.getpid() for pid in pids)
        assert _compare_fulltext(store, _FT_NEEDLES) >= 10
    assert store._helper is None  # stopped with the store


def test_a_failing_helper_is_replaced_by_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import concurrent.futures

    from estafeta.store import account as account_module

    class Broken(concurrent.futures.ProcessPoolExecutor):
        def submit(self, *args: object, **kwargs: object) -> concurrent.futures.Future:  # type: ignore[override,type-arg]
            raise concurrent.futures.process.BrokenProcessPool("helper died")

    monkeypatch.setattr(account_module.concurrent.futures, "ProcessPoolExecutor", Broken)
    rng = random.Random(11)
    data = [_encoded(n, rng) for n in range(40)]
    with Store(tmp_path, "mx.example.test", fulltext_helper=True) as store:
        store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in data])
        _wait_indexed(store, 40)
        assert _compare_fulltext(store, _FT_NEEDLES) >= 10
    assert "fulltext_helper_failed" in caplog.text


def test_fulltext_candidates_come_from_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in CI: the writer indexed new mail between the reader's search
    # of the index and its list of what the index holds, so the new
    # messages counted as held but were not in the answer: SEARCH missed them.
    from estafeta.store import fulltext as fulltext_module
    from estafeta.store import reader as reader_module

    rng = random.Random(12)
    with Store(tmp_path, "mx.example.test") as store:
        first = [_encoded(n, rng) for n in range(30)]
        store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in first])
        store.build_fulltext(ALICE)
        later = [_encoded(n, rng) for n in range(30, 60)]
        store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in later])
        real_indexed = fulltext_module.indexed

        def indexed_after_the_writer(conn: sqlite3.Connection, *args: int) -> set[int]:
            assert store.build_fulltext(ALICE) > 0  # commits while the reader reads
            return real_indexed(conn, *args)

        with _reader(store) as reader:
            box = reader.mailbox("INBOX")
            assert box is not None
            scan = _run(reader, box.id, SearchKey("TEXT", ("zebracorn",)), [])
            monkeypatch.setattr(reader_module.fulltext, "indexed", indexed_after_the_writer)
            allowed = reader.fulltext(box.id, "TEXT", "zebracorn")
        assert allowed is not None
        assert any(uid > 30 for uid in scan)
        assert set(scan) <= allowed
