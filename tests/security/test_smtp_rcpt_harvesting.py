"""Issue 14 item 11: RCPT TO guessing (address harvesting).

The attack: one connection to port 25, MAIL, then RCPT TO guesses, 5,000
of them in 2.2 s; no error limit, no delay. Now, as Postfix does it
(smtpd_soft_error_limit / smtpd_error_sleep_time / smtpd_hard_error_limit):
after ``[limits] smtp_soft_error_limit`` errors each further error reply
waits ``smtp_error_delay``, doubling, and at ``smtp_hard_error_limit``
errors the session gets ``421 4.7.0 <hostname> Error: too many errors``
and is closed (rfc5321:3.8). The delay belongs to the client address, not
the connection: a new connection keeps it, and the delayed replies of one
address come one at a time, so parallel connections do not multiply the
rate. Other addresses, and valid recipients, are not slowed.

Small limits here (2 / 5 / 0.2 s, the delay doubling up to 8x: 1.6 s)
keep this file fast; each test has its own client addresses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import (
    ALICE,
    BOB,
    HOSTNAME,
    Client,
    MailServer,
    new_source,
    smtp_client,
    start_server,
)

SOFT, HARD, DELAY = 2, 5, 0.2
TOO_MANY_ERRORS = f"421 4.7.0 {HOSTNAME} Error: too many errors".encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = start_server(
        Path(tmp_path_factory.mktemp("harvest")),
        limits_config=(
            f"smtp_soft_error_limit = {SOFT}\n"
            f"smtp_hard_error_limit = {HARD}\n"
            f"smtp_error_delay = {DELAY}\n"
        ),
    )
    try:
        yield server
    finally:
        server.stop()


def guesser(server: MailServer, source: str) -> Client:
    client = smtp_client(server.port("smtp"), source=source)
    assert client.smtp("MAIL FROM:<harvester@remote.example>").startswith(b"250 ")
    return client


def guess_until_closed(client: Client, attempts: int = 5000) -> list[bytes]:
    replies = []
    deadline = time.monotonic() + 60
    for n in range(attempts):
        assert time.monotonic() < deadline
        try:
            client.send(f"RCPT TO:<guess{n}@example.test>\r\n".encode())
        except OSError:
            break
        reply = client.reply()
        if not reply:
            break
        replies.append(reply)
        if reply.startswith(b"421 "):
            assert client.line(timeout=5) == b"", "not closed after the 421"
            break
    return replies


def test_one_connection_cannot_guess_5000(server: MailServer, source: str) -> None:
    with guesser(server, source) as client:
        started = time.monotonic()
        replies = guess_until_closed(client)
        elapsed = time.monotonic() - started
    assert [r[:10] for r in replies[:HARD]] == [b"550 5.1.1 "] * HARD, replies[:10]
    assert replies[HARD:] == [TOO_MANY_ERRORS + b"\r\n"], replies[HARD : HARD + 5]
    # Errors 3, 4 and 5 waited 0.2, 0.4 and 0.8 s.
    assert elapsed >= DELAY + 2 * DELAY + 4 * DELAY
    log = server.log_text()
    assert f"smtp_error_limit client={source} errors={HARD}" in log


def test_a_new_connection_keeps_the_delay(server: MailServer) -> None:
    source = new_source()
    with guesser(server, source) as client:
        assert guess_until_closed(client)[-1].startswith(b"421 4.7.0 ")
    with guesser(server, source) as client:
        # Valid recipients are answered at once, even for this client.
        started = time.monotonic()
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        reply = client.smtp("RCPT TO:<guess-again@example.test>")
        waited = time.monotonic() - started
        assert reply.startswith(b"550 5.1.1 "), reply
        assert waited >= DELAY, waited
    tarpitted = [
        line for line in server.log_text().splitlines() if f"smtp_tarpit client={source} " in line
    ]
    assert len(tarpitted) == 1, tarpitted  # one line per client, not per error


def test_parallel_connections_wait_in_line(server: MailServer) -> None:
    """Past the soft limit, four connections guess at once: their delays
    (0.2, 0.4, 0.8, 1.6 s) add up instead of running side by side."""
    source = new_source()
    with guesser(server, source) as first:
        for n in range(SOFT):
            assert first.smtp(f"RCPT TO:<first{n}@example.test>").startswith(b"550 ")
    clients = [guesser(server, source) for _ in range(4)]
    done: list[float] = []
    lock = threading.Lock()

    def guess(client: Client, n: int) -> None:
        reply = client.smtp(f"RCPT TO:<parallel{n}@example.test>")
        assert reply.startswith(b"550 "), reply
        with lock:
            done.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=guess, args=(c, n)) for n, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for client in clients:
        client.close()
    assert len(done) == 4
    # In a row: at least 0.2 + 0.4 + 0.8 + 1.6 s; side by side it would be 1.6 s.
    assert max(done) - started >= 15 * DELAY * 0.9


def test_another_address_is_not_slowed(server: MailServer) -> None:
    slow, other = new_source(), new_source()
    with guesser(server, slow) as client:
        assert guess_until_closed(client)[-1].startswith(b"421 4.7.0 ")
    with guesser(server, slow) as tarpitted, guesser(server, other) as fresh:
        started = time.monotonic()
        tarpitted.send(b"RCPT TO:<slow@example.test>\r\n")
        # Meanwhile another client's errors (below the soft limit) come back at once.
        for n in range(SOFT):
            assert fresh.smtp(f"RCPT TO:<other{n}@example.test>").startswith(b"550 ")
        fresh_done = time.monotonic()
        assert tarpitted.reply().startswith(b"550 ")
        slow_done = time.monotonic()
    assert fresh_done < slow_done
    assert slow_done - started >= DELAY


def test_valid_recipients_are_unaffected(server: MailServer, source: str) -> None:
    before = server.mailboxes()
    with smtp_client(server.port("smtp"), source=source) as client:
        for _ in range(3):
            assert client.smtp("MAIL FROM:<sender@remote.example>").startswith(b"250 ")
            assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
            assert client.smtp(f"RCPT TO:<{BOB}>").startswith(b"250 ")
            assert client.smtp("DATA").startswith(b"354 ")
            assert client.smtp(b"Subject: hi\r\n\r\nhello\r\n.").startswith(b"250 2.0.0 ")
    assert server.mailboxes() == {a: n + 3 for a, n in before.items()}


def test_default_limits(mail_server: MailServer, source: str) -> None:
    """With the defaults (10 errors, then 1 s doubling, 421 at 20): the
    eleventh wrong guess waits a second, and nothing else is slowed."""
    with guesser(mail_server, source) as client:
        started = time.monotonic()
        for n in range(10):
            assert client.smtp(f"RCPT TO:<guess{n}@example.test>").startswith(b"550 5.1.1 ")
        assert client.smtp(f"RCPT TO:<{ALICE}>").startswith(b"250 ")
        free = time.monotonic() - started
        started = time.monotonic()
        assert client.smtp("RCPT TO:<guess10@example.test>").startswith(b"550 5.1.1 ")
        assert time.monotonic() - started >= 1.0
    assert free < 3.0
