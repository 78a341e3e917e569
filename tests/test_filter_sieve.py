"""filter_plugins/sieve.py: sieve_quote and sieve_vacation.

Their output is checked three ways: the exact text; the server's own Sieve
parser reads every quoted string back to the value it came from; and the
vacation scripts compile with the server's compiler and, run by its
interpreter, answer inside the dates and not outside. The last test runs the
filter in a playbook whose dates YAML reads as dates, as an inventory would.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "filter_plugins" / "sieve.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("estafeta_filter_plugins_sieve", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = _load().FilterModule().filters()
sieve_quote = FILTERS["sieve_quote"]
sieve_vacation = FILTERS["sieve_vacation"]
GENERATED = "# Written by the estafeta role from a vacation: shorthand; edits are overwritten.\n"


def test_published_filters() -> None:
    assert sorted(FILTERS) == ["sieve_quote", "sieve_vacation"]


# -- sieve_quote ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello", '"hello"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("C:\\Temp\\", '"C:\\\\Temp\\\\"'),
        ('\\"', '"\\\\\\""'),
        ("two\nlines", '"two\nlines"'),
        ("crlf\r\nand\rcr", '"crlf\nand\ncr"'),
        ("Grüße ☃", '"Grüße ☃"'),
        ("${var} :tag [list]; # not a comment", '"${var} :tag [list]; # not a comment"'),
        (42, '"42"'),
    ],
)
def test_sieve_quote(value: Any, expected: str) -> None:
    assert sieve_quote(value) == expected


@pytest.mark.parametrize("value", [None, True, ["a"], {"a": 1}, b"bytes", "nul\x00inside"])
def test_sieve_quote_refuses(value: Any) -> None:
    with pytest.raises(AnsibleFilterError, match="sieve_quote: "):
        sieve_quote(value)


HOSTILE = [
    'a"; discard; keep "',
    '\\"; discard; #',
    "\\",
    '"',
    '\\\\\\""\\',
    "line\n.\nend",
    "text:\nmulti\n.\n",
    "/* not a comment */",
    'tab\there "q" \\ end',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_the_server_reads_quoted_strings_back(value: str) -> None:
    """Whatever the string holds, it stays one string argument with its value
    (line breaks inside a string are CRLF to the parser, rfc5228:2.4.2)."""
    from estafeta.sieve import parse

    script = parse(f"dummy {sieve_quote(value)};\n")
    (command,) = script.commands
    assert command.name == "dummy"
    (argument,) = command.arguments
    assert argument.value == value.replace("\n", "\r\n")


# -- sieve_vacation -----------------------------------------------------------------------

FULL = {
    "subject": 'Away: "holidays"',
    "body": "Hello,\n\nI am away until January 6.\nC:\\ is closed too.\n",
    "days": 7,
    "from_date": "2026-12-20",
    "until_date": datetime.date(2027, 1, 6),
    "addresses": ["bob@example.org", "robert@example.org"],
}


def test_vacation_with_dates_exactly() -> None:
    assert sieve_vacation(FULL) == (
        GENERATED + 'require ["date", "relational", "vacation"];\n'
        "\n"
        'if allof (currentdate :value "ge" "date" "2026-12-20",\n'
        '       currentdate :value "le" "date" "2027-01-06") {\n'
        '    vacation :days 7 :subject "Away: \\"holidays\\""'
        ' :addresses ["bob@example.org", "robert@example.org"]'
        ' "Hello,\n\nI am away until January 6.\nC:\\\\ is closed too.\n";\n'
        "}\n"
    )


def test_vacation_forms() -> None:
    # Only a body: no dates, the default days, no subject (the server makes one).
    assert sieve_vacation({"body": "Away."}) == (
        GENERATED + 'require ["vacation"];\n\nvacation :days 7 "Away.";\n'
    )
    # One bound, a time zone, days as text (Ansible templating may give "3").
    assert sieve_vacation(
        {"body": "x", "days": "3", "from_date": "2026-12-20", "zone": "+0100"}
    ) == (
        GENERATED + 'require ["date", "relational", "vacation"];\n\n'
        'if currentdate :zone "+0100" :value "ge" "date" "2026-12-20" {\n'
        '    vacation :days 3 "x";\n}\n'
    )
    assert 'currentdate :value "le" "date" "2027-01-06" {' in sieve_vacation(
        {"body": "x", "until_date": "2027-01-06", "from_date": None}
    )
    # The same day as first and last is one day.
    assert "allof" in sieve_vacation(
        {"body": "x", "from_date": "2026-12-24", "until_date": "2026-12-24"}
    )


@pytest.mark.parametrize(
    ("vacation", "message"),
    [
        ("away", "the input must be a dict"),
        ({}, "body is required"),
        ({"body": "  \n"}, "body is empty"),
        ({"body": 5}, "body must be a string"),
        ({"body": "x", "subject": "two\nlines"}, "must be one line"),
        ({"body": "x", "subject": "cr\rhere"}, "must be one line"),
        ({"body": "x", "days": 0}, "days must be a whole number from 1 to 365"),
        ({"body": "x", "days": 366}, "days must be a whole number from 1 to 365"),
        ({"body": "x", "days": True}, "days must be a whole number"),
        ({"body": "x", "days": "7d"}, "days must be a whole number"),
        ({"body": "x", "from_date": "20.12.2026"}, "from_date '20.12.2026' must be a day"),
        ({"body": "x", "from_date": "2026-02-30"}, "from_date '2026-02-30' must be a day"),
        ({"body": "x", "until_date": 20261220}, "until_date 20261220 must be a day"),
        (
            {"body": "x", "until_date": datetime.datetime(2026, 12, 20, 8, 0)},
            "must be a day (YYYY-MM-DD), not a time",
        ),
        (
            {"body": "x", "from_date": "2027-01-06", "until_date": "2026-12-20"},
            "from_date 2027-01-06 is after until_date 2026-12-20",
        ),
        ({"body": "x", "zone": "CET"}, "zone 'CET' must look like +0100"),
        ({"body": "x", "zone": "+2500"}, "zone '+2500' must look like"),
        ({"body": "x", "addresses": ["not an address"]}, "'not an address' is not a mail address"),
        ({"body": "x", "addresses": {"a": 1}}, "addresses must be a list"),
        ({"body": "x", "body_html": "<p>"}, "unknown key(s) body_html"),
        ({"body": "nul\x00"}, "body holds a NUL character"),
        ({"body": "x", "subject": "a\x00b"}, "subject holds a NUL character"),
    ],
)
def test_vacation_refuses(vacation: Any, message: str) -> None:
    with pytest.raises(AnsibleFilterError) as info:
        sieve_vacation(vacation)
    assert message in str(info.value)
    assert str(info.value).startswith("sieve_vacation: ")


# -- with the server's compiler and interpreter --------------------------------------------

MESSAGE = (
    b"From: Carol <carol@example.org>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: lunch?\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Lunch on Friday?\r\n"
)


def _vacations(script: str, day: datetime.datetime) -> list[Any]:
    from estafeta import sieve
    from estafeta.sieve import actions

    compiled = sieve.compile_script(script, name="vacation")
    context = sieve.Context(
        message=MESSAGE,
        envelope=sieve.Envelope(sender="carol@example.org", recipient="bob@example.org"),
        account="bob@example.org",
        addresses=("bob@example.org",),
        now=day,
    )
    result = sieve.run([compiled], context)
    assert result.errors == []
    # The message itself is always kept: a vacation reply never costs mail.
    assert any(isinstance(a, actions.Keep) for a in result.actions)
    return [a for a in result.actions if isinstance(a, actions.Vacation)]


def test_vacation_scripts_run_inside_their_dates_only() -> None:
    script = sieve_vacation(FULL)
    utc = datetime.UTC
    for day, answered in [
        (datetime.datetime(2026, 12, 19, 23, 59, tzinfo=utc), False),
        (datetime.datetime(2026, 12, 20, 0, 0, tzinfo=utc), True),
        (datetime.datetime(2026, 12, 31, 12, 0, tzinfo=utc), True),
        (datetime.datetime(2027, 1, 6, 23, 59, tzinfo=utc), True),
        (datetime.datetime(2027, 1, 7, 0, 0, tzinfo=utc), False),
    ]:
        replies = _vacations(script, day)
        assert len(replies) == (1 if answered else 0), day
        if answered:
            (reply,) = replies
            assert reply.to == "carol@example.org"
            assert reply.subject == 'Away: "holidays"'
            assert reply.body.replace("\r\n", "\n") == FULL["body"]
            assert reply.seconds == 7 * 86400


def test_vacation_without_dates_and_with_a_zone_compile() -> None:
    now = datetime.datetime(2026, 12, 19, 23, 30, tzinfo=datetime.UTC)
    assert len(_vacations(sieve_vacation({"body": "Away."}), now)) == 1
    # 23:30 UTC on the 19th is already the 20th in +0100.
    zoned = sieve_vacation({"body": "x", "from_date": "2026-12-20", "zone": "+0100"})
    assert len(_vacations(zoned, now)) == 1
    assert _vacations(sieve_vacation({"body": "x", "from_date": "2026-12-20"}), now) == []


# -- through Ansible ------------------------------------------------------------------------

PLAYBOOK = """
- name: The vacation shorthand as an inventory writes it
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    vacation:
      subject: Away
      body: |
        Back on January 6.
      days: 7
      from_date: 2026-12-20
      until_date: "2027-01-06"
  tasks:
    - name: Show the script
      ansible.builtin.debug:
        msg: "{{ vacation | sieve_vacation }}"
"""


def test_ansible_runs_sieve_vacation_on_yaml_dates(tmp_path: Path) -> None:
    playbook = tmp_path / "vacation.yml"
    playbook.write_text(PLAYBOOK)
    bin_dir = Path(sys.executable).parent
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_NOCOLOR="1",
    )
    result = subprocess.run(
        [str(bin_dir / "ansible-playbook"), "-i", "localhost,", str(playbook)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout[result.stdout.index("{") :])
    msg = report["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    assert msg == (
        GENERATED + 'require ["date", "relational", "vacation"];\n\n'
        'if allof (currentdate :value "ge" "date" "2026-12-20",\n'
        '       currentdate :value "le" "date" "2027-01-06") {\n'
        '    vacation :days 7 :subject "Away" "Back on January 6.\n";\n'
        "}\n"
    )
