"""The Sieve interpreter, base language (rfc5228): actions, implicit keep,
errors, and how header, address, envelope and size tests read a message."""

from __future__ import annotations

from typing import Any

from estafeta.sieve import Context, Envelope, Limits, Result, compile_script, run
from estafeta.sieve.actions import (
    Discard,
    EReject,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Vacation,
)

ACCOUNT = "me@example.org"


def msg(*headers: str, body: str = "Hello.\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


PLAIN = msg(
    "From: Alice <alice@example.com>",
    "To: me@example.org",
    "Subject: lunch",
    "Message-ID: <1@example.com>",
)


def go(
    script: str,
    message: bytes = PLAIN,
    *,
    limits: Limits | None = None,
    sender: str = "alice@example.com",
    recipient: str = ACCOUNT,
    auth: str = "",
    **kw: Any,
) -> Result:
    ctx = Context(
        message=message,
        envelope=Envelope(sender, recipient, auth),
        account=ACCOUNT,
        addresses=(ACCOUNT,),
        **kw,
    )
    compiled = compile_script(script)
    return run([compiled], ctx) if limits is None else run([compiled], ctx, limits)


def actions(script: str, message: bytes = PLAIN, **kw: Any) -> list[Any]:
    result = go(script, message, **kw)
    assert result.errors == [], result.errors
    return result.actions


def failed(script: str, message: bytes = PLAIN, **kw: Any) -> str:
    """The run ended in the implicit keep with one error; returns it."""
    result = go(script, message, **kw)
    assert result.actions == [Keep()]
    assert result.message is None and result.duplicate_marks == []
    assert len(result.errors) == 1
    return result.errors[0]


def test_implicit_keep_and_its_cancellation() -> None:
    assert actions("") == [Keep()]
    assert actions("if false { discard; }") == [Keep()]
    assert actions("discard;") == [Discard()]
    assert actions('require "fileinto"; fileinto "A";') == [FileInto("A")]
    assert actions('redirect "b@example.net";') == [Redirect("b@example.net")]
    # rfc5228:4.4: fileinto + discard is fileinto.
    assert actions('require "fileinto"; discard; fileinto "A";') == [FileInto("A")]
    # rfc3894: :copy leaves the implicit keep.
    assert actions('require ["copy", "fileinto"]; fileinto :copy "A";') == [
        FileInto("A", copy=True),
        Keep(),
    ]
    assert actions('require "copy"; redirect :copy "b@example.net";') == [
        Redirect("b@example.net", copy=True),
        Keep(),
    ]


def test_one_delivery_per_mailbox() -> None:
    # rfc5228:2.10.3: never the same mailbox twice; keep == fileinto "INBOX".
    assert actions('require "fileinto"; keep; fileinto "INBOX"; keep;') == [Keep()]
    assert actions('require "fileinto"; fileinto "inbox"; keep;') == [FileInto("INBOX")]
    assert actions('require "fileinto"; fileinto "A"; fileinto "B"; fileinto "A";') == [
        FileInto("A"),
        FileInto("B"),
    ]
    # rfc5232:3: the last flags win.
    script = 'require ["fileinto", "imap4flags"]; fileinto :flags "a" "X"; fileinto :flags "b" "X";'
    assert actions(script) == [FileInto("X", ("b",))]
    assert actions('redirect "b@Example.NET"; redirect "b@example.net";') == [
        Redirect("b@Example.NET")
    ]
    # NFC: two spellings of one name are one mailbox.
    script = 'require "fileinto"; fileinto "Caf\u00e9"; fileinto "Cafe\u0301";'
    assert actions(script) == [FileInto("Caf\u00e9")]


def test_stop_ends_everything() -> None:
    assert actions('require "fileinto"; fileinto "A"; stop; fileinto "B";') == [FileInto("A")]
    assert actions("stop; discard;") == [Keep()]
    ctx = Context(PLAIN, Envelope("a@b.example", ACCOUNT), ACCOUNT)
    first = compile_script("stop;")
    second = compile_script("discard;")
    # stop in an earlier script (a global one) ends the run.
    assert run([first, second], ctx).actions == [Keep()]
    assert run([second, compile_script("keep;")], ctx).actions == [Keep()]


def test_runtime_errors_end_in_the_implicit_keep() -> None:
    script = 'require ["fileinto", "variables"]; set "x" "nobody"; fileinto "A"; redirect "${x}";'
    assert failed(script) == "script:1:68: redirect: 'nobody' is not an address"
    assert "reject" in failed('require ["reject", "fileinto"]; fileinto "A"; reject "no";')
    assert "reject" in failed('require ["reject", "fileinto"]; reject "no"; fileinto "A";')
    assert "only one" in failed('require "reject"; reject "no"; reject "no";')
    assert "other actions" in failed('require ["reject", "ereject"]; keep; ereject "x";')
    assert "vacation" in failed('require ["reject", "vacation"]; reject "x"; vacation "v";')


def test_reject_and_ereject() -> None:
    assert actions('require "reject"; reject "go away";') == [Reject("go away")]
    assert actions('require "ereject"; discard; ereject "spam";') == [EReject("spam")]


def test_limits_on_actions_and_redirects() -> None:
    many = "".join(f'redirect "r{i}@example.net";' for i in range(5))
    assert "redirects" in failed(many)
    assert len(actions(many, limits=Limits(max_redirects=5))) == 5
    files = 'require "fileinto";' + "".join(f'fileinto "F{i}";' for i in range(33))
    assert "more than 32 actions" in failed(files)
    # Repeating one action is never an error (rfc5228:2.10.3).
    assert actions("keep;" * 100) == [Keep()]


def test_header_test_reads_values_as_rfc5228_says() -> None:
    m = msg(
        "Subject: =?UTF-8?B?w4ljb2xl?= and\r\n  =?ISO-8859-1?Q?caf=E9?=  ",
        "X-Caffeine: C8H10N4O2",
        "x-caffeine:  second  ",
        "Raw: caf\xe9",
    )
    # Unfolding removes the line break only (rfc5322:2.2.3): two blanks remain.
    assert actions('if header :is "subject" "\u00c9cole and  caf\u00e9" { discard; }', m) == [
        Discard()
    ]
    # Names are case-insensitive, blanks around values ignored, every field counts.
    assert actions('if header :is "X-CAFFEINE" "second" { discard; }', m) == [Discard()]
    # rfc5228:5.7: an existing header contains "", but only :is "" an empty one.
    assert actions('if header :is "x-caffeine" "" { discard; }', m) == [Keep()]
    assert actions('if header :contains "x-caffeine" "" { discard; }', m) == [Discard()]
    assert actions('if header :contains "x-missing" "" { discard; }', m) == [Keep()]
    # Invalid header names match nothing and are no error (rfc5228:2.4.2.2).
    assert actions('if header :contains "From:" "" { discard; }', m) == [Keep()]
    assert actions('if exists ["x-caffeine", "subject"] { discard; }', m) == [Discard()]
    assert actions('if exists ["x-caffeine", "nope"] { discard; }', m) == [Keep()]
    # Raw 8-bit header text is read as UTF-8 (Latin-1 when it is not).
    latin = b"Raw: caf\xe9\r\n\r\n"
    assert actions('if header :is "raw" "caf\u00e9" { discard; }', latin) == [Discard()]


def test_comparators() -> None:
    m = msg("Subject: MAKE MONEY FAST")
    assert actions('if header :contains "subject" "money" { discard; }', m) == [Discard()]
    octet = 'if header :contains :comparator "i;octet" "subject" "money" { discard; }'
    assert actions(octet, m) == [Keep()]
    # ascii-casemap folds ASCII letters only.
    u = msg("Subject: \u00e9T\u00c9")
    assert actions('if header :is "subject" "\u00e9t\u00c9" { discard; }', u) == [Discard()]
    assert actions('if header :is "subject" "\u00c9T\u00c9" { discard; }', u) == [Keep()]


def test_matches_wildcards_and_escapes() -> None:
    m = msg("Subject: what? *now*")
    assert actions('if header :matches "subject" "what\\\\? \\\\*now\\\\*" { discard; }', m) == [
        Discard()
    ]
    assert actions('if header :matches "subject" "what\\\\? \\\\*no\\\\*" { discard; }', m) == [
        Keep()
    ]
    assert actions('if header :matches "subject" "W*?" { discard; }', m) == [Discard()]
    assert actions('if header :matches "subject" "*" { discard; }', msg("Subject:")) == [Discard()]
    # rfc5228:2.7.1: "?" is one octet with these comparators.
    e = msg("Subject: \u00e9")
    assert actions('if header :matches "subject" "??" { discard; }', e) == [Discard()]
    assert actions('if header :matches "subject" "?" { discard; }', e) == [Keep()]


def test_address_test() -> None:
    m = msg(
        'From: "Tim" <Tim@Example.COM> (the boss)',
        "To: undisclosed-recipients:;",
        "Cc: friends: a@x.example, b+tag@y.example;, c@z.example",
        "Bcc: broken, <>, @route:d@w.example",
        "Subject: x@subject.example",
    )
    assert actions('if address :is "from" "tim@example.com" { discard; }', m) == [Discard()]
    assert actions('if address :localpart :is "from" "Tim" { discard; }', m) == [Discard()]
    script = 'if address :domain :is "cc" ["y.example", "z.example"] { discard; }'
    assert actions(script, m) == [Discard()]
    # Group names and display names are never matched (rfc5228:5.1).
    assert actions('if address :contains "cc" "friends" { discard; }', m) == [Keep()]
    assert actions('if address :contains "from" "boss" { discard; }', m) == [Keep()]
    # Only address fields (rfc5228:5.1).
    assert actions('if address :contains "subject" "x" { discard; }', m) == [Keep()]
    # An address without a domain: :all has what there is, :localpart nothing.
    assert actions('if address :is "bcc" "broken" { discard; }', m) == [Discard()]
    assert actions('if address :localpart :is "bcc" "broken" { discard; }', m) == [Keep()]
    assert actions('if address :is "bcc" "d@w.example" { discard; }', m) == [Discard()]
    sub = 'require "subaddress";'
    assert actions(sub + 'if address :detail "cc" "tag" { discard; }', m) == [Discard()]
    assert actions(sub + 'if address :user "cc" "b" { discard; }', m) == [Discard()]
    assert actions(sub + 'if address :detail "cc" "" { discard; }', m) == [Keep()]
    # Garbage never raises (what it reads as addresses is the lenient parser's guess).
    junk = msg('From: <<<@@@>>> ,,, "unclosed (comment', "To: ;;;:::", "Cc: a@b@c@")
    for part in (":all", ":localpart", ":domain"):
        script = f'if address {part} :contains ["from", "to", "cc"] "zz" {{ discard; }}'
        assert actions(script, junk) == [Keep()]


def test_envelope_test() -> None:
    env = 'require ["envelope", "subaddress"];'
    assert actions(env + 'if envelope :is "from" "alice@example.com" { discard; }') == [Discard()]
    assert actions(
        env + 'if envelope :detail "to" "lists" { discard; }', recipient="me+lists@example.org"
    ) == [Discard()]
    assert actions(
        env + 'if envelope :user "to" "me" { discard; }', recipient="me+lists@example.org"
    ) == [Discard()]
    # rfc5228:5.4: the null sender is "" whatever the address part.
    null = env + 'if envelope :domain :is "from" "" { discard; }'
    assert actions(null, sender="") == [Discard()]
    assert actions(null) == [Keep()]
    # Source routes are dropped.
    routed = env + 'if envelope :all :is "from" "x@y.example" { discard; }'
    assert actions(routed, sender="@a.example,@b.example:x@y.example") == [Discard()]
    auth = env + 'if envelope :is "auth" "me@example.org" { discard; }'
    assert actions(auth, auth="me@example.org") == [Discard()]
    assert actions(env + 'if envelope :contains "auth" "" { discard; }') == [Keep()]
    rel = 'require ["envelope", "relational", "comparator-i;ascii-numeric"];'
    count = rel + 'if envelope :count "eq" :comparator "i;ascii-numeric" "from" "0" { discard; }'
    assert actions(count, sender="") == [Discard()]
    assert actions(count) == [Keep()]


def test_size_and_boolean_tests() -> None:
    size = len(PLAIN)
    assert actions(f"if size :over {size - 1} {{ discard; }}") == [Discard()]
    assert actions(f"if size :over {size} {{ discard; }}") == [Keep()]
    assert actions(f"if size :under {size} {{ discard; }}") == [Keep()]
    assert actions(f"if size :under {size + 1} {{ discard; }}") == [Discard()]
    assert actions("if size :over 1K { discard; }") == [Keep()]
    assert actions("if anyof (false, true) { discard; }") == [Discard()]
    assert actions("if allof (true, false) { discard; }") == [Keep()]
    assert actions("if not allof (true, false) { discard; }") == [Discard()]
    chain = 'require "fileinto"; if false { fileinto "A"; } elsif true { fileinto "B"; }'
    assert actions(chain + ' elsif true { fileinto "C"; } else { fileinto "D"; }') == [
        FileInto("B")
    ]
    assert actions('require "fileinto"; if false {} else { fileinto "D"; }') == [FileInto("D")]


def test_json_forms() -> None:
    assert Keep(("\\Seen",)).to_json() == {
        "action": "keep",
        "mailbox": "INBOX",
        "flags": ["\\Seen"],
    }
    assert FileInto("Lists/dev", ("\\Seen",)).to_json() == {
        "action": "fileinto",
        "mailbox": "Lists/dev",
        "flags": ["\\Seen"],
        "copy": False,
    }
    assert FileInto("A", create=True).to_json()["create"] is True
    assert Redirect("a@b").to_json() == {"action": "redirect", "address": "a@b", "copy": False}
    assert Reject("r").to_json() == {"action": "reject", "reason": "r"}
    assert EReject("r").to_json() == {"action": "ereject", "reason": "r"}
    assert Discard().to_json() == {"action": "discard"}
    assert Vacation("s@x", "subj", "body").to_json() == {
        "action": "vacation",
        "to": "s@x",
        "subject": "subj",
    }


def test_errors_name_the_script_and_position() -> None:
    ctx = Context(PLAIN, Envelope("a@b.example", ACCOUNT), ACCOUNT)
    bad = compile_script(
        'require "variables";\nset "a" "nobody";\n  redirect "${a}";', name="personal:rules"
    )
    result = run([compile_script("keep;"), bad], ctx)
    assert result.actions == [Keep()]
    assert result.errors == ["personal:rules:3:3: redirect: 'nobody' is not an address"]


def test_return_ends_one_top_level_script() -> None:
    ctx = Context(PLAIN, Envelope("a@b.example", ACCOUNT), ACCOUNT)
    before = compile_script('require ["include", "fileinto"];\nfileinto "G";\nreturn;\ndiscard;')
    user = compile_script('require "fileinto";\nfileinto "U";')
    assert run([before, user], ctx).actions == [FileInto("G"), FileInto("U")]
    # Alone, return is stop (rfc6609:3.3).
    assert run([before], ctx).actions == [FileInto("G")]


def test_limits_from_config() -> None:
    from estafeta.config import SieveConfig

    cfg = SieveConfig(max_actions=5, max_redirects=1, max_steps=77, regex_timeout=0.5)
    limits = Limits.from_config(cfg)
    assert (limits.max_actions, limits.max_redirects, limits.max_steps) == (5, 1, 77)
    assert limits.regex_timeout == 0.5
    assert limits.vacation_min_period == cfg.vacation_min_period
    assert limits.vacation_max_period == cfg.vacation_max_period
