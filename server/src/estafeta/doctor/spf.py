"""SPF: does each domain's record let the sending addresses send, within the limits?

Everything is ``policy.spf.check_host`` (rfc7208:4), the evaluation the
server itself runs on inbound mail:

- for each sending address, check_host(address, domain,
  ``postmaster@domain``) must give ``pass``;
- the record's worst case: the evaluation for an address the record does
  not name (``PROBES``, documentation addresses) walks every mechanism up to
  the final ``all``, through every include and redirect, which is the whole
  expansion a receiver may have to do. Its DNS-querying terms must stay
  within 10 and its void lookups within 2 (rfc7208:4.6.4); it is evaluated
  with higher limits so that the finding says how far over a record is.
  That such an address passes means the record passes everybody.
"""

from __future__ import annotations

import ipaddress

from estafeta.doctor.context import Context
from estafeta.doctor.findings import Finding, Problems
from estafeta.policy import spf

# rfc5737 / rfc3849 documentation addresses: no real record authorises them.
PROBES = {4: "192.0.2.0", 6: "2001:db8::"}
MAX_LOOKUPS = 10  # rfc7208:4.6.4
MAX_VOID_LOOKUPS = 2  # rfc7208:4.6.4
# The limits of the worst-case evaluation: high enough to count an overlong
# record, low enough to bound the work.
_COUNT_UP_TO = 40


def _is_spf(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")  # rfc7208:4.5


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def check(ctx: Context) -> list[Finding]:
    return [await _domain(ctx, domain) for domain in ctx.domains]


async def _domain(ctx: Context, domain: str) -> Finding:
    problems = Problems("spf", domain, domain)
    sender = f"postmaster@{domain}"
    found = await ctx.records(problems, domain, "TXT")
    if found is None:
        return problems.finding()
    records = [str(r) for r in found if _is_spf(str(r))]
    hosts = " ".join(f"ip{ipaddress.ip_address(a).version}:{a}" for a, _ in ctx.addresses) or "mx"
    if not records:
        problems.fail(
            f"{domain} has no SPF record",
            f'publish the TXT record "v=spf1 {hosts} -all" at {domain}',
        )
        return problems.finding()
    if len(records) > 1:
        # rfc7208:4.5 — more than one record is a permerror.
        problems.fail(
            f"{domain} has {len(records)} SPF records: receivers take that as permerror",
            f"merge them into one v=spf1 record at {domain}",
        )
        return problems.finding()
    problems.ok(f'"{_short(records[0])}"')
    versions = sorted({ipaddress.ip_address(a).version for a, _ in ctx.addresses} or {4})
    for version in versions:
        probe = PROBES[version]
        verdict = await spf.check_host(
            ctx.resolver,
            probe,
            domain,
            sender,
            helo=ctx.hostname,
            max_lookups=_COUNT_UP_TO,
            max_void_lookups=_COUNT_UP_TO,
        )
        if not _worst_case(problems, domain, version, verdict):
            break
    for address, _ in ctx.addresses:
        verdict = await spf.check_host(ctx.resolver, address, domain, sender, helo=ctx.hostname)
        if verdict.result is spf.SPFResult.PASS:
            problems.ok(f"{address}: pass")
            continue
        version = ipaddress.ip_address(address).version
        problems.fail(
            f"{address}: {verdict.result} ({verdict.reason})",
            f"let {address} send for {domain}: add ip{version}:{address} (or a mechanism "
            f"that covers this host, such as mx or a:{ctx.hostname}) to its SPF record",
        )
    return problems.finding()


def _worst_case(problems: Problems, domain: str, version: int, verdict: spf.SPFVerdict) -> bool:
    """Judge the evaluation for an address the record does not name; False
    when the record is broken (the other family would say the same)."""
    result = verdict.result
    if result is spf.SPFResult.TEMPERROR:
        problems.fail(f"evaluating the record failed: {verdict.reason}", "make the zones answer")
        return False
    lookups = len(verdict.lookups)
    over = lookups > _COUNT_UP_TO or verdict.void_lookups > _COUNT_UP_TO
    broken = result is spf.SPFResult.PERMERROR and not over
    if broken:
        problems.fail(
            f"the record is broken: {verdict.reason}",
            f"correct the SPF record of {domain} (rfc7208 syntax; includes must exist)",
        )
    if lookups > MAX_LOOKUPS:
        shown = ", ".join(verdict.lookups[:15]) + (", ..." if lookups > 15 else "")
        more = "over " if lookups > _COUNT_UP_TO else ""
        problems.fail(
            f"the record needs {more}{min(lookups, _COUNT_UP_TO)} DNS lookups ({shown}); "
            f"receivers stop at {MAX_LOOKUPS} and treat it as permerror (rfc7208:4.6.4)",
            f"bring the SPF record of {domain} under {MAX_LOOKUPS} lookups: replace includes "
            "and a/mx by the ip4:/ip6: ranges they stand for",
        )
        return False
    if verdict.void_lookups > MAX_VOID_LOOKUPS:
        problems.fail(
            f"{verdict.void_lookups} of its lookups find no record; more than "
            f"{MAX_VOID_LOOKUPS} is a permerror (rfc7208:4.6.4)",
            f"remove the mechanisms of the SPF record of {domain} that name nothing",
        )
        return False
    if broken:
        return False
    problems.ok(f"{lookups} of {MAX_LOOKUPS} DNS lookups (IPv{version})")
    if result is spf.SPFResult.PASS:
        problems.warn(
            f"{PROBES[version]}, an address nobody uses, passes too ({verdict.reason}): "
            "the record lets anyone send as the domain",
            f"end the SPF record of {domain} with -all (or ~all), not +all",
        )
    elif result in (spf.SPFResult.NEUTRAL, spf.SPFResult.NONE):
        problems.warn(
            "other addresses get neutral: forged mail is not told apart",
            f"end the SPF record of {domain} with -all (or ~all)",
        )
    return True
