"""Ports for the servers a test starts: free now, and never handed to anyone else.

A port from ``bind(("127.0.0.1", 0))`` is free when asked, but the socket is
closed before the server under test binds it. In that gap the kernel may give
the same ephemeral port to another bind: another test's free_port in the same
process (seen: imaps and smtp on one port), a pytest-xdist worker running
beside this one, or an outgoing connection. So each test process takes its
ports from a block of its own, below Linux's ephemeral range (32768-60999,
``net.ipv4.ip_local_port_range``) so the kernel never picks them by itself, and
walks the block in order, so a port comes back to the same process only after
every other port of the block has been handed out.

The block is chosen by ``PYTEST_XDIST_WORKER`` (gw0, gw1, ...); a run without
xdist uses the first block.
"""

from __future__ import annotations

import os
import re
import socket

FIRST = 12000
BLOCK = 4000
WORKERS = 5  # 12000-31999: below the ephemeral range


def _block() -> range:
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", "gw0"))
    index = int(worker[1]) if worker else 0
    if index >= WORKERS:
        raise RuntimeError(f"_ports.py has blocks for {WORKERS} xdist workers, not {index + 1}")
    start = FIRST + index * BLOCK
    return range(start, start + BLOCK)


_BLOCK = _block()
_next = 0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port of this process's block that nothing has bound (TCP or UDP as kind)."""
    global _next
    for _ in range(len(_BLOCK)):
        port = _BLOCK[_next % len(_BLOCK)]
        _next += 1
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_BLOCK.start}-{_BLOCK.stop - 1}")
