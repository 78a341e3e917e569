"""A safe DANE-EE key rollover for the ACME certificate (issue 22 §3).

A TLSA record "3 1 1" names the certificate's public key (rfc7672:3.1.1:
DANE-EE ignores the rest of the certificate), so a new key must be in DNS
before a certificate with it is served, long enough for every cache that
held the old record set to have let it go (rfc6698:A.4, a "minor"
rollover). With ``[acme] dane = true`` the server keeps two keys:

* the key in use, ``privkey.pem``: made at the first start, before any
  certificate (the placeholder serves it too), and reused by every renewal;
* the standby key, ``privkey.standby.pem``, made ahead of time. ``estafeta
  tls tlsa --json`` lists both, and the dns_records role publishes a TLSA
  record for each.

The server itself looks the standby key up in DNS, through its own
(validating) resolver, at every ``_PORT._tcp.HOSTNAME`` of ``dane_ports``,
and writes what it saw to ``dane.json``. A certificate is made with the
standby key only when the lookup made just before finds it at every port,
every lookup since ``first_seen`` found it, and ``first_seen + ttl +
dane_margin`` has passed, ``ttl`` being the largest TTL those answers had.

Why that is late enough: a resolver's first answer with the new record set,
at ``first_seen`` with ``r`` seconds of its TTL left, comes from a fetch made
``TTL - r`` seconds before, after the record was published; so
``first_seen + r`` is at least the publication plus the full TTL, when every
cache that held the old set has let it go (rfc2181:8). ``dane_margin`` is
for what TTLs do not bound: resolvers that answer from expired records
(rfc8767; unbound's serve-expired), secondaries that got the change late.
Until then every renewal keeps the key in use: a switch is never early, at
worst it does not happen. A renewal that finds the standby ready switches;
so does ``estafeta tls rollover`` (the file ``rollover.request``; its mtime
is the request), which renews as soon as the standby is ready.

Why the server confirms, not the role: what matters is what resolvers
answer, whatever published the record (nsupdate, an API, a zone file
edited by hand) and however long the provider's secondaries took; the
server asks through the resolver it uses for mail, needs no clock shared
with the controller, and needs no run of the role to move on.

Files, besides those of files.py (mode 0600, in the 0700 state directory):

* ``privkey.standby.pem``: the standby key (PKCS#8 PEM);
* ``dane.json``: ``Sighting`` of the standby key, written by the server only;
* ``rollover.request``: written by ``estafeta tls rollover``, removed by the
  server after the switch it asked for.

Crash ordering of a switch: (1) the standby key is copied to
``privkey.next.pem`` and the certificate is issued and committed as
files.py says, which makes it ``privkey.pem``; (2) ``privkey.standby.pem``
is removed, ``dane.json`` replaced; (3) a new standby key is created; (4)
the request is removed if no newer one came. A crash before (1) completes
changes nothing in use; after it, ``ensure_keys`` at the next start finds a
standby equal to the key in use (or none) and makes a new one. Keys are
created with ``create_once`` (a hard link): a second process never replaces
a key another one made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization

from estafeta.acme.files import PRIVKEY, key_fits, new_private_key
from estafeta.dns import DNSTempError, Resolver
from estafeta.durable import create_once, fsync_dir, write_atomic

STANDBY_KEY = "privkey.standby.pem"
SIGHTING = "dane.json"
REQUEST = "rollover.request"
# Bounds on what DNS and the state file may hand us.
MAX_PORTS = 16
MAX_RECORDS = 64  # TLSA records per record set looked at
MAX_STATE_BYTES = 4096
# The server looks at DNS every (ttl + margin) / 4, within these bounds.
POLL_MIN = 2.0
POLL_MAX = 3600.0
# rfc6698:2.1: usage 3 DANE-EE, selector 1 SPKI, matching 1 SHA2-256, 2 SHA2-512.
DANE_EE, SPKI, SHA2_256, SHA2_512 = 3, 1, 1, 2


class DaneLookupError(Exception):
    """A TLSA lookup that did not answer (timeout, SERVFAIL: bogus or broken)."""


@dataclass(frozen=True)
class TlsaAnswer:
    """One TLSA record set: (usage, selector, matching type, data) tuples,
    its TTL, and whether the resolver validated it (the AD bit)."""

    records: frozenset[tuple[int, int, int, bytes]] = frozenset()
    ttl: int = 0
    secure: bool = False


class TlsaLookup(Protocol):
    async def __call__(self, name: str) -> TlsaAnswer:
        """The TLSA record set at ``name`` (empty for NXDOMAIN or NODATA);
        raises DaneLookupError when there is no answer."""
        ...


@dataclass(frozen=True)
class KeyDigests:
    """SHA-256 and SHA-512 of a key's SubjectPublicKeyInfo (TLSA selector 1)."""

    sha256: bytes
    sha512: bytes

    @classmethod
    def of(cls, key_pem: bytes) -> KeyDigests:
        key = serialization.load_pem_private_key(key_pem, password=None)
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(hashlib.sha256(spki).digest(), hashlib.sha512(spki).digest())

    def named_by(self, records: frozenset[tuple[int, int, int, bytes]]) -> bool:
        """Whether a DANE-EE SPKI record (3 1 1 or 3 1 2) names this key."""
        wanted = {(DANE_EE, SPKI, SHA2_256, self.sha256), (DANE_EE, SPKI, SHA2_512, self.sha512)}
        return not wanted.isdisjoint(records)


def tlsa_names(hostname: str, ports: Sequence[int]) -> list[str]:
    """rfc6698:3: the owner names ``_PORT._tcp.HOSTNAME``."""
    host = hostname.rstrip(".").lower()
    return [f"_{port}._tcp.{host}" for port in ports]


# -- what the lookups saw: a pure state machine ---------------------------------------------------


@dataclass(frozen=True)
class Sighting:
    """What the lookups said of the standby key's TLSA records (``dane.json``)."""

    standby: str = ""  # SHA-256 of the standby key's SPKI, hex: the key this is about
    first_seen: float | None = None  # since when every lookup that answered found it
    ttl: int = 0  # the largest TTL of those answers, seconds
    checked: float | None = None  # when the last lookup ran
    visible: bool = False  # the last answered lookup found it at every port
    secure: bool = False  # ... and every answer was validated (AD)
    error: str | None = None  # the last lookup's failure, when it failed

    def ready_at(self, margin: float) -> float | None:
        """When the switch may happen, if the record keeps being seen."""
        if not self.visible or self.first_seen is None:
            return None
        return self.first_seen + self.ttl + margin

    def ready(self, now: float, margin: float) -> bool:
        """A certificate may use the standby key now: the last lookup (just
        made) found it, and it has been seen for ttl + margin."""
        ready_at = self.ready_at(margin)
        return self.error is None and ready_at is not None and now >= ready_at

    def poll_interval(self, margin: float) -> float:
        return min(max((self.ttl + margin) / 4, POLL_MIN), POLL_MAX)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, standby: str) -> Sighting:
        """The sighting in ``data`` when it is about ``standby`` and well
        formed; a fresh one otherwise (nothing seen yet: the safe side)."""
        fresh = cls(standby=standby)
        if not isinstance(data, dict) or data.get("standby") != standby:
            return fresh
        first_seen, ttl, checked = data.get("first_seen"), data.get("ttl"), data.get("checked")
        error = data.get("error")
        numbers_ok = all(
            x is None
            or (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x))
            for x in (first_seen, checked)
        )
        if (
            not numbers_ok
            or not isinstance(ttl, int)
            or isinstance(ttl, bool)
            or not 0 <= ttl <= 2**31 - 1  # rfc2181:8
            or not isinstance(data.get("visible"), bool)
            or not isinstance(data.get("secure"), bool)
            or not (error is None or isinstance(error, str))
        ):
            return fresh
        return cls(
            standby=standby,
            first_seen=None if first_seen is None else float(first_seen),
            ttl=ttl,
            checked=None if checked is None else float(checked),
            visible=data["visible"],
            secure=data["secure"],
            error=error,
        )


def observe(
    sighting: Sighting, now: float, answers: Sequence[TlsaAnswer], digests: KeyDigests
) -> Sighting:
    """The sighting after a lookup of every port answered with ``answers``."""
    visible = bool(answers) and all(digests.named_by(a.records) for a in answers)
    secure = bool(answers) and all(a.secure for a in answers)
    if not visible:
        # Gone (or never there): a later sighting starts the wait again.
        return replace(
            sighting, first_seen=None, ttl=0, checked=now, visible=False, secure=secure, error=None
        )
    ttl = max(a.ttl for a in answers)
    if sighting.visible and sighting.first_seen is not None:
        first_seen, ttl = sighting.first_seen, max(ttl, sighting.ttl)
    else:
        first_seen = now
    return replace(
        sighting,
        first_seen=first_seen,
        ttl=ttl,
        checked=now,
        visible=True,
        secure=secure,
        error=None,
    )


def failed(sighting: Sighting, now: float, error: str) -> Sighting:
    """The sighting after a lookup that did not answer: not proof that the
    record is gone (the wait goes on), but no switch on it either."""
    return replace(sighting, checked=now, error=error[:300])


# -- the files --------------------------------------------------------------------------------


class DaneKeys:
    """The key in use, the standby key, the sighting and the request in one
    state directory. Blocking: call from a thread. Only the server makes
    and replaces keys; the CLI reads, and writes the request."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current = directory / PRIVKEY
        self.standby = directory / STANDBY_KEY
        self.sighting_path = directory / SIGHTING
        self.request_path = directory / REQUEST

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def current_pem(self) -> bytes | None:
        return self._read(self.current)

    def standby_pem(self) -> bytes | None:
        return self._read(self.standby)

    def ensure(self, key_type: str) -> list[str]:
        """Make the key in use (when there is none) and the standby key (when
        there is none, or it is the key in use after a switch, or not of
        ``key_type``). Returns what was made: "current", "standby"."""
        made = []
        if not self.current.exists() and create_once(self.current, new_private_key(key_type)):
            made.append("current")
        current = self.current.read_bytes()
        standby = self.standby_pem()
        if standby is not None and (
            not key_fits(standby, key_type) or KeyDigests.of(standby) == KeyDigests.of(current)
        ):
            self.standby.unlink()
            standby = None
        if standby is None and create_once(self.standby, new_private_key(key_type)):
            made.append("standby")
        return made

    def load_sighting(self, standby: KeyDigests) -> Sighting:
        hexdigest = standby.sha256.hex()
        try:
            with self.sighting_path.open("rb") as f:
                data = json.loads(f.read(MAX_STATE_BYTES + 1)[:MAX_STATE_BYTES])
        except (OSError, ValueError):
            data = None
        return Sighting.from_json(data, hexdigest)

    def save_sighting(self, sighting: Sighting) -> None:
        write_atomic(self.sighting_path, json.dumps(sighting.to_json()).encode() + b"\n")

    # -- the request of `estafeta tls rollover` ------------------------------------------------

    def requested(self) -> float | None:
        """The time of the pending request (its mtime), or None."""
        try:
            return self.request_path.stat().st_mtime
        except FileNotFoundError:
            return None

    def request(self) -> None:
        write_atomic(self.request_path, b"rollover requested\n")

    def clear_request(self, seen: float | None) -> None:
        """Remove the request the switch answered (mtime ``seen``), not a newer one."""
        if seen is not None and self.requested() == seen:
            with contextlib.suppress(FileNotFoundError):
                self.request_path.unlink()
                fsync_dir(self.directory)

    # -- the switch ------------------------------------------------------------------------------

    def promoted(self, key_type: str, request_seen: float | None) -> None:
        """Steps (2) to (4) of a switch: the standby key is the key in use now."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.standby)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sighting_path)
        fsync_dir(self.directory)
        self.ensure(key_type)
        self.clear_request(request_seen)

    def listing(self) -> list[dict[str, Any]]:
        """The keys for ``estafeta tls tlsa``: the key in use, then the standby."""
        keys = []
        for role, path in (("current", self.current), ("standby", self.standby)):
            pem = self._read(path)
            if pem is None:
                continue
            digests = KeyDigests.of(pem)
            entry: dict[str, Any] = {
                "role": role,
                "spki_sha256": digests.sha256.hex(),
                "spki_sha512": digests.sha512.hex(),
                "tlsa": f"{DANE_EE} {SPKI} {SHA2_256} {digests.sha256.hex()}",
            }
            if role == "standby":
                sighting = self.load_sighting(digests)
                entry.update(
                    {
                        "first_seen": sighting.first_seen,
                        "ttl": sighting.ttl,
                        "checked": sighting.checked,
                        "visible": sighting.visible,
                        "secure": sighting.secure,
                        "error": sighting.error,
                    }
                )
            keys.append(entry)
        return keys


# -- the real lookup ----------------------------------------------------------------------------


class DnsTlsaLookup:
    """TLSA lookups through the server's resolver (``estafeta.dns``): the
    records, their TTL and ``Answer.secure`` (the AD bit of a validating
    resolver on loopback, rfc6840:5.7, rfc4033:4.9.3). No cache of its own:
    each call asks the resolver."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def __call__(self, name: str) -> TlsaAnswer:
        try:
            answer = await self._resolver.lookup(name, "TLSA")
        except DNSTempError as exc:  # timeout, SERVFAIL, bogus (DNSBogusError)
            raise DaneLookupError(str(exc)) from None
        records = frozenset(answer.records[:MAX_RECORDS])
        return TlsaAnswer(records, answer.ttl if records else 0, answer.secure)
