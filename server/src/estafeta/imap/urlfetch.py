"""Resolving URLAUTH-authorized IMAP URLs (rfc4467 URLFETCH, and BURL on
submission, rfc4468:3.3): check the URL (estafeta.auth.urlauth) against the
owner's mailbox access key, then read what it names from the owner's
mailbox, with the owner's access (rfc4467 URLFETCH: "executes with the
access of the userid in the server component of the URL").

Blocking (index reads, a file read): call ``resolve`` from a thread.
Every failure is None, whatever its reason, as URLFETCH answers NIL
(rfc4467 URLFETCH response): a client learns nothing of which mailboxes or
accounts exist.
"""

from __future__ import annotations

from datetime import UTC, datetime

from estafeta.address import AddressError, normalize_address
from estafeta.auth import Accounts, urlauth
from estafeta.imap import fetch as fetch_module
from estafeta.imap import imapurl
from estafeta.message import Summary
from estafeta.store import Store

__all__ = ["MAX_URLS", "generate", "resolve"]

MAX_URLS = 100
"""URLs per GENURLAUTH or URLFETCH command (each answer may be a whole
message: the session sends them one at a time)."""


def _owner(target: imapurl.ImapUrl) -> str:
    """The account a URL's server part names (rfc4467 GENURLAUTH (2)): its
    user when that is an address; a bare user name at the URL's host
    (imap://alice@example.com/... is alice@example.com, as hosted IMAP
    servers name their users)."""
    user = target.user or ""
    if "@" not in user and target.host:
        user = f"{user}@{target.host}"
    return normalize_address(user)


def resolve(
    store: Store,
    accounts: Accounts,
    url: str,
    *,
    user: str | None,
    submitter: str | None = None,
    now: datetime | None = None,
) -> bytes | None:
    """The octets ``url`` names, or None (invalid, expired, not for this
    principal, revoked, or naming nothing). ``user``: the IMAP session's
    account; ``submitter``: the account a submission server acts for."""
    try:
        authorized = urlauth.split_full(url)
        target = imapurl.parse(authorized.rump.base)
        owner = _owner(target)
    except (urlauth.BadUrlAuth, imapurl.BadUrl, AddressError):
        return None
    if target.mailbox is None or not urlauth.may_fetch(
        authorized.rump.access, user=user, submitter=submitter
    ):
        return None  # rfc4467:9 authimapurl: an absolute URL with its owner
    key = None
    box = None
    if accounts.exists(owner):
        with store.reader(owner) as reader:
            box = reader.mailbox(target.mailbox)
            if box is not None and target.uidvalidity in (None, box.uidvalidity):
                key = accounts.urlauth_key(owner, box.id, box.uidvalidity)
            when = now or datetime.now(UTC)
            if box is None or not urlauth.valid(key, authorized, when):
                return None
            rows = reader.fetch_rows(box.id, [target.uid], summary=True)
            if not rows:
                return None
            uid, file, size, internal_date, flag_text, modseq, summary, _ = rows[0]
            try:
                content = reader.content(file)
            except FileNotFoundError:
                return None  # expunged meanwhile
        message = fetch_module.MessageData(
            uid=uid, flags=tuple(flag_text.split()), internal_date=internal_date, size=size,
            modseq=modseq, summary=Summary.from_json(summary or ""), load=lambda: content,
        )  # fmt: skip
        return fetch_module.section_octets(message, target.section, target.partial)
    urlauth.valid(None, authorized, datetime.now(UTC))  # as long as a real check (rfc4467:6)
    return None


def generate(store: Store, accounts: Accounts, user: str, rump: str, mechanism: str) -> str:
    """rfc4467 GENURLAUTH of one URL: the URLAUTH-authorized URL, or
    urlauth.BadUrlAuth saying what is wrong (the command's BAD). The owner
    in the URL must be ``user`` (this server gives no one else's keys);
    the mailbox's key is made if it has none."""
    if mechanism.upper() != urlauth.MECHANISM:
        raise urlauth.BadUrlAuth(f"unknown URL authorization mechanism {mechanism[:40]}")
    parts = urlauth.split_rump(rump)
    try:
        target = imapurl.parse(parts.base)
    except imapurl.BadUrl as exc:
        raise urlauth.BadUrlAuth(str(exc)) from None
    if target.mailbox is None or target.user is None:
        raise urlauth.BadUrlAuth("missing owner username in the URL")  # rfc4467 GENURLAUTH (2)
    try:
        owner = _owner(target)
    except AddressError:
        raise urlauth.BadUrlAuth("the URL's owner is not an account") from None
    if owner != normalize_address(user):
        raise urlauth.BadUrlAuth("the URL's owner is not the logged-in user")
    with store.reader(owner) as reader:
        box = reader.mailbox(target.mailbox)
    if box is None or target.uidvalidity not in (None, box.uidvalidity):
        raise urlauth.BadUrlAuth("no such mailbox")  # rfc4467 GENURLAUTH (1)
    key = accounts.urlauth_key(owner, box.id, box.uidvalidity, create=True)
    assert key is not None
    return f"{rump}:{urlauth.MECHANISM.lower()}:{urlauth.token(key, rump)}"
