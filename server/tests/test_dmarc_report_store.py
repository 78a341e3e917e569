"""The DMARC report store (estafeta.reports.store): deduplication by
reporter and report id, retention pruned on write, the sums per
organisation and per source IP, one transaction per report, and its
errors as ReportStoreError naming the file."""

from __future__ import annotations

import dataclasses
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from _dmarc_reports import BEGIN, END, sample
from estafeta.reports.dmarc import Report, parse_report
from estafeta.reports.store import DAY, ReportStore, ReportStoreError, Tally

NOW = END + 3600  # an hour after the sample's period ended


@pytest.fixture
def store(tmp_path: Path) -> ReportStore:
    return ReportStore(tmp_path / "reports" / "dmarc.db")


def report(**changes: object) -> Report:
    return parse_report(sample(**changes))  # type: ignore[arg-type]


def test_a_report_is_stored_once(store: ReportStore) -> None:
    assert store.add(report(), NOW) == "accepted"
    assert store.add(report(), NOW + 60) == "duplicate"
    (org,) = store.tally(BEGIN, "org")
    assert org == Tally(
        key="Receiver Example",
        reports=1,
        messages=14,
        spf_pass=9,
        spf_fail=5,
        dkim_pass=11,
        dkim_fail=3,
        dmarc_pass=12,
        dmarc_fail=2,
        none=12,
        quarantine=0,
        reject=2,
    )


def test_the_file_is_private(store: ReportStore) -> None:
    store.add(report(), NOW)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_dedup_is_by_organisation_and_report_id(store: ReportStore) -> None:
    assert store.add(report(), NOW) == "accepted"
    assert store.add(report(report_id="rx-20260101-0002"), NOW) == "accepted"
    assert store.add(report(org="Other Receiver"), NOW) == "accepted"  # same id, other org
    assert store.add(report(org="Other Receiver"), NOW) == "duplicate"
    by_org = {t.key: (t.reports, t.messages) for t in store.tally(BEGIN, "org")}
    assert by_org == {"Receiver Example": (2, 28), "Other Receiver": (1, 14)}


def test_per_source_ip(store: ReportStore) -> None:
    store.add(report(), NOW)
    store.add(report(org="Other Receiver"), NOW)
    sources = store.tally(BEGIN, "source")
    assert [(t.key, t.messages) for t in sources] == [
        ("192.0.2.10", 16),
        ("192.0.2.11", 6),
        ("2001:db8::25", 4),
        ("198.51.100.7", 2),
    ]
    forged = sources[2]
    assert (forged.spf_pass, forged.spf_fail, forged.dkim_pass, forged.dkim_fail) == (0, 4, 0, 4)
    assert (forged.dmarc_pass, forged.dmarc_fail, forged.reject) == (0, 4, 4)
    assert forged.organisations == ("Other Receiver", "Receiver Example")
    assert forged.to_json("source_ip") == {
        "source_ip": "2001:db8::25",
        "reports": 2,
        "messages": 4,
        "spf_aligned": {"pass": 0, "fail": 4},
        "dkim_aligned": {"pass": 0, "fail": 4},
        "dmarc": {"pass": 0, "fail": 4},
        "disposition": {"none": 0, "quarantine": 0, "reject": 4},
        "organisations": ["Other Receiver", "Receiver Example"],
    }


def test_since_and_domain_select_reports(store: ReportStore) -> None:
    store.add(report(), NOW)
    later = report(begin=END + 1, end=END + DAY, report_id="later")
    store.add(later, NOW + DAY)
    assert [t.reports for t in store.tally(BEGIN, "org")] == [2]
    assert [t.reports for t in store.tally(END + 1, "org")] == [1]  # by the period's end
    assert store.tally(END + DAY + 1, "org") == []
    assert [t.messages for t in store.tally(BEGIN, "org", "example.test")] == [28]
    assert store.tally(BEGIN, "org", "other.test") == []


def test_retention_prunes_on_write(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "dmarc.db", retention=400 * DAY)
    assert store.add(report(), NOW) == "accepted"
    # 400 days after the sample's period: still kept.
    fresh = report(begin=END + 399 * DAY, end=END + 400 * DAY, report_id="fresh")
    assert store.add(fresh, END + 400 * DAY) == "accepted"
    assert [t.reports for t in store.tally(0, "org")] == [2]
    # A day later, the next write prunes the old one, records and all.
    newer = report(begin=END + 400 * DAY, end=END + 401 * DAY, report_id="newer")
    assert store.add(newer, END + 401 * DAY) == "accepted"
    assert [t.reports for t in store.tally(0, "org")] == [2]
    with closing(sqlite3.connect(store.path)) as conn, conn:
        ids = [row[0] for row in conn.execute("SELECT report_id FROM reports ORDER BY id")]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM records WHERE report NOT IN (SELECT id FROM reports)"
        ).fetchone()[0]
    assert ids == ["fresh", "newer"]
    assert orphans == 0
    # A report older than the retention when it arrives is not stored at all.
    assert store.add(report(report_id="late"), END + 401 * DAY) == "expired"
    assert [t.reports for t in store.tally(0, "org")] == [2]
    assert store.prune(END + 10_000 * DAY) == 2
    assert store.tally(0, "org") == []


def test_a_failed_write_leaves_nothing_half_written(store: ReportStore) -> None:
    good = report()
    broken = dataclasses.replace(good, records=(*good.records[:2], None))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        store.add(broken, NOW)
    with closing(sqlite3.connect(store.path)) as conn, conn:
        assert conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
    assert store.add(good, NOW) == "accepted"  # not taken for a duplicate
    assert [t.messages for t in store.tally(BEGIN, "org")] == [14]


def test_reading_a_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "reports" / "dmarc.db")
    assert store.tally(0, "org") == []
    assert store.prune(NOW) == 0
    assert not (tmp_path / "reports").exists()


def test_another_schema_version_is_an_error_naming_the_file(store: ReportStore) -> None:
    store.add(report(), NOW)
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(ReportStoreError) as caught:
        store.tally(0, "org")
    assert str(caught.value) == f"{store.path}: schema version 99, this estafeta knows 1"


def test_an_unusable_path_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "reports").write_text("a file where the directory should be")
    store = ReportStore(tmp_path / "reports" / "dmarc.db")
    with pytest.raises(ReportStoreError) as caught:
        store.add(report(), NOW)
    assert str(caught.value).startswith(f"{store.path}: ")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(ReportStoreError) as caught:
        ReportStore(garbage).add(report(), NOW)
    assert "file is not a database" in str(caught.value)
