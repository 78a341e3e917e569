"""RFC 5232 (imap4flags) example scripts as test cases.

Flags compare as a set of case-insensitive words: rfc5232:3 lets an
implementation reorder them, change their case and drop duplicates.
"""

from __future__ import annotations

import pytest
from _sieve import (
    assert_actions,
    big,
    compile_ok,
    discard,
    fileinto,
    keep,
    refuses,
    run,
    simple,
)

from estafeta.sieve import parse

MB = 1024 * 1024

# rfc5232:3.1 -- a fragment; wrapped with its require.
SETFLAG = """\
if size :over 500K {
    setflag "\\\\Deleted";
}
"""


def test_3_1_setflag_applies_to_the_implicit_keep() -> None:
    script = 'require "imap4flags";\n' + SETFLAG
    assert_actions(run(script, big(600 * 1024)), [keep("\\Deleted")])
    assert_actions(run(script, simple()), [keep()])


# rfc5232:3.1 -- a fragment; wrapped with its require.
SETFLAG_VARIABLE = """\
if header :contains "from" "boss@frobnitzm.example.edu" {
    setflag "flagvar" "\\\\Flagged";
    fileinto :flags "${flagvar}" "INBOX.From Boss";
}
"""


def test_3_1_setflag_into_a_variable() -> None:
    script = 'require ["imap4flags", "variables", "fileinto"];\n' + SETFLAG_VARIABLE
    boss = simple(from_="Boss <boss@frobnitzm.example.edu>")
    assert_actions(run(script, boss), [fileinto("INBOX.From Boss", "\\Flagged")])
    # The named variable is not the internal one: the implicit keep has none.
    assert_actions(run(script, simple()), [keep()])


# rfc5232:3.2 -- four ways to the same flag set.
ADDFLAG_FORMS = [
    'addflag "flagvar" "\\\\Deleted";\naddflag "flagvar" "\\\\Answered";\n',
    'addflag "flagvar" ["\\\\Deleted", "\\\\Answered"];\n',
    'addflag "flagvar" "\\\\Deleted \\\\Answered";\n',
    'addflag "flagvar" "\\\\Answered \\\\Deleted";\n',
]


@pytest.mark.parametrize("form", ADDFLAG_FORMS)
def test_3_2_addflag_forms_are_equivalent(form: str) -> None:
    script = 'require ["imap4flags", "variables"];\n' + form + 'keep :flags "${flagvar}";\n'
    assert_actions(run(script, simple()), [keep("\\Answered", "\\Deleted")])


def test_3_2_addflag_is_additive_and_spaces_collapse() -> None:
    script = (
        'require "imap4flags";\n'
        'addflag "  \\\\Seen   ";\naddflag ["", "$Label1  $Label2"];\naddflag "\\\\seen";\n'
    )
    assert_actions(run(script, simple()), [keep("\\Seen", "$Label1", "$Label2")])


# rfc5232:3.3 -- a fragment; wrapped with its require.
REMOVEFLAG = """\
if header :contains "Disposition-Notification-To"
   "mel@example.com" {
    addflag "flagvar" "$MDNRequired";
}
if header :contains "from" "imap@cac.washington.example.edu" {
    removeflag "flagvar" "$MDNRequired";
    fileinto :flags "${flagvar}" "INBOX.imap-list";
}
"""


def test_3_3_removeflag() -> None:
    script = 'require ["imap4flags", "variables", "fileinto"];\n' + REMOVEFLAG
    dnt = ("Disposition-Notification-To", "Mel <mel@example.com>")
    both = simple(from_="imap@cac.washington.example.edu", extra=[dnt])
    assert_actions(run(script, both), [fileinto("INBOX.imap-list")])
    assert_actions(
        run(script, simple(from_="imap@cac.washington.example.edu")), [fileinto("INBOX.imap-list")]
    )
    assert_actions(run(script, simple(extra=[dnt])), [keep()])


def test_3_3_removeflag_is_case_insensitive_and_ignores_unset_flags() -> None:
    script = (
        'require "imap4flags";\n'
        'setflag "\\\\Seen $Junk Other";\nremoveflag ["$JUNK", "", "\\\\Deleted"];\n'
    )
    assert_actions(run(script, simple()), [keep("\\Seen", "Other")])


def test_2_unsettable_and_invalid_flags_are_ignored() -> None:
    # rfc5232:2: \Recent cannot be set; a flag failing the IMAP syntax
    # check (non-ASCII, "(") is ignored, not an error.
    script = 'require "imap4flags";\nsetflag ["\\\\Recent", "\\\\Seen", "Fl\u00e4g", "a(b"];\n'
    assert_actions(run(script, simple()), [keep("\\Seen")])


# rfc5232:4 -- the hasflag examples, each wrapped in an if.
@pytest.mark.parametrize(
    ("setup", "test", "value"),
    [
        ('setflag "A B";', 'hasflag :is "b A"', True),
        ('setflag "A B";', 'hasflag ["b","A"]', True),
        ('setflag "A B";', 'hasflag "C"', False),
        *[
            (
                'set "MyVar" "NonJunk Junk gnus-forward $Forwarded NotJunk JunkRecorded '
                '$Junk $NotJunk";',
                test,
                value,
            )
            for test, value in [
                ('hasflag :contains "MyVar" "Junk"', True),
                ('hasflag :contains "MyVar" "forward"', True),
                ('hasflag :contains "MyVar" ["label", "forward"]', True),
                ('hasflag :contains "MyVar" ["junk", "forward"]', True),
                ('hasflag :contains "MyVar" "junk forward"', True),
                ('hasflag :contains "MyVar" "forward junk"', True),
                ('hasflag :contains "MyVar" "label"', False),
                ('hasflag :contains "MyVar" ["label1", "label2"]', False),
            ]
        ],
        (
            'set "MyFlags" "A B";',
            'hasflag :count "ge" :comparator "i;ascii-numeric" "MyFlags" "2"',
            True,
        ),
        (
            'set "MyFlags" "A B a";',
            'hasflag :count "ge" :comparator "i;ascii-numeric" "MyFlags" "3"',
            False,
        ),
    ],
)
def test_4_hasflag(setup: str, test: str, value: bool) -> None:
    script = (
        'require ["imap4flags", "variables", "relational", "comparator-i;ascii-numeric"];\n'
        f"{setup}\nif {test} {{ discard; }}\n"
    )
    internal = ("A", "B") if setup.startswith("setflag") else ()
    assert_actions(run(script, simple()), [discard()] if value else [keep(*internal)])


# rfc5232:5 -- :flags replaces the internal variable for this action.
def test_5_flags_argument() -> None:
    script = (
        'require ["imap4flags", "fileinto"];\n'
        'setflag "\\\\Seen";\n'
        'fileinto :flags "\\\\Deleted" "INBOX.From Boss";\n'
        'fileinto "Archive";\n'
    )
    assert_actions(
        run(script, simple()),
        [fileinto("INBOX.From Boss", "\\Deleted"), fileinto("Archive", "\\Seen")],
    )


def test_3_variable_name_needs_variables() -> None:
    refuses('require "imap4flags";\nsetflag "flagvar" "\\\\Seen";\n')
    refuses('setflag "\\\\Seen";\n')


# rfc5232:9 -- as printed: "remove" is not a command.
EXTENDED_AS_PRINTED = """\
#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto", "imap4flags", "variables"];

#
# Move large messages to a special mailbox
#
if size :over 1M
        {
        addflag "MyFlags" "Big";
        if header :is "From" "boss@company.example.com"
                   {
# The message will be marked as "\\Flagged Big" when filed into
# mailbox "Big messages"
                   addflag "MyFlags" "\\\\Flagged";
                   }
        fileinto :flags "${MyFlags}" "Big messages";
        }

if header :is "From" "grandma@example.net"
        {
        addflag "MyFlags" ["\\\\Answered", "$MDNSent"];
# If the message is bigger than 1Mb it will be marked as
# "Big \\Answered $MDNSent" when filed into mailbox "grandma".
# If the message is shorter than 1Mb it will be marked as
# "\\Answered $MDNSent"
        fileinto :flags "${MyFlags}" "GrandMa";
        }

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter folder
#
if header :is "Sender" "owner-ietf-mta-filters@example.org"
        {
        set "MyFlags" "\\\\Flagged $Work";
# Message will have both "\\Flagged" and $Work flags
        keep :flags "${MyFlags}";
        }

#
# Keep all messages to or from people in my company
#
elsif anyof address :domain :is ["From", "To"] "company.example.com"
        {
        keep :flags "${MyFlags}"; # keep in "Inbox" folder
        }

# Try to catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (not address :all :contains
               ["To", "Cc"] "me@company.example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        remove "MyFlags" "\\\\Flagged";
        fileinto :flags "${MyFlags}" "spam";
        }
else
        {
        # Move all other external mail to "personal"
        # folder.
        fileinto :flags "${MyFlags}" "personal";
        }
"""

# Corrected: "removeflag", and the test list of the second anyof in
# parentheses (rfc5228:5.3 takes a test-list).
EXTENDED = EXTENDED_AS_PRINTED.replace('remove "MyFlags"', 'removeflag "MyFlags"').replace(
    'elsif anyof address :domain :is ["From", "To"] "company.example.com"',
    'elsif anyof (address :domain :is ["From", "To"] "company.example.com")',
)


def test_9_extended_example() -> None:
    refuses(EXTENDED_AS_PRINTED)
    me = "me@company.example.com"
    boss_big = big(2 * MB, from_="boss@company.example.com", to=me)
    assert_actions(
        run(EXTENDED, boss_big),
        [fileinto("Big messages", "Big", "\\Flagged"), keep("Big", "\\Flagged")],
    )
    grandma = simple(from_="grandma@example.net", to=me)
    assert_actions(
        run(EXTENDED, grandma),
        [fileinto("GrandMa", "\\Answered", "$MDNSent"), keep("\\Answered", "$MDNSent")],
    )
    grandma_big = big(2 * MB, from_="grandma@example.net", to=me)
    assert_actions(
        run(EXTENDED, grandma_big),
        [
            fileinto("Big messages", "Big"),
            fileinto("GrandMa", "Big", "\\Answered", "$MDNSent"),
            keep("Big", "\\Answered", "$MDNSent"),
        ],
    )
    listmail = simple(
        from_="a@example.net",
        to="list@example.org",
        extra=[("Sender", "owner-ietf-mta-filters@example.org")],
    )
    assert_actions(run(EXTENDED, listmail), [keep("\\Flagged", "$Work")])
    spam = simple(from_="a@example.net", to="b@example.net")
    assert_actions(run(EXTENDED, spam), [fileinto("spam")])
    spam_big = big(2 * MB, from_="a@example.net", to="b@example.net")
    assert_actions(
        run(EXTENDED, spam_big), [fileinto("Big messages", "Big"), fileinto("spam", "Big")]
    )
    personal = simple(from_="a@example.net", to="b@example.net", extra=[("Cc", me)])
    assert_actions(run(EXTENDED, personal), [fileinto("personal")])


def test_examples_parse() -> None:
    for script in [SETFLAG, SETFLAG_VARIABLE, REMOVEFLAG, EXTENDED]:
        assert parse(script.replace("\n", "\r\n")).commands
    compile_ok('require "imap4flags";\n' + SETFLAG)
