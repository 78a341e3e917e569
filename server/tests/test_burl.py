"""BURL on submission (rfc4468): a client sends a message it has in its
IMAP mailbox by URL (a URLAUTH "submit+" URL, rfc4467) instead of uploading
it again. Against a real server: IMAP (imaplib) makes the URL, submission
(smtplib) sends it, and the recipient's INBOX gets the message."""

from __future__ import annotations

import imaplib
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
DRAFT = f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: by reference\r\n\r\nSent with BURL.\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Instance]:
    yield from _server(tmp_path)


def _server(tmp_path: Path, limits: str = "") -> Iterator[Instance]:
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        submission_port=free_port(),
        auth_config="allow_plaintext = true\n",  # loopback test
        limits_config=limits,
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.add_user(BOB)
    inst.start()
    yield inst
    if inst.process is not None:
        inst.stop()
    assert "Traceback" not in inst.log_text()


def _url(inst: Instance, access: str, section: str = "") -> str:
    """APPEND the draft to alice's Drafts and GENURLAUTH a URL to it."""
    with imaplib.IMAP4("127.0.0.1", inst.imap_port) as imap:
        imap.login(ALICE, PASSWORD)
        imap.create("Drafts")
        typ, data = imap.append("Drafts", None, None, DRAFT.encode())
        assert typ == "OK"
        found = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        assert found is not None
        uidvalidity, uid = found.group(1).decode(), found.group(2).decode()
        rump = (
            f"imap://{quote(ALICE, safe='')}@127.0.0.1/Drafts;UIDVALIDITY={uidvalidity}"
            f"/;UID={uid}{section};URLAUTH={access}"
        )
        typ, _ = imap._simple_command("GENURLAUTH", f'"{rump}"', "INTERNAL")  # type: ignore[attr-defined]
        assert typ == "OK"
        answer = imap.untagged_responses.pop("GENURLAUTH")[0]
        return answer.strip(b'"').decode()


def _submit(inst: Instance) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10)
    client.ehlo("client.example")
    client.login(ALICE, PASSWORD)
    assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
    return client


def _inbox(inst: Instance, user: str, count: int) -> list[bytes]:
    deadline = time.monotonic() + 15
    with imaplib.IMAP4("127.0.0.1", inst.imap_port) as imap:
        imap.login(user, PASSWORD)
        while True:
            imap.select("INBOX")
            ids = imap.search(None, "ALL")[1][0].split()
            if len(ids) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return [imap.fetch(i, "(BODY.PEEK[])")[1][0][1] for i in ids]  # type: ignore[index]


def test_burl_sends_the_message_the_url_names(server: Instance) -> None:
    url = _url(server, "submit+" + quote(ALICE, safe=""))
    with _submit(server) as client:
        assert client.has_extn("burl") and client.esmtp_features["burl"] == "imap"
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        code, text = client.docmd("BURL", f"{url} LAST")
        assert code == 250, text
    (got,) = _inbox(server, BOB, 1)
    assert b"Subject: by reference" in got and got.endswith(b"Sent with BURL.\r\n")
    assert b"DKIM-Signature" in got or b"Received:" in got  # went through submission


def test_burl_parts_are_joined_until_last(server: Instance) -> None:
    owner = quote(ALICE, safe="")
    header = _url(server, f"submit+{owner}", "/;SECTION=HEADER")
    body = _url(server, f"submit+{owner}", "/;SECTION=TEXT")
    with _submit(server) as client:
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        code, text = client.docmd("BURL", header)
        assert (code, text[:5]) == (250, b"2.5.0")
        assert client.docmd("DATA")[0] == 503  # BURL goes on with BURL
        assert client.docmd("BURL", f"{body} LAST")[0] == 250
    (got,) = _inbox(server, BOB, 1)
    assert b"Subject: by reference" in got and got.endswith(b"\r\n\r\nSent with BURL.\r\n")


def test_burl_refusals(server: Instance) -> None:
    owner = quote(ALICE, safe="")
    url = _url(server, f"submit+{owner}")
    with _submit(server) as client:
        # rfc4468:6 no recipient yet: 554 5.5.0, the URL is not even looked at
        assert client.docmd("BURL", f"{url} LAST")[:1] == (554,)
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        assert client.docmd("BURL", f"{url} NOW")[0] == 501
        tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
        code, text = client.docmd("BURL", f"{tampered} LAST")
        assert (code, text[:5]) == (554, b"5.7.0")
        # the failed BURL ended the transaction (rfc4468:3.2)
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 503
    # a submit+ URL for another account is not alice's to send (rfc4468:3.3)
    other = _url(server, "submit+" + quote(BOB, safe=""))
    # and an IMAP user+ URL is not for the submission server
    mine = _url(server, f"user+{owner}")
    with _submit(server) as client:
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        assert client.docmd("BURL", f"{other} LAST")[0] == 554
        assert client.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        assert client.docmd("BURL", f"{mine} LAST")[0] == 554
    # not on the MX port: no BURL there
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as mx:
        mx.ehlo("peer.example")
        assert not mx.has_extn("burl")
        assert mx.docmd("BURL", f"{url} LAST")[0] == 500
    assert _inbox(server, BOB, 0) == []


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Instance]:
    """[limits] data_memory room for one draft and a half, all connections together."""
    size = len(DRAFT) * 3 // 2
    yield from _server(tmp_path, f"max_message_size = {size}\ndata_memory = {size}\n")


def test_burl_parts_held_count_against_data_memory(tight: Instance) -> None:
    owner = quote(ALICE, safe="")
    header = _url(tight, f"submit+{owner}", "/;SECTION=HEADER")
    whole = _url(tight, f"submit+{owner}")
    with _submit(tight) as holder, _submit(tight) as other:
        assert holder.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        assert holder.docmd("BURL", header)[0] == 250  # the header part, held
        assert other.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        # the whole draft does not fit beside it: 452 4.3.1, as for DATA
        code, text = other.docmd("BURL", f"{whole} LAST")
        assert (code, text[:5]) == (452, b"4.3.1"), text
        assert holder.docmd("RSET")[0] == 250  # what the holder held goes back
        assert other.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert other.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        assert other.docmd("BURL", f"{whole} LAST")[0] == 250
        # and so does a transaction's own when it ends with LAST
        assert other.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert other.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        assert other.docmd("BURL", f"{whole} LAST")[0] == 250
    assert len(_inbox(tight, BOB, 2)) == 2
