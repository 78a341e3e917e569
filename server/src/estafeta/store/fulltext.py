"""A full-text index for SEARCH BODY and TEXT (rfc9051:6.4.4), in SQLite FTS5.

Sans-IO over a ``sqlite3.Connection`` the caller opens (the account's
``index.db``) and whose transactions it runs: nothing here commits. The
CPU work of a delivery (``prepare``: decoding, folding, compressing) needs
no connection, so it runs before the write transaction starts.

What is indexed is the very text the scan in estafeta.imap.search matches
against, computed the same way (``header_text`` and ``body_text`` below
are copies of its ``_View.header_text`` / ``_View.body_text``; see "One
copy" at the end):

* header: the message header, one ``name: value`` line per field, values
  unfolded and RFC 2047 decoded, ``str.casefold()``-ed;
* body: the decoded text of every text/* leaf (transfer encoding undone,
  charset decoded) and the headers of encapsulated message/rfc822 parts,
  joined by "\\n", casefolded. HTML is not reduced to text (the scan does
  not do it either); attachments are skipped.

BODY matches the body, TEXT the header or the body (never text spanning
the two, like the scan).

How a search works, and why its answers are exact. Each message's text is
kept twice: compressed, as it is (``fulltext_text``), and as an FTS5
``trigram`` index (``fulltext``, one token per three consecutive
characters, ``case_sensitive 1``: both sides are already casefolded, so
SQLite folds nothing). ``search`` casefolds the needle like the scan, asks
FTS5 for the messages holding all of (up to ``MAX_TRIGRAMS`` of) its
trigrams, and checks each of those candidates with the scan's own test,
``needle in text``, on the kept text. Every message containing the needle
contains its trigrams, so no match is missed; the check drops the
candidates whose trigrams occur apart. The answer is therefore the scan's,
for every needle the index is asked about; the caller verifies nothing.
``search`` returns None (the caller scans as before) only for:

* needles shorter than 3 characters after folding (no trigram to look up);
* needles of which no three consecutive characters are free of NUL and
  lone surrogates: FTS5's query syntax cannot hold NUL, and SQLite cannot
  take lone surrogates. The FTS5 copy of the text has them as U+FFFD (the
  tokenizer would end the text at NUL); the compressed copy, which the
  check reads, keeps them.

The index is contentless (``content=''``: FTS5 stores no text of its own),
``columnsize=0`` and ``detail=none``: it records per trigram only which
messages hold it, not where. Positions (``detail=full``) would let FTS5
match the whole needle as a phrase without the check, but cost 3.2 MiB of
index per MiB of mail against 0.4 MiB (bench/search_fulltext.py).

Bounded work. At most ``MAX_BODY`` characters of body text and
``MAX_HEADER`` of header text are kept per message (the scan reads up to
``MAX_SCAN`` encoded octets of part bodies). A message cut there is marked,
and ``search`` reports it as ``unsure`` unless the needle occurs in the
part kept: the caller scans those.

Deferred indexing. ``insert(..., defer=True)`` (``add``'s default) keeps
only the compressed text and marks the message pending: a delivery then
costs two small row writes, no FTS5 work. ``flush`` moves pending
messages into the FTS5 index in batches (one FTS5 segment per batch, a
fraction of the pages that a segment per message writes). ``search``
checks pending messages directly on their kept text, so its answers do not
depend on when ``flush`` runs; only its speed does.

Costs (bench/search_fulltext.py: 100,000 messages of 4 KiB English text,
SQLite 3.40.1, one core of a 2-core VM):

* disk: 0.90 MiB per MiB of mail, 3.5 KiB per message (FTS5 index 0.39,
  compressed text 0.50); 0.65 MiB per MiB when 30 % of the messages carry
  an HTML alternative and 10 % an attachment. ``detail=full`` would be
  3.16 MiB per MiB for the FTS5 index alone, ``detail=column`` 1.17.
* delivery: ``prepare`` 70 µs (150 µs mixed), outside the write lock;
  ``insert`` (deferred) 32 µs and 4 WAL pages in the delivery's
  transaction; ``flush`` 450 µs and 2 WAL pages per message in batches of
  1,000. Indexing at each delivery instead: 1 ms and 25 WAL pages.
* search over 100,000 messages: 2 to 4 ms for a word in 100 of them,
  0.35 s for one in 20 % of them, 1.5 s for "the" (every message a
  candidate), against 2.1 to 2.8 s for the scan from files in the page
  cache; 1.7 s with every message still pending.
* expunge: 0.9 ms per message alone, 0.47 ms in a batch of 1,000.

Tables (``SCHEMA``; keys are integers the caller chooses):

* ``fulltext``: the FTS5 trigram index, columns ``header`` and ``body``.
* ``fulltext_doc(key, flags)``: the messages held; flags ``HEADER_CUT``,
  ``BODY_CUT``, ``PENDING``. Small rows, so listing a mailbox's keys is
  cheap; a partial index finds the flagged ones.
* ``fulltext_text(key, text)``: the text kept, zlib-compressed. It is what
  ``search`` checks candidates against, what a delete from the contentless
  FTS5 table needs (SQLite 3.40 must be given the values a row was indexed
  with; ``contentless_delete=1`` came in 3.43), what ``copy`` (COPY, MOVE)
  reuses without parsing the message again, and what could rebuild the FTS5
  table (a different tokenizer, a new SQLite).

Keys: the rowid is a 63-bit integer; ``message_key`` packs (mailbox id,
UID) as ``mailbox_id << 32 | uid``. FTS5 stores rowids as deltas, so a
mailbox's messages, added in UID order, cost a byte or two each per
trigram, and ``mailbox_range`` limits a search to one mailbox with a
rowid range. ``mailboxes.id`` may be reused (INTEGER PRIMARY KEY without
AUTOINCREMENT): deleting a mailbox must ``remove_range`` its keys.

One text: ``header_text`` and ``body_text`` are estafeta.message.searchtext's,
the functions the scan in estafeta.imap.search uses too.
"""

from __future__ import annotations

import re
import sqlite3
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from estafeta.message.searchtext import MAX_SCAN as MAX_SCAN
from estafeta.message.searchtext import body_text, header_text
from estafeta.message.structure import Summary, summarize

MAX_BODY = 1 << 20
"""Characters of folded body text kept and indexed per message; longer
texts are cut and marked (``BODY_CUT``)."""

MAX_HEADER = 1 << 18
"""Characters of folded header text kept per message (``HEADER_CUT``)."""

MIN_NEEDLE = 3
"""Shortest needle the index can answer: one trigram."""

MAX_TRIGRAMS = 12
"""Trigrams of a needle looked up, spread over its length: more narrow the
candidates down less and less, and each costs a doclist to read."""

HEADER_CUT = 1
BODY_CUT = 2
PENDING = 4
"""``fulltext_doc.flags``: text cut at MAX_HEADER / MAX_BODY; kept but not
yet in the FTS5 index (``flush``)."""

SCHEMA: tuple[str, ...] = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS fulltext USING fts5("
    "header, body, content='', columnsize=0, detail=none,"
    " tokenize='trigram case_sensitive 1')",
    "CREATE TABLE IF NOT EXISTS fulltext_doc (key INTEGER PRIMARY KEY, flags INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fulltext_doc_flagged ON fulltext_doc (key) WHERE flags != 0",
    "CREATE TABLE IF NOT EXISTS fulltext_text (key INTEGER PRIMARY KEY, text BLOB NOT NULL)",
)
"""Statements creating the tables (idempotent); run them in a transaction."""

DROP: tuple[str, ...] = (
    "DROP TABLE IF EXISTS fulltext",
    "DROP TABLE IF EXISTS fulltext_doc",
    "DROP TABLE IF EXISTS fulltext_text",
)

UID_BITS = 32
MAX_KEY = (1 << 63) - 1


def create(conn: sqlite3.Connection) -> None:
    """Create the tables if missing (in the caller's transaction, if any)."""
    for statement in SCHEMA:
        conn.execute(statement)


def message_key(mailbox_id: int, uid: int) -> int:
    """The key of message ``uid`` of mailbox ``mailbox_id``."""
    if not (0 <= uid < 1 << UID_BITS and 0 <= mailbox_id < 1 << (63 - UID_BITS)):
        raise ValueError(f"cannot make a key of mailbox {mailbox_id}, uid {uid}")
    return mailbox_id << UID_BITS | uid


def split_key(key: int) -> tuple[int, int]:
    """(mailbox id, uid) of a ``message_key``."""
    return key >> UID_BITS, key & ((1 << UID_BITS) - 1)


def mailbox_range(mailbox_id: int) -> tuple[int, int]:
    """The lowest and highest key of a mailbox (inclusive)."""
    return message_key(mailbox_id, 0), message_key(mailbox_id, (1 << UID_BITS) - 1)


# --------------------------------------------------------------------------
# The text SEARCH matches (copies of estafeta.imap.search; see "One copy")


def extract(data: bytes, summary: Summary | None = None) -> tuple[str, str]:
    """(header text, body text) of a message, folded: exactly what SEARCH
    TEXT and BODY compare a needle against. ``summary`` defaults to
    ``summarize(data)``; pass the stored one (the offsets must be those of
    ``data``)."""
    if summary is None:
        summary = summarize(data)
    return header_text(data, summary), body_text(data, summary)


# --------------------------------------------------------------------------
# Writing

# What SQLite cannot take (lone surrogates) or the tokenizer would end the
# text at (NUL): replaced by U+FFFD in what FTS5 indexes.
_UNINDEXABLE_RE = re.compile("[\x00\ud800-\udfff]")


def _indexable(text: str) -> str:
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return _UNINDEXABLE_RE.sub("\ufffd", text)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Entry:
    """One message's text, ready to insert (``prepare``)."""

    header: str  # folded, cut at MAX_HEADER (NUL and surrogates kept)
    body: str  # folded, cut at MAX_BODY
    flags: int  # HEADER_CUT | BODY_CUT
    blob: bytes  # fulltext_text.text: zlib(len(header) as 4 octets, header, body), UTF-8

    @classmethod
    def from_blob(cls, flags: int, blob: bytes) -> Entry:
        raw = zlib.decompress(blob)
        split = 4 + int.from_bytes(raw[:4], "little")
        header = raw[4:split].decode("utf-8", "surrogatepass")
        return cls(header, raw[split:].decode("utf-8", "surrogatepass"), flags, blob)


def prepare(data: bytes, summary: Summary | None = None) -> Entry:
    """The index entry of a message: ``extract``, cut to ``MAX_HEADER`` /
    ``MAX_BODY``, compressed. CPU only: no connection needed."""
    header, body = extract(data, summary)
    return prepare_text(header, body)


def prepare_text(header: str, body: str) -> Entry:
    """``prepare`` from already extracted (folded) text."""
    flags = 0
    if len(header) > MAX_HEADER:
        header, flags = header[:MAX_HEADER], flags | HEADER_CUT
    if len(body) > MAX_BODY:
        body, flags = body[:MAX_BODY], flags | BODY_CUT
    encoded = _encode(header)
    raw = len(encoded).to_bytes(4, "little") + encoded + _encode(body)
    return Entry(header, body, flags, zlib.compress(raw, 6))


def prepare_files(
    items: Sequence[tuple[int, str, str | None]],
) -> list[tuple[int, Entry]]:
    """``prepare`` for each (key, message file path, stored summary as
    JSON): what a helper process does for the writer (``Store``), so that
    decoding and folding mail does not hold the server's GIL. A file that
    is gone (expunged) is skipped. CPU and reads only: no connection."""
    from estafeta.store.maildir import read_message  # light; for helper processes

    prepared: list[tuple[int, Entry]] = []
    for key, path, summary in items:
        try:
            data = read_message(path)
        except OSError:
            continue
        prepared.append((key, prepare(data, Summary.from_json(summary) if summary else None)))
    return prepared


def insert_many(conn: sqlite3.Connection, entries: Iterable[tuple[int, Entry]]) -> int:
    """``insert`` each (key, entry), indexed at once (one FTS5 segment per
    call), all or nothing. The number inserted."""
    n = 0
    with _savepoint(conn):
        for key, entry in entries:
            _insert(conn, key, entry, False)
            n += 1
    return n


@contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    """All or nothing: the FTS5 rows and the side tables must agree, or a
    later 'delete' would remove what was never indexed."""
    conn.execute("SAVEPOINT fulltext")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO fulltext")
        conn.execute("RELEASE fulltext")
        raise
    conn.execute("RELEASE fulltext")


def _fts_insert(conn: sqlite3.Connection, key: int, entry: Entry) -> None:
    conn.execute(
        "INSERT INTO fulltext (rowid, header, body) VALUES (?, ?, ?)",
        (key, _indexable(entry.header), _indexable(entry.body)),
    )


def _insert(conn: sqlite3.Connection, key: int, entry: Entry, defer: bool) -> None:
    _delete(conn, key)
    if not defer:
        _fts_insert(conn, key, entry)
    flags = entry.flags | (PENDING if defer else 0)
    conn.execute("INSERT INTO fulltext_doc (key, flags) VALUES (?, ?)", (key, flags))
    conn.execute("INSERT INTO fulltext_text (key, text) VALUES (?, ?)", (key, entry.blob))


_ROW_SQL = (
    "SELECT d.flags, t.text FROM fulltext_doc d JOIN fulltext_text t USING (key) WHERE d.key = ?"
)


def _delete(conn: sqlite3.Connection, key: int) -> bool:
    row = conn.execute(_ROW_SQL, (key,)).fetchone()
    if row is None:
        return False
    flags, blob = row
    if not flags & PENDING:
        old = Entry.from_blob(flags, blob)
        conn.execute(
            "INSERT INTO fulltext (fulltext, rowid, header, body) VALUES ('delete', ?, ?, ?)",
            (key, _indexable(old.header), _indexable(old.body)),
        )
    conn.execute("DELETE FROM fulltext_doc WHERE key = ?", (key,))
    conn.execute("DELETE FROM fulltext_text WHERE key = ?", (key,))
    return True


def insert(conn: sqlite3.Connection, key: int, entry: Entry, *, defer: bool = True) -> None:
    """Keep ``entry`` under ``key``, replacing what ``key`` had; with
    ``defer`` (the default) FTS5 indexes it at the next ``flush``, else now."""
    with _savepoint(conn):
        _insert(conn, key, entry, defer)


def add(
    conn: sqlite3.Connection,
    key: int,
    data: bytes,
    summary: Summary | None = None,
    *,
    defer: bool = True,
) -> None:
    """``insert(conn, key, prepare(data, summary))``: message ``data`` with
    its stored ``summary`` (whose offsets must be those of ``data``)."""
    insert(conn, key, prepare(data, summary), defer=defer)


def add_many(
    conn: sqlite3.Connection,
    items: Iterable[tuple[int, bytes, Summary | None]],
    *,
    defer: bool = False,
) -> int:
    """``add`` for each (key, data, summary), indexed at once by default
    (a batch makes one FTS5 segment). The number added."""
    n = 0
    with _savepoint(conn):
        for key, data, summary in items:
            _insert(conn, key, prepare(data, summary), defer)
            n += 1
    return n


def flush(conn: sqlite3.Connection, limit: int = 1000, max_chars: int = 16 << 20) -> int:
    """Index pending messages into FTS5, lowest keys first: at most
    ``limit`` messages, and no more once ``max_chars`` characters of text
    are in (FTS5 takes about 0.1 µs per character). The number indexed;
    call again while it returns ``limit``, or see ``pending``."""
    n = chars = 0
    with _savepoint(conn):
        rows = conn.execute(
            "SELECT d.key, d.flags, t.text FROM fulltext_doc d JOIN fulltext_text t USING (key)"
            " WHERE d.flags != 0 AND d.flags & ? ORDER BY d.key LIMIT ?",
            (PENDING, limit),
        ).fetchall()
        for key, flags, blob in rows:
            entry = Entry.from_blob(flags, blob)
            _fts_insert(conn, key, entry)
            conn.execute("UPDATE fulltext_doc SET flags = ? WHERE key = ?", (flags & ~PENDING, key))
            n += 1
            chars += len(entry.header) + len(entry.body)
            if chars >= max_chars:
                break
    return n


def pending(conn: sqlite3.Connection) -> int:
    """How many messages wait for ``flush``."""
    row = conn.execute(
        "SELECT count(*) FROM fulltext_doc WHERE flags != 0 AND flags & ?", (PENDING,)
    ).fetchone()
    return int(row[0])


def remove(conn: sqlite3.Connection, keys: Iterable[int]) -> int:
    """Drop ``keys`` (expunge); unknown keys are ignored. The number removed."""
    n = 0
    with _savepoint(conn):
        for key in keys:
            n += _delete(conn, key)
    return n


def remove_range(conn: sqlite3.Connection, low: int, high: int) -> int:
    """Drop every key in ``low..high`` (a deleted mailbox: ``mailbox_range``)."""
    return remove(conn, indexed(conn, low, high))


def copy(conn: sqlite3.Connection, pairs: Iterable[tuple[int, int]], *, defer: bool = True) -> int:
    """Give message ``dst`` the text of ``src``, for each (src, dst) (COPY,
    MOVE), without parsing it again; sources not held are skipped. The
    number copied."""
    n = 0
    with _savepoint(conn):
        for src, dst in pairs:
            row = conn.execute(_ROW_SQL, (src,)).fetchone()
            if row is not None:
                flags, blob = row
                _insert(conn, dst, Entry.from_blob(flags & ~PENDING, blob), defer)
                n += 1
    return n


def optimize(conn: sqlite3.Connection) -> None:
    """Merge the FTS5 segments into one (smallest index, fastest queries);
    rewrites the whole index, so for maintenance, not per delivery."""
    conn.execute("INSERT INTO fulltext (fulltext) VALUES ('optimize')")


def integrity_check(conn: sqlite3.Connection) -> None:
    """Raises sqlite3.DatabaseError if the FTS5 index is corrupt."""
    conn.execute("INSERT INTO fulltext (fulltext, rank) VALUES ('integrity-check', 0)")


# --------------------------------------------------------------------------
# Searching


def indexed(conn: sqlite3.Connection, low: int = 0, high: int = MAX_KEY) -> set[int]:
    """The keys in ``low..high`` held (pending or not); the caller must scan
    the others (e.g. delivered before the index existed)."""
    rows = conn.execute("SELECT key FROM fulltext_doc WHERE key BETWEEN ? AND ?", (low, high))
    return {k for (k,) in rows}


def count(conn: sqlite3.Connection, low: int = 0, high: int = MAX_KEY) -> int:
    """How many keys in ``low..high`` are held: equal to the mailbox's
    message count means that every message is."""
    row = conn.execute("SELECT count(*) FROM fulltext_doc WHERE key BETWEEN ? AND ?", (low, high))
    return int(row.fetchone()[0])


@dataclass(frozen=True)
class Answer:
    """What the index knows about one BODY or TEXT key over a key range.

    ``found``: messages whose text contains the needle, certainly.
    ``unsure``: messages whose text was cut (MAX_BODY, MAX_HEADER) and whose
    kept part does not contain it: scan them. Every other key held
    (``indexed``) certainly does not match; keys not held must be scanned.
    """

    found: set[int]
    unsure: set[int]

    def decide(self, key: int) -> bool | None:
        """True / False for a key held, None if it must be scanned."""
        if key in self.found:
            return True
        if key in self.unsure:
            return None
        return False


_UNQUERYABLE_RE = re.compile("[\x00\ud800-\udfff]")


def query(needle: str) -> str | None:
    """The FTS5 query for a folded needle: up to ``MAX_TRIGRAMS`` of its
    trigrams, spread over it, each an FTS5 string (everything up to the
    closing quote is literal, a doubled quote stands for one), ANDed. None
    if it has no trigram free of NUL and lone surrogates."""
    starts = [i for i in range(len(needle) - 2) if _UNQUERYABLE_RE.search(needle, i, i + 3) is None]
    if not starts:
        return None
    if len(starts) > MAX_TRIGRAMS:
        last = len(starts) - 1
        starts = [starts[j * last // (MAX_TRIGRAMS - 1)] for j in range(MAX_TRIGRAMS)]
    trigrams = dict.fromkeys(needle[i : i + 3] for i in starts)
    return " ".join('"' + t.replace('"', '""') + '"' for t in trigrams)


def search(
    conn: sqlite3.Connection,
    field: Literal["BODY", "TEXT"],
    needle: str,
    low: int = 0,
    high: int = MAX_KEY,
    *,
    charge: Callable[[int], object] | None = None,
) -> Answer | None:
    """BODY or TEXT ``needle`` over the keys ``low..high`` (one mailbox:
    ``mailbox_range``): the scan's answers for the messages held, or None
    when the index cannot answer for this needle (the caller scans).

    ``needle`` is given as in the SEARCH command and casefolded here like
    the scan folds it. The empty needle (every message matches) and needles
    under 3 characters give None. ``charge`` (e.g. ``Budget.charge``) is
    called with the octets of text each candidate check reads.
    """
    folded = needle.casefold()
    if field not in ("BODY", "TEXT"):
        raise ValueError(f"not a full-text search key: {field!r}")
    if len(folded) < MIN_NEEDLE:
        return None
    match = query(folded)
    if match is None:
        return None
    wanted = _encode(folded)
    body_only = field == "BODY"
    cut = BODY_CUT if body_only else BODY_CUT | HEADER_CUT
    found: set[int] = set()

    def check(rows: Iterable[tuple[int, bytes]]) -> None:
        for key, blob in rows:
            raw = zlib.decompress(blob)
            if charge is not None:
                charge(len(raw))
            split = 4 + int.from_bytes(raw[:4], "little")
            # UTF-8 is self-synchronising: a substring of the octets is a
            # substring of the characters.
            if raw.find(wanted, split) >= 0 or (not body_only and raw.find(wanted, 4, split) >= 0):
                found.add(key)

    # Candidates from FTS5: messages holding all the trigrams looked up.
    check(
        conn.execute(
            "SELECT fulltext.rowid, t.text FROM fulltext"
            " JOIN fulltext_text t ON t.key = fulltext.rowid"
            " WHERE fulltext MATCH ? AND fulltext.rowid BETWEEN ? AND ?",
            (match, low, high),
        )
    )
    # Messages not in FTS5 yet: every one is a candidate.
    check(
        conn.execute(
            "SELECT d.key, t.text FROM fulltext_doc d JOIN fulltext_text t USING (key)"
            " WHERE d.flags != 0 AND d.flags & ? AND d.key BETWEEN ? AND ?",
            (PENDING, low, high),
        )
    )
    unsure = {
        k
        for (k,) in conn.execute(
            "SELECT key FROM fulltext_doc WHERE flags != 0 AND flags & ? AND key BETWEEN ? AND ?",
            (cut, low, high),
        )
        if k not in found
    }
    return Answer(found, unsure)


def search_keys(
    conn: sqlite3.Connection,
    field: Literal["BODY", "TEXT"],
    needle: str,
    keys: Collection[int],
    *,
    charge: Callable[[int], object] | None = None,
) -> dict[int, bool] | None:
    """``search`` for the messages ``keys``: key -> whether it matches, for
    the keys the index decides; the keys left out must be scanned. None:
    scan them all."""
    if not keys:
        return {}
    low, high = min(keys), max(keys)
    answer = search(conn, field, needle, low, high, charge=charge)
    if answer is None:
        return None
    held = indexed(conn, low, high)
    decided: dict[int, bool] = {}
    for key in keys:
        if key in held:
            verdict = answer.decide(key)
            if verdict is not None:
                decided[key] = verdict
    return decided
