"""Helpers shared by the tests of received reports (DMARC and TLS): the
CLI in process, /metrics as a scraper reads it, a message over SMTP, and
a hostile input refused in bounded time and memory."""

from __future__ import annotations

import json
import smtplib
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Instance
from estafeta import cli
from estafeta.reports.unpack import ReportError

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Run = Callable[..., tuple[int, str]]
RunJSON = Callable[..., Any]


def cli_runner(command: str) -> tuple[Run, RunJSON]:
    """``run(instance, capsys, *args)`` -> (exit code, output) and
    ``run_json(...)`` -> the parsed ``--json`` output, of ``estafeta COMMAND``."""

    def run(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
        code = cli.main(["-c", str(instance.config), command, *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    def run_json(instance: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
        code, out = run(instance, capsys, *args, "--json")
        assert code in (0, 1), out
        return json.loads(out)

    return run, run_json


def write_files(directory: Path, made: dict[str, bytes]) -> dict[str, Path]:
    """Each of ``made`` as ``directory/report.NAME``; the paths by name."""
    paths = {}
    for name, data in made.items():
        path = directory / f"report.{name}"
        path.write_bytes(data)
        paths[name] = path
    return paths


def send(inst: Instance, sender: str, recipients: list[str], data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
        refused = client.sendmail(sender, recipients, data)
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


def expect_refusal(
    parse: Callable[[bytes], object],
    data: bytes,
    reason: str,
    error: str,
    limit: int | None,
    seconds: float = 60,
) -> None:
    """``parse(data)`` raises ReportError with ``reason`` and ``error`` in
    its text, within ``seconds``, never holding more than ``limit`` bytes of
    Python memory at once (None: not measured; tracemalloc makes a long
    parse several times slower)."""
    started = time.monotonic()
    if limit is not None:
        tracemalloc.start()
    try:
        with pytest.raises(ReportError) as caught:
            parse(data)
        peak = tracemalloc.get_traced_memory()[1] if limit is not None else 0
    finally:
        if limit is not None:
            tracemalloc.stop()
    assert caught.value.reason == reason, str(caught.value)
    assert error in str(caught.value)
    assert limit is None or peak < limit, f"peak {peak} bytes"
    assert time.monotonic() - started < seconds
