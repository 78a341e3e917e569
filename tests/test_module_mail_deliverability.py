"""library/mail_deliverability.py against a real estafeta on loopback."""

from __future__ import annotations

import imaplib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import free_port
from tests.doctor_standin import DOMAIN as DOCTOR_DOMAIN
from tests.doctor_standin import FAIL, OK, WARN, StandIn, report
from tests.doctor_standin import HOST as DOCTOR_HOST

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture
def base_args(estafeta_server: Any) -> dict[str, Any]:
    """alice@ submits on 587-style STARTTLS; bob@ reads over implicit TLS; no
    doctor (its tests give it a stand-in estafeta)."""
    return {
        "doctor": False,
        "smtp_host": "127.0.0.1",
        "smtp_port": estafeta_server.ports["submission"],
        "smtp_user": ALICE,
        "smtp_password": estafeta_server.password,
        "to_address": BOB,
        "imap_host": "127.0.0.1",
        "imap_port": estafeta_server.ports["imaps"],
        "imap_password": estafeta_server.password,
        "ca_file": str(estafeta_server.ca_file),
        "timeout": 20,
        "poll_interval": 0.2,
    }


@pytest.fixture
def deliver(
    run_module: Callable[..., dict[str, Any]], base_args: dict[str, Any]
) -> Callable[..., dict[str, Any]]:
    def run(check_mode: bool = False, **overrides: Any) -> dict[str, Any]:
        return run_module("mail_deliverability", {**base_args, **overrides}, check_mode=check_mode)

    return run


def bob_search(server: Any, subject: str) -> list[bytes]:
    """UIDs of bob's INBOX messages whose Subject contains ``subject``."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=context, timeout=10)
    try:
        imap.login(BOB, server.password)
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("SEARCH", "HEADER", "Subject", f'"{subject}"')
        assert typ == "OK"
        return data[0].split()
    finally:
        imap.logout()


def test_delivers_from_alice_to_bob(
    deliver: Callable[..., dict[str, Any]], estafeta_server: Any
) -> None:
    result = deliver()
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is False
    assert isinstance(result["latency"], float)
    assert 0 < result["latency"] < 20
    assert result["folder"] == "INBOX"
    assert result["message_id"].startswith("<") and result["message_id"].endswith("@example.test>")
    assert result["subject"].startswith("Deliverability test ")
    # estafeta adds no Authentication-Results on submission.
    assert result["authentication_results"] == {}
    assert result["authentication_results_raw"] == ""
    assert result["authserv_id"] == ""
    assert result["deleted"] is True
    assert bob_search(estafeta_server, result["subject"].split()[-1]) == []


def test_implicit_tls_submission_and_imap_starttls_keeps_the_message(
    deliver: Callable[..., dict[str, Any]], estafeta_server: Any
) -> None:
    result = deliver(
        smtp_security="tls",
        smtp_port=estafeta_server.ports["submissions"],
        imap_security="starttls",
        imap_port=estafeta_server.ports["imap"],
        imap_user=BOB,
        subject_prefix="[probe]",
        cleanup=False,
    )
    assert result["failed"] is False, result.get("msg")
    assert result["folder"] == "INBOX"
    assert result["deleted"] is False
    assert result["subject"].startswith("[probe] ")
    assert len(bob_search(estafeta_server, result["subject"].split()[-1])) == 1


def test_wrong_smtp_password(deliver: Callable[..., dict[str, Any]]) -> None:
    result = deliver(smtp_password="wrong")
    assert result["failed"] is True
    assert "SMTP authentication failed for alice@example.test" in result["msg"]
    assert "535" in result["msg"]
    assert "wrong" not in result["msg"]


def test_wrong_imap_password(deliver: Callable[..., dict[str, Any]]) -> None:
    result = deliver(imap_password="wrong")
    assert result["failed"] is True
    assert result["msg"].startswith("IMAP authentication failed for bob@example.test")


def test_unknown_recipient(deliver: Callable[..., dict[str, Any]]) -> None:
    result = deliver(to_address="nobody@example.test", imap_user=BOB)
    assert result["failed"] is True
    assert "refused the recipient: <nobody@example.test>: 550 5.1.1" in result["msg"]
    assert "No such user" in result["msg"]


def test_sender_not_owned(deliver: Callable[..., dict[str, Any]]) -> None:
    result = deliver(from_address=BOB)
    assert result["failed"] is True
    assert "refused the sender <bob@example.test>: 553 5.7.1" in result["msg"]


def test_require_names_the_missing_verdict(deliver: Callable[..., dict[str, Any]]) -> None:
    result = deliver(require={"dmarc": "pass"})
    assert result["failed"] is True
    assert "dmarc=none (required pass)" in result["msg"]
    assert "no Authentication-Results header" in result["msg"]
    # The message did arrive: the result says where and how fast.
    assert result["folder"] == "INBOX"
    assert result["latency"] > 0
    assert result["deleted"] is True


def test_not_arrived_within_timeout(deliver: Callable[..., dict[str, Any]]) -> None:
    # The message goes to alice but we watch bob's mailbox.
    result = deliver(to_address=ALICE, imap_user=BOB, timeout=1)
    assert result["failed"] is True
    assert "did not arrive in INBOX or Junk of bob@example.test" in result["msg"]
    assert "within 1s" in result["msg"]


def test_untrusted_certificate(deliver: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    result = deliver(ca_file=str(other_ca))
    assert result["failed"] is True
    assert result["msg"].startswith("TLS certificate verification failed for IMAP 127.0.0.1:")
    result = deliver(validate_certs=False, ca_file=str(other_ca))
    assert result["failed"] is False, result.get("msg")


def test_nothing_listens(deliver: Callable[..., dict[str, Any]], estafeta_server: Any) -> None:
    port = free_port()  # of this process's block: nobody else binds it
    result = deliver(smtp_port=port)
    assert result["failed"] is True
    assert result["msg"].startswith(f"cannot connect to SMTP 127.0.0.1:{port}")


def test_check_mode_sends_nothing(
    deliver: Callable[..., dict[str, Any]], estafeta_server: Any
) -> None:
    result = deliver(check_mode=True, subject_prefix="check-mode-probe", cleanup=False)
    assert result == {
        "changed": False,
        "failed": False,
        "skipped": True,
        "msg": "check mode: no test message was sent",
    }
    assert bob_search(estafeta_server, "check-mode-probe") == []


# -- the doctor (a stand-in estafeta) before the probe (the real server) ----------------------


@pytest.fixture
def with_doctor(
    deliver: Callable[..., dict[str, Any]], doctor_standin: StandIn
) -> Callable[..., dict[str, Any]]:
    """``deliver`` with the doctor on, run by the stand-in."""

    def run(check_mode: bool = False, **overrides: Any) -> dict[str, Any]:
        args = {"doctor": True, **doctor_standin.params(), **overrides}
        return deliver(check_mode=check_mode, **args)

    return run


def test_the_doctor_runs_first_and_its_findings_are_returned(
    with_doctor: Callable[..., dict[str, Any]], doctor_standin: StandIn
) -> None:
    doctor_standin.answer(json.dumps(report(OK, WARN)))
    result = with_doctor(
        doctor_resolvers=["127.0.0.1:5353"],
        doctor_blocklists=["dnsbl.test"],
        doctor_checks=["spf", "dmarc"],
        doctor_timeout=2,
    )
    assert result["failed"] is False, result.get("msg")
    assert result["folder"] == "INBOX"
    assert result["doctor"]["status"] == "warn"
    assert result["doctor"]["findings"] == [OK, WARN]
    assert result["doctor"]["problems"] == [
        f"WARN dmarc _dmarc.{DOCTOR_DOMAIN}: p=none: receivers do nothing "
        "(fix: publish p=quarantine)"
    ]
    assert doctor_standin.args() == [
        "-c",
        "/etc/estafeta/x.toml",
        "doctor",
        "--json",
        "--resolver=127.0.0.1:5353",
        "--blocklist=dnsbl.test",
        "--check=spf",
        "--check=dmarc",
        "--timeout=2",
        "--max-time=60",
    ]


def test_a_doctor_failure_fails_the_task_after_the_probe(
    with_doctor: Callable[..., dict[str, Any]], doctor_standin: StandIn
) -> None:
    doctor_standin.answer(json.dumps(report(OK, WARN, FAIL)), rc=1)
    result = with_doctor()
    assert result["failed"] is True
    assert result["msg"] == (
        f"estafeta doctor on {DOCTOR_HOST}: 1 problem(s): FAIL ptr {DOCTOR_HOST}: "
        "192.0.2.25 has no PTR record (fix: ask the provider)"
    )
    # The message was still sent and found.
    assert result["folder"] == "INBOX" and result["deleted"] is True
    assert result["doctor"]["summary"] == {"ok": 1, "warn": 1, "fail": 1}


def test_strict_fails_on_a_doctor_warning(
    with_doctor: Callable[..., dict[str, Any]], doctor_standin: StandIn
) -> None:
    doctor_standin.answer(json.dumps(report(OK, WARN)), rc=1)
    result = with_doctor(doctor_strict=True)
    assert result["failed"] is True
    assert result["msg"].startswith(f"estafeta doctor on {DOCTOR_HOST}: 1 problem(s): WARN dmarc")
    assert doctor_standin.args()[-1] == "--strict"


def test_probe_and_doctor_failures_are_both_named(
    with_doctor: Callable[..., dict[str, Any]], doctor_standin: StandIn
) -> None:
    doctor_standin.answer(json.dumps(report(FAIL)), rc=1)
    result = with_doctor(smtp_password="wrong")
    assert result["failed"] is True
    probe, doctor = result["msg"].split("; estafeta doctor on ")
    assert probe.startswith("SMTP authentication failed for alice@example.test")
    assert doctor.startswith(f"{DOCTOR_HOST}: 1 problem(s): FAIL ptr")
    assert result["doctor"]["status"] == "fail"


def test_check_mode_runs_only_the_doctor(
    with_doctor: Callable[..., dict[str, Any]],
    doctor_standin: StandIn,
    estafeta_server: Any,
) -> None:
    doctor_standin.answer(json.dumps(report(OK)))
    result = with_doctor(check_mode=True, subject_prefix="check-mode-doctor", cleanup=False)
    assert result["failed"] is False
    assert "skipped" not in result
    assert result["doctor"]["status"] == "ok"
    assert doctor_standin.args()[2:4] == ["doctor", "--json"]
    assert bob_search(estafeta_server, "check-mode-doctor") == []
    doctor_standin.answer(json.dumps(report(FAIL)), rc=1)
    result = with_doctor(check_mode=True)
    assert result["failed"] is True and "FAIL ptr" in result["msg"]


def test_without_estafeta_it_says_where_to_run(
    with_doctor: Callable[..., dict[str, Any]], doctor_standin: StandIn, estafeta_server: Any
) -> None:
    # answer() was never called: there is no estafeta; nothing is sent.
    result = with_doctor(subject_prefix="no-estafeta")
    assert result["failed"] is True
    assert "not found or not executable" in result["msg"]
    assert result["msg"].endswith(
        "; the doctor runs where the module runs: run it on the mail host, or set doctor: false"
    )
    assert bob_search(estafeta_server, "no-estafeta") == []


def test_a_doctor_usage_error_is_the_clis_message(
    with_doctor: Callable[..., dict[str, Any]], doctor_standin: StandIn
) -> None:
    doctor_standin.answer("", rc=2, stderr="estafeta: --resolver x: not IP[:PORT]\n")
    result = with_doctor(doctor_resolvers=["x"])
    assert result["failed"] is True
    assert result["msg"].endswith(": --resolver x: not IP[:PORT]")


def test_authentication_results_parsing(library_module: Callable[[str], Any]) -> None:
    module = library_module("mail_deliverability")
    ours = (
        "mx.example.net;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n"
        '\tdkim=fail reason="signature did not verify" header.d=example.org header.s=old;\r\n'
        "\tdkim=pass (2048-bit key) header.d=example.org header.s=s1;\r\n"
        "\tdmarc=pass (p=reject dis=none) header.from=example.org; arc=none"
    )
    upstream = "relay.example.com; spf=fail smtp.mailfrom=example.org"
    serv_id, verdicts, details, raw = module.authentication_results([ours, upstream], None)
    assert serv_id == "mx.example.net"
    assert verdicts == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none"}
    assert details[1] == {
        "method": "dkim",
        "result": "fail",
        "reason": "signature did not verify",
        "properties": {"header.d": "example.org", "header.s": "old"},
    }
    assert raw == [ours]
    serv_id, verdicts, _, raw = module.authentication_results(
        [ours, upstream], "RELAY.example.com."
    )
    assert verdicts == {"spf": "fail"}
    assert raw == [upstream]
    assert module.authentication_results(['"mx (x)" 1; none'], None)[:2] == ("mx (x)", {})
    assert module.unmet_requirements(
        {"spf": "pass", "dkim": ["pass", "none"]}, {"spf": "fail"}
    ) == ["spf=fail (required pass)"]


def test_runs_through_ansible(base_args: dict[str, Any], tmp_path: Path) -> None:
    """`ansible localhost -m mail_deliverability`: ansible.cfg's library = library
    finds the module, AnsiballZ packs it, and no_log hides the passwords."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote"),
    }
    run = subprocess.run(
        ["ansible", "localhost", "-m", "mail_deliverability", "-a", json.dumps(base_args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result["folder"] == "INBOX"
    assert result["latency"] > 0
    assert result["changed"] is False
    assert base_args["smtp_password"] not in run.stdout
    assert (
        result["invocation"]["module_args"]["smtp_password"]
        == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    )
