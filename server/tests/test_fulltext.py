"""Tests for estafeta.store.fulltext: the FTS5 trigram index must give the
answers of SEARCH BODY / TEXT's full scan (estafeta.imap.search.evaluate),
message for message, or say that it cannot (None, ``unsure``).

The corpus is random with a fixed seed: MIME structures (single part,
multipart/alternative and /mixed with attachments, message/rfc822),
charsets (UTF-8, ISO-8859-1, windows-1252, KOI8-R, unknown, us-ascii with
8-bit bytes), transfer encodings (7bit, 8bit, base64, quoted-printable),
RFC 2047 headers, and words whose case folding is not plain lower-casing
(ß, ﬁ, Turkish ı/İ, Greek final sigma, ǅ). Needles are cut from the
messages' text at random (across line breaks and part boundaries), re-cased,
or taken from a list of awkward strings (FTS5 and LIKE syntax characters).
"""

from __future__ import annotations

import base64
import quopri
import random
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estafeta.imap import search
from estafeta.imap.search import Budget, Candidate, evaluate
from estafeta.imap.types import SearchKey
from estafeta.message import Summary, summarize
from estafeta.store import fulltext

# ---------------------------------------------------------------------------
# A random corpus

# fmt: off
WORDS = [
    # plain
    "report", "meeting", "budget", "invoice", "hello", "world", "quarterly", "revenue", "the",
    "and", "of", "password", "zebra", "giraffe",
    # case folding beyond lower()
    "Ärger", "ärger", "ÄRGER", "Straße", "STRASSE", "strasse", "Grüße", "GRÜSSE", "ıstanbul",
    "İstanbul", "ISTANBUL", "Istanbul", "ﬁle", "FILE", "ΣΊΣΥΦΟΣ", "σίσυφος", "Σίσυφος", "ǅungla",
    "ǄUNGLA", "Ĳssel", "ĳssel", "ﬀ", "µ", "Μ", "ﬆ", "ᾳ", "ΆΙ", "Ω", "Ω", "K", "k", "Å", "å",
    # other scripts and characters
    "Привет", "ПРИВЕТ", "мир", "naïve", "café", "CAFÉ", "crème", "€uro", "„quote“", "日本語",
    "テキスト", "😀😁😂", "👍🏽", "e\u0301", "é",
    # FTS5 / LIKE / GLOB syntax
    "100%", "50_50", "_x_", "a*b", "*", '"quoted"', '"', "it's", "''", "NEAR(a b)", "AND", "OR",
    "NOT", "x:y", "{header}", "^start", "[abc]", "?", "\\", "-minus", "+plus", "(", ")", ":", ";",
    "\t",
]
# fmt: on


def sentence(rnd: random.Random, words: int) -> str:
    out = []
    for _ in range(words):
        out.append(rnd.choice(WORDS))
        out.append(rnd.choice(" " * 8 + "," + "." + "\n"))
    return "".join(out).strip(" ")


# (charset parameter, codec used to write the bytes)
CHARSETS = [
    ("utf-8", "utf-8"),
    ("UTF-8", "utf-8"),
    ("iso-8859-1", "iso-8859-1"),
    ("windows-1252", "windows-1252"),
    ("koi8-r", "koi8-r"),
    ("x-unknown", "utf-8"),  # the scan reads an unknown charset as UTF-8
    ("us-ascii", "utf-8"),  # 8-bit UTF-8 under us-ascii: read as UTF-8
    (None, "utf-8"),
]


def encodable(text: str, codec: str) -> str:
    return text.encode(codec, "replace").decode(codec)


def text_part(rnd: random.Random, subtype: str = "plain") -> bytes:
    charset, codec = rnd.choice(CHARSETS)
    text = sentence(rnd, rnd.randint(0, 60))
    if subtype == "html":
        text = f"<html><body><p>{text}</p></body></html>"
    raw = encodable(text, codec).replace("\n", "\r\n").encode(codec)
    cte = rnd.choice(["7bit", "8bit", "base64", "quoted-printable", None])
    if cte == "base64":
        body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    elif cte == "quoted-printable":
        body = quopri.encodestring(raw).replace(b"\n", b"\r\n")
    else:
        body = raw
    header = f"Content-Type: text/{subtype}"
    if charset is not None:
        header += f"; charset={charset}"
    header += "\r\n"
    if cte is not None:
        header += f"Content-Transfer-Encoding: {cte}\r\n"
    return header.encode("ascii") + b"\r\n" + body


def attachment(rnd: random.Random) -> bytes:
    # The attachment holds corpus words: BODY must not find them there.
    payload = sentence(rnd, 20).encode("utf-8")
    return (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=x.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(payload).replace(b"\n", b"\r\n")
    )


def multipart(rnd: random.Random, subtype: str, parts: list[bytes]) -> bytes:
    boundary = f"b{rnd.randrange(10**9)}"
    out = [f"Content-Type: multipart/{subtype}; boundary={boundary}\r\n\r\n".encode()]
    out.append(b"preamble " + sentence(rnd, 3).encode("utf-8") + b"\r\n")
    for part in parts:
        out.append(f"--{boundary}\r\n".encode() + part + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    out.append(b"epilogue " + sentence(rnd, 3).encode("utf-8") + b"\r\n")
    return b"".join(out)


def entity(rnd: random.Random, depth: int = 0) -> bytes:
    kind = rnd.random()
    if depth > 1 or kind < 0.45:
        return text_part(rnd, rnd.choice(["plain", "plain", "html"]))
    if kind < 0.7:
        return multipart(rnd, "alternative", [text_part(rnd), text_part(rnd, "html")])
    if kind < 0.9:
        parts = [entity(rnd, depth + 1) for _ in range(rnd.randint(1, 3))]
        parts.append(attachment(rnd))
        rnd.shuffle(parts)
        return multipart(rnd, "mixed", parts)
    inner = header_lines(rnd) + entity(rnd, depth + 1)
    return b"Content-Type: message/rfc822\r\n\r\n" + inner


def encoded_word(rnd: random.Random, text: str) -> str:
    charset = rnd.choice(["utf-8", "iso-8859-1"])
    raw = encodable(text, charset).encode(charset)
    if rnd.random() < 0.5:
        return f"=?{charset}?B?{base64.b64encode(raw).decode()}?="
    q = "".join(chr(b) if 48 <= b < 123 and chr(b).isalnum() else f"={b:02X}" for b in raw)
    return f"=?{charset}?Q?{q}?="


def header_lines(rnd: random.Random) -> bytes:
    subject = sentence(rnd, rnd.randint(1, 6)).replace("\n", " ")
    if rnd.random() < 0.5:
        subject = encoded_word(rnd, subject)
    lines = [
        f"From: {rnd.choice(WORDS)} <a{rnd.randrange(100)}@example.com>",
        "To: b@example.org",
        f"Subject: {subject}",
    ]
    for n in range(rnd.randint(0, 3)):
        value = sentence(rnd, rnd.randint(1, 5)).replace("\n", "\r\n ")  # folded
        lines.append(f"X-Note-{n}: {value}")
    rnd.shuffle(lines)
    return "\r\n".join(lines).encode("utf-8") + b"\r\n"


def message(rnd: random.Random) -> bytes:
    return header_lines(rnd) + b"MIME-Version: 1.0\r\n" + entity(rnd)


def loader(data: bytes) -> Callable[[], bytes]:
    return lambda: data


@dataclass
class Corpus:
    data: dict[int, bytes]  # key -> message
    summaries: dict[int, Summary]

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(seq, key, frozenset(), False, 0, len(d), 1, self.summaries[key], loader(d))
            for seq, (key, d) in enumerate(sorted(self.data.items()), 1)
        ]


def make_corpus(seed: int, n: int, mailbox: int = 1) -> Corpus:
    rnd = random.Random(seed)
    data = {fulltext.message_key(mailbox, uid): message(rnd) for uid in range(1, n + 1)}
    return Corpus(data, {k: summarize(d) for k, d in data.items()})


def connect(corpus: Corpus | None = None, defer: bool = False) -> sqlite3.Connection:
    """An index of ``corpus``: in FTS5 (``defer`` False), or pending."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    fulltext.create(conn)
    if corpus is not None:
        conn.execute("BEGIN")
        items = ((k, d, corpus.summaries[k]) for k, d in corpus.data.items())
        fulltext.add_many(conn, items, defer=defer)
        conn.execute("COMMIT")
    return conn


def refusable(needle: str) -> bool:
    """Whether the index may give a needle back: under three characters, or
    no three consecutive ones free of NUL and lone surrogates."""
    folded = needle.casefold()
    bad = [ch == "\x00" or "\ud800" <= ch <= "\udfff" for ch in folded]
    return len(folded) < 3 or all(any(bad[i : i + 3]) for i in range(len(folded) - 2))


def scan_texts(corpus: Corpus) -> dict[int, tuple[str, str]]:
    """(header, body) as the scan in estafeta.imap.search sees them."""
    out = {}
    view = search._View(Budget(2**62, float("inf")))
    for c in corpus.candidates():
        view.reset(c)
        out[c.uid] = (view.header_text(), view.body_text())
    return out


def needles(rnd: random.Random, texts: Sequence[str], n: int) -> Iterator[str]:
    """Substrings of the texts (any length, across line breaks), re-cased;
    corpus words; awkward strings; short strings."""
    recase: list[Callable[[str], str]] = [str, str.upper, str.lower, str.title, str.swapcase]
    awkward = ['"', '""', '" OR "', "%%%", "a%b", "_", "__x", "*", "**", "'", "it''s", "x\x00y"]
    awkward += ["\ufffd\ufffd\ufffd", "NEAR(", "{body}", "body :", "\r\n\r\n", "\r\n-", "x:y"]
    texts = [t for t in texts if t]
    for _ in range(n):
        r = rnd.random()
        if r < 0.55:
            text = rnd.choice(texts)
            start = rnd.randrange(len(text))
            needle = text[start : start + rnd.choice([1, 2, 3, 4, 5, 7, 10, 20, 40])]
            yield rnd.choice(recase)(needle)
        elif r < 0.75:
            yield rnd.choice(recase)(rnd.choice(WORDS))
        elif r < 0.85:
            yield rnd.choice(awkward)
        elif r < 0.95:
            yield rnd.choice(WORDS) + rnd.choice([" ", "\r\n", ", ", ".\r\n"]) + rnd.choice(WORDS)
        else:
            yield "".join(rnd.choice("abcäßıi%_*\"' ") for _ in range(rnd.randint(0, 4)))


def scan(corpus: Corpus, op: str, needle: str) -> set[int]:
    found = evaluate(
        SearchKey(op, (needle,)), corpus.candidates(), largest_seq=10**6, largest_uid=2**40
    )
    return {c.uid for c in found}


@dataclass
class Tally:
    answered: int = 0  # needles the index answered
    refused: int = 0  # needles it gave back (None)
    matches: int = 0  # messages found through the index
    unsure: int = 0


def compare(conn: sqlite3.Connection, corpus: Corpus, needle_list: Sequence[str]) -> Tally:
    tally = Tally()
    keys = set(corpus.data)
    low, high = fulltext.mailbox_range(1)
    for needle in needle_list:
        for op in ("BODY", "TEXT"):
            expected = scan(corpus, op, needle)
            answer = fulltext.search(conn, op, needle, low, high)
            if answer is None:
                tally.refused += 1
                assert refusable(needle), f"index refused {op} {needle!r}"
                continue
            tally.answered += 1
            assert answer.found <= keys
            assert answer.found.isdisjoint(answer.unsure)
            decided = {k for k in keys if answer.decide(k) is not None}
            got = answer.found & decided
            assert got == expected & decided, (op, needle, got ^ (expected & decided))
            assert answer.found <= expected, (op, needle)  # found is certain
            tally.matches += len(got)
            tally.unsure += len(answer.unsure)
    return tally


# ---------------------------------------------------------------------------
# The text is the scan's text


def test_extracted_text_is_the_scans() -> None:
    corpus = make_corpus(1, 300)
    seen = scan_texts(corpus)
    for key, data in corpus.data.items():
        assert fulltext.extract(data, corpus.summaries[key]) == seen[key]
        assert fulltext.extract(data) == seen[key]
    assert fulltext.MAX_SCAN == search.MAX_SCAN


# ---------------------------------------------------------------------------
# Index answers == scan answers


@pytest.mark.parametrize(("seed", "defer"), [(2, False), (3, False), (6, True)])
def test_index_answers_like_the_scan(seed: int, defer: bool) -> None:
    corpus = make_corpus(seed, 150)
    conn = connect(corpus, defer)
    assert fulltext.pending(conn) == (150 if defer else 0)
    texts = [t for pair in scan_texts(corpus).values() for t in pair]
    rnd = random.Random(seed * 7919)
    tally = compare(conn, corpus, list(needles(rnd, texts, 250)))
    # Not vacuous: most needles answered, many found, short ones refused.
    assert tally.answered > 300
    assert tally.matches > 1000
    assert tally.refused > 20
    assert tally.unsure == 0
    fulltext.integrity_check(conn)


def test_folding_cases() -> None:
    words = 'Der Ärger über die Straße in İstanbul, ΣΊΣΥΦΟΣ und ﬁle: 100% _x_ a*b "q" it\'s'
    data = (
        b"Subject: =?iso-8859-1?q?=C4RGER?=\r\n"
        b"Content-Type: text/plain; charset=windows-1252\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + quopri.encodestring(
            words.replace("İ", "I")
            .replace("ΣΊΣΥΦΟΣ", "Sisyphos")
            .replace("ﬁ", "fi")
            .encode("cp1252")
        )
        + "\r\n\u201cquoted\u201d €uro\r\n".encode("cp1252")
    )
    corpus = Corpus({1: data}, {1: summarize(data)})
    conn = connect(corpus)
    cases = {
        "ärger": {1}, "ÄRGER": {1}, "STRASSE": {1}, "straße": {1}, "strasse": {1},
        "istanbul": {1}, "ISTANBUL": {1}, "ıstanbul": set(), "FILE": {1}, "ﬁle": {1},
        "100%": {1}, "10%": set(), "_x_": {1}, "x_x": set(), "a*b": {1}, "a*c": set(),
        '"q"': {1}, "it's": {1}, "“quoted”": {1}, "€URO": {1}, "sisyphos": {1},
    }  # fmt: skip
    for needle, expected in cases.items():
        assert scan(corpus, "BODY", needle) == expected, needle
        answer = fulltext.search(conn, "BODY", needle)
        assert answer is not None and answer.found == expected, needle
    # In the header only: TEXT finds it, BODY does not.
    answer = fulltext.search(conn, "TEXT", "subject: ärger")
    assert answer is not None and answer.found == {1}
    answer = fulltext.search(conn, "BODY", "subject: ärger")
    assert answer is not None and answer.found == set()
    # TEXT never matches across the header / body boundary.
    assert scan(corpus, "TEXT", "printable\nder") == set()
    answer = fulltext.search(conn, "TEXT", "printable\nder")
    assert answer is not None and answer.found == set()


@pytest.mark.parametrize(
    "needle", ["", "a", "ab", "Äb", "ß", "\x00bc", "a\x00b", "\ud800ab", "ab\x00cd"]
)
def test_needles_the_index_cannot_answer(needle: str) -> None:
    # "ß" folds to "ss": still under three characters.
    conn = connect()
    assert refusable(needle)
    assert fulltext.search(conn, "BODY", needle) is None
    assert fulltext.search(conn, "TEXT", needle) is None


@pytest.mark.parametrize("defer", [False, True])
def test_long_needles(defer: bool) -> None:
    conn = connect()
    fulltext.insert(conn, 1, fulltext.prepare_text("", "x" * 3000 + "y" * 3000), defer=defer)
    fulltext.insert(conn, 2, fulltext.prepare_text("", "x" * 2999 + "z" + "y" * 3000), defer=defer)
    cases = [("X" * 3000 + "Y" * 3000, {1}), ("x" * 3001, set()), ("x" * 2999, {1, 2}),
             ("xxxzy", {2}), ("x" * 2000 + "y", {1})]  # fmt: skip
    for needle, expected in cases:
        answer = fulltext.search(conn, "BODY", needle)
        assert answer is not None and answer.found == expected, needle[:10]
    assert len(fulltext.query("abcdefghijklmnopqrstuvwxyz" * 10) or "") < 100


def test_nul_and_surrogates_in_text() -> None:
    # SQLite's trigram tokenizer stops at NUL, and Python cannot bind lone
    # surrogates: FTS5 gets them as U+FFFD, the check sees them as they are.
    conn = connect()
    fulltext.insert(conn, 1, fulltext.prepare_text("", "abc\x00def\ud800ghi\uffffjkl\ufffd"))
    fulltext.insert(conn, 2, fulltext.prepare_text("ascii\x00only", "plain\x00ascii"), defer=False)
    fulltext.insert(
        conn, 3, fulltext.prepare_text("", "abc\ufffddef\ufffdghi\ufffdjkl"), defer=False
    )
    for needle, expected in [("abc", {1, 3}), ("def", {1, 3}), ("ghi", {1, 3}), ("jkl", {1, 3}),
                             ("cde", set()), ("fgh", set()), ("ijk", set()),
                             ("abc\x00def", {1}), ("abc\ufffddef", {3}), ("ghi\uffffjkl", {1}),
                             ("def\ud800ghi", {1}), ("ghi\ufffdjkl", {3}), ("jkl\ufffd", {1}),
                             ("plain", {2}), ("ascii", {2}), ("only", set()),
                             ("plain\x00ascii", {2})]:  # fmt: skip
        answer = fulltext.search(conn, "BODY", needle)
        assert answer is not None and answer.found == expected, needle
    answer = fulltext.search(conn, "TEXT", "only")
    assert answer is not None and answer.found == {2}


# ---------------------------------------------------------------------------
# A text-level property: any text, any needle


ALPHABET = "aAbBäÄßsSıIİiσςΣﬁ\r\n \"%_*'\\:(){}^\x00\ufffd\uffff\ufffe\ud800😀"


@settings(max_examples=300, deadline=None)
@given(
    header=st.text(alphabet=ALPHABET, max_size=40),
    body=st.text(alphabet=ALPHABET, max_size=80),
    needle=st.text(alphabet=ALPHABET, max_size=6),
)
def test_any_text_any_needle(header: str, body: str, needle: str) -> None:
    conn = connect()
    header, body = header.casefold(), body.casefold()  # extract()'s folding
    fulltext.insert(conn, 7, fulltext.prepare_text(header, body), defer=False)
    fulltext.insert(conn, 8, fulltext.prepare_text(header, body), defer=True)
    folded = needle.casefold()
    for op, expected in [("BODY", folded in body), ("TEXT", folded in header or folded in body)]:
        answer = fulltext.search(conn, op, needle)  # type: ignore[arg-type]
        if answer is None:
            assert refusable(needle)
        else:
            assert answer.found == ({7, 8} if expected else set()), (op, header, body, needle)


# ---------------------------------------------------------------------------
# Cut texts, deletion, copies, ranges


def test_cut_texts_are_unsure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fulltext, "MAX_BODY", 120)
    monkeypatch.setattr(fulltext, "MAX_HEADER", 60)
    corpus = make_corpus(4, 120)
    conn = connect(corpus)
    cut = {k for k, (h, b) in scan_texts(corpus).items() if len(h) > 60 or len(b) > 120}
    assert len(cut) > 30
    texts = [t for pair in scan_texts(corpus).values() for t in pair]
    tally = compare(conn, corpus, list(needles(random.Random(4), texts, 150)))
    assert tally.unsure > 100 and tally.matches > 100


def test_remove_copy_and_ranges() -> None:
    corpus = make_corpus(5, 120)
    conn = connect(corpus)
    keys = sorted(corpus.data)
    rnd = random.Random(5)
    gone = set(rnd.sample(keys, 60))
    conn.execute("BEGIN")
    assert fulltext.remove(conn, [*sorted(gone), fulltext.message_key(1, 9999)]) == 60
    conn.execute("COMMIT")
    fulltext.integrity_check(conn)
    for key in gone:
        del corpus.data[key]
    low, high = fulltext.mailbox_range(1)
    assert fulltext.indexed(conn, low, high) == set(corpus.data)
    assert fulltext.count(conn, low, high) == len(corpus.data)
    texts = [t for pair in scan_texts(corpus).values() for t in pair]
    tally = compare(conn, corpus, list(needles(rnd, texts, 120)))
    assert tally.matches > 200

    # Re-adding a key replaces its text.
    key = min(corpus.data)
    new = b"Subject: replaced\r\n\r\nbrand new words\r\n"
    fulltext.add(conn, key, new)
    corpus.data[key], corpus.summaries[key] = new, summarize(new)
    compare(conn, corpus, ["brand new", "replaced", *list(needles(rnd, texts, 40))])

    # COPY into mailbox 2; mailbox 1 then deleted as a whole.
    pairs = [(k, fulltext.message_key(2, n)) for n, k in enumerate(sorted(corpus.data), 1)]
    assert fulltext.copy(conn, pairs) == len(pairs)
    assert fulltext.count(conn, *fulltext.mailbox_range(2)) == len(pairs)
    for op, needle in [("BODY", "brand new"), ("TEXT", "replaced"), ("BODY", "ärger")]:
        one = fulltext.search(conn, op, needle, *fulltext.mailbox_range(1))  # type: ignore[arg-type]
        two = fulltext.search(conn, op, needle, *fulltext.mailbox_range(2))  # type: ignore[arg-type]
        assert one is not None and two is not None and one.found
        assert {fulltext.split_key(k)[1] for k in two.found} == {
            n for (k, dst) in pairs for n in [fulltext.split_key(dst)[1]] if k in one.found
        }
    assert fulltext.remove_range(conn, *fulltext.mailbox_range(1)) == len(pairs)
    fulltext.integrity_check(conn)
    assert fts_rowids(conn) == set()
    assert fulltext.pending(conn) == len(pairs)  # the copies wait for flush
    fulltext.flush(conn)
    assert fts_rowids(conn) == {dst for _, dst in pairs}
    assert fulltext.count(conn) == len(pairs)
    answer = fulltext.search(conn, "BODY", "brand new")
    assert answer is not None and {fulltext.split_key(k)[0] for k in answer.found} == {2}


def fts_rowids(conn: sqlite3.Connection) -> set[int]:
    """The rows FTS5 itself has (every message here has a Subject field)."""
    rows = conn.execute("SELECT rowid FROM fulltext WHERE fulltext MATCH '\"ubj\"'")
    return {k for (k,) in rows}


def test_deferred_indexing() -> None:
    corpus = make_corpus(8, 100)
    conn = connect(corpus, defer=True)
    texts = [t for pair in scan_texts(corpus).values() for t in pair]
    needle_list = list(needles(random.Random(8), texts, 80))
    before = compare(conn, corpus, needle_list)
    assert fulltext.pending(conn) == 100
    assert fulltext.flush(conn, limit=30) == 30  # half in FTS5, half pending
    assert fulltext.pending(conn) == 70
    assert compare(conn, corpus, needle_list) == before
    assert fulltext.flush(conn, max_chars=1) == 1
    while fulltext.flush(conn, limit=25):
        pass
    assert fulltext.pending(conn) == 0
    assert compare(conn, corpus, needle_list) == before
    fulltext.integrity_check(conn)
    # Expunging pending and indexed messages alike.
    conn2 = connect(corpus, defer=True)
    fulltext.flush(conn2, limit=50)
    assert fulltext.remove(conn2, list(corpus.data)) == 100
    fulltext.integrity_check(conn2)
    assert conn2.execute("SELECT count(*) FROM fulltext_text").fetchone() == (0,)
    assert fts_rowids(conn2) == set()  # the FTS5 rows went too, not just ours
    answer = fulltext.search(conn2, "TEXT", "the")
    assert answer is not None and answer.found == set()


def test_charge_counts_the_text_checked() -> None:
    conn = connect()
    fulltext.add(conn, 1, b"Subject: a\r\n\r\nfind me\r\n", defer=False)
    fulltext.add(conn, 2, b"Subject: b\r\n\r\nfind me too\r\n")
    fulltext.add(conn, 3, b"Subject: c\r\n\r\nnothing\r\n", defer=False)
    charged: list[int] = []
    answer = fulltext.search(conn, "BODY", "find", charge=charged.append)
    assert answer is not None and answer.found == {1, 2}
    assert len(charged) == 2 and all(n > 10 for n in charged)  # message 3 is no candidate


def test_search_keys_leaves_unindexed_keys_to_the_scan() -> None:
    conn = connect()
    fulltext.add(conn, 5, b"Subject: a\r\n\r\nfind me\r\n")
    fulltext.add(conn, 6, b"Subject: b\r\n\r\nnot here\r\n")
    assert fulltext.search_keys(conn, "BODY", "FIND ME", [5, 6, 7]) == {5: True, 6: False}
    assert fulltext.search_keys(conn, "BODY", "fi", [5, 6, 7]) is None


def test_failed_insert_leaves_index_consistent() -> None:
    conn = connect()
    fulltext.add(conn, 1, b"Subject: a\r\n\r\nalpha beta\r\n", defer=False)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON fulltext_text BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        fulltext.add(conn, 1, b"Subject: b\r\n\r\ngamma delta\r\n", defer=False)
    conn.execute("DROP TRIGGER refuse")
    answer = fulltext.search(conn, "BODY", "alpha")
    assert answer is not None and answer.found == {1}
    assert fulltext.remove(conn, [1]) == 1
    fulltext.integrity_check(conn)


def test_keys() -> None:
    assert fulltext.split_key(fulltext.message_key(3, 2**32 - 1)) == (3, 2**32 - 1)
    low, high = fulltext.mailbox_range(3)
    assert low <= fulltext.message_key(3, 1) <= high < fulltext.message_key(4, 0)
    with pytest.raises(ValueError):
        fulltext.message_key(1, 2**32)
