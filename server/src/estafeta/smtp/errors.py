"""The SMTP error limit: tarpitting clients that collect error replies.

Modelled on Postfix's ``smtpd_soft_error_limit`` / ``smtpd_error_sleep_time``
/ ``smtpd_hard_error_limit``, with the delay kept per client address
instead of per session, so that opening more connections does not multiply
the guessing rate (``RCPT TO`` address harvesting):

- a session counts its error replies (4xx and 5xx, but not the 421 of a
  close, see ``counts_as_error``); at ``[limits] smtp_hard_error_limit`` the
  session says ``421 4.7.0 <hostname> Error: too many errors`` and closes
  (rfc5321:3.8), as Postfix does;
- every such reply is also counted for the client (IPv4 address or IPv6
  /64, ``auth.guard.client_key``) over a sliding ``WINDOW``. Beyond
  ``smtp_soft_error_limit`` of them, each further error reply waits
  ``smtp_error_delay`` seconds, doubling with each error up to
  ``MAX_FACTOR`` times that; the waits of one client are served one at a
  time (one ``asyncio.Lock`` per client, as ``auth.guard.Authenticator``
  does for password checks), so fifty parallel connections wait in a row;
- the table holds at most ``max_clients`` clients (least recently seen
  ones are forgotten first) and never more than ``soft + 4`` times per
  client; networks in ``[auth] exempt`` are neither counted nor slowed.

Waiting is ``await sleep(...)``: the event loop goes on serving others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from estafeta.auth.guard import Network, client_key, in_networks
from estafeta.log import log_event

log = logging.getLogger("estafeta.smtp")

# Errors of a client older than this are forgotten (seconds).
WINDOW = 300.0
# The delay stops doubling at this multiple of smtp_error_delay.
MAX_FACTOR = 8
MAX_CLIENTS = 10_000

TOO_MANY_ERRORS = "421 4.7.0 {} Error: too many errors"


def counts_as_error(reply: str) -> bool:
    """Whether a reply counts against the error limits: 4xx and 5xx, except

    - 421, the goodbye of a connection that is being closed;
    - X.3.x (rfc3463:3.4, mail system status: our disk, our memory, our bug,
      not the client's doing);
    - the answers to recipients beyond the per-message limit (452 4.5.3,
      rfc5321:4.5.3.1.10, and submission's 451 4.7.1 Too many recipients):
      a client is expected to send those recipients again later; Postfix
      does not count them either (smtpd_recipient_overshoot_limit).
    """
    code = reply[:3]
    if len(code) < 3 or code[0] not in "45" or code == "421":
        return False
    detail = reply[4:].split(" ", 1)
    enhanced = detail[0] if detail else ""
    if enhanced[1:3] == ".3":
        return False
    overshoot = len(detail) > 1 and detail[1].startswith("Too many recipients")
    return enhanced[1:] != ".5.3" and not overshoot


@dataclass
class _Client:
    errors: deque[float]
    tarpitted: bool = False


@dataclass
class _Serial:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ErrorLimiter:
    """Error counts per client address, shared by every SMTP listener."""

    def __init__(
        self,
        *,
        soft_limit: int,
        hard_limit: int,
        delay: float,
        exempt: Iterable[Network] = (),
        window: float = WINDOW,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit
        self.delay = delay
        self.exempt = tuple(exempt)
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._sleep = sleep
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._serial: dict[str, _Serial] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def record(self, ip: str) -> float:
        """Count one error reply to ``ip``; the seconds it must wait."""
        if self.exempt and in_networks(ip, self.exempt):
            return 0.0
        key = client_key(ip)
        now = self.clock()
        client = self._clients.get(key)
        if client is None:
            client = _Client(deque(maxlen=self.soft_limit + 4))
            self._clients[key] = client
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
        errors = client.errors
        while errors and errors[0] <= now - self.window:
            errors.popleft()
        if not errors:
            client.tarpitted = False
        errors.append(now)
        over = len(errors) - self.soft_limit
        if over <= 0 or self.delay <= 0:
            return 0.0
        delay = self.delay * min(1 << min(over - 1, 16), MAX_FACTOR)
        if not client.tarpitted:
            client.tarpitted = True
            log_event(
                log,
                "smtp_tarpit",
                logging.WARNING,
                client=key,
                errors=len(errors),
                delay=delay,
            )
        return delay

    async def wait(self, ip: str, delay: float) -> None:
        """Sleep ``delay`` seconds, after the other waits of the same client."""
        if delay <= 0:
            return
        async with self._one_at_a_time(client_key(ip)):
            await self._sleep(delay)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: str) -> AsyncIterator[None]:
        serial = self._serial.setdefault(key, _Serial())
        serial.users += 1
        try:
            async with serial.lock:
                yield
        finally:
            serial.users -= 1
            if serial.users == 0:
                del self._serial[key]
