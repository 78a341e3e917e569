"""How long a TLS connection waits for the peer's close_notify.

When a session ends (LOGOUT, QUIT, a timeout) asyncio sends our
close_notify and then waits for the peer's before it closes the TCP
connection: 30 s by default (``asyncio.constants.SSL_SHUTDOWN_TIMEOUT``).
Many clients never send theirs, and a client that waits for the disconnect
hangs that long; the connection also stays counted against the per-address
and global limits. rfc8446:6.1 lets a party close "without waiting"; we
wait SHUTDOWN_SECONDS, enough for a client that does answer.

``loop.start_tls`` and ``loop.connect_accepted_socket`` take
``ssl_shutdown_timeout``; Python 3.11's ``StreamWriter.start_tls`` and
aiosmtpd's STARTTLS do not, so ``close_promptly`` sets it on the TLS
protocol they made (asyncio's ``SSLProtocol._ssl_shutdown_timeout``, read
when the shutdown starts).
"""

from __future__ import annotations

from typing import Any

SHUTDOWN_SECONDS = 2.0


def close_promptly(tls: Any) -> None:
    """``tls``: a TLS transport (after ``start_tls``) or asyncio's SSLProtocol."""
    protocol = getattr(tls, "_ssl_protocol", tls)
    if hasattr(protocol, "_ssl_shutdown_timeout"):
        protocol._ssl_shutdown_timeout = SHUTDOWN_SECONDS
