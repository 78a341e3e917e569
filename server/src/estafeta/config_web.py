"""Configuration of the HTTP side: ``[web]`` and ``[mta_sts]`` (issue 20).

Example::

    [listen]
    http = ["0.0.0.0:80", "[::]:80"]      # ACME HTTP-01, redirects to https
    https = ["0.0.0.0:443", "[::]:443"]   # MTA-STS, autoconfig, account pages

    [web]
    metrics_networks = ["127.0.0.0/8", "::1/128"]  # who may GET /metrics
    metrics_token_file = "metrics.token"           # or send this bearer token
    hsts_max_age = "365d"                          # 0: no Strict-Transport-Security
    proxy_protocol = ["127.0.0.1/32"]  # a TLS-passthrough front (nginx stream) there
                                       # sends a PROXY header (v1 or v2) with the client
    proxy_protocol_listeners = ["https"]  # on these listeners (default both): the
                                          # health check on http comes without one

    [mta_sts]                 # the policy of a domain without a policy file
    mode = "enforce"          # rfc8461:3.2: enforce, testing or none
    max_age = "7d"            # rfc8461:3.2: at most 31557600 seconds
    mx = ["mx1.example.test", "*.example.test"]   # default: the hostname

    [acme]                    # the server obtains and renews its certificate
    directory = "https://acme-v02.api.letsencrypt.org/directory"
    email = "postmaster@example.org"  # optional account contact
    challenge = "http-01"     # on [listen] http (80); or "tls-alpn-01" on https (443)
    key_type = "ec-p256"      # or "rsa-2048"
    names = []                # more names; always: the hostname, and mta-sts.,
                              # autoconfig. and autodiscover. of every domain
    ca_bundle = ""            # a CA file to trust the ACME server with (tests)
    reuse_key = false         # keep the key across renewals (DANE 3 1 1 records stay true)
    dane = false              # DANE-EE key rollover: a standby key, used only once its
                              # TLSA record has been seen in DNS for its TTL + dane_margin
    dane_ports = [25]         # the TLSA records looked at: _25._tcp.<hostname>
    dane_margin = "1d"        # beyond the TTL: resolvers serving expired answers (rfc8767)
    retry_min = "1m"          # the first wait after a failure (doubling each time,
    retry_max = "6h"          # up to retry_max); also the least wait between orders

With ``[acme]`` there is no ``[tls]``: the certificate and key live in
``<data_dir>/acme/`` (0600), and every listener takes a new certificate
without a restart.

The dns_records role writes ``mta-sts/<domain>.txt`` next to the
configuration (its id is in the domain's ``_mta-sts`` TXT record); such a
file is served as it is, and ``[mta_sts]`` is for the domains without one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from estafeta.config import _Reader

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MTA_STS_MODES = ("enforce", "testing", "none")
MTA_STS_MAX_AGE = 31557600  # rfc8461:3.2
# rfc8461:3.2 mx patterns: a host name, or "*." and one, for one label more.
_MX_PATTERN = re.compile(
    r"^(\*\.)?(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$"
)
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True)
class WebConfig:
    metrics_networks: tuple[IPNetwork, ...] = LOOPBACK
    metrics_token_file: Path | None = None
    hsts_max_age: int = 365 * 86400
    # Addresses whose connections to http/https start with a PROXY header ...
    proxy_protocol: tuple[IPNetwork, ...] = ()
    # ... on these listeners.
    proxy_protocol_listeners: tuple[str, ...] = ("http", "https")


@dataclass(frozen=True)
class MtaStsConfig:
    mode: str = "testing"
    max_age: int = 7 * 86400
    mx: tuple[str, ...] = ()


def web_config(reader: _Reader, base: Path) -> WebConfig:
    from estafeta.config import ConfigError, _duration, _networks, _path

    defaults = WebConfig()
    networks = (
        _networks(reader, "metrics_networks")
        if "metrics_networks" in reader.table
        else defaults.metrics_networks
    )
    reader.used.add("metrics_networks")
    token_file = _path(reader, "metrics_token_file", base)
    hsts = _duration(reader, "hsts_max_age", defaults.hsts_max_age, allow_zero=True)
    proxies = _networks(reader, "proxy_protocol")
    listeners = defaults.proxy_protocol_listeners
    if "proxy_protocol_listeners" in reader.table:
        listeners = tuple(reader.string_list("proxy_protocol_listeners"))
        for i, name in enumerate(listeners):
            if name not in ("http", "https"):
                raise ConfigError(
                    reader.path,
                    f"{reader.key('proxy_protocol_listeners')}[{i}]",
                    f"{name!r} is not a web listener: http or https",
                )
        if not listeners:
            raise reader.error("proxy_protocol_listeners", "must name http, https or both")
    reader.check_unknown()
    return WebConfig(
        metrics_networks=networks,
        metrics_token_file=token_file,
        hsts_max_age=int(hsts),
        proxy_protocol=proxies,
        proxy_protocol_listeners=listeners,
    )


def mta_sts_config(reader: _Reader) -> MtaStsConfig:
    from estafeta.config import ConfigError, _duration

    defaults = MtaStsConfig()
    mode = reader.get("mode", str, defaults.mode)
    if mode not in MTA_STS_MODES:
        raise reader.error("mode", f"must be one of {', '.join(MTA_STS_MODES)} (rfc8461:3.2)")
    max_age = int(_duration(reader, "max_age", defaults.max_age))
    if max_age > MTA_STS_MAX_AGE:
        raise reader.error("max_age", "must be at most 31557600 seconds, a year (rfc8461:3.2)")
    mx: list[str] = []
    for i, pattern in enumerate(reader.string_list("mx")):
        value = pattern.strip().lower().rstrip(".")
        if not _MX_PATTERN.match(value):
            raise ConfigError(
                reader.path,
                f"{reader.key('mx')}[{i}]",
                f"{pattern!r} is not a host name or a *.-pattern like *.example.org",
            )
        mx.append(value)
    reader.check_unknown()
    return MtaStsConfig(mode=mode, max_age=max_age, mx=tuple(mx))


@dataclass(frozen=True)
class AcmeConfig:
    directory: str
    names: tuple[str, ...]
    email: str | None = None
    challenge: str = "http-01"
    key_type: str = "ec-p256"
    ca_bundle: Path | None = None
    retry_min: float = 60.0
    retry_max: float = 6 * 3600.0
    reuse_key: bool = False
    dane: bool = False
    dane_ports: tuple[int, ...] = (25,)
    dane_margin: float = 86400.0


ACME_LABELS = ("mta-sts", "autoconfig", "autodiscover")
ACME_CHALLENGES = ("http-01", "tls-alpn-01")
ACME_KEY_TYPES = ("ec-p256", "rsa-2048")


def acme_config(
    reader: _Reader, base: Path, hostname: str, domains: tuple[str, ...]
) -> AcmeConfig | None:
    from estafeta.config import ConfigError, _duration, _path

    if not reader.table:
        return None
    directory = reader.get("directory", str, required=True)
    if not directory.startswith("https://"):
        raise reader.error("directory", "must be the https:// URL of the CA's directory")
    email = reader.get("email", str, "") or None
    if email is not None and ("@" not in email or any(c.isspace() or c in ",;<>" for c in email)):
        raise reader.error("email", f"{email!r} is not one email address")
    challenge = reader.get("challenge", str, "http-01")
    if challenge not in ACME_CHALLENGES:
        raise reader.error("challenge", f"must be one of {', '.join(ACME_CHALLENGES)}")
    key_type = reader.get("key_type", str, "ec-p256")
    if key_type not in ACME_KEY_TYPES:
        raise reader.error("key_type", f"must be one of {', '.join(ACME_KEY_TYPES)}")
    names = [hostname] + [f"{label}.{d}" for d in domains for label in ACME_LABELS]
    for i, name in enumerate(reader.string_list("names")):
        value = name.strip().lower().rstrip(".")
        if not _MX_PATTERN.match(value) or value.startswith("*."):
            raise ConfigError(
                reader.path, f"{reader.key('names')}[{i}]", f"{name!r} is not a host name"
            )
        names.append(value)
    ca_bundle = _path(reader, "ca_bundle", base)
    reuse_key = reader.get("reuse_key", bool, False)
    dane = reader.get("dane", bool, False)
    reader.used.add("dane_ports")
    ports = reader.table.get("dane_ports", [25])
    if (
        not isinstance(ports, list)
        or not ports
        or len(ports) > 16
        or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports)
    ):
        raise reader.error("dane_ports", "must be a list of 1 to 16 TCP ports, e.g. [25]")
    dane_margin = _duration(reader, "dane_margin", 86400.0, allow_zero=True)
    if dane_margin > 365 * 86400:
        raise reader.error("dane_margin", "must be at most a year")
    retry_min = _duration(reader, "retry_min", 60.0)
    retry_max = _duration(reader, "retry_max", 6 * 3600.0)
    if retry_max < retry_min:
        raise reader.error("retry_max", "must not be smaller than retry_min")
    reader.check_unknown()
    return AcmeConfig(
        directory=directory,
        names=tuple(dict.fromkeys(names)),
        email=email,
        challenge=challenge,
        key_type=key_type,
        ca_bundle=ca_bundle,
        retry_min=retry_min,
        retry_max=retry_max,
        reuse_key=reuse_key,
        dane=dane,
        dane_ports=tuple(dict.fromkeys(ports)),
        dane_margin=dane_margin,
    )


def read_token(path: Path | None) -> str | None:
    """The metrics bearer token (first line of the file), or None."""
    if path is None:
        return None
    text = path.read_text(encoding="utf-8").strip()
    return text or None
