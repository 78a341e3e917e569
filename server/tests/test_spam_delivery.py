"""delivery.spam: the per-message scan and the per-account spam filter."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estafeta.config_spam import RspamdConfig, SpamConfig
from estafeta.delivery.filters import JUNK, Action, Item, Keep
from estafeta.delivery.spam import (
    Scan,
    Scanner,
    SpamFilter,
    _after_trace,
    rewrite_subject,
    strip_spam_fields,
)
from estafeta.message import summarize
from estafeta.spam import JunkFilter, SpamSettings

ACCOUNT = "me@example.test"
TRACE = b"Received: from a ([192.0.2.1])\r\n\tby mx.example.test; Thu, 3 Dec 2026\r\n"


def mail(subject: str, body: str, sender: str = "someone@remote.test", extra: str = "") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{ACCOUNT}>\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <{abs(hash((subject, body)))}@remote.test>\r\n\r\n{body}\r\n"
    ).encode()


SPAM_WORDS = "cheap pills viagra casino winner prize claim bitcoin offer unsubscribe"
HAM_WORDS = "meeting agenda project review minutes budget schedule report team lunch"


def spam_mail(n: int) -> bytes:
    words = SPAM_WORDS.split()
    body = " ".join(words[(n + i) % len(words)] for i in range(30)) + f" ref{n}"
    return mail(f"WIN a prize {n}", body, sender=f"promo{n}@bulk.example")


def ham_mail(n: int) -> bytes:
    words = HAM_WORDS.split()
    body = " ".join(words[(n + i) % len(words)] for i in range(30)) + f" item{n}"
    return mail(f"Project notes {n}", body, sender="colleague@example.test")


@pytest.fixture
def trained(tmp_path: Path) -> JunkFilter:
    junk = JunkFilter(tmp_path / "spam", SpamSettings(min_spam=5, min_ham=5))
    for n in range(12):
        junk.learn(ACCOUNT, spam_mail(n), spam=True)
        junk.learn(ACCOUNT, ham_mail(n), spam=False)
    return junk


def item(message: bytes, scan: Scan | None, sender: str = "someone@remote.test") -> Item:
    return Item(
        account=ACCOUNT, sender=sender, recipient=ACCOUNT, message=TRACE + message, scan=scan
    )


def run(spam_filter: SpamFilter, it: Item) -> Sequence[Action]:
    return asyncio.run(spam_filter.apply(it, [Keep()]))


def fields(message: bytes) -> dict[str, str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    out: dict[str, str] = {}
    for line in head.replace("\r\n\t", " ").split("\r\n"):
        name, _, value = line.partition(":")
        out.setdefault(name, value.strip())
    return out


# -- the filter ------------------------------------------------------------------


def test_spam_goes_to_junk_with_one_header_set(trained: JunkFilter) -> None:
    it = item(spam_mail(99), Scan(extracted=trained.extract(spam_mail(99))))
    actions = run(SpamFilter(trained, SpamConfig()), it)
    assert actions == [Keep(JUNK)]
    got = fields(it.message)
    assert got["X-Spam-Status"].startswith("Yes, score=")
    assert "tests=bayes" in got["X-Spam-Status"]
    assert float(got["X-Spam-Score"]) >= 0.9
    assert it.spam_score is not None and it.spam_score >= 0.9
    # Our fields come right after our trace fields, before the message's own.
    assert it.message.startswith(TRACE + b"X-Spam-Status: Yes")


def test_the_filter_hands_its_parse_to_the_store(trained: JunkFilter) -> None:
    # The store needs the Summary of the message as filed: made from the
    # scan's parse (offsets moved past our fields), equal to a new parse.
    for message in (spam_mail(98), with_attachment("report.pdf")):
        it = item(message, Scan(extracted=trained.extract(message)))
        run(SpamFilter(trained, SpamConfig()), it)
        assert it.parsed is not None and it.parsed[0] is it.message
        assert it.parsed[1] == summarize(it.message)


def test_no_parse_handed_on_when_the_content_changed(trained: JunkFilter) -> None:
    # rspamd's "rewrite subject" changed the bytes after the scan parsed them.
    scanned = Scan(extracted=trained.extract(ham_mail(97)))
    it = item(rewrite_subject(ham_mail(97), "***SPAM***"), scanned)
    run(SpamFilter(trained, SpamConfig()), it)
    assert it.parsed is None


def test_screen_signals_are_shown_not_judged(trained: JunkFilter) -> None:
    scanned = Scan(extracted=trained.extract(ham_mail(96)), screen=("fcrdns_none", "helo_syntax"))
    it = item(ham_mail(96), scanned)
    assert run(SpamFilter(trained, SpamConfig()), it) == [Keep()]
    assert fields(it.message)["X-Spam-Screen"] == "fcrdns_none helo_syntax"
    assert fields(it.message)["X-Spam-Status"].startswith("No")


def test_ham_stays_in_inbox(trained: JunkFilter) -> None:
    it = item(ham_mail(99), Scan(extracted=trained.extract(ham_mail(99))))
    assert run(SpamFilter(trained, SpamConfig()), it) == [Keep()]
    assert fields(it.message)["X-Spam-Status"].startswith("No, score=")
    assert it.spam_score is not None and it.spam_score < 0.5


def test_untrained_account_is_never_junked(tmp_path: Path) -> None:
    junk = JunkFilter(tmp_path / "spam")
    it = item(spam_mail(1), Scan(extracted=junk.extract(spam_mail(1))))
    assert run(SpamFilter(junk, SpamConfig()), it) == [Keep()]
    assert "trained=no" in fields(it.message)["X-Spam-Status"]
    assert it.spam_score is None  # spamtest says "not tested"


def test_global_allowlist_wins(trained: JunkFilter) -> None:
    config = SpamConfig(allow_senders=("@bulk.example",))
    message = spam_mail(7)
    it = item(message, Scan(extracted=trained.extract(message)), sender="promo7@bulk.example")
    assert run(SpamFilter(trained, config), it) == [Keep()]
    assert fields(it.message)["X-Spam-Status"] == "No, allowlisted"


def test_account_allowlist_wins(trained: JunkFilter) -> None:
    if not hasattr(trained, "allow"):
        pytest.fail("JunkFilter.allow is missing")
    trained.allow(ACCOUNT, "promo8@bulk.example")
    message = spam_mail(8)
    it = item(message, Scan(extracted=trained.extract(message)), sender="other@x.example")
    # The From address is on the list (not the envelope sender).
    assert run(SpamFilter(trained, SpamConfig()), it) == [Keep()]
    assert fields(it.message)["X-Spam-Status"] == "No, allowlisted"


def test_not_from_the_mx_is_left_alone(trained: JunkFilter) -> None:
    it = item(spam_mail(3), None)
    before = it.message
    assert run(SpamFilter(trained, SpamConfig()), it) == [Keep()]
    assert it.message == before


def test_other_filters_keeps_are_kept(trained: JunkFilter) -> None:
    it = item(spam_mail(5), Scan(extracted=trained.extract(spam_mail(5))))
    actions = asyncio.run(
        SpamFilter(trained, SpamConfig()).apply(it, [Keep(flags=("\\Flagged",)), Keep("Lists")])
    )
    assert actions == [Keep(JUNK, ("\\Flagged",)), Keep("Lists")]


@dataclass
class FakeRspamd:
    action: str = "no action"
    score: float = 0.0
    required: float = 15.0
    symbols: tuple[tuple[str, float], ...] = (("R_SPF_ALLOW", -0.2),)
    reason: str = ""
    subject: str = ""
    fail: Exception | None = None
    calls: int = 0

    async def check(self, message: bytes, **kwargs: Any) -> FakeRspamd:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self


def scan(
    message: bytes,
    *,
    rspamd: FakeRspamd | None = None,
    on_failure: str = "accept",
    junk: JunkFilter | None = None,
    config: SpamConfig | None = None,
) -> Scan:
    scanner = Scanner(
        junk=junk,
        config=config or SpamConfig(),
        lists=None,
        rspamd=rspamd,
        rspamd_config=RspamdConfig(url="http://127.0.0.1:1", learn=False, on_failure=on_failure),
        hostname="mx.example.test",
    )
    return asyncio.run(
        scanner.scan(
            message, ip="192.0.2.1", helo="a", sender="s@r.test", recipients=[ACCOUNT], queue_id="Q"
        )
    )


def with_attachment(name: str) -> bytes:
    payload = base64.b64encode(b"MZ\x90\x00" * 40).decode()
    return (
        "From: <a@remote.test>\r\nTo: <me@example.test>\r\nSubject: invoice\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        f'--b1\r\nContent-Type: application/octet-stream; name="{name}"\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{payload}\r\n--b1--\r\n"
    ).encode()


def test_executable_attachment_refused_naming_the_file() -> None:
    result = scan(with_attachment("invoice.pdf.exe"))
    assert result.reply.startswith("554 5.7.1 ")
    assert "invoice.pdf.exe" in result.reply
    assert result.reason == "executable"


def test_executable_check_can_be_turned_off_and_pdf_passes() -> None:
    assert scan(with_attachment("invoice.pdf")).reply == ""
    off = SpamConfig(reject_executables=False)
    assert scan(with_attachment("invoice.exe"), config=off).reply == ""


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        ("reject", "554 5.7.1 Gtube pattern"),
        ("soft reject", "451 4.7.1 Gtube pattern"),
        ("greylist", "451 4.7.1 Greylisted"),
        ("add header", ""),
        ("no action", ""),
    ],
)
def test_rspamd_actions(action: str, reply: str) -> None:
    result = scan(mail("x", "y"), rspamd=FakeRspamd(action=action, reason="Gtube pattern"))
    assert result.reply.startswith(reply)
    assert result.rspamd_junk == (action == "add header")


def test_rspamd_down_accepts_unchecked_by_default(tmp_path: Path) -> None:
    rspamd = FakeRspamd(fail=OSError("connection refused"))
    result = scan(mail("x", "y"), rspamd=rspamd)
    assert result.reply == "" and result.unchecked
    it = item(mail("x", "y"), result)
    assert run(SpamFilter(None, SpamConfig()), it) == [Keep()]
    assert fields(it.message)["X-Spam-Status"].startswith("unchecked")


def test_rspamd_down_can_tempfail() -> None:
    result = scan(mail("x", "y"), rspamd=FakeRspamd(fail=TimeoutError()), on_failure="tempfail")
    assert result.reply.startswith("451 4.7.0")


def test_rspamd_add_header_files_into_junk_and_says_why() -> None:
    rspamd = FakeRspamd(action="add header", score=7.5, symbols=(("BAYES_SPAM", 5.1),))
    result = scan(mail("x", "y"), rspamd=rspamd)
    it = item(mail("x", "y"), result)
    assert run(SpamFilter(None, SpamConfig()), it) == [Keep(JUNK)]
    got = fields(it.message)
    assert "tests=rspamd" in got["X-Spam-Status"]
    assert 'action="add header" score=7.50' in got["X-Spam-Rspamd"]
    assert "BAYES_SPAM(5.10)" in got["X-Spam-Rspamd"]
    assert it.spam_score == pytest.approx(7.5 / 15.0, abs=0.5)


# -- header surgery --------------------------------------------------------------------


def test_strip_spam_fields_removes_folded_fields_only() -> None:
    message = (
        b"X-Spam-Status: No,\r\n\tscore=-100\r\nSubject: hi\r\nx-spam-flag: NO\r\n"
        b"X-Spammy: kept\r\n\r\nX-Spam-Status: in the body stays\r\n"
    )
    assert strip_spam_fields(message) == (
        b"Subject: hi\r\nX-Spammy: kept\r\n\r\nX-Spam-Status: in the body stays\r\n"
    )


@given(st.lists(st.sampled_from(["X-Spam-A: 1", "Subject: s", " cont", "To: t", "x-spam-b: 2"])))
def test_strip_keeps_every_other_field_exactly(lines: list[str]) -> None:
    message = "".join(line + "\r\n" for line in lines).encode() + b"\r\nX-Spam-A: body\r\n"
    # The model: a field is its line and the continuation lines after it.
    expected, drop = [], False
    for line in lines:
        if not line.startswith(" "):
            drop = line.lower().startswith("x-spam-")
        if not drop:
            expected.append(line + "\r\n")
    assert strip_spam_fields(message) == "".join(expected).encode() + b"\r\nX-Spam-A: body\r\n"


def test_rewrite_subject() -> None:
    message = b"From: a\r\nSubject: old\r\n\tfolded\r\nTo: b\r\n\r\nSubject: body\r\n"
    out = rewrite_subject(message, "***SPAM*** old\r\nBcc: x")
    assert out == b"From: a\r\nSubject: ***SPAM*** old Bcc: x\r\nTo: b\r\n\r\nSubject: body\r\n"
    assert rewrite_subject(b"From: a\r\n\r\nbody", "S") == b"Subject: S\r\nFrom: a\r\n\r\nbody"


def test_after_trace() -> None:
    ar = b"Authentication-Results: mx; spf=pass\r\n"
    assert _after_trace(TRACE + ar + b"From: x\r\n\r\n") == len(TRACE + ar)
    assert _after_trace(b"From: x\r\n\r\n") == 0
