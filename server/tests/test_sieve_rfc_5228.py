"""RFC 5228 (Sieve) example scripts as test cases.

Each script is copied from the RFC (indentation aside) and cited as
rfc5228:SECTION; fragments are wrapped in the smallest `if` that shows
their result.  Messages A and B are those of rfc5228:1.2.
"""

from __future__ import annotations

import pytest
from _sieve import (
    MESSAGE_A,
    MESSAGE_B,
    assert_actions,
    assert_implicit_keep_after_error,
    big,
    build,
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

# rfc5228:2.3 -- hash comment.
HASH_COMMENT = """\
if size :over 100k { # this is a comment
   discard;
}
"""

# rfc5228:2.3 -- bracketed comments.
BRACKET_COMMENT = """\
if size :over 100K { /* this is a comment
   this is still a comment */ discard /* this is a comment
   */ ;
}
"""


@pytest.mark.parametrize("script", [HASH_COMMENT, BRACKET_COMMENT])
def test_2_3_comments(script: str) -> None:
    assert parse(script.replace("\n", "\r\n")).commands
    assert_actions(run(script, MESSAGE_A), [keep()])
    assert_actions(run(script, big(100 * 1024 + 1)), [discard()])
    assert_actions(run(script, big(100 * 1024)), [keep()])


# rfc5228:2.4.2.4 -- "$${hex:24 24}" is "$$$": message B is discarded.
ENCODED_CHARACTER = """\
require "encoded-character";
if header :contains "Subject" "$${hex:24 24}" {
   discard;
}
"""


def test_2_4_2_4_encoded_character_example() -> None:
    assert_actions(run(ENCODED_CHARACTER, MESSAGE_B), [discard()])
    assert_actions(run(ENCODED_CHARACTER, MESSAGE_A), [keep()])
    assert_actions(run(ENCODED_CHARACTER, simple(subject="costs $$ only")), [keep()])


# rfc5228:2.4.2.4 -- the table of valid and invalid encodings.
ENCODINGS = [
    ("$${hex:40}", "$@"),
    ("${hex: 40 }", "@"),
    ("${HEX: 40}", "@"),
    ("${hex:40", "${hex:40"),
    ("${hex:400}", "${hex:400}"),
    ("${hex:4${hex:30}}", "${hex:40}"),
    ("${unicode:40}", "@"),
    ("${ unicode:40}", "${ unicode:40}"),
    ("${UNICODE:40}", "@"),
    ("${UnICoDE:0000040}", "@"),
    ("${Unicode:40}", "@"),
    ("${Unicode:Cool}", "${Unicode:Cool}"),
]


@pytest.mark.parametrize(("encoded", "decoded"), ENCODINGS)
def test_2_4_2_4_encoding_table(encoded: str, decoded: str) -> None:
    # Wrapped: the string is the key of a header test against a message
    # whose Subject is the decoded value.
    script = (
        'require "encoded-character";\n'
        f'if header :is :comparator "i;octet" "Subject" "{encoded}" {{ discard; }}\n'
    )
    assert_actions(run(script, simple(subject=decoded)), [discard()])
    if decoded != encoded:
        assert_actions(run(script, simple(subject=encoded)), [keep()])


@pytest.mark.parametrize("encoded", ["${unicode:200000}", "${Unicode:DF01}"])
def test_2_4_2_4_encoding_errors(encoded: str) -> None:
    # The RFC's last line lacks its closing quote; the value is the point.
    refuses(f'require "encoded-character";\nif header :is "Subject" "{encoded}" {{ discard; }}\n')


def test_2_4_2_4_without_require_nothing_is_decoded() -> None:
    # rfc5228:2.10.5: an extension not required is treated as unsupported.
    script = 'if header :is "Subject" "${hex:40}" { discard; }\n'
    assert_actions(run(script, simple(subject="${hex:40}")), [discard()])
    assert_actions(run(script, simple(subject="@")), [keep()])


def test_2_4_2_3_outbound_addresses_must_be_sieve_addresses() -> None:
    # "It is an error for a script to execute an action with a value for use
    # as an outbound address that doesn't match the sieve-address syntax":
    # refused when the string is constant, a runtime error when it is not.
    refuses('redirect "not an address";\n')
    refuses('redirect "group: a@example.org;";\n')
    script = 'require "variables";\nset "a" "not an address";\nredirect "${a}";\n'
    assert_implicit_keep_after_error(run(script, MESSAGE_A))
    named = 'redirect "Bart Simpson <bart@example.com>";\n'
    assert_actions(run(named, MESSAGE_A), [redirect("bart@example.com")])


def test_2_7_1_escaped_wildcards() -> None:
    # "?" and "*" may be escaped as "\\?" and "\\*" in strings (rfc5228:2.7.1).
    script = 'if header :matches "Subject" "a\\\\*b\\\\?" { discard; }\n'
    assert_actions(run(script, simple(subject="a*b?")), [discard()])
    assert_actions(run(script, simple(subject="axxbx")), [keep()])


def test_2_7_2_header_charsets_are_decoded() -> None:
    # rfc5228:2.7.2: header text in any MIME charset is compared as UTF-8.
    script = 'if header :contains "Subject" "caf\u00e9" { discard; }\n'
    assert_actions(run(script, simple(subject="=?ISO-8859-1?Q?caf=E9?=")), [discard()])
    assert_actions(run(script, simple(subject="=?UTF-8?B?Y2Fmw6k=?=")), [discard()])
    assert_actions(run(script, simple(subject="cafe")), [keep()])


# rfc5228:2.5.1 -- test lists.
TEST_LIST = """\
if anyof (not exists ["From", "Date"],
      header :contains "from" "fool@example.com") {
   discard;
}
"""


def test_2_5_1_test_list() -> None:
    assert_actions(run(TEST_LIST, MESSAGE_A), [keep()])
    assert_actions(run(TEST_LIST, simple(from_="A Fool <fool@example.com>")), [discard()])
    no_date = build([("From", "x@example.org"), ("Subject", "s")], "b\n")
    assert_actions(run(TEST_LIST, no_date), [discard()])


# rfc5228:2.7.3 -- i;octet is case-sensitive.
COMPARATOR = """\
if header :contains :comparator "i;octet" "Subject"
      "MAKE MONEY FAST" {
   discard;
}
"""


def test_2_7_3_comparator() -> None:
    assert_actions(run(COMPARATOR, simple(subject="You can MAKE MONEY FAST")), [discard()])
    assert_actions(run(COMPARATOR, simple(subject="You can Make Money Fast")), [keep()])


def test_2_7_3_unknown_or_unrequired_comparator_is_an_error() -> None:
    # "If the comparator is not declared with require, it is also an error".
    refuses('if header :is :comparator "i;ascii-numeric" "X" "1" { discard; }\n')
    refuses('if header :is :comparator "i;elbonia" "X" "1" { discard; }\n')
    refuses('require "comparator-i;elbonia";\n')
    compile_ok(
        'require "comparator-i;ascii-numeric";\n'
        'if header :is :comparator "i;ascii-numeric" "X" "1" { discard; }\n'
    )


# rfc5228:2.10.2 -- no action: the implicit keep is taken.
IMPLICIT_KEEP = "if size :over 500K { discard; }\n"


def test_2_10_2_implicit_keep() -> None:
    assert_actions(run(IMPLICIT_KEEP, MESSAGE_A), [keep()])
    assert_actions(run(IMPLICIT_KEEP, MESSAGE_B), [keep()])


# rfc5228:3.1 -- both messages A and B are dropped.
IF_ELSIF_DISCARD = """\
require "fileinto";
if header :contains "from" "coyote" {
   discard;
} elsif header :contains ["subject"] ["$$$"] {
   discard;
} else {
   fileinto "INBOX";
}
"""


def test_3_1_if_elsif_else_discard() -> None:
    assert_actions(run(IF_ELSIF_DISCARD, MESSAGE_A), [discard()])
    assert_actions(run(IF_ELSIF_DISCARD, MESSAGE_B), [discard()])
    other = simple(from_="someone@example.net", subject="lunch")
    assert_actions(run(IF_ELSIF_DISCARD, other), [fileinto("INBOX")])


# rfc5228:3.1 -- A to acm@, B to postmaster@, others to field@.
IF_ELSIF_REDIRECT = """\
if header :contains ["From"] ["coyote"] {
   redirect "acm@example.com";
} elsif header :contains "Subject" "$$$" {
   redirect "postmaster@example.com";
} else {
   redirect "field@example.com";
}
"""


def test_3_1_if_elsif_else_redirect() -> None:
    assert_actions(run(IF_ELSIF_REDIRECT, MESSAGE_A), [redirect("acm@example.com")])
    assert_actions(run(IF_ELSIF_REDIRECT, MESSAGE_B), [redirect("postmaster@example.com")])
    other = simple(from_="someone@example.net", subject="lunch")
    assert_actions(run(IF_ELSIF_REDIRECT, other), [redirect("field@example.com")])


@pytest.mark.parametrize(
    "script",
    [
        "if true { keep; }\nelse { discard; }\nelse { discard; }\n",
        "elsif true { keep; }\n",
        "else { keep; }\n",
        "keep;\nelse { discard; }\n",
        "if true { keep; } else if true { discard; }\n",
    ],
)
def test_3_1_misplaced_elsif_else(script: str) -> None:
    # "an elsif or else MUST only follow an if or elsif"; "else if" is
    # deliberately not allowed.
    refuses(script)


# rfc5228:3.2 -- require.
@pytest.mark.parametrize(
    "script",
    ['require ["fileinto", "reject"];\n', 'require "fileinto";\nrequire "vacation";\n'],
)
def test_3_2_require(script: str) -> None:
    assert_actions(run(script, MESSAGE_A), [keep()])


def test_3_2_require_after_a_command_and_unknown_capability() -> None:
    refuses('keep;\nrequire "fileinto";\n')
    refuses('if true { require "fileinto"; }\n')
    refuses('require "x-no-such-extension";\nkeep;\n')
    refuses('require "FILEINTO";\n')  # rfc5228:6: capability strings are case-sensitive
    refuses('fileinto "x";\n')  # rfc5228:2.10.5: fileinto without require


def test_3_3_stop_takes_the_implicit_keep() -> None:
    script = "stop;\ndiscard;\n"
    assert_actions(run(script, MESSAGE_A), [keep()])


# rfc5228:4.1 -- message A is filed into "INBOX.harassment".
FILEINTO = """\
require "fileinto";
if header :contains ["from"] "coyote" {
   fileinto "INBOX.harassment";
}
"""


def test_4_1_fileinto() -> None:
    assert_actions(run(FILEINTO, MESSAGE_A), [fileinto("INBOX.harassment")])
    assert_actions(run(FILEINTO, MESSAGE_B), [keep()])


# rfc5228:4.2 -- redirect all mail.
def test_4_2_redirect() -> None:
    script = 'redirect "bart@example.com";\n'
    assert_actions(run(script, MESSAGE_A), [redirect("bart@example.com")])
    assert_actions(run(script, MESSAGE_A, sender=""), [redirect("bart@example.com")])


# rfc5228:4.3 -- the two keep scripts are identical in effect.
KEEP_1 = "if size :under 1M { keep; } else { discard; }\n"
KEEP_2 = "if not size :under 1M { discard; }\n"


@pytest.mark.parametrize("script", [KEEP_1, KEEP_2])
def test_4_3_keep(script: str) -> None:
    assert_actions(run(script, MESSAGE_A), [keep()])
    assert_actions(run(script, big(1024 * 1024)), [discard()])
    assert_actions(run(script, big(1024 * 1024 - 1)), [keep()])


# rfc5228:4.4 -- mail from idiot@example.com is thrown out.
DISCARD = """\
if header :contains ["from"] ["idiot@example.com"] {
   discard;
}
"""


def test_4_4_discard() -> None:
    assert_actions(run(DISCARD, simple(from_="The Idiot <idiot@example.com>")), [discard()])
    assert_actions(run(DISCARD, MESSAGE_A), [keep()])


# rfc5228:5.1 -- address test.
ADDRESS = """\
if address :is :all "from" "tim@example.com" {
   discard;
}
"""


def test_5_1_address() -> None:
    assert_actions(run(ADDRESS, simple(from_="Tim <tim@example.com>")), [discard()])
    assert_actions(run(ADDRESS, simple(from_='"tim@example.com" <other@example.com>')), [keep()])
    assert_actions(run(ADDRESS, simple(from_="a@example.org, tim@EXAMPLE.com")), [discard()])
    assert_actions(run(ADDRESS, MESSAGE_A), [keep()])


# rfc5228:5.2 and 5.3 -- the allof and anyof tables, each wrapped in an if.
@pytest.mark.parametrize(
    ("test", "value"),
    [
        ("allof (false, false)", False),
        ("allof (false, true)", False),
        ("allof (true,  true)", True),
        ("anyof (false, false)", False),
        ("anyof (false, true)", True),
        ("anyof (true,  true)", True),
    ],
)
def test_5_2_5_3_allof_anyof(test: str, value: bool) -> None:
    result = run(f"if {test} {{ discard; }}\n", MESSAGE_A)
    assert_actions(result, [discard()] if value else [keep()])


# rfc5228:5.4 -- envelope test.
ENVELOPE = """\
require "envelope";
if envelope :all :is "from" "tim@example.com" {
   discard;
}
"""


def test_5_4_envelope() -> None:
    assert_actions(run(ENVELOPE, MESSAGE_A, sender="tim@example.com"), [discard()])
    assert_actions(run(ENVELOPE, MESSAGE_A, sender="TIM@example.com"), [discard()])
    assert_actions(run(ENVELOPE, MESSAGE_A), [keep()])
    assert_actions(run(ENVELOPE, MESSAGE_A, sender=""), [keep()])


def test_5_4_null_reverse_path_is_the_empty_string() -> None:
    script = 'require "envelope";\nif envelope :domain :is "from" "" { discard; }\n'
    assert_actions(run(script, MESSAGE_A, sender=""), [discard()])
    assert_actions(run(script, MESSAGE_A), [keep()])


# rfc5228:5.5 -- throw out mail without From and Date.
EXISTS = """\
if not exists ["From","Date"] {
   discard;
}
"""


def test_5_5_exists() -> None:
    assert_actions(run(EXISTS, MESSAGE_A), [keep()])
    assert_actions(run(EXISTS, build([("From", "a@example.org")], "b\n")), [discard()])
    assert_actions(run(EXISTS, build([("Date", "Tue, 1 Apr 1997 09:06:31 -0800")])), [discard()])


# rfc5228:5.7 -- the X-Caffeine table and the "absent or blank" idiom.
@pytest.mark.parametrize(
    ("test", "value"),
    [
        ('header :is ["X-Caffeine"] [""]', False),
        ('header :contains ["X-Caffeine"] [""]', True),
        ('header :contains ["X-Decaf"] [""]', False),
        ('header :is "X-Caffeine" "C8H10N4O2"', True),
        ('header :is "From:" "coyote@desert.example.org"', False),
    ],
)
def test_5_7_header(test: str, value: bool) -> None:
    msg = simple(from_="coyote@desert.example.org", extra=[("X-Caffeine", "C8H10N4O2")])
    result = run(f"if {test} {{ discard; }}\n", msg)
    assert_actions(result, [discard()] if value else [keep()])


def test_5_7_absent_or_blank() -> None:
    script = 'if not header :matches "Cc" "?*" { discard; }\n'
    assert_actions(run(script, simple()), [discard()])
    assert_actions(run(script, simple(extra=[("Cc", "   ")])), [discard()])
    assert_actions(run(script, simple(extra=[("Cc", "x@example.org")])), [keep()])


def test_5_9_size_exactly_4000_is_neither_over_nor_under() -> None:
    script = "if anyof (size :over 4000, size :under 4000) { discard; }\n"
    assert_actions(run(script, big(4000)), [keep()])
    assert_actions(run(script, big(4001)), [discard()])
    assert_actions(run(script, big(3999)), [discard()])


# rfc5228:9 -- the extended example (a page break removed).
EXTENDED = """\
#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"""


def test_9_extended_example() -> None:
    def msg(
        from_: str, to: str, subject: str = "hi", extra: list[tuple[str, str]] | None = None
    ) -> bytes:
        return simple(from_=from_, to=to, subject=subject, extra=extra or [])

    listmail = msg(
        "a@lists.example.net", "list@imc.org", extra=[("Sender", "owner-ietf-mta-filters@imc.org")]
    )
    assert_actions(run(EXTENDED, listmail), [fileinto("filter")])
    # From or To in the company's domain: an explicit keep.
    assert_actions(run(EXTENDED, msg("boss@example.com", "x@elsewhere.example")), [keep()])
    assert_actions(run(EXTENDED, msg("a@example.net", "me@example.com")), [keep()])
    # Not to me (me@ only in Cc/Bcc escapes the company rule above).
    assert_actions(run(EXTENDED, msg("a@example.net", "b@example.net")), [fileinto("spam")])
    cc_me = [("Cc", "Me <me@example.com>")]
    assert_actions(
        run(EXTENDED, msg("a@example.net", "b@example.net", extra=cc_me)), [fileinto("personal")]
    )
    spam = msg("a@example.net", "b@example.net", "MAKE MONEY FAST!", extra=cc_me)
    assert_actions(run(EXTENDED, spam), [fileinto("spam")])
    dipl = msg("a@example.net", "b@example.net", "University diplomas", extra=cc_me)
    assert_actions(run(EXTENDED, dipl), [fileinto("spam")])


def test_every_example_parses() -> None:
    for script in [
        HASH_COMMENT,
        BRACKET_COMMENT,
        ENCODED_CHARACTER,
        TEST_LIST,
        COMPARATOR,
        IMPLICIT_KEEP,
        IF_ELSIF_DISCARD,
        IF_ELSIF_REDIRECT,
        FILEINTO,
        KEEP_1,
        KEEP_2,
        DISCARD,
        ADDRESS,
        ENVELOPE,
        EXISTS,
        EXTENDED,
    ]:
        assert parse(script.replace("\n", "\r\n")).commands
