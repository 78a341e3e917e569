"""Bounded thread pools for CPU-heavy work, apart from asyncio's default pool.

asyncio's default executor (``asyncio.to_thread``) serves short blocking
calls: index opens, message parsing at delivery, file reads. An IMAP SEARCH
can take seconds of CPU; when searches ran there, six of them filled it and
every login and delivery queued behind them for 55 s (issue 14 item 7).

``SearchPool`` runs searches on threads of their own: at most ``threads``
searches run in the whole server, and one account runs one search at a
time (its other sessions wait for their turn, holding nothing but their
request). Each search carries its own work and time budget
(``estafeta.imap.search.Budget``), so a place in the pool is always given
back. A CPU-bound thread still takes the GIL from the event loop's thread:
the search scans text in slices of a few milliseconds, and two threads
leave the loop its share (measured by bench/search_budget.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

SEARCH_THREADS = 2
"""Searches that run at once in the whole server."""


class _Turn:
    """One account's turn to search, and how many sessions want it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class SearchPool:
    """A small executor, plus one turn at a time per account."""

    def __init__(self, threads: int = SEARCH_THREADS) -> None:
        self.threads = threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # (event loop, account) -> its turn; dropped when nobody wants it.
        self._turns: dict[tuple[int, str], _Turn] = {}

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix="estafeta-search"
                )
            return self._executor

    def busy(self) -> int:
        """Accounts with a search running or waiting (all event loops)."""
        return len(self._turns)

    async def run(self, account: str, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on a search thread, after the account's
        previous searches. The account's turn ends when the function
        returns, not when the caller stops waiting: cancelling the caller
        does not stop a function that already runs (give it a way to stop,
        as Budget.cancel), and the next search of the account waits for it.
        """
        loop = asyncio.get_running_loop()
        key = (id(loop), account)
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.users += 1
        try:
            await turn.lock.acquire()
        except BaseException:
            self._leave(key, turn, False)
            raise
        try:
            future = self._pool().submit(function, *args)
        except BaseException:
            self._leave(key, turn, True)
            raise

        def done(_: concurrent.futures.Future[T]) -> None:
            # In the search thread (or here, if it was cancelled before it ran).
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._leave, key, turn, True)

        future.add_done_callback(done)
        return await asyncio.wrap_future(future, loop=loop)

    def _leave(self, key: tuple[int, str], turn: _Turn, release: bool) -> None:
        turn.users -= 1
        if release:
            turn.lock.release()
        if turn.users <= 0 and self._turns.get(key) is turn:
            del self._turns[key]

    def shutdown(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


SEARCHES = SearchPool()
"""The server's search pool (one per process: searches of every session)."""
