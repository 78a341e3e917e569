"""Obtaining and renewing the server's certificate with ACME (rfc8555).

``CertificateManager.run`` is a task of the server. It installs the
certificate it has when that is still valid, obtains one when there is none
or the configured names changed, and renews at ``renew_fraction`` (two
thirds) of the lifetime, or at a random time in the CA's suggested window
when the CA offers ACME Renewal Information (rfc9773:4.2). Failures are
logged and retried with capped exponential backoff; the certificate in use
is replaced only by a complete new one, never removed. With ``dane`` the
key is the one in use, or the standby key once DNS has shown it long
enough (estafeta.acme.dane, estafeta.acme.rollover), and each step first
looks at DNS for it.

The ACME protocol is certbot's ``acme`` library (synchronous, requests);
each of its calls runs in a thread (``asyncio.to_thread``), and the event
loop only touches the challenge state and calls ``install``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import crypto_util, errors, messages
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from estafeta.acme.dane import MAX_PORTS, DaneKeys, TlsaLookup
from estafeta.acme.files import AcmeFiles, Certificate, new_private_key
from estafeta.acme.pending import Challenges, make_alpn_context, valid_token
from estafeta.acme.rollover import Rollover
from estafeta.log import log_event

log = logging.getLogger("estafeta.acme")

CHALLENGES = ("http-01", "tls-alpn-01")
KEY_TYPES = ("ec-p256", "rsa-2048")
USER_AGENT = "estafeta"
# rfc1035:2.3.1 letters, digits, hyphens; rfc8555:7.1.3 wildcards need DNS-01.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# How long one issuance may poll the CA before it counts as failed.
ORDER_DEADLINE = 120.0


def _check_name(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"ACME name {name!r} is not a host name (letters, digits, '-', A-labels)")
    return name


@dataclass(frozen=True)
class AcmeSettings:
    """What the ``[acme]`` table configures."""

    directory: str  # the CA's directory URL (rfc8555:7.1.1)
    names: tuple[str, ...]  # DNS names of the certificate, the first is its CN
    email: str | None = None  # account contact (rfc8555:7.3), optional
    challenge: str = "http-01"  # or "tls-alpn-01"
    key_type: str = "ec-p256"  # the certificate's key: or "rsa-2048"
    ca_bundle: Path | None = None  # CA file to trust the ACME server's HTTPS with
    renew_fraction: float = 2 / 3  # of the lifetime, when the CA has no renewal info
    retry_min: float = 60.0  # seconds of backoff after the first failure
    retry_max: float = 6 * 3600.0  # the most backoff grows to
    # Keep the certificate's key across renewals (DANE 3 1 1 TLSA records
    # name the key: they stay true); a new key each time otherwise.
    reuse_key: bool = False
    # A DANE-EE key rollover (estafeta.acme.dane): the key changes only to a
    # standby key seen in the TLSA records at _PORT._tcp.dane_host for every
    # port of dane_ports for their TTL plus dane_margin; reuse_key is moot.
    dane: bool = False
    dane_host: str = ""  # default: the first name
    dane_ports: tuple[int, ...] = (25,)
    dane_margin: float = 86400.0

    def __post_init__(self) -> None:
        if not self.directory.startswith(("https://", "http://")):
            raise ValueError("ACME directory must be an https:// URL")
        names = tuple(dict.fromkeys(_check_name(n) for n in self.names))
        if not names:
            raise ValueError("ACME needs at least one name")
        object.__setattr__(self, "names", names)
        if self.email is not None and (
            "@" not in self.email or any(c.isspace() or c in ",;<>" for c in self.email)
        ):
            raise ValueError(f"ACME contact {self.email!r} is not one email address")
        if self.challenge not in CHALLENGES:
            raise ValueError(f"ACME challenge must be one of {', '.join(CHALLENGES)}")
        if self.key_type not in KEY_TYPES:
            raise ValueError(f"ACME key type must be one of {', '.join(KEY_TYPES)}")
        if not 0 < self.renew_fraction < 1:
            raise ValueError("ACME renew_fraction must be between 0 and 1")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("ACME retry times must satisfy 0 < retry_min <= retry_max")
        try:
            object.__setattr__(self, "dane_host", _check_name(self.dane_host or names[0]))
        except ValueError as exc:
            raise ValueError(f"ACME dane_host: {exc}") from None
        ports = tuple(dict.fromkeys(self.dane_ports))
        if self.dane and not ports:
            raise ValueError("ACME dane needs at least one port")
        if len(ports) > MAX_PORTS or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"ACME dane_ports: at most {MAX_PORTS} ports from 1 to 65535")
        object.__setattr__(self, "dane_ports", ports)
        if not 0 <= self.dane_margin <= 365 * 86400:
            raise ValueError("ACME dane_margin must be between 0 and a year")


class _TLSALPN01Response(acme_challenges.KeyAuthorizationChallengeResponse):
    """The answer to a tls-alpn-01 challenge: an empty JSON object (rfc8555:7.5.1).
    The library (acme 5) has no TLS-ALPN-01 class; the key authorization is
    only used to build the certificate and is never sent."""

    typ = "tls-alpn-01"


@dataclass
class _Ari:
    """The renewal time chosen from the CA's renewal info for one certificate."""

    fingerprint: str
    renew_at: float | None  # None: the CA offers no renewal info
    next_check: float


@dataclass
class _Status:
    installed: str | None = None  # fingerprint of the certificate handed to install
    failures: int = 0
    last_error: str | None = None
    next_attempt: float | None = None
    renew_at: float | None = None
    renew_source: str | None = None
    issued: int = 0
    ari: _Ari | None = None
    pending: dict[str, int] = field(default_factory=dict)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, errors.ValidationError):
        details = [
            f"{a.body.identifier.value}: {c.error}"
            for a in exc.failed_authzrs
            for c in a.body.challenges
            if c.error is not None
        ]
        text = "validation failed: " + "; ".join(details)
    return f"{type(exc).__name__}: {text}"[:500]


class CertificateManager:
    """Keeps a valid certificate for ``settings.names`` installed."""

    def __init__(
        self,
        settings: AcmeSettings,
        state_dir: Path,
        challenges: Challenges,
        install: Callable[[Path, Path], None],
        clock: Callable[[], float] = time.time,
        *,
        check_interval: float = 3600.0,
        timeout: int = 30,
        tlsa_lookup: TlsaLookup | None = None,
    ) -> None:
        self._settings = settings
        self._files = AcmeFiles(state_dir)
        self._challenges = challenges
        self._install = install
        self._clock = clock
        self._check_interval = check_interval
        self._timeout = timeout
        self._current: Certificate | None = None
        self._client: acme_client.ClientV2 | None = None
        self._account_key: JWKEC | None = None
        self._wake = asyncio.Event()
        self._state = _Status()
        # [acme] dane: the standby key and its TLSA records (estafeta.acme.dane).
        self._rollover = Rollover(DaneKeys(state_dir), tlsa_lookup, clock)

    # -- the public interface -------------------------------------------------------------------

    @property
    def fullchain_path(self) -> Path:
        return self._files.fullchain

    @property
    def key_path(self) -> Path:
        return self._files.privkey

    def expiry(self) -> dict[str, float]:
        """notAfter (epoch seconds) of the certificate in use, by name."""
        cert = self._current
        if cert is None:
            return {}
        return dict.fromkeys(sorted(cert.names), cert.not_after)

    def status(self) -> dict[str, Any]:
        """The state for logs and an admin: names, validity, next steps, errors."""
        cert, state = self._current, self._state
        return {
            "names": list(self._settings.names),
            "challenge": self._settings.challenge,
            "certificate_names": sorted(cert.names) if cert else [],
            "not_before": cert.not_before if cert else None,
            "not_after": cert.not_after if cert else None,
            "fingerprint": cert.fingerprint if cert else None,
            "installed": state.installed is not None,
            "renew_at": state.renew_at,
            "renew_source": state.renew_source,
            "issued": state.issued,
            "failures": state.failures,
            "last_error": state.last_error,
            "next_attempt": state.next_attempt,
            "pending_challenges": self._challenges.pending(),
            "dane": self._rollover.status(self._settings) if self._settings.dane else None,
        }

    def update_settings(self, settings: AcmeSettings) -> None:
        """Use new settings (a configuration reload): a change of names makes
        a new certificate at once; a new CA, a new client."""
        old, self._settings = self._settings, settings
        if (old.directory, old.ca_bundle) != (settings.directory, settings.ca_bundle):
            self._close_client()
        self._state.failures = 0
        self._wake.set()

    def wake(self) -> None:
        """Look again now (SIGHUP): after a failure, the next attempt is now,
        not at the end of its backoff (the DNS records may exist now)."""
        self.update_settings(self._settings)

    async def run(self) -> None:
        """The manager's task: runs until cancelled, never raises otherwise."""
        try:
            await asyncio.to_thread(self._files.prepare)
            self._current = await asyncio.to_thread(self._files.load_current)
        except Exception as exc:  # a broken state directory: logged, retried below
            log_event(log, "acme_state_unreadable", logging.ERROR, error=_describe(exc))
        try:
            while True:
                try:
                    wait = await self._step()
                    self._state.failures = 0
                    self._state.last_error = None
                except Exception as exc:
                    self._close_client()
                    state = self._state
                    state.failures += 1
                    state.last_error = _describe(exc)
                    wait = min(
                        self._settings.retry_max,
                        self._settings.retry_min * 2 ** (state.failures - 1),
                    )
                    log_event(
                        log,
                        "acme_failed",
                        logging.WARNING,
                        names=list(self._settings.names),
                        error=state.last_error,
                        failures=state.failures,
                        retry_in=round(wait, 3),
                    )
                self._state.next_attempt = self._clock() + wait
                await self._sleep(wait)
        finally:
            self._close_client()

    # -- the loop -------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep by the manager's clock, waking every ``check_interval`` to
        look at it again (a suspended machine, a moved clock) and at once
        for ``update_settings``."""
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, self._check_interval)):
                    await self._wake.wait()
            if self._wake.is_set():
                self._wake.clear()
                return

    async def _step(self) -> float:
        """Install what is valid, obtain what is missing or due; returns the
        seconds until the next look."""
        settings = self._settings
        if self._current is None:
            # A state directory that could not be read at the start, a first run.
            self._current = await asyncio.to_thread(self._files.load_current)
        # With dane, DNS is looked at every poll interval, and sooner is never later.
        poll = math.inf
        if settings.dane:
            await self._rollover.look(settings)
            poll = self._rollover.poll_interval(settings)
        cert = self._current
        now = self._clock()
        if cert is not None and cert.valid_at(now):
            self._install_current()
            if cert.names == frozenset(settings.names):
                renew_at = await self._renewal_time(cert)
                # `estafeta tls rollover`: renew now, once the standby key may be used.
                rollover = (
                    settings.dane
                    and self._rollover.requested is not None
                    and self._rollover.ready(settings)
                )
                if now < renew_at and not rollover:
                    return min(renew_at - now, poll)
                reason = "renewal" if now >= renew_at else "key_rollover"
            else:
                reason = "names_changed"
        else:
            reason = "expired" if cert is not None else "no_certificate"
        await self._obtain(settings, reason)
        self._install_current()
        cert = self._current
        assert cert is not None
        renew_at = await self._renewal_time(cert)
        # A fresh certificate due again at once (a strange renewal window)
        # waits at least retry_min rather than looping on the CA.
        return min(max(renew_at - self._clock(), settings.retry_min), poll)

    def _install_current(self) -> None:
        cert = self._current
        if cert is None or self._state.installed == cert.fingerprint:
            return
        self._install(self._files.fullchain, self._files.privkey)
        self._state.installed = cert.fingerprint
        log_event(log, "acme_installed", **_described(cert))

    async def _renewal_time(self, cert: Certificate) -> float:
        """When to renew ``cert``: in the CA's suggested window (rfc9773:4.2)
        when it offers renewal info, else at renew_fraction of the lifetime."""
        settings = self._settings
        default = cert.not_before + settings.renew_fraction * (cert.not_after - cert.not_before)
        now = self._clock()
        ari = self._state.ari
        if ari is None or ari.fingerprint != cert.fingerprint or now >= ari.next_check:
            try:
                renew_at, next_check = await asyncio.to_thread(self._ask_renewal_info, cert)
            except Exception as exc:
                # rfc9773:4.3.3: on an error, keep the previous answer and try later.
                log_event(log, "acme_renewal_info_failed", logging.WARNING, error=_describe(exc))
                previous = ari.renew_at if ari and ari.fingerprint == cert.fingerprint else None
                renew_at, next_check = previous, now + settings.retry_max
            ari = self._state.ari = _Ari(cert.fingerprint, renew_at, next_check)
        if ari.renew_at is None:
            result, source = default, "lifetime"
        else:
            result, source = ari.renew_at, "renewal_info"
        if (result, source) != (self._state.renew_at, self._state.renew_source):
            log_event(
                log, "acme_renewal_scheduled", renew_at=_iso(result), source=source, now=_iso(now)
            )
        self._state.renew_at, self._state.renew_source = result, source
        return result

    # -- the ACME protocol (blocking: in threads) --------------------------------------------

    def _ask_renewal_info(self, cert: Certificate) -> tuple[float | None, float]:
        """(renewal time or None, when to ask again), by the manager's clock."""
        client = self._client_for(self._settings)
        # renewal_time picks the random time in the window (rfc9773:4.2) and
        # reads Retry-After (rfc9773:4.3.2); both come as real-time datetimes.
        chosen, retry = client.renewal_time(cert.chain_pem)
        offset = self._clock() - time.time()
        next_check = retry.timestamp() + offset if retry else self._clock() + 6 * 3600
        next_check = max(next_check, self._clock() + 60)
        if chosen is None:
            return None, next_check
        return chosen.timestamp() + offset, next_check

    def _client_for(self, settings: AcmeSettings) -> acme_client.ClientV2:
        if self._client is not None:
            return self._client
        if self._account_key is None:
            self._account_key = JWKEC(key=self._files.account_key())
        # requests takes a CA file path where the library's type says bool.
        verify = cast(bool, str(settings.ca_bundle)) if settings.ca_bundle else True
        net = acme_client.ClientNetwork(
            self._account_key,
            alg=ES256,
            verify_ssl=verify,
            user_agent=USER_AGENT,
            timeout=self._timeout,
        )
        try:
            directory = acme_client.ClientV2.get_directory(settings.directory, net)
        except BaseException:
            net.session.close()
            raise
        self._client = acme_client.ClientV2(directory, net)
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.net.session.close()

    def _register(self, client: acme_client.ClientV2, settings: AcmeSettings) -> None:
        """Find or create the account of our key (rfc8555:7.3, 7.3.1)."""
        if client.net.account is not None:
            return
        registration = messages.NewRegistration.from_data(
            email=settings.email, terms_of_service_agreed=True
        )
        try:
            account = client.new_account(registration)
            log_event(log, "acme_account_created", directory=settings.directory)
        except errors.ConflictError as exc:
            # rfc8555:7.3.1: the key has an account already; it is at Location.
            account = messages.RegistrationResource(uri=exc.location, body=registration)
            client.net.account = account
        self._files.save_account(settings.directory, account.uri)

    def _new_order(
        self, settings: AcmeSettings, key_pem: bytes | None
    ) -> tuple[acme_client.ClientV2, messages.OrderResource]:
        """An order for a certificate with ``key_pem`` (None: by reuse_key)."""
        client = self._client_for(settings)
        self._register(client, settings)
        if key_pem is None:
            key_pem = (
                self._files.current_key(settings.key_type) if settings.reuse_key else None
            ) or new_private_key(settings.key_type)
        self._files.stage_key(key_pem)
        csr = crypto_util.make_csr(key_pem, list(settings.names))
        return client, client.new_order(csr)

    # -- one issuance -----------------------------------------------------------------------

    async def _obtain(self, settings: AcmeSettings, reason: str) -> None:
        key_pem, switching = None, False
        if settings.dane:
            key_pem, switching = await self._rollover.key_for_order(settings, reason)
        log_event(
            log,
            "acme_order",
            names=list(settings.names),
            reason=reason,
            ca=settings.directory,
            new_key=switching if settings.dane else not settings.reuse_key,
        )
        client, order = await asyncio.to_thread(self._new_order, settings, key_pem)
        assert self._account_key is not None
        account_key = self._account_key
        cleanup: list[Callable[[], None]] = []
        try:
            answers: list[
                tuple[messages.ChallengeBody, acme_challenges.KeyAuthorizationChallengeResponse]
            ] = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # rfc8555:7.1.4: authorized already (a reused authorization)
                name = authz.body.identifier.value
                challb = next(
                    (c for c in authz.body.challenges if _kind(c) == settings.challenge), None
                )
                if challb is None:
                    offered = ", ".join(_kind(c) for c in authz.body.challenges)
                    raise errors.Error(f"{name}: the CA offers no {settings.challenge} ({offered})")
                answers.append(await self._prepare(challb, name, account_key, cleanup))
            for challb, response in answers:
                # rfc8555:7.5.1: tell the CA the challenge is ready to be validated.
                await asyncio.to_thread(client.answer_challenge, challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            order = await asyncio.to_thread(client.poll_and_finalize, order, deadline)
        finally:
            for undo in cleanup:
                undo()
        cert = await asyncio.to_thread(self._files.commit, order.fullchain_pem.encode())
        if cert.names != frozenset(settings.names):
            raise errors.Error(f"the CA issued a certificate for {sorted(cert.names)}")
        self._current = cert
        self._state.issued += 1
        log_event(log, "acme_issued", **_described(cert))
        if switching:
            await self._rollover.switched(settings)

    async def _prepare(
        self,
        challb: messages.ChallengeBody,
        name: str,
        account_key: JWKEC,
        cleanup: list[Callable[[], None]],
    ) -> tuple[messages.ChallengeBody, acme_challenges.KeyAuthorizationChallengeResponse]:
        """Publish the response to one challenge; ``cleanup`` gets its undo."""
        chall = challb.chall
        if isinstance(chall, acme_challenges.HTTP01):
            response, validation = chall.response_and_validation(account_key)
            token = chall.encode("token")
            self._challenges.add_http01(token, validation)
            cleanup.append(lambda: self._challenges.remove_http01(token))
            return challb, response
        # TLS-ALPN-01 (rfc8737:3), which the library knows only as an
        # UnrecognizedChallenge: the token and the key authorization
        # (rfc8555:8.1) by hand.
        jobj = chall.jobj if isinstance(chall, acme_challenges.UnrecognizedChallenge) else {}
        token = str(jobj.get("token", ""))
        if not valid_token(token):
            raise errors.Error(f"{name}: tls-alpn-01 challenge without a valid token")
        thumbprint = b64encode(account_key.thumbprint()).decode()
        key_authorization = f"{token}.{thumbprint}"
        context = await asyncio.to_thread(make_alpn_context, name, key_authorization)
        self._challenges.add_tls_alpn01(name, context)
        cleanup.append(lambda: self._challenges.remove_tls_alpn01(name))
        return challb, _TLSALPN01Response(key_authorization=key_authorization)


def _kind(challb: messages.ChallengeBody) -> str:
    """A challenge's type, also for those the library does not know (tls-alpn-01)."""
    chall = challb.chall
    if isinstance(chall, acme_challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", "unknown"))
    return str(chall.typ)


def _described(cert: Certificate) -> dict[str, Any]:
    """The log fields of a certificate (never its key)."""
    return {
        "names": sorted(cert.names),
        "not_after": _iso(cert.not_after),
        "fingerprint": cert.fingerprint[:16],
    }


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
