"""RFC 5260 (date and index) example scripts as test cases.

Without :zone or :originalzone the local time zone is used
(rfc5260:4.1); the tests run with TZ=UTC and give `now` in UTC, so that
"local" means UTC whether the interpreter takes the zone from the process
or from `now`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from _sieve import (
    assert_actions,
    compile_ok,
    discard,
    fileinto,
    header_lines,
    keep,
    redirect,
    refuses,
    run,
    simple,
    vacation,
)

from estafeta.sieve import parse


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def dated(date: str, *, from_: str = "boss@example.com") -> bytes:
    msg = simple(from_=from_)
    return msg.replace(b"Date: Tue, 1 Apr 1997 09:06:31 -0800", f"Date: {date}".encode())


# rfc5260:4.4 -- when the sender claims to have written the message.
BUSINESS_HOURS = """\
require ["date", "relational", "fileinto"];
if allof(header :is "from" "boss@example.com",
         date :value "ge" :originalzone "date" "hour" "09",
         date :value "lt" :originalzone "date" "hour" "17")
{ fileinto "urgent"; }
"""


def test_4_4_business_hours() -> None:
    urgent = [fileinto("urgent")]
    assert_actions(run(BUSINESS_HOURS, dated("Tue, 1 Apr 1997 10:06:31 -0800")), urgent)
    assert_actions(run(BUSINESS_HOURS, dated("Tue, 1 Apr 1997 09:00:00 -0800")), urgent)
    assert_actions(run(BUSINESS_HOURS, dated("Tue, 1 Apr 1997 16:59:59 -0800")), urgent)
    assert_actions(run(BUSINESS_HOURS, dated("Tue, 1 Apr 1997 17:00:00 -0800")), [keep()])
    assert_actions(run(BUSINESS_HOURS, dated("Tue, 1 Apr 1997 08:59:59 -0800")), [keep()])
    # 23:30 in the original zone, 14:30 in UTC: the original zone counts.
    assert_actions(run(BUSINESS_HOURS, dated("Tue, 1 Apr 1997 23:30:00 +0900")), [keep()])
    other = dated("Tue, 1 Apr 1997 10:06:31 -0800", from_="someone@example.com")
    assert_actions(run(BUSINESS_HOURS, other), [keep()])
    # No valid date: the date test is false (rfc5260:4).
    assert_actions(run(BUSINESS_HOURS, dated("Fri, 29 Feb 2007 10:00:00 -0800")), [keep()])
    assert_actions(run(BUSINESS_HOURS, dated("yesterday at ten")), [keep()])


# rfc5260:4.4 -- the initial Received: field.
WEEKEND = """\
require ["date", "relational", "fileinto"];
if anyof(date :is "received" "weekday" "0",
         date :is "received" "weekday" "6")
{ fileinto "weekend"; }
"""


def received(*dates: str) -> bytes:
    extra = [("Received", f"from h{i}.example by mx.example; {d}") for i, d in enumerate(dates)]
    msg = simple(extra=extra)
    # Received fields go on top, in the order given.
    lines = header_lines(msg)
    top = [line for line in lines if line.startswith("Received:")]
    rest = [line for line in lines if not line.startswith("Received:")]
    return ("\r\n".join(top + rest) + "\r\n\r\n").encode() + msg.split(b"\r\n\r\n", 1)[1]


def test_4_4_weekend() -> None:
    assert_actions(run(WEEKEND, received("Sat, 3 Mar 2007 12:00:00 +0000")), [fileinto("weekend")])
    assert_actions(run(WEEKEND, received("Sun, 4 Mar 2007 12:00:00 +0000")), [fileinto("weekend")])
    assert_actions(run(WEEKEND, received("Wed, 7 Mar 2007 12:00:00 +0000")), [keep()])
    # Only the first (topmost) Received: field is used.
    two = received("Wed, 7 Mar 2007 12:00:00 +0000", "Sat, 3 Mar 2007 12:00:00 +0000")
    assert_actions(run(WEEKEND, two), [keep()])
    # Shifted to the local zone (UTC): Saturday 23:30 -0500 is Sunday.
    assert_actions(run(WEEKEND, received("Fri, 2 Mar 2007 23:30:00 -0500")), [fileinto("weekend")])


# rfc5260:5.1 -- redirect to the pager out of business hours.
PAGER = """\
require ["date", "relational"];
if anyof(currentdate :is "weekday" "0",
         currentdate :is "weekday" "6",
         currentdate :value "lt" "hour" "09",
         currentdate :value "ge" "hour" "17")
{ redirect "pager@example.com"; }
"""


@pytest.mark.parametrize(
    ("now", "paged"),
    [
        (datetime(2007, 7, 1, 12, 0, tzinfo=UTC), True),  # Sunday
        (datetime(2007, 7, 7, 12, 0, tzinfo=UTC), True),  # Saturday
        (datetime(2007, 7, 3, 8, 59, 59, tzinfo=UTC), True),
        (datetime(2007, 7, 3, 9, 0, tzinfo=UTC), False),
        (datetime(2007, 7, 3, 16, 59, 59, tzinfo=UTC), False),
        (datetime(2007, 7, 3, 17, 0, tzinfo=UTC), True),
    ],
)
def test_5_1_pager(now: datetime, paged: bool) -> None:
    expected = [redirect("pager@example.com")] if paged else [keep()]
    assert_actions(run(PAGER, simple(), now=now), expected)


# rfc5260:5.1 -- a vacation response during the first week in July.
VACATION = """\
require ["date", "relational", "vacation"];
if allof(currentdate :value "ge" "date" "2007-06-30",
         currentdate :value "le" "date" "2007-07-07")
{ vacation :days 7  "I'm away during the first week in July."; }
"""


def test_5_1_vacation_window() -> None:
    coyote = "coyote@desert.example.org"
    for day in (30, 1, 7):
        now = datetime(2007, 6 if day == 30 else 7, day, 12, 0, tzinfo=UTC)
        result = run(VACATION, simple(subject="hi"), now=now)
        assert_actions(result, [vacation(coyote, "Auto: hi"), keep()])
    for now in (datetime(2007, 6, 29, 23, 59, tzinfo=UTC), datetime(2007, 7, 8, tzinfo=UTC)):
        assert_actions(run(VACATION, simple(), now=now), [keep()])


# rfc5260:5.1 -- a folder named after the current month and year.
MONTHLY = """\
require ["date", "variables", "fileinto"];
if currentdate :matches "month" "*" { set "month" "${1}"; }
if currentdate :matches "year"  "*" { set "year"  "${1}"; }
fileinto "${month}-${year}";
"""


def test_5_1_monthly_folder() -> None:
    now = datetime(2007, 7, 3, 12, 0, tzinfo=UTC)
    assert_actions(run(MONTHLY, simple(), now=now), [fileinto("07-2007")])
    now = datetime(2008, 12, 31, 12, 0, tzinfo=UTC)
    assert_actions(run(MONTHLY, simple(), now=now), [fileinto("12-2008")])


# rfc5260:5.1 -- a header field with the processing date.
PROCESSING_DATE = """\
require ["variables", "date", "editheader"];
if currentdate :matches "std11" "*"
  {addheader "Processing-date" "${0}";}
"""


def test_5_1_processing_date() -> None:
    now = datetime(2007, 7, 3, 12, 34, 56, tzinfo=UTC)
    result = run(PROCESSING_DATE, simple(), now=now)
    assert_actions(result, [keep()])
    assert result.message is not None
    first = header_lines(result.message)[0]
    name, value = first.split(":", 1)
    assert name == "Processing-date"
    assert email.utils.parsedate_to_datetime(value.strip()) == now


@pytest.mark.parametrize(
    ("test", "value"),
    [
        ('date :originalzone "date" "zone" "-0800"', True),
        ('date :zone "+0000" "date" "iso8601" "1997-04-01T17:06:31Z"', True),
        ('date :zone "+0530" "date" "time" "22:36:31"', True),
        ('date :zone "-1200" "date" "date" "1997-04-01"', True),
        ('date :zone "+1400" "date" "date" "1997-04-02"', True),
        ('date :zone "+0000" "date" "julian" "50539"', True),
        ('date "date" "zone" "+0000"', True),  # the local zone, positive when zero
        ('date :originalzone "date" "year" "1997"', True),
        ('date :originalzone "date" "month" "04"', True),
        ('date :originalzone "date" "day" "01"', True),
        ('date :originalzone "date" "minute" "06"', True),
        ('date :originalzone "date" "second" "31"', True),
        ('date :originalzone "date" "weekday" "2"', True),
        ('date :originalzone "date" "DATE" "1997-04-01"', True),
        ('date :originalzone "x-absent" "year" "1997"', False),
        ('currentdate "julian" "54284"', True),
        ('currentdate :zone "-0100" "date" "2007-07-02"', True),
        ('currentdate "iso8601" "2007-07-03T00:30:00Z"', True),
    ],
)
def test_4_2_date_parts(test: str, value: bool) -> None:
    script = f'require "date";\nif {test} {{ discard; }}\n'
    msg = simple()  # Date: Tue, 1 Apr 1997 09:06:31 -0800
    now = datetime(2007, 7, 3, 0, 30, tzinfo=UTC)
    assert_actions(run(script, msg, now=now), [discard()] if value else [keep()])


@pytest.mark.parametrize(
    "test",
    [
        'date :zone "+0100" :originalzone "date" "hour" "09"',  # rfc5260:4.1
        'date :zone "0100" "date" "hour" "09"',  # not +hhmm / -hhmm
        'date "date" "fortnight" "1"',  # unknown date-part
        'currentdate :originalzone "hour" "09"',
    ],
)
def test_4_errors(test: str) -> None:
    refuses(f'require "date";\nif {test} {{ discard; }}\n')


# rfc5260:6.1 -- as printed, a "," precedes the block.
CUTOFF_AS_PRINTED = """\
# Implement the Internet-Draft cutoff date check assuming the
# second Received: field specifies when the message first
# entered the local email infrastructure.
require ["date", "relational", "index"];
if date :value "gt" :index 2 :zone "-0500" "received"
        "iso8601" "2007-02-26T09:00:00-05:00",
{ redirect "aftercutoff@example.org"; }
"""

CUTOFF = CUTOFF_AS_PRINTED.replace('-05:00",\n', '-05:00"\n')


def test_6_1_index() -> None:
    refuses(CUTOFF_AS_PRINTED)
    after = received("Mon, 26 Feb 2007 16:00:00 +0000", "Mon, 26 Feb 2007 15:00:01 +0000")
    assert_actions(run(CUTOFF, after), [redirect("aftercutoff@example.org")])
    before = received("Mon, 26 Feb 2007 16:00:00 +0000", "Mon, 26 Feb 2007 13:59:59 +0000")
    assert_actions(run(CUTOFF, before), [keep()])
    # The first field being late does not matter; the second is tested.
    first_late = received("Tue, 27 Feb 2007 10:00:00 +0000", "Sun, 25 Feb 2007 10:00:00 +0000")
    assert_actions(run(CUTOFF, first_late), [keep()])
    # Only one Received field: :index 2 finds nothing.
    assert_actions(run(CUTOFF, received("Tue, 27 Feb 2007 10:00:00 +0000")), [keep()])


@pytest.mark.parametrize(
    ("test", "value"),
    [
        ('header :index 1 :contains "received" "h0.example"', True),
        ('header :index 2 :contains "received" "h0.example"', False),
        ('header :index 1 :last :contains "received" "h2.example"', True),
        ('header :index 3 :last :contains "received" "h0.example"', True),
        ('header :index 4 :contains "received" ""', False),
        ('header :index 2 :contains ["received", "subject"] "h1.example"', True),
        ('header :index 4 :is ["received", "subject"] "Hello"', True),
        ('address :index 1 :last :all "to" "roadrunner@acme.example.com"', True),
        ('date :index 1 :last :zone "+0000" "received" "day" "03"', True),
    ],
)
def test_6_index_on_header_address_date(test: str, value: bool) -> None:
    script = f'require ["index", "date"];\nif {test} {{ discard; }}\n'
    msg = received(
        "Thu, 1 Mar 2007 12:00:00 +0000",
        "Fri, 2 Mar 2007 12:00:00 +0000",
        "Sat, 3 Mar 2007 12:00:00 +0000",
    )
    assert_actions(run(script, msg), [discard()] if value else [keep()])


def test_6_last_without_index_is_an_error() -> None:
    refuses('require "index";\nif header :last "received" "x" { discard; }\n')
    refuses('if header :index 1 "received" "x" { discard; }\n')  # index not required


def test_examples_parse() -> None:
    for script in [BUSINESS_HOURS, WEEKEND, PAGER, VACATION, MONTHLY, PROCESSING_DATE, CUTOFF]:
        assert parse(script.replace("\n", "\r\n")).commands
        compile_ok(script)
