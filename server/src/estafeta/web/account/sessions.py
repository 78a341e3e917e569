"""Login sessions of the account pages: in memory, bounded, with CSRF tokens.

A session is a random 256-bit id (``secrets.token_urlsafe(32)``) kept by the
browser in the cookie ``__Host-estafeta-session`` (rfc6265bis:4.1.3.2: the
``__Host-`` prefix makes the browser refuse it unless it is ``Secure``, has
``Path=/`` and no ``Domain``), with ``HttpOnly`` and ``SameSite=Strict``.

Sessions live in this process's memory only: a restart logs everybody out,
which is what a restart of a mail server may well do. They end

- after ``idle`` seconds without a request (15 minutes),
- ``lifetime`` seconds after the login whatever happens (12 hours),
- at logout, and for every session of an account when its password changes,
- when there are ``max_sessions`` sessions in all or ``max_per_account`` of
  one account and a new one starts: the oldest goes.

A session that has passed the password but not yet the TOTP code is
``pending``: it opens nothing but the code form, lives ``pending_lifetime``
seconds and allows ``max_code_attempts`` codes.

CSRF: every session has a secret of its own; the token of its forms is an
HMAC of the session id under that secret, compared in constant time. The
login form, before there is a session, uses a second cookie
(``__Host-estafeta-login``, a random nonce) and a token that is the HMAC of
the nonce under a key of this process (a "double submit" bound to the key).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "__Host-estafeta-session"
LOGIN_COOKIE = "__Host-estafeta-login"
ID_BYTES = 32  # 256 bits


@dataclass(frozen=True)
class SessionLimits:
    idle: float = 15 * 60
    lifetime: float = 12 * 3600
    pending_lifetime: float = 5 * 60
    max_sessions: int = 10_000
    max_per_account: int = 10
    max_code_attempts: int = 5
    # A password or 2FA change needs the password again (the forms ask for
    # it); creating an app password needs it once this long after the last
    # time it was given.
    reauth_window: float = 10 * 60


@dataclass
class Session:
    id: str
    address: str
    created: float
    last_seen: float
    authenticated: float  # when the password was last given
    remote: str
    csrf_secret: bytes = field(repr=False, default_factory=lambda: secrets.token_bytes(32))
    pending: bool = False  # password given, TOTP code still wanted
    code_attempts: int = 0
    # A TOTP secret shown to be confirmed; never written anywhere else.
    totp_pending: str | None = field(repr=False, default=None)
    flash: list[str] = field(default_factory=list)

    def csrf_token(self) -> str:
        return hmac.new(self.csrf_secret, b"csrf\0" + self.id.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token().encode(), token.encode("utf-8", "replace"))


class Sessions:
    """Every session of this process; ``clock`` is monotonic (tests move it)."""

    def __init__(
        self, limits: SessionLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or SessionLimits()
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first
        self._login_key = secrets.token_bytes(32)

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, address: str, remote: str, *, pending: bool) -> Session:
        now = self.clock()
        self._expire(now)
        mine = [s for s in self._sessions.values() if s.address == address]
        for old in mine[: max(0, len(mine) - self.limits.max_per_account + 1)]:
            del self._sessions[old.id]
        while len(self._sessions) >= self.limits.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(
            id=secrets.token_urlsafe(ID_BYTES),
            address=address,
            created=now,
            last_seen=now,
            authenticated=now,
            remote=remote,
            pending=pending,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, its idle time restarted; None if
        there is none (any more)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        return session

    def promote(self, session: Session) -> Session:
        """The TOTP code was right: a full session with a new id (the id a
        pending session had is never that of a logged-in one)."""
        self.end(session)
        full = self.start(session.address, session.remote, pending=False)
        full.authenticated = session.authenticated
        return full

    def end(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    def end_account(self, address: str) -> int:
        """End every session of ``address``; how many there were."""
        ids = [s.id for s in self._sessions.values() if s.address == address]
        for session_id in ids:
            del self._sessions[session_id]
        return len(ids)

    def _expired(self, session: Session, now: float) -> bool:
        limits = self.limits
        lifetime = limits.pending_lifetime if session.pending else limits.lifetime
        return now - session.last_seen >= limits.idle or now - session.created >= lifetime

    def _expire(self, now: float) -> None:
        for session_id in [s.id for s in self._sessions.values() if self._expired(s, now)]:
            del self._sessions[session_id]

    # -- the login form's CSRF token (no session yet) ----------------------------------

    @staticmethod
    def new_login_nonce() -> str:
        return secrets.token_urlsafe(24)

    def login_token(self, nonce: str) -> str:
        return hmac.new(self._login_key, b"login\0" + nonce.encode(), hashlib.sha256).hexdigest()

    def login_token_ok(self, nonce: str | None, token: str) -> bool:
        if not nonce:
            return False
        expected = self.login_token(nonce).encode()
        return hmac.compare_digest(expected, token.encode("utf-8", "replace"))


def cookie(name: str, value: str, max_age: int | None = None) -> str:
    """A Set-Cookie value with the attributes every cookie here has."""
    attributes = [f"{name}={value}", "Secure", "HttpOnly", "SameSite=Strict", "Path=/"]
    if max_age is not None:
        attributes.append(f"Max-Age={max_age}")
    return "; ".join(attributes)


def cookies_of(header: str | None) -> dict[str, str]:
    """The cookies of a Cookie header (rfc6265:5.4); the first of a name wins."""
    found: dict[str, str] = {}
    for part in (header or "").split(";")[:50]:
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in found:
            found[name] = value.strip()[:256]
    return found
