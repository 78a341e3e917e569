"""Sieve mail filtering (rfc5228): parse a script into a syntax tree.

``parse(text)`` returns an ``ast.Script`` or raises ``SieveError`` with the
line and column of the problem.
"""

from estafeta.sieve.errors import SieveError
from estafeta.sieve.parser import parse

__all__ = ["SieveError", "parse"]
