"""rspamd behind a real estafeta MX (issue 16, acceptance 5): the GTUBE
message refused with rspamd's reason, a plain one delivered with rspamd's
verdict in the X-Spam-* fields, and rspamd stopped: delivered anyway,
marked "unchecked" (our failure never becomes the sender's 5xx)."""

from __future__ import annotations

import asyncio
import email
import imaplib
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _rspamd import RspamdProcess, start_rspamd
from test_rspamd import GTUBE_STRING

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

ALICE = f"alice@{DOMAIN}"


def mail(subject: str, body: str) -> bytes:
    return (
        f"From: Carol <carol@remote.example>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        "Message-ID: <m1@remote.example>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


@pytest.fixture
def rspamd(tmp_path: Path) -> Iterator[RspamdProcess]:
    proc = start_rspamd(tmp_path / "rspamd")
    yield proc
    proc.stop()


@pytest.fixture
def mx(tmp_path: Path, rspamd: RspamdProcess) -> Iterator[Instance]:
    secret = tmp_path / "rspamd.password"
    secret.write_text(rspamd.password + "\n")
    secret.chmod(0o600)
    (tmp_path / "estafeta").mkdir()
    section, ca = make_tls(tmp_path / "estafeta")
    inst = Instance(
        tmp_path / "estafeta",
        free_port(),
        imaps_port=free_port(),
        extra_config=section
        + (
            "[rspamd]\n"
            f'url = "{rspamd.url}"\n'
            f'controller_url = "{rspamd.controller_url}"\n'
            f'password_file = "{secret}"\n'
            'timeout = "3s"\n'
        ),
    )
    inst.write_config()
    inst.ca = ca  # type: ignore[attr-defined]
    inst.add_user(ALICE)
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


def send(mx: Instance, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=30) as client:
        client.sendmail("carol@remote.example", [ALICE], message)


def delivered(mx: Instance, mailbox: str = "INBOX") -> list[email.message.Message]:
    return [email.message_from_bytes(body) for body in mx.message_bodies(ALICE, mailbox)]


def test_gtube_is_refused_with_rspamds_reason(mx: Instance) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mx, mail("test", GTUBE_STRING))
    assert refused.value.smtp_code == 554
    reply = refused.value.smtp_error.decode()
    assert reply.startswith("5.7.1"), reply
    assert "gtube" in reply.lower(), reply
    assert delivered(mx) == [] and delivered(mx, "Junk") == []
    assert PASSWORD not in mx.log_text()


def test_a_plain_message_carries_rspamds_verdict(mx: Instance) -> None:
    send(mx, mail("lunch", "Hi Alice, lunch at noon tomorrow? Carol"))
    (message,) = delivered(mx)
    assert message["X-Spam-Status"].startswith("No")
    verdict = " ".join(message["X-Spam-Rspamd"].split())
    assert verdict.startswith('action="no action" score='), verdict
    assert "required=15.00" in verdict, verdict


def test_rspamd_down_delivers_unchecked(mx: Instance, rspamd: RspamdProcess) -> None:
    rspamd.stop()
    send(mx, mail("while rspamd is down", "Hi Alice, are you there? Carol"))
    (message,) = delivered(mx)
    assert message["X-Spam-Status"].startswith("unchecked"), message["X-Spam-Status"]
    assert "rspamd" in mx.log_text()
    rspamd_password = (mx.root.parent / "rspamd.password").read_text().strip()
    assert rspamd_password not in mx.log_text()


def test_a_junk_move_reaches_rspamds_learning(mx: Instance, rspamd: RspamdProcess) -> None:
    from estafeta.spam.rspamd import RspamdClient

    client = RspamdClient(
        rspamd.url, controller_url=rspamd.controller_url, password=rspamd.password
    )
    before = asyncio.run(client.stat())["learned"]
    send(
        mx,
        mail(
            "You have won",
            "Congratulations dear friend, you have won one million dollars in our "
            "international lottery. Send your bank account details and a small "
            "processing fee to claim the prize money today before it expires.",
        ),
    )
    context = ssl.create_default_context()
    mx.ca.configure_trust(context)  # type: ignore[attr-defined]
    imap = imaplib.IMAP4_SSL("127.0.0.1", mx.imaps_port, ssl_context=context, timeout=20)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    assert imap.uid("MOVE", "1", "Junk")[0] == "OK"
    imap.logout()
    deadline = time.monotonic() + 20
    learned = before
    while learned == before and time.monotonic() < deadline:
        time.sleep(0.1)
        learned = asyncio.run(client.stat())["learned"]
    assert learned == before + 1
