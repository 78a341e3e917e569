"""A private event loop in a thread of its own for the cluster's I/O.

asyncpg's connections belong to the loop that made them, while the store
writes in its writer thread and readers run in worker threads. So every
cluster object (the pool, the blob store, the listener) lives on one
``IoLoop``: code on any other thread or loop hands it coroutines, blocking
(``run``) or awaiting (``call``). Nothing but this I/O runs on that loop,
so a slow command of an IMAP session never delays a database round trip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


# Seconds the stopping loop gives its connections to finish closing.
CLOSE_WAIT = 1.0


class IoLoopError(RuntimeError):
    pass


def _transports(loop: asyncio.AbstractEventLoop) -> list[asyncio.BaseTransport]:
    # The selector loop's own map of its transports (by file descriptor):
    # asyncio has no public list of them.
    return list((getattr(loop, "_transports", None) or {}).values())


def _open_transports(loop: asyncio.AbstractEventLoop) -> list[asyncio.BaseTransport]:
    return [t for t in _transports(loop) if not t.is_closing()]


def end_transports(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop's connections finish closing, then cut those left: none
    may outlive its loop (its socket would be left open, to be found by the
    garbage collector). A TLS connection closed at the end, by a task
    cancelled above or by a pool's close, still waits for the peer's
    close_notify; its plain transport closes only then, some iterations
    later."""
    deadline = time.monotonic() + CLOSE_WAIT
    while _open_transports(loop) and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    # abort() of a transport closed already does nothing; of one still
    # flushing or waiting, it closes the socket now.
    for transport in _transports(loop):
        getattr(transport, "abort", transport.close)()
    # The sockets are closed by callbacks of the next iterations.
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(asyncio.sleep(0))


class IoLoop:
    def __init__(self, name: str = "cluster-io") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise IoLoopError(f"{self.name} is not started")
        return self._loop

    def start(self) -> IoLoop:
        if self._thread is not None:
            return self
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                end_transports(loop)
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        thread.join()
        self._loop = None

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.in_loop():
            coro.close()
            raise IoLoopError(f"{self.name}: submit() from its own thread would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it (from any other thread)."""
        return self.submit(coro).result(timeout)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the loop, from another event loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def __enter__(self) -> IoLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
