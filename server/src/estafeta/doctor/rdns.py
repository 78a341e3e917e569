"""Reverse DNS of the sending addresses, and the HELO name that goes with it.

``ptr``: each sending address has a PTR record whose name resolves back to
the address (forward-confirmed reverse DNS, what receivers' FCrDNS checks
want: large receivers refuse or junk mail from addresses without it).

``helo``: the name we give in EHLO is the configured host name
(queue/delivery.py); it must resolve to each sending address
(rfc5321:4.1.4 lets receivers look, and spam filters do), and it should be
the name the PTR record gives. A missing PTR is the ``ptr`` finding's alone.
"""

from __future__ import annotations

import ipaddress

from estafeta.dns import DNSTempError, Resolver, reverse_name
from estafeta.doctor.context import Context
from estafeta.doctor.findings import DNS_FIX, Finding, Problems, dns_failure

# At most this many PTR names are followed per address (receivers do the same:
# rfc7208:4.6.4 caps PTR names at 10).
MAX_PTR_NAMES = 10


async def _forward(resolver: Resolver, name: str, address: str) -> set[str]:
    rdtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
    answer = await resolver.lookup(name, rdtype)
    found: set[str] = set()
    for record in answer.records:
        try:
            found.add(str(ipaddress.ip_address(str(record))))
        except ValueError:
            continue
    return found


async def _ptr_names(resolver: Resolver, address: str) -> list[str]:
    answer = await resolver.lookup(reverse_name(address), "PTR")
    return list(dict.fromkeys(str(r) for r in answer.records))[:MAX_PTR_NAMES]


async def check_ptr(ctx: Context) -> list[Finding]:
    if not ctx.addresses:
        return []
    problems = Problems("ptr", ctx.hostname, ctx.hostname)
    for address, _ in ctx.addresses:
        owner = "the provider of the address (its panel calls it 'reverse DNS' or 'rDNS')"
        try:
            names = await _ptr_names(ctx.resolver, address)
        except DNSTempError as exc:
            problems.fail(
                f"{address}: the PTR lookup failed ({dns_failure(exc)})",
                DNS_FIX,
            )
            continue
        if not names:
            problems.fail(
                f"{address} has no PTR record ({reverse_name(address)})",
                f"ask {owner} to set the PTR of {address} to {ctx.hostname}",
            )
            continue
        confirmed: list[str] = []
        for name in names:
            try:
                if address in await _forward(ctx.resolver, name, address):
                    confirmed.append(name)
            except DNSTempError:
                continue
        if not confirmed:
            problems.fail(
                f"{address} has the PTR {', '.join(names)}, which does not resolve back to it",
                f"give {names[0]} an {'A' if ':' not in address else 'AAAA'} record {address}, "
                f"or ask {owner} to set the PTR of {address} to {ctx.hostname}",
            )
        elif len(names) > 1:
            problems.warn(
                f"{address} has {len(names)} PTR names ({', '.join(names)})",
                f"keep one PTR name for {address}: receivers take the first they get",
            )
        else:
            problems.ok(f"{address} → {confirmed[0]}, which resolves back to it")
    return [problems.finding()]


async def check_helo(ctx: Context) -> list[Finding]:
    if not ctx.addresses:
        return []
    problems = Problems("helo", ctx.hostname, ctx.hostname)
    if ctx.relay:
        problems.ok(f"mail leaves through the relay {ctx.relay}: the HELO name is the relay's")
        return [problems.finding()]
    if "." not in ctx.hostname:
        problems.fail(
            f"the HELO name {ctx.hostname} is not a fully-qualified domain name (rfc5321:2.3.5)",
            "set hostname in the configuration to the full name of the host",
        )
        return [problems.finding()]
    for address, _ in ctx.addresses:
        try:
            resolves = address in await _forward(ctx.resolver, ctx.hostname, address)
        except DNSTempError as exc:
            problems.fail(
                f"the lookup of {ctx.hostname} failed ({dns_failure(exc)})",
                DNS_FIX,
            )
            continue
        if not resolves:
            rdtype = "A" if ":" not in address else "AAAA"
            problems.fail(
                f"the HELO name {ctx.hostname} does not resolve to {address}",
                f"publish {ctx.hostname} {rdtype} {address} (or set hostname to the name "
                f"the PTR of {address} gives)",
            )
            continue
        try:
            names = await _ptr_names(ctx.resolver, address)
        except DNSTempError:
            names = []  # the ptr finding says so
        if names and ctx.hostname not in names:
            problems.warn(
                f"{ctx.hostname} resolves to {address}, but the PTR of {address} is "
                f"{', '.join(names)}",
                f"set the PTR of {address} to {ctx.hostname}, or hostname to {names[0]}",
            )
        else:
            problems.ok(f"the HELO name {ctx.hostname} resolves to {address}")
    return [problems.finding()]
