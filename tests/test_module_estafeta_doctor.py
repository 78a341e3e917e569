"""library/estafeta_doctor.py: the module around `estafeta doctor --json`.

Most tests run main() under conftest's ``run_module`` against a stand-in
``estafeta`` (a shell script that records its arguments and prints a given
report with a given exit code): what the module passes, returns and says
when the doctor finds problems, errs or prints something else. The last
tests drive the real CLI against zones served by Knot, once through main()
and once through the ``ansible`` command in check mode.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_ansible
from tests.doctor_standin import DOMAIN, FAIL, HOST, OK, WARN, StandIn, report

Run = Callable[..., dict[str, Any]]


@pytest.fixture
def doctor(doctor_standin: StandIn, run_module: Run) -> Run:
    """``doctor(check=False, **params)``: estafeta_doctor run with the stand-in."""

    def run(check: bool = False, **params: Any) -> dict[str, Any]:
        return run_module(
            "estafeta_doctor", {**doctor_standin.params(), **params}, check_mode=check
        )

    return run


def test_nothing_failed(doctor_standin: StandIn, doctor: Run) -> None:
    doctor_standin.answer(json.dumps(report(OK, WARN)))
    result = doctor()
    assert result["failed"] is False and result["changed"] is False
    assert result["status"] == "warn"
    assert result["summary"] == {"ok": 1, "warn": 1, "fail": 0}
    assert result["findings"] == [OK, WARN]
    assert result["problems"] == [
        f"WARN dmarc _dmarc.{DOMAIN}: p=none: receivers do nothing (fix: publish p=quarantine)"
    ]
    assert result["hostname"] == HOST
    assert result["addresses"] == [{"address": "192.0.2.25", "source": "--ip"}]
    assert doctor_standin.args() == [
        "-c",
        "/etc/estafeta/x.toml",
        "doctor",
        "--json",
        "--timeout=5",
        "--max-time=60",
    ]


def test_a_failure_fails_the_task_saying_what_to_fix(doctor_standin: StandIn, doctor: Run) -> None:
    doctor_standin.answer(json.dumps(report(OK, WARN, FAIL)), rc=1)
    result = doctor()
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"] == (
        f"estafeta doctor on {HOST}: 1 problem(s): FAIL ptr {HOST}: 192.0.2.25 has no PTR "
        "record (fix: ask the provider)"
    )
    assert len(result["problems"]) == 2
    assert result["findings"] == [OK, WARN, FAIL]


def test_strict_and_every_option(doctor_standin: StandIn, doctor: Run) -> None:
    doctor_standin.answer(json.dumps(report(OK, WARN)), rc=1)
    result = doctor(
        strict=True,
        ip=["192.0.2.25", "2001:db8::25"],
        resolvers=["127.0.0.1:5353"],
        authoritative=["192.0.2.53"],
        blocklists=["zen.spamhaus.org", "-odd"],
        ca_files=["/etc/ssl/lab.pem"],
        checks=["spf", "dmarc"],
        timeout=2.5,
        max_time=30,
    )
    assert result["failed"] is True
    assert result["msg"].endswith("1 problem(s): " + result["problems"][0])
    assert doctor_standin.args()[2:] == [
        "doctor",
        "--json",
        "--ip=192.0.2.25",
        "--ip=2001:db8::25",
        "--resolver=127.0.0.1:5353",
        "--authoritative=192.0.2.53",
        "--blocklist=zen.spamhaus.org",
        "--blocklist=-odd",
        "--ca-file=/etc/ssl/lab.pem",
        "--check=spf",
        "--check=dmarc",
        "--timeout=2.5",
        "--max-time=30",
        "--strict",
    ]


def test_check_mode_runs_the_doctor(doctor_standin: StandIn, doctor: Run) -> None:
    doctor_standin.answer(json.dumps(report(OK, FAIL)), rc=1)
    result = doctor(check=True)
    assert result["failed"] is True and result["changed"] is False
    assert "FAIL ptr" in result["msg"]


def test_usage_error_is_the_clis_message(doctor_standin: StandIn, doctor: Run) -> None:
    doctor_standin.answer("", rc=2, stderr="estafeta: --ip x: not an IP address\n")
    result = doctor(ip=["x"])
    assert result["failed"] is True
    assert result["msg"].endswith(": --ip x: not an IP address")
    assert result["rc"] == 2


def test_output_that_is_noreport(doctor_standin: StandIn, doctor: Run) -> None:
    for output in ("usage: estafeta ...", json.dumps({"findings": [{"check": 1}]}), "[]"):
        doctor_standin.answer(output)
        result = doctor()
        assert result["failed"] is True
        assert "the output is not a doctor report" in result["msg"], output


def test_missing_executable(doctor_standin: StandIn, doctor: Run) -> None:
    result = doctor()  # answer() was never called: there is no script
    assert result["failed"] is True
    assert "not found or not executable" in result["msg"]


# -- the real CLI ------------------------------------------------------------------------


class Host:
    """A configuration without listeners, and a wrapper running this venv's estafeta."""

    def __init__(self, root: Path) -> None:
        self.config = root / "estafeta.toml"
        self.executable = root / "bin" / "estafeta"
        self.config.write_text(
            f'hostname = "{HOST}"\ndata_dir = "{root / "data"}"\ndomains = ["{DOMAIN}"]\n'
        )
        self.executable.parent.mkdir()
        self.executable.write_text(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m estafeta "$@"\n'
        )
        self.executable.chmod(0o755)


def _zones(dmarc: bool) -> dict[str, list[str]]:
    return {
        DOMAIN: [
            "@ MX 10 mx",
            "mx A 192.0.2.25",
            '@ TXT "v=spf1 mx -all"',
            *(['_dmarc TXT "v=DMARC1; p=reject; rua=mailto:postmaster@example.test"'] * dmarc),
        ],
        "2.0.192.in-addr.arpa": ["25 PTR mx.example.test."],
    }


def _args(host: Host, knot: Any) -> dict[str, Any]:
    return {
        "config": str(host.config),
        "executable": str(host.executable),
        "ip": ["192.0.2.25"],
        "resolvers": [knot.address],
        "checks": ["ptr", "helo", "spf", "dmarc"],
        "timeout": 2,
    }


def test_real_doctor(
    tmp_path: Path, knot: Callable[..., Any], run_module: Callable[..., dict[str, Any]]
) -> None:
    host = Host(tmp_path)
    good = run_module("estafeta_doctor", _args(host, knot(_zones(dmarc=True))))
    assert good["failed"] is False, good.get("msg")
    assert good["status"] == "ok" and good["problems"] == []
    assert {f["check"] for f in good["findings"]} == {"addresses", "ptr", "helo", "spf", "dmarc"}
    bad = run_module("estafeta_doctor", _args(host, knot(_zones(dmarc=False))))
    assert bad["failed"] is True
    assert bad["msg"].startswith(
        f"estafeta doctor on {HOST}: 1 problem(s): FAIL dmarc _dmarc.{DOMAIN}: no DMARC record"
    )
    assert f'(fix: publish "v=DMARC1; p=quarantine; rua=mailto:postmaster@{DOMAIN}"' in bad["msg"]


def test_through_ansible_in_check_mode(tmp_path: Path, knot: Callable[..., Any]) -> None:
    host = Host(tmp_path)
    args = _args(host, knot(_zones(dmarc=True)))
    code, result = run_ansible("estafeta_doctor", args, tmp_path, check_mode=True)
    assert code == 0, result
    assert result["changed"] is False
    assert result["status"] == "ok"
