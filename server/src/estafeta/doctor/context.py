"""The facts the checks work from, taken from the configuration and the options.

A check sees a ``Context`` and nothing else: the host name (the HELO name of
outgoing mail, queue/delivery.py), the mail domains, the sending addresses,
the DKIM key directory, the blocklist zones, the TLS listeners, and the DNS:
``resolver`` (the first recursive resolver; every check asks it),
``recursive`` (every recursive view, for the comparison with the zone's
authoritative servers) and ``direct`` (how to ask one authoritative server).
Tests build a Context by hand around a MockResolver.

The sending addresses, in order of precedence (``sending_addresses``):

1. ``--ip`` (repeatable): the operator knows best (NAT, a front relay);
2. ``[queue] relay``: mail leaves through the relay, so the relay's A/AAAA
   records are what receivers see;
3. ``[queue] source_address``: outgoing connections are bound to it;
4. for each address family, the local address the kernel would use to reach
   the internet (a UDP socket connected to a documentation address: no
   packet is sent);
5. for a family without such a route, the host name's A/AAAA records that are
   assigned to this host (a bind to them works).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from estafeta.config import Config, Endpoint
from estafeta.dns import DNSTempError, Resolver
from estafeta.doctor.findings import DNS_FIX, Problems, dns_failure
from estafeta.policy.dnsbl import Zone

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# How a client starts TLS on each listener (config.LISTENERS; http has none).
TLS_MODES = {
    "smtp": "smtp",
    "submission": "smtp",
    "submissions": "tls",
    "imap": "imap",
    "imaps": "tls",
    "pop3": "pop3",
    "pop3s": "tls",
    "managesieve": "sieve",
    "https": "tls",
}
# Destinations for the route lookup of ``kernel_source`` (rfc5737, rfc3849):
# any non-local address takes the default route; nothing is sent to them.
_ROUTE_PROBES = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


@dataclass(frozen=True)
class Listener:
    name: str  # the [listen] key
    host: str  # where to connect: a wildcard bind becomes loopback
    port: int
    mode: str  # "smtp", "imap", "pop3", "sieve" (STARTTLS) or "tls" (implicit)
    # [web] proxy_protocol: a connection from these networks starts with a PROXY header.
    proxy_from: tuple[IPNetwork, ...] = ()

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name} {host}:{self.port}"


@dataclass(frozen=True)
class View:
    """One DNS server's view: a label for humans and the resolver that asks it."""

    label: str
    resolver: Resolver


@dataclass
class Context:
    hostname: str
    domains: tuple[str, ...]
    resolver: Resolver
    addresses: tuple[tuple[str, str], ...] = ()  # (address, how it was found)
    relay: str = ""  # [queue] relay host: mail leaves through it
    recursive: tuple[View, ...] = ()
    # Authoritative servers given with --authoritative (every zone is asked
    # there), or None: ask each zone's NS.
    authoritative: tuple[View, ...] | None = None
    direct: Callable[[str], Resolver] | None = None  # an NS address -> its resolver
    dkim_dir: Path | None = None
    blocklists: tuple[Zone, ...] = ()
    domain_blocklists: tuple[Zone, ...] = ()
    listeners: tuple[Listener, ...] = ()
    tls_configured: bool = True  # [tls] (or [acme]) is there: the listeners offer TLS
    cert_file: Path | None = None  # [tls] cert (or [acme]'s): what the listeners should serve
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)
    serves_mta_sts: bool = False  # an https listener answers mta-sts.<domain>
    mta_sts_port: int = 443
    greeting_pause: float = 0.0  # [screen] greeting_pause of our own SMTP listener
    timeout: float = 5.0  # one network step
    now: Callable[[], float] = time.time
    # Listener probes shared by the certificate and TLSA checks (doctor.tls).
    probes: dict[tuple[str, int], asyncio.Task[Any]] = field(default_factory=dict)

    async def records(self, problems: Problems, name: str, rdtype: str) -> list[Any] | None:
        """The records at ``name``, or None when the lookup failed (a failure of ``problems``)."""
        try:
            return list((await self.resolver.lookup(name, rdtype)).records)
        except DNSTempError as exc:
            problems.fail(f"the {rdtype} lookup of {name} failed ({dns_failure(exc)})", DNS_FIX)
            return None


def connect_host(endpoint: Endpoint) -> str:
    """Where to reach a listener from this host: a wildcard bind is reached on loopback."""
    if endpoint.host in ("0.0.0.0", ""):  # noqa: S104 -- a bind address, read not bound
        return "127.0.0.1"
    if endpoint.host == "::":
        return "::1"
    return endpoint.host


def listeners(config: Config) -> tuple[Listener, ...]:
    """The TLS listeners of the configuration, one per service and port (the
    IPv4 and IPv6 binds of one port serve the same certificate)."""
    if config.tls is None:
        return ()
    found: list[Listener] = []
    seen: set[tuple[str, int]] = set()
    for name, endpoints in config.listen.items():
        mode = TLS_MODES.get(name)
        if mode is None:
            continue
        for endpoint in endpoints:
            if (name, endpoint.port) in seen:
                continue
            seen.add((name, endpoint.port))
            proxy = config.web.proxy_protocol if name in config.web.proxy_protocol_listeners else ()
            found.append(Listener(name, connect_host(endpoint), endpoint.port, mode, proxy))
    return tuple(found)


def client_context(ca_files: Sequence[Path]) -> ssl.SSLContext:
    """A verifying TLS client context: the system's trust anchors plus ``ca_files``
    (``[queue] ca_file``, ``--ca-file``). Raises OSError or ssl.SSLError."""
    context = ssl.create_default_context()
    for ca_file in ca_files:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def kernel_source(family: socket.AddressFamily) -> str | None:
    """The local address the kernel picks towards the internet for ``family``, if any."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((_ROUTE_PROBES[family], 9))  # UDP connect: a route lookup only
            address = str(sock.getsockname()[0]).split("%", 1)[0]
    except OSError:
        return None
    parsed = ipaddress.ip_address(address)
    if parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified:
        return None
    return address


def is_local(address: str) -> bool:
    """Whether ``address`` is assigned to this host (a bind to it works)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True


async def _records(resolver: Resolver, name: str, rdtype: str) -> list[str]:
    with contextlib.suppress(DNSTempError):
        return [str(r) for r in (await resolver.lookup(name, rdtype)).records]
    return []


async def sending_addresses(
    config: Config,
    resolver: Resolver,
    given: Sequence[str] = (),
    *,
    route: Callable[[socket.AddressFamily], str | None] = kernel_source,
    local: Callable[[str], bool] = is_local,
    timeout: float = 5.0,  # noqa: ASYNC109 -- bounds the DNS lookups of steps 2 and 5
) -> list[tuple[str, str]]:
    """The addresses receivers see our mail come from, each with how it was
    found (the module docstring gives the order)."""
    if given:
        unique = dict.fromkeys(str(ipaddress.ip_address(a)) for a in given)
        return [(address, "--ip") for address in unique]
    relay = config.queue.relay
    if relay is not None:
        async with asyncio.timeout(timeout):
            found = await _records(resolver, relay.host.host, "A")
            found += await _records(resolver, relay.host.host, "AAAA")
        return [(a, f"[queue] relay {relay.host.host}") for a in dict.fromkeys(found)]
    if config.queue.source_address:
        return [(config.queue.source_address, "[queue] source_address")]
    result: list[tuple[str, str]] = []
    for family, rdtype in ((socket.AF_INET, "A"), (socket.AF_INET6, "AAAA")):
        address = route(family)
        if address is not None:
            result.append((address, "the route to the internet"))
            continue
        async with asyncio.timeout(timeout):
            named = await _records(resolver, config.hostname, rdtype)
        result += [(a, f"{config.hostname} {rdtype}, on this host") for a in named if local(a)]
    return result
