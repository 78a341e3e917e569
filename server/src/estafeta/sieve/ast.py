"""The syntax tree of a Sieve script (rfc5228:8.2), as the parser builds it.

The tree follows the generic grammar and knows nothing of particular commands:
``keep "x";`` parses as well as ``fileinto "x";``, and which arguments a
command takes is the validator's business.  Every node is a frozen dataclass
with tuples for its children, so a tree is immutable and hashable, and two
trees compare equal when they are equal node by node (positions included).

* Names of commands, tests and tags are lower-case (identifiers are
  case-insensitive, rfc5228:8.1); tag names carry no ":".
* ``Number.value`` has its K/M/G quantifier applied (rfc5228:2.4.1).
* ``String.value`` has its escapes resolved (rfc5228:2.4.2), multi-line
  strings are dot-unstuffed, every line break inside a string is CRLF (the
  only one rfc5228:2.2 knows, whatever the script used), and
  ``${hex:..}``/``${unicode:..}`` are decoded when "encoded-character" was
  required earlier in the script (rfc5228:2.4.2.4).
* A bare string argument stays a ``String``; ``[...]`` is a ``StringList``
  even with one item (rfc5228:2.4.2.1 makes them equivalent; the validator
  accepts either where a list is wanted).
* ``tests`` holds the test or the test list (rfc5228:2.5.1) that follows the
  arguments: the test of ``if``/``elsif``, the tests of ``anyof``/``allof``,
  the single test of ``not``.  The grammar cannot tell ``not (a)`` from
  ``not a``, and neither can the tree.
* ``Command.block`` is ``None`` for a command ended by ";" and a tuple (maybe
  empty) for one followed by "{ ... }".
* ``Script.requires`` is the union of the capability strings named by the
  ``require`` commands at the top level; those commands stay in
  ``Script.commands`` so that the validator can check where they are.

Positions are those of the first character of the node's first token: the
identifier of a command or test, the ":" of a tag, the first digit of a
number, the quote (or the "t" of "text:") of a string, the "[" of a list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column (columns count characters)."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Tag:
    """``:name`` (rfc5228:2.6.2); ``name`` lower-case, without the colon."""

    name: str
    pos: Position


@dataclass(frozen=True, slots=True)
class Number:
    """A non-negative integer, quantifier applied (rfc5228:2.4.1)."""

    value: int
    pos: Position


@dataclass(frozen=True, slots=True)
class String:
    """A quoted or multi-line string, decoded (rfc5228:2.4.2)."""

    value: str
    pos: Position


@dataclass(frozen=True, slots=True)
class StringList:
    """``["a", "b"]`` (rfc5228:2.4.2.1); at least one item."""

    items: tuple[String, ...]
    pos: Position


Argument = Tag | Number | String | StringList


@dataclass(frozen=True, slots=True)
class Test:
    """A test (rfc5228:2.5): a name, arguments and nested tests."""

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    pos: Position


@dataclass(frozen=True, slots=True)
class Command:
    """A command (rfc5228:2.9): ``block`` is None when it ends with ";"."""

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None
    pos: Position


@dataclass(frozen=True, slots=True)
class Script:
    """A whole script: its top-level commands and what it requires."""

    commands: tuple[Command, ...]
    requires: frozenset[str]
