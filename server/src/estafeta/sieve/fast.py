"""Tests compiled once into closures, for the shapes users write most.

``conditions.evaluate`` interprets a test node every time it runs: it looks
the handler up by name, expands every (constant) string, checks each header
name, folds every key again.  A script of 50 rules pays that 50 times per
message.  Here a test whose strings are all constant -- ``header``,
``address``, ``envelope`` with ``:is``, ``:contains``, ``:matches`` or
``:regex`` under ``i;octet`` or ``i;ascii-casemap``, and ``exists``,
``size``, ``true``, ``false``, ``not``, ``allof``, ``anyof`` over such tests
-- becomes a closure with its header names checked and lowered, its keys
encoded and folded, its globs and patterns compiled, once per script.
``spamtest`` (rfc5235) with constant keys under ``:is``, ``:value`` or
``:count``, any comparator, has its few possible answers worked out once.

The closures do exactly what ``evaluate`` does, in the same order: the same
steps charged at the same places (rfc5228:2.10.4 budget, ``Run.charge``),
the same values compared, the same match variables set (rfc5229:3.2).
Every other test (variables in its strings, ``:index``, ``:count`` and
``:value`` of the tests above, ``i;ascii-numeric`` there, the other
extensions' tests) runs through ``evaluate`` unchanged.  The tests in
tests/test_sieve_fast.py (tests/test_sieve_spamtest.py for ``spamtest``)
run every shape both ways and compare results, steps and match variables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from estafeta.sieve import ast
from estafeta.sieve.conditions import address_part_of, evaluate, spam_result, spam_tested
from estafeta.sieve.match import (
    CASEMAP,
    OCTET,
    OPS_PER_STEP,
    Glob,
    RegexError,
    compile_glob,
    compile_regex,
    decode,
    encode,
    equal,
    glob_cost,
    literal_absent,
    order,
    regex_cost,
    regex_light,
    relation_holds,
    required_literal,
)
from estafeta.sieve.message import (
    ADDRESS_HEADERS,
    FIELD_NAME,
    address_part,
    split_envelope_address,
)
from estafeta.sieve.signatures import Compiled, Node
from estafeta.sieve.state import Frame, Run
from estafeta.sieve.variables import Template

TestFn = Callable[[Run, Frame], bool]
# Matches values (str or bytes) against the test's keys; sets the match
# variables of a successful :matches or :regex.
MatchFn = Callable[[Run, Frame, Sequence[str | bytes]], bool]

_KINDS: Final = frozenset({"is", "contains", "matches", "regex"})


# One if/elsif/else branch: its position, its test (None for else), its block.
Branch = tuple[ast.Position, TestFn | None, tuple[Node, ...]]
# One step of a block, by kind:
#   (COMMAND, node, None, None)
#   (IF, position, test, block)  -- an if alone, the most common step
#   (CHAIN, branches, None, None)  -- an if with elsif's or an else
Step = tuple[int, Any, Any, Any]
COMMAND, IF, CHAIN = 0, 1, 2


def plan_of(script: Compiled, nodes: tuple[Node, ...]) -> tuple[Step, ...]:
    """The steps of a block of ``script`` (its if chains with their tests
    compiled), prepared on first use and kept with the script."""
    found = script.plans.get(id(nodes))
    if found is None:
        found = script.plans[id(nodes)] = _plan(nodes)
    return found  # type: ignore[return-value]


def _plan(nodes: tuple[Node, ...]) -> tuple[Step, ...]:
    steps: list[Step] = []
    i, n = 0, len(nodes)
    while i < n:
        node = nodes[i]
        if node.name != "if":
            steps.append((COMMAND, node, None, None))
            i += 1
            continue
        branches: list[Branch] = []
        while True:  # the if, its elsif's and its else
            current = nodes[i]
            assert current.block is not None
            test = None if current.name == "else" else build(current.tests[0])
            branches.append((current.pos, test, current.block))
            i += 1
            if i >= n or nodes[i].name not in ("elsif", "else"):
                break
        if len(branches) == 1:
            steps.append((IF, *branches[0]))
        else:
            steps.append((CHAIN, tuple(branches), None, None))
    return tuple(steps)


def build(node: Node) -> TestFn:
    builder = _BUILDERS.get(node.name)
    fn = builder(node) if builder is not None else None
    if fn is None:
        return _generic(node)
    return fn


def _generic(node: Node) -> TestFn:
    def test(run: Run, frame: Frame) -> bool:
        return evaluate(run, frame, node)

    return test


def _constants(value: object) -> tuple[str, ...] | None:
    """The texts of a constant string or string list, else None."""
    if isinstance(value, Template):
        value = (value,)
    if not isinstance(value, tuple) or not all(
        isinstance(t, Template) and t.constant for t in value
    ):
        return None
    return tuple(t.raw for t in value)


# --------------------------------------------------------------------------
# rfc5228:5 control tests


def _constant_test(node: Node) -> TestFn:
    """true / false."""
    pos, value = node.pos, node.name == "true"

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        return value

    return test


def _not(node: Node) -> TestFn:
    pos, inner = node.pos, build(node.tests[0])

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        return not inner(run, frame)

    return test


def _list_test(node: Node) -> TestFn:
    """allof / anyof: short-circuit, left to right (rfc5229:3.2)."""
    pos, inner = node.pos, tuple(build(t) for t in node.tests)
    decisive = node.name == "anyof"  # the answer that ends the list

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        # A loop: all()/any() would build a generator per call.
        for one in inner:
            if one(run, frame):
                if decisive:
                    return True
            elif not decisive:
                return False
        return not decisive

    return test


def _size(node: Node) -> TestFn | None:
    limit = node.args[0]
    if not isinstance(limit, int):
        return None
    pos, over = node.pos, "over" in node.tags

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        size = len(run.original)  # rfc5228:5.9
        return size > limit if over else size < limit

    return test


def _exists(node: Node) -> TestFn | None:
    names = _constants(node.args[0])
    if names is None:
        return None
    pos = node.pos
    valid = all(FIELD_NAME.match(n) for n in names)
    lowered = tuple(n.lower() for n in names)

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        if not valid:
            return False
        named = run.header.named
        for name in lowered:  # noqa: SIM110
            if not named(name):
                return False
        return True

    return test


def _spamtest(node: Node) -> TestFn | None:
    """rfc5235:3.2 with constant keys under :is, :value or :count: the
    normalized results it can see ("0".."10", or "0".."100" with :percent,
    conditions.spam_result) are few, so each is compared with the keys
    once, here; a run looks its result up and charges what
    ``Run.test_values`` would (per key, up to the first that holds)."""
    spec = node.match
    keys = _constants(node.args[-1])
    if keys is None or spec.kind not in ("is", "value", "count"):
        return None
    pos, comparator, relation = node.pos, spec.comparator, spec.relation
    if spec.kind == "count":  # rfc5235:3.1, rfc5231:4.2: 1 if tested, else 0
        counted = tuple(
            any(relation_holds(order(str(n), key, comparator), relation) for key in keys)
            for n in (0, 1)
        )

        def count_test(run: Run, frame: Frame) -> bool:
            run.steps += 1
            if run.steps > run.max_steps:
                run.charge(0, pos)
            return counted[1 if spam_tested(run.ctx.spam_score) else 0]

        return count_test
    percent = "percent" in node.tags
    table: dict[str, tuple[int, tuple[bool, ...]]] = {}
    for n in range(101 if percent else 11):
        value = str(n)
        if spec.kind == "is":
            hits = tuple(equal(value, key, comparator) for key in keys)
        else:
            hits = tuple(relation_holds(order(value, key, comparator), relation) for key in keys)
        table[value] = (1 + len(value) // OPS_PER_STEP, hits)

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        cost, hits = table[spam_result(run.ctx.spam_score, percent)]
        for hit in hits:
            run.charge(cost, pos)
            if hit:
                return True
        return False

    return test


# --------------------------------------------------------------------------
# header, address, envelope (rfc5228:5.7, 5.1, 5.4)
#
# A test reads values from its source (header fields by name, an address
# part of some fields, envelope parts), prepares them for its kind of
# match (encoded, folded, with their step cost) and compares them with its
# keys.  Rules of a script often read the same source the same way (ten
# rules on "From" domains): the prepared values are kept in ``run.memo``
# under the source and the preparation, with the header's version, so that
# an edited header (rfc5293) is read again.


def _field_names(node: Node, only: frozenset[str] | None = None) -> tuple[str, ...] | None:
    """The lowered valid names of a test without :index, else None."""
    if "index" in node.tags:
        return None
    names = _constants(node.args[0])
    if names is None:
        return None
    # An invalid name names nothing (rfc5228:2.4.2.2), nor one outside ``only``.
    return tuple(
        n.lower() for n in names if FIELD_NAME.match(n) and (only is None or n.lower() in only)
    )


def _header(node: Node) -> TestFn | None:
    names = _field_names(node)
    matcher = _matcher(node)
    if names is None or matcher is None:
        return None
    how, match = matcher
    prepare = _PREPARE[how]
    pos, source = node.pos, _source("header", how, *names)

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        version = run.header.version
        found = run.memo.get(source)
        if found is None or found[0] != version:
            named = run.header.named
            found = (version, prepare([f.decoded for n in names for f in named(n)]))
            run.memo[source] = found
        return match(run, frame, found[1])

    return test


def _address(node: Node) -> TestFn | None:
    names = _field_names(node, ADDRESS_HEADERS)
    matcher = _matcher(node)
    if names is None or matcher is None:
        return None
    how, match = matcher
    prepare = _PREPARE[how]
    pos, part = node.pos, address_part_of(node)
    source = _source("address", how, part, *names)

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        version = run.header.version
        found = run.memo.get(source)
        if found is None or found[0] != version:
            named = run.header.named
            addresses = [a for n in names for f in named(n) for a in f.addresses]
            values = [v for a in addresses if (v := address_part(a, part)) is not None]
            found = (version, prepare(values), len(addresses) // 16)
            run.memo[source] = found
        run.steps += found[2]  # as conditions._address charges for the addresses
        if run.steps > run.max_steps:
            run.charge(0)
        return match(run, frame, found[1])

    return test


def _envelope(node: Node) -> TestFn | None:
    names = _constants(node.args[0])
    matcher = _matcher(node)
    if names is None or matcher is None:
        return None
    how, match = matcher
    prepare = _PREPARE[how]
    pos, part = node.pos, address_part_of(node)
    # Unknown parts match nothing (conditions._envelope).
    parts = tuple(n.lower() for n in names if n.lower() in ("from", "to", "auth"))
    source = _source("envelope", how, part, *parts)

    def test(run: Run, frame: Frame) -> bool:
        run.steps += 1
        if run.steps > run.max_steps:
            run.charge(0, pos)
        found = run.memo.get(source)
        if found is None:  # the envelope never changes
            found = (0, prepare(_envelope_values(run, parts, part)))
            run.memo[source] = found
        return match(run, frame, found[1])

    return test


def _source(*parts: str) -> str:
    """The memo key of a source read a way: one string (its hash is kept)."""
    return "\0".join(parts)


def _envelope_values(run: Run, parts: tuple[str, ...], part: str) -> list[str]:
    envelope = run.ctx.envelope
    values: list[str] = []
    for name in parts:
        if name == "from":
            raw = envelope.sender
        elif name == "to":
            raw = envelope.recipient
        else:
            raw = envelope.auth
            if not raw:
                continue
        address = split_envelope_address(raw)
        if address is None:
            values.append("")  # rfc5228:5.4: the null reverse-path is ""
            continue
        value = address_part(address, part)
        if value is not None:
            values.append(value)
    return values


# --------------------------------------------------------------------------
# Matching: Run.test_values for constant keys, prepared once.  ``prepare``
# turns values into what ``match`` compares, with the steps each comparison
# costs (the same as test_values charges).

Prepare = Callable[[Sequence[str | bytes]], list[tuple[Any, ...]]]
Match = Callable[[Run, Frame, list[tuple[Any, ...]]], bool]


def _matcher(node: Node) -> tuple[str, Match] | None:
    """How the values are prepared (a key of _PREPARE) and the match."""
    spec = node.match
    keys = _constants(node.args[-1])
    if keys is None or spec.kind not in _KINDS or spec.comparator not in (OCTET, CASEMAP):
        return None
    fold = spec.comparator == CASEMAP
    pos = node.pos
    if spec.kind == "contains":
        folded = tuple(_octets(k).upper() if fold else _octets(k) for k in keys)
        return _octets_how(fold), _contains(folded, pos)
    if spec.kind == "matches":
        globs = tuple(compile_glob(_octets(k), fold) for k in keys)
        return ("glob-folded" if fold else "glob"), _matches(globs, pos)
    if spec.kind == "is":
        if fold:
            return "is-folded", _equal(tuple(_octets(k).upper() for k in keys), pos)
        return "is-text", _equal(keys, pos)
    if not all(regex_light(k) for k in keys):
        return None  # heavy patterns are compiled when used, not kept
    try:
        searches = tuple((compile_regex(k, fold), regex_cost(k), required_literal(k)) for k in keys)
    except RegexError:
        return None  # evaluate reports it, at run time, where it happens
    return "text", _regex(searches, fold, pos)


def _octets_how(fold: bool) -> str:
    return "octets-folded" if fold else "octets"


def _octets(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else encode(value)


def _text(value: str | bytes) -> str:
    return decode(value) if isinstance(value, bytes) else value


def _prepare_octets(fold: bool) -> Prepare:
    """(cost, octets folded) for :contains, which costs by octets."""

    def prepare(values: Sequence[str | bytes]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for value in values:
            octets = _octets(value)
            out.append((1 + len(octets) // OPS_PER_STEP, octets.upper() if fold else octets))
        return out

    return prepare


def _prepare_glob(fold: bool) -> Prepare:
    def prepare(values: Sequence[str | bytes]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for value in values:
            octets = _octets(value)
            size = len(octets)
            folded = octets.upper() if fold else octets
            out.append((size, octets, folded, 1 + size // OPS_PER_STEP))
        return out

    return prepare


def _prepare_text(values: Sequence[str | bytes]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for value in values:
        text = _text(value)
        out.append((1 + len(text) // OPS_PER_STEP, text))
    return out


def _prepare_is(fold: bool) -> Prepare:
    """(items (cost, compared), the compared as a set, the sum of the costs):
    :is costs by characters, and compares folded octets or the text."""

    def prepare(values: Sequence[str | bytes]) -> Any:
        items = []
        for value in values:
            text = _text(value)
            items.append((1 + len(text) // OPS_PER_STEP, encode(text).upper() if fold else text))
        return items, frozenset(v for _, v in items), sum(c for c, _ in items)

    return prepare


_PREPARE: Final[dict[str, Prepare]] = {
    "is-folded": _prepare_is(True),
    "is-text": _prepare_is(False),
    "octets-folded": _prepare_octets(True),
    "octets": _prepare_octets(False),
    "glob-folded": _prepare_glob(True),
    "glob": _prepare_glob(False),
    "text": _prepare_text,
}


def _contains(keys: tuple[bytes, ...], pos: ast.Position) -> Match:
    def match(run: Run, frame: Frame, values: list[tuple[Any, ...]]) -> bool:
        for cost, folded in values:
            for key in keys:
                run.steps += cost
                if run.steps > run.max_steps:
                    run.charge(0, pos)
                if key in folded:
                    return True
        return False

    return match


def _equal(keys: tuple[Any, ...], pos: ast.Position) -> Match:
    """:is -- casemap on folded octets, i;octet on the text (prepared so)."""
    keyset = frozenset(keys)
    count = len(keys)

    def match(run: Run, frame: Frame, prepared: Any) -> bool:
        items, values, cost = prepared
        if values.isdisjoint(keyset):
            # No value is a key: test_values compares every pair, charging
            # each value's cost once per key.
            run.steps += cost * count
            if run.steps > run.max_steps:
                run.charge(0, pos)
            return False
        for cost, value in items:
            for key in keys:
                run.steps += cost
                if run.steps > run.max_steps:
                    run.charge(0, pos)
                if value == key:
                    return True
        return False

    return match


def _matches(globs: tuple[Glob, ...], pos: ast.Position) -> Match:
    # (glob, its bytes shortcut or None, whether glob_cost is the plain
    # "1 + octets // OPS_PER_STEP" the preparation computed)
    plan = tuple((g, _quick_glob(g), len(g.segments) <= 2) for g in globs)

    def match(run: Run, frame: Frame, values: list[tuple[Any, ...]]) -> bool:
        capture = frame.variables
        for size, octets, folded, plain_cost in values:
            for glob, simple, plain in plan:
                run.steps += plain_cost if plain else glob_cost(size, glob)
                if run.steps > run.max_steps:
                    run.charge(0, pos)
                if simple is not None and not capture:
                    if simple(folded):
                        return True
                    continue
                captures = glob.match_folded(octets, folded)
                if captures is not None:
                    if capture:
                        frame.matches = [decode(c) for c in captures]
                    return True
        return False

    return match


def _quick_glob(glob: Glob) -> Callable[[bytes], bool] | None:
    """The bytes operation a pattern without "?" and with at most two "*" in
    the usual places amounts to (when no match variable is wanted)."""
    if any(segment[2] is not None for segment in glob.segments):
        return None  # a "?" somewhere
    texts = [segment[0] for segment in glob.segments]
    if len(texts) == 1:
        whole = texts[0]
        return whole.__eq__  # no "*": the whole value
    if len(texts) == 2:
        head, tail = texts
        least = len(head) + len(tail)
        return lambda value: len(value) >= least and value.startswith(head) and value.endswith(tail)
    if len(texts) == 3 and not texts[0] and not texts[2]:
        middle = texts[1]
        return lambda value: middle in value  # "*middle*"
    return None


def _regex(
    searches: tuple[tuple[Callable[..., object], int, str | None], ...],
    fold: bool,
    pos: ast.Position,
) -> Match:
    def match(run: Run, frame: Frame, values: list[tuple[Any, ...]]) -> bool:
        for cost, text in values:
            for search, compile_cost, literal in searches:
                run.charge(cost + compile_cost, pos)
                if literal is not None and literal_absent(literal, text, fold):
                    continue  # as Run.regex: the engine would find nothing
                groups = run.search(search, text, pos)
                if groups is not None:
                    if frame.variables:
                        frame.matches = list(groups)
                    return True
        return False

    return match


_BUILDERS: Final[dict[str, Callable[[Node], TestFn | None]]] = {
    "true": _constant_test,
    "false": _constant_test,
    "not": _not,
    "allof": _list_test,
    "anyof": _list_test,
    "size": _size,
    "exists": _exists,
    "header": _header,
    "address": _address,
    "envelope": _envelope,
    "spamtest": _spamtest,
}
