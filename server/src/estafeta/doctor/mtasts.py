"""MTA-STS and TLS-RPT: the policies that make senders require TLS to our MX,
and the reports that tell us when it fails.

MTA-STS (rfc8461), per domain: exactly one valid ``_mta-sts`` TXT record
(3.1, ``queue.mtasts.select_txt``); the policy fetched over verified HTTPS
from ``mta-sts.<domain>`` exactly as the queue fetches other domains' policies
(3.3, ``queue.mtasts.fetch_policy``, on ``[queue] mta_sts_port``) and parsed
(3.2); its mode; every MX of the domain matching its ``mx`` patterns (4.1).

The policy id rule. rfc8461:3.1 only says the id changes when the policy
does; estafeta makes it a function of the policy: the dns_records role
writes the policy file the server serves (``<config dir>/mta-sts/<domain>.txt``)
and publishes as its id the first 20 hex digits of the SHA-1 of that text
(roles/dns_records/templates/records.json.j2), and a domain without a file
gets a policy made from ``[mta_sts]``, whose id is made the same way. So an
id in that form (20 lowercase hex digits) must be ``policy_id(<the text
served>)``. When it is not, DNS and the file are out of step: the id changed
without the file (the test of issue 22) or, worse, the file changed without
the id, and senders that cached the old policy keep applying it for up to
max_age. An id in any other form (a date, a counter: rfc8461:3.1 allows 1 to
32 letters and digits) was not made by the role, so it cannot be tied to the
policy: that is said, and is no failure (a hand-managed id would otherwise
fail for ever).

TLS-RPT (rfc8460:3), per domain: exactly one ``v=TLSRPTv1`` record at
``_smtp._tls.<domain>``, with ``rua=`` and only ``mailto:`` or ``https:`` URIs.
"""

from __future__ import annotations

import hashlib
import re

from estafeta.doctor.context import Context
from estafeta.doctor.findings import Finding, Problems
from estafeta.queue import mtasts

MIN_MAX_AGE = 86400  # rfc8461:3.2 recommends weeks; under a day is a mistake
POLICY_URL = "https://mta-sts.{domain}" + mtasts.POLICY_PATH


def policy_id(text: str) -> str:
    """The id estafeta publishes for a policy text (see the module docstring)."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:20]


# The form of policy_id(): an id in it is checked against the policy served.
_SHA1_ID = re.compile(r"[0-9a-f]{20}\Z")


async def check_mta_sts(ctx: Context) -> list[Finding]:
    return [await _mta_sts(ctx, domain) for domain in ctx.domains]


async def _mta_sts(ctx: Context, domain: str) -> Finding:
    name = f"_mta-sts.{domain}"
    problems = Problems("mta-sts", domain, domain)
    url = POLICY_URL.format(domain=domain)
    found = await ctx.records(problems, name, "TXT")
    if found is None:
        return problems.finding()
    candidates = [str(r) for r in found if str(r).startswith("v=STSv1")]
    if not candidates:
        if ctx.serves_mta_sts:
            problems.warn(
                f"no MTA-STS record at {name}: senders do not look for the policy the "
                "server serves",
                f'publish "v=STSv1; id=ID" at {name} (the dns_records role does)',
            )
        else:
            problems.ok("no MTA-STS policy (optional: it makes senders require TLS to the MX)")
        return problems.finding()
    published = mtasts.select_txt(candidates)
    if published is None:
        why = f"{len(candidates)} v=STSv1 records" if len(candidates) > 1 else candidates[0]
        problems.fail(
            f"{name} is not one valid record ({why}): senders see no policy (rfc8461:3.1)",
            f'leave one "v=STSv1; id=ID" record at {name}',
        )
        return problems.finding()
    try:
        text = await mtasts.fetch_policy(
            domain,
            resolver=ctx.resolver,
            ssl_context=ctx.tls,
            port=ctx.mta_sts_port,
            timeout=ctx.timeout,
        )
        policy = mtasts.parse_policy(text)
    except (mtasts.PolicyError, OSError, TimeoutError) as exc:
        problems.fail(
            f"the policy at {url} cannot be used: {exc or type(exc).__name__}",
            f"serve it: mta-sts.{domain} must resolve to the https listener, whose "
            "certificate must name it",
        )
        return problems.finding()
    served = policy_id(text)
    if not _SHA1_ID.match(published):
        problems.ok(
            f"id={published} is not in the form the dns_records role publishes (the first 20 "
            "hex digits of the SHA-1 of the policy), so it cannot be tied to the policy served; "
            "change it whenever the policy changes (rfc8461:3.1)"
        )
    elif published != served:
        problems.fail(
            f"{name} publishes id={published}, but the policy served has the id {served} "
            "(the SHA-1 rule of doctor/mtasts.py): DNS and the policy file are out of step, "
            "and senders that cached a policy miss a change",
            f"run the dns_records role again (it writes the policy and publishes its id), "
            f'or publish "v=STSv1; id={served}" at {name}',
        )
    else:
        problems.ok(f"id={published} is the id of the policy served at {url}")
    if policy.mode == "none":
        problems.warn("mode none: the policy is withdrawn", "set the mode to testing or enforce")
    else:
        problems.ok(f"mode {policy.mode}")
    if policy.max_age < MIN_MAX_AGE:
        problems.warn(
            f"max_age {policy.max_age}: senders fetch the policy again that often",
            "set max_age to a week or more (604800)",
        )
    await _mx_match(ctx, problems, domain, policy)
    return problems.finding()


async def _mx_match(ctx: Context, problems: Problems, domain: str, policy: mtasts.Policy) -> None:
    found = await ctx.records(problems, domain, "MX")
    if found is None:
        return
    hosts = [str(r[1]) for r in found if isinstance(r, tuple) and r[1]]
    if not hosts:
        problems.warn(f"{domain} has no MX record", f"publish an MX record for {domain}")
        return
    unmatched = [host for host in hosts if not policy.matches(host)]
    if not unmatched:
        problems.ok(f"every MX ({', '.join(hosts)}) matches the policy")
        return
    note = f"MX {', '.join(unmatched)} not in the policy's mx ({', '.join(policy.mx) or 'none'})"
    fix = f"add mx: {unmatched[0]} to the policy of {domain}, then publish its new id"
    if policy.mode == "enforce":
        problems.fail(note + ": senders that enforce it do not deliver there", fix)
    else:
        problems.warn(note, fix)


# -- TLS-RPT (rfc8460:3) ------------------------------------------------------------

_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")  # tlsrpt-ext-name
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")  # tlsrpt-ext-value
_URI = re.compile(r"(?:mailto:[^\s,;@]+@[^\s,;@]+|https://[^\s,;]+)\Z", re.IGNORECASE)


def tlsrpt_rua(record: str) -> list[str]:
    """The rua URIs of a TLS-RPT record; ValueError says why it is not one.

    rfc8460:3: ``v=TLSRPTv1`` (case-sensitive), then ``;``-separated fields,
    an optional trailing ``;``; ``rua=`` with comma-separated ``mailto:`` or
    ``https:`` URIs is required; other fields are extensions.
    """
    parts = _FIELD_DELIM.split(record)
    if parts[0] != "v=TLSRPTv1":
        raise ValueError("it does not start with v=TLSRPTv1;")
    fields = parts[1:]
    if fields and fields[-1] == "":
        fields.pop()
    rua: list[str] | None = None
    for field in fields:
        key, eq, value = field.partition("=")
        if key == "rua" and eq:
            uris = re.split(r"[ \t]*,[ \t]*", value)
            bad = [uri for uri in uris if not _URI.match(uri)]
            if bad:
                raise ValueError(f"rua {bad[0]!r} is not a mailto: or https: URI")
            rua = uris if rua is None else rua
        elif not (eq and _EXT_NAME.match(key) and _EXT_VALUE.match(value)):
            raise ValueError(f"{field!r} is not a key=value field")
    if not rua:
        raise ValueError("it has no rua=")
    return rua


async def check_tlsrpt(ctx: Context) -> list[Finding]:
    return [await _tlsrpt(ctx, domain) for domain in ctx.domains]


async def _tlsrpt(ctx: Context, domain: str) -> Finding:
    name = f"_smtp._tls.{domain}"
    problems = Problems("tls-rpt", name, domain)
    publish = f'publish "v=TLSRPTv1; rua=mailto:postmaster@{domain}" at {name}'
    found = await ctx.records(problems, name, "TXT")
    if found is None:
        return problems.finding()
    # rfc8460:3 — records that do not begin with "v=TLSRPTv1;" are discarded.
    records = [str(r) for r in found if str(r).startswith("v=TLSRPTv1")]
    if not records:
        problems.warn("no TLS-RPT record: senders do not tell you when TLS to you fails", publish)
    elif len(records) > 1:
        problems.fail(
            f"{len(records)} TLS-RPT records: senders send no reports (rfc8460:3)",
            f"leave one v=TLSRPTv1 record at {name}",
        )
    else:
        try:
            uris = tlsrpt_rua(records[0])
        except ValueError as exc:
            problems.fail(f"the record cannot be used: {exc}", publish)
        else:
            problems.ok(f"reports go to {', '.join(uris)}")
    return problems.finding()
