"""ManageSieve (rfc5804) against a real server: sievelib's client over STARTTLS,
and raw transcripts for every command, response code, limit and failure."""

from __future__ import annotations

import base64
import hashlib
import imaplib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from sievelib.managesieve import Client

from conftest import DOMAIN, PASSWORD, Instance, free_port, make_tls

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"
DAVE = f"dave@{DOMAIN}"
ERIN = f"erin@{DOMAIN}"
TOTP_USER = f"totp@{DOMAIN}"
MAX_SCRIPT_SIZE = 2000
MAX_SCRIPTS = 3
SLACK = 1024  # estafeta.managesieve.session.LITERAL_SLACK
GOOD = 'require "fileinto";\r\nif header :contains "list-id" "dev" { fileinto "Lists/dev"; }\r\n'
BAD = "keep;\r\nbogus_command;\r\n"  # an unknown command on line 2, column 1


def plain(user: str, secret: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


def with_listener(inst: Instance, port: int) -> None:
    """Write the config with a managesieve listener (conftest knows none)."""
    inst.write_config()
    text = inst.config.read_text()
    inst.config.write_text(
        text.replace("[listen]\n", f'[listen]\nmanagesieve = ["127.0.0.1:{port}"]\n', 1)
    )


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@dataclass
class Sieve:
    inst: Instance
    port: int
    context: ssl.SSLContext
    totp: dict[str, str]


@pytest.fixture(scope="module")
def sieve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sieve]:
    root = tmp_path_factory.mktemp("managesieve")
    section, ca = make_tls(root)
    port = free_port()
    inst = Instance(
        root,
        free_port(),
        imap_port=free_port(),
        extra_config=section
        + f"[sieve]\nmax_script_size = {MAX_SCRIPT_SIZE}\nmax_scripts = {MAX_SCRIPTS}\n",
        # Lockouts quickly, for the tests from 127.0.0.7 only (the guard
        # counts per address: the other tests come from 127.0.0.1).
        auth_config="pair_max_failures = 2\nip_max_failures = 50\ndelay_base = 0.01\n"
        "max_delay = 0.02\n",
    )
    with_listener(inst, port)
    for user in (ALICE, BOB, CAROL, DAVE, ERIN, TOTP_USER):
        inst.add_user(user)
    # An account with TOTP: its password opens nothing; app passwords do,
    # for their protocols only.
    enrol = inst.cli("totp", "enroll", TOTP_USER, "--png", str(root / "qr.png"))
    secret = parse_qs(urlsplit(re.search(r"otpauth://\S+", enrol.stdout).group(0)).query)  # type: ignore[union-attr]
    totp = pyotp.TOTP(secret["secret"][0])
    passwords = {}
    for (name, protocols), code in zip(
        (("sieve", "sieve"), ("mail", "imap,pop3,smtp")),
        (totp.now(), totp.at(time.time() + 30)),
        strict=True,
    ):
        created = inst.cli(
            "app-password", "create", TOTP_USER, "--name", name, "--protocols", protocols,
            "--code", code,
        )  # fmt: skip
        passwords[name] = created.stdout.strip()
    inst.start()
    wait_listening(port)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield Sieve(inst, port, context, passwords)
    if inst.process is not None:
        inst.kill()
    assert "Traceback" not in inst.log_text()


OPEN: list[Raw] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class Raw:
    """A ManageSieve client that sends bytes and returns the server's bytes."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.buffer = b""
        OPEN.append(self)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buffer)
        self.buffer += chunk

    def line(self) -> bytes:
        """One logical line, literals included, with its CRLF."""
        out = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._fill()
            end = self.buffer.index(b"\r\n") + 2
            part, self.buffer = self.buffer[:end], self.buffer[end:]
            out += part
            literal = re.search(rb"\{(\d+)\}\r\n\Z", part)
            if literal is None:
                return out
            size = int(literal.group(1))
            while len(self.buffer) < size:
                self._fill()
            out += self.buffer[:size]
            self.buffer = self.buffer[size:]

    def response(self) -> bytes:
        """Lines up to and including the completion (OK, NO or BYE)."""
        out = b""
        while True:
            line = self.line()
            out += line
            if re.match(rb"(OK|NO|BYE)\b", line):
                return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, data: bytes) -> bytes:
        self.send(data)
        return self.response()

    def closed(self) -> bool:
        """Does the server close the connection (after what it still sends)?"""
        try:
            while len(self.buffer) < 65536:
                self._fill()
        except (EOFError, ConnectionError, ssl.SSLError):
            return True
        return False

    def starttls(self, context: ssl.SSLContext) -> bytes:
        assert self.command(b"STARTTLS\r\n") == b'OK "Begin TLS negotiation now"\r\n'
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        return self.response()  # rfc5804:2.2: the capabilities again

    def login(self, context: ssl.SSLContext, user: str, secret: str = PASSWORD) -> None:
        self.response()  # greeting
        self.starttls(context)
        reply = self.command(b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(user, secret).encode())
        assert reply == b'OK "Logged in"\r\n'


def capabilities(reply: bytes) -> dict[str, str | None]:
    caps: dict[str, str | None] = {}
    for line in reply.splitlines()[:-1]:
        found = re.fullmatch(rb'"([^"]+)"(?: "([^"]*)")?', line)
        assert found, line
        caps[found.group(1).decode()] = found.group(2).decode() if found.group(2) else None
        if found.group(2) is not None and not found.group(2):
            caps[found.group(1).decode()] = ""
    return caps


def test_sievelib_over_starttls(sieve: Sieve, monkeypatch: pytest.MonkeyPatch) -> None:
    # sievelib makes its own default context: give it one that trusts our CA.
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: sieve.context)
    client = Client("127.0.0.1", sieve.port)
    assert client.connect(ALICE, PASSWORD, starttls=True, authmech="PLAIN")
    assert client.get_implementation() == "estafeta"
    assert {"fileinto", "vacation", "envelope"} <= set(client.get_sieve_capabilities())
    assert client.get_sasl_mechanisms() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN"]
    assert client.havespace("rules", len(GOOD))
    assert client.putscript("rules", GOOD)
    assert client.checkscript(GOOD)
    assert not client.checkscript(BAD)
    assert not client.putscript("broken", BAD)
    assert re.match(rb"2:1: ", client.errmsg), client.errmsg
    assert client.setactive("rules")
    assert client.putscript("spare", "keep;\r\n")
    assert client.listscripts() == ("rules", ["spare"])
    assert client.getscript("rules") == GOOD.replace("\r\n", "\n").rstrip("\n")
    assert client.renamescript("spare", "other")
    assert not client.deletescript("rules")
    assert client.errcode == b"ACTIVE"
    assert client.deletescript("other")
    assert not client.havespace("x" * 5, MAX_SCRIPT_SIZE + 1)
    assert client.errcode == b"QUOTA/MAXSIZE"
    client.logout()
    # What a delivery will run: the script, byte for byte, and the active mark.
    if sieve.inst.cluster:
        rows = sieve.inst.cluster_sql(
            "SELECT address, name, active, encode(sha256(convert_to(content, 'UTF8')), 'hex')"
            " FROM sieve_scripts"
        )
        digest = hashlib.sha256(GOOD.encode()).hexdigest()
        assert rows == f"alice@{DOMAIN}|rules|t|{digest}"
        return
    account = sieve.inst.data_dir / "sieve" / DOMAIN / "alice"
    assert (account / "rules.sieve").read_bytes() == GOOD.encode()
    assert (account / "active").read_text() == "rules"
    assert sorted(p.name for p in account.glob("*.sieve")) == ["rules.sieve"]


def test_before_tls(sieve: Sieve) -> None:
    raw = Raw(sieve.port)
    greeting = raw.response()
    caps = capabilities(greeting)
    assert greeting.endswith(b'OK "mx.example.test estafeta ManageSieve ready"\r\n')
    # rfc5804:1.7: SASL is empty while STARTTLS is offered; VERSION, SIEVE, IMPLEMENTATION.
    assert caps["SASL"] == "" and "STARTTLS" in caps and caps["VERSION"] == "1.0"
    assert caps["IMPLEMENTATION"] == "estafeta" and "fileinto" in (caps["SIEVE"] or "").split()
    assert caps["MAXREDIRECTS"] == "4" and "UNAUTHENTICATE" in caps and "OWNER" not in caps
    reply = raw.command(b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(ALICE).encode())
    assert reply == b'NO (ENCRYPT-NEEDED) "Authenticate after STARTTLS"\r\n'
    assert raw.command(b"LISTSCRIPTS\r\n") == b'NO "LISTSCRIPTS: authenticate first"\r\n'
    assert raw.command(b"UNAUTHENTICATE\r\n") == b'NO "UNAUTHENTICATE: authenticate first"\r\n'
    assert raw.command(b'NOOP "sync-1"\r\n') == b'OK (TAG "sync-1") "Done"\r\n'
    assert raw.command(b"CAPABILITY\r\n") == greeting.replace(
        b'OK "mx.example.test estafeta ManageSieve ready"', b'OK "CAPABILITY completed"'
    )
    after = raw.starttls(sieve.context)
    caps = capabilities(after)
    assert caps["SASL"] == "SCRAM-SHA-256-PLUS SCRAM-SHA-256 PLAIN" and "STARTTLS" not in caps
    assert after.endswith(b'OK "TLS negotiation successful"\r\n')
    assert raw.command(b"STARTTLS\r\n") == b'NO "STARTTLS is not available"\r\n'
    assert raw.command(b"LOGOUT\r\n") == b'OK "Logout completed"\r\n'
    assert raw.closed()


def test_every_command(sieve: Sieve) -> None:
    raw = Raw(sieve.port)
    raw.login(sieve.context, BOB)
    script = b"keep;\r\n"
    transcript = [
        (b'PUTSCRIPT "a" {%d+}\r\n%s\r\n' % (len(script), script), b'OK "Script stored"\r\n'),
        (b'PUTSCRIPT "b" {7}\r\ndiscard\r\n', None),  # syntax error: checked below
        (b'HAVESPACE "b" 100\r\n', b'OK "Putscript would succeed"\r\n'),
        (b"LISTSCRIPTS\r\n", b'"a"\r\nOK "Listscripts completed"\r\n'),
        (b'SETACTIVE "a"\r\n', b'OK "Active script set"\r\n'),
        (b"LISTSCRIPTS\r\n", b'"a" ACTIVE\r\nOK "Listscripts completed"\r\n'),
        (b'GETSCRIPT "a"\r\n', b'{7}\r\nkeep;\r\n\r\nOK "Getscript completed"\r\n'),
        (b'GETSCRIPT "zz"\r\n', b"NO (NONEXISTENT) \"there is no script named 'zz'\"\r\n"),
        (b'SETACTIVE "zz"\r\n', b"NO (NONEXISTENT) \"there is no script named 'zz'\"\r\n"),
        (b'DELETESCRIPT "a"\r\n', b"NO (ACTIVE) \"'a' is the active script\"\r\n"),
        (b'RENAMESCRIPT "a" "c"\r\n', b'OK "Script renamed"\r\n'),
        (b'PUTSCRIPT "d" "keep;"\r\n', b'OK "Script stored"\r\n'),
        (
            b'RENAMESCRIPT "d" "c"\r\n',
            b"NO (ALREADYEXISTS) \"a script named 'c' exists already\"\r\n",
        ),
        (b'RENAMESCRIPT "zz" "y"\r\n', b"NO (NONEXISTENT) \"there is no script named 'zz'\"\r\n"),
        (b"LISTSCRIPTS\r\n", b'"c" ACTIVE\r\n"d"\r\nOK "Listscripts completed"\r\n'),
        (b'SETACTIVE ""\r\n', b'OK "No active script"\r\n'),
        (b'SETACTIVE ""\r\n', b'OK "No active script"\r\n'),  # rfc5804:2.8: not an error
        (b'DELETESCRIPT "c"\r\n', b'OK "Script deleted"\r\n'),
        (b'DELETESCRIPT "c"\r\n', b"NO (NONEXISTENT) \"there is no script named 'c'\"\r\n"),
        (b'CHECKSCRIPT "keep;"\r\n', b'OK "Script is valid"\r\n'),
        (b"CHECKSCRIPT {10+}\r\n#\xc3\xa9\r\nkeep;\r\n", b'OK "Script is valid"\r\n'),
        (b"CHECKSCRIPT {4+}\r\n#\xc3\xa9\xff\r\n", b'NO "1:3: not valid UTF-8"\r\n'),
        (b'PUTSCRIPT "e" ""\r\n', b'NO "an empty script is not allowed"\r\n'),
        (b'PUTSCRIPT "" "keep;"\r\n', b'NO "a script name cannot be empty"\r\n'),
        (b'PUTSCRIPT "\xff" "keep;"\r\n', b'NO "Quoted string is not UTF-8"\r\n'),
        (b'PUTSCRIPT {3+}\r\na\x01b "keep;"\r\n', None),  # control character: checked below
        (b"NOOP\r\n", b'OK "NOOP completed"\r\n'),
        (b"NOOP {4+}\r\na\r\nb\r\n", b'OK (TAG {4}\r\na\r\nb) "Done"\r\n'),
        (
            b'AUTHENTICATE "PLAIN" "x"\r\n',
            b'NO "AUTHENTICATE is not allowed once authenticated"\r\n',
        ),
        (b"STARTTLS\r\n", b'NO "STARTTLS is not allowed once authenticated"\r\n'),
        (b"XYZZY\r\n", b'NO "Unknown command XYZZY"\r\n'),
        (b"GETSCRIPT\r\n", b'NO "GETSCRIPT takes 1 argument"\r\n'),
    ]
    replies = [raw.command(sent) for sent, _ in transcript]
    for (sent, expected), reply in zip(transcript, replies, strict=True):
        if expected is not None:
            assert reply == expected, sent
    by_command = dict(zip((sent for sent, _ in transcript), replies, strict=True))
    assert re.fullmatch(rb'NO "1:\d+: .+"\r\n', by_command[transcript[1][0]]), replies[1]
    control = by_command[b'PUTSCRIPT {3+}\r\na\x01b "keep;"\r\n']
    assert control.startswith(b'NO "script names cannot contain control characters'), control
    caps = capabilities(raw.command(b"CAPABILITY\r\n"))
    assert caps["OWNER"] == BOB and "STARTTLS" not in caps
    # The same transcript pipelined in one write gives the same replies
    # (on a fresh account: carol).
    again = Raw(sieve.port)
    again.login(sieve.context, CAROL)
    again.send(b"".join(sent for sent, _ in transcript))
    assert [again.response() for _ in transcript] == replies
    assert raw.command(b"UNAUTHENTICATE\r\n") == b'OK "Not authenticated any more"\r\n'
    assert raw.command(b"LISTSCRIPTS\r\n") == b'NO "LISTSCRIPTS: authenticate first"\r\n'
    assert raw.command(b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(BOB).encode()) == (
        b'OK "Logged in"\r\n'
    )
    assert raw.command(b"LOGOUT\r\n") == b'OK "Logout completed"\r\n'
    assert raw.closed()


def test_one_byte_at_a_time(sieve: Sieve) -> None:
    raw = Raw(sieve.port)
    raw.login(sieve.context, DAVE)
    data = b'PUTSCRIPT "one" {6+}\r\nstop;\n\r\nGETSCRIPT "one"\r\nNOOP "x"\r\n'
    for octet in data:
        raw.send(bytes([octet]))
    assert raw.response() == b'OK "Script stored"\r\n'
    assert raw.response() == b'{6}\r\nstop;\n\r\nOK "Getscript completed"\r\n'
    assert raw.response() == b'OK (TAG "x") "Done"\r\n'


def test_size_and_count_limits(sieve: Sieve) -> None:
    raw = Raw(sieve.port)
    raw.login(sieve.context, ERIN)
    fits = b"#" * (MAX_SCRIPT_SIZE - 2) + b"\r\n"
    over = fits + b"#"
    huge = b"#" * (MAX_SCRIPT_SIZE + SLACK + 1)
    assert raw.command(b'PUTSCRIPT "max" {%d+}\r\n%s\r\n' % (len(fits), fits)) == (
        b'OK "Script stored"\r\n'
    )
    # Over the limit: refused by the store (with the sizes) ...
    assert raw.command(b'PUTSCRIPT "over" {%d+}\r\n%s\r\n' % (len(over), over)) == (
        b'NO (QUOTA/MAXSIZE) "the script is 2001 octets, at most 2000 are allowed"\r\n'
    )
    # ... or, far over, by the parser without reading it into memory.
    reply = raw.command(b'PUTSCRIPT "huge" {%d+}\r\n%s\r\n' % (len(huge), huge))
    assert reply.startswith(b'NO (QUOTA/MAXSIZE) "Literal too large'), reply
    assert raw.command(b"CHECKSCRIPT {%d+}\r\n%s\r\n" % (len(huge), huge)).startswith(
        b"NO (QUOTA/MAXSIZE)"
    )
    assert raw.command(b'HAVESPACE "x" 2001\r\n') == (
        b'NO (QUOTA/MAXSIZE) "the script is 2001 octets, at most 2000 are allowed"\r\n'
    )
    for name in (b"two", b"three"):
        assert raw.command(b'PUTSCRIPT "%s" "keep;"\r\n' % name) == b'OK "Script stored"\r\n'
    count = b'NO (QUOTA/MAXSCRIPTS) "3 scripts already, at most 3 are allowed"\r\n'
    assert raw.command(b'PUTSCRIPT "four" "keep;"\r\n') == count
    assert raw.command(b'HAVESPACE "four" 10\r\n') == count
    assert raw.command(b'HAVESPACE "two" 10\r\n') == b'OK "Putscript would succeed"\r\n'
    assert raw.command(b'PUTSCRIPT "two" "stop;"\r\n') == b'OK "Script stored"\r\n'
    # A literal beyond what the parser skips ends the connection.
    raw.send(b'PUTSCRIPT "x" {%d+}\r\n' % (100 * 1024 * 1024))
    assert raw.response().startswith(b'BYE "Literal too large')
    assert raw.closed()


def test_authenticate_with_continuation(sieve: Sieve) -> None:
    raw = Raw(sieve.port)
    raw.response()
    raw.starttls(sieve.context)
    raw.send(b'AUTHENTICATE "PLAIN"\r\n')
    assert raw.line() == b'""\r\n'  # rfc5804:2.1: the empty challenge
    assert raw.command(b'"*"\r\n') == b'NO "Authentication cancelled"\r\n'
    raw.send(b'authenticate "plain"\r\n')
    assert raw.line() == b'""\r\n'
    token = plain(ALICE).encode()
    assert raw.command(b"{%d+}\r\n%s\r\n" % (len(token), token)) == b'OK "Logged in"\r\n'
    assert raw.command(b'AUTHENTICATE "DIGEST-MD5"\r\n').startswith(b"NO ")


def test_failures_and_lockout(sieve: Sieve) -> None:
    source = "127.0.0.7"  # the guard counts per address; nobody else uses this one
    raw = Raw(sieve.port, source)
    raw.response()
    raw.starttls(sieve.context)
    wrong = b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(ALICE, "wrong password").encode()
    assert raw.command(wrong) == b'NO "Invalid credentials"\r\n'
    assert raw.command(wrong) == b'NO "Invalid credentials"\r\n'
    # Two failures lock this address out for alice: even the right password.
    right = b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(ALICE).encode()
    assert raw.command(right) == b'BYE "Too many failed authentication attempts"\r\n'
    assert raw.closed()
    again = Raw(sieve.port, source)
    again.login(sieve.context, BOB)  # other accounts are not locked
    locked = Raw(sieve.port, source)
    locked.response()
    locked.starttls(sieve.context)
    assert locked.command(right) == (b'NO (TRYLATER) "Too many failed logins, try again later"\r\n')
    for reply in (
        locked.command(b'AUTHENTICATE "PLAIN" "not base64!"\r\n'),
        locked.command(b'AUTHENTICATE "PLAIN" "%s"\r\n' % base64.b64encode(b"b\0a\0c")),
    ):
        assert reply.startswith(b"NO "), reply
    log = sieve.inst.log_text()
    assert re.search(r"auth_lockout .*client=127\.0\.0\.7.*protocol=sieve", log), log
    assert len(re.findall(r"login_failed .*client=127\.0\.0\.7", log)) == 2


def test_app_passwords_need_the_sieve_scope(sieve: Sieve) -> None:
    # TOTP account: its password opens nothing, the "sieve" app password
    # opens ManageSieve only, the mail one everything but ManageSieve.
    def login(secret: str) -> bytes:
        raw = Raw(sieve.port, "127.0.0.8")
        raw.response()
        raw.starttls(sieve.context)
        return raw.command(b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(TOTP_USER, secret).encode())

    assert login(sieve.totp["sieve"]) == b'OK "Logged in"\r\n'
    assert login(sieve.totp["mail"]) == b'NO "Invalid credentials"\r\n'
    assert login(PASSWORD) == b'NO "Invalid credentials"\r\n'
    with imaplib.IMAP4("127.0.0.1", sieve.inst.imap_port) as imap:
        imap.starttls(sieve.context)
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(TOTP_USER, sieve.totp["sieve"])
        assert imap.login(TOTP_USER, sieve.totp["mail"])[0] == "OK"


def test_starttls_pipelining_and_failures(sieve: Sieve) -> None:
    raw = Raw(sieve.port, "127.0.0.9")
    raw.response()
    # Commands pipelined after STARTTLS are dropped, never run under TLS.
    raw.send(b"STARTTLS\r\nLOGOUT\r\n")
    assert raw.response() == b'OK "Begin TLS negotiation now"\r\n'
    raw.sock = sieve.context.wrap_socket(raw.sock, server_hostname="127.0.0.1")
    assert raw.response().endswith(b'OK "TLS negotiation successful"\r\n')
    assert raw.command(b"NOOP\r\n") == b'OK "NOOP completed"\r\n'
    # A client that fails the handshake: one log line, no traceback.
    bad = Raw(sieve.port, "127.0.0.9")
    bad.response()
    assert bad.command(b"STARTTLS\r\n") == b'OK "Begin TLS negotiation now"\r\n'
    bad.send(b"this is not a TLS client hello\r\n" * 4)
    assert bad.closed()
    deadline = time.monotonic() + 10
    while "tls_failed" not in sieve.inst.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = sieve.inst.log_text()
    assert re.search(r"starttls_pipelined .*client=127\.0\.0\.9", log), log
    assert len(re.findall(r"tls_failed .*protocol=managesieve .*client=127\.0\.0\.9", log)) == 1


@pytest.fixture
def plaintext(tmp_path: Path) -> Iterator[tuple[Instance, int]]:
    port = free_port()
    inst = Instance(
        tmp_path,
        free_port(),
        limits_config='login_timeout = "3s"\nmax_preauth_per_ip = 2\nmax_preauth_connections = 4\n',
        auth_config="allow_plaintext = true\n",
    )
    with_listener(inst, port)
    inst.add_user(ALICE)
    inst.start()
    wait_listening(port)
    yield inst, port
    if inst.process is not None:
        inst.kill()
    assert "Traceback" not in inst.log_text()


def test_without_tls_timeouts_and_connection_limits(plaintext: tuple[Instance, int]) -> None:
    _, port = plaintext
    # From an address of its own: the start-up probes (SMTP, this listener)
    # may still hold places of 127.0.0.1 in the pool.
    source = "127.0.0.11"
    # No [tls]: no STARTTLS, PLAIN allowed in the clear ([auth] allow_plaintext).
    first = Raw(port, source)
    caps = capabilities(first.response())
    assert caps["SASL"] == "SCRAM-SHA-256 PLAIN" and "STARTTLS" not in caps
    assert first.command(b"STARTTLS\r\n") == b'NO "STARTTLS is not available"\r\n'
    # Two connections not logged in from one address at most: a third is refused.
    second = Raw(port, source)
    second.response()
    third = Raw(port, source)
    assert third.line() == b'BYE (TRYLATER) "Too many connections from your address"\r\n'
    assert third.closed()
    # Logging in frees the place; the login deadline no longer applies.
    assert first.command(b'AUTHENTICATE "PLAIN" "%s"\r\n' % plain(ALICE).encode()) == (
        b'OK "Logged in"\r\n'
    )
    fourth = Raw(port, source)
    assert fourth.response().endswith(b'OK "mx.example.test estafeta ManageSieve ready"\r\n')
    # Not logged in within login_timeout: BYE, then the close.
    assert second.line() == b'BYE "Autologout; not logged in in time"\r\n'
    assert second.closed()
    assert first.command(b"NOOP\r\n") == b'OK "NOOP completed"\r\n'
