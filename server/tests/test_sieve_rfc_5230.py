"""RFC 5230 (vacation) example scripts as test cases, with the "do not
reply" rules of rfc5230:4.5-4.6 and RFC 3834 that depend only on the
message and envelope (DESIGN.md: the interpreter emits no Vacation then).

The "once per :days" memory is the delivery layer's; here the tracking
handle is asserted instead: equal handles are one response (rfc5230:4.2).
"""

from __future__ import annotations

from typing import Any

import pytest
from _sieve import (
    assert_actions,
    assert_implicit_keep_after_error,
    compile_ok,
    discard,
    keep,
    redirect,
    refused_or_fails,
    refuses,
    run,
    simple,
    vacation,
)

from estafeta.sieve import Limits, Result, parse

DAY = 86400


def the_vacation(result: Result) -> Any:
    found = [a for a in result.actions if a.to_json()["action"] == "vacation"]
    assert len(found) == 1, [a.to_json() for a in result.actions]
    return found[0]


# rfc5230:4.2 -- two different responses, both REQUIRED to be sent.
TWO_RESPONSES = """\
require "vacation";
if header :contains "subject" "cyrus" {
    vacation "I'm out -- send mail to cyrus-bugs";
} else {
    vacation "I'm out -- call me at +1 304 555 0123";
}
"""


def test_4_2_separate_responses_are_tracked_separately() -> None:
    coyote = "coyote@desert.example.org"
    first = run(TWO_RESPONSES, simple(subject="Cyrus bug"))
    second = run(TWO_RESPONSES, simple(subject="come over for dinner"))
    assert_actions(first, [vacation(coyote, "Auto: Cyrus bug"), keep()])
    assert_actions(second, [vacation(coyote, "Auto: come over for dinner"), keep()])
    one, two = the_vacation(first), the_vacation(second)
    assert one.body == "I'm out -- send mail to cyrus-bugs"
    assert two.body == "I'm out -- call me at +1 304 555 0123"
    assert one.handle != two.handle
    # The same response again is the same handle.
    assert the_vacation(run(TWO_RESPONSES, simple(subject="cyrus again"))).handle == one.handle


# rfc5230:4.2 -- tracking uses the arguments before variable expansion.
UNEXPANDED = """\
require ["vacation", "variables"];
if header :matches "subject" "*" {
    vacation :subject "Automatic response to: ${1}"
             "I'm away -- send mail to foo in my absence";
}
"""


def test_4_2_handle_is_synthesised_before_expansion() -> None:
    coyote = "coyote@desert.example.org"
    lunch = run(UNEXPANDED, simple(subject="lunch"))
    dinner = run(UNEXPANDED, simple(subject="dinner"))
    assert_actions(lunch, [vacation(coyote, "Automatic response to: lunch"), keep()])
    assert_actions(dinner, [vacation(coyote, "Automatic response to: dinner"), keep()])
    assert the_vacation(lunch).handle == the_vacation(dinner).handle
    assert the_vacation(lunch).body == "I'm away -- send mail to foo in my absence"
    assert the_vacation(lunch).handle != the_vacation(run(TWO_RESPONSES, simple())).handle


# rfc5230:4.2 -- one :handle, one response.
HANDLE = """\
require "vacation";
if header :contains "subject" "lunch" {
    vacation :handle "ran-away" "I'm out and can't meet for lunch";
} else {
    vacation :handle "ran-away" "I'm out";
}
"""


def test_4_2_explicit_handle() -> None:
    tweety = "tweety@cage.example.org"
    spike = "spike@doghouse.example.com"
    kw: dict[str, Any] = {"sender": tweety, "recipient": spike, "account": spike}
    lunch = run(HANDLE, simple(from_=tweety, to=spike, subject="lunch?"), **kw)
    dinner = run(HANDLE, simple(from_=tweety, to=spike, subject="dinner?"), **kw)
    assert_actions(lunch, [vacation(tweety, "Auto: lunch?"), keep()])
    assert_actions(dinner, [vacation(tweety, "Auto: dinner?"), keep()])
    assert the_vacation(lunch).body == "I'm out and can't meet for lunch"
    assert the_vacation(dinner).body == "I'm out"
    assert the_vacation(lunch).handle == the_vacation(dinner).handle


# rfc5230:4.4 -- as printed, the example lacks the final ";".
MIME_AS_PRINTED = """\
require "vacation";
vacation :mime text:
Content-Type: multipart/alternative; boundary=foo

--foo

I'm at the beach relaxing.  Mmmm, surf...

--foo
Content-Type: text/html; charset=us-ascii

<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.0//EN"
 "http://www.w3.org/TR/REC-html40/strict.dtd">
<HTML><HEAD><TITLE>How to relax</TITLE>
<BASE HREF="http://home.example.com/pictures/"></HEAD>
<BODY><P>I'm at the <A HREF="beach.gif">beach</A> relaxing.
Mmmm, <A HREF="ocean.gif">surf</A>...
</BODY></HTML>

--foo--
.
"""

MIME = MIME_AS_PRINTED + ";\n"


def test_4_4_mime() -> None:
    refuses(MIME_AS_PRINTED)
    result = run(MIME, simple(subject="hi"))
    assert_actions(result, [vacation("coyote@desert.example.org", "Auto: hi"), keep()])
    action = the_vacation(result)
    assert action.mime is True
    body = MIME_AS_PRINTED.split("text:\n", 1)[1].removesuffix(".\n")
    assert action.body == body.replace("\n", "\r\n")


# rfc5230:4.8 -- a simple use of vacation.
SIMPLE = """\
require "vacation";
vacation :days 23 :addresses ["tjs@example.edu",
                              "ts4z@landru.example.edu"]
"I'm away until October 19.
If it's an emergency, call 911, I guess." ;
"""


def test_4_8_simple() -> None:
    kw: dict[str, Any] = {"account": "tjs@cs.example.edu", "recipient": "tjs@cs.example.edu"}
    # Sent to one of the :addresses (rfc5230:4.5, item 3).
    result = run(SIMPLE, simple(to="Tim <ts4z@landru.example.edu>", subject="q"), **kw)
    assert_actions(result, [vacation("coyote@desert.example.org", "Auto: q"), keep()])
    action = the_vacation(result)
    assert action.seconds == 23 * DAY
    assert action.body == "I'm away until October 19.\r\nIf it's an emergency, call 911, I guess."
    # Sent to the account's own address (item 1).
    result = run(SIMPLE, simple(to="tjs@cs.example.edu"), **kw)
    assert_actions(result, [vacation("coyote@desert.example.org"), keep()])
    # Not personally addressed: no response, the message is kept.
    assert_actions(run(SIMPLE, simple(to="all@example.edu"), **kw), [keep()])


# rfc5230:4.8 -- vacation mingled with other rules.
MINGLED = """\
require "vacation";
if header :contains "from" "boss@example.edu" {
    redirect "pleeb@isp.example.org";
} else {
    vacation "Sorry, I'm away, I'll read your
message when I get around to it.";
}
"""


def test_4_8_mingled() -> None:
    boss = simple(from_="The Boss <boss@example.edu>")
    assert_actions(
        run(MINGLED, boss, sender="boss@example.edu"), [redirect("pleeb@isp.example.org")]
    )
    result = run(MINGLED, simple())
    assert_actions(result, [vacation("coyote@desert.example.org"), keep()])
    assert the_vacation(result).body == (
        "Sorry, I'm away, I'll read your\r\nmessage when I get around to it."
    )


def test_4_1_days() -> None:
    def seconds(arguments: str) -> float:
        script = f'require "vacation";\nvacation {arguments} "away";\n'
        return float(the_vacation(run(script, simple())).seconds)

    assert seconds("") == 7 * DAY  # the default
    assert seconds(":days 1") == DAY
    assert seconds(":days 0") == DAY  # below the minimum: the minimum
    assert seconds(":days 1000") == 90 * DAY  # above the site maximum: the maximum


def test_4_1_vacation_seconds() -> None:
    # RFC 6131 :seconds, clamped by the same site limits.
    script = 'require "vacation-seconds";\nvacation :seconds 3600 "away";\n'
    assert the_vacation(run(script, simple())).seconds == DAY
    # Both :days and :seconds: "MUST result in a Sieve processing error".
    both = 'require "vacation-seconds";\nvacation :days 1 :seconds 3600 "away";\n'
    refused_or_fails(both, simple())


# rfc6131:3 -- the two vacation-seconds examples.
MEETING = """\
require ["vacation-seconds"];
vacation :addresses ["tjs@example.edu", "ts4z@landru.example.edu"]
         :seconds 1800
         "I am in a meeting, and do not have access to email.";
"""

ACKNOWLEDGE = """\
require ["vacation-seconds"];
vacation :handle "auto-resp" :seconds 0
    "Your request has been received.  A service
     representative will contact you as soon as
     possible, usually within one business day.";
"""


def test_rfc6131_examples() -> None:
    # MEETING answers for its :addresses, ACKNOWLEDGE for the account only.
    msg = simple(to="ts4z@landru.example.edu")
    own = simple(to="tjs@example.edu")
    kw: dict[str, Any] = {"account": "tjs@example.edu", "recipient": "tjs@example.edu"}
    # The site's minimum (a day) applies to 1800 and to 0 (rfc6131:2).
    assert the_vacation(run(MEETING, msg, **kw)).seconds == DAY
    assert the_vacation(run(ACKNOWLEDGE, own, **kw)).seconds == DAY
    # A site without a minimum keeps the script's values.
    free = Limits(vacation_min_period=0.0)
    meeting = run(MEETING, msg, limits=free, **kw)
    assert_actions(meeting, [vacation("coyote@desert.example.org"), keep()])
    assert the_vacation(meeting).seconds == 1800
    assert_actions(run(ACKNOWLEDGE, msg, limits=free, **kw), [keep()])
    assert the_vacation(meeting).body == "I am in a meeting, and do not have access to email."
    acknowledge = the_vacation(run(ACKNOWLEDGE, own, limits=free, **kw))
    assert acknowledge.seconds == 0
    assert acknowledge.handle == "auto-resp"
    assert acknowledge.body.startswith("Your request has been received.  A service\r\n")


def test_4_3_subject_and_from() -> None:
    script = 'require "vacation";\nvacation :subject "Gone" :from "rr@acme.example.com" "away";\n'
    result = run(script, simple(subject="hi"))
    assert_actions(result, [vacation("coyote@desert.example.org", "Gone"), keep()])
    assert the_vacation(result).from_ == "rr@acme.example.com"


@pytest.mark.parametrize(
    ("sender", "extra"),
    [
        ("", []),  # the null sender
        ("MAILER-DAEMON@example.org", []),
        ("mailer-daemon@example.org", []),
        ("owner-coyotes@example.org", []),
        ("coyotes-request@example.org", []),
        ("coyote@desert.example.org", [("Auto-Submitted", "auto-replied")]),
        ("coyote@desert.example.org", [("Auto-Submitted", "auto-generated; owner=x")]),
        ("coyote@desert.example.org", [("List-Id", "Coyotes <coyotes.example.org>")]),
        ("coyote@desert.example.org", [("List-Unsubscribe", "<mailto:u@example.org>")]),
        ("coyote@desert.example.org", [("List-Post", "<mailto:p@example.org>")]),
        ("coyote@desert.example.org", [("Precedence", "bulk")]),
        ("coyote@desert.example.org", [("Precedence", "junk")]),
        ("coyote@desert.example.org", [("Precedence", "list")]),
    ],
)
def test_4_6_no_response_to_automated_or_list_mail(
    sender: str, extra: list[tuple[str, str]]
) -> None:
    script = 'require "vacation";\nvacation "away";\n'
    assert_actions(run(script, simple(extra=extra), sender=sender), [keep()])


@pytest.mark.parametrize(
    ("to", "extra"),
    [
        ("roadrunner@acme.example.com", [("Auto-Submitted", "no")]),
        ("roadrunner@acme.example.com", [("Precedence", "first-class")]),
        ("Road Runner <roadrunner@acme.example.com>, x@example.org", []),
        ("others@example.org", [("Cc", "roadrunner@acme.example.com")]),
        ("others@example.org", [("Bcc", "roadrunner@acme.example.com")]),
        ("others@example.org", [("Resent-To", "roadrunner@acme.example.com")]),
    ],
)
def test_4_5_response_when_personally_addressed(to: str, extra: list[tuple[str, str]]) -> None:
    script = 'require "vacation";\nvacation "away";\n'
    result = run(script, simple(to=to, extra=extra))
    assert_actions(result, [vacation("coyote@desert.example.org"), keep()])


def test_4_7_interaction() -> None:
    msg = simple()
    # Vacation does not affect the implicit keep, nor do other actions
    # make it an error.
    result = run('require "vacation";\nvacation "away";\ndiscard;\n', msg)
    assert_actions(result, [vacation("coyote@desert.example.org"), discard()])
    # Two vacation actions: the script MUST fail.
    twice = 'require "vacation";\nvacation "a";\nvacation :handle "x" "b";\n'
    assert_implicit_keep_after_error(run(twice, msg))
    # Vacation with reject is incompatible (compile or run time).
    refused_or_fails('require ["vacation", "reject"];\nvacation "a";\nreject "no";\n', msg)


def test_vacation_needs_require_and_a_reason() -> None:
    refuses('vacation "away";\n')
    refuses('require "vacation";\nvacation;\n')
    refuses('require "vacation";\nvacation :days "7" "away";\n')
    refuses('require "vacation";\nvacation :days 7 :days 8 "away";\n')


def test_examples_parse() -> None:
    for script in [TWO_RESPONSES, UNEXPANDED, HANDLE, MIME, SIMPLE, MINGLED, MEETING, ACKNOWLEDGE]:
        assert parse(script.replace("\n", "\r\n")).commands
        compile_ok(script)
