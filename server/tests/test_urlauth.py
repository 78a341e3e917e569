"""URLAUTH (rfc4467): the token and URL parts (estafeta.auth.urlauth), the
keys in accounts.db, the parser's RESETKEY / GENURLAUTH / URLFETCH (fed
whole and in every chunk size: test_imap_parser.one), and the commands
against a real server over a socket with imaplib."""

from __future__ import annotations

import imaplib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import argon2
import pytest
from test_imap_parser import error_of, one
from test_imap_transcript import ALICE, start

from conftest import DOMAIN, PASSWORD
from estafeta.auth import Accounts, urlauth
from estafeta.imap import commands as c
from estafeta.imap.parser import Command

RUMP = "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred"
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
NOW = datetime(2026, 12, 5, tzinfo=UTC)


def test_the_token_is_the_versioned_hmac_of_the_rump() -> None:
    key = bytes(32)
    token = urlauth.token(key, RUMP)
    assert re.fullmatch(r"1[0-9a-f]{64}", token)
    full = urlauth.split_full(f"{RUMP}:internal:{token}")
    assert full.rump.text == RUMP and full.mechanism == "INTERNAL"
    assert full.rump.access == urlauth.Access("submit", "fred")
    assert full.rump.base == "imap://joe@example.com/INBOX/;uid=20/;section=1.2"
    assert urlauth.valid(key, full, NOW)
    assert not urlauth.valid(bytes([1]) * 32, full, NOW)  # another key
    assert not urlauth.valid(None, full, NOW)  # no key
    # rfc4467:6 the rump is taken as it is: no case folding
    changed = urlauth.split_full(f"{RUMP.replace('INBOX', 'inbox')}:internal:{token}")
    assert not urlauth.valid(key, changed, NOW)
    other = urlauth.split_full(f"{RUMP}:xsample:{token}")
    assert not urlauth.valid(key, other, NOW)  # only INTERNAL


def test_expire_and_access_identifiers() -> None:
    rump = "imap://a@b/INBOX/;uid=1;EXPIRE=2026-12-04T10:00:00Z;URLAUTH=user+a%40b"
    parts = urlauth.split_rump(rump)
    assert parts.access == urlauth.Access("user", "a@b")
    assert parts.expire == datetime(2026, 12, 4, 10, tzinfo=UTC)
    assert parts.base == "imap://a@b/INBOX/;uid=1"
    full = urlauth.split_full(f"{rump}:internal:{urlauth.token(b'k' * 32, rump)}")
    assert not urlauth.valid(b"k" * 32, full, NOW)  # expired
    assert urlauth.valid(b"k" * 32, full, NOW - timedelta(days=2))
    for bad in (
        "imap://a@b/INBOX/;uid=1",  # no ;URLAUTH=
        "imap://a@b/INBOX/;uid=1;URLAUTH=someone",
        "imap://a@b/INBOX/;uid=1;URLAUTH=user+",
        "imap://a@b/INBOX/;uid=1;EXPIRE=yesterday;URLAUTH=authuser",
        "imap://a@b/INBOX/;uid=1;EXPIRE=2026-12-04T10:00:00;URLAUTH=authuser",  # no offset
    ):
        with pytest.raises(urlauth.BadUrlAuth):
            urlauth.split_rump(bad)
    with pytest.raises(urlauth.BadUrlAuth):
        urlauth.split_full("imap://a@b/INBOX/;uid=1;URLAUTH=authuser:internal:abc")  # short


def test_who_may_use_a_url() -> None:
    fred = urlauth.Access("submit", "fred@x")
    assert urlauth.may_fetch(fred, user=None, submitter="Fred@x")
    assert not urlauth.may_fetch(fred, user="fred@x")  # an IMAP session is no submit entity
    assert not urlauth.may_fetch(fred, user=None, submitter="joe@x")
    joe = urlauth.Access("user", "joe@x")
    assert urlauth.may_fetch(joe, user="joe@x") and not urlauth.may_fetch(joe, user="ann@x")
    assert urlauth.may_fetch(urlauth.Access("authuser"), user="ann@x")
    assert not urlauth.may_fetch(urlauth.Access("anonymous"), user=None)


def test_keys_belong_to_one_mailbox_incarnation_and_reset(tmp_path: Path) -> None:
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
        assert db.urlauth_key(ALICE, 1, 100) is None
        key = db.urlauth_key(ALICE, 1, 100, create=True)
        assert key is not None and len(key) == 32
        assert db.urlauth_key(ALICE, 1, 100, create=True) == key  # made once
        assert db.urlauth_key(ALICE, 1, 101) is None  # the mailbox made again
        db.urlauth_reset(ALICE, (1, 100))
        assert db.urlauth_key(ALICE, 1, 100) not in (None, key)
        db.urlauth_reset(ALICE)
        assert db.urlauth_key(ALICE, 1, 100) is None
        db.urlauth_key(ALICE, 2, 7, create=True)
        db.delete_user(ALICE)
        db.add_user(ALICE, PASSWORD)
        assert db.urlauth_key(ALICE, 2, 7) is None  # gone with the account


def test_parser_urlauth_commands() -> None:
    assert one(b"a RESETKEY\r\n") == Command("a", "RESETKEY", c.ResetKey(None))
    assert one(b"a resetkey INBOX internal XSAMPLE\r\n").args == c.ResetKey(
        "INBOX", ("INTERNAL", "XSAMPLE")
    )
    assert one(f'a GENURLAUTH "{RUMP}" INTERNAL\r\n'.encode()).args == c.GenUrlAuth(
        ((RUMP, "INTERNAL"),)
    )
    two = f'a GENURLAUTH "{RUMP}" internal {{{len(RUMP)}+}}\r\n{RUMP} INTERNAL\r\n'
    assert one(two.encode()).args == c.GenUrlAuth(((RUMP, "INTERNAL"), (RUMP, "INTERNAL")))
    assert one(b'a URLFETCH "imap://x/y" imap://z\r\n').args == c.UrlFetch(
        ("imap://x/y", "imap://z")
    )
    for bad in (
        b"a GENURLAUTH\r\n",
        f'a GENURLAUTH "{RUMP}"\r\n'.encode(),  # no mechanism
        f'a GENURLAUTH "{RUMP}" in/ternal\r\n'.encode(),
        b"a URLFETCH\r\n",
        b"a URLFETCH " + b" ".join([b"u"] * 101) + b"\r\n",  # bounded
    ):
        assert error_of(bad).tag == "a"


def _command(client: imaplib.IMAP4, name: str, *args: str) -> tuple[str, list[bytes]]:
    typ, _ = client._simple_command(name, *args)  # type: ignore[attr-defined]
    return typ, client.untagged_responses.pop(name, [])  # type: ignore[return-value]


def test_genurlauth_urlfetch_and_resetkey_over_a_socket(tmp_path: Path) -> None:
    server = start(tmp_path, "urlauth")
    bob = f"bob@{DOMAIN}"
    server.add_user(bob)
    try:
        with (
            imaplib.IMAP4("127.0.0.1", server.imap_port) as alice,
            imaplib.IMAP4("127.0.0.1", server.imap_port) as other,
        ):
            alice.login(ALICE, PASSWORD)
            other.login(bob, PASSWORD)
            assert b"URLAUTH" in alice.capability()[1][0]
            alice.select("INBOX")
            assert alice.untagged_responses.get("OK") and any(
                b"URLMECH INTERNAL" in line for line in alice.untagged_responses["OK"]
            )
            uid = alice.uid("SEARCH", "ALL")[1][0].split()[0].decode()
            # rfc5092:3.2 an "@" in the user name is percent-encoded
            owner, reader = quote(ALICE, safe=""), quote(bob, safe="")
            base = f"imap://{owner}@127.0.0.1/INBOX/;uid={uid}"
            urls = {}
            for access in ("user+" + owner, "authuser", "submit+" + owner, "user+" + reader):
                typ, data = _command(alice, "GENURLAUTH", f'"{base};urlauth={access}"', "INTERNAL")
                assert typ == "OK", data
                found = re.fullmatch(rb'"(.*;urlauth=[^:]+:internal:1[0-9a-f]{64})"', data[0])
                assert found, data
                urls[access] = found.group(1).decode()
            # rfc4467 GENURLAUTH: BAD without an access identifier, an owner, a mailbox
            for rump in (base, "imap://127.0.0.1/INBOX/;uid=1;urlauth=authuser",
                         f"imap://{owner}@127.0.0.1/Nope/;uid=1;urlauth=authuser",
                         f"imap://{reader}@127.0.0.1/INBOX/;uid=1;urlauth=authuser"):  # fmt: skip
                with pytest.raises(imaplib.IMAP4.error):
                    _command(alice, "GENURLAUTH", f'"{rump}"', "INTERNAL")

            def fetched(client: imaplib.IMAP4, url: str) -> bytes | None:
                typ, data = _command(client, "URLFETCH", f'"{url}"')
                assert typ == "OK"
                item = data[0]
                if isinstance(item, tuple):
                    return item[1]
                assert item.endswith(b" NIL"), item
                return None

            whole = fetched(alice, urls["user+" + owner])
            assert whole is not None and b"Subject: first" in whole
            assert fetched(other, urls["user+" + owner]) is None  # not bob's
            assert fetched(other, urls["authuser"]) == whole  # any logged-in user
            assert fetched(other, urls["user+" + reader]) == whole
            assert fetched(alice, urls["submit+" + owner]) is None  # for submission only
            tampered = urls["authuser"][:-1] + ("0" if urls["authuser"][-1] != "0" else "1")
            assert fetched(other, tampered) is None
            # RESETKEY INBOX revokes every URL made with the old key
            typ, _ = alice._simple_command("RESETKEY", "INBOX")  # type: ignore[attr-defined]
            assert typ == "OK"
            assert fetched(other, urls["authuser"]) is None
            # a new URL works; RESETKEY without a mailbox revokes it too
            _, data = _command(alice, "GENURLAUTH", f'"{base};urlauth=authuser"', "INTERNAL")
            fresh = data[0].strip(b'"').decode()
            assert fetched(other, fresh) == whole
            assert alice._simple_command("RESETKEY")[0] == "OK"  # type: ignore[attr-defined]
            assert fetched(other, fresh) is None
            # a bare user name at the URL's host is the account user@host (as
            # hosted servers and the peer suite name users)
            local, domain = ALICE.split("@")
            bare = f"imap://{local}@{domain}/INBOX/;uid={uid};urlauth=authuser"
            _, data = _command(alice, "GENURLAUTH", f'"{bare}"', "INTERNAL")
            assert fetched(other, data[0].strip(b'"').decode()) == whole
            # a section of the message

            _, data = _command(
                alice, "GENURLAUTH", f'"{base}/;section=HEADER;urlauth=authuser"', "INTERNAL"
            )
            header = fetched(other, data[0].strip(b'"').decode())
            assert header is not None and header.endswith(b"\r\n\r\n") and len(header) < len(whole)
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
