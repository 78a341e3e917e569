"""One delivery attempt: find the destination's hosts and hand the message over.

Routing (rfc5321:5.1): the domain's MX records in preference order (equal
preferences shuffled), or the domain itself when it has no MX but has an
address; a null MX (rfc7505) means the domain accepts no mail. With a
smarthost configured, every message goes to that host instead, with AUTH
over verified TLS.

TLS: STARTTLS whenever offered, without certificate checks ("opportunistic",
rfc7435); if the handshake fails we retry the same host in plain text, as
Postfix does. When the domain publishes an MTA-STS policy in ``enforce`` mode
(rfc8461:5), only MX hosts matching the policy are used, STARTTLS is required
and the certificate must be valid for the MX name; ``[queue] tls = "verify"``
asks that of every domain. A ``testing`` policy changes no delivery: the
certificate is verified after the (unverified) handshake only to report
what enforcing would have found (estafeta.queue.pkix, rfc8460:4.3).

DANE (rfc7672, ``estafeta.queue.dane``): when the MX answer and a host's
addresses are DNSSEC-secure, the host's TLSA records decide instead: with
usable records STARTTLS is mandatory and the certificate must match one of
them (checked before MAIL FROM; MTA-STS's certificate check is not applied to
such a host, rfc8461:2); with records but none usable, STARTTLS is mandatory
without authentication; a failed TLSA lookup makes the host unusable for now.
A host that needs TLS is never retried in plain text.

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
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from cryptography.x509.verification import Store

from estafeta.config import QueueConfig
from estafeta.dns import DNSTempError, Resolver
from estafeta.log import log_event
from estafeta.queue import dane, pkix
from estafeta.queue.client import ProtocolError, Reply, SMTPConnection
from estafeta.queue.dane import NO_DANE, HostPolicy, TLSALookupError
from estafeta.queue.mtasts import MTASTS, Policy
from estafeta.queue.tlsoutcome import (
    SessionTLS,
    TLSOutcome,
    lookup_failed,
    policy_failure,
    record,
    sts_report,
)
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt_recorder import NullReporter, TLSReporter, classify_tls_error

log = logging.getLogger("estafeta.queue")

State = Literal["sent", "temporary", "permanent"]
MAX_MX = 10
MAX_ADDRESSES = 6
DATA_TIMEOUT = 600.0
NOT_IN_POLICY = "MX host not in the MTA-STS policy"


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


class RouteError(Exception):
    def __init__(
        self, state: State, status: str, reason: str, tls: tuple[TLSOutcome, ...] = ()
    ) -> None:
        super().__init__(reason)
        self.state: State = state
        self.status = status
        self.reason = reason
        self.tls = tls  # what TLS reports count of it (a policy no MX matches)


@dataclass(frozen=True)
class Route:
    hosts: tuple[str, ...]
    port: int
    require_tls: bool  # STARTTLS (or implicit TLS) with a verified certificate
    implicit_tls: bool = False
    auth: tuple[str, str] | None = None
    policy: str = ""  # what imposed require_tls, for logs
    dnssec: bool = False  # the MX answer (or its denial) was DNSSEC-secure
    # The policy TLS reports count the sessions under; None: not counted.
    report: tlsrpt.Policy | None = None
    # Outcomes of the routing itself (an MTA-STS policy that could not be had).
    tls: tuple[TLSOutcome, ...] = ()
    # rfc8461:5 testing: the certificate is checked after an unverified
    # handshake, for TLS reports only; MX hosts the policy does not list.
    check_certificate: bool = False
    unlisted: frozenset[str] = frozenset()


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
        self.resolver = resolver
        self.config = config
        self.mta_sts = mta_sts
        self.tls_reporter: TLSReporter = tls_reporter or NullReporter()
        ca = str(config.ca_file) if config.ca_file else None
        self.verify_tls = verifying_context(ca)
        self.plain_tls = opportunistic_context()

    # -- routing ----------------------------------------------------------

    async def mx_hosts(self, domain: str) -> tuple[list[str], bool]:
        """The hosts to try, and whether the MX answer was DNSSEC-secure."""
        try:
            answer = await self.resolver.lookup(domain, "MX")
        except DNSTempError as exc:
            raise RouteError(
                "temporary", "4.4.3", f"MX lookup for {domain} failed: {exc}"
            ) from None
        if answer.nxdomain:
            raise RouteError("permanent", "5.1.2", f"domain {domain} does not exist")
        records: list[tuple[int, str]] = list(answer.records)
        if not records:
            # rfc5321:5.1 — no MX: the domain itself is the implicit MX.
            return [domain], answer.secure
        if any(exchange in ("", ".") for _, exchange in records):
            # rfc7505:3 — null MX: the domain accepts no mail.
            raise RouteError("permanent", "5.1.10", f"{domain} does not accept mail (null MX)")
        # Equal preferences are tried in random order (rfc5321:5.1).
        shuffled = random.sample(records, len(records))
        ordered = sorted(shuffled, key=lambda record: record[0])
        hosts = list(dict.fromkeys(exchange for _, exchange in ordered))[:MAX_MX]
        return hosts, answer.secure

    async def addresses(self, host: str) -> tuple[list[str], bool, str]:
        """The host's addresses; whether every answer was DNSSEC-secure; the
        CNAME-expanded name, if any (for DANE, rfc7672:2.2.2, 2.2.3)."""
        found: list[str] = []
        errors = 0
        secure = True
        canonical = ""
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.lookup(host, rdtype)
            except DNSTempError:
                errors += 1
                continue
            found.extend(answer.records)
            secure = secure and answer.secure
            canonical = canonical or answer.canonical
        if not found and errors:
            raise DNSTempError(f"address lookup for {host} failed")
        return found[:MAX_ADDRESSES], secure and errors < 2, canonical

    async def dane_policy(
        self, route: Route, host: str, secure: bool, canonical: str
    ) -> HostPolicy:
        """What DANE asks of ``host`` (rfc7672:2.2); raises TLSALookupError."""
        if not self.config.dane or self.config.relay is not None:
            return NO_DANE
        if not route.dnssec or not secure:
            # rfc7672:2.2.1, 2.2.2 — insecure MX or addresses: no TLSA lookup.
            return NO_DANE
        return await dane.discover(self.resolver, host, canonical, route.port)

    async def route(self, domain: str) -> Route:
        relay = self.config.relay
        if relay is not None:
            auth = (relay.username, relay.password()) if relay.username else None
            return Route(
                hosts=(relay.host.host,),
                port=relay.host.port,
                require_tls=True,
                implicit_tls=relay.security == "tls",
                auth=auth,
                policy="smarthost",
            )
        hosts, dnssec = await self.mx_hosts(domain)
        require_tls = self.config.tls == "verify"
        policy_name = "config" if require_tls else ""
        # rfc8460:4.4 policy-type: "no-policy-found" unless MTA-STS says otherwise.
        report: tlsrpt.Policy | None = tlsrpt.Policy(tlsrpt.NO_POLICY, domain)
        found: tuple[TLSOutcome, ...] = ()
        testing, unlisted = False, frozenset[str]()
        if self.mta_sts is not None and self.config.mta_sts:
            policy: Policy | None = await self.mta_sts.policy_for(domain)
            if policy is not None and policy.mode in ("enforce", "testing"):
                report = sts_report(domain, policy)
            elif policy is None and (failure := self.mta_sts.failure(domain)) is not None:
                # rfc8460:4.3.2.2 — one failure for the attempt, whose sessions
                # are then not counted.
                found = (policy_failure(tlsrpt.Policy(tlsrpt.STS, domain), *failure),)
                report = None
            if policy is not None and policy.mode == "enforce":
                assert report is not None
                matching = [host for host in hosts if policy.matches(host)]
                if not matching:
                    # rfc8461:5.1 — no MX matches an enforced policy: do not deliver.
                    raise RouteError(
                        "temporary",
                        "4.7.5",
                        f"no MX of {domain} matches its MTA-STS policy",
                        tuple(
                            policy_failure(report, tlsrpt.VALIDATION_FAILURE, NOT_IN_POLICY, host)
                            for host in hosts
                        ),
                    )
                hosts, require_tls, policy_name = matching, True, "mta-sts"
            elif policy is not None and policy.mode == "testing":
                # rfc8461:5 — testing: delivered as without a policy, failures
                # only reported (rfc8460:4.3).
                testing = not require_tls
                unlisted = frozenset(host for host in hosts if not policy.matches(host))
                if unlisted:
                    log_event(log, "mta_sts_testing", domain=domain, mismatched=sorted(unlisted))
        return Route(
            tuple(hosts),
            self.config.port,
            require_tls,
            policy=policy_name,
            dnssec=dnssec,
            report=report,
            tls=found,
            check_certificate=testing,
            unlisted=unlisted,
        )

    # -- the attempt ------------------------------------------------------

    async def deliver(
        self, domain: str, sender: str, recipients: Sequence[str], data: bytes
    ) -> list[Result]:
        outcomes: list[TLSOutcome] = []
        try:
            return await self._deliver(domain, sender, recipients, data, outcomes)
        finally:
            # rfc8460:4 — each session counted once, as the results show it.
            record(self.tls_reporter, outcomes)

    async def _deliver(
        self,
        domain: str,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        outcomes: list[TLSOutcome],
    ) -> list[Result]:
        try:
            route = await self.route(domain)
        except RouteError as exc:
            outcomes.extend(exc.tls)
            return [Result(r, exc.state, exc.status, exc.reason, tls=exc.tls) for r in recipients]
        outcomes.extend(route.tls)
        attempt = _Attempt(domain, sender, recipients, data, route, outcomes)
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
                    (literal, False, "") if literal else await self.addresses(host)
                )
            except DNSTempError as exc:
                last, last_status = str(exc), "4.4.3"
                continue
            if not addresses:
                last, last_status = f"{host} has no address", "4.4.4"
                continue
            try:
                policy = await self.dane_policy(route, host, secure, canonical)
            except TLSALookupError as exc:
                # rfc7672:2.2 — a failed TLSA lookup: not this host, not in plain text.
                outcomes.append(lookup_failed(domain, exc))
                last, last_status = f"{host}: TLSA lookup failed: {exc}", "4.7.5"
                _dane_failed(domain, outcomes[-1], last)
                continue
            for address in addresses:
                try:
                    results = await self._session(attempt, policy, host, address)
                except _HostFailed as exc:
                    last, last_status = f"{host}[{address}]: {exc}", exc.status
                    if policy.mode != "none" and exc.status == "4.7.5" and outcomes:
                        # No TLS, or not the certificate the TLSA records name.
                        _dane_failed(domain, outcomes[-1], str(exc))
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
                if attempt.route.require_tls or policy.mode != "none" or plain_fallback:
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
        # rfc7672:2.2 — DANE (usable records or not) makes TLS mandatory.
        require_tls = route.require_tls or policy.mode != "none"
        if conn.tls:
            tls.success()  # implicit TLS (a smarthost's port 465)
        elif not plain:
            await self._starttls(conn, route, policy, tls, require_tls)
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
        route: Route,
        policy: HostPolicy,
        tls: SessionTLS,
        require_tls: bool,
    ) -> None:
        """rfc3207 — STARTTLS when offered, and the session's TLS outcome."""
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
            await self._authenticate(conn, policy, tls)
        elif route.check_certificate:
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
            tls.failure(*found)
            log_event(log, "mta_sts_testing_tls", host=host, result=found[0], reason=found[1])

    async def _authenticate(
        self, conn: SMTPConnection, policy: HostPolicy, tls: SessionTLS
    ) -> None:
        """rfc7672:3 — the certificate must match a TLSA record, or we leave."""
        ssl_object = conn.writer.get_extra_info("ssl_object")
        chain = dane.peer_chain(ssl_object) if ssl_object is not None else []
        now = datetime.datetime.now(datetime.UTC)
        verdict = dane.verify_chain(policy.records, chain, policy.names, now)
        if not verdict.ok:
            tls.failure(verdict.result_type, verdict.reason)
            await conn.quit()
            raise _HostFailed(f"DANE authentication failed: {verdict.reason}", "4.7.5")
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
    """One delivery attempt to a domain: the message, its route, and the TLS
    outcome of each session so far."""

    domain: str
    sender: str
    recipients: Sequence[str]
    data: bytes
    route: Route
    outcomes: list[TLSOutcome] = field(default_factory=list)


def _dane_failed(domain: str, outcome: TLSOutcome, reason: str) -> None:
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
