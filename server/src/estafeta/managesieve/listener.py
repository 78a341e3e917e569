"""The ``managesieve`` listener (rfc5804:1.8, port 4190): its sessions and settings.

``Server._listen_managesieve`` (server.py) admits each connection like IMAP
and POP3 (``Server._serve``: max_connections, per-address caps, the pool of
connections not logged in yet) and hands it to ``Listener.run``. No implicit
TLS: rfc5804 knows STARTTLS only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Iterable

from estafeta.auth.connections import CROWDED_TIMEOUT, Ticket
from estafeta.auth.guard import Authenticator
from estafeta.config import Config
from estafeta.managesieve import parser as p
from estafeta.managesieve.session import Session, Settings
from estafeta.sieve.scripts import Scripts

# What a refused or evicted connection hears before the close (rfc5804:1.2 BYE).
TOO_MANY = p.bye("Too many connections", "TRYLATER")
TOO_MANY_HERE = p.bye("Too many connections from your address", "TRYLATER")
EVICTED = p.bye("Too many connections not logged in; try again later", "TRYLATER")


def settings_from(config: Config, extensions: Iterable[str]) -> Settings:
    """The session settings of this configuration; ``extensions`` is what the
    SIEVE capability lists (estafeta.sieve.SUPPORTED)."""
    return Settings(
        hostname=config.hostname,
        allow_plaintext=config.auth.allow_plaintext,
        login_timeout=config.limits.login_timeout,
        idle_timeout=config.limits.imap_idle_timeout,
        max_script_size=config.sieve.max_script_size,
        max_redirects=config.sieve.max_redirects,
        extensions=tuple(sorted(extensions)),
    )


class Listener:
    """The ManageSieve sessions of one endpoint."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        scripts: Scripts,
        settings: Settings,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.authenticator = authenticator
        self.scripts = scripts
        self.settings = settings
        self.tls = tls
        self.sessions: set[Session] = set()

    async def run(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ticket: Ticket
    ) -> None:
        settings = self.settings
        if ticket.crowded and settings.login_timeout > CROWDED_TIMEOUT:
            # Admitted while many had not logged in: a short login deadline,
            # so that a flood cannot renew its places for free.
            settings = dataclasses.replace(settings, login_timeout=CROWDED_TIMEOUT)
        session = Session(
            reader,
            writer,
            authenticator=self.authenticator,
            scripts=self.scripts,
            settings=settings,
            tls=self.tls,
            preauth=ticket,
        )
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def shutdown(self) -> None:
        """Server stopping: every session hears BYE and is closed."""
        for session in list(self.sessions):
            session.shutdown()
