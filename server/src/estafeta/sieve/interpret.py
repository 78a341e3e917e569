"""The interpreter: ``run(scripts, context)`` -> ``Result``, no IO.

The scripts of a delivery (the operator's global_before scripts, the
user's active script, global_after) run in order as one execution: one
implicit keep (rfc5228:2.10.2) that any of them may cancel, one step
budget, one internal flag variable (so a global script's ``addflag`` also
marks what the user's script files), one "global" variable namespace
(rfc6609:3.4), one edited header (rfc5293).  ``stop`` (rfc5228:3.3) ends
the whole run wherever it is: a global_before script that stops leaves the
user's script unrun, on purpose (an operator's "this is spam, stop here");
``return`` (rfc6609:3.3) ends only the script it is in, a top-level one
too (the RFC's "stop" there differs only when more scripts follow).

Runtime errors (rfc5228:2.10.6) -- a limit crossed (steps, actions,
redirects, variables, include depth and count), incompatible actions
(rfc5429:2.4, rfc5230:4.7), a missing include, an invalid address or
mailbox built from variables, a regular expression that times out, a
callback that fails -- end the run in the implicit keep: the result is
``[Keep()]`` (INBOX, no flags, the original message, rfc5293:7) with the
error in ``errors``.  No other exception leaves ``run``.

Actions are deduplicated as they are taken (rfc5228:2.10.3): one delivery
per mailbox ("keep" and ``fileinto "INBOX"`` are the same mailbox; the
flags of the last one win, rfc5232:3), one redirect per address, and the
limits count distinct actions, so repeating ``keep`` is never an error.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from estafeta.sieve import actions
from estafeta.sieve.actions import INBOX, Action
from estafeta.sieve.extensions import addheader, canonical_mailbox, deleteheader, vacation
from estafeta.sieve.fast import COMMAND, IF, plan_of
from estafeta.sieve.limits import Limits
from estafeta.sieve.message import sieve_address
from estafeta.sieve.signatures import Compiled, Node
from estafeta.sieve.state import Frame, NeedsWorker, Return, Run, ScriptError, Stop
from estafeta.sieve.variables import (
    MODIFIERS,
    Ref,
    Template,
    add_flags,
    apply_modifiers,
    parse_flags,
    remove_flags,
    variable_name,
)

_GLOBAL_NS = frozenset({"global"})
_MODIFIER_ORDER = sorted(MODIFIERS, key=lambda m: -MODIFIERS[m])


@dataclass(frozen=True)
class Envelope:
    sender: str  # reverse-path without <>; "" for the null sender
    recipient: str  # the RCPT TO address as given (original recipient)
    auth: str = ""  # authenticated submitter, if any (envelope "auth" part)


@dataclass
class Context:
    message: bytes  # the message as it will be delivered (CRLF)
    envelope: Envelope
    account: str  # the account being delivered to (normalized address)
    addresses: Sequence[str] = ()  # all addresses that reach the account
    # "currentdate"; None -> now in UTC; a callable is asked when a date
    # test needs it (most runs never do).
    now: datetime | Callable[[], datetime] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)  # rfc5183 items
    # rfc7352: seen(key, seconds) -> True when key was recorded within seconds.
    seen: Callable[[str, float], bool] | None = None
    # rfc6609: load_include("personal"|"global", name) -> Compiled or None.
    load_include: Callable[[str, str], Compiled | None] | None = None
    # rfc5235 spamtest: the spam filter's score, 0.0 (ham) .. 1.0 (spam);
    # None when nothing judged the message (spamtest sees "0").
    spam_score: float | None = None
    # rfc5490:3.1 mailboxexists: does the account have this mailbox (IMAP
    # name) and may mail be delivered into it?  None: only INBOX exists.
    mailbox_exists: Callable[[str], bool] | None = None


@dataclass
class Result:
    actions: list[Action]
    errors: list[str] = field(default_factory=list)
    message: bytes | None = None  # the edited message (editheader), else None
    duplicate_marks: list[tuple[str, float]] = field(default_factory=list)


# What a script may do that reads files or databases through the context's
# callbacks (duplicate, include, mailboxexists, the addresses of vacation)
# or parses the body (rfc5173): not on the event loop.
_NOT_INLINE = frozenset({"duplicate", "include", "mailbox", "vacation", "vacation-seconds", "body"})


def inline_safe(scripts: Sequence[Compiled]) -> bool:
    """Whether ``scripts`` may run with ``inline=True``: no capability they
    require calls back into IO (see ``run``)."""
    return not any(script.requires & _NOT_INLINE for script in scripts)


def run(
    scripts: Sequence[Compiled],
    ctx: Context,
    limits: Limits = Limits(),  # noqa: B008
    *,
    inline: bool = False,
) -> Result:
    """Run ``scripts`` as one execution; never raises for script problems.

    ``inline``: the caller is an event loop, and ``scripts`` are
    ``inline_safe``; the run stops at the inline budget (``Limits.inline_steps``,
    ``inline_regex``) with ``NeedsWorker``, having decided nothing, for the
    caller to run it again in a thread with the full limits."""
    try:
        return _Executor(ctx, limits, inline).run(scripts)
    except NeedsWorker:
        raise
    except ScriptError as exc:
        where = f"{exc.pos.line}:{exc.pos.column}: " if exc.pos is not None else ""
        return _failed(f"{exc.script or 'script'}:{where}{exc.message}")
    except Exception as exc:  # a bug of ours: still the implicit keep
        return _failed(f"internal error: {exc!r}")


def _failed(message: str) -> Result:
    # rfc5228:2.10.6: the implicit keep, of the original message (rfc5293:7).
    return Result(actions=[actions.Keep()], errors=[message])


class _Executor:
    def __init__(self, ctx: Context, limits: Limits, inline: bool = False) -> None:
        self.run_state = Run(ctx, limits, inline)
        self.ctx = ctx
        self.limits = limits
        self.deliveries: dict[tuple[str, str], Action] = {}
        self.implicit_keep = True
        self.discarded = False
        self.rejected = False
        self.vacationed = False
        self.redirects = 0
        self.stack: list[tuple[str, str]] = []  # (location, name) being included
        self.included: set[tuple[str, str]] = set()
        self.includes = 0

    def run(self, scripts: Sequence[Compiled]) -> Result:
        try:
            for script in scripts:
                self.script(script)
        except Stop:
            pass
        state = self.run_state
        result = list(self.deliveries.values())
        if self.implicit_keep and ("mailbox", INBOX) not in self.deliveries:
            result.append(actions.Keep(tuple(parse_flags([state.flags]))))
        if self.discarded and not any(not isinstance(a, actions.Vacation) for a in result):
            result.append(actions.Discard())
        message = None
        if state.header.edited:
            edited = state.header.to_bytes()
            if edited != state.original:
                message = edited
        return Result(actions=result, message=message, duplicate_marks=list(state.marks.items()))

    def script(self, script: Compiled) -> None:
        frame = Frame(script)
        try:
            self.block(frame, script.commands)
        except Return:
            pass
        except ScriptError as exc:
            if not exc.script:
                exc.script = script.name
            raise

    # ------------------------------------------------------------------
    # Control (rfc5228:3)

    def block(self, frame: Frame, nodes: tuple[Node, ...]) -> None:
        state = self.run_state
        for kind, first, test, block in plan_of(frame.script, nodes):
            if kind == IF:
                state.steps += 1
                if state.steps > state.max_steps:
                    state.charge(0, first)
                if test(state, frame):
                    self.block(frame, block)
            elif kind == COMMAND:
                self.command(frame, first)
            else:
                # An if, its elsif's and its else: the first whose test holds runs.
                for pos, branch_test, branch_block in first:
                    state.steps += 1
                    if state.steps > state.max_steps:
                        state.charge(0, pos)
                    if branch_test is None or branch_test(state, frame):
                        self.block(frame, branch_block)
                        break

    def command(self, frame: Frame, node: Node) -> None:
        self.run_state.charge(1, node.pos)
        handler = _COMMANDS[node.name]
        handler(self, frame, node)

    # ------------------------------------------------------------------
    # Helpers

    def text(self, frame: Frame, value: object) -> str:
        assert isinstance(value, Template)
        return self.run_state.expand(frame, value)

    def texts(self, frame: Frame, value: object) -> list[str]:
        if isinstance(value, Template):
            value = (value,)
        assert isinstance(value, tuple)
        return self.run_state.expand_all(frame, value)

    def flags_of(self, frame: Frame, node: Node) -> tuple[str, ...]:
        """rfc5232:5 :flags, or the internal variable."""
        given = node.tag("flags")
        if given is None:
            return tuple(parse_flags([self.run_state.flags]))
        return tuple(parse_flags(self.texts(frame, given)))

    def record(self, key: tuple[str, str], action: Action, node: Node) -> None:
        """Take an action once (rfc5228:2.10.3), within the limits
        (rfc5228:2.10.4) and compatible with the others (rfc5429:2.4)."""
        kind = key[0]
        if kind in ("mailbox", "redirect") and self.rejected:
            raise ScriptError(node.pos, f"{node.name} cannot be used with reject")
        existing = self.deliveries.get(key)
        if existing is None:
            if len(self.deliveries) >= self.limits.max_actions:
                raise ScriptError(node.pos, f"more than {self.limits.max_actions} actions")
            if kind == "redirect":
                self.redirects += 1
                if self.redirects > self.limits.max_redirects:
                    raise ScriptError(node.pos, f"more than {self.limits.max_redirects} redirects")
            self.deliveries[key] = action
            return
        if isinstance(existing, actions.Keep | actions.FileInto) and isinstance(
            action, actions.Keep | actions.FileInto
        ):
            # rfc5232:3: the last flags win; the first action keeps its form
            # ("keep" then ``fileinto "INBOX"`` is one keep).
            merged: Action = actions.Keep(action.flags)
            if isinstance(existing, actions.FileInto):
                later_copy = action.copy if isinstance(action, actions.FileInto) else False
                later_create = action.create if isinstance(action, actions.FileInto) else False
                merged = actions.FileInto(
                    existing.mailbox,
                    action.flags,
                    copy=existing.copy and later_copy,
                    create=existing.create or later_create,
                    special_use=existing.special_use,
                )
            self.deliveries[key] = merged
        elif isinstance(existing, actions.Redirect) and isinstance(action, actions.Redirect):
            self.deliveries[key] = actions.Redirect(
                existing.address, copy=existing.copy and action.copy
            )

    # ------------------------------------------------------------------
    # Actions (rfc5228:4 and extensions)

    def do_stop(self, frame: Frame, node: Node) -> None:
        raise Stop

    def do_return(self, frame: Frame, node: Node) -> None:
        # rfc6609:3.3: the current script ends.  In a top-level script the
        # RFC makes it "stop"; here it ends that script only, so that an
        # operator's global_before script can end early without skipping
        # the user's script (with a single script the two are the same).
        raise Return

    def do_keep(self, frame: Frame, node: Node) -> None:
        self.record(("mailbox", INBOX), actions.Keep(self.flags_of(frame, node)), node)
        self.implicit_keep = False

    def do_discard(self, frame: Frame, node: Node) -> None:
        self.discarded = True
        self.implicit_keep = False

    def do_fileinto(self, frame: Frame, node: Node) -> None:
        mailbox = canonical_mailbox(self.text(frame, node.args[0]))
        if not mailbox or any(unicodedata.category(c) == "Cc" for c in mailbox):
            raise ScriptError(node.pos, f"fileinto: invalid mailbox name {mailbox!r}")
        copy = "copy" in node.tags
        flags = self.flags_of(frame, node)
        action = actions.FileInto(mailbox, flags, copy=copy, create="create" in node.tags)
        self.record(("mailbox", mailbox), action, node)
        if not copy:  # rfc3894:3: :copy leaves the implicit keep alone
            self.implicit_keep = False

    def do_redirect(self, frame: Frame, node: Node) -> None:
        text = self.text(frame, node.args[0])
        address = sieve_address(text)
        if address is None:
            # rfc5228:2.4.2.3: an outbound address must be a sieve-address.
            raise ScriptError(node.pos, f"redirect: {text!r} is not an address")
        local, _, domain = address.rpartition("@")
        copy = "copy" in node.tags
        key = ("redirect", f"{local}@{domain.lower()}")
        self.record(key, actions.Redirect(address, copy=copy), node)
        if not copy:
            self.implicit_keep = False

    def do_reject(self, frame: Frame, node: Node) -> None:
        # rfc5429:2.4: one reject per script, never with vacation, and here
        # not with a delivery (keep, fileinto, redirect) either.
        if self.rejected:
            raise ScriptError(node.pos, "only one reject or ereject per script")
        if self.vacationed or self.deliveries:
            raise ScriptError(node.pos, f"{node.name} cannot be used with other actions")
        reason = self.text(frame, node.args[0])
        action: Action = (
            actions.Reject(reason) if node.name == "reject" else actions.EReject(reason)
        )
        self.record((node.name, ""), action, node)
        self.rejected = True
        self.implicit_keep = False

    def do_vacation(self, frame: Frame, node: Node) -> None:
        # rfc5230:4.7: once per script; not with reject.
        if self.vacationed:
            raise ScriptError(node.pos, "vacation can be used only once")
        if self.rejected:
            raise ScriptError(node.pos, "vacation cannot be used with reject")
        self.vacationed = True
        reply = vacation(self.run_state, frame, node)
        if reply is not None:
            self.record(("vacation", ""), reply, node)

    def do_flags(self, frame: Frame, node: Node) -> None:
        """rfc5232:3 setflag/addflag/removeflag on a variable or the internal one."""
        state = self.run_state
        target = node.args[0]
        ref: Ref | None = None
        if isinstance(target, Template):
            ref = variable_name(target.raw, _GLOBAL_NS, node.pos.line, node.pos.column)
            current = state.lookup(frame, ref)
        else:
            current = state.flags
        given = parse_flags(self.texts(frame, node.args[1]))
        if node.name == "setflag":
            value = " ".join(given)
        elif node.name == "addflag":
            value = add_flags(current, given)
        else:
            value = remove_flags(current, given)
        if ref is None:
            state.flags = value[: self.limits.max_variable_size]
        else:
            state.assign(frame, ref, value, node.pos)

    def do_set(self, frame: Frame, node: Node) -> None:
        target = node.args[0]
        assert isinstance(target, Template)
        ref = variable_name(target.raw, _GLOBAL_NS, node.pos.line, node.pos.column)
        value = self.text(frame, node.args[1])
        modifiers = tuple(m for m in _MODIFIER_ORDER if m in node.tags)
        if modifiers:
            value = apply_modifiers(value, modifiers)
        self.run_state.assign(frame, ref, value, node.pos)

    def do_global(self, frame: Frame, node: Node) -> None:
        for item in node.args[0] if isinstance(node.args[0], tuple) else ():
            name = item.raw.lower()
            if name in frame.locals:
                # rfc6609:3.4.1: a variable set before it is declared global.
                raise ScriptError(node.pos, f"global {name!r}: already set in this script")
            frame.declared.add(name)

    def do_include(self, frame: Frame, node: Node) -> None:
        """rfc6609:3.2."""
        target = node.args[0]
        assert isinstance(target, Template)
        location = "global" if "global" in node.tags else "personal"
        key = (location, target.raw)
        if "once" in node.tags and (key in self.included or key in self.stack):
            return
        if key in self.stack:
            raise ScriptError(node.pos, f"include {target.raw!r}: recursive inclusion")
        if len(self.stack) + 1 >= self.limits.max_include_depth:
            raise ScriptError(
                node.pos, f"includes nested deeper than {self.limits.max_include_depth}"
            )
        self.includes += 1
        if self.includes > self.limits.max_includes:
            raise ScriptError(node.pos, f"more than {self.limits.max_includes} includes")
        loader = self.ctx.load_include
        try:
            script = loader(location, target.raw) if loader is not None else None
        except Exception as exc:
            raise ScriptError(node.pos, f"include {target.raw!r}: {exc}") from None
        if script is None:
            if "optional" in node.tags:
                return
            raise ScriptError(node.pos, f"include: no {location} script {target.raw!r}")
        self.included.add(key)
        self.stack.append(key)
        try:
            self.script(script)
        finally:
            self.stack.pop()

    def do_addheader(self, frame: Frame, node: Node) -> None:
        addheader(self.run_state, frame, node)

    def do_deleteheader(self, frame: Frame, node: Node) -> None:
        deleteheader(self.run_state, frame, node)


_COMMANDS: dict[str, Callable[[_Executor, Frame, Node], None]] = {
    "stop": _Executor.do_stop,
    "return": _Executor.do_return,
    "keep": _Executor.do_keep,
    "discard": _Executor.do_discard,
    "fileinto": _Executor.do_fileinto,
    "redirect": _Executor.do_redirect,
    "reject": _Executor.do_reject,
    "ereject": _Executor.do_reject,
    "vacation": _Executor.do_vacation,
    "setflag": _Executor.do_flags,
    "addflag": _Executor.do_flags,
    "removeflag": _Executor.do_flags,
    "set": _Executor.do_set,
    "global": _Executor.do_global,
    "include": _Executor.do_include,
    "addheader": _Executor.do_addheader,
    "deleteheader": _Executor.do_deleteheader,
}
