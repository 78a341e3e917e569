"""THREAD (rfc5256:3): ORDEREDSUBJECT and REFERENCES, and the THREAD
response (rfc5256:4). Pure functions over small per-message records, no IO.

A record is ``(number, date, message_id, references, subject, reply)``: the
number the client is told (sequence number or UID), the sent date (POSIX
seconds, falling back to the internal date: rfc5256:2.2), the message's
valid Message-ID or None, its references (space-separated Message-IDs:
References, else In-Reply-To's first), its base subject (rfc5256:2.1) as a
collation key and whether that subject marks a reply or forward. The index
keeps these prepared (estafeta.message.sortkeys). Records come in mailbox
order: ties between equal sent dates go by that order (rfc5256:2.2).

Everything is iterative (no recursion a 10,000-deep References chain could
exhaust) and about linear in the records and their references: the sent
dates are ranked once (one sort, in C), and children are gathered in that
order, so every set of siblings comes out sorted (steps 4 and 6) without
sorting each. The one walk that is not bounded so, the loop check of step 1
("A is not a descendant of B"), only runs when B has children, and is
charged per step to a ``search.Budget``, so that a mailbox built to make it
quadratic ends in SearchLimit (NO [LIMIT]) instead of holding a thread.

Where rfc5256 leaves a choice, the peer's (Dovecot's) is taken:

* Step 1.A: a link between two references is only made when the child has
  no parent yet; one that would make a loop is skipped.
* Step 1.B: the message's parent becomes its last reference; a different
  parent it had from step 1.A is dropped first, and if linking to the last
  reference would make a loop, the message stays without a parent.
* Steps 2-3: a message whose parent is a dummy goes to the nearest ancestor
  that is a message, or to the topmost dummy if there is none; a dummy at
  the top with one child gives its place to that child.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from estafeta.imap.search import Budget

__all__ = ["Record", "Tree", "orderedsubject", "references", "render"]

Record = tuple[int, int, str | None, str, str, int]

# A thread tree: (the threads' top nodes in order, the children of each node
# that has some, in order, the number of each node). Nodes are indexes: the
# records' first, then dummies, whose number is 0.
Tree = tuple[list[int], dict[int, list[int]], list[int]]

STEP_WORK = 64
"""Budget units per record, reference or step of a walk: about what one
costs next to a character of a text scan (search.NODE_WORK)."""
_CHECK_EVERY = 4096  # steps of a walk between two charges to the budget


def _columns(records: Sequence[Record]) -> tuple[list[int], list[int], list[int]]:
    """(numbers, dates, the rank of each record by sent date, ties in
    mailbox order: rfc5256:2.2)."""
    numbers = [r[0] for r in records]
    dates = [r[1] for r in records]
    order = sorted(range(len(records)), key=dates.__getitem__)  # stable: mailbox order
    rank = sorted(range(len(records)), key=order.__getitem__)
    return numbers, order, rank


def orderedsubject(records: Sequence[Record], budget: Budget) -> Tree:
    """rfc5256:3 ORDEREDSUBJECT: messages sorted by base subject, then sent
    date; one thread per base subject, its first message the root and every
    later one a child of it, in sent date order; the threads sorted by the
    sent date of their first message (ties: mailbox order)."""
    budget.charge(len(records) * STEP_WORK)
    budget.check()
    numbers, order, _rank = _columns(records)
    subjects = [r[4] for r in records]
    roots: list[int] = []
    children: dict[int, list[int]] = {}
    first: dict[str, int] = {}
    for i in order:  # by sent date: each thread's first message comes first
        subject = subjects[i]
        root = first.get(subject)
        if root is None:
            first[subject] = i
            roots.append(i)  # the threads, by their first message's date
        else:
            children.setdefault(root, []).append(i)
    return roots, children, numbers


def references(records: Sequence[Record], budget: Budget) -> Tree:
    """rfc5256:3 REFERENCES, steps 1 to 6."""
    n = len(records)
    budget.charge(n * STEP_WORK)
    budget.check()
    numbers, order, rank = _columns(records)
    msgids = [r[2] for r in records]
    refs = [r[3] for r in records]

    # Step 1. Nodes 0..n-1 are the messages; a dummy (an id referenced but
    # no message has it) is added after them. A Message-ID belongs to the
    # first message that has it: later ones with the same id, and those
    # without a valid one, have an id of their own (they are not in by_id).
    by_id: dict[str | None, int] = dict(zip(reversed(msgids), range(n - 1, -1, -1), strict=True))
    by_id.pop(None, None)
    find = by_id.get
    parent = [-1] * n
    kids = [0] * n  # children per node: only a node with some can be an ancestor
    walked = 0

    def descends(b: int, a: int) -> bool:
        """Whether ``b`` is a descendant of ``a`` (``a`` has children, and
        is not ``b``): the loop check of step 1, charged per step."""
        nonlocal walked
        steps = 0
        while b != -1 and b != a:
            b = parent[b]
            steps += 1
        walked += steps
        if walked >= _CHECK_EVERY:
            budget.charge(walked * STEP_WORK)
            budget.check()
            walked = 0
        return b == a

    for i, text in enumerate(refs):
        if not text:
            # 1.B without references: no parent (one from an earlier 1.A goes).
            old = parent[i]
            if old != -1:
                parent[i] = -1
                kids[old] -= 1
            continue
        # 1.A: each reference the parent of the next, where the child has no
        # parent yet and no loop would come of it ("A is not a descendant of
        # B": only a node with children can have descendants).
        last = -1
        for ref in text.split(" "):
            current = find(ref)
            if current is None:  # "create a dummy message with this ID"
                current = by_id[ref] = len(parent)
                parent.append(-1)
                kids.append(0)
            if (
                last != -1 and current != last and parent[current] == -1
                and (not kids[current] or not descends(last, current))
            ):  # fmt: skip
                parent[current] = last
                kids[last] += 1
            last = current
        # 1.B: the last reference becomes the parent, unless that is a loop.
        old = parent[i]
        if old != last:
            if old != -1:
                parent[i] = -1
                kids[old] -= 1
            if last != i and (not kids[i] or not descends(last, i)):
                parent[i] = last
                kids[last] += 1
    budget.charge((walked + len(parent)) * STEP_WORK)
    budget.check()

    # Steps 2-3: the nodes without a parent head the threads; dummies go, a
    # message under one moving up to the nearest message above it, or to
    # the topmost dummy. Gathered by sent date, every set of children is in
    # order (step 6) as it is built.
    attach: dict[int, int] = {}  # dummy -> where its children go
    up = [p if p < n else _attach_point(p, n, parent, attach) for p in parent[:n]]
    top = [(rank[i], i) for i in order if up[i] == -1]  # (rank, node) of each thread
    # The messages with a parent, by sent date, grouped by parent (a stable
    # sort keeps the date order within each group).
    below = sorted([i for i in order if up[i] != -1], key=up.__getitem__)
    children = {p: list(group) for p, group in groupby(below, key=up.__getitem__)}
    del below, up
    # Step 4: a dummy at the top sorts by its first child; one with a single
    # child gives its place to it (what is left of step 3).
    for d in range(n, len(parent)):
        if parent[d] != -1:
            continue
        under = children.get(d)
        if under is None:
            continue  # no children: deleted
        if len(under) == 1:
            del children[d]
            top.append((rank[under[0]], under[0]))
        else:
            top.append((rank[under[0]], d))
    top.sort()

    # Step 5: threads with the same base subject merged; step 6 for the
    # sets of siblings that merging changed.
    nodes = _merge_subjects(top, children, records, n, len(parent), rank)
    return nodes, children, numbers + [0] * (max(nodes, default=n - 1) + 1 - n)


def _attach_point(dummy: int, n: int, parent: list[int], attach: dict[int, int]) -> int:
    """Where the children of ``dummy`` go (steps 2-3): its nearest ancestor
    that is a message, else the topmost dummy above it. Every dummy on the
    way gets the same answer, so a chain of dummies is walked once."""
    path = []
    v = dummy
    while True:
        known = attach.get(v)
        if known is not None:
            result = known
            break
        path.append(v)
        up = parent[v]
        if up == -1:
            result = v  # the topmost dummy
            break
        if up < n:
            result = up  # a message
            break
        v = up
    for d in path:
        attach[d] = result
    return result


def _merge_subjects(
    top: list[tuple[int, int]],
    children: dict[int, list[int]],
    records: Sequence[Record],
    n: int,
    next_dummy: int,
    rank: list[int],
) -> list[int]:
    """rfc5256:3 REFERENCES step 5 over the threads ``top`` ((rank, node),
    sorted): the subject table (5.B), then the merges (5.C); and step 6 for
    what they changed. Returns the threads' top nodes, in order."""
    count = len(top)
    nodes = [v for _, v in top]
    # Per thread: its subject and whether it marks a reply or forward (the
    # message's, or a dummy's first child's: 5.B.i).
    first = [children[v][0] if v >= n else v for v in nodes]
    into = [-1] * count  # the thread each one merges into
    table: dict[str, int] = {}
    for t in range(count):
        record = records[first[t]]
        subject = record[4]
        if not subject:  # 5.B.ii: an empty thread subject is skipped
            continue
        held = table.get(subject)
        if held is None:  # 5.B.iv
            table[subject] = t
        elif nodes[held] < n and (nodes[t] >= n or (records[first[held]][5] and not record[5])):
            into[held] = t  # the current thread takes the table's place
            table[subject] = t
        else:
            into[t] = held
    if max(into, default=-1) == -1:
        return nodes  # nothing to merge (the usual case)
    # 5.C: each thread that lost its place merges into the one holding it at
    # the end (following the replacements and the new dummies).
    gone = [False] * count
    reply = [bool(records[f][5]) for f in first]
    touched: set[int] = set()
    for t in range(count):
        if into[t] == -1 or gone[t]:
            continue
        held = into[t]
        while into[held] != -1:
            held = into[held]
        current, holder = nodes[t], nodes[held]
        if current >= n:
            # Both dummies: the current one's children join the table's.
            children[holder] += children.pop(current)
            touched.add(holder)
        elif holder >= n or (reply[t] and not reply[held]):
            # The current message becomes a child of the table's message.
            children.setdefault(holder, []).append(current)
            touched.add(holder)
        else:
            # A new dummy, with both as its children, takes the table's place.
            dummy = next_dummy
            next_dummy += 1
            children[dummy] = [holder, current]
            touched.add(dummy)
            nodes.append(dummy)
            reply.append(False)
            into.append(-1)
            gone.append(False)
            into[held] = len(nodes) - 1
            gone[held] = True
        gone[t] = True
    key = rank.__getitem__
    for node in touched:  # step 6, where merging added children
        children[node].sort(key=key)
    kept = [
        (rank[children[v][0]] if v >= n else rank[v], v) for t, v in enumerate(nodes) if not gone[t]
    ]
    kept.sort()
    return [v for _, v in kept]


def render(tree: Tree) -> bytes:
    """rfc5256:4 THREAD response, without the "* ": each thread a
    parenthesized list; a message with one child continues the list, one with
    several opens a nested list per child; a dummy shows only its children.
    Written with an explicit stack: any depth, linear time."""
    roots, children, numbers = tree
    if not roots:
        return b"THREAD"
    shown = list(map(str, numbers))
    out: list[str] = ["THREAD "]
    append = out.append
    get = children.get
    stack: list[int | str] = []
    push = stack.append
    pop = stack.pop
    for root in roots:
        append("(")
        node: int | str = root
        while True:
            if isinstance(node, str):
                append(node)
            else:
                below = get(node)
                if numbers[node]:
                    append(shown[node])
                    if below is not None:
                        if len(below) == 1:
                            append(" ")
                            node = below[0]
                            continue
                        append(" ")
                if below is not None:
                    for child in reversed(below):
                        push(")")
                        push(child)
                        push("(")
            if not stack:
                break
            node = pop()
        append(")")
    return "".join(out).encode("ascii")
