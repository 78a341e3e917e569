"""SCRAM-SHA-256 without sockets: the mechanism (rfc5802, rfc7677 test
vector), the keys in accounts.db, and tls-exporter (rfc9266) against
OpenSSL's own command line tool."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import sqlite3
import ssl
import subprocess
from pathlib import Path

import argon2
import pytest
import trustme

from _scram import ScramClient
from estafeta import tlsbinding
from estafeta.auth import scram
from estafeta.auth.accounts import Accounts
from estafeta.auth.sasl import MalformedSASL, SASLCancelled, decode_response
from estafeta.auth.scram import Credential, ScramError, ScramMalformed, ScramServer

CHEAP = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
ALICE = "alice@example.test"
PASSWORD = "correct horse battery staple"

# rfc7677:3
VECTOR_NONCE = "rOprNGfwEbeRWgbNEkqO"
VECTOR_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
VECTOR_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
VECTOR_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
VECTOR_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
VECTOR_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
VECTOR_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def vector_credential() -> Credential:
    return Credential(*scram.split_keys(scram.derive_keys("pencil", VECTOR_SALT, 4096)))


def test_rfc7677_test_vector() -> None:
    server = ScramServer(scram.SCRAM_SHA_256, nonce=VECTOR_SERVER_NONCE)
    assert server.client_first(VECTOR_CLIENT_FIRST) == "user"
    assert server.server_first(VECTOR_SALT, 4096) == VECTOR_SERVER_FIRST
    server.client_final(VECTOR_CLIENT_FINAL)
    wrong = Credential(*scram.split_keys(scram.derive_keys("crayon", VECTOR_SALT, 4096)))
    credentials = [wrong, vector_credential()]
    assert server.verify(credentials) == 1
    assert server.server_final(credentials[1]) == VECTOR_SERVER_FINAL


def test_test_client_follows_the_vector() -> None:
    client = ScramClient("user", "pencil", nonce=VECTOR_NONCE)
    assert client.first() == VECTOR_CLIENT_FIRST
    assert client.final(VECTOR_SERVER_FIRST) == VECTOR_CLIENT_FINAL
    assert client.verified(VECTOR_SERVER_FINAL)


def run(server: ScramServer, client: ScramClient, credential: Credential) -> int | None:
    server.client_first(client.first())
    final = client.final(server.server_first(VECTOR_SALT, 4096))
    server.client_final(final)
    return server.verify([credential])


def test_wrong_password_is_refused() -> None:
    server = ScramServer(scram.SCRAM_SHA_256)
    assert run(server, ScramClient("user", "crayon"), vector_credential()) is None


def test_channel_binding() -> None:
    data = bytes(range(32))
    good = ScramServer(scram.SCRAM_SHA_256_PLUS, binding=data, plus_offered=True)
    assert run(good, ScramClient("user", "pencil", binding=data), vector_credential()) == 0
    # Binding data of another connection (a relayed exchange): refused.
    relayed = ScramServer(scram.SCRAM_SHA_256_PLUS, binding=data, plus_offered=True)
    other = bytes(32)
    assert run(relayed, ScramClient("user", "pencil", binding=other), vector_credential()) is None
    # rfc5802:6: "y" while we offered -PLUS is a downgrade.
    downgraded = ScramServer(scram.SCRAM_SHA_256, binding=data, plus_offered=True)
    client = ScramClient("user", "pencil", flag="y")
    assert run(downgraded, client, vector_credential()) is None
    # "y" is fine where we offer no binding.
    plain = ScramServer(scram.SCRAM_SHA_256)
    assert run(plain, ScramClient("user", "pencil", flag="y"), vector_credential()) == 0


@pytest.mark.parametrize(
    ("mechanism", "message", "error"),
    [
        (scram.SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=user,r=abc", ScramError),
        (scram.SCRAM_SHA_256_PLUS, b"n,,n=user,r=abc", ScramError),
        (scram.SCRAM_SHA_256, b"p=tls-exporter,,n=user,r=abc", ScramError),
        (scram.SCRAM_SHA_256, b"n,a=bob,n=user,r=abc", ScramError),
        (scram.SCRAM_SHA_256, b"n,,m=ext,n=user,r=abc", ScramError),
        (scram.SCRAM_SHA_256, b"x,,n=user,r=abc", ScramMalformed),
        (scram.SCRAM_SHA_256, b"n,,n=us=er,r=abc", ScramMalformed),
        (scram.SCRAM_SHA_256, b"n,,r=abc,n=user", ScramMalformed),
        (scram.SCRAM_SHA_256, b"n,,n=user", ScramMalformed),
        (scram.SCRAM_SHA_256, b"n,,n=user,r=a\x01", ScramMalformed),
        (scram.SCRAM_SHA_256, b"\xff,,", ScramMalformed),
        (scram.SCRAM_SHA_256, b"", ScramMalformed),
        (scram.SCRAM_SHA_256, b"n,,n=user,r=" + b"a" * 1100, ScramMalformed),
    ],
)
def test_bad_client_first(mechanism: str, message: bytes, error: type[Exception]) -> None:
    server = ScramServer(mechanism, binding=bytes(32), plus_offered=True)
    with pytest.raises(error):
        server.client_first(message)


def test_authzid_of_the_same_user_is_fine() -> None:
    server = ScramServer(scram.SCRAM_SHA_256)
    assert server.client_first(b"n,a=User,n=user,r=abc") == "user"


@pytest.mark.parametrize(
    "final",
    [
        b"c=biws,r=wrongnonce,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,c=biws,p=AAAA",
    ],
)
def test_bad_client_final(final: bytes) -> None:
    server = ScramServer(scram.SCRAM_SHA_256, nonce=VECTOR_SERVER_NONCE)
    server.client_first(VECTOR_CLIENT_FIRST)
    server.server_first(VECTOR_SALT, 4096)
    with pytest.raises(ScramMalformed):
        server.client_final(final)


def test_messages_in_order_only() -> None:
    server = ScramServer(scram.SCRAM_SHA_256)
    with pytest.raises(ScramMalformed):
        server.client_final(VECTOR_CLIENT_FINAL)
    with pytest.raises(ScramMalformed):
        server.verify([])


def test_response_lines() -> None:
    assert decode_response("=") == b""
    assert decode_response(base64.b64encode(b"n,,n=a,r=b")) == b"n,,n=a,r=b"
    with pytest.raises(SASLCancelled):
        decode_response("*")
    with pytest.raises(MalformedSASL):
        decode_response("not base64!")
    with pytest.raises(MalformedSASL):
        decode_response("A" * 1400)


def test_saslprep() -> None:
    assert scram.saslprep("I\u00adX") == "IX"  # rfc4013:3 examples
    assert scram.saslprep("user") == "user"
    assert scram.saslprep("\u00aa") == "a"
    assert scram.saslprep("\u2168") == "IX"
    with pytest.raises(ValueError):
        scram.saslprep("\u0007")
    with pytest.raises(ValueError):
        scram.saslprep("\u0627\u0031")


# -- keys in accounts.db -----------------------------------------------------------


def keys_of(path: Path, table: str = "accounts") -> list[bytes | None]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute(f"SELECT scram_keys FROM {table}")]  # noqa: S608
    finally:
        conn.close()


def exchange(db: Accounts, user: str, client: ScramClient, protocol: str = "imap") -> str | None:
    server = ScramServer(scram.SCRAM_SHA_256)
    server.client_first(client.first())
    salt, iterations = db.scram_salt(user)
    server.client_final(client.final(server.server_first(salt, iterations)))
    found = db.scram_authenticate(server, protocol)
    return None if found is None else found[0]


def test_keys_stored_with_the_password(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
        (keys,) = keys_of(path)
        assert keys is not None and len(keys) == scram.KEYS_LENGTH
        assert PASSWORD.encode() not in path.read_bytes()
        assert exchange(db, ALICE, ScramClient(ALICE, PASSWORD)) == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, "wrong password")) is None
        salt = db.scram_salt(ALICE)
        db.set_password(ALICE, "a new password for alice")
        assert db.scram_salt(ALICE) == salt  # same iteration count: same salt
        assert exchange(db, ALICE, ScramClient(ALICE, PASSWORD)) is None
        assert exchange(db, ALICE, ScramClient(ALICE, "a new password for alice")) == ALICE


def test_app_passwords_share_the_salt_and_totp_rules(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
        app = db.app_password_create(ALICE, "phone", ["imap"])
        assert exchange(db, ALICE, ScramClient(ALICE, app)) == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, app), "pop3") is None  # not allowed
        assert exchange(db, ALICE, ScramClient(ALICE, PASSWORD)) == ALICE
        db.totp_enroll(ALICE)
        # rfc: with TOTP, mail clients use app passwords only (as with PLAIN).
        assert exchange(db, ALICE, ScramClient(ALICE, PASSWORD)) is None
        assert exchange(db, ALICE, ScramClient(ALICE, app)) == ALICE


def test_unknown_users_get_a_fake_salt(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        salt, iterations = db.scram_salt("nobody@example.test")
        assert (salt, iterations) == db.scram_salt("Nobody@example.test")
        assert len(salt) == scram.SALT_LENGTH and iterations == scram.DEFAULT_ITERATIONS
        assert db.scram_salt("other@example.test")[0] != salt
        # An account's first salt is the one it had before it existed.
        db.add_user("nobody@example.test", PASSWORD)
        assert db.scram_salt("nobody@example.test") == (salt, iterations)
        assert exchange(db, "ghost@example.test", ScramClient("ghost@example.test", "x")) is None
        assert exchange(db, "bad address", ScramClient("bad address", "x")) is None


def test_old_accounts_get_keys_at_a_plaintext_login(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
        app = db.app_password_create(ALICE, "phone")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE accounts SET scram_keys = NULL")
    conn.execute("UPDATE app_passwords SET scram_keys = NULL")
    conn.execute("DELETE FROM scram")
    conn.commit()
    conn.close()
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        assert exchange(db, ALICE, ScramClient(ALICE, PASSWORD)) is None
        assert db.authenticate(ALICE, PASSWORD, "imap") == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, PASSWORD)) == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, app)) is None
        # Typed without the dashes over PLAIN; SCRAM takes it as shown.
        assert db.authenticate(ALICE, app.replace("-", "").upper(), "imap") == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, app)) == ALICE
    assert all(keys is not None for keys in keys_of(path, "app_passwords"))


def test_new_iteration_count_renews_the_salt(tmp_path: Path) -> None:
    path = tmp_path / "accounts.db"
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
        app = db.app_password_create(ALICE, "phone")
    with Accounts(
        path, ["example.test"], hasher=CHEAP, password_policy=False, scram_iterations=5000
    ) as db:
        assert db.scram_salt(ALICE)[1] == scram.DEFAULT_ITERATIONS  # until the password changes
        db.set_password(ALICE, "a new password for alice")
        assert db.scram_salt(ALICE)[1] == 5000
        assert exchange(db, ALICE, ScramClient(ALICE, "a new password for alice")) == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, app)) is None  # keyed at its next login
        assert db.authenticate(ALICE, app, "imap") == ALICE
        assert exchange(db, ALICE, ScramClient(ALICE, app)) == ALICE
        db.delete_user(ALICE)
        assert db.scram_salt(ALICE)[1] == 5000


def test_too_few_iterations_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="4096"):
        Accounts(tmp_path / "a.db", ["example.test"], scram_iterations=1000)


# -- tls-exporter ---------------------------------------------------------------------


def _server_binding(ca: trustme.CA, connect: object) -> tuple[bytes | None, object]:
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    seen: dict[str, bytes | None] = {}

    async def main() -> object:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen["server"] = tlsbinding.exporter(writer.get_extra_info("ssl_object"))
            writer.write(b"done\n")
            await writer.drain()
            await reader.read()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(connect, port)  # type: ignore[arg-type]
        finally:
            server.close()

    result = asyncio.run(main())
    return seen.get("server"), result


def test_tls_exporter_matches_the_client_side() -> None:
    ca = trustme.CA()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    def connect(port: int) -> bytes | None:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.recv(5)
            return tlsbinding.exporter(tls)

    server_side, client_side = _server_binding(ca, connect)
    assert server_side is not None and len(server_side) == tlsbinding.LENGTH
    assert server_side == client_side


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_tls_exporter_matches_openssl_s_client() -> None:
    """rfc9266:2 label, no context, 32 bytes: as OpenSSL's own tool computes it."""
    ca = trustme.CA()

    def connect(port: int) -> str:
        result = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-tls1_3",
                "-keymatexport",
                "EXPORTER-Channel-Binding",
                "-keymatexportlen",
                "32",
            ],
            input=b"",
            capture_output=True,
            timeout=30,
        )
        return result.stdout.decode("ascii", "replace")

    server_side, output = _server_binding(ca, connect)
    assert server_side is not None
    assert f"Keying material: {server_side.hex().upper()}" in str(output)


def test_tls12_gets_no_binding() -> None:
    ca = trustme.CA()
    client_context = ssl.create_default_context()
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    ca.configure_trust(client_context)

    def connect(port: int) -> bytes | None:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.recv(5)
            return tlsbinding.exporter(tls)

    server_side, client_side = _server_binding(ca, connect)
    assert server_side is None and client_side is None


def test_unchecked_pointer_is_not_used() -> None:
    class Fake:
        def version(self) -> str:
            return "TLSv1.3"

        def get_channel_binding(self, kind: str) -> bytes:
            return b"x" * 12

        _sslobj = object()

    assert tlsbinding.exporter(Fake()) is None  # type: ignore[arg-type]


# -- the login guard ----------------------------------------------------------------


def test_scram_goes_through_the_login_guard(tmp_path: Path) -> None:
    """Failures count, a locked pair is refused even with the right
    password, and the login history records SCRAM attempts."""
    from estafeta.auth.guard import PAIR, Authenticator, GuardPolicy, LoginGuard

    class History:
        def __init__(self) -> None:
            self.records: list[tuple[str, str, str, bool]] = []

        def record(self, address: str, protocol: str, client: str, ok: bool) -> None:
            self.records.append((address, protocol, client, ok))

        def close(self) -> None:
            pass

    async def no_sleep(_: float) -> None:
        pass

    path = tmp_path / "accounts.db"
    history = History()
    with Accounts(path, ["example.test"], hasher=CHEAP, password_policy=False) as db:
        db.add_user(ALICE, PASSWORD)
        guard = LoginGuard(GuardPolicy(pair_max_failures=2, ip_max_failures=100))
        authenticator = Authenticator(db, guard, sleep=no_sleep, history=history)

        async def attempt(password: str) -> tuple[bool, str]:
            client = ScramClient(ALICE, password)
            server = ScramServer(scram.SCRAM_SHA_256)
            server.client_first(client.first())
            salt, iterations = await authenticator.scram_salt(ALICE)
            server.client_final(client.final(server.server_first(salt, iterations)))
            result, credential = await authenticator.scram_login(server, "imap", "192.0.2.7")
            if result.ok:
                assert credential is not None
                assert client.verified(server.server_final(credential))
            return result.ok, result.reason

        async def main() -> list[tuple[bool, str]]:
            try:
                return [
                    await attempt(PASSWORD),
                    await attempt("wrong one"),
                    await attempt("wrong two"),
                    await attempt(PASSWORD),
                ]
            finally:
                await authenticator.close()

        outcomes = asyncio.run(main())
    assert outcomes == [(True, ""), (False, ""), (False, ""), (False, PAIR)]
    assert [ok for *_, ok in history.records] == [True, False, False, False]
    assert {protocol for _, protocol, _, _ in history.records} == {"imap"}
