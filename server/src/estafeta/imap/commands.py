"""The arguments of each IMAP command, as the parser produces them.

One frozen dataclass per command (``Command.args`` in ``estafeta.imap.parser``).
Commands that share a grammar share a shape: ``Examine`` is a ``Select``,
``Unsubscribe`` a ``Subscribe`` and ``Move`` a ``Copy``, so a handler written
for the first accepts the second. Values are already decoded: mailbox names
are Unicode (modified UTF-7 undone, "INBOX" in upper case), system flags are
spelled "\\Seen", keywords as sent, numbers are ints.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import NamedTuple

from estafeta.imap.notify import Group
from estafeta.imap.types import FetchAtt, SearchKey, SequenceSet

__all__ = [
    "Append",
    "Authenticate",
    "CancelUpdate",
    "Capability",
    "Check",
    "Close",
    "Compress",
    "Copy",
    "Create",
    "Delete",
    "DeleteAcl",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "GenUrlAuth",
    "GetAcl",
    "GetMetadata",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "List",
    "ListRights",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "MyRights",
    "Namespace",
    "Noop",
    "Notify",
    "QresyncParams",
    "Rename",
    "ResetKey",
    "Search",
    "Select",
    "SetAcl",
    "SetMetadata",
    "SetQuota",
    "Sort",
    "StartTls",
    "Status",
    "Store",
    "Subscribe",
    "Thread",
    "UidExpunge",
    "Unselect",
    "Unsubscribe",
    "UrlFetch",
]


# -- any state (rfc9051:6.1) --------------------------------------------------


@dataclass(frozen=True)
class Capability:
    pass


@dataclass(frozen=True)
class Noop:
    pass


@dataclass(frozen=True)
class Logout:
    pass


@dataclass(frozen=True)
class Id:
    """rfc2971:3.1; ``params`` is None for ``ID NIL``; values may be None (NIL)."""

    params: dict[str, str | None] | None


# -- not authenticated (rfc9051:6.2) ------------------------------------------


@dataclass(frozen=True)
class StartTls:
    pass


@dataclass(frozen=True)
class Authenticate:
    """rfc9051:6.2.2; ``initial_response`` is the rfc4959 SASL-IR argument as
    sent (base64 text, or "=" for an empty response), None when absent."""

    mechanism: str
    initial_response: str | None = None


@dataclass(frozen=True)
class Login:
    user: str
    password: str


# -- authenticated (rfc9051:6.3) ----------------------------------------------


@dataclass(frozen=True)
class Enable:
    """rfc5161; the capability names as sent."""

    capabilities: tuple[str, ...]


class QresyncParams(NamedTuple):
    """rfc7162:3.2.5 QRESYNC (uidvalidity modseq [known-uids] [seq-match-data])."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # (known sequence numbers, the UIDs they correspond to)
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class Select:
    """rfc9051:6.3.2; ``condstore``/``qresync`` are rfc7162 select parameters."""

    mailbox: str
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True)
class Examine(Select):
    """rfc9051:6.3.3: SELECT, read-only."""


@dataclass(frozen=True)
class Create:
    """rfc9051:6.3.4; ``use`` are rfc6154 special-use attributes ("\\Sent")."""

    mailbox: str
    use: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delete:
    mailbox: str


@dataclass(frozen=True)
class Rename:
    old: str
    new: str


@dataclass(frozen=True)
class Subscribe:
    mailbox: str


@dataclass(frozen=True)
class Unsubscribe(Subscribe):
    pass


@dataclass(frozen=True)
class List:
    """rfc9051:6.3.9 with rfc5258 LIST-EXTENDED and rfc5819 LIST-STATUS.

    ``selection`` holds the selection options ("SUBSCRIBED", "REMOTE",
    "RECURSIVEMATCH", "SPECIAL-USE"), ``returns`` the return options
    ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", rfc8440 "MYRIGHTS"; STATUS is
    not among them) and
    ``status_items`` the items of RETURN (STATUS (...)). All upper case.
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lsub:
    """rfc3501:6.3.9."""

    reference: str
    pattern: str


@dataclass(frozen=True)
class Namespace:
    """rfc2342 / rfc9051:6.3.10."""


@dataclass(frozen=True)
class Status:
    """rfc9051:6.3.11; items upper case (MESSAGES, UIDNEXT, ..., HIGHESTMODSEQ,
    APPENDLIMIT, RECENT, MAILBOXID of rfc8474:4.3)."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class CatPart:
    """rfc4469:5 cat-part: ``TEXT`` literal octets, or an IMAP ``URL``
    (rfc5092) naming a message or a part of one on this server."""

    text: bytes | None = None
    url: str | None = None


@dataclass(frozen=True)
class AppendMessage:
    """One message of an APPEND (rfc3502:6.3.11 append-message)."""

    flags: tuple[str, ...]
    date: datetime.datetime | None
    data: bytes
    utf8: bool = False
    binary: bool = False
    # rfc4469:5: the message is made of these parts (``data`` is empty).
    catenate: tuple[CatPart, ...] = ()


@dataclass(frozen=True)
class Append:
    """rfc9051:6.3.12 APPEND, with rfc3502 MULTIAPPEND and rfc4469 CATENATE.

    The fields are those of the first message, ``more`` the others. ``date``
    is the optional internal date, timezone-aware; ``binary`` is True when
    the message came as an rfc3516 literal8 (``~{n}``), ``utf8`` when it
    came as rfc6855 ``UTF8 (~{n})``; ``catenate`` lists its parts when it is
    made with CATENATE.
    """

    mailbox: str
    flags: tuple[str, ...]
    date: datetime.datetime | None
    data: bytes
    utf8: bool = False
    binary: bool = False
    catenate: tuple[CatPart, ...] = ()
    more: tuple[AppendMessage, ...] = ()

    def messages(self) -> list[AppendMessage]:
        first = AppendMessage(
            self.flags, self.date, self.data, self.utf8, self.binary, self.catenate
        )
        return [first, *self.more]


@dataclass(frozen=True)
class Idle:
    """rfc2177 / rfc9051:6.3.13."""


@dataclass(frozen=True)
class GetQuota:
    """rfc9208:4.2."""

    root: str


@dataclass(frozen=True)
class GetQuotaRoot:
    """rfc9208:4.3."""

    mailbox: str


# -- rfc4314:3 ACL commands (authenticated state) ------------------------------


@dataclass(frozen=True)
class SetAcl:
    """rfc4314:3.1; ``rights`` as sent ("+" / "-" prefix or none), checked
    against the rights the session knows."""

    mailbox: str
    identifier: str
    rights: str


@dataclass(frozen=True)
class DeleteAcl:
    """rfc4314:3.2."""

    mailbox: str
    identifier: str


@dataclass(frozen=True)
class GetAcl:
    """rfc4314:3.3."""

    mailbox: str


@dataclass(frozen=True)
class ListRights:
    """rfc4314:3.4."""

    mailbox: str
    identifier: str


@dataclass(frozen=True)
class MyRights:
    """rfc4314:3.5."""

    mailbox: str


@dataclass(frozen=True)
class SetQuota:
    """rfc9208:4.4; resource names upper case, limits in their units."""

    root: str
    resources: dict[str, int]


# -- selected (rfc9051:6.4) ------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """rfc3501:6.4.1 (gone from rfc9051, answered as a NOOP)."""


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Unselect:
    """rfc3691 / rfc9051:6.4.2."""


@dataclass(frozen=True)
class Expunge:
    pass


@dataclass(frozen=True)
class UidExpunge:
    """rfc4315:2.1 / rfc9051:6.4.9 UID EXPUNGE sequence-set."""

    sequence_set: SequenceSet


@dataclass(frozen=True)
class Search:
    """rfc9051:6.4.4.

    ``charset`` is "US-ASCII" or "UTF-8" when given; ``return_options`` is
    None without RETURN, else the rfc4731/rfc5182 options in upper case
    (an empty tuple for ``RETURN ()``, which means ALL), rfc5267:4 UPDATE,
    CONTEXT and PARTIAL among them; ``key`` is an AND node holding the
    top-level keys.
    """

    charset: str | None
    return_options: tuple[str, ...] | None
    key: SearchKey
    # rfc5267:4.4 RETURN (PARTIAL low:high): the range, low <= high.
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class Sort:
    """rfc5256:3 SORT, with rfc5957 DISPLAYFROM / DISPLAYTO and the rfc5267
    RETURN options (ESORT, CONTEXT=SORT).

    ``criteria`` are (sort key upper case, reversed) in order; ``charset`` as
    given, upper case (the session refuses all but US-ASCII and UTF-8);
    ``return_options`` None without RETURN, else the options upper case;
    ``partial`` the rfc5267:4.4 PARTIAL range (low, high), low <= high.
    """

    criteria: tuple[tuple[str, bool], ...]
    charset: str
    return_options: tuple[str, ...] | None
    key: SearchKey
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class Thread:
    """rfc5256:3 THREAD; ``algorithm`` ORDEREDSUBJECT or REFERENCES."""

    algorithm: str
    charset: str
    key: SearchKey


@dataclass(frozen=True)
class CancelUpdate:
    """rfc5267:4.3 CANCELUPDATE: the tags of the updating searches to end."""

    tags: tuple[str, ...]


@dataclass(frozen=True)
class Compress:
    """rfc4978:3 COMPRESS: the mechanism, upper case."""

    mechanism: str


@dataclass(frozen=True)
class Notify:
    """rfc5465:3.1 NOTIFY: the event groups of NOTIFY SET, None for NOTIFY
    NONE; ``status`` the STATUS indicator."""

    groups: tuple[Group, ...] | None
    status: bool = False


@dataclass(frozen=True)
class GetMetadata:
    """rfc5464:4.2 GETMETADATA: the mailbox ("" for the server), the entry
    names as given, DEPTH ("0", "1" or "INFINITY") and MAXSIZE."""

    mailbox: str
    entries: tuple[str, ...]
    depth: str = "0"
    maxsize: int | None = None


@dataclass(frozen=True)
class SetMetadata:
    """rfc5464:4.3 SETMETADATA: the mailbox ("" for the server) and
    (entry, value) pairs, None to remove."""

    mailbox: str
    pairs: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class ResetKey:
    """rfc4467 RESETKEY: no mailbox drops every key; else the mailbox and
    the mechanisms named (none: INTERNAL)."""

    mailbox: str | None
    mechanisms: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenUrlAuth:
    """rfc4467 GENURLAUTH: (url-rump, mechanism) pairs."""

    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class UrlFetch:
    """rfc4467 URLFETCH: the URLs."""

    urls: tuple[str, ...]


@dataclass(frozen=True)
class Fetch:
    """rfc9051:6.4.5; macros ALL / FAST / FULL are expanded. ``changedsince``
    and ``vanished`` are the rfc7162 FETCH modifiers."""

    sequence_set: SequenceSet
    atts: tuple[FetchAtt, ...]
    changedsince: int | None = None
    vanished: bool = False


@dataclass(frozen=True)
class Store:
    """rfc9051:6.4.6; ``mode`` is "+", "-" or "" (replace); ``unchangedsince``
    is the rfc7162 STORE modifier."""

    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True)
class Copy:
    """rfc9051:6.4.7."""

    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Move(Copy):
    """rfc6851 / rfc9051:6.4.8."""
