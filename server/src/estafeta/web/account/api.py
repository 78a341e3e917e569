"""The password-change API for a webmail: ``POST /api/password``.

Roundcube's password plugin (its ``httpapi`` driver) changes a password by
sending the user's address, current and new password as a form and taking a
2xx answer whose body is ``ok`` as success. This is that endpoint, beside
the account pages and with their rules:

- https only, a form (``application/x-www-form-urlencoded``, bounded as the
  pages' forms are) with ``user``, ``curpass`` and ``newpass``;
- the current password goes through the same ``Authenticator`` as the web
  login: the account's own password only (never an app password), the same
  lockouts and delays as IMAP's, the attempt in the login history as "web".
  A guess here costs an attacker what a guess at the login page costs;
- an account with TOTP is refused (403): its password changes on the
  account page, after the second factor, and a password alone must not
  change it;
- the password policy applies (its reason is the answer's body, never the
  password); every account-page session of the account ends; the change is
  logged as one ``account_change`` line, as on the pages.

No cookie is read and no CSRF token is needed: nothing here acts on a
session, and the request carries the current password itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from estafeta.auth.accounts import AccountError
from estafeta.auth.guard import BUSY
from estafeta.log import log_event
from estafeta.web.connection import Request, Response, text

if TYPE_CHECKING:
    from estafeta.web.account.pages import AccountPages

log = logging.getLogger("estafeta.web")

PASSWORD_PATH = "/api/password"  # noqa: S105 (a path, not a password)
MAX_ADDRESS = 320


async def change_password(pages: AccountPages, request: Request) -> Response:
    from estafeta.web.account.pages import MAX_PASSWORD, _Refused, _sentence

    if request.method != "POST":
        answer = text(405, "POST only")
        answer.headers.append(("Allow", "POST"))
        return answer
    if not request.secure:
        return text(403, "https only")
    try:
        form = pages._form(request)
    except _Refused as exc:
        return text(400, f"refused: {exc}")
    address = form.get("user", "").strip()
    current, new = form.get("curpass", ""), form.get("newpass", "")
    if not address or not current or not new:
        return text(400, "user, curpass and newpass are required")
    if len(address) > MAX_ADDRESS or max(len(current), len(new)) > MAX_PASSWORD:
        return text(400, "a field is too long")
    result = await pages.auth.login(address, current, "web", request.remote)
    if not result.ok or result.address is None:
        outcome = "locked" if result.locked else "failed"
        log_event(
            log, "account_api_refused", account=address[:100], remote=request.remote, result=outcome
        )
        if result.locked:
            return text(503 if result.reason == BUSY else 429, "too many failed logins: try later")
        return text(403, "wrong address or password")
    account = result.address
    try:
        if await pages._run(pages.accounts.totp_enrolled, account):
            log_event(
                log, "account_api_refused", account=account, remote=request.remote, result="totp"
            )
            return text(
                403, "this account has two-factor login: change its password on the account page"
            )
        await pages._run(pages.accounts.set_password, account, new)
    except AccountError as exc:
        # The policy's reason (estafeta.auth.passwords): never the password.
        return text(400, _sentence(str(exc)))
    ended = pages.sessions.end_account(account)
    log_event(
        log,
        "account_change",
        account=account,
        change="password",
        remote=request.remote,
        via="api",
        sessions_ended=ended,
    )
    return text(200, "ok")
