"""Upgrade mx1 from v0.1.0 to this tree, then fail an upgrade on purpose (issue 19, acceptance 4).

converge.yml deployed the tag v0.1.0 (one virtualenv at /opt/estafeta). One
module-scoped fixture, ``story``, then does, in order:

1. on v0.1.0: mail submitted to alice and bob, flags and keywords set over
   IMAP (``\\Flagged``, ``$Label1``, ``project_x``, ``\\Seen``), a mailbox made
   and a message copied into it, TOTP enrolled for bob and an app password
   made with a code; what must survive is recorded (UIDVALIDITY, UIDNEXT,
   UIDs and flags of every mailbox, the accounts, TOTP, the app passwords);
2. the upgrade: this tree's playbooks/estafeta.yml, with an http listener
   added (so /healthz is checked) and a snapshot on any release change
   (v0.1.0 is version 0.1.0, this tree server/pyproject.toml's version);
3. the same play again, which must change nothing;
4. a deliberately broken release: this tree's server/ copied, its /healthz
   made to answer 503 ("broken on purpose"), deployed with the same play.

The tests compare and check that the broken release was switched back.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
import testinfra
import yaml

ROOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
INVENTORY = ROOT / "inventories" / "molecule"
PLAYBOOK = ROOT / "playbooks" / "estafeta.yml"
HOST = "mx1.example.test"
ADDRESS = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]["mail_servers"][
    "hosts"
][HOST]["ansible_host"]
PASSWORD = yaml.safe_load((INVENTORY / "host_vars" / f"{HOST}.yml").read_text())[
    "molecule_password"
]
ALICE, BOB = "alice@example.test", "bob@example.test"
OPT, DATA = "/opt/estafeta", "/var/lib/estafeta"
HTTP = "127.0.0.1:8080"
# This tree's estafeta version (the release directories are VERSION-FINGERPRINT).
VERSION = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]["version"]
LISTEN = {
    **yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text())["estafeta__listen"],
    "http": [HTTP],
}
BROKEN = "broken on purpose"

# The story takes a few minutes, in the first test's setup.
pytestmark = pytest.mark.timeout(1800)


def tls_context() -> ssl.SSLContext:
    # A self-signed certificate (tls__mode: self_signed).
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
        return [
            result
            for play in self.output.get("plays", [])
            for task in play["tasks"]
            if task["task"]["name"].endswith(suffix)
            for result in task["hosts"].values()
        ]

    def changed(self) -> list[str]:
        return [
            task["task"]["name"]
            for play in self.output.get("plays", [])
            for task in play["tasks"]
            if any(result.get("changed") for result in task["hosts"].values())
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


def upgrade(**extra: Any) -> Run:
    """This tree's playbooks/estafeta.yml on its Molecule inventory."""
    tool = shutil.which("ansible-playbook")
    assert tool, "ansible-playbook not on PATH"
    variables = {"estafeta__listen": LISTEN, **extra}
    result = subprocess.run(
        [tool, "-i", str(INVENTORY), "-e", json.dumps(variables), str(PLAYBOOK)],
        cwd=ROOT,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
            "ANSIBLE_LIBRARY": str(ROOT / "library"),
            "ANSIBLE_MODULE_UTILS": str(ROOT / "module_utils"),
            "ANSIBLE_FILTER_PLUGINS": str(ROOT / "filter_plugins"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
            "ANSIBLE_NOCOLOR": "1",
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    try:
        output = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from ansible-playbook:\n{result.stdout[-3000:]}") from None
    return Run(result.returncode, output, result.stderr)


class Mx1:
    """Commands on mx1 as root, through Ansible and Molecule's inventory."""

    def __init__(self) -> None:
        self.host = testinfra.get_host(
            f"ansible://{HOST}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
        )

    def run(self, command: str) -> Any:
        return self.host.run(command)

    def check(self, command: str) -> str:
        result = self.run(command)
        assert result.rc == 0, f"{command}: rc {result.rc}\n{result.stdout}\n{result.stderr}"
        return str(result.stdout)

    def json(self, command: str) -> Any:
        return json.loads(self.check(command))

    def healthz(self) -> str:
        script = f"import urllib.request as u; print(u.urlopen('http://{HTTP}/healthz').read())"
        return self.check(f"python3 -c {json.dumps(script)}").strip()

    def current(self) -> str:
        return self.check(f"readlink {OPT}/current").strip()


def submit(sender: str, password: str, recipients: list[str], subject: str) -> None:
    with smtplib.SMTP(ADDRESS, 587, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(sender, password)
        body = (
            f"From: <{sender}>\r\nTo: {', '.join(f'<{r}>' for r in recipients)}\r\n"
            f"Subject: {subject}\r\n\r\nSent by the upgrade scenario.\r\n"
        )
        client.sendmail(sender, recipients, body.encode())


def imap(user: str, password: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=tls_context(), timeout=30)
    client.login(user, password)
    return client


def uid_of(client: imaplib.IMAP4_SSL, subject: str) -> str:
    typ, data = client.uid("SEARCH", "SUBJECT", f'"{subject}"')
    assert typ == "OK" and data[0], f"no message {subject!r}"
    return data[0].split()[-1].decode()


def wait_for(client: imaplib.IMAP4_SSL, subjects: list[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        client.select("INBOX")
        missing = [s for s in subjects if not client.uid("SEARCH", "SUBJECT", f'"{s}"')[1][0]]
        if not missing:
            return
        assert time.monotonic() < deadline, f"{missing} did not arrive"
        time.sleep(0.5)


LIST_LINE = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)')


def mailboxes(client: imaplib.IMAP4_SSL) -> dict[str, dict[str, Any]]:
    """Every mailbox: UIDVALIDITY, UIDNEXT and {uid: sorted flags}, read-only."""
    typ, lines = client.list()
    assert typ == "OK"
    state = {}
    for line in lines:
        match = LIST_LINE.match(line if isinstance(line, bytes) else b"")
        assert match, line
        # rfc5258:3 / rfc9051:7.3.1: \NonExistent implies \Noselect (the
        # Shared/ namespace root, once the inventory shares a mailbox).
        if any(a in match["attrs"].lower() for a in (b"\\noselect", b"\\nonexistent")):
            continue
        name = match["name"].decode()
        if name.startswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        typ, data = client.select(
            '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"', readonly=True
        )
        assert typ == "OK", (name, data)
        uidvalidity = int(client.response("UIDVALIDITY")[1][0])
        uidnext = int(client.response("UIDNEXT")[1][0])
        messages: dict[int, list[str]] = {}
        if int(data[0]):
            typ, rows = client.uid("FETCH", "1:*", "(FLAGS)")
            for row in rows:
                text = row.decode() if isinstance(row, bytes) else ""
                uid, flags = re.search(r"UID (\d+)", text), re.search(r"FLAGS \(([^)]*)\)", text)
                assert uid and flags, text
                messages[int(uid[1])] = sorted(f for f in flags[1].split() if f != "\\Recent")
        state[name] = {"uidvalidity": uidvalidity, "uidnext": uidnext, "messages": messages}
    return state


@dataclass
class Record:
    """What the upgrade must keep."""

    mailboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    totp: dict[str, Any] = field(default_factory=dict)
    app_passwords: list[dict[str, Any]] = field(default_factory=list)


def record(mx1: Mx1, app_password: str) -> Record:
    result = Record()
    for user, password in ((ALICE, PASSWORD), (BOB, app_password)):
        with imap(user, password) as client:
            result.mailboxes[user] = mailboxes(client)
    result.accounts = mx1.json("estafeta user list --json")
    result.totp = mx1.json(f"estafeta totp status {BOB} --json")
    result.app_passwords = [
        {key: entry[key] for key in ("name", "protocols", "created", "expires")}
        for entry in mx1.json(f"estafeta app-password list {BOB} --json")
    ]
    return result


def fill(mx1: Mx1) -> tuple[str, str]:
    """Step 1, on v0.1.0: mail, flags, keywords, a mailbox, TOTP and an app password."""
    for subject in ("one", "two", "three"):
        submit(ALICE, PASSWORD, [ALICE], subject)
    submit(ALICE, PASSWORD, [BOB], "bob one")
    with imap(ALICE, PASSWORD) as client:
        wait_for(client, ["one", "two", "three"])
        one, two, three = (uid_of(client, s) for s in ("one", "two", "three"))
        client.uid("STORE", one, "+FLAGS", r"(\Flagged)")
        client.uid("STORE", two, "+FLAGS", r"($Label1 project_x)")
        client.uid("STORE", three, "+FLAGS", r"(\Seen \Answered)")
        client.create("Archive")
        client.uid("COPY", one, "Archive")
    with imap(BOB, PASSWORD) as client:
        wait_for(client, ["bob one"])
    enrolled = mx1.check(f"estafeta totp enroll {BOB}")
    secret = re.search(r"or type the key: (\S+)", enrolled)
    assert secret, enrolled
    created = mx1.check(
        f"estafeta app-password create {BOB} --name laptop --code {pyotp.TOTP(secret[1]).now()}"
    )
    return secret[1], created.strip().splitlines()[0]


@dataclass
class Story:
    mx1: Mx1
    totp_secret: str
    app_password: str
    old_layout: str
    before: Record
    upgraded: Run
    after: Record
    again: Run
    good_release: str
    broken: Run
    broken_release: str
    seconds: dict[str, float]


def broken_source(directory: Path) -> Path:
    """This tree's server/ with a /healthz that always answers 503."""
    source = directory / "server"
    shutil.copytree(
        ROOT / "server",
        source,
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"),
    )
    web = source / "src" / "estafeta" / "web" / "site.py"
    text = web.read_text()
    healthy = "problem = self.health()"
    assert healthy in text, "web/site.py no longer has the line this scenario breaks"
    web.write_text(text.replace(healthy, f"problem = {BROKEN!r}"))
    return source


@pytest.fixture(scope="module")
def story() -> Story:
    seconds = {}
    mx1 = Mx1()
    clock = time.monotonic()
    old_layout = mx1.check(f"ls -A {OPT}")
    totp_secret, app_password = fill(mx1)
    before = record(mx1, app_password)
    seconds["fill"] = time.monotonic() - clock

    clock = time.monotonic()
    upgraded = upgrade(estafeta__snapshot_before_upgrade="release")
    assert upgraded.rc == 0, upgraded.failures()
    seconds["upgrade"] = time.monotonic() - clock
    after = record(mx1, app_password)
    good_release = mx1.current()

    clock = time.monotonic()
    again = upgrade()
    seconds["again"] = time.monotonic() - clock

    clock = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        broken = upgrade(
            estafeta__source_dir=str(broken_source(Path(tmp))), estafeta__health_timeout=10
        )
    seconds["broken"] = time.monotonic() - clock
    (built,) = broken.results("estafeta : Choose the wheelhouse of this host's platform")
    broken_release = built["ansible_facts"]["estafeta__release"]
    return Story(
        mx1=mx1,
        totp_secret=totp_secret,
        app_password=app_password,
        old_layout=old_layout,
        before=before,
        upgraded=upgraded,
        after=after,
        again=again,
        good_release=good_release,
        broken=broken,
        broken_release=broken_release,
        seconds=seconds,
    )


# -- the upgrade -----------------------------------------------------------------------------


def test_v0_1_0_had_one_virtualenv_and_the_upgrade_made_releases(story: Story) -> None:
    print("seconds per step:", {k: round(v) for k, v in story.seconds.items()})
    assert {"pyvenv.cfg", "wheelhouse", ".wheelhouse-fingerprint"} <= set(story.old_layout.split())
    mx1 = story.mx1
    releases = mx1.check(f"ls {OPT}/releases").split()
    assert story.good_release.startswith(f"releases/{VERSION}-")
    (legacy,) = [
        r for r in releases if f"releases/{r}" != story.good_release and r != story.broken_release
    ]
    for release in releases:
        assert mx1.host.file(f"{OPT}/releases/{release}/.estafeta-release").exists, release
    # The paths of the old layout are links into the current release.
    assert sorted(mx1.check(f"ls -A {OPT}").split()) == [
        "bin",
        "current",
        "lib",
        "pyvenv.cfg",
        "releases",
    ]
    for name in ("bin", "lib", "pyvenv.cfg"):
        assert mx1.host.file(f"{OPT}/{name}").linked_to == f"{OPT}/{story.good_release}/{name}"
    assert "dns" in mx1.check(f"{OPT}/bin/python -c 'import dns; print(dns.__name__)'")
    unit = mx1.check("systemctl cat estafeta.service")
    assert f"ExecStart={OPT}/current/bin/estafeta " in unit
    # The SQLite snapshot, taken with v0.1.0 before the switch.
    snapshot = f"{DATA}/pre-upgrade/{legacy}"
    copies = mx1.check(f"cd {snapshot} && find . -name '*.db' | sort").split()
    assert "./accounts.db" in copies and "./mail/example.test/alice/index.db" in copies, copies


def test_the_upgrade_checked_healthz_and_every_listener(story: Story) -> None:
    (healthz,) = story.upgraded.results("estafeta : Wait for estafeta's /healthz")
    assert healthz["status"] == 200 and healthz["content"] == "ok\n"
    (greetings,) = story.upgraded.results("estafeta : Wait for every estafeta listener to greet")
    assert sorted(item["item"]["key"] for item in greetings["results"]) == sorted(
        k for k in LISTEN if k != "http"
    )
    assert not [item for item in greetings["results"] if item.get("failed")]
    assert story.mx1.healthz() == "b'ok\\n'"


def test_mail_flags_and_mailboxes_are_intact(story: Story) -> None:
    before, after = story.before.mailboxes, story.after.mailboxes
    inbox = before[ALICE]["INBOX"]["messages"]
    assert sorted(map(tuple, inbox.values())) == sorted(
        [("\\Flagged",), ("$Label1", "project_x"), ("\\Answered", "\\Seen")]
    )
    assert {"Archive", "INBOX"} <= set(after[ALICE])
    # v0.1.0 had no shared mailboxes; the new release's role creates the
    # inventory's (docs/shared-mailboxes.md). Those, and only those, are new;
    # every mailbox that was there is unchanged.
    for user in (ALICE, BOB):
        assert set(after[user]) - set(before[user]) == shared_for(user), user
        kept = {name: state for name, state in after[user].items() if name in before[user]}
        assert kept == before[user], user


def shared_for(user: str) -> set[str]:
    """The Shared/<name> mailboxes the molecule inventory lets user list (rfc4314 "l")."""
    host_vars = yaml.safe_load((INVENTORY / "host_vars" / f"{HOST}.yml").read_text())
    return {
        f"Shared/{shared['name']}"
        for shared in host_vars.get("estafeta__host_shared_mailboxes", [])
        if "l" in shared.get("acl", {}).get(user, "")
    }


def test_accounts_and_two_factor_authentication_are_intact(story: Story) -> None:
    assert story.after.accounts == story.before.accounts
    assert {a["address"] for a in story.after.accounts} == {ALICE, BOB}
    assert (
        story.after.totp == story.before.totp == {"address": BOB, "totp": True, "app_passwords": 1}
    )
    assert story.after.app_passwords == story.before.app_passwords
    mx1 = story.mx1
    # The password still matches, but alone it opens nothing ...
    assert (
        mx1.run(f"printf '%s\\n' {PASSWORD} | estafeta user verify {BOB} --password-stdin").rc == 0
    )
    client = imaplib.IMAP4_SSL(ADDRESS, 993, ssl_context=tls_context(), timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(BOB, PASSWORD)
    finally:
        client.shutdown()
    # ... a code from the secret enrolled on v0.1.0 makes a new app password,
    # which opens IMAP like the old one.
    code = pyotp.TOTP(story.totp_secret).now()
    created = mx1.check(f"estafeta app-password create {BOB} --name upgraded --code {code}")
    with imap(BOB, created.strip().splitlines()[0]) as client:
        assert client.select("INBOX")[0] == "OK"
    with imap(BOB, story.app_password) as client:
        assert client.select("INBOX")[0] == "OK"


def test_a_second_run_changes_nothing(story: Story) -> None:
    assert story.again.rc == 0, story.again.failures()
    assert story.again.changed() == []


# -- the broken release --------------------------------------------------------------------------


def test_a_failing_health_check_switches_back_and_fails_the_play(story: Story) -> None:
    broken = story.broken
    assert broken.rc != 0
    assert story.broken_release != story.good_release.removeprefix("releases/")
    (healthz,) = broken.results("estafeta : Wait for estafeta's /healthz")
    assert healthz["failed"] and healthz["status"] == 503
    (switched,) = broken.results("estafeta : Switch the current link back to the previous release")
    assert switched["changed"]
    (failed,) = broken.results("estafeta : Fail because estafeta is unhealthy")
    message = failed["msg"]
    assert f"/healthz: unhealthy: {BROKEN}" in message, message
    assert f"Switched back to release {story.good_release.removeprefix('releases/')}" in message
    assert "answers on every listener again" in message
    assert "The hosts after this one were not touched" in message


def test_after_the_rollback_the_previous_release_serves_mail(story: Story) -> None:
    mx1 = story.mx1
    assert mx1.current() == story.good_release
    assert mx1.host.file(f"{OPT}/releases/{story.broken_release}/.estafeta-release").exists
    assert mx1.check("systemctl is-active estafeta.service").strip() == "active"
    assert mx1.healthz() == "b'ok\\n'"
    submit(ALICE, PASSWORD, [ALICE], "after the rollback")
    with imap(ALICE, PASSWORD) as client:
        wait_for(client, ["after the rollback"])
        client.select("INBOX", readonly=True)
        typ, data = client.uid("SEARCH", "FLAGGED")
        assert typ == "OK" and len(data[0].split()) == 1
