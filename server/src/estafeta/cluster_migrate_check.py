"""What ``estafeta migrate`` copies, row by row, and how it checks the copy
(``--verify``; estafeta.cluster_migrate has the command's work).

A scope's rows on either side are streams of ``(table, key, row)``: the key
is the primary key as SQLite's ``json_array()`` writes it (exactly the
``mail_rows.key`` of estafeta.cluster.replica, so that a later write of a
node replaces the migrated row instead of adding one beside it), the row a
dict of the stored columns. Both sides are brought to one form before they
are compared: a message's ``file`` becomes its *stem*, the name without the
local Maildir info part (``:2,FLAGS``) and without the cluster's body mark
(``,B=<SHA-256>``), in ``<folder>/new/`` (``cluster_stem``); the digest the
cluster's name holds is kept aside for the body check.

The comparison keeps one 16-octet fingerprint per row of the local side,
then walks the cluster's rows once: memory grows with the row count, not
with the rows' size. Rows that differ are read again, both sides, to say
how (the first ``MAX_SHOWN``, in IMAP's terms: UIDVALIDITY, UIDNEXT, a
UID's flags or MODSEQ).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from estafeta.cluster.replica import decode_row
from estafeta.store.account import StoreError
from estafeta.store.cluster import BODY_MARK, INDEX_TABLES, body_of

Row = dict[str, Any]
LocalRows = Callable[[], Iterator[tuple[str, str, Row]]]
"""A local side: a new iterator of (table, key, row) at each call."""
ClusterRows = Callable[[], Iterable[tuple[str, str, str]]]
"""A cluster side: (table, key, row as PostgreSQL's jsonb text) at each call."""

MAX_SHOWN = 10
"""Differences described per scope; the others are counted."""

# How a column is named to an operator (rfc9051:2.3.1.1, rfc7162:3.1).
_LABELS = {
    "uidvalidity": "UIDVALIDITY",
    "uidnext": "UIDNEXT",
    "highestmodseq": "HIGHESTMODSEQ",
    "modseq": "MODSEQ",
}
_ORDER = {name: position for position, name in enumerate(INDEX_TABLES)}


def cluster_stem(file: str) -> str:
    """The stem of a local message ``file`` ('.Sent/cur/NAME:2,S' ->
    '.Sent/new/NAME'): what its cluster name is before the body mark. The
    EMAILID is made from the name without the info part
    (estafeta.store.index.email_oid_of), so it stays the same either way."""
    head, _, name = file.rpartition("/")
    folder = head.rpartition("/")[0] if "/" in head else ""
    base = name.split(":", 1)[0]
    return f"{folder}/new/{base}" if folder else f"new/{base}"


def stem_of(file: str) -> tuple[str, str]:
    """(stem, digest) of a cluster message ``file``; StoreError if it names no body."""
    digest = body_of(file)
    return file[: -len(digest) - len(BODY_MARK)], digest


def fingerprint(row: Mapping[str, Any]) -> bytes:
    text = repr(sorted(row.items()))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def cluster_row(table: str, text: str, digests: dict[str, str] | None, key: str) -> Row:
    """A cluster row in the compared form; a message's digest into ``digests``."""
    row = decode_row(text)
    if table == "messages" and isinstance(row.get("file"), str):
        try:
            row["file"], digest = stem_of(row["file"])
        except StoreError:
            return row  # compared as it is: it differs, and says so
        if digests is not None:
            digests[key] = digest
    return row


@dataclass
class Comparison:
    """One scope compared: the differences described (the first ones),
    how many in all, and what the body check needs."""

    scope: str
    differences: list[str] = field(default_factory=list)
    count: int = 0
    mailboxes: int = 0
    messages: int = 0
    rows: int = 0
    # messages key -> the digest the cluster's file names (mail scopes)
    digests: dict[str, str] = field(default_factory=dict)
    # mailbox id -> name, from either side
    names: dict[Any, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.count == 0

    def add(self, text: str) -> None:
        self.count += 1
        if len(self.differences) < MAX_SHOWN:
            self.differences.append(text)

    def message(self, key: str) -> str:
        """A messages key in words: "mailbox 'INBOX' UID 7"."""
        try:
            box, uid = json.loads(key)
        except ValueError:
            return f"message {key}"
        return f"mailbox {self.names.get(box, f'#{box}')!r} UID {uid}"


def compare(scope: str, local: LocalRows, cluster: ClusterRows) -> Comparison:
    """Compare every row of ``scope`` on both sides (see the module's text)."""
    result = Comparison(scope)
    prints: dict[tuple[str, str], bytes] = {}
    names = result.names
    local_counts: dict[Any, int] = {}
    for table, key, row in local():
        prints[(table, key)] = fingerprint(row)
        _note(table, row, names, local_counts)
    cluster_counts: dict[Any, int] = {}
    differing: list[tuple[str, str]] = []
    for table, key, text in cluster():
        row = cluster_row(table, text, result.digests, key)
        result.rows += 1
        if table == "mailboxes":
            result.mailboxes += 1
        elif table == "messages":
            result.messages += 1
        _note(table, row, names, cluster_counts)
        mine = prints.pop((table, key), None)
        if mine != fingerprint(row):
            differing.append((table, key))
    differing += prints  # only on the local side
    for box in sorted(set(local_counts) | set(cluster_counts), key=str):
        here, there = local_counts.get(box, 0), cluster_counts.get(box, 0)
        if here != there:
            result.add(
                f"mailbox {names.get(box, f'#{box}')!r}: {here} messages local,"
                f" {there} in the cluster"
            )
    if differing:
        _describe(result, sorted(differing, key=_sort_key), local, cluster, names)
    return result


def _note(table: str, row: Row, names: dict[Any, str], counts: dict[Any, int]) -> None:
    if table == "mailboxes":
        names.setdefault(row.get("id"), str(row.get("name")))
        counts.setdefault(row.get("id"), 0)
    elif table == "messages":
        box = row.get("mailbox_id")
        counts[box] = counts.get(box, 0) + 1


def _sort_key(item: tuple[str, str]) -> tuple[int, str, list[Any]]:
    table, key = item
    try:
        parts = json.loads(key)
    except ValueError:
        parts = [key]
    return (_ORDER.get(table, len(_ORDER)), table, [str(part).zfill(20) for part in parts])


def _describe(
    result: Comparison,
    differing: list[tuple[str, str]],
    local: LocalRows,
    cluster: ClusterRows,
    names: dict[Any, str],
) -> None:
    """The first differences in words: both sides read again for them."""
    shown = differing[: max(0, MAX_SHOWN - len(result.differences))]
    wanted = set(shown)
    mine = {(t, k): row for t, k, row in local() if (t, k) in wanted}
    theirs = {(t, k): cluster_row(t, text, None, k) for t, k, text in cluster() if (t, k) in wanted}
    for table, key in shown:
        result.add(describe(table, key, mine.get((table, key)), theirs.get((table, key)), names))
    result.count += len(differing) - len(shown)  # counted, not shown


def describe(
    table: str, key: str, local: Row | None, cluster: Row | None, names: Mapping[Any, str]
) -> str:
    row = local if local is not None else cluster or {}
    where = _where(table, key, row, names)
    if local is None:
        return f"{where}: only in the cluster"
    if cluster is None:
        return f"{where}: missing in the cluster"
    changed = [c for c in sorted(set(local) | set(cluster)) if local.get(c) != cluster.get(c)]
    parts = [
        f"{_LABELS.get(c, c)} {_show(local.get(c))} local, {_show(cluster.get(c))} in the cluster"
        for c in changed[:3]
    ]
    more = f" (and {len(changed) - 3} more columns)" if len(changed) > 3 else ""
    return f"{where}: " + "; ".join(parts) + more


def _where(table: str, key: str, row: Row, names: Mapping[Any, str]) -> str:
    if table == "mailboxes":
        return f"mailbox {row.get('name')!r}"
    box = row.get("mailbox_id")
    name = names.get(box, f"#{box}")
    if table == "messages":
        return f"mailbox {name!r} UID {row.get('uid')}"
    if table == "expunged":
        return f"mailbox {name!r} expunged UID {row.get('uid')}"
    if table == "private_seen":
        return f"mailbox {name!r} UID {row.get('uid')} \\Seen of viewer {row.get('viewer')}"
    return f"{table} {key}"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} octets>"
    printable = isinstance(value, str) and value.isprintable()
    text = f"'{value}'" if printable else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
