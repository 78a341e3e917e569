"""Mail addresses: syntax checks and the one canonical form we store and compare.

Canonical form: ``local@domain`` with the local part lower-cased and the
domain as lower-case IDNA A-labels (``Bücher.TEST`` -> ``xn--bcher-kva.test``).
Quoted local parts (rfc5321:4.1.2) are kept quoted only when they need to be.
UTF-8 local parts are allowed (rfc6531:3.3).
"""

from __future__ import annotations

import re

import idna


class AddressError(ValueError):
    """An address or domain that cannot be used; the message says why."""


# rfc5322:3.2.3 atext, plus UTF-8 (rfc6531:3.3 extends atext with UTF8-non-ascii).
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
# rfc5321:4.1.2 qtextSMTP: %d32-33 / %d35-91 / %d93-126 (and UTF-8 per rfc6531).
_QTEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]")
_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form; raises AddressError."""
    if not domain:
        raise AddressError("empty domain")
    if domain.endswith("."):
        domain = domain[:-1]
    if domain.startswith("[") or domain.endswith("]"):
        raise AddressError(f"{domain!r}: address literals are not accepted here")
    if any(c.isspace() or ord(c) < 0x20 or c == "@" for c in domain):
        raise AddressError(f"{domain!r}: invalid character in domain")
    try:
        # UTS #46 mapping (case folding, width) then IDNA2008.
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"{domain!r}: not a valid domain name ({exc})") from None
    ascii_domain = ascii_domain.lower()
    labels = ascii_domain.split(".")
    for label in labels:
        if not label:
            raise AddressError(f"{domain!r}: empty label")
        if not _LDH.fullmatch(label):
            raise AddressError(f"{domain!r}: label {label!r} is not letters, digits and hyphens")
    # rfc5321:4.5.3.1.2 — 255 octets; a DNS name is at most 253 printed.
    if len(ascii_domain) > 253:
        raise AddressError(f"{domain!r}: longer than 253 octets (rfc5321:4.5.3.1.2)")
    return ascii_domain


def display_domain(domain: str) -> str:
    """A-labels to U-labels, for showing to people."""
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return domain


def _normalize_local(local: str) -> str:
    if not local:
        raise AddressError("empty local part")
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise AddressError(f"{local!r}: unterminated quoted local part")
        content, i = [], 1
        while i < len(local) - 1:
            char = local[i]
            if char == "\\":
                # rfc5321:4.1.2 quoted-pairSMTP = %d92 %d32-126
                i += 1
                if i >= len(local) - 1 or not " " <= local[i] <= "~":
                    raise AddressError(f"{local!r}: bad backslash escape")
                content.append(local[i])
            elif char == '"':
                raise AddressError(f"{local!r}: stray quote in local part")
            elif not _QTEXT.fullmatch(char):
                raise AddressError(f"{local!r}: control character in local part")
            else:
                content.append(char)
            i += 1
        value = "".join(content).lower()
        if _is_dot_atom(value):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if not _is_dot_atom(local):
        raise AddressError(f"{local!r}: local part has characters that need quoting")
    return local.lower()


def _is_dot_atom(text: str) -> bool:
    # rfc5321:4.1.2 Dot-string = Atom *("." Atom)
    return bool(text) and all(_ATEXT.fullmatch(atom) for atom in text.split("."))


def normalize_address(address: str) -> str:
    """Canonical ``local@domain``; raises AddressError saying what is wrong."""
    if address.startswith("<") and address.endswith(">"):
        raise AddressError(f"{address!r}: remove the angle brackets")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in address):
        raise AddressError(f"{address!r}: control character in address")
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise AddressError(f"{address!r}: missing @")
    if "@" in local and not local.startswith('"'):
        raise AddressError(f"{address!r}: more than one @")
    local = _normalize_local(local)
    # rfc5321:4.5.3.1.1 — 64 octets.
    if len(local.encode("utf-8")) > 64:
        raise AddressError(f"{address!r}: local part longer than 64 octets (rfc5321:4.5.3.1.1)")
    return f"{local}@{normalize_domain(domain)}"


def split_address(address: str) -> tuple[str, str]:
    """(local, domain) of a normalised address."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise AddressError(f"{address!r}: missing @")
    return local, domain
