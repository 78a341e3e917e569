"""Configuration of retention: ``[retention]`` (issue 18; docs/operations.md).

Example::

    [retention]
    mailboxes = { Trash = "30d", Junk = "30d" }   # "0" or absent: keep forever
    login_history = "90d"
    truncate_client_ip = "7d"    # then IPv4 -> /24, IPv6 -> /48 in our own records
    hour = 4                     # local hour the daily run starts (+ up to 30 min)

A ``mailboxes`` key is a special-use role (rfc6154:2: ``Trash``, ``Junk``,
``Archive``, ``Sent``, ``Drafts``, ``All``, ``Flagged``), which names the
mailbox with that attribute, or else a mailbox name. A message goes once it
has been in that mailbox longer than the duration (counted from when it was
saved into it, not from its internal date). Accounts may have their own
(``estafeta user retention``). Durations take a unit: ``s``, ``m``, ``h``,
``d``, ``w``; ``"0"`` (or ``0``) keeps forever. A bare number other than 0
is refused: "30" meaning 30 seconds of Trash is never what was meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from estafeta.config import _Reader

# rfc6154:2 special-use attributes a key may name ("Trash" names \Trash).
ROLES = ("All", "Archive", "Drafts", "Flagged", "Junk", "Sent", "Trash")
DAY = 86_400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
MAX_SECONDS = 100 * 365 * DAY
KEEP_WORDS = ("0", "keep", "forever")


@dataclass(frozen=True)
class RetentionConfig:
    # Mailbox key (role or name) -> seconds; 0 = keep forever.
    mailboxes: Mapping[str, int] = field(default_factory=dict)
    login_history: int = 90 * DAY  # 0: keep (at most 1,000 rows per account anyway)
    truncate_client_ip: int = 7 * DAY  # 0: never
    hour: int = 4


def parse_duration(value: object) -> int:
    """Seconds from "30d", "12h", "2w", "90m", "45s"; 0 from 0, "0", "keep",
    "forever". ValueError, with what to write, for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in KEEP_WORDS:
            return 0
        number, unit = text[:-1], text[-1:]
        if unit in _UNITS and number.isdigit():
            seconds = int(number) * _UNITS[unit]
            if 0 < seconds <= MAX_SECONDS:
                return seconds
            if seconds > MAX_SECONDS:
                raise ValueError(f'{value!r} is more than 100 years; use "0" to keep forever')
    raise ValueError(f'{value!r} is not a duration like "30d", "12h", "2w", or "0" to keep forever')


def rule_key(name: str) -> str:
    """A mailbox key as rules are merged: a role in its rfc6154 spelling
    ("trash" is "Trash"), any other name as given (spaces trimmed)."""
    key = name.strip()
    for role in ROLES:
        if key.lower() == role.lower():
            return role
    return key


def format_duration(seconds: int) -> str:
    """The shortest exact text for a duration: "30d", "12h"; "keep" for 0."""
    if seconds == 0:
        return "keep"
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def retention_config(reader: _Reader) -> RetentionConfig:
    d = RetentionConfig()
    table = reader.get("mailboxes", dict, {})
    mailboxes: dict[str, int] = {}
    for name, value in table.items():
        key = f"mailboxes.{name}"
        if not name.strip() or not name.isprintable():
            raise reader.error(key, "a mailbox name or a role like Trash")
        try:
            mailboxes[rule_key(name)] = parse_duration(value)
        except ValueError as exc:
            raise reader.error(key, str(exc)) from None
    hour = reader.get("hour", int, d.hour)
    if not 0 <= hour <= 23:
        raise reader.error("hour", "must be an hour of the day, 0 to 23")
    config = RetentionConfig(
        mailboxes=mailboxes,
        login_history=_duration(reader, "login_history", d.login_history),
        truncate_client_ip=_duration(reader, "truncate_client_ip", d.truncate_client_ip),
        hour=hour,
    )
    reader.check_unknown()
    return config


def _duration(reader: _Reader, name: str, default: int) -> int:
    reader.used.add(name)
    if name not in reader.table:
        return default
    try:
        return parse_duration(reader.table[name])
    except ValueError as exc:
        raise reader.error(name, str(exc)) from None
