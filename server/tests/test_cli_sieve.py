"""``estafeta sieve ...``: scripts of accounts, check and test, as a subprocess.

What the Ansible module (library/estafeta_sieve.py) relies on is asserted
exactly: the ``--json`` documents, exit codes, the stored text coming back
byte for byte, one-line errors with ``line:column``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import DOMAIN, Instance, estafeta

ALICE = f"alice@{DOMAIN}"

RULES = """require ["fileinto", "imap4flags"];
# Lists into their folders, read.
if header :contains "List-Id" "<dev.lists.example.org>" {
    fileinto :flags "\\\\Seen" "Lists/dev";
}
"""

LIST_MAIL = (
    "Return-Path: <dev-bounces@lists.example.org>\n"
    "From: Bob <bob@example.org>\n"
    f"To: dev@lists.example.org, {ALICE}\n"
    "List-Id: Developers <dev.lists.example.org>\n"
    "Subject: release\n"
    "\n"
    "hello\n"
)

PLAIN_MAIL = f"From: Carol <carol@example.org>\r\nTo: {ALICE}\r\nSubject: hi\r\n\r\nhello\r\n"


def run(instance: Instance, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = estafeta(instance.config, *args, stdin=stdin, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


def listing(instance: Instance, address: str = ALICE) -> list[dict[str, object]]:
    code, out, err = run(instance, "sieve", "list", address, "--json")
    assert code == 0, err
    result: list[dict[str, object]] = json.loads(out)
    return result


def write(path: Path, text: str | bytes) -> str:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


# -- storing and activating ------------------------------------------------------------


def test_put_get_list_activate_delete(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    assert listing(instance) == []

    code, out, err = run(instance, "sieve", "put", ALICE, "rules", "--json", stdin=RULES)
    assert code == 0, err
    assert json.loads(out) == {"changed": True, "active": False}
    assert listing(instance) == [{"name": "rules", "active": False}]
    # The text comes back exactly, comments and line ends included.
    code, out, _ = run(instance, "sieve", "get", ALICE, "rules")
    assert (code, out) == (0, RULES)

    # The same text again changes nothing; --activate makes it the active one.
    code, out, _ = run(instance, "sieve", "put", ALICE, "rules", "--json", stdin=RULES)
    assert json.loads(out) == {"changed": False, "active": False}
    code, out, _ = run(
        instance, "sieve", "put", ALICE, "rules", "--activate", "--json", stdin=RULES
    )
    assert json.loads(out) == {"changed": True, "active": True}
    code, out, _ = run(
        instance, "sieve", "put", ALICE, "rules", "--activate", "--json", stdin=RULES
    )
    assert json.loads(out) == {"changed": False, "active": True}

    # From a file, in another spelling of the address; the text form.
    spare = write(tmp_path / "spare.sieve", 'require "fileinto";\nfileinto "Spare";\n')
    code, out, _ = run(instance, "sieve", "put", "Alice@Example.TEST", "spare", spare)
    assert (code, out.strip()) == (0, f"stored spare of {ALICE}")
    code, out, _ = run(instance, "sieve", "list", ALICE)
    assert out.splitlines() == ["rules (active)", "spare"]

    # One active script at a time.
    code, out, _ = run(instance, "sieve", "activate", ALICE, "spare")
    assert (code, out.strip()) == (0, f"spare is now the active script of {ALICE}")
    assert listing(instance) == [
        {"name": "rules", "active": False},
        {"name": "spare", "active": True},
    ]
    code, out, _ = run(instance, "sieve", "activate", ALICE, "spare")
    assert (code, out.strip()) == (0, f"spare was already the active script of {ALICE}")

    # The active script cannot be deleted; after deactivating it can.
    code, _, err = run(instance, "sieve", "delete", ALICE, "spare")
    assert code == 1
    assert err.startswith("estafeta: ") and len(err.strip().splitlines()) == 1
    assert f"estafeta sieve deactivate {ALICE}" in err
    assert [s["name"] for s in listing(instance)] == ["rules", "spare"]
    code, out, _ = run(instance, "sieve", "deactivate", ALICE)
    assert (code, out.strip()) == (0, f"{ALICE} no longer has active script")
    code, out, _ = run(instance, "sieve", "deactivate", ALICE)
    assert (code, out.strip()) == (0, f"{ALICE} had no active script")
    assert run(instance, "sieve", "delete", ALICE, "spare")[0] == 0
    assert listing(instance) == [{"name": "rules", "active": False}]

    # What is not there is an error naming it.
    for args in (("get", ALICE, "spare"), ("delete", ALICE, "spare"), ("activate", ALICE, "x")):
        code, _, err = run(instance, "sieve", *args)
        assert code == 1, args
        assert err.startswith("estafeta: "), err


def test_text_is_stored_as_given(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    # UTF-8 in strings and comments, CRLF line ends, no final line break.
    text = 'require "fileinto";\r\n# Ünïcødé\r\nfileinto "Entwürfe";'
    path = write(tmp_path / "u.sieve", text)
    assert run(instance, "sieve", "put", ALICE, "ümlaut", path)[0] == 0
    result = estafeta(instance.config, "sieve", "get", ALICE, "ümlaut", check=False)
    assert result.returncode == 0
    # text=True in the harness turns CRLF into LF: compare the bytes.
    if instance.cluster:
        stored = instance.cluster_sql(
            "SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM sieve_scripts"
        )
        assert bytes.fromhex(stored.strip()) == text.encode()
    else:
        raw = (instance.data_dir / "sieve").rglob("*.sieve")
        assert any(p.read_bytes() == text.encode() for p in raw)
    assert listing(instance) == [{"name": "ümlaut", "active": False}]


def test_refused_scripts_store_nothing(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    bad = write(tmp_path / "bad.sieve", 'require "fileinto";\nfrobnicate "x";\n')
    code, out, err = run(instance, "sieve", "put", ALICE, "rules", bad, "--json")
    assert code == 1 and out == ""
    assert re.fullmatch(rf"estafeta: {re.escape(bad)}:2:1: .+ \(not stored\)\n", err), err
    # From stdin the error names <stdin>.
    code, _, err = run(instance, "sieve", "put", ALICE, "rules", stdin="keep;\nif true {\n")
    assert code == 1
    assert re.match(r"estafeta: <stdin>:\d+:\d+: ", err), err
    # Not UTF-8: the position of the first bad octet.
    latin1 = write(tmp_path / "latin1.sieve", b"keep;\n# caf\xe9\n")
    code, _, err = run(instance, "sieve", "put", ALICE, "rules", latin1)
    assert (code, err) == (2, f"estafeta: {latin1}:2:6: not valid UTF-8\n")
    # A name ManageSieve would refuse (rfc5804:1.6: no control characters).
    code, _, err = run(instance, "sieve", "put", ALICE, "a\x7fb", stdin="keep;\n")
    assert code == 1 and err.startswith("estafeta: ")
    assert listing(instance) == []


def test_unknown_account_and_missing_file(instance: Instance, tmp_path: Path) -> None:
    ghost = f"ghost@{DOMAIN}"
    for args in (
        ("list", ghost),
        ("get", ghost, "rules"),
        ("put", ghost, "rules", write(tmp_path / "k.sieve", "keep;\n")),
        ("activate", ghost, "rules"),
        ("deactivate", ghost),
        ("delete", ghost, "rules"),
    ):
        code, _, err = run(instance, "sieve", *args)
        assert (code, err) == (2, f"estafeta: no account {ghost}\n"), args
    instance.add_user(ALICE)
    missing = str(tmp_path / "missing.sieve")
    for args in (("put", ALICE, "rules", missing), ("check", missing)):
        code, _, err = run(instance, "sieve", *args)
        assert code == 2
        assert err.startswith(f"estafeta: {missing}: cannot read the script: "), err
        assert len(err.splitlines()) == 1
    assert not (instance.data_dir / "sieve" / DOMAIN / "ghost").exists()


def test_limits_of_the_config_apply(instance: Instance, tmp_path: Path) -> None:
    instance.extra_config = "[sieve]\nmax_script_size = 64\nmax_scripts = 2\n"
    instance.write_config()
    instance.add_user(ALICE)
    big = write(tmp_path / "big.sieve", "keep;\n" + "#" * 80 + "\n")
    for args in (("put", ALICE, "big", big), ("check", big)):
        code, _, err = run(instance, "sieve", *args)
        assert (code, err) == (2, f"estafeta: {big}: the script is larger than 64 octets\n")
    assert run(instance, "sieve", "put", ALICE, "one", stdin="keep;\n")[0] == 0
    assert run(instance, "sieve", "put", ALICE, "two", stdin="keep;\n")[0] == 0
    code, _, err = run(instance, "sieve", "put", ALICE, "three", stdin="keep;\n")
    assert code == 1 and err.startswith("estafeta: ")
    # Replacing an existing script is no new script.
    assert run(instance, "sieve", "put", ALICE, "two", stdin="discard;\n")[0] == 0
    assert [s["name"] for s in listing(instance)] == ["one", "two"]


# -- check -------------------------------------------------------------------------------


def test_check(instance: Instance, tmp_path: Path) -> None:
    good = write(tmp_path / "good.sieve", RULES)
    assert run(instance, "sieve", "check", good) == (0, "ok\n", "")
    assert run(instance, "sieve", "check", "-", stdin=RULES) == (0, "ok\n", "")
    # An unknown command, an unknown extension, a missing semicolon: FILE:line:column.
    cases = [
        ("keep;\n  frobnicate;\n", 2, 3),
        ('require ["fileinto", "no-such-extension"];\n', 1, 22),
        ("if true {\n    keep\n}\n", 3, 1),
    ]
    for n, (text, line, column) in enumerate(cases):
        path = write(tmp_path / f"bad{n}.sieve", text)
        code, out, err = run(instance, "sieve", "check", path)
        assert (code, out) == (2, ""), text
        assert re.fullmatch(rf"{re.escape(path)}:{line}:{column}: \S.*\n", err), (text, err)
    code, _, err = run(instance, "sieve", "check", "-", stdin="stop\n")
    assert code == 2 and err.startswith("<stdin>:"), err


# -- test --------------------------------------------------------------------------------


def sieve_test(
    instance: Instance, tmp_path: Path, script: str, message: str, *args: str
) -> dict[str, object]:
    script_path = write(tmp_path / "t.sieve", script)
    message_path = write(tmp_path / "t.eml", message)
    code, out, err = run(
        instance,
        "sieve",
        "test",
        "--script",
        script_path,
        "--message",
        message_path,
        "--json",
        *args,
    )
    assert code == 0, err
    assert out.count("\n") == 1
    result: dict[str, object] = json.loads(out)
    return result


def test_test_prints_what_a_delivery_would_do(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    # The example of the issue, exactly.
    script_path = write(tmp_path / "rules.sieve", RULES)
    message_path = write(tmp_path / "list.eml", LIST_MAIL)
    code, out, err = run(
        instance, "sieve", "test", "--script", script_path, "--message", message_path, "--json"
    )
    assert code == 0, err
    assert out == (
        '{"actions": [{"action": "fileinto", "mailbox": "Lists/dev", '
        '"flags": ["\\\\Seen"], "copy": false}]}\n'
    )
    # Nothing was delivered or stored.
    assert instance.message_count(ALICE) == 0

    # No rule applies: the implicit keep is listed like any other action.
    assert sieve_test(instance, tmp_path, RULES, PLAIN_MAIL) == {
        "actions": [{"action": "keep", "mailbox": "INBOX", "flags": []}]
    }
    # discard cancels the implicit keep; :copy keeps it.
    assert sieve_test(instance, tmp_path, "discard;\n", PLAIN_MAIL) == {
        "actions": [{"action": "discard"}]
    }
    result = sieve_test(
        instance, tmp_path, 'require "copy";\nredirect :copy "bob@example.org";\n', PLAIN_MAIL
    )
    assert result == {
        "actions": [
            {"action": "redirect", "address": "bob@example.org", "copy": True},
            {"action": "keep", "mailbox": "INBOX", "flags": []},
        ]
    }


def test_test_envelope_and_date(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    script = (
        'require ["envelope", "date", "relational", "fileinto"];\n'
        'if envelope :is "from" "" { fileinto "Bounces"; stop; }\n'
        'if currentdate :value "ge" "date" "2026-12-20" { fileinto "Later"; stop; }\n'
        'if envelope :is "to" "alice+x@example.test" { fileinto "Tagged"; }\n'
    )

    def mailbox(*args: str) -> object:
        result = sieve_test(instance, tmp_path, script, PLAIN_MAIL, *args)
        actions = result["actions"]
        assert isinstance(actions, list)
        return actions[0].get("mailbox")

    assert mailbox("--now", "2026-12-01") == "INBOX"  # sender taken from From
    assert mailbox("--now", "2026-12-01", "--from", "") == "Bounces"
    assert mailbox("--now", "2026-12-20T08:00") == "Later"
    # A subaddress reaches alice: envelope "to" is the address as given.
    assert mailbox("--now", "2026-12-01", "--to", f"alice+x@{DOMAIN}") == "Tagged"
    # Return-Path: <> is the null sender.
    null = "Return-Path: <>\n" + PLAIN_MAIL
    assert sieve_test(instance, tmp_path, script, null, "--now", "2026-01-01")["actions"] == [
        {"action": "fileinto", "mailbox": "Bounces", "flags": [], "copy": False}
    ]


def test_test_runtime_error_is_the_implicit_keep(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    # Too many redirects for [sieve] max_redirects: a runtime error, so INBOX.
    instance.extra_config = "[sieve]\nmax_redirects = 1\n"
    instance.write_config()
    script = 'redirect "a@example.org";\nredirect "b@example.org";\n'
    result = sieve_test(instance, tmp_path, script, PLAIN_MAIL)
    assert result["actions"] == [{"action": "keep", "mailbox": "INBOX", "flags": []}]
    errors = result["errors"]
    assert isinstance(errors, list) and len(errors) == 1
    assert re.search(r":2:\d+: ", errors[0]), errors


def test_test_vacation_and_text_form(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    script = 'require "vacation";\nvacation :days 7 :subject "Away" "Back on Monday.";\n'
    result = sieve_test(instance, tmp_path, script, PLAIN_MAIL)
    actions = result["actions"]
    assert isinstance(actions, list)
    vacation = [a for a in actions if a["action"] == "vacation"]
    assert len(vacation) == 1
    assert (vacation[0]["to"], vacation[0]["subject"]) == ("carol@example.org", "Away")
    assert {"action": "keep", "mailbox": "INBOX", "flags": []} in actions
    # Never to the null sender (rfc5230:4.6).
    result = sieve_test(instance, tmp_path, script, PLAIN_MAIL, "--from", "")
    assert result["actions"] == [{"action": "keep", "mailbox": "INBOX", "flags": []}]

    # Without --json: one readable line per action.
    script_path = write(tmp_path / "r.sieve", RULES)
    message_path = write(tmp_path / "l.eml", LIST_MAIL)
    code, out, _ = run(
        instance, "sieve", "test", "--script", script_path, "--message", message_path
    )
    assert code == 0
    assert out.splitlines() == [
        "from <dev-bounces@lists.example.org> to <dev@lists.example.org> (account "
        "dev@lists.example.org):",
        '  fileinto "Lists/dev" flags \\Seen',
    ]
    code, out, _ = run(
        instance,
        "sieve",
        "test",
        "--script",
        script_path,
        "--message",
        message_path,
        "--to",
        ALICE,
    )
    assert (
        out.splitlines()[0] == f"from <dev-bounces@lists.example.org> to <{ALICE}> "
        f"(account {ALICE}):"
    )


def test_test_runs_the_global_scripts(instance: Instance, tmp_path: Path) -> None:
    instance.add_user(ALICE)
    before = write(
        tmp_path / "before.sieve",
        'require "fileinto";\nif header :is "subject" "hi" { fileinto "Greetings"; }\n',
    )
    after = write(
        tmp_path / "after.sieve", 'require ["fileinto", "copy"];\nfileinto :copy "Archive";\n'
    )
    instance.extra_config = f'[sieve]\nglobal_before = ["{before}"]\nglobal_after = ["{after}"]\n'
    instance.write_config()

    def actions(*args: str) -> list[str]:
        result = sieve_test(instance, tmp_path, "keep;\n", PLAIN_MAIL, *args)
        assert set(result) == {"actions"}
        found = result["actions"]
        assert isinstance(found, list)
        return sorted(json.dumps(a, sort_keys=True) for a in found)

    keep = {"action": "keep", "mailbox": "INBOX", "flags": []}
    assert actions() == sorted(
        json.dumps(a, sort_keys=True)
        for a in [
            {"action": "fileinto", "mailbox": "Greetings", "flags": [], "copy": False},
            keep,
            {"action": "fileinto", "mailbox": "Archive", "flags": [], "copy": True},
        ]
    )
    assert actions("--no-global") == [json.dumps(keep, sort_keys=True)]
