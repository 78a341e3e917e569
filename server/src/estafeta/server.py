"""``estafeta serve``: wire config, accounts, store and listeners together."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable

from estafeta import srs
from estafeta.address import AddressError, normalize_address
from estafeta.auth import Accounts
from estafeta.auth.guard import (
    Authenticator,
    ConnectionsPerIP,
    GuardPolicy,
    LoginGuard,
    LoginResult,
)
from estafeta.config import Config, Endpoint, server_context
from estafeta.dns import DNSPythonResolver
from estafeta.imap.session import Session, Settings
from estafeta.log import log_event
from estafeta.message import summarize
from estafeta.policy.signer import Signer
from estafeta.pop3 import session as pop3
from estafeta.queue.delivery import Deliverer, verifying_context
from estafeta.queue.forward import Forwarder
from estafeta.queue.mtasts import MTASTS, Policy, fetch_policy
from estafeta.queue.runner import QueueRunner
from estafeta.queue.store import QueueStore
from estafeta.smtp.inbound import InboundHandler
from estafeta.smtp.protocol import Connections, SMTPProtocol
from estafeta.smtp.submission import SendLimits, SubmissionHandler
from estafeta.store import Delivery, Store, StoreError

log = logging.getLogger("estafeta.server")

# Listeners that later versions serve; configuring them now is not an error.
IMPLEMENTED = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
# How long in-flight sessions get to finish on SIGTERM.
SHUTDOWN_GRACE = 30.0


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.accounts = Accounts(config.accounts_db, config.domains, hasher=config.auth.hasher())
        self.store = Store(config.mail_dir, config.hostname)
        self.tls: ssl.SSLContext | None = server_context(config.tls) if config.tls else None
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
                )
            ),
        )
        self.per_ip = ConnectionsPerIP(config.limits.max_connections_per_ip, auth.exempt)
        self.connections = Connections(config.limits.max_connections, per_ip=self.per_ip)
        self._servers: list[asyncio.Server] = []
        self._imap_sessions: set[Session] = set()
        self._pop3_sessions: set[pop3.Session] = set()
        self._pop3_locks = pop3.Locks()
        self.resolver = DNSPythonResolver([(e.host, e.port) for e in config.nameservers])
        self.queue = QueueStore(config.queue_dir)
        self.signer = Signer(config.dkim_dir)
        self.forwarder = Forwarder(
            queue=self.queue,
            signer=self.signer,
            srs_secret=srs.load_secret(config.data_dir / "srs.key"),
            authserv_id=config.hostname,
            wake=lambda: self.runner.wake(),
        )
        queue_config = config.queue
        verify = verifying_context(str(queue_config.ca_file) if queue_config.ca_file else None)

        async def fetch(domain: str) -> str:
            return await fetch_policy(
                domain, resolver=self.resolver, ssl_context=verify, port=queue_config.mta_sts_port
            )

        mta_sts = MTASTS(self.resolver, _StoreCache(self.queue), fetcher=fetch)
        self.runner = QueueRunner(
            store=self.queue,
            deliverer=Deliverer(
                hostname=config.hostname,
                resolver=self.resolver,
                config=queue_config,
                mta_sts=mta_sts,
            ),
            config=queue_config,
            hostname=config.hostname,
            local_deliver=self._deliver_local,
            is_local=self._is_local,
        )
        self._runner_task: asyncio.Task[None] | None = None

    def _is_local(self, address: str) -> bool:
        try:
            return self.accounts.is_local_domain(normalize_address(address).rsplit("@", 1)[1])
        except AddressError:
            return False

    async def _deliver_local(self, address: str, data: bytes) -> bool:
        """A DSN for a sender in one of our domains: to its mailbox, or, for
        an SRS address we made when forwarding, on to the original sender."""
        normalized = normalize_address(address)
        local_part = normalized.rsplit("@", 1)[0]
        if srs.is_srs(local_part):
            try:
                targets = [srs.reverse(self.forwarder.srs_secret, normalized)]
            except srs.SRSError:
                return False
        else:
            targets = self.accounts.resolve(normalized) or []
        local = [t for t in targets if self._is_local(t)]
        remote = [t for t in targets if not self._is_local(t)]
        if remote:
            await asyncio.to_thread(self.queue.enqueue, "", remote, data)
            self.runner.wake()
        if not local:
            return bool(remote)
        data = b"Return-Path: <>\r\n" + data
        summary = await asyncio.to_thread(summarize, data)
        try:
            await self.store.deliver([Delivery(t, data, summary) for t in local])
        except StoreError:
            log.exception("cannot deliver a DSN to %s", address)
            return False
        return True

    async def _authenticate(self, user: str, password: str, peer_ip: str) -> LoginResult:
        return await self.authenticator.login(user, password, "smtp", peer_ip)

    async def start(self) -> None:
        self.store.start()
        loop = asyncio.get_running_loop()
        handler = InboundHandler(
            hostname=self.config.hostname,
            accounts=self.accounts,
            store=self.store,
            max_recipients=self.config.limits.max_recipients,
            resolver=self.resolver if self.config.inbound.authenticate else None,
            dmarc_reject=self.config.inbound.dmarc_reject,
            forwarder=self.forwarder,
        )
        submission = SubmissionHandler(
            hostname=self.config.hostname,
            accounts=self.accounts,
            store=self.store,
            queue=self.queue,
            wake_queue=self.runner.wake,
            signer=self.signer,
            max_recipients=self.config.limits.max_recipients,
            strip_client_ip=self.config.submission.strip_client_ip,
            limits=SendLimits(
                messages_per_hour=self.config.submission.max_messages_per_hour,
                recipients_per_message=self.config.submission.max_recipients_per_message,
            ),
        )

        def make_smtp() -> SMTPProtocol:
            return SMTPProtocol(
                handler,
                connections=self.connections,
                data_size_limit=self.config.limits.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                hostname=self.config.hostname,
                ident="ESMTP estafeta",
                tls_context=self.tls,
                require_starttls=False,
                timeout=self.config.limits.command_timeout,
                loop=loop,
            )

        def make_submission(implicit_tls: bool) -> SMTPProtocol:
            return SMTPProtocol(
                submission,
                connections=self.connections,
                allow_auth=True,
                authenticate=self._authenticate,
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
                loop=loop,
            )

        for endpoint in self.config.listen.get("smtp", ()):
            await self._listen("smtp", endpoint, make_smtp)
        for endpoint in self.config.listen.get("submission", ()):
            await self._listen("submission", endpoint, lambda: make_submission(False))
        for endpoint in self.config.listen.get("submissions", ()):
            await self._listen("submissions", endpoint, lambda: make_submission(True), self.tls)
        for name in ("imap", "imaps"):
            for endpoint in self.config.listen.get(name, ()):
                await self._listen_imap(name, endpoint, implicit_tls=name == "imaps")
        for name in ("pop3", "pop3s"):
            for endpoint in self.config.listen.get(name, ()):
                await self._listen_pop3(name, endpoint, implicit_tls=name == "pop3s")
        for name in self.config.listen:
            if name not in IMPLEMENTED:
                log_event(
                    log,
                    "listener_unavailable",
                    logging.WARNING,
                    listener=name,
                    reason="not implemented in this version",
                )
        self._runner_task = asyncio.create_task(self.runner.run())
        log_event(log, "ready", hostname=self.config.hostname, domains=self.config.domains)

    async def _listen(
        self,
        name: str,
        endpoint: Endpoint,
        factory: type[SMTPProtocol] | object,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                factory,  # type: ignore[arg-type]
                host=endpoint.host,
                port=endpoint.port,
                ssl=tls,
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
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(self._imap_sessions) >= self.config.limits.max_connections:
                writer.write(b"* BYE Too many connections\r\n")
                writer.close()
                return
            ip = _peer_ip(writer)
            if not self.per_ip.acquire(ip):
                writer.write(b"* BYE Too many connections from your address\r\n")
                writer.close()
                return
            try:
                session = Session(
                    reader,
                    writer,
                    accounts=self.accounts,
                    authenticator=self.authenticator,
                    store=self.store,
                    settings=settings,
                    tls=self.tls,
                    implicit_tls=implicit_tls,
                )
                self._imap_sessions.add(session)
                try:
                    await session.run()
                finally:
                    self._imap_sessions.discard(session)
            finally:
                self.per_ip.release(ip)

        await self._start_stream_server(name, endpoint, handle, implicit_tls)

    async def _listen_pop3(self, name: str, endpoint: Endpoint, implicit_tls: bool) -> None:
        settings = pop3.Settings(
            hostname=self.config.hostname, allow_plaintext=self.config.auth.allow_plaintext
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(self._pop3_sessions) >= self.config.limits.max_connections:
                writer.write(b"-ERR [SYS/TEMP] Too many connections\r\n")
                writer.close()
                return
            ip = _peer_ip(writer)
            if not self.per_ip.acquire(ip):
                writer.write(b"-ERR [SYS/TEMP] Too many connections from your address\r\n")
                writer.close()
                return
            try:
                session = pop3.Session(
                    reader,
                    writer,
                    accounts=self.accounts,
                    authenticator=self.authenticator,
                    store=self.store,
                    settings=settings,
                    locks=self._pop3_locks,
                    tls=self.tls,
                    implicit_tls=implicit_tls,
                )
                self._pop3_sessions.add(session)
                try:
                    await session.run()
                finally:
                    self._pop3_sessions.discard(session)
            finally:
                self.per_ip.release(ip)

        await self._start_stream_server(name, endpoint, handle, implicit_tls)

    async def _start_stream_server(
        self,
        name: str,
        endpoint: Endpoint,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        implicit_tls: bool,
    ) -> None:
        try:
            server = await asyncio.start_server(
                handle,
                host=endpoint.host,
                port=endpoint.port,
                ssl=self.tls if implicit_tls else None,
                reuse_address=True,
                backlog=512,
                limit=64 * 1024,
            )
        except OSError as exc:
            message = f"listen.{name}: cannot listen on {endpoint}: {exc.strerror}"
            raise OSError(exc.errno, message) from None
        self._servers.append(server)
        log_event(log, "listening", listener=name, address=str(endpoint))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self._imap_sessions):
            session.shutdown()
        for pop3_session in list(self._pop3_sessions):
            pop3_session.shutdown()
        self.connections.shutdown()
        deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE
        while self.connections.open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            # A session that just finished its delivery is closed too.
            self.connections.shutdown()
        await self.runner.stop()
        if self._runner_task is not None:
            await self._runner_task
        # Queued deliveries finish before the store closes.
        await asyncio.to_thread(self.store.stop)
        self.queue.close()
        self.accounts.close()
        log_event(log, "stopped")


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class _StoreCache:
    """MTA-STS policies cached in the queue database (rfc8461:5.1)."""

    def __init__(self, store: QueueStore) -> None:
        self.store = store

    def get(self, domain: str) -> Policy | None:
        text = self.store.sts_get(domain)
        return Policy.from_json(text) if text else None

    def put(self, domain: str, policy: Policy) -> None:
        self.store.sts_put(domain, policy.to_json())


async def serve(config: Config) -> None:
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        await stop.wait()
        log_event(log, "stopping", grace=SHUTDOWN_GRACE)
    finally:
        await server.stop()
