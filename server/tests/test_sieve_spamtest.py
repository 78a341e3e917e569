"""Sieve spamtest and spamtestplus (rfc5235:3.1, 3.2): validation, the
normalized result of ``Context.spam_score``, and both evaluation paths --
the compiled closures of ``sieve.fast`` and ``conditions.evaluate`` -- giving
the same answers after the same steps."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from estafeta import sieve
from estafeta.sieve import (
    Context,
    Envelope,
    Limits,
    SieveError,
    compile_script,
    inline_safe,
    run,
)
from estafeta.sieve import fast as fast_module
from estafeta.sieve.actions import Discard, FileInto, Keep
from estafeta.sieve.conditions import evaluate, spam_result, spam_tested
from estafeta.sieve.fast import build
from estafeta.sieve.signatures import Compiled, Node
from estafeta.sieve.state import Frame, Run, ScriptError

MESSAGE = b"From: a@example.net\r\nSubject: offer\r\n\r\nBuy now.\r\n"
REQUIRE = (
    'require ["spamtestplus", "fileinto", "relational", "comparator-i;ascii-numeric", '
    '"variables"];\n'
)

# score -> (result without :percent, result with :percent, :count)
EXPECTED = {
    None: ("0", "0", "0"),  # rfc5235:3.2.1 / 3.2.2: not tested
    0.0: ("1", "0", "1"),  # tested, clear of spam
    0.5: ("6", "50", "1"),  # 1 + 4.5 rounded half up
    0.95: ("10", "95", "1"),  # 1 + 8.55 rounded
}


def _ctx(score: float | None) -> Context:
    return Context(
        message=MESSAGE,
        envelope=Envelope("a@example.net", "me@example.org"),
        account="me@example.org",
        spam_score=score,
    )


def _mailboxes(script: str, score: float | None) -> list[str]:
    result = run([compile_script(script)], _ctx(score))
    assert result.errors == []
    out: list[str] = []
    for action in result.actions:
        if isinstance(action, FileInto):
            out.append(action.mailbox)
        elif isinstance(action, Keep):
            out.append("INBOX")
        elif isinstance(action, Discard):
            out.append("discard")
    return out


@pytest.fixture(params=["compiled", "interpreted"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every script both ways: with the fast.py closure, and with the
    closure taken away (so ``conditions.evaluate`` answers)."""
    if request.param == "interpreted":
        monkeypatch.delitem(fast_module._BUILDERS, "spamtest")
    return str(request.param)


# -- validation (rfc5235:3.2) -----------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ('if spamtest "5" { keep; }', 'needs require "spamtest"'),
        ('require "fileinto";\nif spamtest :percent "5" { keep; }', 'needs require "spamtest"'),
        (
            'require "spamtest";\nif spamtest :percent "50" { keep; }',
            ':percent needs require "spamtestplus"',
        ),
        ('require "spamtest";\nif spamtest 5 { keep; }', "expected a string"),
        ('require "spamtest";\nif spamtest { keep; }', "spamtest takes 1 argument"),
        ('require "spamtest";\nif spamtest "1" "2" { keep; }', "spamtest takes 1 argument"),
        ('require "spamtest";\nif spamtest :over "1" { keep; }', "unknown tagged argument"),
        (
            'require "spamtestplus";\nif spamtest :percent :percent "1" { keep; }',
            ":percent given twice",
        ),
        (
            'require "spamtest";\nif spamtest :value "ge" "8" { keep; }',
            ':value needs require "relational"',
        ),
        (
            'require ["spamtest", "relational"];\n'
            'if spamtest :value "ge" :comparator "i;ascii-numeric" "8" { keep; }',
            'needs require "comparator-i;ascii-numeric"',
        ),
        (
            'require ["spamtest", "comparator-i;ascii-numeric"];\n'
            'if spamtest :contains :comparator "i;ascii-numeric" "8" { keep; }',
            "cannot be used with comparator",
        ),
    ],
)
def test_invalid_scripts_are_refused(script: str, message: str) -> None:
    with pytest.raises(SieveError) as caught:
        compile_script(script)
    assert message in caught.value.message


@pytest.mark.parametrize(
    "script",
    [
        'require "spamtest";\nif spamtest "5" { keep; }',
        # rfc5235:3.2: either identifier allows the test without :percent.
        'require "spamtestplus";\nif spamtest "5" { keep; }',
        'require "spamtestplus";\nif spamtest :percent "50" { keep; }',
        'require ["spamtest", "spamtestplus"];\nif spamtest :percent :is "50" { keep; }',
        'require ["spamtestplus", "relational", "comparator-i;ascii-numeric"];\n'
        'if spamtest :percent :comparator "i;ascii-numeric" :count "eq" "0" { keep; }',
    ],
)
def test_valid_scripts_compile(script: str) -> None:
    compiled = compile_script(script)
    assert inline_safe([compiled])  # no IO: it may run on the event loop


def test_both_capabilities_are_advertised_and_may_be_withheld() -> None:
    # ManageSieve's SIEVE capability is sieve.SUPPORTED (server.py).
    assert {"spamtest", "spamtestplus"} <= sieve.SUPPORTED
    for name in ("spamtest", "spamtestplus"):
        with pytest.raises(SieveError):
            compile_script(f'require "{name}";\n', extensions=frozenset({"fileinto"}))


# -- the normalized result (rfc5235:3.1, 3.2.1, 3.2.2) -----------------------


@pytest.mark.parametrize(
    ("score", "plain", "percent", "tested"),
    [
        (None, "0", "0", False),
        (0.0, "1", "0", True),
        (0.004, "1", "0", True),
        (0.005, "1", "1", True),
        (0.05, "1", "5", True),
        (0.0556, "2", "6", True),  # 0.5004 of a step rounds up
        (0.5, "6", "50", True),
        (0.95, "10", "95", True),
        (1.0, "10", "100", True),
        (-3.0, "1", "0", True),  # clamped
        (7.0, "10", "100", True),
        (math.nan, "0", "0", False),  # not a judgement
        (math.inf, "0", "0", False),
    ],
)
def test_spam_result(score: float | None, plain: str, percent: str, tested: bool) -> None:
    assert spam_result(score, False) == plain
    assert spam_result(score, True) == percent
    assert spam_tested(score) is tested


def test_every_plain_value_is_reachable() -> None:
    seen = {spam_result(n / 1000, False) for n in range(1001)}
    assert seen == {str(n) for n in range(1, 11)}
    assert {spam_result(n / 1000, True) for n in range(1001)} == {str(n) for n in range(101)}


# -- evaluation, both paths -----------------------------------------------------


@pytest.mark.parametrize("score", list(EXPECTED))
def test_the_values_a_script_sees(score: float | None, path: str) -> None:
    plain, percent, count = EXPECTED[score]
    script = REQUIRE + (
        # compiled shapes (constant keys, :is / :value / :count)
        f'if spamtest :is "{plain}" {{ fileinto "is"; }}\n'
        f'if spamtest :value "eq" :comparator "i;ascii-numeric" "{plain}" {{ fileinto "eq"; }}\n'
        f'if spamtest :percent :is "{percent}" {{ fileinto "percent-is"; }}\n'
        f'if spamtest :percent :value "eq" :comparator "i;ascii-numeric" "{percent}" '
        '{ fileinto "percent-eq"; }\n'
        f'if spamtest :count "eq" :comparator "i;ascii-numeric" "{count}" {{ fileinto "count"; }}\n'
        f'if spamtest :percent :count "eq" :comparator "i;ascii-numeric" "{count}" '
        '{ fileinto "percent-count"; }\n'
        # near misses
        f'if spamtest :value "eq" :comparator "i;ascii-numeric" "{int(plain) + 1}" '
        '{ fileinto "wrong"; }\n'
        f'if spamtest :percent :value "ne" :comparator "i;ascii-numeric" "{percent}" '
        '{ fileinto "wrong"; }\n'
        # the interpreter's shapes: the whole value as a match variable
        'if spamtest :matches "*" { set "p" "${0}"; }\n'
        'if spamtest :percent :matches "*" { set "q" "${0}"; }\n'
        'fileinto "seen-${p}-${q}";\n'
    )
    assert _mailboxes(script, score) == [
        "is",
        "eq",
        "percent-is",
        "percent-eq",
        "count",
        "percent-count",
        f"seen-{plain}-{percent}",
    ]


JUNK = (
    'require ["spamtest", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
    'if spamtest :value "ge" :comparator "i;ascii-numeric" "8" { fileinto "Junk"; }\n'
)
JUNK_PERCENT = (
    'require ["spamtestplus", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
    'if spamtest :percent :value "ge" :comparator "i;ascii-numeric" "90" { fileinto "Junk"; }\n'
)


@pytest.mark.parametrize(
    ("score", "plain", "percent"),
    [
        (None, ["INBOX"], ["INBOX"]),
        (0.0, ["INBOX"], ["INBOX"]),
        (0.5, ["INBOX"], ["INBOX"]),
        (0.95, ["Junk"], ["Junk"]),
    ],
)
def test_a_junk_rule(score: float | None, plain: list[str], percent: list[str], path: str) -> None:
    assert _mailboxes(JUNK, score) == plain
    assert _mailboxes(JUNK_PERCENT, score) == percent


def test_the_default_comparator_is_ascii_casemap(path: str) -> None:
    # rfc5235 names no default comparator: rfc5228:2.7.3's i;ascii-casemap
    # compares "10" and "8" as text, which is why scripts name i;ascii-numeric.
    script = (
        'require ["spamtest", "fileinto", "relational"];\n'
        'if spamtest :value "ge" "8" { fileinto "text-ge"; }\n'
        'if spamtest :value "lt" "2" { fileinto "text-lt"; }\n'
    )
    assert _mailboxes(script, 0.95) == ["text-lt"]  # "10" < "2" as text
    assert _mailboxes(script, 0.8) == ["text-ge"]  # "8"


# rfc5235:3.2.2, the examples: :value or :count tell "not tested" apart.
RFC_VALUE = REQUIRE + (
    'if spamtest :value "eq" :comparator "i;ascii-numeric" "0" { fileinto "unclassified"; }\n'
    'elsif spamtest :percent :value "eq" :comparator "i;ascii-numeric" "0" '
    '{ fileinto "not-spam"; }\n'
    'elsif spamtest :percent :value "lt" :comparator "i;ascii-numeric" "37" '
    '{ fileinto "spam-trap"; }\n'
    "else { discard; }\n"
)
RFC_COUNT = RFC_VALUE.replace(
    'spamtest :value "eq" :comparator "i;ascii-numeric" "0" {',
    'spamtest :percent :count "eq" :comparator "i;ascii-numeric" "0" {',
)


@pytest.mark.parametrize(
    ("score", "where"),
    [
        (None, "unclassified"),
        (0.0, "not-spam"),
        (0.2, "spam-trap"),
        (0.5, "discard"),
        (0.95, "discard"),
    ],
)
def test_the_rfc_examples(score: float | None, where: str, path: str) -> None:
    assert RFC_COUNT != RFC_VALUE
    assert _mailboxes(RFC_VALUE, score) == [where]
    assert _mailboxes(RFC_COUNT, score) == [where]


# -- the compiled closure against evaluate -------------------------------------

SHAPES = [
    'spamtest "0"',
    'spamtest :is "10"',
    'spamtest :comparator "i;octet" :is "6"',
    'spamtest :comparator "i;ascii-numeric" :is "06"',
    'spamtest :value "ge" :comparator "i;ascii-numeric" "8"',
    'spamtest :value "lt" "2"',
    'spamtest :value "ne" :comparator "i;ascii-numeric" "0"',
    'spamtest :count "eq" :comparator "i;ascii-numeric" "0"',
    'spamtest :count "ge" "1"',
    'spamtest :percent "0"',
    'spamtest :percent :is "50"',
    'spamtest :percent :value "gt" :comparator "i;ascii-numeric" "90"',
    'spamtest :percent :value "le" :comparator "i;ascii-numeric" "5"',
    'spamtest :percent :count "eq" :comparator "i;ascii-numeric" "1"',
    'spamtest :percent :value "ge" :comparator "i;ascii-numeric" "not a number"',
]
GENERIC_SHAPES = [
    'spamtest :matches "1*"',
    'spamtest :percent :contains "5"',
    'spamtest :value "ge" :comparator "i;ascii-numeric" "${n}"',
]
SCORES = [None, 0.0, 0.004, 0.005, 0.05, 0.2, 0.5, 0.55, 0.8, 0.95, 1.0, -1.0, 2.0, math.nan]


def _node(test: str) -> tuple[Compiled, Node]:
    script = compile_script(REQUIRE + f"if {test} {{ keep; }}\n")
    return script, script.commands[-1].tests[0]


def _outcome(
    fn: Callable[[Run, Frame], bool], script: Compiled, ctx: Context, limits: Limits
) -> list[object]:
    state, frame = Run(ctx, limits), Frame(script)
    seen: list[object] = []
    for _ in range(3):
        try:
            seen.append(fn(state, frame))
        except ScriptError as exc:
            seen.append(("error", exc.pos, exc.message))
            break
        seen.append((state.steps, list(frame.matches)))
    return seen


@pytest.mark.parametrize("test", SHAPES + GENERIC_SHAPES)
def test_the_closure_does_what_evaluate_does(test: str) -> None:
    script, node = _node(test)
    compiled = build(node)
    assert compiled.__qualname__.startswith("_generic") == (test in GENERIC_SHAPES)

    def slow(state: Run, frame: Frame) -> bool:
        return evaluate(state, frame, node)

    answers = set()
    for score, max_steps in itertools.product(SCORES, (*range(0, 5), 100_000)):
        ctx, limits = _ctx(score), Limits(max_steps=max_steps)
        outcome = _outcome(compiled, script, ctx, limits)
        assert outcome == _outcome(slow, script, ctx, limits), (test, score, max_steps)
        answers.add(outcome[0])
    if test != SHAPES[-1] and "${" not in test:
        assert answers >= {True, False}, test  # each shape tells scores apart
