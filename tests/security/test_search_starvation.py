"""Issue 14 item 7: searches starved logins and delivery.

The attack: ``SEARCH NOT BODY aaaaaaaaab NOT BODY aaaaaaaaab ...`` (300 times)
on a 10 MiB message took 12 s of CPU; six at once made an unrelated user's
login and an inbound delivery wait 55 s. Searches ran on asyncio's default
thread pool, the one password checks and message parsing use, with no limit
on the work one search may do.

Now searches run on a pool of their own (estafeta.workers: two threads, one
search per account at a time), each message's text is decoded once and a
repeated key matched once, and each search has a work and time budget
(estafeta.imap.search.Budget) past which it ends with NO [LIMIT] (rfc5530:3).
Long texts are scanned in slices, so a search thread gives the GIL back to
the event loop every few milliseconds.

Each test runs six such searches at once (one account, six connections)
while another user logs in over IMAP and receives a small message over SMTP,
over and over: the logins must answer within 1 s, the deliveries within 3 s,
the SMTP greetings within 1 s; each search must get the right answer or
NO [LIMIT]; afterwards the account can search again at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security._responsiveness import (
    Probe,
    RssSampler,
    deliver_directly,
    imap_login,
    prepared_server,
    rss,
)
from tests.security.conftest import ALICE, BOB, Client, MailServer

MIB = 1024 * 1024
SEARCHES = 6
KEYS = 300
# Six searches over 10 MiB take about 5 s now; 55 s and more before.
DEADLINE = 90.0


def ten_mib_message() -> bytes:
    line = b"a" * 998 + b"\r\n"  # the longest line rfc5322:2.1.1 allows
    body = line * (10 * MIB // len(line))
    return (
        b"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: big\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    def populate(root: Path) -> None:
        deliver_directly(root, ALICE, [ten_mib_message()])

    with prepared_server(tmp_path_factory.mktemp("search"), populate) as server:
        yield server


def selected(server: MailServer) -> Client:
    client = imap_login(server, timeout=DEADLINE)
    _, tagged = client.imap("S", "EXAMINE INBOX")
    assert tagged.startswith(b"S OK"), tagged
    return client


def run_six(
    server: MailServer, programs: list[str]
) -> tuple[list[tuple[list[bytes], bytes]], Probe]:
    """Run the programs at once on connections of alice, with a probe of
    bob; the results, and the probe. Stops waiting as soon as a probe is
    slow (a frozen server fails the test quickly)."""
    clients = [selected(server) for _ in programs]
    results: list[tuple[list[bytes], bytes] | None] = [None] * len(programs)

    def search(i: int) -> None:
        try:
            results[i] = clients[i].imap("X", f"SEARCH {programs[i]}")
        except OSError as exc:
            results[i] = ([], repr(exc).encode())

    threads = [
        threading.Thread(target=search, args=(i,), daemon=True) for i in range(len(programs))
    ]
    with Probe(server, deliver=True, limit=10.0) as probe:
        probe.wait_rounds(1)
        rounds = len(probe.logins)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            worst = probe.worst()
            if worst["imap_login"] >= 1.0 or worst["smtp_delivery"] >= 3.0:
                break  # failed already: do not wait for the searches
            time.sleep(0.1)
        # At least one full round of the probe while the searches ran.
        probe.wait_rounds(rounds + 1, timeout=15)
    for client in clients:
        client.close()
    done = [r for r in results if r is not None]
    return done, probe


def check_probe(probe: Probe) -> None:
    worst = probe.worst()
    assert worst["imap_login"] < 1.0, (worst, probe.errors)
    assert worst["smtp_greeting"] < 1.0, (worst, probe.errors)
    assert worst["smtp_delivery"] < 3.0, (worst, probe.errors)
    assert len(probe.logins) >= 2 and len(probe.deliveries) >= 2


def check_after(server: MailServer, delivered_before: int, probe: Probe) -> None:
    # Every probe delivery is in bob's INBOX.
    assert server.mail(BOB) == delivered_before + len(probe.deliveries)
    # The account's turn and the pool's threads were given back: a cheap
    # search answers at once.
    with selected(server) as client:
        started = time.monotonic()
        untagged, tagged = client.imap("A", "SEARCH SUBJECT big")
        assert tagged.startswith(b"A OK"), tagged
        assert untagged == [b"* SEARCH 1\r\n"]
        assert time.monotonic() - started < 1.0
    assert "Traceback" not in server.log_text()


def test_six_searches_of_one_key_300_times(server: MailServer) -> None:
    program = " ".join(["NOT BODY aaaaaaaaab"] * KEYS)
    before = server.mail(BOB)
    baseline = rss(server)
    with RssSampler(server) as memory:
        results, probe = run_six(server, [program] * SEARCHES)
    check_probe(probe)
    assert len(results) == SEARCHES
    for untagged, tagged in results:
        # A key repeated is matched once per message: this one is cheap now.
        assert tagged.startswith(b"X OK"), tagged
        assert untagged == [b"* SEARCH 1\r\n"]
    assert memory.peak - baseline < 256 * MIB
    check_after(server, before, probe)


def test_six_searches_of_300_different_keys(server: MailServer) -> None:
    # 300 different needles, each a worst case for the substring search
    # over 10 MiB of "a": 3 GB of scanning per search, past any budget.
    programs = [
        " ".join(f"NOT BODY aaaaaaaaab{s}{k:03d}" for k in range(KEYS)) for s in range(SEARCHES)
    ]
    before = server.mail(BOB)
    baseline = rss(server)
    with RssSampler(server) as memory:
        results, probe = run_six(server, programs)
    check_probe(probe)
    assert len(results) == SEARCHES
    for untagged, tagged in results:
        if tagged.startswith(b"X OK"):
            assert untagged == [b"* SEARCH 1\r\n"]
        else:
            assert tagged.startswith(b"X NO [LIMIT] "), tagged
            assert untagged == []
    assert any(tagged.startswith(b"X NO [LIMIT] ") for _, tagged in results)
    assert memory.peak - baseline < 256 * MIB
    check_after(server, before, probe)


def test_a_search_refused_for_its_cost_empties_the_saved_result(server: MailServer) -> None:
    expensive = " ".join(f"NOT BODY aaaaaaaaab{k:03d}" for k in range(KEYS))
    with selected(server) as client:
        _, tagged = client.imap("A", "SEARCH RETURN (SAVE) ALL")
        assert tagged.startswith(b"A OK"), tagged
        untagged, _ = client.imap("B", "FETCH $ (UID)")
        assert len(untagged) == 1
        _, tagged = client.imap("C", f"SEARCH RETURN (SAVE) {expensive}")
        assert tagged.startswith(b"C NO [LIMIT] "), tagged
        # rfc5182:2.1: a SEARCH ... SAVE that fails sets "$" to the empty set.
        untagged, tagged = client.imap("D", "FETCH $ (UID)")
        assert tagged.startswith(b"D OK"), tagged
        assert untagged == []
