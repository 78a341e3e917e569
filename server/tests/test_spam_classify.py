"""The junk filter's arithmetic and its behaviour on a small synthetic corpus."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from estafeta.spam import JunkFilter, SpamSettings, Verdict
from estafeta.spam.classify import (
    MAX_SHOWN,
    chi2q,
    combine,
    header_token,
    score,
    token_probability,
)

ACCOUNT = "user@example.test"


def words(text: str) -> list[str]:
    return text.split()


COMMON = words("the and you for that with this have from your are was will can all our")
SPAMMY = words(
    "winner prize casino pills pharmacy discount cheap guaranteed income dollars bitcoin "
    "loan mortgage refinance unsubscribe lowest enlarge miracle exclusive lottery claim"
)
HAMMY = words(
    "meeting agenda project patch kernel release schedule minutes draft proposal budget "
    "lunch colleague conference slides repository branch merge deploy ticket sprint"
)


def make_message(rng: random.Random, spam: bool, n: int) -> bytes:
    own = SPAMMY if spam else HAMMY
    words = [rng.choice(COMMON) if rng.random() < 0.5 else rng.choice(own) for _ in range(60)]
    sender = "promo@deals.example" if spam else "colleague@corp.example"
    subject = " ".join(rng.choice(own) for _ in range(3))
    return (
        f"From: {sender}\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{n}.{int(spam)}.{rng.getrandbits(40)}@example>\r\n\r\n"
        + " ".join(words)
        + "\r\n"
    ).encode()


def corpus(seed: int, count: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(seed)
    return (
        [make_message(rng, True, i) for i in range(count)],
        [make_message(rng, False, i) for i in range(count)],
    )


@pytest.fixture
def junk(tmp_path: Path) -> Iterator[JunkFilter]:
    with JunkFilter(tmp_path / "spam") as junk:
        yield junk


# -- arithmetic ------------------------------------------------------------------


def test_chi2q_matches_closed_forms() -> None:
    assert chi2q(0.0, 2) == 1.0
    for x in (0.5, 3.0, 20.0):
        assert chi2q(x, 2) == pytest.approx(math.exp(-x / 2))  # dof 2: e^(-x/2)
        m = x / 2
        assert chi2q(x, 4) == pytest.approx(math.exp(-m) * (1 + m))
    assert chi2q(5000.0, 300) < 1e-100  # no underflow error, just ~0
    assert chi2q(1e-9, 300) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        chi2q(1.0, 3)


def test_token_probability() -> None:
    assert token_probability(0, 0, 10, 10) == 0.5  # never seen: x
    # Seen once, in spam only: Robinson's adjustment keeps it well off 1.
    assert token_probability(1, 0, 10, 10) == pytest.approx((0.45 * 0.5 + 1.0) / 1.45)
    assert token_probability(100, 0, 100, 100) > 0.99
    assert token_probability(0, 100, 100, 100) < 0.01
    # Ratios, not raw counts: 10 of 10 spam vs 10 of 1000 ham is spammy.
    assert token_probability(10, 10, 10, 1000) > 0.9
    assert token_probability(5, 5, 10, 10) == pytest.approx(0.5)


def test_combine() -> None:
    assert combine([]) == 0.5
    assert combine([0.99] * 20) > 0.999
    assert combine([0.01] * 20) < 0.001
    assert 0.3 < combine([0.99] * 10 + [0.01] * 10) < 0.7  # both ways: unsure
    assert combine([0.6]) > 0.5 > combine([0.4])


def test_score_uses_only_strong_tokens() -> None:
    counts = {"spammy": (50, 0), "neutral": (25, 25), "hammy": (0, 1)}
    value, clues = score(counts, 50, 50)
    assert [t for t, _ in clues] == ["spammy", "hammy"]
    assert value > 0.5
    value, clues = score({"neutral": (25, 25)}, 50, 50)
    assert value == 0.5 and clues == ()
    many = {f"t{i}": (40, 0) for i in range(400)}
    assert len(score(many, 50, 50)[1]) == MAX_SHOWN


def test_header_fields() -> None:
    verdict = Verdict(
        score=0.97351,
        spam=True,
        tokens=(("viagra", 0.99), ("subject:grüße,\r\nX-Evil: 1", 0.98), ("x" * 200, 0.97)),
        trained=True,
    )
    fields = dict(verdict.header_fields())
    assert fields["X-Spam-Status"] == "Yes, score=0.974 threshold=0.900 trained=yes"
    assert fields["X-Spam-Score"] == "0.974"
    shown = fields["X-Spam-Tokens"]
    assert shown.startswith("viagra=0.990, subject:gr%C3%BC%C3%9Fe%2C%0D%0AX-Evil:")
    assert shown.isascii() and "\r" not in shown and "\n" not in shown
    assert len(header_token("x" * 200)) == 64
    untrained = Verdict(score=0.5, spam=False, tokens=(), trained=False, threshold=0.8)
    assert untrained.header_fields() == [
        ("X-Spam-Status", "No, score=0.500 threshold=0.800 trained=no"),
        ("X-Spam-Score", "0.500"),
    ]


# -- behaviour ---------------------------------------------------------------------


def test_untrained_account(junk: JunkFilter, tmp_path: Path) -> None:
    spam, _ = corpus(1, 1)
    verdict = junk.classify(ACCOUNT, spam[0])
    assert verdict == Verdict(score=0.5, spam=False, tokens=(), trained=False)
    assert not list((tmp_path / "spam").glob("*.db"))  # classifying creates no file


def test_trained_filter_tells_spam_from_ham(junk: JunkFilter) -> None:
    spam, ham = corpus(1, 30)
    assert junk.train_from(ACCOUNT, spam, spam=True).learned == 30
    assert junk.train_from(ACCOUNT, ham, spam=False).learned == 30
    new_spam, new_ham = corpus(2, 15)  # other messages of the same kinds
    for message in new_spam:
        verdict = junk.classify(ACCOUNT, message)
        assert verdict.trained and verdict.spam and verdict.score > 0.9, verdict
        assert any(p > 0.5 for _, p in verdict.tokens)
    for message in new_ham:
        verdict = junk.classify(ACCOUNT, message)
        assert verdict.trained and not verdict.spam and verdict.score < 0.1, verdict
    assert len(verdict.tokens) <= MAX_SHOWN


def test_too_little_training_never_says_spam(junk: JunkFilter) -> None:
    spam, ham = corpus(1, 30)
    junk.train_from(ACCOUNT, spam, spam=True)
    junk.train_from(ACCOUNT, ham[:19], spam=False)  # one ham short of the minimum
    verdict = junk.classify(ACCOUNT, corpus(2, 1)[0][0])
    assert not verdict.trained and not verdict.spam
    assert verdict.score > 0.9  # the score is still computed and shown
    junk.learn(ACCOUNT, ham[19], spam=False)
    assert junk.classify(ACCOUNT, corpus(2, 1)[0][0]).spam


def test_threshold_setting(tmp_path: Path) -> None:
    spam, ham = corpus(1, 30)
    settings = SpamSettings(threshold=1.01, min_spam=5, min_ham=5)
    with JunkFilter(tmp_path, settings) as junk:
        junk.train_from(ACCOUNT, spam[:5], spam=True)
        junk.train_from(ACCOUNT, ham[:5], spam=False)
        verdict = junk.classify(ACCOUNT, spam[20])
        assert verdict.trained and not verdict.spam and verdict.threshold == 1.01


def test_other_accounts_are_not_affected(junk: JunkFilter) -> None:
    spam, ham = corpus(1, 30)
    junk.train_from(ACCOUNT, spam, spam=True)
    junk.train_from(ACCOUNT, ham, spam=False)
    assert not junk.classify("other@example.test", spam[0]).trained
    assert junk.status("other@example.test").spam == 0


def test_classify_survives_a_bug(junk: JunkFilter, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(junk.store, "counts", broken)
    verdict = junk.classify(ACCOUNT, corpus(1, 1)[0][0])
    assert not verdict.trained and not verdict.spam
