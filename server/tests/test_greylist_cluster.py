"""Greylisting shared by cluster two_nodes (estafeta.policy.greylist_cluster)
against a real PostgreSQL: the same decisions as the local file for the
same script of RCPTs, one retry passing on every node, the caps and expiry,
erasure, and mail flowing when the database is gone."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import Node
from estafeta.cluster.database import Database
from estafeta.cluster.ioloop import IoLoop
from estafeta.cluster.settings import DatabaseConfig
from estafeta.cluster.url import parse_url
from estafeta.policy.greylist import (
    AUTO_ALLOWED,
    DAY,
    EARLY,
    ERROR,
    KNOWN,
    NEW,
    RESTARTED,
    RETRIED,
    Greylist,
    Settings,
)
from estafeta.policy.greylist_cluster import SharedGreylist


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def shared(node: Node, clock: Clock, **settings: float) -> SharedGreylist:
    return SharedGreylist(*node, Settings(**settings), clock=clock)  # type: ignore[arg-type]


# A script of RCPTs: (seconds to wait first, client, sender, recipient).
SCRIPT = [
    (0, "192.0.2.1", "a@example.org", "x@example.test"),
    (60, "192.0.2.1", "a@example.org", "x@example.test"),  # early
    (300, "192.0.2.77", "a@example.org", "x@example.test"),  # same /24: retried
    (10, "192.0.2.1", "a@example.org", "x@example.test"),  # known
    (0, "192.0.2.1", "b+123@example.org", "X@Example.Test"),  # new sender
    (3 * DAY, "192.0.2.1", "b+456@example.org", "x@example.test"),  # after the window
    (400, "192.0.2.1", "b@example.org", "x@example.test"),  # retried
    (0, "2001:db8::1", "", "y@example.test"),  # the null sender, IPv6
    (301, "2001:db8::ffff", "", "y@example.test"),  # same /64: retried
    (40 * DAY, "192.0.2.1", "a@example.org", "x@example.test"),  # expired: new again
]


def test_the_same_decisions_as_the_local_file(two_nodes: tuple[Node, Node], tmp_path: Path) -> None:
    local_clock, cluster_clock = Clock(), Clock()
    shared_list = shared(two_nodes[0], cluster_clock, auto_allow=3)
    with Greylist(tmp_path / "g.db", Settings(auto_allow=3), local_clock) as local:
        local_answers, cluster_answers = [], []
        for wait, ip, sender, rcpt in SCRIPT:
            local_clock.now += wait
            cluster_clock.now += wait
            local_answers.append(local.check(ip, sender, rcpt))
            cluster_answers.append(shared_list.check(ip, sender, rcpt))
    assert cluster_answers == local_answers
    assert [d.reason for d in cluster_answers] == [
        NEW, EARLY, RETRIED, KNOWN, NEW, RESTARTED, RETRIED, NEW, RETRIED, NEW,
    ]  # fmt: skip
    assert cluster_answers[1].retry_after == 240
    assert cluster_answers[0].reply.startswith("451 4.7.1 Greylisted")
    assert shared_list.stats()["greylisted"] == 6 and shared_list.stats()["passed"] == 4


def test_a_retry_through_the_other_node_passes(two_nodes: tuple[Node, Node]) -> None:
    clock = Clock()
    a, b = shared(two_nodes[0], clock), shared(two_nodes[1], clock)
    assert a.check("198.51.100.7", "news@example.org", "bob@example.test").reason == NEW
    clock.now += 299
    assert b.check("198.51.100.9", "news@example.org", "bob@example.test").reason == EARLY
    clock.now += 2
    assert b.check("198.51.100.9", "news@example.org", "bob@example.test").reason == RETRIED
    assert a.check("198.51.100.7", "news@example.org", "bob@example.test").reason == KNOWN


def test_a_network_with_enough_passed_triplets_is_allowed_everywhere(
    two_nodes: tuple[Node, Node],
) -> None:
    clock = Clock()
    a = shared(two_nodes[0], clock, auto_allow=2)
    b = shared(two_nodes[1], clock, auto_allow=2)
    for rcpt in ("one@example.test", "two@example.test"):
        assert a.check("203.0.113.5", "s@example.org", rcpt).greylisted
    clock.now += 301
    assert a.check("203.0.113.5", "s@example.org", "one@example.test").reason == RETRIED
    assert b.check("203.0.113.5", "s@example.org", "two@example.test").reason == RETRIED
    decision = b.check("203.0.113.99", "other@example.net", "three@example.test")
    assert decision.reason == AUTO_ALLOWED and not decision.greylisted


def test_known_senders_are_shared_after_their_minimum_age(two_nodes: tuple[Node, Node]) -> None:
    clock = Clock()
    a = shared(two_nodes[0], clock)
    b = shared(two_nodes[1], clock)
    a.remember_sender("Example.ORG.")
    assert not b.known_sender("example.org")  # a day must pass
    clock.now += DAY
    a.remember_sender("example.org")  # a live entry keeps its first sighting
    assert b.known_sender("example.org") and b.stats()["known"] == 1
    clock.now += 36 * DAY
    assert not b.known_sender("example.org")  # unseen for expire
    b.remember_sender("example.org")  # expired: its age counts from now again
    clock.now += DAY - 1
    assert not a.known_sender("example.org")
    assert not a.known_sender("not a domain")
    with pytest.raises(ValueError):
        a.remember_sender("not a domain")


def test_concurrent_first_sightings_on_two_nodes_record_one(two_nodes: tuple[Node, Node]) -> None:
    clock = Clock()
    lists = [shared(two_nodes[0], clock), shared(two_nodes[1], clock)]
    answers: list[str] = []

    def run(g: SharedGreylist) -> None:
        for n in range(50):
            decision = g.check("192.0.2.10", "a@example.org", f"u{n}@example.test")
            assert decision.greylisted
            answers.append(decision.reason)

    threads = [threading.Thread(target=run, args=(g,)) for g in lists]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each triplet is new to the node that sees it first and early to the
    # other (or new to both, when they read at once): never a pass, never
    # an error, and one entry each.
    assert len(answers) == 100 and set(answers) <= {NEW, EARLY} and answers.count(NEW) >= 50
    assert lists[0].prune() == 0
    assert lists[0].stats()["pending_entries"] == 50


def test_expiry_and_the_caps(two_nodes: tuple[Node, Node]) -> None:
    clock = Clock()
    g = shared(two_nodes[0], clock, max_pending=5, max_passed=2, auto_allow=0)
    for n in range(8):
        clock.now += 1
        g.check("192.0.2.1", "a@example.org", f"u{n}@example.test")
    g.prune()
    assert g.stats()["pending_entries"] == 5 and g.stats()["evicted"] == 3
    # The oldest went: u0-u2 are strangers again, u3 is a retry.
    clock.now += 300
    assert g.check("192.0.2.1", "a@example.org", "u0@example.test").reason == NEW
    assert g.check("192.0.2.1", "a@example.org", "u3@example.test").reason == RETRIED
    for n in (4, 5, 6):
        g.check("192.0.2.1", "a@example.org", f"u{n}@example.test")
    g.prune()
    assert g.stats()["passed_entries"] == 2 and g.stats()["evicted_passed"] == 2
    clock.now += 3 * DAY  # past retry_window: pending entries expire
    assert g.prune() >= 2
    assert g.stats()["pending_entries"] == 0


def test_expiry_runs_in_the_background_when_due(two_nodes: tuple[Node, Node]) -> None:
    clock = Clock()
    g = shared(two_nodes[0], clock, auto_allow=0)

    def settle() -> None:
        # check() marks a run before it returns; the run clears the mark.
        deadline = time.monotonic() + 10
        while g._pruning:
            assert time.monotonic() < deadline, "the background expiry run never finished"
            time.sleep(0.02)

    g.check("192.0.2.1", "a@example.org", "u@example.test")  # the first check starts one
    settle()
    assert g.stats()["pending_entries"] == 1
    clock.now += 60
    g.check("192.0.2.1", "c@example.org", "u@example.test")  # not due: no run
    assert not g._pruning and g.stats()["pending_entries"] == 1
    clock.now += 3 * DAY
    g.check("192.0.2.1", "b@example.org", "u@example.test")  # due: expires the first two
    settle()
    assert g.stats()["pending_entries"] == 1
    clock.now += 300
    assert g.check("192.0.2.1", "a@example.org", "u@example.test").reason == NEW


def test_forget_removes_the_named_triplets_only(two_nodes: tuple[Node, Node]) -> None:
    clock = Clock()
    g = shared(two_nodes[0], clock, auto_allow=0)
    g.check("192.0.2.1", "a@example.org", "alice@example.test")
    g.check("192.0.2.1", "a@example.org", "bob@example.test")
    clock.now += 301
    g.check("192.0.2.1", "a@example.org", "alice@example.test")  # passed
    g.check("192.0.2.8", "c@example.org", "alice@example.test")  # pending
    removed = g.forget(
        [
            ("192.0.2.1", "a@example.org", "alice@example.test"),
            ("192.0.2.8", "c@example.org", "alice@example.test"),
            ("not an address", "x@example.org", "alice@example.test"),
        ]
    )
    assert removed == 2
    assert g.check("192.0.2.1", "a@example.org", "alice@example.test").reason == NEW
    assert g.check("192.0.2.1", "a@example.org", "bob@example.test").reason == RETRIED
    assert g.forget([]) == 0


def test_mail_flows_without_the_database(ioloop: IoLoop, database: DatabaseConfig) -> None:
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        url = str(database.url).replace(f":{database.url.port}/", f":{held.getsockname()[1]}/")
        gone = Database(
            DatabaseConfig(
                url=parse_url(url), password_file=database.password_file,
                tls=database.tls, ca_file=database.ca_file, connect_timeout=1,
            )
        )  # fmt: skip
        g = SharedGreylist(ioloop, gone, Settings(), timeout=1.0, pause=30.0)
        first = g.check("192.0.2.1", "a@example.org", "u@example.test")
        started = time.monotonic()
        later = [g.check("192.0.2.1", "a@example.org", f"u{n}@example.test") for n in range(20)]
        elapsed = time.monotonic() - started
    assert not first.greylisted and first.reason == ERROR
    assert all(d.reason == ERROR and not d.greylisted for d in later)
    assert elapsed < 1.0  # the breaker answers at once, no timeout per RCPT
    assert not g.known_sender("example.org")
    g.remember_sender("example.org")  # logged, not raised
    assert g.stats()["errors"] == 23
