"""``estafeta backup restore SNAPSHOT --account ADDRESS``: one account, into
a data directory whose server may be running.

The account's files (mail and index, Sieve scripts, junk-filter
statistics) and the server's accounts.db of that time are fetched into a
staging folder under ``data_dir/backup`` first (same file system), checked
and made durable; nothing in the live data directory changes before that.

* **The account does not exist** (deleted, or erased by mistake and the
  snapshot is older): its folders are renamed into place, then its rows
  (password, TOTP, app passwords, quota, aliases that led to it) are copied
  into accounts.db in one transaction: the account appears whole, with the
  UIDVALIDITY, UIDs, flags and modseqs of the snapshot, so its clients do
  not resynchronise. The server sees it within 50 ms (docs/operations.md).
* **The account exists**: its current mail is left alone. Each mailbox of
  the snapshot is added as ``Restored/<snapshot>/<name>`` through the
  store (new mailboxes: a new UIDVALIDITY, as IMAP requires for content a
  client has not seen under that name), with the messages' flags and
  internal dates; the user moves back what they miss. Credentials and
  Sieve scripts stay as they are now.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from pathlib import Path

from estafeta.address import AddressError, normalize_address
from estafeta.auth.accounts import Accounts
from estafeta.backup.objects import BackupError
from estafeta.backup.repository import SERVER, Repository
from estafeta.backup.restore import Reader, Tree, _finish, _lay_out
from estafeta.backup.sources import OWN_DIR, Planner
from estafeta.config import Config
from estafeta.message import summarize
from estafeta.store import Delivery, Store

BATCH = 100  # messages per delivery into an existing account


def restore_account(
    repository: Repository, snapshot: str, address: str, data_dir: Path, config: Config
) -> list[str]:
    try:
        address = normalize_address(address)
    except AddressError as exc:
        raise BackupError(str(exc)) from None
    reader = Reader(repository, snapshot)
    tree = reader.tree(address)  # KeyDestroyed: "key destroyed" before anything is written
    tree.files = [f for f in tree.files if not f.name.startswith("deleted/")]
    server = reader.tree(SERVER)
    server.files = [f for f in server.files if f.name == "accounts.db"]
    if not server.files:
        raise BackupError(f"snapshot {snapshot} has no accounts.db")
    stage = data_dir / OWN_DIR / f"restore-{secrets.token_hex(4)}"
    stage.mkdir(parents=True, mode=0o700)
    try:
        trees = [tree, server]
        _lay_out(stage, trees, {})
        reader.fetch(trees, True, stage, names={})
        _finish(stage, trees, {})
        live = _with_data_dir(config, data_dir)
        with _accounts(live, live.accounts_db) as accounts:
            exists = accounts.exists(address)
        if exists:
            return _into_existing(stage, tree, address, snapshot, live)
        return _as_new(stage, tree, address, snapshot, live)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _with_data_dir(config: Config, data_dir: Path) -> Config:
    import dataclasses

    return dataclasses.replace(config, data_dir=data_dir)


def _as_new(stage: Path, tree: Tree, address: str, snapshot: str, live: Config) -> list[str]:
    staged = _with_data_dir(live, stage)
    planner_live, planner_staged = Planner(live, stage), Planner(staged, stage)
    moved = []
    for there, here in zip(
        planner_staged.account_paths(address), planner_live.account_paths(address), strict=True
    ):
        if not there.exists():
            continue
        if here.exists():
            raise BackupError(
                f"{here} exists although {address} has no account; move it away first"
            )
        here.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(there, here)
        moved.append(here)
    added = _copy_account_rows(live, stage / "accounts.db", address)
    lines = [f"restored {address} from snapshot {snapshot} (UIDVALIDITY, UIDs and flags kept)"]
    lines += [f"  {path}" for path in moved]
    lines += [f"  {what}" for what in added]
    return lines


def _accounts(config: Config, path: Path) -> Accounts:
    return Accounts(path, config.domains, hasher=config.auth.hasher())


def _copy_account_rows(live: Config, snapshot_db: Path, address: str) -> list[str]:
    """The account's rows of the snapshot's accounts.db into the live one,
    in one transaction. Both are brought to the current schema first."""
    live_db = live.accounts_db
    for path in (snapshot_db, live_db):
        with _accounts(live, path):
            pass  # opening upgrades it to this version's schema
    conn = sqlite3.connect(live_db, timeout=30)
    try:
        conn.execute("ATTACH DATABASE ? AS snap", (str(snapshot_db),))
        said = []
        with conn:
            for table, where in (
                ("accounts", "address = ?"),
                ("totp", "address = ?"),
                ("app_passwords", "address = ?"),
                ("scram", "address = ?"),  # the salt of the rows' SCRAM keys
                ("aliases", "target = ?"),
            ):
                columns = [row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")]
                if not columns:
                    continue
                # Table and column names come from this code and the schema.
                names = ", ".join(columns)
                count = conn.execute(
                    f"INSERT OR IGNORE INTO main.{table} ({names})"  # noqa: S608
                    f" SELECT {names} FROM snap.{table} WHERE {where}",
                    (address,),
                ).rowcount
                if count and table != "accounts":
                    said.append(f"{count} {table.replace('_', ' ')} rows")
        conn.execute("DETACH DATABASE snap")
        return said
    finally:
        conn.close()


def _into_existing(stage: Path, tree: Tree, address: str, snapshot: str, live: Config) -> list[str]:
    staged = Store(stage / "mail", live.hostname)
    target = Store(live.mail_dir, live.hostname)
    lines = [
        f"{address} exists: the snapshot's mailboxes are added under Restored/{snapshot}/ "
        "with new UIDVALIDITY values (clients see new folders; nothing current is touched)"
    ]
    with staged, target:
        reader = staged.reader(address)
        with reader:
            for box in reader.mailboxes():
                rows = reader.messages(box.id)
                name = f"Restored/{snapshot}/{box.name}"
                target.create_mailbox(address, name)
                for start in range(0, len(rows), BATCH):
                    deliveries = []
                    for row in rows[start : start + BATCH]:
                        data = reader.content(row.file)
                        deliveries.append(
                            Delivery(
                                address,
                                data,
                                summarize(data),
                                mailbox=name,
                                flags=tuple(f for f in row.flags if f != "\\Recent"),
                                internal_date=row.internal_date,
                            )
                        )
                    target.deliver_sync(deliveries)
                created = target.reader(address)
                with created:
                    made = created.mailbox(name)
                uidvalidity = made.uidvalidity if made else "?"
                lines.append(
                    f"  {box.name} -> {name}: {len(rows)} messages, UIDVALIDITY "
                    f"{box.uidvalidity} -> {uidvalidity}"
                )
    return lines
