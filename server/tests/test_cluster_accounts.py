"""Accounts of a cluster node (estafeta.auth.cluster): the accounts database
replicated through a real PostgreSQL 15; the local backend's rules hold
across nodes, the login history stays with each node."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import argon2
import pyotp
import pytest

from estafeta.auth.accounts import AccountError
from estafeta.auth.cluster import ClusterAccounts
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig

PASSWORD = "correct horse battery staple"
FAST = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def nodes(
    tmp_path: Path, database: DatabaseConfig, ioloop: IoLoop
) -> Iterator[Callable[[str], ClusterAccounts]]:
    db = Database(database)
    ioloop.run(db.open())
    made: list[ClusterAccounts] = []

    def make(name: str) -> ClusterAccounts:
        (tmp_path / name).mkdir()
        node = ClusterAccounts(
            tmp_path / name / "accounts.db", ["example.test"], io=ioloop, db=db, hasher=FAST
        )
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()
    ioloop.run(db.close())


def test_an_account_made_on_a_logs_in_on_b(nodes: Callable[[str], ClusterAccounts]) -> None:
    a, b = nodes("a"), nodes("b")
    a.add_user("ana@example.test", PASSWORD)
    a.set_quota("ana@example.test", 10_000)
    assert b.refresh()
    assert b.verify_password("ana@example.test", PASSWORD)
    assert b.get_quota("ana@example.test") == 10_000
    b.set_password("ana@example.test", PASSWORD + "!")
    a.refresh()
    assert not a.verify_password("ana@example.test", PASSWORD)
    assert a.verify_password("ana@example.test", PASSWORD + "!")
    assert not a.refresh()  # nothing new


def test_a_third_node_started_later_has_everything(
    nodes: Callable[[str], ClusterAccounts],
) -> None:
    a = nodes("a")
    a.add_user("ana@example.test", PASSWORD)
    a.add_alias("sales@example.test", ["ana@example.test"])
    c = nodes("c")
    assert c.list_users() == ["ana@example.test"]
    assert c.list_aliases() == {"sales@example.test": ["ana@example.test"]}


def test_an_address_is_an_account_or_an_alias_across_nodes(
    nodes: Callable[[str], ClusterAccounts],
) -> None:
    a, b = nodes("a"), nodes("b")
    a.add_user("ana@example.test", PASSWORD)
    a.add_alias("team@example.test", ["ana@example.test"])
    # b has not refreshed: its write pulls a's first, under the lock.
    with pytest.raises(AccountError):
        b.add_user("team@example.test", PASSWORD)


def test_one_address_added_on_two_nodes_at_once_is_made_once(
    nodes: Callable[[str], ClusterAccounts],
) -> None:
    a, b = nodes("a"), nodes("b")
    outcomes: list[str] = []

    def add(node: ClusterAccounts) -> None:
        try:
            node.add_user("bob@example.test", PASSWORD)
            outcomes.append("made")
        except AccountError:
            outcomes.append("refused")

    threads = [threading.Thread(target=add, args=(node,)) for node in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["made", "refused"]
    a.refresh()
    b.refresh()
    assert a.list_users() == b.list_users() == ["bob@example.test"]


def test_a_totp_code_is_accepted_once_whichever_node(
    nodes: Callable[[str], ClusterAccounts],
) -> None:
    a, b = nodes("a"), nodes("b")
    a.add_user("ana@example.test", PASSWORD)
    secret, _uri = a.totp_enroll("ana@example.test")
    code = pyotp.TOTP(secret).now()
    b.refresh()
    assert b.totp_verify("ana@example.test", code)
    # a's replica still has last_step -1 until it pulls; its write pulls
    # first and finds the step used.
    assert not a.totp_verify("ana@example.test", code)


def test_the_login_history_stays_on_its_node(nodes: Callable[[str], ClusterAccounts]) -> None:
    a, b = nodes("a"), nodes("b")
    a.add_user("ana@example.test", PASSWORD)
    assert a.record_logins([("ana@example.test", 1_700_000_000, "imap", "192.0.2.7", True)]) == 1
    b.refresh()
    assert [r.client for r in a.login_history("ana@example.test")] == ["192.0.2.7"]
    assert b.login_history("ana@example.test") == []


def test_a_notice_refreshes_in_the_background(nodes: Callable[[str], ClusterAccounts]) -> None:
    a, b = nodes("a"), nodes("b")
    a.add_user("ana@example.test", PASSWORD)
    for _ in range(5):  # many notices, one refresh at a time
        b.changed_elsewhere()
    b._refresher.submit(lambda: None).result(10)  # what was queued is done
    assert b.exists("ana@example.test")
