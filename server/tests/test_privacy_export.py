"""``estafeta user export``: the archive of an account, read back with Python's
``mailbox`` module (Maildir and mbox: the same messages, byte for byte, and
the same flags), its JSON (no secret in it), the mboxrd quoting fed in
chunks of every size, mailbox names that must not leave their folder, and
the command's refusals. Against a real Store and Accounts in a temp dir."""

from __future__ import annotations

import errno
import json
import mailbox
import os
import re
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, Instance
from estafeta import cli
from estafeta.cli_privacy import export_sources
from estafeta.cli_sieve import _script_store
from estafeta.cli_spam import _junk
from estafeta.config import Config, check_runtime, load
from estafeta.message import summarize
from estafeta.privacy import export
from estafeta.privacy.export import ExportReport, MboxrdQuoter, archive_path, export_account
from estafeta.store.account import Delivery

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "correct horse battery staple"
SCRIPT = 'require ["fileinto"];\nif header :contains "subject" "report" { fileinto "Archive"; }\n'


def message(subject: str, body: bytes = b"Hello.\r\n", sender: str = "ann@remote.test") -> bytes:
    return (
        f"Return-Path: <{sender}>\r\nFrom: <{sender}>\r\nTo: <{ALICE}>\r\n"
        f"Subject: {subject}\r\n\r\n"
    ).encode() + body


# Lines that mboxrd must quote, a message without a final newline, one with
# bare LFs, one with a "From " line across the 1 MiB read boundary.
_HEAD = len(message("big", b""))
BIG = b"x" * (export.CHUNK - _HEAD - 4) + b"\r\nFrom the boundary\r\n" * 3  # "Fr" | "om "
MESSAGES = {
    "INBOX": [
        message("plain"),
        message("quoting", b"From here\r\n>From there\r\n>>From afar\r\nFromage\r\n"),
        message("no final newline", b"last line"),
        message("bare lf", b"one\nFrom two\n\nthree\n").replace(b"\r\n", b"\n"),
        message("big", BIG),
    ],
    "Archive/2024": [message("report", sender="")],
    "Sent": [],
}
FLAGS = {("INBOX", 1): ["\\Seen", "\\Flagged", "$Junk", "work"], ("INBOX", 2): ["\\Answered"]}
FLAGS[("Archive/2024", 1)] = ["\\Deleted", "\\Draft", "\\Seen", "todo"]


@pytest.fixture
def config(instance: Instance) -> Config:
    loaded = load(instance.config)
    check_runtime(loaded)  # makes data_dir
    return loaded


def export_of(config: Config, address: str, target: Path, fmt: str = "zip") -> ExportReport:
    """The export, read from what the CLI's ``user export`` reads on this
    backend (a cluster node: its database and object store)."""
    with export_sources(config) as sources:
        return export_account(config, address, target, fmt=fmt, sources=sources)


@pytest.fixture
def account(config: Config) -> Iterator[dict[str, str]]:
    """alice with mail in three mailboxes, aliases, a script, second factors,
    filter training; bob beside her. Yields the secrets the export must not hold.
    Written through the CLI's openings, so on either backend."""
    with cli._accounts(config) as accounts:
        accounts.add_user(ALICE, PASSWORD)
        accounts.add_user(BOB, PASSWORD)
        accounts.set_quota(ALICE, 10_000_000)
        accounts.set_retention(ALICE, "Trash", 30 * 86400)
        accounts.add_alias(f"al@{DOMAIN}", [ALICE])
        accounts.add_alias(f"chain@{DOMAIN}", [f"al@{DOMAIN}"])
        accounts.add_alias(f"team@{DOMAIN}", [BOB, ALICE])
        accounts.add_alias(f"bobs@{DOMAIN}", [BOB])
        accounts.add_alias("@other.test", [ALICE])
        app_password = accounts.app_password_create(ALICE, "phone", "imap,smtp")
        secret, _ = accounts.totp_enroll(ALICE)
    with _script_store(config) as scripts:
        scripts.put(ALICE, "rules", SCRIPT)
        scripts.activate(ALICE, "rules")
        scripts.put(ALICE, "spare", "keep;\n")
    with _junk(config) as junk:
        junk.learn(ALICE, message("casino jackpot"), spam=True)
        junk.allow(ALICE, "@friends.test")
    with cli._store(config) as store:
        for name, items in MESSAGES.items():
            if not store.has_mailbox(ALICE, name):  # INBOX, Sent, ... exist from the start
                store.create_mailbox(ALICE, name)
            for n, data in enumerate(items):
                store.deliver_sync(
                    [Delivery(ALICE, data, summarize(data), mailbox=name, internal_date=1e9 + n)]
                )
        for (name, uid), flags in FLAGS.items():
            store.store_flags(ALICE, name, [uid], "+", flags)
    yield {"app_password": app_password, "totp": secret}


def read_archive(path: Path, into: Path) -> Path:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            assert all(safe(name) for name in names), names
            archive.extractall(into)  # noqa: S202 (every name checked just above)
    else:
        with tarfile.open(path, "r:gz") as archive:
            assert all(safe(name) for name in archive.getnames())
            archive.extractall(into, filter="data")
    return into


def safe(name: str) -> bool:
    return not name.startswith("/") and not {".", ".."} & set(name.rstrip("/").split("/"))


def unquote(data: bytes) -> bytes:
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def expected_letters(flags: list[str], keywords: dict[str, str]) -> str:
    system = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}
    system["\\Deleted"] = "T"
    letters = [system[f] for f in flags if f in system]
    letters += [letter for letter, keyword in keywords.items() if keyword in flags]
    return "".join(sorted(letters))


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_the_archive_holds_every_message_as_maildir_and_mbox(
    config: Config, account: dict[str, str], tmp_path: Path, fmt: str
) -> None:
    target = tmp_path / f"alice.{fmt}"
    report = export_of(config, ALICE, target, fmt=fmt)
    assert report.messages == sum(len(items) for items in MESSAGES.values())
    assert report.skipped == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not target.with_name(target.name + ".tmp").exists()
    root = read_archive(target, tmp_path / "out")
    record = json.loads((root / "account.json").read_text())
    listed = json.loads((root / "messages.json").read_text())
    assert report.mailboxes == len(record["mailboxes"]) >= len(MESSAGES)
    assert len(listed) == report.messages
    for name, items in MESSAGES.items():
        box = next(b for b in record["mailboxes"] if b["name"] == name)
        assert box["messages"] == len(items)
        keywords = {letter: kw for letter, kw in box["keywords"].items()}
        # Maildir: the stored octets, flags in the info suffix, keywords per dovecot-keywords.
        folder = mailbox.Maildir(root / box["maildir"], create=False)
        by_uid = {}
        for key, item in folder.iteritems():
            uid = int(re.search(r"\.U(\d+)V", key).group(1))  # type: ignore[union-attr]
            by_uid[uid] = (folder.get_bytes(key), item.get_flags())
        assert sorted(by_uid) == list(range(1, len(items) + 1))
        for uid, data in enumerate(items, 1):
            flags = FLAGS.get((name, uid), [])
            assert by_uid[uid] == (data, expected_letters(flags, keywords))
            entry = next(e for e in listed if e["mailbox"] == name and e["uid"] == uid)
            assert sorted(entry["flags"]) == sorted(flags)
            assert entry["size"] == len(data) and entry["internal_date"] == 1e9 + uid - 1
        if keywords:
            lines = (root / box["maildir"] / "dovecot-keywords").read_text().splitlines()
            assert {f"{ord(letter) - ord('a')} {kw}" for letter, kw in keywords.items()} == set(
                lines
            )
        # mbox: the same octets once unquoted (a newline added where one was missing).
        mbox = mailbox.mbox(root / box["mbox"], create=False)
        got = [unquote(mbox.get_bytes(key)) for key in mbox.iterkeys()]
        assert got == [d if d.endswith(b"\n") else d + b"\n" for d in items]
        mbox.close()
    inbox_lines = (root / "mbox/INBOX.mbox").read_bytes().split(b"\n")
    from_lines = [line for line in inbox_lines if line[:5] == b"From "]
    assert from_lines[0].startswith(b"From ann@remote.test ")
    assert len(from_lines) == len(MESSAGES["INBOX"])
    assert (root / "mbox/Archive/2024.mbox").read_bytes().startswith(b"From MAILER-DAEMON ")
    assert (root / "maildir/Sent/new").is_dir() and (root / "maildir/Sent/tmp").is_dir()


def test_account_json_says_everything_but_the_secrets(
    config: Config, account: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "alice.zip"
    export_of(config, ALICE, target)
    with zipfile.ZipFile(target) as archive:
        record = json.loads(archive.read("account.json"))
        everything = b"".join(archive.read(name) for name in archive.namelist())
    assert record["address"] == ALICE and record["quota"] == 10_000_000
    assert isinstance(record["created"], int) and abs(record["created"] - time.time()) < 600
    aliases = {a["alias"]: a for a in record["aliases"]}
    assert set(aliases) == {f"al@{DOMAIN}", f"chain@{DOMAIN}", f"team@{DOMAIN}", "@other.test"}
    assert aliases[f"chain@{DOMAIN}"]["via"] == [f"al@{DOMAIN}"]
    assert aliases[f"team@{DOMAIN}"]["targets"] == [BOB, ALICE]
    assert record["sieve_scripts"] == [
        {"name": "rules", "active": True, "text": SCRIPT},
        {"name": "spare", "active": False, "text": "keep;\n"},
    ]
    [app] = record["app_passwords"]
    assert app["name"] == "phone" and app["protocols"] == ["imap", "smtp"]
    assert set(app) == {"name", "protocols", "created", "expires", "last_used"}
    assert record["totp"] is True
    assert record["retention"] == {"Trash": 30 * 86400}
    assert record["junk_filter"]["trained_spam"] == 1
    assert record["junk_filter"]["allowlist"] == ["@friends.test"]
    inbox = next(b for b in record["mailboxes"] if b["name"] == "INBOX")
    assert inbox["uidvalidity"] > 0 and inbox["uidnext"] == len(MESSAGES["INBOX"]) + 1
    assert "login_history" in record
    # No secret in any file of the archive.
    app_password = account["app_password"]
    for secret in (account["totp"], app_password, app_password.replace("-", "")):
        assert secret.encode() not in everything
    assert b"$argon2" not in everything


def test_the_login_history_is_exported(
    config: Config, account: dict[str, str], tmp_path: Path
) -> None:
    with cli._accounts(config) as accounts:
        # As the server's LoginRecorder writes them (estafeta.auth.logins).
        accounts.record_logins(
            [
                (ALICE, 1_700_000_000, "imap", "192.0.2.1", True),
                (ALICE, 1_700_000_100, "smtp", "2001:db8::1", False),
                (BOB, 1_700_000_200, "imap", "192.0.2.2", True),
            ]
        )
    target = tmp_path / "alice.zip"
    export_of(config, ALICE, target)
    with zipfile.ZipFile(target) as archive:
        history = json.loads(archive.read("account.json"))["login_history"]
    assert sorted((e["at"], e["protocol"], e["client"], e["ok"]) for e in history) == [
        (1_700_000_000, "imap", "192.0.2.1", True),
        (1_700_000_100, "smtp", "2001:db8::1", False),
    ]


def test_an_account_without_mail_exports_without_making_a_folder(
    config: Config, account: dict[str, str], tmp_path: Path
) -> None:
    target = tmp_path / "bob.tar.gz"
    report = export_of(config, BOB, target, fmt="tar")
    assert report.messages == 0
    with tarfile.open(target) as archive:
        assert json.load(archive.extractfile("messages.json")) == []  # type: ignore[arg-type]
        record = json.load(archive.extractfile("account.json"))  # type: ignore[arg-type]
    assert record["address"] == BOB
    if config.store.cluster:
        # A cluster account's index (its default mailboxes) is made when it
        # is first opened, as at a first login: they are in it, empty.
        assert report.mailboxes == len(record["mailboxes"]) > 0
        assert {box["messages"] for box in record["mailboxes"]} == {0}
    else:
        assert report.mailboxes == 0
        assert not (config.mail_dir / DOMAIN / "bob").exists()


def chunked(data: bytes, size: int) -> bytes:
    quoter = MboxrdQuoter()
    out = b"".join(quoter.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + quoter.close()


@pytest.mark.parametrize(
    "data",
    [
        b"From a\nFrom b\n",
        b">From a\r\n>>>From b\r\nFro\r\nFrom",
        b"x\n>>>>>>>>>>>>>>",
        b"a line From here\nFrom\n>From\n",
        b"\n\nFrom \n",
        b"",
        b"From " + b"x" * 300 + b"\n" + b">" * 100 + b"From y",
    ],
)
def test_mboxrd_quoting_does_not_depend_on_how_the_message_is_cut(data: bytes) -> None:
    whole = re.sub(rb"(?m)^(>*From )", rb">\1", data)
    for size in (1, 2, 3, 5, 7, 64, 1 << 20):
        assert chunked(data, size) == whole
    assert unquote(whole) == data


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("INBOX", "INBOX"),
        ("Archive/2024", "Archive/2024"),
        ("../etc", "%2E./etc"),
        ("a/../../b", "a/%2E./%2E./b"),
        ("100%\\x", "100%25%5Cx"),
        ("tab\there/.hidden", "tab%09here/%2Ehidden"),
        ("a//b", "a/%00/b"),
        ("Ünïcode.box", "Ünïcode.box"),
    ],
)
def test_mailbox_names_never_leave_their_folder(name: str, path: str) -> None:
    assert archive_path(name) == path
    assert not any(part in ("", ".", "..") for part in archive_path(name).split("/"))


def test_the_command_refuses_an_existing_file_unless_forced(
    instance: Instance,
    account: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "alice.zip"
    target.write_bytes(b"precious")
    args = ["-c", str(instance.config), "user", "export", ALICE, "--to", str(target)]
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"
    assert cli.main([*args, "--force", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == sum(len(items) for items in MESSAGES.values())
    assert zipfile.is_zipfile(target) and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert cli.main(["-c", str(instance.config), "user", "export", "nobody@" + DOMAIN, "--to",
                     str(tmp_path / "x.zip")]) == 2  # fmt: skip
    assert "no account" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def test_a_message_that_cannot_be_read_fails_the_export_and_leaves_no_file(
    config: Config, account: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that cannot be read (a disk error; on a cluster, the object
    store away): the error names the message, and no archive is left."""
    real = export._open_body
    calls = [0]

    def failing(*args: object) -> object:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "_open_body", failing)
    for fmt in ("zip", "tar"):
        calls[0] = 0
        target = tmp_path / f"alice.{fmt}"
        with pytest.raises(export.ExportError, match=r"cannot read \S+ UID \d+ of the account: .*"
                           "Input/output error"):  # fmt: skip
            export_of(config, ALICE, target, fmt=fmt)
        assert not target.exists() and not target.with_name(target.name + ".tmp").exists()
