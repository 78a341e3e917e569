"""What the HTTP listeners serve, by Host name and path.

On ``[listen] https`` (443) and, when there is no https listener, on ``http``:

- ``mta-sts.<domain>/.well-known/mta-sts.txt``: the MTA-STS policy
  (rfc8461:3.3), the file ``<policy_dir>/<domain>.txt`` the dns_records role
  wrote (its id is in DNS) or else one made from ``[mta_sts]``;
- ``autoconfig.<domain>/mail/config-v1.1.xml`` and
  ``<domain>/.well-known/autoconfig/mail/config-v1.1.xml``: Thunderbird's
  autoconfig; ``autodiscover.<domain>/autodiscover/autodiscover.xml``
  (POST): Outlook's POX autodiscover;
- ``/healthz`` and ``/metrics`` (the latter only to ``[web]
  metrics_networks`` or with the bearer token);
- whatever ``pages`` serves (the account pages).

On ``http`` (80) beside an https listener: ACME's HTTP-01 answers
(rfc8555:8.3), ``/healthz``, ``/metrics``, and a 301 to https for the rest.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from estafeta import metrics
from estafeta.web import clientconfig
from estafeta.web.connection import Handler, Request, Response, text

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_ACME_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# Host labels in front of a mail domain that name one of our services.
SERVICE_LABELS = ("mta-sts", "autoconfig", "autodiscover", "webmail")
# How long a client may cache a policy or a configuration document.
DOCUMENT_MAX_AGE = 3600

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class MtaSts:
    """``[mta_sts]``: the policy served for a domain without a policy file."""

    mode: str = "testing"
    max_age: int = 604800
    mx: tuple[str, ...] = ()

    def policy(self, hostname: str) -> bytes:
        # rfc8461:3.2: key/value lines, CRLF, version first.
        lines = ["version: STSv1", f"mode: {self.mode}"]
        lines += [f"mx: {mx}" for mx in (self.mx or (hostname,))]
        lines.append(f"max_age: {self.max_age}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii")


@dataclass
class SiteSettings:
    hostname: str
    domains: Sequence[str]
    client: clientconfig.ClientSettings
    policy_dir: Path | None = None
    mta_sts: MtaSts = field(default_factory=MtaSts)
    metrics_networks: Sequence[IPNetwork] = ()
    metrics_token: str | None = None
    https: bool = False  # an https listener exists: http redirects to it
    https_port: int = 443


class Site:
    def __init__(
        self,
        settings: SiteSettings,
        *,
        health: Callable[[], str | None] = lambda: None,
        acme_http01: Callable[[str], str | None] | None = None,
        pages: Handler | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.acme_http01 = acme_http01
        self.pages = pages

    # -- the two listeners --------------------------------------------------

    async def http(self, request: Request) -> Response:
        """Port 80."""
        path = request.path
        if path.startswith("/.well-known/acme-challenge/"):
            return self._acme(path.removeprefix("/.well-known/acme-challenge/"))
        if path in ("/healthz", "/metrics") or not self.settings.https:
            return await self.https(request)
        if request.method not in ("GET", "HEAD"):
            return text(405, "use https")
        return self._redirect(request)

    async def https(self, request: Request) -> Response:
        """Port 443 (and port 80 when there is no https listener)."""
        path = request.path
        method = request.method
        if path == "/healthz":
            return self._only_get(request) or self._healthz()
        if path == "/metrics":
            return self._only_get(request) or self._metrics(request)
        if path == "/.well-known/mta-sts.txt":
            return self._only_get(request) or self._mta_sts(request)
        if path in ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"):
            return self._only_get(request) or self._autoconfig(request)
        if path.lower() == "/autodiscover/autodiscover.xml":
            if method != "POST":
                return Response(405, b"POST an autodiscover request\n", headers=[("Allow", "POST")])
            return self._autodiscover(request)
        if self.pages is not None:
            return await self.pages(request)
        return text(404, "not found")

    # -- routes --------------------------------------------------------------

    @staticmethod
    def _only_get(request: Request) -> Response | None:
        if request.method in ("GET", "HEAD"):
            return None
        return Response(405, b"only GET and HEAD\n", headers=[("Allow", "GET, HEAD")])

    def _healthz(self) -> Response:
        problem = self.health()
        if problem is None:
            return text(200, "ok")
        return text(503, f"unhealthy: {problem}")

    def _metrics(self, request: Request) -> Response:
        if not self._may_scrape(request):
            return Response(
                403,
                b"metrics: not from this address; send the bearer token\n",
                headers=[("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
        return Response(200, metrics.exposition(), metrics.CONTENT_TYPE)

    def _may_scrape(self, request: Request) -> bool:
        token = self.settings.metrics_token
        given = request.header("authorization") or ""
        if token and given.startswith("Bearer "):
            # rfc6750:2.1; compared in constant time.
            return hmac.compare_digest(given[7:].strip().encode(), token.encode())
        try:
            address = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.settings.metrics_networks)

    def _domain_of(self, host: str) -> str | None:
        """The mail domain a Host names: the domain itself or one of our
        service labels in front of it; None for anything else."""
        if not _DOMAIN.match(host):
            return None
        label, _, rest = host.partition(".")
        for candidate in ((rest,) if label in SERVICE_LABELS else ()) + (host,):
            if candidate in self.settings.domains:
                return candidate
        return None

    def _mta_sts(self, request: Request) -> Response:
        # rfc8461:3.3: https://mta-sts.<domain>/.well-known/mta-sts.txt, text/plain.
        host = request.host
        domain = host.removeprefix("mta-sts.")
        if domain == host or self._domain_of(host) != domain:
            return text(404, "no MTA-STS policy here")
        body = None
        if self.settings.policy_dir is not None:
            try:
                body = (self.settings.policy_dir / f"{domain}.txt").read_bytes()
            except OSError:
                body = None
        if body is None:
            body = self.settings.mta_sts.policy(self.settings.hostname)
        return Response(200, body, "text/plain; charset=utf-8", max_age=DOCUMENT_MAX_AGE)

    def _autoconfig(self, request: Request) -> Response:
        domain = self._domain_of(request.host)
        query = parse_qs(request.query, max_num_fields=8)
        emails = query.get("emailaddress")
        email = emails[0] if emails else None
        if email is not None:
            domain = email.rpartition("@")[2].lower() if "@" in email else None
            if domain not in self.settings.domains:
                domain = None
        if domain is None:
            return text(404, "no mail domain of this server")
        try:
            body = clientconfig.thunderbird(self.settings.client, domain, email)
        except clientconfig.BadInput as exc:
            return text(400, str(exc))
        except clientconfig.NotOffered as exc:
            return text(404, str(exc))
        return Response(200, body, clientconfig.THUNDERBIRD_CONTENT_TYPE, max_age=DOCUMENT_MAX_AGE)

    def _autodiscover(self, request: Request) -> Response:
        status, body, content_type = clientconfig.autodiscover(
            self.settings.client, request.body, domains=self.settings.domains
        )
        return Response(status, body, content_type)

    def _acme(self, token: str) -> Response:
        # rfc8555:8.3: the key authorization, as application/octet-stream.
        if self.acme_http01 is None or not _ACME_TOKEN.match(token):
            return text(404, "no such challenge")
        answer = self.acme_http01(token)
        if answer is None:
            return text(404, "no such challenge")
        return Response(200, answer.encode("ascii"), "application/octet-stream")

    def _redirect(self, request: Request) -> Response:
        host = request.host
        # Only to a name of ours: never an open redirect to any Host given.
        if host != self.settings.hostname and self._domain_of(host) is None:
            host = self.settings.hostname
        port = "" if self.settings.https_port == 443 else f":{self.settings.https_port}"
        target = request.target if request.target.startswith("/") else "/"
        location = f"https://{host}{port}{target}"
        return Response(301, b"", headers=[("Location", location)])
