"""DANE (rfc7672) without sockets: TLSA records, certificate matching, discovery."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass

import pytest
import trustme
from _dane import record
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from estafeta.dns import Answer, DNSBogusError, DNSTempError, MockResolver
from estafeta.queue.dane import (
    TLSA,
    HostPolicy,
    TLSALookupError,
    discover,
    peer_chain,
    verify_chain,
)
from estafeta.queue.tlsoutcome import SessionTLS, TLSOutcome, lookup_failed
from estafeta.reports.tlsrpt import Policy

NOW = datetime.datetime.now(datetime.UTC)
HOST = "mx.dane.example"


def certs(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(pem.bytes()) for pem in leaf.cert_chain_pems]


def ders(leaf: trustme.LeafCert) -> list[bytes]:
    return [cert.public_bytes(Encoding.DER) for cert in certs(leaf)]


@dataclass
class Chain:
    root: trustme.CA
    intermediate: trustme.CA
    leaf: trustme.LeafCert

    @property
    def certs(self) -> list[x509.Certificate]:
        return certs(self.leaf)

    @property
    def ders(self) -> list[bytes]:
        return ders(self.leaf)


@pytest.fixture(scope="module")
def chain() -> Chain:
    """A root, an intermediate, and a leaf for mx.dane.example; the server
    sends the leaf and the intermediate (not the root)."""
    root = trustme.CA()
    intermediate = root.create_child_ca()
    return Chain(root, intermediate, intermediate.issue_cert(HOST))


# -- records ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tlsa", "usable"),
    [
        (TLSA(3, 1, 1, bytes(32)), True),
        (TLSA(3, 0, 2, bytes(64)), True),
        (TLSA(2, 0, 0, b"\x30\x03"), True),
        (TLSA(2, 1, 1, bytes(32)), True),
        # rfc7672:3.1.3 — PKIX-TA(0) and PKIX-EE(1) are unusable in SMTP.
        (TLSA(0, 0, 1, bytes(32)), False),
        (TLSA(1, 1, 1, bytes(32)), False),
        # rfc6698 — unknown usage, selector or matching type.
        (TLSA(4, 1, 1, bytes(32)), False),
        (TLSA(3, 2, 1, bytes(32)), False),
        (TLSA(3, 1, 3, bytes(32)), False),
        # A digest of the wrong length, or no data.
        (TLSA(3, 1, 1, bytes(31)), False),
        (TLSA(3, 1, 2, bytes(32)), False),
        (TLSA(3, 1, 0, b""), False),
    ],
)
def test_usable(tlsa: TLSA, usable: bool) -> None:
    assert tlsa.usable is usable


def test_presentation_format() -> None:
    assert str(TLSA(3, 1, 1, bytes.fromhex("ab01"))) == "3 1 1 ab01"


# -- matching (rfc7672:3.1) ---------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_the_leaf(chain: Chain, selector: int, mtype: int) -> None:
    tlsa = record(3, selector, mtype, chain.certs[0])
    verdict = verify_chain([tlsa], chain.ders, [HOST], NOW)
    assert verdict.ok and verdict.record == tlsa


def test_dane_ee_needs_no_name_and_no_validity(chain: Chain) -> None:
    # rfc7672:3.1.1 — no name check, no expiry check; the leaf alone is enough.
    expired = chain.intermediate.issue_cert(
        "unrelated.example",
        not_before=NOW - datetime.timedelta(days=30),
        not_after=NOW - datetime.timedelta(days=1),
    )
    tlsa = record(3, 1, 1, certs(expired)[0])
    assert verify_chain([tlsa], ders(expired)[:1], [HOST], NOW).ok


def test_dane_ee_does_not_match_another_key(chain: Chain) -> None:
    other = chain.intermediate.issue_cert(HOST)
    verdict = verify_chain([record(3, 1, 1, certs(other)[0])], chain.ders, [HOST], NOW)
    assert not verdict.ok
    assert verdict.result_type == "validation-failure"
    assert verdict.reason == "no TLSA record matches"


def test_dane_ee_record_for_the_issuer_does_not_match(chain: Chain) -> None:
    # DANE-EE is about the leaf: a record of the intermediate is no match.
    assert not verify_chain([record(3, 1, 1, chain.certs[1])], chain.ders, [HOST], NOW).ok


@pytest.mark.parametrize(("selector", "mtype"), [(0, 0), (0, 1), (1, 1), (1, 2)])
def test_dane_ta_matches_a_sent_issuer(chain: Chain, selector: int, mtype: int) -> None:
    tlsa = record(2, selector, mtype, chain.certs[1])
    verdict = verify_chain([tlsa], chain.ders, [HOST], NOW)
    assert verdict.ok and verdict.record == tlsa


def test_dane_ta_root_must_be_sent(chain: Chain) -> None:
    root = x509.load_pem_x509_certificate(chain.root.cert_pem.bytes())
    tlsa = record(2, 0, 1, root)
    assert not verify_chain([tlsa], chain.ders, [HOST], NOW).ok
    root_der = root.public_bytes(Encoding.DER)
    assert verify_chain([tlsa], [*chain.ders, root_der], [HOST], NOW).ok


def test_dane_ta_checks_the_name(chain: Chain) -> None:
    tlsa = record(2, 1, 1, chain.certs[1])
    verdict = verify_chain([tlsa], chain.ders, ["other.dane.example"], NOW)
    assert not verdict.ok
    assert verdict.result_type == "certificate-host-mismatch"
    # Any of the reference identifiers will do (rfc7672:3.2.2).
    assert verify_chain([tlsa], chain.ders, ["other.dane.example", HOST], NOW).ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("mx.wild.example", True),
        ("MX.Wild.Example", True),
        ("wild.example", False),  # the wildcard is one whole label
        ("a.mx.wild.example", False),  # ... and only the leftmost one
    ],
)
def test_dane_ta_wildcards(chain: Chain, name: str, ok: bool) -> None:
    # rfc7672:3.2.3 — "*" as the whole leftmost label only.
    leaf = chain.intermediate.issue_cert("*.wild.example")
    tlsa = record(2, 0, 1, chain.certs[1])
    assert verify_chain([tlsa], ders(leaf), [name], NOW).ok is ok


def test_dane_ta_checks_validity(chain: Chain) -> None:
    expired = chain.intermediate.issue_cert(
        HOST,
        not_before=NOW - datetime.timedelta(days=30),
        not_after=NOW - datetime.timedelta(days=1),
    )
    verdict = verify_chain([record(2, 1, 1, chain.certs[1])], ders(expired), [HOST], NOW)
    assert not verdict.ok
    assert verdict.result_type == "validation-failure"


def test_dane_ta_leaf_must_chain_to_the_anchor(chain: Chain) -> None:
    # The right anchor sent along, but the leaf comes from somewhere else.
    stranger = trustme.CA().issue_cert(HOST)
    sent = [ders(stranger)[0], chain.ders[1]]
    verdict = verify_chain([record(2, 0, 1, chain.certs[1])], sent, [HOST], NOW)
    assert not verdict.ok
    assert verdict.result_type == "validation-failure"


def test_pkix_records_never_match(chain: Chain) -> None:
    records = [record(1, 1, 1, chain.certs[0]), record(0, 0, 1, chain.certs[1])]
    verdict = verify_chain(records, chain.ders, [HOST], NOW)
    assert not verdict.ok
    assert verdict.result_type == "tlsa-invalid"


def test_one_matching_record_is_enough(chain: Chain) -> None:
    good = record(3, 1, 1, chain.certs[0])
    verdict = verify_chain([TLSA(3, 1, 1, bytes(32)), good], chain.ders, [HOST], NOW)
    assert verdict.ok and verdict.record == good


@pytest.mark.parametrize("sent", [[], [b"not a certificate"]])
def test_garbage_chain(chain: Chain, sent: list[bytes]) -> None:
    verdict = verify_chain([record(3, 1, 1, chain.certs[0])], sent, [HOST], NOW)
    assert not verdict.ok
    assert verdict.result_type == "validation-failure"


def test_peer_chain_falls_back_to_the_leaf(chain: Chain) -> None:
    class LeafOnly:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            assert binary_form
            return chain.ders[0]

    assert peer_chain(LeafOnly()) == chain.ders[:1]


# -- discovery (rfc7672:2.2) ----------------------------------------------------------


def tlsa_at(name: str) -> str:
    return f"_25._tcp.{name}"


def discovered(resolver: MockResolver, host: str = HOST, canonical: str = "") -> HostPolicy:
    return asyncio.run(discover(resolver, host, canonical, 25))


def test_secure_usable_records_mean_dane() -> None:
    resolver = MockResolver({(tlsa_at(HOST), "TLSA"): [(3, 1, 1, bytes(32))]}, signed=["example"])
    policy = discovered(resolver)
    assert policy.mode == "dane"
    assert policy.base_domain == HOST and policy.names == (HOST,)
    assert policy.records == (TLSA(3, 1, 1, bytes(32)),)


def test_secure_unusable_records_mean_encrypt() -> None:
    resolver = MockResolver({(tlsa_at(HOST), "TLSA"): [(1, 1, 1, bytes(32))]}, signed=["example"])
    assert discovered(resolver).mode == "encrypt"


@pytest.mark.parametrize("signed", [[], ["example"]])
def test_no_records_or_insecure_mean_no_dane(signed: list[str]) -> None:
    resolver = MockResolver({(HOST, "A"): ["192.0.2.1"]}, signed=signed)
    assert discovered(resolver).mode == "none"
    insecure = MockResolver({(tlsa_at(HOST), "TLSA"): [(3, 1, 1, bytes(32))]})
    assert discovered(insecure).mode == "none"


@pytest.mark.parametrize("bogus", [False, True])
def test_lookup_failure_is_an_error(bogus: bool) -> None:
    name = tlsa_at(HOST)
    resolver = MockResolver(signed=["example"], **{"bogus" if bogus else "temperror": [name]})
    with pytest.raises(TLSALookupError) as caught:
        discovered(resolver)
    assert caught.value.bogus is bogus
    failed = lookup_failed("dane.example", caught.value)
    assert (failed.policy_type, failed.result_type, failed.success) == (
        "tlsa",
        "dnssec-invalid",
        False,
    )
    # rfc8460:4.4 — the recipient domain is the policy domain, the MX the mx-host.
    assert failed.report == Policy("tlsa", "dane.example", (), (HOST,))


def test_cname_expanded_name_first() -> None:
    # rfc7672:2.2.3 — secure expansion: the TLSA base domain is the target name.
    target = "smtp.provider.example"
    resolver = MockResolver(
        {
            (tlsa_at(target), "TLSA"): [(3, 1, 1, bytes(32))],
            (tlsa_at(HOST), "TLSA"): [(3, 1, 1, b"\x01" * 32)],
        },
        signed=["example"],
    )
    policy = discovered(resolver, canonical=target)
    assert policy.base_domain == target
    assert policy.names == (target, HOST)
    assert policy.records == (TLSA(3, 1, 1, bytes(32)),)


def test_cname_target_without_records_falls_back_to_the_original() -> None:
    target = "smtp.provider.example"
    resolver = MockResolver({(tlsa_at(HOST), "TLSA"): [(3, 1, 1, bytes(32))]}, signed=["example"])
    policy = discovered(resolver, canonical=target)
    assert policy.base_domain == HOST
    assert resolver.queries == [(tlsa_at(target), "TLSA"), (tlsa_at(HOST), "TLSA")]


def outcome(
    policy: HostPolicy, route_policy: str, result_type: str = "", report: Policy | None = None
) -> TLSOutcome:
    """The outcome one session records: a success, or ``result_type``."""
    outcomes: list[TLSOutcome] = []
    tls = SessionTLS(outcomes, "dane.example", policy, route_policy, report, HOST, "192.0.2.1")
    if result_type:
        tls.failure(result_type, "why")
    else:
        tls.success()
    tls.success()  # a session has one outcome: the first
    [found] = outcomes
    return found


def test_outcome_types() -> None:
    sts = Policy("sts", "dane.example", ("version: STSv1",), ("*.dane.example",))
    dane = HostPolicy(HOST, "dane", HOST, (HOST,), (TLSA(3, 1, 1, bytes(32)),))
    ok = outcome(dane, "mta-sts", report=sts)
    # DANE beats MTA-STS (rfc8461:2): the session is the TLSA policy's, not the STS one's.
    assert (ok.policy, ok.policy_type, ok.success) == ("dane", "tlsa", True)
    assert ok.policy_strings == ("3 1 1 " + "00" * 32,)
    assert ok.report == Policy("tlsa", "dane.example", ok.policy_strings, (HOST,))
    # rfc8460:4.3 tlsa-invalid: every record unusable, TLS went unauthenticated.
    encrypt = outcome(HostPolicy(HOST, "encrypt", HOST, (HOST,)), "")
    assert (encrypt.policy, encrypt.success, encrypt.result_type) == (
        "dane-encrypt",
        False,
        "tlsa-invalid",
    )
    failed = outcome(HostPolicy(""), "mta-sts", "certificate-expired", report=sts)
    assert (failed.policy, failed.policy_type, failed.success) == ("mta-sts", "sts", False)
    assert failed.report == sts
    none = outcome(HostPolicy(""), "", report=Policy("no-policy-found", "dane.example"))
    assert (none.policy, none.policy_type) == ("opportunistic", "no-policy-found")
    smarthost = outcome(HostPolicy(""), "smarthost")
    assert (smarthost.policy, smarthost.report) == ("smarthost", None)


# -- the mock resolver's DNSSEC ----------------------------------------------------


def test_mock_resolver_secure_flags() -> None:
    resolver = MockResolver(
        {
            ("a.signed.example", "A"): ["192.0.2.1"],
            ("alias.signed.example", "CNAME"): ["a.signed.example"],
            ("out.signed.example", "CNAME"): ["b.plain.example"],
            ("b.plain.example", "A"): ["192.0.2.2"],
        },
        signed=["signed.example"],
        insecure=[("a.signed.example", "AAAA")],
        bogus=["bad.signed.example"],
    )

    def look(name: str, rdtype: str = "A") -> Answer:
        return asyncio.run(resolver.lookup(name, rdtype))

    assert look("a.signed.example") == Answer(("192.0.2.1",), secure=True)
    assert look("a.signed.example", "AAAA") == Answer((), secure=False)
    assert look("nope.signed.example") == Answer((), nxdomain=True, secure=True)
    assert look("alias.signed.example") == Answer(
        ("192.0.2.1",), secure=True, canonical="a.signed.example"
    )
    # A chain into an unsigned zone is insecure.
    assert look("out.signed.example") == Answer(("192.0.2.2",), canonical="b.plain.example")
    assert look("b.plain.example").secure is False
    with pytest.raises(DNSBogusError):
        look("bad.signed.example")
    assert issubclass(DNSBogusError, DNSTempError)
