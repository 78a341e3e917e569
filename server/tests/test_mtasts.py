"""MTA-STS (rfc8461): records, policies, discovery and the HTTPS fetch."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme
from _ports import free_port

from estafeta.dns import MockResolver
from estafeta.queue.mtasts import (
    FAILED_FETCH_RETRY,
    MTASTS,
    MemoryCache,
    Policy,
    PolicyError,
    fetch_policy,
    parse_policy,
    parse_txt,
    select_txt,
)

DOMAIN = "example.net"
POLICY_TEXT = (
    "version: STSv1\nmode: enforce\nmx: mx1.example.net\nmx: *.mx.example.net\nmax_age: 86400\n"
)


# -- the TXT record (rfc8461:3.1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("txt", "expected"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1; id=abc", "abc"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1 ; id=abc ; ", "abc"),
        ("v=STSv1;\tid=abc", "abc"),
        ("v=STSv1; id=" + "a" * 32, "a" * 32),
        ("v=STSv1; id=abc; ext=value", "abc"),  # extensions are ignored
        ("v=STSv1; ext-1.x_y=v:a/l; id=abc", "abc"),
        ("v=STSv1; id=first; id=second", "first"),  # first one counts
        ("v=STSv1; id=" + "a" * 33, None),
        ("v=STSv1; id=ab-c", None),
        ("v=STSv1; id=", None),
        ("v=STSv1;", None),
        ("v=STSv1", None),
        ("v=STSv1; ext=x", None),  # no id
        ("v=STSv2; id=abc", None),
        ("v=stsv1; id=abc", None),
        (" v=STSv1; id=abc", None),
        ("id=abc; v=STSv1", None),
        ("v=STSv1; id=abc;; ", None),
        ("v=STSv1; id=abc; bad field", None),
        ("v=STSv1; id=abc; ext=a=b", None),
        ("v=STSv1x; id=abc", None),
        ("", None),
    ],
)
def test_parse_txt(txt: str, expected: str | None) -> None:
    assert parse_txt(txt) == expected


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (("v=STSv1; id=one",), "one"),
        (("v=spf1 -all", "v=STSv1; id=one"), "one"),
        (("v=STSv1; id=one", "v=STSv1; id=two"), None),  # rfc8461:3.1: exactly one
        (("v=STSv1; id=one", "v=STSv1; broken"), None),
        (("v=spf1 -all",), None),
        ((), None),
    ],
)
def test_select_txt(records: tuple[str, ...], expected: str | None) -> None:
    assert select_txt(records) == expected


# -- the policy file (rfc8461:3.2) -----------------------------------------------------


def test_parse_policy() -> None:
    policy = parse_policy(POLICY_TEXT)
    assert policy == Policy(
        mode="enforce",
        mx=("mx1.example.net", "*.mx.example.net"),
        max_age=86400,
        # The file's lines, for TLS reports (rfc8460:4.4 policy-string).
        lines=tuple(POLICY_TEXT.strip().splitlines()),
    )


@pytest.mark.parametrize(
    ("text", "mode", "mx", "max_age"),
    [
        (POLICY_TEXT.replace("\n", "\r\n"), "enforce", 2, 86400),  # CRLF
        (POLICY_TEXT.rstrip("\n"), "enforce", 2, 86400),  # no final newline
        ("version: STSv1\nmode: testing\nmx: MX.Example.NET.\nmax_age: 0\n", "testing", 1, 0),
        ("version: STSv1\r\nmode: none\r\nmax_age: 31557600\r\n", "none", 0, 31557600),
        ("version:STSv1\nmode:\tenforce\nmx:mx.example.net  \nmax_age:   60\n", "enforce", 1, 60),
        # extensions ignored; repeated fields: the first counts (rfc8461:3.2)
        (
            "version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 5\n"
            "max_age: 7\nx-ext: anything: at all\nfoo_bar.baz: 1\n",
            "enforce",
            1,
            5,
        ),
        ("mx: a.example\nmax_age: 5\nmode: enforce\nversion: STSv1\n", "enforce", 1, 5),
        ("version: STSv1\n\nmode: none\n\nmax_age: 5\n\n", "none", 0, 5),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmx: a.example\nmax_age: 5",
            "enforce",
            1,
            5,
        ),
    ],
)
def test_parse_policy_valid(text: str, mode: str, mx: int, max_age: int) -> None:
    policy = parse_policy(text)
    assert policy.mode == mode
    assert len(policy.mx) == mx
    assert policy.max_age == max_age
    assert all(pattern == pattern.lower() and not pattern.endswith(".") for pattern in policy.mx)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mode: enforce\nmx: a.example\nmax_age: 5\n", "no version"),
        ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 5\n", "unsupported version"),
        ("version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 5\n", "unsupported version"),
        ("version: STSv1\nmx: a.example\nmax_age: 5\n", "no mode"),
        ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 5\n", "bad mode"),
        ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 5\n", "bad mode"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "bad max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "bad max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "bad max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n", "bad max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: \n", "bad max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: +5\n", "bad max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 5\n", "no mx"),
        ("version: STSv1\nmode: testing\nmax_age: 5\n", "no mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 5\n", "bad mx"),
        ("version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 5\n", "bad mx"),
        ("version: STSv1\nmode: enforce\nmx: -a.example\nmax_age: 5\n", "bad mx"),
        ("version: STSv1\nmode: enforce\nmx: mx.example.net:25\nmax_age: 5\n", "bad mx"),
        ("version: STSv1\nmode: enforce\nmx:\nmax_age: 5\n", "bad mx"),
        ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 5\ngarbage\n", "line 5"),
        ("version STSv1\nmode: enforce\n", "line 1"),
        ("<html><body>Not found</body></html>", "line 1"),
        ("", "no version"),
    ],
)
def test_parse_policy_invalid(text: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        parse_policy(text)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mx1.example.net", True),
        ("MX1.Example.NET.", True),
        ("a.mx.example.net", True),
        ("b.mx.example.net", True),
        ("mx.example.net", False),  # the wildcard needs one more label
        ("a.b.mx.example.net", False),  # ... exactly one
        ("mx2.example.net", False),
        ("example.net", False),
        ("xmx1.example.net", False),
        ("amx.example.net", False),
        ("", False),
    ],
)
def test_matches(host: str, expected: bool) -> None:
    policy = parse_policy(POLICY_TEXT)
    assert policy.matches(host) is expected


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*.example.net", "mx.example.net", True),
        ("*.example.net", "a.mx.example.net", False),
        ("*.example.net", "example.net", False),
        ("*.example.net", ".example.net", False),
        ("mx.example.net", "mx.example.net", True),
        ("mx.example.net", "a.mx.example.net", False),
    ],
)
def test_matches_wildcard(pattern: str, host: str, expected: bool) -> None:
    assert Policy(mode="enforce", mx=(pattern,), max_age=60).matches(host) is expected


def test_expired() -> None:
    policy = Policy(mode="enforce", mx=("a.example",), max_age=100, fetched=1000.0)
    assert not policy.expired(1000.0)
    assert not policy.expired(1099.9)
    assert policy.expired(1100.0)
    assert Policy(mode="none", mx=(), max_age=0, fetched=5.0).expired(5.0)


def test_json_round_trip() -> None:
    policy = Policy("testing", ("mx.example.net", "*.example.org"), 600, "abc", 1234.5)
    assert Policy.from_json(policy.to_json()) == policy
    with_lines = parse_policy(POLICY_TEXT)
    assert Policy.from_json(with_lines.to_json()) == with_lines
    # A policy cached before the lines were kept still reads (without them).
    old = '{"mode": "enforce", "mx": ["a.example"], "max_age": 1, "id": "x", "fetched": 2}'
    assert Policy.from_json(old).lines == ()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"mode": "bogus", "mx": [], "max_age": 1}',
        '{"mode": "enforce", "mx": "a.example", "max_age": 1}',
        '{"mode": "enforce", "mx": [], "max_age": "1"}',
        '{"mode": "enforce", "mx": [], "max_age": -1}',
        '{"mode": "enforce", "mx": [], "max_age": 1, "id": 5}',
        '{"mode": "enforce", "mx": [], "max_age": 1, "fetched": "now"}',
        '{"mode": "enforce", "mx": [], "max_age": 1, "lines": "version: STSv1"}',
    ],
)
def test_from_json_invalid(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.from_json(text)


# -- discovery (rfc8461:5.1) -----------------------------------------------------------


@dataclass
class FakeFetcher:
    """Serves policy texts (or raises) per call, counting the calls."""

    responses: list[str | BaseException] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    delay: float = 0.0

    async def __call__(self, domain: str) -> str:
        self.calls.append(domain)
        if self.delay:
            await asyncio.sleep(self.delay)
        response = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(response, BaseException):
            raise response
        return response


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def setup(
    txt: tuple[str, ...] | None = ("v=STSv1; id=one;",),
    responses: list[str | BaseException] | None = None,
) -> tuple[MTASTS, MockResolver, MemoryCache, FakeFetcher, Clock]:
    resolver = MockResolver()
    if txt is not None:
        resolver.add(f"_mta-sts.{DOMAIN}", "TXT", *txt)
    cache = MemoryCache()
    fetcher = FakeFetcher(responses if responses is not None else [POLICY_TEXT])
    clock = Clock()
    return MTASTS(resolver, cache, fetcher=fetcher, clock=clock), resolver, cache, fetcher, clock


def set_txt(resolver: MockResolver, *records: str) -> None:
    resolver.records[(f"_mta-sts.{DOMAIN}", "TXT")] = list(records)


def test_fetch_once_then_cached() -> None:
    sts, resolver, cache, fetcher, clock = setup()

    async def run() -> None:
        policy = await sts.policy_for(DOMAIN)
        assert policy is not None
        assert policy.mode == "enforce"
        assert policy.policy_id == "one"
        assert policy.fetched == clock.now
        assert cache.get(DOMAIN) == policy
        clock.now += 3600
        assert await sts.policy_for(DOMAIN) == policy
        assert await sts.policy_for("Example.NET.") == policy

    asyncio.run(run())
    assert fetcher.calls == [DOMAIN]
    assert resolver.queries.count((f"_mta-sts.{DOMAIN}", "TXT")) == 3


def test_new_id_refetches() -> None:
    testing = POLICY_TEXT.replace("enforce", "testing")
    sts, resolver, cache, fetcher, clock = setup(responses=[POLICY_TEXT, testing])

    async def run() -> None:
        first = await sts.policy_for(DOMAIN)
        assert first is not None and first.mode == "enforce"
        set_txt(resolver, "v=STSv1; id=two")
        clock.now += 10
        second = await sts.policy_for(DOMAIN)
        assert second is not None
        assert (second.mode, second.policy_id, second.fetched) == ("testing", "two", clock.now)
        assert cache.get(DOMAIN) == second

    asyncio.run(run())
    assert len(fetcher.calls) == 2


@pytest.mark.parametrize(
    "failure",
    [
        PolicyError("redirect not followed"),
        OSError("connection refused"),
        TimeoutError("timed out"),
        ssl.SSLCertVerificationError("certificate verify failed"),
        "this is not a policy",
        "version: STSv1\nmode: enforce\nmax_age: 60\n",  # no mx
    ],
)
def test_failed_refetch_keeps_the_cached_policy(failure: str | BaseException) -> None:
    sts, resolver, cache, fetcher, clock = setup(responses=[POLICY_TEXT, failure, failure])

    async def run() -> None:
        first = await sts.policy_for(DOMAIN)
        assert first is not None
        set_txt(resolver, "v=STSv1; id=two")
        assert await sts.policy_for(DOMAIN) == first
        assert cache.get(DOMAIN) == first
        # A failed fetch is not retried for every message...
        assert await sts.policy_for(DOMAIN) == first
        assert len(fetcher.calls) == 2
        # ... but again after a while (the cache still has the old id).
        clock.now += FAILED_FETCH_RETRY
        assert await sts.policy_for(DOMAIN) == first

    asyncio.run(run())
    assert len(fetcher.calls) == 3


def test_failed_fetch_is_retried_at_once_for_a_new_id() -> None:
    sts, resolver, _, fetcher, _ = setup(responses=[OSError("refused"), POLICY_TEXT])

    async def run() -> None:
        assert await sts.policy_for(DOMAIN) is None
        assert await sts.policy_for(DOMAIN) is None  # same id: no second fetch yet
        set_txt(resolver, "v=STSv1; id=two")
        policy = await sts.policy_for(DOMAIN)
        assert policy is not None and policy.policy_id == "two"

    asyncio.run(run())
    assert len(fetcher.calls) == 2


def test_failed_first_fetch_is_no_policy() -> None:
    sts, _, cache, fetcher, _ = setup(responses=[OSError("unreachable")])
    assert asyncio.run(sts.policy_for(DOMAIN)) is None
    assert cache.get(DOMAIN) is None
    assert fetcher.calls == [DOMAIN]


@pytest.mark.parametrize(
    ("failure", "result_type"),
    [
        (OSError("connection refused"), "sts-policy-fetch-error"),
        (PolicyError("HTTP status 404"), "sts-policy-fetch-error"),
        (TimeoutError("timed out"), "sts-policy-fetch-error"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "sts-webpki-invalid"),
        ("version: STSv1\nmode: enforce\nmax_age: 60\n", "sts-policy-invalid"),
    ],
)
def test_why_a_policy_could_not_be_had(failure: str | BaseException, result_type: str) -> None:
    """rfc8460:4.3.2.2 — for TLS reports: until the domain has a policy
    again, or no record."""
    sts, resolver, *_ = setup(responses=[failure, POLICY_TEXT])

    async def run() -> None:
        assert sts.failure(DOMAIN) is None
        assert await sts.policy_for(DOMAIN) is None
        kind, detail = sts.failure("Example.NET.") or ("", "")
        assert kind == result_type and detail
        set_txt(resolver, "v=spf1 -all")
        assert await sts.policy_for(DOMAIN) is None
        assert sts.failure(DOMAIN) is None  # no record: nothing failed
        set_txt(resolver, "v=STSv1; id=two")
        assert await sts.policy_for(DOMAIN) is not None
        assert sts.failure(DOMAIN) is None

    asyncio.run(run())


def test_unexpected_fetcher_error_is_contained() -> None:
    sts, *_ = setup(responses=[RuntimeError("bug in a fetcher")])
    assert asyncio.run(sts.policy_for(DOMAIN)) is None


@pytest.mark.parametrize(
    "records",
    [
        (),  # no TXT at all
        ("v=spf1 -all",),
        ("v=STSv1; id=bad-id",),
        ("v=STSv1; id=one", "v=STSv1; id=two"),
    ],
)
def test_no_valid_txt(records: tuple[str, ...]) -> None:
    sts, resolver, _, fetcher, clock = setup()

    async def run() -> None:
        first = await sts.policy_for(DOMAIN)
        assert first is not None
        set_txt(resolver, *records)
        # rfc8461:5.1 — the cached policy still applies ...
        assert await sts.policy_for(DOMAIN) == first
        # ... until it expires.
        clock.now += first.max_age
        assert await sts.policy_for(DOMAIN) is None

    asyncio.run(run())
    assert len(fetcher.calls) == 1


def test_no_txt_and_no_cache() -> None:
    sts, _, _, fetcher, _ = setup(txt=None)
    assert asyncio.run(sts.policy_for(DOMAIN)) is None
    assert fetcher.calls == []


def test_dns_temperror() -> None:
    sts, resolver, _, fetcher, clock = setup()

    async def run() -> None:
        first = await sts.policy_for(DOMAIN)
        assert first is not None
        resolver.temperror.add(f"_mta-sts.{DOMAIN}")
        assert await sts.policy_for(DOMAIN) == first
        clock.now += first.max_age + 1
        assert await sts.policy_for(DOMAIN) is None

    asyncio.run(run())
    assert len(fetcher.calls) == 1

    sts, resolver, _, fetcher, _ = setup()
    resolver.temperror.add(f"_mta-sts.{DOMAIN}")
    assert asyncio.run(sts.policy_for(DOMAIN)) is None
    assert fetcher.calls == []


def test_expired_policy_is_refetched() -> None:
    sts, _, _, fetcher, clock = setup(responses=[POLICY_TEXT, POLICY_TEXT, OSError("down")])

    async def run() -> None:
        first = await sts.policy_for(DOMAIN)
        assert first is not None
        clock.now += first.max_age - 1
        assert await sts.policy_for(DOMAIN) == first
        clock.now += 1  # expired: the same id is fetched again
        second = await sts.policy_for(DOMAIN)
        assert second is not None and second.fetched == clock.now
        clock.now += second.max_age  # expired, and the refetch fails
        assert await sts.policy_for(DOMAIN) is None

    asyncio.run(run())
    assert len(fetcher.calls) == 3


def test_mode_none_is_returned_and_cached() -> None:
    text = "version: STSv1\nmode: none\nmax_age: 86400\n"
    sts, _, cache, _, _ = setup(responses=[text])
    policy = asyncio.run(sts.policy_for(DOMAIN))
    assert policy is not None and policy.mode == "none"
    assert cache.get(DOMAIN) == policy


def test_concurrent_lookups_fetch_once() -> None:
    sts, _, _, fetcher, _ = setup()
    fetcher.delay = 0.05

    async def run() -> list[Policy | None]:
        return list(await asyncio.gather(*(sts.policy_for(DOMAIN) for _ in range(5))))

    results = asyncio.run(run())
    assert len(fetcher.calls) == 1
    assert all(result is not None and result == results[0] for result in results)
    assert sts._locks == {}


class BrokenCache(MemoryCache):
    def get(self, domain: str) -> Policy | None:
        return Policy.from_json("{corrupt")

    def put(self, domain: str, policy: Policy) -> None:
        raise OSError("disk full")


def test_broken_cache_does_not_stop_delivery() -> None:
    resolver = MockResolver({(f"_mta-sts.{DOMAIN}", "TXT"): ["v=STSv1; id=one"]})
    fetcher = FakeFetcher([POLICY_TEXT])
    sts = MTASTS(resolver, BrokenCache(), fetcher=fetcher)
    policy = asyncio.run(sts.policy_for(DOMAIN))
    assert policy is not None and policy.policy_id == "one"


# -- fetching over HTTPS (rfc8461:3.3) ---------------------------------------------------

HOST = f"mta-sts.{DOMAIN}"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def resolver_for_localhost() -> MockResolver:
    return MockResolver({(HOST, "A"): ["127.0.0.1"]})


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def respond(response: bytes, requests: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if requests is not None:
            requests.append(request)
        writer.write(response)
        await writer.drain()

    return handler


@contextlib.asynccontextmanager
async def https_server(ca: trustme.CA, handler: Handler, name: str = HOST) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def fetch(ca: trustme.CA, handler: Handler, *, name: str = HOST, timeout: float = 5.0) -> str:
    async def run() -> str:
        async with https_server(ca, handler, name) as port:
            return await fetch_policy(
                DOMAIN,
                resolver=resolver_for_localhost(),
                ssl_context=client_context(ca),
                port=port,
                timeout=timeout,
            )

    return asyncio.run(run())


def http(status: str, headers: list[str], body: bytes = b"") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


BODY = POLICY_TEXT.replace("\n", "\r\n").encode()


def test_fetch_with_content_length(ca: trustme.CA) -> None:
    requests: list[bytes] = []
    response = http(
        "200 OK", ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(BODY)}"], BODY
    )
    text = fetch(ca, respond(response, requests))
    assert parse_policy(text).mx == ("mx1.example.net", "*.mx.example.net")
    (request,) = requests
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /.well-known/mta-sts.txt HTTP/1.1"
    assert any(line.startswith(f"Host: {HOST}:") for line in lines)


def test_fetch_chunked(ca: trustme.CA) -> None:
    chunks = [BODY[:10], BODY[10:50], BODY[50:]]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-T: 1\r\n\r\n"
    response = http(
        "200 OK",
        ["Content-Type: text/plain", "Transfer-Encoding: chunked", "Connection: keep-alive"],
        body,
    )
    assert fetch(ca, respond(response)) == BODY.decode()


def test_fetch_many_small_chunks(ca: trustme.CA) -> None:
    body = b"".join(b"1\r\n%s\r\n" % BODY[i : i + 1] for i in range(len(BODY))) + b"0\r\n\r\n"
    response = http("200 OK", ["Content-Type: text/plain", "Transfer-Encoding: chunked"], body)
    assert fetch(ca, respond(response)) == BODY.decode()


def test_fetch_until_close(ca: trustme.CA) -> None:
    response = http("200 OK", ["Content-Type: TEXT/PLAIN", "Connection: close"], BODY)
    assert fetch(ca, respond(response)) == BODY.decode()


def test_fetch_skips_interim_response(ca: trustme.CA) -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\n" + http(
        "200 OK", ["Content-Type: text/plain", f"Content-Length: {len(BODY)}"], BODY
    )
    assert fetch(ca, respond(response)) == BODY.decode()


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            http(
                "301 Moved Permanently",
                [f"Location: https://{HOST}/elsewhere", "Content-Length: 0"],
            ),
            "redirect",
        ),
        (http("302 Found", ["Location: https://evil.example/", "Content-Length: 0"]), "redirect"),
        (http("404 Not Found", ["Content-Type: text/plain", "Content-Length: 0"]), "404"),
        (
            http("200 OK", ["Content-Type: text/html", f"Content-Length: {len(BODY)}"], BODY),
            "text/html",
        ),
        (http("200 OK", [f"Content-Length: {len(BODY)}"], BODY), "no media type"),
        (http("200 OK", ["Content-Type: text/plainx", "Content-Length: 1"], b"x"), "text/plainx"),
        (http("200 OK", ["Content-Type: text/plain", "Content-Length: 70000"]), "too large"),
        (
            http("200 OK", ["Content-Type: text/plain", "Connection: close"], b"x" * 70000),
            "too large",
        ),
        (
            http(
                "200 OK",
                ["Content-Type: text/plain", "Transfer-Encoding: chunked"],
                b"8000\r\n"
                + b"x" * 0x8000
                + b"\r\n"
                + b"8001\r\n"
                + b"x" * 0x8001
                + b"\r\n0\r\n\r\n",
            ),
            "too large",
        ),
        (http("200 OK", ["Content-Type: text/plain", "Transfer-Encoding: gzip"]), "transfer"),
        (http("200 OK", ["Content-Type: text/plain", "Content-Length: 100"], b"short"), "closed"),
        (http("200 OK", ["Content-Type: text/plain", "Content-Length: -1"]), "Content-Length"),
        (b"SMTP/1.0 220 hello\r\n\r\n", "not an HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", "closed"),
        (http("200 OK", ["Content-Type: text/plain", "Content-Length: 2"], b"\xff\xfe"), "UTF-8"),
    ],
)
def test_fetch_refused(ca: trustme.CA, response: bytes, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        fetch(ca, respond(response))


def test_wrong_certificate_name_refused(ca: trustme.CA) -> None:
    ok = http("200 OK", ["Content-Type: text/plain", f"Content-Length: {len(BODY)}"], BODY)
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(ca, respond(ok), name="www.example.net")


def test_untrusted_certificate_refused(ca: trustme.CA) -> None:
    ok = http("200 OK", ["Content-Type: text/plain", f"Content-Length: {len(BODY)}"], BODY)
    other_ca = trustme.CA()

    async def run() -> str:
        async with https_server(other_ca, respond(ok)) as port:
            return await fetch_policy(
                DOMAIN, resolver=resolver_for_localhost(), ssl_context=client_context(ca), port=port
            )

    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(run())


def test_fetch_timeout(ca: trustme.CA) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up

    with pytest.raises(TimeoutError):
        fetch(ca, silent, timeout=0.5)


def test_connection_refused(ca: trustme.CA) -> None:
    async def run() -> str:
        return await fetch_policy(
            DOMAIN,
            resolver=resolver_for_localhost(),
            ssl_context=client_context(ca),
            port=free_port(),
        )

    with pytest.raises(OSError):
        asyncio.run(run())


def test_address_comes_from_the_resolver(ca: trustme.CA) -> None:
    ok = http("200 OK", ["Content-Type: text/plain", f"Content-Length: {len(BODY)}"], BODY)

    async def run(resolver: MockResolver) -> str:
        async with https_server(ca, respond(ok)) as port:
            return await fetch_policy(
                DOMAIN, resolver=resolver, ssl_context=client_context(ca), port=port
            )

    with pytest.raises(PolicyError, match="no address"):
        asyncio.run(run(MockResolver()))
    with pytest.raises(OSError, match="DNS"):
        asyncio.run(run(MockResolver(temperror=[HOST])))
    # An unreachable IPv6 address first, then the IPv4 one that works.
    resolver = resolver_for_localhost()
    resolver.add(HOST, "AAAA", "::1")
    assert asyncio.run(run(resolver)) == BODY.decode()
    assert (HOST, "A") in resolver.queries


def test_invalid_domain() -> None:
    with pytest.raises(PolicyError):
        asyncio.run(fetch_policy("bad domain!", resolver=MockResolver()))
