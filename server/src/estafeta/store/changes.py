"""Who is told when an account's index changed.

The writer thread calls ``notify(address)`` after each commit. Listeners
are callables run in the writer thread, so they must be quick and
thread-safe: an IMAP session registers one that wakes its event loop
(``loop.call_soon_threadsafe``); the session then reads what changed from
the index itself (rows with a modseq above the one it knows). Commit
first, then tell: a listener never hears of a change it cannot read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[str], None]


class Changes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Listener]] = {}

    def watch(self, address: str, listener: Listener) -> None:
        with self._lock:
            self._listeners.setdefault(address, []).append(listener)

    def unwatch(self, address: str, listener: Listener) -> None:
        with self._lock:
            listeners = self._listeners.get(address, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(address, None)

    def notify(self, address: str) -> None:
        with self._lock:
            listeners = list(self._listeners.get(address, ()))
        for listener in listeners:
            listener(address)
