"""``estafeta serve``: wire config, accounts, store and listeners together."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import resource
import signal
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from estafeta import metrics, sieve, srs
from estafeta.acme import AcmeSettings, CertificateManager, Challenges
from estafeta.acme.dane import DaneKeys, DnsTlsaLookup
from estafeta.acme.placeholder import placeholder
from estafeta.auth import Accounts
from estafeta.auth.cluster import SCOPE as ACCOUNTS_SCOPE
from estafeta.auth.cluster import ClusterAccounts
from estafeta.auth.connections import (
    ADDRESS,
    CROWDED_TIMEOUT,
    EVICTED_IMAP,
    EVICTED_POP3,
    PreauthPool,
    Ticket,
    report,
)
from estafeta.auth.guard import (
    Authenticator,
    ConnectionsPerIP,
    GuardPolicy,
    LoginGuard,
    LoginResult,
)
from estafeta.auth.logincache import LoginCache
from estafeta.auth.logins import LoginRecorder
from estafeta.backup.create import read_status as read_backup_status
from estafeta.cluster.counters import SendCounts
from estafeta.cluster.database import DatabaseError
from estafeta.cluster.leases import LeaseLocks
from estafeta.cluster.lockouts import SharedLockouts
from estafeta.cluster_node import ClusterNode
from estafeta.config import Config, ConfigError, Endpoint, TLSConfig, server_context
from estafeta.config_web import read_token
from estafeta.defences import Defences
from estafeta.delivery.dmarc_send import DmarcReports
from estafeta.delivery.filters import DmarcQuarantine, SieveFilter
from estafeta.delivery.forward import Forwarder
from estafeta.delivery.local import LocalDelivery
from estafeta.delivery.reports import ReportIntake
from estafeta.delivery.route import Router
from estafeta.delivery.rules import Rules
from estafeta.delivery.tlsrpt import TLSReportIntake, combine, report_sender
from estafeta.dns import DNSPythonResolver
from estafeta.imap import recent, urlfetch
from estafeta.imap.session import Session, Settings
from estafeta.log import log_event
from estafeta.managesieve import listener as managesieve
from estafeta.policy.signer import Signer
from estafeta.pop3 import session as pop3
from estafeta.queue.cluster import ClusterQueueStore
from estafeta.queue.delivery import Deliverer, verifying_context
from estafeta.queue.mtasts import MTASTS, Policy, fetch_policy
from estafeta.queue.runner import QueueRunner
from estafeta.queue.store import QueueBackend, QueueStore
from estafeta.reports.store import ReportStore
from estafeta.reports.tlsrpt_recorder import SessionRecorder
from estafeta.reports.tlsrpt_send import TLSReportRunner
from estafeta.reports.tlsrpt_sessions import SessionStore
from estafeta.reports.tlsrpt_store import TLSReportStore
from estafeta.retention import RetentionRunner
from estafeta.sieve.cluster import ClusterScriptStore
from estafeta.sieve.memory import Memory
from estafeta.sieve.scripts import Scripts, ScriptStore
from estafeta.smtp.data import DataBudget
from estafeta.smtp.errors import ErrorLimiter
from estafeta.smtp.inbound import InboundHandler
from estafeta.smtp.protocol import Connections, ImplicitTLS, SMTPProtocol
from estafeta.smtp.screen import Screen
from estafeta.smtp.submission import SendLimits, SharedSendLimits, SubmissionHandler
from estafeta.spam.training import Trainer
from estafeta.store import Store
from estafeta.store.cluster import ClusterStore
from estafeta.tlsclose import close_promptly
from estafeta.web.account import AccountPages
from estafeta.web.clientconfig import ClientSettings
from estafeta.web.connection import Limits as WebLimits
from estafeta.web.listener import HTTPListener
from estafeta.web.site import MtaSts, Site, SiteSettings

log = logging.getLogger("estafeta.server")

_SettingsT = TypeVar("_SettingsT", Settings, pop3.Settings)

# Listeners that later versions serve; configuring them now is not an error.
IMPLEMENTED = (
    "smtp",
    "submission",
    "submissions",
    "imap",
    "imaps",
    "pop3",
    "pop3s",
    "managesieve",
    "http",
    "https",
)
# Seconds between two reads of the lockouts other cluster nodes set.
GUARD_REFRESH = 3.0
# How long in-flight sessions get to finish on SIGTERM.
SHUTDOWN_GRACE = 30.0
# Open files beyond [limits] max_connections that the server may need.
OPEN_FILES_SPARE = 1024
# Longest TLS handshake on the implicit-TLS ports (asyncio's default), or
# the login / command timeout if shorter.
TLS_HANDSHAKE_TIMEOUT = 60.0


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        # Scrape-time gauges this server registered, taken back at stop().
        self._gauges: list[metrics.GaugeCollector] = []
        self.sieve_limits = sieve.Limits.from_config(config.sieve)
        # [store] backend = "cluster": accounts, indexes and scripts in
        # PostgreSQL, bodies in the object store (docs/scale.md).
        self.node: ClusterNode | None = None
        self._guard_refresh: asyncio.Task[None] | None = None
        self.accounts: Accounts
        self.store: Store
        self.scripts: Scripts
        if config.store.cluster:
            self._open_cluster(config)
        else:
            self.accounts = Accounts(
                config.accounts_db,
                config.domains,
                hasher=config.auth.hasher(),
                login_cache=LoginCache(config.auth.login_cache_lifetime),
                scram_iterations=config.auth.scram_iterations,
            )
            self.store = Store(
                config.mail_dir,
                config.hostname,
                max_mailboxes=config.limits.max_mailboxes,
                fulltext_helper=True,
            )
            # Users' Sieve scripts (rfc5228), managed over ManageSieve and the CLI.
            self.scripts = ScriptStore(
                config.sieve_dir,
                max_script_size=config.sieve.max_script_size,
                max_scripts=config.sieve.max_scripts,
                compile=lambda text: sieve.compile_script(text, limits=self.sieve_limits),
            )
        # [acme]: the server obtains and renews its certificate (estafeta.acme);
        # until the first one is issued the listeners start with a placeholder.
        self.challenges = Challenges()
        self.certificates: CertificateManager | None = None
        self._certificates_task: asyncio.Task[None] | None = None
        tls_files = config.tls
        if config.acme is not None:
            acme = config.acme
            self.certificates = CertificateManager(
                AcmeSettings(
                    directory=acme.directory,
                    names=acme.names,
                    email=acme.email,
                    challenge=acme.challenge,
                    key_type=acme.key_type,
                    ca_bundle=acme.ca_bundle,
                    retry_min=acme.retry_min,
                    retry_max=acme.retry_max,
                    reuse_key=acme.reuse_key,
                    dane=acme.dane,
                    dane_host=config.hostname,
                    dane_ports=acme.dane_ports,
                    dane_margin=acme.dane_margin,
                ),
                config.acme_dir,
                self.challenges,
                self._install_certificate,
                tlsa_lookup=DnsTlsaLookup(
                    DNSPythonResolver([(e.host, e.port) for e in config.nameservers])
                )
                if acme.dane
                else None,
            )
            if tls_files is not None and not tls_files.cert.exists():
                # With dane, the key the TLSA records name from the start (estafeta.acme.dane).
                key_pem = None
                if acme.dane:
                    config.acme_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    keys = DaneKeys(config.acme_dir)
                    keys.ensure(acme.key_type)
                    key_pem = keys.current_pem()
                cert, key = placeholder(config.acme_dir, acme.names, key_pem)
                tls_files = TLSConfig(cert=cert, key=key)
        self.tls: ssl.SSLContext | None = server_context(tls_files) if tls_files else None
        auth = config.auth
        # One guard for every protocol: failures on IMAP count for POP3 and SMTP.
        self.authenticator = Authenticator(
            self.accounts,
            LoginGuard(
                GuardPolicy(
                    ip_max_failures=auth.ip_max_failures,
                    account_max_failures=auth.account_max_failures,
                    window=auth.failure_window,
                    lockout=auth.lockout,
                    delay_base=auth.delay_base,
                    max_delay=auth.max_delay,
                    exempt=auth.exempt,
                    pair_max_failures=auth.pair_max_failures,
                ),
                # A cluster's lockouts every node honours (estafeta.cluster.lockouts).
                shared=SharedLockouts(self.node.io, self.node.db) if self.node else None,
            ),
            history=LoginRecorder(self.accounts),  # login history, written once a second
        )
        self.per_ip = ConnectionsPerIP(config.limits.max_connections_per_ip, auth.exempt)
        # Connections not logged in yet, over every listener (item 10 of #14).
        self.preauth = PreauthPool(
            config.limits.max_preauth_connections, config.limits.max_preauth_per_ip, auth.exempt
        )
        self.connections = Connections(
            config.limits.max_connections, per_ip=self.per_ip, preauth=self.preauth
        )
        self._servers: list[asyncio.Server] = []
        # [listen] http and https (estafeta.web.site): MTA-STS policies (the
        # dns_records role's files next to the configuration, else [mta_sts]),
        # client autoconfiguration, /healthz, /metrics.
        self.https_tls: ssl.SSLContext | None = None
        if tls_files:
            self.https_tls = server_context(tls_files)
            self.https_tls.set_alpn_protocols(["http/1.1"])  # rfc7301:3.2
        site_settings = _site_settings(config)
        # The account pages (estafeta.web.account): every path Site does not serve.
        self._account_pages = AccountPages(
            accounts=self.accounts,
            authenticator=self.authenticator,
            scripts=self.scripts,
            store=self.store,
            hostname=config.hostname,
            client=site_settings.client,
            default_quota=config.limits.quota or None,
        )
        self._site = Site(site_settings, health=self._health, pages=self._account_pages)
        self._site.acme_http01 = self.challenges.http01_response
        self._http_listeners: list[HTTPListener] = []
        self._imap_sessions: set[Session] = set()
        self._pop3_sessions: set[pop3.Session] = set()
        # rfc1939:8 one session per maildrop: across nodes in a cluster (leases).
        self._pop3_locks: pop3.MaildropLocks = (
            LeaseLocks(self.node.io, self.node.db, config.store.node)
            if self.node is not None
            else pop3.Locks()
        )
        self._managesieve: list[managesieve.Listener] = []
        self.resolver = DNSPythonResolver([(e.host, e.port) for e in config.nameservers])
        self.queue: QueueBackend = (
            ClusterQueueStore(
                self.node.io, self.node.db, config.store.node, lease=config.store.queue_lease
            )
            if self.node is not None
            else QueueStore(config.queue_dir)
        )
        self.signer = Signer(config.dkim_dir)
        srs_secret = srs.load_secret(config.data_dir / "srs.key")
        self.router = Router(self.accounts, srs_secret)
        self.forwarder = Forwarder(
            queue=self.queue,
            signer=self.signer,
            srs_secret=srs_secret,
            authserv_id=config.hostname,
            wake=lambda: self.runner.wake(),
        )
        # The global scripts, compiled now: an error stops the start with
        # the file, line and column (estafeta check reports the same).
        self.rules = Rules(config.sieve, self.scripts, self.sieve_limits)
        # Vacation and duplicate records (no domain directory starts with ".").
        self.memory = Memory(config.sieve_dir / ".memory.db")
        # Blocklists, greylisting, the learning filter, rspamd (issue 16).
        self.defences = Defences.build(config, self.resolver, node=self.node)
        # [reports] dmarc_address: DMARC aggregate reports stored, not delivered.
        self.report_intake: ReportIntake | None = None
        if config.reports.dmarc_address:
            self.report_intake = ReportIntake(
                config.reports.dmarc_address,
                ReportStore(config.dmarc_reports_db, config.reports.retention),
            )
        # [reports] tlsrpt_address: TLS reports (rfc8460) stored, not delivered.
        self.tls_intake: TLSReportIntake | None = None
        if config.reports.tlsrpt_address:
            self.tls_intake = TLSReportIntake(
                config.reports.tlsrpt_address,
                TLSReportStore(config.tlsrpt_reports_db, config.reports.retention),
            )
        self.intakes = combine(self.report_intake, self.tls_intake)
        # IMAP Junk moves and $Junk/$NotJunk, trained in the background.
        self.trainer = Trainer(self.defences.junk, self.defences.rspamd_learning)
        self.delivery = LocalDelivery(
            hostname=config.hostname,
            store=self.store,
            router=self.router,
            queue=self.queue,
            wake_queue=lambda: self.runner.wake(),
            forwarder=self.forwarder,
            signer=self.signer,
            memory=self.memory,
            filters=[
                DmarcQuarantine(),
                self.defences.spam_filter,
                SieveFilter(
                    scripts_for=self.rules.scripts_for,
                    remote_scripts=self.node is not None,
                    limits=self.sieve_limits,
                    memory=self.memory,
                    hostname=config.hostname,
                    addresses_of=self.router.addresses_of,
                    includes=self.rules.include,
                    mailbox_exists=self.store.has_mailbox,
                ),
            ],
            quota_for=self._quota_for,
            over_quota=config.delivery.over_quota,
            intake=self.intakes,
        )
        queue_config = config.queue
        verify = verifying_context(str(queue_config.ca_file) if queue_config.ca_file else None)

        async def fetch(domain: str) -> str:
            return await fetch_policy(
                domain, resolver=self.resolver, ssl_context=verify, port=queue_config.mta_sts_port
            )

        mta_sts = MTASTS(self.resolver, _StoreCache(self.queue), fetcher=fetch)
        # [reports] tlsrpt_send: our TLS sessions counted, daily reports sent (rfc8460).
        self.tls_reports: TLSReportRunner | None = None
        recorder: SessionRecorder | None = None
        if config.reports.tlsrpt_send:
            recorder = SessionRecorder()
            self.tls_reports = TLSReportRunner(
                recorder,
                SessionStore(config.tls_sessions_db),
                report_sender(
                    config, self.resolver, self.queue, self.signer, lambda: self.runner.wake()
                ),
            )
        self.runner = QueueRunner(
            store=self.queue,
            deliverer=Deliverer(
                hostname=config.hostname,
                resolver=self.resolver,
                config=queue_config,
                mta_sts=mta_sts,
                tls_reporter=recorder,
            ),
            config=queue_config,
            hostname=config.hostname,
            local=self.delivery,
        )
        self._runner_task: asyncio.Task[None] | None = None
        self.retention = RetentionRunner(config.retention, self.accounts, self.store)
        # [reports] dmarc_send: made in start(), with the resolver then in place.
        self.dmarc_reports: DmarcReports | None = None

    def _quota_for(self, account: str) -> int | None:
        """The account's own quota (``estafeta user quota``), else the global one."""
        own = self.accounts.get_quota(account)
        limit = own if own > 0 else self.config.limits.quota
        return limit if limit > 0 else None

    async def _authenticate(self, user: str, password: str, peer_ip: str) -> LoginResult:
        return await self.authenticator.login(user, password, "smtp", peer_ip)

    def _open_cluster(self, config: Config) -> None:
        """The cluster node's parts; a database that cannot be used stops
        the start with what is wrong (the URL, never the password)."""
        node = ClusterNode(config)
        try:
            node.open()
        except DatabaseError as exc:
            raise ConfigError(config.path, "store.database", str(exc)) from None
        self.node = node
        accounts = ClusterAccounts(
            config.accounts_db,
            config.domains,
            io=node.io,
            db=node.db,
            hasher=config.auth.hasher(),
            login_cache=LoginCache(config.auth.login_cache_lifetime),
            scram_iterations=config.auth.scram_iterations,
        )
        store = ClusterStore(
            config.data_dir / "replicas",
            config.hostname,
            io=node.io,
            db=node.db,
            bodies=node.bodies(),
            listen=False,
            max_mailboxes=config.limits.max_mailboxes,
        )
        self.scripts = ClusterScriptStore(
            node.io,
            node.db,
            max_script_size=config.sieve.max_script_size,
            max_scripts=config.sieve.max_scripts,
            compile=lambda text: sieve.compile_script(text, limits=self.sieve_limits),
        )
        self.accounts, self.store = accounts, store
        node.route(ACCOUNTS_SCOPE, lambda _scope: accounts.changed_elsewhere())
        node.route_rest(store.changed_elsewhere, store.resync)

    async def _refresh_guard(self) -> None:
        """A cluster's lockouts set by other nodes, into this node's cache
        (estafeta.cluster.lockouts), every few seconds."""
        while True:
            await asyncio.sleep(GUARD_REFRESH)
            with contextlib.suppress(Exception):  # the guard logs an outage itself
                await self.authenticator.guard.refresh()

    def _burl(self, url: str, account: str) -> bytes | None:
        """rfc4468 BURL on submission: what a URLAUTH IMAP URL names, for the
        submission server acting for ``account`` (in a thread)."""
        return urlfetch.resolve(self.store, self.accounts, url, user=None, submitter=account)

    async def start(self) -> None:
        self.store.start()
        if self.node is not None:
            self.node.start()
            self._guard_refresh = asyncio.create_task(self._refresh_guard())
        loop = asyncio.get_running_loop()
        intake = self.report_intake
        if intake is not None and not self.router.resolve(intake.address).found:
            # The MX refuses mail to it (550): reports would never arrive.
            log_event(
                log,
                "dmarc_address_unknown",
                logging.WARNING,
                address=intake.address,
                hint="create it as an account or an alias: estafeta user add / alias add",
            )
        if self.config.reports.dmarc_send:
            # DMARC aggregate reports about the mail the MX evaluated (issue 22).
            self.dmarc_reports = DmarcReports.build(
                hostname=self.config.hostname,
                domains=tuple(self.config.domains),
                reports=self.config.reports,
                path=self.config.dmarc_evaluations_db,
                queue=self.queue,
                signer=self.signer,
                resolver=self.resolver,
                wake=self.runner.wake,
                report_address=(
                    self.intakes.wants if self.intakes is not None else lambda address: False
                ),
            )
            if not self.config.inbound.authenticate:
                # Nothing is evaluated, so nothing will be reported.
                log_event(log, "dmarc_send_idle", logging.WARNING, hint="[inbound] authenticate")
        if self.tls_intake is not None and not self.router.resolve(self.tls_intake.address).found:
            log_event(
                log,
                "tlsrpt_address_unknown",
                logging.WARNING,
                address=self.tls_intake.address,
                hint="create it as an account or an alias: estafeta user add / alias add",
            )
        handler = InboundHandler(
            hostname=self.config.hostname,
            delivery=self.delivery,
            max_recipients=self.config.limits.max_recipients,
            resolver=self.resolver if self.config.inbound.authenticate else None,
            dmarc_reject=self.config.inbound.dmarc_reject,
            gate=self.defences.gate,
            scanner=self.defences.scanner,
            recorder=self.dmarc_reports.recorder if self.dmarc_reports else None,
        )
        submission = SubmissionHandler(
            hostname=self.config.hostname,
            delivery=self.delivery,
            signer=self.signer,
            max_recipients=self.config.limits.max_recipients,
            strip_client_ip=self.config.submission.strip_client_ip,
            limits=(
                SharedSendLimits(
                    SendCounts(self.node.io, self.node.db),
                    messages_per_hour=self.config.submission.max_messages_per_hour,
                    recipients_per_message=self.config.submission.max_recipients_per_message,
                )
                if self.node is not None
                else SendLimits(
                    messages_per_hour=self.config.submission.max_messages_per_hour,
                    recipients_per_message=self.config.submission.max_recipients_per_message,
                )
            ),
        )
        limits = self.config.limits
        # Shared by every SMTP connection, MX and submission alike (#14 items 1, 11).
        data_memory = DataBudget(limits.data_memory)
        errors = ErrorLimiter(
            soft_limit=limits.smtp_soft_error_limit,
            hard_limit=limits.smtp_hard_error_limit,
            delay=limits.smtp_error_delay,
            exempt=self.config.auth.exempt,
        )
        self._gauges.append(
            metrics.register_gauge(
                "estafeta_smtp_data_memory_bytes",
                "Message bytes SMTP DATA transfers hold in memory ([limits] data_memory): "
                "used and limit.",
                "measure",
                lambda: {"used": float(data_memory.used), "limit": float(data_memory.limit)},
            )
        )

        # The MX's connection screen (issue 16): DNS lists of the client
        # address, the pregreet test, FCrDNS and HELO signals.
        screen = Screen(
            self.config.screen,
            self.resolver,
            self.defences.lists,
            reject_score=self.config.dnsbl.reject_score,
            dns_timeout=self.config.dnsbl.settings.timeout,
        )

        def make_smtp() -> SMTPProtocol:
            return SMTPProtocol(
                handler,
                screen=screen,
                connections=self.connections,
                data_size_limit=self.config.limits.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=self.config.hostname,
                ident="ESMTP estafeta",
                tls_context=self.tls,
                require_starttls=False,
                timeout=self.config.limits.command_timeout,
                data_timeout=self.config.limits.data_timeout,
                data_memory=data_memory,
                errors=errors,
                loop=loop,
            )

        def make_submission(implicit_tls: bool) -> SMTPProtocol:
            return SMTPProtocol(
                submission,
                connections=self.connections,
                allow_auth=True,
                authenticate=self._authenticate,
                scram=self.authenticator,
                burl=self._burl,
                implicit_tls=implicit_tls,
                auth_required=True,
                auth_require_tls=not self.config.auth.allow_plaintext,
                data_size_limit=self.config.limits.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=self.config.hostname,
                ident="ESMTP estafeta",
                tls_context=None if implicit_tls else self.tls,
                require_starttls=False,
                timeout=self.config.limits.command_timeout,
                data_timeout=self.config.limits.data_timeout,
                data_memory=data_memory,
                errors=errors,
                loop=loop,
            )

        for endpoint in self.config.listen.get("smtp", ()):
            await self._listen("smtp", endpoint, make_smtp)
        for endpoint in self.config.listen.get("submission", ()):
            await self._listen("submission", endpoint, lambda: make_submission(False))

        def make_submissions() -> ImplicitTLS:
            assert self.tls is not None  # config.from_dict: submissions needs [tls]
            return ImplicitTLS(
                lambda: make_submission(True),
                self.tls,
                self.connections,
                self._handshake_timeout(self.config.limits.command_timeout),
            )

        for endpoint in self.config.listen.get("submissions", ()):
            await self._listen("submissions", endpoint, make_submissions)
        for name in ("imap", "imaps"):
            for endpoint in self.config.listen.get(name, ()):
                await self._listen_imap(name, endpoint, implicit_tls=name == "imaps")
        for name in ("pop3", "pop3s"):
            for endpoint in self.config.listen.get(name, ()):
                await self._listen_pop3(name, endpoint, implicit_tls=name == "pop3s")
        for endpoint in self.config.listen.get("managesieve", ()):
            await self._listen_managesieve(endpoint)
        for name in ("http", "https"):
            if name in self.config.listen:
                await self._listen_http(name, self.config.listen[name])
        self._register_metrics()
        for name in self.config.listen:
            if name not in IMPLEMENTED:
                log_event(
                    log,
                    "listener_unavailable",
                    logging.WARNING,
                    listener=name,
                    reason="not implemented in this version",
                )
        queue = self.config.queue
        if queue.dane and queue.relay is None and not self.resolver.validating:
            # rfc4033:4.9.3 — an AD bit is only as good as the path it came by.
            log_event(
                log,
                "dane_unavailable",
                logging.WARNING,
                reason="[dns] nameservers are not all on loopback: DNSSEC answers are "
                "not trusted and DANE never applies (run a validating resolver on 127.0.0.1)",
            )
        self._runner_task = asyncio.create_task(self.runner.run())
        if self.certificates is not None:
            self._certificates_task = asyncio.create_task(self.certificates.run())
        self.retention.start()  # daily at [retention] hour
        if self.dmarc_reports is not None:
            self.dmarc_reports.start()  # daily after UTC midnight
        if self.tls_reports is not None:
            self.tls_reports.start()  # after 00:00 UTC, and soon after start
        log_event(log, "ready", hostname=self.config.hostname, domains=self.config.domains)

    async def _listen(
        self, name: str, endpoint: Endpoint, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            # No ssl= here: port 465's ImplicitTLS counts a connection before
            # its handshake, and starts TLS itself.
            server = await loop.create_server(
                factory,
                host=endpoint.host,
                port=endpoint.port,
                reuse_address=True,
                backlog=512,
            )
        except OSError as exc:
            message = f"listen.{name}: cannot listen on {endpoint}: {exc.strerror}"
            raise OSError(exc.errno, message) from None
        self._servers.append(server)
        log_event(log, "listening", listener=name, address=str(endpoint))

    async def _listen_imap(self, name: str, endpoint: Endpoint, implicit_tls: bool) -> None:
        settings = Settings(
            hostname=self.config.hostname,
            allow_plaintext=self.config.auth.allow_plaintext,
            append_limit=self.config.limits.max_message_size,
            quota_bytes=self.config.limits.quota or None,
            login_timeout=self.config.limits.login_timeout,
            idle_timeout=self.config.limits.imap_idle_timeout,
        )

        # Plain functions that return the coroutine to run, not coroutines
        # awaiting it: two frames fewer kept by every connection for its whole
        # life (memory: 100,000 IDLE connections, issue 17).
        def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
            def run(ticket: Ticket) -> Awaitable[None]:
                session = Session(
                    reader,
                    writer,
                    accounts=self.accounts,
                    authenticator=self.authenticator,
                    store=self.store,
                    settings=_crowded(settings, ticket),
                    tls=self.tls,
                    implicit_tls=implicit_tls,
                    preauth=ticket,
                    trainer=self.trainer if self.trainer.active else None,
                )
                # In the set from now until its run() ends.
                return session.run(self._imap_sessions)

            return self._serve(
                writer,
                name,
                len(self._imap_sessions),
                b"* BYE Too many connections\r\n",
                b"* BYE Too many connections from your address\r\n",
                EVICTED_IMAP,
                implicit_tls,
                run,
            )

        await self._start_stream_server(name, endpoint, handle)

    async def _listen_pop3(self, name: str, endpoint: Endpoint, implicit_tls: bool) -> None:
        settings = pop3.Settings(
            hostname=self.config.hostname,
            allow_plaintext=self.config.auth.allow_plaintext,
            login_timeout=self.config.limits.login_timeout,
            idle_timeout=self.config.limits.pop3_idle_timeout,
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def run(ticket: Ticket) -> None:
                session = pop3.Session(
                    reader,
                    writer,
                    accounts=self.accounts,
                    authenticator=self.authenticator,
                    store=self.store,
                    settings=_crowded(settings, ticket),
                    locks=self._pop3_locks,
                    tls=self.tls,
                    implicit_tls=implicit_tls,
                    preauth=ticket,
                )
                self._pop3_sessions.add(session)
                try:
                    await session.run()
                finally:
                    self._pop3_sessions.discard(session)

            await self._serve(
                writer,
                name,
                len(self._pop3_sessions),
                b"-ERR [SYS/TEMP] Too many connections\r\n",
                b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
                EVICTED_POP3,
                implicit_tls,
                run,
            )

        await self._start_stream_server(name, endpoint, handle)

    async def _listen_managesieve(self, endpoint: Endpoint) -> None:
        """ManageSieve (rfc5804), STARTTLS only: admitted like IMAP and POP3."""
        sessions = managesieve.Listener(
            authenticator=self.authenticator,
            scripts=self.scripts,
            settings=managesieve.settings_from(self.config, sieve.SUPPORTED),
            tls=self.tls,
        )
        self._managesieve.append(sessions)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(
                writer,
                "managesieve",
                len(sessions.sessions),
                managesieve.TOO_MANY,
                managesieve.TOO_MANY_HERE,
                managesieve.EVICTED,
                False,
                lambda ticket: sessions.run(reader, writer, ticket),
            )

        await self._start_stream_server("managesieve", endpoint, handle)

    async def _listen_http(self, name: str, endpoints: tuple[Endpoint, ...]) -> None:
        https = name == "https"
        listener = HTTPListener(
            name,
            self._site.https if https else self._site.http,
            limits=WebLimits(),
            admit=self.per_ip.acquire,
            release=self.per_ip.release,
            context=(lambda: self.https_tls) if https else None,  # type: ignore[arg-type,return-value]
            challenges=self.challenges if https else None,
            handshake_timeout=self._handshake_timeout(WebLimits().head_timeout),
            hsts_max_age=self.config.web.hsts_max_age,
            proxy_networks=(
                self.config.web.proxy_protocol
                if name in self.config.web.proxy_protocol_listeners
                else ()
            ),
            max_open=self.config.limits.max_connections,
        )
        self._http_listeners.append(listener)
        for endpoint in endpoints:
            try:
                await listener.listen(endpoint.host, endpoint.port)
            except OSError as exc:
                message = f"listen.{name}: cannot listen on {endpoint}: {exc.strerror}"
                raise OSError(exc.errno, message) from None
            log_event(log, "listening", listener=name, address=str(endpoint))

    async def _serve(
        self,
        writer: asyncio.StreamWriter,
        listener: str,
        sessions: int,
        too_many: bytes,
        too_many_here: bytes,
        evicted: bytes,
        implicit_tls: bool,
        run: Callable[[Ticket], Awaitable[None]],
    ) -> None:
        """One IMAP or POP3 connection: admitted (or refused), then ``run``;
        its places given back at the end, however it ends."""
        eviction = _Eviction(writer, evicted)
        try:
            admitted = await self._admit(
                writer, listener, sessions, too_many, too_many_here, eviction, implicit_tls
            )
            if admitted is None:
                return
            ip, ticket = admitted
            try:
                work = run(ticket)
                # Not kept (with what it holds) for the connection's whole life.
                del run
                await work
            finally:
                ticket.leave()
                self.per_ip.release(ip)
        except asyncio.CancelledError:
            if not eviction.absorb():
                raise

    async def _admit(
        self,
        writer: asyncio.StreamWriter,
        listener: str,
        sessions: int,
        too_many: bytes,
        too_many_here: bytes,
        eviction: _Eviction,
        implicit_tls: bool,
    ) -> tuple[str, Ticket] | None:
        """Count a new IMAP or POP3 connection — before any TLS handshake, so
        that a client stalling handshakes on 993/995 cannot escape the
        per-address caps — and on those ports do the handshake. The client's
        address (to release at the end) and its place among the connections
        not logged in yet, or None: refused, connection closed."""
        ip = _peer_ip(writer)
        refusal = None
        ticket = None
        if sessions >= self.config.limits.max_connections:
            refusal = too_many
        elif not self.per_ip.acquire(ip):
            refusal = too_many_here
        else:
            admission = self.preauth.admit(ip)
            report(self.preauth, admission, ip, listener)
            ticket = admission.ticket
            if ticket is None:
                self.per_ip.release(ip)
                refusal = too_many_here if admission.refusal == ADDRESS else too_many
            elif admission.victim is not None:
                admission.victim.evict()
        if ticket is None:
            # On imaps/pop3s no handshake for a refused client (the costly
            # part): the close is the answer.
            if not implicit_tls and refusal is not None:
                writer.write(refusal)
            writer.close()
            return None
        ticket.evict = eviction
        if implicit_tls:
            assert self.tls is not None  # config.from_dict: imaps/pop3s need [tls]
            timeout = self._handshake_timeout(self.config.limits.login_timeout)
            if ticket.crowded:
                timeout = min(timeout, CROWDED_TIMEOUT)
            shaken = False
            try:
                await writer.start_tls(self.tls, ssl_handshake_timeout=timeout)
                close_promptly(writer.transport)
                shaken = True
            except OSError:  # ssl.SSLError, a reset, the timeout
                pass
            finally:
                if not shaken:  # failed, or evicted (cancelled) meanwhile
                    ticket.leave()
                    self.per_ip.release(ip)
                    writer.close()
            if not shaken:
                return None
        return ip, ticket

    async def _start_stream_server(
        self,
        name: str,
        endpoint: Endpoint,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            # What asyncio.start_server does, with _StreamProtocol.
            return _StreamProtocol(asyncio.StreamReader(limit=64 * 1024, loop=loop), handle, loop)

        try:
            # No ssl= here: imaps and pop3s start TLS in _admit, once counted.
            server = await loop.create_server(
                factory,
                host=endpoint.host,
                port=endpoint.port,
                reuse_address=True,
                backlog=512,
            )
        except OSError as exc:
            message = f"listen.{name}: cannot listen on {endpoint}: {exc.strerror}"
            raise OSError(exc.errno, message) from None
        self._servers.append(server)
        log_event(log, "listening", listener=name, address=str(endpoint))

    def _health(self) -> str | None:
        """None while the server takes and stores mail, else why not (/healthz)."""
        if self._runner_task is None:
            return "starting"
        if self._runner_task.done():
            return "the queue runner stopped"
        if not self._servers and not self._http_listeners:
            return "no listener"
        try:
            self.queue.depth()
        except sqlite3.Error as exc:
            return f"queue database: {exc}"
        return None

    def _register_metrics(self) -> None:
        def connections() -> dict[str, float]:
            counts = {
                "smtp": 0.0,
                "submission": 0.0,
                "imap": 0.0,
                "pop3": 0.0,
                "managesieve": 0.0,
            }
            for protocol in list(self.connections.open):
                handler = getattr(protocol, "event_handler", None)
                kind = "submission" if isinstance(handler, SubmissionHandler) else "smtp"
                counts[kind] += 1
            counts["imap"] = float(len(self._imap_sessions))
            counts["pop3"] = float(len(self._pop3_sessions))
            counts["managesieve"] = float(sum(len(m.sessions) for m in self._managesieve))
            return counts

        def queue() -> dict[str, float]:
            count, oldest = self.queue.depth()
            age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
            return {"entries": float(count), "oldest_age_seconds": age}

        def preauth() -> dict[str, float]:
            pool = self.preauth
            return {
                "open": float(pool.open),
                "addresses": float(pool.addresses),
                "evictions": float(pool.evictions),
                "refusals": float(pool.refusals),
            }

        self._gauges.append(
            metrics.register_gauge(
                "estafeta_connections",
                "Open client connections by protocol.",
                "protocol",
                connections,
            )
        )
        self._gauges.append(
            metrics.register_gauge(
                "estafeta_preauth_connections",
                "Connections not logged in yet (open, client addresses), and since the start "
                "those evicted and refused for [limits] max_preauth_connections / "
                "max_preauth_per_ip.",
                "measure",
                preauth,
            )
        )
        self._gauges.append(
            metrics.register_gauge(
                "estafeta_queue",
                "Outbound queue: entries waiting, and the age of the oldest message in seconds.",
                "measure",
                queue,
            )
        )

        if self.certificates is not None:
            self._gauges.append(
                metrics.register_gauge(
                    "estafeta_certificate_expiry_timestamp_seconds",
                    "When each name's certificate from ACME expires (Unix time).",
                    "name",
                    self.certificates.expiry,
                )
            )

        def backup_success() -> dict[str, float]:
            status = read_backup_status(self.config)
            if status is None:
                return {}
            return {str(status.get("destination", "")): float(str(status["last_success"]))}

        def backup_last() -> dict[str, float]:
            status = read_backup_status(self.config)
            if status is None:
                return {}
            return {
                "files": float(str(status.get("files", 0))),
                "bytes": float(str(status.get("octets", 0))),
                "read_bytes": float(str(status.get("read_octets", 0))),
                "uploaded_bytes": float(str(status.get("uploaded_octets", 0))),
                "new_objects": float(str(status.get("new_objects", 0))),
                "duration_seconds": float(str(status.get("seconds", 0))),
            }

        self._gauges.append(
            metrics.register_gauge(
                "estafeta_backup_last_success_timestamp_seconds",
                "When the last `estafeta backup create` succeeded (Unix time), by destination.",
                "destination",
                backup_success,
            )
        )
        self._gauges.append(
            metrics.register_gauge(
                "estafeta_backup_last",
                "The last successful backup: files and bytes in the snapshot, bytes read and "
                "uploaded, new objects, seconds it took.",
                "measure",
                backup_last,
            )
        )

    @staticmethod
    def _handshake_timeout(limit: float) -> float:
        # asyncio's default is 60 s; a shorter configured timeout wins.
        return min(TLS_HANDSHAKE_TIMEOUT, limit)

    def reload(self) -> None:
        """SIGHUP (``systemctl reload estafeta``): the ACME manager looks again
        at once; without [acme], the [tls] files are read again (a renewal by
        the tls role or certbot) and used from the next handshake on."""
        if self.certificates is not None:
            self.certificates.wake()
            log_event(log, "reload", what="acme")
        elif self.config.tls is not None:
            try:
                self._install_certificate(self.config.tls.cert, self.config.tls.key)
            except (OSError, ssl.SSLError) as exc:
                # The certificate in use stays; the error says which file.
                log_event(log, "reload_failed", logging.ERROR, error=str(exc))
            else:
                log_event(log, "reload", what="tls", cert=str(self.config.tls.cert))

    def _install_certificate(self, fullchain: Path, key: Path) -> None:
        """A new certificate from ACME, into every listener's context: the
        next handshake uses it, open connections keep theirs (OpenSSL copies
        the certificate into each connection). Tried on a scratch context
        first: a pair that does not load leaves the live contexts alone."""
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(fullchain, key)
        for context in (self.tls, self.https_tls):
            if context is not None:
                context.load_cert_chain(fullchain, key)

    async def stop(self) -> None:
        if self._certificates_task is not None:
            self._certificates_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._certificates_task
        for server in self._servers:
            server.close()
        for http_listener in self._http_listeners:
            await http_listener.close()
        for session in list(self._imap_sessions):
            session.shutdown()
        for pop3_session in list(self._pop3_sessions):
            pop3_session.shutdown()
        for listener in self._managesieve:
            listener.shutdown()
        self.connections.shutdown()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while self.connections.open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            # A session that just finished its delivery is closed too.
            self.connections.shutdown()
        await self.runner.stop()
        if self._runner_task is not None:
            await self._runner_task
        if self.tls_reports is not None:
            await self.tls_reports.stop()  # the last sessions' counts written
        await self.retention.stop()  # a run in progress ends after its batch
        if self.dmarc_reports is not None:
            await self.dmarc_reports.stop()  # before the queue closes
        # Queued deliveries and \Recent claims finish before the store closes.
        await recent.claims(self.store).drain()
        await asyncio.to_thread(self.store.stop)
        self.queue.close()
        # Password checks still running finish before the accounts close.
        await self._account_pages.close()
        await self.authenticator.close()
        self.accounts.close()
        self.memory.close()
        await self.trainer.close()
        self.defences.close()
        if self._guard_refresh is not None:
            self._guard_refresh.cancel()
        if isinstance(self._pop3_locks, LeaseLocks):
            with contextlib.suppress(Exception):
                await self._pop3_locks.close()
        if self.node is not None:
            await asyncio.to_thread(self.node.close)
        for gauge in self._gauges:
            metrics.unregister_gauge(gauge)
        log_event(log, "stopped")


def _site_settings(config: Config) -> SiteSettings:
    try:
        token = read_token(config.web.metrics_token_file)
    except OSError as exc:
        raise ConfigError(
            config.path, "web.metrics_token_file", f"cannot read: {exc.strerror}"
        ) from None
    https = config.listen.get("https", ())
    return SiteSettings(
        hostname=config.hostname,
        domains=config.domains,
        client=ClientSettings.from_listen(
            config.hostname, config.listen, starttls=config.tls is not None
        ),
        policy_dir=config.path.parent / "mta-sts",
        mta_sts=MtaSts(config.mta_sts.mode, config.mta_sts.max_age, config.mta_sts.mx),
        metrics_networks=config.web.metrics_networks,
        metrics_token=token,
        https=bool(https),
        https_port=https[0].port if https else 443,
    )


class _StreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol with a list, not a deque, for the writers
    waiting in drain(): asyncio makes a deque of 760 octets per connection
    for it, a tenth of what an idle IMAP connection costs otherwise (issue
    17); append, remove and iteration are all it is used for, and it is
    almost always empty."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(reader, connected, loop=loop)
        if isinstance(getattr(self, "_drain_waiters", None), collections.deque):
            setattr(self, "_drain_waiters", [])  # noqa: B010 — asyncio's own attribute


class _Eviction:
    """Says goodbye to an IMAP or POP3 connection that makes room for a
    newcomer among the connections not logged in yet: the protocol's goodbye
    and the close; inside a TLS handshake (implicit TLS, STARTTLS, STLS) its
    task is cancelled instead. (Closing the transport under asyncio's
    start_tls makes start_tls fail on a None of its own.)"""

    def __init__(self, writer: asyncio.StreamWriter, goodbye: bytes) -> None:
        self.writer = writer
        self.goodbye = goodbye
        self.task = asyncio.current_task()
        self.cancelled = False

    def __call__(self) -> None:
        if self.cancelled or self.writer.is_closing():
            return
        if isinstance(self.writer.transport.get_protocol(), asyncio.sslproto.SSLProtocol):
            if self.task is not None:
                self.cancelled = True
                self.task.cancel()
            return
        self.writer.write(self.goodbye)
        self.writer.close()

    def absorb(self) -> bool:
        """Was the CancelledError being handled ours? Then it ends here."""
        if not self.cancelled or self.task is None:
            return False
        self.task.uncancel()
        return True


def _crowded(settings: _SettingsT, ticket: Ticket) -> _SettingsT:
    """The settings of a connection admitted while many others had not logged
    in yet: a short login deadline, so that a flood cannot renew for free."""
    if ticket.crowded and settings.login_timeout > CROWDED_TIMEOUT:
        return dataclasses.replace(settings, login_timeout=CROWDED_TIMEOUT)
    return settings


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class _StoreCache:
    """MTA-STS policies cached in the queue database (rfc8461:5.1)."""

    def __init__(self, store: QueueBackend) -> None:
        self.store = store

    def get(self, domain: str) -> Policy | None:
        text = self.store.sts_get(domain)
        return Policy.from_json(text) if text else None

    def put(self, domain: str, policy: Policy) -> None:
        self.store.sts_put(domain, policy.to_json())


def raise_open_files(config: Config) -> int:
    """The soft limit of open files up to the hard one (a shell's 1024 would
    refuse connections long before ``[limits] max_connections``; systemd's
    LimitNOFILE sets both); a warning if it stays below what the connection
    limit needs. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    if hard == resource.RLIM_INFINITY or soft < hard:
        # Up to 2**20 (Linux's default fs.nr_open) when there is no hard limit.
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    # Every connection is a descriptor; so are the index files (three per
    # account in use), the queue, logs and listeners.
    wanted = config.limits.max_connections + OPEN_FILES_SPARE
    if soft < wanted:
        log_event(
            log,
            "open_files_limit",
            logging.WARNING,
            limit=soft,
            max_connections=config.limits.max_connections,
            hint="raise LimitNOFILE (systemd) or ulimit -n",
        )
    return soft


async def serve(config: Config) -> None:
    raise_open_files(config)
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
        await stop.wait()
        log_event(log, "stopping", grace=SHUTDOWN_GRACE)
    finally:
        await server.stop()
