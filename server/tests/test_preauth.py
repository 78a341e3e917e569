"""PreauthPool (issue 14 item 10): per-address budgets for connections not
logged in yet, eviction of the largest holder's oldest idle connection, with
a fake clock and tickets standing in for connections."""

from __future__ import annotations

import ipaddress

from estafeta.auth.connections import ADDRESS, FULL, PreauthPool, Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(limit: int = 10, per_ip: int = 4, **kwargs: object) -> tuple[PreauthPool, Clock]:
    clock = Clock()
    return PreauthPool(limit, per_ip, clock=clock, **kwargs), clock  # type: ignore[arg-type]


def admit(p: PreauthPool, ip: str, evicted: list[str] | None = None) -> Ticket:
    admission = p.admit(ip)
    assert admission.ticket is not None, (ip, admission)
    ticket = admission.ticket
    if evicted is not None:
        ticket.evict = lambda: evicted.append(f"{ip}@{ticket.since}")
    if admission.victim is not None:
        admission.victim.evict()
    return ticket


def test_per_address_cap() -> None:
    p, _ = pool(per_ip=3)
    tickets = [admit(p, "192.0.2.1") for _ in range(3)]
    refused = p.admit("192.0.2.1")
    assert (refused.ticket, refused.refusal) == (None, ADDRESS)
    # IPv6 counts per /64, like the login guard.
    for n in range(3):
        admit(p, f"2001:db8:1:2::{n + 1}")
    assert p.admit("2001:db8:1:2:ffff::1").refusal == ADDRESS
    assert p.admit("2001:db8:1:3::1").ticket is not None
    # Leaving (logged in, or closed) frees the place; twice is harmless.
    tickets[0].leave()
    tickets[0].leave()
    assert p.holding("192.0.2.1") == 2
    assert p.admit("192.0.2.1").ticket is not None
    assert p.refusals == 2


def test_a_newcomer_evicts_the_oldest_idle_of_the_largest_holder() -> None:
    p, clock = pool(limit=10, per_ip=6)
    evicted: list[str] = []
    for n in range(6):
        clock.now = 1000.0 + n
        admit(p, "203.0.113.1", evicted)  # the flooder: 6
    for n in range(4):
        clock.now = 2000.0 + n
        admit(p, "203.0.113.2", evicted)  # a second one: 4
    assert p.open == 10 and p.crowded
    clock.now = 3000.0
    admission = p.admit("198.51.100.7")  # a legitimate client, holding none
    assert admission.ticket is not None and admission.saturated
    assert admission.victim is not None and admission.victim.key == "203.0.113.1"
    assert admission.victim.since == 1000.0 and not admission.victim.counted
    admission.victim.evict()
    assert evicted == ["203.0.113.1@1000.0"]
    assert p.open == 10 and p.holding("203.0.113.1") == 5 and p.evictions == 1
    # Newcomers keep taking from the largest holder; among equals, the oldest
    # connection goes.
    assert p.admit("198.51.100.8").victim is not None
    assert (p.holding("203.0.113.1"), p.holding("203.0.113.2")) == (4, 4)
    victim = p.admit("198.51.100.8").victim
    assert victim is not None and (victim.key, victim.since) == ("203.0.113.1", 1002.0)
    # A holder of 3 may take from one of 4 (shares even out)...
    victim = p.admit("203.0.113.1").victim
    assert victim is not None and victim.key == "203.0.113.2"
    # ...but an address holding as much as the largest gets nothing: refused.
    assert (p.holding("203.0.113.1"), p.holding("203.0.113.2")) == (4, 3)
    refused = p.admit("203.0.113.1")
    assert (refused.ticket, refused.refusal, refused.saturated) == (None, FULL, False)
    assert p.open == 10 and p.refusals == 1


def test_busy_connections_are_not_evicted() -> None:
    p, _ = pool(limit=4, per_ip=4)
    tickets = [admit(p, "203.0.113.1") for _ in range(3)]
    admit(p, "203.0.113.2")
    tickets[0].busy = lambda: True  # an SMTP session inside a transaction
    admission = p.admit("198.51.100.7")
    assert admission.victim is tickets[1]  # the oldest *idle* one
    assert tickets[0].counted and not tickets[1].counted


def test_when_the_largest_holder_is_all_busy_the_next_one_gives_way() -> None:
    p, _ = pool(limit=3, per_ip=3)
    flood = [admit(p, "203.0.113.1") for _ in range(2)]
    single = admit(p, "203.0.113.2")
    for ticket in flood:
        ticket.busy = lambda: True
    admission = p.admit("198.51.100.7")
    assert admission.victim is single
    assert admission.ticket is not None
    admission.ticket.busy = lambda: True
    # Nobody holding more than the newcomer has an idle connection: refused.
    assert p.admit("198.51.100.8").refusal == FULL
    assert all(ticket.counted for ticket in flood)


def test_crowded_above_half() -> None:
    p, _ = pool(limit=10, per_ip=10)
    tickets = [admit(p, "192.0.2.1") for _ in range(5)]
    assert not p.crowded and not tickets[-1].crowded
    tickets.append(admit(p, "192.0.2.1"))
    assert p.crowded and not tickets[-1].crowded  # admitted at exactly half
    assert admit(p, "192.0.2.1").crowded
    for ticket in tickets:
        ticket.leave()
    assert not p.crowded


def test_saturation_is_announced_once_per_episode() -> None:
    p, _ = pool(limit=4, per_ip=2)
    tickets = [admit(p, f"192.0.2.{n // 2}") for n in range(4)]
    first = p.admit("192.0.2.9")
    second = p.admit("192.0.2.10")
    assert first.saturated and not second.saturated
    assert second.victim is not None
    for ticket in [*tickets, first.ticket, second.ticket]:
        if ticket is not None:
            ticket.leave()
    assert p.open == 0
    tickets = [admit(p, f"192.0.2.{n // 2}") for n in range(4)]
    assert p.admit("192.0.2.11").saturated


def test_exempt_networks_are_not_counted() -> None:
    p, _ = pool(limit=2, per_ip=1, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    tickets = [p.admit("10.1.2.3").ticket for _ in range(10)]
    assert all(t is not None and not t.counted for t in tickets)
    assert p.open == 0
    for ticket in tickets:
        assert ticket is not None
        ticket.leave()
    assert p.admit("192.0.2.1").ticket is not None


def test_a_flood_from_few_addresses_leaves_room_for_everybody_else() -> None:
    """1,000 connections from 20 addresses (the review's attack) and then
    legitimate clients from 50 other addresses: every one of them gets in."""
    p, clock = pool(limit=500, per_ip=20)
    evicted: list[str] = []
    held = 0
    for n in range(1000):
        clock.now += 0.01
        admission = p.admit(f"203.0.113.{n % 20}")
        if admission.ticket is not None:
            held += 1
    assert held == 400 and p.open == 400  # 20 each
    for n in range(50):
        clock.now += 0.01
        admit(p, f"198.51.100.{n}", evicted)
    assert p.open == 450 and p.evictions == 0
    # A bigger flood, 100 addresses: the pool fills, and still a newcomer gets in.
    for n in range(2000):
        p.admit(f"192.0.2.{n % 100}")
    assert p.open == 500
    assert p.admit("198.51.100.200").ticket is not None
    # Memory: nothing left behind once everybody leaves.
    assert p.addresses <= 500
