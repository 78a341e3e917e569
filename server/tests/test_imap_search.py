"""Tests for estafeta.imap.search: SEARCH keys over a small real mailbox, and
the SEARCH / ESEARCH responses.

The fixture mailbox is a list of real messages (bytes), summarised by
estafeta.message.summarize exactly as at delivery; each key of
rfc9051:6.4.4 (and the rfc3501, rfc5032, rfc5182, rfc7162 additions) is one
row of a table with the sequence numbers it must find.
"""

from __future__ import annotations

import base64
import datetime
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from estafeta.imap import search
from estafeta.imap.search import (
    Candidate,
    compress,
    evaluate,
    needs_content,
    render_esearch,
    render_search,
    response_modseq,
)
from estafeta.imap.types import SearchKey, SequenceSet
from estafeta.message import searchtext, summarize


def crlf(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\n", b"\r\n")


ZEBRA_B64 = base64.b64encode(b"secret zebra payload, not text").decode("ascii")
GIRAFFE_B64 = base64.b64encode("<p>A tall giraffe, naïve</p>".encode()).decode("ascii")

# seq 1: plain ASCII.
M1 = crlf(
    """From: Alice Example <alice@example.com>
To: Bob <bob@example.org>
Subject: Quarterly report
Date: Mon, 01 Jan 2024 10:00:00 +0000
Message-ID: <q1@example.com>

Please find the numbers below.
Revenue went up.
"""
)
# seq 2: encoded words in Subject and From (ISO-8859-1 and UTF-8).
M2 = crlf(
    """From: =?ISO-8859-1?Q?J=FCrgen_M=FCller?= <jm@example.de>
To: alice@example.com
Cc: Carol Singer <carol@example.net>, dave@example.net
Subject: =?UTF-8?Q?Caf=C3=A9_cr=C3=A8me?= and =?UTF-8?B?w7xiZXI=?=
Date: Tue, 02 Jan 2024 08:00:00 +0100

Short note.
"""
)
# seq 3: quoted-printable UTF-8 body with a soft line break.
M3 = crlf(
    """From: bob@example.org
To: alice@example.com
Subject: Greetings
Date: Wed, 03 Jan 2024 12:00:00 +0000
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe aus M=C3=BCnchen! soft=
break here
"""
)
# seq 4: multipart with a text part, a base64 attachment that contains
# "zebra" (must not match BODY) and a base64 text/html part with "giraffe".
M4 = crlf(
    f"""From: Carol Singer <carol@example.net>
To: bob@example.org
Subject: Files attached
Date: Thu, 04 Jan 2024 12:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XYZ"

This is the preamble, mentioning pelican.
--XYZ
Content-Type: text/plain; charset=us-ascii

See the attachment.
--XYZ
Content-Type: application/octet-stream; name="data.bin"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="data.bin"

{ZEBRA_B64}
--XYZ
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

{GIRAFFE_B64}
--XYZ--
Epilogue with a walrus.
"""
)
# seq 5: no Date: header at all.
M5 = crlf(
    """From: nobody@example.com
To: Friends: bob@example.org;
Subject: No date here

Timeless content.
"""
)
# seq 6: Bcc and custom header fields, one of them repeated and folded.
M6 = crlf(
    """From: Dave <dave@example.net>
To: bob@example.org
Bcc: Secret Agent <agent@example.com>
Subject: Hidden copy
Date: Fri, 05 Jan 2024 09:00:00 +0000
X-Mailer: CustomMailer 2.0
X-Tag: first
X-Tag: second
 folded-continuation
X-Empty:

Body of six.
"""
)
# seq 7: sent late on 1 Jan in its own zone (2 Jan in UTC).
M7 = crlf(
    """From: west@example.com
To: bob@example.org
Subject: Late night
Date: Mon, 1 Jan 2024 23:30:00 -0800

Written at night.
"""
)
# seq 8: a forwarded message/rfc822.
M8 = crlf(
    """From: fwd@example.com
To: bob@example.org
Subject: Fwd: inner
Date: Sat, 06 Jan 2024 10:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="B8"

--B8
Content-Type: text/plain

Forwarding this.
--B8
Content-Type: message/rfc822

From: Original Sender <orig@example.com>
Subject: Inner secret topic

Nested text body.
--B8--
"""
)
# seq 9: ISO-8859-1 8bit body, keyword "Work".
M9 = (
    b"From: paris@example.fr\r\nTo: bob@example.org\r\nSubject: Voyage\r\n"
    b"Date: Sun, 07 Jan 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\n"
    b"Une impression de d\xe9j\xe0 vu.\r\n"
)
# seq 10: a big one.
M10 = (
    crlf(
        """From: big@example.com
To: bob@example.org
Subject: Large
Date: Mon, 08 Jan 2024 10:00:00 +0000

"""
    )
    + b"filler line\r\n" * 500
    + b"needle at the end\r\n"
)

MESSAGES = [M1, M2, M3, M4, M5, M6, M7, M8, M9, M10]
UIDS = [3, 4, 7, 8, 9, 12, 20, 21, 30, 31]
NOW = datetime.datetime(2024, 1, 10, 12, 0, tzinfo=datetime.UTC).timestamp()


def ts(day: int, hour: int = 12, minute: int = 0) -> int:
    return int(datetime.datetime(2024, 1, day, hour, minute, tzinfo=datetime.UTC).timestamp())


# seq -> (flags, recent, internal_date, modseq)
STATE: dict[int, tuple[frozenset[str], bool, int, int]] = {
    1: (frozenset({"\\Seen", "\\Answered"}), False, ts(1, 0, 0), 10),
    2: (frozenset({"\\Flagged", "$Important"}), True, ts(2), 15),
    3: (frozenset({"\\Seen"}), True, ts(3, 23, 30), 20),
    4: (frozenset({"\\Deleted", "\\Seen"}), False, ts(4), 5),
    5: (frozenset({"\\Draft"}), True, ts(5), 30),
    6: (frozenset(), False, ts(6), 12),
    7: (frozenset({"\\Seen", "\\Flagged"}), False, ts(7), 40),
    8: (frozenset({"\\Seen"}), False, ts(8), 41),
    9: (frozenset({"Work", "\\Seen"}), False, ts(9, 23, 59), 42),
    10: (frozenset({"\\Seen"}), False, ts(10, 11, 0), 50),
}


@dataclass
class Box:
    candidates: list[Candidate]
    loads: Counter[int]


def make_box(load_factory: Callable[[int, bytes], Callable[[], bytes]] | None = None) -> Box:
    loads: Counter[int] = Counter()

    def counting(seq: int, data: bytes) -> Callable[[], bytes]:
        def load() -> bytes:
            loads[seq] += 1
            return data

        return load

    factory = load_factory or counting
    candidates = []
    for seq, data in enumerate(MESSAGES, 1):
        flags, recent, internal, modseq = STATE[seq]
        candidates.append(
            Candidate(
                seq=seq,
                uid=UIDS[seq - 1],
                flags=flags,
                recent=recent,
                internal_date=internal,
                size=len(data),
                modseq=modseq,
                summary=summarize(data),
                load=factory(seq, data),
                # rfc8474, rfc8514: saved a day after the internal date; the
                # save date of message 10 is not known (the internal date counts).
                objects=(f"M{seq}", f"T{(seq + 1) // 2}", None if seq == 10 else internal + 86_400),
            )
        )
    return Box(candidates, loads)


def run(
    key: SearchKey,
    box: Box | None = None,
    *,
    saved: Sequence[int] = (),
    now: float | None = NOW,
    tz: datetime.tzinfo = datetime.UTC,
) -> list[int]:
    box = box or make_box()
    found = evaluate(
        key, box.candidates, largest_seq=10, largest_uid=31, saved=saved, now=now, tz=tz
    )
    return [m.seq for m in found]


# -- key builders -----------------------------------------------------------


def k(op: str, *args: object) -> SearchKey:
    return SearchKey(op, tuple(args))


def d(day: int, month: int = 1, year: int = 2024) -> datetime.date:
    return datetime.date(year, month, day)


def AND(*keys: SearchKey) -> SearchKey:
    return SearchKey("AND", (tuple(keys),))


def OR(a: SearchKey, b: SearchKey) -> SearchKey:
    return SearchKey("OR", (a, b))


def NOT(a: SearchKey) -> SearchKey:
    return SearchKey("NOT", (a,))


def seqset(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


ALL10 = list(range(1, 11))

CASES: list[tuple[str, SearchKey, list[int]]] = [
    ("all", k("ALL"), ALL10),
    # flags
    ("answered", k("ANSWERED"), [1]),
    ("unanswered", k("UNANSWERED"), [2, 3, 4, 5, 6, 7, 8, 9, 10]),
    ("deleted", k("DELETED"), [4]),
    ("undeleted", k("UNDELETED"), [1, 2, 3, 5, 6, 7, 8, 9, 10]),
    ("draft", k("DRAFT"), [5]),
    ("undraft", k("UNDRAFT"), [1, 2, 3, 4, 6, 7, 8, 9, 10]),
    ("flagged", k("FLAGGED"), [2, 7]),
    ("unflagged", k("UNFLAGGED"), [1, 3, 4, 5, 6, 8, 9, 10]),
    ("seen", k("SEEN"), [1, 3, 4, 7, 8, 9, 10]),
    ("unseen", k("UNSEEN"), [2, 5, 6]),
    ("keyword-exact", k("KEYWORD", "$Important"), [2]),
    ("keyword-caseless", k("KEYWORD", "work"), [9]),
    ("keyword-absent", k("KEYWORD", "$Junk"), []),
    ("unkeyword", k("UNKEYWORD", "WORK"), [1, 2, 3, 4, 5, 6, 7, 8, 10]),
    # rfc3501 legacy keys
    ("recent", k("RECENT"), [2, 3, 5]),
    ("new", k("NEW"), [2, 5]),
    ("old", k("OLD"), [1, 4, 6, 7, 8, 9, 10]),
    # sizes (strict)
    ("larger", k("LARGER", len(M10) - 1), [10]),
    ("larger-strict", k("LARGER", len(M10)), []),
    ("smaller-strict", k("SMALLER", len(M5)), [i for i in ALL10 if len(MESSAGES[i - 1]) < len(M5)]),
    # internal date, calendar days in UTC
    ("before", k("BEFORE", d(3)), [1, 2]),
    ("on-midnight", k("ON", d(1)), [1]),
    ("on-late", k("ON", d(3)), [3]),
    ("on-none", k("ON", d(15)), []),
    ("since", k("SINCE", d(9)), [9, 10]),
    ("since-far-future", k("SINCE", d(1, 1, 9999)), []),
    ("before-far-past", k("BEFORE", d(1, 1, 1)), []),
    # sent date: the day written in Date:, no Date: never matches
    # save date (rfc8514:4.3), the internal date where it is not known
    ("savedbefore", k("SAVEDBEFORE", d(3)), [1]),
    ("savedon", k("SAVEDON", d(4)), [3]),
    ("savedon-unknown", k("SAVEDON", d(10)), [9, 10]),
    ("savedsince", k("SAVEDSINCE", d(10)), [9, 10]),
    ("savedatesupported", k("SAVEDATESUPPORTED"), ALL10),
    # object ids (rfc8474:6), case-sensitive
    ("emailid", k("EMAILID", "M3"), [3]),
    ("emailid-case", k("EMAILID", "m3"), []),
    ("threadid", k("THREADID", "T2"), [3, 4]),
    ("sentbefore", k("SENTBEFORE", d(3)), [1, 2, 7]),
    ("senton", k("SENTON", d(2)), [2]),
    ("senton-own-zone", k("SENTON", d(1)), [1, 7]),
    ("sentsince", k("SENTSINCE", d(7)), [9, 10]),
    ("not-senton-includes-undated", NOT(k("SENTON", d(2))), [1, 3, 4, 5, 6, 7, 8, 9, 10]),
    (
        "sentsince-past-excludes-undated",
        k("SENTSINCE", d(1, 1, 1990)),
        [1, 2, 3, 4, 6, 7, 8, 9, 10],
    ),
    # rfc5032 WITHIN, NOW is 10 Jan 12:00 UTC
    ("younger", k("YOUNGER", 3600), [10]),
    ("younger-day", k("YOUNGER", 86400 + 3600), [9, 10]),
    ("older", k("OLDER", 86400 * 8), [1]),
    # rfc7162 MODSEQ
    ("modseq", k("MODSEQ", None, None, 41), [8, 9, 10]),
    ("modseq-entry", k("MODSEQ", "/flags/\\draft", "all", 30), [5, 7, 8, 9, 10]),
    # sequence and UID sets
    ("seqset", k("SEQSET", seqset((2, 4), (9, 9))), [2, 3, 4, 9]),
    ("seqset-star", k("SEQSET", seqset((None, None))), [10]),
    ("seqset-reversed", k("SEQSET", seqset((9, None), (3, 1))), [1, 2, 3, 9, 10]),
    ("seqset-past-end", k("SEQSET", seqset((11, 20))), []),
    ("uid", k("UID", seqset((4, 8), (30, 30))), [2, 3, 4, 9]),
    ("uid-star", k("UID", seqset((21, None))), [8, 9, 10]),
    ("uid-beyond-star", k("UID", seqset((100, None))), [10]),
    ("uid-gaps", k("UID", seqset((5, 6), (13, 19))), []),
    # address and subject keys: full text, display names too, encoded words
    ("from-address", k("FROM", "alice@example.com"), [1]),
    ("from-display-name", k("FROM", "alice example"), [1]),
    ("from-encoded-name", k("FROM", "JÜRGEN MÜLLER"), [2]),
    ("from-domain", k("FROM", "example.net"), [4, 6]),
    ("from-angle", k("FROM", "Dave <dave@"), [6]),
    ("to", k("TO", "BOB@EXAMPLE.ORG"), [1, 4, 5, 6, 7, 8, 9, 10]),
    ("to-name", k("TO", "bob <"), [1]),
    ("to-group", k("TO", "friends: bob@example.org;"), [5]),
    ("cc-name", k("CC", "carol singer"), [2]),
    ("cc-second", k("CC", "dave@"), [2]),
    ("bcc", k("BCC", "secret agent"), [6]),
    ("subject-plain", k("SUBJECT", "REPORT"), [1]),
    ("subject-encoded", k("SUBJECT", "café crème"), [2]),
    ("subject-encoded-b", k("SUBJECT", "ÜBER"), [2]),
    ("subject-adjacent-words", k("SUBJECT", "crème and über"), [2]),
    ("subject-raw-not-matched", k("SUBJECT", "=?UTF-8?"), []),
    ("subject-empty", k("SUBJECT", ""), ALL10),
    # HEADER
    ("header-custom", k("HEADER", "X-Mailer", "custommailer"), [6]),
    ("header-name-case", k("HEADER", "x-MAILER", "2.0"), [6]),
    ("header-repeated-second", k("HEADER", "X-Tag", "second"), [6]),
    ("header-folded", k("HEADER", "X-Tag", "second folded"), [6]),
    ("header-exists", k("HEADER", "X-Tag", ""), [6]),
    ("header-exists-empty-value", k("HEADER", "X-Empty", ""), [6]),
    ("header-absent", k("HEADER", "X-Nothing", ""), []),
    ("header-date-exists", k("HEADER", "Date", ""), [1, 2, 3, 4, 6, 7, 8, 9, 10]),
    ("header-subject-decoded", k("HEADER", "Subject", "café"), [2]),
    ("header-message-id", k("HEADER", "Message-ID", "q1@EXAMPLE"), [1]),
    ("header-from-encoded", k("HEADER", "From", "jürgen"), [2]),
    ("header-content-type", k("HEADER", "Content-Type", "multipart/mixed"), [4, 8]),
    ("header-not-body", k("HEADER", "X-Mailer", "Body of six"), []),
    # BODY: decoded text parts only
    ("body-plain", k("BODY", "revenue"), [1]),
    ("body-qp-casefold", k("BODY", "GRÜSSE AUS MÜNCHEN"), [3]),
    ("body-qp-soft-break", k("BODY", "softbreak"), [3]),
    ("body-qp-raw-not-matched", k("BODY", "=C3=BC"), []),
    ("body-text-part", k("BODY", "see the attachment"), [4]),
    ("body-base64-attachment-skipped", k("BODY", "zebra"), []),
    ("body-raw-base64-skipped", k("BODY", ZEBRA_B64[:12]), []),
    ("body-base64-html-decoded", k("BODY", "tall giraffe, naïve"), [4]),
    ("body-preamble-skipped", k("BODY", "pelican"), []),
    ("body-epilogue-skipped", k("BODY", "walrus"), []),
    ("body-nested-message", k("BODY", "nested text body"), [8]),
    ("body-nested-header", k("BODY", "inner secret topic"), [8]),
    ("body-latin1", k("BODY", "DÉJÀ VU"), [9]),
    ("body-not-header", k("BODY", "Quarterly"), []),
    ("body-end-of-big", k("BODY", "needle at the end"), [10]),
    ("body-empty", k("BODY", ""), ALL10),
    # TEXT: header and body
    ("text-header", k("TEXT", "quarterly"), [1]),
    ("text-body", k("TEXT", "revenue went"), [1]),
    ("text-header-field-name", k("TEXT", "x-mailer: custom"), [6]),
    ("text-decoded-header", k("TEXT", "müller"), [2]),
    ("text-attachment-skipped", k("TEXT", "zebra"), []),
    # combinations
    ("and", AND(k("SEEN"), k("FLAGGED")), [7]),
    ("and-empty", AND(), ALL10),
    ("and-nested", AND(k("SEEN"), AND(k("SINCE", d(4)), k("BEFORE", d(9)))), [4, 7, 8]),
    ("or", OR(k("DRAFT"), k("DELETED")), [4, 5]),
    ("or-content", OR(k("BODY", "revenue"), k("SUBJECT", "voyage")), [1, 9]),
    ("not", NOT(k("SEEN")), [2, 5, 6]),
    ("not-not", NOT(NOT(k("DRAFT"))), [5]),
    ("not-or", NOT(OR(k("SEEN"), k("RECENT"))), [6]),
    ("or-not", OR(NOT(k("SEEN")), k("ANSWERED")), [1, 2, 5, 6]),
    (
        "deep",
        AND(
            OR(k("FROM", "carol"), OR(k("FROM", "bob"), k("FROM", "jm@"))),
            NOT(k("BODY", "short note")),
        ),
        [3, 4],
    ),
    ("and-content-flag", AND(k("BODY", "body"), k("UNSEEN")), [6]),
]


@pytest.mark.parametrize(
    ("key", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_search_key(key: SearchKey, expected: list[int]) -> None:
    box = make_box()
    assert run(key, box) == expected
    # rfc9051:6.4.4 NOT is the complement, whatever the key.
    assert run(NOT(key), box) == [i for i in ALL10 if i not in expected]
    # A message file is read at most once per evaluation.
    assert all(n <= 2 for n in box.loads.values())  # the two evaluations above


def test_case_table_covers_every_key() -> None:
    ops: set[str] = set()

    def walk(key: SearchKey) -> None:
        ops.add(key.op)
        for arg in key.args:
            if isinstance(arg, SearchKey):
                walk(arg)
            elif isinstance(arg, tuple):
                for sub in arg:
                    if isinstance(sub, SearchKey):
                        walk(sub)

    for _, key, _ in CASES:
        walk(key)
    # The ops of the table in the SearchKey docstring, the contract.
    doc = SearchKey.__doc__ or ""
    table = doc.split("ops and their args:", 1)[1].splitlines()
    documented = {op for line in table for op in re.findall(r"\b[A-Z]{2,}\b", line.split("(")[0])}
    assert len(documented) == 46
    assert set(documented) <= ops


def test_unknown_key_raises() -> None:
    with pytest.raises(ValueError, match="FOO"):
        run(k("FOO", "x"))


def test_internal_date_days_use_the_given_zone() -> None:
    # Message 3 arrived 3 Jan 23:30 UTC, which is 4 Jan in UTC+2 and still
    # 3 Jan in UTC-5; message 1 arrived at 00:00 UTC, 31 Dec in UTC-5.
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    minus5 = datetime.timezone(datetime.timedelta(hours=-5))
    assert run(k("ON", d(3)), tz=datetime.UTC) == [3]
    assert run(k("ON", d(4)), tz=plus2) == [3, 4]
    assert run(k("ON", d(3)), tz=minus5) == [3]
    assert run(k("ON", d(31, 12, 2023)), tz=minus5) == [1]
    assert run(k("BEFORE", d(1)), tz=minus5) == [1]
    assert run(k("SINCE", d(10)), tz=plus2) == [9, 10]


def test_sent_dates_ignore_the_search_zone() -> None:
    plus14 = datetime.timezone(datetime.timedelta(hours=14))
    assert run(k("SENTON", d(1)), tz=plus14) == [1, 7]


def test_within_uses_current_time_by_default() -> None:
    box = make_box()
    # All fixture messages are from January 2024, long before now.
    assert run(k("OLDER", 3600), box, now=None) == ALL10
    assert run(k("YOUNGER", 3600), box, now=None) == []


# -- "$" (rfc5182) ----------------------------------------------------------


def test_saved_result_in_sequence_and_uid_sets() -> None:
    saved = [7, 20, 31, 999]  # UIDs; 999 was expunged since
    dollar = SequenceSet(saved=True)
    assert run(k("SEQSET", dollar), saved=saved) == [3, 7, 10]
    assert run(k("UID", dollar), saved=saved) == [3, 7, 10]
    assert run(AND(k("SEQSET", dollar), k("FLAGGED")), saved=saved) == [7]
    assert run(OR(k("UID", dollar), k("DRAFT")), saved=saved) == [3, 5, 7, 10]


def test_saved_result_empty_matches_nothing() -> None:
    dollar = SequenceSet(saved=True)
    assert run(k("SEQSET", dollar)) == []
    assert run(NOT(k("UID", dollar))) == ALL10


# -- loading message files --------------------------------------------------


SUMMARY_ONLY = [
    k("ALL"),
    k("SEEN"),
    k("UNKEYWORD", "x"),
    k("NEW"),
    k("LARGER", 10),
    k("ON", d(3)),
    k("SENTSINCE", d(3)),
    k("OLDER", 10),
    k("MODSEQ", None, None, 3),
    k("UID", seqset((1, None))),
    k("SEQSET", SequenceSet(saved=True)),
    k("FROM", "alice"),
    k("TO", "bob"),
    k("CC", "carol"),
    k("BCC", "agent"),
    k("SUBJECT", "café"),
    k("HEADER", "Subject", "report"),
    k("HEADER", "date", ""),
    k("HEADER", "Message-Id", "q1"),
    k("HEADER", "In-Reply-To", ""),
    k("BODY", ""),
    k("TEXT", ""),
    NOT(OR(k("FROM", "x"), AND(k("SUBJECT", "y"), k("FLAGGED")))),
]


@pytest.mark.parametrize("key", SUMMARY_ONLY, ids=[key.op for key in SUMMARY_ONLY])
def test_summary_only_keys_never_load(key: SearchKey) -> None:
    def refusing(seq: int, data: bytes) -> Callable[[], bytes]:
        def load() -> bytes:
            raise AssertionError(f"message {seq} was loaded for {key}")

        return load

    assert not needs_content(key)
    run(key, make_box(refusing))  # raises if any file is read


@pytest.mark.parametrize(
    "key",
    [
        k("BODY", "x"),
        k("TEXT", "x"),
        k("HEADER", "X-Mailer", ""),
        k("HEADER", "Reply-To", "x"),
        NOT(k("BODY", "x")),
        OR(k("SEEN"), k("TEXT", "x")),
        AND(k("SEEN"), k("HEADER", "Received", "x")),
    ],
)
def test_needs_content(key: SearchKey) -> None:
    assert needs_content(key)


def test_each_file_is_loaded_once_for_many_content_keys() -> None:
    box = make_box()
    key = AND(
        k("TEXT", "e"),
        k("BODY", "e"),
        k("HEADER", "X-Anything", ""),
        OR(k("BODY", "zzz"), k("HEADER", "Received", "zzz")),
    )
    assert run(key, box) == []
    assert box.loads == Counter(dict.fromkeys(ALL10, 1))


def test_content_keys_run_after_cheap_keys() -> None:
    box = make_box()
    # Only the three unseen messages need their file read, in either order.
    assert run(AND(k("BODY", "o"), k("UNSEEN")), box) == [2, 5, 6]
    assert set(box.loads) == {2, 5, 6}
    box = make_box()
    assert run(OR(k("BODY", "revenue"), k("SEEN")), box) == [1, 3, 4, 7, 8, 9, 10]
    assert set(box.loads) == {2, 5, 6}


def test_unreadable_file_does_not_match_content_keys() -> None:
    def missing(seq: int, data: bytes) -> Callable[[], bytes]:
        def load() -> bytes:
            if seq == 1:
                raise FileNotFoundError("gone")
            return data

        return load

    box = make_box(missing)
    assert run(k("BODY", "please"), box) == []
    assert run(k("TEXT", "quarterly"), box) == []
    assert run(k("SUBJECT", "report"), box) == [1]
    assert run(k("BODY", "revenue")) == [1]  # with the file there


def test_scan_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert search.MAX_SCAN >= 1024 * 1024
    assert run(k("BODY", "needle at the end")) == [10]
    monkeypatch.setattr(searchtext, "MAX_SCAN", 2000)
    assert run(k("BODY", "needle at the end")) == []
    assert run(k("BODY", "filler line")) == [10]  # the start is still scanned


def test_scan_cap_spans_all_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = "".join(
        f"--P\nContent-Type: text/plain\n\n{word} " + "x" * 1000 + "\n"
        for word in ("alpha", "bravo", "charlie")
    )
    data = crlf(f"Subject: parts\nContent-Type: multipart/mixed; boundary=P\n\n{parts}--P--\n")
    candidate = Candidate(1, 1, frozenset(), False, 0, len(data), 1, summarize(data), lambda: data)
    monkeypatch.setattr(searchtext, "MAX_SCAN", 2000)

    def found(word: str) -> bool:
        return bool(evaluate(k("BODY", word), [candidate], largest_seq=1, largest_uid=1))

    assert found("alpha")
    assert found("bravo")
    assert not found("charlie")  # the third part starts past 2000 bytes of parts


def test_results_come_in_mailbox_order() -> None:
    box = make_box()
    box.candidates.reverse()
    assert run(k("SEEN"), box) == [1, 3, 4, 7, 8, 9, 10]


def test_large_mailbox_flag_search_reads_no_file() -> None:
    """Flag, size and UID keys over 100,000 messages come from the columns:
    every result is right and no message file is opened (the time it takes
    is measured by bench/search_flags.py, not asserted here)."""
    summary = summarize(M1)

    def refuse() -> bytes:
        raise AssertionError("loaded")

    candidates = [
        Candidate(
            seq=i,
            uid=i * 2,
            flags=frozenset({"\\Seen", "Work"} if i % 3 else {"$Junk"}),
            recent=False,
            internal_date=1_700_000_000 + i,
            size=1000 + i,
            modseq=i,
            summary=summary,
            load=refuse,
        )
        for i in range(1, 100_001)
    ]
    tests = [
        (k("UNSEEN"), [i for i in range(1, 100_001) if i % 3 == 0]),
        (k("KEYWORD", "work"), [i for i in range(1, 100_001) if i % 3]),
        (AND(k("SEEN"), k("LARGER", 50_000)), [i for i in range(49_001, 100_001) if i % 3]),
        (
            k("UID", seqset((2, 10), (199_990, None))),
            [1, 2, 3, 4, 5, 99_995, 99_996, 99_997, 99_998, 99_999, 100_000],
        ),
    ]
    for key, expected in tests:
        found = evaluate(key, candidates, largest_seq=100_000, largest_uid=200_000)
        assert [m.seq for m in found] == expected, key


# -- responses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ([], ""),
        ([7], "7"),
        ([1, 2], "1:2"),
        ([2, 5, 6, 7, 8, 9, 47], "2,5:9,47"),
        ([1, 3, 5], "1,3,5"),
        ([1, 2, 3, 4], "1:4"),
        ([3, 3, 4, 4, 5], "3:5"),
        ([9, 10, 1, 2], "9:10,1:2"),  # order kept, as COPYUID needs
        ([4294967294, 4294967295], "4294967294:4294967295"),
    ],
)
def test_compress(numbers: list[int], expected: str) -> None:
    assert compress(numbers) == expected


def test_render_search() -> None:
    assert render_search([2, 5, 7], modseq=None) == b"SEARCH 2 5 7"
    assert render_search([], modseq=None) == b"SEARCH"
    # rfc7162:3.1.5
    assert render_search([2, 5, 7], modseq=917) == b"SEARCH 2 5 7 (MODSEQ 917)"
    assert render_search([], modseq=917) == b"SEARCH"


def test_render_esearch_all_options() -> None:
    results = [2, 5, 6, 7, 8, 9, 47, 10]
    got = render_esearch("A282", results, ["MIN", "MAX", "COUNT", "ALL"], uid=True, modseq=None)
    assert got == b'ESEARCH (TAG "A282") UID MIN 2 MAX 47 COUNT 8 ALL 2,5:10,47'


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["MIN", "COUNT"], b'ESEARCH (TAG "A1") MIN 2 COUNT 3'),
        (["max"], b'ESEARCH (TAG "A1") MAX 11'),
        (["count"], b'ESEARCH (TAG "A1") COUNT 3'),
        ([], b'ESEARCH (TAG "A1") ALL 2,10:11'),  # RETURN ()
        (["ALL"], b'ESEARCH (TAG "A1") ALL 2,10:11'),
        (["SAVE", "MIN"], b'ESEARCH (TAG "A1") MIN 2'),
    ],
)
def test_render_esearch_options(options: list[str], expected: bytes) -> None:
    assert render_esearch("A1", [2, 10, 11], options, uid=False, modseq=None) == expected


def test_render_esearch_empty_result() -> None:
    # rfc4731:3.1: no MIN/MAX/ALL when nothing matched, but COUNT 0 and the
    # response itself are still sent.
    got = render_esearch("T", [], ["MIN", "MAX", "COUNT", "ALL"], uid=True, modseq=12)
    assert got == b'ESEARCH (TAG "T") UID COUNT 0'
    assert render_esearch("T", [], [], uid=False, modseq=None) == b'ESEARCH (TAG "T")'


def test_render_esearch_modseq() -> None:
    # rfc4731:3.2
    got = render_esearch("a1", [2, 3], ["MIN"], uid=False, modseq=917162488)
    assert got == b'ESEARCH (TAG "a1") MIN 2 MODSEQ 917162488'


def test_render_esearch_quotes_tag() -> None:
    assert render_esearch('a"b\\', [1], [], uid=False, modseq=None) == (
        b'ESEARCH (TAG "a\\"b\\\\") ALL 1'
    )


def test_response_modseq() -> None:
    box = make_box()
    matched = [box.candidates[i - 1] for i in (1, 2, 7, 9)]  # modseqs 10 15 40 42
    low = [box.candidates[i - 1] for i in (5, 6, 8)]  # modseqs 30 12 41
    assert response_modseq(matched, None) == 42
    assert response_modseq(matched, []) == 42
    assert response_modseq(matched, ["MIN"]) == 10
    assert response_modseq(matched, ["max"]) == 42
    assert response_modseq(low, ["MIN"]) == 30
    assert response_modseq(low, ["MIN", "MAX"]) == 41
    assert response_modseq(low, ["MAX"]) == 41
    assert response_modseq(low, ["MIN", "COUNT"]) == 41
    assert response_modseq([], ["ALL"]) is None


def test_search_program_end_to_end_modseq() -> None:
    box = make_box()
    key = AND(k("MODSEQ", None, None, 20), k("SEEN"))
    matched = evaluate(key, box.candidates, largest_seq=10, largest_uid=31)
    numbers = [m.uid for m in matched]
    assert numbers == [7, 20, 21, 30, 31]
    line = render_search(numbers, modseq=response_modseq(matched, None))
    assert line == b"SEARCH 7 20 21 30 31 (MODSEQ 50)"
