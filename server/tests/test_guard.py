"""Brute-force protection: LoginGuard with a fake clock, the Authenticator,
the configuration, and a real server on loopback where clients bind to
different 127.0.0.x source addresses to look like different machines."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port
from estafeta import config
from estafeta.auth import Accounts
from estafeta.auth.accounts import looks_like_app_password
from estafeta.auth.guard import (
    ACCOUNT,
    BUSY,
    IP,
    MAX_PAIR_LOCKS,
    PAIR,
    Authenticator,
    ConnectionsPerIP,
    GuardPolicy,
    LoginGuard,
    LoginResult,
    account_key,
    client_key,
)
from estafeta.config import ConfigError

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def guard(clock: Clock, **changes: object) -> LoginGuard:
    policy = GuardPolicy(
        **{  # type: ignore[arg-type]
            "ip_max_failures": 5,
            "account_max_failures": 8,
            "window": 600.0,
            "lockout": 300.0,
            "delay_base": 1.0,
            "max_delay": 8.0,
            **changes,
        }
    )
    return LoginGuard(policy, clock=clock)


# -- LoginGuard ----------------------------------------------------------------


def test_delays_grow_and_stop_at_max_delay() -> None:
    g = guard(Clock(), ip_max_failures=100)
    delays = [g.failure("192.0.2.1", ALICE).delay for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert g.failure("192.0.2.2", ALICE).delay == 1.0  # another client starts at the base


def test_failures_slide_out_of_the_window() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(4):
        g.failure("192.0.2.1", ALICE)
    clock.advance(601)
    assert g.failures("192.0.2.1") == 0
    result = g.failure("192.0.2.1", ALICE)
    assert result.delay == 1.0 and result.lockouts == ()


def test_ip_lockout_expires_and_spares_other_clients() -> None:
    clock = Clock()
    g = guard(clock)
    results = [g.failure("192.0.2.1", f"user{n}@{DOMAIN}") for n in range(5)]
    assert [r.lockouts for r in results[:4]] == [()] * 4
    (lockout,) = results[4].lockouts
    assert (lockout.scope, lockout.client, lockout.until) == (IP, "192.0.2.1", 1300.0)
    # Locked for every account, the right password included.
    decision = g.check("192.0.2.1", ALICE)
    assert not decision.allowed and decision.scope == IP
    # Another address is not affected, not even for the same accounts.
    assert g.check("192.0.2.2", ALICE).allowed
    assert g.check("192.0.2.2", "user4@example.test").allowed
    clock.advance(299)
    assert not g.check("192.0.2.1", ALICE).allowed
    clock.advance(2)
    assert g.check("192.0.2.1", ALICE).allowed
    # After the lockout the client starts again from the base delay.
    assert g.failure("192.0.2.1", ALICE).delay == 1.0


def test_lockout_is_reported_once() -> None:
    g = guard(Clock(), ip_max_failures=2)
    lockouts = [g.failure("192.0.2.1", ALICE).lockouts for _ in range(2)]
    assert len(lockouts[1]) == 1
    # Attempts during the lockout are refused by check(), never recorded:
    assert not g.check("192.0.2.1", ALICE).allowed


def test_account_lockout_spares_a_known_client() -> None:
    clock = Clock()
    g = guard(clock)
    g.success("198.51.100.7", ALICE)  # the owner, at home
    # A distributed guess: eight addresses, one failure each (under ip_max_failures).
    lockouts = [g.failure(f"203.0.113.{n}", ALICE).lockouts for n in range(8)]
    assert all(not found for found in lockouts[:7])
    (lockout,) = lockouts[7]
    assert lockout.scope == ACCOUNT and lockout.account == ALICE
    refused = g.check("203.0.113.99", ALICE)
    assert not refused.allowed and refused.scope == ACCOUNT
    assert not g.check("203.0.113.1", ALICE).allowed
    assert g.check("198.51.100.7", ALICE).allowed  # the owner keeps working
    assert g.check("203.0.113.99", BOB).allowed  # other accounts are not locked
    clock.advance(301)
    assert g.check("203.0.113.99", ALICE).allowed


def test_known_client_expires() -> None:
    clock = Clock()
    g = guard(clock, known_for=3600.0)
    g.success("198.51.100.7", ALICE)
    assert g.known("198.51.100.7", ALICE)
    clock.advance(3601)
    assert not g.known("198.51.100.7", ALICE)


def test_success_forgets_only_that_accounts_failures() -> None:
    g = guard(Clock())
    for account in (ALICE, ALICE, BOB, BOB):
        g.failure("192.0.2.1", account)
    assert g.account_failures(ALICE) == 2
    g.success("192.0.2.1", ALICE)
    # Logging in to your own account does not wipe out guessing at others.
    assert g.failures("192.0.2.1") == 2
    assert g.account_failures(ALICE) == 0
    assert g.account_failures(BOB) == 2


def test_exempt_networks_are_never_locked_but_count_for_the_account() -> None:
    g = guard(
        Clock(),
        exempt=(ipaddress.ip_network("10.0.0.0/8"),),
        ip_max_failures=2,
        account_max_failures=4,
    )
    results = [g.failure("10.1.2.3", ALICE) for _ in range(3)]
    assert [r.delay for r in results] == [1.0, 1.0, 1.0]
    assert all(not r.lockouts for r in results)
    assert g.check("10.1.2.3", BOB).allowed
    assert g.failure("10.1.2.3", ALICE).lockouts[0].scope == ACCOUNT


def test_ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert account_key("Alice@EXAMPLE.test") == ALICE
    g = guard(Clock(), ip_max_failures=2)
    g.failure("2001:db8:1:2::1", ALICE)
    g.failure("2001:db8:1:2::2", ALICE)
    assert not g.check("2001:db8:1:2::3", ALICE).allowed
    assert g.check("2001:db8:1:3::1", ALICE).allowed


def test_memory_is_bounded() -> None:
    g = guard(Clock(), max_entries=100)
    for n in range(10_000):
        ip = str(ipaddress.ip_address("10.0.0.0") + n)
        g.failure(ip, f"user{n}@{DOMAIN}")
        g.success(ip, f"other{n}@{DOMAIN}")
    assert g.tracked <= 300
    assert g.failures("10.0.0.0") == 0  # the oldest were forgotten
    assert g.failures(str(ipaddress.ip_address("10.0.0.0") + 9_999)) == 1


def test_connections_per_ip() -> None:
    limiter = ConnectionsPerIP(2, exempt=(ipaddress.ip_network("127.0.0.0/8"),))
    assert limiter.acquire("192.0.2.1") and limiter.acquire("192.0.2.1")
    assert not limiter.acquire("192.0.2.1")
    assert limiter.acquire("192.0.2.2")
    limiter.release("192.0.2.1")
    assert limiter.acquire("192.0.2.1")
    assert all(limiter.acquire("127.0.0.1") for _ in range(10))
    for _ in range(2):
        limiter.release("192.0.2.1")
    limiter.release("192.0.2.2")
    assert limiter.open == {}


# -- Authenticator ---------------------------------------------------------------


class FakeAccounts:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()

    def authenticate(
        self, address: str, secret: str, protocol: str, *, allow_password: bool = True
    ) -> str | None:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return account_key(address) if allow_password and secret == PASSWORD else None


def authenticator(accounts: FakeAccounts, **changes: object) -> tuple[Authenticator, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return Authenticator(accounts, guard(Clock(), **changes), sleep=sleep), slept


def test_authenticator_locks_out_without_checking_passwords(
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = FakeAccounts()
    auth, slept = authenticator(accounts, ip_max_failures=3)

    async def run() -> None:
        for n in range(10):
            result = await auth.login(ALICE, f"guess {n}", "imap", "192.0.2.1")
            assert result.address is None
            assert result.locked == (n >= 3)
        locked = await auth.login(ALICE, PASSWORD, "pop3", "192.0.2.1")
        assert locked.locked and locked.reason == IP and not locked.ok
        other = await auth.login("Alice@Example.TEST", PASSWORD, "smtp", "192.0.2.2")
        assert other.ok and other.address == ALICE

    with caplog.at_level(logging.INFO, logger="estafeta"):
        asyncio.run(run())
    assert accounts.calls == 4  # three wrong guesses and the good login from elsewhere
    assert slept == [1.0, 2.0, 4.0]
    lockouts = [r for r in caplog.records if r.getMessage() == "auth_lockout"]
    assert len(lockouts) == 1
    fields = lockouts[0].estafeta_fields  # type: ignore[attr-defined]
    assert fields["client"] == "192.0.2.1" and fields["scope"] == "ip"
    assert fields["account"] == ALICE and re.match(r"\d{4}-\d\d-\d\dT", fields["until"])
    assert "guess" not in caplog.text and PASSWORD not in caplog.text


def test_parallel_attempts_from_one_client_cannot_pass_the_limit() -> None:
    accounts = FakeAccounts(delay=0.01)
    auth, _ = authenticator(accounts, ip_max_failures=3, delay_base=0.0, max_delay=0.0)

    async def run() -> list[bool]:
        results = await asyncio.gather(
            *(auth.login(ALICE, f"guess {n}", "imap", "192.0.2.1") for n in range(20))
        )
        return [r.locked for r in results]

    locked = asyncio.run(run())
    assert accounts.calls == 3
    assert locked.count(True) == 17
    assert auth._serial == {}  # nothing left behind


# -- configuration -------------------------------------------------------------

BASE = 'hostname = "mx.example.test"\ndata_dir = "data"\ndomains = ["example.test"]\n'


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "estafeta.toml"
    path.write_text(BASE + text)
    return config.load(path)


def test_config_defaults_and_durations(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert (cfg.auth.ip_max_failures, cfg.auth.account_max_failures) == (10, 50)
    assert (cfg.auth.failure_window, cfg.auth.lockout) == (900.0, 900.0)
    assert (cfg.auth.delay_base, cfg.auth.max_delay, cfg.auth.exempt) == (1.0, 8.0, ())
    assert cfg.limits.max_connections_per_ip == 50
    assert cfg.submission.max_messages_per_hour == 500
    assert cfg.submission.max_recipients_per_message == 100
    cfg = load(
        tmp_path,
        '[auth]\nfailure_window = "1h"\nlockout = "30m"\ndelay_base = 0\nmax_delay = "2s"\n'
        'exempt = ["10.0.0.0/8", "::1", "2001:db8::/32"]\n'
        "[limits]\nmax_connections_per_ip = 5\n"
        "[submission]\nmax_messages_per_hour = 7\nmax_recipients_per_message = 3\n",
    )
    assert (cfg.auth.failure_window, cfg.auth.lockout) == (3600.0, 1800.0)
    assert (cfg.auth.delay_base, cfg.auth.max_delay) == (0.0, 2.0)
    assert [str(n) for n in cfg.auth.exempt] == ["10.0.0.0/8", "::1/128", "2001:db8::/32"]
    assert cfg.limits.max_connections_per_ip == 5
    assert cfg.submission.max_messages_per_hour == 7


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[auth]\nip_max_failures = 0\n", "auth.ip_max_failures", "greater than 0"),
        ('[auth]\naccount_max_failures = "5"\n', "auth.account_max_failures", "an integer"),
        ('[auth]\nfailure_window = "15 min"\n', "auth.failure_window", "duration like"),
        ("[auth]\nlockout = 0\n", "auth.lockout", "greater than 0"),
        ("[auth]\ndelay_base = -1\n", "auth.delay_base", "0 or more"),
        ('[auth]\ndelay_base = "4s"\nmax_delay = "2s"\n', "auth.max_delay", "not be smaller"),
        ('[auth]\nexempt = ["10.0.0.1/8"]\n', "auth.exempt[0]", "not a network"),
        ('[auth]\nexempt = ["::1", "localhost"]\n', "auth.exempt[1]", "not a network"),
        ('[auth]\nexempt = "10.0.0.0/8"\n', "auth.exempt", "must be a list"),
        ("[auth]\nlockuot = 5\n", "auth.lockuot", "unknown key"),
        ("[limits]\nmax_connections_per_ip = 0\n", "limits.max_connections_per_ip", "than 0"),
        (
            "[submission]\nmax_messages_per_hour = 0\n",
            "submission.max_messages_per_hour",
            "greater than 0",
        ),
        (
            "[submission]\nmax_recipients_per_message = 1.5\n",
            "submission.max_recipients_per_message",
            "an integer",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.key == key
    assert message in caught.value.message
    assert str(tmp_path / "estafeta.toml") in str(caught.value)


# -- end to end: a real server, clients on several loopback addresses -------------


class Lines:
    """A line-oriented client socket bound to a given source address."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def imap(self, tag: str, command: str) -> bytes:
        """Send a command, return its tagged reply (untagged lines dropped)."""
        self.send(f"{tag} {command}")
        while True:
            line = self.line()
            if not line or line.startswith(tag.encode() + b" "):
                return line

    def pop(self, command: str) -> bytes:
        self.send(command)
        return self.line()

    def smtp(self, command: str) -> bytes:
        self.send(command)
        while True:
            line = self.line()
            if len(line) < 4 or line[3:4] != b"-":
                return line


def imap_login(inst: Instance, source: str, user: str, password: str) -> bytes:
    client = Lines(inst.imap_port, source)
    try:
        assert client.line().startswith(b"* OK")
        return client.imap("a", f'LOGIN "{user}" "{password}"')
    finally:
        client.close()


def pop_login(inst: Instance, source: str, user: str, password: str) -> bytes:
    client = Lines(inst.pop3_port, source)
    try:
        assert client.line().startswith(b"+OK")
        assert client.pop(f"USER {user}").startswith(b"+OK")
        return client.pop(f"PASS {password}")
    finally:
        client.close()


def smtp_auth(inst: Instance, source: str, user: str, password: str) -> bytes:
    client = Lines(inst.submission_port, source)
    try:
        assert client.line().startswith(b"220")
        assert client.smtp("EHLO client.example").startswith(b"250")
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.smtp(f"AUTH PLAIN {blob}")
    finally:
        client.close()


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        pop3_port=free_port(),
        submission_port=free_port(),
        # Plaintext on loopback keeps a thousand attempts fast; short delays too.
        auth_config="allow_plaintext = true\nip_max_failures = 5\naccount_max_failures = 6\n"
        'lockout = "1h"\ndelay_base = 0.01\nmax_delay = 0.05\n',
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.add_user(BOB)
    inst.start()  # waits for every listener
    yield inst
    if inst.process is not None:
        inst.kill()


def log_events(inst: Instance, event: str) -> list[str]:
    return [line for line in inst.log_text().splitlines() if f" {event} " in line]


def test_a_thousand_wrong_passwords_from_one_address(guarded: Instance) -> None:
    """1,000 wrong passwords from one IP get locked out while a correct
    login from another IP succeeds."""
    replies: list[bytes] = []
    started = time.monotonic()
    while len(replies) < 1000:
        client = Lines(guarded.imap_port, "127.0.0.5")
        assert client.line().startswith(b"* OK")
        # The server hangs up after three failures on one connection.
        for n in range(3):
            if len(replies) == 1000:
                break
            replies.append(client.imap(f"a{n}", f'LOGIN "{ALICE}" "guess {len(replies)}"'))
        client.close()
    elapsed = time.monotonic() - started
    assert all(b"NO [AUTHENTICATIONFAILED]" in r for r in replies[:5]), replies[:6]
    assert all(b"NO [UNAVAILABLE]" in r for r in replies[5:]), set(replies[5:])
    # Only five passwords were checked: the rest were refused without argon2.
    assert len(log_events(guarded, "login_failed")) == 5
    (lockout,) = log_events(guarded, "auth_lockout")
    assert "client=127.0.0.5" in lockout and "scope=ip" in lockout
    assert f"account={ALICE}" in lockout and "until=" in lockout
    assert elapsed < 60  # generous: it takes a few seconds
    # The right password from the locked-out address is refused too...
    assert b"NO [UNAVAILABLE]" in imap_login(guarded, "127.0.0.5", ALICE, PASSWORD)
    # ...while the owner elsewhere logs in, on every protocol.
    assert b"a OK" in imap_login(guarded, "127.0.0.6", ALICE, PASSWORD)
    assert pop_login(guarded, "127.0.0.6", ALICE, PASSWORD).startswith(b"+OK")
    assert smtp_auth(guarded, "127.0.0.6", ALICE, PASSWORD).startswith(b"235")
    assert "guess" not in guarded.log_text() and PASSWORD not in guarded.log_text()


def test_imap_pop3_and_smtp_share_the_counters(guarded: Instance) -> None:
    source = "127.0.0.7"
    client = Lines(guarded.imap_port, source)
    client.line()
    assert b"[AUTHENTICATIONFAILED]" in client.imap("a", f'LOGIN "{ALICE}" "wrong 1"')
    assert b"[AUTHENTICATIONFAILED]" in client.imap("b", f'LOGIN "{BOB}" "wrong 2"')
    client.close()
    assert pop_login(guarded, source, ALICE, "wrong 3").startswith(b"-ERR [AUTH] ")
    assert pop_login(guarded, source, BOB, "wrong 4").startswith(b"-ERR [AUTH] ")
    assert smtp_auth(guarded, source, ALICE, "wrong 5").startswith(b"535 5.7.8")
    # The fifth failure, whatever the protocol, locked the address out.
    locked_pop = pop_login(guarded, source, ALICE, PASSWORD)
    assert locked_pop.startswith(b"-ERR [SYS/TEMP] Too many failed logins")
    assert b"NO [UNAVAILABLE]" in imap_login(guarded, source, BOB, PASSWORD)
    reply = smtp_auth(guarded, source, ALICE, PASSWORD)
    assert reply.startswith(b"454 4.7.0 Too many failed authentications, try later")
    # Nobody else is affected.
    assert pop_login(guarded, "127.0.0.8", ALICE, PASSWORD).startswith(b"+OK")
    assert b"a OK" in imap_login(guarded, "127.0.0.8", BOB, PASSWORD)
    assert smtp_auth(guarded, "127.0.0.8", BOB, PASSWORD).startswith(b"235")
    (lockout,) = log_events(guarded, "auth_lockout")
    assert "scope=ip" in lockout and "protocol=smtp" in lockout


def test_locked_smtp_client_still_gets_cut_off_after_three_attempts(guarded: Instance) -> None:
    source = "127.0.0.9"
    for n in range(5):
        pop_login(guarded, source, ALICE, f"wrong {n}")
    client = Lines(guarded.submission_port, source)
    client.line()
    client.smtp("EHLO client.example")
    blob = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert client.smtp(f"AUTH PLAIN {blob}").startswith(b"454 4.7.0")
    assert client.smtp(f"AUTH PLAIN {blob}").startswith(b"454 4.7.0")
    assert client.smtp(f"AUTH PLAIN {blob}").startswith(b"421 4.7.0")
    assert client.line() == b""  # closed
    client.close()


def test_account_lockout_spares_the_owners_known_address(guarded: Instance) -> None:
    # The owner logs in from home first.
    assert b"a OK" in imap_login(guarded, "127.0.0.10", ALICE, PASSWORD)
    # Guesses from three addresses, two each: under ip_max_failures (5) each,
    # six together: account_max_failures.
    for source in ("127.0.0.11", "127.0.0.12", "127.0.0.13"):
        for n in range(2):
            assert pop_login(guarded, source, ALICE, f"wrong {n}").startswith(b"-ERR [AUTH]")
    # A new address (in another /24 than home) gets nowhere with alice's
    # password...
    assert b"NO [UNAVAILABLE]" in imap_login(guarded, "127.0.1.14", ALICE, PASSWORD)
    assert pop_login(guarded, "127.0.1.14", ALICE, PASSWORD).startswith(b"-ERR [SYS/TEMP]")
    # ...but bob may log in from there, and alice from home or from her
    # home's /24 (a phone roaming within its carrier).
    assert b"a OK" in imap_login(guarded, "127.0.1.14", BOB, PASSWORD)
    assert b"a OK" in imap_login(guarded, "127.0.0.10", ALICE, PASSWORD)
    assert smtp_auth(guarded, "127.0.0.10", ALICE, PASSWORD).startswith(b"235")
    assert b"a OK" in imap_login(guarded, "127.0.0.14", ALICE, PASSWORD)
    (lockout,) = log_events(guarded, "auth_lockout")
    assert "scope=account" in lockout and f"account={ALICE}" in lockout


def test_max_connections_per_ip(tmp_path: Path) -> None:
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        pop3_port=free_port(),
        submission_port=free_port(),
        limits_config="max_connections_per_ip = 3\n",
        auth_config="allow_plaintext = true\n",
    )
    inst.write_config()
    inst.start()  # waits for every listener
    try:
        source = "127.0.0.20"
        # Three connections on three different listeners fill the quota...
        held = [Lines(port, source) for port in (inst.imap_port, inst.pop3_port, inst.port)]
        assert held[0].line().startswith(b"* OK")
        assert held[1].line().startswith(b"+OK")
        assert held[2].line().startswith(b"220")
        # ...so a fourth is refused on each of them, with a reason.
        for port, expected in (
            (inst.imap_port, b"* BYE Too many connections from your address\r\n"),
            (inst.pop3_port, b"-ERR [SYS/TEMP] Too many connections from your address\r\n"),
            (inst.port, b"421 4.7.0 Too many connections from your address\r\n"),
            (inst.submission_port, b"421 4.7.0 Too many connections from your address\r\n"),
        ):
            extra = Lines(port, source)
            assert extra.line() == expected
            assert extra.line() == b""  # and closed
            extra.close()
        # Other addresses are not affected.
        other = Lines(inst.imap_port, "127.0.0.21")
        assert other.line().startswith(b"* OK")
        other.close()
        # A closed connection frees its place.
        held.pop(0).close()
        deadline = time.monotonic() + 10
        while True:
            again = Lines(inst.submission_port, source)
            greeting = again.line()
            again.close()
            if greeting.startswith(b"220") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert greeting.startswith(b"220"), greeting
        for client in held:
            client.close()
    finally:
        inst.kill()


# -- item 12 of #14: pair lockouts, account lockout with an escape ---------------

PAIR_POLICY = {
    "ip_max_failures": 10,
    "account_max_failures": 50,
    "pair_max_failures": 5,
    "window": 900.0,
    "lockout": 900.0,
}


def attempt(g: LoginGuard, ip: str, account: str) -> str:
    """What the Authenticator does with a wrong password: "checked", or the
    lockout scope that refused it without a check."""
    decision = g.check(ip, account)
    if not decision.allowed:
        return decision.scope
    g.failure(ip, account)
    return "checked"


def test_pair_lockout_refuses_only_that_client_for_that_account() -> None:
    clock = Clock()
    g = guard(clock, **PAIR_POLICY)
    results = [g.failure("192.0.2.1", BOB) for _ in range(5)]
    assert [r.lockouts for r in results[:4]] == [()] * 4
    (lockout,) = results[4].lockouts
    assert (lockout.scope, lockout.client, lockout.account) == (PAIR, "192.0.2.1", BOB)
    assert (lockout.until, lockout.failures) == (1900.0, 5)
    refused = g.check("192.0.2.1", BOB)
    assert (refused.allowed, refused.scope, refused.until) == (False, PAIR, 1900.0)
    # The client may still try other accounts, and bob may log in from elsewhere.
    assert g.check("192.0.2.1", ALICE).allowed
    assert g.check("192.0.2.2", BOB).allowed
    # Refused attempts are not counted again (the Authenticator never
    # records them): nothing grows while the pair is locked.
    assert [attempt(g, "192.0.2.1", BOB) for _ in range(20)] == [PAIR] * 20
    assert g.failures("192.0.2.1") == 5 and g.account_failures(BOB) == 5
    clock.advance(900)
    assert g.check("192.0.2.1", BOB).allowed


def test_client_and_pair_lockout_at_once_is_reported_once() -> None:
    g = guard(Clock(), **{**PAIR_POLICY, "ip_max_failures": 5})
    lockouts = [g.failure("192.0.2.1", BOB).lockouts for _ in range(5)]
    assert lockouts[:4] == [()] * 4
    assert [lockout.scope for lockout in lockouts[4]] == [IP]
    assert g.check("192.0.2.1", BOB).scope == IP


def test_fifty_failures_from_five_addresses_do_not_lock_the_account() -> None:
    """Issue 14 item 12: each address stops at its pair lockout, so five
    addresses contribute 25 failures, under account_max_failures."""
    g = guard(Clock(), **PAIR_POLICY)
    outcomes = [attempt(g, f"203.0.113.{n % 5}", BOB) for n in range(50)]
    assert outcomes.count("checked") == 25 and outcomes.count(PAIR) == 25
    assert g.account_failures(BOB) == 25
    assert g.check("198.51.100.9", BOB).allowed  # the owner, roaming


def test_distributed_guessing_locks_the_password_for_unknown_clients_only() -> None:
    clock = Clock()
    g = guard(clock, **PAIR_POLICY)
    g.success("198.51.100.7", BOB)  # home
    g.success("2001:db8:aa:1::5", BOB)  # a phone on IPv6
    outcomes = [attempt(g, f"203.0.113.{n}", BOB) for n in range(10) for _ in range(5)]
    assert outcomes == ["checked"] * 50
    refused = g.check("192.0.2.200", BOB)
    assert (refused.allowed, refused.scope, refused.until) == (False, ACCOUNT, 1900.0)
    # Known: the address itself, its /24, and the /48 of a known IPv6 client.
    assert g.check("198.51.100.7", BOB).allowed
    assert g.check("198.51.100.201", BOB).allowed
    assert g.check("2001:db8:aa:ffff::1", BOB).allowed
    assert not g.check("198.51.101.7", BOB).allowed
    assert not g.check("2001:db8:ab::1", BOB).allowed
    # Other accounts are not concerned; the lockout ends.
    assert g.check("192.0.2.200", ALICE).allowed
    clock.advance(900)
    assert g.check("192.0.2.200", BOB).allowed


def test_account_lockout_needs_several_clients() -> None:
    """With short pair lockouts one client could contribute its share again
    and again within the window: a few clients still cannot lock the account."""
    clock = Clock()
    g = guard(clock, **{**PAIR_POLICY, "lockout": 60.0, "ip_max_failures": 1000})
    assert g.policy.min_clients == 10
    for _ in range(4):  # 5 clients x 5 failures, four times: 100 in the window
        for n in range(5):
            assert [attempt(g, f"203.0.113.{n}", BOB) for _ in range(5)] == ["checked"] * 5
        clock.advance(61)
    assert g.account_failures(BOB) == 50  # at most account_max_failures kept
    assert g.check("192.0.2.200", BOB).allowed
    # Five more clients: now it is distributed.
    for n in range(5, 10):
        for _ in range(5):
            attempt(g, f"203.0.113.{n}", BOB)
    assert g.check("192.0.2.200", BOB).scope == ACCOUNT


def test_exempt_proxy_failures_count_as_many_clients() -> None:
    g = guard(
        Clock(),
        **{**PAIR_POLICY, "account_max_failures": 10},
        exempt=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    # A webmail on 10.0.0.5 relays a distributed guesser: never pair-locked,
    # and each of its failures counts as a client of its own.
    outcomes = [attempt(g, "10.0.0.5", BOB) for _ in range(10)]
    assert outcomes == ["checked"] * 10
    assert g.check("192.0.2.200", BOB).scope == ACCOUNT


def test_pair_lockouts_of_one_client_are_bounded() -> None:
    g = guard(Clock(), **{**PAIR_POLICY, "ip_max_failures": 100_000})
    for n in range(MAX_PAIR_LOCKS + 50):
        for _ in range(5):
            g.failure("192.0.2.1", f"user{n}@{DOMAIN}")
    client = g._clients[client_key("192.0.2.1")]
    assert len(client.pairs) == MAX_PAIR_LOCKS
    assert not g.check("192.0.2.1", f"user{MAX_PAIR_LOCKS + 49}@{DOMAIN}").allowed


def test_memory_stays_bounded_with_pairs_and_networks() -> None:
    g = guard(Clock(), **PAIR_POLICY, max_entries=100)
    for n in range(5_000):
        ip = str(ipaddress.ip_address("10.0.0.0") + 256 * n)  # a new /24 each time
        for _ in range(5):
            g.failure(ip, f"user{n}@{DOMAIN}")
        g.success(ip, f"other{n}@{DOMAIN}")
    assert g.tracked <= 300
    assert sum(len(c.pairs) + len(c.failures) for c in g._clients.values()) <= 100 * 10


class AppAccounts(FakeAccounts):
    """PASSWORD or the app password APP; records how each call was made."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.allowed: list[bool] = []
        self.threads: list[str] = []

    def authenticate(
        self, address: str, secret: str, protocol: str, *, allow_password: bool = True
    ) -> str | None:
        with self.lock:
            self.calls += 1
            self.allowed.append(allow_password)
            self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        if secret == APP or (allow_password and secret == PASSWORD):
            return account_key(address)
        return None


APP = "abcd-efgh-jkmn-pqrs"


def test_authenticator_keeps_app_passwords_working_during_an_account_lockout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts = AppAccounts()
    auth, _ = authenticator(accounts, **{**PAIR_POLICY, "account_max_failures": 10}, delay_base=0.0)

    async def run() -> None:
        assert (await auth.login(BOB, PASSWORD, "imap", "198.51.100.7")).ok  # home
        for n in range(10):
            for _ in range(2):
                assert not (await auth.login(BOB, "guess", "imap", f"203.0.113.{n}")).ok
        calls = accounts.calls
        # An unknown client: the password is refused without a check...
        refused = await auth.login(BOB, PASSWORD, "pop3", "192.0.2.50")
        assert refused.locked and refused.reason == ACCOUNT
        assert accounts.calls == calls
        # ...an app password is checked, app passwords only, and works...
        ok = await auth.login(BOB, APP, "smtp", "192.0.2.51")
        assert ok.ok and accounts.allowed[-1] is False
        # ...a wrong one is an ordinary failure...
        wrong = await auth.login(BOB, "zzzz-zzzz-zzzz-zzzz", "imap", "192.0.2.52")
        assert not wrong.ok and not wrong.locked
        # ...and home keeps its password.
        assert (await auth.login(BOB, PASSWORD, "imap", "198.51.100.7")).ok
        assert (await auth.login(BOB, PASSWORD, "imap", "198.51.100.8")).ok  # same /24
        # The app password made 192.0.2.51 known: its password works now too.
        assert (await auth.login(BOB, PASSWORD, "imap", "192.0.2.51")).ok

    with caplog.at_level(logging.INFO, logger="estafeta"):
        asyncio.run(run())
    lockouts = [r for r in caplog.records if r.getMessage() == "auth_lockout"]
    assert [r.estafeta_fields["scope"] for r in lockouts] == [ACCOUNT]  # type: ignore[attr-defined]


def test_password_checks_run_on_their_own_executor() -> None:
    """Item 7 of #14: a busy default executor must not delay a login."""
    accounts = AppAccounts()
    auth, _ = authenticator(accounts, delay_base=0.0)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        gate = threading.Event()
        # Fill asyncio's default pool with work that waits for the gate.
        blockers = [loop.run_in_executor(None, gate.wait, 30) for _ in range(64)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        result = await asyncio.wait_for(auth.login(ALICE, PASSWORD, "imap", "192.0.2.1"), 10)
        waited = time.monotonic() - started
        gate.set()
        await asyncio.gather(*blockers)
        assert result.ok
        await auth.close()
        return waited

    assert asyncio.run(run()) < 5  # generous; with the default pool it waits 30 s
    assert accounts.threads and all(t.startswith("estafeta-auth") for t in accounts.threads)


def test_queued_password_checks_are_bounded() -> None:
    accounts = AppAccounts(delay=0.2)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    auth = Authenticator(
        accounts, guard(Clock(), delay_base=0.0), sleep=sleep, workers=1, max_queued=3
    )

    async def run() -> list[LoginResult]:
        # Ten clients at once: three checks wait or run, the others are refused at once.
        results = await asyncio.gather(
            *(auth.login(ALICE, PASSWORD, "imap", f"192.0.2.{n}") for n in range(10))
        )
        await auth.close()
        return list(results)

    results = asyncio.run(run())
    assert sum(r.ok for r in results) == 3 and accounts.calls == 3
    busy = [r for r in results if not r.ok]
    assert all(r.locked and r.reason == BUSY for r in busy) and len(busy) == 7


def test_accounts_authenticate_without_the_password(tmp_path: Path) -> None:
    cheap = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=cheap) as db:
        db.add_user(BOB, PASSWORD)
        app = db.app_password_create(BOB, "phone")
        assert db.authenticate(BOB, PASSWORD, "imap") == BOB
        assert db.authenticate(BOB, PASSWORD, "imap", allow_password=False) is None
        assert db.authenticate(BOB, app, "imap", allow_password=False) == BOB
        spaced = app.upper().replace("-", " ")  # as a person may type it
        assert db.authenticate(BOB, spaced, "smtp", allow_password=False) == BOB
    assert looks_like_app_password(app) and looks_like_app_password(app.upper())
    assert not looks_like_app_password(PASSWORD)
    assert not looks_like_app_password("abcd-efgh-jkmn-pqr0")  # 0 is not in the alphabet
