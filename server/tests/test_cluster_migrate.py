"""``estafeta migrate`` (estafeta.cluster_migrate): a local store made by
the real code, copied into a real PostgreSQL 15 and moto's S3, read back
through the cluster backend (store, accounts, Sieve), and copied back into
a new local store that must equal the first: UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ, UIDs, flags, modseqs, EMAILIDs, bodies, aliases, passwords,
app passwords, the active script. Then: reruns are no-ops, a crash in the
middle leaves nothing and the rerun completes, tampering is found, and the
refusals of the command (exit 2)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import DOMAIN, PASSWORD, Instance, estafeta, free_port, run_drained
from estafeta import cli, cluster_migrate
from estafeta.auth.accounts import Accounts
from estafeta.auth.cluster import ClusterAccounts
from estafeta.cluster.blobs import Blobs, S3Bodies
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.replica import describe
from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig
from estafeta.cluster_migrate_check import cluster_stem
from estafeta.config import Config, load
from estafeta.message import summarize
from estafeta.sieve.cluster import ClusterScriptStore
from estafeta.sieve.scripts import ScriptStore
from estafeta.store import Delivery, Store, shared
from estafeta.store.cluster import INDEX_TABLES, ClusterStore, body_of

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CARL = f"carl@{DOMAIN}"
SCRIPT = 'require "fileinto";\nif header :contains "subject" "work" { fileinto "Work"; }\n'


def store_section(database: DatabaseConfig, objects: ObjectsConfig) -> str:
    return (
        f'[store]\nbackend = "cluster"\nnode = "m"\n'
        f'[store.database]\nurl = "{database.url}"\n'
        f'password_file = "{database.password_file}"\nca_file = "{database.ca_file}"\n'
        f"pool_size = 10\n"
        + (
            '[store.objects]\nkind = "database"\n'
            if objects.kind == "database"
            else f'[store.objects]\nbucket = "{objects.bucket}"\nprefix = "{objects.prefix}"\n'
            f'endpoint = "{objects.endpoint}"\nregion = "{objects.region}"\npath_style = true\n'
            f'credentials_file = "{objects.credentials_file}"\n'
        )
    )


def node(root: Path, database: DatabaseConfig, objects: ObjectsConfig, **fields: Any) -> Instance:
    """A node's config (cluster store) over ``root/data``, the local store."""
    root.mkdir(parents=True, exist_ok=True)
    made = Instance(
        root, free_port(), extra_config=store_section(database, objects),
        auth_config="allow_plaintext = true\n", **fields,
    )  # fmt: skip
    made.write_config()
    return made


def mail(n: int, to: str = ALICE, extra: str = "") -> bytes:
    return (
        f"From: dan@example.net\r\nTo: {to}\r\nSubject: note {n}{extra}\r\n"
        f"Message-ID: <{n}.{to}@example.net>\r\n\r\nbody {n}\r\n"
    ).encode()


def deliveries(address: str, numbers: range, mailbox: str = "INBOX") -> list[Delivery]:
    out = []
    for n in numbers:
        data = mail(n, address)
        out.append(
            Delivery(address, data, summarize(data), mailbox=mailbox, internal_date=1.7e9 + n)
        )
    return out


@dataclass
class Local:
    config: Config
    app_password: str


def build_local(config: Config) -> Local:
    """A local store made by the real code: mailboxes, flags, a COPY (a hard
    link), an expunge, a subscription, the shared store with an ACL and a
    private \\Seen, a message acknowledged whose file is only in
    ``pending``; accounts with an alias, a quota and an app password; Sieve."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    accounts = Accounts(config.accounts_db, config.domains, hasher=config.auth.hasher())
    try:
        for address in (ALICE, BOB):
            accounts.add_user(address, PASSWORD)
        accounts.add_alias(f"info@{DOMAIN}", [ALICE, BOB])
        accounts.set_quota(BOB, 10_000_000)
        app_password = accounts.app_password_create(ALICE, "phone", protocols="imap")
    finally:
        accounts.close()
    with Store(config.mail_dir, config.hostname) as store:
        store.deliver_sync(deliveries(ALICE, range(1, 7)))
        store.deliver_sync(deliveries(BOB, range(1, 4)))
        store.create_mailbox(ALICE, "Work")
        store.create_mailbox(ALICE, "Work/Old")
        store.deliver_sync(deliveries(ALICE, range(10, 13), "Work"))
        store.store_flags(ALICE, "INBOX", [1, 2], "+", ["\\Seen", "$Label1"])
        store.store_flags(ALICE, "INBOX", [3], "+", ["\\Deleted"])
        store.expunge(ALICE, "INBOX", [3])
        store.copy(ALICE, "INBOX", [1, 4], "Work/Old")
        store.subscribe(ALICE, "Work/Old", False)
        run_drained(store.append(ALICE, "Drafts", mail(99), ["\\Draft"], internal_date=1.6e9))
        store.create_mailbox(shared.OWNER, "team")
        store.set_acl("team", ALICE, "lrs")
        store.deliver_sync(deliveries(shared.OWNER, range(20, 23), "team"))
        store.store_flags(shared.OWNER, "team", [2], "+", ["\\Seen"], viewer=ALICE)
    # A message acknowledged whose file never became durable (a crash
    # before settling): its bytes are only in ``pending`` (estafeta.store.ingest).
    path = config.mail_dir / DOMAIN / "bob" / "index.db"
    conn = sqlite3.connect(path)
    (file,) = conn.execute("SELECT file FROM messages WHERE uid = 3").fetchone()
    data = (path.parent / file).read_bytes()
    with conn:
        conn.execute("INSERT INTO pending (file, data) VALUES (?, ?)", (file, data))
    conn.close()
    os.unlink(path.parent / file)
    scripts = local_scripts(config)
    scripts.put(ALICE, "main", SCRIPT)
    scripts.put(ALICE, "spare", "keep;\n")
    scripts.activate(ALICE, "main")
    return Local(config, app_password)


def local_scripts(config: Config) -> ScriptStore:
    return ScriptStore(
        config.sieve_dir,
        max_script_size=config.sieve.max_script_size,
        max_scripts=config.sieve.max_scripts,
    )


def dump(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Every replicated row of an index (table -> key -> row), files as stems."""
    conn = sqlite3.connect(path)
    try:
        result: dict[str, dict[str, dict[str, Any]]] = {}
        for table in describe(conn, INDEX_TABLES):
            keys, columns = ", ".join(table.key), ", ".join(table.columns)
            rows = result.setdefault(table.name, {})
            for key, *values in conn.execute(
                f"SELECT json_array({keys}), {columns} FROM {table.name}"  # noqa: S608
            ):
                row = dict(zip(table.columns, values, strict=True))
                if table.name == "messages":
                    file = row["file"]
                    row["file"] = cluster_stem(file.split(",B=")[0])
                rows[key] = row
        return result
    finally:
        conn.close()


def local_bodies(store_dir: Path, address: str) -> dict[tuple[str, int], bytes]:
    """(mailbox, UID) -> bytes, read through the local store's reader."""
    with Store(store_dir, "mx") as store, store.reader(address) as reader:
        return {
            (box.name, row.uid): reader.content(row.file)
            for box in reader.mailboxes()
            for row in reader.messages(box.id)
        }


@pytest.fixture
def cluster(
    tmp_path: Path, database: DatabaseConfig, bucket: ObjectsConfig
) -> Iterator[tuple[IoLoop, Database, Blobs]]:
    """A node of this test's own on the cluster: to read what was migrated."""
    io = IoLoop("test-io").start()
    db = Database(database)
    io.run(db.open())
    blobs = Blobs(db, bucket, tmp_path / "cache", 0)
    yield io, db, blobs
    blobs.close()
    io.run(db.close())
    io.stop()


def migrate(config: Config, direction: str, **options: Any) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = cluster_migrate.run(config, direction, out=lines.append, **options)
    return code, lines


def test_round_trip_keeps_everything(
    tmp_path: Path,
    database: DatabaseConfig,
    bucket: ObjectsConfig,
    cluster: tuple[IoLoop, Database, Blobs],
) -> None:
    io, db, blobs = cluster
    a = node(tmp_path / "a", database, bucket)
    config = load(a.config)
    local = build_local(config)
    before = {
        address: dump(Store(config.mail_dir, "mx").account_dir(address) / "index.db")
        for address in (ALICE, BOB, shared.OWNER)
    }
    bodies = {address: local_bodies(config.mail_dir, address) for address in (ALICE, BOB)}

    code, lines = migrate(config, "cluster")
    assert code == 0, lines
    assert any(line.startswith(f"{ALICE}: ") and "messages" in line for line in lines)
    assert any("same in both" in line and line.startswith(shared.OWNER) for line in lines)

    # A rerun copies nothing: every account is found and compared (before
    # anything is changed in the cluster: then it would refuse, see below).
    code, lines = migrate(config, "cluster")
    assert code == 0, lines
    skipped = [line for line in lines if "(an earlier run)" in line]
    assert len(skipped) == 4, lines  # alice, bob, the shared store, #accounts
    assert any("copied 0 accounts" in line for line in lines)

    # The cluster backend serves what was migrated: rows, bodies, viewers.
    with ClusterStore(
        tmp_path / "replicas", "mx", io=io, db=db, bodies=blobs, listen=False
    ) as store:
        for address in (ALICE, BOB, shared.OWNER):
            with store.reader(address) as reader:
                replica = reader.conn.execute("PRAGMA database_list").fetchone()[2]
            assert dump(Path(replica)) == before[address], address
        for address in (ALICE, BOB):
            with store.reader(address) as reader:
                for box in reader.mailboxes():
                    for row in reader.messages(box.id):
                        assert reader.content(row.file) == bodies[address][(box.name, row.uid)]
                        assert (
                            body_of(row.file)
                            == hashlib.sha256(reader.content(row.file)).hexdigest()
                        )
        with store.reader(shared.OWNER, viewer=ALICE) as reader:
            team = reader.mailbox("team")
            assert team is not None
            assert [flags for _, flags, _ in reader.flag_rows(team.id)] == ["", "\\Seen", ""]
        # The pending-only message is there with its bytes.
        with store.reader(BOB) as reader:
            inbox = reader.mailbox("INBOX")
            assert inbox is not None
            file = reader.message_file(inbox.id, 3)
            assert file is not None and reader.content(file) == mail(3, BOB)

    accounts = ClusterAccounts(
        tmp_path / "accounts-replica.db", config.domains, io=io, db=db,
        hasher=config.auth.hasher(),
    )  # fmt: skip
    try:
        assert accounts.list_users() == [ALICE, BOB]
        assert accounts.verify_password(ALICE, PASSWORD, rehash=False)
        assert not accounts.verify_password(ALICE, PASSWORD + "x", rehash=False)
        assert accounts.authenticate(ALICE, local.app_password, "imap") == ALICE
        assert accounts.list_aliases() == {f"info@{DOMAIN}": [ALICE, BOB]}
        assert accounts.get_quota(BOB) == 10_000_000
    finally:
        accounts.close()
    scripts = ClusterScriptStore(io, db, max_script_size=65536, max_scripts=5)
    assert scripts.active(ALICE) == ("main", SCRIPT)
    assert scripts.list(ALICE) == [("main", True), ("spare", False)]

    # The cluster goes on from there: UIDs from UIDNEXT, the same UIDVALIDITY.
    old = before[ALICE]["mailboxes"]
    inbox_row = next(r for r in old.values() if r["name"] == "INBOX")
    with ClusterStore(
        tmp_path / "replicas", "mx", io=io, db=db, bodies=blobs, listen=False
    ) as store:
        [delivered] = store.deliver_sync(deliveries(ALICE, range(50, 51)))
    assert delivered.uid == inbox_row["uidnext"]
    assert delivered.uidvalidity == inbox_row["uidvalidity"]

    # Back into a new local store: the same as the first (but the message
    # delivered on the cluster meanwhile).
    b = node(tmp_path / "b", database, bucket)
    config_b = load(b.config)
    code, lines = migrate(config_b, "local")
    assert code == 0, lines
    after = {
        address: dump(Store(config_b.mail_dir, "mx").account_dir(address) / "index.db")
        for address in (ALICE, BOB, shared.OWNER)
    }
    assert after[BOB] == before[BOB]
    assert after[shared.OWNER] == before[shared.OWNER]
    grown = after[ALICE]["messages"]
    new_key = next(k for k in grown if k not in before[ALICE]["messages"])
    assert grown.pop(new_key)["uid"] == inbox_row["uidnext"]
    for table in ("messages", "expunged", "meta", "subscriptions", "acl"):
        assert after[ALICE][table] == before[ALICE][table], table
    for key, row in after[ALICE]["mailboxes"].items():
        if row["name"] != "INBOX":
            assert row == before[ALICE]["mailboxes"][key]
    assert local_bodies(config_b.mail_dir, BOB) == bodies[BOB]
    got = local_bodies(config_b.mail_dir, ALICE)
    assert {k: v for k, v in got.items() if k != ("INBOX", inbox_row["uidnext"])} == bodies[ALICE]
    back = Accounts(config_b.accounts_db, config_b.domains, hasher=config_b.auth.hasher())
    try:
        assert back.verify_password(BOB, PASSWORD, rehash=False)
        assert back.authenticate(ALICE, local.app_password, "imap") == ALICE
        assert back.list_aliases() == {f"info@{DOMAIN}": [ALICE, BOB]}
    finally:
        back.close()
    assert local_scripts(config_b).active(ALICE) == ("main", SCRIPT)
    # The local backend opened every account above (local_bodies): its
    # recovery found no file the index does not name, so nothing changed.
    code, lines = migrate(config_b, "local")
    assert code == 0 and sum("(an earlier run)" in line for line in lines) == 4, lines


def set_flags(io: IoLoop, db: Database, scope: str, key: str, flags: str) -> None:
    """Change a message's flags in PostgreSQL behind the cluster's back."""
    io.run(
        db.pool.execute(
            "UPDATE mail_rows SET row = jsonb_set(row, '{flags}', to_jsonb($3::text))"
            " WHERE scope = $1 AND tbl = 'messages' AND key = $2",
            scope,
            key,
            flags,
        )
    )


def test_verify_names_a_tampered_row_and_a_lost_body(
    tmp_path: Path,
    database: DatabaseConfig,
    bucket: ObjectsConfig,
    cluster: tuple[IoLoop, Database, Blobs],
) -> None:
    io, db, blobs = cluster
    config = load(node(tmp_path / "a", database, bucket).config)
    build_local(config)
    assert migrate(config, "cluster")[0] == 0
    set_flags(io, db, ALICE, "[1,2]", "\\Flagged")
    code, lines = migrate(config, "cluster", verify_only=True)
    assert code == 1
    assert any(
        line.startswith(
            f"{ALICE}: mailbox 'INBOX' UID 2: flags '\\Seen $Label1' local,"
            " '\\Flagged' in the cluster"
        )
        for line in lines
    ), lines
    assert "verify: 1 differences in 3 accounts" in lines[-1]
    set_flags(io, db, ALICE, "[1,2]", "\\Seen $Label1")
    assert migrate(config, "cluster", verify_only=True)[0] == 0

    # A body gone from the object store: --verify-bodies all finds it.
    file = io.run(
        db.pool.fetchval(
            "SELECT row->>'file' FROM mail_rows WHERE scope = $1 AND tbl = 'messages'"
            " AND key = '[1,1]'",
            BOB,
        )
    )
    digest = body_of(file)
    s3 = blobs.bodies
    assert isinstance(s3, S3Bodies)
    s3.client.delete_object(Bucket=bucket.bucket, Key=s3.key(digest))
    code, lines = migrate(config, "cluster", verify_only=True, verify_bodies="all")
    assert code == 1
    assert any(line.startswith(f"{BOB}: body {digest}") and "missing" in line for line in lines)


def test_a_crash_in_the_middle_leaves_nothing_and_the_rerun_completes(
    tmp_path: Path,
    database: DatabaseConfig,
    bucket: ObjectsConfig,
    cluster: tuple[IoLoop, Database, Blobs],
) -> None:
    io, db, _blobs = cluster
    config = load(node(tmp_path / "a", database, bucket).config)
    build_local(config)
    work = cluster_migrate.Migration(config, out=lambda _line: None)

    def crash(scope: str) -> None:
        if scope == BOB:
            raise RuntimeError("power cut")

    work.before_commit = crash
    with pytest.raises(RuntimeError, match="power cut"):
        cluster_migrate.run(config, "cluster", migration=work)
    versions = dict(io.run(db.pool.fetch("SELECT scope, version FROM mail_scopes")))
    assert versions == {ALICE: 1}  # bob's transaction left nothing, not even its scope
    assert io.run(db.pool.fetchval("SELECT count(*) FROM mail_rows WHERE scope = $1", BOB)) == 0
    # Bob's bodies were stored before: the rerun claims them, puts nothing.
    stored = io.run(db.pool.fetchval("SELECT count(*) FROM blobs WHERE stored"))
    assert stored == 9 + 3  # alice's 9 bodies (her copies share theirs), bob's 3
    code, lines = migrate(config, "cluster")
    assert code == 0, lines
    assert f"{ALICE}: already in the target (an earlier run), skipped" in lines
    assert any(line.startswith(f"{BOB}: 3 messages") for line in lines)
    assert io.run(db.pool.fetchval("SELECT count(*) FROM blobs WHERE stored")) == stored + 3

    # The way back, after a crash that left a half-made account directory
    # and the first of alice's two Sieve scripts: the rerun finishes both.
    config_b = load(node(tmp_path / "b", database, bucket).config)
    leftover = config_b.mail_dir / DOMAIN / ".migrating-alice"
    (leftover / "new").mkdir(parents=True)
    (leftover / "new" / "half").write_bytes(b"From: half")
    local_scripts(config_b).put(ALICE, "main", SCRIPT)
    code, lines = migrate(config_b, "local")
    assert code == 0, lines
    assert not leftover.exists()
    assert sorted(p.name for p in (config_b.mail_dir / DOMAIN).iterdir()) == ["alice", "bob"]
    assert local_scripts(config_b).list(ALICE) == [("main", True), ("spare", False)]


def main(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    """``estafeta -c CONFIG ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(["-c", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_refuses_what_it_must_not_do(
    tmp_path: Path,
    database: DatabaseConfig,
    bucket: ObjectsConfig,
    cluster: tuple[IoLoop, Database, Blobs],
    capsys: pytest.CaptureFixture[str],
) -> None:
    io, db, blobs = cluster
    a = node(tmp_path / "a", database, bucket)
    config = load(a.config)
    build_local(config)
    account = config.mail_dir / DOMAIN / "alice"
    conn = sqlite3.connect(account / "index.db")
    file, uid = conn.execute(
        "SELECT file, uid FROM messages WHERE mailbox_id = (SELECT id FROM mailboxes"
        " WHERE name = 'Work') ORDER BY uid LIMIT 1 OFFSET 1"
    ).fetchone()
    conn.close()
    gone = account / file
    gone.unlink()

    # A missing message file: exit 2, naming the account and the file.
    result = estafeta(a.config, "migrate", "--to", "cluster", check=False)
    assert result.returncode == 2, result.stderr
    assert ALICE in result.stderr and gone.name in result.stderr
    assert "--skip-missing" in result.stderr
    assert io.run(db.pool.fetchval("SELECT count(*) FROM mail_scopes WHERE version > 0")) == 0

    # The server answering on this node: exit 2.
    with socket.create_server(("127.0.0.1", a.port)):
        code, _, err = main(capsys, a.config, "migrate", "--to", "cluster", "--skip-missing")
    assert code == 2 and "stop the estafeta server" in err

    # --skip-missing: migrated without it, listed, expunged in the copy.
    result = estafeta(a.config, "migrate", "--to", "cluster", "--skip-missing", check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(
        rf"{re.escape(ALICE)}: missing \.Work/new/{re.escape(gone.name)}", result.stdout
    )
    assert "1 messages left out" in result.stdout
    with (
        ClusterStore(
            tmp_path / "replicas", "mx", io=io, db=db, bodies=blobs, listen=False
        ) as store,
        store.reader(ALICE) as reader,
    ):
        work = reader.mailbox("Work")
        assert work is not None
        assert [row.uid for row in reader.messages(work.id)] == [1, 3]
        assert reader.vanished_since(work.id, work.highestmodseq - 1) == [uid]
        # The cluster changes: the local store's copy is no longer the same.
        store.store_flags(ALICE, "Work", [3], "+", ["\\Flagged"])
    code, _, err = main(capsys, a.config, "migrate", "--to", "cluster", "--skip-missing")
    assert code == 2
    assert "other content" in err and "nothing was overwritten" in err
    assert "mailbox 'Work'" in err
    # --verify says how: exit 1, the differences on stdout.
    code, out, _ = main(
        capsys, a.config, "migrate", "--to", "cluster", "--verify", "--skip-missing"
    )
    assert code == 1 and f"{ALICE}: mailbox 'Work' UID 3: flags '' local, '\\Flagged'" in out

    # A config without the cluster: exit 2.
    plain = tmp_path / "plain.toml"
    plain.write_text(a.config.read_text().split("[store]")[0])
    code, _, err = main(capsys, plain, "migrate", "--to", "cluster")
    assert code == 2 and "cluster's settings" in err

    # --to local over a local store that has the accounts with other content.
    code, _, err = main(capsys, a.config, "migrate", "--to", "local")
    assert code == 2 and "other content" in err
