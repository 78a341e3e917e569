"""RspamdClient (estafeta.spam.rspamd) against a real rspamd, and against
fake servers for what a real one will not do (hang, flood, inject)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _rspamd import RspamdProcess, start_rspamd

from estafeta.spam.rspamd import ACTIONS, MAX_SYMBOLS, RspamdClient, RspamdError, RspamdResult

T = TypeVar("T")

# rspamd's GTUBE string (its own, not SpamAssassin's): a reject, always.
GTUBE_STRING = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CLIENT_IP = "192.0.2.7"


def message(subject: str, body: str, sender: str = "alice@example.org") -> bytes:
    return (
        f"From: Alice <{sender}>\r\n"
        "To: bob@example.net\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{hashlib.sha256(body.encode()).hexdigest()[:16]}@example.org>\r\n"
        "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


GTUBE = message("test", GTUBE_STRING)
PLAIN = message("lunch tomorrow", "Hi Bob, shall we meet for lunch tomorrow at noon? Alice")
SPAM = message(
    "You have won a million dollars",
    "Congratulations dear friend, you have won one million dollars in our "
    "international lottery. Send your bank account details and a small "
    "processing fee to claim the prize money today before it expires.",
    sender="prize@lottery.example",
)
HAM = message(
    "minutes of the board meeting",
    "Attached are the minutes of Tuesday's board meeting. Please read the "
    "budget section before the next meeting and send corrections to the "
    "secretary by Friday so that we can approve them.",
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdProcess]:
    process = start_rspamd(tmp_path_factory.mktemp("rspamd"))
    try:
        yield process
    finally:
        process.stop()


def client(process: RspamdProcess, **kwargs: Any) -> RspamdClient:
    options: dict[str, Any] = {
        "controller_url": process.controller_url,
        "password": process.password,
        "timeout": 30.0,
    }
    return RspamdClient(process.url, **(options | kwargs))


async def check(c: RspamdClient, data: bytes, **kwargs: Any) -> RspamdResult:
    envelope: dict[str, Any] = {
        "ip": CLIENT_IP,
        "helo": "mx.example.org",
        "sender": "alice@example.org",
        "recipients": ["bob@example.net"],
        "queue_id": "QTEST1",
        "hostname": "mx.estafeta.test",
    }
    return await c.check(data, **(envelope | kwargs))


# -- the real rspamd -----------------------------------------------------------


def test_gtube_is_rejected_naming_gtube(rspamd: RspamdProcess) -> None:
    result = run(check(client(rspamd), GTUBE))
    assert result.action == "reject"
    assert "gtube" in result.reason.lower()
    assert "GTUBE" in dict(result.symbols)
    assert result.score >= result.required > 0


def test_plain_message_is_below_reject(rspamd: RspamdProcess) -> None:
    result = run(check(client(rspamd), PLAIN))
    assert result.action in ACTIONS - {"reject"}
    assert result.score < result.required
    assert result.symbols, "rspamd always names some symbols"
    scores = [abs(score) for _, score in result.symbols]
    assert scores == sorted(scores, reverse=True)
    assert result.reason  # no smtp_message: the fallback text
    assert result.subject == ""


def test_the_envelope_reaches_rspamd(rspamd: RspamdProcess) -> None:
    """rspamd logs the queue id, client IP and envelope sender it was given."""
    run(check(client(rspamd), PLAIN, queue_id="QENVELOPE7", sender="envelope@example.org"))
    lines = [
        line
        for line in (rspamd.directory / "log" / "rspamd.log").read_text().splitlines()
        if "QENVELOPE7" in line
    ]
    assert lines, "no log line carries the Queue-Id"
    assert any(CLIENT_IP in line and "envelope@example.org" in line for line in lines)


def test_learning_spam_changes_the_learned_count(rspamd: RspamdProcess) -> None:
    async def scenario() -> tuple[int, bool, int, bool, bool]:
        c = client(rspamd)
        before = (await c.stat())["learned"]
        learned = await c.learn(SPAM, spam=True)
        after = (await c.stat())["learned"]
        again = await c.learn(SPAM, spam=True)  # rspamd: already learned (208)
        ham = await c.learn(HAM, spam=False)
        return before, learned, after, again, ham

    before, learned, after, again, ham = run(scenario())
    assert isinstance(before, int)
    assert learned is True
    assert after == before + 1
    assert again is False
    assert ham is True
    # min_learns = 1 in the fixture: both classes taught, Bayes now speaks.
    result = run(check(client(rspamd), SPAM, sender="prize@lottery.example"))
    assert "BAYES_SPAM" in dict(result.symbols)


def test_too_short_to_learn_is_not_learned(rspamd: RspamdProcess) -> None:
    assert run(client(rspamd).learn(b"Subject: x\r\n\r\nhi\r\n", spam=False)) is False


def test_wrong_password_is_an_error_without_the_password(rspamd: RspamdProcess) -> None:
    wrong = "not-" + rspamd.password
    with pytest.raises(RspamdError) as caught:
        run(client(rspamd, password=wrong).learn(SPAM, spam=True))
    assert "401" in str(caught.value)
    assert wrong not in str(caught.value) and rspamd.password not in str(caught.value)
    assert rspamd.password not in repr(client(rspamd))
    with pytest.raises(RspamdError, match="401"):
        run(client(rspamd, password="").stat())


def test_stat_needs_a_controller() -> None:
    with pytest.raises(RspamdError, match="controller"):
        run(RspamdClient("http://127.0.0.1:1").stat())


def test_stopped_rspamd_is_refused_not_timed_out(tmp_path: Path) -> None:
    process = start_rspamd(tmp_path)
    try:
        c = client(process, timeout=3600.0)
        assert run(check(c, GTUBE)).action == "reject"
    finally:
        process.stop()
    with pytest.raises(RspamdError) as caught:
        run(check(c, GTUBE))
    # A refused connection, not the hour-long timeout: the error says which.
    assert "timed out" not in str(caught.value)
    with pytest.raises(RspamdError):
        run(c.learn(SPAM, spam=True))


# -- fake servers ----------------------------------------------------------------


class Fake:
    """An HTTP server on 127.0.0.1 that records each request (head and body)
    and answers ``reply`` (None: never answers; it waits for the client to
    go away)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.requests: list[tuple[bytes, bytes]] = []
        self.url = ""

    async def __aenter__(self) -> Fake:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            self.requests.append((head, await reader.readexactly(length)))
            if self.reply is None:
                await reader.read()  # until the client gives up
            else:
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def http(body: bytes, status: str = "200 OK", fields: str | None = None) -> bytes:
    if fields is None:
        fields = f"Content-Length: {len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\nConnection: close\r\n{fields}\r\n".encode() + body


def reply_json(**overrides: Any) -> bytes:
    value: dict[str, Any] = {
        "is_skipped": False,
        "score": 5.5,
        "required_score": 15.0,
        "action": "add header",
        "symbols": {"ONE": {"name": "ONE", "score": 5.5}},
    }
    value.update(overrides)
    return json.dumps(value).encode()


async def fake_check(reply: bytes | None, **kwargs: Any) -> tuple[RspamdResult, Fake]:
    async with Fake(reply) as fake:
        result = await check(RspamdClient(fake.url, **kwargs), PLAIN)
    return result, fake


def test_hanging_server_times_out() -> None:
    async def scenario() -> Fake:
        async with Fake(None) as fake:
            with pytest.raises(RspamdError):
                await check(RspamdClient(fake.url, timeout=0.3), PLAIN)
        return fake

    assert len(run(scenario()).requests) == 1


def test_the_request_is_well_formed() -> None:
    result, fake = run(fake_check(http(reply_json())))
    assert result == RspamdResult("add header", 5.5, 15.0, (("ONE", 5.5),), result.reason)
    [(head, body)] = fake.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /checkv2 HTTP/1.1"
    assert f"Content-Length: {len(PLAIN)}" in lines
    assert body == PLAIN
    for field in (
        f"IP: {CLIENT_IP}",
        "Helo: mx.example.org",
        "From: alice@example.org",
        "Rcpt: bob@example.net",
        "Queue-Id: QTEST1",
        "MTA-Name: mx.estafeta.test",
        "Connection: close",
    ):
        assert field in lines
    assert not any(line.startswith(("User:", "Password:")) for line in lines)


def test_url_path_prefix_is_kept() -> None:
    async def scenario() -> Fake:
        async with Fake(http(reply_json())) as fake:
            await RspamdClient(fake.url + "/rspamd/").check(PLAIN)
        return fake

    [(head, _)] = run(scenario()).requests
    assert head.startswith(b"POST /rspamd/checkv2 HTTP/1.1\r\n")


def test_crlf_in_envelope_does_not_inject_fields() -> None:
    async def scenario() -> Fake:
        async with Fake(http(reply_json())) as fake:
            await RspamdClient(fake.url).check(
                PLAIN,
                ip="192.0.2.1\r\nX-Injected: ip",
                helo="evil.example\r\nX-Injected: helo",
                sender="a@b.example\nRcpt: victim@example.net",
                recipients=["bob@example.net\r\n\r\nGET / HTTP/1.1", "c\x00@d\x7f.example"],
                queue_id="Q\rUser: root",
            )
        return fake

    [(head, body)] = run(scenario()).requests
    lines = head.decode().split("\r\n")
    assert lines[-2:] == ["", ""]  # the head ends once, at its end
    names = [line.split(":", 1)[0] for line in lines[1:-2]]
    assert "X-Injected" not in names and "User" not in names and "GET / HTTP/1.1" not in lines
    assert names.count("Rcpt") == 2
    assert "IP" not in names  # not an address once cleaned: left out
    assert "Helo: evil.example  X-Injected: helo" in lines
    assert "From: a@b.example Rcpt: victim@example.net" in lines
    assert "Rcpt: c @d .example" in lines
    assert body == PLAIN
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for line in lines for c in line)


def test_oversize_reply_is_refused() -> None:
    big = reply_json(padding="x" * 2000)
    with pytest.raises(RspamdError, match="1000"):
        run(fake_check(http(big), max_response=1000))
    with pytest.raises(RspamdError, match="1000"):  # no Content-Length: read until close
        run(fake_check(http(big, fields=""), max_response=1000))
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(big[i : i + 300]), big[i : i + 300]) for i in range(0, len(big), 300)
    )
    with pytest.raises(RspamdError, match="1000"):
        run(
            fake_check(
                http(chunked + b"0\r\n\r\n", fields="Transfer-Encoding: chunked\r\n"),
                max_response=1000,
            )
        )
    # The same replies fit a larger bound: it is the bound that refused them.
    for reply in (
        http(big),
        http(big, fields=""),
        http(chunked + b"0\r\n\r\n", fields="Transfer-Encoding: chunked\r\n"),
    ):
        assert run(fake_check(reply, max_response=4000))[0].score == 5.5


def test_huge_header_block_is_refused() -> None:
    fields = "".join(f"X-Filler-{i}: {'y' * 50}\r\n" for i in range(2000))
    with pytest.raises(RspamdError):
        run(
            fake_check(
                http(reply_json(), fields=fields + f"Content-Length: {len(reply_json())}\r\n")
            )
        )


@pytest.mark.parametrize(
    "reply",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b"\xff\xfe\x00",
        json.dumps({"score": 1.0, "required_score": 15.0}).encode(),
        reply_json(action=7),
        reply_json(score="5.5"),
        reply_json(score=True),
        reply_json(required_score=None),
        reply_json(symbols=["ONE"]),
        reply_json(symbols={"ONE": 5.5}),
        reply_json(symbols={"ONE": {"score": "high"}}),
        reply_json(messages="go away"),
        reply_json(messages={"smtp_message": 42}),
        reply_json(subject=["a"]),
        b'{"action": "reject", "score": Infinity, "required_score": 15}',
    ],
)
def test_wrong_reply_shape_is_an_error(reply: bytes) -> None:
    with pytest.raises(RspamdError):
        run(fake_check(http(reply)))


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # closed at once
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}",  # cut short
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n{}",
    ],
)
def test_broken_http_is_an_error(raw: bytes) -> None:
    with pytest.raises(RspamdError):
        run(fake_check(raw))


def test_error_status_names_the_status_and_rspamd_error() -> None:
    body = json.dumps({"error": "something\r\nbroke"}).encode()
    with pytest.raises(RspamdError, match="HTTP 500 something broke"):
        run(fake_check(http(body, status="500 Internal Server Error")))


def test_symbols_most_telling_first_and_bounded() -> None:
    scores = {f"S{i:02d}": (i - 15) / 2 for i in range(40)}
    symbols = {name: {"name": name, "score": score} for name, score in scores.items()}
    result, _ = run(fake_check(http(reply_json(symbols=symbols, score=20.0))))
    expected = sorted(
        scores.items(),
        key=lambda item: (-abs(item[1]), item[0]),
    )[:MAX_SYMBOLS]
    assert len(result.symbols) == MAX_SYMBOLS
    assert result.symbols == tuple(expected)
    assert result.symbols[:3] == (("S39", 12.0), ("S38", 11.5), ("S37", 11.0))
    # No smtp_message: the reason names the symbols that added most.
    assert result.reason.startswith("spam score 20.00/15.00 (S39, S38, S37, S36, S35)")


def test_smtp_message_and_subject_are_passed_flat() -> None:
    reply = reply_json(
        action="rewrite subject",
        subject="***SPAM*** hello\r\nBcc: victim@example.net",
        messages={"smtp_message": "Go\r\naway"},
    )
    result, _ = run(fake_check(http(reply)))
    assert result.action == "rewrite subject"
    assert result.subject == "***SPAM*** hello Bcc: victim@example.net"
    assert result.reason == "Go away"


def test_chunked_reply_is_read() -> None:
    body = reply_json(action="no action", score=0.5)
    chunked = b"%x;ext=1\r\n%s\r\n0\r\nTrailer: x\r\n\r\n" % (len(body), body)
    result, _ = run(fake_check(http(chunked, fields="Transfer-Encoding: chunked\r\n")))
    assert (result.action, result.score) == ("no action", 0.5)


def test_learn_answers() -> None:
    async def learn(reply: bytes) -> bool:
        async with Fake(reply) as fake:
            c = RspamdClient("http://127.0.0.1:1", controller_url=fake.url, password="pw")
            learned = await c.learn(SPAM, spam=False)
        [(head, body)] = fake.requests
        assert head.startswith(b"POST /learnham HTTP/1.1\r\n") and b"\r\nPassword: pw\r\n" in head
        assert body == SPAM
        return learned

    assert run(learn(http(b'{"success":true}'))) is True
    assert run(learn(http(b'{"error":"already learned"}', status="208 Already Reported"))) is False
    assert run(learn(b"HTTP/1.1 204 No Content\r\n\r\n")) is False
    with pytest.raises(RspamdError):
        run(learn(http(b'{"success":false}')))
    with pytest.raises(RspamdError, match="HTTP 500"):
        run(learn(http(b'{"error":"redis down"}', status="500 Internal Server Error")))


def test_bad_urls_are_refused_at_construction() -> None:
    for url in ("", "ftp://host", "http://", "http://user:pw@host:1", "http://host/?q=1"):
        with pytest.raises(ValueError):
            RspamdClient(url)
    with pytest.raises(ValueError):
        RspamdClient("http://127.0.0.1:1", timeout=0)
