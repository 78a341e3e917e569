"""TLS reports end to end, between two estafeta hosts on a DNS of their own
(Knot): one.example (127.0.0.81) sends mail to two.example (127.0.0.82),
which publishes ``_smtp._tls`` with a mailto rua and takes the reports at
``[reports] tlsrpt_address``. one.example counts its sessions; ``estafeta
tlsrpt send --now <tomorrow>`` (the injected clock) queues the day's report,
DKIM-signed (two.example checks DMARC with p=reject: an unsigned or broken
report would be refused); two.example stores it and ``estafeta tlsrpt
report`` shows one.example's sessions with the right counts."""

from __future__ import annotations

import datetime
import json
import smtplib
import ssl
import time
from pathlib import Path

import pytest
import trustme

from _mailnet import Knot, MailHost, mail_zone, txt
from conftest import PASSWORD

# xdist_group: fixed loopback addresses and ports (25, 587, ...): one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mailnet")]

ONE_IP = "127.0.0.81"
TWO_IP = "127.0.0.82"
ALICE = "alice@one.example"
BOB = "bob@two.example"
RUA = "tls-reports@two.example"


def host(root: Path, domain: str, ip: str, ca: trustme.CA, knot: Knot, reports: str) -> MailHost:
    return MailHost(
        root / domain,
        domain,
        ip,
        ca,
        knot.address,
        extra_config=(
            "[queue]\n"
            f'source_address = "{ip}"\n'
            'retry_min = "1s"\n'
            'retry_max = "2s"\n'
            f'ca_file = "{root / domain / "ca.pem"}"\n'
            f"[reports]\n{reports}"
        ),
    )


def test_a_day_of_mail_then_its_tls_report(tmp_path: Path) -> None:
    ca = trustme.CA()
    knot = Knot(tmp_path / "dns", {})
    one = host(tmp_path, "one.example", ONE_IP, ca, knot, "tlsrpt_send = true\n")
    two = host(tmp_path, "two.example", TWO_IP, ca, knot, f'tlsrpt_address = "{RUA}"\n')
    try:
        for mail_host, users in ((one, [ALICE]), (two, [BOB, RUA])):
            mail_host.write_config()
            for user in users:
                mail_host.add_user(user)
        knot.zones = {
            "one.example": mail_zone(ONE_IP, dkim=one.dkim_records()),
            "two.example": [
                *mail_zone(TWO_IP, dkim=two.dkim_records()),
                f"_smtp._tls TXT {txt(f'v=TLSRPTv1; rua=mailto:{RUA}')}",
            ],
        }
        knot.start()
        one.start()
        two.start()
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        for n in range(3):
            body = (
                f"From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: note {n}\r\n"
                f"Message-ID: <note-{n}@one.example>\r\n\r\nHello {n}.\r\n"
            ).encode()
            with smtplib.SMTP(ONE_IP, 587, timeout=30) as client:
                client.starttls(context=client_tls)
                client.login(ALICE, PASSWORD)
                assert client.sendmail(ALICE, [BOB], body) == {}
        two.wait_messages(BOB, 3)

        # A graceful stop writes the counts; the report of today goes out "tomorrow".
        one.stop()
        tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        now = tomorrow.replace(hour=4, minute=0, second=0, microsecond=0).isoformat()
        (entry,) = json.loads(one.cli("tlsrpt", "send", "--now", now, "--json").stdout)
        assert (entry["domain"], entry["result"]) == ("two.example", "sent")
        assert (entry["successful"], entry["failed"]) == (3, 0)
        assert entry["rua"] == [{"uri": f"mailto:{RUA}", "result": "queued", "signed": True}]
        one.start()  # its queue delivers the report

        deadline = time.monotonic() + 30
        summary: dict[str, object] = {}
        while time.monotonic() < deadline:
            summary = json.loads(two.cli("tlsrpt", "report", "--json").stdout)
            if summary["reports"]:
                break
            time.sleep(0.2)
        assert summary["policies"] == [
            {
                "org_name": "mx.one.example",  # [reports] org_name: the hostname
                "policy_domain": "two.example",
                "policy_type": "no-policy-found",
                "reports": 1,
                "successful": 3,
                "failed": 0,
                "failures": {},
            }
        ]
        assert two.messages(RUA) == []  # stored, not delivered
        # rfc8460:5.3 — signed by the submitter's domain, and the signature holds.
        (arrival,) = [
            line
            for line in two.log_text().splitlines()
            if " delivery " in line and "from=<postmaster@one.example>" in line
        ]
        assert "dkim=pass:one.example" in arrival and "dmarc=pass" in arrival
        for mail_host in (one, two):
            assert "Traceback" not in mail_host.log_text()
    finally:
        one.kill()
        two.kill()
        knot.stop()
