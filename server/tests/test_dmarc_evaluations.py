"""The MX's DMARC evaluations for the reports we send: what the verdict of
policy/analyze.py (real checks against a MockResolver) becomes as a report
row (delivery/dmarc_evaluations.py), how the store sums and bounds them
(reports/evaluations.py), and the recorder that never holds mail up."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estafeta import metrics
from estafeta.delivery.dmarc_evaluations import Recorder, evaluation
from estafeta.dns import MockResolver
from estafeta.policy import dkim
from estafeta.policy.analyze import Analysis, analyze
from estafeta.policy.dkim import ARCResult, SigningKey
from estafeta.reports.dmarc import (
    AuthResults,
    DkimAuth,
    PolicyEvaluated,
    PolicyOverride,
    PolicyPublished,
    Record,
    SpfAuth,
)
from estafeta.reports.evaluations import Evaluation, EvaluationStore

DAY = 1_797_033_600  # 2026-12-12 00:00:00 UTC
NOW = DAY + 3_600
RUA = "mailto:rua@sender.test"
POLICY = PolicyPublished("sender.test", "reject", "s", "r", "quarantine", 100, "0")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    path = tmp_path_factory.mktemp("dkim") / "s1.pem"
    path.write_bytes(dkim.generate_key("ed25519"))
    return dkim.load_key(path, "list.example", "s1")


@pytest.fixture(scope="module")
def dns(key: SigningKey) -> MockResolver:
    return MockResolver(
        {
            ("sender.test", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
            ("mta.sender.test", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"],
            ("_dmarc.sender.test", "TXT"): [
                f"v=DMARC1; p=reject; sp=quarantine; adkim=s; rua={RUA}"
            ],
            ("_dmarc.sampled.test", "TXT"): ["v=DMARC1; p=reject; pct=0; rua=mailto:r@x.test"],
            ("_dmarc.norua.test", "TXT"): ["v=DMARC1; p=reject"],
            ("s1._domainkey.list.example", "TXT"): [dkim.txt_record(key)],
        },
        temperror=["_dmarc.flaky.test"],
    )


def message(author: str, key: SigningKey | None = None) -> bytes:
    data = (
        f"From: <{author}>\r\nTo: <bob@example.test>\r\nSubject: hello\r\n"
        "Message-ID: <1@sender.test>\r\n\r\nHello.\r\n"
    ).encode()
    return dkim.sign(data, [key]) + data if key else data


def analysis(
    dns: MockResolver,
    author: str = "a@sender.test",
    *,
    ip: str = "192.0.2.7",
    mail_from: str = "a@sender.test",
    helo: str = "mta.sender.test",
    key: SigningKey | None = None,
    dmarc_reject: bool = True,
) -> Analysis:
    return asyncio.run(
        analyze(
            dns,
            hostname="mx.example.org",
            ip=ip,
            helo=helo,
            mail_from=mail_from,
            message=message(author, key),
            dmarc_reject=dmarc_reject,
        )
    )


def row(found: Analysis, ip: str = "192.0.2.7", mail_from: str = "a@sender.test") -> Evaluation:
    made = evaluation(found, ip=ip, mail_from=mail_from, now=NOW)
    assert made is not None
    return made


# -- what a verdict becomes ---------------------------------------------------------------


def test_a_pass_through_aligned_spf(dns: MockResolver) -> None:
    assert row(analysis(dns)) == Evaluation(
        day=DAY,
        policy=POLICY,
        rua=(RUA,),
        record=Record(
            source_ip="192.0.2.7",
            count=1,
            policy_evaluated=PolicyEvaluated("none", dkim="fail", spf="pass"),
            header_from="sender.test",
            envelope_from="sender.test",
            auth_results=AuthResults(spf=(SpfAuth("sender.test", "pass", "mfrom"),)),
        ),
    )


def test_a_forgery_rejected_with_an_unaligned_signature(dns: MockResolver, key: SigningKey) -> None:
    found = analysis(dns, ip="203.0.113.9", mail_from="x@elsewhere.test", key=key)
    assert found.reject is not None
    record = row(found, ip="203.0.113.9", mail_from="x@elsewhere.test").record
    assert record.policy_evaluated == PolicyEvaluated("reject", "fail", "fail")
    assert record.envelope_from == "elsewhere.test"
    assert record.auth_results == AuthResults(
        dkim=(DkimAuth("list.example", "pass", "s1"),),
        spf=(SpfAuth("elsewhere.test", "none", "mfrom"),),
    )


def test_a_subdomain_reports_to_the_organizational_domain(dns: MockResolver) -> None:
    found = analysis(dns, "a@mail.sender.test", ip="203.0.113.9", mail_from="")
    made = row(found, ip="203.0.113.9", mail_from="")
    assert made.policy.domain == "sender.test"  # where the record was found
    assert made.record.header_from == "mail.sender.test"
    # sp=quarantine for the subdomain; the null sender: HELO's SPF, no envelope_from.
    assert made.record.policy_evaluated.disposition == "quarantine"
    assert made.record.envelope_from is None
    assert made.record.auth_results.spf == (SpfAuth("mta.sender.test", "fail", "helo"),)


def test_override_reasons(dns: MockResolver) -> None:
    sampled = row(analysis(dns, "a@sampled.test", ip="203.0.113.9")).record
    assert sampled.policy_evaluated == PolicyEvaluated(
        "quarantine", "fail", "fail", (PolicyOverride("sampled_out", "pct=0"),)
    )
    lenient = analysis(dns, ip="203.0.113.9", dmarc_reject=False)
    assert row(lenient).record.policy_evaluated == PolicyEvaluated(
        "quarantine", "fail", "fail", (PolicyOverride("local_policy", "quarantined, not rejected"),)
    )
    forwarded = dataclasses.replace(
        lenient, arc=ARCResult("pass", 1, "chain valid"), reject=None, junk=True
    )
    assert row(forwarded).record.policy_evaluated.reasons == (
        PolicyOverride("local_policy", "arc=pass"),
    )


def test_an_ipv4_client_on_an_ipv6_socket(dns: MockResolver) -> None:
    assert row(analysis(dns), ip="::ffff:192.0.2.7").record.source_ip == "192.0.2.7"


@pytest.mark.parametrize(
    "author", ["a@norua.test", "a@nothing.test", "a@flaky.test", "not an address"]
)
def test_nothing_to_report(dns: MockResolver, author: str) -> None:
    # No rua=, no record, a DNS failure, no usable From (permerror).
    assert evaluation(analysis(dns, author), ip="192.0.2.7", mail_from="", now=NOW) is None


# -- the store ----------------------------------------------------------------------------


def evaluation_of(ip: str, domain: str = "sender.test", day: int = DAY) -> Evaluation:
    return Evaluation(
        day=day,
        policy=dataclasses.replace(POLICY, domain=domain),
        rua=(RUA,),
        record=Record(ip, 1, PolicyEvaluated("none", "pass", "pass"), domain, domain),
    )


@pytest.fixture
def store(tmp_path: Path) -> EvaluationStore:
    return EvaluationStore(tmp_path / "reports" / "dmarc-evaluations.db", max_rows=2, max_domains=2)


def test_the_same_row_is_counted_not_repeated(store: EvaluationStore) -> None:
    assert store.add([evaluation_of("192.0.2.1")] * 3 + [evaluation_of("192.0.2.2")]) == {
        "recorded": 4
    }
    found = store.aggregate(DAY, "sender.test")
    assert found is not None
    assert [(r.source_ip, r.count) for r in found.records] == [("192.0.2.1", 3), ("192.0.2.2", 1)]
    assert (found.policy, found.rua, found.dropped) == (POLICY, (RUA,), 0)
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert (mode, stat.S_IMODE(store.path.parent.stat().st_mode)) == (0o600, 0o700)


def test_rows_and_domains_are_bounded(store: EvaluationStore) -> None:
    outcomes = store.add([evaluation_of(f"192.0.2.{n}") for n in range(1, 6)])
    assert outcomes == {"recorded": 2, "rows": 3}
    # Known rows still count when the day is full.
    assert store.add([evaluation_of("192.0.2.1")]) == {"recorded": 1}
    others = [evaluation_of("192.0.2.1", "two.test"), evaluation_of("192.0.2.1", "three.test")]
    assert store.add(others) == {"recorded": 1, "domains": 1}
    found = store.aggregate(DAY, "sender.test")
    assert found is not None and found.dropped == 3
    assert sum(r.count for r in found.records) == 3
    assert store.dropped_domains(DAY) == 1
    assert store.aggregate(DAY, "three.test") is None
    # Another day has bounds of its own.
    assert store.add([evaluation_of("192.0.2.1", "three.test", DAY + 86_400)]) == {"recorded": 1}


def test_complete_days_until_marked(store: EvaluationStore) -> None:
    store.add([evaluation_of("192.0.2.1"), evaluation_of("192.0.2.1", day=DAY + 86_400)])
    assert store.unsent(DAY + 86_399) == []  # the day is not over
    assert store.unsent(DAY + 86_400) == [(DAY, "sender.test")]
    assert store.unsent(DAY + 2 * 86_400) == [(DAY, "sender.test"), (DAY + 86_400, "sender.test")]
    store.mark(DAY, "sender.test", "sent", "id-1", NOW, {"recipients": ["rua@sender.test"]})
    store.mark(DAY, "sender.test", "skipped", "id-2", NOW, {})  # a mark is never replaced
    assert store.unsent(DAY + 2 * 86_400) == [(DAY + 86_400, "sender.test")]
    [mark] = store.marks()
    assert (mark.day, mark.state, mark.report_id, mark.detail) == (
        DAY,
        "sent",
        "id-1",
        {"recipients": ["rua@sender.test"]},
    )
    # A marked day takes no more evaluations.
    assert store.add([evaluation_of("192.0.2.9")]) == {"late": 1}


def test_prune_takes_whole_old_days(store: EvaluationStore) -> None:
    store.add([evaluation_of("192.0.2.1"), evaluation_of("192.0.2.1", day=DAY + 86_400)])
    store.mark(DAY, "sender.test", "sent", "id", NOW, {})
    assert store.prune(DAY + 86_400) == 1
    assert store.aggregate(DAY, "sender.test") is None
    assert store.marks() == []
    assert store.unsent(DAY + 2 * 86_400) == [(DAY + 86_400, "sender.test")]


def test_an_absent_file_is_an_empty_store(tmp_path: Path) -> None:
    store = EvaluationStore(tmp_path / "none.db")
    assert (store.unsent(NOW), store.aggregate(DAY, "x.test"), store.marks()) == ([], None, [])
    assert (store.prune(NOW), store.dropped_domains(DAY)) == (0, 0)
    assert not store.path.exists()


# -- the recorder ---------------------------------------------------------------------------


def dropped(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "estafeta_dmarc_evaluations_dropped_total", {"reason": reason}
    )
    return value or 0.0


@pytest.fixture
def verdict(dns: MockResolver) -> Iterator[Analysis]:
    yield analysis(dns)


def record_all(recorder: Recorder, verdict: Analysis, times: int, **kwargs: Any) -> None:
    async def main() -> None:
        recorder.start()
        for _ in range(times):
            recorder.record(verdict, ip="192.0.2.7", mail_from="a@sender.test", **kwargs)
        await recorder.stop()

    asyncio.run(main())


def test_the_recorder_writes_in_batches_and_at_stop(tmp_path: Path, verdict: Analysis) -> None:
    store = EvaluationStore(tmp_path / "e.db")
    recorder = Recorder(store, clock=lambda: NOW)
    record_all(recorder, verdict, 2_500, recipients=["bob@example.test"])
    found = store.aggregate(DAY, "sender.test")
    assert found is not None and [r.count for r in found.records] == [2_500]


def test_the_recorder_drops_what_it_cannot_hold(tmp_path: Path, verdict: Analysis) -> None:
    store = EvaluationStore(tmp_path / "e.db")
    before = dropped("busy")
    recorder = Recorder(store, clock=lambda: NOW, max_pending=10)

    async def main() -> None:  # nothing written before the loop lets the writer run
        recorder.start()
        for _ in range(25):
            recorder.record(verdict, ip="192.0.2.7", mail_from="", recipients=[])
        await recorder.stop()

    asyncio.run(main())
    assert dropped("busy") - before == 15
    found = store.aggregate(DAY, "sender.test")
    assert found is not None and sum(r.count for r in found.records) == 10


def test_reports_to_our_intake_are_not_recorded(tmp_path: Path, verdict: Analysis) -> None:
    store = EvaluationStore(tmp_path / "e.db")
    intake = "dmarc@example.test"
    recorder = Recorder(store, clock=lambda: NOW, report_address=lambda a: a == intake)
    record_all(recorder, verdict, 3, recipients=[intake])
    assert store.aggregate(DAY, "sender.test") is None
    record_all(recorder, verdict, 1, recipients=[intake, "bob@example.test"])
    found = store.aggregate(DAY, "sender.test")
    assert found is not None and found.records[0].count == 1


def test_a_failing_database_never_fails_the_mail(tmp_path: Path, verdict: Analysis) -> None:
    (tmp_path / "reports").write_text("a file where the directory should be")
    store = EvaluationStore(tmp_path / "reports" / "e.db")
    before = dropped("error")
    record_all(Recorder(store, clock=lambda: NOW), verdict, 4, recipients=[])
    assert dropped("error") - before == 4
