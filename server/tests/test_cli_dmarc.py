"""``estafeta dmarc import`` and ``estafeta dmarc report``: reports saved by
hand (message, zip, gzip, XML) imported, then summed per organisation and
per source IP with exact numbers; the [reports] configuration errors. In
process (cli.main) for speed; one test runs the real command to see that a
bad FILE is a line of output, never a traceback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from _dmarc_reports import gzipped, message, sample, zipped
from conftest import Instance, estafeta
from estafeta import cli

DAY = 86_400
NOW = int(time.time())
RECENT = {"begin": NOW - 2 * DAY, "end": NOW - DAY}


def run(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["-c", str(instance.config), "dmarc", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_json(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out = run(instance, capsys, *args, "--json")
    assert code in (0, 1), out
    return json.loads(out)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The sample in every form, dated yesterday; a second reporter's copy."""
    made = {
        "zip": zipped(sample(**RECENT)),
        "gz": gzipped(sample(**RECENT, org="Other Receiver")),
        "xml": sample(**RECENT),
        "eml": message(zipped(sample(**RECENT))),
        "old.xml": sample(begin=NOW - 20 * DAY, end=NOW - 19 * DAY, report_id="old"),
        "expired.xml": sample(begin=NOW - 500 * DAY, end=NOW - 499 * DAY, report_id="x"),
        "bad.xml": sample(**RECENT).replace(b"192.0.2.10", b"192.0.2.300"),
    }
    paths = {}
    for name, data in made.items():
        path = tmp_path / f"report.{name}"
        path.write_bytes(data)
        paths[name] = path
    return paths


def test_import_then_report_json(
    instance: Instance, capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    entries = run_json(
        instance, capsys, "import", str(files["zip"]), str(files["gz"]), str(files["eml"])
    )
    assert [(e["file"], e["result"]) for e in entries] == [
        (str(files["zip"]), "accepted"),
        (str(files["gz"]), "accepted"),
        (str(files["eml"]), "duplicate"),  # the same report, saved from the mail client
    ]
    assert entries[0] == {
        "file": str(files["zip"]),
        "result": "accepted",
        "org_name": "Receiver Example",
        "report_id": "rx-20260101-0001",
        "domain": "example.test",
        "begin": RECENT["begin"],
        "end": RECENT["end"],
        "records": 4,
        "messages": 14,
    }

    report = run_json(instance, capsys, "report")
    assert report["days"] == 7 and report["domain"] is None
    assert (report["reports"], report["messages"]) == (2, 28)
    one_org = {
        "reports": 1,
        "messages": 14,
        "spf_aligned": {"pass": 9, "fail": 5},
        "dkim_aligned": {"pass": 11, "fail": 3},
        "dmarc": {"pass": 12, "fail": 2},
        "disposition": {"none": 12, "quarantine": 0, "reject": 2},
    }
    assert report["organisations"] == [
        {"org_name": "Other Receiver", **one_org},
        {"org_name": "Receiver Example", **one_org},
    ]
    both = ["Other Receiver", "Receiver Example"]
    assert report["sources"] == [
        {
            "source_ip": "192.0.2.10",
            "reports": 2,
            "messages": 16,
            "spf_aligned": {"pass": 16, "fail": 0},
            "dkim_aligned": {"pass": 16, "fail": 0},
            "dmarc": {"pass": 16, "fail": 0},
            "disposition": {"none": 16, "quarantine": 0, "reject": 0},
            "organisations": both,
        },
        {
            "source_ip": "192.0.2.11",
            "reports": 2,
            "messages": 6,
            "spf_aligned": {"pass": 0, "fail": 6},
            "dkim_aligned": {"pass": 6, "fail": 0},
            "dmarc": {"pass": 6, "fail": 0},
            "disposition": {"none": 6, "quarantine": 0, "reject": 0},
            "organisations": both,
        },
        {
            "source_ip": "2001:db8::25",
            "reports": 2,
            "messages": 4,
            "spf_aligned": {"pass": 0, "fail": 4},
            "dkim_aligned": {"pass": 0, "fail": 4},
            "dmarc": {"pass": 0, "fail": 4},
            "disposition": {"none": 0, "quarantine": 0, "reject": 4},
            "organisations": both,
        },
        {
            "source_ip": "198.51.100.7",
            "reports": 2,
            "messages": 2,
            "spf_aligned": {"pass": 2, "fail": 0},
            "dkim_aligned": {"pass": 0, "fail": 2},
            "dmarc": {"pass": 2, "fail": 0},
            "disposition": {"none": 2, "quarantine": 0, "reject": 0},
            "organisations": both,
        },
    ]


def test_import_reports_each_file_and_fails_for_the_rejected(
    instance: Instance,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    code, out = run(
        instance,
        capsys,
        "import",
        str(files["xml"]),
        str(files["bad.xml"]),
        str(tmp_path / "missing.zip"),
        str(files["expired.xml"]),
    )
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(
        f"{files['xml']}: accepted: Receiver Example report rx-20260101-0001 for example.test ("
    )
    assert lines[0].endswith(", 4 records, 14 messages)")
    assert lines[1] == (
        f"{files['bad.xml']}: rejected: feedback/record[1]/row/source_ip:"
        " '192.0.2.300' is not an IP address"
    )
    assert lines[2] == f"{tmp_path / 'missing.zip'}: rejected: No such file or directory"
    assert lines[3].startswith(f"{files['expired.xml']}: expired: ")
    assert len(lines) == 4
    # The good one is in, the others are not.
    assert run_json(instance, capsys, "report", "--days", "3660")["reports"] == 1


def test_import_json_names_the_reason(
    instance: Instance, capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    (entry,) = run_json(instance, capsys, "import", str(files["bad.xml"]))
    assert entry == {
        "file": str(files["bad.xml"]),
        "result": "rejected",
        "reason": "schema",
        "error": "feedback/record[1]/row/source_ip: '192.0.2.300' is not an IP address",
    }


def test_report_days_and_domain(
    instance: Instance, capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    run(instance, capsys, "import", str(files["xml"]), str(files["old.xml"]))
    assert run_json(instance, capsys, "report")["reports"] == 1
    assert run_json(instance, capsys, "report", "--days", "30")["reports"] == 2
    assert (
        run_json(instance, capsys, "report", "--days", "30", "--domain", "Example.Test.")[
            "messages"
        ]
        == 28
    )
    other = run_json(instance, capsys, "report", "--domain", "other.test")
    assert (other["domain"], other["reports"], other["organisations"]) == ("other.test", 0, [])


def test_report_human_table(
    instance: Instance, capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, out = run(instance, capsys, "report")
    assert code == 0
    assert "0 reports, 0 messages" in out and "(none received" in out
    run(instance, capsys, "import", str(files["zip"]))
    code, out = run(instance, capsys, "report", "--domain", "example.test")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("DMARC aggregate reports for example.test, periods ending after ")
    assert lines[0].endswith(" UTC: 1 report, 14 messages")
    assert lines[2].split() == [
        "ORGANISATION", "REPORTS", "MESSAGES", "SPF", "PASS/FAIL", "DKIM", "PASS/FAIL",
        "DMARC", "PASS/FAIL", "NONE/QUAR/REJECT",
    ]  # fmt: skip
    assert lines[3].split() == ["Receiver", "Example", "1", "14", "9/5", "11/3", "12/2", "12/0/2"]
    sources = {line.split()[0]: line.split()[1:] for line in lines[6:]}
    forged = ["1", "2", "0/2", "0/2", "0/2", "0/0/2", "Receiver", "Example"]
    assert sources["2001:db8::25"] == forged


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("report", "--days", "0"), "--days must be 1 to 3660"),
        (("report", "--domain", "not a domain"), "--domain 'not a domain'"),
    ],
)
def test_bad_usage(
    instance: Instance, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], error: str
) -> None:
    code, out = run(instance, capsys, *args)
    assert code == 2
    assert error in out


@pytest.mark.parametrize(
    ("section", "error"),
    [
        (
            '[reports]\ndmarc_address = "dmarc@elsewhere.example"\n',
            "reports.dmarc_address: dmarc@elsewhere.example is not in one of the configured"
            " domains (example.test, other.test)",
        ),
        ('[reports]\ndmarc_address = "no at sign"\n', "reports.dmarc_address: 'no at sign'"),
        ('[reports]\nretention = "0"\n', 'reports.retention: must be a duration like "400d"'),
        ('[reports]\nretention = "400"\n', "reports.retention: '400' is not a duration"),
        ("[reports]\ndmarc_adress = 1\n", "reports.dmarc_adress: unknown key"),
    ],
)
def test_configuration_errors_name_the_key_and_file(
    instance: Instance, capsys: pytest.CaptureFixture[str], section: str, error: str
) -> None:
    instance.extra_config = section
    instance.write_config()
    code, out = run(instance, capsys, "report")
    assert code == 2
    assert out.startswith(f"estafeta: configuration error: {instance.config}: {error}")


def test_the_real_command_prints_lines_not_tracebacks(instance: Instance, tmp_path: Path) -> None:
    result = estafeta(instance.config, "dmarc", "import", str(tmp_path), check=False)
    assert result.returncode == 1
    assert result.stdout == f"{tmp_path}: rejected: Is a directory\n"
    assert "Traceback" not in result.stderr
