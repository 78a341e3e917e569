"""The Sieve parser (rfc5228:8.2): script text in, ``ast.Script`` out.

``parse(text)`` reads the whole script (str, or bytes that must be UTF-8)
and returns its syntax tree, or raises ``SieveError`` at the first problem
with the line and column of the offending token.  No IO; the generic grammar
only (which commands and tests exist, and what arguments they take, is
checked by the validator):

    start     = commands                     command = identifier arguments (";" / block)
    commands  = *command                     block   = "{" commands "}"
    arguments = *argument [ test / test-list ]
    argument  = string-list / number / tag   test    = identifier arguments
    string-list = "[" string *("," string) "]" / string
    test-list = "(" test *("," test) ")"

Limits, all SieveError when exceeded (an attacker's script is refused
quickly, and memory and time stay proportional to what was read):

* ``MAX_DEPTH`` levels of nesting, blocks and nested tests counted together
  (the test of a command is not nested; each test inside a test and each
  block is a level).  rfc5228:2.10.7 asks for fifteen at least.  The
  descent recurses once per level, so the limit also bounds the Python
  stack: a script of 100,000 "{" or "not" fails at level 33.
* ``MAX_NODES`` nodes in the tree (commands, tests, tags, numbers, strings,
  string lists and their items).
* ``MAX_LIST_ITEMS`` strings in one string list.

"encoded-character" (rfc5228:2.4.2.4) applies to the strings that come
after a top-level ``require`` naming it; ``Script.requires`` collects the
capabilities of the top-level ``require`` commands (rfc5228:3.2).
"""

from __future__ import annotations

from typing import Final

from estafeta.sieve import ast
from estafeta.sieve.errors import SieveError
from estafeta.sieve.lexer import (
    END,
    IDENTIFIER,
    NUMBER,
    STRING,
    TAG,
    Lexer,
    Token,
    decode,
    decode_encoded,
    excerpt,
)

MAX_DEPTH: Final = 32
MAX_NODES: Final = 20_000
MAX_LIST_ITEMS: Final = 1024
ENCODED_CHARACTER: Final = "encoded-character"
# Commands whose grammar wants a block; only the error message differs.
_BLOCK_COMMANDS: Final = frozenset({"if", "elsif", "else"})


def parse(text: str | bytes) -> ast.Script:
    """The syntax tree of a script; SieveError(line, column, message) if
    it is not one (rfc5228:8)."""
    return _Parser(decode(text)).script()


def _pos(token: Token) -> ast.Position:
    return ast.Position(token.line, token.column)


class _Parser:
    """Recursive descent over ``Lexer`` tokens, one token of look-ahead."""

    def __init__(self, text: str) -> None:
        self.lexer = Lexer(text)
        self.token = self.lexer.next()
        self.nodes = 0
        self.requires: set[str] = set()
        self.encoded = False  # "encoded-character" was required (so far)

    def _advance(self) -> None:
        self.token = self.lexer.next()

    def _node(self, token: Token) -> None:
        """Count one more node of the tree, starting at ``token``."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SieveError(
                token.line, token.column, f"script too large (more than {MAX_NODES} elements)"
            )

    def _deeper(self, token: Token, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SieveError(
                token.line,
                token.column,
                f"nesting too deep (more than {MAX_DEPTH} levels of blocks and tests)",
            )

    def script(self) -> ast.Script:
        commands: list[ast.Command] = []
        while self.token.kind != END:
            command = self.command(0)
            commands.append(command)
            if command.name == "require":  # rfc5228:3.2, at the top level
                self._require(command)
        return ast.Script(tuple(commands), frozenset(self.requires))

    def _require(self, command: ast.Command) -> None:
        for argument in command.arguments:
            if isinstance(argument, ast.String):
                self.requires.add(argument.value)
            elif isinstance(argument, ast.StringList):
                self.requires.update(item.value for item in argument.items)
        # rfc5228:2.4.2.4: from here on, strings are decoded.
        self.encoded = ENCODED_CHARACTER in self.requires

    def command(self, depth: int) -> ast.Command:
        """command = identifier arguments (";" / block); ``depth`` is the
        number of blocks around it."""
        start = self.token
        if start.kind != IDENTIFIER:
            raise SieveError(
                start.line, start.column, f"expected a command, found {start.describe()}"
            )
        self._node(start)
        self._advance()
        arguments, tests = self.arguments(depth)
        block: tuple[ast.Command, ...] | None = None
        if self.token.kind == ";":
            self._advance()
        elif self.token.kind == "{":
            block = self.block(depth + 1)
        else:
            wanted = '"{"' if start.value in _BLOCK_COMMANDS else '";"'
            raise SieveError(
                self.token.line,
                self.token.column,
                f'expected {wanted} after command "{excerpt(str(start.value))}"',
            )
        return ast.Command(str(start.value), arguments, tests, block, _pos(start))

    def block(self, depth: int) -> tuple[ast.Command, ...]:
        """block = "{" commands "}"; the commands inside are at ``depth``."""
        opening = self.token
        self._deeper(opening, depth)
        self._advance()
        commands: list[ast.Command] = []
        while self.token.kind != "}":
            if self.token.kind == END:
                raise SieveError(
                    self.token.line,
                    self.token.column,
                    f'missing "}}" to close the block opened at {opening.line}:{opening.column}',
                )
            commands.append(self.command(depth))
        self._advance()
        return tuple(commands)

    def arguments(self, depth: int) -> tuple[tuple[ast.Argument, ...], tuple[ast.Test, ...]]:
        """arguments = *argument [ test / test-list ]; the test (or the
        tests of the list) are at nesting ``depth``."""
        arguments: list[ast.Argument] = []
        while True:
            token = self.token
            kind = token.kind
            if kind == TAG:
                self._node(token)
                arguments.append(ast.Tag(str(token.value), _pos(token)))
                self._advance()
            elif kind == NUMBER:
                self._node(token)
                assert isinstance(token.value, int)
                arguments.append(ast.Number(token.value, _pos(token)))
                self._advance()
            elif kind == STRING:
                arguments.append(self.string())
            elif kind == "[":
                arguments.append(self.string_list())
            else:
                break
        if kind == IDENTIFIER:
            self._deeper(token, depth)
            return tuple(arguments), (self.test(depth),)
        if kind == "(":
            return tuple(arguments), self.test_list(depth)
        return tuple(arguments), ()

    def test(self, depth: int) -> ast.Test:
        """test = identifier arguments"""
        start = self.token
        self._node(start)
        self._advance()
        arguments, tests = self.arguments(depth + 1)
        return ast.Test(str(start.value), arguments, tests, _pos(start))

    def test_list(self, depth: int) -> tuple[ast.Test, ...]:
        """test-list = "(" test *("," test) ")" (rfc5228:2.5.1)"""
        self._deeper(self.token, depth)
        tests: list[ast.Test] = []
        while True:
            after = self.token
            self._advance()
            if self.token.kind != IDENTIFIER:
                raise SieveError(
                    self.token.line,
                    self.token.column,
                    f'expected a test after "{after.text}", found {self.token.describe()}',
                )
            tests.append(self.test(depth))
            if self.token.kind == ")":
                self._advance()
                return tuple(tests)
            if self.token.kind != ",":
                raise SieveError(
                    self.token.line,
                    self.token.column,
                    f'expected "," or ")" in the test list, found {self.token.describe()}',
                )

    def string(self) -> ast.String:
        """A quoted or multi-line string, decoded if "encoded-character"
        is in effect (rfc5228:2.4.2.4)."""
        token = self.token
        self._node(token)
        value = str(token.value)
        if self.encoded:
            value = decode_encoded(value, token.line, token.column)
        self._advance()
        return ast.String(value, _pos(token))

    def string_list(self) -> ast.StringList:
        """string-list = "[" string *("," string) "]" (rfc5228:2.4.2.1)"""
        opening = self.token
        self._node(opening)
        items: list[ast.String] = []
        while True:
            after = self.token
            self._advance()
            if self.token.kind != STRING:
                raise SieveError(
                    self.token.line,
                    self.token.column,
                    f'expected a string after "{after.text}", found {self.token.describe()}',
                )
            if len(items) == MAX_LIST_ITEMS:
                raise SieveError(
                    self.token.line,
                    self.token.column,
                    f"string list too long (more than {MAX_LIST_ITEMS} strings)",
                )
            items.append(self.string())
            if self.token.kind == "]":
                self._advance()
                return ast.StringList(tuple(items), _pos(opening))
            if self.token.kind != ",":
                raise SieveError(
                    self.token.line,
                    self.token.column,
                    f'expected "," or "]" in the string list, found {self.token.describe()}',
                )
