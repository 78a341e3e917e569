"""The cache of successful logins (estafeta.auth.logincache, issue 17).

A repeat login with the same secret skips argon2; a wrong secret never
does; any change to the credential, made by this process or by another one
(the CLI opens the database with an ``Accounts`` of its own), drops the
entry; the guard's lockouts still apply; the cache holds nothing of the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import argon2
import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port
from estafeta import config
from estafeta.auth import Accounts
from estafeta.auth.guard import IP, PAIR, Authenticator, GuardPolicy, LoginGuard
from estafeta.auth.logincache import APP_PASSWORD, LoginCache
from estafeta.config import ConfigError

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
NEW_PASSWORD = "quiet lantern orbits marmalade 42"
LIFETIME = 300.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingHasher(argon2.PasswordHasher):
    """Cheap argon2 that counts verifications (the work the cache saves)."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


class World:
    """The server's Accounts (with a cache) and a second one, as the CLI uses."""

    def __init__(self, path: Path, lifetime: float = LIFETIME, max_entries: int = 10_000) -> None:
        self.path = path
        self.hasher = CountingHasher()
        self.clock = Clock()  # the cache's (monotonic) clock
        self.unix = Clock(1_800_000_000.0)  # the accounts' Unix clock
        self.cache = LoginCache(lifetime, max_entries, clock=self.clock)
        self.server = Accounts(
            path,
            [DOMAIN],
            hasher=self.hasher,
            password_policy=False,
            clock=self.unix,
            login_cache=self.cache,
        )
        self.cli = Accounts(
            path,
            [DOMAIN],
            hasher=argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
            password_policy=False,
            clock=self.unix,
        )

    def login(self, secret: str, protocol: str = "imap", address: str = ALICE) -> tuple[bool, int]:
        """Did the login succeed, and how many argon2 verifications did it take."""
        before = self.hasher.verifications
        ok = self.server.authenticate(address, secret, protocol) is not None
        return ok, self.hasher.verifications - before

    def close(self) -> None:
        self.server.close()
        self.cli.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "accounts.db")
    w.cli.add_user(ALICE, PASSWORD)
    w.cli.add_user(BOB, PASSWORD)
    yield w
    w.close()


def app_password(world: World, name: str = "phone", protocols: str = "imap,smtp") -> str:
    return world.cli.app_password_create(ALICE, name, protocols)


# -- the saving ----------------------------------------------------------------------


def test_second_login_skips_argon2(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    assert world.login(PASSWORD) == (True, 0)
    assert world.login(PASSWORD) == (True, 0)
    # Another account, or the same one on another protocol: its own entry.
    assert world.login(PASSWORD, address=BOB) == (True, 1)
    assert world.login(PASSWORD, "pop3") == (True, 1)
    assert world.login(PASSWORD, "pop3") == (True, 0)


def test_address_spelling_shares_the_entry(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    assert world.server.authenticate("Alice@Example.TEST", PASSWORD, "imap") == ALICE
    assert world.hasher.verifications == 1


def test_wrong_password_is_never_answered_from_the_cache(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    for wrong in ("", PASSWORD + " ", PASSWORD.upper(), PASSWORD[:-1], "guess"):
        assert world.login(wrong) == (False, 1), wrong
    # Nor the right password of another account.
    world.cli.set_password(BOB, "bob's own password here")
    assert world.login(PASSWORD, address=BOB) == (False, 1)
    assert world.login(PASSWORD) == (True, 0)  # failures dropped nothing
    assert len(world.cache) == 1


def test_failures_are_not_cached(world: World) -> None:
    for _ in range(3):
        assert world.login("wrong password") == (False, 1)
    assert len(world.cache) == 0


def test_disabled_cache(tmp_path: Path) -> None:
    w = World(tmp_path / "accounts.db", lifetime=0)
    try:
        w.cli.add_user(ALICE, PASSWORD)
        assert w.server.login_cache is None
        assert [w.login(PASSWORD) for _ in range(3)] == [(True, 1)] * 3
    finally:
        w.close()


# -- invalidation by another process ------------------------------------------------------


def test_password_change_by_the_cli_invalidates(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    world.cli.set_password(ALICE, NEW_PASSWORD)
    assert world.login(PASSWORD) == (False, 1)
    assert world.login(NEW_PASSWORD) == (True, 1)
    assert world.login(NEW_PASSWORD) == (True, 0)


def test_password_set_to_the_same_value_is_still_a_change(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    world.cli.set_password(ALICE, PASSWORD)  # new salt, new hash
    assert world.login(PASSWORD) == (True, 1)
    assert world.login(PASSWORD) == (True, 0)


def test_deleted_account_is_refused(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    world.cli.delete_user(ALICE)
    assert world.login(PASSWORD) == (False, 1)  # the dummy verification
    world.cli.add_user(ALICE, PASSWORD)  # back, same password: verified afresh
    assert world.login(PASSWORD) == (True, 1)


def test_change_written_straight_to_the_database_invalidates(world: World) -> None:
    """Whatever writes accounts.db (another estafeta version, sqlite3 by hand)."""
    assert world.login(PASSWORD) == (True, 1)
    replacement = world.cli.hasher.hash(NEW_PASSWORD.encode())
    with sqlite3.connect(world.path) as conn:
        conn.execute(
            "UPDATE accounts SET password_hash = ? WHERE address = ?", (replacement, ALICE)
        )
    conn.close()
    assert world.login(PASSWORD) == (False, 1)


def test_totp_enrolment_invalidates_the_password(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    world.cli.totp_enroll(ALICE)
    # With TOTP the password no longer opens the mail protocols: not from the cache either.
    assert world.login(PASSWORD) == (False, 1)  # the dummy verification
    world.cli.totp_disable(ALICE)
    assert world.login(PASSWORD) == (True, 1)
    assert world.login(PASSWORD) == (True, 0)


def test_totp_change_invalidates_app_passwords(world: World) -> None:
    app = app_password(world)
    assert world.login(app) == (True, 1)
    assert world.login(app) == (True, 0)
    world.cli.totp_enroll(ALICE)
    assert world.login(app) == (True, 1)  # still good, but verified again
    assert world.login(app) == (True, 0)
    world.cli.totp_disable(ALICE)
    world.cli.totp_enroll(ALICE)  # another device: another secret
    assert world.login(app) == (True, 1)
    world.cli.totp_disable(ALICE)
    assert world.login(app) == (True, 1)


def test_app_password_revocation_invalidates(world: World) -> None:
    app = app_password(world)
    other = app_password(world, "laptop")
    assert world.login(app) == (True, 1)
    assert world.login(other) == (True, 1)
    world.cli.app_password_revoke(ALICE, "phone")
    assert world.login(app) == (False, 1)
    assert world.login(other) == (True, 0)  # the other one is untouched
    # Revoked and made again under the same name: a new password, the old one stays out.
    again = world.cli.app_password_create(ALICE, "phone", "imap")
    assert world.login(app)[0] is False
    assert world.login(again) == (True, 1)


def test_app_password_keeps_its_protocols_and_expiry(world: World) -> None:
    app = world.cli.app_password_create(ALICE, "tablet", "imap", expires_days=1)
    assert world.login(app) == (True, 1)
    assert world.login(app) == (True, 0)
    assert world.login(app, "smtp")[0] is False
    assert world.login(app, "pop3")[0] is False
    world.unix.now += 86_400  # expired, though the cache entry is young
    assert world.login(app)[0] is False


def test_app_password_last_use_is_still_recorded(world: World) -> None:
    app = app_password(world)
    assert world.login(app) == (True, 1)
    first = world.cli.app_password_list(ALICE)[0]["last_used"]
    world.unix.now += 3600
    assert world.login(app) == (True, 0)
    assert world.cli.app_password_list(ALICE)[0]["last_used"] == first + 3600
    # Recording it does not change the credential: still cached.
    assert world.login(app) == (True, 0)


# -- lifetime and size --------------------------------------------------------------------


def test_entry_expires_after_the_lifetime(world: World) -> None:
    assert world.login(PASSWORD) == (True, 1)
    world.clock.now += LIFETIME - 1
    assert world.login(PASSWORD) == (True, 0)  # use does not extend the lifetime ...
    world.clock.now += 1
    assert world.login(PASSWORD) == (True, 1)  # ... which counts from the verification
    world.clock.now += LIFETIME - 1
    assert world.login(PASSWORD) == (True, 0)


def test_size_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    w = World(tmp_path / "accounts.db", max_entries=3)
    try:
        w.cli.add_user(ALICE, PASSWORD)
        for protocol in ("imap", "pop3", "smtp", "sieve"):
            assert w.login(PASSWORD, protocol) == (True, 1)
        assert len(w.cache) == 3
        assert w.login(PASSWORD, "imap") == (True, 1)  # the oldest went
        assert w.login(PASSWORD, "smtp") == (True, 0)
        assert w.login(PASSWORD, "sieve") == (True, 0)
        assert w.login(PASSWORD, "pop3") == (True, 1)  # least recently used went
        assert len(w.cache) == 3
    finally:
        w.close()


def test_size_bound_with_many_accounts() -> None:
    cache = LoginCache(60, max_entries=100)
    for n in range(1000):
        key = cache.key(f"user{n}@{DOMAIN}", "imap", b"secret")
        cache.put(key, f"user{n}@{DOMAIN}", APP_PASSWORD, "x", cache.fingerprint("state"))
    assert len(cache) == 100
    assert cache.get(cache.key(f"user999@{DOMAIN}", "imap", b"secret")) is not None
    assert cache.get(cache.key(f"user0@{DOMAIN}", "imap", b"secret")) is None


# -- what the cache holds -----------------------------------------------------------------


def test_cache_holds_nothing_of_the_secret(world: World) -> None:
    app = app_password(world)
    totp_secret, _ = world.cli.totp_enroll(BOB)
    bob_app = world.cli.app_password_create(BOB, "phone", "imap")
    assert world.login(PASSWORD) == (True, 1)
    assert world.login(app) == (True, 1)
    assert world.login(bob_app, address=BOB) == (True, 1)
    with sqlite3.connect(world.path) as conn:
        hashes = [row[0] for row in conn.execute("SELECT password_hash FROM accounts")]
        hashes += [row[0] for row in conn.execute("SELECT password_hash FROM app_passwords")]
    conn.close()
    entries = list(world.cache._entries.items())
    assert len(entries) == 3
    dump = repr(entries).encode() + b"".join(k + e.fingerprint for k, e in entries)
    plain = [PASSWORD, app, app.replace("-", ""), bob_app, totp_secret, *hashes]
    for value in plain:
        assert value.encode() not in dump
        for part in (value[: len(value) // 2], value[len(value) // 2 :]):
            assert part.encode() not in dump
    # Nor an unkeyed hash of the secret.
    for value in (PASSWORD, app, app.replace("-", ""), bob_app):
        for algorithm in ("sha256", "sha1", "md5", "sha512"):
            digest = hashlib.new(algorithm, value.encode()).digest()
            assert digest not in dump and digest.hex().encode() not in dump
    # Keys and fingerprints depend on a key of this process: another cache
    # would find nothing (no precomputed table works against it).
    other = LoginCache()
    assert other.key(ALICE, "imap", PASSWORD.encode()) not in world.cache._entries
    assert world.cache._key != other._key and len(world.cache._key) == 32


# -- the guard ------------------------------------------------------------------------


def test_lockouts_apply_on_a_cached_password(world: World) -> None:
    clock = Clock()
    guard = LoginGuard(
        GuardPolicy(ip_max_failures=4, pair_max_failures=2, delay_base=0, max_delay=0),
        clock=clock,
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def run() -> None:
        auth = Authenticator(world.server, guard, sleep=sleep, workers=1)
        try:
            assert (await auth.login(ALICE, PASSWORD, "imap", "192.0.2.1")).ok
            assert world.hasher.verifications == 1
            assert (await auth.login(ALICE, PASSWORD, "imap", "192.0.2.1")).ok
            assert world.hasher.verifications == 1  # from the cache
            # Two wrong passwords: the (client, alice) pair is locked ...
            for n in range(2):
                assert not (await auth.login(ALICE, f"guess {n}", "imap", "192.0.2.1")).ok
            assert world.hasher.verifications == 3  # failures always cost argon2
            result = await auth.login(ALICE, PASSWORD, "imap", "192.0.2.1")
            assert result.locked and result.reason == PAIR and not result.ok
            # ... and two more for bob: the client is locked for everyone.
            for n in range(2):
                assert not (await auth.login(BOB, f"guess {n}", "imap", "192.0.2.1")).ok
            result = await auth.login(ALICE, PASSWORD, "pop3", "192.0.2.1")
            assert result.locked and result.reason == IP
            assert world.hasher.verifications == 5
            # Other clients still get in from the cache.
            assert (await auth.login(ALICE, PASSWORD, "imap", "198.51.100.7")).ok
            assert world.hasher.verifications == 5
            # Once the lockout is over, the cached login works again.
            clock.now += guard.policy.lockout + 1
            world.clock.now += 1
            assert (await auth.login(ALICE, PASSWORD, "imap", "192.0.2.1")).ok
            assert world.hasher.verifications == 5
        finally:
            await auth.close()

    asyncio.run(run())


def test_account_lockout_refuses_a_cached_password(world: World) -> None:
    """While the account's password is locked for a client (allow_password=False)."""
    app_shaped = "abcd-efgh-jkmn-pqrs"  # an account password that looks like an app password
    world.cli.set_password(ALICE, app_shaped)
    assert world.login(app_shaped) == (True, 1)
    before = world.hasher.verifications
    assert world.server.authenticate(ALICE, app_shaped, "imap", allow_password=False) is None
    # The entry stays for the clients the lockout does not concern.
    assert world.login(app_shaped) == (True, 0)
    assert world.hasher.verifications == before + 1  # the dummy verification
    app = app_password(world)
    assert world.login(app) == (True, 1)
    assert world.server.authenticate(ALICE, app, "imap", allow_password=False) == ALICE
    assert world.hasher.verifications == before + 2


# -- re-hash ------------------------------------------------------------------------


def test_rehash_still_happens_on_the_slow_path(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    with Accounts(path, [DOMAIN], hasher=weak, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
        app = db.app_password_create(ALICE, "phone")
    stronger = CountingHasher(time_cost=2)
    cache = LoginCache(LIFETIME, clock=Clock())
    with Accounts(path, [DOMAIN], hasher=stronger, password_policy=False, login_cache=cache) as db:
        for secret in (PASSWORD, app):
            assert db.authenticate(ALICE, secret, "imap") == ALICE
        assert stronger.verifications == 2
        with sqlite3.connect(path) as conn:
            hashes = [r[0] for r in conn.execute("SELECT password_hash FROM accounts")]
            hashes += [r[0] for r in conn.execute("SELECT password_hash FROM app_passwords")]
        conn.close()
        assert all("t=2" in h for h in hashes), hashes
        # Cached with the new hashes: the next logins skip argon2.
        for secret in (PASSWORD, app):
            assert db.authenticate(ALICE, secret, "imap") == ALICE
        assert stronger.verifications == 2


def test_failed_rehash_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "accounts.db"
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    with Accounts(path, [DOMAIN], hasher=weak, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
    stronger = CountingHasher(time_cost=2)
    with Accounts(
        path, [DOMAIN], hasher=stronger, password_policy=False, login_cache=LoginCache()
    ) as db:
        monkeypatch.setattr(db, "_rehash", lambda *args: None)  # database busy, say
        assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE
        assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE
        assert stronger.verifications == 2  # the re-hash is tried again


# -- configuration --------------------------------------------------------------------


def test_config_key(tmp_path: Path) -> None:
    base = f'hostname = "mx.{DOMAIN}"\ndata_dir = "{tmp_path / "data"}"\ndomains = ["{DOMAIN}"]\n'
    path = tmp_path / "estafeta.toml"
    path.write_text(base)
    assert config.load(path).auth.login_cache_lifetime == 300.0
    for text, seconds in (('"10m"', 600.0), ("0", 0.0), ("90", 90.0), ('"1h"', 3600.0)):
        path.write_text(base + f"[auth]\nlogin_cache_lifetime = {text}\n")
        assert config.load(path).auth.login_cache_lifetime == seconds
    for text in ('"2h"', "-1", '"soon"', "true"):
        path.write_text(base + f"[auth]\nlogin_cache_lifetime = {text}\n")
        with pytest.raises(ConfigError) as error:
            config.load(path)
        assert error.value.key == "auth.login_cache_lifetime"
        assert str(error.value).startswith(f"{path}: auth.login_cache_lifetime: ")


# -- end to end -----------------------------------------------------------------------


def imap_login(inst: Instance, secret: str) -> bool:
    return inst.imap_opens(ALICE, secret)


def test_imap_logins_and_a_password_change_by_the_cli(tmp_path: Path) -> None:
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        auth_config="allow_plaintext = true\ndelay_base = 0.01\nmax_delay = 0.02\n"
        'login_cache_lifetime = "5m"\n',
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.start()
    try:
        assert imap_login(inst, PASSWORD)
        assert imap_login(inst, PASSWORD)  # from the cache
        assert not imap_login(inst, "not the password")
        inst.cli("user", "passwd", ALICE, "--password-stdin", stdin=NEW_PASSWORD + "\n")
        assert not imap_login(inst, PASSWORD)
        assert imap_login(inst, NEW_PASSWORD)
        assert imap_login(inst, NEW_PASSWORD)
        created = inst.cli("app-password", "create", ALICE, "--name", "phone")
        app = created.stdout.strip()
        assert imap_login(inst, app)
        assert imap_login(inst, app)
        inst.cli("app-password", "revoke", ALICE, "--name", "phone")
        assert not imap_login(inst, app)
        inst.cli("user", "del", ALICE)
        assert not imap_login(inst, NEW_PASSWORD)
    finally:
        inst.kill()
    assert "Traceback" not in inst.log_text()
