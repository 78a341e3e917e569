"""Roundcube driven in Debian's chromium (headless, Selenium, Debian's chromedriver).

Shared by the webmail role's test on this machine (tests/test_role_webmail.py)
and the lab's (molecule/deliverability/tests/test_webmail.py): a user logs
in, opens a message, replies, and sets an away message in the managesieve
plugin, as a person would with the mouse and keyboard. Each step leaves a
screenshot in the artifacts folder; a step that times out leaves one named
``failed-STEP`` and fails with the URL it was on.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chromium(home: Path, resolve_to: str) -> Iterator[WebDriver]:
    """A headless chromium whose every host name resolves to ``resolve_to``.

    Certificate errors are ignored in the browser: the callers check the
    served certificate with Python's ssl against the CA that must have
    issued it (chromium would need an NSS database for that).
    """
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
        f"--host-resolver-rules=MAP * {resolve_to}",
        f"--user-data-dir={home / 'chromium'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    environment = {**os.environ, "HOME": str(home)}
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=environment), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Roundcube:
    """One browser session on the Roundcube at ``base_url`` (no trailing slash)."""

    def __init__(self, driver: WebDriver, base_url: str, artifacts: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.artifacts = artifacts

    def shot(self, name: str) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(self.artifacts / f"{name}.png"))

    def wait(self, name: str, condition: Any, seconds: float = 30) -> Any:
        try:
            return WebDriverWait(self.driver, seconds).until(condition)
        except TimeoutException:
            self.shot(f"failed-{name}")
            raise AssertionError(f"{name}: timed out on {self.driver.current_url}") from None

    def until(self, name: str, probe: Callable[[], Any], seconds: float) -> Any:
        """Poll ``probe`` (outside the browser, e.g. over IMAP) until it is truthy."""
        deadline = time.monotonic() + seconds
        while not (result := probe()):
            if time.monotonic() > deadline:
                self.shot(f"failed-{name}")
                raise AssertionError(f"{name}: not within {seconds:.0f} s")
            time.sleep(0.5)
        return result

    def login(self, user: str, password: str) -> None:
        self.driver.get(self.base_url + "/")
        self.wait(
            "login form",
            expected_conditions.presence_of_element_located((By.ID, "rcmloginuser")),
        )
        self.shot("01-login")
        self.driver.find_element(By.ID, "rcmloginuser").send_keys(user)
        self.driver.find_element(By.ID, "rcmloginpwd").send_keys(password)
        self.driver.find_element(By.ID, "rcmloginsubmit").click()

    def open_message(self, subject: str, text: str) -> str:
        """Find ``subject`` in the INBOX list, open it, wait for ``text``; its UID."""
        row = self.wait(
            "message list",
            expected_conditions.presence_of_element_located(
                (By.XPATH, f"//table[@id='messagelist']//tr[contains(., '{subject}')]")
            ),
        )
        self.shot("02-inbox")
        # Roundcube's row id is "rcmrow" and the UID in unpadded URL-safe base64.
        encoded = row.get_attribute("id").removeprefix("rcmrow")
        uid = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        self.driver.get(f"{self.base_url}/?_task=mail&_mbox=INBOX&_uid={uid}&_action=show")
        self.wait(
            "message",
            expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), text),
        )
        self.shot("03-message")
        return uid

    def reply(self, uid: str, text: str) -> None:
        """Reply to the message ``uid`` of the INBOX with ``text`` and press Send."""
        self.driver.get(f"{self.base_url}/?_task=mail&_reply_uid={uid}&_mbox=INBOX&_action=compose")
        body = self.wait(
            "compose", expected_conditions.element_to_be_clickable((By.ID, "composebody"))
        )
        body.send_keys(text + "\n")
        self.shot("04-compose")
        send = self.driver.find_element(By.CSS_SELECTOR, "button.btn.send, a.send")
        self.driver.execute_script("arguments[0].scrollIntoView();", send)
        send.click()

    def back_at_the_list(self) -> None:
        """Roundcube goes back to the message list by itself after sending."""
        self.wait("back to the list", lambda d: "_action=compose" not in d.current_url)
        self.wait("list", expected_conditions.presence_of_element_located((By.ID, "messagelist")))
        self.shot("05-sent")

    def set_vacation(self, subject: str, text: str) -> None:
        """Fill and save the managesieve plugin's away form, turned on."""
        self.driver.get(f"{self.base_url}/?_task=settings&_action=plugin.managesieve-vacation")
        self.wait(
            "vacation form",
            expected_conditions.presence_of_element_located((By.ID, "vacation_reason")),
        )
        for field, value in (("vacation_subject", subject), ("vacation_reason", text)):
            element = self.driver.find_element(By.ID, field)
            element.clear()  # the form shows the away message saved before
            element.send_keys(value)
        Select(self.driver.find_element(By.ID, "vacation_status")).select_by_value("on")
        self.shot("06-vacation")
        self.driver.find_element(
            By.CSS_SELECTOR, ".formbuttons button.submit, .formbuttons input.button.mainaction"
        ).click()

    def change_password(self, current: str, new: str) -> str:
        """Fill and save the password plugin's form; the message Roundcube shows."""
        self.driver.get(f"{self.base_url}/?_task=settings&_action=plugin.password")
        self.wait(
            "password form",
            expected_conditions.presence_of_element_located((By.ID, "password-form")),
        )
        for field, value in (("_curpasswd", current), ("_newpasswd", new), ("_confpasswd", new)):
            element = self.driver.find_element(By.NAME, field)
            element.clear()
            element.send_keys(value)
        self.shot("08-password")
        self.driver.find_element(
            By.CSS_SELECTOR, ".formbuttons button.submit, .formbuttons input.button.mainaction"
        ).click()
        message = self.wait(
            "password answer",
            expected_conditions.visibility_of_element_located(
                (By.CSS_SELECTOR, "#messagestack div")
            ),
        )
        self.shot("09-password-answer")
        return str(message.text)
