"""Strings with variables (rfc5229), "set" modifiers, and IMAP flag lists (rfc5232).

A script's string is parsed once, when the script is compiled, into a
``Template``: literal text and references (``${name}``, ``${global.name}``,
``${1}``).  Expanding it at run time is one pass over those parts
(rfc5229:3: "only one pass through the string"), never a re-scan of the
values inserted.  In a script that does not require "variables" every
string is a constant.

Namespaces (rfc5229:3): only "global" (rfc6609:3.4.2, when "include" is
required); any other namespace is a compile error.  Match variables
``${0}``..``${MAX_MATCH_INDEX}`` (rfc5229:3.2; at least 9 are required,
the regex extension may need more groups); a higher index is a compile error
(rfc5229:6).  Names are case-insensitive: references and names are stored
lower-case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from estafeta.sieve.errors import SieveError

MAX_MATCH_INDEX: Final = 99
# rfc5229:4 identifier; rfc5229:3 variable-ref (namespaced or a number).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(
    r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*|[0-9]+)\}"
)

LOCAL, GLOBAL, MATCH = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Ref:
    """A variable reference: ``kind`` LOCAL/GLOBAL with a lower-case name,
    or MATCH with ``index``."""

    kind: int
    name: str = ""
    index: int = 0


@dataclass(frozen=True, slots=True)
class Template:
    """A script string: ``raw`` as written (escapes resolved), ``parts`` the
    literal pieces and references, ``constant`` when it has no reference."""

    raw: str
    parts: tuple[str | Ref, ...]
    constant: bool


def constant(text: str) -> Template:
    return Template(text, (text,) if text else (), True)


def parse_template(
    text: str, *, variables: bool, namespaces: frozenset[str], line: int, column: int
) -> Template:
    """The template of a script string; SieveError for a reference to an
    unknown namespace or a match variable beyond MAX_MATCH_INDEX."""
    if not variables or "${" not in text:
        return constant(text)
    parts: list[str | Ref] = []
    pos = 0
    for m in _REFERENCE.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(_reference(m.group(1), namespaces, line, column))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return Template(text, tuple(parts), not any(isinstance(p, Ref) for p in parts))


def _reference(body: str, namespaces: frozenset[str], line: int, column: int) -> Ref:
    if body.isdigit():
        index = int(body)  # rfc5229:3.2: leading zeroes are ignored
        if index > MAX_MATCH_INDEX:
            raise SieveError(
                line, column, f"match variable ${{{body}}}: at most ${{{MAX_MATCH_INDEX}}}"
            )
        return Ref(MATCH, index=index)
    pieces = body.lower().split(".")
    if len(pieces) == 1:
        return Ref(LOCAL, pieces[0])
    namespace = pieces[0]
    if namespace not in namespaces:
        # rfc5229:3: a namespace nobody required is an error.
        raise SieveError(line, column, f"unknown variable namespace {namespace!r} in ${{{body}}}")
    # rfc6609:3.4.2: "global" has no sub-namespaces; the name is an identifier.
    if len(pieces) != 2 or not _IDENTIFIER.match(pieces[1]):
        raise SieveError(line, column, f"invalid global variable name ${{{body}}}")
    return Ref(GLOBAL, pieces[1])


def variable_name(text: str, namespaces: frozenset[str], line: int, column: int) -> Ref:
    """The variable that ``set``/``global``/flag commands name: an identifier
    (rfc5229:4: no match variable), or ``global.NAME`` when allowed."""
    body = text.lower()
    if _IDENTIFIER.match(body):
        return Ref(LOCAL, body)
    if "." in body:
        namespace, _, rest = body.partition(".")
        if namespace in namespaces and _IDENTIFIER.match(rest):
            return Ref(GLOBAL, rest)
    raise SieveError(line, column, f"invalid variable name {text!r}")


# --------------------------------------------------------------------------
# rfc5229:4.1 modifiers, applied in order of precedence (highest first).

MODIFIERS: Final = {
    "lower": 40,
    "upper": 40,
    "lowerfirst": 30,
    "upperfirst": 30,
    "quotewildcard": 20,
    "quoteregex": 20,  # draft-ietf-sieve-regex-01:5
    "length": 10,
}
# rfc5229:4.1.3: only US-ASCII letters change case.
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def apply_modifiers(value: str, modifiers: tuple[str, ...]) -> str:
    """``modifiers`` sorted by precedence, highest first (the validator does it)."""
    for modifier in modifiers:
        if modifier == "lower":
            value = value.translate(_LOWER)
        elif modifier == "upper":
            value = value.translate(_UPPER)
        elif modifier == "lowerfirst":
            value = value[:1].translate(_LOWER) + value[1:]
        elif modifier == "upperfirst":
            value = value[:1].translate(_UPPER) + value[1:]
        elif modifier == "quotewildcard":  # rfc5229:4.1.2
            value = value.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
        elif modifier == "quoteregex":
            value = _REGEX_SPECIAL.sub(r"\\\1", value)
        elif modifier == "length":  # rfc5229:4.1.1: characters, not octets
            value = str(len(value))
    return value


# --------------------------------------------------------------------------
# rfc5232:2 flag lists

# rfc3501:9 flag-keyword = atom; ATOM-CHAR is any CHAR except atom-specials
# ( ) { SP CTL % * " \ ] (rfc5232:2: non-ASCII is not allowed).
_KEYWORD = re.compile(r"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+\Z")
# System flags a script may set; \Recent cannot be (rfc5232:2).
_SYSTEM = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


def parse_flags(items: list[str] | tuple[str, ...]) -> list[str]:
    """The flags of a list of strings, each holding space-separated names:
    invalid flags dropped (rfc5232:2), duplicates (case-insensitive) too."""
    out: dict[str, str] = {}
    for item in items:
        for word in item.split(" "):
            if not word:
                continue
            lower = word.lower()
            if word.startswith("\\"):
                canonical = _SYSTEM.get(lower)
                if canonical is None:
                    continue
                word = canonical
            elif not _KEYWORD.match(word):
                continue
            out.setdefault(lower, word)
    return list(out.values())


def add_flags(current: str, new: list[str]) -> str:
    flags = parse_flags([current])
    seen = {f.lower() for f in flags}
    flags.extend(f for f in new if f.lower() not in seen)
    return " ".join(flags)


def remove_flags(current: str, gone: list[str]) -> str:
    drop = {f.lower() for f in gone}
    return " ".join(f for f in parse_flags([current]) if f.lower() not in drop)
