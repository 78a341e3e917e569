"""Two-factor authentication end to end: a real server, imaplib, poplib, smtplib.

With TOTP enrolled (through the CLI, as an administrator does), the account
password is refused on IMAP, POP3 and SMTP AUTH; an app password works on the
protocols it was created for; a revoked one stops working at once, while the
server runs.
"""

from __future__ import annotations

import poplib
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port

ALICE = f"alice@{DOMAIN}"


@pytest.fixture
def enrolled(tmp_path: Path) -> Iterator[tuple[Instance, dict[str, str]]]:
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        pop3_port=free_port(),
        submission_port=free_port(),
        # Plaintext on loopback keeps the test short; lockouts out of the way.
        auth_config="allow_plaintext = true\nip_max_failures = 100\ndelay_base = 0.01\n"
        "max_delay = 0.02\n",
    )
    inst.write_config()
    inst.add_user(ALICE)
    enrol = inst.cli("totp", "enroll", ALICE, "--png", str(tmp_path / "qr.png"))
    assert enrol.returncode == 0, enrol.stderr
    uri = re.search(r"otpauth://totp/\S+", enrol.stdout)
    assert uri, enrol.stdout
    secret = parse_qs(urlsplit(uri.group(0)).query)["secret"][0]
    totp = pyotp.TOTP(secret)
    passwords = {}
    # Each code works once (replay protection): the second create uses the
    # next step's code, which the +-1 step window accepts.
    codes = [totp.now(), totp.at(time.time() + 30)]
    for (name, protocols), code in zip(
        (("laptop", "imap,pop3,smtp"), ("tablet", "imap")), codes, strict=True
    ):
        created = inst.cli(
            "app-password", "create", ALICE, "--name", name, "--protocols", protocols,
            "--code", code,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        passwords[name] = created.stdout.strip()
    inst.start()
    yield inst, passwords
    if inst.process is not None:
        inst.kill()


def imap_login(inst: Instance, secret: str) -> bool:
    return inst.imap_opens(ALICE, secret)


def pop3_login(inst: Instance, secret: str) -> bool:
    client = poplib.POP3("127.0.0.1", inst.pop3_port, timeout=30)
    try:
        client.user(ALICE)
        client.pass_(secret)
    except poplib.error_proto:
        return False
    finally:
        client.close()
    return True


def smtp_login(inst: Instance, secret: str) -> bool:
    with smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=30) as client:
        client.ehlo()
        try:
            client.login(ALICE, secret)
        except smtplib.SMTPAuthenticationError as exc:
            assert exc.smtp_code == 535
            return False
        return True


LOGINS = {"imap": imap_login, "pop3": pop3_login, "smtp": smtp_login}


def test_account_password_alone_is_refused_everywhere(enrolled) -> None:  # type: ignore[no-untyped-def]
    inst, _ = enrolled
    assert {name: login(inst, PASSWORD) for name, login in LOGINS.items()} == {
        "imap": False,
        "pop3": False,
        "smtp": False,
    }


def test_app_passwords_log_in_on_their_protocols_only(enrolled) -> None:  # type: ignore[no-untyped-def]
    inst, passwords = enrolled
    assert {name: login(inst, passwords["laptop"]) for name, login in LOGINS.items()} == {
        "imap": True,
        "pop3": True,
        "smtp": True,
    }
    assert {name: login(inst, passwords["tablet"]) for name, login in LOGINS.items()} == {
        "imap": True,
        "pop3": False,
        "smtp": False,
    }


def test_revoked_app_password_is_refused_at_once(enrolled) -> None:  # type: ignore[no-untyped-def]
    inst, passwords = enrolled
    assert imap_login(inst, passwords["laptop"])
    revoked = inst.cli("app-password", "revoke", ALICE, "--name", "laptop")
    assert revoked.returncode == 0, revoked.stderr
    assert {name: login(inst, passwords["laptop"]) for name, login in LOGINS.items()} == {
        "imap": False,
        "pop3": False,
        "smtp": False,
    }
    # The other app password is untouched.
    assert imap_login(inst, passwords["tablet"])


def test_disabling_totp_brings_the_password_back(enrolled) -> None:  # type: ignore[no-untyped-def]
    inst, _ = enrolled
    assert not imap_login(inst, PASSWORD)
    disabled = inst.cli("totp", "disable", ALICE)
    assert disabled.returncode == 0, disabled.stderr
    assert imap_login(inst, PASSWORD)
    assert smtp_login(inst, PASSWORD)
