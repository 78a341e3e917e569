"""Retention of snapshots (estafeta.backup.prune) and crypto-erasure of one
account (estafeta.backup.settings.forget_account), on a real store and a
directory repository, in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DOMAIN, Instance, estafeta, free_port
from estafeta import config as config_module
from estafeta.auth.accounts import Accounts
from estafeta.backup.create import Snapshotter
from estafeta.backup.objects import BackupError, KeyDestroyed
from estafeta.backup.prune import keep, prune
from estafeta.backup.repository import Repository
from estafeta.backup.restore import restore_all, verify
from estafeta.backup.restore_account import restore_account
from estafeta.backup.settings import forget_account, open_repository
from estafeta.config import Config
from estafeta.message import summarize
from estafeta.store import Delivery, Store

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"


def test_keep_follows_days_weeks_and_months() -> None:
    names = [
        "2026-11-30T230000Z-aaaaaa",
        "2026-12-01T010000Z-aaaaaa",
        "2026-12-01T020000Z-aaaaaa",  # newest of 1 December
        "2026-12-02T010000Z-aaaaaa",
        "2026-12-03T010000Z-aaaaaa",
        "2026-12-03T090000Z-aaaaaa",  # newest of all
        "2026-10-15T010000Z-aaaaaa",
        "2026-09-01T010000Z-aaaaaa",
    ]
    assert keep(names, 0, 0, 0) == ["2026-12-03T090000Z-aaaaaa"]
    assert keep(names, 2, 0, 0) == ["2026-12-02T010000Z-aaaaaa", "2026-12-03T090000Z-aaaaaa"]
    # Weeks: 2026-11-30 .. 12-03 are ISO week 49, 10-15 week 42.
    assert keep(names, 0, 2, 0) == ["2026-10-15T010000Z-aaaaaa", "2026-12-03T090000Z-aaaaaa"]
    assert keep(names, 0, 0, 3) == [
        "2026-10-15T010000Z-aaaaaa",
        "2026-11-30T230000Z-aaaaaa",
        "2026-12-03T090000Z-aaaaaa",
    ]
    assert keep(names, 7, 0, 0) == sorted(
        {"2026-11-30T230000Z-aaaaaa", "2026-12-01T020000Z-aaaaaa", "2026-12-02T010000Z-aaaaaa",
         "2026-12-03T090000Z-aaaaaa", "2026-10-15T010000Z-aaaaaa", "2026-09-01T010000Z-aaaaaa"}
    )  # fmt: skip
    with pytest.raises(BackupError, match="not a snapshot name"):
        keep(["x", "y"], 1, 0, 0)


class Site:
    def __init__(self, root: Path) -> None:
        self.inst = Instance(root / "live", free_port())
        self.inst.root.mkdir()
        self.inst.extra_config = (
            f'[backup]\nkey_file = "{root / "backup.key"}"\ndestination = "{root / "repo"}"\n'
        )
        self.inst.write_config()
        self.inst.add_user(ALICE)
        self.inst.add_user(BOB)
        self.inst.cli("backup", "key")
        self.config: Config = config_module.load(self.inst.config)
        self.store = Store(self.config.mail_dir, self.config.hostname)
        self.store.start()
        self.sent = 0

    def deliver(self, count: int, to: str, size: int = 200) -> None:
        deliveries = []
        for _ in range(count):
            self.sent += 1
            data = f"Subject: m{self.sent}\r\n\r\n".encode() + b"x" * size + b"\r\n"
            deliveries.append(Delivery(to, data, summarize(data)))
        self.store.deliver_sync(deliveries)
        self.store.settle()  # files in new/ (else their octets wait in the index)

    def snapshot(self) -> str:
        repository = open_repository(self.config, create=True)
        return Snapshotter(self.config, repository, progress=False).run().snapshot

    def repository(self) -> Repository:
        return open_repository(self.config)

    def restored_inbox(self, data_dir: Path, address: str) -> list[tuple[int, bytes]]:
        """(UID, content) of each message in the INBOX of a restored data_dir."""
        with Store(data_dir / "mail", self.config.hostname) as store:
            reader = store.reader(address)
            with reader:
                box = reader.mailbox("INBOX")
                assert box is not None
                return [(row.uid, reader.content(row.file)) for row in reader.messages(box.id)]

    def close(self) -> None:
        self.store.stop()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    made = Site(tmp_path)
    yield made  # type: ignore[misc]
    made.close()


def _pack_files(root: Path) -> set[str]:
    return {p.name for p in (root / "repo" / "packs").rglob("*") if p.is_file()}


def test_prune_forgets_snapshots_and_sweeps_what_nothing_needs(site: Site, tmp_path: Path) -> None:
    site.deliver(40, ALICE, size=20_000)
    first = site.snapshot()
    site.store.remove(ALICE, "INBOX", list(range(1, 31)))  # most of the first run's mail
    site.deliver(5, BOB)
    second = site.snapshot()
    site.deliver(5, BOB)
    third = site.snapshot()
    packs_before = _pack_files(tmp_path)
    # A pack a killed run left behind (no index lists it):
    orphan = tmp_path / "repo" / "packs" / "ff" / ("ff" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a killed run")

    dry = prune(site.repository(), 0, 0, 0, dry_run=True)
    assert dry.forgotten == [first, second] and dry.kept == [third]
    assert site.repository().snapshots() == [first, second, third]

    report = prune(site.repository(), 0, 0, 0)
    assert report.forgotten == [first, second] and report.kept == [third]
    assert report.packs_deleted >= 1 and report.octets_freed > 0
    repository = site.repository()
    assert repository.snapshots() == [third]
    assert not orphan.exists()
    assert _pack_files(tmp_path) != packs_before
    assert len(list(repository.destination.list("index"))) == 1
    checked = verify(repository, third)
    assert checked.files > 0 and not checked.erased
    target = tmp_path / "restored"
    restore_all(repository, third, target)
    inbox = site.restored_inbox(target, ALICE)
    assert [uid for uid, _ in inbox] == list(range(31, 41))
    assert all(len(content) > 20_000 for _, content in inbox)

    # Nothing left to do: a second prune deletes nothing.
    again = prune(site.repository(), 0, 0, 0)
    assert again.forgotten == [] and again.packs_deleted == 0 and again.packs_repacked == 0


def test_prune_does_not_run_beside_a_create(site: Site) -> None:
    site.deliver(3, ALICE)
    site.snapshot()
    repository = site.repository()
    with repository.lock("create"), pytest.raises(BackupError, match="another backup process"):
        prune(site.repository(), 0, 0, 0)
    # A create waits for a prune (here: gives up after `wait`).
    pruning, creating = site.repository(), site.repository()
    with pruning.lock("prune"), pytest.raises(BackupError, match="prune on"):
        creating.lock("create", wait=0.5).__enter__()


def test_an_erased_account_cannot_be_restored_from_old_snapshots(
    site: Site, tmp_path: Path
) -> None:
    site.deliver(4, ALICE)
    site.deliver(3, BOB)
    old = site.snapshot()
    lines = forget_account(site.config, ALICE)
    assert "is destroyed" in lines[0]
    assert "held no key" in forget_account(site.config, ALICE)[0]  # idempotent

    repository = site.repository()
    with pytest.raises(KeyDestroyed, match=f"{ALICE}: key destroyed"):
        restore_account(repository, old, ALICE, site.config.data_dir, site.config)
    result = estafeta(site.inst.config, "backup", "restore", old, "--account", ALICE, check=False)
    assert result.returncode == 1 and "key destroyed" in result.stderr

    target = tmp_path / "restored"
    report = restore_all(repository, old, target)
    assert report.erased == [ALICE] and BOB in report.scopes
    assert not (target / "mail" / DOMAIN / "alice").exists()
    assert (target / "mail" / DOMAIN / "bob" / "index.db").exists()
    checked = verify(repository, old)
    assert checked.erased == [ALICE]
    out = json.loads(estafeta(site.inst.config, "backup", "verify", old, "--json").stdout)
    assert out["erased"] == [ALICE]

    # A new account under the old address gets a new key; its backups work.
    site.deliver(2, ALICE)
    new = site.snapshot()
    assert restore_account(site.repository(), new, ALICE, tmp_path / "elsewhere", site.config)
    # Prune sweeps the erased objects once no kept snapshot lists them readably.
    report_prune = prune(site.repository(), 0, 0, 0)
    assert report_prune.forgotten == [old]


def test_forget_without_backups_configured(tmp_path: Path) -> None:
    inst = Instance(tmp_path, free_port())
    inst.write_config()
    config = config_module.load(inst.config)
    assert "none configured" in forget_account(config, ALICE)[0]
    assert Accounts  # the module imports what erase needs
