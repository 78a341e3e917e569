"""The shared namespace (rfc2342) and ACL commands (rfc4314:3) of a session.

Every mailbox name a command takes goes through ``locate``: personal names
stay in the user's store with every right; names under ``Shared/`` are
mailboxes of the shared store (estafeta.store.shared) with the rights its
ACL gives the user. Handlers here raise No / Bad like the session's own;
the session's tables list them. Design: docs/shared-mailboxes.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from estafeta.address import AddressError, normalize_address
from estafeta.imap import commands as c
from estafeta.imap.errors import Bad, No
from estafeta.imap.parser import Command
from estafeta.message import imap_string
from estafeta.store import shared
from estafeta.store.index import Mailbox
from estafeta.store.operations import CopyResult
from estafeta.store.reader import IndexReader

if TYPE_CHECKING:
    from estafeta.imap.selected import Selected
    from estafeta.imap.session import Session

PREFIX = "Shared"  # rfc2342:5 the shared namespace's prefix, without the delimiter
NAMESPACE = 'NAMESPACE (("" "/")) NIL (("Shared/" "/"))'  # rfc2342:5
ALL = shared.ALL_RIGHTS
# rfc4314:5.2: READ-WRITE needs one of these ("s" keeps a private \Seen here,
# so it is not a "shared flag right").
WRITE_RIGHTS = "iewt"
# rfc4314:4 MYRIGHTS: any of these, else the mailbox does not exist for the user.
ANY_RIGHT = "lrikxa"


@dataclass(frozen=True)
class Place:
    """Where an IMAP mailbox name is: the store (``owner``), its name there,
    the user's rights on it, and its row (None: no such mailbox)."""

    owner: str
    name: str
    rights: str
    box: Mailbox | None

    @property
    def shared(self) -> bool:
        return self.owner == shared.OWNER


def in_namespace(name: str) -> bool:
    """Whether an IMAP name is in the shared namespace."""
    return name == PREFIX or name.startswith(PREFIX + "/")


def imap_name(name: str) -> str:
    """The IMAP name of a mailbox of the shared store."""
    return f"{PREFIX}/{name}"


def locate(s: Session, name: str) -> Place:
    """The place of IMAP mailbox ``name`` for the session's user."""
    user = s.user
    assert user is not None
    if not in_namespace(name):
        return Place(user, name, ALL, s.index().mailbox(name))
    inner = name[len(PREFIX) + 1 :]
    reader = s.shared_index()
    box = reader.mailbox(inner) if inner else None
    rights = reader.rights(box.id, user) if box is not None else ""
    return Place(shared.OWNER, inner, rights, box)


def need(place: Place, rights: str, name: str) -> Mailbox:
    """The mailbox if the user holds every right of ``rights`` (rfc4314:4);
    else NO [NOPERM], or NO [NONEXISTENT] for a mailbox the user may not
    even see (rfc4314:6: no more than if it did not exist)."""
    if place.box is None or not place.rights:
        raise No(f"No mailbox {name}", "NONEXISTENT")
    missing = [right for right in rights if right not in place.rights]
    if missing:
        raise No(f"Not allowed: needs the {''.join(missing)!r} right (rfc4314:4)", "NOPERM")
    return place.box


def viewer_reader(s: Session, place: Place) -> IndexReader:
    """The reader of a place as the user sees it (its private \\Seen)."""
    if not place.shared:
        return s.index()
    assert s.user is not None
    return s.store.viewer_reader(shared.OWNER, s.user)


def allowed_flags(flags: Sequence[str], rights: str) -> list[str]:
    """rfc4314:4 APPEND / COPY: the flags the user may set, the others dropped."""
    return [flag for flag in flags if shared.flag_right(flag) in rights]


def shared_boxes(s: Session) -> list[tuple[str, Mailbox, str]]:
    """(IMAP name, mailbox, rights) of each shared mailbox the user may list."""
    assert s.user is not None
    reader = s.shared_index()
    visible = reader.visible(s.user)
    if not visible:
        return []
    return [
        (imap_name(box.name), box, visible[box.name])
        for box in reader.mailboxes()
        if "l" in visible.get(box.name, "")
    ]


MAX_CROSSING = 1000
"""Messages of one COPY / MOVE between the user's store and the shared store
(each is read and written again); more: NO [LIMIT]."""
_CROSSING_ROWS = 256


async def copy_across(
    s: Session,
    view: Selected,
    uids: Sequence[int],
    target: Place,
    move: bool,
    quota: int | None,
) -> CopyResult:
    r"""COPY / MOVE between the user's store and the shared store (no hard
    link crosses stores): the messages are read and appended to the target
    in one commit (``append_many``, all or none), then, for MOVE, removed
    from the source: a crash in between leaves a copy, never a loss. Into a
    shared mailbox only the flags the user may set go (rfc4314:4), \Seen as
    the user's own."""
    if len(uids) > MAX_CROSSING:
        raise No(f"At most {MAX_CROSSING} messages at a time between namespaces", "LIMIT")
    reader = s.box_index()
    sources: list[int] = []
    items: list[tuple[bytes, Sequence[str], float | None]] = []
    seen: list[bool] = []
    for start in range(0, len(uids), _CROSSING_ROWS):
        rows = reader.fetch_rows(view.box.id, uids[start : start + _CROSSING_ROWS], summary=False)
        for uid, file, _, internal_date, flag_text, *_ in rows:
            try:
                data = await asyncio.to_thread(reader.content, file)
            except FileNotFoundError:
                continue  # expunged meanwhile
            flags = flag_text.split()
            if target.shared:
                flags = allowed_flags(flags, target.rights)
            seen.append("\\Seen" in flags)
            if target.shared:
                flags = [flag for flag in flags if flag != "\\Seen"]
            sources.append(uid)
            items.append((data, flags, float(internal_date)))
    if not items:
        return CopyResult(0, [], [], [])
    delivered = await s.store.append_many(target.owner, target.name, items, quota=quota)
    mine = [d.uid for d, was in zip(delivered, seen, strict=True) if was and target.shared]
    if mine:
        await asyncio.to_thread(
            s.store.store_flags, target.owner, target.name, mine, "+", ["\\Seen"],
            viewer=s.user, rights=target.rights,
        )  # fmt: skip
    expunged: list[int] = []
    if move:
        expunged = await asyncio.to_thread(s.store.remove, view.owner, view.box.name, sources)
    return CopyResult(delivered[0].uidvalidity, sources, [d.uid for d in delivered], expunged)


async def _identifier(s: Session, text: str) -> str:
    """rfc4314:3 an identifier as stored: "anyone" or an account's address
    (normalised as at login); BAD for one that cannot be, NO for no account
    (rfc4314:6 recommends checking)."""
    try:
        ident = shared.identifier(text)
    except ValueError as exc:
        raise Bad(f"Bad identifier: {exc}") from None
    if ident == shared.ANYONE:
        return ident
    try:
        address = normalize_address(ident)
    except AddressError as exc:
        raise Bad(f"Bad identifier: {exc}") from None
    if not await asyncio.to_thread(s.accounts.exists, address):
        raise No(f"No account {address}", "NONEXISTENT")
    return address


def _personal(place: Place, name: str) -> None:
    if place.box is None:
        raise No(f"No mailbox {name}", "NONEXISTENT")
    if not place.shared:
        raise No("Personal mailboxes are not shared; use the Shared/ namespace", "CANNOT")


async def cmd_setacl(s: Session, cmd: Command) -> None:
    """rfc4314:3.1 SETACL and rfc4314:3.2 DELETEACL: "a" on the mailbox."""
    args: c.SetAcl | c.DeleteAcl = cmd.args  # type: ignore[assignment]
    place = locate(s, args.mailbox)
    if place.shared:
        need(place, "a", args.mailbox)
    _personal(place, args.mailbox)
    ident = await _identifier(s, args.identifier)
    rights: str | None = None
    if isinstance(args, c.SetAcl):
        box = place.box
        assert box is not None
        current = dict(s.shared_index().acl(box.id)).get(ident, "")
        try:
            rights = shared.modify(current, args.rights)
        except shared.RightsError as exc:
            raise Bad(str(exc)) from None  # rfc4314:3.1: never ignored silently
    await asyncio.to_thread(s.store.set_acl, place.name, ident, rights)
    s.tagged(cmd.tag, "OK", f"{cmd.name} completed")


async def cmd_getacl(s: Session, cmd: Command) -> None:
    """rfc4314:3.3 GETACL: "a" on the mailbox; the ACL response (3.6)."""
    args: c.GetAcl = cmd.args  # type: ignore[assignment]
    place = locate(s, args.mailbox)
    pairs: list[tuple[str, str]]
    if place.shared:
        box = need(place, "a", args.mailbox)
        pairs = s.shared_index().acl(box.id)
    else:
        if place.box is None:
            raise No(f"No mailbox {args.mailbox}", "NONEXISTENT")
        assert s.user is not None
        pairs = [(s.user, ALL)]  # the owner's, and nobody else's
    line = b"ACL " + s.mailbox_name(args.mailbox)
    for ident, rights in pairs:
        line += b" " + _astring(ident) + b" " + _astring(shared.show(rights))
    s.untagged(line)
    s.tagged(cmd.tag, "OK", "GETACL completed")


async def cmd_listrights(s: Session, cmd: Command) -> None:
    """rfc4314:3.4 LISTRIGHTS: "a" on the mailbox. No right is tied to
    another here (RIGHTS=texk), so each is offered alone (3.7, 2.1.1)."""
    args: c.ListRights = cmd.args  # type: ignore[assignment]
    place = locate(s, args.mailbox)
    if place.shared:
        need(place, "a", args.mailbox)
        required, optional = "", [*shared.RIGHTS, "c", "d"]
    else:
        if place.box is None:
            raise No(f"No mailbox {args.mailbox}", "NONEXISTENT")
        # The owner always has every right; nobody else can get any.
        assert s.user is not None
        owner = _same_account(args.identifier, s.user)
        required, optional = (shared.show(ALL), []) if owner else ("", [])
    line = b"LISTRIGHTS " + s.mailbox_name(args.mailbox) + b" " + _astring(args.identifier)
    line += b" " + _astring(required)
    for right in optional:
        line += b" " + right.encode()
    s.untagged(line)
    s.tagged(cmd.tag, "OK", "LISTRIGHTS completed")


async def cmd_myrights(s: Session, cmd: Command) -> None:
    """rfc4314:3.5 MYRIGHTS: any right at all on the mailbox (rfc4314:4)."""
    args: c.MyRights = cmd.args  # type: ignore[assignment]
    place = locate(s, args.mailbox)
    if place.box is None or not any(right in place.rights for right in ANY_RIGHT):
        raise No(f"No mailbox {args.mailbox}", "NONEXISTENT")
    s.untagged(myrights_line(s, args.mailbox, place.rights))
    s.tagged(cmd.tag, "OK", "MYRIGHTS completed")


def myrights_line(s: Session, name: str, rights: str) -> bytes:
    """rfc4314:3.8 the MYRIGHTS response (also for rfc8440 LIST RETURN (MYRIGHTS))."""
    return b"MYRIGHTS " + s.mailbox_name(name) + b" " + _astring(shared.show(rights))


def _same_account(text: str, user: str) -> bool:
    try:
        return normalize_address(text) == user
    except AddressError:
        return False


def _astring(text: str) -> bytes:
    """An identifier or rights string as an IMAP string (rfc9051:4.3)."""
    return imap_string(text)
