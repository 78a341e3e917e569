"""Back mx1 up to S3, destroy it, provision a new one and restore it (issue 18, acceptance 1).

One module-scoped fixture, ``story``, does it all once, in order:

1. on the converged mx1: alice's password changed with the CLI (after the
   restore the changed one must open her mailbox, not the inventory's),
   a Sieve script of hers uploaded and active (it files one message), mail
   submitted to alice and bob, flags and keywords set over IMAP, a mailbox
   made and filled, a message expunged (a gap in the UIDs), TOTP enrolled
   for bob and an app password made with a code, a message to
   unreachable.test (its MX never answers) left in the queue;
2. the backup started the way the timer does (systemctl start of the
   oneshot service: create, then prune, as the estafeta user, to moto on
   dns.lab), which must succeed and list a snapshot;
3. what must survive is recorded: UIDVALIDITY, UIDNEXT, UIDs and flags of
   every mailbox over IMAP, the DKIM key files' hashes, the queue, Sieve,
   TOTP and the app passwords;
4. ``labctl.py renew mx1``: a new machine from the image, nothing of the old;
5. converge.yml again, on the new mx1 only (site.yml's plays: new DKIM keys,
   the inventory's passwords), a restore of a snapshot that does not exist
   (must fail and leave the new host as it was), then playbooks/restore.yml.

The tests compare. Before the story, a second run of the lab_s3 and backup
plays must change nothing (their idempotence), and at the end a restore
over the restored host is refused.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import re
import shlex
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
import testinfra
import yaml

ROOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
INVENTORY = ROOT / "inventories" / "backup"
CONVERGE = ROOT / "molecule" / "backup" / "converge.yml"
PLAYBOOKS = ROOT / "playbooks"
RESTORE = PLAYBOOKS / "restore.yml"
HOST = "mx1.example.test"
ADDRESS = "198.51.100.10"
RENEW_SPEC = f"mx1={ADDRESS}:{HOST}"
HOST_VARS = yaml.safe_load((INVENTORY / "host_vars" / f"{HOST}.yml").read_text())
INVENTORY_PASSWORD = HOST_VARS["lab_password"]
ALICE, BOB = "alice@example.test", "bob@example.test"
# alice's password after provisioning, set with `estafeta user passwd`.
ALICE_PASSWORD = "Wq8-restored-Kz4m-Tp7v"
NOWHERE = "nobody@unreachable.test"
DATA = "/var/lib/estafeta"
SIEVE = (
    'require ["fileinto", "mailbox"];\n'
    'if header :contains "Subject" "[filed]" {\n    fileinto :create "Filed";\n}\n'
)

# The whole story takes a few minutes: more than pytest.ini's 600 s per test
# on a slow machine, and it runs in the first test's setup.
pytestmark = pytest.mark.timeout(1800)


def tls_context() -> ssl.SSLContext:
    # A self-signed certificate (tls__mode: self_signed), new on the new host.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Run:
    """One ansible-playbook run, its output from the JSON callback."""

    rc: int
    output: dict[str, Any]
    stderr: str

    def results(self, suffix: str) -> list[dict[str, Any]]:
        """Results of the tasks whose name ends with ``suffix``, on any host."""
        return [
            result
            for play in self.output.get("plays", [])
            for task in play["tasks"]
            if task["task"]["name"].endswith(suffix)
            for result in task["hosts"].values()
        ]

    def failures(self) -> str:
        return (
            "\n".join(
                f"{host}: {task['task']['name']}: {result.get('msg')} {result.get('stderr', '')}"
                for play in self.output.get("plays", [])
                for task in play["tasks"]
                for host, result in task["hosts"].items()
                if result.get("failed") and not result.get("ignore_errors")
            )
            or self.stderr[-3000:]
        )


def ansible_playbook(*args: str, timeout: float = 900) -> Run:
    """ansible-playbook with the scenario's inventory, from the repository root."""
    tool = shutil.which("ansible-playbook")
    assert tool, "ansible-playbook not on PATH"
    result = subprocess.run(
        [tool, "-i", str(INVENTORY), *args],
        cwd=ROOT,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
            "ANSIBLE_NOCOLOR": "1",
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from ansible-playbook:\n{result.stdout[-3000:]}") from None
    return Run(result.returncode, output, result.stderr)


# -- the mail host, from inside and outside ------------------------------------------------


class Mx1:
    """Commands on mx1 as root over SSH, a new connection each time: the
    machine behind the address changes (labctl.py renew), so no connection
    of Ansible's (ControlPersist) may be reused, and its host key changes."""

    def __init__(self) -> None:
        self.host = testinfra.get_host(
            f"ssh://root@{ADDRESS}",
            ssh_identity_file=str(ROOT / ".lab" / "ssh" / "id_ed25519"),
            ssh_extra_args=(
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
            ),
            controlpersist=0,
        )

    def run(self, command: str, stdin: str | None = None) -> Any:
        if stdin is not None:
            command = f"printf '%s' {shlex.quote(stdin)} | {command}"
        return self.host.run(command)

    def check(self, command: str, stdin: str | None = None) -> str:
        result = self.run(command, stdin)
        assert result.rc == 0, f"{command}: rc {result.rc}\n{result.stdout}\n{result.stderr}"
        return str(result.stdout)

    def json(self, command: str) -> Any:
        return json.loads(self.check(command))

    def dkim(self) -> str:
        """sha256sum of every DKIM key file, by name."""
        return self.check(
            f"cd {DATA}/dkim && find . -type f -print0 | sort -z | xargs -0 sha256sum"
        )


def submit(sender: str, password: str, recipients: list[str], subject: str) -> None:
    with smtplib.SMTP(ADDRESS, 587, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(sender, password)
        body = (
            f"From: <{sender}>\r\nTo: {', '.join(f'<{r}>' for r in recipients)}\r\n"
            f"Subject: {subject}\r\n\r\nSent by the backup scenario.\r\n"
        )
        client.sendmail(sender, recipients, body.encode())


def imap(user: str, password: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=tls_context(), timeout=30)
    client.login(user, password)
    return client


def quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_of(client: imaplib.IMAP4_SSL, subject: str) -> str:
    typ, data = client.uid("SEARCH", "SUBJECT", quoted(subject))
    assert typ == "OK" and data[0], f"no message {subject!r}"
    return data[0].split()[-1].decode()


def wait_for(client: imaplib.IMAP4_SSL, mailbox: str, subjects: list[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        client.select(quoted(mailbox))
        missing = [
            subject
            for subject in subjects
            if not client.uid("SEARCH", "SUBJECT", quoted(subject))[1][0]
        ]
        if not missing:
            return
        assert time.monotonic() < deadline, f"{missing} did not reach {mailbox}"
        time.sleep(0.5)


LIST_LINE = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)')


def mailboxes(client: imaplib.IMAP4_SSL) -> dict[str, dict[str, Any]]:
    """Every selectable mailbox: UIDVALIDITY, UIDNEXT and {uid: sorted flags}, read-only."""
    typ, lines = client.list()
    assert typ == "OK"
    state = {}
    for line in lines:
        match = LIST_LINE.match(line if isinstance(line, bytes) else b"")
        assert match, line
        if b"\\noselect" in match["attrs"].lower():
            continue
        name = match["name"].decode()
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        typ, data = client.select(quoted(name), readonly=True)
        assert typ == "OK", (name, data)
        exists = int(data[0])
        uidvalidity = int(client.response("UIDVALIDITY")[1][0])
        uidnext = int(client.response("UIDNEXT")[1][0])
        messages: dict[int, list[str]] = {}
        if exists:
            typ, rows = client.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK"
            for row in rows:
                text = row.decode() if isinstance(row, bytes) else ""
                uid = re.search(r"UID (\d+)", text)
                flags = re.search(r"FLAGS \(([^)]*)\)", text)
                assert uid and flags, text
                messages[int(uid[1])] = sorted(f for f in flags[1].split() if f != "\\Recent")
        state[name] = {"uidvalidity": uidvalidity, "uidnext": uidnext, "messages": messages}
    return state


@dataclass
class Record:
    """What must be the same before the backup and after the restore."""

    mailboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    dkim: str = ""
    queue: list[dict[str, Any]] = field(default_factory=list)
    sieve: list[dict[str, Any]] = field(default_factory=list)
    totp: dict[str, Any] = field(default_factory=dict)
    app_passwords: list[dict[str, Any]] = field(default_factory=list)


QUEUE_KEYS = ("id", "message", "sender", "domain", "recipients", "created")


def record(mx1: Mx1, app_password: str) -> Record:
    result = Record()
    for user, password in ((ALICE, ALICE_PASSWORD), (BOB, app_password)):
        with imap(user, password) as client:
            result.mailboxes[user] = mailboxes(client)
    result.dkim = mx1.dkim()
    result.queue = [
        {key: entry.get(key) for key in QUEUE_KEYS}
        for entry in mx1.json("estafeta queue list --json")
    ]
    result.sieve = mx1.json(f"estafeta sieve list {ALICE} --json")
    result.totp = mx1.json(f"estafeta totp status {BOB} --json")
    result.app_passwords = [
        {key: entry[key] for key in ("name", "protocols", "created", "expires")}
        for entry in mx1.json(f"estafeta app-password list {BOB} --json")
    ]
    return result


# -- the story ---------------------------------------------------------------------------


@dataclass
class Story:
    before: Record
    after: Record
    totp_secret: str
    app_password: str
    snapshots: list[dict[str, Any]]
    backup_log: str
    fresh_check: Run
    fresh_dkim: str
    failed_restore: Run
    after_failed_restore: dict[str, str]
    restore: Run
    mx1: Mx1
    seconds: dict[str, float] = field(default_factory=dict)


def fill(mx1: Mx1) -> tuple[str, str]:
    """Step 1: mail, flags, Sieve, TOTP, an app password, a queued message."""
    mx1.check(f"estafeta user passwd {ALICE} --password-stdin", stdin=ALICE_PASSWORD + "\n")
    mx1.check(f"estafeta sieve put {ALICE} filing - --activate", stdin=SIEVE)

    for subject in ("one", "two", "three", "[filed] four"):
        submit(ALICE, ALICE_PASSWORD, [ALICE], subject)
    submit(ALICE, ALICE_PASSWORD, [BOB], "bob one")
    submit(ALICE, ALICE_PASSWORD, [BOB], "bob two")
    submit(ALICE, ALICE_PASSWORD, [NOWHERE], "to nowhere")

    with imap(ALICE, ALICE_PASSWORD) as client:
        wait_for(client, "Filed", ["[filed] four"])
        wait_for(client, "INBOX", ["one", "two", "three"])
        one, two, three = (uid_of(client, s) for s in ("one", "two", "three"))
        client.uid("STORE", one, "+FLAGS", r"(\Seen \Flagged)")
        client.uid("STORE", three, "+FLAGS", r"(\Answered $Label1 project_x)")
        client.create("Archive")
        client.uid("COPY", one, "Archive")
        # A gap in the UIDs: the restore must keep them, not renumber.
        client.uid("STORE", two, "+FLAGS", r"(\Deleted)")
        client.expunge()
        draft = b"From: <alice@example.test>\r\nSubject: draft\r\n\r\nNot sent yet.\r\n"
        client.append("Archive", r"(\Draft \Seen)", None, draft)
    with imap(BOB, INVENTORY_PASSWORD) as client:
        wait_for(client, "INBOX", ["bob one", "bob two"])
        client.uid("STORE", uid_of(client, "bob two"), "+FLAGS", r"(\Seen)")

    enrolled = mx1.check(f"estafeta totp enroll {BOB}")
    secret = re.search(r"or type the key: (\S+)", enrolled)
    assert secret, enrolled
    code = pyotp.TOTP(secret[1]).now()
    app_password = mx1.check(f"estafeta app-password create {BOB} --name laptop --code {code}")
    app_password = app_password.strip().splitlines()[0]

    # The message to unreachable.test waits in the queue after its first try.
    deadline = time.monotonic() + 90
    while True:
        entries = mx1.json("estafeta queue list --json")
        tried = [e for e in entries if NOWHERE in e["recipients"] and e["attempts"] >= 1]
        if tried:
            break
        assert time.monotonic() < deadline, f"no failed try to {NOWHERE} yet: {entries}"
        time.sleep(1)
    return secret[1], app_password


@pytest.fixture(scope="module")
def story() -> Story:
    clock = time.monotonic()
    seconds = {}
    mx1 = Mx1()
    totp_secret, app_password = fill(mx1)
    seconds["fill"] = time.monotonic() - clock

    # Step 2: the backup, the way the timer starts it.
    clock = time.monotonic()
    started = mx1.run("systemctl start estafeta-backup.service")
    backup_log = mx1.check("journalctl --no-pager -o cat -u estafeta-backup.service")
    assert started.rc == 0, backup_log
    result = mx1.check("systemctl show -p Result --value estafeta-backup.service")
    assert result.strip() == "success", backup_log
    snapshots = mx1.json("estafeta backup list --json")
    seconds["backup"] = time.monotonic() - clock

    # Step 3.
    before = record(mx1, app_password)

    # Step 4: a new machine where mx1 was.
    clock = time.monotonic()
    renewed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "labctl.py"), "renew", RENEW_SPEC],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert renewed.returncode == 0, renewed.stderr
    assert json.loads(renewed.stdout)["renewed"] == ["mx1"]
    gone = mx1.run(f"test -e {DATA} || test -e /etc/estafeta || test -e /opt/estafeta")
    assert gone.rc == 1, "the renewed mx1 still has estafeta"
    seconds["renew"] = time.monotonic() - clock

    # Step 5: provision it as site.yml does, then restore. First the backup
    # play in check mode on the bare machine (a test of check mode).
    fresh_check = ansible_playbook(
        str(PLAYBOOKS / "backup.yml"), "--limit", HOST, "--check", "--diff"
    )
    clock = time.monotonic()
    provisioned = ansible_playbook(str(CONVERGE), "--limit", HOST)
    assert provisioned.rc == 0, provisioned.failures()
    seconds["provision"] = time.monotonic() - clock
    fresh_dkim = mx1.dkim()

    clock = time.monotonic()
    failed_restore = ansible_playbook(
        str(RESTORE), "--limit", HOST, "-e", "restore_snapshot=nothing-here"
    )
    after_failed_restore = {
        "active": mx1.run("systemctl is-active estafeta.service").stdout.strip(),
        "timer": mx1.run("systemctl is-active estafeta-backup.timer").stdout.strip(),
        "dkim": mx1.dkim(),
        "beside": mx1.check(f"ls -a {Path(DATA).parent}"),
    }
    restore = ansible_playbook(str(RESTORE), "--limit", HOST)
    assert restore.rc == 0, restore.failures()
    seconds["restore"] = time.monotonic() - clock
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection((ADDRESS, 993), timeout=2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "IMAPS does not answer after the restore"
            time.sleep(0.5)
    after = record(mx1, app_password)
    return Story(
        before=before,
        after=after,
        totp_secret=totp_secret,
        app_password=app_password,
        snapshots=snapshots,
        backup_log=backup_log,
        fresh_check=fresh_check,
        fresh_dkim=fresh_dkim,
        failed_restore=failed_restore,
        after_failed_restore=after_failed_restore,
        restore=restore,
        mx1=mx1,
        seconds=seconds,
    )


# -- the tests ---------------------------------------------------------------------------


def test_a_second_run_of_the_lab_s3_and_backup_plays_changes_nothing() -> None:
    result = ansible_playbook(str(CONVERGE), "--tags", "role::lab_s3,role::backup")
    assert result.rc == 0, result.failures()
    stats = result.output["stats"]
    assert set(stats) == {"dns.lab", HOST}
    changed = [
        f"{host}: {task['task']['name']}"
        for play in result.output["plays"]
        for task in play["tasks"]
        for host, outcome in task["hosts"].items()
        if outcome.get("changed")
    ]
    assert changed == []
    assert result.results("backup : Write the backup master key"), "the backup role did not run"
    assert result.results("lab_s3 : Start moto"), "the lab_s3 role did not run"


def test_the_backup_ran_create_then_prune(story: Story) -> None:
    print("seconds per step:", {k: round(v) for k, v in story.seconds.items()})
    assert len(story.snapshots) == 1
    snapshot = story.snapshots[0]
    assert snapshot["host"] == HOST
    assert snapshot["accounts"] == 2
    assert f"snapshot {snapshot['snapshot']}:" in story.backup_log
    assert "kept 1 snapshots, forgot 0" in story.backup_log


def test_check_mode_works_on_a_new_host_and_hides_the_secrets(story: Story) -> None:
    """backup.yml --check --diff on the renewed mx1 before it was provisioned
    (nothing installed), and on the converged host: no failure, and neither
    the key nor the S3 secret in the output (no_log)."""
    variables = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())
    secrets = [variables["backup__key"], variables["backup__s3_secret_access_key"]]
    again = ansible_playbook(str(PLAYBOOKS / "backup.yml"), "--limit", HOST, "--check", "--diff")
    for result in (story.fresh_check, again):
        assert result.rc == 0, result.failures()
        text = json.dumps(result.output) + result.stderr
        for secret in secrets:
            assert (
                secret not in text and base64.b64encode(f"{secret}\n".encode()).decode() not in text
            )
        for name in ("Write the backup master key", "Write the S3 credentials"):
            (written,) = result.results(f"backup : {name}")
            assert written.get("censored"), written
    assert not [
        task["task"]["name"]
        for play in again.output["plays"]
        for task in play["tasks"]
        if any(outcome.get("changed") for outcome in task["hosts"].values())
    ]


def test_a_failed_restore_leaves_the_new_host_as_it_was(story: Story) -> None:
    result = story.failed_restore
    assert result.rc != 0
    (failed,) = result.results("backup : Fail with the reason")
    assert "The restore of snapshot nothing-here failed" in failed["msg"], failed["msg"]
    assert "is the data directory from before the restore again" in failed["msg"]
    assert story.after_failed_restore["active"] == "active"
    assert story.after_failed_restore["timer"] == "active"
    assert story.after_failed_restore["dkim"] == story.fresh_dkim
    beside = story.after_failed_restore["beside"].split()
    assert not [name for name in beside if "restore" in name], beside


def test_restore_shows_the_snapshot_and_its_counts(story: Story) -> None:
    name = story.snapshots[0]["snapshot"]
    (shown,) = story.restore.results("backup : Show what was restored")
    lines = shown["msg"]
    assert lines[0].startswith(f"restored snapshot {name} into {DATA}:"), lines
    assert f"Snapshot {name} made " in lines[1], lines
    assert f"on {HOST}: 2 accounts," in lines[1] and lines[1].endswith("1 queued."), lines


def test_passwords_and_the_app_password_open_imap(story: Story) -> None:
    with imap(ALICE, ALICE_PASSWORD) as client:
        assert client.select("INBOX")[0] == "OK"
    with imap(BOB, story.app_password) as client:
        assert client.select("INBOX")[0] == "OK"
    # The inventory's password of alice (what the new host was provisioned
    # with) no longer matches: accounts.db is the backed-up one.
    verify = "estafeta user verify {} --password-stdin"
    assert story.mx1.run(verify.format(ALICE), INVENTORY_PASSWORD).rc == 1
    assert story.mx1.run(verify.format(BOB), INVENTORY_PASSWORD).rc == 0


def test_totp_is_still_enrolled_and_its_secret_verifies(story: Story) -> None:
    enrolled = {"address": BOB, "totp": True, "app_passwords": 1}
    assert story.after.totp == story.before.totp == enrolled
    assert story.after.app_passwords == story.before.app_passwords
    # With TOTP, bob's password alone does not open IMAP ...
    client = imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=tls_context(), timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(BOB, INVENTORY_PASSWORD)
    finally:
        client.shutdown()
    # ... and a code from the secret enrolled before the backup is accepted.
    code = pyotp.TOTP(story.totp_secret).now()
    created = story.mx1.run(f"estafeta app-password create {BOB} --name restored --code {code}")
    assert created.rc == 0, created.stderr


def test_imap_keeps_uidvalidity_uids_and_flags(story: Story) -> None:
    before, after = story.before.mailboxes, story.after.mailboxes
    assert {"Archive", "Filed", "INBOX"} <= set(after[ALICE])
    inbox = before[ALICE]["INBOX"]["messages"]
    assert len(inbox) == 2 and max(inbox) - min(inbox) == 2, "the UID gap was not made"
    for user in (ALICE, BOB):
        for name, box in before[user].items():
            assert after[user][name]["uidvalidity"] == box["uidvalidity"], (user, name)
            assert after[user][name]["messages"] == box["messages"], (user, name)
    assert after == before


def test_imap_keeps_uidnext(story: Story) -> None:
    for user in (ALICE, BOB):
        for name, box in story.before.mailboxes[user].items():
            assert story.after.mailboxes[user][name]["uidnext"] == box["uidnext"], (user, name)


def test_dkim_keys_are_the_backed_up_ones(story: Story) -> None:
    assert story.before.dkim.strip()
    assert story.after.dkim == story.before.dkim
    # The new host had made keys of its own, which the restore replaced.
    assert story.fresh_dkim != story.before.dkim


def test_the_queued_message_is_still_queued(story: Story) -> None:
    assert len(story.before.queue) == 1
    assert story.before.queue[0]["recipients"] == [NOWHERE]
    assert story.after.queue == story.before.queue


def test_the_sieve_script_is_active_and_files_mail(story: Story) -> None:
    assert story.after.sieve == story.before.sieve == [{"name": "filing", "active": True}]
    submit(ALICE, ALICE_PASSWORD, [ALICE], "[filed] after the restore")
    with imap(ALICE, ALICE_PASSWORD) as client:
        wait_for(client, "Filed", ["[filed] after the restore"])


def test_the_restored_host_runs_its_backups(story: Story) -> None:
    mx1 = story.mx1
    assert mx1.check("systemctl is-enabled estafeta-backup.timer").strip() == "enabled"
    assert mx1.check("systemctl is-active estafeta-backup.timer").strip() == "active"
    key = mx1.host.file("/etc/estafeta/backup.key")
    assert key.user == "estafeta" and key.mode == 0o600
    started = mx1.run("systemctl start estafeta-backup.service")
    log = mx1.run("journalctl --no-pager -o cat -u estafeta-backup").stdout
    assert started.rc == 0, log
    # Two snapshots of the same day: prune keeps the newer (keep_daily).
    (newest,) = mx1.json("estafeta backup list --json")
    assert newest["snapshot"] > story.snapshots[0]["snapshot"]
    assert "kept 1 snapshots, forgot 1" in log


def test_a_restore_over_a_host_with_mail_is_refused(story: Story) -> None:
    before = story.mx1.dkim()
    result = ansible_playbook(str(RESTORE), "--limit", HOST)
    assert result.rc != 0
    (refused,) = result.results("backup : Refuse to restore over a data directory that holds mail")
    assert "this is not a freshly provisioned host, nothing was changed" in refused["msg"]
    assert "restore_force=true" in refused["msg"]
    assert story.mx1.check("systemctl is-active estafeta.service").strip() == "active"
    assert story.mx1.dkim() == before
