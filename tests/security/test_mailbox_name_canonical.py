"""Issue 14 item 14: INBOX in other cases, and names that display as others.

The attack: ``CREATE inbox/x`` was stored as "INBOX/x" but ``SELECT
inbox/x`` said NONEXISTENT (only CREATE canonicalised the name;
rfc9051:5.1: INBOX is case-insensitive, also as the first level). And names
with bidirectional overrides (U+202E) or other invisible format characters
were accepted: "abc<U+202E>txt.exe" displays as "abcexe.txt", a mailbox can
pose as another.

Now every lookup canonicalises the name as CREATE does (the first level
INBOX in any case, Unicode NFC as rfc6855:3 and rfc5198:2 ask), and a new
name with a control, format, private-use, unassigned or noncharacter code
point gets NO [CANNOT] (rfc5530:3), whether it came as UTF-8 or modified
UTF-7. The estafeta CLI finds mailboxes the same way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from estafeta.imap.parser import encode_mutf7
from tests.security.conftest import (
    ALICE,
    MailServer,
    imap_login,
    start_server,
)

MESSAGE = b"Subject: hello\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    server = start_server(tmp_path_factory.mktemp("names"), auth_config="allow_plaintext = true\n")
    try:
        yield server
    finally:
        server.stop()


class Imap:
    def __init__(self, server: MailServer) -> None:
        self.client = imap_login(server, ALICE)
        self.count = 0

    def expect(self, status: str, command: str | bytes) -> tuple[list[bytes], bytes]:
        self.count += 1
        tag = f"t{self.count}"
        untagged, tagged = self.client.imap(tag, command)
        assert tagged.startswith(f"{tag} {status}".encode()), (command, tagged)
        return untagged, tagged

    def append(self, mailbox: bytes, status: str = "OK") -> bytes:
        self.count += 1
        tag = f"t{self.count}".encode()
        self.client.send(
            tag + b" APPEND " + mailbox + b" {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n"
        )
        _, tagged = self.client.until_tagged(tag.decode())
        assert tagged.startswith(tag + b" " + status.encode()), tagged
        return tagged

    def listed(self, pattern: str = "*") -> list[bytes]:
        untagged, _ = self.expect("OK", f'LIST "" "{pattern}"')
        return [line.rsplit(b'"/" ', 1)[1].strip() for line in untagged]

    def messages(self, mailbox: str) -> int:
        [line], _ = self.expect("OK", f'STATUS "{mailbox}" (MESSAGES)')
        return int(re.search(rb"MESSAGES (\d+)", line).group(1))  # type: ignore[union-attr]


@pytest.fixture
def imap(server: MailServer) -> Iterator[Imap]:
    client = Imap(server)
    yield client
    client.client.close()


@pytest.mark.parametrize("inbox", ["inbox", "Inbox", "iNbOx", "INBOX"])
def test_inbox_level_in_any_case_is_one_mailbox(imap: Imap, inbox: str) -> None:
    name = f"{inbox}/{inbox}-child"  # unique per case; the second level keeps its case
    stored = f'"INBOX/{inbox}-child"'.encode()
    imap.expect("OK", f'CREATE "{name}"')
    for variant in {name, name.replace(inbox, "INBOX", 1), name.replace(inbox, "inBOX", 1)}:
        imap.expect("NO [ALREADYEXISTS]", f'CREATE "{variant}"')
        untagged, _ = imap.expect("OK", f'SELECT "{variant}"')
        assert any(line.endswith(b'"/" ' + stored + b"\r\n") for line in untagged), untagged
        imap.expect("OK", f'STATUS "{variant}" (MESSAGES UIDNEXT)')
    assert stored in imap.listed("inbox/*")
    imap.append(f'"inbox/{inbox}-child"'.encode())
    assert imap.messages(f"INBOX/{inbox}-child") == 1
    imap.expect("OK", f'SUBSCRIBE "{name}"')
    untagged, _ = imap.expect("OK", 'LSUB "" "Inbox/%"')
    assert any(line.endswith(stored + b"\r\n") for line in untagged), untagged
    imap.expect("OK", "UNSELECT")
    imap.expect("OK", f'RENAME "{name}" "inbox/{inbox}-renamed"')
    assert f'"INBOX/{inbox}-renamed"'.encode() in imap.listed("INBOX/*")
    assert stored not in imap.listed("INBOX/*")
    imap.expect("OK", f'DELETE "iNBOX/{inbox}-renamed"')
    assert f'"INBOX/{inbox}-renamed"'.encode() not in imap.listed("INBOX/*")


# rfc6855:3 / rfc5198:2 and the Unicode categories: what may not be in a name.
REFUSED = {
    "U+202E": "\u202e",  # RIGHT-TO-LEFT OVERRIDE (Cf, bidi)
    "U+200E": "\u200e",  # LEFT-TO-RIGHT MARK (Cf)
    "U+2066": "\u2066",  # LEFT-TO-RIGHT ISOLATE (Cf)
    "U+200D": "\u200d",  # ZERO WIDTH JOINER (Cf)
    "U+200B": "\u200b",  # ZERO WIDTH SPACE (Cf)
    "U+FEFF": "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (Cf)
    "U+2028": "\u2028",  # LINE SEPARATOR (Zl)
    "U+0085": "\x85",  # NEXT LINE (Cc, C1)
    "U+E000": "\ue000",  # private use (Co)
    "U+FDD0": "\ufdd0",  # noncharacter
}


@pytest.mark.parametrize("encoding", ["mutf7", "utf8"])
@pytest.mark.parametrize("code", list(REFUSED))
def test_invisible_and_control_characters_are_refused(imap: Imap, code: str, encoding: str) -> None:
    name = f"invoice{REFUSED[code]}fdp.exe"
    wire = (
        f'"{encode_mutf7(name)}"'.encode()
        if encoding == "mutf7"
        else b'"' + name.encode("utf-8") + b'"'
    )
    before = imap.listed()
    _, tagged = imap.expect("NO [CANNOT]", b"CREATE " + wire)
    assert code.encode() in tagged, tagged
    safe = f"Safe-{code}-{encoding}"
    imap.expect("OK", f"CREATE {safe}")
    _, tagged = imap.expect("NO [CANNOT]", f"RENAME {safe} ".encode() + wire)
    assert code.encode() in tagged
    imap.expect("NO [CANNOT]", f'CREATE "{safe}/'.encode() + wire[1:])
    imap.expect("NO [NONEXISTENT]", b"SELECT " + wire)
    imap.expect("NO [NONEXISTENT]", b"STATUS " + wire + b" (MESSAGES)")
    # A subscription needs no mailbox (rfc9051:6.3.7), but the name must be
    # one a mailbox could have.
    _, tagged = imap.expect("NO [CANNOT]", b"SUBSCRIBE " + wire)
    assert code.encode() in tagged, tagged
    imap.expect("NO [NONEXISTENT]", b"DELETE " + wire)
    imap.append(wire, "NO [CANNOT]")
    assert sorted(imap.listed()) == sorted([*before, f'"{safe}"'.encode()])
    imap.expect("OK", f"DELETE {safe}")


def test_names_are_stored_in_nfc(imap: Imap) -> None:
    """rfc6855:3 (rfc5198:2): "Café" sent decomposed is "Café" composed,
    one mailbox whichever way a client writes it."""
    decomposed, composed = "Cafe\u0301", "Caf\u00e9"
    imap.expect("OK", b'CREATE "' + decomposed.encode() + b'"')
    assert b'"Caf&AOk-"' in imap.listed("Caf*")  # U+00E9 in modified UTF-7
    assert b'"Cafe&AwE-"' not in imap.listed("Caf*")
    imap.expect("NO [ALREADYEXISTS]", f'CREATE "{encode_mutf7(composed)}"')
    imap.append(f'"{encode_mutf7(decomposed)}"'.encode())
    assert imap.messages(encode_mutf7(composed)) == 1
    imap.expect("OK", f'SELECT "{encode_mutf7(decomposed)}"')
    imap.expect("OK", "UNSELECT")
    imap.expect("OK", f'DELETE "{encode_mutf7(decomposed)}"')
    assert imap.listed("Caf*") == []


def cli(server: MailServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", str(server.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_finds_mailboxes_the_same_way(server: MailServer, imap: Imap) -> None:
    imap.expect("OK", "CREATE INBOX/cli")
    imap.append(b"INBOX/cli")
    for variant in ("inbox/cli", "Inbox/cli", "INBOX/cli"):
        result = cli(server, "mail", "ls", ALICE, "--mailbox", variant)
        assert result.returncode == 0, result.stderr
        assert "INBOX/cli: 1 messages" in result.stdout and "hello" in result.stdout
        result = cli(server, "mail", "cat", ALICE, "1", "--mailbox", variant)
        assert result.returncode == 0 and "hello" in result.stdout
    result = cli(server, "mail", "ls", ALICE, "--mailbox", "INBOX/cli\u202e")
    assert result.returncode == 2 and "no mailbox" in result.stderr
    assert "Traceback" not in result.stderr
