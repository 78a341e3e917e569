"""The zone's authoritative servers against the recursive resolvers.

Right after a change the world does not see what the zone now says: a
recursive resolver keeps an answer for its TTL, and a secondary name server
serves the old zone until it transfers the new one. The other checks ask the
first recursive resolver; this one asks, for every record they depend on,

- each authoritative server of the zone, without recursion (rfc1035:4.1.1,
  RD clear): the zone is found by asking for SOA records from the name up
  (the closest enclosing name with a SOA record), its servers are its NS
  records and their addresses; ``--authoritative`` names them instead;
- each recursive resolver (``--resolver``, else ``[dns] nameservers``, else
  the system's),

and reports when they differ: name servers among themselves (their SOA
serials too), and a resolver against the name servers. A server that does
not answer is reported too.

Records compared: MX and TXT (SPF) of each domain, its ``_dmarc``,
``_mta-sts`` and ``_smtp._tls`` TXT and the DKIM key records of its
selectors; A, AAAA and ``_25._tcp`` TLSA of the host name; each zone's SOA
(among its name servers only: resolvers keep it for its own TTL). A name
delegated to a zone of its own below a mail domain is asked at the mail
domain's zone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass

from estafeta.dns import DNSTempError, Resolver
from estafeta.doctor import dkim as doctor_dkim
from estafeta.doctor.context import Context, View
from estafeta.doctor.findings import DNS_FIX, Finding, Problems, dns_failure

MAX_NS = 8  # name servers of one zone asked (each at each of its addresses)
MAX_SHOWN = 70  # characters of a record value shown


@dataclass(frozen=True)
class _Answer:
    values: tuple[str, ...] = ()
    error: str = ""

    def show(self) -> str:
        if self.error:
            return f"no answer ({self.error})"
        if not self.values:
            return "(none)"
        text = " | ".join(self.values)
        return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _value(rdtype: str, record: object) -> str:
    if rdtype == "MX" and isinstance(record, tuple):
        return f"{record[0]} {record[1]}"
    if rdtype == "TLSA" and isinstance(record, tuple):
        return f"{record[0]} {record[1]} {record[2]} {record[3].hex()}"
    if rdtype == "SOA" and isinstance(record, tuple):
        return f"serial {record[1]}"
    if rdtype == "TXT":
        return f'"{record}"'
    return str(record)


async def _ask(resolver: Resolver, name: str, rdtype: str, seconds: float) -> _Answer:
    try:
        async with asyncio.timeout(seconds):
            answer = await resolver.lookup(name, rdtype)
    except DNSTempError as exc:
        return _Answer(error=dns_failure(exc))
    except TimeoutError:
        return _Answer(error="timeout")
    return _Answer(tuple(sorted(_value(rdtype, r) for r in answer.records)))


async def zone_of(resolver: Resolver, name: str) -> str | None:
    """The zone ``name`` is in: the closest enclosing name with a SOA record
    (not a top-level domain). Raises DNSTempError."""
    labels = name.split(".")
    for i in range(len(labels) - 1):
        candidate = ".".join(labels[i:])
        answer = await resolver.lookup(candidate, "SOA")
        if answer.records:
            return candidate
    return None


async def servers(ctx: Context, zone: str) -> tuple[list[View], list[str]]:
    """The zone's authoritative servers (one view per address), and what went
    wrong finding them."""
    if ctx.authoritative is not None:
        return list(ctx.authoritative), []
    problems: list[str] = []
    try:
        answer = await ctx.resolver.lookup(zone, "NS")
    except DNSTempError as exc:
        return [], [f"the NS lookup of {zone} failed ({dns_failure(exc)})"]
    names = sorted(str(r) for r in answer.records)[:MAX_NS]
    views: list[View] = []
    for ns in names:
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            with contextlib.suppress(DNSTempError):
                addresses += [str(r) for r in (await ctx.resolver.lookup(ns, rdtype)).records]
        if not addresses:
            problems.append(f"the name server {ns} has no address")
        if ctx.direct is not None:
            views += [View(f"{ns} ({address})", ctx.direct(address)) for address in addresses]
    return views, problems


def _names(ctx: Context) -> list[tuple[str, str, str]]:
    """(base name, name, type) of every record compared; the base name's zone is asked."""
    items: list[tuple[str, str, str]] = []
    for domain in ctx.domains:
        items += [(domain, domain, "MX"), (domain, domain, "TXT")]
        for prefix in ("_dmarc", "_mta-sts", "_smtp._tls"):
            items.append((domain, f"{prefix}.{domain}", "TXT"))
        for selector in doctor_dkim.selectors(ctx, domain):
            items.append((domain, f"{selector}._domainkey.{domain}", "TXT"))
    host = ctx.hostname
    items += [(host, host, "A"), (host, host, "AAAA"), (host, f"_25._tcp.{host}", "TLSA")]
    return items


async def check(ctx: Context) -> list[Finding]:
    zones: dict[str, str | None] = {}
    findings: list[Finding] = []
    for base in dict.fromkeys(base for base, _, _ in _names(ctx)):
        try:
            zones[base] = await zone_of(ctx.resolver, base)
        except DNSTempError as exc:
            zones[base] = None
            problems = Problems("dns-views", base, _group(ctx, base))
            problems.warn(f"the zone of {base} cannot be found ({dns_failure(exc)})", DNS_FIX)
            findings.append(problems.finding())
    by_zone: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for base, name, rdtype in _names(ctx):
        zone = zones.get(base)
        if zone is not None:
            by_zone[zone].append((name, rdtype))
    results = await asyncio.gather(
        *(_zone(ctx, zone, records) for zone, records in by_zone.items())
    )
    return findings + list(results)


def _group(ctx: Context, name: str) -> str:
    for domain in ctx.domains:
        if name == domain or name.endswith("." + domain) or domain.endswith("." + name):
            return domain
    return ctx.hostname


async def _zone(ctx: Context, zone: str, records: list[tuple[str, str]]) -> Finding:
    problems = Problems("dns-views", zone, _group(ctx, zone))
    authoritative, trouble = await servers(ctx, zone)
    for text in trouble:
        problems.warn(text, f"give every NS of {zone} an address that answers")
    if not authoritative:
        problems.warn(
            f"no authoritative server of {zone} to ask",
            "check the NS records of the zone, or name its servers with --authoritative",
        )
        return problems.finding()
    views = authoritative + list(ctx.recursive)
    asked = [(zone, "SOA"), *records]
    answers = await asyncio.gather(
        *(_ask(v.resolver, n, t, ctx.timeout) for v in views for n, t in asked)
    )
    table = {
        (view.label, name, rdtype): answers[i * len(asked) + j]
        for i, view in enumerate(views)
        for j, (name, rdtype) in enumerate(asked)
    }
    silent = set()
    for view in views:
        failed = [table[(view.label, n, t)] for n, t in asked if table[(view.label, n, t)].error]
        if len(failed) == len(asked):
            silent.add(view.label)
            problems.warn(
                f"{view.label} does not answer ({failed[0].error})",
                f"make {view.label} answer for {zone}, or take it out of the NS records"
                if view in authoritative
                else f"check the resolver {view.label}",
            )
    auth = [v for v in authoritative if v.label not in silent]
    recursive = [v for v in ctx.recursive if v.label not in silent]
    differences = 0
    for name, rdtype in asked:
        served = {v.label: table[(v.label, name, rdtype)] for v in auth}
        values = {a.values for a in served.values() if not a.error}
        if len(values) > 1:
            differences += 1
            shown = "; ".join(f"{label}: {a.show()}" for label, a in served.items())
            problems.warn(
                f"the name servers disagree on {name} {rdtype} ({shown})",
                f"make the secondaries of {zone} transfer the zone again (compare SOA serials)",
            )
            continue
        if rdtype == "SOA" or not values:
            continue
        truth = next(iter(values))
        for view in recursive:
            seen = table[(view.label, name, rdtype)]
            if not seen.error and seen.values != truth:
                differences += 1
                problems.warn(
                    f"{view.label} answers {name} {rdtype} with {seen.show()}, the name "
                    f"servers with {_Answer(truth).show()}",
                    f"wait for the TTL of {name} to pass, or flush the resolver's cache "
                    f"(unbound-control flush_zone {zone})",
                )
    if not differences:
        problems.ok(
            f"{len(auth)} name server address(es) and {len(recursive)} resolver(s) agree on "
            f"{len(asked)} records"
        )
    return problems.finding()
