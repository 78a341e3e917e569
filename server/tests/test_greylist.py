"""policy.greylist: greylisting (rfc6647) with an injected clock, SQLite on tmp_path."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.policy import greylist as gl
from estafeta.policy.greylist import Greylist, Settings, client_network, normalize_sender

DAY = 86400.0
T0 = 1_700_000_000.0
IP = "192.0.2.10"
SENDER = "alice@example.org"
RCPT = "bob@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def greylist(tmp_path: Path, clock: Clock) -> Iterator[Greylist]:
    with Greylist(tmp_path / "data" / "greylist.db", clock=clock) as greylist:
        yield greylist


def pass_once(g: Greylist, clock: Clock, ip: str, sender: str, rcpt: str) -> None:
    """First sight, then a retry after the delay: the triplet is passed."""
    assert g.check(ip, sender, rcpt).greylisted
    clock.now += g.settings.delay
    assert g.check(ip, sender, rcpt).reason == gl.RETRIED


# -- the acceptance sequence -----------------------------------------------------


def test_first_early_retry_pass_then_at_once(greylist: Greylist, clock: Clock) -> None:
    first = greylist.check(IP, SENDER, RCPT)
    assert first.greylisted and first.reason == gl.NEW
    assert first.retry_after == 300.0
    assert first.reply == "451 4.7.1 Greylisted, please try again in 300 seconds"
    assert first.network == "192.0.2.0/24"

    clock.now += 299.5
    early = greylist.check(IP, SENDER, RCPT)
    assert early.greylisted and early.reason == gl.EARLY
    assert early.retry_after == pytest.approx(0.5)
    assert early.reply == "451 4.7.1 Greylisted, please try again in 1 second"

    clock.now += 0.5
    retried = greylist.check(IP, SENDER, RCPT)
    assert not retried.greylisted and retried.reason == gl.RETRIED
    assert retried.retry_after == 0 and retried.reply == ""

    # The next message from the same client and sender: accepted at once.
    clock.now += 3 * 3600
    known = greylist.check(IP, SENDER, RCPT)
    assert not known.greylisted and known.reason == gl.KNOWN
    stats = greylist.stats()
    assert (greylist.greylisted, greylist.passed, greylist.auto_allowed) == (2, 2, 0)
    assert stats["pending_entries"] == 0 and stats["passed_entries"] == 1


def test_each_part_of_the_triplet_counts(greylist: Greylist, clock: Clock) -> None:
    pass_once(greylist, clock, IP, SENDER, RCPT)
    assert greylist.check(IP, "carol@example.org", RCPT).reason == gl.NEW
    assert greylist.check(IP, SENDER, "dave@example.test").reason == gl.NEW
    assert greylist.check("198.51.100.10", SENDER, RCPT).reason == gl.NEW
    assert greylist.check(IP, SENDER, RCPT).reason == gl.KNOWN


# -- client networks ---------------------------------------------------------------


def test_ipv4_slash_24_is_one_client(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check("192.0.2.10", SENDER, RCPT).greylisted
    clock.now += 300
    # The retry comes from another machine of the sender's pool.
    assert greylist.check("192.0.2.200", SENDER, RCPT).reason == gl.RETRIED
    assert greylist.check("192.0.2.1", SENDER, RCPT).reason == gl.KNOWN
    assert greylist.check("192.0.3.10", SENDER, RCPT).reason == gl.NEW


def test_ipv6_slash_64_is_one_client(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check("2001:db8:1:2::10", SENDER, RCPT).greylisted
    clock.now += 300
    assert greylist.check("2001:db8:1:2:ffff::77", SENDER, RCPT).reason == gl.RETRIED
    assert greylist.check("2001:db8:1:3::10", SENDER, RCPT).reason == gl.NEW


def test_prefixes_are_settings(tmp_path: Path, clock: Clock) -> None:
    settings = Settings(ipv4_prefix=32, ipv6_prefix=48)
    with Greylist(tmp_path / "g.db", settings, clock) as g:
        assert g.check("192.0.2.10", SENDER, RCPT).network == "192.0.2.10/32"
        clock.now += 300
        assert g.check("192.0.2.11", SENDER, RCPT).reason == gl.NEW
        assert g.check("2001:db8:1:2::1", SENDER, RCPT).network == "2001:db8:1::/48"


def test_client_network_forms() -> None:
    assert client_network("192.0.2.77") == "192.0.2.0/24"
    assert client_network("::ffff:192.0.2.77") == "192.0.2.0/24"  # dual-stack socket
    assert client_network("2001:DB8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("fe80::1%eth0") == "fe80::/64"


@pytest.mark.parametrize(
    "bad",
    ["", "mx.example.org", "192.0.2.300", "192.0.2", "[192.0.2.1]", "192.0.2.1:25",
     " 192.0.2.1", "192.0.2.1/24", "2001:db8::g", "01.2.3.4"],
)  # fmt: skip
def test_invalid_client_addresses_are_refused(greylist: Greylist, bad: str) -> None:
    with pytest.raises(ValueError):
        greylist.check(bad, SENDER, RCPT)
    assert greylist.stats()["pending_entries"] == 0


def test_non_string_address_is_refused() -> None:
    with pytest.raises(ValueError):
        client_network(b"\xc0\x00\x02\x01")  # type: ignore[arg-type]


# -- windows and expiry ---------------------------------------------------------------


def test_a_retry_after_the_window_starts_over(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check(IP, SENDER, RCPT).reason == gl.NEW
    assert greylist.check(IP, "late@example.org", RCPT).reason == gl.NEW
    clock.now = T0 + 2 * DAY - 1  # the last second a retry counts
    assert greylist.check(IP, "late@example.org", RCPT).reason == gl.RETRIED
    clock.now = T0 + 2 * DAY
    restarted = greylist.check(IP, SENDER, RCPT)
    assert restarted.greylisted and restarted.reason == gl.RESTARTED
    assert restarted.retry_after == 300
    clock.now += 299
    assert greylist.check(IP, SENDER, RCPT).reason == gl.EARLY
    clock.now += 1
    assert greylist.check(IP, SENDER, RCPT).reason == gl.RETRIED


def test_a_clock_that_went_back_starts_over(greylist: Greylist, clock: Clock) -> None:
    greylist.check(IP, SENDER, RCPT)
    clock.now -= 3600
    assert greylist.check(IP, SENDER, RCPT).reason == gl.RESTARTED
    clock.now += 300
    assert greylist.check(IP, SENDER, RCPT).reason == gl.RETRIED


def test_passed_triplets_expire_unless_seen(greylist: Greylist, clock: Clock) -> None:
    pass_once(greylist, clock, IP, SENDER, RCPT)
    passed_at = clock.now
    clock.now = passed_at + 30 * DAY
    assert greylist.check(IP, SENDER, RCPT).reason == gl.KNOWN  # refreshed
    clock.now = passed_at + 60 * DAY  # 30 days after it was last seen
    assert greylist.check(IP, SENDER, RCPT).reason == gl.KNOWN
    clock.now += 35 * DAY  # 35 days unseen: forgotten
    assert greylist.check(IP, SENDER, RCPT).reason == gl.NEW


def test_expiry_is_incremental_and_batched(
    greylist: Greylist, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        greylist.check(IP, f"{'abcdefg'[n]}@x.example", RCPT)  # (digits would be one key)
    assert greylist.stats()["pending_entries"] == 7
    clock.now += 2 * DAY + 1  # all seven are past their window
    monkeypatch.setattr(gl, "PRUNE_BATCH", 3)
    assert greylist.prune() == 3
    assert greylist.stats()["pending_entries"] == 4
    # A check runs expiry by itself once PRUNE_INTERVAL has passed.
    clock.now += gl.PRUNE_INTERVAL
    greylist.check(IP, "new@x.example", RCPT)
    assert greylist.stats()["pending_entries"] == 1 + 1  # 3 more gone, the new one added
    # ...and not before it: no scan per message.
    greylist.check(IP, "newer@x.example", RCPT)
    assert greylist.stats()["pending_entries"] == 3


def test_expiry_reads_through_the_time_indexes(greylist: Greylist) -> None:
    greylist.close()
    conn = sqlite3.connect(greylist.path)
    try:
        for table, (key, column) in gl._TABLES.items():
            plan = conn.execute(
                f"EXPLAIN QUERY PLAN SELECT {key} FROM {table} WHERE {column} <= ? "  # noqa: S608
                f"ORDER BY {column} LIMIT 10",
                (T0,),
            ).fetchall()
            assert any("INDEX" in row[-1] for row in plan), (table, plan)
            assert not any(row[-1].startswith("SCAN") for row in plan), (table, plan)
    finally:
        conn.close()


# -- auto-allowing --------------------------------------------------------------------


def test_a_network_is_allowed_after_five_passed_triplets(greylist: Greylist, clock: Clock) -> None:
    for n in range(4):
        pass_once(greylist, clock, f"192.0.2.{n + 1}", SENDER, f"user{n}@example.test")
    # Four are not enough: a new triplet is still greylisted.
    assert greylist.check(IP, SENDER, "user4@example.test").reason == gl.NEW
    clock.now += 300
    assert greylist.check(IP, SENDER, "user4@example.test").reason == gl.RETRIED
    # Five: the whole /24 skips greylisting, whatever the sender and recipient.
    allowed = greylist.check("192.0.2.250", "someone@else.example", "new@example.test")
    assert not allowed.greylisted and allowed.reason == gl.AUTO_ALLOWED
    assert greylist.auto_allowed == 1
    assert greylist.check("192.0.3.1", "someone@else.example", RCPT).reason == gl.NEW
    # Used, it stays allowed; unseen for `expire`, it is forgotten.
    clock.now += 30 * DAY
    assert greylist.check(IP, "x@y.example", RCPT).reason == gl.AUTO_ALLOWED
    clock.now += 35 * DAY
    assert greylist.check(IP, "x@y.example", RCPT).reason == gl.NEW


def test_the_same_triplet_passing_again_does_not_count_twice(tmp_path: Path, clock: Clock) -> None:
    with Greylist(tmp_path / "g.db", Settings(auto_allow=2), clock) as g:
        pass_once(g, clock, IP, SENDER, RCPT)
        for _ in range(5):
            assert g.check(IP, SENDER, RCPT).reason == gl.KNOWN
        assert g.check(IP, SENDER, "other@example.test").reason == gl.NEW
        clock.now += 300
        assert g.check(IP, SENDER, "other@example.test").reason == gl.RETRIED
        assert g.check(IP, SENDER, "third@example.test").reason == gl.AUTO_ALLOWED


def test_auto_allow_zero_turns_it_off(tmp_path: Path, clock: Clock) -> None:
    with Greylist(tmp_path / "g.db", Settings(auto_allow=0), clock) as g:
        for n in range(8):
            pass_once(g, clock, IP, SENDER, f"user{n}@example.test")
        assert g.check(IP, SENDER, "user99@example.test").reason == gl.NEW


# -- senders --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "key"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ("<alice@example.org.>", "alice@example.org"),
        # BATV: the tag goes, wherever the signer put it.
        ("prvs=4071e1f5c7=alice@example.org", "alice@example.org"),
        ("PRVS=1123abcdef=Alice@example.org", "alice@example.org"),
        ("prvs=alice=4071e1f5c7@example.org", "alice@example.org"),
        ("btv1==0c8a0c5a3a0==alice@example.org", "alice@example.org"),
        ("msprvs1=19751sMcdpZg2=bounces@example.org", "bounces@example.org"),
        # SRS: the original sender inside, without hash and day stamp.
        ("SRS0=HhHh=T2=example.org=alice@forwarder.example", "alice@example.org"),
        ("SRS0+HhHh=T2=example.org=alice@forwarder.example", "alice@example.org"),
        (
            "SRS1=XxXx=first.example==HhHh=T2=example.org=alice@second.example",
            "alice@example.org",
        ),
        ("SRS0=HhHh=T2=example.org=prvs=4071e1f5c7=alice@fwd.example", "alice@example.org"),
        # VERP and per-message numbers.
        ("bounces+12345-bob=example.test@lists.example.org", "bounces@lists.example.org"),
        ("list-bounces-123-456@lists.example.org", "list-bounces-#-#@lists.example.org"),
        ("0100018bf2a4c3d1-5e6f7a8b-000000@amazonses.com", "#-#-#@amazonses.com"),
        ("owner-news@example.org", "owner-news@example.org"),
        # The null sender.
        ("", ""),
        ("<>", ""),
    ],
)
def test_normalize_sender(sender: str, key: str) -> None:
    assert normalize_sender(sender) == key


def test_huge_addresses_are_cut() -> None:
    assert len(normalize_sender("a" * 1_000_000 + "@example.org")) <= gl.MAX_INPUT
    assert normalize_sender("SRS0=" + "x" * 1_000_000) == "#=" + "x" * (gl.MAX_INPUT - 5)


def test_per_message_sender_parts_do_not_make_a_stranger(greylist: Greylist, clock: Clock) -> None:
    pass_once(greylist, clock, IP, "prvs=4071e1f5c7=alice@example.org", RCPT)
    assert greylist.check(IP, "prvs=4072a0b1c2=alice@example.org", RCPT).reason == gl.KNOWN
    assert greylist.check(IP, "alice@example.org", RCPT).reason == gl.KNOWN
    pass_once(greylist, clock, IP, "bounces-1001@lists.example.org", RCPT)
    assert greylist.check(IP, "bounces-1002@lists.example.org", RCPT).reason == gl.KNOWN
    assert greylist.check(IP, "other-1002@lists.example.org", RCPT).reason == gl.NEW


def test_the_null_sender_is_a_sender(greylist: Greylist, clock: Clock) -> None:
    assert greylist.check(IP, "", RCPT).reason == gl.NEW
    clock.now += 300
    assert greylist.check(IP, "<>", RCPT).reason == gl.RETRIED
    assert greylist.check(IP, "", RCPT).reason == gl.KNOWN
    # Bounces and the postmaster are not one sender.
    assert greylist.check(IP, "postmaster@example.org", RCPT).reason == gl.NEW


def test_recipient_case_is_folded(greylist: Greylist, clock: Clock) -> None:
    pass_once(greylist, clock, IP, SENDER, "Bob@Example.TEST")
    assert greylist.check(IP, SENDER, "<bob@example.test>").reason == gl.KNOWN


# -- known senders --------------------------------------------------------------------


def test_known_sender_after_min_age_until_expiry(greylist: Greylist, clock: Clock) -> None:
    assert not greylist.known_sender("example.org")
    greylist.remember_sender("Example.ORG.")
    # One burst does not make a domain known: it must have been seen a day before.
    assert not greylist.known_sender("example.org")
    clock.now += DAY - 1
    assert not greylist.known_sender("example.org")
    clock.now += 1
    assert greylist.known_sender("EXAMPLE.org")
    assert not greylist.known_sender("other.example.org")  # the exact domain only
    # Remembered again, it lives on; unseen for `expire`, it is forgotten.
    clock.now += 30 * DAY
    greylist.remember_sender("example.org")
    clock.now += 30 * DAY
    assert greylist.known_sender("example.org")
    clock.now += 5 * DAY
    assert not greylist.known_sender("example.org")
    # Remembered after expiry, the minimum age counts from the start again.
    greylist.remember_sender("example.org")
    assert not greylist.known_sender("example.org")
    assert greylist.known == 2


def test_known_sender_min_age_is_a_setting(tmp_path: Path, clock: Clock) -> None:
    with Greylist(tmp_path / "g.db", Settings(sender_min_age=0), clock) as g:
        g.remember_sender("example.org")
        assert g.known_sender("example.org")


def test_known_sender_refuses_bad_domains(greylist: Greylist) -> None:
    for bad in ("", "exa mple.org", "[192.0.2.1]", "a@b.example", "x" * 300):
        with pytest.raises(ValueError):
            greylist.remember_sender(bad)
        assert greylist.known_sender(bad) is False
    assert greylist.stats()["senders_entries"] == 0


def test_known_senders_are_capped(tmp_path: Path, clock: Clock) -> None:
    with Greylist(tmp_path / "g.db", Settings(max_passed=3, sender_min_age=0), clock) as g:
        for n in range(6):
            clock.now += 1
            g.remember_sender(f"d{n}.example")
        assert g.stats()["senders_entries"] == 3
        assert g.evicted_passed == 3
        assert not g.known_sender("d0.example")
        assert g.known_sender("d5.example")


# -- storage -------------------------------------------------------------------------


def test_state_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "greylist.db"
    with Greylist(path, clock=clock) as g:
        pass_once(g, clock, IP, SENDER, RCPT)
        g.check(IP, SENDER, "pending@example.test")
        g.remember_sender("example.org")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    clock.now += DAY
    with Greylist(path, clock=clock) as g:
        assert g.stats()["passed_entries"] == 1 and g.stats()["pending_entries"] == 1
        assert g.check(IP, SENDER, RCPT).reason == gl.KNOWN
        assert g.check(IP, SENDER, "pending@example.test").reason == gl.RETRIED
        assert g.known_sender("example.org")


def test_a_broken_file_is_moved_aside(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "greylist.db"
    path.write_bytes(b"this is not a database, it is a text file" * 100)
    with Greylist(path, clock=clock) as g:
        pass_once(g, clock, IP, SENDER, RCPT)
        assert g.check(IP, SENDER, RCPT).reason == gl.KNOWN
    aside = list(tmp_path.glob("greylist.db.broken-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert "greylist_reset" in caplog.text
    assert any(r.levelname == "ERROR" for r in caplog.records)


def test_another_schema_version_is_moved_aside(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "greylist.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pending (something TEXT)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with Greylist(path, clock=clock) as g:
        assert g.check(IP, SENDER, RCPT).reason == gl.NEW
    assert len(list(tmp_path.glob("greylist.db.broken-*"))) == 1


def test_a_locked_database_is_not_moved_aside(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "greylist.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("CREATE TABLE t (x)")
        other.execute("BEGIN EXCLUSIVE")  # another process holds the file
        monkeypatch.setattr(gl, "BUSY_TIMEOUT_MS", 50)
        with pytest.raises(sqlite3.OperationalError):
            Greylist(path, clock=clock)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert list(tmp_path.glob("*.broken-*")) == []


def test_the_pending_cap_evicts_the_oldest(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "greylist.db"
    settings = Settings(max_pending=50)
    with Greylist(path, settings, clock) as g:
        for n in range(500):
            clock.now += 0.01
            assert g.check(IP, f"random{n}x@spam{n}.example", RCPT).greylisted
        assert g.stats()["pending_entries"] == 50
        assert g.evicted == 450
        clock.now += 300
        # The oldest went first: the first stranger is a stranger again...
        assert g.check(IP, "random0x@spam0.example", RCPT).reason == gl.NEW
        # ...while the newest can still pass.
        assert g.check(IP, "random499x@spam499.example", RCPT).reason == gl.RETRIED
        g.prune()
    assert caplog.text.count("greylist_full") == 1  # once per expiry run, not per row
    size = path.stat().st_size
    with Greylist(path, settings, clock) as g:
        before = g.stats()["pending_entries"]
        for n in range(5000):
            clock.now += 0.01
            g.check(f"198.51.{n % 256}.1", f"flood{n}@x{n}.example", f"u{n}@example.test")
        assert g.stats()["pending_entries"] == 50
        assert g.evicted == before + 5000 - 50
    # Ten times the flood, the same file: freed pages are reused.
    assert path.stat().st_size <= size + 4 * 4096
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_passed_triplets_are_capped(tmp_path: Path, clock: Clock) -> None:
    with Greylist(tmp_path / "g.db", Settings(max_passed=3, auto_allow=0), clock) as g:
        for n in range(5):
            pass_once(g, clock, IP, SENDER, f"user{n}@example.test")
        assert g.stats()["passed_entries"] == 3 and g.evicted_passed == 2
        assert g.check(IP, SENDER, "user0@example.test").reason == gl.NEW
        assert g.check(IP, SENDER, "user4@example.test").reason == gl.KNOWN


def test_database_errors_let_mail_through(
    greylist: Greylist, caplog: pytest.LogCaptureFixture
) -> None:
    greylist.close()
    decision = greylist.check(IP, SENDER, RCPT)
    assert not decision.greylisted and decision.reason == gl.ERROR
    greylist.remember_sender("example.org")
    assert greylist.known_sender("example.org") is False
    assert greylist.errors == 3
    assert caplog.text.count("greylist_error") == 3


def test_a_failed_expiry_run_does_not_change_the_decision(
    greylist: Greylist, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(now: float) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(greylist, "_prune", broken)
    clock.now += gl.PRUNE_INTERVAL
    assert greylist.check(IP, SENDER, RCPT).reason == gl.NEW
    assert greylist.errors == 1
    assert greylist.check(IP, SENDER, RCPT).reason == gl.EARLY  # not retried at once
    assert greylist.errors == 1


def test_threads(greylist: Greylist) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                assert greylist.check(f"192.0.{n}.1", SENDER, f"u{i}@example.test").greylisted
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert greylist.greylisted == 400 and greylist.stats()["pending_entries"] == 400


# -- settings and replies ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay": -1},
        {"delay": 10, "retry_window": 5},
        {"expire": 0},
        {"ipv4_prefix": 33},
        {"ipv6_prefix": -1},
        {"max_pending": 0},
        {"max_passed": 0},
        {"auto_allow": -1},
        {"sender_min_age": float("nan")},
    ],
)
def test_settings_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_reply_rounds_up() -> None:
    assert gl.greylist_reply(299.01) == "451 4.7.1 Greylisted, please try again in 300 seconds"
    assert gl.greylist_reply(0) == "451 4.7.1 Greylisted, please try again in 1 second"
