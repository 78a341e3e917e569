"""Two estafeta processes configured as one cluster ([store] backend =
"cluster") over a real PostgreSQL 15 and moto's S3: mail taken by one is
read over IMAP and POP3 on the other; IDLE on one hears of the other's
deliveries; the CLI works on the shared accounts."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, estafeta, free_port
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig

ANA = f"ana@{DOMAIN}"


def store_section(database: DatabaseConfig, objects: ObjectsConfig, node: str) -> str:
    return (
        f'[store]\nbackend = "cluster"\nnode = "{node}"\n'
        f'[store.database]\nurl = "{database.url}"\n'
        f'password_file = "{database.password_file}"\nca_file = "{database.ca_file}"\n'
        f'[store.objects]\nbucket = "{objects.bucket}"\nprefix = "{objects.prefix}"\n'
        f'endpoint = "{objects.endpoint}"\nregion = "{objects.region}"\npath_style = true\n'
        f'credentials_file = "{objects.credentials_file}"\n'
    )


@pytest.fixture
def cluster(
    tmp_path: Path, database: DatabaseConfig, bucket: ObjectsConfig
) -> Iterator[tuple[Instance, Instance]]:
    nodes = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        node = Instance(
            root, free_port(), imap_port=free_port(), pop3_port=free_port(),
            extra_config=store_section(database, bucket, name),
            auth_config="allow_plaintext = true\n",
        )  # fmt: skip
        node.write_config()
        nodes.append(node)
    a, b = nodes
    a.add_user(ANA)  # on a's CLI: the account is in PostgreSQL
    for node in nodes:
        node.start()
    try:
        yield a, b
    finally:
        for node in nodes:
            if node.process is not None:
                node.stop()


def send(node: Instance, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", node.port, timeout=30) as smtp:
        smtp.sendmail(
            f"bob@{DOMAIN}", [ANA], f"Subject: {subject}\r\nFrom: bob@{DOMAIN}\r\n\r\nhello\r\n"
        )


def test_mail_taken_by_a_is_read_on_b(cluster: tuple[Instance, Instance]) -> None:
    a, b = cluster
    send(a, "first")
    send(b, "second")
    with imaplib.IMAP4("127.0.0.1", b.imap_port, timeout=30) as imap:
        imap.login(ANA, PASSWORD)
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        subjects = [part[1] for part in data if isinstance(part, tuple)]
        assert subjects == [b"Subject: first\r\n\r\n", b"Subject: second\r\n\r\n"]
        imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    with imaplib.IMAP4("127.0.0.1", a.imap_port, timeout=30) as imap:
        imap.login(ANA, PASSWORD)
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("FETCH", "1", "(FLAGS)")
        assert b"\\Flagged" in data[0]
    pop = poplib.POP3("127.0.0.1", a.pop3_port, timeout=30)
    try:
        pop.user(ANA)
        pop.pass_(PASSWORD)
        assert pop.stat()[0] == 2
        assert b"Subject: second" in pop.retr(2)[1]
    finally:
        pop.quit()


def test_idle_on_b_hears_a_delivery_on_a_within_a_second(
    cluster: tuple[Instance, Instance],
) -> None:
    a, b = cluster
    send(a, "before")
    imap = imaplib.IMAP4("127.0.0.1", b.imap_port, timeout=30)
    try:
        imap.login(ANA, PASSWORD)
        imap.select("INBOX")
        tag = imap._new_tag().decode()  # imaplib has no IDLE before 3.14
        imap.send(f"{tag} IDLE\r\n".encode())
        assert imap.readline().startswith(b"+")
        heard: list[float] = []

        def listen() -> None:
            line = imap.readline()
            if b"EXISTS" in line:
                heard.append(time.monotonic())

        listener = threading.Thread(target=listen)
        listener.start()
        sent = time.monotonic()
        send(a, "during")
        listener.join(10)
        assert heard, "no EXISTS on b"
        assert heard[0] - sent < 1.0, f"b heard after {heard[0] - sent:.2f} s"
        imap.send(b"DONE\r\n")
        while not (line := imap.readline()).startswith(tag.encode()):
            assert line.startswith(b"* "), line  # RECENT and the like
        assert line.startswith(tag.encode() + b" OK")
    finally:
        imap.shutdown()


def test_the_cli_shares_the_accounts(cluster: tuple[Instance, Instance]) -> None:
    a, b = cluster
    b.cli("user", "add", f"carl@{DOMAIN}", "--password-stdin", stdin=PASSWORD + "\n")
    listed = a.cli("user", "list").stdout
    assert f"carl@{DOMAIN}" in listed and ANA in listed
    # b's server learnt of the account from PostgreSQL's notice: it logs in.
    deadline = time.monotonic() + 5
    while not b.imap_opens(f"carl@{DOMAIN}", PASSWORD):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert a.imap_opens(f"carl@{DOMAIN}", PASSWORD)
    send(a, "for the cli")
    shown = b.cli("mail", "ls", ANA).stdout
    assert "for the cli" in shown
    refused = estafeta(a.config, "queue", "list", check=False)
    assert refused.returncode == 2 and "local store only" in refused.stderr
