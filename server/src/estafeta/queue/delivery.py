"""One delivery attempt: the sessions with the destination's hosts.

Where the message goes and under what TLS policy is estafeta.queue.routing's
(MX hosts, smarthost, MTA-STS, DANE); this module opens the sessions.

TLS: STARTTLS whenever offered, without certificate checks ("opportunistic",
rfc7435); if the handshake fails we retry the same host in plain text, as
Postfix does. Under an enforced MTA-STS policy (rfc8461:5) or ``[queue] tls =
"verify"`` STARTTLS is required and the certificate must be valid for the MX
name. A ``testing`` policy changes no delivery: the certificate is verified
after the (unverified) handshake only to report what enforcing would have
found (estafeta.queue.pkix, rfc8460:4.3).

DANE (rfc7672, ``estafeta.queue.dane``): with usable TLSA records STARTTLS is
mandatory and the certificate must match one of them (checked before MAIL
FROM; MTA-STS's certificate check is not applied to such a host, rfc8461:2);
with records but none usable, STARTTLS is mandatory without authentication;
a failed TLSA lookup makes the host unusable for now. A host that needs TLS
is never retried in plain text.

A message that says ``TLS-Required: No`` (rfc8689:3, estafeta.queue.requiretls)
is delivered despite MTA-STS and DANE failures: STARTTLS is still tried, an
enforced policy is applied as a testing one, DANE's verdict does not end the
session, a failed handshake is retried in plain text (rfc8689:4.2.2); each
failure is still recorded as what it was.

TLS outcomes (estafeta.queue.tlsoutcome): each session leaves one outcome in
the attempt's list, which every result carries (``Result.tls``, for the
logs) and which then goes to ``tls_reporter``, the TLS reports' recorder
(rfc8460:4, docs/tls-reports.md): one record of each session, read twice.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cryptography.x509.verification import Store

from estafeta.config import QueueConfig
from estafeta.dns import DNSTempError, Resolver
from estafeta.log import log_event
from estafeta.queue import dane, pkix, requiretls
from estafeta.queue.client import ProtocolError, Reply, SMTPConnection
from estafeta.queue.dane import NO_DANE, HostPolicy, TLSALookupError
from estafeta.queue.mtasts import MTASTS
from estafeta.queue.routing import NOT_IN_POLICY, Route, RouteError, Routes, State
from estafeta.queue.tlsoutcome import (
    SessionTLS,
    TLSOutcome,
    lookup_failed,
    record,
)
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt_recorder import NullReporter, TLSReporter, classify_tls_error

log = logging.getLogger("estafeta.queue")

DATA_TIMEOUT = 600.0


@dataclass(frozen=True)
class Result:
    """What happened to one recipient in one attempt."""

    recipient: str
    state: State
    status: str  # rfc3463 code, e.g. "2.0.0", "5.1.1", "4.4.1"
    reply: str  # the server's reply, or our description of the failure
    remote_mta: str | None = None
    # The TLS side of each host attempt, in order; the last one is the
    # session this result came from, when it came from one.
    tls: tuple[TLSOutcome, ...] = ()


def verifying_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def opportunistic_context() -> ssl.SSLContext:
    # rfc7435:1.3 — encryption without authentication beats plain text.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Deliverer:
    def __init__(
        self,
        *,
        hostname: str,
        resolver: Resolver,
        config: QueueConfig,
        mta_sts: MTASTS | None = None,
        tls_reporter: TLSReporter | None = None,
    ) -> None:
        self.hostname = hostname
        self.config = config
        self.routes = Routes(resolver, config, mta_sts)
        self.tls_reporter: TLSReporter = tls_reporter or NullReporter()
        ca = str(config.ca_file) if config.ca_file else None
        self.verify_tls = verifying_context(ca)
        self.plain_tls = opportunistic_context()

    # -- the attempt ------------------------------------------------------

    async def deliver(
        self, domain: str, sender: str, recipients: Sequence[str], data: bytes
    ) -> list[Result]:
        outcomes: list[TLSOutcome] = []
        try:
            return await self._deliver(domain, sender, recipients, data, outcomes)
        finally:
            # rfc8460:4 — each session counted once, as the results show it;
            # rfc8460:5.3 — not the sessions that deliver TLS reports.
            if not requiretls.tls_report(data):
                record(self.tls_reporter, outcomes)

    async def _deliver(
        self,
        domain: str,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        outcomes: list[TLSOutcome],
    ) -> list[Result]:
        # rfc8689:3 — TLS-Required: No; estafeta.queue.requiretls says what changes.
        tls_optional = requiretls.tls_optional(data)
        try:
            route = await self.routes.route(domain, tls_optional)
        except RouteError as exc:
            outcomes.extend(exc.tls)
            return [Result(r, exc.state, exc.status, exc.reason, tls=exc.tls) for r in recipients]
        outcomes.extend(route.tls)
        attempt = _Attempt(domain, sender, recipients, data, route, tls_optional, outcomes)
        last = "no usable mail host"
        last_status = "4.4.1"
        for host in route.hosts:
            if host == self.hostname and self.config.relay is None:
                # rfc5321:5.1 — we are an MX for it but not a local domain: a loop.
                last, last_status = f"mail for {domain} loops back to myself", "5.4.6"
                continue
            try:
                # A smarthost may be an IP address: that needs no DNS (Postfix's
                # relayhost = [192.0.2.1]); MX names always go through DNS.
                literal = _literal(host) if self.config.relay is not None else []
                addresses, secure, canonical = (
                    (literal, False, "") if literal else await self.routes.addresses(host)
                )
            except DNSTempError as exc:
                last, last_status = str(exc), "4.4.3"
                continue
            if not addresses:
                last, last_status = f"{host} has no address", "4.4.4"
                continue
            try:
                policy = await self.routes.dane_policy(route, host, secure, canonical)
            except TLSALookupError as exc:
                outcomes.append(lookup_failed(domain, exc))
                reason = f"{host}: TLSA lookup failed: {exc}"
                _dane_failed(domain, outcomes[-1], reason, tls_optional)
                if not tls_optional:
                    # rfc7672:2.2 — a failed TLSA lookup: not this host, not in plain text.
                    last, last_status = reason, "4.7.5"
                    continue
                policy = NO_DANE  # rfc8689:4.2.2 — the host all the same
            for address in addresses:
                try:
                    results = await self._session(attempt, policy, host, address)
                except _HostFailed as exc:
                    last, last_status = f"{host}[{address}]: {exc}", exc.status
                    if policy.mode != "none" and exc.status == "4.7.5" and outcomes:
                        # No TLS, or not the certificate the TLSA records name.
                        _dane_failed(domain, outcomes[-1], str(exc), False)
                    if exc.final:
                        return [
                            Result(r, "permanent", exc.status, last, host, tuple(outcomes))
                            for r in recipients
                        ]
                    continue
                return [replace(result, tls=tuple(outcomes)) for result in results]
        state: State = "permanent" if last_status.startswith("5") else "temporary"
        return [Result(r, state, last_status, last, tls=tuple(outcomes)) for r in recipients]

    async def _session(
        self, attempt: _Attempt, policy: HostPolicy, host: str, address: str
    ) -> list[Result]:
        plain_fallback = False
        while True:
            try:
                return await self._try(attempt, policy, host, address, plain_fallback)
            except _TLSFailed as exc:
                if plain_fallback or _tls_required(attempt, policy):
                    raise _HostFailed(f"TLS failed: {exc}", "4.7.5") from None
                log_event(
                    log, "tls_fallback", logging.WARNING, host=host, address=address, error=str(exc)
                )
                # The plain-text retry is no session of its own for TLS reports:
                # the failed handshake was this session's outcome.
                plain_fallback = True

    async def _try(
        self, attempt: _Attempt, policy: HostPolicy, host: str, address: str, plain: bool
    ) -> list[Result]:
        route = attempt.route
        tls = SessionTLS(
            attempt.outcomes, attempt.domain, policy, route.policy, route.report, host, address
        )
        try:
            conn, greeting = await SMTPConnection.open(
                address,
                route.port,
                time_limit=self.config.connect_timeout,
                peer_name=host,
                source_address=self.config.source_address,
                tls=self.verify_tls if route.implicit_tls else None,
            )
        except ssl.SSLError as exc:
            tls.failure(*classify_tls_error(exc))
            raise _HostFailed(f"TLS failed: {exc}", "4.7.5") from None
        except (OSError, TimeoutError, ProtocolError) as exc:
            raise _HostFailed(_describe(exc), "4.4.1") from None
        try:
            return await self._transaction(conn, greeting, attempt, policy, tls, plain)
        except (_HostFailed, _TLSFailed):
            conn.abort()
            raise
        except ssl.SSLError as exc:
            conn.abort()
            raise _TLSFailed(str(exc)) from None
        except (OSError, TimeoutError, ProtocolError) as exc:
            conn.abort()
            raise _HostFailed(_describe(exc), "4.4.2") from None

    async def _transaction(
        self,
        conn: SMTPConnection,
        greeting: Reply,
        attempt: _Attempt,
        policy: HostPolicy,
        tls: SessionTLS,
        plain: bool,
    ) -> list[Result]:
        route, data = attempt.route, attempt.data
        sender, recipients = attempt.sender, attempt.recipients
        host = conn.peer_name
        if greeting.code != 220:
            await conn.quit()
            # rfc5321:3.1 — a 554 greeting: this host takes no mail from us; try the
            # next one, and retry later if none will (Postfix defers too).
            raise _HostFailed(f"greeting: {greeting}", "4.4.1")
        reply = await conn.ehlo(self.hostname)
        if not reply.positive:
            await conn.quit()
            raise _HostFailed(f"EHLO: {reply}", "4.5.0")
        tls.seen(conn, reply)
        require_tls = _tls_required(attempt, policy)
        if conn.tls:
            tls.success()  # implicit TLS (a smarthost's port 465)
        elif not plain:
            await self._starttls(conn, attempt, policy, tls, require_tls)
        if require_tls and not conn.tls:
            await conn.quit()
            label = policy.policy or route.policy or "opportunistic"
            raise _HostFailed(f"STARTTLS not offered ({label} requires TLS)", "4.7.5")
        if route.auth is not None:
            reply = await conn.auth_plain(*route.auth)
            if reply.code != 235:
                await conn.quit()
                # A refused login is our configuration's fault, not the message's:
                # defer, never bounce (Postfix's smtp_sasl_auth_soft_bounce = yes),
                # so that mail waits while the operator fixes the password.
                raise _HostFailed(f"AUTH: {reply}", "4" + reply.status("7.8")[1:])
        options = []
        size_limit = conn.extensions.get("SIZE", "")
        if size_limit.isdigit() and 0 < int(size_limit) < len(data):
            await conn.quit()
            raise _HostFailed(
                f"message of {len(data)} bytes exceeds the limit of {host} ({size_limit})",
                "5.3.4",
                final=True,
            )
        if "SIZE" in conn.extensions:
            options.append(f"SIZE={len(data)}")
        if "8BITMIME" in conn.extensions and any(b > 127 for b in data):
            options.append("BODY=8BITMIME")
        needs_utf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if needs_utf8:
            if "SMTPUTF8" not in conn.extensions:
                await conn.quit()
                # rfc6531:3.2 — cannot be downgraded.
                raise _HostFailed(f"{host} does not support SMTPUTF8", "5.6.7", final=True)
            options.append("SMTPUTF8")
        mail_reply, rcpt_replies = await conn.envelope(sender, recipients, options)
        if not mail_reply.positive:
            await conn.quit()
            final = mail_reply.code // 100 == 5
            raise _HostFailed(f"MAIL FROM: {mail_reply}", mail_reply.status("1.0"), final=final)
        results: dict[str, Result] = {}
        accepted: list[str] = []
        for rcpt, rcpt_reply in zip(recipients, rcpt_replies, strict=True):
            if rcpt_reply.positive:
                accepted.append(rcpt)
            else:
                results[rcpt] = _result(rcpt, rcpt_reply, host, "1.0")
        if accepted:
            reply = await conn.data(data, DATA_TIMEOUT)
            for rcpt in accepted:
                results[rcpt] = _result(rcpt, reply, host, "0.0")
        await conn.quit()
        return [results[rcpt] for rcpt in recipients]

    async def _starttls(
        self,
        conn: SMTPConnection,
        attempt: _Attempt,
        policy: HostPolicy,
        tls: SessionTLS,
        require_tls: bool,
    ) -> None:
        """rfc3207 — STARTTLS when offered, and the session's TLS outcome."""
        route = attempt.route
        if "STARTTLS" not in conn.extensions:
            tls.failure(tlsrpt.STARTTLS_NOT_SUPPORTED, "STARTTLS not offered")
            return
        context, server_name = self._tls_for(route, policy)
        try:
            reply = await conn.starttls(context, server_name)
        except ssl.SSLError as exc:
            tls.failure(*classify_tls_error(exc))
            raise _TLSFailed(str(exc)) from None
        if reply.code != 220:
            tls.failure(tlsrpt.STARTTLS_NOT_SUPPORTED, f"STARTTLS refused: {reply}")
            if require_tls:
                await conn.quit()
                raise _HostFailed(f"STARTTLS refused: {reply}", "4.7.5")
            return
        if policy.mode == "dane":
            await self._authenticate(conn, attempt, policy, tls)
        elif route.unenforced:
            self._check_certificate(conn, route, tls)
        tls.success()  # unless a failure was recorded
        reply = await conn.ehlo(self.hostname)
        if not reply.positive:
            await conn.quit()
            raise _HostFailed(f"EHLO after STARTTLS: {reply}", "4.5.0")

    def _tls_for(self, route: Route, policy: HostPolicy) -> tuple[ssl.SSLContext, str]:
        """The TLS context and SNI for STARTTLS with this host."""
        if policy.mode == "dane" or (policy.mode == "encrypt" and not route.require_tls):
            # rfc7672:8.1 — SNI is the TLSA base domain; DANE checks, not PKIX.
            return self.plain_tls, policy.base_domain
        return (self.verify_tls if route.require_tls else self.plain_tls), ""

    @functools.cached_property
    def trust_store(self) -> Store | None:
        """The anchors of the verifying context (system CAs, ``ca_file``)."""
        return pkix.trust_store(self.verify_tls.get_ca_certs(binary_form=True))

    def _check_certificate(self, conn: SMTPConnection, route: Route, tls: SessionTLS) -> None:
        """rfc8461:5 testing — the handshake did not verify the certificate;
        what verifying it (rfc8461:4.2) would have found is recorded, and
        the session goes on as it would have without a policy."""
        host = conn.peer_name
        if host in route.unlisted:
            # rfc8461:4.1 — not an MX host the policy lists.
            tls.failure(tlsrpt.VALIDATION_FAILURE, NOT_IN_POLICY)
            return
        ssl_object = conn.writer.get_extra_info("ssl_object")
        chain = dane.peer_chain(ssl_object) if ssl_object is not None else []
        now = datetime.datetime.now(datetime.UTC)
        found = pkix.check(chain, self.trust_store, host, now)
        if found is not None:
            outcome = tls.failure(*found)
            log_event(
                log,
                "mta_sts_unenforced",
                why=route.unenforced,
                host=host,
                address=outcome.address,
                result=found[0],
                reason=found[1],
            )

    async def _authenticate(
        self, conn: SMTPConnection, attempt: _Attempt, policy: HostPolicy, tls: SessionTLS
    ) -> None:
        """rfc7672:3 — the certificate must match a TLSA record, or we leave
        (unless the message says TLS-Required: No, rfc8689:4.2.2)."""
        ssl_object = conn.writer.get_extra_info("ssl_object")
        chain = dane.peer_chain(ssl_object) if ssl_object is not None else []
        now = datetime.datetime.now(datetime.UTC)
        verdict = dane.verify_chain(policy.records, chain, policy.names, now)
        if not verdict.ok:
            outcome = tls.failure(verdict.result_type, verdict.reason)
            reason = f"DANE authentication failed: {verdict.reason}"
            if attempt.tls_optional:
                _dane_failed(attempt.domain, outcome, reason, True)
                return
            await conn.quit()
            raise _HostFailed(reason, "4.7.5")
        assert verdict.record is not None
        record = verdict.record
        log_event(
            log,
            "dane_verified",
            host=policy.host,
            address=tls.address,
            base=policy.base_domain,
            usage=record.usage,
            selector=record.selector,
            mtype=record.mtype,
        )


@dataclass
class _Attempt:
    """One delivery attempt to a domain: the message, its route, whether it
    says TLS-Required: No, and the TLS outcome of each session so far."""

    domain: str
    sender: str
    recipients: Sequence[str]
    data: bytes
    route: Route
    tls_optional: bool = False
    outcomes: list[TLSOutcome] = field(default_factory=list)


def _tls_required(attempt: _Attempt, policy: HostPolicy) -> bool:
    """Whether the session must not go on without TLS: the route says so,
    or DANE applies to the host (rfc7672:2.2, usable records or not) and
    the message does not say TLS-Required: No (rfc8689:4.2.2)."""
    return attempt.route.require_tls or (policy.mode != "none" and not attempt.tls_optional)


def _dane_failed(domain: str, outcome: TLSOutcome, reason: str, ignored: bool) -> None:
    """A DANE failure; ``ignored``: the message went on (TLS-Required: No)."""
    log_event(
        log,
        "dane_failed",
        logging.WARNING,
        domain=domain,
        host=outcome.mx_host,
        address=outcome.address,
        base=outcome.base_domain,
        result=outcome.result_type,
        reason=reason,
        **({"ignored": "tls-required-no"} if ignored else {}),
    )


def _result(rcpt: str, reply: Reply, host: str, subject: str) -> Result:
    if reply.positive:
        state: State = "sent"
    elif reply.temporary:
        state = "temporary"
    else:
        state = "permanent"
    return Result(rcpt, state, reply.status(subject), str(reply), host)


def _literal(host: str) -> list[str]:
    """``[host]`` when the smarthost is given as an IP address (no DNS lookup)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        # asyncio words it "Connect call failed (...)"; the errno says why.
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _TLSFailed(Exception):
    """A TLS handshake (or the TLS layer later) failed: its outcome is recorded."""


class _HostFailed(Exception):
    def __init__(self, reason: str, status: str, final: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        # True when the answer holds for the domain (a 5xx), not just this host.
        self.final = final
