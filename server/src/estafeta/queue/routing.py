"""Where a message for a domain goes, and under what TLS policy.

Routing (rfc5321:5.1): the domain's MX records in preference order (equal
preferences shuffled), or the domain itself when it has no MX but has an
address; a null MX (rfc7505) means the domain accepts no mail. With a
smarthost configured, every message goes to that host instead, with AUTH
over verified TLS. At most ``MAX_MX`` hosts, ``MAX_ADDRESSES`` addresses each.

The TLS policy of the route: ``[queue] tls = "verify"``; the domain's
MTA-STS policy (rfc8461: ``enforce`` keeps only the MX hosts it lists and
requires verified TLS; ``testing``, or ``enforce`` for a message that says
TLS-Required: No (rfc8689:4.2.2), is checked but not enforced); per host,
DANE (rfc7672:2.2, estafeta.queue.dane) when the MX answer and the host's
addresses are DNSSEC-secure. What TLS reports count the sessions under
(rfc8460:4.4) comes with it, and so do the routing's own findings (an
MTA-STS policy that could not be had, MX hosts outside an enforced one).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Literal

from estafeta.config import QueueConfig
from estafeta.dns import DNSTempError, Resolver
from estafeta.log import log_event
from estafeta.queue import dane
from estafeta.queue.dane import NO_DANE, HostPolicy
from estafeta.queue.mtasts import MTASTS, Policy
from estafeta.queue.tlsoutcome import TLSOutcome, policy_failure, sts_report
from estafeta.reports import tlsrpt

log = logging.getLogger("estafeta.queue")

State = Literal["sent", "temporary", "permanent"]
MAX_MX = 10
MAX_ADDRESSES = 6
NOT_IN_POLICY = "MX host not in the MTA-STS policy"


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
    # An MTA-STS policy checked but not enforced ("testing", rfc8461:5, or
    # "tls-required-no", rfc8689:4.2.2): the certificate is verified after an
    # unverified handshake, for TLS reports only; "" when not so. And the MX
    # hosts such a policy does not list.
    unenforced: str = ""
    unlisted: frozenset[str] = frozenset()


class Routes:
    """The routes of the deliverer (see the module docstring)."""

    def __init__(self, resolver: Resolver, config: QueueConfig, mta_sts: MTASTS | None) -> None:
        self.resolver = resolver
        self.config = config
        self.mta_sts = mta_sts

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

    async def route(self, domain: str, tls_optional: bool = False) -> Route:
        """Where mail for ``domain`` goes, and under what TLS policy;
        ``tls_optional``: the message says TLS-Required: No (rfc8689:3)."""
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
        unenforced, unlisted = "", frozenset[str]()
        if self.mta_sts is not None and self.config.mta_sts:
            policy: Policy | None = await self.mta_sts.policy_for(domain)
            if policy is not None and policy.mode in ("enforce", "testing"):
                report = sts_report(domain, policy)
            elif policy is None and (failure := self.mta_sts.failure(domain)) is not None:
                # rfc8460:4.3.2.2 — one failure for the attempt, whose sessions
                # are then not counted.
                found = (policy_failure(tlsrpt.Policy(tlsrpt.STS, domain), *failure),)
                report = None
            if policy is not None and policy.mode == "enforce" and not tls_optional:
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
            elif policy is not None and policy.mode in ("enforce", "testing"):
                # rfc8461:5 testing, or an enforced policy the message asks us
                # not to obey (rfc8689:4.2.2): delivered as without a policy,
                # what enforcing would find only reported (rfc8460:4.3).
                why = "testing" if policy.mode == "testing" else "tls-required-no"
                unenforced = "" if require_tls else why
                unlisted = frozenset(host for host in hosts if not policy.matches(host))
                if unlisted:
                    log_event(
                        log,
                        "mta_sts_unenforced",
                        domain=domain,
                        why=why,
                        mismatched=sorted(unlisted),
                    )
        return Route(
            tuple(hosts),
            self.config.port,
            require_tls,
            policy=policy_name,
            dnssec=dnssec,
            report=report,
            tls=found,
            unenforced=unenforced,
            unlisted=unlisted,
        )


__all__ = ["MAX_ADDRESSES", "MAX_MX", "NOT_IN_POLICY", "Route", "RouteError", "Routes", "State"]
