"""Issue 14 item 2: one short LIST froze every protocol.

The attack: ``a LIST "" "%%%...%X"`` with 70 "%" (81 octets) ran 273 s in
the event loop, because the pattern became a backtracking regex
(``[^/]*`` 70 times, then "X", against every mailbox name). Meanwhile SMTP
greetings and other users' logins waited. LSUB, "*" and patterns with
literal text between the wildcards did the same.

Each test sends one such command and, while it runs, checks that another
client gets its SMTP greeting and bob his IMAP LOGIN within a second; the
answer itself must come within a few seconds. On the old code the probe
times out after one second, so each test fails fast.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.security.conftest import (
    ALICE,
    BOB,
    PASSWORD,
    Client,
    MailServer,
    imap_login,
    new_source,
    start_server,
)

# What the issue asks: the other client is served within 1 s, the LIST
# answered "in under a few seconds".
PROBE_SECONDS = 1.0
ANSWER_SECONDS = 5.0
# A name that literal text between wildcards can match in many ways.
LONG_A = "a" * 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = start_server(tmp_path_factory.mktemp("list"), auth_config="allow_plaintext = true\n")
    try:
        yield server
    finally:
        server.stop()


def login(server: MailServer, user: str) -> Client:
    return imap_login(server, user, timeout=ANSWER_SECONDS)


def alice_with_long_name(server: MailServer) -> Client:
    client = login(server, ALICE)
    _, tagged = client.imap("C", f"CREATE {LONG_A}")
    assert tagged.startswith((b"C OK", b"C NO [ALREADYEXISTS]")), tagged
    return client


def probe_others(server: MailServer) -> None:
    """Another client's SMTP greeting and bob's IMAP LOGIN, each within a second."""
    started = time.monotonic()
    with Client(server.port("smtp"), source=new_source()) as smtp:
        greeting = smtp.line(timeout=PROBE_SECONDS)
    assert greeting.startswith(b"220 "), greeting
    assert time.monotonic() - started < PROBE_SECONDS
    started = time.monotonic()
    with Client(server.port("imap"), source=new_source()) as imap:
        assert imap.line(timeout=PROBE_SECONDS).startswith(b"* OK")
        imap.send(f'B LOGIN {BOB} "{PASSWORD}"\r\n'.encode())
        reply = imap.line(timeout=PROBE_SECONDS)
    assert reply.startswith(b"B OK"), reply
    # Password hashing takes its time too: the whole login within 2 s.
    assert time.monotonic() - started < 2 * PROBE_SECONDS


def run_while_probing(server: MailServer, client: Client, command: bytes) -> list[bytes]:
    """Send ``command`` (tag X), probe the others while it runs, and return
    its untagged lines; the tagged reply must be OK within ANSWER_SECONDS."""
    started = time.monotonic()
    client.send(b"X " + command + b"\r\n")
    time.sleep(0.1)  # let the server start on it
    probe_others(server)
    untagged, tagged = client.until_tagged("X")
    assert tagged.startswith(b"X OK"), tagged
    assert time.monotonic() - started < ANSWER_SECONDS
    return untagged


PERCENTS = b"%" * 70 + b"X"
LIST_INBOX = b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # The 81 octets; "INBOX" ends in X, so it matches.
        (b'LIST "" "' + PERCENTS + b'"', [LIST_INBOX]),
        (b'LSUB "" "' + PERCENTS + b'"', [b'* LSUB () "/" "INBOX"\r\n']),
        (b'LIST "" "' + b"*%" * 35 + b'X"', [LIST_INBOX]),  # stars and percents
        (b'LIST "' + b"%" * 35 + b'" "' + b"%" * 35 + b'Z"', []),  # in the reference too
        (b'LIST "" "' + b"a%" * 35 + b'Z"', []),  # literal text between them
        (b'LSUB "" "' + b"*a" * 35 + b'Z"', []),
    ],
    ids=["list-percent", "lsub-percent", "list-star", "list-reference", "list-text", "lsub-text"],
)
def test_pathological_pattern_does_not_freeze(
    server: MailServer, command: bytes, expected: list[bytes]
) -> None:
    with alice_with_long_name(server) as client:
        assert run_while_probing(server, client, command) == expected


@pytest.mark.timeout(60)
def test_matching_pattern_still_lists(server: MailServer) -> None:
    """A pattern of the same shape that matches: the name comes back."""
    with alice_with_long_name(server) as client:
        untagged = run_while_probing(server, client, b'LIST "" "' + b"a%" * 35 + b'"')
    assert untagged == [f'* LIST (\\HasNoChildren) "/" "{LONG_A}"\r\n'.encode()]


@pytest.mark.timeout(60)
def test_many_patterns_in_one_list_extended(server: MailServer) -> None:
    """rfc5258 LIST with 64 patterns (the most allowed), each pathological."""
    patterns = b" ".join(b'"' + b"%" * 50 + b"*a" * 5 + b"Z%d" % i + b'"' for i in range(64))
    with alice_with_long_name(server) as client:
        assert run_while_probing(server, client, b'LIST "" (' + patterns + b")") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("patterns", "why"),
    [
        (b" ".join(b'"x%d%%"' % i for i in range(65)), b"more than 64 patterns"),
        (b'"' + b"%" * 1025 + b'"', b"pattern longer than 1024 characters"),
        (
            b" ".join(b'"' + b"%" * 1000 + b'%d"' % i for i in range(5)),
            b"patterns longer than 4096 characters in all",
        ),
    ],
    ids=["count", "length", "total"],
)
def test_patterns_beyond_the_bounds_get_no_limit(
    server: MailServer, patterns: bytes, why: bytes
) -> None:
    """rfc5530:3 LIMIT, at once, and the session goes on."""
    with alice_with_long_name(server) as client:
        client.send(b'X LIST "" (' + patterns + b")\r\n")
        probe_others(server)
        untagged, tagged = client.until_tagged("X")
        assert untagged == []
        assert tagged.startswith(b"X NO [LIMIT] ") and why in tagged, tagged
        untagged, tagged = client.imap("Y", 'LIST "" INBOX')
        assert tagged.startswith(b"Y OK")
        assert untagged == [LIST_INBOX]


@pytest.mark.timeout(120)
def test_big_account_is_listed_off_the_event_loop(server: MailServer) -> None:
    """300 mailboxes of 200 characters and 64 patterns: enough work that
    the server matches on a thread of its own; the others are still served
    within a second, and the answer is right."""
    carol = "carol@example.test"
    server.instance.add_user(carol)
    client = login(server, carol)
    long_names = [f"{'a' * 190}{n:04d}" for n in range(300)]
    for n, name in enumerate(long_names):
        _, tagged = client.imap(f"C{n}", f"CREATE {name}")
        assert tagged.startswith(f"C{n} OK".encode()), tagged
    patterns = [b'"' + b"%" * 50 + b"*a" * 5 + b"Z%d" % i + b'"' for i in range(63)]
    patterns.append(b'"*0042"')
    with client:
        untagged = run_while_probing(server, client, b'LIST "" (' + b" ".join(patterns) + b")")
    assert untagged == [f'* LIST (\\HasNoChildren) "/" "{long_names[42]}"\r\n'.encode()]
