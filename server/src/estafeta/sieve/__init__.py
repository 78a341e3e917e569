"""Sieve mail filtering (rfc5228 and extensions), without IO.

* ``parse(text)`` returns an ``ast.Script`` or raises ``SieveError`` with the
  line and column of the problem.
* ``compile_script(text)`` parses and validates (``validate``): a
  ``Compiled`` script, or ``SieveError`` for every problem.
* ``run(scripts, context)`` runs compiled scripts on a message and its
  envelope (``interpret``): a ``Result`` with the ``actions`` a delivery
  takes (module ``actions``), never an exception for script problems;
  with ``inline=True`` (for ``inline_safe`` scripts, on an event loop) a
  small budget, past which ``NeedsWorker`` says to run it in a thread.
* ``SUPPORTED``: the capability strings (ManageSieve's "SIEVE" capability).
"""

from estafeta.sieve import actions
from estafeta.sieve.errors import SieveError
from estafeta.sieve.interpret import Context, Envelope, Result, inline_safe, run
from estafeta.sieve.limits import Limits
from estafeta.sieve.parser import parse
from estafeta.sieve.signatures import SUPPORTED, Compiled
from estafeta.sieve.state import NeedsWorker
from estafeta.sieve.validate import compile_script

__all__ = [
    "SUPPORTED",
    "Compiled",
    "Context",
    "Envelope",
    "Limits",
    "NeedsWorker",
    "Result",
    "SieveError",
    "actions",
    "compile_script",
    "inline_safe",
    "parse",
    "run",
]
