"""What each command and test accepts: the one table of Sieve signatures.

One place says which tags (with their argument, their exclusive group and
the capability they need) and which positional arguments each command and
test takes, as h11 keeps its states in one table; ``validate`` checks a
script against it and binds it into ``Node`` trees the interpreter runs.
A ``Node`` holds the tags by name and the positional arguments in order,
every string already a ``variables.Template``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from estafeta.sieve import ast
from estafeta.sieve.errors import SieveError
from estafeta.sieve.match import COMPARATORS, DEFAULT, NUMERIC, RELATIONS, MatchSpec
from estafeta.sieve.variables import Template

STRING, STRINGS, NUMBER = "string", "string-list", "number"

SUPPORTED: Final = frozenset(
    {
        "fileinto",
        "reject",
        "ereject",
        "envelope",
        "encoded-character",
        "comparator-i;octet",
        "comparator-i;ascii-casemap",
        "comparator-i;ascii-numeric",
        "imap4flags",
        "copy",
        "body",
        "variables",
        "vacation",
        "vacation-seconds",
        "relational",
        "subaddress",
        "date",
        "index",
        "mailbox",
        "include",
        "duplicate",
        "editheader",
        "environment",
        "regex",
        "spamtest",  # rfc5235:3.2
        "spamtestplus",
    }
)

Value = bool | int | Template | tuple[Template, ...]


@dataclass(frozen=True, slots=True)
class Node:
    """A command or test, bound: ``tags`` by name (``True`` for a tag without
    argument), ``args`` the positional arguments (``None`` for an omitted
    optional one), ``match`` the match type and comparator when it has them."""

    name: str
    pos: ast.Position
    tags: Mapping[str, Value]
    args: tuple[Value | None, ...]
    tests: tuple[Node, ...] = ()
    block: tuple[Node, ...] | None = None
    match: MatchSpec = DEFAULT

    def tag(self, name: str) -> Value | None:
        return self.tags.get(name)


@dataclass(frozen=True, eq=False)
class Compiled:
    """A script ready to run: its name (for error messages), bound commands
    and the capabilities it requires."""

    name: str
    commands: tuple[Node, ...]
    requires: frozenset[str]
    # Blocks prepared for the interpreter on first use (``fast.plan_of``),
    # by the id of the block's tuple of nodes.
    plans: dict[int, object] = field(default_factory=dict, repr=False)

    def has(self, capability: str) -> bool:
        return capability in self.requires


@dataclass(frozen=True)
class TagSpec:
    arg: str | None = None  # STRING, STRINGS, NUMBER or None
    group: str | None = None  # at most one tag of a group
    ext: tuple[str, ...] = ()  # one of these must be required


@dataclass(frozen=True)
class Signature:
    ext: tuple[str, ...] = ()
    tags: Mapping[str, TagSpec] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    optional: str = ""  # "leading"/"trailing": the first/last positional may be left out
    tests: str = "none"  # "none", "one" or "list"
    block: bool = False
    required_group: str = ""


COMPARATOR: Final = {"comparator": TagSpec(STRING, "comparator")}
MATCH_TYPE: Final = {
    "is": TagSpec(None, "match"),
    "contains": TagSpec(None, "match"),
    "matches": TagSpec(None, "match"),
    "value": TagSpec(STRING, "match", ("relational",)),  # rfc5231:4
    "count": TagSpec(STRING, "match", ("relational",)),
    "regex": TagSpec(None, "match", ("regex",)),
}
MATCHING: Final = {**COMPARATOR, **MATCH_TYPE}
ADDRESS_PART: Final = {
    "all": TagSpec(None, "part"),
    "localpart": TagSpec(None, "part"),
    "domain": TagSpec(None, "part"),
    "user": TagSpec(None, "part", ("subaddress",)),  # rfc5233:4
    "detail": TagSpec(None, "part", ("subaddress",)),
}
INDEX: Final = {  # rfc5260:6
    "index": TagSpec(NUMBER, None, ("index",)),
    "last": TagSpec(None, None, ("index",)),
}
MODIFIERS: Final = {  # rfc5229:4.1: one modifier per precedence level
    "lower": TagSpec(None, "40"),
    "upper": TagSpec(None, "40"),
    "lowerfirst": TagSpec(None, "30"),
    "upperfirst": TagSpec(None, "30"),
    "quotewildcard": TagSpec(None, "20"),
    "quoteregex": TagSpec(None, "20", ("regex",)),
    "length": TagSpec(None, "10"),
}
_FLAGS: Final = TagSpec(STRINGS, None, ("imap4flags",))
_COPY: Final = TagSpec(None, None, ("copy",))

COMMANDS: Final[Mapping[str, Signature]] = {
    "require": Signature(positional=(STRINGS,)),
    "if": Signature(tests="one", block=True),
    "elsif": Signature(tests="one", block=True),
    "else": Signature(block=True),
    "stop": Signature(),
    "keep": Signature(tags={"flags": _FLAGS}),
    "discard": Signature(),
    "redirect": Signature(tags={"copy": _COPY}, positional=(STRING,)),
    "fileinto": Signature(
        ext=("fileinto",),
        tags={"copy": _COPY, "flags": _FLAGS, "create": TagSpec(None, None, ("mailbox",))},
        positional=(STRING,),
    ),
    "reject": Signature(ext=("reject",), positional=(STRING,)),
    "ereject": Signature(ext=("ereject",), positional=(STRING,)),
    "setflag": Signature(ext=("imap4flags",), positional=(STRING, STRINGS), optional="leading"),
    "addflag": Signature(ext=("imap4flags",), positional=(STRING, STRINGS), optional="leading"),
    "removeflag": Signature(ext=("imap4flags",), positional=(STRING, STRINGS), optional="leading"),
    "set": Signature(ext=("variables",), tags=MODIFIERS, positional=(STRING, STRING)),
    "vacation": Signature(
        ext=("vacation", "vacation-seconds"),
        tags={
            "days": TagSpec(NUMBER, "period"),
            "seconds": TagSpec(NUMBER, "period", ("vacation-seconds",)),  # rfc6131:2
            "subject": TagSpec(STRING),
            "from": TagSpec(STRING),
            "addresses": TagSpec(STRINGS),
            "mime": TagSpec(),
            "handle": TagSpec(STRING),
        },
        positional=(STRING,),
    ),
    "include": Signature(
        ext=("include",),
        tags={
            "personal": TagSpec(None, "location"),
            "global": TagSpec(None, "location"),
            "once": TagSpec(),
            "optional": TagSpec(),
        },
        positional=(STRING,),
    ),
    "return": Signature(ext=("include",)),
    "global": Signature(ext=("include",), positional=(STRINGS,)),
    "addheader": Signature(
        ext=("editheader",), tags={"last": TagSpec()}, positional=(STRING, STRING)
    ),
    "deleteheader": Signature(
        ext=("editheader",),
        tags={"index": TagSpec(NUMBER), "last": TagSpec(), **MATCHING},
        positional=(STRING, STRINGS),
        optional="trailing",
    ),
}

TESTS: Final[Mapping[str, Signature]] = {
    "address": Signature(tags={**MATCHING, **ADDRESS_PART, **INDEX}, positional=(STRINGS, STRINGS)),
    "allof": Signature(tests="list"),
    "anyof": Signature(tests="list"),
    "not": Signature(tests="one"),
    "true": Signature(),
    "false": Signature(),
    "envelope": Signature(
        ext=("envelope",), tags={**MATCHING, **ADDRESS_PART}, positional=(STRINGS, STRINGS)
    ),
    "exists": Signature(positional=(STRINGS,)),
    "header": Signature(tags={**MATCHING, **INDEX}, positional=(STRINGS, STRINGS)),
    "size": Signature(
        tags={"over": TagSpec(None, "size"), "under": TagSpec(None, "size")},
        positional=(NUMBER,),
        required_group="size",
    ),
    "body": Signature(
        ext=("body",),
        tags={
            **MATCHING,
            "raw": TagSpec(None, "transform"),
            "content": TagSpec(STRINGS, "transform"),
            "text": TagSpec(None, "transform"),
        },
        positional=(STRINGS,),
    ),
    "string": Signature(ext=("variables",), tags=MATCHING, positional=(STRINGS, STRINGS)),
    "hasflag": Signature(
        ext=("imap4flags",), tags=MATCHING, positional=(STRINGS, STRINGS), optional="leading"
    ),
    "date": Signature(
        ext=("date",),
        tags={
            **MATCHING,
            **INDEX,
            "zone": TagSpec(STRING, "zone"),
            "originalzone": TagSpec(None, "zone"),
        },
        positional=(STRING, STRING, STRINGS),
    ),
    "currentdate": Signature(
        ext=("date",), tags={**MATCHING, "zone": TagSpec(STRING)}, positional=(STRING, STRINGS)
    ),
    "mailboxexists": Signature(ext=("mailbox",), positional=(STRINGS,)),
    "duplicate": Signature(
        ext=("duplicate",),
        tags={
            "handle": TagSpec(STRING),
            "header": TagSpec(STRING, "id"),
            "uniqueid": TagSpec(STRING, "id"),
            "seconds": TagSpec(NUMBER),
            "last": TagSpec(),
        },
    ),
    "environment": Signature(ext=("environment",), tags=MATCHING, positional=(STRING, STRINGS)),
    # rfc5235:3.2: either capability allows the test; :percent needs
    # "spamtestplus" (an error otherwise).  No default comparator of its
    # own: rfc5228:2.7.3's i;ascii-casemap, as for every test.
    "spamtest": Signature(
        ext=("spamtest", "spamtestplus"),
        tags={**MATCHING, "percent": TagSpec(None, None, ("spamtestplus",))},
        positional=(STRING,),
    ),
}

# Which capability implies which (rfc6131:2: vacation-seconds implies vacation).
IMPLIES: Final = {"vacation-seconds": "vacation"}


def error(pos: ast.Position, message: str) -> SieveError:
    return SieveError(pos.line, pos.column, message)


def match_spec(
    node: ast.Command | ast.Test,
    tags: Mapping[str, ast.Argument | bool],
    requires: frozenset[str],
) -> MatchSpec:
    """rfc5228:2.7.1/2.7.3 and rfc5231:4 from a command's tags."""
    comparator = "i;ascii-casemap"
    arg = tags.get("comparator")
    if isinstance(arg, ast.String):
        comparator = arg.value.lower()
        if comparator not in COMPARATORS:
            raise error(arg.pos, f"unknown comparator {arg.value!r}")
        if comparator == NUMERIC and f"comparator-{NUMERIC}" not in requires:
            raise error(arg.pos, f'comparator {arg.value!r} needs require "comparator-{NUMERIC}"')
    kind, relation = "is", ""
    for name in ("is", "contains", "matches", "regex", "value", "count"):
        if name in tags:
            kind = name
            value = tags[name]
            if isinstance(value, ast.String):
                relation = value.value.lower()
                if relation not in RELATIONS:
                    raise error(value.pos, f"unknown relation {value.value!r} (gt ge lt le eq ne)")
    if comparator == NUMERIC and kind in ("contains", "matches", "regex"):
        # rfc4790:9.1.1: i;ascii-numeric has no substring operation.
        raise error(node.pos, f":{kind} cannot be used with comparator {NUMERIC!r}")
    return MatchSpec(kind, relation, comparator)
