"""Issue 14 item 6: sequence-set expansion.

The attack: in a 32,768-message mailbox, ``UID FETCH 1:*,1:*,...`` (16,000
ranges, 64 KB of command) ``(FLAGS)`` froze the server for 17.7 s at 4.2 GB
RSS; ``UID STORE`` and ``FETCH`` alike. Each range was expanded number by
number in the event loop, and nothing merged the 16,000 copies of "1:*".

Now a set is sorted and coalesced once ("*" resolved, rfc9051:9: "4:2" is
"2:4"), then resolved against the mailbox with binary searches: the work is
linear in the mailbox plus ranges x log(ranges). Against a real server with
a 32,768-message INBOX (put in place through the store API before it starts:
APPEND would take minutes), each command below must answer correctly, the
server's RSS must stay within 64 MiB of what it was, and another client's
SMTP greeting and IMAP LOGIN must be answered within 1 s meanwhile.
(SEARCH's UID and sequence-set keys merged their sets already; they are
checked against a naive reference in server/tests/test_fuzz_sequence_set.py.)
"""

from __future__ import annotations

import re
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
from tests.security.conftest import ALICE, Client, MailServer

MESSAGES = 32_768
RANGES = 16_000
MIB = 1024 * 1024
RSS_BOUND = 64 * MIB
# Each command answers in well under a second now; on the old code it took
# 17.7 s. A command that takes longer than this fails the test.
COMMAND_TIMEOUT = 30.0
ALL_OF_IT = ",".join(["1:*"] * RANGES)  # 63,999 octets


def message(n: int) -> bytes:
    return b"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: m%d\r\n\r\nbody\r\n" % n


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    root = tmp_path_factory.mktemp("seqset")
    started = time.monotonic()

    def populate(root: Path) -> None:
        deliver_directly(root, ALICE, [message(n) for n in range(MESSAGES)])

    with prepared_server(root, populate) as server:
        setup = time.monotonic() - started
        print(f"setup of {MESSAGES} messages: {setup:.1f} s")
        yield server


def selected(server: MailServer) -> Client:
    client = imap_login(server, timeout=COMMAND_TIMEOUT)
    untagged, tagged = client.imap("S", "SELECT INBOX")
    assert tagged.startswith(b"S OK"), tagged
    assert b"* %d EXISTS\r\n" % MESSAGES in untagged
    return client


def attack(server: MailServer, client: Client, command: str) -> tuple[list[bytes], bytes]:
    """Send ``command`` while a probe and an RSS sampler watch; its response."""
    baseline = rss(server)
    with Probe(server, limit=5.0) as probe, RssSampler(server) as memory:
        probe.wait_rounds(1)
        before = len(probe.logins)
        started = time.monotonic()
        untagged, tagged = client.imap("X", command)
        elapsed = time.monotonic() - started
        probe.wait_rounds(before + 1)
    worst = probe.worst()
    print(
        f"{command[:24]}...: {elapsed:.2f} s, RSS {baseline / MIB:.0f} -> {memory.peak / MIB:.0f}"
        f" MiB, worst greeting {worst['smtp_greeting']:.2f} s login {worst['imap_login']:.2f} s"
    )
    assert worst["smtp_greeting"] < 1.0, (worst, probe.errors)
    assert worst["imap_login"] < 1.0, (worst, probe.errors)
    grown = memory.peak - baseline
    assert grown < RSS_BOUND, f"RSS grew {grown / MIB:.0f} MiB"
    assert "Traceback" not in server.log_text()
    return untagged, tagged


def test_uid_fetch_of_16000_overlapping_ranges(server: MailServer) -> None:
    with selected(server) as client:
        untagged, tagged = attack(server, client, f"UID FETCH {ALL_OF_IT} (FLAGS)")
        assert tagged.startswith(b"X OK"), tagged
        # Each message once, in order (rfc9051:9: a set names each number once).
        seqs = [int(line.split()[1]) for line in untagged]
        assert seqs == list(range(1, MESSAGES + 1))
        assert all(re.match(rb"\* \d+ FETCH \(UID \d+ FLAGS \(", line) for line in untagged[:10])


def test_fetch_of_16000_overlapping_ranges(server: MailServer) -> None:
    with selected(server) as client:
        untagged, tagged = attack(server, client, f"FETCH {ALL_OF_IT} (UID)")
        assert tagged.startswith(b"X OK"), tagged
        assert len(untagged) == MESSAGES
        assert untagged[0].startswith(b"* 1 FETCH (UID ")
        assert untagged[-1].startswith(b"* %d FETCH (UID " % MESSAGES)


def test_uid_store_of_16000_overlapping_ranges(server: MailServer) -> None:
    with selected(server) as client:
        untagged, tagged = attack(server, client, f"UID STORE {ALL_OF_IT} +FLAGS.SILENT (Stored)")
        assert tagged.startswith(b"X OK"), tagged
        # .SILENT: no FETCH; the new keyword is announced once (rfc9051:7.3.5).
        assert [line.split(b" (")[0] for line in untagged] == [b"* FLAGS", b"* OK [PERMANENTFLAGS"]
        untagged, tagged = client.imap("C", "SEARCH RETURN (COUNT) KEYWORD Stored")
        assert tagged.startswith(b"C OK"), tagged
        assert untagged == [b'* ESEARCH (TAG "C") COUNT %d\r\n' % MESSAGES]


def test_uid_expunge_of_16000_overlapping_ranges(server: MailServer) -> None:
    with selected(server) as client:
        # Nothing is \Deleted: the set is resolved and nothing goes.
        untagged, tagged = attack(server, client, f"UID EXPUNGE {ALL_OF_IT}")
        assert tagged.startswith(b"X OK"), tagged
        assert not any(b"EXPUNGE" in line for line in untagged)
        _, tagged = client.imap("N", "NOOP")
        assert tagged.startswith(b"N OK"), tagged
        assert server.mail(ALICE) == MESSAGES
