"""Two estafeta processes configured as one cluster ([store] backend =
"cluster") over a real PostgreSQL 15 and moto's S3: mail taken by one is
read over IMAP and POP3 on the other; IDLE on one hears of the other's
deliveries; the CLI works on the shared accounts."""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

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


@contextlib.contextmanager
def make_cluster(
    tmp_path: Path, database: DatabaseConfig, objects: ObjectsConfig, extra: str = ""
) -> Iterator[tuple[Instance, Instance]]:
    nodes = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        node = Instance(
            root, free_port(), imap_port=free_port(), pop3_port=free_port(),
            submission_port=free_port(),
            extra_config=store_section(database, objects, name) + extra,
            auth_config="allow_plaintext = true\n",
        )  # fmt: skip
        node.write_config()
        nodes.append(node)
    a, b = nodes
    a.add_user(ANA)  # on a's CLI: the account is in PostgreSQL
    try:
        for node in nodes:
            node.start()
        yield a, b
    finally:
        for node in nodes:
            if node.process is not None:
                node.stop()


@pytest.fixture
def cluster(
    tmp_path: Path, database: DatabaseConfig, bucket: ObjectsConfig
) -> Iterator[tuple[Instance, Instance]]:
    with make_cluster(tmp_path, database, bucket) as nodes:
        yield nodes


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
        # rfc1939:8, rfc2449:8 IN-USE: one session per maildrop, across nodes.
        other = poplib.POP3("127.0.0.1", b.pop3_port, timeout=30)
        try:
            other.user(ANA)
            with pytest.raises(poplib.error_proto, match=r"IN-USE"):
                other.pass_(PASSWORD)
        finally:
            other.close()
    finally:
        pop.quit()
    again = poplib.POP3("127.0.0.1", b.pop3_port, timeout=30)  # released at QUIT
    try:
        again.user(ANA)
        again.pass_(PASSWORD)
        assert again.stat()[0] == 2
    finally:
        again.quit()


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
        send(a, "during")
        # From the 250 (the message committed on a), not from the start of
        # the SMTP session, whose cost on a loaded machine is not b's.
        delivered = time.monotonic()
        listener.join(10)
        assert heard, "no EXISTS on b"
        took = heard[0] - delivered
        assert took < 1.0, f"b heard {took:.2f} s after the delivery"
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
    assert "queue is empty" in a.cli("queue", "list").stdout  # the shared queue
    refused = estafeta(a.config, "backup", "list", check=False)
    assert refused.returncode == 2 and "local store only" in refused.stderr


class Sink:
    """The smarthost both nodes relay through: what it received."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(bytes(envelope.original_content or envelope.content))
        return "250 2.0.0 Ok: taken"


def test_outbound_mail_leaves_once_whichever_node_takes_it(
    tmp_path: Path, database: DatabaseConfig, bucket: ObjectsConfig
) -> None:
    """The queue is PostgreSQL's: both nodes' runners claim from it, and
    each message reaches the smarthost once."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "relay-ca.pem"))
    sink = Sink()
    port = free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    extra = (
        f'[queue]\nca_file = "{tmp_path / "relay-ca.pem"}"\n'
        f'[queue.relay]\nhost = "127.0.0.1:{port}"\n'
    )
    try:
        with make_cluster(tmp_path, database, bucket, extra) as (a, b):
            for n in range(6):
                node = (a, b)[n % 2]
                with smtplib.SMTP("127.0.0.1", node.submission_port, timeout=30) as smtp:
                    smtp.login(ANA, PASSWORD)
                    smtp.sendmail(
                        ANA, [f"far{n}@example.net"],
                        f"From: {ANA}\r\nTo: far{n}@example.net\r\nSubject: out {n}\r\n\r\nhi\r\n",
                    )  # fmt: skip
            deadline = time.monotonic() + 30
            while len(sink.received) < 6:
                assert time.monotonic() < deadline, f"{len(sink.received)} of 6 arrived"
                time.sleep(0.1)
            time.sleep(1.0)  # a second copy would come now
            subjects = sorted(
                line for data in sink.received for line in data.split(b"\r\n")
                if line.startswith(b"Subject: ")
            )  # fmt: skip
            assert subjects == [f"Subject: out {n}".encode() for n in range(6)]
            assert "queue is empty" in a.cli("queue", "list").stdout
    finally:
        controller.stop()
