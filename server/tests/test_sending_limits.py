"""Per-account sending limits on submission: recipients per message and
messages per hour, against a real server (and SendLimits with a fake clock)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port
from estafeta.smtp.submission import SendLimits

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
OTHERS = [f"{name}@{DOMAIN}" for name in ("carol", "dave", "erin")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hourly_window_slides() -> None:
    clock = Clock()
    limits = SendLimits(messages_per_hour=3, recipients_per_message=10, clock=clock)
    for minute in (0, 10, 20):
        clock.now = minute * 60.0
        assert limits.may_send(ALICE)
        limits.sent(ALICE)
    clock.now = 30 * 60.0
    assert not limits.may_send(ALICE)
    assert limits.may_send(BOB)  # per account
    assert limits.first_refusal(ALICE) and not limits.first_refusal(ALICE)
    clock.now = 60 * 60.0 + 1  # the message at minute 0 is an hour old
    assert limits.may_send(ALICE)
    assert limits.count(ALICE) == 2
    limits.sent(ALICE)
    assert not limits.may_send(ALICE)
    assert limits.first_refusal(ALICE)  # a new episode is logged again
    clock.now = 3 * 3600.0
    assert limits.count(ALICE) == 0
    assert limits._sent == {}  # idle accounts cost no memory


@pytest.fixture
def msa(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(
        tmp_path,
        free_port(),
        submission_port=free_port(),
        auth_config="allow_plaintext = true\n",
        extra_config="[submission]\nmax_messages_per_hour = 2\nmax_recipients_per_message = 3\n",
    )
    inst.write_config()
    for address in (ALICE, BOB, *OTHERS):
        inst.add_user(address)
    inst.start()
    deadline = time.monotonic() + 10
    while True:  # start() waits for the SMTP port only
        try:
            socket.create_connection(("127.0.0.1", inst.submission_port), timeout=10).close()
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield inst
    if inst.process is not None:
        inst.kill()


def connect(inst: Instance, user: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.ehlo("client.example")
    client.login(user, PASSWORD)
    return client


def message(sender: str) -> bytes:
    return f"From: <{sender}>\r\nTo: <{BOB}>\r\nSubject: hi\r\n\r\nHello.\r\n".encode()


def events(inst: Instance, event: str) -> list[str]:
    return [line for line in inst.log_text().splitlines() if f" {event} " in line]


def test_recipients_over_the_limit_get_451(msa: Instance) -> None:
    with connect(msa, ALICE) as client:
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        for rcpt in (BOB, *OTHERS[:2]):
            assert client.docmd("RCPT", f"TO:<{rcpt}>")[0] == 250
        code, text = client.docmd("RCPT", f"TO:<{OTHERS[2]}>")
        assert (code, text) == (
            451,
            b"4.7.1 Too many recipients: at most 3 per message; send the rest separately",
        )
        assert client.docmd("RCPT", f"TO:<{OTHERS[2]}>")[0] == 451
        # The accepted three get the message.
        assert client.docmd("DATA")[0] == 354
        client.send(message(ALICE) + b".\r\n")
        assert client.getreply()[0] == 250
        # The next transaction starts counting afresh.
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert client.docmd("RCPT", f"TO:<{OTHERS[2]}>")[0] == 250
    for rcpt in (BOB, *OTHERS[:2]):
        assert len(msa.index_rows(rcpt)) == 1
    assert msa.index_rows(OTHERS[2]) == []
    (logged,) = events(msa, "send_limit")  # once per transaction, not per RCPT
    assert f"account={ALICE}" in logged and "limit=max_recipients_per_message" in logged


def test_messages_per_hour_over_the_limit_get_451_at_mail(msa: Instance) -> None:
    with connect(msa, ALICE) as client:
        for _ in range(2):
            assert client.sendmail(ALICE, [BOB], message(ALICE)) == {}
        code, text = client.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 451
        assert text.startswith(b"4.7.1 Sending limit reached: at most 2 messages per hour")
        assert client.docmd("RSET")[0] == 250
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 451
    # A new connection does not help; another account is not affected.
    with connect(msa, ALICE) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(ALICE, [BOB], message(ALICE))
        assert refused.value.smtp_code == 451
    with connect(msa, BOB) as client:
        assert client.sendmail(BOB, [ALICE], message(BOB)) == {}
    assert len(msa.index_rows(BOB)) == 2
    (logged,) = events(msa, "send_limit")  # one event for the episode
    assert f"account={ALICE}" in logged and "limit=max_messages_per_hour" in logged
