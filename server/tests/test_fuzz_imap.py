"""Property tests of the IMAP command parser and of what IMAP serialises.

* Any bytes, fed in any pieces, give only events (commands, continuation
  requests, BAD with one printable line, raw lines): never an exception,
  never the parser's "Internal error" (a caught bug), and the same events
  whatever the pieces.
* What the server writes reads back as what it meant: strings
  (``imap_string``) and mailbox names (modified UTF-7) through the real
  command parser, sequence sets (``compress``), and FETCH section names
  (``Section.spec``) through a reader of the response grammar.

The profile (examples, derandomization) comes from _fuzz: ESTAFETA_FUZZ=long
runs a hundred times more examples.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import _fuzz
from _fuzz import IMAP_CORPUS, IMAP_TOKENS, cuts, imap_events, mutated, split
from estafeta.imap import commands as c
from estafeta.imap.fetch import MessageData, render_items
from estafeta.imap.parser import Command, Continue, ParseError, decode_mutf7, encode_mutf7
from estafeta.imap.search import compress
from estafeta.imap.types import FetchAtt, Section, astring
from estafeta.message import imap_string, summarize

options = st.fixed_dictionaries(
    {
        "authenticated": st.booleans(),
        "utf8": st.booleans(),
        "literal_plus": st.booleans(),
    },
    optional={
        "max_line": st.integers(8, 300),
        "max_literal": st.integers(0, 5000),
        "max_depth": st.integers(0, 5),
    },
)


def same_in_pieces(data: bytes, pieces: list[int], opts: dict[str, Any]) -> None:
    whole = imap_events([data], **opts)
    assert imap_events(split(data, pieces), **opts) == whole


@given(st.binary(max_size=500), cuts, options)
def test_random_bytes(data: bytes, pieces: list[int], opts: dict[str, Any]) -> None:
    same_in_pieces(data, pieces, opts)


@given(mutated(IMAP_CORPUS, IMAP_TOKENS), cuts, options)
def test_mutated_commands(data: bytes, pieces: list[int], opts: dict[str, Any]) -> None:
    same_in_pieces(data, pieces, opts)


@given(st.randoms(use_true_random=False), cuts, options)
def test_random_mutations(rng: Any, pieces: list[int], opts: dict[str, Any]) -> None:
    # The mutator of the long run (bench/fuzz.py), under Hypothesis.
    same_in_pieces(_fuzz.fuzz_input(rng, IMAP_CORPUS, IMAP_TOKENS), pieces, opts)


nesting = st.sampled_from([b"(", b")", b"OR ", b"NOT ", b"ALL ", b"ALL", b" "])


@given(st.lists(nesting, max_size=400), st.booleans(), cuts)
def test_unbalanced_search_nesting(tokens: list[bytes], uid: bool, pieces: list[int]) -> None:
    data = b"a " + b"UID " * uid + b"SEARCH " + b"".join(tokens) + b"\r\n"
    same_in_pieces(data, pieces, {"authenticated": True})


literal = st.tuples(
    st.sampled_from([b"", b"~"]),
    st.sampled_from([0, 1, 5, 4096, 4097, 65536, 65537, 2**31, 2**32, 2**64, 10**30]),
    st.sampled_from([b"", b"+"]),
    st.binary(max_size=20),
)


@given(st.lists(literal, min_size=1, max_size=4), options, cuts)
def test_literals_of_any_size(
    literals: list[tuple[bytes, int, bytes, bytes]], opts: dict[str, Any], pieces: list[int]
) -> None:
    data = b"a APPEND INBOX "
    for tilde, size, plus, content in literals:
        data += tilde + b"{%d%s}\r\n" % (size, plus) + content + b" "
    data += b"\r\nb NOOP\r\n"
    same_in_pieces(data, pieces, opts)


# -- round trips -----------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=80)


def only_command(data: bytes, **opts: Any) -> Command:
    events = [e for e in imap_events([data], **opts) if not isinstance(e, Continue)]
    assert len(events) == 1 and isinstance(events[0], Command), events
    return events[0]


@given(text, text)
def test_imap_string_reads_back(user: str, password: str) -> None:
    # imap_string picks quoted or literal; the parser must read back the text.
    data = b"a LOGIN " + imap_string(user) + b" " + imap_string(password) + b"\r\n"
    assert only_command(data).args == c.Login(user, password)


@given(text)
def test_mutf7_round_trip(name: str) -> None:
    encoded = encode_mutf7(name)
    assert encoded.isascii() and all(" " <= ch <= "~" for ch in encoded)
    assert decode_mutf7(encoded) == name


@given(st.text(max_size=40))
def test_mutf7_decoder_takes_anything(name: str) -> None:
    try:
        decoded = decode_mutf7(name)
    except ValueError:
        return
    assert decode_mutf7(encode_mutf7(decoded)) == decoded


@given(text.filter(bool), st.booleans())
def test_mailbox_names_read_back(name: str, utf8: bool) -> None:
    # What Session.mailbox_name writes, read by SELECT.
    wire = imap_string(name if utf8 else encode_mutf7(name))
    command = only_command(b"a SELECT " + wire + b"\r\n", authenticated=True, utf8=utf8)
    assert isinstance(command.args, c.Select)
    assert command.args.mailbox == ("INBOX" if name.upper() == "INBOX" else name)


@given(st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=50))
def test_compressed_sets_read_back(numbers: list[int]) -> None:
    command = only_command(b"a UID FETCH " + compress(sorted(set(numbers))).encode() + b" UID\r\n")
    assert isinstance(command.args, c.Fetch)
    assert set(command.args.sequence_set.iter(2**32 - 1)) == set(numbers)


field_name = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00\r\n"), max_size=12
)


@given(st.lists(st.integers(1, 9), max_size=3), st.lists(field_name, min_size=1, max_size=4))
def test_section_spec_reads_back(part: list[int], fields: list[str]) -> None:
    """A HEADER.FIELDS section with any field names, as the client may send
    them (quoted or literal), comes back in the FETCH response as the same
    astrings."""
    names = b" ".join(imap_string(f) for f in fields)
    prefix = b".".join(b"%d" % p for p in part) + b"." * bool(part)
    command = only_command(
        b"a FETCH 1 (BODY.PEEK[" + prefix + b"HEADER.FIELDS (" + names + b")])\r\n",
        authenticated=True,
    )
    assert isinstance(command.args, c.Fetch)
    (att,) = command.args.atts
    assert att.section is not None
    message = b"Subject: hi\r\nX: y\r\n\r\nbody\r\n"
    data = MessageData(1, (), 0, len(message), 1, summarize(message), lambda: message)
    rendered = render_items(data, command.args.atts, imap4rev2=True)
    items = _fuzz.read_fetch_items(rendered)
    _fuzz.check_fetch_items(items, command.args.atts)
    ((_, section, _),) = items
    assert section is not None and tuple(f.decode() for f in section[1]) == att.section.fields


# -- regressions found by fuzzing ---------------------------------------------------------


def test_section_spec_quotes_field_names() -> None:
    # "A B" and "]" were written bare: BODY[HEADER.FIELDS (A B ])] reads as
    # three fields and a section that ends early.
    section = Section((), "HEADER.FIELDS", ("A B", "]", "", 'Q"\\', "É", "X-OK"))
    assert section.spec() == 'HEADER.FIELDS ("A B" "]" "" "Q\\"\\\\" {2}\r\nÉ X-OK)'
    assert astring("Subject") == "Subject"
    message = b"Subject: hi\r\n\r\n"
    data = MessageData(1, (), 0, len(message), 1, summarize(message), lambda: message)
    att = FetchAtt("BODY[]", section, peek=True)
    assert render_items(data, [att], imap4rev2=True).startswith(
        b'BODY[HEADER.FIELDS ("A B" "]" "" "Q\\"\\\\" {2}\r\n\xc3\x89 X-OK)] '
    )


def test_bad_text_is_printable() -> None:
    # (SELECT "\x01" is a name, only not valid mUTF-7: parser.UnencodedName.)
    events = imap_events([b'a SELECT "\x01\r\nb FROB\xff\x00\r\n'], authenticated=True)
    assert len(events) == 2 and all(isinstance(e, ParseError) for e in events)
    assert all(e.text.isprintable() for e in events)  # type: ignore[union-attr]
