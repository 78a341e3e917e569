"""``estafeta tlsrpt send|import|report``: reports saved by hand (message,
.json.gz, .json) imported and summed per organisation and policy with
exact numbers; our own daily reports sent with an injected clock
(``--now``) to the rua a DNS server in this test publishes, into the real
queue, once; ``--dry-run`` sends nothing; the [reports] settings checked.
In process (cli.main) for speed; one test runs the real command."""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from _reports import cli_runner, write_files
from _tls_reports import gzipped, message, sample
from conftest import DOMAIN, Instance, estafeta, free_port
from estafeta import cli
from estafeta import config as config_module
from estafeta.queue.store import Entry
from estafeta.reports import tlsrpt
from estafeta.reports.tlsrpt import Policy
from estafeta.reports.tlsrpt_recorder import SessionRecorder
from estafeta.reports.tlsrpt_sessions import SessionStore

DAY = 86_400
NOW = int(time.time())


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


RECENT = {"start": _iso(NOW - 2 * DAY), "end": _iso(NOW - DAY)}


run, run_json = cli_runner("tlsrpt")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "json": sample(**RECENT),
        "json.gz": gzipped(sample(**RECENT, org="Other Sender")),
        "eml": message(gzipped(sample(**RECENT))),
        "old.json": sample(start=_iso(NOW - 20 * DAY), end=_iso(NOW - 19 * DAY), report_id="o"),
        "expired.json": sample(start=_iso(NOW - 500 * DAY), end=_iso(NOW - 499 * DAY)),
        "bad.json": sample(**RECENT).replace(b'"no-policy-found"', b'"none"'),
    }
    return write_files(tmp_path, made)


def test_import_then_report(
    instance: Instance, capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    entries = run_json(
        instance, capsys, "import", str(files["json"]), str(files["json.gz"]), str(files["eml"])
    )
    assert [e["result"] for e in entries] == ["accepted", "accepted", "duplicate"]
    assert entries[0] == {
        "file": str(files["json"]),
        "result": "accepted",
        "org_name": "Sender Example Inc.",
        "report_id": "2026-01-01T00:00:00Z_example.test",
        "domains": [DOMAIN, "other.test"],
        "begin": NOW - 2 * DAY,
        "end": NOW - DAY,
        "successful": 4228,
        "failed": 38,
    }
    report = run_json(instance, capsys, "report")
    assert (report["reports"], report["successful"], report["failed"]) == (2, 8456, 76)
    failures = {"certificate-expired": 30, "starttls-not-supported": 6, "validation-failure": 2}
    assert report["policies"] == [
        {
            "org_name": org,
            "policy_domain": DOMAIN,
            "policy_type": "sts",
            "reports": 1,
            "successful": 4211,
            "failed": 38,
            "failures": failures,
        }
        for org in ("Other Sender", "Sender Example Inc.")
    ] + [
        {
            "org_name": org,
            "policy_domain": "other.test",
            "policy_type": "no-policy-found",
            "reports": 1,
            "successful": 17,
            "failed": 0,
            "failures": {},
        }
        for org in ("Other Sender", "Sender Example Inc.")
    ]
    only = run_json(instance, capsys, "report", "--domain", "OTHER.test")
    assert (only["domain"], only["reports"], only["successful"]) == ("other.test", 2, 34)
    code, out = run(instance, capsys, "report")
    assert code == 0
    assert "2 reports, 8456 successful, 76 failed sessions" in out
    assert "certificate-expired 30, starttls-not-supported 6, validation-failure 2" in out


def test_import_reports_each_file_and_fails_for_the_rejected(
    instance: Instance, capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    names = ["old.json", "expired.json", "bad.json"]
    code, out = run(instance, capsys, "import", *(str(files[n]) for n in names), "/nonexistent")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].endswith(
        "accepted: Sender Example Inc. report o about example.test, other.test"
        f" ({_day(NOW - 20 * DAY)} to {_day(NOW - 19 * DAY)},"
        " 4228 successful, 38 failed sessions)"
    )
    assert lines[1].startswith(f"{files['expired.json']}: expired")
    assert "policy-type: 'none' is not one of" in lines[2]
    assert lines[3] == "/nonexistent: rejected: No such file or directory"
    # Only the old one is kept; --days leaves it out.
    assert run_json(instance, capsys, "report", "--days", "10")["reports"] == 0
    assert run_json(instance, capsys, "report", "--days", "30")["reports"] == 1


def _day(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))


def test_usage_errors(instance: Instance, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(instance, capsys, "report", "--days", "0")[0] == 2
    assert run(instance, capsys, "report", "--domain", "not a domain")[0] == 2
    assert run(instance, capsys, "send", "--now", "yesterday")[0] == 2


def test_send_is_refused_while_tlsrpt_send_is_off(
    instance: Instance, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `dmarc send`: with [reports] tlsrpt_send off nothing is counted."""
    code, out = run(instance, capsys, "send", "--now", "2026-01-02T04:00:00Z")
    assert code == 2 and "tlsrpt_send is off" in out, out


def test_a_bad_file_is_a_line_never_a_traceback(tmp_path: Path) -> None:
    inst = Instance(tmp_path, free_port())
    inst.write_config()
    (tmp_path / "junk.json").write_bytes(b"[" * 1_000)
    result = estafeta(inst.config, "tlsrpt", "import", str(tmp_path / "junk.json"), check=False)
    assert result.returncode == 1
    assert "rejected: JSON nested more than 12 deep" in result.stdout
    assert "Traceback" not in result.stderr


# -- sending ------------------------------------------------------------------------


class DNSServer:
    """A UDP DNS server in this process: TXT answers from a dict, NXDOMAIN else."""

    def __init__(self, txt: dict[str, str]) -> None:
        self.txt = txt
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            self.queries.append(name)
            if question.rdtype == dns.rdatatype.TXT and name in self.txt:
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, "IN", "TXT", f'"{self.txt[name]}"')
                )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[tuple[Instance, DNSServer]]:
    server = DNSServer({"_smtp._tls.peer.test": "v=TLSRPTv1; rua=mailto:tls@peer.test"})
    inst = Instance(
        tmp_path,
        free_port(),
        extra_config=f'[dns]\nnameservers = ["127.0.0.1:{server.port}"]\n'
        "[reports]\n"
        "tlsrpt_send = true\n"
        'org_name = "Example Test Mail"\n'
        f'from_address = "tls-reports@{DOMAIN}"\n',
    )
    inst.write_config()
    try:
        yield inst, server
    finally:
        server.stop()


def record(inst: Instance, when: float, domain: str = "peer.test") -> None:
    recorder = SessionRecorder(clock=lambda: when)
    policy = Policy("no-policy-found", domain)
    recorder.success(policy, "mx.peer.test", "192.0.2.1")
    recorder.failure(policy, "starttls-not-supported", "mx.peer.test", "192.0.2.1", "not offered")
    SessionStore(inst.data_dir / "reports" / "tls-sessions.db").add(recorder.drain())


def queued(inst: Instance) -> list[tuple[Entry, bytes]]:
    """The queue's entries with their messages, whichever the backend (on a
    cluster, the queue every node sends from)."""
    queue = cli._queue(config_module.load(inst.config))
    try:
        return [(entry, queue.read_message(entry.message_id)) for entry in queue.entries()]
    finally:
        queue.close()


def test_send_with_an_injected_clock(
    sender: tuple[Instance, DNSServer], capsys: pytest.CaptureFixture[str]
) -> None:
    inst, dns_server = sender
    inst.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    day = 1767268800  # 2026-01-01 12:00 UTC
    record(inst, day)
    record(inst, day, domain="quiet.test")  # publishes no _smtp._tls record
    # The day is not complete yet.
    assert run_json(inst, capsys, "send", "--now", "2026-01-01T23:59:59Z") == []
    dry = run_json(inst, capsys, "send", "--now", "2026-01-02T04:00:00Z", "--dry-run")
    assert [(e["domain"], e["result"]) for e in dry] == [
        ("peer.test", "would-send"),
        ("quiet.test", "no-record"),
    ]
    assert queued(inst) == []

    code, out = run(inst, capsys, "send", "--now", "2026-01-02T04:00:00+00:00")
    assert code == 0, out
    assert out.splitlines() == [
        "2026-01-01 peer.test: sent (1 successful, 1 failed sessions): mailto:tls@peer.test queued",
        "2026-01-01 quiet.test: no-record (1 successful, 1 failed sessions)",
    ]
    ((entry, data),) = queued(inst)
    assert (entry.sender, entry.recipients) == (f"tls-reports@{DOMAIN}", ("tls@peer.test",))
    report = tlsrpt.parse_message(data)
    assert (report.org_name, report.contact_info) == ("Example Test Mail", f"tls-reports@{DOMAIN}")
    assert (report.successful, report.failed) == (1, 1)
    assert b"TLS-Report-Submitter: example.test" in data
    # Sent once: the next runs find nothing to do.
    assert run_json(inst, capsys, "send", "--now", "2026-01-02T05:00:00Z") == []
    assert len(queued(inst)) == 1
    assert "_smtp._tls.peer.test" in dns_server.queries


def test_send_without_dns_is_deferred(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inst = Instance(
        tmp_path,
        free_port(),
        extra_config=f'[dns]\nnameservers = ["127.0.0.1:{free_port()}"]\n'
        "[reports]\ntlsrpt_send = true\n",
    )
    inst.write_config()
    inst.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    record(inst, 1767268800)
    entries = run_json(inst, capsys, "send", "--now", "2026-01-02T04:00:00Z")
    assert [e["result"] for e in entries] == ["deferred"]
    assert (
        cli.main(["-c", str(inst.config), "tlsrpt", "send", "--now", "2026-01-02T04:00:00Z"]) == 1
    )


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ('from_address = "reports@elsewhere.test"', "is not in one of the configured domains"),
        ('tlsrpt_address = "not an address"', "reports.tlsrpt_address"),
        ('org_name = "bad\\u0007name"', "printable"),
        ("tlsrpt_send = 1", "must be true or false"),
    ],
)
def test_reports_settings_are_checked(tmp_path: Path, setting: str, error: str) -> None:
    inst = Instance(tmp_path, free_port(), extra_config=f"[reports]\n{setting}\n")
    inst.write_config()
    result = estafeta(inst.config, "check", check=False)
    assert result.returncode == 2
    assert error in result.stderr
