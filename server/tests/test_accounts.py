"""The account and alias database (estafeta.auth.accounts)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import argon2
import pytest

from estafeta.auth import AccountError, Accounts
from estafeta.auth import accounts as accounts_module

# Cheap parameters so the tests run fast; production uses the library defaults.
CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
DOMAINS = ["example.test", "Exämple.TEST"]
PASSWORD = "correct horse battery staple"
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"


def _db(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    with Accounts(_db(tmp_path), DOMAINS, hasher=CHEAP) as db:
        yield db


@pytest.fixture
def people(accounts: Accounts) -> Accounts:
    for address in (ALICE, BOB, CAROL):
        accounts.add_user(address, PASSWORD)
    return accounts


def raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path))


def stored_hash(path: Path, address: str) -> str:
    with raw(path) as conn:
        row = conn.execute(
            "SELECT password_hash FROM accounts WHERE address = ?", (address,)
        ).fetchone()
    assert row is not None
    return str(row[0])


class CountingHasher(argon2.PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


# -- accounts -----------------------------------------------------------------


def test_add_user_normalises_and_lists(accounts: Accounts) -> None:
    assert accounts.add_user("Bob@Example.TEST", PASSWORD) == BOB
    assert accounts.add_user("alice@EXÄMPLE.test", PASSWORD) == "alice@xn--exmple-cua.test"
    assert accounts.add_user(ALICE, PASSWORD) == ALICE
    assert accounts.list_users() == [ALICE, "alice@xn--exmple-cua.test", BOB]  # sorted
    assert accounts.exists("BOB@example.test")
    assert accounts.exists("alice@xn--exmple-cua.test")
    assert not accounts.exists("carol@example.test")
    assert not accounts.exists("not an address")


def test_duplicate_user_is_refused(accounts: Accounts) -> None:
    accounts.add_user(ALICE, PASSWORD)
    with pytest.raises(AccountError, match=r"^account alice@example\.test already exists$"):
        accounts.add_user("ALICE@Example.Test.", "another password")
    assert accounts.list_users() == [ALICE]


def test_non_local_domain_is_refused(accounts: Accounts) -> None:
    with pytest.raises(AccountError) as info:
        accounts.add_user("x@foo.test", PASSWORD)
    assert str(info.value) == (
        "domain foo.test is not one of the configured domains (example.test, xn--exmple-cua.test)"
    )
    assert accounts.list_users() == []


def test_invalid_address_is_refused(accounts: Accounts) -> None:
    with pytest.raises(AccountError, match="missing '@'"):
        accounts.add_user("alice", PASSWORD)
    with pytest.raises(AccountError, match="local part longer than 64 octets"):
        accounts.add_user("a" * 65 + "@example.test", PASSWORD)


def test_is_local_domain(accounts: Accounts) -> None:
    assert accounts.domains == ("example.test", "xn--exmple-cua.test")
    assert accounts.is_local_domain("EXAMPLE.test.")
    assert accounts.is_local_domain("exämple.test")
    assert accounts.is_local_domain("xn--exmple-cua.test")
    assert not accounts.is_local_domain("other.test")
    assert not accounts.is_local_domain("sub.example.test")
    assert not accounts.is_local_domain("bad..domain")


def test_no_domains_configured(tmp_path: Path) -> None:
    with (
        Accounts(_db(tmp_path), [], hasher=CHEAP) as db,
        pytest.raises(AccountError, match=r"\(none configured\)"),
    ):
        db.add_user(ALICE, PASSWORD)


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccountError, match="configured domain"):
        Accounts(_db(tmp_path), ["bad..domain"], hasher=CHEAP)
    with pytest.raises(AccountError, match="separator"):
        Accounts(_db(tmp_path), DOMAINS, hasher=CHEAP, subaddress_separator="")


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "empty password"),
        ("short", "password too short: use at least 12 characters"),
        ("1234567", "password too short"),
        ("\ud800" * 8, "password is not valid Unicode text"),
    ],
)
def test_bad_passwords_are_refused(accounts: Accounts, password: str, message: str) -> None:
    with pytest.raises(AccountError, match=message):
        accounts.add_user(ALICE, password)
    assert accounts.list_users() == []
    accounts.add_user(ALICE, PASSWORD)
    with pytest.raises(AccountError, match=message):
        accounts.set_password(ALICE, password)
    assert accounts.verify_password(ALICE, PASSWORD)


def test_password_is_never_in_messages_or_logs(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Passw0rd"
    accounts.add_user(ALICE, secret)
    failures: list[Callable[[], object]] = [
        lambda: accounts.add_user(ALICE, secret),
        lambda: accounts.add_user("x@foo.test", secret),
        lambda: accounts.add_user("not an address", secret),
        lambda: accounts.set_password(BOB, secret),
        lambda: accounts.add_user(BOB, secret[:5]),
    ]
    for failure in failures:
        with pytest.raises(AccountError) as info:
            failure()
        assert secret not in str(info.value)
        assert secret[:5] not in str(info.value)
    assert secret not in caplog.text
    assert secret not in stored_hash(accounts.path, ALICE)


def test_hash_is_argon2id(accounts: Accounts) -> None:
    accounts.add_user(ALICE, PASSWORD)
    assert stored_hash(accounts.path, ALICE).startswith("$argon2id$")


def test_verify_password(accounts: Accounts) -> None:
    accounts.add_user(ALICE, PASSWORD)
    accounts.add_user(BOB, "bobs secret password")
    assert accounts.verify_password(ALICE, PASSWORD)
    assert accounts.verify_password("Alice@EXAMPLE.test", PASSWORD)
    assert not accounts.verify_password(ALICE, PASSWORD.upper())
    assert not accounts.verify_password(ALICE, "bobs secret password")
    assert not accounts.verify_password(ALICE, "")
    assert not accounts.verify_password(ALICE, "\ud800" * 8)
    assert not accounts.verify_password("nobody@example.test", PASSWORD)
    assert not accounts.verify_password("alice@other.test", PASSWORD)
    assert not accounts.verify_password("not an address", PASSWORD)


def test_set_password(accounts: Accounts) -> None:
    accounts.add_user(ALICE, PASSWORD)
    before = stored_hash(accounts.path, ALICE)
    accounts.set_password("ALICE@example.test", "a new password")
    assert stored_hash(accounts.path, ALICE) != before
    assert accounts.verify_password(ALICE, "a new password")
    assert not accounts.verify_password(ALICE, PASSWORD)
    with pytest.raises(AccountError, match=r"^no account bob@example\.test$"):
        accounts.set_password(BOB, "a new password")


def test_verify_without_rehash_only_looks(tmp_path: Path) -> None:
    path = _db(tmp_path)
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
    old = stored_hash(path, ALICE)
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    with Accounts(path, DOMAINS, hasher=stronger) as db:
        assert db.verify_password(ALICE, PASSWORD, rehash=False)
        assert stored_hash(path, ALICE) == old  # `estafeta user verify` writes nothing
        assert not db.verify_password(ALICE, "wrong password", rehash=False)


def test_unknown_users_cost_a_verification(tmp_path: Path) -> None:
    hasher = CountingHasher()
    with Accounts(_db(tmp_path), DOMAINS, hasher=hasher) as db:
        db.add_user(ALICE, PASSWORD)
        for address in (ALICE, "nobody@example.test", "x@other.test", "not an address"):
            hasher.verifications = 0
            assert not db.verify_password(address, "wrong password")
            assert hasher.verifications == 1, address


def test_rehash_when_parameters_change(tmp_path: Path) -> None:
    path = _db(tmp_path)
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
    old = stored_hash(path, ALICE)
    assert "m=8,t=1,p=1" in old

    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    with Accounts(path, DOMAINS, hasher=stronger) as db:
        assert not db.verify_password(ALICE, "wrong password")
        assert stored_hash(path, ALICE) == old  # a wrong password changes nothing
        assert db.verify_password(ALICE, PASSWORD)
        new = stored_hash(path, ALICE)
        assert new != old
        assert "m=16,t=2,p=1" in new
        assert not stronger.check_needs_rehash(new)
        assert db.verify_password(ALICE, PASSWORD)
        assert stored_hash(path, ALICE) == new  # no rehash when up to date


def test_delete_user(people: Accounts) -> None:
    with pytest.raises(AccountError, match=r"^no account dave@example\.test$"):
        people.delete_user("dave@example.test")
    people.add_alias("sales@example.test", [ALICE, BOB])
    people.add_alias("team@example.test", [ALICE])
    people.add_alias("all@example.test", [BOB, CAROL])
    assert people.delete_user("Alice@Example.Test") == ["sales@example.test", "team@example.test"]
    assert people.list_users() == [BOB, CAROL]
    assert not people.verify_password(ALICE, PASSWORD)
    # sales keeps bob; team had only alice and is gone; all is untouched
    assert people.list_aliases() == {
        "all@example.test": [BOB, CAROL],
        "sales@example.test": [BOB],
    }
    assert people.delete_user(CAROL) == ["all@example.test"]


# -- quotas ----------------------------------------------------------------------


def test_quota_defaults_to_global_and_can_be_set(people: Accounts) -> None:
    assert people.get_quota(ALICE) == 0  # 0: the global [limits] quota
    people.set_quota("Alice@Example.TEST", 10 * 2**30)
    assert people.get_quota(ALICE) == 10 * 2**30
    assert people.list_quotas() == {ALICE: 10 * 2**30, BOB: 0, CAROL: 0}
    people.set_quota(ALICE, 0)
    assert people.get_quota(ALICE) == 0
    # A quota is part of the account: a new account with the name starts over.
    people.set_quota(BOB, 5000)
    people.delete_user(BOB)
    people.add_user(BOB, PASSWORD)
    assert people.get_quota(BOB) == 0


def test_quota_errors(people: Accounts) -> None:
    cases: list[tuple[str, object, str]] = [
        ("dave@example.test", 100, r"^no account dave@example\.test$"),
        (ALICE, -1, "use a number of bytes, or 0 for the global quota"),
        (ALICE, "1G", "use a number of bytes"),
        (ALICE, True, "use a number of bytes"),
        (ALICE, 2**63, "too large"),
        ("x@foo.test", 100, "domain foo.test is not one of the configured domains"),
        ("not an address", 100, "missing '@'"),
    ]
    for address, quota, message in cases:
        with pytest.raises(AccountError, match=message):
            people.set_quota(address, quota)  # type: ignore[arg-type]
    with pytest.raises(AccountError, match=r"^no account dave@example\.test$"):
        people.get_quota("dave@example.test")
    assert people.list_quotas() == {ALICE: 0, BOB: 0, CAROL: 0}


# -- aliases --------------------------------------------------------------------


def test_add_and_list_aliases(people: Accounts) -> None:
    people.add_alias("Sales@Example.TEST", [BOB, "ALICE@example.test", BOB])
    people.add_alias("@exämple.test", [CAROL])
    assert people.list_aliases() == {
        "@xn--exmple-cua.test": [CAROL],
        "sales@example.test": [BOB, ALICE],  # order kept, duplicate dropped
    }


def test_alias_forwarding_to_remote_addresses(people: Accounts) -> None:
    people.add_alias("team@example.test", [ALICE, "Friend@Remote.TEST"])
    people.add_alias("outer@example.test", ["team@example.test"])
    # Remote targets come back as addresses; callers tell them apart by domain.
    assert people.resolve("team@example.test") == [ALICE, "friend@remote.test"]
    assert people.resolve("outer@example.test") == [ALICE, "friend@remote.test"]
    assert not people.is_local_domain("remote.test")


def test_alias_errors(people: Accounts) -> None:
    people.add_alias("sales@example.test", [ALICE])
    cases = [
        ("sales@example.test", [BOB], r"alias sales@example\.test exists, delete it first"),
        (ALICE, [BOB], r"alice@example\.test is an account"),
        ("x@example.test", [], "at least one target"),
        ("x@example.test", ["x@example.test"], "cannot point to itself"),
        ("x@example.test", ["ghost@example.test"], "neither an account, an alias nor the address"),
        ("x@example.test", ["not an address"], "missing '@'"),
        ("x@example.test", ["@example.test"], "a catch-all cannot be a target"),
        ("x@foo.test", [ALICE], "domain foo.test is not one of the configured domains"),
        ("@foo.test", [ALICE], "domain foo.test is not one of the configured domains"),
        ("@bad..domain", [ALICE], "empty label"),
    ]
    for source, targets, message in cases:
        with pytest.raises(AccountError, match=message):
            people.add_alias(source, targets)
    assert people.list_aliases() == {"sales@example.test": [ALICE]}


def test_user_cannot_take_an_alias_address(people: Accounts) -> None:
    people.add_alias("sales@example.test", [ALICE])
    with pytest.raises(AccountError, match=r"sales@example\.test is an alias"):
        people.add_user("SALES@example.test", PASSWORD)
    assert "sales@example.test" not in people.list_users()


def test_failed_add_alias_leaves_nothing(people: Accounts) -> None:
    # The bad target comes after two good ones: their rows must be rolled back.
    with pytest.raises(AccountError, match=r"ghost@example\.test is neither"):
        people.add_alias("list@example.test", [ALICE, BOB, "ghost@example.test"])
    assert people.list_aliases() == {}
    assert people.resolve("list@example.test") is None
    with raw(people.path) as conn:
        assert conn.execute("SELECT count(*) FROM aliases").fetchone() == (0,)
    # and the same alias can then be made properly
    people.add_alias("list@example.test", [ALICE, BOB])
    assert people.resolve("list@example.test") == [ALICE, BOB]


def test_delete_alias(people: Accounts) -> None:
    people.add_alias("sales@example.test", [ALICE])
    people.add_alias("@example.test", [BOB])
    with pytest.raises(AccountError, match=r"^no alias info@example\.test$"):
        people.delete_alias("info@example.test")
    people.delete_alias("Sales@Example.Test")
    people.delete_alias("@EXAMPLE.test")
    assert people.list_aliases() == {}
    assert people.resolve("sales@example.test") is None


# -- resolve ----------------------------------------------------------------------


def test_resolve_accounts(people: Accounts) -> None:
    assert people.resolve(ALICE) == [ALICE]
    assert people.resolve("ALICE@Example.Test.") == [ALICE]
    assert people.resolve("nobody@example.test") is None
    assert people.resolve("alice@other.test") is None
    assert people.resolve("not an address") is None
    assert people.resolve("alice@xn--exmple-cua.test") is None  # other local domain


def test_resolve_alias_keeps_target_order(people: Accounts) -> None:
    people.add_alias("sales@example.test", [CAROL, ALICE])
    assert people.resolve("Sales@example.test") == [CAROL, ALICE]


def test_resolve_nested_aliases_deduplicated(people: Accounts) -> None:
    people.add_alias("sales@example.test", [BOB, ALICE])
    people.add_alias("team@example.test", ["sales@example.test", CAROL])
    people.add_alias("all@example.test", ["team@example.test", ALICE, "sales@example.test"])
    assert people.resolve("team@example.test") == [BOB, ALICE, CAROL]
    assert people.resolve("all@example.test") == [BOB, ALICE, CAROL]


def test_resolve_cycle_terminates(people: Accounts) -> None:
    people.add_alias("a@example.test", [ALICE])
    people.add_alias("b@example.test", ["a@example.test", BOB])
    people.delete_alias("a@example.test")
    people.add_alias("a@example.test", ["b@example.test", CAROL])  # a -> b -> a
    assert people.resolve("a@example.test") == [BOB, CAROL]
    assert people.resolve("b@example.test") == [CAROL, BOB]


def test_resolve_depth_limit(people: Accounts) -> None:
    def chain(name: str, length: int) -> str:
        target = ALICE
        for i in range(length, 0, -1):
            source = f"{name}{i}@example.test"
            people.add_alias(source, [target])
            target = source
        return target

    assert accounts_module.MAX_ALIAS_DEPTH == 10
    assert people.resolve(chain("ten", 10)) == [ALICE]
    assert people.resolve(chain("eleven", 11)) is None


def test_resolve_skips_dangling_targets(people: Accounts) -> None:
    people.add_alias("inner@example.test", [ALICE])
    people.add_alias("outer@example.test", ["inner@example.test", BOB])
    people.add_alias("lonely@example.test", ["inner@example.test"])
    people.delete_alias("inner@example.test")
    assert people.resolve("outer@example.test") == [BOB]
    assert people.resolve("lonely@example.test") is None
    # an alias that leads nowhere falls through to the catch-all
    people.add_alias("@example.test", [CAROL])
    assert people.resolve("lonely@example.test") == [CAROL]


def test_resolve_subaddress(people: Accounts) -> None:
    people.add_alias("sales@example.test", [BOB, ALICE])
    assert people.resolve("alice+news@example.test") == [ALICE]
    assert people.resolve("Alice+News+More@Example.Test") == [ALICE]
    assert people.resolve("sales+q3@example.test") == [BOB, ALICE]
    assert people.resolve("nobody+tag@example.test") is None
    assert people.resolve("+tag@example.test") is None
    # an account whose name has the separator wins over the base account
    people.add_user("alice+special@example.test", PASSWORD)
    assert people.resolve("alice+special@example.test") == ["alice+special@example.test"]


def test_resolve_subaddress_of_quoted_local_part(people: Accounts) -> None:
    people.add_user('"John Doe"@example.test', PASSWORD)
    assert people.resolve('"John Doe+tag"@example.test') == ['"john doe"@example.test']
    people.add_user('"a@b"@example.test', PASSWORD)
    assert people.resolve('"a@b+x"@example.test') == ['"a@b"@example.test']


def test_subaddress_separator_is_configurable(tmp_path: Path) -> None:
    with Accounts(_db(tmp_path), DOMAINS, hasher=CHEAP, subaddress_separator="-") as db:
        db.add_user(ALICE, PASSWORD)
        assert db.resolve("alice-news@example.test") == [ALICE]
        assert db.resolve("alice+news@example.test") is None
    with Accounts(_db(tmp_path), DOMAINS, hasher=CHEAP, subaddress_separator=None) as db:
        assert db.resolve("alice-news@example.test") is None
        assert db.resolve("alice+news@example.test") is None
        assert db.resolve(ALICE) == [ALICE]


def test_resolve_catch_all(people: Accounts) -> None:
    people.add_alias("postmaster@example.test", [CAROL])
    people.add_alias("@example.test", ["postmaster@example.test", BOB])
    assert people.resolve("anything@example.test") == [CAROL, BOB]
    assert people.resolve("ALICE@example.test") == [ALICE]  # accounts come first
    assert people.resolve("alice+tag@example.test") == [ALICE]  # so does subaddressing
    assert people.resolve("nobody+tag@example.test") == [CAROL, BOB]
    # a catch-all covers its own domain only
    assert people.resolve("anything@xn--exmple-cua.test") is None
    assert people.resolve("anything@other.test") is None


# -- the database ------------------------------------------------------------------


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = _db(tmp_path)
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
        db.add_user(BOB, "bobs secret password")
        db.add_alias("sales@example.test", [BOB, ALICE])
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        assert db.list_users() == [ALICE, BOB]
        assert db.list_aliases() == {"sales@example.test": [BOB, ALICE]}
        assert db.verify_password(BOB, "bobs secret password")
        assert db.resolve("sales@example.test") == [BOB, ALICE]


def test_database_file_settings(accounts: Accounts) -> None:
    path = accounts.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds password hashes
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (accounts_module.schema_version(),)
    conn = accounts._conn()
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (accounts_module.BUSY_TIMEOUT_MS,)


def test_migration_hook_runs_new_steps_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _db(tmp_path)
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
    current = accounts_module.schema_version()
    runs: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        runs.append(1)
        conn.execute("ALTER TABLE accounts ADD COLUMN note TEXT")

    monkeypatch.setattr(accounts_module, "_MIGRATIONS", [*accounts_module._MIGRATIONS, add_column])
    for _ in range(2):
        with Accounts(path, DOMAINS, hasher=CHEAP) as db:
            assert db.list_users() == [ALICE]
            assert db.verify_password(ALICE, PASSWORD)
    assert runs == [1]
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (current + 1,)
        assert conn.execute("SELECT note FROM accounts").fetchall() == [(None,)]


def test_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _db(tmp_path)
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
    current = accounts_module.schema_version()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE accounts ADD COLUMN note TEXT")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(accounts_module, "_MIGRATIONS", [*accounts_module._MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        Accounts(path, DOMAINS, hasher=CHEAP)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (current,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(accounts)")]
    assert "note" not in columns


def test_version_1_database_gets_quotas(tmp_path: Path) -> None:
    """A database written before quotas (schema 1) opens, keeps its data and
    accounts follow the global quota until one is set."""
    path = _db(tmp_path)
    with raw(path) as conn:
        accounts_module._create_v1(conn)
        conn.execute(
            "INSERT INTO accounts (address, password_hash, created) VALUES (?, ?, 0)",
            (ALICE, CHEAP.hash(PASSWORD)),
        )
        conn.execute("INSERT INTO aliases VALUES ('sales@example.test', ?, 0)", (ALICE,))
        conn.execute("PRAGMA user_version=1")
        conn.commit()
    with Accounts(path, DOMAINS, hasher=CHEAP) as db:
        assert db.list_quotas() == {ALICE: 0}
        assert db.verify_password(ALICE, PASSWORD)
        assert db.resolve("sales@example.test") == [ALICE]
        db.set_quota(ALICE, 4096)
        assert db.get_quota(ALICE) == 4096
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (8,)
    assert accounts_module.schema_version() == 8


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = _db(tmp_path)
    Accounts(path, DOMAINS, hasher=CHEAP).close()
    with raw(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(AccountError, match="schema version 99 is newer"):
        Accounts(path, DOMAINS, hasher=CHEAP)


def test_missing_directory_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(AccountError, match="cannot create"):
        Accounts(tmp_path / "missing" / "accounts.db", DOMAINS, hasher=CHEAP)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(AccountError, match="cannot use"):
        Accounts(junk, DOMAINS, hasher=CHEAP)


def test_threads_share_one_accounts(accounts: Accounts) -> None:
    threads_count, per_thread = 6, 8
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                address = accounts.add_user(f"user{n}-{i}@example.test", f"{PASSWORD} {n}-{i}")
                assert accounts.verify_password(address, f"{PASSWORD} {n}-{i}")
                assert accounts.resolve(address) == [address]
            accounts.add_alias(f"group{n}@example.test", [f"user{n}-0@example.test"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(accounts.list_users()) == threads_count * per_thread
    assert len(accounts.list_aliases()) == threads_count
    # close() from this thread closes the connections the others opened
    accounts.close()
    assert accounts._connections == []
    assert accounts.list_users()[0] == "user0-0@example.test"  # usable again


def test_concurrent_adds_of_one_address_make_one_account(tmp_path: Path) -> None:
    path = _db(tmp_path)
    instances = [Accounts(path, DOMAINS, hasher=CHEAP) for _ in range(2)]
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        db = instances[n % 2]  # two instances, as the CLI and the server would be
        barrier.wait()
        try:
            db.add_user(ALICE, f"{PASSWORD} {n}")
            result = "added"
        except AccountError as exc:
            result = str(exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert outcomes.count("added") == 1
        assert outcomes.count(f"account {ALICE} already exists") == 7
        assert instances[1].list_users() == [ALICE]
    finally:
        for db in instances:
            db.close()


# -- remembered lookups (Accounts._lookup) ---------------------------------------


def test_lookups_follow_writes_by_the_same_object(people: Accounts) -> None:
    dave = "dave@example.test"
    assert people.resolve(dave) is None
    assert people.get_quota(ALICE) == 0
    people.add_user(dave, PASSWORD)
    people.set_quota(ALICE, 5000)
    assert people.resolve(dave) == [dave]
    assert people.get_quota(ALICE) == 5000
    people.add_alias("team@example.test", [ALICE, BOB])
    assert people.resolve("team@example.test") == [ALICE, BOB]
    people.delete_alias("team@example.test")
    people.delete_user(dave)
    assert people.resolve("team@example.test") is None
    assert people.resolve(dave) is None
    with pytest.raises(AccountError):
        people.get_quota(dave)


def test_lookups_follow_commits_of_another_connection(people: Accounts, tmp_path: Path) -> None:
    # Another process (estafeta user ... while the server runs) writes
    # through its own connection: this object's cached answers must go.
    assert people.resolve("team@example.test") is None
    assert people.get_quota(BOB) == 0
    with Accounts(_db(tmp_path), DOMAINS, hasher=CHEAP) as other:
        other.add_alias("team@example.test", [CAROL])
        other.set_quota(BOB, 1234)
    time.sleep(accounts_module.LOOKUP_CHECK + 0.01)  # another process's writes: this late at most
    assert people.resolve("team@example.test") == [CAROL]
    assert people.get_quota(BOB) == 1234


def test_lookups_in_another_thread_see_this_threads_writes(people: Accounts) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(people.get_quota, CAROL).result() == 0
        people.set_quota(CAROL, 99)
        assert pool.submit(people.get_quota, CAROL).result() == 99


def test_remembered_lookups_ask_sqlite_rarely(people: Accounts) -> None:
    statements: list[str] = []
    assert people.resolve(ALICE) == [ALICE]
    people._conn().set_trace_callback(statements.append)
    try:
        for _ in range(200):
            assert people.resolve(ALICE) == [ALICE]
            assert people.get_quota(ALICE) == 0
    finally:
        people._conn().set_trace_callback(None)
    # One quota query, and a data_version check per LOOKUP_CHECK seconds.
    assert len(statements) <= 3, statements
