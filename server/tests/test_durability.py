"""Load and crash: 1,000 messages over 10 sessions, and SIGKILL mid-load."""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable

import pytest

from conftest import DOMAIN, Instance

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


@pytest.mark.slow
def test_thousand_messages_ten_sessions(server: Instance) -> None:
    acked: list[str] = []
    errors = run_sessions(server.port, 100, acked)
    assert errors == []
    assert len(acked) == 1000
    files = server.files(ALICE)
    rows = server.index_rows(ALICE)
    assert len(files) == 1000
    assert len(rows) == 1000
    assert sorted(indexed_ids(server)) == sorted(acked)
    assert {f"new/{f.name}" for f in files} == {row.file for row in rows}
    assert [row.uid for row in rows] == list(range(1, 1001))
    sizes = {f"new/{f.name}": f.stat().st_size for f in files}
    assert all(sizes[row.file] == row.size for row in rows)


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
    # Files and index agree: nothing half-written remains.
    rows = server.index_rows(ALICE)
    assert {f"new/{f.name}" for f in server.files(ALICE)} == {row.file for row in rows}
    assert len(rows) == len(server.files(ALICE))
    # Unacknowledged ones may be there once; acknowledged ones exactly once.
    assert len(ids) - len(set(ids)) == 0
