"""RFC 5229 (variables) example scripts as test cases.

Values are made visible with `reject "${...}"`: the reject reason is any
string, so it shows an expansion exactly (rfc5429 is required alongside).
"""

from __future__ import annotations

import pytest
from _sieve import (
    assert_actions,
    compile_ok,
    fileinto,
    keep,
    refuses,
    reject,
    run,
    simple,
)

from estafeta.sieve import parse


def value(body: str, *, subject: str = "Hello") -> str:
    """Run `body` (which ends in `reject "..."`) and return the reason."""
    script = f'require ["variables", "reject"];\n{body}'
    result = run(script, simple(subject=subject))
    actions = [a.to_json() for a in result.actions]
    assert result.errors == [], result.errors
    assert len(actions) == 1 and actions[0]["action"] == "reject", actions
    reason = actions[0]["reason"]
    assert isinstance(reason, str)
    return reason


# rfc5229:3 -- "company" holds "ACME"; no other variable is set.
@pytest.mark.parametrize(
    ("string", "expanded"),
    [
        ("&%${}!", "&%${}!"),
        ("${doh!}", "${doh!}"),
        ("${full}", ""),
        ("${company}", "ACME"),
        ("${BAD${Company}", "${BADACME"),
        ("${President, ${Company} Inc.}", "${President, ACME Inc.}"),
    ],
)
def test_3_interpretation_of_strings(string: str, expanded: str) -> None:
    assert value(f'set "company" "ACME";\nreject "{string}";\n') == expanded


# rfc5229:3.1 -- quoting is resolved before substitution; foo is "bar".
@pytest.mark.parametrize(
    ("string", "expanded"),
    [
        (r'"${fo\o}"', "bar"),
        (r'"${fo\\o}"', "${fo\\o}"),
        (r'"\${foo}"', "bar"),
        (r'"\\${foo}"', "\\bar"),
    ],
)
def test_3_1_quoting(string: str, expanded: str) -> None:
    assert value(f'set "foo" "bar";\nreject {string};\n') == expanded


# rfc5229:3.1 -- a verbatim "${beep}" through a variable.
DOLLAR = """\
set "dollar" "$";
set "text" "regarding ${dollar}{beep}";
"""


def test_3_1_dollar() -> None:
    assert value(DOLLAR + 'reject "${text}";\n') == "regarding ${beep}"


# rfc5229:3.1 -- as printed, `set "name" "Ethelbert"` lacks its ";".
ENCODED_AS_PRINTED = """\
require ["encoded-character", "variables"];
set "name" "Ethelbert"
if header :contains "Subject" "dear${hex:20 24 7b 4e}ame}" {
    # the test string is "dear Ethelbert"
}
"""

# The same with the semicolon, and an action in the (empty) block so that
# the test's result shows.
ENCODED = """\
require ["encoded-character", "variables", "fileinto"];
set "name" "Ethelbert";
if header :contains "Subject" "dear${hex:20 24 7b 4e}ame}" {
    # the test string is "dear Ethelbert"
    fileinto "matched";
}
"""


def test_3_1_encoded_character_then_variables() -> None:
    refuses(ENCODED_AS_PRINTED)
    assert_actions(run(ENCODED, simple(subject="Oh dear Ethelbert!")), [fileinto("matched")])
    assert_actions(run(ENCODED, simple(subject="dear ${Name}")), [keep()])
    assert_actions(run(ENCODED, simple(subject="dear Ethel")), [keep()])


# rfc5229:3.2 -- as printed: "fileinfo" is a typo, an unknown command.
MATCH_VARIABLES_AS_PRINTED = """\
require ["fileinto", "variables"];

if header :matches "List-ID" "*<*@*" {
    fileinto "INBOX.lists.${2}"; stop;
}

# Imagine the header
# Subject: [acme-users] [fwd] version 1.0 is out
if header :matches "Subject" "[*] *" {
    # ${1} will hold "acme-users",
    # ${2} will hold "[fwd] version 1.0 is out"
    fileinfo "INBOX.lists.${1}"; stop;
}

# Imagine the header
# To: coyote@ACME.Example.COM
if address :matches ["To", "Cc"] ["coyote@**.com",
        "wile@**.com"] {
    # ${0} is the matching address
    # ${1} is always the empty string
    # ${2} is part of the domain name ("ACME.Example")
    fileinto "INBOX.business.${2}"; stop;
} else {
    # Control wouldn't reach this block if any match was
    # successful, so no match variables are set at this
    # point.
}

if anyof (true, address :domain :matches "To" "*.com") {
    # The second test is never evaluated, so there are
    # still no match variables set.
    stop;
}
"""

MATCH_VARIABLES = MATCH_VARIABLES_AS_PRINTED.replace("fileinfo", "fileinto")


def test_3_2_match_variables() -> None:
    err = refuses(MATCH_VARIABLES_AS_PRINTED)
    assert (err.line, err.column) == (12, 5), str(err)

    lists = simple(
        to="coyote-chat@lists.example.org",
        extra=[("List-ID", "Coyote chatter <coyote-chat@lists.example.org>")],
    )
    assert_actions(run(MATCH_VARIABLES, lists), [fileinto("INBOX.lists.coyote-chat")])

    subject = simple(to="x@example.org", subject="[acme-users] [fwd] version 1.0 is out")
    assert_actions(run(MATCH_VARIABLES, subject), [fileinto("INBOX.lists.acme-users")])

    business = simple(to="coyote@ACME.Example.COM")
    assert_actions(run(MATCH_VARIABLES, business), [fileinto("INBOX.business.ACME.Example")])
    cc = simple(to="x@example.org", extra=[("Cc", "Wile <wile@acme.example.com>")])
    assert_actions(run(MATCH_VARIABLES, cc), [fileinto("INBOX.business.acme.example")])

    # None of the rules: the last `if` stops with the implicit keep.
    assert_actions(run(MATCH_VARIABLES, simple(to="someone@example.com")), [keep()])


def test_3_2_index_zero_and_leading_zeroes() -> None:
    body = 'if header :matches "Subject" "*, *" { reject "${0}|${01}|${002}|${3}"; }\n'
    assert value(body, subject="Hello, World") == "Hello, World|Hello|World|"


def test_3_2_failed_match_keeps_the_last_successful_one() -> None:
    body = (
        'if header :matches "Subject" "a*" { set "x" "1"; }\n'
        'if header :matches "Subject" "zz*" { set "x" "2"; }\n'
        'reject "${1}";\n'
    )
    assert value(body, subject="abc") == "bc"


# rfc5229:4 -- set with a multi-line string.
SET = """\
set "honorific"  "Mr";
set "first_name" "Wile";
set "last_name"  "Coyote";
set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
"""


def test_4_set() -> None:
    expected = "Dear Mr Coyote,\r\nI'm out, please leave a message after the meep.\r\n"
    assert value(SET + 'reject "${vacation}";\n') == expected
    # "set" does not affect the implicit keep.
    assert_actions(run('require "variables";\n' + SET, simple()), [keep()])


# rfc5229:4.1 -- modifier examples; "a" is "juMBlEd lETteRS".
@pytest.mark.parametrize(
    ("statement", "result"),
    [
        ('set "a" "juMBlEd lETteRS";', "juMBlEd lETteRS"),
        ('set :length "b" "${a}";', "15"),
        ('set :lower "b" "${a}";', "jumbled letters"),
        ('set :upperfirst "b" "${a}";', "JuMBlEd lETteRS"),
        ('set :upperfirst :lower "b" "${a}";', "Jumbled letters"),
        ('set :quotewildcard "b" "Rock*";', "Rock\\*"),
    ],
)
def test_4_1_modifiers(statement: str, result: str) -> None:
    name = "a" if statement.startswith('set "a"') else "b"
    body = f'set "a" "juMBlEd lETteRS";\n{statement}\nreject "${{{name}}}";\n'
    assert value(body) == result


def test_4_1_quotewildcard_matches_literally() -> None:
    body = (
        'set :quotewildcard "b" "Rock*";\n'
        'if string :matches "Rockstar" "${b}" { reject "wildcard"; }\n'
        'if string :matches "Rock*" "${b}" { reject "literal"; }\n'
    )
    assert value(body) == "literal"


@pytest.mark.parametrize(
    "statement",
    [
        'set :lower :upper "b" "x";',  # rfc5229:4.1: same precedence
        'set :lowerfirst :upperfirst "b" "x";',
        'set :reverse "b" "x";',  # unknown modifier
        'set "1" "x";',  # rfc5229:4: match variables cannot be set
        'set "a-b" "x";',  # not a variable-name
        'set "${a}" "x";',  # not a constant string
        'set "foo.bar" "x";',  # a namespace no extension allows
        'set "b";',  # value missing
    ],
)
def test_4_set_errors(statement: str) -> None:
    refuses(f'require "variables";\n{statement}\n')


def test_3_global_namespace_needs_include() -> None:
    # rfc5229:3 with rfc6609:3.4.2: a namespace without its require.
    refuses('require "variables";\nset "global.x" "1";\n')


def test_variables_need_require() -> None:
    refuses('set "a" "b";\n')
    # Without the extension "${a}" is an ordinary string.
    script = 'require "reject";\nreject "${a}";\n'
    assert_actions(run(script, simple()), [reject("${a}")])


# rfc5229:5 -- the test always succeeds.
STRING = """\
set "state" "${state} pending";
if string :matches " ${state} " "* pending *" {
    # the above test always succeeds
    reject "succeeded";
}
"""


def test_5_string() -> None:
    assert value(STRING) == "succeeded"


def test_5_string_does_not_strip_whitespace() -> None:
    body = 'if string :is " x " "x" { reject "stripped"; } else { reject "kept"; }\n'
    assert value(body) == "kept"


def test_6_variables_hold_4000_characters() -> None:
    long = "x" * 4000
    body = f'set "a" "{long}";\nset :length "n" "${{a}}";\nreject "${{n}}";\n'
    assert value(body) == "4000"


def test_examples_parse() -> None:
    for script in [DOLLAR, ENCODED, MATCH_VARIABLES, SET, STRING]:
        assert parse(script.replace("\n", "\r\n")).commands
    compile_ok('require "variables";\n' + DOLLAR)
    compile_ok('require "variables";\n' + SET)
