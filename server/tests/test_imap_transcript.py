"""Every IMAP command in one scripted session, modelled on the RFC examples.

The script runs twice against fresh servers: once with each command sent
whole, once one byte per send. Both runs must satisfy every expectation
and produce the same transcript (volatile numbers masked).
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import time
from pathlib import Path

import pytest

from conftest import DOMAIN, PASSWORD, Instance, free_port

ALICE = f"alice@{DOMAIN}"
PLAIN = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()

# (what the client sends, regexes the server's reply must contain). The
# last regex of each step is the tagged completion that ends the reply.
SCRIPT: list[tuple[bytes, list[str]]] = [
    (b"a1 CAPABILITY\r\n", [r"\* CAPABILITY IMAP4rev1 IMAP4rev2 .*AUTH=PLAIN", r"a1 OK"]),
    (b"a2 NOOP\r\n", [r"a2 OK"]),
    (f"a3 AUTHENTICATE PLAIN {PLAIN}\r\n".encode(), [r"a3 OK \[CAPABILITY [^\]]*\] Logged in"]),
    (b"a4 ENABLE CONDSTORE\r\n", [r"\* ENABLED CONDSTORE", r"a4 OK"]),
    (b'a5 ID ("name" "test")\r\n', [r'\* ID \("name" "estafeta"', r"a5 OK"]),
    # rfc2342:5 with the shared namespace (docs/shared-mailboxes.md)
    (
        b"a6 NAMESPACE\r\n",
        [r"\* NAMESPACE \(\(\"\" \"/\"\)\) NIL \(\(\"Shared/\" \"/\"\)\)", r"a6 OK"],
    ),
    (b"a7 CREATE Projects/2026 (USE (\\Flagged))\r\n", [r"a7 OK"]),
    (b"a8 CREATE Projects/2026\r\n", [r"a8 NO \[ALREADYEXISTS\]"]),
    (b"a9 RENAME Projects/2026 Projects/Done\r\n", [r"a9 OK"]),
    (b"b1 SUBSCRIBE Projects/Done\r\n", [r"b1 OK"]),
    (
        b'b2 LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN STATUS (MESSAGES))\r\n',
        [
            r'\* LIST \(\\HasNoChildren \\Subscribed\) "/" "?INBOX"?',
            r"STATUS \"?INBOX\"? \(MESSAGES 2\)",
            r'\* LIST \(\\HasNoChildren \\Subscribed \\Flagged\) "/" "?Projects/Done"?',
            r"b2 OK",
        ],
    ),
    (b'b3 LSUB "" "Projects/%"\r\n', [r'\* LSUB \(\) "/" "?Projects/Done"?', r"b3 OK"]),
    (b"b4 UNSUBSCRIBE Projects/Done\r\n", [r"b4 OK"]),
    (b"b5 DELETE Projects/Done\r\n", [r"b5 OK"]),
    (
        b"b6 STATUS INBOX (MESSAGES UIDNEXT UNSEEN SIZE)\r\n",
        [r"\* STATUS \"?INBOX\"? \(MESSAGES 2 UIDNEXT 3 UNSEEN 2 SIZE \d+\)", r"b6 OK"],
    ),
    (b"b7 APPEND Drafts (\\Draft) {30}\r\n", [r"\+ "]),
    (b"Subject: draft\r\n\r\nwork on it\r\n\r\n", [r"b7 OK \[APPENDUID \d+ 1\]"]),
    (b"b8 APPEND Drafts {20+}\r\nSubject: two\r\n\r\nhi\r\n\r\n", [r"b8 OK \[APPENDUID \d+ 2\]"]),
    (b"b9 APPEND Nowhere {4+}\r\nhi\r\n\r\n", [r"b9 NO \[TRYCREATE\]"]),
    (b"c1 EXAMINE Drafts\r\n", [r"\* 2 EXISTS", r"c1 OK \[READ-ONLY\]"]),
    (
        b"c2 SELECT INBOX (CONDSTORE)\r\n",
        [
            r"\* OK \[CLOSED\]",
            r"\* 2 EXISTS",
            r"\* 2 RECENT",  # rfc3501:2.3.2: the first session to see them
            r"\* OK \[UIDVALIDITY \d+\]",
            r"\* OK \[HIGHESTMODSEQ \d+\]",
            r"c2 OK \[READ-WRITE\]",
        ],
    ),
    (
        b"c3 FETCH 1:2 (UID FLAGS RFC822.SIZE)\r\n",
        [
            r"\* 1 FETCH \(UID 1 FLAGS \(\\Recent\) RFC822.SIZE \d+\)",
            r"\* 2 FETCH \(UID 2 ",
            r"c3 OK",
        ],
    ),
    (
        b"c4 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
        [r"BODY\[HEADER.FIELDS \(SUBJECT\)\] (\{\d+\}|\")", r"Subject: first", r"c4 OK"],
    ),
    (
        b"c5 FETCH 1 (BODY[TEXT]<0.5>)\r\n",
        [r"BODY\[TEXT\]<0> (\{5\}\r\nhello|\"hello\")", r"FLAGS \(\\Recent \\Seen\)", r"c5 OK"],
    ),
    (
        b"c6 FETCH 2 (ENVELOPE BODYSTRUCTURE)\r\n",
        [
            r'ENVELOPE \("Mon, 23 Nov 2026 10:00:00 \+0000" "second"',
            r'BODYSTRUCTURE \("text" "plain"',
            r"c6 OK",
        ],
    ),
    (b"c7 STORE 2 +FLAGS.SILENT (\\Flagged)\r\n", [r"\* 2 FETCH \(MODSEQ \(\d+\)\)", r"c7 OK"]),
    (
        b"c8 STORE 1 +FLAGS (\\Answered)\r\n",
        [r"\* 1 FETCH \(UID 1 FLAGS \(\\Recent \\Seen \\Answered\)", r"c8 OK"],
    ),
    (b"c9 STORE 1,2 (UNCHANGEDSINCE 1) +FLAGS (x)\r\n", [r"c9 OK \[MODIFIED 1:2\]"]),
    (
        b"d1 SEARCH RETURN (MIN MAX COUNT) FLAGGED\r\n",
        [r'\* ESEARCH \(TAG "d1"\) MIN 2 MAX 2 COUNT 1', r"d1 OK"],
    ),
    (b"d2 UID SEARCH SUBJECT second\r\n", [r"\* SEARCH 2", r"d2 OK"]),
    (b"d3 SEARCH UNSEEN\r\n", [r"\* SEARCH 2\r\n", r"d3 OK"]),
    (b"d4 COPY 1 Archive\r\n", [r"d4 OK \[COPYUID \d+ 1 1\]"]),
    (b"d5 UID MOVE 2 Trash\r\n", [r"\* OK \[COPYUID \d+ 2 1\]", r"\* 2 EXPUNGE", r"d5 OK"]),
    (b"d6 STORE 1 +FLAGS (\\Deleted)\r\n", [r"d6 OK"]),
    (b"d7 UID EXPUNGE 5\r\n", [r"d7 OK"]),
    (b"d8 EXPUNGE\r\n", [r"\* 1 EXPUNGE", r"d8 OK"]),
    (b"d9 CHECK\r\n", [r"d9 OK"]),
    (b"e1 GETQUOTAROOT INBOX\r\n", [r'\* QUOTAROOT "?INBOX"? ""', r'\* QUOTA "" \(', r"e1 OK"]),
    (b'e2 GETQUOTA ""\r\n', [r'\* QUOTA "" \(', r"e2 OK"]),
    (b"e3 SELECT Archive\r\n", [r"\* 1 EXISTS", r"\* 1 RECENT", r"e3 OK"]),
    (b"e4 UNSELECT\r\n", [r"e4 OK"]),
    (b"e5 FETCH 1 FLAGS\r\n", [r"e5 BAD"]),  # nothing selected
    (b"e6 SELECT Trash\r\n", [r"\* 1 EXISTS", r"e6 OK"]),
    (b"e7 STORE 1 +FLAGS (\\Deleted)\r\n", [r"e7 OK"]),
    (b"e8 CLOSE\r\n", [r"e8 OK"]),
    (b"e9 STATUS Trash (MESSAGES)\r\n", [r"\* STATUS \"?Trash\"? \(MESSAGES 0\)", r"e9 OK"]),
    # rfc4314:3 on personal mailboxes (shared ones: test_imap_shared.py)
    (b"g1 MYRIGHTS INBOX\r\n", [r'\* MYRIGHTS "INBOX" "lrswipkxteacd"', r"g1 OK"]),
    (b"g2 GETACL Trash\r\n", [rf'\* ACL "Trash" "{ALICE}" "lrswipkxteacd"', r"g2 OK"]),
    (b"g3 LISTRIGHTS INBOX anyone\r\n", [r'\* LISTRIGHTS "INBOX" "anyone" ""\r\n', r"g3 OK"]),
    (b"g4 SETACL INBOX anyone +l\r\n", [r"g4 NO \[CANNOT\]"]),
    (b"g5 DELETEACL INBOX anyone\r\n", [r"g5 NO \[CANNOT\]"]),
    (b"g6 SETACL Shared/none anyone +l\r\n", [r"g6 NO \[NONEXISTENT\]"]),
    (
        b'g7 LIST "" "Tr*" RETURN (MYRIGHTS)\r\n',
        [r'\* LIST \(\\HasNoChildren \\Trash\) "/" "Trash"', r'\* MYRIGHTS "Trash" "lrs', r"g7 OK"],
    ),
    (b"f1 LOGOUT\r\n", [r"\* BYE", r"f1 OK"]),
]


def deliver(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for subject in ("first", "second"):
            client.sendmail(
                "s@remote.test",
                [ALICE],
                f"Subject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
                f"hello {subject}\r\n".encode(),
            )


def run_script(
    port: int, byte_at_a_time: bool, script: list[tuple[bytes, list[str]]] = SCRIPT
) -> str:
    transcript = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""

        def read_until(pattern: str) -> str:
            nonlocal buffer
            deadline = time.monotonic() + 10
            while not re.search(pattern.encode(), buffer):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {pattern!r} in {buffer!r}")
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    raise AssertionError(f"timed out; no {pattern!r} in {buffer!r}") from None
                if not chunk:
                    raise AssertionError(f"closed; no {pattern!r} in {buffer!r}")
                buffer += chunk
            end = re.search(pattern.encode(), buffer).end()  # type: ignore[union-attr]
            line_end = buffer.find(b"\r\n", end)
            end = len(buffer) if line_end < 0 else line_end + 2
            text, buffer = buffer[:end], buffer[end:]
            return text.decode("utf-8", "replace")

        transcript.append(read_until(r"\* OK .*\r\n"))
        for command, expected in script:
            if byte_at_a_time:
                for byte in command:
                    sock.sendall(bytes([byte]))
            else:
                sock.sendall(command)
            reply = read_until(expected[-1])
            for pattern in expected:
                assert re.search(pattern, reply), (command, pattern, reply)
            bad = re.search(r"\bBAD\b", reply)  # not BADURL, BADCHARSET
            assert not bad or expected[-1].endswith("BAD"), (command, reply)
            transcript.append(reply)
    masked = re.sub(r"(UIDVALIDITY|COPYUID|APPENDUID) \d+", r"\1 N", "".join(transcript))
    masked = re.sub(r"(MODSEQ|HIGHESTMODSEQ|SIZE|STORAGE) \(?\d+", r"\1 N", masked)
    # rfc8474 object ids and the rfc8514 save date differ from server to server.
    masked = re.sub(r"(MAILBOXID|EMAILID|THREADID) \([\w-]+\)", r"\1 (N)", masked)
    masked = re.sub(r'SAVEDATE "[^"]*"', 'SAVEDATE "N"', masked)
    return re.sub(r"\{\d+\}", "{N}", masked)


class RawReader:
    """A raw IMAP connection's input, read up to a pattern: what a client
    sees of responses that come with no command of its own (IDLE, NOTIFY)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.got = b""

    def until(self, pattern: bytes) -> bytes:
        """Everything received up to the end of what ``pattern`` matches."""
        while not re.search(pattern, self.got):
            chunk = self.sock.recv(65536)
            assert chunk, self.got
            self.got += chunk
        found, self.got = self.got, b""
        return found


def start(tmp_path: Path, name: str) -> Instance:
    root = tmp_path / name
    root.mkdir()
    server = Instance(root, free_port(), imap_port=free_port())
    # Loopback test: plaintext AUTH is allowed explicitly.
    server.extra_config = ""
    server.write_config()
    server.config.write_text(
        server.config.read_text().replace("allow_plaintext = false", "allow_plaintext = true")
    )
    server.add_user(ALICE)
    server.start()
    deliver(server.port)
    return server


def run_both_ways(tmp_path: Path, script: list[tuple[bytes, list[str]]] = SCRIPT) -> str:
    """``script`` against two fresh servers, sent whole and one byte at a
    time: both transcripts must agree and neither server log a traceback.
    Returns the (masked) transcript."""
    whole_server = start(tmp_path, "whole")
    bytes_server = start(tmp_path, "bytes")
    try:
        whole = run_script(whole_server.imap_port, byte_at_a_time=False, script=script)
        one_byte = run_script(bytes_server.imap_port, byte_at_a_time=True, script=script)
    finally:
        for server in (whole_server, bytes_server):
            if server.process is not None:
                server.stop()
    assert whole == one_byte
    assert "Traceback" not in whole_server.log_text() + bytes_server.log_text()
    return whole


@pytest.mark.slow
def test_every_command_whole_and_byte_by_byte(tmp_path: Path) -> None:
    run_both_ways(tmp_path)
