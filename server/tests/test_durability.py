"""Load and crash: 1,000 messages over 10 sessions, and SIGKILL mid-load."""

from __future__ import annotations

import email
import smtplib
import threading
import time
from collections.abc import Callable

import pytest

from conftest import DOMAIN, Instance
from estafeta.store import index

ALICE = f"alice@{DOMAIN}"
SESSIONS = 10


def raw_message(n: int, session: int) -> tuple[str, bytes]:
    message_id = f"<load-{session}-{n}@remote.test>"
    body = (
        f"From: sender{session}@remote.test\r\nTo: {ALICE}\r\nSubject: load {session}/{n}\r\n"
        f"Message-ID: {message_id}\r\n\r\n" + f"line {n}\r\n" * (n % 40 + 1)
    )
    return message_id, body.encode()


def run_sessions(
    port: int, per_session: int, acked: list[str], stop: threading.Event | None = None
) -> list[BaseException]:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(session: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.ehlo(f"client{session}.remote.test")
                for n in range(per_session):
                    if stop is not None and stop.is_set():
                        return
                    message_id, data = raw_message(n, session)
                    client.sendmail(f"sender{session}@remote.test", [ALICE], data)
                    # sendmail returned: the server said 250.
                    with lock:
                        acked.append(message_id)
        except (smtplib.SMTPException, OSError) as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return errors


def indexed_ids(server: Instance) -> list[str | None]:
    return [row.summary.message_id for row in server.index_rows(ALICE)]


def rows_and_bodies(server: Instance) -> list[tuple[index.MessageRow, bytes]]:
    """Each index row of alice's INBOX with the message it points to: the
    row's file on the local store, its body in the object store on a
    cluster (message_bodies reads them in UID order, as index_rows does)."""
    rows = server.index_rows(ALICE)
    if server.cluster:
        bodies = server.message_bodies(ALICE)
        assert len(bodies) == len(rows)
        return list(zip(rows, bodies, strict=True))
    folder = server.account_dir(ALICE)
    return [(row, (folder / row.file).read_bytes()) for row in rows]


def check_files_match_index(server: Instance, rows: list[index.MessageRow]) -> None:
    """On the local store: the files in new/ and cur/ are exactly the indexed
    ones (a cluster has no files; rows_and_bodies found every row's body)."""
    if server.cluster:
        return
    files = server.files(ALICE)
    assert {f"{f.parent.name}/{f.name}" for f in files} == {row.file for row in rows}
    assert len(files) == len(rows)


@pytest.mark.slow
def test_thousand_messages_ten_sessions(server: Instance) -> None:
    acked: list[str] = []
    errors = run_sessions(server.port, 100, acked)
    assert errors == []
    assert len(acked) == 1000
    stored = rows_and_bodies(server)
    rows = [row for row, _body in stored]
    assert len(rows) == 1000
    assert sorted(indexed_ids(server)) == sorted(acked)
    assert [row.uid for row in rows] == list(range(1, 1001))
    # Each row's size and Message-ID are those of the message it points to.
    for row, body in stored:
        assert row.size == len(body), row
        assert email.message_from_bytes(body)["Message-ID"] == row.summary.message_id
    if not server.cluster:
        assert all(row.file.startswith("new/") for row in rows)
    check_files_match_index(server, rows)


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [50, 400])
def test_sigkill_mid_load_loses_nothing_acknowledged(server: Instance, kill_after: int) -> None:
    acked: list[str] = []
    stop = threading.Event()
    result: list[BaseException] = []
    load = threading.Thread(
        target=lambda: result.extend(run_sessions(server.port, 10_000, acked, stop))
    )
    load.start()
    wait_for(lambda: len(acked) >= kill_after)
    server.kill()  # SIGKILL: no shutdown, no flush
    stop.set()
    load.join(timeout=120)
    assert not load.is_alive()
    acknowledged = list(acked)
    assert len(acknowledged) >= kill_after
    # The killed server cut every session off.
    assert len(result) == SESSIONS

    server.start()
    # Opening the account (here: by a delivery) indexes files the crash left unindexed.
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail(
            "after@remote.test", [ALICE], b"Message-ID: <after@remote.test>\r\n\r\nx\r\n"
        )
    server.stop()

    ids = indexed_ids(server)
    missing = set(acknowledged) - set(ids)
    assert not missing, f"{len(missing)} acknowledged messages lost"
    # Messages and index agree: nothing half-written remains. Every row has
    # its message (on a cluster: its body in the object store), and on the
    # local store no file is outside the index.
    stored = rows_and_bodies(server)
    assert all(row.size == len(body) for row, body in stored)
    check_files_match_index(server, [row for row, _body in stored])
    # Unacknowledged ones may be there once; acknowledged ones exactly once.
    assert len(ids) - len(set(ids)) == 0
