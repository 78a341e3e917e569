"""Are the sending addresses (and the mail domains) on a DNS blocklist?

The lookups are ``policy.dnsbl.Lists``' (rfc5782:2.1 reversed octets, 2.4
reversed nibbles, 3 domain names): an A answer in 127.0.0.0/8 that the zone's
configured codes count is a listing, its TXT record the reason; an answer in
127.255.255.0/24 means the list refused the query (a public resolver, too many
queries) and says nothing about the address.

One finding per zone, naming every address (or domain) asked there.
"""

from __future__ import annotations

import math

from estafeta.doctor.context import Context
from estafeta.doctor.findings import Finding, Problems
from estafeta.policy import dnsbl

CHECK = "blocklist"


def _unanswered(problems: Problems, item: dnsbl.Unanswered) -> None:
    if item.why == "refused":
        problems.warn(
            f"{item.subject}: the list answered {item.code}, which means it refused the query",
            "ask the list through a resolver of your own (not a public one such as 8.8.8.8): "
            "lists refuse those; set [dns] nameservers or --resolver",
        )
    else:
        problems.warn(
            f"{item.subject}: no answer ({item.why})",
            f"check that {item.zone} exists and your resolver reaches it",
        )


async def check(ctx: Context) -> list[Finding]:
    host = ctx.hostname
    if not ctx.blocklists and not ctx.domain_blocklists:
        return [
            Finding(
                CHECK,
                "(none configured)",
                "warn",
                "no DNS blocklist to look the sending addresses up in",
                "name the lists receivers use: --blocklist zen.spamhaus.org (repeatable), "
                "or [[dnsbl.zone]] in the configuration",
                host,
            )
        ]
    settings = dnsbl.Settings(
        zones=ctx.blocklists,
        domain_zones=ctx.domain_blocklists,
        timeout=ctx.timeout,
        cache_size=0,
        log_period=math.inf,
    )
    lists = dnsbl.Lists(ctx.resolver, settings)
    results = [await lists.check_ip(address) for address, _ in ctx.addresses]
    findings: list[Finding] = []
    # Without sending addresses the "addresses" finding fails (doctor.checks).
    for zone in ctx.blocklists if results else ():
        problems = Problems(CHECK, zone.name, host)
        for result in results:
            listed = [x for x in (*result.listed_by, *result.allowed_by) if x.zone == zone.name]
            missed = [x for x in result.unanswered if x.zone == zone.name]
            version = 4 if ":" not in result.ip else 6
            if not (zone.ipv4 if version == 4 else zone.ipv6):
                problems.ok(f"{result.ip}: not asked (the zone lists no IPv{version})")
            elif missed:
                _unanswered(problems, missed[0])
            elif listed and zone.kind == "allow":
                problems.ok(f"{result.ip}: on this allowlist ({', '.join(listed[0].codes)})")
            elif listed:
                reason = f": {listed[0].reason}" if listed[0].reason else ""
                problems.fail(
                    f"{result.ip} is listed ({', '.join(listed[0].codes)}){reason}",
                    f"find out why {result.ip} was listed (an open relay, a hijacked account, "
                    f"a sending spike), stop it, then ask {zone.name} for removal "
                    "(its TXT reason links to the form)",
                )
            else:
                problems.ok(f"{result.ip}: not listed")
        findings.append(problems.finding())
    if ctx.domain_blocklists:
        found = await lists.check_domains(ctx.domains)
        for zone in ctx.domain_blocklists:
            problems = Problems(CHECK, zone.name, host)
            for listing in found.listed_by:
                if listing.zone == zone.name:
                    reason = f": {listing.reason}" if listing.reason else ""
                    problems.fail(
                        f"{listing.subject} is listed ({', '.join(listing.codes)}){reason}",
                        f"ask {zone.name} why {listing.subject} is listed and for its removal",
                    )
            for item in found.unanswered:
                if item.zone == zone.name:
                    _unanswered(problems, item)
            if not problems.statuses:
                problems.ok(f"{', '.join(found.domains)}: not listed")
            findings.append(problems.finding())
    return findings
