"""The account pages driven as a handler: real Accounts, guard and ScriptStore,
requests as ``Request`` objects (no sockets, no browser)."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import argon2
import pyotp
import pytest

from estafeta import sieve
from estafeta.auth.accounts import Accounts
from estafeta.auth.guard import Authenticator, GuardPolicy, LoginGuard
from estafeta.auth.logins import LoginRecorder
from estafeta.sieve.scripts import ScriptStore
from estafeta.web.account import AccountPages, SessionLimits, vacation
from estafeta.web.account.sessions import COOKIE, LOGIN_COOKIE, cookies_of
from estafeta.web.connection import Request, Response

ALICE = "alice@example.test"
PASSWORD = "correct horse battery staple"
HOST = "mx.example.test"
NEW_PASSWORD = "violet tractor sings quietly"


class FakeStore:
    async def usage(self, address: str) -> int:
        return 3 * 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def no_sleep(_: float) -> None:
    return None


class Browser:
    """Cookies and forms like a browser, over ``pages`` in one event loop."""

    def __init__(self, pages: AccountPages, remote: str = "192.0.2.7") -> None:
        self.pages = pages
        self.remote = remote
        self.cookies: dict[str, str] = {}
        self.last: Response | None = None

    def _cookie_header(self) -> list[tuple[str, str]]:
        if not self.cookies:
            return []
        return [("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))]

    def _remember(self, response: Response) -> None:
        for name, value in response.headers:
            if name == "Set-Cookie":
                pair = value.split(";", 1)[0]
                key, _, val = pair.partition("=")
                if "Max-Age=0" in value:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val

    def request(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] = ()
    ) -> Response:
        request = Request(
            method=method,
            target=path,
            headers=[("host", HOST), *self._cookie_header(), *headers],
            body=body,
            remote=self.remote,
            secure=True,
        )
        response = asyncio.run(self.pages(request))
        self._remember(response)
        self.last = response
        return response

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def csrf(self, path: str) -> str:
        page = self.get(path).body.decode()
        match = re.search(r'name="csrf" value="([^"]+)"', page)
        assert match, page
        return match.group(1)

    def post(
        self,
        path: str,
        fields: dict[str, str],
        *,
        token_from: str | None = None,
        origin: str | None = f"https://{HOST}",
    ) -> Response:
        if token_from is not None:
            fields = {"csrf": self.csrf(token_from), **fields}
        headers = [("content-type", "application/x-www-form-urlencoded")]
        if origin is not None:
            headers.append(("origin", origin))
        return self.request("POST", path, urlencode(fields).encode(), headers)

    def login(self, address: str = ALICE, password: str = PASSWORD) -> Response:
        return self.post("/login", {"address": address, "password": password}, token_from="/login")


def text_of(response: Response) -> str:
    return html.unescape(response.body.decode())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def parts(tmp_path: Path, clock: Clock) -> Iterator[tuple[AccountPages, Accounts, ScriptStore]]:
    accounts = Accounts(
        tmp_path / "accounts.db",
        ["example.test"],
        hasher=argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )
    accounts.add_user(ALICE, PASSWORD)
    accounts.add_user("bob@example.test", PASSWORD)
    recorder = LoginRecorder(accounts)
    authenticator = Authenticator(
        accounts,
        LoginGuard(GuardPolicy(pair_max_failures=3, delay_base=0.0, max_delay=0.0)),
        sleep=no_sleep,
        history=recorder,
    )
    scripts = ScriptStore(
        tmp_path / "sieve",
        max_script_size=65536,
        max_scripts=5,
        compile=lambda text: sieve.compile_script(text),
    )
    pages = AccountPages(
        accounts=accounts,
        authenticator=authenticator,
        scripts=scripts,
        store=FakeStore(),
        hostname=HOST,
        default_quota=100 * 1024 * 1024,
        limits=SessionLimits(max_per_account=3),
        clock=clock,
        sleep=no_sleep,
    )
    yield pages, accounts, scripts
    asyncio.run(pages.close())
    asyncio.run(authenticator.close())
    accounts.close()


@pytest.fixture
def pages(parts: tuple[AccountPages, Accounts, ScriptStore]) -> AccountPages:
    return parts[0]


@pytest.fixture
def accounts(parts: tuple[AccountPages, Accounts, ScriptStore]) -> Accounts:
    return parts[1]


@pytest.fixture
def scripts(parts: tuple[AccountPages, Accounts, ScriptStore]) -> ScriptStore:
    return parts[2]


@pytest.fixture
def alice(pages: AccountPages) -> Browser:
    browser = Browser(pages)
    response = browser.login()
    assert response.status == 303, text_of(response)
    assert dict(response.headers)["Location"] == "/"
    return browser


# -- login ---------------------------------------------------------------------


def test_pages_need_a_login(pages: AccountPages) -> None:
    browser = Browser(pages)
    response = browser.get("/")
    assert response.status == 303
    assert dict(response.headers)["Location"] == "/login"


def test_login_sets_a_host_only_strict_cookie(pages: AccountPages) -> None:
    browser = Browser(pages)
    response = browser.login()
    assert response.status == 303
    cookies = [v for k, v in response.headers if k == "Set-Cookie" and v.startswith(COOKIE)]
    assert len(cookies) == 1
    value = cookies[0]
    attributes = {a.strip() for a in value.split(";")[1:]}
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= attributes
    assert not any(a.lower().startswith("domain") for a in attributes)
    session_id = value.split(";")[0].split("=", 1)[1]
    assert len(session_id) >= 43  # 32 random octets, base64url
    overview = browser.get("/")
    assert overview.status == 200
    page = text_of(overview)
    assert ALICE in page
    assert "3.0 MiB of 100.0 MiB used (3%)" in page
    assert "Two-factor login: <strong>off</strong>" in page


def test_wrong_password_and_unknown_account_are_refused_alike(pages: AccountPages) -> None:
    browser = Browser(pages)
    wrong = browser.login(password="not the password at all")
    assert wrong.status == 403
    assert "Wrong address or password" in text_of(wrong)
    unknown = browser.login(address="nobody@example.test")
    assert unknown.status == 403
    assert text_of(unknown).count("Wrong address or password") == 1
    assert COOKIE not in browser.cookies


def test_app_password_does_not_open_the_pages(pages: AccountPages, accounts: Accounts) -> None:
    secret = accounts.app_password_create(ALICE, "phone")
    browser = Browser(pages)
    assert browser.login(password=secret).status == 403
    assert COOKIE not in browser.cookies


def test_lockout_through_the_guard(pages: AccountPages) -> None:
    browser = Browser(pages)
    for _ in range(3):  # pair_max_failures
        assert browser.login(password="wrong wrong wrong").status == 403
    locked = browser.login()  # even the right password now
    assert locked.status == 429
    assert "Too many failed logins" in text_of(locked)
    # Another client is not affected.
    assert Browser(pages, remote="198.51.100.9").login().status == 303


def test_login_history_shows_web_logins(alice: Browser, accounts: Accounts) -> None:
    alice.pages.auth.history.history.flush()  # type: ignore[union-attr]
    page = text_of(alice.get("/"))
    assert "<td>web</td>" in page
    assert "192.0.2.7" in page


def test_login_form_needs_its_token(pages: AccountPages) -> None:
    browser = Browser(pages)
    browser.get("/login")  # the login cookie
    response = browser.post("/login", {"address": ALICE, "password": PASSWORD, "csrf": "x" * 64})
    assert response.status == 403
    assert COOKIE not in browser.cookies


def test_totp_step(pages: AccountPages, accounts: Accounts, clock: Clock) -> None:
    secret, _ = accounts.totp_enroll(ALICE)
    browser = Browser(pages)
    response = browser.login()
    assert response.status == 303
    assert dict(response.headers)["Location"] == "/login/code"
    pending_id = browser.cookies[COOKIE]
    # A pending session opens nothing else.
    assert dict(browser.get("/").headers)["Location"] == "/login/code"
    wrong = browser.post("/login/code", {"code": "000000"}, token_from="/login/code")
    assert wrong.status == 403
    good = browser.post("/login/code", {"code": pyotp.TOTP(secret).now()}, token_from="/login/code")
    assert good.status == 303
    assert browser.cookies[COOKIE] != pending_id  # a new id once logged in
    assert browser.get("/").status == 200
    assert "Two-factor login: <strong>on</strong>" in text_of(browser.last)  # type: ignore[arg-type]


def test_too_many_wrong_codes_end_the_pending_session(
    pages: AccountPages, accounts: Accounts
) -> None:
    accounts.totp_enroll(ALICE)
    browser = Browser(pages)
    browser.login()
    for _ in range(5):
        response = browser.post("/login/code", {"code": "000000"}, token_from="/login/code")
    assert response.status == 403
    assert "log in again" in text_of(response)
    assert dict(browser.get("/").headers)["Location"] == "/login"


# -- sessions ------------------------------------------------------------------


def test_idle_timeout_and_lifetime(alice: Browser, clock: Clock) -> None:
    clock.now += 14 * 60
    assert alice.get("/").status == 200  # restarts the idle time
    clock.now += 14 * 60
    assert alice.get("/").status == 200
    clock.now += 15 * 60
    assert alice.get("/").status == 303  # idle too long
    again = Browser(alice.pages)
    again.login()
    for _ in range(12 * 5):
        clock.now += 14 * 60
        if again.get("/").status != 200:
            break
    assert again.last is not None and again.last.status == 303
    assert clock.now - 1000 - 29 * 60 - 15 * 60 <= 12 * 3600 + 14 * 60


def test_sessions_per_account_are_bounded(pages: AccountPages) -> None:
    browsers = [Browser(pages) for _ in range(4)]
    for browser in browsers:
        assert browser.login().status == 303
    assert browsers[0].get("/").status == 303  # the oldest was evicted
    assert all(b.get("/").status == 200 for b in browsers[1:])


def test_logout(alice: Browser) -> None:
    response = alice.post("/logout", {}, token_from="/")
    assert response.status == 303
    assert COOKIE not in alice.cookies
    assert alice.get("/").status == 303


# -- CSRF ----------------------------------------------------------------------


def test_post_without_token_is_refused_and_changes_nothing(
    alice: Browser, accounts: Accounts
) -> None:
    fields = {"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD}
    response = alice.post("/password", fields)
    assert response.status == 403
    assert "Nothing was changed" in text_of(response)
    bad = alice.post("/password", {**fields, "csrf": "0" * 64})
    assert bad.status == 403
    assert accounts.verify_password(ALICE, PASSWORD)
    created = alice.post("/app-passwords/create", {"name": "evil", "protocol_imap": "1"})
    assert created.status == 403
    assert accounts.app_password_list(ALICE) == []


def test_post_from_another_origin_is_refused(alice: Browser, accounts: Accounts) -> None:
    response = alice.post(
        "/app-passwords/create",
        {"name": "evil", "protocol_imap": "1"},
        token_from="/app-passwords",
        origin="https://evil.example",
    )
    assert response.status == 403
    assert accounts.app_password_list(ALICE) == []


def test_token_of_another_session_is_refused(pages: AccountPages, accounts: Accounts) -> None:
    bob = Browser(pages)
    bob.login("bob@example.test")
    token = bob.csrf("/")
    alice = Browser(pages)
    alice.login()
    response = alice.post(
        "/app-passwords/create", {"name": "x", "protocol_imap": "1", "csrf": token}
    )
    assert response.status == 403
    assert accounts.app_password_list(ALICE) == []


def test_non_form_post_is_refused(alice: Browser) -> None:
    response = alice.request(
        "POST", "/logout", b'{"csrf": 1}', [("content-type", "application/json")]
    )
    assert response.status == 403


def test_plain_http_is_refused(pages: AccountPages) -> None:
    request = Request("GET", "/login", [("host", HOST)], secure=False)
    assert asyncio.run(pages(request)).status == 403


# -- password ------------------------------------------------------------------


def test_password_change(pages: AccountPages, accounts: Accounts) -> None:
    other = Browser(pages, remote="198.51.100.1")
    other.login()
    alice = Browser(pages)
    alice.login()
    fields = {"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD}
    response = alice.post("/password", fields, token_from="/password")
    assert response.status == 303, text_of(response)
    assert accounts.verify_password(ALICE, NEW_PASSWORD)
    assert not accounts.verify_password(ALICE, PASSWORD)
    assert alice.get("/").status == 200  # a fresh session for this browser
    assert "password was changed" in text_of(alice.last)  # type: ignore[arg-type]
    assert other.get("/").status == 303  # every other session ended


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({"current": PASSWORD, "new": NEW_PASSWORD, "again": "other"}, 400, "differ"),
        (
            {"current": "wrong password", "new": NEW_PASSWORD, "again": NEW_PASSWORD},
            403,
            "not right",
        ),
        ({"current": PASSWORD, "new": "short", "again": "short"}, 400, "too short"),
        ({"current": PASSWORD, "new": "password1234", "again": "password1234"}, 400, "guess"),
        ({"current": "", "new": NEW_PASSWORD, "again": NEW_PASSWORD}, 403, "current password"),
    ],
)
def test_password_errors(
    alice: Browser, accounts: Accounts, fields: dict[str, str], status: int, reason: str
) -> None:
    response = alice.post("/password", fields, token_from="/password")
    assert response.status == status
    assert reason in text_of(response)
    assert accounts.verify_password(ALICE, PASSWORD)


# -- TOTP ----------------------------------------------------------------------


def test_totp_needs_the_password_and_a_code(alice: Browser, accounts: Accounts) -> None:
    refused = alice.post("/totp/start", {"password": "wrong"}, token_from="/totp")
    assert refused.status == 403
    page = alice.post("/totp/start", {"password": PASSWORD}, token_from="/totp")
    assert page.status == 200
    body = page.body.decode()
    assert 'src="data:image/png;base64,' in body
    secret = re.search(r'data-secret="([A-Z2-7]+)"', body)
    assert secret is not None
    assert not accounts.totp_enrolled(ALICE)  # not before the code
    wrong = alice.post("/totp/confirm", {"code": "123456"}, token_from="/totp")
    assert wrong.status in (302, 303, 400)
    assert not accounts.totp_enrolled(ALICE)


def test_totp_enrol_and_disable(alice: Browser, accounts: Accounts, clock: Clock) -> None:
    page = alice.post("/totp/start", {"password": PASSWORD}, token_from="/totp")
    match = re.search(r'data-secret="([A-Z2-7]+)"', page.body.decode())
    assert match is not None
    secret = match.group(1)
    token = re.search(r'name="csrf" value="([^"]+)"', page.body.decode())
    assert token is not None
    response = alice.post(
        "/totp/confirm", {"code": pyotp.TOTP(secret).now(), "csrf": token.group(1)}
    )
    assert response.status == 303, text_of(response)
    assert accounts.totp_enrolled(ALICE)
    # The confirming code is used up.
    assert not accounts.totp_verify(ALICE, pyotp.TOTP(secret).now())
    off = alice.post("/totp/disable", {"password": PASSWORD, "code": "000000"}, token_from="/totp")
    assert off.status == 403
    assert accounts.totp_enrolled(ALICE)


# -- app passwords -------------------------------------------------------------


def test_app_password_create_shown_once_and_revoke(alice: Browser, accounts: Accounts) -> None:
    response = alice.post(
        "/app-passwords/create",
        {"name": "phone", "protocol_imap": "1", "protocol_smtp": "1"},
        token_from="/app-passwords",
    )
    assert response.status == 200
    match = re.search(r'id="new-app-password">([a-z0-9-]+)<', response.body.decode())
    assert match is not None
    secret = match.group(1)
    assert accounts.authenticate(ALICE, secret, "imap") == ALICE
    assert accounts.authenticate(ALICE, secret, "pop3") is None
    assert secret not in alice.get("/app-passwords").body.decode()
    revoked = alice.post("/app-passwords/revoke", {"name": "phone"}, token_from="/app-passwords")
    assert revoked.status == 303
    assert accounts.authenticate(ALICE, secret, "imap") is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": "", "protocol_imap": "1"}, "needs a name"),
        ({"name": "x" * 65, "protocol_imap": "1"}, "at most 64"),
        ({"name": "phone"}, "no protocol"),
        ({"name": "phone", "protocol_imap": "1", "expires": "abc"}, "number of days"),
        ({"name": "phone", "protocol_imap": "1", "expires": "0"}, "expiry"),
    ],
)
def test_app_password_errors(
    alice: Browser, accounts: Accounts, fields: dict[str, str], reason: str
) -> None:
    response = alice.post("/app-passwords/create", fields, token_from="/app-passwords")
    assert response.status == 400
    assert reason.lower() in text_of(response).lower()
    assert accounts.app_password_list(ALICE) == []


def test_app_password_needs_the_password_after_a_while(
    alice: Browser, accounts: Accounts, clock: Clock
) -> None:
    for _ in range(2):  # stay within the idle time
        clock.now += 6 * 60
        alice.get("/")
    form = alice.get("/app-passwords").body.decode()
    assert 'name="password"' in form
    refused = alice.post(
        "/app-passwords/create",
        {"name": "tablet", "protocol_imap": "1"},
        token_from="/app-passwords",
    )
    assert refused.status == 403
    assert accounts.app_password_list(ALICE) == []
    ok = alice.post(
        "/app-passwords/create",
        {"name": "tablet", "protocol_imap": "1", "password": PASSWORD},
        token_from="/app-passwords",
    )
    assert ok.status == 200
    assert [a["name"] for a in accounts.app_password_list(ALICE)] == ["tablet"]


# -- away message and forwarding -----------------------------------------------


AWAY = {
    "enabled": "1",
    "subject": 'Away "till" August \\ back',
    "text": "Hello,\n.I am away.\n\nBack soon.",
    "start": "2026-07-01",
    "end": "2026-07-31",
    "days": "3",
    "forward": "Carol@Other.Example",
}


def test_away_script_compiles_and_reads_back(alice: Browser, scripts: ScriptStore) -> None:
    response = alice.post("/away", AWAY, token_from="/away")
    assert response.status == 303, text_of(response)
    assert scripts.active(ALICE) is not None
    name, text = scripts.active(ALICE)  # type: ignore[misc]
    assert name == vacation.SCRIPT_NAME
    compiled = sieve.compile_script(text)
    assert {"vacation", "date", "relational", "copy"} <= set(compiled.requires)
    assert ':days 3 :subject "Away \\"till\\" August \\\\ back"' in text
    assert "\n..I am away.\n" in text  # dot-stuffed
    assert 'redirect :copy "carol@other.example"' in text
    page = text_of(alice.get("/away"))
    assert 'value="2026-07-01"' in page
    assert "Hello,\n.I am away." in page


def test_away_off_deactivates_the_page_script(alice: Browser, scripts: ScriptStore) -> None:
    alice.post("/away", AWAY, token_from="/away")
    response = alice.post("/away", {"days": "7"}, token_from="/away")
    assert response.status == 303
    assert scripts.active(ALICE) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"start": "2026-13-01"}, "a date like"),
        ({"start": "2026-08-01", "end": "2026-07-01"}, "before the first day"),
        ({"days": "99"}, "from 1 to 30"),
        ({"text": ""}, "write the text"),
        ({"subject": "a\tb"}, "printable"),
        ({"forward": "not an address"}, "Forward to"),
        ({"forward": ALICE}, "own address"),
        ({"text": "x" * 4001}, "at most 4000"),
    ],
)
def test_away_errors(
    alice: Browser, scripts: ScriptStore, change: dict[str, str], reason: str
) -> None:
    response = alice.post("/away", {**AWAY, **change}, token_from="/away")
    assert response.status == 400
    assert reason in text_of(response)
    assert scripts.list(ALICE) == []


def test_a_foreign_active_script_is_not_replaced_without_consent(
    alice: Browser, scripts: ScriptStore
) -> None:
    mine = 'require "fileinto";\nif header :contains "subject" "x" { fileinto "X"; }\n'
    scripts.put(ALICE, "mine", mine)
    scripts.activate(ALICE, "mine")
    page = text_of(alice.get("/away"))
    assert "“mine” is active" in page
    kept = alice.post("/away", AWAY, token_from="/away")
    assert kept.status == 409
    assert "not switched on" in text_of(kept)
    assert scripts.active(ALICE) == ("mine", mine)
    replaced = alice.post("/away", {**AWAY, "replace_active": "1"}, token_from="/away")
    assert replaced.status == 303
    active = scripts.active(ALICE)
    assert active is not None and active[0] == vacation.SCRIPT_NAME
    assert scripts.get(ALICE, "mine") == mine  # kept, not deleted


# -- static and misc -----------------------------------------------------------


def test_style_sheet_is_cacheable(pages: AccountPages) -> None:
    response = Browser(pages).get("/static/account.css")
    assert response.status == 200
    assert response.content_type.startswith("text/css")
    assert response.max_age is not None and response.max_age > 0
    assert b"body" in response.body


def test_unknown_page_and_wrong_method(alice: Browser) -> None:
    assert alice.get("/nothing-here").status == 404
    response = alice.request("DELETE", "/password")
    assert response.status == 405
    assert ("Allow", "GET, HEAD, POST") in response.headers


def test_cookie_parsing_ignores_junk() -> None:
    assert cookies_of(f"a=1; {LOGIN_COOKIE}=n; junk; {COOKIE}=s; {COOKIE}=t") == {
        "a": "1",
        LOGIN_COOKIE: "n",
        COOKIE: "s",
    }


def test_fetch_metadata_and_null_origin(alice: Browser, accounts: Accounts) -> None:
    fields = {"name": "x", "protocol_imap": "1"}
    token = alice.csrf("/app-passwords")
    headers = [("content-type", "application/x-www-form-urlencoded")]
    body = urlencode({**fields, "csrf": token}).encode()
    cross = alice.request(
        "POST", "/app-passwords/create", body, [*headers, ("sec-fetch-site", "cross-site")]
    )
    assert cross.status == 403
    null = alice.request("POST", "/app-passwords/create", body, [*headers, ("origin", "null")])
    assert null.status == 403
    assert accounts.app_password_list(ALICE) == []
    # What Chromium sends from our own page (its Referrer-Policy is no-referrer).
    same = alice.request(
        "POST",
        "/app-passwords/create",
        body,
        [*headers, ("origin", "null"), ("sec-fetch-site", "same-origin")],
    )
    assert same.status == 200
    assert [a["name"] for a in accounts.app_password_list(ALICE)] == ["x"]


# -- the password API (Roundcube's password plugin, httpapi driver) -------------


def api(
    pages: AccountPages,
    fields: dict[str, str],
    *,
    remote: str = "192.0.2.7",
    secure: bool = True,
    method: str = "POST",
) -> Response:
    request = Request(
        method=method,
        target="/api/password",
        headers=[("host", HOST), ("content-type", "application/x-www-form-urlencoded")],
        body=urlencode(fields).encode(),
        remote=remote,
        secure=secure,
    )
    return asyncio.run(pages(request))


def test_api_changes_the_password_and_ends_page_sessions(
    pages: AccountPages, accounts: Accounts
) -> None:
    alice = Browser(pages)
    alice.login()
    fields = {"user": ALICE.upper(), "curpass": PASSWORD, "newpass": NEW_PASSWORD}
    response = api(pages, fields)
    assert (response.status, response.body) == (200, b"ok\n")  # what the driver expects
    assert accounts.verify_password(ALICE, NEW_PASSWORD)
    assert not accounts.verify_password(ALICE, PASSWORD)
    assert alice.get("/").status == 303  # the page session ended
    pages.auth.history.history.flush()  # type: ignore[union-attr]
    latest = accounts.login_history(ALICE)[0]
    assert (latest.protocol, latest.client, latest.ok) == ("web", "192.0.2.7", True)


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({"user": ALICE, "curpass": "wrong password", "newpass": NEW_PASSWORD}, 403, "wrong"),
        (
            {"user": "nobody@example.test", "curpass": PASSWORD, "newpass": NEW_PASSWORD},
            403,
            "wrong",
        ),
        ({"user": ALICE, "curpass": PASSWORD, "newpass": "short"}, 400, "too short"),
        ({"user": ALICE, "curpass": PASSWORD}, 400, "required"),
        ({"user": ALICE, "curpass": PASSWORD, "newpass": "x" * 2000}, 400, "too long"),
    ],
)
def test_api_errors_change_nothing(
    pages: AccountPages, accounts: Accounts, fields: dict[str, str], status: int, reason: str
) -> None:
    response = api(pages, fields)
    assert response.status == status
    assert reason in response.body.decode()
    assert PASSWORD not in response.body.decode() and NEW_PASSWORD not in response.body.decode()
    assert accounts.verify_password(ALICE, PASSWORD)


def test_api_refuses_app_passwords_totp_accounts_and_plain_http(
    pages: AccountPages, accounts: Accounts
) -> None:
    secret = accounts.app_password_create(ALICE, "phone")
    assert api(pages, {"user": ALICE, "curpass": secret, "newpass": NEW_PASSWORD}).status == 403
    fields = {"user": ALICE, "curpass": PASSWORD, "newpass": NEW_PASSWORD}
    assert api(pages, fields, secure=False).status == 403
    get = api(pages, fields, method="GET")
    assert get.status == 405 and ("Allow", "POST") in get.headers
    accounts.totp_enroll(ALICE)
    refused = api(pages, fields)
    assert refused.status == 403 and b"account page" in refused.body
    assert accounts.verify_password(ALICE, PASSWORD)


def test_api_guesses_count_towards_the_lockout(pages: AccountPages, accounts: Accounts) -> None:
    wrong = {"user": ALICE, "curpass": "wrong wrong wrong", "newpass": NEW_PASSWORD}
    for _ in range(3):  # pair_max_failures
        assert api(pages, wrong).status == 403
    right = {"user": ALICE, "curpass": PASSWORD, "newpass": NEW_PASSWORD}
    assert api(pages, right).status == 429  # even the right password now
    assert Browser(pages).login().status == 429  # the same guard as the login page
    assert accounts.verify_password(ALICE, PASSWORD)
    assert api(pages, right, remote="198.51.100.9").status == 200  # another client is not affected
