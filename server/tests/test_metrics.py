"""[listen] http on a real server: /metrics moves with real traffic, /healthz, MTA-STS.

The counters are read from the Prometheus text exposition the way a scraper
does (prometheus_client's parser), before and after real SMTP and IMAP
traffic from smtplib and imaplib.
"""

from __future__ import annotations

import imaplib
import smtplib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DOMAIN, PASSWORD, Instance, free_port

ALICE = f"alice@{DOMAIN}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(
        tmp_path,
        free_port(),
        imap_port=free_port(),
        http_port=free_port(),
        auth_config="allow_plaintext = true\ndelay_base = 0\n",
    )
    inst.write_config()
    # Where the dns_records role writes the policies: next to the config.
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / f"{DOMAIN}.txt").write_text(
        f"version: STSv1\nmode: enforce\nmx: mx.{DOMAIN}\nmax_age: 86400\n"
    )
    inst.add_user(ALICE)
    inst.start()
    yield inst
    if inst.process is not None:
        inst.kill()


def get(inst: Instance, path: str, host: str = "127.0.0.1") -> tuple[int, str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{inst.http_port}{path}", headers={"Host": host}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 (loopback)
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(inst: Instance) -> Samples:
    status, content_type, text = get(inst, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    table: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return table.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_with_traffic(web: Instance) -> None:
    before = samples(web)
    with smtplib.SMTP("127.0.0.1", web.port, timeout=30) as client:
        client.sendmail(
            "someone@elsewhere.example",
            [ALICE],
            f"From: someone@elsewhere.example\r\nTo: {ALICE}\r\nSubject: m\r\n\r\nhi\r\n".encode(),
        )
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("someone@elsewhere.example", ["nobody@elsewhere.example"], b"x\r\n")
    with (
        imaplib.IMAP4("127.0.0.1", web.imap_port, timeout=30) as imap,
        pytest.raises(imaplib.IMAP4.error),
    ):
        imap.login(ALICE, "not the password")
    with imaplib.IMAP4("127.0.0.1", web.imap_port, timeout=30) as imap:
        imap.login(ALICE, PASSWORD)
        after = samples(web)
        # This IMAP session is open while we scrape.
        assert value(after, "estafeta_connections", protocol="imap") == 1
        imap.logout()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("estafeta_messages_received_total", kind="inbound") == 1
    assert moved("estafeta_messages_rejected_total", kind="inbound", reason="relay denied") == 1
    assert moved("estafeta_auth_attempts_total", protocol="imap", result="failed") == 1
    assert moved("estafeta_auth_attempts_total", protocol="imap", result="ok") == 1
    assert moved("estafeta_store_commit_duration_seconds_count") >= 1
    assert value(after, "estafeta_queue", measure="entries") == 0


def test_healthz_and_mta_sts_policy(web: Instance) -> None:
    assert get(web, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, content_type, body = get(web, "/.well-known/mta-sts.txt", f"mta-sts.{DOMAIN}")
    assert (status, content_type) == (200, "text/plain; charset=utf-8")
    assert body.startswith("version: STSv1\nmode: enforce\n")
    # A domain of ours without a policy file: the policy made from [mta_sts]
    # (its defaults here: testing, this host as the MX).
    made = get(web, "/.well-known/mta-sts.txt", "mta-sts.other.test")
    assert made[0] == 200 and "mode: testing\r\nmx: mx.example.test\r\n" in made[2]
    assert get(web, "/.well-known/mta-sts.txt", "mta-sts.nobody.test")[0] == 404
    assert get(web, "/nothing")[0] == 404
