"""Filters that write Sieve (RFC 5228) text from inventory data.

==============  ===========================================================
sieve_quote     a value as a Sieve quoted string (RFC 5228 2.4.2)
sieve_vacation  the ``vacation:`` shorthand of the estafeta role as a script
==============  ===========================================================

Pure functions: no files, no clock. Bad input raises ``AnsibleFilterError``
naming the value and saying what to change. What they write is a script the
server checks again when it is stored (``estafeta sieve put``), so a mistake
here cannot store a broken script; the tests compile their output with the
server's own compiler.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: sieve
short_description: Sieve script text - quoted strings and vacation auto-replies
version_added: "0.1.0"
author: estafeta
description:
  - This file holds two filters; C(ansible-doc -t filter) shows this page for each of them.
  - C(sieve_quote) returns a value as a Sieve quoted string (RFC 5228 2.4.2) - in double quotes,
    with C(\) and C(") escaped by a backslash. Line breaks are kept (as LF); the NUL
    character, which Sieve strings cannot hold, is refused.
  - C(sieve_vacation) turns the estafeta role's C(vacation:) shorthand (a dict) into a whole
    Sieve script - C(vacation) (RFC 5230), guarded by C(currentdate) tests (RFC 5260 5,
    with C(:value) of RFC 5231) when it has a first or last day.
options:
  _input:
    description:
      - C(sieve_quote) - a string (numbers are written as text).
      - C(sieve_vacation) - a dict with the keys C(body) (required, the reply's text),
        C(subject), C(days) (1 or more, default 7; how often one sender gets a reply),
        C(from_date) and C(until_date) (C(YYYY-MM-DD), both days included), C(zone)
        (the time zone of those days, C(+HHMM) or C(-HHMM); default the server's) and
        C(addresses) (more addresses of the account that count as "mail to me",
        RFC 5230 4.5).
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: A quoted string
  ansible.builtin.debug:
    msg: '{{ "say \"hi\" \\ bye" | sieve_quote }}'
    # => "\"say \\\"hi\\\" \\\\ bye\""

- name: An out-of-office script for the holidays
  ansible.builtin.debug:
    msg: "{{ vacation | sieve_vacation }}"
  vars:
    vacation:
      subject: Away until January 6
      body: |
        I am away and read my mail after January 6.
      days: 7
      from_date: "2026-12-20"
      until_date: "2027-01-06"
"""

RETURN = r"""
_value:
  description:
    - C(sieve_quote) - the quoted string.
    - C(sieve_vacation) - the script text, ending with a line break.
  type: str
"""

# A line to mark the script as written by the role: hand edits are overwritten.
GENERATED = "# Written by the estafeta role from a vacation: shorthand; edits are overwritten.\n"

# rfc5230:4.1 — "days" is at least 1; the server also moves it into
# [sieve] vacation_min_period .. vacation_max_period. A cap here catches typos
# (a year given as days) before the server silently shortens them.
MAX_DAYS = 365

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_ZONE = re.compile(r"[+-](?:[01]\d|2[0-3])[0-5]\d\Z")  # rfc5260:4.1 "+HHMM" / "-HHMM"
_KEYS = ("subject", "body", "days", "from_date", "until_date", "zone", "addresses")


def _error(message: str) -> AnsibleFilterError:
    return AnsibleFilterError(message)


def sieve_quote(value: Any) -> str:
    """VALUE as a Sieve quoted string.

    rfc5228:2.4.2 — inside double quotes only ``\\`` and ``"`` need a
    backslash; "\\" followed by any other character would drop the backslash,
    so nothing else is escaped. A quoted string may span lines (quoted-safe
    holds CRLF); the estafeta parser reads CRLF and LF alike, and CR LF / CR
    are written as LF so that a script has one kind of line break. NUL is
    not a Sieve character (octet-not-qspecial starts at %x01).
    """
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        raise _error(
            f"sieve_quote: {value!r} is {type(value).__name__}; give a string (or a number)"
        )
    text = str(value)
    if "\x00" in text:
        raise _error(f"sieve_quote: {text!r} holds a NUL character, which Sieve cannot carry")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(what: str, value: Any, *, required: bool, single_line: bool) -> str | None:
    if value is None:
        if required:
            raise _error(f"sieve_vacation: {what} is required")
        return None
    if not isinstance(value, str):
        raise _error(f"sieve_vacation: {what} must be a string, not {type(value).__name__}")
    if not value.strip():
        if required:
            raise _error(f"sieve_vacation: {what} is empty")
        return None
    if "\x00" in value:
        raise _error(f"sieve_vacation: {what} holds a NUL character, which Sieve cannot carry")
    if single_line and ("\n" in value or "\r" in value):
        # rfc5230:4.3 — the subject becomes a header field: one line.
        raise _error(f"sieve_vacation: {what} {value!r} must be one line (no line breaks)")
    return value


def _day(what: str, value: Any) -> str | None:
    """A day as YYYY-MM-DD, from a string or a date (YAML reads 2026-12-20 as a date)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        raise _error(f"sieve_vacation: {what} {value!r} must be a day (YYYY-MM-DD), not a time")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, str) and _DATE.match(value.strip()):
        try:
            return datetime.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise _error(f"sieve_vacation: {what} {value!r} must be a day like 2026-12-20")


def _days(value: Any) -> int:
    if value is None:
        return 7  # rfc5230:4.1 — "the default value is either 7 or ..."
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAYS:
        raise _error(f"sieve_vacation: days must be a whole number from 1 to {MAX_DAYS}")
    return value


def _addresses(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        raise _error("sieve_vacation: addresses must be a list of mail addresses")
    result: list[str] = []
    for item in value:
        if (
            not isinstance(item, str)
            or "@" not in item.strip()
            or any(c.isspace() or c == "\x00" for c in item.strip())
        ):
            raise _error(f"sieve_vacation: addresses: {item!r} is not a mail address")
        if item.strip() not in result:
            result.append(item.strip())
    return result


def sieve_vacation(vacation: Any) -> str:
    """The estafeta role's ``vacation:`` shorthand as a Sieve script.

    The reply (rfc5230:4) goes at most once per ``days`` to each sender; the
    server adds every "do not reply" rule of rfc5230:4.5-4.6 and rfc3834
    itself. With ``from_date``/``until_date`` the action sits in an ``if``
    on ``currentdate :value "ge"/"le" "date"`` (rfc5260:5, rfc5231:4.1): the
    "date" part is YYYY-MM-DD, so comparing the text compares the days, and
    both days are included.
    """
    if not isinstance(vacation, Mapping):
        raise _error(
            f"sieve_vacation: the input must be a dict with body, subject, days, ..., "
            f"not {type(vacation).__name__}"
        )
    unknown = sorted(str(key) for key in vacation if key not in _KEYS)
    if unknown:
        raise _error(f"sieve_vacation: unknown key(s) {', '.join(unknown)}; use {', '.join(_KEYS)}")
    body = _text("body", vacation.get("body"), required=True, single_line=False)
    subject = _text("subject", vacation.get("subject"), required=False, single_line=True)
    days = _days(vacation.get("days"))
    first = _day("from_date", vacation.get("from_date"))
    last = _day("until_date", vacation.get("until_date"))
    if first and last and first > last:
        raise _error(f"sieve_vacation: from_date {first} is after until_date {last}")
    zone = vacation.get("zone")
    if zone is not None and (not isinstance(zone, str) or not _ZONE.match(zone)):
        raise _error(f"sieve_vacation: zone {zone!r} must look like +0100 or -0500")
    addresses = _addresses(vacation.get("addresses"))

    # rfc5230:4 — vacation [":days" number] [":subject" string]
    #             [":addresses" string-list] <reason: string>
    action = f"vacation :days {days}"
    if subject is not None:
        action += f" :subject {sieve_quote(subject)}"
    if addresses:
        action += f" :addresses [{', '.join(sieve_quote(a) for a in addresses)}]"
    action += f" {sieve_quote(body)};\n"

    tests = []
    zone_arg = f":zone {sieve_quote(zone)} " if zone else ""
    for relation, day in (("ge", first), ("le", last)):
        if day is not None:
            # rfc5260:5 — currentdate [":zone" string] [MATCH-TYPE] <date-part> <key-list>
            tests.append(f'currentdate {zone_arg}:value "{relation}" "date" "{day}"')
    if not tests:
        return f'{GENERATED}require ["vacation"];\n\n{action}'
    condition = tests[0] if len(tests) == 1 else f"allof ({tests[0]},\n       {tests[1]})"
    return (
        f'{GENERATED}require ["date", "relational", "vacation"];\n\n'
        f"if {condition} {{\n    {action}}}\n"
    )


class FilterModule:
    """Sieve script text."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"sieve_quote": sieve_quote, "sieve_vacation": sieve_vacation}
