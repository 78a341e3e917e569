"""URLAUTH-authorized IMAP URLs (rfc4467): the INTERNAL mechanism's token,
and the parts of ``...;EXPIRE=<datetime>;URLAUTH=<access>:<mech>:<token>``.
Pure functions, no IO; the keys are ``Accounts.urlauth_key``'s
(estafeta.auth.urlauthkeys), the URL's message part is IMAP's
(estafeta.imap.imapurl).

The INTERNAL token (rfc4467:2.4.1, 2.5) is ``1`` (the algorithm's version,
rfc4467:10 "identifying the token generation algorithm within the token")
followed by the HMAC-SHA256 of the rump URL under the mailbox access key,
in hex: 65 hex digits, at least the 32 rfc4467:9 ``enc-urlauth`` asks.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

__all__ = [
    "MECHANISM",
    "Access",
    "Authorized",
    "BadUrlAuth",
    "Rump",
    "may_fetch",
    "split_full",
    "split_rump",
    "token",
    "valid",
]

MECHANISM = "INTERNAL"
_VERSION = "1"
_URLAUTH_RE = re.compile(r";URLAUTH=", re.I)
# rfc4467:9 access = ("submit+" enc-user) / ("user+" enc-user) / "authuser" / "anonymous"
_ACCESS_RE = re.compile(
    r"(?:(?P<kind>submit|user)\+(?P<user>[^:;/?#]+)|(?P<other>authuser|anonymous))\Z", re.I
)
_EXPIRE_RE = re.compile(r";EXPIRE=(?P<when>[^;/]+)\Z", re.I)
_FULL_RE = re.compile(r"(?P<access>[^:]+):(?P<mech>[A-Za-z0-9.-]+):(?P<token>[0-9A-Fa-f]{32,})\Z")


class BadUrlAuth(ValueError):
    """Not a URLAUTH URL this server accepts; the message says what is wrong."""


@dataclass(frozen=True)
class Access:
    """rfc4467:3 who may use the URL: ``kind`` submit, user, authuser or
    anonymous, and the userid of submit+ / user+ (percent-decoded)."""

    kind: str
    user: str | None = None


@dataclass(frozen=True)
class Rump:
    """A URL up to and including ``;URLAUTH=<access>`` (rfc4467:5): the
    text, the URL before ``[;EXPIRE=...];URLAUTH=`` (the message part), who
    may use it, and when it expires (None: never)."""

    text: str
    base: str
    access: Access
    expire: datetime | None


@dataclass(frozen=True)
class Authorized:
    """A full URLAUTH URL split (rfc4467:6): its rump, mechanism and token."""

    rump: Rump
    mechanism: str
    token: str


def _access(text: str) -> Access:
    found = _ACCESS_RE.match(text)
    if found is None:
        raise BadUrlAuth("no valid access identifier (submit+user, user+user, authuser, anonymous)")
    if found.group("other"):
        return Access(found.group("other").lower())
    return Access(found.group("kind").lower(), unquote(found.group("user")))


def _expire(text: str) -> datetime:
    # rfc4467:9 expire = ";EXPIRE=" date-time (rfc3339: an offset is required).
    try:
        when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise BadUrlAuth("EXPIRE is not an RFC 3339 date-time") from None
    if when.tzinfo is None:
        raise BadUrlAuth("EXPIRE has no time zone offset")
    return when


def _last_urlauth(text: str) -> re.Match[str] | None:
    """Where the last ";URLAUTH=" is (rfc4467:3: it ends the URL)."""
    found = list(_URLAUTH_RE.finditer(text))
    return found[-1] if found else None


def split_rump(text: str) -> Rump:
    """rfc4467:5 a URL ending with ``;URLAUTH=<access>`` (GENURLAUTH's argument)."""
    cut = _last_urlauth(text)
    if cut is None:
        raise BadUrlAuth("missing access identifier (;URLAUTH=) in the URL")
    before, access = text[: cut.start()], text[cut.end() :]
    expire = None
    found = _EXPIRE_RE.search(before)
    if found is not None:
        expire = _expire(found.group("when"))
        before = before[: found.start()]
    return Rump(text, before, _access(access), expire)


def split_full(text: str) -> Authorized:
    """rfc4467:6 a URLAUTH-authorized URL: the rump is the URL up to the
    ":" before ``<mech>:<token>``, taken as it is (no decoding, no case
    folding)."""
    cut = _last_urlauth(text)
    if cut is None:
        raise BadUrlAuth("not a URLAUTH URL")
    found = _FULL_RE.match(text, cut.end())
    if found is None:
        raise BadUrlAuth("no <access>:<mechanism>:<token> after ;URLAUTH=")
    rump = split_rump(text[: found.end("access")])
    return Authorized(rump, found.group("mech").upper(), found.group("token").lower())


def token(key: bytes, rump: str) -> str:
    """rfc4467:5 the INTERNAL mechanism's token for ``rump`` under ``key``."""
    digest = hmac.new(key, rump.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return _VERSION + digest


def valid(key: bytes | None, url: Authorized, now: datetime) -> bool:
    """rfc4467:6 whether ``url``'s token is the one ``key`` gives its rump,
    and it has not expired. Without a key (no such mailbox, or none made),
    a token is computed all the same under a random key, so that the
    answer takes as long (rfc4467:6 "plausible" keys)."""
    expected = token(key if key is not None else secrets.token_bytes(32), url.rump.text)
    same = hmac.compare_digest(expected, url.token)
    if key is None or url.mechanism != MECHANISM or not same:
        return False
    return url.rump.expire is None or now <= url.rump.expire


def may_fetch(access: Access, *, user: str | None, submitter: str | None = None) -> bool:
    """rfc4467:3 whether a session may use a URL with ``access``: ``user``
    the session's logged-in account (IMAP URLFETCH), ``submitter`` the
    account a submission server acts for (BURL, rfc4468:3.3), which is
    then the submission entity (submit+) and an authorized user itself."""

    def same(a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and a.lower() == b.lower()

    if access.kind == "submit":
        return same(access.user, submitter)
    if access.kind == "user":
        return same(access.user, user)
    return user is not None or submitter is not None  # authuser; anonymous: no anonymous logins
