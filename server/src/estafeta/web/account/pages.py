"""The account pages: what a user may change without an admin.

Plain HTML forms (no JavaScript), each POST answered with a redirect to the
page it came from (303, rfc9110:15.4.4) or, when it failed or has something
to show once (a new app password, a TOTP secret), with the page itself.

Every POST is checked before it may change anything, in this order (a
refusal is a 403 and changes nothing):

1. https only (the cookies are ``Secure``);
2. same origin: ``Sec-Fetch-Site`` (Fetch Metadata) must say
   ``same-origin`` when sent; an ``Origin`` header, or failing that a
   ``Referer``, must name this very scheme, host and port (rfc6454:7). The
   pages are served with ``Referrer-Policy: no-referrer``, so a browser's
   Origin of a form POST is ``null``: accepted only beside a same-origin
   Sec-Fetch-Site. Absent all of them, the token alone decides;
3. a form (``application/x-www-form-urlencoded``, at most MAX_FORM bytes and
   MAX_FIELDS fields, each field bounded);
4. the CSRF token of the session (sessions.py), or for the login form the
   one bound to the login cookie.

Passwords are checked through a ``guard.Authenticator`` that shares the
server's ``LoginGuard`` and login history: failures here count towards the
same lockouts as IMAP's, are delayed the same way, and show in the login
history as protocol "web". The web login accepts the account's own password
only, never an app password, and then asks for the TOTP code when the
account has TOTP. Everything slow (argon2, SQLite, script files) runs off the
event loop: argon2 on the Authenticator's executor, the rest in
``asyncio.to_thread``.

Every change is logged as one ``account_change`` line: the account, what
changed, the client address; never a secret.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.resources
import inspect
import io
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import jinja2

from estafeta.address import AddressError, normalize_address
from estafeta.auth import totp
from estafeta.auth.accounts import (
    MAX_APP_PASSWORD_NAME,
    MAX_APP_PASSWORDS,
    MAX_EXPIRES_DAYS,
    PROTOCOLS,
    AccountError,
    Accounts,
)
from estafeta.auth.guard import BUSY, Authenticator, LoginHistory
from estafeta.log import log_event
from estafeta.sieve.scripts import ScriptError, Scripts
from estafeta.web import clientconfig
from estafeta.web.account import api, vacation
from estafeta.web.account.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    Session,
    SessionLimits,
    Sessions,
    cookie,
    cookies_of,
)
from estafeta.web.connection import Request, Response

log = logging.getLogger("estafeta.web")
T = TypeVar("T")

HTML = "text/html; charset=utf-8"
CSS_MAX_AGE = 86400
MAX_FORM = 16 * 1024  # octets of a form body
MAX_FIELDS = 24
MAX_FIELD = 8 * 1024  # characters of one field (the away message has its own limit)
MAX_PASSWORD = 1024
HISTORY_SHOWN = 10
LOGIN_COOKIE_AGE = 3600


class Usage(Protocol):
    """What the pages need of the mail store: octets an account holds."""

    async def usage(self, address: str) -> int: ...


class _WebPasswords:
    """The web login's password check: the account's own password only.

    App passwords are for mail clients and never open the account pages;
    TOTP is asked for afterwards by the pages (``Accounts.authenticate``
    refuses the password of an account with TOTP, which is right for IMAP
    but not here). An unknown account costs the same argon2 work."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def authenticate(
        self, address: str, secret: str, protocol: str, *, allow_password: bool = True
    ) -> str | None:
        if not allow_password:
            return None
        if not self.accounts.verify_password(address, secret):
            return None
        try:
            return normalize_address(address)
        except AddressError:
            return None


class _SharedHistory:
    """The server's login history, which the server closes, not us."""

    def __init__(self, history: LoginHistory) -> None:
        self.history = history

    def record(self, address: str, protocol: str, client: str, ok: bool) -> None:
        self.history.record(address, protocol, client, ok)

    def close(self) -> None:
        pass


class _Refused(Exception):
    """A POST refused before anything changed (403)."""


class AccountPages:
    """The ``pages`` handler of ``estafeta.web.site.Site``."""

    def __init__(
        self,
        *,
        accounts: Accounts,
        authenticator: Authenticator,
        scripts: Scripts,
        store: Usage | None,
        hostname: str,
        client: clientconfig.ClientSettings | None = None,
        default_quota: int | None = None,
        limits: SessionLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        workers: int = 2,
    ) -> None:
        self.accounts = accounts
        self.scripts = scripts
        self.store = store
        self.hostname = hostname
        self.client = client
        self.default_quota = default_quota
        self.wall_clock = wall_clock
        self.sessions = Sessions(limits, clock)
        self.guard = authenticator.guard
        history = authenticator.history
        self.auth = Authenticator(
            _WebPasswords(accounts),
            authenticator.guard,
            sleep=sleep,
            wall_clock=wall_clock,
            workers=workers,
            history=_SharedHistory(history) if history is not None else None,
        )
        self._sleep = sleep
        files = importlib.resources.files(__package__ or "estafeta.web.account")
        self.css = files.joinpath("static", "account.css").read_bytes()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("estafeta.web.account", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["size"] = _size
        get, post = "GET", "POST"
        self.routes: dict[tuple[str, str], Callable[..., Awaitable[Response]]] = {
            (get, "/login"): self.login_form,
            (post, "/login"): self.login,
            (get, "/login/code"): self.code_form,
            (post, "/login/code"): self.code,
            (post, "/logout"): self.logout,
            (get, "/"): self.overview,
            (get, "/password"): self.password_form,
            (post, "/password"): self.password,
            (get, "/totp"): self.totp_page,
            (post, "/totp/start"): self.totp_start,
            (post, "/totp/confirm"): self.totp_confirm,
            (post, "/totp/disable"): self.totp_disable,
            (get, "/app-passwords"): self.app_passwords,
            (post, "/app-passwords/create"): self.app_password_create,
            (post, "/app-passwords/revoke"): self.app_password_revoke,
            (get, "/away"): self.away_form,
            (post, "/away"): self.away,
            (get, "/apple.mobileconfig"): self.mobileconfig,
        }
        self._open = {"/login", "/login/code"}  # served without a full session

    async def close(self) -> None:
        """Stop the password-check threads (the history stays the server's)."""
        await self.auth.close()

    # -- dispatch ------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        path = request.path
        method = "GET" if request.method == "HEAD" else request.method
        if path == "/static/account.css":
            if method != "GET":
                return Response(405, b"only GET and HEAD\n", headers=[("Allow", "GET, HEAD")])
            return Response(200, self.css, "text/css; charset=utf-8", max_age=CSS_MAX_AGE)
        if path == api.PASSWORD_PATH:  # a webmail's password plugin (api.py)
            return await api.change_password(self, request)
        handler = self.routes.get((method, path))
        if handler is None:
            if any(route_path == path for _, route_path in self.routes):
                allowed = {m for m, p in self.routes if p == path}
                if "GET" in allowed:
                    allowed.add("HEAD")
                return self._page(
                    "message.html",
                    None,
                    status=405,
                    title="Not allowed",
                    message="That is not how this page is used.",
                    headers=[("Allow", ", ".join(sorted(allowed)))],
                )
            return self._page(
                "message.html", None, status=404, title="Not found", message="No such page."
            )
        if not request.secure:
            return self._page(
                "message.html",
                None,
                status=403,
                title="https only",
                message="The account pages are served over https only.",
            )
        cookies = cookies_of(request.header("cookie"))
        session = self.sessions.get(cookies.get(COOKIE))
        form: dict[str, str] = {}
        if method == "POST":
            try:
                form = self._form(request)
                self._check_post(request, path, session, form, cookies)
            except _Refused as exc:
                log_event(
                    log,
                    "account_refused",
                    logging.WARNING,
                    remote=request.remote,
                    path=path,
                    reason=str(exc),
                    account=session.address if session else "",
                )
                return self._page(
                    "message.html",
                    None,
                    status=403,
                    title="Refused",
                    message=f"This request was refused: {exc}. Nothing was changed. "
                    "Go back, reload the page and try again.",
                )
        if path not in self._open:
            if session is None:
                return _redirect("/login")
            if session.pending:
                return _redirect("/login/code")
        return await handler(request, session, form)

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        kind = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise _Refused("not a form")
        if len(request.body) > MAX_FORM:
            raise _Refused("the form is too large")
        try:
            parsed = parse_qs(
                request.body.decode("ascii"),
                keep_blank_values=True,
                max_num_fields=MAX_FIELDS,
                encoding="utf-8",
                errors="strict",
            )
        except ValueError:
            raise _Refused("the form could not be read") from None
        form = {name: values[0] for name, values in parsed.items()}
        if any(len(value) > MAX_FIELD for value in form.values()):
            raise _Refused("a field is too long")
        return form

    def _check_post(
        self,
        request: Request,
        path: str,
        session: Session | None,
        form: dict[str, str],
        cookies: dict[str, str],
    ) -> None:
        expected = "https://" + (request.header("host") or "").strip().lower()
        # Fetch metadata first: browsers send it whatever the referrer
        # policy (ours is no-referrer, so their Origin of a form POST is "null").
        fetch_site = request.header("sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
            raise _Refused("it came from another site")
        origin = (request.header("origin") or "").strip().lower()
        if origin == "null":
            if fetch_site is None:
                raise _Refused("its origin is unknown")
        elif origin:
            # rfc6454:7.3: the serialised origin of the page that sent it.
            if origin != expected:
                raise _Refused("it came from another site")
        else:
            referer = request.header("referer")
            if referer:
                parts = urlsplit(referer)
                if f"{parts.scheme}://{parts.netloc}".lower() != expected:
                    raise _Refused("it came from another site")
        token = form.get("csrf", "")
        if path == "/login":
            if not self.sessions.login_token_ok(cookies.get(LOGIN_COOKIE), token):
                raise _Refused("the form has expired or did not come from this page")
            return
        if session is None:
            raise _Refused("you are not logged in (any more)")
        if not session.csrf_ok(token):
            raise _Refused("the form did not come from this page")

    # -- rendering --------------------------------------------------------------------

    def _page(
        self,
        template: str,
        session: Session | None,
        *,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        **context: Any,
    ) -> Response:
        flash: list[str] = []
        if session is not None:
            flash, session.flash = session.flash, []
        context.setdefault("errors", [])
        body = self.templates.get_template(template).render(
            session=session,
            address=session.address if session is not None and not session.pending else None,
            csrf=session.csrf_token() if session is not None else "",
            flash=flash,
            hostname=self.hostname,
            mobileconfig=self.client is not None,
            **context,
        )
        return Response(status, body.encode("utf-8"), HTML, headers=headers or [])

    def _changed(self, request: Request, session: Session, change: str, **fields: Any) -> None:
        log_event(
            log,
            "account_change",
            account=session.address,
            change=change,
            remote=request.remote,
            **fields,
        )

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(functools.partial(function, *args))

    async def _reauth(self, request: Request, session: Session, password: str) -> str | None:
        """None if ``password`` is the account's, else why not (through the
        guard: a stolen session cannot guess faster than a login can)."""
        if not password:
            return "Enter your current password."
        result = await self.auth.login(session.address, password, "web", request.remote)
        if result.ok:
            session.authenticated = self.sessions.clock()
            return None
        if result.locked:
            return _locked_message(result.reason)
        return "Your current password is not right."

    # -- login -------------------------------------------------------------------------

    async def login_form(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        if session is not None:
            return _redirect("/login/code" if session.pending else "/")
        return self._login_page(request, [], status=200)

    def _login_page(
        self, request: Request, errors: list[str], *, status: int, address: str = ""
    ) -> Response:
        nonce = cookies_of(request.header("cookie")).get(LOGIN_COOKIE) or ""
        headers = []
        if len(nonce) < 16:
            nonce = Sessions.new_login_nonce()
            headers.append(("Set-Cookie", cookie(LOGIN_COOKIE, nonce, LOGIN_COOKIE_AGE)))
        return self._page(
            "login.html",
            None,
            status=status,
            headers=headers,
            errors=errors,
            login_csrf=self.sessions.login_token(nonce),
            login_address=address,
        )

    async def login(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        address = form.get("address", "").strip()[:320]
        password = form.get("password", "")
        if not address or not password or len(password) > MAX_PASSWORD:
            return self._login_page(
                request, ["Enter your address and password."], status=400, address=address
            )
        result = await self.auth.login(address, password, "web", request.remote)
        if not result.ok or result.address is None:
            outcome = "locked" if result.locked else "failed"
            log_event(
                log, "account_login", account=address[:100], remote=request.remote, result=outcome
            )
            if result.locked:
                status = 503 if result.reason == BUSY else 429
                return self._login_page(
                    request, [_locked_message(result.reason)], status=status, address=address
                )
            return self._login_page(
                request, ["Wrong address or password."], status=403, address=address
            )
        account = result.address
        try:
            pending = await self._run(self.accounts.totp_enrolled, account)
        except AccountError:
            return self._login_page(request, ["Wrong address or password."], status=403)
        if session is not None:
            self.sessions.end(session)
        new = self.sessions.start(account, request.remote, pending=pending)
        log_event(
            log,
            "account_login",
            account=account,
            remote=request.remote,
            result="code_wanted" if pending else "ok",
        )
        return _redirect(
            "/login/code" if pending else "/",
            [("Set-Cookie", cookie(COOKIE, new.id)), ("Set-Cookie", cookie(LOGIN_COOKIE, "", 0))],
        )

    async def code_form(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        if session is None:
            return _redirect("/login")
        if not session.pending:
            return _redirect("/")
        return self._page("code.html", session, pending_address=session.address)

    async def code(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        if session is None or not session.pending:
            return _redirect("/")
        code = form.get("code", "")[:32]
        ok = totp.normalize_code(code) is not None and await self._run(
            self.accounts.totp_verify, session.address, code
        )
        if ok:
            full = self.sessions.promote(session)
            log_event(
                log, "account_login", account=full.address, remote=request.remote, result="ok"
            )
            return _redirect("/", [("Set-Cookie", cookie(COOKIE, full.id))])
        session.code_attempts += 1
        failure = await self.guard.record_failure(request.remote, session.address)
        log_event(
            log, "account_login", account=session.address, remote=request.remote, result="bad_code"
        )
        if failure.delay > 0:
            await self._sleep(failure.delay)
        if session.code_attempts >= self.sessions.limits.max_code_attempts:
            self.sessions.end(session)
            return self._login_page(request, ["Too many wrong codes: log in again."], status=403)
        return self._page(
            "code.html",
            session,
            status=403,
            pending_address=session.address,
            errors=["That code is wrong or was used already. Enter the current one."],
        )

    async def logout(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        self.sessions.end(session)
        log_event(log, "account_logout", account=session.address, remote=request.remote)
        return _redirect("/login", [("Set-Cookie", cookie(COOKIE, "", 0))])

    # -- overview -------------------------------------------------------------------------

    async def overview(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        address = session.address
        enrolled = await self._run(self.accounts.totp_enrolled, address)
        apps = await self._run(self.accounts.app_password_list, address)
        history = (await self._run(self.accounts.login_history, address))[:HISTORY_SHOWN]
        own_quota = await self._run(self.accounts.get_quota, address)
        quota = own_quota if own_quota > 0 else self.default_quota
        used = await self.store.usage(address) if self.store is not None else None
        percent = None
        if used is not None and quota:
            percent = min(100, round(100 * used / quota))
        away = await self._away_state(address)
        return self._page(
            "overview.html",
            session,
            totp=enrolled,
            apps=apps,
            history=history,
            used=used,
            quota=quota,
            percent=percent,
            away=away["settings"],
            away_active=away["ours_active"],
        )

    # -- password -----------------------------------------------------------------------

    async def password_form(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        return self._page("password.html", session)

    async def password(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        new, again = form.get("new", ""), form.get("again", "")
        errors = []
        if not new:
            errors.append("Enter a new password.")
        elif len(new) > MAX_PASSWORD:
            errors.append(f"The new password is too long (at most {MAX_PASSWORD} characters).")
        elif new != again:
            errors.append("The new password and its repetition differ.")
        if errors:
            return self._page("password.html", session, status=400, errors=errors)
        problem = await self._reauth(request, session, form.get("current", ""))
        if problem is not None:
            return self._page("password.html", session, status=403, errors=[problem])
        try:
            await self._run(self.accounts.set_password, session.address, new)
        except AccountError as exc:
            # The policy's reason (estafeta.auth.passwords): never the password.
            return self._page("password.html", session, status=400, errors=[_sentence(str(exc))])
        ended = self.sessions.end_account(session.address)
        fresh = self.sessions.start(session.address, request.remote, pending=False)
        fresh.flash.append(
            "Your password was changed. Every other session of your account was logged out."
        )
        self._changed(request, session, "password", sessions_ended=ended)
        return _redirect("/", [("Set-Cookie", cookie(COOKIE, fresh.id))])

    # -- TOTP ---------------------------------------------------------------------------

    async def totp_page(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        enrolled = await self._run(self.accounts.totp_enrolled, session.address)
        return self._page("totp.html", session, enrolled=enrolled, pending=None)

    async def _totp_pending_page(
        self, session: Session, *, status: int = 200, errors: list[str] | None = None
    ) -> Response:
        secret = session.totp_pending
        assert secret is not None
        issuer = session.address.rpartition("@")[2]
        uri = totp.provisioning_uri(secret, session.address, issuer)
        qr = await self._run(_qr_data_uri, uri)
        grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
        return self._page(
            "totp.html",
            session,
            status=status,
            enrolled=False,
            pending={"secret": secret, "grouped": grouped, "qr": qr, "uri": uri},
            errors=errors or [],
        )

    async def totp_start(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        if await self._run(self.accounts.totp_enrolled, session.address):
            return _redirect("/totp")
        problem = await self._reauth(request, session, form.get("password", ""))
        if problem is not None:
            return self._page(
                "totp.html", session, status=403, enrolled=False, pending=None, errors=[problem]
            )
        session.totp_pending = totp.new_secret()
        return await self._totp_pending_page(session)

    async def totp_confirm(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        secret = session.totp_pending
        if secret is None:
            return _redirect("/totp")
        code = form.get("code", "")[:32]
        if totp.matching_step(secret, code, self.wall_clock()) is None:
            return await self._totp_pending_page(
                session,
                status=400,
                errors=["That code does not match: enter the code your app shows now."],
            )
        try:
            await self._run(self._enrol, session.address, secret)
        except AccountError as exc:
            return self._page(
                "totp.html",
                session,
                status=409,
                enrolled=True,
                pending=None,
                errors=[_sentence(str(exc))],
            )
        session.totp_pending = None
        # The code just given is used up: it cannot open a login as well.
        await self._run(self.accounts.totp_verify, session.address, code)
        session.flash.append(
            "Two-factor login is on. Mail apps now need app passwords: your password "
            "alone no longer opens IMAP, POP3 or SMTP."
        )
        self._changed(request, session, "totp_enabled")
        return _redirect("/totp")

    def _enrol(self, address: str, secret: str) -> None:
        # The secret the user saw and confirmed, not a new one: needs
        # Accounts.totp_enroll(..., secret=...).
        enroll: Callable[..., object] = self.accounts.totp_enroll
        if "secret" not in inspect.signature(enroll).parameters:
            raise AccountError("this server cannot enrol a confirmed TOTP secret yet")
        enroll(address, secret=secret)

    async def totp_disable(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        problem = await self._reauth(request, session, form.get("password", ""))
        if problem is None:
            code = form.get("code", "")[:32]
            if not await self._run(self.accounts.totp_verify, session.address, code):
                problem = "That code is wrong or was used already."
        if problem is not None:
            return self._page(
                "totp.html", session, status=403, enrolled=True, pending=None, errors=[problem]
            )
        try:
            await self._run(self.accounts.totp_disable, session.address)
        except AccountError as exc:
            return self._page(
                "totp.html",
                session,
                status=409,
                enrolled=False,
                pending=None,
                errors=[_sentence(str(exc))],
            )
        session.flash.append("Two-factor login is off. Your password opens the mail apps again.")
        self._changed(request, session, "totp_disabled")
        return _redirect("/totp")

    # -- app passwords ---------------------------------------------------------------------

    def _needs_password(self, session: Session) -> bool:
        age = self.sessions.clock() - session.authenticated
        return age >= self.sessions.limits.reauth_window

    async def _app_page(
        self,
        session: Session,
        *,
        status: int = 200,
        errors: list[str] | None = None,
        created: dict[str, str] | None = None,
    ) -> Response:
        apps = await self._run(self.accounts.app_password_list, session.address)
        return self._page(
            "app_passwords.html",
            session,
            status=status,
            apps=apps,
            errors=errors or [],
            created=created,
            protocols=PROTOCOLS,
            max_apps=MAX_APP_PASSWORDS,
            max_name=MAX_APP_PASSWORD_NAME,
            max_days=MAX_EXPIRES_DAYS,
            needs_password=self._needs_password(session),
        )

    async def app_passwords(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        return await self._app_page(session)

    async def app_password_create(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        if self._needs_password(session):
            problem = await self._reauth(request, session, form.get("password", ""))
            if problem is not None:
                return await self._app_page(session, status=403, errors=[problem])
        name = form.get("name", "").strip()
        protocols = [p for p in PROTOCOLS if form.get(f"protocol_{p}")]
        days_text = form.get("expires", "").strip()
        expires: int | None = None
        if days_text:
            if not days_text.isascii() or not days_text.isdigit() or len(days_text) > 6:
                return await self._app_page(
                    session,
                    status=400,
                    errors=[f"Expires after: a number of days from 1 to {MAX_EXPIRES_DAYS}."],
                )
            expires = int(days_text)
        try:
            secret = await self._run(
                self.accounts.app_password_create, session.address, name, protocols, expires
            )
        except AccountError as exc:
            return await self._app_page(session, status=400, errors=[_sentence(str(exc))])
        self._changed(
            request, session, "app_password_created", name=name, protocols=",".join(protocols)
        )
        return await self._app_page(session, created={"name": name, "secret": secret})

    async def app_password_revoke(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        name = form.get("name", "")[: MAX_APP_PASSWORD_NAME + 2]
        try:
            await self._run(self.accounts.app_password_revoke, session.address, name)
        except AccountError as exc:
            return await self._app_page(session, status=400, errors=[_sentence(str(exc))])
        session.flash.append(f"The app password “{name.strip()}” was revoked.")
        self._changed(request, session, "app_password_revoked", name=name.strip())
        return _redirect("/app-passwords")

    # -- away message and forwarding -------------------------------------------------------

    async def _away_state(self, address: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            listed = self.scripts.list(address)
            active = next((name for name, on in listed if on), None)
            text = None
            if any(name == vacation.SCRIPT_NAME for name, _ in listed):
                text = self.scripts.get(address, vacation.SCRIPT_NAME)
            return {
                "settings": vacation.read(text),
                "active": active,
                "ours_active": active == vacation.SCRIPT_NAME,
                "foreign": active if active not in (None, vacation.SCRIPT_NAME) else None,
            }

        return await self._run(read)

    async def _away_page(
        self,
        session: Session,
        *,
        status: int = 200,
        errors: list[str] | None = None,
        values: vacation.Away | None = None,
    ) -> Response:
        state = await self._away_state(session.address)
        return self._page(
            "away.html",
            session,
            status=status,
            errors=errors or [],
            away=values or state["settings"],
            ours_active=state["ours_active"],
            foreign=state["foreign"],
            script_name=vacation.SCRIPT_NAME,
            max_subject=vacation.MAX_SUBJECT,
            max_text=vacation.MAX_TEXT,
            max_days=vacation.MAX_DAYS,
        )

    async def away_form(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        return await self._away_page(session)

    async def away(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        address = session.address
        try:
            settings = vacation.validate(
                enabled=bool(form.get("enabled")),
                subject=form.get("subject", ""),
                text=form.get("text", ""),
                start=form.get("start", ""),
                end=form.get("end", ""),
                days=form.get("days", ""),
                forward=form.get("forward", ""),
                own_address=address,
            )
        except vacation.AwayError as exc:
            return await self._away_page(session, status=400, errors=[_sentence(str(exc))])
        replace = bool(form.get("replace_active"))

        def save() -> str:
            listed = self.scripts.list(address)
            active = next((name for name, on in listed if on), None)
            self.scripts.put(address, vacation.SCRIPT_NAME, vacation.script(settings))
            if not settings.any:
                if active == vacation.SCRIPT_NAME:
                    self.scripts.activate(address, None)
                return "off"
            if active in (None, vacation.SCRIPT_NAME) or replace:
                self.scripts.activate(address, vacation.SCRIPT_NAME)
                return "on" if active in (None, vacation.SCRIPT_NAME) else "replaced:" + active
            return "kept:" + active

        try:
            outcome = await self._run(save)
        except ScriptError as exc:
            return await self._away_page(
                session, status=400, errors=[_sentence(exc.message)], values=settings
            )
        fields = {
            "vacation": "on" if settings.enabled else "off",
            "forward": settings.forward or "none",
        }
        if outcome.startswith("kept:"):
            self._changed(request, session, "away_saved_inactive", **fields)
            other = outcome.removeprefix("kept:")
            return await self._away_page(
                session,
                status=409,
                errors=[
                    f"Saved, but not switched on: your own filter script “{other}” is active "
                    "and only one script can be. Tick “Use these settings instead of my "
                    "script” and save again to switch to these settings."
                ],
            )
        if outcome.startswith("replaced:"):
            fields["replaced"] = outcome.removeprefix("replaced:")
        self._changed(request, session, "away", **fields)
        session.flash.append(
            "Saved: these settings are in effect." if settings.any else "Saved: nothing is on."
        )
        return _redirect("/away")

    # -- Apple profile ----------------------------------------------------------------------

    async def mobileconfig(
        self, request: Request, session: Session | None, form: dict[str, str]
    ) -> Response:
        assert session is not None
        if self.client is None:
            return self._page(
                "message.html", session, status=404, title="Not found", message="No profile here."
            )
        try:
            body = clientconfig.mobileconfig(self.client, session.address, "")
        except (clientconfig.BadInput, clientconfig.NotOffered) as exc:
            return self._page(
                "message.html", session, status=404, title="No profile", message=_sentence(str(exc))
            )
        filename = session.address.replace("@", "_at_") + ".mobileconfig"
        return Response(
            200,
            body,
            clientconfig.MOBILECONFIG_CONTENT_TYPE,
            headers=[("Content-Disposition", f'attachment; filename="{filename}"')],
        )


# -- helpers -----------------------------------------------------------------------------


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    # rfc9110:15.4.4 303 See Other: the answer to a POST is fetched with GET.
    return Response(303, b"", headers=[("Location", location), *(headers or [])])


def _locked_message(reason: str) -> str:
    if reason == BUSY:
        return "The server is busy checking passwords: try again in a minute."
    return "Too many failed logins from your address or for this account: try again later."


def _sentence(message: str) -> str:
    message = message.strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


def _when(value: float | None) -> str:
    if value is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def _size(value: int | None) -> str:
    if value is None:
        return "unknown"
    size = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _qr_data_uri(data: str) -> str:
    import qrcode  # type: ignore[import-untyped]
    from qrcode.image.pure import PyPNGImage  # type: ignore[import-untyped]

    image = qrcode.make(data, image_factory=PyPNGImage, box_size=6, border=4)
    buffer = io.BytesIO()
    image.save(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
