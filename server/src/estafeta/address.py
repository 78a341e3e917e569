"""Mail addresses: syntax checks and the one canonical form we store and compare.

Canonical form: ``local@domain`` where

* the domain is lower-case ASCII, IDNs as A-labels (``Bücher.TEST`` ->
  ``xn--bcher-kva.test``), mapped with UTS #46 and checked with IDNA2008;
* the local part is lower-cased with ``str.lower`` and put in Unicode NFC.
  rfc5321:2.4 lets a host treat local parts as case-sensitive, but also says
  exploiting that "impedes interoperability and is discouraged": this server
  is the final host for its domains and folds case, so ``Alice@`` and
  ``alice@`` are one mailbox.
* A quoted local part (rfc5321:4.1.2 Quoted-string) is unquoted when its
  content is a valid Dot-string (the two forms then name the same mailbox),
  otherwise it is kept quoted with the fewest backslashes.
* UTF-8 local parts are allowed (rfc6531:3.3 extends atext and qtextSMTP
  with UTF8-non-ascii), but not invisible or confusable characters
  (controls, format characters other than ZWNJ/ZWJ, non-ASCII spaces,
  unassigned code points, surrogates).

Address literals (``user@[192.0.2.1]``) are not accepted: this server only
receives mail for configured domain names.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import idna


class AddressError(ValueError):
    """An address or domain that cannot be used; the message says why."""


# rfc5321:4.5.3.1.1 — "The maximum total length of a user name or other
# local-part is 64 octets."
MAX_LOCAL_OCTETS = 64
# rfc5321:4.5.3.1.2 allows 255 octets for a domain; DNS (rfc1035:3.1) allows
# 255 on the wire, which is 253 in dotted text without the trailing dot.
MAX_DOMAIN_OCTETS = 253
# rfc1035:2.3.4 — labels are 63 octets or less.
MAX_LABEL_OCTETS = 63
# rfc5321:4.5.3.1.3 — a path is at most 256 octets including "<" and ">".
MAX_ADDRESS_OCTETS = 254
# Anything longer than this is rejected before parsing, to bound the work.
_MAX_INPUT = 1024

# rfc5321:4.1.2 Atom = 1*atext, with atext from rfc5322:3.2.3; rfc6531:3.3
# adds UTF8-non-ascii (whose characters are screened by _check_unicode).
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
# rfc5321:4.1.2 qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii
# (rfc6531:3.3).
_QTEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]")
# rfc5321:4.1.2 quoted-pairSMTP = %d92 %d32-126: only ASCII may follow "\".
_QUOTED_PAIR_CHAR = re.compile(r"[\x20-\x7e]")

# Zero-width (non-)joiner are needed to spell words in several scripts
# (Persian, Indic scripts); other format characters (bidi overrides,
# zero-width space, BOM) only serve to make two addresses look alike.
_ALLOWED_FORMAT = {"\u200c", "\u200d"}
_BAD_CATEGORIES = {
    "Cc": "control character",
    "Cs": "surrogate",
    "Cn": "unassigned code point",
    "Co": "private-use character",
    "Zs": "space",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def _char_name(char: str) -> str:
    return f"U+{ord(char):04X}"


def _check_unicode(text: str, where: str) -> None:
    """Reject characters that have no business in an address (see module doc)."""
    for char in text:
        if " " <= char <= "~":
            continue
        category = unicodedata.category(char)
        if category == "Cf" and char not in _ALLOWED_FORMAT:
            raise AddressError(f"invisible format character {_char_name(char)} in {where}")
        problem = _BAD_CATEGORIES.get(category)
        if problem is not None:
            raise AddressError(f"{problem} {_char_name(char)} in {where}")


# -- domains ----------------------------------------------------------------


# Pure functions of their argument, called for every MAIL FROM, RCPT TO and
# address lookup: the last few thousand results are kept (the IDNA mapping
# is most of their cost). Errors are not cached; they are raised each time.
@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a domain name; raises AddressError saying why.

    One trailing dot (the DNS root) is accepted and dropped.
    """
    if not domain:
        raise AddressError("empty domain")
    if domain.startswith("[") or domain.endswith("]"):
        # rfc5321:4.1.3 address-literal: valid SMTP, but not a domain we host.
        raise AddressError(f"{domain!r}: address literals are not accepted here")
    if len(domain) > _MAX_INPUT:
        raise AddressError("domain far too long")
    for char in domain:
        if char == "@":
            raise AddressError(f"{domain!r}: '@' in domain")
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cs"):
            raise AddressError(f"{domain!r}: space or control character in domain")
    try:
        # UTS #46 mapping (case folding, full-width forms, ideographic full
        # stops -> "."); std3_rules keeps ASCII to letters, digits, hyphen
        # (rfc5321:4.1.2 sub-domain = Let-dig [Ldh-str]).
        mapped = idna.uts46_remap(domain, std3_rules=True)
    except idna.IDNAError as exc:
        raise AddressError(f"{domain!r}: not a valid domain name ({exc})") from None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    if not mapped:
        raise AddressError(f"{domain!r}: empty domain")
    total = -1  # no dot before the first label
    for label in mapped.split("."):
        if not label:
            raise AddressError(f"{domain!r}: empty label (two dots in a row, or a leading dot)")
        # The A-label's length: "xn--" + Punycode (rfc3492) for non-ASCII labels.
        octets = len(label) if label.isascii() else 4 + len(label.encode("punycode"))
        if octets > MAX_LABEL_OCTETS:
            raise AddressError(
                f"{domain!r}: label longer than {MAX_LABEL_OCTETS} octets (rfc1035:2.3.4)"
            )
        total += 1 + octets
    if total > MAX_DOMAIN_OCTETS:
        raise AddressError(
            f"{domain!r}: domain longer than {MAX_DOMAIN_OCTETS} octets (rfc5321:4.5.3.1.2)"
        )
    try:
        # IDNA2008 (rfc5891:4): code points, hyphens, joiners, bidi; A-labels
        # in the input are decoded and checked too.
        ascii_domain = idna.encode(mapped, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"{domain!r}: not a valid domain name ({exc})") from None
    return ascii_domain.lower()


def display_domain(domain: str) -> str:
    """A-labels to U-labels, for showing to people; unchanged if not decodable."""
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return domain


# -- local parts ----------------------------------------------------------------


def _is_dot_string(text: str) -> bool:
    # rfc5321:4.1.2 Dot-string = Atom *("." Atom)
    return bool(text) and all(_ATEXT.fullmatch(atom) for atom in text.split("."))


def _unquote(local: str) -> str:
    """Content of a rfc5321:4.1.2 Quoted-string (``local`` includes the quotes)."""
    content: list[str] = []
    i, end = 1, len(local) - 1
    while i < end:
        char = local[i]
        if char == "\\":
            i += 1
            if i >= end or not _QUOTED_PAIR_CHAR.fullmatch(local[i]):
                raise AddressError(
                    "a backslash in a quoted local part must be followed by "
                    "a printable ASCII character (rfc5321:4.1.2 quoted-pairSMTP)"
                )
            content.append(local[i])
        elif char == '"':
            raise AddressError("unescaped '\"' inside a quoted local part")
        elif not _QTEXT.fullmatch(char):
            raise AddressError(f"character {_char_name(char)} not allowed in a quoted local part")
        else:
            content.append(char)
        i += 1
    return "".join(content)


def _check_dot_string(local: str) -> None:
    """Explain why an unquoted local part is not a Dot-string."""
    for char in local:
        if char == " ":
            raise AddressError("space in the local part: it must be quoted (rfc5321:4.1.2)")
        if char != "." and not _ATEXT.fullmatch(char):
            raise AddressError(
                f"character {char!r} in the local part must be quoted (rfc5321:4.1.2)"
            )
    if not _is_dot_string(local):
        raise AddressError(
            "local part starts or ends with a dot, or has two dots in a row (rfc5321:4.1.2)"
        )


def _normalize_local(local: str) -> str:
    if not local:
        raise AddressError("empty local part")
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise AddressError("unterminated quoted local part")
        value = _unquote(local)
    else:
        _check_dot_string(local)
        value = local
    _check_unicode(value, "the local part")
    value = unicodedata.normalize("NFC", value.lower())
    if not value:
        raise AddressError('empty local part ("")')
    if not _is_dot_string(value):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        value = f'"{escaped}"'
    if len(value.encode("utf-8")) > MAX_LOCAL_OCTETS:
        raise AddressError(f"local part longer than {MAX_LOCAL_OCTETS} octets (rfc5321:4.5.3.1.1)")
    return value


def _split_raw(address: str) -> tuple[str, str]:
    """Split at the "@" that ends the local part (quoted local parts may hold "@")."""
    if address.startswith('"'):
        # Find the closing quote, skipping quoted pairs.
        i = 1
        while i < len(address):
            if address[i] == "\\":
                i += 2
                continue
            if address[i] == '"':
                break
            i += 1
        else:
            raise AddressError("unterminated quoted local part")
        local, rest = address[: i + 1], address[i + 1 :]
        if not rest.startswith("@"):
            raise AddressError("the quoted local part must be followed by '@'")
        domain = rest[1:]
        if "@" in domain:
            raise AddressError("more than one '@' after the quoted local part")
        return local, domain
    count = address.count("@")
    if count == 0:
        raise AddressError("missing '@'")
    if count > 1:
        raise AddressError("more than one '@' (an '@' in the local part must be quoted)")
    local, _, domain = address.partition("@")
    return local, domain


@functools.lru_cache(maxsize=4096)
def normalize_address(address: str) -> str:
    """Canonical ``local@domain``; raises AddressError saying what is wrong.

    The message names the problem but not always the address: callers add
    the address when they show it.
    """
    if not address:
        raise AddressError("empty address")
    if len(address) > _MAX_INPUT:
        raise AddressError("address far too long")
    if address.startswith("<") or address.endswith(">"):
        raise AddressError("remove the angle brackets around the address")
    for char in address:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs"):
            raise AddressError(f"{_BAD_CATEGORIES[category]} {_char_name(char)} in address")
    local, domain = _split_raw(address)
    canonical = f"{_normalize_local(local)}@{normalize_domain(domain)}"
    if len(canonical.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise AddressError(f"address longer than {MAX_ADDRESS_OCTETS} octets (rfc5321:4.5.3.1.3)")
    return canonical


def split_address(address: str) -> tuple[str, str]:
    """(local, domain) of a normalised address.

    Splits at the last "@": a domain never holds one, a quoted local part may.
    """
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError(f"{address!r} is not of the form local@domain")
    return local, domain
