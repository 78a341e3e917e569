"""`backup create` killed at random points while mail is delivered (issue 18,
acceptance 2): no snapshot is listed for a killed run, the server goes on,
the next run completes, and every message acknowledged before the last run
began is in the newest snapshot. Then the same through S3 (moto's server mode)."""

from __future__ import annotations

import json
import random
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from test_backup_destinations import KEY_ID, SECRET, moto  # noqa: F401  (a fixture)

from conftest import DOMAIN, Instance, estafeta, free_port
from estafeta.store import Store

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
ROUNDS = 10


class Sender(threading.Thread):
    """Delivers to alice and bob until stopped; remembers what got a 250."""

    def __init__(self, inst: Instance) -> None:
        super().__init__(daemon=True)
        self.inst = inst
        self.acknowledged: list[tuple[float, str]] = []
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        number = 0
        filler = ("z" * 70 + "\r\n") * 40
        try:
            with smtplib.SMTP("127.0.0.1", self.inst.port, timeout=30) as smtp:
                while not self.stop_event.is_set():
                    number += 1
                    mid = f"<k{number}@remote.test>"
                    body = f"Subject: k{number}\r\nMessage-ID: {mid}\r\n\r\n{filler}\r\n"
                    smtp.sendmail("carol@remote.test", [ALICE, BOB], body.encode())
                    self.acknowledged.append((time.monotonic(), mid))
        except BaseException as exc:
            self.failure = exc


def _message_ids(data_dir: Path, address: str, hostname: str) -> set[str]:
    found = set()
    with Store(data_dir / "mail", hostname) as store:
        reader = store.reader(address)
        with reader:
            box = reader.mailbox("INBOX")
            assert box is not None
            for row in reader.messages(box.id):
                for line in reader.content(row.file).split(b"\r\n"):
                    if line.startswith(b"Message-ID: "):
                        found.add(line[12:].decode())
    return found


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path / "live", free_port())
    inst.root.mkdir()
    inst.extra_config = (
        f'[backup]\nkey_file = "{tmp_path / "backup.key"}"\ndestination = "{tmp_path / "repo"}"\n'
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.add_user(BOB)
    inst.cli("backup", "key")
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


def test_killed_runs_list_nothing_and_lose_nothing(live: Instance, tmp_path: Path) -> None:
    sender = Sender(live)
    sender.start()
    try:
        deadline = time.monotonic() + 120
        while len(sender.acknowledged) < 400:
            assert sender.failure is None, sender.failure
            assert time.monotonic() < deadline, f"{len(sender.acknowledged)} delivered"
            time.sleep(0.05)
        command = [sys.executable, "-m", "estafeta", "-c", str(live.config), "backup", "create"]
        started = time.monotonic()
        subprocess.run([*command, "--no-progress"], check=True, capture_output=True, timeout=300)
        full = time.monotonic() - started
        chance = random.Random(18)
        killed_before_manifest = 0
        for _ in range(ROUNDS):
            before = json.loads(live.cli("backup", "list", "--json").stdout)
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(chance.uniform(0.05, max(0.1, full)))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            after = json.loads(live.cli("backup", "list", "--json").stdout)
            if len(after) == len(before):
                killed_before_manifest += 1
            else:
                # The kill came after the manifest: that run was complete.
                assert len(after) == len(before) + 1
                estafeta(live.config, "backup", "verify", after[-1]["snapshot"])
            assert live.process is not None and live.process.poll() is None
            assert sender.failure is None, sender.failure
        assert killed_before_manifest >= ROUNDS // 2
        last_started = time.monotonic()
        acknowledged = [mid for when, mid in sender.acknowledged if when < last_started]
        report = json.loads(live.cli("backup", "create", "--json").stdout)
    finally:
        sender.stop_event.set()
        sender.join(timeout=30)
    assert sender.failure is None, sender.failure
    live.stop()
    target = tmp_path / "restored"
    estafeta(live.config, "backup", "restore", report["snapshot"], "--to", str(target))
    for address in (ALICE, BOB):
        present = _message_ids(target, address, f"mx.{DOMAIN}")
        missing = set(acknowledged) - present
        assert not missing, f"{len(missing)} acknowledged messages of {address} not in the snapshot"
    # Killed runs left packs nothing lists; prune takes them. One a day is
    # kept: today's newest.
    result = estafeta(live.config, "backup", "prune", "--keep-daily", "30", "--json")
    pruned = json.loads(result.stdout)
    assert pruned["kept"] == [report["snapshot"]] and pruned["packs_deleted"] > 0
    estafeta(live.config, "backup", "verify", report["snapshot"])


def test_s3_destination_through_moto(tmp_path: Path, moto: str) -> None:  # noqa: F811
    boto3.client(
        "s3",
        endpoint_url=moto,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    ).create_bucket(Bucket="mail-backups")
    credentials = tmp_path / "s3.ini"
    credentials.write_text(f"access_key_id = {KEY_ID}\nsecret_access_key = {SECRET}\n")
    credentials.chmod(0o600)
    inst = Instance(tmp_path / "live", free_port())
    inst.root.mkdir()
    inst.extra_config = (
        f'[backup]\nkey_file = "{tmp_path / "backup.key"}"\n'
        'destination = "s3://mail-backups/mx1"\n'
        f's3_endpoint = "{moto}"\ns3_region = "us-east-1"\ns3_path_style = true\n'
        f's3_credentials_file = "{credentials}"\n'
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.cli("backup", "key")
    inst.start()
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as smtp:
            for number in range(20):
                smtp.sendmail(
                    "carol@remote.test",
                    [ALICE],
                    f"Subject: s{number}\r\nMessage-ID: <s{number}@x>\r\n\r\nhi\r\n".encode(),
                )
        report = json.loads(inst.cli("backup", "create", "--json").stdout)
        assert report["uploaded_octets"] > 0
    finally:
        inst.stop()
    listed = json.loads(inst.cli("backup", "list", "--json").stdout)
    assert [row["snapshot"] for row in listed] == [report["snapshot"]]
    inst.cli("backup", "verify")
    target = tmp_path / "restored"
    inst.cli("backup", "restore", "latest", "--to", str(target))
    assert _message_ids(target, ALICE, f"mx.{DOMAIN}") == {f"<s{n}@x>" for n in range(20)}

    # An endpoint nobody answers on: a clear error naming it, exit 1.
    dead = f"http://127.0.0.1:{free_port()}"
    inst.config.write_text(inst.config.read_text().replace(moto, dead))
    result = estafeta(inst.config, "backup", "list", check=False)
    assert result.returncode == 1
    assert dead in result.stderr and "Traceback" not in result.stderr
    # Wrong credentials: named as such.
    inst.config.write_text(inst.config.read_text().replace(dead, moto))
    credentials.write_text(f"access_key_id = {KEY_ID}\n")
    result = estafeta(inst.config, "backup", "list", check=False)
    assert result.returncode == 1 and "needs access_key_id and secret_access_key" in result.stderr
