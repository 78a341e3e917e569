"""TOTP and app passwords: Accounts.authenticate as the mail sessions use it, and the CLI."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import argon2
import pyotp
import pytest

from conftest import DOMAIN, PASSWORD, Instance, estafeta
from estafeta.auth import AccountError, Accounts
from estafeta.auth import accounts as accounts_module
from estafeta.auth import totp as totp_module

CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = "alice@example.test"
BOB = "bob@example.test"
PROTOCOLS = ("imap", "pop3", "smtp")
T0 = 1_700_000_000.0  # a fixed "now"
DAY = 86_400


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingHasher(argon2.PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path, clock: Clock) -> Iterator[Accounts]:
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=CHEAP, clock=clock) as accounts:
        accounts.add_user(ALICE, PASSWORD)
        accounts.add_user(BOB, PASSWORD)
        yield accounts


def raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(path))


def code(secret: str, now: float, offset: int = 0) -> str:
    """What an authenticator app shows at ``now`` (pyotp, independently of estafeta)."""
    return pyotp.TOTP(secret).at(now, counter_offset=offset)


def logins(db: Accounts, address: str, secret: str) -> dict[str, str | None]:
    return {p: db.authenticate(address, secret, p) for p in PROTOCOLS}


ALL_OK = dict.fromkeys(PROTOCOLS, ALICE)
ALL_REFUSED: dict[str, str | None] = dict.fromkeys(PROTOCOLS, None)


# -- TOTP ------------------------------------------------------------------------


def test_enrolling_a_secret_the_user_confirmed_already(db: Accounts, clock: Clock) -> None:
    # The account page shows a secret, checks a code, then enrols that secret.
    secret = pyotp.random_base32(32)
    assert db.totp_enroll(ALICE, secret=secret)[0] == secret
    assert db.totp_verify(ALICE, code(secret, clock.now))
    for bad in ("A" * 31, "a" * 32, "1" * 32, secret + "A"):
        with pytest.raises(AccountError, match="32 base32"):
            db.totp_enroll(BOB, secret=bad)
    assert not db.totp_enrolled(BOB)


def test_enrol_refuses_the_account_password_everywhere(db: Accounts) -> None:
    assert logins(db, ALICE, PASSWORD) == ALL_OK
    assert not db.totp_enrolled(ALICE)
    secret, uri = db.totp_enroll("Alice@Example.TEST")
    assert db.totp_enrolled(ALICE)
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == f"/{DOMAIN}:{ALICE}"
    query = parse_qs(parts.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == [DOMAIN]
    assert len(secret) == 32 and set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    # Mail clients cannot send a one-time code: the password alone opens nothing now.
    assert logins(db, ALICE, PASSWORD) == ALL_REFUSED
    assert db.verify_password(ALICE, PASSWORD)  # the password itself is unchanged
    # Other accounts are not affected.
    assert db.authenticate(BOB, PASSWORD, "imap") == BOB
    with pytest.raises(AccountError, match="has TOTP already; disable it first"):
        db.totp_enroll(ALICE)
    with pytest.raises(AccountError, match=r"^no account carol@example\.test$"):
        db.totp_enroll("carol@example.test")
    with pytest.raises(AccountError, match="not one of the configured domains"):
        db.totp_enroll("alice@elsewhere.test")


def test_totp_verify_window_and_replay(db: Accounts, clock: Clock) -> None:
    secret, _ = db.totp_enroll(ALICE)
    assert db.totp_verify(ALICE, code(secret, T0))
    assert not db.totp_verify(ALICE, code(secret, T0))  # the same code twice: refused
    assert not db.totp_verify(ALICE, code(secret, T0, -1))  # an older step: refused too
    # A step later, the step before (clock drift) is too old now it was passed.
    clock.now = T0 + 30
    assert db.totp_verify(ALICE, code(secret, T0 + 30))
    # One step either side of the server's clock is accepted, two are not.
    clock.now = T0 + 300
    assert not db.totp_verify(ALICE, code(secret, T0 + 300, -2))
    assert not db.totp_verify(ALICE, code(secret, T0 + 300, 2))
    assert db.totp_verify(ALICE, code(secret, T0 + 300, -1))
    assert db.totp_verify(ALICE, code(secret, T0 + 300, 1))
    assert not db.totp_verify(ALICE, code(secret, T0 + 300))  # before the accepted +1 step
    clock.now = T0 + 400
    current = code(secret, T0 + 400)
    for malformed in ("", "12345", "1234567", "abcdef", "12 34 5", "١٢٣٤٥٦"):
        assert not db.totp_verify(ALICE, malformed)
    assert db.totp_verify(ALICE, f" {current[:3]} {current[3:]} ")  # as apps show it
    # Without TOTP, or without an account, nothing verifies.
    assert not db.totp_verify(BOB, code(secret, T0 + 400))
    assert not db.totp_verify("nobody@example.test", current)
    assert not db.totp_verify("not an address", current)


def test_totp_codes_are_rfc6238(clock: Clock) -> None:
    # RFC 6238 appendix B, SHA-1, truncated to 6 digits.
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of "12345678901234567890"
    for now, expected in [(59, "287082"), (1111111109, "081804"), (2000000000, "279037")]:
        assert totp_module.code_at(secret, totp_module.time_step(now)) == expected
        assert totp_module.matching_step(secret, expected, now) == totp_module.time_step(now)
    assert totp_module.matching_step(secret, "287082", 59, after=1) is None


def test_disable_gives_the_password_back(db: Accounts) -> None:
    db.totp_enroll(ALICE)
    app = db.app_password_create(ALICE, "phone")
    assert logins(db, ALICE, PASSWORD) == ALL_REFUSED
    db.totp_disable(ALICE)
    assert not db.totp_enrolled(ALICE)
    assert logins(db, ALICE, PASSWORD) == ALL_OK
    assert logins(db, ALICE, app) == ALL_OK  # app passwords stay
    with pytest.raises(AccountError, match="has no TOTP to disable"):
        db.totp_disable(ALICE)
    with pytest.raises(AccountError, match=r"^no account"):
        db.totp_disable("nobody@example.test")
    with pytest.raises(AccountError, match=r"^no account"):
        db.totp_enrolled("nobody@example.test")
    # Enrolling again makes a new secret.
    first, _ = db.totp_enroll(ALICE)
    db.totp_disable(ALICE)
    assert db.totp_enroll(ALICE)[0] != first


# -- app passwords -----------------------------------------------------------------


def test_app_password_opens_the_mail_protocols_with_totp(db: Accounts) -> None:
    db.totp_enroll(ALICE)
    app = db.app_password_create(ALICE, "phone")
    groups = app.split("-")
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    assert set(app.replace("-", "")) <= set(accounts_module.APP_PASSWORD_ALPHABET)
    assert logins(db, ALICE, app) == ALL_OK
    assert db.authenticate("ALICE@example.test", app, "imap") == ALICE
    # Typed by hand: capitals, spaces instead of dashes, or none at all.
    for typed in (app.upper(), app.replace("-", " "), app.replace("-", "")):
        assert db.authenticate(ALICE, typed, "smtp") == ALICE
    # Not for another account, and not as the account password.
    assert db.authenticate(BOB, app, "imap") is None
    assert not db.verify_password(ALICE, app)
    wrong = ("a" if app[0] != "a" else "b") + app[1:]
    assert db.authenticate(ALICE, wrong, "imap") is None


def test_app_password_without_totp(db: Accounts) -> None:
    app = db.app_password_create(ALICE, "laptop")
    assert logins(db, ALICE, PASSWORD) == ALL_OK
    assert logins(db, ALICE, app) == ALL_OK


def test_app_password_protocol_scoping(db: Accounts) -> None:
    db.totp_enroll(ALICE)
    imap_only = db.app_password_create(ALICE, "reader", protocols=["IMAP"])
    sender = db.app_password_create(ALICE, "sender", protocols="smtp, pop3")
    assert logins(db, ALICE, imap_only) == {"imap": ALICE, "pop3": None, "smtp": None}
    assert logins(db, ALICE, sender) == {"imap": None, "pop3": ALICE, "smtp": ALICE}
    listed = {e["name"]: e["protocols"] for e in db.app_password_list(ALICE)}
    assert listed == {"reader": ["imap"], "sender": ["pop3", "smtp"]}
    for bad, message in [
        (["imap", "jmap"], "protocol 'jmap': use imap, pop3, smtp"),
        ([], "no protocol given"),
        ("", "protocol '': use"),
    ]:
        with pytest.raises(AccountError, match=message):
            db.app_password_create(ALICE, "other", protocols=bad)
    with pytest.raises(ValueError, match="unknown protocol"):
        db.authenticate(ALICE, imap_only, "ftp")


def test_app_password_expiry(db: Accounts, clock: Clock) -> None:
    app = db.app_password_create(ALICE, "trip", expires_days=2)
    (entry,) = db.app_password_list(ALICE)
    assert (entry["created"], entry["expires"]) == (int(T0), int(T0) + 2 * DAY)
    clock.now = T0 + 2 * DAY - 1
    assert db.authenticate(ALICE, app, "imap") == ALICE
    clock.now = T0 + 2 * DAY
    assert logins(db, ALICE, app) == ALL_REFUSED
    assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE  # the account is fine
    for bad in (0, -1, 36_501, True):
        with pytest.raises(AccountError, match="use a number of days from 1 to 36500"):
            db.app_password_create(ALICE, "bad", expires_days=bad)
    assert [e["name"] for e in db.app_password_list(ALICE)] == ["trip"]


def test_app_password_revoke(db: Accounts) -> None:
    db.totp_enroll(ALICE)
    phone = db.app_password_create(ALICE, "phone")
    laptop = db.app_password_create(ALICE, "laptop")
    db.app_password_revoke("Alice@example.test", "phone")
    assert logins(db, ALICE, phone) == ALL_REFUSED
    assert logins(db, ALICE, laptop) == ALL_OK
    with pytest.raises(AccountError, match=r"^alice@example\.test has no app password named"):
        db.app_password_revoke(ALICE, "phone")
    with pytest.raises(AccountError, match=r"^no account"):
        db.app_password_revoke("nobody@example.test", "phone")
    assert [e["name"] for e in db.app_password_list(ALICE)] == ["laptop"]


def test_app_password_names_and_limit(db: Accounts) -> None:
    db.app_password_create(ALICE, "  phone ")
    with pytest.raises(AccountError, match="has an app password named 'phone' already"):
        db.app_password_create(ALICE, "phone")
    db.app_password_create(BOB, "phone")  # names are per account
    for bad in ("", "   ", "x" * 65, "tab\there", "new\nline"):
        with pytest.raises(AccountError, match="name"):
            db.app_password_create(ALICE, bad)
    with pytest.raises(AccountError, match=r"^no account"):
        db.app_password_create("nobody@example.test", "phone")
    for n in range(1, accounts_module.MAX_APP_PASSWORDS):
        db.app_password_create(ALICE, f"device {n}")
    with pytest.raises(AccountError, match="has 20 app passwords, the most allowed"):
        db.app_password_create(ALICE, "one too many")
    assert len(db.app_password_list(ALICE)) == 20
    db.app_password_revoke(ALICE, "device 3")
    db.app_password_create(ALICE, "one too many")


def test_app_password_list_and_last_used(db: Accounts, clock: Clock) -> None:
    app = db.app_password_create(ALICE, "phone", protocols=["imap", "smtp"])
    assert db.app_password_list(ALICE) == [
        {
            "name": "phone",
            "protocols": ["imap", "smtp"],
            "created": int(T0),
            "expires": None,
            "last_used": None,
        }
    ]
    assert db.app_password_list(BOB) == []
    with pytest.raises(AccountError, match=r"^no account"):
        db.app_password_list("nobody@example.test")
    clock.now = T0 + 100
    assert db.authenticate(ALICE, app, "imap") == ALICE
    assert db.app_password_list(ALICE)[0]["last_used"] == int(T0 + 100)
    clock.now = T0 + 130  # within a minute: not written again
    assert db.authenticate(ALICE, app, "smtp") == ALICE
    assert db.app_password_list(ALICE)[0]["last_used"] == int(T0 + 100)
    clock.now = T0 + 200
    assert db.authenticate(ALICE, app, "smtp") == ALICE
    assert db.app_password_list(ALICE)[0]["last_used"] == int(T0 + 200)
    # Failed logins change nothing.
    clock.now = T0 + 900
    assert db.authenticate(ALICE, app, "pop3") is None
    assert db.app_password_list(ALICE)[0]["last_used"] == int(T0 + 200)
    # The password is stored as an argon2id hash only.
    with raw(db.path) as conn:
        ((stored,),) = conn.execute("SELECT password_hash FROM app_passwords").fetchall()
    assert stored.startswith("$argon2id$")
    assert app.encode() not in db.path.read_bytes()
    assert app.replace("-", "").encode() not in db.path.read_bytes()


def test_last_used_write_failure_does_not_fail_the_login(
    db: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = db.app_password_create(ALICE, "phone")

    @contextlib.contextmanager
    def broken_write() -> Iterator[sqlite3.Connection]:
        raise sqlite3.OperationalError("database is locked")
        yield  # pragma: no cover

    monkeypatch.setattr(db, "_write", broken_write)
    assert db.authenticate(ALICE, app, "imap") == ALICE
    monkeypatch.undo()
    assert db.app_password_list(ALICE)[0]["last_used"] is None


def test_app_password_is_rehashed_with_new_parameters(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with Accounts(path, [DOMAIN], hasher=CHEAP) as db:
        db.add_user(ALICE, PASSWORD)
        app = db.app_password_create(ALICE, "phone")
    stronger = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    with Accounts(path, [DOMAIN], hasher=stronger) as db:
        assert db.authenticate(ALICE, app, "imap") == ALICE
    with raw(path) as conn:
        ((stored,),) = conn.execute("SELECT password_hash FROM app_passwords").fetchall()
    assert "m=16,t=2,p=1" in stored
    with Accounts(path, [DOMAIN], hasher=CHEAP) as db:
        assert db.authenticate(ALICE, app, "imap") == ALICE


def test_a_login_costs_one_verification(tmp_path: Path) -> None:
    """Whether the account exists, has TOTP, or many app passwords: about one argon2."""
    hasher = CountingHasher()
    with Accounts(tmp_path / "accounts.db", [DOMAIN], hasher=hasher) as db:
        db.add_user(ALICE, PASSWORD)
        db.add_user(BOB, PASSWORD)
        db.totp_enroll(BOB)
        for n in range(accounts_module.MAX_APP_PASSWORDS):
            db.app_password_create(ALICE, f"device {n}")
            db.app_password_create(BOB, f"device {n}")
        guess = "abcd-efgh-ijkm-npqr"  # shaped like an app password, but not one
        tag = accounts_module._app_password_tag(guess.replace("-", ""))
        with raw(db.path) as conn:
            # Almost always 0: only hashes whose 16-bit tag matches are tried.
            collisions = {
                address: conn.execute(
                    "SELECT COUNT(*) FROM app_passwords WHERE address = ? AND tag = ?",
                    (address, tag),
                ).fetchone()[0]
                for address in (ALICE, BOB)
            }
        cases = [
            (ALICE, "wrong password", 1),
            (ALICE, guess, 1 + collisions[ALICE]),
            (BOB, "wrong password", 1),  # TOTP: the password is not even tried
            (BOB, guess, max(1, collisions[BOB])),
            (BOB, PASSWORD, 1),
            ("nobody@example.test", guess, 1),
            ("not an address", "wrong password", 1),
        ]
        for address, secret, expected in cases:
            hasher.verifications = 0
            assert db.authenticate(address, secret, "imap") is None
            assert hasher.verifications == expected, (address, secret)
        hasher.verifications = 0
        assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE
        assert hasher.verifications == 1


# -- lifecycle and storage ------------------------------------------------------------


def test_deleting_the_account_deletes_its_second_factors(db: Accounts) -> None:
    db.totp_enroll(ALICE)
    app = db.app_password_create(ALICE, "phone")
    db.totp_enroll(BOB)
    db.app_password_create(BOB, "phone")
    db.delete_user(ALICE)
    with raw(db.path) as conn:
        assert conn.execute("SELECT address FROM totp").fetchall() == [(BOB,)]
        assert conn.execute("SELECT address FROM app_passwords").fetchall() == [(BOB,)]
    assert db.authenticate(ALICE, app, "imap") is None
    # A new account of the same name starts with neither.
    db.add_user(ALICE, PASSWORD)
    assert not db.totp_enrolled(ALICE)
    assert db.app_password_list(ALICE) == []
    assert db.authenticate(ALICE, app, "imap") is None
    assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE


def test_changing_the_password_keeps_the_second_factors(db: Accounts) -> None:
    db.totp_enroll(ALICE)
    app = db.app_password_create(ALICE, "phone")
    db.set_password(ALICE, "a completely different passphrase")
    assert db.totp_enrolled(ALICE)
    assert db.authenticate(ALICE, app, "imap") == ALICE
    assert db.authenticate(ALICE, "a completely different passphrase", "imap") is None


def test_secrets_stay_in_a_private_file(db: Accounts) -> None:
    secret, _ = db.totp_enroll(ALICE)
    db.app_password_create(ALICE, "phone")
    for path in (db.path, db.path.with_name(db.path.name + "-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    with raw(db.path) as conn:
        assert conn.execute("SELECT secret FROM totp").fetchall() == [(secret,)]


def test_version_2_database_gets_second_factors(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with raw(path) as conn:
        accounts_module._create_v1(conn)
        accounts_module._add_quota_v2(conn)
        conn.execute(
            "INSERT INTO accounts (address, password_hash, created, quota) VALUES (?, ?, 0, 7)",
            (ALICE, CHEAP.hash(PASSWORD)),
        )
        conn.execute("PRAGMA user_version=2")
        conn.commit()
    with Accounts(path, [DOMAIN], hasher=CHEAP) as db:
        assert db.get_quota(ALICE) == 7
        assert not db.totp_enrolled(ALICE)
        assert db.app_password_list(ALICE) == []
        assert db.authenticate(ALICE, PASSWORD, "pop3") == ALICE
        db.totp_enroll(ALICE)
        assert db.authenticate(ALICE, PASSWORD, "pop3") is None
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (8,)
    assert accounts_module.schema_version() == 8


# -- the estafeta command --------------------------------------------------------------


def run(instance: Instance, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = estafeta(instance.config, *args, stdin=stdin, check=False)
    return result.returncode, result.stdout, result.stderr


def open_accounts(instance: Instance) -> Accounts:
    """The instance's accounts, as its server would see them."""
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return Accounts(instance.data_dir / "accounts.db", [DOMAIN, "other.test"], hasher=hasher)


def enroll(instance: Instance, *extra: str) -> tuple[str, str]:
    code_, out, err = run(instance, "totp", "enroll", ALICE, *extra)
    assert code_ == 0, err
    (uri,) = [line for line in out.splitlines() if line.startswith("otpauth://totp/")]
    return parse_qs(urlsplit(uri).query)["secret"][0], out


def test_cli_totp_enroll_status_disable(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    assert run(instance, "totp", "status", ALICE) == (
        0,
        f"{ALICE}: TOTP not enrolled, 0 app passwords\n",
        "",
    )
    png = tmp_path / "alice-totp.png"
    secret, out = enroll(instance, "--png", str(png))
    assert f"or type the key: {secret}" in out
    assert "█" in out or "▀" in out  # the QR code, drawn with block characters
    assert f"QR code written to {png}" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_IMODE(png.stat().st_mode) == 0o600  # it holds the secret
    code_, out, _ = run(instance, "totp", "status", ALICE, "--json")
    assert (code_, json.loads(out)) == (0, {"address": ALICE, "totp": True, "app_passwords": 0})
    with open_accounts(instance) as db:
        assert db.authenticate(ALICE, PASSWORD, "imap") is None
    code_, _, err = run(instance, "totp", "enroll", ALICE)
    assert code_ == 1 and "has TOTP already" in err and "Traceback" not in err
    assert run(instance, "totp", "disable", "Alice@Example.TEST")[0] == 0
    with open_accounts(instance) as db:
        assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE
    code_, _, err = run(instance, "totp", "disable", ALICE)
    assert (code_, err) == (1, f"estafeta: {ALICE} has no TOTP to disable\n")
    code_, _, err = run(instance, "totp", "status", f"ghost@{DOMAIN}")
    assert (code_, err) == (1, f"estafeta: no account ghost@{DOMAIN}\n")


def test_cli_png_write_failure_is_reported(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    code_, out, err = run(
        instance, "totp", "enroll", ALICE, "--png", str(tmp_path / "missing" / "x.png")
    )
    assert code_ == 1
    assert "otpauth://totp/" in out
    assert "cannot write" in err and "TOTP is enrolled all the same" in err
    assert "Traceback" not in err


def test_cli_app_password_needs_the_totp_code(instance: Instance) -> None:
    instance.add_user(ALICE)
    secret, _ = enroll(instance)
    current = code(secret, time.time())
    wrong = f"{(int(current) + 500_000) % 1_000_000:06d}"
    code_, out, err = run(
        instance, "app-password", "create", ALICE, "--name", "phone", "--code", wrong
    )
    assert (code_, out) == (1, "")
    assert "wrong or already used TOTP code" in err and "no app password was created" in err
    # No terminal and no --code: a usage error, nothing created.
    code_, out, err = run(instance, "app-password", "create", ALICE, "--name", "phone")
    assert (code_, out) == (2, "")
    assert "use --code" in err
    assert run(instance, "app-password", "list", ALICE, "--json")[1].strip() == "[]"

    # Accepted for one step (30 s) either side: plenty for a few commands.
    code_, out, err = run(
        instance, "app-password", "create", ALICE, "--name", "phone", "--code", current
    )
    assert code_ == 0, err
    password = out.strip()
    assert len(out.splitlines()) == 1 and len(password) == 19
    assert "shown only this once" in err and password not in err
    with open_accounts(instance) as db:
        assert logins(db, ALICE, password) == ALL_OK
        assert logins(db, ALICE, PASSWORD) == ALL_REFUSED
    # The same code cannot be used again.
    code_, _, err = run(
        instance, "app-password", "create", ALICE, "--name", "laptop", "--code", current
    )
    assert code_ == 1 and "wrong or already used" in err


def test_cli_app_password_without_totp(instance: Instance) -> None:
    instance.add_user(ALICE)
    code_, out, err = run(
        instance,
        "app-password",
        "create",
        ALICE,
        "--name",
        "reader",
        "--protocols",
        "imap",
        "--expires",
        "30",
    )
    assert code_ == 0, err
    password = out.strip()
    assert "(imap; expires 2" in err
    with open_accounts(instance) as db:
        assert logins(db, ALICE, password) == {"imap": ALICE, "pop3": None, "smtp": None}
    code_, out, _ = run(instance, "app-password", "list", ALICE, "--json")
    (entry,) = json.loads(out)
    assert entry["name"] == "reader" and entry["protocols"] == ["imap"]
    assert entry["expires"] - entry["created"] == 30 * DAY
    assert entry["last_used"] is not None
    assert set(entry) == {"name", "protocols", "created", "expires", "last_used"}
    code_, out, _ = run(instance, "app-password", "list", ALICE)
    assert code_ == 0 and out.startswith("reader  imap  created ")
    code_, _, err = run(instance, "app-password", "create", ALICE, "--name", "reader")
    assert code_ == 1 and "already" in err
    code_, _, err = run(
        instance, "app-password", "create", ALICE, "--name", "x", "--protocols", "imap,ftp"
    )
    assert code_ == 1 and "protocol 'ftp'" in err
    assert run(instance, "app-password", "revoke", ALICE, "--name", "reader") == (
        0,
        f"revoked app password 'reader' of {ALICE}\n",
        "",
    )
    with open_accounts(instance) as db:
        assert db.authenticate(ALICE, password, "imap") is None
    code_, _, err = run(instance, "app-password", "revoke", ALICE, "--name", "reader")
    assert code_ == 1 and "has no app password named 'reader'" in err


def test_cli_user_delete_removes_second_factors(instance: Instance) -> None:
    instance.add_user(ALICE)
    code_, out, _ = run(instance, "app-password", "create", ALICE, "--name", "phone")
    assert code_ == 0
    enroll(instance)
    assert run(instance, "user", "del", ALICE)[0] == 0
    instance.add_user(ALICE)
    assert json.loads(run(instance, "totp", "status", ALICE, "--json")[1])["totp"] is False
    with open_accounts(instance) as db:
        assert db.authenticate(ALICE, out.strip(), "imap") is None
