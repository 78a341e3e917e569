"""Roundcube on the lab's mx1, used in a real browser (issue 20, acceptance 5).

site.yml put Roundcube on https://webmail.example.test/: nginx's stream front
on mx1's port 443 passes that name to Roundcube and every other name to
estafeta's own https listener (with a PROXY header); the certificate is the
one estafeta's built-in ACME client got from pebble, for the mail host's
names and webmail.example.test.

Debian's chromium, on this machine, reaches mx1 over the lab bridge like any
browser on the internet would:
1. bob (mx2.example.net) writes to alice; alice logs in to Roundcube with
   her address and password, reads the message and replies to it;
2. the reply crosses to mx2 and arrives in bob's INBOX with SPF, DKIM and
   DMARC passing for example.test;
3. alice turns on an away message in Roundcube's managesieve plugin; the
   script is active in estafeta, and the next message to her gets the away
   message back, with Auto-Submitted: auto-replied (rfc5230:5). That message
   comes from lists@example.test on mx1 itself: mx2 greylists the first
   message from <> of a new client for five minutes (the null sender passes
   no SPF check there, the lab publishes no SPF record for host names).
4. alice changes her password in Roundcube's password plugin, which posts
   it through the front to estafeta's /api/password: IMAP takes the new
   one and refuses the old; she changes it back the same way.
Screenshots of each step go to test-artifacts/lab-webmail/.
"""

from __future__ import annotations

import imaplib
import json
import smtplib
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
import testinfra
from lab_hosts import MAIL_HOSTS, ROOT
from test_deliverability import LabIMAP, pebble_context, receive, send

from conftest import lab_host

sys.path.insert(0, str(ROOT))
from tests.roundcube import Roundcube, chromium

MX1, MX2 = "mx1.example.test", "mx2.example.net"
WEBMAIL = "webmail.example.test"
ALICE = MAIL_HOSTS[MX1]["account"]
BOB = MAIL_HOSTS[MX2]["account"]
ARTIFACTS = ROOT / "test-artifacts" / "lab-webmail"
ESTAFETA = "/usr/local/sbin/estafeta"
# A second account on mx1 (inventories/lab/host_vars/mx1.example.test.yml).
LISTS = "lists@example.test"


def submit_as_lists(subject: str) -> None:
    info = MAIL_HOSTS[MX1]
    with smtplib.SMTP(timeout=30) as client:
        client.connect(info["address"], 587)
        client._host = MX1  # the certificate is checked against the host name
        client.starttls(context=pebble_context())
        client.login(LISTS, info["password"])
        body = (
            f"From: <{LISTS}>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nAre you there?\r\n"
        )
        client.sendmail(LISTS, [ALICE], body.encode())


def receive_at_lists(subject: str, timeout: float = 60) -> Message:
    info = MAIL_HOSTS[MX1]
    deadline = time.monotonic() + timeout
    with LabIMAP(MX1, info["address"]) as client:
        client.login(LISTS, info["password"])
        while time.monotonic() < deadline:
            client.select("INBOX", readonly=True)
            _, data = client.search(None, "SUBJECT", f'"{subject}"')
            if data[0]:
                _, parts = client.fetch(data[0].split()[-1], "(BODY.PEEK[])")
                return message_from_bytes(parts[0][1])  # type: ignore[index]
            time.sleep(0.5)
    raise AssertionError(f"{subject!r} did not reach {LISTS} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def mx1() -> testinfra.host.Host:
    return lab_host(MAIL_HOSTS[MX1]["address"])


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roundcube]:
    home: Path = tmp_path_factory.mktemp("chromium")
    # Every name chromium asks for is mx1's address: webmail.example.test as
    # the lab's DNS would answer it, whatever this machine's /etc/hosts says.
    with chromium(home, MAIL_HOSTS[MX1]["address"]) as driver:
        yield Roundcube(driver, f"https://{WEBMAIL}", ARTIFACTS)


def test_the_webmail_certificate_comes_from_pebble() -> None:
    """What chromium is told to accept, checked here: pebble's root, the name."""
    request = f"GET / HTTP/1.1\r\nHost: {WEBMAIL}\r\nConnection: close\r\n\r\n".encode()
    with (
        socket.create_connection((MAIL_HOSTS[MX1]["address"], 443), timeout=30) as raw,
        pebble_context().wrap_socket(raw, server_hostname=WEBMAIL) as tls,
    ):
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert b'id="rcmloginuser"' in data  # Roundcube's login form, not estafeta's pages


def test_alice_reads_replies_and_sets_a_vacation(
    mx1: testinfra.host.Host, browser: Roundcube
) -> None:
    token = uuid.uuid4().hex[:8]
    subject = f"Lunch {token}"
    send(MX2, MX1, subject)
    receive(MX1, subject)

    # 1. Alice reads bob's message in Roundcube and replies.
    browser.login(ALICE, MAIL_HOSTS[MX1]["password"])
    uid = browser.open_message(subject, "Sent by the deliverability scenario.")
    reply_text = f"Friday works for me ({token})."
    browser.reply(uid, reply_text)

    # 2. The reply reaches bob on mx2, authenticated as example.test.
    reply = receive(MX2, f"Re: {subject}")
    assert reply["From"] and ALICE in reply["From"]
    text = reply.get_payload(decode=True)
    assert isinstance(text, bytes) and reply_text.encode() in text
    results = " ".join((reply.get_all("Authentication-Results") or [""])[0].split())
    assert results.startswith(f"{MX2};"), results
    assert "spf=pass smtp.mailfrom=example.test" in results
    assert "dkim=pass header.d=example.test" in results
    assert "dmarc=pass header.from=example.test" in results
    browser.back_at_the_list()

    # 3. An away message, written by Roundcube over ManageSieve.
    away = f"Away {token}"
    browser.set_vacation(away, "I am away until Monday.")

    def active_scripts() -> list[str]:
        listed = mx1.run(f"{ESTAFETA} sieve list {ALICE} --json")
        assert listed.rc == 0, listed.stderr
        return [s["name"] for s in json.loads(listed.stdout) if s["active"]]

    assert browser.until("vacation saved", active_scripts, 30) == ["roundcube"]
    browser.shot("07-vacation-saved")
    submit_as_lists(f"Again {token}")
    answer = receive_at_lists(away)
    assert answer["Auto-Submitted"].split()[0] == "auto-replied"  # rfc3834:5
    assert answer["In-Reply-To"]
    body = answer.get_payload(decode=True)
    assert isinstance(body, bytes) and b"I am away until Monday." in body


def test_the_certificate_check_has_a_context() -> None:
    # pebble_context refuses what pebble did not issue: a plain default
    # context (the system's CAs) does not trust the webmail's certificate.
    context = ssl.create_default_context()
    with (
        socket.create_connection((MAIL_HOSTS[MX1]["address"], 443), timeout=30) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname=WEBMAIL)


def imap_login_works(password: str) -> bool:
    info = MAIL_HOSTS[MX1]
    with LabIMAP(MX1, info["address"]) as client:
        try:
            client.login(ALICE, password)
        except imaplib.IMAP4.error:
            return False
        return True


def test_alice_changes_her_password_in_roundcube(browser: Roundcube) -> None:
    password = MAIL_HOSTS[MX1]["password"]
    new = f"violet tractor {uuid.uuid4().hex[:8]}"
    browser.login(ALICE, password)
    browser.wait("logged in", lambda d: "_task=mail" in d.current_url)
    try:
        answer = browser.change_password(password, new)
        assert "Successfully saved" in answer, answer
        assert imap_login_works(new) and not imap_login_works(password)
    finally:
        # Back to the inventory's password, the same way (the session knows the new one).
        answer = browser.change_password(new, password)
    assert "Successfully saved" in answer, answer
    assert imap_login_works(password)
