"""The TLS side of outbound SMTP sessions: what the logs and TLS reports read.

Every session the deliverer (estafeta.queue.delivery) opens with a host
leaves one :class:`TLSOutcome` in its attempt's list, which goes out as
``Result.tls``, and nothing else: the same list is then handed to the TLS
report recorder (``record``; estafeta.reports.tlsrpt_recorder), so that a
session is counted once, as the logs show it.

The policy a session counts under (rfc8460:4.4 ``policy``):

- DANE applied to the host (estafeta.queue.dane; secure TLSA records):
  ``tlsa``, the policy domain the recipient domain, the host's TLSA records
  in presentation form (rfc6698:2.2) as the policy strings, the MX host as
  ``mx-host``. DANE takes precedence over MTA-STS (rfc8461:2), so such a
  session is never counted under the domain's MTA-STS policy as well;
- else the route's: the MTA-STS policy (enforce or testing, its lines and mx
  patterns), or ``no-policy-found``; a smarthost's sessions are not counted
  (they are not with the recipient domain's MX).

What is an outcome (rfc8460:4.2, 4.3):

- success: TLS negotiated, and authenticated where the policy asks;
- ``starttls-not-supported``: STARTTLS not offered, or refused (under no
  policy too: the session went out in plain text);
- a failed handshake or certificate: ``certificate-expired``,
  ``-host-mismatch``, ``-not-trusted``, ``validation-failure``
  (``classify_tls_error``), or DANE's verdict (``validation-failure``,
  ``certificate-host-mismatch``);
- ``tlsa-invalid``: every TLSA record unusable, TLS went unauthenticated
  (rfc7672:2.2: the message still goes);
- ``dnssec-invalid``: the TLSA lookup failed (SERVFAIL, bogus, a timeout),
  the host was not used;
- the domain's MTA-STS policy could not be had (``sts-policy-fetch-error``,
  ``-invalid``, ``sts-webpki-invalid``): one failure with no host, and the
  attempt's sessions are not counted (rfc8460:4.3.2.2 asks for the policy
  failure, not a guess at what the sessions were under);
- an MX host not in an enforced MTA-STS policy: a ``validation-failure``
  per such host, with no session;
- under a ``testing`` MTA-STS policy (rfc8461:5), delivered as without one:
  an unlisted MX host is a ``validation-failure``, and the certificate is
  verified after the unverified handshake (estafeta.queue.pkix) so that
  the certificate failures above are reported all the same.

The plain-text retry after a failed opportunistic handshake is not a session
of its own: the handshake's failure was its outcome. ``dane-required`` is not
produced: we have no setting that requires DANE of a domain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from estafeta.queue.dane import HostPolicy, TLSALookupError
from estafeta.queue.mtasts import Policy as STSPolicy
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt_recorder import TLSReporter

if TYPE_CHECKING:
    from estafeta.queue.client import Reply, SMTPConnection

log = logging.getLogger("estafeta.queue")


@dataclass(frozen=True)
class TLSOutcome:
    """One session with a host (or, with no ``address``, a host or a policy
    that could not be used), as the logs and TLS reports see it."""

    mx_host: str
    address: str
    policy: str  # our label: dane, dane-encrypt, mta-sts, config, smarthost, opportunistic
    report: tlsrpt.Policy | None  # what TLS reports count it under; None: not counted
    success: bool
    result_type: str = ""  # rfc8460:4.3, when not a success
    reason: str = ""  # failure-reason-code
    base_domain: str = ""  # the TLSA base domain, under DANE (for logs)
    sending_ip: str = ""  # sending-mta-ip
    helo: str = ""  # receiving-mx-helo

    @property
    def policy_type(self) -> str:
        return self.report.type if self.report is not None else tlsrpt.NO_POLICY

    @property
    def policy_strings(self) -> tuple[str, ...]:
        return self.report.strings if self.report is not None else ()


def tlsa_report(domain: str, policy: HostPolicy) -> tlsrpt.Policy:
    """rfc8460:4.4 — a DANE policy: the recipient domain, the host's TLSA
    records (presentation form), the MX host."""
    strings = tuple(str(record) for record in policy.records)
    return tlsrpt.Policy(tlsrpt.TLSA, domain, strings, (policy.host,))


def sts_report(domain: str, policy: STSPolicy) -> tlsrpt.Policy:
    """rfc8460:4.4 — an MTA-STS policy as TLS reports name it: its lines
    (the file as fetched, or rebuilt from a policy cached without them)."""
    lines = policy.lines or (
        "version: STSv1",
        f"mode: {policy.mode}",
        *(f"mx: {pattern}" for pattern in policy.mx),
        f"max_age: {policy.max_age}",
    )
    return tlsrpt.Policy(tlsrpt.STS, domain, tlsrpt.policy_lines(lines), policy.mx)


def policy_failure(
    report: tlsrpt.Policy, result_type: str, reason: str, host: str = ""
) -> TLSOutcome:
    """A policy (or an MX host under it) that could not be used: no session."""
    return TLSOutcome(host, "", "mta-sts", report, False, result_type, reason)


def lookup_failed(domain: str, exc: TLSALookupError) -> TLSOutcome:
    """rfc8460:4.3 dnssec-invalid — "no valid records were returned from the
    recursive resolver": the host is not used (rfc7672:2.2)."""
    return TLSOutcome(
        mx_host=exc.host,
        address="",
        policy="dane",
        report=tlsrpt.Policy(tlsrpt.TLSA, domain, (), (exc.host,)),
        success=False,
        result_type=tlsrpt.DNSSEC_INVALID,
        reason=("bogus: " if exc.bogus else "") + str(exc),
        base_domain=exc.base_domain,
    )


class SessionTLS:
    """The outcome of one session, appended to ``outcomes`` once."""

    def __init__(
        self,
        outcomes: list[TLSOutcome],
        domain: str,
        host_policy: HostPolicy,
        route_policy: str,
        route_report: tlsrpt.Policy | None,
        host: str,
        address: str,
    ) -> None:
        self.outcomes = outcomes
        self.dane = host_policy.mode != "none"
        self.encrypt_only = host_policy.mode == "encrypt"
        self.address = address
        report: tlsrpt.Policy | None
        if self.dane:
            label, report = host_policy.policy, tlsa_report(domain, host_policy)
        else:
            label, report = route_policy or "opportunistic", route_report
        self._outcome = TLSOutcome(
            host, address, label, report, True, base_domain=host_policy.base_domain
        )
        self.done = False

    def seen(self, conn: SMTPConnection, ehlo: Reply) -> None:
        """The session's addresses and the host's EHLO name (failure-details)."""
        sockname = conn.writer.get_extra_info("sockname")
        words = ehlo.lines[0].split() if ehlo.positive and ehlo.lines else []
        self._outcome = replace(
            self._outcome,
            sending_ip=str(sockname[0]) if isinstance(sockname, tuple) else "",
            helo=words[0] if words else "",
        )

    def success(self) -> None:
        if self.encrypt_only:
            # rfc8460:4.3 tlsa-invalid — every record unusable: TLS went
            # unauthenticated (rfc7672:2.2), a failure of the policy.
            self.failure(tlsrpt.TLSA_INVALID, "no usable TLSA record")
            return
        self._add(self._outcome)

    def failure(self, result_type: str, reason: str) -> TLSOutcome:
        outcome = replace(self._outcome, success=False, result_type=result_type, reason=reason)
        self._add(outcome)
        return outcome

    def _add(self, outcome: TLSOutcome) -> None:
        if not self.done:
            self.done = True
            self.outcomes.append(outcome)


def record(reporter: TLSReporter, outcomes: list[TLSOutcome]) -> None:
    """Each outcome to the TLS report recorder, once; a recorder's trouble
    never reaches a delivery."""
    try:
        for outcome in outcomes:
            if outcome.report is None:
                continue
            if outcome.success:
                reporter.success(outcome.report, outcome.mx_host, outcome.address)
            else:
                reporter.failure(
                    outcome.report,
                    outcome.result_type,
                    outcome.mx_host,
                    outcome.address,
                    outcome.reason,
                    sending_ip=outcome.sending_ip,
                    helo=outcome.helo,
                )
    except Exception:
        log.exception("tls session not counted")


__all__ = [
    "SessionTLS",
    "TLSOutcome",
    "lookup_failed",
    "policy_failure",
    "record",
    "sts_report",
    "tlsa_report",
]
