"""Greylisting on the MX (smtp.gate): who skips it, and the whole exchange
with a real server and real SMTP clients, the list's clock injected."""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import DOMAIN, PASSWORD, InProcess, Instance, free_port
from estafeta.config_spam import GreylistConfig
from estafeta.dns import MockResolver
from estafeta.policy import greylist
from estafeta.policy.greylist import Greylist
from estafeta.smtp import gate as gate_module
from estafeta.smtp.gate import NO, Gate

# aiosmtpd warns when AUTH goes without TLS, which this test config allows
# (the in-process server's warnings reach pytest, which makes them errors).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

# -- who skips it ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def gate(tmp_path: Path, **kwargs: Any) -> Gate:
    config = GreylistConfig(**kwargs)
    return Gate(Greylist(tmp_path / "g.db", config.settings, clock=Clock()), config)


def skip(g: Gate, *, sender: str = "a@remote.test", screen: Any = None, dns: Any = None) -> str:
    transaction = SimpleNamespace(spf=None)
    return asyncio.run(
        g.skip(
            ip="192.0.2.10",
            sender=sender,
            helo="client.remote.test",
            screen=screen,
            resolver=dns,
            hostname="mx.example.test",
            transaction=transaction,
        )
    )


def spf(record: str) -> MockResolver:
    return MockResolver({("remote.test", "TXT"): [record]})


def test_a_stranger_is_greylisted(tmp_path: Path) -> None:
    assert skip(gate(tmp_path), dns=spf("v=spf1 -all")) == NO


def test_spf_pass_of_the_mail_from_domain_skips(tmp_path: Path) -> None:
    assert skip(gate(tmp_path), dns=spf("v=spf1 ip4:192.0.2.0/24 -all")) == "spf pass"


def test_spf_plus_all_counts_for_nothing(tmp_path: Path) -> None:
    assert skip(gate(tmp_path), dns=spf("v=spf1 +all")) == NO
    assert skip(gate(tmp_path), dns=spf("v=spf1 all")) == NO


def test_spf_pass_skip_can_be_turned_off(tmp_path: Path) -> None:
    g = gate(tmp_path, skip_spf_pass=False)
    assert skip(g, dns=spf("v=spf1 ip4:192.0.2.0/24 -all")) == NO


def test_null_sender_is_greylisted_by_the_triplet(tmp_path: Path) -> None:
    assert skip(gate(tmp_path), sender="", dns=spf("v=spf1 ip4:192.0.2.0/24 -all")) == NO


def test_screen_and_networks_skip(tmp_path: Path) -> None:
    assert skip(gate(tmp_path), screen=SimpleNamespace(trusted=True)) == "trusted"
    listed = SimpleNamespace(trusted=False, allowlisted=True)
    assert skip(gate(tmp_path), screen=listed) == "dns allowlist"
    g = gate(tmp_path, allow=(ipaddress.ip_network("192.0.2.0/24"),))
    assert skip(g) == "allowed network"


def test_known_sender_skips_after_min_age(tmp_path: Path) -> None:
    g = gate(tmp_path)
    g.greylist.remember_sender("remote.test")
    assert skip(g) == NO  # not yet: remembered less than sender_min_age ago
    g.greylist._clock.now += greylist.DAY + 1  # type: ignore[attr-defined]
    assert skip(g) == "known sender"


def test_passes_are_remembered_in_memory_for_a_while(tmp_path: Path) -> None:
    g = gate(tmp_path, settings=greylist.Settings(delay=0))
    calls: list[str] = []
    real = g.greylist.check

    def counted(ip: str, sender: str, rcpt: str) -> greylist.Decision:
        calls.append(rcpt)
        return real(ip, sender, rcpt)

    g.greylist.check = counted  # type: ignore[method-assign]
    check = lambda rcpt: asyncio.run(g.check("192.0.2.10", "a@remote.test", rcpt))  # noqa: E731
    assert check("me@example.test").startswith("451")  # first sight
    assert check("me@example.test") == ""  # retried after the delay (0)
    assert check("ME@example.test") == ""  # from memory: the same triplet
    assert calls == ["me@example.test", "me@example.test"]
    clock = g.greylist._clock  # type: ignore[attr-defined]
    clock.now += gate_module.CACHE_SECONDS
    assert check("me@example.test") == ""  # asked the list again
    assert len(calls) == 3
    assert check("you@example.test").startswith("451")  # another triplet


# -- a real server, real clients -------------------------------------------------


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[tuple[Instance, InProcess, Clock]]:
    instance = Instance(
        tmp_path,
        free_port(),
        submission_port=free_port(),
        auth_config="allow_plaintext = true\n",
        extra_config='[greylist]\nenabled = true\ndelay = "5m"\n',
    )
    instance.write_config()
    instance.add_user(f"alice@{DOMAIN}")
    instance.add_user(f"bob@{DOMAIN}")
    with InProcess(instance.config) as running:
        instance.in_process = True  # Instance.files() waits for its settling
        assert running.server is not None and running.server.defences.gate is not None
        clock = Clock()
        running.server.defences.gate.greylist._clock = clock  # type: ignore[assignment]
        yield instance, running, clock


def attempt(port: int, sender: str, rcpt: str) -> tuple[int, str]:
    """One transaction on the MX: the RCPT reply, and DATA if it was accepted."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail(sender)
        code, text = client.rcpt(rcpt)
        if code == 250:
            code, text = client.data(
                f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: hello\r\n\r\nhi\r\n".encode()
            )
        return code, text.decode()


def test_first_attempt_waits_then_passes(mx: tuple[Instance, InProcess, Clock]) -> None:
    instance, _, clock = mx
    alice = f"alice@{DOMAIN}"
    code, text = attempt(instance.port, "news@remote.test", alice)
    assert code == 451 and text.startswith("4.7.1"), text
    clock.now += 120  # a retry before the delay
    assert attempt(instance.port, "news@remote.test", alice)[0] == 451
    clock.now += 200  # 320 s after first sight
    assert attempt(instance.port, "news@remote.test", alice)[0] == 250
    # The next message of this client and sender: at once.
    assert attempt(instance.port, "news@remote.test", alice)[0] == 250
    # Another sender from the same client is a new triplet.
    assert attempt(instance.port, "other@remote.test", alice)[0] == 451
    assert instance.message_count(alice) == 2


def test_submission_is_never_greylisted(mx: tuple[Instance, InProcess, Clock]) -> None:
    instance, _, _ = mx
    with smtplib.SMTP("127.0.0.1", instance.submission_port, timeout=30) as client:
        client.ehlo("laptop")
        client.login(f"alice@{DOMAIN}", PASSWORD)
        refused = client.sendmail(
            f"alice@{DOMAIN}",
            [f"bob@{DOMAIN}"],
            f"From: <alice@{DOMAIN}>\r\nTo: <bob@{DOMAIN}>\r\nSubject: s\r\n\r\nhi\r\n",
        )
    assert refused == {}
    assert instance.message_count(f"bob@{DOMAIN}") == 1


def test_unknown_recipient_is_refused_before_greylisting(
    mx: tuple[Instance, InProcess, Clock],
) -> None:
    instance, running, _ = mx
    code, _ = attempt(instance.port, "news@remote.test", f"nobody@{DOMAIN}")
    assert code == 550
    assert running.server is not None and running.server.defences.gate is not None
    assert running.server.defences.gate.greylist.stats()["greylisted"] == 0
