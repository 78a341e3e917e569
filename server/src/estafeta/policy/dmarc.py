"""DMARC (rfc7489): the RFC5322.From domain, policy discovery, alignment.

``verify`` takes the SPF and DKIM results already computed for the message
and answers whether the From domain's owner vouches for it, and what its
published policy says to do when not.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy as email_policy
from email.errors import InvalidHeaderDefect
from email.headerregistry import AddressHeader
from email.parser import HeaderParser

from publicsuffixlist import PublicSuffixList

from estafeta.address import normalize_domain
from estafeta.dns import DNSTempError, Resolver, normalize_name
from estafeta.policy.dkim import DKIMResult

POLICIES = ("none", "quarantine", "reject")
ALIGNMENT_MODES = ("r", "s")
# rfc7489:6.6.4 — when a message is not sampled, "the next policy less
# strict than the one requested" applies.
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
# rfc7489:6.6.3 steps 2 and 4 — "Records that do not start with a 'v=' tag that
# identifies the current version of DMARC are discarded." The tag name is
# case-insensitive (ABNF strings), the value "DMARC1" is not (%x44 ...).
_DMARC_RECORD = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")
# rfc7489:6.4 dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ];
# commas and "!" inside the URI itself must be %-encoded.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,;!]+(?:![0-9]+[kmgtKMGT]?)?")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FO_OPTIONS = ("0", "1", "d", "s")


class DMARCSyntaxError(ValueError):
    """A DMARC record that cannot be used; the message says why."""


@dataclass(frozen=True)
class DMARCRecord:
    policy: str  # p=
    subdomain_policy: str  # sp=, defaults to p=
    adkim: str  # "r" | "s"
    aspf: str  # "r" | "s"
    pct: int  # 0..100
    rua: tuple[str, ...]
    ruf: tuple[str, ...]
    fo: str


def _uris(value: str | None) -> tuple[str, ...]:
    """The syntactically valid URIs of an rua=/ruf= list; invalid ones are dropped."""
    if not value:
        return ()
    uris = (part.strip(" \t") for part in value.split(","))
    return tuple(uri for uri in uris if _URI.fullmatch(uri))


def parse_record(txt: str) -> DMARCRecord:
    """Parse a DMARC TXT record (rfc7489:6.3, 6.4).

    Raises DMARCSyntaxError when the record cannot be used: v=DMARC1 not the
    first tag, a duplicate tag, or no valid p= (unless rua= has a valid URI:
    then rfc7489:6.6.3 step 6 says to act as if p=none). Unknown and malformed
    tags are ignored, and invalid values of the other tags fall back to their
    defaults ("Syntax errors in the remainder of the record SHOULD be
    discarded in favor of default values", rfc7489:6.3).
    """
    tags: dict[str, str] = {}
    for spec in txt.split(";"):
        spec = spec.strip(" \t\r\n")
        if not spec:
            continue  # a trailing ";" (and, leniently, an empty one between tags)
        name, equals, value = spec.partition("=")
        name = name.strip(" \t").lower()
        if not tags and (name != "v" or value.strip(" \t") != "DMARC1"):
            # rfc7489:6.3 — v= "MUST be the first tag in the list"; rfc7489:6.4
            # spells the version in upper case.
            raise DMARCSyntaxError("the record must start with v=DMARC1")
        if not equals or not _TAG_NAME.fullmatch(name):
            # rfc7489:6.3 — "Syntax errors in the remainder of the record
            # SHOULD be discarded": a malformed tag must not cost the domain
            # its whole policy.
            continue
        if name in tags:
            # rfc6376:3.2 (whose tag-list syntax rfc7489:6.3 uses): "if a tag
            # name does occur more than once, the entire tag-list is invalid".
            raise DMARCSyntaxError(f"duplicate tag {name}=")
        tags[name] = value.strip(" \t")
    if not tags:
        raise DMARCSyntaxError("empty record")

    rua = _uris(tags.get("rua"))
    policy = tags.get("p", "").lower()
    subdomain_policy = tags.get("sp", policy).lower()
    if policy not in POLICIES or subdomain_policy not in POLICIES:
        problem = (
            "no p= tag"
            if "p" not in tags
            else f"invalid p={tags['p']}"
            if policy not in POLICIES
            else f"invalid sp={tags['sp']}"
        )
        if not rua:
            raise DMARCSyntaxError(problem)
        # rfc7489:6.6.3 step 6 — with a valid rua=, "act as if a record
        # containing a valid 'v' tag and 'p=none' was retrieved".
        policy = subdomain_policy = "none"

    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if re.fullmatch(r"[0-9]{1,3}", pct_text) else 100
    fo = ":".join(
        option
        for option in (part.strip(" \t").lower() for part in tags.get("fo", "0").split(":"))
        if option in _FO_OPTIONS
    )
    return DMARCRecord(
        policy=policy,
        subdomain_policy=subdomain_policy,
        adkim=adkim if adkim in ALIGNMENT_MODES else "r",
        aspf=aspf if aspf in ALIGNMENT_MODES else "r",
        pct=pct if 0 <= pct <= 100 else 100,
        rua=rua,
        ruf=_uris(tags.get("ruf")),
        fo=fo or "0",
    )


# -- domains --------------------------------------------------------------------


@functools.cache
def _psl() -> PublicSuffixList:
    # The list shipped with publicsuffixlist: no network access, ever.
    return PublicSuffixList()


def _domain(name: str) -> str:
    """Lower-case A-label form; names that are not valid host names (DKIM d=
    may be anything ASCII) are only lower-cased."""
    try:
        return normalize_domain(name)
    except ValueError:
        return normalize_name(name)


def organizational_domain(domain: str) -> str:
    """rfc7489:3.2 — the public suffix plus one label. A name that is itself a
    public suffix is its own organizational domain."""
    domain = _domain(domain)
    if not domain:
        return ""
    return _psl().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """rfc7489:3.1.1/3.1.2 — strict ("s"): the same domain; relaxed ("r"):
    the same organizational domain."""
    a, b = _domain(a), _domain(b)
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return a == b or organizational_domain(a) == organizational_domain(b)


_HEADER_PARSER = HeaderParser(policy=email_policy.default)


def from_domain(headers: bytes) -> str | None:
    """The RFC5322.From domain (rfc7489:6.6.1), lower-case A-labels.

    None — which the caller treats as permerror — unless there is exactly one
    From field holding exactly one mailbox (not a group) with a domain name;
    also None when the field does not parse cleanly, since a receiver and a
    mail client that read it differently is how From is spoofed.
    """
    # rfc6532:3.2 allows UTF-8 in header fields; anything else becomes U+FFFD,
    # which no domain name can contain.
    text = headers.decode("utf-8", "replace")
    try:
        fields = _HEADER_PARSER.parsestr(text, headersonly=True).get_all("From") or []
    except Exception:  # the stdlib parser has crashed on hostile input before
        return None
    if len(fields) != 1:
        # rfc7489:6.6.1 — messages with multiple From fields (or none) are
        # not processed; the caller's policy is to treat them as errors.
        return None
    field = fields[0]
    if not isinstance(field, AddressHeader):
        return None
    defects: tuple[object, ...] = getattr(field, "defects", ())
    if any(isinstance(defect, InvalidHeaderDefect) for defect in defects):
        return None
    groups = field.groups
    if len(groups) != 1 or groups[0].display_name is not None:
        return None
    addresses = groups[0].addresses
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        return None
    try:
        # Encoded words are already decoded; display names never matter here.
        return normalize_domain(addresses[0].domain)
    except ValueError:
        return None  # address literal or not a valid domain name


# -- evaluation -------------------------------------------------------------------


@dataclass(frozen=True)
class DMARCResult:
    result: str  # "pass" | "fail" | "none" | "temperror" | "permerror"
    from_domain: str
    # The policy to apply: "none" | "quarantine" | "reject" (after sp= for
    # subdomains and pct sampling); always "none" unless the result is "fail".
    policy: str
    record: DMARCRecord | None
    reason: str
    # Where the record was found: the From domain, or its organizational
    # domain (rfc7489:6.6.3 step 3); "" without a record. The domain of an
    # aggregate report (rfc7489:7.2, C policy_published).
    policy_domain: str = ""
    # rfc7489:6.6.4 — a failing message the pct= draw let off with a weaker
    # policy (the "sampled_out" override reason of rfc7489:C).
    sampled_out: bool = False


def is_record(txt: str) -> bool:
    """Whether a TXT record is a DMARC record (rfc7489:6.6.3 step 4: it
    starts with v=DMARC1); also the test of rfc7489:7.1 step 5."""
    return _DMARC_RECORD.match(txt) is not None


class _TempError(Exception):
    pass


async def _records(resolver: Resolver, domain: str) -> list[str]:
    """The DMARC records at _dmarc.<domain> (rfc7489:6.6.3 steps 1-4)."""
    try:
        answer = await resolver.lookup(f"_dmarc.{domain}", "TXT")
    except DNSTempError as exc:
        raise _TempError(str(exc)) from None
    return [str(txt) for txt in answer.records if is_record(str(txt))]


async def verify(
    resolver: Resolver,
    from_domain: str,
    *,
    spf_result: str,
    spf_domain: str,
    dkim: Sequence[DKIMResult],
    rng: random.Random | None = None,
) -> DMARCResult:
    """Evaluate DMARC for ``from_domain`` (rfc7489:6.6.2, 6.6.3, 6.6.4).

    ``spf_domain`` is the domain SPF authenticated (rfc7489:3.1.2 uses the
    RFC5321.MailFrom domain); ``dkim`` the verified signatures. ``rng`` draws
    the pct= sample (rfc7489:6.6.4); tests pass a seeded one.
    """
    try:
        domain = normalize_domain(from_domain)
    except ValueError:
        return DMARCResult("permerror", from_domain, "none", None, "invalid From domain")
    org = organizational_domain(domain)
    from_org = False
    try:
        records = await _records(resolver, domain)
        if not records and org != domain:
            # rfc7489:6.6.3 step 3 — no record at the author domain: query
            # the organizational domain.
            records = await _records(resolver, org)
            from_org = True
    except _TempError as exc:
        return DMARCResult("temperror", domain, "none", None, f"DNS lookup failed: {exc}")
    if not records:
        return DMARCResult("none", domain, "none", None, "no DMARC record")
    policy_domain = org if from_org else domain
    source = f"_dmarc.{policy_domain}"
    if len(records) > 1:
        # rfc7489:6.6.3 step 5 — with several records, DMARC is not applied.
        return DMARCResult("permerror", domain, "none", None, f"{source}: multiple DMARC records")
    try:
        record = parse_record(records[0])
    except DMARCSyntaxError as exc:
        return DMARCResult("permerror", domain, "none", None, f"{source}: {exc}")

    # rfc7489:6.3 sp= — "policy to be enacted ... for all subdomains" when the
    # record was found at the organizational domain.
    requested = record.subdomain_policy if from_org and domain != org else record.policy

    # rfc7489:6.6.2 — DMARC passes when an authenticated identifier aligns.
    if (
        str(spf_result).lower() == "pass"
        and spf_domain
        and aligned(spf_domain, domain, record.aspf)
    ):
        return DMARCResult(
            "pass", domain, "none", record, f"SPF aligned ({spf_domain})", policy_domain
        )
    for result in dkim:
        if result.result == "pass" and aligned(result.domain, domain, record.adkim):
            return DMARCResult(
                "pass", domain, "none", record, f"DKIM aligned (d={result.domain})", policy_domain
            )

    # rfc7489:6.6.4 — apply the policy to pct% of failing messages; the rest
    # get the next less strict policy.
    draw = rng.randrange(100) if rng is not None else random.randrange(100)
    sampled = draw < record.pct
    applied = requested if sampled else _WEAKER[requested]
    reason = "no aligned SPF or DKIM pass"
    if not sampled:
        reason += f"; not sampled at pct={record.pct}, policy {requested} -> {applied}"
    sampled_out = applied != requested
    return DMARCResult("fail", domain, applied, record, reason, policy_domain, sampled_out)
