"""``estafeta spam``: status, train from a file / Maildir / mbox / the
account's own folders, reset, and the per-account allowlist; the errors
(unknown account, missing PATH, bad SENDER, unusable statistics) as one
line and an exit code. In-process (cli.main) for speed: the same parser
and code as the command; one test runs the real command to see that no
traceback reaches the terminal."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from conftest import DOMAIN, Instance, estafeta
from estafeta import cli
from estafeta.config import load
from estafeta.message import summarize
from estafeta.spam import JunkFilter
from estafeta.spam.readers import MAX_MESSAGE, MessageSource
from estafeta.store import Store
from estafeta.store.account import Delivery

ALICE = f"alice@{DOMAIN}"


def message(n: int, words: str) -> bytes:
    return (
        f"From: <s{n}@remote.test>\r\nTo: <{ALICE}>\r\nSubject: {words.split()[0]} {n}\r\n"
        f"Message-ID: <{n}.{words.split()[0]}@remote.test>\r\n\r\n{words} number{n}\r\n"
    ).encode()


def mbox(path: Path, messages: list[bytes]) -> Path:
    path.write_bytes(
        b"".join(
            b"From sender@remote.test Mon Nov 23 10:00:00 2026\n" + m + b"\n" for m in messages
        )
    )
    return path


def maildir(path: Path, messages: list[bytes]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    for n, data in enumerate(messages):
        (path / "cur" / f"{n}.eml").write_bytes(data)
    return path


def run(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["-c", str(instance.config), "spam", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def account(instance: Instance) -> Instance:
    instance.extra_config = "[spam]\nmin_spam = 3\nmin_ham = 2\n"
    instance.write_config()
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
    spam_box = mbox(tmp_path / "spam.mbox", [message(n, "casino bonus") for n in range(2, 5)])
    ham_dir = maildir(tmp_path / "Maildir", [message(n, "meeting agenda") for n in (5, 6)])

    assert status(account, capsys)["ready"] is False
    code, out = run(account, capsys, "train", ALICE, "--spam", str(single), str(spam_box))
    assert code == 0, out
    assert f"{single} (file, spam): 1 learned, 0 relearned, 0 unchanged, 0 errors" in out
    assert f"{spam_box} (mbox, spam): 3 learned" in out
    # The address is normalised as by the other commands.
    code, out = run(account, capsys, "train", ALICE.upper(), "--ham", str(ham_dir))
    assert code == 0 and f"{ham_dir} (maildir, ham): 2 learned" in out, out
    found = status(account, capsys)
    assert (found["account"], found["spam"], found["ham"]) == (ALICE, 4, 2)
    assert found["ready"] is True and isinstance(found["tokens"], int) and found["tokens"] > 5
    code, out = run(account, capsys, "status", ALICE)
    assert code == 0 and "trained 4 spam, 2 ham" in out and "verdicts count" in out

    # The same again changes nothing; a message trained the other way is relearned.
    code, out = run(account, capsys, "train", ALICE, "--spam", str(single))
    assert "0 learned, 0 relearned, 1 unchanged" in out
    code, out = run(account, capsys, "train", ALICE, "--ham", str(single))
    assert code == 0 and "0 learned, 1 relearned, 0 unchanged" in out, out
    found = status(account, capsys)
    assert (found["spam"], found["ham"]) == (3, 3)


def test_spam_and_ham_in_one_call_and_too_large_messages_skipped(
    account: Instance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    huge = message(9, "casino huge") + b"x" * (MAX_MESSAGE + 1) + b"\r\n"
    spam_box = mbox(tmp_path / "spam.mbox", [message(1, "casino bonus"), huge, message(2, "win")])
    ham_dir = maildir(tmp_path / "ham", [message(3, "meeting agenda")])
    code, out = run(account, capsys, "train", ALICE, "--spam", str(spam_box), "--ham", str(ham_dir))
    assert code == 0, out
    assert f"{spam_box} (mbox, spam): 2 learned, 0 relearned, 0 unchanged, 0 errors, 1 skipped" in (
        out
    )
    assert f"{ham_dir} (maildir, ham): 1 learned" in out
    found = status(account, capsys)
    assert (found["spam"], found["ham"], found["ready"]) == (2, 1, False)


def test_reset_forgets_the_training_and_keeps_the_allowlist(
    account: Instance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spam_box = mbox(tmp_path / "spam.mbox", [message(n, "casino bonus") for n in range(3)])
    assert run(account, capsys, "train", ALICE, "--spam", str(spam_box))[0] == 0
    assert run(account, capsys, "allow", ALICE, "@friends.example")[0] == 0
    tokens = status(account, capsys)["tokens"]
    code, out = run(account, capsys, "reset", ALICE)
    assert code == 0 and out.strip() == f"reset {ALICE}: forgot 3 spam, 0 ham, {tokens} tokens"
    found = status(account, capsys)
    assert (found["spam"], found["ham"], found["tokens"]) == (0, 0, 0)
    assert run(account, capsys, "allowlist", ALICE)[1].split() == ["@friends.example"]
    # Trained again from nothing: learned, not "unchanged".
    code, out = run(account, capsys, "train", ALICE, "--spam", str(spam_box))
    assert "3 learned" in out


# It delivers through a local Store of its own; on a cluster node,
# --from-mailboxes is refused (the next test).
@pytest.mark.local_store
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
    code, out = run(account, capsys, "allow", ALICE, "News@Shop.Example")
    assert code == 0 and "news@shop.example allowed" in out
    assert run(account, capsys, "allow", ALICE, "@friends.example")[0] == 0
    code, out = run(account, capsys, "allowlist", ALICE, "--json")
    assert code == 0 and json.loads(out) == ["@friends.example", "news@shop.example"]
    code, out = run(account, capsys, "disallow", ALICE, "NEWS@shop.example")
    assert code == 0 and "news@shop.example removed" in out
    code, out = run(account, capsys, "disallow", ALICE, "news@shop.example")
    assert code == 1 and "news@shop.example is not on the allowlist" in out
    code, out = run(account, capsys, "allowlist", ALICE)
    assert code == 0 and out.split() == ["@friends.example"]


@pytest.mark.parametrize("sender", ["not an address", "nobody", "user@localhost", "@"])
def test_a_bad_sender_is_refused(
    account: Instance, capsys: pytest.CaptureFixture[str], sender: str
) -> None:
    for action in ("allow", "disallow"):
        code, out = run(account, capsys, action, ALICE, sender)
        assert code == 1 and f"not an address or @domain: {sender!r}" in out, out
    assert run(account, capsys, "allowlist", ALICE, "--json")[1].strip() == "[]"


def test_errors_name_the_problem(
    account: Instance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nobody = f"nobody@{DOMAIN}"
    for args in (
        ("status", nobody),
        ("reset", nobody),
        ("allow", nobody, "@friends.example"),
        ("allowlist", nobody),
        ("train", nobody, "--spam", str(tmp_path)),
    ):
        code, out = run(account, capsys, *args)
        assert code == 2 and out.strip() == f"estafeta: no account {nobody}", (args, out)

    good = mbox(tmp_path / "good.mbox", [message(1, "casino bonus")])
    missing = tmp_path / "nowhere.mbox"
    code, out = run(account, capsys, "train", ALICE, "--spam", str(good), str(missing))
    assert code == 1 and out.strip() == f"estafeta: {missing}: no such file or directory"
    assert status(account, capsys)["spam"] == 0  # every PATH is checked first

    code, out = run(account, capsys, "train", ALICE)
    assert code == 2 and "--spam PATH" in out
    code, out = run(account, capsys, "train", ALICE, "--from-mailboxes", "--ham", str(good))
    assert code == 2 and "--from-mailboxes takes no" in out
    (tmp_path / "plain").mkdir()
    code, out = run(account, capsys, "train", ALICE, "--ham", str(tmp_path / "plain"))
    assert code == 1 and "plain: a directory but not a Maildir" in out


def test_from_mailboxes_of_an_account_without_mail(
    account: Instance, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(account, capsys, "train", ALICE, "--from-mailboxes")
    if account.cluster:  # the folders are a local store's
        assert code == 2 and "--from-mailboxes reads a local store's folders" in out, out
    else:
        assert code == 0 and "no mail yet, nothing to learn from" in out, out


# A file where the statistics directory should be: the local store's files.
@pytest.mark.local_store
def test_unusable_statistics_are_one_line(
    account: Instance, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spam_dir = load(account.config).spam_dir
    spam_dir.parent.mkdir(parents=True, exist_ok=True)
    spam_dir.write_text("a file where the directory should be")
    good = mbox(tmp_path / "good.mbox", [message(1, "casino bonus")])
    for args in (("train", ALICE, "--spam", str(good)), ("allow", ALICE, "@friends.example")):
        code, out = run(account, capsys, *args)
        assert code == 1 and out.startswith(f"estafeta: {spam_dir}: "), out
        assert len(out.strip().splitlines()) == 1


def test_the_real_command_prints_no_traceback(account: Instance, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = estafeta(account.config, "spam", "train", ALICE, "--spam", str(missing), check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"estafeta: {missing}: no such file or directory"
    result = estafeta(account.config, "spam", "allow", ALICE, "bogus", check=False)
    assert result.returncode == 1 and result.stderr.strip().endswith("'bogus'")
    assert "Traceback" not in result.stderr


def test_training_streams(
    account: Instance,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mbox reaches the filter one message at a time: the reader reads a
    message only once the filter has taken the one before (bounded memory
    whatever the size of the mbox)."""
    count = 120
    spam_box = mbox(tmp_path / "big.mbox", [message(n, "casino bonus") for n in range(count)])
    events: list[tuple[str, int]] = []
    read_source = MessageSource.__iter__
    train_from = JunkFilter.train_from

    def reading(self: MessageSource) -> Iterator[bytes]:
        for n, data in enumerate(read_source(self)):
            events.append(("read", n))
            yield data

    def training(self: JunkFilter, account: str, messages: Iterable[bytes], spam: bool) -> object:
        def taking() -> Iterator[bytes]:
            for n, data in enumerate(messages):
                assert f"number{n}\r\n".encode() in data
                events.append(("take", n))
                yield data

        return train_from(self, account, taking(), spam)

    monkeypatch.setattr(MessageSource, "__iter__", reading)
    monkeypatch.setattr(JunkFilter, "train_from", training)
    code, out = run(account, capsys, "train", ALICE, "--spam", str(spam_box))
    assert code == 0 and f"{count} learned" in out, out
    assert events == [(what, n) for n in range(count) for what in ("read", "take")]
