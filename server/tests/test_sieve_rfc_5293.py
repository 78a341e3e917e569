"""RFC 5293 (editheader) example scripts as test cases.

Result.message is the edited message (None when nothing changed).
"""

from __future__ import annotations

import pytest
from _sieve import (
    assert_actions,
    assert_implicit_keep_after_error,
    compile_ok,
    fileinto,
    header_lines,
    keep,
    redirect,
    refused_or_fails,
    refuses,
    run,
    simple,
)

from estafeta.sieve import Result, parse


def edited(result: Result, original: bytes) -> list[str]:
    """The header lines after the script; the body must be unchanged."""
    msg = result.message if result.message is not None else original
    assert msg.split(b"\r\n\r\n", 1)[1] == original.split(b"\r\n\r\n", 1)[1]
    return header_lines(msg)


# rfc5293:4 -- a fragment; wrapped with its require.
ADDHEADER = """\
/* Don't redirect if we already redirected */
if not header :contains "X-Sieve-Filtered"
        ["<kim@job.example.com>", "<kim@home.example.com>"]
{
        addheader "X-Sieve-Filtered" "<kim@job.example.com>";
        redirect "kim@home.example.com";
}
"""


def test_4_addheader() -> None:
    script = 'require "editheader";\n' + ADDHEADER
    msg = simple()
    result = run(script, msg)
    assert_actions(result, [redirect("kim@home.example.com")])
    lines = edited(result, msg)
    # Inserted at the beginning of the header by default.
    assert lines[0] == "X-Sieve-Filtered: <kim@job.example.com>"
    assert lines[1:] == header_lines(msg)
    # Already redirected once: the implicit keep, the message unchanged.
    again = simple(extra=[("X-Sieve-Filtered", "<kim@job.example.com>")])
    result = run(script, again)
    assert_actions(result, [keep()])
    assert result.message is None


def test_4_addheader_last() -> None:
    script = 'require "editheader";\naddheader :last "X-Note" "last one";\n'
    msg = simple()
    result = run(script, msg)
    assert_actions(result, [keep()])
    assert edited(result, msg) == [*header_lines(msg), "X-Note: last one"]


# rfc5293:5 -- a fragment; wrapped with its require.
DELETEHEADER_INDEX = """\
deleteheader :index 1 :contains "Delivered-To"
                        "bob@example.com";
"""


def test_5_deleteheader_index_counts_before_matching() -> None:
    script = 'require "editheader";\n' + DELETEHEADER_INDEX
    alice_first = simple(
        extra=[("Delivered-To", "alice@example.com"), ("Delivered-To", "bob@example.com")]
    )
    result = run(script, alice_first)
    assert_actions(result, [keep()])
    assert edited(result, alice_first) == header_lines(alice_first)
    bob_first = simple(
        extra=[("Delivered-To", "bob@example.com"), ("Delivered-To", "alice@example.com")]
    )
    result = run(script, bob_first)
    assert_actions(result, [keep()])
    assert [line for line in edited(result, bob_first) if line.startswith("Delivered-To")] == [
        "Delivered-To: alice@example.com"
    ]


def test_5_deleteheader_all_and_by_value() -> None:
    msg = simple(extra=[("X-Tag", "one"), ("x-tag", "Two"), ("X-Tag", "three")])
    result = run('require "editheader";\ndeleteheader "X-TAG";\n', msg)
    assert [line for line in edited(result, msg) if line.lower().startswith("x-tag")] == []
    result = run('require "editheader";\ndeleteheader :matches "X-Tag" "t*";\n', msg)
    assert [line for line in edited(result, msg) if line.lower().startswith("x-tag")] == [
        "X-Tag: one"
    ]
    # Nothing to delete is not an error, nor is an index past the end.
    for script in ['deleteheader "X-None";\n', 'deleteheader :index 9 "X-Tag";\n']:
        result = run('require "editheader";\n' + script, msg)
        assert_actions(result, [keep()])
        assert edited(result, msg) == header_lines(msg)


# rfc5293:7 -- adding then deleting leaves the message unchanged.
ADD_THEN_DELETE = """\
addheader "X-Hello" "World";
deleteheader :index 1 "X-Hello";
"""


def test_7_add_then_delete_is_unchanged() -> None:
    script = 'require "editheader";\n' + ADD_THEN_DELETE
    msg = simple()
    result = run(script, msg)
    assert_actions(result, [keep()])
    assert edited(result, msg) == header_lines(msg)


# rfc5293:7 -- deletes the first and third of three X-Hello fields.
DELETE_TWICE = """\
deleteheader :index 1 "X-Hello";
deleteheader :index 2 "X-Hello";
"""


def test_7_each_action_sees_the_current_header() -> None:
    script = 'require "editheader";\n' + DELETE_TWICE
    msg = simple(extra=[("X-Hello", "1"), ("X-Hello", "2"), ("X-Hello", "3"), ("X-Hello", "4")])
    result = run(script, msg)
    assert [line for line in edited(result, msg) if line.startswith("X-Hello")] == [
        "X-Hello: 2",
        "X-Hello: 4",
    ]


# rfc5293:7 -- the header test sees the added field.
TEST_SEES_ADDITION = """\
addheader "X-Hello" "World";
if header :contains "X-Hello" "World"
{
        fileinto "international";
}
"""


def test_7_tests_see_the_current_header() -> None:
    script = 'require ["editheader", "fileinto"];\n' + TEST_SEES_ADDITION
    assert_actions(run(script, simple()), [fileinto("international")])
    deleted = (
        'require ["editheader", "fileinto"];\n'
        'deleteheader "Subject";\n'
        'if exists "Subject" { fileinto "still"; }\n'
    )
    assert_actions(run(deleted, simple()), [keep()])


# rfc5293:7 -- one message filed, not two.
KEEP_TWICE = """\
keep;
addheader "X-Flavor" "vanilla";
keep;
"""


def test_7_edited_message_is_the_same_message() -> None:
    script = 'require "editheader";\n' + KEEP_TWICE
    result = run(script, simple())
    assert_actions(result, [keep()])


def test_6_received_and_auto_submitted_cannot_be_deleted() -> None:
    msg = simple(
        extra=[
            ("Received", "from a by b; Tue, 1 Apr 1997 09:06:31 -0800"),
            ("Auto-Submitted", "auto-generated"),
        ]
    )
    script = 'require "editheader";\ndeleteheader "Received";\ndeleteheader "auto-submitted";\n'
    result = run(script, msg)
    assert_actions(result, [keep()])  # silently ignored, no error
    assert edited(result, msg) == header_lines(msg)
    # Subject MUST be both deletable and addable.
    script = 'require "editheader";\ndeleteheader "Subject";\naddheader "Subject" "New";\n'
    result = run(script, msg)
    lines = edited(result, msg)
    assert "Subject: New" in lines and "Subject: Hello" not in lines


@pytest.mark.parametrize("name", ["X Bad", "X-Bad:", "", "X-\u00e9t\u00e9"])
def test_4_invalid_field_names_are_errors(name: str) -> None:
    refused_or_fails(f'require "editheader";\naddheader "{name}" "v";\n', simple())
    refused_or_fails(f'require "editheader";\ndeleteheader "{name}";\n', simple())


def test_5_last_without_index_is_an_error() -> None:
    refuses('require "editheader";\ndeleteheader :last "X-Hello";\n')


def test_7_an_error_keeps_the_original_header() -> None:
    # rfc5293:7: after an error, the implicit keep uses the original header.
    script = (
        'require ["editheader", "vacation"];\n'
        'addheader "X-Hello" "World";\n'
        'vacation "a";\nvacation :handle "b" "b";\n'
    )
    assert_implicit_keep_after_error(run(script, simple()))


def test_4_long_values_are_folded_or_refused() -> None:
    # rfc5293:4: a value over the line limit is encoded with folding, or an
    # error; either way no header line of the result is over 998 octets.
    value = " ".join(["word"] * 400)
    result = run(f'require "editheader";\naddheader "X-Long" "{value}";\n', simple())
    if result.errors:
        assert_implicit_keep_after_error(result)
        return
    assert result.message is not None
    head = result.message.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
    assert f"X-Long: {value}".encode() in unfolded.replace(b"  ", b" ")


def test_examples_parse() -> None:
    for script in [
        ADDHEADER,
        DELETEHEADER_INDEX,
        ADD_THEN_DELETE,
        DELETE_TWICE,
        TEST_SEES_ADDITION,
        KEEP_TWICE,
    ]:
        assert parse(script.replace("\n", "\r\n")).commands
    compile_ok('require "editheader";\n' + ADDHEADER)
