"""The DANE-EE key rollover of [acme] dane (estafeta.acme.dane, issue 22 §3).

The state machine with an injected clock and real files; the certificate
manager against Debian's pebble with DNS answers from a stand-in resolver
(``Zone``), where the test publishes and withdraws TLSA records; the real
server's placeholder and ``estafeta tls`` over its files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _acme import (
    HOST,
    NAMES,
    Clock,
    Installs,
    Responders,
    peer_certificate,
    run,
    running,
    settings,
    until,
)
from _pebble import Pebble
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from _mailnet import Knot
from conftest import Instance, estafeta, free_port
from estafeta.acme import AcmeSettings, CertificateManager, Challenges
from estafeta.acme.dane import (
    DaneKeys,
    DaneLookupError,
    DnsTlsaLookup,
    KeyDigests,
    Sighting,
    TlsaAnswer,
    failed,
    observe,
)
from estafeta.acme.placeholder import placeholder
from estafeta.dns import DNSPythonResolver, MockResolver
from estafeta.durable import create_once

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = pytest.mark.xdist_group("mailnet")

TLSA_NAME = f"_25._tcp.{HOST}"


def spki_sha256(public_key: object) -> bytes:
    """The TLSA 3 1 1 data of a public key, computed apart from the code under test."""
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def key_digest(pem: bytes) -> bytes:
    return spki_sha256(serialization.load_pem_private_key(pem, password=None).public_key())


def cert_digest(chain: bytes) -> bytes:
    return spki_sha256(x509.load_pem_x509_certificates(chain)[0].public_key())


class Zone:
    """A TLSA lookup answered from a dict, as a validating resolver would."""

    def __init__(self) -> None:
        self.records: dict[str, set[tuple[int, int, int, bytes]]] = {}
        self.ttl = 300
        self.failing = False
        self.lookups = 0

    def publish(self, *pems: bytes, name: str = TLSA_NAME) -> None:
        self.records[name] = {(3, 1, 1, key_digest(pem)) for pem in pems}

    async def __call__(self, name: str) -> TlsaAnswer:
        self.lookups += 1
        if self.failing:
            raise DaneLookupError(f"{name}/TLSA: SERVFAIL")
        return TlsaAnswer(frozenset(self.records.get(name, ())), self.ttl, secure=True)


# -- the keys and their files ------------------------------------------------------------------


def test_create_once_keeps_what_the_first_writer_wrote(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    assert create_once(path, b"first")
    assert not create_once(path, b"second")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]  # no temporary left


def test_keys_are_made_once_and_listed_with_their_tlsa_records(tmp_path: Path) -> None:
    keys = DaneKeys(tmp_path)
    assert keys.listing() == []
    assert keys.ensure("ec-p256") == ["current", "standby"]
    assert keys.ensure("ec-p256") == []
    current, standby = keys.current_pem(), keys.standby_pem()
    assert current is not None and standby is not None and current != standby
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    listing = keys.listing()
    assert [k["role"] for k in listing] == ["current", "standby"]
    for entry, pem in zip(listing, (current, standby), strict=True):
        assert entry["tlsa"] == f"3 1 1 {key_digest(pem).hex()}"
        assert entry["spki_sha256"] == key_digest(pem).hex()
    assert listing[1]["visible"] is False and listing[1]["first_seen"] is None


def test_a_standby_equal_to_the_key_in_use_or_of_another_type_is_replaced(tmp_path: Path) -> None:
    keys = DaneKeys(tmp_path)
    keys.ensure("ec-p256")
    current = keys.current_pem()
    assert current is not None
    # A crash after the switch's commit: the standby is the key in use.
    keys.standby.write_bytes(current)
    assert keys.ensure("ec-p256") == ["standby"]
    assert keys.standby_pem() not in (None, current)
    # key_type changed to RSA: a new standby of that type; the key in use stays.
    assert keys.ensure("rsa-2048") == ["standby"]
    assert keys.current_pem() == current
    standby = keys.standby_pem()
    assert standby is not None
    loaded = serialization.load_pem_private_key(standby, password=None)
    assert loaded.public_key().key_size == 2048  # type: ignore[union-attr]


def test_only_dane_ee_spki_records_name_a_key(tmp_path: Path) -> None:
    keys = DaneKeys(tmp_path)
    keys.ensure("ec-p256")
    pem = keys.standby_pem()
    assert pem is not None
    digests = KeyDigests.of(pem)
    assert digests.named_by(frozenset({(3, 1, 1, digests.sha256)}))
    assert digests.named_by(frozenset({(3, 1, 2, digests.sha512)}))
    for wrong in ((2, 1, 1, digests.sha256), (3, 0, 1, digests.sha256), (3, 1, 1, b"\0" * 32)):
        assert not digests.named_by(frozenset({wrong})), wrong


def test_dane_settings_are_checked() -> None:
    base = {"directory": "https://ca.test/dir", "names": ("MX.example.test.", "b.example.test")}
    assert AcmeSettings(**base).dane_host == "mx.example.test"  # default: the first name
    assert AcmeSettings(**base, dane_ports=(25, 25, 465)).dane_ports == (25, 465)
    for bad in (
        {"dane": True, "dane_ports": ()},
        {"dane_ports": (0,)},
        {"dane_ports": tuple(range(1, 18))},
        {"dane_margin": -1.0},
        {"dane_host": "not a name"},
    ):
        with pytest.raises(ValueError, match="dane"):
            AcmeSettings(**base, **bad)  # type: ignore[arg-type]


# -- the sighting: when the standby key may be used --------------------------------------------


def answer(digests: KeyDigests, ttl: int = 300) -> TlsaAnswer:
    return TlsaAnswer(frozenset({(3, 1, 1, digests.sha256)}), ttl, secure=True)


@pytest.fixture
def digests(tmp_path: Path) -> KeyDigests:
    keys = DaneKeys(tmp_path)
    keys.ensure("ec-p256")
    pem = keys.standby_pem()
    assert pem is not None
    return KeyDigests.of(pem)


def test_the_standby_is_ready_after_its_ttl_plus_the_margin(digests: KeyDigests) -> None:
    margin = 600.0
    s = Sighting(standby=digests.sha256.hex())
    s = observe(s, 1000.0, [TlsaAnswer()], digests)  # not published yet
    assert not s.visible and s.ready_at(margin) is None and not s.ready(10**9, margin)
    s = observe(s, 2000.0, [answer(digests, ttl=300)], digests)
    assert s.first_seen == 2000.0 and s.ready_at(margin) == 2900.0
    s = observe(s, 2899.0, [answer(digests, ttl=250)], digests)  # a cache's shorter TTL
    assert not s.ready(2899.0, margin)
    assert s.ready_at(margin) == 2900.0  # the longest TTL seen counts
    s = observe(s, 2900.0, [answer(digests, ttl=3600)], digests)  # a longer TTL now
    assert not s.ready(2900.0, margin) and s.ready_at(margin) == 2000.0 + 3600 + margin
    assert s.ready(6200.0, margin)
    # Every port must show it.
    other = KeyDigests(b"\1" * 32, b"\1" * 64)
    both = observe(s, 6201.0, [answer(digests), answer(other)], digests)
    assert not both.visible and both.first_seen is None


def test_a_record_that_vanishes_starts_the_wait_again(digests: KeyDigests) -> None:
    s = observe(Sighting(standby=digests.sha256.hex()), 0.0, [answer(digests)], digests)
    s = observe(s, 100.0, [TlsaAnswer()], digests)
    assert not s.visible and s.first_seen is None
    s = observe(s, 200.0, [answer(digests)], digests)
    assert s.first_seen == 200.0 and not s.ready(1000.0, 600.0) and s.ready(1100.0, 600.0)


def test_a_failed_lookup_holds_the_switch_but_keeps_the_wait(digests: KeyDigests) -> None:
    s = observe(Sighting(standby=digests.sha256.hex()), 0.0, [answer(digests)], digests)
    s = failed(s, 5000.0, "SERVFAIL")
    assert s.error == "SERVFAIL" and s.first_seen == 0.0
    assert not s.ready(5000.0, 600.0)  # no switch on an answer we did not get
    s = observe(s, 5001.0, [answer(digests)], digests)
    assert s.error is None and s.first_seen == 0.0 and s.ready(5001.0, 600.0)


def test_a_broken_or_foreign_sighting_file_counts_nothing(
    tmp_path: Path, digests: KeyDigests
) -> None:
    keys = DaneKeys(tmp_path)
    seen = observe(Sighting(standby=digests.sha256.hex()), 7.0, [answer(digests)], digests)
    keys.save_sighting(seen)
    assert keys.load_sighting(digests) == seen
    other = KeyDigests(b"\2" * 32, b"\2" * 64)
    assert keys.load_sighting(other) == Sighting(standby=other.sha256.hex())
    fresh = Sighting(standby=digests.sha256.hex())
    for text in (
        b"{not json",
        b"[]",
        json.dumps({**seen.to_json(), "ttl": -1}).encode(),
        json.dumps({**seen.to_json(), "first_seen": "yesterday"}).encode(),
        json.dumps({**seen.to_json(), "visible": 1}).encode(),
        b" " * 5000 + json.dumps(seen.to_json()).encode(),  # past the size cap
    ):
        keys.sighting_path.write_bytes(text)
        assert keys.load_sighting(digests) == fresh, text[:40]


def test_the_tlsa_lookup_gives_records_ttl_and_absence(tmp_path: Path) -> None:
    """DnsTlsaLookup against a real Knot (authoritative: no AD bit)."""
    knot = Knot(
        tmp_path / "knot",
        {
            "example.test": [
                "_25._tcp.mx 7 TLSA 3 1 1 " + "ab" * 32,
                "_25._tcp.mx 7 TLSA 3 1 2 " + "cd" * 64,
                "mx A 192.0.2.1",
            ]
        },
    )
    knot.start()
    try:
        lookup = DnsTlsaLookup(DNSPythonResolver([("127.0.0.1", knot.port)]))
        found = asyncio.run(lookup("_25._tcp.mx.example.test"))
        assert found.records == {(3, 1, 1, b"\xab" * 32), (3, 1, 2, b"\xcd" * 64)}
        assert found.ttl == 7 and not found.secure
        assert asyncio.run(lookup("_25._tcp.nothere.example.test")).records == frozenset()
        assert asyncio.run(lookup("mx.example.test")).records == frozenset()  # NODATA
    finally:
        knot.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # reads nothing, answers nothing
        dead = DnsTlsaLookup(DNSPythonResolver([("127.0.0.1", silent.getsockname()[1])], 1.0))
        with pytest.raises(DaneLookupError, match=r"_25\._tcp\.mx\.example\.test/TLSA"):
            asyncio.run(dead("_25._tcp.mx.example.test"))


def test_the_tlsa_lookup_takes_secure_and_ttl_from_the_resolver() -> None:
    """The validation status is the resolver's (estafeta.dns): signed or not,
    a secure denial, and a bogus answer that is an error, not an absence."""
    record = (3, 1, 1, b"\x01" * 32)
    dns = MockResolver(
        {
            ("_25._tcp.mx.signed.test", "TLSA"): [record],
            ("_25._tcp.mx.plain.test", "TLSA"): [record],
        },
        signed=["signed.test"],
        bogus=["_25._tcp.broken.signed.test"],
        ttl=42,
    )
    lookup = DnsTlsaLookup(dns)
    signed = asyncio.run(lookup("_25._tcp.mx.signed.test"))
    assert signed == TlsaAnswer(frozenset({record}), 42, True)
    assert asyncio.run(lookup("_25._tcp.mx.plain.test")) == TlsaAnswer(
        frozenset({record}), 42, False
    )
    assert asyncio.run(lookup("_25._tcp.gone.signed.test")) == TlsaAnswer(secure=True)
    with pytest.raises(DaneLookupError, match="DNSSEC"):
        asyncio.run(lookup("_25._tcp.broken.signed.test"))


# -- the certificate manager, against pebble ---------------------------------------------------


@dataclass
class Rig:
    """A state directory, what the managers on it install, their clock and DNS."""

    pebble: Pebble
    state: Path
    challenges: Challenges = field(default_factory=Challenges)
    installs: Installs = field(default_factory=Installs)
    clock: Clock = field(default_factory=Clock)
    zone: Zone = field(default_factory=Zone)

    @property
    def keys(self) -> DaneKeys:
        return DaneKeys(self.state)

    def manager(self) -> CertificateManager:
        """A manager with [acme] dane, TLSA TTL 300 s (Zone), margin 600 s."""
        return CertificateManager(
            settings(self.pebble, dane=True, dane_margin=600.0),
            self.state,
            self.challenges,
            self.installs,
            self.clock,
            check_interval=0.05,
            tlsa_lookup=self.zone,
        )

    def serving(self) -> Any:
        return Responders(self.challenges).serving(self.pebble)


async def stepped(acme: CertificateManager, after: float) -> None:
    """Until a step of the manager that began at ``after`` (its clock) or
    later has finished, issuance included: it sets next_attempt then."""
    await until(lambda: (acme.status()["next_attempt"] or 0) > after, None)


def test_the_first_certificate_and_the_placeholder_use_the_key_in_use(
    pebble: Pebble, tmp_path: Path
) -> None:
    rig = Rig(pebble, tmp_path / "acme")
    acme, installs = rig.manager(), rig.installs

    async def main() -> None:
        async with rig.serving(), running(acme):
            await until(lambda: len(installs) == 1, pebble)

    run(main)
    current, standby = rig.keys.current_pem(), rig.keys.standby_pem()
    assert current is not None and standby is not None
    assert installs[0].key == current and cert_digest(installs[0].chain) == key_digest(current)
    assert rig.zone.lookups >= 1
    status = acme.status()["dane"]
    assert status["current"] == key_digest(current).hex()
    assert status["standby"] == key_digest(standby).hex() and not status["standby_visible"]
    # The placeholder before a first certificate shows the same key.
    cert_path, _ = placeholder(tmp_path / "placeholder", (HOST,), current)
    assert cert_digest(cert_path.read_bytes()) == key_digest(current)


def test_a_forced_rollover_waits_for_the_ttl_then_switches(pebble: Pebble, tmp_path: Path) -> None:
    rig = Rig(pebble, tmp_path / "acme")
    state, installs, clock, keys = rig.state, rig.installs, rig.clock, rig.keys
    state.mkdir(mode=0o700)
    keys.ensure("ec-p256")
    old, standby = keys.current_pem(), keys.standby_pem()
    assert old is not None and standby is not None
    rig.zone.publish(old, standby)  # what dns_records publishes from `estafeta tls tlsa`
    start = clock()
    first = rig.manager()

    async def before_the_ttl() -> None:
        async with rig.serving(), running(first):
            await until(lambda: len(installs) == 1, pebble)
            first_seen = first.status()["dane"]["first_seen"]
            assert first_seen is not None and first_seen <= start + 60
            keys.request()  # estafeta tls rollover
            # TTL 300 + margin 600 after the first sighting, less a second: no switch.
            clock.offset = first_seen + 899 - time.time()
            first.wake()
            await stepped(first, first_seen + 899)
            assert len(installs) == 1 and first.status()["issued"] == 1
            assert first.status()["dane"]["rollover_requested"] is not None

    run(before_the_ttl)
    assert installs[0].key == old
    # A restart keeps what was seen (dane.json): past the wait, it switches at once.
    first_seen = json.loads((state / "dane.json").read_text())["first_seen"]
    clock.offset = first_seen + 901 - time.time()
    second = rig.manager()

    async def after_the_ttl() -> None:
        async with rig.serving(), running(second):
            await until(lambda: len(installs) == 3, pebble)  # the same, installed; then the new

    run(after_the_ttl)
    assert installs[1].key == old and installs[2].key == standby
    assert cert_digest(installs[2].chain) == key_digest(standby)
    # The standby is the key in use; a new standby waits for its own TLSA record.
    assert keys.current_pem() == standby
    new_standby = keys.standby_pem()
    assert new_standby is not None and new_standby not in (old, standby)
    assert keys.requested() is None
    listing = keys.listing()
    assert [k["spki_sha256"] for k in listing] == [
        key_digest(standby).hex(),
        key_digest(new_standby).hex(),
    ]
    assert listing[1]["visible"] is False


def test_a_new_certificate_keeps_the_key_until_the_standby_is_in_dns(
    pebble: Pebble, tmp_path: Path
) -> None:
    rig = Rig(pebble, tmp_path / "acme")
    acme, installs, clock, zone, keys = rig.manager(), rig.installs, rig.clock, rig.zone, rig.keys

    async def main() -> None:
        async with rig.serving(), running(acme):
            await until(lambda: len(installs) == 1, pebble)
            current, standby = keys.current_pem(), keys.standby_pem()
            assert current is not None and standby is not None
            zone.publish(current)  # the standby's record is not out yet
            # A new certificate (another name; a renewal takes the same path).
            names = (*NAMES, "extra.example.test")
            acme.update_settings(settings(pebble, names=names, dane=True, dane_margin=600.0))
            await until(lambda: len(installs) == 2, pebble)
            assert installs[1].key == current  # a new certificate, the same key
            assert installs[1].fingerprint != installs[0].fingerprint
            # A lookup that fails says nothing: still no switch, even when asked.
            zone.publish(current, standby)
            zone.failing = True
            keys.request()
            clock.offset += 10**6
            acme.wake()
            await stepped(acme, clock())
            assert acme.status()["dane"]["lookup_error"] == f"{TLSA_NAME}/TLSA: SERVFAIL"
            assert len(installs) == 2 and acme.status()["issued"] == 2
            # Answers again: seen from now on, then ready after TTL + margin.
            zone.failing = False
            acme.wake()
            await until(lambda: acme.status()["dane"]["standby_visible"], None)
            ready_at = acme.status()["dane"]["ready_at"]
            clock.offset = ready_at - time.time() + 1
            acme.wake()
            await until(lambda: len(installs) == 3, pebble)
            assert installs[2].key == standby

    run(main)


# -- the server's placeholder and `estafeta tls` -----------------------------------------------


def presented_digest(port: int) -> bytes:
    return spki_sha256(peer_certificate(port, HOST).public_key())


def test_the_server_presents_the_listed_key_before_any_certificate(tmp_path: Path) -> None:
    root = tmp_path / "estafeta"
    root.mkdir()
    # A CA that never answers: the server keeps its placeholder.
    instance = Instance(
        root,
        free_port(),
        imaps_port=free_port(),
        extra_config=(
            "[acme]\n"
            f'directory = "https://127.0.0.1:{free_port()}/dir"\n'
            "dane = true\n"
            "dane_ports = [25, 465]\n"
            'dane_margin = "10m"\n'
        ),
    )
    instance.write_config()
    assert estafeta(instance.config, "tls", "tlsa", "--json").stdout.count('"role"') == 0
    instance.start()
    try:
        listed = json.loads(estafeta(instance.config, "tls", "tlsa", "--json").stdout)
        assert listed["names"] == [f"_25._tcp.{HOST}", f"_465._tcp.{HOST}"]
        assert [k["role"] for k in listed["keys"]] == ["current", "standby"]
        assert presented_digest(instance.imaps_port).hex() == listed["keys"][0]["spki_sha256"]
        text = estafeta(instance.config, "tls", "tlsa").stdout
        assert f"_465._tcp.{HOST}. IN TLSA {listed['keys'][1]['tlsa']}" in text
        asked = json.loads(estafeta(instance.config, "tls", "rollover", "--json").stdout)
        assert asked["rollover_requested"] is not None
        assert (instance.data_dir / "acme" / "rollover.request").is_file()
    finally:
        instance.stop()
    # After a restart the key stays the one the records name.
    instance.start()
    try:
        assert presented_digest(instance.imaps_port).hex() == listed["keys"][0]["spki_sha256"]
    finally:
        instance.stop()


def test_tls_commands_need_dane(instance: Instance) -> None:
    for args in (("tls", "tlsa"), ("tls", "rollover")):
        result = estafeta(instance.config, *args, check=False)
        assert result.returncode == 2 and "dane is off" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not os.path.exists(instance.data_dir / "acme" / "rollover.request")
