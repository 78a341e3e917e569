"""The SMTP error limiter (estafeta.smtp.errors), with a fake clock and sleep."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from estafeta.smtp.errors import MAX_FACTOR, WINDOW, ErrorLimiter, counts_as_error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kwargs: object) -> ErrorLimiter:
    settings: dict[str, object] = {"soft_limit": 3, "hard_limit": 6, "delay": 1.0}
    settings.update(kwargs)
    return ErrorLimiter(clock=clock, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "counts"),
    [
        ("550 5.1.1 No such user here: <x@example.test>", True),
        ("554 5.7.1 Relay access denied: <x@remote.test>", True),
        ("503 5.5.1 Error: need MAIL command", True),
        ("535 5.7.8 Authentication credentials invalid", True),
        ("500 5.5.2 Error: bad syntax", True),
        ("451 4.7.1 Sending limit reached: at most 2 messages per hour", True),
        ("250 2.1.5 Recipient OK", False),
        ("354 End data with <CR><LF>.<CR><LF>", False),
        ("334 ", False),
        # The goodbye of a close is not counted (it is the last word anyway).
        ("421 4.4.2 mx.example.test Error: timeout exceeded", False),
        # Recipients beyond the limit: sent again later (rfc5321:4.5.3.1.10).
        ("452 4.5.3 Too many recipients", False),
        ("451 4.7.1 Too many recipients: at most 3 per message; send the rest separately", False),
        # Our own trouble (rfc3463 X.3.x).
        ("451 4.3.0 Temporary failure storing the message; try again later", False),
        ("452 4.3.1 Insufficient system resources, try again later", False),
    ],
)
def test_counts_as_error(reply: str, counts: bool) -> None:
    assert counts_as_error(reply) is counts


def test_delay_after_the_soft_limit_doubles_up_to_the_cap() -> None:
    clock = Clock()
    errors = limiter(clock)
    delays = [errors.record("192.0.2.1") for _ in range(10)]
    assert delays == [0, 0, 0, 1, 2, 4, 8, 8, 8, 8]
    assert max(delays) == MAX_FACTOR * 1.0
    # Another address is not slowed.
    assert errors.record("192.0.2.2") == 0


def test_the_window_slides() -> None:
    clock = Clock()
    errors = limiter(clock)
    for _ in range(3):
        errors.record("192.0.2.1")
    clock.now += WINDOW / 2
    assert errors.record("192.0.2.1") == 1  # the fourth within the window
    clock.now += WINDOW / 2 + 1
    # The first three are forgotten: one recent error, then one more.
    assert errors.record("192.0.2.1") == 0
    clock.now += WINDOW + 1
    assert [errors.record("192.0.2.1") for _ in range(4)] == [0, 0, 0, 1]


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    clock = Clock()
    errors = limiter(clock)
    for n in range(3):
        errors.record(f"2001:db8:1:2::{n + 1}")
    assert errors.record("2001:db8:1:2:ffff::9") == 1
    assert errors.record("2001:db8:1:3::1") == 0
    for _ in range(3):
        errors.record("198.51.100.7")
    assert errors.record("::ffff:198.51.100.7") == 1


def test_exempt_networks_are_not_counted() -> None:
    clock = Clock()
    errors = limiter(clock, exempt=[ipaddress.ip_network("10.0.0.0/8")])
    assert [errors.record("10.1.2.3") for _ in range(20)] == [0] * 20
    assert len(errors) == 0


def test_zero_delay_never_waits() -> None:
    clock = Clock()
    errors = limiter(clock, delay=0.0)
    assert [errors.record("192.0.2.1") for _ in range(20)] == [0] * 20


def test_the_table_is_bounded() -> None:
    clock = Clock()
    errors = limiter(clock, max_clients=100)
    for n in range(1000):
        errors.record(f"10.{n // 256}.{n % 256}.1")
    assert len(errors) == 100
    # The most recent clients stay; the oldest are forgotten.
    for _ in range(2):
        errors.record("10.3.231.1")  # client 999
    assert errors.record("10.3.231.1") == 1
    assert errors.record("10.0.0.1") == 0


def test_tarpitting_is_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    errors = limiter(clock)
    with caplog.at_level("WARNING", logger="estafeta.smtp"):
        for _ in range(8):
            errors.record("192.0.2.1")
        clock.now += WINDOW + 1
        for _ in range(8):
            errors.record("192.0.2.1")
    tarpits = [r for r in caplog.records if r.getMessage() == "smtp_tarpit"]
    assert len(tarpits) == 2


def test_waits_of_one_client_are_served_one_at_a_time() -> None:
    """Ten connections of one client each wait 1 s: 10 s in all, not 1 s;
    another client's wait runs alongside."""

    async def main() -> tuple[list[tuple[str, float]], int]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        slept: list[tuple[str, float]] = []

        async def sleep(seconds: float) -> None:
            await asyncio.sleep(seconds / 100)  # 1 s of the limiter: 10 ms here
            slept.append(("done", (loop.time() - start) * 100))

        errors = ErrorLimiter(soft_limit=0, hard_limit=20, delay=1.0, sleep=sleep)
        one = [errors.wait("192.0.2.1", 1.0) for _ in range(10)]

        async def other() -> int:
            await errors.wait("192.0.2.99", 1.0)
            return len(slept)  # waits finished by then, its own included

        other_task = asyncio.ensure_future(other())
        await asyncio.gather(*one)
        return slept, await other_task

    slept, finished_with_other = asyncio.run(main())
    assert len(slept) == 11
    # The last of the ten finished after about ten waits in a row.
    assert slept[-1][1] >= 9.5
    # The other client did not queue behind them: it finished alongside the
    # first client's first waits (counted, not timed: a stall delays both).
    assert finished_with_other <= 3
