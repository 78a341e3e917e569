"""Delivery addresses of shared mailboxes in accounts.db (schema 8):
estafeta.auth.sharedaddresses through ``Accounts``, and how ``Router``
tells their targets apart. The server-level tests are test_smtp_shared.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest

from estafeta.auth import AccountError, Accounts, sharedaddresses
from estafeta.delivery.route import Router
from estafeta.store import shared

CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery staple"
ALICE = "alice@example.test"
INFO = "info@example.test"


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    with Accounts(tmp_path / "accounts.db", ["example.test"], hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
        yield db


def test_the_target_form_is_the_shared_stores_owner() -> None:
    assert sharedaddresses.TARGET == shared.OWNER + ":"
    assert sharedaddresses.mailbox_of_target(sharedaddresses.target("info")) == "info"
    assert sharedaddresses.mailbox_of_target(ALICE) is None


def test_set_is_idempotent_and_dry_run_writes_nothing(accounts: Accounts) -> None:
    assert accounts.set_shared_addresses("info", ["Info@Example.TEST"], dry_run=True) == (
        True,
        [INFO],
    )
    assert accounts.shared_addresses() == {}
    assert accounts.set_shared_addresses("info", [INFO, "contact@example.test"]) == (
        True,
        ["contact@example.test", INFO],
    )
    assert accounts.set_shared_addresses("info", [INFO]) == (
        False,
        ["contact@example.test", INFO],
    )
    # Taking away one it does not have is no change.
    assert accounts.set_shared_addresses("info", (), ["nobody@example.test"])[0] is False
    assert accounts.set_shared_addresses("info", (), ["contact@example.test"]) == (True, [INFO])
    assert accounts.shared_addresses() == {"info": [INFO]}
    assert accounts.forget_shared_addresses("info", dry_run=True) == [INFO]
    assert accounts.shared_addresses("info") == {"info": [INFO]}
    assert accounts.forget_shared_addresses("info") == [INFO]
    assert accounts.shared_addresses() == {}


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (ALICE, f"address {ALICE} is an account"),
        ("sales@example.test", "address sales@example.test is an alias"),
        ("team@example.test", "address team@example.test is the delivery address of Shared/team"),
        ("info@elsewhere.test", "address info@elsewhere.test: domain elsewhere.test is not one"),
        ("no at sign", "address 'no at sign'"),
    ],
)
def test_a_clash_is_refused_naming_the_address(
    accounts: Accounts, address: str, message: str
) -> None:
    accounts.add_alias("sales@example.test", [ALICE])
    accounts.set_shared_addresses("team", ["team@example.test"])
    with pytest.raises(AccountError) as raised:
        accounts.set_shared_addresses("info", [INFO, address])
    assert str(raised.value).startswith(message)
    # One transaction: the good address before the bad one was not kept.
    assert accounts.shared_addresses("info") == {}


def test_only_a_top_level_mailbox_has_addresses(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="only a top-level one"):
        accounts.set_shared_addresses("info/2026", [INFO])


def test_accounts_and_aliases_cannot_take_a_shared_address(accounts: Accounts) -> None:
    accounts.set_shared_addresses("info", [INFO])
    with pytest.raises(AccountError, match=f"{INFO} is the delivery address of .*Shared/info"):
        accounts.add_user(INFO, PASSWORD)
    with pytest.raises(AccountError, match=f"{INFO} is the delivery address"):
        accounts.add_alias(INFO, [ALICE])
    # As a target it is fine: the alias leads to the mailbox.
    accounts.add_alias("team@example.test", [ALICE, INFO])
    assert accounts.resolve("team@example.test") == [ALICE, "#shared:info"]


def test_resolve_before_the_catch_all_and_with_subaddresses(accounts: Accounts) -> None:
    accounts.add_alias("@example.test", [ALICE])
    assert accounts.resolve("nobody@example.test") == [ALICE]
    accounts.set_shared_addresses("info", [INFO])
    assert accounts.resolve("INFO@example.test") == ["#shared:info"]
    assert accounts.resolve("info+orders@example.test") == ["#shared:info"]
    # Two aliases to two addresses of one mailbox: one target.
    accounts.set_shared_addresses("info", ["contact@example.test"])
    accounts.add_alias("all@example.test", [INFO, "contact@example.test"])
    assert accounts.resolve("all@example.test") == ["#shared:info"]
    # Taken away: the catch-all has it again (the lookup cache saw the write).
    accounts.set_shared_addresses("info", (), [INFO])
    assert accounts.resolve(INFO) == [ALICE]


def test_the_rcpt_lookup_is_one_primary_key_search(accounts: Accounts) -> None:
    accounts.set_shared_addresses("info", [INFO])
    conn = accounts._conn()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        assert accounts.resolve(INFO) == ["#shared:info"]
    finally:
        conn.set_trace_callback(None)
    lookups = [s for s in statements if "shared_addresses" in s]
    assert len(lookups) == 1, statements
    plan = " ".join(
        str(row[3])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT mailbox FROM shared_addresses WHERE address = ?", (INFO,)
        )
    )
    assert "USING PRIMARY KEY" in plan and "SCAN" not in plan, plan


def test_router_keeps_shared_targets_out_of_local_and_remote(accounts: Accounts) -> None:
    accounts.set_shared_addresses("info", [INFO])
    accounts.add_alias("team@example.test", [ALICE, INFO, "x@remote.test"])
    router = Router(accounts, b"k" * 32)
    targets = router.resolve("team@example.test").targets
    assert router.split(targets) == ([ALICE], ["x@remote.test"])
    assert router.shared_mailboxes(targets) == ["info"]
    # Nobody owns a shared address: it is no sender an account may use.
    assert not router.owns(ALICE, INFO)


def test_schema_8_is_added_to_a_version_7_database(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    conn = sqlite3.connect(path)
    from estafeta.auth import accounts as accounts_module

    for migration in accounts_module._MIGRATIONS[:7]:
        migration(conn)
    conn.execute("PRAGMA user_version=7")
    conn.commit()
    conn.close()
    with Accounts(path, ["example.test"], hasher=CHEAP) as db:
        assert db.set_shared_addresses("info", [INFO]) == (True, [INFO])
        assert db.resolve(INFO) == ["#shared:info"]
