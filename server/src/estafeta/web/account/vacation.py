"""The away message and the forwarding address, as the user's Sieve script.

The account page owns one script, :data:`SCRIPT_NAME`. Its first line is a
comment holding the form's values as JSON, so the page shows them again;
the rest is made from them:

- the away message: ``vacation`` (rfc5230:4) with ``:days`` and
  ``:subject``, inside ``currentdate`` tests (rfc5260:5) with
  ``:value "ge"``/``"le"`` (rfc5231:4.1) on the ``"date"`` part when a
  first or last day is given (the server's local date);
- forwarding: ``redirect :copy`` (rfc3894:3), so a copy stays here.

Nothing else is ever written into it; a script the user wrote over
ManageSieve is never touched (see ``pages``: activating this one instead of
another active script needs the user's explicit confirmation).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass

from estafeta.address import AddressError, normalize_address

SCRIPT_NAME = "account-page"
HEADER = "# estafeta account page: "
MAX_SUBJECT = 200
MAX_TEXT = 4000
MAX_ADDRESS = 320
DAYS_DEFAULT = 7  # rfc5230:4.1: the default of :days
MAX_DAYS = 30


class AwayError(ValueError):
    """A field of the away form that cannot be used; the message says why."""


@dataclass(frozen=True)
class Away:
    enabled: bool = False
    subject: str = ""
    text: str = ""
    start: str = ""  # YYYY-MM-DD or ""
    end: str = ""
    days: int = DAYS_DEFAULT
    forward: str = ""  # an address, or "" for none

    @property
    def any(self) -> bool:
        return self.enabled or bool(self.forward)


def _date(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise AwayError(f"{what}: use a date like 2026-07-31") from None


def _line(value: str, what: str, limit: int) -> str:
    value = value.strip()
    if len(value) > limit:
        raise AwayError(f"{what}: at most {limit} characters")
    if any(not c.isprintable() for c in value):
        raise AwayError(f"{what}: one line of printable characters")
    return value


def validate(
    *,
    enabled: bool,
    subject: str,
    text: str,
    start: str,
    end: str,
    days: str,
    forward: str,
    own_address: str,
) -> Away:
    """The form's fields checked and normalised; AwayError says what is wrong."""
    subject = _line(subject, "Subject", MAX_SUBJECT)
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if len(text) > MAX_TEXT:
        raise AwayError(f"Message: at most {MAX_TEXT} characters")
    if any(not (c.isprintable() or c in "\n\t") for c in text):
        raise AwayError("Message: only printable characters, tabs and line breaks")
    first = _date(start, "First day")
    last = _date(end, "Last day")
    if first and last and last < first:
        raise AwayError("Last day: it comes before the first day")
    try:
        every = int(days.strip() or DAYS_DEFAULT)
    except ValueError:
        raise AwayError(f"Days between replies: a number from 1 to {MAX_DAYS}") from None
    if not 1 <= every <= MAX_DAYS:
        raise AwayError(f"Days between replies: a number from 1 to {MAX_DAYS}")
    if enabled and not text:
        raise AwayError("Message: write the text of the away message")
    target = _line(forward, "Forward to", MAX_ADDRESS)
    if target:
        try:
            target = normalize_address(target)
        except AddressError as exc:
            raise AwayError(f"Forward to: {exc}") from None
        if target == own_address:
            raise AwayError("Forward to: that is this account's own address")
    return Away(enabled, subject, text, first, last, every, target)


def _quoted(value: str) -> str:
    # rfc5228:2.4.2: in a quoted string only \ and " need a backslash.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _multiline(value: str) -> str:
    # rfc5228:2.4.2: text: ... CRLF "." CRLF, a line starting with "." doubled.
    lines = [("." + line if line.startswith(".") else line) for line in value.split("\n")]
    return "text:\n" + "\n".join(lines) + "\n.\n"


def script(away: Away) -> str:
    """The Sieve script for ``away`` (one the page can read back)."""
    extensions: list[str] = []
    body: list[str] = []
    if away.enabled:
        extensions.append("vacation")
        tags = f":days {away.days}"
        if away.subject:
            tags += f" :subject {_quoted(away.subject)}"
        action = f"vacation {tags} {_multiline(away.text)};\n"
        tests = []
        if away.start:
            tests.append(f'currentdate :value "ge" "date" {_quoted(away.start)}')
        if away.end:
            tests.append(f'currentdate :value "le" "date" {_quoted(away.end)}')
        if tests:
            extensions += ["date", "relational"]
            condition = tests[0] if len(tests) == 1 else f"allof ({', '.join(tests)})"
            body.append(f"if {condition} {{\n{action}}}\n")
        else:
            body.append(action)
    if away.forward:
        extensions.append("copy")
        body.append(f"redirect :copy {_quoted(away.forward)};\n")
    if not body:
        body.append("keep;\n")
    settings = json.dumps(asdict(away), ensure_ascii=True, separators=(",", ":"))
    head = f"{HEADER}{settings}\n# Made by the account page: changes made here are replaced.\n"
    require = f"require [{', '.join(_quoted(e) for e in extensions)}];\n" if extensions else ""
    return head + require + "".join(body)


def read(text: str | None) -> Away:
    """The settings a script made by :func:`script` holds (defaults if none)."""
    if not text or not text.startswith(HEADER):
        return Away()
    line = text.split("\n", 1)[0][len(HEADER) :]
    try:
        values = json.loads(line)
        return Away(
            enabled=bool(values["enabled"]),
            subject=str(values["subject"]),
            text=str(values["text"]),
            start=str(values["start"]),
            end=str(values["end"]),
            days=int(values["days"]),
            forward=str(values["forward"]),
        )
    except (ValueError, KeyError, TypeError):
        return Away()
