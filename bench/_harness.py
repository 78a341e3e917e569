"""What the benchmarks share: a free port and a real estafeta started on it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def estafeta(config: Path) -> list[str]:
    return [sys.executable, "-m", "estafeta", "-c", str(config)]


def add_user(config: Path, address: str, password: str) -> None:
    subprocess.run(
        [*estafeta(config), "user", "add", address, "--password-stdin"],
        input=password.encode(),
        check=True,
        capture_output=True,
    )


@contextmanager
def running(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``estafeta serve`` until the block ends; waits until ``port`` accepts."""
    with open(log, "wb") as stream:
        server = subprocess.Popen([*estafeta(config), "serve"], stderr=stream)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"estafeta exited: {log.read_text()}") from None
                time.sleep(0.05)
        else:
            raise SystemExit("estafeta did not start listening")
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
