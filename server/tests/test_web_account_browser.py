"""The account pages in a real browser (issue 20, acceptance 4).

A real estafeta (https and IMAP listeners) and Debian's chromium, headless,
driven by Selenium through Debian's chromedriver (never a downloaded one).
Screenshots of each page go to ``test-artifacts/account/`` at the top of
the repository.
"""

from __future__ import annotations

import http.client
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pyotp
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "account"
ALICE = f"alice@{DOMAIN}"
NEW_PASSWORD = "violet tractor sings quietly"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Instance]:
    section, _ca = make_tls(tmp_path)
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        https_port=free_port(),
        extra_config=section,
        auth_config="allow_plaintext = true\n",
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
        "--host-resolver-rules=MAP * 127.0.0.1",
        "--window-size=1000,1200",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def fill(driver: WebDriver, fields: dict[str, str]) -> None:
    for name, value in fields.items():
        element = driver.find_element(By.ID, name)
        element.clear()
        element.send_keys(value)


def submit(driver: WebDriver, action: str) -> None:
    """Submit the form and wait for the page that answers it: the old
    document is marked, and the wait ends when the document has no mark and
    has loaded. (selenium's staleness_of asks chromedriver about the old
    element, which during the navigation can answer "Node with given id does
    not belong to the document" instead of "stale".)"""
    driver.execute_script("document.documentElement.dataset.submitted = 'yes'")
    form = driver.find_element(By.CSS_SELECTOR, f'form[action="{action}"]')
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()

    def answered(d: WebDriver) -> bool:
        state = d.execute_script(
            "return [document.documentElement.dataset.submitted || '', document.readyState]"
        )
        return bool(state == ["", "complete"])

    WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,)).until(answered)


def test_account_pages_in_chromium(running: Instance, browser: WebDriver) -> None:
    base = f"https://mx.{DOMAIN}:{running.https_port}"

    # Log in.
    browser.get(base + "/")
    assert browser.current_url == base + "/login"
    shot(browser, "login")
    fill(browser, {"address": ALICE, "password": PASSWORD})
    submit(browser, "/login")
    assert browser.current_url == base + "/", browser.page_source
    assert ALICE in browser.find_element(By.TAG_NAME, "header").text
    assert "Last logins" in browser.page_source
    shot(browser, "overview")

    # A POST without the CSRF token, with the browser's own session cookie.
    session = browser.get_cookie("__Host-estafeta-session")
    assert session is not None and session["secure"] and session["httpOnly"]
    assert session["sameSite"] == "Strict"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(
        "127.0.0.1", running.https_port, context=context, timeout=30
    )
    body = urlencode({"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD})
    connection.request(
        "POST",
        "/password",
        body=body,
        headers={
            "Host": f"mx.{DOMAIN}:{running.https_port}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"__Host-estafeta-session={session['value']}",
        },
    )
    answer = connection.getresponse()
    assert answer.status == 403
    assert b"Nothing was changed" in answer.read()
    connection.close()
    assert running.imap_opens(ALICE, PASSWORD)  # nothing changed

    # Change the password.
    browser.get(base + "/password")
    shot(browser, "password")
    fill(browser, {"current": PASSWORD, "new": NEW_PASSWORD, "again": NEW_PASSWORD})
    submit(browser, "/password")
    assert browser.current_url == base + "/", browser.page_source
    assert "password was changed" in browser.page_source
    assert not running.imap_opens(ALICE, PASSWORD)
    assert running.imap_opens(ALICE, NEW_PASSWORD)

    # Create an app password, log in with it, revoke it.
    browser.get(base + "/app-passwords")
    fill(browser, {"name": "phone"})
    submit(browser, "/app-passwords/create")
    secret = browser.find_element(By.ID, "new-app-password").text
    assert re.fullmatch(r"[a-z2-9]{4}(-[a-z2-9]{4}){3}", secret)
    shot(browser, "app-password-created")
    assert running.imap_opens(ALICE, secret)
    submit(browser, "/app-passwords/revoke")
    assert "was revoked" in browser.page_source
    shot(browser, "app-passwords")
    assert not running.imap_opens(ALICE, secret)

    # The away message.
    browser.get(base + "/away")
    browser.find_element(By.NAME, "enabled").click()
    fill(browser, {"subject": "Away", "text": "Back on Monday."})
    submit(browser, "/away")
    assert "these settings are in effect" in browser.page_source
    shot(browser, "away")

    # Enrol TOTP, reading the secret from the page.
    browser.get(base + "/totp")
    fill(browser, {"password": NEW_PASSWORD})
    submit(browser, "/totp/start")
    key = browser.find_element(By.ID, "totp-secret").get_attribute("data-secret")
    assert key and re.fullmatch(r"[A-Z2-7]{32}", key)
    assert (
        browser.find_element(By.CSS_SELECTOR, "img.qr")
        .get_attribute("src")
        .startswith("data:image/png;base64,")
    )
    shot(browser, "totp-enrol")
    fill(browser, {"code": pyotp.TOTP(key).now()})
    submit(browser, "/totp/confirm")
    assert "Two-factor login is on" in browser.page_source, browser.page_source
    shot(browser, "totp-on")
    assert not running.imap_opens(ALICE, NEW_PASSWORD)  # mail apps need app passwords now

    # Log out; logging in again asks for the code.
    submit(browser, "/logout")
    assert browser.current_url == base + "/login"
    fill(browser, {"address": ALICE, "password": NEW_PASSWORD})
    submit(browser, "/login")
    assert browser.current_url == base + "/login/code"
    shot(browser, "login-code")
