"""LIST / LSUB: which mailbox names match, with which attributes.

Pure functions over the account's mailboxes (no IO), so every rule of
rfc9051:6.3.9 and rfc5258 (LIST-EXTENDED) can be tested from tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

DELIMITER = "/"


@dataclass(frozen=True)
class Box:
    name: str
    special_use: str | None = None
    subscribed: bool = False


@dataclass
class Entry:
    name: str
    attributes: list[str] = field(default_factory=list)
    # rfc5258:3.5 CHILDINFO extended data: ("SUBSCRIBED",) when a child matched.
    childinfo: tuple[str, ...] = ()


@lru_cache(maxsize=256)
def _pattern(reference: str, pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    # rfc9051:6.3.9: the reference is prepended; "*" matches anything,
    # "%" anything but the delimiter.
    full = reference + pattern if pattern else reference
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(char))
    regex = "".join(out)
    if full[:5].upper() == "INBOX":
        # INBOX is case-insensitive (rfc9051:5.1), also as a prefix: "inbox/%".
        regex = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def matches(reference: str, pattern: str, name: str) -> bool:
    if _pattern(reference, pattern).fullmatch(name) is not None:
        return True
    # The name INBOX itself matches patterns in any case ("in%", "Inbox").
    return name == "INBOX" and _pattern(reference, pattern, True).fullmatch(name) is not None


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
    selection = [s.upper() for s in selection]
    returns = [r.upper() for r in returns]
    subscribed_only = "SUBSCRIBED" in selection
    special_only = "SPECIAL-USE" in selection
    recursive = "RECURSIVEMATCH" in selection

    by_name = {box.name: box for box in boxes}
    all_names = set(by_name)
    # Names that only exist as parents of others (\NonExistent, rfc5258:3).
    implied = {parent for name in all_names for parent in _parents(name)} - all_names
    children: dict[str, list[str]] = {}
    for name in all_names | implied:
        for parent in _parents(name):
            children.setdefault(parent, []).append(name)

    def attributes(name: str) -> list[str]:
        attrs: list[str] = []
        box = by_name.get(name)
        if box is None:
            attrs.append("\\NonExistent")
        if children.get(name):
            attrs.append("\\HasChildren")
        else:
            attrs.append("\\HasNoChildren")
        if box is not None and box.subscribed and (subscribed_only or "SUBSCRIBED" in returns):
            attrs.append("\\Subscribed")
        if box is not None and box.special_use:
            attrs.append(box.special_use)
        return attrs

    entries: dict[str, Entry] = {}
    candidates = sorted(all_names | implied, key=lambda n: (n.upper() != "INBOX", n))
    for name in candidates:
        if not any(matches(reference, p, name) for p in patterns):
            continue
        box = by_name.get(name)
        selected = True
        if subscribed_only:
            selected = box is not None and box.subscribed
        if special_only:
            selected = selected and box is not None and box.special_use is not None
        if selected:
            entries[name] = Entry(name, attributes(name))
        elif recursive and subscribed_only:
            # rfc5258:3.5: a parent whose child matches gets CHILDINFO.
            subscribed_children = [
                c for c in children.get(name, []) if by_name.get(c) and by_name[c].subscribed
            ]
            if subscribed_children:
                entry = Entry(name, attributes(name), childinfo=("SUBSCRIBED",))
                if box is None or not box.subscribed:
                    entry.attributes = [a for a in entry.attributes if a != "\\Subscribed"]
                entries[name] = entry
    return list(entries.values())


def lsub(boxes: Sequence[Box], reference: str, pattern: str) -> list[Entry]:
    """rfc3501:6.3.9 LSUB (deprecated in rfc9051, kept for IMAP4rev1 clients):
    subscribed names; a parent of a subscribed name matched by "%" is
    returned with \\Noselect."""
    subscribed = {box.name for box in boxes if box.subscribed}
    result: dict[str, Entry] = {}
    for name in sorted(subscribed):
        if matches(reference, pattern, name):
            result[name] = Entry(name, [])
        for parent in _parents(name):
            if (
                parent not in subscribed
                and parent not in result
                and matches(reference, pattern, parent)
            ):
                result[parent] = Entry(parent, ["\\Noselect"])
    return sorted(result.values(), key=lambda e: e.name)
