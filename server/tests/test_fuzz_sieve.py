"""Property tests of the Sieve parser (estafeta.sieve.parser).

Invariants, for any bytes:

* ``parse`` returns a Script or raises SieveError, nothing else (no
  RecursionError, no UnicodeError, no IndexError...); the error's line and
  column point into the input and its message is one short line;
* a tree stays within the parser's limits (nesting, nodes, list length);
* round trip: ``serialize`` (below, test code only) writes a tree back as
  Sieve text, and parsing that text gives the same tree, positions aside;
* the same script with LF or with CRLF line breaks gives the same outcome:
  the same tree (positions included) or the same error at the same place.

Trees built by Hypothesis go through the same round trip, with and without
"encoded-character" (which lets a string hold any character).

``sieve_case(rng)`` is the driver of the long fuzz run (bench/fuzz.py).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from _fuzz import Crash, fuzz_input, mutated
from estafeta.sieve import SieveError, ast, parse
from estafeta.sieve.parser import ENCODED_CHARACTER, MAX_DEPTH, MAX_LIST_ITEMS, MAX_NODES

CORPUS: list[bytes] = [
    s.encode()
    for s in (
        'require ["fileinto", "envelope"];\nif header :contains "from" "coyote" {\n'
        '   discard;\n} elsif header :contains ["subject"] ["$$$"] {\n   discard;\n'
        '} else {\n   fileinto "INBOX";\n}\n',
        "if size :over 100K { /* this is a comment\n   this is still a comment */ discard"
        " /* this is a comment\n   */ ;\n}\n",
        'if anyof (not exists ["From", "Date"],\n      header :contains "from" '
        '"fool@example.com") {\n   discard;\n}\n',
        'require "encoded-character";\nif header :contains "Subject" "$${hex:24 24}" {\n'
        '   discard;\n}\nkeep "${unicode: 263a 1F600}${hex:c3 a9}${hex:4${hex:30}}";\n',
        'require "vacation";\nvacation :days 7 :subject "Away" text: # the body\n'
        "I'm away.\n..dotted\n.not stuffed\n.\n;\n",
        'if address :DOMAIN :is ["From", "To"] "example.com" { keep; }\n'
        'elsif allof (true, not false, size :under 1M) { stop; } else { redirect "a@b"; }\n',
        'keep "esc\\"aped \\\\ back\\slash\nmulti\r\nline";\n# comment at the end',
        "if true {\n  if true {\n    if not not true { keep; }\n  }\n}\n",
        'x :a 1 2K 3m 4G "s" ["l1", "l2"] y :b (z, w "q");\n',
        'require "encoded-character";\nkeep text:\n${hex:40} and ${unicode:\n41}\n.\n;\n',
        "\ufeffkeep;\r\nstop;\r\n",
        'fileinto "\u00e9t\u00e9/\U0001f600";\n',
    )
]
TOKENS: list[bytes] = [
    b" ", b"\n", b"\r\n", b"\r", b"\t", b"\x00", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\xc3",
    b"{", b"}", b"(", b")", b"[", b"]", b",", b";", b":", b'"', b"\\", b"#", b"/*", b"*/", b"*",
    b"/", b".", b"\n.\n", b"\n..\n", b"text:\n", b"text: # c\n", b"TEXT:", b":is", b":comparator",
    b"if ", b"elsif", b"else", b"not ", b"anyof(", b"allof (", b"true", b"keep;", b"stop;",
    b'"x"', b'["a", "b"]', b"0", b"1K", b"9223372036854775807", b"9223372036854775808",
    b"99999999999999999999G", b"${hex:", b"${unicode:", b"${hex:ff}", b"${unicode:d800}",
    b"${unicode:110000}", b"$", b'require "encoded-character";\n', b"\xef\xbb\xbf",
    b"if true {\n" * 40, b"not " * 40, b"anyof(" * 40, b'"a",' * 1100,
]  # fmt: skip

ORIGIN = ast.Position(0, 0)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


# -- the round trip -----------------------------------------------------------


def unpositioned(node: Any) -> Any:
    """``node`` with every position set to 0:0."""
    if isinstance(node, ast.Script):
        return ast.Script(tuple(unpositioned(c) for c in node.commands), node.requires)
    if isinstance(node, ast.StringList):
        return ast.StringList(tuple(unpositioned(s) for s in node.items), ORIGIN)
    if isinstance(node, ast.Command | ast.Test):
        changes: dict[str, Any] = {
            "arguments": tuple(unpositioned(a) for a in node.arguments),
            "tests": tuple(unpositioned(t) for t in node.tests),
            "pos": ORIGIN,
        }
        if isinstance(node, ast.Command) and node.block is not None:
            changes["block"] = tuple(unpositioned(c) for c in node.block)
        return dataclasses.replace(node, **changes)
    return dataclasses.replace(node, pos=ORIGIN)


_RAW = re.compile(r"\r\n|[\r\n\x00$]")
_AS_HEX = {"\r": "${hex:0d}", "\n": "${hex:0a}", "\x00": "${hex:00}", "$": "${hex:24}"}


def serialize_string(value: str, encoded: bool) -> str:
    """A string token whose value is ``value``: multi-line when it ends with
    a line break, quoted otherwise.  With "encoded-character" in effect,
    "$", NUL and lone CR or LF are written as ${hex:..} (rfc5228:2.4.2.4)."""
    if encoded:
        value = _RAW.sub(lambda m: _AS_HEX.get(m.group(), m.group()), value)
    if value.endswith("\r\n"):
        lines = value[:-2].split("\r\n")
        stuffed = "".join(("." if ln.startswith(".") else "") + ln + "\n" for ln in lines)
        return "text:\n" + stuffed + ".\n"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\r\n", "\n") + '"'


def serialize_argument(argument: ast.Argument, encoded: bool) -> str:
    if isinstance(argument, ast.Tag):
        return ":" + argument.name
    if isinstance(argument, ast.Number):
        return str(argument.value)
    if isinstance(argument, ast.String):
        return serialize_string(argument.value, encoded)
    return "[" + ", ".join(serialize_string(s.value, encoded) for s in argument.items) + "]"


def serialize_test(test: ast.Test, encoded: bool) -> str:
    return " ".join(
        [test.name]
        + [serialize_argument(a, encoded) for a in test.arguments]
        + ([serialize_tests(test.tests, encoded)] if test.tests else [])
    )


def serialize_tests(tests: tuple[ast.Test, ...], encoded: bool) -> str:
    if len(tests) == 1:
        return serialize_test(tests[0], encoded)
    return "(" + ", ".join(serialize_test(t, encoded) for t in tests) + ")"


def serialize_command(command: ast.Command, encoded: bool) -> str:
    words = [command.name] + [serialize_argument(a, encoded) for a in command.arguments]
    if command.tests:
        words.append(serialize_tests(command.tests, encoded))
    if command.block is None:
        return " ".join(words) + "\n;\n"  # ";" on a line of its own, after a text: too
    body = "".join(serialize_command(c, encoded) for c in command.block)
    return " ".join(words) + " {\n" + body + "}\n"


def serialize(script: ast.Script) -> str:
    """Sieve text for ``script``: it parses back to the same tree."""
    out: list[str] = []
    requires: set[str] = set()
    for command in script.commands:
        out.append(serialize_command(command, ENCODED_CHARACTER in requires))
        if command.name == "require":  # as the parser does
            for argument in command.arguments:
                if isinstance(argument, ast.String):
                    requires.add(argument.value)
                elif isinstance(argument, ast.StringList):
                    requires.update(s.value for s in argument.items)
    return "".join(out)


# -- invariants ---------------------------------------------------------------


def _walk(script: ast.Script) -> tuple[int, int]:
    """(number of nodes, deepest nesting) as the parser counts them."""
    nodes, deepest = 0, 0
    stack: list[tuple[Any, int]] = [(c, 0) for c in script.commands]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        deepest = max(deepest, depth)
        if isinstance(node, ast.Command | ast.Test):
            if not _NAME.fullmatch(node.name):
                raise Crash(f"bad name {node.name!r}")
            nested = depth + 1 if isinstance(node, ast.Test) else depth
            stack.extend((t, nested) for t in node.tests)
            stack.extend((a, depth) for a in node.arguments)
            if isinstance(node, ast.Command) and node.block is not None:
                stack.extend((c, depth + 1) for c in node.block)
        elif isinstance(node, ast.StringList):
            if not 1 <= len(node.items) <= MAX_LIST_ITEMS:
                raise Crash(f"string list of {len(node.items)} items")
            nodes += len(node.items)
        elif isinstance(node, ast.Tag) and not _NAME.fullmatch(node.name):
            raise Crash(f"bad tag {node.name!r}")
        elif isinstance(node, ast.Number) and not 0 <= node.value < 2**63:
            raise Crash(f"number out of range {node.value}")
    return nodes, deepest


def outcome(data: bytes) -> ast.Script | tuple[int, int, str]:
    """The tree of ``data``, or its error as (line, column, message)."""
    try:
        return parse(data)
    except SieveError as exc:
        lines = data.split(b"\n")
        if not 1 <= exc.line <= len(lines):
            raise Crash(f"error line {exc.line} outside the input: {exc}") from exc
        if not 1 <= exc.column <= len(lines[exc.line - 1]) + 1:
            raise Crash(f"error column {exc.column} outside line {exc.line}: {exc}") from exc
        if not exc.message or len(exc.message) > 120 or not exc.message.isprintable():
            raise Crash(f"bad error message {exc.message!r}") from exc
        return exc.line, exc.column, exc.message


def check_script(script: ast.Script) -> None:
    """The limits hold, and the tree survives serialize-then-parse."""
    nodes, deepest = _walk(script)
    if nodes > MAX_NODES or deepest > MAX_DEPTH:
        raise Crash(f"{nodes} nodes, nesting {deepest}")
    text = serialize(script)
    try:
        again = parse(text)
    except SieveError as exc:
        raise Crash(f"serialized script does not parse: {exc}\n{text[:2000]}") from exc
    if unpositioned(again) != unpositioned(script):
        raise Crash(f"round trip changes the tree:\n{text[:2000]}")


def check(data: bytes) -> None:
    """Every invariant for one input."""
    result = outcome(data)
    if isinstance(result, ast.Script):
        check_script(result)
    # The same script with LF and with CRLF line breaks (unless "\r\r\n"
    # made a new CRLF: then the CR before it is a bare one in both).
    lf = data.replace(b"\r\n", b"\n")
    crlf = lf.replace(b"\n", b"\r\n")
    if b"\r\n" not in lf and outcome(lf) != outcome(crlf):
        raise Crash("LF and CRLF give different outcomes")


@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    check(data)


@given(mutated(CORPUS, TOKENS))
def test_mutated_scripts(data: bytes) -> None:
    check(data)


@given(st.randoms(use_true_random=False))
def test_random_mutations(rng: Any) -> None:
    sieve_case(rng)[2]()


def test_corpus_parses() -> None:
    # The seeds are valid scripts (else the mutations explore little).
    for data in CORPUS:
        assert isinstance(outcome(data), ast.Script), data
        check(data)


# -- generated trees ----------------------------------------------------------

_NAMES = st.sampled_from(["keep", "if", "text", "x_1", "_", "require", "anyof", "not", "a9"])
_PLAIN = st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r\n")
_ANY = st.characters(exclude_categories=["Cs"])


def _values(encoded: bool) -> st.SearchStrategy[str]:
    pieces = st.text(_ANY if encoded else _PLAIN, max_size=8)
    specials = st.sampled_from(["\r\n", ".", "..", "$", "${hex:41}", "\\", '"', "#", "/*", " "])
    return st.lists(st.one_of(specials, pieces), max_size=4).map("".join)


def _arguments(encoded: bool) -> st.SearchStrategy[tuple[ast.Argument, ...]]:
    string = _values(encoded).map(lambda v: ast.String(v, ORIGIN))
    argument: st.SearchStrategy[ast.Argument] = st.one_of(
        _NAMES.map(lambda n: ast.Tag(n, ORIGIN)),
        st.integers(0, 2**63 - 1).map(lambda n: ast.Number(n, ORIGIN)),
        string,
        st.lists(string, min_size=1, max_size=4).map(
            lambda items: ast.StringList(tuple(items), ORIGIN)
        ),
    )
    return st.lists(argument, max_size=2).map(tuple)


def _tests(encoded: bool) -> st.SearchStrategy[ast.Test]:
    return st.recursive(
        st.builds(ast.Test, _NAMES, _arguments(encoded), st.just(()), st.just(ORIGIN)),
        lambda inner: st.builds(
            ast.Test, _NAMES, _arguments(encoded), st.lists(inner, max_size=3).map(tuple),
            st.just(ORIGIN),
        ),
        max_leaves=4,
    )  # fmt: skip


def _commands(encoded: bool) -> st.SearchStrategy[ast.Command]:
    tests = st.lists(_tests(encoded), max_size=2).map(tuple)
    leaf = st.builds(ast.Command, _NAMES, _arguments(encoded), tests, st.none(), st.just(ORIGIN))
    return st.recursive(
        leaf,
        lambda inner: st.builds(
            ast.Command, _NAMES, _arguments(encoded), tests,
            st.lists(inner, max_size=3).map(tuple), st.just(ORIGIN),
        ),
        max_leaves=6,
    )  # fmt: skip


_COMMANDS = {False: _commands(False), True: _commands(True)}


@st.composite
def scripts(draw: st.DrawFn) -> ast.Script:
    """A tree the parser could have built: with "encoded-character" first,
    strings hold any character; without, no NUL and CR only before LF."""
    encoded = draw(st.booleans())
    commands = draw(st.lists(_COMMANDS[encoded], max_size=4))
    # A generated "require" must not turn decoding on halfway.
    commands = [
        dataclasses.replace(c, name="required") if c.name == "require" else c for c in commands
    ]
    if encoded:
        head = ast.String(ENCODED_CHARACTER, ORIGIN)
        commands.insert(0, ast.Command("require", (head,), (), None, ORIGIN))
    return ast.Script(tuple(commands), frozenset([ENCODED_CHARACTER] if encoded else []))


@given(scripts())
def test_generated_trees_round_trip(script: ast.Script) -> None:
    text = serialize(script)
    assert unpositioned(parse(text)) == script
    assert unpositioned(parse(text.replace("\n", "\r\n").encode())) == script


# -- the long run ---------------------------------------------------------------


def sieve_case(rng: random.Random) -> tuple[bytes, str, Any]:
    """One long-run case: a mutated script (or random bytes) and its check."""
    data = fuzz_input(rng, CORPUS, TOKENS)
    return data, "", lambda: check(data)
