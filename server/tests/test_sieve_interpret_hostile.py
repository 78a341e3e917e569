"""The interpreter against hostile scripts and messages: the work is
bounded (steps count string work too), and nothing but a Result comes out."""

from __future__ import annotations

import random
import re

import pytest

from estafeta.sieve import Context, Envelope, Limits, Result, compile_script, run
from estafeta.sieve.actions import Discard, Keep
from estafeta.sieve.match import compile_glob, glob_cost

ACCOUNT = "me@example.org"


def go(script: str, message: bytes, limits: Limits | None = None) -> Result:
    ctx = Context(message, Envelope("a@example.com", ACCOUNT), ACCOUNT, addresses=(ACCOUNT,))
    compiled = compile_script(script)
    return run([compiled], ctx) if limits is None else run([compiled], ctx, limits)


def test_string_work_is_charged_to_the_step_budget() -> None:
    body = b"Subject: x\r\n\r\n" + b"a" * 1_000_000
    script = 'require "body";\nif body :raw :contains "b" { discard; }'
    assert go(script, body).actions == [Keep()]
    # The same test with a budget too small for a megabyte of searching.
    result = go(script, body, Limits(max_steps=100))
    assert result.actions == [Keep()] and "steps" in result.errors[0]
    # One step per test and command otherwise.
    assert go('if header :is "subject" "x" { discard; }', body, Limits(max_steps=4)).actions == [
        Discard()
    ]


@pytest.mark.timeout(60)
def test_matches_worst_cases_are_bounded() -> None:
    value = "a" * 60_000
    message = f"Subject: {value}\r\n\r\n".encode()
    patterns = [
        "*" + "a*" * 2000 + "b",  # many stars, no match at the end
        "*" + "?a" * 1000 + "b*",  # a long "?" segment tried everywhere
        "*" + "a?" * 500 + "*" + "?a" * 500 + "*b",
    ]
    for pattern in patterns:
        result = go(f'if header :matches "subject" "{pattern}" {{ discard; }}', message)
        # Either it finished within the budget (no match), or the budget
        # stopped it first: never a long search.
        assert result.actions == [Keep()]
        assert result.errors == [] or "steps" in result.errors[0]
    glob = compile_glob(b"*" + b"?a" * 1000 + b"b*", True)
    assert glob_cost(60_000, glob) > 10_000  # charged before it runs


def test_glob_agrees_with_a_backtracking_reference() -> None:
    rng = random.Random(5)

    def reference(pattern: bytes, text: bytes) -> list[bytes] | None:
        rx = b"".join(
            b"(.*?)" if c == 42 else b"(.)" if c == 63 else re.escape(bytes([c])) for c in pattern
        )
        m = re.fullmatch(rx, text, re.S)
        return None if m is None else [text, *m.groups()]

    for _ in range(20_000):
        pattern = bytes(rng.choice(b"ab*?") for _ in range(rng.randint(0, 8)))
        text = bytes(rng.choice(b"ab") for _ in range(rng.randint(0, 10)))
        assert compile_glob(pattern, False).match(text, False) == reference(pattern, text)


def test_expansion_cannot_build_megabytes() -> None:
    script = 'require "variables";\nset "a" "' + "x" * 4000 + '";\n'
    script += ('set "b" "' + "${a}" * 200 + '";\n') * 50
    script += 'if string :matches "${b}${b}${b}" "*y*" { discard; }'
    result = go(script, b"Subject: x\r\n\r\n")
    assert result.actions == [Keep()] and result.errors == []


def test_many_headers_and_addresses() -> None:
    header = b"".join(b"To: a%d@example.com, b@x.example, c@y.example\r\n" % i for i in range(5000))
    message = header + b"Subject: x\r\n\r\nbody\r\n"
    script = 'require "editheader";\nif address :domain :is "to" "nowhere" { discard; }\n'
    script += 'deleteheader :contains "to" "@";\nif exists "to" { discard; }'
    result = go(script, message)
    assert result.actions == [Keep()] and result.errors == []
    assert result.message is not None and b"To:" not in result.message


def test_rfc2047_and_odd_header_bytes() -> None:
    words = " ".join(["=?UTF-8?B?" + "QUFB" * 20 + "?="] * 2000)
    odd = [
        f"Subject: {words}\r\n\r\n".encode(),
        b"\x00\x01\x02 no header at all",
        b"Subject: a\rb\r\nFrom: <@>\r\n\r\n",
        b"Subject: =?x-unknown?q?abc?= =?utf-8?b?////?= =?hex?q?41?=\r\n\r\n",
        b": no name\r\nX:\r\n\tcontinued\r\n\r\n",
        b"",
    ]
    script = (
        'require ["body", "envelope", "date", "variables"];\n'
        'if anyof (header :matches "subject" "*A*", address :all :contains "from" "@",'
        ' body :text :contains "x", date :is "date" "year" "2000",'
        ' exists "x") { set "a" "${1}"; }'
    )
    for message in odd:
        result = go(script, message)
        assert result.errors == [], (message[:40], result.errors)


def test_random_messages_never_raise() -> None:
    rng = random.Random(7)
    script = (
        'require ["body", "envelope", "date", "index", "relational", "regex", "variables",'
        ' "editheader", "subaddress", "imap4flags", "fileinto", "duplicate"];\n'
        'if header :regex "subject" "^(x|y)+$" { addflag "a"; }\n'
        'if address :detail :matches ["from", "to", "cc"] "*" { set "d" "${1}"; }\n'
        'if body :content "text" :contains "x" { addheader "X-B" "${d}"; }\n'
        'if date :index 1 :last :value "gt" "received" "date" "2000" { keep; }\n'
        'deleteheader :index 2 "received";\n'
        'if duplicate :header "message-id" { discard; }\n'
        'if header :count "gt" "received" "3" { fileinto "Many"; }\n'
    )
    compiled = compile_script(script)
    pieces = [
        b"Subject: ",
        b"From: ",
        b"To: ",
        b"Received: x; ",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"\r\n",
        b"\r\n\t",
        b"=?utf-8?q?",
        b"?=",
        b"<",
        b">",
        b"@",
        b",",
        b":",
        b";",
        b'"',
        b"(",
        b"\xff",
        b"\x00",
        b"Mon, 31 Feb 2020 25:61:61 +9999",
        b"Content-Transfer-Encoding: base64\r\n",
    ]
    for _ in range(300):
        message = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))
        ctx = Context(
            message, Envelope("a+b@example.com", ACCOUNT), ACCOUNT, seen=lambda k, s: False
        )
        result = run([compiled], ctx)
        assert result.errors == [], (message, result.errors)
        assert result.actions


def test_random_scripts_only_sieve_errors() -> None:
    from estafeta.sieve import SieveError

    rng = random.Random(11)
    words = [
        "if", "elsif", "else", "require", "header", "address", "anyof", "not", "true",
        ":is", ":matches", ":index", ":last", ":comparator", '"i;octet"', '"x"', '"${1}"',
        "[", "]", "(", ")", "{", "}", ";", ",", "1", "5K", "set", "fileinto", '"variables"',
        "vacation", ":days", "include", "global", "deleteheader", "body", ":content",
    ]  # fmt: skip
    ctx = Context(b"Subject: x\r\n\r\n", Envelope("a@example.com", ACCOUNT), ACCOUNT)
    for _ in range(2000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        try:
            compiled = compile_script(text)
        except SieveError:
            continue
        assert run([compiled], ctx).actions


@pytest.mark.timeout(60)
def test_header_edits_on_a_huge_header_are_charged() -> None:
    message = b"".join(b"X-F%d: v\r\n" % i for i in range(20_000)) + b"\r\nbody\r\n"
    script = (
        'require "editheader";\n'
        + (
            'addheader "X-A" "v";\nif header :is "x-a" "nothing" { discard; }\n'
            'deleteheader :index 1 "x-a";\n'
        )
        * 1400
    )
    result = go(script, message)
    assert result.actions == [Keep()]
    assert "steps" in result.errors[0]  # 20,000 fields a pass: the budget ends it
