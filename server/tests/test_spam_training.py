"""The background trainer: bounded queue, bounded batches, errors contained."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from estafeta.spam import JunkFilter
from estafeta.spam.training import Trainer

ACCOUNT = "alice@example.test"


def message(n: int, word: str) -> bytes:
    return (
        f"From: <s{n}@remote.test>\r\nSubject: {word} {n}\r\nMessage-ID: <{n}.{word}@r.test>"
        f"\r\n\r\n{word} words about {word} number{n}\r\n"
    ).encode()


def loader(messages: list[bytes]):  # type: ignore[no-untyped-def]
    def load(limit: int) -> tuple[list[bytes], int]:
        return messages[:limit], max(0, len(messages) - limit)

    return load


class Rspamd:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[bool] = []
        self.fail = fail

    async def learn(self, message: bytes, spam: bool) -> bool:
        self.calls.append(spam)
        if self.fail:
            raise OSError("rspamd is down")
        return True


def test_lessons_reach_the_filter_and_rspamd(tmp_path: Path) -> None:
    rspamd = Rspamd()

    async def run() -> None:
        with JunkFilter(tmp_path) as junk:
            trainer = Trainer(junk, rspamd, max_batch=3)  # type: ignore[arg-type]
            assert trainer.submit(ACCOUNT, True, loader([message(n, "casino") for n in range(5)]))
            assert trainer.submit(ACCOUNT, False, loader([message(9, "agenda")]))
            await trainer.join()
            status = junk.status(ACCOUNT)
            assert (status.spam, status.ham) == (3, 1)  # the batch cap: 3 of 5
            await trainer.close()

    asyncio.run(run())
    assert rspamd.calls == [True, True, True, False]


def test_a_full_queue_drops_the_lesson(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> list[bool]:
        with JunkFilter(tmp_path) as junk:
            trainer = Trainer(junk, max_pending=2)
            results = [trainer.submit(ACCOUNT, True, loader([message(n, "x")])) for n in range(4)]
            await trainer.close()
            return results

    assert asyncio.run(run()) == [True, True, False, False]
    assert "spam_training_dropped" in caplog.text


def test_failures_are_logged_and_the_worker_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(limit: int) -> tuple[list[bytes], int]:
        raise FileNotFoundError("expunged meanwhile")

    async def run() -> tuple[int, int]:
        with JunkFilter(tmp_path) as junk:
            trainer = Trainer(junk, Rspamd(fail=True))  # type: ignore[arg-type]
            trainer.submit(ACCOUNT, True, broken)
            trainer.submit(ACCOUNT, True, loader([message(1, "casino"), message(2, "casino")]))
            await trainer.join()
            await trainer.close()
            status = junk.status(ACCOUNT)
            return status.spam, status.ham

    assert asyncio.run(run()) == (2, 0)
    assert "spam_training_failed" in caplog.text
    assert "rspamd_learn_failed" in caplog.text


def test_nothing_to_train_accepts_nothing() -> None:
    async def run() -> bool:
        return Trainer(None, None).submit(ACCOUNT, True, loader([message(1, "x")]))

    assert asyncio.run(run()) is False
