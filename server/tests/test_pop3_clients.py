"""Real POP3 clients from Debian (fetchmail, getmail6) against estafeta.

`make test` installs both (Makefile APT_PACKAGES). Each retrieves 100
messages over implicit TLS (995-style) with certificate checks on, and
what it hands to its delivery agent must be what was delivered: byte for
byte, once the clients' own LF line endings are undone.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

ALICE = f"alice@{DOMAIN}"


@pytest.fixture
def pop3s(instance: Instance, tmp_path: Path) -> Iterator[tuple[Instance, Path]]:
    section, _ = make_tls(tmp_path)
    instance.pop3s_port = free_port()
    instance.extra_config = section
    instance.write_config()
    instance.add_user(ALICE)
    instance.start()
    yield instance, tmp_path / "ca.pem"


def deliver(server: Instance, count: int) -> list[bytes]:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for n in range(count):
            client.sendmail(
                "s@remote.test",
                [ALICE],
                f"Subject: client {n}\r\nMessage-ID: <c{n}@remote.test>\r\n\r\n"
                f"body {n}\r\n.dot line\r\nend\r\n".encode(),
            )
    # What the server stored (Return-Path and Received included) is what
    # a POP3 client must get.
    return server.message_bodies(ALICE)


def write_mda(tmp_path: Path) -> tuple[Path, Path]:
    """A delivery agent that stores each message it is given in its own file."""
    out = tmp_path / "fetched"
    out.mkdir()
    mda = tmp_path / "mda.py"
    mda.write_text(
        "import sys, uuid\n"
        f"open('{out}/' + uuid.uuid4().hex, 'wb').write(sys.stdin.buffer.read())\n"
    )
    return mda, out


def as_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def test_fetchmail_retrieves_100(pop3s: tuple[Instance, Path], tmp_path: Path) -> None:
    fetchmail = shutil.which("fetchmail")
    assert fetchmail, "fetchmail is not installed (make deps)"
    server, ca = pop3s
    expected = deliver(server, 100)
    mda, out = write_mda(tmp_path)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol pop3 port {server.pop3s_port}\n"
        f'  user "{ALICE}" password "{PASSWORD}" is "tester" here\n'
        f'  ssl sslcertck sslcertfile "{ca}" sslproto "TLS1.2+"\n'
        '  sslcommonname "mx.example.test"\n'
        f'  mda "{sys.executable} {mda}" keep norewrite\n'
    )
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    result = subprocess.run(
        [fetchmail, "-f", str(rc), "--nodetach", "--invisible", "--nosyslog"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = [p.read_bytes() for p in out.iterdir()]
    assert len(fetched) == 100
    assert sorted(fetched) == sorted(as_lf(e) for e in expected)


def test_getmail6_retrieves_100(pop3s: tuple[Instance, Path], tmp_path: Path) -> None:
    getmail = shutil.which("getmail")
    assert getmail, "getmail6 is not installed (make deps)"
    server, ca = pop3s
    expected = deliver(server, 100)
    mda, out = write_mda(tmp_path)
    getmaildir = tmp_path / "getmail"
    getmaildir.mkdir()
    rc = getmaildir / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
        f"port = {server.pop3s_port}\nusername = {ALICE}\npassword = {PASSWORD}\n"
        f"ca_certs = {ca}\n\n"
        # Tests run as root: getmail delivers as root only to an external MDA.
        f"[destination]\ntype = MDA_external\npath = {sys.executable}\n"
        f"arguments = ('{mda}',)\nallow_root_commands = true\n\n"
        "[options]\nread_all = true\ndelete = false\nreceived = false\n"
        "delivered_to = false\nverbose = 0\n"
    )
    result = subprocess.run(
        [getmail, "--getmaildir", str(getmaildir), "--rcfile", str(rc)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fetched = [p.read_bytes() for p in out.iterdir()]
    assert len(fetched) == 100
    assert sorted(fetched) == sorted(as_lf(e) for e in expected)
