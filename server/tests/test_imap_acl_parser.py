"""The rfc4314 ACL commands and rfc8440 LIST RETURN (MYRIGHTS) in the sans-IO
parser: every transcript fed whole and in every chunk size from 1 octet
(``run`` of test_imap_parser requires the same events each time)."""

from __future__ import annotations

import pytest
from test_imap_parser import error_of, run

from estafeta.imap import commands as c
from estafeta.imap.parser import MAX_IDENTIFIER, Command

ALICE = "alice@example.test"

# rfc4314:3 examples, with our mailbox names.
TRANSCRIPT = (
    b"A001 SETACL Shared/info fred +cda\r\n"
    b'A002 SETACL "Shared/info" "bob@example.test" lrswi\r\n'
    b"A003 DELETEACL Shared/info fred\r\n"
    b"A004 GETACL Shared/info\r\n"
    b"A005 LISTRIGHTS Shared/info anyone\r\n"
    b"A006 MYRIGHTS INBOX\r\n"
    b"A007 setacl Shared/info {16+}\r\nbob@example.test -w\r\n"
    b'A008 LIST "" "*" RETURN (MYRIGHTS)\r\n'
    b'A009 SETACL Shared/info anyone ""\r\n'
)


def test_acl_commands_whole_and_byte_by_byte() -> None:
    assert run(TRANSCRIPT) == [
        Command("A001", "SETACL", c.SetAcl("Shared/info", "fred", "+cda")),
        Command("A002", "SETACL", c.SetAcl("Shared/info", "bob@example.test", "lrswi")),
        Command("A003", "DELETEACL", c.DeleteAcl("Shared/info", "fred")),
        Command("A004", "GETACL", c.GetAcl("Shared/info")),
        Command("A005", "LISTRIGHTS", c.ListRights("Shared/info", "anyone")),
        Command("A006", "MYRIGHTS", c.MyRights("INBOX")),
        Command("A007", "SETACL", c.SetAcl("Shared/info", "bob@example.test", "-w")),
        Command("A008", "LIST", c.List("", ("*",), (), ("MYRIGHTS",))),
        Command("A009", "SETACL", c.SetAcl("Shared/info", "anyone", "")),
    ]


def test_utf8_identifier() -> None:
    line = 'B1 LISTRIGHTS INBOX "jos\u00e9@example.test"\r\n'.encode()
    expected = c.ListRights("INBOX", "jos\u00e9@example.test")
    assert run(line) == [Command("B1", "LISTRIGHTS", expected)]


@pytest.mark.parametrize(
    ("line", "text"),
    [
        # rfc4314:3.1 example: upper case rights are BAD.
        (b"A035 SETACL INBOX/Drafts John lrQswicda\r\n", "rights"),
        (b"A1 SETACL INBOX John lr x\r\n", "expected"),
        (b"A1 SETACL INBOX John\r\n", "rights"),
        (b"A1 SETACL INBOX John +-lr\r\n", "rights"),
        (b"A1 SETACL INBOX John " + b"l" * 33 + b"\r\n", "rights"),
        (b"A1 GETACL\r\n", "mailbox"),
        (b"A1 MYRIGHTS INBOX extra\r\n", "expected"),
        (b"A1 DELETEACL INBOX\r\n", "identifier"),
        (b'A1 DELETEACL INBOX ""\r\n', "identifier"),
        (b"A1 LISTRIGHTS INBOX " + b"x" * (MAX_IDENTIFIER + 1) + b"\r\n", "identifier"),
        (b'A1 LISTRIGHTS INBOX "a\\"b\x01"\r\n', "identifier"),
        (b'A1 LIST "" "*" RETURN (MYRIGHTS FOO)\r\n', "return option"),
    ],
)
def test_acl_command_errors(line: bytes, text: str) -> None:
    error = error_of(line)
    assert text in error.text, error.text
