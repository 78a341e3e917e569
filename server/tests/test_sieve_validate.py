"""The Sieve validator: every problem a SieveError at the right line:column."""

from __future__ import annotations

import contextlib

import pytest

from estafeta.sieve import SUPPORTED, Limits, SieveError, compile_script
from estafeta.sieve.signatures import COMMANDS, TESTS


def refused(text: str, **kwargs: object) -> SieveError:
    with pytest.raises(SieveError) as info:
        compile_script(text, **kwargs)  # type: ignore[arg-type]
    return info.value


def at(text: str, line: int, column: int, words: str, **kwargs: object) -> None:
    """``text`` is refused at line:column with a message containing ``words``."""
    err = refused(text, **kwargs)
    assert (err.line, err.column) == (line, column), str(err)
    assert words in err.message, str(err)
    assert str(err).startswith(f"{line}:{column}: ")


def test_supported_capabilities_compile() -> None:
    script = "require [" + ", ".join(f'"{c}"' for c in sorted(SUPPORTED)) + "];\nkeep;\n"
    compiled = compile_script(script, name="all")
    assert compiled.name == "all"
    assert "vacation-seconds" in compiled.requires


def test_require_unknown_and_restricted() -> None:
    at('require ["fileinto", "frobnicate"];\n', 1, 22, "unsupported extension 'frobnicate'")
    # The allowed set can be narrowed (ManageSieve can advertise less).
    at('require "vacation";\n', 1, 9, "unsupported", extensions=frozenset({"fileinto"}))
    compile_script('require "fileinto";\n', extensions=frozenset({"fileinto"}))


def test_require_placement() -> None:
    at('keep;\nrequire "fileinto";\n', 2, 1, "before any other command")
    at('if true { require "fileinto"; }\n', 1, 11, "before any other command")
    compile_script('require "fileinto";\nrequire "envelope";\nkeep;\n')


def test_if_chain_structure() -> None:
    at("elsif true { keep; }\n", 1, 1, "without a preceding if")
    at("keep;\nelse { keep; }\n", 2, 1, "without a preceding if")
    at("if true { keep; }\nkeep;\nelse { keep; }\n", 3, 1, "without a preceding if")
    refused("if true keep;\n")  # the parser wants the block
    at("keep { }\n", 1, 1, "takes no block")
    at("if { keep; }\n", 1, 1, "exactly one test")
    refused("if true, false { keep; }\n")  # the parser's error
    at("else true { keep; }\n", 1, 1, "")


def test_unknown_names() -> None:
    at("frobnicate;\n", 1, 1, "unknown command 'frobnicate'")
    at("if frob { keep; }\n", 1, 4, "unknown test 'frob'")
    at("if keep { keep; }\n", 1, 4, "is a command, not a test")
    at("header;\n", 1, 1, "is a test, not a command")
    at('if header :frob "a" "b" { keep; }\n', 1, 11, "unknown tagged argument :frob")


def test_extension_needs_require() -> None:
    at('fileinto "x";\n', 1, 1, 'needs require "fileinto"')
    at('require "fileinto";\nfileinto :copy "x";\n', 2, 10, 'needs require "copy"')
    at('if header :regex "a" "b" { keep; }\n', 1, 11, 'needs require "regex"')
    at('if header :count "ge" "a" "1" { keep; }\n', 1, 11, 'needs require "relational"')
    at('if address :detail "to" "x" { keep; }\n', 1, 12, 'needs require "subaddress"')
    at('if header :index 1 "a" "b" { keep; }\n', 1, 11, 'needs require "index"')
    at('set "a" "b";\n', 1, 1, 'needs require "variables"')
    at('require "imap4flags";\nsetflag "v" "x";\n', 2, 1, 'needs require "variables"')
    at('require "vacation";\nvacation :seconds 5 "x";\n', 2, 10, '"vacation-seconds"')
    compile_script('require "vacation-seconds";\nvacation :seconds 5 "x";\n')
    at('require "include";\nglobal "x";\n', 2, 1, 'needs require "variables"')


def test_tag_rules() -> None:
    at('if header :is :is "a" "b" { keep; }\n', 1, 15, ":is given twice")
    at('if header :is :contains "a" "b" { keep; }\n', 1, 15, "cannot be used with :is")
    at('if address :all :domain "to" "b" { keep; }\n', 1, 17, "cannot be used with :all")
    at('if header "a" :is "b" { keep; }\n', 1, 15, "after the positional arguments")
    at("if header :comparator { keep; }\n", 1, 11, "must be followed by a string")
    at("if size 5 { keep; }\n", 1, 4, "needs :over or :under")
    at("if size :over :under 5 { keep; }\n", 1, 15, "cannot be used with :over")
    at('require "relational";\nif header :value "gx" "a" "1" { keep; }\n', 2, 18, "relation")


def test_argument_types_and_counts() -> None:
    at('redirect ["a@b.example"];\n', 1, 10, "expected a string")
    at("redirect 5;\n", 1, 10, "expected a string")
    at('if size :over "5" { keep; }\n', 1, 15, "expected a number")
    at('if header "a" { keep; }\n', 1, 4, "takes 2 arguments, not 1")
    at('if header "a" "b" "c" { keep; }\n', 1, 19, "takes 2 arguments, not 3")
    at('if exists "a" "b" { keep; }\n', 1, 15, "takes 1 argument, not 2")
    refused("if not true, false { keep; }\n")
    at("if not (true, false) { keep; }\n", 1, 15, "exactly one test")
    refused("if anyof () { keep; }\n")
    refused("if true (false) { keep; }\n")
    at('discard "x";\n', 1, 9, "takes 0 arguments")


def test_comparators() -> None:
    at('if header :comparator "i;frob" "a" "b" { keep; }\n', 1, 23, "unknown comparator")
    at(
        'if header :comparator "i;ascii-numeric" "a" "1" { keep; }\n',
        1,
        23,
        'needs require "comparator-i;ascii-numeric"',
    )
    numeric = 'require "comparator-i;ascii-numeric";\n'
    at(
        numeric + 'if header :contains :comparator "i;ascii-numeric" "a" "1" { keep; }\n',
        2,
        4,
        "cannot be used with comparator",
    )
    compile_script(numeric + 'if header :comparator "i;ascii-numeric" "a" "1" { keep; }\n')
    # Comparator names are case-insensitive; i;octet needs no require.
    compile_script('if header :comparator "I;Octet" :matches "a" "*" { keep; }\n')


def test_regex_patterns_checked_at_upload() -> None:
    regex = 'require "regex";\n'
    at(regex + 'if header :regex "s" "(" { keep; }\n', 2, 4, "invalid regular expression")
    at(regex + f'if header :regex "s" "{"a" * 1025}" {{ keep; }}\n', 2, 4, "longer than")
    heavy = "((a{100}){100}){100}"
    at(regex + f'if header :regex "s" "{heavy}" {{ keep; }}\n', 2, 4, "counted repetitions")
    compile_script(regex + 'if header :regex "s" "^[[:alpha:]]+\\\\.(a|b){1,3}$" { keep; }\n')
    # Built from variables: checked when run.
    compile_script('require ["regex", "variables"];\nif header :regex "s" "${x}(" { keep; }\n')


def test_variables_names_and_references() -> None:
    v = 'require "variables";\n'
    at(v + 'set "1" "x";\n', 2, 1, "invalid variable name")
    at(v + 'set "a-b" "x";\n', 2, 1, "invalid variable name")
    at(v + 'set "global.a" "x";\n', 2, 1, "invalid variable name")  # no include
    at(v + 'set "${a}" "x";\n', 2, 1, "constant")
    at(v + 'set :lower :upper "a" "x";\n', 2, 12, "cannot be used with :lower")
    at(v + 'set :quoteregex "a" "x";\n', 2, 5, 'needs require "regex"')
    at(v + 'keep :flags "x";\n', 2, 6, 'needs require "imap4flags"')
    at(v + 'if string "${100}" "" { keep; }\n', 2, 11, "at most ${99}")
    at(v + 'if string "${foo.bar}" "" { keep; }\n', 2, 11, "unknown variable namespace")
    compile_script(v + 'if string "${099} ${Foo} ${a.}" "" { keep; }\n')
    compile_script('require ["variables", "include"];\nset "global.a" "${global.b}";\n')
    at('require ["variables", "include"];\nset "x" "${global.1}";\n', 2, 9, "invalid global")
    # Without "variables", "${...}" is plain text.
    compile_script('if header :is "s" "${foo.bar}" { keep; }\n')
    many = v + "".join(f'set "v{i}" "x";\n' for i in range(11))
    at(many, 12, 1, "more than 10 variables", limits=Limits(max_variables=10))


def test_include_and_global() -> None:
    inc = 'require "include";\n'
    at(inc + 'include :personal :global "x";\n', 2, 19, "cannot be used with :personal")
    at(inc + 'include "";\n', 2, 1, "not a script name")
    at(inc + f'include "{"n" * 129}";\n', 2, 1, "not a script name")
    at(inc + 'include "a\\u0085";\n'.replace("\\u0085", "\u0085"), 2, 1, "not a script name")
    both = 'require ["include", "variables"];\n'
    at(both + 'include "${x}";\n', 2, 1, "constant")
    at(both + 'global "1";\n', 2, 1, "invalid variable name")
    at(both + 'global "global.x";\n', 2, 1, "invalid variable name")
    compile_script(both + 'global ["a", "B"];\ninclude :global :once :optional "x";\nreturn;\n')


def test_extension_specific_checks() -> None:
    at('require "editheader";\naddheader "X Y" "v";\n', 2, 1, "not a header field name")
    at('require "editheader";\ndeleteheader "X:" ;\n', 2, 1, "not a header field name")
    at('require "editheader";\ndeleteheader :last "X";\n', 2, 1, ":last needs :index")
    at('require "index";\nif header :last "a" "b" { keep; }\n', 2, 4, ":last needs :index")
    at('require "index";\nif header :index 0 "a" "b" { keep; }\n', 2, 4, "counts from 1")
    date = 'require "date";\n'
    at(date + 'if currentdate :zone "0100" "hour" "1" { keep; }\n', 2, 4, "zone")
    at(date + 'if currentdate :zone "+2400" "hour" "1" { keep; }\n', 2, 4, "zone")
    at(date + 'if currentdate "fortnight" "1" { keep; }\n', 2, 4, "unknown date part")
    at(date + 'if date :zone "+0100" :originalzone "d" "year" "1" { keep; }\n', 2, 23, "cannot")
    at('require "envelope";\nif envelope "bcc" "x" { keep; }\n', 2, 4, "unknown part 'bcc'")
    at('redirect "not an address";\n', 1, 1, "not an address")
    at('redirect "a@b.example, c@d.example";\n', 1, 1, "not an address")
    at('redirect "group: a@b.example;";\n', 1, 1, "not an address")
    compile_script('redirect "Someone <a@b.example>";\n')
    at('require "vacation";\nvacation :from "x" "r";\n', 2, 1, "not an address")
    at('require "vacation";\nvacation :days 1 :seconds 2 "r";\n', 2, 18, "")
    at('require "duplicate";\nif duplicate :header "a" :uniqueid "b" { keep; }\n', 2, 26, "")
    at('require "body";\nif body :raw :text "x" { keep; }\n', 2, 14, "cannot be used with :raw")
    at('require "fileinto";\nfileinto "";\n', 2, 1, "empty mailbox name")


def test_only_sieve_errors_escape() -> None:
    # Whatever the input, compile_script raises SieveError or returns.
    inputs: list[str | bytes] = ["", "\x00", b"\xff\xfe", "if", 'require ["x"', "if true {"]
    for text in [*inputs, "}" * 50]:
        with contextlib.suppress(SieveError):
            compile_script(text)


def test_signature_table_is_consistent() -> None:
    for table in (COMMANDS, TESTS):
        for name, sig in table.items():
            assert name == name.lower()
            for tag, spec in sig.tags.items():
                assert tag == tag.lower()
                assert all(ext in SUPPORTED for ext in spec.ext), (name, tag)
            assert all(ext in SUPPORTED for ext in sig.ext), name
