"""Issue 14 item 9: COPY ignored the quota.

The attack: with a 1 MiB quota, ``COPY 1:* INBOX`` over and over took an
account from 600 KB to 37 MB. APPEND checked the quota, COPY did not, and
APPEND's check (a read before a group-committed delivery) let two
concurrent APPENDs both take the same room.

Now COPY is checked in the store's writer thread, inside the transaction
that adds the copies (estafeta.store.operations.copy), and answered with
NO [OVERQUOTA] (rfc9208:4.3.1) leaving no file behind; APPEND is checked the
same way when a quota applies (operations.append). A MOVE between mailboxes
of the account changes nothing to what it holds, and is allowed at quota.
All over real IMAP, with ``[limits] quota = 1048576``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._responsiveness import imap_login, prepared_server
from tests.security.conftest import ALICE, Client, MailServer

QUOTA = 1024 * 1024
MESSAGE = 200_000  # octets: three are 600 KB, five fit, six do not


def message(n: int, size: int = MESSAGE) -> bytes:
    header = b"From: alice@example.test\r\nSubject: m%d\r\n\r\n" % n
    line = b"x" * 98 + b"\r\n"
    body = line * ((size - len(header)) // len(line) + 1)
    return (header + body)[:size]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailServer]:
    with prepared_server(tmp_path, lambda root: None, limits_config=f"quota = {QUOTA}\n") as s:
        yield s


def append(client: Client, data: bytes, mailbox: str = "INBOX", tag: str = "A") -> bytes:
    client.send(
        b"%s APPEND %s {%d+}\r\n" % (tag.encode(), mailbox.encode(), len(data)) + data + b"\r\n"
    )
    _, tagged = client.until_tagged(tag)
    return tagged


def usage(client: Client) -> tuple[int, int]:
    """(used, limit) in KiB, from GETQUOTAROOT (rfc9208:4.1.2)."""
    untagged, tagged = client.imap("Q", "GETQUOTAROOT INBOX")
    assert tagged.startswith(b"Q OK"), tagged
    [quota] = [line for line in untagged if line.startswith(b"* QUOTA ")]
    words = quota.rstrip(b")\r\n").split()
    return int(words[-2]), int(words[-1])


def files(server: MailServer) -> int:
    """Message files of alice, every mailbox."""
    account = server.instance.account_dir(ALICE)
    return sum(1 for p in account.rglob("*") if p.is_file() and p.parent.name in ("new", "cur"))


def test_copy_over_quota_is_refused_and_leaves_nothing(server: MailServer) -> None:
    client = imap_login(server)
    for n in range(3):
        assert append(client, message(n)).startswith(b"A OK")
    _, tagged = client.imap("S", "SELECT INBOX")
    assert tagged.startswith(b"S OK"), tagged
    assert usage(client)[0] == 3 * MESSAGE // 1024
    # 600 KB + 600 KB > 1 MiB: refused, and nothing of it stays.
    for _ in range(5):
        _, tagged = client.imap("C", "COPY 1:* INBOX")
        assert tagged.startswith(b"C NO [OVERQUOTA] "), tagged
    assert usage(client)[0] == 3 * MESSAGE // 1024
    assert server.mail(ALICE) == 3
    assert files(server) == 3
    _, tagged = client.imap("N", "NOOP")
    assert tagged.startswith(b"N OK"), tagged
    # What fits is copied: 600 KB + 400 KB.
    _, tagged = client.imap("C", "COPY 1:2 INBOX")
    assert tagged.startswith(b"C OK [COPYUID "), tagged
    assert usage(client)[0] == 5 * MESSAGE // 1024
    _, tagged = client.imap("C", "UID COPY 1 INBOX")
    assert tagged.startswith(b"C NO [OVERQUOTA] "), tagged
    assert files(server) == 5
    # A MOVE within the account holds nothing more: allowed at quota.
    _, tagged = client.imap("M", "MOVE 1:* Archive")
    assert tagged.startswith(b"M OK"), tagged
    assert usage(client)[0] == 5 * MESSAGE // 1024
    assert files(server) == 5
    assert "Traceback" not in server.log_text()
    client.close()


def test_concurrent_copies_cannot_share_the_room(server: MailServer) -> None:
    setup = imap_login(server)
    for n in range(3):
        assert append(setup, message(n)).startswith(b"A OK")
    setup.close()
    # Room for two more messages: each COPY of two fits alone, not both.
    clients = [imap_login(server) for _ in range(4)]
    for client in clients:
        _, tagged = client.imap("S", "SELECT INBOX")
        assert tagged.startswith(b"S OK"), tagged
    answers: list[bytes] = []
    gate = threading.Barrier(len(clients))

    def copy(client: Client) -> None:
        gate.wait()
        answers.append(client.imap("C", "COPY 1:2 INBOX")[1])

    threads = [threading.Thread(target=copy, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == len(clients)
    assert sum(a.startswith(b"C OK") for a in answers) == 1, answers
    assert all(a.startswith((b"C OK", b"C NO [OVERQUOTA] ")) for a in answers), answers
    assert usage(clients[0])[0] == 5 * MESSAGE // 1024
    assert files(server) == 5
    for client in clients:
        client.close()


def test_concurrent_appends_cannot_share_the_room(server: MailServer) -> None:
    clients = [imap_login(server) for _ in range(6)]
    answers: list[bytes] = []
    gate = threading.Barrier(len(clients))

    def append_one(n: int, client: Client) -> None:
        gate.wait()
        answers.append(append(client, message(n)))

    threads = [threading.Thread(target=append_one, args=(n, c)) for n, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Five messages of 200,000 octets fit in 1 MiB, the sixth does not.
    assert sum(a.startswith(b"A OK") for a in answers) == 5, answers
    assert sum(a.startswith(b"A NO [OVERQUOTA] ") for a in answers) == 1, answers
    used, limit = usage(clients[0])
    assert used * 1024 <= QUOTA and limit == QUOTA // 1024
    assert files(server) == 5
    for client in clients:
        client.close()
