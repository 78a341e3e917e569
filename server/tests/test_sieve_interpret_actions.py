"""The Sieve interpreter, extensions with effects beyond a match: duplicate
(rfc7352), editheader (rfc5293), include (rfc6609), vacation (rfc5230,
rfc6131)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from _sieve_unit import ACCOUNT, PLAIN, error_of, go, msg

from estafeta.sieve import Compiled, Envelope, Limits, Result, compile_script
from estafeta.sieve.actions import Discard, FileInto, Keep, Vacation

# -- duplicate (rfc7352) ---------------------------------------------------


class Seen:
    def __init__(self, *keys: str) -> None:
        self.keys = set(keys)
        self.calls: list[tuple[str, float]] = []

    def __call__(self, key: str, seconds: float) -> bool:
        self.calls.append((key, seconds))
        return key in self.keys


def test_duplicate_marks_and_answers() -> None:
    dup = 'require ["duplicate", "variables"];\n'
    seen = Seen()
    result = go(dup + "if duplicate { discard; }", seen=seen)
    assert result.actions == [Keep()]
    assert result.duplicate_marks == [("0::<1@example.com>", 7 * 86400.0)]
    # The same unique id by header or by value is one entry.
    seen = Seen("0::<1@example.com>")
    script = dup + 'if header :matches "message-id" "*" { if duplicate :uniqueid "${0}" {'
    result = go(script + " discard; } }", seen=seen)
    assert result.actions == [Discard()]
    assert result.duplicate_marks == []  # no :last: the first record's time counts
    result = go(dup + "if duplicate :last { discard; }", seen=seen)
    assert result.duplicate_marks == [("0::<1@example.com>", 7 * 86400.0)]
    # :handle separates; :seconds is capped; :seconds 0 is false.
    seen = Seen()
    script = dup + 'if duplicate :handle "h" :header "subject" :seconds 999999999 { keep; }'
    result = go(script, seen=seen)
    key = "1:h:[acme-users] [fwd] version 1.0 is out"
    assert result.duplicate_marks == [(key, 90 * 86400.0)]
    result = go(dup + "if duplicate :seconds 0 { discard; }", seen=seen)
    assert result.actions == [Keep()] and result.duplicate_marks == []
    # Missing or invalid header: false, nothing recorded.
    for header in ("x-missing", "bad name"):
        result = go(dup + f'if duplicate :header "{header}" {{ discard; }}', seen=seen)
        assert result.actions == [Keep()] and result.duplicate_marks == []


def test_duplicate_same_answer_within_a_run_and_no_marks_after_errors() -> None:
    dup = 'require ["duplicate", "fileinto"];\n'
    seen = Seen()
    script = dup + 'if duplicate { fileinto "A"; }\nif not duplicate { fileinto "B"; }'
    result = go(script, seen=seen)
    assert result.actions == [FileInto("B")]
    assert len(seen.calls) == 1
    script = 'require ["duplicate", "variables"];\nif duplicate { discard; }\nredirect "${x}";'
    result = go(script, seen=Seen())
    assert result.actions == [Keep()] and result.duplicate_marks == []

    def failing(key: str, seconds: float) -> bool:
        raise RuntimeError("database locked")

    assert "database locked" in error_of(dup + "if duplicate { discard; }", seen=failing)


# -- editheader (rfc5293) --------------------------------------------------


def edited(result: Result) -> list[str]:
    assert result.message is not None
    return result.message.split(b"\r\n\r\n", 1)[0].decode("utf-8").split("\r\n")


def test_addheader_and_later_tests_see_it() -> None:
    eh = 'require ["editheader", "fileinto"];\n'
    result = go(eh + 'addheader "X-Hello" "World";\nif header :is "x-hello" "World" { discard; }')
    assert result.actions == [Discard()]
    assert edited(result)[0] == "X-Hello: World"
    result = go(eh + 'addheader :last "X-Last" "v";')
    assert edited(result)[-1] == "X-Last: v"
    # Non-ASCII is encoded; line breaks cannot inject fields.
    result = go(eh + 'addheader "X-U" "caf\u00e9\r\nBcc: evil@example.net";')
    lines = edited(result)
    assert lines[0].startswith("X-U: =?UTF-8?B?")
    assert not any(line.lower().startswith("bcc") for line in lines)
    script = eh + 'addheader "X-U" "caf\u00e9 and more";\nif header :is "x-u" "caf\u00e9 and more"'
    assert go(script + " { discard; }").actions == [Discard()]
    long = "word " * 100
    result = go(eh + f'addheader "X-Long" "{long}";')
    assert all(len(line) <= 78 for line in edited(result))
    # A message edited back to what it was is not "edited".
    result = go(eh + 'addheader "X-Hello" "World";\ndeleteheader :index 1 "X-Hello";')
    assert result.message is None


def test_deleteheader_and_protected_fields() -> None:
    eh = 'require "editheader";\n'
    m = msg("Received: one", "X-Hello: a", "Auto-Submitted: no", "X-Hello: b", "X-Hello: c")
    result = go(eh + 'deleteheader :index 1 "X-Hello";\ndeleteheader :index 2 "X-Hello";', m)
    assert [line for line in edited(result) if line.startswith("X-Hello")] == ["X-Hello: b"]
    result = go(eh + 'deleteheader :matches "x-hello" ["a", "c*"];', m)
    assert [line for line in edited(result) if line.startswith("X-Hello")] == ["X-Hello: b"]
    result = go(eh + 'deleteheader :index 1 :last "x-hello";', m)
    assert [line for line in edited(result) if line.startswith("X-Hello")] == [
        "X-Hello: a",
        "X-Hello: b",
    ]
    # rfc5293:6: Received and Auto-Submitted are never deleted nor added: silently.
    script = eh + 'deleteheader "received"; deleteheader "AUTO-SUBMITTED";'
    script += 'addheader "Received" "forged";'
    result = go(script, m)
    assert result.errors == [] and result.message is None
    # Subject must be editable.
    result = go(eh + 'deleteheader "subject"; addheader "Subject" "new";')
    assert "Subject: new" in edited(result)


def test_editheader_limits_and_errors() -> None:
    eh = 'require ["editheader", "variables"];\n'
    script = eh + 'set "n" "Bad Name"; addheader "${n}" "v";'
    assert "not a header field name" in error_of(script)
    value = "x" * 4000
    script = eh + "".join(f'addheader "X-{i}" "{value}";' for i in range(20))
    assert "octets added" in error_of(script)
    # An error means the original message (rfc5293:7).
    result = go(eh + 'addheader "X-A" "b"; set "a" "x"; redirect "${a}";')
    assert result.message is None and result.actions == [Keep()]


# -- include (rfc6609) -----------------------------------------------------


def loader(scripts: dict[tuple[str, str], str], loads: list[tuple[str, str]] | None = None) -> Any:
    def load(location: str, name: str) -> Compiled | None:
        if loads is not None:
            loads.append((location, name))
        text = scripts.get((location, name))
        return None if text is None else compile_script(text, name=f"{location}:{name}")

    return load


def test_include_runs_scripts_in_place() -> None:
    scripts = {
        ("personal", "lists"): 'require "fileinto";\nfileinto "Lists";',
        ("global", "spam"): 'require ["fileinto", "include"];\nif header :contains "subject" "$$" {'
        ' fileinto "Junk"; stop; }\nreturn;\nfileinto "Never";',
    }
    main = 'require ["include", "fileinto"];\ninclude :global "spam";\ninclude "lists";\n'
    result = go(main + 'fileinto "After";', load_include=loader(scripts))
    assert result.actions == [FileInto("Lists"), FileInto("After")]
    spam = msg("Subject: $$ money")
    result = go(main + 'fileinto "After";', spam, load_include=loader(scripts))
    assert result.actions == [FileInto("Junk")]  # stop ends everything


def test_include_errors_once_optional() -> None:
    inc = 'require "include";\n'
    assert "no personal script 'x'" in error_of(inc + 'include "x";', load_include=loader({}))
    assert go(inc + 'include :optional "x";', load_include=loader({})).actions == [Keep()]
    loads: list[tuple[str, str]] = []
    scripts = {("personal", "a"): 'require "include";\ninclude :once "b";\ninclude :once "b";'}
    scripts[("personal", "b")] = "keep;"
    result = go(inc + 'include "a";\ninclude :once "a";', load_include=loader(scripts, loads))
    assert result.actions == [Keep()]
    assert loads == [("personal", "a"), ("personal", "b")]
    # Recursion is a runtime error; with :once it is skipped.
    cyc = {("personal", "a"): 'require "include";\ninclude "b";'}
    cyc[("personal", "b")] = 'require "include";\ninclude "a";'
    error = error_of(inc + 'include "a";', load_include=loader(cyc))
    assert error.startswith("personal:b:2:1: ") and "recursive" in error
    cyc[("personal", "b")] = 'require "include";\ninclude :once "a";\ndiscard;'
    assert go(inc + 'include "a";', load_include=loader(cyc)).actions == [Discard()]
    # Depth and count limits.
    deep = {("personal", f"s{i}"): f'require "include";\ninclude "s{i + 1}";' for i in range(20)}
    assert "deeper" in error_of(inc + 'include "s0";', load_include=loader(deep))
    wide = {("personal", "w"): "keep;"}
    script = inc + 'include "w";\n' * 40
    assert "more than 32 includes" in error_of(script, load_include=loader(wide))


def test_global_variables_across_includes() -> None:
    both = 'require ["include", "variables", "fileinto"];\n'
    sub = both + 'global "box";\nset "box" "from-sub";\nset "local" "hidden";'
    scripts = {("personal", "sub"): sub}
    script = both + 'global "box";\ninclude "sub";\nfileinto "${box}${local}";'
    assert go(script, load_include=loader(scripts)).actions == [FileInto("from-sub")]
    script = both + 'include "sub";\nfileinto "${global.box}";'
    assert go(script, load_include=loader(scripts)).actions == [FileInto("from-sub")]
    script = both + 'set "box" "x";\nglobal "box";'
    assert "already set" in error_of(script)


# -- vacation (rfc5230, rfc6131) -------------------------------------------


def vacation_of(script: str, message: bytes = PLAIN, **kw: Any) -> Vacation | None:
    result = go('require ["vacation", "vacation-seconds"];\n' + script, message, **kw)
    assert result.errors == [], result.errors
    replies = [a for a in result.actions if isinstance(a, Vacation)]
    assert len(replies) <= 1
    return replies[0] if replies else None


def test_vacation_reply_fields() -> None:
    reply = vacation_of('vacation :days 3 "Away.";')
    assert reply is not None
    assert reply.to == "alice@example.com"
    assert reply.subject == "Auto: [acme-users] [fwd] version 1.0 is out"
    assert reply.body == "Away." and reply.seconds == 3 * 86400.0
    assert reply.handle.startswith("auto-") and not reply.mime and reply.from_ == ""
    # Same arguments, same handle; another reason, another handle (rfc5230:4.2).
    again = vacation_of('vacation :days 3 "Away.";')
    other = vacation_of('vacation :days 3 "Back soon.";')
    assert again is not None and other is not None
    assert again.handle == reply.handle != other.handle
    named = vacation_of(
        'vacation :handle "h" :subject "Out\r\nBcc: x" :from "Me <me@example.org>" "r";'
    )
    assert named is not None
    assert (named.handle, named.subject, named.from_) == ("h", "Out Bcc: x", "Me <me@example.org>")
    no_subject = msg("From: alice@example.com", "To: me@example.org")
    plain = vacation_of('vacation "r";', no_subject)
    assert plain is not None and plain.subject == "Automated reply"


def test_vacation_periods_are_clamped() -> None:
    limits = Limits(vacation_min_period=3600.0, vacation_max_period=10 * 86400.0)
    cases = {
        'vacation "r";': 7 * 86400.0,
        'vacation :days 0 "r";': 3600.0,
        'vacation :days 99 "r";': 10 * 86400.0,
        'vacation :seconds 0 "r";': 3600.0,
        'vacation :seconds 7200 "r";': 7200.0,
    }
    for script, seconds in cases.items():
        reply = vacation_of(script, limits=limits)
        assert reply is not None and reply.seconds == seconds, script


def test_vacation_do_not_reply_rules() -> None:
    base = ["From: x@example.com", "To: me@example.org", "Subject: s"]
    cases: list[tuple[bytes, str]] = [
        (msg(*base), ""),  # null sender
        (msg(*base), "MAILER-DAEMON@example.com"),
        (msg(*base), "owner-list@example.com"),
        (msg(*base), "list-request@example.com"),
        (msg(*base, "Auto-Submitted: auto-replied"), "x@example.com"),
        (msg(*base, "List-Id: <l.example.com>"), "x@example.com"),
        (msg(*base, "List-Unsubscribe: <mailto:u@example.com>"), "x@example.com"),
        (msg(*base, "Precedence: bulk"), "x@example.com"),
        (msg(*base, "Precedence: JUNK"), "x@example.com"),
        (msg("From: x@example.com", "To: other@example.net"), "x@example.com"),
        (msg(*base), "me@example.org"),  # our own address
    ]
    for message, sender in cases:
        env = Envelope(sender, ACCOUNT)
        assert vacation_of('vacation "r";', message, envelope=env) is None, (message, sender)
    env = Envelope("x@example.com", ACCOUNT)
    ok = [
        msg(*base, "Auto-Submitted: no (a comment)"),
        msg("From: x@example.com", "Cc: Me <ME+tag@Example.ORG>"),
        msg("From: x@example.com", "Resent-To: me@example.org"),
    ]
    for message in ok:
        assert vacation_of('vacation "r";', message, envelope=env) is not None, message
    # :addresses are the user's too (rfc5230:4.5).
    other = msg("From: x@example.com", "To: alias@example.net")
    script = 'vacation :addresses ["alias@example.net"] "r";'
    assert vacation_of(script, other, envelope=env) is not None
    # The reply rules see the header as edited (rfc5293:7).
    script = 'require "editheader";\naddheader "Precedence" "list";\nvacation "r";'
    assert vacation_of(script, msg(*base), envelope=env) is None


def test_vacation_once_and_mime() -> None:
    v = 'require "vacation";\n'
    assert "only once" in error_of(v + 'vacation "a";\nvacation "b";')
    reply = vacation_of('vacation :mime "Content-Type: text/plain\r\n\r\nHi \u00e9";')
    assert reply is not None and reply.mime
    assert "MIME header" in error_of(v + 'vacation :mime "Subject: \u00e9\r\n\r\nx";')


def test_vacation_with_other_actions() -> None:
    script = 'require ["vacation", "fileinto"];\nfileinto "A";\nvacation "r";\ndiscard;'
    result = go(script)
    assert [type(a) for a in result.actions] == [FileInto, Vacation]
    result = go('require "vacation";\ndiscard;\nvacation "r";')
    assert [type(a) for a in result.actions] == [Vacation, Discard]
    assert go('require "vacation";\nvacation "r";', now=datetime.now(UTC)).actions[-1] == Keep()
