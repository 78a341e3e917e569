"""``estafeta migrate --to cluster`` of a 10,000-message local store, then
IMAP on the cluster shows the same UIDVALIDITY, UIDs and flags (issue 23,
acceptance 3). Apart from test_cluster_migrate.py, so that each file stays
well under half a minute."""

from __future__ import annotations

import imaplib
import re
import time
from pathlib import Path

from test_cluster_migrate import ALICE, CARL, deliveries, node

from conftest import PASSWORD, estafeta, free_port
from estafeta.auth.accounts import Accounts
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig
from estafeta.config import load
from estafeta.store import Store


def test_ten_thousand_messages(tmp_path: Path, database: DatabaseConfig) -> None:
    """Issue 23 acceptance 3: migrate --to cluster of a 10,000-message local
    store, then IMAP on the cluster shows the same UIDVALIDITY, UIDs and flags.
    The bodies go into PostgreSQL (kind = "database"): moto's S3 takes about
    250 PUTs a second on this machine, which would make this test a minute
    of waiting on moto; the other tests here use moto."""
    objects = ObjectsConfig(kind="database")
    a = node(tmp_path / "a", database, objects, imap_port=free_port())
    config = load(a.config)
    config.data_dir.mkdir(parents=True)
    accounts = Accounts(config.accounts_db, config.domains, hasher=config.auth.hasher())
    for address in (ALICE, CARL):
        accounts.add_user(address, PASSWORD)
    accounts.close()
    plan = {ALICE: ("INBOX", "Archive", "Lists"), CARL: ("INBOX", "Archive")}
    expected: dict[tuple[str, str], list[tuple[int, str]]] = {}  # (UID, flags)
    uids: dict[tuple[str, str], tuple[int, int]] = {}  # (UIDVALIDITY, UIDNEXT)
    made = time.monotonic()
    with Store(config.mail_dir, config.hostname) as store:
        n = 0
        for address, boxes in plan.items():
            for box in boxes:
                if not store.has_mailbox(address, box):
                    store.create_mailbox(address, box)
                count = 2000
                for start in range(0, count, 500):
                    store.deliver_sync(deliveries(address, range(n + start, n + start + 500), box))
                n += count
                store.store_flags(address, box, list(range(1, count + 1, 3)), "+", ["\\Seen"])
                store.store_flags(
                    address, box, list(range(1, count + 1, 7)), "+", ["\\Flagged", "$Work"]
                )
    assert n == 10_000
    for address, boxes in plan.items():
        with Store(config.mail_dir, config.hostname) as store, store.reader(address) as reader:
            for box in boxes:
                mailbox = reader.mailbox(box)
                assert mailbox is not None
                expected[(address, box)] = [
                    (row.uid, " ".join(sorted(row.flags))) for row in reader.messages(mailbox.id)
                ]
                uids[(address, box)] = (mailbox.uidvalidity, mailbox.uidnext)
    print(f"\nlocal store of 10,000 messages made in {time.monotonic() - made:.1f} s")

    started = time.monotonic()
    result = estafeta(a.config, "migrate", "--to", "cluster", check=False)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    summary = next(line for line in result.stdout.splitlines() if line.startswith("copied "))
    print(f"migrate --to cluster: {seconds:.1f} s (process), {summary}")
    assert "10000 messages" in summary

    a.start()
    try:
        for address, boxes in plan.items():
            with imaplib.IMAP4("127.0.0.1", a.imap_port, timeout=30) as imap:
                imap.login(address, PASSWORD)
                for box in boxes:
                    typ, _ = imap.select(box, readonly=True)
                    assert typ == "OK"
                    said = imap.untagged_responses
                    uidvalidity, uidnext = (int(said[k][-1]) for k in ("UIDVALIDITY", "UIDNEXT"))
                    assert (uidvalidity, uidnext) == uids[(address, box)]
                    typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
                    assert typ == "OK"
                    got = []
                    for item in data:
                        assert isinstance(item, bytes), item
                        uid = re.search(rb"UID (\d+)", item)
                        flags = re.search(rb"FLAGS \(([^)]*)\)", item)
                        assert uid and flags, item
                        kept = sorted(f for f in flags[1].decode().split() if f != "\\Recent")
                        got.append((int(uid[1]), " ".join(kept)))
                    assert sorted(got) == expected[(address, box)], (address, box)
    finally:
        a.stop()
