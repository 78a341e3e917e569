"""DMARC aggregate reports arriving over the MX (estafeta.delivery.reports),
on a real server: smtplib sends a zipped report to ``[reports]
dmarc_address``; ``estafeta dmarc report --json`` shows its numbers, the
message is not in the mailbox, /metrics counts it. What is not a valid
report (plain mail, a report with a DTD) stays in the mailbox and is
counted by reason; another recipient of the same message still gets it."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _dmarc_reports import message, sample, zipped
from conftest import DOMAIN, Instance, free_port
from estafeta import metrics
from estafeta.delivery.reports import ReportIntake
from estafeta.reports.store import ReportStore

REPORTS = f"dmarc-reports@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
REPORTER = "noreply-dmarc@receiver.example"
NOW = int(time.time())
RECENT = {"begin": NOW - 2 * 86_400, "end": NOW - 86_400}
DTD = b'<?xml version="1.0"?>\n<!DOCTYPE feedback [<!ENTITY x "y">]>\n<feedback>&x;</feedback>\n'

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(
        tmp_path,
        free_port(),
        http_port=free_port(),
        extra_config=f'[reports]\ndmarc_address = "{REPORTS}"\n',
    )
    inst.write_config()
    inst.add_user(REPORTS)
    inst.add_user(ALICE)
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


def send(inst: Instance, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
        refused = client.sendmail(REPORTER, recipients, data)
    assert refused == {}


def scrape(inst: Instance) -> Samples:
    url = f"http://127.0.0.1:{inst.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(table: Samples, name: str, **labels: str) -> float:
    return table.get((name, frozenset(labels.items())), 0.0)


def report_json(inst: Instance) -> dict[str, object]:
    result: dict[str, object] = json.loads(inst.cli("dmarc", "report", "--json").stdout)
    return result


def test_a_report_sent_to_the_rua_address_is_stored_not_delivered(mx: Instance) -> None:
    send(mx, [REPORTS], message(zipped(sample(**RECENT))))
    summary = report_json(mx)
    assert (summary["reports"], summary["messages"]) == (1, 14)
    assert summary["organisations"] == [
        {
            "org_name": "Receiver Example",
            "reports": 1,
            "messages": 14,
            "spf_aligned": {"pass": 9, "fail": 5},
            "dkim_aligned": {"pass": 11, "fail": 3},
            "dmarc": {"pass": 12, "fail": 2},
            "disposition": {"none": 12, "quarantine": 0, "reject": 2},
        }
    ]
    assert mx.index_rows(REPORTS) == []  # consumed: the database is the record
    assert (mx.data_dir / "reports" / "dmarc.db").is_file()

    # Plain mail to the address and a hostile "report" stay there as mail.
    send(mx, [REPORTS], b"From: a@b.example\r\nSubject: hello\r\n\r\nnot a report\r\n")
    send(mx, [REPORTS], message(zipped(DTD)))
    # The same report again (a reporter's retry), to the address and to alice:
    # the duplicate is consumed for the address, alice gets her copy.
    send(mx, [REPORTS, ALICE], message(zipped(sample(**RECENT))))

    rows = mx.index_rows(REPORTS)
    assert [r.summary.subject for r in rows] == [
        "hello",
        "Report Domain: example.test Submitter: receiver.example Report-ID: <rx-20260101-0001>",
    ]
    assert len(mx.index_rows(ALICE)) == 1
    assert report_json(mx)["reports"] == 1  # no double counting

    table = scrape(mx)
    assert value(table, "estafeta_dmarc_reports_total", result="accepted") == 1
    assert value(table, "estafeta_dmarc_reports_total", result="duplicate") == 1
    assert value(table, "estafeta_dmarc_reports_total", result="rejected") == 2
    assert value(table, "estafeta_dmarc_reports_rejected_total", reason="no_report") == 1
    assert value(table, "estafeta_dmarc_reports_rejected_total", reason="dtd") == 1
    messages = "estafeta_dmarc_report_messages_total"
    assert value(table, messages, check="dmarc", result="pass") == 12
    assert value(table, messages, check="dmarc", result="fail") == 2
    assert value(table, messages, check="spf", result="pass") == 9
    assert value(table, messages, check="dkim", result="fail") == 3

    log = mx.log_text()
    assert "dmarc_report" in log and "result=accepted" in log and "reason=dtd" in log
    assert "Traceback" not in log


def test_an_address_without_an_account_is_named_in_the_log(tmp_path: Path) -> None:
    inst = Instance(tmp_path, free_port(), extra_config=f'[reports]\ndmarc_address = "{REPORTS}"\n')
    inst.write_config()
    inst.start()
    try:
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
            client.ehlo()
            client.mail(REPORTER)
            code, _ = client.rcpt(REPORTS)
        assert code == 550
        assert f"dmarc_address_unknown address={REPORTS}" in inst.log_text()
    finally:
        inst.kill()


def test_the_intake_knows_its_address_in_any_spelling(tmp_path: Path) -> None:
    intake = ReportIntake("DMARC-Reports@Example.Test", ReportStore(tmp_path / "r.db"))
    assert intake.wants(REPORTS)
    assert intake.wants("dmarc-reports@EXAMPLE.TEST")
    assert not intake.wants(f"dmarc-reports+tag@{DOMAIN}")
    assert not intake.wants(ALICE)
    assert not intake.wants("not an address")


def test_a_report_the_store_cannot_take_is_delivered_as_mail(tmp_path: Path) -> None:
    (tmp_path / "reports").write_text("a file where the directory should be")
    intake = ReportIntake(REPORTS, ReportStore(tmp_path / "reports" / "dmarc.db"))
    counter = metrics.DMARC_REPORTS_REJECTED.labels("store")
    before = counter._value.get()
    assert asyncio.run(intake.take(message(zipped(sample(**RECENT))))) is False
    assert counter._value.get() == before + 1


def test_the_intake_stores_and_then_knows_a_report(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "dmarc.db")
    intake = ReportIntake(REPORTS, store, clock=lambda: RECENT["end"] + 60.0)
    data = message(zipped(sample(**RECENT)))
    accepted = metrics.DMARC_REPORTS.labels("accepted")
    duplicate = metrics.DMARC_REPORTS.labels("duplicate")
    before = (accepted._value.get(), duplicate._value.get())
    assert asyncio.run(intake.take(data)) is True
    assert asyncio.run(intake.take(data)) is True
    assert (accepted._value.get(), duplicate._value.get()) == (before[0] + 1, before[1] + 1)
    assert [t.messages for t in store.tally(0, "org")] == [14]
