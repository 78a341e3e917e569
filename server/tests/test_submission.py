"""Submission on 587 (STARTTLS) and 465 (implicit TLS), driven with smtplib."""

from __future__ import annotations

import json
import smtplib
import ssl
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


@pytest.fixture
def msa(tmp_path: Path) -> Iterator[tuple[Instance, ssl.SSLContext]]:
    tls_section, ca = make_tls(tmp_path)
    inst = Instance(
        tmp_path,
        free_port(),
        submission_port=free_port(),
        submissions_port=free_port(),
        # A DNS server that is not there: remote mail stays queued (temporary errors).
        extra_config=tls_section
        + f'[dns]\nnameservers = ["127.0.0.1:{free_port()}"]\n[queue]\nretry_min = "1h"\n',
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.add_user(BOB)
    inst.cli("alias", "add", f"sales@{DOMAIN}", ALICE)
    inst.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield inst, context
    if inst.process is not None:
        inst.kill()


def connect(inst: Instance, context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.ehlo("client.example")
    client.starttls(context=context)
    client.ehlo("client.example")
    return client


def message(sender: str, to: str, extra: str = "") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: <{to}>\r\nSubject: hello\r\n{extra}\r\nHello there.\r\n"
    ).encode()


def test_auth_not_offered_or_accepted_before_tls(msa: tuple[Instance, ssl.SSLContext]) -> None:
    inst, _ = msa
    with smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10) as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert b"STARTTLS" in text
        assert b"AUTH" not in text
        code, reply = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
        assert code == 538, reply
        assert reply.startswith(b"5.7.11")
        # Nor may mail be submitted without authenticating.
        code, reply = client.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, reply


def test_submit_to_local_and_remote(msa: tuple[Instance, ssl.SSLContext]) -> None:
    inst, context = msa
    with connect(inst, context) as client:
        assert b"AUTH" in client.ehlo_resp
        client.login(ALICE, PASSWORD)
        refused = client.sendmail(ALICE, [BOB, "carol@remote.example"], message(ALICE, BOB))
        assert refused == {}
    rows = inst.index_rows(BOB)
    assert len(rows) == 1
    stored = inst.message_bodies(BOB)[0]
    parsed = BytesParser(policy=default_policy).parsebytes(stored)
    assert parsed["Return-Path"] == f"<{ALICE}>"
    assert parsed["Message-ID"].endswith(f"@mx.{DOMAIN}>")  # added: the client sent none
    assert parsed["Date"]
    assert "ESMTPSA" in parsed["Received"]
    assert "127.0.0.1" in parsed["Received"]
    queue = json.loads(inst.cli("queue", "list", "--json").stdout)
    assert [(e["domain"], e["recipients"], e["sender"]) for e in queue] == [
        ("remote.example", ["carol@remote.example"], ALICE)
    ]
    # The queued copy is the one that will be sent: same added headers.
    if inst.cluster:
        queued = bytes.fromhex(inst.cluster_sql("SELECT encode(data, 'hex') FROM queue_messages"))
    else:
        queued = next((inst.data_dir / "queue" / "messages").glob("*.eml")).read_bytes()
    assert b"Message-ID: " in queued and b"Return-Path" not in queued
    inst.cli("queue", "delete", queue[0]["id"])
    assert "queue is empty" in inst.cli("queue", "list").stdout


def test_sender_must_belong_to_the_account(msa: tuple[Instance, ssl.SSLContext]) -> None:
    inst, context = msa
    with connect(inst, context) as client:
        client.login(ALICE, PASSWORD)
        code, reply = client.docmd("MAIL", f"FROM:<{BOB}>")
        assert code == 553 and reply.startswith(b"5.7.1"), reply
        client.rset()
        # An alias of alice's, and a subaddress, are hers to use.
        code, _ = client.docmd("MAIL", f"FROM:<sales@{DOMAIN}>")
        assert code == 250
        client.rset()
        # The From: header is checked too (rfc6409:8.1 lets the MSA refuse).
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(ALICE, [BOB], message(BOB, BOB))
        assert caught.value.smtp_code == 553
        assert caught.value.smtp_error.startswith(b"5.7.1")
        assert inst.index_rows(BOB) == []
        # A From: with two addresses, one not hers, is refused as well.
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail(
                ALICE,
                [BOB],
                b"From: <alice@example.test>, <bob@example.test>\r\nSubject: x\r\n\r\nx\r\n",
            )
        client.sendmail(ALICE, [BOB], message(f"sales@{DOMAIN}", BOB))
    assert len(inst.index_rows(BOB)) == 1


def test_wrong_password_and_unknown_local_recipient(
    msa: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, context = msa
    with connect(inst, context) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            client.login(ALICE, "wrong password")
        assert caught.value.smtp_code == 535
        client.login(ALICE, PASSWORD)
        client.docmd("MAIL", f"FROM:<{ALICE}>")
        code, reply = client.docmd("RCPT", f"TO:<nobody@{DOMAIN}>")
        assert code == 550 and reply.startswith(b"5.1.1")
    assert "password" not in inst.log_text().lower().replace("--password-stdin", "")


def test_implicit_tls_on_465_and_auth_login(msa: tuple[Instance, ssl.SSLContext]) -> None:
    inst, context = msa
    with smtplib.SMTP_SSL(
        "127.0.0.1", inst.submissions_port, context=context, timeout=10
    ) as client:
        client.ehlo("client.example")
        assert b"AUTH" in client.ehlo_resp and b"STARTTLS" not in client.ehlo_resp
        client.user, client.password = ALICE, PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail(ALICE, [BOB], message(ALICE, BOB, "Message-ID: <keep@me>\r\n"))
    stored = inst.message_bodies(BOB)[0]
    assert b"Message-ID: <keep@me>" in stored
    assert stored.count(b"Message-ID:") == 1
    assert b"TLSv1." in stored  # the Received header names the TLS session


def test_bare_lf_from_an_authenticated_client_is_normalised(
    msa: tuple[Instance, ssl.SSLContext],
) -> None:
    inst, context = msa
    with connect(inst, context) as client:
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, [BOB], b"From: <alice@example.test>\nSubject: lf\n\nline\n")
    stored = inst.message_bodies(BOB)[0]
    assert b"\r\nSubject: lf\r\n\r\nline\r\n" in stored
    assert b"\n" not in stored.replace(b"\r\n", b"")
