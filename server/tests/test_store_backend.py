"""The backend the suite runs against (``--store-backend``, conftest.py): with
"cluster", a server the suite starts keeps its mail in PostgreSQL and moto's
S3; with "local", in its data_dir. Either way the same mail comes back over
IMAP."""

from __future__ import annotations

import imaplib
import smtplib

import conftest
from conftest import DOMAIN, PASSWORD, Instance
from estafeta.config import load


def test_the_server_keeps_mail_in_the_chosen_backend(server: Instance, store_backend: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("x@sender.test", [f"alice@{DOMAIN}"], b"Subject: where\r\n\r\nbody\r\n")
    store = load(server.config).store
    assert store.backend == store_backend
    if store_backend == "cluster":
        assert conftest.CLUSTER is not None and store.database is not None
        rows = conftest.CLUSTER.postgres.psql(
            "SELECT count(*) FROM mail_rows WHERE tbl = 'messages'", store.database.url.database
        )
        assert rows.strip() == "1"
        assert not (server.data_dir / "mail" / DOMAIN / "alice").exists()
    else:
        assert len(server.files(f"alice@{DOMAIN}")) == 1
    server.stop()
    server.imap_port = conftest.free_port()
    server.auth_config = "allow_plaintext = true\n"
    server.write_config()
    server.start()
    with imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30) as imap:
        imap.login(f"alice@{DOMAIN}", PASSWORD)
        typ, data = imap.select("INBOX", readonly=True)
        assert (typ, data) == ("OK", [b"1"])
