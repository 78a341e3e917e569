"""Sending DMARC aggregate reports (delivery/dmarc_send.py) with DNS as data
(MockResolver), a real queue and real DKIM keys in a temp dir: the current
rua= decides; rfc7489:7.1 external destinations (record present, absent,
something else, a rua= of its own, a DNS failure); !size limits; our own
domains; a day is sent once, also after a crash and a restart; stale days;
the lock; the daily job."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from estafeta import metrics
from estafeta.delivery import dmarc_send
from estafeta.delivery.dmarc_evaluations import Recorder
from estafeta.delivery.dmarc_send import (
    DmarcReports,
    Outcome,
    ReportSender,
    SendBusy,
    Settings,
    destination,
    next_run,
)
from estafeta.dns import MockResolver
from estafeta.policy import dkim
from estafeta.policy.signer import Signer
from estafeta.queue.store import QueueStore
from estafeta.reports.dmarc import PolicyEvaluated, PolicyPublished, Record, parse_message
from estafeta.reports.evaluations import Evaluation, EvaluationStore
from estafeta.reports.store import ReportStore

DAY = 1_797_033_600  # 2026-12-12 00:00:00 UTC
AFTER = DAY + 86_400 + 3_600  # 01:00 the next day: DAY is complete
FROM = "dmarc-reports@example.org"
POLICY = PolicyPublished("sender.test", "reject", "r", "r", "reject", 100, "0")


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = EvaluationStore(root / "reports" / "dmarc-evaluations.db")
        self.queue = QueueStore(root / "queue")
        self.signer = Signer(root / "dkim")
        key = self.signer.keygen("example.org", "s1", "ed25519")
        self.dns = MockResolver({("s1._domainkey.example.org", "TXT"): [dkim.txt_record(key)]})
        self.settings = Settings(
            hostname="mx.example.org",
            org_name="Example Org",
            from_address=FROM,
            contact_info="",
            local_domains=frozenset({"example.org"}),
            send_local=False,
            retention=400 * 86_400,
        )
        self.woken = 0

    def sender(self, **settings: Any) -> ReportSender:
        def wake() -> None:
            self.woken += 1

        return ReportSender(
            store=self.store,
            queue=self.queue,
            signer=self.signer,
            resolver=self.dns,
            settings=dataclasses.replace(self.settings, **settings),
            wake=wake,
        )

    def record(self, domain: str = "sender.test", day: int = DAY, sources: int = 2) -> None:
        self.store.add(
            [
                Evaluation(
                    day=day,
                    policy=dataclasses.replace(POLICY, domain=domain),
                    rua=("mailto:old@sender.test",),
                    record=Record(
                        f"192.0.2.{n}", 1, PolicyEvaluated("none", "pass", "fail"), domain, domain
                    ),
                )
                for n in range(1, sources + 1)
                for _ in range(n)  # 192.0.2.1 once, .2 twice, ...
            ]
        )

    def dmarc(self, record: str, domain: str = "sender.test") -> None:
        self.dns.add(f"_dmarc.{domain}", "TXT", record)

    def run(self, now: float = AFTER, **settings: Any) -> list[Outcome]:
        return asyncio.run(self.sender(**settings).run(now))

    def queued(self) -> list[tuple[str, tuple[str, ...], bytes]]:
        return [
            (e.sender, e.recipients, self.queue.read_message(e.message_id))
            for e in self.queue.entries()
        ]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    yield made
    made.queue.close()


def skipped(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "estafeta_dmarc_report_recipients_skipped_total", {"reason": reason}
    )
    return value or 0.0


def test_a_report_goes_to_the_current_rua_signed_and_once(setup: Setup) -> None:
    setup.record()
    setup.dmarc("v=DMARC1; p=reject; rua=mailto:new@sender.test")  # not the one recorded
    [outcome] = setup.run()
    assert (outcome.state, outcome.recipients, outcome.skipped) == (
        "sent",
        ["new@sender.test"],
        [],
    )
    assert (outcome.records, outcome.messages) == (2, 3)
    [(sender, recipients, data)] = setup.queued()
    assert (sender, recipients, setup.woken) == (FROM, ("new@sender.test",), 1)
    # DKIM-signed like the mail we make, and the signature verifies.
    [signature] = asyncio.run(dkim.verify(setup.dns, data))
    assert (signature.result, signature.domain) == ("pass", "example.org")
    report = parse_message(data)
    assert report.report_id == "20261212.sender.test@mx.example.org"
    assert (report.org_name, report.email, report.policy_published) == ("Example Org", FROM, POLICY)
    assert (report.date_range.begin, report.date_range.end) == (DAY, DAY + 86_399)
    assert [(r.source_ip, r.count) for r in report.records] == [("192.0.2.2", 2), ("192.0.2.1", 1)]
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Subject"] == (
        "Report Domain: sender.test Submitter: mx.example.org"
        " Report-ID: <20261212.sender.test@mx.example.org>"
    )
    [mark] = setup.store.marks()
    assert (mark.state, mark.detail["recipients"]) == ("sent", ["new@sender.test"])
    # A restart (a new sender on the same files): nothing is sent again.
    assert setup.run(AFTER + 86_400) == []
    assert len(setup.queued()) == 1


EXTERNAL = "mailto:reports@aggregator.test"
AUTHORISATION = "sender.test._report._dmarc.aggregator.test"


@pytest.mark.parametrize(
    ("published", "state", "recipients", "reason"),
    [
        (["v=DMARC1"], "sent", ["reports@aggregator.test"], None),
        (["v=DMARC1;"], "sent", ["reports@aggregator.test"], None),
        ([], "skipped", [], "external"),
        (["v=spf1 -all", "something else"], "skipped", [], "external"),
        (["v=DMARC2"], "skipped", [], "external"),
        # rfc7489:7.1 step 8: its own rua=, at the same host only.
        (
            ["v=DMARC1; rua=mailto:other@aggregator.test,mailto:evil@elsewhere.test"],
            "sent",
            ["other@aggregator.test"],
            None,
        ),
    ],
)
def test_external_destinations_need_their_owners_consent(
    setup: Setup, published: list[str], state: str, recipients: list[str], reason: str | None
) -> None:
    setup.record()
    setup.dmarc(f"v=DMARC1; p=none; rua={EXTERNAL}")
    for txt in published:
        setup.dns.add(AUTHORISATION, "TXT", txt)
    before = skipped("external")
    [outcome] = setup.run()
    assert (outcome.state, outcome.recipients) == (state, recipients)
    assert [s["reason"] for s in outcome.skipped] == ([reason] if reason else [])
    assert skipped("external") - before == (1 if reason else 0)
    queued = [rcpts for _, rcpts, _ in setup.queued()]
    assert queued == ([tuple(recipients)] if recipients else [])
    assert [m.state for m in setup.store.marks()] == [state]
    assert (AUTHORISATION, "TXT") in setup.dns.queries


def test_the_same_organisation_needs_no_consent(setup: Setup) -> None:
    setup.record()
    setup.dmarc("v=DMARC1; p=none; rua=mailto:dmarc@reports.sender.test")
    [outcome] = setup.run()
    assert outcome.recipients == ["dmarc@reports.sender.test"]
    assert not any("_report._dmarc" in name for name, _ in setup.dns.queries)


def test_a_dns_failure_defers_the_report_to_the_next_run(setup: Setup) -> None:
    setup.record()
    setup.dmarc(f"v=DMARC1; p=none; rua=mailto:rua@sender.test,{EXTERNAL}")
    setup.dns.temperror.add(AUTHORISATION)
    [outcome] = setup.run()
    assert (outcome.state, setup.queued(), setup.store.marks()) == ("deferred", [], [])
    setup.dns.temperror.clear()
    setup.dns.temperror.add("_dmarc.sender.test")
    [outcome] = setup.run()
    assert outcome.state == "deferred"
    setup.dns.temperror.clear()
    setup.dns.add(AUTHORISATION, "TXT", "v=DMARC1")
    [outcome] = setup.run()
    assert outcome.recipients == ["rua@sender.test", "reports@aggregator.test"]
    assert len(setup.queued()) == 2


def test_a_size_limit_the_report_exceeds_skips_that_address(setup: Setup) -> None:
    setup.record(sources=3)
    setup.dmarc("v=DMARC1; p=none; rua=mailto:small@sender.test!1k,mailto:big@sender.test!10m")
    before = skipped("size")
    [outcome] = setup.run()
    assert outcome.recipients == ["big@sender.test"]
    [skip] = outcome.skipped
    assert (skip["uri"], skip["reason"], skip["limit"]) == (
        "mailto:small@sender.test!1k",
        "size",
        1024,
    )
    [(_, _, data)] = setup.queued()
    # The signed message as it would have been queued: To: small@ instead of big@.
    assert skip["size"] == len(data) + len("small") - len("big") > 1024
    assert skipped("size") - before == 1


def test_destinations_parse_rfc7489_uris() -> None:
    found = destination("MAILTO:Reports%2Bdmarc@Example.TEST?subject=x!2m")
    assert found == dmarc_send.Destination(
        "MAILTO:Reports%2Bdmarc@Example.TEST?subject=x!2m",
        "reports+dmarc@example.test",
        "example.test",
        2 * 2**20,
    )
    assert destination("mailto:a@b.test!5").limit == 5  # type: ignore[union-attr]
    assert destination("mailto:a@b.test").limit is None  # type: ignore[union-attr]
    assert destination("mailto:a@b.test!" + "9" * 40).limit is None  # type: ignore[union-attr]
    assert destination("https://reports.example/dmarc") == "scheme"
    assert destination("mailto:not-an-address") == "invalid"


def test_schemes_and_too_many_uris(setup: Setup) -> None:
    setup.record()
    uris = ["https://r.sender.test/", "mailto:broken"] + [
        f"mailto:r{n}@sender.test" for n in range(1, 6)
    ]
    setup.dmarc(f"v=DMARC1; p=none; rua={','.join(uris)}")
    [outcome] = setup.run()
    assert outcome.recipients == ["r1@sender.test", "r2@sender.test", "r3@sender.test"]
    assert [(s["uri"], s["reason"]) for s in outcome.skipped] == [
        ("https://r.sender.test/", "scheme"),
        ("mailto:broken", "invalid"),
        ("mailto:r4@sender.test", "limit"),
        ("mailto:r5@sender.test", "limit"),
    ]


def test_reports_about_our_domains_to_ourselves_only_when_asked(setup: Setup) -> None:
    setup.record("example.org")
    setup.dmarc("v=DMARC1; p=none; rua=mailto:dmarc@example.org", "example.org")
    dry = asyncio.run(setup.sender().run(AFTER, dry_run=True))
    assert [(o.state, o.skipped[0]["reason"]) for o in dry] == [("skipped", "local")]
    [outcome] = asyncio.run(setup.sender(send_local=True).run(AFTER, dry_run=True))
    assert outcome.recipients == ["dmarc@example.org"]
    [outcome] = setup.run()
    assert (outcome.state, setup.queued()) == ("skipped", [])
    assert setup.store.marks()[0].detail["skipped"][0]["reason"] == "local"


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([], "no DMARC record now"),
        (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "several DMARC records now"),
        (["v=DMARC1; p=none"], "no rua= in the DMARC record now"),
        (["v=DMARC1; p=bogus"], "DMARC record unusable now: invalid p=bogus"),
    ],
)
def test_no_rua_now_skips_the_report_for_good(setup: Setup, records: list[str], error: str) -> None:
    setup.record()
    for txt in records:
        setup.dmarc(txt)
    [outcome] = setup.run()
    assert (outcome.state, outcome.error) == ("skipped", error)
    assert [m.state for m in setup.store.marks()] == ["skipped"]
    assert setup.run() == []


def test_a_crash_between_queue_and_mark_sends_the_same_report_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.record()
    setup.dmarc("v=DMARC1; p=none; rua=mailto:rua@sender.test")

    def crash(*args: object) -> None:
        raise SystemExit("the power went")

    with monkeypatch.context() as patch:
        patch.setattr(setup.store, "mark", crash)
        with pytest.raises(SystemExit):
            setup.run()
    [(_, _, first)] = setup.queued()
    [outcome] = setup.run()  # the restart
    assert outcome.state == "sent"
    [_, (_, _, second)] = setup.queued()
    assert setup.run() == []  # marked now: never a third time
    # The same report id and Message-ID: the owner's intake sees a duplicate.
    one, two = (email.message_from_bytes(m, policy=email.policy.default) for m in (first, second))
    assert one["Message-ID"] == two["Message-ID"]
    intake = ReportStore(setup.root / "received.db")
    now = DAY + 2 * 86_400
    assert intake.add(parse_message(first), now) == "accepted"
    assert intake.add(parse_message(second), now) == "duplicate"


def test_a_dry_run_sends_and_marks_nothing(setup: Setup) -> None:
    setup.record()
    setup.dmarc("v=DMARC1; p=none; rua=mailto:rua@sender.test")
    [outcome] = asyncio.run(setup.sender().run(AFTER, dry_run=True))
    assert (outcome.state, outcome.recipients) == ("sent", ["rua@sender.test"])
    assert (setup.queued(), setup.store.marks()) == ([], [])

    # --json says what the report would tell, per source IP, most messages first.
    def source(ip: str, messages: int) -> dict[str, Any]:
        return {
            "source_ip": ip,
            "messages": messages,
            "spf_aligned": {"pass": 0, "fail": messages},
            "dkim_aligned": {"pass": messages, "fail": 0},
            "dmarc": {"pass": messages, "fail": 0},
            "disposition": {"none": messages, "quarantine": 0, "reject": 0},
        }

    assert outcome.to_json()["sources"] == [source("192.0.2.2", 2), source("192.0.2.1", 1)]
    assert [o.state for o in setup.run()] == ["sent"]


def test_days_left_too_long_are_stale_and_old_ones_pruned(setup: Setup) -> None:
    setup.record(day=DAY)
    setup.record(day=DAY + 8 * 86_400)
    setup.dmarc("v=DMARC1; p=none; rua=mailto:rua@sender.test")
    now = DAY + 9 * 86_400 + 60
    outcomes = setup.run(now)
    assert [(o.day, o.state) for o in outcomes] == [(DAY, "stale"), (DAY + 8 * 86_400, "sent")]
    assert len(setup.queued()) == 1
    # A retention of 2 days: the stale day and its mark go at the next run.
    assert setup.run(now, retention=2 * 86_400) == []
    assert [m.day for m in setup.store.marks()] == [DAY + 8 * 86_400]
    assert setup.store.aggregate(DAY, "sender.test") is None


def test_one_run_at_a_time(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.record()
    setup.dmarc("v=DMARC1; p=none; rua=mailto:rua@sender.test")
    monkeypatch.setattr(dmarc_send, "LOCK_WAIT", 0.0)
    with dmarc_send._lock(setup.store.path.with_name("dmarc-send.lock")):
        with pytest.raises(SendBusy, match="another DMARC report run"):
            setup.run()
        # A dry run only reads: it goes on.
        assert len(asyncio.run(setup.sender().run(AFTER, dry_run=True))) == 1
    assert [o.state for o in setup.run()] == ["sent"]


# -- the daily job -------------------------------------------------------------------------------


def test_the_next_run_is_after_utc_midnight() -> None:
    assert next_run(DAY + 5, 120.0) == DAY + 86_400 + 120
    assert next_run(DAY + 86_399, 0.0) == DAY + 86_400


def test_the_server_job_catches_up_at_start(setup: Setup) -> None:
    setup.record()
    setup.dmarc("v=DMARC1; p=none; rua=mailto:rua@sender.test")
    sender = setup.sender()
    recorder = Recorder(setup.store)
    clock: Callable[[], float] = lambda: AFTER  # noqa: E731
    job = DmarcReports(recorder, sender, clock=clock, spread=lambda: 0.0, catch_up=lambda: 0.0)

    async def main() -> None:
        job.start()
        for _ in range(500):
            if setup.store.marks():
                break
            await asyncio.sleep(0.01)
        await job.stop()

    asyncio.run(main())
    assert [m.state for m in setup.store.marks()] == ["sent"]
    assert len(setup.queued()) == 1
