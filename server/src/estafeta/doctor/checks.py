"""Run the checks: all at once, each within the time budget, none able to crash the run.

A check that raises becomes a ``fail`` finding naming the exception (a bug
to report, never a traceback); one that does not finish within ``max_time``
becomes a ``fail`` finding saying so. The run takes at most ``max_time``
plus the time to cancel what is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from estafeta.doctor import blocklist, dkim, dmarc, dnsviews, mtasts, rdns, spf, tls
from estafeta.doctor.context import Context
from estafeta.doctor.findings import Finding, Report

Check = Callable[[Context], Awaitable[list[Finding]]]

# In the order the findings are shown (within each domain's group).
CHECKS: dict[str, Check] = {
    "blocklist": blocklist.check,
    "ptr": rdns.check_ptr,
    "helo": rdns.check_helo,
    "spf": spf.check,
    "dkim": dkim.check,
    "dmarc": dmarc.check,
    "mta-sts": mtasts.check_mta_sts,
    "tls-rpt": mtasts.check_tlsrpt,
    "certificate": tls.check_certificates,
    "tlsa": tls.check_tlsa,
    "dns-views": dnsviews.check,
}
_ORDER = {name: i for i, name in enumerate(["addresses", *CHECKS])}


def addresses_finding(ctx: Context) -> Finding:
    if not ctx.addresses:
        return Finding(
            "addresses",
            ctx.hostname,
            "fail",
            "the addresses mail is sent from could not be found (no route to the internet, "
            f"and {ctx.hostname} has no address of this host)",
            "name them: estafeta doctor --ip ADDRESS (repeatable)",
            ctx.hostname,
        )
    shown = "; ".join(
        f"{address} ({source}{NAT_NOTE if _behind_nat(address) else ''})"
        for address, source in ctx.addresses
    )
    return Finding("addresses", ctx.hostname, "ok", f"mail is sent from {shown}", "", ctx.hostname)


# rfc1918, rfc6598 (carrier-grade NAT) and rfc4193 (unique local) addresses:
# the world sees mail from such a host come from another address.
_NAT = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
NAT_NOTE = ", a private address: behind NAT, name the public one with --ip"


def _behind_nat(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return any(parsed.version == n.version and parsed in n for n in _NAT)


async def _guarded(name: str, check: Check, ctx: Context, max_time: float) -> list[Finding]:
    try:
        async with asyncio.timeout(max_time):
            return await check(ctx)
    except TimeoutError:
        why = f"did not finish within {max_time:g} s (DNS or a listener does not answer)"
        fix = "run estafeta doctor --timeout with more seconds, or look at the servers asked"
    except Exception as exc:  # a bug: say so instead of a traceback
        why = f"the check failed: {type(exc).__name__}: {exc}"
        fix = "report this as an estafeta bug, with the output of estafeta doctor --json"
    return [Finding(name, "(the whole check)", "fail", why, fix, ctx.hostname)]


def _sort_key(ctx: Context, finding: Finding) -> tuple[int, int]:
    groups = [ctx.hostname, *ctx.domains]
    group = groups.index(finding.domain) if finding.domain in groups else len(groups)
    return group, _ORDER.get(finding.check, len(_ORDER))


async def run(
    ctx: Context,
    *,
    only: Sequence[str] = (),
    max_time: float = 60.0,
    resolvers: Sequence[str] = (),
) -> Report:
    """Every check (or those named in ``only``), as one report."""
    chosen = [(name, check) for name, check in CHECKS.items() if not only or name in only]
    try:
        results = await asyncio.gather(
            *(_guarded(name, check, ctx, max_time) for name, check in chosen)
        )
    finally:
        for task in ctx.probes.values():  # listener probes nobody waits for any more
            task.cancel()
        await asyncio.gather(*ctx.probes.values(), return_exceptions=True)
    findings = [addresses_finding(ctx), *(f for result in results for f in result)]
    findings.sort(key=lambda f: _sort_key(ctx, f))
    return Report(
        hostname=ctx.hostname,
        domains=ctx.domains,
        addresses=ctx.addresses,
        resolvers=tuple(resolvers),
        findings=tuple(findings),
    )
