"""Which Sieve scripts run for an account, compiled once.

For every delivery: the operator's ``[sieve] global_before`` scripts, the
account's active script (``ScriptStore``), then ``global_after`` — one run,
one implicit keep (estafeta.sieve.run). Global scripts are compiled when the
server starts; one that does not compile stops the start with its path and
``line:column`` (so does ``estafeta check``). ``include`` (rfc6609) finds
``:personal`` scripts among the account's own and ``:global`` ones in
``[sieve] global_dir``; compiled scripts are cached by their text.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from estafeta import sieve
from estafeta.config import SieveConfig
from estafeta.sieve.scripts import ScriptError, Scripts

# Compiled scripts kept for include and global lookups (by text: an edited
# file compiles again, an unchanged one costs a hash).
CACHE = 256


class RulesError(Exception):
    """A global script that cannot be read or does not compile."""


class Rules:
    def __init__(self, config: SieveConfig, scripts: Scripts, limits: sieve.Limits) -> None:
        self.config = config
        self.scripts = scripts
        self.limits = limits
        self._compile = functools.lru_cache(maxsize=CACHE)(self._compile_text)
        self.before = [self._load(path) for path in config.global_before]
        self.after = [self._load(path) for path in config.global_after]

    def _compile_text(self, text: str, name: str) -> sieve.Compiled:
        return sieve.compile_script(text, name=name, limits=self.limits)

    def _load(self, path: Path) -> sieve.Compiled:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(f"{path}: cannot read the global Sieve script: {exc}") from None
        try:
            return self._compile(text, str(path))
        except sieve.SieveError as exc:
            raise RulesError(f"{path}:{exc}") from None

    def scripts_for(self, account: str) -> Sequence[sieve.Compiled]:
        user = self.scripts.compiled(account)
        if user is None:
            return [*self.before, *self.after]
        return [*self.before, user, *self.after]

    def include(self, account: str, location: str, name: str) -> sieve.Compiled | None:
        """rfc6609:3.2 — a script named by ``include``, or None when missing."""
        if location == "global":
            if self.config.global_dir is None or "/" in name or name.startswith("."):
                return None
            path = self.config.global_dir / f"{name}.sieve"
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
        else:
            try:
                text = self.scripts.get(account, name)
            except ScriptError:
                return None
        try:
            return self._compile(text, f"{location}:{name}")
        except sieve.SieveError:
            return None
