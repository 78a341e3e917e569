"""Our outbound TLS sessions, counted for the TLS reports we send (rfc8460:4).

The deliverer (estafeta.queue.delivery) tells a :class:`TLSReporter` what
became of each SMTP session it opened to a recipient domain's MX: with the
policy that applied (rfc8460:4.4 ``policy``: MTA-STS, DANE, or none found)

- ``success(policy, mx_host, ip)``: TLS negotiated as the policy asks
  (rfc8460:4.2 a successful session);
- ``failure(policy, result_type, ...)``: it was not, with one of the result
  types of rfc8460:4.3 (``tlsrpt.RESULT_TYPES``) and what is known of the
  session: the MX host and address, our address, the MX's EHLO name, a
  reason code (rfc8460:4.4 ``failure-details``).

:class:`SessionRecorder` is the server's reporter: it only adds to counters
in memory, keyed by UTC day and policy, so that recording never waits for
a disk and never fails a delivery. The server drains it into the session
database (estafeta.reports.tlsrpt_sessions) every ``FLUSH_INTERVAL``
seconds and when it stops; a crash loses at most that interval's counts.

Bounds: ``MAX_PENDING`` (day, policy) pairs between two drains (more are
dropped and counted in ``dropped``); ``MAX_DETAILS`` distinct failure
details per (day, policy): past that, failures are still counted, in a
detail row that keeps only their result type. Strings from the network
(EHLO names, TLS error texts) are cut to ``MAX_FIELD`` printable characters.
"""

from __future__ import annotations

import datetime
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from estafeta import metrics
from estafeta.address import AddressError, normalize_domain
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import Policy

FLUSH_INTERVAL = 15.0
MAX_PENDING = 10_000
MAX_DETAILS = 100
MAX_FIELD = 200

SESSIONS = metrics.TLS_SESSIONS
log = logging.getLogger("estafeta.tlsrpt")


class TLSReporter(Protocol):
    def success(self, policy: Policy, mx_host: str, ip: str) -> None: ...

    def failure(
        self,
        policy: Policy,
        result_type: str,
        mx_host: str = "",
        ip: str = "",
        detail: str = "",
        *,
        sending_ip: str = "",
        helo: str = "",
    ) -> None: ...


class NullReporter:
    """Records nothing: TLS reporting is off (``[reports] tlsrpt_send``)."""

    def success(self, *args: Any, **kwargs: Any) -> None:
        pass

    def failure(self, *args: Any, **kwargs: Any) -> None:
        pass


# result-type, sending-mta-ip, receiving-mx-hostname, receiving-ip,
# receiving-mx-helo, failure-reason-code
DetailKey = tuple[str, str, str, str, str, str]


@dataclass
class Tally:
    """The sessions of one day under one policy, since the last drain."""

    successful: int = 0
    failed: int = 0
    details: dict[DetailKey, int] = field(default_factory=dict)


Pending = dict[tuple[str, Policy], Tally]


class SessionRecorder:
    """The in-memory counters (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._pending: Pending = {}
        self.dropped = 0  # sessions not counted: too many (day, policy) pairs

    def success(self, policy: Policy, mx_host: str, ip: str) -> None:
        try:
            SESSIONS.labels("success").inc()
            tally = self._tally(policy)
            if tally is not None:
                tally.successful += 1
        except Exception:  # a bug here must not fail a delivery
            log.exception("tls session not counted")

    def failure(
        self,
        policy: Policy,
        result_type: str,
        mx_host: str = "",
        ip: str = "",
        detail: str = "",
        *,
        sending_ip: str = "",
        helo: str = "",
    ) -> None:
        try:
            self._failure(policy, result_type, (sending_ip, mx_host, ip, helo, detail))
        except Exception:  # a bug here must not fail a delivery
            log.exception("tls session not counted")

    def _failure(self, policy: Policy, result_type: str, fields: tuple[str, ...]) -> None:
        sending_ip, mx_host, ip, helo, detail = fields
        if result_type not in tlsrpt.RESULT_TYPES:
            detail = f"{result_type}: {detail}" if detail else result_type
            result_type = tlsrpt.VALIDATION_FAILURE
        SESSIONS.labels(result_type).inc()
        tally = self._tally(policy)
        if tally is None:
            return
        tally.failed += 1
        key: DetailKey = (
            result_type,
            _field(sending_ip),
            _field(mx_host).lower().rstrip("."),
            _field(ip),
            _field(helo),
            _field(detail),
        )
        if key not in tally.details and len(tally.details) >= MAX_DETAILS:
            key = (result_type, "", "", "", "", "")
        tally.details[key] = tally.details.get(key, 0) + 1

    def drain(self) -> Pending:
        """What was counted since the last drain; the counters start over."""
        pending, self._pending = self._pending, {}
        return pending

    def restore(self, pending: Pending) -> None:
        """Counts a failed write took back (the next drain has them again)."""
        for key, tally in pending.items():
            mine = self._pending.get(key)
            if mine is None:
                if len(self._pending) >= MAX_PENDING:
                    self.dropped += tally.successful + tally.failed
                    continue
                self._pending[key] = tally
                continue
            mine.successful += tally.successful
            mine.failed += tally.failed
            for detail, count in tally.details.items():
                if detail not in mine.details and len(mine.details) >= MAX_DETAILS:
                    detail = (detail[0], "", "", "", "", "")
                mine.details[detail] = mine.details.get(detail, 0) + count

    def _tally(self, policy: Policy) -> Tally | None:
        key = (utc_day(self.clock()), _canonical(policy))
        tally = self._pending.get(key)
        if tally is None:
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                return None
            tally = self._pending[key] = Tally()
        return tally


def utc_day(timestamp: float) -> str:
    """The UTC day of a time, ``YYYY-MM-DD`` (rfc8460:4.1: reports cover UTC days)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")


def _canonical(policy: Policy) -> Policy:
    """rfc8460:4.4 — the policy domain as A-labels; strings bounded."""
    try:
        domain = normalize_domain(policy.domain)
    except AddressError:
        domain = policy.domain.lower().rstrip(".")
    return Policy(
        type=policy.type,
        domain=domain,
        strings=tuple(s[: tlsrpt.MAX_STRING] for s in policy.strings[: tlsrpt.MAX_STRINGS]),
        mx_hosts=tuple(h.lower() for h in policy.mx_hosts[: tlsrpt.MAX_STRINGS]),
    )


def _field(value: str) -> str:
    text = " ".join(value.split())[:MAX_FIELD]
    return text if text.isprintable() else "".join(c for c in text if c.isprintable())


# -- our TLS errors as rfc8460:4.3 result types -----------------------------------------

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that have a result type of their own.
_VERIFY_NAMES = {
    2: "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT",
    9: "X509_V_ERR_CERT_NOT_YET_VALID",
    10: "X509_V_ERR_CERT_HAS_EXPIRED",
    18: "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT",
    19: "X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN",
    20: "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    21: "X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    23: "X509_V_ERR_CERT_REVOKED",
    24: "X509_V_ERR_INVALID_CA",
    26: "X509_V_ERR_INVALID_PURPOSE",
    62: "X509_V_ERR_HOSTNAME_MISMATCH",
}
_CERT_EXPIRED = 10
_HOSTNAME_MISMATCH = 62


def classify_tls_error(exc: ssl.SSLError) -> tuple[str, str]:
    """The rfc8460:4.3.1 result type of a failed handshake, and the
    failure-reason-code: certificate-expired, certificate-host-mismatch,
    certificate-not-trusted (the other verification errors: unknown CA,
    self-signed, incomplete chain, ...), else validation-failure (no
    shared protocol or cipher, a broken handshake)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = int(exc.verify_code or 0)
        reason = _VERIFY_NAMES.get(code) or str(exc.verify_message or exc.reason or exc)
        if code == _CERT_EXPIRED:
            return tlsrpt.CERTIFICATE_EXPIRED, reason
        if code == _HOSTNAME_MISMATCH:
            return tlsrpt.CERTIFICATE_HOST_MISMATCH, reason
        return tlsrpt.CERTIFICATE_NOT_TRUSTED, reason
    return tlsrpt.VALIDATION_FAILURE, str(exc.reason or exc)
