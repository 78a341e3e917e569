"""The estafeta command: account and alias management, reindex, mail ls/cat, DKIM keys."""

from __future__ import annotations

import contextlib
import json
import shutil
import smtplib
import sqlite3

from conftest import DOMAIN, PASSWORD, Instance, estafeta

ALICE = f"alice@{DOMAIN}"


def run(instance: Instance, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = estafeta(instance.config, *args, stdin=stdin, check=False)
    return result.returncode, result.stdout, result.stderr


def test_user_lifecycle(instance: Instance) -> None:
    code, out, _ = run(
        instance, "user", "add", "Alice@Example.TEST", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert (code, out.strip()) == (0, f"added {ALICE}")
    code, _, err = run(instance, "user", "add", ALICE, "--password-stdin", stdin=PASSWORD)
    assert code == 1
    assert "already exists" in err
    assert "Traceback" not in err
    code, out, _ = run(instance, "user", "list")
    assert out.split() == [ALICE]
    code, _, _ = run(
        instance, "user", "passwd", ALICE, "--password-stdin", stdin="a new long password\n"
    )
    assert code == 0
    code, out, _ = run(instance, "user", "del", ALICE)
    assert code == 0
    assert run(instance, "user", "list")[1].split() == []
    code, _, err = run(instance, "user", "del", ALICE)
    assert code == 1 and ALICE in err


def test_bad_input_is_refused_cleanly(instance: Instance) -> None:
    cases = [
        (("user", "add", "not-an-address", "--password-stdin"), PASSWORD, 1),
        (("user", "add", "alice@elsewhere.test", "--password-stdin"), PASSWORD, 1),
        (("user", "add", ALICE, "--password-stdin"), "", 2),  # empty password
        (("user", "add", ALICE, "--password-stdin"), "short", 1),
        (("user", "add", ALICE), None, 2),  # no terminal to ask
        (("alias", "add", f"team@{DOMAIN}", f"ghost@{DOMAIN}"), None, 1),
        (("reindex", f"ghost@{DOMAIN}"), None, 2),
    ]
    for args, stdin, expected in cases:
        code, _, err = run(instance, *args, stdin=stdin)
        assert code == expected, (args, err)
        assert err.startswith("estafeta: "), (args, err)
        assert "Traceback" not in err
    # Nothing was half-created by any of them.
    assert run(instance, "user", "list")[1] == ""
    assert run(instance, "alias", "list")[1] == ""


def test_passwords_never_echoed(instance: Instance) -> None:
    secret = "Sup3r-secret-pa55word"
    code, out, err = run(instance, "user", "add", ALICE, "--password-stdin", stdin=secret)
    assert code == 0
    code, out2, err2 = run(instance, "user", "add", ALICE, "--password-stdin", stdin=secret)
    assert secret not in out + err + out2 + err2
    accounts_db = (instance.data_dir / "accounts.db").read_bytes()
    assert secret.encode() not in accounts_db
    assert b"$argon2id$" in accounts_db


def test_aliases(instance: Instance) -> None:
    instance.add_user(ALICE)
    instance.add_user(f"bob@{DOMAIN}")
    assert run(instance, "alias", "add", f"team@{DOMAIN}", ALICE, f"bob@{DOMAIN}")[0] == 0
    assert run(instance, "alias", "add", "@other.test", ALICE)[0] == 0
    code, _, err = run(instance, "alias", "add", f"team@{DOMAIN}", ALICE)
    assert code == 1 and "exists" in err
    code, out, _ = run(instance, "alias", "list")
    assert out.splitlines() == [
        f"@other.test -> {ALICE}",
        f"team@{DOMAIN} -> {ALICE}, bob@{DOMAIN}",
    ]
    # Deleting bob takes him out of the alias.
    code, out, _ = run(instance, "user", "del", f"bob@{DOMAIN}")
    assert f"removed from alias team@{DOMAIN}" in out
    assert run(instance, "alias", "list")[1].splitlines()[1] == f"team@{DOMAIN} -> {ALICE}"
    assert run(instance, "alias", "del", "@other.test")[0] == 0
    assert run(instance, "alias", "del", "@other.test")[0] == 1


def test_mail_ls_cat_reindex_and_delete_keeps_mail(instance: Instance) -> None:
    instance.add_user(ALICE)
    instance.start()
    with smtplib.SMTP("127.0.0.1", instance.port) as client:
        for n in range(3):
            client.sendmail(
                "s@remote.test", [ALICE], f"Subject: note {n}\r\n\r\nbody {n}\r\n".encode()
            )
    instance.stop()
    code, out, _ = run(instance, "mail", "ls", ALICE)
    lines = out.splitlines()
    assert lines[0].startswith(f"{ALICE} INBOX: 3 messages")
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert lines[3].endswith("note 2")
    code, out, _ = run(instance, "mail", "cat", ALICE, "2")
    assert out.endswith("Subject: note 1\r\n\r\nbody 1\r\n".replace("\r\n", "\n"))
    assert run(instance, "mail", "cat", ALICE, "9")[0] == 2
    assert run(instance, "mail", "ls", ALICE, "--mailbox", "Nope")[0] == 2

    if instance.cluster:
        # A cluster's index is PostgreSQL's: there are no files to rebuild it from.
        code, _, err = run(instance, "reindex", ALICE)
        assert code == 2 and "a cluster's is PostgreSQL's" in err, err
    else:
        # Lose the index: reindex rebuilds it from the files.
        account = instance.account_dir(ALICE)
        for name in ("index.db", "index.db-wal", "index.db-shm"):
            (account / name).unlink(missing_ok=True)
        code, out, _ = run(instance, "reindex", ALICE)
        assert (code, out.strip()) == (0, f"reindexed {ALICE}: 3 messages")
        assert run(instance, "mail", "ls", ALICE)[1].splitlines()[3].endswith("note 2")

    code, out, _ = run(instance, "user", "del", ALICE)
    assert code == 0
    if instance.cluster:
        # The account is gone, its mail stays in the store.
        assert "its mail stays in the cluster's store" in out
        assert run(instance, "user", "list")[1].split() == []
        assert [body.split(b"\r\n\r\n", 1)[1] for body in instance.message_bodies(ALICE)] == [
            f"body {n}\r\n".encode() for n in range(3)
        ]
    else:
        assert "mail moved to" in out
        assert not instance.account_dir(ALICE).exists()
        [kept] = (instance.data_dir / "deleted").iterdir()
        assert len(list((kept / "new").iterdir())) == 3
        shutil.rmtree(kept)


# -- machine-readable output and the commands the Ansible modules use ------------


def test_user_list_json_and_quota(instance: Instance) -> None:
    assert json.loads(run(instance, "user", "list", "--json")[1]) == []
    instance.add_user(ALICE)
    instance.add_user(f"bob@{DOMAIN}")
    code, out, _ = run(instance, "user", "quota", "Alice@Example.TEST", "1073741824")
    assert (code, out.strip()) == (0, f"quota of {ALICE}: 1073741824 bytes")
    code, out, _ = run(instance, "user", "quota", f"bob@{DOMAIN}")
    assert (code, out.strip()) == (0, f"quota of bob@{DOMAIN}: the global [limits] quota")
    code, out, _ = run(instance, "user", "list", "--json")
    assert code == 0
    assert json.loads(out) == [
        {"address": ALICE, "quota": 1073741824},
        {"address": f"bob@{DOMAIN}", "quota": 0},
    ]
    assert run(instance, "user", "list")[1].split() == [ALICE, f"bob@{DOMAIN}"]  # unchanged
    assert run(instance, "user", "quota", ALICE, "0")[0] == 0
    assert json.loads(run(instance, "user", "list", "--json")[1])[0]["quota"] == 0
    for args, expected, message in [
        ((f"ghost@{DOMAIN}", "10"), 1, f"no account ghost@{DOMAIN}"),
        ((ALICE, "--", "-1"), 1, "use a number of bytes, or 0 for the global quota"),
        ((ALICE, "1G"), 2, "invalid int value"),
    ]:
        code, _, err = run(instance, "user", "quota", *args)
        assert code == expected, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err


def test_user_verify(instance: Instance) -> None:
    instance.add_user(ALICE)

    def verify(address: str, password: str | None) -> tuple[int, str, str]:
        return run(instance, "user", "verify", address, "--password-stdin", stdin=password)

    assert verify(ALICE, PASSWORD + "\n") == (0, "", "")
    assert verify("ALICE@example.test", PASSWORD) == (0, "", "")
    # No match: exit 1 and not a word, so the answer is in the code alone.
    assert verify(ALICE, "not the password\n") == (1, "", "")
    assert verify(ALICE, PASSWORD.upper()) == (1, "", "")
    # Errors are 2 with a message, so they are never taken for "no match".
    for address, password, message in [
        (f"ghost@{DOMAIN}", PASSWORD, f"no account ghost@{DOMAIN}"),
        ("not-an-address", PASSWORD, "missing '@'"),
        (ALICE, "", "empty password"),
    ]:
        code, out, err = verify(address, password)
        assert (code, out) == (2, ""), (address, err)
        assert err.startswith("estafeta: ") and message in err, err
        assert PASSWORD not in err
    # Without --password-stdin and no terminal it refuses, like user add.
    assert run(instance, "user", "verify", ALICE, stdin=PASSWORD)[0] == 2


def test_user_verify_does_not_rehash(instance: Instance) -> None:
    instance.add_user(ALICE)
    db = instance.data_dir / "accounts.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        before = conn.execute("SELECT password_hash FROM accounts").fetchall()
    # Stronger parameters would make a login re-hash; a verify must not.
    text = instance.config.read_text().replace("argon2_time_cost = 1", "argon2_time_cost = 2")
    instance.config.write_text(text)
    assert run(instance, "user", "verify", ALICE, "--password-stdin", stdin=PASSWORD)[0] == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT password_hash FROM accounts").fetchall() == before


def test_alias_list_json(instance: Instance) -> None:
    assert json.loads(run(instance, "alias", "list", "--json")[1]) == {}
    instance.add_user(ALICE)
    instance.add_user(f"bob@{DOMAIN}")
    run(instance, "alias", "add", f"team@{DOMAIN}", f"bob@{DOMAIN}", ALICE)
    run(instance, "alias", "add", "@other.test", "friend@remote.test")
    code, out, _ = run(instance, "alias", "list", "--json")
    assert code == 0
    assert json.loads(out) == {
        "@other.test": ["friend@remote.test"],
        f"team@{DOMAIN}": [f"bob@{DOMAIN}", ALICE],  # targets in the order given
    }


def test_normalize(instance: Instance) -> None:
    code, out, _ = run(instance, "normalize", "Alice@Example.TEST.", "@Bücher.Test", '"bob"@x.test')
    assert (code, out.splitlines()) == (0, [ALICE, "@xn--bcher-kva.test", "bob@x.test"])
    code, out, _ = run(
        instance, "normalize", "--json", "--local", "Alice@EXAMPLE.test", "@other.test"
    )
    assert (code, json.loads(out)) == (0, [ALICE, "@other.test"])
    for args, message in [
        (("not-an-address",), "missing '@'"),
        (("@bad..test",), "empty label"),
        (("--local", "x@remote.test"), "domain remote.test is not one of the configured domains"),
    ]:
        code, out, err = run(instance, "normalize", *args)
        assert (code, out) == (1, ""), (args, err)
        assert err.startswith("estafeta: ") and message in err, (args, err)


def test_dkim_list_json_and_remove(instance: Instance) -> None:
    assert json.loads(run(instance, "dkim", "list", "--json")[1]) == []
    code, out, _ = run(instance, "dkim", "keygen", DOMAIN, "--selector", "r1")
    assert code == 0
    record = out.strip()
    code, out, _ = run(
        instance, "dkim", "keygen", "other.test", "--selector", "e1", "--algorithm", "ed25519"
    )
    assert code == 0
    code, out, _ = run(instance, "dkim", "list", "--json")
    keys = json.loads(out)
    assert [(k["domain"], k["selector"], k["algorithm"]) for k in keys] == [
        (DOMAIN, "r1", "rsa"),
        ("other.test", "e1", "ed25519"),
    ]
    assert keys[0]["txt"].startswith("v=DKIM1; k=rsa; p=")
    assert keys[1]["txt"].startswith("v=DKIM1; k=ed25519; p=")
    # The JSON value is the quoted record of keygen, unquoted and joined.
    assert record.startswith(f"r1._domainkey.{DOMAIN}. IN TXT ")
    chunks = record.split(" IN TXT ", 1)[1]
    assert "".join(c.strip('"') for c in chunks.split('" "')) == keys[0]["txt"]
    # One domain only, given in any case.
    code, out, _ = run(instance, "dkim", "list", "Other.TEST", "--json")
    assert [k["selector"] for k in json.loads(out)] == ["e1"]
    assert run(instance, "dkim", "list", "other.test")[1].startswith("e1._domainkey.other.test. ")

    code, out, _ = run(instance, "dkim", "remove", "OTHER.test", "--selector", "e1")
    assert code == 0 and "removed" in out
    assert not (instance.data_dir / "dkim" / "other.test" / "e1.pem").exists()
    assert [k["selector"] for k in json.loads(run(instance, "dkim", "list", "--json")[1])] == ["r1"]
    code, _, err = run(instance, "dkim", "remove", "other.test", "--selector", "e1")
    assert code == 1 and "no DKIM key" in err
    # The selector names a file: nothing outside the key folder can be named.
    for selector in ("../r1", "", "r1.pem"):
        code, _, err = run(instance, "dkim", "remove", DOMAIN, "--selector", selector)
        assert code == 2 and "use letters, digits" in err, err
    assert (instance.data_dir / "dkim" / DOMAIN / "r1.pem").exists()
