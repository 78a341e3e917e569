"""``estafeta doctor``: why mail might land in spam, checked (doctor/, docs/doctor.md).

    estafeta doctor [--json] [--strict] [--ip ADDRESS]... [--resolver IP[:PORT]]...
                    [--authoritative IP[:PORT]]... [--blocklist ZONE]... [--ca-file PEM]...
                    [--check NAME]... [--timeout SECONDS] [--max-time SECONDS]

Exit codes as in cli.py: 0 nothing failed (warnings allowed), 1 a check failed
(with ``--strict``: or warned), 2 bad usage or configuration (the message
names the option, or the file and key).

``--json``: {"hostname", "domains", "addresses": [{"address", "source"}],
"resolvers", "status": "ok"|"warn"|"fail", "summary": {"ok", "warn", "fail"},
"findings": [{"check", "subject", "status", "detail", "fix", "domain"}]}.

Nothing is written anywhere; the doctor reads the configuration, the DKIM
keys (run it as root or as the server's user) and asks DNS and the server's
own listeners.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from estafeta.cli import UsageError
from estafeta.config import Config, ConfigError, Endpoint, parse_endpoint
from estafeta.dns import DNSPythonResolver
from estafeta.doctor import CHECKS, Context, View, context, render, run
from estafeta.doctor.findings import Report
from estafeta.policy.dnsbl import Zone

Command = Callable[[Config, argparse.Namespace], int]
Add = Callable[
    ["argparse._SubParsersAction[argparse.ArgumentParser]", str, Command, str],
    argparse.ArgumentParser,
]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], add: Add) -> None:
    command = add(
        commands,
        "doctor",
        cmd_doctor,
        "check what receivers look at (blocklists, PTR, HELO, SPF, DKIM, DMARC, MTA-STS, "
        "TLS-RPT, TLSA, certificates, DNS) and say how to fix each problem; exit 1 if "
        "something failed",
    )
    command.add_argument("--json", action="store_true", help="machine-readable output")
    command.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    command.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an address mail is sent from (repeatable; default: [queue] source_address, "
        "or this host's route to the internet)",
    )
    command.add_argument(
        "--resolver",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="a recursive resolver to ask (repeatable; the first is used by every check; "
        "default: [dns] nameservers, or the system's)",
    )
    command.add_argument(
        "--authoritative",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="ask this server as every zone's authoritative server (repeatable; "
        "default: the zones' NS records)",
    )
    command.add_argument(
        "--blocklist",
        action="append",
        default=[],
        metavar="ZONE",
        help="a DNS blocklist to look the sending addresses up in, besides [dnsbl] zone "
        "(repeatable), e.g. zen.spamhaus.org",
    )
    command.add_argument(
        "--ca-file",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="trust these CA certificates too (besides the system's and [queue] ca_file)",
    )
    command.add_argument(
        "--check",
        action="append",
        default=[],
        choices=list(CHECKS),
        metavar="NAME",
        help=f"run only this check (repeatable): {', '.join(CHECKS)}",
    )
    command.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="for each network step: a DNS query, a connection (default 5)",
    )
    command.add_argument(
        "--max-time",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="for the whole run; a check still running then fails (default 60)",
    )


def _servers(option: str, texts: list[str]) -> list[Endpoint]:
    servers = []
    for text in texts:
        try:
            endpoint = parse_endpoint(text, default_port=53)
            ipaddress.ip_address(endpoint.host)
        except ValueError as exc:
            raise UsageError(f"{option} {text}: not IP[:PORT] ({exc})") from None
        servers.append(endpoint)
    return servers


def _label(endpoint: Endpoint) -> str:
    return str(endpoint) if endpoint.port != 53 else endpoint.host


def _tls_context(config: Config, extra: list[Path]) -> ssl.SSLContext:
    if config.queue.ca_file is not None:
        try:
            context.client_context([config.queue.ca_file])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                config.path, "queue.ca_file", f"cannot load {config.queue.ca_file}: {exc}"
            ) from None
    for path in extra:
        try:
            context.client_context([path])
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--ca-file {path}: not a PEM CA file ({exc})") from None
    files = ([config.queue.ca_file] if config.queue.ca_file else []) + extra
    return context.client_context(files)


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    for option, value in (("--timeout", args.timeout), ("--max-time", args.max_time)):
        if not value > 0:
            raise UsageError(f"{option} must be a number of seconds greater than 0")
    for address in args.ip:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise UsageError(f"--ip {address}: not an IP address") from None
    resolvers = _servers("--resolver", args.resolver) or list(config.nameservers)
    authoritative = _servers("--authoritative", args.authoritative)
    zones = list(config.dnsbl.settings.zones)
    for name in args.blocklist:
        try:
            zone = Zone(name)
        except ValueError as exc:
            raise UsageError(f"--blocklist {name}: {exc}") from None
        if zone.name not in [z.name for z in zones]:
            zones.append(zone)
    tls = _tls_context(config, args.ca_file)
    # Findings say what went wrong; the policy code's log lines would repeat it.
    logging.getLogger("estafeta").addHandler(logging.NullHandler())
    logging.getLogger("estafeta").propagate = False

    timeout = args.timeout

    def resolver(endpoint: Endpoint, recursion: bool = True) -> DNSPythonResolver:
        return DNSPythonResolver([(endpoint.host, endpoint.port)], timeout, recursion=recursion)

    async def diagnose() -> Report:
        if resolvers:
            views = [View(f"resolver {_label(e)}", resolver(e)) for e in resolvers]
        else:
            views = [View("the system resolver", DNSPythonResolver(timeout=timeout))]
        try:
            addresses = await context.sending_addresses(
                config, views[0].resolver, args.ip, timeout=timeout
            )
        except TimeoutError:
            addresses = []
        relay = config.queue.relay
        ctx = Context(
            hostname=config.hostname,
            domains=config.domains,
            resolver=views[0].resolver,
            addresses=tuple(addresses),
            relay=relay.host.host if relay is not None and not args.ip else "",
            recursive=tuple(views),
            authoritative=(
                tuple(View(_label(e), resolver(e, False)) for e in authoritative)
                if authoritative
                else None
            ),
            direct=lambda address: resolver(Endpoint(address, 53), False),
            dkim_dir=config.dkim_dir,
            blocklists=tuple(zones),
            domain_blocklists=config.dnsbl.settings.domain_zones,
            listeners=context.listeners(config),
            tls_configured=config.tls is not None,
            cert_file=config.tls.cert if config.tls is not None else None,
            tls=tls,
            serves_mta_sts="https" in config.listen,
            mta_sts_port=config.queue.mta_sts_port,
            greeting_pause=config.screen.greeting_pause,
            timeout=timeout,
        )
        labels = tuple(view.label for view in views)
        return await run(ctx, only=args.check, max_time=args.max_time, resolvers=labels)

    report = asyncio.run(diagnose())
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(render.text(report, colour=colour))
    return report.exit_code(strict=args.strict)
