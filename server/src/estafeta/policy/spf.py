"""SPF, the Sender Policy Framework (RFC 7208): is this client allowed to use this domain?

``check_host()`` is the function of rfc7208:4: it fetches the domain's ``v=spf1``
record, parses it completely (a syntax error anywhere is a permerror, rfc7208:4.6),
then evaluates the mechanisms left to right, following ``include:`` and
``redirect=`` under the DNS processing limits of rfc7208:4.6.4. ``verify()`` picks
the identity to check from the SMTP envelope (rfc7208:2.3, 2.4).

DNS comes in as an ``estafeta.dns.Resolver``; nothing here blocks or spawns
threads. Parsing happens before evaluation and produces small frozen objects;
evaluation state (lookup counters, the client's validated PTR names) lives in
one ``_Check`` per top-level call and is shared by the include/redirect chain.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from estafeta.dns import DNSTempError, Resolver, normalize_name, reverse_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# rfc7208:4.6.4 — an MTA SHOULD bound the whole evaluation and report temperror
# when the bound is hit; the bound SHOULD allow at least 20 seconds.
MAX_ELAPSED = 20.0
# rfc7208:4.6.4 — no more than 10 MX names per "mx", 10 PTR names per "ptr"/%{p}.
MAX_MX_NAMES = 10
MAX_PTR_NAMES = 10


class SPFResult(enum.StrEnum):
    """rfc7208:2.6 results."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"  # noqa: S105 (an SPF result, not a password)
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class SPFVerdict:
    result: SPFResult
    domain: str  # the domain whose policy was evaluated (MAIL FROM domain or HELO)
    identity: str  # "mailfrom" or "helo"
    explanation: str | None  # rfc7208:6.2 exp= text on fail, else None
    reason: str  # short human text: which mechanism matched, or why error
    # rfc7208:4.6.4 — the DNS-querying terms and void lookups the evaluation
    # used, in order (``estafeta doctor`` shows how close a record is to the limits).
    lookups: tuple[str, ...] = ()
    void_lookups: int = 0


class _PermError(Exception):
    """The published policy cannot be interpreted (rfc7208:2.6.7)."""


class _TempError(Exception):
    """A transient DNS failure (rfc7208:2.6.6)."""


# --- macros (rfc7208:7) ------------------------------------------------------

# rfc7208:7.1 — macro-letter; "c", "r" and "t" only in explanation strings (7.2).
_LETTERS = frozenset("slodipvh")
_EXP_LETTERS = _LETTERS | frozenset("crt")
# "%{" macro-letter transformers *delimiter "}"; transformers = *DIGIT [ "r" ]
_MACRO_RE = re.compile(r"\{([A-Za-z])([0-9]*)([rR]?)([-.+,/_=]*)\}")
# rfc7208:7.1 toplabel = ( *alphanum ALPHA *alphanum ) /
#                       ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL_RE = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")


@dataclass(frozen=True)
class _Macro:
    letter: str  # lower case
    digits: int | None  # keep this many right-hand parts
    reverse: bool
    delimiters: str  # split on these; "." when none given
    escape: bool  # an upper-case letter: URL-escape the value (rfc7208:7.3)


_Piece = str | _Macro
_MacroString = tuple[_Piece, ...]


def _parse_macro_string(
    text: str, letters: frozenset[str], *, explanation: bool = False
) -> tuple[_MacroString, str]:
    """Parse a macro-string (rfc7208:7.1); returns the pieces and the literal
    text after the last macro-expand (for the domain-end rule)."""
    pieces: list[_Piece] = []
    literal: list[str] = []
    tail: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            nxt = text[i + 1 : i + 2]
            tail = []
            # rfc7208:7.1 — "%%" / "%_" / "%-" (7.3: "%-" is a URL-encoded space)
            if nxt in ("%", "_", "-"):
                literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
                i += 2
                continue
            match = _MACRO_RE.match(text, i + 1)
            if match is None:
                # rfc7208:7.1 — a "%" not followed by "{", "%", "-" or "_" is a syntax error
                raise _PermError(f"invalid macro at {text[i : i + 8]!r}")
            letter, digits, reverse, delimiters = match.groups()
            if letter.lower() not in letters:
                raise _PermError(f"macro letter {letter!r} not allowed here")
            count = int(digits) if digits else None
            if count == 0:
                # rfc7208:7.3 — if a DIGIT is specified, the value MUST be nonzero
                raise _PermError(f"zero DIGIT transformer in %{{{match.group(0)[1:]}")
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(
                _Macro(letter.lower(), count, bool(reverse), delimiters or ".", letter.isupper())
            )
            i = match.end()
            continue
        # rfc7208:7.1 macro-literal = %x21-24 / %x26-7E; explanation-string also allows SP
        if not ("\x21" <= char <= "\x7e" or (explanation and char == " ")):
            raise _PermError(f"invalid character {char!r}")
        literal.append(char)
        tail.append(char)
        i += 1
    if literal:
        pieces.append("".join(literal))
    return tuple(pieces), "".join(tail)


def _parse_domain_spec(text: str) -> _MacroString:
    """rfc7208:7.1 domain-spec = macro-string domain-end;
    domain-end = ( "." toplabel [ "." ] ) / macro-expand."""
    if not text:
        raise _PermError("empty domain-spec")
    pieces, tail = _parse_macro_string(text, _LETTERS)
    if tail:  # ends in literal text rather than a macro-expand
        end = tail[:-1] if tail.endswith(".") else tail
        _, dot, toplabel = end.rpartition(".")
        if not dot or not _TOPLABEL_RE.fullmatch(toplabel):
            raise _PermError(f"invalid domain-spec {text!r}")
    return pieces


# --- records (rfc7208:4.5, 4.6.1, 5, 6) --------------------------------------

_QUALIFIERS = {
    "+": SPFResult.PASS,
    "-": SPFResult.FAIL,
    "~": SPFResult.SOFTFAIL,
    "?": SPFResult.NEUTRAL,
}
# rfc7208:4.6.1 — a modifier is name "=" value;
# name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
_MODIFIER_RE = re.compile(r"([A-Za-z][-A-Za-z0-9_.]*)=(.*)", re.DOTALL)
_MECHANISM_RE = re.compile(r"([-+~?]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.DOTALL)
# rfc7208:5.6 ip4-network = qnum "." qnum "." qnum "." qnum (no leading zeros)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4_RE = re.compile(rf"({_QNUM}(?:\.{_QNUM}){{3}})(?:/([0-9]+))?")
_IP6_RE = re.compile(r"([0-9A-Fa-f:.]+)(?:/([0-9]+))?")
# rfc7208:5.6 dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
_DUAL_CIDR_RE = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?")
_SPEC_AND_CIDR_RE = re.compile(r"(.*?)((?:/[0-9]+)?(?://[0-9]+)?)", re.DOTALL)


@dataclass(frozen=True)
class _Mechanism:
    text: str  # as published, for reasons
    qualifier: SPFResult
    name: str  # all include a mx ptr ip4 ip6 exists
    domain: _MacroString | None = None
    network: IPNetwork | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class _Record:
    mechanisms: tuple[_Mechanism, ...]
    redirect: _MacroString | None
    exp: _MacroString | None


def _is_spf(text: str) -> bool:
    # rfc7208:4.5 — the version section is exactly "v=spf1" (case-insensitive,
    # ABNF strings), terminated by SP or the end of the record.
    return text[:6].lower() == "v=spf1" and text[6:7] in ("", " ")


def _cidr(digits: str | None, maximum: int) -> int:
    if digits is None:
        return maximum
    # rfc7208:5.6 — lengths beyond 32 / 128 are invalid; leading zeros are not
    # permitted in ip4-network, and we hold the lengths to the same rule.
    if (len(digits) > 1 and digits[0] == "0") or int(digits) > maximum:
        raise _PermError(f"invalid CIDR length /{digits}")
    return int(digits)


def _parse_mechanism(term: str) -> _Mechanism:
    match = _MECHANISM_RE.fullmatch(term)
    if match is None:
        raise _PermError(f"unknown term {term!r}")
    qualifier = _QUALIFIERS[match.group(1) or "+"]  # rfc7208:4.6.2 default "+"
    name, rest = match.group(2).lower(), match.group(3)
    if name == "all":  # rfc7208:5.1 all = "all"
        if rest:
            raise _PermError(f"invalid term {term!r}")
        return _Mechanism(term, qualifier, name)
    if name in ("include", "exists"):  # rfc7208:5.2, 5.7 — ":" domain-spec required
        if not rest.startswith(":"):
            raise _PermError(f"{name} needs a domain: {term!r}")
        return _Mechanism(term, qualifier, name, domain=_parse_domain_spec(rest[1:]))
    if name == "ptr":  # rfc7208:5.5 PTR = "ptr" [ ":" domain-spec ]
        if not rest:
            return _Mechanism(term, qualifier, name)
        if not rest.startswith(":"):
            raise _PermError(f"invalid term {term!r}")
        return _Mechanism(term, qualifier, name, domain=_parse_domain_spec(rest[1:]))
    if name in ("a", "mx"):  # rfc7208:5.3, 5.4 — [ ":" domain-spec ] [ dual-cidr-length ]
        domain: _MacroString | None = None
        cidr = rest
        if rest.startswith(":"):
            split = _SPEC_AND_CIDR_RE.fullmatch(rest[1:])
            assert split is not None  # the pattern matches every string
            domain = _parse_domain_spec(split.group(1))
            cidr = split.group(2)
        lengths = _DUAL_CIDR_RE.fullmatch(cidr)
        if lengths is None:
            raise _PermError(f"invalid term {term!r}")
        return _Mechanism(
            term,
            qualifier,
            name,
            domain=domain,
            cidr4=_cidr(lengths.group(1), 32),
            cidr6=_cidr(lengths.group(2), 128),
        )
    if name in ("ip4", "ip6"):  # rfc7208:5.6
        pattern = _IP4_RE if name == "ip4" else _IP6_RE
        found = pattern.fullmatch(rest[1:]) if rest.startswith(":") else None
        if found is None:
            raise _PermError(f"invalid term {term!r}")
        try:
            if name == "ip4":
                address = ipaddress.IPv4Address(found.group(1))
                network: IPNetwork = ipaddress.IPv4Network(
                    (address, _cidr(found.group(2), 32)), strict=False
                )
            else:
                address6 = ipaddress.IPv6Address(found.group(1))
                network = ipaddress.IPv6Network(
                    (address6, _cidr(found.group(2), 128)), strict=False
                )
        except ValueError:
            raise _PermError(f"invalid address in {term!r}") from None
        return _Mechanism(term, qualifier, name, network=network)
    raise _PermError(f"unknown mechanism {term!r}")


def _parse_record(text: str) -> _Record:
    """Parse a whole record up front: rfc7208:4.6 — a syntax error anywhere
    makes the result permerror, before any mechanism is evaluated."""
    mechanisms: list[_Mechanism] = []
    redirect: _MacroString | None = None
    exp: _MacroString | None = None
    # rfc7208:4.6.1 — terms are separated by one or more SP (and only SP);
    # rfc7208:4.5 record = version terms *SP.
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER_RE.fullmatch(term)
        if modifier is None:
            mechanisms.append(_parse_mechanism(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        # rfc7208:6 — redirect and exp at most once each, else permerror.
        if name == "redirect":
            if redirect is not None:
                raise _PermError("more than one redirect=")
            redirect = _parse_domain_spec(value)  # rfc7208:6.1
        elif name == "exp":
            if exp is not None:
                raise _PermError("more than one exp=")
            exp = _parse_domain_spec(value)  # rfc7208:6.2
        else:
            # rfc7208:6 — unknown modifiers are ignored, but their value must
            # still be a valid macro-string (rfc7208:A unknown-modifier).
            _parse_macro_string(value, _EXP_LETTERS)
    if any(m.name == "all" for m in mechanisms):
        redirect = None  # rfc7208:6.1 — disregarded when "all" is present
    return _Record(tuple(mechanisms), redirect, exp)


# --- names --------------------------------------------------------------------


def _strip_dot(name: str) -> str:
    return name[:-1] if name.endswith(".") else name


def _queryable(name: str) -> bool:
    """A name that can be put in a DNS query: labels of 1..63 octets, 253 in all."""
    return 0 < len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


def _valid_domain(name: str) -> bool:
    # rfc7208:4.3 — a malformed <domain> (long or empty label, ...), one that
    # is not a multi-label domain name, or an address literal gives "none".
    if not _queryable(name) or "." not in name or name.startswith("["):
        return False
    return not name.rsplit(".", 1)[1].isdigit()


def _truncate(name: str) -> str:
    # rfc7208:7.3 — an expanded domain name over 253 characters loses labels
    # from the left until it fits.
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


def _nibbles(address: IPAddress) -> str:
    if address.version == 4:
        return str(address)
    # rfc7208:7.3 — for IPv6 "i" is dot-separated nibbles. RFC 4408's example
    # writes them upper case and the RFC 7208 test suite expects that; DNS
    # does not care.
    return ".".join(f"{int(address):032X}")


def _matches(client: IPAddress, address: IPAddress, cidr4: int, cidr6: int) -> bool:
    if client.version != address.version:
        return False
    bits = 32 if client.version == 4 else 128
    shift = bits - (cidr4 if client.version == 4 else cidr6)
    return int(client) >> shift == int(address) >> shift


# --- evaluation ---------------------------------------------------------------


class _Check:
    """State of one top-level check_host(): inputs, limits and counters."""

    def __init__(
        self,
        resolver: Resolver,
        ip: IPAddress,
        sender: str,
        helo: str,
        receiver: str,
        max_lookups: int,
        max_void_lookups: int,
    ) -> None:
        self.resolver = resolver
        self.ip = ip
        # rfc7208:4.3 — a <sender> without local-part gets "postmaster".
        local, _, domain = sender.rpartition("@")
        self.local = local or "postmaster"
        self.sender_domain = domain
        self.sender = f"{self.local}@{domain}"
        self.helo = helo
        self.receiver = receiver
        self.max_lookups = max_lookups
        self.max_void_lookups = max_void_lookups
        self.lookups = 0
        self.terms: list[str] = []
        self.void_lookups = 0
        self._ptr_names: list[str] | None = None
        self._validated: list[str] | None = None

    # rfc7208:4.6.4 — include, a, mx, ptr, exists and redirect each count one;
    # more than max_lookups of them is a permerror.
    def count_term(self, term: str) -> None:
        self.lookups += 1
        self.terms.append(term)
        if self.lookups > self.max_lookups:
            raise _PermError(f"more than {self.max_lookups} DNS-querying terms at {term!r}")

    async def query(self, name: str, rdtype: str, *, void: bool = False) -> tuple[object, ...]:
        """Records of ``rdtype`` at ``name``; a DNS error is a temperror (rfc7208:5)."""
        if not _queryable(name):
            # rfc7208:4.8 leaves a target-name that is no valid DNS name
            # undefined; like 4.3 and 5, treat it as non-existent (no match).
            return ()
        try:
            answer = await self.resolver.lookup(name, rdtype)
        except DNSTempError as exc:
            raise _TempError(str(exc)) from None
        # rfc7208:5 — NXDOMAIN is "no error and zero answers".
        if void and not answer.records:
            # rfc7208:4.6.4 — at most max_void_lookups terms may draw an empty
            # answer or NXDOMAIN, else permerror.
            self.void_lookups += 1
            if self.void_lookups > self.max_void_lookups:
                raise _PermError(f"more than {self.max_void_lookups} void lookups at {name}")
        return answer.records

    async def addresses(self, name: str, *, void: bool = False) -> list[IPAddress]:
        # rfc7208:5 — A records for an IPv4 client, AAAA for IPv6.
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        found: list[IPAddress] = []
        for record in await self.query(name, rdtype, void=void):
            try:
                found.append(ipaddress.ip_address(str(record).strip()))
            except ValueError:
                continue
        return found

    async def ptr_names(self) -> list[str]:
        """The client's PTR names, at most MAX_PTR_NAMES (rfc7208:4.6.4: the rest
        MUST be ignored); [] on a DNS error (rfc7208:5.5: no match)."""
        if self._ptr_names is None:
            try:
                records = await self.query(reverse_name(str(self.ip)), "PTR")
            except _TempError:
                records = ()
            self._ptr_names = [normalize_name(str(r)) for r in records][:MAX_PTR_NAMES]
        return self._ptr_names

    async def validate(self, names: Sequence[str]) -> list[str]:
        """rfc7208:5.5 — the names among ``names`` whose addresses include the
        client's; a DNS error on one name skips that name."""
        found = await asyncio.gather(*(self.addresses(n) for n in names), return_exceptions=True)
        validated: list[str] = []
        for name, addresses in zip(names, found, strict=True):
            if isinstance(addresses, _TempError):
                continue
            if isinstance(addresses, BaseException):
                raise addresses
            if self.ip in addresses:
                validated.append(name)
        return validated

    async def validated_name(self, domain: str) -> str:
        # rfc7208:7.3 "p" — prefer <domain> itself, then a subdomain of it,
        # then any validated name; "unknown" when there is none.
        if self._validated is None:
            self._validated = await self.validate(await self.ptr_names())
        domain = domain.lower()
        for name in self._validated:
            if name == domain:
                return name
        for name in self._validated:
            if name.endswith("." + domain):
                return name
        return self._validated[0] if self._validated else "unknown"

    async def expand(self, pieces: _MacroString, domain: str) -> str:
        """rfc7208:7.3 macro expansion; never fails (syntax is checked at parse)."""
        out: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = await self._macro_value(piece.letter, domain)
            # rfc7208:7.3 — split on the delimiters, optionally reverse, keep
            # the DIGIT right-hand parts, rejoin with ".".
            parts = re.split("[" + re.escape(piece.delimiters) + "]", value)
            if piece.reverse:
                parts.reverse()
            if piece.digits is not None:
                parts = parts[-piece.digits :]
            value = ".".join(parts)
            if piece.escape:
                # rfc7208:7.3 — upper-case macros are URL-escaped: everything
                # outside unreserved (ALPHA DIGIT "-" "." "_" "~").
                value = urllib.parse.quote(value, safe="")
            out.append(value)
        return "".join(out)

    async def _macro_value(self, letter: str, domain: str) -> str:
        # rfc7208:7.2 macro definitions
        match letter:
            case "s":
                return self.sender
            case "l":
                return self.local
            case "o":
                return self.sender_domain
            case "d":
                return domain
            case "i":
                return _nibbles(self.ip)
            case "p":
                return await self.validated_name(domain)
            case "v":
                return "in-addr" if self.ip.version == 4 else "ip6"
            case "h":
                return self.helo
            case "c":
                return str(self.ip)
            case "r":
                return self.receiver
            case "t":
                return str(int(time.time()))
        raise AssertionError(letter)  # excluded by the parser

    async def target(self, spec: _MacroString | None, domain: str) -> str:
        """rfc7208:4.8 — <target-name>: the expanded domain-spec, or <domain>."""
        if spec is None:
            return domain
        return _truncate(_strip_dot(await self.expand(spec, domain)))


async def _evaluate(
    check: _Check, domain: str, *, explain: bool
) -> tuple[SPFResult, str | None, str]:
    """check_host() proper (rfc7208:4) for ``domain``; raises _PermError or
    _TempError. Returns the result, the explanation and a reason."""
    # rfc7208:4.3 initial processing
    if not _valid_domain(domain):
        return SPFResult.NONE, None, f"{domain!r} is not a valid domain name"
    # rfc7208:4.4 record lookup — TXT only (type SPF was dropped, rfc7208:3.1);
    # a DNS error is temperror, NXDOMAIN is "none" below.
    try:
        answer = await check.resolver.lookup(domain, "TXT")
    except DNSTempError as exc:
        raise _TempError(f"{domain}: {exc}") from None
    # rfc7208:4.5 selecting records
    records = [str(r) for r in answer.records if _is_spf(str(r))]
    if not records:
        return SPFResult.NONE, None, f"{domain}: no SPF record"
    if len(records) > 1:
        raise _PermError(f"{domain}: {len(records)} SPF records")
    try:
        record = _parse_record(records[0])
    except _PermError as exc:
        raise _PermError(f"{domain}: {exc}") from None
    # rfc7208:4.6.2 — mechanisms in order; the first match gives the qualifier.
    for mechanism in record.mechanisms:
        if await _mechanism_matches(check, mechanism, domain):
            result = mechanism.qualifier
            explanation = None
            # rfc7208:6.2 — exp= only for a "fail" from a mechanism match, and
            # never from an included record (explain=False there).
            if result is SPFResult.FAIL and explain and record.exp is not None:
                explanation = await _explanation(check, record.exp, domain)
            return result, explanation, f"{domain}: {mechanism.text!r} matched"
    # rfc7208:6.1 redirect — counts as a DNS-querying term (rfc7208:4.6.4);
    # the target's result is ours, with "none" turned into permerror, and the
    # target's own exp= applies instead of ours.
    if record.redirect is not None:
        check.count_term("redirect")
        target = await check.target(record.redirect, domain)
        result, explanation, reason = await _evaluate(check, target, explain=explain)
        if result is SPFResult.NONE:
            raise _PermError(f"{domain}: redirect={target}: no SPF record")
        return result, explanation, reason
    # rfc7208:4.7 default result
    return SPFResult.NEUTRAL, None, f"{domain}: no mechanism matched"


async def _mechanism_matches(check: _Check, mechanism: _Mechanism, domain: str) -> bool:
    name = mechanism.name
    if name == "all":  # rfc7208:5.1
        return True
    if name in ("ip4", "ip6"):  # rfc7208:5.6
        assert mechanism.network is not None
        network = mechanism.network
        return check.ip.version == network.version and check.ip in network
    check.count_term(mechanism.text)  # rfc7208:4.6.4
    target = await check.target(mechanism.domain, domain)
    if name == "include":  # rfc7208:5.2
        result, _, _ = await _evaluate(check, target, explain=False)
        # pass → match; fail, softfail, neutral → no match; temperror and
        # permerror propagate as exceptions; none → permerror.
        if result is SPFResult.NONE:
            raise _PermError(f"include:{target}: no SPF record")
        return result is SPFResult.PASS
    if name == "a":  # rfc7208:5.3
        return any(
            _matches(check.ip, a, mechanism.cidr4, mechanism.cidr6)
            for a in await check.addresses(target, void=True)
        )
    if name == "mx":  # rfc7208:5.4
        return await _mx_matches(check, mechanism, target)
    if name == "ptr":  # rfc7208:5.5
        target = target.lower()
        candidates = [n for n in await check.ptr_names() if n == target or n.endswith("." + target)]
        return bool(await check.validate(candidates))
    if name == "exists":  # rfc7208:5.7 — always an A query, whatever the client
        return bool(await check.query(target, "A", void=True))
    raise AssertionError(name)  # excluded by the parser


async def _mx_matches(check: _Check, mechanism: _Mechanism, target: str) -> bool:
    records = await check.query(target, "MX", void=True)
    # rfc7208:4.6.4 — more than 10 MX names (so more than 10 address lookups)
    # is a permerror for "mx".
    if len(records) > MAX_MX_NAMES:
        raise _PermError(f"mx:{target}: more than {MAX_MX_NAMES} MX records")
    exchanges: list[str] = []
    for record in records:
        exchange = normalize_name(str(record[1])) if isinstance(record, tuple) else ""
        if exchange:  # rfc7505 null MX "." has no addresses
            exchanges.append(exchange)
    # rfc7208:5.4 — no implicit MX: a target without MX records matches nothing.
    found = await asyncio.gather(*(check.addresses(e) for e in exchanges), return_exceptions=True)
    error: BaseException | None = None
    for addresses in found:
        if isinstance(addresses, _TempError):
            error = error or addresses
            continue
        if isinstance(addresses, BaseException):
            raise addresses
        if any(_matches(check.ip, a, mechanism.cidr4, mechanism.cidr6) for a in addresses):
            return True
    if error is not None:
        raise error  # rfc7208:5 — a DNS error on an exchange is temperror
    return False


async def _explanation(check: _Check, spec: _MacroString, domain: str) -> str | None:
    """rfc7208:6.2 — the expanded TXT record at the expanded exp= target; on a
    DNS error, no or several records, or a bad explanation-string, proceed as
    if there were no exp=. Not counted against any limit (rfc7208:4.6.4)."""
    target = await check.target(spec, domain)
    if not _queryable(target):
        return None
    try:
        answer = await check.resolver.lookup(target, "TXT")
    except DNSTempError:
        return None
    if len(answer.records) != 1:
        return None
    try:
        pieces, _ = _parse_macro_string(str(answer.records[0]), _EXP_LETTERS, explanation=True)
    except _PermError:
        return None
    text = await check.expand(pieces, domain)
    # rfc7208:6.2 — the explanation string MUST be limited to US-ASCII.
    return text if text.isascii() else None


async def check_host(
    resolver: Resolver,
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    receiver: str = "unknown",
    max_lookups: int = 10,
    max_void_lookups: int = 2,
    identity: str = "mailfrom",
) -> SPFVerdict:
    """rfc7208:4 check_host(<ip>, <domain>, <sender>).

    ``helo`` feeds %{h}, ``receiver`` %{r} (rfc7208:7.2); ``identity`` is only
    reported back in the verdict.
    """
    domain = _strip_dot(domain.strip()).lower()

    check: _Check | None = None

    def verdict(result: SPFResult, reason: str, explanation: str | None = None) -> SPFVerdict:
        if check is None:
            return SPFVerdict(result, domain, identity, explanation, reason)
        terms, voids = tuple(check.terms), check.void_lookups
        return SPFVerdict(result, domain, identity, explanation, reason, terms, voids)

    try:
        client = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return verdict(SPFResult.NONE, f"invalid client address {ip!r}")
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        # rfc7208:5 — an IPv4-mapped IPv6 address MUST be treated as IPv4.
        client = client.ipv4_mapped
    if "@" not in sender:
        sender = f"@{sender or domain}"
    check = _Check(resolver, client, sender, helo, receiver, max_lookups, max_void_lookups)
    try:
        async with asyncio.timeout(MAX_ELAPSED):  # rfc7208:4.6.4
            result, explanation, reason = await _evaluate(check, domain, explain=True)
    except _PermError as exc:
        return verdict(SPFResult.PERMERROR, str(exc))
    except _TempError as exc:
        return verdict(SPFResult.TEMPERROR, f"DNS error: {exc}")
    except TimeoutError:
        return verdict(SPFResult.TEMPERROR, f"evaluation took over {MAX_ELAPSED:g}s")
    return verdict(result, reason, explanation)


async def verify(
    resolver: Resolver, ip: str, mail_from: str, helo: str, *, receiver: str = "unknown"
) -> SPFVerdict:
    """SPF for an SMTP transaction.

    rfc7208:2.4 — the MAIL FROM identity; with a null reverse-path (bounces)
    the check is of "postmaster@<HELO>", i.e. the HELO identity (rfc7208:2.3).
    """
    address = mail_from.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    helo = helo.strip()
    if not address:
        return await check_host(
            resolver,
            ip,
            helo,
            f"postmaster@{helo}",
            helo=helo,
            receiver=receiver,
            identity="helo",
        )
    # The domain follows the last "@" (a quoted local part may contain "@");
    # an empty local part becomes "postmaster" in check_host (rfc7208:4.3).
    _, _, domain = address.rpartition("@")
    return await check_host(
        resolver, ip, domain, address, helo=helo, receiver=receiver, identity="mailfrom"
    )
