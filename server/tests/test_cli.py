"""The estafeta command: account and alias management, reindex, mail ls/cat."""

from __future__ import annotations

import shutil
import smtplib

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

    # Lose the index: reindex rebuilds it from the files.
    account = instance.account_dir(ALICE)
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (account / name).unlink(missing_ok=True)
    code, out, _ = run(instance, "reindex", ALICE)
    assert (code, out.strip()) == (0, f"reindexed {ALICE}: 3 messages")
    assert run(instance, "mail", "ls", ALICE)[1].splitlines()[3].endswith("note 2")

    code, out, _ = run(instance, "user", "del", ALICE)
    assert "mail moved to" in out
    assert not account.exists()
    [kept] = (instance.data_dir / "deleted").iterdir()
    assert len(list((kept / "new").iterdir())) == 3
    shutil.rmtree(kept)
