"""RFC 6609 (include) example scripts as test cases.

Included scripts come from a Repository (tests/_sieve.py) through
ctx.load_include, as the delivery layer's ScriptStore would give them.
"""

from __future__ import annotations

from typing import Any

from _sieve import (
    Repository,
    assert_actions,
    assert_implicit_keep_after_error,
    compile_ok,
    fileinto,
    keep,
    refused_or_fails,
    refuses,
    reject,
    run,
    simple,
    vacation,
)

from estafeta.sieve import Result, parse

# rfc6609:3.2 -- the user's four scripts and the site's one.
DEFAULT = """\
require ["include"];
include :personal "always_allow";
include :global "spam_tests";
include :personal "spam_tests";
include :personal "mailing_lists";
"""

ALWAYS_ALLOW = """\
if address :is "from" "boss@example.com"
{
    keep;
}
elsif address :is "from" "ceo@example.com"
{
    keep;
}
"""

PERSONAL_SPAM_TESTS = """\
require ["reject"];
if header :contains "Subject" "XXXX"
{
    reject "Subject XXXX is unacceptable.";
}
elsif address :is "from" "money@example.com"
{
    reject "Mail from this sender is unwelcome.";
}
"""

MAILING_LISTS = """\
require ["fileinto"];
if header :is "List-ID" "sieve.ietf.org"
{
    fileinto "lists.sieve";
}
elsif header :is "List-ID" "ietf-imapext.imc.org"
{
    fileinto "lists.imapext";
}
"""

GLOBAL_SPAM_TESTS = """\
require ["reject"];
if anyof (header :contains "Subject" "$$",
          header :contains "Subject" "Make money")
{
    reject "No thank you.";
}
"""


def repository() -> Repository:
    return Repository(
        personal={
            "default": DEFAULT,
            "always_allow": ALWAYS_ALLOW,
            "spam_tests": PERSONAL_SPAM_TESTS,
            "mailing_lists": MAILING_LISTS,
        },
        global_={"spam_tests": GLOBAL_SPAM_TESTS},
    )


def test_3_2_include_example() -> None:
    def result(**kw: Any) -> Result:
        repo = repository()
        out = run(DEFAULT, simple(**kw), load_include=repo.load)
        assert repo.loads == [
            ("personal", "always_allow"),
            ("global", "spam_tests"),
            ("personal", "spam_tests"),
            ("personal", "mailing_lists"),
        ]
        return out

    assert_actions(result(from_="Boss <boss@example.com>"), [keep()])
    assert_actions(result(from_="ceo@example.com"), [keep()])
    assert_actions(result(subject="Earn $$ now"), [reject("No thank you.")])
    assert_actions(result(subject="Make money fast"), [reject("No thank you.")])
    assert_actions(result(subject="XXXX"), [reject("Subject XXXX is unacceptable.")])
    assert_actions(
        result(from_="money@example.com"),
        [reject("Mail from this sender is unwelcome.")],
    )
    lists = [("List-ID", "sieve.ietf.org")]
    assert_actions(result(extra=lists), [fileinto("lists.sieve")])
    imapext = [("List-ID", "ietf-imapext.imc.org")]
    assert_actions(result(extra=imapext), [fileinto("lists.imapext")])
    assert_actions(result(), [keep()])


def test_3_2_requires_do_not_pass_between_scripts() -> None:
    # "always_allow" cannot use fileinto on the strength of another script.
    refuses('fileinto "x";\n')
    repo = Repository(personal={"needs": 'require "fileinto";\nfileinto "x";\n'})
    main = 'require "include";\ninclude "needs";\n'
    assert_actions(run(main, simple(), load_include=repo.load), [fileinto("x")])
    refuses('require "include";\ninclude "needs";\nfileinto "x";\n')


def test_3_2_missing_and_optional() -> None:
    repo = Repository()
    # Missing at run time is an error (never at compile time).
    compiled = compile_ok('require "include";\ninclude "nowhere";\n')
    assert_implicit_keep_after_error(run(compiled, simple(), load_include=repo.load))
    optional = 'require ["include", "fileinto"];\ninclude :optional "nowhere";\nfileinto "on";\n'
    assert_actions(run(optional, simple(), load_include=repo.load), [fileinto("on")])


def test_3_2_recursion() -> None:
    repo = Repository(
        personal={
            "a": 'require "include";\ninclude "b";\n',
            "b": 'require "include";\ninclude "a";\n',
            "self": 'require "include";\ninclude "self";\n',
            "once": 'require ["include", "fileinto"];\ninclude :once "once";\nfileinto "x";\n',
        }
    )
    for name in ("a", "self"):
        main = f'require "include";\ninclude "{name}";\n'
        assert_implicit_keep_after_error(run(main, simple(), load_include=repo.load))
    # :once: a recursive include is "already included", not an error.
    main = 'require "include";\ninclude :once "once";\n'
    assert_actions(run(main, simple(), load_include=repo.load), [fileinto("x")])


def test_3_2_once() -> None:
    repo = Repository(
        personal={"count": 'require ["include", "variables"];\nglobal "n";\nset "n" "${n}x";\n'}
    )
    main = (
        'require ["include", "variables", "fileinto"];\nglobal "n";\n'
        'include :once "count";\ninclude :once "count";\ninclude "count";\n'
        'fileinto "n-${n}";\n'
    )
    assert_actions(run(main, simple(), load_include=repo.load), [fileinto("n-xx")])


def test_3_2_stop_in_an_included_script_stops_everything() -> None:
    repo = Repository(personal={"stopper": "stop;\n", "returner": 'require "include";\nreturn;\n'})
    main = 'require ["include", "fileinto"];\ninclude "stopper";\nfileinto "after";\n'
    assert_actions(run(main, simple(), load_include=repo.load), [keep()])
    main = 'require ["include", "fileinto"];\ninclude "returner";\nfileinto "after";\n'
    assert_actions(run(main, simple(), load_include=repo.load), [fileinto("after")])


def test_3_3_return_in_the_main_script_is_stop() -> None:
    script = 'require ["include", "fileinto"];\nreturn;\nfileinto "after";\n'
    assert_actions(run(script, simple()), [keep()])


def test_3_2_location_and_name_rules() -> None:
    refuses('require "include";\ninclude :personal :global "x";\n')
    refuses('require "include";\ninclude :personal :personal "x";\n')
    refuses('require ["include", "variables"];\nset "n" "x";\ninclude "${n}";\n')
    refuses('include "x";\n')  # without require


# rfc6609:3.4.1 -- global variables as a subroutine's results.
ACTIVE = """\
require ["fileinto", "include", "variables", "relational"];
global "test";
global "test_mailbox";

set "test" "$$";
include "subject_tests";

set "test" "Make money";
include "subject_tests";

if string :count "eq" "${test_mailbox}" "1"
{
    fileinto "${test_mailbox}";
    stop;
}
"""

SUBJECT_TESTS = """\
require ["include", "variables"];
global ["test", "test_mailbox"];

if header :contains "Subject" "${test}"
{
    set "test_mailbox" "spam-${test}";
}
"""


def test_3_4_1_global() -> None:
    def result(subject: str) -> Result:
        repo = Repository(personal={"subject_tests": SUBJECT_TESTS})
        return run(ACTIVE, simple(subject=subject), load_include=repo.load)

    assert_actions(result("Win $$ today"), [fileinto("spam-$$")])
    assert_actions(result("Make money fast"), [fileinto("spam-Make money")])
    assert_actions(result("$$: Make money"), [fileinto("spam-Make money")])
    assert_actions(result("Hello"), [keep()])


def test_3_4_non_global_variables_are_private() -> None:
    repo = Repository(personal={"sets": 'require "variables";\nset "x" "inner";\n'})
    main = (
        'require ["include", "variables", "fileinto"];\nset "x" "outer";\n'
        'include "sets";\nfileinto "${x}";\n'
    )
    assert_actions(run(main, simple(), load_include=repo.load), [fileinto("outer")])


def test_3_4_1_global_rules() -> None:
    # Only with both include and variables.
    refuses('require "include";\nglobal "x";\n')
    refuses('require "variables";\nglobal "x";\n')
    # Names must be variable names; no match variables, no namespaces.
    refuses('require ["include", "variables"];\nglobal "1";\n')
    refuses('require ["include", "variables"];\nglobal "a.b";\n')
    refuses('require ["include", "variables"];\nglobal "${x}";\n')
    # After a set of the same name: an error at upload or at run time.
    refused_or_fails('require ["include", "variables"];\nset "x" "1";\nglobal "x";\n', simple())


# rfc6609:3.4.2 -- the "global" namespace.
NAMESPACE = """\
require ["variables", "include"];
set "global.i_am_on_vacation" "1";
"""

NAMESPACE_AND_COMMAND = """\
require ["variables", "include", "vacation"];
global "i_am_on_vacation";
set "global.i_am_on_vacation" "1";
if string :is "${i_am_on_vacation}" "1"
{
    vacation "It's true, I am on vacation.";
}
"""


def test_3_4_2_namespace() -> None:
    assert_actions(run(NAMESPACE, simple()), [keep()])
    result = run(NAMESPACE_AND_COMMAND, simple(subject="hi"))
    assert_actions(result, [vacation("coyote@desert.example.org", "Auto: hi"), keep()])
    # The namespace reaches an included script's globals.
    repo = Repository(
        personal={"g": 'require ["include", "variables"];\nglobal "v";\nset "v" "from-g";\n'}
    )
    main = 'require ["include", "variables", "fileinto"];\ninclude "g";\nfileinto "${global.v}";\n'
    assert_actions(run(main, simple(), load_include=repo.load), [fileinto("from-g")])


def test_3_4_2_namespace_errors() -> None:
    refuses('require ["variables", "include"];\nset "global.data.from" "me@example.com";\n')
    refuses('require ["variables", "include"];\nset "global.12" "value";\n')
    refuses('require "variables";\nset "global.x" "1";\n')


def test_examples_parse() -> None:
    for script in [
        DEFAULT,
        ALWAYS_ALLOW,
        PERSONAL_SPAM_TESTS,
        MAILING_LISTS,
        GLOBAL_SPAM_TESTS,
        ACTIVE,
        SUBJECT_TESTS,
        NAMESPACE,
        NAMESPACE_AND_COMMAND,
    ]:
        assert parse(script.replace("\n", "\r\n")).commands
        compile_ok(script)
