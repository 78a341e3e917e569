"""LIST / LSUB: which mailbox names match, with which attributes.

Pure functions over the account's mailboxes (no IO), so every rule of
rfc9051:6.3.9 and rfc5258 (LIST-EXTENDED) can be tested from tables.

Matching never backtracks (``Matcher``: a bit-parallel NFA, issue 14 item
2) and is bounded: at most MAX_PATTERNS patterns of MAX_PATTERN characters
(reference included), MAX_PATTERN_TOTAL in all, so one command costs at
most about len(all names) x 64 word operations; ``cost`` estimates it, so
that the session can move a big one off the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

DELIMITER = "/"
INBOX = "INBOX"


@dataclass(frozen=True)
class Box:
    name: str
    special_use: str | None = None
    subscribed: bool = False
    # False for a subscribed name no mailbox has (rfc9051:6.3.9: listed by
    # LIST (SUBSCRIBED) with \NonExistent, by LSUB with \Noselect).
    exists: bool = True


@dataclass
class Entry:
    name: str
    attributes: list[str] = field(default_factory=list)
    # rfc5258:3.5 CHILDINFO extended data: ("SUBSCRIBED",) when a child matched.
    childinfo: tuple[str, ...] = ()


# Bounds of one LIST / LSUB (rfc9051:6.3.9 sets none; rfc5530:3 LIMIT beyond
# them). A mailbox name fits in 255 octets on disk (estafeta.store.names), so
# longer patterns are only wildcards and padding; a client sends a handful.
MAX_PATTERN = 1024  # characters of reference + pattern
MAX_PATTERNS = 64  # patterns of one rfc5258 LIST
MAX_PATTERN_TOTAL = 4096  # characters of all of them together


class PatternLimit(ValueError):
    """The patterns of one command are beyond the bounds above."""


_STAR, _PERCENT = "*", "%"


def _tokens(full: str) -> list[str]:
    """The pattern as literal characters and wildcards, each run of
    wildcards collapsed into one: "*" if it holds a "*" (then it crosses
    levels anyway), else "%". "%%%%X" and "%X" match the same names."""
    out: list[str] = []
    for char in full:
        if char in (_STAR, _PERCENT) and out and out[-1] in (_STAR, _PERCENT):
            if char == _STAR:
                out[-1] = _STAR
            continue
        out.append(char)
    return out


class Matcher:
    """The patterns of one command as one bit-parallel NFA (no backtracking).

    rfc9051:6.3.9: the reference is prepended to each pattern; "*" matches
    any characters, "%" any but the delimiter "/". Bit ``i`` of a pattern's
    block means "its first ``i`` tokens match what was read"; every name
    character moves all states of all patterns at once with a few integer
    operations, so a name costs len(name) x (total tokens / 64) word
    operations whatever the patterns, instead of a regex's exponential
    backtracking on "%%%...%X" (issue 14 item 2).

    INBOX is case-insensitive (rfc9051:5.1), also as the first level of a
    name ("inbox/%" lists "INBOX/x"): the first five characters of a name
    whose first level is INBOX match pattern characters in either ASCII
    case. Every other level is case-sensitive ("inboxes" is not INBOX).
    """

    def __init__(self, reference: str, patterns: Sequence[str]) -> None:
        # The bounds first, on lengths: nothing is copied for a huge literal.
        if any(len(reference) + len(pattern) > MAX_PATTERN for pattern in patterns):
            raise PatternLimit(f"pattern longer than {MAX_PATTERN} characters")
        fulls = list(dict.fromkeys(reference + pattern for pattern in patterns))
        if len(fulls) > MAX_PATTERNS:
            raise PatternLimit(f"more than {MAX_PATTERNS} patterns")
        if sum(len(full) for full in fulls) > MAX_PATTERN_TOTAL:
            raise PatternLimit(f"patterns longer than {MAX_PATTERN_TOTAL} characters in all")
        self.start = self.accept = self.star = self.percent = self.final_star = 0
        self.literal: dict[str, int] = {}
        self.bits = 0
        for full in fulls:
            tokens = _tokens(full)
            offset = self.bits
            self.start |= 1 << offset
            self.accept |= 1 << (offset + len(tokens))
            for position, token in enumerate(tokens):
                bit = 1 << (offset + position)
                if token == _STAR:
                    self.star |= bit
                    if position == len(tokens) - 1:
                        self.final_star |= bit
                elif token == _PERCENT:
                    self.percent |= bit
                else:
                    self.literal[token] = self.literal.get(token, 0) | bit
            self.bits = offset + len(tokens) + 1  # the accept bit ends the block
        self.wild = self.star | self.percent
        # Name characters of a leading "INBOX" level match either case.
        self.folded = {
            char: self.literal.get(char, 0) | self.literal.get(char.lower(), 0) for char in INBOX
        }

    def _scan(self, name: str, levels: bool) -> list[int]:
        """Lengths of the prefixes of ``name`` that match: with ``levels``
        every level's ("A", "A/B", then "A/B/C" for "A/B/C"), else only the
        whole name's. One pass, whatever the number of levels."""
        found: list[int] = []
        head = name[:5]
        inbox = head.isascii() and head.upper() == INBOX and name[5:6] in ("", DELIMITER)
        literal, folded, accept, final_star = (
            self.literal,
            self.folded,
            self.accept,
            self.final_star,
        )
        wild, stay, stay_delimiter = self.wild, self.star | self.percent, self.star
        # A wildcard also matches nothing. Runs are collapsed, so a wildcard is
        # never followed by another one: one shift reaches the fixpoint.
        states = self.start | ((self.start & wild) << 1)
        for position, char in enumerate(name):
            if char == DELIMITER and levels and states & accept:
                found.append(position)
            if states & final_star:
                # A trailing "*" takes the rest, whatever it is.
                if levels:
                    found.extend(i for i in range(position + 1, len(name)) if name[i] == DELIMITER)
                found.append(len(name))
                return found
            mask = folded[char.upper()] if inbox and position < 5 else literal.get(char, 0)
            states = ((states & mask) << 1) | (
                states & (stay_delimiter if char == DELIMITER else stay)
            )
            states |= (states & wild) << 1
            if not states:
                return found
        if states & accept:
            found.append(len(name))
        return found

    def __call__(self, name: str) -> bool:
        return bool(self._scan(name, levels=False))

    def levels(self, name: str) -> list[str]:
        """The level prefixes of ``name`` (its parents, then itself) that match."""
        return [name[:length] for length in self._scan(name, levels=True)]


def cost(names: Iterable[str], reference: str, patterns: Sequence[str]) -> int:
    """About how many word operations matching ``names`` takes at worst
    (each name character moves every pattern token's state, 64 per word)."""
    tokens = sum(len(reference) + len(pattern) + 1 for pattern in patterns)
    return sum(len(name) for name in names) * (1 + tokens // 64)


@lru_cache(maxsize=256)
def _matcher(reference: str, pattern: str) -> Matcher:
    return Matcher(reference, [pattern])


def matches(reference: str, pattern: str, name: str) -> bool:
    """Does ``name`` match ``reference`` + ``pattern`` (rfc9051:6.3.9)?"""
    return _matcher(reference, pattern)(name)


def _parents(name: str) -> Iterable[str]:
    parts = name.split(DELIMITER)
    for depth in range(1, len(parts)):
        yield DELIMITER.join(parts[:depth])


def list_mailboxes(
    boxes: Sequence[Box],
    reference: str,
    patterns: Sequence[str],
    *,
    selection: Sequence[str] = (),
    returns: Sequence[str] = (),
) -> list[Entry]:
    """rfc5258 LIST with selection options (SUBSCRIBED, RECURSIVEMATCH,
    SPECIAL-USE) and return options (SUBSCRIBED, CHILDREN, SPECIAL-USE).

    rfc9051 makes \\HasChildren/\\HasNoChildren mandatory in responses and
    special-use attributes are always returned (rfc6154:2 allows it).
    """
    matcher = Matcher(reference, patterns)  # PatternLimit beyond the bounds
    selection = [s.upper() for s in selection]
    returns = [r.upper() for r in returns]
    subscribed_only = "SUBSCRIBED" in selection
    special_only = "SPECIAL-USE" in selection
    recursive = "RECURSIVEMATCH" in selection

    if not subscribed_only:
        boxes = [box for box in boxes if box.exists]
    by_name = {box.name: box for box in boxes}
    # Names with inferiors, real or not (rfc3348 \HasChildren), and those
    # with a subscribed inferior (rfc5258:3.5 CHILDINFO).
    parents: set[str] = set()
    subscribed_parents: set[str] = set()
    # Every name and parent that matches: one scan of each name also decides
    # for all its parents (a parent is a prefix), so a deep hierarchy costs
    # the length of its names, not its depth squared.
    matched: set[str] = set()
    subscribed_inferiors: list[str] = []
    for each in boxes:
        above = list(_parents(each.name))
        parents.update(above)
        if each.subscribed:
            subscribed_inferiors.append(each.name)
        matched.update(matcher.levels(each.name))
    # rfc5258:3.5 CHILDINFO tells of a subscribed inferior the client would
    # not otherwise see: one the patterns list (selected: every subscribed
    # name that matches is) needs none (as Dovecot, the peer suite's listext).
    for name in subscribed_inferiors:
        if name not in matched:
            subscribed_parents.update(_parents(name))

    def attributes(name: str) -> list[str]:
        attrs: list[str] = []
        box = by_name.get(name)
        if box is None or not box.exists:
            # Names that only exist as parents of others (rfc5258:3), and
            # subscribed names without a mailbox (rfc9051:6.3.9).
            attrs.append("\\NonExistent")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if box is not None and box.subscribed and (subscribed_only or "SUBSCRIBED" in returns):
            attrs.append("\\Subscribed")
        if box is not None and box.special_use:
            attrs.append(box.special_use)
        return attrs

    entries: dict[str, Entry] = {}
    for name in sorted(matched, key=lambda n: (n.upper() != "INBOX", n)):
        box = by_name.get(name)
        selected = True
        if subscribed_only:
            selected = box is not None and box.subscribed
        if special_only:
            selected = selected and box is not None and box.special_use is not None
        if selected:
            entries[name] = Entry(name, attributes(name))
        elif recursive and subscribed_only and name in subscribed_parents:
            # rfc5258:3.5: a parent whose child matches gets CHILDINFO.
            entry = Entry(name, attributes(name), childinfo=("SUBSCRIBED",))
            if box is None or not box.subscribed:
                entry.attributes = [a for a in entry.attributes if a != "\\Subscribed"]
            entries[name] = entry
    return list(entries.values())


def lsub(boxes: Sequence[Box], reference: str, pattern: str) -> list[Entry]:
    """rfc3501:6.3.9 LSUB (deprecated in rfc9051, kept for IMAP4rev1 clients):
    subscribed names; a parent of a subscribed name matched by "%" is
    returned with \\Noselect."""
    matcher = Matcher(reference, [pattern])  # PatternLimit beyond the bounds
    subscribed = {box.name for box in boxes if box.subscribed}
    missing = {box.name for box in boxes if box.subscribed and not box.exists}
    result: dict[str, Entry] = {}
    for name in subscribed:
        for each in matcher.levels(name):
            if each in subscribed:
                result[each] = Entry(each, ["\\Noselect"] if each in missing else [])
            elif each not in result:
                result[each] = Entry(each, ["\\Noselect"])
    return sorted(result.values(), key=lambda e: e.name)
