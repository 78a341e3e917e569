"""DMARC: does each domain publish a policy, and where do its reports go?

Discovery as receivers do it (rfc7489:6.6.3): ``_dmarc.<domain>``, else the
organizational domain's record (its ``sp=`` then applies); exactly one
``v=DMARC1`` record, parsed by ``policy.dmarc.parse_record``. ``p=none`` is a
warning: receivers then do nothing with mail that fails, which is what lets
forgers use the domain (and large receivers now expect an enforcing policy
from bulk senders). Without ``rua`` nobody tells the operator who sends as
the domain. A report address outside the domain's organization gets reports
only when its domain agrees (rfc7489:7.1: a ``v=DMARC1`` TXT record at
``<domain>._report._dmarc.<its domain>``).
"""

from __future__ import annotations

import re
import urllib.parse

from estafeta.dns import DNSTempError
from estafeta.doctor.context import Context
from estafeta.doctor.findings import DNS_FIX, Finding, Problems, dns_failure
from estafeta.policy import dmarc

# rfc7489:6.6.3 — records not starting with v=DMARC1 are discarded.
_DMARC = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")


async def _records(ctx: Context, name: str) -> list[str]:
    answer = await ctx.resolver.lookup(name, "TXT")
    return [str(r) for r in answer.records if _DMARC.match(str(r))]


async def check(ctx: Context) -> list[Finding]:
    return [await _domain(ctx, domain) for domain in ctx.domains]


async def _domain(ctx: Context, domain: str) -> Finding:
    name = f"_dmarc.{domain}"
    problems = Problems("dmarc", name, domain)
    org = dmarc.organizational_domain(domain)
    suggested = f'"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"'
    try:
        records, source = await _records(ctx, name), name
        if not records and org != domain:
            records, source = await _records(ctx, f"_dmarc.{org}"), f"_dmarc.{org}"
    except DNSTempError as exc:
        problems.fail(f"the TXT lookup of {name} failed ({dns_failure(exc)})", DNS_FIX)
        return problems.finding()
    if not records:
        problems.fail(
            f"no DMARC record at {name}: receivers cannot tell the domain's own mail from "
            "forgeries, and large ones junk bulk mail without one",
            f"publish {suggested} as the TXT record {name}",
        )
        return problems.finding()
    if len(records) > 1:
        problems.fail(
            f"{source} has {len(records)} DMARC records: receivers apply none (rfc7489:6.6.3)",
            f"leave one v=DMARC1 record at {source}",
        )
        return problems.finding()
    try:
        record = dmarc.parse_record(records[0])
    except dmarc.DMARCSyntaxError as exc:
        problems.fail(f"{source} cannot be used: {exc}", f"publish {suggested} at {source}")
        return problems.finding()
    policy = record.subdomain_policy if source != name else record.policy
    where = f" (from {source})" if source != name else ""
    if policy == "none":
        problems.warn(
            f"p=none{where}: receivers do nothing with mail that fails DMARC",
            f"once the reports show that all your mail passes, publish p=quarantine, then "
            f"p=reject, at {source}",
        )
    else:
        problems.ok(f"p={policy}{where}" + (f", pct={record.pct}" if record.pct < 100 else ""))
    if not record.rua:
        problems.warn(
            "no rua=: nobody sends you aggregate reports of who sends mail as the domain",
            f"add rua=mailto:postmaster@{domain} to {source}",
        )
    for uri in record.rua:
        await _report_address(ctx, problems, domain, org, uri)
    return problems.finding()


async def _report_address(
    ctx: Context, problems: Problems, domain: str, org: str, uri: str
) -> None:
    address = uri.split("!", 1)[0]  # rfc7489:6.4 — "!size" limits the report size
    if not address.lower().startswith("mailto:"):
        problems.warn(
            f"rua {address}: receivers send aggregate reports by mail (mailto:)",
            f"use a mailto: address in rua= at _dmarc.{domain}",
        )
        return
    mailbox = urllib.parse.unquote(address[len("mailto:") :])
    target = mailbox.rpartition("@")[2].lower().rstrip(".")
    if target in ctx.domains:
        problems.ok(f"reports go to {mailbox}, a domain of this server")
        return
    if dmarc.organizational_domain(target) == org:
        problems.ok(f"reports go to {mailbox} (not a domain of this server)")
        return
    # rfc7489:7.1 — verifying external destinations.
    consent = f"{domain}._report._dmarc.{target}"
    try:
        agreed = bool(await _records(ctx, consent))
    except DNSTempError as exc:
        problems.warn(f"the lookup of {consent} failed ({dns_failure(exc)})", DNS_FIX)
        return
    if agreed:
        problems.ok(f"reports go to {mailbox}; {target} accepts them ({consent})")
    else:
        problems.warn(
            f"reports to {mailbox} are not sent: {target} does not publish {consent} (rfc7489:7.1)",
            f'have {target} publish "v=DMARC1" at {consent}, or report to an address of {domain}',
        )
