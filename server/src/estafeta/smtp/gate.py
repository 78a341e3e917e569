"""Greylisting on the MX: who skips it, and the RCPT decision (rfc6647).

The list itself (``policy.greylist``) keys triplets and remembers them; this
module decides when it applies. A transaction skips greylisting when:

1. its client is in ``[screen] trusted`` or ``[greylist] allow``;
2. a DNS allow list lists its client (``session.screen.allowlisted``);
3. its MAIL FROM domain passes SPF with a mechanism other than ``all``
   (``[greylist] skip_spf_pass``): a host the domain names as its own is a
   real MTA, which retries a 451 anyway, so greylisting it costs the
   recipient minutes and stops nothing (rfc6647:5 lists such exceptions);
   ``+all`` authorises every host on the Internet and counts for nothing;
4. its MAIL FROM domain authenticated (aligned SPF or DKIM pass) a message
   delivered here before, at least ``sender_min_age`` ago (``delivered``
   remembers it).

Submission never reaches this: the gate belongs to the MX handler only.
The list's work (SQLite, or PostgreSQL on a cluster) runs in worker
threads; a database error lets the mail through (the list logs it). Most
mail comes from triplets and senders that passed before: those answers are
kept in memory for ``CACHE_SECONDS`` (at most ``CACHE_SIZE`` of each,
least recently used dropped first), so the steady
state costs no thread hop and no database read. A cached pass is never
older than the list's own refresh period, so nothing expires early.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import OrderedDict
from typing import Any

from estafeta.config_spam import GreylistConfig, Network
from estafeta.dns import Resolver
from estafeta.log import log_event
from estafeta.policy import spf
from estafeta.policy.analyze import Analysis
from estafeta.policy.dmarc import aligned
from estafeta.policy.greylist import (
    AUTO_ALLOWED,
    ERROR,
    REFRESH_AFTER,
    GreylistStore,
    client_network,
    normalize_recipient,
    normalize_sender,
)

log = logging.getLogger("estafeta.smtp")

NO = "no"  # greylisting applies
CACHE_SECONDS = min(600.0, REFRESH_AFTER)
CACHE_SIZE = 10_000


class _Recent:
    """Keys that passed, each for CACHE_SECONDS of the list's clock (bounded LRU)."""

    def __init__(self) -> None:
        self._until: OrderedDict[object, float] = OrderedDict()

    def fresh(self, key: object, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if now >= until or now < until - CACHE_SECONDS:  # expired, or the clock went back
            del self._until[key]
            return False
        self._until.move_to_end(key)
        return True

    def add(self, key: object, now: float) -> None:
        self._until[key] = now + CACHE_SECONDS
        self._until.move_to_end(key)
        while len(self._until) > CACHE_SIZE:
            self._until.popitem(last=False)


class Gate:
    def __init__(
        self, greylist: GreylistStore, config: GreylistConfig, trusted: tuple[Network, ...] = ()
    ) -> None:
        self.greylist = greylist
        self.config = config
        self.allow = (*trusted, *config.allow)
        self._passed = _Recent()  # triplets
        self._networks = _Recent()  # auto-allowed client networks
        self._senders = _Recent()  # known sender domains
        self._strangers = _Recent()  # sender domains that were not

    async def skip(
        self,
        *,
        ip: str,
        sender: str,
        helo: str,
        screen: Any,
        resolver: Resolver | None,
        hostname: str,
        transaction: Any,
    ) -> str:
        """Why this transaction skips greylisting, or ``NO``. ``transaction.spf``
        is set when SPF was checked (the DATA step reuses it)."""
        if screen is not None and getattr(screen, "trusted", False):
            return "trusted"
        if screen is not None and getattr(screen, "allowlisted", False):
            return "dns allowlist"
        if self.allow and _in(ip, self.allow):
            return "allowed network"
        if self.config.skip_spf_pass and resolver is not None and sender:
            verdict = await spf.verify(resolver, ip, sender, helo, receiver=hostname)
            transaction.spf = verdict
            if _specific_pass(verdict):
                return "spf pass"
        domain = sender.rpartition("@")[2].lower()
        if not domain:
            return NO
        now = self.greylist.now()
        if self._senders.fresh(domain, now):
            return "known sender"
        if self._strangers.fresh(domain, now):
            return NO
        if await asyncio.to_thread(self.greylist.known_sender, domain):
            self._senders.add(domain, now)
            return "known sender"
        # A domain becomes known only sender_min_age after it was first
        # remembered: an answer of "no" may wait CACHE_SECONDS too.
        self._strangers.add(domain, now)
        return NO

    async def check(self, ip: str, sender: str, rcpt: str) -> str:
        """The 451 reply for a greylisted RCPT, or "" to accept it."""
        settings = self.greylist.settings
        try:
            network = client_network(ip, settings.ipv4_prefix, settings.ipv6_prefix)
        except ValueError:  # not an IP address (a UNIX socket in a test)
            return ""
        key = (network, normalize_sender(sender), normalize_recipient(rcpt))
        now = self.greylist.now()
        if self._networks.fresh(network, now) or self._passed.fresh(key, now):
            return ""
        decision = await asyncio.to_thread(self.greylist.check, ip, sender, rcpt)
        if decision.reason == AUTO_ALLOWED:
            self._networks.add(network, now)
        elif not decision.greylisted and decision.reason != ERROR:
            self._passed.add(key, now)
        if decision.greylisted:
            log_event(
                log,
                "greylisted",
                logging.INFO,
                client=ip,
                network=decision.network,
                reason=decision.reason,
                retry_after=round(decision.retry_after),
            )
        return decision.reply

    async def delivered(self, analysis: Analysis) -> None:
        """A delivered message's domains with an aligned SPF or DKIM pass
        become known senders (greylist.remember_sender)."""
        dmarc = analysis.dmarc
        if dmarc is None or dmarc.result != "pass":
            return
        domains: set[str] = set()
        if dmarc.reason.startswith("SPF aligned") and _specific_pass(analysis.spf):
            domains.add(analysis.spf.domain)
        mode = dmarc.record.adkim if dmarc.record is not None else "r"
        for result in analysis.dkim:
            if result.result == "pass" and aligned(result.domain, dmarc.from_domain, mode):
                domains.add(result.domain)
        for domain in sorted(domains)[:4]:
            try:
                await asyncio.to_thread(self.greylist.remember_sender, domain)
            except ValueError:
                continue


def _specific_pass(verdict: spf.SPFVerdict) -> bool:
    """SPF pass of the MAIL FROM identity by a mechanism that names hosts:
    ``+all`` (or a bare ``all``) passes everyone and proves nothing."""
    if verdict.result is not spf.SPFResult.PASS or verdict.identity != "mailfrom":
        return False
    return not verdict.reason.endswith(("'all' matched", "'+all' matched"))


def _in(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)
