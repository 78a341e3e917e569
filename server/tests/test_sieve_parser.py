"""The Sieve lexer and parser (estafeta.sieve.parser, rfc5228:8).

Every lexical form, every error with its exact line:column and message,
the example scripts of RFC 5228 (sections 2 to 5 and the extended example
of section 9) parsed to the expected tree, "encoded-character"
(rfc5228:2.4.2.4), CRLF against LF, the limits, and invalid UTF-8.

Trees are compared in a compact form (``shape``): a command is
``(name, [arguments], [tests], block)``, a test ``(name, [arguments],
[tests])``, a tag ``":name"``, a number an int, a string its value and a
string list a list of values.  Positions are checked where they matter.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from typing import Any

import pytest

from estafeta.sieve import SieveError, ast, parse
from estafeta.sieve.parser import MAX_DEPTH, MAX_LIST_ITEMS, MAX_NODES

P = ast.Position


def shape(node: Any) -> Any:
    """The tree without positions, in the compact form above."""
    if isinstance(node, ast.Script):
        return [shape(c) for c in node.commands]
    if isinstance(node, ast.Command):
        block = None if node.block is None else [shape(c) for c in node.block]
        args = [shape(a) for a in node.arguments]
        return (node.name, args, [shape(t) for t in node.tests], block)
    if isinstance(node, ast.Test):
        return (node.name, [shape(a) for a in node.arguments], [shape(t) for t in node.tests])
    if isinstance(node, ast.Tag):
        return ":" + node.name
    if isinstance(node, ast.StringList):
        return [item.value for item in node.items]
    assert isinstance(node, ast.Number | ast.String)
    return node.value


def one(text: str | bytes) -> Any:
    """The shape of the only command of ``text``."""
    [command] = shape(parse(text))
    return command


def value(text: str) -> Any:
    """The single argument of ``keep ARG;`` (keep, because the parser knows
    no command signatures)."""
    return one(f"keep {text};")[1][0]


def error(text: str | bytes) -> tuple[int, int, str]:
    with pytest.raises(SieveError) as info:
        parse(text)
    return info.value.line, info.value.column, info.value.message


# -- lexical forms (rfc5228:8.1) ----------------------------------------


def test_identifiers_and_tags_are_case_insensitive() -> None:
    assert one("KeEp;") == ("keep", [], [], None)
    assert one("_x_1 :Is :_a9;") == ("_x_1", [":is", ":_a9"], [], None)
    assert one("IF TRUE {}") == ("if", [], [("true", [], [])], [])


# fmt: off
NUMBERS = [
    ("0", 0), ("007", 7), ("0" * 40 + "12", 12), ("9223372036854775807", 2**63 - 1),
    # rfc5228:2.4.1: K, M and G are powers of two.
    ("1K", 1024), ("1k", 1024), ("100k", 102_400), ("2M", 2 * 2**20), ("3g", 3 * 2**30),
    ("8589934591G", 2**63 - 2**30),
]
# fmt: on


@pytest.mark.parametrize(("text", "number"), NUMBERS)
def test_numbers(text: str, number: int) -> None:
    assert value(text) == number


@pytest.mark.parametrize(
    ("text", "string"),
    [
        ('""', ""),
        ('"a\\"b\\\\c"', 'a"b\\c'),  # rfc5228:2.4.2: the two escapes
        ('"\\a\\n\\t\\$"', "ant$"),  # any other backslash is dropped
        ('"\\\\\\""', '\\"'),
        ('"line 1\nline 2"', "line 1\r\nline 2"),  # line breaks become CRLF
        ('"line 1\r\nline 2"', "line 1\r\nline 2"),
        ('"a\\\nb"', "a\r\nb"),
        ('"tab\there, \x01 control"', "tab\there, \x01 control"),
        ('"# not /* a comment"', "# not /* a comment"),
        ('"\u00e9\U0001f600"', "\u00e9\U0001f600"),
        ('"${hex:40}"', "${hex:40}"),  # not decoded without require
    ],
)
def test_quoted_strings(text: str, string: str) -> None:
    assert value(text) == string


@pytest.mark.parametrize(
    ("text", "string"),
    [
        ("text:\nhello\n.\n", "hello\r\n"),  # the CRLF before "." is part of it
        ("text:\n.\n", ""),
        ("text:\n\n.\n", "\r\n"),
        ("TEXT:\nx\n.\n", "x\r\n"),  # "text:" is case-insensitive (ABNF)
        ("text: \t # a comment\na\nb\n.\n", "a\r\nb\r\n"),
        ("text:\r\na\r\n.\r\n", "a\r\n"),
        # rfc5228:2.4.2: ".." at a line start is ".", ".x" stays ".x".
        ("text:\n..\n..x\n.x\n...\n. \n.\n", ".\r\n.x\r\n.x\r\n..\r\n. \r\n"),
        ('text:\n"quotes" \\ # and no comment /*\n.\n', '"quotes" \\ # and no comment /*\r\n'),
        ("text:\n${hex:40}\n.\n", "${hex:40}\r\n"),
        ("text:\n x.\n .\n.\n", " x.\r\n .\r\n"),
    ],
)
def test_multiline_strings(text: str, string: str) -> None:
    assert value(text) == string


def test_comments() -> None:
    # rfc5228:2.3: both kinds are white space; bracket comments do not nest.
    assert shape(parse("keep; # the end")) == [("keep", [], [], None)]
    assert shape(parse("/***/keep/* ** / */;/**/")) == [("keep", [], [], None)]
    assert shape(parse("/*/ keep; */ stop;")) == [("stop", [], [], None)]
    assert shape(parse("/* a /* b */ stop;")) == [("stop", [], [], None)]
    assert shape(parse("#\n#x\nkeep;#\n")) == [("keep", [], [], None)]
    assert error("/* two\nlines */ keep @")[:2] == (2, 15)


def test_separators_need_no_white_space() -> None:
    text = 'if anyof(true,false){keep;}else{fileinto["a","b"];}'
    assert shape(parse(text)) == [
        (
            "if",
            [],
            [("anyof", [], [("true", [], []), ("false", [], [])])],
            [("keep", [], [], None)],
        ),
        ("else", [], [], [("fileinto", [["a", "b"]], [], None)]),
    ]


def test_positions() -> None:
    script = parse('# x\n  if header :is\t["a",\n "b"] "c\nd" {\n\tkeep 5;\n}\n')
    [command] = script.commands
    assert command.pos == P(2, 3)
    [test] = command.tests
    assert test.pos == P(2, 6)
    tag, names, key = test.arguments
    assert tag == ast.Tag("is", P(2, 13))
    assert names == ast.StringList((ast.String("a", P(2, 18)), ast.String("b", P(3, 2))), P(2, 17))
    assert key == ast.String("c\r\nd", P(3, 7))
    assert command.block == (ast.Command("keep", (ast.Number(5, P(5, 7)),), (), None, P(5, 2)),)
    # Columns count characters, not octets; a tab is one.
    assert error('keep "\u00e9\U0001f600" @;') == (1, 11, 'unexpected character "@"')
    assert error('keep "\u00e9\U0001f600" @;'.encode())[:2] == (1, 11)
    assert error('keep text:\na\n.\n"\u00e9" @;')[:2] == (4, 5)


def test_a_byte_order_mark_is_ignored() -> None:
    assert parse("\ufeffkeep;") == parse("keep;")
    assert parse(b"\xef\xbb\xbfkeep;") == parse("keep;")
    assert error("\ufeffkeep @;")[:2] == (1, 6)


# -- errors, with exact positions ----------------------------------------

ERRORS = [
    ("keep", 1, 5, 'expected ";" after command "keep"'),
    ("keep\n", 2, 1, 'expected ";" after command "keep"'),
    ("keep }", 1, 6, 'expected ";" after command "keep"'),
    ('keep "a" ) ;', 1, 10, 'expected ";" after command "keep"'),
    ("keep text:\na\n.\n}", 4, 1, 'expected ";" after command "keep"'),
    ("if true", 1, 8, 'expected "{" after command "if"'),
    ("if true {\n  keep;\n", 3, 1, 'missing "}" to close the block opened at 1:9'),
    ("}", 1, 1, 'expected a command, found "}"'),
    ("keep;;", 1, 6, 'expected a command, found ";"'),
    ('keep; "x";', 1, 7, "expected a command, found a string"),
    (":is;", 1, 1, 'expected a command, found ":is"'),
    ("1;", 1, 1, 'expected a command, found "1"'),
    ("if true { keep; } }", 1, 19, 'expected a command, found "}"'),
    ("keep [];", 1, 7, 'expected a string after "[", found "]"'),
    ('keep ["a",];', 1, 11, 'expected a string after ",", found "]"'),
    ('keep ["a" "b"];', 1, 11, 'expected "," or "]" in the string list, found a string'),
    ("keep [1];", 1, 7, 'expected a string after "[", found "1"'),
    ('keep ["a"', 1, 10, 'expected "," or "]" in the string list, found the end of the script'),
    ("if anyof() {}", 1, 10, 'expected a test after "(", found ")"'),
    ("if anyof(true,) {}", 1, 15, 'expected a test after ",", found ")"'),
    ("if anyof(true;) {}", 1, 14, 'expected "," or ")" in the test list, found ";"'),
    ('if anyof("a") {}', 1, 10, 'expected a test after "(", found a string'),
    ("keep :;", 1, 6, 'expected a tag name after ":"'),
    ("keep : is;", 1, 6, 'expected a tag name after ":"'),
    ("keep :1;", 1, 6, 'expected a tag name after ":"'),
    ("keep 10KB;", 1, 6, 'invalid number "10KB"'),
    ("keep 1x;", 1, 6, 'invalid number "1x"'),
    ("keep 1_0;", 1, 6, 'invalid number "1_0"'),
    ("keep 9223372036854775808;", 1, 6, 'number "9223372036854775808" is too large'),
    ("keep 8589934592G;", 1, 6, 'number "8589934592G" is too large'),
    ("keep " + "9" * 5000 + ";", 1, 6, 'number "9999999999999999999999999999999999999..." is'),
    ('keep "abc;', 1, 6, 'unterminated string: no closing "'),
    ('keep "\\";', 1, 6, 'unterminated string: no closing "'),
    ("keep;\n/* x\n", 2, 1, 'unterminated comment: "/*" without "*/"'),
    ("keep text:\nabc\n", 1, 6, 'unterminated multi-line string: no line with a lone "." ends it'),
    ("keep text:", 1, 6, "unterminated multi-line string"),
    ("keep text: # c", 1, 6, "unterminated multi-line string"),
    ("keep text: x\n.\n;", 1, 12, 'expected the end of the line after "text:"'),
    ("keep text: /* c */\n.\n;", 1, 12, 'expected the end of the line after "text:"'),
    ("keep @;", 1, 6, 'unexpected character "@"'),
    ("keep / ;", 1, 6, 'unexpected character "/"'),
    ("keep\u00a0;", 1, 5, "unexpected character U+00A0"),
    ("k\u00e9\u00e9p;", 1, 2, 'unexpected character "\u00e9"'),
    ("keep;\x01", 1, 6, "unexpected character U+0001"),
    ("\tkeep\t@", 1, 7, 'unexpected character "@"'),
    # rfc5228:2.1: NUL is never permitted, CR only before LF.
    ('keep "a\0";', 1, 8, "NUL is not allowed in a script"),
    ("# \0\nkeep;", 1, 3, "NUL is not allowed in a script"),
    ("keep;\r\nstop;\rkeep;", 2, 6, "CR not followed by LF"),
    ('keep "a\rb";', 1, 8, "CR not followed by LF"),
    ("keep;\r", 1, 6, "CR not followed by LF"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), ERRORS)
def test_errors(text: str, line: int, column: int, message: str) -> None:
    got = error(text)
    assert got[:2] == (line, column), got
    assert got[2].startswith(message), got
    assert len(got[2]) < 120 and "\n" not in got[2]
    # The same error whether the script comes as str or bytes, LF or CRLF.
    assert error(text.encode()) == got
    if "\r" not in text:
        assert error(text.replace("\n", "\r\n")) == got


@pytest.mark.parametrize(
    ("data", "line", "column"),
    [
        (b'keep "\xff";', 1, 7),
        (b'# \xc3\xa9\xe2\x82\xac\nkeep "\xff";', 2, 7),  # columns in characters
        (b"keep;\n\n  \xc3", 3, 3),  # truncated sequence at the end
        (b'keep "\xc0\xaf";', 1, 7),  # overlong "/"
        (b'keep "\xed\xa0\x80";', 1, 7),  # an encoded surrogate
        (b"# \xf4\x90\x80\x80\nkeep;", 1, 3),  # beyond U+10FFFF
        (b"\xef\xbb\xbf\xef\xbb", 1, 1),  # a BOM, then half of another
    ],
)
def test_invalid_utf8(data: bytes, line: int, column: int) -> None:
    got = error(data)
    assert got[:2] == (line, column)
    assert got[2].startswith("invalid UTF-8 (octet 0x")


def test_lone_surrogate_in_a_str() -> None:
    assert error('keep;\nkeep "a\udc80";') == (2, 8, "invalid UTF-8 (a lone surrogate)")


def test_sieve_error() -> None:
    exc = SieveError(3, 7, "bad")
    assert (exc.line, exc.column, exc.message, str(exc)) == (3, 7, "bad", "3:7: bad")
    # Rebuilt from its args (as pickle and copy do).
    clone = copy.deepcopy(exc)
    assert (clone.line, clone.column, clone.message) == (3, 7, "bad")


def test_the_tree_is_frozen_and_hashable() -> None:
    script = parse('require "x";\nif anyof (true, false) { keep ["a"]; }\n')
    assert script.requires == frozenset({"x"})
    assert hash(script) == hash(parse('require "x";\nif anyof (true, false) { keep ["a"]; }\n'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        script.commands[0].name = "stop"  # type: ignore[misc]


# -- the grammar (rfc5228:8.2) --------------------------------------------


def test_generic_grammar() -> None:
    # The parser knows no command signatures: the validator judges these.
    assert one('keep :a 1 "b" ["c"] ;') == ("keep", [":a", 1, "b", ["c"]], [], None)
    assert one("if true;") == ("if", [], [("true", [], [])], None)
    assert one("stop {}") == ("stop", [], [], [])
    assert one('x "a" y "b" z;') == ("x", ["a"], [("y", ["b"], [("z", [], [])])], None)
    tests: list[Any] = [("a", [], []), ("b", [":c"], [("d", [], [])])]
    assert one("x (a, b :c (d));") == ("x", [], tests, None)
    # "else if" is a command "else" with a test "if" (rfc5228:3.1 forbids it later).
    assert one("else if true {}") == ("else", [], [("if", [], [("true", [], [])])], [])
    # A bare string stays a String; a list of one is a StringList.
    [command] = parse('keep "a" ["a"];').commands
    assert [type(a) for a in command.arguments] == [ast.String, ast.StringList]


def test_requires_collects_top_level_require_commands() -> None:
    script = parse(
        'require "fileinto";\nrequire ["envelope", "fileinto", "body"];\n'
        'keep;\nrequire "late";\nif true { require "nested"; }\nREQUIRE 5 "x";\n'
    )
    assert script.requires == frozenset({"fileinto", "envelope", "body", "late", "x"})
    names = ["require", "require", "keep", "require", "if", "require"]
    assert [c.name for c in script.commands] == names
    assert parse("keep;").requires == frozenset()


# -- RFC 5228 examples ------------------------------------------------------

# The expected trees are written densely (fmt: off), one command a line.
DISCARD: list[Any] = [("discard", [], [], None)]
# fmt: off
RFC_EXAMPLES: list[tuple[str, str, list[Any]]] = [
    ("2.3", "if size :over 100k { # this is a comment\n   discard;\n}\n",
     [("if", [], [("size", [":over", 102_400], [])], DISCARD)]),
    ("2.3", "if size :over 100K { /* this is a comment\n   this is still a comment */ discard"
            " /* this is a comment\n   */ ;\n}\n",
     [("if", [], [("size", [":over", 102_400], [])], DISCARD)]),
    ("2.4.2.4", 'require "encoded-character";\n'
                'if header :contains "Subject" "$${hex:24 24}" {\n   discard;\n}\n',
     [("require", ["encoded-character"], [], None),
      ("if", [], [("header", [":contains", "Subject", "$$$"], [])], DISCARD)]),
    ("2.5.1", 'if anyof (not exists ["From", "Date"],\n'
              '      header :contains "from" "fool@example.com") {\n   discard;\n}\n',
     [("if", [], [("anyof", [], [("not", [], [("exists", [["From", "Date"]], [])]),
                                 ("header", [":contains", "from", "fool@example.com"], [])])],
       DISCARD)]),
    ("2.7.3", 'if header :contains :comparator "i;octet" "Subject"\n'
              '      "MAKE MONEY FAST" {\n   discard;\n}\n',
     [("if", [], [("header", [":contains", ":comparator", "i;octet", "Subject",
                              "MAKE MONEY FAST"], [])], DISCARD)]),
    ("3.1", 'require "fileinto";\nif header :contains "from" "coyote" {\n   discard;\n'
            '} elsif header :contains ["subject"] ["$$$"] {\n   discard;\n} else {\n'
            '   fileinto "INBOX";\n}\n',
     [("require", ["fileinto"], [], None),
      ("if", [], [("header", [":contains", "from", "coyote"], [])], DISCARD),
      ("elsif", [], [("header", [":contains", ["subject"], ["$$$"]], [])], DISCARD),
      ("else", [], [], [("fileinto", ["INBOX"], [], None)])]),
    ("3.1", 'if header :contains ["From"] ["coyote"] {\n   redirect "acm@example.com";\n'
            '} elsif header :contains "Subject" "$$$" {\n'
            '   redirect "postmaster@example.com";\n} else {\n'
            '   redirect "field@example.com";\n}\n',
     [("if", [], [("header", [":contains", ["From"], ["coyote"]], [])],
       [("redirect", ["acm@example.com"], [], None)]),
      ("elsif", [], [("header", [":contains", "Subject", "$$$"], [])],
       [("redirect", ["postmaster@example.com"], [], None)]),
      ("else", [], [], [("redirect", ["field@example.com"], [], None)])]),
    ("3.2", 'require ["fileinto", "reject"];\nrequire "fileinto";\nrequire "vacation";\n',
     [("require", [["fileinto", "reject"]], [], None), ("require", ["fileinto"], [], None),
      ("require", ["vacation"], [], None)]),
    ("4.2", 'redirect "bart@example.com";\n', [("redirect", ["bart@example.com"], [], None)]),
    ("4.3", "if size :under 1M { keep; } else { discard; }\n"
            "if not size :under 1M { discard; }\n",
     [("if", [], [("size", [":under", 2**20], [])], [("keep", [], [], None)]),
      ("else", [], [], DISCARD),
      ("if", [], [("not", [], [("size", [":under", 2**20], [])])], DISCARD)]),
    ("5.1", 'if address :is :all "from" "tim@example.com" {\n   discard;\n}\n',
     [("if", [], [("address", [":is", ":all", "from", "tim@example.com"], [])], DISCARD)]),
    ("5.4", 'require "envelope";\nif envelope :all :is "from" "tim@example.com" {\n'
            "   discard;\n}\n",
     [("require", ["envelope"], [], None),
      ("if", [], [("envelope", [":all", ":is", "from", "tim@example.com"], [])], DISCARD)]),
    ("5.5", 'if not exists ["From","Date"] {\n   discard;\n}\n',
     [("if", [], [("not", [], [("exists", [["From", "Date"]], [])])], DISCARD)]),
    ("5.7", 'if not header :matches "Cc" "?*" { discard; }\n',
     [("if", [], [("not", [], [("header", [":matches", "Cc", "?*"], [])])], DISCARD)]),
]
# fmt: on

# rfc5228:9, as printed (indentation kept).
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
# fmt: off
EXTENDED_SHAPE: list[Any] = [
    ("require", [["fileinto"]], [], None),
    ("if", [], [("header", [":is", "Sender", "owner-ietf-mta-filters@imc.org"], [])],
     [("fileinto", ["filter"], [], None)]),
    ("elsif", [], [("address", [":domain", ":is", ["From", "To"], "example.com"], [])],
     [("keep", [], [], None)]),
    ("elsif", [], [("anyof", [], [
        ("not", [], [("address", [":all", ":contains", ["To", "Cc", "Bcc"], "me@example.com"],
                      [])]),
        ("header", [":matches", "subject", ["*make*money*fast*", "*university*dipl*mas*"]], []),
    ])], [("fileinto", ["spam"], [], None)]),
    ("else", [], [], [("fileinto", ["personal"], [], None)]),
]
# fmt: on
ALL_EXAMPLES = [(text, expected) for _, text, expected in RFC_EXAMPLES]
ALL_EXAMPLES.append((EXTENDED, EXTENDED_SHAPE))


@pytest.mark.parametrize(("text", "expected"), ALL_EXAMPLES)
def test_rfc5228_examples(text: str, expected: list[Any]) -> None:
    assert shape(parse(text)) == expected


@pytest.mark.parametrize(("text", "expected"), ALL_EXAMPLES)
def test_crlf_and_lf_give_identical_trees(text: str, expected: list[Any]) -> None:
    lf = parse(text)
    assert parse(text.replace("\n", "\r\n")) == lf  # positions included
    assert parse(text.encode()) == lf
    assert parse(text.replace("\n", "\r\n").encode()) == lf


def test_crlf_and_lf_in_strings() -> None:
    text = 'keep text: # c\nline\n..dot\n.\n;\nkeep "a\nb" "\\\n";\n# end'
    assert parse(text) == parse(text.replace("\n", "\r\n"))


def test_extended_example_positions() -> None:
    script = parse(EXTENDED)
    assert script.requires == frozenset({"fileinto"})
    assert [c.pos for c in script.commands] == [P(5, 5), P(11, 5), P(18, 5), P(27, 5), P(34, 5)]
    [anyof] = script.commands[3].tests
    assert [t.pos for t in anyof.tests] == [P(27, 18), P(29, 18)]


# -- encoded-character (rfc5228:2.4.2.4) --------------------------------

ENCODED = 'require "encoded-character";\n'


def encoded(string: str) -> Any:
    """The value of ``string`` (as written in a script) with the extension."""
    return shape(parse(f"{ENCODED}keep {string};"))[1][1][0]


# fmt: off
ENCODINGS = [
    # The table of rfc5228:2.4.2.4.
    ("$${hex:40}", "$@"), ("${hex: 40 }", "@"), ("${HEX: 40}", "@"), ("${hex:40", "${hex:40"),
    ("${hex:400}", "${hex:400}"), ("${hex:4${hex:30}}", "${hex:40}"), ("${unicode:40}", "@"),
    ("${ unicode:40}", "${ unicode:40}"), ("${UNICODE:40}", "@"), ("${UnICoDE:0000040}", "@"),
    ("${Unicode:40}", "@"), ("${Unicode:Cool}", "${Unicode:Cool}"),
    # More.
    ("$${hex:24 24}", "$$$"), ("${hex:c3 a9}", "\u00e9"),
    ("${hex:c3}${hex:a9}", "\u00e9"),  # octets join before UTF-8 decoding
    ("${hex:4 41 0}", "\x04A\x00"),  # 1 or 2 digits each; NUL may be encoded
    ("${hex:}", "${hex:}"), ("${hex: }", "${hex: }"), ("${hex:41,42}", "${hex:41,42}"),
    ("${hex:41\\}", "A"), ("$\\{hex:41}", "A"),  # escapes are resolved first
    ("${hex:24}{hex:41}", "${hex:41}"),  # one pass only
    ("${unicode:1F600 20 e9}", "\U0001f600 \u00e9"), ("${unicode:0}", "\x00"),
    ("${unicode:10FFFF}${unicode:D7FF}${unicode:E000}", "\U0010ffff\ud7ff\ue000"),
    ("${unicode:" + "0" * 50 + "41}", "A"), ("${unicode:41 }", "A"),
    ("${unicode:4 1}", "\x04\x01"), ("${unicode:-41}", "${unicode:-41}"),
    # blank = WSP / CRLF, in a string spanning lines
    ("${hex:41\n42}", "AB"), ("${unicode:\r\n\t41\r\n}", "A"), ("${hex:41\n\n42}", "AB"),
    # Malformed, so no error (rfc5228:2.4.2.4, the note).
    ("${unicode:110000 Cool}", "${unicode:110000 Cool}"), ("${unicode:D800", "${unicode:D800"),
]
# fmt: on


@pytest.mark.parametrize(("written", "decoded"), ENCODINGS)
def test_encoded_character(written: str, decoded: str) -> None:
    assert encoded(f'"{written}"') == decoded


def test_encoded_character_in_multiline_strings() -> None:
    assert encoded("text:\n${hex:40}${unicode:\n41}\n..${hex:2e}\n.\n") == "@A\r\n.\x2e\r\n"


@pytest.mark.parametrize(
    "written",
    [
        "${unicode:200000}",
        "${Unicode:DF01}",
        "${unicode:D800}",
        "${unicode:110000}",
        "${unicode:41 DFFF}",
        "${unicode:" + "f" * 1000 + "}",
        "x\ny ${unicode:d800}",
    ],
)
def test_encoded_character_errors(written: str) -> None:
    line, column, message = error(f'{ENCODED}keep "x";\n  keep "{written}";')
    assert (line, column) == (3, 8)  # the string
    assert "is not a Unicode character" in message


def test_encoded_octets_must_be_utf8() -> None:
    assert error(f'{ENCODED}keep "${{hex:ff}}";') == (
        2,
        6,
        "the ${hex:...} octets in this string are not valid UTF-8",
    )
    assert error(f'{ENCODED}keep "${{hex:c3}}";')[:2] == (2, 6)


def test_encoded_character_needs_an_earlier_top_level_require() -> None:
    raw = '"${hex:40}"'
    # Not required, required later, or only inside a block: not decoded.
    assert value(raw) == "${hex:40}"
    script = parse(f"keep {raw};\n{ENCODED}keep {raw};\n")
    assert [shape(c)[1] for c in script.commands] == [["${hex:40}"], ["encoded-character"], ["@"]]
    script = parse(f"if true {{ {ENCODED} }}\nkeep {raw};\n")
    assert shape(script.commands[1]) == ("keep", ["${hex:40}"], [], None)
    # The require command's own strings are read before it takes effect.
    script = parse(f'require ["encoded-character", {raw}];\nkeep {raw};\n')
    assert script.requires == frozenset({"encoded-character", "${hex:40}"})
    assert shape(script.commands[1]) == ("keep", ["@"], [], None)
    # A list naming it works too, and so does a later one.
    script = parse(f'require "fileinto";\nrequire ["x", "encoded-character"];\nkeep {raw};\n')
    assert shape(script.commands[2]) == ("keep", ["@"], [], None)


# -- limits ---------------------------------------------------------------


def _frames() -> int:
    frame, count = sys._getframe(), 0
    while frame is not None:
        frame, count = frame.f_back, count + 1  # type: ignore[assignment]
    return count


def nested_blocks(depth: int) -> str:
    return "if true {\n" * depth + "keep;\n" + "}\n" * depth


def nested_nots(depth: int) -> str:
    return "if " + "not " * depth + "true {}\n"


def nested_anyofs(depth: int) -> str:
    return "if " + "anyof(" * depth + "true" + ")" * depth + " {}\n"


@pytest.mark.timeout(30)
def test_nesting_up_to_the_limit_parses() -> None:
    assert MAX_DEPTH == 32
    parse(nested_blocks(32))
    parse(nested_nots(32))
    parse(nested_anyofs(32))
    # Blocks and nested tests count together; rfc5228:2.10.7 asks for
    # fifteen levels of each.
    parse("if true {\n" * 15 + nested_anyofs(15) + "}\n" * 15)
    parse("if true {\n" * 16 + nested_nots(16) + "}\n" * 16)
    parse("if true {\n" * 31 + nested_anyofs(1) + "}\n" * 31)


@pytest.mark.timeout(30)
def test_nesting_beyond_the_limit() -> None:
    message = "nesting too deep (more than 32 levels of blocks and tests)"
    assert error(nested_blocks(33)) == (33, 9, message)  # the 33rd "{"
    assert error(nested_nots(33)) == (1, 4 + 33 * 4, message)  # the 33rd nested test
    assert error(nested_anyofs(33)) == (1, 4 + 32 * 6 + 5, message)  # the 33rd "("
    assert error("if true {\n" * 16 + nested_nots(17) + "}\n" * 16)[2] == message
    assert error("if true {\n" * 32 + nested_anyofs(1) + "}\n" * 32)[2] == message


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "text",
    [
        "if true {\n" * 100_000,
        "{" * 100_000,
        nested_blocks(100_000),
        nested_nots(100_000),
        "if " + "not " * 100_000,
        nested_anyofs(100_000),
        "if " + "anyof(" * 100_000,
        "if " + "anyof(true, " * 100_000,
        "x " + "a " * 100_000 + ";",
    ],
)
def test_hostile_nesting_fails_without_deep_recursion(text: str) -> None:
    # The descent is bounded by the nesting limit: a stack of a few hundred
    # frames is plenty, whatever the input.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + 250)
    try:
        with pytest.raises(SieveError):
            parse(text)
        parse(nested_blocks(32))
        parse(nested_anyofs(32))
        parse("if true {\n" * 16 + nested_anyofs(16) + "}\n" * 16)
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.timeout(30)
def test_node_limit() -> None:
    assert MAX_NODES == 20_000
    assert len(parse("keep;\n" * MAX_NODES).commands) == MAX_NODES
    message = "script too large (more than 20000 elements)"
    assert error("keep;\n" * (MAX_NODES + 1)) == (MAX_NODES + 1, 1, message)
    # if, true and keep: three nodes a line; the 20,001st is the 6,667th keep.
    assert error("if true { keep; }\n" * 7000) == (6667, 11, message)
    # Strings in lists count, one each.
    items = ", ".join(['"x"'] * 1000)
    assert error(f"keep [{items}];\n" * 30)[2] == message
    assert error("keep " + ":a " * 100_000 + ";")[2] == message
    assert error("x " + "a " * 30 + "(b" + ", b" * 100_000 + ");")[2] == message


@pytest.mark.timeout(30)
def test_string_list_limit() -> None:
    assert MAX_LIST_ITEMS == 1024
    items = ", ".join(f'"k{i}"' for i in range(MAX_LIST_ITEMS))
    [command] = parse(f"keep [{items}];").commands
    assert isinstance(command.arguments[0], ast.StringList)
    assert len(command.arguments[0].items) == MAX_LIST_ITEMS
    text = "keep [" + '"a",\n' * MAX_LIST_ITEMS + '"b"];'
    assert error(text) == (MAX_LIST_ITEMS + 1, 1, "string list too long (more than 1024 strings)")
    assert error("keep [" + '"a", ' * 1_000_000 + '"b"];')[2].startswith("string list too long")


@pytest.mark.timeout(30)
def test_long_inputs_are_linear() -> None:
    # Large but legal tokens parse; each of these is one regular expression
    # pass (a quadratic lexer would not finish within the timeout).
    mib = 1024 * 1024
    assert value('"' + "a\\\\" * (mib // 3) + '"') == "a\\" * (mib // 3)
    assert value("text:\n" + "..x\n" * (mib // 4) + ".\n") == ".x\r\n" * (mib // 4)
    assert shape(parse("/*" + "*" * mib + "*/ # " + "#" * mib + "\nkeep;")) == [
        ("keep", [], [], None)
    ]
    assert encoded('"' + "${hex:41}" * (mib // 10) + '"') == "A" * (mib // 10)
    assert encoded('"${hex:' + " 41" * (mib // 3) + '}"') == "A" * (mib // 3)
    for text in [
        'keep "' + "\\" * mib,
        "keep text:\n" + "a\n" * mib,
        "/*" + "*" * mib,
        "keep " + "1" * mib + ";",
        "keep " + "\n" * mib,
        '"' + "${hex:" * (mib // 6),
    ]:
        with pytest.raises(SieveError):
            parse(text)
