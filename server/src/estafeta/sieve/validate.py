"""The validator: ``compile_script`` = ``parse`` + the checks of every
command and test against ``signatures`` + binding into ``Node`` trees.

Every problem is a ``SieveError`` with the line and column of the
offending token: an unknown or unsupported ``require`` (rfc5228:2.10.5,
rfc5228:3.2), a ``require`` after another command, ``elsif``/``else``
without ``if`` (rfc5228:3.1), unknown commands, tests and tags, an
extension used without its ``require``, arguments of the wrong type or
number (rfc5228:2.6), repeated or conflicting tags, comparators
(rfc5228:2.7.3), and what each extension asks to be checked when a script
is uploaded (variable names, header names, regular expressions, zones,
date parts, script names...).  What depends on the values of variables is
checked when the script runs.
"""

from __future__ import annotations

import re
from typing import Final

from estafeta.sieve import ast
from estafeta.sieve.dates import DATE_PARTS, parse_zone
from estafeta.sieve.errors import SieveError
from estafeta.sieve.limits import Limits
from estafeta.sieve.match import RegexError, compile_regex
from estafeta.sieve.message import FIELD_NAME, sieve_address
from estafeta.sieve.parser import parse
from estafeta.sieve.signatures import (
    COMMANDS,
    IMPLIES,
    STRING,
    STRINGS,
    SUPPORTED,
    TESTS,
    Compiled,
    Node,
    Signature,
    Value,
    error,
    match_spec,
)
from estafeta.sieve.variables import LOCAL, Template, parse_template, variable_name

ENVELOPE_PARTS: Final = frozenset({"from", "to", "auth"})
# rfc5804:1.6 script names: 1..128 characters, none of these.
_SCRIPT_NAME_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_SCRIPT_NAME: Final = 128


def compile_script(
    text: str | bytes,
    *,
    name: str = "script",
    extensions: frozenset[str] | None = None,
    limits: Limits = Limits(),  # noqa: B008 -- frozen dataclass, never mutated
) -> Compiled:
    """Parse and validate a script; SieveError(line, column, message) for
    every problem.  ``extensions``: the capabilities a script may require
    (None: all of SUPPORTED)."""
    allowed = SUPPORTED if extensions is None else SUPPORTED & extensions
    try:
        return _Validator(parse(text), allowed, limits).compiled(name)
    except SieveError:
        raise
    except Exception as exc:  # a bug of ours must not escape as anything else
        raise SieveError(1, 1, f"internal error while checking the script ({exc!r})") from None


def _fits(arg: ast.Argument, kind: str) -> bool:
    if kind == STRING:
        return isinstance(arg, ast.String)
    if kind == STRINGS:
        return isinstance(arg, ast.String | ast.StringList)
    return isinstance(arg, ast.Number)


def _constant(value: Value | None) -> str | None:
    """The text of a constant string argument, else None."""
    if isinstance(value, Template) and value.constant:
        return value.raw
    return None


def _templates(value: Value | None) -> tuple[Template, ...]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, Template):
        return (value,)
    return ()


class _Validator:
    def __init__(self, script: ast.Script, allowed: frozenset[str], limits: Limits) -> None:
        self.script = script
        self.allowed = allowed
        self.limits = limits
        effective = set(script.requires)
        effective.update(IMPLIES[c] for c in script.requires if c in IMPLIES)
        self.requires = frozenset(effective)
        self.variables = "variables" in self.requires
        self.namespaces = frozenset({"global"}) if "include" in self.requires else frozenset()
        self.locals: set[str] = set()

    def has(self, capability: str) -> bool:
        return capability in self.requires

    def compiled(self, name: str) -> Compiled:
        commands = self.block(self.script.commands, top=True)
        return Compiled(name, commands, self.requires)

    # ------------------------------------------------------------------
    # Structure

    def block(self, commands: tuple[ast.Command, ...], *, top: bool) -> tuple[Node, ...]:
        out: list[Node] = []
        previous = ""
        started = False  # a command other than require was seen
        for command in commands:
            if command.name == "require":
                if not top or started:
                    # rfc5228:3.2: require before anything else, at the top.
                    raise error(command.pos, "require must come before any other command")
                self.require(command)
                previous = command.name
                continue
            started = True
            if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise error(command.pos, f"{command.name} without a preceding if")  # rfc5228:3.1
            out.append(self.command(command))
            previous = command.name
        return tuple(out)

    def require(self, command: ast.Command) -> None:
        _, positional = self.arguments(command, COMMANDS["require"], "command")
        arg = positional[0]
        items = arg.items if isinstance(arg, ast.StringList) else (arg,)
        for item in items:
            assert isinstance(item, ast.String)
            if item.value not in self.allowed:
                # rfc5228:2.10.5: nothing runs when a required extension is missing.
                raise error(item.pos, f"unsupported extension {item.value!r}")

    def command(self, command: ast.Command) -> Node:
        sig = COMMANDS.get(command.name)
        if sig is None:
            if command.name in TESTS:
                raise error(command.pos, f"{command.name!r} is a test, not a command")
            raise error(command.pos, f"unknown command {command.name!r}")
        tags, positional = self.arguments(command, sig, "command")
        if sig.block and command.block is None:
            raise error(command.pos, f"{command.name} needs a block {{ ... }}")
        if not sig.block and command.block is not None:
            raise error(command.pos, f"{command.name} takes no block (end it with ';')")
        block = None if command.block is None else self.block(command.block, top=False)
        tests = tuple(self.test(t) for t in command.tests)
        node = self.bind(command, tags, positional, tests, block)
        self.check(node, command)
        return node

    def test(self, test: ast.Test) -> Node:
        sig = TESTS.get(test.name)
        if sig is None:
            if test.name in COMMANDS:
                raise error(test.pos, f"{test.name!r} is a command, not a test")
            raise error(test.pos, f"unknown test {test.name!r}")
        tags, positional = self.arguments(test, sig, "test")
        tests = tuple(self.test(t) for t in test.tests)
        node = self.bind(test, tags, positional, tests, None)
        self.check(node, test)
        return node

    # ------------------------------------------------------------------
    # Arguments (rfc5228:2.6)

    def needs(self, pos: ast.Position, what: str, extensions: tuple[str, ...]) -> None:
        if extensions and not any(self.has(e) for e in extensions):
            raise error(pos, f'{what} needs require "{extensions[0]}"')

    def arguments(
        self, node: ast.Command | ast.Test, sig: Signature, what: str
    ) -> tuple[dict[str, ast.Argument | bool], list[ast.Argument | None]]:
        self.needs(node.pos, f"{what} {node.name!r}", sig.ext)
        args = node.arguments
        tags: dict[str, ast.Argument | bool] = {}
        groups: dict[str, str] = {}
        i = 0
        while i < len(args):
            tag = args[i]
            if not isinstance(tag, ast.Tag):
                break
            spec = sig.tags.get(tag.name)
            if spec is None:
                raise error(tag.pos, f"unknown tagged argument :{tag.name} for {node.name}")
            self.needs(tag.pos, f":{tag.name}", spec.ext)
            if tag.name in tags:
                raise error(tag.pos, f":{tag.name} given twice")  # rfc5228:2.6
            if spec.group is not None:
                if spec.group in groups:
                    other = groups[spec.group]
                    raise error(tag.pos, f":{tag.name} cannot be used with :{other}")
                groups[spec.group] = tag.name
            value: ast.Argument | bool = True
            if spec.arg is not None:
                i += 1
                if i >= len(args) or not _fits(args[i], spec.arg):
                    where = args[i].pos if i < len(args) else tag.pos
                    raise error(where, f":{tag.name} must be followed by a {spec.arg}")
                value = args[i]
            tags[tag.name] = value
            i += 1
        rest = list(args[i:])
        for arg in rest:
            if isinstance(arg, ast.Tag):
                # rfc5228:2.6.2: tagged arguments come before positional ones.
                raise error(arg.pos, f":{arg.name} after the positional arguments of {node.name}")
        if sig.required_group and sig.required_group not in groups:
            names = " or ".join(
                f":{n}" for n, s in sig.tags.items() if s.group == sig.required_group
            )
            raise error(node.pos, f"{node.name} needs {names}")
        expected = sig.positional
        slots: list[ast.Argument | None] = list(rest)
        if sig.optional and len(rest) == len(expected) - 1:
            slots = [None, *rest] if sig.optional == "leading" else [*rest, None]
        elif len(rest) != len(expected):
            count = len(expected)
            if sig.optional:
                count_text = f"{count - 1} or {count} arguments"
            else:
                count_text = f"{count} argument{'s' if count != 1 else ''}"
            where = rest[len(expected)].pos if len(rest) > len(expected) else node.pos
            raise error(where, f"{node.name} takes {count_text}, not {len(rest)}")
        for slot, kind in zip(slots, expected, strict=True):
            if slot is not None and not _fits(slot, kind):
                raise error(slot.pos, f"{node.name}: expected a {kind} here")
        tests = node.tests
        if sig.tests == "none" and tests:
            raise error(tests[0].pos, f"{node.name} takes no test")
        if sig.tests == "one" and len(tests) != 1:
            where = tests[1].pos if len(tests) > 1 else node.pos
            raise error(where, f"{node.name} takes exactly one test")
        if sig.tests == "list" and not tests:
            raise error(node.pos, f"{node.name} needs a list of tests")
        return tags, slots

    def template(self, string: ast.String) -> Template:
        return parse_template(
            string.value,
            variables=self.variables,
            namespaces=self.namespaces,
            line=string.pos.line,
            column=string.pos.column,
        )

    def value(self, arg: ast.Argument | bool | None, kind: str | None) -> Value | None:
        if arg is None or isinstance(arg, bool):
            return arg
        if isinstance(arg, ast.Number):
            return arg.value
        if isinstance(arg, ast.StringList):
            return tuple(self.template(s) for s in arg.items)
        if isinstance(arg, ast.String):
            template = self.template(arg)
            return (template,) if kind == STRINGS else template
        raise error(arg.pos, "unexpected argument")

    def bind(
        self,
        node: ast.Command | ast.Test,
        tags: dict[str, ast.Argument | bool],
        positional: list[ast.Argument | None],
        tests: tuple[Node, ...],
        block: tuple[Node, ...] | None,
    ) -> Node:
        sig = COMMANDS[node.name] if isinstance(node, ast.Command) else TESTS[node.name]
        bound_tags: dict[str, Value] = {}
        for name, arg in tags.items():
            bound = self.value(arg, sig.tags[name].arg)
            assert bound is not None
            bound_tags[name] = bound
        args = tuple(
            self.value(arg, kind) for arg, kind in zip(positional, sig.positional, strict=True)
        )
        spec = match_spec(node, tags, self.requires)
        return Node(node.name, node.pos, bound_tags, args, tests, block, spec)

    # ------------------------------------------------------------------
    # What each extension asks to check at upload time

    def check(self, node: Node, source: ast.Command | ast.Test) -> None:
        name = node.name
        pos = node.pos
        if node.match.kind == "regex" and node.args:
            for key in _templates(node.args[-1]):
                if key.constant:
                    try:
                        compile_regex(key.raw, False)
                    except RegexError as exc:
                        raise error(pos, str(exc)) from None
        if name in ("address", "header", "date", "deleteheader"):
            index = node.tag("index")
            if node.tag("last") is not None and index is None:
                raise error(pos, ":last needs :index")  # rfc5260:6, rfc5293:5
            if isinstance(index, int) and index < 1:
                raise error(pos, ":index counts from 1")
        if name == "set":
            self.assign(node, node.args[0])
        elif name in ("setflag", "addflag", "removeflag") and node.args[0] is not None:
            self.needs(pos, "a variable name", ("variables",))
            self.assign(node, node.args[0])
        elif name == "hasflag" and node.args[0] is not None:
            self.needs(pos, "a variable list", ("variables",))
            for item in _templates(node.args[0]):
                variable_name(item.raw, self.namespaces, pos.line, pos.column)
        elif name == "global":
            self.needs(pos, "global", ("variables",))  # rfc6609:3.4.1
            for item in _templates(node.args[0]):
                ref = variable_name(item.raw, frozenset(), pos.line, pos.column)
                self.count(pos, ref.name)
        elif name == "include":
            self.script_name(node)
        elif name == "redirect":
            address = _constant(node.args[0])
            if address is not None and sieve_address(address) is None:
                raise error(pos, f"redirect: {address!r} is not an address")  # rfc5228:2.4.2.3
        elif name == "fileinto":
            mailbox = _constant(node.args[0])
            if mailbox is not None and not mailbox:
                raise error(pos, "fileinto: empty mailbox name")
        elif name in ("addheader", "deleteheader"):
            field = _constant(node.args[0])
            if field is not None and not FIELD_NAME.match(field):
                raise error(pos, f"{name}: {field!r} is not a header field name")  # rfc5293:4
        elif name in ("date", "currentdate"):
            self.date(node)
        elif name == "envelope":
            for part in _templates(node.args[0]):
                if part.constant and part.raw.lower() not in ENVELOPE_PARTS:
                    # rfc5228:5.4: unknown envelope parts SHOULD be an error.
                    raise error(pos, f"envelope: unknown part {part.raw!r} (from, to, auth)")
        elif name == "vacation":
            sender = _constant(node.tag("from"))
            if sender is not None and sieve_address(sender) is None:
                raise error(pos, f"vacation :from {sender!r} is not an address")  # rfc5230:4.3

    def assign(self, node: Node, target: Value | None) -> None:
        assert isinstance(target, Template)
        pos = node.pos
        if not target.constant and "${" in target.raw:
            raise error(pos, "a variable name must be a constant string")  # rfc5229:4
        ref = variable_name(target.raw, self.namespaces, pos.line, pos.column)
        if ref.kind == LOCAL:
            self.count(pos, ref.name)

    def count(self, pos: ast.Position, name: str) -> None:
        self.locals.add(name)
        if len(self.locals) > self.limits.max_variables:
            raise error(pos, f"more than {self.limits.max_variables} variables")

    def script_name(self, node: Node) -> None:
        target = node.args[0]
        assert isinstance(target, Template)
        name = target.raw  # rfc6609:3.2: never expanded
        if not target.constant:
            raise error(node.pos, "include: the script name must be a constant string")
        if not name or len(name) > MAX_SCRIPT_NAME or _SCRIPT_NAME_FORBIDDEN.search(name):
            raise error(node.pos, f"include: {name!r} is not a script name (rfc5804:1.6)")

    def date(self, node: Node) -> None:
        zone = _constant(node.tag("zone"))
        if zone is not None and parse_zone(zone) is None:
            raise error(node.pos, f"{node.name}: zone {zone!r} is not +hhmm or -hhmm")
        part = _constant(node.args[-2])
        if part is not None and part.lower() not in DATE_PARTS:
            raise error(node.pos, f"{node.name}: unknown date part {part!r}")
