"""The certificate manager's side of the DANE-EE key rollover (estafeta.acme.dane).

``Rollover.look`` runs at the start of each step of the manager when
``[acme] dane`` is on: it makes the keys that are missing, asks DNS for the
standby key's TLSA records at every port and keeps the sighting;
``key_for_order`` says which key the next certificate gets (the standby key
only when the sighting is ready, rfc6698:A.4); ``switched`` completes a
switch after the new certificate is committed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from estafeta.acme.dane import (
    MAX_PORTS,
    DaneKeys,
    DaneLookupError,
    KeyDigests,
    Sighting,
    TlsaAnswer,
    TlsaLookup,
    failed,
    observe,
    tlsa_names,
)
from estafeta.log import log_event

if TYPE_CHECKING:
    from estafeta.acme.manager import AcmeSettings

log = logging.getLogger("estafeta.acme")


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Rollover:
    """Looks at DNS for the standby key, decides and completes the switch."""

    def __init__(
        self, keys: DaneKeys, lookup: TlsaLookup | None, clock: Callable[[], float]
    ) -> None:
        self._keys = keys
        self._lookup = lookup
        self._clock = clock
        self._standby: KeyDigests | None = None
        self._current: KeyDigests | None = None
        self.sighting = Sighting()
        self.requested: float | None = None  # mtime of rollover.request, read by look()

    def poll_interval(self, settings: AcmeSettings) -> float:
        return self.sighting.poll_interval(settings.dane_margin)

    def ready(self, settings: AcmeSettings) -> bool:
        return self._standby is not None and self.sighting.ready(
            self._clock(), settings.dane_margin
        )

    async def look(self, settings: AcmeSettings) -> None:
        """Make the missing keys, then ask DNS about the standby key."""
        made = await asyncio.to_thread(self._keys.ensure, settings.key_type)
        for what in made:
            log_event(log, "acme_dane_key_created", key=what)
        current, standby = await asyncio.to_thread(self._read_keys)
        self._current = KeyDigests.of(current)
        digests = KeyDigests.of(standby)
        if digests != self._standby:
            self._standby = digests
            self.sighting = await asyncio.to_thread(self._keys.load_sighting, digests)
        self.requested = await asyncio.to_thread(self._keys.requested)
        before = self.sighting
        names = tlsa_names(settings.dane_host, settings.dane_ports[:MAX_PORTS])
        try:
            if self._lookup is None:
                raise DaneLookupError("no resolver to look the TLSA records up with")
            answers: list[TlsaAnswer] = [await self._lookup(name) for name in names]
        except DaneLookupError as exc:
            self.sighting = failed(before, self._clock(), str(exc))
            if self.sighting.error != before.error:
                log_event(
                    log, "acme_dane_lookup_failed", logging.WARNING, error=self.sighting.error
                )
        else:
            self.sighting = observe(before, self._clock(), answers, digests)
            self._log_change(before, settings, names)
        if self.sighting != before:
            await asyncio.to_thread(self._keys.save_sighting, self.sighting)

    def _read_keys(self) -> tuple[bytes, bytes]:
        current, standby = self._keys.current_pem(), self._keys.standby_pem()
        if current is None or standby is None:
            raise FileNotFoundError(f"{self._keys.directory}: a DANE key went missing")
        return current, standby

    def _log_change(self, before: Sighting, settings: AcmeSettings, names: list[str]) -> None:
        after = self.sighting
        if after.visible and not before.visible:
            log_event(
                log,
                "acme_dane_standby_seen",
                names=names,
                ttl=after.ttl,
                secure=after.secure,
                ready_at=_iso(after.ready_at(settings.dane_margin)),
            )
        elif before.visible and not after.visible:
            log_event(log, "acme_dane_standby_lost", logging.WARNING, names=names)

    async def key_for_order(self, settings: AcmeSettings, reason: str) -> tuple[bytes, bool]:
        """The key of the next certificate, and whether it is the standby key
        (a switch). The key in use otherwise, whatever its type: a DANE
        client knows no other."""
        current, standby = await asyncio.to_thread(self._read_keys)
        if self.ready(settings):
            return standby, True
        log_event(
            log,
            "acme_dane_standby_not_ready",
            reason=reason,
            visible=self.sighting.visible,
            ready_at=_iso(self.sighting.ready_at(settings.dane_margin)),
            error=self.sighting.error,
        )
        return current, False

    async def switched(self, settings: AcmeSettings) -> None:
        """After the certificate with the standby key is committed: a new
        standby key, the answered request removed."""
        old = self._current
        await asyncio.to_thread(self._keys.promoted, settings.key_type, self.requested)
        log_event(
            log,
            "acme_key_rollover",
            old=old.sha256.hex()[:16] if old else None,
            new=self._standby.sha256.hex()[:16] if self._standby else None,
        )
        self._standby = None
        self._current = None
        self.sighting = Sighting()
        self.requested = None

    def status(self, settings: AcmeSettings) -> dict[str, Any]:
        sighting = self.sighting
        return {
            "current": self._current.sha256.hex() if self._current else None,
            "standby": self._standby.sha256.hex() if self._standby else None,
            "standby_visible": sighting.visible,
            "standby_secure": sighting.secure,
            "first_seen": sighting.first_seen,
            "ttl": sighting.ttl,
            "ready_at": sighting.ready_at(settings.dane_margin),
            "checked": sighting.checked,
            "lookup_error": sighting.error,
            "rollover_requested": self.requested,
        }
