"""Test doubles for the DNS-list tests: a fake clock and a resolver whose
answers under one zone never come."""

from __future__ import annotations

import asyncio
from typing import Any

from estafeta.dns import Answer, MockResolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HangingResolver(MockResolver):
    """Names under ``hang`` never answer (until cancelled)."""

    def __init__(self, hang: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hang = hang

    async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
        if name.lower().rstrip(".").endswith("." + self.hang):
            self.queries.append((name, rdtype))
            await asyncio.get_running_loop().create_future()
        return await super().lookup(name, rdtype, _depth)
