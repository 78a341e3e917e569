"""DMARC aggregate reports we send, on a real server: mail arrives over SMTP
from a domain publishing DMARC (a MockResolver in the server), the MX
records each evaluation, ``estafeta dmarc send --now`` (tomorrow) queues
the report for the domain's rua=, the queue delivers it, and since that
rua= is our own intake here (authorised by rfc7489:7.1), ``estafeta dmarc
report`` shows our own figures: the whole exchange of the lab acceptance,
on one host. Also: the config errors of [reports] sending, and the intake
at a shared mailbox's address (the receiving side's open question)."""

from __future__ import annotations

import datetime
import imaplib
import json
import logging
import smtplib
import time
from pathlib import Path
from typing import Any

import pytest

from _dmarc_reports import message as report_message
from _dmarc_reports import sample, zipped
from conftest import DOMAIN, PASSWORD, InProcess, Instance, estafeta, free_port
from estafeta import cli, cli_dmarc_send
from estafeta.config import load
from estafeta.config_reports import ReportIdentity, ReportsConfig
from estafeta.delivery.dmarc_send import Settings
from estafeta.delivery.tlsrpt import report_sender
from estafeta.dns import MockResolver
from estafeta.policy.signer import Signer
from estafeta.queue.store import QueueStore
from estafeta.reports.aggregate import day_start
from estafeta.reports.evaluations import EvaluationStore
from estafeta.server import Server

REPORTS = f"dmarc-reports@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
SENDER = "sender.test"
OTHER = "reporter.test"
DNS = MockResolver(
    {
        (SENDER, "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
        (OTHER, "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
        (f"_dmarc.{OTHER}", "TXT"): [f"v=DMARC1; p=none; rua=mailto:dmarc@{OTHER}"],
        (f"_dmarc.{SENDER}", "TXT"): [f"v=DMARC1; p=reject; rua=mailto:{REPORTS}"],
        # rfc7489:7.1 — example.test agrees to take sender.test's reports.
        (f"{SENDER}._report._dmarc.{DOMAIN}", "TXT"): ["v=DMARC1"],
    }
)


def mail(
    inst: Instance, mail_from: str, to: str, subject: str, author: str = SENDER
) -> tuple[int, bytes]:
    data = (
        f"From: <a@{author}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@{SENDER}>\r\n\r\nHello.\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
        client.ehlo("client.sender.test")
        client.mail(mail_from)
        client.rcpt(to)
        return client.data(data)


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def dmarc_cli(inst: Instance, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(["-c", str(inst.config), "dmarc", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_reports_of_what_the_mx_evaluated_reach_the_rua(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="estafeta")
    inst = Instance(
        tmp_path,
        free_port(),
        extra_config=(
            "[inbound]\nauthenticate = true\n"
            f'[reports]\ndmarc_address = "{REPORTS}"\ndmarc_send = true\n'
            'org_name = "Example Test"\n'
        ),
    )
    inst.write_config()
    inst.add_user(REPORTS)
    inst.add_user(ALICE)
    inst.cli("dkim", "keygen", DOMAIN, "--selector", "s1", "--algorithm", "ed25519")

    def prepare(server: Server) -> None:
        server.resolver = DNS

    with InProcess(inst.config, prepare):
        inst.in_process = True
        today = day_start(time.time())
        # To the intake only: not recorded (no reports about reports). First:
        # the recorder writes in order, so it is settled when the rest is.
        assert mail(inst, f"a@{OTHER}", REPORTS, "to the intake", OTHER)[0] == 250
        assert mail(inst, f"a@{SENDER}", ALICE, "one")[0] == 250
        assert mail(inst, f"b@{SENDER}", ALICE, "two")[0] == 250
        # Forged: SPF of another domain, no signature; p=reject.
        assert mail(inst, "x@forger.test", ALICE, "forged")[0] == 550
        store = EvaluationStore(inst.data_dir / "reports" / "dmarc-evaluations.db")

        def evaluated() -> int:
            found = store.aggregate(today, SENDER)
            return sum(r.count for r in found.records) if found else 0

        wait_for(lambda: evaluated() == 3, "3 evaluations recorded")
        assert store.aggregate(today, OTHER) is None

        # The lab's injected clock: one hour into tomorrow, UTC.
        tomorrow = datetime.datetime.fromtimestamp(today + 86_400 + 3_600, datetime.UTC)
        monkeypatch.setattr(cli_dmarc_send, "DNSPythonResolver", lambda *args: DNS)
        code, out = dmarc_cli(inst, capsys, "send", "--now", tomorrow.isoformat(), "--json")
        assert code == 0, out
        [sent] = json.loads(out)["reports"]
        assert (sent["state"], sent["domain"], sent["recipients"]) == ("sent", SENDER, [REPORTS])
        assert (sent["records"], sent["messages"], sent["skipped"]) == (2, 3, [])

        # The queue hands it to local delivery, the intake stores it.
        def received() -> Any:
            code, out = dmarc_cli(inst, capsys, "report", "--json", "--domain", SENDER)
            assert code == 0, out
            document = json.loads(out)
            return document if document["reports"] else None

        document = wait_for(received, "the report received")
        [org] = document["organisations"]
        assert (org["org_name"], org["reports"], org["messages"]) == ("Example Test", 1, 3)
        assert org["dmarc"] == {"pass": 2, "fail": 1}
        assert org["disposition"] == {"none": 2, "quarantine": 0, "reject": 1}
        [source] = document["sources"]
        assert source["source_ip"] == "127.0.0.1"
        # What the sender's --json said the report tells is what the receiver shows.
        shown = {k: v for k, v in source.items() if k not in ("reports", "organisations")}
        assert [shown] == sent["sources"]

        # Sent once: a second run finds nothing to do.
        code, out = dmarc_cli(inst, capsys, "send", "--now", tomorrow.isoformat())
        assert (code, out.strip()) == (0, "nothing to send: every complete day is sent")
    # In process, the server logs to pytest's capture: one dmarc_aggregate
    # event (the CLI's run), no error.
    events = [r.getMessage() for r in caplog.records]
    assert events.count("dmarc_aggregate") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_send_usage_errors(instance: Instance) -> None:
    result = estafeta(instance.config, "dmarc", "send", check=False)
    assert result.returncode == 2
    assert "[reports] dmarc_send is off" in result.stderr
    result = estafeta(instance.config, "dmarc", "send", "--now", "2026-12-06T01:00", check=False)
    assert (result.returncode, "give the zone too" in result.stderr) == (2, True)
    result = estafeta(instance.config, "dmarc", "send", "--now", "yesterday", check=False)
    assert (result.returncode, "not an ISO 8601 time" in result.stderr) == (2, True)


def test_every_sending_key_is_read(instance: Instance) -> None:
    instance.extra_config = (
        "[reports]\n"
        f'dmarc_address = "{REPORTS}"\n'
        f'tlsrpt_address = "tls-reports@{DOMAIN}"\n'
        'retention = "30d"\n'
        "dmarc_send = true\n"
        "dmarc_send_local = true\n"
        "tlsrpt_send = true\n"
        'org_name = " Example   Test "\n'
        'from_address = "Reports@Example.TEST"\n'
        'contact_info = "https://example.test/dmarc"\n'
    )
    instance.write_config()
    assert load(instance.config).reports == ReportsConfig(
        dmarc_address=REPORTS,
        retention=30 * 86_400,
        dmarc_send=True,
        dmarc_send_local=True,
        identity=ReportIdentity("Example Test", f"reports@{DOMAIN}", "https://example.test/dmarc"),
        tlsrpt_address=f"tls-reports@{DOMAIN}",
        tlsrpt_send=True,
    )


@pytest.mark.parametrize(
    ("section", "from_address"),
    [
        (f'dmarc_address = "{REPORTS}"\ntlsrpt_address = "tls@{DOMAIN}"\n', REPORTS),
        (f'tlsrpt_address = "tls@{DOMAIN}"\n', f"tls@{DOMAIN}"),
        ("", f"postmaster@{DOMAIN}"),  # the first of domains
    ],
)
def test_one_identity_for_dmarc_and_tls_reports(
    instance: Instance, tmp_path: Path, section: str, from_address: str
) -> None:
    instance.extra_config = "[reports]\n" + section
    instance.write_config()
    config = load(instance.config)
    reports = config.reports
    # The server sends neither kind unless told to (the role turns both on).
    assert (reports.dmarc_send, reports.tlsrpt_send) == (False, False)
    assert reports.identity == ReportIdentity(config.hostname, from_address, "")
    # Both senders are that identity.
    dmarc = Settings.of(config.hostname, tuple(config.domains), reports)
    tls = report_sender(config, DNS, QueueStore(instance.data_dir / "queue"), Signer(tmp_path))
    assert (dmarc.org_name, dmarc.from_address) == (config.hostname, from_address)
    assert (tls.identity.org_name, tls.identity.from_address) == (config.hostname, from_address)


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        (
            'dmarc_send = true\nfrom_address = "x@elsewhere.test"\n',
            "reports.from_address",
            "is not in one of the configured domains",
        ),
        ('tlsrpt_address = "x@elsewhere.test"\n', "reports.tlsrpt_address", "configured domains"),
        ('org_name = "bell\\u0007"\n', "reports.org_name", "one printable line"),
        (f'contact_info = "{"x" * 201}"\n', "reports.contact_info", "at most 200 characters"),
        ("dmarc_send = 1\n", "reports.dmarc_send", "must be true or false"),
        ("tlsrpt_send = 1\n", "reports.tlsrpt_send", "must be true or false"),
    ],
)
def test_sending_configuration_errors_name_the_key(
    instance: Instance, section: str, key: str, message: str
) -> None:
    instance.extra_config = "[reports]\n" + section
    instance.write_config()
    result = estafeta(instance.config, "check", check=False)
    assert result.returncode == 2, result.stdout
    assert key in result.stderr and message in result.stderr
    assert str(instance.config) in result.stderr


def test_a_shared_mailbox_address_as_the_intake(tmp_path: Path) -> None:
    """The receiving side's open question: [reports] dmarc_address naming a
    shared mailbox's address (auth/sharedaddresses.py). The server knows
    the address, a report there is stored and consumed, other mail to it
    lands in the shared mailbox."""
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        auth_config="allow_plaintext = true\n",
        extra_config=f'[reports]\ndmarc_address = "{REPORTS}"\n',
    )
    inst.write_config()
    inst.add_user(ALICE)
    inst.cli("shared", "set", "reports", "--acl", f"{ALICE}=lrs", "--address", REPORTS)
    inst.start()
    try:
        now = int(time.time())
        report = report_message(zipped(sample(begin=now - 2 * 86_400, end=now - 86_400)))
        plain = b"From: <x@remote.test>\r\nSubject: a person writes\r\n\r\nHi.\r\n"
        with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as client:
            assert client.sendmail("x@remote.test", [REPORTS], report) == {}
            assert client.sendmail("x@remote.test", [REPORTS], plain) == {}
        shown = json.loads(inst.cli("dmarc", "report", "--json").stdout)
        assert (shown["reports"], shown["messages"]) == (1, 14)
        with imaplib.IMAP4("127.0.0.1", inst.imap_port, timeout=30) as client:
            client.login(ALICE, PASSWORD)
            status, data = client.select("Shared/reports", readonly=True)
            assert (status, data) == ("OK", [b"1"])  # the plain mail only
            status, fetched = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert b"a person writes" in fetched[0][1]  # type: ignore[index]
            client.logout()
    finally:
        inst.stop()
    assert "dmarc_address_unknown" not in inst.log_text()
