"""Issue 14 item 3: one RENAME broke an account for good.

The attack: ``RENAME Stuff "A"x300``, or a 60-character RENAME of a parent
whose child has a 200-character name. The Maildir++ folder holds every
level of a name in one directory name (".A.B.C"), which then exceeds
NAME_MAX (255 octets): the server answered NO [SERVERBUG] but had committed
the rename, and from then on the messages were unreadable, STORE and CREATE
said NO but applied, inbound mail got 451, after a restart the account could
not log in and ``estafeta reindex`` crashed with ENAMETOOLONG. CREATE of a
1000-octet or a 90-CJK-character name gave SERVERBUG and a traceback.

Each test makes one such request over IMAP, expects NO [LIMIT] (rfc5530:3),
then checks that nothing changed and everything still works: LIST, SELECT
and FETCH, truthful STORE and CREATE, an inbound message (250, delivered),
a restart, ``estafeta reindex``, and no traceback in the server log. The
last test builds the broken state the old code left (its index rows and
journal entries, with its own logic) and checks that the account opens
again, with the mailbox under its old name and its messages readable.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.imap.parser import encode_mutf7
from estafeta.store import maildir
from tests.security.conftest import (
    ALICE,
    MailServer,
    imap_login,
    new_source,
    smtp_client,
    start_server,
)

LONG_CHILD = "C" * 200
NO_LIMIT = re.compile(rb"^\w+ NO \[LIMIT\] mailbox name too long: its folder would take \d+ octets")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailServer]:
    server = start_server(tmp_path, auth_config="allow_plaintext = true\n")
    try:
        yield server
    finally:
        server.stop()


class Imap:
    """A logged-in raw IMAP connection that checks every reply."""

    def __init__(self, server: MailServer) -> None:
        self.client = imap_login(server, ALICE)
        self.count = 0

    def send(self, command: str | bytes) -> tuple[list[bytes], bytes]:
        self.count += 1
        tag = f"t{self.count}"
        return self.client.imap(tag, command)

    def ok(self, command: str | bytes) -> list[bytes]:
        untagged, tagged = self.send(command)
        assert b" OK " in tagged, (command, tagged)
        return untagged

    def no(self, command: str | bytes) -> bytes:
        _untagged, tagged = self.send(command)
        assert b" NO " in tagged, (command, tagged)
        return tagged

    def names(self) -> set[str]:
        lines = self.ok('LIST "" "*"')
        return {line.rsplit(b'"/" ', 1)[1].strip().strip(b'"').decode() for line in lines}

    def bodies(self, mailbox: str) -> list[bytes]:
        """The text of each message (one line each) of ``mailbox``."""
        self.ok(f'SELECT "{mailbox}"')
        lines = self.ok("FETCH 1:* (BODY.PEEK[TEXT])")
        return [
            body.strip()
            for line, body in itertools.pairwise(lines)
            if line.startswith(b"* ") and line.endswith(b"}\r\n")
        ]

    def close(self) -> None:
        self.client.close()


def append(imap: Imap, mailbox: str, body: str) -> None:
    message = f"Subject: {body}\r\n\r\n{body}\r\n".encode()
    imap.client.send(f'A APPEND "{mailbox}" {{{len(message)}+}}\r\n'.encode() + message + b"\r\n")
    _, tagged = imap.client.until_tagged("A")
    assert tagged.startswith(b"A OK"), tagged


def deliver(server: MailServer, body: str) -> None:
    with smtp_client(server.port("smtp"), source=new_source()) as smtp:
        assert smtp.smtp("MAIL FROM:<someone@elsewhere.test>").startswith(b"250")
        assert smtp.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250")
        assert smtp.smtp("DATA").startswith(b"354")
        reply = smtp.smtp(f"Subject: {body}\r\n\r\n{body}\r\n.")
        assert reply.startswith(b"250"), reply


def inbox_count(imap: Imap) -> int:
    [line] = imap.ok("STATUS INBOX (MESSAGES)")
    return int(re.search(rb"MESSAGES (\d+)", line).group(1))  # type: ignore[union-attr]


def setup_stuff(server: MailServer) -> Imap:
    """alice with "Stuff" (two messages) and "P/CCC..." (one message)."""
    imap = Imap(server)
    imap.ok("CREATE Stuff")
    append(imap, "Stuff", "first")
    append(imap, "Stuff", "second")
    imap.ok(f'CREATE "P/{LONG_CHILD}"')
    append(imap, f"P/{LONG_CHILD}", "child")
    return imap


def check_intact(server: MailServer, imap: Imap, names: set[str]) -> None:
    """Nothing changed, and the account works in every way."""
    assert imap.names() == names
    assert imap.bodies("Stuff") == [b"first", b"second"]
    assert imap.bodies(f"P/{LONG_CHILD}") == [b"child"]
    # STORE and CREATE: OK, and they did what they said.
    imap.ok('SELECT "Stuff"')
    imap.ok("STORE 1 +FLAGS (\\Flagged)")
    assert b"\\Flagged" in imap.ok("FETCH 1 (FLAGS)")[0]
    imap.ok("CREATE Fresh")
    assert imap.names() == names | {"Fresh"}
    imap.ok("DELETE Fresh")
    # Inbound mail is accepted and lands.
    before = inbox_count(imap)
    deliver(server, "inbound")
    assert inbox_count(imap) == before + 1
    imap.close()
    # A restart, and reindex while stopped, then the same again.
    server.instance.stop()
    result = server.instance.cli("reindex", ALICE)
    assert result.returncode == 0 and "reindexed" in result.stdout
    server.instance.start()
    again = Imap(server)
    assert again.names() == names
    assert again.bodies("Stuff") == [b"first", b"second"]
    assert again.bodies(f"P/{LONG_CHILD}") == [b"child"]
    again.close()
    assert "Traceback" not in server.log_text()


def test_rename_to_300_characters(server: MailServer) -> None:
    imap = setup_stuff(server)
    names = imap.names()
    assert NO_LIMIT.match(imap.no(f'RENAME Stuff "{"A" * 300}"'))
    check_intact(server, imap, names)


def test_rename_parent_of_a_long_child(server: MailServer) -> None:
    """P fits, P/CCC... fits, but N60/CCC... would not: the child's new
    name is checked too, before anything moves."""
    imap = setup_stuff(server)
    names = imap.names()
    tagged = imap.no(f'RENAME P "{"N" * 60}"')
    assert NO_LIMIT.match(tagged) and b"262 octets" in tagged, tagged
    check_intact(server, imap, names)


@pytest.mark.parametrize(
    "name",
    [
        "x" * 1000,
        "\u6f22" * 90,  # 270 octets of UTF-8
        "a/" * 130 + "b",  # every level is short, the folder is not
        "Stuff/" + "\u00e9" * 125,  # escapes and multi-octet characters count
    ],
    ids=["1000-octets", "90-cjk", "deep", "utf8-child"],
)
def test_create_too_long(server: MailServer, name: str) -> None:
    imap = setup_stuff(server)
    names = imap.names()
    assert NO_LIMIT.match(imap.no(f'CREATE "{encode_mutf7(name)}"'))
    # No superior of it was created either.
    assert imap.names() == names
    check_intact(server, imap, names)


def test_longest_name_that_fits_works(server: MailServer) -> None:
    """The limit is the folder's 255 octets, not less: ".A.B" for A/B."""
    imap = setup_stuff(server)
    names = imap.names()
    longest = "P/" + "D" * 252  # ".P." + 252 = 255 octets
    imap.ok(f'CREATE "{longest}"')
    assert NO_LIMIT.match(imap.no(f'CREATE "{longest}D"'))
    assert imap.names() == names | {longest}
    imap.ok(f'RENAME "{longest}" "Q/{"D" * 252}"')
    assert NO_LIMIT.match(imap.no(f'RENAME "Q/{"D" * 252}" "QQ/{"D" * 252}"'))
    assert imap.names() == names | {"Q", f"Q/{'D' * 252}"}
    imap.close()


# -- what fc9a17d left behind -------------------------------------------------------


def old_rename(conn: sqlite3.Connection, old: str, new: str) -> None:
    """fc9a17d's store.operations.rename_mailbox, the committed part: the
    rows of the mailbox and its inferiors get the new names and folders,
    their messages the new paths, and the journal a 'rename' per folder."""
    conn.execute("BEGIN IMMEDIATE")
    boxes = conn.execute(
        "SELECT id, name, dir FROM mailboxes WHERE name = ? OR name LIKE ? ORDER BY name",
        (old, old + "/%"),
    ).fetchall()
    for box_id, name, directory in boxes:
        new_name = new + name[len(old) :]
        new_dir = maildir.mailbox_dir(new_name)
        conn.execute(
            "UPDATE mailboxes SET name = ?, dir = ? WHERE id = ?", (new_name, new_dir, box_id)
        )
        conn.execute(
            "UPDATE messages SET file = ? || substr(file, ?) WHERE mailbox_id = ?",
            (new_dir, len(directory) + 1, box_id),
        )
        conn.execute("INSERT INTO journal (op, a, b) VALUES ('rename', ?, ?)", (directory, new_dir))
    conn.execute("COMMIT")


def old_replay(conn: sqlite3.Connection, account: Path) -> None:
    """fc9a17d's replay_journal: the renames in order, until one fails
    (then the exception went to the client as SERVERBUG, entries kept)."""
    for a, b in conn.execute("SELECT a, b FROM journal WHERE op = 'rename' ORDER BY id"):
        source, target = account / a, account / b
        try:
            if source.exists() and not target.exists():
                os.rename(source, target)
        except OSError as exc:
            assert exc.errno == errno.ENAMETOOLONG
            return
    raise AssertionError("the old replay was expected to fail")


def test_account_broken_by_an_older_version_opens_again(server: MailServer) -> None:
    imap = setup_stuff(server)
    imap.close()
    instance = server.instance
    instance.stop()
    account = instance.account_dir(ALICE)
    conn = sqlite3.connect(account / "index.db", isolation_level=None)
    # The index as fc9a17d had it (schema 3), then its two broken renames:
    # RENAME P N*60 moved .P, then stopped at the child; RENAME Stuff A*300
    # stopped at the child's entry again and never reached its own.
    conn.execute("DROP TABLE IF EXISTS pending")  # schema 7's addition
    conn.execute("DROP INDEX IF EXISTS messages_sysflags")  # schema 5's additions
    for column in ("sysflags", "s_subject", "s_hsubject", "s_from", "s_to", "s_cc", "s_bcc"):
        conn.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    conn.execute("DROP TABLE IF EXISTS meta")
    conn.execute("DROP INDEX IF EXISTS mailboxes_uidvalidity")
    conn.execute("DROP INDEX IF EXISTS mailboxes_special_use")
    conn.execute("PRAGMA user_version=3")
    old_rename(conn, "P", "N" * 60)
    old_replay(conn, account)
    old_rename(conn, "Stuff", "A" * 300)
    old_replay(conn, account)
    assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 3
    assert (account / f".{'N' * 60}").is_dir() and (account / ".Stuff").is_dir()
    conn.close()

    instance.start()
    imap = Imap(server)
    names = imap.names()
    # The impossible renames are undone: old name, old folder, messages there.
    assert {"Stuff", "N" * 60, f"P/{LONG_CHILD}"} <= names
    assert "A" * 300 not in names and f"{'N' * 60}/{LONG_CHILD}" not in names
    assert imap.bodies("Stuff") == [b"first", b"second"]
    assert imap.bodies(f"P/{LONG_CHILD}") == [b"child"]
    imap.close()
    log = server.log_text()
    assert log.count("rename_undone") == 2, log
    conn = sqlite3.connect(account / "index.db")
    assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 0
    conn.close()

    check_intact(server, Imap(server), names)
    # Undone once, logged once: the restarts in check_intact found nothing to do.
    assert server.log_text().count("rename_undone") == 2
