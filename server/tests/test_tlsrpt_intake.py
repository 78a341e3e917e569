"""TLS reports arriving over the MX (estafeta.delivery.tlsrpt), on a real
server with both report addresses: smtplib sends the rfc8460:5.3 sample to
``[reports] tlsrpt_address``; ``estafeta tlsrpt report --json`` shows its
numbers, the message is not in the mailbox, /metrics counts it. Plain mail
and a hostile report stay as mail, counted by reason; a DMARC report to the
DMARC address still reaches the DMARC store."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import _reports
from _dmarc_reports import message as dmarc_message
from _dmarc_reports import sample as dmarc_sample
from _dmarc_reports import zipped
from _reports import scrape, value
from _tls_reports import gzipped, message, sample
from conftest import DOMAIN, Instance, free_port
from estafeta import metrics
from estafeta.delivery.reports import ReportIntake
from estafeta.delivery.tlsrpt import Intakes, TLSReportIntake, combine
from estafeta.reports.store import ReportStore
from estafeta.reports.tlsrpt import parse_json
from estafeta.reports.tlsrpt_store import TLSReportStore

TLS = f"tls-reports@{DOMAIN}"
DMARC = f"dmarc-reports@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
REPORTER = "smtp-tls-reporting@sender.example"
NOW = int(time.time())


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


RECENT = {"start": _iso(NOW - 2 * 86_400), "end": _iso(NOW - 86_400)}


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(
        tmp_path,
        free_port(),
        http_port=free_port(),
        extra_config=f'[reports]\ndmarc_address = "{DMARC}"\ntlsrpt_address = "{TLS}"\n',
    )
    inst.write_config()
    for address in (TLS, DMARC, ALICE):
        inst.add_user(address)
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


def send(inst: Instance, recipients: list[str], data: bytes) -> None:
    _reports.send(inst, REPORTER, recipients, data)


def test_a_report_sent_to_the_rua_address_is_stored_not_delivered(mx: Instance) -> None:
    send(mx, [TLS], message(gzipped(sample(**RECENT))))
    summary = json.loads(mx.cli("tlsrpt", "report", "--json").stdout)
    assert (summary["reports"], summary["successful"], summary["failed"]) == (1, 4228, 38)
    assert summary["policies"][0] == {
        "org_name": "Sender Example Inc.",
        "policy_domain": DOMAIN,
        "policy_type": "sts",
        "reports": 1,
        "successful": 4211,
        "failed": 38,
        "failures": {
            "certificate-expired": 30,
            "starttls-not-supported": 6,
            "validation-failure": 2,
        },
    }
    assert mx.index_rows(TLS) == []  # consumed
    assert (mx.data_dir / "reports" / "tlsrpt.db").is_file()

    # Plain mail and a report with a broken schema stay as mail; a retry is
    # a duplicate, consumed for the address, kept for alice.
    send(mx, [TLS], b"From: a@b.example\r\nSubject: hello\r\n\r\nnot a report\r\n")
    send(
        mx, [TLS], message(sample(**RECENT).replace(b'"sts"', b'"dane"'), "application/tlsrpt+json")
    )
    send(mx, [TLS, ALICE], message(gzipped(sample(**RECENT))))
    subjects = [r.summary.subject for r in mx.index_rows(TLS)]
    assert subjects[0] == "hello" and len(subjects) == 2
    assert len(mx.index_rows(ALICE)) == 1
    assert json.loads(mx.cli("tlsrpt", "report", "--json").stdout)["reports"] == 1

    # A DMARC report still goes to the DMARC store, through the same hook.
    send(mx, [DMARC], dmarc_message(zipped(dmarc_sample(begin=NOW - 2 * 86_400, end=NOW - 86_400))))
    assert json.loads(mx.cli("dmarc", "report", "--json").stdout)["reports"] == 1
    assert mx.index_rows(DMARC) == []
    # The address decides: a TLS report sent to the DMARC address is the
    # DMARC intake's, which keeps it as mail.
    other = sample(**RECENT, report_id="another-report")
    send(mx, [DMARC], message(gzipped(other)))
    assert [r.summary.subject for r in mx.index_rows(DMARC)] != []
    assert json.loads(mx.cli("tlsrpt", "report", "--json").stdout)["reports"] == 1

    table = scrape(mx)
    assert value(table, "estafeta_tlsrpt_reports_total", result="accepted") == 1
    assert value(table, "estafeta_tlsrpt_reports_total", result="duplicate") == 1
    assert value(table, "estafeta_tlsrpt_reports_total", result="rejected") == 2
    assert value(table, "estafeta_tlsrpt_reports_rejected_total", reason="schema") == 1
    # Plain mail to the TLS address is counted by the TLS intake...
    assert value(table, "estafeta_tlsrpt_reports_rejected_total", reason="no_report") == 1
    # ... and a TLS report to the DMARC address by the DMARC intake.
    assert value(table, "estafeta_dmarc_reports_total", result="rejected") == 1
    assert value(table, "estafeta_dmarc_reports_rejected_total", reason="no_report") == 0
    sessions = "estafeta_tlsrpt_report_sessions_total"
    assert value(table, sessions, result="successful") == 4228
    assert value(table, sessions, result="failed") == 38
    assert value(table, "estafeta_dmarc_reports_total", result="accepted") == 1
    log = mx.log_text()
    assert "tlsrpt_report" in log and "result=accepted" in log and "reason=schema" in log
    assert "Traceback" not in log


def test_the_intake_alone_and_combined(tmp_path: Path) -> None:
    store = TLSReportStore(tmp_path / "tlsrpt.db")
    tls = TLSReportIntake("TLS-Reports@Example.Test", store, clock=lambda: NOW)
    dmarc = ReportIntake(DMARC, ReportStore(tmp_path / "dmarc.db"), clock=lambda: NOW)
    assert tls.wants(TLS) and not tls.wants(DMARC) and not tls.wants("not an address")
    assert combine(None, None) is None
    assert combine(dmarc, None) is dmarc and combine(None, tls) is tls
    both = combine(dmarc, tls)
    assert isinstance(both, Intakes) and both.wants(TLS) and both.wants(DMARC)
    report = message(gzipped(sample(**RECENT)))
    dmarc_report = dmarc_message(zipped(dmarc_sample(begin=NOW - 9, end=NOW)))
    # The address decides: each intake judges only what was sent to it.
    assert asyncio.run(both.take(report, to=[DMARC])) is False
    assert asyncio.run(both.take(dmarc_report, to=[TLS])) is False
    assert store.tally(0) == []
    assert asyncio.run(both.take(report, to=[TLS])) is True
    assert [t.successful for t in store.tally(0)] == [4211, 17]
    # Neither a TLS nor a DMARC report: delivered as mail.
    assert asyncio.run(both.take(b"Subject: x\r\n\r\nhello\r\n", to=[TLS])) is False
    # Sent to both addresses: the content decides.
    assert asyncio.run(both.take(dmarc_report, to=[TLS, DMARC])) is True


@pytest.mark.parametrize("kind", ["tls", "dmarc", "neither"])
def test_one_address_for_both_intakes_the_content_decides(tmp_path: Path, kind: str) -> None:
    tls_store = TLSReportStore(tmp_path / "tlsrpt.db")
    dmarc_store = ReportStore(tmp_path / "dmarc.db")
    both = Intakes(
        ReportIntake(TLS, dmarc_store, clock=lambda: NOW),
        TLSReportIntake(TLS, tls_store, clock=lambda: NOW),
    )
    data = {
        "tls": message(gzipped(sample(**RECENT))),
        "dmarc": dmarc_message(zipped(dmarc_sample(begin=NOW - 9, end=NOW))),
        "neither": b"Subject: x\r\n\r\nhello\r\n",
    }[kind]
    no_report = metrics.DMARC_REPORTS_REJECTED.labels("no_report")
    before = no_report._value.get()
    assert asyncio.run(both.take(data, to=[TLS])) is (kind != "neither")
    assert (len(tls_store.tally(0)) > 0, len(dmarc_store.tally(0, "org")) > 0) == (
        kind == "tls",
        kind == "dmarc",
    )
    # A message that is neither is counted once, by the DMARC intake.
    assert no_report._value.get() - before == (kind == "neither")


def test_a_report_the_store_cannot_take_is_delivered_as_mail(tmp_path: Path) -> None:
    # The TLS store is broken; with the DMARC intake beside it the TLS
    # report is still the TLS intake's to refuse (no DMARC parse of it).
    (tmp_path / "reports").write_text("a file where the directory should be")
    both = Intakes(
        ReportIntake(DMARC, ReportStore(tmp_path / "dmarc.db")),
        TLSReportIntake(TLS, TLSReportStore(tmp_path / "reports" / "tlsrpt.db")),
    )
    refused = metrics.TLSRPT_REPORTS_REJECTED.labels("store")
    not_dmarc = metrics.DMARC_REPORTS_REJECTED.labels("no_report")
    before = (refused._value.get(), not_dmarc._value.get())
    assert asyncio.run(both.take(message(gzipped(sample(**RECENT))), to=[TLS, DMARC])) is False
    assert (refused._value.get(), not_dmarc._value.get()) == (before[0] + 1, before[1])


def test_an_old_report_is_expired_not_stored(tmp_path: Path) -> None:
    store = TLSReportStore(tmp_path / "tlsrpt.db", retention=10 * 86_400)
    intake = TLSReportIntake(TLS, store, clock=lambda: NOW)
    old = sample(start=_iso(NOW - 30 * 86_400), end=_iso(NOW - 29 * 86_400))
    assert asyncio.run(intake.take(message(gzipped(old)))) is True
    assert store.tally(0) == []
    assert store.add(parse_json(old), NOW) == "expired"
