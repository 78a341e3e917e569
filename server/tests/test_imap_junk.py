"""Users train the junk filter over IMAP (issue 16, acceptance 4): moving
messages into Junk teaches spam, $NotJunk and moving out of Junk teach
ham, and a new message of the kind taught as spam is filed into Junk on
delivery. A real server, imaplib and smtplib."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls
from estafeta.cluster_node import cli_spam_store
from estafeta.config import load
from estafeta.spam import JunkFilter
from estafeta.spam.store import Status

ALICE = f"alice@{DOMAIN}"
SPAM = "casino jackpot bitcoin winner claim prize cheap pills offer unsubscribe bonus"
HAM = "meeting agenda project review minutes budget schedule report tuesday team"
TRAINED = 8


def mail(n: int, words: str, kind: str) -> bytes:
    vocabulary = words.split()
    body = " ".join(vocabulary[(n * 7 + i) % len(vocabulary)] for i in range(60))
    return (
        f"From: <{kind}{n}@remote.test>\r\nTo: <{ALICE}>\r\nSubject: {kind} {n}\r\n"
        f"Message-ID: <{kind}.{n}@remote.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode()


@pytest.fixture
def mx(instance: Instance, tmp_path: Path) -> Iterator[tuple[Instance, ssl.SSLContext]]:
    section, ca = make_tls(tmp_path)
    instance.imaps_port = free_port()
    instance.extra_config = section + f"[spam]\nmin_spam = {TRAINED}\nmin_ham = {TRAINED}\n"
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield instance, context


def send(server: Instance, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("sender@remote.test", [ALICE], message)


def status(server: Instance, want: tuple[int, int]) -> Status:
    """The account's training as the server left it, once it reads ``want``
    (spam, ham) or after 20 s (the trainer works in the background)."""
    deadline = time.monotonic() + 20
    while True:
        if server.cluster:  # the statistics every node shares
            with cli_spam_store(load(server.config)) as shared:
                found = shared.status(ALICE)
        else:
            with JunkFilter(server.data_dir / "spam") as junk:
                found = junk.status(ALICE)
        if (found.spam, found.ham) == want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def uids(client: imaplib.IMAP4_SSL, criteria: str) -> list[bytes]:
    status_, data = client.uid("SEARCH", criteria)
    assert status_ == "OK", data
    return data[0].split()


def test_users_teach_the_filter_over_imap(mx: tuple[Instance, ssl.SSLContext]) -> None:
    server, context = mx
    for n in range(TRAINED):
        send(server, mail(n, HAM, "ham"))
        send(server, mail(n, SPAM, "spam"))
    client = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context, timeout=20)
    client.login(ALICE, PASSWORD)
    client.select("INBOX")
    assert len(uids(client, "ALL")) == 2 * TRAINED  # nothing judged before training
    ham = b",".join(uids(client, 'SUBJECT "ham"'))
    spam = b",".join(uids(client, 'SUBJECT "spam"'))
    assert client.uid("STORE", ham, "+FLAGS", "($NotJunk)")[0] == "OK"
    assert client.uid("MOVE", spam, "Junk")[0] == "OK"
    taught = status(server, (TRAINED, TRAINED))
    assert (taught.spam, taught.ham) == (TRAINED, TRAINED)

    # A new message of the spam kind is filed into Junk on delivery; one of
    # the ham kind stays in INBOX.
    send(server, mail(99, SPAM, "offer"))
    send(server, mail(98, HAM, "notes"))
    assert server.message_count(ALICE, "Junk") == TRAINED + 1
    client.select("Junk")
    new = uids(client, 'SUBJECT "offer 99"')
    assert len(new) == 1
    status_, data = client.uid("FETCH", new[0], "(BODY.PEEK[HEADER.FIELDS (X-SPAM-STATUS)])")
    assert status_ == "OK" and b"X-Spam-Status: Yes" in data[0][1]  # type: ignore[index]
    client.select("INBOX")
    assert len(uids(client, 'SUBJECT "notes 98"')) == 1

    # Moving one out of Junk teaches ham: its training turns from spam to ham.
    client.select("Junk")
    one = uids(client, 'SUBJECT "spam 3"')
    assert client.uid("MOVE", one[0], "INBOX")[0] == "OK"
    moved = status(server, (TRAINED - 1, TRAINED + 1))
    assert (moved.spam, moved.ham) == (TRAINED - 1, TRAINED + 1)
    # Into Trash from Junk teaches nothing: the next lesson, queued after
    # it (one worker, in order), finds the counts only it changed.
    two = uids(client, 'SUBJECT "spam 4"')
    assert client.uid("MOVE", two[0], "Trash")[0] == "OK"
    client.select("INBOX")
    notes = uids(client, 'SUBJECT "notes 98"')
    assert client.uid("STORE", notes[0], "+FLAGS", "($NotJunk)")[0] == "OK"
    last = status(server, (TRAINED - 1, TRAINED + 2))
    assert (last.spam, last.ham) == (TRAINED - 1, TRAINED + 2)
    client.logout()
    assert "spam_trained" in server.log_text()
