"""``estafeta spam``: status, train from a file / Maildir / mbox / the
account's own folders, reset, and the per-account allowlist. In-process
(cli.main) for speed; the same parser and code as the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DOMAIN, Instance
from estafeta import cli
from estafeta.config import load
from estafeta.message import summarize
from estafeta.store import Store
from estafeta.store.account import Delivery

ALICE = f"alice@{DOMAIN}"


def message(n: int, words: str) -> bytes:
    return (
        f"From: <s{n}@remote.test>\r\nTo: <{ALICE}>\r\nSubject: {words.split()[0]} {n}\r\n"
        f"Message-ID: <{n}.{words.split()[0]}@remote.test>\r\n\r\n{words} number{n}\r\n"
    ).encode()


def run(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["-c", str(instance.config), "spam", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def account(instance: Instance) -> Instance:
    instance.add_user(ALICE)
    return instance


def status(instance: Instance, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code, out = run(instance, capsys, "status", ALICE, "--json")
    assert code == 0, out
    result: dict[str, object] = json.loads(out)
    return result


def test_train_from_a_file_an_mbox_and_a_maildir(
    account: Instance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    single = tmp_path / "one.eml"
    single.write_bytes(message(1, "casino jackpot"))
    mbox = tmp_path / "spam.mbox"
    mbox.write_bytes(
        b"".join(
            b"From sender@remote.test Mon Nov 23 10:00:00 2026\n"
            + message(n, "casino bonus")
            + b"\n"
            for n in range(2, 5)
        )
    )
    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for n in range(5, 7):
        (box / "cur" / f"{n}.eml").write_bytes(message(n, "meeting agenda"))

    code, out = run(account, capsys, "train", ALICE, "--spam", str(single), str(mbox))
    assert code == 0, out
    assert "(file): 1 learned" in out and "(mbox): 3 learned" in out
    code, out = run(account, capsys, "train", ALICE, "--ham", str(box))
    assert code == 0 and "(maildir): 2 learned" in out, out
    found = status(account, capsys)
    assert (found["spam"], found["ham"], found["ready"]) == (4, 2, False)
    # Training the same again changes nothing.
    code, out = run(account, capsys, "train", ALICE, "--spam", str(single))
    assert "0 learned, 0 relearned, 1 unchanged" in out
    code, out = run(account, capsys, "status", ALICE)
    assert code == 0 and "trained 4 spam, 2 ham" in out and "not enough training" in out

    code, out = run(account, capsys, "reset", ALICE)
    assert code == 2 and "--yes" in out
    assert status(account, capsys)["spam"] == 4
    code, out = run(account, capsys, "reset", ALICE, "--yes")
    assert code == 0
    assert (status(account, capsys)["spam"], status(account, capsys)["ham"]) == (0, 0)


def test_train_from_the_accounts_own_mailboxes(
    account: Instance, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load(account.config)
    store = Store(config.mail_dir, config.hostname)
    store.start()
    try:
        deliveries = [
            Delivery(ALICE, data, summarize(data), mailbox)
            for mailbox, data in (
                ("INBOX", message(1, "meeting agenda")),
                ("INBOX", message(2, "project review")),
                ("Junk", message(3, "casino jackpot")),
                ("Trash", message(4, "whatever else")),
            )
        ]
        store.deliver_sync(deliveries)
    finally:
        store.stop()
    code, out = run(account, capsys, "train", ALICE, "--from-mailboxes")
    assert code == 0, out
    assert "INBOX as ham: 2 learned" in out and "Junk as spam: 1 learned" in out
    assert "Trash" not in out
    found = status(account, capsys)
    assert (found["spam"], found["ham"]) == (1, 2)


def test_the_allowlist(account: Instance, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(account, capsys, "allow", ALICE, "News@Shop.Example")[0] == 0
    assert run(account, capsys, "allow", ALICE, "@friends.example")[0] == 0
    code, out = run(account, capsys, "allowlist", ALICE, "--json")
    assert code == 0 and json.loads(out) == ["@friends.example", "news@shop.example"]
    assert run(account, capsys, "disallow", ALICE, "news@shop.example")[0] == 0
    code, out = run(account, capsys, "disallow", ALICE, "news@shop.example")
    assert code == 1 and "not on the allowlist" in out
    code, out = run(account, capsys, "allow", ALICE, "not an address")
    assert code == 1 and "not an address" in out
    code, out = run(account, capsys, "allowlist", ALICE)
    assert out.split() == ["@friends.example"]


def test_errors_name_the_problem(
    account: Instance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = run(account, capsys, "status", f"nobody@{DOMAIN}")
    assert code == 1 and f"no such account: nobody@{DOMAIN}" in out
    missing = tmp_path / "nowhere.mbox"
    code, out = run(account, capsys, "train", ALICE, "--spam", str(missing))
    assert code == 1 and f"{missing}: no such file or directory" in out
    code, out = run(account, capsys, "train", ALICE)
    assert code == 2 and "--spam PATH" in out
    (tmp_path / "plain").mkdir()
    code, out = run(account, capsys, "train", ALICE, "--ham", str(tmp_path / "plain"))
    assert code == 1 and "not a Maildir" in out
    assert "Traceback" not in out
