"""`estafeta backup` end to end (issue 18): a running server is backed up
while it serves, restored onto an empty data directory, and a second server
on the restored data answers IMAP with the same UIDVALIDITY, UIDs, flags and
modseqs; logins, TOTP, app passwords, DKIM keys and Sieve survive; bad keys
and damaged objects are refused by name and a failed restore writes nothing."""

from __future__ import annotations

import imaplib
import json
import re
import shutil
import smtplib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from conftest import DOMAIN, PASSWORD, Instance, estafeta, free_port
from estafeta.auth.accounts import Accounts

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
RULES = 'require "fileinto";\nif header :contains "subject" "report" { fileinto "Reports"; }\n'


def _instance(root: Path, data_dir: Path | None = None) -> Instance:
    root.mkdir(parents=True, exist_ok=True)
    inst = Instance(
        root,
        free_port(),
        imap_port=free_port(),
        http_port=free_port(),
        auth_config="allow_plaintext = true\ndelay_base = 0.01\nmax_delay = 0.02\n",
    )
    if data_dir is not None:
        inst.extra_config = ""
    inst.extra_config += (
        f'[backup]\nkey_file = "{root.parent / "backup.key"}"\n'
        f'destination = "{root.parent / "repo"}"\n'
    )
    inst.write_config()
    if data_dir is not None:
        text = inst.config.read_text().replace(str(inst.data_dir), str(data_dir))
        inst.config.write_text(text)
    return inst


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Instance]:
    inst = _instance(tmp_path / "live")
    inst.add_user(ALICE)
    inst.add_user(BOB)
    inst.cli("backup", "key")
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


def _send(inst: Instance, count: int, to: list[str], subject: str = "note") -> None:
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as smtp:
        for number in range(count):
            body = f"Subject: {subject} {number}\r\nMessage-ID: <{subject}{number}@x>\r\n\r\n"
            smtp.sendmail("carol@remote.test", to, (body + f"text {number}\r\n").encode())


def _imap(inst: Instance, user: str, secret: str = PASSWORD) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", inst.imap_port, timeout=30)
    client.login(user, secret)
    return client


def _files(root: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file())


def _state(inst: Instance, user: str, secret: str = PASSWORD) -> dict[str, object]:
    """Per mailbox: UIDVALIDITY, HIGHESTMODSEQ and (UID, FLAGS, MODSEQ) of each message."""
    client = _imap(inst, user, secret)
    try:
        client.enable("CONDSTORE")
        state: dict[str, object] = {}
        _, listing = client.list()
        for line in listing:
            assert isinstance(line, bytes)
            name = line.decode().rsplit(' "/" ', 1)[1].strip('"')
            client.select(f'"{name}"', readonly=True)
            validity = client.response("UIDVALIDITY")[1][0]
            modseq = client.response("HIGHESTMODSEQ")[1][0]
            _, data = client.uid("FETCH", "1:*", "(FLAGS MODSEQ)")
            rows = sorted(
                re.sub(rb"^\d+ ", b"", item).decode() for item in data if isinstance(item, bytes)
            )
            state[name] = (validity, modseq, rows)
        return state
    finally:
        client.logout()


def _prepare(live: Instance) -> dict[str, str]:
    """Mail, flags, a second mailbox, Sieve, TOTP, an app password, DKIM."""
    _send(live, 12, [ALICE, BOB])
    client = _imap(live, ALICE)
    client.select("INBOX")
    client.uid("STORE", "1:3", "+FLAGS", r"(\Seen \Flagged)")
    client.uid("STORE", "4", "+FLAGS", "(project-x)")
    client.uid("STORE", "5", "+FLAGS", r"(\Deleted)")
    client.expunge()
    client.create("Archive/2026")
    client.uid("COPY", "6:8", "Archive/2026")
    client.logout()
    live.cli("sieve", "put", ALICE, "rules", "--activate", stdin=RULES)
    enrolled = live.cli("totp", "enroll", BOB).stdout
    secret = enrolled.rsplit("or type the key: ", 1)[1].split()[0]
    app = live.cli(
        "app-password", "create", BOB, "--name", "phone", "--code", pyotp.TOTP(secret).now()
    ).stdout.strip()
    live.cli("dkim", "keygen", DOMAIN, "--selector", "s2026")
    return {"totp": secret, "app": app}


def test_a_running_server_restores_whole(live: Instance, tmp_path: Path) -> None:
    secrets_ = _prepare(live)
    before_alice, before_bob = _state(live, ALICE), _state(live, BOB, secrets_["app"])
    first = json.loads(live.cli("backup", "create", "--json").stdout)
    live.settled(ALICE), live.settled(BOB)
    stored = [p for p in (live.data_dir / "mail").rglob("*") if p.parent.name in ("new", "cur")]
    assert len(stored) == 26  # 12 + 12 delivered, 1 expunged, 3 copied
    # Mail keeps flowing between runs; the next run reads only what is new.
    _send(live, 3, [BOB], "later")
    second = json.loads(live.cli("backup", "create", "--json").stdout)
    assert first["cached_files"] == 0 and second["cached_files"] == 26
    assert second["files"] == first["files"] + 3
    assert second["new_objects"] < first["new_objects"]
    with urllib.request.urlopen(f"http://127.0.0.1:{live.http_port}/metrics") as response:
        exposition = response.read().decode()
    stamp = re.search(
        r'^estafeta_backup_last_success_timestamp_seconds\{destination="([^"]+)"\} (\S+)$',
        exposition,
        re.M,
    )
    assert stamp and stamp.group(1) == str(tmp_path / "repo")
    assert abs(float(stamp.group(2)) - time.time()) < 60
    assert f'estafeta_backup_last{{measure="files"}} {float(second["files"])}' in exposition
    listed = json.loads(live.cli("backup", "list", "--json").stdout)
    assert [row["snapshot"] for row in listed] == sorted([first["snapshot"], second["snapshot"]])
    assert all(row["accounts"] == 2 for row in listed)
    verified = live.cli("backup", "verify", first["snapshot"]).stdout
    assert "every object decrypts" in verified
    dkim_before = _files(live.data_dir / "dkim")
    live.stop()

    target = tmp_path / "restored"
    out = live.cli("backup", "restore", first["snapshot"], "--to", str(target)).stdout
    assert "2 accounts" in out
    again = _instance(tmp_path / "again", data_dir=target)
    again.start()
    try:
        assert _state(again, ALICE) == before_alice
        assert _state(again, BOB, secrets_["app"]) == before_bob  # the app password opens it
        assert not again.imap_opens(BOB, PASSWORD)  # TOTP is on: the password alone does not
        client = _imap(again, ALICE)  # the password of that time
        client.logout()
        rules = again.cli("sieve", "get", ALICE, "rules").stdout
        assert rules == RULES
        assert "rules" in again.cli("sieve", "list", ALICE).stdout
    finally:
        again.stop()
    later = time.time() + 90  # a step the enrolment's code did not use
    accounts = Accounts(target / "accounts.db", [DOMAIN], clock=lambda: later)
    with accounts:
        assert accounts.totp_verify(BOB, pyotp.TOTP(secrets_["totp"]).at(later))
    assert _files(target / "dkim") == dkim_before and dkim_before


def test_bad_keys_damage_and_a_busy_target_fail_by_name(live: Instance, tmp_path: Path) -> None:
    _send(live, 3, [ALICE])
    snapshot = json.loads(live.cli("backup", "create", "--json").stdout)["snapshot"]
    live.stop()
    target = tmp_path / "restored"

    wrong = tmp_path / "wrong.key"
    estafeta(live.config, "backup", "key", "--key", str(wrong))
    result = estafeta(live.config, "backup", "list", "--key", str(wrong), check=False)
    assert result.returncode == 1
    assert "does not open with this key" in result.stderr and "Traceback" not in result.stderr

    (tmp_path / "loose.key").write_text((tmp_path / "backup.key").read_text())
    (tmp_path / "loose.key").chmod(0o644)
    loose = str(tmp_path / "loose.key")
    result = estafeta(live.config, "backup", "list", "--key", loose, check=False)
    assert result.returncode == 1 and "chmod 600" in result.stderr

    packs = sorted((tmp_path / "repo" / "packs").rglob("*"))
    pack = max((p for p in packs if p.is_file()), key=lambda p: p.stat().st_size)
    damaged = bytearray(pack.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    original = pack.read_bytes()
    pack.write_bytes(bytes(damaged))
    for args in (("verify", snapshot), ("restore", snapshot, "--to", str(target))):
        result = estafeta(live.config, "backup", *args, check=False)
        assert result.returncode == 1, result
        assert f"pack {pack.name} is damaged" in result.stderr
    assert not target.exists()
    assert not list(tmp_path.glob(".restored.restore-*"))  # the staging folder is gone

    pack.unlink()
    result = estafeta(live.config, "backup", "restore", snapshot, "--to", str(target), check=False)
    assert result.returncode == 1 and f"{pack.name} is missing" in result.stderr
    assert not target.exists()
    pack.write_bytes(original)

    target.mkdir()
    (target / "something").write_text("x")
    result = estafeta(live.config, "backup", "restore", snapshot, "--to", str(target), check=False)
    assert result.returncode == 1 and "not empty" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["something"]

    result = estafeta(live.config, "backup", "restore", "2020-01-01T000000Z-000000",
                      "--to", str(tmp_path / "new"), check=False)  # fmt: skip
    assert result.returncode == 1 and "no snapshot 2020-01-01T000000Z-000000" in result.stderr


def test_one_account_into_a_running_server(live: Instance, tmp_path: Path) -> None:
    _send(live, 5, [ALICE, BOB])
    client = _imap(live, BOB)
    client.select("INBOX")
    client.uid("STORE", "2", "+FLAGS", r"(\Answered)")
    client.logout()
    bob_before = _state(live, BOB)
    alice_before = _state(live, ALICE)
    snapshot = json.loads(live.cli("backup", "create", "--json").stdout)["snapshot"]

    live.cli("user", "del", BOB)  # by mistake
    _send(live, 2, [ALICE], "after")
    out = live.cli("backup", "restore", snapshot, "--account", BOB).stdout
    assert "UIDVALIDITY, UIDs and flags kept" in out
    time.sleep(0.2)  # the server re-reads accounts.db within 50 ms
    assert _state(live, BOB) == bob_before

    out = live.cli("backup", "restore", snapshot, "--account", ALICE).stdout
    assert f"Restored/{snapshot}/" in out and "UIDVALIDITY" in out
    after = _state(live, ALICE)
    restored = after[f"Restored/{snapshot}/INBOX"]
    assert isinstance(restored, tuple)
    assert restored[0] != alice_before["INBOX"][0]  # type: ignore[index]
    assert len(restored[2]) == 5
    assert len(after["INBOX"][2]) == 7  # type: ignore[index]  # nothing current touched

    result = estafeta(
        live.config, "backup", "restore", snapshot, "--account", f"nobody@{DOMAIN}", check=False
    )
    assert result.returncode == 1
    assert f"holds nothing of nobody@{DOMAIN}" in result.stderr
    assert not list((live.data_dir / "backup").glob("restore-*"))


def test_nothing_is_listed_for_an_empty_repository(tmp_path: Path) -> None:
    inst = _instance(tmp_path / "live")
    inst.cli("backup", "key")
    result = estafeta(inst.config, "backup", "list", check=False)
    assert result.returncode == 1 and "no backup repository here" in result.stderr
    shutil.rmtree(tmp_path / "live")


def _mentions(root: Path, needle: str) -> list[Path]:
    """Files under root whose octets contain needle, in any case."""
    wanted = needle.lower().encode()
    return [p for p in root.rglob("*") if p.is_file() and wanted in p.read_bytes().lower()]


def test_an_erased_account_is_gone_from_data_dir_and_from_old_snapshots(
    live: Instance, tmp_path: Path
) -> None:
    _send(live, 4, [ALICE], "for alice")
    _send(live, 3, [BOB], "for bob")
    client = _imap(live, ALICE)  # a login in the history
    client.logout()
    live.cli("sieve", "put", ALICE, "rules", "--activate", stdin=RULES)
    old = json.loads(live.cli("backup", "create", "--json").stdout)["snapshot"]
    assert _mentions(live.data_dir, ALICE)

    out = live.cli("user", "erase", ALICE, "--yes").stdout
    assert "is destroyed" in out
    assert _mentions(live.data_dir, ALICE) == []

    result = estafeta(live.config, "backup", "restore", old, "--account", ALICE, check=False)
    assert result.returncode == 1 and f"{ALICE}: key destroyed" in result.stderr
    bob = _state(live, BOB)
    newer = json.loads(live.cli("backup", "create", "--json").stdout)["snapshot"]
    live.stop()

    target = tmp_path / "restored"
    out = live.cli("backup", "restore", old, "--to", str(target)).stdout
    assert f"{ALICE}: not restored, its key was destroyed" in out
    assert _mentions(target, ALICE) == []  # not its mail, not its account row
    again = _instance(tmp_path / "again", data_dir=target)
    again.start()
    try:
        assert _state(again, BOB) == bob
        assert not again.imap_opens(ALICE, PASSWORD)
    finally:
        again.stop()
    assert newer > old


def _shared_state(inst: Instance, user: str) -> tuple[str, list[str]]:
    """UIDVALIDITY and (UID, FLAGS) of each message of Shared/team, as ``user`` sees it."""
    client = _imap(inst, user)
    try:
        client.select("Shared/team", readonly=True)
        validity = client.response("UIDVALIDITY")[1][0]
        assert isinstance(validity, bytes)
        _, data = client.uid("FETCH", "1:*", "(FLAGS)")
        rows = sorted(re.sub(rb"^\d+ ", b"", i).decode() for i in data if isinstance(i, bytes))
        return validity.decode(), rows
    finally:
        client.logout()


def test_shared_mailboxes_with_their_acl_and_private_seen_are_restored(
    live: Instance, tmp_path: Path
) -> None:
    live.cli("shared", "set", "team", "--acl", f"{ALICE}=lrswipte", "--acl", f"{BOB}=lr")
    client = _imap(live, ALICE)
    client.append("Shared/team", None, None, b"Subject: for the team\r\n\r\nhello\r\n")
    client.append("Shared/team", None, None, b"Subject: second\r\n\r\nagain\r\n")
    client.select("Shared/team")
    client.uid("STORE", "1", "+FLAGS", r"(\Seen)")
    client.logout()
    before = _shared_state(live, ALICE)
    snapshot = json.loads(live.cli("backup", "create", "--json").stdout)["snapshot"]
    live.stop()
    target = tmp_path / "restored"
    live.cli("backup", "restore", snapshot, "--to", str(target))
    again = _instance(tmp_path / "again", data_dir=target)
    again.start()
    try:
        assert _shared_state(again, ALICE) == before
        validity, rows = before
        assert len(rows) == 2 and "\\Seen" in rows[0] and "\\Seen" not in rows[1]
        assert _shared_state(again, BOB) == (validity, [r.replace("\\Seen", "") for r in rows])
        # and Bob still only reads (rfc4314:5.2: READ-ONLY without "iewt")
        reader = _imap(again, BOB)
        with pytest.raises(imaplib.IMAP4.readonly, match="not writable"):
            reader.select("Shared/team")
        reader.shutdown()
    finally:
        again.stop()
