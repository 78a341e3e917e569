"""The spam defences of one server, built from the configuration (issue 16).

``Defences.build`` makes the pieces ``server.py`` hands to the MX listener
and the delivery layer; ``close`` ends their files. What each piece does is
said in its module: ``policy.dnsbl`` (DNS lists), ``policy.greylist`` and
``smtp.gate`` (greylisting), ``spam`` (the learning filter),
``delivery.spam`` (the per-message scan and the per-account filter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from estafeta.config import Config
from estafeta.delivery.spam import RspamdChecker, Scanner, SpamFilter
from estafeta.dns import Resolver
from estafeta.log import log_event
from estafeta.policy.dnsbl import Lists
from estafeta.policy.greylist import Greylist, GreylistStore
from estafeta.policy.greylist_cluster import SharedGreylist
from estafeta.smtp.gate import Gate
from estafeta.spam import JunkFilter
from estafeta.spam.cluster import SharedTokenStore
from estafeta.spam.rspamd import RspamdClient

if TYPE_CHECKING:
    from estafeta.cluster_node import ClusterNode

log = logging.getLogger("estafeta.server")


@dataclass
class Defences:
    lists: Lists | None
    gate: Gate | None
    junk: JunkFilter | None
    rspamd: RspamdChecker | None
    scanner: Scanner
    spam_filter: SpamFilter
    _learn: bool = False

    @classmethod
    def build(
        cls,
        config: Config,
        resolver: Resolver,
        rspamd: RspamdChecker | None = None,
        node: ClusterNode | None = None,
    ) -> Defences:
        """The pieces; on a cluster node (``node``) greylisting and the
        junk filter's statistics live in the cluster's database, shared by
        every node."""
        if rspamd is None and config.rspamd.enabled:
            rspamd = rspamd_client(config)
        dnsbl = config.dnsbl
        lists = (
            Lists(resolver, dnsbl.settings)
            if dnsbl.enabled or dnsbl.settings.domain_zones
            else None
        )
        gate: Gate | None = None
        if config.greylist.enabled:
            greylist: GreylistStore = (
                SharedGreylist(node.io, node.db, config.greylist.settings)
                if node is not None
                else Greylist(config.greylist_db, config.greylist.settings)
            )
            gate = Gate(greylist, config.greylist, trusted=config.screen.trusted)
        junk: JunkFilter | None = None
        if config.spam.enabled:
            s = config.spam.settings
            # On a cluster, the statistics every node shares (spam.cluster).
            shared = (
                SharedTokenStore(
                    node.io, node.db, max_tokens=s.max_tokens, max_trained=s.max_trained
                )
                if node is not None
                else None
            )
            junk = JunkFilter(config.spam_dir, s, store=shared)
        scanner = Scanner(
            junk=junk,
            config=config.spam,
            lists=lists,
            rspamd=rspamd,
            rspamd_config=config.rspamd,
            hostname=config.hostname,
        )
        log_event(
            log,
            "spam_defences",
            logging.INFO,
            dnsbl_zones=[z.name for z in dnsbl.settings.zones],
            domain_zones=[z.name for z in dnsbl.settings.domain_zones],
            greylist=gate is not None,
            junk_filter=junk is not None,
            rspamd=rspamd is not None,
        )
        return cls(
            lists=lists,
            gate=gate,
            junk=junk,
            rspamd=rspamd,
            scanner=scanner,
            spam_filter=SpamFilter(junk, config.spam),
            _learn=config.rspamd.learn and bool(config.rspamd.controller_url),
        )

    @property
    def rspamd_learning(self) -> RspamdClient | None:
        """The client that passes Junk moves to rspamd ([rspamd] learn)."""
        if isinstance(self.rspamd, RspamdClient) and self._learn:
            return self.rspamd
        return None

    def close(self) -> None:
        if self.gate is not None:
            self.gate.greylist.close()
        if self.junk is not None:
            self.junk.close()


def rspamd_client(config: Config) -> RspamdClient:
    """rspamd's client from [rspamd]; the controller password is read from
    ``password_file`` (check_runtime made sure it is readable), never from
    the configuration itself."""
    r = config.rspamd
    password = ""
    if r.password_file is not None:
        password = r.password_file.read_text(encoding="utf-8").strip()
    return RspamdClient(
        r.url, controller_url=r.controller_url, password=password, timeout=r.timeout
    )
