"""SCRAM-SHA-256(-PLUS) logins over real TLS sockets against a real server:
IMAP AUTHENTICATE (rfc9051:6.2.2, rfc4959), POP3 AUTH (rfc5034), submission
AUTH (rfc4954), ManageSieve AUTHENTICATE (rfc5804:2.1)."""

from __future__ import annotations

import re
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from _scram import ScramClient, b64, unb64
from conftest import DOMAIN, PASSWORD, Instance, free_port, tls_instance
from estafeta import tlsbinding

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
# Accounts from before SCRAM, with no keys (one per protocol).
OLDS = {proto: f"old-{proto}@{DOMAIN}" for proto in ("imap", "pop3", "smtp", "sieve")}
TOTP_USER = f"totp@{DOMAIN}"
GHOST = f"ghost@{DOMAIN}"
SERVER_FIRST = re.compile(rb"r=[\x21-\x2b\x2d-\x7e]+,s=[A-Za-z0-9+/]{22}==,i=10000")


@dataclass
class Server:
    inst: Instance
    context: ssl.SSLContext
    apps: dict[str, str]
    sieve_port: int


def _with_managesieve(inst: Instance, port: int) -> None:
    inst.write_config()
    text = inst.config.read_text()
    inst.config.write_text(
        text.replace("[listen]\n", f'[listen]\nmanagesieve = ["127.0.0.1:{port}"]\n', 1)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("scram")
    inst = tls_instance(
        root,
        "imap_port",
        "imaps_port",
        "pop3s_port",
        "submissions_port",
        "submission_port",
        # Many deliberate failures from 127.0.0.1 in this module.
        auth_config="ip_max_failures = 1000\npair_max_failures = 1000\n"
        "account_max_failures = 1000\ndelay_base = 0\nmax_delay = 0\n",
    )
    sieve_port = free_port()
    _with_managesieve(inst, sieve_port)
    for user in (ALICE, BOB, TOTP_USER, *OLDS.values()):
        inst.add_user(user)
    apps = {
        "alice": inst.cli(
            "app-password",
            "create",
            ALICE,
            "--name",
            "phone",
            "--protocols",
            "imap,pop3,smtp,sieve",
        ).stdout.strip(),
    }
    inst.cli("totp", "enroll", TOTP_USER, "--png", str(root / "qr.png"))
    # TOTP_USER's app password, made before TOTP would need a code: directly.
    from estafeta.auth.accounts import Accounts

    with Accounts(inst.data_dir / "accounts.db", [DOMAIN], password_policy=False) as db:
        apps["totp"] = db.app_password_create(TOTP_USER, "mail")
    # OLDS lost their keys: as if created before schema 5.
    conn = sqlite3.connect(inst.data_dir / "accounts.db")
    with conn:
        for old in OLDS.values():
            conn.execute("UPDATE accounts SET scram_keys = NULL WHERE address = ?", (old,))
            conn.execute("DELETE FROM scram WHERE address = ?", (old,))
    conn.close()
    inst.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", sieve_port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    context = ssl.create_default_context(cafile=root / "ca.pem")
    yield Server(inst, context, apps, sieve_port)
    inst.kill()
    log = inst.log_text()
    assert "Traceback" not in log
    for secret in (PASSWORD, *apps.values()):
        assert secret not in log


class Lines:
    """A line-based client over a TLS socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, line: str | bytes) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data + b"\r\n")

    def line(self) -> bytes:
        data = self.file.readline()
        assert data, "connection closed"
        return data.rstrip(b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    @property
    def binding(self) -> bytes | None:
        return tlsbinding.exporter(self.sock)


def tls_connect(server: Server, port: int) -> Lines:
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    return Lines(server.context.wrap_socket(raw, server_hostname="127.0.0.1"))


# -- IMAP: the adapter below, and what only IMAP has ---------------------------------------


def imap(server: Server) -> Lines:
    return Imap().connect(server)


def imap_auth(
    conn: Lines, client: ScramClient, *, initial: bool = True, after_final: bytes = b""
) -> bytes:
    """One AUTHENTICATE; the tagged answer (``Proto.auth``). ``after_final``:
    the answer to the server-final challenge (rfc4422:5 item 5: empty)."""
    return Imap().auth(conn, client, initial=initial, after_final=after_final)


def imap_capabilities(conn: Lines) -> list[bytes]:
    conn.send("c CAPABILITY")
    caps = conn.line()
    assert conn.line().startswith(b"c OK")
    return caps.split()


def test_imap_advertises_scram_after_tls_only(server: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", server.inst.imap_port), timeout=20)
    plain = raw.makefile("rwb")
    plain.readline()
    plain.write(b"c CAPABILITY\r\n")
    plain.flush()
    caps_line = plain.readline()
    assert b"SCRAM" not in caps_line and b"LOGINDISABLED" in caps_line  # no TLS yet
    assert plain.readline().startswith(b"c OK")
    plain.write(b"a AUTHENTICATE SCRAM-SHA-256\r\n")
    plain.flush()
    assert plain.readline().startswith(b"a NO [PRIVACYREQUIRED]")
    plain.close()
    raw.close()


def test_imap_scram_login_sends_capabilities_and_selects(server: Server) -> None:
    conn = imap(server)
    answer = imap_auth(conn, ScramClient(ALICE, PASSWORD))
    assert answer.startswith(b"a OK [CAPABILITY "), answer  # rfc9051:6.2.2
    conn.send("s SELECT INBOX")
    while not (line := conn.line()).startswith(b"s "):
        pass
    assert line.startswith(b"s OK")
    conn.close()


def test_imap_totp_account_opens_with_app_passwords_only(server: Server) -> None:
    conn = imap(server)
    assert imap_auth(conn, ScramClient(TOTP_USER, PASSWORD)).startswith(b"a NO")
    assert imap_auth(conn, ScramClient(TOTP_USER, server.apps["totp"])).startswith(b"a OK")
    conn.close()


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ("!!!", b"a BAD"),  # not base64
        (b64(b"n,,n=" + b"x" * 1100 + b",r=abc"), b"a BAD"),  # over 1 KiB
        (b64(b"q,,n=alice,r=abc"), b"a BAD"),  # no such gs2 flag
        (b64(f"n,a={BOB},n={ALICE},r=abc".encode()), b"a NO"),  # another authzid
        (b64(b"p=tls-unique,,n=alice,r=abc"), b"a NO"),  # only tls-exporter
    ],
)
def test_imap_malformed_messages(server: Server, first: str, expected: bytes) -> None:
    conn = imap(server)
    mechanism = "SCRAM-SHA-256-PLUS" if "dGxzLXVuaXF1Z" in first else "SCRAM-SHA-256"
    conn.send(f"a AUTHENTICATE {mechanism} {first}")
    assert conn.line().startswith(expected)
    conn.send("n NOOP")  # the session goes on
    assert conn.line().startswith(b"n OK")
    conn.close()


def test_imap_data_after_server_final_refused(server: Server) -> None:
    """rfc4422:5 item 5: no data with success; a proof that was right does
    not log in when the answer to the server-final message is not empty."""
    conn = imap(server)
    assert imap_auth(conn, ScramClient(ALICE, PASSWORD), after_final=b"x").startswith(b"a BAD")
    conn.send("s SELECT INBOX")  # not logged in
    assert conn.line().startswith(b"s BAD")
    conn.close()


def test_imap_cancel_and_garbage_final(server: Server) -> None:
    conn = imap(server)
    client = ScramClient(ALICE, PASSWORD)
    conn.send(f"a AUTHENTICATE SCRAM-SHA-256 {b64(client.first())}")
    assert conn.line().startswith(b"+ ")
    conn.send(b64(b"c=biws,r=wrong,p=AAAA"))
    assert conn.line().startswith(b"a BAD")
    conn.close()


# -- IMAP, POP3, submission, ManageSieve: one adapter each -----------------------------------------


class Proto:
    """How one protocol connects, authenticates and answers."""

    name = ""
    ok = b""  # what a successful answer starts with
    failed = b""  # a refused login
    malformed = b""  # a protocol error

    def connect(self, server: Server) -> Lines:
        raise NotImplementedError

    def command(self, mechanism: str, initial: bytes | None) -> bytes:
        raise NotImplementedError

    def challenge(self, line: bytes) -> bytes | None:
        """The decoded challenge in ``line``, None if it is a final answer."""
        raise NotImplementedError

    def response(self, data: bytes) -> bytes:
        return b64(data).encode()

    def success_data(self, line: bytes) -> bytes | None:
        return None

    def mechanisms(self, server: Server, conn: Lines) -> list[str]:
        raise NotImplementedError

    def plain(self, user: str, secret: str) -> bytes:
        raise NotImplementedError

    def auth(
        self, conn: Lines, client: ScramClient, *, initial: bool = True, after_final: bytes = b""
    ) -> bytes:
        conn.send(self.command(client.mechanism, client.first() if initial else None))
        line = conn.line()
        if not initial:
            assert self.challenge(line) == b"", line
            conn.send(self.response(client.first()))
            line = conn.line()
        server_first = self.challenge(line)
        if server_first is None:
            return line
        conn.send(self.response(client.final(server_first)))
        line = conn.line()
        server_final = self.challenge(line)
        if server_final is not None:
            assert client.verified(server_final), "server signature"
            conn.send(self.response(after_final))
            line = conn.line()
        elif line.startswith(self.ok):
            data = self.success_data(line)
            assert data is not None and client.verified(data), line
        return line


class Imap(Proto):
    name = "imap"
    ok = b"a OK"
    failed = b"a NO"
    malformed = b"a BAD"

    def connect(self, server: Server) -> Lines:
        conn = tls_connect(server, server.inst.imaps_port)
        assert conn.line().startswith(b"* OK")
        return conn

    def command(self, mechanism: str, initial: bytes | None) -> bytes:
        if initial is None:
            return f"a AUTHENTICATE {mechanism}".encode()
        # rfc4959:3: "=" is an empty initial response
        return f"a AUTHENTICATE {mechanism} ".encode() + (self.response(initial) or b"=")

    def challenge(self, line: bytes) -> bytes | None:
        return unb64(line[2:]) if line.startswith(b"+ ") or line == b"+" else None

    def mechanisms(self, server: Server, conn: Lines) -> list[str]:
        return [word[5:].decode() for word in imap_capabilities(conn) if word.startswith(b"AUTH=")]

    def plain(self, user: str, secret: str) -> bytes:
        return b"a AUTHENTICATE PLAIN " + b64(f"\0{user}\0{secret}".encode()).encode()


class Pop3(Proto):
    name = "pop3"
    ok = b"+OK"
    failed = b"-ERR [AUTH]"
    malformed = b"-ERR"

    def connect(self, server: Server) -> Lines:
        conn = tls_connect(server, server.inst.pop3s_port)
        assert conn.line().startswith(b"+OK")
        return conn

    def command(self, mechanism: str, initial: bytes | None) -> bytes:
        return f"AUTH {mechanism}".encode() + (
            b"" if initial is None else b" " + self.response(initial)
        )

    def challenge(self, line: bytes) -> bytes | None:
        return unb64(line[2:]) if line.startswith(b"+ ") or line == b"+" else None

    def mechanisms(self, server: Server, conn: Lines) -> list[str]:
        conn.send("CAPA")
        lines = []
        while (line := conn.line()) != b".":
            lines.append(line)
        (sasl,) = [line for line in lines if line.startswith(b"SASL ")]
        return sasl.decode().split()[1:]

    def plain(self, user: str, secret: str) -> bytes:
        return b"AUTH PLAIN " + b64(f"\0{user}\0{secret}".encode()).encode()


class Submission(Proto):
    name = "smtp"
    ok = b"235"
    failed = b"535"
    malformed = b"501"

    def connect(self, server: Server) -> Lines:
        conn = tls_connect(server, server.inst.submissions_port)
        assert conn.line().startswith(b"220")
        conn.send("EHLO client.example")
        while not conn.line().startswith(b"250 "):
            pass
        return conn

    def command(self, mechanism: str, initial: bytes | None) -> bytes:
        if initial is None:
            return f"AUTH {mechanism}".encode()
        return f"AUTH {mechanism} ".encode() + (self.response(initial) if initial else b"=")

    def challenge(self, line: bytes) -> bytes | None:
        return unb64(line[4:]) if line.startswith(b"334 ") else None

    def mechanisms(self, server: Server, conn: Lines) -> list[str]:
        conn.send("EHLO client.example")
        words: list[str] = []
        while True:
            line = conn.line()
            if line[4:].startswith(b"AUTH "):
                words = line[4:].decode().split()[1:]
            if line.startswith(b"250 "):
                return words

    def plain(self, user: str, secret: str) -> bytes:
        return b"AUTH PLAIN " + b64(f"\0{user}\0{secret}".encode()).encode()


class ManageSieve(Proto):
    name = "sieve"
    ok = b"OK"
    failed = b"NO"
    malformed = b"NO"

    def connect(self, server: Server) -> Lines:
        raw = socket.create_connection(("127.0.0.1", server.sieve_port), timeout=20)
        file = raw.makefile("rb")
        while not file.readline().startswith(b"OK"):
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert file.readline().startswith(b"OK")
        file.close()
        conn = Lines(server.context.wrap_socket(raw, server_hostname="127.0.0.1"))
        while not conn.line().startswith(b"OK"):  # rfc5804:2.2 capabilities again
            pass
        return conn

    def command(self, mechanism: str, initial: bytes | None) -> bytes:
        tail = b"" if initial is None else b" " + self.response(initial)
        return f'AUTHENTICATE "{mechanism}"'.encode() + tail

    def response(self, data: bytes) -> bytes:
        return b'"' + b64(data).encode() + b'"'

    def challenge(self, line: bytes) -> bytes | None:
        if line.startswith(b'"'):
            return unb64(line.strip(b'"'))
        return None

    def success_data(self, line: bytes) -> bytes | None:
        found = re.match(rb'OK \(SASL "([^"]*)"\)', line)
        return None if found is None else unb64(found.group(1))

    def mechanisms(self, server: Server, conn: Lines) -> list[str]:
        conn.send("CAPABILITY")
        words: list[str] = []
        while not (line := conn.line()).startswith(b"OK"):
            if line.startswith(b'"SASL"'):
                words = line.split(b" ", 1)[1].strip(b'"').decode().split()
        return words

    def plain(self, user: str, secret: str) -> bytes:
        return b'AUTHENTICATE "PLAIN" "' + b64(f"\0{user}\0{secret}".encode()).encode() + b'"'


class SubmissionStartTLS(Submission):
    """Port 587: STARTTLS first (rfc3207), then AUTH; the binding is that of
    the TLS layer aiosmtpd starts in the middle of the connection."""

    name = "smtp"

    def connect(self, server: Server) -> Lines:
        raw = socket.create_connection(("127.0.0.1", server.inst.submission_port), timeout=20)
        file = raw.makefile("rb")
        assert file.readline().startswith(b"220")
        raw.sendall(b"EHLO client.example\r\n")
        ehlo = []
        while not (line := file.readline()).startswith(b"250 "):
            ehlo.append(line)
        assert not any(b"AUTH" in line for line in ehlo)  # not before TLS
        raw.sendall(b"STARTTLS\r\n")
        assert file.readline().startswith(b"220")
        file.close()
        conn = Lines(server.context.wrap_socket(raw, server_hostname="127.0.0.1"))
        conn.send("EHLO client.example")
        while not conn.line().startswith(b"250 "):
            pass
        return conn


PROTOCOLS = [Imap(), Pop3(), Submission(), ManageSieve()]


def test_submission_after_starttls(server: Server) -> None:
    proto = SubmissionStartTLS()
    conn = proto.connect(server)
    assert "SCRAM-SHA-256-PLUS" in proto.mechanisms(server, conn)
    answer = proto.auth(conn, ScramClient(ALICE, PASSWORD, binding=conn.binding))
    assert answer.startswith(b"235"), answer
    conn.close()


by_name = pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda proto: proto.name)


@by_name
def test_advertises_scram(server: Server, proto: Proto) -> None:
    conn = proto.connect(server)
    mechanisms = proto.mechanisms(server, conn)
    assert {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN"} <= set(mechanisms), mechanisms
    conn.close()


@by_name
@pytest.mark.parametrize("initial", [True, False])
def test_scram_login(server: Server, proto: Proto, initial: bool) -> None:
    conn = proto.connect(server)
    answer = proto.auth(conn, ScramClient(ALICE, PASSWORD), initial=initial)
    assert answer.startswith(proto.ok), answer
    conn.close()


@by_name
def test_wrong_password_then_app_password(server: Server, proto: Proto) -> None:
    conn = proto.connect(server)
    answer = proto.auth(conn, ScramClient(ALICE, "not the password"))
    assert answer.startswith(proto.failed), answer
    answer = proto.auth(conn, ScramClient(ALICE, server.apps["alice"]))
    assert answer.startswith(proto.ok), answer
    conn.close()


@by_name
def test_plus_and_relayed_and_downgrade(server: Server, proto: Proto) -> None:
    conn = proto.connect(server)
    other = proto.connect(server)
    assert conn.binding is not None and conn.binding != other.binding
    # The binding data of another connection (a relayed exchange): refused.
    relayed = proto.auth(conn, ScramClient(ALICE, PASSWORD, binding=other.binding))
    assert relayed.startswith(proto.failed), relayed
    # "y" while the server offers -PLUS (rfc5802:6): refused.
    downgraded = proto.auth(conn, ScramClient(ALICE, PASSWORD, flag="y"))
    assert downgraded.startswith(proto.failed), downgraded
    answer = proto.auth(other, ScramClient(ALICE, PASSWORD, binding=other.binding))
    assert answer.startswith(proto.ok), answer
    conn.close()
    other.close()


@pytest.mark.parametrize("proto", [Pop3(), Submission()], ids=lambda proto: proto.name)
def test_data_after_server_final_refused(server: Server, proto: Proto) -> None:
    """As for IMAP: no data with success (rfc4422:5 item 5, rfc4954:4)."""
    conn = proto.connect(server)
    answer = proto.auth(conn, ScramClient(ALICE, PASSWORD), after_final=b"x")
    assert answer.startswith(proto.malformed), answer
    conn.close()


@by_name
def test_unknown_user_looks_like_a_known_one(server: Server, proto: Proto) -> None:
    """An unknown name gets a salt and iteration count as a known one does,
    the same each time (rfc5802:9: no telling which accounts exist)."""
    salts = []
    for user in (ALICE, GHOST, GHOST):
        conn = proto.connect(server)
        client = ScramClient(user, "whatever")
        conn.send(proto.command(client.mechanism, client.first()))
        first = proto.challenge(conn.line())
        assert first is not None and SERVER_FIRST.fullmatch(first), first
        salts.append(first.split(b",", 1)[1])  # s=...,i=... after the nonce
        conn.send(b'"*"' if proto.name == "sieve" else b"*")
        assert not conn.line().startswith(proto.ok)
        conn.close()
    assert salts[1] == salts[2] and salts[0] != salts[1]


@by_name
def test_old_account_gets_keys_at_plain_login(server: Server, proto: Proto) -> None:
    user = OLDS[proto.name]
    conn = proto.connect(server)
    assert proto.auth(conn, ScramClient(user, PASSWORD)).startswith(proto.failed)
    conn.send(proto.plain(user, PASSWORD))
    assert conn.line().startswith(proto.ok)
    conn.close()
    conn = proto.connect(server)
    assert proto.auth(conn, ScramClient(user, PASSWORD)).startswith(proto.ok)
    conn.close()


@by_name
@pytest.mark.parametrize(
    "first",
    [
        b"n,,n=" + b"x" * 1100 + b",r=abc",  # over 1 KiB
        b"q,,n=alice,r=abc",  # no such gs2 flag
        b"n,,n=al=ice,r=abc",  # bad escape
    ],
)
def test_malformed_client_first(server: Server, proto: Proto, first: bytes) -> None:
    conn = proto.connect(server)
    conn.send(proto.command("SCRAM-SHA-256", None))
    assert proto.challenge(conn.line()) == b""
    conn.send(proto.response(first))
    answer = conn.line()
    assert answer.startswith(proto.malformed), answer
    conn.close()


@by_name
def test_another_authzid_refused(server: Server, proto: Proto) -> None:
    conn = proto.connect(server)
    client = ScramClient(ALICE, PASSWORD, authzid=BOB)
    answer = proto.auth(conn, client)
    assert not answer.startswith(proto.ok), answer
    conn.close()


def test_imap_plus_after_starttls(server: Server) -> None:
    raw = socket.create_connection(("127.0.0.1", server.inst.imap_port), timeout=20)
    file = raw.makefile("rb")
    assert file.readline().startswith(b"* OK")
    raw.sendall(b"t STARTTLS\r\n")
    assert file.readline().startswith(b"t OK")
    file.close()
    conn = Lines(server.context.wrap_socket(raw, server_hostname="127.0.0.1"))
    assert b"AUTH=SCRAM-SHA-256-PLUS" in imap_capabilities(conn)
    assert imap_auth(conn, ScramClient(ALICE, PASSWORD, binding=conn.binding)).startswith(b"a OK")
    conn.close()
