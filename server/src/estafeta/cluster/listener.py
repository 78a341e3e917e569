"""LISTEN for other nodes' writes (PostgreSQL NOTIFY, schema.CHANNEL).

Every committed write of a scope sends ``pg_notify(CHANNEL, "origin:scope")`` in its
transaction, so the notice is delivered at commit and only then
(https://www.postgresql.org/docs/15/sql-notify.html). The listener keeps one
connection of its own; when it is lost, notices sent meanwhile are lost
with it, so after every (re)connection ``on_resync`` is called and the node
checks every replica it holds. Reconnection backs off from 0.5 to 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from estafeta.cluster.database import Database
from estafeta.cluster.schema import CHANNEL

log = logging.getLogger("estafeta.cluster")


class Listener:
    def __init__(
        self,
        db: Database,
        on_change: Callable[[str], None],
        on_resync: Callable[[], None],
        channel: str = CHANNEL,
    ) -> None:
        self.db = db
        self.on_change = on_change
        self.on_resync = on_resync
        self.channel = channel
        self.connected = asyncio.Event()
        self.reconnections = 0

    def _notice(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, _, scope = payload.partition(":")
        if origin == self.db.origin:
            return  # this node's own write: applied already
        try:
            self.on_change(scope)
        except Exception:  # a callback's bug must not end the listening
            log.exception("change listener failed for %s", payload)

    async def run(self) -> None:
        """Listen until cancelled."""
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await self.db.connect_one()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._notice)
                self.connected.set()
                self.on_resync()
                delay = 0.5
                while not lost.is_set():
                    # A server gone without a FIN is found by this query.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), 15)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change listener: %s; again in %.1f s", exc, delay)
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
            self.reconnections += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
