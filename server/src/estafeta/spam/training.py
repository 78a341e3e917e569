"""Training the junk filter from what users do (issue 16, section 3).

IMAP (and anything else) calls ``Trainer.submit(account, spam, load)``
after a command that says "this is spam" (a message moved or copied into
Junk, ``$Junk`` set) or "this is not" (moved out of Junk, ``$NotJunk``
set). ``submit`` never waits: the job goes into a bounded queue and one
worker task trains in the background, so a client's MOVE is answered at
once whatever the size of the training.

Bounds (a user can move 100,000 messages into Junk at once, and many
users can at the same time):

* at most ``max_pending`` jobs wait; beyond that ``submit`` returns False
  and the training is dropped with a log event (the mail is where the user
  put it; only the lesson is lost);
* one job trains at most ``max_batch`` messages (the rest are counted as
  skipped in the log);
* ``load`` is the caller's, run in a worker thread; it should read at most
  a bounded prefix of each message (the IMAP hook reads 1 MiB), and the
  filter reads at most ``max_text`` of decoded text anyway;
* rspamd learning, when configured, gets at most ``max_rspamd`` messages
  of one job, one request at a time, each with the client's timeout.

Errors (a message expunged meanwhile, rspamd down, a store error) are
logged and never reach the user's client; the worker carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from estafeta.log import log_event
from estafeta.spam.filter import JunkFilter
from estafeta.spam.rspamd import RspamdClient

log = logging.getLogger("estafeta.spam")

MAX_PENDING = 64
MAX_BATCH = 1_000
MAX_RSPAMD = 100

Loader = Callable[[int], tuple[list[bytes], int]]
"""``load(limit)``: at most ``limit`` messages, and how many it left out."""


@dataclass
class _Job:
    account: str
    spam: bool
    load: Loader
    source: str


class Trainer:
    """Background training of the learning filter and of rspamd."""

    def __init__(
        self,
        junk: JunkFilter | None,
        rspamd: RspamdClient | None = None,
        *,
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
        max_rspamd: int = MAX_RSPAMD,
    ) -> None:
        self.junk = junk
        self.rspamd = rspamd
        self.max_batch = max(1, max_batch)
        self.max_rspamd = max(0, max_rspamd)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max(1, max_pending))
        self._worker: asyncio.Task[None] | None = None
        self.trained = 0  # messages, since the start (tests, metrics)

    @property
    def active(self) -> bool:
        return self.junk is not None or self.rspamd is not None

    def submit(self, account: str, spam: bool, load: Loader, source: str = "imap") -> bool:
        """Queue a training; False (logged) when the queue is full. Call it
        on the event loop."""
        if not self.active:
            return False
        try:
            self._queue.put_nowait(_Job(account, spam, load, source))
        except asyncio.QueueFull:
            log_event(
                log, "spam_training_dropped", logging.WARNING, account=account, spam=spam,
                reason="queue full",
            )  # fmt: skip
            return False
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return True

    async def join(self) -> None:
        """Wait until every queued job is done (tests)."""
        await self._queue.join()

    async def close(self, grace: float = 5.0) -> None:
        """Let the queued jobs finish for up to ``grace`` seconds, then stop."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._queue.join()), grace)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._train(job)
            except Exception as exc:  # a bug must not stop the training of others
                log.exception("spam training failed")
                log_event(
                    log, "spam_training_failed", logging.ERROR, account=job.account,
                    error=repr(exc),
                )  # fmt: skip
            finally:
                self._queue.task_done()

    async def _train(self, job: _Job) -> None:
        messages, skipped = await asyncio.to_thread(self._load, job)
        counts: dict[str, int] = {}
        if self.junk is not None and messages:
            report = await asyncio.to_thread(self._learn, job, messages)
            counts = dict(report)
        rspamd_learned = 0
        if self.rspamd is not None:
            for message in messages[: self.max_rspamd]:
                try:
                    if await self.rspamd.learn(message, job.spam):
                        rspamd_learned += 1
                except Exception as exc:  # RspamdError; rspamd is optional
                    log_event(
                        log, "rspamd_learn_failed", logging.WARNING, account=job.account,
                        error=str(exc)[:200],
                    )  # fmt: skip
                    break
        self.trained += len(messages)
        log_event(
            log, "spam_trained", logging.INFO, account=job.account, spam=job.spam,
            source=job.source, messages=len(messages), skipped=skipped,
            rspamd=rspamd_learned, **counts,
        )  # fmt: skip

    def _load(self, job: _Job) -> tuple[list[bytes], int]:
        try:
            messages, skipped = job.load(self.max_batch)
        except (OSError, ValueError, sqlite3.Error) as exc:
            log_event(
                log, "spam_training_failed", logging.WARNING, account=job.account,
                error=str(exc)[:200],
            )  # fmt: skip
            return [], 0
        return messages[: self.max_batch], skipped

    def _learn(self, job: _Job, messages: list[bytes]) -> list[tuple[str, int]]:
        assert self.junk is not None
        counts: dict[str, int] = {}
        for message in messages:
            outcome = self.junk.learn(job.account, message, job.spam)
            counts[outcome] = counts.get(outcome, 0) + 1
        return sorted(counts.items())
