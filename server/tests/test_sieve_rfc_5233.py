"""RFC 5233 (subaddress) example script as test cases; the separator is
"+", as in the server's plus-addressing."""

from __future__ import annotations

import pytest
from _sieve import (
    assert_actions,
    compile_ok,
    discard,
    fileinto,
    keep,
    redirect,
    refuses,
    run,
    simple,
)

from estafeta.sieve import parse

# rfc5233:4
EXAMPLE = """\
require ["envelope", "subaddress", "fileinto"];

# In this example the same user account receives mail for both
# "ken@example.com" and "postmaster@example.com"

# File all messages to postmaster into a single mailbox,
# ignoring the :detail part.
if envelope :user "to" "postmaster" {
    fileinto "inbox.postmaster";
    stop;
}

# File mailing list messages (subscribed as "ken+mta-filters").
if envelope :detail "to" "mta-filters" {
    fileinto "inbox.ietf-mta-filters";
}

# Redirect all mail sent to "ken+foo".
if envelope :detail "to" "foo" {
    redirect "ken@example.net";
}
"""


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        ("postmaster@example.com", [fileinto("inbox.postmaster")]),
        ("postmaster+mta-filters@example.com", [fileinto("inbox.postmaster")]),
        ("ken+mta-filters@example.com", [fileinto("inbox.ietf-mta-filters")]),
        ("ken+foo@example.com", [redirect("ken@example.net")]),
        ("ken+bar@example.com", [keep()]),
        ("ken@example.com", [keep()]),
        ("foo@example.com", [keep()]),  # no detail: :detail matches nothing
    ],
)
def test_4_example(recipient: str, expected: list[dict[str, object]]) -> None:
    account = "ken@example.com"
    result = run(EXAMPLE, simple(to=recipient), recipient=recipient, account=account)
    assert_actions(result, expected)


@pytest.mark.parametrize(
    ("test", "value"),
    [
        ('address :user "To" "ken"', True),
        ('address :detail "To" "lists"', True),
        ('address :detail "Cc" ""', True),  # "ken+@..." has an empty detail
        ('address :detail "From" ""', False),  # no separator: no detail at all
        ('address :user "From" "coyote"', True),  # :user is the whole local part
        ('address :detail :matches "To" "*"', True),
        ('address :user :is "Cc" "ken+"', False),
    ],
)
def test_4_user_and_detail_in_headers(test: str, value: bool) -> None:
    script = f'require "subaddress";\nif {test} {{ discard; }}\n'
    msg = simple(to="Ken <ken+lists@example.com>", extra=[("Cc", "ken+@example.com")])
    assert_actions(run(script, msg), [discard()] if value else [keep()])


def test_4_requires_the_extension() -> None:
    refuses('if address :user "To" "ken" { discard; }\n')
    refuses('require "subaddress";\nif address :user :detail "To" "ken" { discard; }\n')


def test_examples_parse() -> None:
    assert parse(EXAMPLE.replace("\n", "\r\n")).commands
    compile_ok(EXAMPLE)
