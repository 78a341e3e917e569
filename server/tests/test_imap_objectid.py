"""IMAP OBJECTID (rfc8474) and SAVEDATE (rfc8514): the parser's new FETCH
items, SEARCH keys and STATUS item (fed whole and in every chunk size), the
index's object ids (schema 12: EMAILID kept by COPY, MOVE and reindex,
THREADID fixed at saving, MAILBOXID kept by RENAME and never given again),
a transcript sent whole and one byte at a time, and imaplib against a
running server."""

from __future__ import annotations

import datetime
import imaplib
import re
import sqlite3
import time
from pathlib import Path

import pytest
from test_imap_contexts import Step, ask
from test_imap_parser import AND, K, S, args_of, error_of, run
from test_imap_transcript import ALICE, PLAIN, run_both_ways, start

from conftest import PASSWORD
from estafeta.imap import commands as c
from estafeta.imap import search as search_module
from estafeta.imap.parser import Command
from estafeta.imap.types import FetchAtt
from estafeta.message import summarize
from estafeta.store import index
from estafeta.store.reader import SqliteReader

OBJECTID = re.compile(r"[A-Za-z0-9_-]{1,255}\Z")  # rfc8474:7 objectid

# -- the parser ----------------------------------------------------------------------


def test_fetch_items() -> None:
    assert args_of(b"a FETCH 1:* (EMAILID THREADID SAVEDATE UID)\r\n") == c.Fetch(
        S((1, None)),
        (FetchAtt("EMAILID"), FetchAtt("THREADID"), FetchAtt("SAVEDATE"), FetchAtt("UID")),
    )
    assert args_of(b"a fetch 2 savedate\r\n") == c.Fetch(S((2, 2)), (FetchAtt("SAVEDATE"),))


def test_search_keys() -> None:
    program = b"a UID SEARCH EMAILID M6d99-ac_3 THREADID T1 SAVEDON 28-Dec-2014 SAVEDATESUPPORTED"
    command = run(program + b"\r\n")[0]
    assert isinstance(command, Command) and command.uid
    assert command.args == c.Search(
        None,
        None,
        AND(
            K("EMAILID", "M6d99-ac_3"),  # rfc8474:7: case-sensitive, kept as given
            K("THREADID", "T1"),
            K("SAVEDON", datetime.date(2014, 12, 28)),
            K("SAVEDATESUPPORTED"),
        ),
    )
    assert args_of(b"a SEARCH NOT SAVEDBEFORE 1-Jan-2020 OR SAVEDSINCE 2-Feb-2021 ALL\r\n") == (
        c.Search(
            None,
            None,
            AND(
                K("NOT", K("SAVEDBEFORE", datetime.date(2020, 1, 1))),
                K("OR", K("SAVEDSINCE", datetime.date(2021, 2, 2)), K("ALL")),
            ),
        )
    )


@pytest.mark.parametrize(
    "program",
    [
        b"EMAILID",  # no id
        b"EMAILID M.1",  # "." is not an objectid character
        b'EMAILID "M1"',  # an objectid is bare
        b"THREADID " + b"T" * 256,  # longer than 255
        b"SAVEDON yesterday",
        b"SAVEDATESUPPORTED 1-Jan-2020",
    ],
)
def test_bad_search_keys(program: bytes) -> None:
    assert error_of(b"a SEARCH " + program + b"\r\n")


def test_status_mailboxid() -> None:
    assert args_of(b"a STATUS foo (MAILBOXID MESSAGES)\r\n") == c.Status(
        "foo", ("MAILBOXID", "MESSAGES")
    )
    list_args = args_of(b'a LIST "" "*" RETURN (STATUS (mailboxid))\r\n')
    assert isinstance(list_args, c.List) and list_args.status_items == ("MAILBOXID",)


def test_a_session_of_new_items_in_any_chunks() -> None:
    """What the parser makes of a sequence of commands does not depend on
    how the bytes arrive (every chunk size from 1 up: ``run``)."""
    data = (
        b"1 STATUS INBOX (MAILBOXID)\r\n"
        b"2 UID FETCH 1:* (EMAILID THREADID SAVEDATE)\r\n"
        b"3 SEARCH SAVEDSINCE 1-Jan-2026 EMAILID Mabc\r\n"
        b"4 SEARCH SAVEDATESUPPORTED\r\n"
    )
    names = [(e.tag, e.name) for e in run(data) if isinstance(e, Command)]
    assert names == [("1", "STATUS"), ("2", "FETCH"), ("3", "SEARCH"), ("4", "SEARCH")]


# -- the index ------------------------------------------------------------------------


def _message(subject: str, message_id: str, refs: str = "") -> bytes:
    head = f"Subject: {subject}\r\nMessage-ID: <{message_id}>\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    return (head + "\r\nbody\r\n").encode()


def _add(conn: sqlite3.Connection, box: str, file: str, data: bytes) -> int:
    new = index.NewMessage(
        file=file, size=len(data), internal_date=0, flags=(), summary=summarize(data)
    )
    conn.execute("BEGIN IMMEDIATE")
    uids = index.add_messages(conn, box, [new])
    conn.execute("COMMIT")
    return uids[0]


def test_ids_of_a_thread(tmp_path: Path) -> None:
    conn = index.connect(tmp_path / "index.db")
    try:
        _add(conn, "INBOX", "new/1.M1P1.h", _message("a", "a@x"))
        _add(conn, "Sent", ".Sent/new/2.M2P1.h", _message("Re: a", "b@x", "<a@x>"))
        _add(conn, "INBOX", "new/3.M3P1.h", _message("c", "c@x"))
        reader = SqliteReader(conn, tmp_path)
        inbox, sent = (reader.mailbox(name) for name in ("INBOX", "Sent"))
        assert inbox is not None and sent is not None
        (_, email_a, thread_a, saved_a), (_, email_c, thread_c, _) = reader.object_rows(inbox.id)
        [(_, email_b, thread_b, _)] = reader.object_rows(sent.id, [1])
        ids = [email_a, email_b, email_c, thread_a, thread_c]
        assert all(isinstance(i, str) and OBJECTID.match(i) for i in ids)
        assert len(set(ids)) == 5  # rfc8474:5.2: never an EMAILID as a THREADID
        assert thread_b == thread_a  # a reply in another mailbox joins the thread
        assert saved_a is not None and abs(saved_a - time.time()) < 60
        assert email_a == index.email_oid_of("cur/1.M1P1.h:2,S")  # the name, not the folder
        assert inbox.objectid != sent.objectid and OBJECTID.match(inbox.objectid)
    finally:
        conn.close()


def test_schema_11_gets_object_ids(tmp_path: Path) -> None:
    """Version 12 (rfc8474): the rows of an older index get an EMAILID and
    a THREADID, a reply the thread of what it answers."""
    path = tmp_path / "index.db"
    conn = index.connect(path)
    _add(conn, "INBOX", "new/1.M1P1.h", _message("a", "a@x"))
    _add(conn, "INBOX", "new/2.M2P1.h", _message("Re: a", "b@x", "<a@x>"))
    conn.execute("DROP INDEX messages_thread")
    conn.execute("ALTER TABLE messages DROP COLUMN email_oid")
    conn.execute("ALTER TABLE messages DROP COLUMN thread_oid")
    conn.execute("PRAGMA user_version=11")
    conn.close()
    conn = index.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION == 13
        rows = conn.execute("SELECT file, email_oid, thread_oid FROM messages ORDER BY uid")
        (file_a, email_a, thread_a), (_, email_b, thread_b) = rows.fetchall()
        assert email_a == index.email_oid_of(file_a) and email_b != email_a
        assert thread_a == thread_b == "T" + email_a[1:]
    finally:
        conn.close()


def test_search_keys_evaluate_on_the_objects() -> None:
    day = datetime.datetime(2026, 3, 4, 12, tzinfo=datetime.UTC).timestamp()

    def candidate(uid: int, saved: int | None) -> search_module.Candidate:
        return search_module.Candidate(
            seq=uid, uid=uid, flags=frozenset(), recent=False, internal_date=int(day) - 86_400 * 9,
            size=1, modseq=1, summary="", load=bytes, objects=(f"M{uid}", "T1", saved),
        )  # fmt: skip

    messages = [candidate(1, int(day)), candidate(2, int(day) + 86_400), candidate(3, None)]

    def uids(*keys: search_module.SearchKey) -> list[int]:
        assert search_module.needs_objects(AND(*keys))
        found = search_module.evaluate(AND(*keys), messages, largest_seq=3, largest_uid=3)
        return [m.uid for m in found]

    assert uids(K("EMAILID", "M2")) == [2]
    assert uids(K("EMAILID", "m2")) == []  # rfc8474:7: ids are case-sensitive
    assert uids(K("THREADID", "T1")) == [1, 2, 3]
    assert uids(K("SAVEDON", datetime.date(2026, 3, 4))) == [1]
    assert uids(K("SAVEDSINCE", datetime.date(2026, 3, 5))) == [2]
    # rfc8514:4.3: no save date known, the internal date (nine days before)
    assert uids(K("SAVEDBEFORE", datetime.date(2026, 3, 4))) == [3]
    assert not search_module.needs_objects(AND(K("SAVEDATESUPPORTED"), K("ALL")))


# -- over the wire --------------------------------------------------------------------

ID = r"\(([A-Za-z0-9_-]{1,255})\)"
DATE_TIME = r"[ 0-9]\d-\w{3}-\d{4} [0-9:]{8} \+0000"  # rfc9051:9 date-time, in UTC
SCRIPT: list[Step] = [
    (f"a1 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a1 OK"]),
    ask("a2", "CAPABILITY", r"\* CAPABILITY .*OBJECTID.*SAVEDATE"),
    ask("a3", "CREATE box", rf"a3 OK \[MAILBOXID {ID}\]"),
    ask("a4", "STATUS box (MAILBOXID MESSAGES)", rf"\* STATUS \"box\" \(MAILBOXID {ID} MESSAGES"),
    ask("a5", 'LIST "" box RETURN (STATUS (MAILBOXID))', rf"\* STATUS \"box\" \(MAILBOXID {ID}\)"),
    ask("a6", "SELECT INBOX", rf"\* OK \[MAILBOXID {ID}\]"),
    ask(
        "b1",
        "FETCH 1:* (EMAILID THREADID SAVEDATE)",
        rf'\* 1 FETCH \(EMAILID {ID} THREADID {ID} SAVEDATE "{DATE_TIME}"\)',
        r"\* 2 FETCH",
    ),
    ask("b2", "UID FETCH 2 (UID SAVEDATE)", r'\* 2 FETCH \(UID 2 SAVEDATE "'),
    ask("b3", "SEARCH SAVEDATESUPPORTED", r"\* SEARCH 1 2\r\n"),
    ask("b4", "SEARCH SAVEDSINCE 1-Jan-2000", r"\* SEARCH 1 2\r\n"),
    ask("b5", "SEARCH SAVEDBEFORE 1-Jan-2000", r"\* SEARCH\r\n"),
    ask("b6", "SEARCH EMAILID Mnothing", r"\* SEARCH\r\n"),
    ask("b7", "SEARCH OR THREADID Tnothing SAVEDON 1-Jan-2000", r"\* SEARCH\r\n"),
    ask("b8", "SEARCH EMAILID M.1", status="BAD"),
    ask("b9", "FETCH 1 (EMAILID BODY.PEEK[HEADER.FIELDS (SUBJECT)])", r"\* 1 FETCH \(EMAILID"),
    (b"z1 LOGOUT\r\n", [r"\* BYE", r"z1 OK"]),
]  # fmt: skip


@pytest.mark.slow
def test_objectid_and_savedate_whole_and_byte_by_byte(tmp_path: Path) -> None:
    whole = run_both_ways(tmp_path, SCRIPT)
    assert 'FETCH (EMAILID (N) THREADID (N) SAVEDATE "N")' in whole


def _code(response: list[bytes | tuple[bytes, bytes] | None]) -> str:
    found = re.search(
        rb"\[MAILBOXID \(([\w-]+)\)\]", b" ".join(r for r in response if isinstance(r, bytes))
    )
    assert found, response
    return found.group(1).decode()


def _status_id(client: imaplib.IMAP4, name: str) -> str:
    typ, data = client.status(name, "(MAILBOXID)")
    found = re.search(rb"\(MAILBOXID \(([\w-]+)\)\)", data[0] or b"")  # type: ignore[arg-type]
    assert typ == "OK" and found, data
    return found.group(1).decode()


def _fetch(client: imaplib.IMAP4, uid: str, item: str) -> str:
    typ, data = client.uid("FETCH", uid, f"({item})")
    assert typ == "OK" and data and isinstance(data[0], bytes), data
    found = re.search(rf'{item} (\(([\w-]+)\)|"[^"]+"|NIL)'.encode(), data[0])
    assert found, data
    return (found.group(2) or found.group(1)).decode()


def test_objectid_and_savedate_with_imaplib(tmp_path: Path) -> None:
    server = start(tmp_path, "imaplib")
    try:
        with imaplib.IMAP4("127.0.0.1", server.imap_port) as client:
            client.login(ALICE, PASSWORD)
            assert "OBJECTID" in client.capabilities and "SAVEDATE" in client.capabilities
            # rfc8474:4.1 CREATE tells the id; STATUS and SELECT tell the same.
            typ, data = client.create("Projects")
            created = _code(data)
            assert typ == "OK" and OBJECTID.match(created)
            assert _status_id(client, "Projects") == created
            client.select("Projects")
            assert client.response("MAILBOXID")[1] == [f"({created})".encode()]
            client.unselect()
            # rfc8474:4: RENAME keeps it; a mailbox made again under the old
            # name gets a new one, also after DELETE.
            assert client.rename("Projects", "Done")[0] == "OK"
            assert _status_id(client, "Done") == created
            again = _code(client.create("Projects")[1])
            assert again != created
            client.delete("Done")
            assert _code(client.create("Done")[1]) not in (created, again)

            # rfc8514:3 SAVEDATE after APPEND: now, not the internal date given.
            message = _message("objects", "objects@x.test")
            old = imaplib.Time2Internaldate(time.time() - 86_400 * 400)
            assert client.append("INBOX", None, old, message)[0] == "OK"
            client.select("INBOX")
            typ, found = client.uid("SEARCH", "HEADER", "Message-ID", "objects@x.test")
            uid = found[0].decode().split()[-1]  # type: ignore[union-attr]
            saved = _fetch(client, uid, "SAVEDATE")
            saved_at = datetime.datetime.strptime(saved.strip('"'), "%d-%b-%Y %H:%M:%S %z")
            assert abs(saved_at.timestamp() - time.time()) < 120
            today = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
            since = client.uid("SEARCH", "SAVEDSINCE", today.strftime("%d-%b-%Y"))[1][0]
            assert uid in since.decode().split()  # type: ignore[union-attr]
            assert (
                uid not in client.uid("SEARCH", "SINCE", today.strftime("%d-%b-%Y"))[1][0].decode()
            )  # type: ignore[union-attr]

            # rfc8474:6 SEARCH EMAILID finds it; rfc8474:5.1 MOVE and COPY keep it.
            email = _fetch(client, uid, "EMAILID")
            thread = _fetch(client, uid, "THREADID")
            assert client.uid("SEARCH", "EMAILID", email)[1] == [uid.encode()]
            assert client.uid("COPY", uid, "Archive")[0] == "OK"
            assert client.uid("MOVE", uid, "Projects")[0] == "OK"
            for name in ("Archive", "Projects"):
                client.select(name)
                typ, there = client.uid("SEARCH", "EMAILID", email)
                [moved] = there[0].decode().split()  # type: ignore[union-attr]
                assert _fetch(client, moved, "EMAILID") == email
                assert _fetch(client, moved, "THREADID") == thread
                assert client.uid("SEARCH", "THREADID", thread)[1] == [moved.encode()]
            client.logout()
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
