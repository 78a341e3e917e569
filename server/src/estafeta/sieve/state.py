"""The state of one Sieve run: budget, variables, the message being looked
at, and the matching of values against keys that every test shares.

One ``Run`` spans all the scripts of a delivery (global before, the user's,
global after, and what they include): one step budget, one implicit keep,
one internal flag variable (rfc5232:3), one "global" variable namespace
(rfc6609:3.4), one view of the (edited) header.  Each script execution has
its own ``Frame``: local variables and match variables (rfc5229:3.2,
rfc6609:3.4: variables are private to the script unless declared global).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from estafeta.sieve import ast
from estafeta.sieve.body import content_parts
from estafeta.sieve.dates import local_zone
from estafeta.sieve.limits import Limits
from estafeta.sieve.match import (
    CASEMAP,
    OPS_PER_STEP,
    MatchTimeout,
    RegexError,
    compile_glob,
    compile_regex,
    contains,
    decode,
    encode,
    equal,
    glob_cost,
    literal_absent,
    order,
    regex_cost,
    regex_groups,
    relation_holds,
    required_literal,
)
from estafeta.sieve.message import Header, body_of
from estafeta.sieve.signatures import Compiled, Node
from estafeta.sieve.variables import GLOBAL, LOCAL, Ref, Template

if TYPE_CHECKING:
    from estafeta.sieve.interpret import Context

# An expanded string is cut here (a script of "${a}${a}..." must not build
# megabytes); rfc5229:6 lets values be truncated.
MAX_EXPANSION: Final = 65_536


class ScriptError(Exception):
    """A runtime error (rfc5228:2.10.6): the run ends in the implicit keep."""

    def __init__(self, pos: ast.Position | None, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message
        self.script = ""  # set by the frame that was running


class NeedsWorker(Exception):
    """An inline run went past its budget (``Limits.inline_steps``,
    ``inline_regex``): nothing is decided, the caller runs it in a thread."""


class Stop(Exception):
    """rfc5228:3.3 stop: the whole run ends."""


class Return(Exception):
    """rfc6609:3.3 return: the current script ends."""


@dataclass(eq=False)
class Frame:
    script: Compiled
    locals: dict[str, str] = field(default_factory=dict)
    declared: set[str] = field(default_factory=set)  # names made global (rfc6609:3.4.1)
    matches: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Whether tests set match variables (rfc5229:3.2): asked per match.
        self.variables = self.script.has("variables")


class Run:
    def __init__(self, ctx: Context, limits: Limits, inline: bool = False) -> None:
        self.ctx = ctx
        self.limits = limits
        self.inline = inline
        self.steps = 0
        self.max_steps = min(limits.max_steps, limits.inline_steps) if inline else limits.max_steps
        self.regex_budget = limits.inline_regex if inline else limits.regex_total
        self.original = ctx.message
        self.header = Header.parse(ctx.message)
        self.body_start = self.header.end  # edits never move the body: read it here
        self._now: datetime | None = None  # read when a date test asks
        self.globals: dict[str, str] = {}
        self.flags = ""  # rfc5232:3 the internal variable
        self._body: dict[tuple[str, tuple[str, ...]], list[bytes]] = {}
        self.duplicates: dict[str, bool] = {}  # rfc7352 answers of this run
        self.marks: dict[str, float] = {}  # rfc7352 records to make afterwards
        self.added_header = 0  # rfc5293 octets added
        self.regex_time = 0.0  # seconds spent in :regex matches
        # Values the compiled tests prepared (fast.py), by what they were
        # read from: (header version, values, ...).
        self.memo: dict[str, tuple[Any, ...]] = {}

    @property
    def now(self) -> datetime:
        """The time of the run ("currentdate", rfc5260:5): the context's."""
        if self._now is None:
            given = self.ctx.now
            now = given() if callable(given) else given
            if now is None:
                now = datetime.now(UTC)
            elif now.tzinfo is None:
                now = now.replace(tzinfo=UTC)
            self._now = now
        return self._now

    @property
    def zone(self) -> timezone:
        """The local zone, for dates without :zone (rfc5260:4.1)."""
        return local_zone(self.now)

    def charge(self, steps: int, pos: ast.Position | None = None) -> None:
        self.steps += steps
        if self.steps > self.max_steps:
            if self.inline and self.steps <= self.limits.max_steps:
                raise NeedsWorker
            raise ScriptError(pos, f"the script took more than {self.limits.max_steps} steps")

    # ------------------------------------------------------------------
    # Variables (rfc5229)

    def lookup(self, frame: Frame, ref: Ref) -> str:
        if ref.kind == LOCAL:
            if ref.name in frame.declared:
                return self.globals.get(ref.name, "")
            return frame.locals.get(ref.name, "")
        if ref.kind == GLOBAL:
            return self.globals.get(ref.name, "")
        return frame.matches[ref.index] if ref.index < len(frame.matches) else ""

    def expand(self, frame: Frame, template: Template) -> str:
        """rfc5229:3: one pass, unknown variables are ""."""
        if template.constant:
            return template.raw
        pieces: list[str] = []
        size = 0
        for part in template.parts:
            text = part if isinstance(part, str) else self.lookup(frame, part)
            pieces.append(text)
            size += len(text)
            if size >= MAX_EXPANSION:
                break
        out = "".join(pieces)[:MAX_EXPANSION]
        self.charge(len(out) // OPS_PER_STEP)
        return out

    def expand_all(self, frame: Frame, templates: Sequence[Template]) -> list[str]:
        return [t.raw if t.constant else self.expand(frame, t) for t in templates]

    def assign(self, frame: Frame, ref: Ref, value: str, pos: ast.Position) -> None:
        """rfc5229:4 set; rfc5229:6: a long value is truncated, not an error."""
        value = value[: self.limits.max_variable_size]
        shared = ref.kind == GLOBAL or ref.name in frame.declared
        table = self.globals if shared else frame.locals
        if ref.name not in table and len(table) >= self.limits.max_variables:
            raise ScriptError(pos, f"more than {self.limits.max_variables} variables")
        table[ref.name] = value

    # ------------------------------------------------------------------
    # Matching (rfc5228:2.7, rfc5231, regex)

    def test_values(
        self,
        frame: Frame,
        node: Node,
        values: Sequence[str | bytes],
        keys: Sequence[Template],
        *,
        count: int | None = None,
        capture: bool = True,
        split_keys: bool = False,
    ) -> bool:
        """True if any value matches any key (rfc5228:5.1, 5.4, 5.7);
        sets the match variables of a successful :matches or :regex."""
        spec = node.match
        texts = self.expand_all(frame, keys)
        if split_keys:
            texts = [word for text in texts for word in text.split(" ") if word]
        if spec.kind == "count":  # rfc5231:4.2
            n = str(len(values) if count is None else count)
            return any(
                relation_holds(order(n, key, spec.comparator), spec.relation) for key in texts
            )
        capture = capture and frame.variables
        kind, comparator = spec.kind, spec.comparator
        for value in values:
            if kind in ("contains", "matches"):
                octets = value if isinstance(value, bytes) else encode(value)
                for key in texts:
                    if kind == "contains":
                        self.charge(1 + len(octets) // OPS_PER_STEP, node.pos)
                        if contains(octets, encode(key), comparator):
                            return True
                        continue
                    glob = compile_glob(encode(key), comparator != "i;octet")
                    self.charge(glob_cost(len(octets), glob), node.pos)
                    captures = glob.match(octets, comparator != "i;octet")
                    if captures is not None:
                        if capture:
                            frame.matches = [decode(c) for c in captures]
                        return True
                continue
            text = decode(value) if isinstance(value, bytes) else value
            for key in texts:
                self.charge(1 + len(text) // OPS_PER_STEP, node.pos)
                if kind == "is":
                    if equal(text, key, comparator):
                        return True
                elif kind == "value":
                    if relation_holds(order(text, key, comparator), spec.relation):
                        return True
                elif kind == "regex":
                    groups = self.regex(key, text, comparator, node.pos)
                    if groups is not None:
                        if capture:
                            frame.matches = list(groups)
                        return True
        return False

    def regex(
        self, pattern: str, text: str, comparator: str, pos: ast.Position
    ) -> tuple[str, ...] | None:
        self.charge(regex_cost(pattern), pos)  # before compiling: heavy ones cost
        fold = comparator == CASEMAP
        try:
            search = compile_regex(pattern, fold)
        except RegexError as exc:
            raise ScriptError(pos, str(exc)) from None
        if literal_absent(required_literal(pattern), text, fold):
            return None  # a string every match has is not there
        return self.search(search, text, pos)

    def search(
        self, search: Callable[..., object], text: str, pos: ast.Position
    ) -> tuple[str, ...] | None:
        """A compiled :regex pattern's groups (the whole match first) in
        ``text``, within the per-match and per-run time limits."""
        timeout = min(self.limits.regex_timeout, self.regex_budget - self.regex_time)
        if timeout <= 0:
            if self.inline:
                raise NeedsWorker
            raise ScriptError(pos, "regular expressions took too long")
        started = time.monotonic()
        try:
            return regex_groups(search, text, timeout)
        except MatchTimeout as exc:
            if self.inline:
                raise NeedsWorker from None
            raise ScriptError(pos, str(exc)) from None
        finally:
            self.regex_time += time.monotonic() - started

    # ------------------------------------------------------------------
    # The body (rfc5173), read once per transform

    def body(self, transform: str, types: tuple[str, ...]) -> list[bytes]:
        key = (transform, types)
        cached = self._body.get(key)
        if cached is not None:
            return cached
        limit = self.limits.max_body_scan
        body = body_of(self.original, self.body_start, limit)
        if body is None:
            items: list[bytes] = []
        elif transform == "raw":
            items = [body]
        else:
            items = content_parts(self.original, types, limit)
        self.charge(sum(len(i) for i in items) // OPS_PER_STEP)
        self._body[key] = items
        return items
