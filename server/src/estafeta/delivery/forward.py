"""Forwarding: mail for a local alias whose targets live in other domains.

The MX has already verified the message and prepended our
Authentication-Results. Before it is queued for the remote targets:

- the envelope sender is rewritten with SRS (``estafeta.srs``), so the next
  hop's SPF check sees one of our domains, and bounces come back to us;
- the message is ARC-sealed (rfc8617:5.1) with an RSA DKIM key of the alias's
  domain, so the next hop can see what we verified even though SPF (and
  perhaps DKIM) no longer line up with DMARC after forwarding.

Without an RSA key for the domain the message is forwarded unsealed (logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from estafeta import srs
from estafeta.log import log_event
from estafeta.policy import dkim
from estafeta.policy.signer import Signer
from estafeta.queue.store import QueueBackend

log = logging.getLogger("estafeta.delivery")


class Forwarder:
    def __init__(
        self,
        *,
        queue: QueueBackend,
        signer: Signer,
        srs_secret: bytes,
        authserv_id: str,
        wake: Callable[[], None],
    ) -> None:
        self.queue = queue
        self.signer = signer
        self.srs_secret = srs_secret
        self.authserv_id = authserv_id
        self.wake = wake

    def seal(self, domain: str, message: bytes) -> bytes:
        """The ARC set to prepend, or b"" when we cannot seal."""
        keys = [k for k in self.signer.keys_for(domain) if k.algorithm == "rsa"]
        if not keys:
            log_event(log, "arc_not_sealed", domain=domain, reason="no RSA DKIM key")
            return b""
        try:
            return dkim.arc_seal(message, keys[0], self.authserv_id)
        except ValueError as exc:
            log_event(log, "arc_not_sealed", logging.WARNING, domain=domain, reason=str(exc))
            return b""

    async def forward(
        self, *, sender: str, recipients: Sequence[str], message: bytes, domain: str
    ) -> str:
        """Queue ``message`` for ``recipients`` on behalf of alias ``domain``.

        Blocks until the queue entry is durable; returns the rewritten sender.
        """
        envelope_sender = srs.forward(self.srs_secret, sender, domain)
        sealed = await asyncio.to_thread(self.seal, domain, message) + message
        await asyncio.to_thread(self.queue.enqueue, envelope_sender, list(recipients), sealed)
        self.wake()
        return envelope_sender
