"""Issue 14 item 12: lockouts must not lock the real owner out.

The attack: 50 wrong passwords for bob from 5 addresses locked bob out from
every new address for 15 minutes: anyone who knows an address could lock
out its owner roaming on mobile data.

Now one client that keeps failing for one account locks only that (client,
account) pair (``[auth] pair_max_failures``); the account-wide lockout is
kept for distributed guessing (``account_max_failures`` from enough
different clients) and refuses only the account's own password, only to
clients that are not known for it (a recent good login from that address
or its /24); app passwords keep working from anywhere.

Failure delays are turned off so that the file runs in seconds; the
lockout numbers are the defaults (ip 10, pair 5, account 50).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import (
    BOB,
    PASSWORD,
    Client,
    MailServer,
    new_source,
    smtp_client,
    start_server,
)

# The review's run had delays; they only slow the test down.
AUTH = "allow_plaintext = true\ndelay_base = 0\nmax_delay = 0\n"
IMAP_LOCKED = b"NO [UNAVAILABLE] "
POP3_LOCKED = b"-ERR [SYS/TEMP] "
SMTP_LOCKED = b"454 4.7.0 "


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailServer]:
    server = start_server(tmp_path, auth_config=AUTH)
    try:
        yield server
    finally:
        server.stop()


def imap(server: MailServer, source: str, secret: str) -> bytes:
    with Client(server.port("imap"), source=source) as client:
        assert client.line().startswith(b"* OK")
        _, tagged = client.imap("a", f'LOGIN {BOB} "{secret}"')
        return tagged


def pop3(server: MailServer, source: str, secret: str) -> bytes:
    with Client(server.port("pop3"), source=source) as client:
        assert client.line().startswith(b"+OK")
        client.send(f"USER {BOB}\r\n".encode())
        assert client.line().startswith(b"+OK")
        client.send(f"PASS {secret}\r\n".encode())
        return client.line()


def smtp(server: MailServer, source: str, secret: str) -> bytes:
    with smtp_client(server.port("submission"), source=source) as client:
        blob = base64.b64encode(f"\0{BOB}\0{secret}".encode()).decode()
        return client.smtp(f"AUTH PLAIN {blob}")


def logins_everywhere(server: MailServer, source: str, secret: str) -> dict[str, bytes]:
    return {
        "imap": imap(server, source, secret),
        "pop3": pop3(server, source, secret),
        "smtp": smtp(server, source, secret),
    }


def assert_ok(replies: dict[str, bytes]) -> None:
    assert replies["imap"].startswith(b"a OK "), replies
    assert replies["pop3"].startswith(b"+OK "), replies
    assert replies["smtp"].startswith(b"235 "), replies


def assert_locked(replies: dict[str, bytes]) -> None:
    assert replies["imap"].startswith(b"a " + IMAP_LOCKED), replies
    assert replies["pop3"].startswith(POP3_LOCKED), replies
    assert replies["smtp"].startswith(SMTP_LOCKED), replies


def guess(server: MailServer, source: str, count: int) -> list[bytes]:
    """``count`` wrong passwords for bob from ``source`` over IMAP (three a
    connection: the server hangs up after the third failure)."""
    replies: list[bytes] = []
    while len(replies) < count:
        with Client(server.port("imap"), source=source) as client:
            assert client.line().startswith(b"* OK")
            for n in range(min(3, count - len(replies))):
                _, tagged = client.imap(f"g{n}", f'LOGIN {BOB} "guess {len(replies)}"')
                replies.append(tagged)
    return replies


def lockouts(server: MailServer) -> list[str]:
    return re.findall(r"auth_lockout .*", server.log_text())


def test_fifty_wrong_passwords_from_five_addresses(server: MailServer) -> None:
    guesses = [guess(server, new_source(), 10) for _ in range(5)]
    # The owner, from an address never seen, logs in on every protocol.
    assert_ok(logins_everywhere(server, new_source(), PASSWORD))
    for replies in guesses:
        # Five are checked; then that address is done with bob for a while.
        assert all(b" NO [AUTHENTICATIONFAILED] " in r for r in replies[:5]), replies
        assert all(b" NO [UNAVAILABLE] " in r for r in replies[5:]), replies
    found = lockouts(server)
    assert len(found) == 5 and all("scope=pair" in line for line in found), found


def test_distributed_guessing_spares_app_passwords_and_known_addresses(
    server: MailServer,
) -> None:
    # Bob's home (in its own /24, away from the guessers' 127.0.x.y).
    home, neighbour, unknown = "127.202.5.10", "127.202.5.77", "127.203.9.1"
    assert imap(server, home, PASSWORD).startswith(b"a OK ")
    app = server.instance.cli("app-password", "create", BOB, "--name", "phone").stdout.strip()
    assert re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){3}", app), app
    # Ten addresses, five guesses each: account_max_failures (50) from many.
    for _ in range(10):
        replies = guess(server, new_source(), 5)
        assert all(b" NO [AUTHENTICATIONFAILED] " in r for r in replies), replies
    # Bob's password from an address bob never used: refused, with the
    # temporary-failure reply of each protocol...
    assert_locked(logins_everywhere(server, unknown, PASSWORD))
    # ...his app password works from anywhere...
    assert imap(server, "127.204.1.1", app).startswith(b"a OK ")
    assert pop3(server, "127.205.1.1", app).startswith(b"+OK ")
    assert smtp(server, "127.206.1.1", app).startswith(b"235 ")
    # ...and his password from home, or from home's /24 (a phone roaming
    # within its carrier), works.
    assert_ok(logins_everywhere(server, home, PASSWORD))
    assert_ok(logins_everywhere(server, neighbour, PASSWORD))
    # Each lockout logged once: one for the account, one per guessing pair.
    found = lockouts(server)
    assert sum("scope=account" in line for line in found) == 1, found
    assert sum("scope=pair" in line for line in found) == 10, found
    assert PASSWORD not in server.log_text() and app not in server.log_text()
