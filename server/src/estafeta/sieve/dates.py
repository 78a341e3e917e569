"""Dates for the "date" and "currentdate" tests (rfc5260:4, rfc5260:5).

A date-time is read from a header value as a whole (Date:) or after its
last ";" (Received:), rfc5260:4; an invalid date (February 30th, hour 25)
is no date.  Zones: ``:zone "+hhmm"`` shifts to that offset,
``:originalzone`` keeps the one written, and neither uses the local zone,
which is the zone of ``Context.now`` when the caller gave an aware one (so
tests and ``sieve test --now`` are reproducible), else the machine's.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Final

DATE_PARTS: Final = frozenset(
    {
        "year",
        "month",
        "day",
        "date",
        "julian",
        "hour",
        "minute",
        "second",
        "time",
        "iso8601",
        "std11",
        "zone",
        "weekday",
    }
)
# rfc5260:4.1 time-zone = ( "+" / "-" ) 4DIGIT
ZONE: Final = re.compile(r"([+-])([0-9]{2})([0-9]{2})\Z")
_MJD_EPOCH: Final = date(1858, 11, 17)  # rfc5260:4.2 "julian"
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()  # noqa: SIM905
)


def parse_zone(text: str) -> timezone | None:
    """A "+hhmm" offset (at most 23:59 either way), or None."""
    m = ZONE.match(text)
    if m is None:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 23 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if m.group(1) == "-" else offset)


def header_date(value: str) -> tuple[datetime, str] | None:
    """The date-time in a header value and its zone as written ("+hhmm"),
    or None; "-0000" (zone unknown, rfc5322:3.3) is UTC written "-0000"."""
    text = value.rpartition(";")[2].strip() if ";" in value else value.strip()
    if not text or len(text) > 256:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC), "-0000"
    return parsed, zone_text(parsed)


def zone_text(moment: datetime) -> str:
    """rfc5260:4.2 "zone": "+hhmm"/"-hhmm"; zero is "+0000"."""
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def date_part(moment: datetime, part: str, zone: str) -> str:
    """The value of ``part`` (rfc5260:4.2) for ``moment`` shown in ``zone``."""
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if part == "julian":
        return str((moment.date() - _MJD_EPOCH).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    if part == "iso8601":
        # rfc3339:5.6 date-time, "T" and "Z" upper-case, zero offset as "Z".
        clock = f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
        offset = "Z" if zone in ("+0000", "-0000") else f"{zone[:3]}:{zone[3:]}"
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{clock}{offset}"
    if part == "std11":
        return (
            f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]}"
            f" {moment.year:04d} {moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
            f" {zone}"
        )
    if part == "zone":
        return zone
    if part == "weekday":
        return str((moment.weekday() + 1) % 7)  # rfc5260:4.2: "0" is Sunday
    raise ValueError(part)


def shifted(
    moment: datetime, original_zone: str, zone: str | None, original: bool, local: timezone
) -> tuple[datetime, str] | None:
    """``moment`` in the zone the test asks for, and that zone's text;
    None when the result falls outside years 1-9999."""
    try:
        if original:
            return moment, original_zone
        target = parse_zone(zone) if zone is not None else local
        if target is None:
            return None
        moved = moment.astimezone(target)
    except (OverflowError, ValueError):
        return None
    return moved, zone if zone is not None else zone_text(moved)


def local_zone(now: datetime) -> timezone:
    """The zone of ``now`` when aware, else the machine's."""
    offset = now.utcoffset()
    if offset is None:
        offset = datetime.now().astimezone().utcoffset() or timedelta(0)
    return timezone(offset)
