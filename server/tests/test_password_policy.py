"""The password policy: long enough, not common, not made of the address."""

from __future__ import annotations

from pathlib import Path

import argon2
import pytest

from conftest import DOMAIN, Instance, estafeta
from estafeta.auth import AccountError, Accounts
from estafeta.auth.passwords import MIN_PASSWORD_LENGTH, check_password

CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = f"alice@{DOMAIN}"
STRONG = "tangerine ladder quietly orbits"
ADDRESS_INPUTS = ("alice", DOMAIN, ALICE)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", r"^empty password$"),
        ("Xk9#mQ2vLp8", r"^password too short: use at least 12 characters"),
        ("password1234", r"^password too easy to guess: this is a very common password\."),
        ("qwertyuiop12", r"^password too easy to guess: this is similar to a commonly used"),
        ("aaaaaaaaaaaaaaaa", r"^password too easy to guess: repeats like"),
        ("abcdefghijklmnop", r"^password too easy to guess: sequences like"),
        ("alice@example.test", r"^password too easy to guess: it is built from the account's"),
        ("aliceexample1", r"it is built from the account's address"),
        ("Example.Test.Alice!", r"it is built from the account's address"),
        ("alice1234567890", r"it is built from the account's address"),
    ],
)
def test_weak_passwords_are_refused(password: str, message: str) -> None:
    with pytest.raises(AccountError, match=message) as info:
        check_password(password, user_inputs=ADDRESS_INPUTS)
    text = str(info.value)
    assert "Please choose" in text or "use at least" in text or text == "empty password"
    if password:
        assert password not in text  # never echoed


def test_strong_passwords_are_accepted() -> None:
    for password in (
        STRONG,
        "correct horse battery staple",
        "Xk9#mQ2vLp8z",  # 12 random characters
        "alice's tangerine ladder quietly orbits",  # the name, with much more
        "ünïcödé wörds fröm äfär",
        "x7" * 20 + "tangerine ladder quietly orbits" * 3,  # long: only the start is scored
    ):
        check_password(password, user_inputs=ADDRESS_INPUTS)
    assert MIN_PASSWORD_LENGTH == 12


def test_address_words_count_only_for_that_address() -> None:
    check_password("aliceexample1", user_inputs=("bob", "other.test"))
    with pytest.raises(AccountError, match="built from the account's address"):
        check_password("bobother2024", user_inputs=("bob", "other.test"))


def test_accounts_apply_the_policy(tmp_path: Path) -> None:
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=CHEAP) as db:
        with pytest.raises(AccountError, match="too easy to guess: it is built from the account"):
            db.add_user(ALICE, "Alice@Example.test2024")
        with pytest.raises(AccountError, match="too easy to guess: this is a very common"):
            db.add_user(ALICE, "password1234")
        assert db.list_users() == []
        db.add_user(ALICE, STRONG)
        with pytest.raises(AccountError, match="password too short"):
            db.set_password(ALICE, "short one")
        with pytest.raises(AccountError, match="built from the account's address"):
            db.set_password(ALICE, "alice.example.test")
        assert db.verify_password(ALICE, STRONG)
    # Tools that must can turn the policy off; an empty password is still refused.
    with Accounts(tmp_path / "loose.db", [DOMAIN], hasher=CHEAP, password_policy=False) as db:
        db.add_user(ALICE, "password1234")
        assert db.authenticate(ALICE, "password1234", "imap") == ALICE
        with pytest.raises(AccountError, match=r"^empty password$"):
            db.set_password(ALICE, "")


def test_cli_reports_policy_errors(instance: Instance) -> None:
    def run(*args: str, stdin: str) -> tuple[int, str, str]:
        result = estafeta(instance.config, *args, "--password-stdin", stdin=stdin, check=False)
        return result.returncode, result.stdout, result.stderr

    code, out, err = run("user", "add", ALICE, stdin="qwertyuiop12\n")
    assert (code, out) == (1, "")
    assert err.startswith("estafeta: password too easy to guess: this is similar to a commonly")
    assert "qwertyuiop12" not in err and "Traceback" not in err
    code, out, err = run("user", "add", ALICE, stdin="short\n")
    assert (code, out) == (1, "")
    assert err.startswith("estafeta: password too short: use at least 12 characters")
    assert run("user", "add", ALICE, stdin=STRONG + "\n")[0] == 0
    code, out, err = run("user", "passwd", ALICE, stdin="alice@example.test\n")
    assert (code, out) == (1, "")
    assert "it is built from the account's address" in err
    assert run("user", "verify", ALICE, stdin=STRONG + "\n")[0] == 0  # unchanged
