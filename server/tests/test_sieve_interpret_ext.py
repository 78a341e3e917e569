"""The Sieve interpreter, extensions that test and set: variables,
imap4flags, relational, regex, body, date/index, mailbox, environment
(duplicate, editheader, include and vacation: test_sieve_interpret_actions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from _sieve_unit import actions, error_of, filed, msg

from estafeta.sieve import Limits, compile_script
from estafeta.sieve.actions import Discard, FileInto, Keep

# -- variables (rfc5229) ---------------------------------------------------


def test_match_variables_are_non_greedy() -> None:
    script = 'if header :matches "Subject" "[*] *" { fileinto "${1}|${2}|${0}"; }'
    assert filed(script) == (
        "acme-users|[fwd] version 1.0 is out|[acme-users] [fwd] version 1.0 is out"
    )
    m = msg("To: coyote@ACME.Example.COM")
    script = 'if address :matches "To" "coyote@**.com" { fileinto "${0}|${1}|${2}"; }'
    assert filed(script, m) == "coyote@ACME.Example.COM||ACME.Example"
    script = 'if header :matches "Subject" "?acme*" { fileinto "${1}-${2}-${3}"; }'
    assert filed(script) == "[--users] [fwd] version 1.0 is out-"


def test_match_variables_kept_after_failure_and_short_circuit() -> None:
    script = (
        'if header :matches "Subject" "[*]*" { set "a" "${1}"; }\n'
        'if header :matches "Subject" "nomatch*" { set "a" "x"; }\n'
        'if anyof (true, header :matches "From" "*") { fileinto "${1}"; }'
    )
    assert filed(script) == "acme-users"


def test_set_modifiers_and_expansion() -> None:
    cases = {
        'set "b" "${a}";': "juMBlEd lETteRS",
        'set :length "b" "${a}";': "15",
        'set :lower "b" "${a}";': "jumbled letters",
        'set :upperfirst "b" "${a}";': "JuMBlEd lETteRS",
        'set :upperfirst :lower "b" "${a}";': "Jumbled letters",
        'set :lowerfirst :upper "b" "${a}";': "jUMBLED LETTERS",
        'set :quotewildcard "b" "Rock*?\\\\";': "Rock\\*\\?\\\\",
        'set :length "b" "\u00e9\u00e9";': "2",
    }
    for line, expected in cases.items():
        script = f'set "a" "juMBlEd lETteRS";\n{line}\nfileinto "${{B}}";'
        assert filed(script) == expected, line
    # One pass; unknown variables are ""; bad references stay as written.
    script = 'set "company" "ACME";\nfileinto "${BAD${Company}|${President, ${Company} Inc.}|${x}";'
    assert filed(script) == "${BADACME|${President, ACME Inc.}|"
    script = 'set "a" "${b}";\nset "b" "x";\nfileinto "${a}-${b}";'
    assert filed(script) == "-x"
    assert filed('set "a" "${}";\nfileinto "a${a}";') == "a${}"


def test_variable_size_and_count_limits() -> None:
    limits = Limits(max_variable_size=10, max_variables=3)
    script = 'set "a" "0123456789abcdef";\nset :length "n" "${a}";\nfileinto "${n}";'
    assert filed(script, limits=limits) == "10"
    # An expansion too large to build is cut (rfc5229:6 allows truncation).
    big = 'set "a" "' + "x" * 4000 + '";\nset "b" "' + "${a}" * 40 + '";\n'
    assert filed(big + 'set :length "n" "${b}";\nfileinto "${n}";') == "4096"
    script = 'set "a" "x";\nglobal "g";\n'
    compiled = compile_script('require ["variables", "include"];\n' + script)
    assert compiled.has("include")


def test_string_test() -> None:
    script = 'set "state" "${state} pending";\nif string :matches " ${state} " "* pending *" {'
    assert filed(script + ' fileinto "yes"; }') == "yes"
    rel = 'require ["relational", "comparator-i;ascii-numeric"];\n'
    count = 'if string :count "eq" :comparator "i;ascii-numeric" ["", "a", "b"] "2" {'
    assert filed(rel + count + ' fileinto "two"; }') == "two"


# -- imap4flags (rfc5232) --------------------------------------------------


def test_flags_internal_and_named() -> None:
    flags = 'require ["imap4flags", "fileinto", "variables"];\n'
    result = actions(flags + 'addflag "\\\\seen Junk"; addflag ["$x", "junk"]; keep;')
    assert result == [Keep(("\\Seen", "Junk", "$x"))]
    # Invalid flags and \Recent are dropped; removeflag is case-insensitive.
    script = flags + 'setflag ["\\\\Recent", "a(b", "\u00e9", "ok", "\\\\Flagged"];'
    result = actions(script + 'removeflag "OK"; fileinto "X";')
    assert result == [FileInto("X", ("\\Flagged",))]
    # The implicit keep carries the internal variable.
    assert actions(flags + 'addflag "\\\\Flagged";') == [Keep(("\\Flagged",))]
    # :flags overrides it; named variables do not touch it.
    script = flags + 'addflag "a"; addflag "v" "b"; fileinto :flags "${v}" "X"; keep;'
    assert actions(script) == [FileInto("X", ("b",)), Keep(("a",))]
    script = flags + 'set "MyVar" "NonJunk Junk gnus-forward $Forwarded";\n'
    assert actions(script + 'if hasflag :contains "MyVar" "forward junk" { discard; }') == [
        Discard()
    ]
    assert actions(script + 'if hasflag :contains "MyVar" "label" { discard; }') == [Keep()]
    assert actions(flags + 'addflag "A B"; if hasflag :is "b A" { discard; }') == [Discard()]
    rel = 'require ["relational", "comparator-i;ascii-numeric"];\n'
    count = 'if hasflag :count "ge" :comparator "i;ascii-numeric" "MyVar" "4" { discard; }'
    assert actions(rel + script + count) == [Discard()]


# -- relational (rfc5231) --------------------------------------------------


def test_relational_value_and_count() -> None:
    rel = 'require ["relational", "comparator-i;ascii-numeric", "fileinto"];\n'
    m = msg(
        "Received: a",
        "Received: b",
        "X-Priority: 2 (High)",
        "To: foo@example.com, baz@example.com",
        "Cc: qux@example.com",
        "From: Mary <mary@example.com>",
    )
    num = ':comparator "i;ascii-numeric"'
    checks = {
        f'header :value "lt" {num} "x-priority" "3"': True,
        f'header :value "gt" {num} "x-priority" "2"': False,
        f'header :value "ge" {num} "x-missing" "0"': False,
        f'address :count "ge" {num} ["to", "cc"] "3"': True,
        f'address :count "ge" {num} "to" "3"': False,
        f'header :count "ge" {num} "received" "3"': False,
        f'header :count "ge" {num} ["received", "to"] "3"': True,
        f'header :count "eq" {num} "nothing" "0"': True,
        'address :value "gt" :all "from" "M"': True,
        'address :value "gt" :all "from" "N"': False,
        # i;ascii-numeric: no digits is positive infinity.
        f'header :value "gt" {num} "x-priority" "99999999999999999999999"': False,
        f'header :value "gt" {num} "from" "99999999999999999999999"': True,
        f'header :value "eq" {num} "from" "x"': True,
        f'header :value "ne" {num} "x-priority" "02"': False,
    }
    for test, expected in checks.items():
        want = [Discard()] if expected else [Keep()]
        assert actions(rel + f"if {test} {{ discard; }}", m) == want, test


# -- regex -----------------------------------------------------------------


def test_regex_matches_and_groups() -> None:
    rx = 'require ["regex", "variables", "fileinto"];\n'
    script = rx + 'if header :regex "subject" "^\\\\[([a-z-]+)\\\\] (.*)$" { fileinto "${1}"; }'
    assert actions(script) == [FileInto("acme-users")]
    script = rx + 'if header :regex :comparator "i;octet" "subject" "^\\\\[ACME" { discard; }'
    assert actions(script) == [Keep()]
    script = rx + 'if not header :regex "subject" "^[^[:lower:]]+$" { discard; }'
    assert actions(script) == [Discard()]
    script = rx + 'set :quoteregex "q" "1.0"; if header :regex "subject" "${q} is" { discard; }'
    assert actions(script) == [Discard()]
    # A pattern built at run time that does not compile is a runtime error.
    assert "invalid regular expression" in error_of(
        rx + 'set "p" "(("; if header :regex "subject" "${p}" { discard; }'
    )


def test_regex_timeout_is_a_runtime_error() -> None:
    rx = 'require "regex";\n'
    body = "a" * 40 + "!"
    m = msg(f"Subject: {body}")
    script = rx + 'if header :regex "subject" "^(a|aa|a?a)*$" { discard; }'
    error = error_of(script, m, limits=Limits(regex_timeout=0.01))
    assert "took too long" in error
    # All the matches of a run share a budget too: here none is left.
    script = rx + 'if header :regex "subject" "a" { discard; }'
    assert "took too long" in error_of(script, m, limits=Limits(regex_total=0.0))
    assert actions(script, m) == [Discard()]


# -- body (rfc5173) --------------------------------------------------------

MIME = msg(
    "From: Whomever",
    "Subject: whatever",
    "Content-Type: multipart/mixed; boundary=outer",
    body=(
        "This is a multi-part message in MIME format.\r\n"
        "\r\n--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
        "This is a nested multi-part message in MIME format.\r\n"
        '\r\n--inner\r\nContent-Type: text/plain; charset="us-ascii"\r\n\r\nHello\r\n'
        '\r\n--inner\r\nContent-Type: text/html; charset="us-ascii"\r\n\r\n'
        "<html><body>Hello</body></html>\r\n"
        "\r\n--inner--\r\n\r\nThis is the end of the inner MIME multipart.\r\n"
        "\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: Someone Else\r\nSubject: hello request\r\n\r\nPlease say Hello\r\n"
        "\r\n--outer\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 secret=\r\nword\r\n"
        "\r\n--outer\r\nContent-Type: audio/mp3\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "bWlzc2lsZQ==\r\n"
        "\r\n--outer--\r\n\r\nThis is the end of the outer MIME multipart.\r\n"
    ),
)


def test_body_transforms() -> None:
    b = 'require "body";\n'

    def hit(test: str, message: bytes = MIME) -> bool:
        result = actions(b + f"if {test} {{ discard; }}", message)
        return result == [Discard()]

    assert hit('body :content "multipart" :contains "end of the inner"')
    assert not hit('body :content "multipart" :contains "Hello"')
    assert hit('body :content "text/plain" :contains "Hello"')
    assert hit('body :content "text/html" :contains "<body>Hello"')
    assert not hit('body :content "text/plain" :contains "<body>"')
    assert hit('body :content "message/rfc822" :contains "hello request"')
    assert not hit('body :content "message/rfc822" :contains "Please say"')
    assert hit('body :content "text" :contains "Please say"')  # the enclosed part
    assert hit('body :content "text" :contains "caf\u00e9 secretword"')  # decoded
    assert hit('body :content "audio/mp3" :is "missile"')
    assert hit('body :content "" :is "missile"')
    assert not hit('body :content ["/mp3", "audio/", "a/b/c"] :contains ""')
    assert hit('body :text :contains "SECRETWORD"')
    assert not hit('body :text :contains "missile"')
    assert hit('body :raw :contains "bWlzc2lsZQ=="')
    assert hit('body :raw :contains "Content-Type: audio/mp3"')
    # A part is matched on its own: never across a boundary.
    assert not hit('body :text :contains "Hello\r\n\r\n--inner"')
    # rfc5173:4: a message without an empty line has no body at all.
    assert not hit('body :raw :contains ""', b"Subject: x\r\n")
    assert hit('body :raw :is ""', b"Subject: x\r\n\r\n")


def test_body_scan_is_bounded() -> None:
    b = 'require "body";\n'
    tail = msg("Subject: big", body="x" * 2_000_000 + "needle\r\n")
    limits = Limits(max_body_scan=1_000_000)
    for transform in (":raw", ":text"):
        script = b + f'if body {transform} :contains "needle" {{ discard; }}'
        assert actions(script, tail, limits=limits) == [Keep()]
        assert actions(script, tail, limits=Limits(max_body_scan=3_000_000)) == [Discard()]


# -- date and index (rfc5260) ----------------------------------------------

NOW = datetime(2007, 7, 1, 23, 30, 15, tzinfo=timezone(timedelta(hours=2)))


def test_date_parts() -> None:
    d = 'require ["date", "variables", "fileinto"];\n'
    m = msg(
        "Date: Tue, 1 Apr 1997 09:06:31 -0800",
        "Received: from x by y; Sun, 30 Mar 1997 23:59:59 +0000",
        "Received: from a by b; Fri, 28 Mar 1997 10:00:00 +0000",
    )
    parts = {
        "year": "1997",
        "month": "04",
        "day": "01",
        "date": "1997-04-01",
        "julian": "50539",
        "hour": "09",
        "minute": "06",
        "second": "31",
        "time": "09:06:31",
        "iso8601": "1997-04-01T09:06:31-08:00",
        "std11": "Tue, 01 Apr 1997 09:06:31 -0800",
        "zone": "-0800",
        "weekday": "2",
    }
    for part, value in parts.items():
        script = d + f'if date :originalzone :matches "date" "{part}" "*" {{ fileinto "${{1}}"; }}'
        assert actions(script, m) == [FileInto(value)], part
    script = d + 'if date :zone "+0000" :matches "date" "iso8601" "*" { fileinto "${1}"; }'
    assert actions(script, m) == [FileInto("1997-04-01T17:06:31Z")]
    # No :zone: the local zone, here the zone of "now" (+0200).
    script = d + 'if date :matches "date" "std11" "*" { fileinto "${1}"; }'
    assert actions(script, m, now=NOW) == [FileInto("Tue, 01 Apr 1997 19:06:31 +0200")]
    # Received: the date after the last ";"; the first field unless :index.
    script = d + 'if date :zone "+0000" :is "received" "weekday" "0" { discard; }'
    assert actions(script, m) == [Discard()]
    idx = 'require ["date", "index"];\n'
    script = idx + 'if date :index 2 :zone "+0000" :is "received" "day" "28" { discard; }'
    assert actions(script, m) == [Discard()]
    script = idx + 'if date :index 1 :last :zone "+0000" :is "received" "day" "28" { discard; }'
    assert actions(script, m) == [Discard()]


def test_invalid_dates_are_false() -> None:
    d = 'require ["date", "relational", "comparator-i;ascii-numeric"];\n'
    for value in ("Mon, 30 Feb 2009 10:00:00 +0000", "someday", "Mon, 1 Jan 2009 25:00:00 +0000"):
        m = msg(f"Date: {value}")
        assert actions(d + 'if date :contains "date" "year" "" { discard; }', m) == [Keep()]
        count = 'if date :count "eq" :comparator "i;ascii-numeric" "date" "year" "0"'
        assert actions(d + count + " { discard; }", m) == [Discard()]
    assert actions(d + 'if date :contains "nope" "year" "" { discard; }') == [Keep()]


def test_currentdate() -> None:
    d = 'require ["date", "relational", "variables", "fileinto"];\n'
    script = d + 'if currentdate :matches "date" "*" { fileinto "${1}"; }'
    assert actions(script, now=NOW) == [FileInto("2007-07-01")]
    script = d + 'if currentdate :zone "-0100" :matches "date" "*" { fileinto "${1}"; }'
    assert actions(script, now=NOW) == [FileInto("2007-07-01")]
    script = d + 'if currentdate :zone "+0100" :matches "iso8601" "*" { fileinto "${1}"; }'
    assert actions(script, now=NOW) == [FileInto("2007-07-01T22:30:15+01:00")]
    script = d + (
        'if allof(currentdate :value "ge" "date" "2007-06-30",'
        ' currentdate :value "le" "date" "2007-07-07") { discard; }'
    )
    assert actions(script, now=NOW) == [Discard()]
    assert actions(script, now=NOW + timedelta(days=7)) == [Keep()]
    # A bad zone built from variables is a runtime error.
    script = d + 'set "z" "+9999"; if currentdate :zone "${z}" "hour" "1" { discard; }'
    assert "zone" in error_of(script, now=NOW)


def test_header_and_address_index() -> None:
    idx = 'require ["index", "fileinto"];\n'
    m = msg("X-A: one", "X-B: two", "X-A: three", "To: a@x.example", "To: b@y.example")
    script = idx + 'if header :index 2 :is ["x-a", "x-b"] "three" { discard; }'
    assert actions(script, m) == [Discard()]  # counted in the order of the names
    script = idx + 'if header :index 3 :is ["x-a", "x-b"] "two" { discard; }'
    assert actions(script, m) == [Discard()]
    script = idx + 'if header :index 1 :last :is "x-a" "three" { discard; }'
    assert actions(script, m) == [Discard()]
    script = idx + 'if header :index 9 :contains "x-a" "" { discard; }'
    assert actions(script, m) == [Keep()]
    script = idx + 'if address :index 2 :domain :is "to" "y.example" { discard; }'
    assert actions(script, m) == [Discard()]


# -- mailbox (rfc5490) -----------------------------------------------------


def test_mailboxexists_and_create() -> None:
    mb = 'require ["mailbox", "fileinto"];\n'
    exists = {"Partners", "Lists/dev"}.__contains__
    script = mb + 'if mailboxexists ["Partners", "inbox"] { fileinto "Partners"; }'
    assert actions(script, mailbox_exists=exists) == [FileInto("Partners")]
    script = mb + 'if mailboxexists ["Partners", "Nope"] { discard; }'
    assert actions(script, mailbox_exists=exists) == [Keep()]
    assert actions(mb + 'if mailboxexists "Partners" { discard; }') == [Keep()]
    assert actions(mb + 'if mailboxexists "INBOX" { discard; }') == [Discard()]
    assert actions(mb + 'fileinto :create "New/Box";') == [FileInto("New/Box", create=True)]

    def broken(name: str) -> bool:
        raise OSError("disk on fire")

    assert "disk on fire" in error_of(
        mb + 'if mailboxexists "X" { discard; }', mailbox_exists=broken
    )


# -- environment (rfc5183) -------------------------------------------------


def test_environment() -> None:
    env = 'require ["environment", "variables", "fileinto"];\n'
    items = {"host": "mx.example.org", "remote-ip": "192.0.2.1"}
    script = env + 'if environment :matches "host" "*.example.org" { fileinto "${1}"; }'
    assert actions(script, environment=items) == [FileInto("mx")]
    for name, value in (("location", "MDA"), ("phase", "during"), ("name", "estafeta")):
        script = env + f'if environment :is "{name}" "{value}" {{ discard; }}'
        assert actions(script) == [Discard()], name
    script = env + 'if environment :contains "vnd.nothing" "" { discard; }'
    assert actions(script) == [Keep()]
    script = env + 'if environment :is "domain" "example.org" { discard; }'
    assert actions(script) == [Discard()]
