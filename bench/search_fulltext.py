#!/usr/bin/env python3
"""The SEARCH BODY / TEXT full-text index (estafeta.store.fulltext): what it
costs on disk and per delivery, and what it saves per search (issue 17).

Messages are about 4 KiB of natural English text (slices of the Debian
changelogs under /usr/share/doc, the only sizeable prose on every machine),
with a few hundred bytes of header; ``--mixed`` makes 30 % of them
multipart/alternative with an HTML copy of the text (as most mail clients
send) and 10 % carry a base64 attachment (not indexed). One message in
1,000 holds the word "zebracorn".

It reports:

1. per delivery: ``prepare`` (decode, fold, compress: CPU, before the
   write lock) and ``insert`` with ``defer=True`` (the text kept, FTS5 not
   touched) in one write transaction per message, as deliveries commit
   (WAL, synchronous=OFF so that fsync is not counted), in µs per message
   and WAL pages written; then ``flush`` in batches (``--batch``); and, for
   comparison, ``insert`` with ``defer=False`` (FTS5 at every delivery) on
   the first ``--immediate`` messages;
2. the size on disk of each table (dbstat), per message and per MiB of
   mail, after the flush and after an FTS5 'optimize';
3. search: ``fulltext.search`` over the whole mailbox against the scan of
   estafeta.imap.search.evaluate (summaries as JSON, as stored, message
   files read from the page cache: a lower bound, a cold cache reads the
   disk), and one search while every message is still pending;
4. expunge: ``remove`` in µs per message.

    .venv/bin/python bench/search_fulltext.py [--messages 100000] [--mixed] [--variants]
        [--batch 1000] [--immediate 20000]

``--variants`` also sizes the FTS5 table with the ``detail`` options not
chosen (full: positions, phrase queries; column) on 10,000 messages.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import platform
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from estafeta.imap.search import Candidate, evaluate
from estafeta.imap.types import SearchKey
from estafeta.message import Summary, summarize
from estafeta.store import fulltext

MIB = 1024 * 1024


def text_pool(limit: int = 64 * MIB) -> str:
    """Natural English text from the Debian changelogs of this machine."""
    out: list[str] = []
    size = 0
    for path in sorted(Path("/usr/share/doc").glob("*/changelog*.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        out.append(text)
        size += len(text)
        if size >= limit:
            break
    if size < MIB:
        raise SystemExit("not enough text under /usr/share/doc")
    return "\n".join(out).replace("\r", "")


def make_message(rnd: random.Random, pool: str, n: int, mixed: bool) -> bytes:
    start = rnd.randrange(len(pool) - 8000)
    text = pool[start : start + 3600]
    if n % 1000 == 7:
        text = text[:1800] + " zebracorn " + text[1800:]
    head = (
        f"From: Sender {n % 97} <sender{n % 97}@remote.test>\r\n"
        f"To: user@example.test\r\nSubject: {' '.join(text[:200].split()[:6])}\r\n"
        f"Date: Mon, 23 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{n}.bench@remote.test>\r\nMIME-Version: 1.0\r\n"
    )
    plain = text.replace("\n", "\r\n").encode("utf-8")
    r = rnd.random() if mixed else 1.0
    if r < 0.3:
        html = ("<html><body><p>" + text.replace("\n", "<br>\r\n") + "</p></body></html>").encode()
        return (
            head.encode() + b"Content-Type: multipart/alternative; boundary=BB\r\n\r\n"
            b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + plain + b"\r\n"
            b"--BB\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + b"\r\n--BB--\r\n"
        )
    if r < 0.4:
        blob = base64.encodebytes(rnd.randbytes(3000)).replace(b"\n", b"\r\n")
        return (
            head.encode() + b"Content-Type: multipart/mixed; boundary=BB\r\n\r\n"
            b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + plain + b"\r\n"
            b"--BB\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--BB--\r\n"
        )
    return head.encode() + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + plain


def connect(path: Path, schema: tuple[str, ...] = fulltext.SCHEMA) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for statement in schema:
        conn.execute(statement)
    return conn


def table_sizes(conn: sqlite3.Connection) -> dict[str, int]:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {
        name: size
        for name, size in conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY name"
        )
    }


def print_sizes(title: str, sizes: dict[str, int], n: int, mail_bytes: int, text: int) -> None:
    total = sum(sizes.values())
    print(f"\n{title}: {total / MIB:.1f} MiB in all")
    print(f"  {'table':22} {'MiB':>8} {'B/message':>10} {'MiB per MiB mail':>17}")
    for name, size in sizes.items():
        print(f"  {name:22} {size / MIB:8.1f} {size / n:10.0f} {size / mail_bytes:17.3f}")
    print(
        f"  {'total':22} {total / MIB:8.1f} {total / n:10.0f} {total / mail_bytes:17.3f}"
        f"   ({total / text:.2f} B per character of text indexed)"
    )


def wal_pages(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return wal.stat().st_size // 4120 if wal.exists() else 0  # 4096 + 24 per frame


class Wal:
    """Pages written to the WAL, counted by checkpointing it now and then."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn, self.wal, self.pages = conn, Path(str(path) + "-wal"), 0

    def checkpoint(self) -> None:
        if self.wal.exists():
            self.pages += self.wal.stat().st_size // 4120  # 4096 + 24 per frame
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def deliver(
    conn: sqlite3.Connection, path: Path, keyed: list[tuple[int, bytes, Summary]], defer: bool
) -> tuple[float, float, float, int]:
    """One transaction per message, as deliveries commit: µs prepare, µs
    insert, WAL pages per message, characters kept."""
    t_prepare = t_insert = 0.0
    text_chars = 0
    wal = Wal(conn, path)
    for i, (key, data, summary) in enumerate(keyed):
        t0 = time.perf_counter()
        entry = fulltext.prepare(data, summary)
        t1 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        fulltext.insert(conn, key, entry, defer=defer)
        conn.execute("COMMIT")
        t2 = time.perf_counter()
        t_prepare += t1 - t0
        t_insert += t2 - t1
        text_chars += len(entry.header) + len(entry.body)
        if i % 1000 == 999:
            wal.checkpoint()
    wal.checkpoint()
    n = len(keyed)
    return t_prepare / n * 1e6, t_insert / n * 1e6, wal.pages / n, text_chars


def flush_all(conn: sqlite3.Connection, path: Path, batch: int) -> tuple[float, float]:
    """``flush`` in transactions of ``batch`` messages: µs and WAL pages per message."""
    wal = Wal(conn, path)
    n = 0
    t0 = time.perf_counter()
    while True:
        conn.execute("BEGIN IMMEDIATE")
        done = fulltext.flush(conn, limit=batch)
        conn.execute("COMMIT")
        n += done
        wal.checkpoint()
        if done < batch:
            break
    return (time.perf_counter() - t0) / max(n, 1) * 1e6, wal.pages / max(n, 1)


def timed(function, repeat: int = 1):  # type: ignore[no-untyped-def]
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - t0)
    return best, result


def variants(keyed: list[tuple[int, bytes, Summary]], directory: Path) -> None:
    entries = [(k, fulltext.prepare(d, s)) for k, d, s in keyed[:10_000]]
    mail = sum(len(d) for _, d, _ in keyed[:10_000])
    print(f"\nFTS5 variants on {len(entries)} messages (after 'optimize'), FTS tables only:")
    for detail in ("full", "column", "none"):
        path = directory / f"variant-{detail}.db"
        conn = connect(path, ())
        conn.execute(
            "CREATE VIRTUAL TABLE fulltext USING fts5(header, body, content='', columnsize=0,"
            f" detail={detail}, tokenize='trigram case_sensitive 1')"
        )
        conn.execute("BEGIN")
        for key, entry in entries:
            conn.execute(
                "INSERT INTO fulltext (rowid, header, body) VALUES (?, ?, ?)",
                (key, entry.header, entry.body),
            )
        conn.execute("COMMIT")
        conn.execute("INSERT INTO fulltext (fulltext) VALUES ('optimize')")
        size = sum(table_sizes(conn).values())
        print(f"  detail={detail:7} {size / MIB:7.1f} MiB, {size / mail:.3f} MiB per MiB of mail")
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--mixed", action="store_true", help="HTML alternatives, attachments")
    parser.add_argument("--variants", action="store_true", help="size detail=column/none too")
    parser.add_argument("--scan-needles", type=int, default=3, help="needles also timed by scan")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--batch", type=int, default=1000, help="messages per flush")
    parser.add_argument(
        "--immediate", type=int, default=20_000, help="messages also indexed at delivery (0: none)"
    )
    args = parser.parse_args()

    rnd = random.Random(args.seed)
    pool = text_pool()
    n = args.messages
    t0 = time.perf_counter()
    messages = [make_message(rnd, pool, i, args.mixed) for i in range(1, n + 1)]
    summaries = [summarize(m) for m in messages]
    pairs = list(zip(messages, summaries, strict=True))
    keyed = [(fulltext.message_key(1, i), m, s) for i, (m, s) in enumerate(pairs, 1)]
    mail = sum(len(m) for m in messages)
    print(
        f"{n} messages, {mail / MIB:.1f} MiB of mail ({mail / n:.0f} B each),"
        f" {'mixed' if args.mixed else 'text/plain'}; made in {time.perf_counter() - t0:.1f} s"
    )
    print(f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        directory = Path(tmp)
        path = directory / "index.db"
        conn = connect(path)
        prep_us, insert_us, pages, text_chars = deliver(conn, path, keyed, defer=True)
        print(
            f"\nper delivery, deferred (one transaction each): prepare {prep_us:.0f} µs"
            f" (no lock), insert {insert_us:.0f} µs, {pages:.1f} WAL pages (4 KiB);"
            f" {text_chars / n:.0f} characters kept per message"
        )
        low, high = fulltext.mailbox_range(1)
        seconds, answer = timed(lambda: fulltext.search(conn, "BODY", "zebracorn", low, high))
        assert answer is not None
        print(
            f"  search while all {n} are pending (every one checked): {seconds:.2f} s,"
            f" {len(answer.found)} found"
        )
        flush_us, flush_pages = flush_all(conn, path, args.batch)
        print(
            f"flush in batches of {args.batch}: {flush_us:.0f} µs, {flush_pages:.1f} WAL pages"
            " per message"
        )
        print_sizes("on disk after flush", table_sizes(conn), n, mail, text_chars)
        t0 = time.perf_counter()
        fulltext.optimize(conn)
        t_opt = time.perf_counter() - t0
        print_sizes(f"after 'optimize' ({t_opt:.1f} s)", table_sizes(conn), n, mail, text_chars)
        print(f"  index.db file: {path.stat().st_size / MIB:.1f} MiB")

        if args.immediate:
            k = min(n, args.immediate)
            path2 = directory / "immediate.db"
            conn2 = connect(path2)
            _, insert_us, pages, _ = deliver(conn2, path2, keyed[:k], defer=False)
            print(
                f"\nper delivery, indexed at once (first {k} messages, one transaction each):"
                f" insert {insert_us:.0f} µs, {pages:.1f} WAL pages"
            )
            conn2.close()

        # -- searching
        sample = summaries[n // 2]
        body = fulltext.extract(messages[n // 2], sample)[1]
        words = body.split()
        phrase = body[400:440]
        common = max(set(words), key=lambda w: (len(w) >= 4, body.count(w)))
        needles = [
            ("BODY", "zebracorn"),
            ("BODY", phrase),
            ("TEXT", "absent-needle-xyz"),
            ("BODY", common),
            ("BODY", "the"),
            ("TEXT", "sender 42"),
        ]
        # The scan as the server runs it: summaries as stored (JSON), message
        # files read on demand (here from the page cache: a lower bound).
        mail_dir = directory / "mail"
        mail_dir.mkdir()
        candidates = []
        for i, (m, s) in enumerate(pairs, 1):
            file = mail_dir / str(i)
            file.write_bytes(m)
            candidates.append(
                Candidate(i, i, frozenset(), False, 0, len(m), 1, s.to_json(), file.read_bytes)
            )
        print(f"\nsearch over {n} messages: index (best of 3) vs scan (files in the page cache)")
        print(f"  {'key':36} {'matches':>8} {'index ms':>9} {'scan s':>8}")
        for i, (field, needle) in enumerate(needles):
            seconds, answer = timed(
                lambda f=field, nd=needle: fulltext.search(conn, f, nd, low, high), 3
            )
            assert answer is not None
            label = f"{field} {needle!r}"[:36]
            line = f"  {label:36} {len(answer.found):8d} {seconds * 1e3:9.1f}"
            if i < args.scan_needles:
                key = SearchKey(field, (needle,))
                scan_s, found = timed(
                    lambda key=key: evaluate(key, candidates, largest_seq=n, largest_uid=n)
                )
                assert {fulltext.message_key(1, c.uid) for c in found} == answer.found
                line += f" {scan_s:8.2f}"
            print(line)
        seconds, have = timed(lambda: fulltext.indexed(conn, low, high), 3)
        print(f"  indexed() of the mailbox: {seconds * 1e3:.1f} ms ({len(have)} keys);", end=" ")
        seconds, _ = timed(lambda: fulltext.count(conn, low, high), 3)
        print(f"count(): {seconds * 1e3:.1f} ms")

        # -- expunge
        gone = [k for k, _, _ in keyed[: min(n, 2000)]]
        t0 = time.perf_counter()
        for k in gone[:1000]:
            conn.execute("BEGIN IMMEDIATE")
            fulltext.remove(conn, [k])
            conn.execute("COMMIT")
        single = (time.perf_counter() - t0) / len(gone[:1000]) * 1e6
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        fulltext.remove(conn, gone[1000:])
        conn.execute("COMMIT")
        batch = (time.perf_counter() - t0) / max(1, len(gone[1000:])) * 1e6
        print(
            f"\nexpunge: {single:.0f} µs per message (one transaction each),"
            f" {batch:.0f} µs ({len(gone[1000:])} in one transaction)"
        )
        fulltext.integrity_check(conn)
        conn.close()
        if args.variants:
            variants(keyed, directory)


if __name__ == "__main__":
    main()
