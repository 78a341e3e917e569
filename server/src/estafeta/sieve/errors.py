"""The one exception of the Sieve package: a script problem with its position.

Every problem found in a script -- invalid UTF-8, a lexical or grammar error
(rfc5228:8), a limit exceeded, later a validation error -- is a ``SieveError``
carrying the 1-based line and column of the offending character or token.
Columns count characters (code points), not octets, so that they match what an
editor shows.  ``str(error)`` is ``"LINE:COLUMN: message"``, the form that
ManageSieve (PUTSCRIPT, CHECKSCRIPT) and ``estafeta sieve check`` print.
"""

from __future__ import annotations


class SieveError(Exception):
    """A script problem at ``line``:``column`` (both 1-based)."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(line, column, message)
        self.line = line
        self.column = column
        self.message = message

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.message}"
