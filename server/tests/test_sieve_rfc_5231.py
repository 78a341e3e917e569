"""RFC 5231 (relational) example scripts as test cases."""

from __future__ import annotations

import pytest
from _sieve import (
    assert_actions,
    build,
    compile_ok,
    discard,
    fileinto,
    keep,
    refuses,
    run,
    simple,
)

from estafeta.sieve import parse

# rfc5231:6 -- the example message ("received: ..." given a value).
EXAMPLE_MESSAGE = build(
    [
        ("received", "from a by b; Tue, 1 Apr 1997 09:06:31 -0800"),
        ("received", "from c by a; Tue, 1 Apr 1997 09:06:30 -0800"),
        ("subject", "example"),
        ("to", "foo@example.com, baz@example.com"),
        ("cc", "qux@example.com"),
    ],
    "body\n",
)

# rfc5231:6 -- each test wrapped in an if.
TESTS = [
    (
        """address :count "ge" :comparator "i;ascii-numeric"
                ["to", "cc"] ["3"]""",
        True,
    ),
    (
        """anyof ( address :count "ge" :comparator "i;ascii-numeric"
                ["to"] ["3"],
        address :count "ge" :comparator "i;ascii-numeric"
                ["cc"] ["3"] )""",
        False,
    ),
    (
        """header :count "ge" :comparator "i;ascii-numeric"
                ["received"] ["3"]""",
        False,
    ),
    (
        """header :count "ge" :comparator "i;ascii-numeric"
                ["received", "subject"] ["3"]""",
        True,
    ),
    (
        """header :count "ge" :comparator "i;ascii-numeric"
                ["to", "cc"] ["3"]""",
        False,
    ),
]


@pytest.mark.parametrize(("test", "value"), TESTS)
def test_6_example(test: str, value: bool) -> None:
    script = f'require ["relational", "comparator-i;ascii-numeric"];\nif {test}\n{{ discard; }}\n'
    assert_actions(run(script, EXAMPLE_MESSAGE), [discard()] if value else [keep()])


@pytest.mark.parametrize(
    ("test", "value"),
    [
        ('header :value "gt" :comparator "i;ascii-numeric" "X-N" "9"', True),  # 10 > 9
        ('header :value "gt" "X-N" "9"', False),  # as strings, "10" < "9"
        ('header :value "eq" :comparator "i;ascii-numeric" "X-N" "010"', True),
        ('header :value "ne" :comparator "i;ascii-numeric" "X-N" "10"', False),
        ('header :value "le" :comparator "i;ascii-numeric" "X-N" ["1", "10"]', True),
        # rfc4790:9.1: a value without leading digits is positive infinity.
        ('header :value "gt" :comparator "i;ascii-numeric" "X-Word" "99999"', True),
        ('envelope :count "eq" :comparator "i;ascii-numeric" "from" "1"', True),
        ('envelope :count "eq" :comparator "i;ascii-numeric" "to" "1"', True),
        ('header :count "eq" :comparator "i;ascii-numeric" "X-Absent" "0"', True),
        ('address :count "eq" :comparator "i;ascii-numeric" "To" "3"', True),
    ],
)
def test_4_value_and_count(test: str, value: bool) -> None:
    script = (
        'require ["relational", "comparator-i;ascii-numeric", "envelope"];\n'
        f"if {test} {{ discard; }}\n"
    )
    # Group names are ignored, the mailboxes in them counted (rfc5231:4.2).
    msg = simple(
        to="a@example.org, Friends: b@example.org, c@example.org;",
        extra=[("X-N", "10"), ("X-Word", "many")],
    )
    assert_actions(run(script, msg), [discard()] if value else [keep()])


def test_4_null_sender_counts_zero() -> None:
    script = (
        'require ["relational", "comparator-i;ascii-numeric", "envelope"];\n'
        'if envelope :count "eq" :comparator "i;ascii-numeric" "from" "0" { discard; }\n'
    )
    assert_actions(run(script, simple(), sender=""), [discard()])
    assert_actions(run(script, simple()), [keep()])


def test_4_errors() -> None:
    refuses('require "relational";\nif header :value "xx" "a" "b" { discard; }\n')
    refuses('require "relational";\nif header :count "gt" :is "a" "b" { discard; }\n')
    refuses('if header :value "gt" "a" "b" { discard; }\n')  # without require


# rfc5231:7 -- the extended example.
EXTENDED = """\
require ["relational", "comparator-i;ascii-numeric", "fileinto"];

if header :value "lt" :comparator "i;ascii-numeric"
          ["x-priority"] ["3"]
{
   fileinto "Priority";
}

elsif address :count "gt" :comparator "i;ascii-numeric"
           ["to"] ["5"]
{
   # everything with more than 5 recipients in the "to" field
   # is considered SPAM
   fileinto "SPAM";
}

elsif address :value "gt" :all :comparator "i;ascii-casemap"
           ["from"] ["M"]
{
   fileinto "From N-Z";
} else {
   fileinto "From A-M";
}

if allof ( address :count "eq" :comparator "i;ascii-numeric"
                   ["to", "cc"] ["1"] ,
           address :all :comparator "i;ascii-casemap"
                   ["to", "cc"] ["me@foo.example.com"] )
{
   fileinto "Only me";
}
"""


def test_7_extended_example() -> None:
    me = "me@foo.example.com"
    others = "a@x.example, b@x.example, c@x.example"
    urgent = simple(from_="zed@example.org", to=others, extra=[("X-Priority", "1")])
    assert_actions(run(EXTENDED, urgent), [fileinto("Priority")])
    six = ", ".join(f"u{i}@x.example" for i in range(6))
    assert_actions(run(EXTENDED, simple(from_="zed@example.org", to=six)), [fileinto("SPAM")])
    five = ", ".join(f"u{i}@x.example" for i in range(5))
    assert_actions(run(EXTENDED, simple(from_="zed@example.org", to=five)), [fileinto("From N-Z")])
    assert_actions(
        run(
            EXTENDED, simple(from_="Zed <ZED@example.org>", to=others, extra=[("X-Priority", "5")])
        ),
        [fileinto("From N-Z")],
    )
    assert_actions(
        run(EXTENDED, simple(from_="alice@example.org", to=others)), [fileinto("From A-M")]
    )
    assert_actions(
        run(EXTENDED, simple(from_="alice@example.org", to=me)),
        [fileinto("From A-M"), fileinto("Only me")],
    )
    # To me plus a Cc: two addresses, not "Only me".
    cc = simple(from_="alice@example.org", to=me, extra=[("Cc", "b@x.example")])
    assert_actions(run(EXTENDED, cc), [fileinto("From A-M")])


def test_examples_parse() -> None:
    assert parse(EXTENDED.replace("\n", "\r\n")).commands
    compile_ok(EXTENDED)
