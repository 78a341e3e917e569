"""The tests (rfc5228:5 and the extensions'): ``evaluate(run, frame, node)``.

Every test evaluated costs one step; the string work of matching is
charged by ``Run.test_values``.  Tests never raise for what a message
contains (bad addresses, broken dates, missing headers make a test false);
they raise ``ScriptError`` only for what the script asked that cannot be
done (an invalid zone or date part built from variables, a regular
expression that does not compile or takes too long, a failing callback).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final

from estafeta.sieve.dates import DATE_PARTS, date_part, header_date, parse_zone, shifted
from estafeta.sieve.extensions import canonical_mailbox, duplicate, environment
from estafeta.sieve.message import (
    ADDRESS_HEADERS,
    FIELD_NAME,
    Field,
    address_part,
    split_envelope_address,
)
from estafeta.sieve.signatures import Node
from estafeta.sieve.state import Frame, Run, ScriptError
from estafeta.sieve.variables import Template, parse_flags, variable_name

ADDRESS_PARTS: Final = ("localpart", "domain", "user", "detail")
TRANSFORMS: Final = ("raw", "text")


def evaluate(run: Run, frame: Frame, node: Node) -> bool:
    run.charge(1, node.pos)
    return _TESTS[node.name](run, frame, node)


def _strings(value: object) -> tuple[Template, ...]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, Template):
        return (value,)
    return ()


def _string(value: object) -> Template:
    assert isinstance(value, Template)
    return value


def _keys(node: Node) -> tuple[Template, ...]:
    return _strings(node.args[-1])


def _fields(
    run: Run,
    frame: Frame,
    node: Node,
    names: Sequence[Template],
    only: frozenset[str] | None = None,
) -> list[Field]:
    """The fields named (in the order of the names, rfc5260:6), narrowed
    to one by :index/:last; an invalid name names nothing (rfc5228:2.4.2.2),
    nor does one outside ``only``."""
    fields: list[Field] = []
    for name in run.expand_all(frame, names):
        if FIELD_NAME.match(name) and (only is None or name.lower() in only):
            fields.extend(run.header.named(name))
    index = node.tag("index")
    if isinstance(index, int):
        if index > len(fields):
            return []
        return [fields[-index] if node.tag("last") else fields[index - 1]]
    return fields


def address_part_of(node: Node) -> str:
    """The ADDRESS-PART tag of a test (rfc5228:2.7.4), \"all\" without one."""
    for part in ADDRESS_PARTS:
        if part in node.tags:
            return part
    return "all"


# --------------------------------------------------------------------------
# rfc5228:5


def _true(run: Run, frame: Frame, node: Node) -> bool:
    return True


def _false(run: Run, frame: Frame, node: Node) -> bool:
    return False


def _not(run: Run, frame: Frame, node: Node) -> bool:
    return not evaluate(run, frame, node.tests[0])


def _allof(run: Run, frame: Frame, node: Node) -> bool:
    # rfc5229:3.2: short-circuit, left to right.
    return all(evaluate(run, frame, test) for test in node.tests)


def _anyof(run: Run, frame: Frame, node: Node) -> bool:
    return any(evaluate(run, frame, test) for test in node.tests)


def _exists(run: Run, frame: Frame, node: Node) -> bool:
    for name in run.expand_all(frame, _strings(node.args[0])):
        if not FIELD_NAME.match(name) or not run.header.named(name):
            return False
    return True


def _size(run: Run, frame: Frame, node: Node) -> bool:
    limit = node.args[0]
    assert isinstance(limit, int)
    size = len(run.original)  # rfc5228:5.9: octets of the message
    return size > limit if "over" in node.tags else size < limit


def _header(run: Run, frame: Frame, node: Node) -> bool:
    fields = _fields(run, frame, node, _strings(node.args[0]))
    values = [f.decoded for f in fields]
    return run.test_values(frame, node, values, _keys(node))


def _address(run: Run, frame: Frame, node: Node) -> bool:
    # rfc5228:5.1: only the fields that hold addresses.
    fields = _fields(run, frame, node, _strings(node.args[0]), ADDRESS_HEADERS)
    part = address_part_of(node)
    addresses = [a for f in fields for a in f.addresses]
    run.charge(len(addresses) // 16)
    values = [v for a in addresses if (v := address_part(a, part)) is not None]
    # rfc5231:4.2: the count is of mailboxes, whatever the part.
    return run.test_values(frame, node, values, _keys(node), count=len(addresses))


def _envelope(run: Run, frame: Frame, node: Node) -> bool:
    envelope = run.ctx.envelope
    part = address_part_of(node)
    values: list[str] = []
    count = 0
    for name in run.expand_all(frame, _strings(node.args[0])):
        name = name.lower()
        if name == "from":
            raw = envelope.sender
        elif name == "to":
            raw = envelope.recipient
        elif name == "auth":
            raw = envelope.auth
            if not raw:
                continue
        else:
            continue  # an unknown part built from variables matches nothing
        address = split_envelope_address(raw)
        if address is None:
            # rfc5228:5.4: the null reverse-path is "" whatever the part.
            values.append("")
            continue
        count += 1
        value = address_part(address, part)
        if value is not None:
            values.append(value)
    return run.test_values(frame, node, values, _keys(node), count=count)


# --------------------------------------------------------------------------
# Extensions


def _body(run: Run, frame: Frame, node: Node) -> bool:
    transform, types = "text", tuple[str, ...](("text",))
    if "raw" in node.tags:
        transform, types = "raw", ()
    elif "content" in node.tags:
        transform = "content"
        types = tuple(run.expand_all(frame, _strings(node.tag("content"))))
    items = run.body(transform, types)
    # rfc5173:6: body never sets match variables.
    return run.test_values(frame, node, items, _keys(node), capture=False)


def _string_test(run: Run, frame: Frame, node: Node) -> bool:
    sources = run.expand_all(frame, _strings(node.args[0]))
    # rfc5229:5: the count of a string is 0 when it is empty, else 1.
    count = sum(1 for s in sources if s)
    return run.test_values(frame, node, sources, _keys(node), count=count)


def _hasflag(run: Run, frame: Frame, node: Node) -> bool:
    names = node.args[0]
    if names is None:
        holders = [run.flags]
    else:
        holders = []
        for name in _strings(names):
            ref = variable_name(name.raw, frozenset({"global"}), node.pos.line, node.pos.column)
            holders.append(run.lookup(frame, ref))
    flags = [parse_flags([h]) for h in holders]
    values = [f for group in flags for f in group]
    # rfc5232:4: :count is the number of distinct flags of each variable, summed.
    return run.test_values(frame, node, values, _keys(node), count=len(values), split_keys=True)


def _date_args(run: Run, frame: Frame, node: Node) -> tuple[str, str | None]:
    part = run.expand(frame, _string(node.args[-2])).lower()
    if part not in DATE_PARTS:
        raise ScriptError(node.pos, f"unknown date part {part!r}")
    zone_arg = node.tag("zone")
    zone = None if zone_arg is None else run.expand(frame, _string(zone_arg))
    if zone is not None and parse_zone(zone) is None:
        raise ScriptError(node.pos, f"zone {zone!r} is not +hhmm or -hhmm")
    return part, zone


def _date(run: Run, frame: Frame, node: Node) -> bool:
    part, zone = _date_args(run, frame, node)
    fields = _fields(run, frame, node, (_string(node.args[0]),))
    values: list[str] = []
    if fields:  # rfc5260:4: the first field only (unless :index says which)
        found = header_date(fields[0].text)
        if found is not None:
            moment = shifted(found[0], found[1], zone, "originalzone" in node.tags, run.zone)
            if moment is not None:
                values.append(date_part(moment[0], part, moment[1]))
    if not values:
        # rfc5260:4: false when the field is missing or holds no valid date
        # (the :count of such a field is 0).
        return node.match.kind == "count" and run.test_values(
            frame, node, values, _keys(node), count=0
        )
    return run.test_values(frame, node, values, _keys(node), count=1)


def _currentdate(run: Run, frame: Frame, node: Node) -> bool:
    part, zone = _date_args(run, frame, node)
    moment = shifted(run.now, "", zone, False, run.zone)
    if moment is None:
        return False
    return run.test_values(frame, node, [date_part(moment[0], part, moment[1])], _keys(node))


def _mailboxexists(run: Run, frame: Frame, node: Node) -> bool:
    exists: Callable[[str], bool] | None = run.ctx.mailbox_exists
    for name in run.expand_all(frame, _strings(node.args[0])):
        mailbox = canonical_mailbox(name)
        if mailbox == "INBOX":
            continue
        if exists is None or not mailbox:
            return False
        try:
            if not exists(mailbox):
                return False
        except Exception as exc:
            raise ScriptError(node.pos, f"mailboxexists: {exc}") from None
    return True


def _environment(run: Run, frame: Frame, node: Node) -> bool:
    name = run.expand(frame, _string(node.args[0])).lower()
    value = environment(run.ctx).get(name)
    if value is None:
        return False  # rfc5183:4: fails unconditionally, never an error
    return run.test_values(frame, node, [value], _keys(node), count=1 if value else 0)


# --------------------------------------------------------------------------
# rfc5235 spamtest / spamtestplus


def spam_tested(score: float | None) -> bool:
    """Whether something judged the message: ``Context.spam_score`` is a
    number (one that is not finite counts as no judgement)."""
    return score is not None and math.isfinite(score)


def spam_result(score: float | None, percent: bool) -> str:
    """The normalized result (rfc5235:3.1, the left-hand side) of a spam
    score 0..1 (clamped), or None when nothing judged the message: only the
    digits, no text after them.  Halves round up."""
    if score is None or not math.isfinite(score):
        # rfc5235:3.2.1 "0": not tested; rfc5235:3.2.2 with :percent "0"
        # too (clear of spam, or not tested: :count tells them apart).
        return "0"
    score = min(max(score, 0.0), 1.0)
    if percent:
        return str(math.floor(score * 100 + 0.5))  # rfc5235:3.2.2: 0..100
    # rfc5235:3.2.1: 1 tested and clear of spam .. 10 definitely spam.
    return str(1 + math.floor(score * 9 + 0.5))


def _spamtest(run: Run, frame: Frame, node: Node) -> bool:
    score = run.ctx.spam_score
    value = spam_result(score, "percent" in node.tags)
    # rfc5235:3.1: the :count is 1 when a test was done, else 0.
    count = 1 if spam_tested(score) else 0
    return run.test_values(frame, node, [value], _keys(node), count=count)


_TESTS: Final[dict[str, Callable[[Run, Frame, Node], bool]]] = {
    "true": _true,
    "false": _false,
    "not": _not,
    "allof": _allof,
    "anyof": _anyof,
    "exists": _exists,
    "size": _size,
    "header": _header,
    "address": _address,
    "envelope": _envelope,
    "body": _body,
    "string": _string_test,
    "hasflag": _hasflag,
    "date": _date,
    "currentdate": _currentdate,
    "mailboxexists": _mailboxexists,
    "environment": _environment,
    "duplicate": duplicate,
    "spamtest": _spamtest,
}
