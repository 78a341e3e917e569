"""RFC 7352 (duplicate) example scripts as test cases.

The tracking list is the delivery layer's: a run asks ctx.seen(key,
seconds) and returns the marks to record afterwards; DuplicateMemory
(tests/_sieve.py) plays the delivery layer, so "the same entry" is
observed without knowing how keys are built.
"""

from __future__ import annotations

from typing import Any

import pytest
from _sieve import (
    DuplicateMemory,
    assert_actions,
    assert_implicit_keep_after_error,
    compile_ok,
    discard,
    fileinto,
    keep,
    refused_or_fails,
    refuses,
    run,
    simple,
)

from estafeta.sieve import Result, parse


def deliver(script: str, msg: bytes, memory: DuplicateMemory, **kw: Any) -> Result:
    """One delivery: run, then record the marks as the delivery layer does."""
    result = run(script, msg, seen=memory.seen, **kw)
    memory.remember(result)
    return result


def with_id(message_id: str, **kw: Any) -> bytes:
    msg = simple(**kw)
    return msg.replace(b"<simple@desert.example.org>", message_id.encode())


# rfc7352:5.1
EXAMPLE_1 = """\
require ["duplicate", "fileinto", "mailbox"];
if duplicate {
  fileinto :create "Trash/Duplicate";
}
"""


def test_5_1_message_id() -> None:
    memory = DuplicateMemory()
    first = deliver(EXAMPLE_1, with_id("<1@example.org>"), memory)
    assert_actions(first, [keep()])
    assert first.duplicate_marks
    second = deliver(EXAMPLE_1, with_id("<1@example.org>"), memory)
    assert_actions(second, [fileinto("Trash/Duplicate")])
    assert second.actions[0].to_json().get("create", True) is True
    assert getattr(second.actions[0], "create", True) is True
    # Unfolded and trimmed before use (rfc7352:3.1).
    folded = with_id("\r\n   <1@example.org>  ")
    assert_actions(deliver(EXAMPLE_1, folded, memory), [fileinto("Trash/Duplicate")])
    # Case-sensitive, and another message is not a duplicate.
    assert_actions(deliver(EXAMPLE_1, with_id("<1@EXAMPLE.org>"), memory), [keep()])
    assert_actions(deliver(EXAMPLE_1, with_id("<2@example.org>"), memory), [keep()])


def test_3_no_message_id_is_never_a_duplicate() -> None:
    memory = DuplicateMemory()
    msg = simple().replace(b"Message-ID: <simple@desert.example.org>\r\n", b"")
    for _ in range(2):
        result = deliver(EXAMPLE_1, msg, memory)
        assert_actions(result, [keep()])
        assert result.duplicate_marks == []


def test_3_failed_runs_record_nothing() -> None:
    # rfc7352:3: "only ... when the Sieve script execution finishes
    # successfully".
    script = (
        'require ["duplicate", "vacation"];\n'
        'if duplicate { discard; }\nvacation "a";\nvacation :handle "b" "b";\n'
    )
    memory = DuplicateMemory()
    result = deliver(script, with_id("<1@example.org>"), memory)
    assert_implicit_keep_after_error(result)
    assert memory.records == set()
    assert_actions(deliver(EXAMPLE_1, with_id("<1@example.org>"), memory), [keep()])


def test_3_same_result_within_one_execution() -> None:
    script = (
        'require ["duplicate", "fileinto"];\n'
        'if duplicate { fileinto "first"; }\n'
        'if duplicate { fileinto "second"; }\n'
    )
    memory = DuplicateMemory()
    assert_actions(deliver(script, with_id("<1@example.org>"), memory), [keep()])
    assert_actions(
        deliver(script, with_id("<1@example.org>"), memory), [fileinto("first"), fileinto("second")]
    )


# rfc7352:3.2 -- three equivalent tests, one tracking entry.
EQUIVALENT = [
    """\
require "duplicate";
if duplicate {
  discard;
}
""",
    """\
require "duplicate";
if duplicate :header "message-id" {
  discard;
}
""",
    """\
require ["duplicate", "variables"];
if header :matches "message-id" "*" {
  if duplicate :uniqueid "${0}" {
    discard;
  }
}
""",
]


@pytest.mark.parametrize("first", range(3))
@pytest.mark.parametrize("second", range(3))
def test_3_2_equivalent_forms(first: int, second: int) -> None:
    memory = DuplicateMemory()
    msg = with_id("<42@example.org>")
    assert_actions(deliver(EQUIVALENT[first], msg, memory), [keep()])
    assert_actions(deliver(EQUIVALENT[second], msg, memory), [discard()])


def test_3_2_handle_separates() -> None:
    memory = DuplicateMemory()
    plain = EQUIVALENT[0]
    handled = 'require "duplicate";\nif duplicate :handle "h" { discard; }\n'
    msg = with_id("<7@example.org>")
    deliver(plain, msg, memory)
    assert_actions(deliver(handled, msg, memory), [keep()])
    assert_actions(deliver(handled, msg, memory), [discard()])


# rfc7352:5.2
EXAMPLE_2 = """\
require ["duplicate", "variables", "imap4flags",
  "fileinto"];
if header :matches "subject" "ALERT: *" {
  if duplicate :seconds 60 :uniqueid "${1}" {
    setflag "\\\\seen";
  }
  fileinto "Alerts";
}
"""


def test_5_2_alerts() -> None:
    memory = DuplicateMemory()
    one = with_id("<a1@mon1.example>", subject="ALERT: disk full on db1")
    two = with_id("<a2@mon2.example>", subject="ALERT: disk full on db1")
    other = with_id("<a3@mon1.example>", subject="ALERT: fan failure")
    assert_actions(deliver(EXAMPLE_2, one, memory), [fileinto("Alerts")])
    assert_actions(deliver(EXAMPLE_2, two, memory), [fileinto("Alerts", "\\Seen")])
    assert_actions(deliver(EXAMPLE_2, other, memory), [fileinto("Alerts")])
    assert {seconds for _, seconds in memory.calls} == {60}
    first = run(EXAMPLE_2, one)  # without memory: ctx.seen is None
    assert [seconds for _, seconds in first.duplicate_marks] == [60]
    assert_actions(deliver(EXAMPLE_2, simple(subject="hello"), memory), [keep()])


# rfc7352:5.3 -- enotify is not supported here: the scripts parse, and
# compiling them names the unsupported extension.
EXAMPLE_3A = """\
require ["variables", "envelope", "enotify", "duplicate"];
if envelope :matches "from" "*" { set "sender" "${1}"; }
if header :matches "subject" "*" { set "subject" "${1}"; }
if not duplicate :seconds 1800 :uniqueid "${sender}"
{
  notify :message "[SIEVE] ${sender}: ${subject}"
    "xmpp:user@im.example.com";
}
"""

EXAMPLE_3B = """\
require ["variables", "envelope", "enotify", "duplicate"];
if envelope :matches "from" "*" { set "sender" "${1}"; }
if header :matches "subject" "*" { set "subject" "${1}"; }
# account for 'Re:' prefix
if string :comparator "i;ascii-casemap"
  :matches "${subject}" "Re:*"
{
  set "subject" "${1}";
}
if not duplicate :seconds 1800
  :uniqueid "${sender} ${subject}"
{
  notify :message "[SIEVE] ${sender}: ${subject}"
    "xmpp:user@im.example.com";
}
"""


@pytest.mark.parametrize("script", [EXAMPLE_3A, EXAMPLE_3B])
def test_5_3_enotify_is_unsupported(script: str) -> None:
    assert parse(script.replace("\n", "\r\n")).commands
    error = refuses(script)
    assert error.line == 1
    assert "enotify" in error.message


def test_5_3_without_notify() -> None:
    # The same tracking with "fileinto" in place of "notify".
    script = EXAMPLE_3B.replace('"enotify"', '"fileinto"').replace(
        'notify :message "[SIEVE] ${sender}: ${subject}"\n    "xmpp:user@im.example.com";',
        'fileinto "notified";',
    )
    memory = DuplicateMemory()
    hi = simple(subject="lunch?")
    assert_actions(deliver(script, hi, memory), [fileinto("notified")])
    # "Re:*" leaves the space after the colon in ${1}: "Re: lunch?" is a new
    # unique ID, "Re:lunch?" is the same one.
    assert_actions(deliver(script, simple(subject="Re: lunch?"), memory), [fileinto("notified")])
    assert_actions(deliver(script, simple(subject="Re:lunch?"), memory), [keep()])
    assert_actions(deliver(script, simple(subject="dinner?"), memory), [fileinto("notified")])
    other = deliver(script, hi, memory, sender="tweety@cage.example.org")
    assert_actions(other, [fileinto("notified")])
    assert {seconds for _, seconds in memory.calls} == {1800}


# rfc7352:5.4
EXAMPLE_4 = """\
require ["duplicate", "imap4flags"];
if duplicate :header "X-Event-ID" :handle "notifier" {
  discard;
}
if allof (
  duplicate :header "X-Ticket-ID" :handle "support",
  address "to" "support@example.com",
  header :contains "subject" "fileserver")
{
  setflag "\\\\seen";
}
"""


def test_5_4_handles() -> None:
    memory = DuplicateMemory()
    event = simple(extra=[("X-Event-ID", "20140101T000000")])
    assert_actions(deliver(EXAMPLE_4, event, memory), [keep()])
    assert_actions(deliver(EXAMPLE_4, event, memory), [discard()])
    # The same value under the other handle is not a duplicate.
    ticket = simple(
        to="support@example.com",
        subject="fileserver down",
        extra=[("X-Ticket-ID", "20140101T000000")],
    )
    assert_actions(deliver(EXAMPLE_4, ticket, memory), [keep()])
    assert_actions(deliver(EXAMPLE_4, ticket, memory), [keep("\\Seen")])
    other = simple(
        to="support@example.com", subject="printer", extra=[("X-Ticket-ID", "20140101T000000")]
    )
    assert_actions(deliver(EXAMPLE_4, other, memory), [keep()])


def test_3_3_seconds_zero_is_never_a_duplicate() -> None:
    script = 'require "duplicate";\nif duplicate :seconds 0 { discard; }\n'
    memory = DuplicateMemory()
    for _ in range(2):
        assert_actions(deliver(script, with_id("<z@example.org>"), memory), [keep()])


def test_3_3_huge_seconds_are_clamped_not_an_error() -> None:
    script = 'require "duplicate";\nif duplicate :seconds 2000000000 { discard; }\n'
    memory = DuplicateMemory()
    assert_actions(deliver(script, with_id("<h@example.org>"), memory), [keep()])
    assert_actions(deliver(script, with_id("<h@example.org>"), memory), [discard()])


def test_3_1_errors() -> None:
    refuses('require "duplicate";\nif duplicate :header "a" :uniqueid "b" { discard; }\n')
    refuses("if duplicate { discard; }\n")
    # An invalid header name is no error: the test is false.
    script = 'require "duplicate";\nif duplicate :header "Bad Name:" { discard; }\n'
    memory = DuplicateMemory()
    for _ in range(2):
        assert_actions(deliver(script, simple(), memory), [keep()])
    refused_or_fails(
        'require "duplicate";\nif duplicate :seconds 1 :seconds 2 { discard; }\n', simple()
    )


def test_examples_parse() -> None:
    for script in [EXAMPLE_1, *EQUIVALENT, EXAMPLE_2, EXAMPLE_4]:
        assert parse(script.replace("\n", "\r\n")).commands
        compile_ok(script)
