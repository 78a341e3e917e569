"""The MX connection screen (estafeta.smtp.screen) and the pregreet greeting
of SMTPProtocol: unit tests against MockResolver, then real connections to
an in-process server on 127.0.0.1 (raw sockets and smtplib).

No test waits on a clock for its verdict: pauses that must not be sat
through are long (a failing test ends on its own deadline, not a wrong
pass), and the pass cache's clock is a fake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import smtplib
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from _dnsfakes import Clock, HangingResolver

from estafeta.config_spam import ScreenConfig
from estafeta.dns import Answer, MockResolver
from estafeta.metrics import REGISTRY
from estafeta.policy.dnsbl import Lists, Settings, Zone
from estafeta.smtp.protocol import Connections, SMTPProtocol
from estafeta.smtp.screen import PassCache, Screen, ScreenResult, helo_problems

T = TypeVar("T")

HOST = "mx.example.test"
BL, BL2, WL = "bl.example", "bl2.example", "wl.example"
CLIENT = "198.51.100.66"
LOCAL = "127.0.0.1"  # the socket tests' client
LONG = 30.0  # a pause no passing test sits through


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        r.estafeta_fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == name
    ]


def make_screen(
    resolver: MockResolver | None = None,
    *zones: Zone,
    clock: Clock | None = None,
    reject_score: float = 1.0,
    dnsbl_timeout: float = 2.0,
    **config: Any,
) -> Screen:
    config.setdefault("fcrdns", "off")
    resolver = resolver if resolver is not None else MockResolver()
    lists = Lists(resolver, Settings(zones=zones, timeout=dnsbl_timeout), clock=clock or Clock())
    return Screen(
        ScreenConfig(**config),
        resolver,
        lists,
        reject_score=reject_score,
        clock=clock or Clock(),
    )


def listed(ip: str, zone: str, code: str = "127.0.0.2") -> MockResolver:
    octets = ".".join(reversed(ip.split(".")))
    return MockResolver({(f"{octets}.{zone}", "A"): [code]})


# -- DNS lists at connection time ---------------------------------------------------


def test_a_listed_client_is_refused_naming_the_zone() -> None:
    resolver = listed(CLIENT, BL)
    result = run(make_screen(resolver, Zone(BL)).check_client(CLIENT))
    assert result.reject == (f"554 5.7.1 Service unavailable; client [{CLIENT}] listed by {BL}")
    assert result.reason == "dnsbl"
    assert "dnsbl:bl.example" in result.signals
    assert ("66.100.51.198.bl.example", "A") in resolver.queries


def test_an_unlisted_client_passes() -> None:
    result = run(make_screen(MockResolver(), Zone(BL)).check_client(CLIENT))
    assert result.reject is None and not result.allowlisted and result.signals == []


def test_weights_add_up_to_the_reject_score() -> None:
    zones = (Zone(BL, weight=0.5), Zone(BL2, weight=0.5))
    one = listed(CLIENT, BL)
    result = run(make_screen(one, *zones).check_client(CLIENT))
    assert result.reject is None
    assert result.signals == ["dnsbl:bl.example"]  # a listing below the score: a signal
    both = listed(CLIENT, BL)
    both.add("66.100.51.198." + BL2, "A", "127.0.0.3")
    result = run(make_screen(both, *zones).check_client(CLIENT))
    assert result.reject is not None and result.reject.endswith(f"listed by {BL}")


def test_allowlisted_client() -> None:
    resolver = listed(CLIENT, WL)
    result = run(make_screen(resolver, Zone(BL), Zone(WL, kind="allow")).check_client(CLIENT))
    assert result.allowlisted and result.reject is None


def test_an_allow_zone_wins_over_a_block_zone() -> None:
    resolver = listed(CLIENT, WL)
    resolver.add("66.100.51.198." + BL, "A", "127.0.0.2")
    result = run(make_screen(resolver, Zone(BL), Zone(WL, kind="allow")).check_client(CLIENT))
    assert result.allowlisted and result.reject is None
    assert "dnsbl:bl.example" in result.signals


@pytest.mark.parametrize("code", ["127.255.255.254", "127.255.255.252", "127.255.255.255"])
def test_a_refused_query_is_a_misconfiguration_not_a_listing(
    code: str, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = listed(CLIENT, BL, code)
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        result = run(make_screen(resolver, Zone(BL)).check_client(CLIENT))
    assert result.reject is None and result.signals == []
    assert result.dnsbl is not None and result.dnsbl.unanswered[0].why == "refused"
    logged = events(caplog, "dnsbl_misconfigured")
    assert [(e["zone"], e["code"]) for e in logged] == [(BL, code)]


def test_a_dns_failure_accepts_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    resolver = MockResolver(temperror=["66.100.51.198." + BL])
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        result = run(make_screen(resolver, Zone(BL)).check_client(CLIENT))
    assert result.reject is None
    assert [e["zone"] for e in events(caplog, "dnsbl_timeout")] == [BL]


def test_a_zone_that_never_answers_times_out_and_accepts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = HangingResolver(BL)
    screen = make_screen(resolver, Zone(BL), dnsbl_timeout=0.05)
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        result = run(screen.check_client(CLIENT))
    assert result.reject is None
    assert result.dnsbl is not None and result.dnsbl.unanswered[0].why == "timeout"
    assert [e["why"] for e in events(caplog, "dnsbl_timeout")] == ["timeout"]


def test_ipv6_clients_are_looked_up_by_reversed_nibbles() -> None:
    # rfc5782:2.4 — 32 nibbles, least significant first (written out by hand).
    name = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2." + BL
    resolver = MockResolver({(name, "A"): ["127.0.0.2"]})
    result = run(make_screen(resolver, Zone(BL)).check_client("2001:db8::1"))
    assert result.reject == "554 5.7.1 Service unavailable; client [2001:db8::1] listed by " + BL
    assert resolver.queries == [(name, "A"), (name, "TXT")]


def test_ipv4_mapped_clients_are_looked_up_as_ipv4() -> None:
    resolver = listed(CLIENT, BL)
    result = run(make_screen(resolver, Zone(BL)).check_client("::ffff:" + CLIENT))
    assert result.ip == CLIENT and result.reject is not None


def test_trusted_networks_skip_everything() -> None:
    resolver = listed(CLIENT, BL)
    trusted = (ipaddress.ip_network("198.51.100.0/24"),)
    screen = make_screen(resolver, Zone(BL), trusted=trusted, fcrdns="reject", helo="reject")
    result = run(screen.check_client(CLIENT))
    assert result.trusted and result.reject is None
    assert resolver.queries == []
    assert screen.greeting_pause(CLIENT) == 0
    assert screen.check_helo(result, "localhost", HOST) is None
    assert result.signals == []
    assert not screen.is_trusted("198.51.101.1")


def test_a_peer_that_is_not_an_address_is_let_through() -> None:
    result = run(make_screen(MockResolver(), Zone(BL)).check_client("/run/estafeta.sock"))
    assert result.reject is None and not result.trusted


# -- forward-confirmed reverse DNS ---------------------------------------------------

PTR = "66.100.51.198.in-addr.arpa"


def fcrdns_resolver(*forward: str, ptr: list[str] | None = None) -> MockResolver:
    names = ["mail.sender.example"] if ptr is None else ptr
    resolver = MockResolver({(PTR, "PTR"): names} if names else {})
    for address in forward:
        resolver.add("mail.sender.example", "A", address)
    return resolver


async def checked(screen: Screen, ip: str) -> ScreenResult:
    """What the protocol runs: the checks the greeting waits for, then the
    signals it does not wait for."""
    result = await screen.check_client(ip)
    await screen.check_signals(result)
    return result


def test_fcrdns_pass() -> None:
    screen = make_screen(fcrdns_resolver("192.0.2.1", CLIENT), fcrdns="reject")
    result = run(screen.check_client(CLIENT))
    assert result.ptr == "mail.sender.example"
    assert result.signals == [] and result.reject is None


@pytest.mark.parametrize(
    ("resolver", "signal"),
    [
        (fcrdns_resolver("192.0.2.1"), "fcrdns_mismatch"),
        (fcrdns_resolver(), "fcrdns_mismatch"),  # the PTR name has no address
        (fcrdns_resolver(ptr=[]), "fcrdns_none"),
    ],
)
def test_fcrdns_failure_is_a_signal_by_default(resolver: MockResolver, signal: str) -> None:
    screen = make_screen(resolver, fcrdns="signal")
    # The greeting does not wait for a check that refuses no one.
    assert not screen.checks_at_connect and screen.checks_later
    assert run(screen.check_client(CLIENT)).signals == []
    result = run(checked(screen, CLIENT))
    assert result.signals == [signal]
    assert result.reject is None and result.ptr is None


def test_fcrdns_reject_mode_refuses_with_x_7_25() -> None:
    result = run(make_screen(fcrdns_resolver("192.0.2.1"), fcrdns="reject").check_client(CLIENT))
    assert result.reason == "fcrdns"
    assert result.reject == (
        f"554 5.7.25 Service unavailable; client [{CLIENT}] has no forward-confirmed reverse DNS"
    )


def test_a_dns_failure_never_refuses_in_reject_mode() -> None:
    resolver = fcrdns_resolver(CLIENT)
    resolver.temperror.add(PTR)
    result = run(make_screen(resolver, fcrdns="reject").check_client(CLIENT))
    assert result.signals == ["fcrdns_temperror"] and result.reject is None


def test_fcrdns_off_asks_nothing() -> None:
    resolver = fcrdns_resolver("192.0.2.1")
    screen = make_screen(resolver, fcrdns="off")
    assert not screen.checks_at_connect and not screen.checks_later
    result = run(checked(screen, CLIENT))
    assert resolver.queries == [] and result.signals == []


def test_fcrdns_ipv6_compares_addresses_not_text() -> None:
    ptr = ipaddress.ip_address("2001:db8::25").reverse_pointer
    resolver = MockResolver(
        {(ptr, "PTR"): ["mx6.sender.example"], ("mx6.sender.example", "AAAA"): ["2001:db8:0:0::25"]}
    )
    result = run(make_screen(resolver, fcrdns="reject").check_client("2001:db8::25"))
    assert result.ptr == "mx6.sender.example" and result.reject is None


def test_fcrdns_looks_at_ten_ptr_names_at_most() -> None:
    names = [f"h{i}.sender.example" for i in range(30)]
    resolver = MockResolver({(PTR, "PTR"): names, ("h29.sender.example", "A"): [CLIENT]})
    result = run(checked(make_screen(resolver, fcrdns="signal"), CLIENT))
    assert result.signals == ["fcrdns_mismatch"]
    assert len([q for q in resolver.queries if q[1] == "A"]) == 10


def test_a_blocklist_reject_wins_over_fcrdns() -> None:
    resolver = fcrdns_resolver("192.0.2.1")
    resolver.add("66.100.51.198." + BL, "A", "127.0.0.2")
    result = run(make_screen(resolver, Zone(BL), fcrdns="reject").check_client(CLIENT))
    assert result.reason == "dnsbl"
    assert "fcrdns_mismatch" in result.signals


# -- HELO ---------------------------------------------------------------------------

OWN = ("192.0.2.25", "2001:db8::25")


@pytest.mark.parametrize(
    ("helo", "expected"),
    [
        ("mail.sender.example", []),
        ("MAIL.Sender.Example.", []),
        ("[198.51.100.66]", []),
        ("[IPv6:2001:db8::66]", []),
        ("[ipv6:2001:db8::1.2.3.4]", []),
        ("[x-tag:whatever]", ["helo_syntax"]),  # rfc5321:4.1.3: no such registered tag
        ("bücher.example", []),  # U-labels
        ("mx.example.test", ["helo_ours"]),
        ("MX.EXAMPLE.TEST.", ["helo_ours"]),
        ("[192.0.2.25]", ["helo_ours"]),
        ("[IPv6:2001:DB8:0::25]", ["helo_ours"]),
        ("192.0.2.25", ["helo_ours"]),
        ("localhost", ["helo_not_fqdn"]),
        ("DESKTOP-4F2K", ["helo_not_fqdn"]),
        ("198.51.100.66", ["helo_syntax"]),  # an address without brackets
        ("[198.51.100.256]", ["helo_syntax"]),
        ("[IPv6:fe80::1%eth0]", ["helo_syntax"]),
        ("[2001:db8::1]", ["helo_syntax"]),  # the IPv6: tag is missing
        ("under_score.example", ["helo_syntax"]),
        ("-lead.example", ["helo_syntax"]),
        ("a..b.example", ["helo_syntax"]),
        ("two words.example", ["helo_syntax"]),
        ("1.2.3.444", ["helo_syntax"]),
        ("x" * 64 + ".example", ["helo_syntax"]),
        ("", ["helo_syntax"]),
        ("a" * 400, ["helo_syntax"]),
    ],
)
def test_helo_problems(helo: str, expected: list[str]) -> None:
    assert [signal for signal, _ in helo_problems(helo, HOST, OWN)] == expected


def test_helo_signal_mode_records_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    screen = make_screen(helo="signal")
    result = ScreenResult(CLIENT)
    with caplog.at_level(logging.INFO, logger="estafeta"):
        assert screen.check_helo(result, HOST, HOST, OWN) is None
        assert screen.check_helo(result, HOST, HOST, OWN) is None  # EHLO again
    assert result.signals == ["helo_ours"]
    assert [e["signals"] for e in events(caplog, "screen_signal")] == [["helo_ours"]]


def test_helo_reject_mode_replies() -> None:
    screen = make_screen(helo="reject")
    ours = screen.check_helo(ScreenResult(CLIENT), "[192.0.2.25]", HOST, OWN)
    assert ours is not None and ours.startswith("550 5.7.1 ") and HOST in ours
    bad = screen.check_helo(ScreenResult(CLIENT), "bad_name", HOST, OWN)
    assert bad is not None and bad.startswith("501 5.5.2 ")
    assert screen.check_helo(ScreenResult(CLIENT), "mail.sender.example", HOST, OWN) is None


def test_helo_off() -> None:
    result = ScreenResult(CLIENT)
    assert make_screen(helo="off").check_helo(result, "localhost", HOST) is None
    assert result.signals == []


def test_signals_are_bounded() -> None:
    result = ScreenResult(CLIENT)
    for i in range(100):
        result.add_signal(f"s{i}")
    result.add_signal("s0")
    assert len(result.signals) == 16


# -- the pregreet pass cache -----------------------------------------------------------


def test_pass_cache_expires_on_the_injected_clock() -> None:
    clock = Clock()
    screen = make_screen(clock=clock, greeting_pause=1.0, pregreet_ttl=100.0)
    assert screen.greeting_pause(CLIENT) == 1.0
    screen.passed(CLIENT)
    assert screen.greeting_pause(CLIENT) == 0
    assert screen.greeting_pause("::ffff:" + CLIENT) == 0  # the same client
    clock.now += 99
    assert screen.greeting_pause(CLIENT) == 0
    clock.now += 2
    assert screen.greeting_pause(CLIENT) == 1.0
    assert len(screen.passes) == 0  # the expired entry is gone


def test_pass_cache_is_bounded() -> None:
    cache = PassCache(3, 100.0, Clock())
    for i in range(10):
        cache.add(f"192.0.2.{i}")
    assert len(cache) == 3
    assert "192.0.2.9" in cache and "192.0.2.6" not in cache


def test_an_early_talker_loses_its_pass() -> None:
    screen = make_screen(greeting_pause=1.0)
    screen.passed(CLIENT)
    screen.failed(CLIENT)
    assert screen.greeting_pause(CLIENT) == 1.0


def test_no_pause_when_turned_off() -> None:
    assert make_screen(greeting_pause=0.0).greeting_pause(CLIENT) == 0


# -- the protocol, over real connections -----------------------------------------------


class Handler:
    """Records what the RCPT hook sees of the screen (as smtp/inbound.py does)."""

    def __init__(self) -> None:
        self.screens: list[Any] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.screens.append(getattr(session, "screen", "missing"))
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 OK"


@asynccontextmanager
async def serving(
    screen: Screen | None, handler: Handler | None = None, idle: float = 300.0
) -> AsyncIterator[tuple[int, list[SMTPProtocol], Connections]]:
    loop = asyncio.get_running_loop()
    connections = Connections(limit=100)
    protocols: list[SMTPProtocol] = []

    def make() -> SMTPProtocol:
        protocol = SMTPProtocol(
            handler or Handler(),
            connections=connections,
            hostname=HOST,
            ident="ESMTP estafeta",
            screen=screen,
            loop=loop,
            timeout=idle,
        )
        protocols.append(protocol)
        return protocol

    server = await loop.create_server(make, LOCAL, 0)
    try:
        yield server.sockets[0].getsockname()[1], protocols, connections
    finally:
        server.close()
        await server.wait_closed()


async def lines_until_eof(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while line := await reader.readline():
        lines.append(line)
    return lines


async def _converse(
    screen: Screen, send: bytes, before: int, handler: Handler | None, eof: bool
) -> list[bytes]:
    async with asyncio.timeout(10), serving(screen, handler) as (port, _, c):
        reader, writer = await asyncio.open_connection(LOCAL, port)
        lines = [await reader.readline() for _ in range(before)]
        writer.write(send)
        if eof:
            writer.write_eof()
        lines += await lines_until_eof(reader)
        writer.close()
        await _closed(c)
        return lines


def talk(
    screen: Screen,
    send: bytes,
    *,
    before: int = 1,
    handler: Handler | None = None,
    eof: bool = False,
) -> list[bytes]:
    """One connection: read ``before`` lines, send ``send`` (then EOF if
    asked), read until the server closes; every line the server sent."""
    return run(_converse(screen, send, before, handler, eof))


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "estafeta_smtp_connections_rejected_total", {"reason": reason}
    )
    return value or 0.0


def test_an_early_talker_gets_554_and_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    before = rejected("pregreet")
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        lines = talk(
            make_screen(greeting_pause=LONG), b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
        )
    assert lines == [
        b"220-mx.example.test ESMTP estafeta\r\n",
        b"554 5.7.1 Service unavailable; client [127.0.0.1] talked before the greeting\r\n",
    ]
    assert [e["reason"] for e in events(caplog, "connection_rejected")] == ["pregreet"]
    assert rejected("pregreet") == before + 1


def test_a_one_octet_early_talk_is_caught() -> None:
    lines = talk(make_screen(greeting_pause=LONG), b"E", before=0)  # before even the first line
    assert lines[0].startswith(b"220-")
    assert lines[1:] == [
        b"554 5.7.1 Service unavailable; client [127.0.0.1] talked before the greeting\r\n"
    ]


def test_an_early_talker_that_closes_its_side_still_gets_the_554() -> None:
    assert talk(make_screen(greeting_pause=LONG), b"QUIT\r\n", eof=True)[1].startswith(
        b"554 5.7.1 "
    )


def test_a_well_behaved_client_gets_both_lines_and_can_send() -> None:
    screen = make_screen(greeting_pause=0.2)
    handler = Handler()

    def client(port: int) -> tuple[int, bytes, int]:
        with smtplib.SMTP(LOCAL, port, timeout=10) as smtp:
            code, text = smtp.ehlo("client.example")
            assert code == 250
            smtp.sendmail("a@sender.example", ["b@mx.example.test"], b"Subject: x\r\n\r\nhi\r\n")
            return code, text, 0

    async def main() -> tuple[list[bytes], list[SMTPProtocol]]:
        async with asyncio.timeout(20), serving(screen, handler) as (port, protocols, c):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            greeting = [await reader.readline(), await reader.readline()]
            writer.write(b"QUIT\r\n")
            await lines_until_eof(reader)
            writer.close()
            await _closed(c)
            screen.failed(LOCAL)  # paused again: smtplib sits through it too
            await asyncio.to_thread(client, port)
            await _closed(c)
            return greeting, protocols

    greeting, protocols = run(main())
    assert greeting == [
        b"220-mx.example.test ESMTP estafeta\r\n",
        b"220 mx.example.test ESMTP estafeta\r\n",
    ]
    assert LOCAL in screen.passes
    assert len(handler.screens) == 1
    seen = handler.screens[0]
    assert isinstance(seen, ScreenResult) and not seen.allowlisted and not seen.trusted
    assert protocols[-1].screen_result is seen


def test_a_client_that_passed_is_not_paused() -> None:
    screen = make_screen(greeting_pause=LONG)
    screen.passed(LOCAL)

    lines = talk(screen, b"EHLO client.example\r\nQUIT\r\n")  # would wait LONG if paused
    assert lines[0] == b"220 mx.example.test ESMTP estafeta\r\n"  # one line, no "220-"
    assert lines[1].startswith(b"250-mx.example.test")
    assert lines[-1].startswith(b"221")


def test_a_trusted_client_is_not_paused_nor_looked_up() -> None:
    resolver = listed(LOCAL, BL)
    screen = make_screen(
        resolver, Zone(BL), greeting_pause=LONG, trusted=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    handler = Handler()

    send = b"HELO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nQUIT\r\n"
    assert talk(screen, send, handler=handler)[0] == b"220 mx.example.test ESMTP estafeta\r\n"
    assert resolver.queries == []
    assert handler.screens[0].trusted


def test_a_listed_client_gets_554_and_its_quit_is_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    screen = make_screen(listed(LOCAL, BL), Zone(BL), greeting_pause=LONG)

    before = rejected("dnsbl")
    with caplog.at_level(logging.WARNING, logger="estafeta"):
        lines = talk(screen, b"EHLO client.example\r\nQUIT\r\n")
    # rfc5321:3.1 — the 554 is the greeting itself: no "220-" line before it
    # (rfc5321:4.2.1: the lines of one reply share one code).
    assert lines[0] == b"554 5.7.1 Service unavailable; client [127.0.0.1] listed by bl.example\r\n"
    # 503 to anything but QUIT, then 221 and the close.
    assert lines[1].startswith(b"503 5.5.1 ")
    assert lines[2] == b"221 2.0.0 mx.example.test Bye\r\n"
    assert len(lines) == 3
    assert [e["reason"] for e in events(caplog, "connection_rejected")] == ["dnsbl"]
    assert rejected("dnsbl") == before + 1
    assert LOCAL not in screen.passes


def test_a_refused_client_that_never_quits_is_closed_after_a_few_commands() -> None:
    screen = make_screen(listed(LOCAL, BL), Zone(BL), greeting_pause=LONG)

    lines = talk(screen, b"NOOP\r\n" * 50)
    assert lines[0].startswith(b"554 5.7.1 ")
    lines = lines[1:]
    assert len(lines) == 5 and all(line.startswith(b"503 ") for line in lines)


def test_an_allowlisted_client_is_not_held_for_the_pause() -> None:
    screen = make_screen(listed(LOCAL, WL), Zone(WL, kind="allow"), greeting_pause=LONG)
    handler = Handler()

    send = b"HELO x.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nQUIT\r\n"
    lines = talk(screen, send, handler=handler)
    # One greeting line, at once: no "220-" and no pause.
    assert lines[0] == b"220 mx.example.test ESMTP estafeta\r\n"
    assert lines[1].startswith(b"250 ")
    assert handler.screens[0].allowlisted
    assert LOCAL not in screen.passes  # it did not sit through the pause


def test_a_blocklist_timeout_greets_normally(caplog: pytest.LogCaptureFixture) -> None:
    screen = make_screen(HangingResolver(BL), Zone(BL), dnsbl_timeout=0.05, greeting_pause=0.0)

    with caplog.at_level(logging.WARNING, logger="estafeta"):
        lines = talk(screen, b"QUIT\r\n")
    assert lines == [
        b"220 mx.example.test ESMTP estafeta\r\n",
        b"221 2.0.0 Bye\r\n",
    ]
    assert [e["zone"] for e in events(caplog, "dnsbl_timeout")] == [BL]
    assert events(caplog, "connection_rejected") == []


def test_the_dns_checks_run_inside_the_greeting_pause() -> None:
    # The blocklist lookup (0.3 s, to its timeout) outlasts the pause (0.05 s):
    # the client waits for the checks only, and the pause adds no "220-" line.
    screen = make_screen(HangingResolver(BL), Zone(BL), dnsbl_timeout=0.3, greeting_pause=0.05)

    assert talk(screen, b"QUIT\r\n")[0] == b"220 mx.example.test ESMTP estafeta\r\n"
    assert LOCAL in screen.passes  # it waited out the pause all the same


def test_an_early_talk_during_the_dns_checks_is_caught() -> None:
    screen = make_screen(HangingResolver(BL), Zone(BL), dnsbl_timeout=LONG, greeting_pause=LONG)

    lines = talk(screen, b"EHLO spam.example\r\n", before=0)
    assert len(lines) == 1 and lines[0].startswith(b"554 5.7.1 ")
    assert LOCAL not in screen.passes


def test_the_idle_timeout_counts_from_the_greeting() -> None:
    # An idle timeout shorter than the pause: the client is greeted all the
    # same, and the timer starts with the final greeting line.
    screen = make_screen(greeting_pause=0.4)

    async def main() -> list[bytes]:
        async with asyncio.timeout(10), serving(screen, idle=0.2) as (port, _, c):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            lines = await lines_until_eof(reader)  # no command: the timer ends it
            writer.close()
            await _closed(c)
            return lines

    assert run(main()) == [
        b"220-mx.example.test ESMTP estafeta\r\n",
        b"220 mx.example.test ESMTP estafeta\r\n",
        b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n",
    ]


@pytest.mark.parametrize("mode", ["signal", "reject"])  # beside the session / before the greeting
def test_a_failing_check_lets_the_client_in(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MockResolver):
        async def lookup(self, name: str, rdtype: str, _depth: int = 0) -> Answer:
            raise RuntimeError("bug")

    screen = make_screen(Broken(), fcrdns=mode, greeting_pause=0.0)

    with caplog.at_level(logging.WARNING, logger="estafeta"):
        lines = talk(screen, b"QUIT\r\n")
    assert lines[0] == b"220 mx.example.test ESMTP estafeta\r\n"
    assert [e["client"] for e in events(caplog, "screen_failed")] == [LOCAL]


@pytest.mark.parametrize(("mode", "reply"), [("signal", b"250"), ("reject", b"550 5.7.1 ")])
def test_helo_claiming_our_address(
    mode: str, reply: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    screen = make_screen(helo=mode)
    screen.passed(LOCAL)

    async def main() -> tuple[list[bytes], list[SMTPProtocol]]:
        async with asyncio.timeout(10), serving(screen) as (port, protocols, c):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            await reader.readline()
            writer.write(b"HELO [127.0.0.1]\r\nHELO [127.0.0.1]\r\nHELO mail.client.example\r\n")
            writer.write(b"QUIT\r\n")
            lines = await lines_until_eof(reader)
            writer.close()
            await _closed(c)
            return lines, protocols

    before = rejected("helo")
    with caplog.at_level(logging.INFO, logger="estafeta"):
        lines, protocols = run(main())
    assert lines[0].startswith(reply) and lines[1].startswith(reply)
    assert lines[2].startswith(b"250")
    result = protocols[0].screen_result
    assert result is not None and result.signals == ["helo_ours"]
    refusals = [e["reason"] for e in events(caplog, "connection_rejected")]
    assert refusals == (["helo"] if mode == "reject" else [])
    assert rejected("helo") == before + (1 if mode == "reject" else 0)


def test_submission_has_no_screen() -> None:
    async def main() -> tuple[bytes, list[SMTPProtocol]]:
        async with asyncio.timeout(10), serving(None) as (port, protocols, c):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            first = await reader.readline()
            writer.write(b"QUIT\r\n")
            await lines_until_eof(reader)
            writer.close()
            await _closed(c)
            return first, protocols

    first, protocols = run(main())
    assert first == b"220 mx.example.test ESMTP estafeta\r\n"
    assert protocols[0].session is not None
    assert protocols[0].session.screen is None  # type: ignore[attr-defined]


def test_the_connection_count_is_released_after_every_refusal() -> None:
    screen = make_screen(listed(LOCAL, BL), Zone(BL), greeting_pause=LONG)

    async def main() -> int:
        async with asyncio.timeout(10), serving(screen) as (port, _, connections):
            for _ in range(5):
                reader, writer = await asyncio.open_connection(LOCAL, port)
                await reader.readline()
                writer.close()  # gone in the middle of the screen
            for _ in range(3):
                reader, writer = await asyncio.open_connection(LOCAL, port)
                writer.write(b"x")
                await lines_until_eof(reader)
                writer.close()
            await _closed(connections)
            return len(connections.open)

    assert run(main()) == 0


async def _closed(connections: Connections) -> None:
    """Until the server has seen every connection end."""
    for _ in range(1000):
        if not connections.open:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(connections.open)} connections still open")


def test_each_command_moves_the_idle_deadline() -> None:
    # One timer per connection (SMTPProtocol._reset_timeout): commands
    # push the deadline on; the timer set for the first deadline must not
    # end a connection that has been talking since.
    async def main() -> tuple[list[bytes], float]:
        # Gaps well under the timeout: a loaded machine's stall of a tenth
        # of a second must not make a gap look like silence.
        async with asyncio.timeout(10), serving(None, idle=1.0) as (port, _, c):
            reader, writer = await asyncio.open_connection(LOCAL, port)
            assert (await reader.readline()).startswith(b"220 ")
            for _ in range(8):  # 1.6 s of talk, each gap under the timeout
                await asyncio.sleep(0.2)
                writer.write(b"NOOP\r\n")
                assert (await reader.readline()).startswith(b"250 ")
            quiet = time.monotonic()
            lines = await lines_until_eof(reader)  # silence: the timer ends it
            waited = time.monotonic() - quiet
            writer.close()
            await _closed(c)
            return lines, waited

    lines, waited = run(main())
    assert lines == [b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"]
    assert 0.95 <= waited < 3.0
