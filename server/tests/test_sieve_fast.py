"""sieve.fast: tests compiled to closures behave exactly as the interpreter's
``conditions.evaluate`` -- same answer, same steps charged, same runtime
error at the same limit, same match variables -- for every shape they take
over; and the inline budget of ``run(..., inline=True)`` (issue 15,
acceptance 6: a 50-rule script must cost little of P1 throughput).

Also the shortcuts under them: the simple-address form of
``parse_address_list`` and the lazy ``Header``."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import regex  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from estafeta.message.structure import header_fields, header_spans
from estafeta.sieve import (
    Context,
    Envelope,
    Limits,
    NeedsWorker,
    compile_script,
    inline_safe,
    run,
)
from estafeta.sieve.conditions import evaluate
from estafeta.sieve.fast import build
from estafeta.sieve.match import literal_absent, required_literal
from estafeta.sieve.message import (
    Header,
    parse_address_list,
    parse_address_list_fully,
    split_header,
)
from estafeta.sieve.signatures import Compiled, Node
from estafeta.sieve.state import Frame, Run, ScriptError

REQUIRE = (
    'require ["envelope", "regex", "variables", "relational", "subaddress", "index", '
    '"comparator-i;ascii-numeric", "fileinto"];\n'
)

MESSAGES = [
    (
        b"Received: from a.example by b.example;\r\n\tTue, 1 Apr 1997 09:06:31 -0800\r\n"
        b"From: Alice Example <Alice+Lists@Example.COM>\r\n"
        b'To: me@example.org, "Bob, B." <bob@example.net>, undisclosed:;\r\n'
        b"Cc: Friends: carol@example.net, dave@example.net;\r\n"
        b"Subject: =?UTF-8?Q?[acme-users]_caf=C3=A9?= ticket 42\r\n"
        b"List-Id: ACME users <acme-users.lists.example.org>\r\n"
        b"X-Priority: 3\r\nX-Priority: 1\r\n"
        b"Sender: no-domain\r\n"
        b"\r\nHello.\r\n"
    ),
    b"From: x@y\r\nSubject: \xe9t\xe9 latin-1\r\nTo: <a.b@c.d>\r\n\r\n",
    b"Subject: no blank line, no body",
    b"",
]

ENVELOPES = [
    Envelope("Alice+Lists@Example.COM", "me+tag@example.org", auth="alice@example.com"),
    Envelope("", "me@example.org"),
    Envelope("<@route.example:bounce@lists.example.org>", "nodomain"),
]

TESTS = [
    "true",
    "false",
    'exists ["from", "subject"]',
    'exists ["from", "bad name"]',
    'exists "x-missing"',
    "size :over 100",
    "size :under 1K",
    'not header :contains "subject" "acme"',
    'allof (header :contains "subject" "acme", not exists "x-missing")',
    'anyof (false, header :is "x-priority" "1", header :is "x-priority" "3")',
    'header :contains "List-Id" ["other", "ACME-USERS.lists"]',
    'header :comparator "i;octet" :contains "list-id" "ACME"',
    'header :is "subject" "[acme-users] café ticket 42"',
    'header :comparator "i;octet" :is "Subject" "[ACME-users] café ticket 42"',
    'header :matches "subject" "*[acme-users]*ticket ??"',
    'header :matches ["to", "cc"] "*, *"',
    'header :matches "subject" "*ticket 42"',
    'header :matches "subject" "*TICKET*"',
    'header :matches "x-priority" ["3", "1"]',
    'header :matches "list-id" "acme*"',
    'header :comparator "i;octet" :matches "from" "*Example.com*"',
    'header :regex "subject" "ticket ([0-9]+)$"',
    'header :regex :comparator "i;octet" "subject" "^\\\\[ACME"',
    'header :contains ["bad name", "subject"] "caf"',
    'header :is :index 2 "x-priority" "1"',
    'header :value "gt" :comparator "i;ascii-numeric" "x-priority" "2"',
    'header :count "ge" :comparator "i;ascii-numeric" "x-priority" "2"',
    'address :is :domain "from" "example.com"',
    'address :is :domain ["from", "to"] ["nowhere.test", "example.net", "c.d"]',
    'address :comparator "i;octet" :is :domain ["from", "to"] ["example.net", "C.D"]',
    'address :is :localpart "from" "alice+lists"',
    'address :is :user "from" "alice"',
    'address :is :detail "from" "lists"',
    'address :contains :all ["to", "cc", "subject"] "example.net"',
    'address :matches :domain ["to", "cc", "sender"] "*.net"',
    'address :comparator "i;octet" :is :all "from" "Alice+Lists@Example.COM"',
    'address :regex :domain "to" "^(c|example)\\\\.(d|org)$"',
    'address :is :all "sender" "no-domain"',
    'address :is :domain "sender" ""',
    'envelope :is :domain "from" "example.com"',
    'envelope :is :all "from" ""',
    'envelope :matches "to" "me+*@*"',
    'envelope :is :detail "to" "tag"',
    'envelope :contains ["auth", "from"] "alice"',
    'envelope :regex :localpart "from" "^(bounce|alice)"',
    'envelope :count "eq" :comparator "i;ascii-numeric" "from" "1"',
]


def _outcome(fn: Callable[[Run, Frame], bool], script: Compiled, ctx: Context, limits: Limits,
             repeat: int) -> list[object]:  # fmt: skip
    """What a test does when evaluated ``repeat`` times in one run."""
    state, frame = Run(ctx, limits), Frame(script)
    seen: list[object] = []
    for _ in range(repeat):
        try:
            seen.append(fn(state, frame))
        except ScriptError as exc:
            seen.append(("error", exc.pos, exc.message))
            break
        seen.append((state.steps, list(frame.matches)))
    return seen


def _node(test: str, variables: bool = True) -> tuple[Compiled, Node]:
    require = REQUIRE if variables else REQUIRE.replace('"variables", ', "")
    script = compile_script(require + f"if {test} {{ keep; }}\n")
    return script, script.commands[-1].tests[0]


@pytest.mark.parametrize("variables", [True, False], ids=["variables", "no-variables"])
@pytest.mark.parametrize("test", TESTS)
def test_a_compiled_test_does_what_evaluate_does(test: str, variables: bool) -> None:
    # Without "variables" no match variable is set, and :matches may take
    # its shortcut (a bytes operation instead of the glob).
    script, node = _node(test, variables)
    fast = build(node)

    def slow(state: Run, frame: Frame) -> bool:
        return evaluate(state, frame, node)

    for message, envelope in itertools.product(MESSAGES, ENVELOPES):
        ctx = Context(message=message, envelope=envelope, account="me@example.org")
        # Every budget from "not even the first step" to plenty: the same
        # error at the same place, or the same answer after the same steps.
        for max_steps in (*range(0, 12), 100_000):
            limits = Limits(max_steps=max_steps)
            assert _outcome(fast, script, ctx, limits, 3) == _outcome(
                slow, script, ctx, limits, 3
            ), (test, message[:40], envelope, max_steps)


def test_the_shapes_above_are_mostly_compiled() -> None:
    # The comparison above is worth something only if most shapes take the
    # compiled path (a generic closure would compare evaluate with itself).
    generic = [t for t in TESTS if build(_node(t)[1]).__qualname__.startswith("_generic")]
    assert generic == [
        'header :is :index 2 "x-priority" "1"',
        'header :value "gt" :comparator "i;ascii-numeric" "x-priority" "2"',
        'header :count "ge" :comparator "i;ascii-numeric" "x-priority" "2"',
        'envelope :count "eq" :comparator "i;ascii-numeric" "from" "1"',
    ]


def test_variables_in_a_test_take_the_interpreter() -> None:
    script = compile_script(
        REQUIRE + 'set "n" "subject";\nif header :contains "${n}" "acme" { keep; }\n'
    )
    node = script.commands[-1].tests[0]
    assert build(node).__qualname__.startswith("_generic")
    ctx = Context(message=MESSAGES[0], envelope=ENVELOPES[0], account="me@example.org")
    assert run([script], ctx).errors == []


def test_edited_header_is_read_again() -> None:
    # The prepared values are tied to the header's version (rfc5293:7: tests
    # after an edit see it).
    script = compile_script(
        'require ["editheader", "fileinto"];\n'
        'if header :is "x-tag" "one" { fileinto "before"; }\n'
        'addheader "X-Tag" "one";\n'
        'if header :is "x-tag" "one" { fileinto "after"; }\n'
        'deleteheader "x-tag";\n'
        'if not header :is "x-tag" "one" { fileinto "deleted"; }\n'
    )
    ctx = Context(message=MESSAGES[0], envelope=ENVELOPES[0], account="me@example.org")
    result = run([script], ctx)
    assert [getattr(a, "mailbox", None) for a in result.actions] == ["after", "deleted"]


# -- the inline budget ---------------------------------------------------------


def _rules(count: int) -> str:
    return REQUIRE + "".join(
        f'if header :contains "subject" "nothing-{n}" {{ fileinto "r{n}"; }}\n'
        for n in range(count)
    )


def test_inline_safe_is_about_io() -> None:
    assert inline_safe([compile_script(_rules(3))])
    for script in (
        'require "vacation";\nvacation "away";\n',
        'require "duplicate";\nif duplicate { discard; }\n',
        'require "include";\ninclude "other";\n',
        'require "mailbox";\nif mailboxexists "x" { keep; }\n',
        'require "body";\nif body :contains "x" { discard; }\n',
    ):
        assert not inline_safe([compile_script(_rules(1)), compile_script(script)])


def test_an_inline_run_past_its_budget_asks_for_a_worker() -> None:
    ctx = Context(message=MESSAGES[0], envelope=ENVELOPES[0], account="me@example.org")
    small = [compile_script(_rules(50))]
    big = [compile_script(_rules(600))]  # two steps per rule: past 1,000
    assert run(small, ctx, inline=True) == run(small, ctx)
    with pytest.raises(NeedsWorker):
        run(big, ctx, inline=True)
    full = run(big, ctx)
    assert full.errors == [] and len(full.actions) == 1
    # Past the real limit too: the real limit's runtime error, inline or not.
    limits = Limits(max_steps=40)
    assert run(big, ctx, limits, inline=True) == run(big, ctx, limits)
    assert "more than 40 steps" in run(big, ctx, limits).errors[0]


def test_an_inline_regex_past_its_budget_asks_for_a_worker() -> None:
    ctx = Context(message=MESSAGES[0], envelope=ENVELOPES[0], account="me@example.org")
    scripts = [compile_script(REQUIRE + 'if header :regex "subject" "t(i)cket" { keep; }\n')]
    with pytest.raises(NeedsWorker):
        run(scripts, ctx, Limits(inline_regex=0.0), inline=True)
    assert run(scripts, ctx, Limits(inline_regex=0.0)).errors == []


# -- the shortcuts -------------------------------------------------------------

_ATEXT = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)
_DOT_ATOM = st.lists(_ATEXT, min_size=1, max_size=3).map(".".join)
_SIMPLE = st.one_of(
    st.builds(lambda a, b: f"{a}@{b}", _DOT_ATOM, _DOT_ATOM),
    st.builds(
        lambda words, sep, a, b: sep.join(words) + f"{sep}<{a}@{b}>",
        st.lists(_ATEXT, max_size=3),
        st.sampled_from([" ", "  ", "\t", ""]),
        _DOT_ATOM,
        _DOT_ATOM,
    ),
)
# Near misses the shortcut must leave to the parser (or read the same).
_ANY = st.text(alphabet='ab.@<> \t",;:()[]\\é', max_size=24)


@given(st.one_of(_SIMPLE, _ANY))
def test_the_simple_address_shortcut_reads_as_the_parser(text: str) -> None:
    assert parse_address_list(text) == parse_address_list_fully(text)


@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [b"Subject: x\r\n", b"From: a@b\r\n", b" folded\r\n", b"\tmore\n", b"X-A : y\r\n",
                 b"\r\n", b"body line\r\n", b"no colon\r\n", b"To:\r\n", b"Bad Name: z\r\n"]
            ),
            st.binary(max_size=12),
        ),
        max_size=10,
    ).map(b"".join)
)  # fmt: skip
def test_the_lazy_header_holds_the_fields_header_fields_finds(data: bytes) -> None:
    header = Header.parse(data)
    expected = header_fields(data)
    # Asked by name first (fields made one name at a time), then in order.
    for name in {name for name, _ in expected}:
        assert [f.value for f in header.named(name.upper())] == [
            value for n, value in expected if n == name
        ]
    fields = header.fields
    assert [(f.name, f.value) for f in fields] == expected
    assert b"".join(f.raw for f in fields) + data[header.end :] == data
    for name in {name for name, _ in expected}:
        assert all(any(f is g for g in fields) for f in header.named(name))


# -- the :regex literal shortcut ---------------------------------------------

_PATTERN_PIECES = st.sampled_from(
    ["a", "b", "K", "k", "s", " ", "-", "@", ".", "\\.", "\\[", "\\]", "\\\\", "*", "+", "?",
     "{2}", "{e<=1}", "[ab]", "[[:alpha:]]", "(", ")", "(?i)", "|", "^", "$", "\\b", "\\d",
     "\\w", "x"]
)  # fmt: skip
_TEXT = st.text(alphabet="abKksS\u212a\u017f -@.[]\\x1ﬀ", max_size=16)


@settings(max_examples=2000)
@given(st.lists(_PATTERN_PIECES, max_size=8).map("".join), _TEXT, st.booleans())
def test_the_regex_literal_shortcut_never_hides_a_match(
    pattern: str, text: str, fold: bool
) -> None:
    literal = required_literal(pattern)
    if literal is None or not literal_absent(literal, text, fold):
        return
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE if fold else 0)
    except regex.error:
        return  # Run.regex reports it before looking for the literal
    assert compiled.search(text) is None, (pattern, text, fold, literal)


def test_the_regex_literal_shortcut_takes_what_it_can() -> None:
    assert required_literal("^\\[ticket-3\\] [0-9]+$") == "[ticket-3] "
    assert required_literal("abc?") == "ab"
    assert required_literal("foo\\.bar") == "foo.bar"
    assert required_literal("a|b") is None
    assert required_literal("(?i)abc") is None
    assert required_literal("[[:alpha:]]x") is None
    # Case-insensitive: decided on ASCII text only (the package folds U+017F
    # LATIN SMALL LETTER LONG S to "s", str.lower() does not).
    assert regex.search("s", "\u017f", regex.IGNORECASE)
    assert literal_absent("s", "abc", True)
    assert not literal_absent("s", "\u017f", True)
    assert literal_absent("K", "k", False)


_HEADER_LINES = st.sampled_from(
    [b"Subject: x\r\n", b"From: a@b\r\n", b" folded\r\n", b"\tmore\r\n", b"X-A : y\r\n",
     b"\r\n", b"To:\r\n", b"Bad Name: z\r\n", b"A: b\r\r\n", b"A: bare\n", b"\n",
     b"no colon\r\n", b"K: \xff\r\n", b"body\r\n"]
)  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(st.one_of(_HEADER_LINES, st.binary(max_size=6)), max_size=12).map(b"".join))
def test_the_header_shortcut_splits_as_header_spans(data: bytes) -> None:
    assert split_header(data) == header_spans(data)
