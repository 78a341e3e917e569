"""Shared mailboxes over real sockets: two accounts on Shared/info.

The acceptance of the ACL issue (docs/shared-mailboxes.md): each account
keeps its own \\Seen, rights are enforced (a reader cannot EXPUNGE: NO
[NOPERM]), and IDLE in one account sees a message the other appended.
Plus the rfc2342 namespace, rfc4314 ACL commands and rfc8440 LIST-MYRIGHTS.
"""

from __future__ import annotations

import imaplib
import json
import re
import time
from collections.abc import Iterator

import pytest

from conftest import DOMAIN, PASSWORD, Instance, estafeta, free_port
from conftest import imap_raw as raw

ALICE = f"alice@{DOMAIN}"  # lrswipkxtea on Shared/info
BOB = f"bob@{DOMAIN}"  # lrs: a reader
CAROL = f"carol@{DOMAIN}"  # nothing
MESSAGE = b"From: a@example.test\r\nSubject: %s\r\n\r\nbody\r\n"


@pytest.fixture
def server(instance: Instance) -> Iterator[Instance]:
    instance.imap_port = free_port()
    instance.auth_config = "allow_plaintext = true\n"
    instance.write_config()
    for user in (ALICE, BOB, CAROL):
        instance.add_user(user)
    result = instance.cli(
        "shared", "set", "info", "--acl", f"{ALICE}=lrswipkxtea", "--acl", f"{BOB}=lrs", "--json"
    )
    assert json.loads(result.stdout) == {
        "changed": True,
        "created": True,
        "acl": {ALICE: "lrswipkxtea", BOB: "lrs"},
        "addresses": [],
    }
    instance.start()
    yield instance


def connect(server: Instance, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=10)
    client.login(user, PASSWORD)
    return client


def ok(result: tuple[str, list[object]]) -> list[object]:
    status, data = result
    assert status == "OK", data
    return data


def flags(client: imaplib.IMAP4) -> dict[int, set[str]]:
    found = {}
    for item in ok(client.fetch("1:*", "(UID FLAGS)")):
        assert isinstance(item, bytes)
        m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", item)
        assert m is not None, item
        found[int(m[1])] = set(m[2].decode().split()) - {"\\Recent"}
    return found


def select(client: imaplib.IMAP4) -> None:
    """SELECT Shared/info as a reader: imaplib's select() refuses the
    READ-ONLY a reader gets (rfc4314:5.2), so the command goes raw."""
    assert raw(client, "sel", "SELECT Shared/info")[-1].startswith(b"sel OK [READ-ONLY]")
    client.state = "SELECTED"


def append(client: imaplib.IMAP4, subject: bytes, flag_list: str = "") -> None:
    ok(client.append("Shared/info", flag_list or None, None, MESSAGE % subject))


def test_namespace_list_and_capabilities(server: Instance) -> None:
    bob = connect(server, BOB)
    for cap in ("ACL", "RIGHTS=TEXK", "LIST-MYRIGHTS", "NAMESPACE"):
        assert cap in bob.capabilities, cap
    assert raw(bob, "n1", "NAMESPACE")[0] == b'* NAMESPACE (("" "/")) NIL (("Shared/" "/"))'
    listed = raw(bob, "l1", 'LIST "" "*" RETURN (MYRIGHTS)')
    assert b'* LIST (\\HasNoChildren) "/" "Shared/info"' in listed
    assert b'* MYRIGHTS "Shared/info" "lrs"' in listed  # rfc8440:3
    assert b'* MYRIGHTS "INBOX" "lrswipkxteacd"' in listed
    assert any(b'"/" "Shared"' in line and b"\\NonExistent" in line for line in listed)
    carol = connect(server, CAROL)
    assert not any(b"Shared" in line for line in raw(carol, "l2", 'LIST "" "*"'))
    bob.logout()
    carol.logout()


def test_each_account_keeps_its_own_seen(server: Instance) -> None:
    alice, bob = connect(server, ALICE), connect(server, BOB)
    append(alice, b"one")
    append(alice, b"two", "(\\Seen)")  # Alice's own \Seen, not Bob's
    select(bob)
    assert flags(bob) == {1: set(), 2: set()}
    ok(bob.fetch("1", "(BODY[])"))  # implicit \Seen, Bob has "s"
    assert flags(bob) == {1: {"\\Seen"}, 2: set()}
    ok(alice.select("Shared/info"))
    assert flags(alice) == {1: set(), 2: {"\\Seen"}}
    ok(alice.store("1", "+FLAGS", "(\\Flagged)"))  # common to both
    assert flags(bob) == {1: {"\\Seen", "\\Flagged"}, 2: set()}
    assert ok(bob.search(None, "UNSEEN")) == [b"2"]
    assert ok(alice.search(None, "UNSEEN")) == [b"1"]
    status = ok(bob.status("Shared/info", "(MESSAGES UNSEEN)"))[0]
    assert b"UNSEEN 1" in status  # type: ignore[operator]
    ok(bob.store("2", "+FLAGS", "(\\Seen)"))
    assert flags(alice) == {1: {"\\Flagged"}, 2: {"\\Seen"}}
    alice.logout()
    bob.logout()


def test_rights_are_enforced(server: Instance) -> None:
    alice, bob = connect(server, ALICE), connect(server, BOB)
    append(alice, b"one")
    ok(alice.select("Shared/info"))
    ok(alice.store("1", "+FLAGS", "(\\Deleted)"))
    bob_select = raw(bob, "s1", "SELECT Shared/info")
    assert bob_select[-1].startswith(b"s1 OK [READ-ONLY]")  # rfc4314:5.2: no i, e, w, t
    assert any(b"PERMANENTFLAGS (\\Seen)" in line for line in bob_select)
    # The acceptance: a reader cannot EXPUNGE.
    assert raw(bob, "e1", "EXPUNGE")[-1].startswith(b"e1 NO [NOPERM]")
    assert raw(bob, "e2", "UID EXPUNGE 1")[-1].startswith(b"e2 NO [NOPERM]")
    assert raw(bob, "t1", "STORE 1 -FLAGS (\\Deleted)")[-1].startswith(b"t1 NO [NOPERM]")
    assert raw(bob, "c1", "COPY 1 INBOX")[-1].startswith(b"c1 OK")  # reading out is fine
    assert raw(bob, "m1", "MOVE 1 INBOX")[-1].startswith(b"m1 NO [NOPERM]")
    status, _ = bob.append("Shared/info", None, None, MESSAGE % b"nope")
    assert status == "NO"
    assert raw(bob, "a1", "GETACL Shared/info")[-1].startswith(b"a1 NO [NOPERM]")
    assert raw(bob, "a2", f"SETACL Shared/info {BOB} +a")[-1].startswith(b"a2 NO [NOPERM]")
    assert raw(bob, "k1", "CREATE Shared/info/mine")[-1].startswith(b"k1 NO [NOPERM]")
    assert raw(bob, "x1", "DELETE Shared/info")[-1].startswith(b"x1 NO [NOPERM]")
    # CLOSE without "e" expunges nothing and says OK (rfc4314:4).
    assert raw(bob, "z1", "CLOSE")[-1].startswith(b"z1 OK")
    assert flags(alice) == {1: {"\\Deleted"}}
    ok(alice.expunge())
    assert ok(alice.search(None, "ALL")) == [b""]
    # Without any right the mailbox does not exist (rfc4314:6).
    carol = connect(server, CAROL)
    assert raw(carol, "s2", "SELECT Shared/info")[-1].startswith(b"s2 NO [NONEXISTENT]")
    assert raw(carol, "r1", "MYRIGHTS Shared/info")[-1].startswith(b"r1 NO [NONEXISTENT]")
    for client in (alice, bob, carol):
        client.logout()


def test_idle_sees_the_other_accounts_append(server: Instance) -> None:
    alice, bob = connect(server, ALICE), connect(server, BOB)
    append(alice, b"before")
    select(bob)
    bob.send(b"i1 IDLE\r\n")
    assert bob.readline().startswith(b"+ ")
    time.sleep(0.2)
    append(alice, b"while bob idles")
    assert bob.readline().rstrip() == b"* 2 EXISTS"
    bob.send(b"DONE\r\n")
    rest = [bob.readline() for _ in range(2)]
    assert rest[0] == b"* 2 RECENT\r\n"  # an IMAP4rev1 session (rfc3501:7.3.2)
    assert rest[1].startswith(b"i1 OK")
    assert flags(bob) == {1: set(), 2: set()}
    alice.logout()
    bob.logout()


def test_acl_commands(server: Instance) -> None:
    alice, bob = connect(server, ALICE), connect(server, BOB)
    mine = raw(alice, "r1", "MYRIGHTS Shared/info")[0]
    assert mine == b'* MYRIGHTS "Shared/info" "lrswipkxteacd"'
    acl = raw(alice, "g1", "GETACL Shared/info")
    assert acl[0] == f'* ACL "Shared/info" "{ALICE}" "lrswipkxteacd" "{BOB}" "lrs"'.encode()
    # rfc4314:3.1: "d" stands for x, t and e; "+" adds.
    assert raw(alice, "s1", f"SETACL Shared/info {BOB} +wid")[-1].startswith(b"s1 OK")
    assert raw(bob, "r2", "MYRIGHTS Shared/info")[0] == b'* MYRIGHTS "Shared/info" "lrswixted"'
    assert raw(alice, "s2", f"SETACL Shared/info {BOB} lrQ")[-1].startswith(b"s2 BAD")
    assert raw(alice, "s3", f"SETACL Shared/info {BOB} lrq")[-1].startswith(b"s3 BAD")
    assert raw(alice, "s4", "SETACL Shared/info nobody@other.test lr")[-1].startswith(b"s4 NO")
    rights = raw(alice, "l1", "LISTRIGHTS Shared/info anyone")
    assert rights[0] == b'* LISTRIGHTS "Shared/info" "anyone" "" l r s w i p k x t e a c d'
    assert raw(alice, "d1", f"DELETEACL Shared/info {BOB}")[-1].startswith(b"d1 OK")
    assert raw(bob, "s5", "SELECT Shared/info")[-1].startswith(b"s5 NO [NONEXISTENT]")
    # Personal mailboxes: all rights to the owner, not shareable.
    own = raw(alice, "g2", "GETACL INBOX")[0]
    assert own == f'* ACL "INBOX" "{ALICE}" "lrswipkxteacd"'.encode()
    assert raw(alice, "s6", f"SETACL INBOX {BOB} lr")[-1].startswith(b"s6 NO [CANNOT]")
    # A child inherits its parent's ACL (rfc4314:4 CREATE, "k" on the parent).
    assert raw(alice, "c1", "CREATE Shared/info/2026")[-1].startswith(b"c1 OK")
    acl = raw(alice, "g3", "GETACL Shared/info/2026")
    assert acl[0] == f'* ACL "Shared/info/2026" "{ALICE}" "lrswipkxteacd"'.encode()
    assert raw(alice, "c2", "CREATE Shared/other")[-1].startswith(b"c2 NO [NOPERM]")
    alice.logout()
    bob.logout()


def test_copy_and_move_between_namespaces(server: Instance) -> None:
    alice = connect(server, ALICE)
    ok(alice.append("INBOX", "(\\Seen \\Flagged)", None, MESSAGE % b"mine"))
    ok(alice.select("INBOX"))
    data = ok(alice.copy("1", "Shared/info"))
    assert data == [b"[COPYUID " + data[0][9:]]  # type: ignore[index]
    ok(alice.select("Shared/info"))
    assert flags(alice) == {1: {"\\Seen", "\\Flagged"}}
    bob = connect(server, BOB)
    select(bob)
    assert flags(bob) == {1: {"\\Flagged"}}  # Alice's \Seen stays hers
    assert raw(alice, "m1", "MOVE 1 Archive")[-1].startswith(b"m1 OK")
    assert ok(alice.search(None, "ALL")) == [b""]
    ok(alice.select("Archive"))
    assert flags(alice) == {1: {"\\Seen", "\\Flagged"}}
    alice.logout()
    bob.logout()


def test_cli_is_idempotent(server: Instance) -> None:
    again = server.cli(
        "shared", "set", "info", "--acl", f"{ALICE}=lrswipkxtea", "--acl", f"{BOB}=lrs", "--json"
    )
    assert json.loads(again.stdout)["changed"] is False
    check = server.cli("shared", "set", "info", "--acl", f"{BOB}=lr", "--check", "--json")
    assert json.loads(check.stdout)["changed"] is True
    listed = json.loads(server.cli("shared", "list", "--json").stdout)
    assert listed == [{"name": "info", "acl": {ALICE: "lrswipkxtea", BOB: "lrs"}, "addresses": []}]
    bad = estafeta(server.config, "shared", "set", "info", "--acl", f"{BOB}=lrQ", check=False)
    assert bad.returncode == 2 and "not a right" in bad.stderr
    unknown = estafeta(
        server.config, "shared", "set", "info", "--acl", "dave@example.test=lr", check=False
    )
    assert unknown.returncode == 2 and "no account" in unknown.stderr
    if server.cluster:  # a cluster's index is PostgreSQL's: nothing to rebuild from files
        refused = estafeta(server.config, "shared", "reindex", check=False)
        assert refused.returncode == 2 and "local store only" in refused.stderr
    else:
        assert "reindexed the shared mailboxes" in server.cli("shared", "reindex").stdout
    listed = json.loads(server.cli("shared", "list", "--json").stdout)
    assert listed == [{"name": "info", "acl": {ALICE: "lrswipkxtea", BOB: "lrs"}, "addresses": []}]
    gone = server.cli("shared", "remove", "info", "--json")
    assert json.loads(gone.stdout) == {"changed": True}
    assert json.loads(server.cli("shared", "list", "--json").stdout) == []


def test_search_sort_thread_and_condstore_in_a_shared_mailbox(server: Instance) -> None:
    alice, bob = connect(server, ALICE), connect(server, BOB)
    for subject in (b"beta", b"alpha", b"gamma"):
        append(alice, subject)
    assert raw(bob, "e0", "ENABLE QRESYNC")[-1].startswith(b"e0 OK")
    select(bob)
    ok(bob.store("2", "+FLAGS", "(\\Seen)"))
    assert raw(bob, "s1", "SEARCH SEEN")[0] == b"* SEARCH 2"
    assert raw(bob, "s2", 'SEARCH UNSEEN SUBJECT "a"')[0] == b"* SEARCH 1 3"
    assert raw(bob, "s3", "SEARCH TEXT body")[0] == b"* SEARCH 1 2 3"
    assert raw(bob, "o1", "SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 2 1 3"
    assert raw(bob, "o2", "SORT (SUBJECT) UTF-8 UNSEEN")[0] == b"* SORT 1 3"
    assert raw(bob, "h1", "THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (1)(2)(3)"
    changed = raw(bob, "f1", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
    assert any(b"UID 2" in line and b"\\Seen" in line for line in changed)
    # Alice's change to her own \Seen moves the modseq; Bob is told, flags as his.
    ok(alice.select("Shared/info"))
    ok(alice.store("3", "+FLAGS", "(\\Seen)"))
    told = raw(bob, "n1", "NOOP")
    assert any(b"FETCH" in line and b"UID 3" in line and b"\\Seen" not in line for line in told)
    alice.logout()
    bob.logout()
