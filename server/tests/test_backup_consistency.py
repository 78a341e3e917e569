"""A snapshot stays consistent when mail changes under a running backup:
a message expunged (or a queued message delivered) between the copy of its
database and the read of its file is taken out of the copy, so a restored
index never lists a file that is not there (estafeta.backup.sources)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_backup_prune import ALICE, BOB, Site, site  # noqa: F401  (a fixture)

from estafeta.backup import create as create_module
from estafeta.backup.restore import restore_all
from estafeta.message import summarize
from estafeta.store import Delivery, Store, index


def test_a_message_expunged_during_the_run_leaves_the_copy_too(
    site: Site,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site.deliver(6, ALICE)
    site.deliver(2, BOB)
    original = create_module.Planner.plan
    expunged: list[int] = []

    def plan_then_expunge(self: create_module.Planner) -> list[create_module.Scope]:
        scopes = original(self)
        # After the index was copied and its files listed: two go.
        expunged.extend(site.store.remove(ALICE, "INBOX", [2, 5]))
        return scopes

    monkeypatch.setattr(create_module.Planner, "plan", plan_then_expunge)
    snapshot = site.snapshot()
    assert expunged == [2, 5]
    repository = site.repository()
    manifest = repository.manifest(snapshot)
    scopes = manifest["scopes"]
    assert isinstance(scopes, dict) and scopes[ALICE]["dropped"] == 2

    target = tmp_path / "restored"
    restore_all(repository, snapshot, target)
    inbox = site.restored_inbox(target, ALICE)
    assert [uid for uid, _ in inbox] == [1, 3, 4, 6]
    assert all(content.startswith(b"Subject: m") for _, content in inbox)


def test_messages_not_settled_yet_are_restored_from_the_index(
    site: Site,  # noqa: F811
    tmp_path: Path,
) -> None:
    site.store.stop()
    # Files wait in tmp/ with their octets in the index's pending table.
    site.store = Store(site.config.mail_dir, site.config.hostname, settle_delay=3600)
    site.store.start()
    data = [f"Subject: pending {n}\r\n\r\nbody {n}\r\n".encode() for n in range(3)]
    site.store.deliver_sync([Delivery(ALICE, d, summarize(d)) for d in data])
    conn = index.connect(site.config.mail_dir / "example.test" / "alice" / "index.db")
    try:
        assert conn.execute("SELECT count(*) FROM pending").fetchone()[0] == 3
    finally:
        conn.close()
    snapshot = site.snapshot()
    target = tmp_path / "restored"
    restore_all(site.repository(), snapshot, target)
    contents = sorted(content for _, content in site.restored_inbox(target, ALICE))
    assert contents == sorted(data)
    assert sorted(p.name for p in (target / "mail" / "example.test" / "alice" / "new").iterdir())


def test_the_roles_pre_upgrade_copies_are_not_backed_up(
    site: Site,  # noqa: F811
    tmp_path: Path,
) -> None:
    # roles/estafeta/files/snapshot_databases.py copies every database into
    # data_dir/pre-upgrade/RELEASE/ before an upgrade; a backup that carried
    # them would hold account indexes outside the accounts' scopes.
    site.deliver(2, ALICE)
    copies = site.config.data_dir / "pre-upgrade" / "0.1.0-abc"
    copies.mkdir(parents=True)
    (copies / "accounts.db").write_bytes((site.config.accounts_db).read_bytes())
    (copies / "note").write_text("kept on the host only\n")
    snapshot = site.snapshot()
    target = tmp_path / "restored"
    restore_all(site.repository(), snapshot, target)
    assert not (target / "pre-upgrade").exists()
    assert [uid for uid, _ in site.restored_inbox(target, ALICE)] == [1, 2]
