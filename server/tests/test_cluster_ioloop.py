"""The cluster's IoLoop (estafeta.cluster.ioloop): no connection outlives it.

A TLS connection closed as the loop stops (a task cancelled by the stop, a
pool closing) still waits for the peer's close_notify: its socket closes some
iterations later, or never if the peer does not answer. The loop waits for
that (CLOSE_WAIT at most), then cuts what is left. Before, such a socket
was left open and found later by the garbage collector (a ResourceWarning
in whatever test ran then)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time

import pytest
import trustme

from estafeta.cluster import ioloop
from estafeta.cluster.ioloop import IoLoop


class TLSPeer:
    """A TLS server on a thread of its own for one connection: after the
    handshake it reads nothing (``answers=False``: a close_notify is never
    answered) or everything until the client's close_notify, answered."""

    def __init__(self, *, answers: bool) -> None:
        ca = trustme.CA()
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(self.server_context)
        self.client_context = ssl.create_default_context()
        ca.configure_trust(self.client_context)
        self.answers = answers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        with self.server_context.wrap_socket(conn, server_side=True) as tls:
            if self.answers:
                while tls.recv(100):
                    pass
                tls.unwrap()
            self.done.wait(60)

    def __enter__(self) -> TLSPeer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)
        self.listener.close()


@pytest.mark.parametrize("answers", [True, False], ids=["answering-peer", "silent-peer"])
def test_a_tls_connection_closed_at_the_stop_does_not_outlive_the_loop(answers: bool) -> None:
    with TLSPeer(answers=answers) as peer:
        io = IoLoop("test-io").start()
        sockets: list[socket.socket] = []
        connected = threading.Event()

        async def client() -> None:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", peer.port, ssl=peer.client_context
            )
            sockets.append(writer.get_extra_info("socket"))
            connected.set()
            try:
                await asyncio.sleep(3600)
            finally:
                writer.close()  # cancelled by the stop: a TLS close begins

        io.submit(client())
        assert connected.wait(10)
        start = time.monotonic()
        io.stop()
        took = time.monotonic() - start
        # Closed when the loop is gone: no file descriptor left (-1).
        assert [s.fileno() for s in sockets] == [-1]
    # A peer that never answers holds the stop for CLOSE_WAIT, not longer.
    assert took < ioloop.CLOSE_WAIT + 5
